"""Small git helpers shared by the source providers and the patch machinery.

Commands that change a repository go through :func:`turboctl.proc.run` (printed, logged);
read-only inspection (HEAD, dirty state, blob contents) uses GitPython, which reads the
object store without parsing porcelain output.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import git

from .. import proc
from ..errors import CommandFailed, TurboctlError

# Fixed identity and dates make every commit turboctl creates reproducible: the same tree
# and the same patches give the same commit ids on every machine.
IDENTITY_NAME = "turboctl"
IDENTITY_EMAIL = "turboctl@localhost.invalid"
FIXED_DATE = "2000-01-01T00:00:00+0000"

# Settings that would otherwise let a user's global git config change what we commit.
_CONFIG = [
    "-c", "core.autocrlf=false",
    "-c", "core.safecrlf=false",
    "-c", "core.fileMode=true",
    "-c", "commit.gpgsign=false",
    "-c", "advice.detachedHead=false",
    "-c", "init.defaultBranch=turboctl",
    "-c", f"user.name={IDENTITY_NAME}",
    "-c", f"user.email={IDENTITY_EMAIL}",
]


def git_env(extra: Mapping[str, str] | None = None, *, fixed_dates: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
        "GIT_HTTP_LOW_SPEED_TIME": "30",
        "LC_ALL": "C",
    })
    if fixed_dates:
        env.update({
            "GIT_AUTHOR_NAME": IDENTITY_NAME,
            "GIT_AUTHOR_EMAIL": IDENTITY_EMAIL,
            "GIT_AUTHOR_DATE": FIXED_DATE,
            "GIT_COMMITTER_NAME": IDENTITY_NAME,
            "GIT_COMMITTER_EMAIL": IDENTITY_EMAIL,
            "GIT_COMMITTER_DATE": FIXED_DATE,
        })
    if extra:
        env.update(extra)
    return env


def run_git(
    args: list[str],
    repo: Path,
    *,
    log: Path | None = None,
    error: type[TurboctlError] = CommandFailed,
    what: str | None = None,
    hint: str | None = None,
    check: bool = True,
    fixed_dates: bool = False,
    timeout: float | None = None,
    echo: bool = True,
    env: Mapping[str, str] | None = None,
) -> proc.Result:
    return proc.run(
        ["git", *_CONFIG, *args],
        cwd=repo,
        env=git_env(env, fixed_dates=fixed_dates),
        log=log,
        error=error,
        what=what or f"git {args[0]}",
        hint=hint,
        check=check,
        timeout=timeout,
        echo=echo,
        shown=["git", *args],
    )


def is_repo(path: Path) -> bool:
    return (path / ".git").is_dir()


def head(repo: Path) -> str | None:
    try:
        return str(git.Repo(repo).head.commit.hexsha)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def has_commit(repo: Path, commit: str) -> bool:
    try:
        obj = git.Repo(repo).commit(commit)
    except (git.BadName, ValueError, git.InvalidGitRepositoryError, git.NoSuchPathError):
        return False
    return bool(obj.hexsha == commit)


def dirty_paths(repo: Path) -> list[str]:
    """Modified, staged or untracked (not ignored) paths; empty list = clean."""
    r = git.Repo(repo)
    # --no-optional-locks: do not refresh .git/index. llama.cpp's CMake re-configures
    # whenever .git/index changes, which would make every no-op build slow.
    out = r.git.execute(["git", "--no-optional-locks", "status", "--porcelain",
                         "--untracked-files=all"])
    return [line[3:] for line in str(out).splitlines() if line.strip()]


def operation_in_progress(repo: Path) -> str | None:
    gitdir = repo / ".git"
    for name, label in (("rebase-apply", "git am / rebase"), ("rebase-merge", "rebase"),
                        ("MERGE_HEAD", "merge"), ("CHERRY_PICK_HEAD", "cherry-pick")):
        if (gitdir / name).exists():
            return label
    return None


def blob_sha256(repo: Path, commit: str, paths: Iterable[str]) -> dict[str, str | None]:
    """sha256 of each path's content at ``commit`` (None when the path does not exist)."""
    tree = git.Repo(repo).commit(commit).tree
    result: dict[str, str | None] = {}
    for p in paths:
        try:
            blob = tree / p
        except KeyError:
            result[p] = None
            continue
        result[p] = hashlib.sha256(blob.data_stream.read()).hexdigest()
    return result


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
