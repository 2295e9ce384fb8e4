"""Build the codec in kernels/ standalone (the same C sources the patch series wires into
ggml) as shared libraries for the tests: the native SIMD variant and the scalar one."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
SOURCES = [KERNELS / "turbo-ref.c", KERNELS / "turbo-cpu.c"]
BASE_FLAGS = ["-std=c11", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]

_include_root: list[Path] = []


def include_flags() -> list[str]:
    """-I flags that compile kernels/ the way the patched tree does: the codec headers include
    each other as "ggml-turbo/<name>" (a path under ggml/src), so a temporary include root
    holds a `ggml-turbo` link to kernels/."""
    if not _include_root:
        root = Path(tempfile.mkdtemp(prefix="turbo-include-"))
        (root / "ggml-turbo").symlink_to(KERNELS, target_is_directory=True)
        _include_root.append(root)
    return ["-I", str(KERNELS), "-I", str(_include_root[0])]


def cc() -> str:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    pytest.skip("no C compiler found")
    raise AssertionError  # unreachable


def has_avx2() -> bool:
    try:
        return " avx2 " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


class TurboLib:
    """ctypes view of one build of the codec."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = ctypes.CDLL(str(path))

    def _fn(self, name: str, res: object, args: list[object]):  # type: ignore[no-untyped-def]
        f = getattr(self.lib, name)
        f.restype = res
        f.argtypes = args
        return f

    def quantize(self, bits: int, x: np.ndarray, ref: bool) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        out = np.zeros(x.size // 64 * {4: 34, 3: 26, 2: 18}[bits], dtype=np.uint8)
        name = f"turbo{bits}_quantize_row_ref" if ref else f"turbo{bits}_quantize_row"
        self._fn(name, None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64])(
            x.ctypes.data, out.ctypes.data, x.size)
        return out

    def dequantize(self, bits: int, data: np.ndarray, ref: bool) -> np.ndarray:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        k = data.size // {4: 34, 3: 26, 2: 18}[bits] * 64
        out = np.zeros(k, dtype=np.float32)
        name = f"turbo{bits}_dequantize_row_ref" if ref else f"turbo{bits}_dequantize_row"
        self._fn(name, None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64])(
            data.ctypes.data, out.ctypes.data, k)
        return out

    def vec_dot(self, bits: int, n: int, x: np.ndarray, y: np.ndarray) -> float:
        s = ctypes.c_float(0.0)
        x = np.ascontiguousarray(x)
        y = np.ascontiguousarray(y)
        self._fn(f"turbo{bits}_vec_dot_q8_0", None,
                 [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                  ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])(
            n, ctypes.byref(s), 0, x.ctypes.data, 0, y.ctypes.data, 0, 1)
        return s.value

    def signs(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        self._fn("turbo_rot_signs", None, [ctypes.c_void_p, ctypes.c_int64])(out.ctypes.data, n)
        return out

    def first_scale(self, amax: float) -> int:
        return int(self._fn("turbo_first_scale", ctypes.c_int, [ctypes.c_float])(amax))


def has_simd_quantizer(binary: Path, isa: str, objdump: str = "objdump") -> bool:
    """Whether turbo4_quantize_row in ``binary`` is the SIMD one of ``isa`` ("avx2": it uses
    ymm registers; "neon": it calls or inlines turbo_quantize_sub_neon, v-registers), not
    the scalar fallback: which implementation the build compiled."""
    tool = shutil.which(objdump)
    if not tool:
        pytest.skip(f"{objdump} is needed to inspect the compiled kernels")
    res = subprocess.run([tool, "-d", "--disassemble=turbo4_quantize_row", str(binary)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "<turbo4_quantize_row>:" in res.stdout, f"{binary} has no turbo4_quantize_row"
    marks = {"avx2": ("%ymm",), "neon": (".4s", "<turbo_quantize_sub_neon")}[isa]
    return any(m in res.stdout for m in marks)


def _build(tmp: Path, name: str, extra: list[str]) -> Path:
    out = tmp / f"libturbo-{name}.so"
    cmd = [cc(), *BASE_FLAGS, *extra, *include_flags(), *map(str, SOURCES), "-o", str(out), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"compiling the codec failed:\n{' '.join(cmd)}\n{res.stderr}")
    return out


@pytest.fixture(scope="session")
def kernel_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("turbo-kernels")


@pytest.fixture(scope="session")
def scalar_lib(kernel_build_dir: Path) -> TurboLib:
    return TurboLib(_build(kernel_build_dir, "scalar", []))


@pytest.fixture(scope="session")
def simd_lib(kernel_build_dir: Path) -> TurboLib:
    if not has_avx2():
        pytest.skip("this CPU has no AVX2")
    lib = TurboLib(_build(kernel_build_dir, "avx2", ["-mavx2", "-mfma", "-mf16c"]))
    assert has_simd_quantizer(lib.path, "avx2"), "the AVX2 build has no AVX2 quantizer"
    return lib


@pytest.fixture(scope="session", params=["scalar", "avx2"])
def any_lib(request: pytest.FixtureRequest) -> TurboLib:
    return request.getfixturevalue("scalar_lib" if request.param == "scalar" else "simd_lib")


def q8_0(y: np.ndarray) -> np.ndarray:
    """ggml q8_0 blocks (fp16 d, 32 x int8) of y as raw bytes, and their dequantized values."""
    yb = np.asarray(y, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(yb).max(axis=1)
    d = (amax / 127).astype(np.float16)
    df = d.astype(np.float32)
    q = np.where(df[:, None] > 0, np.round(yb / np.where(df > 0, df, 1)[:, None]), 0).clip(-127, 127).astype(np.int8)
    raw = np.zeros((yb.shape[0], 34), dtype=np.uint8)
    raw[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    raw[:, 2:] = q.view(np.uint8)
    return raw.reshape(-1)


def q8_0_values(raw: np.ndarray) -> np.ndarray:
    r = raw.reshape(-1, 34)
    d = r[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(-1)
    q = r[:, 2:].view(np.int8).astype(np.float32)
    return (q * d[:, None]).reshape(-1)
