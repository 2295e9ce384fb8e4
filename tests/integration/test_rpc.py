"""RPC workers end to end on loopback: `turboctl worker` (the real patched rpc-server), the
build identity handshake against workers and clients of another build or a stock one (their
HELLO simulated at the protocol level: a second full build does not fit CI's time), and
`turboctl serve --rpc` splitting a model across two workers."""

from __future__ import annotations

import json
import os
import re
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

from .conftest import REPO, slow_home
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


def _complete(url: str, prompt: str, n: int = 24) -> dict[str, Any]:
    code, body = http(f"{url}/completion", {"prompt": prompt, "n_predict": n, "temperature": 0,
                                            "cache_prompt": False})
    assert code == 200, body[:500]
    doc: dict[str, Any] = json.loads(body)
    return doc


PROMPT = "the cache of the model is a layer of attention and the key value"
BENCH_MODEL = REPO.parent / "shared" / "models" / "bench-a-h128.gguf"  # ../shared/models/bench-a-h128.gguf
DOCS = REPO.parent / "shared" / "corpora" / "docs-valid.txt"


def _on_each_worker(log: str, ws: list[Worker]) -> list[str]:
    """The log lines that put model weights and KV cache on each worker's RPC device."""
    lines = [ln for ln in log.splitlines() if "RPC" in ln and ("buffer size" in ln)]
    for w in ws:
        assert any(f"[{w.address}] model buffer size" in ln for ln in lines), "\n".join(lines)
        assert any(f"[{w.address}] KV buffer size" in ln for ln in lines), "\n".join(lines)
    return lines


@pytest.mark.parametrize("which", ["bench", "tiny"])
@pytest.mark.parametrize("kv", ["turbo4", "turbo4/turbo3;0..1+-2..-1=q8_0"])
def test_a_split_model_answers_token_for_token_as_one_process(home: Path, tiny: Path, kv: str, which: str) -> None:
    """The trained benchmark model and the generated tiny one, turbo4 and a per-layer recipe: at
    temperature 0 the output split across two workers is the single process's, token for token.
    Both runs without weight repacking (LLAMA_ARG_REPACK=0): a worker's RPC buffers are never
    repacked, and the host's repacked matmul kernels round differently (with repacking on, the
    tiny model's greedy tokens part after a few: its next-token probabilities are near-ties)."""
    if not BENCH_MODEL.is_file():
        pytest.fail(f"{BENCH_MODEL} is missing (../shared/models/bench-a-h128.gguf)")
    prompt = DOCS.read_text()[:600] if which == "bench" else PROMPT
    args = ["--model", str(BENCH_MODEL if which == "bench" else tiny), "--kv", kv, "--ctx", "1024", "--direct"]
    with Serve(home, [*args, "--port", str(free_port())], LLAMA_ARG_REPACK="0") as alone:
        single = _complete(alone.doc["llama_server"], prompt, 48)
    with workers(home, 2) as ws, Serve(home, [*args, "--port", str(free_port()), "--rpc",
                                              ",".join(w.address for w in ws)], LLAMA_ARG_REPACK="0") as s:
        split = _complete(s.doc["llama_server"], prompt, 48)
        lines = _on_each_worker(Path(s.doc["log"]).read_text(errors="replace"), ws)
        print(f"\n[rpc] {kv}: " + "; ".join(ln.split(" I ", 1)[-1] for ln in lines))
    assert split["tokens_predicted"] == single["tokens_predicted"] == 48
    assert split["content"] == single["content"]


def test_a_worker_killed_mid_request(home: Path, tiny: Path) -> None:
    """The tiny model split across two workers; one is killed while it generates: the client gets an
    error (no hang), serve stops and names the worker, nothing is left running."""
    args = ["--model", str(tiny), "--kv", "turbo4", "--ctx", "1024", "--direct"]
    with workers(home, 2) as (w1, w2):
        with Serve(home, [*args, "--port", str(free_port()), "--rpc", f"{w1.address},{w2.address}"]) as s:
            assert [w["endpoint"] for w in s.doc["workers"]] == [w1.address, w2.address]
            assert all(w["self_test"].startswith("pass ") for w in s.doc["workers"])
            _on_each_worker(Path(s.doc["log"]).read_text(errors="replace"), [w1, w2])
            assert _complete(s.doc["llama_server"], PROMPT)["tokens_predicted"] == 24
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
            assert s._proc is not None
            s._proc.wait(timeout=120)  # serve stops by itself: llama-server is gone
            code = s.stop()
        assert code == 22, s.stderr[-3000:]
        assert f"RPC worker {w2.address} failed (the connection failed during command" in s.stderr, s.stderr[-3000:]
        s.assert_no_orphan()


def test_doctor_projects_each_worker_device_as_the_server_allocates_it(home: Path) -> None:
    """``doctor --model M --rpc A,B --json``: each RPC device's weights + KV are what llama-server then
    allocates on a worker (its log, in MiB), and its compute buffer within 25 %. Which worker gets
    the larger share of the layers follows their free memory at load time (equal here but for
    noise: both are this machine), so the devices are compared as a set."""
    if not BENCH_MODEL.is_file():
        pytest.fail(f"{BENCH_MODEL} is missing (../shared/models/bench-a-h128.gguf)")
    args = ["--model", str(BENCH_MODEL), "--kv", "turbo4", "--ctx", "1024"]
    env = {**turboctl_env(home), "LLAMA_ARG_REPACK": "0"}
    with workers(home, 2) as ws:
        rpc = ",".join(w.address for w in ws)
        res = subprocess.run([sys.executable, "-m", "turboctl", "doctor", *args, "--rpc", rpc, "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        doc = json.loads(res.stdout)
        row = next(r for r in doc["rows"] if r["given"])
        parts = {d["device"]: d for d in row["devices"]}
        assert set(parts) == {"this machine", *(f"RPC0[{w.address}]" for w in ws)}
        assert sum(d["bytes"] for d in parts.values()) == row["total_bytes"] and row["fits"]
        assert "run on this machine" in res.stderr  # loopback workers: the pooled budget counts RAM twice
        with Serve(home, [*args, "--direct", "--port", str(free_port()), "--rpc", rpc], LLAMA_ARG_REPACK="0") as s:
            lines = _on_each_worker(Path(s.doc["log"]).read_text(errors="replace"), ws)

    def logged(name: str, what: str) -> float:
        return sum(float(ln.rsplit("=", 1)[1].split()[0]) for ln in lines if f"{name} {what} buffer size" in ln)

    served = sorted((logged(f"RPC0[{w.address}]", "model"), logged(f"RPC0[{w.address}]", "KV"),
                     logged(f"RPC0[{w.address}]", "compute")) for w in ws)
    projected = sorted((d["weights"] / 2**20, d["context"] / 2**20, d["compute"] / 2**20)
                       for name, d in parts.items() if name != "this machine")
    for (sw, skv, sc), (pw, pkv, pc) in zip(served, projected, strict=True):
        assert abs(sw - pw) < 0.01 and abs(skv - pkv) < 0.01, (served, projected)
        assert abs(sc - pc) <= 0.25 * pc, (served, projected)


_SPLIT = re.compile(r"^## SPLIT #\d+: RPC\d+\[[^\]]*\] # (\d+) inputs: (.*)$", re.M)


def _device_split_inputs(bench: str, worker: Worker, model: Path, kv: list[str]) -> list[list[str]]:
    """The inputs of every device split the scheduler printed (GGML_SCHED_DEBUG=1) while
    llama-bench decoded two tokens through the worker."""
    res = subprocess.run([bench, "-m", str(model), "--rpc", worker.address, "-ngl", "99", "-fa", "1", "-p", "0",
                          "-n", "2", "-r", "1", "-t", "1", *kv, "-v"],
                         env=dict(os.environ, GGML_SCHED_DEBUG="1"), text=True, capture_output=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    splits = []
    for m in _SPLIT.finditer(res.stderr):
        names = re.findall(r"\[([^\]]*?) \(\s*\d+K\)\]", m.group(2))
        assert len(names) == int(m.group(1)), m.group(0)
        splits.append(names)
    assert splits, "no device split in the scheduler's debug output:\n" + res.stderr[-3000:]
    return splits


@pytest.mark.parametrize("kv", [["-ctk", "turbo4", "-ctv", "turbo4"],
                                ["-ctk", "turbo4", "-ctv", "turbo4", "--kv-adaptive", "7"],
                                ["-ctk", "f16", "-ctv", "turbo3"]], ids=["turbo4", "recipe", "f16-turbo3"])
def test_the_rotation_is_copied_to_the_device_once_per_graph(llama_build: manifest.Manifest, home: Path,
                                                           tiny: Path, kv: list[str]) -> None:
    """Each rotation used to view the cache's rotation input anew, and the scheduler copies
    every distinct view of a host input as an input of its own: eight copies per layer at every
    decoded token (the cause of most of the CUDA decode gap to q4_0, README "Speed on CUDA").
    Now a device split gets the signs and matrix of a head dim once: no more inputs than
    upstream's rotated q4_0 cache, none twice."""
    bench = llama_build.binary("llama-bench")
    with workers(home, 1) as (w,):
        base = max(len(s) for s in _device_split_inputs(bench, w, tiny, ["-ctk", "q4_0", "-ctv", "q4_0"]))
        for names in _device_split_inputs(bench, w, tiny, kv):
            assert len(names) == len(set(names)), names
            assert not any("(view)" in n for n in names), names
            assert len(names) <= base + 1, (names, base)
