//! allocator-api2's `Allocator` for `&MemoryManager`: the hot paths inline, the rest
//! out of line.

use super::MemoryManager;
use crate::tiers::contract::zero_sized;
use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::Layout;
use std::ptr::NonNull;

impl MemoryManager {
    #[cold]
    #[inline(never)]
    pub(super) fn allocate_cold(
        &self,
        layout: Layout,
    ) -> std::result::Result<NonNull<u8>, AllocError> {
        self.allocate_typed(layout).map_err(|_| AllocError)
    }

    #[cold]
    #[inline(never)]
    pub(super) fn deallocate_cold(&self, ptr: NonNull<u8>, layout: Layout) {
        let freed = self.inner.reclaim_typed(ptr, layout.size(), layout.align());
        debug_assert!(
            freed.is_ok(),
            "Allocator::deallocate broke its contract: {freed:?}"
        );
    }
}

// SAFETY: blocks come from the tiers, which hand out disjoint memory of at least the
// requested size and alignment; they stay valid until deallocated or until the last
// handle to the manager is dropped, and every `&MemoryManager` or clone keeps it.
unsafe impl Allocator for MemoryManager {
    #[inline(always)]
    fn allocate(&self, layout: Layout) -> std::result::Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(zero_sized(layout.align()));
        }
        let ptr = match self.inner.serve_hot(layout.size(), layout.align(), false) {
            Some((ptr, _)) => ptr,
            None => self.allocate_cold(layout)?,
        };
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> std::result::Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(zero_sized(layout.align()));
        }
        // Blocks from pages fresh from the system are not written again.
        let ptr = self.try_allocate_zeroed(layout).map_err(|_| AllocError)?;
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    #[inline(always)]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0
            || self
                .inner
                .reclaim_typed_hot(ptr, layout.size(), layout.align())
        {
            return;
        }
        self.deallocate_cold(ptr, layout);
    }
}
