"""Slow: what the Metal backend's supports_op claims for the TurboQuant types, compiled on
the host. ggml_metal_device_supports_op() (and its mul_mat helper) is plain C inside
ggml-metal-device.m: the test cuts it out of the patched tree, compiles it against the
real ggml headers and the built libggml-base (a device with every feature), builds real
ggml ops with the turbo types and checks every claim: no MUL_MAT / MUL_MAT_ID (there is no
such kernel), GET_ROWS to F32, SET_ROWS and CPY from F32, CPY to F32/F16, FLASH_ATTN_EXT
exactly for the pairs and head dims of ggml-turbo/turbo-fa.h.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from turboctl.build import manifest

pytestmark = pytest.mark.slow

HARNESS = r"""
#include "ggml.h"
#include "ggml-impl.h"
#include "ggml-metal-device.h"
#include "ggml-metal-impl.h"
#include "../ggml-turbo/turbo-fa.h"

#include <stdio.h>
#include <stdlib.h>

struct ggml_metal_device { struct ggml_metal_device_props props; };

// the host-side helpers supports_op calls (ggml-metal-ops.cpp): a device that has them all
bool ggml_metal_op_mul_mat_use_fwht(const struct ggml_tensor * op, size_t max_tg_mem) {
    (void) op; (void) max_tg_mem; return false;
}
bool ggml_metal_op_mul_mat_use_mm(const struct ggml_tensor * op, bool mm) { (void) op; return mm; }
bool ggml_metal_op_mul_mat_id_use_mm(const struct ggml_tensor * op, bool mm) { (void) op; return mm; }

@SUPPORTS_OP@

static struct ggml_metal_device dev;

static void claim(const char * what, const struct ggml_tensor * op) {
    printf("%s=%d\n", what, ggml_metal_device_supports_op(&dev, op) ? 1 : 0);
}

int main(void) {
    dev.props.has_simdgroup_mm = true;
    dev.props.has_simdgroup_reduction = true;
    dev.props.has_bfloat = true;
    dev.props.max_theadgroup_memory_size = 32768;
    struct ggml_init_params ip = { 64 * 1024 * 1024, NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    const enum ggml_type types[] = { GGML_TYPE_TURBO2, GGML_TYPE_TURBO3, GGML_TYPE_TURBO4, GGML_TYPE_Q4_0 };
    char name[128];
    for (int it = 0; it < 4; ++it) {
        const enum ggml_type t = types[it];
        const char * tn = ggml_type_name(t);
        struct ggml_tensor * w   = ggml_new_tensor_2d(ctx, t, 128, 8);
        struct ggml_tensor * x   = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 128, 2);
        struct ggml_tensor * x16 = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, 128, 2);
        snprintf(name, sizeof(name), "mul_mat_%s", tn);
        claim(name, ggml_mul_mat(ctx, w, x));
        struct ggml_tensor * as  = ggml_new_tensor_3d(ctx, t, 128, 8, 4);
        struct ggml_tensor * b   = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, 128, 2, 3);
        struct ggml_tensor * ids = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, 2, 3);
        snprintf(name, sizeof(name), "mul_mat_id_%s", tn);
        claim(name, ggml_mul_mat_id(ctx, as, b, ids));
        struct ggml_tensor * rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 2);
        snprintf(name, sizeof(name), "get_rows_%s", tn);
        claim(name, ggml_get_rows(ctx, w, rows));
        struct ggml_tensor * idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, 2);
        snprintf(name, sizeof(name), "set_rows_f32_%s", tn);
        claim(name, ggml_set_rows(ctx, w, x, idx));
        snprintf(name, sizeof(name), "set_rows_f16_%s", tn);
        claim(name, ggml_set_rows(ctx, w, x16, idx));
        struct ggml_tensor * q = ggml_new_tensor_2d(ctx, t, 128, 2);
        snprintf(name, sizeof(name), "cpy_f32_%s", tn);
        claim(name, ggml_cpy(ctx, x, q));
        snprintf(name, sizeof(name), "cpy_f16_%s", tn);
        claim(name, ggml_cpy(ctx, x16, q));
        snprintf(name, sizeof(name), "cpy_%s_f32", tn);
        claim(name, ggml_cpy(ctx, q, x));
        snprintf(name, sizeof(name), "cpy_%s_f16", tn);
        claim(name, ggml_cpy(ctx, q, x16));
    }
    // flash attention: every K/V type combination of interest at head dims 128 and 80
    const enum ggml_type kv[] = { GGML_TYPE_TURBO2, GGML_TYPE_TURBO3, GGML_TYPE_TURBO4, GGML_TYPE_F16, GGML_TYPE_Q8_0 };
    const int dims[] = { 64, 128, 256, 512, 80 };
    for (int a = 0; a < 5; ++a) {
        for (int c = 0; c < 5; ++c) {
            for (int id = 0; id < 5; ++id) {
                const int d = dims[id];
                if (d == 80 && (kv[a] == GGML_TYPE_TURBO2 || kv[a] == GGML_TYPE_TURBO3 || kv[a] == GGML_TYPE_TURBO4)) {
                    // turbo rows must be whole blocks of 64: 80 is refused before a tensor exists
                    continue;
                }
                if (d == 80 && (kv[c] == GGML_TYPE_TURBO2 || kv[c] == GGML_TYPE_TURBO3 || kv[c] == GGML_TYPE_TURBO4)) {
                    continue;
                }
                struct ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, d, 1, 4);
                struct ggml_tensor * k = ggml_new_tensor_3d(ctx, kv[a], d, 256, 4);
                struct ggml_tensor * v = ggml_new_tensor_3d(ctx, kv[c], d, 256, 4);
                snprintf(name, sizeof(name), "fa.%s.%s.d%d", ggml_type_name(kv[a]), ggml_type_name(kv[c]), d);
                claim(name, ggml_flash_attn_ext(ctx, q, k, v, NULL, 1.0f, 0.0f, 0.0f));
            }
        }
    }
    ggml_free(ctx);
    return 0;
}
"""


def cut_supports_op(text: str) -> str:
    """ggml_metal_supports_mul_mat_op() .. the end of ggml_metal_device_supports_op()."""
    start = text.index("static bool ggml_metal_supports_mul_mat_op(")
    fn = text.index("bool ggml_metal_device_supports_op(", start)
    i = text.index("{", fn)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start:j + 1]
    raise AssertionError("unbalanced braces in ggml_metal_device_supports_op")


def claims(src: Path, build: Path, tmp: Path) -> dict[str, bool]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler")
    metal = src / "ggml" / "src" / "ggml-metal"
    code = HARNESS.replace("@SUPPORTS_OP@", cut_supports_op((metal / "ggml-metal-device.m").read_text()))
    c = tmp / "supports_op.c"
    c.write_text(code)
    libs = sorted(build.rglob("libggml-base.so"))
    assert libs, f"no libggml-base.so under {build}"
    exe = tmp / "supports-op"
    res = subprocess.run([cc, "-std=c11", "-O0", "-w", "-I", str(src / "ggml" / "include"),
                          "-I", str(src / "ggml" / "src"), "-I", str(metal), str(c), "-o", str(exe),
                          "-L", str(libs[0].parent), "-lggml-base",
                          f"-Wl,-rpath,{libs[0].parent}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return {k: v == "1" for k, v in re.findall(r"^([\w.]+)=([01])$", run.stdout, re.M)}


def fa_table(src: Path) -> tuple[set[tuple[str, str]], set[int]]:
    text = (src / "ggml" / "src" / "ggml-turbo" / "turbo-fa.h").read_text()
    body = re.search(r"turbo_fa_pairs\[\]\[2\]\s*=\s*\{(.*?)\};", text, re.S)
    dims = re.search(r"turbo_fa_head_dims\[\]\s*=\s*\{([^}]*)\}", text)
    assert body and dims
    return set(re.findall(r'\{\s*"(\w+)",\s*"(\w+)"\s*\}', body.group(1))), {int(d) for d in dims.group(1).split(",")}


def test_metal_supports_op_claims_exactly_what_has_a_kernel(llama_build: manifest.Manifest, tmp_path: Path) -> None:
    src = Path(llama_build.source.path)
    got = claims(src, Path(llama_build.cmake.build_dir), tmp_path)
    # the harness works: upstream's q4_0 mat-mul is claimed
    assert got["mul_mat_q4_0"] and got["mul_mat_id_q4_0"]
    want: dict[str, bool] = {}
    for t in ("turbo2", "turbo3", "turbo4"):
        want |= {f"mul_mat_{t}": False, f"mul_mat_id_{t}": False, f"get_rows_{t}": True,
                 f"set_rows_f32_{t}": True, f"set_rows_f16_{t}": False, f"cpy_f32_{t}": True,
                 f"cpy_f16_{t}": False, f"cpy_{t}_f32": True, f"cpy_{t}_f16": True}
    pairs, dims = fa_table(src)
    for name in got:
        m = re.fullmatch(r"fa\.(\w+)\.(\w+)\.d(\d+)", name)
        if m and ("turbo" in m.group(1) or "turbo" in m.group(2)):
            want[name] = (m.group(1), m.group(2)) in pairs and int(m.group(3)) in dims
    wrong = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
    assert not wrong, f"supports_op claims (name: claimed) that differ from the kernels that exist: {wrong}"
    n_fa = sum(1 for k in want if k.startswith("fa."))
    print(f"\n[metal supports_op] {len(want)} turbo claims checked ({n_fa} flash-attention combinations)")
