/* Fake llama.cpp tool: answers --help and --version like llama-server does, and
 * `test-backend-ops ... --output sql` like the patched test-backend-ops (a few turbo cases).
 * FAKE_SELFTEST=fail|unsupported|empty|crash makes the self-test misbehave. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../include/llama.h"

static void sql_row(const char * op, const char * params, int supported, int passed, const char * err) {
    printf("INSERT INTO test_backend_ops (test_time, build_commit, backend_name, op_name, op_params, "
           "test_mode, supported, passed, error_message) VALUES ('2026-11-29T18:00:00Z', 'fake000', "
           "'CPU', '%s', '%s', 'test', '%d', '%d', '%s');\n", op, params, supported, passed, err);
}

static int selftest(void) {
    const char * mode = getenv("FAKE_SELFTEST");
    mode = mode ? mode : "pass";
    fprintf(stderr, "Testing 1 devices\n");
    printf("CREATE TABLE IF NOT EXISTS test_backend_ops (\n  test_time TEXT,\n  build_commit TEXT,\n"
           "  backend_name TEXT,\n  op_name TEXT,\n  op_params TEXT,\n  test_mode TEXT,\n"
           "  supported INTEGER,\n  passed INTEGER,\n  error_message TEXT\n);\n\n");
    if (strcmp(mode, "empty") == 0) {
        return 0;
    }
    sql_row("SET_ROWS", "type_src=f32,type_dst=turbo4,type_idx=i64,ne=[256,16,1,1],nr23=[1,1],r=5,v=0", 1, 1, "");
    sql_row("GET_ROWS", "type=turbo3,n=256,m=16,r=5,be1=1,be2=1,v=0,vs0=0,offset_cols=0", 1, 1, "");
    if (strcmp(mode, "crash") == 0) {
        printf("INSERT INTO test_backend_ops (test_time) VALUES ('2026");
        fflush(stdout);
        abort();
    }
    sql_row("FLASH_ATTN_EXT", "hsk=128,hsv=128,nh=2,type_K=turbo4,type_V=turbo4", 1,
            strcmp(mode, "fail") != 0, strcmp(mode, "fail") == 0 ? "compare failed" : "");
    sql_row("FLASH_ATTN_EXT", "hsk=128,hsv=128,nh=2,type_K=q8_0,type_V=turbo3",
            strcmp(mode, "unsupported") != 0, 1, strcmp(mode, "unsupported") == 0 ? "not supported" : "");
    fprintf(stderr, "4/4 tests passed\n");
    return strcmp(mode, "fail") == 0 ? 1 : 0;
}

int main(int argc, char ** argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            printf("----- common params -----\n\n");
            printf("-ctk,  --cache-type-k TYPE              KV cache data type for K\n");
            printf("                                        allowed values: %s\n", FAKE_CACHE_TYPES);
            printf("                                        (default: f16)\n");
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            fprintf(stderr, "version: 1 (fake000)\nbuilt with a C compiler for tests\n");
            return 0;
        }
        if (strcmp(argv[i], "--output") == 0 && i + 1 < argc && strcmp(argv[i + 1], "sql") == 0) {
            return selftest();
        }
    }
    return 0;
}
