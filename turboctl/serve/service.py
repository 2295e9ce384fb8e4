"""The login service: run ``turboctl serve --profile NAME`` under the OS service manager.

* macOS: a launchd agent ``~/Library/LaunchAgents/org.turboctl.serve.<profile>.plist``, loaded
  into the user's GUI domain with ``launchctl bootstrap gui/<uid>`` (``bootout`` to remove it).
* Linux: a systemd user unit ``$XDG_CONFIG_HOME/systemd/user/turboctl-<profile>.service``
  (``~/.config`` when XDG_CONFIG_HOME is unset), ``systemctl --user enable --now``.

Both restart the server when it fails, append its output to ``<turboctl logs>/service-<profile>.log``
and carry the environment that decides where turboctl keeps its data (TURBOCTL_HOME, ...) and the
PATH of the shell that installed them, so the service finds the same build, profiles and tools.

The program they run is the Python interpreter running this turboctl, with ``-m turboctl``
(``sys.executable``, not resolved through symlinks: a virtual environment's ``bin/python`` is a
symlink whose target would lose the environment). A ``turboctl`` looked up on PATH could be
another installation than the one the user just ran; the interpreter path is exactly this one,
whether it lives in a venv, a pipx/uv tool environment or the system.

Nothing here touches the real home or the service manager by itself: the :class:`Host` (home,
config dir, uid, turboctl paths, environment, program) and the :class:`Runner` (the subprocess
runner, :func:`system_runner` = :func:`turboctl.proc.run`) are passed in, so tests render, write
and "run" everything inside a temporary directory with a fake runner.
"""

from __future__ import annotations

import os
import platform
import plistlib
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .. import proc
from ..errors import (
    EXIT_INTERRUPTED,
    ConfigError,
    DoesNotFit,
    InsecureBind,
    ProfileError,
    ProfileNotFound,
    ServiceError,
    ToolMissing,
    UsageError,
)
from ..paths import ENV_HOME, Paths, write_text_atomic

SCHEMA = "turboctl.service/1"

Manager = Literal["launchd", "systemd"]

# A profile name becomes part of a file name, a launchd label and a systemd unit name: keep it to
# characters that are safe in all three (no path separators, no unit-name specials like '@').
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

LABEL_PREFIX = "org.turboctl.serve."
UNIT_PREFIX = "turboctl-"
UNIT_SUFFIX = ".service"

# Copied from the installing shell into the service when set: they decide where turboctl keeps its
# build, profiles and models (platformdirs reads the XDG ones on Linux) and where tools are found.
PASSTHROUGH_ENV = (ENV_HOME, "TURBOCTL_CONFIG", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
                   "HF_HOME", "HF_HUB_CACHE", "PATH")

# Restart policy. systemd: wait RESTART_SEC between attempts and give up (state "failed", visible in
# `status`) after START_LIMIT_BURST starts within START_LIMIT_INTERVAL_S; exit codes of errors that
# a restart cannot fix (a bad profile, a configuration that does not fit) are not restarted at all.
# launchd has neither a start limit nor per-exit-code rules: it restarts any failing exit after
# THROTTLE_INTERVAL_S seconds.
RESTART_SEC = 10
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL_S = 300
THROTTLE_INTERVAL_S = 10
STOPPED_EXIT_CODES = (EXIT_INTERRUPTED, 128 + 15)
NO_RESTART_ERRORS = (UsageError, ConfigError, ProfileError, ProfileNotFound, DoesNotFit, InsecureBind)

# launchctl print: "Could not find service ... in domain for ..." exits 113
LAUNCHCTL_NOT_FOUND = 113
BOOTOUT_WAIT_S = 30.0
_sleep = time.sleep
_monotonic = time.monotonic

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


class Runner(Protocol):
    """Runs one command and returns its result without raising on a non-zero exit."""

    def __call__(self, args: Sequence[str], *, quiet: bool = False) -> proc.Result: ...


ProfileCheck = Callable[[str], None]


def schema_path() -> Path:
    """The JSON schema of ``turboctl service ... --json``."""
    return Path(__file__).resolve().parent.parent / "schemas" / "service.schema.json"


def system_runner() -> Runner:
    """The real runner: :func:`turboctl.proc.run` (command echoed unless ``quiet``, 60 s timeout)."""

    def run(args: Sequence[str], *, quiet: bool = False) -> proc.Result:
        try:
            return proc.run(list(args), check=False, timeout=60, echo=not quiet)
        except ToolMissing as exc:
            raise ServiceError(
                f"{args[0]} is not available: turboctl service needs launchd (macOS) or a systemd user "
                "session (Linux)",
                hint="run `turboctl serve --profile NAME` under your own process supervisor instead",
            ) from exc

    return run


# --------------------------------------------------------------------------- where and what
@dataclass(frozen=True)
class Host:
    """Everything about the machine and the user that the service files depend on."""

    system: str                     # platform.system(): "Darwin", "Linux", ...
    home: Path                      # the user's home directory
    config_home: Path               # XDG config dir (systemd user units live below it)
    uid: int
    paths: Paths                    # turboctl's data dirs (the service log goes to paths.logs)
    program: tuple[str, ...]        # how to start this turboctl: (python, "-m", "turboctl")
    environ: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls, paths: Paths) -> Host:
        env = dict(os.environ)
        home = Path.home()
        xdg = env.get("XDG_CONFIG_HOME", "")
        # the XDG spec ignores relative values
        config_home = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".config"
        getuid: Callable[[], int] | None = getattr(os, "getuid", None)
        return cls(system=platform.system(), home=home, config_home=config_home,
                   uid=getuid() if getuid is not None else -1, paths=paths,
                   program=turboctl_program(), environ=env)

    @property
    def manager(self) -> Manager:
        if self.system == "Darwin":
            return "launchd"
        if self.system == "Linux":
            return "systemd"
        raise ServiceError(
            f"turboctl service supports macOS (launchd) and Linux (systemd user units), not {self.system or 'this OS'}",
            hint="run `turboctl serve --profile NAME` under your own process supervisor instead")


def turboctl_program() -> tuple[str, ...]:
    """The command that starts this very turboctl (see the module docstring for why)."""
    exe = sys.executable
    if not exe:
        raise ServiceError("cannot tell which Python runs turboctl (sys.executable is empty)",
                           hint="run turboctl from a normal Python installation or virtual environment")
    return (os.path.abspath(exe), "-m", "turboctl")


def validate_profile_name(name: str) -> str:
    """The name, or a UsageError saying which characters a service profile name may use."""
    if name.lower().endswith((".yaml", ".yml")) and PROFILE_NAME.fullmatch(name):
        raise UsageError(f"profile name {name!r} is a file name: a service takes the profile's name, not its file",
                         hint="use the name the file defines (turboctl profiles list), "
                              f"e.g. {name.rsplit('.', 1)[0]!r}")
    if not PROFILE_NAME.fullmatch(name):
        raise UsageError(
            f"profile name {name!r} cannot name a service: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters",
            hint="a service takes a profile NAME from the catalog, not a file path")
    return name


def label(profile: str) -> str:
    return LABEL_PREFIX + profile


def unit_name(profile: str) -> str:
    return UNIT_PREFIX + profile + UNIT_SUFFIX


def service_path(profile: str, host: Host) -> Path:
    if host.manager == "launchd":
        return host.home / "Library" / "LaunchAgents" / f"{label(profile)}.plist"
    return host.config_home / "systemd" / "user" / unit_name(profile)


def log_path(profile: str, host: Host) -> Path:
    return host.paths.logs / f"service-{profile}.log"


def service_environment(host: Host) -> dict[str, str]:
    """The variables written into the service (see PASSTHROUGH_ENV)."""
    env: dict[str, str] = {}
    for key in PASSTHROUGH_ENV:
        value = host.environ.get(key)
        if not value:
            continue
        # TURBOCTL_HOME as turboctl resolved it (absolute, ~ expanded), not as typed
        env[key] = str(host.paths.home) if key == ENV_HOME else value
    return env


def restart_exempt_codes() -> tuple[int, ...]:
    return tuple(sorted({cls.exit_code for cls in NO_RESTART_ERRORS}))


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class ServiceFile:
    manager: Manager
    profile: str
    name: str                       # launchd label / systemd unit name
    path: Path
    content: str
    argv: tuple[str, ...]
    log: Path
    environment: dict[str, str]


def _check_text(what: str, value: str) -> None:
    if _CONTROL.search(value):
        raise ServiceError(f"{what} contains a control character (newline, tab, ...): {value!r}",
                           hint="a service file cannot carry it; use a path or value without one")


def serve_argv(profile: str, host: Host) -> tuple[str, ...]:
    return (*host.program, "serve", "--profile", profile)


def render(profile: str, host: Host) -> ServiceFile:
    """The launchd agent or systemd unit for ``profile`` on ``host`` (nothing is written)."""
    validate_profile_name(profile)
    manager = host.manager
    argv = serve_argv(profile, host)
    log = log_path(profile, host)
    env = service_environment(host)
    if not os.path.isabs(argv[0]):
        raise ServiceError(f"the turboctl program path is not absolute: {argv[0]}")
    for arg in argv:
        _check_text("the turboctl command", arg)
    _check_text("the turboctl log directory", str(log))
    _check_text("the home directory", str(host.home))
    for key, value in env.items():
        _check_text(f"environment variable {key}", value)
    if manager == "launchd":
        content = render_launchd(profile, argv, log, env, host.home)
        name = label(profile)
    else:
        content = render_systemd(profile, argv, log, env, host.home)
        name = unit_name(profile)
    return ServiceFile(manager, profile, name, service_path(profile, host), content, argv, log, env)


def render_launchd(profile: str, argv: Sequence[str], log: Path, env: Mapping[str, str],
                   workdir: Path) -> str:
    doc: dict[str, Any] = {
        "Label": label(profile),
        "ProgramArguments": list(argv),
        "RunAtLoad": True,
        # restart when it exits with a failure (not after a clean stop)
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_INTERVAL_S,
        "WorkingDirectory": str(workdir),
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
        "EnvironmentVariables": dict(env),
    }
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")


def systemd_escape_specifiers(value: str) -> str:
    """'%' starts a specifier in almost every unit setting; '%%' is a literal '%'."""
    return value.replace("%", "%%")


def systemd_exec_program(path: str) -> str:
    """The executable of ExecStart=. systemd unquotes it but does not expand '$' in it, and refuses
    quotes and backslashes in an executable name, so those are an error here, not a broken unit."""
    for bad in ('"', "'", "\\"):
        if bad in path:
            raise ServiceError(
                f"the turboctl program path contains {bad!r}, which systemd does not accept in an "
                f"executable name: {path}",
                hint="install turboctl (its Python environment) under a path without quotes or backslashes")
    text = systemd_escape_specifiers(path)
    return text if _SYSTEMD_BARE.fullmatch(text) else f'"{text}"'


def systemd_exec_arg(arg: str) -> str:
    """One ExecStart= argument: '$' and '%' escaped, double-quoted (C escapes) unless plain."""
    text = systemd_escape_specifiers(arg).replace("$", "$$")
    if text and _SYSTEMD_BARE.fullmatch(text) and text != ";":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_environment(key: str, value: str) -> str:
    """One Environment= assignment, always quoted ('$' is not expanded there)."""
    text = systemd_escape_specifiers(f"{key}={value}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_systemd(profile: str, argv: Sequence[str], log: Path, env: Mapping[str, str],
                   workdir: Path) -> str:
    exec_start = " ".join([systemd_exec_program(argv[0]), *(systemd_exec_arg(a) for a in argv[1:])])
    # paths in WorkingDirectory= and StandardOutput=append: are taken literally (no unquoting)
    logp = systemd_escape_specifiers(str(log))
    lines = [
        f"# Written by `turboctl service install --profile {profile}`; "
        f"remove it with `turboctl service uninstall --profile {profile}`.",
        "[Unit]",
        f"Description=turboctl serve --profile {profile} (llama.cpp with TurboQuant KV cache)",
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_S}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={systemd_escape_specifiers(str(workdir))}",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        # turboctl's exit codes for errors that the same configuration will hit again
        "RestartPreventExitStatus=" + " ".join(str(c) for c in restart_exempt_codes()),
        # turboctl stopped by a signal (systemctl stop, kill) exits 130 / 143: a clean stop, not a failure
        f"SuccessExitStatus={' '.join(str(c) for c in STOPPED_EXIT_CODES)}",
        *(f"Environment={systemd_environment(k, v)}" for k, v in env.items()),
        f"StandardOutput=append:{logp}",
        f"StandardError=append:{logp}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plans
StepKind = Literal["run", "remove"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    args: tuple[str, ...]           # the command ("run") or (path,) ("remove")
    why: str
    only_if_loaded: bool = False    # launchd: only when `launchctl print` finds the job
    wait_unloaded: bool = False     # launchd: afterwards, wait until the job is gone (bootout is asynchronous)

    def text(self) -> str:
        if self.kind == "remove":
            return f"rm {self.args[0]}"
        return " ".join(self.args)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": list(self.args), "why": self.why,
                "only_if_loaded": self.only_if_loaded, "wait_unloaded": self.wait_unloaded}


@dataclass
class Outcome:
    """What install / uninstall did (or, with dry_run, would do)."""

    action: Literal["install", "uninstall"]
    file: ServiceFile
    existed: bool
    changed: bool                   # the file on disk is (would be) written or removed
    steps: list[Step]
    dry_run: bool
    ran: list[Step] = field(default_factory=list)
    skipped: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        f = self.file
        return {
            "schema": SCHEMA, "action": self.action, "dry_run": self.dry_run,
            "manager": f.manager, "profile": f.profile, "name": f.name, "path": str(f.path),
            "log": str(f.log), "command": list(f.argv), "environment": f.environment,
            "content": f.content if self.action == "install" else None,
            "existed": self.existed, "changed": self.changed,
            "steps": [s.to_dict() for s in self.steps],
            "ran": [s.to_dict() for s in self.ran],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": self.notes,
        }


def _launchctl_target(f: ServiceFile, host: Host) -> str:
    return f"gui/{host.uid}/{f.name}"


def install_steps(f: ServiceFile, host: Host, existed: bool) -> list[Step]:
    if f.manager == "launchd":
        return [
            Step("run", ("launchctl", "bootout", _launchctl_target(f, host)),
                 "stop the agent that is loaded now", only_if_loaded=True, wait_unloaded=True),
            Step("run", ("launchctl", "bootstrap", f"gui/{host.uid}", str(f.path)), "load and start the agent"),
        ]
    steps = [
        Step("run", ("systemctl", "--user", "daemon-reload"), "make systemd read the unit file"),
        Step("run", ("systemctl", "--user", "enable", "--now", f.name), "start it now and at every login"),
    ]
    if existed:
        steps.append(Step("run", ("systemctl", "--user", "restart", f.name), "run the unit file as written now"))
    return steps


def uninstall_steps(f: ServiceFile, host: Host, existed: bool) -> list[Step]:
    if f.manager == "launchd":
        steps = [Step("run", ("launchctl", "bootout", _launchctl_target(f, host)),
                      "stop and unload the agent", only_if_loaded=True)]
        if existed:
            steps.append(Step("remove", (str(f.path),), "delete the agent file"))
        return steps
    if not existed:
        return []
    return [
        Step("run", ("systemctl", "--user", "disable", "--now", f.name), "stop it and drop it from login"),
        Step("remove", (str(f.path),), "delete the unit file"),
        Step("run", ("systemctl", "--user", "daemon-reload"), "make systemd forget the unit"),
    ]


def _failure_hint(f: ServiceFile, action: str, output: str) -> str:
    parts = []
    if f.manager == "systemd" and ("Failed to connect to bus" in output or "XDG_RUNTIME_DIR" in output):
        parts.append("no systemd user session is reachable from this shell: log in as this user (not via su/sudo), "
                     "or let the user's services run without a login with `loginctl enable-linger $USER`")
    if action == "install":
        parts.append(f"the {'agent' if f.manager == 'launchd' else 'unit'} file is in place ({f.path}); fix the cause "
                     f"and rerun `turboctl service install --profile {f.profile}`, or remove it with "
                     f"`turboctl service uninstall --profile {f.profile}`")
    elif not parts:
        parts.append(f"fix the cause and rerun `turboctl service {action} --profile {f.profile}`")
    return "; ".join(parts)


def _is_loaded(f: ServiceFile, host: Host, runner: Runner) -> bool:
    res = runner(["launchctl", "print", _launchctl_target(f, host)], quiet=True)
    if res.returncode == 0:
        return True
    if res.returncode == LAUNCHCTL_NOT_FOUND or "Could not find service" in res.output:
        return False
    raise ServiceError(f"launchctl print {_launchctl_target(f, host)} failed (exit code {res.returncode})",
                       hint="is this a macOS GUI login session? launchd agents need one",
                       details=proc.relevant_lines(res.lines))


def _execute(outcome: Outcome, host: Host, runner: Runner) -> None:
    f = outcome.file
    loaded: bool | None = None
    for step in outcome.steps:
        if step.only_if_loaded:
            if loaded is None:
                loaded = _is_loaded(f, host, runner)
            if not loaded:
                outcome.skipped.append(step)
                continue
        if step.kind == "remove":
            Path(step.args[0]).unlink(missing_ok=True)
            outcome.ran.append(step)
            continue
        res = runner(list(step.args))
        if res.returncode != 0 or res.timed_out:
            how = "did not finish in time" if res.timed_out else f"failed (exit code {res.returncode})"
            raise ServiceError(f"{step.text()} {how}", hint=_failure_hint(f, outcome.action, res.output),
                               details=proc.relevant_lines(res.lines))
        outcome.ran.append(step)
        if step.wait_unloaded:
            _wait_unloaded(f, host, runner)
            loaded = False


def _wait_unloaded(f: ServiceFile, host: Host, runner: Runner) -> None:
    """`launchctl bootout` can return while the job is still stopping; a bootstrap then fails with
    "Input/output error". Wait for it to go (launchd SIGKILLs it after its 20 s exit timeout)."""
    deadline = _monotonic() + BOOTOUT_WAIT_S
    while _is_loaded(f, host, runner):
        if _monotonic() >= deadline:
            raise ServiceError(f"launchd still has {_launchctl_target(f, host)} loaded {BOOTOUT_WAIT_S:g} s after "
                               "launchctl bootout",
                               hint=f"check `launchctl print {_launchctl_target(f, host)}`, then rerun "
                                    f"`turboctl service install --profile {f.profile}`")
        _sleep(0.5)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {exc.strerror or exc}") from exc


def install(profile: str, host: Host, runner: Runner, *, force: bool = False, dry_run: bool = False,
            check_profile: ProfileCheck | None = None) -> Outcome:
    """Write the service file for ``profile`` and (re)start it; see the module docstring."""
    validate_profile_name(profile)
    if check_profile is not None:
        check_profile(profile)
    f = render(profile, host)
    old = _read(f.path)
    existed = old is not None
    changed = old != f.content.encode("utf-8")
    outcome = Outcome("install", f, existed, changed, install_steps(f, host, existed), dry_run)
    if existed and changed and not force:
        if not dry_run:
            raise ServiceError(
                f"{f.path} exists and differs from the file turboctl would write for profile '{profile}'",
                hint=f"rerun with --force to replace it (`turboctl service install --profile {profile} --force`); "
                     "--dry-run shows the new file")
        outcome.notes.append(f"{f.path} exists and differs: install refuses to replace it without --force")
    if f.manager == "systemd":
        outcome.notes.append("a systemd user service runs while you are logged in; to start it at boot and keep "
                             "it running after logout: loginctl enable-linger $USER")
    if dry_run:
        return outcome
    f.log.parent.mkdir(parents=True, exist_ok=True)
    if changed:
        write_text_atomic(f.path, f.content)
    _execute(outcome, host, runner)
    return outcome


def uninstall(profile: str, host: Host, runner: Runner, *, dry_run: bool = False) -> Outcome:
    """Stop the service and delete its file (nothing to do when it is not installed)."""
    validate_profile_name(profile)
    f = render(profile, host)
    existed = f.path.exists()
    outcome = Outcome("uninstall", f, existed, existed, uninstall_steps(f, host, existed), dry_run)
    if dry_run:
        if not existed:
            outcome.notes.append(f"{f.path} does not exist")
        return outcome
    _execute(outcome, host, runner)
    if not existed and not outcome.ran:
        outcome.notes.append(f"not installed: no {f.path} and nothing loaded")
    return outcome


# --------------------------------------------------------------------------- status
@dataclass
class Status:
    file: ServiceFile
    installed: bool                 # the service file exists
    up_to_date: bool | None         # it is the file install would write now (None: not installed)
    loaded: bool                    # the service manager knows the job / unit
    running: bool
    state: str                      # the manager's own words ("running", "active (running)", ...)
    enabled: bool | None            # systemd: starts at login (launchd: RunAtLoad, so = installed)
    pid: int | None
    last_exit: str | None
    restarts: int | None
    log_exists: bool

    def to_dict(self) -> dict[str, Any]:
        f = self.file
        return {
            "schema": SCHEMA, "action": "status", "manager": f.manager, "profile": f.profile,
            "name": f.name, "path": str(f.path), "log": str(f.log), "command": list(f.argv),
            "installed": self.installed, "up_to_date": self.up_to_date, "loaded": self.loaded,
            "running": self.running, "state": self.state, "enabled": self.enabled, "pid": self.pid,
            "last_exit": self.last_exit, "restarts": self.restarts, "log_exists": self.log_exists,
        }


_PRINT_LINE = re.compile(r"^(?:\t| {4})([a-z][a-z ]*?) = (.*)$")


def parse_launchctl_print(text: str) -> dict[str, str]:
    """The top-level ``key = value`` lines of ``launchctl print`` (nested blocks are skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _PRINT_LINE.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    return out


def parse_systemctl_show(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


SYSTEMD_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID",
                      "ExecMainStatus", "NRestarts")


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def status(profile: str, host: Host, runner: Runner) -> Status:
    """Ask the service manager about ``profile``'s service (read-only)."""
    validate_profile_name(profile)
    f = render(profile, host)
    current = _read(f.path)
    installed = current is not None
    up_to_date = None if current is None else current == f.content.encode("utf-8")
    log_exists = f.log.exists()
    if f.manager == "launchd":
        target = _launchctl_target(f, host)
        res = runner(["launchctl", "print", target], quiet=True)
        if res.returncode != 0:
            if res.returncode == LAUNCHCTL_NOT_FOUND or "Could not find service" in res.output:
                return Status(f, installed, up_to_date, False, False,
                              "not loaded" if installed else "not installed", installed,
                              None, None, None, log_exists)
            raise ServiceError(f"launchctl print {target} failed (exit code {res.returncode})",
                               hint="is this a macOS GUI login session? launchd agents need one",
                               details=proc.relevant_lines(res.lines))
        info = parse_launchctl_print(res.output)
        state = info.get("state", "unknown")
        pid = _int_or_none(info.get("pid"))
        runs = _int_or_none(info.get("runs"))      # how often launchd started it
        return Status(f, installed, up_to_date, True, state == "running", state, installed,
                      pid, info.get("last exit code"), None if runs is None else max(runs - 1, 0), log_exists)
    args = ["systemctl", "--user", "show", f.name, *(f"--property={p}" for p in SYSTEMD_PROPERTIES)]
    res = runner(args, quiet=True)
    if res.returncode != 0:
        raise ServiceError(f"systemctl --user show {f.name} failed (exit code {res.returncode})",
                           hint=_failure_hint(f, "status", res.output), details=proc.relevant_lines(res.lines))
    info = parse_systemctl_show(res.output)
    load = info.get("LoadState", "")
    active = info.get("ActiveState", "unknown")
    sub = info.get("SubState", "")
    loaded = load == "loaded"
    state = f"{active} ({sub})" if sub else active
    if not loaded and not installed:
        state = "not installed"
    pid = _int_or_none(info.get("MainPID"))
    unit_state = info.get("UnitFileState")
    return Status(f, installed, up_to_date, loaded, active == "active", state,
                  None if not unit_state else unit_state == "enabled",
                  pid if pid else None, info.get("ExecMainStatus"), _int_or_none(info.get("NRestarts")),
                  log_exists)


def installed_profiles(host: Host) -> list[str]:
    """Profiles that have a service file on this host (for `status` without --profile)."""
    probe = service_path("x", host)
    if host.manager == "launchd":
        prefix, suffix = LABEL_PREFIX, ".plist"
    else:
        prefix, suffix = UNIT_PREFIX, UNIT_SUFFIX
    names = []
    if probe.parent.is_dir():
        for entry in sorted(probe.parent.iterdir()):
            n = entry.name
            if n.startswith(prefix) and n.endswith(suffix):
                profile = n[len(prefix):-len(suffix)]
                if PROFILE_NAME.fullmatch(profile):
                    names.append(profile)
    return names
