"""Per-layer KV rules and recipes: the syntax, every error message, the modes (raise only),
explicit rules over a mode, fewer than 8 layers, and the bits/bytes arithmetic by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit import kvmodels
from turboctl.errors import KVConfigError, UsageError
from turboctl.kv import rules as kvrules
from turboctl.kv.layout import read_layout
from turboctl.kv.recipe import FRAGILE_K_NOTE, parse_recipe, parse_recipe_list
from turboctl.kv.rules import MODES, bits, parse_rules, resolve

ACCEPTED = "f32 f16 bf16 q8_0 q4_0 q4_1 iq4_nl q5_0 q5_1 turbo2 turbo3 turbo4"


# --------------------------------------------------------------------------- syntax
def test_rules_syntax() -> None:
    r = parse_rules(" 0 .. 1 + -2..-1 = q8_0 / - ; 5=-/turbo4;7=f16")
    assert [x.number for x in r.rules] == [1, 2, 3]
    first, second, third = r.rules
    assert first.text == "0 .. 1 + -2..-1 = q8_0 / -" and first.column == 2
    assert [(s.first, s.last, s.column) for s in first.spans] == [(0, 1, 2), (-2, -1, 11)]
    assert (first.type_k, first.type_v) == ("q8_0", None)
    assert (second.type_k, second.type_v, second.column) == (None, "turbo4", 31)
    assert (third.type_k, third.type_v) == ("f16", "f16")
    assert r.canonical == "0..1+-2..-1=q8_0/-;5=-/turbo4;7=f16"
    assert r.types() == {"q8_0", "turbo4", "f16"}
    assert not parse_rules("") and not parse_rules("   ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x=f16", 'rule 1 "x=f16" at column 1: expected a layer index'),
        ("0..=f16", 'rule 1 "0..=f16" at column 4: expected a layer index'),
        ("0+=f16", 'rule 1 "0+=f16" at column 3: expected a layer index'),
        ("0=f16;", 'rule 2 "" at column 7: expected a layer index'),
        ("0=f16;;1=f16", 'rule 2 "" at column 7: expected a layer index'),
        ("0-1=f16", 'rule 1 "0-1=f16" at column 2: expected \'..\', \'+\' or \'=\''),
        ("0..1", 'rule 1 "0..1" at column 5: expected \'..\', \'+\' or \'=\''),
        ("0=", 'rule 1 "0=" at column 3: expected a cache type'),
        ("0=f16/", 'rule 1 "0=f16/" at column 7: expected a cache type'),
        ("0=-", 'rule 1 "0=-" at column 4: expected \'/\''),
        ("0=f16,1=f16", 'rule 1 "0=f16,1=f16" at column 6: expected \';\''),
        ("0=f16 q8_0", 'rule 1 "0=f16 q8_0" at column 7: expected \';\''),
        ("0..1=q8_0;3=q9_0", 'rule 2 "3=q9_0" at column 13: unknown cache type \'q9_0\''),
        ("0=q8_0/turbo5", 'rule 1 "0=q8_0/turbo5" at column 8: unknown cache type \'turbo5\''),
        ("0=Q8_0", 'rule 1 "0=Q8_0" at column 3: unknown cache type \'Q8_0\''),
        ("0=q4_K", f'rule 1 "0=q4_K" at column 3: \'q4_K\' is not a KV cache type (accepted: {ACCEPTED})'),
        ("0=-/iq2_xxs", 'rule 1 "0=-/iq2_xxs" at column 5: \'iq2_xxs\' is not a KV cache type'),
    ],
)
def test_syntax_and_type_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_rules(text)
    assert err.value.message.startswith("kv layers: " + message)
    assert "\n" not in err.value.message and err.value.exit_code == 2
    assert err.value.hint and "LAYERS=TYPE" in err.value.hint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0..1=q8_0;3..1=q8_0", 'rule 2 "3..1=q8_0" at column 11: empty range 3..1'),
        ("-1..0=f16", 'rule 1 "-1..0=f16" at column 1: empty range 29..0'),
        ("-2..-5=f16", 'rule 1 "-2..-5=f16" at column 1: empty range 28..25'),
        ("40=f16", 'rule 1 "40=f16" at column 1: layer 40 is out of range: the model has 30 layers '
                   "(0..29, or -30..-1)"),
        ("0..30=f16", 'rule 1 "0..30=f16" at column 4: layer 30 is out of range'),
        ("2+-31=f16", 'rule 1 "2+-31=f16" at column 3: layer -31 is out of range'),
        ("0..3;", None),
        ("0..3+2=f16", 'rule 1 "0..3+2=f16" at column 6: layer 2 K is already set by rule 1'),
        ("0..4=q8_0; -30=f16", 'rule 2 "-30=f16" at column 12: layer 0 K is already set by rule 1'),
        ("0=q8_0/-;0=-/f16;0=f16/-", 'rule 3 "0=f16/-" at column 18: layer 0 K is already set by rule 1'),
        ("0=-/q8_0;1..2=-/f16;2=-/q4_0", 'rule 3 "2=-/q4_0" at column 21: layer 2 V is already set by rule 2'),
    ],
)
def test_range_and_overlap_errors(text: str, message: str | None) -> None:
    if message is None:
        with pytest.raises(UsageError):
            parse_rules(text)
        return
    rules = parse_rules(text)  # the syntax is fine: these need the layer count
    with pytest.raises(KVConfigError) as err:
        resolve("turbo4", "turbo3", 30, rules=rules)
    assert err.value.message.startswith("kv layers: " + message) and err.value.exit_code == 13


def test_overlap_is_per_side() -> None:
    res = resolve("turbo4", "turbo3", 30, rules=parse_rules("0..1=q8_0/-;0..1=-/f16"))
    assert [lt.pair for lt in res.layers[:3]] == ["q8_0/f16", "q8_0/f16", "turbo4/turbo3"]
    assert (res.layers[0].source_k, res.layers[0].source_v) == ("rule 1", "rule 2")
    assert res.layers[2].source_k == "default" and res.warnings == ()


def test_the_issue_example() -> None:
    """layers 0-1 and the last 2: q8_0/q8_0, the rest turbo4/turbo3."""
    res = resolve("turbo4", "turbo3", 30, rules=parse_rules("0..1+-2..-1=q8_0"))
    pairs = [lt.pair for lt in res.layers]
    assert pairs[:2] == pairs[-2:] == ["q8_0/q8_0"] * 2
    assert set(pairs[2:28]) == {"turbo4/turbo3"}


# --------------------------------------------------------------------------- modes
def mode_pairs(mode: int, k: str, v: str, n: int = 30) -> list[str]:
    return [lt.pair for lt in resolve(k, v, n, mode=mode).layers]


def test_mode_tables() -> None:
    n = 30
    t4 = "turbo4/turbo4"
    assert mode_pairs(0, "turbo4", "turbo4") == [t4] * n
    # mode 1: first 4 and last 4 layers q8_0/q8_0
    assert mode_pairs(1, "turbo4", "turbo4") == ["q8_0/q8_0"] * 4 + [t4] * 22 + ["q8_0/q8_0"] * 4
    # mode 2: last 8 layers q8_0/q8_0
    assert mode_pairs(2, "turbo3", "turbo3") == ["turbo3/turbo3"] * 22 + ["q8_0/q8_0"] * 8
    # mode 5: first 2 and last 2 layers V turbo4 (K kept)
    assert mode_pairs(5, "turbo3", "turbo2") == ["turbo3/turbo4"] * 2 + ["turbo3/turbo2"] * 26 + ["turbo3/turbo4"] * 2
    # mode 6: last 8 layers V turbo4
    assert mode_pairs(6, "q8_0", "turbo3") == ["q8_0/turbo3"] * 22 + ["q8_0/turbo4"] * 8
    # mode 7: first 2 and last 2 layers V q8_0
    assert mode_pairs(7, "turbo4", "turbo3") == ["turbo4/q8_0"] * 2 + ["turbo4/turbo3"] * 26 + ["turbo4/q8_0"] * 2
    assert set(MODES) == {0, 1, 2, 5, 6, 7}


@pytest.mark.parametrize("mode", [1, 2, 5, 6, 7])
@pytest.mark.parametrize("base", ["f16", "q8_0", "q4_0", "turbo4", "turbo3", "turbo2"])
def test_a_mode_only_ever_raises_precision(mode: int, base: str) -> None:
    res = resolve(base, base, 12, mode=mode)
    named = {lt.index for lt in resolve("turbo2", "turbo2", 12, mode=mode).layers if lt.pair != "turbo2/turbo2"}
    for lt in res.layers:
        assert bits(lt.type_k) >= bits(base) and bits(lt.type_v) >= bits(base)
        if lt.index not in named:
            assert lt.pair == f"{base}/{base}" and lt.source_k == lt.source_v == "default"
        elif lt.pair != f"{base}/{base}":
            assert f"mode {mode}" in (lt.source_k, lt.source_v)
    changed = any(lt.pair != f"{base}/{base}" for lt in res.layers)
    assert res.mode_applied == changed
    # f16 has more bits than any mode type: nothing changes; turbo2 is raised by every mode
    assert changed is (base in ("q4_0", "turbo4", "turbo3", "turbo2") and not (base == "q4_0" and mode in (5, 6))
                       and not (base == "turbo4" and mode in (5, 6)))


def test_mode_7_keeps_a_turbo4_v_in_the_middle() -> None:
    """The contract's example: -ctv turbo4 with mode 7: turbo4 in the middle, q8_0 V at the ends."""
    assert mode_pairs(7, "turbo4", "turbo4", 8) == ["turbo4/q8_0"] * 2 + ["turbo4/turbo4"] * 4 + ["turbo4/q8_0"] * 2
    # never lowered: a q8_0 V stays q8_0 under mode 5 (turbo4 has fewer bits)
    assert mode_pairs(5, "q8_0", "q8_0", 8) == ["q8_0/q8_0"] * 8


def test_unknown_mode() -> None:
    for mode in (3, 4, 8, -1):
        with pytest.raises(UsageError) as err:
            resolve("turbo4", "turbo4", 30, mode=mode)
        assert err.value.message == f"TURBO_LAYER_ADAPTIVE={mode}: unknown mode (known: 0 1 2 5 6 7)"


def test_a_mode_on_fewer_than_8_layers_changes_nothing() -> None:
    res = resolve("turbo4", "turbo3", 7, mode=7)
    assert [lt.pair for lt in res.layers] == ["turbo4/turbo3"] * 7 and not res.mode_applied
    assert res.warnings == ("TURBO_LAYER_ADAPTIVE=7: the modes need at least 8 layers and the model has 7: no change",)
    assert resolve("turbo4", "turbo3", 7, mode=0).warnings == ()
    assert resolve("turbo4", "turbo3", 8, mode=7).mode_applied


def test_explicit_rules_beat_the_mode_with_a_warning() -> None:
    res = resolve("turbo4", "turbo4", 30, mode=7, rules=parse_rules("0..1=f16;29=-/turbo2;10=q8_0"))
    pairs = [lt.pair for lt in res.layers]
    assert pairs[:2] == ["f16/f16"] * 2 and pairs[29] == "turbo4/turbo2" and pairs[28] == "turbo4/q8_0"
    assert pairs[10] == "q8_0/q8_0"
    assert res.layers[29].source_v == "rule 2" and res.layers[28].source_v == "mode 7"
    assert res.warnings == (
        'kv layers: rule 1 "0..1=f16" overrides TURBO_LAYER_ADAPTIVE=7 at layers 0-1 V: f16 instead of q8_0',
        'kv layers: rule 2 "29=-/turbo2" overrides TURBO_LAYER_ADAPTIVE=7 at layer 29 V: turbo2 instead of q8_0',
    )  # rule 3 names a layer the mode does not: no warning
    # a rule that agrees with the mode's result: no warning
    assert resolve("turbo4", "turbo4", 30, mode=7, rules=parse_rules("0=-/q8_0")).warnings == ()


# --------------------------------------------------------------------------- recipes
def test_parse_recipe() -> None:
    r = parse_recipe(" turbo4/turbo3 ; 0..1 + -2..-1 = q8_0 ")
    assert (r.type_k, r.type_v, r.mode, r.label) == ("turbo4", "turbo3", None, "turbo4/turbo3;0..1+-2..-1=q8_0")
    assert r.llama_args() == ["-fa", "on", "-ctk", "turbo4", "-ctv", "turbo3", "--kv-layers", "0..1+-2..-1=q8_0"]
    assert r.bench_args() == ["-ctk", "turbo4", "-ctv", "turbo3", "-kvl", "0..1+-2..-1=q8_0"] and r.env() == {}
    m = parse_recipe("turbo4;mode=7")
    assert (m.type_k, m.type_v, m.mode, m.label, m.per_layer) == ("turbo4", "turbo4", 7, "turbo4;mode=7", True)
    assert m.llama_args() == ["-fa", "on", "-ctk", "turbo4", "-ctv", "turbo4", "--kv-adaptive", "7"]
    assert m.bench_args() == ["-ctk", "turbo4", "-ctv", "turbo4"] and m.env() == {"TURBO_LAYER_ADAPTIVE": "7"}
    both = parse_recipe("q8_0/turbo3;mode=5;-1=f16")
    assert both.label == "q8_0/turbo3;mode=5;-1=f16" and both.types() == {"q8_0", "turbo3", "turbo4", "f16"}
    plain = parse_recipe("q4_0/q4_0")
    assert plain.label == "q4_0" and not plain.per_layer and plain.llama_args() == [
        "-fa", "on", "-ctk", "q4_0", "-ctv", "q4_0"]
    assert parse_recipe("turbo4;").label == "turbo4"  # an empty rules part: no rules


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("", UsageError, "recipe '': expected TYPE or K/V before the first ';'"),
        (";0=f16", UsageError, "recipe ';0=f16': expected TYPE or K/V before the first ';'"),
        ("q8_0/turbo3/f16", UsageError, "recipe 'q8_0/turbo3/f16': expected TYPE or K/V"),
        ("turbo5", UsageError, "unknown K cache type 'turbo5'; did you mean turbo4?"),
        ("q8_0/q4", UsageError, "unknown V cache type 'q4'"),
        ("turbo4;mode=x", UsageError, "recipe 'turbo4;mode=x': expected ;mode=N (a TURBO_LAYER_ADAPTIVE mode number), "
                                      "got 'mode=x'"),
        ("turbo4;mode7", UsageError, "recipe 'turbo4;mode7': expected ;mode=N"),
        ("turbo4;mode=3", UsageError, "TURBO_LAYER_ADAPTIVE=3: unknown mode (known: 0 1 2 5 6 7)"),
        ("turbo4;mode=7;0..=f16", UsageError, 'kv layers: rule 1 "0..=f16" at column 4: expected a layer index'),
    ],
)
def test_bad_recipes(text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as err:
        parse_recipe(text)
    assert str(err.value).startswith(message)


def test_recipe_list_keeps_commas_and_dedupes() -> None:
    got = parse_recipe_list(["q4_0,turbo4/turbo3;0..1+-2..-1=q8_0", "q4_0/q4_0", "turbo4;mode=7"], ("f16",))
    assert [r.label for r in got] == ["q4_0", "turbo4/turbo3;0..1+-2..-1=q8_0", "turbo4;mode=7"]
    assert [r.label for r in parse_recipe_list([], ("f16", "q8_0/turbo3"))] == ["f16", "q8_0/turbo3"]


def test_turbo_without_flash_attention() -> None:
    with pytest.raises(KVConfigError, match="requires flash attention"):
        parse_recipe("turbo4", flash_attn="off")


def test_turbo_rule_without_flash_attention(tmp_path: Path) -> None:
    _, layout = read_layout(kvmodels.llama(tmp_path / "m.gguf"))
    recipe = parse_recipe("q8_0;0=-/turbo3", flash_attn="off")
    with pytest.raises(KVConfigError) as err:
        recipe.resolve(layout)
    assert err.value.message == ("the recipe q8_0;0=-/turbo3 puts the TurboQuant cache type turbo3 on some layers, "
                                 "but flash attention is off")


# --------------------------------------------------------------------------- arithmetic
def test_block_sizes() -> None:
    assert {t: bits(t) for t in kvrules.RULE_TYPES} == {
        "f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5, "iq4_nl": 4.5, "q5_0": 5.5,
        "q5_1": 6, "turbo2": 2.25, "turbo3": 3.25, "turbo4": 4.25}
    assert kvrules.row_bytes("q8_0", 192) == 6 * 34 and kvrules.row_bytes("turbo3", 192) == 3 * 26
    assert kvrules.row_bytes("f16", 192) == 384


def test_bits_and_bytes_by_hand(tmp_path: Path) -> None:
    """SmolLM2-like: 30 layers, head dim 64, 3 KV heads: 192 values per K row and per V row."""
    _, layout = read_layout(kvmodels.llama(tmp_path / "m.gguf"))
    plan = parse_recipe("turbo4/turbo3;0..1+-2..-1=q8_0").resolve(layout)
    # 4 layers q8_0/q8_0, 26 layers turbo4/turbo3, every row 192 values
    assert plan.bits_per_value == pytest.approx((4 * (8.5 + 8.5) + 26 * (4.25 + 3.25)) / 60)
    k, v = plan.kv_bytes(1000)
    # q8_0: 192/32 = 6 blocks x 34 bytes; turbo4: 3 blocks x 34; turbo3: 3 blocks x 26
    assert k == 1000 * (4 * 6 * 34 + 26 * 3 * 34)
    assert v == 1000 * (4 * 6 * 34 + 26 * 3 * 26)
    assert plan.pairs() == [("q8_0", "q8_0"), ("turbo4", "turbo3")]
    assert [(r.first, r.last) for r in plan.runs()] == [(0, 1), (2, 27), (28, 29)]


def test_bits_weighted_by_values(tmp_path: Path) -> None:
    """gemma4-like: SWA layers hold 256 x 4 = 1024 values per row, global ones 512 x 2 = 1024;
    with different head counts the weights differ: here 12 layers, 4 shared."""
    path = kvmodels.write_gguf(tmp_path / "g.gguf", "gemma4", block_count=8, embedding_length=1024, head_count=8,
                               head_count_kv=[4, 4, 4, 1, 4, 4, 4, 1], key_length=512, value_length=512,
                               key_length_swa=256, value_length_swa=256,
                               sliding_window_pattern=[True, True, True, False] * 2)
    _, layout = read_layout(path)
    plan = parse_recipe("turbo3;3+7=q8_0").resolve(layout)
    swa, glob = 256 * 4, 512 * 1  # values per row
    want = (6 * swa * 3.25 * 2 + 2 * glob * 8.5 * 2) / (6 * swa * 2 + 2 * glob * 2)
    assert plan.bits_per_value == pytest.approx(want)
    assert plan.bits_per_value != pytest.approx((6 * 3.25 + 2 * 8.5) / 8)  # not the per-layer mean
    k, v = plan.kv_bytes(256)
    assert k == v == 256 * (6 * (swa // 64) * 26 + 2 * (glob // 32) * 34)


def test_safety_warnings(tmp_path: Path) -> None:
    _, layout = read_layout(kvmodels.llama(tmp_path / "m.gguf"))
    assert parse_recipe("turbo4/turbo3;0..1+-2..-1=q8_0").resolve(layout).safety() == []
    warned = parse_recipe("turbo2;0..1=q8_0;2=turbo3").resolve(layout).safety()
    assert warned == [f"K turbo2 on layers 3-29: {FRAGILE_K_NOTE}", f"K turbo3 on layer 2: {FRAGILE_K_NOTE}"]
    assert "KLD 1.09 and PPL 55.4 vs 17.7 at f16" in FRAGILE_K_NOTE and "measured on SmolLM2-135M" in FRAGILE_K_NOTE
    _, odd = read_layout(kvmodels.llama(tmp_path / "o.gguf", head_dim=80, n_head=4, n_head_kv=2))
    assert parse_recipe("q8_0;-1=-/turbo4").resolve(odd).safety() == [
        "V turbo4 on layer 29 (head dim 80): the TurboQuant types support head dims 64, 128, 256, 512 only; "
        "llama.cpp refuses it"]
