"""bench/served.py: the /completion response parser, and BenchServer end to end against a stand-in
llama-server (a short Python HTTP server started by serve's own launch code), including a
server that dies mid-run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA
from tests.fetchserver import loopback  # noqa: F401  (fixture)
from turboctl.bench import served
from turboctl.bench.served import BenchServer, Completion, ServerDied, parse_completion
from turboctl.errors import BenchError
from turboctl.kv.recipe import parse_recipe
from turboctl.paths import Paths
from turboctl.serve import launch
from turboctl.serve import request as request_mod
from turboctl.serve.command import ServeSettings
from turboctl.ui import UI

RECORDED = DATA / "bench" / "completion-smollm2-turbo4.json"


def test_parse_the_recorded_completion() -> None:
    doc = json.loads(RECORDED.read_text())
    c = parse_completion(doc)
    assert c.text == doc["content"] and c.text
    assert c.tokens == doc["tokens"] and len(c.tokens) == c.n_predicted == doc["tokens_predicted"]
    assert c.n_prompt == doc["tokens_evaluated"]
    assert c.stop_reason == doc["stop_type"]
    assert c.timings["predicted_n"] == c.n_predicted


@pytest.mark.parametrize(("change", "message"), [
    ({"tokens": None}, "'tokens' is not a list of token ids"),
    ({"tokens": [1, "x"]}, "'tokens' is not a list of token ids"),
    ({"stop_type": "none"}, "'stop_type' is 'none', expected one of eos, limit, word"),
    ({"tokens_predicted": 999}, r"\d+ token ids for 999 tokens predicted"),
    ({"content": 3}, "'content' is not a string"),
    ({"timings": []}, "'timings' is not a JSON object"),
])
def test_parse_completion_refuses_malformed_responses(change: dict[str, Any], message: str) -> None:
    doc = {**json.loads(RECORDED.read_text()), **change}
    with pytest.raises(ValueError, match=message):
        parse_completion(doc)


@pytest.mark.parametrize("key", ["content", "tokens", "tokens_evaluated", "tokens_predicted", "stop_type", "timings"])
def test_parse_completion_refuses_a_missing_figure(key: str) -> None:
    doc = json.loads(RECORDED.read_text())
    del doc[key]
    with pytest.raises(ValueError, match=f"the response has no '{key}'"):
        parse_completion(doc)


# --------------------------------------------------------------------------- a stand-in server
FAKE_SERVER = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, doc, code=200):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply({"status": "ok"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        print("POST", self.path, json.dumps(body, sort_keys=True), flush=True)
        if self.path == "/completion":
            if body["prompt"].endswith("die"):
                os._exit(3)
            if body["prompt"] == "bad":
                return self.reply({"content": "x"})
            toks = [ord(c) for c in body["prompt"][: body["n_predict"]]]
            return self.reply({"content": body["prompt"][::-1], "tokens": toks, "tokens_evaluated": 7,
                               "tokens_predicted": len(toks), "stop_type": "limit",
                               "timings": {"predicted_n": len(toks)}})
        if self.path == "/apply-template":
            return self.reply({"prompt": "".join(f"<{m['role']}>{m['content']}" for m in body["messages"]) + "<a>"})
        if self.path == "/tokenize":
            return self.reply({"tokens": [ord(c) for c in body["content"]]})
        self.reply({"error": "no"}, 404)

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[request_mod.ServeRequest]:
    seen: list[request_mod.ServeRequest] = []

    def prepare(req: request_mod.ServeRequest, paths: Paths, ui: UI) -> launch.ServePlan:
        seen.append(req)
        assert req.port is not None
        s = ServeSettings(model=tmp_path / "m.gguf", recipe=parse_recipe(req.kv or "f16"), context=req.context or 0,
                          port=req.port)
        return launch.ServePlan(settings=s, argv=[sys.executable, "-c", FAKE_SERVER, str(req.port)], env={},
                                shown="fake", plan=None, info=None, context_source="requested")

    monkeypatch.setattr(served.request_mod, "prepare", prepare)
    return seen


def bench_server(tmp_path: Path, **kw: Any) -> BenchServer:
    from tests.unit.fakebuild import fake_build

    m = fake_build(tmp_path / "home")
    return BenchServer(m, Paths(tmp_path / "home"), tmp_path / "m.gguf", "turbo4/turbo3", 2048, UI(quiet=True), **kw)


@pytest.mark.usefixtures("loopback")
def test_bench_server_asks_serve_and_completes(tmp_path: Path, fake: list[request_mod.ServeRequest]) -> None:
    with bench_server(tmp_path, parallel=2) as bs:
        (req,) = fake
        assert (req.kv, req.context, req.parallel, req.direct, req.no_build, req.host) == (
            "turbo4/turbo3", 2048, 2, True, True, "127.0.0.1")
        assert bs.url == f"http://127.0.0.1:{req.port}"
        c = bs.complete("hello", n_predict=3, seed=5)
        assert c == Completion(text="olleh", tokens=[104, 101, 108], n_prompt=7, n_predicted=3, stop_reason="limit",
                               timings={"predicted_n": 3})
        chat = bs.chat([{"role": "user", "content": "hi"}], n_predict=2)
        assert chat.text == ">a<ih>resu<"
        assert bs.tokenize("ab") == [97, 98]
        log = bs.log
    text = log.read_text()
    sent = [json.loads(line.split(" ", 2)[2]) for line in text.splitlines() if line.startswith("POST /completion")]
    assert sent[0] == {"prompt": "hello", "n_predict": 3, "temperature": 0.0, "seed": 5, "return_tokens": True,
                       "cache_prompt": False, "stream": False}
    assert sent[1]["prompt"] == "<user>hi<a>"
    assert "POST /tokenize " + json.dumps({"add_special": False, "content": "ab"}, sort_keys=True) in text


@pytest.mark.usefixtures("loopback")
def test_a_server_killed_mid_run_is_server_died_naming_the_log(tmp_path: Path,
                                                                fake: list[request_mod.ServeRequest]) -> None:
    with bench_server(tmp_path) as bs:
        bs.complete("fine", n_predict=2)
        with pytest.raises(ServerDied) as err:
            bs.complete("now die", n_predict=2)
        log = bs.log
    assert err.value.message == f"llama-server for turbo4/turbo3 exited (code 3) during a completion; its log: {log}"
    assert err.value.log_path == log
    assert err.value.hint == "what was measured before it is kept; the log says why it stopped"
    assert err.value.exit_code == 22


@pytest.mark.usefixtures("loopback")
def test_a_response_without_its_figures_is_an_error(tmp_path: Path, fake: list[request_mod.ServeRequest]) -> None:
    with bench_server(tmp_path) as bs, pytest.raises(BenchError) as err:
        bs.complete("bad", n_predict=2)
    assert err.value.message == ("llama-server for turbo4/turbo3: unusable /completion response: the response has "
                                 "no 'tokens'")


def test_extra_args_are_appended_to_the_command(tmp_path: Path, fake: list[request_mod.ServeRequest]) -> None:
    p = bench_server(tmp_path, extra_args=("--no-repack",)).prepare()
    assert p.argv[-1] == "--no-repack" and "--model" in p.argv
    assert p.settings.extra_args == ("--no-repack",)


def test_not_started_is_a_clear_error(tmp_path: Path) -> None:
    bs = bench_server(tmp_path)
    with pytest.raises(RuntimeError, match="not running"):
        bs.complete("x", n_predict=1)
