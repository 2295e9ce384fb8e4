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
  attention features) that the device does not support do not refuse a pair here;

:func:`check_kv_head_dims` is the second half, for a model: with the (K, V) head dims of the
model's layers (:func:`model_head_dims`), it refuses a turbo K/V pair that has no passing
FLASH_ATTN_EXT case at those head dims on this build's backend, or whose cases there failed
or were not supported -- a GPU backend that does not implement them would run that
attention on the CPU (``bench.common.preflight`` calls both before anything starts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import GateRefused
from .kv.config import is_turbo
from .manifest import Manifest, Selftest, SelftestCase
from .models import ModelInfo
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
    patched llama.cpp sizes their caches (see :mod:`turboctl.models`)."""
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

