"""/api/embed and the legacy /api/embeddings through llama-server's /v1/embeddings, against a
stand-in that replays answers recorded from b11312 (tests/data/ollama/embeddings*.json,
error-embd-*.json) and tokenizes one token per word (plus one special token in front)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests
from aiohttp import web

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.ollamafakes import DATA, client, served, serving
from turboctl.serve.ollama import ProxyHandle

pytestmark = pytest.mark.usefixtures("loopback")

RECORDED = json.loads((DATA / "embeddings.json").read_text())
RECORDED_INPUTS = ["hello", "The capital of France is Paris."]  # record.py's EMBED
RAW = json.loads((DATA / "embeddings-raw.json").read_text())
TOO_LARGE = (DATA / "error-embd-too-large.json").read_text()


def _vec(i: int) -> list[float]:
    return [float(x) for x in RECORDED["data"][i]["embedding"]]


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


class Embedder:
    """``mode``: "ok", "pooling-none" (--embeddings without a pooling type) or "off" (no
    --embeddings); ``limit``: the most tokens one input may have (the ubatch); ``message``: the
    refusal of a longer input (the recorded one, with this stand-in's numbers)."""

    def __init__(self, mode: str = "ok", limit: int = 8, message: str | None = None, grow: int = 0) -> None:
        self.grow = grow  # words /detokenize adds: a text that comes back longer when tokenized again
        self.mode = mode
        self.limit = limit
        self.message = message
        self.bodies: list[dict[str, Any]] = []
        self.tokenized: list[dict[str, Any]] = []  # /tokenize and /detokenize bodies

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        return app

    @staticmethod
    def tokens(text: str, add_special: bool) -> list[int]:
        return ([0] if add_special else []) + [len(w) + 1 for w in text.split()]

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if self.mode != "ok":
            name = {"pooling-none": "error-embd-pooling-none", "off": "error-embd-off"}[self.mode]
            raw = (DATA / f"{name}.json").read_bytes()
            return web.Response(body=raw, status=json.loads(raw)["error"]["code"], content_type="application/json")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        for text in inputs:
            n = len(self.tokens(text, True))
            if n > self.limit:
                if self.message is None:
                    msg = re.sub(r"\(\d+ tokens\)", f"({n} tokens)", TOO_LARGE)
                    msg = re.sub(r"batch size: \d+", f"batch size: {self.limit}", msg)
                    return web.Response(text=msg, status=500, content_type="application/json")
                err = {"code": 400, "message": self.message.format(n=n, limit=self.limit),
                       "type": "exceed_context_size_error"}
                return web.json_response({"error": err}, status=400)
        if body.get("embd_normalize") == -1:
            return web.json_response(RAW)
        data = [{"embedding": _vec(RECORDED_INPUTS.index(t)) if t in RECORDED_INPUTS else _vec(0), "index": i,
                 "object": "embedding"} for i, t in enumerate(inputs)]
        data.reverse()  # the proxy orders by index
        n = sum(len(self.tokens(t, True)) for t in inputs)
        return web.json_response({"model": body.get("model"), "object": "list", "data": data,
                                  "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokenized.append(body)
        return web.json_response({"tokens": self.tokens(body["content"], bool(body.get("add_special")))})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokenized.append(body)
        return web.json_response({"content": " ".join(["w" * (t - 1) for t in body["tokens"]] + ["x"] * self.grow)})


@pytest.fixture()
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture()
def proxy(tmp_path: Path, embedder: Embedder) -> Iterator[ProxyHandle]:
    with serving(embedder.app(), [served(tmp_path, embeddings=True)]) as px:
        yield px


def test_embed_two_inputs(proxy: ProxyHandle, embedder: Embedder) -> None:
    r = client(proxy).embed(model="smollm2", input=RECORDED_INPUTS)
    assert r.model == "smollm2" and len(r.embeddings) == 2
    for i, e in enumerate(r.embeddings):
        assert len(e) == 576 and _close(list(e), _unit(_vec(i)))
        assert abs(math.sqrt(sum(x * x for x in e)) - 1) < 1e-9
    assert r.prompt_eval_count == 2 + 7 and r.total_duration and r.total_duration > 0
    assert embedder.bodies == [{"model": "smollm2", "input": RECORDED_INPUTS, "encoding_format": "float"}]


def test_embed_one_string_and_dimensions(proxy: ProxyHandle) -> None:
    c = client(proxy)
    one = c.embed(model="smollm2", input="hello")
    assert len(one.embeddings) == 1 and _close(list(one.embeddings[0]), _unit(_vec(0)))
    cut = c.embed(model="smollm2", input="hello", dimensions=64)
    assert _close(list(cut.embeddings[0]), _unit(_vec(0)[:64]))  # cut, then normalised again
    same = c.embed(model="smollm2", input="hello", dimensions=10_000)
    assert len(same.embeddings[0]) == 576


@pytest.mark.parametrize("body", [{"input": ""}, {"input": []}, {}])
def test_empty_input_answers_no_embeddings(proxy: ProxyHandle, embedder: Embedder, body: dict[str, Any]) -> None:
    r = requests.post(proxy.url + "/api/embed", json={"model": "smollm2", **body}, timeout=10)
    assert r.status_code == 200 and r.json() == {"model": "smollm2", "embeddings": []}
    assert embedder.bodies == []


@pytest.mark.parametrize(("body", "message"), [
    ({"input": 3}, "invalid input type"),
    ({"input": ["a", 3]}, "invalid input type"),
    ({"input": "a", "dimensions": "64"}, "dimensions must be a non-negative integer"),
    ({"input": "a", "dimensions": -1}, "dimensions must be a non-negative integer"),
])
def test_bad_requests(proxy: ProxyHandle, body: dict[str, Any], message: str) -> None:
    r = requests.post(proxy.url + "/api/embed", json={"model": "smollm2", **body}, timeout=10)
    assert (r.status_code, r.json()) == (400, {"error": message})


def test_unknown_model_and_model_without_embeddings(tmp_path: Path, embedder: Embedder) -> None:
    with serving(embedder.app(), [served(tmp_path)]) as px:
        c = client(px)
        with pytest.raises(ollama.ResponseError) as exc:
            c.embed(model="nope", input="x")
        assert (exc.value.status_code, exc.value.error) == (404, "model 'nope' not found")
        for call in (lambda: c.embed(model="smollm2", input="x"), lambda: c.embeddings(model="smollm2", prompt="x")):
            with pytest.raises(ollama.ResponseError) as exc:
                call()
            assert exc.value.status_code == 501
            assert exc.value.error.startswith("model 'smollm2' is not served with embeddings: add \"--embeddings\"")
            assert 'server.args: ["--embeddings"]' in exc.value.error
    assert embedder.bodies == []


def test_no_pooling_type_says_what_to_add(tmp_path: Path) -> None:
    with serving(Embedder("pooling-none").app(), [served(tmp_path, embeddings=True)]) as px, \
            pytest.raises(ollama.ResponseError) as exc:
        client(px).embed(model="smollm2", input="x")
    assert exc.value.status_code == 501
    assert exc.value.error.startswith("model 'smollm2' has no pooling type for embeddings (a generative model): "
                                      'add "--pooling", "mean"')


def test_server_without_embeddings_is_passed_on(tmp_path: Path) -> None:
    with serving(Embedder("off").app(), [served(tmp_path, embeddings=True)]) as px, \
            pytest.raises(ollama.ResponseError) as exc:
        client(px).embed(model="smollm2", input="x")
    assert exc.value.status_code == 501
    assert exc.value.error == "llama-server: This server does not support embeddings. Start it with `--embeddings`"


def test_too_long_input_is_truncated(proxy: ProxyHandle, embedder: Embedder) -> None:
    long = " ".join(f"w{i}" for i in range(20))
    r = client(proxy).embed(model="smollm2", input=["hello", long])
    assert len(r.embeddings) == 2
    first, second = embedder.bodies
    assert first["input"] == ["hello", long]
    assert second["input"][0] == "hello"  # short enough: unchanged
    assert len(Embedder.tokens(second["input"][1], True)) == embedder.limit  # cut to the limit, special token in
    assert embedder.tokenized and all(b["model"] == "smollm2" for b in embedder.tokenized)  # a router routes by it


@pytest.mark.parametrize("message", [
    # b11312's other refusals of a too long embedding input (server-context.cpp), not recorded
    "input ({n} tokens) is larger than the max context size ({limit} tokens). skipping",
    "request ({n} tokens) exceeds the available context size ({limit} tokens), try increasing it",
])
def test_context_refusals_are_truncated_too(tmp_path: Path, message: str) -> None:
    state = Embedder(message=message)
    with serving(state.app(), [served(tmp_path, embeddings=True)]) as px:
        r = client(px).embed(model="smollm2", input=" ".join(["w"] * 30))
    assert len(r.embeddings) == 1 and len(state.bodies) == 2
    assert len(Embedder.tokens(state.bodies[1]["input"][0], True)) == state.limit


def test_truncate_false_refuses(proxy: ProxyHandle, embedder: Embedder) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        client(proxy).embed(model="smollm2", input=" ".join(["w"] * 20), truncate=False)
    assert exc.value.status_code == 400
    assert exc.value.error.startswith("the input length exceeds the context length (llama-server: input (21 "
                                      "tokens) is too large to process")
    assert len(embedder.bodies) == 1


def test_truncation_gives_up(tmp_path: Path) -> None:
    state = Embedder(limit=1)  # not even the special token and one word fit
    with serving(state.app(), [served(tmp_path, embeddings=True)]) as px:
        r = requests.post(px.url + "/api/embed", json={"model": "smollm2", "input": "a b c"}, timeout=10)
    assert (r.status_code, r.json()) == (400, {"error": "input after truncation exceeds maximum context length"})


def test_legacy_embeddings(proxy: ProxyHandle, embedder: Embedder) -> None:
    c = client(proxy)
    r = c.embeddings(model="smollm2", prompt="hello")
    assert list(r.embedding) == RAW["data"][0]["embedding"]  # as the model gives it, like Ollama's legacy route
    assert embedder.bodies[-1] == {"model": "smollm2", "input": "hello", "encoding_format": "float",
                                   "embd_normalize": -1}
    assert list(c.embeddings(model="smollm2", prompt="").embedding) == []
    bad = requests.post(proxy.url + "/api/embeddings", json={"model": "smollm2", "prompt": ["x"]}, timeout=10)
    assert (bad.status_code, bad.json()) == (400, {"error": "prompt must be a string"})


def test_truncation_with_a_margin_then_gives_up(tmp_path: Path) -> None:
    state = Embedder(grow=2)
    with serving(state.app(), [served(tmp_path, embeddings=True)]) as px:
        assert len(client(px).embed(model="smollm2", input=" ".join(["w"] * 20)).embeddings) == 1
        assert [len(Embedder.tokens(b["input"][0], True)) for b in state.bodies] == [21, 10, 9, 8]
        state.grow, state.bodies = 5, []
        r = requests.post(px.url + "/api/embed", json={"model": "smollm2", "input": " w" * 20}, timeout=10)
    assert r.status_code == 400 and r.json()["error"].startswith(
        "input exceeds maximum context length and cannot be truncated further (llama-server: input (")
    assert len(state.bodies) == 4
