//! The manager's own counters, and the totals of bytes users hold now.

use super::Inner;
use crate::observe::stats::Totals;
use crate::tiers::contract::Resized;
use crate::tiers::slab::EngineStats;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Bytes users hold: the locked tiers add each block, the engine's heaps publish
    /// theirs at slow paths.
    pub(super) totals: Arc<Totals>,
    pub(super) retries: AtomicU64,
    pub(super) ooms: AtomicU64,
    pub(super) arena_bytes: AtomicUsize,
}

impl Counters {
    #[inline]
    pub(super) fn on_alloc(&self, block: usize, requested: usize) {
        self.totals.add(block as isize, requested as isize);
    }

    #[inline]
    pub(super) fn on_free(&self, block: usize, requested: usize) {
        self.totals.add(-(block as isize), -(requested as isize));
    }

    /// A block of a locked tier resized in place (`resized`), now requested for
    /// `requested` bytes.
    pub(super) fn on_resize(&self, resized: Resized, requested: usize) {
        let before = resized.before;
        self.totals.add(
            resized.block_size as isize - before.block_size as isize,
            requested as isize - before.requested as isize,
        );
    }
}

impl Inner {
    /// (allocated, requested) bytes held by users now: the shared totals plus what
    /// heaps have not published yet.
    pub(super) fn current_totals(&self) -> (usize, usize) {
        self.current_totals_with(&self.engine.stats())
    }

    pub(super) fn current_totals_with(&self, engine: &EngineStats) -> (usize, usize) {
        let (allocated, requested) = self.counters.totals.current();
        (
            allocated.wrapping_add(engine.pending.0).max(0) as usize,
            requested.wrapping_add(engine.pending.1).max(0) as usize,
        )
    }
}
