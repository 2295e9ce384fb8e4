"""turboctl.llamalog on real llama-server logs of the patched tree (CUDA build, NVIDIA H200:
the series has no CUDA kernels for the turbo types, tests/data/selftest/README.md), and on
synthetic per-layer KV lines in the exact format the patch series logs."""

from __future__ import annotations

import pytest

from tests.conftest import DATA
from turboctl import llamalog
from turboctl.errors import VerificationError

CUDA = DATA / "cuda"


def test_flash_attention_fallback_is_read_back() -> None:
    log = (CUDA / "server-turbo4-turbo4-nkvo.log").read_text()
    (fb,) = llamalog.flash_attn_fallbacks(log)
    assert fb == llamalog.FlashAttnFallback(0, 3, "turbo4", "turbo4", 128, 128, "CPU", "CUDA0")
    assert fb.describe() == ("layers 0-3: flash attention with K=turbo4 V=turbo4 (head dims 128/128) runs on CPU, "
                             "not on CUDA0")
    assert llamalog.cache_not_writable(log) is None


def test_cache_a_device_cannot_write_is_read_back() -> None:
    log = (CUDA / "server-turbo4-turbo4.log").read_text()
    assert llamalog.cache_not_writable(log) == llamalog.CacheNotWritable(0, "CUDA0", "K", "turbo4")
    assert llamalog.flash_attn_fallbacks(log) == []


def test_logs_without_turbo_messages() -> None:
    assert llamalog.flash_attn_fallbacks("llama_context: flash_attn = enabled\n") == []
    assert llamalog.cache_not_writable("") is None


# --------------------------------------------------------------------------- per-layer KV lines
# synthetic, in the exact format of the contract (timestamps and levels as llama.cpp's logger writes them)
ONE_CACHE = """\
0.00.071.001 I llama_context: n_ctx = 4096
0.00.072.100 I llama_kv_cache: KV layers: 0-1 q8_0/q8_0 | 2-27 turbo4/turbo3 | 28-29 q8_0/q8_0
0.00.072.200 I llama_kv_cache: KV bytes: {total} (K {k}, V {v}) in 30 layers, 4096 cells
0.00.072.300 I llama_context: KV cache total: {total} bytes in 1 caches
"""
# SmolLM2-like rows: 192 values (head dim 64 x 3 KV heads); q8_0 6 x 34 bytes, turbo4 3 x 34, turbo3 3 x 26
K_BYTES = 4096 * (4 * 6 * 34 + 26 * 3 * 34)
V_BYTES = 4096 * (4 * 6 * 34 + 26 * 3 * 26)
SMOL_LOG = ONE_CACHE.format(total=K_BYTES + V_BYTES, k=K_BYTES, v=V_BYTES)
TWO_CACHES = """\
llama_kv_cache: KV layers: 3 q8_0/q8_0 | 7 turbo4/turbo3
llama_kv_cache: KV layers reusing another layer's cache: 11->7
llama_kv_cache: KV bytes: 1000 (K 600, V 400) in 2 layers, 4096 cells
llama_kv_cache: KV layers: 0-2 turbo4/turbo3 | 4-6 turbo4/turbo3
llama_kv_cache: KV layers reusing another layer's cache: 8->6 | 9->6 | 10->6
llama_kv_cache: KV bytes: 2000 (K 1100, V 900) in 6 layers, 1024 cells
llama_context: KV cache total: 3000 bytes in 2 caches
"""


def smol_expected() -> dict[int, tuple[str, str]]:
    return {il: ("q8_0", "q8_0") if il < 2 or il >= 28 else ("turbo4", "turbo3") for il in range(30)}


def test_kv_lines_are_read_back() -> None:
    (ctx,) = llamalog.kv_contexts(SMOL_LOG)
    assert ctx.table() == smol_expected() and ctx.reuse() == {}
    (cache,) = ctx.caches
    assert (cache.bytes_total, cache.bytes_k, cache.bytes_v, cache.n_layers, cache.cells) == (
        K_BYTES + V_BYTES, K_BYTES, V_BYTES, 30, 4096)
    assert (ctx.total_bytes, ctx.n_caches) == (K_BYTES + V_BYTES, 1)
    (two,) = llamalog.kv_contexts(TWO_CACHES)
    assert len(two.caches) == 2 and sorted(two.table()) == list(range(8))
    assert two.reuse() == {8: 6, 9: 6, 10: 6, 11: 7} and two.total_bytes == 3000
    # a K-only (MLA) cache
    (mla,) = llamalog.kv_contexts("llama_kv_cache: KV layers: 0-3 f16/-\n")
    assert mla.table() == {i: ("f16", None) for i in range(4)} and mla.total_bytes is None


def test_compare_matches_with_the_bytes() -> None:
    values = {il: (192, 192) for il in range(30)}
    llamalog.compare(smol_expected(), SMOL_LOG, layer_values=values)
    llamalog.compare(smol_expected(), SMOL_LOG)
    # the same check from a resolved recipe on a SmolLM2-like model file
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from tests.unit import kvmodels
    from turboctl.kv.layout import read_layout
    from turboctl.kv.recipe import parse_recipe

    with TemporaryDirectory() as tmp:
        _, layout = read_layout(kvmodels.llama(Path(tmp) / "m.gguf"))
    plan = parse_recipe("turbo4/turbo3;0..1+-2..-1=q8_0").resolve(layout)
    llamalog.compare_plan(plan, SMOL_LOG)
    with pytest.raises(VerificationError, match=r"layer 0: asked turbo4/turbo3, llama\.cpp has q8_0/q8_0"):
        llamalog.compare_plan(parse_recipe("turbo4/turbo3").resolve(layout), SMOL_LOG)


def test_compare_mismatches() -> None:
    want = smol_expected()
    want[5] = ("q8_0", "turbo3")
    want[30] = ("f16", "f16")
    del want[29]
    with pytest.raises(VerificationError) as err:
        llamalog.compare(want, SMOL_LOG)
    assert err.value.message == (
        "the KV cache llama.cpp made differs from what was asked: layer 5: asked q8_0/turbo3, llama.cpp has "
        "turbo4/turbo3; layer 29: asked no cache of its own, llama.cpp made one with q8_0/q8_0; layer 30: asked "
        "f16/f16, llama.cpp made no cache for it")
    assert err.value.exit_code == 6 and len(err.value.details) == 3
    # reuse and bytes
    expected = {il: ("q8_0", "q8_0") if il in (3,) else ("turbo4", "turbo3") for il in range(8)}
    llamalog.compare(expected, TWO_CACHES, expected_reuse={8: 6, 9: 6, 10: 6, 11: 7})
    with pytest.raises(VerificationError) as err:
        llamalog.compare(expected, TWO_CACHES, expected_reuse={8: 6, 9: 6, 10: 7, 11: 7})
    assert "layer 10: asked it to reuse layer 7's cache, llama.cpp reuses layer 6" in err.value.message
    with pytest.raises(VerificationError) as err:
        llamalog.compare(smol_expected(), SMOL_LOG, layer_values={il: (192, 128) for il in range(30)})
    v_small = 4096 * (4 * 4 * 34 + 26 * 2 * 26)
    assert err.value.message.endswith(
        f"cache 1 (layers 0-29): 4096 cells of these types hold K {K_BYTES} and V {v_small} bytes, llama.cpp logs "
        f"K {K_BYTES} and V {V_BYTES}")


def test_compare_inconsistent_and_missing_lines() -> None:
    with pytest.raises(VerificationError) as err:
        llamalog.compare(smol_expected(), "llama_context: n_ctx = 4096\n")
    assert err.value.message.startswith("the llama.cpp log has no 'llama_kv_cache: KV layers:' line")
    assert err.value.hint and "rebuild with turboctl build" in err.value.hint
    no_total = "\n".join(SMOL_LOG.splitlines()[:3])
    with pytest.raises(VerificationError, match="no 'llama_context: KV cache total:' line after the KV cache lines"):
        llamalog.compare(smol_expected(), no_total)
    no_bytes = "\n".join(ln for ln in SMOL_LOG.splitlines() if "KV bytes" not in ln)
    with pytest.raises(VerificationError, match=r"cache 1 \(layers 0-29\): no 'KV bytes:' line"):
        llamalog.compare(smol_expected(), no_bytes)
    bad_sum = SMOL_LOG.replace(f"(K {K_BYTES}", f"(K {K_BYTES + 1}")
    with pytest.raises(VerificationError, match=rf"K {K_BYTES + 1} \+ V {V_BYTES} bytes is not the"):
        llamalog.compare(smol_expected(), bad_sum)
    bad_total = SMOL_LOG.replace(f"total: {K_BYTES + V_BYTES} bytes in 1", "total: 5 bytes in 2")
    with pytest.raises(VerificationError) as err:
        llamalog.compare(smol_expected(), bad_total)
    assert "the total counts 2 cache(s), the log has 'KV layers:' lines for 1" in err.value.details
    assert f"the caches' bytes add up to {K_BYTES + V_BYTES}, the total line says 5" in err.value.details
    bad_layers = SMOL_LOG.replace("in 30 layers", "in 29 layers")
    with pytest.raises(VerificationError, match="the bytes line counts 29 layers, the layers line 30"):
        llamalog.compare(smol_expected(), bad_layers)
    with pytest.raises(VerificationError, match="has 1 context"):
        llamalog.compare(smol_expected(), SMOL_LOG, context=1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("llama_kv_cache: KV layers: 0-1 q8_0", "expected runs like '0-1 q8_0/q8_0', got '0-1 q8_0'"),
        ("llama_kv_cache: KV layers: 3-1 q8_0/q8_0", "empty run '3-1 q8_0/q8_0'"),
        ("llama_kv_cache: KV layers reusing another layer's cache: 24->22", "a reuse line before any"),
        ("llama_kv_cache: KV layers: 0 f16/f16\nllama_kv_cache: KV layers reusing another layer's cache: 24-22",
         "expected pairs like '24->22', got '24-22'"),
        ("llama_kv_cache: KV bytes: 1 (K 1, V 0) in 1 layers, 1 cells", "a 'KV bytes:' line before any"),
    ],
)
def test_unreadable_kv_lines(line: str, message: str) -> None:
    with pytest.raises(VerificationError) as err:
        llamalog.kv_contexts(line)
    assert err.value.message.startswith("cannot read the llama.cpp log line") and message in err.value.message
