"""``turboctl doctor``: machine, toolchain and build checks, as data.

Every probe of the machine goes through a :class:`Probe` whose command runner, ``which``,
memory and disk functions can be replaced, so the macOS checks are tested with recorded real
outputs on any machine.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
from packaging.version import InvalidVersion, Version

from . import __version__, proc
from .build.gate import name_cases, stale_reason
from .build.manifest import Manifest, compare, load_current
from .build.patches import load_series
from .build.pins import load_pin
from .errors import TurboctlError
from .kv.config import TURBO_TYPES
from .paths import Paths

SCHEMA = "turboctl.doctor/2"
Status = Literal["ok", "warn", "fail", "skip"]
GIB = 1024**3

MIN_GIT = Version("2.25")
MIN_CMAKE = Version("3.14")
MIN_COMPILERS = {"gcc": Version("9"), "clang": Version("10"), "apple-clang": Version("14")}
# A CPU build of b11312 with its source tree and the sdist takes about 0.4 GiB (measured:
# src 232 MB, build 67 MB, sdist 74 MB); GPU backends and ccache need more.
DISK_FAIL_GIB = 1
DISK_WARN_GIB = 5


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None
    required: bool = False
    data: dict[str, Any] = field(default_factory=dict)


Runner = Callable[[Sequence[str]], "str | None"]


def _run_real(args: Sequence[str]) -> str | None:
    return proc.capture(list(args), timeout=30)


def _memory_real() -> tuple[int, int]:
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def _disk_free_real(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


@dataclass(frozen=True)
class Probe:
    system: str
    machine: str
    release: str
    run: Runner = _run_real
    which: Callable[[str], str | None] = shutil.which
    memory: Callable[[], tuple[int, int]] = _memory_real
    disk_free: Callable[[Path], int] = _disk_free_real

    @classmethod
    def current(cls) -> Probe:
        release = platform.mac_ver()[0] if platform.system() == "Darwin" else platform.release()
        return cls(platform.system(), platform.machine(), release)


# --------------------------------------------------------------------------- parsers
def parse_sysctl_value(output: str | None) -> str | None:
    """``sysctl -n key`` prints the value; ``sysctl key`` prints ``key: value``."""
    if output is None:
        return None
    text = output.strip()
    if not text:
        return None
    line = text.splitlines()[0]
    if ": " in line:
        line = line.split(": ", 1)[1]
    return line.strip()


def parse_displays(output: str | None) -> dict[str, str] | None:
    """GPU name, core count and Metal family from ``system_profiler SPDisplaysDataType -json``."""
    if not output:
        return None
    try:
        doc = json.loads(output)
    except ValueError:
        return None
    gpus = doc.get("SPDisplaysDataType") if isinstance(doc, dict) else None
    if not isinstance(gpus, list) or not gpus:
        return None
    gpu = gpus[0]
    if not isinstance(gpu, dict):
        return None
    name = str(gpu.get("sppci_model") or gpu.get("_name") or "unknown GPU")
    if name == "kHW_AppleM1Item":
        name = "Apple M1"
    family_raw = str(gpu.get("spdisplays_mtlgpufamilysupport") or gpu.get("spdisplays_metalfamily")
                     or gpu.get("spdisplays_metal") or "")
    result = {"name": name, "metal_raw": family_raw}
    if m := re.search(r"metal(\d+)", family_raw):
        result["metal"] = f"Metal {m.group(1)}"
    elif m := re.search(r"family(?:apple|mac)?(\d+)", family_raw):
        result["metal"] = f"Metal GPU family Apple {m.group(1)}"
    elif "supported" in family_raw:
        result["metal"] = "Metal supported"
    if cores := gpu.get("sppci_cores"):
        result["cores"] = str(cores)
    return result


def parse_pkg_version(output: str | None) -> str | None:
    if not output:
        return None
    for line in output.splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return None


def parse_tool_version(output: str | None) -> Version | None:
    if not output:
        return None
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", output.splitlines()[0] if output.strip() else "")
    if not m:
        return None
    try:
        return Version(m.group(1))
    except InvalidVersion:
        return None


def parse_compiler(output: str | None) -> tuple[str, Version] | None:
    """(family, version) from ``c++ --version``."""
    if not output or not output.strip():
        return None
    first = output.splitlines()[0]
    family = "gcc"
    if "Apple clang" in first:
        family = "apple-clang"
    elif "clang" in first:
        family = "clang"
    versions = re.findall(r"(\d+\.\d+(?:\.\d+)?)", first)
    if not versions:
        return None
    # gcc prints "c++ (Debian 12.2.0-14) 12.2.0": the last number is the version.
    text = versions[-1] if family == "gcc" else versions[0]
    return family, Version(text)


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


# --------------------------------------------------------------------------- checks
def check_os(p: Probe) -> Check:
    data = {"system": p.system, "machine": p.machine, "release": p.release}
    label = f"{p.system} {p.release} {p.machine}".strip()
    if p.system == "Darwin" and p.machine == "arm64":
        return Check("os", "ok", f"macOS {p.release} on Apple Silicon (Metal backend)",
                     required=True, data=data)
    if p.system == "Darwin":
        return Check("os", "warn", f"macOS {p.release} on {p.machine}: no Metal backend for "
                     "TurboQuant, CPU only", required=True, data=data)
    if p.system == "Linux":
        return Check("os", "ok", label, required=True, data=data)
    return Check("os", "fail", f"{label} is not supported", fix="use macOS or Linux",
                 required=True, data=data)


def macos_checks(p: Probe) -> list[Check]:
    if p.system != "Darwin":
        why = "not macOS"
        return [Check(n, "skip", why) for n in ("chip", "unified memory", "gpu wired limit",
                                                 "metal", "xcode command line tools")]
    checks: list[Check] = []
    brand = parse_sysctl_value(p.run(["sysctl", "-n", "machdep.cpu.brand_string"]))
    checks.append(Check("chip", "ok" if brand else "warn", brand or "unknown (sysctl failed)",
                        data={"brand": brand}))
    mem_raw = parse_sysctl_value(p.run(["sysctl", "-n", "hw.memsize"]))
    mem = int(mem_raw) if mem_raw and mem_raw.isdigit() else None
    checks.append(Check("unified memory", "ok" if mem else "warn",
                        _gib(mem) if mem else "unknown (sysctl hw.memsize failed)",
                        data={"bytes": mem}))
    wired_raw = parse_sysctl_value(p.run(["sysctl", "iogpu.wired_limit_mb"]))
    if wired_raw is None or not wired_raw.isdigit():
        checks.append(Check("gpu wired limit", "warn",
                            "iogpu.wired_limit_mb not readable (macOS before 14 names it "
                            "debug.iogpu.wired_limit)", data={"mb": None}))
    else:
        mb = int(wired_raw)
        if mb == 0:
            detail = "0 (the macOS default limit for GPU memory)"
        else:
            detail = f"{mb} MB"
            if mem:
                detail += f" ({100 * mb * 1024 * 1024 / mem:.0f} % of unified memory)"
        checks.append(Check("gpu wired limit", "ok", detail,
                            fix="raise it until reboot for long contexts: "
                                "sudo sysctl iogpu.wired_limit_mb=<MB>",
                            data={"mb": mb}))
    gpu = parse_displays(p.run(["system_profiler", "SPDisplaysDataType", "-json"]))
    if gpu and gpu.get("metal"):
        cores = f", {gpu['cores']} GPU cores" if gpu.get("cores") else ""
        checks.append(Check("metal", "ok", f"{gpu['name']}: {gpu['metal']}{cores}",
                            required=p.machine == "arm64", data=gpu))
    else:
        checks.append(Check("metal", "fail" if p.machine == "arm64" else "warn",
                            "no Metal-capable GPU reported by system_profiler",
                            required=p.machine == "arm64", data=gpu or {}))
    devdir = (p.run(["xcode-select", "-p"]) or "").strip()
    clt = parse_pkg_version(p.run(["pkgutil", "--pkg-info=com.apple.pkg.CLTools_Executables"]))
    if devdir:
        detail = devdir + (f" (CLTools {clt})" if clt else "")
        checks.append(Check("xcode command line tools", "ok", detail, required=True,
                            data={"developer_dir": devdir, "cltools_version": clt}))
    else:
        checks.append(Check("xcode command line tools", "fail", "not installed",
                            fix="xcode-select --install", required=True,
                            data={"developer_dir": None, "cltools_version": clt}))
    return checks


def _version_check(name: str, out: str | None, minimum: Version, *, required: bool,
                   fix: str) -> Check:
    ver = parse_tool_version(out)
    if out is None:
        return Check(name, "fail" if required else "warn", "not found", fix=fix, required=required)
    if ver is None:
        return Check(name, "warn", f"unrecognised version output: {out.strip()[:60]}",
                     required=required)
    if ver < minimum:
        return Check(name, "fail" if required else "warn", f"{ver} (need >= {minimum})", fix=fix,
                     required=required, data={"version": str(ver)})
    return Check(name, "ok", f"{ver} (>= {minimum})", required=required,
                 data={"version": str(ver)})


def toolchain_checks(p: Probe) -> list[Check]:
    mac = p.system == "Darwin"
    checks = [
        _version_check("git", p.run(["git", "--version"]), MIN_GIT, required=True,
                       fix=proc.INSTALL_HINTS["git"]),
        _version_check("cmake", p.run(["cmake", "--version"]), MIN_CMAKE, required=True,
                       fix=proc.INSTALL_HINTS["cmake"]),
    ]
    comp = parse_compiler(p.run(["c++", "--version"]))
    if comp is None:
        checks.append(Check("c++ compiler", "fail", "c++ not found", required=True,
                            fix=proc.INSTALL_HINTS["c++"]))
    else:
        family, ver = comp
        minimum = MIN_COMPILERS[family]
        ok = ver >= minimum
        checks.append(Check("c++ compiler", "ok" if ok else "fail",
                            f"{family} {ver}" + ("" if ok else f" (need >= {minimum})"),
                            fix=None if ok else proc.INSTALL_HINTS["c++"], required=True,
                            data={"family": family, "version": str(ver)}))
    ccache = p.run(["ccache", "--version"]) if p.which("ccache") else None
    checks.append(Check("ccache", "ok" if ccache else "warn",
                        str(parse_tool_version(ccache)) if ccache else
                        "not installed: every rebuild after a source change compiles everything",
                        fix=None if ccache else proc.INSTALL_HINTS["ccache"]))
    ninja = p.run(["ninja", "--version"]) if p.which("ninja") else None
    checks.append(Check("ninja", "ok" if ninja else "warn",
                        str(parse_tool_version(ninja)) if ninja else
                        "not installed: builds use make (slower no-op builds)",
                        fix=None if ninja else proc.INSTALL_HINTS["ninja"]))
    if not mac:
        nvcc = p.run(["nvcc", "--version"]) if p.which("nvcc") else None
        if nvcc:
            m = re.search(r"release (\d+\.\d+)", nvcc)
            checks.append(Check("nvcc", "ok", f"CUDA {m.group(1) if m else '?'}"))
        else:
            checks.append(Check("nvcc", "skip", "not installed (CUDA backend unavailable)"))
        smi = p.run(["nvidia-smi", "-L"]) if p.which("nvidia-smi") else None
        if smi and "GPU" in smi:
            checks.append(Check("nvidia gpu", "ok", smi.strip().splitlines()[0]))
        else:
            checks.append(Check("nvidia gpu", "skip", "no NVIDIA GPU found (nvidia-smi)"))
    return checks


def resource_checks(p: Probe, paths: Paths) -> list[Check]:
    total, avail = p.memory()
    free = p.disk_free(paths.home)
    mem = Check("memory", "ok" if avail >= 4 * GIB else "warn",
                f"{_gib(total)} total, {_gib(avail)} available",
                data={"total_bytes": total, "available_bytes": avail})
    if free < DISK_FAIL_GIB * GIB:
        status: Status = "fail"
    elif free < DISK_WARN_GIB * GIB:
        status = "warn"
    else:
        status = "ok"
    disk = Check("disk", status, f"{_gib(free)} free at {paths.home}",
                 fix=None if status == "ok" else
                 f"keep at least {DISK_WARN_GIB} GiB free for builds; free space or set TURBOCTL_HOME",
                 required=True, data={"free_bytes": free, "path": str(paths.home)})
    return [mem, disk]


def build_checks(paths: Paths, pins_path: Path | None = None,
                 patches_dir: Path | None = None) -> list[Check]:
    try:
        m = load_current(paths)
    except TurboctlError as exc:
        return [Check("build", "warn", exc.message, fix="turboctl build")]
    if m is None:
        return [Check("build", "warn", f"nothing built yet in {paths.home}", fix="turboctl build"),
                Check("turbo cache types", "skip", "no build"),
                Check("self-test", "skip", "no build")]
    try:
        problems = compare(m, load_pin(pins_path), load_series(patches_dir))
    except TurboctlError as exc:
        problems = [exc.message]
    data = {"manifest": str(paths.current_manifest), "commit": m.pin.commit,
            "backend": m.backend, "cache_types": m.cache_types}
    if problems:
        build = Check("build", "warn", "; ".join(problems), fix="turboctl build", data=data)
    else:
        build = Check("build", "ok", f"{m.pin.tag} {m.patches.head[:12]} ({m.backend}, "
                      f"{len(m.patches.series)} patches); KV types: {', '.join(m.cache_types)}",
                      data=data)
    missing = [t for t in TURBO_TYPES if t not in m.cache_types]
    turbo = Check("turbo cache types", "warn" if missing else "ok",
                  f"llama-server does not accept {', '.join(missing)}" if missing else
                  "llama-server accepts " + ", ".join(TURBO_TYPES),
                  fix="needs the TurboQuant patch series; rebuild with turboctl build"
                  if missing else None)
    return [build, turbo, selftest_check(m)]


def selftest_summary(m: Manifest) -> dict[str, Any] | None:
    """The self-test of the current build for ``doctor --json`` (None: it never ran)."""
    rec = m.selftest
    if rec is None:
        return None
    return {
        "status": rec.status,
        "reason": rec.reason,
        "backend": rec.backend,
        "device": rec.device,
        "when": rec.when,
        "duration_s": rec.duration_s,
        "counts": {**rec.counts.model_dump(), "total": rec.counts.total},
        "failing": [c.label() for c in rec.failing],
        "unsupported": [c.label() for c in rec.unsupported],
        "stale": stale_reason(m, rec),
        "command": rec.command,
        "log": rec.log,
    }


def selftest_check(m: Manifest) -> Check:
    """The backend self-test as a check: turbo types are served only after it passed."""
    fix = "turboctl selftest"
    data = selftest_summary(m) or {}
    rec = m.selftest
    if rec is None:
        return Check("self-test", "warn", "never ran for this build: the turbo KV cache types are refused "
                     "until it passes", fix=fix, data=data)
    c = rec.counts
    counts = f"{c.passed}/{c.total} turbo cases passed on {rec.device}"
    if c.failed:
        counts += f", {c.failed} failed"
    if c.unsupported:
        optional = sum(1 for case in rec.unsupported if case.optional)
        counts += f", {c.unsupported} not supported" + (f" ({optional} of them optional)" if optional else "")
    when = f"{rec.when}, {rec.duration_s:.1f} s"
    if data.get("stale"):
        return Check("self-test", "warn", f"{rec.status} ({counts}; {when}) but it ran on other binaries "
                     f"({data['stale']}): the turbo KV cache types are refused", fix=fix, data=data)
    if rec.status == "pass":
        return Check("self-test", "ok", f"pass: {counts} ({when})", data=data)
    cases = [*rec.failing, *rec.unsupported]
    what = "could not run to the end: " if rec.status == "error" else ""
    detail = f"{rec.status}: {what}{rec.reason} ({when})"
    if cases:
        detail += f"; cases: {name_cases(cases)}"
    detail += "; the turbo KV cache types are refused on this build (q8_0, q4_0 still work)"
    return Check("self-test", "warn", detail,
                 fix=f"{fix} (after updating turboctl); report it with turboctl doctor --json and the log "
                     f"{rec.log}", data=data)


def run_checks(probe: Probe, paths: Paths, *, pins_path: Path | None = None,
               patches_dir: Path | None = None) -> list[Check]:
    return [
        check_os(probe),
        *macos_checks(probe),
        *resource_checks(probe, paths),
        *toolchain_checks(probe),
        *build_checks(paths, pins_path, patches_dir),
    ]


def failed_required(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if c.required and c.status == "fail"]


def report(checks: Sequence[Check]) -> dict[str, Any]:
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail", "skip")}
    selftest = next((c.data for c in checks if c.name == "self-test" and c.data), None)
    return {
        "schema": SCHEMA,
        "turboctl_version": __version__,
        "ok": not failed_required(checks),
        "summary": counts,
        "checks": [asdict(c) for c in checks],
        "selftest": selftest,
    }


def schema_path() -> Path:
    return Path(__file__).resolve().parent / "schemas" / "doctor.schema.json"
