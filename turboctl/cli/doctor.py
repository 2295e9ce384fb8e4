"""``turboctl doctor``: run the checks, print a table or JSON, exit non-zero on failure.
``turboctl doctor --model M [--kv RECIPE] [--ctx N|auto]``: the memory what-if table instead."""

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from .. import doctor as doctor_logic
from ..errors import DoctorFailed, ModelError, UsageError
from ..kv.recipe import Recipe, parse_recipe
from ..models import fetch
from ..models.gguf import read_metadata
from ..paths import get_paths
from ..preflight import current_build
from ..serve import catalog
from ..serve import fit as fit_logic
from ..serve import router as router_logic
from ..serve import whatif as whatif_logic
from ..serve.command import parse_context
from ..serve.profile import Profile
from ..serve.request import checked_workers, worker_frees
from ..ui import UI
from .common import JsonOpt, handle_errors, start

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def current_probe() -> doctor_logic.Probe:
    """The machine probe (tests replace this to replay recorded macOS outputs)."""
    return doctor_logic.Probe.current()


def print_what_if(ui: UI, model: Path, recipe: Recipe | None, context: int | Literal["auto"], *,
                  parallel: int = 1, batch_size: int | None = None, extra_args: tuple[str, ...] = (),
                  env: dict[str, str] | None = None, json_out: bool = False, emit: bool = True,
                  workers: tuple[str, ...] = ()) -> dict[str, Any]:
    """The what-if table for a model (``--model``) or a profile's model and recipe (``--profile``,
    wired by the caller): print it (or emit it as JSON unless ``emit`` is off) and return the report.
    With RPC workers (``--rpc``, a profile's ``workers``) each is checked as serve checks it, the
    budget is pooled, and each row shows every device's part against that device's share."""
    m = current_build(get_paths())
    meta = read_metadata(model)
    train = whatif_logic.n_ctx_train_of(meta)
    budget = fit_logic.machine_budget(current_probe(), backend=m.backend)
    if workers:
        statuses, rpc = checked_workers(workers, m, ui, announce=False)
        budget = fit_logic.pooled(budget, worker_frees(statuses))
        extra_args = (*extra_args, *rpc)
    rows = whatif_logic.what_if(m, model, recipe, context, budget, n_ctx_train=train, parallel=parallel,
                                batch_size=batch_size, extra_args=extra_args, env=env, meta=meta)
    doc = whatif_logic.report(model, context, budget, rows, n_ctx_train=train, parallel=parallel, backend=m.backend)
    if json_out:
        if emit:
            ui.emit_json(doc)
        return doc
    at = "largest that fits" if context == "auto" else f"at {context}"
    shares = [(fit_logic.LOCAL, budget.local), *((d.name, d.bytes) for d in budget.devices)] if budget.devices else []
    table = []
    for r in rows:
        name = r.recipe + (" (given)" if r.given else "")
        if r.skipped:
            table.append([name, "-", "-", "-", "-", *("-" for _ in shares), r.skipped])
            continue
        assert r.kv_bytes is not None and r.total_bytes is not None
        parts = {u.device: u for u in r.devices}
        table.append([name, f"{r.bits_per_value:.2f}", f"{r.context}", fit_logic.human(r.kv_bytes),
                      fit_logic.human(r.total_bytes) + ("" if r.fits else " (over)"),
                      *(_device_cell(parts.get(dev)) for dev, _ in shares),
                      str(r.largest_context) if r.largest_context is not None else "nothing fits"])
    ui.table(f"what if: {model.name}, context {at} (trained {train}), {parallel} slot(s); "
             f"budget {fit_logic.human(budget.bytes)} = {budget.source}",
             ["KV", "bits/value", "context", "KV bytes", "total",
              *(f"{dev} (of {fit_logic.human(share)})" for dev, share in shares), "largest that fits (<= trained)"],
             table, ["bold" if r.given else ("dim" if r.skipped else "") for r in rows])
    return doc


def _device_cell(use: fit_logic.DeviceUse | None) -> str:
    if use is None:
        return "-"
    return fit_logic.human(use.bytes) + ("" if use.fits else " (over)")


@handle_errors
def doctor(
    json_out: JsonOpt = False,
    model: Annotated[Path | None, typer.Option(
        "--model", help="A GGUF model: print the memory what-if table (KV types x largest context) "
                        "instead of the checks.")] = None,
    kv: Annotated[str | None, typer.Option(
        "--kv", help="With --model: a KV recipe to add to the table (e.g. turbo4/turbo3;0..1+-2..-1=q8_0).")] = None,
    ctx: Annotated[str, typer.Option("--ctx", help="With --model: the context of the KV column (N or auto).")] = "auto",
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=256, help="With --model: server slots.")] = 1,
    rpc: Annotated[list[str] | None, typer.Option(
        "--rpc", help="With --model: RPC workers (HOST:PORT, comma-separated or repeated) the model would be split "
                      "across: each is checked, and the table shows every device's part (with --profile: the "
                      "profile's workers).", show_default=False)] = None,
    profile: Annotated[list[str] | None, typer.Option(
        "--profile", help="A serving profile: the what-if table for its model, recipe, context and slots "
                          "(the model must be local or downloaded already); twice or more: also how many of "
                          "them fit in memory at once on one endpoint.", show_default=False)] = None,
) -> None:
    """Check the OS, Metal / unified memory, toolchain, disk and the current build; with --model
    or --profile, what fits this machine."""
    ui = start(json_out)
    if profile:
        if model is not None or kv is not None or ctx != "auto" or parallel != 1 or rpc:
            raise UsageError("--profile takes the model, --kv, --ctx, --parallel and the workers (--rpc) from the "
                             "profile")
        profiles = [catalog.find_profile(p) for p in profile]
        docs = [_profile_what_if(ui, prof, json_out=json_out, emit=len(profiles) == 1) for prof in profiles]
        if len(profiles) > 1:
            _at_once(ui, [p.name for p in profiles], docs, json_out=json_out)
        return
    if model is None:
        if kv is not None or ctx != "auto" or parallel != 1 or rpc:
            raise UsageError("--kv, --ctx, --parallel and --rpc need --model or --profile (the what-if table)")
        _checks(ui, json_out)
        return
    print_what_if(ui, model, parse_recipe(kv) if kv else None, parse_context(ctx), parallel=parallel,
                  json_out=json_out, workers=tuple(rpc or ()))


def _profile_what_if(ui: UI, prof: Profile, *, json_out: bool, emit: bool) -> dict[str, Any]:
    local = fetch.local_model(prof.model, get_paths())
    if local is None:
        raise ModelError(f"profile {prof.name}: the model ({prof.model.describe()}) is not here yet",
                         hint=f"turboctl serve --profile {prof.name} fetches and verifies it first")
    return print_what_if(ui, local, prof.kv.recipe(), prof.context, parallel=prof.server.parallel,
                         batch_size=prof.server.batch_size, extra_args=tuple(prof.server.args),
                         env=dict(prof.environment), json_out=json_out, emit=emit, workers=prof.workers)


def _at_once(ui: UI, names: list[str], docs: list[dict[str, Any]], *, json_out: bool) -> None:
    """Several profiles on one endpoint (serve's router mode): each one's recipe at its context,
    and how many fit in memory together (the rule serve uses for --models-max)."""
    budget = int(docs[0]["budget"]["bytes"])
    rows = []
    for name, doc in zip(names, docs, strict=True):
        given = next(r for r in doc["rows"] if r["given"])
        rows.append({"profile": name, "kv": given["recipe"], "context": given["context"],
                     "total_bytes": given["total_bytes"], "why_not": given["skipped"]})
    totals = [r["total_bytes"] for r in rows if r["total_bytes"] is not None]
    n = router_logic.at_once(totals, budget) if len(totals) == len(rows) else 0
    if json_out:
        ui.emit_json({"schema": "turboctl.whatif.several/1", "profiles": docs, "together": rows,
                      "at_once": n, "budget_bytes": budget})
        return
    ui.table(f"one endpoint, {len(rows)} profiles: budget {fit_logic.human(budget)}",
             ["profile", "KV", "context", "total"],
             [[r["profile"], r["kv"], str(r["context"]),
               fit_logic.human(r["total_bytes"]) if r["total_bytes"] is not None else f"- ({r['why_not']})"]
              for r in rows])
    ui.info(f"at once: {n} of {len(rows)} (turboctl serve loads that many at the start; a request for another "
            "model unloads the least recently used one first)")


def _checks(ui: UI, json_out: bool) -> None:
    checks = doctor_logic.run_checks(current_probe(), get_paths())
    if json_out:
        ui.emit_json(doctor_logic.report(checks))
    else:
        rows = [[c.name, c.status, c.detail + (f"  → {c.fix}" if c.fix and c.status != "ok" else "")]
                for c in checks]
        ui.table("turboctl doctor", ["check", "status", "detail"], rows,
                 [_STYLE[c.status] for c in checks])
    failed = doctor_logic.failed_required(checks)
    if failed:
        names = ", ".join(c.name for c in failed)
        ui.error(f"{len(failed)} required check(s) failed: {names}",
                 hint="; ".join(c.fix for c in failed if c.fix) or None)
        raise typer.Exit(DoctorFailed.exit_code)
    if not json_out:
        ui.ok("all required checks passed")
