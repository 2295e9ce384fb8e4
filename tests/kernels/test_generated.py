"""The generated files of kernels/ are what their generators produce."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_codec_patch_is_generated_from_kernels() -> None:
    """patches/0001 adds exactly the files of kernels/ (the single source of truth)."""
    res = subprocess.run([sys.executable, str(ROOT / "kernels" / "make_codec_patch.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_codec_patch_is_listed_first_in_the_series() -> None:
    lines = [ln.strip() for ln in (ROOT / "patches" / "series").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "0001-ggml-add-the-TurboQuant-codec-sources.patch"


@pytest.mark.slow
def test_codebooks_header_is_reproducible() -> None:
    """Re-running the Lloyd-Max generator (about 3 minutes) gives the committed header."""
    res = subprocess.run([sys.executable, str(ROOT / "kernels" / "gen_codebooks.py"), "--check"],
                         capture_output=True, text=True, check=False, timeout=1800)
    assert res.returncode == 0, res.stderr


def test_metal_instances_are_generated_from_the_pair_table() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "kernels" / "gen_metal.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
