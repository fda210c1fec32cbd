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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

std::thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The engine id of the process-wide manager (0: none yet).
static PROCESS_ENGINE: AtomicU64 = AtomicU64::new(0);

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

    /// [`enter`](Self::enter) where `engine` is the process-wide manager's engine;
    /// `None` otherwise or when already inside.
    pub(crate) fn enter_for(engine: u64) -> Option<Inside> {
        (engine == PROCESS_ENGINE.load(Relaxed))
            .then(Inside::enter)
            .flatten()
    }

    /// Names `engine` the process-wide manager's.
    pub(crate) fn set_process_engine(engine: u64) {
        PROCESS_ENGINE.store(engine, Relaxed);
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
        // Only the process-wide manager's engine marks the thread.
        assert!(Inside::enter_for(u64::MAX).is_none());
        std::thread::spawn(|| assert!(Inside::enter().is_some(), "the mark is per thread"))
            .join()
            .unwrap();
    }
}
