"""The Ollama proxy against a stand-in llama-server that replays answers recorded from the
real one (tests/data/ollama/, see the README there): routes, shapes, errors, option mapping."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import requests
from aiohttp import web

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.ollamafakes import DATA, Upstream, client, free_port, served
from turboctl.serve.ollama import (
    JSON_OBJECT_GRAMMAR,
    OLLAMA_VERSION,
    ProxyHandle,
    make_app,
    run_proxy,
)

pytestmark = pytest.mark.usefixtures("loopback")




def test_root_and_version(proxy: ProxyHandle) -> None:
    r = requests.get(proxy.url + "/", timeout=10)
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert requests.head(proxy.url + "/", timeout=10).status_code == 200
    v = requests.get(proxy.url + "/api/version", timeout=10).json()
    assert v == {"version": OLLAMA_VERSION}
    assert tuple(int(x) for x in v["version"].split(".")) >= (0, 6, 4)


def test_tags_show_ps_through_the_official_client(proxy: ProxyHandle) -> None:
    c = client(proxy)
    models = c.list().models
    assert [m.model for m in models] == ["smollm2"]
    assert models[0].size == 64 and models[0].details is not None
    assert models[0].details.family == "llama" and models[0].details.quantization_level == "Q4_1"
    show = c.show("smollm2")
    assert show.modelinfo is not None and show.modelinfo["llama.context_length"] == 4096  # the SERVED context
    assert show.capabilities == ["completion"]  # SmolLM2's template: supports_tools false in /props
    assert show.template and "im_start" in show.template
    assert c.show("smollm2:latest").capabilities == ["completion"]
    ps = c.ps().models
    assert len(ps) == 1 and ps[0].context_length == 4096 and ps[0].size == 150_000_000 and ps[0].size_vram == 0


def test_tools_capability_from_props(tmp_path: Path) -> None:
    props = json.loads((DATA / "props.json").read_text())
    props["chat_template_caps"]["supports_tools"] = True  # as a tool-capable template reports it
    up = run_proxy(Upstream(props).app(), "127.0.0.1", 0)
    px = run_proxy(make_app(up.url, [served(tmp_path)]), "127.0.0.1", 0)
    try:
        assert client(px).show("smollm2").capabilities == ["completion", "tools"]
    finally:
        px.stop()
        up.stop()


def test_unknown_model_is_ollamas_404(proxy: ProxyHandle) -> None:
    for route, body in [("/api/show", {"model": "nope"}), ("/api/chat", {"model": "nope", "messages": []}),
                        ("/api/generate", {"model": "nope", "prompt": "x"})]:
        r = requests.post(proxy.url + route, json=body, timeout=10)
        assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"}), route
    with pytest.raises(ollama.ResponseError) as exc:
        client(proxy).chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404 and exc.value.error == "model 'nope' not found"


def test_chat_not_streamed_has_llama_server_timings(proxy: ProxyHandle, upstream: Upstream) -> None:
    rec = json.loads((DATA / "chat.json").read_text())
    r = client(proxy).chat(model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
                           stream=False, options={"temperature": 0, "num_predict": 16})
    assert r.message.content == rec["choices"][0]["message"]["content"]
    assert r.done and r.done_reason == "stop"
    t = rec["timings"]
    assert r.prompt_eval_count == t["prompt_n"] + t["cache_n"]
    assert r.prompt_eval_duration == int(t["prompt_ms"] * 1e6)
    assert r.eval_count == t["predicted_n"] and r.eval_duration == int(t["predicted_ms"] * 1e6)
    assert r.load_duration == 0 and r.total_duration is not None and r.total_duration > 0
    path, body = upstream.requests[-1]
    assert path == "/v1/chat/completions" and body["stream"] is False
    assert body["temperature"] == 0 and body["max_tokens"] == 16 and body["model"] == "smollm2"


def test_chat_streamed_ndjson(proxy: ProxyHandle) -> None:
    sse = (DATA / "chat.sse").read_text()
    expect = "".join(json.loads(line[5:])["choices"][0]["delta"].get("content") or ""
                     for line in sse.splitlines() if line.startswith("data: {"))
    r = requests.post(proxy.url + "/api/chat", json={"model": "smollm2", "messages": [{"role": "user",
                      "content": "What is the capital of France?"}]}, stream=True, timeout=30)
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    parts = [json.loads(line) for line in r.iter_lines() if line]
    assert all(not p["done"] for p in parts[:-1]) and parts[-1]["done"] is True
    assert "".join(p["message"]["content"] for p in parts) == expect
    events = [json.loads(line[5:]) for line in sse.splitlines() if line.startswith("data: {")]
    assert parts[-1]["done_reason"] == events[-1]["choices"][0]["finish_reason"] == "stop"
    assert parts[-1]["eval_count"] == events[-1]["timings"]["predicted_n"]
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(parts[-1][key], int), key


def test_generate_chat_templated_and_raw(proxy: ProxyHandle, upstream: Upstream) -> None:
    c = client(proxy)
    r = c.generate(model="smollm2", prompt="Capital of France?", system="Be brief.", stream=False)
    assert r.response == json.loads((DATA / "chat.json").read_text())["choices"][0]["message"]["content"]
    path, body = upstream.requests[-1]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Capital of France?"}]
    raw = "".join(p.response or "" for p in c.generate(model="smollm2", prompt="1, 2, 3, 4,", raw=True, stream=True))
    rec = (DATA / "completions.sse").read_text()
    assert raw == "".join(json.loads(line[5:])["choices"][0]["text"]
                          for line in rec.splitlines() if line.startswith("data: {"))
    assert upstream.requests[-1][0] == "/v1/completions" and upstream.requests[-1][1]["prompt"] == "1, 2, 3, 4,"
    empty = c.generate(model="smollm2", prompt="")
    assert empty.done and empty.done_reason == "load"


def test_options_and_formats_are_mapped(proxy: ProxyHandle, upstream: Upstream) -> None:
    c = client(proxy)
    opts = {"temperature": 0.3, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 7,
            "stop": ["\n"], "num_predict": 9, "num_ctx": 4096, "mirostat": 0}
    c.chat(model="smollm2", messages=[{"role": "user", "content": "x"}], options=opts, format="json",
           keep_alive="5m", stream=False)
    body = upstream.requests[-1][1]
    for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "mirostat"):
        assert body[k] == opts[k], k
    assert body["max_tokens"] == 9 and "num_ctx" not in body and "keep_alive" not in body
    assert body["grammar"] == JSON_OBJECT_GRAMMAR
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    c.generate(model="smollm2", prompt="x", format=schema, options={"num_predict": -1}, stream=False)
    body = upstream.requests[-1][1]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}
    assert "max_tokens" not in body and "grammar" not in body
    c.generate(model="smollm2", prompt="x", format={"type": "object"}, stream=False)
    assert upstream.requests[-1][1]["grammar"] == JSON_OBJECT_GRAMMAR  # llama-server ignores a bare object schema


def test_num_ctx_above_the_served_context_is_refused(proxy: ProxyHandle, upstream: Upstream) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        client(proxy).chat(model="smollm2", messages=[{"role": "user", "content": "x"}], options={"num_ctx": 8192})
    assert exc.value.status_code == 400
    assert "num_ctx 8192 is larger than the context model 'smollm2' is served with (4096 tokens)" in exc.value.error
    assert upstream.requests == []  # never sent on, never truncated


@pytest.mark.parametrize(("route", "body", "status", "message"), [
    ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, 400,
     "images are not supported: the served model is text-only"),
    ("/api/generate", {"model": "smollm2", "prompt": "x", "images": ["aGk="]}, 400, "images are not supported"),
    ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "format": "yaml"}, 400,
     'format must be "json" or a JSON schema object'),
    ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": "x"}},
     400, 'option "num_ctx" must be of type integer'),
    ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "options": [1]},
     400, "options must be a JSON object"),
    ("/api/chat", {"model": "smollm2", "messages": "hello"}, 400, "messages must be a list"),
    ("/api/show", {}, 400, "model is required"),
    ("/api/pull", {"model": "llama3"}, 501, "'pull' is not supported: turboctl serves the models of its profiles"),
    ("/api/delete", {"model": "smollm2"}, 501, "'delete' is not supported"),
    ("/api/create", {"model": "x"}, 501, "'create' is not supported"),
    ("/api/copy", {"source": "smollm2", "destination": "y"}, 501, "'copy' is not supported"),
    ("/api/push", {"model": "x"}, 501, "'push' is not supported"),
    ("/api/embed", {"model": "smollm2", "input": "x"}, 501, "model 'smollm2' is not served with embeddings"),
    ("/api/embeddings", {"model": "smollm2", "prompt": "x"}, 501, 'server.args: ["--embeddings"]'),
    ("/api/nothing", {}, 404, "POST /api/nothing: no such route"),
])
def test_errors_have_ollamas_body(proxy: ProxyHandle, route: str, body: dict[str, Any], status: int,
                                  message: str) -> None:
    r = requests.post(proxy.url + route, json=body, timeout=10)
    assert r.status_code == status
    assert set(r.json()) == {"error"} and message in r.json()["error"]


def test_bad_json_body(proxy: ProxyHandle) -> None:
    r = requests.post(proxy.url + "/api/chat", data=b"{nope", timeout=10)
    assert r.status_code == 400 and r.json()["error"].startswith("invalid JSON in the request body")


def test_upstream_error_is_passed_as_ollama_error(tmp_path: Path) -> None:
    px = run_proxy(make_app(f"http://127.0.0.1:{free_port()}", [served(tmp_path)]), "127.0.0.1", 0)
    try:
        r = requests.post(px.url + "/api/chat", json={"model": "smollm2", "messages": [{"role": "user",
                          "content": "x"}]}, timeout=10)
        assert r.status_code == 502 and "is not reachable" in r.json()["error"]
    finally:
        px.stop()


def test_v1_passthrough_with_the_openai_client(proxy: ProxyHandle) -> None:
    o = openai.OpenAI(base_url=proxy.url + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in o.models.list().data] == ["smollm2"]
    rec = json.loads((DATA / "chat.json").read_text())
    r = o.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == rec["choices"][0]["message"]["content"]
    text = "".join(ch.choices[0].delta.content or "" for ch in o.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "x"}], stream=True) if ch.choices)
    assert text == rec["choices"][0]["message"]["content"]
    r400 = requests.post(proxy.url + "/v1/chat/completions", json={"messages": "not a list"}, timeout=10)
    assert r400.status_code == 400 and r400.content == (DATA / "error-400.json").read_bytes()  # unchanged


def test_api_key(tmp_path: Path, upstream: Upstream) -> None:
    up = run_proxy(upstream.app(), "127.0.0.1", 0)
    px = run_proxy(make_app(up.url, [served(tmp_path)], api_key="s3cret"), "127.0.0.1", 0)
    try:
        assert requests.get(px.url + "/", timeout=10).status_code == 200
        r = requests.get(px.url + "/api/tags", timeout=10)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
        ok = requests.get(px.url + "/api/tags", headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert ok.status_code == 200
    finally:
        px.stop()
        up.stop()


def test_client_gone_mid_stream_cancels_upstream(tmp_path: Path) -> None:
    up_state = Upstream(slow_stream=True)
    up = run_proxy(up_state.app(), "127.0.0.1", 0)
    px = run_proxy(make_app(up.url, [served(tmp_path)]), "127.0.0.1", 0)
    try:
        r = requests.post(px.url + "/api/chat", json={"model": "smollm2", "messages": [{"role": "user",
                          "content": "x"}]}, stream=True, timeout=30)
        first = next(r.iter_lines())
        assert json.loads(first)["done"] is False
        r.close()  # the client goes away mid-stream
        for _ in range(50):
            if up_state.stream_cancelled:
                break
            time.sleep(0.1)
        assert up_state.stream_cancelled, "the upstream request was not cancelled"
    finally:
        px.stop()
        up.stop()


def test_two_models_named_alike_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two served models are named 'smollm2'"):
        make_app("http://127.0.0.1:1", [served(tmp_path), served(tmp_path)])


def test_run_proxy_port_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            run_proxy(make_app("http://127.0.0.1:1", [served(tmp_path)]), "127.0.0.1", s.getsockname()[1])


class ToolUpstream:
    """A stand-in that replays llama-server's tool-call answers recorded with SmolLM2 and
    tests/data/ollama/chatml-tools.jinja (chat-tools.json, chat-tools.sse: the arguments arrive
    in pieces when streamed)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if not body.get("stream"):
            return web.Response(body=(DATA / "chat-tools.json").read_bytes(), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in (DATA / "chat-tools.sse").read_bytes().split(b"\n\n"):
            if event.strip():
                await resp.write(event + b"\n\n")
        await resp.write_eof()
        return resp


def test_tool_calls_in_ollamas_shape(tmp_path: Path) -> None:
    state = ToolUpstream()
    up = run_proxy(state.app(), "127.0.0.1", 0)
    px = run_proxy(make_app(up.url, [served(tmp_path)]), "127.0.0.1", 0)
    tool = {"type": "function", "function": {"name": "get_weather", "description": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    try:
        c = client(px)
        q = [{"role": "user", "content": "Weather in Paris?"}]
        r = c.chat(model="smollm2", messages=q, tools=[tool], stream=False)
        assert r.message.tool_calls is not None and len(r.message.tool_calls) == 1
        assert r.message.tool_calls[0].function.name == "get_weather"
        assert r.message.tool_calls[0].function.arguments == {"city": "Paris"}
        assert r.done_reason == "stop" and state.bodies[-1]["tools"][0]["function"]["name"] == "get_weather"
        parts = list(c.chat(model="smollm2", messages=q, tools=[tool], stream=True))
        calls = [tc for p in parts for tc in (p.message.tool_calls or [])]
        assert [(tc.function.name, tc.function.arguments) for tc in calls] == [("get_weather", {"city": "Paris"})]
        assert parts[-1].done and parts[-1].eval_count == 32  # the recorded predicted_n
        # the call and its result go back in OpenAI's shape, the result tied to the call
        c.chat(model="smollm2", stream=False, messages=[*q, {"role": "assistant", "content": "",
               "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
        sent = state.bodies[-1]["messages"]
        assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
        assert sent[2] == {"role": "tool", "content": "sunny", "name": "get_weather",
                           "tool_call_id": sent[1]["tool_calls"][0]["id"]}
    finally:
        px.stop()
        up.stop()
