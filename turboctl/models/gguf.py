"""What a GGUF model file says about its attention: read with ``gguf`` (llama.cpp's own reader).

The head dims are derived the way llama.cpp b11312 does it (``src/llama-model.cpp``
``load_hparams`` and ``src/llama-hparams.cpp``):

* ``{arch}.attention.head_count`` and ``head_count_kv`` are a number or one per layer;
  ``head_count_kv`` defaults to ``head_count``;
* the K/V head dims of full-attention layers are ``{arch}.attention.key_length`` /
  ``value_length``, defaulting to ``embedding_length / head_count`` (of layer 0);
* sliding-window (SWA) layers use ``key_length_swa`` / ``value_length_swa`` when present
  (defaulting to the full-attention dims); which layers are SWA comes from the
  ``{arch}.attention.sliding_window_pattern`` array. Some architectures hard-code their
  pattern in llama.cpp instead: then, when the SWA dims differ, both dims are treated as in
  use (the check stays on the safe side);
* MLA attention (``kv_lora_rank`` or ``key_length_mla`` present, or DeepSeek-V4) stores a
  compressed latent, not per-head K/V: the turbo types do not support it.

:func:`check_model_kv` refuses a turbo configuration the model cannot use before anything
starts; the patched llama.cpp refuses the same, but only after loading the model.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import KVConfigError, ModelError
from ..kv.config import KVConfig, is_turbo

TURBO_HEAD_DIMS = (64, 128, 256, 512)
MLA_ARCHITECTURES = ("deepseek4",)


@dataclass(frozen=True)
class LayerAttention:
    index: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    swa: bool | None  # None: SWA layout not recorded in the file


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    architecture: str
    name: str | None
    n_layer: int
    n_embd: int
    n_head: int
    head_dim_k: int
    head_dim_v: int
    head_dim_k_swa: int
    head_dim_v_swa: int
    has_swa_dims: bool
    layers: tuple[LayerAttention, ...]
    kv_lora_rank: int | None
    mla: bool

    def head_dims(self, which: str) -> dict[int, list[LayerAttention]]:
        """Head dim → the layers that use it, for ``which`` = "k" or "v" (every layer, as the
        patched llama.cpp checks them, whatever its KV head count)."""
        out: dict[int, list[LayerAttention]] = {}
        for layer in self.layers:
            dim = layer.head_dim_k if which == "k" else layer.head_dim_v
            out.setdefault(dim, []).append(layer)
        # SWA dims recorded but no per-layer pattern in the file: count them as used
        swa_dim = self.head_dim_k_swa if which == "k" else self.head_dim_v_swa
        if self.has_swa_dims and any(layer.swa is None for layer in self.layers) and swa_dim not in out:
            out[swa_dim] = []
        return out

    def summary(self) -> str:
        dims_k = sorted(self.head_dims("k"))
        dims_v = sorted(self.head_dims("v"))
        kv = "MLA" if self.mla else f"head dims K {'/'.join(map(str, dims_k))}, V {'/'.join(map(str, dims_v))}"
        return f"{self.architecture}, {self.n_layer} layers, {kv}"


def _value(field: Any) -> Any:
    """The value of a ``gguf.ReaderField`` (scalar, string, or list for arrays)."""
    import gguf

    types = list(field.types)
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return [v for i in field.data for v in field.parts[i].tolist()]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8", "replace")
    return field.parts[-1].tolist()[0]


# GGUF value types (gguf.GGUFValueType): fixed sizes; 8 = string, 9 = array
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20
MAX_ARRAY = 1 << 22


def check_header(path: Path) -> None:
    """Walk the GGUF header and key/value section with every count and length checked against the
    file's size (ModelError, one line). The gguf reader trusts them: a garbled count there made it
    loop for minutes on a 400-byte file."""
    size = path.stat().st_size

    def bad(what: str) -> ModelError:
        return ModelError(f"{path}: not a readable GGUF model ({what})",
                          hint="pass a .gguf model file as llama.cpp uses it")

    with path.open("rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            raise bad(f"truncated header: {len(head)} bytes")
        if head[:4] != b"GGUF":
            raise bad("no GGUF magic at the start")
        order = "<" if struct.unpack("<I", head[4:8])[0] & 0xFFFF else ">"
        n_tensors, n_kv = struct.unpack(order + "QQ", head[8:24])
        if n_kv > MAX_KV or n_tensors > MAX_TENSORS:
            raise bad(f"header counts {n_tensors} tensors and {n_kv} key/value pairs")
        pos = 24

        def take(n: int) -> bytes:
            nonlocal pos
            if n > size - pos:
                raise bad(f"a length of {n} bytes at offset {pos} runs past the end of the file ({size} bytes)")
            data = fh.read(n)
            pos += n
            return data

        def u32() -> int:
            return int(struct.unpack(order + "I", take(4))[0])

        def u64() -> int:
            return int(struct.unpack(order + "Q", take(8))[0])

        def value(kind: int, depth: int) -> None:
            if kind in _FIXED_SIZES:
                take(_FIXED_SIZES[kind])
            elif kind == _STRING:
                take(u64())
            elif kind == _ARRAY and depth == 0:
                item, count = u32(), u64()
                if count > MAX_ARRAY:
                    raise bad(f"an array of {count} entries at offset {pos - 12}")
                if item in _FIXED_SIZES:
                    take(count * _FIXED_SIZES[item])
                else:
                    for _ in range(count):
                        value(item, depth + 1)
            else:
                raise bad(f"unknown value type {kind} at offset {pos - 4}")

        for _ in range(n_kv):
            take(u64())  # the key
            value(u32(), 0)
        if n_tensors * 24 > size - pos:
            raise bad(f"{n_tensors} tensors cannot fit in the {size - pos} bytes after the metadata")


def read_metadata(path: Path, *, skip_prefixes: Sequence[str] = ("tokenizer.",)) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (the large tokenizer arrays left out)."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    check_header(path)
    try:
        import gguf

        reader = gguf.GGUFReader(str(path), "r")
        return {name: _value(f) for name, f in reader.fields.items()
                if not name.startswith(tuple(skip_prefixes))}
    except Exception as exc:  # gguf raises ValueError, struct errors, OSError, IndexError, ...
        detail = " ".join(str(exc).split())[:200]
        raise ModelError(f"{path}: not a readable GGUF model ({type(exc).__name__}: {detail})",
                         hint="pass a .gguf model file as llama.cpp uses it") from exc


MAX_LAYERS = 4096
MAX_DIM = 1 << 20


def metadata_int(value: Any, key: str, path: Path, *, lo: int = 0, hi: int = MAX_DIM) -> int:
    """A metadata integer, or ModelError (a garbled file can hold any type and any size here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{path}: {key} is not an integer ({type(value).__name__}): not a usable GGUF model")
    if not lo <= value <= hi:
        raise ModelError(f"{path}: {key} = {value} is out of range ({lo}..{hi}): not a usable GGUF model")
    return value


def _per_layer(value: Any, n_layer: int, key: str, path: Path) -> list[int]:
    if isinstance(value, list):
        if len(value) != n_layer:
            raise ModelError(f"{path}: {key} has {len(value)} entries for {n_layer} layers")
        return [metadata_int(v, key, path) for v in value]
    return [metadata_int(value, key, path)] * n_layer


def model_info_from_metadata(meta: dict[str, Any], path: Path) -> ModelInfo:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{path}: no general.architecture in the GGUF metadata")
    if not arch.isprintable() or len(arch) > 64:
        raise ModelError(f"{path}: general.architecture {arch[:64]!r} is not an architecture name")

    def key(name: str) -> str:
        return f"{arch}.{name}"

    def get(name: str, default: Any = None) -> Any:
        return meta.get(key(name), default)

    if get("block_count") is None:
        raise ModelError(f"{path}: {key('block_count')} is missing")
    n_layer = metadata_int(get("block_count"), key("block_count"), path, lo=1, hi=MAX_LAYERS)
    n_embd = metadata_int(get("embedding_length", 0), key("embedding_length"), path)
    n_head_arr = _per_layer(get("attention.head_count", 0), n_layer, key("attention.head_count"), path)
    kv_raw = get("attention.head_count_kv")
    n_head_kv_arr = (n_head_arr if kv_raw is None
                     else _per_layer(kv_raw, n_layer, key("attention.head_count_kv"), path))
    n_head = n_head_arr[0]
    if n_head > 0:
        k_full = metadata_int(get("attention.key_length", n_embd // n_head), key("attention.key_length"), path)
        v_full = metadata_int(get("attention.value_length", n_embd // n_head), key("attention.value_length"), path)
    else:
        k_full = v_full = 0
    k_swa_raw = get("attention.key_length_swa")
    v_swa_raw = get("attention.value_length_swa")
    k_swa = metadata_int(k_swa_raw, key("attention.key_length_swa"), path) if k_swa_raw is not None else k_full
    v_swa = metadata_int(v_swa_raw, key("attention.value_length_swa"), path) if v_swa_raw is not None else v_full
    has_swa_dims = (k_swa, v_swa) != (k_full, v_full)
    pattern = get("attention.sliding_window_pattern")
    swa_flags: list[bool | None]
    if isinstance(pattern, list):
        if len(pattern) < n_layer:
            raise ModelError(f"{path}: {key('attention.sliding_window_pattern')} has {len(pattern)} "
                             f"entries for {n_layer} layers")
        swa_flags = [bool(v) for v in pattern[:n_layer]]
    elif has_swa_dims:
        swa_flags = [None] * n_layer  # the pattern is hard-coded per architecture in llama.cpp
    else:
        swa_flags = [False] * n_layer  # SWA or not, the head dims are the same
    layers = []
    for il in range(n_layer):
        swa = swa_flags[il]
        layers.append(LayerAttention(
            index=il, n_head_kv=n_head_kv_arr[il],
            head_dim_k=k_swa if swa else k_full, head_dim_v=v_swa if swa else v_full, swa=swa))
    lora = get("attention.kv_lora_rank")
    if lora is not None:
        lora = metadata_int(lora, key("attention.kv_lora_rank"), path)
    mla = lora is not None or get("attention.key_length_mla") is not None or arch in MLA_ARCHITECTURES
    name = meta.get("general.name")
    return ModelInfo(
        path=path, architecture=arch, name=name if isinstance(name, str) else None,
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, head_dim_k=k_full, head_dim_v=v_full,
        head_dim_k_swa=k_swa, head_dim_v_swa=v_swa, has_swa_dims=has_swa_dims,
        layers=tuple(layers), kv_lora_rank=int(lora) if lora is not None else None, mla=mla)


def inspect_model(path: Path) -> ModelInfo:
    """Read the attention layout of a GGUF model (ModelError when it cannot)."""
    return model_info_from_metadata(read_metadata(path), path)


def _layer_ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → "0-2, 5, 7-8"."""
    parts: list[str] = []
    start = prev = None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif prev is not None and i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def _where(layers: Sequence[LayerAttention]) -> str:
    if not layers:
        return "SWA layers"
    return ("layer " if len(layers) == 1 else "layers ") + _layer_ranges([la.index for la in layers])


def check_model_kv(info: ModelInfo, cfg: KVConfig) -> None:
    """Refuse a turbo K or V type the model cannot use (KVConfigError); others pass."""
    if not cfg.uses_turbo:
        return
    turbo = cfg.type_k if is_turbo(cfg.type_k) else cfg.type_v
    suggest = "use q8_0 or q4_0 for this model (e.g. --kv q8_0 or --kv q4_0)"
    if info.mla:
        detail = f"kv_lora_rank {info.kv_lora_rank}" if info.kv_lora_rank is not None else info.architecture
        raise KVConfigError(
            f"{info.path}: the TurboQuant cache type {turbo} does not support MLA attention "
            f"({info.architecture}, {detail})", hint=suggest)
    problems: list[str] = []
    for which, cache_type in (("k", cfg.type_k), ("v", cfg.type_v)):
        if not is_turbo(cache_type):
            continue
        dims = info.head_dims(which)
        bad = {d: layers for d, layers in sorted(dims.items()) if d not in TURBO_HEAD_DIMS}
        if bad:
            noun = "head dim" if len(bad) == 1 else "head dims"
            listed = ", ".join(f"{d} ({_where(layers)})" for d, layers in bad.items())
            problems.append(f"{which.upper()} cache type {cache_type} does not support {noun} {listed}")
    if problems:
        raise KVConfigError(
            f"{info.path}: {'; '.join(problems)}: TurboQuant types support head dims "
            f"{', '.join(map(str, TURBO_HEAD_DIMS[:-1]))} and {TURBO_HEAD_DIMS[-1]}", hint=suggest)


def check_model_pairs(info: ModelInfo, pairs: dict[tuple[str, str], Sequence[int]]) -> None:
    """:func:`check_model_kv` for each (K, V) pair on the layers that use it (a per-layer recipe)."""
    for (type_k, type_v), layers in pairs.items():
        wanted = set(layers)
        sub = replace(info, layers=tuple(la for la in info.layers if la.index in wanted))
        check_model_kv(sub, KVConfig(type_k=type_k, type_v=type_v))
