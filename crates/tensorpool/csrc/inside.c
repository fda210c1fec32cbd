/* The process-wide allocator's "inside" mark (src/util/reentry.rs), in initial-exec
 * TLS: reading it is one load at a fixed offset from the thread pointer, with no
 * call to __tls_get_addr, which may call malloc (to grow a thread's DTV after a
 * dlopen) and so come back into the allocator before any mark could be read.
 * Built only with the `initial-exec-tls` feature (the preloaded library's). */

static __thread unsigned char inside __attribute__((tls_model("initial-exec")));

unsigned char *tensorpool_inside_mark(void) { return &inside; }
