"""The ``turboctl`` Typer application."""

from typing import Annotated

import typer

from .. import __version__
from . import bench as bench_cmd
from . import build as build_cmd
from . import doctor as doctor_cmd
from . import kv as kv_cmd
from . import profiles as profiles_cmd
from . import selftest as selftest_cmd
from . import serve as serve_cmd
from . import service as service_cmd
from . import worker as worker_cmd

app = typer.Typer(
    name="turboctl",
    help="Build the pinned llama.cpp with the TurboQuant KV-cache patch series, check the "
         "machine, self-test the backend, serve models with turbo KV (profiles, memory fit, a "
         "verified launch) and benchmark KV cache configurations. Set TURBOCTL_HOME to move all "
         "data; TURBOCTL_DEBUG=1 shows tracebacks.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"turboctl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """turboctl: reproducible TurboQuant llama.cpp builds."""


app.command("build")(build_cmd.build)
app.command("doctor")(doctor_cmd.doctor)
app.command("selftest")(selftest_cmd.selftest)
app.command("serve")(serve_cmd.serve)
app.command("worker")(worker_cmd.worker)
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(kv_cmd.app, name="kv")
app.add_typer(profiles_cmd.app, name="profiles")
app.add_typer(service_cmd.app, name="service")


def run() -> None:
    """Console-script entry point."""
    app()
