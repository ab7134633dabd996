/*
 * libFuzzer harness for nqread (issue 11): every input is written to a file and run through
 * nq_open, `check` and a dump of every tensor in both modes, under ASan and UBSan. Any crash,
 * sanitizer report, leak or hang is a finding; a spec §11 error is the expected outcome of
 * most inputs.
 *
 * Each input runs twice: as it is, then with every CRC its own header describes recomputed
 * (blob CRCs in the INDEX records, the six section CRCs, then the preamble CRC) wherever the
 * bytes they cover lie inside the input, so that random mutations reach the checks behind the
 * checksums instead of stopping at the first CRC.
 *
 * Build and run: see fuzz/README.md (`make -C examples/c-reader fuzz`).
 */
#define main nqread_main
#include "nqread.c"
#undef main

#include <unistd.h>

static char g_path[64];

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8), p[2] = (unsigned char)(v >> 16),
    p[3] = (unsigned char)(v >> 24);
}

/* Recompute the CRCs a reader checks, where the bytes they cover are inside the input. */
static void fix_crcs(unsigned char *d, size_t n)
{
    uint64_t count, k, max_records;
    int s;
    if (n < NQ_PREAMBLE_SIZE)
        return;
    count = le32(d + 12);
    max_records = (n - NQ_PREAMBLE_SIZE) / NQ_RECORD_SIZE;
    if (count > max_records)
        count = max_records;
    for (k = 0; k < count; k++) {
        unsigned char *rec = d + NQ_PREAMBLE_SIZE + NQ_RECORD_SIZE * k;
        unsigned b;
        for (b = 0; b < 3; b++) {
            unsigned char *ref = rec + 80 + 24 * b;
            uint64_t off = le64(ref), len = le64(ref + 8);
            if (off <= n && len <= n - off)
                put_le32(ref + 16, crc32_buf(d + off, (size_t)len));
        }
    }
    for (s = 0; s < NQ_SECTION_COUNT; s++) {
        unsigned char *e = d + NQ_SECTION_TABLE_AT + NQ_SECTION_ENTRY_SIZE * s;
        uint64_t off = le64(e), len = le64(e + 8);
        if (off <= n && len <= n - off)
            put_le32(e + 16, crc32_buf(d + off, (size_t)len));
    }
    put_le32(d + NQ_PREAMBLE_CRC_AT, crc32_buf(d, NQ_PREAMBLE_CRC_AT));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    crc32_init();
    snprintf(g_path, sizeof g_path, "/tmp/nqread-fuzz-%ld.nq", (long)getpid());
    if (!freopen("/dev/null", "w", stdout)) /* dumps are not the point */
        abort();
    return 0;
}

static void run_file(void)
{
    struct reader r;
    int zstd_skipped = 0;
    uint32_t i;
    if (nq_open(&r, g_path) == 0) {
        cmd_info(&r);
        cmd_check(&r, &zstd_skipped);
        for (i = 0; i < r.count; i++) {
            const struct tensor *t = &r.tensors[i];
            char name[NQ_MAX_NAME + 1];
            memcpy(name, r.names + t->name_offset, t->name_length);
            name[t->name_length] = 0;
            r.read_limit = r.part_end; /* as a fresh open would have it */
            if (t->kind == NQ_KIND_RAW) {
                dump_raw(&r, t, name);
            } else {
                dump_nested(&r, t, name, 0, WHAT_VALUES);
                dump_nested(&r, t, name, 1, WHAT_VALUES);
                dump_nested(&r, t, name, 1, WHAT_LOW);
            }
        }
    }
    nq_close(&r);
}

static void run_bytes(const unsigned char *data, size_t size)
{
    FILE *f = fopen(g_path, "wb");
    if (!f || fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
    run_file();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    run_bytes(copy, size);
    fix_crcs(copy, size);
    if (size && memcmp(copy, data, size) != 0)
        run_bytes(copy, size);
    free(copy);
    return 0;
}
