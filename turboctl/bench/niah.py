"""``turboctl bench niah``: needle-in-a-haystack retrieval per KV configuration, as a grid of
context lengths x needle depths.

The haystack (``corpora/niah/haystack.txt``: paragraphs of mundane prose separated by blank
lines) and the needles (``corpora/niah/needles.json``: a sentence, a question about it and a
regular expression its answer must match) are ours, verified by :mod:`turboctl.bench.corpus`.

One cell is (context length, depth %, needle). Its prompt is built with the served model's own
tokenizer and chat template (:meth:`BenchServer.tokenize`, :meth:`BenchServer.apply_template`):
whole paragraphs, taken in file order (and again from the first one when a context needs more
than the file holds: the document says so), fill the context minus the template, the question
and ``--max-tokens``; the needle goes in as a paragraph of its own at the paragraph boundary
nearest to the depth (0: before the first paragraph, 100: after the last) and its token
position in the prompt is recorded. The model answers at temperature 0 and the needle counts as
retrieved when its answer expression matches the answer (case-insensitive).

Every configuration runs on one llama-server whose context is the largest of the grid
(:func:`turboctl.bench.cells.run_cells`: each cell's result is stored when measured, so an
interrupted run resumes from the cells already measured). f16 K/V is always measured, first:
where another configuration's answer differs from f16's, the document and the table show it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..build.manifest import Manifest
from ..errors import BenchError, CorpusError, ModelError, UsageError
from ..models.gguf import read_metadata
from ..paths import Paths
from ..serve import whatif
from ..ui import UI
from . import cells
from . import corpus as corpus_mod
from .memory import parse_ctx_list
from .report import Section
from .served import BenchServer

NAME = "niah"
SCHEMA = "turboctl.bench.niah/1"
DEFAULT_KV = ("f16", "turbo4", "turbo3")
DEFAULT_CONTEXTS = (1024, 2048, 4096)
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)
DEFAULT_NEEDLES = 1
DEFAULT_MAX_TOKENS = 32
MIN_CONTEXT = 64
RESULT_VERSION = 1
"""The layout of one stored cell result (part of its key)."""

HAYSTACK = "niah/haystack.txt"
NEEDLES = "niah/needles.json"
SEPARATOR = "\n\n"
SLACK_TOKENS = 8
"""Tokens kept free beyond the sum of the paragraphs' own counts: a paragraph's tokens at a join
may differ from its tokens alone (the assembled prompt is tokenized again and must fit)."""

PROMPT = ("Read the document below, then answer the question after it.\n\n"
          "Document:\n{document}\n\n"
          "Question: {question}\n"
          "Answer in a few words, using only the document.")
"""The user message of every cell (part of every cell's key)."""

NEEDLES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["needles"],
    "properties": {
        "needles": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "sentence", "question", "answer"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
                    "sentence": {"type": "string", "minLength": 1},
                    "question": {"type": "string", "minLength": 1},
                    "answer": {"type": "string", "minLength": 1},
                },
            },
        },
    },
}
"""What ``needles.json`` must look like (a CorpusError names the first item that does not)."""


# --------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Needle:
    id: str
    sentence: str
    question: str
    answer: str  # a regular expression, matched case-insensitively against the model's answer

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.answer, re.IGNORECASE)

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "sentence": self.sentence, "question": self.question, "answer": self.answer}


@dataclass(frozen=True)
class Corpus:
    paragraphs: tuple[str, ...]
    needles: tuple[Needle, ...]
    haystack_sha256: str
    needles_sha256: str


def split_paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` (separated by blank lines), each on one line."""
    return [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def load_corpus(corpora: corpus_mod.Corpora | None = None) -> Corpus:
    """The verified haystack and needles; CorpusError naming the file and the item otherwise: a
    needle whose expression is not one, does not match its own sentence, or matches the haystack
    (a haystack that holds an answer cannot test retrieval)."""
    corpora = corpora or corpus_mod.Corpora(corpus_mod.default_dir())
    hay_path, needles_path = corpora.root / HAYSTACK, corpora.root / NEEDLES
    text = corpora.text(HAYSTACK)
    paragraphs = split_paragraphs(text)
    if len(paragraphs) < 2:
        raise CorpusError(f"{hay_path}: expected paragraphs separated by blank lines, found {len(paragraphs)}",
                          hint=corpus_mod.RESTORE)
    doc = corpora.json(NEEDLES, NEEDLES_SCHEMA)
    needles: list[Needle] = []
    for i, item in enumerate(doc["needles"]):
        n = Needle(id=item["id"], sentence=item["sentence"], question=item["question"], answer=item["answer"])
        where = f"{needles_path}: needles[{i}] ({n.id})"
        if n.id in [x.id for x in needles]:
            raise CorpusError(f"{where}: the id {n.id!r} is used twice", hint=corpus_mod.RESTORE)
        try:
            pattern = n.pattern
        except re.error as exc:
            raise CorpusError(f"{where}: answer {n.answer!r} is not a regular expression: {exc}",
                              hint=corpus_mod.RESTORE) from None
        if not pattern.search(n.sentence):
            raise CorpusError(f"{where}: answer {n.answer!r} does not match its own sentence", hint=corpus_mod.RESTORE)
        found = pattern.search(text)
        if found:
            line = text[:found.start()].count("\n") + 1
            raise CorpusError(f"{hay_path}:{line}: {found.group(0)!r} matches the answer of needle {n.id}: the "
                              "haystack must not hold an answer", hint=corpus_mod.RESTORE)
        needles.append(n)
    return Corpus(paragraphs=tuple(paragraphs), needles=tuple(needles),
                  haystack_sha256=corpus_mod.sha256_of(hay_path), needles_sha256=corpus_mod.sha256_of(needles_path))


# --------------------------------------------------------------------------- options
def parse_depths(text: str) -> list[int]:
    """``--depths 0,50,100``: percentages 0..100, ascending, without duplicates."""
    out: list[int] = []
    for part in text.split(","):
        value = part.strip()
        if not value:
            continue
        if not value.isdigit():
            raise UsageError(f"--depths: {value!r} is not a whole number (expected percentages 0..100, e.g. 0,50,100)")
        if int(value) > 100:
            raise UsageError(f"--depths: {value} is outside 0..100 (a depth is a percentage of the haystack)")
        out.append(int(value))
    if not out:
        raise UsageError(f"--depths {text!r}: expected comma-separated percentages 0..100, e.g. 0,50,100")
    return sorted(set(out))


def choose_contexts(ctx_list: str | None, n_ctx_train: int) -> tuple[list[int], list[str]]:
    """``--ctx-list`` (each at most the training context), else the defaults up to it; notes on
    the defaults left out."""
    if ctx_list is not None:
        contexts = parse_ctx_list(ctx_list)
        for c in contexts:
            if c < MIN_CONTEXT:
                raise UsageError(f"--ctx-list: context {c} is too small (expected at least {MIN_CONTEXT} tokens)")
            if c > n_ctx_train:
                raise UsageError(f"--ctx-list: context {c} is above the model's training context {n_ctx_train}",
                                 hint=f"use contexts up to {n_ctx_train}")
        return contexts, []
    contexts = [c for c in DEFAULT_CONTEXTS if c <= n_ctx_train]
    over = [c for c in DEFAULT_CONTEXTS if c > n_ctx_train]
    notes = [f"contexts {', '.join(map(str, over))} left out: above the training context {n_ctx_train}"] if over else []
    if not contexts:
        contexts = [n_ctx_train]
        notes.append(f"the training context {n_ctx_train} measured instead")
    return contexts, notes


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class NiahPlan:
    served: cells.ServedPlan
    contexts: tuple[int, ...]
    depths: tuple[int, ...]
    needles: tuple[Needle, ...]
    max_tokens: int
    n_ctx_train: int
    corpus: Corpus
    notes: tuple[str, ...] = ()

    def all_cells(self) -> list[cells.Cell]:
        """Context by context, depth by depth, needle by needle."""
        out = []
        for ctx in self.contexts:
            for depth in self.depths:
                for n in self.needles:
                    out.append(cells.Cell(id=cell_id(ctx, depth, n.id), settings={
                        "niah_context": ctx, "depth": depth, "needle": n.as_json(), "max_tokens": self.max_tokens,
                        "haystack_sha256": self.corpus.haystack_sha256, "prompt": PROMPT,
                        "slack_tokens": SLACK_TOKENS}))
        return out


def cell_id(context: int, depth: int, needle: str) -> str:
    return f"ctx{context}-depth{depth}-{needle}"


def make_plan(m: Manifest, paths: Paths, ui: UI, *, model: Path, kv: Sequence[str], ctx_list: str | None = None,
              depths: str | None = None, needles: int = DEFAULT_NEEDLES, max_tokens: int = DEFAULT_MAX_TOKENS,
              extra_kv: Sequence[str] = (), extra_args: Sequence[str] = (),
              corpora: corpus_mod.Corpora | None = None) -> NiahPlan:
    """Every option checked, the corpus verified and the configurations checked against the build
    and the model before anything starts."""
    depth_list = parse_depths(depths) if depths is not None else list(DEFAULT_DEPTHS)
    if max_tokens < 1:
        raise UsageError(f"--max-tokens {max_tokens}: expected at least 1")
    if needles < 1:
        raise UsageError(f"--needles {needles}: expected at least 1")
    corpus = load_corpus(corpora)
    if needles > len(corpus.needles):
        raise UsageError(f"--needles {needles}: the corpus has {len(corpus.needles)} needles",
                         hint=f"use --needles 1..{len(corpus.needles)}")
    if not model.is_file():
        raise ModelError(f"model file not found: {model}", hint="pass the path of a .gguf file")
    train = whatif.n_ctx_train_of(read_metadata(model))
    contexts, notes = choose_contexts(ctx_list, train)
    served = cells.make_plan(m, paths, ui, name=NAME, schema=SCHEMA, model=model, kv=kv, defaults=DEFAULT_KV,
                             context=max(contexts), extra_kv=extra_kv, extra_args=extra_args, need_baseline=True)
    return NiahPlan(served=served, contexts=tuple(contexts), depths=tuple(depth_list),
                    needles=corpus.needles[:needles], max_tokens=max_tokens, n_ctx_train=train, corpus=corpus,
                    notes=(*served.notes, *notes))


# --------------------------------------------------------------------------- one prompt
class Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[int]: ...

    def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str: ...


def messages_for(document: str, question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT.format(document=document, question=question)}]


@dataclass(frozen=True)
class Built:
    """One cell's prompt and where its parts lie (token positions in the prompt, by the model's
    tokenizer)."""

    prompt: str
    prompt_tokens: int
    paragraphs: int         # haystack paragraphs in the prompt
    cycled: bool            # more paragraphs than the file holds: taken again from the first
    needle_after: int       # the needle follows this many paragraphs
    needle_token: int       # the needle's first token
    needle_tokens: int
    haystack_token: int     # the haystack's first token (the needle included)
    haystack_tokens: int

    @property
    def depth_actual(self) -> float:
        """Where the needle lies: % of the haystack's tokens (the needle's own left out) before it."""
        rest = self.haystack_tokens - self.needle_tokens
        return 100.0 * (self.needle_token - self.haystack_token) / rest if rest > 0 else 0.0


def nearest_boundary(counts: Sequence[int], depth: int) -> int:
    """The paragraph boundary (0..len(counts)) nearest to ``depth`` % of the tokens (the earlier
    one on a tie)."""
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    target = bounds[-1] * depth / 100.0
    return min(range(len(bounds)), key=lambda j: (abs(bounds[j] - target), j))


def build_prompt(tok: Tokenizer, paragraphs: Sequence[str], needle: Needle, *, context: int, depth: int,
                 max_tokens: int, counts: dict[str, int] | None = None) -> Built:
    """The prompt of one cell (see the module's text); ``counts`` caches paragraph token counts
    (the same model: shared by the configurations). BenchError when the context leaves no room."""
    counts = {} if counts is None else counts
    limit = context - max_tokens

    def count(text: str) -> int:
        if text not in counts:
            counts[text] = len(tok.tokenize(text))
        return counts[text]

    overhead = len(tok.tokenize(tok.apply_template(messages_for(needle.sentence, needle.question))))
    sep = count(SEPARATOR)
    budget = limit - overhead - SLACK_TOKENS
    sizes: list[int] = []
    used = 0
    while True:
        size = count(paragraphs[len(sizes) % len(paragraphs)]) + sep
        if used + size > budget:
            break
        sizes.append(size)
        used += size
    while sizes:
        n = len(sizes)
        chosen = [paragraphs[i % len(paragraphs)] for i in range(n)]
        k = nearest_boundary(sizes, depth)
        parts = [*chosen[:k], needle.sentence, *chosen[k:]]
        document = SEPARATOR.join(parts)
        prompt = tok.apply_template(messages_for(document, needle.question))
        total = len(tok.tokenize(prompt))
        if total <= limit:
            start = prompt.find(document)
            if start < 0 or prompt.count(needle.sentence) != 1:
                raise BenchError("the model's chat template changed the document's text: cannot place the needle")
            at = start + len(SEPARATOR.join(chosen[:k])) + (len(SEPARATOR) if k else 0)
            needle_token = len(tok.tokenize(prompt[:at]))
            needle_end = len(tok.tokenize(prompt[:at + len(needle.sentence)]))
            hay_token = len(tok.tokenize(prompt[:start]))
            hay_end = len(tok.tokenize(prompt[:start + len(document)]))
            return Built(prompt=prompt, prompt_tokens=total, paragraphs=n, cycled=n > len(paragraphs),
                         needle_after=k, needle_token=needle_token, needle_tokens=needle_end - needle_token,
                         haystack_token=hay_token, haystack_tokens=hay_end - hay_token)
        sizes.pop()
    raise BenchError(f"context {context} leaves no room for a haystack paragraph: the template, the needle and the "
                     f"question take {overhead} tokens, and --max-tokens {max_tokens} more",
                     hint="use a larger context (--ctx-list) or fewer --max-tokens")


# --------------------------------------------------------------------------- the run
def measure_cell(plan: NiahPlan, counts: dict[str, int]) -> cells.Measure:
    needles = {n.id: n for n in plan.needles}

    def measure(bs: BenchServer, cell: cells.Cell, earlier: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        ctx, depth = int(cell.settings["niah_context"]), int(cell.settings["depth"])
        needle = needles[cell.settings["needle"]["id"]]
        built = build_prompt(bs, plan.corpus.paragraphs, needle, context=ctx, depth=depth,
                             max_tokens=plan.max_tokens, counts=counts)
        got = bs.complete(built.prompt, n_predict=plan.max_tokens)
        if got.n_prompt > ctx - plan.max_tokens:
            raise BenchError(f"llama-server evaluated {got.n_prompt} prompt tokens for context {ctx}: more than "
                             f"the {ctx - plan.max_tokens} the prompt was built for ({built.prompt_tokens} by its "
                             "tokenizer)", log_path=bs.log)
        found = needle.pattern.search(got.text)
        return {"context": ctx, "depth": depth, "needle": needle.id, "n_prompt": got.n_prompt,
                "prompt_tokens": built.prompt_tokens, "paragraphs": built.paragraphs, "cycled": built.cycled,
                "needle_after_paragraph": built.needle_after, "needle_token": built.needle_token,
                "needle_tokens": built.needle_tokens, "haystack_token": built.haystack_token,
                "haystack_tokens": built.haystack_tokens, "depth_actual": built.depth_actual,
                "output": got.text, "n_predicted": got.n_predicted, "stop_reason": got.stop_reason,
                "retrieved": found is not None, "match": found.group(0) if found else None}

    return measure


@dataclass
class NiahReport:
    plan: NiahPlan
    results: list[cells.ConfigCells] = field(default_factory=list)


def run(plan: NiahPlan, m: Manifest, paths: Paths, ui: UI, *,
        server: cells.ServerFactory | None = None) -> NiahReport:
    for note in plan.notes:
        ui.info(note)
    ui.info(f"server context {plan.served.context}; contexts {', '.join(map(str, plan.contexts))}; depths "
            f"{', '.join(f'{d}%' for d in plan.depths)}; needles {', '.join(n.id for n in plan.needles)}")
    todo = plan.all_cells()

    def describe(cell: cells.Cell) -> str:
        s = cell.settings
        return f"context {s['niah_context']}, depth {s['depth']}%, needle {s['needle']['id']}"

    results = cells.run_cells(plan.served, m, paths, ui, todo, measure_cell(plan, {}), result_version=RESULT_VERSION,
                              server=server, describe=describe)
    return NiahReport(plan, results)


# --------------------------------------------------------------------------- the document
def grid_of(plan: NiahPlan, config: cells.ConfigCells) -> dict[str, Any]:
    """Per context, per depth: needles retrieved of needles asked."""
    by_cell = {r["cell"]: r for r in config.results}
    rows: list[dict[str, Any]] = []
    for ctx in plan.contexts:
        row: list[dict[str, int]] = []
        for depth in plan.depths:
            got = [by_cell[cell_id(ctx, depth, n.id)] for n in plan.needles]
            row.append({"depth": depth, "retrieved": sum(1 for r in got if r["retrieved"]), "needles": len(got)})
        rows.append({"context": ctx, "depths": row})
    retrieved = sum(d["retrieved"] for r in rows for d in r["depths"])
    total = sum(d["needles"] for r in rows for d in r["depths"])
    return {"label": config.config.label, "retrieved": retrieved, "total": total, "contexts": rows}


def changes_of(report: NiahReport) -> list[dict[str, Any]]:
    """The cells whose answer differs from the f16 answer to the same prompt."""
    base = next((c for c in report.results if c.config.label == cells.BASELINE), None)
    if base is None:
        return []
    base_by_cell = {r["cell"]: r for r in base.results}
    out = []
    for config in report.results:
        if config is base:
            continue
        for r in config.results:
            b = base_by_cell[r["cell"]]
            if r["output"] != b["output"]:
                out.append({"label": config.config.label, "cell": r["cell"], "context": r["context"],
                            "depth": r["depth"], "needle": r["needle"], "retrieved": r["retrieved"],
                            "baseline_retrieved": b["retrieved"], "output": r["output"],
                            "baseline_output": b["output"]})
    return out


def to_json(report: NiahReport, m: Manifest) -> dict[str, Any]:
    plan, sp = report.plan, report.plan.served
    cycled = sorted({r["context"] for c in report.results for r in c.results if r["cycled"]})
    notes = [*plan.notes, *(f"context {c}: the haystack's {len(plan.corpus.paragraphs)} paragraphs were not enough, "
                            "taken again from the first" for c in cycled)]
    return {
        **cells.document_head(sp, m, n_ctx_train=plan.n_ctx_train),
        "settings": {
            "contexts": list(plan.contexts), "depths": list(plan.depths), "max_tokens": plan.max_tokens,
            "server_context": sp.context, "extra_args": list(sp.extra_args), "prompt": PROMPT,
            "needles": [n.as_json() for n in plan.needles],
            "haystack": {"file": HAYSTACK, "sha256": plan.corpus.haystack_sha256,
                         "paragraphs": len(plan.corpus.paragraphs)},
            "needles_file": {"file": NEEDLES, "sha256": plan.corpus.needles_sha256},
        },
        "notes": notes,
        "configurations": [
            {"label": c.config.label, "type_k": c.config.type_k, "type_v": c.config.type_v,
             "bits_per_value": c.config.bits_per_value, "layers": c.config.describe(), "server_log": c.server_log,
             "cells": c.results}
            for c in report.results
        ],
        "grid": [grid_of(plan, c) for c in report.results],
        "changed_vs_baseline": changes_of(report),
    }


def mark(retrieved: int, needles: int, *, unicode: bool) -> str:
    """A grid cell: ✓/✗ for one needle (yes/no without unicode), else retrieved/needles."""
    if needles == 1:
        if unicode:
            return "✓" if retrieved else "✗"
        return "yes" if retrieved else "no"
    return f"{retrieved}/{needles}"


def can_print_unicode() -> bool:
    import sys

    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def grid_rows(doc: Mapping[str, Any], *, unicode: bool) -> tuple[list[str], list[list[str]]]:
    depths = doc["settings"]["depths"]
    columns = ["K/V", "context", *[f"{d}%" for d in depths], "retrieved"]
    rows = []
    for g in doc["grid"]:
        for r in g["contexts"]:
            got = sum(d["retrieved"] for d in r["depths"])
            total = sum(d["needles"] for d in r["depths"])
            rows.append([g["label"], str(r["context"]),
                         *[mark(d["retrieved"], d["needles"], unicode=unicode) for d in r["depths"]],
                         f"{got}/{total}"])
    return columns, rows


def render(report: NiahReport, m: Manifest, ui: UI, document: Mapping[str, Any] | None = None) -> None:
    plan = report.plan
    doc = document if document is not None else to_json(report, m)
    ui.kv("bench niah", [
        ("model", f"{plan.served.model} (trained at {plan.n_ctx_train} tokens)"),
        ("llama.cpp", "; ".join(m.version) or m.pin.tag),
        ("needles", ", ".join(n.id for n in plan.needles)),
        ("answer", f"at most {plan.max_tokens} tokens at temperature 0"),
    ])
    columns, rows = grid_rows(doc, unicode=can_print_unicode())
    ui.table(f"NIAH: needles retrieved ({len(plan.needles)} per cell) by context and depth", columns, rows)
    for note in doc["notes"]:
        ui.info(note)
    changes = doc["changed_vs_baseline"]
    if not changes:
        ui.ok(f"every configuration answered every cell as {cells.BASELINE} did")
    for c in changes:
        how = "" if c["retrieved"] == c["baseline_retrieved"] else (
            " (retrieved; f16 did not)" if c["retrieved"] else " (not retrieved; f16 did)")
        ui.warn(f"{c['label']} at context {c['context']}, depth {c['depth']}%, needle {c['needle']}: answered "
                f"{c['output'].strip()!r}, f16 {c['baseline_output'].strip()!r}{how}")


# --------------------------------------------------------------------------- the report
def _draw_grid(doc: Mapping[str, Any]) -> Callable[[Path], None]:
    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt

        grids = doc["grid"]
        depths = doc["settings"]["depths"]
        contexts = doc["settings"]["contexts"]
        size = (2.2 + 0.9 * len(depths) * len(grids), 1.6 + 0.5 * len(contexts))
        fig, axes = plt.subplots(1, len(grids), figsize=size, squeeze=False, sharey=True, layout="constrained")
        image = None
        for ax, g in zip(axes[0], grids, strict=True):
            values = [[d["retrieved"] / d["needles"] for d in r["depths"]] for r in g["contexts"]]
            image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
            for i, r in enumerate(g["contexts"]):
                for j, d in enumerate(r["depths"]):
                    ax.text(j, i, f"{d['retrieved']}/{d['needles']}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(depths)), [f"{d}%" for d in depths])
            ax.set_yticks(range(len(contexts)), [str(c) for c in contexts])
            ax.tick_params(axis="y", labelleft=ax is axes[0][0])
            ax.set_xlabel("needle depth")
            ax.set_title(f"{g['label']} ({g['retrieved']}/{g['total']})", fontsize=9)
        axes[0][0].set_ylabel("context (tokens)")
        if image is not None:
            fig.colorbar(image, ax=list(axes[0]), label="retrieved (fraction)", shrink=0.8)
        fig.suptitle("needle in a haystack: needles retrieved / needles asked", fontsize=10)
        fig.savefig(path, dpi=110, bbox_inches="tight")

    return draw


def _answer(text: str, retrieved: bool) -> str:
    """An answer in a markdown table cell, marked retrieved or not."""
    return ("✓ " if retrieved else "✗ ") + " ".join(text.split()).replace("|", "\\|")


def report_section(doc: Mapping[str, Any]) -> Section:
    columns, rows = grid_rows(doc, unicode=True)
    s = doc["settings"]
    lines = [f"Needles {', '.join(n['id'] for n in s['needles'])} at depths "
             f"{', '.join(f'{d}%' for d in s['depths'])} of haystacks filling contexts "
             f"{', '.join(map(str, s['contexts']))} (one llama-server per configuration at context "
             f"{s['server_context']}; answers of at most {s['max_tokens']} tokens at temperature 0).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    for note in doc["notes"]:
        lines.append(f"- {note}")
    changes = doc["changed_vs_baseline"]
    if changes:
        lines += ["", f"Answers that differ from {cells.BASELINE}'s:", "",
                  "| K/V | context | depth | needle | answer | f16's answer |", "|---|---|---|---|---|---|"]
        for c in changes:
            lines.append(f"| {c['label']} | {c['context']} | {c['depth']}% | {c['needle']} | "
                         f"{_answer(c['output'], c['retrieved'])} | "
                         f"{_answer(c['baseline_output'], c['baseline_retrieved'])} |")
    else:
        lines += ["", f"Every configuration answered every cell as {cells.BASELINE} did."]
    return Section(title="Needle in a haystack", markdown="\n".join(lines), plots={"grid.png": _draw_grid(doc)})


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "bench-niah.schema.json"
