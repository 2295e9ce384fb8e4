// turbo-impl.h: the per-block arithmetic of the TurboQuant codec, written once for every
// backend. The scalar reference (turbo-ref.c) and the Metal kernels (turbo-metal.h) both
// compile this same code; the CPU SIMD kernels reproduce it bit for bit (tested).
//
// Plain C99 that is also valid Metal Shading Language: no library calls beyond fabs, no
// memcpy on Metal, address spaces through TURBO_DEV (where blocks are read from) and
// TURBO_THR (thread-local work arrays).
//
// Metal: every function here is `static inline` (internal linkage: the header is compiled
// into several Metal libraries and .air files); finiteness is a bit test (fast math may fold
// isfinite() to true); the exact-math pragma exists from MSL 3.2 on and is only used there.
// The library that quantizes (quantize.metal) is compiled with fast math off by the host
// (kernels/README.md, "Metal").
//
// CUDA (nvcc, __CUDACC__): the functions are __device__ code and the tables of
// turbo-codebooks.h live in device memory (TURBO_CONST is set here, before the first
// include of the codebooks); the quantizer must be compiled with --fmad=false, like the C
// files with -ffp-contract=off, so that its squared errors round as the reference's do
// (kernels/README.md, "CUDA").
#pragma once

#if defined(__CUDACC__)
#  if defined(TURBO_QK_SUB) && !defined(TURBO_CONST_DEVICE)
#    error "turbo-impl.h: include it before any other codec header in CUDA code (the tables must be __device__)"
#  endif
#  ifndef TURBO_CONST
#    define TURBO_CONST static __device__ const
#    define TURBO_CONST_DEVICE 1
#  endif
#endif

#include "ggml-turbo/turbo.h"

#if defined(__METAL_VERSION__) && __METAL_VERSION__ >= 320
#  define TURBO_EXACT_MATH _Pragma("METAL fp math_mode(safe)")
#else
#  define TURBO_EXACT_MATH
#endif

#if defined(__CUDACC__)
#  define TURBO_INLINE static __device__ __forceinline__
#else
#  define TURBO_INLINE static inline
#endif

#if defined(__METAL_VERSION__)
#  include <metal_stdlib>
#  define TURBO_DEV    device
#  define TURBO_THR    thread
#  define TURBO_CST    constant
#  define TURBO_FABS(x) metal::fabs(x)
#  define TURBO_FLOAT_BITS(x) metal::as_type<uint>(x)
#elif defined(__CUDACC__)
#  include <math.h>
#  define TURBO_DEV
#  define TURBO_THR
#  define TURBO_CST
#  define TURBO_FABS(x) fabsf(x)
#  define TURBO_FLOAT_BITS(x) __float_as_uint(x)
#else
#  include <math.h>
#  include <string.h>
#  define TURBO_DEV
#  define TURBO_THR
#  define TURBO_CST
#  define TURBO_FABS(x) fabsf(x)
static inline uint32_t turbo_float_bits_impl(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof(u));
    return u;
}
#  define TURBO_FLOAT_BITS(x) turbo_float_bits_impl(x)
#endif

// finite <=> the exponent bits are not all ones (an integer test that no float
// optimization can remove)
TURBO_INLINE int turbo_is_finite_impl(float x) {
    return (TURBO_FLOAT_BITS(x) & 0x7F800000u) != 0x7F800000u;
}

// smallest b in [1, 255] with d(b) * 127 >= amax (turbo_thr is increasing); 255 if none
TURBO_INLINE int turbo_first_scale_impl(float amax) {
    if (!(turbo_thr[255] >= amax)) {
        return 255;
    }
    int lo = 1;
    int hi = 255;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (turbo_thr[mid] >= amax) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return lo;
}

// Quantize one sub-block of TURBO_QK_SUB values (already sanitized: finite): choose the scale
// byte on the window [e0 + lo, e0 + hi] with the smallest squared error, write the indices.
// The error is summed in 8 interleaved partial sums reduced in a fixed order.
TURBO_INLINE uint8_t turbo_quantize_sub_impl(TURBO_THR const float * x, TURBO_CST const signed char * cb,
                                             TURBO_CST const float * bnd, int nbnd, int lo, int hi,
                                             TURBO_THR uint8_t * idx) {
    TURBO_EXACT_MATH
    float amax = 0.0f;
    for (int i = 0; i < TURBO_QK_SUB; ++i) {
        const float a = TURBO_FABS(x[i]);
        amax = a > amax ? a : amax;
    }
    if (amax == 0.0f) {
        for (int i = 0; i < TURBO_QK_SUB; ++i) {
            idx[i] = (uint8_t) ((nbnd + 1) / 2);
        }
        return 0;
    }
    const int e0 = turbo_first_scale_impl(amax);

    float best_err = INFINITY;
    int   best_b   = -1;
    int   prev_b   = -1;
    uint8_t cand[TURBO_QK_SUB];
    for (int off = hi; off >= lo; --off) {
        int b = e0 + off;
        b = b < 1 ? 1 : (b > 255 ? 255 : b);
        if (b == prev_b) {
            continue;  // clamped onto the same candidate
        }
        prev_b = b;
        const float inv = turbo_inv_scale[b];
        const float d   = turbo_scale[b];
        float lane[8] = { 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f };
        for (int i = 0; i < TURBO_QK_SUB; ++i) {
            const float u = x[i] * inv;
            int j = 0;
            for (int t = 0; t < nbnd; ++t) {
                j += u > bnd[t] ? 1 : 0;
            }
            cand[i] = (uint8_t) j;
            const float r  = d * (float) cb[j];
            const float e  = x[i] - r;
            const float e2 = e * e;
            lane[i & 7] = lane[i & 7] + e2;
        }
        const float err = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
        if (best_b < 0 || err < best_err) {
            best_err = err;
            best_b   = b;
            for (int i = 0; i < TURBO_QK_SUB; ++i) {
                idx[i] = cand[i];
            }
        }
    }
    return (uint8_t) best_b;
}

// NaN and +-Inf are quantized as 0
TURBO_INLINE void turbo_sanitize_impl(TURBO_THR float * x, int n) {
    for (int i = 0; i < n; ++i) {
        x[i] = turbo_is_finite_impl(x[i]) ? x[i] : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------
// whole blocks: x[QK_TURBO] (thread-local, modified: sanitized) -> *y

TURBO_INLINE void turbo4_quantize_block_impl(TURBO_THR float * x, TURBO_THR block_turbo4 * y) {
    uint8_t idx[QK_TURBO];
    turbo_sanitize_impl(x, QK_TURBO);
    for (int s = 0; s < QK_TURBO / TURBO_QK_SUB; ++s) {
        y->e[s] = turbo_quantize_sub_impl(x + s * TURBO_QK_SUB, turbo_cb4, turbo_bnd4, 15,
                                          TURBO_SCAN_LO4, TURBO_SCAN_HI4, idx + s * TURBO_QK_SUB);
    }
    for (int j = 0; j < QK_TURBO / 2; ++j) {
        y->qs[j] = (uint8_t) (idx[j] | (idx[j + QK_TURBO / 2] << 4));
    }
}

TURBO_INLINE void turbo3_quantize_block_impl(TURBO_THR float * x, TURBO_THR block_turbo3 * y) {
    uint8_t idx[QK_TURBO];
    turbo_sanitize_impl(x, QK_TURBO);
    for (int s = 0; s < QK_TURBO / TURBO_QK_SUB; ++s) {
        y->e[s] = turbo_quantize_sub_impl(x + s * TURBO_QK_SUB, turbo_cb3, turbo_bnd3, 7,
                                          TURBO_SCAN_LO3, TURBO_SCAN_HI3, idx + s * TURBO_QK_SUB);
    }
    for (int j = 0; j < QK_TURBO / 4; ++j) {
        y->qs[j] = 0;
    }
    for (int j = 0; j < QK_TURBO / 8; ++j) {
        y->qh[j] = 0;
    }
    for (int i = 0; i < QK_TURBO; ++i) {
        y->qs[i % 16] |= (uint8_t) ((idx[i] & 3) << (2 * (i / 16)));
        y->qh[i / 8]  |= (uint8_t) (((idx[i] >> 2) & 1) << (i % 8));
    }
}

TURBO_INLINE void turbo2_quantize_block_impl(TURBO_THR float * x, TURBO_THR block_turbo2 * y) {
    uint8_t idx[QK_TURBO];
    turbo_sanitize_impl(x, QK_TURBO);
    for (int s = 0; s < QK_TURBO / TURBO_QK_SUB; ++s) {
        y->e[s] = turbo_quantize_sub_impl(x + s * TURBO_QK_SUB, turbo_cb2, turbo_bnd2, 3,
                                          TURBO_SCAN_LO2, TURBO_SCAN_HI2, idx + s * TURBO_QK_SUB);
    }
    for (int j = 0; j < QK_TURBO / 4; ++j) {
        y->qs[j] = 0;
    }
    for (int i = 0; i < QK_TURBO; ++i) {
        y->qs[i % 16] |= (uint8_t) ((idx[i] & 3) << (2 * (i / 16)));
    }
}

// ---------------------------------------------------------------------------------------
// value i (0..63) of a block: d(e[i / 32]) * codebook[index_i] (one float multiply)

TURBO_INLINE float turbo4_value_impl(TURBO_DEV const block_turbo4 * b, int i) {
    const int j = i < 32 ? (b->qs[i] & 0x0F) : (b->qs[i - 32] >> 4);
    return turbo_scale[b->e[i / TURBO_QK_SUB]] * (float) turbo_cb4[j];
}

TURBO_INLINE float turbo3_value_impl(TURBO_DEV const block_turbo3 * b, int i) {
    const int j = ((b->qs[i % 16] >> (2 * (i / 16))) & 3) | (((b->qh[i / 8] >> (i % 8)) & 1) << 2);
    return turbo_scale[b->e[i / TURBO_QK_SUB]] * (float) turbo_cb3[j];
}

TURBO_INLINE float turbo2_value_impl(TURBO_DEV const block_turbo2 * b, int i) {
    const int j = (b->qs[i % 16] >> (2 * (i / 16))) & 3;
    return turbo_scale[b->e[i / TURBO_QK_SUB]] * (float) turbo_cb2[j];
}
