//! Upstream: where the regions that strategies carve up come from.
//!
//! Strategies never call `malloc` or `mmap` themselves; they ask an [`Upstream`] for
//! large regions (pool chunks, arena chunks, best-fit segments) and give them back
//! whole. Two sources are built in:
//!
//! - [`HeapUpstream`]: the global Rust allocator (portable, and what runs under Miri);
//! - [`MmapUpstream`]: anonymous `mmap`, aligning regions of 2 MiB and more to 2 MiB
//!   boundaries and advising transparent huge pages on them, so that a large tensor
//!   is backed by few TLB entries and faults in 2 MiB at a time.
//!
//! A device source (GPU memory) is another implementation of the same trait: the
//! strategies keep their metadata outside the managed memory and never touch it.
//! [`MeteredUpstream`] wraps any source to count what it hands out and to enforce a
//! limit on reserved bytes.
//!
//! ```
//! use std::sync::Arc;
//! use tensorpool::upstream::{default_upstream, MeteredUpstream, Upstream};
//!
//! let metered = MeteredUpstream::new(default_upstream(), Some(8 << 20));
//! let region = metered.allocate(4 << 20, 4096).unwrap();
//! assert_eq!(metered.reserved_bytes(), 4 << 20);
//! assert!(metered.allocate(8 << 20, 4096).is_err()); // over the 8 MiB limit
//! // SAFETY: `region` came from `metered.allocate` with this size and alignment.
//! unsafe { metered.deallocate(region, 4 << 20, 4096) };
//! assert_eq!(metered.reserved_bytes(), 0);
//! ```

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// A region of memory taken from an upstream: where it starts and how long it is.
///
/// Strategies keep their regions as `Region`s and derive every block pointer from
/// [`at`](Self::at), so that pointers keep the provenance of the upstream's
/// allocation (Miri checks this). A `Region` is only an address: holding one does not
/// access the memory, which is why it is `Send` and `Sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Region is an address and a length; it never reads or writes the memory,
// so moving or sharing it between threads cannot race. Whoever dereferences a pointer
// derived from it keeps the usual obligations.
unsafe impl Send for Region {}
// SAFETY: as for Send: `&Region` gives access to nothing but two integers.
unsafe impl Sync for Region {}

impl Region {
    /// A region of `len` bytes at `ptr`.
    pub fn new(ptr: NonNull<u8>, len: usize) -> Self {
        Region { ptr, len }
    }

    /// The start address.
    #[inline]
    pub fn start(&self) -> usize {
        self.ptr.as_ptr().addr()
    }

    /// The length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start pointer, as the upstream returned it.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// A pointer `offset` bytes into the region, with the region's provenance.
    #[inline]
    pub fn at(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(
            offset < self.len,
            "offset {offset} outside a region of {}",
            self.len
        );
        // SAFETY: `offset < len`, so the result stays inside the region's allocation,
        // and an in-bounds offset from a non-null pointer is non-null.
        unsafe { self.ptr.add(offset) }
    }
}

/// Size from which regions are aligned to 2 MiB and may use transparent huge pages.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

pub use crate::error::UpstreamError;

/// A source of memory regions.
///
/// A manager calls its upstream in the middle of its own work (a thread's slab half
/// made, a tier's lock held), so an upstream must not allocate from or free into
/// the manager it serves: that call would run inside the one that called the
/// upstream (debug builds stop with "an operation
/// inside another"; before they did, such a call deadlocked). Its own bookkeeping
/// may use any other allocator, another manager included.
///
/// # Safety
///
/// An implementation promises that a region returned by [`allocate`](Self::allocate)
/// is `size` bytes long, aligned to `align`, valid for reads and writes, and used by
/// nobody else until it is passed to [`deallocate`](Self::deallocate). Strategies
/// build safe APIs (arena references, tensors) on that promise.
pub unsafe trait Upstream: Send + Sync + fmt::Debug {
    /// A region of `size` bytes aligned to `align` (a power of two, at least 1).
    fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>, UpstreamError>;

    /// Returns a region.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by `self.allocate(size, align)` with these `size` and
    /// `align`, and has not been deallocated since.
    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize);

    /// A short name for reports.
    fn name(&self) -> &str;

    /// Completes the out-of-memory report of a strategy that draws from this source
    /// with what the source knows beyond the strategy: a manager's totals, for an
    /// arena the manager made (its own counters said "0 B allocated" while the
    /// manager held megabytes). By default the report stays as the strategy made it.
    fn complete_report(&self, report: &mut crate::error::OutOfMemory) {
        let _ = report;
    }

    /// Whether fresh regions (and fresh commits of address space) are zero-filled,
    /// as anonymous mappings are: then a block carved from memory never handed out
    /// before needs no zeroing (`calloc`, `zeros`).
    fn zeroed(&self) -> bool {
        false
    }

    /// Gives the memory behind `[ptr, ptr + len)` back to the system while the
    /// range stays usable: it reads as zero when next touched, and costs a page
    /// fault per page then. Returns whether it could; a source that cannot (the
    /// global heap) changes nothing and returns `false`.
    ///
    /// # Safety
    ///
    /// The range is page-aligned, inside a region of this source or a committed part
    /// of one of its reservations, and holds nothing anyone will read.
    unsafe fn release_pages(&self, ptr: NonNull<u8>, len: usize) -> bool {
        let _ = (ptr, len);
        false
    }

    /// Counts `len` bytes of released pages as resident again: they are about to be
    /// touched (refused where that would exceed a limit, if `within_limit`), or given
    /// back whole (never refused).
    fn reuse_pages(&self, len: usize, within_limit: bool) -> Result<(), UpstreamError> {
        let _ = (len, within_limit);
        Ok(())
    }

    /// The source's address-space interface, if it can reserve address space and
    /// back it with memory piece by piece (mmap can; the global heap cannot).
    fn address_space(&self) -> Option<&dyn AddressSpace> {
        None
    }
}

/// Address space reserved once and backed with memory piece by piece.
///
/// The best-fit tier uses it for *expandable segments*, as PyTorch's allocator does
/// with `expandable_segments`: one large reservation whose committed part grows and
/// shrinks at the top, so that a free block at the top is extended rather than a new
/// segment taken, and blocks are never cut off from each other by segment ends.
///
/// # Safety
///
/// [`reserve`](Self::reserve) returns `size` bytes of address space aligned to 2 MiB,
/// which nobody else uses until [`unreserve`](Self::unreserve); after
/// [`commit`](Self::commit) of a range succeeds, the range is valid for reads and
/// writes until it is decommitted or unreserved.
pub unsafe trait AddressSpace: Send + Sync {
    /// Reserves `size` bytes (a multiple of 2 MiB) of address space, with no memory
    /// behind it yet.
    fn reserve(&self, size: usize) -> Result<NonNull<u8>, UpstreamError>;

    /// The most address space one reservation should take (the caller reserves
    /// less, or what one request needs): a share of a limit on the process's
    /// address space, which reservations count against although nothing backs
    /// them, so that the program keeps room for its own mappings. No limit: any.
    /// A wrapper of another address space forwards it.
    fn reservation_cap(&self) -> usize {
        usize::MAX
    }

    /// Backs `[ptr, ptr + len)` with memory.
    ///
    /// # Safety
    ///
    /// The range is page-aligned, inside one reservation, and not committed.
    unsafe fn commit(&self, ptr: NonNull<u8>, len: usize) -> Result<(), UpstreamError>;

    /// Gives the memory behind `[ptr, ptr + len)` back; the range stays reserved.
    ///
    /// # Safety
    ///
    /// The range is page-aligned, committed, inside one reservation, and holds
    /// nothing anyone will read.
    unsafe fn decommit(&self, ptr: NonNull<u8>, len: usize);

    /// Releases a whole reservation.
    ///
    /// # Safety
    ///
    /// `ptr` and `size` are those of one `reserve`, and nothing in it is committed.
    unsafe fn unreserve(&self, ptr: NonNull<u8>, size: usize);
}

/// The upstream tensorpool uses when none is given: [`MmapUpstream`] with huge pages
/// advised on Unix, [`HeapUpstream`] elsewhere and under Miri.
pub fn default_upstream() -> Arc<dyn Upstream> {
    #[cfg(all(unix, not(miri)))]
    {
        Arc::new(MmapUpstream::new(true))
    }
    #[cfg(not(all(unix, not(miri))))]
    {
        Arc::new(HeapUpstream)
    }
}

/// The operating system's page size.
pub fn page_size() -> usize {
    #[cfg(all(unix, not(miri)))]
    {
        static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        // SAFETY: sysconf has no preconditions.
        *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => 4096,
        })
    }
    #[cfg(not(all(unix, not(miri))))]
    {
        4096
    }
}

/// Whether the page holding `addr` is mapped in this process now (by anyone). Where
/// the system cannot say (Miri, not Unix): `true`.
pub(crate) fn mapped(addr: usize) -> bool {
    #[cfg(all(unix, not(miri)))]
    {
        let page = page_size();
        let mut resident = 0u8;
        // SAFETY: `mincore` reads the page tables of one page-aligned page and writes
        // one byte into `resident`; it fails with ENOMEM, touching nothing, where the
        // page is not mapped. The page is never dereferenced (an address without
        // provenance is what the call takes).
        let r = unsafe {
            libc::mincore(
                std::ptr::without_provenance_mut(addr & !(page - 1)),
                page,
                &mut resident,
            )
        };
        r == 0
    }
    #[cfg(not(all(unix, not(miri))))]
    {
        let _ = addr;
        true
    }
}

mod heap;
mod metered;
#[cfg(unix)]
mod mmap;

pub use heap::HeapUpstream;
pub use metered::MeteredUpstream;
#[cfg(unix)]
pub use mmap::MmapUpstream;

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(up: &dyn Upstream, size: usize, align: usize) {
        let p = up.allocate(size, align).unwrap();
        assert_eq!(p.as_ptr() as usize % align, 0);
        // SAFETY: the region is `size` bytes, ours until deallocated.
        unsafe {
            p.as_ptr().write_bytes(0xA5, size);
            assert_eq!(*p.as_ptr().add(size - 1), 0xA5);
            up.deallocate(p, size, align);
        }
    }

    #[test]
    fn heap_regions_are_aligned_and_usable() {
        exercise(&HeapUpstream, 100, 64);
        exercise(&HeapUpstream, 8192, 4096);
    }

    #[test]
    #[cfg(unix)]
    #[cfg_attr(miri, ignore = "Miri does not model mmap")]
    fn mmap_aligns_large_regions_to_huge_pages() {
        let up = MmapUpstream::new(true);
        exercise(&up, 5000, 64);
        exercise(&up, 64 << 10, 16 << 10);
        let p = up.allocate(3 << 20, 64).unwrap();
        assert_eq!(p.as_ptr() as usize % HUGE_PAGE_SIZE, 0);
        // SAFETY: as allocated.
        unsafe { up.deallocate(p, 3 << 20, 64) };
    }

    #[test]
    #[cfg(unix)]
    #[cfg_attr(miri, ignore = "Miri does not model mmap")]
    fn mmap_refuses_impossible_sizes() {
        let up = MmapUpstream::new(false);
        assert_eq!(
            up.allocate(1 << 62, 64),
            Err(UpstreamError::OutOfMemory { size: 1 << 62 })
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    #[cfg_attr(miri, ignore = "Miri does not model mmap")]
    fn mmap_refuses_more_than_the_machine_could_ever_back() {
        // As glibc's malloc: a region is charged to the system's commit limit, so
        // under the kernel's default heuristic a request beyond memory and swap
        // fails at once (NumPy's `np.zeros(2**46)` is a MemoryError) instead of
        // succeeding and killing the process when its pages are touched. With
        // overcommit set to always (mode 1) the kernel grants anything: nothing to
        // check there.
        let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
        if mode.trim() == "1" {
            return;
        }
        let up = MmapUpstream::new(false);
        assert_eq!(
            up.allocate(1 << 46, 64),
            Err(UpstreamError::OutOfMemory { size: 1 << 46 })
        );
    }

    #[test]
    fn metered_counts_and_limits() {
        let m = MeteredUpstream::new(Arc::new(HeapUpstream), Some(1000));
        let a = m.allocate(600, 8).unwrap();
        let err = m.allocate(600, 8).unwrap_err();
        assert_eq!(
            err,
            UpstreamError::LimitReached {
                size: 600,
                reserved: 600,
                limit: 1000
            }
        );
        assert!(err.to_string().contains("limit"));
        let b = m.allocate(400, 8).unwrap();
        assert_eq!(
            (m.reserved_bytes(), m.peak_reserved_bytes(), m.num_allocs()),
            (1000, 1000, 2)
        );
        // SAFETY: both came from `m` with these sizes.
        unsafe {
            m.deallocate(a, 600, 8);
            m.deallocate(b, 400, 8);
        }
        assert_eq!((m.reserved_bytes(), m.num_frees()), (0, 2));
        m.reset_peak();
        assert_eq!(m.peak_reserved_bytes(), 0);
    }

    #[test]
    fn metered_gives_back_the_reservation_when_the_source_fails() {
        #[derive(Debug)]
        struct Refuses;
        // SAFETY: never hands out a region.
        unsafe impl Upstream for Refuses {
            fn allocate(&self, size: usize, _: usize) -> Result<NonNull<u8>, UpstreamError> {
                Err(UpstreamError::OutOfMemory { size })
            }
            unsafe fn deallocate(&self, _: NonNull<u8>, _: usize, _: usize) {
                unreachable!("nothing was handed out")
            }
            fn name(&self) -> &str {
                "refuses"
            }
        }
        let m = MeteredUpstream::new(Arc::new(Refuses), None);
        assert!(m.allocate(10, 8).is_err());
        assert_eq!(
            (m.reserved_bytes(), m.peak_reserved_bytes(), m.num_allocs()),
            (0, 0, 0)
        );
    }
}
