"""The Typer app of ``turboctl bench`` and the options its subcommands share."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ...bench.common import write_json
from ...errors import UsageError
from ...models import fetch
from ...paths import Paths
from ...serve import catalog
from ...ui import UI

app = typer.Typer(
    name="bench",
    help="Benchmark KV cache configurations: quality (kld, prompts, long-session, niah), speed and memory.",
    no_args_is_help=True,
    add_completion=False,
)

ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="The GGUF model file.", show_default=False)]
KvOpt = Annotated[
    list[str] | None,
    typer.Option("--kv", help="A KV recipe: TYPE (K and V alike) or K/V, then optionally ;mode=N (a "
                              "TURBO_LAYER_ADAPTIVE mode), then optionally ;RULES (per-layer types), e.g. q4_0, "
                              "q8_0/turbo3 or 'turbo4/turbo3;0..1+-2..-1=q8_0' (see turboctl kv explain); repeat it "
                              "(or separate with commas) for several. Replaces the defaults.",
                 show_default=False),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", "-t", help="CPU threads (default: the number of CPUs).",
                             show_default=False)]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="A profile name (turboctl profiles list) or file: its model, and its "
                                               "KV recipe joins the configurations.", show_default=False)]
OptModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="The GGUF model file (or --profile).",
                                                  show_default=False)]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Also write the JSON document to this file.",
                              show_default=False)]
NoRepackOpt = Annotated[
    bool, typer.Option("--no-repack", help="Leave llama.cpp's CPU weight repacking off (for a machine where it "
                                           "crashes: a profile's --no-repack in server.args says the same).")]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="Also write a markdown report with PNG plots into this directory.",
                              show_default=False)]


def finish(ui: UI, document: dict[str, Any], output: Path | None, json_out: bool,
           render: Callable[[], None], report: Path | None = None) -> None:
    """A bench command's end: the document to ``--output`` (and the report to ``--report``), then
    the JSON or the human table."""
    if output is not None:
        write_json(output, document)
    if report is not None:
        from ...bench.report import write_report  # matplotlib: imported only when a report is asked for

        written = write_report(report, [document])
    if json_out:
        ui.emit_json(document)
    else:
        render()
        if output is not None:
            ui.ok(f"results: {output}")
        if report is not None:
            ui.ok(f"report: {written.report}")


def model_and_profile(model: Path | None, profile: str | None, paths: Paths,
                      ui: UI) -> tuple[Path, list[str], tuple[str, ...]]:
    """``--model`` or ``--profile``: the model file, the profile's recipe (as a configuration) and
    the profile's llama-server arguments."""
    if (model is None) == (profile is None):
        raise UsageError("give either --model FILE.gguf or --profile NAME" if model is None else
                         "--profile and --model cannot be combined", hint="turboctl profiles list shows the profiles")
    if model is not None:
        return model, [], ()
    assert profile is not None
    prof = catalog.find_profile(profile)
    base = prof.origin.parent if prof.origin else None
    got = fetch.resolve_model(prof.model, paths, ui, base_dir=base)
    return got.path, [prof.kv.recipe_text()], tuple(prof.server.args) if prof.server else ()

