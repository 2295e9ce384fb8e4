"""Every path that is not Ollama's goes to llama-server unchanged (streamed), and every answer of
the proxy carries the X-Turboctl header."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from aiohttp import web

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.ollamafakes import free_port, served, serving
from turboctl import __version__
from turboctl.serve.ollama import TURBOCTL_HEADER, ProxyHandle, make_app, run_proxy

pytestmark = pytest.mark.usefixtures("loopback")


class Echo:
    """A stand-in llama-server that answers any request with what it got (status from
    ``?status=N``), and a ``/completion`` that streams two events, the second only once the test
    has seen the first (so a proxy that buffers would hang)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.dropped = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/completion", self.stream)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        got = {"method": request.method, "path": request.path, "query": dict(request.query),
               "body": (await request.read()).decode(), "headers": dict(request.headers)}
        self.seen.append(got)
        if "drop-once" in request.query and not self.dropped:  # a connection closed with no answer
            self.dropped = True
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        status = int(request.query.get("status", "200"))
        if request.path == "/metrics":
            return web.Response(text="llamacpp:prompt_tokens_total 7\n", content_type="text/plain",
                                headers={"X-Upstream": "1"})
        return web.json_response({k: got[k] for k in ("method", "path", "query", "body")}, status=status,
                                 headers={"X-Upstream": "1"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({"method": "POST", "path": request.path, "body": (await request.read()).decode()})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"content": "Hel"}\n\n')
        for _ in range(500):
            if self.release.is_set():
                break
            await asyncio.sleep(0.01)
        await resp.write(b'data: {"content": "lo", "stop": true}\n\n')
        await resp.write_eof()
        return resp


@pytest.fixture()
def echo() -> Echo:
    return Echo()


@pytest.fixture()
def proxy(tmp_path: Path, echo: Echo) -> Iterator[ProxyHandle]:
    with serving(echo.app(), [served(tmp_path)]) as px:
        yield px


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/health", None),
    ("GET", "/v1/health", None),
    ("GET", "/props?model=smollm2&autoload=false", None),
    ("POST", "/props", {"n_ctx": 1}),
    ("GET", "/slots", None),
    ("POST", "/slots/0?action=erase", None),
    ("POST", "/tokenize", {"content": "Hello", "with_pieces": True}),
    ("POST", "/detokenize", {"tokens": [1, 2]}),
    ("POST", "/apply-template", {"messages": [{"role": "user", "content": "x"}]}),
    ("GET", "/models", None),
    ("POST", "/models/load", {"model": "smollm2"}),
    ("DELETE", "/models", {"model": "x"}),
    ("POST", "/v1/messages", {"model": "smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("POST", "/infill", {"input_prefix": "a", "input_suffix": "b"}),
    ("PUT", "/anything/at/all?x=1&y=%2F", {"a": 1}),
])
def test_llama_server_routes_pass_through_unchanged(proxy: ProxyHandle, echo: Echo, method: str, path: str,
                                                   body: dict[str, Any] | None) -> None:
    r = requests.request(method, proxy.url + path, json=body, timeout=10)
    assert r.status_code == 200 and r.headers["X-Upstream"] == "1"
    assert r.headers[TURBOCTL_HEADER] == __version__
    got = echo.seen[-1]
    assert got["method"] == method and got["path"] == path.split("?")[0]
    assert r.json()["path"] == got["path"]
    assert got["body"] == ("" if body is None else json.dumps(body))
    if "?" in path:
        assert got["query"] == dict(parse_qsl(path.split("?", 1)[1]))


def test_status_content_type_and_headers_unchanged(proxy: ProxyHandle, echo: Echo) -> None:
    r = requests.get(proxy.url + "/props?status=503", timeout=10)
    assert r.status_code == 503 and r.json()["query"] == {"status": "503"}
    m = requests.get(proxy.url + "/metrics", timeout=10)
    assert m.headers["Content-Type"].startswith("text/plain") and m.text == "llamacpp:prompt_tokens_total 7\n"
    requests.post(proxy.url + "/tokenize", json={"content": "x"}, headers={"Accept-Encoding": "gzip",
                  "X-Custom": "kept", "Authorization": "Bearer k"}, timeout=10)
    sent = {k.lower(): v for k, v in echo.seen[-1]["headers"].items()}
    assert sent["x-custom"] == "kept" and sent["authorization"] == "Bearer k"
    assert sent["accept-encoding"] == "identity"  # bytes passed on as they come, never compressed


def test_streams_are_passed_on_as_they_come(proxy: ProxyHandle, echo: Echo) -> None:
    with requests.post(proxy.url + "/completion", json={"prompt": "x", "stream": True}, stream=True, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers[TURBOCTL_HEADER] == __version__
        lines = r.iter_lines()
        assert next(lines) == b'data: {"content": "Hel"}'  # before the upstream sent the rest
        echo.release.set()
        rest = [line for line in lines if line]
    assert rest == [b'data: {"content": "lo", "stop": true}']


def test_root_head_and_own_answers_carry_the_header(proxy: ProxyHandle, echo: Echo) -> None:
    head = requests.head(proxy.url + "/", timeout=10)
    assert head.status_code == 200 and head.content == b""
    get = requests.get(proxy.url + "/", timeout=10)
    assert (get.status_code, get.text) == (200, "Ollama is running")
    for r in (head, get, requests.get(proxy.url + "/api/version", timeout=10),
              requests.post(proxy.url + "/api/show", json={"model": "nope"}, timeout=10),
              requests.post(proxy.url + "/api/nothing", json={}, timeout=10)):
        assert r.headers[TURBOCTL_HEADER] == __version__, r.url
    assert echo.seen == []  # none of these reached llama-server


def test_api_paths_stay_the_proxys(proxy: ProxyHandle, echo: Echo) -> None:
    r = requests.get(proxy.url + "/api/nothing/here", timeout=10)
    assert (r.status_code, r.json()) == (404, {"error": "GET /api/nothing/here: no such route"})
    r = requests.get(proxy.url + "/api/chat", timeout=10)
    assert (r.status_code, r.json()) == (405, {"error": "GET /api/chat: method not allowed (use POST)"})
    r = requests.post(proxy.url + "/api/tags", timeout=10)
    assert (r.status_code, r.json()) == (405, {"error": "POST /api/tags: method not allowed (use GET)"})
    assert echo.seen == []


def test_a_connection_closed_before_the_answer_is_asked_again(proxy: ProxyHandle, echo: Echo) -> None:
    r = requests.post(proxy.url + "/v1/messages?drop-once=1", json={"a": 1}, timeout=10)
    assert r.status_code == 200 and r.json()["body"] == '{"a": 1}'
    assert echo.dropped and len(echo.seen) == 2


def test_upstream_gone_is_502_in_openai_shape(tmp_path: Path) -> None:
    px = run_proxy(make_app(f"http://127.0.0.1:{free_port()}", [served(tmp_path)]), "127.0.0.1", 0)
    try:
        r = requests.get(px.url + "/health", timeout=10)
        assert r.status_code == 502 and r.headers[TURBOCTL_HEADER] == __version__
        assert "llama-server is not reachable" in r.json()["error"]["message"]
    finally:
        px.stop()


def test_api_key_public_paths_and_anthropic_header(tmp_path: Path, echo: Echo) -> None:
    with serving(echo.app(), [served(tmp_path)], api_key="s3cret") as px:
        for path in ("/health", "/v1/health"):  # public, as in llama-server
            assert requests.get(px.url + path, timeout=10).status_code == 200, path
        denied = requests.get(px.url + "/slots", timeout=10)
        assert denied.status_code == 401 and denied.headers[TURBOCTL_HEADER] == __version__
        assert requests.get(px.url + "/slots", headers={"Authorization": "Bearer s3cret"}, timeout=10).ok
        assert requests.post(px.url + "/v1/messages", json={}, headers={"X-Api-Key": "s3cret"}, timeout=10).ok
        assert requests.post(px.url + "/v1/messages", json={}, headers={"X-Api-Key": "nope"},
                             timeout=10).status_code == 401
        assert requests.options(px.url + "/v1/chat/completions", timeout=10).ok  # CORS preflight carries no key
