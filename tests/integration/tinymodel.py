"""A tiny, deterministic llama-architecture GGUF model for tests (random weights).

Import it from any test::

    from tests.integration.tinymodel import write_tiny_model
    path = write_tiny_model(tmp_path / "tiny.gguf", head_dim=128)

The tokenizer is a small SentencePiece-style ("llama") vocabulary with the 256 byte tokens,
so llama.cpp can tokenize any text. Same arguments → byte-identical file.

Families: ``write_tiny_model`` (``llama``), ``write_tiny_gemma4`` (``gemma4``: sliding-window
and full-attention layers of different head dims, two KV caches, optionally trailing layers
that reuse an earlier layer's KV cache), ``write_tiny_partial_rope`` (``glm4`` / ``phi3``) and
``write_tiny_qwen35`` (``qwen35``: a hybrid of gated-delta-net recurrent layers and attention
layers). ``gemma4_layout`` and ``qwen35_attention_layers`` say which layer owns which cache,
as b11312 computes it, for tests that check per-layer logs.
"""

from __future__ import annotations

from collections.abc import Callable
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


def random_matrices(rng: np.random.Generator, dtype: type = np.float32) -> Callable[..., np.ndarray]:
    """mat(rows, cols, scale=1.0): a random matrix of rng's normals scaled by scale/sqrt(cols)."""
    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (scale * rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(dtype)
    return mat


def ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


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

    mat = random_matrices(rng, wtype)

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


def gemma4_layout(n_layer: int, n_kv_shared: int = 0) -> tuple[list[bool], list[int]]:
    """The tiny Gemma 4's layers: (is sliding-window, owner) per layer. Even layers are
    sliding-window, odd ones full attention. ``owner[i]`` is the layer whose KV cache layer
    ``i`` uses: itself, or -- for the last ``n_kv_shared`` layers -- as b11312 maps them
    (``llama_model::create_memory`` for gemma4): the last sliding-window layer before them for
    a sliding-window layer, the last full-attention one for a full-attention layer."""
    swa = [i % 2 == 0 for i in range(n_layer)]  # layers 1, 3, ... are full attention
    n_from_start = n_layer - n_kv_shared
    if n_kv_shared and (n_from_start < 2 or not swa[n_from_start - 2] or swa[n_from_start - 1]):
        raise ValueError("the layers before the shared ones must end with a sliding-window and a full layer")
    owner = [i if i < n_from_start else n_from_start - (2 if swa[i] else 1) for i in range(n_layer)]
    return swa, owner


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
    n_kv_shared: int = 0,
    seed: int = 4321,
) -> Path:
    """A tiny Gemma 4 (architecture ``gemma4``): sliding-window layers with head dim
    ``head_dim_swa`` and full-attention layers (every 2nd) with ``head_dim_full`` -- a model
    whose layers differ in head dim. With ``n_kv_shared`` > 0 the last ``n_kv_shared`` layers
    have no K/V projections and reuse the KV cache of an earlier layer
    (``gemma4.attention.shared_kv_layers``, see ``gemma4_layout``). Random f32 weights, the
    tiny SPM vocabulary."""
    rng = np.random.default_rng(seed)
    n_vocab = len(tiny_vocab()[0])
    swa, owner = gemma4_layout(n_layer, n_kv_shared)

    mat = random_matrices(rng)


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
    if n_kv_shared:
        w.add_uint32(f"{arch}.attention.shared_kv_layers", n_kv_shared)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    w.add_tensor("rope_freqs.weight", ones(head_dim_full // 2))
    for i in range(n_layer):
        hd = head_dim_swa if swa[i] else head_dim_full
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_head * hd, n_embd))
        if owner[i] == i:  # a layer that reuses another's cache has no K/V projection
            w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_head_kv * hd, n_embd))
            w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_head_kv * hd, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_head * hd))
        w.add_tensor(f"blk.{i}.attn_q_norm.weight", ones(hd))
        if owner[i] == i:
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

    mat = random_matrices(rng)


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


def qwen35_attention_layers(n_layer: int, full_attention_interval: int = 4) -> list[int]:
    """The attention layers of the tiny Qwen 3.5 (every ``full_attention_interval``-th, as
    b11312 derives them from ``qwen35.full_attention_interval``); the others are recurrent."""
    return [i for i in range(n_layer) if (i + 1) % full_attention_interval == 0]


def write_tiny_qwen35(
    path: Path,
    *,
    n_layer: int = 8,
    full_attention_interval: int = 4,
    n_embd: int = 128,
    n_head: int = 2,
    n_head_kv: int = 1,
    head_dim: int = 128,
    n_rot: int = 64,
    n_ff: int = 256,
    d_state: int = 32,
    n_group: int = 2,
    dt_rank: int = 4,
    d_conv: int = 4,
    n_ctx: int = 2048,
    seed: int = 3535,
) -> Path:
    """A tiny hybrid Qwen 3.5 (architecture ``qwen35``): every ``full_attention_interval``-th
    layer is a gated attention layer (query + gate projection, Q/K norms, IMRoPE on ``n_rot``
    of ``head_dim`` dims), the others are gated delta net (linear attention) layers with
    ``n_group`` key heads and ``dt_rank`` value heads of ``d_state`` dims and a causal
    convolution of width ``d_conv``. Only the attention layers have a KV cache; the recurrent
    ones keep f32 conv/SSM states. Random f32 weights, the tiny SPM vocabulary."""
    if n_rot % 2 or n_rot > head_dim:
        raise ValueError("n_rot must be even and at most head_dim")
    if dt_rank % n_group:
        raise ValueError("dt_rank (value heads) must be a multiple of n_group (key heads)")
    rng = np.random.default_rng(seed)
    n_vocab = len(tiny_vocab()[0])
    attn = set(qwen35_attention_layers(n_layer, full_attention_interval))
    key_dim = d_state * n_group
    value_dim = d_state * dt_rank  # = ssm inner size: head_v_dim == d_state
    conv_dim = 2 * key_dim + value_dim
    half = n_rot // 2  # IMRoPE sections over the rotated pairs: t, h, w (text positions: all equal)
    sections = [half - 2 * (half // 3), half // 3, half // 3, 0]

    mat = random_matrices(rng)


    arch = "qwen35"
    w = gguf.GGUFWriter(str(path), arch)
    add_tiny_header(w, name="turboctl tiny hybrid test model", n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer,
                    n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, n_rot=n_rot,
                    rope_base=10000000.0, rms_eps=1e-6, file_type=gguf.LlamaFileType.ALL_F32)
    w.add_array(f"{arch}.rope.dimension_sections", sections)
    w.add_uint32(f"{arch}.full_attention_interval", full_attention_interval)
    w.add_uint32(f"{arch}.ssm.conv_kernel", d_conv)
    w.add_uint32(f"{arch}.ssm.inner_size", value_dim)
    w.add_uint32(f"{arch}.ssm.state_size", d_state)
    w.add_uint32(f"{arch}.ssm.time_step_rank", dt_rank)
    w.add_uint32(f"{arch}.ssm.group_count", n_group)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.post_attention_norm.weight", ones(n_embd))
        if i in attn:
            w.add_tensor(f"blk.{i}.attn_q.weight", mat(2 * n_head * head_dim, n_embd))  # query and gate
            w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_head_kv * head_dim, n_embd))
            w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_head_kv * head_dim, n_embd))
            w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_head * head_dim))
            w.add_tensor(f"blk.{i}.attn_q_norm.weight", ones(head_dim))
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", ones(head_dim))
        else:
            w.add_tensor(f"blk.{i}.attn_qkv.weight", mat(conv_dim, n_embd))
            w.add_tensor(f"blk.{i}.attn_gate.weight", mat(value_dim, n_embd))
            w.add_tensor(f"blk.{i}.ssm_conv1d.weight", mat(conv_dim, d_conv))
            w.add_tensor(f"blk.{i}.ssm_dt.bias", np.full(dt_rank, -1.0, dtype=np.float32))
            # A = -exp(A_log): a decay per value head, in (-1, 0)
            w.add_tensor(f"blk.{i}.ssm_a", -rng.uniform(0.1, 0.9, dt_rank).astype(np.float32))
            w.add_tensor(f"blk.{i}.ssm_beta.weight", mat(dt_rank, n_embd))
            w.add_tensor(f"blk.{i}.ssm_alpha.weight", mat(dt_rank, n_embd))
            w.add_tensor(f"blk.{i}.ssm_norm.weight", ones(d_state))
            w.add_tensor(f"blk.{i}.ssm_out.weight", mat(n_embd, value_dim))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
    w.add_tensor("output_norm.weight", ones(n_embd))
    w.add_tensor("output.weight", mat(n_vocab, n_embd))

    return finish(w, path)
