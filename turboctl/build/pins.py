"""The pin: which llama.cpp we build, where to get it and how to verify it.

The data lives in ``turboctl/build/pins.toml`` (bumped by ``python -m turboctl.devtools bump-pin``);
this module loads and validates it. Unknown keys and malformed values are errors.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SCHEMA_VERSION = 1

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
GitSha = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LlamaCppPin(_Frozen):
    url: str
    tag: str = Field(min_length=1)
    commit: GitSha
    cache_types: tuple[str, ...] = Field(
        min_length=1, description="KV cache types the unpatched upstream binary accepts")

    @property
    def short(self) -> str:
        return self.commit[:7]


class SdistPin(_Frozen):
    package: str
    version: str
    filename: str
    url: str
    size: int = Field(gt=0)
    sha256: Sha256
    subdir: str
    tree_commit: GitSha | None = Field(
        default=None, description="deterministic commit id of the imported tree")

    @field_validator("url")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return v


class Pin(_Frozen):
    schema_: int = Field(alias="schema")
    llama_cpp: LlamaCppPin
    sdist: SdistPin
    anchors: tuple[str, ...] = Field(
        description="files always checksummed, whatever the series touches")
    files: dict[str, Sha256]

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported pins schema {v} (this turboctl reads {SCHEMA_VERSION})")
        return v

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            p = PurePosixPath(name)
            if p.is_absolute() or ".." in p.parts or name != p.as_posix():
                raise ValueError(f"file key {name!r} must be a relative POSIX path")
        return v

    @property
    def commit(self) -> str:
        return self.llama_cpp.commit


def default_pins_path() -> Path:
    return Path(str(resources.files("turboctl.build").joinpath("pins.toml")))


def load_pin(path: Path | None = None) -> Pin:
    path = path or default_pins_path()
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"pin file not found: {path}",
                          hint="reinstall turboctl; the pin ships inside the package") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Pin.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"{path}: invalid pin at '{where}': {first['msg']}",
            hint="fix the file or regenerate it with: python -m turboctl.devtools bump-pin",
            details=[f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[1:6]],
        ) from exc
