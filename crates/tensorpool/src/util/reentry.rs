//! Whether the calling thread is inside the process-wide allocator.
//!
//! When tensorpool is the process's allocator ([`GlobalManager`](crate::GlobalManager)),
//! its own bookkeeping (a registry's `Vec`, a heap's name, a report's `String`)
//! allocates too, and that allocation comes back to tensorpool while one of its locks
//! may be held. A per-thread flag breaks the cycle: the process-wide allocator's entry
//! points, its thread-exit path and its background passes run [`Inside::enter`], and
//! whatever they allocate meanwhile the allocator takes from the system allocator.
//!
//! The flag is a `const` thread-local without a destructor, so reading it is a plain
//! load that never allocates, never registers anything and works during thread exit.
//! With the `initial-exec-tls` feature (the preloaded C library's) it is a C
//! thread-local of the initial-exec model instead (`csrc/inside.c`): in a shared
//! library Rust's thread-locals are read through `__tls_get_addr`, which may call
//! `malloc` after a `dlopen`, and the mark is what must be read before anything can
//! call back into the allocator.
//!
//! ```ignore
//! let Some(_inside) = Inside::enter() else {
//!     return System.alloc(layout); // tensorpool's own bookkeeping
//! };
//! ```

/// The mark's bits: inside the allocator, and writing the table of regions.
const INSIDE: u8 = 1;
const WRITING_REGIONS: u8 = 2;

#[cfg(not(feature = "initial-exec-tls"))]
std::thread_local! {
    static MARK: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

#[cfg(not(feature = "initial-exec-tls"))]
#[inline(always)]
fn get() -> u8 {
    MARK.with(std::cell::Cell::get)
}

#[cfg(not(feature = "initial-exec-tls"))]
#[inline(always)]
fn set(value: u8) {
    MARK.with(|mark| mark.set(value))
}

#[cfg(feature = "initial-exec-tls")]
extern "C" {
    /// The calling thread's mark (`csrc/inside.c`), never unaligned or null.
    fn tensorpool_inside_mark() -> *mut u8;
}

#[cfg(feature = "initial-exec-tls")]
#[inline(always)]
fn get() -> u8 {
    // SAFETY: the C function returns the address of the calling thread's own
    // `unsigned char`, valid for the thread's life and touched by no other thread.
    unsafe { *tensorpool_inside_mark() }
}

#[cfg(feature = "initial-exec-tls")]
#[inline(always)]
fn set(value: u8) {
    // SAFETY: as in `get`.
    unsafe { *tensorpool_inside_mark() = value }
}

/// The calling thread is inside the process-wide allocator until this drops.
pub(crate) struct Inside(());

impl Inside {
    /// Marks the calling thread inside; `None` if it already is (a nested call, from
    /// tensorpool's own bookkeeping).
    #[inline(always)]
    pub(crate) fn enter() -> Option<Inside> {
        let mark = get();
        if mark & INSIDE != 0 {
            return None;
        }
        set(mark | INSIDE);
        Some(Inside(()))
    }

    /// [`enter`](Self::enter) if `process_wide` (the caller works for the
    /// process-wide allocator's engine); `None` otherwise or when already inside.
    pub(crate) fn enter_if(process_wide: bool) -> Option<Inside> {
        process_wide.then(Inside::enter).flatten()
    }

    /// Whether the calling thread is inside the process-wide allocator now.
    pub(crate) fn active() -> bool {
        get() & INSIDE != 0
    }
}

impl Drop for Inside {
    #[inline(always)]
    fn drop(&mut self) {
        set(get() & !INSIDE);
    }
}

/// The calling thread writes the manager's table of regions until this drops: a
/// free that comes back meanwhile (the table's own nodes, which came from the
/// system allocator) must not read the table, whose lock the thread holds.
pub(crate) struct WritingRegions(());

impl WritingRegions {
    pub(crate) fn start() -> WritingRegions {
        set(get() | WRITING_REGIONS);
        WritingRegions(())
    }

    /// Whether the calling thread writes the table of regions now.
    pub(crate) fn now() -> bool {
        get() & WRITING_REGIONS != 0
    }
}

impl Drop for WritingRegions {
    fn drop(&mut self) {
        set(get() & !WRITING_REGIONS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_enter_is_refused_and_leaves_the_mark() {
        let outer = Inside::enter().expect("not inside yet");
        assert!(Inside::enter().is_none());
        assert!(
            Inside::enter().is_none(),
            "a refused enter must not clear the mark"
        );
        drop(outer);
        let again = Inside::enter();
        assert!(again.is_some());
        drop(again);
        assert!(!Inside::active());
        assert!(Inside::enter_if(false).is_none());
        let marked = Inside::enter_if(true).expect("asked for the mark");
        assert!(Inside::active());
        drop(marked);
        std::thread::spawn(|| assert!(Inside::enter().is_some(), "the mark is per thread"))
            .join()
            .unwrap();
        let inside = Inside::enter().unwrap();
        let writing = WritingRegions::start();
        assert!(WritingRegions::now() && Inside::active());
        drop(inside);
        assert!(
            WritingRegions::now() && !Inside::active(),
            "the two bits are apart"
        );
        drop(writing);
        assert!(!WritingRegions::now());
    }
}
