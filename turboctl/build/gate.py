"""The serving gate: may this build serve these KV cache types on its backend?

:func:`check_kv_types` is the one answer; everything in turboctl that starts llama.cpp with
a cache type calls it first (``bench kld``, ``bench speed``; ``serve`` later). Rules:

* a type the built binary does not accept (``manifest.cache_types``) is refused;
* non-turbo types pass;
* a turbo type is refused when the backend self-test never ran, could not run to the end
  (``error``), ran on other binaries than the ones on disk now, or did not pass, and when a
  case for that type, or a FLASH_ATTN_EXT case of that exact K/V pair, failed or was "not
  supported" on the device (on Metal and CUDA that is a silent CPU fallback); a K/V pair
  with no FLASH_ATTN_EXT case in the self-test is refused too (nothing shows it runs on
  the device). Optional cases (outside the kernel table: K/V head dims that differ, extra
  attention features) that the device does not support do not refuse a pair here; a case
  the device does not support at a shape llama.cpp does not produce (head dim 512 over a KV
  length that is not a multiple of 256: ``CaseRow.unpadded_wide``) refuses nothing at all;

:func:`check_kv_head_dims` is the second half, for a model: with the (K, V) head dims of the
model's layers (:func:`model_head_dims`), it refuses a turbo K/V pair that has no passing
FLASH_ATTN_EXT case at those head dims on this build's backend, or whose cases there failed
or were not supported -- a GPU backend that does not implement them would run that
attention on the CPU (``turboctl.preflight.preflight`` calls both before anything starts).

:func:`check_recipe` runs both for EVERY distinct K/V pair a per-layer recipe puts in the
model's caches, each pair at the head dims of the layers that use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import GateRefused
from ..kv.config import is_turbo
from ..kv.recipe import RecipePlan
from ..models.gguf import ModelInfo
from .manifest import Manifest, Selftest, SelftestCase
from .selftest import CaseRow
from .selftest import stale_reason as selftest_stale_reason

HeadDims = Mapping[tuple[int, int], Sequence[int]]
"""(K head dim, V head dim) → the model layers that use it (empty: SWA layers whose indices
the file does not record)."""

SHOWN_CASES = 3
REPORT = ("to report it, open an issue on the turboctl project with the output of "
          "`turboctl doctor --json` and the self-test log{log}")
SUGGEST = "use q8_0 or q4_0 instead (e.g. --kv q8_0 or --kv q4_0)"


def _hint(record: Selftest | None, *, suggest: bool = True, report: bool = True) -> str:
    parts = [SUGGEST] if suggest else []
    if report:
        parts.append(REPORT.format(log=f" ({record.log})" if record else ""))
    return "; ".join(parts)


def name_cases(cases: Sequence[SelftestCase], shown: int = SHOWN_CASES) -> str:
    """A few case labels, then "and N more"."""
    text = ", ".join(c.label() for c in cases[:shown])
    if len(cases) > shown:
        text += f" and {len(cases) - shown} more"
    return text


def stale_reason(manifest: Manifest, record: Selftest) -> str | None:
    """Why the self-test record does not describe the binaries of this build (None: it does)."""
    return selftest_stale_reason(record, manifest.backend, manifest.binaries)


def _relevant(case: SelftestCase, turbo: set[str], pair: str) -> bool:
    row = CaseRow("", case.op, case.params, True, True, "")
    kv = row.kv_pair()
    if kv is not None:
        return kv == pair
    return bool(row.cache_types() & turbo)


def check_kv_types(manifest: Manifest, type_k: str, type_v: str) -> None:
    """Return when this build may serve K=type_k, V=type_v on its backend; else GateRefused."""
    pair = f"{type_k}/{type_v}"
    for t in dict.fromkeys((type_k, type_v)):
        if t not in manifest.cache_types:
            fix = ("this build lacks the TurboQuant patch series: rebuild with turboctl build"
                   if is_turbo(t) else f"use one of: {', '.join(manifest.cache_types)}")
            raise GateRefused(
                f"this build's llama.cpp does not accept the KV cache type {t} "
                f"(it accepts {', '.join(manifest.cache_types)})", hint=fix)
    turbo = {t for t in (type_k, type_v) if is_turbo(t)}
    if not turbo:
        return
    names = "/".join(sorted(turbo))
    record = manifest.selftest
    where = f"the {manifest.backend} backend"
    if record is None:
        raise GateRefused(
            f"refusing {names} on {where}: the backend self-test never ran for this build "
            "(built with --no-selftest, or by an older turboctl)",
            hint="run it: turboctl selftest (about a minute; it builds test-backend-ops if needed)")
    log = Path(record.log)
    if record.status == "error":
        raise GateRefused(
            f"refusing {names} on {where}: the backend self-test could not run to the end: {record.reason}",
            hint="run it again: turboctl selftest; " + _hint(record), log_path=log)
    stale = stale_reason(manifest, record)
    if stale:
        raise GateRefused(
            f"refusing {names} on {where}: the backend self-test ran on other binaries ({stale})",
            hint="run it on this build: turboctl selftest", log_path=log)
    # optional cases the device does not support are for check_kv_head_dims to weigh
    bad = [c for c in (*record.failing, *record.unsupported)
           if _relevant(c, turbo, pair) and not (c.result == "unsupported" and c.optional)]
    if bad:
        failed = [c for c in bad if c.result == "failed"]
        unsupported = [c for c in bad if c.result == "unsupported"]
        parts = []
        if failed:
            parts.append(f"{len(failed)} self-test case(s) failed: {name_cases(failed)}")
        if unsupported:
            parts.append(f"{len(unsupported)} case(s) not supported on {record.device} "
                         f"(they would fall back to the CPU): {name_cases(unsupported)}")
        raise GateRefused(f"refusing K={type_k} V={type_v} on {where}: " + "; ".join(parts),
                          hint=_hint(record), log_path=log)
    if record.status != "pass":
        others = [*record.failing, *record.unsupported]
        raise GateRefused(
            f"refusing {names} on {where}: the backend self-test did not pass ({record.reason}): "
            f"{name_cases(others) if others else 'see the log'}",
            hint=_hint(record), log_path=log)
    if pair not in record.per_pair:
        covered = ", ".join(k for k in record.per_pair if set(k.split("/")) & turbo) or "none"
        raise GateRefused(
            f"refusing K={type_k} V={type_v} on {where}: the self-test has no FLASH_ATTN_EXT case for "
            f"this K/V pair, so nothing shows it runs on {record.device} (pairs with "
            f"{names} it covers: {covered})", hint=SUGGEST + ", or one of the covered pairs")


def model_head_dims(info: ModelInfo) -> dict[tuple[int, int], list[int]]:
    """The (K, V) head dims of a model's layers, each with the layers that use it, as the
    patched llama.cpp sizes their caches (see :mod:`turboctl.models.gguf`)."""
    dims: dict[tuple[int, int], list[int]] = {}
    for layer in info.layers:
        dims.setdefault((layer.head_dim_k, layer.head_dim_v), []).append(layer.index)
    if info.has_swa_dims and any(layer.swa is None for layer in info.layers):
        # SWA dims recorded, but which layers use them is hard-coded in llama.cpp
        dims.setdefault((info.head_dim_k_swa, info.head_dim_v_swa), [])
    return dims


def _layers(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5] → "layers 0-2, 5"; [] → "SWA layers"."""
    if not indices:
        return "SWA layers"
    ranges: list[list[int]] = []
    for i in sorted(indices):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
    return ("layer " if len(indices) == 1 else "layers ") + text


def _dims(hsk: int, hsv: int) -> str:
    return f"K {hsk} / V {hsv}"


def check_kv_head_dims(manifest: Manifest, type_k: str, type_v: str, head_dims: HeadDims, *,
                       model: str | None = None) -> None:
    """Return when this build's backend passed the FLASH_ATTN_EXT cases of K=type_k, V=type_v
    at every (K, V) head dim of ``head_dims``; else GateRefused. Call after
    :func:`check_kv_types`, which checks the self-test record itself."""
    turbo = {t for t in (type_k, type_v) if is_turbo(t)}
    if not turbo:
        return
    record = manifest.selftest
    if record is None:
        check_kv_types(manifest, type_k, type_v)  # raises: the self-test never ran
        return
    where = f"the {manifest.backend} backend"
    pair = f"{type_k}/{type_v}"
    if record.fa_cases is None:
        raise GateRefused(
            f"refusing K={type_k} V={type_v} on {where}: the self-test record of this build does not "
            "say which head dims its FLASH_ATTN_EXT cases cover (written by an older turboctl)",
            hint="run it again: turboctl selftest", log_path=Path(record.log))
    cases = [c for c in record.fa_cases if c.pair == pair]
    of_model = f" of {model}" if model else ""
    for (dk, dv), layers in sorted(head_dims.items()):
        here = [c for c in cases if (c.hsk, c.hsv) == (dk, dv)]
        passed = [c for c in here if c.result == "passed"]
        failed = [c for c in here if c.result == "failed"]
        unsupported = [c for c in here if c.result == "unsupported"]
        if passed and not failed and not unsupported:
            continue
        what = f"head dims {_dims(dk, dv)} ({_layers(layers)}{of_model})"
        if not here:
            covered = sorted({(c.hsk, c.hsv) for c in cases if c.result == "passed"})
            raise GateRefused(
                f"refusing K={type_k} V={type_v} on {where}: the self-test has no FLASH_ATTN_EXT case for this "
                f"pair at {what}, so nothing shows it runs on {record.device} (head dims it passed for "
                f"{pair}: {', '.join(_dims(k, v) for k, v in covered) or 'none'})",
                hint=SUGGEST + ", or a pair the self-test covers at these head dims")
        parts = []
        if failed:
            parts.append(f"{len(failed)} failed")
        if unsupported:
            parts.append(f"{len(unsupported)} not supported on {record.device} (they would fall back to "
                         "the CPU)")
        named = _named_cases(record, pair, dk, dv)
        raise GateRefused(
            f"refusing K={type_k} V={type_v} on {where}: of its {len(here)} FLASH_ATTN_EXT case(s) at {what}, "
            f"{' and '.join(parts)}" + (f": {name_cases(named)}" if named else ""),
            hint=_hint(record), log_path=Path(record.log))


def _named_cases(record: Selftest, pair: str, hsk: int, hsv: int) -> list[SelftestCase]:
    """The failing and unsupported cases of the record for this pair at these head dims."""
    out = []
    for c in (*record.failing, *record.unsupported):
        row = CaseRow("", c.op, c.params, True, True, "")
        if row.kv_pair() == pair and row.head_dims() == (hsk, hsv):
            out.append(c)
    return out



def recipe_head_dims(plan: RecipePlan, info: ModelInfo | None = None,
                     ) -> dict[tuple[str, str], dict[tuple[int, int], list[int]]]:
    """Each distinct (K, V) pair of a resolved recipe → the (K, V) head dims of the layers whose
    attention reads a cache of that pair (layers reusing another layer's cache included) →
    those layers. With ``info``: when the file records SWA head dims but not which layers
    use them, the SWA dims count for every pair of such layers (as :func:`model_head_dims`)."""
    out: dict[tuple[str, str], dict[tuple[int, int], list[int]]] = {}
    for row in plan.rows():
        if row.type_k is None or row.type_v is None:
            continue  # a recurrent layer: no KV cache
        dims = out.setdefault((row.type_k, row.type_v), {})
        dims.setdefault((row.layer.head_dim_k, row.layer.head_dim_v), []).append(row.layer.index)
        if info is not None and info.has_swa_dims and row.layer.swa is None:
            dims.setdefault((info.head_dim_k_swa, info.head_dim_v_swa), [])
    return out


def check_recipe_types(manifest: Manifest, plan: RecipePlan) -> None:
    """:func:`check_kv_types` for every distinct K/V pair of the resolved recipe; first, every
    type the recipe names must be one the binary accepts, used by a layer or not (llama.cpp
    parses them all)."""
    for t in sorted(plan.recipe.types()):
        if t not in manifest.cache_types:
            check_kv_types(manifest, t, t)  # raises: the binary does not accept it
    for type_k, type_v in plan.pairs():
        check_kv_types(manifest, type_k, type_v)


def check_recipe_head_dims(manifest: Manifest, plan: RecipePlan, info: ModelInfo | None = None, *,
                           model: str | None = None) -> None:
    """:func:`check_kv_head_dims` for every distinct K/V pair of the resolved recipe, at the
    head dims of the layers that use it."""
    for (type_k, type_v), dims in recipe_head_dims(plan, info).items():
        check_kv_head_dims(manifest, type_k, type_v, dims, model=model)


def check_recipe(manifest: Manifest, plan: RecipePlan, info: ModelInfo | None = None, *,
                 model: str | None = None) -> None:
    """Both checks: this build may serve every K/V pair of the recipe at its layers' head dims."""
    check_recipe_types(manifest, plan)
    check_recipe_head_dims(manifest, plan, info, model=model)
