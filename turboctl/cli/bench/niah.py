"""``turboctl bench niah``: needle-in-a-haystack retrieval per configuration, context and depth."""

from typing import Annotated

import typer

from ...bench import niah as niah_logic
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


@app.command("niah")
@handle_errors
def niah(
    model: OptModelOpt = None,
    profile: ProfileOpt = None,
    kv: KvOpt = None,
    ctx_list: Annotated[
        str | None, typer.Option("--ctx-list", help="Context lengths the haystack fills, comma-separated (default: "
                                                    "1024, 2048, 4096 up to the model's training context).",
                                 show_default=False)] = None,
    depths: Annotated[str, typer.Option("--depths", help="Needle depths in % of the haystack, comma-separated.")]
    = ",".join(map(str, niah_logic.DEFAULT_DEPTHS)),
    needles: Annotated[int, typer.Option("--needles", help="Needles per (context, depth): the first N of the "
                                                           "corpus.")] = niah_logic.DEFAULT_NEEDLES,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="The longest answer, in tokens.")]
    = niah_logic.DEFAULT_MAX_TOKENS,
    no_repack: NoRepackOpt = False,
    output: OutputOpt = None,
    report: ReportOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Needle in a haystack: a sentence hidden at several depths of our own prose filling several
    context lengths, then a question about it; retrieved when the answer says what the sentence says.

    One llama-server per configuration, at the largest context (each answer is cached: an
    interrupted run resumes). Default configurations: f16, turbo4, turbo3 (and the profile's)."""
    ui = start(json_out)
    paths = get_paths()
    m = current_build(paths)
    model_path, extra_kv, server_args = model_and_profile(model, profile, paths, ui)
    extra_args = server_args if not no_repack or "--no-repack" in server_args else (*server_args, "--no-repack")
    plan = niah_logic.make_plan(m, paths, ui, model=model_path, kv=kv or [], ctx_list=ctx_list, depths=depths,
                                needles=needles, max_tokens=max_tokens, extra_kv=extra_kv, extra_args=extra_args)
    result = niah_logic.run(plan, m, paths, ui)
    document = niah_logic.to_json(result, m)
    finish(ui, document, output, json_out, lambda: niah_logic.render(result, m, ui, document), report)
