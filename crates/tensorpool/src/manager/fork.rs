//! `fork()` in a program whose allocator is a manager (`crate::global`): the child
//! has one thread, the forking one, and must find no lock held by a thread that
//! did not come with it, and no structure half changed.
//!
//! One set of `pthread_atfork` handlers, registered once, takes every lock in one
//! order before the fork and lets them go after it, in the parent and in the child:
//!
//! 1. the background releaser's registry (`releaser`), which its thread holds while
//!    it allocates from the process-wide manager, and the lock it holds while it
//!    runs passes (a pass holds its manager's locks: a fork waits for the thread's
//!    pass to end, for every manager with `background_release`, not the
//!    process-wide one alone; a pass that another thread of the program runs on
//!    its slow path is not waited for, as no other lock of such a manager is);
//! 2. the process-wide manager's engine (`Engine::hold_for_fork`): its stopper's
//!    lock, its registry, every other thread's heap stopped (each owner waits,
//!    outside any operation, until the hold is let go), its shared heap, its page
//!    map's writers, the best-fit tier;
//! 3. the huge tier, the table of regions (for writing: a reader caught at the fork
//!    would leave a count that never drops), the release policy, debug mode's
//!    records.
//!
//! The forking thread is inside the allocator (`util::reentry`) from the first
//! handler to the last, so that what the handlers allocate and free never comes
//! back to the locks they hold (and the table of regions, written-locked, is marked
//! so: `util::reentry::WritingRegions`). In the child, the other threads' heaps are
//! left to be adopted by the child's threads, and a release pass that another
//! thread ran at the fork is ended.
//!
//! Without `membarrier` (Linux before 4.14, or a sandbox that refuses it) the other
//! threads' heaps cannot be stopped (see `slab::thread`): a heap that its thread was
//! changing at the fork is then left as it was, never touched by the child (it
//! stays bound to its dead thread).
//!
//! Two cases are not covered. A `fork()` while another thread starts the manager
//! (its first allocation) leaves the child's first allocation waiting for a start
//! that never ends: in a preloaded program the manager starts before `main`. And,
//! as with jemalloc's handlers, which take their locks the same way: glibc takes its
//! stdio list lock after the `atfork` handlers, so a thread stopped in an allocation
//! while it holds a `FILE`'s lock, and another in `fflush(NULL)` waiting for that
//! lock, would make the fork wait for ever.

use super::{owners::RegionsWrite, release::ReleaseHold, releaser, Inner, MemoryManager};
use crate::observe::debug::TrackerHold;
use crate::tiers::huge::HugeHold;
use crate::tiers::slab::EngineHold;
use crate::util::reentry::Inside;
use std::cell::RefCell;
use std::sync::{Once, OnceLock};

/// The manager held across `fork()`: the process-wide one (the first marked).
static PROCESS_WIDE: OnceLock<MemoryManager> = OnceLock::new();

/// Holds the manager's locks across `fork()` (declared in the order they are let go).
struct ManagerHold<'a> {
    debug: Option<TrackerHold<'a>>,
    release: ReleaseHold<'a>,
    owners: RegionsWrite<'a>,
    huge: HugeHold<'a>,
    engine: EngineHold<'a>,
}

impl Inner {
    fn hold_for_fork(&self) -> ManagerHold<'_> {
        let engine = self.engine.hold_for_fork();
        let huge = self.huge.hold_for_fork();
        let owners = RegionsWrite::lock(&self.owners);
        ManagerHold {
            release: self.release.hold_for_fork(),
            debug: self.debug.as_ref().map(|t| t.hold_for_fork()),
            owners,
            huge,
            engine,
        }
    }
}

/// What the forking thread holds between the handlers: the manager's locks, then
/// the mark (let go last).
struct Holding {
    manager: Option<ManagerHold<'static>>,
    #[allow(dead_code)]
    inside: Option<Inside>,
}

std::thread_local! {
    static HELD: RefCell<Option<Holding>> = const { RefCell::new(None) };
}

/// Makes `mm` the manager held across `fork()` (the first one asked stays), and
/// registers the handlers.
pub(crate) fn hold_across_fork(mm: &MemoryManager) {
    let _ = PROCESS_WIDE.set(mm.clone());
    register_handlers();
}

/// Registers the `fork()` handlers, once per process.
pub(super) fn register_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(unix, not(miri)))]
        // SAFETY: the handlers are plain functions that take and let go of locks
        // through guards kept in a thread-local of the forking thread, which runs
        // all three.
        unsafe {
            libc::pthread_atfork(Some(before_fork), Some(in_parent), Some(in_child));
        }
    });
}

extern "C" fn before_fork() {
    // The thread-local first, so that its first use (which may allocate) comes
    // before any lock is taken.
    HELD.with(|_| ());
    let inside = Inside::enter();
    releaser::before_fork();
    let manager = PROCESS_WIDE.get().map(|mm| mm.inner.hold_for_fork());
    HELD.with(|h| *h.borrow_mut() = Some(Holding { manager, inside }));
}

extern "C" fn in_parent() {
    let held = HELD.with(|h| h.borrow_mut().take());
    if let Some(held) = held {
        drop(held.manager);
        releaser::after_fork();
        drop(held.inside);
    }
}

extern "C" fn in_child() {
    crate::observe::debug::IN_FORKED_CHILD.store(true, std::sync::atomic::Ordering::Relaxed);
    let held = HELD.with(|h| h.borrow_mut().take());
    if let Some(held) = held {
        if let (Some(mm), Some(hold)) = (PROCESS_WIDE.get(), held.manager) {
            // Let go in the parent's order, the engine's last: it needs its hold to
            // know which heaps it stopped.
            let ManagerHold {
                debug,
                release,
                owners,
                huge,
                engine,
            } = hold;
            drop((debug, release, owners, huge));
            mm.inner.engine.in_forked_child(engine);
            mm.inner.release.in_forked_child();
        }
        releaser::in_child();
        drop(held.inside);
    }
}
