"""`turboctl build` end to end on the fake project: real git, real patches, real cmake."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import DATA, FakeWorld, Guard
from turboctl import manifest, patches
from turboctl.cli.main import app
from turboctl.paths import Paths
from turboctl.pins import load_pin

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
                                    "llama-perplexity", "llama-fit-params"}
    assert all(len(b["sha256"]) == 64 for b in doc["binaries"].values())
    assert doc["cmake"]["configured"] is True and doc["cmake"]["build_steps"] > 0
    assert doc["compiler"]["version"]
    assert set(doc["timings_s"]) >= {"source", "patches", "configure", "build", "verify", "total"}
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


def test_default_git_source_and_selftest(allow_cmake: Guard, fake_world: FakeWorld) -> None:
    code, out, err = build(fake_world, "--selftest")
    assert code == 0, err
    assert "git " + fake_world.upstream.as_uri() + " (default)" in out
    m = manifest.load_current(Paths(fake_world.home))
    assert m is not None
    assert m.source.kind == "git" and m.source.base_commit == fake_world.commit
    assert "test-backend-ops" in m.binaries
    assert "-DLLAMA_BUILD_TESTS=ON" in m.cmake.flags


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
    from turboctl.gitrepo import file_sha256

    files["src/tool.c"] = file_sha256(tool)
    pins = fake_world.write_pin(files=files)
    r = runner.invoke(app, ["build", "--backend", "cpu", "--pins", str(pins), "--patches", str(bad),
                            "--source", str(fake_world.tree)])
    assert r.exit_code == 8, r.output
    assert "error: cmake build failed (exit code" in r.stderr
    assert "log: " in r.stderr and "oops" in r.stderr
