// The CUDA codec (kernels/turbo-cuda.cuh) against the scalar reference (kernels/turbo-ref.c) on
// a GPU: for each turbo type, blocks of Gaussian values at scales over the whole f16 range and
// the edge cases (zeros, NaN, +-Inf, values past the f16 range, denormals, one non-zero value)
// are quantized on the GPU and by the reference, and must be identical byte for byte; the
// reference's blocks are decoded on the GPU (value by value and through the two-value
// dequantizer ggml-cuda's templates call, and four at a time as codebook bytes times the
// sub-block scale, the shape of the flash-attention kernels) and must equal the reference's
// floats bit for bit.
//
// Built by tests/kernels/test_cuda.py:
//   nvcc -std=c++17 --fmad=false -arch=<the GPU's> -I kernels -I <root with ggml-turbo/> \
//        cuda_codec_check.cu turbo-ref.o -o cuda_codec_check
// Prints one line per type and "cuda codec: ok" last; exit code 0 only when everything matched.
#include "ggml-turbo/turbo-cuda.cuh"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CHECK(call)                                                                      \
    do {                                                                                 \
        cudaError_t err_ = (call);                                                       \
        if (err_ != cudaSuccess) {                                                       \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,           \
                         cudaGetErrorString(err_));                                      \
            std::exit(2);                                                                \
        }                                                                                \
    } while (0)

// --------------------------------------------------------------------------- kernels
// one warp per block (the quantizer's shape): lane l passes values l and l + 32
template <typename block_t, void (*quantize)(float, float, block_t *)>
__global__ void quantize_blocks(const float * x, block_t * y, int64_t nb) {
    const int64_t ib = ((int64_t) blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (ib < nb) {
        quantize(x[ib * QK_TURBO + lane], x[ib * QK_TURBO + lane + 32], y + ib);
    }
}

template <float (*value)(const void *, int64_t, int)>
__global__ void decode_values(const void * vx, float * y, int64_t n) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = value(vx, i / QK_TURBO, (int) (i % QK_TURBO));
    }
}

template <void (*dequantize)(const void *, const int64_t, const int, float2 &)>
__global__ void decode_pairs(const void * vx, float * y, int64_t nb) {
    const int64_t t = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;  // one (block, iqs) pair
    if (t < nb * (QK_TURBO / QR_TURBO)) {
        const int64_t ib  = t / (QK_TURBO / QR_TURBO);
        const int     iqs = (int) (t % (QK_TURBO / QR_TURBO));
        float2 v;
        dequantize(vx, ib, iqs, v);
        y[ib * QK_TURBO + iqs]                = v.x;
        y[ib * QK_TURBO + iqs + QK_TURBO / 2] = v.y;
    }
}

template <typename block_t, int (*codes4)(const block_t *, int)>
__global__ void decode_codes4(const block_t * x, float * y, int64_t nb) {
    const int64_t t = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;  // one (block, 4 values)
    if (t < nb * (QK_TURBO / 4)) {
        const int64_t ib = t / (QK_TURBO / 4);
        const int     i  = 4 * (int) (t % (QK_TURBO / 4));
        const int     q  = codes4(x + ib, i);
        const float   d  = turbo_sub_scale_cuda(x[ib].e, i);
        for (int n = 0; n < 4; ++n) {
            y[ib * QK_TURBO + i + n] = d * (float) (int8_t) (q >> (8 * n));
        }
    }
}

// --------------------------------------------------------------------------- data
static uint64_t g_state = 0x5475726230437544ull;

static uint64_t splitmix64() {
    uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01() { return (double) (splitmix64() >> 11) * (1.0 / 9007199254740992.0); }

static float gaussian() {
    const double u = uniform01() + 1e-300;
    const double v = uniform01();
    return (float) (std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v));
}

// n_random Gaussian blocks at log-uniform scales 1e-6 .. 1e4, then the edge cases
static std::vector<float> test_values(int64_t n_random, int64_t * n_blocks) {
    std::vector<float> x;
    for (int64_t b = 0; b < n_random; ++b) {
        const float scale = (float) std::pow(10.0, -6.0 + 10.0 * uniform01());
        for (int i = 0; i < QK_TURBO; ++i) {
            x.push_back(scale * gaussian());
        }
    }
    const float specials[] = { NAN, INFINITY, -INFINITY, 65504.0f, 1e30f, -3e38f, 1e-40f, -1e-45f, 0.0f, -0.0f };
    for (float s : specials) {  // one special value in a Gaussian block, at every 7th position
        for (int i = 0; i < QK_TURBO; ++i) {
            x.push_back(i % 7 == 3 ? s : gaussian());
        }
    }
    for (int i = 0; i < QK_TURBO; ++i) {  // all zero
        x.push_back(0.0f);
    }
    for (int i = 0; i < QK_TURBO; ++i) {  // one value in the second sub-block only
        x.push_back(i == 40 ? -2.5f : 0.0f);
    }
    for (int i = 0; i < QK_TURBO; ++i) {  // constant
        x.push_back(0.37f);
    }
    for (int i = 0; i < QK_TURBO; ++i) {  // alternating, huge
        x.push_back(i % 2 ? 6.0e4f : -6.0e4f);
    }
    for (int i = 0; i < QK_TURBO; ++i) {  // denormals only
        x.push_back((float) (i + 1) * 1e-42f);
    }
    *n_blocks = (int64_t) x.size() / QK_TURBO;
    return x;
}

// --------------------------------------------------------------------------- one type
template <typename block_t, void (*quantize)(float, float, block_t *),
          float (*value)(const void *, int64_t, int),
          void (*dequantize)(const void *, const int64_t, const int, float2 &),
          int (*codes4)(const block_t *, int)>
static bool check_type(const char * name, const std::vector<float> & x, int64_t nb,
                       void (*quantize_ref)(const float *, block_t *, int64_t),
                       void (*dequantize_ref)(const block_t *, float *, int64_t)) {
    const int64_t n = nb * QK_TURBO;
    std::vector<block_t> ref(nb), got(nb);
    quantize_ref(x.data(), ref.data(), n);

    float * d_x = nullptr;
    block_t * d_y = nullptr;
    block_t * d_ref = nullptr;
    float * d_f = nullptr;
    CHECK(cudaMalloc(&d_x, n * sizeof(float)));
    CHECK(cudaMalloc(&d_y, nb * sizeof(block_t)));
    CHECK(cudaMalloc(&d_ref, nb * sizeof(block_t)));
    CHECK(cudaMalloc(&d_f, n * sizeof(float)));
    CHECK(cudaMemcpy(d_x, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_ref, ref.data(), nb * sizeof(block_t), cudaMemcpyHostToDevice));

    quantize_blocks<block_t, quantize><<<(unsigned) ((nb + 3) / 4), 128>>>(d_x, d_y, nb);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(got.data(), d_y, nb * sizeof(block_t), cudaMemcpyDeviceToHost));
    int64_t q_diff = 0;
    int64_t first = -1;
    for (int64_t b = 0; b < nb; ++b) {
        if (std::memcmp(&ref[b], &got[b], sizeof(block_t)) != 0) {
            q_diff++;
            first = first < 0 ? b : first;
        }
    }

    std::vector<float> want(n), dec(n), pairs(n);
    dequantize_ref(ref.data(), want.data(), n);
    decode_values<value><<<(unsigned) ((n + 255) / 256), 256>>>(d_ref, d_f, n);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(dec.data(), d_f, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaMemset(d_f, 0xFF, n * sizeof(float)));
    const int64_t n_pairs = nb * (QK_TURBO / QR_TURBO);
    decode_pairs<dequantize><<<(unsigned) ((n_pairs + 255) / 256), 256>>>(d_ref, d_f, nb);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(pairs.data(), d_f, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaMemset(d_f, 0xFF, n * sizeof(float)));
    std::vector<float> fours(n);
    const int64_t n_fours = nb * (QK_TURBO / 4);
    decode_codes4<block_t, codes4><<<(unsigned) ((n_fours + 255) / 256), 256>>>(d_ref, d_f, nb);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(fours.data(), d_f, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaDeviceSynchronize());
    int64_t v_diff = 0;
    int64_t p_diff = 0;
    int64_t c_diff = 0;
    for (int64_t i = 0; i < n; ++i) {
        v_diff += std::memcmp(&want[i], &dec[i], sizeof(float)) != 0;
        p_diff += std::memcmp(&want[i], &pairs[i], sizeof(float)) != 0;
        c_diff += std::memcmp(&want[i], &fours[i], sizeof(float)) != 0;
    }
    CHECK(cudaFree(d_x));
    CHECK(cudaFree(d_y));
    CHECK(cudaFree(d_ref));
    CHECK(cudaFree(d_f));

    std::printf("%s: %lld blocks; quantize: %lld differ from the reference; dequantize: %lld values differ "
                "(one by one), %lld (in pairs), %lld (as codebook bytes, 4 at a time)\n", name, (long long) nb,
                (long long) q_diff, (long long) v_diff, (long long) p_diff, (long long) c_diff);
    if (first >= 0) {
        std::printf("%s: first differing block %lld\n", name, (long long) first);
    }
    return q_diff == 0 && v_diff == 0 && p_diff == 0 && c_diff == 0;
}

int main(int argc, char ** argv) {
    const int64_t n_random = argc > 1 ? std::atoll(argv[1]) : 200000;
    int device = 0;
    cudaDeviceProp prop;
    CHECK(cudaGetDevice(&device));
    CHECK(cudaGetDeviceProperties(&prop, device));
    std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    int64_t nb = 0;
    const std::vector<float> x = test_values(n_random, &nb);
    bool ok = true;
    ok &= check_type<block_turbo4, turbo4_quantize_block_warp_cuda, turbo4_value_cuda, dequantize_turbo4,
                      turbo4_codes4_cuda>(
        "turbo4", x, nb, turbo4_quantize_row_ref, turbo4_dequantize_row_ref);
    ok &= check_type<block_turbo3, turbo3_quantize_block_warp_cuda, turbo3_value_cuda, dequantize_turbo3,
                      turbo3_codes4_cuda>(
        "turbo3", x, nb, turbo3_quantize_row_ref, turbo3_dequantize_row_ref);
    ok &= check_type<block_turbo2, turbo2_quantize_block_warp_cuda, turbo2_value_cuda, dequantize_turbo2,
                      turbo2_codes4_cuda>(
        "turbo2", x, nb, turbo2_quantize_row_ref, turbo2_dequantize_row_ref);
    std::printf("cuda codec: %s\n", ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
}
