"""``turboctl serve``: parse options, prepare the plan, start llama-server, stay in the foreground."""

from pathlib import Path
from typing import Annotated

import typer

from ..bench.common import log_path
from ..paths import get_paths
from ..serve import catalog, launch
from ..serve.command import parse_context
from ..serve.request import ServeRequest, prepare
from .common import JsonOpt, handle_errors, start


@handle_errors
def serve(
    profile: Annotated[
        str | None,
        typer.Option("--profile", "-p", help="A profile name (turboctl profiles list) or a profile file.",
                     show_default=False),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Serve this GGUF file without a profile.", show_default=False),
    ] = None,
    kv: Annotated[
        str | None,
        typer.Option("--kv", help="KV recipe: TYPE, K/V, then ;mode=N and ;RULES (default: the "
                                  "profile's, or turbo4 with --model).", show_default=False),
    ] = None,
    ctx: Annotated[
        str | None,
        typer.Option("--ctx", "-c", help="Context in tokens, or auto: the largest that fits this machine "
                                         "(default: the profile's, or auto).", show_default=False),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on (default: the profile's, or 127.0.0.1). Anything "
                                    "but loopback needs an API key.", show_default=False),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: the profile's, or 8080).", show_default=False)
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option("--parallel", "-np", help="Server slots (concurrent requests; default: the profile's, or 1).",
                     show_default=False),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="Read the API key from this file (first non-comment line).",
                     show_default=False),
    ] = None,
    insecure_no_api_key: Annotated[
        bool,
        typer.Option("--insecure-no-api-key",
                     help="Allow listening beyond loopback WITHOUT an API key (a warning on every start)."),
    ] = False,
    max_memory: Annotated[
        str | None,
        typer.Option("--max-memory", help="Use at most this much memory (e.g. 24G), below what the machine "
                                          "allows; the fit and --ctx auto respect it.", show_default=False),
    ] = None,
    no_build: Annotated[
        bool, typer.Option("--no-build", help="Refuse instead of building when no matching build exists.")
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never download: use the model only if it is already here.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact llama-server command and exit.")
    ] = False,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="Seconds to wait for the server to load the model.")
    ] = launch.READY_TIMEOUT_S,
    json_out: JsonOpt = False,
) -> None:
    """Start llama-server with turbo KV: build if needed, fetch and verify the model, fit the
    context, verify what started, stay in the foreground (Ctrl-C stops it)."""
    ui = start(json_out)
    paths = get_paths()
    req = ServeRequest(
        profile=catalog.find_profile(profile) if profile is not None else None,
        model=model, kv=kv, context=parse_context(ctx) if ctx is not None else None, host=host, port=port,
        parallel=parallel, api_key_file=api_key_file, insecure_no_api_key=insecure_no_api_key,
        no_build=no_build, offline=offline, dry_run=dry_run,
        max_memory=max_memory)
    p = prepare(req, paths, ui)
    for note in p.notes:
        ui.info(f"note: {note}")
    if dry_run:
        if json_out:
            ui.emit_json(p.to_json())
        else:
            typer.echo(p.shown)
        return
    log = log_path(paths, "serve")
    ui.kv("serve", [("model", str(p.settings.model)), ("context", f"{p.settings.context} ({p.context_source})"),
                    ("kv", launch.kv_summary(p)), ("budget", p.budget or "-"), ("log", str(log))])
    ui.info(f"$ {p.shown}")

    def announce(running: launch.RunningServer) -> None:
        s = running.plan.settings
        ui.ok(f"llama-server is ready on {s.endpoint} (pid {running.child.pid}, "
              f"{running.plan.plan.describe() if running.plan.plan else s.recipe.label} verified in its log)")
        ui.kv("serving", [("endpoint", f"{s.endpoint}/v1 (OpenAI API)"), ("model", s.alias or s.model.name),
                          ("context", str(s.context)), ("kv", launch.kv_summary(running.plan)),
                          ("api key", "required" if s.api_key else "none (loopback only)"),
                          ("stop", "Ctrl-C")])
        if json_out:
            ui.emit_json(launch.ready_document(running))

    code = launch.serve_forever(p, log, ui, announce, ready_timeout=ready_timeout)
    if code:
        raise typer.Exit(code)
