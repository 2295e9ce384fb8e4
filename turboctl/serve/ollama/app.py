"""The application: Ollama's model routes, every other path passed through to llama-server, the
API key, and the proxy serving on its own thread (:func:`run_proxy`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
from aiohttp import web

from turboctl import __version__

from .chat import _chat, _generate, _released
from .common import (
    MODELS_KEY,
    PUBLIC_PATHS,
    ROUTER_KEY,
    SESSION_KEY,
    STATE_KEY,
    TURBOCTL_HEADER,
    UPSTREAM_KEY,
    OllamaError,
    ServedModel,
    _body,
    _capabilities,
    _details,
    _digest,
    _file_size,
    _lookup,
    _mtime,
    _props,
    _router_loaded,
)
from .embed import _embed, _embeddings_legacy

#: The Ollama version /api/version reports: clients gate features on it (VS Code Copilot
#: requires >= 0.6.4); the routes and fields answered here are those of Ollama 0.6.4+.
OLLAMA_VERSION = "0.6.4"

#: Routes of Ollama's model management: turboctl serves the models of its profiles, so these
#: are refused (501) with a message saying what to do instead.
MANAGEMENT_ROUTES = ("pull", "push", "create", "copy", "delete", "blobs")

# --- the model routes -------------------------------------------------------------------------

async def _root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION})


async def _tags(request: web.Request) -> web.Response:
    models: dict[str, ServedModel] = request.app[MODELS_KEY]
    return web.json_response({"models": [
        {"name": m.name, "model": m.name, "modified_at": _mtime(m.path), "size": _file_size(m.path),
         "digest": _digest(m), "details": _details(m)} for m in models.values()]})


async def _show(request: web.Request) -> web.Response:
    body = await _body(request)
    m = _lookup(request.app, body.get("model") or body.get("name"))
    props = await _props(request.app, request, m)
    caps = _capabilities(m, props)
    info: dict[str, Any] = {"general.architecture": m.arch, f"{m.arch}.context_length": m.context}
    template = (props or {}).get("chat_template")
    return web.json_response({
        "modelfile": f"# served by turboctl (llama-server) with KV {m.kv}, context {m.context}\nFROM {m.path}\n",
        "parameters": f"num_ctx {m.context}",
        "template": template if isinstance(template, str) else "",
        "details": _details(m), "model_info": info, "capabilities": caps, "modified_at": _mtime(m.path)})


async def _ps(request: web.Request) -> web.Response:
    models: dict[str, ServedModel] = request.app[MODELS_KEY]
    if request.app[ROUTER_KEY]:
        loaded = await _router_loaded(request.app, request)
        models = {k: m for k, m in models.items() if m.name in loaded}
    expires = (datetime.now(timezone.utc) + timedelta(days=365 * 100)).isoformat().replace("+00:00", "Z")
    return web.json_response({"models": [
        {"name": m.name, "model": m.name, "size": m.size_bytes, "digest": _digest(m), "details": _details(m),
         "expires_at": expires, "size_vram": m.size_vram, "context_length": m.context} for m in models.values()]})


async def _management(request: web.Request) -> web.Response:
    route = request.match_info.get("route", "")
    raise OllamaError(501, f"'{route}' is not supported: turboctl serves the models of its profiles; "
                      "add or change a model in a profile (turboctl profiles) and restart turboctl serve")



async def _api_unknown(request: web.Request) -> web.Response:
    methods = API_ROUTES.get(request.path)
    if methods is not None:
        raise OllamaError(405, f"{request.method} {request.path}: method not allowed (use {' or '.join(methods)})")
    raise OllamaError(404, f"{request.method} {request.path}: no such route")


# --- everything else: llama-server's own routes, passed through ----------------------------

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding",
               "upgrade", "proxy-authorization", "te", "trailer"}
# not asked of llama-server: the bytes are passed on as they come, uncompressed on loopback
REQUEST_DROP = HOP_HEADERS | {"accept-encoding"}


def _unreachable(exc: Exception) -> web.Response:
    return web.json_response({"error": {"code": 502, "type": "server_error",
                                        "message": f"llama-server is not reachable: {exc}"}}, status=502)


async def _passthrough(request: web.Request) -> web.StreamResponse:
    url = f"{request.app[UPSTREAM_KEY]}{request.rel_url}"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in REQUEST_DROP}
    headers["Accept-Encoding"] = "identity"
    data = await request.read()
    for attempt in (1, 2):
        try:
            upstream = await request.app[SESSION_KEY].request(request.method, url, headers=headers,
                                                              data=data or None, allow_redirects=False,
                                                              auto_decompress=False)
            break
        except aiohttp.ServerDisconnectedError as exc:
            # closed before any answer: most often a pooled keep-alive connection llama-server
            # had just closed (seen once in a CI run); asked once more on a new connection
            if attempt == 2:
                return _unreachable(exc)
        except aiohttp.ClientError as exc:
            return _unreachable(exc)
    async with _released(upstream):
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS})
        await resp.prepare(request)
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


# --- the application --------------------------------------------------------------------------

def _authorized(request: web.Request, api_key: str) -> bool:
    if request.path in PUBLIC_PATHS or request.method == "OPTIONS":  # as llama-server (CORS preflight)
        return True
    if request.headers.get("Authorization", "") == f"Bearer {api_key}":
        return True
    return request.headers.get("X-Api-Key", "") == api_key  # Anthropic clients (/v1/messages)


def _error_middleware(api_key: str | None) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if api_key is not None and not _authorized(request, api_key):
            return web.json_response({"error": "unauthorized: send the API key as 'Authorization: Bearer KEY'"},
                                     status=401)
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except OllamaError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        except web.HTTPNotFound:
            return web.json_response({"error": f"{request.method} {request.path}: no such route"}, status=404)
        except web.HTTPMethodNotAllowed:
            return web.json_response({"error": f"{request.method} {request.path}: method not allowed"}, status=405)
    return middleware


async def _mark(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[TURBOCTL_HEADER] = __version__


#: The proxy's own /api routes and their methods (anything else under /api/ is 404 or 405).
API_ROUTES: dict[str, tuple[str, ...]] = {
    "/api/version": ("GET",), "/api/tags": ("GET",), "/api/show": ("POST",), "/api/ps": ("GET",),
    "/api/chat": ("POST",), "/api/generate": ("POST",), "/api/embed": ("POST",), "/api/embeddings": ("POST",)}


def make_app(upstream: str, models: Sequence[ServedModel], *, api_key: str | None = None,
             router: bool = False) -> web.Application:
    """The Ollama API for the llama-server at ``upstream``; every other path passed through.

    ``router``: llama-server runs in router mode (no ``-m``, ``--models-preset``) and serves
    each ServedModel under its ``name`` (the preset's section): requests name it in ``model``,
    /api/show asks /props of that model without loading it, /api/ps lists the loaded ones."""
    by_name: dict[str, ServedModel] = {}
    for m in models:
        if m.name in by_name:
            raise ValueError(f"two served models are named {m.name!r}")
        by_name[m.name] = m
    app = web.Application(middlewares=[_error_middleware(api_key)], client_max_size=64 * 1024 * 1024)
    app[MODELS_KEY] = by_name
    app[UPSTREAM_KEY] = upstream.rstrip("/")
    app[STATE_KEY] = {}
    app[ROUTER_KEY] = router

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            app[SESSION_KEY] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.on_response_prepare.append(_mark)
    app.router.add_get("/", _root)
    app.router.add_get("/api/version", _version)
    app.router.add_get("/api/tags", _tags)
    app.router.add_post("/api/show", _show)
    app.router.add_get("/api/ps", _ps)
    app.router.add_post("/api/chat", _chat)
    app.router.add_post("/api/generate", _generate)
    app.router.add_post("/api/embed", _embed)
    app.router.add_post("/api/embeddings", _embeddings_legacy)
    for route in MANAGEMENT_ROUTES:
        app.router.add_route("*", f"/api/{{route:{route}}}", _management)
        app.router.add_route("*", f"/api/{{route:{route}}}/{{rest:.*}}", _management)
    app.router.add_route("*", "/api/{tail:.*}", _api_unknown)
    app.router.add_route("*", "/{tail:.*}", _passthrough)
    return app


class ProxyHandle:
    """A proxy serving on its own thread and event loop; ``stop()`` ends it."""

    def __init__(self, thread: threading.Thread, loop: asyncio.AbstractEventLoop, stop_event: asyncio.Event,
                 host: str, port: int) -> None:
        self._thread = thread
        self._loop = loop
        self._stop_event = stop_event
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(timeout)


def run_proxy(app: web.Application, host: str, port: int) -> ProxyHandle:
    """Serve ``app`` on host:port (0: a free port) on a new thread; returns once it listens."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            sockets = [s for s in (runner.addresses or [])]
            box["port"] = int(sockets[0][1]) if sockets else port
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()
        finally:
            await runner.cleanup()

    def target() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="turboctl-ollama-proxy", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        thread.join()
        raise box["error"]
    return ProxyHandle(thread, box["loop"], box["stop"], host, box["port"])
