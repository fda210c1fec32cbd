//! `stats()`: the engine's, the tiers' and the manager's counts gathered into one
//! [`Stats`].

use super::Inner;
use crate::observe::stats::{fragmentation, ClassStats, Stats, Tier, TierStats, Usage};
use std::sync::atomic::Ordering::Relaxed;

impl Inner {
    pub(super) fn stats(&self) -> Stats {
        let engine = self.engine.stats();
        let e = &self.engine;
        let mut classes = Vec::new();
        let mut tiers = Vec::new();
        let mut slab_bytes = 0usize;
        for (tier, range) in [
            (Tier::Pool, e.first_pool..e.classes.len()),
            (Tier::Small, 0..e.first_pool),
        ] {
            if range.is_empty() {
                continue;
            }
            let counts = &engine.tiers[crate::tiers::slab::heap::tier_index(tier)];
            let mut usage = Usage {
                allocated_bytes: counts.bytes as usize,
                requested_bytes: counts.requested as usize,
                num_allocs: counts.allocs,
                num_frees: counts.frees,
                ..Usage::default()
            };
            let mut largest = 0;
            for class in range {
                let (c, f) = (&e.classes[class], &engine.classes[class]);
                usage.allocated_blocks += f.live as usize;
                usage.reserved_bytes += f.slab_bytes as usize;
                usage.misses += f.misses;
                if f.slots > f.live {
                    largest = largest.max(c.block_size);
                }
                if f.slabs > 0 || f.live > 0 {
                    classes.push(ClassStats {
                        block_size: c.block_size,
                        allocated_blocks: f.live as usize,
                        free_blocks: (f.slots - f.live) as usize,
                        slabs: f.slabs as usize,
                        reserved_bytes: f.slab_bytes as usize,
                    });
                }
            }
            usage.num_upstream_allocs = usage.misses;
            usage.hits = usage.num_allocs - usage.misses.min(usage.num_allocs);
            let tier_index = crate::tiers::slab::heap::tier_index(tier);
            (usage.peak_allocated_bytes, usage.peak_reserved_bytes) = self
                .counters
                .totals
                .tier_peaks(tier_index, (usage.allocated_bytes, usage.reserved_bytes));
            // Slabs are resident; their pages go back through the large tier.
            usage.resident_bytes = usage.reserved_bytes;
            slab_bytes += usage.reserved_bytes;
            tiers.push(TierStats {
                tier,
                usage,
                largest_free_block: largest,
            });
        }
        let large = e.large.stats();
        let spans = &engine.tiers[crate::tiers::slab::heap::LARGE];
        let mut large_usage = large.usage;
        large_usage.allocated_bytes += spans.bytes as usize;
        large_usage.requested_bytes += spans.requested as usize;
        large_usage.allocated_blocks += (spans.allocs - spans.frees) as usize;
        large_usage.num_allocs += spans.allocs;
        large_usage.num_frees += spans.frees;
        large_usage.hits += spans.allocs - engine.span_misses.min(spans.allocs);
        large_usage.misses += engine.span_misses;
        // The best-fit tier's reserved bytes include the slabs' pages.
        large_usage.reserved_bytes = large_usage.reserved_bytes.saturating_sub(slab_bytes);
        large_usage.resident_bytes = large_usage.resident_bytes.saturating_sub(slab_bytes);
        large_usage.peak_allocated_bytes = large_usage
            .peak_allocated_bytes
            .max(large_usage.allocated_bytes);
        tiers.push(TierStats {
            tier: Tier::Large,
            usage: large_usage,
            largest_free_block: large.largest_free_block.max(engine.largest_cached_span),
        });
        let huge = self.huge.stats();
        tiers.push(TierStats {
            tier: Tier::Huge,
            usage: huge.usage,
            largest_free_block: huge.largest_cached,
        });
        let mut total = Usage::default();
        for t in &tiers {
            total.accumulate(&t.usage);
        }
        let c = &self.counters;
        let (allocated, requested) = self.current_totals_with(&engine);
        c.totals.note_peaks(allocated, requested);
        let (peak_allocated, peak_requested) = c.totals.peaks();
        let reserved = self.metered.reserved_bytes();
        let cached = reserved.saturating_sub(allocated);
        let largest = self.largest_free_block(&engine);
        let (released_bytes, num_releases) = self.metered.released();
        Stats {
            allocated_bytes: allocated,
            peak_allocated_bytes: peak_allocated,
            requested_bytes: requested,
            peak_requested_bytes: peak_requested,
            reserved_bytes: reserved,
            peak_reserved_bytes: self.metered.peak_reserved_bytes(),
            resident_bytes: self.metered.resident_bytes(),
            released_bytes,
            num_releases,
            last_release_ms_ago: self.release.since_last().map(|d| d.as_millis() as u64),
            cached_bytes: cached,
            thread_cached_bytes: engine.cached_bytes,
            internal_waste_bytes: allocated.saturating_sub(requested),
            allocated_blocks: total.allocated_blocks,
            num_allocs: total.num_allocs,
            num_frees: total.num_frees,
            num_alloc_retries: c.retries.load(Relaxed),
            num_ooms: c.ooms.load(Relaxed),
            num_invalid_frees: engine.late_refusals,
            num_upstream_allocs: self.metered.num_allocs(),
            num_upstream_frees: self.metered.num_frees(),
            largest_free_block: largest,
            fragmentation: fragmentation(largest, cached),
            arena_bytes: c.arena_bytes.load(Relaxed),
            memory_limit: self.metered.limit(),
            soft_limit: self.release.soft_limit(),
            release_delay_ms: self.release.delay().map(|d| d.as_millis() as u64),
            effective_release_delay_ms: self
                .release
                .effective_delay()
                .map(|d| d.as_millis() as u64),
            num_guard_violations: self
                .debug
                .as_ref()
                .map_or(0, |t| t.violations().len() as u64),
            tiers,
            classes,
            threads: engine.threads,
        }
    }
}
