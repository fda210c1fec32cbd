//! `libtensorpool.so`: tensorpool as the C allocator of any program.
//!
//! ```text
//! cargo build --release -p tensorpool-malloc        # target/release/libtensorpool.so
//! LD_PRELOAD=target/release/libtensorpool.so TENSORPOOL_STATS=1 python3 train.py
//! tensorpool run --record t.csv -- python3 train.py # the same, found beside the command
//! ```
//!
//! The library exports C's allocation functions ([`exports`]: `malloc`, `free`,
//! `calloc`, `realloc`, `reallocarray`, `posix_memalign`, `aligned_alloc`,
//! `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`, `malloc_trim`,
//! `mallinfo2`, `mallopt`, `malloc_stats`, C23's `free_sized` and
//! `free_aligned_sized`), which C++'s `operator new` and `delete` reach through
//! libstdc++, and what tensorpool knows beyond them ([`extras`], declared in
//! `include/tensorpool.h`). Their semantics, and how memory that is not tensorpool's
//! goes back to glibc, are those of [`tensorpool_core::global::malloc`], whose tests run
//! in Rust; this crate is the thin C face over it and the process's environment
//! ([`process`]).
//!
//! Configured from the environment: `TENSORPOOL_CONFIG=file.toml` (the format
//! `tensorpool plan` writes) and one `TENSORPOOL_<SETTING>` variable per setting,
//! over the C front's defaults (size classes from 16 B, 16-byte alignment); a bad
//! value is reported once on stderr and passed over. `TENSORPOOL_STATS=1` prints the
//! summary when the program exits; `TENSORPOOL_RECORD=trace.csv` records every
//! allocation and free of the process (RMM CSV, the system's thread ids).
//!
//! Static binaries, and setuid ones, ignore `LD_PRELOAD`: the dynamic loader does
//! not preload into them.

pub mod exports;
pub mod extras;
pub mod process;

use tensorpool_core::global::malloc::{Foreign, Malloc};
use tensorpool_core::global::process_config;

/// The process's allocator: started at the first call, configured by
/// [`process_config`] (the process defaults, changed by the environment), glibc's
/// own allocator for what it does not serve.
pub(crate) static MALLOC: Malloc = Malloc::new(process_config, GLIBC);

/// glibc's allocator under its internal names, which a preloaded `malloc` does not
/// replace: what serves the allocator's own bookkeeping and the blocks that are not
/// tensorpool's.
const GLIBC: Foreign = Foreign {
    malloc: glibc::__libc_malloc,
    calloc: glibc::__libc_calloc,
    realloc: glibc::__libc_realloc,
    free: glibc::__libc_free,
    memalign: glibc::__libc_memalign,
    usable_size: Some(glibc::usable_size),
};

mod glibc {
    use std::ffi::{c_void, CStr};
    use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

    extern "C" {
        pub fn __libc_malloc(size: usize) -> *mut c_void;
        pub fn __libc_calloc(count: usize, size: usize) -> *mut c_void;
        pub fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
        pub fn __libc_free(ptr: *mut c_void);
        pub fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    }

    /// `malloc_usable_size` of the allocator whose `__libc_malloc` this library
    /// calls (glibc's, or that of an allocator preloaded after this one that replaces
    /// glibc's internal names too, as mimalloc and tcmalloc do): a block's size must
    /// come from the allocator that made it. Looked up once, in the object that
    /// defines that `__libc_malloc`. (`dlsym(RTLD_NEXT)` found the next preloaded
    /// library's, jemalloc's under `tensorpool run` with jemalloc already in
    /// `LD_PRELOAD`, which crashed on glibc's blocks: a user hunt.)
    pub unsafe extern "C" fn usable_size(ptr: *mut c_void) -> usize {
        /// Not looked up yet (null), not found (this), or the function.
        const MISSING: *mut c_void = std::ptr::without_provenance_mut(1);
        static FOUND: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
        let mut f = FOUND.load(Relaxed);
        if f.is_null() {
            f = find_usable_size().unwrap_or(MISSING);
            FOUND.store(f, Relaxed);
        }
        if f == MISSING {
            return 0;
        }
        // SAFETY: `f` is the `malloc_usable_size` of the allocator behind this
        // library's `__libc_*` names, of this signature, and `ptr` a live block of
        // that allocator's (the caller's contract).
        unsafe {
            let f: unsafe extern "C" fn(*mut c_void) -> usize = std::mem::transmute(f);
            f(ptr)
        }
    }

    /// `malloc_usable_size` in the object that defines the `__libc_malloc` this
    /// library is bound to; `None` if it cannot be found, or if what is found is
    /// this library's own (a program that defines `__libc_malloc` itself: the
    /// lookup would find ours through the program's dependencies, and recurse).
    fn find_usable_size() -> Option<*mut c_void> {
        const NAME: &CStr = c"malloc_usable_size";
        // SAFETY: `dladdr` fills `info` for an address of a loaded object (a function
        // this library is bound to); `dlopen` with RTLD_NOLOAD only takes a
        // reference to that object, already loaded (it stays loaded for the
        // process's life: the reference is never dropped); `dlsym` with valid C
        // strings.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            let malloc = __libc_malloc as unsafe extern "C" fn(usize) -> *mut c_void;
            if libc::dladdr(malloc as *const c_void, &mut info) == 0 || info.dli_fname.is_null() {
                return None;
            }
            let object = libc::dlopen(info.dli_fname, libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if object.is_null() {
                return None;
            }
            let found = libc::dlsym(object, NAME.as_ptr());
            let ours = crate::exports::malloc_usable_size as *const c_void;
            (!found.is_null() && found.cast_const() != ours).then_some(found)
        }
    }
}
