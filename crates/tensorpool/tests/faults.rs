//! Fault injection: an upstream that fails its k-th call, for many k.
//!
//! Whatever call fails (a pool chunk, a best-fit segment, a commit of an expandable
//! segment, a huge segment, an arena chunk), the operation that needed it returns an
//! error, every live block keeps its contents, the statistics stay balanced, and the
//! same request succeeds once memory is available again.

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tensorpool::upstream::{AddressSpace, HeapUpstream, Upstream, UpstreamError};
use tensorpool::{Config, Error, MemoryManager};
use tensorpool_testkit::{pattern, Coverage, Rng};

/// Fails the calls numbered `fail_from..fail_until` (allocations, reservations and
/// commits counted together); passes everything else to `inner`.
#[derive(Debug)]
struct Failing {
    inner: Arc<dyn Upstream>,
    calls: AtomicUsize,
    fail_from: AtomicUsize,
    fail_until: AtomicUsize,
    failures: AtomicUsize,
}

impl Failing {
    fn new(inner: Arc<dyn Upstream>, fail_from: usize, count: usize) -> Self {
        Failing {
            inner,
            calls: AtomicUsize::new(0),
            fail_from: AtomicUsize::new(fail_from),
            fail_until: AtomicUsize::new(fail_from.saturating_add(count)),
            failures: AtomicUsize::new(0),
        }
    }

    /// Whether this call fails.
    fn fails(&self) -> bool {
        let n = self.calls.fetch_add(1, SeqCst);
        let fail = n >= self.fail_from.load(SeqCst) && n < self.fail_until.load(SeqCst);
        if fail {
            self.failures.fetch_add(1, SeqCst);
        }
        fail
    }

    /// Memory is available again from now on.
    fn recover(&self) {
        self.fail_until.store(0, SeqCst);
    }
}

// SAFETY: every call is forwarded unchanged to `inner`, or fails without effect.
unsafe impl Upstream for Failing {
    fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>, UpstreamError> {
        if self.fails() {
            return Err(UpstreamError::OutOfMemory { size });
        }
        self.inner.allocate(size, align)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded from our caller, who holds the same contract.
        unsafe { self.inner.deallocate(ptr, size, align) }
    }

    fn name(&self) -> &str {
        "failing"
    }

    fn address_space(&self) -> Option<&dyn AddressSpace> {
        self.inner
            .address_space()
            .map(|_| self as &dyn AddressSpace)
    }
}

// SAFETY: as above; only called when `inner` has an address space.
unsafe impl AddressSpace for Failing {
    fn reserve(&self, size: usize) -> Result<NonNull<u8>, UpstreamError> {
        if self.fails() {
            return Err(UpstreamError::OutOfMemory { size });
        }
        self.inner.address_space().expect("checked").reserve(size)
    }

    fn reservation_cap(&self) -> usize {
        self.inner
            .address_space()
            .expect("checked")
            .reservation_cap()
    }

    unsafe fn commit(&self, ptr: NonNull<u8>, len: usize) -> Result<(), UpstreamError> {
        if self.fails() {
            return Err(UpstreamError::OutOfMemory { size: len });
        }
        // SAFETY: forwarded unchanged.
        unsafe {
            self.inner
                .address_space()
                .expect("checked")
                .commit(ptr, len)
        }
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: forwarded unchanged.
        unsafe {
            self.inner
                .address_space()
                .expect("checked")
                .decommit(ptr, len)
        }
    }

    unsafe fn unreserve(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: forwarded unchanged.
        unsafe {
            self.inner
                .address_space()
                .expect("checked")
                .unreserve(ptr, size)
        }
    }
}

/// A live block with the pattern written into it.
struct Live {
    ptr: NonNull<u8>,
    size: usize,
    raw: bool,
    seed: u8,
}

fn write(block: &Live) {
    // SAFETY: a live block of `size` bytes that only this test uses.
    let bytes = unsafe { std::slice::from_raw_parts_mut(block.ptr.as_ptr(), block.size) };
    pattern::fill(bytes, block.seed.into(), Coverage::EVERY);
}

fn intact(block: &Live) -> bool {
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(block.ptr.as_ptr(), block.size) };
    pattern::first_difference(bytes, block.seed.into(), Coverage::EVERY).is_none()
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 64).unwrap()
}

/// Sizes across every tier: size classes, best fit, huge.
fn size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=4 => 1 + rng.below(4096),
        5..=7 => 16 << 10 | rng.below(256 << 10),
        8 => 512 << 10 | rng.below(1 << 20),
        _ => 2 << 20 | rng.below(1 << 20),
    }
}

fn allocate(mm: &MemoryManager, size: usize, raw: bool) -> Result<NonNull<u8>, Error> {
    if raw {
        mm.allocate_raw(size, 64)
    } else {
        mm.try_allocate(layout(size))
    }
}

fn free(mm: &MemoryManager, block: Live) {
    assert!(intact(&block), "a live block lost its contents");
    if block.raw {
        mm.free_raw(block.ptr.as_ptr()).unwrap();
    } else {
        // SAFETY: allocated by `try_allocate` with this layout.
        unsafe { mm.deallocate(block.ptr, layout(block.size)) };
    }
}

/// What a run saw: allocations that failed, upstream calls made to fail, and
/// allocations that retried after releasing cached memory.
#[derive(Debug, Default)]
struct Seen {
    failed: usize,
    injected: usize,
    retries: u64,
    /// Upstream calls made before memory came back.
    calls: usize,
}

/// How long a workload runs: steps, and how often it trims (0: never).
#[derive(Debug, Clone, Copy)]
struct Workload {
    steps: usize,
    trim_every: usize,
}

/// Over the heap, which gives the best-fit tier whole 2 MiB segments that the
/// engine's slabs share, memory goes back now and then so that the workload takes
/// it again from upstream; the mmap upstream commits in small steps anyway.
const HEAP_WORKLOAD: Workload = Workload {
    steps: 250,
    trim_every: 8,
};
const MMAP_WORKLOAD: Workload = Workload {
    steps: 120,
    trim_every: 0,
};

/// Runs a workload over an upstream that fails calls `k..k + count`; checks every
/// failure and everything after it.
fn run(inner: Arc<dyn Upstream>, k: usize, count: usize, seed: u64, work: Workload) -> Seen {
    let failing = Arc::new(Failing::new(inner, k, count));
    let config = Config::builder()
        .huge_threshold(2 << 20)
        .pool_chunk_size(64 << 10)
        .arena_chunk_size(16 << 10)
        .build()
        .unwrap();
    let mm = MemoryManager::with_upstream(config, failing.clone()).unwrap();
    let mut rng = Rng(seed);
    let mut live: Vec<Live> = Vec::new();
    let mut failed = 0;
    for step in 0..work.steps {
        let size = size(&mut rng);
        let raw = rng.below(2) == 0;
        match allocate(&mm, size, raw) {
            Ok(ptr) => {
                let block = Live {
                    ptr,
                    size,
                    raw,
                    seed: step as u8,
                };
                write(&block);
                live.push(block);
            }
            Err(Error::OutOfMemory(report)) => {
                failed += 1;
                assert_eq!(report.requested, size);
                // Nothing moved under the live blocks, the books still balance.
                assert!(live.iter().all(intact));
                let stats = mm.stats();
                assert_eq!(stats.allocated_blocks, live.len());
                assert_eq!(
                    stats.requested_bytes,
                    live.iter().map(|b| b.size).sum::<usize>()
                );
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        // An arena chunk may fail too.
        if step % 17 == 0 {
            let arena = mm.arena();
            if let Ok(p) = arena.allocate(40 << 10, 64) {
                // SAFETY: a fresh arena block of 40 KiB.
                unsafe { p.as_ptr().write_bytes(0xAA, 40 << 10) };
            }
        }
        if !live.is_empty() && rng.below(3) == 0 {
            let i = rng.below(live.len());
            free(&mm, live.swap_remove(i));
        }
        if work.trim_every > 0 && step % work.trim_every == work.trim_every - 1 {
            mm.trim();
        }
    }
    // Memory is back: the requests that failed now succeed.
    let calls = failing.calls.load(SeqCst);
    failing.recover();
    for _ in 0..5 {
        let size = size(&mut rng);
        let ptr = allocate(&mm, size, false).expect("memory is available again");
        let block = Live {
            ptr,
            size,
            raw: false,
            seed: 7,
        };
        write(&block);
        live.push(block);
    }
    for block in live.drain(..) {
        free(&mm, block);
    }
    let stats = mm.stats();
    assert_eq!((stats.allocated_blocks, stats.allocated_bytes), (0, 0));
    mm.trim();
    assert_eq!(
        mm.stats().reserved_bytes,
        0,
        "everything goes back after trim"
    );
    let injected = failing.failures.load(SeqCst);
    assert!(injected >= failed.min(1));
    Seen {
        failed,
        injected,
        retries: stats.num_alloc_retries,
        calls,
    }
}

#[test]
fn each_single_upstream_failure_is_survived() {
    let calls = run(Arc::new(HeapUpstream), usize::MAX, 0, 0x5EED, HEAP_WORKLOAD).calls;
    assert!(
        calls > 30,
        "the workload reaches upstream often ({calls} calls)"
    );
    for k in 0..calls {
        let seen = run(Arc::new(HeapUpstream), k, 1, 0x5EED, HEAP_WORKLOAD);
        // A single failure is absorbed: the manager releases cached memory and
        // retries (or an arena chunk fails, which its caller sees).
        assert_eq!(seen.injected, 1, "call {k} was made and failed");
        assert!(seen.retries >= 1 || seen.failed == 0, "{seen:?}");
    }
}

#[test]
fn runs_of_failures_then_recovery_are_survived() {
    let mut failed = 0;
    for (k, count) in [(0, 5), (3, 50), (10, 1000), (25, 7)] {
        let seen = run(
            Arc::new(HeapUpstream),
            k,
            count,
            0xFA11 + k as u64,
            HEAP_WORKLOAD,
        );
        assert!(seen.injected >= count.min(5));
        failed += seen.failed;
    }
    assert!(failed > 20, "the failures reached the callers ({failed})");
}

#[cfg(all(unix, not(miri)))]
#[test]
fn failures_of_reservations_and_commits_are_survived() {
    // The mmap upstream: expandable segments reserve and commit, and those calls fail too.
    let mmap = || Arc::new(tensorpool::upstream::MmapUpstream::new(false));
    let calls = run(mmap(), usize::MAX, 0, 7, MMAP_WORKLOAD).calls;
    assert!(
        calls > 30,
        "the workload reaches upstream often ({calls} calls)"
    );
    for k in 0..calls {
        assert_eq!(run(mmap(), k, 1, 7, MMAP_WORKLOAD).injected, 1);
    }
    let mut failed = 0;
    for (k, count) in [(2, 20), (15, 500)] {
        failed += run(mmap(), k, count, 99, MMAP_WORKLOAD).failed;
    }
    assert!(failed > 10, "the failures reached the callers ({failed})");
}
