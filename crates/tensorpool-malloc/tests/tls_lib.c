/* A library with thread-locals, for malloc_test.c to dlopen: loading it makes
 * glibc grow each thread's TLS vector at the thread's next dynamic TLS access,
 * with malloc, from wherever that access is (inside malloc too). */
static __thread int counter[1024];

int *tp_tls_counter(void) { return &counter[0]; }
