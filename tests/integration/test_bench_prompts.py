"""``turboctl bench prompts`` on the real build: SmolLM2-135M-Instruct, f16 and turbo3, two prompts
(p01, the strict-formatting p10) with 16 tokens each at context 512, --no-repack.

The first run is interrupted: its llama-server is killed once the first answer is stored; it
fails with the server's death and keeps that answer. The second run resumes (the stored answer is
``cached``, the rest measured); its JSON is checked against the schema, its prompt and generated
token counts against the server logs it names, and its answers against a fresh llama-server asked
the same messages (tokens, text, counts; the text is the server's detokenization of the tokens).
A third run measures nothing and writes the report with its plot."""

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
from turboctl.bench import prompts
from turboctl.bench.served import BenchServer, ServerDied
from turboctl.build.manifest import Manifest
from turboctl.paths import Paths
from turboctl.ui import UI

pytestmark = pytest.mark.slow
CTX = 512
N = 16
ARGS = ("--kv", "turbo3", "--prompts", "p01,p10", "--max-tokens", str(N), "--ctx", str(CTX), "--no-repack")


def log_figures(log: Path) -> list[tuple[int, int]]:
    """(prompt tokens, generated tokens) of each completion in a llama-server log, in order."""
    prompt, out = [], []
    for line in log.read_text().splitlines():
        if "new prompt," in line and "task.n_tokens = " in line:
            prompt.append(int(line.rsplit("task.n_tokens = ", 1)[1].split()[0]))
        elif "print_timing:" in line and " eval time = " in line and "prompt eval" not in line:
            out.append(int(line.rsplit("/", 1)[1].split()[0]))
    assert len(prompt) == len(out), log
    return list(zip(prompt, out, strict=True))


def kill_server_after_first_answer(home: Path, model: Path) -> subprocess.CompletedProcess[str]:
    store = home / "cache" / "bench" / prompts.NAME
    proc = subprocess.Popen([sys.executable, "-m", "turboctl", "bench", "prompts", "--model", str(model), *ARGS],
                            cwd=REPO, env=turboctl_env(home), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not list(store.glob("*.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no answer stored in 180 s"
            time.sleep(0.05)
        servers = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "llama-server"]
        assert len(servers) == 1, servers
        servers[0].send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def bench_json(home: Path, model: Path, *extra: str) -> tuple[dict[str, Any], str]:
    res = run_turboctl(home, "bench", "prompts", "--model", str(model), *ARGS, *extra, "--json", timeout=600)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    doc: dict[str, Any] = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(prompts.schema_path().read_text()))
    return doc, res.stderr


def test_smollm2_f16_turbo3_killed_resumed_checked(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    model = smollm2(home)
    shutil.rmtree(home / "cache" / "bench" / prompts.NAME, ignore_errors=True)  # this benchmark's results only

    killed = kill_server_after_first_answer(home, model)
    assert killed.returncode == ServerDied.exit_code, killed.stderr[-3000:]
    assert "error: llama-server for f16 exited" in killed.stderr and "during a completion" in killed.stderr
    assert len(list((home / "cache" / "bench" / prompts.NAME).glob("*.json"))) == 1

    doc, stderr = bench_json(home, model)
    assert "cached: f16 p01" in stderr
    f16, t3 = doc["configurations"]
    assert (f16["label"], t3["label"], doc["settings"]["extra_args"]) == ("f16", "turbo3", ["--no-repack"])
    assert [[o["cached"] for o in c["outputs"]] for c in (f16, t3)] == [[True, False], [False, False]]
    # the counts of the answers this run measured are those in the server logs they name
    for cfg in (f16, t3):
        fresh = [o for o in cfg["outputs"] if not o["cached"]]
        assert {o["server_log"] for o in fresh} == {cfg["server_log"]}
        assert log_figures(Path(cfg["server_log"])) == [(o["n_prompt"], o["n_predicted"]) for o in fresh]
        for o in cfg["outputs"]:
            assert o["n_tokens"] == len(o["tokens"]) == o["n_predicted"] <= N
            assert o["check"]["passed"] == prompts.check_output(
                next(p for p in prompts.load_prompts() if p.id == o["prompt"]), o["text"]).passed
        assert cfg["summary"]["checks_passed"] == sum(o["check"]["passed"] for o in cfg["outputs"])
    for o, base in zip(t3["outputs"], f16["outputs"], strict=True):
        a = prompts.agreement(base["tokens"], o["tokens"])
        assert (o["agreement"]["exact_prefix_tokens"], o["agreement"]["similarity"], o["agreement"]["identical"]) == (
            a.exact_prefix_tokens, a.similarity, a.identical)

    # a fresh f16 server asked the same messages gives the same answers; its detokenizer makes the
    # texts of both configurations' tokens
    selected = prompts.select(prompts.load_prompts(), "p01,p10")
    with BenchServer(llama_build, Paths(home), model, "f16", CTX, UI(quiet=True), extra_args=("--no-repack",)) as bs:
        for p, o, o3 in zip(selected, f16["outputs"], t3["outputs"], strict=True):
            messages, filler = prompts.prompt_messages(bs, p, CTX, N)
            c = bs.chat(messages, n_predict=N)
            assert (c.tokens, c.text, c.n_prompt, c.n_predicted, c.stop_reason, filler) == (
                o["tokens"], o["text"], o["n_prompt"], o["n_predicted"], o["stop_reason"], o["filler"])
            # the token ids include the end-of-generation token when the answer ended there; the text does not
            shown = o3["tokens"][:-1] if o3["stop_reason"] == "eos" else o3["tokens"]
            assert bs.detokenize(shown) == o3["text"]

    # everything cached: no server, the same answers; the report with its plot
    report = tmp_path / "report"
    again, stderr = bench_json(home, model, "--report", str(report))
    assert "cached: f16 (2 results)" in stderr and "cached: turbo3 (2 results)" in stderr
    assert [c["server_log"] for c in again["configurations"]] == [None, None]
    for c, c0 in zip(again["configurations"], doc["configurations"], strict=True):
        assert [{**o, "cached": True} for o in c0["outputs"]] == c["outputs"]
    text = (report / "report.md").read_text()
    assert "## Prompt matrix: answers against f16" in text and "![similarity](prompts-similarity.png)" in text
    assert (report / "prompts-similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert f16["outputs"][0]["text"].strip().splitlines()[0][:30] in text
