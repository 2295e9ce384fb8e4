"""turboctl: build a pinned llama.cpp with the TurboQuant KV-cache patch series."""

__version__ = "0.1.0"
