// greedy_ids: the llama.cpp side of the peer benchmark.
//
// Loads a GGUF (weights memory-mapped, llama.cpp's default), runs the prompt as one batch
// (prefill), then greedy-decodes token by token, and prints ONE JSON line on stdout:
//   prompt_ids, ids (generated, the first one sampled from the prefill's logits),
//   prefill_s / prefill_tokens, decode_s / decode_steps (steps after the first token, as
//   flashmoe's `decode_tok_per_s` counts them), and read_bytes from /proc/self/io at load,
//   after prefill and after decode (bytes this process caused to be read from the block
//   device: page-cache misses of the mmap, which is what a memory limit makes llama.cpp pay).
// It keeps going past end-of-generation tokens (as the fixtures' golden outputs do) unless
// --stop-at-eog. --no-repack turns off llama.cpp's weight repacking (`use_extra_bufts`): by default
// the CPU backend copies the tensors it has faster kernels for (Q4_0 on AVX2: nearly all, experts
// included) into anonymous memory at load, so only the rest stays memory-mapped; with --no-repack
// every weight is read through the mapping. Built against libllama by setup_llama.sh (not by cargo).
//
// usage: greedy_ids -m MODEL.gguf [-n N] [-t THREADS] [--no-repack] [--stop-at-eog] PROMPT
#include "llama.h"

#include <chrono>
#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

static long long read_bytes_now() {
    std::ifstream io("/proc/self/io");
    std::string key;
    long long value = -1;
    while (io >> key >> value) {
        if (key == "read_bytes:") {
            return value;
        }
    }
    return -1;
}

// One sequence, consecutive positions from pos_0, logits for the last token only.
static void set_tokens(llama_batch_ext * batch, const llama_token * tokens, int32_t n, llama_pos pos_0) {
    llama_batch_ext_clear(batch);
    for (int32_t i = 0; i < n; ++i) {
        const int32_t idx = llama_batch_ext_add_token(batch, 0, tokens[i]);
        const llama_pos pos = pos_0 + i;
        llama_batch_ext_set_pos(batch, idx, &pos);
    }
    llama_batch_ext_set_output_logits(batch, n - 1, true);
}

static double secs_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

static void print_ids(const char * key, const std::vector<llama_token> & ids) {
    printf("\"%s\":[", key);
    for (size_t i = 0; i < ids.size(); ++i) {
        printf("%s%d", i ? "," : "", ids[i]);
    }
    printf("]");
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    std::string model_path;
    std::string prompt;
    int n_predict = 32;
    int n_threads = 2;
    bool stop_at_eog = false;
    bool repack = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-m" && i + 1 < argc) {
            model_path = argv[++i];
        } else if (a == "-n" && i + 1 < argc) {
            n_predict = std::atoi(argv[++i]);
        } else if (a == "-t" && i + 1 < argc) {
            n_threads = std::atoi(argv[++i]);
        } else if (a == "--no-repack") {
            repack = false;
        } else if (a == "--stop-at-eog") {
            stop_at_eog = true;
        } else {
            prompt = a;
        }
    }
    if (model_path.empty() || prompt.empty() || n_predict < 1 || n_threads < 1) {
        fprintf(stderr, "usage: %s -m MODEL.gguf [-n N>=1] [-t THREADS] [--no-repack] [--stop-at-eog] PROMPT\n", argv[0]);
        return 2;
    }

    llama_backend_init();
    const long long rb_start = read_bytes_now();
    const auto t_load = std::chrono::steady_clock::now();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.load_mode = LLAMA_LOAD_MODE_MMAP;
    mp.use_extra_bufts = repack;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (model == nullptr) {
        fprintf(stderr, "greedy_ids: error: unable to load model %s\n", model_path.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    // no special-token parsing and no BOS unless the GGUF asks for it (add_bos_token)
    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), nullptr, 0, true, false);
    if (n_prompt <= 0) {
        fprintf(stderr, "greedy_ids: error: the prompt tokenizes to %d tokens\n", n_prompt);
        return 1;
    }
    std::vector<llama_token> prompt_ids(n_prompt);
    if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), prompt_ids.data(), prompt_ids.size(), true, false) < 0) {
        fprintf(stderr, "greedy_ids: error: failed to tokenize the prompt\n");
        return 1;
    }

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_predict;
    cp.n_batch = n_prompt;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        fprintf(stderr, "greedy_ids: error: failed to create the context\n");
        return 1;
    }
    llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
    const double load_s = secs_since(t_load);
    const long long rb_loaded = read_bytes_now();

    llama_batch_ext * batch = llama_batch_ext_init(ctx);
    std::vector<llama_token> ids;
    set_tokens(batch, prompt_ids.data(), n_prompt, 0);
    const auto t_prefill = std::chrono::steady_clock::now();
    if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) {
        fprintf(stderr, "greedy_ids: error: prefill failed\n");
        return 1;
    }
    llama_token tok = llama_sampler_sample(smpl, ctx, -1);
    const double prefill_s = secs_since(t_prefill);
    const long long rb_prefill = read_bytes_now();
    ids.push_back(tok);

    const auto t_decode = std::chrono::steady_clock::now();
    int steps = 0;
    for (int pos = n_prompt; (int) ids.size() < n_predict; ++pos) {
        if (stop_at_eog && llama_vocab_is_eog(vocab, tok)) {
            break;
        }
        set_tokens(batch, &tok, 1, pos);
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) {
            fprintf(stderr, "greedy_ids: error: decode failed at position %d\n", pos);
            return 1;
        }
        tok = llama_sampler_sample(smpl, ctx, -1);
        ids.push_back(tok);
        ++steps;
    }
    const double decode_s = secs_since(t_decode);
    const long long rb_decode = read_bytes_now();

    printf("{");
    print_ids("prompt_ids", prompt_ids);
    printf(",");
    print_ids("ids", ids);
    printf(",\"repack\":%s", repack ? "true" : "false");
    printf(",\"threads\":%d,\"load_s\":%.6f,\"prefill_tokens\":%d,\"prefill_s\":%.6f,\"decode_steps\":%d,\"decode_s\":%.6f",
           n_threads, load_s, n_prompt, prefill_s, steps, decode_s);
    printf(",\"read_bytes_load\":%lld,\"read_bytes_prefill\":%lld,\"read_bytes_decode\":%lld}\n",
           rb_loaded - rb_start, rb_prefill - rb_loaded, rb_decode - rb_prefill);

    llama_batch_ext_free(batch);
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
