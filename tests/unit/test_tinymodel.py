"""The tiny GGUF model generator used by the slow server tests (and the kernel tests)."""

from __future__ import annotations

from pathlib import Path

import gguf

from tests.integration.tinymodel import tiny_vocab, write_tiny_model


def test_tiny_model_is_deterministic_and_well_formed(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a.gguf")
    b = write_tiny_model(tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()
    assert write_tiny_model(tmp_path / "c.gguf", seed=7).read_bytes() != a.read_bytes()
    r = gguf.GGUFReader(str(a))
    fields = {f.name: f for f in r.fields.values()}

    def scalar(name: str) -> object:
        f = fields[name]
        return f.parts[f.data[0]][0]

    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert scalar("llama.block_count") == 2
    assert scalar("llama.embedding_length") == 256
    assert scalar("llama.attention.head_count") == 2
    assert scalar("llama.attention.head_count_kv") == 1
    assert scalar("llama.attention.key_length") == 128
    names = {t.name: t for t in r.tensors}
    assert len(names) == 2 + 9 * 2 + 1
    assert list(names["blk.0.attn_k.weight"].shape) == [256, 128]  # ggml order: n_embd, n_kv*hd
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert len(fields["tokenizer.ggml.tokens"].data) == len(tiny_vocab()[0])


def test_head_dim_and_f32(tmp_path: Path) -> None:
    p = write_tiny_model(tmp_path / "h64.gguf", head_dim=64, n_head=4, n_head_kv=2, dtype="f32")
    r = gguf.GGUFReader(str(p))
    names = {t.name: t for t in r.tensors}
    assert list(names["blk.1.attn_q.weight"].shape) == [256, 256]
    assert list(names["blk.1.attn_v.weight"].shape) == [256, 128]
    assert names["output.weight"].tensor_type == gguf.GGMLQuantizationType.F32
