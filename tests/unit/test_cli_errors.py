"""Every user-facing error: exit code + message text, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import DATA, FakeWorld
from turboctl import __version__, errors
from turboctl.cli.main import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_version_and_help() -> None:
    code, out, _ = invoke("--version")
    assert code == 0 and out.strip() == f"turboctl {__version__}"
    code, out, _ = invoke("--help")
    assert code == 0
    for command in ("build", "doctor", "selftest", "serve", "profiles", "service", "bench", "kv"):
        assert f" {command} " in out
    assert "--install-completion" in out
    code, out, _ = invoke("bench", "--help")
    assert code == 0 and " kld " in out and " speed " in out


def test_exit_codes_are_distinct() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.TurboctlError) and c is not errors.TurboctlError]
    assert len(classes) == 25
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and errors.UsageError.exit_code == 2
    assert errors.TurboctlError.exit_code not in codes


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--source", "nowhere-dir"], 2,
         "error: --source 'nowhere-dir': not 'git', 'sdist', a URL, or an existing directory"),
        (["--backend", "metal"], 2, "error: --backend metal: Metal needs macOS"),
        (["--backend", "vulkan"], 2, "error: --backend 'vulkan': choose one of auto, metal, cuda, cpu"),
        (["--jobs", "0"], 2, "error: --jobs 0: must be at least 1"),
    ],
)
def test_usage_errors(args: list[str], code: int, message: str) -> None:
    rc, out, err = invoke("build", *args)
    assert rc == code
    assert message in err
    assert out == ""  # nothing on stdout, no traceback
    assert "Traceback" not in err


def test_missing_series(tmp_path: Path) -> None:
    rc, _, err = invoke("build", "--patches", str(tmp_path))
    assert rc == 3
    assert f"error: patch series file not found: {tmp_path / 'series'}" in err


def test_invalid_pins_file(tmp_path: Path) -> None:
    bad = tmp_path / "pins.toml"
    bad.write_text("schema = 1\n")
    rc, _, err = invoke("build", "--pins", str(bad))
    assert rc == 3
    assert f"error: {bad}: invalid pin at 'llama_cpp': Field required" in err
    assert "hint: fix the file or regenerate it with: python -m turboctl.devtools bump-pin" in err


def test_stale_pin_for_series(fake_world: FakeWorld, tmp_path: Path) -> None:
    files = {k: v for k, v in fake_world.pin.files.items() if k != "include/llama.h"}
    pins = fake_world.write_pin(files=files)
    rc, _, err = invoke("build", "--pins", str(pins), "--patches", str(DATA / "patches"))
    assert rc == 3
    assert "has no checksum for include/llama.h, touched by the patch series" in err


def test_verification_error(fake_world: FakeWorld) -> None:
    (fake_world.tree / "src/tool.c").write_text("/* not the pinned file */\n")
    rc, _, err = invoke("build", "--pins", str(fake_world.pins), "--patches", str(DATA / "patches"),
                        "--backend", "cpu", "--source", str(fake_world.tree))
    assert rc == 6
    assert "do not match the pinned checksums" in err
    assert "src/tool.c: sha256" in err


def test_network_error_for_explicit_url(fake_world: FakeWorld, tmp_path: Path) -> None:
    url = (tmp_path / "gone").as_uri()
    rc, _, err = invoke("build", "--pins", str(fake_world.pins), "--patches", str(DATA / "patches"),
                        "--backend", "cpu", "--source", url)
    assert rc == 5
    assert f"error: cannot reach {url}" in err
    assert "hint: check the URL or network, or use --source sdist" in err


def test_foreign_source_dir(fake_world: FakeWorld) -> None:
    dest = fake_world.home / "src" / f"llama.cpp-b-test-{fake_world.commit[:12]}"
    dest.mkdir(parents=True)
    rc, _, err = invoke("build", "--pins", str(fake_world.pins), "--patches", str(DATA / "patches"),
                        "--backend", "cpu", "--source", "sdist")
    assert rc == 4
    assert f"error: {dest} exists but was not created by turboctl" in err
    assert "--force" in err


def test_patch_error(fake_world: FakeWorld) -> None:
    pins = fake_world.write_pin()
    rc, _, err = invoke("build", "--pins", str(pins), "--patches", str(DATA / "patches-bad"),
                        "--backend", "cpu", "--source", "sdist")
    assert rc == 7
    assert "0001-kv-cache-halve-the-cache-size.patch does not apply on" in err
    assert "hunk for src/llama-kv-cache.cpp at line 1 does not apply" in err
    assert "log: " in err


def test_tool_missing(fake_world: FakeWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rc, _, err = invoke("build", "--pins", str(fake_world.pins), "--patches", str(DATA / "patches"),
                        "--backend", "cpu", "--source", "sdist")
    assert rc == 9
    assert "error: 'git' is not installed or not on PATH" in err
    assert "hint: install git" in err


def test_json_mode_error_document(tmp_path: Path) -> None:
    rc, out, err = invoke("build", "--json", "--patches", str(tmp_path))
    assert rc == 3
    doc = json.loads(out)
    assert doc["schema"] == "turboctl.error/1"
    assert doc["error"] == "ConfigError" and doc["exit_code"] == 3
    assert "patch series file not found" in doc["message"]
    assert "error: patch series file not found" in err


def test_debug_env_shows_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURBOCTL_DEBUG", "1")
    r = runner.invoke(app, ["build", "--backend", "vulkan"])
    assert isinstance(r.exception, errors.UsageError)  # propagated: Python prints the traceback


def test_an_error_after_the_json_document_goes_to_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    # serve --json prints its ready document, then llama-server may die: stdout keeps one document
    import typer

    from turboctl.cli.common import handle_errors, start

    @handle_errors
    def command() -> None:
        ui = start(True)
        ui.emit_json({"status": "ready"})
        raise errors.ServerFailed("llama-server stopped unexpectedly (exit code -6)")

    with pytest.raises(typer.Exit) as exit_:
        command()
    assert exit_.value.exit_code == 22
    out, err = capsys.readouterr()
    assert json.loads(out) == {"status": "ready"}
    assert "error: llama-server stopped unexpectedly (exit code -6)" in err
