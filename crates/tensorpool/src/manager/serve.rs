//! The allocation path past the public handle: the hot path, debug guards, the retry
//! after a trim, routing by size, and the out-of-memory report's view of the manager.

use super::Inner;
use crate::error::{Error, OutOfMemory, Result};
use crate::limits::{validate, MAX_ALIGN};
use crate::observe::debug::{self, Record, GUARD};
use crate::tiers::contract::BlockTier;
use crate::tiers::slab::page_map::PAGE;
use crate::tiers::slab::{EngineStats, Grant};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;

/// Where a request goes when no explicit pool takes it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    /// A size class of the engine.
    Class(usize),
    /// A cached large block of the engine, of this many pages.
    Span(usize),
    /// The best-fit tier, under its lock.
    Large,
    Huge,
}

impl Inner {
    #[inline]
    pub(super) fn route(&self, size: usize, align: usize) -> Route {
        if let Some(class) = self.engine.class_for(size, align) {
            return Route::Class(class);
        }
        match self.engine.span_for(size, align) {
            Some(pages) => Route::Span(pages),
            None if size <= self.config.huge_threshold => Route::Large,
            None => Route::Huge,
        }
    }

    /// The hot path of small allocations: a slot of the calling thread's current
    /// slab of the class (and whether it is known zero), with no lock and no atomic
    /// read-modify-write; with explicit pools, of the smallest pool that fits. `None`
    /// sends the request down the full path (debug mode, a size or alignment no
    /// class or pool serves, a slab to change, a pool's current slab run out). `align` is a power of two (a
    /// `Layout`'s, or checked by [`serve_hot_raw`](Self::serve_hot_raw)).
    #[inline(always)]
    pub(super) fn serve_hot(
        &self,
        size: usize,
        align: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        debug_assert!(align.is_power_of_two());
        match self.table_class(size, align) {
            Some(class) => self.engine.grant_hot(class, size, raw),
            None => match self.hot_span_pages(size, align) {
                // A block the thread's cache holds; else the full path (which binds
                // a heap, waits for a stopper, looks in the cache once more after
                // collecting other threads' frees, or makes a span).
                Some(pages) => self.engine.grant_span_leaf(pages, size, raw),
                None => self.serve_hot_medium(size, align, raw),
            },
        }
    }

    /// The class of `size` at `align` from the engine's class table, where the hot
    /// paths serve it: one comparison for a size of 0 and one beyond the table (0
    /// when the hot paths may not serve: debug mode, explicit pools), one for the
    /// alignment, and a byte of the table.
    #[inline(always)]
    pub(super) fn table_class(&self, size: usize, align: usize) -> Option<usize> {
        if size.wrapping_sub(1) < self.table_limit && align <= self.table_align {
            // SAFETY: `1 <= size <= table_limit`, the engine's table limit.
            return Some(unsafe { self.engine.table_class(size) });
        }
        None
    }

    /// The pages of the span that serves `size` at `align` when only a span can (a
    /// size past the classes, up to the largest span, at most a page's alignment;
    /// the hot paths serve it), in two comparisons.
    #[inline(always)]
    pub(super) fn hot_span_pages(&self, size: usize, align: usize) -> Option<usize> {
        (size.wrapping_sub(self.span_floor + 1) < self.span_sizes && align <= PAGE)
            .then(|| size.div_ceil(PAGE))
    }

    /// [`serve_hot`](Self::serve_hot) of a size in the class table from the calling
    /// thread's current slab of the class, calling nothing (so that no register is
    /// saved around a call): `None`, nothing changed, for anything else (then
    /// `serve_hot` and the full path). The hot path of allocations; `G` is the
    /// block alone or with its zero flag (see `Grant`).
    #[inline(always)]
    pub(super) fn serve_leaf<G: Grant>(&self, size: usize, align: usize, raw: bool) -> Option<G> {
        let class = self.table_class(size, align)?;
        self.engine.grant_leaf(class, size, raw)
    }

    /// [`serve_hot`](Self::serve_hot) for the raw API, whose alignment no `Layout`
    /// vouches for: one that is not a power of two goes to the full path, which
    /// refuses it.
    #[inline(always)]
    pub(super) fn serve_hot_raw(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        if !align.is_power_of_two() {
            return None;
        }
        self.serve_hot(size, align, true)
    }

    /// [`serve_hot`](Self::serve_hot) past the class table: the larger classes and
    /// spans.
    #[inline]
    fn serve_hot_medium(
        &self,
        size: usize,
        align: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        if !self.fast {
            if !self.pools_hot {
                return None;
            }
            return match self.pool_for(size, align) {
                Some(pool) => self.engine.grant_hot(pool, size, raw),
                // No pool fits: the full path would route it as without pools.
                None => self.serve_hot_routed(size, align, raw),
            };
        }
        self.serve_hot_routed(size, align, raw)
    }

    /// The hot path by [`route`](Self::route): the class or the span that serves
    /// `size` at `align`.
    #[inline]
    fn serve_hot_routed(
        &self,
        size: usize,
        align: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        // One comparison for a size of 0 and one beyond any limit (whose rounding
        // would overflow): both go to the full path, which says why.
        if align > MAX_ALIGN || size.wrapping_sub(1) >= crate::MAX_ALLOCATION_SIZE {
            return None;
        }
        match self.engine.class_for(size, align) {
            Some(class) => self.engine.grant_hot(class, size, raw),
            None => {
                let pages = self
                    .engine
                    .span_for(size, align.max(self.config.alignment))?;
                self.engine.grant_span_hot(pages, size, raw)
            }
        }
    }

    /// The smallest explicit pool whose blocks hold `size` bytes at `align`, as
    /// [`serve_pools`](Self::serve_pools) tries them: the hot paths take a block of
    /// it from the calling thread's slabs (`Engine::grant_hot`, which also moves to
    /// another slab of the pool that has a free slot). When the thread has none, the
    /// full path makes a slab (while the pool's capacity allows) or takes the next
    /// pool, then the classes.
    #[inline]
    fn pool_for(&self, size: usize, align: usize) -> Option<usize> {
        if size == 0 {
            return None;
        }
        let engine = &self.engine;
        // Pools serve at least the manager's alignment (`serve_pools` compares with
        // it raised to that, which a pool's own alignment already is).
        (engine.first_pool..engine.classes.len()).find(|&c| {
            let pool = &engine.classes[c];
            pool.block_size >= size && pool.align >= align
        })
    }

    pub(super) fn serve(
        &self,
        size: usize,
        align: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        let served = match &self.debug {
            None => self.serve_retrying(size, align, raw),
            Some(tracker) => {
                validate(size, align)?;
                let (ptr, _) = self.serve_retrying(guarded(size)?, align, raw)?;
                self.track(tracker, ptr, size, raw);
                // Debug mode fills fresh blocks: they are never zero.
                Ok((ptr, false))
            }
        };
        self.after_slow_path();
        served
    }

    /// What the slow paths of allocation and free do besides: the release policy's
    /// pass when one is due, the soft limit, and the background thread of a forked
    /// child that allocates.
    pub(super) fn after_slow_path(&self) {
        self.tick_slow_path();
        if self.background {
            super::releaser::ensure_running();
        }
        self.release_over_soft_limit();
        self.release_if_due();
    }

    /// A typed block of `size` bytes from the explicit pools only (the smallest whose
    /// blocks fit, or the next when it is full), with debug mode's guards; `None`
    /// when no pool fits or every one that fits is full.
    pub(super) fn serve_from_pools(
        &self,
        size: usize,
        align: usize,
    ) -> Result<Option<NonNull<u8>>> {
        if self.pools_hot && align.is_power_of_two() {
            let hot = self.pool_for(size, align);
            if let Some((ptr, _)) = hot.and_then(|pool| self.engine.grant_hot(pool, size, false)) {
                return Ok(Some(ptr));
            }
        }
        validate(size, align)?;
        let align = align.max(self.config.alignment);
        let Some(tracker) = &self.debug else {
            return Ok(self.serve_pools(size, align, false)?.map(|(p, _)| p));
        };
        let Some((ptr, _)) = self.serve_pools(guarded(size)?, align, false)? else {
            return Ok(None);
        };
        self.track(tracker, ptr, size, false);
        Ok(Some(ptr))
    }

    /// Debug mode: arms the guard bytes of a fresh block of `size` bytes (and its
    /// guard) and records it.
    fn track(&self, tracker: &debug::Tracker, ptr: NonNull<u8>, size: usize, raw: bool) {
        // SAFETY: a fresh block of `size + GUARD` bytes.
        unsafe { debug::arm(ptr, size, true) };
        let tier = self.tier_at(ptr.as_ptr().addr());
        tracker.insert(
            ptr.as_ptr().addr(),
            Record {
                size,
                tier,
                raw,
                site: debug::site(),
            },
        );
    }

    pub(super) fn serve_retrying(
        &self,
        size: usize,
        align: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        validate(size, align)?;
        let align = align.max(self.config.alignment);
        match self.serve_once(size, align, raw) {
            Err(Error::OutOfMemory(_)) => {
                // Give cached memory back and try once more, as PyTorch does.
                self.counters.retries.fetch_add(1, Relaxed);
                self.trim();
                self.serve_once(size, align, raw)
                    .map_err(|e| self.widen(e, size, align))
            }
            other => other,
        }
    }

    pub(super) fn serve_once(
        &self,
        size: usize,
        align: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        if let Some(served) = self.serve_pools(size, align, raw)? {
            return Ok(served);
        }
        let engine = &self.engine;
        match self.route(size, align) {
            Route::Class(class) => engine.grant(class, size, raw),
            Route::Span(pages) => engine.grant_span(pages, size, raw),
            Route::Large => {
                engine.before_tier_places();
                // The tier grows only after the calling thread gave back what it
                // keeps cached (as a new slab does): memory follows use.
                let grant = match engine.large.grant_cached(size, align, raw) {
                    Some(grant) => grant,
                    None if engine.release_current() > 0 => {
                        match engine.large.grant_cached(size, align, raw) {
                            Some(grant) => grant,
                            None => engine.large.grant(size, align, raw)?,
                        }
                    }
                    None => engine.large.grant(size, align, raw)?,
                };
                self.counters.on_alloc(grant.block_size, size);
                Ok((grant.ptr, grant.zeroed))
            }
            Route::Huge => {
                engine.before_tier_places();
                let grant = self.huge.grant(size, align, raw)?;
                self.counters.on_alloc(grant.block_size, size);
                Ok((grant.ptr, grant.zeroed))
            }
        }
    }

    /// A raw block placed as one of `room` bytes would be (room for `realloc` to grow
    /// into) but counted as the `size` bytes asked for, so that no statistic or
    /// peak sees the room as requested; `None` when it cannot be had at once (no
    /// trim, no retry: the caller then asks for `size` alone).
    pub(super) fn serve_with_room(
        &self,
        room: usize,
        size: usize,
        align: usize,
    ) -> Option<NonNull<u8>> {
        debug_assert!(size <= room && self.fast);
        validate(room, align).ok()?;
        let align = align.max(self.config.alignment);
        let engine = &self.engine;
        let served = match self.route(room, align) {
            // The class or span that serves `room`, with `size` its requested size.
            Route::Class(class) => engine.grant(class, size, true).ok().map(|g| g.0),
            Route::Span(pages) => engine.grant_span(pages, size, true).ok().map(|g| g.0),
            route @ (Route::Large | Route::Huge) => {
                let tier: &dyn BlockTier = match route {
                    Route::Large => &engine.large,
                    _ => &self.huge,
                };
                engine.before_tier_places();
                let grant = tier.grant(room, align, true).ok()?;
                let addr = grant.ptr.as_ptr().addr();
                // The tier counted `room` as requested: `size` it is, the block kept
                // whole (its next growths fill the room in place), unless the tier's
                // rounding made the block more than twice `size` (a huge segment is
                // whole 2 MiB pages): then it goes back, and the caller asks for
                // `size` alone.
                let kept = match route {
                    Route::Large => engine.large.keep_room(addr, size),
                    _ => self.huge.resize(addr, size, true).map(|r| r.block_size),
                };
                match kept {
                    Some(block_size) => {
                        self.counters.on_alloc(block_size, size);
                        Some(grant.ptr)
                    }
                    None => {
                        let _ = tier.release(addr, true);
                        None
                    }
                }
            }
        };
        self.after_slow_path();
        served
    }

    /// A block from the explicit pools: the smallest whose blocks fit first, the
    /// next when it is full; `None` when no pool fits or all that fit are full.
    fn serve_pools(
        &self,
        size: usize,
        align: usize,
        raw: bool,
    ) -> Result<Option<(NonNull<u8>, bool)>> {
        let engine = &self.engine;
        for class in engine.first_pool..engine.classes.len() {
            let pool = &engine.classes[class];
            if pool.block_size < size || pool.align < align {
                continue;
            }
            match engine.grant(class, size, raw) {
                Ok(served) => return Ok(Some(served)),
                // Full, or its free slots sit in other threads' empty slabs: those
                // go back to the pool first.
                Err(Error::OutOfMemory(_)) if engine.reclaim_pool(class) > 0 => {
                    match engine.grant(class, size, raw) {
                        Ok(served) => return Ok(Some(served)),
                        Err(Error::OutOfMemory(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                // Full: try the next pool.
                Err(Error::OutOfMemory(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Replaces a tier's view in an out-of-memory report with the request and the
    /// manager's totals.
    pub(super) fn widen(&self, e: Error, size: usize, align: usize) -> Error {
        match e {
            Error::OutOfMemory(mut report) => {
                // A tier may have failed while taking pages for a slab.
                report.requested = size;
                report.align = align;
                self.counters.ooms.fetch_add(1, Relaxed);
                self.fill_report(&mut report);
                Error::OutOfMemory(report)
            }
            other => other,
        }
    }

    /// Puts the manager's totals, limit and releases into an out-of-memory report.
    pub(super) fn fill_report(&self, report: &mut OutOfMemory) {
        let engine = self.engine.stats();
        let allocated = self.current_totals_with(&engine).0;
        let reserved = self.metered.reserved_bytes();
        report.allocated_bytes = allocated;
        report.reserved_bytes = reserved;
        report.cached_bytes = reserved.saturating_sub(allocated);
        report.largest_free_block = self.largest_free_block(&engine);
        report.limit = self.metered.limit();
        report.released_bytes = self.metered.released().0;
        report.last_release = self.release.since_last();
    }

    /// The largest block servable from cached memory without going upstream: the
    /// largest free block of the best-fit tier, a cached huge segment, or a class
    /// with free slots. The one rule for `stats()` and the out-of-memory report.
    pub(super) fn largest_free_block(&self, engine: &EngineStats) -> usize {
        let classes = self
            .engine
            .classes
            .iter()
            .zip(&engine.classes)
            .filter(|(_, f)| f.slots > f.live)
            .map(|(c, _)| c.block_size)
            .max()
            .unwrap_or(0);
        self.locked_tiers()
            .iter()
            .map(|tier| tier.largest_free_block())
            .fold(classes.max(engine.largest_cached_span), usize::max)
    }
}

/// A debug-mode block's size: `size` and its guard bytes.
fn guarded(size: usize) -> Result<usize> {
    size.checked_add(GUARD).ok_or(Error::SizeTooLarge {
        size,
        max: crate::MAX_ALLOCATION_SIZE,
    })
}
