//! Snapshots: every segment and block with its state, for tools and for people.
//!
//! A [`Snapshot`] is the machine-readable picture of an allocator at one moment:
//! each region taken from upstream (a pool chunk, a best-fit segment, a huge segment,
//! an arena chunk) with the blocks carved from it. It serializes to JSON, like
//! PyTorch's `torch.cuda.memory_snapshot()`.
//!
//! ```
//! use tensorpool::MemoryManager;
//!
//! let mm = MemoryManager::default();
//! let p = mm.allocate_raw(3 << 20, 64)?;
//! let snap = mm.snapshot();
//! let seg = snap.segments.iter().find(|s| s.allocated_bytes > 0).unwrap();
//! assert!(seg.blocks.iter().any(|b| b.address == p.as_ptr() as usize));
//! let json = serde_json::to_string(&snap).unwrap();
//! assert!(json.contains("\"state\":\"allocated_raw\""));
//! mm.free_raw(p.as_ptr())?;
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::observe::stats::Tier;
use serde::Serialize;

/// All segments of an allocator.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Segments in address order within each tier.
    pub segments: Vec<SegmentSnapshot>,
}

/// One region taken from upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSnapshot {
    /// The tier that owns it.
    pub tier: Tier,
    /// Start address.
    pub address: usize,
    /// Length in bytes.
    pub size: usize,
    /// For a pool chunk, the block size of its slots.
    pub block_size: Option<usize>,
    /// Bytes of live blocks in it (blocks known to be thread-cached excluded).
    pub allocated_bytes: usize,
    /// For a pool chunk, the number of free slots (free slots are not listed).
    pub free_blocks: usize,
    /// Its blocks in address order: all of them for best-fit and huge segments, the
    /// live and thread-cached ones for pool chunks.
    pub blocks: Vec<BlockSnapshot>,
}

/// One block of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockSnapshot {
    /// Start address.
    pub address: usize,
    /// Length in bytes, as rounded.
    pub size: usize,
    /// Bytes requested (0 for a free block). A typed block of the size classes or of
    /// the engine's large blocks shows its rounded size: the engine keeps no size for
    /// typed blocks (their frees pass the layout), so the sum over a snapshot can be
    /// above `Stats::requested_bytes`, which counts the sizes asked for.
    pub requested: usize,
    /// Its state.
    pub state: BlockState,
}

/// The state of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Held by a typed owner (an `Allocator` user, a `Tensor`, an arena).
    Allocated,
    /// Held through the raw API (`allocate_raw`), freeable with `free_raw`.
    AllocatedRaw,
    /// Free and cached for reuse.
    Free,
    /// Pages of the best-fit tier that the small-block engine holds as a slab (or a
    /// cached large block); the slab's own blocks are listed in a segment of its own.
    Slab,
}

impl BlockState {
    /// The state of a live block.
    pub(crate) fn live(raw: bool) -> Self {
        if raw {
            BlockState::AllocatedRaw
        } else {
            BlockState::Allocated
        }
    }
}
