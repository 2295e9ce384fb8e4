"""``--report`` on the real build: ``bench speed`` and ``bench memory`` on SmolLM2-135M-Instruct with
tiny settings write report.md, its PNG plots and its data/; the figures in report.md are the
document's, and the document's are the ones llama-bench and llama-server reported (llama-bench's
own JSON output, llama-server's log). ``bench report`` renders the saved documents again."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import slow_home
from tests.integration.serveproc import run_turboctl, smollm2, write_profile
from turboctl.bench import memory, speed
from turboctl.build.manifest import Manifest

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"
TOTAL = re.compile(r"llama_context: KV cache total: (\d+) bytes")


def run_with_report(home: Path, out: Path, *args: str) -> dict[str, Any]:
    res = run_turboctl(home, "bench", *args, "--report", str(out / "rep"), "--output", str(out / "doc.json"),
                       timeout=300)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    assert f"report: {out / 'rep' / 'report.md'}" in res.stdout + res.stderr
    doc: dict[str, Any] = json.loads((out / "doc.json").read_text())
    (data,) = (out / "rep" / "data").iterdir()
    assert json.loads(data.read_text()) == doc
    return doc


def pngs(rep: Path) -> list[str]:
    names = sorted(p.name for p in rep.glob("*.png"))
    for name in names:
        data = (rep / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
        assert f"]({name})" in (rep / "report.md").read_text()
    return names


def test_bench_speed_report(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    doc = run_with_report(home, tmp_path, "speed", "--model", str(smollm2(home)), "--kv", "f16,turbo3", "-p", "8",
                          "-n", "2", "--depth", "0,32", "--reps", "1", "--threads", "2", "--no-repack")
    rep = tmp_path / "rep"
    assert pngs(rep) == ["speed-generation-vs-depth.png", "speed-prompt-vs-depth.png"]
    text = (rep / "report.md").read_text()
    assert speed.report_section(doc).markdown.rstrip() in text
    for r in doc["results"]:
        raw = {(t["n_prompt"], t["n_gen"], t["n_depth"]): t for t in json.loads(Path(r["raw_output"]).read_text())}
        assert len(r["tests"]) == 4
        for t in r["tests"]:
            got = raw[(t["n_prompt"], t["n_gen"], t["depth"])]
            assert (t["avg_ts"], t["stddev_ts"]) == (got["avg_ts"], got["stddev_ts"])  # llama-bench's figures
            assert f"| {r['label']} | {r['bits_per_value']:g} | {t['test']} | {t['depth']} | {t['avg_ts']:.2f} ± " \
                   f"{t['stddev_ts']:.2f} | {t['ratio_vs_f16']:.3f} |" in text
    again = run_turboctl(home, "bench", "report", str(tmp_path / "again"), str(tmp_path / "doc.json"), "--json")
    assert again.returncode == 0, again.stderr
    assert len(json.loads(again.stdout)["plots"]) == 2


def test_bench_memory_report(llama_build: Manifest, tmp_path: Path) -> None:
    home = slow_home()
    profile = write_profile(tmp_path / "smol-t3.yaml", "smol-t3", smollm2(home), "turbo3", context=768)
    doc = run_with_report(home, tmp_path, "memory", "--profile", str(profile), "--kv", "f16", "--ctx-list", "256,768")
    rep = tmp_path / "rep"
    assert pngs(rep) == ["memory-kv-bytes-vs-context.png"]
    text = (rep / "report.md").read_text()
    assert memory.report_section(doc).markdown.rstrip() in text
    assert [c["label"] for c in doc["configurations"]] == ["f16", "turbo3"]
    for cfg in doc["configurations"]:
        for c in cfg["contexts"]:
            total = c["log"]["total_bytes"]
            assert total == int(TOTAL.findall(Path(c["server_log"]).read_text())[0])  # llama-server's figure
            assert f"| {cfg['label']} | {cfg['bits_per_value']:.2f} | {c['context']} | {total} (" in text
