"""`turboctl service ...` through the CLI: output, JSON documents and exit codes."""

from __future__ import annotations

import json
import plistlib
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.unit.test_service import (
    UID,
    FakeRunner,
    _no_real_service_manager,  # noqa: F401  (autouse guard, here too)
    make_host,
)
from turboctl.cli import service as service_cli
from turboctl.cli.main import app
from turboctl.serve import service as svc

cli = CliRunner()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    runner = FakeRunner({("launchctl", "print"): (113, "")})
    monkeypatch.setattr(service_cli, "current_runner", lambda: runner)
    return runner


DEMO_PROFILE = "name: demo\nmodel: {path: model.gguf}\nkv: {k: turbo4}\n"


def use_host(monkeypatch: pytest.MonkeyPatch, host: svc.Host) -> svc.Host:
    """The fake machine; its home holds ./profiles/demo.yaml, where the service will look."""
    monkeypatch.setattr(service_cli, "current_host", lambda: host)
    (host.home / "profiles").mkdir(parents=True, exist_ok=True)
    (host.home / "profiles" / "demo.yaml").write_text(DEMO_PROFILE)
    return host


def invoke(*args: str) -> tuple[int, str, str]:
    r = cli.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_help_lists_service() -> None:
    code, out, _ = invoke("--help")
    assert code == 0 and " service " in out
    code, out, _ = invoke("service", "--help")
    assert code == 0 and all(f" {c} " in out for c in ("install", "uninstall", "status"))


def test_install_needs_a_profile(fake: FakeRunner) -> None:
    code, _, err = invoke("service", "install")
    assert code == 2 and "--profile" in err
    assert fake.calls == []


def test_install_dry_run_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner) -> None:
    host = use_host(monkeypatch, make_host(tmp_path, "Linux"))
    code, out, err = invoke("service", "install", "--profile", "smollm2-demo", "--dry-run")
    assert code == 0, err
    unit = host.config_home / "systemd/user/turboctl-smollm2-demo.service"
    assert f"would write {unit}" in out
    assert "Restart=on-failure" in out and "WantedBy=default.target" in out
    assert "$ systemctl --user daemon-reload" in out
    assert "$ systemctl --user enable --now turboctl-smollm2-demo.service" in out
    assert fake.calls == [] and not unit.exists()


def test_install_dry_run_json_macos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner) -> None:
    host = use_host(monkeypatch, make_host(tmp_path, "Darwin"))
    code, out, _ = invoke("service", "install", "--profile", "demo", "--dry-run", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == "turboctl.service/1" and doc["manager"] == "launchd" and doc["dry_run"] is True
    assert doc["name"] == "org.turboctl.serve.demo"
    assert plistlib.loads(doc["content"].encode())["Label"] == "org.turboctl.serve.demo"
    assert [s["args"] for s in doc["steps"]] == [
        ["launchctl", "bootout", f"gui/{UID}/org.turboctl.serve.demo"],
        ["launchctl", "bootstrap", f"gui/{UID}", str(host.home / "Library/LaunchAgents/org.turboctl.serve.demo.plist")]]
    assert doc["steps"][0]["only_if_loaded"] is True
    assert fake.calls == []


def test_install_then_status_then_uninstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fake: FakeRunner) -> None:
    host = use_host(monkeypatch, make_host(tmp_path, "Linux"))
    code, out, err = invoke("service", "install", "--profile", "demo")
    assert code == 0, err
    unit = host.config_home / "systemd/user/turboctl-demo.service"
    assert f"ok wrote {unit}" in out
    assert "unit turboctl-demo.service installed and started" in out
    assert fake.calls[-1] == ["systemctl", "--user", "enable", "--now", "turboctl-demo.service"]
    fake.answers[("systemctl", "--user", "show")] = (0, "LoadState=loaded\nActiveState=active\nSubState=running\n"
                                                        "UnitFileState=enabled\nMainPID=77\n")
    code, out, _ = invoke("service", "status", "--profile", "demo")
    assert code == 0 and "active (running)" in out and "77" in out
    code, out, _ = invoke("service", "status", "--json")
    doc = json.loads(out)
    assert [s["profile"] for s in doc["services"]] == ["demo"] and doc["services"][0]["pid"] == 77
    code, out, _ = invoke("service", "uninstall", "--profile", "demo", "--json")
    assert code == 0 and json.loads(out)["ran"][1]["kind"] == "remove"
    assert not unit.exists()
    code, out, _ = invoke("service", "status")
    assert code == 0 and "no turboctl service installed" in out


@pytest.mark.parametrize(("args", "code", "message"), [
    (["install", "--profile", "../etc/x"], 2,
     "error: profile name '../etc/x' cannot name a service: use letters, digits, '.', '_' and '-', starting with "
     "a letter or digit, at most 64 characters"),
    (["status", "--profile", "a b"], 2, "error: profile name 'a b' cannot name a service"),
    (["uninstall", "--profile", "x/y"], 2, "error: profile name 'x/y' cannot name a service"),
])
def test_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner, args: list[str],
                      code: int, message: str) -> None:
    use_host(monkeypatch, make_host(tmp_path, "Linux"))
    rc, _, err = invoke("service", *args)
    assert rc == code and message in err
    assert fake.calls == []


def test_existing_file_error_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner) -> None:
    host = use_host(monkeypatch, make_host(tmp_path, "Linux"))
    unit = host.config_home / "systemd/user/turboctl-demo.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
    rc, out, err = invoke("service", "install", "--profile", "demo", "--json")
    assert rc == 24
    assert f"error: {unit} exists and differs from the file turboctl would write for profile 'demo'" in err
    assert "hint: rerun with --force to replace it" in err
    assert json.loads(out)["error"] == "ServiceError"
    rc, out, err = invoke("service", "install", "--profile", "demo", "--force")
    assert rc == 0, err
    assert unit.read_text(encoding="utf-8") != "[Service]\nExecStart=/bin/true\n"


def test_unsupported_os_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner) -> None:
    use_host(monkeypatch, make_host(tmp_path, "FreeBSD"))
    for sub in (["install", "--profile", "demo"], ["status"], ["uninstall", "--profile", "demo"]):
        rc, _, err = invoke("service", *sub)
        assert rc == 24
        assert "error: turboctl service supports macOS (launchd) and Linux (systemd user units), not FreeBSD" in err


def test_command_failure_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner) -> None:
    use_host(monkeypatch, make_host(tmp_path, "Darwin"))
    fake.answers[("launchctl", "bootstrap")] = (5, "Bootstrap failed: 5: Input/output error")
    rc, _, err = invoke("service", "install", "--profile", "demo")
    assert rc == 24
    assert "failed (exit code 5)" in err and "| Bootstrap failed: 5: Input/output error" in err


def test_install_calls_the_profile_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner) -> None:
    use_host(monkeypatch, make_host(tmp_path, "Linux"))
    seen: list[str] = []
    monkeypatch.setattr(service_cli, "check_profile", seen.append)
    assert invoke("service", "install", "--profile", "demo", "--dry-run")[0] == 0
    assert seen == ["demo"]


def test_json_documents_match_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRunner) -> None:
    schema = json.loads(svc.schema_path().read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    docs = []
    for system in ("Linux", "Darwin"):
        use_host(monkeypatch, make_host(tmp_path / system, system))
        fake.answers[("systemctl", "--user", "show")] = (0, "LoadState=loaded\nActiveState=active\nSubState=running\n"
                                                            "UnitFileState=enabled\nMainPID=77\nNRestarts=0\n")
        fake.answers[("launchctl", "print")] = (113, "")
        for args in (["install", "--profile", "demo", "--dry-run"], ["install", "--profile", "demo"],
                     ["status", "--profile", "demo"], ["status"], ["uninstall", "--profile", "demo"],
                     ["uninstall", "--profile", "demo", "--dry-run"]):
            code, out, err = invoke("service", *args, "--json")
            assert code == 0, err
            docs.append(json.loads(out))
    assert len(docs) == 12
    for doc in docs:
        jsonschema.validate(doc, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**docs[2], "pid": "77"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**docs[0], "surprise": 1}, schema)


def test_install_needs_a_profile_the_service_can_find(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fake: FakeRunner) -> None:
    host = use_host(monkeypatch, make_host(tmp_path, "Linux"))
    elsewhere = tmp_path / "project"
    (elsewhere / "profiles").mkdir(parents=True)
    (elsewhere / "profiles" / "only-here.yaml").write_text(DEMO_PROFILE.replace("demo", "only-here"))
    monkeypatch.chdir(elsewhere)  # found from here, but not from the service's working directory
    code, _, err = invoke("service", "install", "--profile", "only-here", "--dry-run")
    assert code == 18, err
    assert "error: no profile 'only-here'" in err and str(host.home / "profiles") in err
