"""Slow: the real build of the pinned llama.cpp, its manifest, a no-op rebuild, and the built
llama-server answering a completion with a generated tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import run_turboctl_build, slow_home
from tests.integration.server import LlamaServer
from tests.integration.tinymodel import write_tiny_model
from turboctl.build import gitrepo, manifest, patches
from turboctl.build.pins import load_pin

pytestmark = pytest.mark.slow


def test_manifest_matches_pin(llama_build: manifest.Manifest) -> None:
    pin = load_pin()
    m = llama_build
    assert m.pin.commit == pin.commit and m.pin.tag == pin.llama_cpp.tag
    assert m.source.kind == "sdist"
    assert m.source.base_commit == pin.sdist.tree_commit
    assert m.backend == "cpu"
    assert "-DLLAMA_CURL=OFF" in m.cmake.flags
    assert set(pin.llama_cpp.cache_types) <= set(m.cache_types)
    assert m.version and m.version[0].startswith("version:")
    assert m.compiler.get("version")
    for name, info in m.binaries.items():
        path = Path(info.path)
        assert path.is_file(), name
        assert gitrepo.file_sha256(path) == info.sha256
    assert manifest.compare(m, pin, patches.load_series()) == []


def test_second_build_is_a_noop(llama_build: manifest.Manifest) -> None:
    res, seconds = run_turboctl_build(slow_home(), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    print(f"\n[no-op build] {seconds:.1f} s wall; phases: {doc['timings_s']}")
    assert doc["cmake"]["configured"] is False
    assert doc["cmake"]["build_steps"] == 0
    assert "(reused)" in res.stderr and "patch series already applied" in res.stderr
    assert doc["binaries"] == {k: v.model_dump() for k, v in llama_build.binaries.items()}
    assert seconds < 60


def test_server_completion_and_clean_stop(llama_build: manifest.Manifest, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    srv = LlamaServer(llama_build.binaries["llama-server"].path,
                      ["-m", str(model), "-c", "256", "-t", "2", "-np", "1"], tmp_path / "server.log")
    with srv:
        doc = srv.completion({"prompt": "the cache", "n_predict": 8, "ignore_eos": True, "temperature": 0})
        assert doc["tokens_predicted"] == 8
        assert isinstance(doc["content"], str)
    srv.assert_clean_exit()
