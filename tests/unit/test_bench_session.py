"""bench long-session: the shipped session and its checks (errors naming the item), the history
truncation rule, the signals on crafted texts, the divergence rule, and whole runs through the
CLI against a stand-in server (the document against its schema, every figure the stand-in's,
resume after a server that died mid-run, the report, every error message)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.unit.fakebuild import fake_build
from tests.unit.fitfakes import bench_like
from turboctl.bench import cells, corpus, session
from turboctl.bench.corpus import Corpora
from turboctl.bench.served import Completion, ServerDied
from turboctl.cli.main import app
from turboctl.errors import BenchError, CorpusError, ModelError, ServerFailed, UsageError
from turboctl.paths import get_paths

runner = CliRunner()


# --------------------------------------------------------------------------- the corpus
def test_the_shipped_session() -> None:
    s = session.load_session()
    assert len(s.turns) == 50
    assert [p for p in session.PHASES if any(t.phase == p for t in s.turns)] == list(session.PHASES)
    assert [t.phase for t in s.turns] == sorted((t.phase for t in s.turns), key=session.PHASES.index)
    assert sum(len(t.refers) for t in s.turns) > 100  # the turns really build on each other
    assert s.sha256 == corpus.sha256_of(Corpora().root / session.CORPUS)
    assert s.system


def corpora_with(tmp_path: Path, change: Any) -> Corpora:
    """A copy of the shipped corpora whose session document ``change(doc)`` edits (sums rewritten)."""
    root = tmp_path / "corpora"
    (root / "session").mkdir(parents=True)
    doc = json.loads((Corpora().root / session.CORPUS).read_text())
    change(doc)
    (root / session.CORPUS).write_text(json.dumps(doc))
    (root / corpus.SUMS).write_text(corpus.sums_text(root))
    return Corpora(root)


def _set(path: list[Any], value: Any) -> Any:
    def change(doc: Any) -> None:
        for p in path[:-1]:
            doc = doc[p]
        if value is KeyError:
            del doc[path[-1]]
        else:
            doc[path[-1]] = value
    return change


@pytest.mark.parametrize(("change", "message"), [
    (_set(["turns", 3, "text"], KeyError), "turns[3]: 'text' is a required property"),
    (_set(["turns", 2, "phase"], "planning"), "turns[2].phase: 'planning' is not one of"),
    (_set(["schema"], "other/1"), "schema: 'turboctl.corpus.session/1' was expected"),
    (_set(["turns", 1, "refers"], ["Item", "Item"]), "turns[1].refers: ['Item', 'Item'] has non-unique elements"),
    (_set(["turns", 1, "refers"], ["Ghost"]), "turns[1].refers[0]: 'Ghost' does not occur in the turn's text"),
    (_set(["turns", 0, "refers"], ["Item"]), "turns[0].refers[0]: 'Item' is not introduced by an earlier turn"),
    (_set(["turns", 1, "introduces"], ["StockBook", "Item"]),
     "turns[1].introduces[1]: 'Item' is already introduced by turns[0]"),
    (_set(["turns", 14, "phase"], "generation"), "turns[14].phase: 'generation' after 'debugging'"),
])
def test_a_malformed_session_names_the_item(tmp_path: Path, change: Any, message: str) -> None:
    c = corpora_with(tmp_path, change)
    with pytest.raises(CorpusError) as err:
        session.load_session(c)
    assert err.value.message.startswith(f"{c.root / session.CORPUS}: ")
    assert message in err.value.message
    assert err.value.exit_code == 25


def test_a_changed_session_file_is_refused(tmp_path: Path) -> None:
    c = corpora_with(tmp_path, lambda doc: None)
    path = c.root / session.CORPUS
    path.write_text(path.read_text().replace("stockbook", "stockpile", 1))
    with pytest.raises(CorpusError, match=r"session\.json was changed: its sha256 is [0-9a-f]{64}, SHA256SUMS line 1"):
        session.load_session(c)


# --------------------------------------------------------------------------- the truncation rule
def words(msgs: session.Messages) -> int:
    return sum(len(m["content"].split()) + 1 for m in msgs)


EX = [("one two", "three four five"), ("six seven", "eight"), ("nine ten", "eleven twelve")]


def test_the_history_is_kept_while_it_fits() -> None:
    msgs, dropped, n = session.fit_history("sys", EX, "last one", words, budget=100)
    assert dropped == 0 and n == words(msgs) == 2 + 3 + 4 + 3 + 2 + 3 + 3 + 3
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant",
                                         "user"]
    assert msgs[-1] == {"role": "user", "content": "last one"}


def test_the_oldest_exchanges_are_dropped_first_and_the_system_message_kept() -> None:
    # 23 words with everything; dropping one gives 16 (over 14), two gives 11 <= 14: truncate_to 1
    # drops just enough
    msgs, dropped, n = session.fit_history("sys", EX, "last one", words, budget=14, truncate_to=1.0)
    assert dropped == 2 and n == 2 + 3 + 3 + 3
    assert msgs == [{"role": "system", "content": "sys"}, {"role": "user", "content": "nine ten"},
                    {"role": "assistant", "content": "eleven twelve"}, {"role": "user", "content": "last one"}]
    # a dropped exchange is never brought back: start from the previous turn's count
    msgs, dropped, _ = session.fit_history("sys", EX, "x", words, budget=100, start=1)
    assert dropped == 1 and msgs[1] == {"role": "user", "content": "six seven"}
    msgs, dropped, _ = session.fit_history("", EX, "x", words, budget=100, start=9)
    assert dropped == 3 and msgs == [{"role": "user", "content": "x"}]


def test_the_history_is_cut_in_one_block_to_leave_room_for_the_next_turns() -> None:
    # budget 20: everything (23) is over it; dropping one exchange gives 16 <= 20 but over 3/4 of it
    # (15), so a second one goes too
    msgs, dropped, n = session.fit_history("sys", EX, "last one", words, budget=20)
    assert (dropped, n) == (2, 11) and n == words(msgs)
    assert session.fit_history("sys", EX, "last one", words, budget=20, truncate_to=0.9)[1:] == (1, 16)
    # a prompt that fits the budget is not cut, however close to it
    assert session.fit_history("sys", EX, "last one", words, budget=23)[1:] == (0, 23)
    # when no exchange is left, fitting the budget is enough
    assert session.fit_history("sys", EX, "a b c d e f g h i j", words, budget=14)[1:] == (3, 13)


def test_a_turn_that_cannot_fit_is_an_error() -> None:
    with pytest.raises(BenchError) as err:
        session.fit_history("sys", EX, "a long last message", words, budget=5)
    assert err.value.message == ("the prompt of this turn alone (system message and user text) is 7 tokens, more "
                                 "than the 5 left by --ctx minus --max-tokens")
    assert err.value.hint == "raise --ctx or lower --max-tokens"


# --------------------------------------------------------------------------- the signals
def test_repetition_values_worked_by_hand() -> None:
    assert session.repetition_ratio("the cat sat on the mat") == 0.0
    assert session.repetition_ratio("a b c d a b c d") == pytest.approx(1 / 5)  # abcd twice among 5
    assert session.repetition_ratio("go go go go go go") == pytest.approx(2 / 3)  # 3 four-grams, all the same
    assert session.repetition_ratio("only three words") is None
    assert session.repetition_ratio("") is None


def test_identifiers() -> None:
    text = ("Use add_item(sku) on the StockBook, then call render() and print(len(x)); class Item: pass. "
            "import argparse. The CSV file, a KeyError, self._apply and __init__ too.")
    assert session.identifiers(text) == ["Item", "StockBook", "__init__", "_apply", "add_item", "argparse",
                                         "render"]


def test_references() -> None:
    before = "Write add_item on StockBook. Then total_value."
    ref = session.references("Call add_item and new_helper() from StockBook; total value.", before,
                             ["add_item", "total_value"])
    assert ref == {"refers": ["add_item", "total_value"], "refers_mentioned": ["add_item"],
                   "earlier": ["StockBook", "add_item"], "unseen": ["new_helper"]}
    assert session.mentions("use add_item.", "add_item") and not session.mentions("use add_items", "add_item")


def test_agreement() -> None:
    assert session.agreement([1, 2, 3], [1, 2, 3]) == {"prefix_tokens": 3, "similarity": 1.0, "identical": True}
    a = session.agreement([1, 2, 9, 4], [1, 2, 3, 4])
    assert a == {"prefix_tokens": 2, "similarity": pytest.approx(0.75), "identical": False}
    assert session.agreement([5, 6], [1, 2]) == {"prefix_tokens": 0, "similarity": 0.0, "identical": False}
    assert session.agreement([], [])["similarity"] == 1.0


@pytest.mark.parametrize(("sims", "turn"), [
    ([1.0, 0.9, 0.8], None),
    ([1.0, 0.4, 0.9, 0.3, 0.2], 4),   # one low turn alone is not a divergence
    ([0.49, 0.1, 1.0], 1),
    ([1.0, 1.0, 0.2], 3),             # the last turn counts alone
    ([0.5, 0.5], None),               # the threshold itself is agreement
    ([], None),
])
def test_first_divergence(sims: list[float], turn: int | None) -> None:
    assert session.first_divergence(sims) == turn


# --------------------------------------------------------------------------- runs against a stand-in
def fake_answer(label: str, turn: int, refers: tuple[str, ...]) -> str:
    """f16 (and turbo4) answer with the turn's names; turbo3 wanders off from turn 3 on."""
    if label == "turbo3" and turn >= 3:
        return f"Sorry, I made up made_up_{turn}() instead. " + "loop loop loop loop " * 3
    return f"Turn {turn}: use " + ", ".join(refers or ("nothing",)) + f" and helper_{turn}(x)."


class FakeServer:
    """A BenchServer stand-in: the chat template as <role>text, one token per word; answers by
    :func:`fake_answer` for the last user message's turn."""

    started: ClassVar[list[str]] = []
    die_at: ClassVar[tuple[str, int] | None] = None
    prompts: ClassVar[list[tuple[str, str, bool]]] = []

    def __init__(self, label: str, context: int, tmp: Path, extra_args: tuple[str, ...]) -> None:
        self.label, self.context, self.extra_args = label, context, extra_args
        self.log = tmp / f"server-{label}.log"
        self.turns = session.load_session().turns

    def __enter__(self) -> FakeServer:
        FakeServer.started.append(self.label)
        self.log.write_text("fake\n")
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def apply_template(self, messages: Any) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def tokenize(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]

    def complete(self, prompt: str, *, n_predict: int, cache_prompt: bool = False) -> Completion:
        user = prompt.rsplit("<user>", 1)[1].removesuffix("<assistant>")
        turn = next(i for i, t in enumerate(self.turns, 1) if t.text == user)
        if (self.label, turn) == FakeServer.die_at:
            raise ServerDied(f"llama-server for {self.label} exited (code -9) during a completion; its log: "
                             f"{self.log}", log_path=self.log)
        FakeServer.prompts.append((self.label, prompt, cache_prompt))
        words_ = fake_answer(self.label, turn, self.turns[turn - 1].refers).split()[:n_predict]
        tokens = [sum(map(ord, w)) for w in words_]
        return Completion(text=" ".join(words_), tokens=tokens, n_prompt=len(self.tokenize(prompt)),
                          n_predicted=len(tokens), stop_reason="limit" if len(tokens) == n_predict else "eos",
                          timings={"predicted_n": len(tokens)})


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    home = get_paths().home
    m = fake_build(home)
    model = bench_like(tmp_path / "m.gguf", n_ctx_train=4096)
    FakeServer.started, FakeServer.die_at, FakeServer.prompts = [], None, []
    monkeypatch.setattr(cells, "BenchServer", lambda m, paths, model, label, ctx, ui, extra_args=():
                        FakeServer(label, ctx, tmp_path, tuple(extra_args)))
    return {"m": m, "model": model, "home": home, "tmp": tmp_path}


def bench(world: dict[str, Any], *args: str) -> Any:
    return runner.invoke(app, ["bench", "long-session", "--model", str(world["model"]), *args])


def validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, json.loads(session.schema_path().read_text()))


def test_a_run_and_its_document(world: dict[str, Any]) -> None:
    res = bench(world, "--kv", "turbo3", "--turns", "6", "--max-tokens", "12", "--ctx", "160", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    validate(doc)
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo3"]
    assert doc["notes"] == ["f16 added: the agreement figures compare every configuration with it"]
    assert FakeServer.started == ["f16", "turbo3"]
    assert doc["settings"]["context"] == 160 and doc["settings"]["turns"] == 6
    turns = session.load_session().turns
    f16, t3 = doc["configurations"]
    for c in (f16, t3):
        assert [t["turn"] for t in c["turns"]] == list(range(1, 7))
        assert [t["cell"] for t in c["turns"]] == [f"turn-{i:02d}" for i in range(1, 7)]
        sent = [p for p in FakeServer.prompts if p[0] == c["label"]]
        assert all(p[2] for p in sent)  # cache_prompt on every turn
        for t, (_, prompt, _) in zip(c["turns"], sent, strict=True):
            want = fake_answer(c["label"], t["turn"], turns[t["turn"] - 1].refers).split()[:12]
            assert t["text"] == " ".join(want)
            assert t["tokens"] == [sum(map(ord, w)) for w in want]
            assert t["response_tokens"] == len(want) and t["n_prompt"] == len(prompt.split())
            assert t["prompt_tokens"] == t["n_prompt"] <= 160 - 12
            assert t["stop_reason"] == ("limit" if len(want) == 12 else "eos")
            assert t["repetition"] == session.repetition_ratio(t["text"])
            assert t["cached"] is False
            # its own history: the earlier answers of this configuration, the oldest dropped first
            kept = [x for x in c["turns"] if x["turn"] < t["turn"]][t["dropped"]:]
            assert prompt.count("<assistant>") == len(kept) + 1
            assert all(f"<assistant>{x['text']}<user>" in prompt for x in kept)
    assert max(t["dropped"] for t in f16["turns"]) > 0  # 160 tokens: the history was truncated
    assert [t["dropped"] for t in f16["turns"]] == sorted(t["dropped"] for t in f16["turns"])
    assert all(t["agreement"] is None for t in f16["turns"])
    sims = [t["agreement"]["similarity"] for t in t3["turns"]]
    assert sims[:2] == [1.0, 1.0] and all(s < 0.5 for s in sims[2:])
    assert [t["agreement"]["prefix_tokens"] for t in t3["turns"]][:3] == [len(f16["turns"][0]["tokens"]),
                                                                         len(f16["turns"][1]["tokens"]), 0]
    assert t3["summary"]["first_divergence"] == 3 and f16["summary"]["first_divergence"] is None
    assert t3["summary"]["identical_turns"] == 2 and f16["summary"]["identical_turns"] is None
    assert t3["summary"]["mean_agreement"] == pytest.approx(sum(sims) / 6)
    assert t3["turns"][3]["references"]["unseen"] == ["made_up_4"]
    t2 = f16["turns"][1]["references"]
    assert t2["refers"] == ["Item", "sku"] and t2["refers_mentioned"] == ["Item", "sku"]
    assert t2["unseen"] == ["helper_2"]
    assert f16["turns"][2]["references"]["earlier"] == ["StockBook"]


def test_the_table_per_turn_rows_and_the_report(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = bench(world, "--kv", "f16,turbo3", "--turns", "4", "--max-tokens", "10", "--ctx", "512", "-v",
                "--report", str(out), "--output", str(tmp_path / "doc.json"))
    assert res.exit_code == 0, res.output
    assert "long session: each configuration's own conversation vs f16's" in res.output
    assert "turbo3: per turn" in res.output and "f16: per turn" in res.output
    assert "first divergence: the first turn whose agreement" in res.output
    assert "turn 3" in res.output and "(baseline)" in res.output
    assert "turbo3: first answer different from f16's at turn 3 (0 leading tokens equal)" in res.output
    md = (out / "report.md").read_text()
    assert "## Long session" in md and "long-session-agreement.png" in md
    assert (out / "long-session-agreement.png").stat().st_size > 1000
    assert (out / "long-session-repetition.png").stat().st_size > 1000
    validate(json.loads((tmp_path / "doc.json").read_text()))


def test_a_server_that_dies_keeps_the_turns_measured_and_the_rerun_resumes(world: dict[str, Any]) -> None:
    FakeServer.die_at = ("turbo3", 3)
    args = ("--kv", "turbo3", "--turns", "4", "--max-tokens", "10", "--ctx", "512")
    res = bench(world, *args)
    assert res.exit_code == ServerFailed.exit_code, res.output
    assert "error: llama-server for turbo3 exited (code -9) during a completion" in res.output
    FakeServer.die_at, FakeServer.started, FakeServer.prompts = None, [], []
    res = bench(world, *args, "--json")
    assert res.exit_code == 0, res.output
    assert FakeServer.started == ["turbo3"]
    assert "cached: f16 (4 results)" in res.stderr
    assert "cached: turbo3 turn-01" in res.stderr and "cached: turbo3 turn-02" in res.stderr
    assert len(FakeServer.prompts) == 2
    doc = json.loads(res.stdout)
    validate(doc)
    assert [t["cached"] for c in doc["configurations"] for t in c["turns"]] == [True] * 6 + [False] * 2
    # the resumed turn's history holds the cached answers
    assert f"<assistant>{doc['configurations'][1]['turns'][1]['text']}<user>" in FakeServer.prompts[0][1]
    # a longer run reuses the shorter one's turns
    FakeServer.started, FakeServer.prompts = [], []
    res = bench(world, "--kv", "turbo3", "--turns", "5", "--max-tokens", "10", "--ctx", "512", "--json")
    assert res.exit_code == 0 and len(FakeServer.prompts) == 2


def test_a_stored_result_without_a_figure_is_an_error(world: dict[str, Any]) -> None:
    assert bench(world, "--kv", "f16", "--turns", "1").exit_code == 0
    for f in (world["home"] / "cache" / "bench" / session.NAME).glob("*.json"):
        doc = json.loads(f.read_text())
        doc.pop("tokens", None)
        doc.get("result", {}).pop("tokens", None)
        f.write_text(json.dumps(doc))
    res = bench(world, "--kv", "f16", "--turns", "1")
    assert res.exit_code == BenchError.exit_code, res.output
    assert "error: the stored result of f16 turn-01 has no 'tokens'" in res.output


def test_the_context_is_capped_at_the_training_context(world: dict[str, Any]) -> None:
    res = bench(world, "--kv", "f16", "--turns", "1", "--max-tokens", "4", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["settings"]["context"] == 4096 and doc["settings"]["requested_context"] == 8192
    assert doc["notes"] == ["--ctx 8192 capped at the model's training context 4096"]


def test_no_repack_reaches_the_server(world: dict[str, Any]) -> None:
    res = bench(world, "--kv", "f16", "--turns", "1", "--max-tokens", "4", "--no-repack", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["settings"]["extra_args"] == ["--no-repack"]


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], UsageError.exit_code, "error: give either --model FILE.gguf or --profile NAME"),
    (["--model", "NOPE"], ModelError.exit_code, "error: model file not found: "),
    (["--model", "MODEL", "--kv", "turbo9"], UsageError.exit_code,
     "error: unknown K cache type 'turbo9'; did you mean turbo4?"),
    (["--model", "MODEL", "--turns", "0"], UsageError.exit_code,
     "error: --turns 0: expected 1 to 50 (the session has 50 turns)"),
    (["--model", "MODEL", "--turns", "51"], UsageError.exit_code,
     "error: --turns 51: expected 1 to 50 (the session has 50 turns)"),
    (["--model", "MODEL", "--max-tokens", "0"], UsageError.exit_code, "error: --max-tokens 0: expected at least 1"),
    (["--model", "MODEL", "--max-tokens", "300", "--ctx", "256"], UsageError.exit_code,
     "error: --max-tokens 300: leaves no room for the prompt in a context of 256 tokens"),
    (["--model", "MODEL", "--ctx", "32"], UsageError.exit_code, "error: --ctx 32: expected at least 64 tokens"),
    (["--model", "MODEL", "--kv", "f16", "--ctx", "64", "--max-tokens", "40"], BenchError.exit_code,
     "error: turn 1: the prompt of this turn alone (system message and user text) is "),
])
def test_cli_errors(world: dict[str, Any], tmp_path: Path, args: list[str], code: int, message: str) -> None:
    subst = {"MODEL": str(world["model"]), "NOPE": str(tmp_path / "missing.gguf")}
    res = runner.invoke(app, ["bench", "long-session", *[subst.get(a, a) for a in args]])
    assert res.exit_code == code, res.output
    assert message in res.output.replace("\n", " ") or message in res.output


def test_a_changed_corpus_stops_the_run_before_any_server(world: dict[str, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    c = corpora_with(tmp_path, lambda doc: None)
    path = c.root / session.CORPUS
    path.write_text(path.read_text() + " ")
    monkeypatch.setattr(session, "Corpora", lambda: c)
    res = bench(world, "--turns", "2")
    assert res.exit_code == CorpusError.exit_code, res.output
    assert "session.json was changed" in res.output
    assert FakeServer.started == []


def test_the_report_of_a_saved_document(world: dict[str, Any], tmp_path: Path) -> None:
    from turboctl.bench.report import write_report

    res = bench(world, "--kv", "turbo3", "--turns", "3", "--max-tokens", "8", "--ctx", "512", "--json")
    doc = json.loads(res.stdout)
    written = write_report(tmp_path / "again", [copy.deepcopy(doc)])
    text = written.report.read_text()
    assert "| turbo3 | " in text and "turn 3" in text
    # the first answer turbo3 gives differently, beside f16's
    f16, t3 = doc["configurations"]
    assert ("**turbo3** first answers differently at turn 3 (generation): 0 leading tokens equal, similarity "
            f"{t3['turns'][2]['agreement']['similarity']:.3f}.") in text
    assert f"f16:\n\n````text\n{f16['turns'][2]['text']}\n````" in text
    assert f"turbo3:\n\n````text\n{t3['turns'][2]['text']}\n````" in text


def test_identical_answers_are_said(world: dict[str, Any]) -> None:
    res = bench(world, "--kv", "turbo4", "--turns", "2", "--max-tokens", "8", "--ctx", "512", "--json")
    doc = json.loads(res.stdout)
    assert session.first_differences(doc) == ["", "**turbo4**: every answer is token for token f16's."]
