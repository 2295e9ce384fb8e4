// turbo.h: the TurboQuant KV-cache codec (turbo2 / turbo3 / turbo4).
//
// The single source of truth for the block layouts and the scalar reference. The patch
// series copies kernels/ into ggml/src/ggml-turbo/ (generated, checked by the tests), and
// the Python tests compile these same files standalone.
//
// The codec works on values that were already rotated by a randomized Hadamard transform
// at graph level (see kernels/README.md), so it is a pure quantizer: to_float is the exact
// inverse of from_float up to the quantization error, on every backend.
//
// Layout: blocks of QK_TURBO = 64 values, two sub-blocks of 32 with one scale byte each.
//   scale byte b: d(b) = 2^((b - TURBO_SCALE_BIAS) / 8), b == 0 -> the sub-block is zero
//   value i     : d(e[i/32]) * turbo_cbN[index_i]
//   turbo4: qs[j] low nibble = index of value j, high nibble = index of value j + 32
//   turbo3: low two bits of value i in qs[i % 16] at bit 2*(i / 16); bit 2 of value i is
//           bit i of the little-endian 64-bit word qh[0..7]
//   turbo2: index of value i in qs[i % 16] at bit 2*(i / 16)
// Bits per value including scales: 4.25, 3.25, 2.25.
#pragma once

// Codec headers include each other by their path under ggml/src (the include root every
// consumer shares: ggml-base, ggml-cpu, and all three Metal source layouts; see
// kernels/README.md, "Metal").
#include "ggml-turbo/turbo-codebooks.h"

#if !defined(__METAL_VERSION__)
#include <stddef.h>
#include <stdint.h>
#endif

#define QK_TURBO 64

typedef struct {
    uint8_t e[QK_TURBO / TURBO_QK_SUB];  // scale bytes, one per 32 values
    uint8_t qs[QK_TURBO / 2];            // 4-bit indices
} block_turbo4;

typedef struct {
    uint8_t e[QK_TURBO / TURBO_QK_SUB];
    uint8_t qs[QK_TURBO / 4];            // low 2 bits of the 3-bit indices
    uint8_t qh[QK_TURBO / 8];            // bit 2 of the indices
} block_turbo3;

typedef struct {
    uint8_t e[QK_TURBO / TURBO_QK_SUB];
    uint8_t qs[QK_TURBO / 4];            // 2-bit indices
} block_turbo2;

#if !defined(__METAL_VERSION__)

// the reference lives in ggml-base and is called from the CPU backend library
#ifndef TURBO_API
#  if defined(__GNUC__) || defined(__clang__)
#    define TURBO_API __attribute__((visibility("default")))
#  else
#    define TURBO_API
#  endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Scalar reference: quantize k values (k % QK_TURBO == 0). Non-finite inputs (NaN, +-Inf)
// are stored as 0; the rest of the block is quantized as if they were 0. Never writes a
// non-finite value and never reads or writes outside x[0..k) / y[0..k/QK_TURBO).
TURBO_API void turbo4_quantize_row_ref(const float * x, block_turbo4 * y, int64_t k);
TURBO_API void turbo3_quantize_row_ref(const float * x, block_turbo3 * y, int64_t k);
TURBO_API void turbo2_quantize_row_ref(const float * x, block_turbo2 * y, int64_t k);

// Scalar reference dequantize: y[i] = d(b) * codebook[index] (one float multiply; every
// backend computes exactly this).
TURBO_API void turbo4_dequantize_row_ref(const block_turbo4 * x, float * y, int64_t k);
TURBO_API void turbo3_dequantize_row_ref(const block_turbo3 * x, float * y, int64_t k);
TURBO_API void turbo2_dequantize_row_ref(const block_turbo2 * x, float * y, int64_t k);

// Reference dot product of k = n values (n % QK_TURBO == 0) with n floats y, through the
// reference dequantizer (ggml's vec_dot signature; bs, bx, by and nrc are unused): the check
// for the backends' own dot products.
TURBO_API void turbo4_vec_dot_f32_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
TURBO_API void turbo3_vec_dot_f32_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
TURBO_API void turbo2_vec_dot_f32_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

// The scale of scale byte b, and the scale byte rule (exposed for tests and backends).
TURBO_API float turbo_scale_of(uint8_t b);
TURBO_API int   turbo_first_scale(float amax);  // smallest b in [1, 255] with d(b) * 127 >= amax (255 if none)

// The +-1 diagonal of the randomized Hadamard rotation, for head dims up to 4096:
// sign i is bit (i % 64) of the (i / 64)-th output of splitmix64 seeded with
// TURBO_ROT_SEED; bit set -> -1. The same prefix serves every head dim.
TURBO_API void turbo_rot_signs(float * dst, int64_t n);

#ifdef __cplusplus
}
#endif

#endif // !__METAL_VERSION__
