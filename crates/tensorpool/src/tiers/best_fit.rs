//! `BestFit`: a coalescing best-fit allocator for large tensors.
//!
//! Memory comes from upstream in segments. Each segment is a chain of blocks, free or
//! allocated, kept in side metadata (never in the memory itself). An allocation takes
//! the smallest free block that fits, ties broken by the lowest address, and splits
//! off what it does not need; a free merges the block with free neighbours. This
//! keeps memory warm and, on real tensor traces, reserves within a few percent of the
//! peak of live bytes (see the replay table in docs/BENCHMARKS.md).
//!
//! How the tier grows depends on the upstream. Where it can reserve address space
//! and commit memory into it piece by piece (mmap), the tier uses *expandable
//! segments*, like PyTorch's `expandable_segments`: one large reservation whose
//! committed part grows at the top by what a request lacks, extending a free block at
//! the top rather than starting a new segment. No block is ever cut off from its
//! neighbours by a segment end, which is what keeps reserved memory close to the live
//! peak; [`trim`](BestFit::trim) decommits the free top. A process with a limited
//! address space (`ulimit -v`, Valgrind) gets smaller reservations: a refused one
//! is tried at half the size. Elsewhere (the heap, Miri)
//! the tier takes separate segments and trims the wholly free ones.
//!
//! Under a `MemoryManager` (its `reallocate_raw`, `Allocator::grow` and `shrink`), a
//! block grows in place as glibc's do: into a free block that follows it (split,
//! the rest left free), or, as the last block of an expandable segment, by
//! committing more at the top; never into a free block of `max_split_size` or
//! more, which the split policy keeps whole. A block shrunk to at least half its
//! size stays, and the tail it no longer needs is free again (unless the block is
//! of `max_split_size` or more). A `BestFit` used alone moves blocks to resize them.
//!
//! Knobs that trade reuse against fragmentation, as in PyTorch's caching allocator:
//!
//! - `segment_size`: the least a new (non-expandable) segment takes from upstream.
//!   Larger segments mean fewer upstream calls; smaller ones follow live memory more
//!   closely. `commit_granularity` is its counterpart for expandable segments.
//! - `max_split_size`: blocks at least this large are never split. Requests below it
//!   never take such a block, and requests above it take one only if it wastes less
//!   than `max_oversize_waste`. This stops a stream of medium tensors from cutting a
//!   large free block into crumbs.
//!
//! Memory goes back to the system in three ways, all keeping the block structure:
//! a wholly free segment is returned, the free top of an expandable segment is
//! decommitted, and the pages wholly inside any other free block are *released in
//! place* ([`Upstream::release_pages`]: they read as zero when next touched, and are
//! counted resident again, within the limit, when a block is carved over them; a
//! bit per page of each segment says which are released). [`trim`](BestFit::trim)
//! does all three now; [`release_idle`](BestFit::release_idle), a pass of the
//! manager's release policy, does them for free blocks that passes have seen unused
//! long enough (each free block counts the passes that saw it; a block freed or
//! merged with a newly freed one starts again).
//!
//! ```
//! use tensorpool::BestFit;
//!
//! let bf = BestFit::new();
//! let a = bf.allocate(3 << 20, 64)?;
//! let b = bf.allocate(1 << 20, 64)?;
//! bf.deallocate(a)?; // a's block is free, next to b
//! let c = bf.allocate(2 << 20, 64)?; // best fit: reuses a's block, split
//! assert_eq!(c, a);
//! bf.deallocate(b)?;
//! bf.deallocate(c)?; // everything merges back into one free block
//! assert_eq!(bf.stats().free_blocks, 1);
//! assert!(bf.trim() > 0);
//! assert_eq!(bf.stats().usage.reserved_bytes, 0);
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::error::{Error, OutOfMemory, PointerError, Result};
use crate::limits::{round_up, validate};
use crate::observe::snapshot::{BlockSnapshot, BlockState, SegmentSnapshot, Snapshot};
use crate::observe::stats::{fragmentation, Tier, Usage};
use crate::tiers::contract::{self, BlockSizes, BlockTier, Grant, Resized};
use crate::upstream::{
    default_upstream, AddressSpace, Region, Upstream, UpstreamError, HUGE_PAGE_SIZE,
};
use crate::util::address_map::AddressMap;
use crate::util::bits::Bits;
use crate::util::bytes::format_bytes;
use crate::util::id_table::IdTable;
use crate::util::stamps::Stamps;
use crate::util::sync::PlainMutex as Mutex;
use allocator_api2::alloc::{AllocError, Allocator};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::alloc::Layout;
use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::MutexGuard;

/// Default rounding of block sizes (and so the least alignment of every block).
pub const DEFAULT_GRANULARITY: usize = 512;

/// Default least size of a new segment.
pub const DEFAULT_SEGMENT_SIZE: usize = 2 << 20;

/// Default step by which an expandable segment commits memory.
pub const DEFAULT_COMMIT_GRANULARITY: usize = 64 << 10;

/// Address space reserved for one expandable segment: memory is committed into it as
/// needed, so only the address space is large. When it fills, another is reserved.
pub const DEFAULT_RESERVATION: usize = 64 << 30;

/// Default waste accepted when a request at or above `max_split_size` takes a larger
/// unsplittable block (PyTorch's `kLargeBuffer`).
pub const DEFAULT_MAX_OVERSIZE_WASTE: usize = 20 << 20;

const NONE: u32 = u32::MAX;

/// The stretch of a segment whose age the release policy tracks as one (or the page,
/// if larger): freed memory merges with older free memory, but keeps its own age.
const AGE_GRANULE: usize = 64 << 10;

/// A coalescing best-fit allocator.
#[derive(Debug)]
pub struct BestFit {
    granularity: usize,
    segment_size: usize,
    expandable: bool,
    commit_granularity: usize,
    reservation: usize,
    max_split_size: Option<usize>,
    max_oversize_waste: usize,
    tier: Tier,
    upstream: Arc<dyn Upstream>,
    /// Whether the upstream gives zeroed memory (asked once).
    zeroing: bool,
    /// The system's page size: the unit of released memory.
    page: usize,
    state: Mutex<State>,
}

/// Builder for a [`BestFit`] with non-default settings.
#[derive(Debug, Clone)]
pub struct BestFitBuilder {
    granularity: usize,
    segment_size: usize,
    expandable: bool,
    commit_granularity: usize,
    reservation: usize,
    max_split_size: Option<usize>,
    max_oversize_waste: usize,
    tier: Tier,
    upstream: Option<Arc<dyn Upstream>>,
}

/// Statistics of a [`BestFit`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BestFitStats {
    /// Segments held.
    pub segments: usize,
    /// Free blocks in them.
    pub free_blocks: usize,
    /// Bytes in free blocks.
    pub free_bytes: usize,
    /// The largest free block.
    pub largest_free_block: usize,
    /// `1 - largest_free_block / free_bytes`.
    pub fragmentation: f64,
    /// The counters.
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Default)]
struct State {
    blocks: IdTable<Block>,
    /// Free blocks by (size, address): the first at or above a size is the best fit.
    free: BTreeSet<(usize, usize, u32)>,
    free_bytes: usize,
    /// Live blocks by start address.
    live: FxHashMap<usize, u32>,
    segments: IdTable<Option<Segment>>,
    segment_map: AddressMap<u32>,
    /// The expandable segment that grows when nothing fits.
    growing: Option<u32>,
    usage: Usage,
    /// Bytes of page runs held by the slab engine (not in `usage`'s allocated bytes).
    page_bytes: usize,
    /// Release passes run so far.
    passes: u32,
}

/// Who holds a live block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A typed owner (the `Allocator` trait, a tensor, an arena chunk).
    Typed,
    /// The raw API.
    Raw,
    /// The slab engine, which carves the pages into its own blocks.
    Pages,
}

impl Kind {
    fn of(raw: bool) -> Kind {
        if raw {
            Kind::Raw
        } else {
            Kind::Typed
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Block {
    segment: u32,
    offset: usize,
    size: usize,
    requested: usize,
    prev: u32,
    next: u32,
    free: bool,
    kind: Kind,
}

#[derive(Debug)]
struct Segment {
    /// The whole segment, or for an expandable one its reservation.
    region: Region,
    /// Bytes backed by memory from the start: the blocks tile `[0, committed)`.
    committed: usize,
    expandable: bool,
    first: u32,
    last: u32,
    live_blocks: u32,
    /// Offset below which memory was handed out since it was committed; above it
    /// the pages are as the upstream gave them (zero, if it gives zeroed memory).
    dirty: usize,
    /// The pages (by index from the segment's start) released in place.
    released: Bits,
    /// The release pass at which each granule was last in use (freed, or taken
    /// from upstream).
    in_use: Stamps,
}

impl BestFitBuilder {
    /// Rounding of block sizes, a power of two from 64 to 2 MiB (default 512 B).
    pub fn granularity(mut self, bytes: usize) -> Self {
        self.granularity = bytes;
        self
    }

    /// The least size of a new segment (default 2 MiB). Requests larger than it get
    /// a segment of their own size, rounded to 2 MiB.
    pub fn segment_size(mut self, bytes: usize) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Use expandable segments where the upstream can reserve address space (default
    /// true); `false` takes separate segments always.
    pub fn expandable(mut self, on: bool) -> Self {
        self.expandable = on;
        self
    }

    /// The step by which an expandable segment commits memory, a power of two from a
    /// page to 2 MiB (default 64 KiB). Reserved memory overshoots the need by less.
    pub fn commit_granularity(mut self, bytes: usize) -> Self {
        self.commit_granularity = bytes;
        self
    }

    /// Address space reserved per expandable segment (default 64 GiB). Where the
    /// system refuses that much (`ulimit -v`, Valgrind), a reservation is tried at
    /// half the size, down to what the request needs.
    pub fn reservation_size(mut self, bytes: usize) -> Self {
        self.reservation = bytes;
        self
    }

    /// Blocks of this size or more are never split (default: no limit). Must be
    /// larger than the segment size.
    pub fn max_split_size(mut self, bytes: Option<usize>) -> Self {
        self.max_split_size = bytes;
        self
    }

    /// Waste accepted when a request at or above `max_split_size` takes a larger block
    /// (default 20 MiB).
    pub fn max_oversize_waste(mut self, bytes: usize) -> Self {
        self.max_oversize_waste = bytes;
        self
    }

    /// Where segments come from (default: [`default_upstream`]).
    pub fn upstream(mut self, upstream: Arc<dyn Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    pub(crate) fn tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self
    }

    /// The allocator, or an error naming the setting that cannot apply.
    pub fn build(self) -> Result<BestFit> {
        if !self.granularity.is_power_of_two() || !(64..=HUGE_PAGE_SIZE).contains(&self.granularity)
        {
            return Err(Error::InvalidConfig(format!(
                "the best-fit granularity must be a power of two from 64 B to 2 MiB, got {}",
                self.granularity
            )));
        }
        check_commit_granularity(self.commit_granularity)?;
        validate(self.reservation, 1).map_err(|e| {
            Error::InvalidConfig(format!("reservation_size is not a valid size: {e}"))
        })?;
        check_segment_size(self.segment_size)?;
        check_max_split_size(self.max_split_size, self.segment_size)?;
        let upstream = self.upstream.unwrap_or_else(default_upstream);
        Ok(BestFit {
            granularity: self.granularity,
            segment_size: round_up(self.segment_size, HUGE_PAGE_SIZE),
            expandable: self.expandable,
            commit_granularity: self.commit_granularity,
            reservation: round_up(self.reservation, HUGE_PAGE_SIZE),
            max_split_size: self.max_split_size,
            max_oversize_waste: self.max_oversize_waste,
            tier: self.tier,
            zeroing: upstream.zeroed(),
            page: crate::upstream::page_size(),
            upstream,
            state: Mutex::new(State::default()),
        })
    }
}

/// The rule for `commit_granularity`, here and in [`Config`](crate::Config): a power of
/// two from a page to 2 MiB.
pub(crate) fn check_commit_granularity(bytes: usize) -> Result<()> {
    let page = crate::upstream::page_size();
    if bytes.is_power_of_two() && (page..=HUGE_PAGE_SIZE).contains(&bytes) {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "commit_granularity must be a power of two from a page ({page} B) to 2 MiB, got {bytes}"
    )))
}

/// The rule for `segment_size`, here and in [`Config`](crate::Config): a valid size.
pub(crate) fn check_segment_size(bytes: usize) -> Result<()> {
    validate(bytes, 1)
        .map_err(|e| Error::InvalidConfig(format!("segment_size is not a valid size: {e}")))
}

/// The rule for `max_split_size`, here and in [`Config`](crate::Config): above the
/// segment size (rounded to 2 MiB), or new segments could never be split.
pub(crate) fn check_max_split_size(max_split: Option<usize>, segment_size: usize) -> Result<()> {
    let segment = round_up(segment_size, HUGE_PAGE_SIZE);
    match max_split {
        Some(max_split) if max_split <= segment => Err(Error::InvalidConfig(format!(
            "max_split_size ({}) must be larger than the segment size ({}), or new segments \
             could never be split",
            format_bytes(max_split),
            format_bytes(segment)
        ))),
        _ => Ok(()),
    }
}

impl Default for BestFit {
    fn default() -> Self {
        Self::new()
    }
}

/// The best-fit tier's lock, held across `fork()` (`manager::fork`).
pub(crate) struct BestFitHold<'a>(#[allow(dead_code)] MutexGuard<'a, State>);

impl BestFit {
    /// Takes the tier's lock, to hold across `fork()`.
    pub(crate) fn hold_for_fork(&self) -> BestFitHold<'_> {
        BestFitHold(self.state.lock())
    }

    /// A best-fit allocator with default settings.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default settings are valid")
    }

    /// A builder for other settings.
    pub fn builder() -> BestFitBuilder {
        BestFitBuilder {
            granularity: DEFAULT_GRANULARITY,
            segment_size: DEFAULT_SEGMENT_SIZE,
            expandable: true,
            commit_granularity: DEFAULT_COMMIT_GRANULARITY,
            reservation: DEFAULT_RESERVATION,
            max_split_size: None,
            max_oversize_waste: DEFAULT_MAX_OVERSIZE_WASTE,
            tier: Tier::Large,
            upstream: None,
        }
    }

    /// The rounding of block sizes.
    pub fn granularity(&self) -> usize {
        self.granularity
    }

    /// `size` bytes aligned to `align` (a power of two up to a page), for raw use:
    /// give it back with [`deallocate`](Self::deallocate).
    pub fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        self.grant(size, align, true).map(|g| g.ptr)
    }

    /// Returns a block from [`allocate`](Self::allocate).
    ///
    /// Safe whatever the pointer: an address that is not a live raw block is refused
    /// with [`Error::InvalidPointer`] and nothing changes.
    pub fn deallocate(&self, ptr: NonNull<u8>) -> Result<()> {
        self.release(ptr.as_ptr().addr(), true).map(|_| ())
    }

    /// The rounded size a request of `size` bytes occupies when it splits a block.
    pub fn rounded_size(&self, size: usize) -> usize {
        round_up(size, self.granularity)
    }

    /// [`grant`](BlockTier::grant) from free blocks only: `None` when it would need
    /// more memory from upstream.
    pub(crate) fn grant_cached(&self, size: usize, align: usize, raw: bool) -> Option<Grant> {
        validate(size, align).ok()?;
        let rounded = self.rounded_size(size);
        let needed = rounded + align.saturating_sub(self.granularity);
        let mut st = self.state.lock();
        let id = self.best_fit(&st, needed, rounded)?;
        let (ptr, block_size, zeroed) = self
            .carve(&mut st, id, rounded, size, align, Kind::of(raw))
            .ok()?;
        st.usage.on_alloc(block_size, size, true);
        Some(Grant {
            ptr,
            block_size,
            zeroed,
            hit: true,
        })
    }

    /// A run of `bytes` pages (a multiple of the page size) for the slab engine, and
    /// whether it is known zero; `None` when it would need more memory from upstream.
    pub(crate) fn alloc_pages(&self, bytes: usize) -> Option<(NonNull<u8>, bool)> {
        let page = crate::tiers::slab::page_map::PAGE;
        let needed = bytes + page.saturating_sub(self.granularity);
        let mut st = self.state.lock();
        let id = self.best_fit(&st, needed, bytes)?;
        self.carve_pages(&mut st, id, bytes).ok()
    }

    /// [`alloc_pages`](Self::alloc_pages), taking more memory from upstream if needed.
    pub(crate) fn alloc_pages_growing(&self, bytes: usize) -> Result<(NonNull<u8>, bool)> {
        let page = crate::tiers::slab::page_map::PAGE;
        let needed = bytes + page.saturating_sub(self.granularity);
        let mut st = self.state.lock();
        let id = match self.best_fit(&st, needed, bytes) {
            Some(id) => id,
            None => self.grow(&mut st, needed, bytes, page)?,
        };
        self.carve_pages(&mut st, id, bytes)
            .map_err(|refusal| self.refused(&mut st, refusal, bytes, page))
    }

    fn carve_pages(
        &self,
        st: &mut State,
        id: u32,
        bytes: usize,
    ) -> std::result::Result<(NonNull<u8>, bool), UpstreamError> {
        let page = crate::tiers::slab::page_map::PAGE;
        let (ptr, size, zero) = self.carve(st, id, bytes, bytes, page, Kind::Pages)?;
        debug_assert_eq!(
            size, bytes,
            "page runs are exact multiples of the granularity"
        );
        st.page_bytes += size;
        Ok((ptr, zero))
    }

    /// Gives back a run of pages from [`alloc_pages`](Self::alloc_pages), seen unused
    /// by `age` release passes already (0 if just freed).
    ///
    /// # Safety
    ///
    /// `ptr` and `bytes` are those of a live page run of this tier, whose memory
    /// nobody uses any more.
    pub(crate) unsafe fn free_pages(&self, ptr: NonNull<u8>, bytes: usize, age: u8) {
        let mut st = self.state.lock();
        let freed = self.free_and_merge(&mut st, ptr.as_ptr().addr(), Kind::Pages, age);
        debug_assert_eq!(freed.map(|f| f.0), Ok(bytes), "not a live page run");
        st.page_bytes -= bytes;
    }

    /// Grows a live run of pages from [`alloc_pages`](Self::alloc_pages) in place
    /// from `bytes` to `to` bytes (both multiples of the page size), as
    /// [`resize`](BlockTier::resize) grows a block, but committing no more than `to`
    /// (the caller's room is in it); `false`, nothing changed, when it cannot (or
    /// when the run would not split exactly: at `max_split_size`).
    pub(crate) fn grow_pages(&self, ptr: NonNull<u8>, bytes: usize, to: usize) -> bool {
        debug_assert!(to > bytes);
        if self.max_split_size.is_some_and(|m| to >= m) {
            return false;
        }
        let mut st = self.state.lock();
        let Some(&id) = st.live.get(&ptr.as_ptr().addr()) else {
            return false;
        };
        let b = st.blocks[id as usize];
        debug_assert!(
            b.kind == Kind::Pages && b.size == bytes,
            "not a live page run"
        );
        match self.grow_in_place(&mut st, id, to, 0) {
            Some(grown) => {
                debug_assert_eq!(grown, to, "page runs split exactly");
                st.page_bytes += grown - b.size;
                true
            }
            None => false,
        }
    }

    /// Counts the live raw block at `addr` as requested for `size` bytes and keeps
    /// its whole size (room that its next growths fill in place, see the manager's
    /// `serve_with_room`): its block size, or `None` (nothing changed) when the block
    /// is not at most twice `size` and at least `size`.
    pub(crate) fn keep_room(&self, addr: usize, size: usize) -> Option<usize> {
        let mut st = self.state.lock();
        let &id = st.live.get(&addr)?;
        let b = st.blocks[id as usize];
        if b.kind != Kind::Raw || !contract::fits_in_place(b.size, size) {
            return None;
        }
        Some(resized(&mut st, id, b, size).block_size)
    }

    /// The free block to use for a request needing `needed` bytes (`rounded` without
    /// alignment slack), honouring `max_split_size`.
    fn best_fit(&self, st: &State, needed: usize, rounded: usize) -> Option<u32> {
        let &(size, _, id) = st.free.range((needed, 0, 0)..).next()?;
        match self.max_split_size {
            Some(max_split) if rounded < max_split && size >= max_split => None,
            Some(max_split)
                if rounded >= max_split && size >= rounded + self.max_oversize_waste =>
            {
                None
            }
            _ => Some(id),
        }
    }

    /// Takes a new segment from upstream for a request needing `needed` bytes and
    /// returns its single free block.
    fn grow(&self, st: &mut State, needed: usize, size: usize, align: usize) -> Result<u32> {
        if self.expandable {
            if let Some(space) = self.upstream.address_space() {
                return self.expand(st, space, needed, size, align);
            }
        }
        let exact = round_up(needed, HUGE_PAGE_SIZE);
        let splits = self.max_split_size.is_none_or(|m| needed < m);
        let preferred = if splits {
            exact.max(self.segment_size)
        } else {
            exact
        };
        let mut bytes = preferred;
        let mut attempt = self.upstream.allocate(bytes, HUGE_PAGE_SIZE);
        // Under a limit, or where the system refuses a mapping that large (a limited
        // address space), a segment of just the request (in 2 MiB, then in pages)
        // may still fit.
        let tight = round_up(needed, crate::upstream::page_size());
        for smaller in [exact, tight] {
            let refused = matches!(
                attempt,
                Err(UpstreamError::LimitReached { .. } | UpstreamError::OutOfMemory { .. })
            );
            if refused && bytes > smaller {
                bytes = smaller;
                attempt = self.upstream.allocate(bytes, HUGE_PAGE_SIZE);
            }
        }
        let ptr = match attempt {
            Ok(ptr) => ptr,
            Err(refusal) => return Err(self.refused(st, refusal, size, align)),
        };
        let region = Region::new(ptr, bytes);
        let seg_id = st.segments.insert(None);
        let block = st.blocks.insert(Block {
            segment: seg_id,
            offset: 0,
            size: bytes,
            requested: 0,
            prev: NONE,
            next: NONE,
            free: true,
            kind: Kind::Typed,
        });
        st.segments[seg_id as usize] = Some(Segment {
            region,
            committed: bytes,
            expandable: false,
            first: block,
            last: block,
            live_blocks: 0,
            dirty: 0,
            released: Bits::default(),
            in_use: self.stamps(0, bytes, st.passes),
        });
        st.segment_map.insert(region.start(), bytes, seg_id);
        st.free.insert((bytes, region.start(), block));
        st.free_bytes += bytes;
        st.usage.on_reserve(bytes);
        Ok(block)
    }

    /// The out-of-memory error for an upstream refusal, counted.
    fn refused(&self, st: &mut State, refusal: UpstreamError, size: usize, align: usize) -> Error {
        st.usage.num_ooms += 1;
        let largest = st.free.last().map_or(0, |f| f.0);
        OutOfMemory::from_upstream(size, align, self.tier, refusal, &st.usage, largest).into_error()
    }

    /// Grows an expandable segment at its top so that its last block, free, holds
    /// `needed` bytes; returns that block.
    fn expand(
        &self,
        st: &mut State,
        space: &dyn AddressSpace,
        needed: usize,
        size: usize,
        align: usize,
    ) -> Result<u32> {
        // The bytes to commit at the top of a segment, or `None` when its free top
        // already holds `needed`: the split policy (`max_split_size`) refused that
        // block, and growing it would not make it acceptable.
        let growth = |st: &State, id: u32| {
            let seg = segment(st, id);
            let tail = match seg.last {
                NONE => 0,
                last if st.blocks[last as usize].free => st.blocks[last as usize].size,
                _ => 0,
            };
            needed
                .checked_sub(tail)
                .filter(|&g| g > 0)
                .map(|g| round_up(g, self.commit_granularity))
        };
        let target = st.growing.filter(|&id| {
            let seg = segment(st, id);
            growth(st, id).is_some_and(|g| seg.committed + g <= seg.region.len())
        });
        let seg_id = match target {
            Some(id) => id,
            None => self.reserve(st, space, needed, size, align)?,
        };
        let delta = growth(st, seg_id).expect("a segment without a free top grows");
        self.commit_top(st, space, seg_id, delta)
            .map_err(|refusal| self.refused(st, refusal, size, align))
    }

    /// Commits `delta` more bytes (a multiple of the commit granularity, within the
    /// reservation) at the top of expandable segment `seg_id`: they extend its last
    /// block if free, or become a new free last block; returns that block.
    fn commit_top(
        &self,
        st: &mut State,
        space: &dyn AddressSpace,
        seg_id: u32,
        delta: usize,
    ) -> std::result::Result<u32, UpstreamError> {
        let seg = segment(st, seg_id);
        let (region, committed, last) = (seg.region, seg.committed, seg.last);
        debug_assert!(committed + delta <= region.len() && delta % self.commit_granularity == 0);
        // SAFETY: `[committed, committed + delta)` lies inside the reservation (the
        // callers check it, or reserved for it), is page-aligned (both are multiples
        // of the commit granularity) and is not committed yet.
        unsafe { space.commit(region.at(committed), delta) }?;
        st.usage.on_reserve(delta);
        let id = if last != NONE && st.blocks[last as usize].free {
            take_free(st, last);
            st.blocks[last as usize].size += delta;
            last
        } else {
            let id = st.blocks.insert(Block {
                segment: seg_id,
                offset: committed,
                size: delta,
                requested: 0,
                prev: last,
                next: NONE,
                free: true,
                kind: Kind::Typed,
            });
            if last == NONE {
                segment_mut(st, seg_id).first = id;
            } else {
                st.blocks[last as usize].next = id;
            }
            segment_mut(st, seg_id).last = id;
            id
        };
        put_free(st, id, region.start());
        let passes = st.passes;
        let seg = segment_mut(st, seg_id);
        seg.in_use.mark(committed, committed + delta, passes);
        seg.committed += delta;
        Ok(id)
    }

    /// Reserves a new expandable segment large enough for `needed` bytes and makes it
    /// the one that grows.
    ///
    /// A reservation the system refuses is tried again at half the size, down to
    /// the least that holds `needed`: a process whose address space is limited
    /// (`ulimit -v`, Valgrind, some batch schedulers) cannot map the default 64 GiB
    /// but commits the same memory into smaller segments. Under a limit the space
    /// names ([`reservation_cap`](AddressSpace::reservation_cap): an eighth of
    /// `ulimit -v`), a reservation takes no more than that share. Each reservation
    /// starts from the configured size again (a refusal may have been a passing
    /// peak; the failed tries cost a system call each, and reservations are rare).
    fn reserve(
        &self,
        st: &mut State,
        space: &dyn AddressSpace,
        needed: usize,
        size: usize,
        align: usize,
    ) -> Result<u32> {
        let least = round_up(needed, HUGE_PAGE_SIZE);
        let mut bytes = self.reservation.min(space.reservation_cap()).max(least);
        let ptr = loop {
            match space.reserve(bytes) {
                Ok(ptr) => break ptr,
                Err(UpstreamError::OutOfMemory { .. }) if bytes > least => {
                    bytes = round_up(bytes / 2, HUGE_PAGE_SIZE).max(least);
                }
                Err(refusal) => return Err(self.refused(st, refusal, size, align)),
            }
        };
        let region = Region::new(ptr, bytes);
        let seg_id = st.segments.insert(None);
        st.segments[seg_id as usize] = Some(Segment {
            region,
            committed: 0,
            expandable: true,
            first: NONE,
            last: NONE,
            live_blocks: 0,
            dirty: 0,
            released: Bits::default(),
            in_use: self.stamps(0, 0, st.passes),
        });
        st.segment_map.insert(region.start(), bytes, seg_id);
        st.growing = Some(seg_id);
        Ok(seg_id)
    }

    /// Allocates from free block `id`: splits off an alignment head and an unneeded
    /// tail as free blocks. Returns the pointer, the size of the allocated block and
    /// whether its bytes are known to be zero; refuses (changing nothing) when the
    /// block covers released pages that the limit does not let back.
    fn carve(
        &self,
        st: &mut State,
        id: u32,
        rounded: usize,
        requested: usize,
        align: usize,
        kind: Kind,
    ) -> std::result::Result<(NonNull<u8>, usize, bool), UpstreamError> {
        let b = st.blocks[id as usize];
        let region = segment(st, b.segment).region;
        let start = region.start() + b.offset;
        let head = round_up(start, align) - start;
        let body = b.size - head;
        let splits = self.max_split_size.is_none_or(|m| rounded < m);
        let size = self.kept(body, rounded, splits);
        // Released pages the block covers are in use again once touched.
        let (first, end) = self.pages_touched(b.offset + head, b.offset + head + size);
        let released = segment(st, b.segment).released.count(first, end);
        if released > 0 {
            self.upstream.reuse_pages(released * self.page, true)?;
            segment_mut(st, b.segment).released.clear_range(first, end);
            st.usage.on_reuse_pages(released * self.page);
        }
        take_free(st, id);
        let id = if head > 0 {
            // The head stays free; the rest becomes the block we allocate from.
            let rest = split(st, id, head);
            put_free(st, id, region.start());
            rest
        } else {
            id
        };
        if size < body {
            let tail = split(st, id, size);
            put_free(st, tail, region.start());
        }
        let block = &mut st.blocks[id as usize];
        block.free = false;
        block.kind = kind;
        block.requested = requested;
        let offset = block.offset;
        let zeroing = self.zeroing;
        let segment = segment_mut(st, b.segment);
        segment.live_blocks += 1;
        let zero = zeroing && offset >= segment.dirty;
        segment.dirty = segment.dirty.max(offset + size);
        st.live.insert(region.start() + offset, id);
        Ok((region.at(offset), size, zero))
    }

    /// Grows live block `id` in place to hold `size` bytes, as glibc's `realloc`
    /// does: into its free next block (split, the rest left free), or at the top of
    /// an expandable segment by committing more (`room` bytes more than asked where
    /// the block splits, so that a buffer grown step by step commits in few steps;
    /// the rest a free top, trimmed like any). `None`, nothing changed, when it cannot:
    /// another block follows; the free neighbour is too small, unsplittable
    /// (`max_split_size`), or would leave more than `max_oversize_waste` in a block
    /// that does not split; the reservation is full; the limit refuses the memory.
    /// Returns the block's size now; the caller counts it (a user's block in
    /// `usage`, a page run in `page_bytes`).
    fn grow_in_place(&self, st: &mut State, id: u32, size: usize, room: usize) -> Option<usize> {
        let rounded = self.rounded_size(size);
        let b = st.blocks[id as usize];
        let seg = segment(st, b.segment);
        let next = (b.next != NONE && st.blocks[b.next as usize].free).then_some(b.next);
        let free_after = next.map_or(0, |n| st.blocks[n as usize].size);
        let splits = self.max_split_size.is_none_or(|m| rounded < m);
        if self
            .max_split_size
            .is_some_and(|max_split| free_after >= max_split)
        {
            return None;
        }
        // The pages of the free neighbour that the grown block will cover, and the
        // bytes (if any) to commit at the top.
        let (first, end, commit) = if b.size + free_after >= rounded {
            let merged = b.size + free_after;
            if !splits && merged - rounded > self.max_oversize_waste {
                return None;
            }
            let keep = self.kept(merged, rounded, splits);
            let (first, end) = self.pages_touched(b.offset + b.size, b.offset + keep);
            (first, end, None)
        } else {
            let ends = seg.last == next.unwrap_or(id);
            let space = self
                .upstream
                .address_space()
                .filter(|_| seg.expandable && ends)?;
            let (first, end) =
                self.pages_touched(b.offset + b.size, b.offset + b.size + free_after);
            // Pages released inside a free top (rare: the top is decommitted
            // instead) would be counted back before the commit, which could then
            // fail: such a block moves.
            if seg.released.count(first, end) > 0 {
                return None;
            }
            let lacking = rounded - b.size - free_after;
            let exact = round_up(lacking, self.commit_granularity);
            let room = match splits {
                true => round_up(lacking.saturating_add(room), self.commit_granularity),
                false => exact,
            };
            (first, end, Some((space, room, exact)))
        };
        match commit {
            None => {
                // Released pages the block grows over are in use again.
                let released = segment(st, b.segment).released.count(first, end);
                if released > 0 {
                    self.upstream.reuse_pages(released * self.page, true).ok()?;
                    segment_mut(st, b.segment).released.clear_range(first, end);
                    st.usage.on_reuse_pages(released * self.page);
                }
            }
            Some((space, room, exact)) => {
                // With room if the reservation and the limit allow it, else exactly.
                let left = seg.region.len() - seg.committed;
                let tries = if room == exact {
                    &[exact][..]
                } else {
                    &[room, exact][..]
                };
                let committed = tries
                    .iter()
                    .filter(|&&delta| delta <= left)
                    .any(|&delta| self.commit_top(st, space, b.segment, delta).is_ok());
                if !committed {
                    return None;
                }
            }
        }
        let next = st.blocks[id as usize].next;
        take_free(st, next);
        merge_next(st, id);
        let merged = st.blocks[id as usize].size;
        if self.kept(merged, rounded, splits) < merged {
            let tail = split(st, id, rounded);
            let base = segment(st, b.segment).region.start();
            put_free(st, tail, base);
        }
        let grown = st.blocks[id as usize].size;
        let seg = segment_mut(st, b.segment);
        seg.dirty = seg.dirty.max(b.offset + grown);
        Some(grown)
    }

    /// Shrinks live block `id` in place to hold `size` bytes (at most its size): the
    /// tail it no longer needs, if at least the granularity, becomes free (merged
    /// with a free block after it), as `carve` leaves it. A block of
    /// `max_split_size` or more is never split: it stays whole. The caller counts
    /// the block's new size ([`resized`]).
    fn shrink_in_place(&self, st: &mut State, id: u32, size: usize) {
        let rounded = self.rounded_size(size);
        let b = st.blocks[id as usize];
        let splits = self.max_split_size.is_none_or(|m| b.size < m);
        if self.kept(b.size, rounded, splits) == b.size {
            return;
        }
        let tail = split(st, id, rounded);
        // Freed now, as a free would mark it.
        let passes = st.passes;
        segment_mut(st, b.segment)
            .in_use
            .mark(b.offset + rounded, b.offset + b.size, passes);
        let next = st.blocks[tail as usize].next;
        if next != NONE && st.blocks[next as usize].free {
            take_free(st, next);
            merge_next(st, tail);
        }
        let base = segment(st, b.segment).region.start();
        put_free(st, tail, base);
    }

    /// The bytes a block keeps of `whole` when it needs `rounded` of them: `rounded`
    /// when it may split (`splits`) and the tail would be a block of its own (at
    /// least the granularity), else all of them.
    fn kept(&self, whole: usize, rounded: usize, splits: bool) -> usize {
        if splits && whole - rounded >= self.granularity {
            rounded
        } else {
            whole
        }
    }

    /// Stamps for a segment whose bytes `[lo, hi)` are fresh at pass `passes`.
    fn stamps(&self, lo: usize, hi: usize, passes: u32) -> Stamps {
        let mut stamps = Stamps::new(AGE_GRANULE.max(self.page));
        stamps.mark(lo, hi, passes);
        stamps
    }

    /// The pages `[first, end)` that bytes `[lo, hi)` of a segment touch.
    fn pages_touched(&self, lo: usize, hi: usize) -> (usize, usize) {
        (lo / self.page, hi.div_ceil(self.page))
    }

    /// The pages `[first, end)` wholly inside bytes `[lo, hi)` of a segment.
    fn pages_inside(&self, lo: usize, hi: usize) -> (usize, usize) {
        let first = lo.div_ceil(self.page);
        (first, (hi / self.page).max(first))
    }

    /// Frees the live block at `addr` held by `kind`, merging it with its free
    /// neighbours, as seen unused by `age` release passes (0 for a block its holder
    /// just freed); returns its block size and requested size.
    fn free_and_merge(
        &self,
        st: &mut State,
        addr: usize,
        kind: Kind,
        age: u8,
    ) -> Result<(usize, usize)> {
        let Some(&id) = st.live.get(&addr) else {
            return Err(Error::InvalidPointer {
                addr,
                reason: classify(st, addr),
            });
        };
        let b = st.blocks[id as usize];
        if b.kind != kind {
            return Err(Error::InvalidPointer {
                addr,
                reason: PointerError::NotRaw,
            });
        }
        st.live.remove(&addr);
        let base = segment(st, b.segment).region.start();
        segment_mut(st, b.segment).live_blocks -= 1;
        st.blocks[id as usize].free = true;
        st.blocks[id as usize].requested = 0;
        let last_use = st.passes.saturating_sub(age.into());
        segment_mut(st, b.segment)
            .in_use
            .mark(b.offset, b.offset + b.size, last_use);
        // Merge with free neighbours.
        let mut id = id;
        if b.next != NONE && st.blocks[b.next as usize].free {
            take_free(st, b.next);
            merge_next(st, id);
        }
        let prev = st.blocks[id as usize].prev;
        if prev != NONE && st.blocks[prev as usize].free {
            take_free(st, prev);
            merge_next(st, prev);
            id = prev;
        }
        put_free(st, id, base);
        Ok((b.size, b.requested))
    }

    /// Returns every byte of free memory to the system now: whole free segments,
    /// the free top of expandable segments (decommitted) and the pages inside every
    /// other free block (released in place). Returns the bytes given back.
    pub fn trim(&self) -> usize {
        self.give_back(0)
    }

    /// A pass of the release policy: gives back, as [`trim`](Self::trim) does, the free
    /// memory that `min_age` passes (at least 1, this one counted) have seen unused.
    /// Age is kept per 64 KiB of a segment, not per free block: memory freed now that
    /// merges with older free memory leaves the older part due. Returns the bytes
    /// given back.
    pub fn release_idle(&self, min_age: u8) -> usize {
        self.give_back(min_age.max(1))
    }

    /// Gives back free memory seen unused by `min_age` passes (this call being one),
    /// or with 0, all of it.
    fn give_back(&self, min_age: u8) -> usize {
        let mut st = self.state.lock();
        let st = &mut *st;
        let min_age = u32::from(min_age);
        if min_age > 0 {
            st.passes += 1;
        }
        let mut released = 0;
        // Whole segments and free tops go back whole.
        for seg_id in 0..st.segments.len() as u32 {
            let Some(seg) = &st.segments[seg_id as usize] else {
                continue;
            };
            if seg.expandable {
                released += self.shrink(st, seg_id, min_age);
            } else if seg.live_blocks == 0
                && seg.in_use.all_due(0, seg.region.len(), st.passes, min_age)
            {
                released += self.drop_free_segment(st, seg_id);
            }
        }
        // Then the pages inside the other free blocks.
        let free: Vec<u32> = st.free.iter().map(|&(_, _, id)| id).collect();
        for id in free {
            match self.release_inside(st, id, min_age) {
                Some(bytes) => released += bytes,
                // The upstream cannot release pages in place (the heap).
                None => break,
            }
        }
        released
    }

    /// Releases in place the pages wholly inside free block `id` that are not
    /// released yet and that `min_age` passes have seen unused; the bytes, or `None`
    /// if the upstream cannot.
    fn release_inside(&self, st: &mut State, id: u32, min_age: u32) -> Option<usize> {
        let b = st.blocks[id as usize];
        let seg = segment(st, b.segment);
        let region = seg.region;
        let runs: Vec<(usize, usize)> = seg
            .in_use
            .due_runs(b.offset, b.offset + b.size, st.passes, min_age)
            .flat_map(|(lo, hi)| {
                let (first, end) = self.pages_inside(lo, hi);
                seg.released.runs_clear(first, end)
            })
            .collect();
        let mut released = 0;
        for (from, to) in runs {
            let len = (to - from) * self.page;
            // SAFETY: the pages lie wholly inside a free block of a segment of this
            // upstream (committed, for an expandable one): page-aligned, holding
            // nothing anyone will read.
            if !unsafe {
                self.upstream
                    .release_pages(region.at(from * self.page), len)
            } {
                return None;
            }
            segment_mut(st, b.segment).released.set_range(from, to);
            st.usage.on_release_pages(len);
            released += len;
        }
        Some(released)
    }

    /// Counts the released pages of bytes `[lo, hi)` of segment `seg_id` resident
    /// again and forgets them, before the range goes back to upstream whole.
    fn unrelease(&self, st: &mut State, seg_id: u32, lo: usize, hi: usize) {
        let (first, end) = self.pages_touched(lo, hi);
        let seg = segment_mut(st, seg_id);
        let pages = seg.released.clear_range(first, end);
        if pages > 0 {
            // Never refused: the whole range is about to go back.
            let _ = self.upstream.reuse_pages(pages * self.page, false);
            st.usage.on_reuse_pages(pages * self.page);
        }
    }

    /// Returns segment `seg_id`, not expandable and holding no live block, to
    /// upstream; its bytes.
    fn drop_free_segment(&self, st: &mut State, seg_id: u32) -> usize {
        let seg = segment(st, seg_id);
        let (region, first) = (seg.region, seg.first);
        debug_assert_eq!(
            st.blocks[first as usize].size,
            region.len(),
            "a free segment is one block"
        );
        self.unrelease(st, seg_id, 0, region.len());
        take_free(st, first);
        st.blocks.release(first);
        drop_segment(st, seg_id);
        st.usage.on_release(region.len());
        // SAFETY: the region came from this upstream with this size and 2 MiB
        // alignment, and no block in it is live.
        unsafe {
            self.upstream
                .deallocate(region.ptr(), region.len(), HUGE_PAGE_SIZE)
        };
        region.len()
    }

    /// Decommits the part of the free top of expandable segment `seg_id` that
    /// `min_age` passes have seen unused, and releases its reservation once nothing
    /// is committed. Returns the bytes decommitted.
    fn shrink(&self, st: &mut State, seg_id: u32, min_age: u32) -> usize {
        let space = self
            .upstream
            .address_space()
            .expect("expandable segments exist only over an address space");
        let seg = segment(st, seg_id);
        let (region, committed, last) = (seg.region, seg.committed, seg.last);
        let mut released = 0;
        if last != NONE && st.blocks[last as usize].free {
            let offset = st.blocks[last as usize].offset;
            // Keep the granule the last live block ends in, and the young part.
            let due = segment(st, seg_id)
                .in_use
                .due_from(offset, committed, st.passes, min_age);
            let keep = round_up(due, self.commit_granularity);
            if keep < committed {
                take_free(st, last);
                if keep == offset {
                    let prev = st.blocks[last as usize].prev;
                    if prev == NONE {
                        segment_mut(st, seg_id).first = NONE;
                    } else {
                        st.blocks[prev as usize].next = NONE;
                    }
                    segment_mut(st, seg_id).last = prev;
                    st.blocks.release(last);
                } else {
                    st.blocks[last as usize].size = keep - offset;
                    put_free(st, last, region.start());
                }
                self.unrelease(st, seg_id, keep, committed);
                let seg = segment_mut(st, seg_id);
                seg.released.truncate(keep / self.page);
                seg.in_use.truncate(keep);
                // SAFETY: `[keep, committed)` is committed, granule-aligned, and lies
                // in the free top block, which holds nothing in use.
                unsafe { space.decommit(region.at(keep), committed - keep) };
                st.usage.on_release(committed - keep);
                released = committed - keep;
                let segment = segment_mut(st, seg_id);
                segment.committed = keep;
                segment.dirty = segment.dirty.min(keep);
            }
        }
        if segment(st, seg_id).committed == 0 {
            drop_segment(st, seg_id);
            // SAFETY: the whole reservation, with nothing committed in it any more.
            unsafe { space.unreserve(region.ptr(), region.len()) };
        }
        released
    }

    /// The largest free block.
    pub fn largest_free_block(&self) -> usize {
        self.state.lock().free.last().map_or(0, |f| f.0)
    }

    /// Starts the tier's peaks from its current figures.
    pub(crate) fn reset_peaks(&self) {
        self.state.lock().usage.reset_peaks();
    }

    /// The statistics.
    pub fn stats(&self) -> BestFitStats {
        let st = self.state.lock();
        let largest = st.free.last().map_or(0, |f| f.0);
        BestFitStats {
            segments: st.segment_map.len(),
            free_blocks: st.free.len(),
            free_bytes: st.free_bytes,
            largest_free_block: largest,
            fragmentation: fragmentation(largest, st.free_bytes),
            usage: st.usage,
        }
    }

    /// Every segment with every block.
    pub fn snapshot(&self) -> Snapshot {
        contract::snapshot_of(self)
    }

    /// Checks the invariants of the block chains (for tests): blocks tile each
    /// segment, no two free blocks are adjacent, and the indexes agree.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let st = self.state.lock();
        let mut free_seen = 0;
        let mut live_seen = 0;
        for (start, len, &seg_id) in st.segment_map.iter() {
            let seg = segment(&st, seg_id);
            let mut id = seg.first;
            let mut offset = 0;
            let mut prev = NONE;
            let mut prev_free = false;
            let mut live = 0;
            while id != NONE {
                let b = st.blocks[id as usize];
                assert_eq!((b.offset, b.prev, b.segment), (offset, prev, seg_id));
                assert!(!(b.free && prev_free), "two adjacent free blocks");
                if b.free {
                    assert!(st.free.contains(&(b.size, start + b.offset, id)));
                    free_seen += 1;
                } else {
                    assert_eq!(st.live.get(&(start + b.offset)), Some(&id));
                    live += 1;
                }
                prev_free = b.free;
                offset += b.size;
                prev = id;
                id = b.next;
            }
            assert_eq!(offset, seg.committed, "blocks tile the committed part");
            assert!(seg.committed <= len);
            assert_eq!(seg.last, prev, "the segment knows its last block");
            assert_eq!(live, seg.live_blocks);
            live_seen += live;
        }
        assert_eq!(free_seen, st.free.len());
        assert_eq!(live_seen as usize, st.live.len());
        assert_eq!(st.free.iter().map(|f| f.0).sum::<usize>(), st.free_bytes);
    }
}

fn segment(st: &State, id: u32) -> &Segment {
    st.segments[id as usize]
        .as_ref()
        .expect("blocks point at live segments")
}

fn segment_mut(st: &mut State, id: u32) -> &mut Segment {
    st.segments[id as usize]
        .as_mut()
        .expect("blocks point at live segments")
}

/// Forgets segment `seg_id` (its memory is released by the caller).
fn drop_segment(st: &mut State, seg_id: u32) {
    let seg = st.segments[seg_id as usize].take().expect("a live segment");
    st.segment_map.remove(seg.region.start());
    st.segments.release(seg_id);
    if st.growing == Some(seg_id) {
        st.growing = None;
    }
}

/// Counts live block `id`, which was `before`, as resized in place for
/// `requested` bytes (at its size now), in the block and in the tier's usage.
fn resized(st: &mut State, id: u32, before: Block, requested: usize) -> Resized {
    let block = &mut st.blocks[id as usize];
    block.requested = requested;
    let block_size = block.size;
    st.usage
        .on_resize((before.size, block_size), (before.requested, requested));
    Resized {
        before: BlockSizes {
            block_size: before.size,
            requested: before.requested,
        },
        block_size,
    }
}

/// Removes free block `id` from the free index.
fn take_free(st: &mut State, id: u32) {
    let b = st.blocks[id as usize];
    let base = segment(st, b.segment).region.start();
    let removed = st.free.remove(&(b.size, base + b.offset, id));
    debug_assert!(removed, "block {id} was not in the free index");
    st.free_bytes -= b.size;
}

/// Marks block `id` free and adds it to the free index.
fn put_free(st: &mut State, id: u32, base: usize) {
    let b = &mut st.blocks[id as usize];
    b.free = true;
    b.requested = 0;
    let key = (b.size, base + b.offset, id);
    st.free_bytes += key.0;
    st.free.insert(key);
}

/// Splits block `id` after `at` bytes; returns the new block holding the rest. Both
/// keep `id`'s state; neither is in the free index.
fn split(st: &mut State, id: u32, at: usize) -> u32 {
    let b = st.blocks[id as usize];
    debug_assert!(at > 0 && at < b.size);
    let rest = st.blocks.insert(Block {
        offset: b.offset + at,
        size: b.size - at,
        prev: id,
        ..b
    });
    if b.next == NONE {
        segment_mut(st, b.segment).last = rest;
    } else {
        st.blocks[b.next as usize].prev = rest;
    }
    let block = &mut st.blocks[id as usize];
    block.size = at;
    block.next = rest;
    rest
}

/// Merges block `id` with its next block, which must be out of the free index.
fn merge_next(st: &mut State, id: u32) {
    let next = st.blocks[id as usize].next;
    let n = st.blocks[next as usize];
    st.blocks[id as usize].size += n.size;
    st.blocks[id as usize].next = n.next;
    if n.next == NONE {
        segment_mut(st, n.segment).last = id;
    } else {
        st.blocks[n.next as usize].prev = id;
    }
    st.blocks.release(next);
}

/// Why `addr`, which starts no live block, cannot be freed. Walks the containing
/// segment's chain: this runs only for invalid pointers.
fn classify(st: &State, addr: usize) -> PointerError {
    let Some((start, _, &seg_id)) = st.segment_map.find(addr) else {
        return PointerError::Foreign;
    };
    let mut id = segment(st, seg_id).first;
    while id != NONE {
        let b = st.blocks[id as usize];
        if addr < start + b.offset + b.size {
            return if b.free {
                PointerError::NotLive
            } else {
                PointerError::Interior {
                    block: start + b.offset,
                    offset: addr - start - b.offset,
                }
            };
        }
        id = b.next;
    }
    PointerError::NotLive
}

impl Drop for BestFit {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        for seg in st.segments.take_all().into_iter().flatten() {
            let region = seg.region;
            // Released pages come off the resident count with their range.
            let pages = seg.released.count(0, region.len().div_ceil(self.page));
            if pages > 0 {
                let _ = self.upstream.reuse_pages(pages * self.page, false);
            }
            // SAFETY: every segment came from this upstream (a plain one with its size
            // and 2 MiB alignment, an expandable one from its address space with
            // `committed` bytes committed); the allocator is going away, and
            // `Allocator` users borrow it.
            unsafe {
                match self.upstream.address_space() {
                    Some(space) if seg.expandable => {
                        if seg.committed > 0 {
                            space.decommit(region.ptr(), seg.committed);
                        }
                        space.unreserve(region.ptr(), region.len());
                    }
                    _ => self
                        .upstream
                        .deallocate(region.ptr(), region.len(), HUGE_PAGE_SIZE),
                }
            }
        }
    }
}

// SAFETY: blocks are disjoint parts of segments owned by the allocator, at least
// `layout.size()` long and aligned as asked, valid until freed or until the
// allocator is dropped, which the borrow of `&self` prevents.
impl BlockTier for BestFit {
    fn tier(&self) -> Tier {
        self.tier
    }

    fn grant(&self, size: usize, align: usize, raw: bool) -> Result<Grant> {
        validate(size, align)?;
        let rounded = self.rounded_size(size);
        // With a larger alignment, a block this much bigger always holds an aligned start.
        let needed = rounded + align.saturating_sub(self.granularity);
        let mut st = self.state.lock();
        let (id, hit) = match self.best_fit(&st, needed, rounded) {
            Some(id) => (id, true),
            None => (self.grow(&mut st, needed, size, align)?, false),
        };
        let (ptr, block_size, zeroed) = self
            .carve(&mut st, id, rounded, size, align, Kind::of(raw))
            .map_err(|refusal| self.refused(&mut st, refusal, size, align))?;
        st.usage.on_alloc(block_size, size, hit);
        Ok(Grant {
            ptr,
            block_size,
            zeroed,
            hit,
        })
    }

    fn resize(&self, addr: usize, size: usize, raw: bool) -> Option<Resized> {
        let mut st = self.state.lock();
        let &id = st.live.get(&addr)?;
        let b = st.blocks[id as usize];
        if b.kind != Kind::of(raw) {
            return None;
        }
        if size > b.size {
            self.grow_in_place(&mut st, id, size, contract::room(size))?;
        } else if size >= b.requested {
            // Growth within the block (room it was given, see `keep_room`).
        } else if contract::fits_in_place(b.size, size) {
            self.shrink_in_place(&mut st, id, size);
        } else {
            return None;
        }
        Some(resized(&mut st, id, b, size))
    }

    fn sizes(&self, addr: usize, raw: bool) -> Result<BlockSizes> {
        let st = self.state.lock();
        let Some(&id) = st.live.get(&addr) else {
            return Err(Error::InvalidPointer {
                addr,
                reason: classify(&st, addr),
            });
        };
        let b = st.blocks[id as usize];
        if b.kind != Kind::of(raw) {
            return Err(Error::InvalidPointer {
                addr,
                reason: PointerError::NotRaw,
            });
        }
        Ok(BlockSizes {
            block_size: b.size,
            requested: b.requested,
        })
    }

    fn release(&self, addr: usize, raw: bool) -> Result<BlockSizes> {
        let mut st = self.state.lock();
        let (block_size, requested) = self.free_and_merge(&mut st, addr, Kind::of(raw), 0)?;
        st.usage.on_free(block_size, requested);
        Ok(BlockSizes {
            block_size,
            requested,
        })
    }

    fn trim(&self) -> usize {
        BestFit::trim(self)
    }

    fn release_idle(&self, min_age: u8) -> usize {
        BestFit::release_idle(self, min_age)
    }

    fn largest_free_block(&self) -> usize {
        BestFit::largest_free_block(self)
    }

    fn snapshot_into(&self, out: &mut Vec<SegmentSnapshot>) {
        let st = self.state.lock();
        for (_, _, &seg_id) in st.segment_map.iter() {
            let seg = segment(&st, seg_id);
            let mut blocks = Vec::new();
            let mut id = seg.first;
            while id != NONE {
                let b = st.blocks[id as usize];
                blocks.push(BlockSnapshot {
                    address: seg.region.start() + b.offset,
                    size: b.size,
                    requested: b.requested,
                    state: match (b.free, b.kind) {
                        (true, _) => BlockState::Free,
                        (false, Kind::Pages) => BlockState::Slab,
                        (false, kind) => BlockState::live(kind == Kind::Raw),
                    },
                });
                id = b.next;
            }
            out.push(SegmentSnapshot {
                tier: self.tier,
                address: seg.region.start(),
                size: seg.committed,
                block_size: None,
                allocated_bytes: blocks
                    .iter()
                    .filter(|b| matches!(b.state, BlockState::Allocated | BlockState::AllocatedRaw))
                    .map(|b| b.size)
                    .sum(),
                free_blocks: 0,
                blocks,
            });
        }
    }
}

// SAFETY: blocks are disjoint parts of segments owned by the allocator, at least
// `layout.size()` long and aligned as asked, valid until freed or until the
// allocator is dropped, which the borrow of `&self` prevents.
unsafe impl Allocator for BestFit {
    fn allocate(&self, layout: Layout) -> std::result::Result<NonNull<[u8]>, AllocError> {
        contract::allocate_typed(self, layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller keeps `Allocator::deallocate`'s contract, which is the helper's.
        unsafe { contract::deallocate_typed(self, ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::OomCause;
    use crate::upstream::{HeapUpstream, MeteredUpstream};

    fn heap() -> BestFitBuilder {
        BestFit::builder().upstream(Arc::new(HeapUpstream))
    }

    #[test]
    fn best_fit_prefers_smallest_then_lowest() {
        let bf = heap().segment_size(8 << 20).build().unwrap();
        let mut held: Vec<_> = (0..8).map(|_| bf.allocate(1 << 20, 64).unwrap()).collect();
        // Free blocks 1 (1 MiB), 3+4 (merged 2 MiB), 6 (1 MiB).
        for i in [1, 3, 4, 6] {
            bf.deallocate(held[i]).unwrap();
        }
        bf.check_invariants();
        let s = bf.stats();
        assert_eq!(s.free_blocks, 3);
        let a = bf.allocate(1 << 20, 64).unwrap();
        assert_eq!(a, held[1], "smallest fitting block, lowest address first");
        let b = bf.allocate(1 << 20, 64).unwrap();
        assert_eq!(b, held[6]);
        let c = bf.allocate(1 << 20, 64).unwrap();
        assert_eq!(c, held[3], "the 2 MiB block is split");
        held[1] = a;
        held[6] = b;
        held[3] = c;
        held.remove(4);
        bf.check_invariants();
        for p in held {
            bf.deallocate(p).unwrap();
        }
        bf.check_invariants();
        assert_eq!(bf.stats().free_blocks, 1);
    }

    #[test]
    fn alignment_beyond_granularity_splits_a_head() {
        let bf = heap().granularity(64).build().unwrap();
        let a = bf.allocate(64, 64).unwrap();
        let b = bf.allocate(100, 4096).unwrap();
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_ne!(a, b);
        bf.check_invariants();
        bf.deallocate(a).unwrap();
        bf.deallocate(b).unwrap();
        bf.check_invariants();
        assert_eq!(bf.stats().free_blocks, 1);
    }

    #[test]
    fn invalid_frees_are_classified_and_harmless() {
        let bf = heap().build().unwrap();
        let a = bf.allocate(4096, 64).unwrap();
        let b = bf.allocate(4096, 64).unwrap();
        let before = bf.stats();
        let reason = |p: NonNull<u8>| match bf.deallocate(p) {
            Err(Error::InvalidPointer { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let inside = NonNull::new(a.as_ptr().wrapping_add(100)).unwrap();
        assert_eq!(
            reason(inside),
            PointerError::Interior {
                block: a.as_ptr() as usize,
                offset: 100
            }
        );
        let in_free_space = NonNull::new(b.as_ptr().wrapping_add(8192)).unwrap();
        assert_eq!(reason(in_free_space), PointerError::NotLive);
        let stack = 0u8;
        assert_eq!(reason(NonNull::from(&stack)), PointerError::Foreign);
        assert_eq!(bf.stats(), before);
        bf.deallocate(a).unwrap();
        assert_eq!(reason(a), PointerError::NotLive, "double free");
        let layout = Layout::from_size_align(4096, 64).unwrap();
        let typed = Allocator::allocate(&bf, layout).unwrap().cast::<u8>();
        assert_eq!(reason(typed), PointerError::NotRaw);
        // SAFETY: allocated above with `layout`.
        unsafe { Allocator::deallocate(&bf, typed, layout) };
        bf.deallocate(b).unwrap();
        bf.check_invariants();
    }

    #[test]
    fn max_split_size_keeps_big_blocks_whole() {
        let bf = heap()
            .segment_size(2 << 20)
            .max_split_size(Some(4 << 20))
            .max_oversize_waste(2 << 20)
            .build()
            .unwrap();
        let big = bf.allocate(8 << 20, 64).unwrap();
        bf.deallocate(big).unwrap();
        // A small request does not cut the 8 MiB block: it gets a new segment.
        let small = bf.allocate(1 << 20, 64).unwrap();
        assert_ne!(small, big);
        assert_eq!(bf.stats().segments, 2);
        // A large request within the waste bound reuses it whole, unsplit.
        let large = bf.allocate(7 << 20, 64).unwrap();
        assert_eq!(large, big);
        let s = bf.stats();
        assert_eq!(s.usage.allocated_bytes, (8 << 20) + (1 << 20));
        assert_eq!(s.usage.requested_bytes, (7 << 20) + (1 << 20));
        // Too much waste: 5 MiB in the 8 MiB block would waste 3 MiB > 2 MiB.
        bf.deallocate(large).unwrap();
        let other = bf.allocate(5 << 20, 64).unwrap();
        assert_ne!(other, big);
        bf.check_invariants();
        assert!(matches!(
            heap()
                .segment_size(4 << 20)
                .max_split_size(Some(4 << 20))
                .build(),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn limit_falls_back_to_an_exact_segment_then_reports() {
        let up = Arc::new(MeteredUpstream::new(Arc::new(HeapUpstream), Some(6 << 20)));
        let bf = heap().segment_size(8 << 20).upstream(up).build().unwrap();
        let a = bf.allocate(3 << 20, 64).unwrap();
        assert_eq!(
            bf.stats().usage.reserved_bytes,
            4 << 20,
            "exact segment under the limit"
        );
        let err = bf.allocate(3 << 20, 64).unwrap_err();
        match err {
            Error::OutOfMemory(r) => {
                assert_eq!(r.cause, OomCause::LimitReached);
                assert_eq!(r.limit, Some(6 << 20));
                assert_eq!(r.reserved_bytes, 4 << 20);
                assert_eq!(r.largest_free_block, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
        bf.deallocate(a).unwrap();
        assert_eq!(bf.stats().usage.num_ooms, 1);
    }

    #[test]
    fn trim_releases_only_empty_segments() {
        let bf = heap().build().unwrap();
        let a = bf.allocate(3 << 20, 64).unwrap();
        let b = bf.allocate(3 << 20, 64).unwrap();
        bf.deallocate(a).unwrap();
        assert_eq!(bf.trim(), 4 << 20);
        assert_eq!(bf.stats().segments, 1);
        bf.deallocate(b).unwrap();
        assert_eq!(bf.trim(), 4 << 20);
        let s = bf.stats();
        assert_eq!(
            (s.segments, s.free_blocks, s.usage.reserved_bytes),
            (0, 0, 0)
        );
        bf.check_invariants();
    }

    #[test]
    fn snapshot_tiles_segments() {
        let bf = heap().build().unwrap();
        let a = bf.allocate(1000, 64).unwrap();
        let snap = bf.snapshot();
        assert_eq!(snap.segments.len(), 1);
        let seg = &snap.segments[0];
        assert_eq!(seg.blocks.len(), 2);
        assert_eq!(seg.blocks[0].state, BlockState::AllocatedRaw);
        assert_eq!(seg.blocks[0].requested, 1000);
        assert_eq!(seg.blocks[0].size, 1024);
        assert_eq!(seg.blocks.iter().map(|b| b.size).sum::<usize>(), seg.size);
        bf.deallocate(a).unwrap();
    }

    /// Found by the `strategies` fuzz target: with expandable segments and
    /// `max_split_size`, a small request refused the large free top of the growing
    /// segment (the split policy), and growing that segment computed `needed - top`
    /// with the top larger than `needed`: an overflow (a panic in debug builds, a
    /// wrapped size in release ones). Now the request gets a new reservation.
    #[test]
    fn a_refused_free_top_does_not_overflow_the_growth() {
        let space = Arc::new(crate::testing::CheckedSpace::default());
        let bf = BestFit::builder()
            .upstream(space.clone())
            .reservation_size(8 << 20)
            .max_split_size(Some(3 << 20))
            .build()
            .unwrap();
        let big = bf.allocate(5 << 20, 64).unwrap();
        bf.deallocate(big).unwrap(); // the free top: 5 MiB, never split for small requests
        let small = bf.allocate(100 << 10, 64).unwrap();
        let start = big.as_ptr() as usize;
        let at = small.as_ptr() as usize;
        assert!(at >= start + (5 << 20) || at + (100 << 10) <= start);
        // The big free block still serves a big request.
        let again = bf.allocate(4 << 20, 64).unwrap();
        assert_eq!(again, big);
        bf.deallocate(small).unwrap();
        bf.deallocate(again).unwrap();
        bf.trim();
        assert_eq!(bf.stats().usage.reserved_bytes, 0);
    }

    /// Found by running under `ulimit -v 4000000` and under Valgrind: the system
    /// refused the 64 GiB reservation, and every allocation failed with 0 bytes
    /// reserved. A refused reservation is tried at half the size, down to the
    /// least that holds the request; the next starts from the configured size again.
    #[test]
    fn a_refused_reservation_is_tried_smaller() {
        let space = Arc::new(crate::testing::CheckedSpace::with_cap(4 << 20));
        let bf = BestFit::builder()
            .upstream(space.clone())
            .reservation_size(32 << 20)
            .build()
            .unwrap();
        let a = bf.allocate(3 << 20, 64).unwrap();
        // 32 MiB refused, then 16 and 8; 4 MiB granted.
        assert_eq!(
            *space.asked.lock().unwrap(),
            [32 << 20, 16 << 20, 8 << 20, 4 << 20]
        );
        // The segment fills: the next reservation tries the configured size first.
        let b = bf.allocate(3 << 20, 64).unwrap();
        assert_eq!(
            space.asked.lock().unwrap()[4..],
            [32 << 20, 16 << 20, 8 << 20, 4 << 20]
        );
        assert_eq!(bf.stats().segments, 2);
        // More than any reservation the system grants: refused, explained.
        let e = bf.allocate(6 << 20, 64).unwrap_err();
        assert!(
            e.to_string().contains("the upstream memory source refused"),
            "{e}"
        );
        assert_eq!(
            space.asked.lock().unwrap()[8..],
            [32 << 20, 16 << 20, 8 << 20, 6 << 20]
        );
        bf.deallocate(a).unwrap();
        bf.deallocate(b).unwrap();
        bf.trim();
        assert_eq!(bf.stats().usage.reserved_bytes, 0);
    }

    /// Found under `ulimit -v 1000000`: the first reservation took the largest power
    /// of two that fit (512 MiB), and the program's own 586 MiB mapping then failed.
    /// A reservation takes no more than the space's cap, or what the request needs.
    #[test]
    fn a_reservation_stays_within_the_spaces_cap() {
        let space = Arc::new(crate::testing::CheckedSpace::telling_cap(4 << 20));
        let bf = BestFit::builder()
            .upstream(space.clone())
            .reservation_size(32 << 20)
            .build()
            .unwrap();
        let a = bf.allocate(1 << 20, 64).unwrap();
        let b = bf.allocate(6 << 20, 64).unwrap();
        assert_eq!(*space.asked.lock().unwrap(), [4 << 20, 6 << 20]);
        bf.deallocate(a).unwrap();
        bf.deallocate(b).unwrap();
        bf.trim();
        assert_eq!(bf.stats().usage.reserved_bytes, 0);
    }

    /// A plain segment the system refuses at `segment_size` is asked for at the
    /// request's size (as under a limit).
    #[test]
    fn a_refused_plain_segment_is_asked_for_at_the_requests_size() {
        let space = Arc::new(crate::testing::CheckedSpace::with_cap(4 << 20));
        let bf = BestFit::builder()
            .upstream(space.clone())
            .expandable(false)
            .segment_size(16 << 20)
            .build()
            .unwrap();
        let a = bf.allocate(1 << 20, 64).unwrap();
        assert_eq!(*space.asked.lock().unwrap(), [16 << 20, 2 << 20]);
        assert_eq!(bf.stats().usage.reserved_bytes, 2 << 20);
        bf.deallocate(a).unwrap();
        bf.trim();
        assert_eq!(bf.stats().usage.reserved_bytes, 0);
    }

    #[test]
    fn idle_free_blocks_are_released_in_place_and_count_again_when_reused() {
        // Over the contract-checking address space (also under Miri): free blocks
        // between live ones are released in place after `RELEASE_AGE` passes, the
        // free top is decommitted, live blocks are untouched.
        let space = Arc::new(crate::testing::CheckedSpace::default());
        let bf = BestFit::builder()
            .upstream(space.clone())
            .reservation_size(8 << 20)
            .build()
            .unwrap();
        let blocks: Vec<_> = (0..5).map(|_| bf.allocate(64 << 10, 64).unwrap()).collect();
        for (i, b) in blocks.iter().enumerate() {
            // SAFETY: live blocks of 64 KiB.
            unsafe { b.as_ptr().write_bytes(i as u8 + 1, 64 << 10) };
        }
        bf.deallocate(blocks[1]).unwrap();
        bf.deallocate(blocks[3]).unwrap();
        let resident = bf.stats().usage.resident_bytes;
        // Two passes: not yet (the blocks have not been seen unused long enough).
        assert_eq!(bf.release_idle(3) + bf.release_idle(3), 0);
        assert_eq!(bf.release_idle(3), 2 * (64 << 10));
        let u = bf.stats().usage;
        assert_eq!(u.resident_bytes + 2 * (64 << 10), resident);
        assert_eq!((u.released_bytes, u.num_releases), (2 * (64 << 10), 2));
        assert_eq!(u.reserved_bytes, resident, "the address ranges are kept");
        for i in [0, 2, 4] {
            // SAFETY: live blocks of 64 KiB.
            let bytes = unsafe { std::slice::from_raw_parts(blocks[i].as_ptr(), 64 << 10) };
            let intact = bytes
                .iter()
                .step_by(crate::testing::BYTE_STEP)
                .all(|&b| b == i as u8 + 1);
            assert!(intact, "block {i} changed");
        }
        // Reused: resident again (and, as the system's pages do, zero).
        let again = bf.allocate(64 << 10, 64).unwrap();
        assert_eq!(bf.stats().usage.resident_bytes + (64 << 10), resident);
        // SAFETY: a live block of 64 KiB.
        let bytes = unsafe { std::slice::from_raw_parts(again.as_ptr(), 64 << 10) };
        assert!(bytes
            .iter()
            .step_by(crate::testing::BYTE_STEP)
            .all(|&b| b == 0));
        // A freed block starts again: three more passes before it goes.
        bf.deallocate(again).unwrap();
        assert_eq!(bf.release_idle(3) + bf.release_idle(3), 0);
        assert!(bf.release_idle(3) > 0);
        for i in [0, 2, 4] {
            bf.deallocate(blocks[i]).unwrap();
        }
        bf.trim();
        let u = bf.stats().usage;
        assert_eq!((u.reserved_bytes, u.resident_bytes), (0, 0));
        assert_eq!(space.committed(), 0);
        bf.check_invariants();
    }

    #[test]
    fn raw_blocks_grow_in_place_into_a_free_neighbour_and_at_the_top() {
        // Over the contract-checking address space (also under Miri).
        let space = Arc::new(crate::testing::CheckedSpace::default());
        let bf = BestFit::builder()
            .upstream(space.clone())
            .reservation_size(8 << 20)
            .build()
            .unwrap();
        let kib = |n: usize| n << 10;
        let [a, b, c] = [0; 3].map(|_| bf.allocate(kib(64), 64).unwrap());
        // SAFETY: a live block of 64 KiB.
        unsafe { a.as_ptr().write_bytes(7, kib(64)) };
        let (pa, pc) = (a.as_ptr(), c.as_ptr());
        let (a, c) = (pa.addr(), pc.addr());
        let stats = bf.stats();
        assert_eq!(bf.resize(a, kib(100), true), None, "a live neighbour");
        assert_eq!(bf.stats(), stats, "nothing changed");
        bf.deallocate(b).unwrap();
        let before = bf.stats();
        // Into the free neighbour: 36 KiB of its 64 taken, the rest left free.
        let grown = bf.resize(a, kib(100), true).unwrap();
        let sizes = |block_size, requested| BlockSizes {
            block_size,
            requested,
        };
        assert_eq!(
            grown,
            Resized {
                before: sizes(kib(64), kib(64)),
                block_size: kib(100),
            }
        );
        assert_eq!(bf.sizes(a, true).unwrap(), sizes(kib(100), kib(100)));
        let after = bf.stats();
        let u = (after.usage, before.usage);
        assert_eq!(u.0.allocated_bytes, u.1.allocated_bytes + kib(36));
        assert_eq!(u.0.requested_bytes, u.1.requested_bytes + kib(36));
        assert_eq!(u.0.reserved_bytes, u.1.reserved_bytes);
        assert_eq!(after.free_bytes + kib(36), before.free_bytes);
        // SAFETY: a live block of 100 KiB now, its first 64 written above.
        let kept = unsafe { std::slice::from_raw_parts(pa, kib(64)) };
        assert!(kept
            .iter()
            .step_by(crate::testing::BYTE_STEP)
            .all(|&x| x == 7));
        // SAFETY: the block's new bytes are its own.
        unsafe { pa.add(kib(100) - 1).write(1) };
        // More than the neighbour holds, and not at the top: refused, unchanged.
        assert_eq!(bf.resize(a, kib(129), true), None);
        assert_eq!(bf.stats(), after);
        // The top block grows by committing more, with an eighth more room (the
        // room a free top).
        let grown = bf.resize(c, kib(1024), true).unwrap();
        assert_eq!(grown.block_size, kib(1024));
        let top = bf.stats();
        assert!(top.usage.reserved_bytes >= after.usage.reserved_bytes + kib(960 + 128));
        assert_eq!(
            top.usage.allocated_bytes,
            after.usage.allocated_bytes + kib(960)
        );
        // SAFETY: the last byte of a live block of 1 MiB.
        unsafe { pc.add(kib(1024) - 1).write(1) };
        bf.check_invariants();
        // Shrinking: down to half of its size a block stays, its tail freed (and
        // merged with the free top); below, it is refused (a smaller block serves).
        let before = bf.stats();
        assert_eq!(bf.resize(c, kib(600), true).unwrap().block_size, kib(600));
        let after = bf.stats();
        assert_eq!(
            after.usage.allocated_bytes + kib(424),
            before.usage.allocated_bytes
        );
        assert_eq!(after.free_blocks, before.free_blocks);
        assert_eq!(after.free_bytes, before.free_bytes + kib(424));
        assert_eq!(bf.resize(c, kib(299), true), None);
        bf.check_invariants();
        for p in [a, c] {
            bf.release(p, true).unwrap();
        }
        bf.trim();
        assert_eq!(bf.stats().usage.reserved_bytes, 0);
        assert_eq!(space.committed(), 0);
        bf.check_invariants();
    }

    /// A tier (`max_split_size` 4 MiB, over the contract-checking address space)
    /// holding a raw block of `first` bytes, then a free block of `freed` bytes
    /// whose pages three release passes released, then a live block: the first
    /// block's address and the last block.
    fn released_after(first: usize, freed: usize) -> (BestFit, usize, NonNull<u8>) {
        let bf = BestFit::builder()
            .upstream(Arc::new(crate::testing::CheckedSpace::default()))
            .reservation_size(16 << 20)
            .max_split_size(Some(4 << 20))
            .build()
            .unwrap();
        let a = bf.allocate(first, 64).unwrap().as_ptr().addr();
        let b = bf.allocate(freed, 64).unwrap();
        let c = bf.allocate(64 << 10, 64).unwrap();
        bf.deallocate(b).unwrap();
        for _ in 0..3 {
            bf.release_idle(3);
        }
        let u = bf.stats().usage;
        assert_eq!(u.resident_bytes + freed, u.reserved_bytes);
        (bf, a, c)
    }

    #[test]
    fn growth_in_place_counts_released_pages_again_and_respects_max_split_size() {
        let (bf, a, c) = released_after(64 << 10, 128 << 10);
        bf.resize(a, 160 << 10, true).unwrap();
        let v = bf.stats().usage;
        assert_eq!(
            v.resident_bytes + (32 << 10),
            v.reserved_bytes,
            "96 KiB in use again"
        );
        bf.release(a, true).unwrap();
        bf.deallocate(c).unwrap();
        // A free neighbour of `max_split_size` or more is never split.
        let a = bf.allocate(64 << 10, 64).unwrap().as_ptr().addr();
        let big = bf.allocate(4 << 20, 64).unwrap();
        let _fence = bf.allocate(64 << 10, 64).unwrap();
        bf.deallocate(big).unwrap();
        let before = bf.stats();
        assert_eq!(bf.resize(a, 128 << 10, true), None);
        assert_eq!(bf.stats(), before);
        bf.check_invariants();
    }

    #[test]
    fn a_block_that_does_not_split_grows_over_released_pages_and_counts_them() {
        // A block of `max_split_size` or more takes its whole free neighbour: every
        // released page of it counts as resident again, not only those up to the
        // size asked.
        let (bf, a, _fence) = released_after(4 << 20, 64 << 10);
        let grown = bf.resize(a, (4 << 20) + 4096, true).unwrap();
        assert_eq!(
            grown.block_size,
            (4 << 20) + (64 << 10),
            "the whole neighbour"
        );
        let u = bf.stats().usage;
        assert_eq!(u.resident_bytes, u.reserved_bytes);
        // Shrunk below `max_split_size`, it still does not split: it stays whole.
        let shrunk = bf.resize(a, 3 << 20, true).unwrap();
        assert_eq!(shrunk.block_size, (4 << 20) + (64 << 10));
        bf.check_invariants();
    }

    #[test]
    fn growth_in_place_that_cannot_be_changes_nothing() {
        let space = Arc::new(crate::testing::CheckedSpace::default());
        // One reservation of 2 MiB (the least).
        let bf = BestFit::builder()
            .upstream(space)
            .reservation_size(2 << 20)
            .build()
            .unwrap();
        let a = bf
            .allocate((2 << 20) - (64 << 10), 64)
            .unwrap()
            .as_ptr()
            .addr();
        let before = bf.stats();
        assert_eq!(
            bf.resize(a, (2 << 20) + 4096, true),
            None,
            "the reservation is full"
        );
        assert_eq!(bf.stats(), before);
        // A typed block is not resized as a raw one (and the other way round).
        let layout = Layout::from_size_align(32 << 10, 64).unwrap();
        let typed = Allocator::allocate(&bf, layout).unwrap().cast::<u8>();
        let before = bf.stats();
        assert_eq!(bf.resize(typed.as_ptr().addr(), 40 << 10, true), None);
        assert_eq!(bf.resize(a, 1 << 20, false), None);
        assert_eq!(bf.stats(), before);
        // As typed, it grows into the free top; its holder then frees it with the
        // new layout.
        let grown = bf.resize(typed.as_ptr().addr(), 40 << 10, false).unwrap();
        assert_eq!(grown.block_size, 40 << 10);
        let layout = Layout::from_size_align(40 << 10, 64).unwrap();
        // SAFETY: allocated above, resized to `layout`.
        unsafe { Allocator::deallocate(&bf, typed, layout) };
        bf.release(a, true).unwrap();
        bf.check_invariants();
    }

    #[test]
    fn bad_settings_and_requests() {
        assert!(matches!(
            heap().granularity(48).build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            heap().granularity(32).build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            heap().segment_size(0).build(),
            Err(Error::InvalidConfig(_))
        ));
        let bf = heap().build().unwrap();
        assert_eq!(bf.allocate(0, 64), Err(Error::ZeroSize));
        assert!(matches!(
            bf.allocate(64, 8192),
            Err(Error::AlignmentTooLarge { .. })
        ));
        assert!(matches!(
            bf.allocate(usize::MAX, 64),
            Err(Error::SizeTooLarge { .. })
        ));
    }

    /// A reference best fit: a list of segments, each a list of blocks, searched
    /// linearly. It predicts the exact address of every allocation, with separate
    /// segments or with expandable ones.
    mod model {
        use super::*;
        use crate::testing::{check, fill, ops_len, proptest_config, CheckedSpace, LiveSet};
        use proptest::prelude::*;

        #[derive(Debug, Clone, Copy)]
        struct MBlock {
            off: usize,
            size: usize,
            live: bool,
        }

        #[derive(Debug)]
        struct MSegment {
            base: usize,
            len: usize,
            committed: usize,
            blocks: Vec<MBlock>,
        }

        /// `expand`: the commit granularity and reservation size of expandable
        /// segments, or `None` for separate ones.
        #[derive(Debug, Default)]
        struct Model {
            segments: Vec<MSegment>,
            expand: Option<(usize, usize)>,
            growing: Option<usize>,
        }

        const GRAN: usize = 512;
        const SEGMENT: usize = 2 << 20;

        fn needed(size: usize, align: usize) -> usize {
            round_up(size, GRAN) + align.saturating_sub(GRAN)
        }

        impl Model {
            /// The predicted block, or `None` when the tier must grow.
            fn fit(&self, size: usize, align: usize) -> Option<(usize, usize)> {
                let needed = needed(size, align);
                let mut best: Option<(usize, usize, usize, usize)> = None;
                for (s, seg) in self.segments.iter().enumerate() {
                    for (b, blk) in seg.blocks.iter().enumerate() {
                        let key = (blk.size, seg.base + blk.off);
                        if !blk.live && blk.size >= needed && best.is_none_or(|x| (x.0, x.1) > key)
                        {
                            best = Some((key.0, key.1, s, b));
                        }
                    }
                }
                best.map(|(_, _, s, b)| (s, b))
            }

            /// Grows; `fresh` is where the allocator put the block, which is the
            /// start of a new segment or reservation when one is made.
            fn grow(&mut self, fresh: usize, size: usize, align: usize) -> (usize, usize) {
                let needed = needed(size, align);
                let Some((granule, reservation)) = self.expand else {
                    let len = round_up(needed, HUGE_PAGE_SIZE).max(SEGMENT);
                    let blocks = vec![MBlock {
                        off: 0,
                        size: len,
                        live: false,
                    }];
                    self.segments.push(MSegment {
                        base: fresh,
                        len,
                        committed: len,
                        blocks,
                    });
                    return (self.segments.len() - 1, 0);
                };
                let growth = |seg: &MSegment| {
                    let tail = seg.blocks.last().filter(|b| !b.live).map_or(0, |b| b.size);
                    round_up(needed - tail, granule)
                };
                let s = match self
                    .growing
                    .map(|base| self.segments.iter().position(|g| g.base == base).unwrap())
                {
                    Some(s)
                        if self.segments[s].committed + growth(&self.segments[s])
                            <= self.segments[s].len =>
                    {
                        s
                    }
                    _ => {
                        let len = reservation.max(round_up(needed, HUGE_PAGE_SIZE));
                        self.segments.push(MSegment {
                            base: fresh,
                            len,
                            committed: 0,
                            blocks: Vec::new(),
                        });
                        self.growing = Some(fresh);
                        self.segments.len() - 1
                    }
                };
                let seg = &mut self.segments[s];
                let delta = growth(seg);
                match seg.blocks.last_mut() {
                    Some(last) if !last.live => last.size += delta,
                    _ => seg.blocks.push(MBlock {
                        off: seg.committed,
                        size: delta,
                        live: false,
                    }),
                }
                seg.committed += delta;
                (s, seg.blocks.len() - 1)
            }

            fn carve(&mut self, (s, b): (usize, usize), size: usize, align: usize) -> usize {
                let rounded = round_up(size, GRAN);
                let seg = &mut self.segments[s];
                let (base, blocks) = (seg.base, &mut seg.blocks);
                let mut b = b;
                let blk = blocks[b];
                let head = round_up(base + blk.off, align) - (base + blk.off);
                if head > 0 {
                    blocks[b].size = head;
                    blocks.insert(
                        b + 1,
                        MBlock {
                            off: blk.off + head,
                            size: blk.size - head,
                            live: false,
                        },
                    );
                    b += 1;
                }
                let blk = blocks[b];
                if blk.size - rounded >= GRAN {
                    blocks[b].size = rounded;
                    blocks.insert(
                        b + 1,
                        MBlock {
                            off: blk.off + rounded,
                            size: blk.size - rounded,
                            live: false,
                        },
                    );
                }
                blocks[b].live = true;
                base + blocks[b].off
            }

            fn free(&mut self, addr: usize) {
                for seg in &mut self.segments {
                    let blocks = &mut seg.blocks;
                    if let Some(b) = blocks
                        .iter()
                        .position(|x| seg.base + x.off == addr && x.live)
                    {
                        blocks[b].live = false;
                        if b + 1 < blocks.len() && !blocks[b + 1].live {
                            blocks[b].size += blocks.remove(b + 1).size;
                        }
                        if b > 0 && !blocks[b - 1].live {
                            let merged = blocks.remove(b).size;
                            blocks[b - 1].size += merged;
                        }
                        return;
                    }
                }
                panic!("the model has no live block at {addr:#x}");
            }

            fn trim(&mut self) {
                let Some((granule, _)) = self.expand else {
                    self.segments
                        .retain(|seg| seg.blocks.iter().any(|b| b.live));
                    return;
                };
                for seg in &mut self.segments {
                    if let Some(&last) = seg.blocks.last().filter(|b| !b.live) {
                        let keep = round_up(last.off, granule);
                        if keep < seg.committed {
                            if keep == last.off {
                                seg.blocks.pop();
                            } else {
                                seg.blocks.last_mut().unwrap().size = keep - last.off;
                            }
                            seg.committed = keep;
                        }
                    }
                }
                let growing = &mut self.growing;
                self.segments.retain(|seg| {
                    if seg.committed == 0 && *growing == Some(seg.base) {
                        *growing = None;
                    }
                    seg.committed > 0
                });
            }

            fn free_blocks(&self) -> impl Iterator<Item = usize> + '_ {
                self.segments
                    .iter()
                    .flat_map(|seg| seg.blocks.iter().filter(|b| !b.live).map(|b| b.size))
            }

            fn allocated(&self) -> usize {
                self.segments
                    .iter()
                    .flat_map(|seg| seg.blocks.iter().filter(|b| b.live).map(|b| b.size))
                    .sum()
            }

            fn reserved(&self) -> usize {
                self.segments.iter().map(|seg| seg.committed).sum()
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            Alloc(usize, usize),
            Free(usize),
            BadFree(usize, usize),
            Trim,
        }

        fn op() -> impl Strategy<Value = Op> {
            let size = prop_oneof![
                1usize..20_000,
                20_000usize..600_000,
                600_000usize..3_000_000
            ];
            let align = prop_oneof![Just(1usize), Just(64), Just(512), Just(1024), Just(4096)];
            prop_oneof![
                5 => (size, align).prop_map(|(s, a)| Op::Alloc(s, a)),
                4 => any::<usize>().prop_map(Op::Free),
                1 => (any::<usize>(), 1usize..4096).prop_map(|(i, o)| Op::BadFree(i, o)),
                1 => Just(Op::Trim),
            ]
        }

        proptest! {
            #![proptest_config(proptest_config(96))]

            /// BestFit against the reference: the same addresses, the same free blocks,
            /// the same stats, after every step; and nothing reserved at the end.
            #[test]
            fn best_fit_matches_reference(ops in proptest::collection::vec(op(), ops_len(80))) {
                run(heap().build().unwrap(), Model::default(), ops, None)?;
            }

            /// The same with expandable segments over an address space that checks
            /// every commit and decommit (small reservations, so that new ones are
            /// taken too).
            #[test]
            fn expandable_best_fit_matches_reference(ops in proptest::collection::vec(op(), ops_len(80))) {
                let space = Arc::new(CheckedSpace::default());
                let bf = BestFit::builder()
                    .upstream(space.clone())
                    .reservation_size(8 << 20)
                    .build()
                    .unwrap();
                let model = Model { expand: Some((DEFAULT_COMMIT_GRANULARITY, 8 << 20)), ..Model::default() };
                run(bf, model, ops, Some(space))?;
            }
        }

        fn run(
            bf: BestFit,
            mut model: Model,
            ops: Vec<Op>,
            space: Option<Arc<CheckedSpace>>,
        ) -> Result<(), TestCaseError> {
            let mut live: Vec<(NonNull<u8>, usize, u64)> = Vec::new();
            let mut set = LiveSet::default();
            let mut seed = 0;
            for op in ops {
                match op {
                    Op::Alloc(size, align) => {
                        let predicted = model.fit(size, align);
                        let p = bf.allocate(size, align).unwrap();
                        let addr = p.as_ptr() as usize;
                        let at = predicted.unwrap_or_else(|| model.grow(addr, size, align));
                        prop_assert_eq!(
                            model.carve(at, size, align),
                            addr,
                            "size {} align {}",
                            size,
                            align
                        );
                        prop_assert_eq!(addr % align, 0);
                        set.insert(addr, size);
                        seed += 1;
                        // SAFETY: a live block of `size` bytes.
                        unsafe { fill(p.as_ptr(), size, seed) };
                        live.push((p, size, seed));
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (p, size, seed) = live.swap_remove(i % live.len());
                        // SAFETY: live and filled with `seed`.
                        unsafe { check(p.as_ptr(), size, seed) };
                        set.remove(p.as_ptr() as usize);
                        bf.deallocate(p).unwrap();
                        model.free(p.as_ptr() as usize);
                    }
                    Op::BadFree(i, off) if !live.is_empty() => {
                        let before = bf.stats();
                        let p = live[i % live.len()].0;
                        let bad = NonNull::new(p.as_ptr().wrapping_add(off)).unwrap();
                        // An offset past a small block may land on the start of another
                        // live block: that free is a good one.
                        if !live.iter().any(|l| l.0 == bad) {
                            prop_assert!(bf.deallocate(bad).is_err());
                            prop_assert_eq!(bf.stats(), before);
                        }
                    }
                    Op::Trim => {
                        bf.trim();
                        model.trim();
                        for &(p, size, seed) in &live {
                            // SAFETY: live and filled with `seed`: a trim must not touch it.
                            unsafe { check(p.as_ptr(), size, seed) };
                        }
                    }
                    _ => {}
                }
                bf.check_invariants();
                let s = bf.stats();
                prop_assert_eq!(s.usage.allocated_bytes, model.allocated());
                prop_assert_eq!(
                    s.usage.requested_bytes,
                    live.iter().map(|l| l.1).sum::<usize>()
                );
                prop_assert_eq!(s.usage.allocated_blocks, live.len());
                prop_assert_eq!(s.free_blocks, model.free_blocks().count());
                prop_assert_eq!(s.largest_free_block, model.free_blocks().max().unwrap_or(0));
                prop_assert_eq!(s.usage.reserved_bytes, model.reserved());
                if let Some(space) = &space {
                    prop_assert_eq!(space.committed(), model.reserved());
                }
            }
            for (p, size, seed) in live {
                // SAFETY: live and filled with `seed`.
                unsafe { check(p.as_ptr(), size, seed) };
                bf.deallocate(p).unwrap();
            }
            bf.trim();
            let s = bf.stats();
            prop_assert_eq!(
                (s.usage.reserved_bytes, s.segments, s.usage.allocated_bytes),
                (0, 0, 0)
            );
            Ok(())
        }
    }
}
