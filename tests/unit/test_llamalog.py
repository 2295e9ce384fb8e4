"""turboctl.llamalog on real llama-server logs of the patched tree (CUDA build, NVIDIA H200:
the series has no CUDA kernels for the turbo types, tests/data/selftest/README.md)."""

from __future__ import annotations

from tests.conftest import DATA
from turboctl import llamalog

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
