// The Metal-side helpers of kernels/turbo-metal.h, compiled by the host C++ compiler
// (tests/kernels/metal_compat.hpp stands in for Metal), against the CPU reference codec:
// quantize_turboN must produce the reference's bytes, dequantize_turboN (16 values) and
// dequantize_turboN_t4 (4 values) the reference's floats, on random and edge-case blocks.
#include "metal_compat.hpp"
#include "turbo-metal.h"

#include <cstdio>
#include <cstring>
#include <vector>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand() {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float) ((rng >> 11) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static void fill(std::vector<float> & x, int kind) {
    for (size_t i = 0; i < x.size(); ++i) {
        switch (kind) {
            case 0: x[i] = frand() * 3.0f; break;
            case 1: x[i] = frand() * 1e-6f; break;
            case 2: x[i] = frand() * 4e4f; break;
            case 3: x[i] = 0.0f; break;
            case 4: x[i] = (i % 64 == 5) ? 7.0f : 0.0f; break;
            case 5: x[i] = frand(); if (i % 17 == 3) x[i] = NAN; if (i % 29 == 1) x[i] = INFINITY; break;
            default: x[i] = (i % 2) ? -1.5f : 1.5f; break;
        }
    }
}

template <typename block, typename Q, typename QR, typename D16, typename D4, typename DR>
static int check(const char * name, Q quantize_metal, QR quantize_ref, D16 deq16, D4 deq4, DR deq_ref) {
    int failures = 0;
    const int nb = 256;
    for (int kind = 0; kind < 7; ++kind) {
        std::vector<float> x(nb * QK_TURBO);
        fill(x, kind);
        std::vector<block> a(nb), b(nb);
        quantize_ref(x.data(), a.data(), (int64_t) x.size());
        for (int ib = 0; ib < nb; ++ib) {
            quantize_metal(x.data() + ib * QK_TURBO, b[ib]);
        }
        if (memcmp(a.data(), b.data(), sizeof(block) * nb) != 0) {
            fprintf(stderr, "%s kind %d: Metal quantize differs from the reference\n", name, kind);
            failures++;
        }
        std::vector<float> y(x.size());
        deq_ref(a.data(), y.data(), (int64_t) y.size());
        for (int ib = 0; ib < nb; ++ib) {
            for (short il = 0; il < 4; ++il) {
                float4x4 r;
                deq16(&a[ib], il, r);
                for (int i = 0; i < 16; ++i) {
                    if (memcmp(&r[i / 4][i % 4], &y[ib * QK_TURBO + 16 * il + i], sizeof(float)) != 0) {
                        fprintf(stderr, "%s kind %d: dequantize (16) differs at block %d value %d\n", name, kind, ib, 16 * il + i);
                        return failures + 1;
                    }
                }
            }
            for (short il = 0; il < 16; ++il) {
                float4 r;
                deq4(&a[ib], il, r);
                for (int i = 0; i < 4; ++i) {
                    if (memcmp(&r[i], &y[ib * QK_TURBO + 4 * il + i], sizeof(float)) != 0) {
                        fprintf(stderr, "%s kind %d: dequantize (4) differs at block %d value %d\n", name, kind, ib, 4 * il + i);
                        return failures + 1;
                    }
                }
            }
        }
    }
    return failures;
}

int main() {
    int failures = 0;
    failures += check<block_turbo4>("turbo4",
        [](const float * s, block_turbo4 & d) { quantize_turbo4(s, d); }, turbo4_quantize_row_ref,
        dequantize_turbo4<float4x4>, dequantize_turbo4_t4<float4>, turbo4_dequantize_row_ref);
    failures += check<block_turbo3>("turbo3",
        [](const float * s, block_turbo3 & d) { quantize_turbo3(s, d); }, turbo3_quantize_row_ref,
        dequantize_turbo3<float4x4>, dequantize_turbo3_t4<float4>, turbo3_dequantize_row_ref);
    failures += check<block_turbo2>("turbo2",
        [](const float * s, block_turbo2 & d) { quantize_turbo2(s, d); }, turbo2_quantize_row_ref,
        dequantize_turbo2<float4x4>, dequantize_turbo2_t4<float4>, turbo2_dequantize_row_ref);
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
