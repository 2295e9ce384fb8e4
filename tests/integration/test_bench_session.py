"""``turboctl bench long-session`` on the real build and SmolLM2-135M-Instruct: f16 and turbo3,
the first 3 turns, 12 tokens per answer, a context of 192 so that the history is truncated.
A first run is interrupted by killing its llama-server mid-run; the rerun takes the turns
measured before from the store and measures the rest. The document is checked against its
schema and against the server: f16's first turn asked again gives the same tokens, every answer's
tokens detokenize to its text, every prompt's token count is the server's count of the prompt
rebuilt from the document, and every signal is recomputed from the returned text and tokens."""

from __future__ import annotations

import json
import shutil
import signal
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
from turboctl.bench import session
from turboctl.bench.served import BenchServer
from turboctl.build.manifest import Manifest
from turboctl.paths import Paths
from turboctl.ui import UI

pytestmark = pytest.mark.slow
ARGS = ("--kv", "turbo3", "--turns", "3", "--max-tokens", "12", "--ctx", "192", "--no-repack")
TOKENS, CTX = 12, 192


def run_killed(home: Path, model: Path) -> tuple[int, str]:
    """The bench started, its llama-server killed once turbo3's second turn is asked for."""
    cmd = [sys.executable, "-m", "turboctl", "bench", "long-session", "--model", str(model), *ARGS, "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=turboctl_env(home), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    err: list[str] = []
    assert proc.stderr is not None
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        err.append(line)
        if "turbo3: turn 2/3" in line:
            servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "llama-server" in p.name()]
            assert servers, "".join(err)
            for p in servers:
                p.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(err)
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, "".join(err) + rest


def test_smollm2_interrupted_then_resumed(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    model = smollm2(home)
    shutil.rmtree(home / "cache" / "bench" / session.NAME, ignore_errors=True)
    code, err = run_killed(home, model)
    assert code == 22, err
    assert "llama-server for turbo3 exited" in err

    report = tmp_path / "report"
    res = run_turboctl(home, "bench", "long-session", "--model", str(model), *ARGS, "--json", "--output",
                       str(tmp_path / "doc.json"), "--report", str(report), timeout=600)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    doc: dict[str, Any] = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(session.schema_path().read_text()))
    assert json.loads((tmp_path / "doc.json").read_text())["configurations"] == doc["configurations"]
    assert "cached: f16 (3 results)" in res.stderr and "cached: turbo3 turn-01" in res.stderr
    f16, t3 = doc["configurations"]
    assert (f16["label"], t3["label"]) == ("f16", "turbo3")
    assert all(t["cached"] for t in f16["turns"])
    cached = [t["cached"] for t in t3["turns"]]
    assert cached[0] and not cached[-1] and cached == sorted(cached, reverse=True)
    assert doc["settings"]["extra_args"] == ["--no-repack"] and doc["settings"]["context"] == CTX
    assert max(t["dropped"] for t in f16["turns"]) > 0, "the history was expected to be truncated at 192 tokens"

    # the report, with its plots
    md = (report / "report.md").read_text()
    assert "## Long session" in md
    for png in ("long-session-agreement.png", "long-session-repetition.png"):
        assert (report / png).stat().st_size > 1000

    # every figure against the server (and the signals against the returned text and tokens)
    s = session.load_session()
    with BenchServer(llama_build, Paths(home), model, "f16", CTX, UI(quiet=True), extra_args=("--no-repack",)) as bs:
        for cfg in (f16, t3):  # the tokenizer and the template are the model's, whatever the KV types
            texts = [t["text"] for t in cfg["turns"]]
            for i, t in enumerate(cfg["turns"]):
                assert t["response_tokens"] == len(t["tokens"]) and 0 < t["response_tokens"] <= TOKENS
                assert bs.detokenize(t["tokens"]) == t["text"]
                exchanges = [(s.turns[j].text, texts[j]) for j in range(t["dropped"], i)]
                prompt = bs.apply_template(session.messages_for(s.system, exchanges, s.turns[i].text))
                assert t["prompt_tokens"] == len(bs.tokenize(prompt)) == t["n_prompt"]  # SmolLM2 adds no BOS
                assert t["n_prompt"] + t["response_tokens"] <= CTX
                assert t["repetition"] == session.repetition_ratio(t["text"])
                if cfg is f16 and i == 0:  # nothing cached in a fresh server: the same answer again
                    again = bs.complete(prompt, n_predict=TOKENS)
                    assert (again.tokens, again.text, again.stop_reason) == (t["tokens"], t["text"],
                                                                             t["stop_reason"])
    for a, b in zip(t3["turns"], f16["turns"], strict=True):
        assert a["agreement"] == session.agreement(a["tokens"], b["tokens"])
    sims = [t["agreement"]["similarity"] for t in t3["turns"]]
    assert t3["summary"]["first_divergence"] == session.first_divergence(sims)
    print("\n[long-session] turbo3 vs f16 similarity per turn:", [round(x, 3) for x in sims],
          "first divergence:", t3["summary"]["first_divergence"])
