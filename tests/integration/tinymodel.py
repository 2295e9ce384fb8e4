"""A tiny, deterministic llama-architecture GGUF model for tests (random weights).

Import it from any test::

    from tests.integration.tinymodel import write_tiny_model
    path = write_tiny_model(tmp_path / "tiny.gguf", head_dim=128)

The tokenizer is a small SentencePiece-style ("llama") vocabulary with the 256 byte tokens,
so llama.cpp can tokenize any text. Same arguments → byte-identical file.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at",
    "from", "it", "his", "an", "were", "are", "which", "be", "this", "has", "also", "or",
    "had", "its", "first", "new", "one", "their", "after", "two", "but", "not", "have", "they",
    "been", "who", "time", "city", "year", "school", "during", "other", "team", "most",
    "people", "where", "some", "three", "all", "world", "between", "over", "known", "cache",
    "quant", "turbo", "model", "layer", "head", "value", "key", "attention", "hello", "test",
)


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + [f"▁{w}" for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz")
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # SentencePiece scores: longer / earlier pieces win; control and byte tokens score 0
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def add_tiny_tokenizer(w: gguf.GGUFWriter) -> None:
    """The tiny SPM vocabulary and its special tokens (BOS added, no EOS)."""
    tokens, scores, types = tiny_vocab()
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def add_tiny_header(w: gguf.GGUFWriter, *, name: str, n_ctx: int, n_embd: int, n_layer: int, n_ff: int,
                    n_head: int, n_head_kv: int, head_dim: int, n_rot: int, rope_base: float, rms_eps: float,
                    file_type: int) -> None:
    """The hyperparameters every tiny model writes, and the tiny tokenizer."""
    w.add_name(name)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(n_rot)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(rms_eps)
    w.add_file_type(file_type)
    add_tiny_tokenizer(w)


def finish(w: gguf.GGUFWriter, path: Path) -> Path:
    """Write the GGUF file (header, metadata, tensors) and return its path."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_model(
    path: Path,
    *,
    head_dim: int = 128,
    n_layer: int = 2,
    n_head: int = 2,
    n_head_kv: int = 1,
    n_embd: int = 256,
    n_ff: int = 512,
    n_ctx: int = 2048,
    seed: int = 1234,
    dtype: str = "f16",
) -> Path:
    """Write the model to ``path`` and return it. ``dtype`` applies to the matrices
    (``f16`` or ``f32``); norms are always f32, as llama.cpp expects."""
    if dtype not in ("f16", "f32"):
        raise ValueError("dtype must be f16 or f32")
    rng = np.random.default_rng(seed)
    wtype = np.float16 if dtype == "f16" else np.float32
    n_vocab = len(tiny_vocab()[0])

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(wtype)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    add_tiny_header(w, name="turboctl tiny test model", n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff,
                    n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, n_rot=head_dim, rope_base=10000.0,
                    rms_eps=1e-5,
                    file_type=gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_head * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_head * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
    w.add_tensor("output_norm.weight", norm())
    w.add_tensor("output.weight", mat(n_vocab, n_embd))

    return finish(w, path)


def write_tiny_gemma4(
    path: Path,
    *,
    head_dim_full: int = 256,
    head_dim_swa: int = 128,
    n_layer: int = 4,
    n_head: int = 2,
    n_head_kv: int = 1,
    n_embd: int = 256,
    n_ff: int = 512,
    n_swa: int = 64,
    n_ctx: int = 2048,
    seed: int = 4321,
) -> Path:
    """A tiny Gemma 4 (architecture ``gemma4``): sliding-window layers with head dim
    ``head_dim_swa`` and full-attention layers (every 2nd) with ``head_dim_full`` -- a model
    whose layers differ in head dim. Random f32 weights, the tiny SPM vocabulary."""
    rng = np.random.default_rng(seed)
    n_vocab = len(tiny_vocab()[0])
    swa = [i % 2 == 0 for i in range(n_layer)]  # layers 1, 3, ... are full attention

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    arch = "gemma4"
    w = gguf.GGUFWriter(str(path), arch)
    add_tiny_header(w, name="turboctl tiny gemma4 test model", n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer,
                    n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim_full, n_rot=head_dim_full,
                    rope_base=1000000.0, rms_eps=1e-6, file_type=gguf.LlamaFileType.ALL_F32)
    w.add_uint32(f"{arch}.attention.key_length_swa", head_dim_swa)
    w.add_uint32(f"{arch}.attention.value_length_swa", head_dim_swa)
    w.add_uint32(f"{arch}.attention.sliding_window", n_swa)
    w.add_array(f"{arch}.attention.sliding_window_pattern", swa)
    w.add_uint32(f"{arch}.embedding_length_per_layer_input", 0)
    w.add_uint32(f"{arch}.rope.dimension_count_swa", head_dim_swa)
    w.add_float32(f"{arch}.rope.freq_base_swa", 10000.0)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    w.add_tensor("rope_freqs.weight", ones(head_dim_full // 2))
    for i in range(n_layer):
        hd = head_dim_swa if swa[i] else head_dim_full
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_head * hd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_head_kv * hd, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_head_kv * hd, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_head * hd))
        w.add_tensor(f"blk.{i}.attn_q_norm.weight", ones(hd))
        w.add_tensor(f"blk.{i}.attn_k_norm.weight", ones(hd))
        w.add_tensor(f"blk.{i}.post_attention_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
        w.add_tensor(f"blk.{i}.post_ffw_norm.weight", ones(n_embd))
    w.add_tensor("output_norm.weight", ones(n_embd))

    return finish(w, path)


PARTIAL_ROPE_ARCHS = {"glm4": "norm", "phi3": "neox"}  # architecture -> its RoPE mode in llama.cpp


def write_tiny_partial_rope(
    path: Path,
    *,
    arch: str = "glm4",
    head_dim: int = 128,
    n_rot: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    n_head_kv: int = 1,
    n_ff: int = 512,
    n_ctx: int = 2048,
    seed: int = 2468,
) -> Path:
    """A tiny model with partial RoPE: only the first ``n_rot`` of each head's ``head_dim``
    dimensions are roped (``{arch}.rope.dimension_count`` < head dim), as in GLM-4 (``glm4``,
    normal RoPE) or Phi-3-style models (``phi3``, NeoX RoPE). Random f32 weights, the tiny
    SPM vocabulary; n_embd = n_head * head_dim."""
    if arch not in PARTIAL_ROPE_ARCHS:
        raise ValueError(f"arch must be one of {sorted(PARTIAL_ROPE_ARCHS)}")
    rng = np.random.default_rng(seed)
    n_vocab = len(tiny_vocab()[0])
    n_embd = n_head * head_dim

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    w = gguf.GGUFWriter(str(path), arch)
    # (no architecture name in the model name: llama.cpp keys tokenizer quirks on it)
    add_tiny_header(w, name=f"turboctl tiny partial-RoPE test model ({n_rot} of {head_dim})", n_ctx=n_ctx,
                    n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv,
                    head_dim=head_dim, n_rot=n_rot, rope_base=10000.0, rms_eps=1e-5,
                    file_type=gguf.LlamaFileType.ALL_F32)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_head * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_head * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(2 * n_ff, n_embd))  # gate and up, fused
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
        if arch == "glm4":
            w.add_tensor(f"blk.{i}.post_attention_norm.weight", ones(n_embd))
            w.add_tensor(f"blk.{i}.post_ffw_norm.weight", ones(n_embd))
    w.add_tensor("output_norm.weight", ones(n_embd))
    w.add_tensor("output.weight", mat(n_vocab, n_embd))

    return finish(w, path)
