/*
 * Generates text with a packed model from C through the engine's C ABI: greedy tokens
 * streamed through a callback, then a cancel from the callback, then a reset.
 *
 *   cargo build --release -p flashmoe-engine-capi
 *   cc -std=c11 -Icapi/engine/include engine/examples/c/generate.c \
 *      target/release/libflashmoe_engine_capi.a -lpthread -ldl -lm -o generate
 *   ./generate models/tiny-qwen3-moe-q4 32 "The Rust programming language"
 *
 * Prints "tokens: <ids>" (compare with `flashmoe generate --json`'s "tokens"), the text, and
 * one line per check; exits 0 when every check passed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashmoe_engine.h"

#define MAX_TOKENS 512

/* What the callback collects. */
struct run {
    uint32_t ids[MAX_TOKENS];
    size_t n;
    size_t cancel_after; /* 0: never cancel */
    int print;
};

static int32_t on_token(void *user, uint32_t token, const char *piece, size_t piece_len) {
    struct run *r = user;
    if (r->n < MAX_TOKENS) r->ids[r->n++] = token;
    if (r->print) {
        fwrite(piece, 1, piece_len, stderr);
        fflush(stderr);
    }
    return r->cancel_after != 0 && r->n >= r->cancel_after; /* non-zero: cancel */
}

static int fail(const char *what, FmeStatus st) {
    const char *msg = fme_last_error();
    fprintf(stderr, "generate: %s: %s: %s\n", what, fme_status_name((int32_t)st),
            msg ? msg : "(no message)");
    return 1;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "models/tiny-qwen3-moe-q4";
    uint32_t max_tokens = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 32;
    const char *prompt = argc > 3 ? argv[3] : "The Rust programming language";
    if (max_tokens == 0 || max_tokens > MAX_TOKENS) max_tokens = 32;

    FmeOptions *opts = NULL;
    FmeStatus st = fme_options_new(&opts);
    if (st != FME_STATUS_OK) return fail("options", st);
    if ((st = fme_options_set_budget_share(opts, 0.25)) != FME_STATUS_OK) return fail("budget", st);
    FmeModel *model = NULL;
    st = fme_model_open(dir, opts, &model);
    fme_options_free(opts);
    if (st != FME_STATUS_OK) return fail("open", st);

    /* 1. Greedy generation, streamed. */
    FmeGenerateParams params = fme_generate_params_default();
    params.max_tokens = max_tokens;
    struct run first = {.print = 1};
    FmeGeneration g;
    fputs(prompt, stderr);
    if ((st = fme_generate(model, prompt, &params, on_token, &first, &g)) != FME_STATUS_OK)
        return fail("generate", st);
    fputc('\n', stderr);
    printf("tokens:");
    for (size_t i = 0; i < first.n; i++) printf(" %" PRIu32, first.ids[i]);
    printf("\n");
    printf("generated %" PRIu32 " tokens after %" PRIu32 " prompt tokens (eos %d), hit rate %.3f, %"
           PRIu64 " expert bytes read\n", g.generated_tokens, g.prompt_tokens, g.stopped_at_eos,
           g.hit_rate, g.bytes_read);
    int ok = g.generated_tokens == first.n;

    /* 2. Cancel from the callback after 3 tokens; the model stays cancelled until reset. */
    if ((st = fme_model_reset(model)) != FME_STATUS_OK) return fail("reset", st);
    struct run cancelled = {.cancel_after = 3};
    st = fme_generate(model, prompt, &params, on_token, &cancelled, &g);
    int cancel_ok = st == FME_STATUS_CANCELLED && g.cancelled == 1 && cancelled.n == 3 &&
                    memcmp(cancelled.ids, first.ids, 3 * sizeof(uint32_t)) == 0;
    struct run after = {0};
    st = fme_generate(model, prompt, &params, on_token, &after, &g);
    cancel_ok = cancel_ok && st == FME_STATUS_CANCELLED && after.n == 0;
    printf("cancel: %s\n", cancel_ok ? "ok" : "FAILED");
    ok = ok && cancel_ok;

    /* 3. After a reset the same prompt gives the same tokens. */
    if ((st = fme_model_reset(model)) != FME_STATUS_OK) return fail("reset", st);
    struct run again = {0};
    if ((st = fme_generate(model, prompt, &params, on_token, &again, &g)) != FME_STATUS_OK)
        return fail("generate after reset", st);
    int reset_ok = again.n == first.n && memcmp(again.ids, first.ids, first.n * sizeof(uint32_t)) == 0;
    printf("reset: %s\n", reset_ok ? "same tokens" : "DIFFERENT tokens");
    ok = ok && reset_ok;

    /* 4. Errors name what and where. */
    st = fme_generate(model, NULL, &params, NULL, NULL, NULL);
    printf("expected error: %s %s\n", fme_status_name((int32_t)st), fme_last_error());
    ok = ok && st == FME_STATUS_NULL;

    fme_model_free(model);
    return ok ? 0 : 1;
}
