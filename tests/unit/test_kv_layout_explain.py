"""Which layers own a KV cache (tiny GGUF files: llama, gemma4, qwen35, others), the
"no own cache" rule error, and `turboctl kv explain` (text and --json, schema-checked)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from tests.unit import kvmodels
from turboctl.cli.main import app
from turboctl.errors import KVConfigError, ModelError
from turboctl.kv import explain
from turboctl.kv.layout import read_layout
from turboctl.kv.recipe import parse_recipe

runner = CliRunner()


def kinds(path: Path) -> list[str]:
    _, layout = read_layout(path)
    return [la.kind if la.reuses is None else f"reuse {la.reuses}" for la in layout.layers]


# --------------------------------------------------------------------------- layouts
def test_plain_llama_every_layer_owns(tmp_path: Path) -> None:
    _, layout = read_layout(kvmodels.llama(tmp_path / "m.gguf"))
    assert layout.modelled and layout.note is None and layout.n_layer == 30
    assert all(la.owns for la in layout.layers) and layout.layers[0].n_embd_k == 192


def test_gemma4_swa_global_and_shared_layers(tmp_path: Path) -> None:
    path = kvmodels.gemma4(tmp_path / "g.gguf")
    _, layout = read_layout(path)
    assert kinds(path) == ["own"] * 8 + ["reuse 6"] * 3 + ["reuse 7"]
    assert [la.swa for la in layout.layers] == [True, True, True, False] * 3
    assert [(la.head_dim_k, la.n_head_kv) for la in layout.layers[2:4]] == [(256, 4), (512, 2)]
    assert [la.index for la in layout.owned()] == list(range(8))
    # without shared layers every layer owns its cache
    assert kinds(kvmodels.gemma4(tmp_path / "n.gguf", shared=0)) == ["own"] * 12


def test_gemma4_errors(tmp_path: Path) -> None:
    bad = kvmodels.write_gguf(tmp_path / "b.gguf", "gemma4", block_count=4, embedding_length=1024, head_count=8,
                              key_length=256, value_length=256)
    with pytest.raises(ModelError, match=r"gemma4 needs gemma4\.attention\.sliding_window_pattern"):
        read_layout(bad)
    with pytest.raises(ModelError, match=r"shared_kv_layers is 11 of 12 layers: llama\.cpp needs at least 2"):
        read_layout(kvmodels.gemma4(tmp_path / "s.gguf", shared=11))


def test_qwen35_recurrent_layers(tmp_path: Path) -> None:
    # default full_attention_interval 4: layers 3 and 7 are attention layers
    assert kinds(kvmodels.qwen35(tmp_path / "a.gguf")) == (["recurrent"] * 3 + ["own"]) * 2
    assert kinds(kvmodels.qwen35(tmp_path / "b.gguf", interval=2)) == ["recurrent", "own"] * 4
    flags = [True, False, True, True, True, True, False, True]
    assert kinds(kvmodels.qwen35(tmp_path / "c.gguf", recurrent=flags)) == [
        "recurrent" if f else "own" for f in flags]
    # MTP/nextn layers are not model layers
    _, layout = read_layout(kvmodels.qwen35(tmp_path / "d.gguf", n_layer=9, nextn=1))
    assert layout.n_layer == 8
    with pytest.raises(ModelError, match="full_attention_interval is 0"):
        read_layout(kvmodels.qwen35(tmp_path / "e.gguf", interval=0))


def test_unmodelled_and_unknown_architectures(tmp_path: Path) -> None:
    def note(arch: str) -> str | None:
        path = kvmodels.write_gguf(tmp_path / f"{arch}.gguf", arch, block_count=2, embedding_length=512,
                                   head_count=4, key_length=128, value_length=128)
        _, layout = read_layout(path)
        assert all(la.owns for la in layout.layers) or arch == "mamba"
        return layout.note

    assert note("qwen3") is None
    assert note("jamba") == ("turboctl does not know which layers of jamba (a hybrid model) own a KV cache: every "
                             "layer is assumed to own one")
    assert note("futurenet") == ("unknown architecture 'futurenet' (not one llama.cpp b11312 names): every layer "
                                 "is assumed to own a KV cache")
    assert note("mamba") == "mamba is a recurrent architecture: it has no KV cache"


def test_a_rule_naming_only_layers_without_a_cache(tmp_path: Path) -> None:
    _, qwen = read_layout(kvmodels.qwen35(tmp_path / "q.gguf"))
    with pytest.raises(KVConfigError) as err:
        parse_recipe("turbo4;3=q8_0;0..2=f16").resolve(qwen)
    assert err.value.message == ('kv layers: rule 2 "0..2=f16" at column 8: names only layers without a KV cache '
                                 "of their own (qwen35: layers 0-2 recurrent)")
    parse_recipe("turbo4;0..3=f16").resolve(qwen)  # one of them owns a cache: fine
    _, gemma = read_layout(kvmodels.gemma4(tmp_path / "g.gguf"))
    with pytest.raises(KVConfigError) as err:
        parse_recipe("turbo4;-2..-1=q8_0").resolve(gemma)
    assert err.value.message == ('kv layers: rule 1 "-2..-1=q8_0" at column 1: names only layers without a KV cache '
                                 "of their own (gemma4: 10 reuses 6, 11 reuses 7)")


def test_reusing_layers_read_their_owners_types(tmp_path: Path) -> None:
    _, gemma = read_layout(kvmodels.gemma4(tmp_path / "g.gguf"))
    plan = parse_recipe("turbo4/turbo3;6..7=q8_0").resolve(gemma)
    rows = plan.rows()
    assert [(r.type_k, r.source_k) for r in rows[8:]] == [("q8_0", "layer 6")] * 3 + [("q8_0", "layer 7")]
    assert plan.reuse() == {8: 6, 9: 6, 10: 6, 11: 7}
    assert sorted(plan.table()) == list(range(8))
    # the mode names the last two layers: they reuse a cache, so it changes nothing there, and says so
    warned = parse_recipe("turbo4;mode=7").resolve(gemma).safety()
    assert warned == ["TURBO_LAYER_ADAPTIVE=7 raises layers 10-11, which have no KV cache of their own: "
                      "no effect there"]


# --------------------------------------------------------------------------- kv explain
def test_kv_explain_text(tmp_path: Path) -> None:
    model = kvmodels.gemma4(tmp_path / "g.gguf")
    r = runner.invoke(app, ["kv", "explain", "turbo4/turbo3;mode=7;0=q8_0", "--model", str(model)])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "model           g.gguf: gemma4, 12 layers, 8 with a KV cache of their own" in out
    assert "llama.cpp args  -fa on -ctk turbo4 -ctv turbo3 --kv-adaptive 7 --kv-layers 0=q8_0" in out
    assert "llama-bench     TURBO_LAYER_ADAPTIVE=7 llama-bench -ctk turbo4 -ctv turbo3 -kvl 0=q8_0" in out
    assert "context         4096 cells per layer (the default: pass --ctx N for another size)" in out
    lines = [ln.split() for ln in out.splitlines()]
    assert ["0", "own", "q8_0", "q8_0", "rule", "1", "256/256", "SWA", "4"] in lines
    assert ["1", "own", "turbo4", "q8_0", "K", "default,", "V", "mode", "7", "256/256", "SWA", "4"] in lines
    assert ["3", "own", "turbo4", "turbo3", "default", "512/512", "2"] in lines
    assert ["8-10", "reuses", "layer", "6", "turbo4", "turbo3", "256/256", "SWA", "4"] in lines
    assert ["11", "reuses", "layer", "7", "turbo4", "turbo3", "512/512", "2"] in lines
    assert "pairs       q8_0/q8_0, turbo4/q8_0, turbo4/turbo3" in out
    # by hand: SWA rows 256 x 4 = 1024 values, global rows 512 x 2 = 1024 values: equal weights
    bpv = (8.5 * 2 + (4.25 + 8.5) + 6 * (4.25 + 3.25)) / 16
    assert f"bits/value  {bpv:.4f} (weighted" in out
    k = 4096 * (1024 // 32 * 34 + 7 * 1024 // 64 * 34)
    v = 4096 * (2 * 1024 // 32 * 34 + 6 * 1024 // 64 * 26)
    assert f"KV bytes    {k + v} (" in out and f"K {k}, V {v}) at 4096 cells per layer" in out
    assert "mode 7 applied" in out
    assert "warning: TURBO_LAYER_ADAPTIVE=7 raises layers 10-11" in r.stderr


def test_kv_explain_json(tmp_path: Path) -> None:
    model = kvmodels.llama(tmp_path / "m.gguf")
    r = runner.invoke(app, ["kv", "explain", "turbo3/turbo3;0..1+-2..-1=q8_0", "--model", str(model), "--ctx", "2048",
                            "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, json.loads(explain.schema_path().read_text()))
    assert doc["schema"] == "turboctl.kv.explain/1" and doc["ctx"] == 2048 and doc["ctx_default"] is False
    assert doc["recipe"]["label"] == "turbo3;0..1+-2..-1=q8_0"
    assert doc["recipe"]["llama_args"] == ["-fa", "on", "-ctk", "turbo3", "-ctv", "turbo3", "--kv-layers",
                                           "0..1+-2..-1=q8_0"]
    assert doc["model"] == {"path": str(model), "name": None, "architecture": "llama", "n_layer": 30,
                            "n_layer_own_cache": 30, "layout_known": True}
    assert doc["pairs"] == ["q8_0/q8_0", "turbo3/turbo3"]
    assert doc["bits_per_value"] == pytest.approx((4 * 8.5 + 26 * 3.25) / 30)
    assert doc["kv_bytes"]["k"] == doc["kv_bytes"]["v"] == 2048 * (4 * 6 * 34 + 26 * 3 * 26)
    assert [x["type_k"] for x in doc["layers"]] == ["q8_0"] * 2 + ["turbo3"] * 26 + ["q8_0"] * 2
    assert doc["unsafe"][0].startswith("K turbo3 on layers 2-27: the K side is fragile: measured on SmolLM2-135M")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "schema": "turboctl.kv.explain/0"}, json.loads(explain.schema_path().read_text()))


def test_kv_explain_errors(tmp_path: Path) -> None:
    model = kvmodels.llama(tmp_path / "m.gguf")
    r = runner.invoke(app, ["kv", "explain", "turbo4;0..40=q8_0", "--model", str(model)])
    assert r.exit_code == 13
    assert ('error: kv layers: rule 1 "0..40=q8_0" at column 4: layer 40 is out of range: the model has 30 layers '
            "(0..29, or -30..-1)") in r.stderr
    # a syntax error needs no model: the file is not even read
    r = runner.invoke(app, ["kv", "explain", "turbo4;0..=q8_0", "--model", str(tmp_path / "missing.gguf"), "--json"])
    assert r.exit_code == 2 and json.loads(r.stdout)["message"].startswith('kv layers: rule 1 "0..=q8_0"')
    r = runner.invoke(app, ["kv", "explain", "turbo4", "--model", str(tmp_path / "missing.gguf")])
    assert r.exit_code == 14 and "model file not found" in r.stderr
    r = runner.invoke(app, ["kv", "explain", "turbo4", "--model", str(model), "--ctx", "0"])
    assert r.exit_code == 2 and "--ctx 0: must be at least 1" in r.stderr
