//! Whether the calling thread is inside the process-wide allocator.
//!
//! When tensorpool is the process's allocator ([`GlobalManager`](crate::GlobalManager)),
//! its own bookkeeping (a registry's `Vec`, a heap's name, a report's `String`)
//! allocates too, and that allocation comes back to tensorpool while one of its locks
//! may be held. A per-thread flag breaks the cycle: the process-wide allocator's entry
//! points, its thread-exit path and its background passes run [`Inside::enter`], and
//! whatever they allocate meanwhile the allocator takes from the system allocator.
//!
//! The flag lives in the thread's [block](super::thread_block), so reading it is a
//! plain load that never allocates, never registers anything and works during
//! thread exit; in the preloaded C library (the `initial-exec-tls` feature), also
//! without a call to `__tls_get_addr`, which may call `malloc`: the mark is what
//! must be read before anything can call back into the allocator.
//!
//! ```ignore
//! let Some(_inside) = Inside::enter() else {
//!     return System.alloc(layout); // tensorpool's own bookkeeping
//! };
//! ```

use std::cell::Cell;

/// The mark's bits: inside the allocator, and writing the table of regions.
const INSIDE: u8 = 1;
const WRITING_REGIONS: u8 = 2;

/// The calling thread's mark: found once (in the thread's block), then read and
/// written through without further lookups. Valid for the thread's life, and only
/// on the thread that found it (so neither `Send` nor `Sync`).
#[derive(Clone, Copy)]
struct Mark(*const Cell<u8>);

impl Mark {
    #[inline(always)]
    fn here() -> Mark {
        // SAFETY: the calling thread's own block, alive while the thread is.
        Mark(unsafe { &raw const (*super::thread_block::here()).inside })
    }

    #[inline(always)]
    fn get(self) -> u8 {
        // SAFETY: the calling thread's own mark (see the type's docs), alive while
        // the thread is.
        unsafe { (*self.0).get() }
    }

    #[inline(always)]
    fn set(self, value: u8) {
        // SAFETY: as in `get`.
        unsafe { (*self.0).set(value) }
    }
}

/// The calling thread is inside the process-wide allocator until this drops.
pub(crate) struct Inside(Mark);

impl Inside {
    /// Marks the calling thread inside; `None` if it already is (a nested call, from
    /// tensorpool's own bookkeeping).
    #[inline(always)]
    pub(crate) fn enter() -> Option<Inside> {
        let mark = Mark::here();
        let bits = mark.get();
        if bits & INSIDE != 0 {
            return None;
        }
        mark.set(bits | INSIDE);
        Some(Inside(mark))
    }

    /// [`enter`](Self::enter) if `process_wide` (the caller works for the
    /// process-wide allocator's engine); `None` otherwise or when already inside.
    pub(crate) fn enter_if(process_wide: bool) -> Option<Inside> {
        process_wide.then(Inside::enter).flatten()
    }

    /// Whether the calling thread is inside the process-wide allocator now.
    pub(crate) fn active() -> bool {
        Mark::here().get() & INSIDE != 0
    }
}

impl Drop for Inside {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.set(self.0.get() & !INSIDE);
    }
}

/// The calling thread writes the manager's table of regions until this drops: a
/// free that comes back meanwhile (the table's own nodes, which came from the
/// system allocator) must not read the table, whose lock the thread holds.
pub(crate) struct WritingRegions(Mark);

impl WritingRegions {
    pub(crate) fn start() -> WritingRegions {
        let mark = Mark::here();
        mark.set(mark.get() | WRITING_REGIONS);
        WritingRegions(mark)
    }

    /// Whether the calling thread writes the table of regions now.
    pub(crate) fn now() -> bool {
        Mark::here().get() & WRITING_REGIONS != 0
    }
}

impl Drop for WritingRegions {
    fn drop(&mut self) {
        self.0.set(self.0.get() & !WRITING_REGIONS);
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
