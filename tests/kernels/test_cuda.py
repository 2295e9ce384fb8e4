"""The CUDA codec (kernels/turbo-cuda.cuh: turbo-impl.h compiled as device code) built standalone
with nvcc by scripts/cuda_codec_check: it compiles for one architecture wherever nvcc is (CI has
nvcc and no GPU), and on a machine with an NVIDIA GPU it must reproduce the scalar reference
byte for byte (quantize) and bit for bit (dequantize)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kernels.conftest import KERNELS, include_flags
from tests.kernels.test_metal_patch import make_codec_patch, new_files

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cuda_codec_check"


def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.skip("nvcc is needed (the CUDA toolkit)")
    return nvcc


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    res = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return res.returncode == 0 and "GPU " in res.stdout


def test_the_cuda_codec_compiles_for_one_architecture(tmp_path: Path) -> None:
    _nvcc()
    res = subprocess.run([str(SCRIPT), "--compile-only", "--arch", "sm_90", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("cuda codec: compiled for sm_90")
    assert (tmp_path / "cuda_codec_check").is_file()


@pytest.mark.skipif(not _has_gpu(), reason="no NVIDIA GPU here (nvidia-smi -L lists none)")
def test_the_cuda_codec_is_the_reference_on_the_gpu(tmp_path: Path) -> None:
    _nvcc()
    res = subprocess.run([str(SCRIPT), "--out", str(tmp_path), "20000"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "cuda codec: ok"
    for t in ("turbo4", "turbo3", "turbo2"):
        assert (f"{t}: 20015 blocks; quantize: 0 differ from the reference; dequantize: 0 values differ (one by "
                "one), 0 (in pairs)") in lines


def test_the_tables_must_be_device_memory(tmp_path: Path) -> None:
    """Including a codec header before turbo-impl.h in CUDA code would put the tables in host
    memory, where device code cannot read them: it is a compile error that says what to do."""
    nvcc = _nvcc()
    src = tmp_path / "wrong-order.cu"
    src.write_text('#include "ggml-turbo/turbo.h"\n#include "ggml-turbo/turbo-cuda.cuh"\n')
    res = subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", "-c", *include_flags(), str(src), "-o",
                          str(tmp_path / "x.o")], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "turbo-impl.h: include it before any other codec header in CUDA code (the tables must be __device__)" \
        in res.stderr


def test_the_script_says_what_is_missing(tmp_path: Path) -> None:
    res = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert res.returncode == 2 and "cuda_codec_check: unknown option --bogus" in res.stderr
    bare = "/usr/bin:/bin"
    if shutil.which("nvcc", path=bare):
        pytest.skip("nvcc is on the system path here")
    res = subprocess.run(["/bin/bash", str(SCRIPT), "--compile-only"], capture_output=True, text=True,
                         env={"PATH": bare})
    assert res.returncode == 2 and "cuda_codec_check: nvcc not found (install the CUDA toolkit)" in res.stderr
    assert (KERNELS / "turbo-cuda.cuh").is_file()


def test_cuda_only_files_are_in_the_cuda_patch_byte_for_byte() -> None:
    mcp = make_codec_patch()
    patch = mcp.cuda_patch()
    added = new_files(patch.read_text())
    assert mcp.CUDA_ONLY and not set(mcp.CUDA_ONLY) & set(mcp.FILES)
    for name, dest in mcp.CUDA_ONLY.items():
        path = f"{dest}/{name}"
        assert path in added, f"{patch.name} does not add {path}"
        assert added[path] == (KERNELS / name).read_bytes(), (
            f"{path} in {patch.name} differs from kernels/{name}: copy kernels/{name} into the tree, commit it into "
            "the CUDA patch and re-export the series")
