"""Models: what a GGUF file says (gguf) and where a model file comes from (fetch)."""
