//! `Arena`: bump allocation for short-lived tensors, released all at once.
//!
//! An arena hands out memory by moving a pointer down through a chunk: a subtraction,
//! a mask for the alignment and a compare. When a chunk is exhausted it moves to the
//! next one, taking a new chunk from upstream (each twice the last) when none is
//! left. Nothing is freed one by one: [`Arena::reset`] releases everything, a
//! [`Checkpoint`] releases what came after it, and [`Arena::scope`] runs a closure
//! and releases what the closure allocated. Chunks are kept for the next round, so
//! the memory stays warm; [`Arena::trim`] gives back the ones not in use.
//!
//! The borrow checker proves that nothing outlives its release: allocations borrow
//! the arena (or the scope), and `reset` and `rewind` need `&mut self`. A
//! use-after-reset does not compile:
//!
//! ```compile_fail
//! let mut arena = tensorpool::Arena::new();
//! let x = arena.alloc(1.0f32).unwrap();
//! arena.reset(); // error: `arena` is still borrowed by `x`
//! *x += 1.0;
//! ```
//!
//! and neither does a reference escaping its scope:
//!
//! ```compile_fail
//! let mut arena = tensorpool::Arena::new();
//! let escaped = arena.scope(|s| s.alloc(1u32).unwrap());
//! ```
//!
//! What does compile: data that must outlive many steps goes into an outer scope, and
//! each step runs in a nested scope released at its end.
//!
//! ```
//! use tensorpool::{Arena, Result};
//!
//! let mut arena = Arena::new();
//! arena.scope(|model| -> Result<()> {
//!     let weights = model.alloc_slice_fill(1024, 0.5f32)?; // lives for the whole model
//!     for step in 0..3 {
//!         let total = model.scope(|s| -> Result<f32> {
//!             let activations = s.alloc_slice_fill(4096, step as f32)?;
//!             activations[0] += weights[0];
//!             let head = s.scope(|inner| -> Result<f32> {
//!                 let tmp = inner.alloc_slice_copy(&activations[..4])?;
//!                 Ok(tmp.iter().sum())
//!             })?; // `tmp` is released here
//!             Ok(head)
//!         })?; // `activations` is released here: every step reuses the same memory
//!         assert_eq!(total, 4.0 * step as f32 + 0.5);
//!     }
//!     assert_eq!(weights.len(), 1024);
//!     Ok(())
//! })?;
//! let x = arena.alloc(7u64)?; // plain allocations live until the next reset
//! assert_eq!(*x, 7);
//! arena.reset(); // everything released; the chunks stay for the next round
//! assert_eq!(arena.stats().allocated_bytes, 0);
//! # Ok::<(), tensorpool::Error>(())
//! ```
//!
//! An `Arena` is `Send` but not `Sync`: the bump pointer is a plain `Cell`, which is
//! what makes allocation take about a nanosecond. Use one arena per thread (the
//! manager hands out as many as needed).
//!
//! `&Arena` and `&Scope` are allocator-api2 `Allocator`s, so collections grow in them
//! (`Vec<T, &Scope>`): as in bumpalo, the last block grows where it is (its bytes
//! move down with the bump) and is given back at once when freed, and a block
//! shrinks in place; a collection of a scope cannot be used across a nested scope,
//! which needs the scope mutably.
//!
//! As in bumpalo, values moved into an arena are never dropped: a reset, rewind or
//! scope end releases their memory without running their destructors. Put plain
//! data in it (numbers, tensors' elements); a value that owns other memory (a
//! `String`, a `Vec` of the global allocator) leaks what it owns.

use crate::error::{Error, OomCause, OutOfMemory, Result};
use crate::limits::{round_up, validate, MAX_ALIGN};
use crate::observe::debug::{self, GuardViolation, LeakReport, GUARD};
use crate::observe::snapshot::{BlockSnapshot, BlockState, SegmentSnapshot, Snapshot};
use crate::observe::stats::{Tier, Usage};
use crate::tiers::contract::zero_sized;
use crate::upstream::{default_upstream, page_size, Region, Upstream};
use crate::util::relocate::relocate;
use allocator_api2::alloc::{AllocError, Allocator};
use bytemuck::Zeroable;
use serde::Serialize;
use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Default size of an arena's first chunk.
pub const DEFAULT_FIRST_CHUNK: usize = 64 << 10;

/// Default largest chunk an arena takes at once (larger requests get a chunk of their own size).
pub const DEFAULT_MAX_CHUNK: usize = 64 << 20;

static NEXT_ARENA_ID: AtomicU64 = AtomicU64::new(1);

/// A bump allocator over chunks.
// The fields in this order (`repr(C)` keeps it): the two counters the hot path adds
// to are not neighbours, so the compiler cannot merge their updates into one 16-byte
// load and store, which stalls on the forwarding of the previous allocation's store
// (1.37x bumpalo's time per allocation merged, 0.90x apart, `tensorpool bench`'s
// arena workload).
#[repr(C)]
pub struct Arena {
    /// The bump pointer: allocations are carved below it. Null before the first chunk.
    cur: Cell<*mut u8>,
    num_allocs: Cell<u64>,
    /// Lowest address of the current chunk (`usize::MAX` before the first chunk).
    low: Cell<usize>,
    requested: Cell<usize>,
    /// One past the highest address of the current chunk (0 before the first chunk).
    high: Cell<usize>,
    /// Index of the current chunk in `chunks`.
    current: Cell<usize>,
    chunks: RefCell<Vec<Region>>,
    /// Counters that only change off the fast path.
    slow: RefCell<Usage>,
    first_chunk: usize,
    max_chunk: usize,
    capacity: Option<usize>,
    id: u64,
    generation: Cell<u64>,
    upstream: Arc<dyn Upstream>,
    /// Debug mode's records, if on.
    debug: Option<Box<ArenaDebug>>,
}

/// Debug mode's records: live allocations in order (address, size), and overruns.
#[derive(Debug, Default)]
struct ArenaDebug {
    live: RefCell<Vec<(NonNull<u8>, usize)>>,
    violations: RefCell<Vec<GuardViolation>>,
}

impl ArenaDebug {
    /// Releases the allocations after the first `keep`: checks their guards, poisons
    /// them.
    fn release(&self, keep: usize) {
        let mut live = self.live.borrow_mut();
        let keep = keep.min(live.len());
        for (ptr, size) in live.drain(keep..) {
            // SAFETY: a live allocation of `size + GUARD` bytes, released now: nothing
            // references it any more (the borrow checker or the caller of `allocate`
            // guarantees it, as for any reset or rewind).
            if let Some(violation) = unsafe { debug::release(ptr, size, Tier::Arena, None) } {
                self.violations.borrow_mut().push(violation);
            }
        }
    }
}

// SAFETY: an Arena owns all of its state (the chunks are regions it took from
// upstream, the cells hold addresses inside them); moving it to another thread moves
// all of it, and `&Arena` is not `Sync` because of the cells, so no two threads ever
// touch the bump pointer at once.
unsafe impl Send for Arena {}

/// A position in an arena to rewind to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    arena: u64,
    generation: u64,
    chunk: usize,
    /// The chunk's first byte (0 before the first chunk): a trim gives chunks after
    /// the position back, and a later chunk at the same index is another one.
    start: usize,
    used: usize,
    /// Live allocations recorded by debug mode (0 outside it).
    records: usize,
}

/// Builder for an [`Arena`] with non-default settings.
#[derive(Debug, Clone)]
pub struct ArenaBuilder {
    first_chunk: usize,
    max_chunk: usize,
    capacity: Option<usize>,
    upstream: Option<Arc<dyn Upstream>>,
    debug: bool,
}

/// Statistics of an arena.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ArenaStats {
    /// Bytes in use since the last reset or rewind, alignment padding included, and
    /// the unused ends of the chunks before the current one (a block that did not
    /// fit in a chunk's end went to the next chunk: the end holds nothing until a
    /// reset or rewind).
    pub allocated_bytes: usize,
    /// The most `allocated_bytes` seen.
    pub peak_allocated_bytes: usize,
    /// Bytes asked for since the last reset (rewinds do not subtract).
    pub requested_bytes: usize,
    /// Bytes in chunks taken from upstream.
    pub reserved_bytes: usize,
    /// The most `reserved_bytes` seen.
    pub peak_reserved_bytes: usize,
    /// Chunks held.
    pub chunks: usize,
    /// Allocations since the arena was made.
    pub num_allocs: u64,
    /// Allocations refused for lack of memory.
    pub num_ooms: u64,
    /// Chunks taken from upstream.
    pub num_upstream_allocs: u64,
    /// Chunks given back to upstream.
    pub num_upstream_frees: u64,
}

impl ArenaBuilder {
    /// Size of the first chunk (default 64 KiB); each new chunk doubles the last.
    pub fn first_chunk_size(mut self, bytes: usize) -> Self {
        self.first_chunk = bytes;
        self
    }

    /// Largest chunk taken at once (default 64 MiB), except for a larger request.
    pub fn max_chunk_size(mut self, bytes: usize) -> Self {
        self.max_chunk = bytes;
        self
    }

    /// A fixed capacity: the arena never reserves more than `bytes` and reports
    /// itself full instead. The first chunk is then the whole capacity.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = Some(bytes);
        self
    }

    /// Where chunks come from (default: [`default_upstream`]).
    pub fn upstream(mut self, upstream: Arc<dyn Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Debug mode (see [`debug`](crate::observe::debug)): guard bytes after every allocation,
    /// checked and the memory poisoned when a reset, rewind, scope end or drop releases
    /// it; dropping the arena with allocations not released by a reset reports them.
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// The arena, or an error naming the setting that cannot apply.
    pub fn build(self) -> Result<Arena> {
        if self.first_chunk == 0 || self.max_chunk < self.first_chunk {
            return Err(Error::InvalidConfig(format!(
                "an arena's first chunk must be at least 1 byte and at most its largest chunk \
                 ({} > {})",
                self.first_chunk, self.max_chunk
            )));
        }
        if self.first_chunk > crate::MAX_ALLOCATION_SIZE {
            return Err(Error::InvalidConfig(format!(
                "an arena's first chunk ({} bytes) is beyond the largest allocation ({} bytes)",
                self.first_chunk,
                crate::MAX_ALLOCATION_SIZE
            )));
        }
        if let Some(cap) = self.capacity {
            validate(cap, 1).map_err(|e| {
                Error::InvalidConfig(format!("an arena's capacity is not a valid size: {e}"))
            })?;
        }
        let page = page_size();
        // A largest chunk beyond any allocation (`usize::MAX`: no limit) is the
        // largest allocation (rounded to pages, it overflowed: a user hunt).
        let max_chunk = self.max_chunk.min(crate::MAX_ALLOCATION_SIZE);
        Ok(Arena {
            cur: Cell::new(std::ptr::null_mut()),
            low: Cell::new(usize::MAX),
            high: Cell::new(0),
            num_allocs: Cell::new(0),
            requested: Cell::new(0),
            current: Cell::new(0),
            chunks: RefCell::new(Vec::new()),
            slow: RefCell::new(Usage::default()),
            first_chunk: self.capacity.unwrap_or(round_up(self.first_chunk, page)),
            max_chunk: round_up(max_chunk, page),
            capacity: self.capacity,
            id: NEXT_ARENA_ID.fetch_add(1, Ordering::Relaxed),
            generation: Cell::new(0),
            upstream: self.upstream.unwrap_or_else(default_upstream),
            debug: self.debug.then(Box::default),
        })
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("id", &self.id)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Arena {
    /// A growable arena with default settings.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default settings are valid")
    }

    /// An arena that never reserves more than `bytes`.
    pub fn with_capacity(bytes: usize) -> Result<Self> {
        Self::builder().capacity(bytes).build()
    }

    /// A builder for other settings.
    pub fn builder() -> ArenaBuilder {
        ArenaBuilder {
            first_chunk: DEFAULT_FIRST_CHUNK,
            max_chunk: DEFAULT_MAX_CHUNK,
            capacity: None,
            upstream: None,
            debug: false,
        }
    }

    /// `size` bytes aligned to `align` (any power of two), uninitialized.
    ///
    /// The memory is valid until the arena is reset, rewound below it, or dropped.
    #[inline]
    pub fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        if !align.is_power_of_two() {
            return Err(Error::InvalidAlignment { align });
        }
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        self.bump_or_grow(size, align)
    }

    /// [`allocate`](Self::allocate) for a size and alignment already known valid.
    #[inline]
    fn bump_or_grow(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        debug_assert!(size > 0 && align.is_power_of_two());
        if let Some(debug) = &self.debug {
            return self.bump_guarded(debug, size, align);
        }
        match self.try_bump(size, align) {
            Some(p) => Ok(p),
            None => self.allocate_slow(size, align),
        }
    }

    /// Debug mode's allocation: `size` bytes and a guard, recorded.
    #[cold]
    fn bump_guarded(&self, debug: &ArenaDebug, size: usize, align: usize) -> Result<NonNull<u8>> {
        let padded = size.checked_add(GUARD).ok_or(Error::SizeTooLarge {
            size,
            max: crate::MAX_ALLOCATION_SIZE,
        })?;
        let ptr = match self.try_bump(padded, align) {
            Some(p) => p,
            None => self.allocate_slow(padded, align)?,
        };
        // SAFETY: fresh arena memory of `padded` bytes.
        unsafe { debug::arm(ptr, size, true) };
        debug.live.borrow_mut().push((ptr, size));
        Ok(ptr)
    }

    /// In debug mode, the overruns of guard bytes found so far.
    pub fn guard_violations(&self) -> Vec<GuardViolation> {
        self.debug
            .as_ref()
            .map_or_else(Vec::new, |d| d.violations.borrow().clone())
    }

    /// In debug mode, the allocations not yet released by a reset, rewind or scope:
    /// what dropping the arena would report. `None` outside debug mode.
    pub fn leaks(&self) -> Option<LeakReport> {
        self.debug.as_ref().map(|d| {
            debug::leak_report(
                "arena",
                d.live.borrow().iter().map(|&(_, size)| (size, None)),
            )
        })
    }

    #[inline(always)]
    fn try_bump(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let cur = self.cur.get();
        let new = cur.addr().checked_sub(size)? & !(align - 1);
        if new < self.low.get() {
            return None;
        }
        let ptr = cur.with_addr(new);
        self.cur.set(ptr);
        self.count_allocation(size);
        // `new >= low > 0`: the address is inside the current chunk, not null.
        NonNull::new(ptr)
    }

    /// Counts an allocation of `size` bytes.
    #[inline(always)]
    fn count_allocation(&self, size: usize) {
        self.num_allocs.set(self.num_allocs.get() + 1);
        self.requested.set(self.requested.get() + size);
    }

    #[cold]
    fn allocate_slow(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        validate(size, align.min(MAX_ALIGN))?;
        // Chunks start on a page boundary and bumps go down from their end: a chunk
        // of `size` bytes holds the request at any alignment up to a page (rounding
        // down from `end - size` stays at or above the aligned start), and at a
        // larger one with `align - page` bytes more.
        let slack = align.saturating_sub(page_size());
        if slack > crate::MAX_ALLOCATION_SIZE {
            // An alignment that alone asks for more than any allocation may be (it
            // read as running out of memory, with advice about fragmentation).
            return Err(Error::AlignmentTooLarge {
                align,
                max: crate::MAX_ALLOCATION_SIZE,
            });
        }
        let needed = size + slack;
        if needed > crate::MAX_ALLOCATION_SIZE {
            // The size, with the room the alignment needs: too large at this
            // alignment (it was said of the alignment, against the size limit).
            return Err(Error::SizeTooLarge {
                size,
                max: crate::MAX_ALLOCATION_SIZE - slack,
            });
        }
        self.note_peak();
        let used = self.used_bytes();
        let mut chunks = self.chunks.borrow_mut();
        // A retained chunk after the current one (left by a reset or rewind).
        let next = if chunks.is_empty() {
            0
        } else {
            self.current.get() + 1
        };
        let reuse = chunks.get(next).is_some_and(|c| c.len() >= needed);
        if !reuse {
            let region = self.new_chunk(&chunks, used, needed, size, align)?;
            chunks.insert(next, region);
        }
        let chunk = chunks[next];
        drop(chunks);
        self.enter(next, 0, &chunk);
        Ok(self
            .try_bump(size, align)
            .expect("a fresh chunk holds the request"))
    }

    fn new_chunk(
        &self,
        chunks: &[Region],
        used: usize,
        needed: usize,
        size: usize,
        align: usize,
    ) -> Result<Region> {
        let page = page_size();
        let reserved: usize = chunks.iter().map(Region::len).sum();
        let last = chunks.iter().map(Region::len).max().unwrap_or(0);
        let mut bytes = (last * 2)
            .clamp(self.first_chunk, self.max_chunk.max(self.first_chunk))
            .max(round_up(needed, page));
        let mut usage = self.slow.borrow_mut();
        // For a report: the current chunk's free bytes, and chunks retained after it.
        let largest = || {
            let here = self.cur.get().addr().saturating_sub(self.low.get());
            chunks
                .get(self.current.get() + 1..)
                .into_iter()
                .flatten()
                .map(Region::len)
                .fold(here, usize::max)
        };
        if let Some(cap) = self.capacity {
            bytes = bytes.min(cap.saturating_sub(reserved));
            if bytes < needed {
                usage.num_ooms += 1;
                usage.allocated_bytes = used;
                let largest = largest();
                let report = OutOfMemory::new(
                    size,
                    align,
                    Tier::Arena,
                    OomCause::CapacityReached { capacity: cap },
                    &usage,
                    largest,
                );
                return Err(report.into_error());
            }
        }
        match self.upstream.allocate(bytes, page) {
            Ok(ptr) => {
                usage.on_reserve(bytes);
                Ok(Region::new(ptr, bytes))
            }
            Err(refusal) => {
                usage.num_ooms += 1;
                usage.allocated_bytes = used;
                // (It said 0 with room left in the current chunk: a user hunt.)
                let mut report = OutOfMemory::from_upstream(
                    size,
                    align,
                    Tier::Arena,
                    refusal,
                    &usage,
                    largest(),
                );
                self.upstream.complete_report(&mut report);
                Err(report.into_error())
            }
        }
    }

    /// Makes `chunk` (at index `index`) current with `used` bytes already taken.
    fn enter(&self, index: usize, used: usize, chunk: &Region) {
        let end = chunk.ptr().as_ptr().wrapping_add(chunk.len());
        self.current.set(index);
        self.low.set(chunk.start());
        self.high.set(chunk.start() + chunk.len());
        self.cur.set(end.wrapping_sub(used));
    }

    fn position(&self) -> (usize, usize) {
        let chunks = self.chunks.borrow();
        match chunks.get(self.current.get()) {
            Some(chunk) => (
                self.current.get(),
                chunk.start() + chunk.len() - self.cur.get().addr(),
            ),
            None => (0, 0),
        }
    }

    /// Bytes in use: the full chunks before the current one, and the current one's used part.
    fn used_bytes(&self) -> usize {
        let chunks = self.chunks.borrow();
        let (index, used) = self.position();
        chunks[..index.min(chunks.len())]
            .iter()
            .map(Region::len)
            .sum::<usize>()
            + used
    }

    fn note_peak(&self) {
        let used = self.used_bytes();
        let mut usage = self.slow.borrow_mut();
        usage.peak_allocated_bytes = usage.peak_allocated_bytes.max(used);
    }

    /// The current position, to rewind to later.
    pub fn checkpoint(&self) -> Checkpoint {
        let (chunk, used) = self.position();
        // The arena's start is one place, whichever chunk comes first.
        let start = match (chunk, used) {
            (0, 0) => 0,
            _ => self.chunks.borrow().get(chunk).map_or(0, Region::start),
        };
        Checkpoint {
            arena: self.id,
            generation: self.generation.get(),
            chunk,
            start,
            used,
            records: self.debug.as_ref().map_or(0, |d| d.live.borrow().len()),
        }
    }

    /// Releases everything allocated after `checkpoint`. A checkpoint ahead of the
    /// current position (the blocks after it were given back already: a rewind to
    /// an earlier checkpoint, or a deallocation of the last block) has nothing to
    /// release.
    ///
    /// Fails, changing nothing, for a checkpoint of another arena, one taken before
    /// the last reset, or one whose chunk is no longer where it was (a
    /// [`trim`](Self::trim) gave it back, or a new chunk was placed before it: the
    /// checkpoint is ahead of the position then, with nothing to release).
    pub fn rewind(&mut self, checkpoint: Checkpoint) -> Result<()> {
        if checkpoint.arena != self.id {
            return Err(Error::InvalidCheckpoint("it belongs to another arena"));
        }
        if checkpoint.generation != self.generation.get() {
            return Err(Error::InvalidCheckpoint(
                "it was taken before the last reset",
            ));
        }
        let chunk_matches = match self.chunks.borrow().get(checkpoint.chunk) {
            // The arena's start.
            _ if (checkpoint.chunk, checkpoint.used) == (0, 0) => true,
            Some(chunk) => chunk.start() == checkpoint.start && checkpoint.used <= chunk.len(),
            None => false,
        };
        if !chunk_matches {
            // (A stale checkpoint set the position below its chunk's start: a user
            // hunt.)
            return Err(Error::InvalidCheckpoint(
                "its chunk is no longer where it was (a trim gave it back, or a new chunk \
                 was placed before it)",
            ));
        }
        if (checkpoint.chunk, checkpoint.used) > self.position() {
            // (It was refused as "ahead of the arena" after a `Vec` in the arena was
            // dropped: a user hunt.)
            return Ok(());
        }
        self.rewind_to(checkpoint);
        Ok(())
    }

    /// Moves the bump pointer back to `checkpoint`, which is at or before the current
    /// position. Callers guarantee that nothing allocated after it is still borrowed.
    fn rewind_to(&self, checkpoint: Checkpoint) {
        if let Some(debug) = &self.debug {
            debug.release(checkpoint.records);
        }
        self.note_peak();
        let chunks = self.chunks.borrow();
        if let Some(chunk) = chunks.get(checkpoint.chunk) {
            self.enter(checkpoint.chunk, checkpoint.used, chunk);
        }
    }

    /// Releases everything. Chunks are kept (warm) for what comes next.
    pub fn reset(&mut self) {
        if let Some(debug) = &self.debug {
            debug.release(0);
        }
        self.note_peak();
        self.generation.set(self.generation.get() + 1);
        self.requested.set(0);
        let chunks = self.chunks.borrow();
        if let Some(first) = chunks.first() {
            self.enter(0, 0, first);
        }
    }

    /// Runs `f` with a scope that allocates from this arena, then releases everything
    /// `f` allocated. References from the scope cannot leave `f`.
    ///
    /// It takes `&mut self`, so that nothing else allocates from the arena while the
    /// scope runs (the release would free it too). Data that must live across scopes
    /// goes into an outer scope, whose nested scopes can read it.
    pub fn scope<R>(&mut self, f: impl for<'s> FnOnce(&mut Scope<'s>) -> R) -> R {
        run_scope(self, f)
    }

    /// Gives back to upstream the chunks after the current position (all of them if
    /// nothing is allocated); returns the bytes freed.
    pub fn trim(&self) -> usize {
        let (index, used) = self.position();
        let mut chunks = self.chunks.borrow_mut();
        let keep = if used == 0 && index == 0 {
            0
        } else {
            index + 1
        };
        if keep >= chunks.len() {
            return 0;
        }
        let released: Vec<Region> = chunks.drain(keep..).collect();
        drop(chunks);
        if keep == 0 {
            self.cur.set(std::ptr::null_mut());
            self.low.set(usize::MAX);
            self.high.set(0);
            self.current.set(0);
        }
        let mut usage = self.slow.borrow_mut();
        let mut bytes = 0;
        for region in released {
            bytes += region.len();
            usage.on_release(region.len());
            // SAFETY: the region came from this upstream with its length and page
            // alignment; it lies after the current position, so nothing allocated
            // in it is still in use.
            unsafe {
                self.upstream
                    .deallocate(region.ptr(), region.len(), page_size())
            };
        }
        bytes
    }

    /// The arena's statistics.
    pub fn stats(&self) -> ArenaStats {
        self.note_peak();
        let usage = self.slow.borrow();
        ArenaStats {
            allocated_bytes: self.used_bytes(),
            peak_allocated_bytes: usage.peak_allocated_bytes,
            requested_bytes: self.requested.get(),
            reserved_bytes: usage.reserved_bytes,
            peak_reserved_bytes: usage.peak_reserved_bytes,
            chunks: self.chunks.borrow().len(),
            num_allocs: self.num_allocs.get(),
            num_ooms: usage.num_ooms,
            num_upstream_allocs: usage.num_upstream_allocs,
            num_upstream_frees: usage.num_upstream_frees,
        }
    }

    /// The chunks, each listed as one block: the part in use.
    pub fn snapshot(&self) -> Snapshot {
        let (index, used) = self.position();
        let chunks = self.chunks.borrow();
        let segments = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let in_use = match i.cmp(&index) {
                    std::cmp::Ordering::Less => c.len(),
                    std::cmp::Ordering::Equal => used,
                    std::cmp::Ordering::Greater => 0,
                };
                let end = c.start() + c.len();
                let mut blocks = Vec::new();
                if in_use < c.len() {
                    blocks.push(BlockSnapshot {
                        address: c.start(),
                        size: c.len() - in_use,
                        requested: 0,
                        state: BlockState::Free,
                    });
                }
                if in_use > 0 {
                    blocks.push(BlockSnapshot {
                        address: end - in_use,
                        size: in_use,
                        requested: in_use,
                        state: BlockState::Allocated,
                    });
                }
                SegmentSnapshot {
                    tier: Tier::Arena,
                    address: c.start(),
                    size: c.len(),
                    block_size: None,
                    allocated_bytes: in_use,
                    free_blocks: 0,
                    blocks,
                }
            })
            .collect();
        Snapshot { segments }
    }

    /// Moves `value` into the arena.
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc<T>(&self, value: T) -> Result<&mut T> {
        // SAFETY: the memory lives until a reset, rewind or drop, each of which needs
        // `&mut self` and so ends the borrow of `self` that bounds the result.
        unsafe { alloc_value_with(self, || value) }
    }

    /// A slice of `len` copies of `value`.
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill<T: Clone>(&self, len: usize, value: T) -> Result<&mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self, len, |_| value.clone()) }
    }

    /// A copy of `src` in the arena.
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> Result<&mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self, src.len(), |i| src[i]) }
    }

    /// A slice of `len` zeros.
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_zeroed<T: Zeroable>(&self, len: usize) -> Result<&mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self, len, |_| T::zeroed()) }
    }

    /// The value `f` makes, written into the arena: the memory is taken first, so
    /// a large value can be built in place instead of on the stack and then moved
    /// (as bumpalo's `alloc_with`). If `f` panics, the memory stays unused until the
    /// next reset.
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_with<T>(&self, f: impl FnOnce() -> T) -> Result<&mut T> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_value_with(self, f) }
    }

    /// A slice of `len` elements, element `i` made by `f(i)`.
    ///
    /// ```
    /// let arena = tensorpool::Arena::new();
    /// let squares = arena.alloc_slice_fill_with(4, |i| i * i)?;
    /// assert_eq!(squares, &[0, 1, 4, 9]);
    /// let name = arena.alloc_str("layer.0.weight")?;
    /// name.make_ascii_uppercase();
    /// assert_eq!(name, "LAYER.0.WEIGHT");
    /// # Ok::<(), tensorpool::Error>(())
    /// ```
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_with<T>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Result<&mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self, len, f) }
    }

    /// A clone of every element of `src`, in the arena.
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_clone<T: Clone>(&self, src: &[T]) -> Result<&mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self, src.len(), |i| src[i].clone()) }
    }

    /// A copy of `src` in the arena, as a string.
    // Each call hands out fresh memory no other reference points to, as bumpalo's
    // `alloc` does, so the `&mut` does not alias anything reachable from `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_str(&self, src: &str) -> Result<&mut str> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_str_copy(self, src) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Some(debug) = &self.debug {
            let report = self.leaks().expect("debug mode");
            if report.count > 0 {
                crate::util::stderr::report!("tensorpool: {report}");
            }
            debug.release(0);
        }
        for region in self.chunks.get_mut().drain(..) {
            // SAFETY: every chunk came from this upstream with its length and page
            // alignment; the arena is going away, and every allocation borrowed it.
            unsafe {
                self.upstream
                    .deallocate(region.ptr(), region.len(), page_size())
            };
        }
    }
}

/// Room for `layout` (a `T` or an array of them) in the arena: fresh memory, or a
/// dangling aligned pointer for a size of zero.
fn place<T>(arena: &Arena, layout: Layout) -> Result<NonNull<T>> {
    if layout.size() == 0 {
        return Ok(NonNull::<T>::dangling());
    }
    Ok(arena
        .bump_or_grow(layout.size(), layout.align())?
        .cast::<T>())
}

/// The value `f` makes, written into memory taken from `arena` before `f` runs,
/// returning a reference of any lifetime.
///
/// # Safety
///
/// The caller bounds `'a` by the time the memory stays allocated: until the arena is
/// reset, rewound below this allocation, or dropped.
unsafe fn alloc_value_with<'a, T>(arena: &Arena, f: impl FnOnce() -> T) -> Result<&'a mut T> {
    let ptr = place::<T>(arena, Layout::new::<T>())?;
    // SAFETY: `ptr` is valid for a `T` (fresh arena memory of its layout, or dangling
    // for a zero-sized type) and nobody else refers to it; the caller bounds 'a. If
    // `f` panics, nothing was written and the memory stays unused, which is safe.
    unsafe {
        ptr.as_ptr().write(f());
        Ok(&mut *ptr.as_ptr())
    }
}

/// A copy of `src` in `arena`, with a lifetime the caller bounds.
///
/// # Safety
///
/// As for [`alloc_value_with`].
unsafe fn alloc_str_copy<'a>(arena: &Arena, src: &str) -> Result<&'a mut str> {
    // SAFETY: by the caller's contract.
    let bytes = unsafe { alloc_slice_with(arena, src.len(), |i| src.as_bytes()[i]) }?;
    // SAFETY: the bytes are a copy of a `str`'s, so UTF-8.
    Ok(unsafe { std::str::from_utf8_unchecked_mut(bytes) })
}

/// A slice of `len` elements made by `f(index)`, with a lifetime the caller bounds.
///
/// # Safety
///
/// As for [`alloc_value_with`].
unsafe fn alloc_slice_with<'a, T>(
    arena: &Arena,
    len: usize,
    mut f: impl FnMut(usize) -> T,
) -> Result<&'a mut [T]> {
    let layout = Layout::array::<T>(len).map_err(|_| Error::SizeTooLarge {
        size: usize::MAX,
        max: crate::MAX_ALLOCATION_SIZE,
    })?;
    let ptr = place::<T>(arena, layout)?;
    for i in 0..len {
        // SAFETY: `i < len` elements fit the allocation made for `len` of them.
        unsafe { ptr.as_ptr().add(i).write(f(i)) };
    }
    // SAFETY: all `len` elements were written above; the caller bounds 'a. If `f`
    // panicked, the written elements leak, which is safe.
    unsafe { Ok(std::slice::from_raw_parts_mut(ptr.as_ptr(), len)) }
}

/// A region of an arena that is released when the scope ends.
///
/// Made by [`Arena::scope`] or [`Scope::scope`]. Allocations live for `'s`, the
/// scope's own lifetime, which the closure cannot let escape. While a nested scope
/// runs, its parent is mutably borrowed and cannot allocate, so the nested release
/// never frees a parent's allocation.
pub struct Scope<'s> {
    arena: &'s Arena,
    /// Invariant in `'s`, so that a scope's lifetime can be neither shortened nor
    /// lengthened by subtyping.
    _invariant: PhantomData<fn(&'s ()) -> &'s ()>,
}

fn run_scope<R>(arena: &Arena, f: impl for<'s> FnOnce(&mut Scope<'s>) -> R) -> R {
    /// Rewinds even when `f` panics, when no reference into the scope survives.
    struct Release<'a>(&'a Arena, Checkpoint);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.rewind_to(self.1);
        }
    }
    let release = Release(arena, arena.checkpoint());
    let mut scope = Scope {
        arena,
        _invariant: PhantomData,
    };
    let result = f(&mut scope);
    drop(release);
    result
}

impl<'s> Scope<'s> {
    /// `size` bytes aligned to `align`, valid until the scope ends.
    pub fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        self.arena.allocate(size, align)
    }

    /// Moves `value` into the scope.
    pub fn alloc<T>(&self, value: T) -> Result<&'s mut T> {
        // SAFETY: the scope releases its memory only after the closure that holds
        // every `'s` reference has returned.
        unsafe { alloc_value_with(self.arena, || value) }
    }

    /// A slice of `len` copies of `value`.
    pub fn alloc_slice_fill<T: Clone>(&self, len: usize, value: T) -> Result<&'s mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self.arena, len, |_| value.clone()) }
    }

    /// A copy of `src` in the scope.
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> Result<&'s mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self.arena, src.len(), |i| src[i]) }
    }

    /// A slice of `len` zeros.
    pub fn alloc_slice_zeroed<T: Zeroable>(&self, len: usize) -> Result<&'s mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self.arena, len, |_| T::zeroed()) }
    }

    /// The value `f` makes, written into the scope (see [`Arena::alloc_with`]).
    pub fn alloc_with<T>(&self, f: impl FnOnce() -> T) -> Result<&'s mut T> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_value_with(self.arena, f) }
    }

    /// A slice of `len` elements, element `i` made by `f(i)`.
    pub fn alloc_slice_fill_with<T>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Result<&'s mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self.arena, len, f) }
    }

    /// A clone of every element of `src`, in the scope.
    pub fn alloc_slice_clone<T: Clone>(&self, src: &[T]) -> Result<&'s mut [T]> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_slice_with(self.arena, src.len(), |i| src[i].clone()) }
    }

    /// A copy of `src` in the scope, as a string.
    pub fn alloc_str(&self, src: &str) -> Result<&'s mut str> {
        // SAFETY: as for `alloc`.
        unsafe { alloc_str_copy(self.arena, src) }
    }

    /// Runs `f` in a nested scope, releasing what it allocated when it returns.
    pub fn scope<R>(&mut self, f: impl for<'i> FnOnce(&mut Scope<'i>) -> R) -> R {
        run_scope(self.arena, f)
    }

    /// The arena's statistics.
    pub fn stats(&self) -> ArenaStats {
        self.arena.stats()
    }
}

// SAFETY: blocks are carved from chunks the arena owns, never overlap, and stay valid
// until a reset, rewind or drop, each of which needs `&mut Arena` and so cannot happen
// while an `&Arena` (the allocator handle) is borrowed.
unsafe impl Allocator for Arena {
    #[inline]
    fn allocate(&self, layout: Layout) -> std::result::Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(zero_sized(layout.align()));
        }
        let ptr = self
            .bump_or_grow(layout.size(), layout.align())
            .map_err(|_| AllocError)?;
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // The last allocation is given back at once, so a growing Vec reuses it. It
        // must lie in the current chunk: the end of one chunk can be the start of
        // another, so equality with the bump pointer alone does not prove it.
        let addr = ptr.as_ptr().addr();
        let last = ptr.as_ptr() == self.cur.get() && addr < self.high.get() && layout.size() > 0;
        if let Some(debug) = &self.debug {
            // Debug mode: the last allocation and its guard go back, checked.
            let records = debug.live.borrow().len();
            let recorded_last = debug.live.borrow().last().map(|&(p, _)| p) == Some(ptr);
            if last && recorded_last {
                // The peak is read from the position (as at a reset or rewind):
                // noted before the position moves back.
                self.note_peak();
                debug.release(records - 1);
                self.cur
                    .set(ptr.as_ptr().wrapping_add(layout.size() + GUARD));
            }
            return;
        }
        if last {
            self.note_peak();
            self.cur.set(ptr.as_ptr().wrapping_add(layout.size()));
        }
    }

    /// The last allocation grows where it is, as in bumpalo: the bump moves down by
    /// what the block lacks and its bytes move down with it, so that a growing `Vec`
    /// leaves no old buffer behind (100,000 pushes of a byte took 389 KB when every
    /// growth moved: a user hunt). Another block moves.
    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> std::result::Result<NonNull<[u8]>, AllocError> {
        debug_assert!(new_layout.size() >= old_layout.size());
        let addr = ptr.as_ptr().addr();
        let last = self.debug.is_none()
            && old_layout.size() > 0
            && ptr.as_ptr() == self.cur.get()
            && addr < self.high.get();
        if last {
            let end = addr + old_layout.size();
            let start = end
                .checked_sub(new_layout.size())
                .map(|s| s & !(new_layout.align() - 1));
            if let Some(start) = start.filter(|&s| s >= self.low.get()) {
                let dst = self.cur.get().with_addr(start);
                // SAFETY: `[ptr, end)` is the live last block (the caller's contract
                // and the test above); `[start, start + new)` lies in the current
                // chunk between its low end and `end`: free memory below the bump,
                // and the block itself. `copy` moves the block's bytes down within
                // it, overlapping.
                unsafe { std::ptr::copy(ptr.as_ptr(), dst, old_layout.size()) };
                self.cur.set(dst);
                self.count_allocation(new_layout.size());
                let dst = NonNull::new(dst).expect("inside a chunk, not null");
                return Ok(NonNull::slice_from_raw_parts(dst, new_layout.size()));
            }
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { relocate(self, ptr, old_layout, new_layout, false) }
    }

    /// A block shrinks where it is (its alignment allowing): nothing moves, and the
    /// bytes it no longer needs stay in the arena until a reset or rewind.
    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> std::result::Result<NonNull<[u8]>, AllocError> {
        debug_assert!(new_layout.size() <= old_layout.size());
        if self.debug.is_none() && ptr.as_ptr().addr() % new_layout.align() == 0 {
            return Ok(NonNull::slice_from_raw_parts(ptr, new_layout.size()));
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { relocate(self, ptr, old_layout, new_layout, false) }
    }
}

// SAFETY: a scope's blocks are its arena's (see `Allocator for Arena`): valid until
// the scope ends, which is as long as any reference to the scope lives (its closure
// borrows it, and the release runs after the closure returns). A nested scope needs
// the scope mutably, so no collection of the outer scope can allocate while an
// inner one runs (its release would take the block).
unsafe impl Allocator for Scope<'_> {
    #[inline]
    fn allocate(&self, layout: Layout) -> std::result::Result<NonNull<[u8]>, AllocError> {
        Allocator::allocate(self.arena, layout)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract: `ptr` is a block of this scope, so of its
        // arena, allocated with `layout`.
        unsafe { Allocator::deallocate(self.arena, ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::HeapUpstream;

    fn heap_arena() -> ArenaBuilder {
        Arena::builder().upstream(Arc::new(HeapUpstream))
    }

    #[test]
    fn the_bump_paths_counters_are_not_neighbours() {
        // Neighbours, the compiler merges their updates into one 16-byte load and
        // store that waits on the previous allocation's (see `Arena`'s layout note).
        let (allocs, requested) = (
            std::mem::offset_of!(Arena, num_allocs),
            std::mem::offset_of!(Arena, requested),
        );
        assert!(allocs.abs_diff(requested) > std::mem::size_of::<u64>());
    }

    #[test]
    fn allocations_are_aligned_and_disjoint() {
        let arena = heap_arena().first_chunk_size(4096).build().unwrap();
        let mut spans = Vec::new();
        for i in 1..200usize {
            let align = 1 << (i % 8);
            let p = arena.allocate(i * 3, align).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0);
            spans.push((p.as_ptr() as usize, i * 3));
        }
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        let s = arena.stats();
        assert_eq!(s.num_allocs, 199);
        assert_eq!(s.requested_bytes, (1..200).map(|i| i * 3).sum::<usize>());
        assert!(s.allocated_bytes >= s.requested_bytes);
        assert!(s.chunks >= 2, "the 4 KiB first chunk overflowed");
    }

    #[test]
    fn the_last_block_given_back_leaves_its_peak() {
        // The peak read 1 B after a 50,000 B vector was given back (a user hunt).
        let arena = heap_arena().build().unwrap();
        arena.alloc(1u8).unwrap();
        let v: allocator_api2::vec::Vec<u8, &Arena> =
            allocator_api2::vec::Vec::with_capacity_in(50_000, &arena);
        drop(v);
        let s = arena.stats();
        assert_eq!(s.allocated_bytes, 1);
        assert_eq!(s.peak_allocated_bytes, 50_001);
    }

    #[test]
    fn reset_reuses_the_same_memory() {
        let mut arena = heap_arena().build().unwrap();
        let first = arena.alloc_slice_zeroed::<f32>(1000).unwrap().as_ptr();
        arena.reset();
        let again = arena.alloc_slice_zeroed::<f32>(1000).unwrap();
        assert_eq!(again.as_ptr(), first);
        assert!(again.iter().all(|&x| x == 0.0));
        let s = arena.stats();
        assert_eq!(s.num_upstream_allocs, 1);
        assert_eq!(s.peak_allocated_bytes, 4000);
    }

    #[test]
    fn scopes_release_and_nest() {
        let mut arena = heap_arena().first_chunk_size(4096).build().unwrap();
        let outer_cp = arena.checkpoint();
        arena.scope(|outer| {
            let a = outer.alloc(7u64).unwrap();
            let used_after_a = outer.stats().allocated_bytes;
            outer.scope(|inner| {
                // enough to need new chunks
                for _ in 0..10 {
                    inner.alloc_slice_fill(1000, 1u8).unwrap();
                }
                assert!(inner.stats().allocated_bytes > 10_000);
            });
            assert_eq!(outer.stats().allocated_bytes, used_after_a);
            *a += 1;
            let b = outer.alloc(9u64).unwrap();
            assert_eq!(*a + *b, 17);
        });
        assert_eq!(arena.stats().allocated_bytes, 0);
        assert_eq!(arena.checkpoint(), outer_cp);
        assert!(arena.stats().chunks >= 2, "chunks are retained for reuse");
    }

    #[test]
    fn values_slices_and_strings_built_in_the_arena() {
        let mut arena = heap_arena().first_chunk_size(4096).build().unwrap();
        let big = arena.alloc_with(|| [7u64; 64]).unwrap();
        assert!(big.iter().all(|&x| x == 7));
        big[3] = 1;
        let names: Vec<String> = (0..3).map(|i| format!("layer.{i}")).collect();
        let cloned = arena.alloc_slice_clone(&names).unwrap();
        assert_eq!(cloned, &names[..]);
        cloned[0].push_str(".bias");
        assert_eq!(cloned[0], "layer.0.bias");
        let filled = arena.alloc_slice_fill_with(5, |i| i as u32 * 3).unwrap();
        assert_eq!(filled, &[0, 3, 6, 9, 12]);
        let s = arena.alloc_str("héllo").unwrap();
        s.make_ascii_uppercase();
        assert_eq!(s, "HéLLO");
        assert_eq!(arena.alloc_str("").unwrap(), "");
        assert!(arena.alloc_slice_clone::<String>(&[]).unwrap().is_empty());
        // The clones own heap memory of their own (an arena runs no destructor).
        for c in cloned.iter_mut() {
            drop(std::mem::take(c));
        }
        // A constructor that panics leaves the arena usable; its memory stays unused
        // until the next reset.
        let before = arena.stats().allocated_bytes;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            arena.alloc_with::<u64>(|| panic!("no value"))
        }));
        assert!(panicked.is_err());
        assert_eq!(
            arena.stats().allocated_bytes,
            before.next_multiple_of(8) + 8
        );
        assert_eq!(*arena.alloc(5u8).unwrap(), 5);
        arena.scope(|scope| {
            let v = scope.alloc_with(|| 11u16).unwrap();
            let t = scope.alloc_str("scoped").unwrap();
            let c = scope.alloc_slice_clone(&[1u8, 2]).unwrap();
            let f = scope.alloc_slice_fill_with(2, |i| i).unwrap();
            assert_eq!(
                (*v, &*t, &*c, &*f),
                (11, "scoped", &[1u8, 2][..], &[0, 1][..])
            );
        });
        arena.reset();
        assert_eq!(arena.stats().allocated_bytes, 0);
    }

    #[test]
    fn a_panicking_scope_still_releases() {
        let mut arena = heap_arena().build().unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            arena.scope(|s| {
                s.alloc_slice_fill(100, 0u8).unwrap();
                panic!("boom");
            })
        }));
        assert!(result.is_err());
        assert_eq!(arena.stats().allocated_bytes, 0);
    }

    #[test]
    fn the_last_block_grows_in_place_and_others_move() {
        // A `Vec` growing alone keeps one buffer (each growth moved and left the old
        // buffer behind: 100,000 pushes of a byte took 389 KB, a user hunt).
        let arena = heap_arena().build().unwrap();
        let mut v: allocator_api2::vec::Vec<u8, &Arena> = allocator_api2::vec::Vec::new_in(&arena);
        let n = if cfg!(miri) { 600 } else { 100_000 };
        for i in 0..n {
            v.push(i as u8);
        }
        assert!(v.iter().enumerate().all(|(i, &b)| b == i as u8));
        let used = arena.stats().allocated_bytes;
        assert!(used <= 2 * v.capacity(), "{used} for {}", v.capacity());
        // Two growing at once: every growth but the last block's moves, contents kept.
        let mut a: allocator_api2::vec::Vec<u32, &Arena> = allocator_api2::vec::Vec::new_in(&arena);
        let mut b: allocator_api2::vec::Vec<u32, &Arena> = allocator_api2::vec::Vec::new_in(&arena);
        let n = if cfg!(miri) { 100 } else { 2000 };
        for i in 0..n {
            a.push(i);
            b.push(3 * i);
        }
        assert!(a.iter().copied().eq(0..n));
        assert!(b.iter().copied().eq((0..n).map(|i| 3 * i)));
        // Shrinking keeps the block where it is.
        let before = a.as_ptr();
        a.truncate(10);
        a.shrink_to_fit();
        assert_eq!((a.as_ptr(), &a[..3]), (before, &[0, 1, 2][..]));
    }

    #[test]
    fn collections_grow_in_a_scope_and_go_with_it() {
        // `Vec<T, &Scope>`, as bumpalo's collections in a bump (it needed the
        // arena itself, outside any scope: a user hunt).
        let mut arena = heap_arena().first_chunk_size(4096).build().unwrap();
        let kept = arena.alloc(5u64).unwrap() as *const u64;
        let used = arena.stats().allocated_bytes;
        arena.scope(|s| {
            let mut v: allocator_api2::vec::Vec<u32, &Scope<'_>> =
                allocator_api2::vec::Vec::new_in(&*s);
            let n = if cfg!(miri) { 300 } else { 3000 };
            for i in 0..n {
                v.push(i);
            }
            assert!(v.iter().copied().eq(0..n));
            let mut w: allocator_api2::vec::Vec<u8, &Scope<'_>> =
                allocator_api2::vec::Vec::with_capacity_in(100, &*s);
            w.extend_from_slice(b"scope");
            drop(w); // the last block: given back at once
            assert!(s.stats().allocated_bytes > used);
        });
        assert_eq!(arena.stats().allocated_bytes, used);
        // SAFETY: allocated before the scope, which released only its own blocks.
        assert_eq!(unsafe { *kept }, 5);
    }

    #[test]
    fn checkpoints_are_validated() {
        let mut arena = heap_arena().build().unwrap();
        let mut other = heap_arena().build().unwrap();
        arena.alloc(1u32).unwrap();
        let cp = arena.checkpoint();
        arena.alloc_slice_fill(64, 0u8).unwrap();
        assert!(matches!(other.rewind(cp), Err(Error::InvalidCheckpoint(_))));
        let before = arena.stats().allocated_bytes;
        let early = Checkpoint { used: 0, ..cp };
        arena.rewind(cp).unwrap();
        assert!(arena.stats().allocated_bytes < before);
        let later = arena.checkpoint();
        arena.rewind(early).unwrap();
        // Ahead of the position: nothing allocated after it is left to release.
        let at = arena.stats().allocated_bytes;
        arena.rewind(later).unwrap();
        assert_eq!(arena.stats().allocated_bytes, at);
        arena.reset();
        assert!(
            matches!(arena.rewind(early), Err(Error::InvalidCheckpoint(m)) if m.contains("reset"))
        );
        other.reset();
    }

    #[test]
    fn a_checkpoint_after_the_last_block_was_given_back_rewinds_to_nothing() {
        // A `Vec` in the arena, dropped after a checkpoint: its deallocation gives
        // the last block back, and the checkpoint, ahead of the position now, was
        // refused as "already released by a rewind" (a user hunt).
        let mut arena = heap_arena().build().unwrap();
        let v: allocator_api2::vec::Vec<u8, &Arena> =
            allocator_api2::vec::Vec::with_capacity_in(1000, &arena);
        let cp = arena.checkpoint();
        drop(v);
        arena.rewind(cp).unwrap();
        // Blocks after a checkpoint behind the position are released as always;
        // the one ahead still has nothing to release.
        arena.alloc_slice_fill(10, 0u8).unwrap();
        let cp2 = arena.checkpoint();
        let at = arena.stats().allocated_bytes;
        arena.alloc_slice_fill(500, 0u8).unwrap();
        arena.rewind(cp2).unwrap();
        assert_eq!(arena.stats().allocated_bytes, at);
        arena.rewind(cp).unwrap();
        assert_eq!(arena.stats().allocated_bytes, at);
    }

    #[test]
    fn a_checkpoint_in_a_chunk_a_trim_gave_back_is_refused() {
        // A stale checkpoint into a chunk given back by a trim, and a new chunk at
        // its index, set the position below the new chunk's start (allocated bytes
        // beyond reserved ones: a user hunt).
        let mut arena = heap_arena()
            .first_chunk_size(4096)
            .max_chunk_size(1 << 20)
            .build()
            .unwrap();
        arena.alloc_slice_fill(3000, 0u8).unwrap();
        let start = arena.checkpoint();
        arena.alloc_slice_fill(60_000, 0u8).unwrap();
        let deep = arena.checkpoint();
        arena.rewind(start).unwrap();
        assert!(arena.trim() > 0);
        arena.alloc_slice_fill(2000, 0u8).unwrap();
        arena.alloc_slice_fill(3000, 0u8).unwrap();
        let e = arena.rewind(deep).unwrap_err();
        assert!(e.to_string().contains("no longer where it was"), "{e}");
        let s = arena.stats();
        assert!(s.allocated_bytes <= s.reserved_bytes, "{s:?}");
    }

    #[test]
    fn a_refused_chunk_reports_the_room_left_in_the_current_one() {
        // The upstream's refusal reported a largest free block of 0 with room left
        // in the current chunk (a user hunt).
        let limited = crate::upstream::MeteredUpstream::new(Arc::new(HeapUpstream), Some(8192));
        let arena = Arena::builder()
            .upstream(Arc::new(limited))
            .first_chunk_size(4096)
            .build()
            .unwrap();
        arena.alloc_slice_fill(1000, 0u8).unwrap();
        let Error::OutOfMemory(report) = arena.allocate(100_000, 8).unwrap_err() else {
            panic!("not an out-of-memory report");
        };
        assert!(
            (3000..=3096).contains(&report.largest_free_block),
            "{}",
            report.largest_free_block
        );
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "chunks of half a megabyte filled; validation is safe code"
    )]
    fn chunk_sizes_beyond_any_allocation_are_refused_or_mean_no_limit() {
        // `max_chunk_size(usize::MAX)` overflowed when rounded to pages (a panic in
        // debug builds; chunks that never grew in release builds: a user hunt).
        let arena = heap_arena().max_chunk_size(usize::MAX).build().unwrap();
        for _ in 0..8 {
            arena.alloc_slice_fill(60_000, 0u8).unwrap();
        }
        assert!(arena.stats().reserved_bytes < 8 * 64 * 4096);
        let e = heap_arena()
            .first_chunk_size(usize::MAX - 4000)
            .max_chunk_size(usize::MAX - 4000)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("first chunk"), "{e}");
        // A size too large at its alignment is said of the size.
        let e = heap_arena()
            .build()
            .unwrap()
            .allocate(crate::MAX_ALLOCATION_SIZE, 8192)
            .unwrap_err();
        assert!(matches!(e, Error::SizeTooLarge { .. }), "{e}");
    }

    #[test]
    fn capacity_is_enforced() {
        let arena = heap_arena().capacity(1024).build().unwrap();
        arena.allocate(1000, 8).unwrap();
        match arena.allocate(100, 8) {
            Err(Error::OutOfMemory(r)) => {
                assert_eq!(r.cause, OomCause::CapacityReached { capacity: 1024 });
                assert_eq!(r.tier, Tier::Arena);
            }
            other => panic!("expected a full arena, got {other:?}"),
        }
        assert_eq!(arena.stats().num_ooms, 1);
        assert_eq!(arena.stats().reserved_bytes, 1024);
    }

    #[test]
    fn a_fresh_arena_holds_its_whole_capacity_in_one_allocation() {
        // The lecture's `Arena(4096)` serves an allocation of 4096 bytes: a chunk
        // starts on a page boundary, so no alignment up to a page needs more room.
        for cap in [100, 1024, 4096, 65536] {
            for align in [1, 8, 64, 4096] {
                let arena = heap_arena().capacity(cap).build().unwrap();
                let p = arena
                    .allocate(cap, align)
                    .unwrap_or_else(|e| panic!("{cap} bytes at {align}: {e}"));
                assert_eq!(p.as_ptr().addr() % align, 0);
                assert!(matches!(arena.allocate(1, 1), Err(Error::OutOfMemory(_))));
                assert_eq!(arena.stats().reserved_bytes, cap);
            }
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        let arena = heap_arena().build().unwrap();
        assert_eq!(arena.allocate(0, 8), Err(Error::ZeroSize));
        assert_eq!(
            arena.allocate(8, 3),
            Err(Error::InvalidAlignment { align: 3 })
        );
        assert!(matches!(
            arena.allocate(usize::MAX, 8),
            Err(Error::SizeTooLarge { .. })
        ));
        assert!(matches!(
            Arena::builder().first_chunk_size(0).build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            Arena::with_capacity(0),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn large_alignments_and_requests_get_their_own_chunk() {
        let arena = heap_arena().first_chunk_size(4096).build().unwrap();
        let p = arena.allocate(10, 8192).unwrap();
        assert_eq!(p.as_ptr() as usize % 8192, 0);
        let big = arena.allocate(1 << 20, 64).unwrap();
        assert_eq!(big.as_ptr() as usize % 64, 0);
        // An alignment no chunk can honour is refused as such, not as out of memory.
        assert!(matches!(
            arena.allocate(10, 1 << 63),
            Err(Error::AlignmentTooLarge { align, .. }) if align == 1 << 63
        ));
        assert_eq!(arena.stats().num_allocs, 2);
    }

    #[test]
    fn trim_gives_back_unused_chunks() {
        let mut arena = heap_arena().first_chunk_size(4096).build().unwrap();
        for _ in 0..20 {
            arena.allocate(1000, 8).unwrap();
        }
        let reserved = arena.stats().reserved_bytes;
        arena.reset();
        arena.allocate(10, 8).unwrap();
        let freed = arena.trim();
        assert!(freed > 0);
        assert_eq!(arena.stats().reserved_bytes, reserved - freed);
        arena.reset();
        arena.trim();
        let s = arena.stats();
        assert_eq!((s.reserved_bytes, s.chunks), (0, 0));
        assert_eq!(s.num_upstream_allocs, s.num_upstream_frees);
        arena.allocate(10, 8).unwrap(); // still usable
    }

    /// Hands out regions downward from the top of one buffer, as mmap tends to, so
    /// that each new chunk ends exactly where the previous one starts.
    #[derive(Debug)]
    struct Descending {
        base: NonNull<u8>,
        top: std::sync::Mutex<usize>,
    }
    // SAFETY: hands out disjoint parts of a buffer it leaks for the test's duration.
    unsafe impl Upstream for Descending {
        fn allocate(
            &self,
            size: usize,
            align: usize,
        ) -> std::result::Result<NonNull<u8>, crate::upstream::UpstreamError> {
            let mut top = self.top.lock().unwrap();
            let start = top
                .checked_sub(size)
                .filter(|s| s % align == 0)
                .expect("test sizes are page multiples");
            *top = start;
            // SAFETY: `start` is inside the leaked buffer.
            Ok(unsafe { self.base.add(start) })
        }
        unsafe fn deallocate(&self, _: NonNull<u8>, _: usize, _: usize) {}
        fn name(&self) -> &str {
            "descending"
        }
    }
    // SAFETY: the buffer pointer is only offset, never shared mutably across threads here.
    unsafe impl Send for Descending {}
    // SAFETY: as above; the top is behind a mutex.
    unsafe impl Sync for Descending {}

    #[test]
    fn freeing_the_last_block_of_an_adjacent_chunk_keeps_the_bump_pointer_in_its_chunk() {
        let layout = Layout::from_size_align(16 << 10, 4096).unwrap();
        // SAFETY: non-zero size.
        let buffer = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
        let up = Arc::new(Descending {
            base: buffer,
            top: std::sync::Mutex::new(16 << 10),
        });
        let arena = Arena::builder()
            .first_chunk_size(4096)
            .max_chunk_size(4096)
            .upstream(up)
            .build()
            .unwrap();
        let item = Layout::from_size_align(64, 64).unwrap();
        // Fill the first chunk (the top page) completely: the last block is at its lowest address.
        let blocks: Vec<_> = (0..64)
            .map(|_| Allocator::allocate(&arena, item).unwrap().cast::<u8>())
            .collect();
        let lowest = *blocks.last().unwrap();
        // The next allocation enters the page below, whose end is `lowest`.
        let fresh = Allocator::allocate(&arena, item).unwrap().cast::<u8>();
        // SAFETY: `fresh` was just allocated with `item`.
        unsafe { Allocator::deallocate(&arena, fresh, item) };
        assert_eq!(
            arena.cur.get().addr(),
            lowest.as_ptr().addr(),
            "the new chunk is empty again, its end is `lowest`"
        );
        // SAFETY: `lowest` is live, allocated with `item`.
        unsafe { Allocator::deallocate(&arena, lowest, item) };
        let next = Allocator::allocate(&arena, item).unwrap().cast::<u8>();
        assert!(
            next.as_ptr().addr() < lowest.as_ptr().addr(),
            "must not hand out memory of the chunk above"
        );
        drop(arena);
        // SAFETY: allocated above with `layout`.
        unsafe { std::alloc::dealloc(buffer.as_ptr(), layout) };
    }

    #[test]
    fn allocator_api_collections() {
        let arena = heap_arena().build().unwrap();
        let mut v = allocator_api2::vec::Vec::new_in(&arena);
        for i in 0..10_000u32 {
            v.push(i);
        }
        assert_eq!(v.iter().map(|&x| x as u64).sum::<u64>(), 49_995_000);
        let snap = arena.snapshot();
        assert!(snap.segments.iter().any(|s| s.allocated_bytes > 0));
    }

    mod model {
        use super::*;
        use crate::testing::{check, fill, ops_len, proptest_config, LiveSet};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Alloc(usize, usize),
            Checkpoint,
            Rewind(usize),
            Reset,
            Trim,
        }

        fn op() -> impl Strategy<Value = Op> {
            let size = prop_oneof![1usize..300, 300usize..20_000];
            prop_oneof![
                8 => (size, 0u32..13).prop_map(|(s, a)| Op::Alloc(s, 1 << a)),
                2 => Just(Op::Checkpoint),
                2 => any::<usize>().prop_map(Op::Rewind),
                1 => Just(Op::Reset),
                1 => Just(Op::Trim),
            ]
        }

        proptest! {
            #![proptest_config(proptest_config(128))]

            /// An arena against a stack of allocations and checkpoints: live
            /// allocations are aligned, disjoint and intact; rewinds release exactly
            /// what came after the checkpoint; reset and trim give everything back.
            #[test]
            fn arena_matches_model(ops in proptest::collection::vec(op(), ops_len(150))) {
                let mut arena = heap_arena().first_chunk_size(4096).max_chunk_size(32 << 10).build().unwrap();
                let mut live: Vec<(NonNull<u8>, usize, u64)> = Vec::new();
                let mut checkpoints: Vec<(Checkpoint, usize)> = Vec::new();
                let mut requested = 0;
                let mut seed = 0;
                for op in ops {
                    match op {
                        Op::Alloc(size, align) => {
                            let p = arena.allocate(size, align).unwrap();
                            prop_assert_eq!(p.as_ptr() as usize % align, 0);
                            seed += 1;
                            // SAFETY: fresh arena memory of `size` bytes.
                            unsafe { fill(p.as_ptr(), size, seed) };
                            live.push((p, size, seed));
                            requested += size;
                        }
                        Op::Checkpoint => checkpoints.push((arena.checkpoint(), live.len())),
                        Op::Rewind(i) if !checkpoints.is_empty() => {
                            let i = i % checkpoints.len();
                            let (cp, len) = checkpoints[i];
                            arena.rewind(cp).unwrap();
                            live.truncate(len);
                            checkpoints.truncate(i + 1);
                        }
                        Op::Reset => {
                            arena.reset();
                            live.clear();
                            checkpoints.clear();
                            requested = 0;
                        }
                        Op::Trim => {
                            arena.trim();
                        }
                        _ => {}
                    }
                    let mut set = LiveSet::default();
                    for &(p, size, seed) in &live {
                        set.insert(p.as_ptr() as usize, size);
                        // SAFETY: live arena memory filled with `seed`.
                        unsafe { check(p.as_ptr(), size, seed) };
                    }
                    let s = arena.stats();
                    prop_assert_eq!(s.requested_bytes, requested);
                    prop_assert!(s.allocated_bytes >= live.iter().map(|l| l.1).sum::<usize>());
                    prop_assert!(s.allocated_bytes <= s.reserved_bytes);
                    prop_assert_eq!(s.num_upstream_allocs - s.num_upstream_frees, s.chunks as u64);
                }
                arena.reset();
                arena.trim();
                let s = arena.stats();
                prop_assert_eq!((s.reserved_bytes, s.chunks, s.allocated_bytes), (0, 0, 0));
            }
        }
    }
}
