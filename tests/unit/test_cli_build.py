"""`turboctl build` end to end on the fake project: real git, real patches, real cmake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import DATA, FakeWorld, Guard
from turboctl.build import manifest, patches
from turboctl.build.pins import load_pin
from turboctl.cli.main import app
from turboctl.errors import SelftestFailed
from turboctl.paths import Paths

runner = CliRunner()


def build(world: FakeWorld, *extra: str) -> tuple[int, str, str]:
    args = ["build", "--backend", "cpu", "--pins", str(world.pins), "--patches",
            str(DATA / "patches"), "-j", "2", *extra]
    r = runner.invoke(app, args)
    return r.exit_code, r.stdout, r.stderr


def test_build_twice_second_is_noop(allow_cmake: Guard, fake_world: FakeWorld) -> None:
    code, out, err = build(fake_world, "--source", "sdist", "--json")
    assert code == 0, err
    doc = json.loads(out)  # stdout holds exactly one JSON document
    assert doc["schema"] == manifest.SCHEMA
    assert doc["pin"]["commit"] == fake_world.commit
    assert doc["source"]["kind"] == "sdist"
    assert doc["source"]["base_commit"] == fake_world.pin.sdist.tree_commit
    assert [p["name"] for p in doc["patches"]["series"]] == [
        p.name for p in patches.load_series(DATA / "patches").patches]
    # the patched header reached the binary: the fake server now lists the turbo types
    assert doc["cache_types"][-3:] == ["turbo2", "turbo3", "turbo4"]
    assert doc["version"] == ["version: 1 (fake000)", "built with a C compiler for tests"]
    assert set(doc["binaries"]) == {"llama-server", "llama-cli", "llama-bench",
                                    "llama-perplexity", "llama-fit-params", "ggml-rpc-server", "test-backend-ops"}
    # the RPC build identity: the pin, the series checksum (also in the configure flags), the
    # turbo type ids of the patched ggml.h (this fake tree has none)
    series = patches.load_series(DATA / "patches")
    assert doc["rpc"] == {"base": doc["pin"]["commit"], "series": series.sha256(), "types": {},
                          "worker": "ggml-rpc-server"}
    assert f"-DGGML_RPC_BUILD_SERIES={series.sha256()}" in doc["cmake"]["flags"]
    assert all(len(b["sha256"]) == 64 for b in doc["binaries"].values())
    assert doc["cmake"]["configured"] is True and doc["cmake"]["build_steps"] > 0
    assert "-DLLAMA_BUILD_TESTS=ON" in doc["cmake"]["flags"]  # the self-test is on by default
    assert doc["compiler"]["version"]
    assert set(doc["timings_s"]) >= {"source", "patches", "configure", "build", "verify", "selftest",
                                     "total"}
    st = doc["selftest"]
    assert st["status"] == "pass" and st["reason"] == ""
    assert st["command"][1:] == ["-b", "CPU", "-p", "turbo", "--output", "sql"]
    assert st["binary_sha256"] == doc["binaries"]["test-backend-ops"]["sha256"]
    assert st["counts"] == {"passed": 4, "failed": 0, "unsupported": 0}
    assert st["per_pair"] == {"turbo4/turbo4": {"passed": 1, "failed": 0, "unsupported": 0},
                              "q8_0/turbo3": {"passed": 1, "failed": 0, "unsupported": 0}}
    assert Path(st["log"]).is_file() and Path(st["output"]).read_text().startswith("CREATE TABLE")
    # the plan was printed (on stderr in JSON mode) before the work
    assert "==> plan" in err and "-DLLAMA_CURL=OFF" in err
    paths = Paths(fake_world.home)
    current = manifest.load_current(paths)
    assert current is not None and current.patches.head == doc["patches"]["head"]
    assert manifest.compare(current, load_pin(fake_world.pins),
                            patches.load_series(DATA / "patches")) == []

    code, out2, err2 = build(fake_world, "--source", "sdist")
    assert code == 0, err2
    assert "(reused)" in out2
    assert "patch series already applied" in out2
    assert "configure: flags unchanged, skipped" in out2
    assert "nothing to rebuild" in out2
    again = manifest.load_current(paths)
    assert again is not None
    assert again.cmake.configured is False and again.cmake.build_steps == 0
    assert again.binaries == current.binaries
    # the binaries are the ones the self-test passed on: its result is kept, not run again
    assert "self-test: the binaries are the ones it tested, result kept: pass: 4/4" in out2
    assert again.selftest == current.selftest

    # another test-backend-ops (e.g. rebuilt from other sources): the self-test runs again
    tbo = Path(again.binaries["test-backend-ops"].path)
    tbo.write_bytes(tbo.read_bytes() + b"\0")
    code, out3, err3 = build(fake_world, "--source", "sdist")
    assert code == 0, err3
    assert "result kept" not in out3 and "self-test pass: 4/4" in out3
    third = manifest.load_current(paths)
    assert third is not None and third.selftest is not None and current.selftest is not None
    assert third.selftest.binary_sha256 != current.selftest.binary_sha256


def test_default_git_source_without_selftest(allow_cmake: Guard, fake_world: FakeWorld) -> None:
    code, out, err = build(fake_world, "--no-selftest")
    assert code == 0, err
    assert "git " + fake_world.upstream.as_uri() + " (default)" in out
    assert "off (--no-selftest): turbo KV cache types will be refused" in out
    m = manifest.load_current(Paths(fake_world.home))
    assert m is not None
    assert m.source.kind == "git" and m.source.base_commit == fake_world.commit
    assert "test-backend-ops" not in m.binaries
    assert "-DLLAMA_BUILD_TESTS=OFF" in m.cmake.flags
    assert m.selftest is None


def test_failing_selftest_is_recorded_and_exits_16(allow_cmake: Guard, fake_world: FakeWorld,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SELFTEST", "fail")
    code, out, err = build(fake_world, "--source", "sdist", "--json")
    assert code == SelftestFailed.exit_code == 16
    doc = json.loads(out)  # the manifest is still THE document on stdout
    assert doc["selftest"]["status"] == "fail"
    assert doc["selftest"]["reason"] == "1 failed of 4 turbo cases"
    assert doc["selftest"]["failing"][0]["params"] == "hsk=128,hsv=128,nh=2,type_K=turbo4,type_V=turbo4"
    assert ("error: the build finished and its manifest is written, but the backend self-test failed on "
            "CPU: 1 failed of 4 turbo cases (FLASH_ATTN_EXT(hsk=128,hsv=128,nh=2,type_K=turbo4,"
            "type_V=turbo4))") in err
    assert "hint: the turbo KV cache types are refused on this build until it passes" in err
    assert "log: " in err
    m = manifest.load_current(Paths(fake_world.home))
    assert m is not None and m.selftest is not None and m.selftest.status == "fail"


def test_crashing_selftest_is_an_error(allow_cmake: Guard, fake_world: FakeWorld,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SELFTEST", "crash")
    code, _, err = build(fake_world, "--source", "sdist")
    assert code == 16
    assert "the backend self-test could not run to the end on CPU: test-backend-ops was killed by signal 6" in err
    m = manifest.load_current(Paths(fake_world.home))
    assert m is not None and m.selftest is not None
    assert m.selftest.status == "error" and m.selftest.counts.passed == 2  # rows before the crash kept
    monkeypatch.setenv("FAKE_SELFTEST", "empty")
    code, _, err = build(fake_world, "--source", "sdist")
    assert code == 16
    assert "found no TurboQuant case for device CPU" in err


def test_selftest_command(allow_cmake: Guard, fake_world: FakeWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    # nothing built yet
    r = runner.invoke(app, ["selftest"])
    assert r.exit_code == 3 and "error: nothing built yet in" in r.stderr
    # a --no-selftest build: `turboctl selftest` builds test-backend-ops through the build path
    code, _, err = build(fake_world, "--source", "sdist", "--no-selftest")
    assert code == 0, err
    r = runner.invoke(app, ["selftest", "--pins", str(fake_world.pins)])
    assert r.exit_code == 0, r.output
    assert "test-backend-ops is not built or changed: building it" in r.stdout
    assert "-DLLAMA_BUILD_TESTS=ON" in r.stdout
    assert "ok self-test pass: 4/4 turbo cases passed on CPU" in r.stdout
    m = manifest.load_current(Paths(fake_world.home))
    assert m is not None and m.selftest is not None and m.selftest.status == "pass"
    assert m.patches.directory == str(DATA / "patches")  # the build's own series was kept
    # again: test-backend-ops exists now, so only the self-test runs; a failure is recorded
    monkeypatch.setenv("FAKE_SELFTEST", "unsupported")
    r = runner.invoke(app, ["selftest", "--json"])
    assert r.exit_code == 16
    doc = json.loads(r.stdout)
    assert doc["schema"] == "turboctl.selftest/1"
    assert doc["selftest"]["status"] == "fail"
    assert doc["selftest"]["unsupported"][0]["params"].endswith("type_K=q8_0,type_V=turbo3")
    assert "==> plan" not in r.stderr  # no build this time
    assert "1 not supported on CPU of 4 turbo cases" in r.stderr
    again = manifest.load_current(Paths(fake_world.home))
    assert again is not None and again.selftest is not None and again.selftest.status == "fail"
    assert again.binaries == m.binaries


def test_build_human_output_is_plain_without_terminal(allow_cmake: Guard,
                                                       fake_world: FakeWorld) -> None:
    code, out, _ = build(fake_world, "--source", str(fake_world.tree))
    assert code == 0
    assert "\x1b[" not in out  # no colour codes when not on a terminal
    assert "build: " in out  # plain progress lines instead of a bar
    assert "ok manifest:" in out


def test_build_failure_exit_code_and_log(allow_cmake: Guard, fake_world: FakeWorld,
                                         tmp_path: Path) -> None:
    bad = tmp_path / "bad-series"
    bad.mkdir()
    # a patch that breaks compilation
    (bad / "0001-break.patch").write_text(
        (DATA / "patches" / "0002-kv-cache-add-the-turbo-codec.patch").read_text())
    (bad / "series").write_text("0001-break.patch\n")
    tool = fake_world.tree / "src" / "tool.c"
    tool.write_text(tool.read_text().replace("return 0;\n}", "return oops;\n}"))
    files = dict(fake_world.pin.files)
    from turboctl.build.gitrepo import file_sha256

    files["src/tool.c"] = file_sha256(tool)
    pins = fake_world.write_pin(files=files)
    r = runner.invoke(app, ["build", "--backend", "cpu", "--pins", str(pins), "--patches", str(bad),
                            "--source", str(fake_world.tree)])
    assert r.exit_code == 8, r.output
    assert "error: cmake build failed (exit code" in r.stderr
    assert "log: " in r.stderr and "oops" in r.stderr


def test_binary_without_the_series_cache_types_is_refused(allow_cmake: Guard, fake_world: FakeWorld,
                                                          tmp_path: Path) -> None:
    """The series declares the cache types it adds; a binary that does not accept them (built
    from an unpatched tree: "Unsupported cache type: turbo4") fails the build's verification."""
    import shutil

    series_dir = tmp_path / "series-dir"
    shutil.copytree(DATA / "patches", series_dir)
    text = (series_dir / "series").read_text()
    (series_dir / "series").write_text("#! cache-types: turbo2 turbo4 turbo9\n" + text)
    r = runner.invoke(app, ["build", "--backend", "cpu", "--pins", str(fake_world.pins), "--patches",
                            str(series_dir), "--source", str(fake_world.tree), "--no-selftest"])
    assert r.exit_code == 6, r.output
    assert "does not accept the KV cache types turbo9 that the patch series" in r.stderr
    assert "it was not built from the patched tree" in r.stderr
    assert "hint: run turboctl build --force (resets and re-patches the tree)" in r.stderr
