"""probe(): who holds a port -- nothing, turboctl's proxy, an Ollama server or something else."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.ollamafakes import free_port, served
from turboctl import __version__
from turboctl.serve.ollama import Probe, make_app, probe, run_proxy

pytestmark = pytest.mark.usefixtures("loopback")


@contextlib.contextmanager
def _serve(app: web.Application) -> Iterator[int]:
    handle = run_proxy(app, "127.0.0.1", 0)
    try:
        yield handle.port
    finally:
        handle.stop()


def _ollama_like(version: str | None) -> web.Application:
    """An Ollama server as seen from outside (``version`` None: one without /api/version)."""
    app = web.Application()

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def ver(request: web.Request) -> web.Response:
        return web.json_response({"version": version})

    app.router.add_get("/", root)
    if version is not None:
        app.router.add_get("/api/version", ver)
    return app


def _llama_server_like() -> web.Application:
    app = web.Application()

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><html>llama.cpp</html>", content_type="text/html")

    app.router.add_get("/", root)
    return app


def test_nothing_listening_is_none() -> None:
    assert probe("127.0.0.1", free_port(), timeout=0.5) is None


@pytest.mark.parametrize("api_key", [None, "s3cret"])
def test_turboctls_proxy(tmp_path: Path, api_key: str | None) -> None:
    # the upstream need not be up: the header is on every answer, a 401 included
    app = make_app(f"http://127.0.0.1:{free_port()}", [served(tmp_path)], api_key=api_key)
    with _serve(app) as port:
        assert probe("127.0.0.1", port) == Probe("turboctl", __version__)


def test_ollama_with_its_version() -> None:
    with _serve(_ollama_like("0.12.6")) as port:
        assert probe("127.0.0.1", port) == Probe("ollama", "0.12.6")


def test_ollama_known_by_its_root_only() -> None:
    with _serve(_ollama_like(None)) as port:
        assert probe("127.0.0.1", port) == Probe("ollama", None)


def test_another_http_server_is_other() -> None:
    with _serve(_llama_server_like()) as port:
        assert probe("127.0.0.1", port) == Probe("other", None)


@contextlib.contextmanager
def _tcp_server(behave: Callable[[socket.socket], None]) -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()
    conns: list[socket.socket] = []

    def loop() -> None:
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conns.append(conn)
            behave(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    conn.close()


def _silent(conn: socket.socket) -> None:
    pass  # accepts and never answers


@pytest.mark.parametrize("behave", [_garbage, _silent], ids=["not-http", "silent"])
def test_not_http_is_other_and_quick(behave: Callable[[socket.socket], None]) -> None:
    with _tcp_server(behave) as port:
        started = time.monotonic()
        assert probe("127.0.0.1", port, timeout=0.3) == Probe("other", None)
        assert time.monotonic() - started < 2.0
