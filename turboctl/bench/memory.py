"""``turboctl bench memory``: the KV cache bytes of each configuration at several contexts, as
llama-server itself reports them, against the bits/value arithmetic; and the largest context
that fits this machine per configuration.

For each (configuration, context) one llama-server starts through :class:`turboctl.bench.served.
BenchServer` (serve's own launch: the gate, the fit, and the log check of the per-layer types and
bytes). Its log's ``llama_kv_cache: KV bytes: ... (K k, V v) in L layers, N cells`` lines (one per
cache object) and its ``KV cache total`` line are the measured figures
(:func:`turboctl.llamalog.kv_contexts`); the arithmetic is the recipe's
(:meth:`turboctl.kv.recipe.RecipePlan.kv_bytes` at the context: whole ggml blocks of each layer's
K and V types times the values per row). The expected difference is 0 bytes; where llama.cpp
sizes another number of cells than the context (it pads to 256) or a model keeps a smaller
sliding-window cache, the difference is shown and said.

The largest context that fits is the what-if table's (:func:`turboctl.serve.whatif.recipe_row`:
the projection serve fits with, against this machine's budget).

Results are cached per (configuration, context) in :class:`turboctl.bench.store.Store`: a rerun
(or a run after an interruption) says ``cached: ...`` and does not start that server again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, llamalog
from ..build.manifest import Manifest, now_iso
from ..errors import BenchError, DoesNotFit, ModelError, UsageError
from ..kv.recipe import RecipePlan, parse_recipe_list
from ..kv.rules import row_bytes
from ..models.gguf import read_metadata
from ..paths import Paths
from ..preflight import preflight, tool
from ..serve import fit as fit_mod
from ..serve import whatif
from ..ui import UI
from . import common, store
from .report import Fields, Section, figure, md_table, save
from .served import BenchServer

NAME = "memory"
SCHEMA = "turboctl.bench.memory/1"
DEFAULT_KV = ("f16", "turbo4", "turbo3")
DEFAULT_CONTEXTS = (1024, 2048, 4096)
RESULT_VERSION = 2
"""The layout of one stored (configuration, context) result: part of its key, so that results
stored in an older layout are measured again rather than read."""


def parse_ctx_list(text: str) -> list[int]:
    """``--ctx-list 1024,4096`` (``k`` suffix accepted: 32k); ascending, without duplicates."""
    out: list[int] = []
    for part in text.split(","):
        value = part.strip().lower()
        if not value:
            continue
        mult = 1024 if value.endswith("k") else 1
        digits = value[:-1] if mult > 1 else value
        if not digits.isdigit() or int(digits) <= 0:
            raise UsageError(f"--ctx-list {text!r}: expected comma-separated positive token counts, e.g. 1024,4096")
        out.append(int(digits) * mult)
    if not out:
        raise UsageError(f"--ctx-list {text!r}: expected comma-separated positive token counts, e.g. 1024,4096")
    return sorted(set(out))


@dataclass(frozen=True)
class MemoryPlan:
    model: Path
    model_sha256: str
    configs: tuple[RecipePlan, ...]
    contexts: tuple[int, ...] | None  # None: the defaults (<= the training context) plus the training context
    n_ctx_train: int
    budget: fit_mod.Budget
    server: Path
    build: dict[str, str]
    parallel: int = 1
    extra_args: tuple[str, ...] = ()

    def settings(self, context: int) -> dict[str, Any]:
        """What one (configuration, context) result depends on besides the build, model and label."""
        return {"context": context, "parallel": self.parallel, "extra_args": list(self.extra_args),
                "result_version": RESULT_VERSION}


def make_plan(m: Manifest, paths: Paths, ui: UI, *, model: Path, kv: Sequence[str], ctx_list: str | None = None,
              extra_kv: Sequence[str] = (), extra_args: Sequence[str] = (), parallel: int = 1) -> MemoryPlan:
    """``extra_kv``: a profile's recipe, joining the configurations (the defaults too)."""
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: expected at least 1")
    if not model.is_file():
        raise ModelError(f"model file not found: {model}", hint="pass the path of a .gguf file")
    contexts = tuple(parse_ctx_list(ctx_list)) if ctx_list is not None else None
    recipes = parse_recipe_list([*kv, *extra_kv] if kv else [], [*DEFAULT_KV, *extra_kv])
    server = tool(m, "llama-server")
    _, configs = preflight(m, model, recipes)
    train = whatif.n_ctx_train_of(read_metadata(model))
    return MemoryPlan(model=model.resolve(), model_sha256=store.model_sha256(model, paths, ui), configs=tuple(configs),
                      contexts=contexts, n_ctx_train=train, budget=fit_mod.machine_budget(backend=m.backend),
                      server=server, build=store.build_identity(m), parallel=parallel, extra_args=tuple(extra_args))


# --------------------------------------------------------------------------- the figures of one server
@dataclass(frozen=True)
class Measured:
    """One (configuration, context): the log's figures and the arithmetic's."""

    context: int
    cells: int
    caches: tuple[dict[str, int], ...]  # per cache object: layers, cells, k_bytes, v_bytes, total_bytes
    log_k: int
    log_v: int
    log_total: int
    arith_k: int
    arith_v: int
    arith_at_cells: int  # the same arithmetic at the cells llama.cpp sized for each cache
    projected_kv: int | None
    server_log: str

    @property
    def arith_total(self) -> int:
        return self.arith_k + self.arith_v

    @property
    def difference(self) -> int:
        return self.log_total - self.arith_total

    @property
    def difference_pct(self) -> float:
        return 100.0 * self.difference / self.arith_total if self.arith_total else 0.0

    def note(self, plan: RecipePlan) -> str | None:
        """Why the log and the arithmetic differ (None when they agree)."""
        if self.difference == 0:
            return None
        why = []
        if any(c["cells"] != self.context for c in self.caches):
            cells = ", ".join(str(c["cells"]) for c in self.caches)
            why.append(f"llama.cpp sized {cells} cells for context {self.context}")
        if any(la.swa for la in plan.layout.owned()):
            why.append("the model has sliding-window layers, whose cache holds fewer cells")
        at_cells = (f"; at the cells llama.cpp sized, the arithmetic gives {self.arith_at_cells} bytes "
                    f"(difference {self.log_total - self.arith_at_cells})")
        return (f"the log's KV bytes differ from the arithmetic by {self.difference} bytes "
                f"({self.difference_pct:+.4f} %)" + (": " + "; ".join(why) if why else ": not explained") + at_cells)


def measure(plan: RecipePlan, context: int, log_text: str, *, projected_kv: int | None, server_log: str) -> Measured:
    """The figures of a server's log (its first context) for ``plan`` at ``context``; BenchError
    when a figure is missing (nothing is defaulted)."""
    contexts = llamalog.kv_contexts(log_text)
    if not contexts or not contexts[0].caches:
        raise BenchError("llama-server's log has no 'llama_kv_cache: KV layers:' lines: no KV figures to read",
                         log_path=Path(server_log), hint="rebuild with this turboctl's patch series (turboctl build)")
    ctx = contexts[0]
    caches = []
    values = plan.layer_values()
    at_cells = 0
    for i, c in enumerate(ctx.caches, 1):
        if c.bytes_total is None or c.bytes_k is None or c.bytes_v is None or c.cells is None:
            raise BenchError(f"llama-server's log has no 'KV bytes:' line for its KV cache {i}",
                             log_path=Path(server_log), hint="rebuild with this turboctl's patch series")
        caches.append({"layers": len(c.layers), "cells": c.cells, "k_bytes": c.bytes_k, "v_bytes": c.bytes_v,
                       "total_bytes": c.bytes_total})
        for il, (tk, tv) in c.layers.items():
            if il not in values:
                raise BenchError(f"llama-server made a KV cache for layer {il}, which the recipe's layout does not "
                                 "own", log_path=Path(server_log))
            nk, nv = values[il]
            at_cells += c.cells * (row_bytes(tk, nk) + (row_bytes(tv, nv) if tv is not None else 0))
    if ctx.total_bytes is None:
        raise BenchError("llama-server's log has no 'llama_context: KV cache total:' line", log_path=Path(server_log),
                         hint="rebuild with this turboctl's patch series")
    k, v = plan.kv_bytes(context)
    return Measured(context=context, cells=max(c["cells"] for c in caches), caches=tuple(caches),
                    log_k=sum(c["k_bytes"] for c in caches), log_v=sum(c["v_bytes"] for c in caches),
                    log_total=ctx.total_bytes, arith_k=k, arith_v=v, arith_at_cells=at_cells,
                    projected_kv=projected_kv, server_log=server_log)


def measured_json(ms: Measured, plan: RecipePlan) -> dict[str, Any]:
    return {
        "context": ms.context, "status": "measured", "cells": ms.cells, "caches": [dict(c) for c in ms.caches],
        "log": {"k_bytes": ms.log_k, "v_bytes": ms.log_v, "total_bytes": ms.log_total},
        "arithmetic": {"k_bytes": ms.arith_k, "v_bytes": ms.arith_v, "total_bytes": ms.arith_total},
        "arithmetic_at_cells_bytes": ms.arith_at_cells, "projected_kv_bytes": ms.projected_kv,
        "difference_bytes": ms.difference,
        "difference_pct": ms.difference_pct, "note": ms.note(plan), "server_log": ms.server_log,
    }


# --------------------------------------------------------------------------- the run
@dataclass
class ConfigResult:
    config: RecipePlan
    largest_context: int | None
    largest_note: str | None
    contexts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class MemoryReport:
    plan: MemoryPlan
    results: list[ConfigResult] = field(default_factory=list)


ServerFactory = Callable[[RecipePlan, int], BenchServer]


def contexts_for(plan: MemoryPlan, largest: int | None) -> tuple[list[int], list[str]]:
    """The contexts to measure for one configuration, and notes on those left out: ``--ctx-list``
    as given; else the defaults up to the training context, plus the training context when it fits."""
    if plan.contexts is not None:
        return list(plan.contexts), []
    out = [c for c in DEFAULT_CONTEXTS if c <= plan.n_ctx_train]
    notes = []
    over = [c for c in DEFAULT_CONTEXTS if c > plan.n_ctx_train]
    if over:
        notes.append(f"contexts {', '.join(map(str, over))} left out: above the training context {plan.n_ctx_train}")
    if plan.n_ctx_train not in out:
        if largest is not None and largest >= plan.n_ctx_train:
            out.append(plan.n_ctx_train)
        else:
            fits = f"the largest that fits is {largest}" if largest is not None else "nothing fits"
            notes.append(f"the training context {plan.n_ctx_train} left out: {fits}")
    return out, notes


def run(plan: MemoryPlan, m: Manifest, paths: Paths, ui: UI, *, server: ServerFactory | None = None) -> MemoryReport:
    """Every configuration at every context; results cached per (configuration, context)."""
    results = store.Store(paths, NAME)

    def default_server(cfg: RecipePlan, context: int) -> BenchServer:
        return BenchServer(m, paths, plan.model, cfg.label, context, ui, parallel=plan.parallel,
                           extra_args=plan.extra_args)

    make_server = server or default_server
    report = MemoryReport(plan)
    ui.info(f"budget: {fit_mod.human(plan.budget.bytes)} ({plan.budget.source})")
    n = len(plan.configs)
    for i, cfg in enumerate(plan.configs, 1):
        ui.step(f"[{i}/{n}] {cfg.label}: {cfg.describe()} ({cfg.bits_per_value:.2f} bits/value)")
        row = whatif.recipe_row(m, plan.model, cfg.recipe, "auto", plan.budget, n_ctx_train=plan.n_ctx_train,
                                parallel=plan.parallel, extra_args=plan.extra_args)
        res = ConfigResult(cfg, row.largest_context, row.skipped)
        contexts, res.notes = contexts_for(plan, row.largest_context)
        for note in res.notes:
            ui.info(f"{cfg.label}: {note}")
        for ctx in contexts:
            key = store.result_key(NAME, SCHEMA, plan.build, plan.model_sha256, plan.settings(ctx), cfg.label)
            got = results.get(key)
            if got is not None:
                ui.info(f"cached: {cfg.label} at context {ctx}")
                res.contexts.append({**got, "cached": True})
                continue
            entry = _measure_one(make_server(cfg, ctx), cfg, ctx, ui)
            results.put(key, entry)
            res.contexts.append({**entry, "cached": False})
        report.results.append(res)
    return report


def _measure_one(bs: BenchServer, cfg: RecipePlan, ctx: int, ui: UI) -> dict[str, Any]:
    try:
        sp = bs.prepare()
    except DoesNotFit as exc:
        ui.warn(f"{cfg.label} at context {ctx}: does not fit ({exc.message})")
        return {"context": ctx, "status": "does-not-fit", "reason": exc.message}
    with bs:
        text = bs.log_text()
    proj = sp.projection.get("kv") if sp.projection else None
    ms = measure(bs.recipe_plan, ctx, text, projected_kv=proj, server_log=str(bs.log))
    entry = measured_json(ms, bs.recipe_plan)
    say = ui.ok if ms.difference == 0 else ui.warn
    say(f"{cfg.label} at context {ctx}: {ms.log_total} bytes of KV in the log, {ms.arith_total} by the "
        f"arithmetic: difference {ms.difference} bytes ({ms.difference_pct:+.4f} %)")
    return entry


# --------------------------------------------------------------------------- output
def to_json(report: MemoryReport, m: Manifest) -> dict[str, Any]:
    plan = report.plan
    measured = [c for r in report.results for c in r.contexts if c["status"] == "measured"]
    nonzero = [f"{r.config.label} at {c['context']}" for r in report.results for c in r.contexts
               if c["status"] == "measured" and c["difference_bytes"] != 0]
    return {
        "schema": SCHEMA,
        "turboctl_version": __version__,
        "created": now_iso(),
        "llama": common.llama_info(m, plan.server),
        "model": {"path": str(plan.model), "sha256": plan.model_sha256, "n_ctx_train": plan.n_ctx_train},
        "settings": {"contexts": list(plan.contexts) if plan.contexts is not None else None,
                     "default_contexts": list(DEFAULT_CONTEXTS), "parallel": plan.parallel,
                     "extra_args": list(plan.extra_args)},
        "budget": {"bytes": plan.budget.bytes, "source": plan.budget.source, "kind": plan.budget.kind},
        "configurations": [
            {
                "label": r.config.label, "type_k": r.config.type_k, "type_v": r.config.type_v,
                "bits_per_value": r.config.bits_per_value, "layers": r.config.describe(),
                "largest_context": r.largest_context, "largest_context_note": r.largest_note,
                "notes": r.notes, "contexts": r.contexts,
            }
            for r in report.results
        ],
        "summary": {"measured": len(measured), "all_zero_difference": not nonzero, "nonzero_difference": nonzero},
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def render(report: MemoryReport, m: Manifest, ui: UI) -> None:
    plan = report.plan
    ui.kv("bench memory", [
        ("model", f"{plan.model} (trained at {plan.n_ctx_train} tokens)"),
        ("budget", f"{fit_mod.human(plan.budget.bytes)} ({plan.budget.source})"),
        ("llama.cpp", "; ".join(m.version) or m.pin.tag),
    ])
    columns = ["K/V", "bits/value", "context", "KV (log)", "KV (arithmetic)", "difference", "%", "largest context"]
    rows = []
    for r in report.results:
        largest = str(r.largest_context) if r.largest_context is not None else (r.largest_note or "none fits")
        for c in r.contexts:
            if c["status"] != "measured":
                rows.append([r.config.label, f"{r.config.bits_per_value:.2f}", str(c["context"]), "does not fit",
                             "", "", "", largest])
                continue
            rows.append([r.config.label, f"{r.config.bits_per_value:.2f}", str(c["context"]),
                         f"{c['log']['total_bytes']} ({_mib(c['log']['total_bytes'])})",
                         str(c["arithmetic"]["total_bytes"]), str(c["difference_bytes"]),
                         f"{c['difference_pct']:.4f}", largest])
        if not r.contexts:
            rows.append([r.config.label, f"{r.config.bits_per_value:.2f}", "", "", "", "", "", largest])
    ui.table("KV cache bytes: llama-server's log vs the bits/value arithmetic", columns, rows)
    nonzero = [(r.config.label, c) for r in report.results for c in r.contexts
               if c["status"] == "measured" and c["difference_bytes"] != 0]
    if not nonzero:
        ui.ok("every measured configuration: 0 bytes (0 %) difference between the log and the arithmetic")
    for label, c in nonzero:
        ui.warn(f"{label} at {c['context']}: {c['note']}")


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "bench-memory.schema.json"


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class _Cell:
    context: int
    log_total: int | None  # None: does not fit
    arith_total: int | None
    difference: int | None
    difference_pct: float | None
    note: str | None


def _cells(c: Fields) -> list[_Cell]:
    out = []
    for x in c.items("contexts"):
        status = x.text("status")
        if status == "measured":
            out.append(_Cell(x.integer("context"), x.sub("log").integer("total_bytes"),
                             x.sub("arithmetic").integer("total_bytes"), x.integer("difference_bytes"),
                             x.num("difference_pct"), x.opt_text("note")))
        elif status == "does-not-fit":
            out.append(_Cell(x.integer("context"), None, None, None, None, x.text("reason")))
        else:
            raise BenchError(f"a {SCHEMA} document's {x.where}.status is {status!r}: expected 'measured' or "
                             "'does-not-fit'")
    return out


def report_section(doc: Mapping[str, Any]) -> Section:
    """The report's section of a ``bench memory`` document: the table, and KV bytes against the
    context per configuration (llama-server's log as measured, the bits/value arithmetic dashed)."""
    f = Fields.of(doc)
    model = f.sub("model")
    budget = f.sub("budget")
    configs = f.items("configurations")
    name = Path(model.text("path")).name
    lines = [f"Model `{name}` (trained at {model.integer('n_ctx_train')} tokens); budget "
             f"{fit_mod.human(budget.integer('bytes'))} ({budget.text('source')}). Measured: the KV bytes "
             "llama-server's log reports; arithmetic: the recipe's bits/value at the context.", ""]
    rows = []
    series: list[tuple[str, list[_Cell]]] = []
    notes: list[str] = []
    for c in configs:
        label, bits = c.text("label"), c.num("bits_per_value")
        largest = c.opt_integer("largest_context")
        largest_text = str(largest) if largest is not None else (c.opt_text("largest_context_note") or "none fits")
        cells = _cells(c)
        series.append((label, cells))
        notes += [f"{label}: {n}" for n in c.strs("notes")]
        for x in cells:
            if x.log_total is None:
                rows.append([label, f"{bits:.2f}", str(x.context), "does not fit", "", "", "", largest_text])
                notes.append(f"{label} at {x.context}: does not fit ({x.note})")
                continue
            assert x.arith_total is not None and x.difference is not None and x.difference_pct is not None
            rows.append([label, f"{bits:.2f}", str(x.context), f"{x.log_total} ({_mib(x.log_total)})",
                         f"{x.arith_total} ({_mib(x.arith_total)})", str(x.difference), f"{x.difference_pct:.4f}",
                         largest_text])
            if x.note:
                notes.append(f"{label} at {x.context}: {x.note}")
        if not cells:
            rows.append([label, f"{bits:.2f}", "", "", "", "", "", largest_text])
    lines.append(md_table(["K/V", "bits/value", "context", "KV bytes (log)", "KV bytes (arithmetic)",
                           "difference", "%", "largest context that fits"], rows))
    lines.append("")
    if f.sub("summary").flag("all_zero_difference"):
        lines += ["Every measured configuration: 0 bytes difference between the log and the arithmetic.", ""]
    lines += [f"- {n}" for n in notes]

    def draw(path: Path) -> None:
        fig, ax = figure(f"KV cache bytes vs context\n{name}", "context (tokens)", "KV cache (MiB)")
        for i, (label, cells) in enumerate(series):
            color = f"C{i % 10}"
            got = [x for x in cells if x.log_total is not None and x.arith_total is not None]
            if not got:
                continue
            ax.plot([x.context for x in got], [(x.log_total or 0) / 2**20 for x in got], marker="o", color=color,
                    label=f"{label} (measured)")
            ax.plot([x.context for x in got], [(x.arith_total or 0) / 2**20 for x in got], linestyle="--",
                    marker="x", color=color, alpha=0.7, label=f"{label} (arithmetic)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        save(fig, path)

    plots = {"kv-bytes-vs-context.png": draw} if any(x.log_total is not None for _, cs in series for x in cs) else {}
    return Section(title="KV cache memory (bench memory)", markdown="\n".join(lines), plots=plots)
