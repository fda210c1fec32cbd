/* Every function libtensorpool.so exports, on normal and edge inputs, from several
 * threads at once with frees on other threads, across fork() and after dlopen().
 *
 *   cc -O1 -g -fno-builtin -pthread malloc_test.c -o malloc_test -ldl
 *   LD_PRELOAD=target/release/libtensorpool.so ./malloc_test
 *
 * scripts/preload_test.sh builds and runs it (the test command calls that). It
 * checks that the library is the one serving (tensorpool_stats_json, found with
 * dlsym), and exits non-zero, naming the check, on the first failure.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "malloc_test: %s:%d: check failed: %s\n", __FILE__, \
                    __LINE__, #cond);                                            \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* C23's, which glibc before 2.41 lacks: the library's, found by name. */
static void (*free_sized)(void *ptr, size_t size);
static void (*free_aligned_sized)(void *ptr, size_t align, size_t size);

typedef char *(*string_fn)(void);
typedef size_t (*trim_fn)(void);

/* Sizes the compiler cannot see (it would fold or warn about the calls). */
static volatile size_t huge = SIZE_MAX;
static volatile size_t half = SIZE_MAX / 2;

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 31);
}

static int intact(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 31)) return 0;
    return 1;
}

static long stat_field(const char *name) {
    string_fn stats = (string_fn)dlsym(RTLD_DEFAULT, "tensorpool_stats_json");
    CHECK(stats != NULL);
    char *json = stats();
    CHECK(json != NULL);
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    char *at = strstr(json, key);
    CHECK(at != NULL);
    long value = strtol(at + strlen(key), NULL, 10);
    free(json);
    return value;
}

static void edge_inputs(void) {
    /* malloc(0): a unique block that can be freed. */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 && z2 && z1 != z2);
    free(z1);
    free(z2);
    free(NULL);

    /* Failure: NULL and ENOMEM. */
    errno = 0;
    CHECK(malloc(huge) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(half) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(half, 3) == NULL && errno == ENOMEM); /* overflow */
    errno = 0;
    CHECK(calloc(1, huge) == NULL && errno == ENOMEM);

    /* calloc zeroes, also blocks used before. */
    for (int round = 0; round < 2; round++) {
        unsigned char *c = calloc(1000, 5);
        CHECK(c != NULL);
        for (int i = 0; i < 5000; i++) CHECK(c[i] == 0);
        memset(c, 0xAB, 5000);
        free(c);
    }

    /* realloc: NULL, 0, growing and shrinking across tiers, contents kept. */
    unsigned char *p = realloc(NULL, 10);
    CHECK(p != NULL);
    fill(p, 10, 1);
    size_t sizes[] = {24, 100, 1000, 5000, 40000, 300000, 3 << 20, 40 << 20, 100, 17, 1};
    size_t kept = 10;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        p = realloc(p, sizes[i]);
        CHECK(p != NULL);
        size_t n = kept < sizes[i] ? kept : sizes[i];
        CHECK(intact(p, n, 1));
        CHECK(malloc_usable_size(p) >= sizes[i]);
        fill(p, sizes[i], 1);
        kept = sizes[i];
    }
    errno = 0;
    CHECK(realloc(p, huge) == NULL && errno == ENOMEM);
    CHECK(intact(p, kept, 1)); /* the old block is untouched */
    CHECK(realloc(p, 0) == NULL); /* glibc: frees and returns NULL */

    /* reallocarray: overflow leaves the block alone. */
    int *a = reallocarray(NULL, 100, sizeof(int));
    CHECK(a != NULL);
    for (int i = 0; i < 100; i++) a[i] = i;
    errno = 0;
    CHECK(reallocarray(a, half, 4) == NULL && errno == ENOMEM);
    a = reallocarray(a, 1000, sizeof(int));
    CHECK(a != NULL);
    for (int i = 0; i < 100; i++) CHECK(a[i] == i);
    free(a);

    /* Every alignment from 1 to 1 MiB, and the invalid ones. */
    for (size_t align = 1; align <= (1 << 20); align <<= 1) {
        size_t sizes2[] = {1, 100, 5000, 1 << 20};
        for (size_t s = 0; s < 4; s++) {
            size_t size = sizes2[s];
            void *m = memalign(align, size);
            CHECK(m != NULL && (uintptr_t)m % align == 0);
            memset(m, 1, size);
            CHECK(malloc_usable_size(m) >= size);
            free(m);
            void *al = aligned_alloc(align, size);
            CHECK(al != NULL && (uintptr_t)al % align == 0);
            memset(al, 2, size);
            free_aligned_sized(al, align, size);
            if (align >= sizeof(void *)) {
                void *out = NULL;
                CHECK(posix_memalign(&out, align, size) == 0);
                CHECK(out != NULL && (uintptr_t)out % align == 0);
                memset(out, 3, size);
                free_sized(out, size);
            }
        }
    }
    void *untouched = (void *)0x1234;
    CHECK(posix_memalign(&untouched, 24, 10) == EINVAL && untouched == (void *)0x1234);
    CHECK(posix_memalign(&untouched, 2, 10) == EINVAL && untouched == (void *)0x1234);
    CHECK(posix_memalign(&untouched, 64, huge) == ENOMEM && untouched == (void *)0x1234);
    errno = 0;
    CHECK(aligned_alloc(48, 10) == NULL && errno == EINVAL);
    void *m48 = memalign(48, 10); /* glibc rounds up to 64 */
    CHECK(m48 != NULL && (uintptr_t)m48 % 64 == 0);
    free(m48);

    long page = sysconf(_SC_PAGESIZE);
    void *v = valloc(10);
    CHECK(v != NULL && (uintptr_t)v % page == 0);
    free(v);
    void *pv = pvalloc(10);
    CHECK(pv != NULL && (uintptr_t)pv % page == 0 && malloc_usable_size(pv) >= (size_t)page);
    free(pv);

    /* The rest of the family. */
    CHECK(mallopt(M_TRIM_THRESHOLD, 1 << 20) == 1);
    void *live = malloc(1000);
    struct mallinfo2 info = mallinfo2();
    CHECK(info.arena > 0 && info.uordblks >= 1000 && info.uordblks <= info.arena);
    free(live);
    /* After a trim, what a trim could give back (keepcost) is what is still free
     * and resident: small (it read every cached byte, given back or not). */
    void *big = malloc(8 << 20);
    memset(big, 1, 8 << 20);
    free(big);
    malloc_trim(0);
    info = mallinfo2();
    CHECK(info.keepcost < (1 << 20));
    trim_fn trim = (trim_fn)dlsym(RTLD_DEFAULT, "tensorpool_trim");
    CHECK(trim != NULL);
    trim();
    string_fn summary = (string_fn)dlsym(RTLD_DEFAULT, "tensorpool_summary");
    char *text = summary();
    CHECK(text != NULL && strstr(text, "small") != NULL);
    free(text);
}

/* Blocks handed from producers to consumers, which free them. */
#define THREADS 4
#define ROUNDS 20000
static void *volatile mailbox[THREADS][64];

static void *churn(void *arg) {
    unsigned id = (unsigned)(uintptr_t)arg;
    unsigned seed = id * 7919 + 1;
    void *held[256] = {0};
    for (int i = 0; i < ROUNDS; i++) {
        seed = seed * 1103515245 + 12345;
        size_t size = (seed >> 8) % 4 == 0 ? (seed >> 12) % 70000 : (seed >> 12) % 600;
        int slot = (seed >> 20) % 256;
        if (held[slot]) {
            CHECK(intact(held[slot], 8 < malloc_usable_size(held[slot]) ? 8 : malloc_usable_size(held[slot]), slot));
            /* Every other block is freed by the next thread. */
            int to = (id + 1) % THREADS, box = slot % 64;
            void *mine = held[slot];
            void *theirs = __atomic_exchange_n(&mailbox[to][box], mine, __ATOMIC_ACQ_REL);
            if (theirs) free(theirs);
        }
        unsigned char *p = (seed & 1) ? malloc(size) : calloc(1, size);
        CHECK(p != NULL);
        fill(p, size < 8 ? size : 8, slot);
        if (size > 8 && (seed & 1) == 0) CHECK(p[size - 1] == 0);
        held[slot] = p;
        if (size < 8) {
            free(p);
            held[slot] = NULL;
        }
    }
    for (int s = 0; s < 256; s++) free(held[s]);
    return NULL;
}

static void threads(void) {
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)i) == 0);
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        for (int b = 0; b < 64; b++) {
            free(mailbox[i][b]);
            mailbox[i][b] = NULL;
        }
}

/* A thread that keeps allocating while the main thread forks. */
static volatile int stop_busy;
static void *busy(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop_busy, __ATOMIC_RELAXED)) {
        void *p[32];
        for (int i = 0; i < 32; i++) p[i] = malloc(16 + i * 300);
        for (int i = 0; i < 32; i++) free(p[i]);
    }
    return NULL;
}

static void forks(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, busy, NULL) == 0);
    for (int round = 0; round < 20; round++) {
        char *kept = malloc(1000);
        fill((unsigned char *)kept, 1000, round);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            /* The child allocates in every tier, frees the parent's block, trims. */
            CHECK(intact((unsigned char *)kept, 1000, round));
            free(kept);
            void *p[64];
            for (int i = 0; i < 64; i++) {
                p[i] = malloc((size_t)1 << (i % 26));
                CHECK(p[i] != NULL);
                memset(p[i], i, (size_t)1 << (i % 26));
            }
            for (int i = 0; i < 64; i++) free(p[i]);
            malloc_trim(0);
            _exit(stat_field("num_allocs") > 0 ? 0 : 3);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        free(kept);
    }
    __atomic_store_n(&stop_busy, 1, __ATOMIC_RELAXED);
    CHECK(pthread_join(t, NULL) == 0);
}

/* Many large blocks made and given back: with TENSORPOOL_HUGE_THRESHOLD low, each
 * is a region of its own in the allocator's table, whose nodes (from glibc) are
 * freed while the table is locked for writing. */
static void regions(void) {
    for (int round = 0; round < 3; round++) {
        char *p[48];
        for (int i = 0; i < 48; i++) {
            size_t n = ((size_t)2 << 20) + (size_t)i * 65536;
            p[i] = malloc(n);
            CHECK(p[i] != NULL);
            p[i][0] = (char)i;
            p[i][n - 1] = (char)i;
        }
        for (int i = 0; i < 48; i += 2) free(p[i]);
        malloc_trim(0);
        for (int i = 1; i < 48; i += 2) {
            CHECK(p[i][0] == (char)i);
            free(p[i]);
        }
        malloc_trim(0);
    }
}

/* Libraries loaded late, whose thread-locals make glibc grow every thread's
 * TLS vector from inside malloc. */
static void dlopens(const char *dir) {
    const char *names[] = {"libtp_tls_a.so", "libtp_tls_b.so", "libm.so.6", "libz.so.1"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[4096];
        if (strchr(names[i], '.') && strncmp(names[i], "libtp_", 6) == 0)
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        else
            snprintf(path, sizeof path, "%s", names[i]);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h && strncmp(names[i], "libtp_", 6) != 0) continue; /* not installed */
        CHECK(h != NULL);
        int *(*tls)(void) = (int *(*)(void))dlsym(h, "tp_tls_counter");
        if (tls) {
            /* A thread-local of the new library, from a new thread and this one. */
            (*tls())++;
            threads();
        }
    }
}

/* Frees a program must not make, each refused and counted (num_invalid_frees),
 * the program going on: a second free of a block whose memory went back to the
 * system (malloc_trim) was handed to glibc's free, which crashed reading a chunk
 * header there; an interior pointer; a block whose size glibc reports comes from
 * the allocator that made it (an aligned block beyond 4 KiB is glibc's). */
static void bad_frees(void) {
    long before = stat_field("num_invalid_frees");
    long refused = 0;
    size_t sizes[] = {64, 5000, (size_t)2 << 20, (size_t)40 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        char *p = malloc(sizes[i]);
        CHECK(p != NULL);
        memset(p, 1, 4096 < sizes[i] ? 4096 : sizes[i]);
        free(p);
        malloc_trim(0);
        free(p); /* refused: already freed, its memory given back */
        refused++;
    }
    char *q = malloc(256);
    free(q + 16); /* refused: inside a live block */
    refused++;
    free(q);
    void *big = aligned_alloc(8192, 100);
    CHECK(big != NULL && malloc_usable_size(big) >= 100);
    free(big);
    CHECK(stat_field("num_invalid_frees") == before + refused);
}

int main(int argc, char **argv) {
    CHECK(dlsym(RTLD_DEFAULT, "tensorpool_stats_json") != NULL); /* preloaded */
    *(void **)&free_sized = dlsym(RTLD_DEFAULT, "free_sized");
    *(void **)&free_aligned_sized = dlsym(RTLD_DEFAULT, "free_aligned_sized");
    CHECK(free_sized != NULL && free_aligned_sized != NULL);
    long before = stat_field("num_allocs");
    edge_inputs();
    CHECK(stat_field("num_allocs") > before);
    threads();
    regions();
    forks();
    if (argc > 1) dlopens(argv[1]);
    CHECK(stat_field("num_invalid_frees") == 0);
    bad_frees();
    printf("malloc_test: every check passed\n");
    return 0;
}
