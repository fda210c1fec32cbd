//! Statistics: what every tier counts, and the manager-wide [`Stats`] with its summary.
//!
//! Names follow PyTorch's caching allocator where the meaning matches, because users
//! know them: `allocated_bytes` are blocks held by the program (as rounded),
//! `requested_bytes` what it asked for, `reserved_bytes` what was taken from upstream,
//! and `cached_bytes` the difference between reserved and allocated: memory kept warm
//! for reuse. `internal_waste_bytes` is allocated minus requested (rounding), and
//! `fragmentation` is the share of cached memory that the largest free block cannot
//! use: 0 when all free memory is one block, close to 1 when it is in crumbs.
//!
//! ```
//! use tensorpool::MemoryManager;
//!
//! let mm = MemoryManager::default();
//! let p = mm.allocate_raw(1000, 64)?;
//! let s = mm.stats();
//! assert_eq!(s.requested_bytes, 1000);
//! assert_eq!(s.allocated_bytes, 1024); // the 1 KiB size class
//! assert_eq!(s.internal_waste_bytes, 24);
//! assert!(s.reserved_bytes >= s.allocated_bytes);
//! assert_eq!(s.cached_bytes, s.reserved_bytes - s.allocated_bytes);
//! mm.free_raw(p.as_ptr())?;
//! println!("{}", mm.summary());
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::util::bytes::format_bytes;
use serde::Serialize;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Running totals of the bytes users hold, with their peaks, shared by every tier.
///
/// The tiers that serve blocks under a lock add each allocation and free here; the
/// threads' heaps publish what they handed out at their slow paths (a new slab, a
/// collection), which is where peaks of small blocks are recorded: a peak may miss a
/// spike smaller than a slab per thread and class. Deltas may arrive out of order
/// across threads (a free published before the allocation it undoes), so the
/// counters are wrapping signed numbers and a peak is recorded only when the total
/// is non-negative.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    allocated: AtomicUsize,
    requested: AtomicUsize,
    peak_allocated: AtomicUsize,
    peak_requested: AtomicUsize,
    /// The engine's slab tiers, by `heap::SMALL` and `heap::POOL`: their allocated
    /// bytes as the heaps publish them and their slabs' bytes, with peaks.
    slab_tiers: [SlabTierTotals; 2],
}

/// The running totals and peaks of one of the engine's slab tiers.
#[derive(Debug, Default)]
struct SlabTierTotals {
    allocated: AtomicUsize,
    peak_allocated: AtomicUsize,
    reserved: AtomicUsize,
    peak_reserved: AtomicUsize,
}

impl Totals {
    /// Adds signed deltas of allocated and requested bytes.
    pub(crate) fn add(&self, allocated: isize, requested: isize) {
        Self::add_one(&self.allocated, &self.peak_allocated, allocated);
        Self::add_one(&self.requested, &self.peak_requested, requested);
    }

    fn add_one(total: &AtomicUsize, peak: &AtomicUsize, delta: isize) {
        if delta == 0 {
            return;
        }
        let now = total
            .fetch_add(delta as usize, Relaxed)
            .wrapping_add(delta as usize);
        // Only a rise can set a new peak, and most rises do not: read before the
        // read-modify-write (each costs ~12 ns here).
        if delta > 0 && (now as isize) >= 0 && now > peak.load(Relaxed) {
            peak.fetch_max(now, Relaxed);
        }
    }

    /// Current (allocated, requested), not counting what heaps have not published.
    pub(crate) fn current(&self) -> (isize, isize) {
        (
            self.allocated.load(Relaxed) as isize,
            self.requested.load(Relaxed) as isize,
        )
    }

    /// The peaks (allocated, requested).
    pub(crate) fn peaks(&self) -> (usize, usize) {
        (
            self.peak_allocated.load(Relaxed),
            self.peak_requested.load(Relaxed),
        )
    }

    /// Adds a signed delta of slab tier `tier`'s allocated bytes (a heap's
    /// publication).
    pub(crate) fn add_tier_allocated(&self, tier: usize, delta: isize) {
        let t = &self.slab_tiers[tier];
        Self::add_one(&t.allocated, &t.peak_allocated, delta);
    }

    /// Adds a signed delta of the bytes of slab tier `tier`'s slabs (one made or
    /// given back).
    pub(crate) fn add_tier_reserved(&self, tier: usize, delta: isize) {
        let t = &self.slab_tiers[tier];
        Self::add_one(&t.reserved, &t.peak_reserved, delta);
    }

    /// Slab tier `tier`'s peaks (allocated, reserved), raised to `now` (its exact
    /// current values, unpublished bytes included) first.
    pub(crate) fn tier_peaks(&self, tier: usize, now: (usize, usize)) -> (usize, usize) {
        let t = &self.slab_tiers[tier];
        (
            t.peak_allocated.fetch_max(now.0, Relaxed).max(now.0),
            t.peak_reserved.fetch_max(now.1, Relaxed).max(now.1),
        )
    }

    /// Records `allocated` and `requested` as peaks if they are higher.
    pub(crate) fn note_peaks(&self, allocated: usize, requested: usize) {
        self.peak_allocated.fetch_max(allocated, Relaxed);
        self.peak_requested.fetch_max(requested, Relaxed);
    }

    /// Starts new peaks from the given current values.
    pub(crate) fn reset_peaks(&self, allocated: usize, requested: usize) {
        self.peak_allocated.store(allocated, Relaxed);
        self.peak_requested.store(requested, Relaxed);
        for t in &self.slab_tiers {
            t.peak_allocated
                .store(t.allocated.load(Relaxed).min(isize::MAX as usize), Relaxed);
            t.peak_reserved.store(t.reserved.load(Relaxed), Relaxed);
        }
    }
}

/// The tiers of the manager; also names the strategy in a standalone error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// An explicit fixed-size pool named in the configuration, or a standalone
    /// [`FixedSizePool`](crate::FixedSizePool).
    Pool,
    /// Size-class pools for small requests.
    Small,
    /// The coalescing best-fit tier for large requests.
    Large,
    /// Dedicated, size-cached segments for huge requests.
    Huge,
    /// Bump-allocating arenas.
    Arena,
}

impl Tier {
    /// The tier's name as printed in tables and messages.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Pool => "fixed pool",
            Tier::Small => "small (size classes)",
            Tier::Large => "large (best fit)",
            Tier::Huge => "huge (cached segments)",
            Tier::Arena => "arena",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counters every strategy keeps, in bytes and events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Bytes of live blocks, as rounded.
    pub allocated_bytes: usize,
    /// The most `allocated_bytes` seen.
    pub peak_allocated_bytes: usize,
    /// Bytes of live blocks, as requested.
    pub requested_bytes: usize,
    /// Bytes taken from upstream and not yet given back.
    pub reserved_bytes: usize,
    /// The most `reserved_bytes` seen.
    pub peak_reserved_bytes: usize,
    /// `reserved_bytes` less the free pages released in place (given back to the
    /// system, the address range kept): the memory the system backs.
    pub resident_bytes: usize,
    /// Bytes given back to the system so far: regions, decommitted ranges and pages
    /// released in place.
    pub released_bytes: u64,
    /// The calls that gave them back.
    pub num_releases: u64,
    /// Live blocks.
    pub allocated_blocks: usize,
    /// Allocations served.
    pub num_allocs: u64,
    /// Frees.
    pub num_frees: u64,
    /// Allocations served from cached memory without going upstream.
    pub hits: u64,
    /// Allocations that had to take a new region from upstream.
    pub misses: u64,
    /// Allocations refused for lack of memory.
    pub num_ooms: u64,
    /// Regions taken from upstream.
    pub num_upstream_allocs: u64,
    /// Regions given back to upstream.
    pub num_upstream_frees: u64,
}

impl Usage {
    /// Starts new peaks from the current values (`reset_peak_stats`).
    pub(crate) fn reset_peaks(&mut self) {
        self.peak_allocated_bytes = self.allocated_bytes;
        self.peak_reserved_bytes = self.reserved_bytes;
    }

    /// Records a served allocation of `rounded` bytes for a request of `requested`.
    #[inline]
    pub(crate) fn on_alloc(&mut self, rounded: usize, requested: usize, hit: bool) {
        self.allocated_bytes += rounded;
        self.requested_bytes += requested;
        self.peak_allocated_bytes = self.peak_allocated_bytes.max(self.allocated_bytes);
        self.allocated_blocks += 1;
        self.num_allocs += 1;
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
    }

    /// Records a free of a block allocated with [`on_alloc`](Self::on_alloc).
    #[inline]
    pub(crate) fn on_free(&mut self, rounded: usize, requested: usize) {
        self.allocated_bytes -= rounded;
        self.requested_bytes -= requested;
        self.allocated_blocks -= 1;
        self.num_frees += 1;
    }

    /// Records a region taken from upstream.
    pub(crate) fn on_reserve(&mut self, bytes: usize) {
        self.reserved_bytes += bytes;
        self.resident_bytes += bytes;
        self.peak_reserved_bytes = self.peak_reserved_bytes.max(self.reserved_bytes);
        self.num_upstream_allocs += 1;
    }

    /// Records a region given back to upstream (released pages in it counted
    /// resident again first, [`on_reuse_pages`](Self::on_reuse_pages)).
    pub(crate) fn on_release(&mut self, bytes: usize) {
        self.reserved_bytes -= bytes;
        self.resident_bytes -= bytes;
        self.num_upstream_frees += 1;
        self.released_bytes += bytes as u64;
        self.num_releases += 1;
    }

    /// Records pages released in place.
    pub(crate) fn on_release_pages(&mut self, bytes: usize) {
        self.resident_bytes -= bytes;
        self.released_bytes += bytes as u64;
        self.num_releases += 1;
    }

    /// Records a live block resized in place: from `rounded.0` to `rounded.1` bytes
    /// as rounded, and from `requested.0` to `requested.1` as requested.
    pub(crate) fn on_resize(&mut self, rounded: (usize, usize), requested: (usize, usize)) {
        self.allocated_bytes = self.allocated_bytes - rounded.0 + rounded.1;
        self.requested_bytes = self.requested_bytes - requested.0 + requested.1;
        self.peak_allocated_bytes = self.peak_allocated_bytes.max(self.allocated_bytes);
    }

    /// Records released pages counted resident again (reused, or about to go back
    /// with their region).
    pub(crate) fn on_reuse_pages(&mut self, bytes: usize) {
        self.resident_bytes += bytes;
    }

    /// Reserved bytes not held by the program.
    pub fn cached_bytes(&self) -> usize {
        self.reserved_bytes - self.allocated_bytes
    }

    /// Adds another tier's counters to these (peaks add up to an upper bound).
    pub(crate) fn accumulate(&mut self, other: &Usage) {
        self.allocated_bytes += other.allocated_bytes;
        self.peak_allocated_bytes += other.peak_allocated_bytes;
        self.requested_bytes += other.requested_bytes;
        self.reserved_bytes += other.reserved_bytes;
        self.peak_reserved_bytes += other.peak_reserved_bytes;
        self.resident_bytes += other.resident_bytes;
        self.released_bytes += other.released_bytes;
        self.num_releases += other.num_releases;
        self.allocated_blocks += other.allocated_blocks;
        self.num_allocs += other.num_allocs;
        self.num_frees += other.num_frees;
        self.hits += other.hits;
        self.misses += other.misses;
        self.num_ooms += other.num_ooms;
        self.num_upstream_allocs += other.num_upstream_allocs;
        self.num_upstream_frees += other.num_upstream_frees;
    }
}

/// Counters of one tier of the manager. The large tier's peaks are the best-fit
/// tier's own: its blocks above `medium_threshold` and its segments, the pages it
/// lends the engine's slabs included; the engine's large blocks (32 KiB to
/// `medium_threshold`) count in its current figures and in the manager's peaks
/// (`Stats::peak_allocated_bytes`), not in this tier's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierStats {
    /// Which tier.
    pub tier: Tier,
    /// Its counters.
    #[serde(flatten)]
    pub usage: Usage,
    /// The largest block it can serve from cached memory.
    pub largest_free_block: usize,
}

/// Counters of one size class (or one explicit pool), over every thread's slabs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassStats {
    /// Block size of the class (for an explicit pool, as configured).
    pub block_size: usize,
    /// Blocks held by users.
    pub allocated_blocks: usize,
    /// Free slots in the class's slabs.
    pub free_blocks: usize,
    /// Slabs of the class held by threads' heaps.
    pub slabs: usize,
    /// Bytes of those slabs.
    pub reserved_bytes: usize,
}

/// Statistics of one thread's heap: the slabs and cached large blocks it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadCacheStats {
    /// The thread's name, or its id.
    pub thread: String,
    /// Bytes of its empty slabs and cached free large blocks: memory kept warm for
    /// its next allocations, given back by `trim()` or when the best-fit tier needs
    /// it.
    pub cached_bytes: usize,
    /// Allocations it served from its slabs.
    pub num_allocs: u64,
    /// Frees of blocks of its slabs (its own and collected remote ones).
    pub num_frees: u64,
    /// Frees made by other threads into its slabs, collected.
    pub remote_frees: u64,
    /// Slabs and large blocks its heap holds.
    pub slabs: usize,
}

/// The manager's statistics: totals, then per tier and per size class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Bytes of live blocks, as rounded (PyTorch: `allocated_bytes.all.current`).
    pub allocated_bytes: usize,
    /// The most `allocated_bytes` seen. The large tiers record it at every
    /// allocation; the small-block engine's hot paths keep each thread's counts to
    /// the thread, which adds them to the totals, where peaks are recorded, at its
    /// slow paths (a new slab, a refill, a large block allocated or freed, a slab
    /// that empties) when they have moved by 64 KiB since it last did; every
    /// `stats()` call records the exact current totals. Between two of those a
    /// thread's share is off by what it did on its hot paths since: a peak of small
    /// blocks that rose and fell within a thread's current slabs may read up to
    /// those slabs' free bytes below the true one (a slab is at most
    /// `pool_chunk_size`, 256 KiB by default, per class and thread: 10,000 blocks of
    /// 256 bytes allocated, then freed, with no `stats()` call between, read about
    /// 200 KB low), and small blocks a thread freed without emptying a slab still
    /// count in the totals until it publishes, so another thread's allocations may
    /// read a peak up to that much above the true one. The tiers' peaks are
    /// recorded the same way.
    pub peak_allocated_bytes: usize,
    /// Bytes of live blocks, as requested (PyTorch: `requested_bytes.all.current`).
    /// In debug mode each block asks its tier for its 16 guard bytes too, and they
    /// count here (see docs/RELIABILITY.md).
    pub requested_bytes: usize,
    /// The most `requested_bytes` seen (recorded as `peak_allocated_bytes` is).
    pub peak_requested_bytes: usize,
    /// Bytes taken from upstream (PyTorch: `reserved_bytes.all.current`).
    pub reserved_bytes: usize,
    /// The most `reserved_bytes` seen.
    pub peak_reserved_bytes: usize,
    /// `reserved_bytes` less the free pages given back to the system in place (their
    /// address range kept): the memory the system backs for the manager, and what
    /// the limits count.
    pub resident_bytes: usize,
    /// Bytes given back to the system so far (regions, decommitted ranges, pages
    /// released in place), by the release policy, the soft limit, running out or
    /// `trim()`.
    pub released_bytes: u64,
    /// The calls that gave them back.
    pub num_releases: u64,
    /// Milliseconds since memory last went back to the system, if it ever did.
    pub last_release_ms_ago: Option<u64>,
    /// `reserved_bytes - allocated_bytes`: free memory kept for reuse.
    pub cached_bytes: usize,
    /// The part of `cached_bytes` in threads' heaps: empty slabs and free large
    /// blocks kept for the thread's next allocations.
    pub thread_cached_bytes: usize,
    /// `allocated_bytes - requested_bytes`: lost to rounding.
    pub internal_waste_bytes: usize,
    /// Live blocks.
    pub allocated_blocks: usize,
    /// Allocations served.
    pub num_allocs: u64,
    /// Frees.
    pub num_frees: u64,
    /// Allocations that freed cached memory and tried again (PyTorch: `num_alloc_retries`).
    pub num_alloc_retries: u64,
    /// Allocations refused for lack of memory (PyTorch: `num_ooms`).
    pub num_ooms: u64,
    /// Frees refused after they returned: frees from a thread other than the
    /// block's owner that raced with the owner (the block was freed twice, or freed
    /// and handed out again), refused when the owner collected them. (A free refused
    /// with an error changes nothing, not even this count.) The process allocators,
    /// whose frees cannot return an error (C's `free`, `GlobalAlloc::dealloc`), add
    /// the frees they refused to their statistics' count.
    pub num_invalid_frees: u64,
    /// Regions taken from upstream.
    pub num_upstream_allocs: u64,
    /// Regions given back to upstream.
    pub num_upstream_frees: u64,
    /// The largest block servable from cached memory without going upstream.
    pub largest_free_block: usize,
    /// `1 - largest_free_block / cached_bytes` (0 when nothing is cached).
    pub fragmentation: f64,
    /// Bytes in chunks held by live arenas.
    pub arena_bytes: usize,
    /// The limit on resident bytes, if any.
    pub memory_limit: Option<usize>,
    /// The resident bytes above which free memory goes back at once, if any.
    pub soft_limit: Option<usize>,
    /// The release delay in milliseconds, if free memory goes back on one.
    pub release_delay_ms: Option<u64>,
    /// The delay in effect: the one set, stretched while the program keeps taking
    /// back memory released too early (see [`manager`](crate::manager), "Memory given
    /// back").
    pub effective_release_delay_ms: Option<u64>,
    /// Overruns of guard bytes found in debug mode (always 0 outside it).
    pub num_guard_violations: u64,
    /// Per tier.
    pub tiers: Vec<TierStats>,
    /// Per explicit pool, then per size class that has been used.
    pub classes: Vec<ClassStats>,
    /// Per thread with a heap.
    pub threads: Vec<ThreadCacheStats>,
}

/// `1 - largest / free`, or 0 when nothing is free.
pub(crate) fn fragmentation(largest_free: usize, free: usize) -> f64 {
    if free == 0 {
        0.0
    } else {
        1.0 - largest_free.min(free) as f64 / free as f64
    }
}

impl Stats {
    /// A table for people, in the spirit of `torch.cuda.memory_summary()`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let b = format_bytes;
        let rule = "-".repeat(86);
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(out, " tensorpool memory summary");
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(out, " {:<28} {:>18} {:>18}", "", "current", "peak");
        let _ = writeln!(
            out,
            " {:<28} {:>18} {:>18}",
            "allocated (held by program)",
            b(self.allocated_bytes),
            b(self.peak_allocated_bytes)
        );
        let _ = writeln!(
            out,
            " {:<28} {:>18} {:>18}",
            "requested (as asked)",
            b(self.requested_bytes),
            b(self.peak_requested_bytes)
        );
        let _ = writeln!(
            out,
            " {:<28} {:>18} {:>18}",
            "reserved (from upstream)",
            b(self.reserved_bytes),
            b(self.peak_reserved_bytes)
        );
        let _ = writeln!(
            out,
            " {:<28} {:>18}",
            "resident (reserved, backed)",
            b(self.resident_bytes)
        );
        let _ = writeln!(
            out,
            " {:<28} {:>18}",
            "cached (reserved, free)",
            b(self.cached_bytes)
        );
        let _ = writeln!(
            out,
            " {:<28} {:>18}",
            "rounding waste",
            b(self.internal_waste_bytes)
        );
        let _ = writeln!(
            out,
            " {:<28} {:>18}",
            "largest free block",
            b(self.largest_free_block)
        );
        let _ = writeln!(
            out,
            " {:<28} {:>17.1}%",
            "fragmentation",
            100.0 * self.fragmentation
        );
        let _ = writeln!(out, " {:<28} {:>18}", "arena chunks", b(self.arena_bytes));
        let limit = self.memory_limit.map_or_else(|| "none".to_string(), b);
        let _ = writeln!(out, " {:<28} {:>18}", "memory limit", limit);
        let soft = self.soft_limit.map_or_else(|| "none".to_string(), b);
        let _ = writeln!(out, " {:<28} {:>18}", "soft limit", soft);
        let delay = self
            .release_delay_ms
            .map_or_else(|| "only when asked".to_string(), |ms| format!("{ms} ms"));
        let _ = writeln!(out, " {:<28} {:>18}", "release delay", delay);
        let last = self
            .last_release_ms_ago
            .map_or_else(|| "never".to_string(), |ms| format!("{ms} ms ago"));
        let _ = writeln!(
            out,
            " {:<28} {:>18}   {} calls, last {}",
            "released to the system",
            b(self.released_bytes as usize),
            self.num_releases,
            last
        );
        let _ = writeln!(
            out,
            " {:<28} {:>18}",
            "cached by threads",
            b(self.thread_cached_bytes)
        );
        let _ = writeln!(
            out,
            " allocs {}  frees {}  live blocks {}  retries {}  OOMs {}  invalid frees {}  upstream allocs {} frees {}",
            self.num_allocs,
            self.num_frees,
            self.allocated_blocks,
            self.num_alloc_retries,
            self.num_ooms,
            self.num_invalid_frees,
            self.num_upstream_allocs,
            self.num_upstream_frees
        );
        let _ = writeln!(out, "{rule}");
        // As wide as the longest tier name, so that the columns line up.
        let w = self
            .tiers
            .iter()
            .map(|t| t.tier.name().len())
            .fold(4, usize::max);
        let _ = writeln!(
            out,
            " {:<w$} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>7}",
            "tier", "allocated", "reserved", "resident", "peak rsvd", "released", "allocs", "hit %"
        );
        for t in &self.tiers {
            let u = &t.usage;
            let _ = writeln!(
                out,
                " {:<w$} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>7}",
                t.tier.name(),
                b(u.allocated_bytes),
                b(u.reserved_bytes),
                b(u.resident_bytes),
                b(u.peak_reserved_bytes),
                b(u.released_bytes as usize),
                u.num_allocs,
                hit_rate(u),
            );
        }
        if !self.classes.is_empty() {
            let _ = writeln!(out, "{rule}");
            let _ = writeln!(
                out,
                " {:<12} {:>11} {:>11} {:>9} {:>11}",
                "class", "live", "free", "slabs", "reserved"
            );
            for c in &self.classes {
                let _ = writeln!(
                    out,
                    " {:<12} {:>11} {:>11} {:>9} {:>11}",
                    b(c.block_size),
                    c.allocated_blocks,
                    c.free_blocks,
                    c.slabs,
                    b(c.reserved_bytes),
                );
            }
        }
        if !self.threads.is_empty() {
            let _ = writeln!(out, "{rule}");
            let _ = writeln!(
                out,
                " {:<30} {:>11} {:>11} {:>11} {:>9} {:>6}",
                "thread heap", "cached", "allocs", "frees", "remote", "slabs"
            );
            for t in &self.threads {
                let _ = writeln!(
                    out,
                    " {:<30} {:>11} {:>11} {:>11} {:>9} {:>6}",
                    t.thread,
                    b(t.cached_bytes),
                    t.num_allocs,
                    t.num_frees,
                    t.remote_frees,
                    t.slabs
                );
            }
        }
        let _ = writeln!(out, "{rule}");
        out
    }
}

fn hit_rate(u: &Usage) -> String {
    if u.num_allocs == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", 100.0 * u.hits as f64 / u.num_allocs as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_tracks_peaks_and_balances() {
        let mut u = Usage::default();
        u.on_reserve(4096);
        u.on_alloc(128, 100, false);
        u.on_alloc(64, 64, true);
        assert_eq!(
            (u.allocated_bytes, u.requested_bytes, u.allocated_blocks),
            (192, 164, 2)
        );
        u.on_free(128, 100);
        assert_eq!((u.allocated_bytes, u.peak_allocated_bytes), (64, 192));
        assert_eq!(u.cached_bytes(), 4096 - 64);
        u.on_free(64, 64);
        u.on_release(4096);
        assert_eq!((u.reserved_bytes, u.peak_reserved_bytes), (0, 4096));
        assert_eq!(
            (
                u.hits,
                u.misses,
                u.num_upstream_allocs,
                u.num_upstream_frees
            ),
            (1, 1, 1, 1)
        );
        let mut total = Usage::default();
        total.accumulate(&u);
        total.accumulate(&u);
        assert_eq!(total.num_allocs, 4);
    }

    #[test]
    fn fragmentation_is_share_not_in_largest_block() {
        assert_eq!(fragmentation(0, 0), 0.0);
        assert_eq!(fragmentation(100, 100), 0.0);
        assert!((fragmentation(25, 100) - 0.75).abs() < 1e-12);
    }
}
