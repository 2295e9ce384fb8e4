"""The one subprocess runner.

Every external command turboctl starts goes through :func:`run`: the program is looked up
first (a missing tool is a :class:`ToolMissing` with an install hint), the command line is
printed (dim), the output is streamed to a log file and, line by line, to an optional
callback (progress parsing), and a non-zero exit raises a typed error that carries the log
path and the relevant lines of the output.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import CommandFailed, ToolMissing, TurboctlError
from .ui import get_ui

INSTALL_HINTS: dict[str, str] = {
    "git": "install git (macOS: xcode-select --install; Debian/Ubuntu: apt-get install git)",
    "cmake": "install CMake >= 3.14 (macOS: brew install cmake; Debian/Ubuntu: apt-get install cmake)",
    "ninja": "install Ninja (macOS: brew install ninja; Debian/Ubuntu: apt-get install ninja-build)",
    "ccache": "install ccache (macOS: brew install ccache; Debian/Ubuntu: apt-get install ccache)",
    "c++": "install a C++ compiler (macOS: xcode-select --install; Debian/Ubuntu: apt-get install g++)",
}

_RELEVANT = re.compile(r"error:|Error|FAILED|fatal|CMake Error|undefined reference", re.IGNORECASE)


@dataclass
class Result:
    args: list[str]
    returncode: int
    output: str = ""
    log_path: Path | None = None
    duration_s: float = 0.0
    lines: list[str] = field(default_factory=list)
    timed_out: bool = False


def resolve(program: str, env: Mapping[str, str] | None = None) -> str:
    """Full path of ``program`` or ToolMissing."""
    if os.sep in program:
        if Path(program).is_file() and os.access(program, os.X_OK):
            return program
        raise ToolMissing(f"program not found: {program}", hint=INSTALL_HINTS.get(Path(program).name))
    path = (env or os.environ).get("PATH")
    found = shutil.which(program, path=path)
    if not found:
        raise ToolMissing(f"'{program}' is not installed or not on PATH",
                          hint=INSTALL_HINTS.get(program, f"install {program}"))
    return found


def relevant_lines(lines: Sequence[str], *, context: int = 2, limit: int = 30,
                   tail: int = 20) -> list[str]:
    """Lines that explain a failure: error-looking lines with a little context, else the tail."""
    keep: set[int] = set()
    for i, line in enumerate(lines):
        if _RELEVANT.search(line):
            keep.update(range(max(0, i - context), min(len(lines), i + context + 1)))
    if not keep:
        return [ln.rstrip("\n") for ln in lines[-tail:]]
    picked = [lines[i].rstrip("\n") for i in sorted(keep)]
    return picked[:limit]


def _spawn(args: list[str], cwd: Path | None, env: Mapping[str, str] | None,
           stdout: IO[str] | None = None) -> subprocess.Popen[str]:
    """Start the child. Tests replace this function to forbid real builds.

    Without ``stdout`` the child's stdout and stderr are one pipe (``child.stdout``); with it,
    stdout goes to that file and stderr is the pipe (``child.stderr``)."""
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE if stdout is not None else subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        # own process group: on Ctrl-C or a timeout the whole tree (cmake → ninja →
        # compilers) is stopped, not just the direct child
        start_new_session=True,
    )


def _stop(child: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Terminate the child's process group, then kill it if it does not go within ``grace`` s."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        child.terminate()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            child.kill()
        child.wait()


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    timeout: float | None = None,
    error: type[TurboctlError] = CommandFailed,
    what: str | None = None,
    hint: str | None = None,
    echo: bool = True,
    shown: Sequence[str] | None = None,
    stdout_path: Path | None = None,
) -> Result:
    """Run a command; see the module docstring.

    ``error``/``what``/``hint`` shape the exception on failure: ``what`` names the step
    ("cmake configure"), ``hint`` says what to do.  ``echo=False`` keeps the command line
    off the console (still logged) for quick probes; ``shown`` is a shorter form of the
    command for the console (the log always has the full one).

    ``stdout_path``: write the child's stdout to this file, untouched (a machine-readable
    document such as SQL or JSON that stderr lines must not interleave with); only stderr
    is then logged, passed to ``on_line`` and kept in ``Result.lines``.
    """
    argv = [os.fspath(a) for a in args]
    if not argv:
        raise ValueError("empty command")
    program = resolve(argv[0], env)
    argv_resolved = [program, *argv[1:]]
    if echo:
        get_ui().command(list(shown) if shown is not None else argv, cwd)
    logf = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        logf = log.open("a", encoding="utf-8")
        logf.write(f"$ {' '.join(argv)}\n")
        if cwd:
            logf.write(f"# cwd: {cwd}\n")
        logf.flush()
    lines: list[str] = []
    started = time.monotonic()
    timed_out = False
    outf: IO[str] | None = None
    try:
        if stdout_path is not None:
            stdout_path.parent.mkdir(parents=True, exist_ok=True)
            outf = stdout_path.open("w", encoding="utf-8")
            if logf is not None:
                logf.write(f"# stdout: {stdout_path}\n")
                logf.flush()
        proc = _spawn(argv_resolved, cwd, env, outf) if outf is not None else _spawn(argv_resolved, cwd, env)
        stream = proc.stderr if outf is not None else proc.stdout
        timer: threading.Timer | None = None
        if timeout is not None:
            def _kill() -> None:
                nonlocal timed_out
                timed_out = True
                _stop(proc)
            timer = threading.Timer(timeout, _kill)
            timer.start()
        try:
            assert stream is not None
            for line in stream:
                lines.append(line)
                if logf is not None:
                    logf.write(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            returncode = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
    finally:
        if logf is not None:
            logf.close()
        if outf is not None:
            outf.close()
    duration = time.monotonic() - started
    output = "".join(lines)
    result = Result(argv, returncode, output, log, duration, [ln.rstrip("\n") for ln in lines], timed_out)
    if check and (returncode != 0 or timed_out):
        label = what or Path(argv[0]).name
        if timed_out:
            msg = f"{label} did not finish within {timeout:g} s: {' '.join(argv)}"
        else:
            msg = f"{label} failed (exit code {returncode}): {' '.join(argv)}"
        raise error(msg, hint=hint, log_path=log, details=relevant_lines(lines))
    return result


def capture(args: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, timeout: float | None = 30) -> str | None:
    """Output of a quick probe, or None when the program is missing or fails (no echo)."""
    try:
        res = run(args, cwd=cwd, env=env, check=False, timeout=timeout, echo=False)
    except ToolMissing:
        return None
    except OSError:
        return None
    if res.returncode != 0:
        return None
    return res.output


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so a killed turboctl leaves no server behind. Elsewhere nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Background:
    """A long-running child (llama-server) in its own process group, its stdout and stderr
    appended to a log file. :meth:`stop` ends the whole group: SIGTERM, then SIGKILL after
    ``grace`` seconds, and reaps it, so nothing is left behind."""

    def __init__(self, args: Sequence[str | os.PathLike[str]], *, log: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        argv = [os.fspath(a) for a in args]
        if not argv:
            raise ValueError("empty command")
        self.args = [resolve(argv[0], env), *argv[1:]]
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._logf = log.open("a", encoding="utf-8")
        try:
            self._child = subprocess.Popen(
                self.args, cwd=cwd, env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except BaseException:
            self._logf.close()
            raise

    @property
    def pid(self) -> int:
        return self._child.pid

    def poll(self) -> int | None:
        return self._child.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None when still running after ``timeout`` seconds."""
        try:
            return self._child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 10.0) -> int:
        """Stop the process group (SIGTERM, SIGKILL after ``grace`` s) and return the exit code."""
        child = self._child
        if child.poll() is None:
            _stop(child, grace)
        else:
            # the leader is gone; make sure no member of its group outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        self._logf.close()
        return int(child.returncode)
