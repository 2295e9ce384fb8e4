"""``turboctl bench all``: every benchmark on one model, one document, one report."""

from pathlib import Path
from typing import Annotated

import typer

from ...bench import store, suite
from ...bench.common import with_no_repack
from ...paths import get_paths
from ...preflight import current_build
from ..common import JsonOpt, handle_errors, start
from .options import (
    KvOpt,
    NoRepackOpt,
    OptModelOpt,
    OutputOpt,
    ProfileOpt,
    ReportOpt,
    ThreadsOpt,
    app,
    finish,
    model_and_profile,
)


@app.command("all")
@handle_errors
def bench_all(
    model: OptModelOpt = None,
    profile: ProfileOpt = None,
    kv: KvOpt = None,
    only: Annotated[str | None, typer.Option("--only", help=f"Run only these steps, comma-separated "
                                                           f"({', '.join(suite.STEPS)}).", show_default=False)] = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", "-f", help="kld: the text to evaluate on (kld is left "
                                                                       "out without it).", show_default=False)] = None,
    kld_ctx: Annotated[int, typer.Option("--kld-ctx", help="kld: tokens per chunk.")] = 2048,
    chunks: Annotated[int | None, typer.Option("--chunks", help="kld: only the first N chunks.",
                                               show_default=False)] = None,
    ctx_list: Annotated[str | None, typer.Option("--ctx-list", help="memory: the contexts (default: memory's).",
                                                 show_default=False)] = None,
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="speed: prompt tokens per pp test.")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="speed: generated tokens per tg test.")] = 128,
    depth: Annotated[str, typer.Option("--depth", "-d", help="speed: KV depths, comma-separated.")] = "0,4096",
    reps: Annotated[int, typer.Option("--reps", "-r", help="speed: repetitions per test.")] = 5,
    niah_ctx_list: Annotated[str | None, typer.Option("--niah-ctx-list", help="niah: the prompt lengths (default: "
                                                                         "niah's).", show_default=False)] = None,
    depths: Annotated[str | None, typer.Option("--depths", help="niah: needle depths in %, comma-separated "
                                                                "(default: niah's).", show_default=False)] = None,
    needles: Annotated[int, typer.Option("--needles", help="niah: needles per cell.")] = 1,
    niah_tokens: Annotated[int, typer.Option("--niah-tokens", help="niah: tokens per answer.")] = 32,
    prompts: Annotated[str | None, typer.Option("--prompts", help="prompts: only these prompts, comma-separated.",
                                                show_default=False)] = None,
    prompt_ctx: Annotated[int, typer.Option("--prompt-ctx", help="prompts: the server's context.")] = 4096,
    prompt_tokens: Annotated[int | None, typer.Option("--prompt-tokens", help="prompts: tokens per answer (default: "
                                                                              "each prompt's own).",
                                                      show_default=False)] = None,
    turns: Annotated[int | None, typer.Option("--turns", help="long-session: the first N turns (default: all).",
                                              show_default=False)] = None,
    session_tokens: Annotated[int, typer.Option("--session-tokens", help="long-session: tokens per answer.")] = 160,
    session_ctx: Annotated[int, typer.Option("--session-ctx", help="long-session: the server's context (capped at "
                                                                   "the model's training context).")] = 8192,
    threads: ThreadsOpt = None,
    no_repack: NoRepackOpt = False,
    output: OutputOpt = None,
    report: ReportOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every benchmark on one model with the same configurations: memory, speed, kld (with
    --corpus), niah, prompts, long-session; one JSON document and one report (--report DIR).

    Each finished step is cached: an interrupted run resumes at the step it was in."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    steps = suite.parse_only(only)
    model_path, extra_kv, server_args = model_and_profile(model, profile, paths, ui)
    target = suite.Target(model_path, tuple(extra_kv), with_no_repack(server_args, no_repack))
    settings = suite.SuiteSettings(kv=tuple(kv or ()), threads=threads, no_repack=no_repack, ctx_list=ctx_list,
                                   n_prompt=n_prompt, n_gen=n_gen, depth=depth, reps=reps, corpus=corpus,
                                   kld_ctx=kld_ctx, chunks=chunks, niah_ctx_list=niah_ctx_list, depths=depths,
                                   needles=needles, niah_tokens=niah_tokens, prompts=prompts, prompt_ctx=prompt_ctx,
                                   prompt_tokens=prompt_tokens, turns=turns, session_tokens=session_tokens,
                                   session_ctx=session_ctx)
    sha = store.model_sha256(model_path, paths, ui)
    result = suite.run(m, paths, ui, target, settings, steps, sha)
    document = suite.to_json(result, target, sha)

    def render() -> None:
        ui.table("bench all", ["step", "status"], [[s["step"], s["status"] + (f" ({s['reason']})" if "reason" in s
                                                                             else "")] for s in result.steps])

    finish(ui, document, output, json_out, render, report)
