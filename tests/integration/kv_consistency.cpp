// kv_consistency: sequence removal and context shift (K-shift) with a given KV cache type,
// through the public llama.h API of a turboctl build. Compiled and run by
// tests/integration/test_kv_cache.py.
//
//   kv_consistency MODEL.gguf TEXT_FILE TYPE_K TYPE_V [THREADS]
//
// 1. seq removal: decode a prefix, then a tail; remove the tail (llama_memory_seq_rm) and
//    decode it again. The next-token distribution must come out the same.
// 2. K-shift: decode 300 tokens, drop the first 100 and move the rest back by 100
//    positions (llama_memory_seq_rm + llama_memory_seq_add: the cached K are re-roped,
//    for a TurboQuant K cache through dequantize -> inverse rotation -> RoPE -> rotation ->
//    quantize), then decode a tail. Compare with the same drop without the move (the tail
//    decoded 100 positions later: same relative positions): KL divergence of the
//    next-token distributions.
// KL figures are means over the 40 tokens of the tail. Prints one line of key=value
// results; exit code 0 when everything ran.
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static ggml_type type_from_name(const char * s) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * name = ggml_type_name((ggml_type) t);
        if (name && strcmp(name, s) == 0) {
            return (ggml_type) t;
        }
    }
    fprintf(stderr, "unknown type %s\n", s);
    exit(2);
}

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

// decode tokens at positions pos0.. in sequence 0; returns the logits of every token
static std::vector<std::vector<float>> decode(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, int n_vocab) {
    llama_batch batch = llama_batch_init((int32_t) toks.size(), 0, 1);
    batch.n_tokens = (int32_t) toks.size();
    for (size_t i = 0; i < toks.size(); ++i) {
        batch.token[i]     = toks[i];
        batch.pos[i]       = pos0 + (int) i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = 1;
    }
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        exit(1);
    }
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < toks.size(); ++i) {
        const float * l = llama_get_logits_ith(ctx, (int32_t) i);
        out.emplace_back(l, l + n_vocab);
    }
    llama_batch_free(batch);
    return out;
}

static std::vector<double> log_softmax(const std::vector<float> & x) {
    double mx = -INFINITY;
    for (float v : x) {
        mx = std::max(mx, (double) v);
    }
    double s = 0;
    for (float v : x) {
        s += std::exp(v - mx);
    }
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        out[i] = x[i] - mx - std::log(s);
    }
    return out;
}

// KL(p || q) of the distributions given as logits
static double kl1(const std::vector<float> & p_logits, const std::vector<float> & q_logits) {
    const auto lp = log_softmax(p_logits);
    const auto lq = log_softmax(q_logits);
    double d = 0;
    for (size_t i = 0; i < lp.size(); ++i) {
        d += std::exp(lp[i]) * (lp[i] - lq[i]);
    }
    return d;
}

// mean KL over the tokens of a decoded tail
static double kl(const std::vector<std::vector<float>> & p, const std::vector<std::vector<float>> & q) {
    double s = 0;
    for (size_t i = 0; i < p.size(); ++i) {
        s += kl1(p[i], q[i]);
    }
    return s / (double) p.size();
}

static std::vector<llama_token> slice(const std::vector<llama_token> & v, size_t a, size_t b) {
    return std::vector<llama_token>(v.begin() + a, v.begin() + b);
}

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL TEXT TYPE_K TYPE_V [THREADS]\n", argv[0]);
        return 2;
    }
    const ggml_type type_k = type_from_name(argv[3]);
    const ggml_type type_v = type_from_name(argv[4]);
    const int n_threads = argc > 5 ? atoi(argv[5]) : 2;

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    std::ifstream f(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str().substr(0, 20000);
    std::vector<llama_token> toks(text.size() + 16);
    const int n = llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), toks.data(), (int32_t) toks.size(), true, false);
    if (n < 400) {
        fprintf(stderr, "need at least 400 tokens of text, got %d\n", n);
        return 1;
    }
    toks.resize(400);

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = 1024;
    cparams.n_batch         = 512;
    cparams.n_ubatch        = 512;
    cparams.n_seq_max       = 1;
    cparams.n_threads       = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.type_k          = type_k;
    cparams.type_v          = type_v;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;

    // 1. sequence removal
    double kl_rm;
    int pos_max_after_rm;
    {
        llama_context * ctx = llama_init_from_model(model, cparams);
        if (!ctx) {
            fprintf(stderr, "cannot create a context with K=%s V=%s\n", argv[3], argv[4]);
            return 1;
        }
        decode(ctx, slice(toks, 0, 300), 0, n_vocab);
        const auto l1 = decode(ctx, slice(toks, 300, 340), 300, n_vocab);
        llama_memory_t mem = llama_get_memory(ctx);
        if (!llama_memory_seq_rm(mem, 0, 300, -1)) {
            fprintf(stderr, "llama_memory_seq_rm failed\n");
            return 1;
        }
        pos_max_after_rm = llama_memory_seq_pos_max(mem, 0);
        const auto l2 = decode(ctx, slice(toks, 300, 340), 300, n_vocab);
        kl_rm = kl(l1, l2);
        llama_free(ctx);
    }

    // 2. K-shift: drop the first 100 tokens and move the rest back by 100 positions. The
    //    reference drops the same tokens without moving anything and decodes the tail 100
    //    positions later: the same relative positions, so the only difference is the shift
    //    (RoPE of the cached K by -100; for a quantized K also one more quantization).
    double kl_shift;
    double kl_dropped;
    {
        llama_context * ctx = llama_init_from_model(model, cparams);
        decode(ctx, slice(toks, 0, 300), 0, n_vocab);
        llama_memory_t mem = llama_get_memory(ctx);
        llama_memory_seq_rm(mem, 0, 0, 100);
        llama_memory_seq_add(mem, 0, 100, -1, -100);
        const auto ls = decode(ctx, slice(toks, 300, 340), 200, n_vocab);
        llama_free(ctx);

        llama_context * ref = llama_init_from_model(model, cparams);
        decode(ref, slice(toks, 0, 300), 0, n_vocab);
        llama_memory_seq_rm(llama_get_memory(ref), 0, 0, 100);
        const auto lr = decode(ref, slice(toks, 300, 340), 300, n_vocab);
        llama_free(ref);

        // for scale: the same tail with the full history (what dropping 100 tokens changes)
        llama_context * full = llama_init_from_model(model, cparams);
        decode(full, slice(toks, 0, 300), 0, n_vocab);
        const auto lf = decode(full, slice(toks, 300, 340), 300, n_vocab);
        llama_free(full);

        kl_shift   = kl(lr, ls);
        kl_dropped = kl(lf, lr);
    }

    printf("type_k=%s type_v=%s n_tokens=%d seq_rm_pos_max=%d kl_seq_rm=%.9g kl_shift=%.9g kl_dropped=%.9g\n",
           argv[3], argv[4], n, pos_max_after_rm, kl_rm, kl_shift, kl_dropped);

    llama_model_free(model);
    llama_backend_free();
    return 0;
}
