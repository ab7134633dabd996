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

static PyMethodDef methods[] = {
    {"dequantize", py_dequantize, METH_VARARGS, dequantize_doc},
    {"use_simd", py_use_simd, METH_O, "use_simd(flag) -> bool: use the AVX2 decode where the CPU has it; returns the previous setting."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused",
    "Fused unpack + recompose + dequantize of NESTED codes (spec §7.2, §7.3).", -1, methods,
};

PyMODINIT_FUNC PyInit__fused(void) {
#ifdef NQ_HAVE_AVX2_PATH
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModule_Create(&module);
}
