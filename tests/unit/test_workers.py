"""RPC workers: the build identity record, the HELLO turboctl speaks to a worker, and the
`turboctl worker` plan and command (a fake worker; the real one is in the integration tests)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.fakebuild import fake_build
from tests.unit.rpcfakes import fake_worker
from turboctl.build.patches import Series
from turboctl.errors import BinaryMissing, GateRefused, InsecureBind, ProfileError, UsageError, WorkerError
from turboctl.serve import launch, profile
from turboctl.workers import check, protocol, worker
from turboctl.workers import identity as ident

pytestmark = pytest.mark.usefixtures("loopback")

MINE = ident.BuildIdentity(base="0c1e57098bba43ac29e6e3b677cdceebdd22334f", series="ab" * 32,
                           types=(("turbo2", 43), ("turbo3", 44), ("turbo4", 45)))


# --------------------------------------------------------------------------- the identity record
def test_the_record_has_the_patch_layout_and_round_trips() -> None:
    # magic 8, base 41, series 65, n_types 4, 8 x (id 4 + name 12), self-test 96
    assert ident.SIZE == 8 + 41 + 65 + 4 + 8 * 16 + 96 == 342
    data = ident.BuildIdentity(MINE.base, MINE.series, MINE.types, "pass 523/523 CPU").pack()
    assert len(data) == ident.SIZE and data.startswith(b"GGTQID01" + MINE.base.encode() + b"\0")
    back = ident.unpack(data)
    assert back == ident.BuildIdentity(MINE.base, MINE.series, MINE.types, "pass 523/523 CPU")
    assert back is not None and back.same_build(MINE)  # the self-test record is not compared
    assert MINE.describe() == f"base {MINE.base} series {MINE.series} types turbo2=43,turbo3=44,turbo4=45"


def test_fields_are_cut_as_the_patch_cuts_them_and_bad_records_are_told() -> None:
    long = ident.BuildIdentity("x" * 60, "y" * 80, (), "z" * 200)
    back = ident.unpack(long.pack())
    assert back is not None and (len(back.base), len(back.series), len(back.self_test)) == (40, 64, 95)
    assert ident.unpack(bytes(ident.SIZE)) is None  # the right size without the magic: no identity
    with pytest.raises(ident.IdentityError, match=r"^10 bytes, expected 342$"):
        ident.unpack(bytes(10))
    with pytest.raises(ident.IdentityError, match="at most 8 fit"):
        ident.BuildIdentity("b", "s", tuple((f"t{i}", i) for i in range(9))).pack()


def test_differences_name_each_field() -> None:
    other = ident.BuildIdentity(MINE.base, "cd" * 32, (("turbo4", 46),))
    assert MINE.differences(other) == [f"series {MINE.series} vs {'cd' * 32}",
                                       "types turbo2=43,turbo3=44,turbo4=45 vs turbo4=46"]
    assert MINE.differences(MINE) == []


def test_the_series_checksum_covers_names_contents_and_order() -> None:
    a = ident.series_sha256([("0001-a.patch", "1" * 64), ("0002-b.patch", "2" * 64)])
    assert len(a) == 64
    assert a != ident.series_sha256([("0002-b.patch", "2" * 64), ("0001-a.patch", "1" * 64)])
    assert a != ident.series_sha256([("0001-a.patch", "1" * 64), ("0002-b.patch", "3" * 64)])
    assert a != ident.series_sha256([("0001-x.patch", "1" * 64), ("0002-b.patch", "2" * 64)])
    assert Series(Path("."), ()).sha256() == ident.series_sha256([])


def test_turbo_types_come_from_the_tree_type_ids() -> None:
    ids = {"GGML_TYPE_F32": 0, "GGML_TYPE_TURBO4": 45, "GGML_TYPE_TURBO2": 43, "GGML_TYPE_Q4_0": 2}
    assert ident.turbo_types(ids) == (("turbo2", 43), ("turbo4", 45))


# --------------------------------------------------------------------------- the HELLO
def test_a_worker_of_this_build_answers_and_reports_its_devices() -> None:
    with fake_worker("patched", MINE) as fw, protocol.Connection("127.0.0.1", fw.port, MINE) as c:
        assert c.hello is not None and c.hello.version == (7, 0, 0) and c.hello.identity == MINE
        assert c.device_count() == 1
        assert c.device_memory(0) == protocol.DeviceMemory(free=3 << 30, total=8 << 30)
    assert fw.sizes[0] == protocol.HELLO_REQ == 24 + 342 and fw.hellos == [MINE]


def test_a_stock_worker_is_refused() -> None:
    with fake_worker("stock", MINE) as fw, pytest.raises(protocol.ProtocolError) as err:
        protocol.Connection("127.0.0.1", fw.port, MINE).__enter__()
    assert err.value.kind == "no-identity"
    assert str(err.value) == ("closed the connection at HELLO: a stock rpc-server or a build without the "
                              "TurboQuant series (no build identity)")


def test_a_worker_of_another_build_is_refused_with_both_identities() -> None:
    other = ident.BuildIdentity(MINE.base, "cd" * 32, MINE.types, "pass 1/1 CPU")
    with fake_worker("patched", other) as fw, pytest.raises(protocol.ProtocolError) as err:
        protocol.Connection("127.0.0.1", fw.port, MINE).__enter__()
    assert err.value.kind == "other-build" and err.value.worker == other
    assert str(err.value) == f"is another build: series {MINE.series} vs {'cd' * 32} (this build vs the worker)"


def test_nothing_listening_and_a_silent_peer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(protocol.ProtocolError, match=r"^cannot connect: ") as err:
            protocol.Connection("127.0.0.1", port, MINE).__enter__()
    assert err.value.kind == "unreachable"
    with fake_worker("silent", MINE) as fw, pytest.raises(protocol.ProtocolError) as err:
        protocol.Connection("127.0.0.1", fw.port, MINE, timeout=0.5).__enter__()
    assert err.value.kind == "unreachable" and str(err.value) == ("no answer to HELLO within 0.5 s (is it an "
                                                                  "RPC worker?)")


# --------------------------------------------------------------------------- turboctl worker: the plan
def test_the_plan_needs_a_passed_self_test_and_loopback(tmp_path: Path) -> None:
    m = fake_build(tmp_path / "home")
    plan = worker.make_plan(m, port=50123, threads=2)
    assert plan.command() == [str(Path(m.binaries["ggml-rpc-server"].path)), "-H", "127.0.0.1", "-p", "50123",
                              "-t", "2"]
    assert plan.identity == ident.BuildIdentity(m.pin.commit, "f" * 64, MINE.types)
    assert plan.self_test == "pass 523/523 CPU 2026-11-29T18:16:51+00:00"
    assert plan.env({"A": "1"}) == {"A": "1", "GGML_RPC_SELF_TEST": plan.self_test}
    with pytest.raises(InsecureBind) as err:
        worker.make_plan(m, host="0.0.0.0")
    assert err.value.message.startswith("refusing to bind the RPC worker to 0.0.0.0: the RPC protocol has no "
                                        "authentication and no encryption")
    assert err.value.hint is not None and "ssh -N -L 50052:127.0.0.1:50052" in err.value.hint
    assert worker.make_plan(m, host="0.0.0.0", allow_remote=True).remote
    with pytest.raises(UsageError, match=r"^--port 0: expected 1 to 65535$"):
        worker.make_plan(m, port=0)
    with pytest.raises(UsageError, match=r"^--threads 0: expected at least 1$"):
        worker.make_plan(m, threads=0)


def test_no_worker_without_a_passed_self_test_or_an_rpc_build(tmp_path: Path) -> None:
    m = fake_build(tmp_path / "a", with_selftest=False)
    with pytest.raises(GateRefused, match=r"^the backend self-test of this build never ran: a worker starts only "
                                          r"after it passed$"):
        worker.make_plan(m)
    m = fake_build(tmp_path / "b")
    assert m.selftest is not None
    failed = m.model_copy(update={"selftest": m.selftest.model_copy(update={"status": "fail"})})
    with pytest.raises(GateRefused, match=r"^the backend self-test did not pass \(fail: "):
        worker.make_plan(failed)
    with pytest.raises(BinaryMissing, match=r"^this build has no RPC backend \(it was made by a turboctl without "
                                            r"one\)$"):
        check.build_identity(m.model_copy(update={"rpc": None}))
    gone = m.model_copy(update={"binaries": {k: v for k, v in m.binaries.items() if k != "ggml-rpc-server"}})
    with pytest.raises(BinaryMissing, match=r"^this build has no RPC worker \(ggml-rpc-server\)$"):
        worker.worker_binary(gone)


def test_addresses_for_the_serving_side() -> None:
    assert worker.rpc_addresses("127.0.0.1", 50052) == ["127.0.0.1:50052"]
    assert worker.rpc_addresses("::1", 7) == ["[::1]:7"]
    wild = worker.rpc_addresses("0.0.0.0", 9)
    assert wild[-1] == f"{socket.gethostname()}:9" and all(a.endswith(":9") for a in wild)


# --------------------------------------------------------------------------- turboctl worker: the command
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_command_starts_reports_and_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fake_build(home)
    port = _free_port()
    env = {"TURBOCTL_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-m", "turboctl", "worker", "--port", str(port), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 60
        assert child.stdout is not None
        while time.monotonic() < deadline and not line.endswith("\n}\n"):
            line += child.stdout.readline()
        doc = json.loads(line)
        assert doc["schema"] == "turboctl.worker/1" and doc["status"] == "ready"
        assert doc["rpc"] == [f"127.0.0.1:{port}"] and doc["identity"]["series"] == "f" * 64
        assert doc["devices"] == [{"index": 0, "free_bytes": 3 << 30, "total_bytes": 8 << 30}]
        # a client of this build gets in; the worker logged the self-test record turboctl gave it
        with protocol.Connection("127.0.0.1", port, ident.BuildIdentity.from_json(doc["identity"])) as c:
            assert c.device_count() == 1
        assert "self-test      : pass 523/523 CPU" in Path(doc["log"]).read_text()
    finally:
        child.send_signal(2)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert "RPC worker stopped" in err


def test_worker_command_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"TURBOCTL_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "turboctl", "worker", *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=60)

    res = run()
    assert res.returncode == 3 and f"error: nothing built yet in {home}" in res.stderr
    fake_build(home)
    res = run("--host", "0.0.0.0")
    assert res.returncode == 23 and "refusing to bind the RPC worker to 0.0.0.0" in res.stderr
    res = run("--port", str(_free_port()), "--ready-timeout", "20", FAKE_RPC_MODE="exit")
    assert res.returncode == 26, res.stderr
    assert "error: the RPC worker exited with code 3 before it was ready" in res.stderr
    assert "error: failed to start" in res.stderr  # the log tail
    res = run("--dry-run", "--port", "50100")
    assert res.returncode == 0 and res.stdout.startswith("GGML_RPC_SELF_TEST='pass 523/523 CPU ")
    assert res.stdout.rstrip().endswith("ggml-rpc-server -H 127.0.0.1 -p 50100")


# --------------------------------------------------------------------------- serve's check of its workers
def test_worker_addresses_are_parsed_and_bad_ones_told() -> None:
    eps = check.parse_endpoints(["127.0.0.1:50052,[::1]:7", "host-b.local:9"])
    assert [str(e) for e in eps] == ["127.0.0.1:50052", "[::1]:7", "host-b.local:9"]
    for bad in ("127.0.0.1", "127.0.0.1:x", ":80", "h:0", "h:70000", "::1:80", "[nope]:80"):
        with pytest.raises(UsageError) as err:
            check.parse_endpoints(bad)
        assert err.value.message == (f"--rpc {bad!r}: expected HOST:PORT (e.g. 192.168.1.20:50052; IPv6 as "
                                     "[addr]:port)")
        assert err.value.hint == "turboctl worker prints the address to use"
    with pytest.raises(UsageError, match=r"^--rpc: the worker a:1 is given twice$"):
        check.parse_endpoints("a:1,a:1")


def test_serve_refuses_each_kind_of_unusable_worker() -> None:
    record = ident.BuildIdentity(MINE.base, MINE.series, MINE.types, "pass 523/523 CPU now")
    with fake_worker("patched", record) as fw:
        w = check.check_worker(check.Endpoint("127.0.0.1", fw.port), MINE)
        assert (w.free, w.total, w.version) == (3 << 30, 8 << 30, "7.0.0")
        assert w.to_json()["self_test"] == "pass 523/523 CPU now"
    cases = [
        ("stock", record, "closed the connection at HELLO: a stock rpc-server or a build without the TurboQuant "
                          "series (no build identity)", "no-identity"),
        ("patched", ident.BuildIdentity(MINE.base, "cd" * 32, MINE.types, "pass 1/1 CPU"),
         f"is another build: series {MINE.series} vs {'cd' * 32} (this build vs the worker)", "other-build"),
        ("patched", MINE, "reports no passed self-test (none reported)", None),
        ("patched", ident.BuildIdentity(MINE.base, MINE.series, MINE.types, "fail 1/2 CPU"),
         "reports no passed self-test (fail 1/2 CPU)", None),
    ]
    for mode, theirs, message, kind in cases:
        with fake_worker(mode, theirs) as fw, pytest.raises(WorkerError) as err:
            check.check_workers([check.Endpoint("127.0.0.1", fw.port)], MINE)
        assert err.value.message == f"RPC worker 127.0.0.1:{fw.port} {message}"
        assert err.value.exit_code == 26
        if kind is not None:
            assert err.value.hint == check.HINTS[kind]
            assert err.value.details[0] == f"this build: {MINE.describe()}"
        else:
            assert err.value.hint == "start it with turboctl worker: it starts only after the build's self-test passed"
    with fake_worker("patched", ident.BuildIdentity(MINE.base, "0" * 64, MINE.types)) as fw, \
            pytest.raises(WorkerError) as err:
        check.check_worker(check.Endpoint("127.0.0.1", fw.port), MINE)
    assert err.value.details == [f"this build: {MINE.describe()}",
                                 f"worker:     base {MINE.base} series {'0' * 64} types turbo2=43,turbo3=44,turbo4=45"]


def test_the_failed_worker_is_read_from_the_server_log() -> None:
    lines = ["load_tensors: ...", "RPC worker 127.0.0.1:50053: the connection failed during command 10 (the worker "
             "stopped, or the network between it and this process failed)", "GGML_ASSERT ... aborted"]
    assert launch.failed_worker(lines) == ("127.0.0.1:50053", "the connection failed during command 10")
    assert launch.failed_worker(["RPC worker 10.0.0.2:9 is another build: worker: ..."]) == \
        ("10.0.0.2:9", "is another build")
    assert launch.failed_worker(["nothing here"]) is None


def test_a_profile_lists_its_workers_and_bad_entries_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text("name: p\nmodel: {path: m.gguf}\nworkers: ['10.0.0.2:50052', '[::1]:50053']\n")
    assert profile.load_profile(good).workers == ("10.0.0.2:50052", "[::1]:50053")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\nmodel: {path: m.gguf}\nworkers:\n  - 10.0.0.2\n")
    with pytest.raises(ProfileError) as err:
        profile.load_profile(bad)
    assert err.value.message.startswith(f"{bad}:3: workers: '10.0.0.2': expected HOST:PORT"), err.value.message
    args = tmp_path / "args.yaml"
    args.write_text("name: p\nmodel: {path: m.gguf}\nserver: {args: ['--rpc', 'a:1']}\n")
    with pytest.raises(ProfileError, match=r"'--rpc' is set by turboctl: set it as workers"):
        profile.load_profile(args)


def test_bench_speed_splits_across_checked_workers(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tests.integration.tinymodel import write_tiny_model
    from turboctl.cli.main import app
    from turboctl.paths import get_paths

    m = fake_build(get_paths().home)
    me = check.build_identity(m)
    model = write_tiny_model(tmp_path / "tiny.gguf")
    args_log = tmp_path / "args.jsonl"
    runner = CliRunner()
    base = ["bench", "speed", "--model", str(model), "--kv", "turbo4", "-p", "64", "-n", "16", "--depth", "0",
            "--threads", "2", "--reps", "1"]
    with fake_worker("patched", ident.BuildIdentity(me.base, me.series, me.types, "pass 1/1 CPU")) as fw:
        r = runner.invoke(app, [*base, "--rpc", f"127.0.0.1:{fw.port}", "--json"],
                          env={"FAKE_ARGS_LOG": str(args_log)})
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["rpc"] == [f"127.0.0.1:{fw.port}"]
    run = json.loads(args_log.read_text().splitlines()[0])
    assert run[run.index("-rpc") + 1] == f"127.0.0.1:{fw.port}"
    with fake_worker("stock", me) as fw:
        r = runner.invoke(app, [*base, "--rpc", f"127.0.0.1:{fw.port}"])
    assert r.exit_code == 26
    assert f"error: RPC worker 127.0.0.1:{fw.port} closed the connection at HELLO" in r.output
