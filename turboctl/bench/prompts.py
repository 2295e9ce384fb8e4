"""``turboctl bench prompts``: ten prompts of our own (``corpora/prompts/prompts.json``), one per
kind of task, answered at temperature 0 by llama-server under each KV configuration, each answer
checked automatically and compared with the f16 answer.

The prompts are chat messages turned into a prompt by the model's own template (the server's
``/apply-template``) and completed through ``/completion`` (:meth:`turboctl.bench.served.
BenchServer.chat`). The early-context prompt (p05) states a fact, then carries filler prose
(``corpora/prompts/filler.txt``) cut by the server's tokenizer to the prompt's token budget or to
what the context leaves, then asks for the fact.

Each answer gets:

* its **check**: a regular expression searched in the text, or a JSON schema the text (a JSON
  value, optionally in a code fence) must satisfy; ``passed`` and ``why``.
* its **agreement** with the f16 answer to the same prompt (f16 is always run, first):
  ``exact_prefix_tokens`` is the number of leading generated token ids equal to f16's;
  ``similarity`` is :class:`difflib.SequenceMatcher`'s ratio over the two token id sequences
  (``2 * M / (len(a) + len(b))``, M the tokens in matching blocks, junk heuristic off): 1.0 for
  identical outputs, 0.0 for outputs sharing no token; ``identical`` says the token ids are equal.
  The token ids are the server's (``return_tokens``) and include the end-of-generation token when
  the answer ended there (``stop_reason`` eos); the text does not show it.

One cell per prompt (:func:`turboctl.bench.cells.run_cells`): each answer is stored as soon as it
is measured, keyed on the prompt's content hash (its messages, check, budget and filler text) and
its max_tokens, so that an interrupted run resumes and an edited prompt is measured again. The
checks and the agreement are computed from the stored answers each time a document is made.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build.manifest import Manifest
from ..errors import BenchError, CorpusError, UsageError
from ..paths import Paths
from ..ui import UI
from . import cells as cells_mod
from .corpus import Corpora
from .report import Section
from .served import BenchServer

NAME = "prompts"
SCHEMA = "turboctl.bench.prompts/1"
CORPUS = "prompts/prompts.json"
DEFAULT_KV = ("f16", "turbo4", "turbo3")
DEFAULT_CONTEXT = 4096
RESULT_VERSION = 1
MIN_FILLER_TOKENS = 128
"""Below this many filler tokens an early-context prompt no longer tests anything."""
FILLER_MARGIN = 8
"""Tokens kept free besides the prompt and the answer (a cut may tokenize a few tokens longer)."""
CATEGORIES = ("factual-recall", "multi-step-reasoning", "code-generation", "code-debugging", "early-context-recall",
              "constrained-writing", "multi-turn-reference", "structured-json", "translation-analysis",
              "strict-formatting")
SIMILARITY = ("difflib.SequenceMatcher(None, f16_tokens, tokens, autojunk=False).ratio() over the generated token "
              "ids: 2*M/(len(f16)+len(this)), M the tokens in matching blocks; 1.0 = identical")
FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}

PROMPTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "prompts"],
    "properties": {
        "version": {"const": 1},
        "prompts": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "category", "messages", "check", "max_tokens"],
                "properties": {
                    "id": {"type": "string", "pattern": "^p[0-9]{2}$"},
                    "category": {"enum": list(CATEGORIES)},
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["role", "content"],
                            "properties": {"role": {"enum": ["system", "user", "assistant"]},
                                           "content": {"type": "string", "minLength": 1}},
                        },
                    },
                    "check": {
                        "oneOf": [
                            {"type": "object", "additionalProperties": False, "required": ["regex"],
                             "properties": {"regex": {"type": "string", "minLength": 1},
                                            "flags": {"type": "string", "pattern": "^[imsx]*$"}}},
                            {"type": "object", "additionalProperties": False, "required": ["json_schema"],
                             "properties": {"json_schema": {"type": "object"}}},
                        ]
                    },
                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
                    "filler": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["file", "placeholder", "max_tokens"],
                        "properties": {"file": {"type": "string", "minLength": 1},
                                       "placeholder": {"type": "string", "minLength": 1},
                                       "max_tokens": {"type": "integer", "minimum": MIN_FILLER_TOKENS}},
                    },
                },
            },
        },
    },
}
"""The layout of ``corpora/prompts/prompts.json``."""


# --------------------------------------------------------------------------- the prompts
@dataclass(frozen=True)
class Filler:
    file: str
    placeholder: str
    max_tokens: int
    text: str


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    messages: tuple[Mapping[str, str], ...]
    check: Mapping[str, Any]
    max_tokens: int
    filler: Filler | None
    sha256: str  # of the item's canonical JSON and its filler's text

    def describe_check(self) -> str:
        if "regex" in self.check:
            flags = self.check.get("flags", "")
            return f"regex /{self.check['regex']}/{flags}"
        return "JSON schema " + json.dumps(self.check["json_schema"], sort_keys=True)


def load_prompts(corpora: Corpora | None = None) -> list[Prompt]:
    """The verified prompt matrix; CorpusError naming the file and the item for anything wrong."""
    corpora = corpora or Corpora()
    doc = corpora.json(CORPUS, PROMPTS_SCHEMA)
    path = corpora.root / CORPUS
    out: list[Prompt] = []
    seen: dict[str, int] = {}
    fillers: dict[str, str] = {}
    for i, item in enumerate(doc["prompts"]):
        where = f"{path}: prompts[{i}] ({item['id']})"
        if item["id"] in seen:
            raise CorpusError(f"{where}: id {item['id']} is used twice (first by prompts[{seen[item['id']]}])")
        seen[item["id"]] = i
        if item["messages"][-1]["role"] != "user":
            raise CorpusError(f"{where}: the last message is from the {item['messages'][-1]['role']}, "
                              "expected the user (the model answers it)")
        check = item["check"]
        if "regex" in check:
            try:
                re.compile(check["regex"], _flags(check.get("flags", "")))
            except re.error as exc:
                raise CorpusError(f"{where}: check.regex does not compile: {exc}") from None
        else:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(check["json_schema"])
            except jsonschema.SchemaError as exc:
                raise CorpusError(f"{where}: check.json_schema is not a valid JSON schema: {exc.message}") from None
        filler = None
        if "filler" in item:
            f = item["filler"]
            uses = sum(m["content"].count(f["placeholder"]) for m in item["messages"])
            if uses != 1:
                raise CorpusError(f"{where}: the filler placeholder {f['placeholder']!r} appears {uses} times in "
                                  "the messages, expected once")
            if f["file"] not in fillers:
                fillers[f["file"]] = corpora.text(f["file"])
            filler = Filler(f["file"], f["placeholder"], f["max_tokens"], fillers[f["file"]])
        canon = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        digest = hashlib.sha256(canon.encode("utf-8"))
        if filler is not None:
            digest.update(b"\0" + filler.text.encode("utf-8"))
        out.append(Prompt(id=item["id"], category=item["category"],
                          messages=tuple({"role": m["role"], "content": m["content"]} for m in item["messages"]),
                          check=dict(check), max_tokens=item["max_tokens"], filler=filler,
                          sha256=digest.hexdigest()))
    return out


def _flags(text: str) -> int:
    value = 0
    for c in text:
        value |= FLAGS[c]
    return value


def select(prompts: Sequence[Prompt], wanted: str | None) -> list[Prompt]:
    """``--prompts p01,p05`` (in the matrix's order); every prompt without it."""
    if wanted is None:
        return list(prompts)
    ids = [w.strip() for w in wanted.split(",") if w.strip()]
    known = [p.id for p in prompts]
    if not ids:
        raise UsageError(f"--prompts {wanted!r}: expected comma-separated prompt ids, e.g. p01,p05")
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UsageError(f"--prompts: no prompt {', '.join(unknown)}; the prompts are {', '.join(known)}")
    return [p for p in prompts if p.id in ids]


# --------------------------------------------------------------------------- checks and agreement
@dataclass(frozen=True)
class CheckResult:
    passed: bool
    why: str


def _json_of(text: str) -> Any:
    """The JSON value of an answer: the whole text, or the body of its first code fence, or the
    span from its first ``{``/``[`` to the last matching bracket; ValueError when none parses."""
    candidates = [text.strip()]
    fence = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.DOTALL)
    if fence:
        candidates.append(fence.group(1).strip())
    for open_, close in (("{", "}"), ("[", "]")):
        a, b = text.find(open_), text.rfind(close)
        if a != -1 and b > a:
            candidates.append(text[a:b + 1])
    last: json.JSONDecodeError | None = None
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError as exc:
            last = exc
    assert last is not None
    raise ValueError(f"no JSON value in the answer ({last.msg} at line {last.lineno} column {last.colno})")


def check_output(prompt: Prompt, text: str) -> CheckResult:
    """The prompt's automatic check on an answer's text."""
    if "regex" in prompt.check:
        pattern = re.compile(prompt.check["regex"], _flags(prompt.check.get("flags", "")))
        m = pattern.search(text)
        if m:
            return CheckResult(True, f"matches {prompt.describe_check()} at {m.start()}: {m.group(0)[:60]!r}")
        return CheckResult(False, f"no match for {prompt.describe_check()}")
    import jsonschema

    try:
        value = _json_of(text)
    except ValueError as exc:
        return CheckResult(False, str(exc))
    errors = sorted(jsonschema.Draft202012Validator(prompt.check["json_schema"]).iter_errors(value),
                    key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
        return CheckResult(False, f"the JSON does not fit the schema: {where or '(the value)'}: {e.message}")
    return CheckResult(True, "valid JSON that fits the schema")


@dataclass(frozen=True)
class Agreement:
    exact_prefix_tokens: int
    similarity: float
    identical: bool


def agreement(baseline: Sequence[int], tokens: Sequence[int]) -> Agreement:
    """How ``tokens`` agree with the baseline's (see the module's text)."""
    return Agreement(*cells_mod.token_agreement(baseline, tokens))


# --------------------------------------------------------------------------- the run
def prompt_messages(bs: BenchServer, prompt: Prompt, context: int, max_tokens: int) -> tuple[list[dict[str, str]],
                                                                                               dict[str, int] | None]:
    """The messages sent for ``prompt`` (the filler cut to its budget by the server's tokenizer)
    and the filler's figures (tokens used, tokens of the whole text)."""
    if prompt.filler is None:
        return [dict(m) for m in prompt.messages], None
    f = prompt.filler

    def with_filler(text: str) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": m["content"].replace(f.placeholder, text)} for m in prompt.messages]

    fixed = len(bs.tokenize(bs.apply_template(with_filler(""))))
    room = context - fixed - max_tokens - FILLER_MARGIN
    budget = min(f.max_tokens, room)
    if budget < MIN_FILLER_TOKENS:
        raise UsageError(f"--ctx {context} leaves {max(room, 0)} tokens for the filler of {prompt.id} (its messages "
                         f"take {fixed}, its answer {max_tokens}); it needs at least {MIN_FILLER_TOKENS}",
                         hint=f"raise --ctx, or leave {prompt.id} out with --prompts")
    whole = bs.tokenize(f.text.strip())
    text = f.text.strip()
    if len(whole) > budget:
        cut = bs.detokenize(whole[:budget])
        end = max(cut.rfind(". "), cut.rfind(".\n"))
        text = cut[:end + 1] if end > 0 else cut
    used = len(bs.tokenize(text))
    return with_filler(text), {"tokens": used, "budget": budget, "file_tokens": len(whole)}


def make_measure(prompts: Mapping[str, Prompt], context: int,
                 max_tokens: Callable[[Prompt], int]) -> cells_mod.Measure:
    def measure(bs: BenchServer, cell: cells_mod.Cell, earlier: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        prompt = prompts[cell.id]
        n = max_tokens(prompt)
        messages, filler = prompt_messages(bs, prompt, context, n)
        c = bs.chat(messages, n_predict=n)
        return {"prompt": prompt.id, "text": c.text, "tokens": c.tokens, "n_prompt": c.n_prompt,
                "n_predicted": c.n_predicted, "stop_reason": c.stop_reason, "filler": filler,
                "prompt_sha256": prompt.sha256}

    return measure


@dataclass
class PromptsReport:
    plan: cells_mod.ServedPlan
    prompts: list[Prompt]
    max_tokens_override: int | None
    corpus_sha256: str
    results: list[cells_mod.ConfigCells]

    def max_tokens(self, prompt: Prompt) -> int:
        return self.max_tokens_override if self.max_tokens_override is not None else prompt.max_tokens


def make_plan(m: Manifest, paths: Paths, ui: UI, *, model: Path, kv: Sequence[str], context: int = DEFAULT_CONTEXT,
              extra_kv: Sequence[str] = (), extra_args: Sequence[str] = ()) -> cells_mod.ServedPlan:
    return cells_mod.make_plan(m, paths, ui, name=NAME, schema=SCHEMA, model=model, kv=kv, defaults=DEFAULT_KV,
                               context=context, extra_kv=extra_kv, extra_args=extra_args, need_baseline=True)


def run(plan: cells_mod.ServedPlan, m: Manifest, paths: Paths, ui: UI, prompts: Sequence[Prompt], *,
        max_tokens: int | None = None, corpora: Corpora | None = None,
        server: cells_mod.ServerFactory | None = None) -> PromptsReport:
    """Every selected prompt under every configuration (f16 first); answers cached per prompt."""
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--max-tokens {max_tokens}: expected at least 1")
    if not prompts:
        raise UsageError("no prompts selected")
    corpora = corpora or Corpora()
    corpus_sha = corpora.sums()[CORPUS][0]
    report = PromptsReport(plan, list(prompts), max_tokens, corpus_sha, [])
    cells = [cells_mod.Cell(p.id, {"prompt_sha256": p.sha256, "max_tokens": report.max_tokens(p)}) for p in prompts]
    for note in plan.notes:
        ui.info(note)
    by_id = {p.id: p for p in prompts}
    measure = make_measure(by_id, plan.context, report.max_tokens)
    report.results = cells_mod.run_cells(plan, m, paths, ui, cells, measure, result_version=RESULT_VERSION,
                                         server=server, describe=lambda c: f"{c.id} ({by_id[c.id].category})")
    return report


def document(m: Manifest, paths: Paths, ui: UI, *, model: Path, kv: Sequence[str] = (), extra_kv: Sequence[str] = (),
             extra_args: Sequence[str] = (), context: int = DEFAULT_CONTEXT, only: str | None = None,
             max_tokens: int | None = None) -> dict[str, Any]:
    """A whole ``bench prompts`` run (the CLI's, ``bench all``'s step): the prompts read and
    checked first, then the plan, the run and its document."""
    selected = select(load_prompts(), only)
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"--max-tokens {max_tokens}: expected at least 1")
    plan = make_plan(m, paths, ui, model=model, kv=kv, context=context, extra_kv=extra_kv, extra_args=extra_args)
    return to_json(run(plan, m, paths, ui, selected, max_tokens=max_tokens), m)


# --------------------------------------------------------------------------- the document
_FIGURES = ("text", "tokens", "n_prompt", "n_predicted", "stop_reason", "filler")


def _stored(entry: Mapping[str, Any], label: str, prompt: Prompt) -> None:
    missing = [k for k in _FIGURES if k not in entry]
    if missing:
        raise BenchError(f"the stored answer of {label} to {prompt.id} has no {', '.join(missing)}",
                         hint=f"remove the prompts cache ({NAME}) to measure it again")


def to_json(report: PromptsReport, m: Manifest) -> dict[str, Any]:
    plan = report.plan
    base = next((r for r in report.results if r.config.label == cells_mod.BASELINE), None)
    if base is None:
        raise BenchError(f"no {cells_mod.BASELINE} answers to compare with")
    by_id = {p.id: p for p in report.prompts}
    base_tokens = {e["cell"]: e["tokens"] for e in base.results}
    for r in report.results:
        for e in r.results:
            _stored(e, r.config.label, by_id[e["cell"]])
    base_passed = {e["cell"]: check_output(by_id[e["cell"]], e["text"]).passed for e in base.results}
    configurations = []
    for r in report.results:
        is_base = r is base
        outputs = []
        for e in r.results:
            prompt = by_id[e["cell"]]
            chk = check_output(prompt, e["text"])
            agree: dict[str, Any] | None = None
            if not is_base:
                a = agreement(base_tokens[prompt.id], e["tokens"])
                agree = {"exact_prefix_tokens": a.exact_prefix_tokens, "baseline_tokens": len(base_tokens[prompt.id]),
                         "similarity": a.similarity, "identical": a.identical,
                         "check_same_as_baseline": chk.passed == base_passed[prompt.id]}
            outputs.append({"prompt": prompt.id, "category": prompt.category, "cached": e["cached"],
                            "text": e["text"], "tokens": list(e["tokens"]), "n_tokens": len(e["tokens"]),
                            "n_prompt": e["n_prompt"], "n_predicted": e["n_predicted"],
                            "stop_reason": e["stop_reason"], "filler": e["filler"],
                            "check": {"passed": chk.passed, "why": chk.why}, "agreement": agree,
                            "server_log": e["server_log"]})
        agreements = [o["agreement"] for o in outputs if o["agreement"] is not None]
        summary = {
            "prompts": len(outputs),
            "checks_passed": sum(1 for o in outputs if o["check"]["passed"]),
            "identical": None if is_base else sum(1 for a in agreements if a["identical"]),
            "mean_similarity": (None if is_base or not agreements
                                else sum(a["similarity"] for a in agreements) / len(agreements)),
            "mean_exact_prefix_tokens": (None if is_base or not agreements
                                         else sum(a["exact_prefix_tokens"] for a in agreements) / len(agreements)),
            "check_changed": [] if is_base else [o["prompt"] for o in outputs
                                                 if not o["agreement"]["check_same_as_baseline"]],
        }
        configurations.append({"label": r.config.label, "type_k": r.config.type_k, "type_v": r.config.type_v,
                               "bits_per_value": r.config.bits_per_value, "layers": r.config.describe(),
                               "baseline": is_base, "server_log": r.server_log, "outputs": outputs,
                               "summary": summary})
    return {
        **cells_mod.document_head(plan, m),
        "settings": {"context": plan.context, "max_tokens_override": report.max_tokens_override,
                     "prompts": [p.id for p in report.prompts], "extra_args": list(plan.extra_args),
                     "temperature": 0.0, "corpus": CORPUS, "corpus_sha256": report.corpus_sha256,
                     "baseline": cells_mod.BASELINE, "similarity": SIMILARITY},
        "notes": list(plan.notes),
        "prompts": [{"id": p.id, "category": p.category, "check": p.describe_check(),
                     "max_tokens": report.max_tokens(p), "sha256": p.sha256,
                     "question": p.messages[-1]["content"] if p.filler is None
                     else p.messages[-1]["content"].replace(p.filler.placeholder, f"[{p.filler.file}]")}
                    for p in report.prompts],
        "configurations": configurations,
    }


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "bench-prompts.schema.json"


# --------------------------------------------------------------------------- the human output
def _cell(o: Mapping[str, Any]) -> str:
    mark = "pass" if o["check"]["passed"] else "FAIL"
    a = o["agreement"]
    if a is None:
        return f"{mark}, {o['n_tokens']} tok"
    same = "=" if a["identical"] else f"{a['exact_prefix_tokens']}/{a['baseline_tokens']} {a['similarity']:.2f}"
    return f"{mark}, {same}"


def table_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per prompt, one column per configuration: check, then (not f16) '=' for the
    f16 answer, or the exact prefix / f16's tokens and the similarity."""
    configs = doc["configurations"]
    columns = ["prompt", "category", *[c["label"] for c in configs]]
    rows = []
    for i, p in enumerate(doc["prompts"]):
        rows.append([p["id"], p["category"], *[_cell(c["outputs"][i]) for c in configs]])
    return columns, rows


def summary_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    columns = ["K/V", "bits/value", "checks passed", "identical to f16", "mean similarity", "mean exact prefix",
               "check changed"]
    rows = []
    for c in doc["configurations"]:
        s = c["summary"]
        rows.append([c["label"], f"{c['bits_per_value']:.2f}", f"{s['checks_passed']}/{s['prompts']}",
                     "baseline" if s["identical"] is None else f"{s['identical']}/{s['prompts']}",
                     "" if s["mean_similarity"] is None else f"{s['mean_similarity']:.3f}",
                     "" if s["mean_exact_prefix_tokens"] is None else f"{s['mean_exact_prefix_tokens']:.1f}",
                     ", ".join(s["check_changed"]) or ("" if c["baseline"] else "none")])
    return columns, rows


def short(text: str, n: int) -> str:
    """``text`` on one line; when longer than ``n``, its start and its end around ' ... '."""
    flat = " ".join(text.split())
    if len(flat) <= n:
        return flat
    half = (n - 5) // 2
    return f"{flat[:half]} ... {flat[-half:]}"


def side_by_side_lines(doc: Mapping[str, Any], width: int) -> list[str]:
    """Each prompt's answers in columns (f16 first), wrapped to fit ``width`` characters."""
    configs = doc["configurations"]
    gap = " | "
    col = max(20, (width - len(gap) * (len(configs) - 1)) // len(configs))
    out: list[str] = []
    for i, p in enumerate(doc["prompts"]):
        out.append("")
        out.append(f"{p['id']} ({p['category']}): {short(p['question'], max(40, width - 30))}")
        blocks = []
        for c in configs:
            o = c["outputs"][i]
            head = f"[{c['label']}] {_cell(o)}"
            lines = textwrap.wrap(head, col) or [""]
            lines.append("-" * min(col, 40))
            for para in o["text"].splitlines() or [""]:
                lines += textwrap.wrap(para, col, replace_whitespace=False, drop_whitespace=False) or [""]
            blocks.append(lines)
        for row in range(max(len(b) for b in blocks)):
            out.append(gap.join((b[row] if row < len(b) else "").ljust(col) for b in blocks).rstrip())
    return out


def render(doc: Mapping[str, Any], ui: UI, *, side_by_side: bool = False) -> None:
    ui.kv("bench prompts", [
        ("model", str(doc["model"]["path"])),
        ("context", str(doc["settings"]["context"])),
        ("similarity", doc["settings"]["similarity"]),
    ])
    columns, rows = table_rows(doc)
    ui.table("answers: check, then agreement with f16 ('=' identical, else exact-prefix/f16 tokens and similarity)",
             columns, rows)
    columns, rows = summary_rows(doc)
    ui.table("per configuration", columns, rows)
    for c in doc["configurations"]:
        for pid in c["summary"]["check_changed"]:
            o = next(o for o in c["outputs"] if o["prompt"] == pid)
            verdict = "passes" if o["check"]["passed"] else "fails"
            ui.warn(f"{c['label']}: the check of {pid} {verdict}, where f16's "
                    f"{'fails' if o['check']['passed'] else 'passes'} ({o['check']['why']})")
    if side_by_side:
        for line in side_by_side_lines(doc, shutil.get_terminal_size((160, 24)).columns):
            ui.info(line)


# --------------------------------------------------------------------------- the report
def _md(text: str) -> str:
    import html

    return html.escape(text).replace("|", "&#124;").replace("`", "&#96;").replace("\n", "<br>") or "(empty)"


def report_section(doc: Mapping[str, Any]) -> Section:
    columns, rows = table_rows(doc)
    lines = ["Each answer's automatic check, and its agreement with the f16 answer: `=` identical token ids, "
             "else the exact-prefix tokens / f16's tokens and the similarity "
             f"({doc['settings']['similarity']}). Context {doc['settings']['context']}, temperature 0.", ""]
    lines += _table(columns, rows)
    columns, rows = summary_rows(doc)
    lines += ["", *_table(columns, rows), "", "### Answers side by side", ""]
    configs = doc["configurations"]
    for i, p in enumerate(doc["prompts"]):
        lines += [f"**{p['id']}** ({p['category']}; check: `{p['check'][:200]}`)", "",
                  f"> {_md(short(p['question'], 600))}", ""]
        lines += _table([c["label"] for c in configs],
                        [[_cell(c["outputs"][i]) for c in configs],
                         [_md(c["outputs"][i]["text"]) for c in configs]])
        lines.append("")

    def draw(path: Path) -> None:
        import matplotlib.pyplot as plt

        others = [c for c in configs if not c["baseline"]]
        ids = [p["id"] for p in doc["prompts"]]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(ids) + 2), 3.8))
        width = 0.8 / max(1, len(others))
        for k, c in enumerate(others):
            xs = [i + (k - (len(others) - 1) / 2) * width for i in range(len(ids))]
            ys = [o["agreement"]["similarity"] for o in c["outputs"]]
            bars = ax.bar(xs, ys, width, label=c["label"])
            for b, o in zip(bars, c["outputs"], strict=True):
                if not o["check"]["passed"]:
                    ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, "x", ha="center", fontsize=8)
        ax.set_xticks(range(len(ids)), ids)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("similarity to f16 (token ids)")
        ax.set_title("Agreement with the f16 answer per prompt (x: check failed)")
        if others:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    return Section("Prompt matrix: answers against f16", "\n".join(lines), {"similarity.png": draw})


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *["| " + " | ".join(c.replace("|", "&#124;") for c in r) + " |" for r in rows]]
