"""Reports (bench/report.py and each benchmark's report_section): the sections of the recorded
documents of real bench kld/speed/memory runs (tests/data/bench/doc-*-smollm2.json) carry the
documents' figures, their plots are real PNG files, a report that fails leaves its directory as
it was, every error names what is wrong, and ``turboctl bench report`` renders saved documents
(a bench all document too) with ``--json``. ``--report`` on each subcommand runs against the
stand-ins of their own tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import DATA
from tests.unit.test_bench import kld_args, speed_args
from tests.unit.test_bench import world as bench_world  # noqa: F401  (the fixture of bench kld/speed)
from tests.unit.test_bench_memory import world as memory_world  # noqa: F401  (the fixture of bench memory)
from turboctl.bench import kld, memory, report, speed
from turboctl.cli.main import app
from turboctl.errors import BenchError, UsageError

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
DOCS = {name: DATA / "bench" / f"doc-{name}-smollm2.json" for name in ("kld", "speed", "memory")}


def doc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCS[name].read_text())
    return loaded


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG) and data[:8] == PNG


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------- the sections
def test_the_kld_section_has_every_figure_of_the_document() -> None:
    d = doc("kld")
    sec = kld.report_section(d)
    base = d["base"]["ppl"]
    assert f"PPL {base:.4f} ± {d['base']['ppl_error']:.4f}" in sec.markdown
    assert f"corpus `{d['corpus']['name']}`" in sec.markdown and f"context {d['ctx']}" in sec.markdown
    front = {"f16", "q8_0", "iq4_nl", "turbo4", "turbo3", "turbo2", "q8_0/turbo3", "turbo4/turbo3;0..1+-2..-1=q8_0"}
    for r in d["results"]:
        assert row(r["label"] + (" *" if r["upstream_rotated"] else ""), f"{r['bits_per_value']:g}",
                   f"{r['mean_kld']:.6f} ± {r['mean_kld_error']:.6f}", f"{r['kld_99']:.6f}",
                   f"{r['same_top_p']:.3f} ± {r['same_top_p_error']:.3f}", f"{r['ppl']:.4f} ± {r['ppl_error']:.4f}",
                   f"{r['ppl'] / base:.4f}", "yes" if r["label"] in front else "") in sec.markdown
    # the recorded f16 row came out at -0.000001: it cannot be on the log axis, and the report says so
    assert "Not on the plot's log axis (mean KLD <= 0): f16 (-0.000001)." in sec.markdown
    assert "Pipeline check (f16 against its own base): mean KLD -0.000001, limit 0.0005: ok." in sec.markdown
    assert "\\* " + kld.ROTATION_NOTE in sec.markdown
    assert list(sec.plots) == ["pareto.png"]


def test_the_kld_points_are_marked_by_kind_and_the_front_is_the_pareto_one() -> None:
    fields = report.Fields.of(doc("kld"))
    kinds = {r.text("label"): kld._kind(r) for r in fields.items("results")}
    assert kinds == {"f16": "upstream", "q8_0": "upstream", "q4_0": "upstream", "iq4_nl": "upstream",
                     "turbo4": "turbo", "turbo3": "turbo", "turbo2": "turbo", "q8_0/turbo3": "turbo",
                     "turbo4/turbo3;0..1+-2..-1=q8_0": "recipe"}
    # (bits, KLD): the second point is beaten by the first (fewer bits, lower KLD), the third ties
    # the first's bits with a higher KLD, the last has the lowest KLD at the most bits
    assert kld.pareto_front([(4.0, 0.1), (4.5, 0.2), (4.0, 0.3), (2.0, 1.0), (16.0, 0.0)]) == [3, 0, 4]


def test_the_speed_section_has_every_figure_of_the_document() -> None:
    d = doc("speed")
    sec = speed.report_section(d)
    assert f"pp{d['n_prompt']} and tg{d['n_gen']} at depth 0, 256; 1 repetition(s), 2 thread(s)" in sec.markdown
    assert row("K/V", "bits/value", "test", "depth", "tokens/s", "vs f16", "vs q4_0") in sec.markdown
    n = 0
    for r in d["results"]:
        for t in r["tests"]:
            assert row(r["label"], f"{r['bits_per_value']:g}", t["test"], str(t["depth"]),
                       f"{t['avg_ts']:.2f} ± {t['stddev_ts']:.2f}", f"{t['ratio_vs_f16']:.3f}",
                       f"{t['ratio_vs_q4_0']:.3f}") in sec.markdown
            n += 1
    assert sec.markdown.count("\n| ") == n + 1  # the header and one row per test, nothing else
    assert list(sec.plots) == ["generation-vs-depth.png", "prompt-vs-depth.png"]


def test_the_memory_section_has_every_figure_of_the_document() -> None:
    d = doc("memory")
    sec = memory.report_section(d)
    n = 0
    for c in d["configurations"]:
        for x in c["contexts"]:
            log, arith = x["log"]["total_bytes"], x["arithmetic"]["total_bytes"]
            assert row(c["label"], f"{c['bits_per_value']:.2f}", str(x["context"]),
                       f"{log} ({log / 2**20:.2f} MiB)", f"{arith} ({arith / 2**20:.2f} MiB)",
                       str(x["difference_bytes"]), f"{x['difference_pct']:.4f}", str(c["largest_context"])) \
                in sec.markdown
            n += 1
    assert n == 12
    assert "Every measured configuration: 0 bytes difference between the log and the arithmetic." in sec.markdown
    assert f"budget 20.5 GiB ({d['budget']['source']})" in sec.markdown
    assert list(sec.plots) == ["kv-bytes-vs-context.png"]


def test_a_memory_context_that_did_not_fit_is_in_the_table_not_on_the_plot() -> None:
    d = doc("memory")
    d["configurations"][0]["contexts"][1] = {"context": 1024, "status": "does-not-fit", "cached": False,
                                             "reason": "needs 30 GiB"}
    d["summary"]["all_zero_difference"] = False
    sec = memory.report_section(d)
    assert row("f16", "16.00", "1024", "does not fit", "", "", "", "8192") in sec.markdown
    assert "- f16 at 1024: does not fit (needs 30 GiB)" in sec.markdown
    assert "Every measured configuration" not in sec.markdown


# --------------------------------------------------------------------------- the report
def test_a_report_of_the_three_documents(tmp_path: Path) -> None:
    out = tmp_path / "w" / "rep"
    docs = [doc("kld"), doc("speed"), doc("memory")]
    written = report.write_report(out, docs)
    assert written.report == out / "report.md"
    names = ["kld-pareto.png", "speed-generation-vs-depth.png", "speed-prompt-vs-depth.png",
             "memory-kv-bytes-vs-context.png"]
    assert written.plots == tuple(out / n for n in names)
    assert all(is_png(p) for p in written.plots)
    assert written.documents == tuple(out / "data" / f"{n}.json" for n in ("kld", "speed", "memory"))
    assert [json.loads(p.read_text()) for p in written.documents] == docs
    text = written.report.read_text()
    for name in names:
        assert f"]({name})" in text
    for sec in (kld.report_section(docs[0]), speed.report_section(docs[1]), memory.report_section(docs[2])):
        assert f"## {sec.title}\n\n{sec.markdown.rstrip()}\n" in text
    assert "| llama.cpp | b11312 (0c1e57098bba), series head 0f0a36a8c3f4, backend cpu |" in text
    assert "| model | `b179c9523d0e6a0f-SmolLM2-135M-Instruct.Q4_1.gguf` |" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["rep"]  # no temporary directory left


def failing_section(doc: dict[str, Any]) -> report.Section:
    def draw(path: Path) -> None:
        if doc["how"] == "raise":
            raise RuntimeError("the plot failed (test)")
        # "nothing": returns without writing the file

    return report.Section("failing", "text", plots={"x.png": draw})


@pytest.mark.parametrize(("how", "error", "message"), [
    ("raise", RuntimeError, r"the plot failed \(test\)"),
    ("nothing", BenchError, "the plot fail-x.png of failing was not written"),
])
def test_a_failing_plot_leaves_the_directory_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       how: str, error: type[Exception], message: str) -> None:
    monkeypatch.setitem(report.SECTIONS, "turboctl.bench.fail/1", "tests.unit.test_bench_report:failing_section")
    out = tmp_path / "w" / "rep"
    report.write_report(out, [doc("speed")])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(error, match=message):
        report.write_report(out, [doc("kld"), {"schema": "turboctl.bench.fail/1", "how": how}])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["rep"]


# --------------------------------------------------------------------------- errors
def drop(d: dict[str, Any], *path: str | int) -> dict[str, Any]:
    d = copy.deepcopy(d)
    target: Any = d
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return d


def put(d: dict[str, Any], value: Any, *path: str | int) -> dict[str, Any]:
    d = copy.deepcopy(d)
    target: Any = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


HINT = "report the documents a turboctl bench command wrote (--output), unedited"


@pytest.mark.parametrize(("name", "change", "message"), [
    ("kld", lambda d: drop(d, "results", 1, "mean_kld"),
     "a turboctl.bench.kld/1 document without the field 'results[1].mean_kld'"),
    ("kld", lambda d: drop(d, "base"), "a turboctl.bench.kld/1 document without the field 'base'"),
    ("kld", lambda d: put(d, "x", "results", 0, "bits_per_value"),
     "a turboctl.bench.kld/1 document with a non-number ('x') in the field 'results[0].bits_per_value'"),
    ("kld", lambda d: put(d, True, "results", 0, "kld_99"),
     "a turboctl.bench.kld/1 document with a non-number (True) in the field 'results[0].kld_99'"),
    ("kld", lambda d: drop(d, "results", 8, "recipe", "rules"),
     "a turboctl.bench.kld/1 document without the field 'results[8].recipe.rules'"),
    ("kld", lambda d: put(d, "yes", "results", 2, "upstream_rotated"),
     "a turboctl.bench.kld/1 document with a non-boolean ('yes') in the field 'results[2].upstream_rotated'"),
    ("kld", lambda d: put(d, 5, "results", 0, "label"),
     "a turboctl.bench.kld/1 document with a non-string (5) in the field 'results[0].label'"),
    ("kld", lambda d: put(d, [], "base"), "a turboctl.bench.kld/1 document with a non-object in the field 'base'"),
    ("speed", lambda d: put(d, [0, "256"], "depths"),
     "a turboctl.bench.speed/1 document with something else than a list of integers in the field 'depths'"),
    ("kld", lambda d: put(d, {}, "results"),
     "a turboctl.bench.kld/1 document with a non-list in the field 'results'"),
    ("kld", lambda d: put(d, [], "results"), "a turboctl.bench.kld/1 document without results: nothing to report"),
    ("kld", lambda d: put(d, [1], "notes"),
     "a turboctl.bench.kld/1 document with something else than a list of strings in the field 'notes'"),
    ("speed", lambda d: drop(d, "results", 2, "tests", 3, "avg_ts"),
     "a turboctl.bench.speed/1 document without the field 'results[2].tests[3].avg_ts'"),
    ("speed", lambda d: drop(d, "results", 0, "tests", 1, "ratio_vs_q4_0"),
     "a turboctl.bench.speed/1 document without the field 'results[0].tests[1].ratio_vs_q4_0'"),
    ("speed", lambda d: put(d, 1.5, "threads"),
     "a turboctl.bench.speed/1 document with a non-integer (1.5) in the field 'threads'"),
    ("speed", lambda d: put(d, ["x"], "results", 0, "tests"),
     "a turboctl.bench.speed/1 document with a non-object in the field 'results[0].tests[0]'"),
    ("speed", lambda d: put(d, 32, "results", 0, "tests", 1, "n_prompt"),
     "a turboctl.bench.speed/1 document's results[0].tests[1]: a test of 32 prompt and 8 generated tokens"),
    ("speed", lambda d: put(d, [], "results"), "a turboctl.bench.speed/1 document without results: nothing to report"),
    ("memory", lambda d: drop(d, "configurations", 3, "contexts", 1, "log"),
     "a turboctl.bench.memory/1 document without the field 'configurations[3].contexts[1].log'"),
    ("memory", lambda d: drop(d, "summary"), "a turboctl.bench.memory/1 document without the field 'summary'"),
    ("memory", lambda d: put(d, "later", "configurations", 0, "contexts", 0, "status"),
     "a turboctl.bench.memory/1 document's configurations[0].contexts[0].status is 'later': expected 'measured' "
     "or 'does-not-fit'"),
    ("memory", lambda d: drop(d, "configurations", 0, "contexts", 0, "difference_pct"),
     "a turboctl.bench.memory/1 document without the field 'configurations[0].contexts[0].difference_pct'"),
])
def test_a_document_missing_a_figure_is_an_error_naming_it(name: str, change: Any, message: str) -> None:
    section = {"kld": kld.report_section, "speed": speed.report_section, "memory": memory.report_section}[name]
    with pytest.raises(BenchError) as exc:
        section(change(doc(name)))
    assert exc.value.message.startswith(message), exc.value.message
    if "field" in message:
        assert exc.value.hint == HINT


def badly_named_section(doc: dict[str, Any]) -> report.Section:
    return report.Section("bad", "text", plots={"x.svg": lambda path: None})


def test_a_plot_that_is_not_a_png_file_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(report.SECTIONS, "turboctl.bench.bad/1", "tests.unit.test_bench_report:badly_named_section")
    with pytest.raises(BenchError, match=r"^internal: plot name 'x.svg' is not a PNG file name$"):
        report.write_report(tmp_path / "w" / "r", [{"schema": "turboctl.bench.bad/1"}])
    assert list((tmp_path / "w").iterdir()) == []


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"^no documents to report$"):
        report.write_report(tmp_path / "r", [])
    with pytest.raises(BenchError, match=r"^no documents to report$"):
        report.write_report(tmp_path / "r", [{"schema": report.SUITE_SCHEMA, "documents": []}])
    with pytest.raises(BenchError, match=r"^a bench all document without its 'documents' list$"):
        report.write_report(tmp_path / "r", [{"schema": report.SUITE_SCHEMA}])
    with pytest.raises(BenchError, match=r"^cannot report a document of schema 'turboctl.bench.nope/1'$") as exc:
        report.write_report(tmp_path / "r", [{"schema": "turboctl.bench.nope/1"}])
    assert "turboctl.bench.kld/1, turboctl.bench.speed/1, turboctl.bench.memory/1" in (exc.value.hint or "")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- turboctl bench report
def bench_report(*args: str | Path) -> Any:
    return runner.invoke(app, ["bench", "report", *map(str, args)])


def test_bench_report_json(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    res = bench_report(out, DOCS["speed"], DOCS["memory"], "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got == {"schema": "turboctl.bench.report/1", "report": str(out.resolve() / "report.md"),
                   "plots": [str(out.resolve() / n) for n in ("speed-generation-vs-depth.png",
                                                                "speed-prompt-vs-depth.png",
                                                                "memory-kv-bytes-vs-context.png")],
                   "documents": [str(out.resolve() / "data" / n) for n in ("speed.json", "memory.json")]}
    assert all(is_png(Path(p)) for p in got["plots"])
    res = bench_report(out, DOCS["kld"])
    assert res.exit_code == 0, res.output
    assert f"report: {out.resolve() / 'report.md'} (1 plot(s), 1 document(s))" in res.output


def test_bench_report_of_a_bench_all_document(tmp_path: Path) -> None:
    suite_doc = tmp_path / "all.json"
    suite_doc.write_text(json.dumps({"schema": report.SUITE_SCHEMA, "documents": [doc("memory"), doc("speed")],
                                     "steps": []}))
    res = bench_report(tmp_path / "rep", suite_doc, DOCS["kld"], "--json")
    assert res.exit_code == 0, res.output
    assert [Path(p).name for p in json.loads(res.stdout)["documents"]] == ["memory.json", "speed.json", "kld.json"]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert text.index("## KV cache memory") < text.index("## Prompt and generation speed") < text.index(
        "## KL divergence")


def test_bench_report_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "turboctl.bench.kld/1",\n  "results": [1, }\n')
    other = tmp_path / "other.json"
    other.write_text('{"schema": "turboctl.kv.explain/1"}')
    plain = tmp_path / "plain.json"
    plain.write_text("[1, 2]")
    nope = tmp_path / "nope.json"
    cases = [
        ([], UsageError.exit_code, "error: no documents to report: give one or more JSON files after DIR"),
        ([nope], BenchError.exit_code, f"error: no such file: {nope}"),
        ([bad], BenchError.exit_code, f"error: {bad}:2:18: not valid JSON: Expecting value"),
        ([plain], BenchError.exit_code, f"error: {plain}: not a turboctl bench document (no 'schema')"),
        ([other], BenchError.exit_code, "error: cannot report a document of schema 'turboctl.kv.explain/1'"),
        ([DOCS["kld"], other], BenchError.exit_code,
         "error: cannot report a document of schema 'turboctl.kv.explain/1'"),
    ]
    for args, code, message in cases:
        res = bench_report(tmp_path / "rep", *args)
        assert res.exit_code == code, (args, res.output)
        assert message in res.stderr, (args, res.stderr)
    assert not (tmp_path / "rep").exists()  # nothing was written


# --------------------------------------------------------------------------- --report on each subcommand
def test_report_on_bench_kld_and_speed(bench_world: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    res = runner.invoke(app, kld_args(bench_world, "--report", str(tmp_path / "k"), "--output",
                                      str(tmp_path / "k.json")))
    assert res.exit_code == 0, res.output
    assert f"report: {(tmp_path / 'k').resolve() / 'report.md'}" in res.output
    assert is_png(tmp_path / "k" / "kld-pareto.png")
    assert json.loads((tmp_path / "k" / "data" / "kld.json").read_text()) == \
        json.loads((tmp_path / "k.json").read_text())
    res = runner.invoke(app, speed_args(bench_world, "--report", str(tmp_path / "s"), "--json"))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "s").glob("*.png")) == ["speed-generation-vs-depth.png",
                                                                      "speed-prompt-vs-depth.png"]
    assert json.loads((tmp_path / "s" / "data" / "speed.json").read_text()) == json.loads(res.stdout)


def test_report_on_bench_memory(memory_world: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    res = runner.invoke(app, ["bench", "memory", "--model", str(memory_world["model"]), "--kv", "f16,turbo3",
                              "--ctx-list", "1024,2048", "--report", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    assert is_png(tmp_path / "m" / "memory-kv-bytes-vs-context.png")
    text = (tmp_path / "m" / "report.md").read_text()
    assert memory.report_section(json.loads(res.stdout)).markdown.rstrip() in text


def test_neutral_paths_rewrite_prefixes_only() -> None:
    doc = {"a": "/m/home/logs/x.log", "b": ["/m/home", "/m/homework/y", 3.5], "c": {"d": "/m/shared/z.gguf"},
           "e": "run -m /m/home/x -f=/m/data --log '/m/home' /x/m/y", "f": 7}
    got = report.neutral_paths(doc, [("/m/home", "$TURBOCTL_HOME"), ("/m", "..")])
    assert got == {"a": "$TURBOCTL_HOME/logs/x.log", "b": ["$TURBOCTL_HOME", "../homework/y", 3.5],
                   "c": {"d": "../shared/z.gguf"},
                   "e": "run -m $TURBOCTL_HOME/x -f=../data --log '$TURBOCTL_HOME' /x/m/y",
                   "f": 7}


def test_docs_report_rewrites_the_home_and_keeps_the_figures(tmp_path: Path) -> None:
    from turboctl import devtools
    from turboctl.paths import get_paths

    d = doc("memory")
    home = str(get_paths().home)
    d["model"]["path"] = f"{home}/cache/models/m.gguf"
    src = tmp_path / "memory.json"
    src.write_text(json.dumps(d))
    res = runner.invoke(devtools.app, ["docs-report", str(tmp_path / "rep"), str(src)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "rep" / "data" / "memory.json").read_text())
    assert data["model"]["path"] == "$TURBOCTL_HOME/cache/models/m.gguf"
    assert data["configurations"] == report.neutral_paths(d["configurations"], [(home, "$TURBOCTL_HOME")])
    assert home not in (tmp_path / "rep" / "report.md").read_text()
