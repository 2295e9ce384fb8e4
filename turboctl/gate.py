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
  the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import gitrepo
from .errors import GateRefused
from .kvconfig import is_turbo
from .manifest import Manifest, Selftest, SelftestCase
from .selftest import TARGET, CaseRow

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
    if record.backend != manifest.backend:
        return f"it ran on the {record.backend} backend, this build is {manifest.backend}"
    info = manifest.binaries.get(TARGET)
    if info is None:
        return f"this build has no {TARGET}"
    if info.sha256 != record.binary_sha256:
        return f"{TARGET} changed since (sha256 {record.binary_sha256[:12]} tested, {info.sha256[:12]} built)"
    binary_dir = Path(record.binary).parent
    for name, sha in sorted(record.libraries.items()):
        path = binary_dir / name
        if not path.is_file():
            return f"{path} is gone"
        if gitrepo.file_sha256(path) != sha:
            return f"{path} changed since (sha256 {sha[:12]} tested)"
    return None


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
    bad = [c for c in (*record.failing, *record.unsupported) if _relevant(c, turbo, pair)]
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
