"""``turboctl selftest``: run the backend self-test on the current build and record it."""

from pathlib import Path
from typing import Annotated

import typer

from ..build import builder as build_logic
from ..build import manifest
from ..build import selftest as selftest_logic
from ..errors import ConfigError, SelftestFailed
from ..paths import get_paths
from .common import JsonOpt, exit_with, handle_errors, start


@handle_errors
def selftest(
    json_out: JsonOpt = False,
    pins: Annotated[
        Path | None,
        typer.Option("--pins", hidden=True, help="The pins file of the build (when test-backend-ops "
                                                  "must be built first)."),
    ] = None,
) -> None:
    """Run the backend self-test on the current build and record it in the manifest.

    test-backend-ops runs the TurboQuant cases on the device of the build's backend (CPU, MTL0,
    CUDA0) against the CPU reference; test-backend-ops is built first when the build has none."""
    ui = start(json_out)
    paths = get_paths()
    current = manifest.load_current(paths)
    if current is None:
        raise ConfigError(f"nothing built yet in {paths.home}", hint="run turboctl build first")
    updated = build_logic.rerun_selftest(current, paths, ui, pins_path=pins)
    record = updated.selftest
    assert record is not None
    if json_out:
        ui.emit_json({"schema": "turboctl.selftest/1", "manifest": str(paths.current_manifest),
                      "selftest": record.model_dump(mode="json")})
    else:
        selftest_logic.report(record, ui)
    try:
        selftest_logic.raise_if_failed(record, context="the result is recorded in the build manifest")
    except SelftestFailed as exc:
        exit_with(exc)
    ui.ok(f"self-test {selftest_logic.describe(record)}; recorded in {paths.current_manifest}")
