// Exercise every codec entry point on exactly-sized heap buffers, for AddressSanitizer /
// UBSan: all types, head dims 64..512 with several heads, random and edge-case data.
// Also checks that the CPU kernels reproduce the reference bit for bit, that re-quantizing
// a decoded row gives it back, and the dot products against a double-precision sum.
#include "turbo-cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x1234567ull;
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float) ((rng_state >> 40) & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f;
}

// the implementation the kernels select for these compiler flags (turbo-cpu.c); the Python
// test checks the disassembly as well
#if defined(__AVX2__)
#  define IMPL "avx2"
#elif defined(__ARM_NEON) && defined(__aarch64__)
#  define IMPL "neon"
#else
#  define IMPL "scalar"
#endif

typedef void (*quant_fn)(const float *, void *, int64_t);
typedef void (*deq_fn)(const void *, float *, int64_t);
typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);

static void quant_ref4(const float * x, void * y, int64_t k) { turbo4_quantize_row_ref(x, (block_turbo4 *) y, k); }
static void quant_ref3(const float * x, void * y, int64_t k) { turbo3_quantize_row_ref(x, (block_turbo3 *) y, k); }
static void quant_ref2(const float * x, void * y, int64_t k) { turbo2_quantize_row_ref(x, (block_turbo2 *) y, k); }
static void deq_ref4(const void * x, float * y, int64_t k) { turbo4_dequantize_row_ref((const block_turbo4 *) x, y, k); }
static void deq_ref3(const void * x, float * y, int64_t k) { turbo3_dequantize_row_ref((const block_turbo3 *) x, y, k); }
static void deq_ref2(const void * x, float * y, int64_t k) { turbo2_dequantize_row_ref((const block_turbo2 *) x, y, k); }

int main(void) {
    const int bits[3] = { 4, 3, 2 };
    const size_t bsize[3] = { sizeof(block_turbo4), sizeof(block_turbo3), sizeof(block_turbo2) };
    quant_fn qref[3] = { quant_ref4, quant_ref3, quant_ref2 };
    quant_fn qcpu[3] = { turbo4_quantize_row, turbo3_quantize_row, turbo2_quantize_row };
    deq_fn dref[3] = { deq_ref4, deq_ref3, deq_ref2 };
    deq_fn dcpu[3] = { turbo4_dequantize_row, turbo3_dequantize_row, turbo2_dequantize_row };
    dot_fn dot[3] = { turbo4_vec_dot_q8_0, turbo3_vec_dot_q8_0, turbo2_vec_dot_q8_0 };
    const int head_dims[4] = { 64, 128, 256, 512 };
    int failures = 0;

    if (sizeof(block_turbo4) != 34 || sizeof(block_turbo3) != 26 || sizeof(block_turbo2) != 18) {
        fprintf(stderr, "unexpected block sizes\n");
        return 1;
    }
    for (int t = 0; t < 3; ++t) {
        for (int h = 0; h < 4; ++h) {
            for (int n_head = 1; n_head <= 3; ++n_head) {
                for (int kind = 0; kind < 5; ++kind) {
                    const int64_t k = (int64_t) head_dims[h] * n_head;
                    float * x = malloc(sizeof(float) * k);
                    for (int64_t i = 0; i < k; ++i) {
                        x[i] = frand() * (kind == 1 ? 1e-6f : kind == 2 ? 3e4f : 3.0f);
                    }
                    if (kind == 3) {
                        x[0] = NAN; x[k - 1] = INFINITY; x[k / 2] = -INFINITY;
                    }
                    if (kind == 4) {
                        memset(x, 0, sizeof(float) * k);
                    }
                    const size_t nbytes = (size_t) (k / QK_TURBO) * bsize[t];
                    unsigned char * qa = malloc(nbytes);
                    unsigned char * qb = malloc(nbytes);
                    qref[t](x, qa, k);
                    qcpu[t](x, qb, k);
                    if (memcmp(qa, qb, nbytes) != 0) {
                        fprintf(stderr, "turbo%d hd=%d heads=%d kind=%d: cpu quantize != reference\n", bits[t], head_dims[h], n_head, kind);
                        failures++;
                    }
                    float * ya = malloc(sizeof(float) * k);
                    float * yb = malloc(sizeof(float) * k);
                    dref[t](qa, ya, k);
                    dcpu[t](qa, yb, k);
                    for (int64_t i = 0; i < k; ++i) {
                        if (!(ya[i] == yb[i]) || !isfinite(ya[i])) {
                            fprintf(stderr, "turbo%d: dequantize mismatch or non-finite at %lld\n", bits[t], (long long) i);
                            failures++;
                            break;
                        }
                    }
                    // q8_0 row of the same length
                    turbo_block_q8_0 * q8 = malloc(sizeof(turbo_block_q8_0) * (size_t) (k / 32));
                    for (int64_t b = 0; b < k / 32; ++b) {
                        q8[b].d = 0x2C00;  // 0.0625
                        for (int i = 0; i < 32; ++i) {
                            q8[b].qs[i] = (int8_t) (frand() * 127.0f);
                        }
                    }
                    float s = 0.0f;
                    dot[t]((int) k, &s, 0, qa, 0, q8, 0, 1);
                    double want = 0.0;
                    double mag = 0.0;
                    for (int64_t i = 0; i < k; ++i) {
                        want += (double) ya[i] * (double) q8[i / 32].qs[i % 32] * 0.0625;
                        mag += fabs((double) ya[i]) * 127.0 * 0.0625;
                    }
                    if (!isfinite(s) || fabs((double) s - want) > 1e-5 * mag + 1e-30) {
                        fprintf(stderr, "turbo%d hd=%d: dot %g != %g\n", bits[t], head_dims[h], s, want);
                        failures++;
                    }
                    // re-quantizing the decoded row gives the same bytes
                    qcpu[t](yb, qb, k);
                    if (memcmp(qa, qb, nbytes) != 0) {
                        fprintf(stderr, "turbo%d hd=%d heads=%d kind=%d: quantize(dequantize(q)) != q\n", bits[t], head_dims[h], n_head, kind);
                        failures++;
                    }
                    free(q8); free(ya); free(yb); free(qa); free(qb); free(x);
                }
            }
        }
    }
    float signs[512];
    turbo_rot_signs(signs, 512);
    printf("impl=%s failures=%d\n", IMPL, failures);
    return failures ? 1 : 0;
}
