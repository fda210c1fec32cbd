//! [`MmapUpstream`]: regions from anonymous `mmap`, reserved address space for
//! expandable segments, huge pages where they help.

use super::{page_size, AddressSpace, Upstream, UpstreamError, HUGE_PAGE_SIZE};
#[cfg(unix)]
use crate::util::rlimit::{soft_limit, Resource};
use std::ptr::NonNull;

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
        // Charged to the system's commit limit (no MAP_NORESERVE), as glibc's
        // regions are: under the kernel's default heuristic, a request no memory and
        // swap could back fails here, not later in a page fault that kills the
        // process. (Expandable segments reserve address space, uncharged, and their
        // commits are bounded by the manager's limits instead.)
        // SAFETY: an anonymous private mapping with no address hint touches no
        // existing memory.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
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

    unsafe fn release_pages(&self, ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the caller passes a page-aligned range of our own mappings that
        // holds nothing in use; MADV_DONTNEED drops its pages now (resident memory
        // falls at once, as users read it), and the private anonymous mapping reads
        // as zero on the next touch. (MADV_FREE would leave the pages resident until
        // the system runs short, which is what users complain of.)
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) == 0 }
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
    /// An eighth of the soft limit on the address space (`ulimit -v`), if one is
    /// set: a program under 1 GB keeps 7/8 of it for its libraries and mappings
    /// (the first reservation took the largest power of two that fit, 512 MiB of
    /// 1 GB, and NumPy's own 488 MiB array then failed).
    fn reservation_cap(&self) -> usize {
        let Some(limit) = soft_limit(Resource::AddressSpace) else {
            return usize::MAX;
        };
        let share = usize::try_from(limit / 8).unwrap_or(usize::MAX);
        (share / HUGE_PAGE_SIZE * HUGE_PAGE_SIZE).max(HUGE_PAGE_SIZE)
    }

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
