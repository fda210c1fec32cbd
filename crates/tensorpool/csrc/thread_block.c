/* The calling thread's block of words the process-wide allocator reads before
 * anything that may allocate (src/util/thread_block.rs): the "inside" mark
 * (src/util/reentry.rs) and the heap its hot paths used last
 * (src/tiers/slab/thread.rs), in initial-exec TLS. Reading it is one load at a fixed
 * offset from the thread pointer, with no call to __tls_get_addr, which may call
 * malloc (to grow a thread's DTV after a dlopen) and so come back into the
 * allocator. Built only with the `initial-exec-tls` feature (the preloaded
 * library's). The layout is `ThreadBlock`'s. */

#include <stdint.h>

struct tensorpool_thread_block {
    unsigned char inside;
    uint64_t engine;
    const void *heap;
};

__attribute__((visibility("hidden"), tls_model("initial-exec")))
__thread struct tensorpool_thread_block tensorpool_thread_block_tls;

/* The block's address, for targets where Rust reads it by a call. */
struct tensorpool_thread_block *tensorpool_thread_block(void) {
    return &tensorpool_thread_block_tls;
}
