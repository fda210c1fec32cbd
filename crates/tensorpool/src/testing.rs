//! Helpers shared by the property tests of every strategy (compiled for tests only).

use proptest::test_runner::Config as ProptestConfig;
use std::collections::BTreeMap;
use tensorpool_testkit::{pattern, Coverage};

/// Property-test settings: many cases natively, a handful under Miri (which runs
/// code about a thousand times slower), and no failure files under Miri's isolation.
pub(crate) fn proptest_config(native_cases: u32) -> ProptestConfig {
    if cfg!(miri) {
        ProptestConfig {
            cases: 3,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    } else {
        ProptestConfig::with_cases(native_cases)
    }
}

/// Lengths of generated operation sequences: shorter under Miri.
pub(crate) fn ops_len(native: usize) -> std::ops::Range<usize> {
    1..if cfg!(miri) { native / 5 } else { native }
}

/// Every how many bytes a test reads a large block's contents: every byte natively,
/// a sample under Miri, which takes microseconds a byte.
pub(crate) const BYTE_STEP: usize = if cfg!(miri) { 61 } else { 1 };

/// The live blocks of a model: checks that no two overlap.
#[derive(Debug, Default)]
pub(crate) struct LiveSet {
    blocks: BTreeMap<usize, usize>,
}

impl LiveSet {
    /// Records `[start, start + len)`, panicking if it overlaps a live block.
    pub(crate) fn insert(&mut self, start: usize, len: usize) {
        let len = len.max(1);
        if let Some((&prev, &prev_len)) = self.blocks.range(..=start).next_back() {
            assert!(
                prev + prev_len <= start,
                "block {start:#x}+{len} overlaps {prev:#x}+{prev_len}"
            );
        }
        if let Some((&next, _)) = self.blocks.range(start..).next() {
            assert!(
                start + len <= next,
                "block {start:#x}+{len} overlaps {next:#x}"
            );
        }
        self.blocks.insert(start, len);
    }

    /// Forgets the block at `start`.
    pub(crate) fn remove(&mut self, start: usize) {
        assert!(
            self.blocks.remove(&start).is_some(),
            "{start:#x} was not live"
        );
    }
}

/// The bytes of a block the unit tests write: both ends (where overlaps show first)
/// and one byte per page, which keeps large blocks cheap under Miri. The integration
/// test `tests/patterns.rs` writes every byte.
const SAMPLED: Coverage = Coverage::Sampled {
    ends: 64,
    stride: 4096,
};

/// Writes the shared test pattern of `seed` into sampled bytes of `len` at `ptr`.
///
/// # Safety
///
/// `ptr` is valid for writes of `len` bytes, and nothing else refers to them.
pub(crate) unsafe fn fill(ptr: *mut u8, len: usize, seed: u64) {
    // SAFETY: the caller's block, `len` bytes, not referred to elsewhere.
    pattern::fill(
        unsafe { std::slice::from_raw_parts_mut(ptr, len) },
        seed,
        SAMPLED,
    );
}

/// Checks the pattern written by [`fill`].
///
/// # Safety
///
/// `ptr` is valid for reads of `len` bytes, and nothing writes them meanwhile.
#[track_caller]
pub(crate) unsafe fn check(ptr: *const u8, len: usize, seed: u64) {
    // SAFETY: the caller's block, `len` bytes, not written meanwhile.
    pattern::assert_intact(
        unsafe { std::slice::from_raw_parts(ptr, len) },
        seed,
        SAMPLED,
    );
}

/// A heap-backed upstream with an address space that checks the contract: commits
/// only of uncommitted pages inside a reservation, decommits only of committed ones,
/// pages released in place only where committed (or in a plain region), and nothing
/// committed left when a reservation goes. Decommitted memory is scribbled over, so
/// that a use after decommit shows in the pattern checks; released pages read as
/// zero, as the system's do.
#[derive(Debug, Default)]
pub(crate) struct CheckedSpace {
    /// Reservation start -> (layout, committed pages).
    reservations: std::sync::Mutex<BTreeMap<usize, (std::alloc::Layout, Vec<bool>)>>,
    /// The largest region or reservation granted (0: any), as a limited address
    /// space (`ulimit -v`) refuses larger ones.
    cap: std::sync::atomic::AtomicUsize,
    /// Every size asked for by `allocate` and `reserve`, granted or not.
    pub(crate) asked: std::sync::Mutex<Vec<usize>>,
    /// What `reservation_cap` says (0: no cap).
    told_cap: std::sync::atomic::AtomicUsize,
}

const PAGE: usize = 4096;

impl CheckedSpace {
    /// A space that refuses regions and reservations larger than `cap` bytes.
    pub(crate) fn with_cap(cap: usize) -> CheckedSpace {
        let space = CheckedSpace::default();
        space.cap.store(cap, std::sync::atomic::Ordering::Relaxed);
        space
    }

    /// A space whose reservations should take at most `cap` bytes (it says so,
    /// and grants more).
    pub(crate) fn telling_cap(cap: usize) -> CheckedSpace {
        let space = CheckedSpace::default();
        space
            .told_cap
            .store(cap, std::sync::atomic::Ordering::Relaxed);
        space
    }

    /// Records a request of `size` bytes; refuses it if it is above the cap.
    fn ask(&self, size: usize) -> Result<(), crate::upstream::UpstreamError> {
        self.asked.lock().unwrap().push(size);
        let cap = self.cap.load(std::sync::atomic::Ordering::Relaxed);
        if cap != 0 && size > cap {
            return Err(crate::upstream::UpstreamError::OutOfMemory { size });
        }
        Ok(())
    }

    fn pages<R>(&self, addr: usize, len: usize, f: impl FnOnce(&mut [bool]) -> R) -> R {
        let mut map = self.reservations.lock().unwrap();
        let (&start, (layout, pages)) = map
            .range_mut(..=addr)
            .next_back()
            .expect("inside a reservation");
        assert!(
            addr + len <= start + layout.size(),
            "range beyond its reservation"
        );
        assert!(addr % PAGE == 0 && len % PAGE == 0, "unaligned range");
        let first = (addr - start) / PAGE;
        f(&mut pages[first..first + len / PAGE])
    }

    /// Bytes committed now.
    pub(crate) fn committed(&self) -> usize {
        let map = self.reservations.lock().unwrap();
        map.values()
            .map(|(_, p)| p.iter().filter(|&&c| c).count() * PAGE)
            .sum()
    }
}

// SAFETY: regions and reservations are fresh heap blocks of the asked size and
// alignment, owned by the caller until given back.
unsafe impl crate::upstream::Upstream for CheckedSpace {
    fn allocate(
        &self,
        size: usize,
        align: usize,
    ) -> Result<std::ptr::NonNull<u8>, crate::upstream::UpstreamError> {
        self.ask(size)?;
        crate::upstream::HeapUpstream.allocate(size, align)
    }

    unsafe fn deallocate(&self, ptr: std::ptr::NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { crate::upstream::HeapUpstream.deallocate(ptr, size, align) }
    }

    fn name(&self) -> &str {
        "checked-space"
    }

    unsafe fn release_pages(&self, ptr: std::ptr::NonNull<u8>, len: usize) -> bool {
        let addr = ptr.as_ptr() as usize;
        assert!(addr % PAGE == 0 && len % PAGE == 0, "unaligned release");
        let in_reservation = {
            let map = self.reservations.lock().unwrap();
            map.range(..=addr)
                .next_back()
                .is_some_and(|(&start, (layout, _))| addr < start + layout.size())
        };
        if in_reservation {
            self.pages(addr, len, |pages| {
                assert!(pages.iter().all(|&c| c), "release of uncommitted pages");
            });
        }
        // SAFETY: the caller passes memory of ours that holds nothing in use.
        unsafe { ptr.as_ptr().write_bytes(0, len) };
        true
    }

    fn address_space(&self) -> Option<&dyn crate::upstream::AddressSpace> {
        Some(self)
    }
}

// SAFETY: a reservation is a heap block, valid memory throughout; the checks only
// make sure the caller keeps the contract.
unsafe impl crate::upstream::AddressSpace for CheckedSpace {
    fn reservation_cap(&self) -> usize {
        match self.told_cap.load(std::sync::atomic::Ordering::Relaxed) {
            0 => usize::MAX,
            cap => cap,
        }
    }

    fn reserve(
        &self,
        size: usize,
    ) -> Result<std::ptr::NonNull<u8>, crate::upstream::UpstreamError> {
        self.ask(size)?;
        let layout =
            std::alloc::Layout::from_size_align(size, crate::upstream::HUGE_PAGE_SIZE).unwrap();
        // SAFETY: a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) })
            .ok_or(crate::upstream::UpstreamError::OutOfMemory { size })?;
        self.reservations
            .lock()
            .unwrap()
            .insert(ptr.as_ptr() as usize, (layout, vec![false; size / PAGE]));
        Ok(ptr)
    }

    unsafe fn commit(
        &self,
        ptr: std::ptr::NonNull<u8>,
        len: usize,
    ) -> Result<(), crate::upstream::UpstreamError> {
        self.pages(ptr.as_ptr() as usize, len, |pages| {
            assert!(pages.iter().all(|&c| !c), "commit of committed pages");
            pages.fill(true);
        });
        Ok(())
    }

    unsafe fn decommit(&self, ptr: std::ptr::NonNull<u8>, len: usize) {
        self.pages(ptr.as_ptr() as usize, len, |pages| {
            assert!(pages.iter().all(|&c| c), "decommit of uncommitted pages");
            pages.fill(false);
        });
        // SAFETY: the range is inside a live heap reservation.
        unsafe { ptr.as_ptr().write_bytes(0xDD, len.min(4 * PAGE)) };
    }

    unsafe fn unreserve(&self, ptr: std::ptr::NonNull<u8>, size: usize) {
        let (layout, pages) = self
            .reservations
            .lock()
            .unwrap()
            .remove(&(ptr.as_ptr() as usize))
            .expect("a reservation");
        assert_eq!(layout.size(), size, "unreserve with another size");
        assert!(pages.iter().all(|&c| !c), "unreserve with pages committed");
        // SAFETY: allocated in `reserve` with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
    }
}
