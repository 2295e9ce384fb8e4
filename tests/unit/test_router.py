"""Router mode (several profiles on one endpoint): the preset file written from each profile's
plan, how many models fit at once, the split of the router's log into each model's log, the
check of every load against its plan, and the start of a (stand-in) router."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.test_llamalog import K_BYTES, SMOL_LOG, V_BYTES
from tests.unit.test_serve_launch import _free_port, _smol_plan
from turboctl.errors import DoesNotFit, ServerFailed, UsageError, VerificationError
from turboctl.kv.recipe import parse_recipe
from turboctl.serve import launch, router
from turboctl.serve.command import ServeSettings
from turboctl.serve.request import ServeRequest, endpoint, prepare_router
from turboctl.serve.router import LogSplitter, at_once, make_plan, preset_options, split_log
from turboctl.ui import UI

BIN = Path("/opt/llama/bin/llama-server")


def plan(name: str, *, kv: str = "turbo4", context: int = 4096, total: int | None = 100 << 20,
         env: dict[str, str] | None = None, extra: tuple[str, ...] = (), recipe_plan: Any = None) -> launch.ServePlan:
    s = ServeSettings(model=Path(f"/models/{name}.gguf"), recipe=parse_recipe(kv), context=context, alias=name,
                      port=8080, extra_args=extra, environment=env or {})
    proj = {"weights": 1, "kv": K_BYTES + V_BYTES, "compute": 1, "total": total, "budget": 1 << 30} if total else None
    return launch.make_serve_plan(s, BIN, plan=recipe_plan, info=None, context_source="requested", projection=proj)


def rplan(plans: list[launch.ServePlan], budget: int | None = 1 << 30, port: int = 9999) -> router.RouterPlan:
    return make_plan(plans, BIN, host="127.0.0.1", port=port, api_key=None, preset_path=Path("/tmp/r.ini"),
                     budget="1.0 GiB (test)", budget_bytes=budget, front=None, base_env={})


# ---------------------------------------------------------------- the preset file

def test_preset_options_from_argv() -> None:
    argv = ["--model", "/m/a.gguf", "-c", "4096", "-np", "2", "--kv-unified", "-fa", "on", "--seed", "-1",
            "--host", "0.0.0.0", "--port", "8080", "--alias", "a", "--no-repack"]
    assert preset_options(argv, where="profile a") == [
        ("model", "/m/a.gguf"), ("c", "4096"), ("np", "2"), ("kv-unified", "true"), ("fa", "on"), ("seed", "-1"),
        ("no-repack", "true")]


def test_preset_refuses_what_the_ini_cannot_carry() -> None:
    with pytest.raises(UsageError) as err:
        preset_options(["--model", "/m/my;model.gguf"], where="profile a")
    assert err.value.message == ("profile a: --model '/m/my;model.gguf' cannot be written to the router's preset "
                                 "file (llama-server's INI reader takes ';' and '#' as comments and has no quoting)")
    with pytest.raises(UsageError, match=r"^profile a: -c is given twice \('4096' and '8192'\); a model's section"):
        preset_options(["-c", "4096", "-c", "8192"], where="profile a")
    with pytest.raises(UsageError, match=r"^profile a: cannot write 'stray' to the router's preset file"):
        preset_options(["stray"], where="profile a")


def test_at_once_takes_the_largest_first() -> None:
    assert at_once([5, 3, 2], 10) == 3
    assert at_once([5, 3, 2], 9) == 2  # 5 + 3 fit: any two do
    assert at_once([5, 3, 2], 7) == 1  # 5 + 3 do not, although 5 + 2 would
    assert at_once([5], 4) == 0


def test_router_plan_and_preset_text() -> None:
    a = plan("alpha", kv="turbo4", extra=("--no-repack",))
    b = plan("beta", kv="q8_0/turbo3;0..3=q8_0", context=2048)
    rp = rplan([a, b])
    assert rp.models_max == 2 and [m.load_on_startup for m in rp.members] == [True, True]
    assert rp.argv == [str(BIN), "--models-preset", "/tmp/r.ini", "--models-max", "2", "--host", "127.0.0.1",
                       "--port", "9999", "-lv", "4"]
    assert rp.preset.splitlines()[1:] == [
        "version = 1", "",
        "[alpha]", "model = /models/alpha.gguf", "c = 4096", "np = 1", "fa = on", "ctk = turbo4", "ctv = turbo4",
        "fit = off", "cache-ram = 0", "lv = 4", "no-repack = true", "load-on-startup = true", "",
        "[beta]", "model = /models/beta.gguf", "c = 2048", "np = 1", "fa = on", "ctk = q8_0", "ctv = turbo3",
        "kv-layers = 0..3=q8_0", "fit = off", "cache-ram = 0", "lv = 4", "load-on-startup = true"]
    doc = rp.to_json()
    assert doc["schema"] == "turboctl.serve.router/1" and doc["models_max"] == 2
    assert [r["model"] for r in doc["fit"]] == ["alpha", "beta"]


def test_fewer_at_once_than_models_loads_the_first_and_says_so() -> None:
    rp = rplan([plan("a", total=600 << 20), plan("b", total=500 << 20)], budget=1 << 30)
    assert rp.models_max == 1 and [m.load_on_startup for m in rp.members] == [True, False]
    assert rp.notes == ("1 of 2 models fit in memory at once (1.0 GiB (test)): a request for another unloads the "
                        "least recently used one first (a reload takes the model's load time)",)
    assert "load-on-startup" not in rp.preset.split("[b]")[1]


def test_router_refusals() -> None:
    with pytest.raises(UsageError, match=r"^model name 'gemma4:31b' cannot name a model of the router"):
        rplan([plan("gemma4:31b"), plan("b")])
    with pytest.raises(UsageError, match=r"^two profiles serve a model named 'a': clients choose a model by its"):
        rplan([plan("a"), plan("a")])
    with pytest.raises(UsageError) as err:
        rplan([plan("a", env={"X": "1"}), plan("b")])
    assert err.value.message.startswith("profiles a and b set different environment variables ([('X', '1')] vs [])")
    with pytest.raises(DoesNotFit, match=r"^model a needs 2.00 GiB, more than the budget 1.0 GiB \(test\)$"):
        rplan([plan("a", total=2 << 30), plan("b")])
    with pytest.raises(UsageError, match=r"^router mode needs two or more profiles$"):
        rplan([plan("a")])


def test_several_profiles_take_no_per_model_options(tmp_path: Path) -> None:
    from turboctl.paths import Paths

    with pytest.raises(UsageError, match=r"^with several profiles, --model, --kv, --ctx and --parallel do not"):
        prepare_router(ServeRequest(kv="turbo3"), [], Paths(tmp_path), UI(quiet=True))


def test_endpoint_options() -> None:
    assert endpoint(ServeRequest(ollama=True), None) == ("127.0.0.1", 11434)
    assert endpoint(ServeRequest(ollama=True, host="::1"), None) == ("::1", 11434)
    assert endpoint(ServeRequest(), None) == ("127.0.0.1", 8080)
    with pytest.raises(UsageError, match=r"^--ollama listens on Ollama's port 11434: drop --port 8080, or drop"):
        endpoint(ServeRequest(ollama=True, port=8080), None)
    with pytest.raises(UsageError, match=r"^--ollama serves the Ollama API on its port: it cannot be combined "
                                         r"with --direct$"):
        endpoint(ServeRequest(ollama=True, direct=True), None)


# ---------------------------------------------------------------- the router's log

def router_log(*loads: tuple[str, int, str]) -> str:
    """A router log as b11312 writes it: a spawn line per load, then the child's lines prefixed
    ``[port] `` (right-aligned in 5 columns)."""
    out = ["0.00.012.485 I srv  llama_server: listening on http://127.0.0.1:9999"]
    for name, port, text in loads:
        out.append(f"0.00.011.989 I srv          load: spawning server instance with name={name} on port {port}")
        out += [f"[{port:5d}] {line}" for line in text.splitlines()]
        out.append(f"[{port:5d}] 0.00.691.379 I srv  llama_server: listening on http://127.0.0.1:{port}")
    return "\n".join(out) + "\n"


def test_split_log_per_load_and_port_reuse() -> None:
    text = router_log(("a", 4242, "a1\na2"), ("b", 999, "b1"), ("c", 4242, "c1"))
    children = split_log(text)
    assert [(c.name, c.port, c.ready) for c in children] == [("a", 4242, True), ("b", 999, True), ("c", 4242, True)]
    assert children[0].lines[:2] == ["a1", "a2"] and children[2].lines[0] == "c1"
    assert children[1].lines[0] == "b1"  # "[  999]": the padding is not part of the line


def test_splitter_reads_as_the_log_grows(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    whole = router_log(("a", 4242, "x"))
    log.write_text(whole[:-30])  # the child's ready line is not complete yet
    s = LogSplitter(log)
    assert s.poll() == []
    with log.open("a") as f:
        f.write(whole[-30:])
    ready = s.poll()
    assert [c.name for c in ready] == ["a"] and ready[0].lines[-1].endswith("http://127.0.0.1:4242")


def test_every_load_is_checked_against_its_own_plan(tmp_path: Path) -> None:
    good = _smol_plan()
    wrong = parse_recipe("turbo4/turbo3").resolve(good.layout)
    rp = rplan([plan("a", kv=good.recipe.label, recipe_plan=good), plan("b", kv="turbo4/turbo3", recipe_plan=wrong)])
    log = tmp_path / "r.log"
    log.write_text(router_log(("a", 4242, SMOL_LOG)))
    running = launch.RunningServer(plan=rp, child=None, log=log, started=0, children=LogSplitter(log))  # type: ignore[arg-type]
    assert launch.verify_children(running) == ["a"]
    assert launch.verify_children(running) == []  # once per load
    with log.open("a") as f:
        f.write(router_log(("b", 5353, SMOL_LOG)))
    with pytest.raises(VerificationError, match=r"^model b \(port 5353\): the KV cache llama.cpp made differs"):
        launch.verify_children(running)


# ---------------------------------------------------------------- starting a (stand-in) router

# answers /health and /models like b11312's router; prints a spawn line and the child's log
FAKE_ROUTER = """
import http.server, json, sys
port, status, child = int(sys.argv[1]), sys.argv[2], sys.argv[3]
print("spawning server instance with name=a on port 4242", flush=True)
for line in open(child).read().splitlines():
    print(f"[ 4242] {line}", flush=True)
if status == "loaded":
    print("[ 4242] llama_server: listening on http://127.0.0.1:4242", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"status": "ok"} if self.path == "/health" else {"data": [
            {"id": "a", "status": {"value": "loaded"} if status == "loaded" else
             {"value": "unloaded", "failed": True, "exit_code": 1}},
            {"id": "b", "status": {"value": "unloaded"}}]}
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def fake_router(tmp_path: Path, status: str) -> router.RouterPlan:
    port = _free_port()
    child = tmp_path / "child.log"
    child.write_text(SMOL_LOG if status == "loaded" else "E llama_model_load: error loading model: bad\n")
    good = _smol_plan()
    rp = rplan([plan("a", kv=good.recipe.label, recipe_plan=good), plan("b", total=2 << 30)],
               budget=(2 << 30) + (50 << 20), port=port)
    return router.RouterPlan(**{**rp.__dict__, "argv": [sys.executable, "-c", FAKE_ROUTER, str(port), status,
                                                         str(child)]})


@pytest.mark.usefixtures("loopback")
def test_start_waits_for_the_startup_models_and_verifies_them(tmp_path: Path) -> None:
    rp = fake_router(tmp_path, "loaded")
    assert [m.load_on_startup for m in rp.members] == [True, False]
    running = launch.start(rp, tmp_path / "r.log", UI(quiet=True), ready_timeout=30, poll=0.05)
    try:
        assert running.children is not None and [c.verified for c in running.children.children] == [True]
    finally:
        running.stop()


@pytest.mark.usefixtures("loopback")
def test_a_model_that_fails_to_load_is_an_error_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerFailed) as err:
        launch.start(fake_router(tmp_path, "failed"), tmp_path / "r.log", UI(quiet=True), ready_timeout=30, poll=0.05)
    assert err.value.message == "model a failed to load (exit code 1)"
    assert any("error loading model: bad" in line for line in err.value.details)
