// turbo-ref.c: scalar reference of the TurboQuant KV codec (see turbo.h, README.md).
#include "turbo.h"

#include <math.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
// the scale rule

float turbo_scale_of(uint8_t b) {
    return turbo_scale[b];
}

int turbo_first_scale(float amax) {
    // turbo_thr is increasing on [1, 255]: binary search for the first entry >= amax
    int lo = 1, hi = 255;
    if (!(turbo_thr[255] >= amax)) {
        return 255;  // saturate: larger than any f16 value
    }
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

// Index of the codeword nearest to u = x / d(b): the number of decision boundaries below u.
static inline int turbo_nearest(float u, const float * bnd, int nbnd) {
    int j = 0;
    for (int t = 0; t < nbnd; ++t) {
        j += u > bnd[t];
    }
    return j;
}

// Quantize one sub-block of TURBO_QK_SUB (sanitized) values: choose the scale byte on the
// window [e0 + lo, e0 + hi] with the smallest squared error, write the indices.
// The error of a candidate is summed in 8 interleaved partial sums, reduced in a fixed
// order, so that vector implementations can reproduce the same choice.
static uint8_t turbo_quantize_sub(const float * x, const signed char * cb, const float * bnd, int nbnd,
                                  int lo, int hi, uint8_t * idx) {
    float amax = 0.0f;
    for (int i = 0; i < TURBO_QK_SUB; ++i) {
        const float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    if (amax == 0.0f) {
        memset(idx, (nbnd + 1) / 2, TURBO_QK_SUB);
        return 0;
    }
    const int e0 = turbo_first_scale(amax);

    float best_err = INFINITY;
    int   best_b   = -1;
    uint8_t cand[TURBO_QK_SUB];
    int prev_b = -1;
    for (int off = hi; off >= lo; --off) {
        int b = e0 + off;
        b = b < 1 ? 1 : (b > 255 ? 255 : b);
        if (b == prev_b) {
            continue;  // clamped onto the same candidate
        }
        prev_b = b;
        const float inv = turbo_inv_scale[b];
        const float d   = turbo_scale[b];
        float lane[8] = { 0 };
        for (int i = 0; i < TURBO_QK_SUB; ++i) {
            const int j = turbo_nearest(x[i] * inv, bnd, nbnd);
            cand[i] = (uint8_t) j;
            const float r = d * (float) cb[j];
            const float e = x[i] - r;
            const float e2 = e * e;
            lane[i & 7] = lane[i & 7] + e2;
        }
        const float err = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
        if (best_b < 0 || err < best_err) {
            best_err = err;
            best_b   = b;
            memcpy(idx, cand, TURBO_QK_SUB);
        }
    }
    return (uint8_t) best_b;
}

static inline void turbo_sanitize(const float * x, float * out, int n) {
    for (int i = 0; i < n; ++i) {
        out[i] = isfinite(x[i]) ? x[i] : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------
// turbo4

void turbo4_quantize_row_ref(const float * x, block_turbo4 * y, int64_t k) {
    const int64_t nb = k / QK_TURBO;
    for (int64_t ib = 0; ib < nb; ++ib) {
        float xs[QK_TURBO];
        uint8_t idx[QK_TURBO];
        turbo_sanitize(x + ib * QK_TURBO, xs, QK_TURBO);
        for (int s = 0; s < QK_TURBO / TURBO_QK_SUB; ++s) {
            y[ib].e[s] = turbo_quantize_sub(xs + s * TURBO_QK_SUB, turbo_cb4, turbo_bnd4, 15,
                                            TURBO_SCAN_LO4, TURBO_SCAN_HI4, idx + s * TURBO_QK_SUB);
        }
        for (int j = 0; j < QK_TURBO / 2; ++j) {
            y[ib].qs[j] = (uint8_t) (idx[j] | (idx[j + QK_TURBO / 2] << 4));
        }
    }
}

void turbo4_dequantize_row_ref(const block_turbo4 * x, float * y, int64_t k) {
    const int64_t nb = k / QK_TURBO;
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float d0 = turbo_scale[x[ib].e[0]];
        const float d1 = turbo_scale[x[ib].e[1]];
        for (int j = 0; j < QK_TURBO / 2; ++j) {
            y[ib * QK_TURBO + j]                = d0 * (float) turbo_cb4[x[ib].qs[j] & 0x0F];
            y[ib * QK_TURBO + j + QK_TURBO / 2] = d1 * (float) turbo_cb4[x[ib].qs[j] >> 4];
        }
    }
}

// ---------------------------------------------------------------------------------------
// turbo3

void turbo3_quantize_row_ref(const float * x, block_turbo3 * y, int64_t k) {
    const int64_t nb = k / QK_TURBO;
    for (int64_t ib = 0; ib < nb; ++ib) {
        float xs[QK_TURBO];
        uint8_t idx[QK_TURBO];
        turbo_sanitize(x + ib * QK_TURBO, xs, QK_TURBO);
        for (int s = 0; s < QK_TURBO / TURBO_QK_SUB; ++s) {
            y[ib].e[s] = turbo_quantize_sub(xs + s * TURBO_QK_SUB, turbo_cb3, turbo_bnd3, 7,
                                            TURBO_SCAN_LO3, TURBO_SCAN_HI3, idx + s * TURBO_QK_SUB);
        }
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        memset(y[ib].qh, 0, sizeof(y[ib].qh));
        for (int i = 0; i < QK_TURBO; ++i) {
            y[ib].qs[i % 16] |= (uint8_t) ((idx[i] & 3) << (2 * (i / 16)));
            y[ib].qh[i / 8]  |= (uint8_t) (((idx[i] >> 2) & 1) << (i % 8));
        }
    }
}

void turbo3_dequantize_row_ref(const block_turbo3 * x, float * y, int64_t k) {
    const int64_t nb = k / QK_TURBO;
    for (int64_t ib = 0; ib < nb; ++ib) {
        for (int i = 0; i < QK_TURBO; ++i) {
            const int j = ((x[ib].qs[i % 16] >> (2 * (i / 16))) & 3) | (((x[ib].qh[i / 8] >> (i % 8)) & 1) << 2);
            y[ib * QK_TURBO + i] = turbo_scale[x[ib].e[i / TURBO_QK_SUB]] * (float) turbo_cb3[j];
        }
    }
}

// ---------------------------------------------------------------------------------------
// turbo2

void turbo2_quantize_row_ref(const float * x, block_turbo2 * y, int64_t k) {
    const int64_t nb = k / QK_TURBO;
    for (int64_t ib = 0; ib < nb; ++ib) {
        float xs[QK_TURBO];
        uint8_t idx[QK_TURBO];
        turbo_sanitize(x + ib * QK_TURBO, xs, QK_TURBO);
        for (int s = 0; s < QK_TURBO / TURBO_QK_SUB; ++s) {
            y[ib].e[s] = turbo_quantize_sub(xs + s * TURBO_QK_SUB, turbo_cb2, turbo_bnd2, 3,
                                            TURBO_SCAN_LO2, TURBO_SCAN_HI2, idx + s * TURBO_QK_SUB);
        }
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        for (int i = 0; i < QK_TURBO; ++i) {
            y[ib].qs[i % 16] |= (uint8_t) ((idx[i] & 3) << (2 * (i / 16)));
        }
    }
}

void turbo2_dequantize_row_ref(const block_turbo2 * x, float * y, int64_t k) {
    const int64_t nb = k / QK_TURBO;
    for (int64_t ib = 0; ib < nb; ++ib) {
        for (int i = 0; i < QK_TURBO; ++i) {
            const int j = (x[ib].qs[i % 16] >> (2 * (i / 16))) & 3;
            y[ib * QK_TURBO + i] = turbo_scale[x[ib].e[i / TURBO_QK_SUB]] * (float) turbo_cb2[j];
        }
    }
}

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
