"""bench memory: the figures read from a server log against the arithmetic, the contexts chosen,
the result store (resume after an interruption), the JSON schema, the table and the CLI's errors.
The servers are stand-ins whose logs are the recorded real llama-fit-params output rewritten for
each context and recipe (tests/unit/fitfakes.py: the same KV lines llama-server logs); the
largest context comes from the what-if code on the fake llama-fit-params."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.conftest import DATA
from tests.unit.fakebuild import fake_build
from tests.unit.fitfakes import bench_like, fake_run, synth_output, write_fake_fit_params
from turboctl.bench import memory
from turboctl.cli.main import app
from turboctl.errors import BenchError, DoesNotFit, ModelError, ServerFailed, UsageError
from turboctl.kv.layout import read_layout
from turboctl.kv.recipe import RecipePlan, parse_recipe
from turboctl.paths import get_paths
from turboctl.serve import fit

MIB = fit.MIB
runner = CliRunner()


def resolved(model: Path, text: str) -> RecipePlan:
    return parse_recipe(text).resolve(read_layout(model)[1])


# --------------------------------------------------------------------------- figures of one log
def test_a_log_that_matches_the_arithmetic(tmp_path: Path) -> None:
    model = bench_like(tmp_path / "m.gguf")
    plan = resolved(model, "turbo4/turbo3")
    log = synth_output(2048, "turbo4", "turbo3", model=model)
    ms = memory.measure(plan, 2048, log, projected_kv=123, server_log="s.log")
    k, v = plan.kv_bytes(2048)
    assert (ms.log_k, ms.log_v, ms.log_total, ms.cells) == (k, v, k + v, 2048)
    assert (ms.arith_k, ms.arith_v) == (k, v)
    assert ms.difference == 0 and ms.difference_pct == 0.0 and ms.note(plan) is None
    doc = memory.measured_json(ms, plan)
    assert doc["caches"] == [{"layers": 8, "cells": 2048, "k_bytes": k, "v_bytes": v, "total_bytes": k + v}]
    assert doc["projected_kv_bytes"] == 123


def test_a_log_with_other_cells_differs_and_says_why(tmp_path: Path) -> None:
    model = bench_like(tmp_path / "m.gguf")
    plan = resolved(model, "f16")
    ms = memory.measure(plan, 2000, synth_output(2048, model=model), projected_kv=None, server_log="s.log")
    per_cell = 8 * 2 * 256 * 2  # 8 layers x (K + V) x 256 values x 2 bytes
    assert ms.difference == 48 * per_cell
    assert ms.difference_pct == pytest.approx(100 * 48 / 2000)
    assert ms.arith_at_cells == 2048 * per_cell
    assert ms.note(plan) == (f"the log's KV bytes differ from the arithmetic by {48 * per_cell} bytes "
                             f"(+{100 * 48 / 2000:.4f} %): llama.cpp sized 2048 cells for context 2000; at the cells "
                             f"llama.cpp sized, the arithmetic gives {2048 * per_cell} bytes (difference 0)")


def test_a_sliding_window_model_differs_and_says_why(tmp_path: Path) -> None:
    """The KV lines of a real llama-server log: the tiny gemma4 model (tests/integration/tinymodel.py,
    write_tiny_gemma4 defaults) with f16 K/V at context 1024: a full cache of 1024 cells and a
    sliding-window cache of 768."""
    from tests.integration.tinymodel import write_tiny_gemma4

    model = write_tiny_gemma4(tmp_path / "g.gguf")
    plan = resolved(model, "f16")
    log = (DATA / "bench" / "server-kv-lines-tiny-gemma4-f16-1024.txt").read_text()
    ms = memory.measure(plan, 1024, log, projected_kv=None, server_log="s.log")
    assert [c["cells"] for c in ms.caches] == [1024, 768]
    assert (ms.log_total, ms.arith_total, ms.arith_at_cells) == (2883584, 3145728, 2883584)
    assert ms.difference == -262144 and ms.difference_pct == pytest.approx(-8.3333, abs=1e-4)
    assert ms.note(plan) == ("the log's KV bytes differ from the arithmetic by -262144 bytes (-8.3333 %): llama.cpp "
                             "sized 1024, 768 cells for context 1024; the model has sliding-window layers, whose "
                             "cache holds fewer cells; at the cells llama.cpp sized, the arithmetic gives 2883584 "
                             "bytes (difference 0)")


@pytest.mark.parametrize(("drop", "message"), [
    ("llama_kv_cache: KV ", "llama-server's log has no 'llama_kv_cache: KV layers:' lines: no KV figures to read"),
    ("llama_kv_cache: KV bytes:", "llama-server's log has no 'KV bytes:' line for its KV cache 1"),
    ("llama_context: KV cache total:", "llama-server's log has no 'llama_context: KV cache total:' line"),
])
def test_a_missing_figure_is_an_error(tmp_path: Path, drop: str, message: str) -> None:
    model = bench_like(tmp_path / "m.gguf")
    log = "\n".join(ln for ln in synth_output(1024, model=model).splitlines() if drop not in ln)
    with pytest.raises(BenchError) as err:
        memory.measure(resolved(model, "f16"), 1024, log, projected_kv=None, server_log="s.log")
    assert err.value.message == message


def test_a_cache_for_a_layer_the_recipe_does_not_own_is_an_error(tmp_path: Path) -> None:
    model = bench_like(tmp_path / "m.gguf")
    log = synth_output(1024, model=model).replace("KV layers: 0-7 f16/f16", "KV layers: 0-8 f16/f16")
    with pytest.raises(BenchError) as err:
        memory.measure(resolved(model, "f16"), 1024, log, projected_kv=None, server_log="s.log")
    assert err.value.message == "llama-server made a KV cache for layer 8, which the recipe's layout does not own"


@pytest.mark.parametrize(("text", "value"), [("1024,4096", [1024, 4096]), ("4k, 1k,4096", [1024, 4096]),
                                             ("512", [512])])
def test_ctx_list(text: str, value: list[int]) -> None:
    assert memory.parse_ctx_list(text) == value


@pytest.mark.parametrize("text", ["", "0", "x", "1024,-1", ",", "2m"])
def test_ctx_list_bad(text: str) -> None:
    with pytest.raises(UsageError, match=r"--ctx-list .*expected comma-separated positive token counts"):
        memory.parse_ctx_list(text)


# --------------------------------------------------------------------------- runs against stand-ins
class FakeServer:
    """A BenchServer stand-in: the log of a server with that recipe at ``cells`` cells."""

    started: ClassVar[list[tuple[str, int]]] = []
    fail_at: ClassVar[tuple[str, int] | None] = None
    no_fit_above: ClassVar[int] = 10**9

    def __init__(self, model: Path, label: str, context: int, tmp: Path) -> None:
        self.label, self.context = label, context
        self.recipe_plan = resolved(model, label)
        self.model = model
        self.log = tmp / f"server-{label.replace('/', '-')}-{context}.log"

    def prepare(self) -> Any:
        if self.context > self.no_fit_above:
            raise DoesNotFit(f"m.gguf at context {self.context} with KV {self.label} needs more")
        return type("P", (), {"projection": {"kv": sum(self.recipe_plan.kv_bytes(self.context))}})()

    def __enter__(self) -> FakeServer:
        if (self.label, self.context) == FakeServer.fail_at:
            raise ServerFailed(f"llama-server exited with code 9 before it was ready ({self.label})")
        FakeServer.started.append((self.label, self.context))
        k, _, v = self.label.partition("/")
        self.log.write_text(synth_output(self.context, k, v or k, model=self.model))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home = get_paths().home
    write_fake_fit_params(home / "build" / "fake-cpu" / "bin")
    m = fake_build(home)
    model = bench_like(tmp_path / "m.gguf", n_ctx_train=8192)
    monkeypatch.setattr(fit, "_run_binary", fake_run)
    # the weights (56 MiB) + KV + compute (15 MiB, growing above 4096): f16 fits up to 4096, turbo3 up to 8192
    budget = fit.Budget(110 * MIB, "test budget 110 MiB", "ram-available", 110 * MIB, 0)
    monkeypatch.setattr(memory.fit_mod, "machine_budget", lambda backend="cpu": budget)
    FakeServer.started, FakeServer.fail_at, FakeServer.no_fit_above = [], None, 10**9
    monkeypatch.setattr(memory, "BenchServer", lambda m, paths, model, label, ctx, ui, **kw:
                        FakeServer(model, label, ctx, tmp_path))
    return {"m": m, "model": model, "home": home}


def bench(world: dict[str, Any], *args: str) -> Any:
    return runner.invoke(app, ["bench", "memory", "--model", str(world["model"]), *args])


def test_json_table_and_the_largest_context(world: dict[str, Any]) -> None:
    res = bench(world, "--kv", "f16", "--kv", "turbo3", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(memory.schema_path().read_text()))
    f16, t3 = doc["configurations"]
    assert (f16["label"], t3["label"]) == ("f16", "turbo3")
    assert f16["largest_context"] == 4096 and t3["largest_context"] == 8192
    # f16: the defaults, the training context does not fit; turbo3: the training context joins them
    assert [c["context"] for c in f16["contexts"]] == [1024, 2048, 4096]
    assert f16["notes"] == ["the training context 8192 left out: the largest that fits is 4096"]
    assert [c["context"] for c in t3["contexts"]] == [1024, 2048, 4096, 8192]
    for cfg in (f16, t3):
        for c in cfg["contexts"]:
            plan = resolved(world["model"], cfg["label"])
            k, v = plan.kv_bytes(c["context"])
            assert c["log"] == {"k_bytes": k, "v_bytes": v, "total_bytes": k + v}
            assert c["difference_bytes"] == 0 and c["cached"] is False
    assert doc["summary"] == {"measured": 7, "all_zero_difference": True, "nonzero_difference": []}
    assert FakeServer.started == [("f16", 1024), ("f16", 2048), ("f16", 4096), ("turbo3", 1024), ("turbo3", 2048),
                                  ("turbo3", 4096), ("turbo3", 8192)]
    res = bench(world, "--kv", "f16", "--ctx-list", "1024")
    assert res.exit_code == 0, res.output
    assert "KV cache bytes: llama-server's log vs the bits/value arithmetic" in res.output
    assert "every measured configuration: 0 bytes (0 %) difference between the log and the arithmetic" in res.output


def test_an_interrupted_run_resumes_from_the_store(world: dict[str, Any]) -> None:
    FakeServer.fail_at = ("turbo3", 2048)
    res = bench(world, "--kv", "f16,turbo3", "--ctx-list", "1024,2048")
    assert res.exit_code == ServerFailed.exit_code
    assert "error: llama-server exited with code 9 before it was ready (turbo3)" in res.output
    assert FakeServer.started == [("f16", 1024), ("f16", 2048), ("turbo3", 1024)]
    FakeServer.fail_at, FakeServer.started = None, []
    res = bench(world, "--kv", "f16,turbo3", "--ctx-list", "1024,2048", "--json")
    assert res.exit_code == 0, res.output
    assert FakeServer.started == [("turbo3", 2048)]
    for line in ("cached: f16 at context 1024", "cached: f16 at context 2048", "cached: turbo3 at context 1024"):
        assert line in res.stderr
    doc = json.loads(res.stdout)
    assert [c["cached"] for cfg in doc["configurations"] for c in cfg["contexts"]] == [True, True, True, False]
    jsonschema.validate(doc, json.loads(memory.schema_path().read_text()))
    # another context is another result: measured, the rest still cached
    FakeServer.started = []
    assert bench(world, "--kv", "f16", "--ctx-list", "1024,3072").exit_code == 0
    assert FakeServer.started == [("f16", 3072)]


def test_a_profile_gives_the_model_its_recipe_and_its_server_args(world: dict[str, Any], tmp_path: Path) -> None:
    from tests.integration.serveproc import write_profile

    profile = write_profile(tmp_path / "p.yaml", "p", world["model"], "turbo3", context=2048)
    res = runner.invoke(app, ["bench", "memory", "--profile", str(profile), "--kv", "f16", "--ctx-list", "1024",
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo3"]
    assert doc["settings"]["extra_args"] == ["--no-repack"]
    assert doc["model"]["path"] == str(world["model"].resolve())
    assert FakeServer.started == [("f16", 1024), ("turbo3", 1024)]


def test_no_repack_reaches_the_server_once(world: dict[str, Any], tmp_path: Path) -> None:
    res = bench(world, "--kv", "f16", "--ctx-list", "1024", "--no-repack", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["settings"]["extra_args"] == ["--no-repack"]
    from tests.integration.serveproc import write_profile

    profile = write_profile(tmp_path / "p.yaml", "p", world["model"], "turbo3", context=2048)
    res = runner.invoke(app, ["bench", "memory", "--profile", str(profile), "--kv", "f16", "--ctx-list", "1024",
                              "--no-repack", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["settings"]["extra_args"] == ["--no-repack"]  # the profile says it already


def test_a_context_that_does_not_fit_is_reported(world: dict[str, Any]) -> None:
    FakeServer.no_fit_above = 2048
    res = bench(world, "--kv", "f16", "--ctx-list", "2048,4096", "--json")
    assert res.exit_code == 0, res.output
    (cfg,) = json.loads(res.stdout)["configurations"]
    assert cfg["contexts"][1] == {"context": 4096, "status": "does-not-fit", "cached": False,
                                  "reason": "m.gguf at context 4096 with KV f16 needs more"}
    res = bench(world, "--kv", "f16", "--ctx-list", "2048,4096")
    assert "does not fit" in res.output


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], UsageError.exit_code, "error: give either --model FILE.gguf or --profile NAME"),
    (["--model", "MODEL", "--profile", "smollm2-demo"], UsageError.exit_code,
     "error: --profile and --model cannot be combined"),
    (["--model", "NOPE"], ModelError.exit_code, "error: model file not found: "),
    (["--model", "MODEL", "--ctx-list", "lots"], UsageError.exit_code,
     "error: --ctx-list 'lots': expected comma-separated positive token counts, e.g. 1024,4096"),
    (["--model", "MODEL", "--kv", "turbo9"], UsageError.exit_code,
     "error: unknown K cache type 'turbo9'; did you mean turbo4?"),
])
def test_cli_errors(world: dict[str, Any], tmp_path: Path, args: list[str], code: int, message: str) -> None:
    subst = {"MODEL": str(world["model"]), "NOPE": str(tmp_path / "missing.gguf")}
    res = runner.invoke(app, ["bench", "memory", *[subst.get(a, a) for a in args]])
    assert res.exit_code == code, res.output
    assert message in res.output
    assert FakeServer.started == []
