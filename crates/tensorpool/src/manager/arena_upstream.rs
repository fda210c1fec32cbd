//! The upstream of arenas made by the manager: their chunks are typed blocks of it.

use super::Inner;
use crate::error::{Error, OomCause, OutOfMemory};
use crate::upstream::{Upstream, UpstreamError};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Chunks of arenas made by [`MemoryManager::arena`], as typed blocks of the manager.
#[derive(Debug)]
pub(super) struct ArenaUpstream {
    pub(super) manager: Arc<Inner>,
}

// SAFETY: each region is a live block of the manager, exclusively the arena's until
// the arena passes it back, and the arena holds the manager alive until then.
unsafe impl Upstream for ArenaUpstream {
    fn allocate(
        &self,
        size: usize,
        align: usize,
    ) -> std::result::Result<NonNull<u8>, UpstreamError> {
        match self.manager.serve(size, align, false) {
            Ok((ptr, _)) => {
                self.manager.counters.arena_bytes.fetch_add(size, Relaxed);
                Ok(ptr)
            }
            Err(Error::OutOfMemory(report)) if report.cause == OomCause::LimitReached => {
                Err(UpstreamError::LimitReached {
                    size,
                    reserved: report.reserved_bytes,
                    limit: report.limit.unwrap_or(0),
                })
            }
            Err(_) => Err(UpstreamError::OutOfMemory { size }),
        }
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        self.manager.counters.arena_bytes.fetch_sub(size, Relaxed);
        let freed = self.manager.reclaim_typed(ptr, size, align);
        debug_assert!(
            freed.is_ok(),
            "an arena chunk was not a live block: {freed:?}"
        );
    }

    fn name(&self) -> &str {
        "manager"
    }

    fn complete_report(&self, report: &mut OutOfMemory) {
        self.manager.fill_report(report);
    }
}
