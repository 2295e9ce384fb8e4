"""scripts/cuda_trace.cpp (a CUPTI timeline recorder) compiles, and scripts/cuda_trace_report.py
finds the decode steps of a timeline and what fills and what interrupts them."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
HEADER = ["kind", "start_ns", "end_ns", "stream", "name", "grid", "block", "bytes"]


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cuda_trace_report", REPO / "scripts" / "cuda_trace_report.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cuda_trace_report"] = mod
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rows: list[tuple[object, ...]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def _step(t0: int, with_copy: bool) -> list[tuple[object, ...]]:
    # two kernels 10 us each with a 3 us hole between them, then (maybe) a 1 us copy
    rows: list[tuple[object, ...]] = [
        ("kernel", t0, t0 + 10_000, 7, "attn(int, float)", "1x1x1", "32x1x1", 0),
        ("kernel", t0 + 13_000, t0 + 23_000, 7, "matmul", "8x1x1", "128x1x1", 0),
    ]
    if with_copy:
        rows.append(("memcpy", t0 + 23_500, t0 + 24_500, 7, "copy-kind-1", "", "", 65536))
    rows.append(("runtime", t0 + 30_000, t0 + 35_000, 1, "cudaStreamSynchronize_v3020", "", "", 0))
    return rows


def test_the_report_averages_the_decode_steps(tmp_path: Path) -> None:
    rows: list[tuple[object, ...]] = [("memcpy", 0, 50_000, 7, "copy-kind-1", "", "", 1 << 20)]  # loading: no kernels
    rows.append(("kernel", 500_000, 501_000, 7, "lonely", "1x1x1", "1x1x1", 0))  # another kind of step
    for i in range(4):
        rows += _step(1_000_000 + i * 100_000, with_copy=True)
    r = _report().report(*_report().load(_write(tmp_path / "t.csv", rows)), 40.0, 10)
    # the last 2-kernel step has no successor to measure its wall time against: 3 steps
    assert r["steps"] == 3 and r["kernels_per_step"] == 2
    assert r["wall_us"] == 100.0
    assert r["gpu_span_us"] == 24.5 and r["gpu_busy_us"] == 21.0 and r["idle_in_step_us"] == 3.5
    assert r["kernels"][0] == {"name": "attn", "per_step": 1.0, "us_per_step": 10.0, "us_each": 10.0}
    assert r["copies"] == [{"what": "memcpy copy-kind-1", "per_step": 1.0, "us_per_step": 1.0,
                            "bytes_per_step": 65536}]
    assert r["gaps"][0] == {"after": "attn", "before": "matmul", "per_step": 1.0, "us_per_step": 3.0}
    assert r["host_api"] == [{"call": "cudaStreamSynchronize_v3020", "per_step": 1.0, "us_per_step": 5.0}]


def test_the_report_names_a_bad_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", [("kernel", "soon", 5, 7, "k", "", "", 0)])
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "cuda_trace_report.py"), str(path)],
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0
    assert f"cuda_trace_report: {path}, line 2: not a cuda_trace record" in res.stderr


def test_the_report_says_when_there_are_no_kernels(tmp_path: Path) -> None:
    path = _write(tmp_path / "copies.csv", [("memcpy", 0, 10, 7, "copy-kind-1", "", "", 4)])
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "cuda_trace_report.py"), str(path)],
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0 and "cuda_trace_report: the trace has no kernels" in res.stderr


def test_the_report_says_when_the_file_is_missing(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "cuda_trace_report.py"), str(tmp_path / "no.csv")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2 and f"cuda_trace_report: {tmp_path / 'no.csv'} is not a file" in res.stderr


def test_the_recorder_compiles_against_cupti(tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.skip("nvcc is needed (the CUDA toolkit, which ships CUPTI)")
    # nvcc may be a wrapper script: also the toolkit's usual homes
    roots = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    roots += [Path(nvcc).resolve().parents[1], Path("/usr/local/cuda")]
    include = next((d for r in roots for d in (r / "include", r / "extras" / "CUPTI" / "include")
                    if (d / "cupti.h").is_file()), None)
    if include is None:
        pytest.skip(f"no cupti.h under {', '.join(map(str, roots))}")
    # compile only: linking needs libcupti, which a toolkit without a driver may lack
    res = subprocess.run(["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-c",
                          str(REPO / "scripts" / "cuda_trace.cpp"), f"-I{include}", "-o", str(tmp_path / "t.o")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
