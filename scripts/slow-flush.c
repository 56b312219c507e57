/* LD_PRELOAD shim for `scripts/bench-intake-slow-flush`: every fdatasync and fsync of the process
 * (PostgreSQL's WAL flush among them) returns SLOW_FLUSH_US microseconds (default 1000) later than
 * the disk answered, as on storage whose flush is that slow. It sleeps rather than spins: a slow
 * device costs waiting, not CPU. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void wait_more(void) {
    const char *us = getenv("SLOW_FLUSH_US");
    long n = us ? atol(us) : 1000;
    struct timespec t = {n / 1000000, (n % 1000000) * 1000};
    while (nanosleep(&t, &t) != 0) {
    }
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    wait_more();
    return r;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    wait_more();
    return r;
}
