"""The series' CUDA sources compile on a machine with nvcc and no GPU (CI): every ggml-cuda
``.cu`` file the patch series adds or changes, from the patched tree of the real build, for one
architecture (sm_90, the H200's). cuBLAS is not part of nvcc's toolkit here, so its header is
a declarations-only stand-in (tests/kernels/cuda_shim/cublas_v2.h): compiled, never linked.
The full CUDA build and its test-backend-ops run need a GPU machine (README, "CUDA")."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from turboctl.build import manifest
from turboctl.build.patches import load_series

from .conftest import REPO

pytestmark = pytest.mark.slow

SHIM = REPO / "tests" / "kernels" / "cuda_shim"
ARCH = "sm_90"


def series_cuda_sources() -> list[str]:
    """Paths (in the tree) of the ggml-cuda .cu files the series adds or changes."""
    paths: set[str] = set()
    for patch in load_series(REPO / "patches").patches:
        text = patch.path.read_text(errors="replace")
        paths.update(re.findall(r"(?m)^\+\+\+ b/(ggml/src/ggml-cuda/[^\s]+\.cu)$", text))
    return sorted(paths)


def test_the_series_touches_cuda_sources() -> None:
    found = series_cuda_sources()
    assert "ggml/src/ggml-cuda/turbo.cu" in found and "ggml/src/ggml-cuda/ggml-cuda.cu" in found, found


@pytest.mark.parametrize("path", series_cuda_sources())
def test_the_series_cuda_sources_compile(llama_build: manifest.Manifest, path: str, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.fail("nvcc is needed: CI compiles the series' CUDA sources (install the CUDA toolkit)")
    src = Path(llama_build.source.path)
    cuda = src / "ggml" / "src" / "ggml-cuda"
    # the flags the CUDA build gives these files (ggml-cuda/CMakeLists.txt): C++17, no FA
    # kernels needed to compile them, --fmad=false for turbo.cu (set on that file there)
    flags = ["--fmad=false"] if path.endswith("/turbo.cu") else []
    cmd = [nvcc, "-std=c++17", f"-arch={ARCH}", *flags, "-Werror", "all-warnings", "-c", str(src / path),
           f"-I{cuda}", f"-I{src / 'ggml' / 'src'}", f"-I{src / 'ggml' / 'include'}", f"-I{SHIM}",
           "-o", str(tmp_path / "out.o")]
    started = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr[-6000:]}"
    print(f"\n[cuda] {path} compiled for {ARCH} in {time.monotonic() - started:.1f} s")
    cmake = (cuda / "CMakeLists.txt").read_text()
    assert 'set_source_files_properties(turbo.cu PROPERTIES COMPILE_OPTIONS "--fmad=false")' in cmake
