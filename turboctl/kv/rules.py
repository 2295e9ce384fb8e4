"""Per-layer KV cache rules (``--kv-layers RULES``), the TURBO_LAYER_ADAPTIVE modes, and how
both resolve into one (K, V) type per model layer.

The syntax is the one the patch series gives llama.cpp (llama-server, llama-cli,
llama-perplexity, ``llama-bench -kvl``)::

    RULES  := RULE ( ';' RULE )*        whitespace around tokens is ignored; "" = no rules
    RULE   := LAYERS '=' TYPES
    LAYERS := SPAN ( '+' SPAN )*
    SPAN   := IDX | IDX '..' IDX        inclusive; IDX < 0 counts from the end (-1 = last layer)
    TYPES  := T | TK '/' TV             TK or TV may be '-': keep that side as it is

:func:`parse_rules` checks the syntax and the type names (no model needed);
:func:`resolve` needs the layer count (and, to refuse a rule that names only layers without a
KV cache of their own, which layers own one). Every error is one line naming the rule number
(1-based), its text and the column (1-based, in the whole RULES string), e.g.
``kv layers: rule 2 "3..1=q8_0" at column 11: empty range 3..1``.

A mode only ever raises precision: its type goes to a layer side only when its bits/value
exceed the type already there. Explicit rules are applied after the mode and win, with a
warning naming both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import KVConfigError, UsageError

# the types llama.cpp accepts for a KV cache, in the order it lists them (common/arg.cpp)
RULE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
              "turbo2", "turbo3", "turbo4")
# other ggml type names of b11312 (ggml.c type_traits): real types, but not KV cache types
OTHER_GGML_TYPES = ("i8", "i16", "i32", "i64", "f64", "q1_0", "q2_0", "q8_1", "mxfp4", "nvfp4", "q2_K",
                    "q3_K", "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq3_s", "iq2_s",
                    "iq1_s", "iq1_m", "iq4_xs", "tq1_0", "tq2_0")

# (values per block, bytes per block) of the ggml block layouts; the turbo types as laid out
# in kernels/turbo.h (QK_TURBO = 64 values: two scale bytes, then 4, 3 or 2 bits per value)
BLOCKS: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "turbo2": (64, 18),
    "turbo3": (64, 26),
    "turbo4": (64, 34),
}

MIN_MODE_LAYERS = 8
MODES: dict[int, str] = {
    0: "",
    1: "0..3+-4..-1=q8_0/q8_0",
    2: "-8..-1=q8_0/q8_0",
    5: "0..1+-2..-1=-/turbo4",
    6: "-8..-1=-/turbo4",
    7: "0..1+-2..-1=-/q8_0",
}


def bits(cache_type: str) -> float:
    """Storage bits per value, block scales included (q8_0: 8.5, turbo4: 4.25)."""
    values, nbytes = BLOCKS[cache_type]
    return nbytes * 8 / values


def row_bytes(cache_type: str, n_values: int) -> int:
    """Bytes of one cache row of ``n_values`` values (ggml_row_size; whole blocks)."""
    values, nbytes = BLOCKS[cache_type]
    return -(-n_values // values) * nbytes


def layer_ranges(indices: Sequence[int], sep: str = ", ") -> str:
    """[0, 1, 2, 5, 7, 8] → "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return sep.join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# --------------------------------------------------------------------------- syntax
@dataclass(frozen=True)
class Span:
    """``first`` or ``first..last`` as written (negative: from the end), and their columns."""

    first: int
    last: int | None
    column: int
    last_column: int = 0

    @property
    def text(self) -> str:
        return str(self.first) if self.last is None else f"{self.first}..{self.last}"


@dataclass(frozen=True)
class Rule:
    number: int  # 1-based
    text: str  # as written, without the surrounding whitespace
    column: int  # where the rule starts in the whole RULES string (1-based)
    spans: tuple[Span, ...]
    type_k: str | None  # None: '-' (keep)
    type_v: str | None

    def sides(self) -> list[tuple[str, str]]:
        """[("K", type), ("V", type)] for the sides this rule sets."""
        return [(side, t) for side, t in (("K", self.type_k), ("V", self.type_v)) if t is not None]


@dataclass(frozen=True)
class Rules:
    text: str
    rules: tuple[Rule, ...]

    @property
    def canonical(self) -> str:
        """The rules without whitespace (the same rules: no token holds a space)."""
        return "".join(self.text.split())

    def __bool__(self) -> bool:
        return bool(self.rules)

    def types(self) -> set[str]:
        return {t for r in self.rules for _, t in r.sides()}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.number = 0
        self.rule_start = 0

    def fail(self, message: str, pos: int | None = None) -> UsageError:
        end = self.text.find(";", self.rule_start)
        rule_text = self.text[self.rule_start:end if end >= 0 else len(self.text)].strip()
        column = (self.pos if pos is None else pos) + 1
        return UsageError(f'kv layers: rule {self.number} "{rule_text}" at column {column}: {message}',
                          hint="syntax: LAYERS=TYPE or LAYERS=K/V (K or V may be '-'), LAYERS like 0..1+-2..-1, "
                               "rules separated by ';', e.g. 0..1+-2..-1=q8_0;5=-/turbo4")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def index(self) -> tuple[int, int] | None:
        self.skip()
        start = self.pos
        end = start + (1 if self.text.startswith("-", start) else 0)
        digits = end
        while end < len(self.text) and self.text[end].isdigit():
            end += 1
        if end == digits:
            return None
        self.pos = end
        return int(self.text[start:end]), start + 1

    def word(self) -> tuple[str, int]:
        self.skip()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] == "_"):
            self.pos += 1
        return self.text[start:self.pos], start

    def cache_type(self, allow_keep: bool) -> str | None:
        self.skip()
        if allow_keep and self.peek("-"):
            self.pos += 1
            return None
        name, start = self.word()
        if not name:
            raise self.fail("expected a cache type")
        if name in RULE_TYPES:
            return name
        if name in OTHER_GGML_TYPES:
            raise self.fail(f"'{name}' is not a KV cache type (accepted: {' '.join(RULE_TYPES)})", start)
        raise self.fail(f"unknown cache type '{name}'", start)

    def rule(self) -> Rule:
        self.skip()
        column = self.pos + 1
        spans: list[Span] = []
        while True:
            first = self.index()
            if first is None:
                raise self.fail("expected a layer index")
            last: int | None = None
            last_column = 0
            if self.peek(".."):
                self.pos += 2
                second = self.index()
                if second is None:
                    raise self.fail("expected a layer index")
                last, last_column = second
            spans.append(Span(first[0], last, first[1], last_column))
            if self.peek("+"):
                self.pos += 1
                continue
            if self.peek("="):
                self.pos += 1
                break
            raise self.fail("expected '..', '+' or '='")
        type_k = self.cache_type(allow_keep=True)
        type_v = type_k
        if self.peek("/"):
            self.pos += 1
            type_v = self.cache_type(allow_keep=True)
        elif type_k is None:
            raise self.fail("expected '/'")
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] != ";":
            raise self.fail("expected ';'")
        end = self.text.find(";", self.rule_start)
        text = self.text[self.rule_start:end if end >= 0 else len(self.text)].strip()
        return Rule(self.number, text, column, tuple(spans), type_k, type_v)

    def parse(self) -> Rules:
        if not self.text.strip():
            return Rules(self.text, ())
        rules: list[Rule] = []
        while True:
            self.number += 1
            self.rule_start = self.pos
            rules.append(self.rule())
            if self.pos >= len(self.text):
                return Rules(self.text, tuple(rules))
            self.pos += 1  # the ';'


def parse_rules(text: str) -> Rules:
    """The rules of ``text`` (UsageError, one line, at the first syntax or type error)."""
    return _Parser(text).parse()


MODE_RULES: dict[int, Rules] = {n: parse_rules(text) for n, text in MODES.items()}


def check_mode(mode: int) -> Rules:
    if mode not in MODE_RULES:
        raise UsageError(f"TURBO_LAYER_ADAPTIVE={mode}: unknown mode (known: {' '.join(map(str, MODES))})")
    return MODE_RULES[mode]


# --------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class LayerTypes:
    """The K and V types of one model layer, and what set each ("default", "mode 7", "rule 2")."""

    index: int
    type_k: str
    type_v: str
    source_k: str = "default"
    source_v: str = "default"

    @property
    def pair(self) -> str:
        return f"{self.type_k}/{self.type_v}"


@dataclass(frozen=True)
class Resolution:
    n_layer: int
    layers: tuple[LayerTypes, ...]
    warnings: tuple[str, ...]
    mode: int | None
    mode_applied: bool


def _error(rule: Rule, column: int, message: str) -> KVConfigError:
    return KVConfigError(f'kv layers: rule {rule.number} "{rule.text}" at column {column}: {message}')


def _span_layers(rule: Rule, span: Span, n_layer: int) -> range:
    def resolve_index(value: int, column: int) -> int:
        il = value + n_layer if value < 0 else value
        if not 0 <= il < n_layer:
            raise _error(rule, column, f"layer {value} is out of range: the model has {n_layer} layers "
                                       f"(0..{n_layer - 1}, or -{n_layer}..-1)")
        return il

    first = resolve_index(span.first, span.column)
    if span.last is None:
        return range(first, first + 1)
    last = resolve_index(span.last, span.last_column)
    if last < first:
        raise _error(rule, span.column, f"empty range {first}..{last}")
    return range(first, last + 1)


NoCache = Callable[[Sequence[int]], str]
"""Given the layers a rule names, "" when one of them owns a KV cache, else why none does."""


def resolve(type_k: str, type_v: str, n_layer: int, *, mode: int | None = None, rules: Rules | None = None,
            no_cache: NoCache | None = None) -> Resolution:
    """One (K, V) per model layer 0..n_layer-1: -ctk/-ctv, raised by the mode where it has more
    bits, then the explicit rules. KVConfigError (one line) at a range, overlap or ownership error."""
    k = [type_k] * n_layer
    v = [type_v] * n_layer
    src_k = ["default"] * n_layer
    src_v = ["default"] * n_layer
    warnings: list[str] = []
    by_mode: dict[tuple[int, str], str] = {}  # (layer, side) the mode names → the type it left there
    applied = False
    if mode is not None:
        mode_rules = check_mode(mode)
        if mode != 0 and n_layer < MIN_MODE_LAYERS:
            warnings.append(f"TURBO_LAYER_ADAPTIVE={mode}: the modes need at least {MIN_MODE_LAYERS} layers and "
                            f"the model has {n_layer}: no change")
        elif mode_rules:
            for rule in mode_rules.rules:
                for span in rule.spans:
                    for il in _span_layers(rule, span, n_layer):
                        for side, t in rule.sides():
                            types, srcs = (k, src_k) if side == "K" else (v, src_v)
                            if bits(t) > bits(types[il]):
                                types[il], srcs[il] = t, f"mode {mode}"
                                applied = True
                            by_mode[(il, side)] = types[il]
    set_by: dict[tuple[int, str], int] = {}
    for rule in (rules.rules if rules else ()):
        named: list[int] = []
        for span in rule.spans:
            for il in _span_layers(rule, span, n_layer):
                for side, _ in rule.sides():
                    if (il, side) in set_by:
                        raise _error(rule, span.column, f"layer {il} {side} is already set by rule "
                                                        f"{set_by[(il, side)]}")
                    set_by[(il, side)] = rule.number
                named.append(il)
        if no_cache is not None and (why := no_cache(named)):
            raise _error(rule, rule.column, f"names only layers without a KV cache of their own ({why})")
        overridden: dict[tuple[str, str, str], list[int]] = {}
        for il in named:
            for side, t in rule.sides():
                types, srcs = (k, src_k) if side == "K" else (v, src_v)
                if (il, side) in by_mode and by_mode[(il, side)] != t:
                    overridden.setdefault((side, t, by_mode[(il, side)]), []).append(il)
                types[il], srcs[il] = t, f"rule {rule.number}"
        for (side, t, was), layers in overridden.items():
            noun = "layer" if len(layers) == 1 else "layers"
            warnings.append(f'kv layers: rule {rule.number} "{rule.text}" overrides TURBO_LAYER_ADAPTIVE={mode} '
                            f"at {noun} {layer_ranges(layers)} {side}: {t} instead of {was}")
    table = tuple(LayerTypes(il, k[il], v[il], src_k[il], src_v[il]) for il in range(n_layer))
    return Resolution(n_layer, table, tuple(warnings), mode, applied)
