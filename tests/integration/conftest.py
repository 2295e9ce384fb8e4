"""Slow-suite fixtures: ONE real build per session, shared by every slow test.

``llama_build`` runs ``turboctl build --source sdist --backend cpu`` into
``$TURBOCTL_TEST_HOME`` (default ``<repo>/.ci-home``, git-ignored) and returns the build
manifest. A second session reuses the tree and the build (a no-op build, seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turboctl.build import manifest
from turboctl.paths import Paths

REPO = Path(__file__).resolve().parents[2]


def slow_home() -> Path:
    return Path(os.environ.get("TURBOCTL_TEST_HOME", REPO / ".ci-home")).resolve()


def run_turboctl_build(home: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ, TURBOCTL_HOME=str(home))
    cmd = [sys.executable, "-m", "turboctl", "build", "--source", "sdist", "--backend", "cpu", *extra]
    started = time.monotonic()
    res = subprocess.run(cmd, env=env, text=True, capture_output=True, check=False)
    return res, time.monotonic() - started


@pytest.fixture(scope="session")
def llama_build() -> manifest.Manifest:
    """The real CPU build of the pinned llama.cpp (+ the shipped series); its manifest."""
    home = slow_home()
    res, seconds = run_turboctl_build(home)
    if res.returncode != 0:
        pytest.fail(f"turboctl build failed ({res.returncode}) after {seconds:.0f} s\n"
                    f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}")
    print(f"\n[llama_build] turboctl build took {seconds:.1f} s (home {home})")
    m = manifest.load_current(Paths(home))
    assert m is not None
    return m


def compile_against_build(m: manifest.Manifest, source: Path, out: Path, *, include: tuple[str, ...],
                          libs: tuple[str, ...], extra: tuple[str, ...] = ()) -> Path:
    """Compile a test program of tests/integration/ against the real build: ``include`` are
    directories of its source tree, ``libs`` libraries next to its binaries (found at run time
    through an rpath)."""
    import shutil

    src = Path(m.source.path)
    bindir = Path(m.binaries["llama-server"].path).parent
    cxx = m.compiler.get("path") or shutil.which("c++") or "g++"
    cmd = [cxx, "-std=c++17", "-O2", "-Wall", *(f"-I{src / d}" for d in include), str(source),
           f"-L{bindir}", *(f"-l{lib}" for lib in libs), f"-Wl,-rpath,{bindir}", *extra, "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return out
