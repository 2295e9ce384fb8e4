// turbo-metal.h: the Metal-side quantize/dequantize helpers of the TurboQuant types, in the
// shapes ggml's Metal kernel templates expect (see ggml-metal/kernels/dequantize.h and
// quantize.h). All arithmetic is the shared code of turbo-impl.h; this file only adapts it.
//
// Compiled by the Metal compiler (through the embedded library) and, in the tests, by the
// host C++ compiler with a small compatibility header for the Metal vector types and
// address spaces, so the helpers are checked bit for bit against the CPU reference here.
#pragma once

#include "turbo-impl.h"

// 16 consecutive values (16*il .. 16*il + 15) of a block, il in [0, 4)
template <typename type4x4>
void dequantize_turbo4(device const block_turbo4 * xb, short il, thread type4x4 & reg) {
    float4x4 reg_f;
    for (short i = 0; i < 16; ++i) {
        reg_f[i / 4][i % 4] = turbo4_value_impl(xb, 16 * il + i);
    }
    reg = (type4x4) reg_f;
}

template <typename type4x4>
void dequantize_turbo3(device const block_turbo3 * xb, short il, thread type4x4 & reg) {
    float4x4 reg_f;
    for (short i = 0; i < 16; ++i) {
        reg_f[i / 4][i % 4] = turbo3_value_impl(xb, 16 * il + i);
    }
    reg = (type4x4) reg_f;
}

template <typename type4x4>
void dequantize_turbo2(device const block_turbo2 * xb, short il, thread type4x4 & reg) {
    float4x4 reg_f;
    for (short i = 0; i < 16; ++i) {
        reg_f[i / 4][i % 4] = turbo2_value_impl(xb, 16 * il + i);
    }
    reg = (type4x4) reg_f;
}

// 4 consecutive values (4*il .. 4*il + 3) of a block, il in [0, 16)
template <typename type4>
void dequantize_turbo4_t4(device const block_turbo4 * xb, short il, thread type4 & reg) {
    float4 reg_f;
    for (short i = 0; i < 4; ++i) {
        reg_f[i] = turbo4_value_impl(xb, 4 * il + i);
    }
    reg = (type4) reg_f;
}

template <typename type4>
void dequantize_turbo3_t4(device const block_turbo3 * xb, short il, thread type4 & reg) {
    float4 reg_f;
    for (short i = 0; i < 4; ++i) {
        reg_f[i] = turbo3_value_impl(xb, 4 * il + i);
    }
    reg = (type4) reg_f;
}

template <typename type4>
void dequantize_turbo2_t4(device const block_turbo2 * xb, short il, thread type4 & reg) {
    float4 reg_f;
    for (short i = 0; i < 4; ++i) {
        reg_f[i] = turbo2_value_impl(xb, 4 * il + i);
    }
    reg = (type4) reg_f;
}

// quantize QK_TURBO floats into one block (one thread per block, like the other
// quantize_* helpers of ggml's Metal backend); exact IEEE arithmetic, no fast math
void quantize_turbo4(device const float * src, device block_turbo4 & dst) {
    TURBO_EXACT_MATH
    float x[QK_TURBO];
    for (short i = 0; i < QK_TURBO; ++i) {
        x[i] = src[i];
    }
    block_turbo4 tmp;
    turbo4_quantize_block_impl(x, &tmp);
    dst = tmp;
}

void quantize_turbo3(device const float * src, device block_turbo3 & dst) {
    TURBO_EXACT_MATH
    float x[QK_TURBO];
    for (short i = 0; i < QK_TURBO; ++i) {
        x[i] = src[i];
    }
    block_turbo3 tmp;
    turbo3_quantize_block_impl(x, &tmp);
    dst = tmp;
}

void quantize_turbo2(device const float * src, device block_turbo2 & dst) {
    TURBO_EXACT_MATH
    float x[QK_TURBO];
    for (short i = 0; i < QK_TURBO; ++i) {
        x[i] = src[i];
    }
    block_turbo2 tmp;
    turbo2_quantize_block_impl(x, &tmp);
    dst = tmp;
}
