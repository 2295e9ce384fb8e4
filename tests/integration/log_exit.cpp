// How llama.cpp's asynchronous logger (common/log.h) behaves when a program ends: the slow
// test test_log_flush.py compiles this against the build's libllama-common and checks that
// every line logged before the end is printed, however the program ends.
//
//   log_exit return N    log N numbered lines, return from main (exit code 0)
//   log_exit exit N      log N numbered lines, exit(3)
//   log_exit flush N     log N/2 lines, common_log_flush(), log the rest, return 0
//   log_exit paused N    pause the logger (as --log-disable does), log N lines, return 0:
//                        nothing is printed and the program still ends
//   log_exit signal      log without end on the main thread until a signal handler calls
//                        exit(4): the program must still end, within the logger's patience
//
// Numbered lines go to stdout: "line <i> of <N>", the last one "last line <N>".

#include "log.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <pthread.h>
#include <string>
#include <thread>

static void log_lines(int from, int to, int n) {
    for (int i = from; i <= to; i++) {
        if (i == n) {
            LOG("last line %d\n", n);
        } else {
            LOG("line %d of %d\n", i, n);
        }
    }
}

static void on_signal(int) {
    exit(4);
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s return|exit|flush|paused N | signal\n", argv[0]);
        return 2;
    }
    const std::string mode = argv[1];
    const int n = argc > 2 ? atoi(argv[2]) : 0;

    if (mode == "return") {
        log_lines(1, n, n);
        return 0;
    }
    if (mode == "exit") {
        log_lines(1, n, n);
        exit(3);
    }
    if (mode == "flush") {
        log_lines(1, n / 2, n);
        common_log_flush(common_log_main());
        log_lines(n / 2 + 1, n, n);
        return 0;
    }
    if (mode == "paused") {
        common_log_pause(common_log_main());
        log_lines(1, n, n);
        return 0;
    }
    if (mode == "signal") {
        signal(SIGUSR1, on_signal);
        const pthread_t main_thread = pthread_self();
        std::thread([main_thread]() {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            pthread_kill(main_thread, SIGUSR1);
        }).detach();
        for (long i = 1;; i++) {
            LOG("line %ld\n", i);
        }
    }
    fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
}
