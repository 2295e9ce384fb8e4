"""``/api/embed`` and the legacy ``/api/embeddings`` through llama-server's ``/v1/embeddings``
(where the profile serves embeddings): Ollama's shapes, normalisation, ``dimensions`` and
truncation with llama-server's tokenizer."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from aiohttp import web

from .common import (
    OllamaError,
    ServedModel,
    _body,
    _lookup,
    _post_json,
)

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
