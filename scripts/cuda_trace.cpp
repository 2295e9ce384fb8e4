// cuda_trace: a GPU timeline of any CUDA program, for machines without Nsight Systems.
//
// Build (a shared library to preload; CUPTI ships with the CUDA toolkit):
//   g++ -O2 -shared -fPIC -o cuda_trace.so scripts/cuda_trace.cpp -I$CUDA/include -L$CUDA/lib64 -lcupti
// Run:
//   CUDA_TRACE_OUT=trace.csv LD_PRELOAD=./cuda_trace.so llama-bench ...
// Report:
//   python scripts/cuda_trace_report.py trace.csv
//
// Every kernel, memcpy and memset the GPU ran, and every CUDA runtime call the host made, is
// written as one CSV line: kind,start_ns,end_ns,stream,name,grid,block,bytes (times are CUPTI's
// GPU/host timestamps, one clock). Records are written as CUPTI hands buffers back (every
// 100 ms and at exit), so a program that is killed keeps what was written before.
#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace {

FILE *     g_out = nullptr;
std::mutex g_mutex;

constexpr size_t k_buffer_bytes = 8u << 20;

void check(CUptiResult r, const char * what) {
    if (r != CUPTI_SUCCESS) {
        const char * msg = nullptr;
        cuptiGetResultString(r, &msg);
        std::fprintf(stderr, "cuda_trace: %s failed: %s\n", what, msg ? msg : "unknown error");
    }
}

void CUPTIAPI buffer_requested(uint8_t ** buffer, size_t * size, size_t * max_records) {
    *buffer      = static_cast<uint8_t *>(std::aligned_alloc(8, k_buffer_bytes));
    *size        = *buffer ? k_buffer_bytes : 0;
    *max_records = 0;
}

// names are written without commas or quotes, so that the CSV needs no quoting
void put_name(const char * name) {
    for (const char * p = name ? name : "?"; *p; ++p) {
        std::fputc(*p == ',' || *p == '"' || *p == '\n' ? ';' : *p, g_out);
    }
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t * buffer, size_t, size_t valid) {
    std::lock_guard<std::mutex> lock(g_mutex);
    CUpti_Activity * rec = nullptr;
    while (g_out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        switch (rec->kind) {
            case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
            case CUPTI_ACTIVITY_KIND_KERNEL: {
                const auto * k = reinterpret_cast<const CUpti_ActivityKernel10 *>(rec);
                std::fprintf(g_out, "kernel,%llu,%llu,%u,", (unsigned long long) k->start, (unsigned long long) k->end,
                             k->streamId);
                put_name(k->name);
                std::fprintf(g_out, ",%dx%dx%d,%dx%dx%d,0\n", k->gridX, k->gridY, k->gridZ, k->blockX, k->blockY,
                             k->blockZ);
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMCPY: {
                const auto * m = reinterpret_cast<const CUpti_ActivityMemcpy6 *>(rec);
                // copyKind: CUpti_ActivityMemcpyKind (1 host to device, 2 device to host, 8 device to device)
                std::fprintf(g_out, "memcpy,%llu,%llu,%u,copy-kind-%u,,,%llu\n", (unsigned long long) m->start,
                             (unsigned long long) m->end, m->streamId, (unsigned) m->copyKind,
                             (unsigned long long) m->bytes);
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMSET: {
                const auto * m = reinterpret_cast<const CUpti_ActivityMemset4 *>(rec);
                std::fprintf(g_out, "memset,%llu,%llu,%u,set,,,%llu\n", (unsigned long long) m->start,
                             (unsigned long long) m->end, m->streamId, (unsigned long long) m->bytes);
                break;
            }
            case CUPTI_ACTIVITY_KIND_RUNTIME: {
                const auto * a    = reinterpret_cast<const CUpti_ActivityAPI *>(rec);
                const char * name = nullptr;
                cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
                std::fprintf(g_out, "runtime,%llu,%llu,%u,", (unsigned long long) a->start, (unsigned long long) a->end,
                             a->threadId);
                put_name(name);
                std::fputs(",,,0\n", g_out);
                break;
            }
            default:
                break;
        }
    }
    if (g_out) {
        std::fflush(g_out);
    }
    std::free(buffer);
}

void finish() {
    cuptiActivityFlushAll(1);
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_out) {
        std::fclose(g_out);
        g_out = nullptr;
    }
}

__attribute__((constructor)) void start() {
    const char * path = std::getenv("CUDA_TRACE_OUT");
    g_out             = std::fopen(path && *path ? path : "cuda-trace.csv", "w");
    if (!g_out) {
        std::fprintf(stderr, "cuda_trace: cannot write %s\n", path && *path ? path : "cuda-trace.csv");
        return;
    }
    std::fputs("kind,start_ns,end_ns,stream,name,grid,block,bytes\n", g_out);
    check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels");
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable memcpy");
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memset");
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "enable runtime API");
    check(cuptiActivityFlushPeriod(100), "cuptiActivityFlushPeriod");
    std::atexit(finish);
}

}  // namespace
