"""Ollama's HTTP API in front of llama-server: a small async proxy (aiohttp server + client).

llama-server b11312 speaks the OpenAI API and its own; upstream removed its few ``/api`` routes
and will not carry Ollama's. This proxy answers Ollama clients as they are and translates to
llama-server's OpenAI routes (``/v1/chat/completions``, ``/v1/completions``): the request
options to llama-server's sampling, the response to Ollama's NDJSON stream (or one object)
with durations from llama-server's own ``timings``. Every other path (``/v1/*``, ``/health``,
``/props``, ``/slots``, ``/metrics``, ``/tokenize``, ``/completion``, ``/v1/messages``, ...) goes
to llama-server unchanged, streamed, so the endpoint is a superset of llama-server's; only
``GET``/``HEAD /`` ("Ollama is running") and ``/api/*`` are the proxy's own. Every answer
carries the header ``X-Turboctl: <turboctl version>`` (see :func:`probe`).

``make_app(upstream, models)`` builds the application; ``run_proxy(app, host, port)`` serves it
on a thread with its own event loop and returns a handle with ``.stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

from turboctl import __version__

#: The header on every answer of the proxy (its value: turboctl's version): a port that
#: answers with it is served by turboctl.
TURBOCTL_HEADER = "X-Turboctl"

#: Paths llama-server answers without an API key; the proxy does the same (and for ``/``).
PUBLIC_PATHS = frozenset({"/", "/health", "/v1/health"})

#: The Ollama version /api/version reports: clients gate features on it (VS Code Copilot
#: requires >= 0.6.4); the routes and fields answered here are those of Ollama 0.6.4+.
OLLAMA_VERSION = "0.6.4"

#: Routes of Ollama's model management: turboctl serves the models of its profiles, so these
#: are refused (501) with a message saying what to do instead.
MANAGEMENT_ROUTES = ("pull", "push", "create", "copy", "delete", "blobs")

#: Every option Ollama or its official clients know (``options`` of /api/chat and /api/generate),
#: and what the proxy does with it: the llama-server field it is sent as (b11312's
#: /v1/chat/completions and /v1/completions take them all), or why it is not sent. An option
#: that is not here is ignored and logged once per name, as Ollama does ("invalid option provided").
OPTIONS: dict[str, str] = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "num_keep": "n_keep",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "num_ctx": "checked: more than the served context is refused (400); not sent, the context is the profile's",
    "num_batch": "ignored: set when the server starts (the profile's server.args -b/-ub)",
    "num_gpu": "ignored: GPU offload is set when the server starts (the profile's fit)",
    "main_gpu": "ignored: set when the server starts (the profile's server.args)",
    "num_thread": "ignored: set when the server starts (the profile's server.args -t)",
    "use_mmap": "ignored: set when the server starts (the profile's server.args)",
    "use_mlock": "ignored: set when the server starts (the profile's server.args)",
    "numa": "ignored: set when the server starts (the profile's server.args)",
    "low_vram": "ignored: set when the server starts (the profile's fit)",
    "f16_kv": "ignored: the K/V cache types are the profile's",
    "vocab_only": "ignored: a load-time option of old Ollama versions",
    "logits_all": "ignored: a load-time option of old Ollama versions",
    "embedding_only": "ignored: a load-time option of old Ollama versions",
    "draft_num_predict": "ignored: no draft model is served",
    "tfs_z": "ignored: tail-free sampling was removed from llama.cpp (and from Ollama)",
    "penalize_newline": "ignored: removed from llama.cpp (and from Ollama)",
}

#: The type of each option that is sent or checked (Ollama's: an integer may come as a float,
#: it is truncated; a float may come as an integer).
OPTION_TYPES: dict[str, str] = {
    "temperature": "float", "top_k": "integer", "top_p": "float", "min_p": "float", "typical_p": "float",
    "repeat_penalty": "float", "repeat_last_n": "integer", "presence_penalty": "float",
    "frequency_penalty": "float", "seed": "integer", "stop": "array", "num_predict": "integer",
    "num_keep": "integer", "mirostat": "integer", "mirostat_tau": "float", "mirostat_eta": "float",
    "num_ctx": "integer"}

log = logging.getLogger("turboctl.serve.ollama")


def option_table_markdown() -> str:
    """OPTIONS as a Markdown table (for the README)."""
    rows = ["| Ollama option | llama-server |", "|---|---|"]
    for name, how in OPTIONS.items():
        rows.append(f"| `{name}` | {how if ':' in how else f'`{how}`'} |")
    return "\n".join(rows) + "\n"

# A GBNF grammar for one JSON object (format: "json"); llama-server b11312 does not constrain a
# schema without properties (``{"type": "object"}``) on its chat route, a grammar it does.
JSON_OBJECT_GRAMMAR = r"""
root   ::= ws object ws
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( member ( ws "," ws member )* )? ws "}"
member ::= string ws ":" ws value
array  ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
string ::= "\"" ( [^"\\\x00-\x1f] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws     ::= [ \t\n]{0,20}
"""


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


# --- chat and generate ------------------------------------------------------------------------

def _option_value(name: str, value: object) -> Any:
    kind = OPTION_TYPES[name]
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OllamaError(400, f'option "{name}" must be of type integer')
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OllamaError(400, f'option "{name}" must be of type float32')
        return float(value)
    if not isinstance(value, list):
        raise OllamaError(400, f'option "{name}" must be of type array')
    if not all(isinstance(x, str) for x in value):
        raise OllamaError(400, f'option "{name}" must be of an array of strings')
    return value


def _options(body: dict[str, Any], m: ServedModel, warned: set[str]) -> dict[str, Any]:
    """The request's options and format as llama-server fields (OPTIONS says which)."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise OllamaError(400, "options must be a JSON object")
    out: dict[str, Any] = {}
    for name, raw in opts.items():
        how = OPTIONS.get(name)
        if how is None:
            if name not in warned:
                warned.add(name)
                log.warning("option %r is not an Ollama option: ignored (as Ollama does; logged once)", name)
            continue
        if raw is None or how.startswith("ignored:"):
            continue
        value = _option_value(name, raw)
        if name == "num_ctx":
            if value > m.context:
                raise OllamaError(400, f"num_ctx {value} is larger than the context model '{m.name}' is served "
                                  f"with ({m.context} tokens): the context is set by the profile (context:); "
                                  "raise it there and restart turboctl serve, or ask for at most that")
        elif name == "num_predict":
            if value >= 0:  # -1: no limit, -2: until the context is full -- llama-server's default
                out[how] = value
        else:
            out[how] = value
    fmt = body.get("format")
    if fmt == "json":
        out["grammar"] = JSON_OBJECT_GRAMMAR
    elif isinstance(fmt, dict):
        if fmt.get("type") == "object" and not fmt.get("properties"):
            out["grammar"] = JSON_OBJECT_GRAMMAR
        else:
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise OllamaError(400, f"format must be \"json\" or a JSON schema object, not {json.dumps(fmt)[:80]}")
    return out


def _no_images(obj: dict[str, Any]) -> None:
    if obj.get("images"):
        raise OllamaError(400, "images are not supported: the served model is text-only (no multimodal "
                          "projector is loaded)")


def _openai_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise OllamaError(400, "messages must be a list")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise OllamaError(400, f"messages[{i}] must be an object with a role")
        _no_images(msg)
        o: dict[str, Any] = {"role": msg["role"], "content": msg.get("content") or ""}
        calls = msg.get("tool_calls")
        if isinstance(calls, list) and calls:
            o["tool_calls"] = []
            for j, call in enumerate(calls):
                fn = call.get("function", {}) if isinstance(call, dict) else {}
                args = fn.get("arguments", {})
                o["tool_calls"].append({"id": f"call_{i}_{j}", "type": "function",
                                        "function": {"name": fn.get("name", ""),
                                                     "arguments": args if isinstance(args, str) else json.dumps(args)}})
        if msg["role"] == "tool":
            if msg.get("tool_name"):
                o["name"] = msg["tool_name"]
            o["tool_call_id"] = msg.get("tool_call_id") or _tool_call_id(out, msg.get("tool_name"))
        out.append(o)
    return out


def _tool_call_id(previous: list[dict[str, Any]], name: object) -> str:
    for o in reversed(previous):
        for call in o.get("tool_calls", []):
            if name is None or call["function"]["name"] == name:
                return str(call["id"])
    return "call_0"


def _ollama_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        fn = call.get("function") or {}
        raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            args = {"_raw": raw}
        out.append({"function": {"name": fn.get("name", ""), "arguments": args}})
    return out


def _final_fields(timings: dict[str, Any], usage: dict[str, Any], finish: str | None, started: float) -> dict[str, Any]:
    def ns(ms: object) -> int:
        return int(float(ms) * 1e6) if isinstance(ms, (int, float)) else 0

    prompt_n = timings.get("prompt_n")
    cache_n = timings.get("cache_n", 0)
    if isinstance(prompt_n, int):
        prompt_count = prompt_n + (cache_n if isinstance(cache_n, int) else 0)
    else:
        prompt_count = int(usage.get("prompt_tokens", 0) or 0)
    eval_count = timings.get("predicted_n", usage.get("completion_tokens", 0))
    return {"done": True, "done_reason": "length" if finish == "length" else "stop",
            "total_duration": time.monotonic_ns() - int(started * 1e9), "load_duration": 0,
            "prompt_eval_count": prompt_count, "prompt_eval_duration": ns(timings.get("prompt_ms")),
            "eval_count": int(eval_count or 0), "eval_duration": ns(timings.get("predicted_ms"))}


async def _sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async for line in resp.content:
        text = line.decode(errors="replace").strip()
        if not text.startswith("data:"):
            continue
        data = text[5:].strip()
        if data == "[DONE]":
            return
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if isinstance(doc, dict):
            if "error" in doc:
                err = doc["error"]
                raise OllamaError(500, f"llama-server: {err.get('message', err) if isinstance(err, dict) else err}")
            yield doc


@contextlib.asynccontextmanager
async def _released(upstream: aiohttp.ClientResponse) -> AsyncIterator[None]:
    """An exchange with llama-server: its connection is released for reuse when the exchange
    completed, and closed otherwise -- a client gone mid-stream (CancelledError,
    ConnectionResetError) closes the upstream connection too: llama-server sees it and frees the
    slot."""
    try:
        yield
    except BaseException:
        upstream.close()
        raise
    upstream.release()


#: Router statuses of a model instance that still runs; how long an unload waits for it to stop.
RUNNING = ("loaded", "loading", "sleeping")
UNLOAD_WAIT_S = 30.0

_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|\u00b5s|ms|s|m|h))+|[-+]?0")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _keep_alive_seconds(value: object) -> float | None:
    """Ollama's keep_alive in seconds (a number of seconds or a Go duration such as "5m";
    negative: forever), None when not given."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _GO_DURATION.fullmatch(value.strip()):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)", text)
        return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)
    raise OllamaError(400, f"keep_alive must be a number of seconds or a duration such as \"5m\", "
                      f"not {json.dumps(value)[:40]}")


async def _load_or_unload(request: web.Request, m: ServedModel, body: dict[str, Any],
                          empty: dict[str, Any]) -> web.Response:
    """An empty chat or generate request: Ollama loads the model, or unloads it when keep_alive
    is 0. In router mode the router does (it waits for the load); one model served alone stays
    loaded for as long as turboctl serves it."""
    started = time.monotonic_ns()
    unload = _keep_alive_seconds(body.get("keep_alive")) == 0
    app = request.app
    reason = "unload" if unload else "load"
    if unload and not app[ROUTER_KEY]:
        raise OllamaError(501, f"model '{m.name}' cannot be unloaded: it is the model turboctl serves and stays "
                          "loaded until turboctl serve stops (serve several profiles to load and unload models "
                          "on demand)")
    if app[ROUTER_KEY]:
        try:
            if unload:
                status, _, err = await _post_json(request, "/models/unload", {"model": m.name})
                if status != 200 and "not running" not in err:
                    raise OllamaError(status, err)
                # the router answers at once and stops the instance (SIGTERM, then its
                # stop-timeout): the answer waits until it is gone, so that /api/ps agrees
                deadline = time.monotonic() + UNLOAD_WAIT_S
                while (await _router_status(app, request)).get(m.name) in RUNNING and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
            else:
                params = {"model": m.name, "autoload": "true"}  # the router answers once it is loaded
                async with app[SESSION_KEY].get(f"{app[UPSTREAM_KEY]}/props", params=params,
                                                headers=_upstream_headers(request)) as resp:
                    if resp.status != 200:
                        raise await _upstream_error(resp)
        except aiohttp.ClientError as exc:
            raise OllamaError(502, f"llama-server at {app[UPSTREAM_KEY]} is not reachable: {exc}") from exc
    doc: dict[str, Any] = {"model": m.name, "created_at": _now(), **empty, "done": True, "done_reason": reason}
    if app[ROUTER_KEY] and not unload:
        doc["load_duration"] = doc["total_duration"] = time.monotonic_ns() - started
    return web.json_response(doc)


async def _generate_like(request: web.Request, *, chat: bool) -> web.StreamResponse:
    started = time.monotonic()
    body = await _body(request)
    m = _lookup(request.app, body.get("model"))
    payload = _options(body, m, request.app[STATE_KEY].setdefault("warned", set()))
    payload["model"] = m.name
    raw = False
    if chat:
        payload["messages"] = _openai_messages(body.get("messages") or [])
        tools = body.get("tools")
        if tools:
            payload["tools"] = tools
        if not payload["messages"]:
            return await _load_or_unload(request, m, body, {"message": {"role": "assistant", "content": ""}})
        route = "/v1/chat/completions"
    else:
        _no_images(body)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise OllamaError(400, "prompt must be a string")
        if not prompt:
            return await _load_or_unload(request, m, body, {"response": ""})
        raw = bool(body.get("raw"))
        if raw:
            payload["prompt"] = prompt
            route = "/v1/completions"
        else:
            msgs = []
            if isinstance(body.get("system"), str) and body["system"]:
                msgs.append({"role": "system", "content": body["system"]})
            msgs.append({"role": "user", "content": prompt})
            payload["messages"] = msgs
            route = "/v1/chat/completions"
    stream = body.get("stream", True) is not False
    payload["stream"] = stream
    session = request.app[SESSION_KEY]
    url = f"{request.app[UPSTREAM_KEY]}{route}"
    text_key = "text" if raw else None

    def piece(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"model": m.name, "created_at": _now(), "done": False}
        if chat:
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                msg["tool_calls"] = _ollama_tool_calls(calls)
            doc["message"] = msg
        else:
            doc["response"] = text
        return doc

    try:
        upstream = await session.post(url, json=payload, headers=_upstream_headers(request))
    except aiohttp.ClientError as exc:
        raise OllamaError(502, f"llama-server at {request.app[UPSTREAM_KEY]} is not reachable: {exc}") from exc
    async with _released(upstream):
        if upstream.status != 200:
            raise await _upstream_error(upstream)
        if not stream:
            doc = await upstream.json(content_type=None)
            choice = (doc.get("choices") or [{}])[0]
            if raw:
                out = piece(choice.get("text") or "")
            else:
                msg = choice.get("message") or {}
                out = piece(msg.get("content") or "", msg.get("tool_calls"))
            out.update(_final_fields(doc.get("timings") or {}, doc.get("usage") or {}, choice.get("finish_reason"),
                                     started))
            return web.json_response(out)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        timings: dict[str, Any] = {}
        usage: dict[str, Any] = {}
        async for ev in _sse_events(upstream):
            timings = ev.get("timings") or timings
            usage = ev.get("usage") or usage
            for choice in ev.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                if text_key:
                    text = choice.get("text") or ""
                else:
                    delta = choice.get("delta") or {}
                    text = delta.get("content") or ""
                    for tc in delta.get("tool_calls") or []:
                        slot = calls.setdefault(int(tc.get("index", 0)), {"function": {"name": "", "arguments": ""}})
                        fn = tc.get("function") or {}
                        slot["function"]["name"] += fn.get("name") or ""
                        slot["function"]["arguments"] += fn.get("arguments") or ""
                if text:
                    await resp.write((json.dumps(piece(text)) + "\n").encode())
        if calls:
            await resp.write((json.dumps(piece("", [calls[i] for i in sorted(calls)])) + "\n").encode())
        last = piece("")
        last.update(_final_fields(timings, usage, finish, started))
        await resp.write((json.dumps(last) + "\n").encode())
        await resp.write_eof()
        return resp


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _generate_like(request, chat=True)


async def _generate(request: web.Request) -> web.StreamResponse:
    return await _generate_like(request, chat=False)


# --- embeddings -------------------------------------------------------------------------------

# llama-server b11312's refusals of an embedding input that does not fit: one ubatch (pooling
# mean/cls) or the slot's context; the number is the limit in tokens
_TOO_LARGE = (re.compile(r"too large to process\. increase the physical batch size \(current batch size: (\d+)\)"),
              re.compile(r"larger than the max context size \((\d+) tokens\)"),
              re.compile(r"exceeds the available context size \((\d+) tokens\)"))


def _embedding_model(app: web.Application, name: object) -> ServedModel:
    m = _lookup(app, name)
    if not m.embeddings:
        raise OllamaError(501, f"model '{m.name}' is not served with embeddings: add \"--embeddings\" (and, for a "
                          "model without a pooling type of its own, \"--pooling\", \"mean\") to its profile's "
                          "server.args (server.args: [\"--embeddings\"]) and restart turboctl serve")
    return m


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


def _embedding_error(m: ServedModel, status: int, message: str) -> OllamaError:
    if "Pooling type 'none'" in message:
        return OllamaError(501, f"model '{m.name}' has no pooling type for embeddings (a generative model): add "
                           "\"--pooling\", \"mean\" (or last, cls) to its profile's server.args next to "
                           "\"--embeddings\" and restart turboctl serve")
    return OllamaError(status, message)


async def _truncated(request: web.Request, m: ServedModel, text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` tokens as llama-server counts them (its special tokens
    included), through its own /tokenize and /detokenize (``model``: the router routes by it)."""
    status, with_special, err = await _post_json(request, "/tokenize", {"model": m.name, "content": text,
                                                                         "add_special": True})
    if status != 200:
        raise OllamaError(status, err)
    status, plain, err = await _post_json(request, "/tokenize", {"model": m.name, "content": text,
                                                                  "add_special": False})
    if status != 200:
        raise OllamaError(status, err)
    tokens = plain.get("tokens") or []
    keep = limit - max(0, len(with_special.get("tokens") or []) - len(tokens))
    if len(tokens) <= keep:
        return text
    if keep <= 0:
        raise OllamaError(400, "input after truncation exceeds maximum context length")
    status, doc, err = await _post_json(request, "/detokenize", {"model": m.name, "tokens": tokens[:keep]})
    if status != 200:
        raise OllamaError(status, err)
    return str(doc.get("content") or "")


async def _embed(request: web.Request) -> web.Response:
    """Ollama's /api/embed through llama-server's /v1/embeddings: L2-normalised vectors (as
    Ollama's), ``dimensions`` cut and normalised again, an input too long for the server cut to
    fit unless ``truncate`` is false."""
    started = time.monotonic_ns()
    body = await _body(request)
    m = _embedding_model(request.app, body.get("model"))
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw] if raw else []
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif raw is None:
        inputs = []
    else:
        raise OllamaError(400, "invalid input type")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 0):
        raise OllamaError(400, "dimensions must be a non-negative integer")
    if not inputs:
        return web.json_response({"model": m.name, "embeddings": []})
    truncate = body.get("truncate") is not False
    doc: Any = None
    for attempt in range(4):
        status, doc, err = await _post_json(request, "/v1/embeddings", {"model": m.name, "input": inputs,
                                                                         "encoding_format": "float"})
        if status == 200:
            break
        limit = next((int(x.group(1)) for x in (rx.search(err) for rx in _TOO_LARGE) if x), None)
        if limit is None:
            raise _embedding_error(m, status, err)
        if not truncate:
            raise OllamaError(400, f"the input length exceeds the context length ({err})")
        if attempt == 3:
            raise OllamaError(400, f"input exceeds maximum context length and cannot be truncated further ({err})")
        # a text cut to N tokens may come back as N+1 when tokenized again: a margin per try
        inputs = [await _truncated(request, m, text, limit - attempt) for text in inputs]
    data = sorted(doc.get("data") or [], key=lambda d: int(d.get("index", 0)))
    vectors: list[list[float]] = []
    for d in data:
        vec = [float(x) for x in d.get("embedding") or []]
        if dims and dims < len(vec):
            vec = vec[:dims]
        vectors.append(_l2(vec))
    usage = doc.get("usage") or {}
    return web.json_response({"model": m.name, "embeddings": vectors,
                              "total_duration": time.monotonic_ns() - started, "load_duration": 0,
                              "prompt_eval_count": int(usage.get("prompt_tokens") or 0)})


def _l2(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    if not math.isfinite(norm):
        raise OllamaError(500, "embedding contains NaN or Inf values")
    return [x / max(norm, 1e-12) for x in vec]


async def _embeddings_legacy(request: web.Request) -> web.Response:
    """Ollama's legacy /api/embeddings ({model, prompt} -> {embedding}): the vector as the model
    gives it (not normalised, as Ollama's), one prompt, no truncation."""
    body = await _body(request)
    m = _embedding_model(request.app, body.get("model"))
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise OllamaError(400, "prompt must be a string")
    if not prompt:
        return web.json_response({"embedding": []})
    status, doc, err = await _post_json(request, "/v1/embeddings", {"model": m.name, "input": prompt,
                                                                     "encoding_format": "float",
                                                                     "embd_normalize": -1})
    if status != 200:
        raise _embedding_error(m, 500 if status >= 500 else status, err)
    data = doc.get("data") or [{}]
    return web.json_response({"embedding": [float(x) for x in data[0].get("embedding") or []]})


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


async def _passthrough(request: web.Request) -> web.StreamResponse:
    url = f"{request.app[UPSTREAM_KEY]}{request.rel_url}"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in REQUEST_DROP}
    headers["Accept-Encoding"] = "identity"
    data = await request.read()
    try:
        upstream = await request.app[SESSION_KEY].request(request.method, url, headers=headers, data=data or None,
                                                          allow_redirects=False, auto_decompress=False)
    except aiohttp.ClientError as exc:
        return web.json_response({"error": {"code": 502, "type": "server_error",
                                            "message": f"llama-server is not reachable: {exc}"}}, status=502)
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



# --- who holds a port -------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """What answers on a port: turboctl's proxy (``version``: turboctl's), an Ollama server
    (``version``: the one its /api/version reports, None if only ``/`` said so) or something else."""

    kind: Literal["turboctl", "ollama", "other"]
    version: str | None = None


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, dict[str, str], bytes] | None:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json, text/plain"})
        resp = conn.getresponse()
        body = resp.read(64 * 1024)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def probe(host: str, port: int, timeout: float = 1.0) -> Probe | None:
    """Who holds ``host:port``: None when nothing accepts a TCP connection there; otherwise
    turboctl (the X-Turboctl header), Ollama (``GET /api/version`` answers ``{"version": ...}``,
    or ``GET /`` says "Ollama is running") or "other". Each step waits at most ``timeout``
    seconds; network trouble is an answer, never an exception."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return None
    got = _http_get(host, port, "/api/version", timeout)
    if got is None:
        return Probe("other")  # it accepts connections but does not speak HTTP (in time)
    status, headers, body = got
    if TURBOCTL_HEADER.lower() in headers:
        return Probe("turboctl", headers[TURBOCTL_HEADER.lower()] or None)
    if status == 200:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("version"), str):
            return Probe("ollama", doc["version"])
    root = _http_get(host, port, "/", timeout)
    if root is not None:
        if TURBOCTL_HEADER.lower() in root[1]:
            return Probe("turboctl", root[1][TURBOCTL_HEADER.lower()] or None)
        if root[0] == 200 and root[2].strip().startswith(b"Ollama is running"):
            return Probe("ollama")
    return Probe("other")
