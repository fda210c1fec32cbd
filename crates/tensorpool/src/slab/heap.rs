//! A heap: what one thread owns in one engine. Its slabs, per class a current slab
//! to allocate from and lists of partial and empty ones, a cache of free large
//! blocks by size, an inbox of slabs that other threads freed into, and counters
//! that only it writes.
//!
//! Everything here runs on the owner's side: through an [`Owned`] token, which only
//! the thread that holds the heap can make (see `thread`), so the state needs no
//! lock and the hot paths no atomic read-modify-write.
//!
//! Memory follows use. A new slab for a class is as large as what the heap holds of
//! the class (doubling from a page up to `pool_chunk_size`). A slab that empties
//! stays with the heap, ready for the next allocation of its class, until the heap
//! needs pages the best-fit tier cannot give without growing, or holds more than
//! `thread_cache_bytes` of empty slabs: then it gives its empty slabs back (to the
//! best-fit tier, where any size can use the pages), before anything grows.

use super::slab::{Own, Place, Slab};
use super::{Class, Engine, SPAN_CLASS};
use crate::error::{Error, OomCause, OutOfMemory, PointerError, Result};
use crate::stats::{Tier, Usage};
use crate::sync::{AtomicPtr, AtomicU32, Mutex};
use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Capacities of slab records, in slots. A slab takes the smallest that fits.
pub(crate) const RECORD_TIERS: [u32; 4] = [1, 64, 512, MAX_SLOTS];

/// Most slots of one slab.
pub(crate) const MAX_SLOTS: u32 = 4096;

/// A counter that only its heap's owner writes (a load and a store, no
/// read-modify-write), and anyone reads.
#[derive(Debug, Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    #[inline]
    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }
}

/// Per class: blocks handed out and taken back (owner frees and collected posts).
#[derive(Debug, Default)]
pub(crate) struct ClassCounts {
    pub(crate) allocs: Count,
    pub(crate) frees: Count,
    /// Slabs held, their bytes and their slots.
    pub(crate) slabs: Count,
    pub(crate) slab_bytes: Count,
    pub(crate) slots: Count,
    /// Frees other threads posted, collected here.
    pub(crate) remote_frees: Count,
    /// Allocations that had to make a new slab.
    pub(crate) misses: Count,
}

/// What a heap counts; read by `stats()` while the owner runs.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) classes: Box<[ClassCounts]>,
    /// Cached large blocks: handed out, taken back, remote frees collected, blocks
    /// held (live or cached) and their bytes, live bytes.
    pub(crate) span_allocs: Count,
    pub(crate) span_frees: Count,
    pub(crate) span_remote_frees: Count,
    pub(crate) spans: Count,
    pub(crate) span_bytes: Count,
    pub(crate) span_live_bytes: Count,
    /// Requested bytes of live blocks, per tier: small, pool, large.
    pub(crate) requested: [Count; 3],
    /// Bytes of empty slabs and cached large blocks.
    pub(crate) cached_bytes: Count,
    /// Frees refused when collected, or found stale when a slot was handed out.
    pub(crate) late_refusals: Count,
    /// Slabs and blocks taken from the best-fit tier, and given back.
    pub(crate) pages_taken: Count,
    pub(crate) pages_given: Count,
    /// Allocated and requested bytes as last added to the manager's totals.
    pub(crate) published_allocated: Count,
    pub(crate) published_requested: Count,
}

/// Index into [`Counts::requested`].
pub(crate) fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Small => 0,
        Tier::Pool => 1,
        _ => 2,
    }
}

/// The owner's state of one class.
#[derive(Debug)]
pub(crate) struct ClassState {
    pub(crate) current: *const Slab,
    partial: *const Slab,
    empty: *const Slab,
    /// Bytes of this class's slabs held (for the size of the next slab).
    held: usize,
}

/// The owner's state.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) classes: Box<[ClassState]>,
    /// Free large blocks by pages, each a stack linked through `Own::next`.
    spans: Box<[*const Slab]>,
    /// Spare records by capacity tier, linked through `Own::next`.
    spare: [*const Slab; RECORD_TIERS.len()],
    /// Every record of this heap, boxed: other threads hold their addresses, which
    /// must not move when the list grows.
    #[allow(clippy::vec_box)]
    pub(crate) records: Vec<Box<Slab>>,
    /// Bytes of empty slabs and cached blocks.
    cached: usize,
}

/// The handshake of a heap with threads that stop it (see `thread`).
#[derive(Debug, Default)]
pub(crate) struct Handshake {
    /// 1 while the owner runs an operation.
    pub(crate) active: AtomicU32,
    /// Non-zero while a stopper wants the heap.
    pub(crate) signal: AtomicU32,
    /// Held by a stopper while it works on the heap.
    pub(crate) stopper: Mutex<()>,
}

/// One thread's heap in one engine.
pub(crate) struct Heap {
    pub(crate) handshake: Handshake,
    /// Slabs that other threads posted frees to since the owner last looked.
    pub(crate) inbox: AtomicPtr<Slab>,
    pub(crate) counts: Counts,
    /// The name of the thread that holds it now, for statistics.
    pub(crate) thread: parking_lot::Mutex<String>,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is touched only through an `Owned` token, which exists only for the
// thread that holds the heap (the handshake and the engine's registry hand it over
// with release/acquire ordering); everything else is atomic or locked.
unsafe impl Send for Heap {}
// SAFETY: as above.
unsafe impl Sync for Heap {}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("thread", &*self.thread.lock())
            .finish_non_exhaustive()
    }
}

impl Heap {
    /// A heap for an engine with `classes` classes and large blocks of up to
    /// `span_pages` pages.
    pub(crate) fn new(classes: usize, span_pages: usize) -> Box<Heap> {
        Box::new(Heap {
            handshake: Handshake::default(),
            inbox: AtomicPtr::new(std::ptr::null_mut()),
            counts: Counts {
                classes: (0..classes).map(|_| ClassCounts::default()).collect(),
                ..Counts::default()
            },
            thread: parking_lot::Mutex::new(String::new()),
            state: UnsafeCell::new(State {
                classes: (0..classes)
                    .map(|_| ClassState {
                        current: std::ptr::null(),
                        partial: std::ptr::null(),
                        empty: std::ptr::null(),
                        held: 0,
                    })
                    .collect(),
                spans: vec![std::ptr::null(); span_pages + 1].into_boxed_slice(),
                spare: [std::ptr::null(); RECORD_TIERS.len()],
                records: Vec::new(),
                cached: 0,
            }),
        })
    }

    /// The owner's token.
    ///
    /// # Safety
    ///
    /// The caller holds the heap (see `thread`): it is the heap's thread inside an
    /// operation, or it stopped the heap, or it holds the lock of a heap shared by
    /// lock; and it makes no second token while this one lives.
    #[inline]
    pub(crate) unsafe fn owned(&self) -> Owned<'_> {
        Owned { heap: self }
    }
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

    pub(super) unsafe fn remove(head: &mut *const Slab, _slab: &Slab, own: &mut Own) {
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
    #[inline]
    #[allow(clippy::mut_from_ref)]
    fn state(&self) -> &mut State {
        // SAFETY: an `Owned` token proves the caller holds the heap, and the engine
        // never keeps two references from one token alive at once.
        unsafe { &mut *self.heap.state.get() }
    }

    /// Everything of a slab of this heap.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    fn own<'s>(&self, slab: &'s Slab) -> &'s mut Own {
        debug_assert_eq!(slab.heap(), self.heap as *const Heap);
        // SAFETY: the slab belongs to the heap this token holds.
        unsafe { slab.own() }
    }

    // ---- allocation ------------------------------------------------------------

    /// A block of class `class` for `size` bytes; and whether it is known zero.
    #[inline]
    pub(crate) fn allocate(
        &self,
        eng: &Engine,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        let current = self.state().classes[class].current;
        if !current.is_null() {
            // SAFETY: a current slab is a live slab of this heap.
            let slab = unsafe { &*current };
            let own = self.own(slab);
            // SAFETY: this heap owns the slab.
            if let Some(slot) = unsafe { slab.take_slot(own) } {
                return Ok(self.hand_out(eng, slab, own, slot, class, size, raw));
            }
        }
        self.allocate_slow(eng, class, size, raw)
    }

    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn hand_out(
        &self,
        eng: &Engine,
        slab: &Slab,
        own: &mut Own,
        slot: u32,
        class: usize,
        size: usize,
        raw: bool,
    ) -> (NonNull<u8>, bool) {
        if own.live == 0 {
            self.uncache(own.bytes);
        }
        // SAFETY: this heap owns the slab, and `slot` was just taken.
        let (zero, stale) = unsafe { slab.hand_out(own, slot, raw, size) };
        if stale != 0 {
            self.refused_late(eng, stale);
        }
        let counts = &self.heap.counts;
        counts.classes[class].allocs.add(1);
        counts.requested[tier_index(eng.classes[class].tier)].add(size as u64);
        (slab.slot_ptr(own, slot), zero)
    }

    #[cold]
    fn allocate_slow(
        &self,
        eng: &Engine,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        self.collect_inbox(eng);
        loop {
            let st = self.state();
            let cls = &mut st.classes[class];
            if !cls.current.is_null() {
                // SAFETY: a current slab is a live slab of this heap.
                let slab = unsafe { &*cls.current };
                let own = self.own(slab);
                // SAFETY: this heap owns the slab.
                if let Some(slot) = unsafe { slab.take_slot(own) } {
                    let served = self.hand_out(eng, slab, own, slot, class, size, raw);
                    // A slow path: where peaks are recorded.
                    self.publish(eng);
                    return Ok(served);
                }
                // Full: it leaves the class's hands until a free brings it back.
                own.place = Place::Full;
                cls.current = std::ptr::null();
            }
            let next = if !cls.partial.is_null() {
                cls.partial
            } else if !cls.empty.is_null() {
                cls.empty
            } else {
                self.new_slab(eng, class)?
            };
            // SAFETY: list members and new slabs are live slabs of this heap.
            let slab = unsafe { &*next };
            let own = self.own(slab);
            let cls = &mut self.state().classes[class];
            // SAFETY: as above.
            unsafe {
                match own.place {
                    Place::Partial => list::remove(&mut cls.partial, slab, own),
                    Place::Empty => list::remove(&mut cls.empty, slab, own),
                    _ => {}
                }
            }
            own.place = Place::Current;
            cls.current = next;
        }
    }

    /// A large block of `pages` pages for `size` bytes, from this heap's cache or a
    /// new span; and whether it is known zero.
    pub(crate) fn allocate_span(
        &self,
        eng: &Engine,
        pages: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        let mut head = self.state().spans[pages];
        if head.is_null() && !self.heap.inbox.load(Relaxed).is_null() {
            self.collect_inbox(eng);
            head = self.state().spans[pages];
        }
        let fresh = head.is_null();
        let slab = if fresh {
            // SAFETY: a new span is a live slab of this heap.
            unsafe { &*self.new_span(eng, pages)? }
        } else {
            // SAFETY: cached spans are live slabs of this heap.
            let slab = unsafe { &*head };
            let own = self.own(slab);
            self.state().spans[pages] = own.next;
            own.next = std::ptr::null();
            slab
        };
        let own = self.own(slab);
        own.place = Place::Full;
        // SAFETY: this heap owns the slab.
        let slot = unsafe { slab.take_slot(own) }.expect("a cached block is free");
        self.uncache(own.bytes);
        // SAFETY: as above; `slot` was just taken.
        let (zero, stale) = unsafe { slab.hand_out(own, slot, raw, size) };
        if stale != 0 {
            self.refused_late(eng, stale);
        }
        let counts = &self.heap.counts;
        counts.span_allocs.add(1);
        counts.span_live_bytes.add(own.bytes as u64);
        counts.requested[2].add(size as u64);
        if fresh {
            // A slow path: where peaks are recorded.
            self.publish(eng);
        }
        Ok((slab.slot_ptr(own, slot), zero))
    }

    // ---- frees -----------------------------------------------------------------

    /// Frees the block at `addr` of `slab`, a slab of this heap; `size` is the
    /// typed holder's size (ignored for raw frees, whose size the slab knows).
    #[inline]
    pub(crate) fn free(
        &self,
        eng: &Engine,
        slab: &Slab,
        addr: usize,
        raw: bool,
        size: usize,
    ) -> std::result::Result<(), PointerError> {
        let slot = slab.slot_of(addr)?;
        let requested = slab.check_owned(slot, raw)?;
        debug_assert!(
            raw || requested == size,
            "a typed block freed with another size"
        );
        let size = requested;
        let own = self.own(slab);
        // SAFETY: this heap owns the slab; the slot was checked live.
        unsafe { slab.release(own, slot) };
        let class = slab.class();
        let counts = &self.heap.counts;
        if class == SPAN_CLASS {
            counts.span_frees.add(1);
            counts.span_live_bytes.sub(own.bytes as u64);
            counts.requested[2].sub(size as u64);
            self.cache_span(eng, slab, own);
            return Ok(());
        }
        let class = class as usize;
        counts.classes[class].frees.add(1);
        counts.requested[tier_index(eng.classes[class].tier)].sub(size as u64);
        if own.place != Place::Current || own.live == 0 {
            self.settle(eng, slab, own, class);
        }
        Ok(())
    }

    /// Puts a slab whose live count just dropped where it belongs now: a full slab
    /// joins its class's partial list, one with nothing live its empty list (a
    /// current one stays current), and empty slabs count as cached.
    #[cold]
    fn settle(&self, eng: &Engine, slab: &Slab, own: &mut Own, class: usize) {
        let cls = &mut self.state().classes[class];
        let empty = own.live == 0;
        // SAFETY: list members belong to this heap.
        unsafe {
            match (own.place, empty) {
                (Place::Full, false) => {
                    list::push(&mut cls.partial, slab, own);
                    own.place = Place::Partial;
                }
                (Place::Full, true) => {
                    list::push(&mut cls.empty, slab, own);
                    own.place = Place::Empty;
                }
                (Place::Partial, true) => {
                    list::remove(&mut cls.partial, slab, own);
                    list::push(&mut cls.empty, slab, own);
                    own.place = Place::Empty;
                }
                _ => {}
            }
        }
        if empty {
            self.cache(eng, own.bytes);
        }
    }

    /// A large block of this heap went free: into the cache of its size.
    fn cache_span(&self, eng: &Engine, slab: &Slab, own: &mut Own) {
        let pages = own.bytes / super::page_map::PAGE;
        let st = self.state();
        own.next = st.spans[pages];
        own.prev = std::ptr::null();
        own.place = Place::Empty;
        st.spans[pages] = slab;
        self.cache(eng, own.bytes);
    }

    fn cache(&self, eng: &Engine, bytes: usize) {
        let st = self.state();
        st.cached += bytes;
        self.heap.counts.cached_bytes.add(bytes as u64);
        if st.cached > eng.cache_limit {
            self.release_empty(eng, None);
        }
    }

    #[inline]
    fn uncache(&self, bytes: usize) {
        self.state().cached -= bytes;
        self.heap.counts.cached_bytes.sub(bytes as u64);
    }

    /// Counts (and reports) frees refused after they returned.
    #[cold]
    fn refused_late(&self, eng: &Engine, n: u32) {
        self.heap.counts.late_refusals.add(n as u64);
        eng.report_late_refusal(n);
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
            .swap(std::ptr::null_mut(), crate::sync::Ordering::Acquire)
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
        let counts = &self.heap.counts;
        let class = slab.class();
        if class == SPAN_CLASS {
            counts.span_frees.add(1);
            counts.span_remote_frees.add(1);
            counts.span_live_bytes.sub(own.bytes as u64);
            counts.requested[2].sub(done.requested as u64);
            self.cache_span(eng, slab, own);
            return;
        }
        let class = class as usize;
        let c = &counts.classes[class];
        c.frees.add(done.slots as u64);
        c.remote_frees.add(done.slots as u64);
        counts.requested[tier_index(eng.classes[class].tier)].sub(done.requested as u64);
        if own.place != Place::Current || own.live == 0 {
            self.settle(eng, slab, own, class);
        }
    }

    /// Collects the posts of every slab (when the inbox cannot be trusted to be
    /// complete: at trim, flush and exit, a post may still be on its way to it).
    pub(crate) fn collect_all(&self, eng: &Engine) {
        self.collect_inbox(eng);
        let slabs: Vec<*const Slab> = self
            .state()
            .records
            .iter()
            .filter(|r| r.is_live() && r.pending_posts() > 0)
            .map(|r| &**r as *const Slab)
            .collect();
        for slab in slabs {
            // SAFETY: records of this heap live as long as it does.
            self.collect_slab(eng, unsafe { &*slab });
        }
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
        let slab: &Slab = st.records.last().expect("just pushed");
        // SAFETY: records are boxed and never freed before the heap: the reference
        // stays valid while the token's heap lives.
        unsafe { &*(slab as *const Slab) }
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

    /// A new slab for `class`, registered and empty.
    fn new_slab(&self, eng: &Engine, class: usize) -> Result<*const Slab> {
        let geometry: &Class = &eng.classes[class];
        let held = self.state().classes[class].held;
        let (mut slots, mut bytes) = geometry.slab_layout(held, eng.max_slab);
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
        // The caller makes it current; empty (so cached) until it hands out a slot.
        self.own(slab).place = Place::Current;
        self.state().classes[class].held += bytes;
        let counts = &self.heap.counts;
        counts.classes[class].slabs.add(1);
        counts.classes[class].slab_bytes.add(bytes as u64);
        counts.classes[class].slots.add(slots as u64);
        counts.classes[class].misses.add(1);
        counts.pages_taken.add(1);
        self.state().cached += bytes;
        counts.cached_bytes.add(bytes as u64);
        Ok(slab)
    }

    /// A new span of `pages` pages for one large block.
    fn new_span(&self, eng: &Engine, pages: usize) -> Result<*const Slab> {
        let bytes = pages * super::page_map::PAGE;
        let (base, fresh) = self.take_pages(eng, bytes, None, Tier::Large, bytes)?;
        let slab = self.spare(1);
        // SAFETY: this heap owns the spare record and the pages just taken.
        unsafe { slab.init(base, bytes, bytes, 1, SPAN_CLASS, fresh) };
        eng.map.set(base.as_ptr().addr(), bytes, slab);
        let counts = &self.heap.counts;
        counts.spans.add(1);
        counts.span_bytes.add(bytes as u64);
        counts.pages_taken.add(1);
        self.state().cached += bytes;
        counts.cached_bytes.add(bytes as u64);
        Ok(slab)
    }

    /// Gives an empty slab back to the best-fit tier.
    fn destroy(&self, eng: &Engine, slab: &Slab) {
        let own = self.own(slab);
        debug_assert_eq!(own.live, 0);
        // SAFETY: this heap owns the slab, which has no live slot.
        let stale = unsafe { slab.retire() };
        if stale != 0 {
            self.refused_late(eng, stale);
        }
        let (base, bytes) = (own.base, own.bytes);
        eng.map.set(base.addr(), bytes, std::ptr::null());
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
            counts.classes[class].slots.sub(slab.slots() as u64);
            if let Some(capacity) = &eng.classes[class].capacity {
                capacity.give(slab.slots());
            }
        }
        self.uncache(bytes);
        counts.pages_given.add(1);
        // SAFETY: the pages were taken from the best-fit tier for this slab and no
        // slot in them is live; the page map no longer points at them.
        unsafe { eng.large.free_pages(NonNull::new_unchecked(base), bytes) };
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
            if Some(class) == keep {
                continue;
            }
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
                unsafe { list::remove(&mut cls.empty, slab, own) };
                released += own.bytes;
                self.destroy(eng, slab);
            }
            let cls = &mut self.state().classes[class];
            if !cls.current.is_null() {
                // SAFETY: a current slab is a live slab of this heap.
                let slab = unsafe { &*cls.current };
                if self.own(slab).live == 0 {
                    cls.current = std::ptr::null();
                    released += self.own(slab).bytes;
                    self.destroy(eng, slab);
                }
            }
        }
        for pages in 0..self.state().spans.len() {
            loop {
                let head = self.state().spans[pages];
                if head.is_null() {
                    break;
                }
                // SAFETY: cached spans are live slabs of this heap.
                let slab = unsafe { &*head };
                let own = self.own(slab);
                self.state().spans[pages] = own.next;
                own.next = std::ptr::null();
                released += own.bytes;
                self.destroy(eng, slab);
            }
        }
        released
    }

    /// Collects every pending free and gives every empty slab back.
    pub(crate) fn flush(&self, eng: &Engine) -> usize {
        self.collect_all(eng);
        self.release_empty(eng, None)
    }

    /// The current slab of `class`, if it holds `addr`.
    #[inline]
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
    /// totals, where peaks are recorded (slow paths only: it reads every class).
    pub(crate) fn publish(&self, eng: &Engine) {
        let counts = &self.heap.counts;
        let (allocated, requested) = net(self.heap, eng);
        let da = allocated.wrapping_sub(counts.published_allocated.get() as usize) as isize;
        let dr = requested.wrapping_sub(counts.published_requested.get() as usize) as isize;
        if da != 0 || dr != 0 {
            eng.totals.add(da, dr);
            counts.published_allocated.set(allocated as u64);
            counts.published_requested.set(requested as u64);
        }
    }

    /// Bytes of the largest cached free large block.
    pub(crate) fn largest_cached_span(&self) -> usize {
        let spans = &self.state().spans;
        (0..spans.len())
            .rev()
            .find(|&pages| !spans[pages].is_null())
            .map_or(0, |pages| pages * super::page_map::PAGE)
    }

    /// Every live slab of this heap.
    pub(crate) fn slabs(&self) -> impl Iterator<Item = &Slab> + '_ {
        self.state()
            .records
            .iter()
            .map(|r| &**r)
            .filter(|r| r.is_live())
    }

    /// The bytes and the live flag of slab `slab` (for snapshots).
    pub(crate) fn extent(&self, slab: &Slab) -> (usize, usize, bool) {
        let own = self.own(slab);
        (own.base.addr(), own.bytes, own.place != Place::Empty)
    }
}

/// Allocated and requested bytes of `heap`'s live blocks, from its counters
/// (wrapping: read while the owner runs, they may be a moment apart).
pub(crate) fn net(heap: &Heap, eng: &Engine) -> (usize, usize) {
    let c = &heap.counts;
    let mut allocated = c.span_live_bytes.get() as usize;
    for (class, counts) in eng.classes.iter().zip(c.classes.iter()) {
        let live = counts.allocs.get().wrapping_sub(counts.frees.get()) as usize;
        allocated = allocated.wrapping_add(live.wrapping_mul(class.stride));
    }
    let requested = c
        .requested
        .iter()
        .fold(0usize, |sum, r| sum.wrapping_add(r.get() as usize));
    (allocated, requested)
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
