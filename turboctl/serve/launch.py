"""``turboctl serve``: from a profile (or a model and a recipe) to a verified, running llama-server.

The order is the contract (every refusal happens before anything starts):

1. the build: the current one when it matches the pin and the series, else build first
   (``--no-build`` refuses instead); llama-server must be in it;
2. the model: a local, verified file (downloaded and verified if the profile says where from);
3. the preflight: the recipe resolved on the model's layers, every K/V pair through the
   serving gate and the model check (:mod:`turboctl.preflight`);
4. the fit: the projection of weights + KV + compute buffers by the built binary against this
   machine's budget; ``context: auto`` takes the largest that fits;
5. security (off-loopback needs an API key or the explicit opt-out) and the port;
6. start, wait for ``/health``, then prove from the server's own log that the per-layer
   types and the KV size are the plan's (a mismatch stops the server);
7. stay in the foreground until Ctrl-C / SIGTERM, then stop the server and everything it
   started.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from .. import llamalog, preflight, proc
from ..build import builder, manifest
from ..build import patches as patches_mod
from ..build.pins import load_pin
from ..errors import (
    EXIT_INTERRUPTED,
    BinaryMissing,
    InsecureBind,
    PortInUse,
    ServerFailed,
    TurboctlError,
    UsageError,
    VerificationError,
)
from ..kv.recipe import RecipePlan
from ..models.gguf import ModelInfo
from ..paths import Paths
from ..ui import UI
from . import command
from . import ollama as ollama_mod
from .command import ServeSettings
from .router import LogSplitter, RouterPlan

SERVER = "llama-server"
READY_TIMEOUT_S = 600.0
SCHEMA = "turboctl.serve/1"


# --------------------------------------------------------------------------- the build

def ensure_build(paths: Paths, ui: UI, *, no_build: bool, dry_run: bool = False) -> manifest.Manifest | None:
    """The current build when it is the pinned commit with this series; otherwise build it
    (say so), or refuse with ``--no-build``. ``dry_run`` never builds: None when a build would
    be needed."""
    current = manifest.load_current(paths)
    problems: list[str]
    if current is None:
        problems = [f"nothing built yet in {paths.home}"]
    else:
        problems = manifest.compare(current, load_pin(), patches_mod.load_series())
    if current is not None and not problems:
        if SERVER not in current.binaries:
            raise BinaryMissing(f"the current build ({current.cmake.build_dir}) has no {SERVER}",
                                hint="run turboctl build (it builds llama-server)")
        return current
    why = "; ".join(problems)
    if dry_run:
        ui.info(f"note: serve would build first ({why})")
        return None
    if no_build:
        raise BinaryMissing(f"no build of llama-server matches this turboctl ({why})",
                            hint="run turboctl build, or drop --no-build to let serve build it")
    ui.step(f"building first: {why}")
    plan = builder.make_plan(paths=paths)
    ui.kv("build plan", plan.rows())
    return builder.run(plan, ui)


def server_binary(m: manifest.Manifest) -> Path:
    try:
        return preflight.tool(m, SERVER)
    except TurboctlError as exc:
        raise BinaryMissing(exc.message, hint=exc.hint) from None


# --------------------------------------------------------------------------- security and the port

def read_key_file(path: Path) -> str:
    """The first non-empty, non-comment line of an API key file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--api-key-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--api-key-file {path}: cannot read it ({exc})") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise UsageError(f"--api-key-file {path}: no key in it (one key on a line; # starts a comment)")


def check_security(host: str, api_key: str | None, *, insecure: bool, ui: UI) -> None:
    """Off-loopback needs a key, or ``--insecure-no-api-key`` (a warning on every start)."""
    if command.is_loopback(host) or api_key:
        return
    if insecure:
        ui.warn(f"listening on {host} WITHOUT an API key (--insecure-no-api-key): anyone who can reach "
                "this machine can use the model")
        return
    raise InsecureBind(
        f"refusing to listen on {host} without an API key: anyone on the network could use the model",
        hint="set server.api_key_env in the profile (the name of a variable holding the key), pass "
             "--api-key-file FILE, listen on 127.0.0.1 (--host 127.0.0.1), or accept the risk with "
             "--insecure-no-api-key")


def check_port(host: str, port: int) -> None:
    """PortInUse when ``host:port`` cannot be bound right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = "" if host in ("0.0.0.0", "::") else host
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((bind_host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise port_in_use(host, port) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host}: not an address of this machine") from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def port_in_use(host: str, port: int) -> PortInUse:
    """PortInUse naming what holds the port when it answers like Ollama or like turboctl."""
    found = ollama_mod.probe({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port)
    where = f"{host}:{port}"
    if found is not None and found.kind == "ollama":
        version = f" {found.version}" if found.version else ""
        return PortInUse(
            f"{where} is already in use by an Ollama server{version}",
            hint="quit Ollama first (macOS: Quit Ollama in its menu-bar icon, or brew services stop ollama; "
                 "Linux: sudo systemctl stop ollama), or serve on another port (--port N) and point the "
                 "clients at it (OLLAMA_HOST=127.0.0.1:N)")
    if found is not None and found.kind == "turboctl":
        return PortInUse(f"{where} is already in use by another turboctl serve",
                         hint="stop it first (Ctrl-C where it runs; a login service: turboctl service uninstall "
                              "--profile NAME), or pick another port (--port N)")
    return PortInUse(f"{where} is already in use", hint="stop what listens there, or pick another port (--port N)")


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Front:
    """Where turboctl's Ollama proxy listens: the endpoint clients use (llama-server itself is then
    on a loopback port behind it)."""

    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return command.http_url(self.host, self.port)


def free_loopback_port() -> int:
    """A port on 127.0.0.1 nothing listens on right now (for llama-server behind the proxy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServePlan:
    """Everything decided before the server starts."""

    settings: ServeSettings
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    shown: str
    plan: RecipePlan | None
    info: ModelInfo | None
    context_source: str
    budget: str | None = None
    projection: Mapping[str, int] | None = None
    notes: tuple[str, ...] = ()
    front: Front | None = None
    backend: str = "cpu"
    details: Mapping[str, Any] | None = None  # the GGUF's ollama.DETAIL_KEYS (what Ollama clients are shown)
    workers: tuple[Mapping[str, Any], ...] = ()  # the RPC workers checked before the start (WorkerStatus.to_json)

    @property
    def endpoint(self) -> str:
        """Where clients connect: the proxy, or llama-server itself (``--direct``)."""
        return self.front.endpoint if self.front else self.settings.endpoint

    @property
    def name(self) -> str:
        """The model name clients send (llama-server's --alias)."""
        return self.settings.alias or self.settings.model.stem

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "schema": SCHEMA,
            "endpoint": self.endpoint,
            "ollama_api": self.front is not None,
            "llama_server": s.endpoint,
            "model": str(s.model),
            "alias": s.alias,
            "context": s.context,
            "context_source": self.context_source,
            "parallel": s.parallel,
            "kv": s.recipe.label,
            "kv_layers": self.plan.describe() if self.plan else None,
            "workers": [dict(w) for w in self.workers],
            "kv_bytes": sum(self.plan.kv_bytes(s.context)) if self.plan else None,
            "api_key": "set" if s.api_key else "none",
            "command": self.shown,
            "argv": self.argv,
            "environment": command.env_overrides(s),
            "budget": self.budget,
            "projection": dict(self.projection) if self.projection else None,
            "notes": list(self.notes),
        }


def make_serve_plan(settings: ServeSettings, binary: Path, *, plan: RecipePlan | None,
                    info: ModelInfo | None, context_source: str, budget: str | None = None,
                    projection: Mapping[str, int] | None = None, notes: tuple[str, ...] = (),
                    front: Front | None = None, backend: str = "cpu",
                    details: Mapping[str, Any] | None = None,
                    workers: tuple[Mapping[str, Any], ...] = ()) -> ServePlan:
    argv = command.server_argv(binary, settings)
    # a dry run: what is only decided at the start (auto context before the build or the model
    # exist, the loopback port behind the proxy) is shown as such
    unresolved = {"-c": ("0", "<auto>"), "--port": ("0", "<free loopback port>")}
    argv = [unresolved[argv[i - 1]][1] if i and argv[i - 1] in unresolved and a == unresolved[argv[i - 1]][0] else a
            for i, a in enumerate(argv)]
    return ServePlan(settings=settings, argv=argv, env=command.server_env(settings),
                     shown=command.display(argv, command.env_overrides(settings)), plan=plan, info=info,
                     context_source=context_source, budget=budget, projection=projection, notes=notes,
                     front=front, backend=backend, details=details, workers=workers)


def kv_summary(p: ServePlan) -> str:
    s = p.settings
    if p.plan is None:
        return s.recipe.label
    k, v = p.plan.kv_bytes(s.context)
    return (f"{s.recipe.label}: {(k + v) / 2**20:.1f} MiB at {s.context} tokens "
            f"({p.plan.bits_per_value:.2f} bits/value; {p.plan.describe()})")


# --------------------------------------------------------------------------- running it

def _health(url: str, api_key: str | None, timeout: float = 2.0) -> int | None:
    req = urllib.request.Request(f"{url}/health")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def _local_url(host: str, port: int) -> str:
    """Where turboctl itself reaches a server (loopback when it listens on every address)."""
    return command.http_url({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port)


Startable = ServePlan | RouterPlan


def _listen(p: Startable) -> tuple[str, int, str | None]:
    if isinstance(p, RouterPlan):
        return p.host, p.port, p.api_key
    return p.settings.host, p.settings.port, p.settings.api_key


class Stopped(Exception):
    """SIGINT or SIGTERM arrived (the server is being stopped)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread while the server runs; only
    the first one does (a second Ctrl-C while the server is being stopped does not interrupt
    the stop: it ends with SIGKILL after the grace time anyway)."""
    seen: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not seen:
            seen.append(signum)
            raise Stopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@dataclass
class RunningServer:
    plan: Startable
    child: proc.Background
    log: Path
    started: float
    proxy: ollama_mod.ProxyHandle | None = None
    children: LogSplitter | None = None  # router mode: the log of each model's llama-server

    @property
    def url(self) -> str:
        host, port, _ = _listen(self.plan)
        return _local_url(host, port)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def failure(self, message: str, hint: str | None = None, lines: list[str] | None = None) -> ServerFailed:
        lines = self.log_text().splitlines() if lines is None else lines
        lost = failed_worker(lines)
        if lost is not None:
            message = f"{message}: RPC worker {lost[0]} failed ({lost[1]})"
            hint = hint or f"look at the worker on {lost[0]} (its turboctl worker output and log), then serve again"
        return ServerFailed(message, hint=hint, log_path=self.log, details=proc.relevant_lines(lines))

    def stop(self) -> int | None:
        """The proxy first (no new requests), then llama-server (and the router's children)."""
        if self.proxy is not None:
            self.proxy.stop()
        return self.child.stop()


_WORKER_LOST = re.compile(r"RPC worker (\S+?):? (the connection failed during command \d+|closed the connection"
                          r"|is another build|answered HELLO)")


def failed_worker(lines: Sequence[str]) -> tuple[str, str] | None:
    """The RPC worker a llama-server log names as failed (patch "ggml-rpc: name the worker whose
    connection failed", and the HELLO refusals): (address, what happened), or None."""
    for line in reversed(lines):
        m = _WORKER_LOST.search(line)
        if m:
            return m.group(1), m.group(2)
    return None


def verify_log(p: ServePlan, log_text: str) -> None:
    """The server's own log against the plan: the K/V types of every layer, the layers that reuse
    another's cache, the bytes of each cache row (:func:`turboctl.llamalog.compare_plan`), and the
    total KV bytes against the projection the fit was made with. VerificationError otherwise."""
    assert p.plan is not None
    llamalog.compare_plan(p.plan, log_text)
    want = p.projection.get("kv") if p.projection else None
    have = llamalog.kv_contexts(log_text)[0].total_bytes
    if want is not None and have is not None and have != want:
        raise VerificationError(
            f"llama-server made {have} bytes of KV cache, the plan projected {want} (the context is not the "
            "one the fit was made for)", hint="report this with the serve log")


def verify_children(running: RunningServer) -> list[str]:
    """Router mode: every model load that became ready since the last call, checked against its
    own plan (:func:`verify_log` on that child's part of the log). The names verified; a mismatch
    raises VerificationError naming the model."""
    assert isinstance(running.plan, RouterPlan) and running.children is not None
    plans = {m.name: m.plan for m in running.plan.members}
    done = []
    for child in running.children.poll():
        p = plans.get(child.name)
        if p is not None and p.plan is not None:
            try:
                verify_log(p, child.text)
            except VerificationError as exc:
                raise VerificationError(f"model {child.name} (port {child.port}): {exc.message}",
                                        hint=exc.hint) from None
        child.verified = True
        done.append(child.name)
    return done


def exit_hint(code: int) -> str:
    if code == -signal.SIGILL:
        return ("it died of SIGILL (an instruction this CPU does not have); on some x86 virtual machines "
                "llama.cpp's CPU weight repacking does this: add --no-repack to the profile's server.args")
    return "see the log for why"


def _router_status(url: str, api_key: str | None) -> dict[str, dict[str, Any]]:
    """The router's ``GET /models``: model name -> its ``status`` object."""
    req = urllib.request.Request(f"{url}/models")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            doc = json.load(r)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for m in doc.get("data") or [] if isinstance(doc, dict) else []:
        if isinstance(m, dict) and isinstance(m.get("id"), str) and isinstance(m.get("status"), dict):
            out[m["id"]] = m["status"]
    return out


def _wait_startup_models(running: RunningServer, spin: Any, ready_timeout: float, poll: float) -> None:
    """Router mode: until every ``load-on-startup`` model is loaded and verified."""
    assert isinstance(running.plan, RouterPlan) and running.children is not None
    want = {m.name for m in running.plan.members if m.load_on_startup}
    verified: set[str] = set()
    while want - verified:
        code = running.child.poll()
        if code is not None:
            raise running.failure(f"llama-server (router) exited with code {code} while loading the models",
                                  hint=exit_hint(code))
        verified.update(verify_children(running))
        status = _router_status(running.url, running.plan.api_key)
        for name in sorted(want - verified):
            st = status.get(name, {})
            if st.get("failed"):
                child = running.children.latest(name)
                raise running.failure(
                    f"model {name} failed to load (exit code {st.get('exit_code')})",
                    hint=exit_hint(int(st.get("exit_code") or 0)) if st.get("exit_code") else "see the log for why",
                    lines=child.lines if child else None)
        elapsed = time.monotonic() - running.started
        if elapsed > ready_timeout:
            raise running.failure(f"models {', '.join(sorted(want - verified))} were not loaded within "
                                  f"{ready_timeout:.0f} s",
                                  hint="large models may need longer: --ready-timeout SECONDS")
        spin.update(elapsed, f"loading {', '.join(sorted(want - verified))}")
        time.sleep(poll)


def served_models(p: Startable) -> list[ollama_mod.ServedModel]:
    """What the Ollama API lists: each model's name, file, context, KV recipe and memory."""
    plans = [m.plan for m in p.members] if isinstance(p, RouterPlan) else [p]
    out = []
    for sp in plans:
        s = sp.settings
        total = int(sp.projection["total"]) if sp.projection else s.model.stat().st_size
        out.append(ollama_mod.served_model(
            sp.name, s.model, context=s.context, kv=s.recipe.label, size_bytes=total,
            size_vram=total if sp.backend in ("metal", "cuda") else 0,
            embeddings=bool({"--embedding", "--embeddings"} & set(s.extra_args)), meta=sp.details))
    return out


def _start_proxy(running: RunningServer) -> None:
    p = running.plan
    assert p.front is not None
    _, _, key = _listen(p)
    app = ollama_mod.make_app(running.url, served_models(p), api_key=key, router=isinstance(p, RouterPlan))
    try:
        running.proxy = ollama_mod.run_proxy(app, p.front.host, p.front.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise port_in_use(p.front.host, p.front.port) from None
        raise UsageError(f"cannot listen on {p.front.endpoint}: {exc.strerror or exc}") from None


def start(p: Startable, log: Path, ui: UI, *, ready_timeout: float = READY_TIMEOUT_S,
          poll: float = 0.25) -> RunningServer:
    """Start llama-server (one model, or the router), wait until healthy, check its log against
    the plan (router: every model loaded at start), then the Ollama proxy in front. On any failure
    everything started is stopped before the error is raised."""
    child = proc.Background(p.argv, log=log, env=p.env)
    running = RunningServer(plan=p, child=child, log=log, started=time.monotonic(),
                            children=LogSplitter(log) if isinstance(p, RouterPlan) else None)
    _, _, key = _listen(p)
    try:
        with ui.spinner(f"waiting for llama-server on {running.url}") as spin:
            while True:
                code = child.poll()
                if code is not None:
                    raise running.failure(f"llama-server exited with code {code} before it was ready",
                                          hint=exit_hint(code))
                status = _health(running.url, key)
                if status == 200:
                    break
                elapsed = time.monotonic() - running.started
                if elapsed > ready_timeout:
                    raise running.failure(f"llama-server was not ready within {ready_timeout:.0f} s",
                                          hint="a large model may need longer: --ready-timeout SECONDS")
                spin.update(elapsed, "loading the model" if status == 503 else "")
                time.sleep(poll)
            if isinstance(p, RouterPlan):
                _wait_startup_models(running, spin, ready_timeout, poll)
        if isinstance(p, ServePlan) and p.plan is not None:
            verify_log(p, running.log_text())
        if p.front is not None:
            _start_proxy(running)
    except BaseException:
        running.stop()
        raise
    return running


def serve_forever(p: Startable, log: Path, ui: UI, announce: Callable[[RunningServer], None], *,
                  ready_timeout: float = READY_TIMEOUT_S) -> int:
    """Start (see :func:`start`), announce, then block until the server exits by itself (an
    error) or SIGINT / SIGTERM arrives (everything is stopped, then 0). A signal during the
    start stops the server as well (exit code 130). In router mode each model loaded on demand
    is verified against its plan as soon as it is ready (a mismatch stops everything)."""
    running: RunningServer | None = None
    with stop_signals():  # kept until the server is stopped
        try:
            running = start(p, log, ui, ready_timeout=ready_timeout)
            announce(running)
            while True:
                code = running.child.wait(timeout=0.5)
                if code is not None:
                    running.stop()
                    raise running.failure(f"llama-server stopped unexpectedly (exit code {code})")
                if running.proxy is not None and not running.proxy.alive:
                    running.stop()
                    raise running.failure("the Ollama API proxy stopped unexpectedly (llama-server was stopped)")
                if running.children is not None:
                    try:
                        for name in verify_children(running):
                            ui.ok(f"model {name} loaded; its KV cache verified in its log")
                    except VerificationError:
                        running.stop()
                        raise
        except Stopped as sig:
            if running is None:
                ui.info(f"{sig}: llama-server stopped before it was ready")
                return EXIT_INTERRUPTED
            ui.info(f"{sig}: stopping llama-server (pid {running.child.pid})")
            code = running.stop()
            ui.ok(f"llama-server stopped (exit code {code})")
            return 0


def ready_document(running: RunningServer) -> dict[str, Any]:
    doc = running.plan.to_json()
    doc["status"] = "ready"
    doc["pid"] = running.child.pid
    doc["log"] = str(running.log)
    doc["ready_s"] = round(time.monotonic() - running.started, 2)
    if running.proxy is not None:
        doc["proxy_port"] = running.proxy.port
    return doc


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2)
