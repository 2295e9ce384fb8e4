"""``turboctl bench all``: every benchmark on one model, one after the other, with one set of
settings, and their documents together (one JSON document, one report).

Steps, in order: memory, speed, kld (only with a corpus), niah, prompts, long-session; ``only``
picks some. Each finished step's document is cached (:class:`turboctl.bench.store.Store`, keyed on
the build, the model's sha256, the step and its settings), so an interrupted ``bench all`` resumes
at the step it was in; the served steps also resume inside a step (their cells are cached).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..build.manifest import Manifest, now_iso
from ..errors import UsageError
from ..paths import Paths
from ..ui import UI
from . import kld, memory, niah, prompts, session, speed, store

NAME = "all"
SCHEMA = "turboctl.bench.all/1"
STEP_VERSION = 1


@dataclass(frozen=True)
class Target:
    """The model and what a profile adds: its recipe (a configuration) and llama-server arguments."""

    model: Path
    extra_kv: tuple[str, ...] = ()
    server_args: tuple[str, ...] = ()

    @property
    def repack(self) -> bool:
        return "--no-repack" not in self.server_args and "-nr" not in self.server_args


@dataclass(frozen=True)
class SuiteSettings:
    """Every step's settings (``None``: the step's own default)."""

    kv: tuple[str, ...] = ()
    threads: int | None = None
    no_repack: bool = False
    ctx_list: str | None = None                     # memory
    n_prompt: int = 512                             # speed
    n_gen: int = 128
    depth: str = "0,4096"
    reps: int = 5
    corpus: Path | None = None                      # kld
    kld_ctx: int = 2048
    chunks: int | None = None
    niah_ctx_list: str | None = None                # niah
    depths: str | None = None
    needles: int = 1
    niah_tokens: int = 32
    prompts: str | None = None                      # prompts
    prompt_ctx: int = 4096
    prompt_tokens: int | None = None
    turns: int | None = None                        # long-session
    session_tokens: int = 160
    session_ctx: int = 8192


Step = Callable[[Manifest, Paths, UI, Target, SuiteSettings], dict[str, Any]]


def _memory(m: Manifest, paths: Paths, ui: UI, t: Target, s: SuiteSettings) -> dict[str, Any]:
    plan = memory.make_plan(m, paths, ui, model=t.model, kv=s.kv, ctx_list=s.ctx_list, extra_kv=t.extra_kv,
                            extra_args=t.server_args)
    return memory.to_json(memory.run(plan, m, paths, ui), m)


def _speed(m: Manifest, paths: Paths, ui: UI, t: Target, s: SuiteSettings) -> dict[str, Any]:
    plan = speed.make_plan(m, paths, model=t.model, kv=[*(s.kv or speed.DEFAULT_KV), *t.extra_kv], n_prompt=s.n_prompt,
                           n_gen=s.n_gen, depth=s.depth, threads=s.threads, reps=s.reps,
                           repack=t.repack and not s.no_repack)
    return speed.to_json(speed.run(plan, ui), m)


def _kld(m: Manifest, paths: Paths, ui: UI, t: Target, s: SuiteSettings) -> dict[str, Any]:
    assert s.corpus is not None
    plan = kld.make_plan(m, paths, model=t.model, corpus=s.corpus, ctx=s.kld_ctx, chunks=s.chunks, threads=s.threads,
                         kv=[*(s.kv or kld.DEFAULT_KV), *t.extra_kv], keep_base=False,
                         repack=t.repack and not s.no_repack)
    return kld.to_json(kld.run(plan, ui), m)


def _prompts(m: Manifest, paths: Paths, ui: UI, t: Target, s: SuiteSettings) -> dict[str, Any]:
    return prompts.document(m, paths, ui, model=t.model, kv=s.kv, extra_kv=t.extra_kv, extra_args=t.server_args,
                            context=s.prompt_ctx, only=s.prompts, max_tokens=s.prompt_tokens)


def _niah(m: Manifest, paths: Paths, ui: UI, t: Target, s: SuiteSettings) -> dict[str, Any]:
    plan = niah.make_plan(m, paths, ui, model=t.model, kv=s.kv, ctx_list=s.niah_ctx_list, depths=s.depths,
                          needles=s.needles, max_tokens=s.niah_tokens, extra_kv=t.extra_kv, extra_args=t.server_args)
    return niah.to_json(niah.run(plan, m, paths, ui), m)


def _session(m: Manifest, paths: Paths, ui: UI, t: Target, s: SuiteSettings) -> dict[str, Any]:
    plan = session.make_plan(m, paths, ui, model=t.model, kv=s.kv, turns=s.turns, max_tokens=s.session_tokens,
                             context=s.session_ctx, extra_kv=t.extra_kv, extra_args=t.server_args)
    return session.to_json(session.run(plan, m, paths, ui), m)


STEPS: dict[str, Step] = {"memory": _memory, "speed": _speed, "kld": _kld, "niah": _niah, "prompts": _prompts,
                          "long-session": _session}


def step_settings(name: str, t: Target, s: SuiteSettings) -> dict[str, Any]:
    """What a step's cached document depends on besides the build and the model."""
    common = {"kv": list(s.kv), "extra_kv": list(t.extra_kv), "server_args": list(t.server_args),
              "threads": s.threads, "no_repack": s.no_repack, "step_version": STEP_VERSION}
    own_by: dict[str, dict[str, Any]] = {
        "memory": {"ctx_list": s.ctx_list},
        "speed": {"n_prompt": s.n_prompt, "n_gen": s.n_gen, "depth": s.depth, "reps": s.reps},
        "kld": {"corpus": str(s.corpus) if s.corpus else None, "ctx": s.kld_ctx, "chunks": s.chunks},
        "niah": {"ctx_list": s.niah_ctx_list, "depths": s.depths, "needles": s.needles, "max_tokens": s.niah_tokens},
        "prompts": {"prompts": s.prompts, "ctx": s.prompt_ctx, "max_tokens": s.prompt_tokens},
        "long-session": {"turns": s.turns, "max_tokens": s.session_tokens, "ctx": s.session_ctx},
    }
    return {**common, **own_by[name]}


def parse_only(text: str | None) -> list[str]:
    if text is None:
        return list(STEPS)
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in STEPS]
    if unknown or not names:
        raise UsageError(f"--only {text!r}: unknown step {', '.join(unknown) or '(none given)'}",
                         hint=f"the steps: {', '.join(STEPS)}")
    return [x for x in STEPS if x in names]


@dataclass
class SuiteResult:
    documents: list[dict[str, Any]]
    steps: list[dict[str, Any]]  # name, cached, skipped reason


def run(m: Manifest, paths: Paths, ui: UI, target: Target, settings: SuiteSettings, steps: Sequence[str],
        model_sha256: str) -> SuiteResult:
    done = store.Store(paths, NAME)
    build = store.build_identity(m)
    out = SuiteResult([], [])
    for i, name in enumerate(steps, 1):
        ui.step(f"bench all [{i}/{len(steps)}]: {name}")
        if name == "kld" and settings.corpus is None:
            ui.warn("kld left out: no --corpus given (the text to measure KL divergence on)")
            out.steps.append({"step": name, "status": "skipped", "reason": "no --corpus"})
            continue
        key = store.result_key(NAME, SCHEMA, build, model_sha256, step_settings(name, target, settings), name)
        doc = done.get(key)
        if doc is not None:
            ui.info(f"cached: {name} (measured {doc.get('created', '?')})")
            out.steps.append({"step": name, "status": "cached"})
        else:
            doc = STEPS[name](m, paths, ui, target, settings)
            done.put(key, doc)
            out.steps.append({"step": name, "status": "measured"})
        out.documents.append(doc)
    return out


def to_json(result: SuiteResult, target: Target, model_sha256: str) -> dict[str, Any]:
    return {"schema": SCHEMA, "turboctl_version": __version__, "created": now_iso(),
            "model": {"path": str(target.model.resolve()), "sha256": model_sha256},
            "steps": result.steps, "documents": result.documents}


def schema_path() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "bench-all.schema.json"
