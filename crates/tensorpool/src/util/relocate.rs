//! Moving a block of an [`Allocator`] to a new one: what `grow` and `shrink` do
//! where the block cannot stay (the manager's and the arena's, each after its own
//! in-place attempt).
//!
//! ```ignore
//! // In `Allocator::grow`, once the block could not grow where it is:
//! unsafe { relocate(self, ptr, old_layout, new_layout, false) }
//! ```

use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::Layout;
use std::ptr::NonNull;

/// Allocates a block for `new` from `alloc` (zeroed if `zeroed`, so that bytes past
/// the old ones read zero), copies the bytes both blocks hold, and frees the block at
/// `ptr`. On failure the old block stays as it was.
///
/// # Safety
///
/// As for [`Allocator::grow`]: `ptr` is a live block of `alloc` allocated with
/// `old`.
pub(crate) unsafe fn relocate<A: Allocator + ?Sized>(
    alloc: &A,
    ptr: NonNull<u8>,
    old: Layout,
    new: Layout,
    zeroed: bool,
) -> Result<NonNull<[u8]>, AllocError> {
    let moved = match zeroed {
        true => alloc.allocate_zeroed(new)?,
        false => alloc.allocate(new)?,
    };
    // SAFETY: `ptr` holds `old.size()` live bytes (the caller's contract) and `moved`
    // is a fresh block of `new.size()`: distinct, and at least the copied length
    // each; `ptr` is freed with the layout it was allocated with.
    unsafe {
        std::ptr::copy_nonoverlapping(
            ptr.as_ptr(),
            moved.cast::<u8>().as_ptr(),
            old.size().min(new.size()),
        );
        alloc.deallocate(ptr, old);
    }
    Ok(moved)
}
