//! The page map: from any address to the slab that holds it, in three loads and
//! without a lock.
//!
//! A sizeless free (`free_raw`, NumPy's `free`, C's `free`) gets nothing but an
//! address. The engine finds the slab of that address here: a radix tree over the
//! 47-bit user address space with one entry per 4 KiB page, three levels of 2048,
//! 4096 and 4096 entries. Nodes are made on first use and never freed before the
//! map, so a reader that races with a writer reads either the old or the new entry,
//! both valid pointers or null. Until then an entry points at a static empty node
//! (all null below it), so a lookup is three loads without a null check.
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
use crate::util::sync::{CacheLine, Mutex, MutexGuard};
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

/// The leaf of every middle entry without one of its own: all null. Readers go
/// through it without a branch; writers replace it (never write into it).
static EMPTY_LEAF: Leaf = Leaf {
    slabs: [const { AtomicPtr::new(std::ptr::null_mut()) }; LEAF_LEN],
};

/// The middle node of every top entry without one of its own: all [`EMPTY_LEAF`].
/// Also what a new middle node starts as (a copy).
static EMPTY_MID: Mid = Mid {
    leaves: [const { AtomicPtr::new((&raw const EMPTY_LEAF).cast_mut()) }; MID_LEN],
};

/// What a new map's top starts as (a copy): every entry [`EMPTY_MID`].
static EMPTY_TOP: [AtomicPtr<Mid>; TOP_LEN] =
    [const { AtomicPtr::new((&raw const EMPTY_MID).cast_mut()) }; TOP_LEN];

/// A node that stands for "no entries below": what a fresh slot points to.
trait Node: Sized + 'static {
    fn empty() -> *mut Self;
    /// A new node, with every entry empty.
    fn new_boxed() -> Box<Self>;
    fn installed(node: *mut Self) -> Installed;
}

impl Node for Leaf {
    fn empty() -> *mut Self {
        (&raw const EMPTY_LEAF).cast_mut()
    }

    fn new_boxed() -> Box<Self> {
        let mut leaf = Box::<Leaf>::new_uninit();
        // SAFETY: the write zeroes the whole fresh allocation, and a null
        // `AtomicPtr` is all zero bits: a `Leaf` with every entry null.
        unsafe {
            leaf.as_mut_ptr().write_bytes(0, 1);
            leaf.assume_init()
        }
    }

    fn installed(node: *mut Self) -> Installed {
        Installed::Leaf(node)
    }
}

impl Node for Mid {
    fn empty() -> *mut Self {
        (&raw const EMPTY_MID).cast_mut()
    }

    fn new_boxed() -> Box<Self> {
        copy_of(&EMPTY_MID)
    }

    fn installed(node: *mut Self) -> Installed {
        Installed::Mid(node)
    }
}

/// A boxed copy of a static node, in one memcpy (an entry at a time would cost
/// seconds per node under Miri).
fn copy_of<T>(node: &'static T) -> Box<T> {
    let mut fresh = Box::<T>::new_uninit();
    // SAFETY: the statics copied are never written (writers replace entries that
    // point to them, never entries in them), so reading their bytes races with
    // nothing; an `AtomicPtr` is plain bytes with provenance, which the copy keeps,
    // and the copy initialises every byte of `fresh`.
    unsafe {
        std::ptr::copy_nonoverlapping(std::ptr::from_ref(node), fresh.as_mut_ptr(), 1);
        fresh.assume_init()
    }
}

/// Address → slab, lock-free for readers.
#[repr(C)]
pub(crate) struct PageMap {
    /// Read by every free; written never after the map is made.
    top: Box<[AtomicPtr<Mid>; TOP_LEN]>,
    /// The writers' lock starts a line of its own, away from `top` (and from what
    /// precedes the map in its owner).
    _writers_line: [CacheLine; 0],
    /// Every node installed, to free when the map goes (a writer's slow path).
    installed: Mutex<Vec<Installed>>,
}

/// A node of the map, made by `Box::into_raw` and installed in an entry.
enum Installed {
    Mid(*mut Mid),
    Leaf(*mut Leaf),
}

// SAFETY: an `Installed` is the map's ownership of a node that any thread may read
// through the entries (nodes hold atomics only); it is freed once, in the map's
// `drop`, on whichever thread drops the map.
unsafe impl Send for Installed {}

impl std::fmt::Debug for PageMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageMap").finish_non_exhaustive()
    }
}

/// The child at `slot`, made (and recorded in `installed`) if it is still the
/// empty node.
fn child<'a, T: Node>(slot: &'a AtomicPtr<T>, installed: &Mutex<Vec<Installed>>) -> &'a T {
    let mut node = slot.load(Acquire);
    if node == T::empty() {
        let fresh = Box::into_raw(T::new_boxed());
        node = match slot.compare_exchange(T::empty(), fresh, AcqRel, Acquire) {
            Ok(_) => {
                installed.lock().push(T::installed(fresh));
                fresh
            }
            Err(winner) => {
                // SAFETY: `fresh` came from `Box::into_raw` and was never shared:
                // another writer installed its node first.
                drop(unsafe { Box::from_raw(fresh) });
                winner
            }
        };
    }
    // SAFETY: nodes are installed once, never replaced, and freed only when the map
    // is dropped, which needs `&mut self` (the empty nodes are statics).
    unsafe { &*node }
}

/// The map's writers' lock, held across `fork()` (`manager::fork`).
pub(crate) struct PageMapHold<'a>(#[allow(dead_code)] MutexGuard<'a, Vec<Installed>>);

impl PageMap {
    /// Takes the writers' lock, to hold across `fork()`.
    pub(crate) fn hold_for_fork(&self) -> PageMapHold<'_> {
        PageMapHold(self.installed.lock())
    }

    /// Where the writers' part starts: what precedes it only readers touch.
    #[cfg(test)]
    pub(crate) const WRITERS_AT: usize = std::mem::offset_of!(PageMap, installed);

    pub(crate) fn new() -> Self {
        PageMap {
            top: copy_of(&EMPTY_TOP),
            _writers_line: [],
            installed: Mutex::new(Vec::new()),
        }
    }

    #[inline(always)]
    fn split(addr: usize) -> (usize, usize, usize) {
        let page = addr >> PAGE_SHIFT;
        (
            page >> (LEAF_BITS + MID_BITS),
            (page >> LEAF_BITS) & (MID_LEN - 1),
            page & (LEAF_LEN - 1),
        )
    }

    /// The slab holding `addr`, or null: three dependent loads, no other branch
    /// than the address limit (missing nodes are the shared empty ones).
    #[inline(always)]
    pub(crate) fn get(&self, addr: usize) -> *const Slab {
        if addr >= ADDRESS_LIMIT {
            return std::ptr::null();
        }
        let (t, m, l) = Self::split(addr);
        let mid = self.top[t & (TOP_LEN - 1)].load(Acquire);
        // SAFETY: entries point to installed nodes, valid until the map is dropped,
        // or to the static empty ones. The entry is reached by a place projection,
        // so only it is borrowed, not the whole node (which Miri would retag).
        let leaf = unsafe { (*mid).leaves[m].load(Acquire) };
        // SAFETY: as above.
        unsafe { (*leaf).slabs[l].load(Acquire) }
    }

    /// Points every page of `[start, start + len)` at `slab` (null to clear). `start`
    /// and `len` are page-aligned and below [`ADDRESS_LIMIT`].
    pub(crate) fn set(&self, start: usize, len: usize, slab: *const Slab) {
        debug_assert!(start % PAGE == 0 && len % PAGE == 0 && start + len <= ADDRESS_LIMIT);
        let mut addr = start;
        while addr < start + len {
            let (t, m, l) = Self::split(addr);
            let mid = child(&self.top[t], &self.installed);
            let leaf = child(&mid.leaves[m], &self.installed);
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
        for node in self.installed.get_mut().drain(..) {
            // Each installed node came from `Box::into_raw` in `child` and is recorded
            // once; `&mut self` proves no reader is left.
            match node {
                // SAFETY: as said above, for a middle node.
                Installed::Mid(mid) => drop(unsafe { Box::from_raw(mid) }),
                // SAFETY: as said above, for a leaf.
                Installed::Leaf(leaf) => drop(unsafe { Box::from_raw(leaf) }),
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
