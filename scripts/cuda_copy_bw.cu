// Device memory copy bandwidth: bytes read + bytes written per second of cudaMemcpy
// device-to-device over a 4 GiB buffer (best of 20), the "measured copy bandwidth" the speed
// table's bandwidth-bound ideal divides by (README, "CUDA").
//   nvcc -O2 -o cuda_copy_bw scripts/cuda_copy_bw.cu && ./cuda_copy_bw
#include <cuda_runtime.h>

#include <cstdio>

int main() {
    const size_t n = size_t(4) << 30;
    void * a = nullptr;
    void * b = nullptr;
    if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) {
        std::fprintf(stderr, "cuda_copy_bw: cannot allocate 2 x 4 GiB\n");
        return 1;
    }
    cudaMemset(a, 1, n);
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    float best = 1e30f;
    for (int r = 0; r < 20; ++r) {
        cudaEventRecord(t0);
        cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
        cudaEventRecord(t1);
        cudaEventSynchronize(t1);
        float ms = 0.0f;
        cudaEventElapsedTime(&ms, t0, t1);
        best = ms < best ? ms : best;
    }
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    std::printf("{\"device\": \"%s\", \"copy_bytes\": %zu, \"best_ms\": %.4f, \"bandwidth_gbs\": %.1f}\n",
                prop.name, n, best, 2.0 * n / (best * 1e-3) / 1e9);
    return 0;
}
