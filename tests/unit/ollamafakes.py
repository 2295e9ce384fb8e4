"""Stand-ins for llama-server that the Ollama proxy's unit tests talk to, and helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ollama
import pytest
from aiohttp import web

from turboctl.serve.ollama import ProxyHandle, ServedModel, make_app, run_proxy

DATA = Path(__file__).resolve().parents[1] / "data" / "ollama"


class Upstream:
    """A stand-in llama-server: the recorded answers, and every request body it got."""

    def __init__(self, props: dict[str, Any] | None = None, slow_stream: bool = False) -> None:
        self.props = props if props is not None else json.loads((DATA / "props.json").read_text())
        self.slow_stream = slow_stream
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.cancelled = asyncio.Event()
        self.stream_cancelled = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/props", self.get_props)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.completion)
        app.router.add_post("/v1/completions", self.completion)
        return app

    async def get_props(self, request: web.Request) -> web.Response:
        return web.json_response(self.props)

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=(DATA / "models.json").read_bytes(), content_type="application/json")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        if not isinstance(body.get("messages", []), list):
            return web.Response(status=400, body=(DATA / "error-400.json").read_bytes(),
                                content_type="application/json")
        name = "chat" if request.path.endswith("chat/completions") else "completions"
        if not body.get("stream"):
            return web.Response(body=(DATA / f"{name}.json").read_bytes(), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for event in (DATA / f"{name}.sse").read_bytes().split(b"\n\n"):
                if event.strip():
                    await resp.write(event + b"\n\n")
                    if self.slow_stream:
                        await asyncio.sleep(0.5)
        except (asyncio.CancelledError, ConnectionResetError):
            self.stream_cancelled = True
            raise
        await resp.write_eof()
        return resp


def served(tmp_path: Path, **kw: Any) -> ServedModel:
    f = tmp_path / "SmolLM2.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 60)
    args: dict[str, Any] = {"name": "smollm2", "path": f, "arch": "llama", "context": 4096, "kv": "turbo4",
                            "size_bytes": 150_000_000, "parameter_size": "135M", "quantization": "Q4_1"}
    args.update(kw)
    return ServedModel(**args)


def client(px: ProxyHandle) -> ollama.Client:
    return ollama.Client(host=px.url, timeout=30)


@contextlib.contextmanager
def serving(upstream: web.Application, models: Sequence[ServedModel], **kw: Any) -> Iterator[ProxyHandle]:
    """The proxy (make_app(..., **kw)) in front of a stand-in upstream application."""
    up = run_proxy(upstream, "127.0.0.1", 0)
    try:
        px = run_proxy(make_app(up.url, models, **kw), "127.0.0.1", 0)
        try:
            yield px
        finally:
            px.stop()
    finally:
        up.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

@pytest.fixture()
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture()
def proxy(tmp_path: Path, upstream: Upstream) -> Iterator[ProxyHandle]:
    with serving(upstream.app(), [served(tmp_path)]) as px:
        yield px
