"""``turboctl build``: parse options, make the plan, run it, print the result."""

from pathlib import Path
from typing import Annotated

import typer

from ..build import builder as build_logic
from ..build import selftest as selftest_logic
from ..errors import SelftestFailed
from ..paths import get_paths
from .common import JsonOpt, exit_with, handle_errors, start


@handle_errors
def build(
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Where llama.cpp comes from: git (default: the pinned upstream, falling back to "
                 "the PyPI sdist when unreachable), sdist, a git URL, or a directory "
                 "(a git clone, or a plain tree checked against the pin).",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", help="auto, metal, cuda or cpu.")
    ] = "auto",
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", help="Parallel compile jobs (default: the number of CPUs).",
                     show_default=False),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Reset a modified or foreign source tree to the pinned "
                                     "commit (discards local changes there)."),
    ] = False,
    selftest: Annotated[
        bool,
        typer.Option("--selftest/--no-selftest",
                     help="Build test-backend-ops and run the backend self-test (the TurboQuant "
                          "cases on this backend's device; recorded in the manifest). Without it "
                          "the turbo KV cache types are refused until turboctl selftest runs."),
    ] = True,
    curl: Annotated[
        bool,
        typer.Option("--curl/--no-curl",
                     help="Build llama.cpp's own HTTPS model downloader (OpenSSL in this "
                          "llama.cpp; turboctl does not need it)."),
    ] = False,
    patches_dir: Annotated[
        Path | None,
        typer.Option("--patches", help="Patch series directory (default: the one shipped "
                                       "with turboctl).", show_default=False),
    ] = None,
    pins: Annotated[
        Path | None,
        typer.Option("--pins", hidden=True, help="Use another pins file (maintainers: try a "
                                                  "pin bump before committing it)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build llama.cpp at the pinned commit with the TurboQuant patch series."""
    ui = start(json_out)
    plan = build_logic.make_plan(
        paths=get_paths(), source_arg=source, backend=backend, jobs=jobs, force=force,
        selftest=selftest, curl=curl, patches_dir=patches_dir, pins_path=pins)
    ui.kv("plan", plan.rows())
    result = build_logic.run(plan, ui)
    if json_out:
        ui.emit_json(result.to_json_dict())
    record = result.selftest
    if record is not None and record.status != "pass":
        if not json_out:
            selftest_logic.report(record, ui)
        try:
            selftest_logic.raise_if_failed(record, context="the build finished and its manifest is written")
        except SelftestFailed as exc:
            exit_with(exc)
