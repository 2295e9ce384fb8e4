"""A real llama-server on loopback for the slow tests: start, wait until healthy, talk
HTTP, stop cleanly (SIGTERM) and check that nothing is left behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, body: dict[str, object] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return int(r.status), r.read()


class LlamaServer:
    """``with LlamaServer(binary, args, log) as srv:`` -- healthy inside the block."""

    def __init__(self, binary: str, args: list[str], log: Path, ready_timeout: float = 120) -> None:
        self.port = free_port()
        self.cmd = [binary, *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path = log
        self.ready_timeout = ready_timeout
        self.returncode: int | None = None
        self.children: list[psutil.Process] = []
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> LlamaServer:
        self._log = self.log_path.open("w")
        self._proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._proc.poll() is not None:
                self._log.close()
                raise AssertionError(f"llama-server exited with {self._proc.returncode}:\n{self.log()[-3000:]}")
            try:
                status, _ = http(f"{self.url}/health", timeout=2)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise AssertionError(f"llama-server did not become healthy in {self.ready_timeout:.0f} s")
            time.sleep(0.25)
        self.children = psutil.Process(self._proc.pid).children(recursive=True)
        return self

    def completion(self, body: dict[str, object]) -> dict[str, object]:
        status, raw = http(f"{self.url}/completion", body)
        assert status == 200
        doc = json.loads(raw)
        assert isinstance(doc, dict)
        return doc

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self._proc.wait(timeout=30)
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._log.close()

    def assert_clean_exit(self) -> None:
        assert self._proc is not None
        assert self.returncode == 0, self.log()[-3000:]
        assert not psutil.pid_exists(self._proc.pid)  # reaped: no orphan, no zombie
        assert [c.pid for c in self.children if c.is_running()] == []


def run_to_exit(binary: str, args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run a llama.cpp program that is expected to stop by itself; (exit code, output)."""
    res = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, check=False)
    return res.returncode, res.stdout + res.stderr
