// rotation_check: the rotation helper every graph of the patched llama.cpp goes through
// (llama_rotate_kv, src/llama-impl.h), computed on the CPU backend of a turboctl build.
// Compiled and run by tests/integration/test_rotation.py.
//
//   rotation_check            forward and inverse against a double-precision reference, for
//                             every head dim of a rotation input that holds several, on head
//                             vectors and on merged heads; prints "ok ..." lines
//   rotation_check misuse     hands a TurboQuant rotation input to llama_mul_mat_hadamard, as
//                             a model graph that rotates by itself did: must abort
#include "llama-impl.h"

#include "ggml-cpu.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

static ggml_context * make_ctx() {
    ggml_init_params params = { 256u << 20, nullptr, false };
    return ggml_init(params);
}

// the orthonormal Sylvester Hadamard matrix of size n: (-1)^popcount(i & j) / sqrt(n)
static void fill_hadamard(float * h, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            h[i*n + j] = (__builtin_popcountll((unsigned long long) (i & j)) % 2 ? -1.0f : 1.0f) / std::sqrt((float) n);
        }
    }
}

// the rotation input of a cache whose turbo layers use head dims n_lo..n_hi (as the KV cache
// lays it out: signs, then the Hadamard matrices)
static ggml_tensor * rotation_input(ggml_context * ctx, int64_t n_lo, int64_t n_hi) {
    const llama_turbo_rot_layout l = { n_lo, n_hi };
    ggml_tensor * rot = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, l.size());
    float * data = (float *) rot->data;
    ggml_turbo_rot_signs(data, n_hi);
    for (int64_t n = n_lo; n <= n_hi; n *= 2) {
        fill_hadamard(data + l.h_offset(n), n);
    }
    return rot;
}

// reference: y = H_n (s * x) with the orthonormal Sylvester Hadamard H_n, in double
static std::vector<double> reference(const float * x, const float * s, int64_t n) {
    std::vector<double> y(n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            const int sign = __builtin_popcountll((unsigned long long) (i & j)) % 2 ? -1 : 1;
            y[i] += sign * (double) s[j] * (double) x[j];
        }
        y[i] /= std::sqrt((double) n);
    }
    return y;
}

static int check(int64_t n_lo, int64_t n_hi, int64_t n, int64_t heads_merged) {
    ggml_context * ctx = make_ctx();
    ggml_tensor * rot = rotation_input(ctx, n_lo, n_hi);
    const int64_t rows = 5;
    ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n*heads_merged, rows);
    std::mt19937 rng(42);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (int64_t i = 0; i < ggml_nelements(x); ++i) {
        ((float *) x->data)[i] = g(rng);
    }
    ggml_tensor * y = llama_rotate_kv(ctx, x, rot, n, false);
    ggml_tensor * z = llama_rotate_kv(ctx, y, rot, n, true);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, z);
    ggml_graph_compute_with_ctx(ctx, gf, 2);

    const float * s = (const float *) rot->data;  // the first n signs serve head dim n
    double err_fwd = 0.0, err_inv = 0.0, norm = 0.0;
    for (int64_t r = 0; r < rows*heads_merged; ++r) {
        const float * xr = (const float *) x->data + r*n;
        const float * yr = (const float *) y->data + r*n;
        const float * zr = (const float *) z->data + r*n;
        const std::vector<double> want = reference(xr, s, n);
        for (int64_t i = 0; i < n; ++i) {
            err_fwd = std::max(err_fwd, std::fabs(yr[i] - want[i]));
            err_inv = std::max(err_inv, std::fabs((double) zr[i] - (double) xr[i]));
            norm = std::max(norm, std::fabs((double) xr[i]));
        }
    }
    ggml_free(ctx);
    const bool ok = err_fwd <= 1e-5*norm && err_inv <= 1e-5*norm;
    printf("%s n_lo=%lld n_hi=%lld n=%lld heads_merged=%lld max_err_forward=%.3g max_err_inverse=%.3g\n",
           ok ? "ok" : "FAIL", (long long) n_lo, (long long) n_hi, (long long) n, (long long) heads_merged,
           err_fwd, err_inv);
    return ok ? 0 : 1;
}

int main(int argc, char ** argv) {
    if (argc > 1 && strcmp(argv[1], "misuse") == 0) {
        ggml_context * ctx = make_ctx();
        ggml_tensor * rot = rotation_input(ctx, 128, 128);
        ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 128, 4);
        llama_mul_mat_hadamard(ctx, x, rot);  // must abort: not a square matrix
        printf("llama_mul_mat_hadamard accepted a TurboQuant rotation input\n");
        return 0;
    }
    int failures = 0;
    const int64_t layouts[][2] = { { 64, 64 }, { 128, 128 }, { 512, 512 }, { 128, 256 }, { 64, 512 } };
    for (const auto & l : layouts) {
        for (int64_t n = l[0]; n <= l[1]; n *= 2) {
            failures += check(l[0], l[1], n, 1);
            failures += check(l[0], l[1], n, 3);  // the attention output: heads merged in a row
        }
    }
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
