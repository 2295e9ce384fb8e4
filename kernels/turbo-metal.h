// turbo-metal.h: the Metal-side quantize/dequantize helpers of the TurboQuant types, in the
// shapes ggml's Metal kernel templates expect (see ggml-metal/kernels/dequantize.h and
// quantize.h). All arithmetic is the shared code of turbo-impl.h; this file only adapts it.
//
// Included (as "ggml-turbo/turbo-metal.h", after dequantize.h) only by the Metal sources that
// use the turbo types: quantize.metal, fa_aux.metal and fa_vec_turbo.metal. Linkage: the
// helpers are templates, or `inline` where a kernel template takes them as a template
// argument (a kernel instantiated with an internal-linkage function would have internal
// linkage itself); everything else of the codec is `static inline` / `static constant`.
//
// Compiled by the Metal compiler and, in the tests, by the host C++ compiler with a small
// compatibility header for the Metal vector types and address spaces, so the helpers are
// checked bit for bit against the CPU reference here.
#pragma once

#include "ggml-turbo/turbo-impl.h"

// 16 consecutive values (16*il .. 16*il + 15) of a block, il in [0, 4)
template <typename block_t, float (*value)(device const block_t *, int), typename type4x4>
void turbo_dequantize_16(device const block_t * xb, short il, thread type4x4 & reg) {
    float4x4 reg_f;
    for (short i = 0; i < 16; ++i) {
        reg_f[i / 4][i % 4] = value(xb, 16 * il + i);
    }
    reg = (type4x4) reg_f;
}

// 4 consecutive values (4*il .. 4*il + 3) of a block, il in [0, 16)
template <typename block_t, float (*value)(device const block_t *, int), typename type4>
void turbo_dequantize_4(device const block_t * xb, short il, thread type4 & reg) {
    float4 reg_f;
    for (short i = 0; i < 4; ++i) {
        reg_f[i] = value(xb, 4 * il + i);
    }
    reg = (type4) reg_f;
}

// QK_TURBO floats into one block (one thread per block, like the other quantize_* helpers
// of ggml's Metal backend); exact IEEE arithmetic, no fast math
template <typename block_t, void (*quantize_block)(thread float *, thread block_t *)>
void turbo_quantize(device const float * src, device block_t & dst) {
    TURBO_EXACT_MATH
    float x[QK_TURBO];
    for (short i = 0; i < QK_TURBO; ++i) {
        x[i] = src[i];
    }
    block_t tmp;
    quantize_block(x, &tmp);
    // byte copy to device memory (the blocks are byte arrays; no struct assignment across
    // address spaces, which the Metal type check cannot model)
    thread const uint8_t * s = (thread const uint8_t *) &tmp;
    device uint8_t * d = (device uint8_t *) &dst;
    for (short i = 0; i < (short) sizeof(block_t); ++i) {
        d[i] = s[i];
    }
}

// the names ggml's kernel templates are instantiated with
template <typename type4x4>
void dequantize_turbo4(device const block_turbo4 * xb, short il, thread type4x4 & reg) {
    turbo_dequantize_16<block_turbo4, turbo4_value_impl>(xb, il, reg);
}
template <typename type4x4>
void dequantize_turbo3(device const block_turbo3 * xb, short il, thread type4x4 & reg) {
    turbo_dequantize_16<block_turbo3, turbo3_value_impl>(xb, il, reg);
}
template <typename type4x4>
void dequantize_turbo2(device const block_turbo2 * xb, short il, thread type4x4 & reg) {
    turbo_dequantize_16<block_turbo2, turbo2_value_impl>(xb, il, reg);
}

template <typename type4>
void dequantize_turbo4_t4(device const block_turbo4 * xb, short il, thread type4 & reg) {
    turbo_dequantize_4<block_turbo4, turbo4_value_impl>(xb, il, reg);
}
template <typename type4>
void dequantize_turbo3_t4(device const block_turbo3 * xb, short il, thread type4 & reg) {
    turbo_dequantize_4<block_turbo3, turbo3_value_impl>(xb, il, reg);
}
template <typename type4>
void dequantize_turbo2_t4(device const block_turbo2 * xb, short il, thread type4 & reg) {
    turbo_dequantize_4<block_turbo2, turbo2_value_impl>(xb, il, reg);
}

inline void quantize_turbo4(device const float * src, device block_turbo4 & dst) {
    turbo_quantize<block_turbo4, turbo4_quantize_block_impl>(src, dst);
}
inline void quantize_turbo3(device const float * src, device block_turbo3 & dst) {
    turbo_quantize<block_turbo3, turbo3_quantize_block_impl>(src, dst);
}
inline void quantize_turbo2(device const float * src, device block_turbo2 & dst) {
    turbo_quantize<block_turbo2, turbo2_quantize_block_impl>(src, dst);
}
