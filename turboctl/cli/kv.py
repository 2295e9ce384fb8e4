"""``turboctl kv explain``: what a KV recipe does on a model, before anything is loaded."""

from pathlib import Path
from typing import Annotated

import typer

from ..kv import explain as explain_logic
from .common import JsonOpt, handle_errors, start

app = typer.Typer(
    name="kv",
    help="KV cache recipes: per-layer K/V types, TURBO_LAYER_ADAPTIVE modes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("explain")
@handle_errors
def explain(
    recipe: Annotated[str, typer.Argument(
        help="T or K/V, then optionally ;mode=N, then optionally ;RULES, e.g. 'turbo4/turbo3;0..1+-2..-1=q8_0' "
             "or 'turbo4;mode=7' (quote it: ';' ends a shell command).", show_default=False)],
    model: Annotated[Path, typer.Option("--model", "-m", help="The GGUF model file (only its metadata is read).",
                                        show_default=False)],
    ctx: Annotated[int | None, typer.Option(
        "--ctx", "-c", help=f"Context size for the KV bytes (default: {explain_logic.DEFAULT_CTX}).",
        show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the per-layer K/V table of RECIPE on the model, the distinct K/V pairs, the average
    bits/value and the KV bytes at the context size, and where a type is unsafe."""
    ui = start(json_out)
    ex = explain_logic.explain(recipe, model, ctx)
    if json_out:
        ui.emit_json(explain_logic.to_json(ex))
    else:
        explain_logic.render(ex, ui)
