"""``turboctl worker``: start the current build's RPC worker and print its ``--rpc`` address."""

import os
from typing import Annotated

import typer

from ..bench.common import log_path
from ..build import manifest
from ..errors import ConfigError
from ..paths import get_paths
from ..serve.fit import human
from ..workers import worker as logic
from .common import JsonOpt, handle_errors, start


@handle_errors
def worker(
    host: Annotated[str, typer.Option("--host", help="Address to bind to. Anything but loopback needs "
                                                     "--allow-remote.")] = logic.DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = logic.DEFAULT_PORT,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="CPU threads (default: llama.cpp's).", show_default=False)
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="Only these devices of this machine (ggml names, e.g. MTL0, CPU); "
                                            "repeat it for several.", show_default=False),
    ] = None,
    allow_remote: Annotated[
        bool,
        typer.Option("--allow-remote", help="Bind beyond loopback (the RPC protocol has NO authentication and NO "
                                            "encryption: private networks only)."),
    ] = False,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="Seconds to wait for the worker to answer.")
    ] = logic.READY_TIMEOUT_S,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and exit.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Start the RPC worker (llama.cpp's rpc-server) of the current build, after its self-test
    passed, and stay in the foreground (Ctrl-C stops it). A llama-server of the same build uses
    it with `turboctl serve --rpc ADDRESS`; a worker or server of another build is refused."""
    ui = start(json_out)
    paths = get_paths()
    current = manifest.load_current(paths)
    if current is None:
        raise ConfigError(f"nothing built yet in {paths.home}", hint="run turboctl build first")
    plan = logic.make_plan(current, host=host, port=port, threads=threads, allow_remote=allow_remote,
                           devices=device or ())
    if plan.remote:
        ui.warn(f"binding to {host}: {logic.SECURITY_WARNING}")
    if dry_run:
        if json_out:
            ui.emit_json({"schema": logic.SCHEMA, "status": "dry-run", "command": plan.command(),
                          "rpc": logic.rpc_addresses(host, port), "identity": plan.identity.to_json()})
        else:
            typer.echo(f"GGML_RPC_SELF_TEST='{plan.self_test}' " + " ".join(plan.command()))
        return
    log = log_path(paths, "worker")
    ui.kv("worker", [("binary", str(plan.binary)), ("identity", plan.identity.describe()),
                     ("self-test", plan.self_test), ("log", str(log))])

    def announce(running: logic.RunningWorker) -> None:
        addresses = logic.rpc_addresses(host, port)
        ui.ok(f"RPC worker ready on {host}:{port} (pid {running.child.pid}); its HELLO carries this build's identity")
        rows = [("serve with", f"turboctl serve --rpc {addresses[0]} ...")]
        rows += [(f"device {i}", f"{human(d.free)} free of {human(d.total)}") for i, d in enumerate(running.devices)]
        rows += [("stop", "Ctrl-C")]
        ui.kv("worker", rows)
        if json_out:
            ui.emit_json(running.to_json())

    code = logic.run_forever(plan, log, dict(os.environ), ui, announce, timeout=ready_timeout)
    if code:
        raise typer.Exit(code)
