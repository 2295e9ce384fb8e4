"""Tiny GGUF files with only metadata and one dummy tensor: enough for turboctl's layout reader
(llama, gemma4 with SWA/global and shared-KV layers, qwen35 with recurrent layers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

TOP_LEVEL = ("block_count", "embedding_length", "full_attention_interval", "nextn_predict_layers", "context_length")


def write_gguf(path: Path, arch: str, **kv: Any) -> Path:
    """``{arch}.<key>`` for the top-level keys, ``{arch}.attention.<key>`` for the others; ints as
    uint32, bools and lists of bools as bool arrays, lists of ints as int32 arrays."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        name = f"{arch}.{key}" if key in TOP_LEVEL else f"{arch}.attention.{key}"
        if isinstance(value, list):
            w.add_array(name, value)
        elif isinstance(value, bool):
            w.add_bool(name, value)
        else:
            w.add_uint32(name, int(value))
    w.add_tensor("dummy.weight", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama(path: Path, n_layer: int = 30, head_dim: int = 64, n_head: int = 9, n_head_kv: int = 3) -> Path:
    """SmolLM2-135M-like: 30 layers, head dim 64, 3 KV heads."""
    return write_gguf(path, "llama", block_count=n_layer, embedding_length=head_dim * n_head, head_count=n_head,
                      head_count_kv=n_head_kv, key_length=head_dim, value_length=head_dim)


def gemma4(path: Path, *, n_layer: int = 12, shared: int = 4) -> Path:
    """SWA layers (head dim 256, 4 KV heads) with a global layer every 4th (3, 7, 11: head dim
    512, 2 KV heads); the last ``shared`` layers reuse a cache (layer 6 or 7 for 12 layers, 4 shared)."""
    pattern = [(il % 4) != 3 for il in range(n_layer)]
    return write_gguf(path, "gemma4", block_count=n_layer, embedding_length=1024, head_count=8,
                      head_count_kv=[4 if p else 2 for p in pattern], key_length=512, value_length=512,
                      key_length_swa=256, value_length_swa=256, sliding_window_pattern=pattern,
                      shared_kv_layers=shared, sliding_window=512)


def qwen35(path: Path, *, n_layer: int = 8, interval: int | None = None, recurrent: list[bool] | None = None,
           nextn: int = 0) -> Path:
    extra: dict[str, Any] = {}
    if interval is not None:
        extra["full_attention_interval"] = interval
    if recurrent is not None:
        extra["recurrent_layers"] = recurrent
    if nextn:
        extra["nextn_predict_layers"] = nextn
    return write_gguf(path, "qwen35", block_count=n_layer, embedding_length=1024, head_count=8, head_count_kv=2,
                      key_length=256, value_length=256, **extra)
