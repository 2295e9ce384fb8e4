"""The proxy in front of llama-server in router mode (several models by name): a stand-in router
that answers /models, /props?model=NAME and the chat route as b11312's router does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests
from aiohttp import web

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.ollamafakes import DATA, client, free_port, served, serving
from turboctl.serve.ollama import ProxyHandle, make_app, run_proxy

pytestmark = pytest.mark.usefixtures("loopback")


def _err(status: int, message: str) -> web.Response:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return web.json_response({"error": {"code": status, "message": message, "type": kind}}, status=status)


class Router:
    """llama-server's router as the proxy sees it: models (name -> status), each with its own
    /props; ``GET /props?model=`` with ``autoload=false`` answers 400 "model is not loaded" for
    an unloaded model, a POST naming a model loads it."""

    def __init__(self, tools: dict[str, bool]) -> None:
        self.status = {name: "unloaded" for name in tools}
        self.tools = tools
        self.asked: list[tuple[str, dict[str, str]]] = []
        self.stopping: dict[str, int] = {}  # an unloaded instance still listed as loaded this many times
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/models", self.models)
        app.router.add_get("/props", self.props)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/models/unload", self.unload)
        return app

    async def unload(self, request: web.Request) -> web.Response:
        name = (await request.json()).get("model", "")
        self.asked.append((request.path, {"model": name}))
        if name not in self.status:
            return _err(400, "model is not found")
        if self.status[name] not in ("loaded", "loading", "sleeping"):
            return _err(400, "model is not running")
        self.status[name] = "unloaded"
        self.stopping[name] = 3  # the router answers at once; the instance takes a while to stop
        return web.json_response({"success": True})

    async def models(self, request: web.Request) -> web.Response:
        self.asked.append((request.path, dict(request.query)))
        shown = dict(self.status)
        for name, left in self.stopping.items():
            if left > 0:
                shown[name] = "loaded"
                self.stopping[name] = left - 1
        return web.json_response({"object": "list", "data": [
            {"id": name, "aliases": [f"{name}-alias"], "object": "model", "status": {"value": st, "args": []}}
            for name, st in shown.items()]})

    async def props(self, request: web.Request) -> web.Response:
        self.asked.append((request.path, dict(request.query)))
        name = request.query.get("model", "")
        if not name:
            return web.json_response({"role": "router", "max_instances": 4, "models_autoload": True})
        if name not in self.status:
            return _err(400, f"model '{name}' not found")
        if self.status[name] != "loaded":
            if request.query.get("autoload") in ("false", "0"):
                return _err(400, "model is not loaded")
            self.status[name] = "loaded"
        props = json.loads((DATA / "props.json").read_text())
        props["chat_template_caps"]["supports_tools"] = self.tools[name]
        props["chat_template"] = f"template of {name}"
        return web.json_response(props)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        name = body.get("model", "")
        if name not in self.status:
            return _err(400, f"model '{name}' not found")
        self.status[name] = "loaded"
        return web.Response(body=(DATA / "chat.json").read_bytes(), content_type="application/json")


@pytest.fixture()
def router() -> Router:
    return Router({"alpha": True, "beta": False})


@pytest.fixture()
def proxy(tmp_path: Path, router: Router) -> Iterator[ProxyHandle]:
    models = [served(tmp_path, name="alpha", kv="turbo4"),
              served(tmp_path, name="beta", kv="turbo3", context=2048, capabilities=("completion", "tools"))]
    with serving(router.app(), models, router=True) as px:
        yield px


def _props_asked(router: Router) -> list[dict[str, str]]:
    return [q for path, q in router.asked if path == "/props"]


def test_show_never_loads_a_model(proxy: ProxyHandle, router: Router) -> None:
    c = client(proxy)
    a = c.show("alpha")
    assert a.capabilities == ["completion"]  # not loaded: the ServedModel's own
    assert a.template == ""
    b = c.show("beta")
    assert b.capabilities == ["completion", "tools"]
    assert b.modelinfo is not None and b.modelinfo["llama.context_length"] == 2048
    assert _props_asked(router) == [{"model": "alpha", "autoload": "false"}, {"model": "beta", "autoload": "false"}]
    assert router.status == {"alpha": "unloaded", "beta": "unloaded"}
    c.show("alpha")
    assert len(_props_asked(router)) == 3  # not cached while it did not answer


def test_show_of_a_loaded_model_takes_its_props_once(proxy: ProxyHandle, router: Router) -> None:
    c = client(proxy)
    for name in ("alpha", "beta"):
        c.chat(model=name, messages=[{"role": "user", "content": "x"}], stream=False)
    assert [b["model"] for b in router.bodies] == ["alpha", "beta"]  # routed by the model field
    a, b = c.show("alpha"), c.show("beta")
    assert a.capabilities == ["completion", "tools"] and a.template == "template of alpha"
    # beta's own template has no tools: /props decides over the ServedModel's guess once it answered
    assert b.capabilities == ["completion"] and b.template == "template of beta"
    c.show("alpha")
    c.show("beta:latest")
    assert len(_props_asked(router)) == 2  # cached per model once it answered 200


def test_ps_lists_the_loaded_models_only(proxy: ProxyHandle, router: Router) -> None:
    c = client(proxy)
    assert c.ps().models == []
    c.chat(model="beta", messages=[{"role": "user", "content": "x"}], stream=False)
    ps = c.ps().models
    assert [(m.model, m.context_length) for m in ps] == [("beta", 2048)]
    router.status["alpha"] = "loading"
    assert [m.model for m in c.ps().models] == ["beta"]
    router.status["alpha"] = "loaded"
    assert sorted(m.model for m in c.ps().models) == ["alpha", "beta"]
    router.status["beta"] = "sleeping"  # weights released after an idle time
    assert [m.model for m in c.ps().models] == ["alpha"]
    assert [m.model for m in c.list().models] == ["alpha", "beta"]  # /api/tags: every model


def test_ps_by_alias(tmp_path: Path) -> None:
    # the router lists a preset under its id and its aliases; the served name may be either
    router = Router({"alpha": False})
    router.status["alpha"] = "loaded"
    with serving(router.app(), [served(tmp_path, name="alpha-alias")], router=True) as px:
        assert [m.model for m in client(px).ps().models] == ["alpha-alias"]


def test_ps_when_the_router_does_not_answer(tmp_path: Path) -> None:
    px = run_proxy(make_app(f"http://127.0.0.1:{free_port()}", [served(tmp_path)], router=True), "127.0.0.1", 0)
    try:
        r = requests.get(px.url + "/api/ps", timeout=10)
        assert r.status_code == 502 and "did not list its models" in r.json()["error"]
    finally:
        px.stop()


def test_single_mode_falls_back_to_the_served_capabilities(tmp_path: Path) -> None:
    state = {"up": False}
    app = web.Application()

    async def props(request: web.Request) -> web.Response:
        if not state["up"]:
            return _err(503, "Loading model")
        doc = json.loads((DATA / "props.json").read_text())
        doc["chat_template_caps"]["supports_tools"] = True
        return web.json_response(doc)

    app.router.add_get("/props", props)
    with serving(app, [served(tmp_path, capabilities=("completion", "insert"))]) as px:
        c = client(px)
        assert c.show("smollm2").capabilities == ["completion", "insert"]
        state["up"] = True
        assert c.show("smollm2").capabilities == ["completion", "insert", "tools"]
        state["up"] = False
        assert c.show("smollm2").capabilities == ["completion", "insert", "tools"]  # cached


def test_embedding_capability(tmp_path: Path) -> None:
    with serving(Router({"smollm2": False}).app(), [served(tmp_path, embeddings=True)], router=True) as px:
        assert client(px).show("smollm2").capabilities == ["completion", "embedding"]


def test_empty_requests_load_and_unload_through_the_router(proxy: ProxyHandle, router: Router) -> None:
    c = client(proxy)
    r = c.generate(model="alpha", prompt="")
    assert r.done and r.done_reason == "load" and r.load_duration is not None and r.load_duration > 0
    assert router.status["alpha"] == "loaded" and router.asked[-1] == ("/props", {"model": "alpha",
                                                                                  "autoload": "true"})
    assert c.chat(model="beta", messages=[]).done_reason == "load" and router.status["beta"] == "loaded"
    assert c.generate(model="alpha", prompt="", keep_alive=0).done_reason == "unload"
    assert router.status["alpha"] == "unloaded" and ("/models/unload", {"model": "alpha"}) in router.asked
    assert router.stopping["alpha"] == 0  # the answer waited until the instance was gone
    assert [m.model for m in c.ps().models] == ["beta"]
    assert c.generate(model="alpha", prompt="", keep_alive="0s").done_reason == "unload"  # not running: fine
    assert c.chat(model="beta", messages=[], keep_alive="0m").done_reason == "unload"
    assert router.status == {"alpha": "unloaded", "beta": "unloaded"}
    assert c.generate(model="beta", prompt="", keep_alive="1h30m").done_reason == "load"
    assert router.bodies == []  # nothing was generated


def test_keep_alive_in_single_mode(tmp_path: Path) -> None:
    from tests.unit.ollamafakes import Upstream

    up = Upstream()
    with serving(up.app(), [served(tmp_path)]) as px:
        c = client(px)
        assert c.generate(model="smollm2", prompt="", keep_alive="5m").done_reason == "load"
        assert c.generate(model="smollm2", prompt="", keep_alive=-1).done_reason == "load"
        with pytest.raises(ollama.ResponseError) as exc:
            c.generate(model="smollm2", prompt="", keep_alive=0)
        assert exc.value.status_code == 501
        assert exc.value.error.startswith("model 'smollm2' cannot be unloaded: it is the model turboctl serves")
        c.generate(model="smollm2", prompt="x", keep_alive=0, stream=False)  # a request with a prompt: answered
        assert up.requests and "keep_alive" not in up.requests[-1][1]
        r = requests.post(px.url + "/api/generate", json={"model": "smollm2", "prompt": "", "keep_alive": "soon"},
                          timeout=10)
        assert r.status_code == 400 and r.json()["error"].startswith("keep_alive must be a number of seconds or a "
                                                                     'duration such as "5m"')
