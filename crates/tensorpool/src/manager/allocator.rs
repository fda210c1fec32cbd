//! allocator-api2's `Allocator` for `&MemoryManager`: the hot paths inline, the rest
//! out of line; and what the process-wide allocator (`crate::global`) asks of a
//! manager besides: a typed free that hands back addresses it does not hold.

use super::serve::Route;
use super::MemoryManager;
use crate::error::Result;
use crate::tiers::contract::zero_sized;
use crate::util::relocate::relocate;
use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::Layout;
use std::ptr::NonNull;

impl MemoryManager {
    /// [`Allocator::allocate`] past its leaf (the current slab of a class in the
    /// table): the other hot paths (a slab to change, larger classes, spans), then
    /// the full path. Not inlined, so that the leaf saves no register for it.
    #[inline(never)]
    pub(super) fn allocate_past_leaf(
        &self,
        layout: Layout,
    ) -> std::result::Result<NonNull<[u8]>, AllocError> {
        let ptr = match self.inner.serve_hot(layout.size(), layout.align(), false) {
            Some((ptr, _)) => ptr,
            None => self.allocate_typed(layout).map_err(|_| AllocError)?,
        };
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    /// Makes this the process-wide allocator's manager: its thread exits and
    /// background passes then mark the thread as inside it (`util::reentry`).
    pub(crate) fn mark_process_wide(&self) {
        self.inner
            .engine
            .process_wide
            .store(true, std::sync::atomic::Ordering::Relaxed);
        super::fork::hold_across_fork(self);
    }

    /// Frees the raw block at `ptr` if the hot path can (a live raw block of the
    /// calling thread's slabs); `false`, and nothing done, otherwise:
    /// [`free_raw`](Self::free_raw) then does the rest. What the C front tries before
    /// it saves `errno` for a slow path.
    #[inline]
    pub(crate) fn free_raw_hot(&self, ptr: *mut u8) -> bool {
        let inner = &*self.inner;
        (inner.fast || inner.pools_hot) && inner.engine.release_raw_leaf(ptr)
    }

    /// Whether `ptr` lies in memory the manager holds (a region of one of its tiers).
    pub(crate) fn holds(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owner_at(ptr.as_ptr().addr()).is_some()
    }

    /// Frees the typed block at `ptr`, allocated with `layout`, if the manager holds
    /// its address: `Ok(false)` (nothing done) when it does not, an error when the
    /// manager refuses the free (nothing changes then).
    #[inline]
    pub(crate) fn deallocate_if_held(&self, ptr: NonNull<u8>, layout: Layout) -> Result<bool> {
        if self
            .inner
            .reclaim_typed_hot(ptr, layout.size(), layout.align())
        {
            return Ok(true);
        }
        self.deallocate_if_held_cold(ptr, layout)
    }

    #[cold]
    #[inline(never)]
    fn deallocate_if_held_cold(&self, ptr: NonNull<u8>, layout: Layout) -> Result<bool> {
        if !self.holds(ptr) {
            return Ok(false);
        }
        self.inner
            .reclaim_typed(ptr, layout.size(), layout.align())
            .map(|()| true)
    }

    /// Resizes the typed block at `ptr`, allocated with `old`, in place to `new`'s
    /// size where its tier can: the best-fit and huge tiers (see
    /// [`BlockTier::resize`](crate::tiers::contract::BlockTier::resize)), and the
    /// engine for a block of the calling thread's slabs that stays in its size class
    /// (a slot holds the new size) or stays a large block (its pages may grow); the
    /// requested bytes follow the new size, as the free will count them with `new`.
    /// `false`, nothing changed, otherwise: another thread's engine block, one that
    /// would change class (the free looks for it in `new`'s), debug mode's and
    /// explicit pools' blocks, and a locked tier's block whose layout now maps to the
    /// engine's sizes (one shrunk that far): only the old layout's size says which
    /// tier may hold a block.
    pub(crate) fn resize_typed_in_place(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        let inner = &*self.inner;
        if !inner.fast
            || old.size() == 0
            || new.size() == 0
            || ptr.as_ptr().addr() % new.align() != 0
        {
            return false;
        }
        let route =
            |layout: Layout| inner.route(layout.size(), layout.align().max(inner.config.alignment));
        match (route(old), route(new)) {
            (Route::Large | Route::Huge, _) => {
                inner.resize_in_place(ptr.as_ptr(), new.size(), false)
            }
            (Route::Class(from), Route::Class(to)) if from != to => false,
            (Route::Class(_), Route::Class(_)) | (Route::Span(_), Route::Span(_)) => {
                inner.resize_engine_block(ptr.as_ptr(), new.size(), Some(old.size()))
            }
            _ => false,
        }
    }

    /// `Allocator`'s `grow`, `grow_zeroed` (`zeroed`) and `shrink`: in place where
    /// the block's tier can (see
    /// [`resize_typed_in_place`](Self::resize_typed_in_place)), else a move.
    ///
    /// # Safety
    ///
    /// `ptr` is a live typed block of this manager allocated with `old`.
    unsafe fn resize_typed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        zeroed: bool,
    ) -> std::result::Result<NonNull<[u8]>, AllocError> {
        if !self.resize_typed_in_place(ptr, old, new) {
            // SAFETY: by our caller's contract.
            return unsafe { relocate(self, ptr, old, new, zeroed) };
        }
        if zeroed && new.size() > old.size() {
            // SAFETY: the block holds `new.size()` bytes now.
            unsafe {
                ptr.as_ptr()
                    .add(old.size())
                    .write_bytes(0, new.size() - old.size())
            };
        }
        Ok(NonNull::slice_from_raw_parts(ptr, new.size()))
    }

    /// [`Allocator::deallocate`] past its leaf (the current slab of a class in the
    /// table): the calling thread's other slabs and spans, then the full path. Not
    /// inlined, as [`allocate_past_leaf`](Self::allocate_past_leaf).
    #[inline(never)]
    pub(super) fn deallocate_past_leaf(&self, ptr: NonNull<u8>, layout: Layout) {
        let inner = &*self.inner;
        let (size, align) = (layout.size(), layout.align());
        // A span's size: the span leaf, else the full path at once (the other hot
        // path would look the slab up again the same way).
        let hot = if inner.hot_span_pages(size, align).is_some() {
            inner.engine.release_span_leaf(ptr.as_ptr(), size)
        } else {
            inner.reclaim_typed_hot(ptr, size, align)
        };
        if hot {
            return;
        }
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
        match self
            .inner
            .serve_leaf::<NonNull<u8>>(layout.size(), layout.align(), false)
        {
            Some(ptr) => Ok(NonNull::slice_from_raw_parts(ptr, layout.size())),
            None => self.allocate_past_leaf(layout),
        }
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
                .reclaim_typed_leaf(ptr, layout.size(), layout.align())
        {
            return;
        }
        self.deallocate_past_leaf(ptr, layout);
    }

    /// In place where the best-fit or huge tier holds the block and can grow it
    /// (into a free block after it, or at the top of its segment); else a move.
    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> std::result::Result<NonNull<[u8]>, AllocError> {
        // SAFETY: by the caller's contract, a live block allocated with `old_layout`.
        unsafe { self.resize_typed(ptr, old_layout, new_layout, false) }
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> std::result::Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as in `grow`.
        unsafe { self.resize_typed(ptr, old_layout, new_layout, true) }
    }

    /// In place where the best-fit or huge tier holds the block and it stays at
    /// least half used; else a move.
    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> std::result::Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as in `grow`.
        unsafe { self.resize_typed(ptr, old_layout, new_layout, false) }
    }
}
