"""bench all: the steps in order, --only, kld left out without a corpus, each finished step
cached (a rerun runs nothing; a run killed in a step resumes there), the JSON schema, and the
report made of the steps' documents. The steps are stand-ins (each step's own command has its
own tests); the suite's logic is what runs for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.unit.fakebuild import fake_build
from tests.unit.fitfakes import bench_like
from turboctl.bench import report, suite
from turboctl.build.manifest import Manifest
from turboctl.cli.main import app
from turboctl.errors import BenchError
from turboctl.paths import Paths, get_paths
from turboctl.ui import UI

runner = CliRunner()
FAKE_SCHEMA = "turboctl.test.fake/1"


def fake_section(doc: dict[str, Any]) -> report.Section:
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([1, 2], [doc["value"], doc["value"]])
        fig.savefig(path)

    return report.Section(title=f"step {doc['step']}", markdown=f"value {doc['value']}", plots={"line.png": draw})


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home = get_paths().home
    fake_build(home)
    model = bench_like(tmp_path / "m.gguf")
    calls: list[str] = []
    fail: dict[str, bool] = {}

    def step(name: str) -> suite.Step:
        def run(m: Manifest, paths: Paths, ui: UI, t: suite.Target, s: suite.SuiteSettings) -> dict[str, Any]:
            calls.append(name)
            if fail.get(name):
                raise BenchError(f"{name} failed (test)")
            return {"schema": FAKE_SCHEMA, "step": name, "value": len(calls), "corpus": str(s.corpus),
                    "repack": t.repack, "extra_kv": list(t.extra_kv)}
        return run

    monkeypatch.setattr(suite, "STEPS", {n: step(n) for n in ("memory", "speed", "kld", "niah")})
    monkeypatch.setitem(report.SECTIONS, FAKE_SCHEMA, "tests.unit.test_bench_suite:fake_section")
    corpus = tmp_path / "c.txt"
    corpus.write_text("text\n")
    return {"model": model, "calls": calls, "fail": fail, "corpus": corpus, "tmp": tmp_path}


def bench_all(world: dict[str, Any], *args: str) -> Any:
    return runner.invoke(app, ["bench", "all", "--model", str(world["model"]), *args])


def test_every_step_in_order_then_all_cached(world: dict[str, Any]) -> None:
    res = bench_all(world, "--corpus", str(world["corpus"]), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(suite.schema_path().read_text()))
    assert world["calls"] == ["memory", "speed", "kld", "niah"]
    assert doc["steps"] == [{"step": n, "status": "measured"} for n in ("memory", "speed", "kld", "niah")]
    assert [d["step"] for d in doc["documents"]] == ["memory", "speed", "kld", "niah"]
    assert doc["documents"][2]["corpus"] == str(world["corpus"])
    assert doc["documents"][0]["repack"] is True
    again = bench_all(world, "--corpus", str(world["corpus"]), "--json")
    assert again.exit_code == 0, again.output
    assert world["calls"] == ["memory", "speed", "kld", "niah"]  # nothing ran again
    doc2 = json.loads(again.stdout)
    assert [s["status"] for s in doc2["steps"]] == ["cached"] * 4
    assert doc2["documents"] == doc["documents"]
    assert again.stderr.count("cached: ") == 4


def test_kld_is_left_out_without_a_corpus_and_only_picks_steps(world: dict[str, Any]) -> None:
    res = bench_all(world, "--only", "kld,memory", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["steps"] == [{"step": "memory", "status": "measured"},
                            {"step": "kld", "status": "skipped", "reason": "no --corpus"}]
    assert "kld left out: no --corpus given" in res.stderr


def test_a_failed_step_keeps_the_finished_ones(world: dict[str, Any]) -> None:
    world["fail"]["kld"] = True
    res = bench_all(world, "--corpus", str(world["corpus"]))
    assert res.exit_code == BenchError.exit_code
    assert "kld failed (test)" in res.stderr
    assert world["calls"] == ["memory", "speed", "kld"]
    world["fail"]["kld"] = False
    res = bench_all(world, "--corpus", str(world["corpus"]))
    assert res.exit_code == 0, res.output
    assert world["calls"] == ["memory", "speed", "kld", "kld", "niah"]  # resumed at kld
    assert "cached: memory" in res.output and "cached: speed" in res.output


def test_other_settings_are_other_results(world: dict[str, Any]) -> None:
    assert bench_all(world, "--only", "speed").exit_code == 0
    assert bench_all(world, "--only", "speed", "--reps", "2").exit_code == 0
    assert bench_all(world, "--only", "speed", "--no-repack").exit_code == 0
    assert world["calls"] == ["speed", "speed", "speed"]


def test_a_profile_adds_its_recipe_and_its_no_repack(world: dict[str, Any]) -> None:
    profile = world["tmp"] / "p.yaml"
    profile.write_text(f"name: p\nmodel: {{name: p, path: {world['model']}}}\nkv: {{k: turbo4, v: turbo3}}\n"
                       "context: 2048\nserver: {args: ['--no-repack']}\n")
    res = runner.invoke(app, ["bench", "all", "--profile", str(profile), "--only", "speed", "--json"])
    assert res.exit_code == 0, res.output
    step = json.loads(res.stdout)["documents"][0]
    assert step["repack"] is False and step["extra_kv"] == ["turbo4/turbo3"]


@pytest.mark.parametrize(("only", "message"), [
    ("bogus", "--only 'bogus': unknown step bogus"),
    (",", "--only ',': unknown step (none given)"),
])
def test_bad_only(world: dict[str, Any], only: str, message: str) -> None:
    res = bench_all(world, "--only", only)
    assert res.exit_code == 2
    assert message in res.stderr and "the steps: memory, speed, kld, niah" in res.stderr


def test_the_report_is_made_of_the_steps_documents(world: dict[str, Any]) -> None:
    out = world["tmp"] / "rep"
    res = bench_all(world, "--only", "memory,speed", "--report", str(out))
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    assert "## step memory" in text and "## step speed" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 2 and all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert f"report: {out / 'report.md'}" in res.output


def test_the_served_steps_get_their_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """niah, prompts and long-session as bench all calls them: each step's options reach its own
    benchmark, --no-repack reaches its server (the logic of each is tested with its command)."""
    from turboctl.bench import niah, prompts, session

    fake_build(get_paths().home)
    model = bench_like(tmp_path / "m.gguf")
    seen: dict[str, dict[str, Any]] = {}

    def document(m: Manifest, paths: Paths, ui: UI, **kw: Any) -> dict[str, Any]:
        seen["prompts"] = kw
        return {"schema": FAKE_SCHEMA, "step": "prompts", "value": 1}

    def plan_of(name: str) -> Any:
        def make_plan(m: Manifest, paths: Paths, ui: UI, **kw: Any) -> str:
            seen[name] = kw
            return name
        return make_plan

    monkeypatch.setattr(prompts, "document", document)
    for mod, name in ((niah, "niah"), (session, "long-session")):
        monkeypatch.setattr(mod, "make_plan", plan_of(name))
        monkeypatch.setattr(mod, "run", lambda plan, m, paths, ui: plan)
        monkeypatch.setattr(mod, "to_json", lambda report, m: {"schema": FAKE_SCHEMA, "step": report, "value": 2})
    res = runner.invoke(app, ["bench", "all", "--model", str(model), "--only", "niah,prompts,long-session",
                              "--kv", "turbo4", "--no-repack", "--niah-ctx-list", "512,1024", "--depths", "0,100",
                              "--needles", "2", "--niah-tokens", "20", "--prompts", "p01,p05", "--prompt-ctx", "2048",
                              "--prompt-tokens", "24", "--turns", "3", "--session-tokens", "40",
                              "--session-ctx", "1024", "--json"])
    assert res.exit_code == 0, res.output
    assert [s["step"] for s in json.loads(res.stdout)["steps"]] == ["niah", "prompts", "long-session"]
    common = {"model": model, "kv": ("turbo4",), "extra_kv": (), "extra_args": ("--no-repack",)}
    assert seen["niah"] == {**common, "ctx_list": "512,1024", "depths": "0,100", "needles": 2, "max_tokens": 20}
    assert seen["prompts"] == {**common, "context": 2048, "only": "p01,p05", "max_tokens": 24}
    assert seen["long-session"] == {**common, "turns": 3, "max_tokens": 40, "context": 1024}
