"""``turboctl bench niah`` on the real build: SmolLM2-135M-Instruct, f16 and turbo3, two short
contexts, depths 0 and 100, one needle. The first run's llama-server is killed once two cells
are stored: the run fails saying so and keeps them; the rerun resumes from them, and its
document (schema), its figures (each against the log of the server that measured it) and its
report (with the grid plot) are checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest

from tests.integration.conftest import REPO, slow_home
from tests.integration.serveproc import run_turboctl, smollm2, turboctl_env
from turboctl.bench import niah
from turboctl.bench.served import ServerDied
from turboctl.build.manifest import Manifest

pytestmark = pytest.mark.slow
MAX_TOKENS = 20
# 384 tokens hold one paragraph of the haystack, 512 two: the needle before or after each
ARGS = ["--kv", "f16,turbo3", "--ctx-list", "384,512", "--depths", "0,100", "--needles", "1",
        "--max-tokens", str(MAX_TOKENS), "--no-repack"]
PROMPT = re.compile(r"new prompt, n_ctx_slot = (\d+), n_keep = \d+, task\.n_tokens = (\d+)")
GENERATED = re.compile(r"\|\s+eval time =\s+[\d.]+ ms /\s+(\d+) tokens")


def stored(home: Path) -> list[Path]:
    return sorted((home / "cache" / "bench" / niah.NAME).glob("*.json"))


def kill_server_after(proc: subprocess.Popen[str], home: Path, cells: int, timeout: float = 600) -> None:
    """Kill the llama-server under ``proc`` once ``cells`` results are stored."""
    deadline = time.monotonic() + timeout
    while len(stored(home)) < cells:
        assert proc.poll() is None, f"bench niah ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no results stored in time"
        time.sleep(0.2)
    servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "llama-server"]
    assert len(servers) == 1, servers
    servers[0].kill()


def check_against_logs(doc: dict[str, Any]) -> None:
    """Each cell's prompt and answer lengths are the ones its server logged, request by request."""
    by_log: dict[str, list[dict[str, Any]]] = {}
    for cfg in doc["configurations"]:
        for c in cfg["cells"]:
            by_log.setdefault(c["server_log"], []).append(c)
    for log, measured in by_log.items():
        text = Path(log).read_text()
        prompts, generated = PROMPT.findall(text), GENERATED.findall(text)
        assert len(prompts) >= len(measured) and len(generated) >= len(measured), log
        for c, (slot, n_prompt), n_gen in zip(measured, prompts, generated, strict=False):
            assert int(slot) == doc["settings"]["server_context"]
            assert c["n_prompt"] == int(n_prompt) and c["n_predicted"] == int(n_gen), (log, c["cell"])


def test_smollm2_killed_mid_run_then_resumed(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    model = smollm2(home)
    shutil.rmtree(home / "cache" / "bench" / niah.NAME, ignore_errors=True)
    proc = subprocess.Popen([sys.executable, "-m", "turboctl", "bench", "niah", "--model", str(model), *ARGS],
                            cwd=REPO, env=turboctl_env(home), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        kill_server_after(proc, home, 2)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ServerDied.exit_code, err[-3000:]
    assert "error: llama-server for f16 exited (code -9) during " in err, err[-3000:]
    assert "what was measured before it is kept" in err
    kept = len(stored(home))
    assert 2 <= kept < 4

    report = tmp_path / "report"
    res = run_turboctl(home, "bench", "niah", "--model", str(model), *ARGS, "--json", "--report", str(report),
                       "--output", str(tmp_path / "niah.json"), timeout=900)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(niah.schema_path().read_text()))
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo3"]
    assert doc["settings"]["extra_args"] == ["--no-repack"] and doc["settings"]["server_context"] == 512
    cells = [c for cfg in doc["configurations"] for c in cfg["cells"]]
    assert [c["cached"] for c in cells] == [True] * kept + [False] * (8 - kept)
    assert "cached: f16 ctx384-depth0-boathouse-key" in res.stderr
    assert len(stored(home)) == 8
    for c in cells:
        assert c["n_prompt"] == c["prompt_tokens"]  # the server evaluated the prompt as /tokenize counted it
        assert c["n_prompt"] + MAX_TOKENS <= c["context"]
        assert c["n_prompt"] > c["context"] - MAX_TOKENS - 200  # filled, up to less than a paragraph
        assert c["paragraphs"] == {384: 1, 512: 2}[c["context"]]
        assert c["needle_after_paragraph"] == (0 if c["depth"] == 0 else c["paragraphs"])
        assert c["haystack_token"] <= c["needle_token"] < c["needle_token"] + c["needle_tokens"] <= c["n_prompt"]
        assert c["depth_actual"] == c["depth"]
        assert c["retrieved"] is (re.search(doc["settings"]["needles"][0]["answer"], c["output"], re.I) is not None)
    check_against_logs(doc)
    # the grid is the cells' count
    for cfg, grid in zip(doc["configurations"], doc["grid"], strict=True):
        assert grid["retrieved"] == sum(c["retrieved"] for c in cfg["cells"]) and grid["total"] == 4
    text = (report / "report.md").read_text()
    assert "## Needle in a haystack" in text and "![grid](niah-grid.png)" in text
    assert (report / "niah-grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "niah.json").read_text()) == doc
    print("\n" + "\n".join(ln for ln in text.splitlines() if ln.startswith("|")))
