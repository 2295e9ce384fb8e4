"""KV cache configurations: cache types, per-layer recipes and the model layers that own a cache."""
