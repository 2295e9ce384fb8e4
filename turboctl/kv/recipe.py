"""A KV recipe: the default K/V types, an optional TURBO_LAYER_ADAPTIVE mode and optional
per-layer rules, as one string (``--kv`` of the bench commands, ``turboctl kv explain``)::

    T | K/V  [ ';mode=N' ]  [ ';RULES' ]      e.g. turbo4/turbo3;0..1+-2..-1=q8_0, turbo4;mode=7

:func:`parse_recipe` checks everything that needs no model (types, mode, rule syntax);
:meth:`Recipe.resolve` applies it to a model's layers (:mod:`turboctl.kv.layout`) into a
:class:`RecipePlan`: one (K, V) per layer, the distinct pairs the caches use, the average
bits/value (weighted by the values each layer's cache holds) and the bytes at a context size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import KVConfigError, UsageError
from .config import TURBO_TYPES, UPSTREAM_ROTATED, KVConfig, make_config
from .layout import KVLayout, LayerCache
from .rules import MIN_MODE_LAYERS, Resolution, Rules, bits, check_mode, layer_ranges, parse_rules, resolve, row_bytes

TURBO_HEAD_DIMS = (64, 128, 256, 512)
FRAGILE_K = ("turbo2", "turbo3")
FRAGILE_K_NOTE = ("the K side is fragile: measured on SmolLM2-135M (README, recipes), symmetric turbo2 gives mean "
                  "KLD 1.09 and PPL 55.4 vs 17.7 at f16; keep K at turbo4 or above")
ENV_MODE = "TURBO_LAYER_ADAPTIVE"
ENV_RULES = "LLAMA_ARG_KV_LAYERS"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe (its rules checked for syntax and types, not yet against a model)."""

    base: KVConfig
    mode: int | None
    rules: Rules

    @property
    def type_k(self) -> str:
        return self.base.type_k

    @property
    def type_v(self) -> str:
        return self.base.type_v

    @property
    def flash_attn(self) -> str:
        return self.base.flash_attn

    @property
    def label(self) -> str:
        """The recipe as text, whitespace removed (``q8_0`` for symmetric defaults)."""
        text = self.base.label
        if self.mode is not None:
            text += f";mode={self.mode}"
        if self.rules:
            text += ";" + self.rules.canonical
        return text

    @property
    def per_layer(self) -> bool:
        """True when a mode or rules may give layers other types than the defaults."""
        return bool(self.mode) or bool(self.rules)

    def types(self) -> set[str]:
        """Every type the recipe can put in a cache (a mode's types included)."""
        out = {self.type_k, self.type_v, *self.rules.types()}
        if self.mode:
            out |= check_mode(self.mode).types()
        return out

    def llama_args(self) -> list[str]:
        """``-fa on -ctk K -ctv V [--kv-adaptive N] [--kv-layers RULES]`` (llama-server, -cli, -perplexity)."""
        args = ["-fa", self.flash_attn, "-ctk", self.type_k, "-ctv", self.type_v]
        if self.mode is not None:
            args += ["--kv-adaptive", str(self.mode)]
        if self.rules:
            args += ["--kv-layers", self.rules.canonical]
        return args

    def bench_args(self) -> list[str]:
        """llama-bench's form: ``-ctk K -ctv V [-kvl RULES]`` (the mode goes in :meth:`env`)."""
        args = ["-ctk", self.type_k, "-ctv", self.type_v]
        if self.rules:
            args += ["-kvl", self.rules.canonical]
        return args

    def env(self) -> dict[str, str]:
        """The environment llama-bench needs for the mode (it reads no --kv-adaptive flag)."""
        return {ENV_MODE: str(self.mode)} if self.mode is not None else {}

    def resolve(self, layout: KVLayout) -> RecipePlan:
        """The recipe on this model's layers (KVConfigError at a range, overlap or ownership error)."""
        res = resolve(self.type_k, self.type_v, layout.n_layer, mode=self.mode, rules=self.rules,
                      no_cache=layout.without_cache)
        plan = RecipePlan(self, layout, res)
        turbo = sorted({t for pair in plan.pairs() for t in pair if t in TURBO_TYPES})
        if turbo and self.flash_attn == "off":
            raise KVConfigError(
                f"the recipe {self.label} puts the TurboQuant cache type {turbo[0]} on some layers, "
                "but flash attention is off", hint="use flash attention on (or auto)")
        return plan


def parse_recipe(text: str, flash_attn: str = "on") -> Recipe:
    """``T`` or ``K/V``, then optionally ``;mode=N``, then optionally ``;RULES`` (UsageError,
    one line, at the first problem that needs no model)."""
    head, sep, rest = text.partition(";")
    types = [p.strip() for p in head.split("/")]
    if not head.strip() or len(types) > 2 or not all(types):
        raise UsageError(f"recipe {text.strip()!r}: expected TYPE or K/V before the first ';', e.g. q4_0, "
                         "q8_0/turbo3 or turbo4/turbo3;0..1+-2..-1=q8_0")
    base = make_config(types[0], types[-1], flash_attn)
    mode: int | None = None
    first, _, after = rest.partition(";")
    if sep and first.strip().startswith("mode"):
        name, eq, value = first.partition("=")
        if name.strip() != "mode" or not eq or not value.strip().lstrip("-").isdigit():
            raise UsageError(f"recipe {text.strip()!r}: expected ;mode=N (a TURBO_LAYER_ADAPTIVE mode number), "
                             f"got {first.strip()!r}")
        mode = int(value.strip())
        check_mode(mode)
        rest = after
    rules = parse_rules(rest)
    return Recipe(base, mode, rules)


def parse_recipe_list(specs: Iterable[str], defaults: Iterable[str], flash_attn: str = "on") -> list[Recipe]:
    """``--kv`` values (each may be a comma-separated list: recipes hold no commas), or the
    defaults; duplicates (same recipe text) once."""
    items: list[str] = []
    for spec in specs:
        items += [s for s in spec.split(",") if s.strip()] or [spec]
    out: list[Recipe] = []
    for spec in items or list(defaults):
        recipe = parse_recipe(spec, flash_attn)
        if recipe.label not in [r.label for r in out]:
            out.append(recipe)
    return out


# --------------------------------------------------------------------------- on a model
@dataclass(frozen=True)
class LayerRow:
    """One model layer as the recipe leaves it: its own cache's types, or whose cache it reads."""

    layer: LayerCache
    type_k: str | None  # None: a recurrent layer (no KV cache)
    type_v: str | None
    source_k: str
    source_v: str

    @property
    def pair(self) -> str | None:
        return f"{self.type_k}/{self.type_v}" if self.type_k and self.type_v else None


@dataclass(frozen=True)
class Run:
    """Adjacent layers that print alike (same kind, types, head dims, reuse target shift)."""

    first: int
    last: int
    rows: tuple[LayerRow, ...]

    @property
    def layers(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class RecipePlan:
    recipe: Recipe
    layout: KVLayout
    resolution: Resolution

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.resolution.warnings

    def rows(self) -> list[LayerRow]:
        out = []
        for la, lt in zip(self.layout.layers, self.resolution.layers, strict=True):
            if la.kind == "recurrent":
                out.append(LayerRow(la, None, None, "", ""))
            elif la.kind == "reuse" and la.reuses is not None:
                owner = self.resolution.layers[la.reuses]
                out.append(LayerRow(la, owner.type_k, owner.type_v, f"layer {la.reuses}", f"layer {la.reuses}"))
            else:
                out.append(LayerRow(la, lt.type_k, lt.type_v, lt.source_k, lt.source_v))
        return out

    def owned_rows(self) -> list[LayerRow]:
        return [r for r in self.rows() if r.layer.owns]

    def table(self) -> dict[int, tuple[str, str]]:
        """Owned layer → (K, V): what the caches hold (see :func:`turboctl.llamalog.compare`)."""
        return {r.layer.index: (r.type_k, r.type_v) for r in self.owned_rows() if r.type_k and r.type_v}

    def layer_values(self) -> dict[int, tuple[int, int]]:
        """Owned layer → values per K and V cache row (n_embd_k_gqa, n_embd_v_gqa)."""
        return {la.index: (la.n_embd_k, la.n_embd_v) for la in self.layout.owned()}

    def reuse(self) -> dict[int, int]:
        """Layer → the layer whose cache it reads (layers without a cache of their own)."""
        return {la.index: la.reuses for la in self.layout.layers if la.kind == "reuse" and la.reuses is not None}

    def pairs(self) -> list[tuple[str, str]]:
        """The distinct (K, V) pairs of the layers that own a cache, in layer order."""
        return list(dict.fromkeys(self.table().values()))

    @property
    def label(self) -> str:
        return self.recipe.label

    @property
    def type_k(self) -> str:
        return self.recipe.type_k

    @property
    def type_v(self) -> str:
        return self.recipe.type_v

    @property
    def pair(self) -> str:
        """``K/V`` of a recipe without per-layer parts (the same on every layer), else its label."""
        return self.recipe.label if self.recipe.per_layer else f"{self.type_k}/{self.type_v}"

    def describe(self) -> str:
        """``K=q8_0 V=turbo3``, or for a per-layer recipe the pairs its layers use."""
        if not self.recipe.per_layer:
            return f"K={self.type_k} V={self.type_v}"
        return "per layer " + ", ".join(f"K={k} V={v}" for k, v in self.pairs())

    @property
    def bits_per_value(self) -> float:
        """Average storage bits per cached value, each layer's K and V weighted by the values
        its cache holds per token (n_embd_k_gqa, n_embd_v_gqa)."""
        total = values = 0.0
        for r in self.owned_rows():
            assert r.type_k and r.type_v
            total += r.layer.n_embd_k * bits(r.type_k) + r.layer.n_embd_v * bits(r.type_v)
            values += r.layer.n_embd_k + r.layer.n_embd_v
        return total / values if values else 0.0

    def kv_bytes(self, n_ctx: int) -> tuple[int, int]:
        """(K bytes, V bytes) of the caches at ``n_ctx`` cells per owned layer (whole ggml blocks)."""
        k = v = 0
        for r in self.owned_rows():
            assert r.type_k and r.type_v
            k += n_ctx * row_bytes(r.type_k, r.layer.n_embd_k)
            v += n_ctx * row_bytes(r.type_v, r.layer.n_embd_v)
        return k, v

    def runs(self) -> list[Run]:
        """The layers, adjacent ones that print alike collapsed."""
        def key(r: LayerRow) -> tuple[object, ...]:
            la = r.layer
            return (la.kind, r.type_k, r.type_v, r.source_k, r.source_v, la.swa, la.head_dim_k, la.head_dim_v,
                    la.n_head_kv, la.reuses)

        out: list[Run] = []
        current: list[LayerRow] = []
        for r in self.rows():
            if current and key(current[-1]) == key(r) and r.layer.index == current[-1].layer.index + 1:
                current.append(r)
            else:
                if current:
                    out.append(Run(current[0].layer.index, current[-1].layer.index, tuple(current)))
                current = [r]
        if current:
            out.append(Run(current[0].layer.index, current[-1].layer.index, tuple(current)))
        return out

    def safety(self) -> list[str]:
        """Plain warnings: a fragile K type, a turbo type at a head dim its kernels lack, an
        unmodelled layout, a mode on too few layers."""
        out: list[str] = []
        owned = self.owned_rows()
        for t in FRAGILE_K:
            layers = [r.layer.index for r in owned if r.type_k == t]
            if layers:
                noun = "layer" if len(layers) == 1 else "layers"
                out.append(f"K {t} on {noun} {layer_ranges(layers)}: {FRAGILE_K_NOTE}")
        for side in ("K", "V"):
            bad: dict[tuple[str, int], list[int]] = {}
            for r in owned:
                st = (r.type_k if side == "K" else r.type_v) or ""
                dim = r.layer.head_dim_k if side == "K" else r.layer.head_dim_v
                if st in TURBO_TYPES and dim not in TURBO_HEAD_DIMS:
                    bad.setdefault((st, dim), []).append(r.layer.index)
            for (st, dim), layers in bad.items():
                noun = "layer" if len(layers) == 1 else "layers"
                out.append(f"{side} {st} on {noun} {layer_ranges(layers)} (head dim {dim}): the TurboQuant types "
                           f"support head dims {', '.join(map(str, TURBO_HEAD_DIMS))} only; llama.cpp refuses it")
        mode = self.recipe.mode
        idle = [lt.index for la, lt in zip(self.layout.layers, self.resolution.layers, strict=True)
                if not la.owns and f"mode {mode}" in (lt.source_k, lt.source_v)]
        if idle:
            noun = "layer" if len(idle) == 1 else "layers"
            out.append(f"TURBO_LAYER_ADAPTIVE={mode} raises {noun} {layer_ranges(idle)}, which have no KV cache of "
                       "their own: no effect there")
        if self.layout.note:
            out.append(self.layout.note)
        return out

    def upstream_rotated(self) -> bool:
        """True when b11312's own Hadamard rotation (attn_rot) applies to some layer's K or V."""
        return any(t in UPSTREAM_ROTATED for pair in self.pairs() for t in pair)

    def uses_turbo(self) -> bool:
        return any(t in TURBO_TYPES for pair in self.pairs() for t in pair)

    def mode_note(self) -> str | None:
        mode = self.recipe.mode
        if not mode:
            return None
        if self.layout.n_layer < MIN_MODE_LAYERS:
            return f"mode {mode} not applied: fewer than {MIN_MODE_LAYERS} layers"
        return f"mode {mode} applied" if self.resolution.mode_applied else \
            f"mode {mode} changed nothing: the types there already have as many bits"
