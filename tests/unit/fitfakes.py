"""Fakes for the memory-fit tests, made from the recorded real ``llama-fit-params`` outputs in
``tests/data/fit`` (bench-a-h128: llama, 8 layers, 2 KV heads of head dim 128, trained at 2048).

:func:`synth_output` rewrites the recorded f16 run at 2048 cells for another context and
uniform K/V types: the KV lines from the types' exact row bytes, the compute buffer growing by
1 KiB per cell above 4096 (the shape measured on the real binary: flat, then linear).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.conftest import DATA
from tests.unit import kvmodels
from turboctl.build.manifest import Manifest
from turboctl.kv.recipe import RecipePlan
from turboctl.kv.rules import row_bytes

FIT = DATA / "fit"
F16_2048 = FIT / "fit-params-bench-a-f16-2048.txt"
N_LAYER = 8
N_EMBD_KV = 256  # 2 KV heads x head dim 128
WEIGHTS = 58755072
COMPUTE = 15740960


def bench_like(path: Path, *, n_ctx_train: int | None = 2048, head_dim: int = 128) -> Path:
    """A metadata-only GGUF with bench-a-h128's attention shape."""
    kv: dict[str, int] = {"block_count": N_LAYER, "embedding_length": 4 * head_dim, "head_count": 4,
                          "head_count_kv": 2, "key_length": head_dim, "value_length": head_dim}
    if n_ctx_train is not None:
        kv["context_length"] = n_ctx_train
    return kvmodels.write_gguf(path, "llama", **kv)


def compute_at(n_ctx: int) -> int:
    return COMPUTE + max(0, n_ctx - 4096) * 1024


def synth_output(n_ctx: int, type_k: str = "f16", type_v: str = "f16", *, weights: int = WEIGHTS,
                 compute: int | None = None, model: Path | None = None, rules: str | None = None) -> str:
    """The recorded run rewritten for ``n_ctx`` cells and the recipe K/V[;rules] on ``model``'s layers
    (bench-a-h128's shape without a model)."""
    from turboctl.kv.layout import read_layout
    from turboctl.kv.recipe import parse_recipe
    from turboctl.kv.rules import layer_ranges

    text = F16_2048.read_text()
    recipe = f"{type_k}/{type_v}" + (f";{rules}" if rules else "")
    table: dict[int, tuple[str, str]] = {}
    k = v = 0
    if model is None:
        table = {il: (type_k, type_v) for il in range(N_LAYER)}
        k = n_ctx * N_LAYER * row_bytes(type_k, N_EMBD_KV)
        v = n_ctx * N_LAYER * row_bytes(type_v, N_EMBD_KV)
    else:
        plan = parse_recipe(recipe).resolve(read_layout(model)[1])
        table = plan.table()
        k, v = plan.kv_bytes(n_ctx)
    parts: list[tuple[list[int], tuple[str, str]]] = []
    for il in sorted(table):
        if parts and parts[-1][1] == table[il] and parts[-1][0][-1] == il - 1:
            parts[-1][0].append(il)
        else:
            parts.append(([il], table[il]))
    line = " | ".join(f"{layer_ranges(ls).replace(', ', '')} {tk}/{tv}" for ls, (tk, tv) in parts)
    text = text.replace("KV layers: 0-7 f16/f16", f"KV layers: {line}")
    text = re.sub(r"KV bytes: \d+ \(K \d+, V \d+\) in 8 layers, \d+ cells",
                  f"KV bytes: {k + v} (K {k}, V {v}) in {len(table)} layers, {n_ctx} cells", text)
    text = re.sub(r"KV cache total: \d+ bytes", f"KV cache total: {k + v} bytes", text)
    text = re.sub(r"projected context: n_ctx \d+, n_ctx_seq \d+",
                  f"projected context: n_ctx {n_ctx}, n_ctx_seq {n_ctx}", text)
    c = compute_at(n_ctx) if compute is None else compute
    return re.sub(r"model \d+, context \d+, compute \d+", f"model {weights}, context {k + v}, compute {c}", text)


def arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def fake_run(args: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """What the fake ``llama-fit-params`` prints for these arguments, and its exit code."""
    args = list(args)
    if "--help" in args:
        return 0, (FIT / "fit-params-help.txt").read_text()
    if (arg(args, "-ctk") or "").startswith("turbo5"):
        return 1, (FIT / "fit-params-bad-type.txt").read_text()
    model = arg(args, "-m")
    if model and any(t in ("q8_0", "q4_0") for t in (arg(args, "-ctk"), arg(args, "-ctv"))):
        from turboctl.kv.layout import read_layout

        if any(la.head_dim_k % 32 for la in read_layout(Path(model))[1].owned()):
            return 134, (FIT / "fit-params-h80-q8_0.txt").read_text()  # block size 32 does not divide it
    text = synth_output(int(arg(args, "-c") or 2048), arg(args, "-ctk") or "f16", arg(args, "-ctv") or "f16",
                        model=Path(model) if model else None, rules=arg(args, "--kv-layers"))
    rpc = arg(args, "--rpc")
    return 0, split_rpc(text, rpc.split(",")) if rpc else text


_CPU_BYTES = re.compile(r"^(.*llama_fit_params: projected bytes: )CPU \(device none, host\): "
                        r"model (\d+), context (\d+), compute (\d+)$", re.MULTILINE)


def split_rpc(text: str, workers: Sequence[str]) -> str:
    """A projection with RPC workers, the way the real run splits it (tests/data/fit/
    fit-params-bench-a-turbo4-rpc2-4096.txt): each worker's device ``RPC0[HOST:PORT]`` holds its
    share of the layers and their KV cache, this machine keeps 1/8 of the weights (the token
    embeddings) and the host compute buffer; weights and KV split evenly, the rest to the last worker."""
    m = _CPU_BYTES.search(text)
    assert m is not None, "no CPU projection line to split"
    weights, context, compute = int(m[2]), int(m[3]), int(m[4])
    local = weights // 8
    n = len(workers)
    w_each, c_each = (weights - local) // n, context // n
    lines = []
    for i, ep in enumerate(workers):
        last = i == n - 1
        w = weights - local - w_each * (n - 1) if last else w_each
        c = context - c_each * (n - 1) if last else c_each
        lines.append(f"{m[1]}RPC0[{ep}] (device RPC{i}, device): model {w}, context {c}, compute 0")
    lines.append(f"{m[1]}CPU (device none, host): model {local}, context 0, compute {compute}")
    return text[:m.start()] + "\n".join(lines) + text[m.end():]


def main(args: list[str]) -> int:
    """The fake ``llama-fit-params`` program (see :data:`SCRIPT`)."""
    rc, text = fake_run(args)
    sys.stdout.write(text)
    return rc


SCRIPT = f'''#!{sys.executable}
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.unit.fitfakes import main
sys.exit(main(sys.argv[1:]))
'''


def write_fake_fit_params(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "llama-fit-params"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path


def fake_fit_build(tmp_path: Path) -> Manifest:
    """A fake build (tests/unit/fakebuild.py) whose llama-fit-params is this module's."""
    from tests.unit.fakebuild import fake_build

    home = tmp_path / "turboctl-home"
    write_fake_fit_params(home / "build" / "fake-cpu" / "bin")
    return fake_build(home)


def plan_for(model: Path, recipe: str, m: Manifest) -> RecipePlan:
    """The checked plan of a recipe on a model (the preflight serve runs)."""
    from turboctl.kv.recipe import parse_recipe
    from turboctl.preflight import preflight

    return preflight(m, model, [parse_recipe(recipe)])[1][0]
