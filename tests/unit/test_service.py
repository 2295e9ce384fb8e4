"""turboctl service: rendering, validating and installing the launchd agent / systemd user unit.

Nothing here touches the real home or the real service managers: the Host points into tmp_path
and every launchctl / systemctl call goes to a FakeRunner (the guard below refuses any real one).
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from turboctl import proc
from turboctl.errors import ProfileNotFound, ServiceError, UsageError
from turboctl.paths import Paths
from turboctl.serve import service as svc

UID = 501


@pytest.fixture(autouse=True)
def _no_real_service_manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """launchctl / systemctl may only run when they are fakes inside this test's tmp dir."""
    inner = proc._spawn

    def spawn(args: list[str], cwd: Path | None, env: Any, *rest: Any) -> Any:
        if os.path.basename(args[0]) in ("launchctl", "systemctl") and \
                not Path(args[0]).resolve().is_relative_to(tmp_path.resolve()):
            raise AssertionError(f"real service manager called: {args}")
        return inner(args, cwd, env, *rest)

    monkeypatch.setattr(proc, "_spawn", spawn)


class FakeRunner:
    """Records the commands; answers from a table of (command prefix -> (exit code, output))."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str], *, quiet: bool = False) -> proc.Result:
        argv = list(args)
        self.calls.append(argv)
        best: tuple[int, str] = (0, "")
        best_len = -1
        for prefix, answer in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix and len(prefix) > best_len:
                best, best_len = answer, len(prefix)
        code, output = best
        return proc.Result(argv, code, output, lines=output.splitlines())


def make_host(tmp_path: Path, system: str, *, env: dict[str, str] | None = None,
              program_dir: str = "venv/bin") -> svc.Host:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    tc_home = tmp_path / "tc home"
    exe_dir = tmp_path / program_dir
    exe_dir.mkdir(parents=True, exist_ok=True)
    python = exe_dir / "python"
    if not python.exists():
        python.symlink_to(sys.executable)
    environ = {"TURBOCTL_HOME": str(tc_home), "PATH": "/opt/homebrew/bin:/usr/bin:/bin"} if env is None else env
    return svc.Host(system=system, home=home, config_home=home / ".config", uid=UID,
                    paths=Paths(home=tc_home), program=(str(python), "-m", "turboctl"), environ=environ)


@pytest.fixture
def mac(tmp_path: Path) -> svc.Host:
    return make_host(tmp_path, "Darwin")


@pytest.fixture
def linux(tmp_path: Path) -> svc.Host:
    return make_host(tmp_path, "Linux")


# --------------------------------------------------------------------------- profile names
@pytest.mark.parametrize("name", ["smollm2-demo", "qwen3.5-27b-128k", "gemma4-turboquant", "a", "A_b.c-1",
                                  "x" * 64])
def test_valid_profile_names(name: str) -> None:
    assert svc.validate_profile_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "-x", "_x", "a b", "a@b", "x" * 65, "é", "a\nb",
                                  "profiles/demo.yaml", "a:b", "a\\b", "demo.yaml/"])
def test_bad_profile_name_is_refused(name: str, linux: svc.Host) -> None:
    msg = (f"profile name {name!r} cannot name a service: use letters, digits, '.', '_' and '-', starting with "
           "a letter or digit, at most 64 characters")
    for call in (lambda: svc.install(name, linux, FakeRunner()), lambda: svc.uninstall(name, linux, FakeRunner()),
                 lambda: svc.status(name, linux, FakeRunner())):
        with pytest.raises(UsageError) as exc:
            call()
        assert exc.value.message == msg
        assert exc.value.hint == "a service takes a profile NAME from the catalog, not a file path"
        assert exc.value.exit_code == 2


@pytest.mark.parametrize("name", ["demo.yaml", "demo.YML"])
def test_profile_file_name_is_refused(name: str, linux: svc.Host) -> None:
    with pytest.raises(UsageError) as exc:
        svc.install(name, linux, FakeRunner())
    assert exc.value.message == (f"profile name {name!r} is a file name: a service takes the profile's name, "
                                 "not its file")
    assert exc.value.hint == "use the name the file defines (turboctl profiles list), e.g. 'demo'"


def test_unsupported_os(tmp_path: Path) -> None:
    host = make_host(tmp_path, "Windows")
    runner = FakeRunner()
    for call in (lambda: svc.install("demo", host, runner), lambda: svc.uninstall("demo", host, runner),
                 lambda: svc.status("demo", host, runner), lambda: svc.render("demo", host)):
        with pytest.raises(ServiceError) as exc:
            call()
        assert exc.value.message == ("turboctl service supports macOS (launchd) and Linux (systemd user units), "
                                     "not Windows")
        assert exc.value.exit_code == 24
    assert runner.calls == []


# --------------------------------------------------------------------------- launchd
def test_launchd_plist_parses_with_the_required_keys(mac: svc.Host) -> None:
    f = svc.render("smollm2-demo", mac)
    assert f.manager == "launchd"
    assert f.path == mac.home / "Library" / "LaunchAgents" / "org.turboctl.serve.smollm2-demo.plist"
    doc = plistlib.loads(f.content.encode("utf-8"))
    assert set(doc) == {"Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "ThrottleInterval",
                        "WorkingDirectory", "StandardOutPath", "StandardErrorPath", "EnvironmentVariables"}
    assert doc["Label"] == "org.turboctl.serve.smollm2-demo" == f.name
    args = doc["ProgramArguments"]
    assert isinstance(args, list) and all(isinstance(a, str) for a in args)
    assert args == [*mac.program, "serve", "--profile", "smollm2-demo"]
    assert os.path.isabs(args[0]) and os.access(args[0], os.X_OK)
    assert doc["RunAtLoad"] is True
    assert doc["KeepAlive"] == {"SuccessfulExit": False} and doc["KeepAlive"]["SuccessfulExit"] is False
    assert type(doc["ThrottleInterval"]) is int and doc["ThrottleInterval"] > 0
    log = str(mac.paths.logs / "service-smollm2-demo.log")
    assert doc["StandardOutPath"] == doc["StandardErrorPath"] == log
    assert doc["WorkingDirectory"] == str(mac.home)
    env = doc["EnvironmentVariables"]
    assert isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert env == {"TURBOCTL_HOME": str(mac.paths.home), "PATH": "/opt/homebrew/bin:/usr/bin:/bin"}


def test_launchd_environment_only_what_is_set(tmp_path: Path) -> None:
    host = make_host(tmp_path, "Darwin", env={"PATH": "/usr/bin:/bin", "HF_HOME": "/Volumes/models/hf",
                                              "HF_TOKEN": "secret", "OPENAI_API_KEY": "secret", "TURBOCTL_CONFIG": ""})
    doc = plistlib.loads(svc.render("demo", host).content.encode())
    # no TURBOCTL_HOME when unset, empty values dropped, secrets and unrelated variables never copied
    assert doc["EnvironmentVariables"] == {"HF_HOME": "/Volumes/models/hf", "PATH": "/usr/bin:/bin"}


def test_launchd_turboctl_home_is_the_resolved_one(tmp_path: Path) -> None:
    host = make_host(tmp_path, "Darwin", env={"TURBOCTL_HOME": "~/relative/../typed", "PATH": "/bin"})
    doc = plistlib.loads(svc.render("demo", host).content.encode())
    assert doc["EnvironmentVariables"]["TURBOCTL_HOME"] == str(host.paths.home)


def test_launchd_install_fresh(mac: svc.Host) -> None:
    runner = FakeRunner({("launchctl", "print"): (113, 'Could not find service "org.turboctl.serve.demo" in '
                                                       "domain for port")})
    out = svc.install("demo", mac, runner)
    path = mac.home / "Library/LaunchAgents/org.turboctl.serve.demo.plist"
    assert path.read_text(encoding="utf-8") == out.file.content
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert mac.paths.logs.is_dir()          # launchd does not create the log directory
    assert runner.calls == [["launchctl", "print", f"gui/{UID}/org.turboctl.serve.demo"],
                            ["launchctl", "bootstrap", f"gui/{UID}", str(path)]]
    assert [s.args[1] for s in out.skipped] == ["bootout"]
    assert out.changed and not out.existed
    assert list(path.parent.iterdir()) == [path]       # no temporary file left behind


def test_launchd_install_reloads_a_loaded_agent(mac: svc.Host) -> None:
    svc.install("demo", mac, FakeRunner({("launchctl", "print"): (113, "")}))
    runner = LoadedFor(1)
    out = svc.install("demo", mac, runner)
    assert not out.changed and out.existed
    assert [c[1] for c in runner.calls] == ["print", "bootout", "print", "bootstrap"]
    assert runner.calls[1] == ["launchctl", "bootout", f"gui/{UID}/org.turboctl.serve.demo"]


class LoadedFor(FakeRunner):
    """`launchctl print` says "loaded" for the first ``n`` calls, then "not found"."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __call__(self, args: Sequence[str], *, quiet: bool = False) -> proc.Result:
        if list(args[:2]) == ["launchctl", "print"]:
            self.calls.append(list(args))
            self.n -= 1
            code = 0 if self.n >= 0 else 113
            return proc.Result(list(args), code, "")
        return super().__call__(args, quiet=quiet)


def test_launchd_install_waits_for_the_bootout(mac: svc.Host, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(svc, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(svc, "_sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    runner = LoadedFor(3)
    svc.install("demo", mac, runner)
    assert [c[1] for c in runner.calls] == ["print", "bootout", "print", "print", "print", "bootstrap"]
    assert clock[0] == 1.0
    runner = LoadedFor(1000)
    with pytest.raises(ServiceError) as exc:
        svc.install("demo", mac, runner)
    assert exc.value.message == (f"launchd still has gui/{UID}/org.turboctl.serve.demo loaded 30 s after "
                                 "launchctl bootout")
    assert exc.value.hint == (f"check `launchctl print gui/{UID}/org.turboctl.serve.demo`, then rerun "
                              "`turboctl service install --profile demo`")
    assert "bootstrap" not in [c[1] for c in runner.calls]


def test_launchd_bootstrap_failure(mac: svc.Host) -> None:
    runner = FakeRunner({("launchctl", "print"): (113, ""),
                         ("launchctl", "bootstrap"): (5, "Bootstrap failed: 5: Input/output error")})
    with pytest.raises(ServiceError) as exc:
        svc.install("demo", mac, runner)
    path = mac.home / "Library/LaunchAgents/org.turboctl.serve.demo.plist"
    assert exc.value.message == f"launchctl bootstrap gui/{UID} {path} failed (exit code 5)"
    assert exc.value.hint == (f"the agent file is in place ({path}); fix the cause and rerun `turboctl service "
                              "install --profile demo`, or remove it with `turboctl service uninstall --profile demo`")
    assert exc.value.details == ["Bootstrap failed: 5: Input/output error"]
    assert exc.value.exit_code == 24
    assert path.exists()


def test_launchctl_print_failing_otherwise(mac: svc.Host) -> None:
    runner = FakeRunner({("launchctl", "print"): (1, "Unrecognized target specifier.")})
    for call in (lambda: svc.install("demo", mac, runner), lambda: svc.status("demo", mac, runner)):
        with pytest.raises(ServiceError) as exc:
            call()
        assert exc.value.message == f"launchctl print gui/{UID}/org.turboctl.serve.demo failed (exit code 1)"
        assert exc.value.hint == "is this a macOS GUI login session? launchd agents need one"


def test_launchd_uninstall(mac: svc.Host) -> None:
    svc.install("demo", mac, FakeRunner({("launchctl", "print"): (113, "")}))
    path = mac.home / "Library/LaunchAgents/org.turboctl.serve.demo.plist"
    runner = FakeRunner({("launchctl", "print"): (0, "\tstate = running\n")})
    out = svc.uninstall("demo", mac, runner)
    assert runner.calls == [["launchctl", "print", f"gui/{UID}/org.turboctl.serve.demo"],
                            ["launchctl", "bootout", f"gui/{UID}/org.turboctl.serve.demo"]]
    assert not path.exists() and out.notes == []
    # again: nothing loaded, no file
    runner = FakeRunner({("launchctl", "print"): (113, "")})
    out = svc.uninstall("demo", mac, runner)
    assert out.notes == [f"not installed: no {path} and nothing loaded"]
    assert [c[1] for c in runner.calls] == ["print"]


def test_launchd_bootout_failure_keeps_the_file(mac: svc.Host) -> None:
    svc.install("demo", mac, FakeRunner({("launchctl", "print"): (113, "")}))
    path = mac.home / "Library/LaunchAgents/org.turboctl.serve.demo.plist"
    runner = FakeRunner({("launchctl", "print"): (0, ""), ("launchctl", "bootout"): (150, "Boot-out failed: 150: "
                                                                                          "Operation not permitted")})
    with pytest.raises(ServiceError) as exc:
        svc.uninstall("demo", mac, runner)
    assert exc.value.message == f"launchctl bootout gui/{UID}/org.turboctl.serve.demo failed (exit code 150)"
    assert exc.value.hint == "fix the cause and rerun `turboctl service uninstall --profile demo`"
    assert path.exists()


# A representative `launchctl print gui/<uid>/<label>` of a running agent (tab-indented; nested
# blocks one level deeper must not be read as the job's own state).
LAUNCHCTL_PRINT = """gui/501/org.turboctl.serve.demo = {
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/org.turboctl.serve.demo.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/me/.venv/bin/python
\targuments = {
\t\t/Users/me/.venv/bin/python
\t\t-m
\t\tturboctl
\t}

\tevent triggers = {
\t\tstate = waiting
\t}

\truns = 3
\tpid = 4242
\tlast exit code = 1
\tproperties = keepalive | runatload
}
"""


def test_launchd_status(mac: svc.Host) -> None:
    runner = FakeRunner({("launchctl", "print"): (113, "")})
    st = svc.status("demo", mac, runner)
    assert (st.installed, st.loaded, st.running, st.state, st.up_to_date) == (False, False, False,
                                                                              "not installed", None)
    svc.install("demo", mac, runner)
    st = svc.status("demo", mac, runner)
    assert (st.installed, st.loaded, st.state, st.up_to_date, st.enabled) == (True, False, "not loaded", True, True)
    runner = FakeRunner({("launchctl", "print"): (0, LAUNCHCTL_PRINT)})
    st = svc.status("demo", mac, runner)
    assert (st.loaded, st.running, st.state, st.pid, st.last_exit, st.restarts) == (True, True, "running", 4242,
                                                                                    "1", 2)
    assert runner.calls == [["launchctl", "print", f"gui/{UID}/org.turboctl.serve.demo"]]
    d = st.to_dict()
    assert d["schema"] == "turboctl.service/1" and d["pid"] == 4242 and d["manager"] == "launchd"


def test_parse_launchctl_print_ignores_nested_blocks() -> None:
    info = svc.parse_launchctl_print(LAUNCHCTL_PRINT)
    assert info["state"] == "running" and info["pid"] == "4242" and info["last exit code"] == "1"
    assert "/Users/me/.venv/bin/python" not in info


# --------------------------------------------------------------------------- systemd
def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        sections[current].append((key, value))
    return sections


def test_systemd_unit_renders(linux: svc.Host) -> None:
    f = svc.render("smollm2-demo", linux)
    assert f.manager == "systemd" and f.name == "turboctl-smollm2-demo.service"
    assert f.path == linux.config_home / "systemd" / "user" / "turboctl-smollm2-demo.service"
    unit = parse_unit(f.content)
    assert list(unit) == ["Unit", "Service", "Install"]
    service = dict(unit["Service"])
    log = linux.paths.logs / "service-smollm2-demo.log"
    assert service["ExecStart"] == f"{linux.program[0]} -m turboctl serve --profile smollm2-demo"
    assert service["Restart"] == "on-failure"
    assert int(service["RestartSec"]) > 0
    assert service["StandardOutput"] == service["StandardError"] == f"append:{log}"
    assert service["RestartPreventExitStatus"] == "2 3 17 18 20 23"
    assert service["SuccessExitStatus"] == "130 143"
    envs = [v for k, v in unit["Service"] if k == "Environment"]
    # the TURBOCTL_HOME of this test has a space: quoted
    assert envs == [f'"TURBOCTL_HOME={linux.paths.home}"', '"PATH=/opt/homebrew/bin:/usr/bin:/bin"']
    assert dict(unit["Install"]) == {"WantedBy": "default.target"}


def test_systemd_honours_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    host = svc.Host.current(Paths(home=tmp_path / "tc"))
    assert host.config_home == tmp_path / "xdg"
    assert host.home == Path(os.environ["HOME"])
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")       # ignored, as the XDG spec says
    assert svc.Host.current(Paths(home=tmp_path / "tc")).config_home == Path(os.environ["HOME"]) / ".config"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    host = replace(svc.Host.current(Paths(home=tmp_path / "tc")), system="Linux")
    assert svc.service_path("demo", host) == Path(os.environ["HOME"]) / ".config/systemd/user/turboctl-demo.service"


def test_host_current_program_is_this_interpreter(tmp_path: Path) -> None:
    host = svc.Host.current(Paths(home=tmp_path / "tc"))
    assert host.program == (os.path.abspath(sys.executable), "-m", "turboctl")
    # `python -m turboctl` really starts this turboctl
    out = subprocess.run([*host.program, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("turboctl ")


@pytest.mark.parametrize(("arg", "quoted"), [
    ("serve", "serve"),
    ("--profile", "--profile"),
    ("a b", '"a b"'),
    ("50%", "\"50%%\""),
    ("$HOME", '"$$HOME"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'),
    (";", '";"'),
    ("", '""'),
])
def test_systemd_exec_arg_quoting(arg: str, quoted: str) -> None:
    assert svc.systemd_exec_arg(arg) == quoted


def test_systemd_program_path_with_quotes_is_refused(tmp_path: Path) -> None:
    host = make_host(tmp_path, "Linux", program_dir='it"s/bin')
    with pytest.raises(ServiceError) as exc:
        svc.render("demo", host)
    assert exc.value.message == ("the turboctl program path contains '\"', which systemd does not accept in an "
                                 f"executable name: {host.program[0]}")
    assert exc.value.hint == "install turboctl (its Python environment) under a path without quotes or backslashes"


@pytest.mark.parametrize("system", ["Linux", "Darwin"])
def test_control_characters_are_refused(tmp_path: Path, system: str) -> None:
    host = make_host(tmp_path, system, env={"PATH": "/usr/bin\n[Service]\nExecStartPre=/bin/evil"})
    with pytest.raises(ServiceError) as exc:
        svc.render("demo", host)
    assert exc.value.message == ("environment variable PATH contains a control character (newline, tab, ...): "
                                 "'/usr/bin\\n[Service]\\nExecStartPre=/bin/evil'")
    assert exc.value.hint == "a service file cannot carry it; use a path or value without one"


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze is not installed (not a systemd system)")


def verify_unit(path: Path, tmp_path: Path, host: svc.Host) -> tuple[int, str]:
    """`systemd-analyze --user verify` on one unit file, offline.

    --user checks it as a user unit (the user manager's context: default.target, no User=); that
    needs a runtime dir, so XDG_RUNTIME_DIR points at an empty private one. --man=no: do not look
    up man pages. The unit's ExecStart program must exist and be executable."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(host.home),
           "XDG_CONFIG_HOME": str(host.config_home), "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    assert SYSTEMD_ANALYZE is not None
    res = subprocess.run([SYSTEMD_ANALYZE, "--user", "--man=no", "verify", str(path)], env=env,
                         capture_output=True, text=True, timeout=60)
    return res.returncode, res.stdout + res.stderr


def complaints(output: str, unit: svc.ServiceFile) -> list[str]:
    """Lines of systemd-analyze output about our unit (warnings such as an unknown key exit 0)."""
    return [ln for ln in output.splitlines() if unit.name in ln or str(unit.path) in ln]


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_installed_unit(linux: svc.Host, tmp_path: Path) -> None:
    out = svc.install("smollm2-demo", linux, FakeRunner())
    code, output = verify_unit(out.file.path, tmp_path, linux)
    assert code == 0, output
    assert complaints(output, out.file) == []


@needs_systemd_analyze
def test_systemd_analyze_verifies_awkward_paths(tmp_path: Path) -> None:
    # spaces, '%' (a specifier) and '$' in the program path, the home and the log dir
    host = make_host(tmp_path, "Linux", program_dir="my env 100%/$x/bin",
                     env={"TURBOCTL_HOME": "x", "PATH": '/a b/%n/$PATH/"q"/back\\slash:/usr/bin'})
    host = replace(host, paths=Paths(home=tmp_path / "tc 50%" / "$HOME"))
    out = svc.install("demo", host, FakeRunner())
    code, output = verify_unit(out.file.path, tmp_path, host)
    assert code == 0, output
    assert complaints(output, out.file) == []


@needs_systemd_analyze
def test_systemd_analyze_catches_a_broken_unit(linux: svc.Host, tmp_path: Path) -> None:
    """The verification above can fail: a unit whose program is missing, or with a bad key, is reported."""
    f = svc.render("demo", linux)
    f.path.parent.mkdir(parents=True)
    f.path.write_text(f.content.replace(linux.program[0], str(tmp_path / "no-such-python")), encoding="utf-8")
    code, output = verify_unit(f.path, tmp_path, linux)
    assert code != 0 and "no-such-python" in output
    f.path.write_text(f.content.replace("Restart=on-failure", "Restart=on-failur"), encoding="utf-8")
    code, output = verify_unit(f.path, tmp_path, linux)
    assert complaints(output, f) != []


SYSTEMD = next((p for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd") if os.access(p, os.X_OK)), None)
SETPRIV = shutil.which("setpriv")


def systemd_test_dump(unit: svc.ServiceFile, host: svc.Host) -> str:
    """`systemd --test --user`: the user manager loads the unit as it would at login and dumps what it
    parsed (offline: it starts nothing). It refuses to run as root in user mode, so as root it runs as
    'nobody' on a world-readable copy outside pytest's private tmp dir."""
    assert SYSTEMD is not None
    base = Path(tempfile.mkdtemp(prefix="turboctl-unit-test-"))
    try:
        base.chmod(0o755)
        config = base / "config"
        (config / "systemd" / "user").mkdir(parents=True)
        shutil.copy(unit.path, config / "systemd" / "user" / unit.name)
        for d in (config, config / "systemd", config / "systemd" / "user"):
            d.chmod(0o755)
        (config / "systemd" / "user" / unit.name).chmod(0o644)
        runtime = base / "runtime"
        runtime.mkdir(mode=0o700)
        prefix: list[str] = []
        if os.geteuid() == 0:
            if SETPRIV is None:
                pytest.skip("running as root and setpriv is missing (systemd --user refuses root)")
            os.chown(runtime, 65534, 65534)
            prefix = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(host.home), "XDG_CONFIG_HOME": str(config),
               "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_TARGET": "console", "SYSTEMD_LOG_COLOR": "0"}
        res = subprocess.run([*prefix, SYSTEMD, "--test", "--user", f"--unit={unit.name}", "--no-pager"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        section: list[str] = []
        inside = False
        for line in res.stdout.splitlines():
            if line.startswith("\t-> Unit "):
                inside = line == f"\t-> Unit {unit.name}:"
                continue
            if inside:
                section.append(line.strip())
        assert section, res.stdout[-2000:]
        return "\n".join(section)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(SYSTEMD is None, reason="no systemd binary (not a systemd system)")
def test_systemd_reads_the_values_as_written(tmp_path: Path) -> None:
    """What systemd itself parsed from the unit: the program, environment and log path with their
    spaces, '%', '$', quotes and backslashes come out exactly as turboctl meant them."""
    host = make_host(tmp_path, "Linux", program_dir="my env 100%/$x/bin",
                     env={"TURBOCTL_HOME": "x", "PATH": '/a b/%n/$PATH/"q"/back\\slash:/usr/bin'})
    host = replace(host, paths=Paths(home=tmp_path / "tc 50%" / "$HOME"))
    out = svc.install("demo", host, FakeRunner())
    dump = systemd_test_dump(out.file, host)
    values: dict[str, list[str]] = {}
    for line in dump.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            values.setdefault(key, []).append(value)
    assert values["Unit Load State"] == ["loaded"]
    assert values["Fragment Path"][0].endswith("/turboctl-demo.service")
    assert values["Type"] == ["simple"] and values["Restart"] == ["on-failure"]
    assert values["RestartSec"] == [f"{svc.RESTART_SEC}s"]
    assert values["Environment"] == [f"TURBOCTL_HOME={host.paths.home}", 'PATH=/a b/%n/$PATH/"q"/back\\slash:/usr/bin']
    assert values["StandardOutput"] == ["append"] and values["StandardError"] == ["append"]
    assert values["StandardOutputFileToAppend"] == [str(host.paths.logs / "service-demo.log")]
    assert values["WorkingDirectory"] == [str(host.home)]
    # systemd shows the command shell-quoted, '$' escaped
    assert shlex.split(values["Command Line"][0].replace("\\$", "$")) == list(out.file.argv)


def test_systemd_install_fresh(linux: svc.Host) -> None:
    runner = FakeRunner()
    out = svc.install("demo", linux, runner)
    path = linux.config_home / "systemd/user/turboctl-demo.service"
    assert path.read_text(encoding="utf-8") == out.file.content
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert linux.paths.logs.is_dir()
    assert runner.calls == [["systemctl", "--user", "daemon-reload"],
                            ["systemctl", "--user", "enable", "--now", "turboctl-demo.service"]]
    assert out.notes == ["a systemd user service runs while you are logged in; to start it at boot and keep it "
                         "running after logout: loginctl enable-linger $USER"]


def test_systemd_reinstall_identical_restarts_without_rewriting(linux: svc.Host) -> None:
    first = svc.install("demo", linux, FakeRunner())
    before = first.file.path.stat().st_mtime_ns
    os.utime(first.file.path, ns=(before - 10**9, before - 10**9))
    runner = FakeRunner()
    out = svc.install("demo", linux, runner)
    assert not out.changed and out.existed
    assert first.file.path.stat().st_mtime_ns == before - 10**9
    assert runner.calls[-1] == ["systemctl", "--user", "restart", "turboctl-demo.service"]


@pytest.mark.parametrize("system", ["Linux", "Darwin"])
def test_existing_different_file_needs_force(tmp_path: Path, system: str) -> None:
    host = make_host(tmp_path, system)
    path = svc.service_path("demo", host)
    path.parent.mkdir(parents=True)
    path.write_text("# my own edits\n", encoding="utf-8")
    runner = FakeRunner({("launchctl", "print"): (113, "")})
    with pytest.raises(ServiceError) as exc:
        svc.install("demo", host, runner)
    assert exc.value.message == f"{path} exists and differs from the file turboctl would write for profile 'demo'"
    assert exc.value.hint == ("rerun with --force to replace it (`turboctl service install --profile demo --force`); "
                              "--dry-run shows the new file")
    assert path.read_text(encoding="utf-8") == "# my own edits\n" and runner.calls == []
    # the dry run shows the file and says it would need --force
    out = svc.install("demo", host, runner, dry_run=True)
    assert out.notes[0] == f"{path} exists and differs: install refuses to replace it without --force"
    assert runner.calls == [] and path.read_text(encoding="utf-8") == "# my own edits\n"
    out = svc.install("demo", host, runner, force=True)
    assert path.read_text(encoding="utf-8") == out.file.content and out.changed and out.existed
    if system == "Linux":
        assert runner.calls[-1] == ["systemctl", "--user", "restart", "turboctl-demo.service"]


@pytest.mark.parametrize("system", ["Linux", "Darwin"])
def test_dry_run_changes_nothing(tmp_path: Path, system: str) -> None:
    host = make_host(tmp_path, system)
    runner = FakeRunner()
    out = svc.install("demo", host, runner, dry_run=True)
    assert runner.calls == [] and not out.file.path.exists() and not host.paths.logs.exists()
    assert out.dry_run and out.changed and out.steps
    d = out.to_dict()
    assert d["content"] == out.file.content and d["ran"] == [] and d["dry_run"] is True
    assert [s["args"] for s in d["steps"]] == [list(s.args) for s in out.steps]
    out = svc.uninstall("demo", host, runner, dry_run=True)
    assert runner.calls == [] and out.notes == [f"{out.file.path} does not exist"]


def test_systemctl_failures(linux: svc.Host) -> None:
    runner = FakeRunner({("systemctl", "--user", "daemon-reload"):
                         (1, "Failed to connect to bus: No medium found")})
    with pytest.raises(ServiceError) as exc:
        svc.install("demo", linux, runner)
    assert exc.value.message == "systemctl --user daemon-reload failed (exit code 1)"
    path = linux.config_home / "systemd/user/turboctl-demo.service"
    assert exc.value.hint == ("no systemd user session is reachable from this shell: log in as this user (not via "
                              "su/sudo), or let the user's services run without a login with "
                              "`loginctl enable-linger $USER`; "
                              f"the unit file is in place ({path}); fix the cause and rerun `turboctl service install "
                              "--profile demo`, or remove it with `turboctl service uninstall --profile demo`")
    assert exc.value.details == ["Failed to connect to bus: No medium found"]
    runner = FakeRunner({("systemctl", "--user", "enable"): (1, "Failed to enable unit: Unit file is masked.")})
    with pytest.raises(ServiceError) as exc:
        svc.install("demo", linux, runner)
    assert exc.value.message == "systemctl --user enable --now turboctl-demo.service failed (exit code 1)"
    assert exc.value.hint == (f"the unit file is in place ({path}); fix the cause and rerun `turboctl service install "
                              "--profile demo`, or remove it with `turboctl service uninstall --profile demo`")


def test_timeout_is_a_failure(linux: svc.Host) -> None:
    class Slow(FakeRunner):
        def __call__(self, args: Sequence[str], *, quiet: bool = False) -> proc.Result:
            res = super().__call__(args, quiet=quiet)
            res.timed_out, res.returncode = True, -15
            return res

    with pytest.raises(ServiceError) as exc:
        svc.install("demo", linux, Slow())
    assert exc.value.message == "systemctl --user daemon-reload did not finish in time"


def test_systemd_uninstall(linux: svc.Host) -> None:
    svc.install("demo", linux, FakeRunner())
    path = linux.config_home / "systemd/user/turboctl-demo.service"
    runner = FakeRunner({("systemctl", "--user", "disable"): (1, "Failed to connect to bus: No medium found")})
    with pytest.raises(ServiceError) as exc:
        svc.uninstall("demo", linux, runner)
    assert exc.value.message == "systemctl --user disable --now turboctl-demo.service failed (exit code 1)"
    assert path.exists()                    # not removed while systemd may still run it
    runner = FakeRunner()
    out = svc.uninstall("demo", linux, runner)
    assert runner.calls == [["systemctl", "--user", "disable", "--now", "turboctl-demo.service"],
                            ["systemctl", "--user", "daemon-reload"]]
    assert not path.exists() and [s.kind for s in out.ran] == ["run", "remove", "run"]
    runner = FakeRunner()
    out = svc.uninstall("demo", linux, runner)
    assert runner.calls == [] and out.notes == [f"not installed: no {path} and nothing loaded"]


SYSTEMCTL_SHOW = """LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=3141
ExecMainStatus=0
NRestarts=2
"""


def test_systemd_status(linux: svc.Host) -> None:
    runner = FakeRunner({("systemctl", "--user", "show"): (0, "LoadState=not-found\nActiveState=inactive\n"
                                                                "SubState=dead\nUnitFileState=\nMainPID=0\n")})
    st = svc.status("demo", linux, runner)
    assert (st.installed, st.loaded, st.running, st.state, st.pid, st.enabled) == (False, False, False,
                                                                                   "not installed", None, None)
    assert runner.calls == [["systemctl", "--user", "show", "turboctl-demo.service",
                             *(f"--property={p}" for p in svc.SYSTEMD_PROPERTIES)]]
    svc.install("demo", linux, FakeRunner())
    runner = FakeRunner({("systemctl", "--user", "show"): (0, SYSTEMCTL_SHOW)})
    st = svc.status("demo", linux, runner)
    assert (st.installed, st.up_to_date, st.loaded, st.running, st.state, st.pid, st.enabled, st.restarts,
            st.last_exit) == (True, True, True, True, "active (running)", 3141, True, 2, "0")
    # the file was edited by hand: status says it is not what install would write
    st.file.path.write_text("x", encoding="utf-8")
    assert svc.status("demo", linux, runner).up_to_date is False


def test_systemd_status_failure(linux: svc.Host) -> None:
    runner = FakeRunner({("systemctl",): (1, "Failed to connect to bus: No medium found")})
    with pytest.raises(ServiceError) as exc:
        svc.status("demo", linux, runner)
    assert exc.value.message == "systemctl --user show turboctl-demo.service failed (exit code 1)"
    assert exc.value.hint == ("no systemd user session is reachable from this shell: log in as this user (not via "
                              "su/sudo), or let the user's services run without a login with "
                              "`loginctl enable-linger $USER`")


def test_installed_profiles(linux: svc.Host, mac: svc.Host) -> None:
    assert svc.installed_profiles(linux) == []
    for name in ("b-demo", "a.x"):
        svc.install(name, linux, FakeRunner())
    (linux.config_home / "systemd/user/other.service").write_text("", encoding="utf-8")
    assert svc.installed_profiles(linux) == ["a.x", "b-demo"]


def test_check_profile_hook_runs_first(linux: svc.Host) -> None:
    def missing(name: str) -> None:
        raise ProfileNotFound(f"no profile '{name}' (closest: demo)")

    runner = FakeRunner()
    for dry in (False, True):
        with pytest.raises(ProfileNotFound):
            svc.install("dmeo", linux, runner, dry_run=dry, check_profile=missing)
    assert runner.calls == [] and not (linux.config_home / "systemd").exists()
    seen: list[str] = []
    svc.install("demo", linux, runner, check_profile=seen.append)
    assert seen == ["demo"]


def test_atomic_write_leaves_the_old_file(linux: svc.Host, monkeypatch: pytest.MonkeyPatch) -> None:
    path = svc.service_path("demo", linux)
    path.parent.mkdir(parents=True)
    path.write_text("old\n", encoding="utf-8")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(svc.os, "replace", broken_replace)
    with pytest.raises(OSError):
        svc.install("demo", linux, FakeRunner(), force=True)
    assert path.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --------------------------------------------------------------------------- the real runner
@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A `systemctl` on PATH (inside tmp_path) that records its arguments."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    record = tmp_path / "calls.txt"
    script = bindir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\n'
                      'case "$*" in *show*) echo LoadState=loaded; echo ActiveState=failed; '
                      'echo SubState=failed; echo MainPID=0;; esac\n', encoding="utf-8")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    yield record


def test_system_runner_goes_through_proc(linux: svc.Host, fake_systemctl: Path) -> None:
    svc.install("demo", linux, svc.system_runner())
    assert fake_systemctl.read_text().splitlines() == ["--user daemon-reload",
                                                       "--user enable --now turboctl-demo.service"]
    st = svc.status("demo", linux, svc.system_runner())
    assert st.state == "failed (failed)" and not st.running


def test_system_runner_without_the_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ServiceError) as exc:
        svc.system_runner()(["systemctl", "--user", "daemon-reload"])
    assert exc.value.message == ("systemctl is not available: turboctl service needs launchd (macOS) or a systemd "
                                 "user session (Linux)")
    assert exc.value.hint == "run `turboctl serve --profile NAME` under your own process supervisor instead"


def test_program_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = replace(make_host(tmp_path, "Linux"), program=("python3", "-m", "turboctl"))
    monkeypatch.setattr(svc.sys, "executable", "")
    with pytest.raises(ServiceError) as exc:
        svc.turboctl_program()
    assert exc.value.message == "cannot tell which Python runs turboctl (sys.executable is empty)"
    assert exc.value.hint == "run turboctl from a normal Python installation or virtual environment"
    with pytest.raises(ServiceError) as exc:
        svc.render("demo", host)
    assert exc.value.message == "the turboctl program path is not absolute: python3"


def test_unreadable_service_file(linux: svc.Host) -> None:
    path = svc.service_path("demo", linux)
    path.mkdir(parents=True)                # a directory where the unit file should be
    for call in (lambda: svc.install("demo", linux, FakeRunner()), lambda: svc.status("demo", linux, FakeRunner())):
        with pytest.raises(ServiceError) as exc:
            call()
        assert exc.value.message == f"cannot read {path}: Is a directory"
