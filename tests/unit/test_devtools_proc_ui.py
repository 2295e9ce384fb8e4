"""devtools (pin bump/check, export), the subprocess runner and the output module."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import DATA, FAKE_SDIST_PREFIX, FakeWorld
from turboctl import devtools, proc
from turboctl.build import patches
from turboctl.build.pins import load_pin
from turboctl.errors import CommandFailed, ToolMissing
from turboctl.ui import UI

runner = CliRunner()


def test_check_pin_shipped_is_current() -> None:
    r = runner.invoke(devtools.app, ["check-pin"])
    assert r.exit_code == 0, r.output
    assert f"pin covers the {len(patches.load_series().patches)}-patch series" in r.stdout


def test_check_pin_fake_world_with_tree(fake_world: FakeWorld) -> None:
    r = runner.invoke(devtools.app, ["check-pin", "--pins", str(fake_world.pins), "--patches",
                                     str(DATA / "patches"), "--tree", str(fake_world.tree)])
    assert r.exit_code == 0, r.output
    assert "files match the pin" in r.stdout


def test_check_pin_detects_stale_pin(fake_world: FakeWorld) -> None:
    files = {k: v for k, v in fake_world.pin.files.items() if k != "src/llama-kv-cache.cpp"}
    files["docs/old.md"] = "0" * 64
    pins = fake_world.write_pin(files=files)
    r = runner.invoke(devtools.app, ["check-pin", "--pins", str(pins), "--patches", str(DATA / "patches")])
    assert r.exit_code == 3
    assert "is stale for the patch series" in r.stderr
    assert "no checksum for src/llama-kv-cache.cpp (touched by the series)" in r.stderr
    assert "checksum for docs/old.md, which is neither an anchor nor touched by the series" in r.stderr


def test_check_pin_detects_changed_tree(fake_world: FakeWorld) -> None:
    (fake_world.tree / "include/llama.h").write_text("changed\n")
    r = runner.invoke(devtools.app, ["check-pin", "--pins", str(fake_world.pins), "--patches",
                                     str(DATA / "patches"), "--tree", str(fake_world.tree)])
    assert r.exit_code == 6
    assert "include/llama.h: sha256" in r.stderr


def test_bump_pin_reproduces_the_fake_pin(fake_world: FakeWorld, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    s = fake_world.pin.sdist
    meta = {"filename": s.filename, "url": s.url, "size": s.size, "sha256": s.sha256}
    monkeypatch.setattr(devtools, "sdist_from_index", lambda package, version, index: meta)
    out = tmp_path / "bumped.toml"
    out.write_text(fake_world.pins.read_text())  # anchors are kept from the existing pin
    r = runner.invoke(devtools.app, [
        "bump-pin", "--commit", fake_world.commit, "--tag", "b-test", "--sdist-version", "1.0",
        "--sdist-file", str(fake_world.sdist), "--pins", str(out),
        "--patches", str(DATA / "patches"), "--url", fake_world.pin.llama_cpp.url])
    assert r.exit_code == 0, r.output
    bumped = load_pin(out)
    assert bumped.sdist.subdir == FAKE_SDIST_PREFIX
    assert bumped.sdist.tree_commit == fake_world.pin.sdist.tree_commit  # deterministic import
    assert bumped.files == fake_world.pin.files
    assert bumped.llama_cpp.commit == fake_world.commit


def test_sdist_from_index_parses_pep691(monkeypatch: pytest.MonkeyPatch) -> None:
    class Resp:
        def raise_for_status(self) -> None:
            return None

        def json(self) -> dict[str, Any]:
            return {"files": [
                {"filename": "llama_cpp_python-0.3.35.tar.gz", "url": "u0", "size": 1,
                 "hashes": {"sha256": "a"}},
                {"filename": "llama_cpp_python-0.3.36.tar.gz", "url": "u1", "size": 76589250,
                 "hashes": {"sha256": "832db"}},
            ]}

    seen: list[dict[str, str]] = []
    monkeypatch.setattr(devtools.requests, "get",
                        lambda url, headers, timeout: seen.append(headers) or Resp())
    meta = devtools.sdist_from_index("llama-cpp-python", "0.3.36")
    assert meta == {"filename": "llama_cpp_python-0.3.36.tar.gz", "url": "u1", "size": 76589250,
                    "sha256": "832db"}
    assert seen[0]["Accept"] == "application/vnd.pypi.simple.v1+json"


def test_export_patches_command(fake_world: FakeWorld, tmp_path: Path) -> None:
    from turboctl.build import patches, source

    tree = tmp_path / "t"
    import shutil

    shutil.copytree(fake_world.tree, tree)
    base = source.import_tree(tree, fake_world.pin, tmp_path / "l")
    patches.apply_series(tree, base, patches.load_series(DATA / "patches"), force=False,
                         log=tmp_path / "l", ui=UI(quiet=True))
    r = runner.invoke(devtools.app, ["export-patches", "--tree", str(tree), "--base", base,
                                     "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "wrote 2 patches" in r.stdout
    assert len(patches.load_series(tmp_path / "out").patches) == 2


# --------------------------------------------------------------------------- proc
def test_run_streams_to_log_and_callback(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "x.log"
    lines: list[str] = []
    res = proc.run([sys.executable, "-c", "print('a'); print('b')"], log=log, on_line=lines.append,
                   echo=False)
    assert res.returncode == 0 and lines == ["a", "b"]
    text = log.read_text()
    assert text.startswith("$ ") and text.endswith("a\nb\n")


def test_run_stdout_to_a_file_apart_from_the_log(tmp_path: Path) -> None:
    # a machine-readable stdout (SQL, JSON) must not interleave with stderr lines
    script = ("import sys\nfor i in range(3):\n    print(f'row {i}', end='', flush=True)\n"
              "    sys.stderr.write(f'log {i}\\n'); sys.stderr.flush()\n    print(';')")
    out, log = tmp_path / "out" / "doc.sql", tmp_path / "x.log"
    lines: list[str] = []
    res = proc.run([sys.executable, "-c", script], log=log, on_line=lines.append, stdout_path=out, echo=False)
    assert out.read_text() == "row 0;\nrow 1;\nrow 2;\n"
    assert lines == res.lines == ["log 0", "log 1", "log 2"]
    assert f"# stdout: {out}" in log.read_text() and "row 0" not in log.read_text()
    assert res.timed_out is False
    res = proc.run([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.5, check=False,
                   stdout_path=out, echo=False)
    assert res.timed_out is True and res.returncode != 0


def test_run_failure_carries_relevant_lines(tmp_path: Path) -> None:
    script = ("import sys\nfor i in range(50): print('noise', i)\n"
              "print('foo.c:3: error: bad thing')\nsys.exit(3)")
    with pytest.raises(CommandFailed) as err:
        proc.run([sys.executable, "-c", script], log=tmp_path / "l.log", what="compile", echo=False)
    exc = err.value
    assert exc.message.startswith("compile failed (exit code 3)")
    assert "foo.c:3: error: bad thing" in exc.details
    assert "noise 0" not in exc.details  # only context around the error line
    assert exc.log_path == tmp_path / "l.log"


def test_run_failure_without_error_lines_gives_tail() -> None:
    script = "import sys\nfor i in range(40): print('line', i)\nsys.exit(1)"
    with pytest.raises(CommandFailed) as err:
        proc.run([sys.executable, "-c", script], echo=False)
    assert err.value.details[0] == "line 20" and err.value.details[-1] == "line 39"


def test_run_timeout() -> None:
    with pytest.raises(CommandFailed, match=r"did not finish within 0\.5 s"):
        proc.run([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.5, echo=False)


def test_missing_program() -> None:
    with pytest.raises(ToolMissing, match="'no-such-tool-xyz' is not installed or not on PATH"):
        proc.run(["no-such-tool-xyz"])
    assert proc.capture(["no-such-tool-xyz"]) is None


def test_command_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from turboctl.ui import set_ui

    set_ui(UI())
    proc.run([sys.executable, "-c", "pass"], shown=["python", "-c", "pass"])
    assert "$ python -c pass" in capsys.readouterr().out


# --------------------------------------------------------------------------- ui
def test_json_mode_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    ui = UI(json_mode=True)
    ui.info("human text")
    ui.emit_json({"a": 1})
    with pytest.raises(RuntimeError):
        ui.emit_json({"b": 2})
    out, err = capsys.readouterr()
    assert json.loads(out) == {"a": 1}
    assert "human text" in err


def test_plain_table_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    ui = UI()
    ui.table("t", ["name", "status"], [["git", "ok"], ["cmake", "fail"]])
    with ui.progress("build") as bar:
        for i in range(1, 101):
            bar.update(i, 100)
    out = capsys.readouterr().out
    assert "name   status" in out and "cmake  fail" in out
    assert out.count("build: ") == 11  # first line, then one per 10 %; no bar off a terminal
    assert "\x1b[" not in out


def test_timeout_stops_the_whole_process_tree(tmp_path: Path) -> None:
    import psutil

    pidfile = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(60)\n")
    with pytest.raises(CommandFailed, match="did not finish"):
        proc.run([sys.executable, "-c", script], timeout=4, echo=False)
    grandchild = int(pidfile.read_text())
    assert not psutil.pid_exists(grandchild) or \
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
