"""``turboctl bench kld`` and ``turboctl bench speed``: the llama.cpp tools' own measurements
(llama-perplexity, llama-bench), no server."""

from pathlib import Path
from typing import Annotated

import typer

from ...bench import kld as kld_logic
from ...bench import speed as speed_logic
from ...paths import get_paths
from ...preflight import current_build
from ...serve.request import checked_workers
from ..common import JsonOpt, handle_errors, start
from .options import KvOpt, ModelOpt, NoRepackOpt, OutputOpt, ReportOpt, ThreadsOpt, app, finish


@app.command("kld")
@handle_errors
def kld(
    model: ModelOpt,
    corpus: Annotated[Path, typer.Option("--corpus", "-f", help="The text to evaluate on.", show_default=False)],
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Context size (tokens per chunk).")] = 2048,
    chunks: Annotated[
        int | None, typer.Option("--chunks", help="Evaluate only the first N chunks (default: the whole text).",
                                 show_default=False)] = None,
    threads: ThreadsOpt = None,
    kv: KvOpt = None,
    output: OutputOpt = None,
    report: ReportOpt = None,
    no_repack: NoRepackOpt = False,
    keep_base: Annotated[
        bool, typer.Option("--keep-base", help="Keep the f16 base logits file (deleted by default).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """KL divergence of each KV configuration against f16 K/V (llama-perplexity).

    Default configurations (K/V): f16, q8_0, q4_0, iq4_nl, turbo4, turbo3, turbo2, q8_0/turbo3."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    plan = kld_logic.make_plan(m, paths, model=model, corpus=corpus, ctx=ctx, chunks=chunks, threads=threads,
                               kv=kv or [], keep_base=keep_base, repack=not no_repack)
    result = kld_logic.run(plan, ui)
    finish(ui, kld_logic.to_json(result, m), output, json_out, lambda: kld_logic.render(result, m, ui), report)


@app.command("speed")
@handle_errors
def speed(
    model: ModelOpt,
    kv: KvOpt = None,
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens per pp test.")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens per tg test.")] = 128,
    depth: Annotated[str, typer.Option("--depth", "-d",
                                       help="KV depths (tokens already in the cache), comma-separated.")] = "0,4096",
    threads: ThreadsOpt = None,
    reps: Annotated[int, typer.Option("--reps", "-r", help="Repetitions per test.")] = 5,
    no_repack: NoRepackOpt = False,
    rpc: Annotated[
        str | None,
        typer.Option("--rpc", help="Split the model across these RPC workers (HOST:PORT,...; turboctl worker), "
                                   "each checked first as serve --rpc checks it.", show_default=False),
    ] = None,
    output: OutputOpt = None,
    report: ReportOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Prompt and generation speed of each KV configuration (llama-bench, once per K/V pair).

    Default configurations: f16, q8_0, q4_0, turbo4, turbo3, turbo2 (K and V alike)."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    workers = [str(w.endpoint) for w in checked_workers([rpc], m, ui)[0]] if rpc else []
    plan = speed_logic.make_plan(m, paths, model=model, kv=kv or [], n_prompt=n_prompt, n_gen=n_gen,
                                 depth=depth, threads=threads, reps=reps, repack=not no_repack, rpc=workers)
    result = speed_logic.run(plan, ui)
    finish(ui, speed_logic.to_json(result, m), output, json_out, lambda: speed_logic.render(result, m, ui), report)
