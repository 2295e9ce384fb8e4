/* Fake llama.cpp tool: answers --help and --version like llama-server does. */
#include <stdio.h>
#include <string.h>
#include "../include/llama.h"

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
    }
    return 0;
}
