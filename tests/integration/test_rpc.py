"""RPC workers end to end on loopback: `turboctl worker` (the real patched rpc-server), the
build identity handshake against workers and clients of another build or a stock one (their
HELLO simulated at the protocol level: a second full build does not fit CI's time), and
`turboctl serve --rpc` splitting a model across two workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.unit.rpcfakes import fake_worker
from turboctl.build import manifest
from turboctl.workers import identity as ident
from turboctl.workers import protocol

from .conftest import slow_home
from .serveproc import Serve, turboctl_env
from .server import free_port, http
from .tinymodel import write_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("rpc") / "tiny-rpc.gguf", n_layer=8, head_dim=64,
                            n_head=4, n_head_kv=2, n_ctx=4096)


@pytest.fixture()
def home(llama_build: manifest.Manifest) -> Path:
    return slow_home()


def mine(m: manifest.Manifest) -> ident.BuildIdentity:
    assert m.rpc is not None
    return ident.BuildIdentity(m.rpc.base, m.rpc.series, tuple(m.rpc.types.items()))


class Worker:
    """``turboctl worker --json`` as a user starts it; ``doc`` is its ready document."""

    def __init__(self, home: Path, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen([sys.executable, "-m", "turboctl", "worker", "--port", str(port), "-t", "1",
                                      "--json"], env=turboctl_env(home), text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        text = ""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not text.endswith("\n}\n"):
            line = self.proc.stdout.readline()
            if not line:
                break
            text += line
        if not text.endswith("\n}\n"):
            self.proc.kill()
            raise AssertionError(f"turboctl worker not ready: {text}\n{self.proc.communicate()[1]}")
        self.doc: dict[str, Any] = json.loads(text)
        self.pid = int(self.doc["pid"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return Path(self.doc["log"]).read_text(errors="replace")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
        _, err = self.proc.communicate(timeout=30)
        return err


@contextmanager
def workers(home: Path, n: int) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(n):
            started.append(Worker(home, free_port()))
        yield started
    finally:
        for w in started:
            w.stop()


def test_worker_reports_this_build_and_refuses_other_clients(llama_build: manifest.Manifest, home: Path) -> None:
    me = mine(llama_build)
    assert me.types == (("turbo2", 43), ("turbo3", 44), ("turbo4", 45))
    with workers(home, 1) as (w,):
        doc = w.doc
        assert doc["identity"] == me.to_json() | {"self_test": doc["identity"]["self_test"]}
        assert doc["identity"]["self_test"].startswith("pass ") and doc["rpc"] == [w.address]
        assert doc["devices"][0]["total_bytes"] > 0
        with protocol.Connection("127.0.0.1", w.port, me) as c:
            assert c.device_count() == 1
        # a client of another build: the worker answers with its identity, then refuses
        other = ident.BuildIdentity(me.base, "0" * 64, me.types)
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.Connection("127.0.0.1", w.port, other).__enter__()
        assert err.value.kind == "other-build" and err.value.worker is not None
        assert err.value.worker.same_build(me)
        # a stock client: its 24-byte HELLO is refused
        with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
            s.sendall(struct.pack("<BQ", protocol.CMD_HELLO, protocol.STOCK_HELLO_REQ) + bytes(24))
            with suppress(ConnectionResetError):
                assert s.recv(64) == b""
        time.sleep(0.3)
        log = w.log()
        assert f"build identity : {me.describe()}" in log
        assert f"refused a client of another build: client: {other.describe()}; this worker: {me.describe()}" in log
        assert "refused a client without a build identity (a stock llama.cpp" in log
    assert "RPC worker stopped" in w.stop() or w.proc.returncode == 0


def test_llama_server_refuses_a_stock_worker_and_one_of_another_build(llama_build: manifest.Manifest,
                                                                      tiny: Path) -> None:
    me = mine(llama_build)
    server = llama_build.binary("llama-server")
    for mode, theirs, expected in (
        ("stock", me, "closed the connection at HELLO: a stock rpc-server or a build without the TurboQuant series"),
        ("patched", ident.BuildIdentity(me.base, "1" * 64, me.types, "pass 1/1 CPU"),
         f"is another build: worker: base {me.base} series {'1' * 64}"),
    ):
        with fake_worker(mode, theirs) as fw:
            res = subprocess.run([str(server), "-m", str(tiny), "--rpc", f"127.0.0.1:{fw.port}", "-c", "256",
                                  "--port", str(free_port()), "--no-repack"], capture_output=True, text=True,
                                 timeout=120)
        assert res.returncode != 0
        out = res.stdout + res.stderr
        assert f"RPC worker 127.0.0.1:{fw.port} {expected}" in out, out[-3000:]
        assert f"this build: {me.describe()}" in out
        assert "load_tensors" not in out  # refused before anything loads
        if mode == "stock":
            assert fw.sizes == [protocol.HELLO_REQ]  # the identity HELLO, refused by its size


def test_serve_checks_workers_before_anything_starts(llama_build: manifest.Manifest, home: Path,
                                                     tiny: Path) -> None:
    me = mine(llama_build)
    cases = [("stock", me, "closed the connection at HELLO: a stock rpc-server"),
             ("patched", ident.BuildIdentity(me.base, "2" * 64, me.types, "pass 1/1 CPU"), "is another build"),
             ("patched", me, "reports no passed self-test (none reported)")]
    for mode, theirs, expected in cases:
        with fake_worker(mode, theirs) as fw:
            res = subprocess.run([sys.executable, "-m", "turboctl", "serve", "--model", str(tiny), "--ctx", "512",
                                  "--direct", "--port", str(free_port()), "--rpc", f"127.0.0.1:{fw.port}"],
                                 env=turboctl_env(home), capture_output=True, text=True, timeout=120)
        assert res.returncode == 26, res.stderr[-2000:]
        assert f"error: RPC worker 127.0.0.1:{fw.port} {expected}" in res.stderr
        assert "llama-server is ready" not in res.stderr and "$ " not in res.stderr


def _complete(url: str, prompt: str) -> dict[str, Any]:
    code, body = http(f"{url}/completion", {"prompt": prompt, "n_predict": 24, "temperature": 0,
                                            "cache_prompt": False})
    assert code == 200, body[:500]
    doc: dict[str, Any] = json.loads(body)
    return doc


PROMPT = "the cache of the model is a layer of attention and the key value"


def test_serve_splits_the_model_across_two_workers(llama_build: manifest.Manifest, home: Path, tiny: Path) -> None:
    args = ["--model", str(tiny), "--kv", "turbo4", "--ctx", "1024", "--direct"]
    with Serve(home, [*args, "--port", str(free_port())]) as alone:
        single = _complete(alone.doc["llama_server"], PROMPT)
    with workers(home, 2) as (w1, w2):
        rpc = f"{w1.address},{w2.address}"
        with Serve(home, [*args, "--port", str(free_port()), "--rpc", rpc]) as s:
            assert [w["endpoint"] for w in s.doc["workers"]] == [w1.address, w2.address]
            assert all(w["self_test"].startswith("pass ") for w in s.doc["workers"])
            split = _complete(s.doc["llama_server"], PROMPT)
            log = Path(s.doc["log"]).read_text(errors="replace")
            # the layers and their KV cache on each RPC device
            for w in (w1, w2):
                assert f"RPC0[{w.address}]" in log or f"[{w.address}]" in log, log[-4000:]
            named = [ln for ln in log.splitlines() if "RPC" in ln and ("buffer" in ln or "KV" in ln or "layer" in ln)]
            print("\n[rpc] server log lines naming the workers:\n" + "\n".join(named)[:3000])
            # at temperature 0, token for token the single-process output
            assert split["content"] == single["content"] and split["tokens_predicted"] == single["tokens_predicted"]
            # a worker killed mid-request: the client gets an error, serve names the worker
            done: dict[str, Any] = {}

            def long_request() -> None:
                try:
                    done["result"] = http(f"{s.doc['llama_server']}/completion",
                                          {"prompt": PROMPT, "n_predict": 900, "temperature": 0,
                                           "ignore_eos": True}, timeout=60)
                except (urllib.error.URLError, ConnectionError, OSError) as exc:
                    done["error"] = exc

            t = threading.Thread(target=long_request)
            t.start()
            time.sleep(1.0)
            os.kill(w2.pid, signal.SIGKILL)
            t.join(90)
            assert not t.is_alive(), "the client hung after the worker died"
            assert "error" in done or done["result"][0] >= 500, done
            s.wait_stderr("error:", timeout=60)
            code = s.stop()
        assert code == 22, s.stderr[-3000:]
        assert f"RPC worker {w2.address} failed (the connection failed during command" in s.stderr, s.stderr[-3000:]
        s.assert_no_orphan()
