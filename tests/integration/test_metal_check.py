"""Slow: the Metal type check (scripts/metal_check) over the real trees of the build.

- upstream's unpatched kernels (the base commit of the build's source tree) and the patched
  ones (HEAD) type-check with 0 errors in the embed, bin and source-tree layouts, and the
  patched tree adds no known shim gap;
- faults injected into a copy of the patched tree are caught (and the one the check cannot
  see, a C-style cast between address spaces, is not: the known gap of its README).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests import metal_checker
from tests.metal_checker import CHECKER
from turboctl.build import manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mc() -> ModuleType:
    return metal_checker.load()


@pytest.fixture(scope="module")
def clang(mc: ModuleType) -> str:
    try:
        return str(mc.find_clang(None))
    except mc.SetupError as e:
        pytest.skip(f"the Metal type check needs clang++ (Debian: clang-19, installed by .ci/run): {e}")
        raise AssertionError from e  # unreachable


def archive(src: Path, rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(src), "archive", rev, "ggml/src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar.stdout, check=True)
    return dest


@pytest.fixture(scope="module")
def trees(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base, patched): ggml/src of the build tree's first commit (upstream) and of HEAD."""
    src = Path(llama_build.source.path)
    base = subprocess.run(["git", "-C", str(src), "rev-list", "--max-parents=0", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    root = tmp_path_factory.mktemp("metal-check-trees")
    return archive(src, base, root / "base"), archive(src, "HEAD", root / "patched")


@pytest.fixture(scope="module")
def cache() -> dict[str, Any]:
    """One compile cache for the module: unchanged translation units are compiled once."""
    return {}


def test_upstream_and_patched_kernels_type_check_in_every_layout(
        mc: ModuleType, clang: str, trees: tuple[Path, Path], cache: dict[str, Any]) -> None:
    base, patched = trees
    t0 = time.monotonic()
    rb = mc.check_tree(base, mc.LAYOUTS, clang, 2, None, cache=cache)
    rp = mc.check_tree(patched, mc.LAYOUTS, clang, 2, None, cache=cache)
    seconds = time.monotonic() - t0
    for label, rep, tree in (("upstream", rb, base), ("patched", rp, patched)):
        for layout in mc.LAYOUTS:
            rs = [r for r in rep.results if r.layout == layout]
            errors = [f"{r.kind}: {mc.relpath(e.file, tree)}:{e.line}: {e.message}" for r in rs for e in r.errors]
            errors += [f"{r.kind}: {r.load_error}" for r in rs if r.load_error]
            assert not errors, f"{label} {layout}: {errors[:10]}"
            print(f"\n[metal-check] {label} {layout}: {len(rs)} libraries, 0 errors, "
                  f"{sum(len(r.gaps) for r in rs)} known shim gaps", end="")
        assert not rep.problems, f"{label}: {rep.problems}"
    libs = {r.kind for r in rp.results}
    assert {"quantize", "fa_aux", "fa_vec_turbo"} <= libs
    assert len(rp.results) == 3 * len(libs)
    extra = mc.new_gaps(rp, patched, rb, base)
    assert not extra, [f"{mc.relpath(g.file, patched)}:{g.line}: {g.message}" for g in extra]
    print(f"\n[metal-check] upstream + patched, 3 layouts each: {seconds:.0f} s")


def test_turbo_libraries_type_check_on_older_metal_and_without_bfloat(
        mc: ModuleType, clang: str, trees: tuple[Path, Path], cache: dict[str, Any]) -> None:
    """The other preprocessor branches of the turbo code: MSL 3.1 (no fp math_mode pragma) and
    3.0 (no bfloat), and a device without bfloat, in every layout."""
    base, patched = trees
    libs = {"quantize", "fa_aux", "fa_vec_turbo"}
    for defines in (["__METAL_VERSION__=310", "__METAL_MACOS__", "GGML_METAL_HAS_BF16=1"],
                    ["__METAL_VERSION__=300", "__METAL_MACOS__"],
                    ["__METAL_VERSION__=320", "__METAL_MACOS__"]):
        rb = mc.check_tree(base, mc.LAYOUTS, clang, 2, libs, cache=cache, defines=defines)
        rep = mc.check_tree(patched, mc.LAYOUTS, clang, 2, libs, cache=cache, defines=defines)
        errors = [f"{r.layout} {r.kind}: {mc.relpath(e.file, patched)}:{e.line}: {e.message}"
                  for r in rep.results for e in r.errors] + [r.load_error for r in rep.results if r.load_error]
        assert not errors and not rep.problems, (defines, errors[:10], rep.problems)
        assert not mc.new_gaps(rep, patched, rb, base), defines
        print(f"\n[metal-check] {' '.join(defines)}: turbo libraries pass in {len(rep.results)} units", end="")


# (name, file under ggml/src, text, replacement, libraries to check, layouts, caught?)
FAULTS = [
    ("mismatched block type in an instantiation", "ggml-metal/kernels/quantize.metal",
     "kernel_get_rows_q<block_turbo3,  4,     dequantize_turbo3>",
     "kernel_get_rows_q<block_turbo3,  4,     dequantize_turbo4>", ["quantize"], ["src"], True),
    ("device pointer passed where thread is expected", "ggml-turbo/turbo-metal.h",
     "quantize_block(x, &tmp);", "quantize_block(x, &dst);", ["quantize"], ["src"], True),
    ("thread pointer passed where device is expected", "ggml-turbo/turbo-metal.h",
     "        reg_f[i] = value(xb, 4 * il + i);",
     "        block_t copy; reg_f[i] = value(&copy, 4 * il + i);", ["fa_vec_turbo"], ["src"], True),
    ("write to a constant table", "ggml-turbo/turbo-impl.h",
     "    const int e0 = turbo_first_scale_impl(amax);",
     "    const int e0 = turbo_first_scale_impl(amax); turbo_thr[0] = amax;", ["quantize"], ["src"], True),
    ("double in Metal code", "ggml-turbo/turbo-impl.h",
     "        const float inv = turbo_inv_scale[b];", "        const double inv = turbo_inv_scale[b];",
     ["quantize"], ["src"], True),
    ("16-value dequantizer where the 4-value one is expected", "ggml-metal/kernels/fa_vec_turbo.metal",
     "block_turbo4, 16, dequantize_turbo4_t4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 2>",
     "block_turbo4, 16, dequantize_turbo4, block_turbo4, 16, dequantize_turbo4_t4, 64, 64, 2>",
     ["fa_vec_turbo"], ["src"], True),
    ("undeclared helper", "ggml-metal/kernels/fa_aux.metal",
     "QK_TURBO, dequantize_turbo2>;", "QK_TURBO, dequantize_turbo5>;", ["fa_aux"], ["src"], True),
    ("codec include that only resolves next to the includer", "ggml-metal/kernels/fa_aux.metal",
     '#include "ggml-turbo/turbo-metal.h"', '#include "turbo-metal.h"', ["fa_aux"], ["embed", "bin", "src"], True),
    ("codec header missing from the embed recipe and the bin copies", "ggml-metal/CMakeLists.txt",
     '    "${CMAKE_CURRENT_SOURCE_DIR}/../ggml-turbo/turbo-impl.h"\n', "", ["quantize"], ["embed", "bin"], True),
    ("non-inline function with external linkage in a header of several libraries", "ggml-turbo/turbo-metal.h",
     "inline void quantize_turbo4(", "void quantize_turbo4(", ["quantize", "fa_aux", "fa_vec_turbo"], ["src"], True),
    ("struct assignment into device memory (a shim gap upstream does not have)", "ggml-turbo/turbo-metal.h",
     "    quantize_block(x, &tmp);\n", "    quantize_block(x, &tmp);\n    dst = tmp;\n", ["quantize"], ["src"], True),
    # the known gap: clang lets a C-style cast change the address space (Metal does not)
    ("C-style cast between address spaces", "ggml-turbo/turbo-metal.h",
     "device uint8_t * d = (device uint8_t *) &dst;", "thread uint8_t * d = (thread uint8_t *) &dst;",
     ["quantize"], ["src"], False),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f[0] for f in FAULTS])
def test_injected_faults_are_caught(mc: ModuleType, clang: str, trees: tuple[Path, Path], cache: dict[str, Any],
                                    tmp_path: Path,
                                    fault: tuple[str, str, str, str, list[str], list[str], bool]) -> None:
    name, rel, old, new, only, layouts, caught = fault
    base, patched = trees
    tree = tmp_path / "tree"
    shutil.copytree(patched, tree)
    path = tree / "ggml" / "src" / rel
    text = path.read_text()
    assert text.count(old) == 1, f"{rel}: the text to replace is not there once: {old!r}"
    path.write_text(text.replace(old, new))
    rb = mc.check_tree(base, layouts, clang, 2, set(only), cache=cache)
    rep = mc.check_tree(tree, layouts, clang, 2, set(only), cache=cache)
    extra = mc.new_gaps(rep, tree, rb, base)
    per_layout = {}
    for layout in layouts:
        rs = [r for r in rep.results if r.layout == layout]
        per_layout[layout] = (sum(len(r.errors) for r in rs) + sum(1 for r in rs if r.load_error)
                              + sum(1 for p in rep.problems if p.startswith(f"{layout}:"))
                              + sum(1 for g in extra if any(g in r.gaps for r in rs)))
    summary = ", ".join(f"{k}: {v} errors" for k, v in per_layout.items())
    print(f"\n[metal-check fault] {name}: {'caught' if all(per_layout.values()) else 'NOT caught'} ({summary})")
    if caught:
        assert all(per_layout.values()), f"{name}: not caught in every layout: {summary}"
    else:
        assert not any(per_layout.values()), (
            f"{name}: now caught ({summary}): remove it from the known gaps in scripts/metal_check/README.md")


def test_checker_cli_reports_a_failing_tree(clang: str, trees: tuple[Path, Path], tmp_path: Path) -> None:
    """The command line: exit 1 and the error on a tree whose source layout cannot load."""
    _, patched = trees
    tree = tmp_path / "tree"
    shutil.copytree(patched, tree)
    deq = tree / "ggml" / "src" / "ggml-metal" / "kernels" / "dequantize.h"
    deq.write_text(deq.read_text() + '\n#include "turbo-metal.h"\n')
    res = subprocess.run([sys.executable, str(CHECKER), str(tree), "--layout", "src", "--only", "mul_mv",
                          "--clang", clang], capture_output=True, text=True)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'could not resolve include "turbo-metal.h"' in res.stdout
    assert "metal-check: 1 errors" in res.stdout
