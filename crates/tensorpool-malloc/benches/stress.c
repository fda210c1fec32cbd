/* Allocator stress programs of the kind allocator papers use, for
 * scripts/preload_bench.py to run under each preloaded allocator.
 *
 *   stress threads THREADS   each thread replaces random blocks of a window of 2,000
 *                            (16 B-8 KiB, log-uniform), writing each block's first
 *                            and last bytes (larson's shape, without hand-offs)
 *   stress handoff PAIRS     producers allocate (16 B-1 KiB), consumers free them
 *                            (xmalloc-test's shape)
 *   stress lifetimes         one thread: most blocks freed within a few operations,
 *                            one in ten kept for 100,000 (16 B-64 KiB)
 *   stress large             blocks of 256 KiB-8 MiB, 16 live, replaced at random,
 *                            every page written (tensor-sized churn)
 *   stress grow STEP MAX     one buffer grown by realloc, STEP bytes at a time, to
 *                            MAX bytes, its last byte written at each step
 *
 * Prints the elapsed milliseconds on stdout.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Log-uniform in [lo, hi]. */
static size_t log_size(uint64_t *s, unsigned lo_shift, unsigned hi_shift) {
    unsigned shift = lo_shift + next(s) % (hi_shift - lo_shift + 1);
    size_t base = (size_t)1 << shift;
    return base + next(s) % base;
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void touch(char *p, size_t n) {
    p[0] = 1;
    p[n - 1] = 2;
}

#define WINDOW 2000
#define THREAD_OPS 2000000

static void *threads_worker(void *arg) {
    uint64_t s = (uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
    char *held[WINDOW] = {0};
    for (int i = 0; i < THREAD_OPS; i++) {
        int k = next(&s) % WINDOW;
        free(held[k]);
        size_t n = log_size(&s, 4, 12);
        held[k] = malloc(n);
        touch(held[k], n);
    }
    for (int k = 0; k < WINDOW; k++) free(held[k]);
    return NULL;
}

#define RING 1024
#define HANDOFF_OPS 2000000
struct ring {
    void *slot[RING];
    _Atomic unsigned head, tail;
};

static void *producer(void *arg) {
    struct ring *r = arg;
    uint64_t s = (uintptr_t)r | 1;
    for (int i = 0; i < HANDOFF_OPS; i++) {
        size_t n = 16 + next(&s) % 1009;
        char *p = malloc(n);
        touch(p, n);
        while (r->head - r->tail == RING) sched_yield();
        r->slot[r->head % RING] = p;
        r->head++;
    }
    return NULL;
}

static void *consumer(void *arg) {
    struct ring *r = arg;
    for (int i = 0; i < HANDOFF_OPS; i++) {
        while (r->tail == r->head) sched_yield();
        free(r->slot[r->tail % RING]);
        r->tail++;
    }
    return NULL;
}

static void lifetimes(void) {
    uint64_t s = 42;
    enum { SHORT = 16, LONG = 10000, OPS = 4000000 };
    char *short_lived[SHORT] = {0};
    char *long_lived[LONG] = {0};
    for (int i = 0; i < OPS; i++) {
        size_t n = log_size(&s, 4, 15);
        char *p = malloc(n);
        touch(p, n);
        if (next(&s) % 10 == 0) {
            int k = next(&s) % LONG;
            free(long_lived[k]);
            long_lived[k] = p;
        } else {
            int k = next(&s) % SHORT;
            free(short_lived[k]);
            short_lived[k] = p;
        }
    }
    for (int k = 0; k < SHORT; k++) free(short_lived[k]);
    for (int k = 0; k < LONG; k++) free(long_lived[k]);
}

static void grow(size_t step, size_t max) {
    char *p = NULL;
    for (size_t n = step; n <= max; n += step) {
        p = realloc(p, n);
        if (!p) exit(3);
        p[n - 1] = 1;
    }
    free(p);
}

static void large(void) {
    uint64_t s = 7;
    char *held[16] = {0};
    for (int i = 0; i < 4000; i++) {
        int k = next(&s) % 16;
        free(held[k]);
        size_t n = log_size(&s, 18, 22);
        held[k] = malloc(n);
        for (size_t off = 0; off < n; off += 4096) held[k][off] = (char)off;
    }
    for (int k = 0; k < 16; k++) free(held[k]);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: stress threads N | handoff PAIRS | lifetimes | large | grow STEP MAX\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 1;
    double start = now_ms();
    if (strcmp(argv[1], "threads") == 0) {
        pthread_t t[64];
        for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, threads_worker, (void *)(uintptr_t)(i + 1));
        for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    } else if (strcmp(argv[1], "handoff") == 0) {
        pthread_t t[64];
        struct ring *rings = calloc(n, sizeof *rings);
        for (int i = 0; i < n; i++) {
            pthread_create(&t[2 * i], NULL, producer, &rings[i]);
            pthread_create(&t[2 * i + 1], NULL, consumer, &rings[i]);
        }
        for (int i = 0; i < 2 * n; i++) pthread_join(t[i], NULL);
        free(rings);
    } else if (strcmp(argv[1], "lifetimes") == 0) {
        lifetimes();
    } else if (strcmp(argv[1], "large") == 0) {
        large();
    } else if (strcmp(argv[1], "grow") == 0 && argc == 4) {
        grow(strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0));
    } else {
        fprintf(stderr, "unknown workload %s\n", argv[1]);
        return 2;
    }
    printf("%.1f\n", now_ms() - start);
    return 0;
}
