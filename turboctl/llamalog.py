"""What the patched llama.cpp says about its TurboQuant KV cache at context creation, read
back from its log (for the commands that start llama.cpp and must prove what it runs).

The patch series logs two things no user should miss:

* a warning per run of layers whose flash attention landed on another device than the
  layer (a backend without a kernel for that K/V pair or head dims: a silent CPU fallback),
  e.g. ``resolve_fused_ops: layers 0-3: flash attention with K turbo4 / V turbo4 (head dims
  128/128) runs on CPU, not on CUDA0 where the layers are: ...``;
* the refusal of a cache a device cannot write, e.g. ``failed to initialize the context:
  layer 0: the CUDA0 device has no kernel to write the TurboQuant K cache type turbo4; ...``.

It also logs each KV cache's per-layer types and size (one set of lines per cache object,
gemma4's iSWA memory has two), then the context's total::

    llama_kv_cache: KV layers: 0-1 q8_0/q8_0 | 2-27 turbo4/turbo3 | 28-29 q8_0/q8_0
    llama_kv_cache: KV layers reusing another layer's cache: 24->22 | 25->23
    llama_kv_cache: KV bytes: 1234567 (K 617283, V 617284) in 28 layers, 4096 cells
    llama_context: KV cache total: 2469134 bytes in 2 caches

:func:`kv_contexts` reads them back into a model-wide table per context; :func:`compare`
checks it against what was asked (a recipe's per-layer table) and raises on any difference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import VerificationError
from .kv.recipe import RecipePlan
from .kv.rules import layer_ranges, row_bytes

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


# --------------------------------------------------------------------------- per-layer KV types
_KV_LAYERS = re.compile(r"llama_kv_cache: KV layers: (.*?)\s*$")
_KV_REUSE = re.compile(r"llama_kv_cache: KV layers reusing another layer's cache: (.*?)\s*$")
_KV_BYTES = re.compile(r"llama_kv_cache: KV bytes: (\d+) \(K (\d+), V (\d+)\) in (\d+) layers?, (\d+) cells")
_KV_TOTAL = re.compile(r"llama_context: KV cache total: (\d+) bytes in (\d+) caches?")
_RUN = re.compile(r"^(\d+)(?:-(\d+))? (\w+)/(\w+|-)$")
_REUSE = re.compile(r"^(\d+)->(\d+)$")
SHOWN_MISMATCHES = 3


@dataclass
class KVCacheLog:
    """One KV cache object as logged: owned layer → (K, V or None for a K-only cache)."""

    layers: dict[int, tuple[str, str | None]]
    reuse: dict[int, int] = field(default_factory=dict)
    bytes_total: int | None = None
    bytes_k: int | None = None
    bytes_v: int | None = None
    n_layers: int | None = None
    cells: int | None = None


@dataclass
class KVContextLog:
    """The caches of one context and its "KV cache total" line."""

    caches: list[KVCacheLog]
    total_bytes: int | None = None
    n_caches: int | None = None

    def table(self) -> dict[int, tuple[str, str | None]]:
        out: dict[int, tuple[str, str | None]] = {}
        for cache in self.caches:
            out.update(cache.layers)
        return dict(sorted(out.items()))

    def reuse(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for cache in self.caches:
            out.update(cache.reuse)
        return dict(sorted(out.items()))


def _bad_line(line: str, what: str) -> VerificationError:
    return VerificationError(f"cannot read the llama.cpp log line {line.strip()!r}: {what}",
                             hint="the patch series and turboctl disagree on the log format: rebuild with this "
                                  "turboctl's patch series (turboctl build)")


def _runs(text: str, line: str) -> dict[int, tuple[str, str | None]]:
    out: dict[int, tuple[str, str | None]] = {}
    for part in text.split("|"):
        m = _RUN.match(part.strip())
        if not m:
            raise _bad_line(line, f"expected runs like '0-1 q8_0/q8_0', got {part.strip()!r}")
        first, last = int(m[1]), int(m[2] or m[1])
        if last < first:
            raise _bad_line(line, f"empty run {part.strip()!r}")
        for il in range(first, last + 1):
            out[il] = (m[3], None if m[4] == "-" else m[4])
    return out


def kv_contexts(log: str) -> list[KVContextLog]:
    """Every context's KV caches, in log order (a context ends at its "KV cache total" line;
    caches after the last such line form a context without a total)."""
    contexts: list[KVContextLog] = []
    current = KVContextLog([])
    for line in log.splitlines():
        if m := _KV_LAYERS.search(line):
            current.caches.append(KVCacheLog(_runs(m[1], line)))
        elif m := _KV_REUSE.search(line):
            if not current.caches:
                raise _bad_line(line, "a reuse line before any 'KV layers:' line")
            for part in m[1].split("|"):
                r = _REUSE.match(part.strip())
                if not r:
                    raise _bad_line(line, f"expected pairs like '24->22', got {part.strip()!r}")
                current.caches[-1].reuse[int(r[1])] = int(r[2])
        elif m := _KV_BYTES.search(line):
            if not current.caches:
                raise _bad_line(line, "a 'KV bytes:' line before any 'KV layers:' line")
            cache = current.caches[-1]
            cache.bytes_total, cache.bytes_k, cache.bytes_v = int(m[1]), int(m[2]), int(m[3])
            cache.n_layers, cache.cells = int(m[4]), int(m[5])
        elif m := _KV_TOTAL.search(line):
            current.total_bytes, current.n_caches = int(m[1]), int(m[2])
            contexts.append(current)
            current = KVContextLog([])
    if current.caches:
        contexts.append(current)
    return contexts


def _pair(p: tuple[str, str | None]) -> str:
    return f"{p[0]}/{p[1] if p[1] is not None else '-'}"


def compare(expected_table: Mapping[int, tuple[str, str]], log_text: str, *,
            expected_reuse: Mapping[int, int] | None = None,
            layer_values: Mapping[int, tuple[int, int]] | None = None, context: int = 0) -> None:
    """Check the KV caches llama.cpp logged (its ``context``-th context, the first by default)
    against what was asked: ``expected_table`` owned layer → (K, V); optionally the layers
    that reuse another layer's cache, and the values per cache row of each layer
    (n_embd_k_gqa, n_embd_v_gqa: then each cache's K and V bytes are recomputed from its
    cells). VerificationError (one line, details: every difference) on a difference or when
    the lines are missing."""
    contexts = kv_contexts(log_text)
    if not contexts:
        raise VerificationError(
            "the llama.cpp log has no 'llama_kv_cache: KV layers:' line, so nothing shows which KV cache types "
            "each layer got", hint="this build lacks the per-layer KV patch: rebuild with turboctl build; or the "
                                  "log was cut before the context was created")
    if context >= len(contexts):
        raise VerificationError(f"the llama.cpp log has {len(contexts)} context(s) with KV cache lines, "
                                f"not {context + 1}")
    ctx = contexts[context]
    problems: list[str] = []
    got = ctx.table()
    for il in sorted(set(expected_table) | set(got)):
        want, have = expected_table.get(il), got.get(il)
        if want is None and have is not None:
            problems.append(f"layer {il}: asked no cache of its own, llama.cpp made one with {_pair(have)}")
        elif have is None and want is not None:
            problems.append(f"layer {il}: asked {_pair(want)}, llama.cpp made no cache for it")
        elif want is not None and have is not None and tuple(want) != tuple(have):
            problems.append(f"layer {il}: asked {_pair(want)}, llama.cpp has {_pair(have)}")
    if expected_reuse is not None:
        got_reuse = ctx.reuse()
        for il in sorted(set(expected_reuse) | set(got_reuse)):
            want_r, have_r = expected_reuse.get(il), got_reuse.get(il)
            if want_r != have_r:
                problems.append(f"layer {il}: asked it to reuse "
                                f"{'layer ' + str(want_r) if want_r is not None else 'no cache'}'s cache, "
                                f"llama.cpp {'reuses layer ' + str(have_r) if have_r is not None else 'does not'}")
    problems += _size_problems(ctx, layer_values)
    if problems:
        shown = "; ".join(problems[:SHOWN_MISMATCHES])
        more = f" and {len(problems) - SHOWN_MISMATCHES} more" if len(problems) > SHOWN_MISMATCHES else ""
        raise VerificationError(
            f"the KV cache llama.cpp made differs from what was asked: {shown}{more}", details=problems,
            hint="the log lines 'llama_kv_cache: KV layers:' show what it made; check the recipe with "
                 "turboctl kv explain")


def _size_problems(ctx: KVContextLog, layer_values: Mapping[int, tuple[int, int]] | None) -> list[str]:
    out: list[str] = []
    if ctx.total_bytes is None:
        out.append("no 'llama_context: KV cache total:' line after the KV cache lines")
    elif ctx.n_caches is not None and ctx.n_caches != len(ctx.caches):
        out.append(f"the total counts {ctx.n_caches} cache(s), the log has 'KV layers:' lines for {len(ctx.caches)}")
    sizes = [c.bytes_total for c in ctx.caches]
    for i, cache in enumerate(ctx.caches, 1):
        where = f"cache {i} (layers {layer_ranges(list(cache.layers))})"
        if cache.bytes_total is None or cache.bytes_k is None or cache.bytes_v is None:
            out.append(f"{where}: no 'KV bytes:' line")
            continue
        if cache.bytes_k + cache.bytes_v != cache.bytes_total:
            out.append(f"{where}: K {cache.bytes_k} + V {cache.bytes_v} bytes is not the {cache.bytes_total} logged")
        if cache.n_layers is not None and cache.n_layers != len(cache.layers):
            out.append(f"{where}: the bytes line counts {cache.n_layers} layers, the layers line {len(cache.layers)}")
        if layer_values is not None and cache.cells is not None:
            out += _bytes_problems(where, cache, layer_values)
    if ctx.total_bytes is not None and None not in sizes and sum(s or 0 for s in sizes) != ctx.total_bytes:
        out.append(f"the caches' bytes add up to {sum(s or 0 for s in sizes)}, the total line says {ctx.total_bytes}")
    return out


def _bytes_problems(where: str, cache: KVCacheLog, layer_values: Mapping[int, tuple[int, int]]) -> list[str]:
    assert cache.cells is not None
    k = v = 0
    for il, (tk, tv) in cache.layers.items():
        if il not in layer_values:
            return []  # a layer nobody asked about: reported by the table check
        nk, nv = layer_values[il]
        k += cache.cells * row_bytes(tk, nk)
        v += cache.cells * row_bytes(tv, nv) if tv is not None else 0
    out = []
    if (k, v) != (cache.bytes_k, cache.bytes_v):
        out.append(f"{where}: {cache.cells} cells of these types hold K {k} and V {v} bytes, llama.cpp logs "
                   f"K {cache.bytes_k} and V {cache.bytes_v}")
    return out


def compare_plan(plan: RecipePlan, log_text: str, *, context: int = 0) -> None:
    """:func:`compare` with everything a resolved recipe knows: the owned layers' types, the
    layers that reuse another's cache, and the values per row (the bytes check)."""
    compare(plan.table(), log_text, expected_reuse=plan.reuse(), layer_values=plan.layer_values(), context=context)
