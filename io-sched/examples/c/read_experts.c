/*
 * Reads every expert of a packed model through an io-sched session, from C, and checks each
 * record's bytes against the checksum its layout records.
 *
 *   cargo build --release -p flashmoe-io-sched-capi
 *   cc -std=c11 -Icapi/io-sched/include io-sched/examples/c/read_experts.c \
 *      target/release/libflashmoe_io_sched_capi.a -lpthread -ldl -lm -o read_experts
 *   ./read_experts models/tiny-qwen3-moe-q4/manifest.json [auto|io_uring|pread|mmap]
 *
 * Prints one summary line ("checked N experts ...") and exits 0 when every checksum matched.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "flashmoe_io_sched.h"

/* Experts acquired together, as a router's top-k would. */
#define K 4

static int fail(const char *what, FmioStatus st) {
    const char *msg = fmio_last_error();
    fprintf(stderr, "read_experts: %s: %s: %s\n", what, fmio_status_name((int32_t)st),
            msg ? msg : "(no message)");
    return 1;
}

int main(int argc, char **argv) {
    const char *manifest = argc > 1 ? argv[1] : "models/tiny-qwen3-moe-q4/manifest.json";
    const char *backend = argc > 2 ? argv[2] : "auto";
    if (fmio_abi_version() != FMIO_ABI_VERSION) {
        fprintf(stderr, "read_experts: library ABI %" PRIu32 ", header %d\n", fmio_abi_version(),
                FMIO_ABI_VERSION);
        return 1;
    }

    FmioLayout *layout = NULL;
    FmioStatus st = fmio_layout_open_manifest(manifest, &layout);
    if (st != FMIO_STATUS_OK) return fail("open manifest", st);
    uint32_t layers = fmio_layout_num_layers(layout);
    uint32_t experts = fmio_layout_num_experts(layout);

    FmioOptions *opts = NULL;
    if ((st = fmio_options_new(&opts)) != FMIO_STATUS_OK) return fail("options", st);
    if ((st = fmio_options_set_budget_share(opts, 0.25)) != FMIO_STATUS_OK) return fail("budget", st);
    if ((st = fmio_options_set_predictor(opts, "temporal")) != FMIO_STATUS_OK) return fail("predictor", st);
    if ((st = fmio_options_set_backend(opts, backend)) != FMIO_STATUS_OK) return fail("backend", st);

    FmioSession *session = NULL;
    st = fmio_session_open(layout, opts, &session);
    fmio_options_free(opts);
    if (st != FMIO_STATUS_OK) return fail("open session", st);
    printf("backend: %s\n", fmio_session_backend(session));
    for (size_t i = 0; i < fmio_session_fallback_count(session); i++)
        printf("fallback: %s\n", fmio_session_fallback(session, i));

    /* Every expert of every layer, K at a time, each checksum recomputed from the bytes. */
    uint64_t checked = 0, mismatched = 0, bytes = 0;
    for (uint32_t layer = 0; layer < layers; layer++) {
        for (uint32_t first = 0; first < experts; first += K) {
            uint32_t ids[K];
            size_t n = 0;
            for (uint32_t e = first; e < experts && n < K; e++) ids[n++] = e;
            FmioGuard *guard = NULL;
            if ((st = fmio_session_acquire(session, layer, ids, n, &guard)) != FMIO_STATUS_OK)
                return fail("acquire", st);
            for (size_t i = 0; i < fmio_guard_count(guard); i++) {
                FmioExpertBytes b;
                FmioRecord rec;
                if ((st = fmio_guard_get(guard, i, &b)) != FMIO_STATUS_OK) return fail("guard", st);
                if ((st = fmio_layout_record(layout, layer, b.expert, &rec)) != FMIO_STATUS_OK)
                    return fail("record", st);
                uint64_t sum = fmio_checksum(b.data, (size_t)b.len);
                if (sum != rec.checksum || b.len != rec.len || b.expert != ids[i]) {
                    fprintf(stderr, "layer %" PRIu32 " expert %" PRIu32 ": checksum %016" PRIx64
                            " != %016" PRIx64 "\n", layer, b.expert, sum, rec.checksum);
                    mismatched++;
                }
                checked++;
                bytes += b.len;
            }
            fmio_guard_release(guard);
        }
    }

    /* Errors come back as codes with a message naming what and where. */
    uint32_t bad = experts;
    FmioGuard *none = NULL;
    st = fmio_session_acquire(session, 0, &bad, 1, &none);
    if (st != FMIO_STATUS_UNKNOWN_EXPERT || none != NULL) {
        fprintf(stderr, "read_experts: expert %" PRIu32 " should be unknown, got %d\n", bad, (int)st);
        return 1;
    }
    printf("expected error: %s\n", fmio_last_error());
    if (fmio_session_acquire(session, 0, NULL, 1, &none) != FMIO_STATUS_NULL) {
        fprintf(stderr, "read_experts: a NULL expert list should be refused\n");
        return 1;
    }

    FmioMetrics m;
    if ((st = fmio_session_metrics(session, FMIO_ALL_LAYERS, &m)) != FMIO_STATUS_OK)
        return fail("metrics", st);
    printf("checked %" PRIu64 " experts (%" PRIu64 " bytes) of %" PRIu32 " layers x %" PRIu32
           ": %" PRIu64 " mismatched; demanded %" PRIu64 ", misses %" PRIu64 ", read %" PRIu64
           " bytes\n",
           checked, bytes, layers, experts, mismatched, m.demanded, m.misses,
           m.demand_bytes + m.prefetch_bytes);
    fmio_session_free(session);
    fmio_layout_free(layout);
    return mismatched == 0 && checked == (uint64_t)layers * experts ? 0 : 1;
}
