"""``turboctl doctor``: run the checks, print a table or JSON, exit non-zero on failure."""

import typer

from .. import doctor as doctor_logic
from ..errors import DoctorFailed
from ..paths import get_paths
from .common import JsonOpt, handle_errors, start

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def current_probe() -> doctor_logic.Probe:
    """The machine probe (tests replace this to replay recorded macOS outputs)."""
    return doctor_logic.Probe.current()


@handle_errors
def doctor(json_out: JsonOpt = False) -> None:
    """Check the OS, Metal / unified memory, toolchain, disk and the current build."""
    ui = start(json_out)
    checks = doctor_logic.run_checks(current_probe(), get_paths())
    if json_out:
        ui.emit_json(doctor_logic.report(checks))
    else:
        rows = [[c.name, c.status, c.detail + (f"  → {c.fix}" if c.fix and c.status != "ok" else "")]
                for c in checks]
        ui.table("turboctl doctor", ["check", "status", "detail"], rows,
                 [_STYLE[c.status] for c in checks])
    failed = doctor_logic.failed_required(checks)
    if failed:
        names = ", ".join(c.name for c in failed)
        ui.error(f"{len(failed)} required check(s) failed: {names}",
                 hint="; ".join(c.fix for c in failed if c.fix) or None)
        raise typer.Exit(DoctorFailed.exit_code)
    if not json_out:
        ui.ok("all required checks passed")
