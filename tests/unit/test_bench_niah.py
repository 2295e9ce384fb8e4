"""bench niah: the corpus and its checks, prompt building at depths with a stand-in tokenizer,
the grid, the retrieval check, the document against its schema with a stand-in server (every
figure the server's), resume after a server that died mid-run, the report, and every error."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.unit.fakebuild import fake_build
from tests.unit.fitfakes import bench_like
from turboctl.bench import cells, corpus, niah
from turboctl.bench.report import write_report
from turboctl.bench.served import Completion, ServerDied
from turboctl.cli.main import app
from turboctl.errors import BenchError, CorpusError, ModelError, UsageError
from turboctl.paths import get_paths

runner = CliRunner()
WORD = re.compile(r"\w+|[^\w\s]|\n")


class FakeTokenizer:
    """A token per word, punctuation mark and newline; a plain chat template."""

    def __init__(self) -> None:
        self.calls = 0

    def tokenize(self, text: str) -> list[int]:
        self.calls += 1
        return [len(t) for t in WORD.findall(text)]

    def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"


def n_tokens(text: str) -> int:
    return len(WORD.findall(text))


NEEDLE = niah.Needle(id="key", sentence="The spare key is under the blue stone.", question="Where is the spare key?",
                     answer=r"blue\s+stone")
PARAGRAPHS = tuple(f"Paragraph {i} talks about the weather and the {i} clouds over the quiet town today." for i in
                   range(10))


# --------------------------------------------------------------------------- prompts at depths
def test_nearest_boundary() -> None:
    assert niah.nearest_boundary([10, 10, 10, 10], 0) == 0
    assert niah.nearest_boundary([10, 10, 10, 10], 50) == 2
    assert niah.nearest_boundary([10, 10, 10, 10], 60) == 2
    assert niah.nearest_boundary([10, 10, 10, 10], 64) == 3
    assert niah.nearest_boundary([10, 10, 10, 10], 100) == 4
    assert niah.nearest_boundary([10, 10], 25) == 0  # a tie: the earlier boundary
    assert niah.nearest_boundary([30, 10, 10], 50) == 1  # 25 of 50 tokens: nearer 30 than 40


@pytest.mark.parametrize(("depth", "after"), [(0, 0), (25, 2), (50, 4), (75, 6), (100, 8)])
def test_the_needle_at_each_depth(depth: int, after: int) -> None:
    tok = FakeTokenizer()
    built = niah.build_prompt(tok, PARAGRAPHS, NEEDLE, context=240, depth=depth, max_tokens=16)
    # a paragraph takes 16 tokens + 2 newlines; the template, instruction, question and needle 57; 8 paragraphs
    # fill 240 - 16 - 57 - the slack of 8 tokens
    assert built.paragraphs == 8 and not built.cycled
    assert built.prompt_tokens == n_tokens(built.prompt) == 57 + 8 * 18 <= 240 - 16
    assert built.needle_after == after
    document = "\n\n".join([*PARAGRAPHS[:after], NEEDLE.sentence, *PARAGRAPHS[after:8]])
    assert built.prompt == tok.apply_template(niah.messages_for(document, NEEDLE.question))
    start = built.prompt.index(document)
    at = built.prompt.index(NEEDLE.sentence)
    assert built.haystack_token == n_tokens(built.prompt[:start])
    assert built.needle_token == n_tokens(built.prompt[:at]) == built.haystack_token + after * 18
    assert built.needle_tokens == n_tokens(NEEDLE.sentence) == 9
    assert built.haystack_tokens == 8 * 18 + 9
    assert built.depth_actual == pytest.approx(100 * after / 8)


def test_the_prompt_fills_the_context_and_shrinks_when_joins_tokenize_longer() -> None:
    class Longer(FakeTokenizer):
        """A document tokenizes to more than its paragraphs (5 tokens more per join)."""

        def tokenize(self, text: str) -> list[int]:
            return super().tokenize(text) + [0] * text.count("\n\nParagraph") * 5

    built = niah.build_prompt(Longer(), PARAGRAPHS, NEEDLE, context=240, depth=50, max_tokens=16)
    # 8 fit by the counts alone, but their 7 joins take 35 tokens more: 236 > 224; 7 paragraphs take 213
    assert built.paragraphs == 7
    assert built.prompt_tokens == 57 + 7 * 18 + 6 * 5


def test_paragraphs_cycle_when_the_haystack_is_short() -> None:
    counts: dict[str, int] = {}
    tok = FakeTokenizer()
    built = niah.build_prompt(tok, PARAGRAPHS[:2], NEEDLE, context=400, depth=100, max_tokens=16, counts=counts)
    assert built.cycled and built.paragraphs == 17  # (400 - 16 - 57 - 8) // 18
    assert built.prompt.count(PARAGRAPHS[0]) == 9 and built.prompt.count(PARAGRAPHS[1]) == 8
    assert counts == {PARAGRAPHS[0]: 16, PARAGRAPHS[1]: 16, "\n\n": 2}
    calls = tok.calls
    niah.build_prompt(tok, PARAGRAPHS[:2], NEEDLE, context=400, depth=0, max_tokens=16, counts=counts)
    assert tok.calls - calls == 6  # the paragraphs' counts came from the cache: template, prompt, 4 positions


def test_a_context_without_room_for_a_paragraph() -> None:
    with pytest.raises(BenchError) as err:
        niah.build_prompt(FakeTokenizer(), PARAGRAPHS, NEEDLE, context=80, depth=0, max_tokens=16)
    assert err.value.message == ("context 80 leaves no room for a haystack paragraph: the template, the needle and the "
                                 "question take 57 tokens, and --max-tokens 16 more")


def test_a_template_that_changes_the_text() -> None:
    class Folding(FakeTokenizer):
        def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str:
            return super().apply_template(messages).replace("\n\n", "\n")

    with pytest.raises(BenchError) as err:
        niah.build_prompt(Folding(), PARAGRAPHS, NEEDLE, context=240, depth=50, max_tokens=16)
    assert err.value.message == "the model's chat template changed the document's text: cannot place the needle"


def test_marks() -> None:
    assert niah.mark(1, 1, unicode=True) == "✓" and niah.mark(0, 1, unicode=True) == "✗"
    assert niah.mark(1, 1, unicode=False) == "yes" and niah.mark(0, 1, unicode=False) == "no"
    assert niah.mark(2, 3, unicode=True) == "2/3"


# --------------------------------------------------------------------------- the corpus
def write_corpus(root: Path, haystack: str, needles: Any) -> corpus.Corpora:
    (root / "niah").mkdir(parents=True, exist_ok=True)
    (root / "niah" / "haystack.txt").write_text(haystack)
    (root / "niah" / "needles.json").write_text(needles if isinstance(needles, str) else json.dumps(needles))
    (root / corpus.SUMS).write_text(corpus.sums_text(root))
    return corpus.Corpora(root)


HAY = "First paragraph about rain.\n\nSecond paragraph about snow\nover two lines.\n\n\nThird about wind.\n"
ITEM = {"id": "key", "sentence": NEEDLE.sentence, "question": NEEDLE.question, "answer": NEEDLE.answer}


def test_the_shipped_corpus() -> None:
    got = niah.load_corpus()
    assert len(got.paragraphs) >= 40
    assert sum(len(p.split()) for p in got.paragraphs) >= 6000
    assert len(got.needles) >= 5 and len({n.id for n in got.needles}) == len(got.needles)
    for n in got.needles:
        assert n.pattern.search(n.sentence)
    assert got.haystack_sha256 == corpus.sha256_of(corpus.default_dir() / niah.HAYSTACK)


def test_a_corpus_of_our_own(tmp_path: Path) -> None:
    got = niah.load_corpus(write_corpus(tmp_path, HAY, {"needles": [ITEM]}))
    assert got.paragraphs == ("First paragraph about rain.", "Second paragraph about snow over two lines.",
                              "Third about wind.")
    assert got.needles == (NEEDLE,)


@pytest.mark.parametrize(("haystack", "needles", "message"), [
    ("Only one paragraph.\n", {"needles": [ITEM]},
     "HAY: expected paragraphs separated by blank lines, found 1"),
    (HAY, "{\"needles\": [", "NEEDLES:1:14: not valid JSON: Expecting value"),
    (HAY, {"needles": [ITEM, {k: v for k, v in ITEM.items() if k != "answer"}]},
     "NEEDLES: needles[1]: 'answer' is a required property"),
    (HAY, {"needles": []}, "NEEDLES: needles: [] should be non-empty"),
    (HAY, {"needles": [ITEM, ITEM]}, "NEEDLES: needles[1] (key): the id 'key' is used twice"),
    (HAY, {"needles": [{**ITEM, "answer": "blue(stone"}]},
     "NEEDLES: needles[0] (key): answer 'blue(stone' is not a regular expression: missing ), unterminated "
     "subpattern at position 4"),
    (HAY, {"needles": [{**ITEM, "answer": "red stone"}]},
     "NEEDLES: needles[0] (key): answer 'red stone' does not match its own sentence"),
    (HAY.replace("about snow", "about the Blue  Stone"), {"needles": [ITEM]},
     "HAY:3: 'Blue  Stone' matches the answer of needle key: the haystack must not hold an answer"),
])
def test_corpus_errors_name_the_file_and_the_item(tmp_path: Path, haystack: str, needles: Any, message: str) -> None:
    corpora = write_corpus(tmp_path, haystack, needles)
    with pytest.raises(CorpusError) as err:
        niah.load_corpus(corpora)
    hay, ndl = tmp_path / "niah" / "haystack.txt", tmp_path / "niah" / "needles.json"
    assert err.value.message == message.replace("HAY", str(hay)).replace("NEEDLES", str(ndl))


def test_a_changed_corpus_file(tmp_path: Path) -> None:
    corpora = write_corpus(tmp_path, HAY, {"needles": [ITEM]})
    (tmp_path / "niah" / "haystack.txt").write_text(HAY + "\nA paragraph added later.\n")
    with pytest.raises(CorpusError, match=r"haystack.txt was changed: its sha256 is [0-9a-f]{64}, SHA256SUMS line 1"):
        niah.load_corpus(corpora)


# --------------------------------------------------------------------------- runs against a stand-in server
class FakeServer:
    """A BenchServer stand-in: the stand-in tokenizer and template; it answers with the sentence of
    the needle in its prompt, except the configurations in ``forgets``, which answer otherwise when
    the needle opens the document; ``die_at``: the completion (counted over the run) at which the
    server exits."""

    started: ClassVar[list[str]] = []
    completions: ClassVar[list[tuple[str, int]]] = []
    die_at: ClassVar[int | None] = None
    forgets: ClassVar[set[str]] = set()
    needles: ClassVar[tuple[niah.Needle, ...]] = ()

    def __init__(self, label: str, context: int, tmp: Path) -> None:
        self.label, self.context = label, context
        self.log = tmp / f"server-{label}.log"
        self.tok = FakeTokenizer()

    def __enter__(self) -> FakeServer:
        FakeServer.started.append(self.label)
        self.log.write_text("")
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def tokenize(self, text: str) -> list[int]:
        return self.tok.tokenize(text)

    def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self.tok.apply_template(messages)

    def complete(self, prompt: str, *, n_predict: int, seed: int = 0, cache_prompt: bool = False) -> Completion:
        if FakeServer.die_at is not None and len(FakeServer.completions) + 1 == FakeServer.die_at:
            raise ServerDied(f"llama-server for {self.label} exited (code -9) during a completion; its log: {self.log}",
                             log_path=self.log)
        needle = next(n for n in FakeServer.needles if n.sentence in prompt)
        opens = prompt.index(needle.sentence) == prompt.index("Document:\n") + len("Document:\n")
        answer = "I could not find it." if self.label in FakeServer.forgets and opens else needle.sentence
        tokens = self.tokenize(answer)[:n_predict]
        n_prompt = len(self.tokenize(prompt))
        FakeServer.completions.append((self.label, n_prompt))
        return Completion(text=answer, tokens=tokens, n_prompt=n_prompt, n_predicted=len(tokens), stop_reason="eos",
                          timings={})


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home = get_paths().home
    m = fake_build(home)
    model = bench_like(tmp_path / "m.gguf", n_ctx_train=4096)
    FakeServer.started, FakeServer.completions, FakeServer.die_at, FakeServer.forgets = [], [], None, set()
    FakeServer.needles = niah.load_corpus().needles
    monkeypatch.setattr(cells, "BenchServer", lambda m, paths, model, label, ctx, ui, **kw:
                        FakeServer(label, ctx, tmp_path))
    return {"m": m, "model": model, "home": home, "tmp": tmp_path}


def bench(world: dict[str, Any], *args: str) -> Any:
    return runner.invoke(app, ["bench", "niah", "--model", str(world["model"]), *args])


def schema() -> dict[str, Any]:
    return dict(json.loads(niah.schema_path().read_text()))


def test_the_document_holds_what_the_server_returned(world: dict[str, Any]) -> None:
    FakeServer.forgets = {"turbo3"}
    res = bench(world, "--kv", "turbo3", "--ctx-list", "512,1024", "--depths", "0,50,100", "--max-tokens", "24",
                "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, schema())
    assert FakeServer.started == ["f16", "turbo3"]  # f16 added first: the answers are compared with it
    assert "f16 added: the agreement figures compare every configuration with it" in doc["notes"]
    assert doc["settings"]["server_context"] == 1024 and doc["settings"]["contexts"] == [512, 1024]
    assert [n["id"] for n in doc["settings"]["needles"]] == ["boathouse-key"]
    sentence = doc["settings"]["needles"][0]["sentence"]
    served = iter(FakeServer.completions)
    for cfg in doc["configurations"]:
        assert [c["cell"] for c in cfg["cells"]] == [f"ctx{c}-depth{d}-boathouse-key" for c in (512, 1024)
                                                     for d in (0, 50, 100)]
        for c in cfg["cells"]:
            label, n_prompt = next(served)
            assert label == cfg["label"] and c["n_prompt"] == n_prompt == c["prompt_tokens"]
            assert c["n_prompt"] + 24 <= c["context"] and c["cached"] is False
            assert c["needle_after_paragraph"] == (0 if c["depth"] == 0 else c["paragraphs"] if c["depth"] == 100
                                                   else c["paragraphs"] // 2)
            forgot = cfg["label"] == "turbo3" and c["depth"] == 0
            assert c["output"] == ("I could not find it." if forgot else sentence)
            assert c["retrieved"] is not forgot and c["n_predicted"] == n_tokens(c["output"])
            assert c["match"] == (None if forgot else "green flowerpot")
    f16, t3 = doc["grid"]
    assert f16 == {"label": "f16", "retrieved": 6, "total": 6, "contexts": [
        {"context": ctx, "depths": [{"depth": d, "retrieved": 1, "needles": 1} for d in (0, 50, 100)]}
        for ctx in (512, 1024)]}
    assert t3["retrieved"] == 4 and [[d["retrieved"] for d in r["depths"]] for r in t3["contexts"]] == [[0, 1, 1]] * 2
    assert [(c["label"], c["cell"], c["retrieved"], c["baseline_retrieved"]) for c in doc["changed_vs_baseline"]] == [
        ("turbo3", "ctx512-depth0-boathouse-key", False, True), ("turbo3", "ctx1024-depth0-boathouse-key", False, True)]


def test_the_table_shows_the_grid_and_the_changed_answers(world: dict[str, Any]) -> None:
    FakeServer.forgets = {"turbo3"}
    res = bench(world, "--kv", "f16,turbo3", "--ctx-list", "512", "--depths", "0,100")
    assert res.exit_code == 0, res.output
    assert "NIAH: needles retrieved (1 per cell) by context and depth" in res.stdout
    rows = [ln.split() for ln in res.stdout.splitlines() if ln.startswith(("f16 ", "turbo3 "))]
    assert rows == [["f16", "512", "✓", "✓", "2/2"], ["turbo3", "512", "✗", "✓", "1/2"]]
    assert ("turbo3 at context 512, depth 0%, needle boathouse-key: answered 'I could not find it.', f16 'The spare "
            "key for the boathouse is kept under the green flowerpot.' (not retrieved; f16 did)") in res.output
    FakeServer.forgets = set()
    res = bench(world, "--kv", "f16,turbo4", "--ctx-list", "512", "--depths", "0,100")
    assert "every configuration answered every cell as f16 did" in res.output


def test_several_needles_make_the_grid_counts(world: dict[str, Any]) -> None:
    FakeServer.forgets = {"turbo4"}
    res = bench(world, "--kv", "f16,turbo4", "--ctx-list", "1024", "--depths", "0,100", "--needles", "3", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, schema())
    assert [n["id"] for n in doc["settings"]["needles"]] == ["boathouse-key", "storeroom-code", "cat-name"]
    assert [c["cell"] for c in doc["configurations"][0]["cells"]][:3] == [
        "ctx1024-depth0-boathouse-key", "ctx1024-depth0-storeroom-code", "ctx1024-depth0-cat-name"]
    assert doc["grid"][1]["contexts"] == [{"context": 1024, "depths": [{"depth": 0, "retrieved": 0, "needles": 3},
                                                                       {"depth": 100, "retrieved": 3, "needles": 3}]}]
    res = bench(world, "--kv", "f16,turbo4", "--ctx-list", "1024", "--depths", "0,100", "--needles", "3")
    assert [ln.split() for ln in res.stdout.splitlines() if ln.startswith("turbo4 ")] == [
        ["turbo4", "1024", "0/3", "3/3", "3/6"]]


def test_the_default_contexts_stop_at_the_training_context(world: dict[str, Any], tmp_path: Path) -> None:
    model = bench_like(tmp_path / "short.gguf", n_ctx_train=2048)
    res = runner.invoke(app, ["bench", "niah", "--model", str(model), "--kv", "f16", "--depths", "50", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["settings"]["contexts"] == [1024, 2048] and doc["settings"]["server_context"] == 2048
    assert "contexts 4096 left out: above the training context 2048" in doc["notes"]
    assert doc["model"]["n_ctx_train"] == 2048
    assert niah.choose_contexts(None, 512) == ([512], ["contexts 1024, 2048, 4096 left out: above the training "
                                                       "context 512", "the training context 512 measured instead"])


def test_a_server_that_dies_mid_run_keeps_what_was_measured(world: dict[str, Any]) -> None:
    args = ["--kv", "f16,turbo3", "--ctx-list", "512,1024", "--depths", "0,100", "--json"]
    FakeServer.die_at = 6  # the second cell of turbo3
    res = bench(world, *args)
    assert res.exit_code == ServerDied.exit_code, res.output
    assert "error: llama-server for turbo3 exited (code -9) during a completion" in res.output
    assert [label for label, _ in FakeServer.completions] == ["f16"] * 4 + ["turbo3"]
    FakeServer.die_at, FakeServer.completions, FakeServer.started = None, [], []
    res = bench(world, *args)
    assert res.exit_code == 0, res.output
    assert FakeServer.started == ["turbo3"]  # every f16 cell was stored: no f16 server
    assert [label for label, _ in FakeServer.completions] == ["turbo3"] * 3
    assert "cached: f16 (4 results)" in res.stderr and "cached: turbo3 ctx512-depth0-boathouse-key" in res.stderr
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, schema())
    assert [c["cached"] for cfg in doc["configurations"] for c in cfg["cells"]] == [True] * 5 + [False] * 3
    assert doc["configurations"][0]["server_log"] is None
    # other settings are other results: another --max-tokens measures every cell again
    FakeServer.completions = []
    assert bench(world, *args, "--max-tokens", "20").exit_code == 0
    assert len(FakeServer.completions) == 8


def test_a_report_with_the_grid_plot(world: dict[str, Any], tmp_path: Path) -> None:
    FakeServer.forgets = {"turbo3"}
    out = tmp_path / "report"
    res = bench(world, "--kv", "f16,turbo3", "--ctx-list", "512,1024", "--depths", "0,100", "--report", str(out),
                "--output", str(tmp_path / "niah.json"))
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    assert "## Needle in a haystack" in text
    assert "| K/V | context | 0% | 100% | retrieved |" in text
    assert "| turbo3 | 512 | ✗ | ✓ | 1/2 |" in text
    assert "| turbo3 | 512 | 0% | boathouse-key | ✗ I could not find it. | ✓ The spare key for the boathouse is kept " \
           "under the green flowerpot. |" in text
    assert "![grid](niah-grid.png)" in text
    assert (out / "niah-grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "niah.json").read_text())
    jsonschema.validate(doc, schema())
    assert json.loads((out / "data" / "niah.json").read_text()) == doc
    again = write_report(tmp_path / "again", [doc])  # from the saved document alone
    assert "| f16 | 1024 | ✓ | ✓ | 2/2 |" in again.report.read_text()


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], UsageError.exit_code, "error: give either --model FILE.gguf or --profile NAME"),
    (["--model", "NOPE"], ModelError.exit_code, "error: model file not found: "),
    (["--model", "MODEL", "--depths", "0,150"], UsageError.exit_code,
     "error: --depths: 150 is outside 0..100 (a depth is a percentage of the haystack)"),
    (["--model", "MODEL", "--depths", "0,half"], UsageError.exit_code,
     "error: --depths: 'half' is not a whole number (expected percentages 0..100, e.g. 0,50,100)"),
    (["--model", "MODEL", "--depths", "-5"], UsageError.exit_code, "error: --depths: '-5' is not a whole number"),
    (["--model", "MODEL", "--depths", ","], UsageError.exit_code,
     "error: --depths ',': expected comma-separated percentages 0..100, e.g. 0,50,100"),
    (["--model", "MODEL", "--ctx-list", "1024,8192"], UsageError.exit_code,
     "error: --ctx-list: context 8192 is above the model's training context 4096"),
    (["--model", "MODEL", "--ctx-list", "1024,lots"], UsageError.exit_code,
     "error: --ctx-list '1024,lots': expected comma-separated positive token counts, e.g. 1024,4096"),
    (["--model", "MODEL", "--ctx-list", "32"], UsageError.exit_code,
     "error: --ctx-list: context 32 is too small (expected at least 64 tokens)"),
    (["--model", "MODEL", "--needles", "0"], UsageError.exit_code, "error: --needles 0: expected at least 1"),
    (["--model", "MODEL", "--needles", "9"], UsageError.exit_code, "error: --needles 9: the corpus has 5 needles"),
    (["--model", "MODEL", "--max-tokens", "0"], UsageError.exit_code, "error: --max-tokens 0: expected at least 1"),
    (["--model", "MODEL", "--kv", "turbo9"], UsageError.exit_code,
     "error: unknown K cache type 'turbo9'; did you mean turbo4?"),
])
def test_cli_errors(world: dict[str, Any], tmp_path: Path, args: list[str], code: int, message: str) -> None:
    subst = {"MODEL": str(world["model"]), "NOPE": str(tmp_path / "missing.gguf")}
    res = runner.invoke(app, ["bench", "niah", *[subst.get(a, a) for a in args]])
    assert res.exit_code == code, res.output
    assert message in res.output
    assert FakeServer.started == []


def test_a_context_too_small_for_the_prompt_is_an_error(world: dict[str, Any]) -> None:
    res = bench(world, "--kv", "f16", "--ctx-list", "96", "--depths", "0", "--max-tokens", "32")
    assert res.exit_code == BenchError.exit_code, res.output
    assert "error: context 96 leaves no room for a haystack paragraph: the template, the needle and the question " \
           "take " in res.output


def test_a_server_that_evaluates_more_than_the_prompt_was_built_for(world: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = FakeServer.complete

    def longer(self: FakeServer, prompt: str, **kw: Any) -> Completion:
        got = real(self, prompt, **kw)
        return Completion(text=got.text, tokens=got.tokens, n_prompt=600, n_predicted=got.n_predicted,
                          stop_reason=got.stop_reason, timings={})

    monkeypatch.setattr(FakeServer, "complete", longer)
    res = bench(world, "--kv", "f16", "--ctx-list", "512", "--depths", "0")
    assert res.exit_code == BenchError.exit_code, res.output
    assert "error: llama-server evaluated 600 prompt tokens for context 512: more than the 480 the prompt was built " \
           "for (" in res.output


def test_a_changed_shipped_corpus_is_refused_before_any_server(world: dict[str, Any], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "corpora"
    shutil.copytree(corpus.default_dir(), copy)
    needles = copy / "niah" / "needles.json"
    needles.write_text(needles.read_text().replace("green flowerpot", "red flowerpot"))
    monkeypatch.setattr(corpus, "default_dir", lambda: copy)
    res = bench(world, "--kv", "f16")
    assert res.exit_code == CorpusError.exit_code == 25, res.output
    assert f"error: {needles} was changed: its sha256 is " in res.output
    assert FakeServer.started == []


def test_a_profile_and_no_repack(world: dict[str, Any], tmp_path: Path) -> None:
    from tests.integration.serveproc import write_profile

    profile = write_profile(tmp_path / "p.yaml", "p", world["model"], "turbo3", context=2048)
    common = ["--ctx-list", "512", "--depths", "100", "--json"]
    res = runner.invoke(app, ["bench", "niah", "--profile", str(profile), "--kv", "f16", "--no-repack", *common])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo3"]
    assert doc["settings"]["extra_args"] == ["--no-repack"]  # the profile's, not twice
    assert doc["model"]["path"] == str(world["model"].resolve())
    res = bench(world, "--kv", "f16", "--no-repack", *common)
    assert json.loads(res.stdout)["settings"]["extra_args"] == ["--no-repack"]
    res = bench(world, "--kv", "f16", *common)
    assert json.loads(res.stdout)["settings"]["extra_args"] == []
