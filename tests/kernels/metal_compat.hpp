// metal_compat.hpp: just enough of the Metal Shading Language for the host C++ compiler to
// compile kernels/turbo-metal.h (the Metal-side TurboQuant helpers), so the tests can check
// them bit for bit against the CPU reference. Address spaces vanish; the vector types are
// plain float arrays with the same element order.
#pragma once

#include <cmath>
#include <cstdint>

#define device
#define thread

struct float4 {
    float v[4];
    float & operator[](int i) { return v[i]; }
    const float & operator[](int i) const { return v[i]; }
};

struct float4x4 {
    float4 c[4];
    float4 & operator[](int i) { return c[i]; }
    const float4 & operator[](int i) const { return c[i]; }
};

