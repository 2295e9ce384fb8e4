"""The series' CUDA sources compile on a machine with nvcc and no GPU (CI): every ggml-cuda
``.cu`` file the patch series adds or changes, from the patched tree of the real build, for one
architecture (sm_90, the H200's). cuBLAS is not part of nvcc's toolkit here, so its header is
a declarations-only stand-in (tests/kernels/cuda_shim/cublas_v2.h): compiled, never linked.
The full CUDA build and its test-backend-ops run need a GPU machine (README, "CUDA")."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turboctl.build import manifest
from turboctl.build.patches import load_series

from .conftest import REPO

pytestmark = pytest.mark.slow

SHIM = REPO / "tests" / "kernels" / "cuda_shim"
ARCH = "sm_90"


def fa_defines(src: Path) -> list[str]:
    """-DGGML_CUDA_FA_<K>_<V>=0/1 as the tree's CMake sets them by default: 1 for the vector
    instances of GGML_CUDA_FA_QUANTS (ggml/CMakeLists.txt), 0 for the other combinations of
    FA_TYPES (ggml/cmake/common.cmake)."""
    types = re.search(r"set\(FA_TYPES ([^)]*)\)", (src / "ggml" / "cmake" / "common.cmake").read_text())
    quants = re.search(r'set\s*\(GGML_CUDA_FA_QUANTS "([^"]*)"', (src / "ggml" / "CMakeLists.txt").read_text())
    assert types and quants, "the tree's CMake no longer sets FA_TYPES / GGML_CUDA_FA_QUANTS the expected way"
    names = types.group(1).split()
    on = {tuple(c.split("-")) for c in quants.group(1).split(";")}
    return [f"-DGGML_CUDA_FA_{k.upper()}_{v.upper()}={int((k, v) in on)}" for k in names for v in names]


def series_cuda_sources() -> list[str]:
    """Paths (in the tree) of the ggml-cuda .cu files the series adds or changes."""
    paths: set[str] = set()
    for patch in load_series(REPO / "patches").patches:
        text = patch.path.read_text(errors="replace")
        paths.update(re.findall(r"(?m)^\+\+\+ b/(ggml/src/ggml-cuda/[^\s]+\.cu)$", text))
    return sorted(paths)


def test_the_series_touches_cuda_sources() -> None:
    found = series_cuda_sources()
    for name in ("turbo.cu", "ggml-cuda.cu", "fattn.cu", "convert.cu",
                 "template-instances/fattn-vec-turbo-turbo4-turbo4.cu"):
        assert f"ggml/src/ggml-cuda/{name}" in found, found


@pytest.mark.parametrize("path", series_cuda_sources())
def test_the_series_cuda_sources_compile(llama_build: manifest.Manifest, path: str, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.fail("nvcc is needed: CI compiles the series' CUDA sources (install the CUDA toolkit)")
    src = Path(llama_build.source.path)
    cuda = src / "ggml" / "src" / "ggml-cuda"
    # the flags the CUDA build gives these files (ggml-cuda/CMakeLists.txt): C++17, fast math,
    # extended lambdas, the default FA type combinations' switches (ggml/cmake/common.cmake),
    # --fmad=false for turbo.cu (set on that file there, after the others)
    flags = ["-use_fast_math", "-extended-lambda", *fa_defines(src)]
    if path.endswith("/turbo.cu"):
        flags.append("--fmad=false")
    cmd = [nvcc, "-std=c++17", f"-arch={ARCH}", *flags, "-Werror", "all-warnings", "-c", str(src / path),
           f"-I{cuda}", f"-I{src / 'ggml' / 'src'}", f"-I{src / 'ggml' / 'include'}", f"-I{SHIM}",
           "-o", str(tmp_path / "out.o")]
    started = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr[-6000:]}"
    print(f"\n[cuda] {path} compiled for {ARCH} in {time.monotonic() - started:.1f} s")
    cmake = (cuda / "CMakeLists.txt").read_text()
    assert 'set_source_files_properties(turbo.cu PROPERTIES COMPILE_OPTIONS "--fmad=false")' in cmake


def test_the_patched_tree_has_the_generated_fa_instances(llama_build: manifest.Manifest) -> None:
    """kernels/gen_cuda.py --check on the tree the series was applied to: the instances and the
    lookup compiled by the build are the generator's, and no other turbo instance file is there."""
    res = subprocess.run([sys.executable, str(REPO / "kernels" / "gen_cuda.py"), "--tree", llama_build.source.path,
                          "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
