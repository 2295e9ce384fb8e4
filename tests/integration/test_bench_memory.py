"""``turboctl bench memory --json`` on the real build: SmolLM2-135M-Instruct with 2 configurations
x 2 contexts (a profile file: its recipe joins the configurations, its --no-repack reaches the
server), and the generated tiny model with the default contexts. Every KV figure in the JSON is
checked against the server log it names; a rerun measures nothing (every result cached)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.conftest import slow_home
from tests.integration.serveproc import run_turboctl, smollm2, write_profile
from tests.integration.tinymodel import write_tiny_model
from turboctl.bench import memory
from turboctl.build.manifest import Manifest

pytestmark = pytest.mark.slow
BYTES = re.compile(r"llama_kv_cache: KV bytes: (\d+) \(K (\d+), V (\d+)\) in (\d+) layers?, (\d+) cells")
TOTAL = re.compile(r"llama_context: KV cache total: (\d+) bytes")


def fresh_store(home: Path) -> None:
    """The test home's memory results removed, so that this run measures (the store is keyed on
    the build and the model: an earlier session's results would otherwise be reused)."""
    shutil.rmtree(home / "cache" / "bench" / memory.NAME, ignore_errors=True)


def bench_json(home: Path, *args: str) -> dict[str, Any]:
    res = run_turboctl(home, "bench", "memory", *args, "--json", timeout=900)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    doc: dict[str, Any] = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(memory.schema_path().read_text()))
    doc["_stderr"] = res.stderr
    return doc


def check_against_logs(doc: dict[str, Any]) -> None:
    """Each measured figure is the one llama-server logged (the first context of its log)."""
    for cfg in doc["configurations"]:
        for c in cfg["contexts"]:
            assert c["status"] == "measured", c
            text = Path(c["server_log"]).read_text()
            lines = BYTES.findall(text)
            assert lines, c["server_log"]
            k = sum(int(x[1]) for x in lines[:len(c["caches"])])
            v = sum(int(x[2]) for x in lines[:len(c["caches"])])
            total = int(TOTAL.findall(text)[0])
            assert c["log"] == {"k_bytes": k, "v_bytes": v, "total_bytes": total}
            assert [ca["cells"] for ca in c["caches"]] == [int(x[4]) for x in lines[:len(c["caches"])]]
            assert c["difference_bytes"] == total - c["arithmetic"]["total_bytes"]
            assert c["arithmetic_at_cells_bytes"] == total  # what serve's log check verified before


def test_smollm2_two_configurations_two_contexts(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    model = smollm2(home)
    profile = write_profile(tmp_path / "smol-t3.yaml", "smol-t3", model, "turbo3", context=2048)
    fresh_store(home)
    doc = bench_json(home, "--profile", str(profile), "--kv", "f16", "--ctx-list", "1024,2048")
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo3"]
    assert doc["settings"]["extra_args"] == ["--no-repack"]
    assert doc["model"]["n_ctx_train"] == 8192
    for cfg in doc["configurations"]:
        assert [c["context"] for c in cfg["contexts"]] == [1024, 2048]
        assert cfg["largest_context"] == 8192  # a 135M model: its training context fits any machine running this
        for c in cfg["contexts"]:
            assert c["cached"] is False
            assert c["difference_bytes"] == 0 and c["note"] is None
            assert c["projected_kv_bytes"] == c["log"]["total_bytes"]
    f16_1k, t3_1k = (cfg["contexts"][0]["log"]["total_bytes"] for cfg in doc["configurations"])
    assert f16_1k == 1024 * 30 * 2 * 192 * 2  # 30 layers x (K + V) x 192 values x 2 bytes
    assert t3_1k < f16_1k / 4
    check_against_logs(doc)
    assert doc["summary"] == {"measured": 4, "all_zero_difference": True, "nonzero_difference": []}
    # the same run again: every result from the store, no server started
    again = bench_json(home, "--profile", str(profile), "--kv", "f16", "--ctx-list", "1024,2048")
    assert all(c["cached"] for cfg in again["configurations"] for c in cfg["contexts"])
    assert again["_stderr"].count("cached: ") == 4
    assert [cfg["contexts"] for cfg in again["configurations"]] == [
        [{**c, "cached": True} for c in cfg["contexts"]] for cfg in doc["configurations"]]


def test_tiny_model_default_contexts(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    model = write_tiny_model(tmp_path / "tiny.gguf", n_ctx=2048)
    fresh_store(home)
    doc = bench_json(home, "--model", str(model), "--kv", "f16", "--kv", "turbo4/turbo3")
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo4/turbo3"]
    for cfg in doc["configurations"]:
        # the defaults up to the training context (2048): 4096 is left out and said so
        assert [c["context"] for c in cfg["contexts"]] == [1024, 2048]
        assert cfg["notes"] == ["contexts 4096 left out: above the training context 2048"]
        assert cfg["largest_context"] == 2048
        for c in cfg["contexts"]:
            assert c["difference_bytes"] == 0
    check_against_logs(doc)
