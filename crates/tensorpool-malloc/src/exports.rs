//! The C allocation functions, each with the C library's name and semantics, over
//! the process's `Malloc` (see [`tensorpool_core::global::malloc`] for what
//! each promises). What C leaves open follows glibc: `malloc(0)` is a unique block,
//! `realloc(p, 0)` frees `p` and returns NULL, failures set `errno` to `ENOMEM`.
//!
//! Every function is `unsafe extern "C"` with the C contract of its namesake: the
//! pointers passed are NULL or blocks from these functions not yet freed (a block
//! that is not tensorpool's goes back to glibc; a bad free is refused and reported).
// Each function's safety contract is its C namesake's, stated once above.
#![allow(clippy::missing_safety_doc)]

use crate::MALLOC;
use libc::{c_int, c_void, size_t};
use tensorpool_core::global::malloc::set_errno;

/// The page size every `valloc` block is aligned to.
fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

/// `malloc(3)`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.malloc(size) }
}

/// `free(3)`.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.free(ptr) }
}

/// `calloc(3)`: NULL with `ENOMEM` when `count * size` overflows.
#[no_mangle]
pub unsafe extern "C" fn calloc(count: size_t, size: size_t) -> *mut c_void {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.calloc(count, size) }
}

/// `realloc(3)`.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.realloc(ptr, size) }
}

/// `reallocarray(3)`: NULL with `ENOMEM`, and `ptr` untouched, when `count * size`
/// overflows.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(
    ptr: *mut c_void,
    count: size_t,
    size: size_t,
) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: C's contract, the caller's.
        Some(bytes) => unsafe { MALLOC.realloc(ptr, bytes) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `posix_memalign(3)`: `EINVAL` for an alignment that is not a power of two
/// multiple of `sizeof(void *)`, `ENOMEM` without memory; `*out` is written only on
/// success.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    if !align.is_power_of_two() || align % std::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    // posix_memalign reports through its result, and leaves errno as it was.
    // SAFETY: `__errno_location` is the calling thread's errno.
    let saved = unsafe { *libc::__errno_location() };
    // SAFETY: C's contract, the caller's.
    let ptr = unsafe { MALLOC.aligned(align, size) };
    if ptr.is_null() {
        set_errno(saved);
        return libc::ENOMEM;
    }
    // SAFETY: `out` is writable, by the caller's contract.
    unsafe { out.write(ptr) };
    0
}

/// `aligned_alloc(3)` (C11): NULL with `EINVAL` when `align` is not a power of two
/// (as glibc 2.38 and later).
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.aligned(align, size) }
}

/// `memalign(3)`: as glibc, an alignment that is not a power of two is rounded up to
/// one; one beyond half the address space is `EINVAL`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    let Some(align) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    };
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.aligned(align, size) }
}

/// `valloc(3)`: page-aligned.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: size_t) -> *mut c_void {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.aligned(page_size(), size) }
}

/// `pvalloc(3)`: page-aligned, the size rounded up to whole pages (a page for 0).
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    let page = page_size();
    let Some(rounded) = size.max(1).checked_next_multiple_of(page) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.aligned(page, rounded) }
}

/// `malloc_usable_size(3)`: the size asked for (stable for the block's life).
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> size_t {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.usable_size(ptr) }
}

/// C23's `free_sized`: `free` (the size is not needed to find the block).
#[no_mangle]
pub unsafe extern "C" fn free_sized(ptr: *mut c_void, _size: size_t) {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.free(ptr) }
}

/// C23's `free_aligned_sized`: `free`.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, _align: size_t, _size: size_t) {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.free(ptr) }
}

/// glibc's `cfree`, an old name of `free`.
#[no_mangle]
pub unsafe extern "C" fn cfree(ptr: *mut c_void) {
    // SAFETY: C's contract, the caller's.
    unsafe { MALLOC.free(ptr) }
}

/// `malloc_trim(3)`: gives every thread's free memory back to the system now
/// (`pad` is not needed: nothing is kept); 1 if memory was given back.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: size_t) -> c_int {
    c_int::from(MALLOC.trim() > 0)
}

/// `mallinfo2(3)`, from the manager's statistics.
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    crate::extras::mallinfo()
}

/// `mallopt(3)`: accepted, and 1 returned, for every parameter. glibc's parameters
/// (trim and mmap thresholds, arenas, `M_PERTURB`) tune a design tensorpool does not
/// have; its own settings are read from `TENSORPOOL_*` variables.
#[no_mangle]
pub extern "C" fn mallopt(_param: c_int, _value: c_int) -> c_int {
    1
}

/// `malloc_stats(3)`: tensorpool's summary, on stderr.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    if let Some(summary) = MALLOC.summary() {
        crate::process::say(format_args!("summary\n{summary}"));
    }
}

/// glibc's `struct mallinfo2`, filled from the manager's statistics (see
/// [`extras::mallinfo`](crate::extras::mallinfo)).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Mallinfo2 {
    /// Bytes the manager reserved from the system (the huge tier's included).
    pub arena: size_t,
    /// Free blocks: not counted by tensorpool (0).
    pub ordblks: size_t,
    /// Fastbin blocks: none (0).
    pub smblks: size_t,
    /// Segments of their own (the huge tier's blocks): not counted apart (0).
    pub hblks: size_t,
    /// Bytes of huge blocks: included in `arena` (0).
    pub hblkhd: size_t,
    /// Peak bytes reserved.
    pub usmblks: size_t,
    /// Fastbin bytes: none (0).
    pub fsmblks: size_t,
    /// Bytes in live blocks (allocated).
    pub uordblks: size_t,
    /// Bytes reserved and not in live blocks.
    pub fordblks: size_t,
    /// Bytes a trim could give back now: the cached free bytes.
    pub keepcost: size_t,
}
