// fake KV cache
int kv_cache_size(int n_ctx, int n_embd) {
    int size = n_ctx * n_embd;
    return size;
}

int kv_cache_type_bits(int type) {
    switch (type) {
        case 0: return 32;
        case 1: return 16;
        default: return 8;
    }
}
