"""``turboctl worker``: the patched RPC worker (llama.cpp's rpc-server) of the current build.

It starts only when the build's backend self-test passed (a worker holds KV caches of turbo
types for a remote llama-server, so its kernels must be the tested ones), reports that self-test
record in its HELLO (``GGML_RPC_SELF_TEST``), listens on loopback unless told otherwise (the RPC
protocol has no authentication and no encryption), and is ready once turboctl's own HELLO with
this build's identity succeeds. Then it prints the ``--rpc`` address for the serving side.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import proc
from ..build import cmake, manifest
from ..build import selftest as selftest_mod
from ..build.manifest import Manifest
from ..errors import BinaryMissing, GateRefused, InsecureBind, UsageError, WorkerError
from ..serve.command import is_loopback
from ..serve.launch import Stopped, check_port, stop_signals
from ..ui import UI
from . import identity as ident
from . import protocol
from .check import build_identity

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50052
READY_TIMEOUT_S = 60.0
SCHEMA = "turboctl.worker/1"
SECURITY_WARNING = (
    "the RPC protocol has no authentication and no encryption: anyone who can reach this port can "
    "allocate memory and run computations here, and read what passes through. Use it on a private "
    "network only, or keep the worker on 127.0.0.1 and reach it through an SSH tunnel.")


def worker_binary(m: Manifest) -> Path:
    info = m.binaries.get(m.rpc.worker if m.rpc else cmake.RPC_SERVER)
    if info is None or not Path(info.path).is_file():
        raise BinaryMissing(f"this build has no RPC worker ({cmake.RPC_SERVER})", hint="run turboctl build")
    return Path(info.path)


def require_selftest(m: Manifest) -> manifest.Selftest:
    """The build's self-test record when it passed on the binaries on disk; GateRefused otherwise."""
    record = m.selftest
    if record is None:
        raise GateRefused("the backend self-test of this build never ran: a worker starts only after it passed",
                          hint="run turboctl selftest")
    stale = selftest_mod.stale_reason(record, m.backend, m.binaries)
    if stale:
        raise GateRefused(f"the self-test record does not cover the binaries on disk: {stale}",
                          hint="run turboctl selftest")
    if record.status != "pass":
        raise GateRefused(f"the backend self-test did not pass ({selftest_mod.describe(record)}): a worker "
                          "would hold turbo KV caches with kernels that failed it", hint="run turboctl selftest")
    return record


def self_test_text(record: manifest.Selftest) -> str:
    """The record a worker reports at HELLO (at most 95 bytes): "pass 726/726 CPU 2026-12-03T07:07:57+00:00"."""
    c = record.counts
    return f"{record.status} {c.passed}/{c.total} {record.device} {record.when}"[:ident.SELF_TEST_LEN - 1]


@dataclass(frozen=True)
class WorkerPlan:
    binary: Path
    host: str
    port: int
    threads: int | None
    identity: ident.BuildIdentity
    self_test: str
    devices: tuple[str, ...] = ()

    def command(self) -> list[str]:
        cmd = [str(self.binary), "-H", self.host, "-p", str(self.port)]
        if self.threads:
            cmd += ["-t", str(self.threads)]
        if self.devices:
            cmd += ["-d", ",".join(self.devices)]
        return cmd

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "GGML_RPC_SELF_TEST": self.self_test}

    @property
    def remote(self) -> bool:
        return not is_loopback(self.host)


def make_plan(m: Manifest, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, threads: int | None = None,
              allow_remote: bool = False, devices: Sequence[str] = ()) -> WorkerPlan:
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: expected 1 to 65535")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: expected at least 1")
    if not is_loopback(host) and not allow_remote:
        raise InsecureBind(f"refusing to bind the RPC worker to {host}: {SECURITY_WARNING}",
                           hint=f"pass --allow-remote to accept that on a private network, or keep --host "
                                f"127.0.0.1 and tunnel: ssh -N -L {port}:127.0.0.1:{port} USER@THIS-MACHINE on "
                                f"the serving machine, then serve --rpc 127.0.0.1:{port}")
    record = require_selftest(m)
    return WorkerPlan(binary=worker_binary(m), host=host, port=port, threads=threads,
                      identity=build_identity(m), self_test=self_test_text(record), devices=tuple(devices))


def rpc_addresses(host: str, port: int) -> list[str]:
    """The ``--rpc`` address(es) that reach a worker bound to ``host``: itself, or for a wildcard
    bind this machine's outward address (the one its default route uses) and its host name."""
    if host not in ("0.0.0.0", "::", ""):
        return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    out = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source address
            out.append(f"{s.getsockname()[0]}:{port}")
    except OSError:
        pass
    out.append(f"{socket.gethostname()}:{port}")
    return out


@dataclass
class RunningWorker:
    plan: WorkerPlan
    child: proc.Background
    log: Path
    hello: protocol.Hello
    devices: list[protocol.DeviceMemory]
    ready_s: float

    def to_json(self) -> dict[str, Any]:
        p = self.plan
        return {"schema": SCHEMA, "status": "ready", "pid": self.child.pid, "host": p.host, "port": p.port,
                "rpc": rpc_addresses(p.host, p.port), "command": p.command(), "log": str(self.log),
                "identity": self.hello.identity.to_json(), "protocol": ".".join(map(str, self.hello.version)),
                "devices": [{"index": i, "free_bytes": d.free, "total_bytes": d.total}
                            for i, d in enumerate(self.devices)],
                "ready_s": round(self.ready_s, 2)}


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def start(plan: WorkerPlan, log: Path, env: dict[str, str], *, timeout: float = READY_TIMEOUT_S) -> RunningWorker:
    """Start the worker and wait until it answers turboctl's HELLO with this build's identity."""
    check_port(plan.host, plan.port)
    started = time.monotonic()
    child = proc.Background(plan.command(), log=log, env=plan.env(env))
    try:
        while True:
            code = child.poll()
            if code is not None:
                raise WorkerError(f"the RPC worker exited with code {code} before it was ready", log_path=log,
                                  details=_tail(log), hint="read the log")
            try:
                with protocol.Connection(_connect_host(plan.host), plan.port, plan.identity, timeout=5) as c:
                    assert c.hello is not None
                    devices = [c.device_memory(i) for i in range(c.device_count())]
                    return RunningWorker(plan, child, log, c.hello, devices, time.monotonic() - started)
            except protocol.ProtocolError as exc:
                if exc.kind not in ("unreachable", "no-identity", "closed"):
                    raise WorkerError(f"the RPC worker just started {exc}", log_path=log) from None
            if time.monotonic() - started > timeout:
                raise WorkerError(f"the RPC worker was not ready after {timeout:g} s", log_path=log,
                                  details=_tail(log))
            time.sleep(0.2)
    except BaseException:
        child.stop()
        raise


def _tail(log: Path, n: int = 12) -> list[str]:
    try:
        return log.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
    except OSError:
        return []


def run_forever(plan: WorkerPlan, log: Path, env: dict[str, str], ui: UI,
                announce: Callable[[RunningWorker], None], *, timeout: float = READY_TIMEOUT_S) -> int:
    """Start, announce, then block until the worker exits (an error) or SIGINT / SIGTERM stops it."""
    running: RunningWorker | None = None
    with stop_signals():
        try:
            running = start(plan, log, env, timeout=timeout)
            announce(running)
            while True:
                code = running.child.wait(timeout=0.5)
                if code is not None:
                    running.child.stop()
                    raise WorkerError(f"the RPC worker stopped unexpectedly (exit code {code})", log_path=log,
                                      details=_tail(log))
        except Stopped as sig:
            if running is None:
                ui.info(f"{sig}: the worker stopped before it was ready")
                return 130
            ui.info(f"{sig}: stopping the RPC worker (pid {running.child.pid})")
            code = running.child.stop()
            ui.ok(f"RPC worker stopped (exit code {code})")
            return 0
