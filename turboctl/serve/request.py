"""From what the user asked (``--profile`` or ``--model``/``--kv``/``--ctx`` plus overrides) to
one :class:`~turboctl.serve.launch.ServePlan`: every check that can refuse runs here, before
anything starts."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .. import preflight, proc
from ..build.manifest import Manifest
from ..errors import ModelError, UsageError
from ..kv.layout import layout_from_metadata
from ..kv.recipe import parse_recipe
from ..models import fetch
from ..models.gguf import inspect_model, model_info_from_metadata, read_metadata
from ..paths import Paths, write_text_atomic
from ..ui import UI
from ..workers.check import Endpoint, WorkerStatus, build_identity, loopback_note, parse_endpoints
from ..workers.check import check_worker as check_one
from . import fit as fit_mod
from . import launch
from . import router as router_mod
from .command import ServeSettings
from .ollama import DETAIL_KEYS
from .profile import Profile, check_profile_args
from .router import RouterPlan
from .whatif import n_ctx_train_of

DEFAULT_KV = "turbo4"
"""The recipe of ``serve --model`` without ``--kv``: uniform turbo4 is the recommended default
(README "Recipes: measured")."""


@dataclass(frozen=True)
class ServeRequest:
    profile: Profile | None = None
    model: Path | None = None
    kv: str | None = None
    context: int | Literal["auto"] | None = None
    host: str | None = None
    port: int | None = None
    parallel: int | None = None
    api_key_file: Path | None = None
    insecure_no_api_key: bool = False
    no_build: bool = False
    offline: bool = False
    dry_run: bool = False
    max_memory: str | None = None
    direct: bool = False
    ollama: bool = False
    member: bool = False  # one model of a router: where it listens and its key are the router's
    rpc: tuple[str, ...] = ()  # RPC workers (--rpc); else the profile's workers


OLLAMA_PORT = 11434
"""Ollama's default port (``--ollama``): its clients look there unless told otherwise."""


def api_key(req: ServeRequest, env: dict[str, str] | None = None) -> str | None:
    """The key: ``--api-key-file``, else the profile's key, else the variable it names."""
    env = dict(os.environ) if env is None else env
    if req.api_key_file is not None:
        return launch.read_key_file(req.api_key_file)
    server = req.profile.server if req.profile else None
    if server is None:
        return None
    if server.api_key is not None:
        return server.api_key.get_secret_value()
    if server.api_key_env:
        value = env.get(server.api_key_env, "").strip()
        if not value:
            where = req.profile.origin if req.profile and req.profile.origin else "the profile"
            raise UsageError(f"{where}: server.api_key_env names {server.api_key_env}, which is not set "
                             "in this environment", hint=f"export {server.api_key_env}=<key> first")
        return value
    return None


def _model_path(req: ServeRequest, paths: Paths, ui: UI) -> tuple[Path | None, list[str]]:
    notes: list[str] = []
    if req.model is not None:
        if not req.model.is_file():
            raise ModelError(f"model file not found: {req.model}", hint="pass the path of a .gguf file")
        return req.model.resolve(), notes
    assert req.profile is not None
    base = req.profile.origin.parent if req.profile.origin else None
    if req.dry_run:
        local = fetch.local_model(req.profile.model, paths, base_dir=base)
        if local is None:
            notes.append("the model is not downloaded yet: serve would fetch and verify it first")
        return local, notes
    got = fetch.resolve_model(req.profile.model, paths, ui, offline=req.offline, base_dir=base)
    return got.path, notes


def prepare(req: ServeRequest, paths: Paths, ui: UI) -> launch.ServePlan:
    if (req.profile is None) == (req.model is None):
        raise UsageError("give either --profile NAME or --model FILE.gguf"
                         if req.profile is None else "--profile and --model cannot be combined",
                         hint="turboctl profiles list shows the profiles")
    prof = req.profile
    limit = fit_mod.parse_size(req.max_memory) if req.max_memory is not None else None
    model, notes = _model_path(req, paths, ui)  # a missing model is refused before any build
    m = launch.ensure_build(paths, ui, no_build=req.no_build, dry_run=req.dry_run)
    recipe = parse_recipe(req.kv if req.kv is not None else (prof.kv.recipe_text() if prof else DEFAULT_KV))
    server = prof.server if prof else None
    host, port = endpoint(req, server)
    parallel = req.parallel if req.parallel is not None else (server.parallel if server else 1)
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: expected 1..65535")
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: expected at least 1")
    extra = tuple(server.args) if server else ()
    key = api_key(req) if not req.member else None
    if not req.member:
        launch.check_security(host, key, insecure=req.insecure_no_api_key, ui=ui)
    binary = launch.server_binary(m) if m is not None else paths.build / "<not built yet>" / launch.SERVER
    if m is not None and prof is not None and extra:
        check_profile_args(prof, proc.capture([binary, "--help"]) or "")
    workers, extra = check_workers(req, m, extra, ui)
    wanted = req.context if req.context is not None else (prof.context if prof else "auto")
    plan = info = None
    details: dict[str, Any] | None = None
    budget_text: str | None = None
    projection: dict[str, int] | None = None
    uses: dict[str, fit_mod.DeviceUse] = {}
    context_source = "requested"
    if m is not None and model is not None:
        meta = read_metadata(model)  # once: a large GGUF's metadata takes seconds to read
        info = model_info_from_metadata(meta, model)
        details = {k: meta.get(k) for k in DETAIL_KEYS}
        plan = preflight.check_plan(m, model, info, layout_from_metadata(meta, info), recipe)
        budget = fit_mod.machine_budget(backend=m.backend)
        if limit is not None and req.max_memory is not None:  # this machine's share; workers keep theirs
            budget = fit_mod.capped(budget, limit, req.max_memory)
        budget = fit_mod.pooled(budget, worker_frees(workers))
        budget_text = f"{fit_mod.human(budget.bytes)} ({budget.source})"
        proj = fit_mod.fit(m, model, plan, wanted, budget, n_ctx_train=n_ctx_train_of(meta),
                           parallel=parallel, batch_size=server.batch_size if server else None, extra_args=extra,
                           env=dict(prof.environment) if prof else None)
        context = proj.context
        context_source = "auto: the largest that fits" if wanted == "auto" else "requested"
        projection = {"weights": proj.weights, "kv": proj.kv, "compute": proj.compute, "total": proj.total,
                      "budget": budget.bytes}
        uses = {u.device: u for u in fit_mod.device_use(proj, budget)} if workers else {}
    elif wanted == "auto":
        if model is not None:
            inspect_model(model)  # a bad file is still an error in a dry run
        context = 0
        context_source = "auto: resolved once the build and the model exist"
        notes.append(context_source)
    else:
        context = wanted
    front: launch.Front | None = None
    if not req.member:
        front, host, port = listen(req, host, port)
    settings = ServeSettings(
        model=model or Path("<model not downloaded yet>"), recipe=recipe, context=context, host=host, port=port,
        parallel=parallel, batch_size=server.batch_size if server else None,
        alias=(prof.model.name or prof.name) if prof else (model.stem if model is not None else None),
        generation_args=tuple(prof.generation.llama_args()) if prof else (),
        extra_args=extra, environment=dict(prof.environment) if prof else {}, api_key=key)
    if prof is not None:
        notes.extend(prof.notes)
    return launch.make_serve_plan(settings, binary, plan=plan, info=info, context_source=context_source,
                                  budget=budget_text, projection=projection, notes=tuple(notes), front=front,
                                  backend=m.backend if m is not None else "cpu", details=details,
                                  workers=tuple(_worker_json(w, uses) for w in workers))


def _worker_json(w: WorkerStatus, uses: Mapping[str, fit_mod.DeviceUse]) -> dict[str, Any]:
    """A checked worker for the plan, with each of its devices' projected part and share."""
    doc = w.to_json()
    for d in doc["devices"]:
        u = uses.get(fit_mod.rpc_device_name(str(w.endpoint), d["index"]))
        d["projected_bytes"] = u.bytes if u else 0
        d["share_bytes"] = u.budget if u else 0
    return doc


def worker_frees(workers: Sequence[WorkerStatus]) -> list[tuple[str, list[int]]]:
    """Each worker's free memory per device, for :func:`turboctl.serve.fit.pooled`."""
    return [(str(w.endpoint), [d.free for d in w.devices]) for w in workers]


def check_workers(req: ServeRequest, m: Manifest | None, extra: tuple[str, ...],
                  ui: UI) -> tuple[list[WorkerStatus], tuple[str, ...]]:
    """The RPC workers (``--rpc``, else the profile's ``workers``), each checked before anything
    starts (:func:`checked_workers`), and the server's extra arguments with ``--rpc`` added. A dry
    run without a build checks nothing."""
    given = req.rpc or (req.profile.workers if req.profile else ())
    if not given:
        return [], extra
    if m is None:
        return [], (*extra, *rpc_args(parse_endpoints(list(given))))
    statuses, rpc = checked_workers(given, m, ui)
    return statuses, (*extra, *rpc)


def rpc_args(endpoints: Sequence[Endpoint]) -> tuple[str, ...]:
    return ("--rpc", ",".join(str(ep) for ep in endpoints))


def checked_workers(given: Sequence[str], m: Manifest, ui: UI, *,
                    announce: bool = True) -> tuple[list[WorkerStatus], tuple[str, ...]]:
    """Each worker (``HOST:PORT`` items) checked in order: reachable, this build's identity, a
    passed self-test, its free memory (``announce``: an ok line each); the warning for workers on
    this machine; and the ``--rpc`` arguments for llama.cpp's programs."""
    endpoints = parse_endpoints(list(given))
    mine = build_identity(m)
    statuses: list[WorkerStatus] = []
    for ep in endpoints:
        w = check_one(ep, mine)
        if announce:
            ui.ok(f"RPC worker {ep}: this build, self-test {w.identity.self_test}, "
                  f"{fit_mod.human(w.free)} free of {fit_mod.human(w.total)}")
        statuses.append(w)
    note = loopback_note(endpoints)
    if note:
        ui.warn(note)
    return statuses, rpc_args(endpoints)


def endpoint(req: ServeRequest, server: Any) -> tuple[str, int]:
    """Where clients connect: ``--host``/``--port``, else the profile's, else 127.0.0.1:8080;
    ``--ollama``: Ollama's port on loopback (``--host`` still wins for the address)."""
    if req.ollama:
        if req.direct:
            raise UsageError("--ollama serves the Ollama API on its port: it cannot be combined with --direct")
        if req.port is not None and req.port != OLLAMA_PORT:
            raise UsageError(f"--ollama listens on Ollama's port {OLLAMA_PORT}: drop --port {req.port}, or drop "
                             "--ollama and keep --port")
        return req.host or "127.0.0.1", OLLAMA_PORT
    host = req.host or (server.host if server else "127.0.0.1")
    port = req.port if req.port is not None else (server.port if server else 8080)
    return host, port


def listen(req: ServeRequest, host: str, port: int) -> tuple[launch.Front | None, str, int]:
    """The endpoint checked free (not in a dry run), and where llama-server listens: behind the
    Ollama API proxy on a free loopback port (``port`` 0 in a dry run), or on the endpoint itself
    with ``--direct``."""
    if not req.dry_run:
        launch.check_port(host, port)
    if req.direct:
        return None, host, port
    # the Ollama API (and everything llama-server answers) on the endpoint
    return launch.Front(host, port), "127.0.0.1", 0 if req.dry_run else launch.free_loopback_port()


def prepare_router(req: ServeRequest, profiles: Sequence[Profile], paths: Paths, ui: UI) -> RouterPlan:
    """Several profiles on one endpoint (llama-server's router mode): each profile's own plan
    (model, recipe, context, slots, arguments; fitted alone), then the router in front of them."""
    if req.model is not None or req.kv is not None or req.context is not None or req.parallel is not None:
        raise UsageError("with several profiles, --model, --kv, --ctx and --parallel do not apply: each model "
                         "keeps its own profile's settings", hint="set them in each profile")
    with_workers = [p.name for p in profiles if p.workers]
    if req.rpc or with_workers:
        raise UsageError("RPC workers are not supported with several profiles (router mode) yet"
                         + (f": {', '.join(with_workers)} list workers" if with_workers else ""),
                         hint="serve a model that needs workers on its own: turboctl serve --profile NAME")
    host, port = endpoint(req, profiles[0].server)
    key = _router_key(req, profiles)
    launch.check_security(host, key, insecure=req.insecure_no_api_key, ui=ui)
    front, listen_host, listen_port = listen(req, host, port)
    plans = [prepare(replace(req, profile=prof, member=True), paths, ui) for prof in profiles]
    proj = next((p.projection for p in plans if p.projection), None)
    binary = plans[0].argv[0]
    preset = (paths.logs / f"router-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.ini")
    plan = router_mod.make_plan(plans, Path(binary), host=listen_host, port=listen_port, api_key=key,
                                preset_path=preset, budget=plans[0].budget,
                                budget_bytes=int(proj["budget"]) if proj else None, front=front,
                                notes=[n for p in plans for n in p.notes])
    if not req.dry_run:
        paths.ensure()
        write_text_atomic(preset, plan.preset)
    return plan


def _router_key(req: ServeRequest, profiles: Sequence[Profile]) -> str | None:
    """One key for the endpoint: ``--api-key-file``, else the profiles' key (all that set one
    must agree)."""
    if req.api_key_file is not None:
        return launch.read_key_file(req.api_key_file)
    keys = {prof.name: k for prof in profiles if (k := api_key(replace(req, profile=prof))) is not None}
    if len(set(keys.values())) > 1:
        raise UsageError(f"profiles {', '.join(sorted(keys))} set different API keys; one endpoint has one key",
                         hint="give the same key to each, or pass --api-key-file FILE")
    return next(iter(keys.values()), None)


def preview(profile: Profile, paths: Paths, *, json_mode: bool = False) -> launch.ServePlan:
    """What ``turboctl serve --profile`` would start (``profiles show``), without starting,
    building or downloading anything; the bind check is left to serve (show warns about it)."""
    return prepare(ServeRequest(profile=profile, dry_run=True, insecure_no_api_key=True), paths,
                   UI(quiet=True, json_mode=json_mode))


def preview_fit(plan: launch.ServePlan) -> dict[str, Any]:
    """The fit part of ``profiles show``: the context, where it comes from, the projection and the budget."""
    fit: dict[str, Any] = {"context": plan.settings.context or "auto (resolved once the model is here)",
                           "context source": plan.context_source}
    if plan.projection is not None:
        fit.update({k: fit_mod.human(v) for k, v in plan.projection.items()})
    if plan.budget is not None:
        fit["budget"] = plan.budget
    if plan.notes:
        fit["notes"] = list(plan.notes)
    return fit
