"""The Ollama proxy in front of a real llama-server (SmolLM2-135M-Instruct, turbo4 K/V, 2 slots),
talked to by clients nobody here wrote: the official ``ollama`` Python library and the OpenAI
client on the same port. Also the proxy's cost: added latency per request and tokens/s through
it against llama-server directly (printed; run with ``-s`` to see the figures)."""

from __future__ import annotations

import json
import math
import re
import statistics
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ollama
import openai
import pytest
import requests

import turboctl
from turboctl.build import manifest
from turboctl.models import fetch
from turboctl.paths import Paths
from turboctl.serve.catalog import find_profile
from turboctl.serve.ollama import Probe, ProxyHandle, make_app, probe, run_proxy, served_model
from turboctl.ui import UI

from .conftest import slow_home
from .server import LlamaServer

pytestmark = pytest.mark.slow

CONTEXT = 4096
ALIAS = "smollm2"


@dataclass
class Stack:
    server: LlamaServer
    proxy: ProxyHandle


def demo_model() -> Path:
    """SmolLM2 the project's way: the smollm2-demo profile's source, fetched into the test home."""
    profile = find_profile("smollm2-demo")
    return fetch.resolve_model(profile.model, Paths(slow_home()), UI(quiet=True)).path


def _single_stack(llama_build: manifest.Manifest, log: Path, extra: list[str], *,
                  embeddings: bool = False) -> Iterator[Stack]:
    """SmolLM2 with turbo4 K/V on 2 slots (plus ``extra`` arguments), the proxy in front."""
    model = demo_model()
    args = ["-m", str(model), "-c", str(CONTEXT), "-np", "2", "--kv-unified", "-fa", "on", "-ctk", "turbo4",
            "-ctv", "turbo4", "--no-repack", "--alias", ALIAS, "-t", "2", *extra]
    with LlamaServer(str(llama_build.binary("llama-server")), args, log) as srv:
        sm = served_model(ALIAS, model, context=CONTEXT, kv="turbo4", size_bytes=model.stat().st_size,
                          embeddings=embeddings)
        px = run_proxy(make_app(srv.url, [sm]), "127.0.0.1", 0)
        try:
            yield Stack(srv, px)
        finally:
            px.stop()
    srv.assert_clean_exit()


@pytest.fixture(scope="module")
def stack(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _single_stack(llama_build, tmp_path_factory.mktemp("ollama") / "llama-server.log", [])


def client(s: Stack) -> ollama.Client:
    return ollama.Client(host=s.proxy.url, timeout=120)


def test_list_show_ps(stack: Stack) -> None:
    c = client(stack)
    assert [m.model for m in c.list().models] == [ALIAS]
    show = c.show(ALIAS)
    assert show.modelinfo is not None and show.modelinfo["llama.context_length"] == CONTEXT
    assert show.details is not None and show.details.parameter_size == "135M"
    assert show.details.quantization_level == "Q4_1"
    # b11312's /props: SmolLM2's template has no tool support, so no "tools" capability
    assert show.capabilities == ["completion"]
    ps = c.ps().models
    assert [(m.model, m.context_length) for m in ps] == [(ALIAS, CONTEXT)]


def test_chat_not_streamed_and_streamed(stack: Stack) -> None:
    c = client(stack)
    q = [{"role": "user", "content": "What is the capital of France?"}]
    r = c.chat(model=ALIAS, messages=q, options={"temperature": 0, "num_predict": 32})
    assert re.search(r"\bParis\b", r.message.content or ""), r
    assert r.done and r.done_reason == "stop"
    assert r.eval_count and r.eval_count > 0 and r.eval_duration and r.eval_duration > 0
    assert r.prompt_eval_count and r.prompt_eval_count > 10
    parts = list(c.chat(model=ALIAS, messages=q, stream=True, options={"temperature": 0, "num_predict": 32}))
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts) == r.message.content  # same tokens at temperature 0
    assert parts[-1].eval_count == r.eval_count


def test_generate_raw_and_templated(stack: Stack) -> None:
    c = client(stack)
    r = c.generate(model=ALIAS, prompt="1, 2, 3, 4, 5, 6,", raw=True, options={"temperature": 0, "num_predict": 4})
    assert re.match(r"\s*7\b", r.response or ""), r
    t = c.generate(model=ALIAS, prompt="What is the capital of France?", options={"temperature": 0,
                   "num_predict": 32})
    assert re.search(r"\bParis\b", t.response or ""), t
    n = c.generate(model=ALIAS, prompt="Count: one, two, three", options={"num_predict": 3, "temperature": 0})
    assert n.done_reason == "length" and n.eval_count == 3


def test_json_formats(stack: Stack) -> None:
    c = client(stack)
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"]}
    r = c.chat(model=ALIAS, messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
               format=schema, options={"temperature": 0, "num_predict": 48})
    doc = json.loads(r.message.content or "")
    assert set(doc) == {"capital"} and isinstance(doc["capital"], str)
    g = c.generate(model=ALIAS, prompt="Describe Paris in JSON.", format="json",
                   options={"temperature": 0, "num_predict": 48})
    text = (g.response or "").lstrip()
    assert text.startswith("{"), g.response  # unconstrained, SmolLM2 starts with a ``` fence
    if g.done_reason == "stop":
        assert isinstance(json.loads(text), dict)


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                          "required": ["city"]}}}


def test_tools_with_a_template_without_tools(stack: Stack) -> None:
    # SmolLM2's own template has no tools (no "tools" capability above): llama-server ignores
    # them and the model answers in words -- answered in Ollama's shape, not refused
    r = client(stack).chat(model=ALIAS, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
                           options={"temperature": 0, "num_predict": 16})
    assert r.done and r.message.content and not r.message.tool_calls


def test_errors(stack: Stack) -> None:
    c = client(stack)
    with pytest.raises(ollama.ResponseError) as exc:
        c.chat(model="llama3", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404 and exc.value.error == "model 'llama3' not found"
    with pytest.raises(ollama.ResponseError) as exc:
        c.generate(model=ALIAS, prompt="x", options={"num_ctx": CONTEXT * 2})
    assert exc.value.status_code == 400 and f"({CONTEXT} tokens)" in exc.value.error
    with pytest.raises(ollama.ResponseError) as exc:
        c.pull("llama3")
    assert exc.value.status_code == 501


def test_openai_client_on_the_proxy_port(stack: Stack) -> None:
    o = openai.OpenAI(base_url=f"{stack.proxy.url}/v1", api_key="none", max_retries=0, timeout=120)
    assert ALIAS in [m.id for m in o.models.list().data]
    r = o.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "What is the capital of "
                                  "France?"}], max_tokens=32, temperature=0)
    assert re.search(r"\bParis\b", r.choices[0].message.content or ""), r
    text = "".join(ch.choices[0].delta.content or "" for ch in o.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=32,
        temperature=0, stream=True) if ch.choices)
    assert text == r.choices[0].message.content


def slots_busy(s: Stack) -> list[bool]:
    with urllib.request.urlopen(f"{s.server.url}/slots", timeout=10) as r:
        return [bool(slot.get("is_processing")) for slot in json.load(r)]


def test_client_gone_mid_stream_frees_the_slot(stack: Stack) -> None:
    r = requests.post(f"{stack.proxy.url}/api/generate", json={"model": ALIAS, "prompt": "Write a long story.",
                      "options": {"num_predict": 2000, "temperature": 0.8}}, stream=True, timeout=120)
    lines = r.iter_lines()
    for _ in range(3):
        assert json.loads(next(lines))["done"] is False
    assert any(slots_busy(stack))
    r.close()  # gone mid-stream
    deadline = time.monotonic() + 10
    while any(slots_busy(stack)):
        assert time.monotonic() < deadline, "a slot is still generating for a client that went away"
        time.sleep(0.1)
    c = client(stack)
    ok = c.generate(model=ALIAS, prompt="1, 2, 3, 4, 5, 6,", raw=True, options={"temperature": 0, "num_predict": 4})
    assert re.match(r"\s*7\b", ok.response or ""), ok


def _stream_rate(lines: Iterator[bytes], sse: bool) -> float:
    """Tokens/s of one streamed answer as the client sees it: pieces after the first / seconds."""
    stamps = []
    for raw in lines:
        line = raw.decode()
        if sse:
            if not line.startswith("data: {"):
                continue
            doc = json.loads(line[6:])
            got = any(ch.get("text") or (ch.get("delta") or {}).get("content") for ch in doc.get("choices") or [])
        else:
            got = bool(line and json.loads(line).get("response"))
        if got:
            stamps.append(time.perf_counter())
    assert len(stamps) > 32, f"only {len(stamps)} tokens streamed"
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def test_proxy_overhead(stack: Stack) -> None:
    """Added latency per request and tokens/s, proxy against direct, interleaved runs."""
    direct, proxied, passthrough = [], [], []
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    for _ in range(20):
        t = time.perf_counter()
        requests.post(f"{stack.server.url}/v1/chat/completions", json=body, timeout=60).raise_for_status()
        direct.append(time.perf_counter() - t)
        t = time.perf_counter()
        requests.post(f"{stack.proxy.url}/api/chat", json={"model": ALIAS, "stream": False, "messages":
                      body["messages"], "options": {"num_predict": 1, "temperature": 0}}, timeout=60).raise_for_status()
        proxied.append(time.perf_counter() - t)
        t = time.perf_counter()
        requests.post(f"{stack.proxy.url}/v1/chat/completions", json=body, timeout=60).raise_for_status()
        passthrough.append(time.perf_counter() - t)
    rates: dict[str, list[float]] = {"direct": [], "proxy": []}
    prompt = "Once upon a time, in a small village by the sea, there lived"
    for _ in range(3):
        with requests.post(f"{stack.server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 128,
                           "temperature": 0, "stream": True, "ignore_eos": True}, stream=True, timeout=120) as r:
            rates["direct"].append(_stream_rate(r.iter_lines(), sse=True))
        with requests.post(f"{stack.proxy.url}/api/generate", json={"model": ALIAS, "prompt": prompt, "raw": True,
                           "options": {"num_predict": 128, "temperature": 0}}, stream=True, timeout=120) as r:
            rates["proxy"].append(_stream_rate(r.iter_lines(), sse=False))
    med = statistics.median
    print(f"\n[ollama proxy] 1-token chat, median of 20: direct {med(direct) * 1e3:.1f} ms, /api/chat "
          f"{med(proxied) * 1e3:.1f} ms (+{(med(proxied) - med(direct)) * 1e3:.1f} ms), /v1 passthrough "
          f"{med(passthrough) * 1e3:.1f} ms (+{(med(passthrough) - med(direct)) * 1e3:.1f} ms)")
    print(f"[ollama proxy] streamed 128 tokens, median of 3: direct {med(rates['direct']):.1f} tok/s, "
          f"through /api/generate {med(rates['proxy']):.1f} tok/s")
    assert med(proxied) - med(direct) < 0.05  # far below a token's time on this CPU


def test_llama_server_routes_on_the_proxy_port(stack: Stack) -> None:
    """The endpoint is a superset of llama-server's: its own routes answer through the proxy as
    they do directly, and every answer says it is turboctl's."""
    px, direct = stack.proxy.url, stack.server.url
    h = requests.get(f"{px}/health", timeout=30)
    assert h.status_code == 200 and h.json() == requests.get(f"{direct}/health", timeout=30).json()
    assert h.headers["X-Turboctl"] == turboctl.__version__
    assert requests.head(f"{px}/", timeout=30).content == b""
    props = requests.get(f"{px}/props", timeout=30).json()
    assert props["default_generation_settings"]["n_ctx"] == CONTEXT
    tok = requests.post(f"{px}/tokenize", json={"content": "Hello world"}, timeout=30).json()
    assert tok == requests.post(f"{direct}/tokenize", json={"content": "Hello world"}, timeout=30).json()
    text = requests.post(f"{px}/detokenize", json={"tokens": tok["tokens"]}, timeout=30).json()["content"]
    assert text.strip() == "Hello world"
    m_px, m_direct = requests.get(f"{px}/metrics", timeout=30), requests.get(f"{direct}/metrics", timeout=30)
    assert (m_px.status_code, m_px.content) == (m_direct.status_code, m_direct.content)  # an error without --metrics
    assert requests.get(f"{px}/slots", timeout=30).json()[0]["n_ctx"] > 0
    done = requests.post(f"{px}/completion", json={"prompt": "1, 2, 3, 4, 5, 6,", "n_predict": 4,
                         "temperature": 0}, timeout=60).json()
    assert re.match(r"\s*7\b", done["content"]), done
    streamed = requests.post(f"{px}/completion", json={"prompt": "1, 2, 3, 4, 5, 6,", "n_predict": 4,
                             "temperature": 0, "stream": True}, stream=True, timeout=60)
    pieces = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith(b"data: ")]
    assert "".join(p["content"] for p in pieces) == done["content"] and pieces[-1]["stop"] is True
    msg = requests.post(f"{px}/v1/messages", json={"model": ALIAS, "max_tokens": 32, "temperature": 0,
                        "messages": [{"role": "user", "content": "What is the capital of France?"}]},
                        timeout=60).json()
    assert msg.get("type") == "message", msg
    assert re.search(r"\bParis\b", msg["content"][0]["text"]), msg


def test_probe_tells_the_proxy_from_llama_server(stack: Stack) -> None:
    assert probe("127.0.0.1", stack.proxy.port) == Probe("turboctl", turboctl.__version__)
    assert probe("127.0.0.1", stack.server.port) == Probe("other", None)  # llama-server itself


# --- router mode: two models by name, each with its own K/V types --------------------------

ROUTED = {"smol-t4": "turbo4", "smol-t3": "turbo3"}


@pytest.fixture(scope="module")
def router_stack(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """llama-server in router mode from a preset: the same GGUF under two names, one with turbo4
    K/V, one with turbo3; the proxy with router=True in front."""
    model = demo_model()
    tmp = tmp_path_factory.mktemp("ollama-router")
    lines = ["version = 1", "[*]", "c = 2048", "fa = on", "no-repack = true", "t = 1", "np = 1", "lv = 4"]
    for name, kv in ROUTED.items():
        lines += [f"[{name}]", f"model = {model}", f"ctk = {kv}", f"ctv = {kv}"]
    preset = tmp / "models.ini"
    preset.write_text("\n".join(lines) + "\n")
    args = ["--models-preset", str(preset), "--models-max", "2"]
    with LlamaServer(str(llama_build.binary("llama-server")), args, tmp / "router.log") as srv:
        sms = [served_model(name, model, context=2048, kv=kv, size_bytes=model.stat().st_size)
               for name, kv in ROUTED.items()]
        px = run_proxy(make_app(srv.url, sms, router=True), "127.0.0.1", 0)
        try:
            yield Stack(srv, px)
        finally:
            px.stop()
    srv.assert_clean_exit()


def _child_kv(log: str) -> dict[str, set[str]]:
    """From the router's log: the K/V types each model's instance logged (its lines carry the
    instance's port)."""
    ports = dict(re.findall(r"spawning server instance with name=(\S+) on port (\d+)", log))
    out: dict[str, set[str]] = {}
    for name, port in ports.items():
        out[name] = set(re.findall(rf"^\[{port}\] .*llama_kv_cache: .*K \((\w+)\):.*V \((\w+)\)", log, re.M)[0])
    return out


def test_router_models_by_name_with_their_own_kv(router_stack: Stack) -> None:
    c = client(router_stack)
    assert sorted(m.model for m in c.list().models) == sorted(ROUTED)
    assert c.ps().models == []  # nothing loaded yet
    assert c.show("smol-t4").capabilities == ["completion"]  # not loaded: the served model's own
    assert c.ps().models == []  # /api/show did not load it
    q = [{"role": "user", "content": "What is the capital of France?"}]
    answers = {}
    for name in ROUTED:
        r = c.chat(model=name, messages=q, options={"temperature": 0, "num_predict": 16})
        assert r.done and r.eval_count and re.search(r"\bParis\b", r.message.content or ""), (name, r)
        answers[name] = r.message.content
        assert name in [m.model for m in c.ps().models]
    streamed = "".join(p.message.content or "" for p in c.chat(model="smol-t3", messages=q, stream=True,
                                                                options={"temperature": 0, "num_predict": 16}))
    assert streamed == answers["smol-t3"]
    assert sorted(m.model for m in c.ps().models) == sorted(ROUTED)
    show = c.show("smol-t3")
    assert show.capabilities == ["completion"] and show.template and "im_start" in show.template
    assert _child_kv(router_stack.server.log()) == {name: {kv} for name, kv in ROUTED.items()}
    with pytest.raises(ollama.ResponseError) as exc:
        c.chat(model="smol-t2", messages=q)
    assert exc.value.status_code == 404


# --- embeddings: llama-server with --embeddings (and --pooling mean: SmolLM2 has no pooling type) ---


@pytest.fixture(scope="module")
def embed_stack(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _single_stack(llama_build, tmp_path_factory.mktemp("ollama-embed") / "llama-server.log",
                             ["--embeddings", "--pooling", "mean"], embeddings=True)


def _norm(v: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embed_with_the_official_client(embed_stack: Stack) -> None:
    c = client(embed_stack)
    one = c.embed(model=ALIAS, input="The capital of France is Paris.")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 576  # SmolLM2-135M: n_embd 576
    assert abs(_norm(one.embeddings[0]) - 1) < 1e-6  # llama-server normalises (L2), as Ollama does
    assert one.prompt_eval_count and one.prompt_eval_count > 5
    again = c.embed(model=ALIAS, input="The capital of France is Paris.")
    assert list(again.embeddings[0]) == list(one.embeddings[0])  # same input, same vector
    two = c.embed(model=ALIAS, input=["The capital of France is Paris.", "Bananas are yellow."])
    assert len(two.embeddings) == 2 and two.embeddings[0] != two.embeddings[1]
    assert max(abs(a - b) for a, b in zip(two.embeddings[0], one.embeddings[0], strict=True)) < 1e-4
    cut = c.embed(model=ALIAS, input="The capital of France is Paris.", dimensions=32)
    assert len(cut.embeddings[0]) == 32 and abs(_norm(cut.embeddings[0]) - 1) < 1e-6
    legacy = c.embeddings(model=ALIAS, prompt="The capital of France is Paris.")
    assert len(legacy.embedding) == 576 and _norm(legacy.embedding) > 2  # not normalised, as Ollama's legacy route
    unit = [x / _norm(legacy.embedding) for x in legacy.embedding]
    assert max(abs(a - b) for a, b in zip(unit, one.embeddings[0], strict=True)) < 1e-4


def test_embed_truncates_a_long_input(embed_stack: Stack) -> None:
    c = client(embed_stack)
    long = "word " * 700  # 701 tokens: more than one ubatch (512), which mean pooling needs
    r = c.embed(model=ALIAS, input=long)
    assert len(r.embeddings[0]) == 576 and r.prompt_eval_count == 512
    with pytest.raises(ollama.ResponseError) as exc:
        c.embed(model=ALIAS, input=long, truncate=False)
    assert exc.value.status_code == 400 and exc.value.error.startswith("the input length exceeds the context length")


def test_embeddings_server_still_chats(embed_stack: Stack) -> None:
    # b11312 with --embeddings serves completions too (older versions refused them)
    r = client(embed_stack).chat(model=ALIAS, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                 options={"temperature": 0, "num_predict": 32})
    assert re.search(r"\bParis\b", r.message.content or ""), r
    assert client(embed_stack).show(ALIAS).capabilities == ["completion", "embedding"]



# --- tool calls: SmolLM2 with a chat template that has tools (tests/data/ollama/chatml-tools.jinja) ---

TOOLS_TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "ollama" / "chatml-tools.jinja"


@pytest.fixture(scope="module")
def tools_stack(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _single_stack(llama_build, tmp_path_factory.mktemp("ollama-tools") / "llama-server.log",
                             ["--jinja", "--chat-template-file", str(TOOLS_TEMPLATE)])


def _weather_turns(city: str, result: str) -> list[dict[str, object]]:
    """One earlier exchange: the question, the assistant's call, the tool's result, the answer."""
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                              "arguments": {"city": city}}}]},
            {"role": "tool", "content": result, "tool_name": "get_weather"},
            {"role": "assistant", "content": f"It is {result.split(',')[0]} in {city}, {result.split(', ')[1]}."}]


# SmolLM2-135M calls the tool after two earlier exchanges that did (P("<") of its first token:
# 0.92 at temperature 0, measured); with a system + user prompt alone it answers in words
ASK = [*_weather_turns("Rome", "sunny, 25 C"), *_weather_turns("Berlin", "cloudy, 18 C"),
       {"role": "user", "content": "What is the weather in Paris?"}]


def test_tool_template_has_tools(tools_stack: Stack) -> None:
    props = requests.get(f"{tools_stack.server.url}/props", timeout=30).json()
    assert props["chat_template_caps"]["supports_tools"] is True
    assert client(tools_stack).show(ALIAS).capabilities == ["completion", "tools"]


def test_tool_call_with_the_official_client(tools_stack: Stack) -> None:
    c = client(tools_stack)
    opts = {"temperature": 0, "num_predict": 48}
    r = c.chat(model=ALIAS, messages=ASK, tools=[WEATHER], options=opts)
    assert r.message.tool_calls is not None, r.message
    assert [(t.function.name, t.function.arguments) for t in r.message.tool_calls] == [("get_weather",
                                                                                         {"city": "Paris"})]
    assert r.done and not r.message.content
    parts = list(c.chat(model=ALIAS, messages=ASK, tools=[WEATHER], options=opts, stream=True))
    calls = [(t.function.name, t.function.arguments) for p in parts for t in (p.message.tool_calls or [])]
    assert calls == [("get_weather", {"city": "Paris"})] and parts[-1].done
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    follow = [*ASK, {"role": "assistant", "content": "", "tool_calls": [call]},
              {"role": "tool", "content": "rainy, 12 C", "tool_name": "get_weather"}]
    f = c.chat(model=ALIAS, messages=follow, tools=[WEATHER], options=opts)
    assert not f.message.tool_calls and re.search(r"\brain", f.message.content or ""), f.message


def test_options_reach_llama_servers_sampler(stack: Stack) -> None:
    """The mapped options as llama-server took them: its /slots shows the last task's params."""
    opts = {"temperature": 0.3, "top_k": 17, "top_p": 0.8, "min_p": 0.04, "typical_p": 0.77, "repeat_penalty": 1.2,
            "repeat_last_n": 33, "presence_penalty": 0.4, "frequency_penalty": 0.3, "mirostat": 2,
            "mirostat_tau": 4.5, "mirostat_eta": 0.2, "num_keep": 5, "seed": 1234, "num_predict": 3,
            "num_thread": 64, "tfs_z": 0.5, "frobnicate": 1}
    r = client(stack).generate(model=ALIAS, prompt="Hello", options=opts)
    assert r.eval_count == 3
    params = [s.get("params", {}) for s in requests.get(f"{stack.server.url}/slots", timeout=30).json()
              if s.get("params", {}).get("repeat_last_n") == 33]
    assert len(params) == 1, "no slot ran the request"
    got = params[0]
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
                 "presence_penalty", "frequency_penalty", "mirostat", "mirostat_tau", "mirostat_eta", "n_keep",
                 "seed", "n_predict"):
        want = opts[{"n_keep": "num_keep", "n_predict": "num_predict"}.get(name, name)]
        assert got[name] == pytest.approx(want, rel=1e-6), name


def test_router_load_and_unload_as_ollama(router_stack: Stack) -> None:
    """Ollama's empty requests: load a model (the answer comes once it is loaded), unload it
    with keep_alive 0 -- done by llama-server's router."""
    c = client(router_stack)
    for name in ROUTED:
        assert c.generate(model=name, prompt="", keep_alive=0).done_reason == "unload"
    assert c.ps().models == []
    r = c.generate(model="smol-t3", prompt="")
    assert r.done_reason == "load" and r.load_duration and r.load_duration > 0
    assert [m.model for m in c.ps().models] == ["smol-t3"]  # loaded when the answer came
    assert c.chat(model="smol-t3", messages=[], keep_alive="0s").done_reason == "unload"
    deadline = time.monotonic() + 30
    while c.ps().models:  # the router stops the instance (SIGTERM, then its stop-timeout)
        assert time.monotonic() < deadline, c.ps()
        time.sleep(0.2)
