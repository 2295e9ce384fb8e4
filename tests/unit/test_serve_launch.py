"""serve's command line, environment, security and port checks, key files, --ctx parsing, and
the background process runner (a real child: a short Python program, no llama.cpp)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from turboctl import proc
from turboctl.errors import InsecureBind, PortInUse, ServerFailed, UsageError, VerificationError
from turboctl.kv.recipe import parse_recipe
from turboctl.serve import command, fit, launch
from turboctl.serve.command import ServeSettings
from turboctl.ui import UI


def settings(**kw: object) -> ServeSettings:
    base: dict[str, object] = {"model": Path("/m/model.gguf"), "recipe": parse_recipe("turbo4/turbo3;0..1=q8_0"),
                               "context": 8192}
    base.update(kw)
    return ServeSettings(**base)  # type: ignore[arg-type]


def test_argv_has_the_plan_and_never_the_key() -> None:
    s = settings(api_key="sk-secret", parallel=4, batch_size=512, alias="demo",
                 generation_args=("--temp", "0.7"), extra_args=("--metrics",))
    argv = command.server_argv(Path("/b/llama-server"), s)
    assert argv == ["/b/llama-server", "--model", "/m/model.gguf", "-c", "8192", "-np", "4", "--kv-unified",
                    "-fa", "on", "-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", "0..1=q8_0", "-b", "512",
                    "--host", "127.0.0.1", "--port", "8080", "--fit", "off", "--cache-ram", "0", "-lv", "4",
                    "--alias", "demo", "--temp", "0.7", "--metrics"]
    assert "sk-secret" not in " ".join(argv)


def test_profile_args_replace_our_fit_and_cache_defaults() -> None:
    argv = command.server_argv(Path("/b/llama-server"), settings(extra_args=("-cram", "2048", "--fit", "on")))
    assert argv.count("--fit") == 1 and argv.count("--cache-ram") == 0
    assert argv[-4:] == ["-cram", "2048", "--fit", "on"]


def test_env_scrubs_inherited_kv_and_key_variables_and_sets_ours() -> None:
    base = {"PATH": "/bin", "TURBO_LAYER_ADAPTIVE": "7", "LLAMA_ARG_KV_LAYERS": "0=f16", "LLAMA_API_KEY": "old"}
    env = command.server_env(settings(api_key="sk-new", environment={"LLAMA_ARG_REPACK": "0"}), base)
    assert env == {"PATH": "/bin", "LLAMA_ARG_REPACK": "0", "LLAMA_API_KEY": "sk-new"}
    assert command.server_env(settings(), base) == {"PATH": "/bin"}


def test_display_redacts_the_key_and_quotes() -> None:
    s = settings(api_key="sk-secret", environment={"A": "x y"})
    shown = command.display(command.server_argv(Path("/b/llama-server"), s), command.env_overrides(s))
    assert shown.startswith("A='x y' LLAMA_API_KEY=<hidden> /b/llama-server --model")
    assert "sk-secret" not in shown


@pytest.mark.parametrize(("host", "loop"), [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.10", False),
                                            ("::", False), ("myhost.lan", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert command.is_loopback(host) is loop


def test_endpoint_brackets_ipv6() -> None:
    assert settings(host="::1", port=9000).endpoint == "http://[::1]:9000"


def test_security_refuses_open_bind_without_key() -> None:
    ui = UI(quiet=True)
    launch.check_security("127.0.0.1", None, insecure=False, ui=ui)
    launch.check_security("0.0.0.0", "k", insecure=False, ui=ui)
    with pytest.raises(InsecureBind) as err:
        launch.check_security("0.0.0.0", None, insecure=False, ui=ui)
    assert err.value.message == ("refusing to listen on 0.0.0.0 without an API key: anyone on the network "
                                 "could use the model")
    assert "--insecure-no-api-key" in (err.value.hint or "")
    assert err.value.exit_code == 23


def test_security_opt_out_warns(capsys: pytest.CaptureFixture[str]) -> None:
    launch.check_security("0.0.0.0", None, insecure=True, ui=UI())
    assert "WITHOUT an API key (--insecure-no-api-key)" in capsys.readouterr().err


def test_port_in_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse) as err:
            launch.check_port("127.0.0.1", port)
    assert err.value.message == f"127.0.0.1:{port} is already in use"
    assert err.value.exit_code == 19
    launch.check_port("127.0.0.1", port)  # free again


def test_port_check_unknown_address() -> None:
    with pytest.raises(UsageError, match=r"--host 203\.0\.113\.7: not an address of this machine"):
        launch.check_port("203.0.113.7", 8080)


def test_key_file(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("# my key\n\n  sk-abc  \nsecond\n")
    assert launch.read_key_file(f) == "sk-abc"
    f.write_text("# only a comment\n")
    with pytest.raises(UsageError, match=r"no key in it \(one key on a line; # starts a comment\)"):
        launch.read_key_file(f)
    with pytest.raises(UsageError, match=r"--api-key-file .*missing: no such file"):
        launch.read_key_file(tmp_path / "missing")


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("AUTO", "auto"), ("8192", 8192), ("32k", 32768),
                                             ("128K", 131072)])
def test_parse_context(text: str, value: object) -> None:
    assert command.parse_context(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "lots", "1.5k", ""])
def test_parse_context_bad(text: str) -> None:
    with pytest.raises(UsageError, match=r"expected auto or a positive number of tokens"):
        command.parse_context(text)


# ---------------------------------------------------------------- the background runner

SLEEPER = [sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(60)"]
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(60)"]
FAMILY = [sys.executable, "-c",
          "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
          "print('up', flush=True); time.sleep(60)"]


def _wait_for(log: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "(no log)"
        time.sleep(0.05)


def test_background_logs_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "bg.log"
    child = proc.Background(SLEEPER, log=log)
    _wait_for(log, "up")
    assert child.poll() is None and child.wait(0.1) is None
    assert child.stop() == -signal.SIGTERM
    assert not psutil.pid_exists(child.pid)


def test_background_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "bg.log"
    child = proc.Background(STUBBORN, log=log)
    _wait_for(log, "up")
    assert child.stop(grace=0.5) == -signal.SIGKILL


def test_background_stops_the_whole_group(tmp_path: Path) -> None:
    log = tmp_path / "bg.log"
    child = proc.Background(FAMILY, log=log)
    _wait_for(log, "up")
    grandchildren = psutil.Process(child.pid).children(recursive=True)
    assert grandchildren
    child.stop()
    time.sleep(0.2)
    assert not [g.pid for g in grandchildren if g.is_running() and g.status() != psutil.STATUS_ZOMBIE]


def test_start_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    s = settings(port=1)
    p = launch.ServePlan(settings=s, argv=[sys.executable, "-c", "print('error: bad model'); raise SystemExit(3)"],
                         env={}, shown="x", plan=None, info=None, context_source="requested")
    with pytest.raises(ServerFailed) as err:
        launch.start(p, tmp_path / "s.log", UI(quiet=True), ready_timeout=10, poll=0.05)
    assert err.value.message == "llama-server exited with code 3 before it was ready"
    assert err.value.log_path == tmp_path / "s.log"
    assert "error: bad model" in err.value.details


def test_start_times_out_and_stops_the_child(tmp_path: Path) -> None:
    s = settings(port=1)
    p = launch.ServePlan(settings=s, argv=SLEEPER, env={}, shown="x", plan=None, info=None,
                         context_source="requested")
    with pytest.raises(ServerFailed, match=r"llama-server was not ready within 1 s"):
        launch.start(p, tmp_path / "s.log", UI(quiet=True), ready_timeout=0.6, poll=0.05)
    pids = [pr.pid for pr in psutil.process_iter(["cmdline"])
            if pr.info["cmdline"] and pr.info["cmdline"][-1:] == SLEEPER[-1:]]
    assert pids == []


def test_sigill_hint_names_no_repack() -> None:
    assert "add --no-repack to the profile's server.args" in launch.exit_hint(-signal.SIGILL)
    assert launch.exit_hint(1) == "see the log for why"


@pytest.mark.parametrize(("text", "value"), [("24G", 24 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                             ("1000", 1000), ("64k", 65536), ("2 gb", 2 * 2**30)])
def test_parse_size(text: str, value: int) -> None:
    assert fit.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "12X"])
def test_parse_size_bad(text: str) -> None:
    with pytest.raises(UsageError, match=r"--max-memory .*: expected a size such as 24G, 512M or 1.5GiB"):
        fit.parse_size(text)


def test_max_memory_only_lowers_the_budget() -> None:
    machine = fit.Budget(8 * 2**30, "available RAM 9.00 GiB - margin 1.00 GiB")
    assert fit.capped(machine, 16 * 2**30, "16G") is machine
    low = fit.capped(machine, 2**30, "1G")
    assert (low.bytes, low.kind, low.source) == (2**30, "max-memory", "--max-memory 1G (this machine allows 8.00 GiB)")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_background_child_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    log, pidfile = tmp_path / "bg.log", tmp_path / "pid"
    script = ("import sys, time; from pathlib import Path; from turboctl import proc\n"
              f"c = proc.Background({SLEEPER!r}, log=Path({str(log)!r}))\n"
              f"Path({str(pidfile)!r}).write_text(str(c.pid)); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for(log, "up")
        child = int(pidfile.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the server outlived a SIGKILLed turboctl"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()


# answers /health; takes a second to stop on SIGTERM (so signals can arrive during the stop)
HEALTH_SERVER = (
    "import http.server, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")


def _serve_forever_script(tmp_path: Path, port: int) -> str:
    return (
        "import sys\nfrom pathlib import Path\n"
        "from turboctl.kv.recipe import parse_recipe\n"
        "from turboctl.serve import launch\nfrom turboctl.serve.command import ServeSettings\n"
        "from turboctl.ui import UI\n"
        f"s = ServeSettings(model=Path('m'), recipe=parse_recipe('f16'), context=1, port={port})\n"
        f"p = launch.ServePlan(settings=s, argv=[sys.executable, '-c', {HEALTH_SERVER!r}, '{port}'], env={{}},"
        " shown='x', plan=None, info=None, context_source='requested')\n"
        "def announce(r):\n    print('READY', r.child.pid, flush=True)\n"
        f"sys.exit(launch.serve_forever(p, Path({str(tmp_path / 's.log')!r}), UI(), announce, ready_timeout=30))\n")


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT, signal.SIGTERM]],
                         ids=["sigterm", "ctrl-c-twice"])
def test_serve_forever_stops_cleanly_on_signals(tmp_path: Path, signals: list[int]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc_ = subprocess.Popen([sys.executable, "-c", _serve_forever_script(tmp_path, port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc_.stdout is not None
        line = proc_.stdout.readline()
        assert line.startswith("READY"), proc_.stderr.read() if proc_.stderr else ""
        server = int(line.split()[1])
        for sig in signals:  # the second and third arrive while the server is being stopped
            proc_.send_signal(sig)
            time.sleep(0.2)
        assert proc_.wait(timeout=30) == 0
        out = (proc_.stdout.read() or "") + (proc_.stderr.read() if proc_.stderr else "")
        assert "stopping llama-server" in out and "llama-server stopped (exit code" in out
        assert "interrupted" not in out
        assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc_.poll() is None:
            proc_.kill()


# ---------------------------------------------------------------- the log check and a dying server

def _smol_plan() -> Any:
    import tempfile

    from tests.unit import kvmodels
    from turboctl.kv.layout import read_layout

    with tempfile.TemporaryDirectory() as tmp:
        _, layout = read_layout(kvmodels.llama(Path(tmp) / "m.gguf"))
    return parse_recipe("turbo4/turbo3;0..1+-2..-1=q8_0").resolve(layout)


def test_verify_log_checks_types_and_the_projected_kv_total() -> None:
    from tests.unit.test_llamalog import K_BYTES, SMOL_LOG, V_BYTES

    plan = _smol_plan()
    s = settings(recipe=plan.recipe)
    ok = launch.ServePlan(settings=s, argv=[], env={}, shown="", plan=plan, info=None, context_source="requested",
                          projection={"kv": K_BYTES + V_BYTES})
    launch.verify_log(ok, SMOL_LOG)
    off = launch.ServePlan(settings=s, argv=[], env={}, shown="", plan=plan, info=None, context_source="requested",
                           projection={"kv": K_BYTES + V_BYTES + 256})
    with pytest.raises(VerificationError) as err:
        launch.verify_log(off, SMOL_LOG)
    assert err.value.message == (f"llama-server made {K_BYTES + V_BYTES} bytes of KV cache, the plan projected "
                                 f"{K_BYTES + V_BYTES + 256} (the context is not the one the fit was made for)")
    uniform = parse_recipe("turbo4/turbo3").resolve(plan.layout)
    wrong = launch.ServePlan(settings=s, argv=[], env={}, shown="", plan=uniform, info=None,
                             context_source="requested")
    with pytest.raises(VerificationError, match=r"^the KV cache llama.cpp made differs from what was asked"):
        launch.verify_log(wrong, SMOL_LOG)


def _health_plan(port: int, script: str) -> launch.ServePlan:
    s = settings(port=port)
    return launch.ServePlan(settings=s, argv=[sys.executable, "-c", script, str(port)], env={}, shown="x",
                            plan=None, info=None, context_source="requested")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.usefixtures("loopback")
def test_a_log_mismatch_stops_the_server(tmp_path: Path) -> None:
    port = _free_port()
    p = _health_plan(port, HEALTH_SERVER)
    p = launch.ServePlan(**{**p.__dict__, "plan": _smol_plan()})
    with pytest.raises(VerificationError, match=r"has no 'llama_kv_cache: KV layers:' line"):
        launch.start(p, tmp_path / "s.log", UI(quiet=True), ready_timeout=30, poll=0.05)
    with pytest.raises(ConnectionRefusedError):  # stopped before the error was raised: nothing listens
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.usefixtures("loopback")
def test_a_server_that_dies_after_start_is_an_error(tmp_path: Path) -> None:
    port = _free_port()
    dies = HEALTH_SERVER.replace("serve_forever()", "handle_request(); sys.exit(5)")
    p = _health_plan(port, dies)
    with pytest.raises(ServerFailed) as err:
        launch.serve_forever(p, tmp_path / "s.log", UI(quiet=True), lambda r: None, ready_timeout=30)
    assert err.value.message == "llama-server stopped unexpectedly (exit code 5)"
    assert err.value.exit_code == 22


def _holder_error(app: Any) -> tuple[PortInUse, int]:
    """The PortInUse of check_port while ``app`` listens on a loopback port."""
    from turboctl.serve import ollama

    handle = ollama.run_proxy(app, "127.0.0.1", 0)
    try:
        with pytest.raises(PortInUse) as err:
            launch.check_port("127.0.0.1", handle.port)
    finally:
        handle.stop()
    return err.value, handle.port


@pytest.mark.usefixtures("loopback")
def test_a_taken_port_names_ollama_or_turboctl() -> None:
    from aiohttp import web

    from turboctl.serve import ollama

    ollama_app = web.Application()

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.3"})

    ollama_app.router.add_get("/api/version", version)
    err, port = _holder_error(ollama_app)
    assert err.message == f"127.0.0.1:{port} is already in use by an Ollama server 0.12.3"
    assert err.hint is not None and "brew services stop ollama" in err.hint
    assert "sudo systemctl stop ollama" in err.hint and "OLLAMA_HOST=127.0.0.1:N" in err.hint
    err, port = _holder_error(ollama.make_app("http://127.0.0.1:9", []))
    assert err.message == f"127.0.0.1:{port} is already in use by another turboctl serve"
