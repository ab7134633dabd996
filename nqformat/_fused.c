/* Fused unpack + recompose + dequantize of NESTED codes (spec §7.2, §7.3) into float32.
 *
 * Why a C extension: numpy needs one pass per step (unpack to int8, recompose to int16,
 * multiply, add), each through memory; here a chunk of codes is decoded into an L1-resident
 * buffer and converted straight into the destination, so the float32 output is written once.
 *
 * Bit-exactness (§7.2): w = fl32(fl32(float32(q) * scale[c]) + offset[c]). The product and the
 * sum are separate statements AND the module is compiled with -ffp-contract=off (setup.py), so
 * the compiler may not fuse them into an FMA; x86-64 and AArch64 evaluate float in SSE/NEON
 * registers at float precision (FLT_EVAL_METHOD == 0, checked below).
 *
 * Decoding (§7.3): 8 codes of k bits are exactly k bytes (a group). A group is read as one
 * little-endian uint64 and its eight k-bit fields are moved to their byte lanes with three
 * shift-and-mask halvings (the same layout arithmetic as nqformat/bitpack.py); the sign is
 * applied in the float pass as (u ^ 2^(k-1)) - 2^(k-1).
 *
 * The Python-facing checks (types, widths, sizes) are done again here so that no call from
 * Python can read or write out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <stdint.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "bit-exact dequantization needs float evaluated at float precision (FLT_EVAL_METHOD 0)"
#endif

/* Elements decoded per pass: 4 KiB of int8 codes per stream, so codes + a run of output
 * floats stay in L1/L2 between the decode and the float pass. A multiple of 8 (one group). */
#define CHUNK 4096
#define GROUP 8

static inline uint64_t bswap_if_big(uint64_t x) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return __builtin_bswap64(x);
#else
    return x;
#endif
}

/* Fields of a group's k bits each, spread to the 8 byte lanes of a uint64 (unsigned). */
static inline __attribute__((always_inline)) uint64_t spread(uint64_t x, const int k) {
    const uint64_t quad = (UINT64_C(1) << (4 * k)) - 1;
    const uint64_t pair = (UINT64_C(1) << (2 * k)) - 1;
    const uint64_t one = (UINT64_C(1) << k) - 1;
    const uint64_t pair2 = pair | (pair << 32);
    const uint64_t one4 = one * UINT64_C(0x0001000100010001);
    x = (x & quad) | ((x << (32 - 4 * k)) & (quad << 32));
    x = (x & pair2) | ((x << (16 - 2 * k)) & (pair2 << 16));
    x = (x & one4) | ((x << (8 - k)) & (one4 << 8));
    return x;
}

/* Decode groups [g0, g1) of a k-bit stream of `nbytes` bytes into dst (unsigned fields, one
 * byte per code). Groups whose 8-byte window would pass the end are read byte by byte. */
static inline __attribute__((always_inline)) void decode_groups(
    const uint8_t *src, size_t nbytes, size_t g0, size_t g1, uint8_t *dst, const int k) {
    if (k == 8) {
        size_t a = g0 * GROUP, b = g1 * GROUP;
        if (b > nbytes) b = nbytes;
        if (b > a) memcpy(dst, src + a, b - a);
        return;
    }
    size_t g = g0;
    for (; g < g1 && g * k + 8 <= nbytes; g++) {
        uint64_t x;
        memcpy(&x, src + g * k, 8);
        x = bswap_if_big(spread(bswap_if_big(x), k));
        memcpy(dst + (g - g0) * GROUP, &x, 8);
    }
    for (; g < g1; g++) {
        uint8_t tail[8] = {0};
        size_t at = g * k, n = at < nbytes ? nbytes - at : 0;
        if (n > 8) n = 8;
        memcpy(tail, src + at, n);
        uint64_t x;
        memcpy(&x, tail, 8);
        x = bswap_if_big(spread(bswap_if_big(x), k));
        memcpy(dst + (g - g0) * GROUP, &x, 8);
    }
}

static inline __attribute__((always_inline)) void decode_any(const uint8_t *src, size_t nbytes, size_t g0, size_t g1, uint8_t *dst,
                       int k) {
    switch (k) { /* one specialised copy per width: the masks and shifts become constants */
    case 1: decode_groups(src, nbytes, g0, g1, dst, 1); break;
    case 2: decode_groups(src, nbytes, g0, g1, dst, 2); break;
    case 3: decode_groups(src, nbytes, g0, g1, dst, 3); break;
    case 4: decode_groups(src, nbytes, g0, g1, dst, 4); break;
    case 5: decode_groups(src, nbytes, g0, g1, dst, 5); break;
    case 6: decode_groups(src, nbytes, g0, g1, dst, 6); break;
    case 7: decode_groups(src, nbytes, g0, g1, dst, 7); break;
    default: decode_groups(src, nbytes, g0, g1, dst, 8); break;
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NQ_HAVE_AVX2_PATH 1
#include <immintrin.h>

/* The same halvings on four groups at once (AVX2 has 64-bit lane shifts): the scalar decode
 * is the bottleneck of the full-bit path, which decodes two streams per element. */
static inline __attribute__((target("avx2"), always_inline)) __m256i spread4(__m256i x,
                                                                            const int k) {
    const uint64_t quad = (UINT64_C(1) << (4 * k)) - 1;
    const uint64_t pair = (UINT64_C(1) << (2 * k)) - 1;
    const uint64_t one = (UINT64_C(1) << k) - 1;
    const uint64_t pair2 = pair | (pair << 32);
    const uint64_t one4 = one * UINT64_C(0x0001000100010001);
    const __m256i q0 = _mm256_set1_epi64x((long long)quad);
    const __m256i q1 = _mm256_set1_epi64x((long long)(quad << 32));
    const __m256i p0 = _mm256_set1_epi64x((long long)pair2);
    const __m256i p1 = _mm256_set1_epi64x((long long)(pair2 << 16));
    const __m256i o0 = _mm256_set1_epi64x((long long)one4);
    const __m256i o1 = _mm256_set1_epi64x((long long)(one4 << 8));
    x = _mm256_or_si256(_mm256_and_si256(x, q0),
                        _mm256_and_si256(_mm256_slli_epi64(x, 32 - 4 * k), q1));
    x = _mm256_or_si256(_mm256_and_si256(x, p0),
                        _mm256_and_si256(_mm256_slli_epi64(x, 16 - 2 * k), p1));
    x = _mm256_or_si256(_mm256_and_si256(x, o0),
                        _mm256_and_si256(_mm256_slli_epi64(x, 8 - k), o1));
    return x;
}

static inline __attribute__((target("avx2"), always_inline)) void decode_groups_avx2(
    const uint8_t *src, size_t nbytes, size_t g0, size_t g1, uint8_t *dst, const int k) {
    size_t g = g0;
    for (; g + 4 <= g1 && (g + 3) * k + 8 <= nbytes; g += 4) {
        uint64_t w[4];
        memcpy(&w[0], src + g * k, 8);
        memcpy(&w[1], src + (g + 1) * k, 8);
        memcpy(&w[2], src + (g + 2) * k, 8);
        memcpy(&w[3], src + (g + 3) * k, 8);
        __m256i x = _mm256_loadu_si256((const __m256i *)w);
        _mm256_storeu_si256((__m256i *)(dst + (g - g0) * GROUP), spread4(x, k));
    }
    decode_groups(src, nbytes, g, g1, dst + (g - g0) * GROUP, k); /* the last few groups */
}

static __attribute__((target("avx2"), noinline)) void decode_any_avx2(
    const uint8_t *src, size_t nbytes, size_t g0, size_t g1, uint8_t *dst, int k) {
    switch (k) {
    case 1: decode_groups_avx2(src, nbytes, g0, g1, dst, 1); break;
    case 2: decode_groups_avx2(src, nbytes, g0, g1, dst, 2); break;
    case 3: decode_groups_avx2(src, nbytes, g0, g1, dst, 3); break;
    case 4: decode_groups_avx2(src, nbytes, g0, g1, dst, 4); break;
    case 5: decode_groups_avx2(src, nbytes, g0, g1, dst, 5); break;
    case 6: decode_groups_avx2(src, nbytes, g0, g1, dst, 6); break;
    case 7: decode_groups_avx2(src, nbytes, g0, g1, dst, 7); break;
    default: decode_groups(src, nbytes, g0, g1, dst, 8); break;
    }
}
#endif

static int have_avx2 = 0; /* set once at import */

static inline void decode(const uint8_t *src, size_t nbytes, size_t g0, size_t g1, uint8_t *dst,
                          int k) {
#ifdef NQ_HAVE_AVX2_PATH
    if (have_avx2) {
        decode_any_avx2(src, nbytes, g0, g1, dst, k);
        return;
    }
#endif
    decode_any(src, nbytes, g0, g1, dst, k);
}

/* out[i] = fl32(fl32(float(code_i) * sc) + off) over one run of one channel. Two statements
 * and -ffp-contract=off: never an FMA (§7.2). */
static inline __attribute__((always_inline)) void run_part(const uint8_t *u, int sign, float sc, float off, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float w = (float)((int)(u[i] ^ sign) - sign) * sc;
        out[i] = w + off;
    }
}

static inline __attribute__((always_inline)) void run_full(const uint8_t *uh, int sh, const uint8_t *ul, int sl, int mul, float sc,
                     float off, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int q = ((int)(uh[i] ^ sh) - sh) * mul + ((int)(ul[i] ^ sl) - sl); /* q = H*2^l + L */
        float w = (float)q * sc;
        out[i] = w + off;
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void dequantize(const uint8_t *high, size_t hbytes, const uint8_t *low, size_t lbytes,
                       int h, int l, size_t count, size_t rows, const float *scale,
                       const float *offset, float *out, size_t start, size_t stop) {
    uint8_t hbuf[CHUNK + GROUP], lbuf[CHUNK + GROUP];
    size_t per = rows ? count / rows : 0;
    int sh = 1 << (h - 1), kl = l + 1, sl = 1 << l, mul = 1 << l;
    for (size_t a = start; a < stop; a += CHUNK) {
        size_t b = a + CHUNK < stop ? a + CHUNK : stop;
        size_t g0 = a / GROUP, g1 = (b + GROUP - 1) / GROUP;
        decode(high, hbytes, g0, g1, hbuf, h);
        if (low) decode(low, lbytes, g0, g1, lbuf, kl);
        for (size_t i = a; i < b;) {
            size_t r = i / per, e = (r + 1) * per;
            if (e > b) e = b;
            if (low)
                run_full(hbuf + (i - a), sh, lbuf + (i - a), sl, mul, scale[r], offset[r],
                         out + i, e - i);
            else
                run_part(hbuf + (i - a), sh, scale[r], offset[r], out + i, e - i);
            i = e;
        }
    }
}

static size_t packed_size(size_t count, int width) { return (count * (size_t)width + 7) / 8; }

PyDoc_STRVAR(dequantize_doc,
             "dequantize(high, low, h, l, count, rows, scale, offset, out, start, stop)\n"
             "Decode elements [start, stop) (start a multiple of 8) of a NESTED tensor and write\n"
             "w = fl32(fl32(float32(code) * scale[c]) + offset[c]) into out (float32 buffer).\n"
             "low=None: part-bit (code = H); else full-bit (code = H*2^l + L). The GIL is\n"
             "released while decoding.");

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    Py_buffer high, low, scale, offset, out;
    PyObject *low_obj;
    int h, l;
    Py_ssize_t count, rows, start, stop;
    memset(&low, 0, sizeof low);
    if (!PyArg_ParseTuple(args, "y*Oiinny*y*w*nn", &high, &low_obj, &h, &l, &count, &rows,
                          &scale, &offset, &out, &start, &stop))
        return NULL;
    int have_low = low_obj != Py_None;
    PyObject *result = NULL;
    if (have_low && PyObject_GetBuffer(low_obj, &low, PyBUF_SIMPLE) < 0) goto done_nolow;
    if (h < 1 || h > 8 || (have_low && (l < 0 || l + 1 > 8 || h + l > 16))) {
        PyErr_Format(PyExc_ValueError, "widths out of range: h=%d l=%d", h, l);
        goto done;
    }
    if (count < 0 || rows < 0 || (rows == 0 && count != 0) || (rows && count % rows)) {
        PyErr_Format(PyExc_ValueError, "count %zd is not a multiple of rows %zd", count, rows);
        goto done;
    }
    if (start < 0 || stop > count || start > stop || start % GROUP) {
        PyErr_Format(PyExc_ValueError, "bad range [%zd, %zd) of %zd", start, stop, count);
        goto done;
    }
    if ((size_t)high.len < packed_size(count, h) ||
        (have_low && (size_t)low.len < packed_size(count, l + 1))) {
        PyErr_SetString(PyExc_ValueError, "packed buffer too short");
        goto done;
    }
    if ((size_t)scale.len < (size_t)rows * 4 || (size_t)offset.len < (size_t)rows * 4 ||
        (size_t)out.len < (size_t)count * 4) {
        PyErr_SetString(PyExc_ValueError, "scale, offset or out too short");
        goto done;
    }
    if (((uintptr_t)scale.buf | (uintptr_t)offset.buf | (uintptr_t)out.buf) % sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "scale, offset and out must be float32-aligned");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    dequantize((const uint8_t *)high.buf, (size_t)high.len,
               have_low ? (const uint8_t *)low.buf : NULL, have_low ? (size_t)low.len : 0, h,
               have_low ? l : 0, (size_t)count, (size_t)rows, (const float *)scale.buf,
               (const float *)offset.buf, (float *)out.buf, (size_t)start, (size_t)stop);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (have_low) PyBuffer_Release(&low);
done_nolow:
    PyBuffer_Release(&high);
    PyBuffer_Release(&scale);
    PyBuffer_Release(&offset);
    PyBuffer_Release(&out);
    return result;
}

/* Tests turn the AVX2 decode off to check the portable one on the same machine. */
static PyObject *py_use_simd(PyObject *self, PyObject *arg) {
    int want = PyObject_IsTrue(arg);
    if (want < 0) return NULL;
    int before = have_avx2;
#ifdef NQ_HAVE_AVX2_PATH
    have_avx2 = want && __builtin_cpu_supports("avx2");
#endif
    return PyBool_FromLong(before);
}

/* --- CRC-32 of many byte ranges (spec §7.1: each blob's crc; §3.2) -----------------------
 *
 * Why here: a load checks one CRC per blob, and a small model has hundreds of small blobs
 * (Lite0: 496 in DATA), where a Python call per blob costs more than the CRC itself. This is
 * the CRC-32 of zlib (reflected polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF):
 * slice-by-8 tables everywhere, and on x86-64 with PCLMULQDQ the folding method of Gopal et
 * al. ("Fast CRC Computation for Generic Polynomials Using PCLMULQDQ", Intel 2009) for runs
 * of 64 bytes or more. tests/test_fused.py checks both against zlib.crc32. */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

/* The register (not inverted) over n bytes: slice-by-8. */
static uint32_t crc_slice8(uint32_t c, const uint8_t *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= c;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
            crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
            crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    return c;
}

#ifdef NQ_HAVE_AVX2_PATH
static int have_clmul = 0; /* set once at import */

/* The register over n bytes, n >= 64 and a multiple of 16 (folding constants: the paper's
 * bit-reflected k1..k5, P'(x) and mu for CRC-32). */
static __attribute__((target("sse4.1,pclmul"), noinline)) uint32_t crc_clmul(uint32_t crc,
                                                                             const uint8_t *buf,
                                                                             size_t len) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;
    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = k1k2;
    buf += 64;
    len -= 64;
    while (len >= 64) { /* four folds in parallel */
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64;
        len -= 64;
    }
    x0 = k3k4; /* fold the four into one */
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (len >= 16) { /* single folds */
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }
    /* 128 bits to 64 */
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = k5k0;
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    /* Barrett reduction to 32 bits */
    x0 = poly;
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

/* zlib's crc32(0, p, n). */
static uint32_t crc32_bytes(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
#ifdef NQ_HAVE_AVX2_PATH
    if (have_clmul && n >= 64) {
        size_t bulk = n & ~(size_t)15;
        c = crc_clmul(c, p, bulk);
        p += bulk;
        n -= bulk;
    }
#endif
    return crc_slice8(c, p, n) ^ 0xFFFFFFFFu;
}

/* Every [off[i], off[i] + len[i]) inside a buffer of size bytes; else a ValueError naming the
 * first range that is not, and 0. */
static int ranges_inside(const uint64_t *off, const uint64_t *len, size_t count, Py_ssize_t size) {
    for (size_t i = 0; i < count; i++) {
        if (off[i] > (uint64_t)size || len[i] > (uint64_t)size - off[i]) {
            PyErr_Format(PyExc_ValueError, "range %zu lies outside the buffer", i);
            return 0;
        }
    }
    return 1;
}

/* count entries of uint64 in each of n tables (Py_buffers), all of one length and 8-byte
 * aligned; else a ValueError saying what disagrees, and 0. */
static int u64_tables(Py_buffer **tables, int n, size_t *count, const char *names) {
    *count = (size_t)tables[0]->len / 8;
    for (int i = 0; i < n; i++) {
        if ((size_t)tables[i]->len != (size_t)tables[0]->len || (size_t)tables[i]->len % 8) {
            PyErr_Format(PyExc_ValueError, "%s (uint64) disagree", names);
            return 0;
        }
        if ((uintptr_t)tables[i]->buf % 8) {
            PyErr_Format(PyExc_ValueError, "%s must be aligned", names);
            return 0;
        }
    }
    return 1;
}

PyDoc_STRVAR(crc32_ranges_doc,
             "crc32_ranges(buffer, offsets, lengths, out)\n"
             "out[i] = zlib.crc32(buffer[offsets[i] : offsets[i] + lengths[i]]) for every i;\n"
             "offsets and lengths are uint64 buffers, out a writable uint32 one of the same\n"
             "count. The GIL is released while computing.");

static PyObject *py_crc32_ranges(PyObject *self, PyObject *args) {
    Py_buffer buf, offsets, lengths, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &buf, &offsets, &lengths, &out)) return NULL;
    PyObject *result = NULL;
    size_t count;
    Py_buffer *tables[] = {&offsets, &lengths};
    if (!u64_tables(tables, 2, &count, "offsets and lengths")) goto done;
    if ((size_t)out.len != count * 4 || (uintptr_t)out.buf % 4) {
        PyErr_SetString(PyExc_ValueError, "out must be an aligned uint32 buffer of one per range");
        goto done;
    }
    const uint64_t *off = (const uint64_t *)offsets.buf, *len = (const uint64_t *)lengths.buf;
    if (!ranges_inside(off, len, count, buf.len)) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < count; i++)
        ((uint32_t *)out.buf)[i] = crc32_bytes((const uint8_t *)buf.buf + off[i], (size_t)len[i]);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(scatter_doc,
             "scatter(buffer, offsets, lengths, addresses)\n"
             "memcpy(addresses[i], buffer + offsets[i], lengths[i]) for every i; offsets,\n"
             "lengths and addresses are uint64 buffers of one count. Every range must lie\n"
             "inside buffer; every address must be writable memory of lengths[i] bytes that\n"
             "the caller holds (nqformat.torch.resident: CPU tensors it checked and keeps).");

static PyObject *py_scatter(PyObject *self, PyObject *args) {
    Py_buffer buf, offsets, lengths, addresses;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &buf, &offsets, &lengths, &addresses)) return NULL;
    PyObject *result = NULL;
    size_t count;
    Py_buffer *tables[] = {&offsets, &lengths, &addresses};
    if (!u64_tables(tables, 3, &count, "offsets, lengths and addresses")) goto done;
    const uint64_t *off = (const uint64_t *)offsets.buf, *len = (const uint64_t *)lengths.buf;
    const uint64_t *to = (const uint64_t *)addresses.buf;
    if (!ranges_inside(off, len, count, buf.len)) goto done;
    for (size_t i = 0; i < count; i++) {
        if (len[i] && !to[i]) {
            PyErr_Format(PyExc_ValueError, "range %zu has no address to copy to", i);
            goto done;
        }
    }
    for (size_t i = 0; i < count; i++)
        memcpy((void *)(uintptr_t)to[i], (const uint8_t *)buf.buf + off[i], (size_t)len[i]);
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&addresses);
    return result;
}

PyDoc_STRVAR(json_shape_doc,
             "json_shape(raw) -> (depth, values)\n"
             "The META pre-scan of nqformat.container.metajson.json_shape in one pass, with\n"
             "the same rules on any bytes: a quote preceded by an even run of backslashes is a\n"
             "string delimiter; outside strings '{'/'[' and '}'/']' step the depth (its\n"
             "maximum is returned), and an opening quote or a value's first byte ('{', '[',\n"
             "'-', a digit, t, f, n, not right after a number byte) counts one value.");

static PyObject *py_json_shape(PyObject *self, PyObject *args) {
    Py_buffer raw;
    if (!PyArg_ParseTuple(args, "y*", &raw)) return NULL;
    const uint8_t *p = (const uint8_t *)raw.buf;
    long long depth = 0, max_depth = 0, values = 0;
    size_t backslashes = 0; /* run of backslashes right before the current byte */
    int in_string = 0, prev_number = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < raw.len; i++) {
        uint8_t c = p[i];
        int delim = c == '"' && backslashes % 2 == 0;
        if (!in_string) {
            if (delim) values++;
            if (c == '{' || c == '[') {
                if (++depth > max_depth) max_depth = depth;
            } else if (c == '}' || c == ']') {
                depth--;
            }
            int starts = c == '{' || c == '[' || c == '-' || (c >= '0' && c <= '9') ||
                         c == 't' || c == 'f' || c == 'n';
            if (starts && !prev_number) values++;
            prev_number = c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9') ||
                          c == 'e' || c == 'E';
        } else {
            prev_number = 0;
        }
        if (delim) in_string ^= 1;
        backslashes = c == '\\' ? backslashes + 1 : 0;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&raw);
    return Py_BuildValue("(LL)", max_depth, values);
}

/* Tests turn the PCLMUL path off to check the table one on the same machine. */
static PyObject *py_use_clmul(PyObject *self, PyObject *arg) {
    int want = PyObject_IsTrue(arg);
    if (want < 0) return NULL;
#ifdef NQ_HAVE_AVX2_PATH
    int before = have_clmul;
    have_clmul = want && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    return PyBool_FromLong(before);
#else
    return PyBool_FromLong(0);
#endif
}

static PyMethodDef methods[] = {
    {"dequantize", py_dequantize, METH_VARARGS, dequantize_doc},
    {"crc32_ranges", py_crc32_ranges, METH_VARARGS, crc32_ranges_doc},
    {"scatter", py_scatter, METH_VARARGS, scatter_doc},
    {"json_shape", py_json_shape, METH_VARARGS, json_shape_doc},
    {"use_clmul", py_use_clmul, METH_O, "use_clmul(flag) -> bool: use the PCLMULQDQ CRC where the CPU has it; returns the previous setting."},
    {"use_simd", py_use_simd, METH_O, "use_simd(flag) -> bool: use the AVX2 decode where the CPU has it; returns the previous setting."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused",
    "Fused unpack + recompose + dequantize of NESTED codes (spec §7.2, §7.3); CRC-32 of many ranges (§7.1).", -1, methods,
};

PyMODINIT_FUNC PyInit__fused(void) {
    crc_init();
#ifdef NQ_HAVE_AVX2_PATH
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
    have_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    return PyModule_Create(&module);
}
