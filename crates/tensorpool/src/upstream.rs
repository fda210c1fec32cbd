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

use crate::bytes::format_bytes;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Why an upstream source refused a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The source itself has no memory left (the OS refused the mapping).
    OutOfMemory {
        /// Bytes asked for.
        size: usize,
    },
    /// Handing out the region would exceed a limit on reserved bytes.
    LimitReached {
        /// Bytes asked for.
        size: usize,
        /// Bytes reserved before the request.
        reserved: usize,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UpstreamError::OutOfMemory { size } => {
                write!(
                    f,
                    "the upstream source could not provide {}",
                    format_bytes(size)
                )
            }
            UpstreamError::LimitReached {
                size,
                reserved,
                limit,
            } => write!(
                f,
                "{} more would exceed the limit of {} ({} reserved)",
                format_bytes(size),
                format_bytes(limit),
                format_bytes(reserved)
            ),
        }
    }
}

/// A source of memory regions.
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

    /// Whether fresh regions (and fresh commits of address space) are zero-filled,
    /// as anonymous mappings are: then a block carved from memory never handed out
    /// before needs no zeroing (`calloc`, `zeros`).
    fn zeroed(&self) -> bool {
        false
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

/// Regions from anonymous private `mmap`.
///
/// Sizes are rounded up to whole pages. Regions of [`HUGE_PAGE_SIZE`] or more start on
/// a 2 MiB boundary (the mapping is made larger and the excess unmapped), and when
/// `huge_pages` is set they are advised with `MADV_HUGEPAGE`, so that the kernel backs
/// them with transparent huge pages where it can.
#[cfg(unix)]
#[derive(Debug, Clone, Copy)]
pub struct MmapUpstream {
    huge_pages: bool,
}

#[cfg(unix)]
impl MmapUpstream {
    /// A source that advises huge pages on large regions when `huge_pages` is set.
    pub fn new(huge_pages: bool) -> Self {
        MmapUpstream { huge_pages }
    }

    fn mapped_len(size: usize) -> usize {
        crate::limits::round_up(size.max(1), page_size())
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

// SAFETY: a fresh anonymous private mapping is zero-filled memory that nobody else
// uses; we hand out exactly `[start, start + len)` of it, and unmap exactly that.
#[cfg(unix)]
unsafe impl Upstream for MmapUpstream {
    fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>, UpstreamError> {
        let page = page_size();
        let len = Self::mapped_len(size);
        let align = if len >= HUGE_PAGE_SIZE {
            align.max(HUGE_PAGE_SIZE)
        } else {
            align.max(page)
        };
        // mmap returns page-aligned addresses, so `align - page` extra bytes always
        // contain an aligned start.
        let total = len
            .checked_add(align - page)
            .ok_or(UpstreamError::OutOfMemory { size })?;
        // SAFETY: an anonymous private mapping with no address hint touches no
        // existing memory.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(UpstreamError::OutOfMemory { size });
        }
        let base = raw as usize;
        let start = crate::limits::round_up(base, align);
        let head = start - base;
        let tail = total - head - len;
        // SAFETY: `[base, start)` and `[start + len, base + total)` are page-aligned
        // parts of the mapping just made, which nobody else knows about.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            if self.huge_pages && len >= HUGE_PAGE_SIZE {
                // Advice only: a kernel without THP refuses it, which changes nothing.
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            }
        }
        // `start` is inside a successful mapping, so it is not null.
        NonNull::new(start as *mut u8).ok_or(UpstreamError::OutOfMemory { size })
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, _align: usize) {
        // SAFETY: the caller returns a region from `allocate` with its size; we
        // mapped exactly `mapped_len(size)` bytes from `ptr`.
        unsafe {
            libc::munmap(ptr.as_ptr().cast(), Self::mapped_len(size));
        }
    }

    fn name(&self) -> &str {
        "mmap"
    }

    fn zeroed(&self) -> bool {
        true
    }

    fn address_space(&self) -> Option<&dyn AddressSpace> {
        Some(self)
    }
}

#[cfg(unix)]
impl MmapUpstream {
    /// Maps `[ptr, ptr + len)` afresh with `prot`, replacing what was there.
    ///
    /// # Safety
    ///
    /// The range belongs to one of our reservations and holds nothing in use.
    unsafe fn remap(&self, ptr: NonNull<u8>, len: usize, prot: libc::c_int) -> bool {
        // SAFETY: MAP_FIXED over our own reservation replaces only our pages.
        let raw = unsafe {
            libc::mmap(
                ptr.as_ptr().cast(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return false;
        }
        if self.huge_pages {
            // SAFETY: advice on our own mapping; a refusal changes nothing.
            unsafe { libc::madvise(raw, len, libc::MADV_HUGEPAGE) };
        }
        true
    }
}

// SAFETY: reservations are fresh PROT_NONE mappings, aligned by unmapping the excess;
// commits make parts of them readable and writable (zero-filled on first touch);
// decommits replace parts with fresh PROT_NONE mappings, dropping their pages.
#[cfg(unix)]
unsafe impl AddressSpace for MmapUpstream {
    fn reserve(&self, size: usize) -> Result<NonNull<u8>, UpstreamError> {
        let total = size
            .checked_add(HUGE_PAGE_SIZE)
            .ok_or(UpstreamError::OutOfMemory { size })?;
        // SAFETY: a new anonymous mapping with no address hint.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(UpstreamError::OutOfMemory { size });
        }
        let base = raw as usize;
        let start = crate::limits::round_up(base, HUGE_PAGE_SIZE);
        // SAFETY: unmapping the unaligned head and the excess tail of our mapping.
        unsafe {
            if start > base {
                libc::munmap(raw, start - base);
            }
            let tail = base + total - (start + size);
            if tail > 0 {
                libc::munmap((start + size) as *mut libc::c_void, tail);
            }
            if self.huge_pages {
                libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
            }
        }
        NonNull::new(start as *mut u8).ok_or(UpstreamError::OutOfMemory { size })
    }

    unsafe fn commit(&self, ptr: NonNull<u8>, len: usize) -> Result<(), UpstreamError> {
        // SAFETY: the caller passes an uncommitted, page-aligned part of a reservation.
        let ok = unsafe {
            libc::mprotect(ptr.as_ptr().cast(), len, libc::PROT_READ | libc::PROT_WRITE) == 0
        };
        if ok {
            Ok(())
        } else {
            Err(UpstreamError::OutOfMemory { size: len })
        }
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: the caller passes a committed part of a reservation holding nothing
        // in use. If the remap fails, the pages stay mapped: safe, merely not released.
        unsafe {
            if !self.remap(ptr, len, libc::PROT_NONE) {
                libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED);
            }
        }
    }

    unsafe fn unreserve(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: the caller passes a whole reservation of ours.
        unsafe { libc::munmap(ptr.as_ptr().cast(), size) };
    }
}

/// Counts what an upstream hands out and optionally enforces a limit on reserved bytes.
///
/// The manager puts one of these in front of its source; its counters are the
/// manager's `reserved_bytes`, `peak_reserved_bytes` and upstream call counts.
#[derive(Debug)]
pub struct MeteredUpstream {
    inner: Arc<dyn Upstream>,
    limit: Option<usize>,
    reserved: AtomicUsize,
    peak: AtomicUsize,
    allocs: AtomicU64,
    frees: AtomicU64,
}

impl MeteredUpstream {
    /// Wraps `inner`, refusing any region that would bring the reserved bytes above
    /// `limit`.
    pub fn new(inner: Arc<dyn Upstream>, limit: Option<usize>) -> Self {
        MeteredUpstream {
            inner,
            limit,
            reserved: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }

    /// Bytes currently handed out.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The most bytes handed out at once.
    pub fn peak_reserved_bytes(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Regions handed out so far.
    pub fn num_allocs(&self) -> u64 {
        self.allocs.load(Ordering::Relaxed)
    }

    /// Regions given back so far.
    pub fn num_frees(&self) -> u64 {
        self.frees.load(Ordering::Relaxed)
    }

    /// The limit on reserved bytes.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Starts a new peak from the current reservation.
    pub fn reset_peak(&self) {
        self.peak.store(self.reserved_bytes(), Ordering::Relaxed);
    }
}

// SAFETY: regions come from `inner` unchanged; the counters do not touch memory.
unsafe impl Upstream for MeteredUpstream {
    fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>, UpstreamError> {
        let before = self.take(size)?;
        match self.inner.allocate(size, align) {
            Ok(ptr) => {
                self.took(before, size);
                Ok(ptr)
            }
            Err(e) => {
                self.reserved.fetch_sub(size, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.inner.deallocate(ptr, size, align) };
        self.gave_back(size);
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn zeroed(&self) -> bool {
        self.inner.zeroed()
    }

    fn address_space(&self) -> Option<&dyn AddressSpace> {
        self.inner
            .address_space()
            .map(|_| self as &dyn AddressSpace)
    }
}

impl MeteredUpstream {
    fn inner_space(&self) -> &dyn AddressSpace {
        self.inner
            .address_space()
            .expect("address_space() is Some only when the inner source has one")
    }

    /// Counts `size` more reserved bytes if the limit allows; returns the bytes
    /// reserved before.
    fn take(&self, size: usize) -> Result<usize, UpstreamError> {
        let limit = self.limit.unwrap_or(usize::MAX);
        // Reserve the bytes first so that two threads cannot both pass the check.
        self.reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                r.checked_add(size).filter(|&total| total <= limit)
            })
            .map_err(|reserved| UpstreamError::LimitReached {
                size,
                reserved,
                limit,
            })
    }

    fn took(&self, before: usize, size: usize) {
        self.peak.fetch_max(before + size, Ordering::Relaxed);
        self.allocs.fetch_add(1, Ordering::Relaxed);
    }

    fn gave_back(&self, size: usize) {
        self.reserved.fetch_sub(size, Ordering::Relaxed);
        self.frees.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the inner source's address space unchanged; committed bytes
// are counted as reserved, and commits beyond the limit are refused before the call.
unsafe impl AddressSpace for MeteredUpstream {
    fn reserve(&self, size: usize) -> Result<NonNull<u8>, UpstreamError> {
        self.inner_space().reserve(size)
    }

    unsafe fn commit(&self, ptr: NonNull<u8>, len: usize) -> Result<(), UpstreamError> {
        let before = self.take(len)?;
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        match unsafe { self.inner_space().commit(ptr, len) } {
            Ok(()) => {
                self.took(before, len);
                Ok(())
            }
            Err(e) => {
                self.reserved.fetch_sub(len, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.inner_space().decommit(ptr, len) };
        self.gave_back(len);
    }

    unsafe fn unreserve(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.inner_space().unreserve(ptr, size) }
    }
}

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
