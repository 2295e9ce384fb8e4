// turbo-cpu.h: CPU kernels of the TurboQuant KV codec (AVX2 and NEON, scalar fallback).
//
// Signatures follow ggml's CPU type traits (from_float, to_float, vec_dot), so the patch
// series registers these functions directly. The dot products take K blocks against Q
// quantized to q8_0 (the block layout below is the same as ggml's block_q8_0).
#pragma once

#include "turbo.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint16_t d;       // fp16 scale
    int8_t   qs[32];
} turbo_block_q8_0;

// from_float: same bytes as the scalar reference (bit-exact; tested)
void turbo4_quantize_row(const float * x, void * y, int64_t k);
void turbo3_quantize_row(const float * x, void * y, int64_t k);
void turbo2_quantize_row(const float * x, void * y, int64_t k);

// to_float: same floats as the scalar reference (bit-exact; tested)
void turbo4_dequantize_row(const void * x, float * y, int64_t k);
void turbo3_dequantize_row(const void * x, float * y, int64_t k);
void turbo2_dequantize_row(const void * x, float * y, int64_t k);

// vec_dot: s[0] = sum_i dequant(x)_i * dequant(y)_i over n values (n % 64 == 0), y in q8_0
void turbo4_vec_dot_q8_0(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void turbo3_vec_dot_q8_0(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void turbo2_vec_dot_q8_0(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

#ifdef __cplusplus
}
#endif
