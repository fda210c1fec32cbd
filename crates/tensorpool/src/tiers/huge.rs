//! `HugeCache`: one dedicated segment per huge tensor, cached by size when freed.
//!
//! A huge block (by default 64 MiB and up) would dominate any segment it shared, and
//! splitting one leaves remainders that rarely fit the next huge request. So each gets
//! a segment of its own, rounded to 2 MiB and aligned to 2 MiB (huge pages). When it
//! is freed the segment is not unmapped: it goes into a cache keyed by size, and the
//! next request of that size (tensor shapes repeat every step) takes it back with its
//! pages still mapped. A request takes a cached segment at most 1/8 larger than it
//! needs. A request that misses trades cached segments (largest first) for its new
//! one, so that a program whose shapes change does not keep the old ones forever;
//! [`trim`](HugeCache::trim) unmaps the cache, and with an optional bound on cached
//! bytes a freed segment that would exceed it is unmapped at once. Under the
//! manager's release policy, a cached segment that passes see unused long enough is
//! unmapped ([`release_idle`](HugeCache::release_idle)).
//!
//! ```
//! use tensorpool::huge::HugeCache;
//!
//! let cache = HugeCache::new(None);
//! let a = cache.allocate(100 << 20, 64)?;
//! cache.deallocate(a)?; // kept, pages warm
//! let b = cache.allocate(99 << 20, 64)?; // same 2 MiB-rounded size class: reused
//! assert_eq!(a, b);
//! assert_eq!(cache.stats().usage.hits, 1);
//! cache.deallocate(b)?;
//! assert_eq!(cache.trim(), 100 << 20);
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::error::{Error, OutOfMemory, PointerError, Result};
use crate::limits::{round_up, validate};
use crate::observe::snapshot::{BlockSnapshot, BlockState, SegmentSnapshot, Snapshot};
use crate::observe::stats::{Tier, Usage};
use crate::tiers::contract::{self, BlockSizes, BlockTier, Grant, Resized};
use crate::upstream::{default_upstream, Region, Upstream, HUGE_PAGE_SIZE};
use crate::util::address_map::AddressMap;
use crate::util::sync::PlainMutex as Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::MutexGuard;

/// Dedicated segments for huge blocks, cached by size.
#[derive(Debug)]
pub struct HugeCache {
    max_cached: Option<usize>,
    upstream: Arc<dyn Upstream>,
    state: Mutex<State>,
}

/// Statistics of a [`HugeCache`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HugeStats {
    /// Segments in use.
    pub live_segments: usize,
    /// Segments cached for reuse.
    pub cached_segments: usize,
    /// The largest cached segment.
    pub largest_cached: usize,
    /// The counters.
    #[serde(flatten)]
    pub usage: Usage,
}

#[derive(Debug, Default)]
struct State {
    /// Every segment, live or cached: is it live, its requested size and raw flag.
    segments: AddressMap<Entry>,
    /// Cached segments by (size, address).
    cached: BTreeMap<(usize, usize), Region>,
    cached_bytes: usize,
    usage: Usage,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    region: Region,
    live: bool,
    raw: bool,
    requested: usize,
    /// For a cached segment: the release passes that saw it unused.
    idle: u8,
}

/// The huge tier's lock, held across `fork()` (`manager::fork`).
pub(crate) struct HugeHold<'a>(#[allow(dead_code)] MutexGuard<'a, State>);

impl HugeCache {
    /// Takes the tier's lock, to hold across `fork()`.
    pub(crate) fn hold_for_fork(&self) -> HugeHold<'_> {
        HugeHold(self.state.lock())
    }

    /// A cache that keeps at most `max_cached` bytes of free segments (no bound with
    /// `None`), over the default upstream.
    pub fn new(max_cached: Option<usize>) -> Self {
        Self::with_upstream(max_cached, default_upstream())
    }

    /// The same, with segments from `upstream`.
    pub fn with_upstream(max_cached: Option<usize>, upstream: Arc<dyn Upstream>) -> Self {
        HugeCache {
            max_cached,
            upstream,
            state: Mutex::new(State::default()),
        }
    }

    /// The segment size serving `size` bytes.
    pub fn rounded_size(size: usize) -> usize {
        round_up(size, HUGE_PAGE_SIZE)
    }

    /// A block of `size` bytes at `align` for raw use.
    pub fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        self.grant(size, align, true).map(|g| g.ptr)
    }

    /// Returns a block from [`allocate`](Self::allocate); refuses, changing nothing,
    /// an address that is not a live raw block.
    pub fn deallocate(&self, ptr: NonNull<u8>) -> Result<()> {
        self.release(ptr.as_ptr().addr(), true).map(|_| ())
    }

    /// The live block at `addr` held as `raw`, or why there is none.
    fn live_entry(st: &State, addr: usize, raw: bool) -> Result<Entry> {
        let invalid = |reason| Error::InvalidPointer { addr, reason };
        match st.segments.find(addr) {
            None => Err(invalid(PointerError::Foreign)),
            Some((_, _, e)) if !e.live => Err(invalid(PointerError::NotLive)),
            Some((start, _, _)) if start != addr => Err(invalid(PointerError::Interior {
                block: start,
                offset: addr - start,
            })),
            Some((_, _, e)) if e.raw != raw => Err(invalid(PointerError::NotRaw)),
            Some((_, _, e)) => Ok(*e),
        }
    }

    /// Takes cached segments out of the cache, largest first, until `bytes` are taken
    /// or the cache is empty; the caller unmaps them (with [`unmap`](Self::unmap),
    /// after letting go of the lock).
    fn take_cached(&self, st: &mut State, bytes: usize) -> Vec<Region> {
        let mut taken = Vec::new();
        let mut total = 0;
        while total < bytes {
            let Some((_, region)) = st.cached.pop_last() else {
                break;
            };
            st.cached_bytes -= region.len();
            st.segments.remove(region.start());
            st.usage.on_release(region.len());
            total += region.len();
            taken.push(region);
        }
        taken
    }

    /// Returns segments taken out of the cache to upstream.
    fn unmap(&self, regions: Vec<Region>) -> usize {
        let mut released = 0;
        for region in regions {
            released += region.len();
            // SAFETY: the region came from this upstream with this size and 2 MiB
            // alignment; it was cached (no live block) and is no longer in the cache
            // or the segment map, so nothing else can hand it out.
            unsafe {
                self.upstream
                    .deallocate(region.ptr(), region.len(), HUGE_PAGE_SIZE)
            };
        }
        released
    }

    /// Returns every cached segment to upstream; returns the bytes freed.
    pub fn trim(&self) -> usize {
        let stale = self.take_cached(&mut self.state.lock(), usize::MAX);
        self.unmap(stale)
    }

    /// A pass of the release policy (see [`BestFit::release_idle`](crate::BestFit::release_idle)): returns
    /// the cached segments that `min_age` passes (at least 1), this one included, saw
    /// unused. Returns the bytes freed.
    pub fn release_idle(&self, min_age: u8) -> usize {
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut stale = Vec::new();
        let keys: Vec<(usize, usize)> = st.cached.keys().copied().collect();
        for key in keys {
            let entry = st
                .segments
                .find_mut(key.1)
                .expect("cached segments are mapped");
            entry.idle = entry.idle.saturating_add(1);
            if entry.idle >= min_age.max(1) {
                let region = st.cached.remove(&key).expect("listed above");
                st.cached_bytes -= region.len();
                st.segments.remove(region.start());
                st.usage.on_release(region.len());
                stale.push(region);
            }
        }
        self.unmap(stale)
    }

    /// The largest cached segment.
    pub fn largest_cached(&self) -> usize {
        self.state
            .lock()
            .cached
            .last_key_value()
            .map_or(0, |(k, _)| k.0)
    }

    /// Starts the tier's peaks from its current figures.
    pub(crate) fn reset_peaks(&self) {
        self.state.lock().usage.reset_peaks();
    }

    /// The statistics.
    pub fn stats(&self) -> HugeStats {
        let st = self.state.lock();
        HugeStats {
            live_segments: st.segments.len() - st.cached.len(),
            cached_segments: st.cached.len(),
            largest_cached: st.cached.last_key_value().map_or(0, |(k, _)| k.0),
            usage: st.usage,
        }
    }

    /// Every segment, live or cached.
    pub fn snapshot(&self) -> Snapshot {
        contract::snapshot_of(self)
    }
}

impl BlockTier for HugeCache {
    fn tier(&self) -> Tier {
        Tier::Huge
    }

    fn grant(&self, size: usize, align: usize, raw: bool) -> Result<Grant> {
        validate(size, align)?;
        let rounded = Self::rounded_size(size);
        let mut st = self.state.lock();
        let cached = st
            .cached
            .range((rounded, 0)..)
            .next()
            .filter(|&(&(seg, _), _)| seg - rounded <= rounded / 8)
            .map(|(&key, &region)| (key, region));
        let (region, hit) = match cached {
            Some((key, region)) => {
                st.cached.remove(&key);
                st.cached_bytes -= region.len();
                (region, true)
            }
            None => {
                // A miss means the cached sizes do not match what the program needs
                // now: trade cached segments for the new one, largest first, so that
                // reserved memory follows live memory instead of the past peak. The
                // system calls run without the lock, so other threads go on meanwhile.
                let stale = self.take_cached(&mut st, rounded);
                drop(st);
                self.unmap(stale);
                let mapped = self.upstream.allocate(rounded, HUGE_PAGE_SIZE);
                st = self.state.lock();
                match mapped {
                    Ok(ptr) => {
                        st.usage.on_reserve(rounded);
                        (Region::new(ptr, rounded), false)
                    }
                    Err(refusal) => {
                        st.usage.num_ooms += 1;
                        let largest = st.cached.last_key_value().map_or(0, |(k, _)| k.0);
                        let report = OutOfMemory::from_upstream(
                            size,
                            align,
                            Tier::Huge,
                            refusal,
                            &st.usage,
                            largest,
                        );
                        return Err(report.into_error());
                    }
                }
            }
        };
        let entry = Entry {
            region,
            live: true,
            raw,
            requested: size,
            idle: 0,
        };
        if hit {
            *st.segments
                .find_mut(region.start())
                .expect("cached segments are mapped") = entry;
        } else {
            st.segments.insert(region.start(), region.len(), entry);
        }
        st.usage.on_alloc(region.len(), size, hit);
        Ok(Grant {
            ptr: region.ptr(),
            block_size: region.len(),
            // A cached segment held someone's data; a fresh one is as upstream gives it.
            zeroed: !hit && self.upstream.zeroed(),
            hit,
        })
    }

    fn sizes(&self, addr: usize, raw: bool) -> Result<BlockSizes> {
        let entry = Self::live_entry(&self.state.lock(), addr, raw)?;
        Ok(BlockSizes {
            block_size: entry.region.len(),
            requested: entry.requested,
        })
    }

    fn resize(&self, addr: usize, size: usize, raw: bool) -> Option<Resized> {
        let mut st = self.state.lock();
        let entry = Self::live_entry(&st, addr, raw).ok()?;
        let block_size = entry.region.len();
        if !contract::fits_in_place(block_size, size) {
            return None;
        }
        let old = entry.requested;
        st.segments.find_mut(addr).expect("found above").requested = size;
        st.usage.on_resize((block_size, block_size), (old, size));
        Some(Resized {
            before: BlockSizes {
                block_size,
                requested: old,
            },
            block_size,
        })
    }

    fn release(&self, addr: usize, raw: bool) -> Result<BlockSizes> {
        let mut st = self.state.lock();
        let entry = Self::live_entry(&st, addr, raw)?;
        let region = entry.region;
        st.usage.on_free(region.len(), entry.requested);
        let fits = self
            .max_cached
            .is_none_or(|max| st.cached_bytes + region.len() <= max);
        if fits {
            let slot = st.segments.find_mut(addr).expect("found above");
            slot.live = false;
            slot.requested = 0;
            slot.idle = 0;
            st.cached.insert((region.len(), addr), region);
            st.cached_bytes += region.len();
        } else {
            st.segments.remove(addr);
            st.usage.on_release(region.len());
            drop(st);
            // SAFETY: the region came from this upstream with this size and 2 MiB
            // alignment, and its block was just freed.
            unsafe {
                self.upstream
                    .deallocate(region.ptr(), region.len(), HUGE_PAGE_SIZE)
            };
        }
        Ok(BlockSizes {
            block_size: entry.region.len(),
            requested: entry.requested,
        })
    }

    fn trim(&self) -> usize {
        HugeCache::trim(self)
    }

    fn release_idle(&self, min_age: u8) -> usize {
        HugeCache::release_idle(self, min_age)
    }

    fn largest_free_block(&self) -> usize {
        self.largest_cached()
    }

    fn snapshot_into(&self, out: &mut Vec<SegmentSnapshot>) {
        let st = self.state.lock();
        for (start, len, e) in st.segments.iter() {
            let state = if e.live {
                BlockState::live(e.raw)
            } else {
                BlockState::Free
            };
            out.push(SegmentSnapshot {
                tier: Tier::Huge,
                address: start,
                size: len,
                block_size: None,
                allocated_bytes: if e.live { len } else { 0 },
                free_blocks: 0,
                blocks: vec![BlockSnapshot {
                    address: start,
                    size: len,
                    requested: e.requested,
                    state,
                }],
            });
        }
    }
}

impl Drop for HugeCache {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        for (_, _, e) in st.segments.iter() {
            // SAFETY: every segment came from this upstream with its size and 2 MiB
            // alignment; the cache is going away.
            unsafe {
                self.upstream
                    .deallocate(e.region.ptr(), e.region.len(), HUGE_PAGE_SIZE)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::HeapUpstream;

    fn heap(max: Option<usize>) -> HugeCache {
        HugeCache::with_upstream(max, Arc::new(HeapUpstream))
    }

    #[test]
    fn reuse_is_bounded_by_an_eighth() {
        let c = heap(None);
        let a = c.allocate(16 << 20, 64).unwrap();
        c.deallocate(a).unwrap();
        // 15 MiB wastes 1 MiB of the cached 16 MiB segment: reused, pages warm.
        let b = c.allocate(15 << 20, 64).unwrap();
        assert_eq!(a, b);
        c.deallocate(b).unwrap();
        // 12 MiB would waste 4 MiB, more than an eighth: a miss, which trades the
        // cached segment for a new one instead of keeping both.
        let d = c.allocate(12 << 20, 64).unwrap();
        let s = c.stats();
        assert_eq!(
            (
                s.usage.hits,
                s.usage.misses,
                s.live_segments,
                s.cached_segments
            ),
            (1, 2, 1, 0)
        );
        assert_eq!(s.usage.reserved_bytes, 12 << 20);
        assert_eq!(s.usage.allocated_bytes, 12 << 20);
        assert_eq!(s.usage.requested_bytes, 12 << 20);
        c.deallocate(d).unwrap();
        assert_eq!(c.trim(), 12 << 20);
        assert_eq!(c.stats().usage.reserved_bytes, 0);
    }

    #[test]
    fn bound_on_cached_bytes_releases_at_once() {
        let c = heap(Some(10 << 20));
        let a = c.allocate(8 << 20, 64).unwrap();
        let b = c.allocate(8 << 20, 64).unwrap();
        c.deallocate(a).unwrap();
        c.deallocate(b).unwrap();
        let s = c.stats();
        assert_eq!(s.cached_segments, 1);
        assert_eq!(s.usage.reserved_bytes, 8 << 20);
        assert_eq!(s.usage.num_upstream_frees, 1);
    }

    #[test]
    fn invalid_frees_change_nothing() {
        let c = heap(None);
        let a = c.allocate(4 << 20, 64).unwrap();
        let reason = |addr: usize| match c.release(addr, true) {
            Err(Error::InvalidPointer { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let base = a.as_ptr() as usize;
        assert_eq!(
            reason(base + 64),
            PointerError::Interior {
                block: base,
                offset: 64
            }
        );
        assert_eq!(reason(base + (4 << 20)), PointerError::Foreign);
        assert_eq!(
            c.release(base, false).unwrap_err(),
            Error::InvalidPointer {
                addr: base,
                reason: PointerError::NotRaw
            }
        );
        c.deallocate(a).unwrap();
        assert_eq!(reason(base), PointerError::NotLive);
        let snap = c.snapshot();
        assert_eq!(snap.segments[0].blocks[0].state, BlockState::Free);
    }

    mod model {
        use super::*;
        use crate::testing::{check, fill, ops_len, proptest_config, LiveSet};
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        #[derive(Debug, Clone)]
        enum Op {
            Alloc(usize),
            Free(usize),
            BadFree(usize, usize),
            Trim,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1usize..(24 << 20)).prop_map(Op::Alloc),
                3 => any::<usize>().prop_map(Op::Free),
                1 => (any::<usize>(), 1usize..(2 << 20)).prop_map(|(i, o)| Op::BadFree(i, o)),
                1 => Just(Op::Trim),
            ]
        }

        proptest! {
            #![proptest_config(proptest_config(64))]

            /// The cache against a model of live and cached segments: hits take the
            /// predicted segment, misses trade the predicted cached ones, and the
            /// reserved bytes are exactly live plus cached.
            #[test]
            fn huge_cache_matches_model(ops in proptest::collection::vec(op(), ops_len(60))) {
                let cache = heap(None);
                // (block, requested size, segment size, pattern seed)
                let mut live: Vec<(NonNull<u8>, usize, usize, u64)> = Vec::new();
                let mut cached: BTreeSet<(usize, usize)> = BTreeSet::new();
                let mut set = LiveSet::default();
                let mut seed = 0;
                for op in ops {
                    match op {
                        Op::Alloc(size) => {
                            let rounded = HugeCache::rounded_size(size);
                            let hit = cached.range((rounded, 0)..).next().copied().filter(|&(s, _)| s - rounded <= rounded / 8);
                            let p = cache.allocate(size, 64).unwrap();
                            let segment = match hit {
                                Some(key) => {
                                    prop_assert_eq!(p.as_ptr() as usize, key.1);
                                    cached.remove(&key);
                                    key.0
                                }
                                None => {
                                    let mut released = 0;
                                    while released < rounded {
                                        let Some(largest) = cached.pop_last() else { break };
                                        released += largest.0;
                                    }
                                    rounded
                                }
                            };
                            set.insert(p.as_ptr() as usize, size);
                            seed += 1;
                            // SAFETY: a live block of `size` bytes.
                            unsafe { fill(p.as_ptr(), size, seed) };
                            live.push((p, size, segment, seed));
                        }
                        Op::Free(i) if !live.is_empty() => {
                            let (p, size, segment, seed) = live.swap_remove(i % live.len());
                            // SAFETY: live, filled with `seed`.
                            unsafe { check(p.as_ptr(), size, seed) };
                            set.remove(p.as_ptr() as usize);
                            cache.deallocate(p).unwrap();
                            cached.insert((segment, p.as_ptr() as usize));
                        }
                        Op::BadFree(i, off) if !live.is_empty() => {
                            let before = cache.stats();
                            let p = live[i % live.len()].0;
                            prop_assert!(cache.release(p.as_ptr() as usize + off, true).is_err());
                            prop_assert_eq!(cache.stats(), before);
                        }
                        Op::Trim => {
                            cache.trim();
                            cached.clear();
                        }
                        _ => {}
                    }
                    let s = cache.stats();
                    let live_bytes: usize = live.iter().map(|l| l.2).sum();
                    let cached_bytes: usize = cached.iter().map(|c| c.0).sum();
                    prop_assert_eq!(s.usage.allocated_bytes, live_bytes);
                    prop_assert_eq!(s.usage.requested_bytes, live.iter().map(|l| l.1).sum::<usize>());
                    prop_assert_eq!(s.usage.reserved_bytes, live_bytes + cached_bytes);
                    prop_assert_eq!((s.live_segments, s.cached_segments), (live.len(), cached.len()));
                }
                for (p, size, _, seed) in live {
                    // SAFETY: live, filled with `seed`.
                    unsafe { check(p.as_ptr(), size, seed) };
                    cache.deallocate(p).unwrap();
                }
                cache.trim();
                prop_assert_eq!(cache.stats().usage.reserved_bytes, 0);
            }
        }
    }
}
