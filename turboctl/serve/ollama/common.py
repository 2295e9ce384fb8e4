"""The served models as Ollama clients see them, the errors answered in Ollama's shape, and what
every route shares: the application's keys, the request body, the upstream's headers and errors,
llama-server's /props and the router's model list."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

#: The header on every answer of the proxy (its value: turboctl's version): a port that
#: answers with it is served by turboctl.
TURBOCTL_HEADER = "X-Turboctl"

#: Paths llama-server answers without an API key; the proxy does the same (and for ``/``).
PUBLIC_PATHS = frozenset({"/", "/health", "/v1/health"})

@dataclass(frozen=True)
class ServedModel:
    """One model the endpoint serves, as Ollama clients see it.

    ``name`` is the alias clients send (``name:latest`` is accepted too); ``size_bytes`` the
    memory it takes when loaded (weights + KV + buffers: /api/ps ``size``); ``size_vram`` the
    part of it in GPU memory; ``embeddings`` whether its llama-server runs with
    ``--embeddings`` (then /api/embed answers)."""

    name: str
    path: Path
    arch: str
    context: int
    kv: str
    size_bytes: int
    parameter_size: str = ""
    quantization: str = ""
    capabilities: tuple[str, ...] = ("completion",)
    size_vram: int = 0
    embeddings: bool = False


#: The GGUF metadata keys a ServedModel is described by (serve keeps these, not the whole metadata).
DETAIL_KEYS = ("general.architecture", "general.size_label", "general.file_type")


def served_model(name: str, path: Path, *, context: int, kv: str, size_bytes: int, size_vram: int = 0,
                 embeddings: bool = False, meta: Mapping[str, Any] | None = None) -> ServedModel:
    """A ServedModel with the architecture, parameter size and quantization from the GGUF's
    metadata (``meta``: already read, at least :data:`DETAIL_KEYS`; else read from ``path``)."""
    if meta is None:
        from turboctl.models.gguf import read_metadata

        meta = read_metadata(path)
    arch = str(meta.get("general.architecture", ""))
    size_label = meta.get("general.size_label")
    quant = ""
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int):
        import gguf

        try:
            quant = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = ""
    return ServedModel(name=name, path=path, arch=arch, context=context, kv=kv, size_bytes=size_bytes,
                       parameter_size=size_label if isinstance(size_label, str) else "", quantization=quant,
                       size_vram=size_vram, embeddings=embeddings)


class OllamaError(Exception):
    """An error answered with Ollama's body ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _mtime(path: Path) -> str:
    try:
        ts = path.stat().st_mtime
    except OSError:
        ts = 0.0
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _digest(m: ServedModel) -> str:
    # not the file's sha256 (hashing GBs per /api/tags is not cheap): stable for one file version
    try:
        st = m.path.stat()
        key = f"{m.path.name}\0{st.st_size}\0{st.st_mtime_ns}\0{m.kv}\0{m.context}"
    except OSError:
        key = f"{m.path.name}\0{m.kv}\0{m.context}"
    return hashlib.sha256(key.encode()).hexdigest()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _details(m: ServedModel) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": m.arch, "families": [m.arch] if m.arch else [],
            "parameter_size": m.parameter_size, "quantization_level": m.quantization}


MODELS_KEY = web.AppKey("models", dict)
UPSTREAM_KEY = web.AppKey("upstream", str)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
STATE_KEY = web.AppKey("state", dict)
ROUTER_KEY = web.AppKey("router", bool)


def _lookup(app: web.Application, name: object) -> ServedModel:
    models: dict[str, ServedModel] = app[MODELS_KEY]
    if not isinstance(name, str) or not name:
        raise OllamaError(400, "model is required")
    found = models.get(name) or models.get(name.removesuffix(":latest"))
    if found is None:
        raise OllamaError(404, f"model '{name}' not found")
    return found


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise OllamaError(400, f"invalid JSON in the request body: {exc}") from exc
    if not isinstance(doc, dict):
        raise OllamaError(400, "the request body must be a JSON object")
    return doc


def _upstream_headers(request: web.Request) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    auth = request.headers.get("Authorization")
    if auth:
        headers["Authorization"] = auth
    return headers


async def _upstream_error(resp: aiohttp.ClientResponse) -> OllamaError:
    raw = await resp.read()
    message = raw.decode(errors="replace").strip() or resp.reason or "error"
    try:
        doc = json.loads(raw)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
        elif isinstance(err, str):
            message = err
    except ValueError:
        pass
    return OllamaError(resp.status, f"llama-server: {message}")


async def _props(app: web.Application, request: web.Request, m: ServedModel) -> dict[str, Any] | None:
    """llama-server's /props for model ``m`` (None when it does not answer 200), cached once it
    answered. In router mode ``GET /props?model=NAME&autoload=false``: the router answers for a
    loaded model only and never loads one for this."""
    cache: dict[str, dict[str, Any]] = app[STATE_KEY].setdefault("props", {})
    if m.name in cache:
        return cache[m.name]
    url = f"{app[UPSTREAM_KEY]}/props"
    params = {"model": m.name, "autoload": "false"} if app[ROUTER_KEY] else None
    try:
        async with app[SESSION_KEY].get(url, params=params, headers=_upstream_headers(request),
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status != 200:
                return None
            doc = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    cache[m.name] = doc
    return doc


def _capabilities(m: ServedModel, props: dict[str, Any] | None) -> list[str]:
    """Ollama's capabilities of ``m``: its own, where llama-server's /props answered with
    "tools" as the chat template's ``supports_tools`` says, and "embedding" where it serves
    embeddings."""
    caps = list(m.capabilities)
    if props is not None:
        caps = [c for c in caps if c != "tools"]
        tmpl = props.get("chat_template_caps")
        if "completion" in caps and isinstance(tmpl, dict) and tmpl.get("supports_tools"):
            caps.append("tools")
    if m.embeddings and "embedding" not in caps:
        caps.append("embedding")
    return caps


async def _router_status(app: web.Application, request: web.Request) -> dict[str, str]:
    """Each model's status in the router (``GET /models``: ``status.value``), under its id and
    its aliases."""
    try:
        async with app[SESSION_KEY].get(f"{app[UPSTREAM_KEY]}/models", headers=_upstream_headers(request),
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status != 200:
                raise await _upstream_error(resp)
            doc = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise OllamaError(502, f"llama-server at {app[UPSTREAM_KEY]} did not list its models: {exc}") from exc
    out: dict[str, str] = {}
    entries = doc.get("data") if isinstance(doc, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        status = entry.get("status")
        value = status.get("value") if isinstance(status, dict) else None
        if isinstance(value, str):
            for n in [entry.get("id"), *(entry.get("aliases") or [])]:
                if isinstance(n, str):
                    out[n] = value
    return out


async def _router_loaded(app: web.Application, request: web.Request) -> set[str]:
    """The names of the models the router has loaded."""
    return {n for n, value in (await _router_status(app, request)).items() if value == "loaded"}


async def _post_json(request: web.Request, route: str, payload: dict[str, Any]) -> tuple[int, Any, str]:
    """POST to llama-server: (status, JSON body or None, the error message when not 200)."""
    try:
        async with request.app[SESSION_KEY].post(f"{request.app[UPSTREAM_KEY]}{route}", json=payload,
                                                 headers=_upstream_headers(request)) as resp:
            if resp.status != 200:
                return resp.status, None, (await _upstream_error(resp)).message
            return 200, await resp.json(content_type=None), ""
    except aiohttp.ClientError as exc:
        raise OllamaError(502, f"llama-server at {request.app[UPSTREAM_KEY]} is not reachable: {exc}") from exc
