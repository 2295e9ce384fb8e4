"""Slow: the memory fit's projection (llama-fit-params of the real build) against what a real
llama-server allocates at start, for the tiny generated model and ../shared/models/bench-a-h128.gguf,
with f16, turbo4 and a mixed per-layer recipe: the KV bytes exactly, the total within 5 %."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import jsonschema
import pytest

from tests.integration.conftest import slow_home
from tests.integration.server import LlamaServer
from tests.integration.tinymodel import write_tiny_gemma4, write_tiny_model, write_tiny_qwen35
from turboctl.build import manifest
from turboctl.errors import DoesNotFit
from turboctl.kv.recipe import parse_recipe
from turboctl.llamalog import kv_contexts
from turboctl.preflight import preflight
from turboctl.serve import fit, whatif

pytestmark = pytest.mark.slow

BENCH_A = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "bench-a-h128.gguf"
RECIPES = ("f16", "turbo4", "turbo4/turbo3;0..1+-2..-1=q8_0")
_MODEL_BUF = re.compile(r"load_tensors: +(\S+) model buffer size = +([\d.]+) MiB")
_COMPUTE_BUF = re.compile(r"sched_reserve: +(\S+) compute buffer size = +([\d.]+) MiB")
_RS_BUF = re.compile(r"llama_memory_recurrent: +(\S+) RS buffer size = +([\d.]+) MiB")
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
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fit")
    if not BENCH_A.is_file():
        pytest.fail(f"{BENCH_A} is missing (../shared/models/bench-a-h128.gguf)")
    return {
        "tiny": write_tiny_model(d / "tiny.gguf", head_dim=128, n_layer=4, n_ctx=4096),
        # sliding-window + full-attention layers (two caches), the last two reading earlier layers' caches
        "gemma4": write_tiny_gemma4(d / "gemma4.gguf", n_layer=6, n_kv_shared=2, n_ctx=4096),
        # recurrent layers: context memory that is not KV
        "qwen35": write_tiny_qwen35(d / "qwen35.gguf"),
        "bench-a": BENCH_A,
    }


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("which", ["tiny", "bench-a", "gemma4", "qwen35"])
@pytest.mark.parametrize("parallel", [1, 4])
def test_projection_matches_server(llama_build: manifest.Manifest, tiny: dict[str, Path], tmp_path: Path,
                                   recipe: str, which: str, parallel: int) -> None:
    model = tiny[which]
    context = 2048
    _info, [plan] = preflight(llama_build, model, [parse_recipe(recipe)])
    env = dict(os.environ, LLAMA_ARG_REPACK="0")
    proj = fit.project(llama_build, model, plan, context, parallel=parallel, env=env)
    assert proj.n_ctx == context
    if which != "gemma4":  # sliding-window caches hold fewer cells (checked per cache by the projection)
        k, v = plan.kv_bytes(proj.n_ctx)
        assert proj.kv == k + v  # exactly the recipe's arithmetic
    assert (proj.state > 0) == (which == "qwen35")

    args = ["-m", str(model), "-t", "2", "-lv", "4", *fit.context_args(plan.recipe, context, parallel=parallel)]
    os.environ["LLAMA_ARG_REPACK"] = "0"
    try:
        with LlamaServer(str(llama_build.binary("llama-server")), args, tmp_path / "server.log") as srv:
            log = srv.log()
    finally:
        del os.environ["LLAMA_ARG_REPACK"]
    weights, kv, compute = server_buffers(log)
    state = sum(float(m[2]) for m in _RS_BUF.finditer(log)) * fit.MIB
    assert (state > 0) == (which == "qwen35"), [ln for ln in log.splitlines() if "buffer size" in ln]
    total = weights + kv + int(state) + compute
    print(f"\n{which} {recipe} np={parallel}: projected {proj.breakdown()} ({proj.total} B); server weights "
          f"{weights} + KV {kv} + state {int(state)} + compute {compute} = {total} B; "
          f"diff {100 * (proj.total - total) / total:+.2f} %")
    assert kv == proj.kv
    assert abs(proj.total - total) <= 0.05 * total
    srv.assert_clean_exit()


def test_largest_context_really_fits(llama_build: manifest.Manifest) -> None:
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


def test_does_not_fit_with_the_real_binary(llama_build: manifest.Manifest) -> None:
    _info, [plan] = preflight(llama_build, BENCH_A, [parse_recipe("f16")])
    at_1k = fit.project(llama_build, BENCH_A, plan, 1024, env=dict(os.environ, LLAMA_ARG_REPACK="0"))
    budget = fit.Budget(at_1k.total + 100, "test budget")
    with pytest.raises(DoesNotFit, match=r"^bench-a-h128.gguf at context 2048 with KV f16 needs .* over the budget "
                                         r"of .* \(test budget\); the largest context that fits is 1024$"):
        fit.fit(llama_build, BENCH_A, plan, 2048, budget, n_ctx_train=2048,
                env=dict(os.environ, LLAMA_ARG_REPACK="0"))


def test_doctor_what_if_on_the_real_build(llama_build: manifest.Manifest, tmp_path: Path) -> None:
    env = dict(os.environ, TURBOCTL_HOME=str(slow_home()))
    res = subprocess.run([sys.executable, "-m", "turboctl", "doctor", "--model", str(BENCH_A), "--kv",
                          "turbo4/turbo3;0..1+-2..-1=q8_0", "--ctx", "2048", "--json"], env=env, text=True,
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(whatif.schema_path().read_text()))
    rows = {r["recipe"]: r for r in doc["rows"]}
    assert list(rows) == [*whatif.WHAT_IF_TYPES, "turbo4/turbo3;0..1+-2..-1=q8_0"]
    for label, row in rows.items():
        _info, [plan] = preflight(llama_build, BENCH_A, [parse_recipe(label)])
        assert row["skipped"] is None and row["kv_bytes"] == sum(plan.kv_bytes(2048)), row
        assert row["largest_context"] == 2048 and row["fits"] is True  # 2048 is bench-a's training context
