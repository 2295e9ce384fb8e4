"""``turboctl bench kld``: the quality table, KL divergence of every KV configuration against
an f16-KV run of the same model on the same text (llama-perplexity).

One base run writes the f16 logits (``--kl-divergence-base``); every configuration then
runs ``--kl-divergence`` against them, f16 itself included: its KLD must come out ~0, which
checks the pipeline (same model, text, context, chunks and threads in every run).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, preflight, proc
from ..build import gitrepo
from ..build.manifest import Manifest, now_iso
from ..errors import BenchError, UsageError
from ..kv.config import is_turbo
from ..kv.recipe import RecipePlan, parse_recipe_list
from ..paths import Paths
from ..ui import UI
from . import common
from .report import Fields, Section, figure, md_table, save

SCHEMA = "turboctl.bench.kld/1"
DEFAULT_KV = ("f16", "q8_0", "q4_0", "iq4_nl", "turbo4", "turbo3", "turbo2", "q8_0/turbo3")
TOOL = "llama-perplexity"
# f16 against its own f16 base: the base stores log-probabilities as 16-bit values, so the
# KLD of identical logits is not exactly 0, but far below any KV quantization effect.
PIPELINE_KLD_MAX = 0.0005
ROTATION_NOTE = (
    "q8_0, q4_0, q4_1, iq4_nl, q5_0 and q5_1 K/V are rotated by upstream llama.cpp b11312 "
    "(attn_rot: a Hadamard rotation, on by default for quantized cache types when the head dim is "
    "a multiple of 64): these rows are 'rotated q4_0' etc. The turbo types use the patch series' "
    "randomized Hadamard rotation instead.")

_NUM = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf|-nan|-inf))"
_PM = rf"{_NUM}\s*±\s*{_NUM}"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "ppl": re.compile(rf"Mean PPL\(Q\)\s*:\s*{_PM}"),
    "ppl_base": re.compile(rf"Mean PPL\(base\)\s*:\s*{_PM}"),
    "mean_kld": re.compile(rf"Mean\s+KLD:\s*{_PM}"),
    "kld_max": re.compile(rf"Maximum KLD:\s*{_NUM}"),
    "kld_99": re.compile(rf"99\.0%\s+KLD:\s*{_NUM}"),
    "kld_median": re.compile(rf"Median\s+KLD:\s*{_NUM}"),
    "rms_dp": re.compile(rf"RMS Δp\s*:\s*{_PM}\s*%"),
    "same_top_p": re.compile(rf"Same top p:\s*{_PM}\s*%"),
}
_REQUIRED = ("ppl", "mean_kld", "kld_99", "same_top_p")
# the line each required figure is read from, as llama-perplexity prints it
_LINE_NAMES = {"ppl": "Mean PPL(Q)", "mean_kld": "Mean    KLD", "kld_99": "99.0%   KLD",
               "same_top_p": "Same top p"}
_CHUNKS = re.compile(r"(?:kl_divergence: computing over|calculating perplexity over) (\d+) chunks, n_ctx=(\d+)")
_CHUNK_ROW = re.compile(r"^\s*(\d+)\s+[-+\d.]")
_CHUNK_HEADER = re.compile(r"^chunk\s+PPL\b")
_FINAL = re.compile(rf"Final estimate: PPL = {_NUM} \+/- {_NUM}")
# llama-perplexity's kl_divergence() computes no statistics over fewer scored tokens
MIN_SCORED_TOKENS = 100
# an error line of llama.cpp's logger ("0.00.072.874 E llama_perplexity: failed to create context")
_ERROR_LINE = re.compile(r"^(?:\d+\.\d+\.\d+\.\d+ )?E |\bfailed\b", re.IGNORECASE)
_TOO_SHORT = re.compile(r"you need at least (\d+) tokens to evaluate perplexity with a context of (\d+)")
_TOKENIZED = re.compile(r"tokenizes to only (\d+) tokens")
LOST_OUTPUT_HINT = (
    "it exited with code 0 and reported no error, so the last lines of its output were lost at exit: "
    "llama.cpp b11312 prints its log from a background thread that nothing flushes when the program "
    "ends. The patch series flushes it at exit (patch \"common: flush the log before the program "
    "exits\"): rebuild with turboctl build; if this build already has that patch, report it with this log")


@dataclass(frozen=True)
class KldFigures:
    """The statistics llama-perplexity prints at the end of a --kl-divergence run."""

    ppl: float
    ppl_error: float
    mean_kld: float
    mean_kld_error: float
    kld_99: float
    same_top_p: float
    same_top_p_error: float
    ppl_base: float | None = None
    ppl_base_error: float | None = None
    kld_max: float | None = None
    kld_median: float | None = None
    rms_dp: float | None = None
    rms_dp_error: float | None = None
    chunks: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _find(text: str) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for key, pattern in _PATTERNS.items():
        matches = pattern.findall(text)
        if matches:
            last = matches[-1]
            found[key] = last if isinstance(last, tuple) else (last,)
    return found


def missing_figures(text: str) -> list[str]:
    """The lines of the required statistics that a --kl-divergence output lacks, by the name
    llama-perplexity prints them under (empty when it has them all)."""
    found = _find(text)
    return [_LINE_NAMES[k] for k in _REQUIRED if k not in found]


def parse_kld_output(text: str) -> KldFigures | None:
    """The figures of a --kl-divergence run, or None when it printed no statistics (see
    :func:`explain_kld_output` for why)."""
    found = _find(text)
    if any(k not in found for k in _REQUIRED):
        return None
    chunks = _CHUNKS.findall(text)

    def num(key: str, i: int = 0) -> float | None:
        return float(found[key][i]) if key in found else None

    return KldFigures(
        ppl=float(found["ppl"][0]), ppl_error=float(found["ppl"][1]),
        mean_kld=float(found["mean_kld"][0]), mean_kld_error=float(found["mean_kld"][1]),
        kld_99=float(found["kld_99"][0]),
        same_top_p=float(found["same_top_p"][0]), same_top_p_error=float(found["same_top_p"][1]),
        ppl_base=num("ppl_base"), ppl_base_error=num("ppl_base", 1),
        kld_max=num("kld_max"), kld_median=num("kld_median"),
        rms_dp=num("rms_dp"), rms_dp_error=num("rms_dp", 1),
        chunks=int(chunks[-1][0]) if chunks else None)


def parse_base_output(text: str) -> tuple[float, float, int | None] | None:
    """(PPL, ±, chunks) of the base run, or None when it printed no final estimate (see
    :func:`explain_base_output` for why)."""
    finals = _FINAL.findall(text)
    if not finals:
        return None
    chunks = _CHUNKS.findall(text)
    ppl, err = finals[-1]
    return float(ppl), float(err), int(chunks[-1][0]) if chunks else None


# --------------------------------------------------------------------------- why figures are missing
@dataclass(frozen=True)
class Missing:
    """Why a run printed no usable figures: ``message`` says what is missing and where the
    output stops, ``hint`` what to do, ``details`` the lines that show it."""

    message: str
    hint: str
    details: list[str]


def _error_lines(lines: Sequence[str]) -> list[str]:
    return [ln for ln in lines if _ERROR_LINE.search(ln)]


def _tail(lines: Sequence[str], n: int = 8) -> list[str]:
    """The last ``n`` non-blank lines."""
    return [ln.rstrip() for ln in lines if ln.strip()][-n:]


def _ends(lines: Sequence[str]) -> str:
    tail = _tail(lines, 1)
    if not tail:
        return "it printed nothing"
    last = tail[0].strip()
    return f'its output ends with "{last if len(last) <= 60 else last[:57] + "..."}"'


def _quoted(names: Sequence[str]) -> str:
    quoted = [f'"{n}"' for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _chunk_rows(lines: Sequence[str]) -> list[int]:
    """The chunk numbers of the per-chunk table of a --kl-divergence run."""
    rows: list[int] = []
    in_table = False
    for ln in lines:
        if _CHUNK_HEADER.match(ln):
            in_table = True
        elif in_table and (m := _CHUNK_ROW.match(ln)):
            rows.append(int(m.group(1)))
        elif in_table and ln.strip():
            in_table = False
    return rows


def explain_kld_output(text: str, label: str) -> Missing:
    """Why the output of a --kl-divergence run (exit code 0) lacks the required statistics:
    an error it reported, too few scored tokens, or lines lost at exit."""
    lines = text.splitlines()
    missing = missing_figures(text)
    what = ("no KL divergence statistics" if len(missing) == len(_REQUIRED)
            else "incomplete KL divergence statistics")
    head = f"{TOOL} ({label}) printed {what}: no {_quoted(missing)} line"
    errors = _error_lines(lines)
    if errors:
        return Missing(f"{head}; it reported: {errors[0].strip()}",
                       "the log has its full output; run the command above by hand to see it", errors[:10])
    announced = _CHUNKS.findall(text)
    rows = _chunk_rows(lines)
    tail = _tail(lines)
    if announced:
        n_chunks, n_ctx = int(announced[-1][0]), int(announced[-1][1])
        per_chunk = n_ctx - 1 - n_ctx // 2
        scored = n_chunks * per_chunk
        if scored < MIN_SCORED_TOKENS:
            return Missing(
                f"{head}: it scored only {scored} tokens ({n_chunks} chunk(s) x {per_chunk})",
                f"llama-perplexity computes the statistics over at least {MIN_SCORED_TOKENS} scored tokens "
                f"(the second half of each chunk of --ctx {n_ctx}): use more --chunks, a larger --ctx "
                "or a longer corpus", tail)
        where = f"after chunk {rows[-1]} of {n_chunks}" if rows else f"before chunk 1 of {n_chunks}"
        return Missing(f"{head}; {_ends(lines)} ({where})", LOST_OUTPUT_HINT, tail)
    return Missing(f'{head}; {_ends(lines)} (before its "computing over N chunks" line)', LOST_OUTPUT_HINT, tail)


def explain_base_output(text: str, base_file: Path) -> Missing:
    """Why the base run (exit code 0) printed no final estimate or wrote no base file."""
    lines = text.splitlines()
    if _FINAL.search(text):
        return Missing(f"{TOOL} (base f16) printed its final estimate but there is no base file {base_file}",
                       f"it writes the file given to --kl-divergence-base; check {base_file.parent}",
                       _error_lines(lines)[:10] or _tail(lines, 3))
    head = f'{TOOL} (base f16) printed no "Final estimate: PPL" line'
    if short := _TOO_SHORT.search(text):
        got = _TOKENIZED.search(text)
        size = f" tokenizes to {got.group(1)} tokens, but" if got else ""
        return Missing(f"{head}: the corpus is too short for --ctx {short.group(2)}",
                       f"the corpus{size} needs at least {short.group(1)} tokens (2 x --ctx); use a longer "
                       "corpus or a smaller --ctx", _error_lines(lines)[:10])
    errors = _error_lines(lines)
    if errors:
        return Missing(f"{head}; it reported: {errors[0].strip()}",
                       "the log has its full output; run the command above by hand to see it", errors[:10])
    announced = _CHUNKS.findall(text)
    where = (f" (after its \"calculating perplexity over {announced[-1][0]} chunks\" line)" if announced
             else " (before its \"calculating perplexity over N chunks\" line)")
    return Missing(f"{head}; {_ends(lines)}{where}", LOST_OUTPUT_HINT, _tail(lines))


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class KldPlan:
    perplexity: Path
    model: Path
    corpus: Path
    corpus_sha256: str
    ctx: int
    chunks: int | None
    threads: int
    configs: tuple[RecipePlan, ...]
    base_file: Path
    keep_base: bool
    log: Path
    repack: bool = True  # False: --no-repack (where llama.cpp's CPU weight repacking fails)

    def _common(self) -> list[str]:
        args = [str(self.perplexity), "-m", str(self.model), "-f", str(self.corpus), "-c", str(self.ctx)]
        if self.chunks is not None:
            args += ["--chunks", str(self.chunks)]
        if not self.repack:
            args.append("--no-repack")
        return [*args, "-t", str(self.threads)]

    def base_command(self) -> list[str]:
        return [*self._common(), "-fa", "on", "-ctk", "f16", "-ctv", "f16",
                "--kl-divergence-base", str(self.base_file)]

    def candidate_command(self, cfg: RecipePlan) -> list[str]:
        return [*self._common(), *cfg.recipe.llama_args(),
                "--kl-divergence-base", str(self.base_file), "--kl-divergence"]


def make_plan(m: Manifest, paths: Paths, *, model: Path, corpus: Path, ctx: int, chunks: int | None,
              threads: int | None, kv: Sequence[str], keep_base: bool, repack: bool = True) -> KldPlan:
    if ctx < 16:
        raise UsageError(f"--ctx {ctx}: must be at least 16")
    if chunks is not None and chunks < 1:
        raise UsageError(f"--chunks {chunks}: must be at least 1")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: must be at least 1")
    if not corpus.is_file():
        raise UsageError(f"--corpus {corpus}: file not found")
    recipes = parse_recipe_list(kv, DEFAULT_KV)
    binary = preflight.tool(m, TOOL)
    _, configs = preflight.preflight(m, model, recipes)
    log = common.log_path(paths, "bench-kld")
    base_dir = paths.cache / "kld"
    base_dir.mkdir(parents=True, exist_ok=True)
    base_file = base_dir / f"{model.stem}.{corpus.stem}.c{ctx}.{log.stem.removeprefix('bench-kld-')}.kld"
    return KldPlan(perplexity=binary, model=model.resolve(), corpus=corpus.resolve(),
                   corpus_sha256=gitrepo.file_sha256(corpus), ctx=ctx, chunks=chunks,
                   threads=threads or os.cpu_count() or 1, configs=tuple(configs), base_file=base_file,
                   keep_base=keep_base, log=log, repack=repack)


# --------------------------------------------------------------------------- run
@dataclass
class RunResult:
    config: RecipePlan
    command: list[str]
    duration_s: float
    figures: KldFigures


@dataclass
class KldReport:
    plan: KldPlan
    base_command: list[str]
    base_ppl: float
    base_ppl_error: float
    base_chunks: int | None
    base_size: int
    base_duration_s: float
    results: list[RunResult] = field(default_factory=list)


class _Chunks:
    """Chunk progress from the per-chunk rows of a --kl-divergence run."""

    def __init__(self, update: Any) -> None:
        self.total: int | None = None
        self.update = update

    def feed(self, line: str) -> None:
        if m := _CHUNKS.search(line):
            self.total = int(m.group(1))
            self.update(0, self.total)
        elif self.total and (m := _CHUNK_ROW.match(line)):
            self.update(int(m.group(1)), self.total)


def _run(plan: KldPlan, args: list[str], label: str, ui: UI) -> proc.Result:
    with common.progress(ui, f"{label}: chunks") as update:
        chunks = _Chunks(update)
        return proc.run(args, env=common.llama_env(), log=plan.log, on_line=chunks.feed, error=BenchError,
                        what=f"{TOOL} ({label})",
                        hint="the log has the full output; run the command above by hand to see it")


def run(plan: KldPlan, ui: UI) -> KldReport:
    """The base run, then every configuration; the base file is removed at the end unless
    ``keep_base`` (also when a run fails)."""
    ui.info(f"log: {plan.log}")
    for var in common.ignored_env():
        ui.warn(f"{var} is set: left out of every run (each recipe says its per-layer types)")
    for cfg in plan.configs:
        for warning in cfg.warnings:
            ui.warn(f"{cfg.label}: {warning}")
    n = len(plan.configs)
    try:
        ui.step(f"[0/{n}] base: f16 K/V logits → {plan.base_file}")
        base_args = plan.base_command()
        res = _run(plan, base_args, "base f16", ui)
        parsed = parse_base_output(res.output)
        if parsed is None or not plan.base_file.is_file():
            why = explain_base_output(res.output, plan.base_file)
            raise BenchError(why.message, log_path=plan.log, details=why.details, hint=why.hint)
        size = plan.base_file.stat().st_size
        ui.ok(f"base PPL {parsed[0]:.4f} ± {parsed[1]:.4f}; base logits {size / 2**20:.1f} MiB "
              f"({res.duration_s:.1f} s)")
        report = KldReport(plan, base_args, parsed[0], parsed[1], parsed[2], size, round(res.duration_s, 3))
        for i, cfg in enumerate(plan.configs, 1):
            ui.step(f"[{i}/{n}] {cfg.label}: {cfg.describe()} ({cfg.bits_per_value:g} bits/value)")
            args = plan.candidate_command(cfg)
            res = _run(plan, args, cfg.label, ui)
            figures = parse_kld_output(res.output)
            if figures is None:
                why = explain_kld_output(res.output, cfg.label)
                raise BenchError(why.message, log_path=plan.log, details=why.details, hint=why.hint)
            ui.ok(f"{cfg.label}: mean KLD {figures.mean_kld:.6f}, same top {figures.same_top_p:.2f} %, "
                  f"PPL {figures.ppl:.4f} ({res.duration_s:.1f} s)")
            report.results.append(RunResult(cfg, args, round(res.duration_s, 3), figures))
        return report
    finally:
        if not plan.keep_base and plan.base_file.exists():
            plan.base_file.unlink()


# --------------------------------------------------------------------------- output
def pipeline_check(report: KldReport) -> dict[str, Any] | None:
    for r in report.results:
        if r.config.pair == "f16/f16":
            ok = abs(r.figures.mean_kld) <= PIPELINE_KLD_MAX
            return {"ok": ok, "f16_mean_kld": r.figures.mean_kld, "limit": PIPELINE_KLD_MAX}
    return None


def notes(report: KldReport) -> list[str]:
    out: list[str] = []
    if any(r.config.upstream_rotated() for r in report.results):
        if os.environ.get("LLAMA_ATTN_ROT_DISABLE"):
            out.append("LLAMA_ATTN_ROT_DISABLE is set: upstream's attn_rot was OFF in these runs "
                       "(q8_0/q4_0/iq4_nl rows are unrotated)")
        else:
            out.append(ROTATION_NOTE)
    check = pipeline_check(report)
    if check is not None and not check["ok"]:
        out.append(f"pipeline check FAILED: f16 against its own f16 base gave mean KLD "
                   f"{check['f16_mean_kld']:.6f} (expected ~0, at most {PIPELINE_KLD_MAX}): the runs "
                   "differ by more than the KV cache")
    return out


def _recipe_json(plan: RecipePlan) -> dict[str, Any]:
    """What a recipe row ran: its mode and rules, the distinct K/V pairs its layers use."""
    return {"mode": plan.recipe.mode, "rules": plan.recipe.rules.canonical or None,
            "pairs": [f"{k}/{v}" for k, v in plan.pairs()], "warnings": list(plan.warnings)}


def to_json(report: KldReport, m: Manifest) -> dict[str, Any]:
    plan = report.plan
    chunks_run = report.base_chunks
    return {
        "schema": SCHEMA,
        "turboctl_version": __version__,
        "created": now_iso(),
        "model": {"path": str(plan.model), "size_bytes": plan.model.stat().st_size},
        "corpus": {"path": str(plan.corpus), "name": plan.corpus.name, "sha256": plan.corpus_sha256,
                   "size_bytes": plan.corpus.stat().st_size},
        "ctx": plan.ctx,
        "chunks": plan.chunks,
        "chunks_run": chunks_run,
        "threads": plan.threads,
        "llama_cpp": common.llama_info(m, plan.perplexity),
        "attn_rot_disabled": bool(os.environ.get("LLAMA_ATTN_ROT_DISABLE")),
        "base": {
            "command": report.base_command,
            "command_line": common.shell(report.base_command),
            "ppl": report.base_ppl,
            "ppl_error": report.base_ppl_error,
            "logits_file": str(plan.base_file),
            "size_bytes": report.base_size,
            "kept": plan.keep_base,
            "duration_s": report.base_duration_s,
        },
        "results": [
            {
                "label": r.config.label,
                "type_k": r.config.type_k,
                "type_v": r.config.type_v,
                "bits_per_value": r.config.bits_per_value,
                "recipe": _recipe_json(r.config),
                "upstream_rotated": r.config.upstream_rotated(),
                "command": r.command,
                "command_line": common.shell(r.command),
                "duration_s": r.duration_s,
                **r.figures.to_dict(),
            }
            for r in report.results
        ],
        "pipeline_check": pipeline_check(report),
        "notes": notes(report),
        "log": str(plan.log),
    }


def render(report: KldReport, m: Manifest, ui: UI) -> None:
    plan = report.plan
    chunks = f"{report.base_chunks}" if report.base_chunks is not None else "?"
    if plan.chunks is None:
        chunks += " (all)"
    ui.kv("bench kld", [
        ("model", str(plan.model)),
        ("corpus", f"{plan.corpus.name} sha256:{plan.corpus_sha256}"),
        ("ctx / chunks / threads", f"{plan.ctx} / {chunks} / {plan.threads}"),
        ("llama.cpp", "; ".join(m.version) or m.pin.tag),
        ("base", f"f16 K/V, PPL {report.base_ppl:.4f} ± {report.base_ppl_error:.4f}; logits "
                 f"{report.base_size / 2**20:.1f} MiB" + (f" kept at {plan.base_file}" if plan.keep_base
                                                          else " (deleted)")),
    ])
    rows = []
    for r in report.results:
        f = r.figures
        rows.append([
            r.config.label + (" *" if r.config.upstream_rotated() else ""),
            f"{r.config.bits_per_value:g}",
            f"{f.mean_kld:.6f} ± {f.mean_kld_error:.6f}",
            f"{f.kld_99:.6f}",
            f"{f.same_top_p:.3f} ± {f.same_top_p_error:.3f}",
            f"{f.ppl:.4f} ± {f.ppl_error:.4f}",
        ])
    ui.table("KL divergence against f16 K/V", ["K/V", "bits/value", "mean KLD", "99.0% KLD",
                                                "same top p %", "PPL"], rows)
    for note in notes(report):
        ui.info(("* " if note == ROTATION_NOTE else "note: ") + note)



# --------------------------------------------------------------------------- report
def _kind(r: Fields) -> str:
    """upstream / turbo / recipe: how a result is marked on the Pareto plot."""
    recipe = r.sub("recipe")
    if recipe.opt_text("rules") is not None or recipe.opt_integer("mode") is not None:
        return "recipe"
    return "turbo" if is_turbo(r.text("type_k")) or is_turbo(r.text("type_v")) else "upstream"


_KIND_STYLE = {"upstream": ("o", "tab:blue", "upstream llama.cpp types"),
               "turbo": ("^", "tab:red", "TurboQuant types (turbo2/3/4, alone or paired)"),
               "recipe": ("s", "tab:green", "per-layer recipes")}


@dataclass(frozen=True)
class _Row:
    label: str
    bits: float
    kind: str
    rotated: bool
    mean: float
    mean_err: float
    k99: float
    top: float
    top_err: float
    ppl: float
    ppl_err: float


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the points that no other point beats on both bits/value and KLD (fewer or
    equal bits and lower or equal KLD, one of them strictly), by bits/value."""
    front = []
    for i, (b, k) in enumerate(points):
        beaten = any((b2 <= b and k2 <= k) and (b2 < b or k2 < k) for j, (b2, k2) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def report_section(doc: Mapping[str, Any]) -> Section:
    """The report's section of a ``bench kld`` document: the table and the Pareto plot (mean KLD
    against bits/value; upstream types, turbo types and per-layer recipes marked apart)."""
    f = Fields.of(doc)
    base = f.sub("base")
    corpus = f.sub("corpus")
    results = f.items("results")
    if not results:
        raise BenchError(f"a {SCHEMA} document without results: nothing to report")
    base_ppl = base.num("ppl")
    rows_data = [_Row(label=r.text("label"), bits=r.num("bits_per_value"), kind=_kind(r),
                      rotated=r.flag("upstream_rotated"), mean=r.num("mean_kld"), mean_err=r.num("mean_kld_error"),
                      k99=r.num("kld_99"), top=r.num("same_top_p"), top_err=r.num("same_top_p_error"),
                      ppl=r.num("ppl"), ppl_err=r.num("ppl_error")) for r in results]
    front = set(pareto_front([(x.bits, x.mean) for x in rows_data]))
    chunks = f.opt_integer("chunks_run")
    lines = [
        f"Model `{Path(f.sub('model').text('path')).name}`, corpus `{corpus.text('name')}` "
        f"(sha256 `{corpus.text('sha256')[:16]}`), context {f.integer('ctx')}, "
        f"{chunks if chunks is not None else '?'} chunk(s), {f.integer('threads')} thread(s). "
        f"Base: f16 K/V, PPL {base_ppl:.4f} ± {base.num('ppl_error'):.4f}.", ""]
    rows = []
    for i, x in enumerate(rows_data):
        rows.append([x.label + (" *" if x.rotated else ""), f"{x.bits:g}",
                     f"{x.mean:.6f} ± {x.mean_err:.6f}", f"{x.k99:.6f}",
                     f"{x.top:.3f} ± {x.top_err:.3f}", f"{x.ppl:.4f} ± {x.ppl_err:.4f}",
                     f"{x.ppl / base_ppl:.4f}" if base_ppl > 0 else "", "yes" if i in front else ""])
    lines.append(md_table(["K/V", "bits/value", "mean KLD", "99.0% KLD", "same top token %", "PPL",
                           "PPL / f16 base", "Pareto front"], rows))
    lines.append("")
    check = f.opt_sub("pipeline_check")
    if check is not None:
        lines.append(f"Pipeline check (f16 against its own base): mean KLD {check.num('f16_mean_kld'):.6f}, "
                     f"limit {check.num('limit'):g}: {'ok' if check.flag('ok') else 'FAILED'}.")
        lines.append("")
    for note in f.strs("notes"):
        lines += [("\\* " if note == ROTATION_NOTE else "Note: ") + note, ""]
    positive = [x for x in rows_data if x.mean > 0]
    log_scale = bool(positive) and max(x.mean for x in positive) / min(x.mean for x in positive) > 10
    off_axis = [x for x in rows_data if x.mean <= 0] if log_scale else []
    if off_axis:
        lines += ["Not on the plot's log axis (mean KLD <= 0): " + ", ".join(
            f"{x.label} ({x.mean:.6f})" for x in off_axis) + ".", ""]

    def draw(path: Path) -> None:
        fig, ax = figure(f"KL divergence vs bits/value\n{Path(f.sub('model').text('path')).name}",
                         "bits per K/V value (including block scales)", "mean KLD against f16 K/V")
        shown = [x for x in rows_data if not (log_scale and x.mean <= 0)]
        for kind, (marker, color, name) in _KIND_STYLE.items():
            pts = [x for x in shown if x.kind == kind]
            if pts:
                ax.scatter([x.bits for x in pts], [x.mean for x in pts], marker=marker, color=color,
                           s=50, label=name, zorder=3)
        for n, x in enumerate(sorted(shown, key=lambda x: (x.bits, x.mean))):  # labels above and below in turn
            ax.annotate(x.label, (x.bits, x.mean), textcoords="offset points", xytext=(5, 6 if n % 2 == 0 else -12),
                        fontsize=8)
        on_front = [rows_data[i] for i in sorted(front, key=lambda i: rows_data[i].bits)
                    if not (log_scale and rows_data[i].mean <= 0)]
        if len(on_front) > 1:
            ax.step([x.bits for x in on_front], [x.mean for x in on_front], where="post", linestyle="--",
                    color="gray", alpha=0.6, label="Pareto front", zorder=2)
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        save(fig, path)

    return Section(title="KL divergence against f16 K/V (bench kld)", markdown="\n".join(lines),
                   plots={"pareto.png": draw})
