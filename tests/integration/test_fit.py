"""Slow: the memory fit's projection (llama-fit-params of the real build) against what a real
llama-server allocates at start, for the tiny generated model and ../shared/models/bench-a-h128.gguf,
with f16, turbo4 and a mixed per-layer recipe: the KV bytes exactly, the total within 5 %."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.integration.server import LlamaServer
from tests.integration.tinymodel import write_tiny_model
from turboctl.build import manifest
from turboctl.kv.recipe import parse_recipe
from turboctl.llamalog import kv_contexts
from turboctl.preflight import preflight
from turboctl.serve import fit

pytestmark = pytest.mark.slow

BENCH_A = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "bench-a-h128.gguf"
RECIPES = ("f16", "turbo4", "turbo4/turbo3;0..1+-2..-1=q8_0")
_MODEL_BUF = re.compile(r"load_tensors: +(\S+) model buffer size = +([\d.]+) MiB")
_COMPUTE_BUF = re.compile(r"sched_reserve: +(\S+) compute buffer size = +([\d.]+) MiB")
_OUTPUT_BUF = re.compile(r"llama_context: +(\S+) +output buffer size = +([\d.]+) MiB")


def server_buffers(log: str) -> tuple[int, int, int]:
    """(weights, KV, compute) bytes as llama-server reports them at start (MiB with 2 decimals for
    the weights and compute buffers: ±0.005 MiB; the KV bytes exactly)."""
    weights = sum(float(m[2]) for m in _MODEL_BUF.finditer(log)) * fit.MIB
    compute = sum(float(m[2]) for m in _COMPUTE_BUF.finditer(log)) * fit.MIB
    compute += sum(float(m[2]) for m in _OUTPUT_BUF.finditer(log)) * fit.MIB
    contexts = kv_contexts(log)
    assert contexts and contexts[0].total_bytes is not None, log[-2000:]
    assert weights > 0 and compute > 0, log[-2000:]
    return int(weights), contexts[0].total_bytes, int(compute)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("fit") / "tiny.gguf", head_dim=128, n_layer=4, n_ctx=4096)


def models(tiny: Path) -> list[Path]:
    if not BENCH_A.is_file():
        pytest.fail(f"{BENCH_A} is missing (../shared/models/bench-a-h128.gguf)")
    return [tiny, BENCH_A]


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("which", ["tiny", "bench-a"])
@pytest.mark.parametrize("parallel", [1, 4])
def test_projection_matches_server(llama_build: manifest.Manifest, tiny: Path, tmp_path: Path, recipe: str,
                                   which: str, parallel: int) -> None:
    model = models(tiny)[0 if which == "tiny" else 1]
    context = 2048
    _info, [plan] = preflight(llama_build, model, [parse_recipe(recipe)])
    env = dict(os.environ, LLAMA_ARG_REPACK="0")
    proj = fit.project(llama_build, model, plan, context, parallel=parallel, env=env)
    k, v = plan.kv_bytes(proj.n_ctx)
    assert proj.kv == k + v  # exactly the recipe's arithmetic
    assert proj.n_ctx == context

    args = ["-m", str(model), "-t", "2", "-lv", "4", *fit.context_args(plan, context, parallel=parallel)]
    os.environ["LLAMA_ARG_REPACK"] = "0"
    try:
        with LlamaServer(str(llama_build.binary("llama-server")), args, tmp_path / "server.log") as srv:
            log = srv.log()
    finally:
        del os.environ["LLAMA_ARG_REPACK"]
    weights, kv, compute = server_buffers(log)
    total = weights + kv + compute
    print(f"\n{which} {recipe} np={parallel}: projected {proj.breakdown()} ({proj.total} B); server weights "
          f"{weights} + KV {kv} + compute {compute} = {total} B; diff {100 * (proj.total - total) / total:+.2f} %")
    assert kv == proj.kv
    assert abs(proj.total - total) <= 0.05 * total
    srv.assert_clean_exit()


def test_largest_context_really_fits(llama_build: manifest.Manifest, tiny: Path) -> None:
    """``auto`` against a budget between two contexts' projections picks the lower one, with few calls."""
    _info, [plan] = preflight(llama_build, BENCH_A, [parse_recipe("turbo4")])
    env = dict(os.environ, LLAMA_ARG_REPACK="0")
    probe = fit.Projector(llama_build, BENCH_A, plan, env=env)
    at_5k, at_6k = probe(5 * 1024), probe(6 * 1024)
    budget = fit.Budget((at_5k.total + at_6k.total) // 2, "test budget")
    calls: list[Sequence[str]] = []

    def counting(args: Sequence[str], env: Mapping[str, str] | None) -> tuple[int, str]:
        calls.append(args)
        return fit._run_binary(args, env)

    counted = fit.Projector(llama_build, BENCH_A, plan, env=env, runner=counting)
    assert fit.largest_context(llama_build, BENCH_A, plan, budget, n_ctx_train=32768, projector=counted) == 5 * 1024
    print(f"\nlargest context 5120 found with {len(calls)} llama-fit-params calls")
    assert len(calls) <= 8
