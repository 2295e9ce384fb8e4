"""Record llama-server's answers that the Ollama proxy's unit tests replay.

Usage: python tests/data/ollama/record.py URL   (URL of a running llama-server, e.g.
http://127.0.0.1:8080, serving SmolLM2-135M-Instruct under the alias ``smollm2``).
Writes the files next to this script; see README.md here for the server command."""

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
    main(sys.argv[1].rstrip("/"))
