"""Source providers: each one yields the pinned llama.cpp tree, verified, as a git repository.

* :class:`GitSource` – fetch the pinned commit from the upstream URL, a mirror URL or a local
  clone; HEAD must equal the pinned commit.
* :class:`SdistSource` – the llama-cpp-python source distribution from PyPI (sha256 and size
  checked), its ``vendor/llama.cpp`` imported as a deterministic commit whose id is pinned.
* :class:`DirSource` – an existing directory, imported the same way.

All of them check the sha256 of every file listed in the pin (the anchors and every upstream
file the patch series touches) before the series is applied.  Trees are created in a
temporary directory next to the destination and renamed into place: nothing half-written is
ever left where turboctl looks.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests

from ..errors import NetworkError, SourceError, UsageError, VerificationError
from ..paths import Paths
from ..ui import UI
from . import gitrepo
from .pins import Pin

MARKER = "turboctl-source.json"
DOWNLOAD_CHUNK = 1 << 20
LS_REMOTE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class SourceTree:
    path: Path
    kind: str
    detail: str
    base_commit: str
    reused: bool

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "detail": self.detail, "path": str(self.path),
                "base_commit": self.base_commit}


@dataclass(frozen=True)
class Context:
    pin: Pin
    paths: Paths
    dest: Path
    log: Path
    ui: UI


# --------------------------------------------------------------------------- verification
def verify_files_on_disk(root: Path, expected: Mapping[str, str]) -> None:
    problems: list[str] = []
    for rel, sha in sorted(expected.items()):
        f = root / rel
        if not f.is_file():
            problems.append(f"{rel}: missing")
        elif (got := gitrepo.file_sha256(f)) != sha:
            problems.append(f"{rel}: sha256 {got[:16]}…, pin says {sha[:16]}…")
    _raise_if(problems, root)


def verify_files_in_commit(repo: Path, commit: str, expected: Mapping[str, str]) -> None:
    got = gitrepo.blob_sha256(repo, commit, expected)
    problems = []
    for rel, sha in sorted(expected.items()):
        if got[rel] is None:
            problems.append(f"{rel}: missing")
        elif got[rel] != sha:
            problems.append(f"{rel}: sha256 {str(got[rel])[:16]}…, pin says {sha[:16]}…")
    _raise_if(problems, repo)


def _raise_if(problems: list[str], root: Path) -> None:
    if problems:
        raise VerificationError(
            f"{len(problems)} file(s) in {root} do not match the pinned checksums",
            hint="this is not the pinned llama.cpp tree; use --source sdist, or bump the pin "
                 "(python -m turboctl.devtools bump-pin) if the pin itself is out of date",
            details=problems[:20],
        )


# --------------------------------------------------------------------------- marker
def read_marker(tree: Path) -> dict[str, str] | None:
    try:
        data = json.loads((tree / ".git" / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(tree: Path, *, kind: str, detail: str, base: str, pin: Pin) -> None:
    doc = {"schema": 1, "kind": kind, "detail": detail, "base_commit": base,
           "pin_commit": pin.commit}
    (tree / ".git" / MARKER).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- tree import
def import_commit_message(pin: Pin) -> str:
    return f"llama.cpp {pin.llama_cpp.tag} ({pin.commit[:12]}), imported by turboctl"


def import_tree(tree: Path, pin: Pin, log: Path) -> str:
    """Make ``tree`` a git repository with one deterministic commit; return its id.

    Everything is added, including files the tree's own .gitignore would drop (``-f``), and
    identity, dates and git settings are fixed, so the same files give the same commit id.
    """
    gitlink = tree / ".git"
    if gitlink.is_file() or gitlink.is_symlink():  # a submodule's "gitdir: ..." file
        gitlink.unlink()
    elif gitlink.is_dir():
        shutil.rmtree(gitlink)
    gitrepo.run_git(["init", "-q", "--template="], tree, log=log, error=SourceError)
    gitrepo.run_git(["add", "-A", "-f", "."], tree, log=log, error=SourceError)
    gitrepo.run_git(["commit", "-q", "--no-verify", "-m", import_commit_message(pin)], tree,
                    log=log, error=SourceError, fixed_dates=True)
    commit = gitrepo.head(tree)
    if commit is None:
        raise SourceError(f"git commit produced no HEAD in {tree}", log_path=log)
    return commit


def _temp_sibling(dest: Path, label: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{label}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def _install(tmp: Path, dest: Path) -> None:
    """Atomically put ``tmp`` at ``dest`` (replacing an old tree)."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- providers
class GitSource:
    kind = "git"

    def __init__(self, url: str, *, implicit: bool = False) -> None:
        self.url = url
        self.implicit = implicit  # the default source: may fall back to the sdist

    def describe(self) -> str:
        return f"git {self.url}" + (" (default)" if self.implicit else "")

    def _fetch_url(self) -> str:
        p = Path(self.url).expanduser()
        if "://" not in self.url and p.exists():
            return p.resolve().as_uri()  # file:// so that --depth works for local clones
        return self.url

    def reachable(self, ctx: Context) -> str | None:
        """None when the remote answers, else the reason."""
        res = gitrepo.run_git(
            ["ls-remote", "--exit-code", self._fetch_url(), f"refs/tags/{ctx.pin.llama_cpp.tag}"],
            ctx.paths.home, log=ctx.log, check=False, timeout=LS_REMOTE_TIMEOUT_S)
        if res.returncode == 0:
            return None
        lines = [ln for ln in res.lines if ln.strip()]
        if res.returncode == 2:
            return f"tag {ctx.pin.llama_cpp.tag} not found"
        return lines[-1] if lines else f"git ls-remote exit code {res.returncode}"

    def fetch(self, ctx: Context) -> SourceTree:
        pin = ctx.pin
        tmp = _temp_sibling(ctx.dest, "fetch")
        url = self._fetch_url()
        try:
            tmp.mkdir(parents=True)
            gitrepo.run_git(["init", "-q", "--template="], tmp, log=ctx.log, error=SourceError)
            by_commit = gitrepo.run_git(
                ["fetch", "--depth", "1", "--no-tags", url, pin.commit], tmp, log=ctx.log,
                check=False)
            if by_commit.returncode != 0:
                # Not every server lets clients fetch a commit by id; the tag always works.
                tag = pin.llama_cpp.tag
                gitrepo.run_git(
                    ["fetch", "--depth", "1", "--no-tags", url, f"+refs/tags/{tag}:refs/tags/{tag}"],
                    tmp, log=ctx.log, error=NetworkError, what=f"git fetch {url}",
                    hint="check the URL and your network, or use --source sdist")
                tagged = gitrepo.run_git(["rev-parse", f"refs/tags/{tag}^{{commit}}"], tmp,
                                         log=ctx.log, error=SourceError).output.strip()
                if tagged != pin.commit:
                    raise VerificationError(
                        f"tag {tag} at {self.url} points to {tagged}, the pin says {pin.commit}",
                        hint="the mirror is not the pinned upstream; use --source sdist")
            gitrepo.run_git(["checkout", "-q", "--detach", pin.commit], tmp, log=ctx.log,
                            error=SourceError)
            got = gitrepo.head(tmp)
            if got != pin.commit:
                raise VerificationError(f"HEAD of the fetched tree is {got}, the pin says {pin.commit}")
            verify_files_in_commit(tmp, pin.commit, pin.files)
            write_marker(tmp, kind=self.kind, detail=self.url, base=pin.commit, pin=pin)
            _install(tmp, ctx.dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return SourceTree(ctx.dest, self.kind, self.url, pin.commit, reused=False)


class SdistSource:
    kind = "sdist"

    def describe(self) -> str:
        return "sdist (PyPI)"

    def detail(self, pin: Pin) -> str:
        s = pin.sdist
        return f"{s.package}=={s.version} {s.filename} sha256:{s.sha256}"

    # -- download ----------------------------------------------------------------------
    def download(self, ctx: Context) -> Path:
        s = ctx.pin.sdist
        target = ctx.paths.cache / s.filename
        if target.is_file() and target.stat().st_size == s.size:
            if gitrepo.file_sha256(target) == s.sha256:
                ctx.ui.info(f"using cached {target}")
                return target
            target.unlink()
        ctx.paths.cache.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        self._download_resumable(s.url, part, s.size, ctx)
        size = part.stat().st_size
        digest = gitrepo.file_sha256(part)
        if size != s.size or digest != s.sha256:
            part.unlink()
            raise VerificationError(
                f"downloaded {s.filename} does not match the pin "
                f"(size {size}, sha256 {digest}; expected {s.size}, {s.sha256})",
                hint="try again; if it persists the file on PyPI changed and the pin must be "
                     "reviewed")
        os.replace(part, target)
        return target

    def _download_resumable(self, url: str, part: Path, size: int, ctx: Context) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        ctx.ui.info(f"downloading {url}" + (f" (resuming at {have} bytes)" if have else ""))
        manual = (f"pip download --no-deps --no-binary :all: "
                  f"{ctx.pin.sdist.package}=={ctx.pin.sdist.version} -d {ctx.paths.cache}")
        try:
            with requests.get(url, headers=headers, stream=True, timeout=(15, 60)) as resp:
                if resp.status_code == 200:
                    have = 0  # server ignored the range: start over
                elif resp.status_code != 206:
                    raise NetworkError(f"download of {url} failed: HTTP {resp.status_code}",
                                       hint=f"download it yourself: {manual}")
                mode = "ab" if have else "wb"
                with part.open(mode) as f, ctx.ui.progress("download") as bar:
                    done = have
                    for chunk in resp.iter_content(DOWNLOAD_CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        bar.update(done, size)
        except requests.RequestException as exc:
            raise NetworkError(f"cannot download {url}: {exc.__class__.__name__}: {exc}",
                               hint=f"run again to resume, or download it yourself: {manual}") from exc

    # -- import ------------------------------------------------------------------------
    def fetch(self, ctx: Context) -> SourceTree:
        pin = ctx.pin
        tarball = self.download(ctx)
        tmp = _temp_sibling(ctx.dest, "extract")
        try:
            ctx.ui.info(f"extracting {pin.sdist.subdir} from {tarball.name}")
            extract_subdir(tarball, pin.sdist.subdir, tmp)
            verify_files_on_disk(tmp, pin.files)
            commit = import_tree(tmp, pin, ctx.log)
            expected = pin.sdist.tree_commit
            if expected and commit != expected:
                raise VerificationError(
                    f"the imported sdist tree is commit {commit}, the pin says {expected}",
                    hint="the tree differs from the pinned one; report it, or re-pin with "
                         "python -m turboctl.devtools bump-pin", log_path=ctx.log)
            write_marker(tmp, kind=self.kind, detail=self.detail(pin), base=commit, pin=pin)
            _install(tmp, ctx.dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return SourceTree(ctx.dest, self.kind, self.detail(pin), commit, reused=False)


class DirSource:
    kind = "dir"

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()

    def describe(self) -> str:
        return f"directory {self.path}"

    def fetch(self, ctx: Context) -> SourceTree:
        pin = ctx.pin
        verify_files_on_disk(self.path, pin.files)
        tmp = _temp_sibling(ctx.dest, "copy")
        try:
            ctx.ui.info(f"copying {self.path}")
            shutil.copytree(self.path, tmp, symlinks=True, ignore=_ignore_build_dirs(self.path))
            verify_files_on_disk(tmp, pin.files)
            commit = import_tree(tmp, pin, ctx.log)
            if pin.sdist.tree_commit and commit == pin.sdist.tree_commit:
                ctx.ui.info("the directory is identical to the pinned sdist tree")
            write_marker(tmp, kind=self.kind, detail=str(self.path), base=commit, pin=pin)
            _install(tmp, ctx.dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return SourceTree(ctx.dest, self.kind, str(self.path), commit, reused=False)


def _ignore_build_dirs(root: Path):  # type: ignore[no-untyped-def]
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {".git"}
        if Path(directory) == root:
            skipped |= {n for n in names if n.startswith("build")}
        return skipped & set(names)
    return ignore


Source = GitSource | SdistSource | DirSource


# --------------------------------------------------------------------------- safe tar
def extract_subdir(tarball: Path, subdir: str, dest: Path) -> None:
    """Extract the members under ``subdir`` into ``dest`` (created), refusing anything
    that would land outside it: absolute names, ``..``, links pointing out, devices."""
    prefix = PurePosixPath(subdir)
    dest.mkdir(parents=True)
    root = dest.resolve()
    links: list[tuple[tarfile.TarInfo, Path]] = []
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise SourceError(f"{tarball.name}: unsafe member name {member.name!r}",
                                  hint="the archive is corrupt or malicious; delete it")
            try:
                rel = name.relative_to(prefix)
            except ValueError:
                continue
            if not rel.parts:
                continue
            target = root.joinpath(*rel.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, DOWNLOAD_CHUNK)
                target.chmod(0o755 if member.mode & stat.S_IXUSR else 0o644)
            elif member.issym() or member.islnk():
                links.append((member, target))
            else:
                raise SourceError(f"{tarball.name}: refusing special file {member.name!r}")
        for member, target in links:
            _extract_link(tar, member, target, root, prefix)
    if not any(root.iterdir()):
        raise SourceError(f"{tarball.name} has no directory {subdir!r}",
                          hint="the pin's sdist.subdir is wrong for this archive")


def _extract_link(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, root: Path,
                  prefix: PurePosixPath) -> None:
    if member.issym():
        link = PurePosixPath(member.linkname)
        resolved = Path(os.path.normpath(target.parent / link))
        if link.is_absolute() or not resolved.is_relative_to(root):
            raise SourceError(f"refusing symlink {member.name!r} -> {member.linkname!r} (outside the tree)")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(member.linkname, target)
        return
    link = PurePosixPath(member.linkname)
    try:
        rel = link.relative_to(prefix)
    except ValueError as exc:
        raise SourceError(f"refusing hard link {member.name!r} -> {member.linkname!r}") from exc
    if ".." in rel.parts:
        raise SourceError(f"refusing hard link {member.name!r} -> {member.linkname!r}")
    source = root.joinpath(*rel.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


# --------------------------------------------------------------------------- selection
def parse_source(value: str | None, pin: Pin) -> Source:
    """``--source`` → provider. None means the default (git, with sdist fallback)."""
    if value is None:
        return GitSource(pin.llama_cpp.url, implicit=True)
    if value == "git":
        return GitSource(pin.llama_cpp.url)
    if value == "sdist":
        return SdistSource()
    if "://" in value or value.startswith("git@"):
        return GitSource(value)
    path = Path(value).expanduser()
    if path.is_dir():
        return GitSource(str(path.resolve())) if (path / ".git").exists() else DirSource(path)
    raise UsageError(
        f"--source {value!r}: not 'git', 'sdist', a URL, or an existing directory",
        hint="use --source git (default), --source sdist, --source https://…/llama.cpp.git "
             "or --source /path/to/llama.cpp")


def _reusable(existing: Mapping[str, str], source: Source, pin: Pin) -> bool:
    if existing.get("pin_commit") != pin.commit:
        return False
    kind = existing.get("kind")
    if isinstance(source, GitSource):
        return source.implicit or kind == "git"
    if isinstance(source, DirSource):
        return kind == "dir" and existing.get("detail") == str(source.path)
    return kind == "sdist"


def obtain(source: Source, ctx: Context, *, force: bool = False) -> SourceTree:
    """The verified tree for the pin, reusing the one already present when it fits."""
    dest = ctx.dest
    existing = read_marker(dest) if dest.exists() else None
    if dest.exists() and existing is None and not force:
        raise SourceError(
            f"{dest} exists but was not created by turboctl (no .git/{MARKER})",
            hint="move it away, or run again with --force to replace it")
    if existing is not None and _reusable(existing, source, ctx.pin):
        base = existing.get("base_commit", "")
        if gitrepo.has_commit(dest, base):
            try:
                verify_files_in_commit(dest, base, ctx.pin.files)
            except VerificationError:
                if not force:
                    raise
            else:
                if isinstance(source, DirSource):
                    verify_files_on_disk(source.path, ctx.pin.files)
                return SourceTree(dest, existing["kind"], existing.get("detail", ""), base,
                                  reused=True)
    if isinstance(source, GitSource):
        reason = source.reachable(ctx)
        if reason is not None:
            if source.implicit:
                ctx.ui.warn(f"cannot reach {source.url} ({reason}); falling back to the PyPI "
                            "sdist, which vendors the same commit and is verified against the pin")
                return SdistSource().fetch(ctx)
            raise NetworkError(f"cannot reach {source.url}: {reason}",
                               hint="check the URL or network, or use --source sdist")
    return source.fetch(ctx)
