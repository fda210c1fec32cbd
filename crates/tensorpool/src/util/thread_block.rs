//! The calling thread's block of words that the allocator reads on every operation,
//! before anything that may allocate: the mark of being inside the process-wide
//! allocator ([`reentry`](super::reentry)) and the heap the slab engine's hot paths
//! used last (`tiers::slab::thread`).
//!
//! Without the `initial-exec-tls` feature the block is a `const` Rust thread-local
//! without a destructor: in an executable, reading it is a load at a fixed offset
//! from the thread pointer. In a shared library Rust's thread-locals are read
//! through `__tls_get_addr`, a call on every access that may itself call `malloc`
//! (to grow the thread's table of TLS blocks after a `dlopen`). The preloaded C
//! library therefore builds with the feature, which makes the block a C
//! thread-local of the initial-exec model (`csrc/thread_block.c`): on x86-64 Linux its
//! address is the thread pointer plus an offset the dynamic linker fixed when it
//! loaded the library (two instructions, no call); elsewhere one call into C.
//!
//! ```ignore
//! let block = thread_block::here();
//! // SAFETY: the calling thread's own block, alive while the thread is.
//! let inside = unsafe { &(*block).inside };
//! ```

use std::cell::Cell;

/// The block: one per thread, zero when the thread starts. Its layout is the C
/// struct's (`csrc/thread_block.c`).
#[repr(C)]
pub(crate) struct ThreadBlock {
    /// The reentry mark's bits.
    pub(crate) inside: Cell<u8>,
    /// The id of the engine of [`heap`](Self::heap) (0: none).
    pub(crate) engine: Cell<u64>,
    /// The heap the thread used last, of engine [`engine`](Self::engine).
    pub(crate) heap: Cell<*const ()>,
}

// The C struct's layout on 64-bit targets: a byte, then two 8-byte words.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::offset_of!(ThreadBlock, inside) == 0);
    assert!(std::mem::offset_of!(ThreadBlock, engine) == 8);
    assert!(std::mem::offset_of!(ThreadBlock, heap) == 16);
    assert!(std::mem::size_of::<ThreadBlock>() == 24);
};

#[cfg(not(feature = "initial-exec-tls"))]
std::thread_local! {
    static BLOCK: ThreadBlock = const {
        ThreadBlock {
            inside: Cell::new(0),
            engine: Cell::new(0),
            heap: Cell::new(std::ptr::null()),
        }
    };
}

/// The calling thread's block: valid for the thread's life (its thread-local
/// destructors included), and only on the calling thread (the cells are not
/// `Sync`).
#[cfg(not(feature = "initial-exec-tls"))]
#[inline(always)]
pub(crate) fn here() -> *const ThreadBlock {
    // A const thread-local without a destructor: `with` never fails.
    BLOCK.with(std::ptr::from_ref)
}

#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux",
    target_pointer_width = "64"
))]
#[inline(always)]
pub(crate) fn here() -> *const ThreadBlock {
    let addr: usize;
    // SAFETY: reads the thread pointer (on x86-64 Linux, `fs:0` holds the thread
    // pointer's own value, as the TLS ABI requires) and the GOT entry that the
    // dynamic linker filled with the C thread-local's offset from it (the
    // initial-exec model, the same instructions a C compiler emits for the
    // variable); writes only the output register and the flags.
    unsafe {
        std::arch::asm!(
            "mov {addr}, qword ptr fs:[0]",
            "add {addr}, qword ptr [rip + tensorpool_thread_block_tls@GOTTPOFF]",
            addr = out(reg) addr,
            options(pure, readonly, nostack),
        );
    }
    std::ptr::with_exposed_provenance(addr)
}

#[cfg(all(
    feature = "initial-exec-tls",
    not(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_pointer_width = "64"
    ))
))]
#[inline(always)]
pub(crate) fn here() -> *const ThreadBlock {
    extern "C" {
        /// The calling thread's block (`csrc/thread_block.c`), never null.
        fn tensorpool_thread_block() -> *mut ThreadBlock;
    }
    // SAFETY: the C function returns the address of the calling thread's own block.
    unsafe { tensorpool_thread_block() }
}

/// Runs `f` on the calling thread's block. (Under loom the slab engine keeps its
/// last heap in a loom thread-local instead.)
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn with<R>(f: impl FnOnce(&ThreadBlock) -> R) -> R {
    // SAFETY: the calling thread's own block, alive while the thread is (its
    // thread-local destructors included); the reference does not outlive `f`.
    f(unsafe { &*here() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_has_its_own_block_starting_at_zero() {
        // SAFETY: this thread's own block.
        let block = unsafe { &*here() };
        block.engine.set(7);
        assert_eq!(here(), std::ptr::from_ref(block), "the address is stable");
        std::thread::spawn(|| {
            // SAFETY: this thread's own block.
            let other = unsafe { &*here() };
            assert_eq!(
                (other.engine.get(), other.heap.get()),
                (0, std::ptr::null())
            );
        })
        .join()
        .unwrap();
        assert_eq!(block.engine.get(), 7);
        block.engine.set(0);
    }
}
