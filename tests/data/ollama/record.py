"""Record llama-server's answers that the Ollama proxy's unit tests replay.

Usage: python tests/data/ollama/record.py URL [WHAT]   (URL of a running llama-server, e.g.
http://127.0.0.1:8080, serving SmolLM2-135M-Instruct under the alias ``smollm2``; WHAT is what
that server was started for: ``chat`` (the default), ``embeddings`` (``--embeddings --pooling
mean``), ``no-pooling`` (``--embeddings`` alone), ``no-embeddings`` (neither) or ``tools``
(``--jinja --chat-template-file tests/data/ollama/chatml-tools.jinja``)).
Writes the files next to this script; see README.md here for the server commands."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0}
RAW = {"model": "smollm2", "prompt": "1, 2, 3, 4,", "max_tokens": 6, "temperature": 0}


def post(url: str, body: dict[str, object]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        data: bytes = r.read()
        return data


EMBED = {"model": "smollm2", "input": ["hello", "The capital of France is Paris."], "encoding_format": "float"}
LEGACY = {"model": "smollm2", "input": "hello", "encoding_format": "float", "embd_normalize": -1}
TOO_LONG = {"model": "smollm2", "input": "word " * 700, "encoding_format": "float"}


def embeddings(base: str) -> None:
    for name, body, expect in [("embeddings", EMBED, 200), ("embeddings-raw", LEGACY, 200),
                               ("error-embd-too-large", TOO_LONG, 500)]:
        status, raw = post(f"{base}/v1/embeddings", body)
        assert status == expect, (status, raw)
        (HERE / f"{name}.json").write_text(raw.decode() + "\n")


def embeddings_refused(base: str, name: str, expect: int) -> None:
    status, raw = post(f"{base}/v1/embeddings", EMBED)
    assert status == expect, (status, raw)
    (HERE / f"{name}.json").write_text(raw.decode() + "\n")


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                          "required": ["city"]}}}


def _turns(city: str, result: str, answer: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": f"call_{city}", "type": "function", "function": {
                "name": "get_weather", "arguments": json.dumps({"city": city})}}]},
            {"role": "tool", "content": result, "tool_call_id": f"call_{city}"},
            {"role": "assistant", "content": answer}]


TOOLS = {"model": "smollm2", "tools": [WEATHER], "max_tokens": 48, "temperature": 0,
         "messages": [*_turns("Rome", "sunny, 25 C", "It is sunny in Rome, 25 C."),
                      *_turns("Berlin", "cloudy, 18 C", "It is cloudy in Berlin, 18 C."),
                      {"role": "user", "content": "What is the weather in Paris?"}]}


def tools(base: str) -> None:
    status, raw = post(f"{base}/v1/chat/completions", TOOLS)
    assert status == 200 and b"tool_calls" in raw, raw
    (HERE / "chat-tools.json").write_text(raw.decode() + "\n")
    status, raw = post(f"{base}/v1/chat/completions", {**TOOLS, "stream": True})
    assert status == 200, raw
    (HERE / "chat-tools.sse").write_bytes(raw)


def main(base: str) -> None:
    props = json.loads(get(f"{base}/props"))
    props["model_path"] = "model.gguf"  # the recording machine's path is of no use to the tests
    (HERE / "props.json").write_text(json.dumps(props, indent=1) + "\n")
    (HERE / "models.json").write_text(get(f"{base}/v1/models").decode() + "\n")
    for name, route, body in [("chat", "/v1/chat/completions", CHAT), ("completions", "/v1/completions", RAW)]:
        status, raw = post(f"{base}{route}", body)
        assert status == 200, raw
        (HERE / f"{name}.json").write_text(raw.decode() + "\n")
        status, raw = post(f"{base}{route}", {**body, "stream": True})
        assert status == 200, raw
        (HERE / f"{name}.sse").write_bytes(raw)
    status, raw = post(f"{base}/v1/chat/completions", {"messages": "not a list"})
    assert status == 400, raw
    (HERE / "error-400.json").write_text(raw.decode() + "\n")


if __name__ == "__main__":
    url, what = sys.argv[1].rstrip("/"), (sys.argv[2] if len(sys.argv) > 2 else "chat")
    if what == "chat":
        main(url)
    elif what == "embeddings":
        embeddings(url)
    elif what == "no-pooling":
        embeddings_refused(url, "error-embd-pooling-none", 400)
    elif what == "no-embeddings":
        embeddings_refused(url, "error-embd-off", 501)
    elif what == "tools":
        tools(url)
    else:
        sys.exit(f"unknown WHAT {what!r}: chat, embeddings, no-pooling, no-embeddings or tools")
