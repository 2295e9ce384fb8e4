"""serve/fit: the memory budget (recorded macOS / nvidia-smi outputs), the projection parsed from
recorded llama-fit-params outputs, the context search, every error message."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import DATA
from tests.unit.fitfakes import COMPUTE, FIT, WEIGHTS, bench_like, compute_at, fake_fit_build, plan_for, synth_output
from turboctl import doctor
from turboctl.build.manifest import Manifest
from turboctl.errors import CommandFailed, DoesNotFit, VerificationError
from turboctl.serve import fit

MAC = DATA / "macos"
GIB = fit.GIB
MIB = fit.MIB


def probe(system: str, machine: str, outputs: dict[tuple[str, ...], str | None], *, total: int = 32 * GIB,
          available: int = 20 * GIB, tools: Sequence[str] = ()) -> doctor.Probe:
    return doctor.Probe(system, machine, "14.4", run=lambda a: outputs.get(tuple(a)),
                        which=lambda n: f"/usr/bin/{n}" if n in tools else None,
                        memory=lambda: (total, available), disk_free=lambda p: 100 * GIB)


def mac(wired: str | None = None, memsize: str | None = None) -> dict[tuple[str, ...], str | None]:
    return {
        ("sysctl", "-n", "hw.memsize"): memsize if memsize is not None else (MAC / "sysctl-hw.memsize.txt").read_text(),
        ("sysctl", "iogpu.wired_limit_mb"): wired if wired is not None else
        (MAC / "sysctl-iogpu.wired_limit_mb.txt").read_text(),
    }


# --------------------------------------------------------------------------- budget
def test_mac_default_working_set_is_two_thirds_of_16_gib() -> None:
    b = fit.machine_budget(probe("Darwin", "arm64", mac()))  # recorded: 17179869184 bytes, wired limit 0
    base = 16 * GIB * 2 // 3
    assert (b.kind, b.base, b.margin) == ("metal-default", base, int(base * 0.10))
    assert b.bytes == base - int(base * 0.10)
    assert b.source == ("Metal default working set (estimated: 2/3 of 16.0 GiB unified memory) 10.7 GiB - "
                        "margin 1.07 GiB")


def test_mac_default_working_set_above_36_gib_is_three_quarters() -> None:
    b = fit.machine_budget(probe("Darwin", "arm64", mac(memsize=str(64 * GIB))))
    assert b.base == 48 * GIB and b.margin == 2 * GIB and "3/4 of 64.0 GiB" in b.source
    assert fit.mac_default_working_set(36 * GIB) == 24 * GIB  # the 2/3 rule up to 36 GiB inclusive


def test_mac_wired_limit_wins_when_set() -> None:
    b = fit.machine_budget(probe("Darwin", "arm64", mac(wired="iogpu.wired_limit_mb: 12288\n")))
    assert (b.kind, b.base) == ("metal-wired-limit", 12 * GIB)
    assert b.source.startswith("Metal wired limit (iogpu.wired_limit_mb=12288) 12.0 GiB - margin 1.20 GiB")


def test_mac_memsize_unreadable_uses_the_memory_probe() -> None:
    b = fit.machine_budget(probe("Darwin", "arm64", mac(memsize=""), total=24 * GIB))
    assert b.base == 16 * GIB and "2/3 of 24.0 GiB" in b.source


def test_intel_mac_and_linux_use_available_ram() -> None:
    for system, machine in (("Darwin", "x86_64"), ("Linux", "x86_64")):
        b = fit.machine_budget(probe(system, machine, mac(), available=20 * GIB))
        assert (b.kind, b.bytes, b.margin) == ("ram-available", 18 * GIB, 2 * GIB)
        assert b.source == "available RAM 20.0 GiB - margin 2.00 GiB"


def test_margin_is_ten_percent_between_512_mib_and_2_gib() -> None:
    assert fit.margin_for(3 * GIB) == 512 * MIB
    assert fit.margin_for(10 * GIB) == GIB
    assert fit.margin_for(100 * GIB) == 2 * GIB
    assert fit.machine_budget(probe("Linux", "x86_64", {}, available=256 * MIB)).bytes == 0  # never negative


def test_cuda_build_uses_free_gpu_memory_from_nvidia_smi() -> None:
    query = ("nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits")
    recorded = (FIT / "nvidia-smi-memory-free-h200.txt").read_text()  # a real H200: "143156"
    b = fit.machine_budget(probe("Linux", "x86_64", {query: recorded}, tools=["nvidia-smi"]), backend="cuda")
    assert (b.kind, b.base) == ("cuda-free", 143156 * MIB)
    assert b.source.startswith("free GPU memory (nvidia-smi) 139.8 GiB")
    two = fit.machine_budget(probe("Linux", "x86_64", {query: recorded + recorded}, tools=["nvidia-smi"]),
                             backend="cuda")
    assert two.base == 2 * 143156 * MIB


def test_cuda_build_without_nvidia_smi_falls_back_to_ram() -> None:
    b = fit.machine_budget(probe("Linux", "x86_64", {}, available=20 * GIB), backend="cuda")
    assert b.kind == "ram-available" and b.source.startswith("available RAM (nvidia-smi unreadable)")


def test_parse_nvidia_free() -> None:
    assert fit.parse_nvidia_free("143156\n1000\n") == 144156 * MIB
    assert fit.parse_nvidia_free("[N/A]\n") is None
    assert fit.parse_nvidia_free("") is None
    assert fit.parse_nvidia_free(None) is None


# --------------------------------------------------------------------------- parsing
def test_parse_projection_from_recorded_runs() -> None:
    (n_ctx, seq, n_seq), bufs = fit.parse_projection((FIT / "fit-params-bench-a-f16-2048.txt").read_text())
    assert (n_ctx, seq, n_seq) == (2048, 2048, 1)
    assert bufs == [fit.BufferBytes("CPU", "none", True, 58755072, 16777216, 15740960)]
    (n_ctx, seq, n_seq), bufs = fit.parse_projection(
        (FIT / "fit-params-bench-a-turbo4-np4-kvu-4096.txt").read_text())
    assert (n_ctx, seq, n_seq) == (4096, 4096, 4)  # --kv-unified: one stream of all the cells
    assert [(b.buffer, b.host, b.model) for b in bufs] == [("AMX", False, 58720256), ("CPU", True, 8423424)]


def test_parse_projection_errors() -> None:
    with pytest.raises(VerificationError, match=r"^llama-fit-params printed no 'projected context' line: this build "
                                                r"lacks the byte projection$"):
        fit.parse_projection("Host 56 16 15\n")
    with pytest.raises(VerificationError, match="printed no 'projected bytes' lines after its context line"):
        fit.parse_projection("I llama_fit_params: projected context: n_ctx 2048, n_ctx_seq 2048, n_seq_max 1\n")


def test_help_flags_from_the_recorded_help() -> None:
    flags = fit.help_flags((FIT / "fit-params-help.txt").read_text())
    assert flags["-c"] and flags["--ctx-size"] and flags["-ub"] and flags["--fit-print"] and flags["-ctk"]
    assert not flags["--no-repack"] and not flags["-nr"] and not flags["--kv-unified"] and not flags["-kvu"]
    assert "--metrics" not in flags and "--api-key" not in flags


def test_memory_args_keeps_what_the_projection_knows() -> None:
    flags = fit.help_flags((FIT / "fit-params-help.txt").read_text())
    kept, skipped = fit.memory_args(["--no-repack", "--metrics", "-ub", "256", "--api-key-file", "k.txt",
                                     "--alias=x", "--ctx-size=4096"], flags)
    assert kept == ["--no-repack", "-ub", "256", "--ctx-size=4096"]
    assert skipped == ["--metrics", "--api-key-file", "k.txt", "--alias=x"]


# --------------------------------------------------------------------------- projection
@pytest.fixture()
def build(tmp_path: Path) -> Manifest:
    return fake_fit_build(tmp_path)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return bench_like(tmp_path / "bench-like.gguf")


_plan = plan_for


def test_context_args_unify_the_kv_of_several_slots(build: Manifest, model: Path) -> None:
    plan = _plan(model, "turbo4/turbo3;0..1+-2..-1=q8_0", build)
    assert fit.context_args(plan.recipe, 4096) == ["-c", "4096", "-np", "1", "-fa", "on", "-ctk", "turbo4",
                                                   "-ctv", "turbo3", "--kv-layers", "0..1+-2..-1=q8_0"]
    assert fit.context_args(plan.recipe, 8192, parallel=4, batch_size=512)[:5] == ["-c", "8192", "-np", "4",
                                                                                   "--kv-unified"]
    assert fit.context_args(plan.recipe, 8192, parallel=4, batch_size=512)[-2:] == ["-b", "512"]


def replay(text: str, rc: int = 0) -> fit.Runner:
    def run(args: Sequence[str], env: object) -> tuple[int, str]:
        return rc, text
    return run


def test_projection_of_the_recorded_f16_run(build: Manifest, model: Path) -> None:
    plan = _plan(model, "f16", build)
    p = fit.project(build, model, plan, 2048, runner=replay((FIT / "fit-params-bench-a-f16-2048.txt").read_text()))
    assert (p.weights, p.kv, p.compute, p.state) == (58755072, 16777216, 15740960, 0)
    assert p.total == 58755072 + 16777216 + 15740960 and p.n_ctx == 2048
    assert p.breakdown() == "weights 56.0 MiB + KV 16.0 MiB + compute 15.0 MiB = 87.0 MiB"


def test_projection_of_the_recorded_mixed_recipe(build: Manifest, model: Path) -> None:
    plan = _plan(model, "turbo4/turbo3;0..1+-2..-1=q8_0", build)
    p = fit.project(build, model, plan, 2048,
                    runner=replay((FIT / "fit-params-bench-a-mixed-2048.txt").read_text()))
    k, v = plan.kv_bytes(2048)
    assert p.kv == k + v == 6422528


def test_projection_counts_the_repacked_weights(build: Manifest, model: Path) -> None:
    plan = _plan(model, "turbo4", build)
    p = fit.project(build, model, plan, 4096, parallel=4,
                    runner=replay((FIT / "fit-params-bench-a-turbo4-np4-kvu-4096.txt").read_text()))
    assert p.weights == 58720256 + 8423424 and p.kv == 8912896 and p.parallel == 4


def test_projection_kv_of_other_types_is_an_error(build: Manifest, model: Path) -> None:
    plan = _plan(model, "turbo4", build)
    with pytest.raises(VerificationError, match=r"^the KV cache llama.cpp made differs from what was asked: "
                                                r"layer 0: asked turbo4/turbo4, llama.cpp has f16/f16"):
        fit.project(build, model, plan, 2048, runner=replay((FIT / "fit-params-bench-a-f16-2048.txt").read_text()))


def test_projection_kv_at_other_cells_is_an_error(build: Manifest, model: Path) -> None:
    plan = _plan(model, "f16", build)
    text = (FIT / "fit-params-bench-a-f16-2048.txt").read_text().replace(
        "projected context: n_ctx 2048", "projected context: n_ctx 4096")
    with pytest.raises(VerificationError, match=r"^llama-fit-params projects 16777216 bytes of KV cache at 4096 "
                                                r"cells, the recipe f16 holds 33554432$"):
        fit.project(build, model, plan, 4096, runner=replay(text))


def test_projection_context_smaller_than_kv_is_an_error(build: Manifest, model: Path) -> None:
    plan = _plan(model, "f16", build)
    text = (FIT / "fit-params-bench-a-f16-2048.txt").read_text().replace("context 16777216,", "context 0,")
    with pytest.raises(VerificationError, match=r"^llama-fit-params projects 0 bytes of context memory, less than "
                                                r"its own KV caches \(16777216\)$"):
        fit.project(build, model, plan, 2048, runner=replay(text))


def test_projection_without_kv_lines_is_an_error(build: Manifest, model: Path) -> None:
    plan = _plan(model, "f16", build)
    text = "\n".join(ln for ln in (FIT / "fit-params-bench-a-f16-2048.txt").read_text().splitlines()
                     if "llama_kv_cache" not in ln and "KV cache total" not in ln)
    with pytest.raises(VerificationError, match=r"^llama-fit-params logged no KV cache lines \(-v\): cannot check "
                                                r"the KV part$"):
        fit.project(build, model, plan, 2048, runner=replay(text))


def test_failed_projection_names_the_error(build: Manifest, model: Path) -> None:
    plan = _plan(model, "f16", build)
    with pytest.raises(CommandFailed, match=r"^llama-fit-params could not project bench-like.gguf at context 2048 "
                                            r"with KV f16: error while handling argument \"-ctk\": Unsupported "
                                            r"cache type: turbo5$"):
        fit.project(build, model, plan, 2048, runner=replay((FIT / "fit-params-bad-type.txt").read_text(), rc=1))


def test_failure_reason_is_the_first_logged_error() -> None:
    why, details = fit.failure_reason((FIT / "fit-params-h80-q8_0.txt").read_text(), 134)
    assert why == "llama_init_from_model: K cache type q8_0 with block size 32 does not divide n_embd_head_k=80"
    assert details[-1] == "what():  failed to create llama_context from model"
    assert fit.failure_reason("", 139) == ("exit code 139", [])


def test_projector_caches_and_skips_server_only_args(build: Manifest, model: Path) -> None:
    plan = _plan(model, "f16", build)
    calls: list[list[str]] = []

    def run(args: Sequence[str], env: object) -> tuple[int, str]:
        calls.append(list(args))
        if "--help" in args:
            return 0, (FIT / "fit-params-help.txt").read_text()
        return 0, synth_output(int(args[args.index("-c") + 1]))

    proj = fit.Projector(build, model, plan, extra_args=["--no-repack", "--metrics"], runner=run)
    a, b = proj(2048), proj(2048)
    assert a is b and len(calls) == 2  # --help once, one projection
    assert calls[1][-1] == "--no-repack" and "--metrics" not in calls[1]
    assert a.notes == ("not passed to llama-fit-params (server-only): --metrics",)


def test_the_fake_binary_runs_through_proc(build: Manifest, model: Path) -> None:
    plan = _plan(model, "q8_0", build)
    p = fit.project(build, model, plan, 8192)
    assert p.kv == plan.kv_bytes(8192)[0] * 2 and p.compute == compute_at(8192) and p.weights == WEIGHTS


# --------------------------------------------------------------------------- context search
def test_candidates() -> None:
    assert fit.candidates(2048) == [1024, 2048]
    assert fit.candidates(3000) == [1024, 2048]
    assert fit.candidates(512) == [512]
    assert fit.candidates(0) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300), st.integers(0, 2 * 10**8),
       st.integers(0, 10**5))
def test_search_largest_is_the_brute_force_answer(steps: list[int], budget: int, base: int) -> None:
    totals = [base + sum(steps[:i + 1]) * 100 for i in range(len(steps))]  # non-decreasing
    values = [1024 * (i + 1) for i in range(len(totals))]
    calls: list[int] = []

    def fits(v: int) -> tuple[bool, int]:
        calls.append(v)
        t = totals[v // 1024 - 1]
        return t <= budget, t

    want = max((v for v, t in zip(values, totals, strict=True) if t <= budget), default=None)
    assert fit.search_largest(fits, values, budget) == want
    assert len(calls) <= 2 + 2 * (len(values).bit_length() + 1)


def test_search_on_a_linear_total_takes_four_calls() -> None:
    totals = {1024 * k: 60 * MIB + k * 4 * MIB for k in range(1, 129)}  # KV linear in the context
    calls: list[int] = []

    def fits(v: int) -> tuple[bool, int]:
        calls.append(v)
        return totals[v] <= 300 * MIB, totals[v]

    assert fit.search_largest(fits, sorted(totals), 300 * MIB) == 60 * 1024
    assert len(calls) == 4


def _projector(build: Manifest, model: Path, recipe: str = "f16") -> fit.Projector:
    plan = _plan(model, recipe, build)
    return fit.Projector(build, model, plan, runner=lambda a, e: (0, synth_output(
        int(a[a.index("-c") + 1]), a[a.index("-ctk") + 1], a[a.index("-ctv") + 1])))


def total_at(n_ctx: int, per_cell: int = 8 * 2 * 512) -> int:
    return WEIGHTS + n_ctx * per_cell + compute_at(n_ctx)  # f16: 8 layers x (K + V) x 256 values x 2 bytes


def test_fit_auto_picks_the_largest_context_that_fits(build: Manifest, model: Path) -> None:
    budget = fit.Budget(total_at(20 * 1024) + 1000, "test")
    proj = _projector(build, model)
    p = fit.fit(build, model, proj.plan, "auto", budget, n_ctx_train=131072, projector=proj)
    assert p.context == 20 * 1024 and p.total == total_at(20 * 1024)


def test_fit_a_context_that_fits(build: Manifest, model: Path) -> None:
    proj = _projector(build, model)
    p = fit.fit(build, model, proj.plan, 4096, fit.Budget(10 * GIB, "test"), n_ctx_train=2048, projector=proj)
    assert p.context == 4096 and p.kv == 4096 * 8 * 2 * 512


def test_does_not_fit_names_the_largest_context(build: Manifest, model: Path) -> None:
    budget = fit.Budget(total_at(3 * 1024) + 10, "available RAM 1.0 GiB - margin 512 MiB")
    proj = _projector(build, model)
    with pytest.raises(DoesNotFit) as err:
        fit.fit(build, model, proj.plan, 8192, budget, n_ctx_train=32768, projector=proj)
    assert err.value.message == (
        "bench-like.gguf at context 8192 with KV f16 needs 139.0 MiB (weights 56.0 MiB + KV 64.0 MiB + compute "
        f"19.0 MiB = 139.0 MiB), over the budget of {fit.human(budget.bytes)} (available RAM 1.0 GiB - margin "
        "512 MiB); the largest context that fits is 3072")
    assert err.value.hint == "use context: 3072 (or auto), or a KV recipe with fewer bits"
    assert err.value.exit_code == 20


def test_does_not_fit_when_nothing_fits(build: Manifest, model: Path) -> None:
    budget = fit.Budget(50 * MIB, "test budget")
    proj = _projector(build, model)
    with pytest.raises(DoesNotFit, match=r"; nothing fits, not even context 1024$"):
        fit.fit(build, model, proj.plan, 2048, budget, n_ctx_train=2048, projector=proj)
    with pytest.raises(DoesNotFit) as err:
        fit.fit(build, model, proj.plan, "auto", budget, n_ctx_train=2048, projector=proj)
    assert err.value.message == (
        "bench-like.gguf with KV f16 does not fit at any context: context 1024 needs 79.0 MiB (weights 56.0 MiB + "
        "KV 8.0 MiB + compute 15.0 MiB = 79.0 MiB), over the budget of 50.0 MiB (test budget)")
    assert err.value.hint == "free memory, use a smaller model or a KV recipe with fewer bits"
    assert compute_at(1024) == COMPUTE


def test_a_projection_that_hangs_is_named_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "hangs"
    script.write_text("#!/bin/sh\necho 'E a line the program logged before'\nexec sleep 30\n")
    script.chmod(0o755)
    monkeypatch.setattr(fit, "FIT_TIMEOUT_S", 0.5)
    rc, output = fit._run_binary([str(script)], None)
    assert rc != 0
    assert fit.failure_reason(output, rc)[0] == "did not finish within 0.5 s, twice (stopped)"


def test_a_projection_that_hangs_once_is_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mark = tmp_path / "ran"
    script = tmp_path / "hangs-once"
    script.write_text(f"#!/bin/sh\nif [ -e {mark} ]; then echo 'I projected'; exit 0; fi\n"
                      f"touch {mark}\nexec sleep 30\n")
    script.chmod(0o755)
    monkeypatch.setattr(fit, "FIT_TIMEOUT_S", 0.5)
    rc, output = fit._run_binary([str(script)], None)
    assert (rc, output.strip()) == (0, "I projected")
