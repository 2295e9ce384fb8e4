#!/usr/bin/env python3
"""Write a GGUF model of a real architecture's shape with random Q4_0 weights, for speed
measurements (the README's "CUDA" speed table): the time of a token depends on the shapes
and types of the tensors, not on their values.

  python scripts/shape_model.py --shape llama3-8b  --out llama3-8b-q4_0.gguf
  python scripts/shape_model.py --shape gemma4-31b --out gemma4-31b-q4_0.gguf

llama3-8b: Llama-3-8B's published shape (32 layers, 4096 wide, 32 heads / 8 KV heads of 128,
FFN 14336, vocabulary 128256). gemma4-31b: the layer layout of DESIGN's Gemma 4 31B facts (60
layers, every 6th full attention with head dim 512 and 4 KV heads, the others sliding-window
with head dim 256 and 16 KV heads, window 1024); its width (5376), heads (32), FFN (21504) and
vocabulary (262144) are ESTIMATES (Gemma-3-27B-like), not checked against a release.

Weights: Q4_0 blocks with random nibbles and one small scale; norms f32 ones. The tokenizer is
a byte-level SentencePiece vocabulary padded to the architecture's size. Needs numpy and the
gguf package (pip's gguf, or llama.cpp's gguf-py on PYTHONPATH).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

Q4_0_BLOCK = 32       # values per block
Q4_0_BYTES = 18       # f16 scale + 16 bytes of nibbles


@dataclass(frozen=True)
class Shape:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_ff: int
    n_vocab: int
    head_dim: int            # full-attention layers
    n_head_kv: int
    head_dim_swa: int = 0    # 0: no sliding-window layers
    n_head_kv_swa: int = 0
    swa_every: int = 0       # every swa_every-th layer (1-based) is full attention
    n_swa: int = 0
    rope_base: float = 500000.0

    def is_swa(self, i: int) -> bool:
        return self.swa_every > 0 and (i + 1) % self.swa_every != 0


SHAPES = {
    "llama3-8b": Shape("llama", 32, 4096, 32, 14336, 128256, 128, 8),
    "gemma4-31b": Shape("gemma4", 60, 5376, 32, 21504, 262144, 512, 4, head_dim_swa=256, n_head_kv_swa=16,
                        swa_every=6, n_swa=1024, rope_base=1000000.0),
}


class RandomQ4_0:
    """Slices of one random buffer of Q4_0 blocks (a fixed scale of about 1/sqrt(width))."""

    def __init__(self, seed: int, n_blocks: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        buf = np.frombuffer(rng.bytes(n_blocks * Q4_0_BYTES), dtype=np.uint8).reshape(n_blocks, Q4_0_BYTES).copy()
        buf[:, 0:2] = np.frombuffer(np.float16(scale).tobytes(), dtype=np.uint8)
        self.buf = buf.reshape(-1)
        self.offset = 0

    def matrix(self, rows: int, cols: int) -> np.ndarray:
        if cols % Q4_0_BLOCK:
            raise ValueError(f"{cols} columns are not whole Q4_0 blocks")
        n = rows * cols // Q4_0_BLOCK * Q4_0_BYTES
        if n > self.buf.size:
            raise ValueError(f"a {rows} x {cols} matrix is larger than the random buffer")
        start = (self.offset * 7919 * Q4_0_BYTES) % (self.buf.size - n + 1)
        start -= start % Q4_0_BYTES
        self.offset += 1
        return self.buf[start:start + n].reshape(rows, cols // Q4_0_BLOCK * Q4_0_BYTES)


def add_vocab(w: gguf.GGUFWriter, n_vocab: int) -> None:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    pad = n_vocab - len(tokens)
    tokens += [f"<unused{i}>" for i in range(pad)]
    types += [gguf.TokenType.UNUSED] * pad
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([int(t) for t in types])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)


def write(shape: Shape, path: Path, seed: int) -> None:
    s = shape
    rnd = RandomQ4_0(seed, (s.n_vocab * s.n_embd) // Q4_0_BLOCK + 1, 0.5 / np.sqrt(s.n_embd))
    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), s.arch)
    w.add_name(f"turboctl {s.arch} shape model (random Q4_0 weights)")
    w.add_context_length(262144)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv([s.n_head_kv_swa if s.is_swa(i) else s.n_head_kv for i in range(s.n_layer)]
                        if s.swa_every else s.n_head_kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    if s.swa_every:
        w.add_uint32(f"{s.arch}.attention.key_length_swa", s.head_dim_swa)
        w.add_uint32(f"{s.arch}.attention.value_length_swa", s.head_dim_swa)
        w.add_uint32(f"{s.arch}.attention.sliding_window", s.n_swa)
        w.add_array(f"{s.arch}.attention.sliding_window_pattern", [s.is_swa(i) for i in range(s.n_layer)])
        w.add_uint32(f"{s.arch}.embedding_length_per_layer_input", 0)
        w.add_uint32(f"{s.arch}.rope.dimension_count_swa", s.head_dim_swa)
        w.add_float32(f"{s.arch}.rope.freq_base_swa", 10000.0)
    add_vocab(w, s.n_vocab)

    q4 = gguf.GGMLQuantizationType.Q4_0
    w.add_tensor("token_embd.weight", rnd.matrix(s.n_vocab, s.n_embd), raw_dtype=q4)
    if s.arch == "gemma4":
        w.add_tensor("rope_freqs.weight", ones(s.head_dim // 2))
    for i in range(s.n_layer):
        hd, kv = (s.head_dim_swa, s.n_head_kv_swa) if s.is_swa(i) else (s.head_dim, s.n_head_kv)
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(s.n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", rnd.matrix(s.n_head * hd, s.n_embd), raw_dtype=q4)
        w.add_tensor(f"blk.{i}.attn_k.weight", rnd.matrix(kv * hd, s.n_embd), raw_dtype=q4)
        w.add_tensor(f"blk.{i}.attn_v.weight", rnd.matrix(kv * hd, s.n_embd), raw_dtype=q4)
        w.add_tensor(f"blk.{i}.attn_output.weight", rnd.matrix(s.n_embd, s.n_head * hd), raw_dtype=q4)
        if s.arch == "gemma4":
            w.add_tensor(f"blk.{i}.attn_q_norm.weight", ones(hd))
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", ones(hd))
            w.add_tensor(f"blk.{i}.post_attention_norm.weight", ones(s.n_embd))
            w.add_tensor(f"blk.{i}.post_ffw_norm.weight", ones(s.n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(s.n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rnd.matrix(s.n_ff, s.n_embd), raw_dtype=q4)
        w.add_tensor(f"blk.{i}.ffn_up.weight", rnd.matrix(s.n_ff, s.n_embd), raw_dtype=q4)
        w.add_tensor(f"blk.{i}.ffn_down.weight", rnd.matrix(s.n_embd, s.n_ff), raw_dtype=q4)
    w.add_tensor("output_norm.weight", ones(s.n_embd))
    if s.arch != "gemma4":  # gemma4 ties the output to the embeddings
        w.add_tensor("output.weight", rnd.matrix(s.n_vocab, s.n_embd), raw_dtype=q4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args(argv)
    write(SHAPES[args.shape], args.out, args.seed)
    print(f"{args.out}: {args.shape}, {args.out.stat().st_size / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
