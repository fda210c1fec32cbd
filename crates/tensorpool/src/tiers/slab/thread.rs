//! Which thread holds which heap, and how another thread may stop one for a moment.
//!
//! # Binding
//!
//! A thread's first allocation from an engine takes a heap from the engine (one that
//! an exited thread left, or a new one) and keeps it in a thread-local list, the
//! most recent first, so the hot path is one comparison of the engine's id. At
//! exit, a thread-local destructor collects what other threads freed into its
//! slabs, gives its empty slabs back and leaves the heap to the engine, where the
//! next new thread adopts it, slabs and all. A thread that outlives its engine finds
//! it gone (a weak reference) and forgets the heap without touching it.
//!
//! While the thread-local list is being destroyed, the engine's shared heap serves,
//! under a lock. No allocation or free runs inside another on one heap: the
//! engine's own bookkeeping never allocates from the manager it serves, the
//! process-wide allocator's front sends a nested call to the system allocator
//! (`util::reentry`), and an `Upstream` must not call back into the manager it
//! serves (its docs say so; debug builds catch it). The paths that need not use the
//! calling thread's heap (statistics, trim, flush, thread exit) take it with
//! `Heap::try_enter`, which does without it rather than nest an operation.
//!
//! # Leaves
//!
//! The hot paths of the manager's allocations and frees are *leaves*: from the
//! thread's last heap, the class's current slab (or, for a raw free, a slab the
//! last frees found), with no call, so that the compiler saves no register for
//! one. What they cannot finish goes on in a call that ends the operation (a slab
//! to change or to move between lists, another slab of the thread's), or, before
//! anything changed, on the full path (no heap of the engine bound last, a stopper
//! waiting, another tier): `enter_leaf` gives the operation up when a stopper wants
//! the heap, and the full path's `enter` waits for it. With the reentrancy test gone from
//! the hot paths (above), a 64-byte pair through `Allocator` went from 145 to 126
//! instructions and 0.77-0.85x the time (124 once the leaf returned the block alone
//! to callers that need no zero flag).
//!
//! # Stopping a heap
//!
//! `trim()`, statistics and snapshots need every heap's state, also that of a thread
//! that sleeps with free memory in its slabs. The owner's operations take no lock
//! (that would cost a read-modify-write each, about 12 ns here), so the handshake is
//! asymmetric, as in userspace RCU and folly's hazard pointers:
//!
//! ```text
//! owner, per operation                  stopper
//!   active = 1                            lock the heap's stopper mutex
//!   compiler fence                        signal = 1
//!   if signal != 0: wait for the mutex    membarrier(PRIVATE_EXPEDITED)
//!   ... the operation ...                 wait until active == 0
//!   active = 0 (release)                  ... work on the heap ...
//!                                         signal = 0 (release); unlock
//! ```
//!
//! `membarrier` makes every running thread of the process execute a full memory
//! barrier, so that the owner's `active = 1; load signal` is ordered as if it had a
//! fence of its own: either the stopper sees `active == 1` and waits for the
//! operation to end, or the owner sees the signal and waits for the stopper. Where
//! `membarrier` is missing (not Linux, or a kernel before 4.14), running heaps are
//! not stopped and drain what they hold at their next slow path; under loom and Miri
//! the owner executes the fence itself, and the models check the protocol with it.

use super::heap::Heap;
use super::Engine;
use crate::util::reentry::Inside;
use crate::util::sync::{
    spin_wait,
    Ordering::{Acquire, Relaxed, Release},
};
#[cfg(not(loom))]
use crate::util::thread_block;
use allocator_api2::vec::Vec;
use std::alloc::System;
#[cfg(loom)]
use std::cell::Cell;
use std::cell::RefCell;
use std::sync::{Arc, Weak};

/// The fence on the owner's side of the handshake.
#[inline(always)]
fn owner_fence() {
    #[cfg(any(loom, miri))]
    crate::util::sync::fence(crate::util::sync::Ordering::SeqCst);
    #[cfg(not(any(loom, miri)))]
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// The fence on the stopper's side: `membarrier`, or `false` if none is available.
fn stopper_fence() -> bool {
    #[cfg(any(loom, miri))]
    {
        crate::util::sync::fence(crate::util::sync::Ordering::SeqCst);
        true
    }
    #[cfg(all(target_os = "linux", not(any(loom, miri))))]
    {
        membarrier::expedited()
    }
    #[cfg(all(not(target_os = "linux"), not(any(loom, miri))))]
    {
        false
    }
}

#[cfg(all(target_os = "linux", not(any(loom, miri))))]
mod membarrier {
    use std::sync::OnceLock;

    const QUERY: libc::c_int = 0;
    const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn call(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier takes a command and flags and touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_uint,
                0 as libc::c_int,
            )
        }
    }

    /// Whether the process may use expedited private barriers (registered once).
    fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            let supported = call(QUERY);
            supported >= 0
                && supported & PRIVATE_EXPEDITED as libc::c_long != 0
                && call(REGISTER_PRIVATE_EXPEDITED) == 0
        })
    }

    /// A memory barrier on every running thread of the process.
    pub(super) fn expedited() -> bool {
        available() && call(PRIVATE_EXPEDITED) == 0
    }
}

impl Heap {
    /// Starts an operation of the owner; `false` if one is running already (a
    /// nested call: the caller does without the heap). For the paths that need not
    /// use the calling thread's heap (statistics, trim, flush, thread exit); the
    /// allocation and free paths use [`enter`](Self::enter).
    #[inline]
    pub(crate) fn try_enter(&self) -> bool {
        if self.hot.active.load(Relaxed) != 0 {
            return false;
        }
        self.enter();
        true
    }

    /// Starts an operation of the owner, which runs none: the entry points of a
    /// manager's hot paths, which no operation calls (tensorpool's own bookkeeping
    /// never allocates from the manager it serves, and the process-wide allocator's
    /// front sends a nested call to the system allocator before it gets here, see
    /// `util::reentry`). Three instructions fewer than [`try_enter`](Self::try_enter)
    /// on every allocation and free (7% of a typed pair's time).
    #[inline(always)]
    pub(crate) fn enter(&self) {
        if !self.enter_leaf() {
            self.yield_to_stopper();
        }
    }

    /// [`enter`](Self::enter) for a hot path that calls nothing: `false`, and no
    /// operation started, when a stopper wants the heap (the caller's full path
    /// then waits for it in `enter`).
    #[inline(always)]
    pub(crate) fn enter_leaf(&self) -> bool {
        let h = &self.hot;
        debug_assert_eq!(h.active.load(Relaxed), 0, "an operation inside another");
        h.active.store(1, Relaxed);
        owner_fence();
        if h.signal.load(Acquire) != 0 {
            h.active.store(0, Release);
            return false;
        }
        true
    }

    /// Ends an operation of the owner.
    #[inline(always)]
    pub(crate) fn leave(&self) {
        self.hot.active.store(0, Release);
    }

    /// Waits for the stopper, then starts the operation: the owner's mark is clear
    /// on entry ([`enter_leaf`](Self::enter_leaf) gave the operation up).
    #[cold]
    fn yield_to_stopper(&self) {
        // The stopper holds the mutex while it works.
        drop(self.stopper.lock());
        while !self.enter_leaf() {
            drop(self.stopper.lock());
        }
    }
}

/// Heaps stopped for the caller: their owners wait until this is dropped.
pub(crate) struct Stopped<'a> {
    heaps: Vec<(&'a Heap, crate::util::sync::MutexGuard<'a, ()>)>,
}

impl<'a> Stopped<'a> {
    /// Stops every heap of `heaps` that is not the caller's own (it must not be in
    /// an operation of any of them). Without `membarrier`, stops none and returns
    /// an empty set.
    pub(crate) fn all(heaps: &[&'a Heap]) -> Stopped<'a> {
        let mut stopped = Vec::with_capacity(heaps.len());
        for &heap in heaps {
            let guard = heap.stopper.lock();
            heap.hot.signal.store(1, Relaxed);
            stopped.push((heap, guard));
        }
        if !stopper_fence() {
            for (heap, _) in &stopped {
                heap.hot.signal.store(0, Release);
            }
            return Stopped { heaps: Vec::new() };
        }
        for (heap, _) in &stopped {
            while heap.hot.active.load(Acquire) != 0 {
                spin_wait();
            }
        }
        Stopped { heaps: stopped }
    }

    /// The stopped heaps.
    pub(crate) fn heaps(&self) -> impl Iterator<Item = &'a Heap> + '_ {
        self.heaps.iter().map(|(h, _)| *h)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        for (heap, guard) in self.heaps.drain(..) {
            heap.hot.signal.store(0, Release);
            drop(guard);
        }
    }
}

/// One heap a thread holds.
struct Bound {
    engine: u64,
    heap: *const Heap,
    owner: Weak<Engine>,
}

/// The heap the calling thread used last, and its engine's id (0: none): what the
/// hot paths read. Kept in the thread's block (`util::thread_block`), a plain load
/// with no check that it is initialised or destroyed; under loom, in a loom
/// thread-local, one per modelled thread.
#[cfg(loom)]
struct LastHeap {
    engine: Cell<u64>,
    heap: Cell<*const Heap>,
}

/// The calling thread's last heap and its engine's id; `None` during thread-local
/// destruction (only under loom: the block outlives its thread's destructors).
#[inline(always)]
fn last() -> Option<(u64, *const Heap)> {
    #[cfg(not(loom))]
    {
        thread_block::with(|block| Some((block.engine.get(), block.heap.get().cast())))
    }
    #[cfg(loom)]
    LAST.try_with(|last| (last.engine.get(), last.heap.get()))
        .ok()
}

/// Makes `heap` of engine `engine` the calling thread's last heap (engine 0: none).
fn set_last(engine: u64, heap: *const Heap) {
    #[cfg(not(loom))]
    thread_block::with(|block| {
        block.engine.set(engine);
        block.heap.set(heap.cast());
    });
    #[cfg(loom)]
    let _ = LAST.try_with(|last| {
        last.engine.set(engine);
        last.heap.set(heap);
    });
}

/// Every heap of the calling thread. Its destructor gives them back when the thread
/// exits. The list lives in the system allocator's memory: it holds heaps of the
/// process-wide allocator and of other managers, and grows inside either.
struct ThreadHeaps {
    all: RefCell<Vec<Bound, System>>,
}

impl Drop for ThreadHeaps {
    fn drop(&mut self) {
        // From here on the thread's operations take the shared heap (`bind` finds
        // this thread-local destroyed).
        set_last(0, std::ptr::null());
        for bound in self.all.get_mut().drain(..) {
            if let Some(engine) = bound.owner.upgrade() {
                // The process-wide allocator's own bookkeeping while it lets go of the
                // heap comes from the system allocator (see `util::reentry`); the
                // guard ends before `engine` and `bound` are dropped.
                let _inside = Inside::enter_if(engine.process_wide.load(Relaxed));
                // SAFETY: the engine lives, so does the heap it gave this thread.
                engine.abandon(unsafe { &*bound.heap });
            }
            // Otherwise the engine is gone with its heaps: forget the pointer.
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static HEAPS: ThreadHeaps = const {
        ThreadHeaps {
            all: RefCell::new(Vec::new_in(System)),
        }
    };
}
#[cfg(loom)]
loom::thread_local! {
    static LAST: LastHeap = LastHeap {
        engine: Cell::new(0),
        heap: Cell::new(std::ptr::null()),
    };
    static HEAPS: ThreadHeaps = ThreadHeaps {
        all: RefCell::new(Vec::new_in(System)),
    };
}

/// The heap the calling thread used last, if it is one of `engine`'s.
#[inline(always)]
fn last_heap(engine: &Engine) -> Option<*const Heap> {
    let (id, heap) = last()?;
    (id == engine.id).then_some(heap)
}

/// The calling thread's heap of `engine`, inside an operation that lasts as long as
/// the returned guard; `None` when the thread cannot use its heap now (during
/// thread-local destruction).
#[inline(always)]
pub(crate) fn enter(engine: &Arc<Engine>) -> Option<Entered<'_>> {
    let heap = match last_heap(engine) {
        Some(heap) => heap,
        None => bind(engine)?,
    };
    // SAFETY: heaps live as long as their engine, which the caller holds.
    let heap = unsafe { &*heap };
    heap.enter();
    Some(Entered { heap })
}

/// [`enter`] for a hot path that calls nothing (so that no register is saved
/// around a call it would make): `None`, nothing changed, unless the calling
/// thread's last heap is one of `engine`'s and no stopper wants it. The caller's
/// full path then binds a heap, or waits for the stopper.
#[inline(always)]
pub(crate) fn enter_leaf(engine: &Engine) -> Option<Entered<'_>> {
    // SAFETY: heaps live as long as their engine, which the caller holds.
    let heap = unsafe { &*last_heap(engine)? };
    heap.enter_leaf().then_some(Entered { heap })
}

/// [`enter`] if the calling thread already has a heap of `engine` (a free from a
/// thread without one cannot be into its own slab, and makes none).
#[inline(always)]
pub(crate) fn enter_bound(engine: &Arc<Engine>) -> Option<Entered<'_>> {
    let heap = match last_heap(engine) {
        Some(heap) => heap,
        None => {
            let known = HEAPS
                .try_with(|t| {
                    t.all
                        .try_borrow()
                        .is_ok_and(|all| all.iter().any(|b| b.engine == engine.id))
                })
                .unwrap_or(false);
            if !known {
                return None;
            }
            bind(engine)?
        }
    };
    // SAFETY: heaps live as long as their engine, which the caller holds.
    let heap = unsafe { &*heap };
    heap.enter();
    Some(Entered { heap })
}

/// An operation of the calling thread on its heap: ends when dropped.
pub(crate) struct Entered<'h> {
    pub(crate) heap: &'h Heap,
}

impl Entered<'_> {
    /// The owner's token for the heap.
    #[inline(always)]
    pub(crate) fn owned(&self) -> super::heap::Owned<'_> {
        // SAFETY: the calling thread holds its heap inside this operation.
        unsafe { self.heap.owned() }
    }
}

impl Drop for Entered<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.heap.leave();
    }
}

/// Runs `f` on the calling thread's heap of `engine`, inside an operation; `None`
/// when the thread cannot use its heap now.
#[inline(always)]
pub(crate) fn with_heap<R>(engine: &Arc<Engine>, f: impl FnOnce(&Heap) -> R) -> Option<R> {
    let entered = enter(engine)?;
    Some(f(entered.heap))
}

/// The calling thread's heap of `engine`, if it has one (no new binding).
pub(crate) fn current_heap(engine: &Engine) -> *const Heap {
    if let Some(heap) = last_heap(engine) {
        return heap;
    }
    HEAPS
        .try_with(|t| {
            let all = t.all.try_borrow().ok()?;
            all.iter().find(|b| b.engine == engine.id).map(|b| b.heap)
        })
        .ok()
        .flatten()
        .unwrap_or(std::ptr::null())
}

#[cold]
fn bind(engine: &Arc<Engine>) -> Option<*const Heap> {
    let heap = HEAPS
        .try_with(|t| {
            let mut all = t.all.try_borrow_mut().ok()?;
            Some(match all.iter().position(|b| b.engine == engine.id) {
                Some(i) => all[i].heap,
                None => {
                    // Forget heaps of engines that are gone, then take one from this
                    // engine. Not inside the process-wide allocator: the last `Weak`
                    // of a manager frees memory that allocator may have given it.
                    if !Inside::active() {
                        all.retain(|b| b.owner.strong_count() > 0);
                    }
                    let heap = engine.adopt();
                    all.push(Bound {
                        engine: engine.id,
                        heap,
                        owner: Arc::downgrade(engine),
                    });
                    heap
                }
            })
        })
        .ok()??;
    set_last(engine.id, heap);
    Some(heap)
}
