"""Benchmarks of KV cache configurations: quality (``kld``) and speed (``speed``)."""
