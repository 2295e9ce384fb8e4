"""The fit with RPC workers: the pooled budget keeps each worker device's own share, the projection
is read per device (a recorded real run with two workers), every device must hold its part, the
context search stops at the fullest device, and ``doctor --model M --rpc`` / a profile's workers
show the what-if table per device (fake workers at the protocol level)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.fetchserver import loopback  # noqa: F401  (fixture)
from tests.unit.fitfakes import FIT, bench_like, fake_fit_build, fake_run, plan_for
from tests.unit.rpcfakes import fake_worker
from turboctl.build.manifest import Manifest
from turboctl.cli import doctor as doctor_cli
from turboctl.cli.main import app
from turboctl.errors import DoesNotFit, UsageError, WorkerError
from turboctl.kv.recipe import parse_recipe
from turboctl.serve import fit, whatif
from turboctl.workers import check
from turboctl.workers import identity as ident

GIB = fit.GIB
MIB = fit.MIB
A, B = "127.0.0.1:50061", "127.0.0.1:50062"  # the workers of the recorded run
runner = CliRunner()
_plan = plan_for


@pytest.fixture()
def build(tmp_path: Path) -> Manifest:
    return fake_fit_build(tmp_path)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return bench_like(tmp_path / "bench-like.gguf")


def _local(n: int = 10 * GIB) -> fit.Budget:
    return fit.Budget(n, "test budget", "ram-available", n, 0)


def _rpc_runner(workers: Sequence[str]) -> fit.Runner:
    def run(args: Sequence[str], env: object) -> tuple[int, str]:
        return fake_run([*args, "--rpc", ",".join(workers)])
    return run


def test_the_pooled_budget_keeps_each_device_with_its_margin() -> None:
    local = fit.Budget(10 << 30, "available RAM 11.0 GiB - margin 1.0 GiB", "ram-available", 11 << 30, 1 << 30)
    pooled = fit.pooled(local, [("a:1", [8 << 30]), ("b:2", [4 << 30, 2 << 30])])
    assert [(d.name, d.free, d.bytes) for d in pooled.devices] == [
        ("RPC0[a:1]", 8 << 30, (8 << 30) - fit.margin_for(8 << 30)),
        ("RPC0[b:2]", 4 << 30, (4 << 30) - fit.margin_for(4 << 30)),
        ("RPC1[b:2]", 2 << 30, (2 << 30) - fit.margin_for(2 << 30))]
    assert pooled.bytes == (10 << 30) + sum(d.bytes for d in pooled.devices)
    assert pooled.local == 10 << 30
    assert pooled.base == (11 << 30) + (14 << 30)
    assert pooled.margin == (1 << 30) + sum(fit.margin_for(d.free) for d in pooled.devices)
    assert pooled.source == ("available RAM 11.0 GiB - margin 1.0 GiB + RPC workers (a:1 8.00 GiB free, "
                             "b:2 6.00 GiB free; margin each)")
    assert fit.pooled(local, []) is local
    assert fit.pooled(local, [("a:1", [100 * MIB])]).devices[0].bytes == 0  # all of it is margin


def test_the_recorded_two_worker_projection_is_read_per_device(build: Manifest, model: Path) -> None:
    plan = _plan(model, "turbo4", build)
    text = (FIT / "fit-params-bench-a-turbo4-rpc2-4096.txt").read_text()
    p = fit.project(build, model, plan, 4096, runner=lambda a, e: (0, text))
    assert p.per_device() == {fit.LOCAL: 8388608 + 22333568,
                              f"RPC0[{A}]": 31477760 + 5570560 + 38879232,
                              f"RPC0[{B}]": 27277312 + 3342336 + 40960128}
    assert p.kv == 5570560 + 3342336 == sum(plan.kv_bytes(4096))
    budget = fit.pooled(_local(), [(A, [24105 * MIB]), (B, [24105 * MIB])])
    uses = fit.device_use(p, budget)
    assert [(u.device, u.bytes, u.fits) for u in uses] == [
        (fit.LOCAL, 30722176, True), (f"RPC0[{A}]", 75927552, True), (f"RPC0[{B}]", 71579776, True)]
    assert (uses[1].weights, uses[1].context, uses[1].compute) == (31477760, 5570560, 38879232)
    assert not fit.overs(p, budget)
    small = fit.pooled(_local(), [(A, [24105 * MIB]), (B, [512 * MIB + 50 * MIB])])  # 50 MiB after the margin
    assert [u.device for u in fit.overs(p, small)] == [f"RPC0[{B}]"]
    assert fit.load(p, small) == pytest.approx(71579776 / (50 * MIB))
    assert fit.over_text(p, small) == (
        f"needs 170.0 MiB ({p.breakdown()}) and is over on RPC0[{B}] 68.3 MiB of 50.0 MiB "
        f"(budget {fit.human(small.bytes)}: test budget + RPC workers ({A} 23.5 GiB free, {B} 0.55 GiB free; "
        "margin each))")


def test_a_device_the_budget_does_not_know_cannot_fit(build: Manifest, model: Path) -> None:
    plan = _plan(model, "turbo4", build)
    text = (FIT / "fit-params-bench-a-turbo4-rpc2-4096.txt").read_text()
    p = fit.project(build, model, plan, 4096, runner=lambda a, e: (0, text))
    only_a = fit.pooled(_local(), [(A, [24105 * MIB])])
    assert [(u.device, u.budget) for u in fit.overs(p, only_a)] == [(f"RPC0[{B}]", 0)]
    assert fit.load(p, only_a) == float("inf")


def test_without_workers_the_whole_projection_meets_the_whole_budget(build: Manifest, model: Path) -> None:
    plan = _plan(model, "turbo4", build)
    p = fit.Projector(build, model, plan, runner=lambda a, e: fake_run(list(a)))(2048)
    whole = fit.DeviceUse(fit.LOCAL, p.total, 10 * GIB, p.weights, p.kv, p.compute)
    assert fit.device_use(p, _local()) == [whole]
    assert not fit.overs(p, _local(p.total))
    assert fit.overs(p, _local(p.total - 1)) == [replace(whole, budget=p.total - 1)]


def test_the_largest_context_is_the_fullest_devices(build: Manifest, model: Path) -> None:
    plan = _plan(model, "f16", build)
    proj = fit.Projector(build, model, plan, runner=_rpc_runner(["a:1", "b:2"]))
    # worker b has room for its half of the weights and 6,000 cells of its half of the KV (plus the margin)
    half_kv_cell = sum(plan.kv_bytes(1)) // 2
    b_room = proj(1024).per_device()["RPC0[b:2]"] - 1024 * half_kv_cell + 6000 * half_kv_cell
    budget = fit.pooled(_local(), [("a:1", [40 * GIB]), ("b:2", [b_room + fit.MARGIN_MIN])])
    assert budget.devices[1].bytes == b_room
    expected = max(c for c in fit.candidates(131072) if not fit.overs(proj(c), budget))
    assert expected == 5 * 1024  # the next multiple of 1024 (6144) does not fit on b
    calls = len(proj.cache)
    assert fit.largest_context(build, model, plan, budget, n_ctx_train=131072, projector=proj) == expected
    assert len(proj.cache) - calls <= 8  # interpolated on the fullest device's load, not a linear scan
    p = fit.fit(build, model, plan, "auto", budget, n_ctx_train=131072, projector=proj)
    assert p.context == expected
    with pytest.raises(DoesNotFit) as err:
        fit.fit(build, model, plan, 8192, budget, n_ctx_train=131072, projector=proj)
    assert "bench-like.gguf at context 8192 with KV f16 needs " in err.value.message
    assert " and is over on RPC0[b:2] " in err.value.message
    assert err.value.message.endswith("; the largest context that fits is 5120")
    # the pooled sum alone would have allowed far more: the per-device check is what stops it
    assert proj(8192).total < budget.bytes


def test_what_if_rows_have_every_devices_part(build: Manifest, model: Path) -> None:
    budget = fit.pooled(_local(), [("a:1", [4 * GIB]), ("b:2", [4 * GIB])])
    rows = whatif.what_if(build, model, parse_recipe("turbo4"), 4096, budget, n_ctx_train=8192,
                          extra_args=("--rpc", "a:1,b:2"), runner=lambda a, e: fake_run(list(a)))
    r = next(r for r in rows if r.given)
    assert [u.device for u in r.devices] == [fit.LOCAL, "RPC0[a:1]", "RPC0[b:2]"]
    assert sum(u.bytes for u in r.devices) == r.total_bytes and r.fits
    doc = whatif.report(model, 4096, budget, rows, n_ctx_train=8192, parallel=1, backend="cpu")
    jsonschema.validate(doc, json.loads(whatif.schema_path().read_text()))
    assert doc["schema"] == "turboctl.whatif/2"
    assert doc["budget"]["local_bytes"] == 10 * GIB
    assert [d["device"] for d in doc["budget"]["devices"]] == ["RPC0[a:1]", "RPC0[b:2]"]
    a = rows[0].devices[1]
    assert doc["rows"][0]["devices"][1] == {"device": "RPC0[a:1]", "bytes": a.bytes, "budget": budget.devices[0].bytes,
                                            "weights": a.weights, "context": a.context, "compute": a.compute}
    assert a.bytes == a.weights + a.context + a.compute and a.context > 0


# --------------------------------------------------------------------------- doctor --rpc
def _record(m: Manifest) -> ident.BuildIdentity:
    mine = check.build_identity(m)
    return ident.BuildIdentity(mine.base, mine.series, mine.types, "pass 726/726 CPU now")


def _ram_probe(available: int) -> object:
    from turboctl import doctor

    return doctor.Probe("Linux", "x86_64", "6.1", run=lambda a: None, which=lambda n: None,
                        memory=lambda: (2 * available, available), disk_free=lambda p: 100 * GIB)


@pytest.mark.usefixtures("loopback")
def test_doctor_shows_the_table_per_worker_device(build: Manifest, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = bench_like(tmp_path / "m.gguf", n_ctx_train=32768)
    monkeypatch.setattr(doctor_cli, "current_probe", lambda: _ram_probe(2 * GIB))
    monkeypatch.setattr(fit, "_run_binary", fake_run)
    with fake_worker("patched", _record(build)) as w1, fake_worker("patched", _record(build)) as w2:
        w2.devices = [(512 * MIB + 40 * MIB, GIB)]  # 40 MiB after the margin: worker 2 limits the context
        eps = f"127.0.0.1:{w1.port},127.0.0.1:{w2.port}"
        res = runner.invoke(app, ["doctor", "--model", str(model), "--kv", "turbo4", "--ctx", "4096", "--rpc", eps])
        assert res.exit_code == 0, res.output
        assert f"RPC0[127.0.0.1:{w1.port}] (of " in res.output and f"RPC0[127.0.0.1:{w2.port}] (of 40.0 MiB)" in \
            res.output
        assert "this machine (of " in res.output
        assert (f"warning: RPC worker(s) 127.0.0.1:{w1.port}, 127.0.0.1:{w2.port} run on this machine: their free "
                "memory is this machine's, counted again in the pooled budget") in " ".join(res.output.split())
        res = runner.invoke(app, ["doctor", "--model", str(model), "--ctx", "32768", "--rpc", eps, "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        jsonschema.validate(doc, json.loads(whatif.schema_path().read_text()))
        f16 = doc["rows"][0]
        over = [d["device"] for d in f16["devices"] if d["bytes"] > d["budget"]]
        assert over == [f"RPC0[127.0.0.1:{w2.port}]"] and f16["fits"] is False
        assert f16["largest_context"] is not None and f16["largest_context"] < 32768
        assert [d["worker"] for d in doc["budget"]["devices"]] == [f"127.0.0.1:{w1.port}", f"127.0.0.1:{w2.port}"]
        assert all(h is not None and h.same_build(_record(build)) for h in w1.hellos)


@pytest.mark.usefixtures("loopback")
def test_doctor_refuses_a_worker_it_cannot_use(build: Manifest, tmp_path: Path) -> None:
    model = bench_like(tmp_path / "m.gguf")
    mine = check.build_identity(build)
    with fake_worker("stock", mine) as fw:
        res = runner.invoke(app, ["doctor", "--model", str(model), "--rpc", f"127.0.0.1:{fw.port}"])
    assert res.exit_code == WorkerError.exit_code
    assert f"error: RPC worker 127.0.0.1:{fw.port} closed the connection at HELLO: a stock rpc-server" in res.output
    res = runner.invoke(app, ["doctor", "--model", str(model), "--rpc", "nowhere"])
    assert res.exit_code == UsageError.exit_code
    assert "error: --rpc 'nowhere': expected HOST:PORT" in res.output


def test_workers_on_loopback_are_told_apart() -> None:
    eps = check.parse_endpoints("127.0.0.1:1,localhost:2,[::1]:3,192.168.1.20:4,mac-studio.local:5")
    assert [check.on_this_machine(ep) for ep in eps] == [True, True, True, False, False]
    assert check.loopback_note(eps[3:]) is None


@pytest.mark.parametrize(("args", "message"), [
    (["--rpc", "127.0.0.1:5"], "error: --kv, --ctx, --parallel and --rpc need --model or --profile"),
    (["--profile", "smollm2-demo", "--rpc", "127.0.0.1:5"],
     "error: --profile takes the model, --kv, --ctx, --parallel and the workers (--rpc) from the profile"),
])
def test_doctor_rpc_usage_errors(build: Manifest, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["doctor", *args])
    assert res.exit_code == UsageError.exit_code
    assert message in res.output
