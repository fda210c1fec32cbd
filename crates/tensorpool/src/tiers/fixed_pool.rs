//! `FixedSizePool`: blocks of one size, O(1) allocate and free.
//!
//! Slots of one size are carved from chunks taken from upstream. Which slots are free
//! is kept beside the memory, never in it: each chunk has a stack of free slot
//! indices, a bump index for slots never used, and bitmaps of live and raw slots. A
//! chunk is found from an address through a hash map keyed by the address's
//! *granule* (chunks are aligned to it), so both allocate and free are O(1), and a
//! free of an address that is not a live block is detected and refused without
//! touching the memory.
//!
//! The pool grows by chunks whose size doubles with the pool, up to a maximum, or is
//! bounded by a fixed capacity, after which allocation reports the pool full.
//! [`trim`](FixedSizePool::trim) returns chunks with no live slot to upstream.
//!
//! ```
//! use tensorpool::{Error, FixedSizePool};
//!
//! let pool = FixedSizePool::with_capacity(256, 2)?; // two blocks of 256 bytes
//! let a = pool.allocate()?;
//! let b = pool.allocate()?;
//! assert_eq!(a.as_ptr() as usize % 64, 0); // 64-byte aligned by default
//! assert!(matches!(pool.allocate(), Err(Error::OutOfMemory(_)))); // full, no panic
//! pool.deallocate(a)?;
//! assert!(pool.deallocate(a).is_err()); // a double free is refused
//! pool.deallocate(b)?;
//! assert_eq!(pool.stats().usage.allocated_blocks, 0);
//!
//! // Through allocator-api2, a pool backs collections whose elements fit a block:
//! let pool = FixedSizePool::new(64)?;
//! let mut v = allocator_api2::vec::Vec::with_capacity_in(16, &pool); // 16 f32 = 64 B
//! v.extend_from_slice(&[1.0f32; 16]);
//! assert_eq!(v.iter().sum::<f32>(), 16.0);
//! # Ok::<(), Error>(())
//! ```

use crate::error::{Error, OomCause, OutOfMemory, PointerError, Result};
use crate::limits::{round_up, validate};
use crate::observe::snapshot::{BlockSnapshot, BlockState, SegmentSnapshot, Snapshot};
use crate::observe::stats::{Tier, Usage};
use crate::tiers::contract::{self, BlockSizes, BlockTier, Grant};
use crate::upstream::{default_upstream, page_size, Region, Upstream};
use crate::util::id_table::IdTable;
use crate::util::sync::Mutex;
use allocator_api2::alloc::{AllocError, Allocator};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

/// Default alignment of standalone pools: a cache line, and a full AVX-512 vector.
pub const DEFAULT_ALIGN: usize = 64;

/// Default largest chunk a pool takes from upstream at once: also the manager's
/// largest slab ([`Config::pool_chunk_size`](crate::Config::pool_chunk_size)), which
/// is a chunk of the same kind. Chunks double from a page up to it, so a pool that
/// is used little holds little, and one that is used much takes a chunk in few calls.
pub const DEFAULT_MAX_CHUNK: usize = 256 << 10;

/// Largest granule: chunks of classes above it are still found in O(1), through one
/// hash entry per granule they span.
const MAX_GRANULE: usize = 2 << 20;

/// A pool of equal-sized blocks.
#[derive(Debug)]
pub struct FixedSizePool {
    block_size: usize,
    stride: usize,
    align: usize,
    granule_shift: u32,
    max_chunk: usize,
    capacity: Option<usize>,
    tier: Tier,
    upstream: Arc<dyn Upstream>,
    state: Mutex<PoolState>,
}

/// Builder for a [`FixedSizePool`] with non-default settings.
#[derive(Debug, Clone)]
pub struct FixedSizePoolBuilder {
    block_size: usize,
    align: usize,
    capacity: Option<usize>,
    max_chunk: usize,
    tier: Tier,
    upstream: Option<Arc<dyn Upstream>>,
}

/// Statistics of one pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStats {
    /// Bytes per block.
    pub block_size: usize,
    /// Alignment of every block.
    pub alignment: usize,
    /// Fixed capacity in blocks, if any.
    pub capacity: Option<usize>,
    /// Chunks taken from upstream.
    pub chunks: usize,
    /// Free slots in those chunks.
    pub free_blocks: usize,
    /// The pool's counters.
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Default)]
struct PoolState {
    chunks: IdTable<Option<Chunk>>,
    /// Granule number (address >> granule_shift) -> chunk id.
    granules: FxHashMap<usize, u32>,
    /// Chunks with at least one free slot; allocation takes from the last.
    available: Vec<u32>,
    total_slots: usize,
    usage: Usage,
}

#[derive(Debug)]
struct Chunk {
    region: Region,
    slots: u32,
    /// Slots at or after this index were never handed out.
    fresh: u32,
    /// Freed slot indices, reused last-in first-out (the warmest first).
    free: Vec<u32>,
    live: Vec<u64>,
    raw: Vec<u64>,
    requested: Vec<u32>,
    live_count: u32,
    in_available: bool,
    /// While no slot is live: the release passes that saw it so.
    idle: u8,
}

#[inline]
fn bit(bits: &[u64], i: u32) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

#[inline]
fn set_bit(bits: &mut [u64], i: u32, value: bool) {
    let word = &mut bits[(i / 64) as usize];
    if value {
        *word |= 1 << (i % 64);
    } else {
        *word &= !(1 << (i % 64));
    }
}

impl Chunk {
    fn free_slots(&self) -> usize {
        (self.slots - self.live_count) as usize
    }
}

impl FixedSizePoolBuilder {
    /// Alignment of every block: a power of two up to a page (default 64).
    pub fn alignment(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// A fixed capacity in blocks: the pool never holds more and reports itself full.
    pub fn capacity(mut self, blocks: usize) -> Self {
        self.capacity = Some(blocks);
        self
    }

    /// The largest chunk taken from upstream at once (default [`DEFAULT_MAX_CHUNK`], 256 KiB). Chunks start at
    /// a page and double with the pool up to this size.
    pub fn max_chunk_size(mut self, bytes: usize) -> Self {
        self.max_chunk = bytes;
        self
    }

    /// Where chunks come from (default: [`default_upstream`]).
    pub fn upstream(mut self, upstream: Arc<dyn Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// The pool, or an error naming the setting that cannot apply.
    pub fn build(self) -> Result<FixedSizePool> {
        validate(self.block_size, self.align)?;
        if self.block_size > u32::MAX as usize {
            return Err(Error::InvalidConfig(format!(
                "a pool's block size must be below 4 GiB, got {}",
                self.block_size
            )));
        }
        if self.capacity == Some(0) {
            return Err(Error::InvalidConfig(
                "a pool's capacity must be at least one block".into(),
            ));
        }
        let stride = round_up(self.block_size, self.align);
        let granule = stride
            .next_power_of_two()
            .clamp(page_size(), MAX_GRANULE.max(page_size()));
        Ok(FixedSizePool {
            block_size: self.block_size,
            stride,
            align: self.align,
            granule_shift: granule.trailing_zeros(),
            max_chunk: self.max_chunk.max(stride),
            capacity: self.capacity,
            tier: self.tier,
            upstream: self.upstream.unwrap_or_else(default_upstream),
            state: Mutex::new(PoolState::default()),
        })
    }
}

impl FixedSizePool {
    /// A growable pool of `block_size`-byte blocks, 64-byte aligned.
    pub fn new(block_size: usize) -> Result<Self> {
        Self::builder(block_size).build()
    }

    /// A pool that holds at most `blocks` blocks of `block_size` bytes.
    pub fn with_capacity(block_size: usize, blocks: usize) -> Result<Self> {
        Self::builder(block_size).capacity(blocks).build()
    }

    /// A builder for other settings.
    pub fn builder(block_size: usize) -> FixedSizePoolBuilder {
        FixedSizePoolBuilder {
            block_size,
            align: DEFAULT_ALIGN,
            capacity: None,
            max_chunk: DEFAULT_MAX_CHUNK,
            tier: Tier::Pool,
            upstream: None,
        }
    }

    /// Bytes per block, as asked.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Distance between blocks: the block size rounded to the alignment.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Alignment of every block.
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// Fixed capacity in blocks, if any.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// Live blocks.
    pub fn len(&self) -> usize {
        self.state.lock().usage.allocated_blocks
    }

    /// True when no block is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when a fixed-capacity pool has every block live.
    pub fn is_full(&self) -> bool {
        let st = self.state.lock();
        self.capacity
            .is_some_and(|cap| st.usage.allocated_blocks >= cap)
    }

    /// A block, or an out-of-memory error when the pool is full or upstream refuses.
    ///
    /// The block belongs to the caller until passed to [`deallocate`](Self::deallocate).
    pub fn allocate(&self) -> Result<NonNull<u8>> {
        self.grant(self.block_size, self.align, true).map(|g| g.ptr)
    }

    /// Returns a block from [`allocate`](Self::allocate).
    ///
    /// Safe whatever the pointer: an address that is not a live block of this pool
    /// (never allocated, already freed, inside a block, or owned through the
    /// `Allocator` trait) is refused with [`Error::InvalidPointer`] and nothing
    /// changes. The pool never reads or writes the block's memory.
    pub fn deallocate(&self, ptr: NonNull<u8>) -> Result<()> {
        self.release(ptr.as_ptr().addr(), true).map(|_| ())
    }

    /// True if `addr` lies in one of this pool's chunks.
    pub fn owns(&self, addr: usize) -> bool {
        let st = self.state.lock();
        self.find_chunk(&st, addr).is_some()
    }

    /// Marks a free slot live and returns it, growing the pool if none is free.
    fn take_slot(
        &self,
        st: &mut PoolState,
        requested: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        let (id, hit) = match st.available.last() {
            Some(&id) => (id, true),
            None => (self.grow(st, requested)?, false),
        };
        let chunk = st.chunks[id as usize]
            .as_mut()
            .expect("available chunks exist");
        let slot = match chunk.free.pop() {
            Some(slot) => slot,
            None => {
                chunk.fresh += 1;
                chunk.fresh - 1
            }
        };
        debug_assert!(slot < chunk.slots && !bit(&chunk.live, slot));
        set_bit(&mut chunk.live, slot, true);
        set_bit(&mut chunk.raw, slot, raw);
        chunk.requested[slot as usize] = requested as u32;
        chunk.live_count += 1;
        chunk.idle = 0;
        if chunk.live_count == chunk.slots {
            chunk.in_available = false;
            st.available.pop();
        }
        Ok((chunk.region.at(slot as usize * self.stride), hit))
    }

    /// The chunk and slot of the live block at `addr`, whose raw flag must be `raw`,
    /// or why `addr` is not one.
    fn live_slot(&self, st: &PoolState, addr: usize, raw: bool) -> Result<(u32, u32)> {
        let invalid = |reason| Error::InvalidPointer { addr, reason };
        let id = self
            .find_chunk(st, addr)
            .ok_or(invalid(PointerError::Foreign))?;
        let chunk = st.chunks[id as usize]
            .as_ref()
            .expect("mapped chunk exists");
        let offset = addr - chunk.region.start();
        let slot = offset / self.stride;
        if slot >= chunk.slots as usize || !bit(&chunk.live, slot as u32) {
            return Err(invalid(PointerError::NotLive));
        }
        if offset % self.stride != 0 {
            return Err(invalid(PointerError::Interior {
                block: chunk.region.start() + slot * self.stride,
                offset: offset % self.stride,
            }));
        }
        if bit(&chunk.raw, slot as u32) != raw {
            return Err(invalid(PointerError::NotRaw));
        }
        Ok((id, slot as u32))
    }

    /// Marks the live slot at `addr` free after checking it; returns its requested size.
    fn release_slot(&self, st: &mut PoolState, addr: usize, raw: bool) -> Result<usize> {
        let (id, slot) = self.live_slot(st, addr, raw)?;
        let chunk = st.chunks[id as usize].as_mut().expect("checked");
        set_bit(&mut chunk.live, slot, false);
        chunk.free.push(slot);
        chunk.live_count -= 1;
        if !chunk.in_available {
            chunk.in_available = true;
            st.available.push(id);
        }
        Ok(chunk.requested[slot as usize] as usize)
    }

    #[inline]
    fn find_chunk(&self, st: &PoolState, addr: usize) -> Option<u32> {
        let id = *st.granules.get(&(addr >> self.granule_shift))?;
        let chunk = st.chunks[id as usize].as_ref()?;
        (addr.wrapping_sub(chunk.region.start()) < chunk.region.len()).then_some(id)
    }

    /// Takes a new chunk from upstream and makes it available.
    fn grow(&self, st: &mut PoolState, requested: usize) -> Result<u32> {
        let page = page_size();
        // Chunks double with the pool, from a page up to the largest chunk size.
        let target = st
            .usage
            .reserved_bytes
            .max(page)
            .min(self.max_chunk.max(page));
        let mut slots = (target / self.stride).max(1);
        if let Some(cap) = self.capacity {
            slots = slots.min(cap - st.total_slots.min(cap));
            if slots == 0 {
                st.usage.num_ooms += 1;
                let report = OutOfMemory::new(
                    requested,
                    self.align,
                    self.tier,
                    OomCause::CapacityReached { capacity: cap },
                    &st.usage,
                    0,
                );
                return Err(report.into_error());
            }
        }
        let bytes = round_up(slots * self.stride, page);
        if self.capacity.is_none() {
            slots = bytes / self.stride;
        }
        let granule = 1usize << self.granule_shift;
        let ptr = match self.upstream.allocate(bytes, granule) {
            Ok(ptr) => ptr,
            Err(refusal) => {
                st.usage.num_ooms += 1;
                let report = OutOfMemory::from_upstream(
                    requested, self.align, self.tier, refusal, &st.usage, 0,
                );
                return Err(report.into_error());
            }
        };
        let region = Region::new(ptr, bytes);
        let words = slots.div_ceil(64);
        let chunk = Chunk {
            region,
            slots: slots as u32,
            fresh: 0,
            free: Vec::new(),
            live: vec![0; words],
            raw: vec![0; words],
            requested: vec![0; slots],
            live_count: 0,
            idle: 0,
            in_available: true,
        };
        let id = st.chunks.insert(Some(chunk));
        let first = region.start() >> self.granule_shift;
        let last = (region.start() + bytes - 1) >> self.granule_shift;
        for g in first..=last {
            st.granules.insert(g, id);
        }
        st.available.push(id);
        st.total_slots += slots;
        st.usage.on_reserve(bytes);
        Ok(id)
    }

    /// Returns every chunk without a live block to upstream; returns the bytes freed.
    pub fn trim(&self) -> usize {
        self.give_back(0)
    }

    /// A pass of a release policy (see [`BestFit::release_idle`](crate::BestFit::release_idle)): returns the
    /// chunks that `min_age` passes (at least 1), this one included, saw without a
    /// live block. Returns the bytes freed.
    pub fn release_idle(&self, min_age: u8) -> usize {
        self.give_back(min_age.max(1))
    }

    /// Returns the chunks without a live block that `min_age` passes saw so (this
    /// call being one), or with 0, all of them.
    fn give_back(&self, min_age: u8) -> usize {
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut released = 0;
        let mut keep = Vec::with_capacity(st.available.len());
        for &id in &st.available {
            let chunk = st.chunks[id as usize]
                .as_mut()
                .expect("available chunk exists");
            if chunk.live_count > 0 {
                keep.push(id);
                continue;
            }
            chunk.idle = chunk.idle.saturating_add(1);
            if min_age > 0 && chunk.idle < min_age {
                keep.push(id);
                continue;
            }
            let chunk = st.chunks[id as usize].take().expect("checked above");
            let region = chunk.region;
            let first = region.start() >> self.granule_shift;
            let last = (region.start() + region.len() - 1) >> self.granule_shift;
            for g in first..=last {
                st.granules.remove(&g);
            }
            st.chunks.release(id);
            st.total_slots -= chunk.slots as usize;
            st.usage.on_release(region.len());
            released += region.len();
            // SAFETY: the region came from this upstream with this size and the
            // granule alignment, and no slot in it is live.
            unsafe {
                self.upstream
                    .deallocate(region.ptr(), region.len(), 1 << self.granule_shift)
            };
        }
        st.available = keep;
        released
    }

    /// The pool's statistics.
    pub fn stats(&self) -> PoolStats {
        let st = self.state.lock();
        let chunks = st.chunks.iter().flatten();
        PoolStats {
            block_size: self.block_size,
            alignment: self.align,
            capacity: self.capacity,
            chunks: chunks.clone().count(),
            free_blocks: chunks.map(Chunk::free_slots).sum(),
            usage: st.usage,
        }
    }

    /// Every chunk with its live blocks.
    pub fn snapshot(&self) -> Snapshot {
        contract::snapshot_of(self)
    }
}

impl Drop for FixedSizePool {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        for chunk in st.chunks.take_all().into_iter().flatten() {
            // SAFETY: each chunk's region came from this upstream with its size and
            // the granule alignment; the pool is going away, so nothing allocates
            // from it again. Borrowers through `Allocator` hold `&self`, so none is
            // left; raw pointers still held become dangling, as after `free`.
            unsafe {
                self.upstream.deallocate(
                    chunk.region.ptr(),
                    chunk.region.len(),
                    1 << self.granule_shift,
                )
            };
        }
    }
}

impl BlockTier for FixedSizePool {
    fn tier(&self) -> Tier {
        self.tier
    }

    fn grant(&self, size: usize, align: usize, raw: bool) -> Result<Grant> {
        validate(size, align)?;
        if size > self.block_size {
            return Err(Error::SizeTooLarge {
                size,
                max: self.block_size,
            });
        }
        if align > self.align {
            return Err(Error::AlignmentTooLarge {
                align,
                max: self.align,
            });
        }
        let mut st = self.state.lock();
        let (ptr, hit) = self.take_slot(&mut st, size, raw)?;
        st.usage.on_alloc(self.stride, size, hit);
        Ok(Grant {
            ptr,
            block_size: self.stride,
            // Slots are reused without clearing; fresh chunks are not tracked.
            zeroed: false,
            hit,
        })
    }

    fn sizes(&self, addr: usize, raw: bool) -> Result<BlockSizes> {
        let st = self.state.lock();
        let (id, slot) = self.live_slot(&st, addr, raw)?;
        let chunk = st.chunks[id as usize].as_ref().expect("checked");
        Ok(BlockSizes {
            block_size: self.stride,
            requested: chunk.requested[slot as usize] as usize,
        })
    }

    fn resize(&self, _addr: usize, _size: usize, _raw: bool) -> Option<contract::Resized> {
        // A pool's blocks have one size: what the pool takes is what it holds.
        None
    }

    fn release(&self, addr: usize, raw: bool) -> Result<BlockSizes> {
        let mut st = self.state.lock();
        let requested = self.release_slot(&mut st, addr, raw)?;
        st.usage.on_free(self.stride, requested);
        Ok(BlockSizes {
            block_size: self.stride,
            requested,
        })
    }

    fn trim(&self) -> usize {
        FixedSizePool::trim(self)
    }

    fn release_idle(&self, min_age: u8) -> usize {
        FixedSizePool::release_idle(self, min_age)
    }

    fn largest_free_block(&self) -> usize {
        let st = self.state.lock();
        let free = st.chunks.iter().flatten().any(|c| c.free_slots() > 0);
        if free {
            self.block_size
        } else {
            0
        }
    }

    /// Appends a snapshot of every chunk.
    fn snapshot_into(&self, out: &mut Vec<SegmentSnapshot>) {
        let st = self.state.lock();
        let mut chunks: Vec<&Chunk> = st.chunks.iter().flatten().collect();
        chunks.sort_by_key(|c| c.region.start());
        for chunk in chunks {
            let blocks: Vec<BlockSnapshot> = (0..chunk.slots)
                .filter(|&i| bit(&chunk.live, i))
                .map(|i| BlockSnapshot {
                    address: chunk.region.start() + i as usize * self.stride,
                    size: self.stride,
                    requested: chunk.requested[i as usize] as usize,
                    state: BlockState::live(bit(&chunk.raw, i)),
                })
                .collect();
            let allocated = blocks.len();
            out.push(SegmentSnapshot {
                tier: self.tier,
                address: chunk.region.start(),
                size: chunk.region.len(),
                block_size: Some(self.stride),
                allocated_bytes: allocated * self.stride,
                free_blocks: chunk.free_slots(),
                blocks,
            });
        }
    }
}

// SAFETY: blocks are distinct slots of chunks owned by the pool, `stride >= size`
// bytes long and aligned to `align >= layout.align()` (larger layouts are refused);
// a block stays valid until it is deallocated or the pool is dropped, which needs the
// borrow of `&self` to end.
unsafe impl Allocator for FixedSizePool {
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
    use crate::upstream::HeapUpstream;

    fn heap_pool(block: usize) -> FixedSizePoolBuilder {
        FixedSizePool::builder(block).upstream(Arc::new(HeapUpstream))
    }

    #[test]
    fn the_tier_contract_grants_sizes_and_releases() {
        let pool = heap_pool(100).alignment(64).capacity(2).build().unwrap();
        assert_eq!(pool.largest_free_block(), 0, "nothing held yet");
        assert!(matches!(
            pool.grant(101, 8, false),
            Err(Error::SizeTooLarge {
                size: 101,
                max: 100
            })
        ));
        assert!(matches!(
            pool.grant(10, 128, false),
            Err(Error::AlignmentTooLarge {
                align: 128,
                max: 64
            })
        ));
        let g = pool.grant(40, 64, false).unwrap();
        assert_eq!((g.block_size, g.hit), (pool.stride(), false));
        assert_eq!(g.ptr.as_ptr().addr() % 64, 0);
        let addr = g.ptr.as_ptr().addr();
        let held = BlockSizes {
            block_size: pool.stride(),
            requested: 40,
        };
        assert_eq!(pool.sizes(addr, false).unwrap(), held);
        assert_eq!(
            pool.sizes(addr, true).unwrap_err(),
            Error::InvalidPointer {
                addr,
                reason: PointerError::NotRaw
            }
        );
        assert_eq!(pool.largest_free_block(), 100, "a second slot is free");
        let h = pool.grant(100, 1, true).unwrap();
        assert!(h.hit);
        assert_eq!(pool.largest_free_block(), 0, "full");
        assert_eq!(pool.release(addr, false).unwrap(), held);
        assert!(
            pool.release(addr, false).is_err(),
            "a double free is refused"
        );
        pool.release(h.ptr.as_ptr().addr(), true).unwrap();
        assert!(BlockTier::trim(&pool) > 0);
    }

    #[test]
    fn blocks_are_distinct_aligned_and_reused() {
        let pool = heap_pool(100).build().unwrap();
        assert_eq!(pool.stride(), 128);
        let blocks: Vec<_> = (0..100).map(|_| pool.allocate().unwrap()).collect();
        let mut addrs: Vec<usize> = blocks.iter().map(|p| p.as_ptr() as usize).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 100);
        assert!(addrs.windows(2).all(|w| w[1] - w[0] >= 128));
        assert!(addrs.iter().all(|a| a % 64 == 0));
        let last = *blocks.last().unwrap();
        pool.deallocate(last).unwrap();
        assert_eq!(
            pool.allocate().unwrap(),
            last,
            "the warmest slot comes back first"
        );
        let s = pool.stats();
        assert_eq!(s.usage.allocated_blocks, 100);
        assert_eq!(s.usage.allocated_bytes, 100 * 128);
        assert_eq!(s.usage.requested_bytes, 100 * 100);
        assert!(s.usage.hits >= 99 - s.chunks as u64);
    }

    #[test]
    fn capacity_is_enforced_and_reported() {
        let pool = heap_pool(64).capacity(3).build().unwrap();
        let blocks: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        assert!(pool.is_full());
        match pool.allocate() {
            Err(Error::OutOfMemory(r)) => {
                assert_eq!(r.cause, OomCause::CapacityReached { capacity: 3 });
                assert_eq!(r.tier, Tier::Pool);
                assert_eq!(r.allocated_bytes, 192);
            }
            other => panic!("expected a full pool, got {other:?}"),
        }
        assert_eq!(pool.stats().usage.num_ooms, 1);
        pool.deallocate(blocks[1]).unwrap();
        assert!(!pool.is_full());
        assert_eq!(pool.allocate().unwrap(), blocks[1]);
        assert_eq!(pool.stats().chunks, 1);
    }

    #[test]
    fn bad_frees_change_nothing() {
        let pool = heap_pool(64).build().unwrap();
        let a = pool.allocate().unwrap();
        let before = pool.stats();
        let inside = NonNull::new(a.as_ptr().wrapping_add(8)).unwrap();
        let stranger = Box::new(0u64);
        let foreign = NonNull::from(&*stranger).cast::<u8>();
        let err = |p| match pool.deallocate(p) {
            Err(Error::InvalidPointer { reason, .. }) => reason,
            other => panic!("expected an invalid pointer, got {other:?}"),
        };
        assert_eq!(
            err(inside),
            PointerError::Interior {
                block: a.as_ptr() as usize,
                offset: 8
            }
        );
        assert_eq!(err(foreign), PointerError::Foreign);
        let unused = NonNull::new(a.as_ptr().wrapping_add(64)).unwrap();
        assert_eq!(err(unused), PointerError::NotLive);
        assert_eq!(pool.stats(), before);
        pool.deallocate(a).unwrap();
        assert_eq!(err(a), PointerError::NotLive);
    }

    #[test]
    fn typed_blocks_cannot_be_freed_raw() {
        let pool = heap_pool(64).build().unwrap();
        let layout = Layout::from_size_align(48, 16).unwrap();
        let block = Allocator::allocate(&pool, layout).unwrap().cast::<u8>();
        assert!(matches!(
            pool.deallocate(block),
            Err(Error::InvalidPointer {
                reason: PointerError::NotRaw,
                ..
            })
        ));
        // SAFETY: allocated just above with this layout.
        unsafe { Allocator::deallocate(&pool, block, layout) };
        assert!(pool.is_empty());
        assert!(Allocator::allocate(&pool, Layout::from_size_align(65, 1).unwrap()).is_err());
        assert!(Allocator::allocate(&pool, Layout::from_size_align(8, 128).unwrap()).is_err());
        let zst = Allocator::allocate(&pool, Layout::from_size_align(0, 8).unwrap()).unwrap();
        assert_eq!(zst.len(), 0);
    }

    #[test]
    fn chunks_double_and_trim_returns_empty_ones() {
        let pool = heap_pool(64).max_chunk_size(16 << 10).build().unwrap();
        let blocks: Vec<_> = (0..1000).map(|_| pool.allocate().unwrap()).collect();
        let s = pool.stats();
        assert!(s.chunks >= 4 && s.chunks <= 8, "{} chunks", s.chunks);
        assert!(s.usage.reserved_bytes < 2 * 1000 * 64 + (16 << 10));
        assert_eq!(pool.trim(), 0, "every chunk has live blocks");
        for b in &blocks {
            pool.deallocate(*b).unwrap();
        }
        let reserved = pool.stats().usage.reserved_bytes;
        assert_eq!(pool.trim(), reserved);
        let s = pool.stats();
        assert_eq!((s.chunks, s.usage.reserved_bytes, s.free_blocks), (0, 0, 0));
        assert_eq!(s.usage.num_upstream_allocs, s.usage.num_upstream_frees);
        // the pool still works after a trim
        let again = pool.allocate().unwrap();
        pool.deallocate(again).unwrap();
    }

    #[test]
    fn a_largest_chunk_below_a_page_still_works() {
        let pool = heap_pool(256).max_chunk_size(100).build().unwrap();
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.deallocate(a).unwrap();
        pool.deallocate(b).unwrap();
    }

    #[test]
    fn settings_are_validated() {
        assert_eq!(FixedSizePool::new(0).unwrap_err(), Error::ZeroSize);
        assert!(matches!(
            FixedSizePool::builder(64).alignment(3).build(),
            Err(Error::InvalidAlignment { align: 3 })
        ));
        assert!(matches!(
            FixedSizePool::with_capacity(64, 0),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            FixedSizePool::new(5 << 30),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn snapshot_lists_live_blocks() {
        let pool = heap_pool(64).build().unwrap();
        let a = pool.allocate().unwrap();
        let _b = pool.allocate().unwrap();
        pool.deallocate(a).unwrap();
        let snap = pool.snapshot();
        assert_eq!(snap.segments.len(), 1);
        let seg = &snap.segments[0];
        assert_eq!(seg.blocks.len(), 1);
        assert_eq!(seg.allocated_bytes, 64);
        assert_eq!(seg.free_blocks, seg.size / 64 - 1);
        assert_eq!(seg.blocks[0].state, BlockState::AllocatedRaw);
    }

    #[test]
    fn large_blocks_span_granules() {
        let pool = heap_pool(3 << 20).alignment(4096).build().unwrap();
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert!(pool.owns(a.as_ptr() as usize + (3 << 20) - 1));
        pool.deallocate(b).unwrap();
        pool.deallocate(a).unwrap();
        assert!(pool.trim() >= 6 << 20);
    }

    mod model {
        use super::*;
        use crate::testing::{check, fill, ops_len, proptest_config, LiveSet};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Alloc,
            Free(usize),
            FreeInterior(usize, usize),
            Trim,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Alloc),
                3 => any::<usize>().prop_map(Op::Free),
                1 => (any::<usize>(), 1usize..200).prop_map(|(i, o)| Op::FreeInterior(i, o)),
                1 => Just(Op::Trim),
            ]
        }

        proptest! {
            #![proptest_config(proptest_config(128))]

            /// A pool against a list of live blocks: blocks never overlap, are aligned
            /// and as large as asked, the stats equal the model's, bad frees change
            /// nothing, and everything goes back after freeing all and trimming.
            #[test]
            fn pool_matches_model(
                block in 1usize..3000,
                align_shift in 3u32..10,
                capacity in proptest::option::of(1usize..40),
                ops in proptest::collection::vec(op(), ops_len(120)),
            ) {
                let align = 1 << align_shift;
                let mut b = heap_pool(block).alignment(align).max_chunk_size(8192);
                if let Some(cap) = capacity {
                    b = b.capacity(cap);
                }
                let pool = b.build().unwrap();
                let stride = pool.stride();
                let mut live: Vec<(NonNull<u8>, u64)> = Vec::new();
                let mut set = LiveSet::default();
                let mut seed = 0u64;
                for op in ops {
                    match op {
                        Op::Alloc => match pool.allocate() {
                            Ok(p) => {
                                prop_assert_eq!(p.as_ptr() as usize % align, 0);
                                set.insert(p.as_ptr() as usize, block);
                                seed += 1;
                                // SAFETY: a live block of `block` bytes.
                                unsafe { fill(p.as_ptr(), block, seed) };
                                live.push((p, seed));
                            }
                            Err(Error::OutOfMemory(r)) => {
                                prop_assert_eq!(Some(live.len()), capacity);
                                prop_assert_eq!(r.cause, OomCause::CapacityReached { capacity: live.len() });
                            }
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        },
                        Op::Free(i) if !live.is_empty() => {
                            let (p, seed) = live.swap_remove(i % live.len());
                            // SAFETY: still live, filled with `seed`.
                            unsafe { check(p.as_ptr(), block, seed) };
                            set.remove(p.as_ptr() as usize);
                            pool.deallocate(p).unwrap();
                            prop_assert!(pool.deallocate(p).is_err(), "double free accepted");
                        }
                        Op::FreeInterior(i, off) if !live.is_empty() && off < block => {
                            let before = pool.stats();
                            let p = live[i % live.len()].0;
                            let inside = NonNull::new(p.as_ptr().wrapping_add(off)).unwrap();
                            prop_assert!(pool.deallocate(inside).is_err());
                            prop_assert_eq!(pool.stats(), before);
                        }
                        Op::Trim => {
                            pool.trim();
                        }
                        _ => {}
                    }
                    let s = pool.stats();
                    prop_assert_eq!(s.usage.allocated_blocks, live.len());
                    prop_assert_eq!(s.usage.allocated_bytes, live.len() * stride);
                    prop_assert_eq!(s.usage.requested_bytes, live.len() * block);
                    prop_assert!(s.usage.reserved_bytes >= s.usage.allocated_bytes);
                }
                for (p, seed) in live.drain(..) {
                    // SAFETY: still live, filled with `seed`.
                    unsafe { check(p.as_ptr(), block, seed) };
                    pool.deallocate(p).unwrap();
                }
                pool.trim();
                let s = pool.stats();
                prop_assert_eq!((s.usage.reserved_bytes, s.chunks, s.usage.allocated_bytes), (0, 0, 0));
            }
        }
    }
}
