//! [`MeteredUpstream`]: counts what any upstream hands out and enforces a limit on
//! reserved bytes.

use super::{AddressSpace, Upstream, UpstreamError};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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
