"""Slow: the backend self-test on the real CPU build: recorded by the build, honoured by the
gate and doctor, and re-run by ``turboctl selftest``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import slow_home
from turboctl import gate, manifest
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
    assert set(st.per_op) == {"SET_ROWS", "GET_ROWS", "CPY", "FLASH_ATTN_EXT"}
    assert set(st.per_type) == {"turbo2", "turbo3", "turbo4"}
    assert {"turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2", "q8_0/turbo3"} <= set(st.per_pair)
    assert st.counts.failed == 0 and st.counts.unsupported == 0 and st.counts.passed > 0
    assert st.binary_sha256 == llama_build.binaries["test-backend-ops"].sha256
    assert any(name.startswith("libggml-cpu") for name in st.libraries) or not st.libraries
    assert gate.stale_reason(llama_build, st) is None
    for k, v in (("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"), ("q8_0", "turbo3")):
        gate.check_kv_types(llama_build, k, v)
    with pytest.raises(GateRefused, match="no FLASH_ATTN_EXT case for this K/V pair"):
        gate.check_kv_types(llama_build, "turbo2", "q8_0")


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
