"""CUDA flash attention with TurboQuant K/V, checked without a GPU: the host dispatch and the
compiled kernels agree (the CUDA counterpart of the Metal host/kernel consistency test).

Patch 0018 must add exactly the files kernels/gen_cuda.py generates from kernels/turbo-fa.h
(one vector-kernel instance file per K/V pair, every head dim; the lookup fattn.cu uses); every
pair and head dim of the table has a compiled instance and a dispatch entry and nothing else
does; fattn.cu answers turbo types only from that lookup and refuses pairs outside the table;
the build compiles the instance files; the kernel's K and V readers know every turbo type;
the grouped-query decode kernel (fattn-vec-turbo-gqa.cuh, written by hand) is reached only from
the vector case of the pairs it serves, with group sizes that divide the GQA ratio."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.kernels.test_metal_patch import kernel_script, new_files

ROOT = Path(__file__).resolve().parents[2]
PATCHES = ROOT / "patches"
GQA = "ggml/src/ggml-cuda/fattn-vec-turbo-gqa.cuh"  # the one hand-written new file of the patch


def gen_cuda() -> ModuleType:
    return kernel_script("gen_cuda")


def fa_patch() -> Path:
    found = sorted(PATCHES.glob("[0-9][0-9][0-9][0-9]-ggml-cuda-flash-attention-with-TurboQuant-K-V.patch"))
    assert len(found) == 1, found
    return found[0]


def changed_lines(patch: str, path: str) -> str:
    """The + lines the patch adds to an existing file (one string)."""
    out: list[str] = []
    for block in re.split(r"(?m)^diff --git ", patch)[1:]:
        if re.search(rf"(?m)^\+\+\+ b/{re.escape(path)}$", block):
            out += [ln[1:] for ln in block.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return "\n".join(out)


@pytest.fixture(scope="module")
def patch_text() -> str:
    return fa_patch().read_text()


def test_the_patch_adds_exactly_the_generated_files(patch_text: str) -> None:
    gen = gen_cuda()
    want = gen.generated_files()
    added = {p: t for p, t in new_files(patch_text).items() if p.startswith(gen.CUDA_DIR) and p != GQA}
    assert set(added) == set(want), (
        f"{fa_patch().name} adds {sorted(set(added) - set(want))} that kernels/gen_cuda.py does not generate and "
        f"lacks {sorted(set(want) - set(added))}: run kernels/gen_cuda.py --tree on the patched tree and re-export")
    for path, text in want.items():
        assert added[path] == text.encode(), f"{path} in {fa_patch().name} differs from kernels/gen_cuda.py's output"


def test_every_pair_and_head_dim_has_an_instance_and_a_dispatch_entry(patch_text: str) -> None:
    gen = gen_cuda()
    pairs, dims = gen.read_table()
    files = {p: t.decode() for p, t in new_files(patch_text).items()}
    instances: set[tuple[int, str, str]] = set()
    for path, text in files.items():
        if "/template-instances/fattn-vec-turbo-" in path:
            for d, k, v in re.findall(r"(?m)^DECL_FATTN_VEC_CASE\(\s*(\d+),\s*GGML_TYPE_(\w+),\s*GGML_TYPE_(\w+)\);",
                                      text):
                instances.add((int(d), k.lower(), v.lower()))
    dispatch_text = files[gen.DISPATCH]
    dispatch: set[tuple[int, str, str]] = set()
    for k, v, body in re.findall(
            r"if \(type_K == GGML_TYPE_(\w+) && type_V == GGML_TYPE_(\w+)\) \{(.*?)\n    \}", dispatch_text, re.S):
        for d, dk, tk, tv in re.findall(
                r"case (\d+): return ggml_cuda_flash_attn_ext_vec_case<(\d+), GGML_TYPE_(\w+), GGML_TYPE_(\w+)>;", body):
            assert (d, tk, tv) == (dk, k, v), f"dispatch entry {k}/{v} at {d} names another instance"
            dispatch.add((int(d), k.lower(), v.lower()))
    table = {(d, k, v) for k, v in pairs for d in dims}
    assert instances == table, f"instances differ from turbo-fa.h: {sorted(instances ^ table)}"
    assert dispatch == table, f"dispatch entries differ from turbo-fa.h: {sorted(dispatch ^ table)}"
    externs = set(re.findall(r"extern DECL_FATTN_VEC_CASE\(\s*(\d+), GGML_TYPE_(\w+), GGML_TYPE_(\w+)\);",
                             dispatch_text))
    assert {(int(d), k.lower(), v.lower()) for d, k, v in externs} == table


def test_fattn_asks_only_the_generated_lookup_for_turbo_types(patch_text: str) -> None:
    fattn = changed_lines(patch_text, "ggml/src/ggml-cuda/fattn.cu")
    assert '#include "fattn-vec-turbo.cuh"' in fattn
    assert re.search(r"if \(ggml_is_turbo\(type_K\) \|\| ggml_is_turbo\(type_V\)\) \{\s*"
                     r"return ggml_cuda_get_fattn_vec_case_turbo\(head_size, type_K, type_V\);", fattn), (
        "ggml_cuda_get_fattn_vec_case must answer turbo types from the generated lookup only")
    # pairs and head dims outside turbo-fa.h are refused (not supported), before any kernel choice
    assert "turbo_fa_pair_supported(ggml_type_name(K->type), ggml_type_name(V->type))" in fattn
    assert "turbo_fa_head_dims_supported(K->ne[0], V->ne[0])" in fattn
    assert '#include "../ggml-turbo/turbo-fa.h"' in fattn


def test_the_build_compiles_the_instances(patch_text: str) -> None:
    cmake = changed_lines(patch_text, "ggml/src/ggml-cuda/CMakeLists.txt")
    assert 'file(GLOB   SRCS "template-instances/fattn-vec-turbo-*.cu")' in cmake
    assert "list(APPEND GGML_SOURCES_CUDA ${SRCS})" in cmake


def test_the_kernel_reads_every_turbo_type(patch_text: str) -> None:
    common = changed_lines(patch_text, "ggml/src/ggml-cuda/fattn-common.cuh")
    for t in ("TURBO4", "TURBO3", "TURBO2"):
        assert re.search(rf"struct fattn_turbo_block<GGML_TYPE_{t}>", common), t
    assert "return vec_dot_fattn_vec_KQ_turbo<D, nthreads, type_K>;" in common
    assert "return dequantize_V_turbo<T, ne, type_V>;" in common
    convert = changed_lines(patch_text, "ggml/src/ggml-cuda/convert.cu")
    for t in ("turbo4", "turbo3", "turbo2"):  # the F16 path (prefill): contiguous and strided
        assert f"dequantize_block_cont_cuda<QK_TURBO, QR_TURBO, dequantize_{t}>" in convert
        assert f"dequantize_block_cuda<QK_TURBO, QR_TURBO, dequantize_{t}>" in convert


def test_a_pair_added_to_the_table_shows_up_as_missing(tmp_path: Path, patch_text: str) -> None:
    """The comparison can fail: a table with one more pair generates a file the patch lacks."""
    gen = gen_cuda()
    header = tmp_path / "turbo-fa.h"
    text = gen.HEADER.read_text().replace('{ "turbo4", "turbo4" },', '{ "turbo4", "turbo4" },\n    { "turbo2", "f16" },')
    header.write_text(text)
    want = gen.generated_files(header)
    added = new_files(patch_text)
    missing = [p for p in want if p not in added]
    assert missing == [f"{gen.INSTANCE_DIR}/fattn-vec-turbo-turbo2-f16.cu"]
    assert added[gen.DISPATCH] != want[gen.DISPATCH].encode()


def test_check_mode_names_stale_and_extra_files(tmp_path: Path) -> None:
    gen = gen_cuda()
    script = str(ROOT / "kernels" / "gen_cuda.py")
    assert subprocess.run([sys.executable, script, "--tree", str(tmp_path)], capture_output=True).returncode == 0
    ok = subprocess.run([sys.executable, script, "--tree", str(tmp_path), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    inst = tmp_path / gen.INSTANCE_DIR
    (inst / "fattn-vec-turbo-turbo4-turbo4.cu").write_text("// edited\n")
    (inst / "fattn-vec-turbo-turbo2-bf16.cu").write_text("// not a pair\n")
    bad = subprocess.run([sys.executable, script, "--tree", str(tmp_path), "--check"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "fattn-vec-turbo-turbo4-turbo4.cu: differs from gen_cuda.py's output" in bad.stdout
    assert "fattn-vec-turbo-turbo2-bf16.cu: not a pair of turbo-fa.h (remove it)" in bad.stdout


def test_a_table_without_pairs_is_an_error(tmp_path: Path) -> None:
    gen = gen_cuda()
    header = tmp_path / "turbo-fa.h"
    header.write_text("static const int nothing = 0;\n")
    with pytest.raises(SystemExit, match="cannot find turbo_fa_pairs"):
        gen.read_table(header)


def test_the_gqa_kernel_is_reached_from_the_vector_case_of_its_pairs(patch_text: str) -> None:
    files = {p: t.decode() for p, t in new_files(patch_text).items()}
    assert GQA in files, f"{fa_patch().name} does not add {GQA}"
    vec = changed_lines(patch_text, "ggml/src/ggml-cuda/fattn-vec.cuh")
    assert '#include "fattn-vec-turbo-gqa.cuh"' in vec
    # the hook: compiled only for the pairs the kernel serves, and falls through to the vector kernel
    assert re.search(r"if constexpr \(fattn_gqa_pair<type_K, type_V>\(\)\) \{\s*"
                     r"if \(ggml_cuda_flash_attn_ext_vec_gqa_case<D, type_K, type_V>\(ctx, dst\)\) \{\s*return;", vec)
    gqa = files[GQA]
    # a reader for every turbo type and q8_0; no pair of two q8_0 sides (not ours)
    for t, fn in (("TURBO4", "turbo4"), ("TURBO3", "turbo3"), ("TURBO2", "turbo2")):
        assert re.search(rf"struct fattn_gqa_row<GGML_TYPE_{t}> : fattn_gqa_turbo_row<block_{fn}, {fn}_codes4_cuda>",
                         gqa), t
    assert "struct fattn_gqa_row<GGML_TYPE_Q8_0>" in gqa
    assert "(type_K != GGML_TYPE_Q8_0 || type_V != GGML_TYPE_Q8_0)" in gqa
    # one query row only, a KV length of whole tiles; each group size is launched only where it
    # divides the GQA ratio and its shared memory fits
    assert "if (Q->ne[1] != 1 || K->ne[1] % FATTN_GQA_ROWS != 0)" in gqa
    launches = re.findall(r"if \(gqa_ratio % (\d+) == 0\) \{\s*ggml_cuda_flash_attn_ext_vec_gqa_launch<D, (\d+),", gqa)
    assert sorted(launches) == [("2", "2"), ("4", "4"), ("8", "8")], launches
    for g in (8, 4, 2):
        assert f"fattn_gqa_shared_bytes<D, {g}, type_K, type_V>() <= FATTN_GQA_TILE_MAX" in gqa, g
