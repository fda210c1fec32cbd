//! [`MeteredUpstream`]: counts what any upstream hands out and gives back, and
//! enforces a limit on resident bytes.

use super::{AddressSpace, Upstream, UpstreamError};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts what an upstream hands out and gives back, and optionally enforces a limit
/// on resident bytes.
///
/// The manager puts one of these in front of its source; its counters are the
/// manager's `reserved_bytes` (regions and commits taken), `resident_bytes` (that,
/// less the pages released in place, [`Upstream::release_pages`]), their peaks,
/// upstream call counts and what was released. The limit applies to resident bytes:
/// released pages no longer count against it, and count again when reused.
#[derive(Debug)]
pub struct MeteredUpstream {
    inner: Arc<dyn Upstream>,
    /// `usize::MAX` for none; changeable while the manager runs.
    limit: AtomicUsize,
    reserved: AtomicUsize,
    resident: AtomicUsize,
    peak: AtomicUsize,
    allocs: AtomicU64,
    frees: AtomicU64,
    /// Bytes given back to the system (regions, decommits, released pages), and the
    /// calls that did it.
    released: AtomicU64,
    releases: AtomicU64,
    /// Bytes made resident so far: regions and commits taken, released pages taken
    /// back into use.
    acquired: AtomicU64,
}

impl MeteredUpstream {
    /// Wraps `inner`, refusing any region that would bring the resident bytes above
    /// `limit`.
    pub fn new(inner: Arc<dyn Upstream>, limit: Option<usize>) -> Self {
        MeteredUpstream {
            inner,
            limit: AtomicUsize::new(limit.unwrap_or(usize::MAX)),
            reserved: AtomicUsize::new(0),
            resident: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            released: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            acquired: AtomicU64::new(0),
        }
    }

    /// Bytes currently handed out (regions and committed address space).
    pub fn reserved_bytes(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// [`reserved_bytes`](Self::reserved_bytes) less the pages released in place and
    /// not reused since: the memory the system backs.
    pub fn resident_bytes(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }

    /// The most `reserved_bytes` at once.
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

    /// Bytes given back to the system so far (regions, decommits, released pages),
    /// and the calls that gave them.
    pub fn released(&self) -> (u64, u64) {
        (
            self.released.load(Ordering::Relaxed),
            self.releases.load(Ordering::Relaxed),
        )
    }

    /// Bytes made resident so far: regions and commits taken, and released pages
    /// taken back into use (soon after a release, a sign that it came too early).
    pub fn acquired_bytes(&self) -> u64 {
        self.acquired.load(Ordering::Relaxed)
    }

    /// The limit on resident bytes.
    pub fn limit(&self) -> Option<usize> {
        match self.limit.load(Ordering::Relaxed) {
            usize::MAX => None,
            limit => Some(limit),
        }
    }

    /// Sets the limit on resident bytes (it refuses later growth; memory already
    /// resident stays).
    pub fn set_limit(&self, limit: Option<usize>) {
        self.limit
            .store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Starts a new peak from the current reservation.
    pub fn reset_peak(&self) {
        self.peak.store(self.reserved_bytes(), Ordering::Relaxed);
    }
}

// SAFETY: regions come from `inner` unchanged; the counters do not touch memory.
unsafe impl Upstream for MeteredUpstream {
    fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>, UpstreamError> {
        self.take(size)?;
        match self.inner.allocate(size, align) {
            Ok(ptr) => {
                self.took(size);
                Ok(ptr)
            }
            Err(e) => {
                self.resident.fetch_sub(size, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.inner.deallocate(ptr, size, align) };
        self.gave_back(size, size);
    }

    unsafe fn release_pages(&self, ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        let done = unsafe { self.inner.release_pages(ptr, len) };
        if done {
            self.resident.fetch_sub(len, Ordering::Relaxed);
            self.note_release(len);
        }
        done
    }

    fn reuse_pages(&self, len: usize, within_limit: bool) -> Result<(), UpstreamError> {
        if within_limit {
            self.admit(len)?;
            self.acquired.fetch_add(len as u64, Ordering::Relaxed);
        } else {
            self.resident.fetch_add(len, Ordering::Relaxed);
        }
        self.inner.reuse_pages(len, within_limit).inspect_err(|_| {
            self.resident.fetch_sub(len, Ordering::Relaxed);
        })
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

    /// Counts `size` more resident bytes if the limit allows (two threads cannot both
    /// pass the check: the bytes are counted by the check).
    fn admit(&self, size: usize) -> Result<(), UpstreamError> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.resident
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                r.checked_add(size).filter(|&total| total <= limit)
            })
            .map(|_| ())
            .map_err(|resident| UpstreamError::LimitReached {
                size,
                reserved: resident,
                limit,
            })
    }

    /// Counts `size` more reserved (and resident) bytes if the limit allows.
    fn take(&self, size: usize) -> Result<(), UpstreamError> {
        self.admit(size)
    }

    fn took(&self, size: usize) {
        self.acquired.fetch_add(size as u64, Ordering::Relaxed);
        let now = self.reserved.fetch_add(size, Ordering::Relaxed) + size;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.allocs.fetch_add(1, Ordering::Relaxed);
    }

    /// `size` reserved bytes given back, `resident` of them resident.
    fn gave_back(&self, size: usize, resident: usize) {
        self.reserved.fetch_sub(size, Ordering::Relaxed);
        self.resident.fetch_sub(resident, Ordering::Relaxed);
        self.frees.fetch_add(1, Ordering::Relaxed);
        self.note_release(size);
    }

    fn note_release(&self, bytes: usize) {
        self.released.fetch_add(bytes as u64, Ordering::Relaxed);
        self.releases.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the inner source's address space unchanged; committed bytes
// are counted as reserved, and commits beyond the limit are refused before the call.
unsafe impl AddressSpace for MeteredUpstream {
    fn reserve(&self, size: usize) -> Result<NonNull<u8>, UpstreamError> {
        self.inner_space().reserve(size)
    }

    fn reservation_cap(&self) -> usize {
        self.inner_space().reservation_cap()
    }

    unsafe fn commit(&self, ptr: NonNull<u8>, len: usize) -> Result<(), UpstreamError> {
        self.take(len)?;
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        match unsafe { self.inner_space().commit(ptr, len) } {
            Ok(()) => {
                self.took(len);
                Ok(())
            }
            Err(e) => {
                self.resident.fetch_sub(len, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.inner_space().decommit(ptr, len) };
        // Callers count released pages in the range resident again first
        // (`reuse_pages`), so that the whole range comes off both counts.
        self.gave_back(len, len);
    }

    unsafe fn unreserve(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.inner_space().unreserve(ptr, size) }
    }
}
