"""What the patched llama.cpp says about its TurboQuant KV cache at context creation, read
back from its log (for the commands that start llama.cpp and must prove what it runs).

The patch series logs two things no user should miss:

* a warning per run of layers whose flash attention landed on another device than the
  layer (a backend without a kernel for that K/V pair or head dims: a silent CPU fallback),
  e.g. ``resolve_fused_ops: layers 0-3: flash attention with K turbo4 / V turbo4 (head dims
  128/128) runs on CPU, not on CUDA0 where the layers are: ...``;
* the refusal of a cache a device cannot write, e.g. ``failed to initialize the context:
  layer 0: the CUDA0 device has no kernel to write the TurboQuant K cache type turbo4; ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FALLBACK = re.compile(
    r"layers (\d+)-(\d+): flash attention with K (\w+) / V (\w+) \(head dims (\d+)/(\d+)\) runs on (\S+), "
    r"not on (\S+) where the layers are")
_NO_WRITE = re.compile(r"layer (\d+): the (\S+) device has no kernel to write the TurboQuant ([KV]) cache type (\w+)")


@dataclass(frozen=True)
class FlashAttnFallback:
    first_layer: int
    last_layer: int
    type_k: str
    type_v: str
    head_dim_k: int
    head_dim_v: int
    runs_on: str
    layer_device: str

    def describe(self) -> str:
        return (f"layers {self.first_layer}-{self.last_layer}: flash attention with K={self.type_k} V={self.type_v} "
                f"(head dims {self.head_dim_k}/{self.head_dim_v}) runs on {self.runs_on}, not on {self.layer_device}")


@dataclass(frozen=True)
class CacheNotWritable:
    layer: int
    device: str
    side: str  # "K" or "V"
    cache_type: str


def flash_attn_fallbacks(log: str) -> list[FlashAttnFallback]:
    """Every run of layers whose TurboQuant flash attention does not run on the layer's device."""
    return [FlashAttnFallback(int(m[1]), int(m[2]), m[3], m[4], int(m[5]), int(m[6]), m[7], m[8])
            for m in _FALLBACK.finditer(log)]


def cache_not_writable(log: str) -> CacheNotWritable | None:
    """The refusal of a TurboQuant cache on a device without a kernel to write it, if logged."""
    m = _NO_WRITE.search(log)
    return CacheNotWritable(int(m[1]), m[2], m[3], m[4]) if m else None
