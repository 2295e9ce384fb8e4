"""``turboctl profiles list|show|validate``: the serving profiles on the search path."""

import dataclasses
import shlex
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ProfileError
from ..paths import get_paths
from ..serve import catalog, request
from ..serve.profile import check_profile_args
from .common import JsonOpt, handle_errors, start

app = typer.Typer(
    name="profiles",
    help="Serving profiles (ours and the Hermes-agent format): list, show, validate.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("list")
@handle_errors
def list_cmd(json_out: JsonOpt = False) -> None:
    """List the profiles on the search path (./profiles, the user config dir, ~/.hermes/profiles, the
    shipped ones), the first of a name wins."""
    ui = start(json_out)
    entries = catalog.list_profiles()
    if json_out:
        ui.emit_json(catalog.list_json(entries))
    else:
        catalog.render_list(entries, ui)


@app.command("show")
@handle_errors
def show(
    name: Annotated[str, typer.Argument(help="A profile name, or a profile file (a path).", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Print the profile, its model source, its KV recipe and, when the model is a local file, the
    per-layer K/V table of the recipe on that model."""
    ui = start(json_out)
    profile = catalog.find_profile(name)
    help_text = catalog.server_help() if profile.server.args else None
    if help_text is not None:
        check_profile_args(profile, help_text)
    plan = request.preview(profile, get_paths(), json_mode=ui.json_mode)
    shown = profile.model_copy(update={"context": plan.settings.context}) if plan.settings.context else profile
    view = catalog.build_view(shown, model_file=plan.settings.model if plan.settings.model.is_file() else None)
    view = dataclasses.replace(view, profile=profile, fit=request.preview_fit(plan), command=shlex.split(plan.shown),
                               extra={"endpoint": {"url": plan.endpoint, "ollama_api": plan.front is not None}})
    if json_out:
        ui.emit_json(catalog.view_json(view))
    else:
        catalog.render_view(view, ui)


@app.command("validate")
@handle_errors
def validate(
    files: Annotated[list[Path], typer.Argument(help="Profile files to check.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Check profile files; each problem is one line FILE:LINE: message. The extra llama-server
    arguments are checked against the current build's --help when there is one. Exit code 17 when
    one is invalid."""
    ui = start(json_out)
    results = catalog.validate_files(files, catalog.server_help())
    for r in results:
        if r.profile is not None:
            ui.ok(f"{r.path}: profile {r.profile.name} ({r.profile.format} format)")
            for note in r.profile.notes:
                ui.info(f"  note: {note}")
            if r.profile.server.args and not r.args_checked:
                ui.info("  note: server.args not checked against llama-server --help: nothing built yet")
        elif r.error is not None:
            ui.error(r.error.message, hint=r.error.hint)
    if json_out:
        ui.emit_json(catalog.validate_json(results))
    if any(r.error for r in results):
        raise typer.Exit(ProfileError.exit_code)
