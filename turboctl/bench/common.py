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

from .. import gate, manifest
from ..errors import ConfigError, VerificationError
from ..kv.config import KVConfig
from ..models import ModelInfo, check_model_kv, inspect_model
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


def preflight(m: manifest.Manifest, model: Path, configs: Sequence[KVConfig]) -> ModelInfo:
    """Refuse before anything starts: every configuration through the gate, then against the
    model (its head dims), then through the gate again with the model's per-layer K/V head
    dims (the self-test must have passed that pair at those head dims on this backend)."""
    info = inspect_model(model)
    head_dims = gate.model_head_dims(info)
    for cfg in configs:
        gate.check_kv_types(m, cfg.type_k, cfg.type_v)
        check_model_kv(info, cfg)
        gate.check_kv_head_dims(m, cfg.type_k, cfg.type_v, head_dims, model=model.name)
    return info


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
