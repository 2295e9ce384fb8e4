"""Slow: the quality gate, through ``turboctl bench kld`` on the trained benchmark model.

turbo4 (4.25 bits/value) must reach a mean KL divergence against f16 K/V of at most 1.05 x
upstream's rotated q4_0 (4.5 bits/value): ../shared/models/bench-a-h128.gguf on
../shared/corpora/docs-valid.txt, context 2048, 20 chunks, 2 threads (one base run and three
candidate runs of about 40 s each on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import slow_home
from turboctl.build import manifest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
MODEL = SHARED / "models" / "bench-a-h128.gguf"
CORPUS = SHARED / "corpora" / "docs-valid.txt"
GATE = 1.05
F16_KLD_MAX = 0.0005  # f16 against its own f16 base: ~0 (the base stores 16-bit log-probabilities)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL.is_file() and CORPUS.is_file()),
                       reason="the benchmark model ../shared/models/bench-a-h128.gguf and the corpus "
                              "../shared/corpora/docs-valid.txt are not next to the repository"),
]


def test_turbo4_kld_at_most_rotated_q4_0(llama_build: manifest.Manifest, tmp_path: Path) -> None:
    out = tmp_path / "kld.json"
    cmd = [sys.executable, "-m", "turboctl", "bench", "kld", "--model", str(MODEL), "--corpus", str(CORPUS),
           "--ctx", "2048", "--chunks", "20", "--threads", "2", "--kv", "f16", "--kv", "q4_0", "--kv", "turbo4",
           "--json", "--output", str(out)]
    started = time.monotonic()
    res = subprocess.run(cmd, env=dict(os.environ, TURBOCTL_HOME=str(slow_home())), text=True,
                         capture_output=True, check=False)
    seconds = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-4000:]
    doc = json.loads(res.stdout)
    assert json.loads(out.read_text()) == doc
    rows = {r["label"]: r for r in doc["results"]}
    print(f"\n[kld gate] {seconds:.0f} s; corpus {doc['corpus']['name']} sha256 {doc['corpus']['sha256'][:12]}, "
          f"ctx {doc['ctx']}, chunks {doc['chunks_run']}, threads {doc['threads']}; base PPL {doc['base']['ppl']}")
    for label in ("f16", "q4_0", "turbo4"):
        r = rows[label]
        print(f"[kld gate] {label:7} {r['bits_per_value']:>5} bits/value  mean KLD {r['mean_kld']:.6f} "
              f"± {r['mean_kld_error']:.6f}  99% {r['kld_99']:.6f}  same top {r['same_top_p']:.3f} %  "
              f"PPL {r['ppl']:.4f}  ({r['duration_s']:.0f} s)")
    assert doc["chunks_run"] == 20 and doc["ctx"] == 2048 and doc["threads"] == 2
    assert doc["llama_cpp"]["selftest"] == "pass"
    assert not Path(doc["base"]["logits_file"]).exists()  # removed at the end
    f16, q4_0, turbo4 = rows["f16"], rows["q4_0"], rows["turbo4"]
    # the pipeline: f16 against its own base is ~0, while a 4-bit cache is measurably not
    assert abs(f16["mean_kld"]) <= F16_KLD_MAX and doc["pipeline_check"]["ok"] is True
    assert q4_0["mean_kld"] > 10 * F16_KLD_MAX
    # the gate
    assert turbo4["mean_kld"] <= GATE * q4_0["mean_kld"], (
        f"turbo4 mean KLD {turbo4['mean_kld']:.6f} > {GATE} x rotated q4_0 {q4_0['mean_kld']:.6f}")
