"""Slow: the backend self-test on the real CPU build: recorded by the build, honoured by the
gate and doctor, and re-run by ``turboctl selftest``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import slow_home
from tests.integration.tinymodel import write_tiny_model
from turboctl.build import gate, manifest
from turboctl.errors import GateRefused
from turboctl.paths import Paths

pytestmark = pytest.mark.slow


def turboctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turboctl", *args], text=True, capture_output=True, check=False,
                          env=dict(os.environ, TURBOCTL_HOME=str(slow_home())))


def test_build_recorded_a_passing_selftest(llama_build: manifest.Manifest) -> None:
    st = llama_build.selftest
    assert st is not None, "the build ran without the self-test"
    assert st.status == "pass", (st.reason, [c.label() for c in st.failing[:5]])
    assert st.device == "CPU" and st.command[1:] == ["-b", "CPU", "-p", "turbo", "--output", "sql"]
    assert set(st.per_op) == {"SET_ROWS", "GET_ROWS", "CPY", "FLASH_ATTN_EXT", "K_SHIFT"}
    assert set(st.per_type) == {"turbo2", "turbo3", "turbo4"}
    assert {"turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2", "q8_0/turbo3"} <= set(st.per_pair)
    assert st.counts.failed == 0 and st.counts.unsupported == 0 and st.counts.passed > 0
    # the K-shift graph of every turbo type (and q8_0), and FLASH_ATTN_EXT beyond the table:
    # K/V head dims that differ (optional), softcap / sinks / ALiBi (optional)
    assert st.per_op["K_SHIFT"].passed == 76
    assert st.fa_cases is not None and len(st.fa_cases) == st.per_op["FLASH_ATTN_EXT"].passed
    assert {(c.hsk, c.hsv) for c in st.fa_cases} == {(64, 64), (128, 128), (256, 256), (512, 512), (256, 128),
                                                     (128, 64)}
    assert all(c.result == "passed" for c in st.fa_cases) and any(c.optional for c in st.fa_cases)
    print(f"\n[selftest] {st.counts.total} cases in {st.duration_s} s ({len(st.fa_cases)} FLASH_ATTN_EXT, "
          f"{sum(c.optional for c in st.fa_cases)} optional)")
    assert st.binary_sha256 == llama_build.binaries["test-backend-ops"].sha256
    assert any(name.startswith("libggml-cpu") for name in st.libraries) or not st.libraries
    assert gate.stale_reason(llama_build, st) is None
    for k, v in (("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"), ("q8_0", "turbo3")):
        gate.check_kv_types(llama_build, k, v)
    with pytest.raises(GateRefused, match="no FLASH_ATTN_EXT case for this K/V pair"):
        gate.check_kv_types(llama_build, "turbo2", "q8_0")
    # head dims: the CPU ran dk != dv cases, so a Gemma-like 256/128 layer passes; 128/256 has no case
    gate.check_kv_head_dims(llama_build, "turbo4", "turbo3", {(256, 128): [0], (128, 128): [1]})
    with pytest.raises(GateRefused, match=r"no FLASH_ATTN_EXT case for this pair at head dims K 128 / V 256"):
        gate.check_kv_head_dims(llama_build, "turbo4", "turbo3", {(128, 256): [0]})


def test_bench_refuses_an_off_table_pair_before_starting(llama_build: manifest.Manifest, tmp_path: Path) -> None:
    """No silent CPU fallback: a K/V pair the self-test never ran (turbo2/f16: not in
    turbo-fa.h, so no GPU kernel) is refused by turboctl before llama.cpp starts."""
    model = write_tiny_model(tmp_path / "tiny.gguf")
    corpus = tmp_path / "text.txt"
    corpus.write_text("the cache of the model was the first key to the value\n" * 200)
    logs = slow_home() / "logs"
    before = set(logs.glob("bench-*.log"))
    started = time.monotonic()
    res = turboctl("bench", "kld", "--model", str(model), "--corpus", str(corpus), "--kv", "f16",
                   "--kv", "turbo2/f16")
    seconds = time.monotonic() - started
    assert res.returncode == 12, res.stderr[-3000:]
    first = res.stderr.splitlines()[0]
    assert first.startswith("error: refusing K=turbo2 V=f16 on the cpu backend: the self-test has no "
                            "FLASH_ATTN_EXT case for this K/V pair, so nothing shows it runs on CPU (pairs with "
                            "turbo2 it covers: turbo2/turbo2, ")
    assert all(p in first for p in ("turbo4/turbo2", "f16/turbo2", "q8_0/turbo2", "turbo2/turbo3"))
    assert "turbo4/turbo4" not in first
    assert "llama-perplexity" not in res.stderr
    assert set(logs.glob("bench-*.log")) == before  # refused before it planned a run
    print(f"\n[gate] refused in {seconds:.1f} s: {first}")
    res = turboctl("bench", "speed", "--model", str(model), "--kv", "turbo2/f16")
    assert res.returncode == 12 and "refusing K=turbo2 V=f16" in res.stderr
    assert set(logs.glob("bench-*.log")) == before


def test_selftest_command_and_doctor(llama_build: manifest.Manifest) -> None:
    res = turboctl("selftest", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    st = doc["selftest"]
    print(f"\n[selftest] {st['counts']} in {st['duration_s']} s")
    assert st["status"] == "pass" and st["counts"]["passed"] == llama_build.selftest.counts.passed  # type: ignore[union-attr]
    assert Path(st["output"]).read_text().startswith("CREATE TABLE IF NOT EXISTS test_backend_ops")
    m = manifest.load_current(Paths(slow_home()))
    assert m is not None and m.selftest is not None and m.selftest.when == st["when"]
    res = turboctl("doctor", "--json")
    assert res.returncode in (0, 10), res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["selftest"]["status"] == "pass" and report["selftest"]["stale"] is None
    check = next(c for c in report["checks"] if c["name"] == "self-test")
    assert check["status"] == "ok" and check["detail"].startswith("pass: ")
