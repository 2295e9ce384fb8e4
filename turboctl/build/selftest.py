"""The backend self-test: ``test-backend-ops`` restricted to the TurboQuant cases.

``test-backend-ops -b <device> -p turbo --output sql`` runs exactly the turbo cases our
patch series adds (SET_ROWS, GET_ROWS, CPY and FLASH_ATTN_EXT at head dims 64/128/256/512,
every supported K/V pair), each compared against the CPU reference implementation. Its SQL
document (stdout, kept apart from the log on stderr) is read with the stdlib ``sqlite3`` in
memory and summarised per op, per cache type and per FLASH_ATTN_EXT K/V pair.

Status: ``pass`` (every case ran on the device and matched), ``fail`` (a case failed, or
the device reported a case as not supported: on Metal or CUDA that means a silent CPU
fallback), ``error`` (the run crashed, timed out, printed no SQL, or found no turbo case).

Optional cases: a FLASH_ATTN_EXT case outside the table of kernels the GPU backends must
have (``ggml-turbo/turbo-fa.h``: K/V pairs at head dims 64-512, K and V alike) -- K and V
head dims that differ, or an extra feature (attention sinks, ALiBi, logit softcap) -- that
the device reports as not supported does not fail the self-test. It is still recorded (every
FLASH_ATTN_EXT case is kept with its pair, head dims and result), and the serving gate
refuses a model whose layers would need it (:func:`turboctl.build.gate.check_kv_head_dims`).
A failed optional case fails the self-test like any other.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import SelftestFailed, ToolMissing
from ..kv.config import TURBO_TYPES
from ..paths import Paths
from ..ui import UI
from . import cmake, gitrepo
from .manifest import BinaryInfo, FACase, Manifest, Selftest, SelftestCase, SelftestCounts, now_iso

TARGET = cmake.SELFTEST_TARGET
PARAMS_FILTER = "turbo"
TIMEOUT_S = 900.0  # CPU: ~5 s; a first Metal run compiles its shader library
_TYPE_PARAM = re.compile(r"(?:^|,)(type|type_src|type_dst|type_K|type_V)=([A-Za-z0-9_]+)")
_PARAM = re.compile(r"(?:^|,)([A-Za-z_][A-Za-z0-9_]*)=(\[[^\]]*\]|[^,]*)")
_FA = "FLASH_ATTN_EXT"
# FLASH_ATTN_EXT parameters beyond the kernel table: (parameter, what it is); a case that
# sets one to a non-zero value is optional
FA_FEATURES = (("sinks", "attention sinks"), ("max_bias", "ALiBi"), ("logit_softcap", "logit softcap"))


@dataclass(frozen=True)
class CaseRow:
    """One row of the SQL document (test mode)."""

    backend: str
    op: str
    params: str
    supported: bool
    passed: bool
    error: str

    @property
    def result(self) -> str:
        if not self.supported:
            return "unsupported"
        return "passed" if self.passed else "failed"

    def types(self) -> dict[str, str]:
        """``type``/``type_src``/``type_dst``/``type_K``/``type_V`` from the op params."""
        return dict(_TYPE_PARAM.findall(self.params))

    def cache_types(self) -> set[str]:
        return set(self.types().values())

    def kv_pair(self) -> str | None:
        t = self.types()
        if self.op == _FA and "type_K" in t and "type_V" in t:
            return f"{t['type_K']}/{t['type_V']}"
        return None

    def param(self, name: str) -> str | None:
        """The value of one op parameter as test-backend-ops prints it (``[2,1]`` for arrays)."""
        for key, value in _PARAM.findall(self.params):
            if key == name:
                return str(value)
        return None

    def head_dims(self) -> tuple[int, int] | None:
        """(hsk, hsv) of a FLASH_ATTN_EXT case (None for other ops or unreadable params)."""
        hsk, hsv = self.param("hsk"), self.param("hsv")
        if self.op != _FA or hsk is None or hsv is None:
            return None
        try:
            return int(hsk), int(hsv)
        except ValueError:
            return None

    def features(self) -> list[str]:
        """The extra attention features a FLASH_ATTN_EXT case uses (sinks, ALiBi, softcap)."""
        used = []
        for name, what in FA_FEATURES:
            value = self.param(name)
            try:
                if value is not None and float(value) != 0.0:
                    used.append(what)
            except ValueError:
                used.append(what)  # unreadable: not the plain table case
        return used

    def unpadded_wide(self) -> bool:
        """A FLASH_ATTN_EXT case at a head dim above 256 over a KV length that is not a
        multiple of 256: a shape llama.cpp does not produce (the caches of such heads are
        full-attention ones, whose n_kv it pads to 256), and one ggml-cuda supports for no
        K/V type (its head-dim-512 kernels need the padded GQA path). When the device does
        not support it, it is left out of the verdict and of the gate (see ``summarize``); when
        it runs, a wrong result fails like any other case."""
        dims = self.head_dims()
        kv = self.param("kv")
        if dims is None or dims[0] <= 256 or kv is None:
            return False
        try:
            return int(kv) % 256 != 0
        except ValueError:
            return False

    @property
    def optional(self) -> bool:
        """A FLASH_ATTN_EXT case outside the kernel table: K/V head dims that differ or an
        extra feature (a GPU backend may report it as not supported)."""
        if self.op != _FA:
            return False
        dims = self.head_dims()
        return (dims is not None and dims[0] != dims[1]) or bool(self.features())

    def unreachable(self) -> bool:
        """Not supported, at a shape llama.cpp does not produce (``unpadded_wide``)."""
        return self.result == "unsupported" and self.unpadded_wide()


class SqlError(ValueError):
    pass


def parse_sql(text: str, problems: list[str] | None = None) -> tuple[list[CaseRow], int]:
    """The test-mode rows of a ``test-backend-ops --output sql`` document, and the number of
    statements that could not be read (a run cut short leaves a truncated last line); each
    of those is described in ``problems`` when given ("line 31: ...").

    Statements are executed one by one, so one broken line does not hide the others; lines
    that start no statement (other output on stdout) are ignored."""
    db = sqlite3.connect(":memory:")
    bad = 0
    found = problems if problems is not None else []
    try:
        buffer = ""
        start = 0
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            if not buffer and not line.lstrip().upper().startswith(("CREATE ", "INSERT ")):
                continue
            if not buffer:
                start = number
            buffer += line
            if sqlite3.complete_statement(buffer):
                try:
                    db.execute(buffer)
                except sqlite3.Error as exc:
                    bad += 1
                    found.append(f"line {start}: {exc}")
                buffer = ""
        if buffer.strip():
            bad += 1
            found.append(f"line {start}: the output ends inside this statement (cut short)")
        try:
            rows = db.execute(
                "SELECT backend_name, op_name, op_params, supported, passed, error_message "
                "FROM test_backend_ops WHERE test_mode = 'test'").fetchall()
        except sqlite3.Error as exc:
            what = ("the output is empty" if not text.strip()
                    else "no test_backend_ops table in the SQL output (no CREATE TABLE statement)")
            raise SqlError(what) from exc
    finally:
        db.close()
    cases = [CaseRow(str(b), str(op), str(params), bool(int(s or 0)), bool(int(p or 0)), str(err or ""))
             for b, op, params, s, p, err in rows]
    return cases, bad


def _count(rows: Iterable[CaseRow]) -> SelftestCounts:
    passed = failed = unsupported = 0
    for r in rows:
        if r.result == "passed":
            passed += 1
        elif r.result == "failed":
            failed += 1
        else:
            unsupported += 1
    return SelftestCounts(passed=passed, failed=failed, unsupported=unsupported)


@dataclass(frozen=True)
class Summary:
    counts: SelftestCounts
    per_op: dict[str, SelftestCounts]
    per_type: dict[str, SelftestCounts]
    per_pair: dict[str, SelftestCounts]
    failing: list[SelftestCase]
    unsupported: list[SelftestCase]
    fa_cases: list[FACase]

    @property
    def required_unsupported(self) -> list[SelftestCase]:
        return [c for c in self.unsupported if not c.optional]


def summarize(rows: list[CaseRow]) -> Summary:
    by_op: dict[str, list[CaseRow]] = {}
    by_type: dict[str, list[CaseRow]] = {}
    by_pair: dict[str, list[CaseRow]] = {}
    for r in rows:
        by_op.setdefault(r.op, []).append(r)
        for t in sorted(r.cache_types()):
            if t in TURBO_TYPES:
                by_type.setdefault(t, []).append(r)
        if (pair := r.kv_pair()) is not None:
            by_pair.setdefault(pair, []).append(r)

    def cases(result: str) -> list[SelftestCase]:
        # an unsupported case at a shape llama.cpp does not produce refuses nothing (optional)
        return [SelftestCase(op=r.op, params=r.params, result=r.result,  # type: ignore[arg-type]
                             error=r.error, optional=r.optional or r.unreachable())
                for r in rows if r.result == result]

    fa_cases = []
    for r in rows:
        pair, dims = r.kv_pair(), r.head_dims()
        if pair is not None and dims is not None and not r.unreachable():
            fa_cases.append(FACase(pair=pair, hsk=dims[0], hsv=dims[1], result=r.result,  # type: ignore[arg-type]
                                   optional=r.optional))

    return Summary(
        counts=_count(rows),
        per_op={k: _count(v) for k, v in sorted(by_op.items())},
        per_type={k: _count(v) for k, v in sorted(by_type.items())},
        per_pair={k: _count(v) for k, v in by_pair.items()},
        failing=cases("failed"),
        unsupported=cases("unsupported"),
        fa_cases=fa_cases,
    )


def verdict(summary: Summary | None, *, returncode: int | None, timed_out: bool, timeout: float,
            device: str, problem: str | None = None, unreadable: int = 0,
            unreadable_first: str | None = None) -> tuple[str, str]:
    """(status, reason) of a run."""
    if timed_out:
        return "error", f"test-backend-ops did not finish within {timeout:g} s"
    if returncode is not None and returncode < 0:
        return "error", f"test-backend-ops was killed by signal {-returncode} (a crash)"
    if problem:
        return "error", problem
    if summary is None:
        return "error", "test-backend-ops printed no results"
    if summary.counts.total == 0:
        why = (f"test-backend-ops found no TurboQuant case for device {device} "
               f"(the binary lacks the turbo tests, or the build has no {device} device)")
        if returncode:
            why += f"; it exited with code {returncode}"
        return "error", why
    if unreadable:
        where = f" ({unreadable_first})" if unreadable_first else ""
        return "error", f"{unreadable} unreadable statement(s) in the SQL output of test-backend-ops{where}"
    c = summary.counts
    required_unsupported = len(summary.required_unsupported)
    if c.failed or required_unsupported:
        parts = []
        if c.failed:
            parts.append(f"{c.failed} failed")
        if required_unsupported:
            parts.append(f"{required_unsupported} not supported on {device}")
        return "fail", f"{', '.join(parts)} of {c.total} turbo cases"
    if returncode:
        return "fail", (f"every turbo case passed, but test-backend-ops exited with code {returncode} "
                        "(see the log)")
    return "pass", ""


def library_hashes(binary: Path) -> dict[str, str]:
    """sha256 of the ggml libraries next to the binary (the kernels the self-test exercises;
    empty for static builds, where they are inside the binary)."""
    found: dict[str, str] = {}
    for pattern in ("libggml*.so*", "libggml*.dylib", "ggml*.dll"):
        for candidate in sorted(binary.parent.glob(pattern)):
            real = candidate.resolve()
            if real.is_file() and real.name not in found:
                found[real.name] = gitrepo.file_sha256(real)
    return found


def command(binary: Path, device: str) -> list[str]:
    return [str(binary), "-b", device, "-p", PARAMS_FILTER, "--output", "sql"]


def run(manifest: Manifest, paths: Paths, ui: UI, *, log: Path | None = None,
        timeout: float = TIMEOUT_S) -> Selftest:
    """Run the self-test of this build; never raises for a failing test (see ``status``)."""
    return run_binary(manifest.binary(TARGET), manifest.backend, paths, ui, log=log, timeout=timeout)


def stale_reason(record: Selftest, backend: str, binaries: Mapping[str, BinaryInfo]) -> str | None:
    """Why a self-test record does not describe these binaries of a ``backend`` build (None:
    it does: same backend, same test-backend-ops, same ggml libraries beside it)."""
    if record.backend != backend:
        return f"it ran on the {record.backend} backend, this build is {backend}"
    info = binaries.get(TARGET)
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


def reusable(previous: Manifest | None, backend: str, binaries: Mapping[str, BinaryInfo]) -> Selftest | None:
    """The passing self-test of the previous build when it tested exactly these binaries (a
    rebuild that changed nothing need not run it again; ``turboctl selftest`` always does)."""
    record = previous.selftest if previous else None
    if record is None or record.status != "pass" or record.fa_cases is None:
        return None
    return record if stale_reason(record, backend, binaries) is None else None


def run_binary(binary: Path, backend_name: str, paths: Paths, ui: UI, *, log: Path | None = None,
               timeout: float = TIMEOUT_S) -> Selftest:
    backend = cmake.BACKENDS[backend_name]
    paths.ensure()
    log = log or paths.logs / f"selftest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sql_path = log.with_suffix(".sql")
    cmd = command(binary, backend.device)
    ui.info(f"self-test: {TARGET} turbo cases on {backend.device}; log: {log}")
    started = time.monotonic()
    when = now_iso()
    returncode: int | None = None
    timed_out = False
    problem: str | None = None
    summary: Summary | None = None
    unreadable = 0
    problems: list[str] = []
    try:
        res = proc.run(cmd, log=log, check=False, timeout=timeout, stdout_path=sql_path)
        returncode, timed_out = res.returncode, res.timed_out
    except (ToolMissing, OSError) as exc:
        problem = f"cannot start {binary}: {exc}"
    if problem is None and not timed_out:
        try:
            text = sql_path.read_text(encoding="utf-8", errors="replace")
            rows, unreadable = parse_sql(text, problems)
            summary = summarize([r for r in rows if PARAMS_FILTER in r.params])
        except (OSError, SqlError) as exc:
            problem = f"{sql_path}: {exc}"
    duration = round(time.monotonic() - started, 3)
    status, reason = verdict(summary, returncode=returncode, timed_out=timed_out, timeout=timeout,
                             device=backend.device, problem=problem, unreadable=unreadable,
                             unreadable_first=problems[0] if problems else None)
    empty = SelftestCounts()
    return Selftest(
        backend=backend.name, device=backend.device, command=cmd, binary=str(binary),
        binary_sha256=gitrepo.file_sha256(binary) if binary.is_file() else "",
        libraries=library_hashes(binary), when=when, duration_s=duration, status=status,  # type: ignore[arg-type]
        reason=reason, returncode=returncode,
        counts=summary.counts if summary else empty,
        per_op=summary.per_op if summary else {},
        per_type=summary.per_type if summary else {},
        per_pair=summary.per_pair if summary else {},
        failing=summary.failing if summary else [],
        unsupported=summary.unsupported if summary else [],
        fa_cases=summary.fa_cases if summary else [],
        log=str(log), output=str(sql_path))


def describe(record: Selftest) -> str:
    c = record.counts
    text = f"{record.status}: {c.passed}/{c.total} turbo cases passed on {record.device}"
    if c.failed:
        text += f", {c.failed} failed"
    if c.unsupported:
        optional = sum(1 for u in record.unsupported if u.optional)
        text += f", {c.unsupported} not supported"
        if optional:
            text += f" ({optional} of them optional)" if optional < c.unsupported else " (all optional)"
    text += f" ({record.duration_s:.1f} s, {record.when})"
    if record.status != "pass" and record.reason:
        text += f"; {record.reason}"
    return text


def report(record: Selftest, ui: UI) -> None:
    """Human summary: one table per op / cache type / K-V pair, then the failing cases."""
    def row(name: str, c: SelftestCounts) -> list[str]:
        return [name, str(c.passed), str(c.failed), str(c.unsupported)]

    cols = ["", "passed", "failed", "not supported"]
    ui.table(f"self-test per op ({record.device})", ["op", *cols[1:]],
             [row(k, v) for k, v in record.per_op.items()])
    ui.table("self-test per cache type", ["type", *cols[1:]],
             [row(k, v) for k, v in record.per_type.items()])
    ui.table("self-test FLASH_ATTN_EXT per K/V pair", ["K/V", *cols[1:]],
             [row(k, v) for k, v in record.per_pair.items()])
    for title, cases in (("failing", record.failing), ("not supported", record.unsupported)):
        if cases:
            ui.info(f"{title} cases ({len(cases)}):")
            for case in cases[:20]:
                ui.info(f"  {case.label()}" + (" (optional)" if case.optional else "")
                        + (f": {case.error}" if case.error else ""))
            if len(cases) > 20:
                ui.info(f"  ... and {len(cases) - 20} more (all in the manifest)")


def raise_if_failed(record: Selftest, *, context: str) -> None:
    """SelftestFailed (exit code 16) unless the self-test passed; ``context`` says what still
    holds ("the build finished and its manifest is written")."""
    if record.status == "pass":
        return
    cases = [*record.failing, *(c for c in record.unsupported if not c.optional)]
    shown = ", ".join(c.label() for c in cases[:3]) + (f" and {len(cases) - 3} more" if len(cases) > 3 else "")
    what = "could not run to the end" if record.status == "error" else "failed"
    raise SelftestFailed(
        f"{context}, but the backend self-test {what} on {record.device}: {record.reason}"
        + (f" ({shown})" if shown else ""),
        hint="the turbo KV cache types are refused on this build until it passes (other types such as "
             "q8_0 and q4_0 work); to report it, open an issue on the turboctl project with the output of "
             "`turboctl doctor --json` and this log",
        log_path=Path(record.log))
