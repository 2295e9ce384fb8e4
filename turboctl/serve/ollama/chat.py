"""``/api/chat`` and ``/api/generate``: Ollama's messages and tool calls to llama-server's OpenAI
routes and back, streamed NDJSON or one object with the durations from llama-server's own
``timings``; Ollama's empty requests that load or (router mode) unload a model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from .common import (
    ROUTER_KEY,
    SESSION_KEY,
    STATE_KEY,
    UPSTREAM_KEY,
    OllamaError,
    ServedModel,
    _body,
    _lookup,
    _now,
    _post_json,
    _router_status,
    _upstream_error,
    _upstream_headers,
)
from .options import _no_images, _options


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
