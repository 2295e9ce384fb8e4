"""Benchmark results cached per configuration, so that an interrupted run resumes from what was
already measured.

A result's key is the sha256 of everything it depends on: the benchmark and its schema version,
the build (the sha256 of its llama-server and the head of the patch series), the model's sha256,
the run's settings and the configuration's label. Any change to one of them is another key (the
old result is simply not found). Each result is one JSON file,
``<home>/cache/bench/<name>/<key>.json``, written atomically: a run killed mid-write leaves the
old file or none, never half of one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build.manifest import Manifest
from ..errors import BenchError
from ..models import fetch
from ..paths import Paths, write_text_atomic
from ..ui import UI

SERVER = "llama-server"


def build_identity(m: Manifest, binary: str = SERVER) -> dict[str, str]:
    """What identifies a build for cached results: ``binary``'s sha256 and the series head."""
    info = m.binaries.get(binary)
    if info is None:
        raise BenchError(f"the current build has no {binary}: cannot key cached results on it",
                         hint="run turboctl build")
    return {"binary": binary, "sha256": info.sha256, "patches_head": m.patches.head}


def model_sha256(model: Path, paths: Paths, ui: UI) -> str:
    """The model's sha256 (from the digest cache of :mod:`turboctl.models.fetch` when its size
    and mtime are unchanged, otherwise hashed once and recorded)."""
    return fetch.file_digest(model, paths, ui)


def result_key(name: str, schema: str, build: Mapping[str, str], model_sha: str, settings: Mapping[str, Any],
               label: str) -> str:
    """The sha256 (hex) of the canonical JSON of every input of one configuration's result."""
    doc = {"bench": name, "schema": schema, "build": dict(build), "model_sha256": model_sha,
           "settings": dict(settings), "configuration": label}
    try:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except TypeError as exc:
        raise ValueError(f"the settings of a cached result must be JSON values: {exc}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Store:
    """The cached results of one benchmark (``name``: memory, prompts, ...)."""

    paths: Paths
    name: str

    @property
    def root(self) -> Path:
        return self.paths.cache / "bench" / self.name

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a result key: {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored document, or None when there is none (or it is unreadable: measured again)."""
        try:
            doc = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("result"), dict):
            return None
        return dict(doc["result"])

    def put(self, key: str, result: Mapping[str, Any]) -> Path:
        """Store ``result`` under ``key`` atomically; the file's path."""
        target = self.path(key)
        write_text_atomic(target, json.dumps({"key": key, "bench": self.name, "result": dict(result)}, indent=2)
                          + "\n")
        return target
