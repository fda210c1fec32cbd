//! A slab: a run of pages carved into slots of one size, and the record that says,
//! beside the memory, which slots are free.
//!
//! A record has two sides:
//!
//! - **the owner's**: the thread whose heap holds the slab allocates and frees its
//!   slots with plain loads and stores (relaxed atomics where others may read). Free
//!   slots are a stack of slot numbers beside the memory, most recently freed on top
//!   (its lines are the warmest), above a *bump* of slots never handed out (known zero
//!   when the pages were fresh). Slots come in *groups* of 64, one cache line each: a
//!   bitmap of free slots and one of slots handed out raw, which every free checks,
//!   and the group's post words. Beside them, the size requested for each raw slot,
//!   and the bookkeeping in [`Own`] that only the owner touches.
//! - **everyone's**: a thread that frees a slot of a slab it does not own *posts* the
//!   free: one compare-and-swap sets the slot's bit in a post word, and the first
//!   post since the owner last looked puts the slab in the owner's inbox. The owner
//!   collects posts when it runs out of free slots, and at trim, flush and exit.
//!
//! # Generations
//!
//! Records are never freed while their engine lives; a record given back is reused
//! for another slab. Every use of a record is a *generation* (even; odd while the
//! record holds no slab), published with the geometry like a seqlock, and stored in
//! the top half of every post word. (One change of geometry happens within a
//! generation: a span grown in place, see [`Slab::regrow`]; readers other than the
//! owner bound the slot they compute by the slot count for it.) A thread that read
//! the page map just before the slab was given back reads a generation that no
//! longer matches, and its post fails:
//! a free that races with the slab's end is refused, never applied to whatever the
//! pages hold next. A valid free cannot race that way: its block is live for the
//! whole call, and a slab with a live block is never given back.
//!
//! # What a remote free checks, and when
//!
//! At once: that the address lies in a slab (else `Foreign`), starts a slot (else
//! `Interior`), and that the slot looks live, with the raw flag asked (else `NotLive`
//! or `NotRaw`), and that no free of it is pending (else `NotLive`). The last three
//! read the owner's bitmaps, which may change under the reader; a refusal is then
//! still right at the moment of the read. What the reader could not see (the owner
//! freed the slot and took it again in between) is settled by the owner: when it
//! hands out a slot it looks for a pending post and throws it away (a post from
//! before the slot was live again), and when it collects it checks the slot is live
//! with the kind posted. Such a late refusal is counted at once (the statistics'
//! `num_invalid_frees`), changes nothing, and is reported on standard error: at
//! once when a collection finds it, at the thread's next refill, trim, statistics or
//! exit when a hot path (which calls nothing) threw the post away.
//!
//! ```text
//! group (64 slots, one cache line): free bits | raw bits | 4 post words
//! post word: generation (32 bits) | slot 15: raw, typed | ... | slot 0: raw, typed
//! ```

use super::heap::Heap;
use super::page_map::PAGE;
use crate::error::PointerError;
use crate::util::sync::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, CacheLine,
    Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
};
use std::cell::UnsafeCell;
use std::ptr::NonNull;

/// Slots per group, and per post word.
const GROUP: usize = 64;
/// A stack entry's mark for a slot a typed holder freed on the owner's fast path:
/// still live in the bitmap (slot numbers are below [`MAX_SLOTS`](super::heap::MAX_SLOTS), 4096).
const TYPED_FREE: u16 = 1 << 15;
const POSTS_PER_WORD: usize = 16;
const POST_BITS: u64 = 0xFFFF_FFFF;

/// 64 slots: which are free, which are raw, and the frees posted to them.
#[repr(C, align(64))]
struct Group {
    /// 1 = free. Bits beyond the slab's slots are 0.
    free: AtomicU64,
    /// 1 = handed out through the raw API (meaningful for live slots only: a free
    /// slot keeps its last holder's bit).
    raw: AtomicU64,
    posts: [AtomicU64; GROUP / POSTS_PER_WORD],
}

/// Where a slab is in its heap's structures (owner-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// The record holds no slab: it waits in its heap's pool of records.
    Spare,
    /// The class allocates from it.
    Current,
    /// It has free slots and waits on its class's list of partial slabs.
    Partial,
    /// Every slot is live.
    Full,
    /// No slot is live; it waits on its class's list of empty slabs (for a large
    /// block, in its heap's cache of free blocks of its size).
    Empty,
}

/// The owner's side of a record: touched only by the thread that holds the heap
/// (or by one that stopped it, see `thread`).
#[derive(Debug)]
pub(crate) struct Own {
    /// The first slot, with the provenance of the pages.
    pub(crate) base: *mut u8,
    /// Free slots below the bump, the top at `Slab::top - 1`: every slot below
    /// `Slab::fresh` is either live or here, once.
    stack: Box<[u16]>,
    /// The pages were zero when the slab was made (fresh from the operating system):
    /// slots from the bump are zero.
    pub(crate) zero: bool,
    pub(crate) place: Place,
    /// While the slab holds no live block (empty, or a cached large block): the
    /// release passes that saw it unused.
    pub(crate) idle: u8,
    /// Bytes of pages.
    pub(crate) bytes: usize,
    /// Links of the list the slab is on (partial, empty, a block cache, the spares).
    pub(crate) prev: *const Slab,
    pub(crate) next: *const Slab,
}

/// The record of a slab. See the module docs. Three cache lines: what every
/// thread's free reads (the geometry), what the owner writes at every allocation and
/// free (its stack's top, the bump, its side), and the rest. A remote free reading
/// the geometry from a line the owner keeps writing waited on that line each time
/// (perf of a producer/consumer pair: a third of the consumer's samples, on the
/// geometry's loads).
#[repr(C, align(64))]
pub(crate) struct Slab {
    // ---- read by every thread; written when the slab is made or grows ----
    slots: AtomicU32,
    class: AtomicU32,
    base: AtomicUsize,
    stride: AtomicUsize,
    /// `slots * stride`: the bytes that slots start in.
    extent: AtomicUsize,
    /// `2^64 / stride`, rounded up: a slot index is one multiplication away.
    magic: AtomicU64,
    /// `capacity / 64` groups (rounded up), fixed for the record's life.
    groups: Box<[Group]>,
    gen: AtomicU32,
    // ---- written by the owner at every allocation and free ----
    _owner_line: [CacheLine; 0],
    /// Entries on the owner's stack of free slots (written by the owner only; read
    /// by statistics).
    top: AtomicU32,
    /// Slots handed out at least once since the slab was made: those at and above
    /// it are free and untouched (written by the owner only).
    fresh: AtomicU32,
    own: UnsafeCell<Own>,
    // ---- the rest ----
    _rest_line: [CacheLine; 0],
    /// The heap that owns this record, for its whole life.
    heap: *const Heap,
    /// Most slots the record can describe.
    capacity: u32,
    /// The size asked for each live raw slot.
    requested: Box<[AtomicU32]>,
    in_inbox: AtomicBool,
    inbox_next: AtomicPtr<Slab>,
    /// The next record of the same heap (a list statistics walk without a lock).
    pub(crate) all_next: AtomicPtr<Slab>,
    /// When its heap's cache of free large blocks took it (owner only: the cache's
    /// order, oldest first).
    cached_at: AtomicU64,
}

// SAFETY: every field another thread may touch is atomic or immutable; `own` is
// touched only by the thread that holds the owning heap (the heap's handshake hands
// it over with release/acquire ordering); `heap` is an address that never changes.
unsafe impl Send for Slab {}
// SAFETY: as above.
unsafe impl Sync for Slab {}

impl std::fmt::Debug for Slab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab")
            .field("gen", &self.gen.load(Relaxed))
            .field("base", &format_args!("{:#x}", self.base.load(Relaxed)))
            .field("stride", &self.stride.load(Relaxed))
            .field("slots", &self.slots.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Whether post word `word` holds a pending free of `slot` (one of its 16 slots):
/// a word with no post at all, the common case, in one test.
#[inline(always)]
fn posted(word: u64, slot: u32) -> bool {
    word & POST_BITS != 0 && (word >> (2 * (slot as usize % POSTS_PER_WORD))) & 3 != 0
}

/// A slot index from an offset: `offset / stride`, exact for offsets below 2^32.
#[inline(always)]
pub(crate) fn divide(offset: usize, magic: u64) -> usize {
    ((offset as u128 * magic as u128) >> 64) as usize
}

/// The multiplier [`divide`] uses for `stride` (at least 2).
pub(crate) fn magic_for(stride: usize) -> u64 {
    debug_assert!(stride > 1 && stride < 1 << 32);
    (u64::MAX / stride as u64).wrapping_add(1)
}

/// How a remote free went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Posted {
    /// The free is posted; the slab was already in its owner's inbox.
    Posted,
    /// The free is posted, and this call must put the slab in its owner's inbox.
    PostedFirst,
}

/// What collecting a slab's posts found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Collected {
    /// Slots freed.
    pub(crate) slots: u32,
    /// The raw slots among them, and their requested bytes (the threads that posted
    /// typed frees counted theirs).
    pub(crate) raw_slots: u32,
    pub(crate) raw_requested: usize,
    /// Posts refused now: frees of slots that were not live with the kind posted.
    pub(crate) refused: u32,
}

impl Slab {
    /// A spare record owned by `heap`, for slabs of up to `capacity` slots.
    pub(crate) fn new(heap: *const Heap, capacity: u32) -> Slab {
        let groups = (0..(capacity as usize).div_ceil(GROUP))
            .map(|_| Group {
                free: AtomicU64::new(0),
                raw: AtomicU64::new(0),
                posts: std::array::from_fn(|_| AtomicU64::new(1 << 32)),
            })
            .collect();
        Slab {
            slots: AtomicU32::new(0),
            class: AtomicU32::new(0),
            base: AtomicUsize::new(0),
            stride: AtomicUsize::new(PAGE),
            extent: AtomicUsize::new(0),
            magic: AtomicU64::new(magic_for(PAGE)),
            groups,
            gen: AtomicU32::new(1),
            _owner_line: [],
            top: AtomicU32::new(0),
            fresh: AtomicU32::new(0),
            own: UnsafeCell::new(Own {
                base: std::ptr::null_mut(),
                stack: vec![0; capacity as usize].into_boxed_slice(),
                zero: false,
                place: Place::Spare,
                idle: 0,
                bytes: 0,
                prev: std::ptr::null(),
                next: std::ptr::null(),
            }),
            _rest_line: [],
            heap,
            capacity,
            requested: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            in_inbox: AtomicBool::new(false),
            inbox_next: AtomicPtr::new(std::ptr::null_mut()),
            all_next: AtomicPtr::new(std::ptr::null_mut()),
            cached_at: AtomicU64::new(0),
        }
    }

    /// When its heap's cache took this free large block (see `heap::SpanCache`).
    pub(crate) fn cached_at(&self) -> u64 {
        self.cached_at.load(Relaxed)
    }

    /// Stamps this free large block as cached at `stamp` (by its heap's owner).
    pub(crate) fn set_cached_at(&self, stamp: u64) {
        self.cached_at.store(stamp, Relaxed);
    }

    #[inline(always)]
    fn group(&self, slot: u32) -> &Group {
        debug_assert!(slot < self.capacity);
        // SAFETY: every caller passes a slot below the slab's slot count, which is at
        // most the capacity, and the record has `capacity / 64` groups, rounded up.
        unsafe { self.groups.get_unchecked(slot as usize / GROUP) }
    }

    /// The post words of the slab's slots, with the first slot each covers.
    fn post_words(&self) -> impl Iterator<Item = (u32, &AtomicU64)> + '_ {
        let words = (self.slots.load(Relaxed) as usize).div_ceil(POSTS_PER_WORD);
        self.groups
            .iter()
            .flat_map(|g| g.posts.iter())
            .take(words)
            .enumerate()
            .map(|(w, word)| ((w * POSTS_PER_WORD) as u32, word))
    }

    /// The owner's side.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap (it is its thread between the heap's `enter`
    /// and `leave`, or it stopped the heap), and no other reference from `own` is live.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn own(&self) -> &mut Own {
        // SAFETY: by the caller's contract, nobody else touches `own` now.
        unsafe { &mut *self.own.get() }
    }

    /// The heap that owns the record.
    #[inline(always)]
    pub(crate) fn heap(&self) -> *const Heap {
        self.heap
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The class of the slab (owner's view, or a reader's that holds a live slot).
    #[inline(always)]
    pub(crate) fn class(&self) -> u32 {
        self.class.load(Relaxed)
    }

    #[inline(always)]
    pub(crate) fn stride(&self) -> usize {
        self.stride.load(Relaxed)
    }

    /// The multiplier that divides an offset by the stride.
    #[inline(always)]
    pub(crate) fn magic(&self) -> u64 {
        self.magic.load(Relaxed)
    }

    #[inline(always)]
    pub(crate) fn slots(&self) -> u32 {
        self.slots.load(Relaxed)
    }

    /// Live slots now: those handed out at least once, but for the free ones on the
    /// owner's stack (a moment's view when read by another thread).
    #[inline(always)]
    pub(crate) fn live(&self) -> u32 {
        self.fresh
            .load(Relaxed)
            .wrapping_sub(self.top.load(Relaxed))
    }

    /// Whether the record holds a slab now.
    pub(crate) fn is_live(&self) -> bool {
        self.gen.load(Acquire) & 1 == 0
    }

    /// Makes the record describe a new slab of `slots` slots of `stride` bytes over
    /// `bytes` bytes at `base`, all free, for class `class`.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap, the record is spare, and `[base, base +
    /// bytes)` is memory the heap owns, with `slots * stride <= bytes`.
    pub(crate) unsafe fn init(
        &self,
        base: NonNull<u8>,
        bytes: usize,
        stride: usize,
        slots: u32,
        class: u32,
        fresh: bool,
    ) {
        debug_assert!(slots >= 1 && slots <= self.capacity);
        debug_assert!(slots as usize * stride <= bytes);
        let dead = self.gen.load(Relaxed);
        debug_assert!(dead & 1 == 1, "init of a record in use");
        // Readers that saw the old geometry and now see any of the new must see the
        // generation change (seqlock): the odd generation is ordered before it.
        fence(Release);
        let gen = dead.wrapping_add(1);
        self.base.store(base.as_ptr().addr(), Relaxed);
        self.stride.store(stride, Relaxed);
        self.extent.store(slots as usize * stride, Relaxed);
        self.slots.store(slots, Relaxed);
        self.class.store(class, Relaxed);
        self.magic.store(magic_for(stride), Relaxed);
        self.top.store(0, Relaxed);
        self.fresh.store(0, Relaxed);
        let full_groups = slots as usize / GROUP;
        for (i, g) in self.groups.iter().enumerate() {
            let bits = match i.cmp(&full_groups) {
                std::cmp::Ordering::Less => u64::MAX,
                std::cmp::Ordering::Equal => (1u64 << (slots as usize % GROUP)) - 1,
                std::cmp::Ordering::Greater => 0,
            };
            g.free.store(bits, Relaxed);
            g.raw.store(0, Relaxed);
        }
        for (_, w) in self.post_words() {
            w.store((gen as u64) << 32, Relaxed);
        }
        // SAFETY: by the caller's contract.
        let own = unsafe { self.own() };
        own.base = base.as_ptr();
        own.bytes = bytes;
        own.zero = fresh;
        own.idle = 0;
        self.gen.store(gen, Release);
    }

    /// Ends the slab: no post can land any more. Returns the posts that were still
    /// pending (frees of slots of an empty slab: refused).
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap and the slab has no live slot.
    pub(crate) unsafe fn retire(&self) -> u32 {
        let gen = self.gen.load(Relaxed);
        debug_assert!(gen & 1 == 0);
        let dead = gen.wrapping_add(1);
        let mut refused = 0;
        // The words of this generation's slots: those of others never carry it.
        for (_, w) in self.post_words() {
            refused += (w.swap((dead as u64) << 32, AcqRel) & POST_BITS).count_ones();
        }
        self.gen.store(dead, Release);
        refused
    }

    // ---- the owner's allocation and free ---------------------------------------

    /// Hands out a free slot, live for a raw or typed holder (`requested` bytes for
    /// a raw one): the last one freed, else the next never handed out. Returns the
    /// slot, whether its bytes are known to be zero, and the number of stale posts it
    /// threw away; `None` when every slot is live.
    ///
    /// A slot a typed holder freed on the owner's fast path (see
    /// [`release_typed`](Self::release_typed)) is still live in the bitmap: it is
    /// handed out as it is.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap and passes this record's `own`.
    #[inline(always)]
    pub(crate) unsafe fn grant_slot(
        &self,
        own: &mut Own,
        raw: bool,
        requested: usize,
    ) -> Option<(u32, bool, u32)> {
        let top = self.top.load(Relaxed);
        let (slot, zero, reused) = if top != 0 {
            self.top.store(top - 1, Relaxed);
            // SAFETY: `top <= fresh <= slots <= capacity`, the stack's length.
            let entry = unsafe { *own.stack.get_unchecked(top as usize - 1) };
            if entry & TYPED_FREE != 0 {
                // Live in the bitmap, typed.
                let slot = u32::from(entry & !TYPED_FREE);
                if raw {
                    self.mark_raw(slot, requested);
                }
                return Some((slot, false, 0));
            }
            (u32::from(entry), false, true)
        } else {
            let fresh = self.fresh.load(Relaxed);
            if fresh >= self.slots.load(Relaxed) {
                return None;
            }
            self.fresh.store(fresh + 1, Relaxed);
            (fresh, own.zero, false)
        };
        let g = self.group(slot);
        let bit = 1u64 << (slot as usize % GROUP);
        g.free.store(g.free.load(Relaxed) & !bit, Relaxed);
        // The raw bit of a free slot is its last holder's: set it to this one's.
        let kinds = g.raw.load(Relaxed);
        if (kinds & bit != 0) != raw {
            g.raw.store(kinds ^ bit, Relaxed);
        }
        if raw {
            self.requested_of(slot).store(requested as u32, Relaxed);
        }
        if reused {
            // A post that reached this slot while it was free is stale (a double free
            // that raced with the owner's), and goes. A slot never handed out has
            // none: a post to it is refused at once.
            let word = &g.posts[slot as usize % GROUP / POSTS_PER_WORD];
            if posted(word.load(Relaxed), slot) {
                let shift = 2 * (slot as usize % POSTS_PER_WORD);
                let before = word.fetch_and(!(3 << shift), AcqRel);
                return Some((slot, zero, ((before >> shift) & 3).count_ones()));
            }
        }
        Some((slot, zero, 0))
    }

    /// Marks live typed `slot` raw, requested for `requested` bytes.
    #[inline(always)]
    fn mark_raw(&self, slot: u32, requested: usize) {
        let g = self.group(slot);
        g.raw
            .store(g.raw.load(Relaxed) | 1 << (slot as usize % GROUP), Relaxed);
        self.requested_of(slot).store(requested as u32, Relaxed);
    }

    /// The address of `slot`, with the pages' provenance.
    #[inline(always)]
    pub(crate) fn slot_ptr(&self, own: &Own, slot: u32) -> NonNull<u8> {
        let offset = slot as usize * self.stride.load(Relaxed);
        debug_assert!(offset < own.bytes);
        // SAFETY: `offset < bytes`, inside the slab's pages, which are not null.
        unsafe { NonNull::new_unchecked(own.base.add(offset)) }
    }

    /// The slot `addr` starts, or why it starts none.
    #[inline(always)]
    pub(crate) fn slot_of(&self, addr: usize) -> Result<u32, PointerError> {
        let base = self.base.load(Relaxed);
        let stride = self.stride.load(Relaxed);
        let offset = addr.wrapping_sub(base);
        if offset >= self.extent.load(Relaxed) {
            return Err(PointerError::NotLive);
        }
        let slot = divide(offset, self.magic.load(Relaxed));
        let within = offset - slot * stride;
        if within != 0 {
            return Err(self.inside(slot, base + slot * stride, within));
        }
        Ok(slot as u32)
    }

    /// Why an address `offset` bytes into `slot` (at `block`) is refused: inside a
    /// live block, or, when the slot is free, not a block at all (the address of a
    /// freed block's interior said "inside the live block" before).
    #[cold]
    fn inside(&self, slot: usize, block: usize, offset: usize) -> PointerError {
        // A reader that does not own the slab may see a span's geometry torn while
        // it grows: a slot past the count is no block.
        if slot >= self.slots() as usize
            || self.state(slot as u32).is_none()
            || self.free_posted(slot as u32)
        {
            return PointerError::NotLive;
        }
        PointerError::Interior { block, offset }
    }

    /// [`slot_of`](Self::slot_of) for a thread that does not own the slab: a span's
    /// geometry changes within a generation when it grows in place
    /// ([`regrow`](Self::regrow)), and a read torn across that change may name a slot
    /// past its one, refused here as not live.
    pub(crate) fn shared_slot_of(&self, addr: usize) -> Result<u32, PointerError> {
        let slot = self.slot_of(addr)?;
        if slot >= self.slots() {
            return Err(PointerError::NotLive);
        }
        Ok(slot)
    }

    /// Whether `slot` (below the slot count) is live, as another thread sees it now.
    pub(crate) fn slot_is_live(&self, slot: u32) -> bool {
        self.state(slot).is_some()
    }

    /// Whether `slot` is live, and with which raw flag.
    #[inline(always)]
    fn state(&self, slot: u32) -> Option<bool> {
        let g = self.group(slot);
        let bit = slot as usize % GROUP;
        if g.free.load(Relaxed) >> bit & 1 != 0 {
            return None;
        }
        Some(g.raw.load(Relaxed) >> bit & 1 != 0)
    }

    /// Whether the owner may free `slot` held with raw flag `raw`: live with that
    /// flag, and no free of it posted by another thread.
    #[inline(always)]
    pub(crate) fn may_free(&self, slot: u32, raw: bool) -> bool {
        let g = self.group(slot);
        let bit = slot as usize % GROUP;
        let word = g.posts[bit / POSTS_PER_WORD].load(Relaxed);
        (g.free.load(Relaxed) >> bit & 1) == 0
            && (g.raw.load(Relaxed) >> bit & 1 != 0) == raw
            && !posted(word, slot)
    }

    /// The owner checks a free of `slot` with raw flag `raw`; for a raw slot, the
    /// size that was requested for it.
    #[inline(always)]
    pub(crate) fn check_owned(&self, slot: u32, raw: bool) -> Result<usize, PointerError> {
        match self.state(slot) {
            None => return Err(PointerError::NotLive),
            Some(r) if r != raw => return Err(PointerError::NotRaw),
            Some(_) => {}
        }
        // A free of it posted by another thread came first.
        if self.free_posted(slot) {
            return Err(PointerError::NotLive);
        }
        Ok(if raw { self.requested(slot) } else { 0 })
    }

    /// Whether another thread posted a free of `slot` that its owner has not
    /// collected yet.
    fn free_posted(&self, slot: u32) -> bool {
        posted(
            self.group(slot).posts[slot as usize % GROUP / POSTS_PER_WORD].load(Relaxed),
            slot,
        )
    }

    /// The cell of `slot`'s requested size.
    #[inline(always)]
    fn requested_of(&self, slot: u32) -> &AtomicU32 {
        debug_assert!(slot < self.slots.load(Relaxed));
        // SAFETY: slots are below `slots`, at most the capacity, the array's length.
        unsafe { self.requested.get_unchecked(slot as usize) }
    }

    /// The requested size of live raw `slot`.
    #[inline(always)]
    pub(crate) fn requested(&self, slot: u32) -> usize {
        self.requested_of(slot).load(Relaxed) as usize
    }

    /// Sets the requested size of live raw `slot` (a block resized in place).
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap, and `slot` is a live raw slot that no other
    /// thread frees meanwhile (a posted free reads the size when collected).
    pub(crate) unsafe fn set_requested(&self, slot: u32, requested: usize) {
        debug_assert!(requested <= self.stride());
        self.requested_of(slot).store(requested as u32, Relaxed);
    }

    /// Makes a live span (a slab of one slot) describe `bytes` bytes from its base:
    /// its pages grew in place.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap and passes this record's `own`; the slab is
    /// a span whose slot is live, and `[base, base + bytes)` are pages the heap owns.
    pub(crate) unsafe fn regrow(&self, own: &mut Own, bytes: usize) {
        debug_assert!(self.slots() == 1 && bytes > own.bytes && bytes % PAGE == 0);
        // Other threads may read the geometry while it changes, within one
        // generation (a free of a bad pointer, through a stale page map entry): a
        // torn read may name a slot past the span's one, which every reader that
        // is not the owner refuses (`shared_slot_of`); a valid free of
        // the span cannot race with its resize (the caller's contract).
        self.stride.store(bytes, Relaxed);
        self.extent.store(bytes, Relaxed);
        self.magic.store(magic_for(bytes), Relaxed);
        own.bytes = bytes;
    }

    /// Frees live `slot` (checked by the caller): free in the bitmap (its raw bit,
    /// which says nothing of a free slot, stays until it is handed out again), on
    /// top of the stack.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap and passes this record's `own`.
    #[inline(always)]
    pub(crate) unsafe fn release(&self, own: &mut Own, slot: u32) {
        let g = self.group(slot);
        let bit = 1u64 << (slot as usize % GROUP);
        g.free.store(g.free.load(Relaxed) | bit, Relaxed);
        // SAFETY: by the caller's contract.
        unsafe { self.push(own, slot as u16) };
    }

    /// Frees live typed `slot` on the owner's fast path: on top of the stack only,
    /// marked [`TYPED_FREE`], and still live in the bitmap until it is handed out
    /// again (typed, as it is; raw, marked raw). The `Allocator` contract vouches for
    /// a typed free, so nothing needs the bitmap to refuse a second one; a raw free of
    /// the slot meanwhile is refused (it is not raw), and snapshots read the stack.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap and passes this record's `own`; the slot is
    /// live and typed (not raw).
    #[inline(always)]
    pub(crate) unsafe fn release_typed(&self, own: &mut Own, slot: u32) {
        debug_assert!(self.state(slot) == Some(false), "not a live typed slot");
        // SAFETY: by the caller's contract.
        unsafe { self.push(own, slot as u16 | TYPED_FREE) };
    }

    /// # Safety
    ///
    /// As for [`release`](Self::release).
    #[inline(always)]
    unsafe fn push(&self, own: &mut Own, entry: u16) {
        let top = self.top.load(Relaxed);
        debug_assert!(top < self.fresh.load(Relaxed), "more frees than slots used");
        // SAFETY: a live slot is below `fresh`, and the stack holds the others below
        // it: `top < fresh <= capacity`, the stack's length.
        unsafe { *own.stack.get_unchecked_mut(top as usize) = entry };
        self.top.store(top + 1, Relaxed);
    }

    // ---- remote frees ----------------------------------------------------------

    /// Posts a free of `addr` by a thread that does not own the slab; see the module
    /// docs for what is checked. One compare-and-swap, and for the first post since
    /// the owner last collected, one swap (then the caller pushes the slab onto the
    /// owner's inbox). Returns the slot's stride and class with the outcome.
    pub(crate) fn post(&self, addr: usize, raw: bool) -> Result<Posted, PointerError> {
        let gen = self.gen.load(Acquire);
        if gen & 1 != 0 {
            return Err(PointerError::NotLive);
        }
        let slot = self.shared_slot_of(addr);
        // The geometry read must belong to generation `gen` (seqlock).
        fence(Acquire);
        if self.gen.load(Relaxed) != gen {
            return Err(PointerError::NotLive);
        }
        let slot = slot?;
        match self.state(slot) {
            None => return Err(PointerError::NotLive),
            Some(r) if r != raw => return Err(PointerError::NotRaw),
            Some(_) => {}
        }
        let word = &self.group(slot).posts[slot as usize % GROUP / POSTS_PER_WORD];
        let shift = 2 * (slot as usize % POSTS_PER_WORD);
        let mine = (1 + raw as u64) << shift;
        let mut current = word.load(Relaxed);
        loop {
            if (current >> 32) as u32 != gen || (current >> shift) & 3 != 0 {
                // The slab ended since (the block cannot have been live for this
                // whole call), or a free of this slot is already pending.
                return Err(PointerError::NotLive);
            }
            match word.compare_exchange_weak(current, current | mine, SeqCst, Relaxed) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        loom_sc_fence();
        if self.in_inbox.load(SeqCst) || self.in_inbox.swap(true, AcqRel) {
            return Ok(Posted::Posted);
        }
        Ok(Posted::PostedFirst)
    }

    /// Pushes this slab onto the inbox of the heap that owns it (after a first post).
    pub(crate) fn push_to(&self, inbox: &AtomicPtr<Slab>) {
        let me = (self as *const Slab).cast_mut();
        let mut head = inbox.load(Relaxed);
        loop {
            self.inbox_next.store(head, Relaxed);
            match inbox.compare_exchange_weak(head, me, Release, Relaxed) {
                Ok(_) => return,
                Err(seen) => head = seen,
            }
        }
    }

    /// The next slab in an inbox list taken by its owner; read before
    /// [`leave_inbox`](Self::leave_inbox).
    pub(crate) fn inbox_next(&self) -> *const Slab {
        self.inbox_next.load(Relaxed)
    }

    /// Marks the slab out of its owner's inbox, before its posts are collected, so
    /// that a post after the collection puts it back.
    pub(crate) fn leave_inbox(&self) {
        self.in_inbox.store(false, SeqCst);
        loom_sc_fence();
    }

    /// Frees the slots posted so far (owner). Call after
    /// [`leave_inbox`](Self::leave_inbox), or on a stopped heap.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap and passes this record's `own`.
    pub(crate) unsafe fn collect(&self, own: &mut Own) -> Collected {
        let mut done = Collected::default();
        if self.gen.load(Relaxed) & 1 != 0 {
            return done;
        }
        for (first, word) in self.post_words() {
            if word.load(SeqCst) & POST_BITS == 0 {
                continue;
            }
            let mut bits = word.fetch_and(!POST_BITS, AcqRel) & POST_BITS;
            while bits != 0 {
                let pair = bits.trailing_zeros() & !1;
                let kinds = (bits >> pair) & 3;
                bits &= !(3 << pair);
                let slot = first + pair / 2;
                match self.state(slot) {
                    Some(raw) if kinds & (1 << raw as u32) != 0 => {
                        if raw {
                            done.raw_slots += 1;
                            done.raw_requested += self.requested(slot);
                        }
                        // SAFETY: by the caller's contract.
                        unsafe { self.release(own, slot) };
                        done.slots += 1;
                        done.refused += kinds.count_ones() - 1;
                    }
                    _ => done.refused += kinds.count_ones(),
                }
            }
        }
        done
    }

    /// Frees posted and not yet collected (a moment's view: for deciding to collect;
    /// a slot posted twice counts twice).
    pub(crate) fn pending(&self) -> u32 {
        self.post_words()
            .map(|(_, w)| (w.load(Relaxed) & POST_BITS).count_ones())
            .sum()
    }

    /// Whether posts are pending now (racy by nature: for deciding to collect).
    pub(crate) fn has_posts(&self) -> bool {
        self.post_words()
            .any(|(_, w)| w.load(Relaxed) & POST_BITS != 0)
    }

    /// Live slots as `(slot, raw)`, for snapshots: those live in the bitmap, but the
    /// typed frees still on the owner's stack.
    ///
    /// # Safety
    ///
    /// The caller holds the owning heap and passes this record's `own`.
    pub(crate) unsafe fn live_slots(&self, own: &Own) -> Vec<(u32, bool)> {
        let top = self.top.load(Relaxed) as usize;
        let mut typed_free: Vec<u32> = own.stack[..top]
            .iter()
            .filter(|&&e| e & TYPED_FREE != 0)
            .map(|&e| u32::from(e & !TYPED_FREE))
            .collect();
        typed_free.sort_unstable();
        (0..self.slots.load(Relaxed))
            .filter(|s| typed_free.binary_search(s).is_err())
            .filter_map(|s| self.state(s).map(|raw| (s, raw)))
            .collect()
    }
}

/// Under loom, the sequentially consistent fence that stands for the total order of
/// the `SeqCst` accesses around it (loom models SeqCst fences, not SeqCst accesses).
#[inline(always)]
fn loom_sc_fence() {
    #[cfg(loom)]
    fence(SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_shared_reads_and_its_owners_writes_are_on_different_lines() {
        use std::mem::offset_of;
        assert_eq!(std::mem::align_of::<Slab>(), 64);
        let geometry = [
            offset_of!(Slab, slots),
            offset_of!(Slab, class),
            offset_of!(Slab, base),
            offset_of!(Slab, stride),
            offset_of!(Slab, extent),
            offset_of!(Slab, magic),
            offset_of!(Slab, groups),
            offset_of!(Slab, gen),
        ];
        assert!(geometry.iter().all(|&at| at < 64), "{geometry:?}");
        let owner = [
            offset_of!(Slab, top),
            offset_of!(Slab, fresh),
            offset_of!(Slab, own),
        ];
        assert!(owner.iter().all(|&at| (64..128).contains(&at)), "{owner:?}");
        // Posters write the inbox link: not on either line.
        assert!(offset_of!(Slab, in_inbox) >= 128 && offset_of!(Slab, inbox_next) >= 128);
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive arithmetic, no unsafe code")]
    fn division_by_magic_is_exact() {
        let strides = (8..=4096).chain((4096..=(1 << 20)).step_by(4096)).chain([
            72,
            104,
            4608,
            36_864,
            1 << 20,
            3 << 20,
        ]);
        for stride in strides {
            let magic = magic_for(stride);
            let span = (4096 * stride).min(1 << 32);
            for offset in (0..span)
                .step_by(stride.max(97))
                .flat_map(|o| [o, o + stride - 1])
            {
                assert_eq!(
                    divide(offset, magic),
                    offset / stride,
                    "{offset} / {stride}"
                );
            }
        }
    }

    #[test]
    fn a_read_torn_across_a_span_growth_names_no_slot_past_its_one() {
        // What a thread that is not the owner may read while a span grows in place
        // (`regrow`): the new extent with the old stride and multiplier. A free of
        // the address one old stride in then names slot 1 of a slab of one slot: it
        // is refused, and no state past the slab's slot is read or posted to.
        let mut memory = vec![0u64; 4 * PAGE / 8];
        let base = NonNull::new(memory.as_mut_ptr().cast::<u8>()).unwrap();
        let slab = Slab::new(std::ptr::null(), 1);
        // SAFETY: a spare record that no heap holds, over memory this test owns.
        unsafe { slab.init(base, 2 * PAGE, 2 * PAGE, 1, super::super::SPAN_CLASS, false) };
        slab.extent.store(4 * PAGE, Relaxed);
        let torn = base.as_ptr().addr() + 2 * PAGE;
        for raw in [false, true] {
            assert_eq!(slab.post(torn, raw), Err(PointerError::NotLive));
        }
        assert!(slab
            .post_words()
            .all(|(_, w)| w.load(Relaxed) & POST_BITS == 0));
    }

    #[test]
    fn a_group_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Group>(), 64);
        assert_eq!(std::mem::align_of::<Group>(), 64);
    }
}
