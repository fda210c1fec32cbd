//! A heap: what one thread owns in one engine. Its slabs, per class a current slab
//! to allocate from and lists of partial and empty ones, a cache of free large
//! blocks by size, an inbox of slabs that other threads freed into, and counters
//! that only it writes.
//!
//! Everything here runs on the owner's side: through an [`Owned`] token, which only
//! the thread that holds the heap can make (see `thread`), so the state needs no
//! lock and the hot paths no atomic read-modify-write. An allocation or a free of a
//! block of the current slab touches six cache lines: the thread-local slot, the
//! heap's hot line (handshake and counters), the class's state, the slab record's
//! first line, the top of its stack of free slots and the line of the slot's group.
//!
//! Memory follows use. A new slab for a class is as large as what the heap holds of
//! the class (doubling from a page up to `pool_chunk_size`). A slab that empties
//! stays with the heap, ready for the next allocation of its class, until the heap
//! needs pages the best-fit tier cannot give without growing, or holds more than
//! `thread_cache_bytes` of empty slabs and free large blocks: then it gives its empty
//! slabs back (to the best-fit tier, where any size can use the pages), before
//! anything grows.

use super::page_map::PAGE;
use super::slab::{Own, Place, Slab};
use super::{Class, Engine, SPAN_CLASS};
use crate::error::{Error, OomCause, OutOfMemory, PointerError, Result};
use crate::observe::stats::{Tier, Usage};
use crate::tiers::contract::{self, fits_in_place};
use crate::util::sync::{
    AtomicPtr, AtomicU32, CacheLine, Mutex, Ordering::Acquire, Ordering::Release,
};
use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Capacities of slab records, in slots. A slab takes the smallest that fits.
pub(crate) const RECORD_TIERS: [u32; 4] = [1, 64, 512, MAX_SLOTS];

/// Most slots of one slab.
pub(crate) const MAX_SLOTS: u32 = 4096;

/// A heap keeps in empty slabs and free large blocks up to the most bytes it held
/// live; before pages are taken for a block its cache did not serve, it keeps at
/// most half of 1/`CACHE_SHARE` of them (and at least half of [`CACHE_FLOOR`]).
const CACHE_SHARE: usize = 4;
const CACHE_FLOOR: usize = 256 << 10;

/// How [`Owned::resize`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InPlace {
    /// Not resized (nothing changed).
    No,
    /// Resized within its slot.
    Slot,
    /// A large block whose pages grew (memory may have been committed).
    Pages,
}

/// A change of a heap's live bytes that makes it publish them to the manager's totals.
pub(crate) const PUBLISH_STEP: usize = 64 << 10;

/// The tiers the engine serves, as indexes of [`EngineStats::tiers`](super::EngineStats::tiers).
pub(crate) const SMALL: usize = 0;
pub(crate) const POOL: usize = 1;
pub(crate) const LARGE: usize = 2;

/// The index of `tier` in [`EngineStats::tiers`](super::EngineStats::tiers).
pub(crate) fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Small => SMALL,
        Tier::Pool => POOL,
        _ => LARGE,
    }
}

/// A counter that only its heap's owner writes (a load and a store, no
/// read-modify-write), and anyone reads.
#[derive(Debug, Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    pub(crate) const fn new() -> Count {
        Count(AtomicU64::new(0))
    }

    #[inline(always)]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline(always)]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    #[inline(always)]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }
}

/// What a heap counts of its large blocks (spans).
#[derive(Debug, Default)]
pub(crate) struct TierCounts {
    /// Blocks handed out, and taken back (by the owner, or collected from other
    /// threads' posts).
    pub(crate) allocs: Count,
    pub(crate) frees: Count,
    /// Bytes of live blocks, as rounded (wrapping: the owner's view).
    pub(crate) bytes: Count,
    /// Bytes requested for live blocks. A typed block freed by another thread is
    /// counted off by that thread (it knows the layout), a raw one by the owner
    /// when it collects the free; so per heap this wraps, and only the sum over
    /// heaps is the requested total.
    pub(crate) requested: Count,
}

/// What a heap counts of one class's blocks, on the hot paths: one counter per
/// allocation or free, each written by one side only. Live bytes are `(allocs -
/// frees) * stride`; requested bytes are live bytes less the *waste*, what blocks
/// leave unused of their slots, counted only when a block does not fill its slot
/// (tensors' sizes are mostly multiples of the class spacing: no store at all).
/// A typed block freed by another thread has its waste counted off by that thread
/// (it knows the layout), a raw one by the owner when it collects the free; so per
/// heap the waste wraps, and only the sum over heaps is exact.
#[derive(Debug)]
#[repr(C, align(32))]
pub(crate) struct ClassTally {
    pub(crate) allocs: Count,
    pub(crate) frees: Count,
    pub(crate) waste_in: Count,
    pub(crate) waste_out: Count,
}

impl ClassTally {
    const fn new() -> ClassTally {
        ClassTally {
            allocs: Count::new(),
            frees: Count::new(),
            waste_in: Count::new(),
            waste_out: Count::new(),
        }
    }

    /// Live bytes and requested bytes now, for slots of `stride` bytes (wrapping:
    /// the owner's view).
    pub(crate) fn live(&self, stride: usize) -> (u64, u64) {
        let bytes = self.bytes(stride);
        let waste = self.waste_in.get().wrapping_sub(self.waste_out.get());
        (bytes, bytes.wrapping_sub(waste))
    }

    /// Live bytes alone (the first of [`live`](Self::live)).
    #[inline]
    fn bytes(&self, stride: usize) -> u64 {
        self.blocks().wrapping_mul(stride as u64)
    }

    /// Live blocks (wrapping, as [`live`](Self::live)).
    #[inline]
    pub(crate) fn blocks(&self) -> u64 {
        self.allocs.get().wrapping_sub(self.frees.get())
    }
}

/// The heap's hot cache line: the handshake and the counters of large blocks.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub(crate) struct Hot {
    /// 1 while the owner runs an operation.
    pub(crate) active: AtomicU32,
    /// Non-zero while a stopper wants the heap.
    pub(crate) signal: AtomicU32,
    pub(crate) large: TierCounts,
    /// Bytes of the live slots of every class, as the classes' tallies count them
    /// (wrapping: the owner's view): what the cache's budget and the publications
    /// read at frees and refills, in one load where summing the tallies of every
    /// class used took 300 instructions in a program of 50 classes (12% of
    /// sk_mlp's replay).
    pub(crate) slot_bytes: Count,
    /// What those slots leave unused, as the tallies' waste counts it (wrapping, as
    /// they do): with `slot_bytes`, a publication's requested bytes in one load where
    /// no explicit pool asks for the tiers apart (a program of blocks up to 64 KiB
    /// published at most refills, and summed its ~50 classes each time: 6% of its
    /// instructions under `LD_PRELOAD`).
    pub(crate) slot_waste: Count,
}

/// Per class, what changes only on slow paths.
#[derive(Debug, Default)]
pub(crate) struct ClassCounts {
    /// Slabs held, and their bytes.
    pub(crate) slabs: Count,
    pub(crate) slab_bytes: Count,
    /// Slabs made (allocations that had to take pages).
    pub(crate) misses: Count,
    /// Bytes of small slabs given back when they emptied since the class last made a
    /// slab ([`Owned::settle`]): the next one is made as large as they were together,
    /// one slab where they were several.
    pub(crate) merged: Count,
}

/// What a heap counts beside the hot line; read by `stats()` while the owner runs.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) classes: Box<[ClassCounts]>,
    /// Cached large blocks held (live or cached) and their bytes; blocks made.
    pub(crate) spans: Count,
    pub(crate) span_bytes: Count,
    pub(crate) span_misses: Count,
    /// Bytes of empty slabs (not current) and cached large blocks.
    pub(crate) cached_bytes: Count,
    /// Frees other threads posted, collected here.
    pub(crate) remote_frees: Count,
    /// Frees refused when collected, or found stale when a slot was handed out.
    pub(crate) late_refusals: Count,
    /// Allocated and requested bytes as last added to the manager's totals.
    pub(crate) published_allocated: Count,
    pub(crate) published_requested: Count,
    /// The allocated bytes of the slab tiers (`SMALL`, `POOL`) as last published.
    pub(crate) published_tiers: [Count; 2],
}

/// The owner's state of one class.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct ClassState {
    pub(crate) current: *const Slab,
    /// The current slab's pages: the typed free's test that a block is in it.
    base: usize,
    bytes: usize,
    /// The class's stride, copied here so that the hot paths read this line and not
    /// the engine's class table.
    stride: usize,
    partial: *const Slab,
    empty: *const Slab,
    /// Bytes of this class's slabs held (for the size of the next slab).
    held: usize,
    /// The class's allocations at the last release pass: an empty current slab with
    /// none since is unused.
    seen_allocs: u64,
}

/// A heap's free large blocks: a stack per page count (linked both ways through
/// `Own::prev` and `Own::next`, newest at the head), and a bitmap of the counts that
/// have one, for the largest or the oldest in a few steps.
#[derive(Debug)]
struct SpanCache {
    heads: Box<[*const Slab]>,
    tails: Box<[*const Slab]>,
    sizes: Box<[u64]>,
    /// Blocks cached so far: each block's stamp, which orders them oldest first.
    clock: u64,
}

impl SpanCache {
    fn new(most_pages: usize) -> SpanCache {
        SpanCache {
            heads: vec![std::ptr::null(); most_pages + 1].into_boxed_slice(),
            tails: vec![std::ptr::null(); most_pages + 1].into_boxed_slice(),
            sizes: vec![0; (most_pages + 1).div_ceil(64)].into_boxed_slice(),
            clock: 0,
        }
    }

    /// Caches `slab` (of the caller's heap, on no list), whose owner's side is `own`.
    ///
    /// # Safety
    ///
    /// The caller holds the heap whose slabs the cache holds.
    unsafe fn push(&mut self, pages: usize, slab: &Slab, own: &mut Own) {
        self.clock += 1;
        slab.set_cached_at(self.clock);
        let head = self.heads[pages];
        own.prev = std::ptr::null();
        own.next = head;
        // SAFETY: cached slabs are live slabs of the caller's heap.
        match unsafe { head.as_ref() } {
            // SAFETY: as above.
            Some(head) => unsafe { head.own() }.prev = slab,
            None => self.tails[pages] = slab,
        }
        self.heads[pages] = slab;
        self.sizes[pages / 64] |= 1 << (pages % 64);
    }

    /// The newest cached block of `pages` pages, taken out.
    ///
    /// # Safety
    ///
    /// The caller holds the heap whose slabs the cache holds.
    #[inline(always)]
    unsafe fn pop(&mut self, pages: usize) -> Option<&Slab> {
        // SAFETY: by the caller's contract.
        unsafe { self.take_end::<true>(pages) }
    }

    /// The block cached longest ago, of any size, taken out.
    ///
    /// # Safety
    ///
    /// The caller holds the heap whose slabs the cache holds.
    unsafe fn pop_oldest(&mut self) -> Option<&Slab> {
        let mut oldest: Option<(u64, usize)> = None;
        for (word, &bits) in self.sizes.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let pages = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // SAFETY: a count with its bit set has a block, live, of the heap.
                let stamp = unsafe { &*self.tails[pages] }.cached_at();
                if oldest.is_none_or(|(s, _)| stamp < s) {
                    oldest = Some((stamp, pages));
                }
            }
        }
        // SAFETY: by the caller's contract.
        unsafe { self.take_end::<false>(oldest?.1) }
    }

    /// Takes the block at one end of the list of `pages` pages (the head, newest,
    /// or the tail, oldest) off it, clearing the count's bit when the list empties.
    /// One body for both ends, each compiled to its own few instructions.
    ///
    /// # Safety
    ///
    /// The caller holds the heap whose slabs the cache holds.
    #[inline(always)]
    unsafe fn take_end<const HEAD: bool>(&mut self, pages: usize) -> Option<&Slab> {
        let end = if HEAD {
            &mut self.heads[pages]
        } else {
            &mut self.tails[pages]
        };
        // SAFETY: cached slabs are live slabs of the caller's heap.
        let slab = unsafe { end.as_ref() }?;
        // SAFETY: as above.
        let own = unsafe { slab.own() };
        // The neighbour inward, and its link back toward this end.
        let inward = if HEAD { &mut own.next } else { &mut own.prev };
        *end = *inward;
        // SAFETY: as above.
        match unsafe { inward.as_ref() } {
            Some(next) => {
                // SAFETY: as above.
                let next = unsafe { next.own() };
                *(if HEAD { &mut next.prev } else { &mut next.next }) = std::ptr::null();
            }
            None => {
                // The list is empty: its other end too.
                let other_end = if HEAD {
                    &mut self.tails[pages]
                } else {
                    &mut self.heads[pages]
                };
                *other_end = std::ptr::null();
                self.sizes[pages / 64] &= !(1 << (pages % 64));
            }
        }
        *inward = std::ptr::null();
        Some(slab)
    }

    /// The largest page count with a cached block.
    fn largest(&self) -> Option<usize> {
        let (word, bits) = self.sizes.iter().enumerate().rev().find(|(_, &b)| b != 0)?;
        Some(word * 64 + 63 - bits.leading_zeros() as usize)
    }
}

/// The owner's state.
/// `repr(C)`, aligned to a line: the classes' pointer, which every allocation reads,
/// and the slabs of the last frees, which every sizeless free reads, share the
/// first line. (Elsewhere in the state, the frees' line went cold between
/// allocations in a Python loop: two misses an iteration, NumPy's whole allocator
/// costs fewer.)
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct State {
    pub(crate) classes: Box<[ClassState]>,
    /// The slabs of the last two frees that had to look in the page map, newest
    /// first: the next frees of blocks in them skip the map (sizeless frees tend to
    /// alternate between two sizes, as NumPy's temporaries and results do).
    recent: [Recent; 2],
    /// The classes this heap has made slabs for, or counted the waste of a typed
    /// block it freed into another thread's slab: the only ones whose counters are
    /// not all zero ([`Owned::net`] sums them).
    used: Vec<u32>,
    /// Free large blocks by pages.
    spans: SpanCache,
    /// Spare records by capacity tier, linked through `Own::next`.
    spare: [*const Slab; RECORD_TIERS.len()],
    /// Every record of this heap, boxed: other threads hold their addresses, which
    /// must not move when the list grows.
    #[allow(clippy::vec_box)]
    records: Vec<Box<Slab>>,
    /// Bytes of empty slabs (not current) and cached blocks.
    cached: usize,
    /// The most bytes this heap held live (when it looked: at its cache's changes).
    high_live: usize,
}

/// A slab of this heap and its pages, for [`Owned::last_holding`].
#[derive(Debug, Clone, Copy)]
struct Recent {
    slab: *const Slab,
    base: usize,
    bytes: usize,
}

impl Recent {
    const NONE: Recent = Recent {
        slab: std::ptr::null(),
        base: 0,
        bytes: 0,
    };
}

/// An empty slab whose class holds at least this many times its bytes in other
/// slabs goes back when it empties ([`Owned::settle`]).
const CONSOLIDATE: usize = 8;

/// What a free of a slot of a class did ([`Owned::release_slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freed {
    /// Nothing: the address is no live block of the kind freed.
    No,
    /// Freed.
    Done,
    /// Freed, and the slab must move between its class's lists
    /// ([`Owned::settle`]).
    Moves,
}

/// One thread's heap in one engine.
#[repr(C)]
pub(crate) struct Heap {
    // ---- the owner's: its handshake, its state, its hot counters ----
    pub(crate) hot: Hot,
    state: UnsafeCell<State>,
    /// Per class, the counters of the hot paths.
    pub(crate) tally: Box<[ClassTally]>,
    pub(crate) counts: Counts,
    /// Every record of this heap, newest first, linked through `Slab::all_next`.
    records: AtomicPtr<Slab>,
    /// Held by a stopper while it works on the heap (see `thread`).
    pub(crate) stopper: Mutex<()>,
    /// The name of the thread that holds it now, for statistics.
    pub(crate) thread: crate::util::sync::PlainMutex<String>,
    // ---- written by other threads at their frees: a line of its own, so that
    // their posts do not take the owner's lines (the tally's pointer shared one) ----
    _posters_line: [CacheLine; 0],
    /// Slabs that other threads posted frees to since the owner last looked.
    pub(crate) inbox: AtomicPtr<Slab>,
}

// SAFETY: `state` is touched only through an `Owned` token, which exists only for the
// thread that holds the heap (the handshake and the engine's registry hand it over
// with release/acquire ordering); everything else is atomic or locked.
unsafe impl Send for Heap {}
// SAFETY: as above.
unsafe impl Sync for Heap {}

/// Owns a heap at a fixed address. Records, threads and stoppers reach the heap
/// through raw pointers while its owner moves between lists; a `Box` would claim
/// unique access to the heap each time it moved, so the heap is kept behind a plain
/// pointer and only ever shared.
pub(crate) struct HeapBox(NonNull<Heap>);

impl HeapBox {
    fn new(heap: Heap) -> Self {
        HeapBox(NonNull::from(Box::leak(Box::new(heap))))
    }
}

impl std::ops::Deref for HeapBox {
    type Target = Heap;

    fn deref(&self) -> &Heap {
        // SAFETY: the pointer came from `Box::leak` and is freed only in `drop`.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for HeapBox {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak`; the engine drops its heaps only
        // when no thread, record or stopper can reach them any more.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl std::fmt::Debug for HeapBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

// SAFETY: a `HeapBox` is a `Box<Heap>` that only hands out shared references, and
// `Heap` is `Send + Sync`.
unsafe impl Send for HeapBox {}
// SAFETY: as above.
unsafe impl Sync for HeapBox {}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("thread", &*self.thread.lock())
            .finish_non_exhaustive()
    }
}

impl Heap {
    /// A heap for an engine with `classes` and large blocks of up to `span_pages`
    /// pages.
    pub(crate) fn boxed(classes: &[Class], span_pages: usize) -> HeapBox {
        HeapBox::new(Heap {
            hot: Hot::default(),
            state: UnsafeCell::new(State {
                classes: classes
                    .iter()
                    .map(|class| ClassState {
                        stride: class.stride,
                        current: std::ptr::null(),
                        base: 0,
                        bytes: 0,
                        partial: std::ptr::null(),
                        empty: std::ptr::null(),
                        held: 0,
                        seen_allocs: 0,
                    })
                    .collect(),
                used: Vec::new(),
                spans: SpanCache::new(span_pages),
                spare: [std::ptr::null(); RECORD_TIERS.len()],
                records: Vec::new(),
                cached: 0,
                high_live: 0,
                recent: [Recent::NONE; 2],
            }),
            stopper: Mutex::new(()),
            _posters_line: [],
            inbox: AtomicPtr::new(std::ptr::null_mut()),
            records: AtomicPtr::new(std::ptr::null_mut()),
            tally: classes.iter().map(|_| ClassTally::new()).collect(),
            counts: Counts {
                classes: classes.iter().map(|_| ClassCounts::default()).collect(),
                ..Counts::default()
            },
            thread: crate::util::sync::PlainMutex::new(String::new()),
        })
    }

    /// The owner's token.
    ///
    /// # Safety
    ///
    /// The caller holds the heap (see `thread`): it is the heap's thread inside an
    /// operation, or it stopped the heap, or it holds the lock of a heap shared by
    /// lock; and it makes no second token while this one lives.
    #[inline(always)]
    pub(crate) unsafe fn owned(&self) -> Owned<'_> {
        Owned { heap: self }
    }

    /// Every record of this heap, live or spare (readable while the owner runs).
    pub(crate) fn records(&self) -> impl Iterator<Item = &Slab> + '_ {
        let mut next = self.records.load(Acquire).cast_const();
        std::iter::from_fn(move || {
            // SAFETY: records live as long as their heap, and are published with
            // release ordering after they are made.
            let slab = unsafe { next.as_ref()? };
            next = slab.all_next.load(Acquire).cast_const();
            Some(slab)
        })
    }

    /// Allocated and requested bytes of this heap's live blocks, from its counters
    /// (wrapping: read while the owner runs, they may be a moment apart), summed over
    /// `classes` (those that may have counted anything) and the large blocks.
    fn net_of(&self, classes: impl Iterator<Item = usize>, strides: &[usize]) -> (usize, usize) {
        let large = &self.hot.large;
        classes.fold(
            (large.bytes.get() as usize, large.requested.get() as usize),
            |(bytes, requested), class| {
                let (b, r) = self.tally[class].live(strides[class]);
                (
                    bytes.wrapping_add(b as usize),
                    requested.wrapping_add(r as usize),
                )
            },
        )
    }

    /// [`net_of`](Self::net_of) every class: for readers other than the owner.
    pub(crate) fn net(&self, eng: &Engine) -> (usize, usize) {
        self.net_of(0..self.tally.len(), &eng.strides)
    }
}

/// A heap's live bytes, as [`Owned::publish`] adds them to the manager's totals.
struct Sums {
    allocated: usize,
    requested: usize,
    /// Allocated bytes of the slab tiers, by `SMALL` and `POOL`.
    tiers: [u64; 2],
}

/// Proof that the caller holds a heap: the owner's operations.
pub(crate) struct Owned<'a> {
    pub(crate) heap: &'a Heap,
}

/// A list of slabs linked through `Own::prev` and `Own::next`.
///
/// # Safety (of every function here)
///
/// The caller holds the heap that owns every slab involved.
mod list {
    use super::*;

    pub(super) unsafe fn push(head: &mut *const Slab, slab: &Slab, own: &mut Own) {
        own.prev = std::ptr::null();
        own.next = *head;
        if !head.is_null() {
            // SAFETY: list members belong to the caller's heap.
            unsafe { (**head).own().prev = slab };
        }
        *head = slab;
    }

    pub(super) unsafe fn remove(head: &mut *const Slab, own: &mut Own) {
        // SAFETY: list members belong to the caller's heap.
        unsafe {
            if own.prev.is_null() {
                *head = own.next;
            } else {
                (*own.prev).own().next = own.next;
            }
            if !own.next.is_null() {
                (*own.next).own().prev = own.prev;
            }
        }
        own.prev = std::ptr::null();
        own.next = std::ptr::null();
    }
}

impl Owned<'_> {
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    fn state(&self) -> &mut State {
        // SAFETY: an `Owned` token proves the caller holds the heap. Callers keep
        // each reference short: none is used after another call of `state()` (one
        // per statement, or held across calls that do not reach `state()`).
        unsafe { &mut *self.heap.state.get() }
    }

    /// Everything of a slab of this heap.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    fn own<'s>(&self, slab: &'s Slab) -> &'s mut Own {
        debug_assert_eq!(slab.heap(), self.heap as *const Heap);
        // SAFETY: the slab belongs to the heap this token holds.
        unsafe { slab.own() }
    }

    #[inline(always)]
    fn tally(&self, class: usize) -> &ClassTally {
        debug_assert!(class < self.heap.tally.len());
        // SAFETY: classes come from the engine's size classes or pools, whose count
        // is the length of the tally.
        unsafe { self.heap.tally.get_unchecked(class) }
    }

    /// Counts a block of `class` handed out for `size` bytes of a slot of `stride`.
    #[inline(always)]
    fn count_grant(&self, class: usize, stride: usize, size: usize) {
        let tally = self.tally(class);
        let hot = &self.heap.hot;
        tally.allocs.add(1);
        hot.slot_bytes.add(stride as u64);
        if size != stride {
            let waste = (stride - size) as u64;
            tally.waste_in.add(waste);
            hot.slot_waste.add(waste);
        }
    }

    /// Counts `blocks` blocks of `class`, slots of `stride`, freed, leaving `waste`
    /// bytes of them unused.
    #[inline(always)]
    fn count_free(&self, class: usize, stride: usize, blocks: u64, waste: usize) {
        let tally = self.tally(class);
        let hot = &self.heap.hot;
        tally.frees.add(blocks);
        hot.slot_bytes.sub(blocks.wrapping_mul(stride as u64));
        if waste != 0 {
            tally.waste_out.add(waste as u64);
            hot.slot_waste.sub(waste as u64);
        }
    }

    /// Allocated and requested bytes of this heap's live blocks (the owner's view:
    /// the classes it used).
    pub(crate) fn net(&self, eng: &Engine) -> (usize, usize) {
        let used = &self.state().used;
        self.heap
            .net_of(used.iter().map(|&c| c as usize), &eng.strides)
    }

    /// The allocated bytes of [`net`](Self::net) alone, from two running counts: what
    /// the cache's budget reads each time a heap keeps a large block or an empty slab,
    /// and a publication's test of whether it is due.
    pub(crate) fn allocated(&self, eng: &Engine) -> usize {
        let hot = &self.heap.hot;
        let allocated = hot.large.bytes.get().wrapping_add(hot.slot_bytes.get()) as usize;
        debug_assert_eq!(allocated, self.net(eng).0, "the allocated bytes of `net`");
        allocated
    }

    // ---- allocation ------------------------------------------------------------

    /// The hot path of an allocation: a block of class `class` for `size` bytes from
    /// the current slab, and whether it is known zero; `None` when the current slab
    /// has no free slot (then [`grant`](Self::grant) takes the slow path), with
    /// nothing changed. Plain loads and stores.
    #[inline(always)]
    pub(crate) fn grant_hot(
        &self,
        eng: &Engine,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        debug_assert!(class < eng.classes.len());
        // SAFETY: classes come from the engine's size classes or pools, whose count
        // is the length of both arrays.
        let state = unsafe { self.state().classes.get_unchecked(class) };
        // SAFETY: a current slab is a live slab of this heap.
        let slab = unsafe { state.current.as_ref() }?;
        let own = self.own(slab);
        // SAFETY: this heap owns the slab.
        let (slot, zero, stale) = unsafe { slab.grant_slot(own, raw, size) }?;
        if stale != 0 {
            // Printed at the next refill: the hot path calls nothing.
            self.count_late(eng, stale);
        }
        self.count_grant(class, state.stride, size);
        // SAFETY: `slot < slots`, so the offset lies inside the slab's pages, which
        // are not null.
        let ptr = unsafe { NonNull::new_unchecked(own.base.add(slot as usize * state.stride)) };
        Some((ptr, zero))
    }

    /// The hot path of a free of a block of this heap's `slab`: frees it if it is a
    /// live slot with raw flag `raw` and returns `true`; otherwise changes nothing
    /// (the slow path says why).
    #[inline(always)]
    pub(crate) fn release_hot(
        &self,
        eng: &Engine,
        slab: &Slab,
        addr: usize,
        raw: bool,
        size: usize,
    ) -> bool {
        let class = slab.class();
        if class == SPAN_CLASS {
            return self.release_span(eng, slab, addr, raw, size);
        }
        match self.release_slot(slab, addr, raw, size) {
            Freed::No => false,
            Freed::Done => true,
            Freed::Moves => {
                self.settle(eng, slab, class as usize);
                true
            }
        }
    }

    /// [`release_hot`](Self::release_hot) of a large block (`slab` is a span of this
    /// heap): into the cache if it is live with raw flag `raw`, and `true`; otherwise
    /// `false`, nothing changed.
    #[inline(always)]
    pub(crate) fn release_span(
        &self,
        eng: &Engine,
        slab: &Slab,
        addr: usize,
        raw: bool,
        size: usize,
    ) -> bool {
        debug_assert_eq!(slab.class(), SPAN_CLASS);
        let Some(requested) = self.free_slot(slab, addr, raw, size) else {
            return false;
        };
        self.span_freed(self.own(slab).bytes, requested);
        self.cache_span(eng, slab);
        true
    }

    /// [`release_hot`](Self::release_hot) of a slab of a class (not a large block),
    /// calling nothing: whether the block was freed, and whether the slab must then
    /// move ([`settle`](Self::settle)).
    #[inline(always)]
    pub(crate) fn release_slot(&self, slab: &Slab, addr: usize, raw: bool, size: usize) -> Freed {
        debug_assert_ne!(slab.class(), SPAN_CLASS);
        let Some(requested) = self.free_slot(slab, addr, raw, size) else {
            return Freed::No;
        };
        let stride = slab.stride();
        self.count_free(slab.class() as usize, stride, 1, stride - requested);
        let own = self.own(slab);
        if own.place == Place::Full || (own.place != Place::Current && slab.live() == 0) {
            return Freed::Moves;
        }
        Freed::Done
    }

    /// Frees the slot `addr` starts in this heap's `slab` if it is live with raw flag
    /// `raw` (and no other thread posted its free): the size requested for it (`size`
    /// for a typed one); `None`, nothing changed, otherwise. Counts nothing.
    #[inline(always)]
    fn free_slot(&self, slab: &Slab, addr: usize, raw: bool, size: usize) -> Option<usize> {
        let slot = slab.slot_of(addr).ok()?;
        if !slab.may_free(slot, raw) {
            return None;
        }
        let requested = if raw { slab.requested(slot) } else { size };
        // SAFETY: this heap owns the slab; the slot was checked live.
        unsafe { slab.release(self.own(slab), slot) };
        Some(requested)
    }

    /// Resizes the live block at `addr` of this heap's `slab` in place to `size`
    /// bytes, if its slot holds them and is not more than twice as large (a smaller
    /// block then serves better), or if it is a large block whose pages can grow in
    /// place to hold them ([`grow_span`](Self::grow_span)): how it went (`InPlace::No`:
    /// nothing changed). `typed` is a typed holder's size (its layout's; the caller
    /// keeps the block in its class, see the manager's `resize_typed_in_place`);
    /// `None` for a raw block, whose slot records its size. The requested size
    /// changes, and the counts that follow it.
    pub(crate) fn resize(
        &self,
        eng: &Engine,
        slab: &Slab,
        addr: usize,
        size: usize,
        typed: Option<usize>,
    ) -> InPlace {
        let Ok(slot) = slab.slot_of(addr) else {
            return InPlace::No;
        };
        let raw = typed.is_none();
        if !slab.may_free(slot, raw) {
            return InPlace::No;
        }
        let how = if fits_in_place(slab.stride(), size) {
            InPlace::Slot
        } else if size > slab.stride()
            && slab.class() == SPAN_CLASS
            && self.grow_span(eng, slab, size)
        {
            InPlace::Pages
        } else {
            return InPlace::No;
        };
        let old = match typed {
            Some(old) => old,
            None => {
                let old = slab.requested(slot);
                // SAFETY: this heap owns the slab, the slot is live and raw (checked),
                // and the caller's contract keeps other threads from freeing it
                // meanwhile.
                unsafe { slab.set_requested(slot, size) };
                old
            }
        };
        let (old, new) = (old as u64, size as u64);
        match slab.class() {
            SPAN_CLASS => self.heap.hot.large.requested.add(new.wrapping_sub(old)),
            // The waste counted at allocation changes with the size.
            class => {
                let less = old.wrapping_sub(new);
                self.tally(class as usize).waste_in.add(less);
                self.heap.hot.slot_waste.add(less);
            }
        }
        if how == InPlace::Pages {
            // A slow path (the block's bytes grew): where peaks are recorded.
            self.publish(eng);
        }
        how
    }

    /// The hot path of a typed free of a block of `class` in `slab`, a slab of this
    /// heap other than the class's current one: frees it and returns `true`; `false`
    /// (nothing changed) if `addr` does not start a slot of a slab of the class. As
    /// for the current slab, the `Allocator` contract vouches that the slot is live
    /// (checked in debug builds).
    #[inline(always)]
    pub(crate) fn release_typed(
        &self,
        eng: &Engine,
        slab: &Slab,
        class: usize,
        addr: usize,
        size: usize,
    ) -> bool {
        match self.release_typed_slot(slab, class, addr, size) {
            Freed::No => false,
            Freed::Done => true,
            Freed::Moves => {
                self.settle(eng, slab, class);
                true
            }
        }
    }

    /// [`release_typed`](Self::release_typed), calling nothing: whether the block
    /// was freed, and whether the slab must then move ([`settle`](Self::settle)).
    #[inline(always)]
    pub(crate) fn release_typed_slot(
        &self,
        slab: &Slab,
        class: usize,
        addr: usize,
        size: usize,
    ) -> Freed {
        if slab.class() as usize != class {
            return Freed::No;
        }
        let Ok(slot) = slab.slot_of(addr) else {
            return Freed::No;
        };
        debug_assert!(slab.may_free(slot, false), "not a live typed block");
        let own = self.own(slab);
        // SAFETY: this heap owns the slab; the caller's contract makes the slot live.
        unsafe { slab.release_typed(own, slot) };
        let stride = slab.stride();
        self.count_free(class, stride, 1, stride - size);
        if own.place == Place::Full || (own.place != Place::Current && slab.live() == 0) {
            return Freed::Moves;
        }
        Freed::Done
    }

    /// The hot path of a typed free of a block of `class` (the layout's): if the
    /// block is in the class's current slab, frees it and returns `true`. The
    /// `Allocator` contract vouches for the block (checked in debug builds); a raw
    /// free of it that another thread posted meanwhile is refused when collected.
    #[inline(always)]
    pub(crate) fn release_typed_hot(&self, class: usize, ptr: *mut u8, size: usize) -> bool {
        // SAFETY: as in `grant_hot`.
        let cls = unsafe { self.state().classes.get_unchecked(class) };
        let offset = ptr.addr().wrapping_sub(cls.base);
        if offset >= cls.bytes {
            return false;
        }
        // SAFETY: a class with a non-empty extent has a current slab of this heap.
        let slab = unsafe { &*cls.current };
        debug_assert!(
            slab.slot_of(ptr.addr())
                .is_ok_and(|slot| slab.may_free(slot, false)),
            "not a live typed block"
        );
        let slot = crate::tiers::slab::slab::divide(offset, slab.magic());
        // SAFETY: this heap owns the slab; the caller's contract makes the slot live.
        unsafe { slab.release_typed(self.own(slab), slot as u32) };
        self.count_free(class, cls.stride, 1, cls.stride - size);
        true
    }

    /// One of the slabs of the last frees that looked in the page map, if it holds
    /// `addr`.
    #[inline(always)]
    pub(crate) fn last_holding(&self, addr: usize) -> Option<&Slab> {
        let st = self.state();
        let hit = st
            .recent
            .iter()
            .find(|r| addr.wrapping_sub(r.base) < r.bytes)?;
        // SAFETY: remembered slabs are slabs of this heap, forgotten when they are
        // given back.
        Some(unsafe { &*hit.slab })
    }

    /// Remembers `slab`, of this heap, for [`last_holding`](Self::last_holding).
    #[inline(always)]
    pub(crate) fn remember(&self, slab: &Slab) {
        let own = self.own(slab);
        let st = self.state();
        st.recent[1] = st.recent[0];
        st.recent[0] = Recent {
            slab,
            base: own.base.addr(),
            bytes: own.bytes,
        };
    }

    /// A block of class `class` for `size` bytes; and whether it is known zero.
    pub(crate) fn grant(
        &self,
        eng: &Engine,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        match self.grant_hot(eng, class, size, raw) {
            Some(served) => Ok(served),
            None => self.grant_slow(eng, class, size, raw),
        }
    }

    #[cold]
    fn grant_slow(
        &self,
        eng: &Engine,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        if let Some(served) = self.grant_refill(eng, class, size, raw) {
            return Ok(served);
        }
        let slab = self.new_slab(eng, class)?;
        // SAFETY: a new slab is a live slab of this heap.
        self.make_current(class, unsafe { &*slab });
        let served = self
            .grant_hot(eng, class, size, raw)
            .expect("a new slab has a free slot");
        // A slow path: where peaks are recorded.
        self.publish(eng);
        Ok(served)
    }

    /// The hot path's next step when the current slab of `class` has no free slot:
    /// collect other threads' frees, then move to a slab of the class with free
    /// slots, and take one; `None` when the heap holds none (a new slab is needed:
    /// the full path, which may take pages).
    #[cold]
    #[inline(never)]
    pub(crate) fn grant_refill(
        &self,
        eng: &Engine,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        self.collect_inbox(eng);
        loop {
            if let Some(served) = self.grant_hot(eng, class, size, raw) {
                // A slow path: where peaks are recorded, and the late refusals that
                // hot paths counted (this loop's too) are printed.
                self.publish(eng);
                eng.report_pending_late_refusals();
                return Some(served);
            }
            let cls = &mut self.state().classes[class];
            if !cls.current.is_null() {
                // SAFETY: a current slab is a live slab of this heap.
                let own = self.own(unsafe { &*cls.current });
                // Full: it leaves the class's hands until a free brings it back.
                own.place = Place::Full;
                cls.current = std::ptr::null();
                cls.bytes = 0;
            }
            let next = if !cls.partial.is_null() {
                cls.partial
            } else if !cls.empty.is_null() {
                cls.empty
            } else {
                eng.report_pending_late_refusals();
                return None;
            };
            // SAFETY: list members are live slabs of this heap.
            self.make_current(class, unsafe { &*next });
        }
    }

    /// Makes `slab`, a slab of `class` that is not current, its current slab.
    fn make_current(&self, class: usize, slab: &Slab) {
        let own = self.own(slab);
        let was_empty = own.place == Place::Empty;
        let cls = &mut self.state().classes[class];
        // SAFETY: list members belong to this heap.
        unsafe {
            match own.place {
                Place::Partial => list::remove(&mut cls.partial, own),
                Place::Empty => list::remove(&mut cls.empty, own),
                _ => {}
            }
        }
        own.place = Place::Current;
        own.idle = 0;
        cls.current = slab;
        cls.base = own.base.addr();
        cls.bytes = own.bytes;
        // A current slab is not counted as cached, even when it is empty.
        if was_empty {
            self.uncache(own.bytes);
        }
    }

    /// A large block of `pages` pages for `size` bytes from this heap's cache, and
    /// whether it is known zero; `None` when the cache has none of that size.
    #[inline(always)]
    pub(crate) fn grant_span_fast(
        &self,
        eng: &Engine,
        pages: usize,
        size: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        // SAFETY: the cache holds slabs of this heap.
        let slab = unsafe { self.state().spans.pop(pages) }?;
        let own = self.own(slab);
        self.uncache(own.bytes);
        Some(self.hand_out_span(eng, slab, own, size, raw))
    }

    /// A large block of `pages` pages for `size` bytes, from this heap's cache or a
    /// new span; and whether it is known zero.
    pub(crate) fn grant_span(
        &self,
        eng: &Engine,
        pages: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        if let Some(served) = self.grant_span_fast(eng, pages, size, raw) {
            return Ok(served);
        }
        self.collect_inbox(eng);
        if let Some(served) = self.grant_span_fast(eng, pages, size, raw) {
            return Ok(served);
        }
        // SAFETY: a new span is a live slab of this heap.
        let slab = unsafe { &*self.new_span(eng, pages)? };
        let served = self.hand_out_span(eng, slab, self.own(slab), size, raw);
        // A slow path: where peaks are recorded.
        self.publish(eng);
        Ok(served)
    }

    #[inline(always)]
    fn hand_out_span(
        &self,
        eng: &Engine,
        slab: &Slab,
        own: &mut Own,
        size: usize,
        raw: bool,
    ) -> (NonNull<u8>, bool) {
        own.place = Place::Full;
        // SAFETY: this heap owns the slab.
        let (slot, zero, stale) =
            unsafe { slab.grant_slot(own, raw, size) }.expect("a cached block is free");
        if stale != 0 {
            self.refused_late(eng, stale);
        }
        let large = &self.heap.hot.large;
        large.allocs.add(1);
        large.bytes.add(own.bytes as u64);
        large.requested.add(size as u64);
        (slab.slot_ptr(own, slot), zero)
    }

    // ---- frees -----------------------------------------------------------------

    /// Grows live raw large block `slab` in place to hold `size` bytes, with an
    /// eighth more room (up to the largest large block, `medium_threshold`): its
    /// pages extend into free pages of the best-fit tier after them, or at the top of
    /// its segment. `false`, nothing changed, when they cannot.
    fn grow_span(&self, eng: &Engine, slab: &Slab, size: usize) -> bool {
        let most = eng.span_pages * PAGE;
        let need = super::round_to_page(size);
        if need > most {
            return false;
        }
        let room = super::round_to_page(contract::with_room(size)).min(most);
        let own = self.own(slab);
        let (base, bytes) = (own.base, own.bytes);
        let base = NonNull::new(base).expect("a live slab has pages");
        let to = if eng.large.grow_pages(base, bytes, room) {
            room
        } else if room != need && eng.large.grow_pages(base, bytes, need) {
            need
        } else {
            return false;
        };
        // SAFETY: this heap owns the slab, a span whose slot is live (the caller
        // checked), and its pages now reach `to` bytes.
        unsafe { slab.regrow(own, to) };
        for recent in &mut self.state().recent {
            if std::ptr::eq(recent.slab, slab) {
                recent.bytes = to;
            }
        }
        let delta = (to - bytes) as u64;
        self.heap.hot.large.bytes.add(delta);
        self.heap.counts.span_bytes.add(delta);
        true
    }

    /// Frees the block at `addr` of `slab`, a slab of this heap; `size` is a typed
    /// holder's size (raw frees take the size the slab recorded).
    #[inline(always)]
    pub(crate) fn release(
        &self,
        eng: &Engine,
        slab: &Slab,
        addr: usize,
        raw: bool,
        size: usize,
    ) -> std::result::Result<(), PointerError> {
        let slot = slab.slot_of(addr)?;
        let recorded = slab.check_owned(slot, raw)?;
        let requested = if raw { recorded } else { size };
        let own = self.own(slab);
        // SAFETY: this heap owns the slab; the slot was checked live.
        unsafe { slab.release(own, slot) };
        let class = slab.class();
        if class == SPAN_CLASS {
            self.span_freed(own.bytes, requested);
            self.cache_span(eng, slab);
            return Ok(());
        }
        let class = class as usize;
        let stride = slab.stride();
        self.count_free(class, stride, 1, stride - requested);
        if own.place != Place::Current {
            self.settle(eng, slab, class);
        }
        Ok(())
    }

    /// Counts off the requested bytes of a typed block this thread freed into
    /// another thread's slab (the owner counts the rest when it collects the post).
    pub(crate) fn posted_typed(&self, slab: &Slab, size: usize) {
        match slab.class() {
            SPAN_CLASS => self.heap.hot.large.requested.sub(size as u64),
            class => {
                let stride = slab.stride();
                if stride != size {
                    // This heap's tally of the class now counts (the classes used are
                    // those whose counters are not all zero; the sums of publications
                    // skipped this waste when no slab of the class was made here).
                    let st = self.state();
                    if !st.used.contains(&class) {
                        st.used.push(class);
                    }
                }
                self.count_free(class as usize, stride, 0, stride - size);
            }
        }
    }

    /// Counts a large block of `bytes` bytes, requested for `requested`, freed.
    fn span_freed(&self, bytes: usize, requested: usize) {
        let large = &self.heap.hot.large;
        large.frees.add(1);
        large.bytes.sub(bytes as u64);
        large.requested.sub(requested as u64);
    }

    /// Puts a slab that is not current and whose live count just dropped where it
    /// belongs now: a full slab joins its class's partial list, one with nothing
    /// live its empty list, where it counts as cached.
    #[cold]
    ///
    /// It takes the slab's owner side itself (no `&mut Own` argument): caching may
    /// give this very slab back, which takes its owner side again.
    pub(crate) fn settle(&self, eng: &Engine, slab: &Slab, class: usize) {
        let own = self.own(slab);
        let cls = &mut self.state().classes[class];
        let empty = slab.live() == 0;
        // An empty slab far smaller than what its class holds elsewhere goes back
        // at once, not to the class's empty slabs: the class's next slab, sized by
        // what it holds, is then a large one, and a class that holds many blocks
        // ends up in a few large slabs instead of the small ones it started with
        // (64 blocks of 1 KiB made and freed over and over took five slabs, 4 to
        // 32 KiB, and changed slabs five times a round).
        let small = empty
            && own.bytes < eng.max_slab
            && own.bytes * CONSOLIDATE <= cls.held - own.bytes
            && eng.classes[class].capacity.is_none();
        // SAFETY: list members belong to this heap.
        unsafe {
            match (own.place, empty) {
                (Place::Full, false) => {
                    list::push(&mut cls.partial, slab, own);
                    own.place = Place::Partial;
                }
                (Place::Full | Place::Partial, true) if small => {
                    if own.place == Place::Partial {
                        list::remove(&mut cls.partial, own);
                    }
                    self.heap.counts.classes[class].merged.add(own.bytes as u64);
                    // On no list, and not cached: as a full slab.
                    own.place = Place::Full;
                    own.idle = 0;
                    self.destroy(eng, slab);
                    return;
                }
                (Place::Full, true) => {
                    list::push(&mut cls.empty, slab, own);
                    own.place = Place::Empty;
                    own.idle = 0;
                }
                (Place::Partial, true) => {
                    list::remove(&mut cls.partial, own);
                    list::push(&mut cls.empty, slab, own);
                    own.place = Place::Empty;
                    own.idle = 0;
                }
                _ => return,
            }
        }
        if empty {
            let bytes = own.bytes;
            self.cache(eng, bytes, slab.stride());
        }
    }

    /// A large block of this heap went free: into the cache of its size. (No
    /// `&mut Own` argument, as for `settle`.)
    fn cache_span(&self, eng: &Engine, slab: &Slab) {
        let own = self.own(slab);
        own.place = Place::Empty;
        own.idle = 0;
        let bytes = own.bytes;
        // SAFETY: this heap's slab, on no list.
        unsafe { self.state().spans.push(bytes / PAGE, slab, own) };
        self.cache(eng, bytes, bytes);
    }

    /// `bytes` of a slab that emptied or a large block freed (`freed` bytes of
    /// them were the block) go into the cache, which keeps up to the most bytes the
    /// heap held live (past that, down to half: large blocks the oldest first, then
    /// empty slabs; see `release_down_to`). Blocks freed
    /// together then come back together without a trip through best fit (64 blocks
    /// of 64 KiB made and freed over and over, a quarter kept: 150 ns a pair, three
    /// quarters of it best fit and new spans; all kept: 30 ns). What they would cost
    /// other sizes' placement is settled at a miss (`trim_cache`), before best fit
    /// places anything. A free that gets here also publishes what
    /// this heap freed since it last did: frees published nothing before, and a
    /// thread that freed megabytes and then waited kept them in the totals, where
    /// another thread's allocations then raised the peaks (four threads freeing
    /// 10 MB in turn read a 40 MB peak).
    fn cache(&self, eng: &Engine, bytes: usize, freed: usize) {
        self.state().cached += bytes;
        self.heap.counts.cached_bytes.add(bytes as u64);
        let allocated = self.allocated(eng);
        // By a step relative to what is published (an eighth, at least a step):
        // a heap that frees much publishes a few times on the way down, and the
        // last free publishes all; publishing at every step cost sk_mlp's replay,
        // whose large blocks come and go by megabytes, 2.5% more instructions.
        let published = self.heap.counts.published_allocated.get() as usize;
        let due = published.saturating_sub(allocated) >= PUBLISH_STEP.max(published / 8);
        // The block just freed, when it is all the cache holds, stays until pages
        // are taken for another (`trim_cache`): a heap whose share of its live bytes
        // is below one block gave every such block back at its free and carved it
        // anew at the next allocation (one array of 256 KiB-1 MiB made and dropped
        // over and over: 176 ns a pair against 22 just below, a user hunt). (Kept
        // past other allocations, sk_forest's peak reserved was 29% higher.)
        let alone = if self.state().cached == bytes {
            bytes
        } else {
            0
        };
        let st = self.state();
        // Live just before this free.
        st.high_live = st.high_live.max(allocated + freed);
        let budget = self.cache_budget(eng, alone.max(st.high_live));
        if due || self.state().cached > budget {
            // In a call of its own: the common free saves no register for it.
            self.publish_and_trim(eng, due, budget);
        }
    }

    /// What [`cache`](Self::cache) found due: the heap's counts published, the
    /// cache given back down to half of `budget` if it holds more.
    #[cold]
    #[inline(never)]
    fn publish_and_trim(&self, eng: &Engine, publish: bool, budget: usize) {
        if publish {
            self.publish_sums(eng, &self.sums(eng), PUBLISH_STEP);
        }
        if self.state().cached > budget {
            self.release_down_to(eng, budget / 2);
        }
    }

    /// Before pages are taken for a block the cache did not serve: gives back what
    /// the cache holds beyond half its share (what `cache` kept beyond it, a block
    /// kept alone), so that what is placed next sees the pages as eager giving back
    /// left them. (Trimmed only past the share, as a free trimmed when the cache
    /// kept no more than the share, sk_ridge_cv reserved 1.33x as much: kept blocks
    /// stood where its 1.7 MiB blocks went. Past half, every shared program trace
    /// reserves as much as before or less, transformer_train 0.5% more.)
    pub(crate) fn trim_cache(&self, eng: &Engine) {
        // The budget from the high-water mark as the last free left it (summing the
        // live bytes of every class here cost sk_mlp's replay 1.3% more instructions).
        let budget = self.cache_budget(eng, 0);
        if self.state().cached > budget / 2 {
            self.release_down_to(eng, budget / 2);
        }
    }

    /// Gives cached large blocks (the oldest first), then empty slabs, back until
    /// the heap keeps at most `target` bytes of them. (Largest first, sk_mlp's
    /// blocks of 32 and 64 pages went back at two misses out of three, and came back
    /// through best fit, while blocks of sizes it had stopped asking for stayed.)
    fn release_down_to(&self, eng: &Engine, target: usize) {
        while self.state().cached > target {
            // SAFETY: the cache holds slabs of this heap.
            let Some(slab) = (unsafe { self.state().spans.pop_oldest() }) else {
                break;
            };
            self.destroy(eng, slab);
        }
        for class in 0..self.state().classes.len() {
            if self.state().cached <= target {
                return;
            }
            while self.state().cached > target {
                let cls = &mut self.state().classes[class];
                let head = cls.empty;
                if head.is_null() {
                    break;
                }
                // SAFETY: list members are live slabs of this heap.
                let slab = unsafe { &*head };
                // SAFETY: as above.
                unsafe { list::remove(&mut cls.empty, self.own(slab)) };
                self.destroy(eng, slab);
            }
        }
    }

    /// The share of the most the heap held live (as its cache's changes saw it)
    /// that it may keep in empty slabs and free large blocks where others' placement
    /// is at stake, so that kept blocks, which stand in its way, stay a small part of
    /// the reserve; at least a floor, and `at_least`; at most the engine's limit.
    fn cache_budget(&self, eng: &Engine, at_least: usize) -> usize {
        let share = (self.state().high_live / CACHE_SHARE).max(CACHE_FLOOR);
        eng.cache_limit.min(share.max(at_least))
    }

    #[inline(always)]
    fn uncache(&self, bytes: usize) {
        self.state().cached -= bytes;
        self.heap.counts.cached_bytes.sub(bytes as u64);
    }

    /// Counts (and reports) frees refused after they returned.
    #[cold]
    fn refused_late(&self, eng: &Engine, n: u32) {
        self.count_late(eng, n);
        eng.report_pending_late_refusals();
    }

    /// Counts frees refused after they returned, here and for the engine's report.
    #[inline(always)]
    fn count_late(&self, eng: &Engine, n: u32) {
        self.heap.counts.late_refusals.add(u64::from(n));
        eng.count_late_refusal(n);
    }

    // ---- frees from other threads ------------------------------------------------

    /// Collects the frees other threads posted to this heap's slabs.
    pub(crate) fn collect_inbox(&self, eng: &Engine) {
        if self.heap.inbox.load(Relaxed).is_null() {
            return;
        }
        let mut next = self
            .heap
            .inbox
            .swap(std::ptr::null_mut(), Acquire)
            .cast_const();
        while !next.is_null() {
            // SAFETY: only records of this heap are pushed onto its inbox, and
            // records live as long as their heap.
            let slab = unsafe { &*next };
            next = slab.inbox_next();
            slab.leave_inbox();
            self.collect_slab(eng, slab);
        }
        self.publish(eng);
    }

    /// Collects the posts of one slab of this heap and settles it.
    fn collect_slab(&self, eng: &Engine, slab: &Slab) {
        let own = self.own(slab);
        // SAFETY: this heap owns the slab.
        let done = unsafe { slab.collect(own) };
        if done.refused != 0 {
            self.refused_late(eng, done.refused);
        }
        if done.slots == 0 {
            return;
        }
        self.heap.counts.remote_frees.add(done.slots as u64);
        let class = slab.class();
        if class == SPAN_CLASS {
            self.span_freed(own.bytes, done.raw_requested);
            self.cache_span(eng, slab);
            return;
        }
        let class = class as usize;
        let stride = slab.stride();
        let raw_waste = done.raw_slots as usize * stride - done.raw_requested;
        self.count_free(class, stride, done.slots as u64, raw_waste);
        if own.place != Place::Current {
            self.settle(eng, slab, class);
        }
    }

    /// Collects the posts of every slab (when the inbox cannot be trusted to be
    /// complete: at trim, flush and exit, a post may still be on its way to it).
    pub(crate) fn collect_all(&self, eng: &Engine) {
        self.collect_inbox(eng);
        let pending: Vec<*const Slab> = self
            .heap
            .records()
            .filter(|r| r.is_live() && r.has_posts())
            .map(|r| r as *const Slab)
            .collect();
        for slab in pending {
            // SAFETY: records of this heap live as long as it does.
            self.collect_slab(eng, unsafe { &*slab });
        }
        self.publish(eng);
    }

    // ---- slabs -----------------------------------------------------------------

    /// A spare record for a slab of `slots` slots.
    fn spare(&self, slots: u32) -> &Slab {
        let tier = RECORD_TIERS
            .iter()
            .position(|&c| c >= slots)
            .expect("slabs have at most MAX_SLOTS slots");
        let st = self.state();
        if !st.spare[tier].is_null() {
            // SAFETY: spare records belong to this heap.
            let slab = unsafe { &*st.spare[tier] };
            let own = self.own(slab);
            st.spare[tier] = own.next;
            own.next = std::ptr::null();
            return slab;
        }
        st.records
            .push(Box::new(Slab::new(self.heap, RECORD_TIERS[tier])));
        let slab: *const Slab = &**st.records.last().expect("just pushed");
        // SAFETY: records are boxed and never freed before the heap: the reference
        // stays valid while the token's heap lives.
        let slab = unsafe { &*slab };
        slab.all_next
            .store(self.heap.records.load(Relaxed), Relaxed);
        self.heap
            .records
            .store((slab as *const Slab).cast_mut(), Release);
        slab
    }

    /// Pages for a slab: from the best-fit tier's free memory, else after giving
    /// back this heap's empty slabs (but those of `keep`), else by growing.
    fn take_pages(
        &self,
        eng: &Engine,
        bytes: usize,
        keep: Option<usize>,
        tier: Tier,
        requested: usize,
    ) -> Result<(NonNull<u8>, bool)> {
        self.trim_cache(eng);
        if let Some(pages) = eng.large.alloc_pages(bytes) {
            return Ok(pages);
        }
        if self.release_empty(eng, keep) > 0 {
            if let Some(pages) = eng.large.alloc_pages(bytes) {
                return Ok(pages);
            }
        }
        eng.large
            .alloc_pages_growing(bytes)
            .map_err(|e| retier(e, tier, requested))
    }

    /// A new slab for `class`, registered, empty and current.
    fn new_slab(&self, eng: &Engine, class: usize) -> Result<*const Slab> {
        let geometry: &Class = &eng.classes[class];
        let held = self.state().classes[class].held;
        // Slabs grow with what the class holds; after small ones went back, the next
        // replaces them (not more than the class holds, which may have shrunk since).
        let merged = &self.heap.counts.classes[class].merged;
        let basis = match merged.get() as usize {
            0 => held,
            bytes => {
                merged.set(0);
                bytes.min(held)
            }
        };
        let (mut slots, mut bytes) = geometry.slab_layout(basis, eng.max_slab);
        if let Some(capacity) = &geometry.capacity {
            let granted = capacity.take(slots);
            if granted == 0 {
                return Err(pool_full(eng, geometry));
            }
            if granted < slots {
                slots = granted;
                bytes = super::round_to_page(slots as usize * geometry.stride);
            }
        }
        let pages = self.take_pages(eng, bytes, Some(class), geometry.tier, geometry.block_size);
        let (base, fresh) = match pages {
            Ok(p) => p,
            Err(e) => {
                if let Some(capacity) = &geometry.capacity {
                    capacity.give(slots);
                }
                return Err(e);
            }
        };
        let slab = self.spare(slots);
        // SAFETY: this heap owns the spare record and the pages just taken.
        unsafe { slab.init(base, bytes, geometry.stride, slots, class as u32, fresh) };
        eng.map.set(base.as_ptr().addr(), bytes, slab);
        self.own(slab).place = Place::Current;
        let st = self.state();
        if st.classes[class].held == 0 && !st.used.contains(&(class as u32)) {
            st.used.push(class as u32);
        }
        st.classes[class].held += bytes;
        let counts = &self.heap.counts.classes[class];
        counts.slabs.add(1);
        counts.slab_bytes.add(bytes as u64);
        eng.totals
            .add_tier_reserved(geometry.tier_index, bytes as isize);
        counts.misses.add(1);
        Ok(slab)
    }

    /// A new span of `pages` pages for one large block.
    fn new_span(&self, eng: &Engine, pages: usize) -> Result<*const Slab> {
        let bytes = pages * PAGE;
        let (base, fresh) = self.take_pages(eng, bytes, None, Tier::Large, bytes)?;
        let slab = self.spare(1);
        // SAFETY: this heap owns the spare record and the pages just taken.
        unsafe { slab.init(base, bytes, bytes, 1, SPAN_CLASS, fresh) };
        // One block: the map needs only its first page (an address inside it is not
        // a block start; the best-fit tier, which holds the pages, says so).
        eng.map.set(base.as_ptr().addr(), PAGE, slab);
        let counts = &self.heap.counts;
        counts.spans.add(1);
        counts.span_bytes.add(bytes as u64);
        counts.span_misses.add(1);
        Ok(slab)
    }

    /// Gives an empty slab back to the best-fit tier.
    fn destroy(&self, eng: &Engine, slab: &Slab) {
        let own = self.own(slab);
        debug_assert_eq!(slab.live(), 0);
        // SAFETY: this heap owns the slab, which has no live slot.
        let stale = unsafe { slab.retire() };
        if stale != 0 {
            self.refused_late(eng, stale);
        }
        let (base, bytes) = (own.base, own.bytes);
        let mapped = if slab.class() == SPAN_CLASS {
            PAGE
        } else {
            bytes
        };
        eng.map.set(base.addr(), mapped, std::ptr::null());
        for recent in &mut self.state().recent {
            if std::ptr::eq(recent.slab, slab) {
                *recent = Recent::NONE;
            }
        }
        let class = slab.class();
        let counts = &self.heap.counts;
        if class == SPAN_CLASS {
            counts.spans.sub(1);
            counts.span_bytes.sub(bytes as u64);
        } else {
            let class = class as usize;
            self.state().classes[class].held -= bytes;
            counts.classes[class].slabs.sub(1);
            counts.classes[class].slab_bytes.sub(bytes as u64);
            eng.totals
                .add_tier_reserved(eng.classes[class].tier_index, -(bytes as isize));
            if let Some(capacity) = &eng.classes[class].capacity {
                capacity.give(slab.slots());
            }
        }
        if own.place == Place::Empty {
            self.uncache(bytes);
        }
        // SAFETY: the pages were taken from the best-fit tier for this slab and no
        // slot in them is live; the page map no longer points at them.
        unsafe {
            eng.large
                .free_pages(NonNull::new_unchecked(base), bytes, own.idle)
        };
        own.place = Place::Spare;
        let tier = RECORD_TIERS
            .iter()
            .position(|&c| c == slab.capacity())
            .expect("records have a tier's capacity");
        let st = self.state();
        own.next = st.spare[tier];
        st.spare[tier] = slab;
    }

    /// Gives every empty slab and cached block back, but the empty slabs of class
    /// `keep`; returns the bytes given back.
    pub(crate) fn release_empty(&self, eng: &Engine, keep: Option<usize>) -> usize {
        let mut released = 0;
        for class in 0..self.state().classes.len() {
            if Some(class) != keep {
                released += self.release_empty_class(eng, class);
            }
        }
        while let Some(pages) = self.state().spans.largest() {
            // SAFETY: the cache holds slabs of this heap.
            let slab = unsafe { self.state().spans.pop(pages) }.expect("a cached size");
            released += self.own(slab).bytes;
            self.destroy(eng, slab);
        }
        released
    }

    /// Gives back the empty slabs of `class`, its current one too when it is empty;
    /// returns their bytes.
    pub(crate) fn release_empty_class(&self, eng: &Engine, class: usize) -> usize {
        let mut released = 0;
        loop {
            let cls = &mut self.state().classes[class];
            let head = cls.empty;
            if head.is_null() {
                break;
            }
            // SAFETY: list members are live slabs of this heap.
            let slab = unsafe { &*head };
            let own = self.own(slab);
            // SAFETY: as above.
            unsafe { list::remove(&mut cls.empty, own) };
            released += own.bytes;
            self.destroy(eng, slab);
        }
        let cls = &mut self.state().classes[class];
        if !cls.current.is_null() {
            // SAFETY: a current slab is a live slab of this heap.
            let slab = unsafe { &*cls.current };
            if slab.live() == 0 {
                cls.current = std::ptr::null();
                cls.bytes = 0;
                released += self.own(slab).bytes;
                self.destroy(eng, slab);
            }
        }
        released
    }

    /// A pass of the release policy on this heap: empty slabs and cached large
    /// blocks that `min_age` passes (this one included) saw unused go back to the
    /// best-fit tier, which is told how long they were unused (and so gives their
    /// pages back to the system in the same pass); so does a class's current slab
    /// when it is empty and the class made no allocation since the last pass. Returns
    /// the bytes given back.
    pub(crate) fn release_idle(&self, eng: &Engine, min_age: u8) -> usize {
        self.collect_inbox(eng);
        let mut released = 0;
        for class in 0..self.state().classes.len() {
            // Empty slabs, oldest use first at the list's tail: every one ages.
            let mut at = self.state().classes[class].empty;
            while !at.is_null() {
                // SAFETY: list members are live slabs of this heap.
                let slab = unsafe { &*at };
                let own = self.own(slab);
                at = own.next;
                own.idle = own.idle.saturating_add(1);
                if own.idle >= min_age {
                    let cls = &mut self.state().classes[class];
                    // SAFETY: as above.
                    unsafe { list::remove(&mut cls.empty, own) };
                    released += own.bytes;
                    self.destroy(eng, slab);
                }
            }
            // The current slab, if empty and unused since the last pass.
            let allocs = self.heap.tally[class].allocs.get();
            let cls = &mut self.state().classes[class];
            let unused = std::mem::replace(&mut cls.seen_allocs, allocs) == allocs;
            let current = cls.current;
            // SAFETY: a current slab is a live slab of this heap.
            if let Some(slab) = unsafe { current.as_ref() } {
                let own = self.own(slab);
                if slab.live() == 0 && unused {
                    own.idle = own.idle.saturating_add(1);
                    if own.idle >= min_age {
                        let cls = &mut self.state().classes[class];
                        cls.current = std::ptr::null();
                        cls.bytes = 0;
                        released += own.bytes;
                        self.destroy(eng, slab);
                    }
                } else {
                    own.idle = 0;
                }
            }
        }
        // Cached large blocks: take them all out, and put back those still young.
        let mut young = Vec::new();
        while let Some(pages) = self.state().spans.largest() {
            // SAFETY: the cache holds slabs of this heap.
            let slab = unsafe { self.state().spans.pop(pages) }.expect("a cached size");
            let own = self.own(slab);
            own.idle = own.idle.saturating_add(1);
            if own.idle >= min_age {
                released += own.bytes;
                self.destroy(eng, slab);
            } else {
                young.push((pages, slab, slab.cached_at()));
            }
        }
        // Back in the order they were taken out, each with its own stamp: a new
        // one would make every block of a smaller size look older than every block
        // of a larger one, and a miss then gave back the small ones first.
        for (pages, slab, stamp) in young.into_iter().rev() {
            let own = self.own(slab);
            // SAFETY: this heap's slab, taken out of the cache just above.
            unsafe { self.state().spans.push(pages, slab, own) };
            slab.set_cached_at(stamp);
        }
        self.publish_now(eng);
        released
    }

    /// Collects every pending free and gives every empty slab back.
    pub(crate) fn flush(&self, eng: &Engine) -> usize {
        self.collect_all(eng);
        self.release_empty(eng, None)
    }

    /// The current slab of `class`, if it holds `addr`.
    #[inline(always)]
    pub(crate) fn current_holding(&self, class: usize, addr: usize) -> Option<&Slab> {
        let current = self.state().classes[class].current;
        if current.is_null() {
            return None;
        }
        // SAFETY: a current slab is a live slab of this heap.
        let slab = unsafe { &*current };
        let own = self.own(slab);
        (addr.wrapping_sub(own.base.addr()) < own.bytes).then_some(slab)
    }

    /// Adds what this heap handed out since it last published to the manager's
    /// totals, where peaks are recorded, when it changed by [`PUBLISH_STEP`] since (so
    /// a peak is known within a step per thread; `stats()` adds what is unpublished).
    /// Slow paths only: two shared read-modify-writes, which threads would fight
    /// over if every slab switch made them.
    pub(crate) fn publish(&self, eng: &Engine) {
        let published = self.heap.counts.published_allocated.get() as usize;
        let change = self.allocated(eng).wrapping_sub(published) as isize;
        if change.unsigned_abs() >= PUBLISH_STEP {
            self.publish_sums(eng, &self.sums(eng), PUBLISH_STEP);
        }
    }

    /// Adds everything unpublished to the manager's totals.
    pub(crate) fn publish_now(&self, eng: &Engine) {
        let sums = self.sums(eng);
        self.publish_sums(eng, &sums, 0);
    }

    /// [`net`](Self::net), and the allocated bytes of the slab tiers (`SMALL`,
    /// `POOL`), in one pass over the classes this heap used (a publication's cost,
    /// on every slow path of a program that churns large blocks).
    fn sums(&self, eng: &Engine) -> Sums {
        let hot = &self.heap.hot;
        let large = &hot.large;
        if eng.first_pool == eng.classes.len() {
            // No explicit pools: every slot is the size classes' (the running counts,
            // checked against the tallies in debug builds).
            let slots = hot.slot_bytes.get();
            let sums = Sums {
                allocated: large.bytes.get().wrapping_add(slots) as usize,
                requested: large
                    .requested
                    .get()
                    .wrapping_add(slots.wrapping_sub(hot.slot_waste.get()))
                    as usize,
                tiers: [slots, 0],
            };
            debug_assert_eq!(
                (sums.allocated, sums.requested),
                self.net(eng),
                "the running counts of `net`"
            );
            return sums;
        }
        let mut sums = Sums {
            allocated: large.bytes.get() as usize,
            requested: large.requested.get() as usize,
            tiers: [0; 2],
        };
        let mut pools = 0u64;
        for &class in &self.state().used {
            let class = class as usize;
            let (bytes, requested) = self.heap.tally[class].live(eng.strides[class]);
            sums.allocated = sums.allocated.wrapping_add(bytes as usize);
            sums.requested = sums.requested.wrapping_add(requested as usize);
            // Explicit pools come after the size classes: one comparison, where
            // reading each class's tier cost a program churning large blocks 5%.
            if class >= eng.first_pool {
                pools = pools.wrapping_add(bytes);
            }
        }
        let slabs = (sums.allocated as u64).wrapping_sub(large.bytes.get());
        sums.tiers[SMALL] = slabs.wrapping_sub(pools);
        sums.tiers[POOL] = pools;
        debug_assert_eq!(
            (sums.allocated, sums.requested),
            self.net(eng),
            "the sums of `net`"
        );
        sums
    }

    /// The allocated and requested bytes of [`sums`](Self::sums).
    #[cfg(test)]
    pub(crate) fn running_sums(&self, eng: &Engine) -> (usize, usize) {
        let sums = self.sums(eng);
        (sums.allocated, sums.requested)
    }

    /// Publishes this heap's [`sums`](Self::sums); a slab tier's bytes only when they
    /// changed by `tier_step` (peaks of a tier are known within a step per thread, as
    /// the totals' are: two more shared read-modify-writes at every publication had
    /// cost a program churning large blocks 5% of its time).
    fn publish_sums(&self, eng: &Engine, sums: &Sums, tier_step: usize) {
        let counts = &self.heap.counts;
        let (allocated, requested) = (sums.allocated, sums.requested);
        let da = allocated.wrapping_sub(counts.published_allocated.get() as usize) as isize;
        let dr = requested.wrapping_sub(counts.published_requested.get() as usize) as isize;
        if da != 0 || dr != 0 {
            eng.totals.add(da, dr);
            counts.published_allocated.set(allocated as u64);
            counts.published_requested.set(requested as u64);
            for (tier, (&now, published)) in
                sums.tiers.iter().zip(&counts.published_tiers).enumerate()
            {
                let delta = now.wrapping_sub(published.get()) as isize;
                if delta != 0 && delta.unsigned_abs() >= tier_step {
                    eng.totals.add_tier_allocated(tier, delta);
                    published.set(now);
                }
            }
        }
    }

    /// Bytes of the current slabs that hold no live block (kept for their class's
    /// next allocation, and not counted in `cached_bytes` on the hot path).
    pub(crate) fn empty_current_bytes(&self) -> usize {
        self.state()
            .classes
            .iter()
            .filter(|c| !c.current.is_null())
            // SAFETY: current slabs are live slabs of this heap.
            .map(|c| unsafe { &*c.current })
            .filter(|slab| slab.live() == 0)
            .map(|slab| self.own(slab).bytes)
            .sum()
    }

    /// Bytes of the largest cached free large block.
    pub(crate) fn largest_cached_span(&self) -> usize {
        self.state().spans.largest().map_or(0, |pages| pages * PAGE)
    }

    /// Every live slab of this heap.
    pub(crate) fn slabs(&self) -> impl Iterator<Item = &Slab> + '_ {
        self.state()
            .records
            .iter()
            .map(|r| &**r)
            .filter(|r| r.is_live())
    }

    /// The address and bytes of slab `slab` (for snapshots).
    pub(crate) fn extent(&self, slab: &Slab) -> (usize, usize) {
        let own = self.own(slab);
        (own.base.addr(), own.bytes)
    }

    /// The live slots of `slab`, a slab of this heap, as `(slot, raw)` (for
    /// snapshots).
    pub(crate) fn live_slots(&self, slab: &Slab) -> Vec<(u32, bool)> {
        // SAFETY: this heap owns the slab.
        unsafe { slab.live_slots(self.own(slab)) }
    }
}

/// The report of a full explicit pool.
fn pool_full(eng: &Engine, class: &Class) -> Error {
    let capacity = class.capacity.as_ref().map_or(0, |c| c.total);
    OutOfMemory::new(
        class.block_size,
        eng.alignment,
        Tier::Pool,
        OomCause::CapacityReached { capacity },
        &Usage::default(),
        0,
    )
    .into_error()
}

/// The best-fit tier reports its own tier; the request was for `tier`.
fn retier(e: Error, tier: Tier, requested: usize) -> Error {
    match e {
        Error::OutOfMemory(mut report) => {
            report.tier = tier;
            report.requested = requested;
            Error::OutOfMemory(report)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_threads_posts_write_a_line_the_owner_does_not_read() {
        use std::mem::offset_of;
        let inbox = offset_of!(Heap, inbox);
        assert_eq!(inbox % 64, 0);
        for owner in [
            offset_of!(Heap, hot),
            offset_of!(Heap, state),
            offset_of!(Heap, tally),
            offset_of!(Heap, counts),
        ] {
            assert!(owner < inbox, "{owner} {inbox}");
        }
        assert_eq!(std::mem::size_of::<Heap>(), inbox + 64);
    }

    #[test]
    fn what_allocations_and_sizeless_frees_read_of_the_state_is_one_line() {
        use std::mem::offset_of;
        assert_eq!(std::mem::align_of::<State>(), 64);
        assert_eq!(offset_of!(State, classes), 0);
        let recent = offset_of!(State, recent);
        assert!(
            recent + std::mem::size_of::<[Recent; 2]>() <= 64,
            "{recent}"
        );
        // A class's state is one line, found by a shift (what only slow paths
        // change lives in `Counts`).
        assert_eq!(std::mem::size_of::<ClassState>(), 64);
    }
}
