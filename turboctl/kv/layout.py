"""Which layers of a model own a KV cache, from its GGUF metadata alone (nothing is loaded).

As llama.cpp b11312 decides it (``src/llama-model.cpp`` create_memory, ``src/models/*.cpp``):

* model layers are ``0..n_layer-1`` with ``n_layer = block_count - nextn_predict_layers``
  (MTP/nextn layers are left out of the main context's cache);
* plain architectures: every layer owns its cache;
* ``gemma4``: sliding-window (SWA) and global layers (``attention.sliding_window_pattern``,
  their head dims ``key_length_swa`` / ``key_length``); the last
  ``attention.shared_kv_layers`` layers own no cache: layer ``il`` from
  ``n_kv = block_count - shared_kv_layers`` on reuses layer ``n_kv - 2`` when it is an SWA
  layer, else ``n_kv - 1``;
* ``qwen35``, ``qwen35moe``, ``qwen3next`` (hybrid): only the full-attention layers own a
  cache; the recurrent ones come from ``attention.recurrent_layers`` (per layer) or else
  ``full_attention_interval`` (default 4: layer ``il`` is recurrent unless ``(il + 1) % 4 == 0``);
* purely recurrent architectures (mamba, rwkv) have no KV cache at all;
* other hybrid architectures, gemma3n, MLA models and names b11312 does not know: not
  modelled here; every layer is assumed to own a cache, and :attr:`KVLayout.note` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ModelError
from ..models.gguf import ModelInfo, metadata_int, model_info_from_metadata, read_metadata
from .rules import layer_ranges

REUSE_ARCHITECTURES = ("gemma4",)
HYBRID_ATTENTION_ARCHITECTURES = ("qwen35", "qwen35moe", "qwen3next")
RECURRENT_ARCHITECTURES = ("mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7")
# hybrid in b11312 (llm_arch_is_hybrid), with layer filters turboctl does not model
OTHER_HYBRID_ARCHITECTURES = ("jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
                              "nemotron_h_moe", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen4exp",
                              "deepseek4", "minimax-01")
UNMODELLED_REUSE = ("gemma3n", "gemma4-assistant")
DEFAULT_FULL_ATTENTION_INTERVAL = 4
# the architecture names of b11312 (src/llama-arch.cpp): the ones above are handled apart, the
# others give every layer its own cache; a name not in this list is not known to b11312
B11312_ARCHITECTURES = frozenset("""
    clip llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert modern-bert nomic-bert
    nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom stablelm qwen qwen2 qwen2moe qwen2vl qwen3
    qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35 qwen35moe qwen4exp phi2 phi3 phimoe plamo plamo2 plamo3 codeshell
    orion internlm2 minicpm minicpm3 gemma gemma2 gemma3 gemma3n gemma4 gemma4-assistant gemma-embedding
    starcoder2 mamba mamba2 maple jamba falcon-h1 xverse command-r cohere2 cohere2moe dbrx olmo olmo2 olmoe
    muse-glimmer openelm arctic deepseek deepseek2 deepseek2-ocr deepseek32 deepseek4 chatglm glm4 glm4moe glm-dsa
    bitnet t5 t5encoder jais jais2 nemotron nemotron_h nemotron_h_moe exaone exaone4 exaone-moe rwkv6 rwkv6qwen2
    rwkv7 arwkv7 granite granitemoe granitehybrid graniteswitch granite_swa chameleon wavtokenizer-dec plm
    bailingmoe bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe laguna ernie4_5 ernie4_5-moe hunyuan-moe
    hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2 lfm2moe dream smallthinker llada llada-moe seed_oss
    grovemoe apertus minimax-01 hrm_text minimax-m2 minimax-m3 cogvlm rnd1 pangu-embedded mistral3 eagle3 dflash
    mistral4 paddleocr mimo2 step35 spark2_5 llama-embed maincoder kimi-linear kimi-k3 glm5-next talkie mellum
    nanbeige qwen3tts pockettts
""".split())  # noqa: SIM905 (a list of names, easier to read as words)

Kind = Literal["own", "reuse", "recurrent"]


@dataclass(frozen=True)
class LayerCache:
    index: int
    kind: Kind
    reuses: int | None  # kind "reuse": the layer whose cache it reads
    swa: bool | None
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int

    @property
    def n_embd_k(self) -> int:
        """Values per K cache row (n_embd_k_gqa = head dim x KV heads)."""
        return self.head_dim_k * self.n_head_kv

    @property
    def n_embd_v(self) -> int:
        return self.head_dim_v * self.n_head_kv

    @property
    def owns(self) -> bool:
        return self.kind == "own"


@dataclass(frozen=True)
class KVLayout:
    architecture: str
    n_layer: int
    layers: tuple[LayerCache, ...]
    modelled: bool  # False: the architecture's layout is not known to turboctl (every layer assumed)
    note: str | None = None

    def owned(self) -> list[LayerCache]:
        return [la for la in self.layers if la.owns]

    def without_cache(self, indices: Sequence[int]) -> str:
        """"" when one of these layers owns a KV cache, else a short account of why none does
        (for the rule error "names only layers without a KV cache of their own (...)")."""
        picked = [self.layers[i] for i in sorted(set(indices))]
        if not picked or any(la.owns for la in picked):
            return ""
        parts = []
        recurrent = [la.index for la in picked if la.kind == "recurrent"]
        if recurrent:
            noun = "layer" if len(recurrent) == 1 else "layers"
            parts.append(f"{noun} {layer_ranges(recurrent)} recurrent")
        reuse = [la for la in picked if la.kind == "reuse"]
        if reuse:
            parts.append(", ".join(f"{la.index} reuses {la.reuses}" for la in reuse))
        return f"{self.architecture}: " + "; ".join(parts)


def _flags(value: Any, n: int, key: str, path: Path) -> list[bool] | None:
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) < n:
            raise ModelError(f"{path}: {key} has {len(value)} entries for {n} layers")
        return [bool(x) for x in value[:n]]
    return [bool(value)] * n


def layout_from_metadata(meta: dict[str, Any], info: ModelInfo) -> KVLayout:
    arch = info.architecture
    path = info.path
    nextn = metadata_int(meta.get(f"{arch}.nextn_predict_layers", 0) or 0, f"{arch}.nextn_predict_layers", path)
    n_layer = info.n_layer - nextn
    if n_layer <= 0:
        raise ModelError(f"{path}: {arch}.nextn_predict_layers is {nextn} of {info.n_layer} layers: no model layers")
    kinds: list[Kind] = ["own"] * n_layer
    reuses: list[int | None] = [None] * n_layer
    modelled = True
    note: str | None = None
    if arch in REUSE_ARCHITECTURES:
        if not isinstance(meta.get(f"{arch}.attention.sliding_window_pattern"), list):
            raise ModelError(f"{path}: {arch} needs {arch}.attention.sliding_window_pattern")
        shared = metadata_int(meta.get(f"{arch}.attention.shared_kv_layers", 0) or 0,
                              f"{arch}.attention.shared_kv_layers", path)
        n_kv = info.n_layer - shared
        if shared and n_kv < 2:
            raise ModelError(f"{path}: {arch}.attention.shared_kv_layers is {shared} of {info.n_layer} layers: "
                             "llama.cpp needs at least 2 layers with a cache of their own")
        for il in range(n_kv, n_layer):
            kinds[il] = "reuse"
            reuses[il] = n_kv - (2 if info.layers[il].swa else 1)
    elif arch in HYBRID_ATTENTION_ARCHITECTURES:
        key = f"{arch}.attention.recurrent_layers"
        recurrent = _flags(meta.get(key), info.n_layer, key, path)
        if recurrent is None:
            interval = metadata_int(meta.get(f"{arch}.full_attention_interval", DEFAULT_FULL_ATTENTION_INTERVAL),
                                    f"{arch}.full_attention_interval", path)
            if interval <= 0:
                raise ModelError(f"{path}: {arch}.full_attention_interval is {interval}")
            recurrent = [(il + 1) % interval != 0 for il in range(n_layer)]
        for il in range(n_layer):
            if recurrent[il]:
                kinds[il] = "recurrent"
    elif arch in RECURRENT_ARCHITECTURES:
        kinds = ["recurrent"] * n_layer
        note = f"{arch} is a recurrent architecture: it has no KV cache"
    elif arch in OTHER_HYBRID_ARCHITECTURES or arch in UNMODELLED_REUSE or info.mla:
        modelled = False
        what = "an MLA model" if info.mla else "a hybrid model" if arch in OTHER_HYBRID_ARCHITECTURES else \
            "a model with shared KV layers"
        note = (f"turboctl does not know which layers of {arch} ({what}) own a KV cache: "
                "every layer is assumed to own one")
    elif arch not in B11312_ARCHITECTURES:
        modelled = False
        note = (f"unknown architecture {arch!r} (not one llama.cpp b11312 names): every layer is assumed to own "
                "a KV cache")
    layers = tuple(
        LayerCache(index=il, kind=kinds[il], reuses=reuses[il], swa=info.layers[il].swa,
                   n_head_kv=info.layers[il].n_head_kv, head_dim_k=info.layers[il].head_dim_k,
                   head_dim_v=info.layers[il].head_dim_v)
        for il in range(n_layer))
    return KVLayout(architecture=arch, n_layer=n_layer, layers=layers, modelled=modelled, note=note)


def read_layout(path: Path) -> tuple[ModelInfo, KVLayout]:
    """The attention layout (:func:`turboctl.models.gguf.inspect_model`) and the KV cache layout of
    a GGUF model, from one read of its metadata."""
    meta = read_metadata(path)
    info = model_info_from_metadata(meta, path)
    return info, layout_from_metadata(meta, info)
