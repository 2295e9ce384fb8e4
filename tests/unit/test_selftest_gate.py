"""The self-test (SQL parsing, summary, verdict), the manifest record, and the serving gate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA
from tests.unit.fakebuild import SQL, edit_sql, fake_build
from turboctl import cmake, gate, manifest, selftest
from turboctl.errors import ConfigError, GateRefused
from turboctl.paths import get_paths
from turboctl.ui import get_ui

GETROWS = DATA / "selftest" / "test-backend-ops-cpu-turbo3-getrows.sql"


def home() -> Path:
    return get_paths().home


# --------------------------------------------------------------------------- parsing
def test_parse_recorded_sql() -> None:
    rows, bad = selftest.parse_sql(SQL.read_text())
    assert bad == 0 and len(rows) == 216
    s = selftest.summarize(rows)
    assert s.counts == manifest.SelftestCounts(passed=216, failed=0, unsupported=0)
    assert {k: v.passed for k, v in s.per_op.items()} == {
        "CPY": 24, "FLASH_ATTN_EXT": 132, "GET_ROWS": 24, "SET_ROWS": 36}
    # a case counts for every turbo type it involves (source, destination, K or V)
    assert {k: v.passed for k, v in s.per_type.items()} == {"turbo2": 40, "turbo3": 88, "turbo4": 100}
    assert list(s.per_pair) == ["turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2", "turbo4/turbo3",
                                "turbo4/f16", "f16/turbo4", "turbo4/q8_0", "q8_0/turbo4", "q8_0/turbo3",
                                "f16/turbo3", "turbo3/q8_0"]
    assert all(v.passed == 12 for v in s.per_pair.values())
    assert s.failing == [] and s.unsupported == []
    assert selftest.verdict(s, returncode=0, timed_out=False, timeout=900, device="CPU") == ("pass", "")


def test_parse_small_recorded_sql_and_param_types() -> None:
    rows, bad = selftest.parse_sql(GETROWS.read_text())
    assert bad == 0 and len(rows) == 8
    assert {r.op for r in rows} == {"GET_ROWS"} and all(r.backend == "CPU" for r in rows)
    assert rows[0].types() == {"type": "turbo3"}
    fa = selftest.CaseRow("CPU", "FLASH_ATTN_EXT", "hsk=64,hsv=64,prec=f32,type_K=q8_0,type_V=turbo3,permute=[0]",
                          True, True, "")
    assert fa.kv_pair() == "q8_0/turbo3" and fa.cache_types() == {"q8_0", "turbo3"}
    sr = selftest.CaseRow("CPU", "SET_ROWS", "type_src=f16,type_dst=turbo2,type_idx=i64,ne=[1]", True, True, "")
    assert sr.types() == {"type_src": "f16", "type_dst": "turbo2"} and sr.kv_pair() is None


def test_failed_and_unsupported_rows() -> None:
    text = edit_sql(SQL.read_text(), "FLASH_ATTN_EXT", "type_K=turbo2,type_V=turbo2", supported=1, passed=0,
                    error="compare failed")
    text = edit_sql(text, "SET_ROWS", "type_dst=turbo3", supported=0, passed=0, error="not supported")
    rows, _ = selftest.parse_sql(text)
    s = selftest.summarize(rows)
    assert s.counts == manifest.SelftestCounts(passed=192, failed=12, unsupported=12)
    assert s.per_pair["turbo2/turbo2"] == manifest.SelftestCounts(failed=12)
    assert s.per_type["turbo3"].unsupported == 12
    assert s.failing[0].error == "compare failed" and s.failing[0].result == "failed"
    assert s.unsupported[0].label().startswith("SET_ROWS(type_src=f32,type_dst=turbo3")
    assert selftest.verdict(s, returncode=1, timed_out=False, timeout=900, device="MTL0") == (
        "fail", "12 failed, 12 not supported on MTL0 of 216 turbo cases")


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("", {"timed_out": True}, "test-backend-ops did not finish within 900 s"),
        ("", {"returncode": -11}, "test-backend-ops was killed by signal 11 (a crash)"),
        ("CREATE TABLE IF NOT EXISTS test_backend_ops (op_name TEXT, test_mode TEXT);\n", {},
         "test-backend-ops found no TurboQuant case for device CPU (the binary lacks the turbo tests, "
         "or the build has no CPU device)"),
    ],
)
def test_verdict_errors(text: str, kwargs: dict[str, object], expected: str) -> None:
    summary = None
    if text:
        rows, _ = selftest.parse_sql(text.replace("op_name TEXT", "backend_name TEXT, op_name TEXT, "
                                                  "op_params TEXT, supported INTEGER, passed INTEGER, "
                                                  "error_message TEXT"))
        summary = selftest.summarize(rows)
    args = {"returncode": 0, "timed_out": False, **kwargs}
    assert selftest.verdict(summary, timeout=900, device="CPU", **args) == ("error", expected)  # type: ignore[arg-type]


def test_truncated_and_noisy_sql() -> None:
    lines = SQL.read_text().splitlines(keepends=True)
    text = "Running FA vec slice tests\n" + "".join(lines[:30]) + lines[30][:80]  # cut mid-statement
    rows, bad = selftest.parse_sql(text)
    assert bad == 1 and len(rows) == 30 - 19  # 19 lines of CREATE TABLE, then one row per line
    s = selftest.summarize(rows)
    assert selftest.verdict(s, returncode=0, timed_out=False, timeout=900, device="CPU", unreadable=bad) == (
        "error", "1 unreadable statement(s) in the SQL output of test-backend-ops")
    problems: list[str] = []
    selftest.parse_sql(text, problems)
    assert problems == ["line 32: the output ends inside this statement (cut short)"]
    # a broken statement in the middle is named by its line too
    broken = "".join(lines[:25]) + "INSERT INTO test_backend_ops (no_such_column) VALUES (1);\n" + "".join(lines[25:])
    problems = []
    rows, bad = selftest.parse_sql(broken, problems)
    assert bad == 1 and len(rows) == 216 and problems == ["line 26: table test_backend_ops has no column named "
                                                          "no_such_column"]
    with pytest.raises(selftest.SqlError, match=r"no test_backend_ops table in the SQL output \(no CREATE TABLE"):
        selftest.parse_sql("Segmentation fault\n")
    with pytest.raises(selftest.SqlError, match="the output is empty"):
        selftest.parse_sql("")


@pytest.mark.parametrize(("output", "returncode", "status", "reason"), [
    # test-backend-ops stopped after 40 lines, in the middle of a statement, yet exited with 0
    ("cut", 0, "error", "1 unreadable statement(s) in the SQL output of test-backend-ops (line 40: the output "
                        "ends inside this statement (cut short))"),
    ("", 0, "error", "{sql}: the output is empty"),
    ("Segmentation fault\n", 0, "error", "{sql}: no test_backend_ops table in the SQL output (no CREATE TABLE "
                                         "statement)"),
    ("all", 0, "pass", ""),
])
def test_selftest_run_reports_what_its_output_lacks(tmp_path: Path, output: str, returncode: int, status: str,
                                                    reason: str) -> None:
    """The self-test run end to end against a stand-in that prints (part of) the recorded SQL."""
    lines = SQL.read_text().splitlines(keepends=True)
    text = {"cut": "".join(lines[:39]) + lines[39][:60], "all": "".join(lines)}.get(output, output)
    (tmp_path / "out.sql").write_text(text)
    binary = tmp_path / "test-backend-ops"
    binary.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(tmp_path / 'out.sql')!r}).read())\n"
                      f"sys.exit({returncode})\n")
    binary.chmod(0o755)
    log = tmp_path / "logs" / "selftest.log"
    record = selftest.run_binary(binary, "cpu", get_paths(), get_ui(), log=log)
    assert (record.status, record.reason) == (status, reason.format(sql=log.with_suffix(".sql")))
    assert record.log == str(log) and record.output == str(log.with_suffix(".sql"))


def test_devices_per_backend() -> None:
    assert {k: b.device for k, b in cmake.BACKENDS.items()} == {"metal": "MTL0", "cuda": "CUDA0", "cpu": "CPU"}


# --------------------------------------------------------------------------- manifest
def test_manifest_v2_round_trip_and_v1_still_read(tmp_path: Path) -> None:
    m = fake_build(home())
    loaded = manifest.load_current(get_paths())
    assert loaded == m and loaded is not None and loaded.selftest is not None
    assert loaded.schema_ == "turboctl.manifest/2"
    assert loaded.selftest.libraries == {"libggml-cpu.so.0.1": loaded.selftest.libraries["libggml-cpu.so.0.1"]}
    v1 = m.to_json_dict()
    v1["schema"] = "turboctl.manifest/1"
    del v1["selftest"]
    old = tmp_path / "v1.json"
    old.write_text(json.dumps(v1))
    read = manifest.load(old)
    assert read.schema_ == manifest.SCHEMA and read.selftest is None  # a v1 build: self-test never ran
    v1["selftest"] = None
    old.write_text(json.dumps(v1))  # a v1 document with v2 keys is not silently accepted
    with pytest.raises(ConfigError, match=r"manifest schema 'turboctl\.manifest/1'"):
        manifest.load(old)


# --------------------------------------------------------------------------- the gate
def refusal(m: manifest.Manifest, k: str, v: str) -> GateRefused:
    with pytest.raises(GateRefused) as err:
        gate.check_kv_types(m, k, v)
    assert err.value.exit_code == 12
    return err.value


def test_gate_passes_tested_pairs_and_plain_types() -> None:
    m = fake_build(home())
    for k, v in [("turbo4", "turbo4"), ("turbo3", "turbo3"), ("turbo2", "turbo2"), ("q8_0", "turbo3"),
                 ("f16", "f16"), ("q4_0", "q4_0"), ("iq4_nl", "iq4_nl"), ("q8_0", "q4_0")]:
        gate.check_kv_types(m, k, v)


def test_gate_refuses_types_the_binary_does_not_accept() -> None:
    upstream = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
    m = fake_build(home(), cache_types=upstream)
    err = refusal(m, "turbo4", "turbo4")
    assert err.message == ("this build's llama.cpp does not accept the KV cache type turbo4 (it accepts "
                           "f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)")
    assert err.hint == "this build lacks the TurboQuant patch series: rebuild with turboctl build"
    err = refusal(fake_build(home(), cache_types=["f16", "q8_0"]), "q8_0", "q4_0")
    assert "does not accept the KV cache type q4_0" in err.message and err.hint == "use one of: f16, q8_0"


def test_gate_without_selftest() -> None:
    m = fake_build(home(), with_selftest=False)
    gate.check_kv_types(m, "q4_0", "q4_0")  # non-turbo types do not need it
    err = refusal(m, "q8_0", "turbo3")
    assert err.message == ("refusing turbo3 on the cpu backend: the backend self-test never ran for this "
                           "build (built with --no-selftest, or by an older turboctl)")
    assert err.hint is not None and err.hint.startswith("run it: turboctl selftest")


def test_gate_refuses_failing_cases_of_the_requested_types() -> None:
    text = edit_sql(SQL.read_text(), "FLASH_ATTN_EXT", "type_K=turbo3,type_V=turbo3", supported=1, passed=0,
                    error="compare failed")
    m = fake_build(home(), sql=text)
    err = refusal(m, "turbo3", "turbo3")
    assert err.message.startswith(
        "refusing K=turbo3 V=turbo3 on the cpu backend: 12 self-test case(s) failed: FLASH_ATTN_EXT(hsk=64,hsv=64,")
    assert err.message.endswith(" and 9 more")
    assert err.message.count("FLASH_ATTN_EXT(") == 3
    assert err.hint is not None
    assert "use q8_0 or q4_0 instead" in err.hint
    assert "open an issue on the turboctl project with the output of `turboctl doctor --json`" in err.hint
    assert str(home() / "logs" / "selftest-fake.log") in err.hint
    assert err.log_path == home() / "logs" / "selftest-fake.log"
    # another type: its own cases pass, but a failed self-test blocks every turbo type
    err = refusal(m, "turbo4", "turbo4")
    assert err.message.startswith("refusing turbo4 on the cpu backend: the backend self-test did not pass "
                                  "(12 failed of 216 turbo cases): FLASH_ATTN_EXT(")
    gate.check_kv_types(m, "q8_0", "q8_0")  # non-turbo types still serve


def test_gate_names_unsupported_cases_as_cpu_fallback() -> None:
    text = edit_sql(SQL.read_text(), "FLASH_ATTN_EXT", "type_K=q8_0,type_V=turbo3", supported=0, passed=0,
                    error="not supported")
    m = fake_build(home(), sql=text, backend="metal")
    err = refusal(m, "q8_0", "turbo3")
    assert err.message.startswith("refusing K=q8_0 V=turbo3 on the metal backend: 12 case(s) not supported "
                                  "on MTL0 (they would fall back to the CPU): FLASH_ATTN_EXT(")


def test_gate_refuses_pairs_the_selftest_does_not_cover() -> None:
    m = fake_build(home())
    err = refusal(m, "turbo3", "f16")
    assert err.message == (
        "refusing K=turbo3 V=f16 on the cpu backend: the self-test has no FLASH_ATTN_EXT case for this K/V "
        "pair, so nothing shows it runs on CPU (pairs with turbo3 it covers: turbo3/turbo3, turbo4/turbo3, "
        "q8_0/turbo3, f16/turbo3, turbo3/q8_0)")


def test_gate_refuses_an_errored_or_stale_selftest() -> None:
    m = fake_build(home(), sql="CREATE TABLE test_backend_ops (backend_name TEXT, op_name TEXT, op_params TEXT, "
                              "test_mode TEXT, supported INTEGER, passed INTEGER, error_message TEXT);\n")
    err = refusal(m, "turbo4", "turbo4")
    assert err.message.startswith("refusing turbo4 on the cpu backend: the backend self-test could not run to "
                                  "the end: test-backend-ops found no TurboQuant case for device CPU")
    m = fake_build(home())
    lib = Path(m.cmake.build_dir) / "bin" / "libggml-cpu.so.0.1"
    lib.write_bytes(b"rebuilt")
    err = refusal(m, "turbo4", "turbo4")
    assert err.message.startswith("refusing turbo4 on the cpu backend: the backend self-test ran on other "
                                  f"binaries ({lib} changed since (sha256 ")
    assert err.hint == "run it on this build: turboctl selftest"
    m = fake_build(home())
    changed = m.model_copy(update={"binaries": {**m.binaries, "test-backend-ops": m.binaries[
        "test-backend-ops"].model_copy(update={"sha256": "f" * 64})}})
    assert "test-backend-ops changed since" in refusal(changed, "turbo4", "turbo4").message
    other = m.model_copy(update={"backend": "metal"})
    assert "it ran on the cpu backend, this build is metal" in refusal(other, "turbo4", "turbo4").message
