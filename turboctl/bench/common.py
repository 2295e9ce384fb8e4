"""What every benchmark shares: the llama.cpp environment of a run, its log and outputs
(the checks before anything starts are in :mod:`turboctl.preflight`)."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..build import manifest
from ..kv.recipe import ENV_MODE, ENV_RULES, RecipePlan
from ..paths import Paths
from ..ui import UI


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
    """A new log file's path: two runs started in the same second by one process get two files
    (the second one would otherwise append to the first one's log)."""
    paths.ensure()
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path, n = paths.logs / f"{stem}.log", 1
    while True:
        try:
            path.open("x").close()  # reserved: nobody else gets this name
            return path
        except FileExistsError:
            n += 1
            path = paths.logs / f"{stem}-{n}.log"


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


def with_no_repack(server_args: Sequence[str], no_repack: bool) -> tuple[str, ...]:
    """llama-server arguments (a profile's) plus ``--no-repack`` when asked for, once."""
    if no_repack and "--no-repack" not in server_args and "-nr" not in server_args:
        return (*server_args, "--no-repack")
    return tuple(server_args)
