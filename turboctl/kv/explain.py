"""``turboctl kv explain``: what a recipe does on a model, from its GGUF metadata only.

The per-layer table (runs of alike layers collapsed; layers without a cache of their own and
recurrent layers shown as such), the distinct K/V pairs, the average bits/value, the KV bytes
at a context size, and plain warnings where a type is unsafe. No weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..ui import UI
from .layout import read_layout
from .recipe import RecipePlan, parse_recipe

SCHEMA = "turboctl.kv.explain/1"
DEFAULT_CTX = 4096
SWA_NOTE = ("llama.cpp gives sliding-window (SWA) layers fewer cells (the window plus a batch) unless --swa-full; "
            "these bytes count the full context for every layer")


@dataclass(frozen=True)
class Explanation:
    text: str
    model: Path
    model_name: str | None
    plan: RecipePlan
    ctx: int
    ctx_default: bool


def explain(recipe_text: str, model: Path, ctx: int | None = None) -> Explanation:
    """Parse the recipe (syntax first: errors need no model), read the model's layout, resolve."""
    from ..errors import UsageError

    if ctx is not None and ctx < 1:
        raise UsageError(f"--ctx {ctx}: must be at least 1")
    recipe = parse_recipe(recipe_text)
    info, layout = read_layout(model)
    plan = recipe.resolve(layout)
    return Explanation(recipe_text.strip(), model, info.name, plan, ctx or DEFAULT_CTX, ctx is None)


def _cache(row_kind: str, reuses: int | None) -> str:
    if row_kind == "recurrent":
        return "none (recurrent)"
    if row_kind == "reuse":
        return f"reuses layer {reuses}"
    return "own"


def _source(a: str, b: str) -> str:
    return a if a == b else f"K {a}, V {b}"


def _has_swa(plan: RecipePlan) -> bool:
    return any(la.swa for la in plan.layout.owned())


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def to_json(ex: Explanation) -> dict[str, Any]:
    plan = ex.plan
    recipe = plan.recipe
    k_bytes, v_bytes = plan.kv_bytes(ex.ctx)
    return {
        "schema": SCHEMA,
        "turboctl_version": __version__,
        "recipe": {
            "text": ex.text,
            "label": recipe.label,
            "type_k": recipe.type_k,
            "type_v": recipe.type_v,
            "mode": recipe.mode,
            "rules": recipe.rules.canonical,
            "llama_args": recipe.llama_args(),
            "llama_bench_args": recipe.bench_args(),
            "llama_bench_env": recipe.env(),
        },
        "model": {
            "path": str(ex.model),
            "name": ex.model_name,
            "architecture": plan.layout.architecture,
            "n_layer": plan.layout.n_layer,
            "n_layer_own_cache": len(plan.layout.owned()),
            "layout_known": plan.layout.modelled,
        },
        "ctx": ex.ctx,
        "ctx_default": ex.ctx_default,
        "layers": [
            {
                "index": r.layer.index,
                "cache": r.layer.kind,
                "reuses": r.layer.reuses,
                "swa": r.layer.swa,
                "n_head_kv": r.layer.n_head_kv,
                "head_dim_k": r.layer.head_dim_k,
                "head_dim_v": r.layer.head_dim_v,
                "type_k": r.type_k,
                "type_v": r.type_v,
                "set_by_k": r.source_k or None,
                "set_by_v": r.source_v or None,
            }
            for r in plan.rows()
        ],
        "pairs": [f"{k}/{v}" for k, v in plan.pairs()],
        "bits_per_value": round(plan.bits_per_value, 6),
        "kv_bytes": {"total": k_bytes + v_bytes, "k": k_bytes, "v": v_bytes, "cells_per_layer": ex.ctx,
                     "note": SWA_NOTE if _has_swa(plan) else None},
        "mode": plan.mode_note(),
        "warnings": list(plan.warnings),
        "unsafe": plan.safety(),
    }


def render(ex: Explanation, ui: UI) -> None:
    plan = ex.plan
    layout = plan.layout
    recipe = plan.recipe
    k_bytes, v_bytes = plan.kv_bytes(ex.ctx)
    owned = len(layout.owned())
    ctx = f"{ex.ctx} cells per layer" + (" (the default: pass --ctx N for another size)" if ex.ctx_default else "")
    rows = [
        ("recipe", recipe.label),
        ("model", f"{ex.model.name}: {layout.architecture}, {layout.n_layer} layers, {owned} with a KV cache of "
                  "their own"),
        ("llama.cpp args", " ".join(recipe.llama_args())),
    ]
    if recipe.mode is not None:
        rows.append(("llama-bench", " ".join(f"{k}={v}" for k, v in recipe.env().items()) + " llama-bench "
                     + " ".join(recipe.bench_args())))
    rows.append(("context", ctx))
    ui.kv("kv explain", rows)
    table = []
    for run in plan.runs():
        r = run.rows[0]
        la = r.layer
        table.append([
            run.layers,
            _cache(la.kind, la.reuses),
            r.type_k or "-",
            r.type_v or "-",
            _source(r.source_k, r.source_v) if la.owns else "",
            f"{la.head_dim_k}/{la.head_dim_v}" + (" SWA" if la.swa else ""),
            str(la.n_head_kv),
        ])
    ui.table("KV cache per layer", ["layers", "cache", "K", "V", "set by", "head dims K/V", "KV heads"], table)
    ui.kv("totals", [
        ("pairs", ", ".join(f"{k}/{v}" for k, v in plan.pairs()) or "none"),
        ("bits/value", f"{plan.bits_per_value:.4f} (weighted by the values each layer's cache holds)"),
        ("KV bytes", f"{k_bytes + v_bytes} ({_mib(k_bytes + v_bytes)}; K {k_bytes}, V {v_bytes}) at {ex.ctx} "
                     "cells per layer"),
    ])
    if _has_swa(plan):
        ui.info("note: " + SWA_NOTE)
    if note := plan.mode_note():
        ui.info(note)
    for warning in (*plan.warnings, *plan.safety()):
        ui.warn(warning)


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "kv-explain.schema.json"
