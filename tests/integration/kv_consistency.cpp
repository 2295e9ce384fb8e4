// kv_consistency: sequence removal and context shift (K-shift) with a given KV cache type,
// through the public llama.h API of a turboctl build. Compiled and run by
// tests/integration/test_kv_cache.py.
//
//   kv_consistency MODEL.gguf TEXT_FILE TYPE_K TYPE_V [THREADS [KV_LAYERS [KV_ADAPTIVE]]]
//
// KV_LAYERS: per-layer rules (the --kv-layers syntax, "" = none) on top of TYPE_K/TYPE_V,
// passed as llama_context_params.kv_layers; KV_ADAPTIVE: a TURBO_LAYER_ADAPTIVE mode
// (llama_context_params.kv_adaptive, -1 = none). The f16-K references below keep the
// recipe's V side: every rule's K side becomes '-' and the default K is f16.
//
// 1. seq removal: decode a prefix, then a tail; remove the tail (llama_memory_seq_rm) and
//    decode it again. The next-token distribution must come out the same.
// 2. K-shift: decode 300 tokens, drop the first 100 and move the rest back by 100
//    positions (llama_memory_seq_rm + llama_memory_seq_add: the cached K are re-roped,
//    for a quantized K through dequantize -> inverse rotation -> RoPE on the first n_rot
//    dims of each head -> rotation -> quantize), then decode a tail. Compared with the same
//    drop without the move (the tail decoded 100 positions later: same relative positions):
//    kl_shift. The same with an f16 K and this V type (kl_shift_f16: the rounding of RoPE
//    in f16, and how much a quantized V amplifies it: the values of later tokens move a
//    little and now and then cross a decision boundary of the V quantizer), and the K
//    cache's own quantization noise, the unshifted tail with K of this type against an f16
//    K, V of this type in both (kl_noise). A correct shift adds one more quantization of K (independent of the
//    first: about twice kl_noise), so kl_shift is of the order of 2 * kl_noise +
//    kl_shift_f16; a broken one is far above.
// 3. Repeated K-shifts: two sequences in one unified cache; sequence 1 is shifted ten
//    times, which re-processes every cell of the cache, sequence 0's with a zero shift
//    (dequantize, rotate back, RoPE by 0, rotate, quantize). Sequence 0's tail after one
//    and after ten shifts against before any: kl_repeat_1, kl_repeat_10 (a codec whose
//    re-quantization is idempotent gives its blocks back: both ~0, and 10 no worse than 1).
// 4. State save/load: the state of sequence 0 after 300 tokens (llama_state_seq_get_data),
//    loaded into a fresh context of the same recipe (llama_state_seq_set_data), then the tail
//    decoded in both: kl_state (the same cells, bit for bit: 0). Loading it into a context
//    whose default K type differs (the recipe's rules kept) must be refused:
//    state_refused=1 (0 when the other context accepted it: the state would be misread).
// KL figures are means over the 40 tokens of a tail. Prints one line of key=value results;
// exit code 0 when everything ran.
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

using logits_t = std::vector<std::vector<float>>;

// decode tokens at positions pos0.. in sequence seq; returns the logits of every token
static logits_t decode(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, int n_vocab, int seq = 0) {
    llama_batch batch = llama_batch_init((int32_t) toks.size(), 0, 1);
    batch.n_tokens = (int32_t) toks.size();
    for (size_t i = 0; i < toks.size(); ++i) {
        batch.token[i]     = toks[i];
        batch.pos[i]       = pos0 + (int) i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = seq;
        batch.logits[i]    = 1;
    }
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        exit(1);
    }
    logits_t out;
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
static double kl(const logits_t & p, const logits_t & q) {
    double s = 0;
    for (size_t i = 0; i < p.size(); ++i) {
        s += kl1(p[i], q[i]);
    }
    return s / (double) p.size();
}

static std::vector<llama_token> slice(const std::vector<llama_token> & v, size_t a, size_t b) {
    return std::vector<llama_token>(v.begin() + a, v.begin() + b);
}

// the rules with every K side replaced by '-' (keep the default K); rules that then set
// nothing are dropped
static std::string keep_k_rules(const std::string & rules) {
    std::string out;
    size_t start = 0;
    while (start <= rules.size()) {
        size_t end = rules.find(';', start);
        if (end == std::string::npos) {
            end = rules.size();
        }
        const std::string rule = rules.substr(start, end - start);
        const size_t eq = rule.find('=');
        if (eq != std::string::npos) {
            std::string types = rule.substr(eq + 1);
            const size_t slash = types.find('/');
            std::string tv = slash == std::string::npos ? types : types.substr(slash + 1);
            tv.erase(0, tv.find_first_not_of(" \t"));
            tv.erase(tv.find_last_not_of(" \t") + 1);
            if (tv != "-") {
                out += (out.empty() ? "" : ";") + rule.substr(0, eq) + "=-/" + tv;
            }
        }
        start = end + 1;
    }
    return out;
}

struct fixture {
    llama_model * model;
    int n_vocab;
    std::vector<llama_token> toks;
    int n_threads;
    std::string kv_layers;      // the recipe's rules ("" = none)
    std::string kv_layers_f16k; // the same with K sides '-'
    int kv_adaptive = -1;

    // the recipe (rules on top of type_k/type_v)
    llama_context * context(ggml_type type_k, ggml_type type_v, int n_seq = 1) const {
        return context_rules(type_k, type_v, kv_layers, n_seq);
    }

    // the reference: an f16 K on every layer, the recipe's V types
    llama_context * context_f16k(ggml_type type_v) const {
        return context_rules(GGML_TYPE_F16, type_v, kv_layers_f16k);
    }

    llama_context * context_rules(ggml_type type_k, ggml_type type_v, const std::string & rules, int n_seq = 1) const {
        llama_context_params cparams = llama_context_default_params();
        cparams.n_ctx           = 1024;
        cparams.n_batch         = 512;
        cparams.n_ubatch        = 512;
        cparams.n_seq_max       = n_seq;
        cparams.kv_unified      = true;
        cparams.n_threads       = n_threads;
        cparams.n_threads_batch = n_threads;
        cparams.type_k          = type_k;
        cparams.type_v          = type_v;
        cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
        cparams.kv_layers       = rules.empty() ? nullptr : rules.c_str();
        cparams.kv_adaptive     = kv_adaptive;
        llama_context * ctx = llama_init_from_model(model, cparams);
        if (!ctx) {
            fprintf(stderr, "cannot create a context with K=%s V=%s rules \"%s\"\n", ggml_type_name(type_k),
                    ggml_type_name(type_v), rules.c_str());
            exit(1);
        }
        return ctx;
    }

    // the tail after 300 tokens of which the first 100 are dropped; moved: the other 200 are
    // moved back by 100 positions (a K-shift) and the tail decoded at 200, otherwise at 300
    logits_t dropped_tail(ggml_type type_k, ggml_type type_v, bool moved, bool f16k = false) const {
        llama_context * ctx = f16k ? context_f16k(type_v) : context(type_k, type_v);
        decode(ctx, slice(toks, 0, 300), 0, n_vocab);
        llama_memory_t mem = llama_get_memory(ctx);
        llama_memory_seq_rm(mem, 0, 0, 100);
        if (moved) {
            llama_memory_seq_add(mem, 0, 100, -1, -100);
        }
        logits_t out = decode(ctx, slice(toks, 300, 340), moved ? 200 : 300, n_vocab);
        llama_free(ctx);
        return out;
    }
};

int main(int argc, char ** argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL TEXT TYPE_K TYPE_V [THREADS [KV_LAYERS [KV_ADAPTIVE]]]\n", argv[0]);
        return 2;
    }
    const ggml_type type_k = type_from_name(argv[3]);
    const ggml_type type_v = type_from_name(argv[4]);

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    fixture fx;
    fx.n_threads = argc > 5 ? atoi(argv[5]) : 2;
    fx.kv_layers = argc > 6 ? argv[6] : "";
    fx.kv_layers_f16k = keep_k_rules(fx.kv_layers);
    fx.kv_adaptive = argc > 7 ? atoi(argv[7]) : -1;
    fx.model = llama_model_load_from_file(argv[1], mparams);
    if (!fx.model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(fx.model);
    fx.n_vocab = llama_vocab_n_tokens(vocab);

    std::ifstream f(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str().substr(0, 20000);
    fx.toks.resize(text.size() + 16);
    const int n = llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), fx.toks.data(), (int32_t) fx.toks.size(), true, false);
    if (n < 400) {
        fprintf(stderr, "need at least 400 tokens of text, got %d\n", n);
        return 1;
    }
    fx.toks.resize(400);
    const int n_vocab = fx.n_vocab;
    const auto & toks = fx.toks;

    // 1. sequence removal
    double kl_rm;
    int pos_max_after_rm;
    {
        llama_context * ctx = fx.context(type_k, type_v);
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

    // 2. K-shift: drop the first 100 tokens and move the rest back by 100 positions, against
    //    the same drop without the move (same relative positions)
    const auto ref     = fx.dropped_tail(type_k, type_v, false);
    const auto shifted = fx.dropped_tail(type_k, type_v, true);
    const auto ref_kf16     = fx.dropped_tail(type_k, type_v, false, true);
    const auto shifted_kf16 = fx.dropped_tail(type_k, type_v, true, true);
    const double kl_shift     = kl(ref, shifted);
    const double kl_shift_f16 = kl(ref_kf16, shifted_kf16);
    const double kl_noise     = kl(ref_kf16, ref);
    double kl_dropped;
    {
        // for scale: the same tail with the full history (what dropping 100 tokens changes)
        llama_context * full = fx.context(type_k, type_v);
        decode(full, slice(toks, 0, 300), 0, n_vocab);
        kl_dropped = kl(decode(full, slice(toks, 300, 340), 300, n_vocab), ref);
        llama_free(full);
    }

    // 3. ten K-shifts of sequence 1; sequence 0's cells are re-processed with a zero shift
    double kl_repeat_1 = 0;
    double kl_repeat_10 = 0;
    {
        llama_context * ctx = fx.context(type_k, type_v, 2);
        llama_memory_t mem = llama_get_memory(ctx);
        decode(ctx, slice(toks, 0, 300), 0, n_vocab, 0);
        decode(ctx, slice(toks, 340, 400), 0, n_vocab, 1);
        const auto before = decode(ctx, slice(toks, 300, 340), 300, n_vocab, 0);
        llama_memory_seq_rm(mem, 0, 300, -1);
        for (int i = 1; i <= 10; ++i) {
            llama_memory_seq_add(mem, 1, 0, -1, 1);
            // the decode applies the pending shift first; its tail is removed again after
            const auto after = decode(ctx, slice(toks, 300, 340), 300, n_vocab, 0);
            llama_memory_seq_rm(mem, 0, 300, -1);
            if (i == 1) {
                kl_repeat_1 = kl(before, after);
            }
            if (i == 10) {
                kl_repeat_10 = kl(before, after);
            }
        }
        llama_free(ctx);
    }

    // 4. state save/load, into the same recipe and into another one
    double kl_state = 0;
    int state_refused = 0;
    size_t state_bytes = 0;
    {
        llama_context * src = fx.context(type_k, type_v);
        decode(src, slice(toks, 0, 300), 0, n_vocab);
        std::vector<uint8_t> state(llama_state_seq_get_size(src, 0));
        state_bytes = llama_state_seq_get_data(src, state.data(), state.size(), 0);
        if (state_bytes == 0) {
            fprintf(stderr, "llama_state_seq_get_data saved nothing\n");
            return 1;
        }
        const auto want = decode(src, slice(toks, 300, 340), 300, n_vocab);
        llama_free(src);

        llama_context * dst = fx.context(type_k, type_v);
        if (llama_state_seq_set_data(dst, state.data(), state_bytes, 0) != state_bytes) {
            fprintf(stderr, "llama_state_seq_set_data refused the state of the same recipe\n");
            return 1;
        }
        kl_state = kl(want, decode(dst, slice(toks, 300, 340), 300, n_vocab));
        llama_free(dst);

        const ggml_type other_k = type_k == GGML_TYPE_F16 ? GGML_TYPE_Q8_0 : GGML_TYPE_F16;
        llama_context * other = fx.context_rules(other_k, type_v, fx.kv_layers);
        state_refused = llama_state_seq_set_data(other, state.data(), state_bytes, 0) == 0 ? 1 : 0;
        llama_free(other);
    }

    printf("type_k=%s type_v=%s n_tokens=%d seq_rm_pos_max=%d kl_seq_rm=%.9g kl_shift=%.9g kl_shift_f16=%.9g "
           "kl_noise=%.9g kl_dropped=%.9g kl_repeat_1=%.9g kl_repeat_10=%.9g kl_state=%.9g state_refused=%d "
           "state_bytes=%zu\n",
           argv[3], argv[4], n, pos_max_after_rm, kl_rm, kl_shift, kl_shift_f16, kl_noise, kl_dropped,
           kl_repeat_1, kl_repeat_10, kl_state, state_refused, state_bytes);

    llama_model_free(fx.model);
    llama_backend_free();
    return 0;
}
