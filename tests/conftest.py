"""Shared fixtures.

The autouse guard makes the fast suite safe: TURBOCTL_HOME and HOME point into tmp_path, no
socket can connect anywhere, no command may name a network URL, and cmake/ninja/make are
refused unless a test asks for the tiny fake CMake project through ``allow_cmake`` (and even
then only for directories inside its tmp_path).  Tests marked ``slow`` are not guarded.
"""

from __future__ import annotations

import os
import shutil
import socket
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from turboctl import proc
from turboctl.build import gitrepo, patches, source
from turboctl.build.pins import Pin
from turboctl.devtools import render_pins

DATA = Path(__file__).parent / "data"
FAKE_TAG = "b-test"
FAKE_ANCHORS = ("CMakeLists.txt", "src/tool.c")
FAKE_SDIST_PREFIX = "fake_llama-1.0/vendor/llama.cpp"


class Guard:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.allow_cmake = False

    def check(self, args: Sequence[str], cwd: Path | None) -> None:
        name = os.path.basename(args[0])
        for arg in args[1:]:
            if arg.startswith(("http://", "https://", "git@", "ssh://", "git://")):
                raise AssertionError(f"fast suite: network command refused: {list(args)}")
        if name in ("cmake", "ninja", "make", "gmake") and list(args[1:]) != ["--version"]:
            if not self.allow_cmake:
                raise AssertionError(f"fast suite: {name} refused (use the allow_cmake fixture)")
            for flag in ("-S", "-B", "--build"):
                if flag in args:
                    target = Path(args[list(args).index(flag) + 1]).resolve()
                    if not target.is_relative_to(self.root):
                        raise AssertionError(f"fast suite: cmake outside the test dir: {target}")


@pytest.fixture(autouse=True)
def _fast_suite_guard(request: pytest.FixtureRequest, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard | None]:
    if request.node.get_closest_marker("slow"):
        yield None
        return
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    monkeypatch.setenv("TURBOCTL_HOME", str(tmp_path / "turboctl-home"))
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("CCACHE_DISABLE", "1")
    monkeypatch.delenv("TURBOCTL_DEBUG", raising=False)
    monkeypatch.delenv("CCACHE_BASEDIR", raising=False)
    guard = Guard(tmp_path)
    real_spawn = proc._spawn

    def guarded_spawn(args: list[str], cwd: Path | None, env: Any, *rest: Any) -> Any:
        guard.check(args, cwd)
        return real_spawn(args, cwd, env, *rest)

    monkeypatch.setattr(proc, "_spawn", guarded_spawn)
    real_connect = socket.socket.connect

    def no_connect(self: socket.socket, address: Any) -> None:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise ConnectionRefusedError(f"fast suite: network refused ({address!r})")

    def no_connect_ex(self: socket.socket, address: Any) -> int:
        no_connect(self, address)
        return 0

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect_ex)
    yield guard


@pytest.fixture
def allow_cmake(_fast_suite_guard: Guard) -> Guard:
    """Let this test run cmake on the fake project in its tmp_path."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    _fast_suite_guard.allow_cmake = True
    return _fast_suite_guard


# --------------------------------------------------------------------------- the fake world
@dataclass
class FakeWorld:
    """A fake upstream for the fast tests: a tree, a git repo with a tag, an sdist, a pin."""

    tree: Path
    upstream: Path
    commit: str
    sdist: Path
    pins: Path
    pin: Pin
    patches: Path
    home: Path

    def write_pin(self, **changes: Any) -> Path:
        """Write a modified copy of the pin ([llama_cpp] and [sdist] changes are merged)."""
        doc = self.pin.model_dump(by_alias=True)
        for key, value in changes.items():
            if key in ("llama_cpp", "sdist"):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        new = Pin.model_validate(doc)
        path = self.pins.with_name(f"pins-{len(list(self.pins.parent.glob('pins-*')))}.toml")
        path.write_text(render_pins(new), encoding="utf-8")
        return path


def git_commit_all(repo: Path, message: str) -> str:
    env = gitrepo.git_env(fixed_dates=True)
    for args in (["init", "-q", "--template="], ["add", "-A", "-f", "."],
                 ["commit", "-q", "-m", message]):
        proc.run(["git", "-c", "init.defaultBranch=main", *args], cwd=repo, env=env, echo=False)
    head = gitrepo.head(repo)
    assert head
    return head


def make_sdist(tree: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree, arcname=FAKE_SDIST_PREFIX)
        gitlink = tarfile.TarInfo(f"{FAKE_SDIST_PREFIX}/.git")
        payload = b"gitdir: ../../.git/modules/vendor/llama.cpp\n"
        gitlink.size = len(payload)
        import io

        tar.addfile(gitlink, io.BytesIO(payload))
    return out


@dataclass(frozen=True)
class _Template:
    root: Path
    commit: str
    tree_commit: str


@pytest.fixture(scope="session")
def _fake_template(tmp_path_factory: pytest.TempPathFactory) -> _Template:
    """The expensive parts of the fake world, made once per session and copied per test."""
    root = tmp_path_factory.mktemp("fake-template")
    with pytest.MonkeyPatch.context() as mp:
        home = root / "user-home"
        home.mkdir()
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        tree = root / "fake-llama"
        shutil.copytree(DATA / "fake-llama", tree)
        upstream = root / "upstream"
        shutil.copytree(tree, upstream)
        commit = git_commit_all(upstream, "fake upstream")
        proc.run(["git", "tag", FAKE_TAG], cwd=upstream, echo=False)
        make_sdist(tree, root / "fake_llama-1.0.tar.gz")
        probe = root / "probe-import"
        shutil.copytree(tree, probe)
        pin = _fake_pin(upstream, commit, root / "fake_llama-1.0.tar.gz", tree, None)
        tree_commit = source.import_tree(probe, pin, root / "probe.log")
    return _Template(root, commit, tree_commit)


def _fake_pin(upstream: Path, commit: str, sdist: Path, tree: Path, tree_commit: str | None) -> Pin:
    series = patches.load_series(DATA / "patches")
    names = sorted(set(FAKE_ANCHORS) | set(series.upstream_files()))
    return Pin.model_validate({
        "schema": 1,
        "llama_cpp": {"url": upstream.as_uri(), "tag": FAKE_TAG, "commit": commit,
                      "cache_types": ["f32", "f16", "q8_0", "q4_0"]},
        "sdist": {"package": "fake-llama", "version": "1.0", "filename": sdist.name,
                  "url": "https://files.example.invalid/fake_llama-1.0.tar.gz",
                  "size": sdist.stat().st_size, "sha256": gitrepo.file_sha256(sdist),
                  "subdir": FAKE_SDIST_PREFIX, "tree_commit": tree_commit},
        "anchors": list(FAKE_ANCHORS),
        "files": {n: gitrepo.file_sha256(tree / n) for n in names},
    })


@pytest.fixture
def fake_world(tmp_path: Path, _fake_template: _Template) -> FakeWorld:
    t = _fake_template
    tree = tmp_path / "fake-llama"
    shutil.copytree(t.root / "fake-llama", tree, symlinks=True)
    upstream = tmp_path / "upstream"
    shutil.copytree(t.root / "upstream", upstream, symlinks=True)
    sdist = tmp_path / "fake_llama-1.0.tar.gz"
    shutil.copy(t.root / sdist.name, sdist)
    pin = _fake_pin(upstream, t.commit, sdist, tree, t.tree_commit)
    pins = tmp_path / "pins.toml"
    pins.write_text(render_pins(pin), encoding="utf-8")
    home = Path(os.environ["TURBOCTL_HOME"])
    (home / "cache").mkdir(parents=True)
    shutil.copy(sdist, home / "cache" / sdist.name)
    return FakeWorld(tree, upstream, t.commit, sdist, pins, pin, DATA / "patches", home)
