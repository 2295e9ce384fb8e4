"""What every command does before it starts llama.cpp (bench, serve): find the current build
and its programs, and check each KV configuration against the serving gate and the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .build import gate, manifest
from .errors import ConfigError, VerificationError
from .kv.layout import KVLayout, read_layout
from .kv.recipe import Recipe, RecipePlan
from .models.gguf import ModelInfo, check_model_pairs
from .paths import Paths


def current_build(paths: Paths) -> manifest.Manifest:
    m = manifest.load_current(paths)
    if m is None:
        raise ConfigError(f"nothing built yet in {paths.home}", hint="run turboctl build first")
    return m


def tool(m: manifest.Manifest, name: str) -> Path:
    """The path of a built llama.cpp program, checked to exist."""
    if name not in m.binaries:
        raise VerificationError(f"the current build has no {name}", hint="run turboctl build")
    path = m.binary(name)
    if not path.is_file():
        raise VerificationError(f"{path} is missing (the build directory changed since the build)",
                                hint="run turboctl build")
    return path


def check_plan(m: manifest.Manifest, model: Path, info: ModelInfo, layout: KVLayout, recipe: Recipe) -> RecipePlan:
    """One recipe on metadata already read: resolved on the model's layers, every distinct K/V
    pair it uses through the gate, then against the model (the head dims of the layers with that
    pair), then through the gate again at those head dims (the self-test must have passed that
    pair at those head dims on this backend)."""
    plan = recipe.resolve(layout)
    dims = gate.recipe_head_dims(plan, info)
    gate.check_recipe_types(m, plan)
    check_model_pairs(info, {pair: [i for layers in d.values() for i in layers] for pair, d in dims.items()})
    gate.check_recipe_head_dims(m, plan, info, model=model.name)
    return plan


def preflight(m: manifest.Manifest, model: Path, recipes: Sequence[Recipe]) -> tuple[ModelInfo, list[RecipePlan]]:
    """Refuse before anything starts: :func:`check_plan` for every recipe, on one read of the
    model's GGUF metadata."""
    info, layout = read_layout(model)
    return info, [check_plan(m, model, info, layout, recipe) for recipe in recipes]
