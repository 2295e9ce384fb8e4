"""KV cache configurations: the cache types, their cost in bits, and a validated K/V pair.

A :class:`KVConfig` is built (and checked) before anything starts: unknown type names are a
usage error with the closest valid name, and a TurboQuant type without flash attention is
refused (the patched llama.cpp refuses it too, but only after loading the model).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ..errors import KVConfigError, UsageError

TURBO_TYPES = ("turbo2", "turbo3", "turbo4")

# Storage cost per value including the block scales (ggml block layouts; the turbo types
# as designed in kernels/: 4.25, 3.25 and 2.25 bits).
BITS_PER_VALUE: dict[str, float] = {
    "f32": 32.0,
    "f16": 16.0,
    "bf16": 16.0,
    "q8_0": 8.5,
    "q4_0": 4.5,
    "q4_1": 5.0,
    "iq4_nl": 4.5,
    "q5_0": 5.5,
    "q5_1": 6.0,
    "turbo4": 4.25,
    "turbo3": 3.25,
    "turbo2": 2.25,
}
KNOWN_TYPES = tuple(BITS_PER_VALUE)

# llama.cpp b11312 rotates Q/K/V with a Hadamard matrix when the cache type is quantized
# (attn_rot, LLAMA_ATTN_ROT_DISABLE=1 turns it off); our patch uses its own randomized
# rotation for the turbo types instead.
UPSTREAM_ROTATED = ("q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

FlashAttn = Literal["on", "off", "auto"]


def is_turbo(cache_type: str) -> bool:
    return cache_type in TURBO_TYPES


def _check_type(name: str, what: str) -> str:
    if name in BITS_PER_VALUE:
        return name
    close = difflib.get_close_matches(name, KNOWN_TYPES, n=1, cutoff=0.5)
    suggestion = f"; did you mean {close[0]}?" if close else ""
    raise UsageError(f"unknown {what} cache type {name!r}{suggestion}",
                     hint=f"known types: {', '.join(KNOWN_TYPES)}")


class KVConfig(BaseModel):
    """One KV cache configuration: the K type, the V type and the flash-attention mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type_k: str
    type_v: str
    flash_attn: FlashAttn = "on"

    @field_validator("type_k", "type_v")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in BITS_PER_VALUE:
            raise ValueError(f"unknown cache type {value!r}")
        return value

    @model_validator(mode="after")
    def _turbo_needs_flash_attention(self) -> KVConfig:
        turbo = [t for t in (self.type_k, self.type_v) if is_turbo(t)]
        if turbo and self.flash_attn == "off":
            raise ValueError(f"the TurboQuant cache type {turbo[0]} requires flash attention")
        return self

    @property
    def label(self) -> str:
        """``q8_0`` for symmetric pairs, ``q8_0/turbo3`` otherwise."""
        return self.type_k if self.type_k == self.type_v else f"{self.type_k}/{self.type_v}"

    @property
    def pair(self) -> str:
        return f"{self.type_k}/{self.type_v}"

    @property
    def bits_per_value(self) -> float:
        """Mean of the K and V costs (K and V hold the same number of values when their
        head dims are equal, which is every model the turbo types serve today)."""
        return (BITS_PER_VALUE[self.type_k] + BITS_PER_VALUE[self.type_v]) / 2

    @property
    def uses_turbo(self) -> bool:
        return is_turbo(self.type_k) or is_turbo(self.type_v)

    @property
    def upstream_rotated(self) -> bool:
        """True when b11312's own Hadamard rotation (attn_rot) applies to K or V."""
        return self.type_k in UPSTREAM_ROTATED or self.type_v in UPSTREAM_ROTATED

    def llama_args(self) -> list[str]:
        return ["-fa", self.flash_attn, "-ctk", self.type_k, "-ctv", self.type_v]


def make_config(type_k: str, type_v: str, flash_attn: str = "on") -> KVConfig:
    """A validated :class:`KVConfig`; errors become one clear line with an exit code."""
    _check_type(type_k, "K")
    _check_type(type_v, "V")
    if flash_attn not in ("on", "off", "auto"):
        raise UsageError(f"flash attention {flash_attn!r}: choose on, off or auto")
    turbo = [t for t in (type_k, type_v) if is_turbo(t)]
    if turbo and flash_attn == "off":
        raise KVConfigError(
            f"the TurboQuant cache type {turbo[0]} requires flash attention, but flash attention is off",
            hint="use flash attention on (or auto), or a cache type that works without it (f16, q8_0)")
    return KVConfig(type_k=type_k, type_v=type_v, flash_attn=flash_attn)  # type: ignore[arg-type]


def parse_kv(spec: str, flash_attn: str = "on") -> KVConfig:
    """``K/V`` or a single type for both (``q4_0`` means ``q4_0/q4_0``)."""
    text = spec.strip()
    parts = [p.strip() for p in text.split("/")]
    if not text or len(parts) > 2 or not all(parts):
        raise UsageError(f"--kv {spec!r}: expected TYPE or K/V, e.g. q4_0 or q8_0/turbo3")
    type_k, type_v = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return make_config(type_k, type_v, flash_attn)


def parse_kv_list(specs: Iterable[str], defaults: Iterable[str], flash_attn: str = "on") -> list[KVConfig]:
    """``--kv`` values (each may also be a comma-separated list), or the defaults; no duplicates."""
    items: list[str] = []
    for spec in specs:
        items += [s for s in spec.split(",") if s.strip()] or [spec]
    configs: list[KVConfig] = []
    for spec in items or list(defaults):
        cfg = parse_kv(spec, flash_attn)
        if cfg not in configs:
            configs.append(cfg)
    return configs
