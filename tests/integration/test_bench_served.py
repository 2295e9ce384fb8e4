"""BenchServer on the real build and SmolLM2-135M-Instruct: started through serve's launch code
(the log check of the per-layer types and bytes), completions at temperature 0 that repeat
exactly, the generated token ids returned, a chat through the model's template, and a server
killed while a completion runs (ServerDied naming the log)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.integration.conftest import slow_home
from tests.integration.serveproc import smollm2
from turboctl.bench.served import BenchServer, ServerDied
from turboctl.build.manifest import Manifest
from turboctl.paths import Paths
from turboctl.ui import UI

pytestmark = pytest.mark.slow
NO_REPACK = ("--no-repack",)  # b11312's Q4_1 repacking dies with SIGILL on some x86 VMs (the demo profile's note)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TURBO_LAYER_ADAPTIVE", "LLAMA_ARG_KV_LAYERS", "LLAMA_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TURBOCTL_HOME", str(slow_home()))


@pytest.mark.usefixtures("clean_env")
def test_temperature_0_repeats_and_tokens_come_back(llama_build: Manifest) -> None:
    home = slow_home()
    model = smollm2(home)
    with BenchServer(llama_build, Paths(home), model, "turbo4", 2048, UI(quiet=True), extra_args=NO_REPACK) as bs:
        assert bs.plan.settings.context == 2048 and bs.recipe_plan.label == "turbo4"
        assert "--no-repack" in bs.plan.argv
        prompt = "The three primary colors are"
        a = bs.complete(prompt, n_predict=24)
        b = bs.complete(prompt, n_predict=24)
        assert a == b or (a.text, a.tokens, a.stop_reason) == (b.text, b.tokens, b.stop_reason)
        assert a.text and a.tokens and len(a.tokens) == a.n_predicted <= 24
        assert a.stop_reason in ("eos", "limit")
        assert a.n_prompt == len(bs.tokenize(prompt))  # SmolLM2 adds no BOS
        assert a.timings["predicted_n"] == a.n_predicted
        chat = bs.chat([{"role": "user", "content": "Name one primary color."}], n_predict=16)
        again = bs.chat([{"role": "user", "content": "Name one primary color."}], n_predict=16)
        assert chat.tokens and (chat.text, chat.tokens) == (again.text, again.tokens)
        assert "<|im_start|>assistant" in bs.apply_template([{"role": "user", "content": "x"}])
        log = bs.log
    assert "llama_kv_cache: KV layers: 0-29 turbo4/turbo4" in log.read_text()


@pytest.mark.usefixtures("clean_env")
def test_a_server_killed_mid_run_is_server_died(llama_build: Manifest) -> None:
    home = slow_home()
    model = smollm2(home)
    with BenchServer(llama_build, Paths(home), model, "turbo3", 2048, UI(quiet=True), extra_args=NO_REPACK) as bs:
        first = bs.complete("Once upon a time", n_predict=8)  # measured before the kill
        assert first.tokens
        pid = bs.pid

        def kill() -> None:
            time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill)
        killer.start()
        started = time.monotonic()
        with pytest.raises(ServerDied) as err:
            bs.complete("Write a very long story about a cache. " * 4, n_predict=2000)
        killer.join()
        assert time.monotonic() - started < 60
        log = bs.log
    assert err.value.message == (f"llama-server for turbo3 exited (code {-signal.SIGKILL}) during a completion; "
                                 f"its log: {log}")
    assert err.value.log_path == log and log.is_file()
