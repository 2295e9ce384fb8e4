"""bench/store.py: the result key changes with each of its inputs; results are written atomically
and read back; unreadable or foreign files count as not stored."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakebuild import fake_build
from turboctl.bench import store
from turboctl.errors import BenchError
from turboctl.paths import Paths
from turboctl.ui import UI

BASE: dict[str, Any] = {
    "name": "memory", "schema": "turboctl.bench.memory/1",
    "build": {"binary": "llama-server", "sha256": "a" * 64, "patches_head": "b" * 40},
    "model_sha": "c" * 64, "settings": {"context": 1024, "parallel": 1}, "label": "turbo4",
}


def key(**change: Any) -> str:
    args = {**BASE, **change}
    return store.result_key(args["name"], args["schema"], args["build"], args["model_sha"], args["settings"],
                            args["label"])


@pytest.mark.parametrize("change", [
    {"name": "prompts"},
    {"schema": "turboctl.bench.memory/2"},
    {"build": {**BASE["build"], "sha256": "d" * 64}},
    {"build": {**BASE["build"], "patches_head": "e" * 40}},
    {"model_sha": "f" * 64},
    {"settings": {"context": 2048, "parallel": 1}},
    {"settings": {"context": 1024, "parallel": 1, "extra_args": ["--no-repack"]}},
    {"label": "turbo4/turbo3"},
])
def test_the_key_changes_with_each_input(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_the_key_is_stable_and_ignores_dict_order() -> None:
    assert key() == key(settings={"parallel": 1, "context": 1024})
    assert len(key()) == 64 and all(c in "0123456789abcdef" for c in key())


def test_settings_must_be_json_values() -> None:
    with pytest.raises(ValueError, match="the settings of a cached result must be JSON values"):
        key(settings={"path": Path("/x")})


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    s = store.Store(Paths(tmp_path), "memory")
    k = key()
    assert s.get(k) is None
    path = s.put(k, {"context": 1024, "log": {"total_bytes": 5}})
    assert path == tmp_path / "cache" / "bench" / "memory" / f"{k}.json"
    assert s.get(k) == {"context": 1024, "log": {"total_bytes": 5}}
    assert store.Store(Paths(tmp_path), "prompts").get(k) is None  # one folder per benchmark
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_failed_write_keeps_the_old_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = store.Store(Paths(tmp_path), "memory")
    k = key()
    s.put(k, {"v": 1})

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        s.put(k, {"v": 2})
    monkeypatch.undo()
    assert s.get(k) == {"v": 1}
    assert [p.name for p in s.root.iterdir()] == [f"{k}.json"]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"key": "other", "result": {}}', '{"result": 3}'])
def test_unreadable_or_foreign_files_are_not_results(tmp_path: Path, content: str) -> None:
    s = store.Store(Paths(tmp_path), "memory")
    k = key()
    s.root.mkdir(parents=True)
    s.path(k).write_text(content)
    assert s.get(k) is None


def test_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a result key: '\.\./x'"):
        store.Store(Paths(tmp_path), "memory").path("../x")


def test_build_identity_and_model_digest(tmp_path: Path) -> None:
    m = fake_build(tmp_path / "home")
    ident = store.build_identity(m)
    assert ident == {"binary": "llama-server", "sha256": m.binaries["llama-server"].sha256,
                     "patches_head": m.patches.head}
    with pytest.raises(BenchError, match="the current build has no llama-nope: cannot key cached results on it"):
        store.build_identity(m, "llama-nope")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF test")
    paths = Paths(tmp_path / "home")
    import hashlib

    assert store.model_sha256(model, paths, UI(quiet=True)) == hashlib.sha256(b"GGUF test").hexdigest()
    records = list((paths.cache).rglob("*.json"))
    assert records and json.loads(records[0].read_text())["sha256"] == hashlib.sha256(b"GGUF test").hexdigest()


def test_log_paths_in_the_same_second_differ(tmp_path: Path) -> None:
    from turboctl.bench.common import log_path
    from turboctl.paths import Paths

    paths = Paths(tmp_path)
    first, second = log_path(paths, "serve"), log_path(paths, "serve")
    assert first != second and first.exists() and second.exists()
