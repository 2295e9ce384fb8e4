"""``turboctl build``: plan → source → patches → cmake → verify → manifest."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, proc
from ..errors import ConfigError, UsageError, VerificationError
from ..paths import Paths
from ..ui import UI
from ..workers import identity
from . import cmake, gitrepo, manifest, patches, source
from . import selftest as selftest_mod
from .pins import Pin, default_pins_path, load_pin


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build needs, resolved and validated before any long work starts."""

    pin: Pin
    source: source.Source
    series: patches.Series
    backend: cmake.Backend
    host: cmake.Host
    generator: str
    flags: tuple[str, ...]
    targets: tuple[str, ...]
    jobs: int
    force: bool
    selftest: bool
    paths: Paths
    src_dir: Path
    build_dir: Path

    def rows(self) -> list[tuple[str, str]]:
        names = ", ".join(p.name for p in self.series.patches) or "(none: the series is empty)"
        return [
            ("source", self.source.describe()),
            ("commit", f"{self.pin.llama_cpp.tag} {self.pin.commit}"),
            ("patches", f"{len(self.series.patches)} from {self.series.directory}: {names}"),
            ("backend", f"{self.backend.name} ({self.backend.description})"),
            ("cmake flags", " ".join(self.flags)),
            ("generator", self.generator),
            ("source dir", str(self.src_dir)),
            ("build dir", str(self.build_dir)),
            ("targets", " ".join(self.targets)),
            ("jobs", str(self.jobs)),
            ("self-test", f"test-backend-ops -p turbo on {self.backend.device} after the build"
             if self.selftest else "off (--no-selftest): turbo KV cache types will be refused"),
        ]


def make_plan(
    *,
    paths: Paths,
    source_arg: str | None = None,
    backend: str = "auto",
    jobs: int | None = None,
    force: bool = False,
    selftest: bool = True,
    curl: bool = False,
    patches_dir: Path | None = None,
    pins_path: Path | None = None,
    host: cmake.Host | None = None,
) -> BuildPlan:
    host = host or cmake.Host.current()
    pin = load_pin(pins_path)
    series = patches.load_series(patches_dir)
    uncovered = [f for f in series.upstream_files() if f not in pin.files]
    if uncovered:
        raise ConfigError(
            f"{pins_path or default_pins_path()} has no checksum for "
            f"{', '.join(uncovered[:5])}, touched by the patch series",
            hint="refresh the pin: python -m turboctl.devtools bump-pin --tree <pinned tree>")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1")
    chosen = cmake.choose_backend(backend, host)
    src = source.parse_source(source_arg, pin)
    return BuildPlan(
        pin=pin,
        source=src,
        series=series,
        backend=chosen,
        host=host,
        generator=cmake.generator(host),
        flags=tuple(cmake.cmake_flags(chosen, host, selftest=selftest, curl=curl,
                                      identity=(pin.commit, series.sha256()))),
        targets=tuple(cmake.targets(selftest)),
        jobs=jobs or os.cpu_count() or 2,
        force=force,
        selftest=selftest,
        paths=paths,
        src_dir=paths.source_dir(pin.llama_cpp.tag, pin.commit),
        build_dir=paths.build_dir(pin.llama_cpp.tag, pin.commit, chosen.name),
    )


# --------------------------------------------------------------------------- verification
_ALLOWED = re.compile(r"allowed values:\s*(.+)")


def parse_cache_types(help_text: str) -> list[str]:
    """The values listed under ``--cache-type-k`` in ``llama-server --help``."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        if "--cache-type-k" not in line:
            continue
        for j in range(i, min(i + 6, len(lines))):
            m = _ALLOWED.search(lines[j])
            if m:
                # the list wraps: a line ending in "," continues on the next one
                text = m.group(1).strip()
                for cont in lines[j + 1:j + 8]:
                    if not text.endswith(","):
                        break
                    text += " " + cont.strip()
                return [t.strip() for t in text.split(",") if t.strip()]
    return []


def cache_types_problem(help_text: str) -> str:
    """Why :func:`parse_cache_types` found no values in this ``--help`` output."""
    lines = help_text.splitlines()
    if not help_text.strip():
        return "its --help output is empty"
    at = next((i for i, line in enumerate(lines) if "--cache-type-k" in line), None)
    if at is None:
        return f"its --help output has no --cache-type-k option ({len(lines)} line(s))"
    return (f"its --help output has no \"allowed values:\" line under --cache-type-k (line {at + 1}: "
            f"{lines[at].strip()!r})")


def parse_version(output: str) -> list[str]:
    return [ln.strip() for ln in output.splitlines()
            if ln.strip().startswith(("version:", "built with"))]


def verify(plan: BuildPlan, log: Path) -> tuple[dict[str, manifest.BinaryInfo], list[str], list[str]]:
    binaries: dict[str, manifest.BinaryInfo] = {}
    for target in plan.targets:
        found = cmake.find_binary(plan.build_dir, target)
        if found is None:
            raise VerificationError(f"the build reported success but {target} is not in {plan.build_dir}",
                                    hint="run again with --force", log_path=log)
        binaries[target] = manifest.BinaryInfo(path=str(found), sha256=gitrepo.file_sha256(found),
                                               size=found.stat().st_size)
    server = Path(binaries["llama-server"].path)
    helped = proc.run([str(server), "--help"], log=log, timeout=120, error=VerificationError,
                      what="llama-server --help", echo=False)
    types = parse_cache_types(helped.output)
    if not types:
        raise VerificationError(f"{server} lists no KV cache types: {cache_types_problem(helped.output)}",
                                hint="the binary is not a llama-server of the pinned llama.cpp; run turboctl "
                                     "build --force", log_path=log, details=proc.relevant_lines(helped.lines))
    missing = [t for t in plan.pin.llama_cpp.cache_types if t not in types]
    if missing:
        raise VerificationError(
            f"{server} --help does not list the expected KV cache types "
            f"(found: {', '.join(types) or 'none'}; missing: {', '.join(missing)})",
            hint="the binary is not from the pinned tree; run turboctl build --force", log_path=log)
    # the types the patch series adds: the classic failure is a binary from an unpatched tree
    # ("Unsupported cache type: turbo4")
    unpatched = [t for t in plan.series.cache_types if t not in types]
    if unpatched:
        raise VerificationError(
            f"{server} does not accept the KV cache types {', '.join(unpatched)} that the patch series "
            f"{plan.series.directory / 'series'} adds: it was not built from the patched tree",
            hint="run turboctl build --force (resets and re-patches the tree)", log_path=log)
    ver = proc.run([str(server), "--version"], log=log, timeout=120, error=VerificationError,
                   what="llama-server --version", echo=False)
    return binaries, types, parse_version(ver.output)


# --------------------------------------------------------------------------- run
@contextmanager
def _phase(name: str, timings: dict[str, float], ui: UI) -> Iterator[None]:
    ui.step(name)
    started = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - started, 3)


def run(plan: BuildPlan, ui: UI) -> manifest.Manifest:
    plan.paths.ensure()
    log = plan.paths.logs / f"build-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    ui.info(f"log: {log}")
    timings: dict[str, float] = {}
    started = time.monotonic()
    ctx = source.Context(pin=plan.pin, paths=plan.paths, dest=plan.src_dir, log=log, ui=ui)
    with _phase("source", timings, ui):
        tree = source.obtain(plan.source, ctx, force=plan.force)
        ui.ok(f"{tree.kind} tree at {tree.base_commit[:12]} verified"
              + (" (reused)" if tree.reused else ""))
    with _phase("patches", timings, ui):
        applied = patches.apply_series(tree.path, tree.base_commit, plan.series, force=plan.force,
                                       log=log, ui=ui)
        rpc_identity = identity.BuildIdentity(base=plan.pin.commit, series=plan.series.sha256(),
                                              types=identity.turbo_types(patches.check_type_ids(tree.path)))
        ui.ok(f"{applied.reason}; HEAD {applied.head[:12]}")
    env = cmake.build_env(plan.paths.home)
    with _phase("configure", timings, ui):
        configured = cmake.configure(tree.path, plan.build_dir, plan.flags, plan.generator,
                                     env=env, log=log, ui=ui)
    with _phase("build", timings, ui):
        progress = cmake.build(plan.build_dir, plan.targets, plan.jobs, env=env, log=log, ui=ui)
        ui.ok(f"{progress.steps} compile/link steps" if progress.steps else "nothing to rebuild")
    with _phase("verify", timings, ui):
        binaries, types, version = verify(plan, log)
        ui.ok(f"llama-server accepts KV cache types: {', '.join(types)}")
    record = None
    if plan.selftest:
        with _phase("selftest", timings, ui):
            record = selftest_mod.reusable(manifest.load_current(plan.paths), plan.backend.name, binaries)
            if record is not None:
                ui.ok(f"self-test: the binaries are the ones it tested, result kept: {selftest_mod.describe(record)}"
                      " (turboctl selftest runs it again)")
            else:
                record = selftest_mod.run_binary(Path(binaries[cmake.SELFTEST_TARGET].path), plan.backend.name,
                                                 plan.paths, ui)
                (ui.ok if record.status == "pass" else ui.warn)(f"self-test {selftest_mod.describe(record)}")
    timings["total"] = round(time.monotonic() - started, 3)
    result = manifest.Manifest.model_validate({
        "schema": manifest.SCHEMA,
        "turboctl_version": __version__,
        "created": manifest.now_iso(),
        "pin": {"url": plan.pin.llama_cpp.url, "tag": plan.pin.llama_cpp.tag,
                "commit": plan.pin.commit},
        "source": tree.to_dict(),
        "patches": {"directory": str(plan.series.directory), "series": plan.series.to_list(),
                    "head": applied.head},
        "backend": plan.backend.name,
        "host": {"system": plan.host.system, "machine": plan.host.machine},
        "cmake": {"generator": plan.generator, "flags": list(plan.flags),
                  "build_dir": str(plan.build_dir), "targets": list(plan.targets),
                  "jobs": plan.jobs, "configured": configured, "build_steps": progress.steps},
        "compiler": cmake.compiler_info(plan.build_dir),
        "binaries": {k: v.model_dump() for k, v in binaries.items()},
        "cache_types": types,
        "version": version,
        "timings_s": timings,
        "selftest": record.model_dump(mode="json") if record else None,
        "rpc": {"base": rpc_identity.base, "series": rpc_identity.series, "types": dict(rpc_identity.types),
                "worker": cmake.RPC_SERVER},
    })
    where = manifest.save(result, plan.build_dir, plan.paths)
    ui.ok(f"manifest: {where} ({timings['total']:.1f} s)")
    return result


# --------------------------------------------------------------------------- selftest again
def rerun_selftest(current: manifest.Manifest, paths: Paths, ui: UI, *,
                   pins_path: Path | None = None) -> manifest.Manifest:
    """Run the self-test on the current build again and record it in its manifest.

    When ``test-backend-ops`` is missing (a ``--no-selftest`` build) or is not the binary the
    manifest recorded, the normal build path runs instead, with the self-test on and the
    options of the current build (backend, patch series, ``--curl``)."""
    info = current.binaries.get(cmake.SELFTEST_TARGET)
    path = Path(info.path) if info else None
    if info and path and path.is_file() and gitrepo.file_sha256(path) == info.sha256:
        record = selftest_mod.run(current, paths, ui)
        return manifest.with_selftest(current, record, paths)
    ui.info(f"{cmake.SELFTEST_TARGET} is not built or changed: building it (turboctl build --selftest "
            f"--backend {current.backend})")
    patches_dir = Path(current.patches.directory)
    plan = make_plan(paths=paths, backend=current.backend, selftest=True,
                     curl="-DLLAMA_OPENSSL=ON" in current.cmake.flags,
                     patches_dir=patches_dir if (patches_dir / "series").is_file() else None,
                     pins_path=pins_path)
    ui.kv("plan", plan.rows())
    return run(plan, ui)
