"""``turboctl bench speed``: prompt processing and generation speed per KV configuration
(llama-bench), with ratios against f16/f16 and q4_0/q4_0.

llama-bench runs the cross product of its ``-ctk`` and ``-ctv`` lists, so turboctl runs it
once per K/V pair. Its JSON document (``-o json``, stdout) is kept apart from its log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, preflight, proc
from ..build.manifest import Manifest, now_iso
from ..errors import BenchError, UsageError
from ..kv.recipe import RecipePlan, parse_recipe_list
from ..paths import Paths
from ..ui import UI
from . import common
from .report import Fields, Section, figure, md_table, save

SCHEMA = "turboctl.bench.speed/1"
DEFAULT_KV = ("f16", "q8_0", "q4_0", "turbo4", "turbo3", "turbo2")
TOOL = "llama-bench"
REFERENCES = ("f16/f16", "q4_0/q4_0")


@dataclass(frozen=True)
class Measurement:
    """One llama-bench test: pp<n_prompt> or tg<n_gen> at a depth."""

    type_k: str
    type_v: str
    n_prompt: int
    n_gen: int
    n_depth: int
    avg_ts: float
    stddev_ts: float
    samples_ts: tuple[float, ...] = ()

    @property
    def test(self) -> str:
        if self.n_gen == 0:
            return f"pp{self.n_prompt}"
        if self.n_prompt == 0:
            return f"tg{self.n_gen}"
        return f"pp{self.n_prompt}+tg{self.n_gen}"

    @property
    def key(self) -> tuple[str, int]:
        return self.test, self.n_depth


def parse_bench_json(text: str) -> list[Measurement]:
    """The tests of a ``llama-bench -o json`` document (ValueError saying what is wrong when
    it is not one)."""
    if not text.strip():
        raise ValueError("the document is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            # llama-bench prints each test as it completes and the closing "]" at the end
            raise ValueError(f"the document is cut short: it ends at line {exc.lineno} before it is "
                             "complete") from exc
        raise ValueError(f"not a JSON document: {exc}") from exc
    if not isinstance(doc, list):
        raise ValueError("expected a JSON array of tests")
    out = []
    for i, item in enumerate(doc, 1):
        if not isinstance(item, dict):
            raise ValueError(f"test {i} of {len(doc)} is not a JSON object")
        try:
            out.append(Measurement(
                type_k=str(item["type_k"]), type_v=str(item["type_v"]), n_prompt=int(item["n_prompt"]),
                n_gen=int(item["n_gen"]), n_depth=int(item.get("n_depth", 0)),
                avg_ts=float(item["avg_ts"]), stddev_ts=float(item["stddev_ts"]),
                samples_ts=tuple(float(x) for x in item.get("samples_ts", []))))
        except KeyError as exc:
            raise ValueError(f"test {i} of {len(doc)} lacks {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"test {i} of {len(doc)} has a malformed value ({exc})") from exc
    return out


def parse_depths(text: str) -> list[int]:
    try:
        depths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--depth {text!r}: expected comma-separated token counts, e.g. 0,4096") from None
    if not depths or any(d < 0 for d in depths):
        raise UsageError(f"--depth {text!r}: expected comma-separated token counts >= 0, e.g. 0,4096")
    return list(dict.fromkeys(depths))


@dataclass(frozen=True)
class SpeedPlan:
    bench: Path
    model: Path
    configs: tuple[RecipePlan, ...]
    n_prompt: int
    n_gen: int
    depths: tuple[int, ...]
    threads: int
    reps: int
    log: Path
    repack: bool = True  # False: --repack 0 (where llama.cpp's CPU weight repacking fails)
    rpc: tuple[str, ...] = ()  # RPC workers the model is split across (checked: turboctl.workers.check)

    def expected_tests(self) -> list[tuple[str, int]]:
        """(test, depth) of every test llama-bench runs for one configuration."""
        tests = ([f"pp{self.n_prompt}"] if self.n_prompt else []) + ([f"tg{self.n_gen}"] if self.n_gen else [])
        return [(t, d) for d in self.depths for t in tests]

    def command(self, cfg: RecipePlan) -> list[str]:
        return [str(self.bench), "-m", str(self.model), "-fa", "1", *cfg.recipe.bench_args(),
                "-p", str(self.n_prompt), "-n", str(self.n_gen), "-d", ",".join(map(str, self.depths)),
                "-t", str(self.threads), "-r", str(self.reps), *([] if self.repack else ["--repack", "0"]),
                *(["-rpc", ",".join(self.rpc)] if self.rpc else []), "-o", "json", "--progress"]


def make_plan(m: Manifest, paths: Paths, *, model: Path, kv: Sequence[str], n_prompt: int, n_gen: int,
              depth: str, threads: int | None, reps: int, repack: bool = True,
              rpc: Sequence[str] = ()) -> SpeedPlan:
    if n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0):
        raise UsageError(f"-p {n_prompt} -n {n_gen}: need a prompt or a generation length > 0 (and none < 0)")
    if reps < 1:
        raise UsageError(f"--reps {reps}: must be at least 1")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: must be at least 1")
    depths = parse_depths(depth)
    recipes = parse_recipe_list(kv, DEFAULT_KV)
    binary = preflight.tool(m, TOOL)
    _, configs = preflight.preflight(m, model, recipes)
    return SpeedPlan(bench=binary, model=model.resolve(), configs=tuple(configs), n_prompt=n_prompt,
                     n_gen=n_gen, depths=tuple(depths), threads=threads or os.cpu_count() or 1, reps=reps,
                     log=common.log_path(paths, "bench-speed"), repack=repack, rpc=tuple(rpc))


@dataclass
class ConfigRun:
    config: RecipePlan
    command: list[str]
    duration_s: float
    output: Path
    measurements: list[Measurement]


@dataclass
class SpeedReport:
    plan: SpeedPlan
    runs: list[ConfigRun] = field(default_factory=list)

    def lookup(self, pair: str, key: tuple[str, int]) -> Measurement | None:
        for run_ in self.runs:
            if run_.config.pair == pair:
                for ms in run_.measurements:
                    if ms.key == key:
                        return ms
        return None


def run(plan: SpeedPlan, ui: UI) -> SpeedReport:
    ui.info(f"log: {plan.log}")
    for var in common.ignored_env():
        ui.warn(f"{var} is set: left out of every run (each recipe says its per-layer types)")
    ui.info("the llama-bench commands, to run by hand (e.g. on another Mac with the same build):")
    for cfg in plan.configs:
        env = " ".join(f"{k}={v}" for k, v in cfg.recipe.env().items())
        ui.info("  " + (env + " " if env else "") + common.shell(plan.command(cfg)))
        for warning in cfg.warnings:
            ui.warn(f"{cfg.label}: {warning}")
    report = SpeedReport(plan)
    n = len(plan.configs)
    for i, cfg in enumerate(plan.configs, 1):
        ui.step(f"[{i}/{n}] {cfg.label}: {cfg.describe()}")
        args = plan.command(cfg)
        out = plan.log.with_name(f"{plan.log.stem}-{i}-{cfg.label.replace('/', '-')}.json")
        with common.progress(ui, f"{cfg.label}: tests") as update:
            def feed(line: str) -> None:
                if line.startswith("llama-bench: benchmark ") and line.endswith(": starting"):
                    done, _, total = line.split()[2].rstrip(":").partition("/")
                    if done.isdigit() and total.isdigit():
                        update(int(done) - 1, int(total))

            res = proc.run(args, env=common.llama_env(cfg, with_mode=True), log=plan.log, on_line=feed,
                           stdout_path=out,
                           error=BenchError, what=f"{TOOL} ({cfg.label})",
                           hint="the log has the full output; run the command above by hand to see it")
        try:
            measurements = parse_bench_json(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BenchError(f"{TOOL} ({cfg.label}) printed no usable JSON to {out}: {exc}",
                             log_path=plan.log, details=proc.relevant_lines(res.lines),
                             hint="its JSON document (stdout) is kept in that file, its log (stderr) "
                                  "in the log; run the command above by hand to see both") from exc
        problem = check_measurements(plan, cfg, measurements)
        if problem:
            raise BenchError(f"{TOOL} ({cfg.label}) {problem} in {out}", log_path=plan.log,
                             details=proc.relevant_lines(res.lines),
                             hint="run the command above by hand to see its output")
        cells = ", ".join(f"{ms.test}@{ms.n_depth} {ms.avg_ts:.2f} t/s" for ms in measurements)
        ui.ok(f"{cfg.label}: {cells} ({res.duration_s:.1f} s)")
        report.runs.append(ConfigRun(cfg, args, round(res.duration_s, 3), out, measurements))
    return report


def check_measurements(plan: SpeedPlan, cfg: RecipePlan, measurements: Sequence[Measurement]) -> str | None:
    """What is wrong with the tests of one configuration's document (None when nothing): tests
    for other cache types, or tests the plan asked for that it lacks."""
    wrong = [ms for ms in measurements if (ms.type_k, ms.type_v) != (cfg.type_k, cfg.type_v)]
    if wrong:
        return (f"reported {len(wrong)} of its {len(measurements)} tests for other cache types "
                f"(K={wrong[0].type_k} V={wrong[0].type_v}, expected K={cfg.type_k} V={cfg.type_v})")
    expected = plan.expected_tests()
    have = {ms.key for ms in measurements}
    missing = [key for key in expected if key not in have]
    if missing:
        names = ", ".join(f"{test} at depth {depth}" for test, depth in missing)
        return f"reported {len(expected) - len(missing)} of the {len(expected)} tests: no {names}"
    return None


def ratio(report: SpeedReport, ms: Measurement, reference: str) -> float | None:
    ref = report.lookup(reference, ms.key)
    if ref is None or ref.avg_ts <= 0:
        return None
    return ms.avg_ts / ref.avg_ts


def to_json(report: SpeedReport, m: Manifest) -> dict[str, Any]:
    plan = report.plan
    refs = [r for r in REFERENCES if any(run_.config.pair == r for run_ in report.runs)]
    return {
        "schema": SCHEMA,
        "turboctl_version": __version__,
        "created": now_iso(),
        "model": {"path": str(plan.model), "size_bytes": plan.model.stat().st_size},
        "n_prompt": plan.n_prompt,
        "n_gen": plan.n_gen,
        "depths": list(plan.depths),
        "threads": plan.threads,
        "reps": plan.reps,
        "rpc": list(plan.rpc),
        "llama_cpp": common.llama_info(m, plan.bench),
        "results": [
            {
                "label": run_.config.label,
                "type_k": run_.config.type_k,
                "type_v": run_.config.type_v,
                "bits_per_value": run_.config.bits_per_value,
                "recipe": {"mode": run_.config.recipe.mode, "rules": run_.config.recipe.rules.canonical or None,
                           "pairs": [f"{k}/{v}" for k, v in run_.config.pairs()],
                           "env": run_.config.recipe.env()},
                "command": run_.command,
                "command_line": common.shell(run_.command),
                "duration_s": run_.duration_s,
                "raw_output": str(run_.output),
                "tests": [
                    {
                        "test": ms.test, "n_prompt": ms.n_prompt, "n_gen": ms.n_gen, "depth": ms.n_depth,
                        "avg_ts": ms.avg_ts, "stddev_ts": ms.stddev_ts, "samples_ts": list(ms.samples_ts),
                        **{f"ratio_vs_{r.split('/')[0]}": ratio(report, ms, r) for r in refs},
                    }
                    for ms in run_.measurements
                ],
            }
            for run_ in report.runs
        ],
        "log": str(plan.log),
    }


def render(report: SpeedReport, m: Manifest, ui: UI) -> None:
    plan = report.plan
    ui.kv("bench speed", [
        ("model", str(plan.model)),
        ("tests", f"pp{plan.n_prompt} and tg{plan.n_gen} at depth {', '.join(map(str, plan.depths))}; "
                  f"repetitions {plan.reps}; threads {plan.threads}; flash attention on"),
        ("llama.cpp", "; ".join(m.version) or m.pin.tag),
    ])
    refs = [r for r in REFERENCES if any(run_.config.pair == r for run_ in report.runs)]
    columns = ["K/V", "bits/value", "test", "depth", "t/s", *[f"vs {r.split('/')[0]}" for r in refs]]
    rows = []
    for run_ in report.runs:
        for ms in sorted(run_.measurements, key=lambda x: (x.n_depth, x.n_gen > 0)):
            cells = [run_.config.label, f"{run_.config.bits_per_value:g}", ms.test, str(ms.n_depth),
                     f"{ms.avg_ts:.2f} ± {ms.stddev_ts:.2f}"]
            for r in refs:
                value = ratio(report, ms, r)
                cells.append(f"{value:.3f}" if value is not None else "")
            rows.append(cells)
    ui.table("llama-bench tokens per second", columns, rows)


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class _Point:
    label: str
    bits: float
    test: str
    generation: bool  # a tg test (else pp)
    depth: int
    avg: float
    stddev: float
    ratios: tuple[float | None, ...]


def _points(f: Fields) -> tuple[list[str], list[_Point]]:
    results = f.items("results")
    if not results:
        raise BenchError(f"a {SCHEMA} document without results: nothing to report")
    tests = [t for r in results for t in r.items("tests")]
    refs = sorted({k for t in tests for k in t.data if k.startswith("ratio_vs_")})
    points = []
    for r in results:
        label, bits = r.text("label"), r.num("bits_per_value")
        for t in r.items("tests"):
            n_prompt, n_gen = t.integer("n_prompt"), t.integer("n_gen")
            if (n_prompt > 0) == (n_gen > 0):
                raise BenchError(f"a {SCHEMA} document's {t.where}: a test of {n_prompt} prompt and {n_gen} "
                                 "generated tokens (bench speed runs pp and tg tests apart, each > 0)")
            points.append(_Point(label, bits, t.text("test"), n_gen > 0, t.integer("depth"), t.num("avg_ts"),
                                 t.num("stddev_ts"), tuple(t.opt_num(k) for k in refs)))
    return refs, points


def report_section(doc: Mapping[str, Any]) -> Section:
    """The report's section of a ``bench speed`` document: the table, and generation and prompt
    tokens/s against the depth (a line per configuration)."""
    f = Fields.of(doc)
    refs, points = _points(f)
    model = Path(f.sub("model").text("path")).name
    lines = [f"Model `{model}`: pp{f.integer('n_prompt')} and tg{f.integer('n_gen')} at depth "
             f"{', '.join(map(str, f.ints('depths')))}; {f.integer('reps')} repetition(s), "
             f"{f.integer('threads')} thread(s); llama-bench, flash attention on.", ""]
    rows = [[p.label, f"{p.bits:g}", p.test, str(p.depth), f"{p.avg:.2f} ± {p.stddev:.2f}",
             *[f"{r:.3f}" if r is not None else "" for r in p.ratios]]
            for p in sorted(points, key=lambda p: (p.generation, p.depth))]
    lines.append(md_table(["K/V", "bits/value", "test", "depth", "tokens/s",
                           *[f"vs {r.removeprefix('ratio_vs_')}" for r in refs]], rows))
    labels = list(dict.fromkeys(p.label for p in points))

    def plot(generation: bool) -> Any:
        def draw(path: Path) -> None:
            what = "generation" if generation else "prompt processing"
            fig, ax = figure(f"{what} speed vs depth\n{model}", "depth (tokens already in the KV cache)",
                             f"{what} tokens/s")
            for label in labels:
                pts = sorted((p for p in points if p.label == label and p.generation == generation),
                             key=lambda p: p.depth)
                if pts:
                    ax.errorbar([p.depth for p in pts], [p.avg for p in pts], yerr=[p.stddev for p in pts],
                                marker="o", capsize=3, label=f"{label} ({pts[0].test})")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            save(fig, path)
        return draw

    plots = {}
    if any(p.generation for p in points):
        plots["generation-vs-depth.png"] = plot(True)
    if any(not p.generation for p in points):
        plots["prompt-vs-depth.png"] = plot(False)
    return Section(title="Prompt and generation speed (bench speed)", markdown="\n".join(lines), plots=plots)
