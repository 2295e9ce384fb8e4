"""Helpers of the per-layer KV cache type tests: the tiny model families with which layer owns
which cache, the expected per-layer types of a recipe (computed here, independently of
turboctl), and a parser of llama.cpp's per-layer KV log lines:

    llama_kv_cache: KV layers: 0-1 q8_0/q8_0 | 2-27 turbo4/turbo3 | 28-29 q8_0/q8_0
    llama_kv_cache: KV layers reusing another layer's cache: 24->22 | 25->23
    llama_kv_cache: KV bytes: 1234567 (K 617283, V 617284) in 28 layers, 4096 cells
    llama_context: KV cache total: 2469134 bytes in 2 caches
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.tinymodel import (
    gemma4_layout,
    qwen35_attention_layers,
    write_tiny_gemma4,
    write_tiny_model,
    write_tiny_qwen35,
)

# bits per value of every type the rules accept (block size 32, or the turbo blocks)
BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "iq4_nl": 4.5,
        "q5_0": 5.5, "q5_1": 6.0, "turbo2": 2.25, "turbo3": 3.25, "turbo4": 4.25}
KV_TYPES = tuple(BITS)


@dataclass(frozen=True)
class Family:
    """A tiny model family: its layers, which own a KV cache (one set per cache object, in
    the order llama.cpp creates them), which reuse another's, and the K/V widths per layer."""

    name: str
    n_layer: int
    caches: tuple[frozenset[int], ...]
    reuse: dict[int, int]
    n_embd_k: dict[int, int]
    n_embd_v: dict[int, int]
    write: Callable[[Path], Path] = field(repr=False)

    @property
    def owned(self) -> frozenset[int]:
        return frozenset().union(*self.caches)


def llama_family() -> Family:
    n_layer = 8
    return Family("llama", n_layer, (frozenset(range(n_layer)),), {},
                  dict.fromkeys(range(n_layer), 128), dict.fromkeys(range(n_layer), 128),
                  lambda p: write_tiny_model(p, n_layer=n_layer, n_head_kv=1, head_dim=128))


def gemma4_family() -> Family:
    n_layer, n_shared, hd_full, hd_swa = 10, 4, 256, 128
    swa, owner = gemma4_layout(n_layer, n_shared)
    own = [i for i in range(n_layer) if owner[i] == i]
    full = frozenset(i for i in own if not swa[i])
    slide = frozenset(i for i in own if swa[i])
    widths = {i: (hd_swa if swa[i] else hd_full) for i in own}  # n_head_kv = 1
    # llama.cpp creates the full-attention (non-SWA) cache first, then the sliding-window one
    return Family("gemma4", n_layer, (full, slide), {i: owner[i] for i in range(n_layer) if owner[i] != i},
                  widths, widths,
                  lambda p: write_tiny_gemma4(p, n_layer=n_layer, n_kv_shared=n_shared, head_dim_full=hd_full,
                                              head_dim_swa=hd_swa, n_head_kv=1))


def qwen35_family() -> Family:
    n_layer = 8
    attn = qwen35_attention_layers(n_layer, 4)
    return Family("qwen35", n_layer, (frozenset(attn),), {}, dict.fromkeys(attn, 128), dict.fromkeys(attn, 128),
                  lambda p: write_tiny_qwen35(p, n_layer=n_layer, n_head_kv=1, head_dim=128))


FAMILIES: dict[str, Callable[[], Family]] = {"llama": llama_family, "gemma4": gemma4_family,
                                             "qwen35": qwen35_family}

Types = list[tuple[str, str]]  # (K, V) per model layer


def expected_types(n_layer: int, type_k: str, type_v: str, rules: str = "") -> Types:
    """The per-layer (K, V) types of well-formed rules, by the contract's rule syntax."""
    out = [(type_k, type_v)] * n_layer
    for rule in (r for r in rules.split(";") if r.strip()):
        layers_s, types_s = (x.strip() for x in rule.split("="))
        tk, tv = ((t.strip() for t in types_s.split("/")) if "/" in types_s else (types_s, types_s))
        for span in layers_s.split("+"):
            a, _, b = span.strip().partition("..")
            lo, hi = (int(x) % n_layer if int(x) < 0 else int(x) for x in (a, b or a))
            for il in range(lo, hi + 1):
                k, v = out[il]
                out[il] = (k if tk == "-" else tk, v if tv == "-" else tv)
    return out


def row_bytes(type_name: str, n: int) -> int:
    nbits = BITS[type_name] * n
    assert nbits % 8 == 0
    return int(nbits) // 8


@dataclass
class CacheLog:
    segments: list[tuple[int, int, str, str]]  # (first, last, K, V)
    reuse: dict[int, int] = field(default_factory=dict)
    nbytes: tuple[int, int, int, int, int] | None = None  # total, K, V, layers, cells


@dataclass
class ContextLog:
    caches: list[CacheLog]
    total: tuple[int, int] | None = None  # bytes, caches


LAYERS_RE = re.compile(r"llama_kv_cache: KV layers: (.*?)\s*$")
REUSE_RE = re.compile(r"llama_kv_cache: KV layers reusing another layer's cache: (.*?)\s*$")
BYTES_RE = re.compile(r"llama_kv_cache: KV bytes: (\d+) \(K (\d+), V (\d+)\) in (\d+) layers, (\d+) cells")
TOTAL_RE = re.compile(r"llama_context: KV cache total: (\d+) bytes in (\d+) caches?")
SEGMENT_RE = re.compile(r"^(\d+)(?:-(\d+))? (\w+)/(\w+|-)$")


def parse_kv_log(log: str, caches_per_context: int) -> list[ContextLog]:
    """Every context's KV cache lines, in log order: each ``caches_per_context`` caches make
    a context, and its 'KV cache total' line (None where there is none) is the first one
    after them."""
    caches: list[CacheLog] = []
    totals: list[tuple[int, tuple[int, int]]] = []  # (number of caches before it, (bytes, caches))
    for line in log.splitlines():
        if m := LAYERS_RE.search(line):
            segs = []
            for part in m[1].split(" | "):
                s = SEGMENT_RE.match(part.strip())
                assert s, f"cannot read the KV layers segment {part!r} of: {line}"
                segs.append((int(s[1]), int(s[2] or s[1]), s[3], s[4]))
            caches.append(CacheLog(segs))
        elif m := REUSE_RE.search(line):
            assert caches, line
            for part in m[1].split(" | "):
                a, b = part.strip().split("->")
                caches[-1].reuse[int(a)] = int(b)
        elif m := BYTES_RE.search(line):
            assert caches, line
            caches[-1].nbytes = tuple(int(x) for x in m.groups())  # type: ignore[assignment]
        elif m := TOTAL_RE.search(line):
            totals.append((len(caches), (int(m[1]), int(m[2]))))
    assert len(caches) % caches_per_context == 0, f"{len(caches)} KV caches logged, {caches_per_context} per context"
    out = []
    for i in range(0, len(caches), caches_per_context):
        end = i + caches_per_context
        total = next((t for n, t in totals if n == end), None)
        out.append(ContextLog(caches[i:end], total))
    return out


def check_context(ctx: ContextLog, fam: Family, types: Types, n_ctx: int) -> None:
    """The log of one context proves the per-layer types, the reused layers and the bytes."""
    assert len(ctx.caches) == len(fam.caches), ctx
    total = 0
    for cache in ctx.caches:
        ends = {x for seg in cache.segments for x in seg[:2]}
        match = [s for s in fam.caches if ends <= s]
        assert len(match) == 1, f"the KV layers line {cache.segments} fits no cache of {fam.name}: {fam.caches}"
        owned = match[0]
        got: dict[int, tuple[str, str]] = {}
        for a, b, k, v in cache.segments:
            assert a <= b
            for il in sorted(owned):
                if a <= il <= b:
                    assert il not in got, f"layer {il} in two segments: {cache.segments}"
                    got[il] = (k, v)
        assert sorted(got) == sorted(owned), f"{fam.name}: the cache of layers {sorted(owned)} logs {cache.segments}"
        for il in sorted(owned):
            assert got[il] == types[il], f"{fam.name} layer {il}: logged {got[il]}, asked {types[il]}"
        want_reuse = {il: o for il, o in fam.reuse.items() if o in owned}
        assert cache.reuse == want_reuse, f"{fam.name}: reused layers {cache.reuse}, expected {want_reuse}"
        assert cache.nbytes is not None, "no 'KV bytes' line"
        nbytes, kb, vb, n_layers, cells = cache.nbytes
        assert n_layers == len(owned)
        assert cells <= n_ctx and (cells == n_ctx or len(fam.caches) > 1)
        want_k = cells * sum(row_bytes(types[il][0], fam.n_embd_k[il]) for il in owned)
        want_v = cells * sum(row_bytes(types[il][1], fam.n_embd_v[il]) for il in owned)
        assert (kb, vb, nbytes) == (want_k, want_v, want_k + want_v), \
            f"{fam.name} layers {sorted(owned)}: logged K {kb} V {vb} total {nbytes}, computed K {want_k} V {want_v}"
        total += nbytes
    if len(fam.caches) > 1:  # the full-attention cache holds the whole context
        assert ctx.caches[0].nbytes is not None and ctx.caches[0].nbytes[4] == n_ctx
    assert ctx.total == (total, len(fam.caches)), \
        f"'llama_context: KV cache total' line: {ctx.total}, expected {(total, len(fam.caches))} (bytes, caches)"


def check_kv_log(log: str, fam: Family, types: Types, n_ctx: int) -> ContextLog:
    """The last context of the log (the one serving) proves ``types``."""
    contexts = parse_kv_log(log, len(fam.caches))
    assert contexts, "no per-layer KV log lines:\n" + log[-3000:]
    check_context(contexts[-1], fam, types, n_ctx)
    return contexts[-1]


def runs(types: Types, layers: list[int]) -> str:
    """The contract's compact form of ``types`` over ``layers`` (runs of equal adjacent
    entries collapsed), e.g. '0-1 q8_0/q8_0 | 2-5 turbo4/turbo3'."""
    out: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and types[layers[j + 1]] == types[layers[i]]:
            j += 1
        span = f"{layers[i]}" if i == j else f"{layers[i]}-{layers[j]}"
        out.append(f"{span} {types[layers[i]][0]}/{types[layers[i]][1]}")
        i = j + 1
    return " | ".join(out)


ROTATION_RE = re.compile(r"llama_kv_cache: rotation by layer: (.*?)\s*$")
ROT_SEGMENT_RE = re.compile(r"^(\d+)(?:-(\d+))? K (\w+), V (\w+)$")


def rotation_kind(type_name: str) -> str:
    """The rotation a layer side gets: ours for a TurboQuant type, upstream's attn_rot for
    the other quantized types, none for f32 / f16 / bf16."""
    if type_name.startswith("turbo"):
        return "turbo"
    return "none" if type_name in ("f32", "f16", "bf16") else "attn_rot"


def check_rotation(log: str, fam: Family, types: Types) -> None:
    """Rotation follows the layer: in every cache whose layers mix rotation kinds, the
    'rotation by layer' line gives each owned layer side the rotation of its type."""
    lines = [m[1] for ln in log.splitlines() if (m := ROTATION_RE.search(ln))]
    got: dict[int, tuple[str, str]] = {}
    for line in lines[-len(fam.caches):]:
        for part in line.split(" | "):
            s = ROT_SEGMENT_RE.match(part.strip())
            assert s, f"cannot read the rotation segment {part!r}"
            cache = next((c for c in fam.caches if int(s[1]) in c), frozenset())
            for il in sorted(cache):
                if int(s[1]) <= il <= int(s[2] or s[1]):
                    got[il] = (s[3], s[4])
    for cache in fam.caches:
        want = {il: (rotation_kind(types[il][0]), rotation_kind(types[il][1])) for il in cache}
        if len({k for kv in want.values() for k in kv}) > 1:
            for il in sorted(cache):
                assert got.get(il) == want[il], f"{fam.name} layer {il} ({types[il]}): rotation {got.get(il)}, " \
                                                 f"expected {want[il]}"
