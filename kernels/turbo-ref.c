// turbo-ref.c: scalar reference of the TurboQuant KV codec (see turbo.h, README.md).
#include "turbo-impl.h"

#include <string.h>

// The per-block arithmetic is in turbo-impl.h, shared with the Metal kernels; this file
// loops it over rows.

float turbo_scale_of(uint8_t b) {
    return turbo_scale[b];
}

int turbo_first_scale(float amax) {
    return turbo_first_scale_impl(amax);
}

#define TURBO_DEF_REF(N)                                                                          \
    void turbo##N##_quantize_row_ref(const float * x, block_turbo##N * y, int64_t k) {            \
        for (int64_t ib = 0; ib < k / QK_TURBO; ++ib) {                                           \
            float xs[QK_TURBO];                                                                   \
            memcpy(xs, x + ib * QK_TURBO, sizeof(xs));                                            \
            turbo##N##_quantize_block_impl(xs, y + ib);                                           \
        }                                                                                         \
    }                                                                                             \
    void turbo##N##_dequantize_row_ref(const block_turbo##N * x, float * y, int64_t k) {          \
        for (int64_t ib = 0; ib < k / QK_TURBO; ++ib) {                                           \
            for (int i = 0; i < QK_TURBO; ++i) {                                                  \
                y[ib * QK_TURBO + i] = turbo##N##_value_impl(x + ib, i);                          \
            }                                                                                     \
        }                                                                                         \
    }

TURBO_DEF_REF(4)
TURBO_DEF_REF(3)
TURBO_DEF_REF(2)

// dot product through the reference dequantizer, summed in double precision (the check for
// the backends' integer dot products)
#define TURBO_DEF_DOT_REF(N)                                                                      \
    void turbo##N##_vec_dot_f32_ref(int n, float * s, size_t bs, const void * vx, size_t bx,       \
                                    const void * vy, size_t by, int nrc) {                        \
        (void) bs; (void) bx; (void) by; (void) nrc;                                              \
        const block_turbo##N * x = (const block_turbo##N *) vx;                                   \
        const float * y = (const float *) vy;                                                     \
        double sum = 0.0;                                                                         \
        for (int ib = 0; ib < n / QK_TURBO; ++ib) {                                               \
            for (int i = 0; i < QK_TURBO; ++i) {                                                  \
                sum += (double) turbo##N##_value_impl(x + ib, i) * (double) y[ib * QK_TURBO + i]; \
            }                                                                                     \
        }                                                                                         \
        *s = (float) sum;                                                                         \
    }

TURBO_DEF_DOT_REF(4)
TURBO_DEF_DOT_REF(3)
TURBO_DEF_DOT_REF(2)

// ---------------------------------------------------------------------------------------
// rotation signs

static uint64_t turbo_splitmix64(uint64_t * state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void turbo_rot_signs(float * dst, int64_t n) {
    uint64_t state = TURBO_ROT_SEED;
    uint64_t word  = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (i % 64 == 0) {
            word = turbo_splitmix64(&state);
        }
        dst[i] = ((word >> (i % 64)) & 1) ? -1.0f : 1.0f;
    }
}
