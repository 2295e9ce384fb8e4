"""Ollama's options: every one Ollama or its official clients know is mapped to llama-server's
field, checked, or ignored (OPTIONS says which and why); an unknown one is ignored and logged
once, as Ollama does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.ollamafakes import Upstream, client
from turboctl.serve.ollama import OPTION_TYPES, OPTIONS, ProxyHandle, option_table_markdown

pytestmark = pytest.mark.usefixtures("loopback")




def test_the_table_covers_the_official_clients_options() -> None:
    # every field of the official Python client's Options, and of Ollama's own (api/types.go)
    assert set(ollama.Options.model_fields) <= set(OPTIONS)
    ollamas = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict",
               "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n",
               "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop"}
    assert ollamas <= set(OPTIONS)
    for name, how in OPTIONS.items():
        assert how.startswith(("ignored: ", "checked: ")) or (how.isidentifier() and name in OPTION_TYPES), name
    assert set(OPTION_TYPES) == {n for n, how in OPTIONS.items() if not how.startswith("ignored: ")}


def test_every_mapped_option_reaches_llama_server(proxy: ProxyHandle, upstream: Upstream) -> None:
    sample: dict[str, Any] = {"integer": 3, "float": 0.25, "array": ["END"]}
    sent = {name: sample[OPTION_TYPES[name]] for name, how in OPTIONS.items() if how.isidentifier()}
    client(proxy).chat(model="smollm2", messages=[{"role": "user", "content": "x"}], options=sent, stream=False)
    body = upstream.requests[-1][1]
    for name, value in sent.items():
        assert body[OPTIONS[name]] == value, name
    assert body["max_tokens"] == 3 and body["n_keep"] == 3 and body["presence_penalty"] == 0.25


def test_ignored_options_are_not_sent(proxy: ProxyHandle, upstream: Upstream,
                                      caplog: pytest.LogCaptureFixture) -> None:
    ignored = {"num_batch": 512, "num_gpu": 99, "main_gpu": 0, "num_thread": 8, "use_mmap": True, "use_mlock": False,
               "numa": False, "low_vram": False, "f16_kv": True, "vocab_only": False, "logits_all": False,
               "embedding_only": False, "draft_num_predict": 4, "tfs_z": 1.0, "penalize_newline": True}
    assert set(ignored) == {n for n, how in OPTIONS.items() if how.startswith("ignored: ")}
    with caplog.at_level(logging.WARNING, logger="turboctl.serve.ollama"):
        r = requests.post(proxy.url + "/api/generate", json={"model": "smollm2", "prompt": "x", "stream": False,
                          "options": ignored}, timeout=10)
    assert r.status_code == 200
    body = upstream.requests[-1][1]
    assert not set(ignored) & set(body) and "n_batch" not in body and "n_threads" not in body
    assert caplog.records == []  # known to Ollama: ignored as documented, not warned about


def test_unknown_option_is_ignored_and_logged_once(proxy: ProxyHandle, upstream: Upstream,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="turboctl.serve.ollama"):
        for _ in range(3):
            r = requests.post(proxy.url + "/api/chat", json={"model": "smollm2", "stream": False, "messages": [
                {"role": "user", "content": "x"}], "options": {"frobnicate": 1, "temperature": 0}}, timeout=10)
            assert r.status_code == 200
        requests.post(proxy.url + "/api/generate", json={"model": "smollm2", "prompt": "x", "stream": False,
                      "options": {"wibble": "y"}}, timeout=10)
    assert "frobnicate" not in upstream.requests[-2][1] and upstream.requests[-2][1]["temperature"] == 0
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "turboctl.serve.ollama"]
    assert messages == ["option 'frobnicate' is not an Ollama option: ignored (as Ollama does; logged once)",
                        "option 'wibble' is not an Ollama option: ignored (as Ollama does; logged once)"]


@pytest.mark.parametrize(("options", "message"), [
    ({"top_k": "20"}, 'option "top_k" must be of type integer'),
    ({"seed": True}, 'option "seed" must be of type integer'),
    ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
    ({"stop": "\n"}, 'option "stop" must be of type array'),
    ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
    ({"num_ctx": 1.5e9}, "num_ctx 1500000000 is larger than the context model 'smollm2' is served with"),
])
def test_option_types_as_ollama_checks_them(proxy: ProxyHandle, upstream: Upstream, options: dict[str, Any],
                                            message: str) -> None:
    r = requests.post(proxy.url + "/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}],
                      "options": options}, timeout=10)
    assert r.status_code == 400 and r.json()["error"].startswith(message)
    assert upstream.requests == []


def test_ollamas_number_conversions(proxy: ProxyHandle, upstream: Upstream) -> None:
    # Ollama truncates a float given for an integer option, takes an integer for a float one
    client(proxy).generate(model="smollm2", prompt="x", stream=False,
                           options={"top_k": 20.9, "temperature": 1, "num_predict": -2, "stop": None})
    body = upstream.requests[-1][1]
    assert body["top_k"] == 20 and isinstance(body["top_k"], int)
    assert body["temperature"] == 1.0 and isinstance(body["temperature"], float)
    assert "max_tokens" not in body and "stop" not in body


def test_option_table_markdown() -> None:
    md = option_table_markdown()
    lines = md.splitlines()
    assert lines[:2] == ["| Ollama option | llama-server |", "|---|---|"] and len(lines) == 2 + len(OPTIONS)
    assert "| `repeat_last_n` | `repeat_last_n` |" in lines and "| `num_predict` | `max_tokens` |" in lines
    assert "| `tfs_z` | ignored: tail-free sampling was removed from llama.cpp (and from Ollama) |" in lines


def test_the_readme_has_the_option_table_the_proxy_applies() -> None:
    from turboctl.serve.ollama import option_table_markdown

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert option_table_markdown() in readme, "README's Ollama option table is stale: paste option_table_markdown()"
