"""The self-test (SQL parsing, summary, verdict, optional cases), the manifest record, and the serving
gate (K/V types, and the head dims of a model's layers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner

from tests.conftest import DATA
from tests.unit.fakebuild import SQL, edit_sql, fake_build, metal_like_sql
from turboctl.build import cmake, gate, manifest, selftest
from turboctl.cli.main import app
from turboctl.errors import ConfigError, GateRefused, SelftestFailed
from turboctl.models.gguf import inspect_model
from turboctl.paths import get_paths
from turboctl.ui import get_ui

GETROWS = DATA / "selftest" / "test-backend-ops-cpu-turbo3-getrows.sql"


def home() -> Path:
    return get_paths().home


# --------------------------------------------------------------------------- parsing
PAIRS = ["turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2", "turbo4/turbo3", "turbo4/f16", "f16/turbo4",
         "turbo4/q8_0", "q8_0/turbo4", "q8_0/turbo3", "f16/turbo3", "turbo3/q8_0"]
PREFILL_PAIRS = {"turbo4/turbo4", "turbo3/turbo3", "turbo2/turbo2", "q8_0/turbo3"}


def test_parse_recorded_sql() -> None:
    rows, bad = selftest.parse_sql(SQL.read_text())
    assert bad == 0 and len(rows) == 523
    s = selftest.summarize(rows)
    assert s.counts == manifest.SelftestCounts(passed=523, failed=0, unsupported=0)
    assert {k: v.passed for k, v in s.per_op.items()} == {
        "CPY": 24, "FLASH_ATTN_EXT": 375, "GET_ROWS": 24, "K_SHIFT": 76, "SET_ROWS": 24}
    # a case counts for every turbo type it involves (source, destination, K or V)
    assert {k: v.passed for k, v in s.per_type.items()} == {"turbo2": 91, "turbo3": 221, "turbo4": 236}
    assert list(s.per_pair) == PAIRS
    # 12 table cases per pair, 17 more across the switches and features (decode), and 14
    # prefill ones for the pairs that stand for the others there
    assert {k: v.passed for k, v in s.per_pair.items()} == {p: 43 if p in PREFILL_PAIRS else 29 for p in PAIRS}
    assert s.failing == [] and s.unsupported == []
    assert selftest.verdict(s, returncode=0, timed_out=False, timeout=900, device="CPU") == ("pass", "")
    # every FLASH_ATTN_EXT case is kept with its pair and head dims; 75 are optional
    assert len(s.fa_cases) == 375 and sum(c.optional for c in s.fa_cases) == 75
    assert s.fa_cases[0] == manifest.FACase(pair="turbo4/turbo4", hsk=64, hsv=64, result="passed")
    dims = {(c.hsk, c.hsv) for c in s.fa_cases}
    assert dims == {(64, 64), (128, 128), (256, 256), (512, 512), (256, 128), (128, 64)}
    assert all(c.optional for c in s.fa_cases if c.hsk != c.hsv)


def fa_params(rows: list[selftest.CaseRow]) -> list[dict[str, str]]:
    names = ("hsk", "hsv", "nr23", "kv", "nb", "mask", "sinks", "max_bias", "logit_softcap", "type_K", "type_V",
             "mask_kind", "kv_used", "n_swa")
    return [{n: v for n in names if (v := r.param(n)) is not None} for r in rows if r.op == "FLASH_ATTN_EXT"]


def test_recorded_sql_has_every_case_group() -> None:
    """The new case groups of patch 0006, read back from the real run."""
    rows, _ = selftest.parse_sql(SQL.read_text())
    fa = fa_params(rows)
    # batch sizes on both sides of the CPU (64), Metal (20) and CUDA (2) switches
    assert {int(p["nb"]) for p in fa} == {1, 2, 3, 8, 19, 20, 33, 63, 64, 65}
    for pair in PAIRS:
        k, v = pair.split("/")
        mine = [p for p in fa if (p["type_K"], p["type_V"]) == (k, v)]
        nbs = {int(p["nb"]) for p in mine}
        assert nbs == ({1, 2, 3, 8, 19, 20, 33, 63, 64, 65} if pair in PREFILL_PAIRS else {1, 2, 3, 8, 19, 20, 64})
        assert {p["kv"] for p in mine} == {"200", "256"}
        features = {(p["hsk"], p["hsv"], p["nr23"], p["mask"], p["sinks"], p["max_bias"], p["logit_softcap"],
                     p.get("mask_kind", "random"), p.get("n_swa", "")) for p in mine if p["nb"] == "1"}
        assert {
            ("256", "256", "[2,1]", "1", "0", "0.000000", "50.000000", "causal", "0"),  # softcap (Gemma 2)
            ("64", "64", "[8,1]", "1", "1", "0.000000", "0.000000", "swa", "128"),  # sinks + SWA (gpt-oss)
            ("128", "128", "[4,1]", "1", "0", "8.000000", "0.000000", "causal", "0"),  # ALiBi
            ("128", "128", "[4,1]", "1", "0", "0.000000", "0.000000", "causal", "0"),  # llama's causal mask
            ("128", "128", "[2,1]", "1", "0", "0.000000", "0.000000", "swa", "64"),  # SWA layers
            ("128", "128", "[2,1]", "0", "0", "0.000000", "0.000000", "random", ""),  # no mask
            ("128", "128", "[1,1]", "1", "0", "0.000000", "0.000000", "random", ""),  # MHA
            ("128", "128", "[7,1]", "1", "0", "0.000000", "0.000000", "random", ""),  # GQA 7
            ("128", "128", "[2,2]", "1", "0", "0.000000", "0.000000", "random", ""),  # two sequences
            ("256", "128", "[2,1]", "1", "0", "0.000000", "0.000000", "random", ""),  # dk != dv
            ("128", "64", "[2,1]", "1", "0", "0.000000", "0.000000", "random", ""),
        } <= features
    shifts = [r for r in rows if r.op == "K_SHIFT"]
    assert len(shifts) == 76 and all("rot=turbo" in r.params for r in shifts)
    by_type: dict[str, set[tuple[int, int, int]]] = {}
    for r in shifts:
        assert r.param("n_cells") == "37" and r.param("n_head_kv") == "2"
        by_type.setdefault(str(r.param("type")), set()).add(
            (int(str(r.param("head_dim"))), int(str(r.param("n_rot"))), int(str(r.param("mode")))))
    for t in ("turbo2", "turbo3", "turbo4"):
        assert by_type[t] == {(hd, hd // f, mode) for hd in (64, 128, 256, 512) for f in (4, 2, 1) for mode in (0, 2)}
    assert by_type["q8_0"] == {(128, n_rot, mode) for n_rot in (32, 64) for mode in (0, 2)}


def test_fa_case_params_and_optional() -> None:
    rows, _ = selftest.parse_sql(SQL.read_text())
    table = next(r for r in rows if r.op == "FLASH_ATTN_EXT")
    assert table.param("nr23") == "[2,1]" and table.param("kv") == "200" and table.param("nope") is None
    assert table.head_dims() == (64, 64) and table.features() == [] and not table.optional
    softcap = next(r for r in rows if r.param("logit_softcap") == "50.000000")
    assert softcap.features() == ["logit softcap"] and softcap.optional and softcap.head_dims() == (256, 256)
    sinks = next(r for r in rows if r.param("sinks") == "1")
    assert sinks.features() == ["attention sinks"] and sinks.optional
    alibi = next(r for r in rows if r.param("max_bias") == "8.000000")
    assert alibi.features() == ["ALiBi"] and alibi.optional
    split = next(r for r in rows if r.head_dims() == (256, 128))
    assert split.features() == [] and split.optional
    causal = next(r for r in rows if r.param("mask_kind") == "causal" and not r.features())
    assert not causal.optional and causal.param("kv_used") == "187"
    shift = next(r for r in rows if r.op == "K_SHIFT")
    assert shift.head_dims() is None and not shift.optional and shift.cache_types() == {"turbo2"}
    # head dim 512 over an unpadded KV (kv=200): a shape llama.cpp does not make; unreachable
    # only when not supported (a case that runs counts); at 256, or at 512 padded: neither
    wide = next(r for r in rows if r.head_dims() == (512, 512) and r.param("kv") == "200" and not r.features())
    assert wide.unpadded_wide() and not wide.optional and not wide.unreachable()  # it passed here
    gone = selftest.CaseRow(wide.backend, wide.op, wide.params, False, False, "not supported")
    assert gone.unreachable()
    assert not table.unpadded_wide()
    padded = selftest.CaseRow(wide.backend, wide.op, wide.params.replace("kv=200", "kv=512"), False, False, "")
    assert padded.param("kv") == "512" and not padded.unpadded_wide() and not padded.unreachable()
    odd = selftest.CaseRow(wide.backend, wide.op, wide.params.replace("kv=200", "kv=x"), True, True, "")
    assert not odd.unpadded_wide()
    odd = selftest.CaseRow("MTL0", "FLASH_ATTN_EXT", "hsk=64,hsv=64,sinks=x,type_K=turbo4,type_V=turbo4", False,
                           False, "not supported")
    assert odd.features() == ["attention sinks"] and odd.optional  # unreadable: not the table case
    assert selftest.CaseRow("CPU", "FLASH_ATTN_EXT", "hsk=x,hsv=64", True, True, "").head_dims() is None


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
    assert s.counts == manifest.SelftestCounts(passed=472, failed=43, unsupported=8)
    assert s.per_pair["turbo2/turbo2"] == manifest.SelftestCounts(failed=43)
    assert s.per_type["turbo3"].unsupported == 8
    assert s.failing[0].error == "compare failed" and s.failing[0].result == "failed"
    assert s.unsupported[0].label().startswith("SET_ROWS(type_src=f32,type_dst=turbo3")
    assert selftest.verdict(s, returncode=1, timed_out=False, timeout=900, device="MTL0") == (
        "fail", "43 failed, 8 not supported on MTL0 of 523 turbo cases")
    assert sum(c.result == "failed" for c in s.fa_cases) == 43


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
    n_rows = len(selftest.parse_sql(SQL.read_text())[0])
    assert bad == 1 and len(rows) == n_rows and problems == ["line 26: table test_backend_ops has no column named "
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
def test_manifest_v3_round_trip_and_v2_v1_still_read(tmp_path: Path) -> None:
    m = fake_build(home())
    loaded = manifest.load_current(get_paths())
    assert loaded == m and loaded is not None and loaded.selftest is not None
    assert loaded.schema_ == "turboctl.manifest/3"
    assert loaded.selftest.libraries == {"libggml-cpu.so.0.1": loaded.selftest.libraries["libggml-cpu.so.0.1"]}
    assert loaded.selftest.fa_cases is not None and len(loaded.selftest.fa_cases) == 375
    old = tmp_path / "old.json"
    # schema 2: the same self-test record, without the FLASH_ATTN_EXT cases and optional flags
    v2 = m.to_json_dict()
    v2["schema"] = "turboctl.manifest/2"
    del v2["selftest"]["fa_cases"]
    old.write_text(json.dumps(v2))
    read = manifest.load(old)
    assert read.schema_ == manifest.SCHEMA and read.selftest is not None and read.selftest.fa_cases is None
    assert read.selftest.counts == m.selftest.counts  # type: ignore[union-attr]
    v2["selftest"] = None
    old.write_text(json.dumps(v2))
    assert manifest.load(old).selftest is None
    v1 = m.to_json_dict()
    v1["schema"] = "turboctl.manifest/1"
    del v1["selftest"]
    old.write_text(json.dumps(v1))
    read = manifest.load(old)
    assert read.schema_ == manifest.SCHEMA and read.selftest is None  # a v1 build: self-test never ran
    v1["selftest"] = None
    old.write_text(json.dumps(v1))  # a v1 document with v2 keys is not silently accepted
    with pytest.raises(ConfigError, match=r"manifest schema 'turboctl\.manifest/1'"):
        manifest.load(old)
    v2 = m.to_json_dict()
    v2["schema"] = "turboctl.manifest/2"  # a v2 document with v3 keys is not silently accepted
    old.write_text(json.dumps(v2))
    with pytest.raises(ConfigError, match=r"manifest schema 'turboctl\.manifest/2'"):
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
        "refusing K=turbo3 V=turbo3 on the cpu backend: 43 self-test case(s) failed: FLASH_ATTN_EXT(hsk=64,hsv=64,")
    assert err.message.endswith(" and 40 more")
    assert err.message.count("FLASH_ATTN_EXT(") == 3
    assert err.hint is not None
    assert "use q8_0 or q4_0 instead" in err.hint
    assert "open an issue on the turboctl project with the output of `turboctl doctor --json`" in err.hint
    assert str(home() / "logs" / "selftest-fake.log") in err.hint
    assert err.log_path == home() / "logs" / "selftest-fake.log"
    # another type: its own cases pass, but a failed self-test blocks every turbo type
    err = refusal(m, "turbo4", "turbo4")
    assert err.message.startswith("refusing turbo4 on the cpu backend: the backend self-test did not pass "
                                  "(43 failed of 523 turbo cases): FLASH_ATTN_EXT(")
    gate.check_kv_types(m, "q8_0", "q8_0")  # non-turbo types still serve


def test_gate_names_unsupported_cases_as_cpu_fallback() -> None:
    text = edit_sql(SQL.read_text(), "FLASH_ATTN_EXT", "type_K=q8_0,type_V=turbo3", supported=0, passed=0,
                    error="not supported")
    m = fake_build(home(), sql=text, backend="metal")
    err = refusal(m, "q8_0", "turbo3")
    # 43 cases of the pair not supported; the 13 optional ones among them are left to
    # check_kv_head_dims, the 30 others refuse the pair outright
    assert err.message.startswith("refusing K=q8_0 V=turbo3 on the metal backend: 30 case(s) not supported "
                                  "on MTL0 (they would fall back to the CPU): FLASH_ATTN_EXT(")
    assert m.selftest is not None and m.selftest.status == "fail"


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


# --------------------------------------------------------------------------- optional cases, head dims
METAL_LIKE = DATA / "selftest" / "test-backend-ops-metal-like-turbo.sql"
LAYERS = {(128, 128): [0, 1, 2, 3]}


def dims_refusal(m: manifest.Manifest, k: str, v: str, dims: gate.HeadDims, model: str | None = None) -> GateRefused:
    with pytest.raises(GateRefused) as err:
        gate.check_kv_head_dims(m, k, v, dims, model=model)
    assert err.value.exit_code == 12
    return err.value


def test_metal_like_sql_is_its_recipe() -> None:
    text = METAL_LIKE.read_text()
    assert text == metal_like_sql(SQL.read_text())
    rows, bad = selftest.parse_sql(text)
    assert bad == 0 and {r.backend for r in rows} == {"MTL0"}
    unsupported = [r for r in rows if not r.supported]
    assert len(unsupported) == 30 and all(r.error == "not supported" for r in unsupported)
    assert {r.head_dims() for r in unsupported} == {(256, 128), (128, 64)}


def test_optional_cases_not_supported_do_not_fail_the_selftest() -> None:
    rows, _ = selftest.parse_sql(METAL_LIKE.read_text())
    s = selftest.summarize(rows)
    assert s.counts == manifest.SelftestCounts(passed=493, failed=0, unsupported=30)
    assert all(c.optional for c in s.unsupported) and s.required_unsupported == []
    assert selftest.verdict(s, returncode=0, timed_out=False, timeout=900, device="MTL0") == ("pass", "")
    m = fake_build(home(), sql=METAL_LIKE.read_text(), backend="metal")
    assert m.selftest is not None
    assert selftest.describe(m.selftest).startswith(
        "pass: 493/523 turbo cases passed on MTL0, 30 not supported (all optional) (3.6 s, ")
    selftest.raise_if_failed(m.selftest, context="the build finished")  # passes: nothing raised
    for pair in PAIRS:  # every pair still serves where its head dims are covered
        k, v = pair.split("/")
        gate.check_kv_types(m, k, v)
        gate.check_kv_head_dims(m, k, v, {(64, 64): [0], (128, 128): [1], (256, 256): [2], (512, 512): [3]})


def test_a_table_case_not_supported_still_fails() -> None:
    text = edit_sql(METAL_LIKE.read_text().replace("'MTL0', ", "'CPU', "), "FLASH_ATTN_EXT",
                    "hsk=128,hsv=128,nh=2,nr23=[2,1],kv=200,nb=19,", supported=0, passed=0, error="not supported")
    text = text.replace("'CPU', ", "'MTL0', ")
    rows, _ = selftest.parse_sql(text)
    s = selftest.summarize(rows)
    assert len(s.required_unsupported) == 11  # nb=19 at 128/128, one per pair
    assert selftest.verdict(s, returncode=0, timed_out=False, timeout=900, device="MTL0") == (
        "fail", "11 not supported on MTL0 of 523 turbo cases")
    m = fake_build(home(), sql=text, backend="metal")
    assert m.selftest is not None
    with pytest.raises(SelftestFailed, match=r"11 not supported on MTL0 of 523 turbo cases \(FLASH_ATTN_EXT\("):
        selftest.raise_if_failed(m.selftest, context="the build finished")
    err = refusal(m, "turbo4", "turbo4")
    assert err.message.startswith("refusing K=turbo4 V=turbo4 on the metal backend: 1 case(s) not supported on "
                                  "MTL0 (they would fall back to the CPU): FLASH_ATTN_EXT(hsk=128,hsv=128,nh=2,"
                                  "nr23=[2,1],kv=200,nb=19,")


def test_a_failed_optional_case_fails_the_selftest() -> None:
    text = edit_sql(SQL.read_text(), "FLASH_ATTN_EXT", "hsk=256,hsv=128,", supported=1, passed=0,
                    error="compare failed")
    m = fake_build(home(), sql=text)
    assert m.selftest is not None and m.selftest.status == "fail"
    assert m.selftest.reason == "15 failed of 523 turbo cases"
    err = refusal(m, "turbo4", "turbo4")
    assert err.message.startswith("refusing K=turbo4 V=turbo4 on the cpu backend: 2 self-test case(s) failed: "
                                  "FLASH_ATTN_EXT(hsk=256,hsv=128,")


def test_gate_refuses_head_dims_a_gpu_does_not_support() -> None:
    m = fake_build(home(), sql=METAL_LIKE.read_text(), backend="metal")
    gate.check_kv_head_dims(m, "turbo4", "turbo3", LAYERS)
    gate.check_kv_head_dims(m, "q8_0", "q4_0", {(256, 128): [0]})  # no turbo type: not the gate's business
    err = dims_refusal(m, "turbo4", "turbo3", {(128, 128): [0, 1], (256, 128): [2, 3, 4, 7]}, model="split.gguf")
    assert err.message == (
        "refusing K=turbo4 V=turbo3 on the metal backend: of its 1 FLASH_ATTN_EXT case(s) at head dims K 256 / V 128 "
        "(layers 2-4, 7 of split.gguf), 1 not supported on MTL0 (they would fall back to the CPU): "
        "FLASH_ATTN_EXT(hsk=256,hsv=128,nh=2,nr23=[2,1],kv=200,nb=1,mask=1,sinks=0,max_bias=0.000000,"
        "logit_softcap=0.000000,prec=f32,type_K=turbo4,type_V=turbo3,permute=[0,1,2,3],kv_view=1,"
        "v_is_view_of_k=0,n_kv_max=0)")
    assert err.hint is not None and "use q8_0 or q4_0 instead" in err.hint and "open an issue" in err.hint
    err = dims_refusal(m, "turbo3", "turbo3", {(128, 64): []})
    assert err.message.startswith("refusing K=turbo3 V=turbo3 on the metal backend: of its 2 FLASH_ATTN_EXT "
                                  "case(s) at head dims K 128 / V 64 (SWA layers), 2 not supported on MTL0 ")
    assert err.message.count("FLASH_ATTN_EXT(") == 2  # both named
    # the same model on the CPU build: those cases ran there
    gate.check_kv_head_dims(fake_build(home()), "turbo4", "turbo3", {(128, 128): [0, 1], (256, 128): [2, 3]})


def test_gate_refuses_head_dims_the_selftest_has_no_case_for() -> None:
    m = fake_build(home())
    err = dims_refusal(m, "turbo4", "f16", {(128, 256): [0]}, model="odd.gguf")
    assert err.message == (
        "refusing K=turbo4 V=f16 on the cpu backend: the self-test has no FLASH_ATTN_EXT case for this pair at "
        "head dims K 128 / V 256 (layer 0 of odd.gguf), so nothing shows it runs on CPU (head dims it passed "
        "for turbo4/f16: K 64 / V 64, K 128 / V 64, K 128 / V 128, K 256 / V 128, K 256 / V 256, K 512 / V 512)")
    assert err.hint == "use q8_0 or q4_0 instead (e.g. --kv q8_0 or --kv q4_0), or a pair the self-test covers " \
                       "at these head dims"
    err = dims_refusal(m, "turbo4", "turbo2", LAYERS)  # a pair without any case
    assert err.message.endswith("(head dims it passed for turbo4/turbo2: none)")


def test_gate_refuses_an_optional_feature_not_supported_at_the_model_head_dims() -> None:
    text = edit_sql(SQL.read_text(), "FLASH_ATTN_EXT", "logit_softcap=50.000000,prec=f32,type_K=turbo3,type_V=turbo3",
                    supported=0, passed=0, error="not supported")
    m = fake_build(home(), sql=text, backend="metal")
    assert m.selftest is not None and m.selftest.status == "pass"  # optional
    gate.check_kv_types(m, "turbo3", "turbo3")
    gate.check_kv_head_dims(m, "turbo3", "turbo3", LAYERS)
    # at head dim 256 the record cannot tell whether the model uses the softcap: refused
    err = dims_refusal(m, "turbo3", "turbo3", {(256, 256): [0, 1]})
    assert err.message.startswith("refusing K=turbo3 V=turbo3 on the metal backend: of its 5 FLASH_ATTN_EXT "
                                  "case(s) at head dims K 256 / V 256 (layers 0-1), 2 not supported on MTL0 (they "
                                  "would fall back to the CPU): FLASH_ATTN_EXT(hsk=256,hsv=256,")
    assert "logit_softcap=50.000000" in err.message


def test_gate_head_dims_with_an_old_or_missing_record() -> None:
    m = fake_build(home())
    assert m.selftest is not None
    old = m.model_copy(update={"selftest": m.selftest.model_copy(update={"fa_cases": None})})
    err = dims_refusal(old, "turbo4", "turbo4", LAYERS)
    assert err.message == ("refusing K=turbo4 V=turbo4 on the cpu backend: the self-test record of this build does "
                           "not say which head dims its FLASH_ATTN_EXT cases cover (written by an older turboctl)")
    assert err.hint == "run it again: turboctl selftest"
    gate.check_kv_head_dims(old, "f16", "q8_0", LAYERS)
    none = fake_build(home(), with_selftest=False)
    err = dims_refusal(none, "turbo4", "turbo4", LAYERS)
    assert "the backend self-test never ran for this build" in err.message


def attention_model(path: Path, *, key_length: int, value_length: int, n_layer: int = 4,
                    extra: dict[str, int | list[bool]] | None = None) -> Path:
    """A GGUF file with only the attention metadata turboctl reads (no tensors)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_embedding_length(512)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_key_length(key_length)
    w.add_value_length(value_length)
    for key, value in (extra or {}).items():
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_model_head_dims(tmp_path: Path) -> None:
    info = inspect_model(attention_model(tmp_path / "a.gguf", key_length=256, value_length=128))
    assert gate.model_head_dims(info) == {(256, 128): [0, 1, 2, 3]}
    swa: dict[str, int | list[bool]] = {"llama.attention.key_length_swa": 128, "llama.attention.value_length_swa": 128,
           "llama.attention.sliding_window_pattern": [True, False, True, False]}
    info = inspect_model(attention_model(tmp_path / "b.gguf", key_length=256, value_length=256, extra=swa))
    assert gate.model_head_dims(info) == {(128, 128): [0, 2], (256, 256): [1, 3]}
    del swa["llama.attention.sliding_window_pattern"]  # SWA dims, layers hard-coded in llama.cpp
    info = inspect_model(attention_model(tmp_path / "c.gguf", key_length=256, value_length=256, extra=swa))
    assert gate.model_head_dims(info) == {(256, 256): [0, 1, 2, 3], (128, 128): []}


def test_bench_refuses_head_dims_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_build(home(), sql=METAL_LIKE.read_text(), backend="metal")
    args_log = tmp_path / "args.jsonl"
    monkeypatch.setenv("FAKE_ARGS_LOG", str(args_log))
    corpus = tmp_path / "text.txt"
    corpus.write_text("the cache of the model was the first key to the value\n" * 200)
    model = attention_model(tmp_path / "split.gguf", key_length=256, value_length=128)
    r = CliRunner().invoke(app, ["bench", "kld", "--model", str(model), "--corpus", str(corpus),
                                 "--kv", "q8_0", "--kv", "turbo4/turbo3"])
    assert r.exit_code == 12, r.output
    assert ("error: refusing K=turbo4 V=turbo3 on the metal backend: of its 1 FLASH_ATTN_EXT case(s) at head dims "
            "K 256 / V 128 (layers 0-3 of split.gguf), 1 not supported on MTL0 (they would fall back to the CPU)"
            in r.stderr)
    assert not args_log.exists()  # nothing started, not even the f16 base run
    r = CliRunner().invoke(app, ["bench", "speed", "--model", str(model), "--kv", "turbo4"])
    assert r.exit_code == 12 and "refusing K=turbo4 V=turbo4 on the metal backend: of its 2 FLASH_ATTN_EXT" in r.stderr
    assert not args_log.exists()


CUDA_H200 = DATA / "selftest" / "test-backend-ops-cuda-h200-turbo.sql"


def test_recorded_cuda_selftest_refuses_every_turbo_type() -> None:
    """A real recording: the series on a CUDA build (NVIDIA H200), which has no TurboQuant
    kernels yet. Every turbo case is "not supported" (only the q8_0 K-shift cases run), so the
    self-test fails and the gate refuses each turbo pair before anything starts, while the
    upstream types still serve."""
    rows, bad = selftest.parse_sql(CUDA_H200.read_text())
    assert bad == 0 and len(rows) == 523
    s = selftest.summarize(rows)
    assert s.counts == manifest.SelftestCounts(passed=4, failed=0, unsupported=519)
    assert {r.params for r in rows if r.passed} == {r.params for r in rows if r.op == "K_SHIFT" and "q8_0" in r.params}
    assert selftest.verdict(s, returncode=0, timed_out=False, timeout=900, device="CUDA0") == (
        "fail", "411 not supported on CUDA0 of 523 turbo cases")
    m = fake_build(home(), sql=CUDA_H200.read_text(), backend="cuda")
    for pair in PAIRS:
        k, v = pair.split("/")
        with pytest.raises(GateRefused, match=rf"refusing K={k} V={v} on the cuda backend: \d+ case\(s\) not "
                                              r"supported on CUDA0 \(they would fall back to the CPU\)"):
            gate.check_kv_types(m, k, v)
    gate.check_kv_types(m, "q8_0", "q8_0")
    gate.check_kv_types(m, "f16", "q4_0")


# --------------------------------------------------------------------------- recipes: every pair
def test_gate_checks_every_pair_of_a_recipe_at_its_layers_head_dims(tmp_path: Path) -> None:
    from tests.unit import kvmodels
    from turboctl.kv.layout import read_layout
    from turboctl.kv.recipe import parse_recipe

    # a self-test without turbo4/turbo3 cases at head dims 512/512; the gemma4-like model has
    # SWA layers at 256 and global layers (3, 7; 11 reuses 7) at 512
    sql = "\n".join(ln for ln in SQL.read_text().splitlines()
                    if not ("'FLASH_ATTN_EXT', 'hsk=512,hsv=512," in ln and "type_K=turbo4,type_V=turbo3," in ln))
    m = fake_build(home(), sql=sql)
    info, layout = read_layout(kvmodels.gemma4(tmp_path / "g.gguf"))
    # turbo4/turbo3 only on the SWA layers: passes
    plan = parse_recipe("turbo4/turbo3;3+7=q8_0").resolve(layout)
    assert gate.recipe_head_dims(plan, info) == {
        ("turbo4", "turbo3"): {(256, 256): [0, 1, 2, 4, 5, 6, 8, 9, 10]}, ("q8_0", "q8_0"): {(512, 512): [3, 7, 11]}}
    gate.check_recipe(m, plan, info, model="g.gguf")
    # on the global layers: refused, naming the layers (11 reads layer 7's cache)
    plan = parse_recipe("q8_0/turbo3;3+7=turbo4/turbo3").resolve(layout)
    with pytest.raises(GateRefused) as err:
        gate.check_recipe(m, plan, info, model="g.gguf")
    assert err.value.message.startswith(
        "refusing K=turbo4 V=turbo3 on the cpu backend: the self-test has no FLASH_ATTN_EXT case for this pair at "
        "head dims K 512 / V 512 (layers 3, 7, 11 of g.gguf)")
    # a pair the self-test never ran is refused even on one layer
    with pytest.raises(GateRefused, match="refusing K=turbo2 V=turbo4 on the cpu backend: the self-test has no "
                                          "FLASH_ATTN_EXT case for this K/V pair"):
        gate.check_recipe(m, parse_recipe("q8_0;0=turbo2/turbo4").resolve(layout), info)


def test_unpadded_head_dim_512_not_supported_refuses_nothing() -> None:
    """What the H200 reports (docs/verify/cuda-h200-test-backend-ops-turbo.txt): head dim 512
    over KV 200 and differing K/V head dims not supported, everything else passing. The
    self-test passes, and the gate serves the pairs; a model with head dim 512 is refused only
    when the record has no case at 512 that ran (this older recording has none over a padded KV)."""
    text = SQL.read_text()
    for params in ("hsk=512,hsv=512,nh=2,nr23=[2,1],kv=200", "hsk=256,hsv=128", "hsk=128,hsv=64"):
        text = edit_sql(text, "FLASH_ATTN_EXT", params, supported=0, passed=0, error="not supported")
    m = fake_build(home(), sql=text, backend="cuda")
    assert m.selftest is not None and m.selftest.status == "pass", m.selftest
    gate.check_kv_types(m, "turbo4", "turbo4")
    gate.check_kv_types(m, "q8_0", "turbo3")
    gate.check_kv_head_dims(m, "turbo4", "turbo4", {(128, 128): [0, 1]})
    with pytest.raises(GateRefused, match=r"no FLASH_ATTN_EXT case for this pair at head dims K 512 / V 512"):
        gate.check_kv_head_dims(m, "turbo4", "turbo4", {(512, 512): [5]})
    # a wrong result at that shape still fails the self-test
    bad = edit_sql(SQL.read_text(), "FLASH_ATTN_EXT", "hsk=512,hsv=512,nh=2,nr23=[2,1],kv=200,nb=1,",
                   supported=1, passed=0, error="")
    assert fake_build(home(), sql=bad, backend="cuda").selftest.status == "fail"  # type: ignore[union-attr]
