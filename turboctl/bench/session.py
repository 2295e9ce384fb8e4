"""``turboctl bench long-session``: one long conversation per configuration (the shipped
``session/session.json``: 50 user turns building one small Python project through code
generation, debugging, refactoring, testing and iteration), with per-turn signals and the first
turn where a configuration's conversation diverges from f16's.

Each configuration continues *its own* conversation: the history of turn N holds that
configuration's own answers to turns 1..N-1. Each turn is one cell of
:func:`turboctl.bench.cells.run_cells` (cached one by one: an interrupted run resumes at the
first turn not measured), generated at temperature 0 through the model's chat template with
``cache_prompt`` (each turn's prompt extends the previous one's, so the server reuses the KV it
already holds).

**History truncation.** A turn's prompt (the template applied to the system message, the kept
exchanges and this turn's user text, counted with the server's tokenizer) must leave room for
``--max-tokens``: ``prompt tokens <= budget`` with ``budget = context - max_tokens``. When it
does not, the oldest exchange (user text and answer) is dropped, then the next oldest, until the
prompt is at most :data:`TRUNCATE_TO` (3/4) of the budget, in one block: the next turns then
extend this prompt again (the server reuses the KV it holds) instead of every turn near the limit
dropping one exchange at the front and the server computing the whole prompt again. When no
exchange is left the prompt need only fit the budget. The system message is always kept, and an
exchange dropped once is never brought back (a turn starts from the previous turn's count). Each
turn records how many exchanges were dropped. When even the system message and this turn's text
alone do not fit, the run stops with an error.

**Signals of a turn** (computed from what the server returned):

* ``response_tokens``, ``stop_reason``: llama-server's ``tokens_predicted`` and ``stop_type``.
* ``repetition``: the share of repeated word 4-grams in the answer: words are ``\\w+`` runs,
  lower-cased; ``(4-grams - distinct 4-grams) / 4-grams``; 0 is no repetition, near 1 a loop.
  ``null`` when the answer has fewer than 4 words (no 4-gram).
* ``references``: the turn's ``refers`` (names the corpus says this turn's text uses from earlier
  turns) that the answer mentions; and the *identifiers* of the answer (words with ``_`` or an
  inner capital, or followed by ``(``, or after ``def``/``class``/``import``; Python keywords and
  builtins left out) split into ``earlier`` (they occur as a word in the conversation before the
  answer: the system message, the user texts up to this turn, this configuration's earlier
  answers, dropped ones included) and ``unseen`` (they occur nowhere before: names the answer
  made up, or introduced).
* ``agreement`` with f16's answer to the same turn (not for f16 itself): ``prefix_tokens``, the
  number of leading token ids equal; ``similarity``, :class:`difflib.SequenceMatcher`'s ratio
  over the two token id lists (1.0 identical, 0.0 nothing in common). After the first
  difference the two histories differ too, so later agreement measures the two *conversations*,
  not one answer given the same history.

**Divergence**: the first turn whose similarity is below :data:`DIVERGENCE_THRESHOLD` (0.5) on
that turn and the next one (:data:`DIVERGENCE_TURNS` = 2 consecutive turns; the last turn run
counts alone). ``null``: the configuration never diverged in the turns run.
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..build.manifest import Manifest
from ..errors import BenchError, CorpusError, UsageError
from ..models.gguf import read_metadata
from ..paths import Paths
from ..serve import whatif
from ..ui import UI
from . import cells
from .corpus import Corpora
from .report import Section
from .served import BenchServer

NAME = "long-session"
SCHEMA = "turboctl.bench.long-session/2"
CORPUS = "session/session.json"
CORPUS_SCHEMA_ID = "turboctl.corpus.session/1"
DEFAULT_KV = ("f16", "turbo4", "turbo3")
DEFAULT_MAX_TOKENS = 160
DEFAULT_CONTEXT = 8192
DIVERGENCE_THRESHOLD = 0.5
DIVERGENCE_TURNS = 2
NGRAM = 4
TRUNCATE_TO = 0.75
RESULT_VERSION = 2
PHASES = ("generation", "debugging", "refactoring", "testing", "iteration")

CORPUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "title", "system", "turns"],
    "properties": {
        "schema": {"const": CORPUS_SCHEMA_ID},
        "title": {"type": "string", "minLength": 1},
        "system": {"type": "string", "description": "the system message; empty for none"},
        "turns": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["phase", "text", "introduces", "refers"],
                "properties": {
                    "phase": {"enum": list(PHASES)},
                    "text": {"type": "string", "minLength": 1},
                    "introduces": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
                    "refers": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
                },
            },
        },
    },
}
"""The corpus file's layout: each turn's ``introduces`` are the names it brings in, its
``refers`` the names of earlier turns it uses (both must occur as words in its text)."""


# --------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Turn:
    phase: str
    text: str
    introduces: tuple[str, ...]
    refers: tuple[str, ...]


@dataclass(frozen=True)
class Session:
    title: str
    system: str
    turns: tuple[Turn, ...]
    sha256: str


def mentions(text: str, name: str) -> bool:
    """``name`` occurs in ``text`` as a word (not inside a longer identifier)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def check_session(doc: Mapping[str, Any], path: Path) -> Session:
    """The corpus document (already valid against :data:`CORPUS_SCHEMA`) as a :class:`Session`;
    CorpusError naming the item when a name is not in its turn's text, is introduced twice, or
    is referred to before a turn introduces it, or when the phases are out of order."""
    introduced: dict[str, int] = {}
    turns: list[Turn] = []
    last_phase = 0
    for i, t in enumerate(doc["turns"]):
        where = f"{path}: turns[{i}]"
        phase = PHASES.index(t["phase"])
        if phase < last_phase:
            raise CorpusError(f"{where}.phase: {t['phase']!r} after {PHASES[last_phase]!r} (the phases run "
                              f"{' -> '.join(PHASES)})")
        last_phase = phase
        for key in ("introduces", "refers"):
            for j, name in enumerate(t[key]):
                if not mentions(t["text"], name):
                    raise CorpusError(f"{where}.{key}[{j}]: {name!r} does not occur in the turn's text")
        for j, name in enumerate(t["introduces"]):
            if name in introduced:
                raise CorpusError(f"{where}.introduces[{j}]: {name!r} is already introduced by "
                                  f"turns[{introduced[name]}]")
        for j, name in enumerate(t["refers"]):
            if name not in introduced:
                raise CorpusError(f"{where}.refers[{j}]: {name!r} is not introduced by an earlier turn")
        for name in t["introduces"]:
            introduced[name] = i
        turns.append(Turn(phase=t["phase"], text=t["text"], introduces=tuple(t["introduces"]),
                          refers=tuple(t["refers"])))
    return Session(title=doc["title"], system=doc["system"], turns=tuple(turns), sha256="")


def load_session(corpora: Corpora | None = None) -> Session:
    """The shipped session, verified (its sha256, :data:`CORPUS_SCHEMA`, :func:`check_session`)."""
    c = corpora or Corpora()
    doc = c.json(CORPUS, CORPUS_SCHEMA)
    path = c.path(CORPUS)
    s = check_session(doc, path)
    return replace(s, sha256=c.sums()[CORPUS][0])


# --------------------------------------------------------------------------- the history
Messages = list[dict[str, str]]


def messages_for(system: str, exchanges: Sequence[tuple[str, str]], user: str) -> Messages:
    out: Messages = [{"role": "system", "content": system}] if system else []
    for question, answer in exchanges:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return [*out, {"role": "user", "content": user}]


def fit_history(system: str, exchanges: Sequence[tuple[str, str]], user: str, count: Callable[[Messages], int],
                budget: int, start: int = 0, truncate_to: float = TRUNCATE_TO) -> tuple[Messages, int, int]:
    """The messages of a turn under the truncation rule (the module's text): at least ``start``
    oldest exchanges dropped; when the prompt is over ``budget``, more are dropped until it is at
    most ``truncate_to * budget`` (or none is left and it fits ``budget``); the messages, the
    number dropped and their token count. BenchError when it cannot fit."""
    dropped = min(start, len(exchanges))
    limit = budget
    while True:
        msgs = messages_for(system, exchanges[dropped:], user)
        n = count(msgs)
        if n <= limit or (dropped >= len(exchanges) and n <= budget):
            return msgs, dropped, n
        if dropped >= len(exchanges):
            raise BenchError(f"the prompt of this turn alone (system message and user text) is {n} tokens, more "
                             f"than the {budget} left by --ctx minus --max-tokens",
                             hint="raise --ctx or lower --max-tokens")
        limit = int(budget * truncate_to)
        dropped += 1

# --------------------------------------------------------------------------- the signals
_WORD = re.compile(r"\w+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))


def repetition_ratio(text: str, n: int = NGRAM) -> float | None:
    """The share of repeated word ``n``-grams (the module's text); None under ``n`` words."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    return (len(grams) - len(set(grams))) / len(grams)


def identifiers(text: str) -> list[str]:
    """The identifier-like names of ``text`` (the module's text), sorted, once each."""
    out: set[str] = set()
    for m in _IDENT.finditer(text):
        word = m.group()
        before = text[max(0, m.start() - 7):m.start()]
        code_like = ("_" in word.strip("_") or word[0] == "_" or any(c.isupper() for c in word[1:])
                     or text[m.end():m.end() + 1] == "(" or re.search(r"\b(def|class|import)\s+$", before) is not None)
        if code_like and word not in _NOT_NAMES and not word.isupper() and not word.isdigit():
            out.add(word)
    return sorted(out)


def references(answer: str, before: str, refers: Sequence[str]) -> dict[str, Any]:
    """The references of an answer: ``refers`` it mentions, its identifiers that occur in
    ``before`` (the conversation before it) and those that do not."""
    names = identifiers(answer)
    earlier = [x for x in names if mentions(before, x)]
    return {"refers": list(refers), "refers_mentioned": [r for r in refers if mentions(answer, r)],
            "earlier": earlier, "unseen": [x for x in names if x not in earlier]}


def agreement(tokens: Sequence[int], baseline: Sequence[int]) -> dict[str, Any]:
    """Agreement of an answer's token ids with the baseline's for the same turn."""
    prefix, sim, identical = cells.token_agreement(tokens, baseline)
    return {"prefix_tokens": prefix, "similarity": sim, "identical": identical}


def first_divergence(similarity: Sequence[float], threshold: float = DIVERGENCE_THRESHOLD,
                     turns: int = DIVERGENCE_TURNS) -> int | None:
    """The 1-based turn where the similarity falls below ``threshold`` for ``turns`` consecutive
    turns (fewer at the end of the run: the last turns count alone); None when it never does."""
    for i in range(len(similarity)):
        window = similarity[i:i + turns]
        if window and all(s < threshold for s in window):
            return i + 1
    return None


# --------------------------------------------------------------------------- the plan and the run
@dataclass(frozen=True)
class SessionPlan:
    served: cells.ServedPlan
    session: Session
    turns: int
    max_tokens: int
    requested_context: int
    n_ctx_train: int
    notes: tuple[str, ...] = ()


def make_plan(m: Manifest, paths: Paths, ui: UI, *, model: Path, kv: Sequence[str], turns: int | None = None,
              max_tokens: int = DEFAULT_MAX_TOKENS, context: int = DEFAULT_CONTEXT, extra_kv: Sequence[str] = (),
              extra_args: Sequence[str] = (), corpora: Corpora | None = None) -> SessionPlan:
    """The configurations (f16 added when missing), the session's first ``turns`` turns, and the
    context capped at the model's training context."""
    session = load_session(corpora)
    total = len(session.turns)
    n = total if turns is None else turns
    if not 1 <= n <= total:
        raise UsageError(f"--turns {n}: expected 1 to {total} (the session has {total} turns)")
    if max_tokens < 1:
        raise UsageError(f"--max-tokens {max_tokens}: expected at least 1")
    served = cells.make_plan(m, paths, ui, name=NAME, schema=SCHEMA, model=model, kv=kv, defaults=DEFAULT_KV,
                             context=context, extra_kv=extra_kv, extra_args=extra_args, need_baseline=True)
    train = whatif.n_ctx_train_of(read_metadata(served.model))
    notes = list(served.notes)
    if context > train:
        served = replace(served, context=train)
        notes.append(f"--ctx {context} capped at the model's training context {train}")
    if max_tokens >= served.context:
        raise UsageError(f"--max-tokens {max_tokens}: leaves no room for the prompt in a context of "
                         f"{served.context} tokens", hint="lower --max-tokens or raise --ctx")
    return SessionPlan(served=served, session=session, turns=n, max_tokens=max_tokens, requested_context=context,
                       n_ctx_train=train, notes=tuple(notes))


def turn_cells(plan: SessionPlan) -> list[cells.Cell]:
    """One cell per turn; its result depends on the corpus (every earlier turn's text) and the
    tokens allowed, not on how many turns this run asks for (a longer run reuses a shorter one's)."""
    return [cells.Cell(id=f"turn-{i:02d}", settings={"corpus_sha256": plan.session.sha256, "turn": i,
                                                     "max_tokens": plan.max_tokens})
            for i in range(1, plan.turns + 1)]


def measure_turn(plan: SessionPlan, bs: BenchServer, cell: cells.Cell,
                 earlier: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One turn of a configuration's own conversation (its earlier answers in ``earlier``)."""
    index = int(cell.settings["turn"]) - 1
    turns = plan.session.turns
    if len(earlier) != index:
        raise BenchError(f"internal: turn {index + 1} measured after {len(earlier)} turns")
    exchanges = [(turns[j].text, str(earlier[j]["text"])) for j in range(index)]
    prompts: dict[int, str] = {}

    def count(msgs: Messages) -> int:
        prompt = bs.apply_template(msgs)
        prompts[len(msgs)] = prompt
        return len(bs.tokenize(prompt))

    start = int(earlier[-1]["dropped"]) if earlier else 0
    try:
        msgs, dropped, counted = fit_history(plan.session.system, exchanges, turns[index].text, count,
                                             plan.served.context - plan.max_tokens, start)
    except BenchError as exc:
        raise BenchError(f"turn {index + 1}: {exc.message}", hint=exc.hint) from None
    c = bs.complete(prompts[len(msgs)], n_predict=plan.max_tokens, cache_prompt=True)
    return {"turn": index + 1, "phase": turns[index].phase, "dropped": dropped, "prompt_tokens": counted,
            "text": c.text, "tokens": c.tokens, "n_prompt": c.n_prompt, "n_predicted": c.n_predicted,
            "stop_reason": c.stop_reason, "timings": c.timings}


@dataclass
class SessionReport:
    plan: SessionPlan
    results: list[cells.ConfigCells] = field(default_factory=list)


def run(plan: SessionPlan, m: Manifest, paths: Paths, ui: UI,
        server: cells.ServerFactory | None = None) -> SessionReport:
    for note in plan.notes:
        ui.info(note)
    turns = plan.session.turns

    def describe(cell: cells.Cell) -> str:
        i = int(cell.settings["turn"])
        return f"turn {i}/{plan.turns} ({turns[i - 1].phase})"

    got = cells.run_cells(plan.served, m, paths, ui, turn_cells(plan),
                          lambda bs, cell, earlier: measure_turn(plan, bs, cell, earlier),
                          result_version=RESULT_VERSION, server=server, describe=describe)
    return SessionReport(plan, got)


# --------------------------------------------------------------------------- the signals of a run
def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _figure(entry: Mapping[str, Any], key: str, label: str) -> Any:
    if key not in entry:
        raise BenchError(f"the stored result of {label} {entry.get('cell', '?')} has no {key!r}",
                         hint="delete the long-session results (cache/bench/long-session under the turboctl "
                              "home) and run again")
    return entry[key]


def turn_rows(plan: SessionPlan, report: SessionReport) -> list[list[dict[str, Any]]]:
    """Per configuration, per turn: what the server returned and the signals (the module's text)."""
    baseline = next((r for r in report.results if r.config.label == cells.BASELINE), None)
    if baseline is None:
        raise BenchError("no f16 run to compare with")
    turns = plan.session.turns
    out = []
    for r in report.results:
        rows = []
        before = plan.session.system
        for i, e in enumerate(r.results):
            label = r.config.label
            text, tokens = _figure(e, "text", label), _figure(e, "tokens", label)
            before += "\n" + turns[i].text
            base = None if r is baseline else agreement(tokens, _figure(baseline.results[i], "tokens", cells.BASELINE))
            rows.append({
                "turn": _figure(e, "turn", label), "phase": _figure(e, "phase", label), "cell": e["cell"],
                "cached": e["cached"], "dropped": _figure(e, "dropped", label),
                "prompt_tokens": _figure(e, "prompt_tokens", label), "n_prompt": _figure(e, "n_prompt", label),
                "response_tokens": _figure(e, "n_predicted", label), "stop_reason": _figure(e, "stop_reason", label),
                "repetition": repetition_ratio(text), "references": references(text, before, turns[i].refers),
                "agreement": base, "text": text, "tokens": tokens, "timings": _figure(e, "timings", label),
                "server_log": _figure(e, "server_log", label),
            })
            before += "\n" + text
        out.append(rows)
    return out


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    sims = [r["agreement"]["similarity"] for r in rows if r["agreement"] is not None]
    baseline = all(r["agreement"] is None for r in rows)
    return {
        "first_divergence": None if baseline else first_divergence(sims),
        "mean_agreement": None if baseline else _mean(sims),
        "identical_turns": None if baseline else sum(1 for r in rows if r["agreement"]["identical"]),
        "mean_repetition": _mean([r["repetition"] for r in rows]),
        "mean_response_tokens": _mean([r["response_tokens"] for r in rows]),
        "max_dropped": max(r["dropped"] for r in rows),
        "unseen_identifiers": sum(len(r["references"]["unseen"]) for r in rows),
        "refers_mentioned": sum(len(r["references"]["refers_mentioned"]) for r in rows),
        "refers": sum(len(r["references"]["refers"]) for r in rows),
    }


def to_json(report: SessionReport, m: Manifest) -> dict[str, Any]:
    plan = report.plan
    sp = plan.served
    rows = turn_rows(plan, report)
    return {
        **cells.document_head(sp, m, n_ctx_train=plan.n_ctx_train),
        "settings": {
            "turns": plan.turns, "max_tokens": plan.max_tokens, "context": sp.context,
            "requested_context": plan.requested_context, "extra_args": list(sp.extra_args),
            "corpus": {"name": CORPUS, "sha256": plan.session.sha256, "title": plan.session.title,
                       "turns": len(plan.session.turns)},
            "divergence": {"threshold": DIVERGENCE_THRESHOLD, "consecutive_turns": DIVERGENCE_TURNS},
            "repetition_ngram": NGRAM, "baseline": cells.BASELINE, "truncate_to": TRUNCATE_TO,
        },
        "notes": list(plan.notes),
        "configurations": [
            {"label": r.config.label, "type_k": r.config.type_k, "type_v": r.config.type_v,
             "bits_per_value": r.config.bits_per_value, "layers": r.config.describe(),
             "summary": summary(turn_list), "turns": turn_list}
            for r, turn_list in zip(report.results, rows, strict=True)
        ],
    }


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _div(s: Mapping[str, Any]) -> str:
    if s["mean_agreement"] is None:
        return "(baseline)"
    return "none" if s["first_divergence"] is None else f"turn {s['first_divergence']}"


def summary_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    turns = doc["settings"]["turns"]
    out = []
    for c in doc["configurations"]:
        s = c["summary"]
        ident = "-" if s["identical_turns"] is None else f"{s['identical_turns']}/{turns}"
        out.append([c["label"], f"{c['bits_per_value']:.2f}", _div(s), _f(s["mean_agreement"]), ident,
                    _f(s["mean_repetition"]), _f(s["mean_response_tokens"], 1),
                    f"{s['refers_mentioned']}/{s['refers']}", str(s["unseen_identifiers"]), str(s["max_dropped"])])
    return out


SUMMARY_COLUMNS = ["K/V", "bits/value", "first divergence", "mean agreement", "identical turns", "mean repetition",
                   "mean tokens", "refers mentioned", "unseen names", "max dropped"]
TURN_COLUMNS = ["turn", "phase", "dropped", "prompt", "tokens", "stop", "repetition", "refers", "unseen",
                "prefix", "agreement"]


def turn_table_rows(c: Mapping[str, Any]) -> list[list[str]]:
    out = []
    for t in c["turns"]:
        a, ref = t["agreement"], t["references"]
        out.append([str(t["turn"]), t["phase"], str(t["dropped"]), str(t["n_prompt"]), str(t["response_tokens"]),
                    t["stop_reason"], _f(t["repetition"]), f"{len(ref['refers_mentioned'])}/{len(ref['refers'])}",
                    str(len(ref["unseen"])), "-" if a is None else str(a["prefix_tokens"]),
                    "-" if a is None else _f(a["similarity"])])
    return out


def divergence_rule() -> str:
    return (f"first divergence: the first turn whose agreement (difflib ratio over token ids, vs f16) is below "
            f"{DIVERGENCE_THRESHOLD} on {DIVERGENCE_TURNS} consecutive turns (the last turn counts alone)")


def render(doc: Mapping[str, Any], ui: UI, *, verbose: bool = False) -> None:
    st = doc["settings"]
    ui.kv("bench long-session", [
        ("model", str(doc["model"]["path"])),
        ("session", f"{st['corpus']['title']} ({st['turns']} of {st['corpus']['turns']} turns)"),
        ("settings", f"--max-tokens {st['max_tokens']}, context {st['context']}, temperature 0"),
    ])
    for note in doc["notes"]:
        ui.info(note)
    if verbose:
        for c in doc["configurations"]:
            ui.table(f"{c['label']}: per turn", TURN_COLUMNS, turn_table_rows(c))
    ui.table("long session: each configuration's own conversation vs f16's", SUMMARY_COLUMNS, summary_rows(doc))
    for c in doc["configurations"]:
        diff = next((t for t in c["turns"] if t["agreement"] is not None and not t["agreement"]["identical"]), None)
        if diff is not None:
            ui.info(f"{c['label']}: first answer different from f16's at turn {diff['turn']} "
                    f"({diff['agreement']['prefix_tokens']} leading tokens equal)")
    ui.info(divergence_rule() + "; after the first difference the histories differ, so agreement compares the "
            "two conversations")


def first_differences(doc: Mapping[str, Any], limit: int = 400) -> list[str]:
    """Markdown: per configuration, its first answer that is not f16's, beside f16's (cut at
    ``limit`` characters), so that a changed answer is shown, not only scored."""
    base = next((c for c in doc["configurations"] if c["label"] == doc["settings"]["baseline"]), None)
    out: list[str] = []
    for c in doc["configurations"]:
        if base is None or c is base:
            continue
        diff = next((t for t in c["turns"] if t["agreement"] is not None and not t["agreement"]["identical"]), None)
        if diff is None:
            out += ["", f"**{c['label']}**: every answer is token for token f16's."]
            continue
        ref = base["turns"][diff["turn"] - 1]
        a = diff["agreement"]
        out += ["", f"**{c['label']}** first answers differently at turn {diff['turn']} ({diff['phase']}): "
                f"{a['prefix_tokens']} leading tokens equal, similarity {a['similarity']:.3f}.", ""]
        for label, text in ((base["label"], ref["text"]), (c["label"], diff["text"])):
            cut = text if len(text) <= limit else text[:limit] + " [...]"
            out += [f"{label}:", "", "````text", cut.replace("````", "` ` ` `"), "````", ""]
    return out


def report_section(doc: Mapping[str, Any]) -> Section:
    st = doc["settings"]
    lines = [f"Session: {st['corpus']['title']} ({st['turns']} of {st['corpus']['turns']} turns), "
             f"`--max-tokens {st['max_tokens']}`, context {st['context']}, temperature 0. Each configuration "
             "continues its own conversation.", "",
             "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(doc)]
    lines += ["", divergence_rule() + ". After the first difference the histories differ, so agreement compares "
              "the two conversations. Repetition: share of repeated word 4-grams of an answer."]
    configs = list(doc["configurations"])
    lines += first_differences(doc)

    def draw(path: Path, what: str) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        for c in configs:
            pts = [(t["turn"], t["agreement"]["similarity"] if what == "agreement" else t["repetition"])
                   for t in c["turns"] if (t["agreement"] is not None if what == "agreement" else True)]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c["label"])
        if what == "agreement":
            ax.axhline(DIVERGENCE_THRESHOLD, color="grey", linestyle="--", label="threshold")
            ax.set_ylabel("agreement with f16 (token similarity)")
        else:
            ax.set_ylabel("repeated word 4-grams (share)")
        ax.set_xlabel("turn")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)

    return Section(title="Long session", markdown="\n".join(lines),
                   plots={"agreement.png": lambda p: draw(p, "agreement"),
                          "repetition.png": lambda p: draw(p, "repetition")})


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "bench-long-session.schema.json"
