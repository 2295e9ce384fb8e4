"""``turboctl serve``: parse options, prepare the plan, start llama-server, stay in the foreground."""

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ..bench.common import log_path
from ..paths import get_paths
from ..serve import catalog, launch
from ..serve.command import parse_context
from ..serve.fit import human
from ..serve.request import ServeRequest, prepare, prepare_router
from ..serve.router import RouterPlan
from .common import JsonOpt, handle_errors, start


@handle_errors
def serve(
    profile: Annotated[
        list[str] | None,
        typer.Option("--profile", "-p", help="A profile name (turboctl profiles list) or a profile file; give it "
                                             "twice or more to serve several models on one endpoint, each by "
                                             "its name (llama-server's router mode).", show_default=False),
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
    ollama_port: Annotated[
        bool,
        typer.Option("--ollama", help="Listen on Ollama's port 11434 (loopback unless --host), where Ollama "
                                      "clients look by default."),
    ] = False,
    direct: Annotated[
        bool,
        typer.Option("--direct", help="No Ollama API: llama-server itself on the port (OpenAI and llama-server "
                                      "APIs only, no proxy in between)."),
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
    rpc: Annotated[
        list[str] | None,
        typer.Option("--rpc", help="Split the model across these RPC workers (HOST:PORT, comma-separated or "
                                   "repeated; default: the profile's workers), each started with turboctl worker "
                                   "and checked first: same build, self-test passed, free memory.",
                     show_default=False),
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="Seconds to wait for the server to load the model.")
    ] = launch.READY_TIMEOUT_S,
    json_out: JsonOpt = False,
) -> None:
    """Start llama-server with turbo KV: build if needed, fetch and verify the model, fit the
    context, verify what started, answer the Ollama and OpenAI APIs on one port, stay in the
    foreground (Ctrl-C stops it)."""
    ui = start(json_out)
    paths = get_paths()
    profiles = [catalog.find_profile(p) for p in profile or []]
    req = ServeRequest(
        profile=profiles[0] if len(profiles) == 1 else None,
        model=model, kv=kv, context=parse_context(ctx) if ctx is not None else None, host=host, port=port,
        parallel=parallel, api_key_file=api_key_file, insecure_no_api_key=insecure_no_api_key,
        no_build=no_build, offline=offline, dry_run=dry_run, max_memory=max_memory, direct=direct,
        ollama=ollama_port, rpc=tuple(rpc or ()))
    p: launch.Startable = prepare_router(req, profiles, paths, ui) if len(profiles) > 1 else prepare(req, paths, ui)
    for note in p.notes:
        ui.info(f"note: {note}")
    if dry_run:
        if json_out:
            ui.emit_json(p.to_json())
        else:
            if p.front is not None:
                typer.echo(f"# turboctl answers on {p.front.endpoint} (Ollama API; OpenAI and llama-server routes "
                           "passed through) in front of:")
            if isinstance(p, RouterPlan):
                typer.echo(f"# {p.preset_path}\n{p.preset}")
            typer.echo(p.shown)
        return
    log = log_path(paths, "serve")
    if isinstance(p, RouterPlan):
        ui.table("models", ["model", "kv", "context", "slots", "memory", "at start"],
                 [[r["model"], r["kv"], str(r["context"]), str(r["parallel"]), human(r["total_bytes"]),
                   "loaded" if r["load_on_startup"] else "on demand"] for r in p.fit_rows()])
        ui.kv("serve", [("models at once", f"{p.models_max} of {len(p.members)}"), ("budget", p.budget or "-"),
                        ("preset", str(p.preset_path)), ("log", str(log))])
    else:
        ui.kv("serve", [("model", str(p.settings.model)),
                        ("context", f"{p.settings.context} ({p.context_source})"),
                        ("kv", launch.kv_summary(p)), ("budget", p.budget or "-"), ("log", str(log))]
               + [(f"worker {w['endpoint']}", "checked: this build, self-test passed" + _worker_parts(w))
                  for w in p.workers])
    ui.info(f"$ {p.shown}")

    def announce(running: launch.RunningServer) -> None:
        rp = running.plan
        where = rp.front.endpoint if rp.front else rp.endpoint
        apis = "Ollama API, OpenAI API at /v1, llama-server's own routes" if rp.front else "OpenAI API at /v1"
        if isinstance(rp, RouterPlan):
            ui.ok(f"llama-server (router) is ready on {where} (pid {running.child.pid}); "
                  f"{sum(m.load_on_startup for m in rp.members)} model(s) loaded, their KV verified in the log")
            rows = [("endpoint", f"{where} ({apis})"),
                    ("models", ", ".join(f"{m.name} ({m.plan.settings.recipe.label})" for m in rp.members)),
                    ("api key", "required" if rp.api_key else "none (loopback only)"), ("stop", "Ctrl-C")]
        else:
            s = rp.settings
            ui.ok(f"llama-server is ready on {where} (pid {running.child.pid}, "
                  f"{rp.plan.describe() if rp.plan else s.recipe.label} verified in its log)")
            rows = [("endpoint", f"{where} ({apis})"), ("model", rp.name),
                    ("context", str(s.context)), ("kv", launch.kv_summary(rp)),
                    ("api key", "required" if s.api_key else "none (loopback only)"), ("stop", "Ctrl-C")]
        ui.kv("serving", rows)
        if json_out:
            ui.emit_json(launch.ready_document(running))

    code = launch.serve_forever(p, log, ui, announce, ready_timeout=ready_timeout)
    if code:
        raise typer.Exit(code)


def _worker_parts(w: Mapping[str, Any]) -> str:
    """``; projected X of its Y share`` for each device of a checked worker (when the fit ran)."""
    parts = [f"RPC{d['index']} {human(d['projected_bytes'])} of its {human(d['share_bytes'])} share"
             for d in w["devices"] if "projected_bytes" in d]
    return ("; projected " + ", ".join(parts)) if parts else ""
