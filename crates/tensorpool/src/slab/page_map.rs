//! The page map: from any address to the slab that holds it, in three loads and
//! without a lock.
//!
//! A sizeless free (`free_raw`, NumPy's `free`, C's `free`) gets nothing but an
//! address. The engine finds the slab of that address here: a radix tree over the
//! 47-bit user address space with one entry per 4 KiB page, three levels of 2048,
//! 4096 and 4096 entries. Nodes are made on first use (zeroed, so every entry starts
//! null) and never freed before the map, so a reader that races with a writer reads
//! either the old or the new entry, both valid pointers or null.
//!
//! Entries are written by the owner of a slab when it takes or gives back the pages
//! (a slow path) and read by anyone (`Acquire`, pairing with the owner's `Release`).
//! An entry that a reader sees after the slab was given back points to a slab record
//! that is still allocated (records live as long as the engine, see `slab`), whose
//! generation check turns the stale read into a refusal.
//!
//! ```text
//! address bits  46..36   35..24   23..12   11..0
//!               top      middle   leaf     offset in the page
//! ```

use super::slab::Slab;
use std::alloc::Layout;
use std::sync::atomic::{
    AtomicPtr,
    Ordering::{AcqRel, Acquire, Release},
};

/// The granule of the map: slabs start and end on these boundaries.
pub(crate) const PAGE_SHIFT: u32 = 12;
/// Bytes per map entry.
pub(crate) const PAGE: usize = 1 << PAGE_SHIFT;

const LEAF_BITS: u32 = 12;
const MID_BITS: u32 = 12;
const TOP_BITS: u32 = 11;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const MID_LEN: usize = 1 << MID_BITS;
const TOP_LEN: usize = 1 << TOP_BITS;

/// Addresses at or above this are outside the user address space of x86-64 and
/// AArch64 with 4-level page tables: never ours.
pub(crate) const ADDRESS_LIMIT: usize = 1 << (PAGE_SHIFT + LEAF_BITS + MID_BITS + TOP_BITS);

struct Leaf {
    slabs: [AtomicPtr<Slab>; LEAF_LEN],
}

struct Mid {
    leaves: [AtomicPtr<Leaf>; MID_LEN],
}

/// Address → slab, lock-free for readers.
pub(crate) struct PageMap {
    top: Box<[AtomicPtr<Mid>]>,
}

impl std::fmt::Debug for PageMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageMap").finish_non_exhaustive()
    }
}

/// A zeroed node: every entry a null pointer.
fn zeroed_node<T>() -> *mut T {
    let layout = Layout::new::<T>();
    // SAFETY: the node types have a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    ptr
}

/// The child at `slot`, made (zeroed) if there is none yet.
fn child<T>(slot: &AtomicPtr<T>) -> &T {
    let mut node = slot.load(Acquire);
    if node.is_null() {
        let fresh = zeroed_node::<T>();
        node = match slot.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: `fresh` came from `zeroed_node` with this type's layout and
                // was never shared: another writer installed its node first.
                unsafe { std::alloc::dealloc(fresh.cast(), Layout::new::<T>()) };
                winner
            }
        };
    }
    // SAFETY: nodes are installed once, never replaced, and freed only when the map
    // is dropped, which needs `&mut self`; all-zero bytes are valid atomic pointers.
    unsafe { &*node }
}

impl PageMap {
    pub(crate) fn new() -> Self {
        PageMap {
            top: (0..TOP_LEN)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        }
    }

    fn split(addr: usize) -> (usize, usize, usize) {
        let page = addr >> PAGE_SHIFT;
        (
            page >> (LEAF_BITS + MID_BITS),
            (page >> LEAF_BITS) & (MID_LEN - 1),
            page & (LEAF_LEN - 1),
        )
    }

    /// The slab holding `addr`, or null: three dependent loads.
    #[inline]
    pub(crate) fn get(&self, addr: usize) -> *const Slab {
        if addr >= ADDRESS_LIMIT {
            return std::ptr::null();
        }
        let (t, m, l) = Self::split(addr);
        let mid = self.top[t].load(Acquire);
        if mid.is_null() {
            return std::ptr::null();
        }
        // SAFETY: installed nodes stay valid until the map is dropped.
        let leaf = unsafe { &*mid }.leaves[m].load(Acquire);
        if leaf.is_null() {
            return std::ptr::null();
        }
        // SAFETY: as above.
        unsafe { &*leaf }.slabs[l].load(Acquire)
    }

    /// Points every page of `[start, start + len)` at `slab` (null to clear). `start`
    /// and `len` are page-aligned and below [`ADDRESS_LIMIT`].
    pub(crate) fn set(&self, start: usize, len: usize, slab: *const Slab) {
        debug_assert!(start % PAGE == 0 && len % PAGE == 0 && start + len <= ADDRESS_LIMIT);
        let mut addr = start;
        while addr < start + len {
            let (t, m, l) = Self::split(addr);
            let leaf = child(&child(&self.top[t]).leaves[m]);
            // The rest of this leaf, or of the range, whichever ends first.
            let n = (LEAF_LEN - l).min((start + len - addr) >> PAGE_SHIFT);
            for entry in &leaf.slabs[l..l + n] {
                entry.store(slab.cast_mut(), Release);
            }
            addr += n << PAGE_SHIFT;
        }
    }
}

impl Drop for PageMap {
    fn drop(&mut self) {
        for mid in self.top.iter_mut() {
            let mid = *mid.get_mut();
            if mid.is_null() {
                continue;
            }
            // SAFETY: `mid` was made by `zeroed_node::<Mid>` and is freed once, here;
            // `&mut self` proves no reader is left.
            unsafe {
                for leaf in (*mid).leaves.iter_mut() {
                    let leaf = *leaf.get_mut();
                    if !leaf.is_null() {
                        std::alloc::dealloc(leaf.cast(), Layout::new::<Leaf>());
                    }
                }
                std::alloc::dealloc(mid.cast(), Layout::new::<Mid>());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_set_and_cleared_across_leaves() {
        let map = PageMap::new();
        let a = std::ptr::NonNull::<Slab>::dangling().as_ptr().cast_const();
        // A range that crosses a leaf boundary (16 MiB) and a middle one (64 GiB).
        let start = (64usize << 30) - (3 << 12);
        map.set(start, 6 << 12, a);
        assert!(map.get(start - 1).is_null());
        for page in 0..6 {
            assert_eq!(map.get(start + (page << 12) + 17), a);
        }
        assert!(map.get(start + (6 << 12)).is_null());
        map.set(start + (2 << 12), 2 << 12, std::ptr::null());
        assert_eq!(map.get(start + (1 << 12)), a);
        assert!(map.get(start + (2 << 12)).is_null());
        assert!(map.get(start + (3 << 12) + 4095).is_null());
        assert_eq!(map.get(start + (4 << 12)), a);
        assert!(map.get(ADDRESS_LIMIT).is_null());
        assert!(map.get(usize::MAX).is_null());
    }
}
