"""The what-if table of ``turboctl doctor --model M`` (and ``--profile``): for each KV cache type
and the given recipe, the KV bytes at the context and the largest context that fits this
machine, from the built binary's projection (:mod:`turboctl.serve.fit`). With RPC workers the
budget is pooled and every row also has each device's bytes against that device's share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..build.manifest import Manifest
from ..errors import CommandFailed, GateRefused, KVConfigError, ModelError, UsageError
from ..kv.layout import KVLayout, layout_from_metadata
from ..kv.recipe import Recipe, parse_recipe
from ..models.gguf import ModelInfo, model_info_from_metadata, read_metadata
from ..preflight import check_plan
from .fit import Budget, DeviceUse, Projector, Runner, device_use, largest_context, overs

SCHEMA = "turboctl.whatif/2"
WHAT_IF_TYPES = ("f16", "q8_0", "q4_0", "turbo4", "turbo3", "turbo2")


@dataclass(frozen=True)
class WhatIfRow:
    recipe: str
    given: bool                 # the recipe asked for (profile / --kv), not one of the fixed types
    bits_per_value: float | None
    context: int                # the context the KV and total columns are for
    kv_bytes: int | None
    total_bytes: int | None
    fits: bool | None
    largest_context: int | None
    skipped: str | None = None  # why the row has no figures (the gate, the model)
    devices: tuple[DeviceUse, ...] = ()  # at the context: this machine, then each RPC device


def n_ctx_train_of(meta: Mapping[str, Any]) -> int:
    """``{arch}.context_length`` of a model's metadata (ModelError when absent)."""
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.context_length")
    if not isinstance(value, int) or value <= 0:
        raise ModelError(f"the model has no {arch}.context_length: cannot pick a context automatically",
                         hint="give the context as a number (--ctx N)")
    return value


def _row(m: Manifest, model: Path, info: ModelInfo, layout: KVLayout, recipe: Recipe, given: bool,
         context: int | Literal["auto"], budget: Budget, train: int, parallel: int, batch_size: int | None,
         extra_args: Sequence[str], env: Mapping[str, str] | None, runner: Runner | None) -> WhatIfRow:
    at = train if context == "auto" else context
    try:
        plan = check_plan(m, model, info, layout, recipe)  # metadata read once for all rows
    except GateRefused as exc:
        return WhatIfRow(recipe.label, given, None, at, None, None, None, None, f"refused by the gate: {exc.message}")
    except (KVConfigError, ModelError) as exc:
        return WhatIfRow(recipe.label, given, None, at, None, None, None, None,
                         f"the model cannot use it: {exc.message}")
    proj = Projector(m, model, plan, parallel=parallel, batch_size=batch_size, extra_args=extra_args, env=env,
                     runner=runner)
    try:
        best = largest_context(m, model, plan, budget, n_ctx_train=train, projector=proj)
        if context == "auto" and best is not None:
            at = best
        p = proj(at)
    except CommandFailed as exc:  # llama.cpp's own refusal (e.g. a block size that does not divide the head dim)
        why = exc.message.split(f"with KV {recipe.label}: ", 1)[-1]
        return WhatIfRow(recipe.label, given, None, at, None, None, None, None, f"llama.cpp refuses it: {why}")
    return WhatIfRow(recipe.label, given, round(plan.bits_per_value, 4), at, p.kv, p.total, not overs(p, budget),
                     best, devices=tuple(device_use(p, budget)))


def what_if(m: Manifest, model: Path, profile_recipe: Recipe | None, context: int | Literal["auto"], budget: Budget, *,
            n_ctx_train: int | None = None, parallel: int = 1, batch_size: int | None = None,
            extra_args: Sequence[str] = (),
            env: Mapping[str, str] | None = None, runner: Runner | None = None,
            meta: dict[str, Any] | None = None) -> list[WhatIfRow]:
    """One row per type of :data:`WHAT_IF_TYPES` (K = V), then the given recipe (when it is not one of
    them). With ``context='auto'`` each row's figures are at its own largest fitting context (at the
    training context when nothing fits). ``n_ctx_train``: the model's, unless given; ``meta``: the model's
    metadata when the caller has read it already."""
    if context != "auto" and context <= 0:
        raise UsageError(f"--ctx {context}: the context must be a positive number of tokens, or auto")
    meta = meta if meta is not None else read_metadata(model)
    info = model_info_from_metadata(meta, model)
    layout = layout_from_metadata(meta, info)
    train = n_ctx_train if n_ctx_train is not None else n_ctx_train_of(meta)
    rows = []
    recipes = [(parse_recipe(t), False) for t in WHAT_IF_TYPES]
    if profile_recipe is not None:
        same = [i for i, (r, _) in enumerate(recipes) if r.label == profile_recipe.label]
        if same:
            recipes[same[0]] = (recipes[same[0]][0], True)
        else:
            recipes.append((profile_recipe, True))
    for recipe, given in recipes:
        rows.append(_row(m, model, info, layout, recipe, given, context, budget, train, parallel, batch_size,
                         extra_args, env, runner))
    return rows


def recipe_row(m: Manifest, model: Path, recipe: Recipe, context: int | Literal["auto"], budget: Budget, *,
               n_ctx_train: int | None = None, parallel: int = 1, batch_size: int | None = None,
               extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None, runner: Runner | None = None,
               meta: dict[str, Any] | None = None) -> WhatIfRow:
    """The row :func:`what_if` computes for one recipe (marked as the given one): its KV bytes at
    the context and the largest context that fits (for other commands: ``bench memory``)."""
    meta = meta if meta is not None else read_metadata(model)
    info = model_info_from_metadata(meta, model)
    layout = layout_from_metadata(meta, info)
    train = n_ctx_train if n_ctx_train is not None else n_ctx_train_of(meta)
    return _row(m, model, info, layout, recipe, True, context, budget, train, parallel, batch_size, extra_args, env,
                runner)


def report(model: Path, context: int | Literal["auto"], budget: Budget, rows: Sequence[WhatIfRow], *,
           n_ctx_train: int, parallel: int, backend: str) -> dict[str, Any]:
    """The what-if table as JSON (schema ``turboctl/schemas/whatif.schema.json``)."""
    return {
        "schema": SCHEMA,
        "model": str(model),
        "backend": backend,
        "context": context,
        "n_ctx_train": n_ctx_train,
        "parallel": parallel,
        "budget": {"bytes": budget.bytes, "source": budget.source, "kind": budget.kind,
                   "base_bytes": budget.base, "margin_bytes": budget.margin, "local_bytes": budget.local,
                   "devices": [{"device": d.name, "worker": d.worker, "index": d.index, "free_bytes": d.free,
                                "bytes": d.bytes} for d in budget.devices]},
        "rows": [{**asdict(r), "devices": [asdict(u) for u in r.devices]} for r in rows],
    }


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "whatif.schema.json"
