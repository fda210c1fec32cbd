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
//!
//! ```ignore
//! let Some(_inside) = Inside::enter() else {
//!     return System.alloc(layout); // tensorpool's own bookkeeping
//! };
//! ```

use std::cell::Cell;

std::thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The calling thread is inside the process-wide allocator until this drops.
pub(crate) struct Inside(());

impl Inside {
    /// Marks the calling thread inside; `None` if it already is (a nested call, from
    /// tensorpool's own bookkeeping).
    #[inline(always)]
    pub(crate) fn enter() -> Option<Inside> {
        // `then`, not `then_some`: an `Inside` made and dropped would clear the mark.
        INSIDE.with(|inside| (!inside.replace(true)).then(|| Inside(())))
    }

    /// [`enter`](Self::enter) if `process_wide` (the caller works for the
    /// process-wide allocator's engine); `None` otherwise or when already inside.
    pub(crate) fn enter_if(process_wide: bool) -> Option<Inside> {
        process_wide.then(Inside::enter).flatten()
    }

    /// Whether the calling thread is inside the process-wide allocator now.
    pub(crate) fn active() -> bool {
        INSIDE.with(Cell::get)
    }
}

impl Drop for Inside {
    #[inline(always)]
    fn drop(&mut self) {
        INSIDE.with(|inside| inside.set(false));
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
    }
}
