// turbo-cuda.cuh: the TurboQuant codec in CUDA device code, in the shapes ggml-cuda's
// templates take (a warp-wide block quantizer for SET_ROWS / CPY, a two-value dequantizer
// for GET_ROWS and the converters, 4-value readers for flash attention). The arithmetic is
// turbo-impl.h's, compiled for the GPU: its tables, scale search and value decode; the
// quantizer spreads the reference's per-sub-block loop over a warp (below), bit for bit.
//
// Translation units that quantize must be compiled with --fmad=false (kernels/README.md,
// "CUDA"): the quantizer's squared errors must round exactly as the reference's for the
// same scale byte to be chosen. Decoding is one float multiply and is exact either way.
#pragma once

#include "ggml-turbo/turbo-impl.h"

// values of one block produced per dequantizer call (ggml's "qr"): value iqs and iqs + 32
#define QR_TURBO 2

// --------------------------------------------------------------------------- quantize
// One warp quantizes one block: lane l holds values l and l + 32 of the block (any floats;
// NaN and +-Inf become 0), all 32 lanes call together, and the warp writes the block. This is
// turbo_quantize_sub_impl's algorithm with the 32 values of a sub-block spread over the
// lanes: the same scale candidates in the same order, each value's index by the same
// boundary count, and the squared error summed in the reference's exact order (lane sums
// k, k + 8, k + 16, k + 24 of values, then ((0+4)+(2+6))+((1+5)+(3+7))) through shuffles,
// so the chosen scale bytes and indices are the reference's bit for bit (scripts/
// cuda_codec_check). One thread per block running the scalar code is ~30x slower at
// decode, where a token writes only a few blocks per layer.

#define TURBO_WARP_FULL 0xFFFFFFFFu

// one sub-block: x is this lane's value; returns the scale byte, *idx this value's index
template <int nbnd, int lo, int hi>
__device__ __forceinline__ uint8_t turbo_quantize_sub_warp_cuda(float x, const signed char * cb, const float * bnd,
                                                                uint8_t * idx) {
    x = turbo_is_finite_impl(x) ? x : 0.0f;
    float amax = fabsf(x);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(TURBO_WARP_FULL, amax, o));
    }
    if (amax == 0.0f) {
        *idx = (uint8_t) ((nbnd + 1) / 2);
        return 0;
    }
    const int e0 = turbo_first_scale_impl(amax);

    float best_err = INFINITY;
    int   best_b   = -1;
    int   prev_b   = -1;
    int   best_j   = 0;
    for (int off = hi; off >= lo; --off) {
        int b = e0 + off;
        b = b < 1 ? 1 : (b > 255 ? 255 : b);
        if (b == prev_b) {
            continue;  // clamped onto the same candidate (uniform over the warp)
        }
        prev_b = b;
        const float inv = turbo_inv_scale[b];
        const float d   = turbo_scale[b];
        const float u   = x * inv;
        int j = 0;
#pragma unroll
        for (int t = 0; t < nbnd; ++t) {
            j += u > bnd[t] ? 1 : 0;
        }
        const float r  = d * (float) cb[j];
        const float e  = x - r;
        const float e2 = e * e;
        // lanes 0..7: the reference's lane sums ((e_k + e_k+8) + e_k+16) + e_k+24
        float a = e2 + __shfl_down_sync(TURBO_WARP_FULL, e2, 8);
        a = a + __shfl_down_sync(TURBO_WARP_FULL, e2, 16);
        a = a + __shfl_down_sync(TURBO_WARP_FULL, e2, 24);
        a = a + __shfl_down_sync(TURBO_WARP_FULL, a, 4);  // lanes 0..3: L_k + L_k+4
        a = a + __shfl_down_sync(TURBO_WARP_FULL, a, 2);  // lane 0: (L0+L4)+(L2+L6), lane 1: (L1+L5)+(L3+L7)
        a = a + __shfl_down_sync(TURBO_WARP_FULL, a, 1);  // lane 0: the sum
        const float err = __shfl_sync(TURBO_WARP_FULL, a, 0);
        if (best_b < 0 || err < best_err) {
            best_err = err;
            best_b   = b;
            best_j   = j;
        }
    }
    *idx = (uint8_t) best_j;
    return (uint8_t) best_b;
}

__device__ __forceinline__ void turbo4_quantize_block_warp_cuda(const float x0, const float x1, block_turbo4 * y) {
    const int lane = threadIdx.x % 32;
    uint8_t j0, j1;
    const uint8_t s0 = turbo_quantize_sub_warp_cuda<15, TURBO_SCAN_LO4, TURBO_SCAN_HI4>(x0, turbo_cb4, turbo_bnd4, &j0);
    const uint8_t s1 = turbo_quantize_sub_warp_cuda<15, TURBO_SCAN_LO4, TURBO_SCAN_HI4>(x1, turbo_cb4, turbo_bnd4, &j1);
    y->qs[lane] = (uint8_t) (j0 | (j1 << 4));
    if (lane == 0) {
        y->e[0] = s0;
        y->e[1] = s1;
    }
}

// the 2-bit low parts of indices l, l + 16, l + 32, l + 48 into qs[l] (lanes 0..15 write)
__device__ __forceinline__ void turbo_pack2_warp_cuda(const uint8_t j0, const uint8_t j1, uint8_t * qs) {
    const int lane = threadIdx.x % 32;
    const uint8_t k0 = (uint8_t) __shfl_down_sync(TURBO_WARP_FULL, (int) j0, 16);  // index lane + 16
    const uint8_t k1 = (uint8_t) __shfl_down_sync(TURBO_WARP_FULL, (int) j1, 16);  // index lane + 48
    if (lane < 16) {
        qs[lane] = (uint8_t) ((j0 & 3) | ((k0 & 3) << 2) | ((j1 & 3) << 4) | ((k1 & 3) << 6));
    }
}

__device__ __forceinline__ void turbo3_quantize_block_warp_cuda(const float x0, const float x1, block_turbo3 * y) {
    const int lane = threadIdx.x % 32;
    uint8_t j0, j1;
    const uint8_t s0 = turbo_quantize_sub_warp_cuda<7, TURBO_SCAN_LO3, TURBO_SCAN_HI3>(x0, turbo_cb3, turbo_bnd3, &j0);
    const uint8_t s1 = turbo_quantize_sub_warp_cuda<7, TURBO_SCAN_LO3, TURBO_SCAN_HI3>(x1, turbo_cb3, turbo_bnd3, &j1);
    turbo_pack2_warp_cuda(j0, j1, y->qs);
    const uint32_t h0 = __ballot_sync(TURBO_WARP_FULL, (j0 >> 2) & 1);  // bit 2 of indices 0..31
    const uint32_t h1 = __ballot_sync(TURBO_WARP_FULL, (j1 >> 2) & 1);  // and of 32..63
    if (lane < 8) {
        y->qh[lane] = (uint8_t) ((lane < 4 ? h0 : h1) >> (8 * (lane % 4)));
    }
    if (lane == 0) {
        y->e[0] = s0;
        y->e[1] = s1;
    }
}

__device__ __forceinline__ void turbo2_quantize_block_warp_cuda(const float x0, const float x1, block_turbo2 * y) {
    const int lane = threadIdx.x % 32;
    uint8_t j0, j1;
    const uint8_t s0 = turbo_quantize_sub_warp_cuda<3, TURBO_SCAN_LO2, TURBO_SCAN_HI2>(x0, turbo_cb2, turbo_bnd2, &j0);
    const uint8_t s1 = turbo_quantize_sub_warp_cuda<3, TURBO_SCAN_LO2, TURBO_SCAN_HI2>(x1, turbo_cb2, turbo_bnd2, &j1);
    turbo_pack2_warp_cuda(j0, j1, y->qs);
    if (lane == 0) {
        y->e[0] = s0;
        y->e[1] = s1;
    }
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

// --------------------------------------------------------------------------- flash attention
// The shapes of ggml-cuda's flash-attention vector kernel: four consecutive values of a block
// as codebook bytes (the integer factor of each value, for dp4a against a q8_1 Q and for
// the V accumulation), and the scale of the sub-block they are in. Value i + n of the block
// is turbo_sub_scale_cuda(b->e, i) * (int8) byte n, exactly turboN_value_impl's product.
//
// The codebook lookups are byte permutes on the codebook packed into words; the words are
// read from the constant tables at constant indices, which the compiler folds into
// immediates (no memory access per value).

__device__ __forceinline__ uint32_t turbo_cb_word_cuda(const signed char * cb, const int w) {
    return (uint32_t) (uint8_t) cb[4 * w + 0]         | ((uint32_t) (uint8_t) cb[4 * w + 1] << 8) |
           ((uint32_t) (uint8_t) cb[4 * w + 2] << 16) | ((uint32_t) (uint8_t) cb[4 * w + 3] << 24);
}

// four byte-wide indices (each < 16) -> the 16-bit permute selector with one nibble per index
__device__ __forceinline__ uint32_t turbo_selector_cuda(const uint32_t idx) {
    const uint32_t t = idx | (idx >> 4);
    return (t & 0xFFu) | ((t >> 8) & 0xFF00u);
}

// the scale of the sub-block that value i of a block is in (e: the block's scale bytes)
__device__ __forceinline__ float turbo_sub_scale_cuda(const uint8_t * e, const int i) {
    return turbo_scale[e[i / TURBO_QK_SUB]];
}

// 4 bytes at p, which is 2-byte aligned (the blocks are 34, 26 and 18 bytes long)
__device__ __forceinline__ uint32_t turbo_load4_cuda(const uint8_t * p) {
    const uint16_t * p16 = (const uint16_t *) p;
    return (uint32_t) p16[0] | ((uint32_t) p16[1] << 16);
}

// values i..i+3 (i % 4 == 0) as codebook bytes
__device__ __forceinline__ int turbo4_codes4_cuda(const block_turbo4 * b, const int i) {
    const uint32_t q   = turbo_load4_cuda(b->qs + (i % (QK_TURBO / 2)));
    const uint32_t sel = turbo_selector_cuda((q >> (4 * (i / (QK_TURBO / 2)))) & 0x0F0F0F0Fu);
    const uint32_t lo  = __byte_perm(turbo_cb_word_cuda(turbo_cb4, 0), turbo_cb_word_cuda(turbo_cb4, 1), sel & 0x7777u);
    const uint32_t hi  = __byte_perm(turbo_cb_word_cuda(turbo_cb4, 2), turbo_cb_word_cuda(turbo_cb4, 3), sel & 0x7777u);
    return (int) __byte_perm(lo, hi, 0x3210u | ((sel & 0x8888u) >> 1));
}

__device__ __forceinline__ int turbo3_codes4_cuda(const block_turbo3 * b, const int i) {
    const uint32_t q  = turbo_load4_cuda(b->qs + (i % 16));
    const uint32_t h  = ((uint32_t) b->qh[i / 8] >> (i % 8)) & 0x0Fu;
    const uint32_t hb = (h * 0x00204081u) & 0x01010101u;  // bit n of h -> bit 0 of byte n
    const uint32_t idx = ((q >> (2 * (i / 16))) & 0x03030303u) | (hb << 2);
    return (int) __byte_perm(turbo_cb_word_cuda(turbo_cb3, 0), turbo_cb_word_cuda(turbo_cb3, 1), turbo_selector_cuda(idx));
}

__device__ __forceinline__ int turbo2_codes4_cuda(const block_turbo2 * b, const int i) {
    const uint32_t q   = turbo_load4_cuda(b->qs + (i % 16));
    const uint32_t idx = (q >> (2 * (i / 16))) & 0x03030303u;
    return (int) __byte_perm(turbo_cb_word_cuda(turbo_cb2, 0), 0u, turbo_selector_cuda(idx));
}
