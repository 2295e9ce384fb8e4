"""``turboctl bench long-session``: a 50-turn conversation per configuration, compared with f16's."""

from typing import Annotated

import typer

from ...bench import session as session_logic
from ...paths import get_paths
from ...preflight import current_build
from ..common import JsonOpt, handle_errors, start
from .options import KvOpt, NoRepackOpt, OptModelOpt, OutputOpt, ProfileOpt, ReportOpt, app, finish, model_and_profile


@app.command("long-session")
@handle_errors
def long_session(
    model: OptModelOpt = None,
    profile: ProfileOpt = None,
    kv: KvOpt = None,
    turns: Annotated[
        int | None, typer.Option("--turns", help="Run the session's first N turns (default: all 50).",
                                 show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens generated per answer at most.")] = (
        session_logic.DEFAULT_MAX_TOKENS),
    ctx: Annotated[int, typer.Option("--ctx", help="The server's context (capped at the model's training "
                                                   "context); the oldest exchanges are dropped when the history "
                                                   "no longer fits.")] = session_logic.DEFAULT_CONTEXT,
    no_repack: NoRepackOpt = False,
    output: OutputOpt = None,
    report: ReportOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show a row per turn.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """A long conversation (code generation -> debugging -> refactoring -> testing -> iteration)
    per configuration, each continuing its own answers at temperature 0: per-turn response
    length, repetition, references to earlier names, agreement with f16, and the first turn
    where a configuration diverges from f16.

    One llama-server per configuration; each turn is cached as it is measured, so an
    interrupted run resumes at the first turn not measured. Default configurations: f16,
    turbo4, turbo3 (and the profile's); f16 is always added."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    model_path, extra_kv, server_args = model_and_profile(model, profile, paths, ui)
    if no_repack and "--no-repack" not in server_args and "-nr" not in server_args:
        server_args = (*server_args, "--no-repack")
    plan = session_logic.make_plan(m, paths, ui, model=model_path, kv=kv or [], turns=turns, max_tokens=max_tokens,
                                   context=ctx, extra_kv=extra_kv, extra_args=server_args)
    result = session_logic.run(plan, m, paths, ui)
    doc = session_logic.to_json(result, m)
    finish(ui, doc, output, json_out, lambda: session_logic.render(doc, ui, verbose=verbose), report)
