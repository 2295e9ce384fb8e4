// turbo-cpu.c: CPU kernels of the TurboQuant KV codec. See turbo-cpu.h.
//
// Must be compiled with floating-point contraction off (-ffp-contract=off): the quantizer
// reproduces the scalar reference's choice of scale bit for bit, which needs the same
// rounding of every multiply and add.
#include "turbo-cpu.h"

#include <math.h>
#include <string.h>

#if defined(__AVX2__)
#  include <immintrin.h>
#  define TURBO_AVX2 1
#elif defined(__ARM_NEON) && defined(__aarch64__)
#  include <arm_neon.h>
#  define TURBO_NEON 1
#endif

static inline float turbo_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    const uint32_t exp  = (h >> 10) & 0x1Fu;
    const uint32_t mant = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        // zero or subnormal: mant * 2^-24, exact in float
        const float v = (float) mant * 5.9604644775390625e-08f;
        return sign ? -v : v;
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

#if defined(TURBO_AVX2)

// ---------------------------------------------------------------------------------------
// AVX2

static inline float turbo_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// int8 x int8 -> 8 x int32 partial sums
static inline __m256i turbo_dot_i8(__m256i a, __m256i b) {
    const __m256i ua = _mm256_sign_epi8(a, a);
    const __m256i sb = _mm256_sign_epi8(b, a);
    const __m256i p16 = _mm256_maddubs_epi16(ua, sb);
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// byte i = 0xFF where bit i of m is set
static inline __m256i turbo_bits_to_bytes(uint32_t m) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long) 0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int) m), spread);
    v = _mm256_and_si256(v, bit);
    return _mm256_cmpeq_epi8(v, bit);
}

static inline __m256i turbo_table(const signed char * cb, int k) {
    int8_t t[16];
    for (int i = 0; i < 16; ++i) {
        t[i] = cb[i % k];
    }
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) t));
}

// the 64 codebook values (int8) of a block, as two 32-byte vectors (values 0..31, 32..63)
static inline void turbo4_values(const block_turbo4 * b, __m256i tab, __m256i * v0, __m256i * v1) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i q  = _mm256_loadu_si256((const __m256i *) b->qs);
    *v0 = _mm256_shuffle_epi8(tab, _mm256_and_si256(q, m4));
    *v1 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
}

static inline void turbo2_indices(const uint8_t * qs, __m256i * i0, __m256i * i1) {
    const __m256i m2 = _mm256_set1_epi8(3);
    const __m128i q  = _mm_loadu_si128((const __m128i *) qs);
    *i0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 2), q), m2);
    *i1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 6), _mm_srli_epi16(q, 4)), m2);
}

static inline void turbo3_values(const block_turbo3 * b, __m256i tab, __m256i * v0, __m256i * v1) {
    __m256i i0, i1;
    turbo2_indices(b->qs, &i0, &i1);
    uint32_t h0, h1;
    memcpy(&h0, b->qh, 4);
    memcpy(&h1, b->qh + 4, 4);
    const __m256i four = _mm256_set1_epi8(4);
    i0 = _mm256_or_si256(i0, _mm256_and_si256(turbo_bits_to_bytes(h0), four));
    i1 = _mm256_or_si256(i1, _mm256_and_si256(turbo_bits_to_bytes(h1), four));
    *v0 = _mm256_shuffle_epi8(tab, i0);
    *v1 = _mm256_shuffle_epi8(tab, i1);
}

static inline void turbo2_values(const block_turbo2 * b, __m256i tab, __m256i * v0, __m256i * v1) {
    __m256i i0, i1;
    turbo2_indices(b->qs, &i0, &i1);
    *v0 = _mm256_shuffle_epi8(tab, i0);
    *v1 = _mm256_shuffle_epi8(tab, i1);
}

#define TURBO_DEF_AVX2(N, K)                                                                   \
    void turbo##N##_vec_dot_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx,     \
                                 const void * vy, size_t by, int nrc) {                        \
        (void) bs; (void) bx; (void) by; (void) nrc;                                           \
        const block_turbo##N * x = (const block_turbo##N *) vx;                                \
        const turbo_block_q8_0 * y = (const turbo_block_q8_0 *) vy;                            \
        const __m256i tab = turbo_table(turbo_cb##N, K);                                       \
        __m256 acc = _mm256_setzero_ps();                                                      \
        for (int ib = 0; ib < n / QK_TURBO; ++ib) {                                            \
            __m256i v0, v1;                                                                    \
            turbo##N##_values(x + ib, tab, &v0, &v1);                                          \
            const __m256i p0 = turbo_dot_i8(v0, _mm256_loadu_si256((const __m256i *) y[2 * ib].qs));     \
            const __m256i p1 = turbo_dot_i8(v1, _mm256_loadu_si256((const __m256i *) y[2 * ib + 1].qs)); \
            const __m256 d0 = _mm256_set1_ps(turbo_scale[x[ib].e[0]] * turbo_fp16_to_fp32(y[2 * ib].d));     \
            const __m256 d1 = _mm256_set1_ps(turbo_scale[x[ib].e[1]] * turbo_fp16_to_fp32(y[2 * ib + 1].d)); \
            acc = _mm256_add_ps(acc, _mm256_mul_ps(d0, _mm256_cvtepi32_ps(p0)));               \
            acc = _mm256_add_ps(acc, _mm256_mul_ps(d1, _mm256_cvtepi32_ps(p1)));               \
        }                                                                                      \
        *s = turbo_hsum_ps(acc);                                                               \
    }                                                                                          \
    void turbo##N##_dequantize_row(const void * vx, float * y, int64_t k) {                    \
        const block_turbo##N * x = (const block_turbo##N *) vx;                                \
        const __m256i tab = turbo_table(turbo_cb##N, K);                                       \
        for (int64_t ib = 0; ib < k / QK_TURBO; ++ib) {                                        \
            __m256i v[2];                                                                      \
            turbo##N##_values(x + ib, tab, &v[0], &v[1]);                                      \
            for (int sb = 0; sb < 2; ++sb) {                                                   \
                const __m256 d = _mm256_set1_ps(turbo_scale[x[ib].e[sb]]);                     \
                const __m128i lo = _mm256_castsi256_si128(v[sb]);                              \
                const __m128i hi = _mm256_extracti128_si256(v[sb], 1);                         \
                float * out = y + ib * QK_TURBO + 32 * sb;                                     \
                _mm256_storeu_ps(out +  0, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));                    \
                _mm256_storeu_ps(out +  8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))))); \
                _mm256_storeu_ps(out + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));                    \
                _mm256_storeu_ps(out + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))))); \
            }                                                                                  \
        }                                                                                      \
    }

TURBO_DEF_AVX2(4, 16)
TURBO_DEF_AVX2(3, 8)
TURBO_DEF_AVX2(2, 4)

// Quantize one sub-block of 32 values with AVX2, reproducing turbo_quantize_sub() of
// turbo-ref.c exactly: same products, same comparisons, same order of the error sums.
static uint8_t turbo_quantize_sub_avx2(const float * xin, const signed char * cb, const float * bnd, int nbnd,
                                       int lo, int hi, int32_t * idx_out) {
    __m256 x[4];
    __m256 amaxv = _mm256_setzero_ps();
    const __m256 zero = _mm256_setzero_ps();
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int v = 0; v < 4; ++v) {
        const __m256 xv = _mm256_loadu_ps(xin + 8 * v);
        // NaN and +-Inf become 0 (x - x is 0 only for finite x)
        const __m256 fin = _mm256_cmp_ps(_mm256_sub_ps(xv, xv), zero, _CMP_EQ_OQ);
        x[v] = _mm256_and_ps(xv, fin);
        amaxv = _mm256_max_ps(amaxv, _mm256_and_ps(x[v], absmask));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amaxv), _mm256_extractf128_ps(amaxv, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amax = _mm_cvtss_f32(m);
    const int k = nbnd + 1;
    if (amax == 0.0f) {
        for (int i = 0; i < 32; ++i) {
            idx_out[i] = k / 2;
        }
        return 0;
    }
    const int e0 = turbo_first_scale(amax);

    // codebook as floats, in one or two 8-lane tables
    float cbf[16];
    for (int i = 0; i < 16; ++i) {
        cbf[i] = (float) cb[i < k ? i : k - 1];
    }
    const __m256 tab0 = _mm256_loadu_ps(cbf);
    const __m256 tab1 = _mm256_loadu_ps(cbf + 8);
    __m256 bv[15];
    for (int t = 0; t < nbnd; ++t) {
        bv[t] = _mm256_set1_ps(bnd[t]);
    }

    float best_err = INFINITY;
    int best_b = -1;
    __m256i best_idx[4] = { _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256() };
    int prev_b = -1;
    for (int off = hi; off >= lo; --off) {
        int b = e0 + off;
        b = b < 1 ? 1 : (b > 255 ? 255 : b);
        if (b == prev_b) {
            continue;
        }
        prev_b = b;
        const __m256 inv = _mm256_set1_ps(turbo_inv_scale[b]);
        const __m256 d   = _mm256_set1_ps(turbo_scale[b]);
        __m256 lane = _mm256_setzero_ps();
        __m256i cidx[4];
        for (int v = 0; v < 4; ++v) {
            const __m256 u = _mm256_mul_ps(x[v], inv);
            __m256i j = _mm256_setzero_si256();
            for (int t = 0; t < nbnd; ++t) {
                j = _mm256_sub_epi32(j, _mm256_castps_si256(_mm256_cmp_ps(u, bv[t], _CMP_GT_OQ)));
            }
            cidx[v] = j;
            __m256 c = _mm256_permutevar8x32_ps(tab0, j);
            if (k > 8) {
                const __m256 c1 = _mm256_permutevar8x32_ps(tab1, j);
                const __m256 sel = _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(7)));
                c = _mm256_blendv_ps(c, c1, sel);
            }
            const __m256 r  = _mm256_mul_ps(d, c);
            const __m256 e  = _mm256_sub_ps(x[v], r);
            const __m256 e2 = _mm256_mul_ps(e, e);
            lane = _mm256_add_ps(lane, e2);
        }
        // ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(lane), _mm256_extractf128_ps(lane, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        const float err = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
        if (best_b < 0 || err < best_err) {
            best_err = err;
            best_b = b;
            for (int v = 0; v < 4; ++v) {
                best_idx[v] = cidx[v];
            }
        }
    }
    for (int v = 0; v < 4; ++v) {
        _mm256_storeu_si256((__m256i *) (idx_out + 8 * v), best_idx[v]);
    }
    return (uint8_t) best_b;
}

#define TURBO_SIMD_QUANTIZE_SUB turbo_quantize_sub_avx2

#elif defined(TURBO_NEON)

// ---------------------------------------------------------------------------------------
// NEON (aarch64)

static inline int8x16_t turbo_table_neon(const signed char * cb, int k) {
    int8_t t[16];
    for (int i = 0; i < 16; ++i) {
        t[i] = cb[i % k];
    }
    return vld1q_s8(t);
}

// the 64 codebook values of a block as four 16-byte vectors (values 0-15, 16-31, 32-47, 48-63)
static inline void turbo4_values(const block_turbo4 * b, int8x16_t tab, int8x16_t v[4]) {
    const uint8x16_t q0 = vld1q_u8(b->qs);
    const uint8x16_t q1 = vld1q_u8(b->qs + 16);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    v[0] = vqtbl1q_s8(tab, vandq_u8(q0, m4));
    v[1] = vqtbl1q_s8(tab, vandq_u8(q1, m4));
    v[2] = vqtbl1q_s8(tab, vshrq_n_u8(q0, 4));
    v[3] = vqtbl1q_s8(tab, vshrq_n_u8(q1, 4));
}

static inline void turbo2_idx_neon(const uint8_t * qs, uint8x16_t i[4]) {
    const uint8x16_t q  = vld1q_u8(qs);
    const uint8x16_t m2 = vdupq_n_u8(3);
    i[0] = vandq_u8(q, m2);
    i[1] = vandq_u8(vshrq_n_u8(q, 2), m2);
    i[2] = vandq_u8(vshrq_n_u8(q, 4), m2);
    i[3] = vshrq_n_u8(q, 6);
}

static inline void turbo2_values(const block_turbo2 * b, int8x16_t tab, int8x16_t v[4]) {
    uint8x16_t i[4];
    turbo2_idx_neon(b->qs, i);
    for (int t = 0; t < 4; ++t) {
        v[t] = vqtbl1q_s8(tab, i[t]);
    }
}

static inline void turbo3_values(const block_turbo3 * b, int8x16_t tab, int8x16_t v[4]) {
    uint8x16_t i[4];
    turbo2_idx_neon(b->qs, i);
    // bit i of qh -> byte i: replicate each qh byte 8 times, test its bit
    static const uint8_t bitsel[16] = { 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128 };
    const uint8x16_t sel = vld1q_u8(bitsel);
    const uint8x16_t four = vdupq_n_u8(4);
    for (int t = 0; t < 4; ++t) {
        const uint8x8_t h0 = vdup_n_u8(b->qh[2 * t]);
        const uint8x8_t h1 = vdup_n_u8(b->qh[2 * t + 1]);
        const uint8x16_t h = vcombine_u8(h0, h1);
        const uint8x16_t hb = vandq_u8(vtstq_u8(h, sel), four);
        v[t] = vqtbl1q_s8(tab, vorrq_u8(i[t], hb));
    }
}

static inline int32_t turbo_dot16(int8x16_t a, int8x16_t b) {
    const int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t p1 = vmull_s8(vget_high_s8(a), vget_high_s8(b));
    return vaddvq_s32(vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
}

#define TURBO_DEF_NEON(N, K)                                                                   \
    void turbo##N##_vec_dot_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx,     \
                                 const void * vy, size_t by, int nrc) {                        \
        (void) bs; (void) bx; (void) by; (void) nrc;                                           \
        const block_turbo##N * x = (const block_turbo##N *) vx;                                \
        const turbo_block_q8_0 * y = (const turbo_block_q8_0 *) vy;                            \
        const int8x16_t tab = turbo_table_neon(turbo_cb##N, K);                                \
        float sumf = 0.0f;                                                                     \
        for (int ib = 0; ib < n / QK_TURBO; ++ib) {                                            \
            int8x16_t v[4];                                                                    \
            turbo##N##_values(x + ib, tab, v);                                                 \
            for (int sb = 0; sb < 2; ++sb) {                                                   \
                const turbo_block_q8_0 * yb = y + 2 * ib + sb;                                 \
                const int32_t isum = turbo_dot16(v[2 * sb], vld1q_s8(yb->qs)) +                \
                                     turbo_dot16(v[2 * sb + 1], vld1q_s8(yb->qs + 16));        \
                sumf += (turbo_scale[x[ib].e[sb]] * turbo_fp16_to_fp32(yb->d)) * (float) isum; \
            }                                                                                  \
        }                                                                                      \
        *s = sumf;                                                                             \
    }                                                                                          \
    void turbo##N##_dequantize_row(const void * vx, float * y, int64_t k) {                    \
        const block_turbo##N * x = (const block_turbo##N *) vx;                                \
        const int8x16_t tab = turbo_table_neon(turbo_cb##N, K);                                \
        for (int64_t ib = 0; ib < k / QK_TURBO; ++ib) {                                        \
            int8x16_t v[4];                                                                    \
            turbo##N##_values(x + ib, tab, v);                                                 \
            for (int t = 0; t < 4; ++t) {                                                      \
                const float32x4_t d = vdupq_n_f32(turbo_scale[x[ib].e[t / 2]]);                \
                const int16x8_t w0 = vmovl_s8(vget_low_s8(v[t]));                              \
                const int16x8_t w1 = vmovl_s8(vget_high_s8(v[t]));                             \
                float * out = y + ib * QK_TURBO + 16 * t;                                      \
                vst1q_f32(out +  0, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w0)))));  \
                vst1q_f32(out +  4, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_high_s16(w0))))); \
                vst1q_f32(out +  8, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w1)))));  \
                vst1q_f32(out + 12, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_high_s16(w1))))); \
            }                                                                                  \
        }                                                                                      \
    }

TURBO_DEF_NEON(4, 16)
TURBO_DEF_NEON(3, 8)
TURBO_DEF_NEON(2, 4)

// Quantize one sub-block of 32 values with NEON, reproducing turbo_quantize_sub_impl()
// exactly. The reference's 8 interleaved partial sums are two 4-lane accumulators: lanes
// 0-3 take the even 4-value groups, lanes 4-7 the odd ones, in the same order.
static uint8_t turbo_quantize_sub_neon(const float * xin, const signed char * cb, const float * bnd, int nbnd,
                                       int lo, int hi, int32_t * idx_out) {
    float32x4_t x[8];
    float32x4_t amaxv = vdupq_n_f32(0.0f);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    for (int v = 0; v < 8; ++v) {
        const float32x4_t xv = vld1q_f32(xin + 4 * v);
        // NaN and +-Inf become 0 (x - x is 0 only for finite x)
        const uint32x4_t fin = vceqq_f32(vsubq_f32(xv, xv), zero);
        x[v] = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(xv), fin));
        amaxv = vmaxq_f32(amaxv, vabsq_f32(x[v]));
    }
    const float amax = vmaxvq_f32(amaxv);
    const int k = nbnd + 1;
    if (amax == 0.0f) {
        for (int i = 0; i < 32; ++i) {
            idx_out[i] = k / 2;
        }
        return 0;
    }
    const int e0 = turbo_first_scale(amax);

    // codeword of index j = cb[0] + the steps up to j (integers: exact in float)
    float32x4_t bv[15];
    float32x4_t step[15];
    for (int t = 0; t < nbnd; ++t) {
        bv[t]   = vdupq_n_f32(bnd[t]);
        step[t] = vdupq_n_f32((float) (cb[t + 1] - cb[t]));
    }
    const float32x4_t c0 = vdupq_n_f32((float) cb[0]);

    float best_err = INFINITY;
    int best_b = -1;
    int32x4_t best_idx[8];
    int prev_b = -1;
    for (int off = hi; off >= lo; --off) {
        int b = e0 + off;
        b = b < 1 ? 1 : (b > 255 ? 255 : b);
        if (b == prev_b) {
            continue;
        }
        prev_b = b;
        const float32x4_t inv = vdupq_n_f32(turbo_inv_scale[b]);
        const float32x4_t d   = vdupq_n_f32(turbo_scale[b]);
        float32x4_t lane_lo = vdupq_n_f32(0.0f);
        float32x4_t lane_hi = vdupq_n_f32(0.0f);
        int32x4_t cidx[8];
        for (int v = 0; v < 8; ++v) {
            const float32x4_t u = vmulq_f32(x[v], inv);
            int32x4_t j = vdupq_n_s32(0);
            float32x4_t c = c0;
            for (int t = 0; t < nbnd; ++t) {
                const uint32x4_t gt = vcgtq_f32(u, bv[t]);
                j = vsubq_s32(j, vreinterpretq_s32_u32(gt));
                c = vaddq_f32(c, vreinterpretq_f32_u32(vandq_u32(gt, vreinterpretq_u32_f32(step[t]))));
            }
            cidx[v] = j;
            const float32x4_t r  = vmulq_f32(d, c);
            const float32x4_t e  = vsubq_f32(x[v], r);
            const float32x4_t e2 = vmulq_f32(e, e);
            if (v % 2 == 0) {
                lane_lo = vaddq_f32(lane_lo, e2);
            } else {
                lane_hi = vaddq_f32(lane_hi, e2);
            }
        }
        // ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))
        const float32x4_t s4 = vaddq_f32(lane_lo, lane_hi);
        const float t0 = vgetq_lane_f32(s4, 0) + vgetq_lane_f32(s4, 2);
        const float t1 = vgetq_lane_f32(s4, 1) + vgetq_lane_f32(s4, 3);
        const float err = t0 + t1;
        if (best_b < 0 || err < best_err) {
            best_err = err;
            best_b = b;
            for (int v = 0; v < 8; ++v) {
                best_idx[v] = cidx[v];
            }
        }
    }
    for (int v = 0; v < 8; ++v) {
        vst1q_s32(idx_out + 4 * v, best_idx[v]);
    }
    return (uint8_t) best_b;
}

#define TURBO_SIMD_QUANTIZE_SUB turbo_quantize_sub_neon

#endif

#if defined(TURBO_AVX2) || defined(TURBO_NEON)

// rows of blocks, packed exactly like the reference (turbo-impl.h)

void turbo4_quantize_row(const float * x, void * vy, int64_t k) {
    block_turbo4 * y = (block_turbo4 *) vy;
    for (int64_t ib = 0; ib < k / QK_TURBO; ++ib) {
        int32_t idx[QK_TURBO];
        for (int s = 0; s < 2; ++s) {
            y[ib].e[s] = TURBO_SIMD_QUANTIZE_SUB(x + ib * QK_TURBO + 32 * s, turbo_cb4, turbo_bnd4, 15,
                                                 TURBO_SCAN_LO4, TURBO_SCAN_HI4, idx + 32 * s);
        }
        for (int j = 0; j < 32; ++j) {
            y[ib].qs[j] = (uint8_t) (idx[j] | (idx[j + 32] << 4));
        }
    }
}

void turbo3_quantize_row(const float * x, void * vy, int64_t k) {
    block_turbo3 * y = (block_turbo3 *) vy;
    for (int64_t ib = 0; ib < k / QK_TURBO; ++ib) {
        int32_t idx[QK_TURBO];
        for (int s = 0; s < 2; ++s) {
            y[ib].e[s] = TURBO_SIMD_QUANTIZE_SUB(x + ib * QK_TURBO + 32 * s, turbo_cb3, turbo_bnd3, 7,
                                                 TURBO_SCAN_LO3, TURBO_SCAN_HI3, idx + 32 * s);
        }
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        memset(y[ib].qh, 0, sizeof(y[ib].qh));
        for (int i = 0; i < QK_TURBO; ++i) {
            y[ib].qs[i % 16] |= (uint8_t) ((idx[i] & 3) << (2 * (i / 16)));
            y[ib].qh[i / 8]  |= (uint8_t) (((idx[i] >> 2) & 1) << (i % 8));
        }
    }
}

void turbo2_quantize_row(const float * x, void * vy, int64_t k) {
    block_turbo2 * y = (block_turbo2 *) vy;
    for (int64_t ib = 0; ib < k / QK_TURBO; ++ib) {
        int32_t idx[QK_TURBO];
        for (int s = 0; s < 2; ++s) {
            y[ib].e[s] = TURBO_SIMD_QUANTIZE_SUB(x + ib * QK_TURBO + 32 * s, turbo_cb2, turbo_bnd2, 3,
                                                 TURBO_SCAN_LO2, TURBO_SCAN_HI2, idx + 32 * s);
        }
        memset(y[ib].qs, 0, sizeof(y[ib].qs));
        for (int i = 0; i < QK_TURBO; ++i) {
            y[ib].qs[i % 16] |= (uint8_t) ((idx[i] & 3) << (2 * (i / 16)));
        }
    }
}

#else

// ---------------------------------------------------------------------------------------
// scalar fallback

// index of value i (0..63) of a block
static inline int turbo4_index(const block_turbo4 * b, int i) {
    return i < 32 ? (b->qs[i] & 0x0F) : (b->qs[i - 32] >> 4);
}
static inline int turbo3_index(const block_turbo3 * b, int i) {
    return ((b->qs[i % 16] >> (2 * (i / 16))) & 3) | (((b->qh[i / 8] >> (i % 8)) & 1) << 2);
}
static inline int turbo2_index(const block_turbo2 * b, int i) {
    return (b->qs[i % 16] >> (2 * (i / 16))) & 3;
}

// dot products against q8_0 (integer sums per 32 values), dequantize and quantize with the
// reference
#define TURBO_DEF_SCALAR(N)                                                                    \
    void turbo##N##_vec_dot_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx,     \
                                 const void * vy, size_t by, int nrc) {                        \
        (void) bs; (void) bx; (void) by; (void) nrc;                                           \
        const block_turbo##N * x = (const block_turbo##N *) vx;                                \
        const turbo_block_q8_0 * y = (const turbo_block_q8_0 *) vy;                            \
        float sumf = 0.0f;                                                                     \
        for (int ib = 0; ib < n / QK_TURBO; ++ib) {                                            \
            for (int sb = 0; sb < 2; ++sb) {                                                   \
                const turbo_block_q8_0 * yb = y + 2 * ib + sb;                                 \
                int isum = 0;                                                                  \
                for (int i = 0; i < 32; ++i) {                                                 \
                    isum += turbo_cb##N[turbo##N##_index(x + ib, 32 * sb + i)] * yb->qs[i];     \
                }                                                                              \
                sumf += (turbo_scale[x[ib].e[sb]] * turbo_fp16_to_fp32(yb->d)) * (float) isum;  \
            }                                                                                  \
        }                                                                                      \
        *s = sumf;                                                                             \
    }                                                                                          \
    void turbo##N##_dequantize_row(const void * x, float * y, int64_t k) {                     \
        turbo##N##_dequantize_row_ref((const block_turbo##N *) x, y, k);                       \
    }                                                                                          \
    void turbo##N##_quantize_row(const float * x, void * y, int64_t k) {                       \
        turbo##N##_quantize_row_ref(x, (block_turbo##N *) y, k);                               \
    }

TURBO_DEF_SCALAR(4)
TURBO_DEF_SCALAR(3)
TURBO_DEF_SCALAR(2)

#endif
