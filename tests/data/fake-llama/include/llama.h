#pragma once
/* The KV cache types the fake server advertises. */
#define FAKE_CACHE_TYPES "f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"
