"""``turboctl service install|uninstall|status``: ``turboctl serve --profile NAME`` as a login service."""

from typing import Annotated

import typer

from ..paths import get_paths
from ..serve import catalog
from ..serve import service as svc
from ..ui import UI
from .common import JsonOpt, handle_errors, start

app = typer.Typer(
    name="service",
    help="Run the server of a profile as a login service: a launchd agent on macOS, a systemd user "
         "unit on Linux (restarted on failure, logs in the turboctl log directory).",
    no_args_is_help=True,
    add_completion=False,
)

ProfileOpt = Annotated[str, typer.Option(
    "--profile", "-p", help="The profile the service serves (a name from the profile catalog).",
    show_default=False)]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print the file it would write and the commands it would run; change nothing.")]


def current_host() -> svc.Host:
    """This machine and user (tests replace it with a Host inside their tmp dir)."""
    return svc.Host.current(get_paths())


def current_runner() -> svc.Runner:
    """The runner for launchctl / systemctl (tests replace it with a fake)."""
    return svc.system_runner()


def check_profile(name: str) -> None:
    """Called by ``install`` (dry run included) before anything is written: the profile must exist
    and be valid as the service will find it, from its working directory (the home directory):
    a profile only in ./profiles of the current directory would not be found by the service."""
    catalog.find_profile(name, cwd=current_host().home)


def _show_steps(ui: UI, steps: list[svc.Step], title: str) -> None:
    if not steps:
        return
    ui.step(title)
    for s in steps:
        cond = "   # only if it is loaded" if s.only_if_loaded else ""
        ui.info(f"  $ {s.text()}{cond}")


def _report(ui: UI, out: svc.Outcome) -> None:
    f = out.file
    kind = "agent" if f.manager == "launchd" else "unit"
    if out.dry_run:
        if out.action == "install":
            verb = "write" if out.changed else "keep (unchanged)"
            ui.step(f"would {verb} {f.path}")
            ui.info(f.content.rstrip("\n"))
        _show_steps(ui, out.steps, "would run")
    else:
        if out.action == "install":
            ui.ok(f"{'wrote' if out.changed else 'kept (unchanged)'} {f.path}")
            ui.ok(f"{kind} {f.name} installed and started: {' '.join(f.argv)}")
            ui.info(f"  logs: {f.log}")
            ui.info(f"  check it: turboctl service status --profile {f.profile}")
        elif out.ran:
            ui.ok(f"{kind} {f.name} stopped and removed")
    for note in out.notes:
        ui.info(f"note: {note}")


def _show_status(ui: UI, st: svc.Status) -> None:
    f = st.file
    rows = [
        ("manager", f.manager),
        ("name", f.name),
        ("file", f"{f.path}" + ("" if st.installed else " (absent)")
         + (" (differs from what install would write now)" if st.up_to_date is False else "")),
        ("state", st.state),
        ("enabled", {True: "yes", False: "no", None: "-"}[st.enabled]),
        ("pid", str(st.pid) if st.pid else "-"),
        ("last exit", st.last_exit or "-"),
        ("restarts", "-" if st.restarts is None else str(st.restarts)),
        ("log", f"{f.log}" + ("" if st.log_exists else " (not written yet)")),
        ("command", " ".join(f.argv)),
    ]
    ui.kv(f"service for profile {f.profile}", rows)


@app.command("install")
@handle_errors
def install(
    profile: ProfileOpt,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing service file that differs.")] = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write the launchd agent / systemd user unit that runs `turboctl serve --profile NAME` and start
    it (an existing one is restarted)."""
    ui = start(json_out)
    out = svc.install(profile, current_host(), current_runner(), force=force, dry_run=dry_run,
                      check_profile=check_profile)
    if json_out:
        ui.emit_json(out.to_dict())
    else:
        _report(ui, out)


@app.command("uninstall")
@handle_errors
def uninstall(profile: ProfileOpt, dry_run: DryRunOpt = False, json_out: JsonOpt = False) -> None:
    """Stop the service of a profile and delete its file (nothing to do when it is not installed)."""
    ui = start(json_out)
    out = svc.uninstall(profile, current_host(), current_runner(), dry_run=dry_run)
    if json_out:
        ui.emit_json(out.to_dict())
    else:
        _report(ui, out)


@app.command("status")
@handle_errors
def status(
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="The profile's service (default: every installed turboctl service).",
        show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show whether the service of a profile is installed, current and running, its pid and log."""
    ui = start(json_out)
    host = current_host()
    runner = current_runner()
    names = [profile] if profile is not None else svc.installed_profiles(host)
    statuses = [svc.status(name, host, runner) for name in names]
    if json_out:
        if profile is not None:
            ui.emit_json(statuses[0].to_dict())
        else:
            ui.emit_json({"schema": svc.SCHEMA, "action": "status", "manager": host.manager,
                          "services": [s.to_dict() for s in statuses]})
        return
    if not statuses:
        ui.info(f"no turboctl service installed (looked in {svc.service_path('x', host).parent})")
    for st in statuses:
        _show_status(ui, st)
