"""bench prompts: the prompt matrix's validation (every error names the file and the item), the
automatic checks, the agreement figures, and whole runs through the CLI against a stand-in
server that answers with the recorded real answers of SmolLM2-135M-Instruct
(tests/data/bench/prompts-smollm2-answers.json): the document against its schema, the figures
equal to the answers, resume after a server that died, the filler's budget, the side-by-side
output, the report and every error message."""

from __future__ import annotations

import difflib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.conftest import DATA
from tests.unit.fakebuild import fake_build
from tests.unit.fitfakes import bench_like
from turboctl.bench import cells, corpus, prompts
from turboctl.bench.corpus import Corpora
from turboctl.bench.report import write_report
from turboctl.bench.served import Completion, ServerDied
from turboctl.cli.main import app
from turboctl.errors import BenchError, CorpusError, ModelError, UsageError
from turboctl.paths import get_paths

runner = CliRunner()
RECORDED = json.loads((DATA / "bench" / "prompts-smollm2-answers.json").read_text())["answers"]


# --------------------------------------------------------------------------- the matrix
def test_the_shipped_matrix() -> None:
    ps = prompts.load_prompts()
    assert [p.id for p in ps] == [f"p{i:02d}" for i in range(1, 11)]
    assert [p.category for p in ps] == list(prompts.CATEGORIES)
    assert len({p.sha256 for p in ps}) == 10
    (early,) = [p for p in ps if p.filler is not None]
    assert early.id == "p05" and early.filler is not None
    words = len(early.filler.text.split())
    assert 1500 <= words <= 2500
    multi = next(p for p in ps if p.category == "multi-turn-reference")
    assert [m["role"] for m in multi.messages].count("assistant") >= 2
    assert "json_schema" in next(p for p in ps if p.category == "structured-json").check


def copy_corpora(tmp_path: Path, edit: Any = None, filler: str | None = None) -> Corpora:
    root = tmp_path / "corpora"
    shutil.copytree(corpus.default_dir(), root)
    path = root / prompts.CORPUS
    if edit is not None:
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    if filler is not None:
        (root / "prompts" / "filler.txt").write_text(filler)
    (root / corpus.SUMS).write_text(corpus.sums_text(root))
    return Corpora(root)


def _set(i: int, key: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        doc["prompts"][i][key] = value
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set(2, "category", "poetry"), r"prompts\[2\]\.category: 'poetry' is not one of"),
    (_set(0, "max_tokens", 0), r"prompts\[0\]\.max_tokens: 0 is less than the minimum of 1"),
    (_set(3, "check", {"regex": "x", "json_schema": {}}), r"prompts\[3\]\.check: .* is not valid under any"),
    (_set(1, "id", "p01"), r"prompts\[1\] \(p01\): id p01 is used twice \(first by prompts\[0\]\)"),
    (_set(0, "check", {"regex": "(unclosed"}), r"prompts\[0\] \(p01\): check\.regex does not compile: "),
    (_set(7, "check", {"json_schema": {"type": "thing"}}),
     r"prompts\[7\] \(p08\): check\.json_schema is not a valid JSON schema: "),
    (_set(0, "messages", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
     r"prompts\[0\] \(p01\): the last message is from the assistant, expected the user"),
    (_set(4, "filler", {"file": "prompts/filler.txt", "placeholder": "{nothing}", "max_tokens": 500}),
     r"prompts\[4\] \(p05\): the filler placeholder '\{nothing\}' appears 0 times in the messages, expected once"),
])
def test_a_bad_matrix_names_the_file_and_the_item(tmp_path: Path, edit: Any, message: str) -> None:
    c = copy_corpora(tmp_path, edit)
    with pytest.raises(CorpusError, match=message) as err:
        prompts.load_prompts(c)
    assert str(c.root / prompts.CORPUS) in err.value.message
    assert err.value.exit_code == 25


def test_a_changed_matrix_is_refused(tmp_path: Path) -> None:
    c = copy_corpora(tmp_path)
    path = c.root / prompts.CORPUS
    path.write_text(path.read_text().replace("Jupiter", "Saturn"))
    with pytest.raises(CorpusError, match=r"prompts\.json was changed: its sha256 is [0-9a-f]{64}, SHA256SUMS line"):
        prompts.load_prompts(c)


def test_the_hash_follows_the_prompt_and_its_filler(tmp_path: Path) -> None:
    base = {p.id: p.sha256 for p in prompts.load_prompts()}
    edited = {p.id: p.sha256 for p in prompts.load_prompts(copy_corpora(tmp_path / "a", _set(0, "max_tokens", 17)))}
    assert edited["p01"] != base["p01"] and all(edited[k] == base[k] for k in base if k != "p01")
    other = {p.id: p.sha256 for p in prompts.load_prompts(copy_corpora(tmp_path / "b", filler="Other words. " * 400))}
    assert other["p05"] != base["p05"] and all(other[k] == base[k] for k in base if k != "p05")


@pytest.mark.parametrize(("wanted", "ids"), [(None, 10), ("p05,p01", ["p01", "p05"]), (" p10 ,", ["p10"])])
def test_select(wanted: str | None, ids: Any) -> None:
    got = [p.id for p in prompts.select(prompts.load_prompts(), wanted)]
    assert got == ids if isinstance(ids, list) else len(got) == ids


@pytest.mark.parametrize(("wanted", "message"), [
    ("p11", "--prompts: no prompt p11; the prompts are p01, p02, p03, p04, p05, p06, p07, p08, p09, p10"),
    (",", "--prompts ',': expected comma-separated prompt ids, e.g. p01,p05"),
])
def test_select_bad(wanted: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        prompts.select(prompts.load_prompts(), wanted)
    assert err.value.message == message


# --------------------------------------------------------------------------- checks and agreement
def prompt(pid: str) -> prompts.Prompt:
    return next(p for p in prompts.load_prompts() if p.id == pid)


def test_regex_checks() -> None:
    ok = prompts.check_output(prompt("p01"), "The largest planet in our solar system is jupiter.")
    assert ok.passed and ok.why == "matches regex /\\bJupiter\\b/i at 42: 'jupiter'"
    bad = prompts.check_output(prompt("p01"), "Saturn")
    assert not bad.passed and bad.why == "no match for regex /\\bJupiter\\b/i"
    assert prompts.check_output(prompt("p06"), "Light on the rocks\nLong nights\nLanterns\nLast ships\n").passed
    assert not prompts.check_output(prompt("p06"), "Light\nLong\nLate\nLast\nLoud").passed
    assert prompts.check_output(prompt("p10"), "1. Red\n2. Green\n3. Blue").passed
    assert not prompts.check_output(prompt("p10"), "Here you go:\n1. Red\n2. Green\n3. Blue").passed
    assert prompts.check_output(prompt("p02"), "7 bags.\nAnswer: 21 dollars, 2 left over").passed
    assert not prompts.check_output(prompt("p02"), "Answer: 18 dollars, 4 left over").passed


LISBON = {"name": "Lisbon", "country": "Portugal", "population": 545000, "rivers": ["Tagus"]}


@pytest.mark.parametrize(("text", "passed", "why"), [
    (json.dumps(LISBON), True, "valid JSON that fits the schema"),
    ("Here it is:\n```json\n" + json.dumps(LISBON, indent=2) + "\n```\nDone.", True, "valid JSON that fits the schema"),
    ("Sure! " + json.dumps(LISBON) + " Hope it helps.", True, "valid JSON that fits the schema"),
    (json.dumps({**LISBON, "population": "545000"}), False,
     "the JSON does not fit the schema: population: '545000' is not of type 'integer'"),
    (json.dumps({k: v for k, v in LISBON.items() if k != "rivers"}), False,
     "the JSON does not fit the schema: (the value): 'rivers' is a required property"),
    ("Lisbon is the capital of Portugal.", False, "no JSON value in the answer (Expecting value at line 1 column 1)"),
])
def test_json_schema_checks(text: str, passed: bool, why: str) -> None:
    got = prompts.check_output(prompt("p08"), text)
    assert (got.passed, got.why) == (passed, why)


@pytest.mark.parametrize(("base", "tokens", "prefix", "identical"), [
    ([1, 2, 3, 4], [1, 2, 3, 4], 4, True),
    ([1, 2, 3, 4], [1, 2, 9, 4], 2, False),
    ([1, 2, 3, 4], [1, 2], 2, False),
    ([1, 2, 3], [7, 1, 2, 3], 0, False),
    ([], [], 0, True),
])
def test_agreement(base: list[int], tokens: list[int], prefix: int, identical: bool) -> None:
    a = prompts.agreement(base, tokens)
    assert a.exact_prefix_tokens == prefix and a.identical is identical
    matched = sum(b.size for b in difflib.SequenceMatcher(None, base, tokens, autojunk=False).get_matching_blocks())
    assert a.similarity == (2 * matched / (len(base) + len(tokens)) if base or tokens else 1.0)


def test_agreement_values() -> None:
    assert prompts.agreement([1, 2, 9, 4], [1, 2, 3, 4]).similarity == 0.75  # 3 of 4 in matching blocks
    assert prompts.agreement([5, 6], [7, 8]).similarity == 0.0
    assert prompts.agreement([1] * 300, [1] * 299 + [2]).similarity == pytest.approx(598 / 600)  # no junk heuristic


# --------------------------------------------------------------------------- runs against a stand-in
class FakeServer:
    """A BenchServer stand-in: the model's template as tags, one token per character, and the
    recorded real answer of the configuration (turbo3's for other turbo types) to each prompt."""

    started: ClassVar[list[str]] = []
    asked: ClassVar[list[tuple[str, str, int, str]]] = []  # label, prompt id, n_predict, the prompt
    fail_at: ClassVar[tuple[str, str] | None] = None

    def __init__(self, label: str, context: int, tmp: Path) -> None:
        self.label, self.context = label, context
        self.log = tmp / f"server-{label.replace('/', '-')}.log"
        self.by_first = {p.messages[0]["content"]: p.id for p in prompts.load_prompts()}

    def __enter__(self) -> FakeServer:
        FakeServer.started.append(self.label)
        self.log.write_text("fake\n")
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(chr(t) for t in tokens)

    def chat(self, messages: Sequence[Mapping[str, str]], *, n_predict: int) -> Completion:
        first = messages[0]["content"]
        pid = self.by_first.get(first) or next(v for k, v in self.by_first.items() if k.split("\n")[0] in first)
        if FakeServer.fail_at == (self.label, pid):
            raise ServerDied(f"llama-server for {self.label} exited (code -9) during a completion; its log: {self.log}",
                             log_path=self.log)
        prompt_text = self.apply_template(messages)
        FakeServer.asked.append((self.label, pid, n_predict, prompt_text))
        rec = RECORDED["f16" if self.label == "f16" else "turbo3"][pid]
        assert n_predict >= rec["n_predicted"]
        return Completion(text=rec["text"], tokens=list(rec["tokens"]), n_prompt=rec["n_prompt"],
                          n_predicted=rec["n_predicted"], stop_reason=rec["stop_reason"], timings={})


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home = get_paths().home
    m = fake_build(home)
    model = bench_like(tmp_path / "m.gguf", n_ctx_train=8192)
    FakeServer.started, FakeServer.asked, FakeServer.fail_at = [], [], None
    monkeypatch.setattr(cells, "BenchServer", lambda m, paths, model, label, ctx, ui, **kw:
                        FakeServer(label, ctx, tmp_path))
    return {"m": m, "model": model, "home": home, "tmp": tmp_path}


def bench(world: dict[str, Any], *args: str) -> Any:
    return runner.invoke(app, ["bench", "prompts", "--model", str(world["model"]), *args])


def doc_of(res: Any) -> dict[str, Any]:
    assert res.exit_code == 0, res.output
    doc: dict[str, Any] = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(prompts.schema_path().read_text()))
    return doc


def test_the_document_holds_the_servers_answers(world: dict[str, Any]) -> None:
    doc = doc_of(bench(world, "--kv", "turbo3", "--prompts", "p01,p07,p08", "--json"))
    assert FakeServer.started == ["f16", "turbo3"]
    assert doc["notes"] == ["f16 added: the agreement figures compare every configuration with it"]
    assert doc["settings"]["prompts"] == ["p01", "p07", "p08"] and doc["settings"]["context"] == 4096
    assert [p["max_tokens"] for p in doc["prompts"]] == [16, 24, 96]
    assert [(a[0], a[1], a[2]) for a in FakeServer.asked] == [
        ("f16", "p01", 16), ("f16", "p07", 24), ("f16", "p08", 96),
        ("turbo3", "p01", 16), ("turbo3", "p07", 24), ("turbo3", "p08", 96)]
    # the multi-turn prompt goes out with its earlier turns
    assert FakeServer.asked[1][3].count("<assistant>") == 3
    f16, t3 = doc["configurations"]
    assert (f16["baseline"], t3["baseline"]) == (True, False)
    for cfg in (f16, t3):
        for o in cfg["outputs"]:
            rec = RECORDED[cfg["label"]][o["prompt"]]
            assert {k: o[k] for k in rec} == rec
            assert o["n_tokens"] == len(rec["tokens"]) and o["cached"] is False and o["filler"] is None
            assert o["check"]["passed"] == prompts.check_output(prompt(o["prompt"]), rec["text"]).passed
    assert all(o["agreement"] is None for o in f16["outputs"])
    for o, base in zip(t3["outputs"], f16["outputs"], strict=True):
        a = prompts.agreement(base["tokens"], o["tokens"])
        assert o["agreement"] == {"exact_prefix_tokens": a.exact_prefix_tokens, "baseline_tokens": base["n_tokens"],
                                  "similarity": a.similarity, "identical": a.identical,
                                  "check_same_as_baseline": o["check"]["passed"] == base["check"]["passed"]}
    # the recorded answers: p01 identical, p07 and p08 differ from f16 from their first token
    assert [o["agreement"]["identical"] for o in t3["outputs"]] == [True, False, False]
    assert [o["agreement"]["exact_prefix_tokens"] for o in t3["outputs"]] == [11, 0, 0]
    assert f16["summary"] == {"prompts": 3, "checks_passed": 1, "identical": None, "mean_similarity": None,
                              "mean_exact_prefix_tokens": None, "check_changed": []}
    sims = [o["agreement"]["similarity"] for o in t3["outputs"]]
    assert t3["summary"] == {"prompts": 3, "checks_passed": 1, "identical": 1, "mean_similarity": sum(sims) / 3,
                             "mean_exact_prefix_tokens": 11 / 3, "check_changed": []}


def test_the_table_and_the_answers_side_by_side(world: dict[str, Any]) -> None:
    res = bench(world, "--kv", "f16,turbo3", "--prompts", "p01,p05", "--ctx", "8192", "--side-by-side")
    assert res.exit_code == 0, res.output
    assert "answers: check, then agreement with f16" in res.output
    assert "p01     factual-recall        pass, 11 tok  pass, =" in res.output
    assert "[f16] pass, 11 tok" in res.output and "[turbo3] pass, =" in res.output
    assert "The lock code of the garden gate is 411." in res.output  # turbo3's answer, beside f16's
    assert "p05     early-context-recall  FAIL, 16 tok  FAIL, 7/16 0.73" in res.output
    assert "p05 (early-context-recall): Remember this: the key to the red shed" in res.output
    assert "Answer with the number only." in res.output  # the question's end, after the filler
    # p05: f16's recorded answer was cut at 16 tokens ("... is 481"), so both fail: no changed check
    assert "turbo3  3.25        1/2            1/2               0.867            9.0                none" in res.output


def test_a_changed_check_is_said(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    turbo3 = dict(RECORDED["turbo3"])
    turbo3["p07"] = {**RECORDED["f16"]["p07"], "text": "Omar.", "tokens": [46, 309], "n_predicted": 2}
    monkeypatch.setitem(RECORDED, "turbo3", turbo3)
    res = bench(world, "--kv", "turbo3", "--prompts", "p07")
    assert res.exit_code == 0, res.output
    assert "warning: turbo3: the check of p07 passes, where f16's fails (matches regex /\\bOmar\\b/ at 0: 'Omar')" \
        in res.output


def test_the_early_context_filler_is_cut_to_the_context(world: dict[str, Any]) -> None:
    doc = doc_of(bench(world, "--kv", "turbo3", "--prompts", "p05", "--ctx", "1024", "--json"))
    p05 = prompt("p05")
    assert p05.filler is not None
    (_, _, n, text), _ = FakeServer.asked
    assert n == 32
    fixed = len(FakeServer(  # the template of the messages without filler, one token per character
        "f16", 1024, world["tmp"]).apply_template([{**m, "content": m["content"].replace("{filler}", "")}
                                                   for m in p05.messages]))
    o = doc["configurations"][0]["outputs"][0]
    budget = 1024 - fixed - 32 - prompts.FILLER_MARGIN
    assert o["filler"]["budget"] == budget and o["filler"]["file_tokens"] == len(p05.filler.text.strip())
    assert o["filler"]["tokens"] <= budget and len(text) - fixed == o["filler"]["tokens"]
    sent = text.split("Now read this description of a valley.\n\n")[1].split("\n\nQuestion:")[0]
    assert p05.filler.text.startswith(sent) and sent.endswith(".")  # cut at a sentence's end
    assert "4817" in text.split("Now read")[0]
    # a context with room for the whole filler sends all of it, up to the prompt's own budget
    doc = doc_of(bench(world, "--kv", "turbo3", "--prompts", "p05", "--ctx", "16384", "--json"))
    assert doc["configurations"][0]["outputs"][0]["filler"]["budget"] == p05.filler.max_tokens


def test_too_small_a_context_for_the_filler(world: dict[str, Any]) -> None:
    res = bench(world, "--prompts", "p05", "--ctx", "512")
    assert res.exit_code == UsageError.exit_code, res.output
    assert ("error: --ctx 512 leaves 114 tokens for the filler of p05 (its messages take 358, its answer 32); "
            in res.output)
    assert "it needs at least 128" in res.output and "hint: raise --ctx, or leave p05 out with --prompts" in res.output


def test_a_server_that_dies_keeps_what_was_measured_and_the_run_resumes(world: dict[str, Any]) -> None:
    FakeServer.fail_at = ("turbo3", "p07")
    res = bench(world, "--kv", "turbo3", "--prompts", "p01,p07,p08")
    assert res.exit_code == ServerDied.exit_code
    assert "error: llama-server for turbo3 exited (code -9) during a completion; its log: " in res.output
    assert [a[:2] for a in FakeServer.asked] == [("f16", "p01"), ("f16", "p07"), ("f16", "p08"), ("turbo3", "p01")]
    FakeServer.fail_at, FakeServer.asked, FakeServer.started = None, [], []
    res = bench(world, "--kv", "turbo3", "--prompts", "p01,p07,p08", "--json")
    doc = doc_of(res)
    assert FakeServer.started == ["turbo3"]
    assert [a[:2] for a in FakeServer.asked] == [("turbo3", "p07"), ("turbo3", "p08")]
    assert "cached: f16 (3 results)" in res.stderr and "cached: turbo3 p01" in res.stderr
    assert [[o["cached"] for o in c["outputs"]] for c in doc["configurations"]] == [[True] * 3, [True, False, False]]
    # all cached now: no server; another --max-tokens is another answer
    FakeServer.started = []
    assert bench(world, "--kv", "turbo3", "--prompts", "p01,p07,p08").exit_code == 0
    assert FakeServer.started == []
    assert bench(world, "--kv", "turbo3", "--prompts", "p01", "--max-tokens", "20").exit_code == 0
    assert FakeServer.started == ["f16", "turbo3"]


def test_a_stored_answer_without_its_figures_is_an_error(world: dict[str, Any]) -> None:
    assert bench(world, "--kv", "turbo3", "--prompts", "p01").exit_code == 0
    root = world["home"] / "cache" / "bench" / prompts.NAME
    for f in root.glob("*.json"):
        d = json.loads(f.read_text())
        del d["result"]["n_prompt"]
        f.write_text(json.dumps(d))
    res = bench(world, "--kv", "turbo3", "--prompts", "p01")
    assert res.exit_code == BenchError.exit_code
    assert "error: the stored answer of f16 to p01 has no n_prompt" in res.output
    assert f"hint: remove the prompts cache ({prompts.NAME}) to measure it again" in res.output


def test_report_renders_tables_answers_and_the_plot(world: dict[str, Any]) -> None:
    out = world["tmp"] / "rep"
    res = bench(world, "--kv", "turbo4,turbo3", "--prompts", "p01,p08", "--report", str(out),
                "--output", str(world["tmp"] / "doc.json"))
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    assert "## Prompt matrix: answers against f16" in text
    assert "| prompt | category | f16 | turbo4 | turbo3 |" in text
    assert "### Answers side by side" in text and "**p08** (structured-json" in text
    assert "The largest planet in our solar system is Jupiter." in text
    assert "&quot;name&quot;: &quot;Lisbon&quot;" in text  # the JSON answers, escaped in the table
    assert (out / "prompts-similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![similarity](prompts-similarity.png)" in text
    # the saved document makes the same report again
    again = write_report(world["tmp"] / "rep2", [json.loads((world["tmp"] / "doc.json").read_text())])
    assert "## Prompt matrix: answers against f16" in again.report.read_text()


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], UsageError.exit_code, "error: give either --model FILE.gguf or --profile NAME"),
    (["--model", "NOPE"], ModelError.exit_code, "error: model file not found: "),
    (["--model", "MODEL", "--kv", "turbo9"], UsageError.exit_code,
     "error: unknown K cache type 'turbo9'; did you mean turbo4?"),
    (["--model", "MODEL", "--prompts", "p11"], UsageError.exit_code, "error: --prompts: no prompt p11; the prompts "),
    (["--model", "MODEL", "--max-tokens", "0"], UsageError.exit_code, "error: --max-tokens 0: expected at least 1"),
    (["--model", "MODEL", "--ctx", "32"], UsageError.exit_code, "error: --ctx 32: expected at least 64 tokens"),
])
def test_cli_errors(world: dict[str, Any], args: list[str], code: int, message: str) -> None:
    subst = {"MODEL": str(world["model"]), "NOPE": str(world["tmp"] / "missing.gguf")}
    res = runner.invoke(app, ["bench", "prompts", *[subst.get(a, a) for a in args]])
    assert res.exit_code == code, res.output
    assert message in res.output
    assert FakeServer.started == []


def test_cli_a_changed_corpus_is_refused(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    c = copy_corpora(world["tmp"])
    (c.root / "prompts" / "filler.txt").write_text("changed\n")
    monkeypatch.setattr(prompts, "Corpora", lambda: c)
    res = bench(world)
    assert res.exit_code == CorpusError.exit_code
    assert f"error: {c.root / 'prompts' / 'filler.txt'} was changed: its sha256 is " in res.output
    assert "hint: reinstall turboctl, or in a checkout restore the file" in res.output
    assert FakeServer.started == []


def test_a_profile_gives_the_model_its_recipe_and_its_server_args(world: dict[str, Any]) -> None:
    from tests.integration.serveproc import write_profile

    profile = write_profile(world["tmp"] / "p.yaml", "p", world["model"], "turbo4/turbo3", context=2048)
    res = runner.invoke(app, ["bench", "prompts", "--profile", str(profile), "--kv", "f16", "--prompts", "p01",
                              "--no-repack", "--json"])
    doc = doc_of(res)
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo4/turbo3"]
    assert doc["settings"]["extra_args"] == ["--no-repack"]  # the profile's, not twice
    assert doc["model"]["path"] == str(world["model"].resolve())
    assert FakeServer.started == ["f16", "turbo4/turbo3"]


def test_no_repack_reaches_the_server(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, ...]] = []

    def factory(m: Any, paths: Any, model: Any, label: str, ctx: int, ui: Any, **kw: Any) -> FakeServer:
        seen.append(tuple(kw["extra_args"]))
        return FakeServer(label, ctx, world["tmp"])

    monkeypatch.setattr(cells, "BenchServer", factory)
    doc = doc_of(bench(world, "--kv", "turbo3", "--prompts", "p01", "--no-repack", "--json"))
    assert seen == [("--no-repack",), ("--no-repack",)] and doc["settings"]["extra_args"] == ["--no-repack"]
    seen.clear()
    assert bench(world, "--kv", "turbo3", "--prompts", "p01").exit_code == 0
    assert seen == [(), ()]  # without it: other settings, measured again
