"""The patch series: read, check, apply idempotently, detect drift, export.

``patches/series`` names the patch files in order (one per line, ``#`` comments).  They are
applied one at a time with ``git am --3way`` on the verified base commit, with a fixed
committer and ``--committer-date-is-author-date``, so the resulting commit ids only depend on
the base and the patches.  What was applied is recorded in ``.git/turboctl-series.json``
(base, patch names and sha256, resulting HEAD); a later run compares against it:

* same base, same patches, HEAD unchanged, clean tree → nothing to do;
* a patch was added, removed or changed → reset to the base and apply the series again;
* anything else (local edits, unknown commits, an interrupted ``git am``) → refused unless
  ``--force``, which resets the tree (``git reset --hard`` + ``git clean -fdx``).

A patch that does not apply is reported with its file name and the failing hunk, and the tree
is put back to the base commit: never half-applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, PatchError, SourceError
from ..ui import UI
from ..workers.identity import series_sha256
from . import gitrepo

STATE = "turboctl-series.json"
SERIES_HEADER = """\
# The TurboQuant patch series, applied in this order with `git am --3way` on the pinned
# llama.cpp commit (see turboctl/build/pins.toml).
# Format: one patch file name per line (files made by `git format-patch`, in this
# directory); lines starting with '#' and blank lines are ignored, except the
# "#! cache-types:" line: the KV cache types the patched llama-server must accept
# (turboctl build verifies them).
"""

_DIFF_RE = re.compile(r'^diff --git (?:"a/(.+)"|a/(\S+)) (?:"b/(.+)"|b/(\S+))$')
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


@dataclass(frozen=True)
class FileChange:
    old: str
    new: str
    created: bool
    deleted: bool


@dataclass(frozen=True)
class PatchFile:
    name: str
    path: Path
    sha256: str
    changes: tuple[FileChange, ...] = field(default=())

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}


@dataclass(frozen=True)
class Series:
    directory: Path
    patches: tuple[PatchFile, ...]
    # KV cache types the patched llama-server must accept (the series file's
    # "#! cache-types:" line); the build verifies them
    cache_types: tuple[str, ...] = ()

    def to_list(self) -> list[dict[str, str]]:
        return [p.to_dict() for p in self.patches]

    def sha256(self) -> str:
        """The series checksum of the build identity (:func:`turboctl.workers.identity.series_sha256`)."""
        return series_sha256((p.name, p.sha256) for p in self.patches)

    def upstream_files(self) -> list[str]:
        """Files of the pinned tree that the series reads or changes (not those it creates)."""
        created: set[str] = set()
        upstream: set[str] = set()
        for patch in self.patches:
            for ch in patch.changes:
                if ch.created:
                    created.add(ch.new)
                    continue
                if ch.old not in created:
                    upstream.add(ch.old)
                if ch.new != ch.old:
                    created.add(ch.new)
        return sorted(upstream)


def parse_changes(text: str) -> tuple[FileChange, ...]:
    changes: list[FileChange] = []
    current: dict[str, object] | None = None
    for line in text.splitlines():
        m = _DIFF_RE.match(line)
        if m:
            if current:
                changes.append(FileChange(**current))  # type: ignore[arg-type]
            old = m.group(1) or m.group(2)
            new = m.group(3) or m.group(4)
            current = {"old": old, "new": new, "created": False, "deleted": False}
        elif current is not None:
            if line.startswith("new file mode") or line == "--- /dev/null":
                current["created"] = True
            elif line.startswith("deleted file mode") or line == "+++ /dev/null":
                current["deleted"] = True
            elif line.startswith("rename to "):
                current["new"] = line[len("rename to "):]
    if current:
        changes.append(FileChange(**current))  # type: ignore[arg-type]
    return tuple(changes)


def default_patches_dir() -> Path:
    """The series shipped in the wheel, or ``patches/`` of a source checkout."""
    here = Path(__file__).resolve().parent.parent  # the turboctl package
    packaged = here / "_patches"
    if (packaged / "series").is_file():
        return packaged
    return here.parent / "patches"


def load_series(directory: Path | None = None) -> Series:
    directory = (directory or default_patches_dir()).resolve()
    series_file = directory / "series"
    try:
        text = series_file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"patch series file not found: {series_file}",
                          hint="a patches directory needs a 'series' file "
                               "(one patch file name per line)") from exc
    patches: list[PatchFile] = []
    seen: set[str] = set()
    cache_types: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        name = raw.strip()
        where = f"{series_file}:{lineno}"
        if name.startswith(CACHE_TYPES_DIRECTIVE):
            cache_types += _parse_cache_types(name[len(CACHE_TYPES_DIRECTIVE):], where)
            continue
        if not name or name.startswith("#"):
            continue
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or len(pure.parts) != 1:
            raise ConfigError(f"{where}: {name!r} must be a plain file name in {directory}")
        if name in seen:
            raise ConfigError(f"{where}: {name!r} is listed twice")
        seen.add(name)
        path = directory / name
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: patch file {name!r} does not exist",
                              hint=f"add {path} or remove the line") from exc
        changes = parse_changes(data.decode("utf-8", errors="replace"))
        if not changes:
            raise ConfigError(f"{where}: {name!r} contains no 'diff --git' section",
                              hint="patches must be made with git format-patch")
        patches.append(PatchFile(name, path, hashlib.sha256(data).hexdigest(), changes))
    return Series(directory, tuple(patches), tuple(cache_types))


CACHE_TYPES_DIRECTIVE = "#! cache-types:"
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _parse_cache_types(text: str, where: str) -> list[str]:
    names = text.split()
    bad = [n for n in names if not _TYPE_NAME.fullmatch(n)]
    if not names or bad:
        raise ConfigError(f"{where}: {CACHE_TYPES_DIRECTIVE!r} needs KV cache type names "
                          f"(e.g. 'turbo4'){', not ' + ', '.join(map(repr, bad)) if bad else ''}",
                          hint="write the line as: #! cache-types: turbo2 turbo3 turbo4")
    return names


# --------------------------------------------------------------------------- state
def read_state(repo: Path) -> dict[str, object] | None:
    try:
        data = json.loads((repo / ".git" / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(repo: Path, base: str, series: Series, head: str) -> None:
    doc = {"schema": 1, "base": base, "patches": series.to_list(), "head": head}
    target = repo / ".git" / STATE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def _clear_state(repo: Path) -> None:
    (repo / ".git" / STATE).unlink(missing_ok=True)


@dataclass(frozen=True)
class ApplyResult:
    action: str  # "unchanged" | "applied" | "reapplied"
    head: str
    applied: tuple[str, ...]
    reason: str


def _describe_drift(old: object, new: list[dict[str, str]]) -> str:
    old_map = {p["name"]: p["sha256"] for p in old} if isinstance(old, list) else {}
    new_map = {p["name"]: p["sha256"] for p in new}
    parts = []
    if changed := [n for n in new_map if n in old_map and old_map[n] != new_map[n]]:
        parts.append("changed: " + ", ".join(changed))
    if added := [n for n in new_map if n not in old_map]:
        parts.append("added: " + ", ".join(added))
    if removed := [n for n in old_map if n not in new_map]:
        parts.append("removed: " + ", ".join(removed))
    if not parts:
        parts.append("order changed")
    return "patch series changed (" + "; ".join(parts) + ")"


def reset_to(repo: Path, base: str, log: Path) -> None:
    if gitrepo.operation_in_progress(repo) == "git am / rebase":
        gitrepo.run_git(["am", "--abort"], repo, log=log, check=False)
    gitrepo.run_git(["reset", "-q", "--hard", base], repo, log=log, error=PatchError)
    gitrepo.run_git(["clean", "-q", "-fdx"], repo, log=log, error=PatchError)
    _clear_state(repo)


def apply_series(repo: Path, base: str, series: Series, *, force: bool, log: Path,
                 ui: UI) -> ApplyResult:
    if not gitrepo.has_commit(repo, base):
        raise SourceError(f"{repo}: base commit {base} is missing",
                          hint="run turboctl build --force to fetch the source again")
    expected = series.to_list()
    state = read_state(repo)
    head = gitrepo.head(repo)
    busy = gitrepo.operation_in_progress(repo)
    dirty = gitrepo.dirty_paths(repo)
    reason = ""
    if not busy and not dirty:
        if state and state.get("base") == base and state.get("head") == head:
            if state.get("patches") == expected:
                assert head is not None
                return ApplyResult("unchanged", head, tuple(p.name for p in series.patches),
                                   "patch series already applied")
            reason = _describe_drift(state.get("patches"), expected)
        elif head == base:
            reason = "clean base tree"
    if not reason:
        if busy:
            problem = f"an interrupted {busy} is in progress"
        elif dirty:
            shown = ", ".join(dirty[:5]) + (" …" if len(dirty) > 5 else "")
            problem = f"it has local changes ({shown})"
        else:
            problem = (f"HEAD is {head[:12] if head else 'missing'}, neither the pinned base "
                       f"{base[:12]} nor the recorded patched state")
        if not force:
            raise PatchError(
                f"refusing to patch {repo}: {problem}",
                hint="save your changes elsewhere, then run again with --force to reset the "
                     "tree to the pinned commit (git reset --hard + git clean -fdx)")
        ui.warn(f"--force: resetting {repo} to {base[:12]} ({problem})")
        reason = "reset by --force"
    if head != base or dirty or busy or state:
        reset_to(repo, base, log)
    action = "applied" if reason in ("clean base tree", "reset by --force") else "reapplied"
    for patch in series.patches:
        ui.info(f"applying {patch.name}")
        res = gitrepo.run_git(
            ["am", "--3way", "--committer-date-is-author-date", "--quiet", str(patch.path)],
            repo, log=log, check=False, what=f"git am {patch.name}",
            env={"GIT_COMMITTER_NAME": gitrepo.IDENTITY_NAME,
                 "GIT_COMMITTER_EMAIL": gitrepo.IDENTITY_EMAIL})
        if res.returncode != 0:
            _fail(repo, base, patch, res.lines, log)
    new_head = gitrepo.head(repo)
    assert new_head is not None
    _write_state(repo, base, series, new_head)
    return ApplyResult(action, new_head, tuple(p.name for p in series.patches), reason)


_GGML_TYPE_ENUM = re.compile(r"enum\s+ggml_type\s*\{(.*?)\};", re.S)
_ENUMERATOR = re.compile(r"^\s*(GGML_TYPE_\w+)\s*(?:=\s*(\d+))?\s*,?\s*$")
GGML_H = PurePosixPath("ggml/include/ggml.h")


def check_type_ids(repo: Path) -> dict[str, int]:
    """Fail loudly when two ``enum ggml_type`` values of the patched tree share an id (e.g.
    an upstream type added after the pin took the id of a type the series adds): saved KV
    state files store type ids, so a collision would silently misread them. A tree without
    ``ggml/include/ggml.h`` (not llama.cpp) is not checked. Returns the ids, by name
    (``GGML_TYPE_TURBO4`` → 45; empty without the header)."""
    header = repo / GGML_H
    if not header.is_file():
        return {}
    text = header.read_text(encoding="utf-8", errors="replace")
    m = _GGML_TYPE_ENUM.search(text)
    if not m:
        raise PatchError(f"{header}: no `enum ggml_type` found", hint="the tree is not a llama.cpp tree")
    ids: dict[int, list[str]] = {}
    count = None
    value = -1
    for raw in m.group(1).splitlines():
        line = re.sub(r"//.*", "", raw)
        e = _ENUMERATOR.match(line)
        if not e:
            continue
        value = int(e.group(2)) if e.group(2) is not None else value + 1
        if e.group(1) == "GGML_TYPE_COUNT":
            count = value
            continue
        ids.setdefault(value, []).append(e.group(1))
    clashes = {v: names for v, names in ids.items() if len(names) > 1}
    if clashes:
        shown = "; ".join(f"{' and '.join(names)} are both {v}" for v, names in sorted(clashes.items()))
        raise PatchError(
            f"{header}: KV cache type ids collide after patching: {shown}",
            hint="upstream added types after the pin: renumber the series' types after upstream's last id "
                 "(type-id policy in kernels/README.md) and regenerate the series")
    if ids and count is not None and count != max(ids) + 1:
        raise PatchError(f"{header}: GGML_TYPE_COUNT is {count}, the largest type id is {max(ids)}",
                         hint="GGML_TYPE_COUNT must follow the last type; fix the series' ggml.h hunk")
    return {names[0]: v for v, names in ids.items()}


def _fail(repo: Path, base: str, patch: PatchFile, am_output: list[str], log: Path) -> None:
    gitrepo.run_git(["am", "--abort"], repo, log=log, check=False)
    check = gitrepo.run_git(["apply", "--check", "-v", str(patch.path)], repo, log=log,
                            check=False)
    details = failing_hunks(patch, check.lines) if check.returncode != 0 else []
    if not details:
        details = [ln for ln in am_output if ln.strip()][-15:]
    reset_to(repo, base, log)
    raise PatchError(
        f"patch {patch.path} does not apply on {base[:12]}; the tree was reset to the base",
        hint="rebase the patch on the pinned commit (python -m turboctl.devtools export-patches "
             "writes a series from a patched tree)",
        log_path=log,
        details=details,
    )


_FAILED_AT = re.compile(r"^error: patch failed: (.+):(\d+)$")


def failing_hunks(patch: PatchFile, apply_output: list[str]) -> list[str]:
    """'file:line' from git apply plus the hunk of the patch that starts there."""
    out: list[str] = []
    text = patch.path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in apply_output:
        m = _FAILED_AT.match(line.strip())
        if not m:
            continue
        path, start = m.group(1), int(m.group(2))
        out.append(f"{patch.name}: hunk for {path} at line {start} does not apply:")
        out.extend(_hunk_text(text, path, start))
    return out


def _hunk_text(lines: list[str], path: str, start: int, limit: int = 20) -> list[str]:
    in_file = False
    for i, line in enumerate(lines):
        m = _DIFF_RE.match(line)
        if m:
            in_file = path in (m.group(1) or m.group(2), m.group(3) or m.group(4))
            continue
        h = _HUNK_RE.match(line)
        if in_file and h and int(h.group(1)) == start:
            hunk = [line]
            for nxt in lines[i + 1:]:
                if nxt.startswith(("@@", "diff --git")) or nxt == "-- ":
                    break
                hunk.append(nxt)
            if len(hunk) > limit:
                hunk = [*hunk[:limit], f"… ({len(hunk) - limit} more lines)"]
            return hunk
    return []


# --------------------------------------------------------------------------- export
def export_series(repo: Path, base: str, out_dir: Path, log: Path) -> list[str]:
    """Write base..HEAD of ``repo`` as format-patch files plus a series file (maintainers)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    res = gitrepo.run_git(
        ["format-patch", "--zero-commit", "--no-signature", "--no-numbered", "-o", str(out_dir),
         f"{base}..HEAD"], repo, log=log, error=PatchError)
    names = [Path(line.strip()).name for line in res.lines if line.strip().endswith(".patch")]
    # keep the expected cache types of the series being replaced
    old = out_dir / "series"
    keep = [ln for ln in old.read_text(encoding="utf-8").splitlines() if ln.startswith(CACHE_TYPES_DIRECTIVE)] \
        if old.is_file() else []
    body = SERIES_HEADER + "".join(f"{ln}\n" for ln in keep) + "".join(f"{n}\n" for n in names)
    (out_dir / "series").write_text(body, encoding="utf-8")
    return names
