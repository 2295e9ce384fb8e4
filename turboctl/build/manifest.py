"""The build manifest: what was built, from what, how, and what the binaries accept.

Written as JSON (schema ``turboctl.manifest/3``) atomically into the build directory and
copied to ``<home>/build/current-manifest.json``; other commands use :func:`load_current`
and :func:`compare` (is this build still the pinned commit + current patch series?).

Schema 2 added ``selftest`` (the backend self-test of the built binaries, see
:mod:`turboctl.build.selftest`); schema 3 added ``selftest.fa_cases`` (the K/V pair, head dims and
result of every FLASH_ATTN_EXT case, which the serving gate checks a model against) and
``optional`` on the listed cases. Older manifests are still read: a schema-1 manifest becomes
one whose self-test never ran, a schema-2 self-test one without ``fa_cases`` (None: the gate
asks for ``turboctl selftest`` before it serves a turbo type by head dims).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..paths import Paths, write_text_atomic
from .patches import Series
from .pins import Pin

SCHEMA = "turboctl.manifest/3"
SCHEMA_V2 = "turboctl.manifest/2"
SCHEMA_V1 = "turboctl.manifest/1"
FILENAME = "turboctl-manifest.json"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PinInfo(_Model):
    url: str
    tag: str
    commit: str


class SourceInfo(_Model):
    kind: str
    detail: str
    path: str
    base_commit: str


class PatchEntry(_Model):
    name: str
    sha256: str


class PatchInfo(_Model):
    directory: str
    series: list[PatchEntry]
    head: str


class CMakeInfo(_Model):
    generator: str
    flags: list[str]
    build_dir: str
    targets: list[str]
    jobs: int
    configured: bool = Field(description="False when the cached configuration was reused")
    build_steps: int = Field(description="compile/link steps run by this build (0 = no-op)")


class BinaryInfo(_Model):
    path: str
    sha256: str
    size: int


class SelftestCounts(_Model):
    passed: int = 0
    failed: int = 0
    unsupported: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.unsupported


class SelftestCase(_Model):
    """One test-backend-ops case that did not pass."""

    op: str
    params: str
    result: Literal["failed", "unsupported"]
    error: str = ""
    optional: bool = Field(default=False, description=(
        "a case outside the table of kernels the GPU backends must have (K/V head dims that "
        "differ, an extra attention feature): not supported there does not fail the self-test"))

    def label(self) -> str:
        return f"{self.op}({self.params})"


class FACase(_Model):
    """One FLASH_ATTN_EXT case of the self-test: what the serving gate checks a model against."""

    pair: str = Field(description="'K/V' cache types")
    hsk: int = Field(description="K (and Q) head dim")
    hsv: int = Field(description="V head dim")
    result: Literal["passed", "failed", "unsupported"]
    optional: bool = False


class Selftest(_Model):
    """The backend self-test (test-backend-ops, turbo cases) of one build."""

    backend: str
    device: str
    command: list[str]
    binary: str
    binary_sha256: str
    libraries: dict[str, str] = Field(
        description="sha256 of the ggml libraries next to the binary (the code under test)")
    when: str
    duration_s: float
    status: Literal["pass", "fail", "error"]
    reason: str = Field(description="why the status is not pass ('' when it is)")
    returncode: int | None
    counts: SelftestCounts
    per_op: dict[str, SelftestCounts]
    per_type: dict[str, SelftestCounts] = Field(
        description="every case that involves the type (as source, destination, K or V)")
    per_pair: dict[str, SelftestCounts] = Field(
        description="FLASH_ATTN_EXT cases per exact K/V pair, keyed 'K/V'")
    failing: list[SelftestCase]
    unsupported: list[SelftestCase]
    fa_cases: list[FACase] | None = Field(default=None, description=(
        "every FLASH_ATTN_EXT case (pair, head dims, result); None: recorded by a turboctl "
        "that did not keep them (schema 2)"))
    log: str
    output: str = Field(description="the SQL document test-backend-ops wrote")


class RpcIdentity(_Model):
    """The build identity the RPC backend of this build sends in its handshake."""

    base: str = Field(description="the llama.cpp commit the series was applied on")
    series: str = Field(description="sha256 of the patch series (turboctl.workers.identity.series_sha256)")
    types: dict[str, int] = Field(description="the turbo types of the build by type id")
    worker: str = Field(description="the build's RPC worker target (its binary in binaries)")


class Manifest(_Model):
    schema_: str = Field(alias="schema")
    turboctl_version: str
    created: str
    pin: PinInfo
    source: SourceInfo
    patches: PatchInfo
    backend: str
    host: dict[str, str]
    cmake: CMakeInfo
    compiler: dict[str, str]
    binaries: dict[str, BinaryInfo]
    cache_types: list[str]
    version: list[str]
    timings_s: dict[str, float]
    selftest: Selftest | None = None
    rpc: RpcIdentity | None = Field(default=None, description=(
        "the RPC build identity; None: built by a turboctl without the RPC backend"))

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    def binary(self, name: str) -> Path:
        return Path(self.binaries[name].path)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write JSON so that readers see either the old or the new file, never half of one."""
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def save(manifest: Manifest, build_dir: Path, paths: Paths) -> Path:
    doc = manifest.to_json_dict()
    target = build_dir / FILENAME
    write_atomic(target, doc)
    write_atomic(paths.current_manifest, doc)
    return target


def with_selftest(manifest: Manifest, record: Selftest | None, paths: Paths) -> Manifest:
    """The manifest with this self-test record, saved (build directory and current)."""
    updated = manifest.model_copy(update={"selftest": record})
    save(updated, Path(manifest.cmake.build_dir), paths)
    return updated


def load(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable build manifest ({exc})",
                          hint="run turboctl build to write it again") from exc
    if isinstance(raw, dict) and raw.get("schema") == SCHEMA_V1 and "selftest" not in raw:
        raw = {**raw, "schema": SCHEMA, "selftest": None}  # written before the self-test existed
    elif isinstance(raw, dict) and raw.get("schema") == SCHEMA_V2:
        record = raw.get("selftest")
        if record is None or (isinstance(record, dict) and "fa_cases" not in record):
            raw = {**raw, "schema": SCHEMA}  # its self-test kept no FLASH_ATTN_EXT head dims
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else None
        raise ConfigError(f"{path}: manifest schema {found!r}, expected {SCHEMA!r}",
                          hint="run turboctl build to write it again")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: invalid build manifest at '{where}': {first['msg']}",
                          hint="run turboctl build to write it again") from exc


def load_current(paths: Paths) -> Manifest | None:
    """The manifest of the latest successful build, or None if nothing was built yet."""
    try:
        return load(paths.current_manifest)
    except FileNotFoundError:
        return None


def compare(manifest: Manifest, pin: Pin, series: Series) -> list[str]:
    """Differences between a build and what turboctl would build now ([] = up to date)."""
    problems: list[str] = []
    if manifest.pin.commit != pin.commit:
        problems.append(f"built from {manifest.pin.commit[:12]} ({manifest.pin.tag}), "
                        f"the pin is {pin.commit[:12]} ({pin.llama_cpp.tag})")
    built = [(p.name, p.sha256) for p in manifest.patches.series]
    current = [(p.name, p.sha256) for p in series.patches]
    if built != current:
        b, c = dict(built), dict(current)
        changed = sorted(n for n in c if n in b and b[n] != c[n])
        missing = [n for n in c if n not in b]
        extra = [n for n in b if n not in c]
        parts = []
        if missing:
            parts.append("not applied: " + ", ".join(missing))
        if extra:
            parts.append("no longer in the series: " + ", ".join(extra))
        if changed:
            parts.append("changed since the build: " + ", ".join(changed))
        problems.append("patch series differs (" + ("; ".join(parts) or "order changed") + ")")
    for name, info in manifest.binaries.items():
        if not Path(info.path).is_file():
            problems.append(f"{name} is missing: {info.path}")
    return problems
