/*
 * nqread: an independent, dependency-free C99 reader for the .nq v1 format.
 *
 * Written from spec/nq-v1.md alone (not from the Python implementation), so that it proves the
 * spec is enough to read a file. Every "§" below cites that document. Where the spec left a
 * choice open, the choice is marked "AMBIGUITY" and listed in docs/spec-ambiguities.md.
 *
 * Usage: see usage() or examples/c-reader/README.md.
 */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* §7.2: the product and the sum are rounded separately; never contract them into an FMA.
 * GCC does not know this pragma (it warns), so the Makefile passes -ffp-contract=off instead. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
#include <float.h>
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
/* §7.2: x87-style excess precision rounds twice; build for SSE2 (or equivalent) instead. */
#error "nqread needs FLT_EVAL_METHOD == 0 for bit-exact dequantization (spec §7.2)"
#endif

/* ---------------------------------------------------------------------------------------------
 * Constants, each defined once with the section it comes from.
 * ------------------------------------------------------------------------------------------- */

static const unsigned char NQ_MAGIC[8] = {0x89, 'N', 'Q', 'F', 0x0D, 0x0A, 0x1A, 0x0A}; /* §3.1 */
#define NQ_PREAMBLE_SIZE 256u          /* §3.1 */
#define NQ_PREAMBLE_CRC_AT 252u        /* §3.1: preamble_crc covers bytes 0..251 */
#define NQ_VERSION_MAJOR 1u            /* §3.1, §12 */
#define NQ_N_MIN 2u                    /* §3.1: 2 <= n <= 8 */
#define NQ_N_MAX 8u
#define NQ_H_MIN 1u                    /* §3.1: 1 <= h <= n - 1 */
#define NQ_SECTION_TABLE_AT 64u        /* §3.2 */
#define NQ_SECTION_ENTRY_SIZE 24u      /* §3.2 */
#define NQ_SECTION_COUNT 6             /* §3.2 */
#define NQ_SECTION_ALIGN 4096u         /* §3.2 */
#define NQ_FLAG_ZSTD UINT64_C(1)       /* §3.3 bit 0 */
#define NQ_FLAG_LEVELS UINT64_C(2)     /* §14.1: incompat bit 1, several nested levels */
#define NQ_LEVELS_AT 208u              /* §14.1: LEVELS section entry in the preamble */
#define NQ_LEVEL_COUNT_AT 232u         /* §14.1: u8 level_count */
#define NQ_LEVEL_WIDTHS_AT 233u        /* §14.1: u8 widths[8] */
#define NQ_MIN_LEVELS 3u               /* §14.1: 3 <= level_count <= 8 */
#define NQ_MAX_LEVELS 8u
#define NQ_RECORD_SIZE 160u            /* §4 */
#define NQ_MAX_NDIM 8u                 /* §4, §10 */
#define NQ_BLOB_ALIGN 64u              /* §7.1 */
#define NQ_CODEC_NONE 0u               /* §4 blob codec */
#define NQ_CODEC_ZSTD 1u               /* §4, §8 */
#define NQ_KIND_RAW 0u                 /* §4 */
#define NQ_KIND_NESTED 1u              /* §4 */
#define NQ_PARAM_ARRAYS 4u             /* §7.2: scale_full, offset_full, scale_part, offset_part */
#define NQ_PARAM_BYTES 4u              /* §7.2: float32 */
#define NQ_ZSTD_SLACK_DIV 128u         /* §8: stored length <= raw + raw/128 + 1024 */
#define NQ_ZSTD_SLACK_ADD 1024u        /* §8 */
#define NQ_MAX_TENSORS UINT64_C(1048576)                 /* §10 */
#define NQ_MAX_HEADER_END (UINT64_C(256) << 20)          /* §10: 256 MiB */
#define NQ_MAX_META (UINT64_C(16) << 20)                 /* §6, §10: 16 MiB */
#define NQ_MAX_NAME 1024u                                /* §5, §10 */
#define NQ_MAX_NUMEL (UINT64_C(1) << 48)                 /* §10 */
#define NQ_MAX_OFFSET (UINT64_C(0x7FFFFFFFFFFFFFFF))     /* §10: 2^63 - 1 */
#define NQ_MAX_JSON_DEPTH 64u                            /* §6 */
#define NQ_MAX_JSON_VALUES (UINT64_C(1) << 20)           /* §6, §10: values + member names */
#define NQ_ZSTD_MAX_RATIO UINT64_C(32768) /* §8: no zstd frame is shorter than raw / 32768 */
#define NQ_ZSTD_MAX_WINDOW (UINT64_C(1) << 27) /* §8: largest Window_Size a frame may ask for */
/* §6: integers in META have magnitude <= 2^53 (16 digits) */
#define NQ_JSON_INT_MAX "9007199254740992"
/* §6: a number with a fraction or exponent must round to a finite binary64, i.e. be below
 * 2^1024 - 2^970 (the midpoint between DBL_MAX and 2^1024, which rounds up to infinity). */
static const char NQ_JSON_FLOAT_LIMIT[] =
    "17976931348623158079372897140530341507993413271003782693617377898044496829276475094664901"
    "79775872070963302864166928879109465555478519404026306574886715058206819089020007083836762"
    "73854845817711531764475730270069855571366959622842914819860834936475292719074168444365510"
    "704342711559699508093042880177904174497792";

/* Section table entries in their fixed order (§3.2). */
enum { SEC_INDEX, SEC_NAMES, SEC_META, SEC_DATA, SEC_HIGH, SEC_LOW };
static const char *const SECTION_NAMES[NQ_SECTION_COUNT] = {"INDEX", "NAMES", "META",
                                                            "DATA",  "HIGH",  "LOW"};

/* §4.1 dtype codes: name and element size; index = code. */
#define NQ_DTYPE_F32 1u
#define NQ_DTYPE_F16 2u
#define NQ_DTYPE_BF16 3u
#define NQ_DTYPE_F64 4u
#define NQ_DTYPE_MAX 10u
static const struct {
    const char *name;
    unsigned size;
} DTYPES[NQ_DTYPE_MAX + 1] = {{NULL, 0},  {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I8", 1},
                              {"U8", 1},  {"I16", 2}, {"I32", 4}, {"I64", 8},  {"BOOL", 1}};

/* Exit codes (documented in README.md). */
#define EXIT_OK_ 0
#define EXIT_IO 1          /* cannot open/read the file or write stdout, out of memory */
#define EXIT_USAGE 2       /* bad command line, unknown tensor name */
#define EXIT_INVALID 3     /* any spec §11 error except part_only */
#define EXIT_UNSUPPORTED 4 /* part_only, or a zstd blob this reader cannot decompress */

/* Spec §11 error codes (plus three that are not about the file). */
enum nq_code {
    NQ_TRUNCATED,
    NQ_BAD_MAGIC,
    NQ_UNSUPPORTED_VERSION,
    NQ_UNSUPPORTED_FEATURE,
    NQ_CHECKSUM,
    NQ_INVALID_HEADER,
    NQ_LIMIT,
    NQ_LAYOUT,
    NQ_INVALID_NAME,
    NQ_DUPLICATE_NAME,
    NQ_METADATA,
    NQ_PART_ONLY,
    NQ_ZSTD_UNSUPPORTED, /* reported as unsupported_feature, exit 4 */
    NQ_IO,
    NQ_USAGE,
    NQ_INTERNAL
};
static const char *const CODE_NAMES[] = {
    "truncated", "bad_magic",      "unsupported_version", "unsupported_feature", "checksum",
    "invalid_header", "limit",     "layout",              "invalid_name",        "duplicate_name",
    "metadata",  "part_only",      "unsupported_feature", "io",                  "usage",
    "internal"};

/* ---------------------------------------------------------------------------------------------
 * Errors: one global slot (single-threaded CLI); fail() fills it and returns -1.
 * ------------------------------------------------------------------------------------------- */

static struct {
    enum nq_code code;
    char msg[768];
} g_err;

static int fail(enum nq_code code, const char *fmt, ...)
{
    va_list ap;
    g_err.code = code;
    va_start(ap, fmt);
    vsnprintf(g_err.msg, sizeof g_err.msg, fmt, ap);
    va_end(ap);
    return -1;
}

static int exit_code_for(enum nq_code code)
{
    switch (code) {
    case NQ_PART_ONLY:
    case NQ_ZSTD_UNSUPPORTED:
        return EXIT_UNSUPPORTED;
    case NQ_IO:
    case NQ_INTERNAL:
        return EXIT_IO;
    case NQ_USAGE:
        return EXIT_USAGE;
    default:
        return EXIT_INVALID;
    }
}

static int report_error(const char *path)
{
    int rc = exit_code_for(g_err.code);
    const char *what = rc == EXIT_INVALID       ? "invalid file"
                       : rc == EXIT_UNSUPPORTED ? "unsupported"
                       : rc == EXIT_USAGE       ? "usage error"
                                                : "error";
    fprintf(stderr, "nqread: %s [%s]: %s: %s\n", what, CODE_NAMES[g_err.code],
            path ? path : "-", g_err.msg);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Checked arithmetic (§2: never wrap).
 * ------------------------------------------------------------------------------------------- */

static int add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a > UINT64_MAX - b)
        return 0;
    *out = a + b;
    return 1;
}

static int mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

/* align(x, a) of §2 for a power of two a. */
static int align_u64(uint64_t x, uint64_t a, uint64_t *out)
{
    uint64_t t;
    if (!add_u64(x, a - 1, &t))
        return 0;
    *out = t & ~(a - 1);
    return 1;
}

/* ceil(count * bits / 8) of §4.2, checked. */
static int packed_len(uint64_t count, unsigned bits, uint64_t *out)
{
    uint64_t t;
    if (!mul_u64(count, bits, &t) || !add_u64(t, 7, &t))
        return 0;
    *out = t / 8;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Little-endian decoding (§2), independent of the host byte order.
 * ------------------------------------------------------------------------------------------- */

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | (unsigned)p[1] << 8); }

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

static float f32_from_le(const unsigned char *p)
{
    uint32_t u = le32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int all_zero(const unsigned char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * CRC-32 (§2): ISO-HDLC/zlib, reflected polynomial 0xEDB88320, init and final XOR 0xFFFFFFFF.
 * crc32_update works on the un-inverted register so a CRC can be computed in pieces.
 * ------------------------------------------------------------------------------------------- */

static uint32_t crc_table[256];

static void crc32_init(void)
{
    uint32_t i, j, c;
    for (i = 0; i < 256; i++) {
        c = i;
        for (j = 0; j < 8; j++)
            c = (c & 1) ? (c >> 1) ^ UINT32_C(0xEDB88320) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_update(uint32_t reg, const unsigned char *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        reg = crc_table[(reg ^ p[i]) & 0xFF] ^ (reg >> 8);
    return reg;
}

static uint32_t crc32_buf(const unsigned char *p, size_t n)
{
    return crc32_update(UINT32_C(0xFFFFFFFF), p, n) ^ UINT32_C(0xFFFFFFFF);
}

/* ---------------------------------------------------------------------------------------------
 * UTF-8 validation (§5, §6): RFC 3629, no overlong forms, no surrogates, <= U+10FFFF.
 * Returns 1 when valid.
 * ------------------------------------------------------------------------------------------- */

static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t need;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1, cp = c & 0x1F, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2, cp = c & 0x0F, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0; /* continuation byte, 0xC0/0xC1 (overlong) or 0xF5..0xFF */
        }
        if (n - i - 1 < need)
            return 0;
        {
            size_t k;
            for (k = 1; k <= need; k++) {
                if ((s[i + k] & 0xC0) != 0x80)
                    return 0;
                cp = cp << 6 | (s[i + k] & 0x3F);
            }
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * JSON validation for META (§6, §11 step 12): RFC 8259 grammar, top-level object, no duplicate
 * keys in any object (compared after unescaping), nesting depth <= 64.
 * ------------------------------------------------------------------------------------------- */

struct keyref {
    size_t off, len;
};

struct json {
    const unsigned char *s;
    size_t n, i;
    unsigned depth;
    uint64_t values; /* values and member names seen so far (§6 limit) */
    struct keyref *keys; /* stack of keys of the objects being parsed */
    size_t nkeys, capkeys;
    unsigned char *arena; /* unescaped key bytes, same stack discipline */
    size_t alen, acap;
};

static const unsigned char *g_sort_arena; /* qsort has no context argument in C99 */

static int keyref_cmp(const void *a, const void *b)
{
    const struct keyref *x = a, *y = b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(g_sort_arena + x->off, g_sort_arena + y->off, m);
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static int j_err(struct json *j, const char *what)
{
    return fail(NQ_METADATA, "META is not a valid JSON object (§6): %s at byte %zu", what, j->i);
}

static void j_ws(struct json *j)
{
    while (j->i < j->n &&
           (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r'))
        j->i++;
}

static int j_put(struct json *j, const unsigned char *p, size_t n)
{
    if (j->acap - j->alen < n) {
        size_t cap = j->acap ? j->acap : 256;
        unsigned char *a;
        while (cap - j->alen < n)
            cap *= 2; /* total is bounded by the META length (<= 16 MiB) */
        a = realloc(j->arena, cap);
        if (!a)
            return fail(NQ_IO, "out of memory");
        j->arena = a, j->acap = cap;
    }
    memcpy(j->arena + j->alen, p, n);
    j->alen += n;
    return 0;
}

/* Encode a code point as UTF-8; lone surrogates (legal in JSON escapes) get the 3-byte form so
 * that keys still compare as sequences of code points. */
static int j_put_cp(struct json *j, uint32_t cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80)
        b[0] = (unsigned char)cp, n = 1;
    else if (cp < 0x800)
        b[0] = (unsigned char)(0xC0 | cp >> 6), b[1] = (unsigned char)(0x80 | (cp & 0x3F)), n = 2;
    else if (cp < 0x10000)
        b[0] = (unsigned char)(0xE0 | cp >> 12), b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F)),
        b[2] = (unsigned char)(0x80 | (cp & 0x3F)), n = 3;
    else
        b[0] = (unsigned char)(0xF0 | cp >> 18), b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F)),
        b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F)), b[3] = (unsigned char)(0x80 | (cp & 0x3F)),
        n = 4;
    return j_put(j, b, n);
}

static int j_hex4(struct json *j, uint32_t *out)
{
    uint32_t v = 0;
    int k;
    if (j->n - j->i < 4)
        return j_err(j, "truncated \\u escape");
    for (k = 0; k < 4; k++) {
        unsigned c = j->s[j->i++];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return j_err(j, "bad hex digit in \\u escape");
    }
    *out = v;
    return 0;
}

/* Parses a string starting at '"'; when store is set, appends its unescaped bytes to the arena. */
static int j_string(struct json *j, int store)
{
    j->i++; /* opening quote */
    for (;;) {
        unsigned c;
        size_t start = j->i;
        while (j->i < j->n && j->s[j->i] != '"' && j->s[j->i] != '\\' && j->s[j->i] >= 0x20)
            j->i++;
        if (store && j->i > start && j_put(j, j->s + start, j->i - start))
            return -1;
        if (j->i >= j->n)
            return j_err(j, "unterminated string");
        c = j->s[j->i];
        if (c == '"') {
            j->i++;
            return 0;
        }
        if (c < 0x20)
            return j_err(j, "unescaped control character in string");
        /* backslash escape */
        j->i++;
        if (j->i >= j->n)
            return j_err(j, "unterminated escape");
        c = j->s[j->i++];
        {
            uint32_t cp;
            switch (c) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (j_hex4(j, &cp))
                    return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF && j->n - j->i >= 6 && j->s[j->i] == '\\' &&
                    j->s[j->i + 1] == 'u') {
                    size_t save = j->i;
                    uint32_t lo;
                    j->i += 2;
                    if (j_hex4(j, &lo))
                        return -1;
                    if (lo >= 0xDC00 && lo <= 0xDFFF)
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    else
                        j->i = save; /* lone high surrogate; the next escape stands alone */
                }
                break;
            default:
                return j_err(j, "invalid escape");
            }
            if (store && j_put_cp(j, cp))
                return -1;
        }
    }
}

static int j_digits(struct json *j)
{
    size_t start = j->i;
    while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9')
        j->i++;
    return j->i > start;
}

/* §6 number ranges: an integer (no fraction, no exponent) has magnitude <= 2^53; any other
 * number must round to a finite binary64. Decided on the digits, exactly, in linear time. */
static int j_number_range(struct json *j, size_t i0, size_t i1, size_t f0, size_t f1,
                          int64_t exp, int is_int)
{
    size_t p, k, nlim = sizeof NQ_JSON_FLOAT_LIMIT - 1;
    int64_t d;
    int in_int = 1;
    if (is_int) {
        size_t len = i1 - i0;
        if (len > sizeof NQ_JSON_INT_MAX - 1 ||
            (len == sizeof NQ_JSON_INT_MAX - 1 && memcmp(j->s + i0, NQ_JSON_INT_MAX, len) > 0))
            return fail(NQ_METADATA, "META integer at byte %zu is outside +-2^53 (§6)", i0);
        return 0;
    }
    /* d: decimal exponent of the first significant digit (value in [10^d, 10^(d+1))) */
    for (p = i0; p < i1 && j->s[p] == '0'; p++)
        ;
    if (p < i1) {
        d = (int64_t)(i1 - p - 1) + exp;
    } else {
        for (p = f0; p < f1 && j->s[p] == '0'; p++)
            ;
        if (p == f1)
            return 0; /* the value is zero */
        d = exp - (int64_t)(p - f0 + 1);
        in_int = 0;
    }
    if (d < (int64_t)nlim - 1)
        return 0; /* below 10^308 < DBL_MAX */
    if (d == (int64_t)nlim - 1) {
        /* as many integer digits as the limit: compare the significant digits with it */
        for (k = 0; k < nlim; k++) {
            unsigned c = '0', lim = (unsigned char)NQ_JSON_FLOAT_LIMIT[k];
            if (in_int && p == i1)
                in_int = 0, p = f0;
            if (in_int ? p < i1 : p < f1)
                c = j->s[p++];
            if (c != lim) {
                if (c < lim)
                    return 0;
                break;
            }
        }
        /* equal in all 309 digits (or larger): the value rounds to infinity */
    }
    return fail(NQ_METADATA, "META number at byte %zu does not round to a finite binary64 (§6)",
                i0);
}

static int j_number(struct json *j)
{
    size_t i0, i1, f0 = 0, f1 = 0;
    int64_t exp = 0;
    int is_int = 1, neg = 0;
    if (j->s[j->i] == '-')
        j->i++;
    i0 = j->i;
    if (j->i < j->n && j->s[j->i] == '0')
        j->i++;
    else if (!(j->i < j->n && j->s[j->i] >= '1' && j->s[j->i] <= '9') || !j_digits(j))
        return j_err(j, "invalid number");
    i1 = j->i;
    if (j->i < j->n && j->s[j->i] == '.') {
        j->i++;
        f0 = j->i;
        if (!j_digits(j))
            return j_err(j, "invalid fraction");
        f1 = j->i;
        is_int = 0;
    }
    if (j->i < j->n && (j->s[j->i] == 'e' || j->s[j->i] == 'E')) {
        j->i++;
        if (j->i < j->n && (j->s[j->i] == '+' || j->s[j->i] == '-'))
            neg = j->s[j->i++] == '-';
        if (!(j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9'))
            return j_err(j, "invalid exponent");
        while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9') {
            if (exp < INT64_C(1000000000)) /* saturate: any larger exponent decides alike */
                exp = exp * 10 + (j->s[j->i] - '0');
            j->i++;
        }
        if (neg)
            exp = -exp;
        is_int = 0;
    }
    if (f1 == 0)
        f0 = f1 = i1; /* no fraction digits */
    return j_number_range(j, i0, i1, f0, f1, exp, is_int);
}

static int j_literal(struct json *j, const char *word)
{
    size_t len = strlen(word);
    if (j->n - j->i < len || memcmp(j->s + j->i, word, len) != 0)
        return j_err(j, "unexpected character");
    j->i += len;
    return 0;
}

static int j_value(struct json *j);

/* §6: at most 2^20 values and member names in META, so that a reader's parsed form of it stays
 * small whatever the 16 MiB hold (a value is an object, array, string, number or literal). */
static int j_count(struct json *j)
{
    if (++j->values > NQ_MAX_JSON_VALUES)
        return fail(NQ_METADATA, "META has more than %" PRIu64 " values and member names (§6)",
                    NQ_MAX_JSON_VALUES);
    return 0;
}

static int j_object(struct json *j)
{
    size_t key0 = j->nkeys, arena0 = j->alen, k;
    if (++j->depth > NQ_MAX_JSON_DEPTH)
        return fail(NQ_METADATA, "META nests deeper than %u levels (§6)", NQ_MAX_JSON_DEPTH);
    j->i++; /* '{' */
    j_ws(j);
    if (j->i < j->n && j->s[j->i] == '}') {
        j->i++;
        j->depth--;
        return 0;
    }
    for (;;) {
        struct keyref ref;
        j_ws(j);
        if (j->i >= j->n || j->s[j->i] != '"')
            return j_err(j, "expected a string key");
        if (j_count(j))
            return -1;
        ref.off = j->alen;
        if (j_string(j, 1))
            return -1;
        ref.len = j->alen - ref.off;
        if (j->nkeys == j->capkeys) {
            size_t cap = j->capkeys ? 2 * j->capkeys : 64;
            struct keyref *nk = realloc(j->keys, cap * sizeof *nk);
            if (!nk)
                return fail(NQ_IO, "out of memory");
            j->keys = nk, j->capkeys = cap;
        }
        j->keys[j->nkeys++] = ref;
        j_ws(j);
        if (j->i >= j->n || j->s[j->i] != ':')
            return j_err(j, "expected ':'");
        j->i++;
        if (j_value(j))
            return -1;
        j_ws(j);
        if (j->i < j->n && j->s[j->i] == ',') {
            j->i++;
            continue;
        }
        if (j->i < j->n && j->s[j->i] == '}') {
            j->i++;
            break;
        }
        return j_err(j, "expected ',' or '}'");
    }
    g_sort_arena = j->arena;
    qsort(j->keys + key0, j->nkeys - key0, sizeof *j->keys, keyref_cmp);
    for (k = key0 + 1; k < j->nkeys; k++)
        if (keyref_cmp(&j->keys[k - 1], &j->keys[k]) == 0)
            return fail(NQ_METADATA, "META has a duplicate key \"%.*s\" (§6)",
                        (int)(j->keys[k].len > 80 ? 80 : j->keys[k].len),
                        (const char *)j->arena + j->keys[k].off);
    j->nkeys = key0;
    j->alen = arena0;
    j->depth--;
    return 0;
}

static int j_array(struct json *j)
{
    if (++j->depth > NQ_MAX_JSON_DEPTH)
        return fail(NQ_METADATA, "META nests deeper than %u levels (§6)", NQ_MAX_JSON_DEPTH);
    j->i++; /* '[' */
    j_ws(j);
    if (j->i < j->n && j->s[j->i] == ']') {
        j->i++;
        j->depth--;
        return 0;
    }
    for (;;) {
        if (j_value(j))
            return -1;
        j_ws(j);
        if (j->i < j->n && j->s[j->i] == ',') {
            j->i++;
            continue;
        }
        if (j->i < j->n && j->s[j->i] == ']') {
            j->i++;
            break;
        }
        return j_err(j, "expected ',' or ']'");
    }
    j->depth--;
    return 0;
}

static int j_value(struct json *j)
{
    j_ws(j);
    if (j->i >= j->n)
        return j_err(j, "unexpected end of text");
    if (j_count(j))
        return -1;
    switch (j->s[j->i]) {
    case '{': return j_object(j);
    case '[': return j_array(j);
    case '"': return j_string(j, 0);
    case 't': return j_literal(j, "true");
    case 'f': return j_literal(j, "false");
    case 'n': return j_literal(j, "null");
    default:
        if (j->s[j->i] == '-' || (j->s[j->i] >= '0' && j->s[j->i] <= '9'))
            return j_number(j);
        return j_err(j, "unexpected character");
    }
}

static int meta_validate(const unsigned char *s, size_t n)
{
    struct json j;
    int rc;
    if (!utf8_valid(s, n))
        return fail(NQ_METADATA, "META is not valid UTF-8 (§6)");
    memset(&j, 0, sizeof j);
    j.s = s, j.n = n;
    j_ws(&j);
    if (j.i >= j.n || s[j.i] != '{') /* also rejects a byte order mark (RFC 8259 §8.1) */
        rc = j_err(&j, "the top-level value is not an object");
    else if ((rc = j_count(&j)) == 0 && (rc = j_object(&j)) == 0) {
        j_ws(&j);
        if (j.i != j.n)
            rc = j_err(&j, "trailing characters after the object");
    }
    free(j.keys);
    free(j.arena);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * File layer: every read goes through read_at, which refuses to read at or past read_limit.
 * Until the LOW section is asked for, read_limit is part_end (§9), so part-bit work provably
 * reads only the prefix.
 * ------------------------------------------------------------------------------------------- */

struct blob {
    uint64_t offset, length;
    uint32_t crc;
    unsigned codec;
    uint64_t raw; /* uncompressed length (§4.2), set while the record is checked */
};

struct section {
    uint64_t offset, length;
    uint32_t crc;
};

struct tensor {
    uint64_t name_offset;
    uint32_t name_length;
    unsigned kind, dtype, ndim;
    uint64_t dims[NQ_MAX_NDIM];
    uint64_t numel;
    struct blob data, high, low;
    struct blob lv[NQ_MAX_LEVELS - 2]; /* §14.2: residual levels 2 .. m-1 (LEVELS files) */
};

struct reader {
    FILE *f;
    uint64_t size;       /* real file size */
    uint64_t read_limit; /* no byte at or past this offset is read */
    uint64_t bytes_read, read_end;
    unsigned version_major, version_minor;
    uint32_t count;
    uint64_t incompat, compat;
    unsigned n, h, l;
    uint64_t part_end, full_end, header_end;
    struct section sec[NQ_SECTION_COUNT];
    /* §14: levels. A 1.0 file has m = 2, widths {h, n} and res[0] = LOW, so one code path
     * reads both: level j > 0 adds the residual blob of res[j-1] (width w_j - w_(j-1) + 1). */
    int levels;                           /* incompat bit 1 set */
    unsigned m, widths[NQ_MAX_LEVELS];
    struct section levels_sec;            /* the LEVELS header section */
    struct section res[NQ_MAX_LEVELS - 1]; /* R_1 .. R_(m-1) */
    uint64_t end[NQ_MAX_LEVELS];          /* each level's byte end */
    unsigned char *header; /* bytes [256, header_end): INDEX, NAMES, META (, LEVELS) */
    const unsigned char *names;
    struct tensor *tensors;
    int part_only;
};

static int read_at(struct reader *r, uint64_t off, void *buf, size_t len)
{
    uint64_t end;
    if (!add_u64(off, len, &end) || end > r->read_limit)
        return fail(NQ_INTERNAL, "refusing to read [%" PRIu64 ", %" PRIu64 ") past %" PRIu64,
                    off, off + (uint64_t)len, r->read_limit);
    if (len == 0)
        return 0;
    if (off > (uint64_t)INT64_MAX || fseeko(r->f, (off_t)off, SEEK_SET) != 0)
        return fail(NQ_IO, "cannot seek to %" PRIu64 ": %s", off, strerror(errno));
    if (fread(buf, 1, len, r->f) != len)
        return fail(NQ_IO, "short read at %" PRIu64 " (file changed or I/O error)", off);
    r->bytes_read += len;
    if (end > r->read_end)
        r->read_end = end;
    return 0;
}

#define CHUNK ((size_t)1 << 16)

/* CRC-32 of the file range [off, off + len), streamed. */
static int crc_range(struct reader *r, uint64_t off, uint64_t len, uint32_t *out)
{
    unsigned char *buf = malloc(CHUNK);
    uint32_t reg = UINT32_C(0xFFFFFFFF);
    if (!buf)
        return fail(NQ_IO, "out of memory");
    while (len) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        if (read_at(r, off, buf, n)) {
            free(buf);
            return -1;
        }
        reg = crc32_update(reg, buf, n);
        off += n, len -= n;
    }
    free(buf);
    *out = reg ^ UINT32_C(0xFFFFFFFF);
    return 0;
}

/* Fails with `layout` unless every byte of [off, off + len) is zero. */
static int zero_range(struct reader *r, uint64_t off, uint64_t len, const char *what)
{
    unsigned char *buf = malloc(CHUNK);
    uint64_t at = off;
    if (!buf)
        return fail(NQ_IO, "out of memory");
    while (len) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK, k;
        if (read_at(r, at, buf, n)) {
            free(buf);
            return -1;
        }
        for (k = 0; k < n; k++)
            if (buf[k]) {
                unsigned bad = buf[k];
                free(buf);
                return fail(NQ_LAYOUT, "%s: padding byte at %" PRIu64 " is 0x%02x, not zero",
                            what, at + k, bad);
            }
        at += n, len -= n;
    }
    free(buf);
    return 0;
}

/* Lets reads reach the LOW section (full-bit mode); part_only on a part-bit-only file (§9). */
static int enable_low(struct reader *r, const char *why)
{
    if (r->part_only)
        return fail(NQ_PART_ONLY,
                    "%s needs the LOW section, but this is a part-bit-only file (%" PRIu64
                    " bytes, full_end %" PRIu64 ", §9)",
                    why, r->size, r->full_end);
    r->read_limit = r->full_end;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Opening: spec §11 steps 1-12, in order.
 * ------------------------------------------------------------------------------------------- */

static void parse_blob(const unsigned char *p, struct blob *b)
{
    b->offset = le64(p);
    b->length = le64(p + 8);
    b->crc = le32(p + 16);
    b->codec = p[20];
}

/* Duplicate names (§5, §11 step 11.11), found by sorting record indices by (name, index) and
 * comparing neighbours: O(n log n) whatever the names are, so no set of names can make the
 * check slow (a hash table degrades to quadratic time on names that collide in its hash). */
static const struct reader *g_sort_reader; /* qsort has no context argument in C99 */

static int name_index_cmp(const void *a, const void *b);

/* Among records [0, m), the smallest index whose name equals an earlier record's; -1 if none
 * (then *first is untouched), else *first is that earlier record. -2 when out of memory. */
static long first_duplicate(const struct reader *r, uint32_t m, uint32_t *first);

/* Placement cursor of one data section (§7.1). */
struct cursor {
    uint64_t next;  /* where the next blob must start */
    int any;        /* a blob has been placed */
    uint64_t end;   /* end of the last blob */
};

static int place_blob(const struct section *s, const char *sname, struct cursor *c,
                      struct blob *b, uint64_t raw, uint32_t rec, const char *which)
{
    uint64_t want = s->offset, end, sec_end = s->offset + s->length, bound;
    if (c->any && !align_u64(c->end, NQ_BLOB_ALIGN, &want))
        return fail(NQ_LAYOUT, "record %" PRIu32 ": %s blob offset overflows", rec, which);
    if (b->offset != want)
        return fail(NQ_LAYOUT,
                    "record %" PRIu32 ": %s blob at %" PRIu64 ", expected %" PRIu64
                    " in %s (§7.1)",
                    rec, which, b->offset, want, sname);
    if (b->codec == NQ_CODEC_NONE) {
        if (b->length != raw)
            return fail(NQ_LAYOUT,
                        "record %" PRIu32 ": %s blob is %" PRIu64 " bytes, expected %" PRIu64
                        " (§4.2)",
                        rec, which, b->length, raw);
    } else { /* zstd, §8: max(1, ceil(raw/32768)) <= length <= raw + raw/128 + 1024 */
        uint64_t least = raw / NQ_ZSTD_MAX_RATIO + (raw % NQ_ZSTD_MAX_RATIO != 0);
        if (least < 1)
            least = 1;
        if (!add_u64(raw, raw / NQ_ZSTD_SLACK_DIV, &bound) ||
            !add_u64(bound, NQ_ZSTD_SLACK_ADD, &bound))
            bound = UINT64_MAX;
        if (b->length < least || b->length > bound)
            return fail(NQ_LAYOUT,
                        "record %" PRIu32 ": compressed %s blob is %" PRIu64
                        " bytes, allowed %" PRIu64 "..%" PRIu64 " (§8)",
                        rec, which, b->length, least, bound);
    }
    if (!add_u64(b->offset, b->length, &end) || end > sec_end)
        return fail(NQ_LAYOUT, "record %" PRIu32 ": %s blob runs past the end of %s (§7.1)", rec,
                    which, sname);
    c->any = 1;
    c->end = end;
    b->raw = raw;
    return 0;
}

/* §11 step 11 for one record. */
static const char *const LEVEL_NAMES[NQ_MAX_LEVELS] = {"level 0", "level 1", "level 2", "level 3",
                                                        "level 4", "level 5", "level 6", "level 7"};

/* The blob reference of residual level j >= 2 of record i, inside LEVELS (§14.2). */
static const unsigned char *level_ref(const struct reader *r, uint32_t i, unsigned j)
{
    uint64_t at = r->levels_sec.offset - NQ_PREAMBLE_SIZE +
                  (uint64_t)NQ_SECTION_ENTRY_SIZE * (r->m - 1) +
                  ((uint64_t)i * (r->m - 2) + (j - 2)) * NQ_SECTION_ENTRY_SIZE;
    return r->header + at;
}

/* The residual blob of level j >= 1 of a NESTED tensor: INDEX `low` for level 1 (§14.2). */
static const struct blob *residual(const struct tensor *t, unsigned j)
{
    return j == 1 ? &t->low : &t->lv[j - 2];
}

static int check_record(struct reader *r, uint32_t i, const unsigned char *rec, uint64_t *name_cur,
                        struct cursor cur[NQ_MAX_LEVELS + 1], int *any_zstd, int *named)
{
    struct tensor *t = &r->tensors[i];
    const struct blob *used[NQ_MAX_LEVELS + 1];
    unsigned nused, k, j;
    uint64_t raw, end;

    t->name_offset = le64(rec);
    t->name_length = le32(rec + 8);
    t->kind = rec[12];
    t->dtype = rec[13];
    t->ndim = rec[14];
    for (k = 0; k < NQ_MAX_NDIM; k++)
        t->dims[k] = le64(rec + 16 + 8 * k);
    parse_blob(rec + 80, &t->data);
    parse_blob(rec + 104, &t->high);
    parse_blob(rec + 128, &t->low);
    for (j = 2; j < r->m; j++)
        parse_blob(level_ref(r, i, j), &t->lv[j - 2]);

    /* 11.1 reserved bytes (byte 15, 152..159, 21..23 of each blob reference, §14.4 too) */
    if (rec[15] != 0 || !all_zero(rec + 152, 8) || !all_zero(rec + 80 + 21, 3) ||
        !all_zero(rec + 104 + 21, 3) || !all_zero(rec + 128 + 21, 3))
        return fail(NQ_INVALID_HEADER, "record %" PRIu32 ": reserved bytes are not zero (§4)", i);
    for (j = 2; j < r->m; j++)
        if (!all_zero(level_ref(r, i, j) + 21, 3))
            return fail(NQ_INVALID_HEADER,
                        "record %" PRIu32 ": reserved bytes of its level %u reference (§14.2)", i,
                        j);
    /* 11.2 kind */
    if (t->kind != NQ_KIND_RAW && t->kind != NQ_KIND_NESTED)
        return fail(NQ_INVALID_HEADER, "record %" PRIu32 ": kind %u is neither 0 nor 1 (§4)", i,
                    t->kind);
    /* 11.3 dtype */
    if (t->dtype < 1 || t->dtype > NQ_DTYPE_MAX)
        return fail(NQ_INVALID_HEADER, "record %" PRIu32 ": dtype %u is not a §4.1 code", i,
                    t->dtype);
    if (t->kind == NQ_KIND_NESTED && t->dtype > NQ_DTYPE_F64)
        return fail(NQ_INVALID_HEADER,
                    "record %" PRIu32 ": NESTED tensor with dtype %s; must be F32, F16, BF16 "
                    "or F64 (§4.1)",
                    i, DTYPES[t->dtype].name);
    /* 11.4 ndim and unused dims */
    if (t->ndim > NQ_MAX_NDIM)
        return fail(NQ_INVALID_HEADER, "record %" PRIu32 ": ndim %u > %u (§4)", i, t->ndim,
                    NQ_MAX_NDIM);
    if (t->kind == NQ_KIND_NESTED && t->ndim < 1)
        return fail(NQ_INVALID_HEADER, "record %" PRIu32 ": NESTED tensor with ndim 0 (§4)", i);
    for (k = t->ndim; k < NQ_MAX_NDIM; k++)
        if (t->dims[k] != 0)
            return fail(NQ_INVALID_HEADER, "record %" PRIu32 ": unused dims[%u] is not zero (§4)",
                        i, k);
    /* 11.5 a RAW tensor has no high/low blob */
    if (t->kind == NQ_KIND_NESTED) {
        used[0] = &t->data, used[1] = &t->high, nused = 2;
        for (j = 1; j < r->m; j++)
            used[nused++] = residual(t, j);
    } else {
        int zero = all_zero(rec + 104, 48);
        for (j = 2; j < r->m; j++)
            zero = zero && all_zero(level_ref(r, i, j), NQ_SECTION_ENTRY_SIZE);
        if (!zero)
            return fail(NQ_INVALID_HEADER,
                        "record %" PRIu32 ": RAW tensor with non-zero high/low blob refs (§4)", i);
        used[0] = &t->data, nused = 1;
    }
    /* 11.6 codecs, blob by blob (data, high, low) */
    for (k = 0; k < nused; k++) {
        if (used[k]->codec > NQ_CODEC_ZSTD)
            return fail(NQ_UNSUPPORTED_FEATURE, "record %" PRIu32 ": unknown codec %u (§8)", i,
                        used[k]->codec);
        if (used[k]->codec == NQ_CODEC_ZSTD && !(r->incompat & NQ_FLAG_ZSTD))
            return fail(NQ_INVALID_HEADER,
                        "record %" PRIu32 ": zstd blob but incompat_flags bit 0 is clear (§8)", i);
        if (used[k]->codec == NQ_CODEC_ZSTD)
            *any_zstd = 1;
    }
    /* 11.7 every dimension, and the product of the nonzero dimensions, <= 2^48 (§4, §10); a
     * zero dimension makes numel 0 */
    {
        uint64_t prod = 1;
        int zero = 0;
        for (k = 0; k < t->ndim; k++)
            if (t->dims[k] > NQ_MAX_NUMEL)
                return fail(NQ_LIMIT,
                            "record %" PRIu32 ": dims[%u] = %" PRIu64 " is over 2^48 (§10)", i, k,
                            t->dims[k]);
        for (k = 0; k < t->ndim; k++) {
            if (t->dims[k] == 0) {
                zero = 1;
                continue;
            }
            if (!mul_u64(prod, t->dims[k], &prod) || prod > NQ_MAX_NUMEL)
                return fail(NQ_LIMIT,
                            "record %" PRIu32 ": the nonzero dimensions multiply to more than "
                            "2^48 (§4, §10)",
                            i);
        }
        t->numel = zero ? 0 : prod;
    }
    /* 11.8 name length */
    if (t->name_length < 1 || t->name_length > NQ_MAX_NAME)
        return fail(NQ_INVALID_NAME, "record %" PRIu32 ": name length %" PRIu32
                    " is not 1..%u (§5)", i, t->name_length, NQ_MAX_NAME);
    /* 11.9 the name follows the previous one inside NAMES (§5) */
    if (t->name_offset != *name_cur)
        return fail(NQ_LAYOUT, "record %" PRIu32 ": name_offset %" PRIu64 ", expected %" PRIu64
                    " (§5)", i, t->name_offset, *name_cur);
    if (!add_u64(t->name_offset, t->name_length, &end) || end > r->sec[SEC_NAMES].length)
        return fail(NQ_LAYOUT, "record %" PRIu32 ": name runs past the end of NAMES (§5)", i);
    *name_cur = end;
    /* 11.10 UTF-8 */
    if (!utf8_valid(r->names + t->name_offset, t->name_length))
        return fail(NQ_INVALID_NAME, "record %" PRIu32 ": name is not valid UTF-8 (§5)", i);
    /* 11.11 duplicate: checked for all named records at once by the caller (first_duplicate),
     * which reports it ahead of any later failure, as the order of §11 requires */
    *named = 1;
    /* 11.12 blob placement and lengths (§4.2, §7.1, §8), in the order data, high, low */
    if (t->kind == NQ_KIND_RAW) {
        raw = t->numel * DTYPES[t->dtype].size; /* <= 2^51, cannot wrap */
        if (place_blob(&r->sec[SEC_DATA], "DATA", &cur[0], &t->data, raw, i, "data"))
            return -1;
    } else {
        /* §4.2, §14.3: two float32 arrays per level (16*C bytes in a 1.0 file) */
        if (!mul_u64(t->dims[0], 2 * r->m * NQ_PARAM_BYTES, &raw))
            raw = UINT64_MAX; /* cannot match any stored length (§4.2) */
        if (place_blob(&r->sec[SEC_DATA], "DATA", &cur[0], &t->data, raw, i, "data"))
            return -1;
        packed_len(t->numel, r->h, &raw); /* numel <= 2^48: cannot wrap */
        if (place_blob(&r->sec[SEC_HIGH], "HIGH", &cur[1], &t->high, raw, i, "high"))
            return -1;
        for (j = 1; j < r->m; j++) {
            packed_len(t->numel, r->widths[j] - r->widths[j - 1] + 1, &raw);
            if (place_blob(&r->res[j - 1], r->levels ? LEVEL_NAMES[j] : "LOW", &cur[1 + j],
                           (struct blob *)residual(t, j), raw, i, j == 1 ? "low" : LEVEL_NAMES[j]))
                return -1;
        }
    }
    return 0;
}

static int name_index_cmp(const void *a, const void *b)
{
    const struct tensor *x = &g_sort_reader->tensors[*(const uint32_t *)a];
    const struct tensor *y = &g_sort_reader->tensors[*(const uint32_t *)b];
    size_t m = x->name_length < y->name_length ? x->name_length : y->name_length;
    int c = memcmp(g_sort_reader->names + x->name_offset, g_sort_reader->names + y->name_offset, m);
    if (c)
        return c;
    if (x->name_length != y->name_length)
        return (x->name_length > y->name_length) - (x->name_length < y->name_length);
    return (*(const uint32_t *)a > *(const uint32_t *)b) - (*(const uint32_t *)a < *(const uint32_t *)b);
}

static long first_duplicate(const struct reader *r, uint32_t m, uint32_t *first)
{
    uint32_t *idx, k, group = 0;
    long best = -1;
    if (m < 2)
        return -1;
    idx = malloc((size_t)m * sizeof *idx);
    if (!idx)
        return -2;
    for (k = 0; k < m; k++)
        idx[k] = k;
    g_sort_reader = r;
    qsort(idx, m, sizeof *idx, name_index_cmp);
    /* in a run of equal names the first entry is the earliest record; each later one is a
     * duplicate of it */
    for (k = 1; k < m; k++) {
        const struct tensor *x = &r->tensors[idx[k - 1]], *y = &r->tensors[idx[k]];
        if (x->name_length == y->name_length &&
            memcmp(r->names + x->name_offset, r->names + y->name_offset, x->name_length) == 0) {
            if (best < 0 || (long)idx[k] < best)
                best = (long)idx[k], *first = idx[group];
        } else {
            group = k;
        }
    }
    free(idx);
    return best;
}

static int nq_open(struct reader *r, const char *path)
{
    unsigned char p[NQ_PREAMBLE_SIZE];
    uint64_t v, want, header_len;
    struct cursor cur[NQ_MAX_LEVELS + 1];
    uint64_t name_cur = 0;
    unsigned j;
    int any_zstd = 0, k;
    uint32_t i;
    off_t end;

    memset(r, 0, sizeof *r);
    r->f = fopen(path, "rb");
    if (!r->f)
        return fail(NQ_IO, "cannot open: %s", strerror(errno));
    if (fseeko(r->f, 0, SEEK_END) != 0 || (end = ftello(r->f)) < 0)
        return fail(NQ_IO, "cannot find the file size: %s", strerror(errno));
    r->size = (uint64_t)end;
    r->read_limit = r->size;

    /* 1 */
    if (r->size < NQ_PREAMBLE_SIZE)
        return fail(NQ_TRUNCATED, "file is %" PRIu64 " bytes, shorter than the 256-byte preamble",
                    r->size);
    if (read_at(r, 0, p, sizeof p))
        return -1;
    /* 2 */
    if (memcmp(p, NQ_MAGIC, sizeof NQ_MAGIC) != 0)
        return fail(NQ_BAD_MAGIC, "the first 8 bytes are not the .nq magic (§3.1)");
    /* 3 */
    r->version_major = le16(p + 8);
    r->version_minor = le16(p + 10);
    if (r->version_major != NQ_VERSION_MAJOR)
        return fail(NQ_UNSUPPORTED_VERSION, "version %u.%u; this reader implements major %u",
                    r->version_major, r->version_minor, NQ_VERSION_MAJOR);
    /* 4 */
    if (crc32_buf(p, NQ_PREAMBLE_CRC_AT) != le32(p + NQ_PREAMBLE_CRC_AT))
        return fail(NQ_CHECKSUM, "preamble_crc is 0x%08" PRIx32 ", computed 0x%08" PRIx32,
                    le32(p + NQ_PREAMBLE_CRC_AT), crc32_buf(p, NQ_PREAMBLE_CRC_AT));
    /* 5 */
    r->count = le32(p + 12);
    r->incompat = le64(p + 16);
    r->compat = le64(p + 24);
    if (r->incompat & ~(NQ_FLAG_ZSTD | NQ_FLAG_LEVELS))
        return fail(NQ_UNSUPPORTED_FEATURE, "unknown incompat_flags bits 0x%" PRIx64 " (§3.3)",
                    r->incompat & ~(NQ_FLAG_ZSTD | NQ_FLAG_LEVELS));
    /* 6 */
    r->n = p[32];
    r->h = p[33];
    if (r->n < NQ_N_MIN || r->n > NQ_N_MAX)
        return fail(NQ_INVALID_HEADER, "n = %u is not in 2..8 (§3.1)", r->n);
    if (r->h < NQ_H_MIN || r->h > r->n - 1)
        return fail(NQ_INVALID_HEADER, "h = %u is not in 1..n-1 = 1..%u (§3.1)", r->h, r->n - 1);
    r->l = r->n - r->h;
    r->levels = (r->incompat & NQ_FLAG_LEVELS) != 0;
    r->m = 2, r->widths[0] = r->h, r->widths[1] = r->n;
    if (r->levels) { /* §14.1: level_count and widths, rising strictly from h to n */
        r->m = p[NQ_LEVEL_COUNT_AT];
        if (r->m < NQ_MIN_LEVELS || r->m > NQ_MAX_LEVELS)
            return fail(NQ_INVALID_HEADER, "level_count %u is not in 3..8 (§14.1)", r->m);
        for (j = 0; j < NQ_MAX_LEVELS; j++) {
            unsigned w = p[NQ_LEVEL_WIDTHS_AT + j];
            int ok = j < r->m ? (j == 0 ? w == r->h : w > r->widths[j - 1]) : w == 0;
            if (j + 1 == r->m && w != r->n)
                ok = 0;
            if (!ok)
                return fail(NQ_INVALID_HEADER,
                            "level widths must rise strictly from h to n, zero after (§14.1)");
            if (j < r->m)
                r->widths[j] = w;
        }
        r->levels_sec.offset = le64(p + NQ_LEVELS_AT);
        r->levels_sec.length = le64(p + NQ_LEVELS_AT + 8);
        r->levels_sec.crc = le32(p + NQ_LEVELS_AT + 16);
    }
    r->part_end = le64(p + 40);
    r->full_end = le64(p + 48);
    for (k = 0; k < NQ_SECTION_COUNT; k++) {
        const unsigned char *e = p + NQ_SECTION_TABLE_AT + NQ_SECTION_ENTRY_SIZE * k;
        r->sec[k].offset = le64(e);
        r->sec[k].length = le64(e + 8);
        r->sec[k].crc = le32(e + 16);
    }
    /* 7: limits, in the order of §11 step 7 */
    if (r->count > NQ_MAX_TENSORS)
        return fail(NQ_LIMIT, "tensor_count %" PRIu32 " > 1048576 (§10)", r->count);
    for (k = 0; k < NQ_SECTION_COUNT; k++)
        if (r->sec[k].offset > NQ_MAX_OFFSET || r->sec[k].length > NQ_MAX_OFFSET)
            return fail(NQ_LIMIT, "%s offset or length is over 2^63-1 (§10)", SECTION_NAMES[k]);
    if (r->levels_sec.offset > NQ_MAX_OFFSET || r->levels_sec.length > NQ_MAX_OFFSET)
        return fail(NQ_LIMIT, "LEVELS offset or length is over 2^63-1 (§10, §14.4)");
    if (r->part_end > NQ_MAX_OFFSET)
        return fail(NQ_LIMIT, "part_end is over 2^63-1 (§10)");
    if (r->full_end > NQ_MAX_OFFSET)
        return fail(NQ_LIMIT, "full_end is over 2^63-1 (§10)");
    if (r->sec[SEC_META].length > NQ_MAX_META)
        return fail(NQ_LIMIT, "META is %" PRIu64 " bytes, more than 16 MiB (§10)",
                    r->sec[SEC_META].length);
    v = NQ_PREAMBLE_SIZE + (uint64_t)NQ_RECORD_SIZE * r->count; /* lengths <= 2^63-1: no wrap */
    if (!add_u64(v, r->sec[SEC_NAMES].length, &v) || !add_u64(v, r->sec[SEC_META].length, &v) ||
        !add_u64(v, r->levels_sec.length, &v) || v > NQ_MAX_HEADER_END)
        return fail(NQ_LIMIT, "header (preamble + INDEX + NAMES + META) is over 256 MiB (§10)");
    /* 8: canonical layout (§3.2): INDEX.length, then every offset in table order, then part_end
     * and full_end. Terms are <= 2^63-1 and each comparison bounds the next sum; the arithmetic
     * is checked anyway. */
    if (r->sec[SEC_INDEX].length != (uint64_t)NQ_RECORD_SIZE * r->count)
        return fail(NQ_LAYOUT, "INDEX.length is %" PRIu64 ", expected 160 * %" PRIu32 " (§3.2)",
                    r->sec[SEC_INDEX].length, r->count);
    want = NQ_PREAMBLE_SIZE;
    for (k = 0; k < NQ_SECTION_COUNT; k++) {
        if (k >= SEC_DATA && !align_u64(want, NQ_SECTION_ALIGN, &want))
            return fail(NQ_LAYOUT, "%s offset overflows (§3.2)", SECTION_NAMES[k]);
        if (r->sec[k].offset != want)
            return fail(NQ_LAYOUT, "%s.offset is %" PRIu64 ", expected %" PRIu64 " (§3.2)",
                        SECTION_NAMES[k], r->sec[k].offset, want);
        if (!add_u64(want, r->sec[k].length, &want))
            return fail(NQ_LAYOUT, "%s end overflows (§3.2)", SECTION_NAMES[k]);
        if (k == SEC_META && !add_u64(want, r->levels_sec.length, &want)) /* §14.2 */
            return fail(NQ_LAYOUT, "LEVELS end overflows (§14.2)");
        if (k == SEC_META)
            r->header_end = want;
    }
    if (r->levels) { /* §14.4 step 8: LEVELS.offset, then LEVELS.length */
        uint64_t meta_end = r->sec[SEC_META].offset + r->sec[SEC_META].length;
        uint64_t len = (uint64_t)NQ_SECTION_ENTRY_SIZE * (r->m - 1) +
                       (uint64_t)NQ_SECTION_ENTRY_SIZE * (r->m - 2) * r->count;
        if (r->levels_sec.offset != meta_end)
            return fail(NQ_LAYOUT, "LEVELS.offset is %" PRIu64 ", expected %" PRIu64 " (§14.2)",
                        r->levels_sec.offset, meta_end);
        if (r->levels_sec.length != len)
            return fail(NQ_LAYOUT, "LEVELS.length is %" PRIu64 ", expected %" PRIu64 " (§14.2)",
                        r->levels_sec.length, len);
    }
    want = r->sec[SEC_HIGH].offset + r->sec[SEC_HIGH].length; /* <= LOW.offset: no wrap */
    if (r->part_end != want)
        return fail(NQ_LAYOUT, "part_end is %" PRIu64 ", expected %" PRIu64 " (§3.2)",
                    r->part_end, want);
    want = r->sec[SEC_LOW].offset + r->sec[SEC_LOW].length; /* checked in the loop */
    if (r->full_end != want)
        return fail(NQ_LAYOUT, "full_end is %" PRIu64 ", expected %" PRIu64 " (§3.2)",
                    r->full_end, want);
    /* 9 */
    if (r->size < r->header_end || r->size < r->part_end)
        return fail(NQ_TRUNCATED, "file is %" PRIu64 " bytes; the part-bit prefix needs %" PRIu64
                    " (§9)", r->size, r->part_end);
    if (r->size > r->full_end)
        return fail(NQ_LAYOUT, "file is %" PRIu64 " bytes, more than full_end %" PRIu64 " (§9)",
                    r->size, r->full_end);
    r->part_only = r->size < r->full_end;
    r->read_limit = r->part_end; /* §9: nothing at or past part_end until LOW is asked for */
    /* 10: header_len <= 256 MiB and <= size (steps 7 and 9), so this allocation is bounded */
    header_len = r->header_end - NQ_PREAMBLE_SIZE;
    r->header = malloc(header_len ? (size_t)header_len : 1);
    if (!r->header)
        return fail(NQ_IO, "out of memory");
    if (read_at(r, NQ_PREAMBLE_SIZE, r->header, (size_t)header_len))
        return -1;
    for (k = SEC_INDEX; k <= SEC_META; k++) {
        uint32_t c = crc32_buf(r->header + (r->sec[k].offset - NQ_PREAMBLE_SIZE),
                               (size_t)r->sec[k].length);
        if (c != r->sec[k].crc)
            return fail(NQ_CHECKSUM, "%s crc is 0x%08" PRIx32 ", computed 0x%08" PRIx32,
                        SECTION_NAMES[k], r->sec[k].crc, c);
    }
    r->end[0] = r->part_end;
    if (!r->levels) {
        r->res[0] = r->sec[SEC_LOW];
        r->end[1] = r->full_end;
    } else {
        /* §14.4 step 10: LEVELS CRC; step 10a: the residual levels tile LOW */
        const unsigned char *lv = r->header + (r->levels_sec.offset - NQ_PREAMBLE_SIZE);
        uint64_t cursor = r->sec[SEC_LOW].offset;
        uint32_t c = crc32_buf(lv, (size_t)r->levels_sec.length);
        if (c != r->levels_sec.crc)
            return fail(NQ_CHECKSUM, "LEVELS crc is 0x%08" PRIx32 ", computed 0x%08" PRIx32,
                        r->levels_sec.crc, c);
        for (j = 1; j < r->m; j++) {
            const unsigned char *e = lv + NQ_SECTION_ENTRY_SIZE * (j - 1);
            struct section *s = &r->res[j - 1];
            uint64_t want_off = 0;
            s->offset = le64(e), s->length = le64(e + 8), s->crc = le32(e + 16);
            if (!all_zero(e + 20, 4))
                return fail(NQ_INVALID_HEADER, "level %u entry: reserved bytes (§14.2)", j);
            if (s->offset > NQ_MAX_OFFSET || s->length > NQ_MAX_OFFSET)
                return fail(NQ_LIMIT, "level %u offset or length is over 2^63-1 (§14.4)", j);
            if (!align_u64(cursor, NQ_SECTION_ALIGN, &want_off) || s->offset != want_off)
                return fail(NQ_LAYOUT, "level %u starts at %" PRIu64 ", expected %" PRIu64
                            " (§14.2)", j, s->offset, want_off);
            cursor = s->offset + s->length; /* both <= 2^63-1: no wrap */
            r->end[j] = cursor;
        }
        if (cursor != r->full_end)
            return fail(NQ_LAYOUT, "the last level ends at %" PRIu64 ", not full_end %" PRIu64
                        " (§14.2)", cursor, r->full_end);
    }
    r->names = r->header + (r->sec[SEC_NAMES].offset - NQ_PREAMBLE_SIZE);
    /* 11 */
    r->tensors = calloc(r->count ? r->count : 1, sizeof *r->tensors);
    if (!r->tensors)
        return fail(NQ_IO, "out of memory");
    memset(cur, 0, sizeof cur);
    {
        /* Records are checked in order up to the first failure; then the names of every record
         * that got as far as step 11.11 are checked for duplicates. A duplicate is reported in
         * place of that failure: it belongs to an earlier record, or to the failing record
         * itself at a step before 11.12 (§11 order). */
        uint32_t named_count = r->count, first = 0;
        int failed = 0;
        long dup;
        for (i = 0; i < r->count; i++) {
            int named = 0;
            if (check_record(r, i, r->header + (uint64_t)NQ_RECORD_SIZE * i, &name_cur, cur,
                             &any_zstd, &named)) {
                failed = 1;
                named_count = i + (uint32_t)named;
                break;
            }
        }
        dup = first_duplicate(r, named_count, &first);
        if (dup == -2)
            return fail(NQ_IO, "out of memory");
        if (dup >= 0) {
            const struct tensor *d = &r->tensors[dup];
            return fail(NQ_DUPLICATE_NAME,
                        "records %" PRIu32 " and %ld are both named \"%.*s\" (§5)", first, dup,
                        (int)d->name_length, (const char *)r->names + d->name_offset);
        }
        if (failed)
            return -1;
    }
    if (name_cur != r->sec[SEC_NAMES].length)
        return fail(NQ_LAYOUT, "names use %" PRIu64 " bytes but NAMES.length is %" PRIu64 " (§5)",
                    name_cur, r->sec[SEC_NAMES].length);
    for (k = 0; k < 1 + (int)r->m; k++) {
        const struct section *s = k < 2 ? &r->sec[SEC_DATA + k] : &r->res[k - 2];
        uint64_t used = cur[k].any ? cur[k].end - s->offset : 0;
        if (s->length != used)
            return fail(NQ_LAYOUT, "%s.length is %" PRIu64 " but its blobs end at +%" PRIu64
                        " (§7.1)", k < 2 || !r->levels ? SECTION_NAMES[SEC_DATA + (k < 2 ? k : 2)]
                        : LEVEL_NAMES[k - 1], s->length, used);
    }
    if ((r->incompat & NQ_FLAG_ZSTD) && !any_zstd)
        return fail(NQ_INVALID_HEADER,
                    "incompat_flags bit 0 (ZSTD) is set but no blob is compressed (§3.3)");
    /* 12 */
    return meta_validate(r->header + (r->sec[SEC_META].offset - NQ_PREAMBLE_SIZE),
                         (size_t)r->sec[SEC_META].length);
}

static void nq_close(struct reader *r)
{
    if (r->f)
        fclose(r->f);
    free(r->header);
    free(r->tensors);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------------------------------------
 * Blob access (§11 step 13: CRCs are checked when a blob is read).
 * ------------------------------------------------------------------------------------------- */

static int check_section_crc(struct reader *r, int sec)
{
    uint32_t c;
    if (crc_range(r, r->sec[sec].offset, r->sec[sec].length, &c))
        return -1;
    if (c != r->sec[sec].crc)
        return fail(NQ_CHECKSUM, "%s crc is 0x%08" PRIx32 ", computed 0x%08" PRIx32,
                    SECTION_NAMES[sec], r->sec[sec].crc, c);
    return 0;
}

static int check_blob_crc(struct reader *r, const struct blob *b, const char *name,
                          const char *which)
{
    uint32_t c;
    if (crc_range(r, b->offset, b->length, &c))
        return -1;
    if (c != b->crc)
        return fail(NQ_CHECKSUM, "tensor \"%s\": %s blob crc is 0x%08" PRIx32 ", computed 0x%08"
                    PRIx32, name, which, b->crc, c);
    return 0;
}

/* §8: a codec-1 blob is exactly one zstd frame (RFC 8878 §3.1.1) that declares its content size,
 * equal to the raw length, and needs no dictionary. The header can be checked without a zstd
 * library; a bad header is `layout`. */
#define ZSTD_MAGIC UINT32_C(0xFD2FB528)
#define ZSTD_MAX_HEADER 18u /* magic 4 + descriptor 1 + window 1 + dictionary id 4 + size 8 */
#define ZSTD_WINDOW_LOG_MIN 10u /* RFC 8878: windowLog = 10 + Exponent */

static int zstd_check_header(struct reader *r, const struct blob *b, const char *name,
                             const char *which)
{
    unsigned char h[ZSTD_MAX_HEADER];
    size_t n = b->length < ZSTD_MAX_HEADER ? (size_t)b->length : ZSTD_MAX_HEADER, at;
    unsigned fhd, fcs_flag, single, did_flag, did_size, fcs_size, k;
    uint64_t did = 0, fcs = 0, window;
    static const unsigned DID_SIZES[4] = {0, 1, 2, 4};
    static const unsigned FCS_SIZES[4] = {0, 2, 4, 8};
    if (read_at(r, b->offset, h, n))
        return -1;
    if (n < 5 || le32(h) != ZSTD_MAGIC)
        return fail(NQ_LAYOUT, "tensor \"%s\": the %s blob is not a zstd frame (§8)", name, which);
    fhd = h[4];
    fcs_flag = fhd >> 6, single = (fhd >> 5) & 1, did_flag = fhd & 3;
    if (fhd & 0x08) /* §8: RFC 8878 rejects the reserved bit; `layout` */
        return fail(NQ_LAYOUT, "tensor \"%s\": %s blob: zstd frame header reserved bit set (§8)",
                    name, which);
    did_size = DID_SIZES[did_flag];
    fcs_size = fcs_flag == 0 ? single : FCS_SIZES[fcs_flag];
    at = 5 + (single ? 0 : 1);
    if (n < at + did_size + fcs_size)
        return fail(NQ_LAYOUT, "tensor \"%s\": %s blob: zstd frame header is cut short (§8)", name,
                    which);
    for (k = 0; k < did_size; k++)
        did |= (uint64_t)h[at + k] << (8 * k);
    at += did_size;
    for (k = 0; k < fcs_size; k++)
        fcs |= (uint64_t)h[at + k] << (8 * k);
    if (fcs_size == 2)
        fcs += 256; /* RFC 8878: the 2-byte field is offset by 256 */
    if (did != 0)
        return fail(NQ_LAYOUT, "tensor \"%s\": %s blob: zstd frame needs a dictionary (§8)", name,
                    which);
    if (fcs_size == 0)
        return fail(NQ_LAYOUT,
                    "tensor \"%s\": %s blob: zstd frame does not declare its content size (§8)",
                    name, which);
    if (fcs != b->raw)
        return fail(NQ_LAYOUT,
                    "tensor \"%s\": %s blob: zstd frame declares %" PRIu64
                    " bytes, the raw length is %" PRIu64 " (§8)",
                    name, which, fcs, b->raw);
    if (single) {
        window = fcs;
    } else { /* Window_Descriptor: 2^(10 + Exponent) plus Mantissa eighths of it */
        uint64_t base = UINT64_C(1) << (ZSTD_WINDOW_LOG_MIN + (h[5] >> 3));
        window = base + base / 8 * (h[5] & 7);
    }
    if (window > NQ_ZSTD_MAX_WINDOW)
        return fail(NQ_LAYOUT,
                    "tensor \"%s\": %s blob: zstd frame asks for a window of %" PRIu64
                    " bytes, more than 2^27 (§8)",
                    name, which, window);
    return 0;
}

/* §7.2: every parameter of a NESTED data blob is finite, so no NaN reaches dequantization
 * (x86 and ARM give different NaN bits for inf * 0) and results are the same bits everywhere. */
static int check_params_finite(const unsigned char *params, uint64_t length, const char *name)
{
    uint64_t i;
    for (i = 0; i < length / NQ_PARAM_BYTES; i++) {
        uint32_t bits = le32(params + NQ_PARAM_BYTES * i);
        if ((bits & UINT32_C(0x7F800000)) == UINT32_C(0x7F800000)) /* exponent all ones */
            return fail(NQ_INVALID_HEADER,
                        "tensor \"%s\": parameter %" PRIu64 " of the data blob is %s (§7.2)",
                        name, i, (bits & UINT32_C(0x007FFFFF)) ? "NaN" : "infinite");
    }
    return 0;
}

/* Codec 0 passes; codec 1 gets its frame header checked, then is reported unsupported. */
static int require_uncompressed(struct reader *r, const struct blob *b, const char *name,
                                const char *which)
{
    if (b->codec != NQ_CODEC_ZSTD)
        return 0;
    if (zstd_check_header(r, b, name, which))
        return -1;
    return fail(NQ_ZSTD_UNSUPPORTED,
                "tensor \"%s\": the %s blob is zstandard-compressed (§8), which this "
                "dependency-free reader does not decompress",
                name, which);
}

/* Dense LSB-first bitstream of k-bit two's complement codes (§7.3), read in chunks. */
struct bitreader {
    struct reader *r;
    uint64_t pos, left; /* file range not yet buffered */
    unsigned char *buf;
    size_t blen, bpos;
    uint32_t acc;
    unsigned nbits, k;
};

static int br_init(struct bitreader *b, struct reader *r, const struct blob *blob, unsigned k)
{
    memset(b, 0, sizeof *b);
    b->r = r, b->pos = blob->offset, b->left = blob->length, b->k = k;
    b->buf = malloc(CHUNK);
    return b->buf ? 0 : fail(NQ_IO, "out of memory");
}

static int br_get(struct bitreader *b, int32_t *code)
{
    uint32_t u;
    while (b->nbits < b->k) {
        if (b->bpos == b->blen) {
            size_t n = b->left < CHUNK ? (size_t)b->left : CHUNK;
            if (n == 0) /* blob lengths were checked against numel (§4.2) */
                return fail(NQ_INTERNAL, "bitstream ended early");
            if (read_at(b->r, b->pos, b->buf, n))
                return -1;
            b->pos += n, b->left -= n, b->blen = n, b->bpos = 0;
        }
        b->acc |= (uint32_t)b->buf[b->bpos++] << b->nbits;
        b->nbits += 8;
    }
    u = b->acc & ((UINT32_C(1) << b->k) - 1);
    b->acc >>= b->k;
    b->nbits -= b->k;
    *code = u >= (UINT32_C(1) << (b->k - 1)) ? (int32_t)u - (int32_t)(1 << b->k) : (int32_t)u;
    return 0;
}

/* After the last code: the rest of the last byte must be zero bits (§7.3). */
static int br_tail_zero(const struct bitreader *b)
{
    return b->acc == 0 && b->left == 0 && b->bpos == b->blen;
}

/* Buffered little-endian output to stdout. */
struct out {
    unsigned char buf[1 << 16];
    size_t len;
};

static int out_flush(struct out *o)
{
    if (o->len && fwrite(o->buf, 1, o->len, stdout) != o->len)
        return fail(NQ_IO, "cannot write to stdout: %s", strerror(errno));
    o->len = 0;
    return 0;
}

static int out_u32(struct out *o, uint32_t v)
{
    if (sizeof o->buf - o->len < 4 && out_flush(o))
        return -1;
    o->buf[o->len++] = (unsigned char)v;
    o->buf[o->len++] = (unsigned char)(v >> 8);
    o->buf[o->len++] = (unsigned char)(v >> 16);
    o->buf[o->len++] = (unsigned char)(v >> 24);
    return 0;
}

static int out_f32(struct out *o, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return out_u32(o, u);
}

/* ---------------------------------------------------------------------------------------------
 * Commands
 * ------------------------------------------------------------------------------------------- */

static void print_name(FILE *fp, const unsigned char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (s[i] == '\\')
            fputs("\\\\", fp);
        else if (s[i] < 0x20 || s[i] == 0x7F)
            fprintf(fp, "\\x%02x", s[i]);
        else
            fputc(s[i], fp);
    }
}

static int cmd_info(struct reader *r)
{
    uint32_t i;
    unsigned k;
    printf("version %u.%u\nn %u\nh %u\nl %u\n", r->version_major, r->version_minor, r->n, r->h,
           r->l);
    printf("incompat_flags 0x%" PRIx64 "\ncompat_flags 0x%" PRIx64 "\n", r->incompat, r->compat);
    printf("size %" PRIu64 "\npart_end %" PRIu64 "\nfull_end %" PRIu64 "\npart_only %d\n",
           r->size, r->part_end, r->full_end, r->part_only);
    printf("tensor_count %" PRIu32 "\n", r->count);
    printf("levels");
    for (k = 0; k < r->m; k++)
        printf(" %u:%" PRIu64 "%s", r->widths[k], r->end[k], r->end[k] <= r->size ? "" : "(absent)");
    putchar('\n');
    for (k = 0; k < NQ_SECTION_COUNT; k++)
        printf("section %s offset=%" PRIu64 " length=%" PRIu64 " crc=0x%08" PRIx32 "\n",
               SECTION_NAMES[k], r->sec[k].offset, r->sec[k].length, r->sec[k].crc);
    for (i = 0; i < r->count; i++) {
        const struct tensor *t = &r->tensors[i];
        printf("tensor %s %s [", t->kind == NQ_KIND_NESTED ? "NESTED" : "RAW",
               DTYPES[t->dtype].name);
        for (k = 0; k < t->ndim; k++)
            printf("%s%" PRIu64, k ? "," : "", t->dims[k]);
        printf("] ");
        print_name(stdout, r->names + t->name_offset, t->name_length);
        putchar('\n');
    }
    return 0;
}

static const struct tensor *find_tensor(const struct reader *r, const char *name)
{
    size_t len = strlen(name);
    uint32_t i;
    for (i = 0; i < r->count; i++) {
        const struct tensor *t = &r->tensors[i];
        if (t->name_length == len && memcmp(r->names + t->name_offset, name, len) == 0)
            return t;
    }
    return NULL;
}

enum what { WHAT_VALUES, WHAT_CODES, WHAT_LOW };

static int dump_raw(struct reader *r, const struct tensor *t, const char *name)
{
    unsigned char *buf;
    uint64_t off = t->data.offset, left = t->data.length;
    if (check_section_crc(r, SEC_DATA) || check_blob_crc(r, &t->data, name, "data") ||
        require_uncompressed(r, &t->data, name, "data"))
        return -1;
    buf = malloc(CHUNK);
    if (!buf)
        return fail(NQ_IO, "out of memory");
    while (left) {
        size_t n = left < CHUNK ? (size_t)left : CHUNK;
        if (read_at(r, off, buf, n)) {
            free(buf);
            return -1;
        }
        if (fwrite(buf, 1, n, stdout) != n) {
            free(buf);
            return fail(NQ_IO, "cannot write to stdout: %s", strerror(errno));
        }
        off += n, left -= n;
    }
    free(buf);
    return 0;
}

/* Lets reads reach the end of level `top` (§9, §14.2); part_only if the file stops before it.
 * Then the whole-level rule of §14.4 step 13: the CRCs of R_1 .. R_top (all of LOW, LOW.crc,
 * for the top level of a 1.0 file). */
static int enable_level(struct reader *r, unsigned top, const char *why)
{
    unsigned j;
    if (top == 0)
        return 0;
    if (!r->levels)
        return enable_low(r, why) || check_section_crc(r, SEC_LOW);
    if (r->size < r->end[top])
        return fail(NQ_PART_ONLY,
                    "%s needs the %u-bit level, which ends at %" PRIu64 ", but the file has %" PRIu64
                    " bytes (§14.2)",
                    why, r->widths[top], r->end[top], r->size);
    r->read_limit = r->end[top];
    for (j = 1; j <= top; j++) {
        uint32_t c;
        if (crc_range(r, r->res[j - 1].offset, r->res[j - 1].length, &c))
            return -1;
        if (c != r->res[j - 1].crc)
            return fail(NQ_CHECKSUM, "level %u crc is 0x%08" PRIx32 ", computed 0x%08" PRIx32
                        " (§14.4)", j, r->res[j - 1].crc, c);
    }
    return 0;
}

/* Writes a NESTED tensor: float32 values (§7.2) or int32 codes (§7.3), channel by channel, of
 * level `top` (0 = part-bit, m - 1 = full-bit; §14.3 for the levels between). */
static int dump_nested(struct reader *r, const struct tensor *t, const char *name, unsigned top,
                       enum what what)
{
    struct bitreader hb, lb[NQ_MAX_LEVELS - 1];
    struct out *o = NULL;
    unsigned char *params = NULL;
    uint64_t C = t->dims[0], per, c, e;
    unsigned j, nres = what == WHAT_LOW ? 1 : top;
    int need_high = what != WHAT_LOW, rc = -1;
    int need_params = what == WHAT_VALUES;

    memset(&hb, 0, sizeof hb);
    memset(lb, 0, sizeof lb);
    /* §11 step 13: part_only before any blob (a 1.1 file: the level's end, then its level CRCs,
     * §14.4); then blob by blob in the order data, high, residuals, each completely before the
     * next: its section's CRC (the whole-LOW rule for a 1.0 LOW; a MAY for DATA and HIGH), its
     * CRC, its zstd frame header (§8; a codec-1 blob then stops the read as unsupported_feature:
     * this reader does not decompress), and for data the parameters (§7.2: all finite). */
    if (nres) {
        const char *why = top + 1 == r->m ? "full-bit mode" : "this level";
        if (r->levels ? enable_level(r, nres, why) : enable_low(r, why))
            return -1;
    }
    {
        const struct blob *bl[NQ_MAX_LEVELS + 1];
        const char *which[NQ_MAX_LEVELS + 1];
        int need[NQ_MAX_LEVELS + 1];
        unsigned k, nb = 2 + nres;
        bl[0] = &t->data, which[0] = "data", need[0] = need_params;
        bl[1] = &t->high, which[1] = "high", need[1] = need_high;
        for (j = 1; j <= nres; j++)
            bl[1 + j] = residual(t, j), which[1 + j] = j == 1 ? "low" : LEVEL_NAMES[j],
                   need[1 + j] = 1;
        for (k = 0; k < nb; k++) {
            if (!need[k])
                continue;
            /* DATA and HIGH, and a 1.0 file's LOW; a 1.1 file's levels were checked above */
            if ((k < 2 || (k == 2 && !r->levels)) && check_section_crc(r, SEC_DATA + (int)k))
                goto done;
            if (check_blob_crc(r, bl[k], name, which[k]) ||
                require_uncompressed(r, bl[k], name, which[k]))
                goto done; /* frees params when the data blob passed */
            if (k == 0) {
                /* 8*m*C bytes: checked equal to the blob length, which lies inside the file */
                params = malloc(t->data.length ? (size_t)t->data.length : 1);
                if (!params) {
                    fail(NQ_IO, "out of memory");
                    goto done;
                }
                if (read_at(r, t->data.offset, params, (size_t)t->data.length) ||
                    check_params_finite(params, t->data.length, name))
                    goto done;
            }
        }
    }
    if (need_high && br_init(&hb, r, &t->high, r->h))
        goto done;
    for (j = 1; j <= nres; j++)
        if (br_init(&lb[j - 1], r, residual(t, j), r->widths[j] - r->widths[j - 1] + 1))
            goto done;
    o = malloc(sizeof *o);
    if (!o) {
        fail(NQ_IO, "out of memory");
        goto done;
    }
    o->len = 0;
    per = t->numel ? t->numel / C : 0;
    for (c = 0; t->numel && c < C; c++) {
        /* §7.2, §14.3 array order: scale_full, offset_full, scale_part, offset_part, then a
         * (scale, offset) pair for each level 1 .. m-2 */
        float scale = 0, offset = 0;
        if (need_params) {
            uint64_t slot = top + 1 == r->m ? 0 : top == 0 ? 1 : top + 1;
            scale = f32_from_le(params + 4 * (2 * slot * C + c));
            offset = f32_from_le(params + 4 * ((2 * slot + 1) * C + c));
        }
        for (e = 0; e < per; e++) {
            int32_t H = 0, L = 0, code;
            if (need_high && br_get(&hb, &H))
                goto done;
            code = H;
            for (j = 1; j <= nres; j++) {
                if (br_get(&lb[j - 1], &L))
                    goto done;
                /* q_j = q_(j-1) * 2^d_j + L_j, exact (§7.3, §14.3) */
                code = code * (int32_t)(1 << (r->widths[j] - r->widths[j - 1])) + L;
            }
            if (what == WHAT_LOW)
                code = L;
            if (what == WHAT_VALUES) {
                /* w = fl32(fl32(float32(code) * scale) + offset): two separate roundings */
                float prod = (float)code * scale;
                float w = prod + offset;
                if (out_f32(o, w))
                    goto done;
            } else if (out_u32(o, (uint32_t)code)) {
                goto done;
            }
        }
    }
    rc = out_flush(o);
done:
    free(o);
    free(params);
    free(hb.buf);
    for (j = 0; j + 1 < NQ_MAX_LEVELS; j++)
        free(lb[j].buf);
    return rc;
}

/* Everything the spec lets a reader check: all CRCs, padding, packing tail bits, code ranges,
 * for every level the file reaches (§14.4 step 14). */
static int cmd_check(struct reader *r, int *zstd_skipped)
{
    uint32_t i;
    int k;
    unsigned j, top = 0;
    uint64_t pend[NQ_MAX_LEVELS + 1], pend_start;
    while (top + 1 < r->m && r->end[top + 1] <= r->size)
        top++; /* the finest level present */
    if (!r->part_only && enable_low(r, "check"))
        return -1;
    if (r->part_only && top > 0)
        r->read_limit = r->end[top];
    for (k = SEC_DATA; k <= SEC_LOW; k++)
        if ((k != SEC_LOW || !r->part_only) && check_section_crc(r, k))
            return -1;
    for (j = 1; r->levels && j <= top; j++) {
        uint32_t c;
        if (crc_range(r, r->res[j - 1].offset, r->res[j - 1].length, &c))
            return -1;
        if (c != r->res[j - 1].crc)
            return fail(NQ_CHECKSUM, "level %u crc is 0x%08" PRIx32 ", computed 0x%08" PRIx32,
                        j, r->res[j - 1].crc, c);
    }
    /* §3.2: padding between sections (§14.2: and between the levels inside LOW) */
    if (zero_range(r, r->header_end, r->sec[SEC_DATA].offset - r->header_end, "before DATA") ||
        zero_range(r, r->sec[SEC_DATA].offset + r->sec[SEC_DATA].length,
                   r->sec[SEC_HIGH].offset -
                       (r->sec[SEC_DATA].offset + r->sec[SEC_DATA].length),
                   "before HIGH"))
        return -1;
    if (top > 0 &&
        zero_range(r, r->part_end, r->sec[SEC_LOW].offset - r->part_end, "before LOW"))
        return -1;
    for (j = 2; j <= top; j++)
        if (zero_range(r, r->end[j - 1], r->res[j - 1].offset - r->end[j - 1], "between levels"))
            return -1;
    /* §7.1: padding between blobs; slot 0 DATA, 1 HIGH, 1 + j residual level j */
    pend[0] = r->sec[SEC_DATA].offset, pend[1] = r->sec[SEC_HIGH].offset;
    for (j = 1; j < r->m; j++)
        pend[1 + j] = r->res[j - 1].offset;
    for (i = 0; i < r->count; i++) {
        const struct tensor *t = &r->tensors[i];
        const struct blob *bl[NQ_MAX_LEVELS + 1];
        const char *which[NQ_MAX_LEVELS + 1];
        char name[NQ_MAX_NAME + 1];
        int plain = 1;
        memcpy(name, r->names + t->name_offset, t->name_length);
        name[t->name_length] = 0;
        bl[0] = &t->data, which[0] = "data", bl[1] = &t->high, which[1] = "high";
        for (j = 1; j < r->m; j++)
            bl[1 + j] = residual(t, j), which[1 + j] = j == 1 ? "low" : LEVEL_NAMES[j];
        for (k = 0; k < (t->kind == NQ_KIND_NESTED ? 2 + (int)top : 1); k++) {
            pend_start = pend[k];
            if (zero_range(r, pend_start, bl[k]->offset - pend_start, "between blobs") ||
                check_blob_crc(r, bl[k], name, which[k]))
                return -1;
            pend[k] = bl[k]->offset + bl[k]->length;
            if (k == 0 && t->kind == NQ_KIND_NESTED && bl[0]->codec == NQ_CODEC_NONE) {
                /* §7.2: finite parameters (16*C bytes, inside the file) */
                unsigned char *params = malloc(bl[0]->length ? (size_t)bl[0]->length : 1);
                int bad;
                if (!params)
                    return fail(NQ_IO, "out of memory");
                bad = read_at(r, bl[0]->offset, params, (size_t)bl[0]->length) ||
                      check_params_finite(params, bl[0]->length, name);
                free(params);
                if (bad)
                    return -1;
            }
            if (bl[k]->codec == NQ_CODEC_ZSTD) {
                if (zstd_check_header(r, bl[k], name, which[k]))
                    return -1;
                *zstd_skipped += 1;
                if (k >= 1)
                    plain = 0;
            }
        }
        if (t->kind == NQ_KIND_NESTED && plain) {
            struct bitreader hb, lb[NQ_MAX_LEVELS - 1];
            uint64_t e;
            int bad = 0;
            memset(lb, 0, sizeof lb);
            if (br_init(&hb, r, &t->high, r->h))
                return -1;
            for (j = 1; j <= top && !bad; j++)
                if (br_init(&lb[j - 1], r, residual(t, j), r->widths[j] - r->widths[j - 1] + 1))
                    bad = -1;
            for (e = 0; e < t->numel && !bad; e++) {
                int32_t H, L, q;
                if (br_get(&hb, &H)) {
                    bad = -1;
                    break;
                }
                q = H;
                for (j = 1; j <= top && !bad; j++) {
                    int32_t qmin = -(int32_t)(1 << (r->widths[j] - 1));
                    if (br_get(&lb[j - 1], &L)) {
                        bad = -1;
                        break;
                    }
                    q = q * (int32_t)(1 << (r->widths[j] - r->widths[j - 1])) + L;
                    if (q < qmin || q > -qmin - 1)
                        bad = fail(NQ_INVALID_HEADER,
                                   "tensor \"%s\": element %" PRIu64 " recomposes to q = %" PRId32
                                   ", outside the %u-bit range [%" PRId32 ", %" PRId32 "] (§7.3)",
                                   name, e, q, r->widths[j], qmin, -qmin - 1);
                }
            }
            /* §7.3, §11 step 14: nonzero pad bits after the last code are `layout` */
            if (!bad && !br_tail_zero(&hb))
                bad = fail(NQ_LAYOUT, "tensor \"%s\": high blob padding bits are not zero (§7.3)",
                           name);
            for (j = 1; j <= top && !bad; j++)
                if (!br_tail_zero(&lb[j - 1]))
                    bad = fail(NQ_LAYOUT,
                               "tensor \"%s\": %s blob padding bits are not zero (§7.3)", name,
                               which[1 + j]);
            free(hb.buf);
            for (j = 0; j + 1 < NQ_MAX_LEVELS; j++)
                free(lb[j].buf);
            if (bad)
                return -1;
        }
    }
    return 0;
}

static int usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "nqread: usage error: %s\n", msg);
    fprintf(stderr,
            "usage: nqread info FILE\n"
            "       nqread dump FILE NAME [--mode part|full | --bits B] [--codes [--low]] [--stats]\n"
            "       nqread check FILE\n"
            "exit: 0 ok, 1 I/O error, 2 usage, 3 invalid file, 4 part_only or unsupported zstd\n");
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    struct reader r;
    const char *cmd, *path;
    int rc;

    crc32_init();
    if (crc32_buf((const unsigned char *)"123456789", 9) != UINT32_C(0xCBF43926)) { /* §2 */
        fprintf(stderr, "nqread: internal error: CRC-32 check value mismatch\n");
        return EXIT_IO;
    }
    if (argc < 3)
        return usage(argc < 2 ? NULL : "missing FILE");
    cmd = argv[1];
    path = argv[2];
    if (strcmp(cmd, "info") == 0 || strcmp(cmd, "check") == 0) {
        int zstd_skipped = 0;
        if (argc != 3)
            return usage("too many arguments");
        rc = nq_open(&r, path);
        if (rc == 0)
            rc = cmd[0] == 'i' ? cmd_info(&r) : cmd_check(&r, &zstd_skipped);
        if (rc == 0 && zstd_skipped)
            rc = fail(NQ_ZSTD_UNSUPPORTED,
                      "%d zstd-compressed blobs: CRCs checked, contents not decoded", zstd_skipped);
        if (rc == 0 && cmd[0] == 'c')
            printf("ok%s\n", r.part_only ? " (part-bit-only file: LOW not checked)" : "");
        if (rc == 0 && fflush(stdout) != 0)
            rc = fail(NQ_IO, "cannot write to stdout");
        nq_close(&r);
        return rc ? report_error(path) : EXIT_OK_;
    }
    if (strcmp(cmd, "dump") == 0) {
        const char *name, *mode = "part";
        enum what what = WHAT_VALUES;
        int low = 0, stats = 0, mode_given = 0, a, bits = 0;
        const struct tensor *t;
        if (argc < 4)
            return usage("missing NAME");
        name = argv[3];
        for (a = 4; a < argc; a++) {
            if (strcmp(argv[a], "--mode") == 0 && a + 1 < argc)
                mode = argv[++a], mode_given = 1;
            else if (strcmp(argv[a], "--codes") == 0)
                what = WHAT_CODES;
            else if (strcmp(argv[a], "--low") == 0)
                low = 1;
            else if (strcmp(argv[a], "--stats") == 0)
                stats = 1;
            else if (strcmp(argv[a], "--bits") == 0 && a + 1 < argc)
                bits = atoi(argv[++a]);
            else
                return usage("unknown option");
        }
        if (strcmp(mode, "part") != 0 && strcmp(mode, "full") != 0)
            return usage("--mode must be part or full");
        if (low) {
            if (what != WHAT_CODES)
                return usage("--low needs --codes");
            if (mode_given && strcmp(mode, "full") != 0)
                return usage("--low reads the LOW section: it needs --mode full (or no --mode)");
            what = WHAT_LOW, mode = "full";
        }
        rc = nq_open(&r, path);
        if (rc == 0) {
            t = find_tensor(&r, name);
            if (!t)
                rc = fail(NQ_USAGE, "no tensor named \"%s\" (see nqread info)", name);
            else if (t->kind == NQ_KIND_RAW && what != WHAT_VALUES)
                rc = fail(NQ_USAGE, "\"%s\" is a RAW tensor: it has no codes", name);
            else if (t->kind == NQ_KIND_RAW)
                rc = dump_raw(&r, t, name);
            else {
                unsigned top = mode[0] == 'f' ? r.m - 1 : 0, j;
                if (bits) { /* §14: the level of that width (a 1.0 file has h and n) */
                    for (j = 0; j < r.m && (int)r.widths[j] != bits; j++)
                        ;
                    if (j == r.m || low || mode_given)
                        rc = fail(NQ_USAGE, "--bits %d is not a level of this file (or was "
                                  "given with --mode or --low)", bits);
                    top = j;
                }
                if (rc == 0)
                    rc = dump_nested(&r, t, name, top, what);
            }
        }
        if (rc == 0 && fflush(stdout) != 0)
            rc = fail(NQ_IO, "cannot write to stdout");
        if (stats)
            fprintf(stderr, "nqread: stats bytes_read=%" PRIu64 " read_end=%" PRIu64
                    " part_end=%" PRIu64 " size=%" PRIu64 "\n",
                    r.bytes_read, r.read_end, r.part_end, r.size);
        nq_close(&r);
        return rc ? report_error(path) : EXIT_OK_;
    }
    return usage("unknown command");
}
