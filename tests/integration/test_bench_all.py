"""``turboctl bench all --report`` on the real build: SmolLM2-135M-Instruct through the
smollm2-demo profile (its turbo4 recipe joins f16; its --no-repack reaches every server), every
step with short settings (kld on WikiText-2's test text when ../shared has it; left out, saying
so, otherwise), one document and one report; a rerun measures nothing (every step
cached) and gives the same documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.conftest import REPO, slow_home
from tests.integration.serveproc import run_turboctl, smollm2
from turboctl.bench import kld, memory, niah, prompts, report, session, speed, suite
from turboctl.build.manifest import Manifest

pytestmark = pytest.mark.slow
WIKI = REPO.parent / "shared" / "corpora" / "wiki.test.raw"
SHORT = ["--kv", "f16", "--threads", "2",
         "--ctx-list", "512",                                           # memory
         "-p", "16", "-n", "4", "--depth", "0", "--reps", "1",          # speed
         "--kld-ctx", "256", "--chunks", "2",                           # kld (with the corpus when present)
         "--niah-ctx-list", "512", "--depths", "0,100", "--needles", "1", "--niah-tokens", "16",
         "--prompts", "p01,p08", "--prompt-tokens", "24", "--prompt-ctx", "2048",
         "--turns", "2", "--session-tokens", "24", "--session-ctx", "1024"]
SCHEMAS = {memory.SCHEMA: memory.schema_path(), niah.SCHEMA: niah.schema_path(),
           prompts.SCHEMA: prompts.schema_path(), session.SCHEMA: session.schema_path()}


def run_all(home: Path, out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    corpus = ["--corpus", str(WIKI)] if WIKI.is_file() else []
    res = run_turboctl(home, "bench", "all", "--profile", "smollm2-demo", *SHORT, *corpus, "--report", str(out),
                       "--json", *extra, timeout=1500)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    doc: dict[str, Any] = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads(suite.schema_path().read_text()))
    return doc, res.stderr


def test_bench_all_report_on_smollm2_then_all_cached(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    model = smollm2(home)
    first, _ = run_all(home, tmp_path / "rep", "--output", str(tmp_path / "all.json"))
    steps = [s["step"] for s in first["steps"]]
    assert steps == ["memory", "speed", "kld", "niah", "prompts", "long-session"]
    measured = [s for s in steps if s != "kld" or WIKI.is_file()]
    if not WIKI.is_file():
        assert first["steps"][2] == {"step": "kld", "status": "skipped", "reason": "no --corpus"}
    assert first["model"]["path"] == str(model.resolve())
    schemas = [d["schema"] for d in first["documents"]]
    assert schemas == [memory.SCHEMA, speed.SCHEMA, *([kld.SCHEMA] if WIKI.is_file() else []), niah.SCHEMA,
                       prompts.SCHEMA, session.SCHEMA]
    for d in first["documents"]:
        if d["schema"] in SCHEMAS:
            jsonschema.validate(d, json.loads(SCHEMAS[d["schema"]].read_text()))
    labels = {d["schema"]: sorted(c["label"] for c in d["configurations"]) for d in first["documents"]
              if "configurations" in d}
    assert all(v == ["f16", "turbo4"] for v in labels.values()), labels
    # the report: one section per step, each with its plots, and the documents it was made from
    text = (tmp_path / "rep" / report.REPORT).read_text()
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert len(pngs) >= 6, pngs
    for png in pngs:
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png
        assert f"({png})" in text
    assert len(list((tmp_path / "rep" / "data").glob("*.json"))) == len(measured)
    assert json.loads((tmp_path / "all.json").read_text())["documents"] == first["documents"]
    # a rerun: every step from the cache, nothing started
    again, err2 = run_all(home, tmp_path / "rep2")
    assert [s["status"] for s in again["steps"] if s["step"] in measured] == ["cached"] * len(measured)
    assert again["documents"] == first["documents"]
    assert all(f"cached: {n}" in err2 for n in measured), err2[-2000:]
    assert (tmp_path / "rep2" / report.REPORT).read_text().count("## ") == text.count("## ")
