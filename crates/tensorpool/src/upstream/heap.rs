//! [`HeapUpstream`]: regions from the global Rust allocator.

use super::{Upstream, UpstreamError};
use std::ptr::NonNull;

/// Regions from the global Rust allocator.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapUpstream;

// SAFETY: `std::alloc::alloc` returns a fresh block of exactly the layout's size and
// alignment, owned by the caller until `dealloc` with the same layout.
unsafe impl Upstream for HeapUpstream {
    fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>, UpstreamError> {
        let layout = std::alloc::Layout::from_size_align(size.max(1), align)
            .map_err(|_| UpstreamError::OutOfMemory { size })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        NonNull::new(ptr).ok_or(UpstreamError::OutOfMemory { size })
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: the caller passes back the size and alignment of the allocation,
        // which formed a valid layout then.
        unsafe {
            let layout = std::alloc::Layout::from_size_align_unchecked(size.max(1), align);
            std::alloc::dealloc(ptr.as_ptr(), layout)
        }
    }

    fn name(&self) -> &str {
        "heap"
    }
}
