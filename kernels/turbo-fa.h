// turbo-fa.h: what the GPU backends support for TurboQuant flash attention, and the names
// of the kernels that serve it -- one table for the host code (supports_op, pipeline
// names), for the generator of the Metal kernel instances (gen_metal.py) and for the tests
// that prove the two agree.
//
// Host-side plain C (not compiled for the GPU).
#pragma once

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

// K/V cache type pairs (K first) with a flash-attention kernel: turbo x turbo, turbo with
// f16 or q8_0 on the other side, q8_0 K with turbo V.
static const char * const turbo_fa_pairs[][2] = {
    { "turbo4", "turbo4" },
    { "turbo3", "turbo3" },
    { "turbo2", "turbo2" },
    { "turbo4", "turbo3" },
    { "turbo4", "f16"    },
    { "f16",    "turbo4" },
    { "turbo4", "q8_0"   },
    { "q8_0",   "turbo4" },
    { "q8_0",   "turbo3" },
    { "f16",    "turbo3" },
    { "turbo3", "q8_0"   },
    // per-layer recipes: a raised V beside a lower K, and turbo2 V in the middle layers
    { "turbo3", "turbo4" },
    { "turbo4", "turbo2" },
    { "turbo3", "turbo2" },
    { "q8_0",   "turbo2" },
    { "f16",    "turbo2" },
    { "turbo2", "turbo3" },
    { "turbo3", "f16"    },
};

#define TURBO_FA_N_PAIRS ((int) (sizeof(turbo_fa_pairs) / sizeof(turbo_fa_pairs[0])))

// head dims (K and V alike) of the TurboQuant flash-attention kernels
static const int turbo_fa_head_dims[] = { 64, 128, 256, 512 };

#define TURBO_FA_N_HEAD_DIMS ((int) (sizeof(turbo_fa_head_dims) / sizeof(turbo_fa_head_dims[0])))

static inline bool turbo_fa_is_turbo(const char * type) {
    return strncmp(type, "turbo", 5) == 0;
}

// is this K/V pair one of the table's (a pair without a turbo type is not ours to decide)
static inline bool turbo_fa_pair_supported(const char * type_k, const char * type_v) {
    for (int i = 0; i < TURBO_FA_N_PAIRS; ++i) {
        if (strcmp(turbo_fa_pairs[i][0], type_k) == 0 && strcmp(turbo_fa_pairs[i][1], type_v) == 0) {
            return true;
        }
    }
    return false;
}

static inline bool turbo_fa_head_dims_supported(int dk, int dv) {
    if (dk != dv) {
        return false;
    }
    for (int i = 0; i < TURBO_FA_N_HEAD_DIMS; ++i) {
        if (turbo_fa_head_dims[i] == dk) {
            return true;
        }
    }
    return false;
}

// the vector (decode) flash-attention kernel of a pair; returns snprintf's result
static inline int turbo_fa_vec_kernel_name(char * buf, size_t size, const char * type_k, const char * type_v, int dk, int dv) {
    return snprintf(buf, size, "kernel_flash_attn_ext_vec_turbo_%s_%s_dk%d_dv%d", type_k, type_v, dk, dv);
}
