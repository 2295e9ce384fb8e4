"""The codec headers as the Metal compiler sees them define nothing that two Metal libraries
(or two .air files of one metallib) could both define: compiled by clang over the Metal
shim of scripts/metal_check (fast; skipped without clang++), every table is `static`,
every function `static inline`, except the helpers a kernel template takes as a template
argument (`inline`, external linkage: an internal-linkage argument would give the kernel
internal linkage too) -- and the header chain compiles on its own."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kernels.conftest import include_flags

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "scripts" / "metal_check" / "shim"
# used as template arguments of kernel templates (quantize.metal instantiates kernels with them)
TEMPLATE_ARGUMENTS = {"quantize_turbo2", "quantize_turbo3", "quantize_turbo4"}


def clang() -> str:
    for name in ("clang++-19", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("clang++ is needed (Debian: clang-19, installed by .ci/run)")
    raise AssertionError  # unreachable


def top_level_decls(tmp_path: Path) -> list[tuple[str, str, dict[str, object]]]:
    tu = tmp_path / "tu.cpp"
    tu.write_text('#include "ggml-turbo/turbo-metal.h"\n')
    cmd = [clang(), "-x", "c++", "-std=c++23", "-nostdinc++", "-ffreestanding", "-fsyntax-only",
           "-isystem", str(SHIM), "-include", "metal_stdlib", "-D__METAL_VERSION__=320", *include_flags(), str(tu)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"turbo-metal.h does not compile on its own for Metal:\n{res.stderr[-3000:]}"
    dump = subprocess.run([*cmd, "-Xclang", "-ast-dump=json"], capture_output=True, text=True, check=True)
    out, cur = [], ""
    for node in json.loads(dump.stdout)["inner"]:
        loc = node.get("loc", {})
        f = loc.get("file") or loc.get("spellingLoc", {}).get("file") or loc.get("expansionLoc", {}).get("file")
        cur = f or cur  # clang's JSON names the file only where it changes
        if "/ggml-turbo/" in cur:
            out.append((Path(cur).name, node["kind"], node))
    return out


def test_codec_headers_have_only_internal_or_inline_definitions_on_metal(tmp_path: Path) -> None:
    decls = top_level_decls(tmp_path)
    assert {f for f, _, _ in decls} >= {"turbo-codebooks.h", "turbo.h", "turbo-impl.h", "turbo-metal.h"}
    bad = []
    tables = functions = 0
    for f, kind, node in decls:
        name = str(node.get("name"))
        if kind == "VarDecl":
            tables += 1
            if node.get("storageClass") != "static":
                bad.append(f"{f}: table {name} has external linkage (make it static constant)")
        elif kind == "FunctionDecl":
            functions += 1
            if name in TEMPLATE_ARGUMENTS:
                if not node.get("inline") or node.get("storageClass") == "static":
                    bad.append(f"{f}: {name} must be inline with external linkage (a kernel template argument)")
            elif not (node.get("inline") and node.get("storageClass") == "static"):
                bad.append(f"{f}: function {name} is not static inline")
    assert not bad, bad
    assert tables >= 9 and functions >= 6, (tables, functions)
