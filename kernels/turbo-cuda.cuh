// turbo-cuda.cuh: the TurboQuant codec in CUDA device code, in the shapes ggml-cuda's
// templates take (a block quantizer for SET_ROWS / CPY, a two-value dequantizer for
// GET_ROWS and the converters). The arithmetic is turbo-impl.h's, compiled for the GPU: the
// same per-block code as the scalar reference and the Metal kernels.
//
// Translation units that quantize must be compiled with --fmad=false (kernels/README.md,
// "CUDA"): the quantizer's squared errors must round exactly as the reference's for the
// same scale byte to be chosen. Decoding is one float multiply and is exact either way.
#pragma once

#include "ggml-turbo/turbo-impl.h"

// values of one block produced per dequantizer call (ggml's "qr"): value iqs and iqs + 32
#define QR_TURBO 2

// --------------------------------------------------------------------------- quantize
// x: QK_TURBO floats anywhere (global or local memory); y: the block, written once
template <typename block_t, void (*quantize_block)(float *, block_t *)>
__device__ __forceinline__ void turbo_quantize_block_cuda(const float * x, block_t * y) {
    float v[QK_TURBO];
#pragma unroll
    for (int i = 0; i < QK_TURBO; ++i) {
        v[i] = x[i];
    }
    block_t b;
    quantize_block(v, &b);
    *y = b;
}

__device__ __forceinline__ void turbo4_quantize_block_cuda(const float * x, block_turbo4 * y) {
    turbo_quantize_block_cuda<block_turbo4, turbo4_quantize_block_impl>(x, y);
}

__device__ __forceinline__ void turbo3_quantize_block_cuda(const float * x, block_turbo3 * y) {
    turbo_quantize_block_cuda<block_turbo3, turbo3_quantize_block_impl>(x, y);
}

__device__ __forceinline__ void turbo2_quantize_block_cuda(const float * x, block_turbo2 * y) {
    turbo_quantize_block_cuda<block_turbo2, turbo2_quantize_block_impl>(x, y);
}

// --------------------------------------------------------------------------- dequantize
// value i (0..63) of block ib of vx
__device__ __forceinline__ float turbo4_value_cuda(const void * vx, int64_t ib, int i) {
    return turbo4_value_impl((const block_turbo4 *) vx + ib, i);
}

__device__ __forceinline__ float turbo3_value_cuda(const void * vx, int64_t ib, int i) {
    return turbo3_value_impl((const block_turbo3 *) vx + ib, i);
}

__device__ __forceinline__ float turbo2_value_cuda(const void * vx, int64_t ib, int i) {
    return turbo2_value_impl((const block_turbo2 *) vx + ib, i);
}

// ggml-cuda's dequantize_kernel_t shape: values iqs (0..31) and iqs + 32 of block ib
template <float (*value)(const void *, int64_t, int)>
__device__ __forceinline__ void turbo_dequantize_pair_cuda(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    v.x = value(vx, ib, iqs);
    v.y = value(vx, ib, iqs + QK_TURBO / 2);
}

__device__ __forceinline__ void dequantize_turbo4(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    turbo_dequantize_pair_cuda<turbo4_value_cuda>(vx, ib, iqs, v);
}

__device__ __forceinline__ void dequantize_turbo3(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    turbo_dequantize_pair_cuda<turbo3_value_cuda>(vx, ib, iqs, v);
}

__device__ __forceinline__ void dequantize_turbo2(const void * vx, const int64_t ib, const int iqs, float2 & v) {
    turbo_dequantize_pair_cuda<turbo2_value_cuda>(vx, ib, iqs, v);
}
