"""``turboctl serve`` as a user runs it, for the slow tests: a real ``python -m turboctl serve``
process with ``--json``, whose one JSON document (printed once llama-server is ready and
verified) is read from stdout; stopped with a real signal; checked for orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from .conftest import REPO


def turboctl_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TURBOCTL_HOME=str(home), TURBOCTL_CONFIG=str(home / "config"))
    env.pop("TURBO_LAYER_ADAPTIVE", None)
    env.pop("LLAMA_ARG_KV_LAYERS", None)
    env.update(extra)
    return env


def run_turboctl(home: Path, *args: str, timeout: float = 300, cwd: Path | None = None,
                 **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turboctl", *args], cwd=cwd or REPO, env=turboctl_env(home, **env),
                          text=True, capture_output=True, timeout=timeout, check=False)


class Serve:
    """``with Serve(home, ["--profile", p]) as s:`` -- ``s.doc`` is the ready document."""

    def __init__(self, home: Path, args: Sequence[str], *, ready_timeout: float = 300, cwd: Path | None = None,
                 **env: str) -> None:
        self.cmd = [sys.executable, "-m", "turboctl", "serve", *args, "--json"]
        self.env = turboctl_env(home, **env)
        self.cwd = cwd or REPO
        self.ready_timeout = ready_timeout
        self.doc: dict[str, Any] = {}
        self.stderr = ""
        self.returncode: int | None = None
        self.server_pid: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._err: list[str] = []

    @property
    def url(self) -> str:
        return str(self.doc["endpoint"])

    def __enter__(self) -> Serve:
        self._proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        reader = threading.Thread(target=self._drain_stderr, daemon=True)
        reader.start()
        lines: list[str] = []
        deadline = time.monotonic() + self.ready_timeout
        assert self._proc.stdout is not None
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.rstrip("\n") == "}":
                self.doc = json.loads("".join(lines))
                self.server_pid = int(self.doc["pid"])
                return self
        self._proc.kill()
        self.returncode = self._proc.wait()
        reader.join(5)
        raise AssertionError(f"turboctl serve did not become ready (exit {self.returncode})\n"
                             f"stdout: {''.join(lines)[-2000:]}\nstderr: {''.join(self._err)[-4000:]}")

    def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._err.append(line)

    def wait_stderr(self, text: str, count: int = 1, timeout: float = 30) -> None:
        """Until ``text`` is in serve's stderr ``count`` times (its foreground loop's messages)."""
        deadline = time.monotonic() + timeout
        while "".join(self._err).count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} x{count} not printed; stderr: {''.join(self._err)[-2000:]}"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
        try:
            self.returncode = self._proc.wait(timeout=timeout)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        time.sleep(0.2)
        self.stderr = "".join(self._err)
        return self.returncode

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.returncode is None:
            self.stop()
        if self.server_pid is not None and psutil.pid_exists(self.server_pid):
            with_proc = psutil.Process(self.server_pid)
            if with_proc.status() != psutil.STATUS_ZOMBIE:
                with_proc.kill()

    def assert_no_orphan(self) -> None:
        assert self.server_pid is not None
        if psutil.pid_exists(self.server_pid):
            status = psutil.Process(self.server_pid).status()
            raise AssertionError(f"llama-server pid {self.server_pid} still exists ({status}) after turboctl stopped")


def smollm2(home: Path) -> Path:
    """SmolLM2-135M-Instruct the project's way: the smollm2-demo profile's source, fetched and
    verified into the test home's cache (once)."""
    from turboctl.models import fetch
    from turboctl.paths import Paths
    from turboctl.serve.catalog import find_profile
    from turboctl.ui import UI

    return fetch.resolve_model(find_profile("smollm2-demo").model, Paths(home), UI(quiet=True)).path


def write_profile(path: Path, name: str, model: Path, kv: str, *, context: int, parallel: int = 1,
                  args: Sequence[str] = ()) -> Path:
    """A profile file serving ``model`` as ``name`` with the recipe ``kv`` (K/V;rules form) and
    ``--no-repack`` plus ``args`` for llama-server."""
    types, _, rules = kv.partition(";")
    k, _, v = types.partition("/")
    lines = [f"name: {name}", f"model: {{name: {name}, path: {model}}}",
             f"kv: {{k: {k}" + (f", v: {v}" if v else "") + (f", layers: '{rules}'" if rules else "") + "}",
             f"context: {context}", f"server: {{parallel: {parallel}, args: {json.dumps(['--no-repack', *args])}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path
