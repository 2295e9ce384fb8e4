"""``turboctl bench prompts``: the prompt matrix answered under each KV configuration, against f16."""

from typing import Annotated

import typer

from ...bench import prompts as prompts_logic
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
    app,
    finish,
    model_and_profile,
)


@app.command("prompts")
@handle_errors
def prompts(
    model: OptModelOpt = None,
    profile: ProfileOpt = None,
    kv: KvOpt = None,
    only: Annotated[str | None, typer.Option("--prompts", help="Only these prompts, comma-separated (p01..p10; "
                                                               "default: all).", show_default=False)] = None,
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="The server's context (the early-context prompt's filler "
                                                         "is cut to fit it).")] = prompts_logic.DEFAULT_CONTEXT,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", help="Tokens to generate per answer "
                                                                             "(default: each prompt's own).",
                                                   show_default=False)] = None,
    side_by_side: Annotated[bool, typer.Option("--side-by-side", help="Also print each prompt's answers next to "
                                                                      "f16's.")] = False,
    no_repack: NoRepackOpt = False,
    output: OutputOpt = None,
    report: ReportOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ten prompts of our own (factual recall, reasoning, code, early-context recall after long
    filler, constrained writing, multi-turn, JSON, translation, strict formatting) answered at
    temperature 0 by llama-server under each configuration: each answer's automatic check, and
    its agreement with the f16 answer (exact-prefix tokens, similarity, identical).

    One llama-server per configuration; every answer is cached as soon as it is measured (a
    rerun measures only what is missing). Default configurations: f16, turbo4, turbo3 (and the
    profile's); f16 is always added as the baseline."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    model_path, extra_kv, server_args = model_and_profile(model, profile, paths, ui)
    extra_args = (*server_args, "--no-repack") if no_repack and "--no-repack" not in server_args else server_args
    document = prompts_logic.document(m, paths, ui, model=model_path, kv=kv or [], extra_kv=extra_kv,
                                      extra_args=extra_args, context=ctx, only=only, max_tokens=max_tokens)
    finish(ui, document, output, json_out, lambda: prompts_logic.render(document, ui, side_by_side=side_by_side),
           report)
