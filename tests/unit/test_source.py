"""Source providers: git (local clone), sdist (cached, resumable download), directory."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import FakeWorld
from turboctl.build import gitrepo, source
from turboctl.build.pins import Pin, load_pin
from turboctl.errors import NetworkError, SourceError, UsageError, VerificationError
from turboctl.paths import Paths
from turboctl.ui import UI


def ctx(world: FakeWorld, pin: Pin | None = None) -> source.Context:
    paths = Paths(world.home)
    paths.ensure()
    pin = pin or world.pin
    return source.Context(pin=pin, paths=paths, dest=paths.source_dir(pin.llama_cpp.tag, pin.commit),
                          log=paths.logs / "test.log", ui=UI(quiet=True))


def test_git_source_from_local_clone(fake_world: FakeWorld) -> None:
    c = ctx(fake_world)
    tree = source.obtain(source.GitSource(str(fake_world.upstream)), c)
    assert tree.kind == "git" and not tree.reused
    assert gitrepo.head(tree.path) == fake_world.commit == tree.base_commit
    assert (tree.path / "src/tool.c").is_file()
    again = source.obtain(source.GitSource(str(fake_world.upstream)), c)
    assert again.reused and again.base_commit == fake_world.commit


def test_git_source_wrong_tag_target_is_refused(fake_world: FakeWorld) -> None:
    # the pin names a commit that the remote's tag does not point to
    (fake_world.upstream / "src/tool.c").write_text("/* newer */\n")
    gitrepo.run_git(["commit", "-qam", "newer"], fake_world.upstream, fixed_dates=True, echo=False)
    newer = gitrepo.head(fake_world.upstream)
    assert newer
    pin = fake_world.pin.model_copy(update={"llama_cpp": fake_world.pin.llama_cpp.model_copy(
        update={"commit": "1" * 40})})
    with pytest.raises(VerificationError) as err:
        source.obtain(source.GitSource(str(fake_world.upstream)), ctx(fake_world, pin))
    assert f"tag b-test at {fake_world.upstream} points to {fake_world.commit}" in err.value.message
    assert not ctx(fake_world, pin).dest.exists()  # nothing half-written


def test_git_source_checksum_mismatch(fake_world: FakeWorld) -> None:
    (fake_world.upstream / "CMakeLists.txt").write_text("# changed\n")
    gitrepo.run_git(["commit", "-qam", "change"], fake_world.upstream, fixed_dates=True, echo=False)
    changed = gitrepo.head(fake_world.upstream)
    assert changed
    pin = fake_world.pin.model_copy(update={"llama_cpp": fake_world.pin.llama_cpp.model_copy(
        update={"commit": changed})})
    with pytest.raises(VerificationError) as err:
        source.obtain(source.GitSource(str(fake_world.upstream)), ctx(fake_world, pin))
    assert "do not match the pinned checksums" in err.value.message
    assert any(d.startswith("CMakeLists.txt: sha256") for d in err.value.details)


def test_explicit_unreachable_git_url_fails(fake_world: FakeWorld, tmp_path: Path) -> None:
    missing = (tmp_path / "no-such-repo").as_uri()
    with pytest.raises(NetworkError) as err:
        source.obtain(source.GitSource(missing), ctx(fake_world))
    assert f"cannot reach {missing}" in err.value.message
    assert "--source sdist" in (err.value.hint or "")


def test_default_source_falls_back_to_sdist(fake_world: FakeWorld, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    pin = fake_world.pin.model_copy(update={"llama_cpp": fake_world.pin.llama_cpp.model_copy(
        update={"url": (tmp_path / "unreachable").as_uri()})})
    c = source.Context(pin=pin, paths=Paths(fake_world.home), dest=ctx(fake_world).dest,
                       log=fake_world.home / "logs" / "t.log", ui=UI())
    tree = source.obtain(source.parse_source(None, pin), c)
    assert tree.kind == "sdist"
    assert tree.base_commit == pin.sdist.tree_commit
    err = capsys.readouterr().err
    assert "cannot reach" in err and "falling back to the PyPI sdist" in err


def test_sdist_import_is_verified_and_complete(fake_world: FakeWorld) -> None:
    c = ctx(fake_world)
    tree = source.obtain(source.SdistSource(), c)
    assert tree.kind == "sdist"
    assert tree.base_commit == fake_world.pin.sdist.tree_commit
    assert (tree.path / ".git").is_dir()  # the submodule gitlink file was replaced
    # a file the tree's own .gitignore ignores is still imported and tracked
    assert (tree.path / "src/prebuilt.o").is_file()
    assert gitrepo.blob_sha256(tree.path, tree.base_commit, ["src/prebuilt.o"])["src/prebuilt.o"]
    assert gitrepo.dirty_paths(tree.path) == []
    # no temporary directories left next to it
    assert [p.name for p in tree.path.parent.iterdir()] == [tree.path.name]
    assert source.obtain(source.SdistSource(), c).reused


def test_sdist_tree_commit_mismatch(fake_world: FakeWorld) -> None:
    pin = load_pin(fake_world.write_pin(sdist={"tree_commit": "2" * 40}))
    with pytest.raises(VerificationError, match="the pin says 2222"):
        source.obtain(source.SdistSource(), ctx(fake_world, pin))
    assert not ctx(fake_world, pin).dest.exists()


def test_sdist_file_checksum_mismatch(fake_world: FakeWorld) -> None:
    files = dict(fake_world.pin.files)
    files["src/tool.c"] = "3" * 64
    pin = load_pin(fake_world.write_pin(files=files))
    with pytest.raises(VerificationError) as err:
        source.obtain(source.SdistSource(), ctx(fake_world, pin))
    assert err.value.details[0].startswith("src/tool.c: sha256")


class FakeResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self._body = body

    def iter_content(self, n: int) -> Any:
        for i in range(0, len(self._body), 7):
            yield self._body[i:i + 7]

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *a: object) -> None:
        return None


def test_sdist_download_resumes_and_verifies(fake_world: FakeWorld,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fake_world.home / "cache" / fake_world.sdist.name
    cached.unlink()
    body = fake_world.sdist.read_bytes()
    part = cached.with_name(cached.name + ".part")
    part.write_bytes(body[:100])
    seen: list[dict[str, str]] = []

    def fake_get(url: str, headers: dict[str, str], **kw: Any) -> FakeResponse:
        seen.append(headers)
        start = int(headers["Range"].split("=")[1].rstrip("-")) if "Range" in headers else 0
        return FakeResponse(206 if start else 200, body[start:])

    monkeypatch.setattr(requests, "get", fake_get)
    path = source.SdistSource().download(ctx(fake_world))
    assert seen == [{"Range": "bytes=100-"}]
    assert path.read_bytes() == body and not part.exists()
    # second call: cached, no request
    source.SdistSource().download(ctx(fake_world))
    assert len(seen) == 1


def test_sdist_download_server_ignores_range(fake_world: FakeWorld,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fake_world.home / "cache" / fake_world.sdist.name
    cached.unlink()
    body = fake_world.sdist.read_bytes()
    cached.with_name(cached.name + ".part").write_bytes(b"garbage!")
    monkeypatch.setattr(requests, "get", lambda url, headers, **kw: FakeResponse(200, body))
    assert source.SdistSource().download(ctx(fake_world)).read_bytes() == body


def test_sdist_download_corrupt_is_rejected(fake_world: FakeWorld,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fake_world.home / "cache" / fake_world.sdist.name
    cached.unlink()
    size = fake_world.pin.sdist.size
    monkeypatch.setattr(requests, "get", lambda url, headers, **kw: FakeResponse(200, b"x" * size))
    with pytest.raises(VerificationError, match="does not match the pin"):
        source.SdistSource().download(ctx(fake_world))
    assert not cached.exists()
    assert not cached.with_name(cached.name + ".part").exists()


def test_sdist_download_network_error(fake_world: FakeWorld) -> None:
    (fake_world.home / "cache" / fake_world.sdist.name).unlink()
    # the fast-suite guard refuses every connection, as an offline machine would
    with pytest.raises(NetworkError) as err:
        source.SdistSource().download(ctx(fake_world))
    assert "cannot download https://files.example.invalid/" in err.value.message
    assert "pip download --no-deps --no-binary :all: fake-llama==1.0" in (err.value.hint or "")


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    out = tmp_path / "evil.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return out


@pytest.mark.parametrize(
    ("name", "kind", "linkname", "message"),
    [
        ("pkg/sub/../../etc/passwd", tarfile.REGTYPE, "", "unsafe member name"),
        ("/abs/pkg/sub/x", tarfile.REGTYPE, "", "unsafe member name"),
        ("pkg/sub/link", tarfile.SYMTYPE, "../../../outside", "refusing symlink"),
        ("pkg/sub/abs", tarfile.SYMTYPE, "/etc/passwd", "refusing symlink"),
        ("pkg/sub/hard", tarfile.LNKTYPE, "other/file", "refusing hard link"),
        ("pkg/sub/dev", tarfile.CHRTYPE, "", "refusing special file"),
    ],
)
def test_extract_refuses_unsafe_members(tmp_path: Path, name: str, kind: bytes, linkname: str,
                                        message: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    data = b"x" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    with pytest.raises(SourceError, match=message):
        source.extract_subdir(_tar_with(tmp_path, info, data), "pkg/sub", tmp_path / "out")


def test_extract_missing_subdir(tmp_path: Path, fake_world: FakeWorld) -> None:
    with pytest.raises(SourceError, match="has no directory 'nope'"):
        source.extract_subdir(fake_world.sdist, "nope", tmp_path / "out")


def test_dir_source(fake_world: FakeWorld) -> None:
    c = ctx(fake_world)
    (fake_world.tree / "build-old").mkdir()
    (fake_world.tree / "build-old" / "junk.o").write_text("x")
    tree = source.obtain(source.DirSource(fake_world.tree), c)
    assert tree.kind == "dir"
    assert not (tree.path / "build-old").exists()
    assert (tree.path / "src/tool.c").is_file()
    assert source.obtain(source.DirSource(fake_world.tree), c).reused
    # changing a pinned file in the source directory is noticed on the next run
    (fake_world.tree / "src/tool.c").write_text("/* changed */\n")
    with pytest.raises(VerificationError):
        source.obtain(source.DirSource(fake_world.tree), c)


def test_kind_change_replaces_tree(fake_world: FakeWorld) -> None:
    c = ctx(fake_world)
    source.obtain(source.SdistSource(), c)
    tree = source.obtain(source.GitSource(str(fake_world.upstream)), c)
    assert tree.kind == "git" and not tree.reused
    assert gitrepo.head(tree.path) == fake_world.commit


def test_foreign_destination_is_refused(fake_world: FakeWorld) -> None:
    c = ctx(fake_world)
    c.dest.mkdir(parents=True)
    (c.dest / "mine.txt").write_text("x")
    with pytest.raises(SourceError, match="was not created by turboctl"):
        source.obtain(source.SdistSource(), c)
    tree = source.obtain(source.SdistSource(), c, force=True)
    assert not (tree.path / "mine.txt").exists()


def test_parse_source(fake_world: FakeWorld, tmp_path: Path) -> None:
    pin = fake_world.pin
    default = source.parse_source(None, pin)
    assert isinstance(default, source.GitSource) and default.implicit
    explicit = source.parse_source("git", pin)
    assert isinstance(explicit, source.GitSource) and not explicit.implicit
    assert isinstance(source.parse_source("sdist", pin), source.SdistSource)
    assert isinstance(source.parse_source("https://mirror.example/llama.cpp.git", pin), source.GitSource)
    assert isinstance(source.parse_source(str(fake_world.upstream), pin), source.GitSource)
    assert isinstance(source.parse_source(str(fake_world.tree), pin), source.DirSource)
    with pytest.raises(UsageError, match="not 'git', 'sdist', a URL, or an existing directory"):
        source.parse_source(str(tmp_path / "missing"), pin)


def test_shipped_pin_matches_brief() -> None:
    pin = load_pin()
    assert pin.llama_cpp.commit == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert pin.llama_cpp.tag == "b11312"
    assert pin.sdist.sha256 == "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
    assert pin.sdist.size == 76589250
    assert pin.sdist.subdir == "llama_cpp_python-0.3.36/vendor/llama.cpp"
    assert pin.sdist.url.startswith("https://files.pythonhosted.org/")
    assert set(pin.anchors) <= set(pin.files)
    assert shutil.which("git")
