"""What ``bench prompts``, ``bench long-session`` and ``bench niah`` share: a plan of
configurations served one after the other through :class:`turboctl.bench.served.BenchServer`,
and a run of *cells* (a prompt, a turn, a needle at a depth) per configuration whose results are
cached one by one in :class:`turboctl.bench.store.Store`.

A configuration whose cells are all cached starts no server. Otherwise one server starts and the
missing cells are measured in order, each stored as soon as it is measured; when the server dies
(:class:`turboctl.bench.served.ServerDied`) or the run is interrupted, what was stored stays, and
the next run resumes from it (``cached: ...``). A cell's measure sees the results of the cells
before it in the same configuration (a long session's history).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..build.manifest import Manifest, now_iso
from ..errors import ModelError, UsageError
from ..kv.recipe import RecipePlan, parse_recipe_list
from ..paths import Paths
from ..preflight import preflight, tool
from ..ui import UI
from . import common, store
from .served import BenchServer

BASELINE = "f16"


@dataclass(frozen=True)
class Cell:
    """One measurement of a configuration: ``id`` names it in the output, ``settings`` is what its
    result depends on besides the build, the model and the configuration (part of its key)."""

    id: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class ServedPlan:
    """The configurations of one served benchmark and how their server runs."""

    name: str              # the store's name: prompts, long-session, niah
    schema: str
    model: Path
    model_sha256: str
    configs: tuple[RecipePlan, ...]
    context: int
    server: Path
    build: dict[str, str]
    extra_args: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def baseline(self) -> RecipePlan | None:
        return next((c for c in self.configs if c.label == BASELINE), None)


def make_plan(m: Manifest, paths: Paths, ui: UI, *, name: str, schema: str, model: Path, kv: Sequence[str],
              defaults: Sequence[str], context: int, extra_kv: Sequence[str] = (), extra_args: Sequence[str] = (),
              need_baseline: bool = False) -> ServedPlan:
    """``kv`` (or ``defaults``) plus ``extra_kv`` (a profile's recipe), checked against the build and
    the model before anything starts; ``need_baseline``: f16 K/V is added first when missing (the
    agreement figures compare with it)."""
    if context < 64:
        raise UsageError(f"--ctx {context}: expected at least 64 tokens")
    if not model.is_file():
        raise ModelError(f"model file not found: {model}", hint="pass the path of a .gguf file")
    recipes = parse_recipe_list([*kv, *extra_kv] if kv else [], [*defaults, *extra_kv])
    notes: list[str] = []
    if need_baseline and BASELINE not in [r.label for r in recipes]:
        recipes = [*parse_recipe_list([BASELINE], []), *recipes]
        notes.append(f"{BASELINE} added: the agreement figures compare every configuration with it")
    server = tool(m, "llama-server")
    _, configs = preflight(m, model, recipes)
    return ServedPlan(name=name, schema=schema, model=model.resolve(),
                      model_sha256=store.model_sha256(model, paths, ui), configs=tuple(configs), context=context,
                      server=server, build=store.build_identity(m),
                      extra_args=tuple(extra_args), notes=tuple(notes))


Measure = Callable[[BenchServer, Cell, Sequence[Mapping[str, Any]]], dict[str, Any]]
"""``measure(server, cell, earlier)``: one cell's result (JSON values); ``earlier`` are the results
of the cells before it in this configuration."""
ServerFactory = Callable[[RecipePlan], BenchServer]


@dataclass
class ConfigCells:
    config: RecipePlan
    results: list[dict[str, Any]] = field(default_factory=list)  # in cell order, each with "cell" and "cached"
    server_log: str | None = None


def run_cells(plan: ServedPlan, m: Manifest, paths: Paths, ui: UI, cells: Sequence[Cell], measure: Measure, *,
              result_version: int, server: ServerFactory | None = None,
              describe: Callable[[Cell], str] | None = None) -> list[ConfigCells]:
    """Every cell of every configuration (see the module's text). ``result_version``: the layout
    of a stored result (part of the key: an older layout is measured again, never read)."""
    results = store.Store(paths, plan.name)

    def default_server(cfg: RecipePlan) -> BenchServer:
        return BenchServer(m, paths, plan.model, cfg.label, plan.context, ui, extra_args=plan.extra_args)

    make_server = server or default_server
    out: list[ConfigCells] = []
    n = len(plan.configs)
    for i, cfg in enumerate(plan.configs, 1):
        ui.step(f"[{i}/{n}] {cfg.label}: {cfg.describe()} ({cfg.bits_per_value:.2f} bits/value)")
        keys = [store.result_key(plan.name, plan.schema, plan.build, plan.model_sha256,
                                 {**c.settings, "context": plan.context, "extra_args": list(plan.extra_args),
                                  "cell": c.id, "result_version": result_version}, cfg.label) for c in cells]
        stored = [results.get(k) for k in keys]
        done = ConfigCells(cfg)
        out.append(done)
        if all(s is not None for s in stored):
            ui.info(f"cached: {cfg.label} ({len(cells)} results)")
            done.results = [{**s, "cell": c.id, "cached": True}
                            for s, c in zip(stored, cells, strict=True) if s is not None]
            continue
        bs = make_server(cfg)
        with bs, common.progress(ui, f"{plan.name} {cfg.label}") as update:
            done.server_log = str(bs.log)
            for j, (cell, key, got) in enumerate(zip(cells, keys, stored, strict=True)):
                if got is not None:
                    ui.info(f"cached: {cfg.label} {cell.id}")
                    done.results.append({**got, "cell": cell.id, "cached": True})
                else:
                    if describe is not None:
                        ui.info(f"{cfg.label}: {describe(cell)}")
                    entry = measure(bs, cell, done.results)
                    entry = {**entry, "server_log": str(bs.log)}
                    results.put(key, entry)
                    done.results.append({**entry, "cell": cell.id, "cached": False})
                update(j + 1, len(cells))
    return out


def document_head(plan: ServedPlan, m: Manifest, **model: Any) -> dict[str, Any]:
    """The fields every served benchmark's document starts with: its schema, who made it when,
    the build, and the model (``model``: more fields of it, e.g. ``n_ctx_train``)."""
    return {"schema": plan.schema, "turboctl_version": __version__, "created": now_iso(),
            "llama": common.llama_info(m, plan.server),
            "model": {"path": str(plan.model), "sha256": plan.model_sha256, **model}}


def token_agreement(a: Sequence[int], b: Sequence[int]) -> tuple[int, float, bool]:
    """How two generations' token ids agree: the leading ids they share, difflib's
    ``SequenceMatcher(None, a, b, autojunk=False).ratio()`` (in this order: the ratio is not
    always symmetric), and whether they are equal."""
    prefix = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        prefix += 1
    ratio = difflib.SequenceMatcher(None, list(a), list(b), autojunk=False).ratio()
    return prefix, ratio, list(a) == list(b)
