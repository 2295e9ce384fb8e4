"""KV configurations (validated objects) and the model check: head dims and MLA from GGUF files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
from pydantic import ValidationError

from tests.integration.tinymodel import write_tiny_model
from turboctl.errors import KVConfigError, ModelError, UsageError
from turboctl.kv import config as kvconfig
from turboctl.kv.config import KVConfig, make_config, parse_kv, parse_kv_list
from turboctl.models import gguf as models

SUPPORTED = "TurboQuant types support head dims 64, 128, 256 and 512"


# --------------------------------------------------------------------------- KV configurations
def test_parse_kv_and_bits() -> None:
    assert parse_kv("q4_0") == KVConfig(type_k="q4_0", type_v="q4_0", flash_attn="on")
    cfg = parse_kv(" q8_0/turbo3 ")
    assert (cfg.type_k, cfg.type_v, cfg.label, cfg.pair) == ("q8_0", "turbo3", "q8_0/turbo3", "q8_0/turbo3")
    assert cfg.bits_per_value == (8.5 + 3.25) / 2 and cfg.uses_turbo and cfg.upstream_rotated
    assert [parse_kv(t).bits_per_value for t in ("f16", "q8_0", "q4_0", "iq4_nl", "turbo4", "turbo3", "turbo2")] \
        == [16, 8.5, 4.5, 4.5, 4.25, 3.25, 2.25]
    assert {t: kvconfig.BITS_PER_VALUE[t] for t in ("f32", "bf16", "q4_1", "q5_0", "q5_1")} == {
        "f32": 32, "bf16": 16, "q4_1": 5, "q5_0": 5.5, "q5_1": 6}
    assert not parse_kv("turbo4").upstream_rotated and not parse_kv("f16").uses_turbo
    assert parse_kv("turbo4").llama_args() == ["-fa", "on", "-ctk", "turbo4", "-ctv", "turbo4"]


def test_kv_list_defaults_commas_and_duplicates() -> None:
    assert [c.label for c in parse_kv_list([], ("f16", "q8_0/turbo3"))] == ["f16", "q8_0/turbo3"]
    assert [c.label for c in parse_kv_list(["q4_0,turbo4", "q4_0/q4_0", "turbo3"], ("f16",))] == [
        "q4_0", "turbo4", "turbo3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("turbo5", "unknown K cache type 'turbo5'; did you mean turbo4?"),
        ("q8_0/q4", "unknown V cache type 'q4'"),
        ("q8_0/turbo3/f16", "--kv 'q8_0/turbo3/f16': expected TYPE or K/V, e.g. q4_0 or q8_0/turbo3"),
        ("/f16", "--kv '/f16': expected TYPE or K/V"),
    ],
)
def test_bad_kv_specs(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_kv(spec)
    assert err.value.message.startswith(message) and err.value.exit_code == 2


def test_turbo_without_flash_attention_is_refused() -> None:
    with pytest.raises(KVConfigError) as err:
        make_config("q8_0", "turbo3", "off")
    assert err.value.exit_code == 13
    assert err.value.message == ("the TurboQuant cache type turbo3 requires flash attention, but flash "
                                 "attention is off")
    assert make_config("q8_0", "q8_0", "off").flash_attn == "off"
    assert make_config("turbo4", "turbo4", "auto").flash_attn == "auto"
    with pytest.raises(ValidationError, match="requires flash attention"):
        KVConfig(type_k="turbo4", type_v="f16", flash_attn="off")
    with pytest.raises(ValidationError):
        KVConfig(type_k="turbo9", type_v="f16")
    with pytest.raises(ValidationError):
        parse_kv("f16").type_k = "q8_0"  # type: ignore[misc]  # frozen
    with pytest.raises(UsageError, match="choose on, off or auto"):
        make_config("f16", "f16", "maybe")


# --------------------------------------------------------------------------- GGUF models
def write_meta(path: Path, arch: str = "llama", **kv: Any) -> Path:
    """A GGUF file with metadata only: ``{arch}.block_count`` and ``{arch}.embedding_length``, the
    other keys under ``{arch}.attention.``."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        name = f"{arch}.{key}" if key in ("block_count", "embedding_length") else f"{arch}.attention.{key}"
        if isinstance(value, list):
            w.add_array(name, value)
        else:
            w.add_uint32(name, int(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def refuse(info: models.ModelInfo, spec: str) -> str:
    with pytest.raises(KVConfigError) as err:
        models.check_model_kv(info, parse_kv(spec))
    assert err.value.exit_code == 13
    assert err.value.hint == "use q8_0 or q4_0 for this model (e.g. --kv q8_0 or --kv q4_0)"
    return err.value.message


@pytest.mark.parametrize("head_dim", [64, 128, 256, 512])
def test_supported_head_dims(tmp_path: Path, head_dim: int) -> None:
    info = models.inspect_model(write_tiny_model(tmp_path / "m.gguf", head_dim=head_dim))
    assert (info.architecture, info.n_layer, info.head_dim_k, info.head_dim_v) == ("llama", 2, head_dim, head_dim)
    for spec in ("turbo4", "turbo3", "turbo2", "q8_0/turbo3", "turbo4/f16", "f16"):
        models.check_model_kv(info, parse_kv(spec))


@pytest.mark.parametrize("head_dim", [80, 96])
def test_unsupported_head_dims(tmp_path: Path, head_dim: int) -> None:
    path = write_tiny_model(tmp_path / "m.gguf", head_dim=head_dim)
    info = models.inspect_model(path)
    assert refuse(info, "turbo3") == (
        f"{path}: K cache type turbo3 does not support head dim {head_dim} (layers 0-1); V cache type turbo3 "
        f"does not support head dim {head_dim} (layers 0-1): {SUPPORTED}")
    assert refuse(info, "q8_0/turbo4") == (
        f"{path}: V cache type turbo4 does not support head dim {head_dim} (layers 0-1): {SUPPORTED}")
    for spec in ("q8_0", "q4_0", "f16", "q8_0/q4_0"):
        models.check_model_kv(info, parse_kv(spec))


def test_head_dim_from_embedding_when_key_length_is_absent(tmp_path: Path) -> None:
    info = models.inspect_model(write_meta(tmp_path / "a.gguf", block_count=3, embedding_length=640,
                                           head_count=8))
    assert (info.head_dim_k, info.head_dim_v) == (80, 80)
    assert "does not support head dim 80 (layers 0-2)" in refuse(info, "turbo4")
    ok = models.inspect_model(write_meta(tmp_path / "b.gguf", block_count=3, embedding_length=1024, head_count=8))
    models.check_model_kv(ok, parse_kv("turbo4"))


def test_different_k_and_v_head_dims(tmp_path: Path) -> None:
    info = models.inspect_model(write_meta(tmp_path / "kv.gguf", block_count=2, embedding_length=512,
                                           head_count=4, key_length=192, value_length=128))
    models.check_model_kv(info, parse_kv("q8_0/turbo3"))  # V is 128: fine
    assert "K cache type turbo4 does not support head dim 192 (layers 0-1):" in refuse(info, "turbo4/q8_0")


def test_per_layer_arrays_and_swa_layers(tmp_path: Path) -> None:
    # gemma-4-like: SWA layers with head dim 256, every 6th layer full attention with 512
    pattern = [True, True, True, True, True, False] * 2
    info = models.inspect_model(write_meta(
        tmp_path / "g.gguf", arch="gemma4", block_count=12, embedding_length=1024, head_count=8,
        head_count_kv=[4] * 11 + [2], key_length=512, value_length=512, key_length_swa=256,
        value_length_swa=256, sliding_window_pattern=pattern))
    assert [la.n_head_kv for la in info.layers][-2:] == [4, 2]
    assert sorted(info.head_dims("k")) == [256, 512]
    assert [la.index for la in info.head_dims("k")[512]] == [5, 11]
    models.check_model_kv(info, parse_kv("turbo4"))
    # SWA layers at an unsupported head dim
    odd = models.inspect_model(write_meta(
        tmp_path / "o.gguf", arch="gemma4", block_count=6, embedding_length=1024, head_count=8,
        key_length=256, value_length=256, key_length_swa=80, value_length_swa=80,
        sliding_window_pattern=pattern[:6]))
    assert "K cache type turbo3 does not support head dim 80 (layers 0-4); V cache" in refuse(odd, "turbo3")
    # SWA dims but the pattern is hard-coded in llama.cpp (not in the file): both dims count
    unknown = models.inspect_model(write_meta(
        tmp_path / "u.gguf", arch="gemma3", block_count=6, embedding_length=1024, head_count=8,
        key_length=256, value_length=256, key_length_swa=96, value_length_swa=96))
    assert sorted(unknown.head_dims("v")) == [96, 256]
    assert "V cache type turbo4 does not support head dim 96 (SWA layers)" in refuse(unknown, "q8_0/turbo4")


def test_mla_models_are_refused(tmp_path: Path) -> None:
    path = write_meta(tmp_path / "ds.gguf", arch="deepseek2", block_count=2, embedding_length=1024,
                      head_count=8, key_length=192, value_length=128, kv_lora_rank=512)
    info = models.inspect_model(path)
    assert info.mla and info.kv_lora_rank == 512
    assert refuse(info, "turbo4") == (f"{path}: the TurboQuant cache type turbo4 does not support MLA attention "
                                      "(deepseek2, kv_lora_rank 512)")
    models.check_model_kv(info, parse_kv("q8_0"))
    ds4 = models.inspect_model(write_meta(tmp_path / "d4.gguf", arch="deepseek4", block_count=1,
                                          embedding_length=512, head_count=4, key_length=128))
    assert "does not support MLA attention (deepseek4, deepseek4)" in refuse(ds4, "q8_0/turbo3")


def test_unreadable_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found") as err:
        models.inspect_model(tmp_path / "nope.gguf")
    assert err.value.exit_code == 14
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match=f"{bad}: not a readable GGUF model"):
        models.inspect_model(bad)
    with pytest.raises(ModelError, match="block_count is missing"):
        models.inspect_model(write_meta(tmp_path / "e.gguf", embedding_length=64))
    with pytest.raises(ModelError, match="head_count_kv has 3 entries for 2 layers"):
        models.inspect_model(write_meta(tmp_path / "f.gguf", block_count=2, embedding_length=64, head_count=4,
                                        head_count_kv=[1, 1, 1]))
