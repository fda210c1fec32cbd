//! The contract between the manager and the locked tiers: what every one of them does,
//! with the same names and the same result types.
//!
//! The best-fit tier, the huge-segment cache and a standalone fixed-size pool each keep
//! their blocks under one lock, with their metadata outside the memory they hand out.
//! The manager finds which of them owns a freed address in its owners map and then
//! speaks to that tier through [`BlockTier`] alone: one code path frees, sizes, trims
//! and snapshots whichever tier it is. allocator-api2's [`Allocator`] is implemented
//! for each of them through [`allocate_typed`] and [`deallocate_typed`].
//!
//! [`Allocator`]: allocator_api2::alloc::Allocator
//!
//! The verbs, one per layer (the glossary of `docs/ARCHITECTURE.md` has them all): a
//! tier **grants** a block and **releases** it; the manager **serves** a request and
//! **reclaims** a block; users **allocate** and **deallocate** (or free, raw).
//!
//! A block is *typed* when its holder gives its layout back on free (allocator-api2,
//! Rust collections) and *raw* when it frees by address alone (`free_raw`, C, NumPy).
//! A tier records which it handed out and refuses a free of the other kind
//! ([`PointerError::NotRaw`](crate::PointerError::NotRaw)), changing nothing.
//!
//! The slab engine ([`slab`](super::slab)) keeps this vocabulary but not the trait: its
//! hot paths take no lock, know the size class from the layout, and return no sizes.
//! The arena ([`arena`](super::arena)) frees by reset and rewind, not by block.

use crate::error::Result;
use crate::observe::snapshot::{SegmentSnapshot, Snapshot};
use crate::observe::stats::Tier;
use allocator_api2::alloc::AllocError;
use std::alloc::Layout;
use std::ptr::NonNull;

/// The passes of the release policy that must see free memory unused before it goes
/// back to the system. The manager runs passes `release_delay / 2` apart (see the
/// manager's `release` module), so memory goes back after at least the delay unused,
/// and at most one and a half times it; memory used in between starts again.
pub(crate) const RELEASE_AGE: u8 = 3;

/// A block a tier granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The block's first byte, aligned as asked.
    pub(crate) ptr: NonNull<u8>,
    /// The bytes the block occupies in the tier (its slot, rounded block or segment).
    pub(crate) block_size: usize,
    /// Whether its bytes are known to be zero (fresh pages from a zeroing upstream).
    pub(crate) zeroed: bool,
    /// Whether it was served from memory the tier already held (no upstream call).
    pub(crate) hit: bool,
}

/// What a tier records of a live block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockSizes {
    /// The bytes the block occupies in the tier.
    pub(crate) block_size: usize,
    /// The bytes its holder asked for.
    pub(crate) requested: usize,
}

/// A block resized in place by [`BlockTier::resize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resized {
    /// Its sizes before.
    pub(crate) before: BlockSizes,
    /// Its block size now (the requested size is the one asked for).
    pub(crate) block_size: usize,
}

/// The room a block that grows beyond its own is given to grow into next, for
/// `size` bytes asked: an eighth more, so that a buffer grown a little at a time
/// is copied (or its memory committed) a bounded number of times per doubling.
pub(crate) fn room(size: usize) -> usize {
    size / 8
}

/// `size` bytes and their [`room`].
pub(crate) fn with_room(size: usize) -> usize {
    size.saturating_add(room(size))
}

/// Whether a block of `block_size` bytes is resized in place to `size` bytes: it
/// holds them, and is at most twice as large.
pub(crate) fn fits_in_place(block_size: usize, size: usize) -> bool {
    size <= block_size && size > block_size / 2
}

/// What every locked tier does. Each method takes the tier's lock once; every refusal
/// changes nothing.
pub(crate) trait BlockTier {
    /// Which tier this is, for statistics, snapshots and out-of-memory reports.
    fn tier(&self) -> Tier;

    /// A block of at least `size` bytes aligned to `align`, recorded as `raw` or typed.
    /// Refuses a size or alignment the tier cannot serve, and explains running out of
    /// memory.
    fn grant(&self, size: usize, align: usize, raw: bool) -> Result<Grant>;

    /// The sizes of the live block at `addr` held as `raw`: the same checks as
    /// [`release`](Self::release), changing nothing.
    fn sizes(&self, addr: usize, raw: bool) -> Result<BlockSizes>;

    /// Takes back the live block at `addr` held as `raw`; refuses, changing nothing,
    /// an address that is not one (foreign, interior, not live, the other kind).
    fn release(&self, addr: usize, raw: bool) -> Result<BlockSizes>;

    /// Resizes the live block at `addr` held as `raw` in place to `size` bytes, if
    /// the block holds them and is at most twice as large (a smaller block serves
    /// better then) or at least its requested size (room it was given), or if the
    /// tier can grow the block in place to hold them: its sizes before and its block
    /// size after, or `None` with nothing changed. A typed holder frees it with a
    /// layout of `size` bytes from then on.
    fn resize(&self, addr: usize, size: usize, raw: bool) -> Option<Resized>;

    /// Returns the memory that holds no live block to upstream, all of it now; the
    /// bytes returned.
    fn trim(&self) -> usize;

    /// A pass of the release policy: free memory that `min_age` passes (at least 1)
    /// have now seen unused goes back to the system, as [`trim`](Self::trim) gives it
    /// back; the bytes returned.
    fn release_idle(&self, min_age: u8) -> usize;

    /// The largest block the tier can grant from memory it holds, without upstream.
    fn largest_free_block(&self) -> usize;

    /// Appends a snapshot of every segment (chunk, region) the tier holds.
    fn snapshot_into(&self, out: &mut Vec<SegmentSnapshot>);
}

/// A snapshot of one tier's segments.
pub(crate) fn snapshot_of(tier: &impl BlockTier) -> Snapshot {
    let mut segments = Vec::new();
    tier.snapshot_into(&mut segments);
    Snapshot { segments }
}

/// A pointer for a zero-sized allocation: aligned, non-null, never dereferenced.
pub(crate) fn zero_sized(align: usize) -> NonNull<[u8]> {
    let ptr = NonNull::new(std::ptr::without_provenance_mut::<u8>(align))
        .expect("alignments are non-zero");
    NonNull::slice_from_raw_parts(ptr, 0)
}

/// [`Allocator::allocate`](allocator_api2::alloc::Allocator::allocate) for a tier: a typed block of the layout's size and
/// alignment, or a dangling aligned pointer for a size of zero.
pub(crate) fn allocate_typed(
    tier: &impl BlockTier,
    layout: Layout,
) -> std::result::Result<NonNull<[u8]>, AllocError> {
    if layout.size() == 0 {
        return Ok(zero_sized(layout.align()));
    }
    let grant = tier
        .grant(layout.size(), layout.align(), false)
        .map_err(|_| AllocError)?;
    Ok(NonNull::slice_from_raw_parts(grant.ptr, layout.size()))
}

/// [`Allocator::deallocate`](allocator_api2::alloc::Allocator::deallocate) for a tier: a typed block from [`allocate_typed`].
///
/// # Safety
///
/// As [`Allocator::deallocate`](allocator_api2::alloc::Allocator::deallocate): `ptr` came from [`allocate_typed`] on this tier with
/// `layout` and is freed once. The tier checks the address anyway and, in debug
/// builds, panics on a broken contract.
pub(crate) unsafe fn deallocate_typed(tier: &impl BlockTier, ptr: NonNull<u8>, layout: Layout) {
    if layout.size() == 0 {
        return;
    }
    let freed = tier.release(ptr.as_ptr().addr(), false);
    debug_assert!(
        freed.is_ok(),
        "Allocator::deallocate broke its contract: {freed:?}"
    );
}
