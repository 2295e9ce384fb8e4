"""Slow: llama.cpp's tools never lose their last output lines at exit (patch 0009).

b11312 prints its log from a worker thread and leaks the logger, so nothing printed what was
still queued when a program ended: on a busy machine, llama-perplexity exited 0 without its
statistics. Every test here runs with a busy-loop process per core, so that the worker
thread lags behind, as it does under load:

- llama-perplexity --kl-divergence (and the base run) on a generated tiny model, again and
  again: every run prints every statistic turboctl reads;
- tests/integration/log_exit.cpp, compiled against the build's libllama-common: every line
  logged before return from main(), exit() or common_log_flush() is printed; a paused
  logger prints nothing and does not hold the exit up; exit() from a signal handler that
  interrupted a thread inside the logger still ends the program promptly.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.conftest import compile_against_build
from tests.integration.tinymodel import WORDS, write_tiny_model
from turboctl.bench import kld
from turboctl.build import manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUNS = 30  # llama-perplexity --kl-divergence runs (about 0.1-0.5 s each)
CTX, CHUNKS = 128, 4  # 4 x 63 = 252 scored tokens: enough for the statistics (>= 100)


@contextmanager
def cpu_load() -> Iterator[None]:
    """A busy-loop process per core while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.2)
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def run(args: list[str], timeout: float = 60) -> tuple[int, str]:
    res = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, errors="replace", timeout=timeout, check=False)
    return res.returncode, res.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model and a corpus long enough for CHUNKS chunks of CTX tokens."""
    where = tmp_path_factory.mktemp("logflush")
    model = write_tiny_model(where / "tiny.gguf", n_ctx=512)
    rng = random.Random(1)
    corpus = where / "corpus.txt"
    corpus.write_text(" ".join(rng.choice(WORDS) for _ in range(3000)) + "\n")
    return model, corpus


def test_perplexity_kld_prints_every_statistic_under_load(llama_build: manifest.Manifest,
                                                          tiny: tuple[Path, Path], tmp_path: Path) -> None:
    perplexity = llama_build.binaries["llama-perplexity"].path
    model, corpus = tiny
    base = tmp_path / "base.kld"
    common = [perplexity, "-m", str(model), "-f", str(corpus), "-c", str(CTX), "--chunks", str(CHUNKS), "-t", "1",
              "-fa", "on"]
    lost: list[str] = []
    started = time.monotonic()
    with cpu_load():
        for i in range(3):
            rc, out = run([*common, "-ctk", "f16", "-ctv", "f16", "--kl-divergence-base", str(base)])
            assert rc == 0, out[-3000:]
            if kld.parse_base_output(out) is None:
                lost.append(f"base run {i + 1}: {kld.explain_base_output(out, base).message}")
        for i in range(RUNS):
            type_kv = ("turbo4", "q8_0", "f16")[i % 3]
            rc, out = run([*common, "-ctk", type_kv, "-ctv", type_kv, "--kl-divergence-base", str(base),
                           "--kl-divergence"])
            assert rc == 0, out[-3000:]
            figures = kld.parse_kld_output(out)
            if figures is None or "Minimum Δp:" not in out:
                lost.append(f"run {i + 1} ({type_kv}): {kld.explain_kld_output(out, type_kv).message}")
            else:
                assert figures.chunks == CHUNKS and figures.kld_max is not None and figures.rms_dp is not None
        # an error return loses its error line the same way
        for i in range(3):
            rc, out = run([perplexity, "-m", str(tmp_path / "missing.gguf"), "-f", str(corpus)])
            assert rc == 1
            if "unable to load model" not in out:
                lost.append(f"error run {i + 1}: no 'unable to load model' line; ends with {out[-200:]!r}")
    seconds = time.monotonic() - started
    print(f"\n[log flush] llama-perplexity: {len(lost)} of {3 + RUNS + 3} runs lost output under load "
          f"({seconds:.1f} s)")
    assert not lost, "\n".join(lost)


@pytest.fixture(scope="module")
def log_exit(llama_build: manifest.Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/integration/log_exit.cpp compiled against the build's common/log.h and libllama-common."""
    return compile_against_build(llama_build, REPO / "tests" / "integration" / "log_exit.cpp",
                                 tmp_path_factory.mktemp("logexit") / "log_exit",
                                 include=("common", "ggml/include"), libs=("llama-common",), extra=("-pthread",))


def expected_lines(n: int) -> list[str]:
    return [f"line {i} of {n}" for i in range(1, n)] + [f"last line {n}"]


@pytest.mark.parametrize(("mode", "code"), [("return", 0), ("exit", 3), ("flush", 0)])
def test_every_line_logged_before_the_end_is_printed(log_exit: Path, mode: str, code: int) -> None:
    n, runs = 2000, 10
    lost = []
    with cpu_load():
        for i in range(runs):
            rc, out = run([str(log_exit), mode, str(n)])
            assert rc == code, out[-2000:]
            lines = out.splitlines()
            if lines != expected_lines(n):
                lost.append(f"run {i + 1}: {len(lines)} of {n} lines, the last {lines[-1:]!r}")
    print(f"\n[log flush] log_exit {mode}: {len(lost)} of {runs} runs lost lines")
    assert not lost, "\n".join(lost)


def test_a_paused_logger_prints_nothing_and_does_not_hold_the_exit(log_exit: Path) -> None:
    started = time.monotonic()
    rc, out = run([str(log_exit), "paused", "100"], timeout=30)
    assert (rc, out) == (0, "")
    assert time.monotonic() - started < 5


def test_exit_from_a_signal_handler_inside_the_logger_ends_promptly(log_exit: Path) -> None:
    """exit() from a signal handler that interrupted the main thread while it logged without
    end (holding the lock, or waiting on a full queue): the flush at exit gives up after at
    most 0.5 s for the lock plus 1 s without progress, instead of hanging."""
    times = []
    with cpu_load():
        for _ in range(10):
            started = time.monotonic()
            rc, out = run([str(log_exit), "signal"], timeout=60)
            times.append(time.monotonic() - started)
            assert rc == 4, out[-2000:]
            assert out.startswith("line 1\n")
    print(f"\n[log flush] exit from a signal handler: slowest {max(times):.2f} s, "
          f"median {sorted(times)[len(times) // 2]:.2f} s")
    assert max(times) < 10
