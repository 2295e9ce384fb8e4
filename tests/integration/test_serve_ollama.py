"""``turboctl serve`` as Ollama clients see it: the Ollama API on the served port (the proxy in
front of llama-server), several profiles on one endpoint through llama-server's router mode
(each model answering by its name with its own KV recipe, proven from each model's part of the
log), models loaded on demand beyond what fits at once, and ``--ollama`` on port 11434. Real
clients nobody here wrote: the official ``ollama`` library and the OpenAI client."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import psutil
import pytest

from turboctl import llamalog
from turboctl.build import manifest
from turboctl.serve.request import OLLAMA_PORT
from turboctl.serve.router import split_log

from .conftest import slow_home
from .serveproc import Serve, run_turboctl, smollm2, write_profile
from .server import free_port
from .test_ollama_proxy import ASK, TOOLS_TEMPLATE, WEATHER

pytestmark = pytest.mark.slow

T4 = "smol-t4"
MIXED = "smol-mixed"
MIXED_KV = "q8_0/turbo3;0..3=q8_0"


@pytest.fixture(scope="module")
def profiles(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = smollm2(slow_home())
    d = tmp_path_factory.mktemp("profiles")
    return (write_profile(d / "t4.yaml", T4, model, "turbo4", context=2048),
            write_profile(d / "mixed.yaml", MIXED, model, MIXED_KV, context=1024, parallel=2))


def children_of(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def kv_types_per_model(log: Path) -> dict[str, list[dict[int, tuple[str, str | None]]]]:
    """Each model's per-layer K/V types, from its own part of the router's log (one entry per load)."""
    out: dict[str, list[dict[int, tuple[str, str | None]]]] = {}
    for child in split_log(log.read_text()):
        out.setdefault(child.name, []).append(llamalog.kv_contexts(child.text)[0].table())
    return out


@pytest.fixture(scope="module")
def router(profiles: tuple[Path, Path]) -> Iterator[Serve]:
    with Serve(slow_home(), ["--profile", str(profiles[0]), "--profile", str(profiles[1]), "--no-build",
                             "--port", str(free_port())]) as s:
        yield s
    assert s.returncode == 0, s.stderr


def test_two_profiles_answer_by_name_each_with_its_own_kv(router: Serve) -> None:
    doc = router.doc
    assert doc["schema"] == "turboctl.serve.router/1" and doc["models_max"] == 2
    c = ollama.Client(host=router.url, timeout=120)
    assert sorted(m.model for m in c.list().models) == sorted([MIXED, T4])
    assert c.show(T4).modelinfo["llama.context_length"] == 2048
    assert c.show(MIXED).modelinfo["llama.context_length"] == 1024
    for name in (T4, MIXED):
        r = c.generate(model=name, prompt="1, 2, 3, 4, 5, 6,", raw=True, options={"temperature": 0, "num_predict": 3})
        assert re.match(r"\s*7\b", r.response), (name, r.response)
        chat = c.chat(model=name, messages=[{"role": "user", "content": "Say hello."}],
                      options={"temperature": 0, "num_predict": 8})
        assert chat.done and chat.message.content, name
    with pytest.raises(ollama.ResponseError) as err:
        c.chat(model="llama3", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404 and err.value.error == "model 'llama3' not found"
    o = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0, timeout=120)
    assert {T4, MIXED} <= {m.id for m in o.models.list().data}
    for name in (T4, MIXED):
        r2 = o.completions.create(model=name, prompt="Monday, Tuesday, Wednesday,", max_tokens=3, temperature=0)
        assert re.match(r"\s*(and\s+)?Thursday\b", r2.choices[0].text), (name, r2.choices[0].text)
    # the proof: each model's own llama-server made the KV cache of its own profile
    types = kv_types_per_model(Path(doc["log"]))
    t4 = types[T4][-1]
    mixed = types[MIXED][-1]
    assert set(t4.values()) == {("turbo4", "turbo4")}
    assert {layer: t for layer, t in mixed.items() if layer <= 3} == {i: ("q8_0", "q8_0") for i in range(4)}
    assert {t for layer, t in mixed.items() if layer > 3} == {("q8_0", "turbo3")}


def test_router_stop_leaves_no_process(profiles: tuple[Path, Path]) -> None:
    with Serve(slow_home(), ["--profile", str(profiles[0]), "--profile", str(profiles[1]), "--no-build",
                             "--port", str(free_port())]) as s:
        kids = children_of(int(s.doc["pid"]))
        assert len(kids) == 2, kids  # one llama-server per model
        assert s.stop() == 0
    left = [p for p in kids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"model servers left running: {left}"
    s.assert_no_orphan()


def test_one_at_a_time_loads_on_demand_and_verifies_each_load(profiles: tuple[Path, Path]) -> None:
    # a budget below both models together: one at a time, the other loaded when asked for
    with Serve(slow_home(), ["--profile", str(profiles[0]), "--profile", str(profiles[1]), "--no-build",
                             "--port", str(free_port()), "--max-memory", "200M"]) as s:
        assert s.doc["models_max"] == 1
        assert [r["load_on_startup"] for r in s.doc["fit"]] == [True, False]
        c = ollama.Client(host=s.url, timeout=120)
        assert [m.model for m in c.ps().models] == [T4]
        for name in (MIXED, T4):  # each request unloads the other model first
            r = c.generate(model=name, prompt="A, B, C, D, E,", raw=True, options={"temperature": 0, "num_predict": 2})
            assert re.match(r"\s*F\b", r.response), (name, r.response)
            assert [m.model for m in c.ps().models] == [name]
            # serve checks every load in its foreground loop (twice a second)
            s.wait_stderr(f"model {name} loaded; its KV cache verified in its log")
        assert s.stop() == 0
    loads = kv_types_per_model(Path(s.doc["log"]))
    assert [len(loads[T4]), len(loads[MIXED])] == [2, 1]
    assert s.stderr.count(f"model {MIXED} loaded; its KV cache verified in its log") == 1
    assert s.stderr.count(f"model {T4} loaded; its KV cache verified in its log") == 1  # the reload


def test_single_profile_speaks_ollama_on_the_served_port(profiles: tuple[Path, Path]) -> None:
    with Serve(slow_home(), ["--profile", str(profiles[0]), "--no-build", "--port", str(free_port())]) as s:
        assert s.doc["ollama_api"] is True and s.doc["llama_server"] != s.doc["endpoint"]
        c = ollama.Client(host=s.url, timeout=120)
        assert [m.model for m in c.list().models] == [T4]
        ps = c.ps().models
        assert [(m.model, m.context_length) for m in ps] == [(T4, 2048)]
        assert ps[0].size == s.doc["projection"]["total"]  # the projected weights + KV + compute buffers
        parts = list(c.chat(model=T4, messages=[{"role": "user", "content": "Count: 1, 2, 3"}], stream=True,
                            options={"temperature": 0, "num_predict": 12}))
        assert parts[-1].done and parts[-1].eval_count == 12 and parts[-1].done_reason == "length"
        g = c.generate(model=T4, prompt="Give a JSON object with a key 'a'.", format="json",
                       options={"temperature": 0, "num_predict": 40})
        if g.done_reason == "stop":
            assert isinstance(json.loads(g.response), dict)
        o = openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=120)
        r = o.completions.create(model=T4, prompt="10, 20, 30, 40,", max_tokens=3, temperature=0)
        assert re.match(r"\s*50\b", r.choices[0].text)
        assert s.stop() == 0
        s.assert_no_orphan()


def test_a_tool_call_through_turboctl_serve(tmp_path: Path) -> None:
    # SmolLM2's own template has no tools: the profile gives it our ChatML template with tools
    prof = write_profile(tmp_path / "tools.yaml", "smol-tools", smollm2(slow_home()), "turbo4", context=2048,
                         args=["--jinja", "--chat-template-file", str(TOOLS_TEMPLATE)])
    with Serve(slow_home(), ["--profile", str(prof), "--no-build", "--port", str(free_port())]) as s:
        c = ollama.Client(host=s.url, timeout=120)
        assert c.show("smol-tools").capabilities == ["completion", "tools"]
        r = c.chat(model="smol-tools", messages=ASK, tools=[WEATHER], options={"temperature": 0, "num_predict": 48})
        assert r.message.tool_calls is not None, r.message
        assert [(t.function.name, t.function.arguments) for t in r.message.tool_calls] == [
            ("get_weather", {"city": "Paris"})]
        assert s.stop() == 0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_ollama_port_and_who_holds_it(profiles: tuple[Path, Path]) -> None:
    if not _port_free(OLLAMA_PORT):
        pytest.skip(f"port {OLLAMA_PORT} is taken on this machine")
    with Serve(slow_home(), ["--profile", str(profiles[0]), "--no-build", "--ollama"]) as s:
        assert s.doc["endpoint"] == f"http://127.0.0.1:{OLLAMA_PORT}"
        # a client with no host configured looks at Ollama's default address
        assert [m.model for m in ollama.Client(timeout=60).list().models] == [T4]
        second = run_turboctl(slow_home(), "serve", "--profile", str(profiles[0]), "--no-build", "--ollama",
                              timeout=120)
        assert second.returncode == 19, second.stderr
        assert f"127.0.0.1:{OLLAMA_PORT} is already in use by another turboctl serve" in second.stderr
        assert s.stop() == 0


def test_doctor_what_if_for_several_profiles_is_what_serve_used(router: Serve, profiles: tuple[Path, Path]) -> None:
    res = run_turboctl(slow_home(), "doctor", "--profile", str(profiles[0]), "--profile", str(profiles[1]), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == "turboctl.whatif.several/1" and doc["at_once"] == router.doc["models_max"] == 2
    assert [(r["kv"], r["context"], r["total_bytes"]) for r in doc["together"]] == [
        (r["kv"], r["context"], r["total_bytes"]) for r in router.doc["fit"]]
