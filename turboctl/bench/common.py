"""What every benchmark does before it starts llama.cpp: find the build, check each KV
configuration against the serving gate and the model, and name its log and outputs."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..build import gate, manifest
from ..errors import ConfigError, VerificationError
from ..kv.layout import read_layout
from ..kv.recipe import ENV_MODE, ENV_RULES, Recipe, RecipePlan
from ..models.gguf import ModelInfo, check_model_pairs
from ..paths import Paths
from ..ui import UI


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


def preflight(m: manifest.Manifest, model: Path, recipes: Sequence[Recipe]) -> tuple[ModelInfo, list[RecipePlan]]:
    """Refuse before anything starts: every recipe resolved on the model's layers (GGUF
    metadata only), every distinct K/V pair it uses through the gate, then against the model
    (the head dims of the layers with that pair), then through the gate again at those head
    dims (the self-test must have passed that pair at those head dims on this backend)."""
    info, layout = read_layout(model)
    plans = []
    for recipe in recipes:
        plan = recipe.resolve(layout)
        dims = gate.recipe_head_dims(plan, info)
        gate.check_recipe_types(m, plan)
        check_model_pairs(info, {pair: [i for layers in d.values() for i in layers] for pair, d in dims.items()})
        gate.check_recipe_head_dims(m, plan, info, model=model.name)
        plans.append(plan)
    return info, plans


def llama_env(plan: RecipePlan | None = None, *, with_mode: bool = False) -> dict[str, str]:
    """The environment for a llama.cpp run: this one without the per-layer KV variables
    (TURBO_LAYER_ADAPTIVE, LLAMA_ARG_KV_LAYERS: a run uses exactly its recipe, the f16 base
    exactly f16), plus the recipe's mode for a tool that reads it only from the environment
    (``with_mode``: llama-bench)."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_MODE, ENV_RULES)}
    if with_mode and plan is not None:
        env.update(plan.recipe.env())
    return env


def ignored_env() -> list[str]:
    """The per-layer KV variables set in this environment, which the bench runs leave out."""
    return [f"{k}={os.environ[k]}" for k in (ENV_MODE, ENV_RULES) if k in os.environ]


def log_path(paths: Paths, name: str) -> Path:
    paths.ensure()
    return paths.logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def shell(args: Sequence[str]) -> str:
    return shlex.join(list(args))


def write_json(path: Path, document: dict[str, Any]) -> None:
    manifest.write_atomic(path, document)


def llama_info(m: manifest.Manifest, binary: Path) -> dict[str, Any]:
    return {
        "version": m.version,
        "pin": {"tag": m.pin.tag, "commit": m.pin.commit},
        "patches_head": m.patches.head,
        "backend": m.backend,
        "binary": str(binary),
        "binary_sha256": m.binaries[binary.name].sha256 if binary.name in m.binaries else None,
        "selftest": m.selftest.status if m.selftest else None,
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2)


@contextmanager
def progress(ui: UI, description: str) -> Iterator[Callable[[float, float], None]]:
    """A progress bar on a terminal (``update(done, total)``); nothing otherwise: the step
    lines already say which configuration runs, and plain logs stay short."""
    if not ui.is_tty or ui.quiet:
        yield lambda done, total: None
        return
    last: list[float] = [0.0]
    with ui.progress(description) as bar:
        def update(done: float, total: float) -> None:
            last[0] = total
            bar.update(done, total)

        yield update
        if last[0]:
            bar.update(last[0], last[0])
