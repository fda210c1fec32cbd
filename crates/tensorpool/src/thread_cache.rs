//! Per-thread caches: the small tier's hot path, without a lock or an atomic
//! read-modify-write.
//!
//! Each thread keeps, per manager and per size class, a *magazine*: a stack of free
//! blocks of that class. A typed allocation pops from it and a typed free pushes onto
//! it; only when a magazine runs empty (refill) or over its limit (flush) does the
//! thread lock the class's shared [`FixedSizePool`] (the depot), and then it moves
//! a batch at once: up to 4 blocks (and 8 KiB) the first time, twice as many each
//! time after, up to half a magazine, so that a class a program uses a little holds
//! little. On this machine an uncontended compare-and-swap costs
//! about 12 ns, more than mimalloc's whole allocate + free, so the hot path uses
//! plain loads and stores only; everything shared is touched on refills and flushes.
//!
//! - **Cross-thread frees** need nothing special: a block freed by another thread
//!   goes into that thread's magazine of the same class, and returns to the depot
//!   from there. The depots are shared; no block belongs to a thread.
//! - **Counting** without atomics on the hot path: each thread counts its allocations
//!   and frees, its cached blocks and the bytes it handed out or took back since its
//!   last refill or flush, in counters only it writes. [`MemoryManager::stats`] adds
//!   them up; the shared totals take each thread's pending bytes at its refills and
//!   flushes, which is where peaks are recorded (so a peak may miss a spike smaller
//!   than one magazine per thread and class).
//! - **Thread exit** returns the thread's magazines to the depots (a thread-local
//!   destructor). A thread that outlives its manager finds it gone (a weak reference)
//!   and forgets the blocks without touching them: the manager already unmapped them.
//! - **Trim**: [`MemoryManager::trim`] empties the calling thread's magazines at once
//!   and asks every other thread to empty its own at its next allocation or free (an
//!   epoch it compares with a plain load). A thread that stays idle keeps at most
//!   `thread_cache_bytes` per class it used, until it allocates, exits, or calls
//!   [`MemoryManager::flush_thread_cache`]. Taking an idle thread's magazine from
//!   another thread would need a fence or an atomic on every allocation, which is
//!   exactly the cost the caches exist to avoid.
//!
//! Caches serve the typed path (the `Allocator` trait, tensors, arenas). The raw API
//! (`allocate_raw` / `free_raw`) goes to the depots directly, so that every raw free
//! is checked against the depot's record of live raw blocks.
//!
//! [`MemoryManager::stats`]: crate::MemoryManager::stats
//! [`MemoryManager::trim`]: crate::MemoryManager::trim
//! [`MemoryManager::flush_thread_cache`]: crate::MemoryManager::flush_thread_cache

use crate::error::Result;
use crate::fixed_pool::FixedSizePool;
use crate::size_class::{ClassIndex, SizeClasses};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering::Relaxed};
use serde::Serialize;
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

/// Largest magazine, in blocks.
const MAX_MAGAZINE: usize = 256;

/// Blocks taken by the first refill of a class: at most 4, and at most 8 KiB worth.
const FIRST_BATCH: usize = 4;
const FIRST_BATCH_BYTES: usize = 8 << 10;

/// Running totals of the bytes users hold, with their peaks, shared by every tier.
///
/// Deltas may arrive out of order across threads (a free published before the
/// allocation it undoes), so the counters are used as wrapping signed numbers and a
/// peak is recorded only when the total is non-negative.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    allocated: AtomicUsize,
    requested: AtomicUsize,
    peak_allocated: AtomicUsize,
    peak_requested: AtomicUsize,
}

impl Totals {
    /// Adds signed deltas of allocated and requested bytes.
    pub(crate) fn add(&self, allocated: isize, requested: isize) {
        Self::add_one(&self.allocated, &self.peak_allocated, allocated);
        Self::add_one(&self.requested, &self.peak_requested, requested);
    }

    fn add_one(total: &AtomicUsize, peak: &AtomicUsize, delta: isize) {
        if delta == 0 {
            return;
        }
        let now = total
            .fetch_add(delta as usize, Relaxed)
            .wrapping_add(delta as usize);
        // Only a rise can set a new peak, and most rises do not: read before the
        // read-modify-write (each costs ~12 ns here).
        if delta > 0 && (now as isize) >= 0 && now > peak.load(Relaxed) {
            peak.fetch_max(now, Relaxed);
        }
    }

    /// Current (allocated, requested), not counting threads' pending deltas.
    pub(crate) fn current(&self) -> (isize, isize) {
        (
            self.allocated.load(Relaxed) as isize,
            self.requested.load(Relaxed) as isize,
        )
    }

    /// The peaks (allocated, requested).
    pub(crate) fn peaks(&self) -> (usize, usize) {
        (
            self.peak_allocated.load(Relaxed),
            self.peak_requested.load(Relaxed),
        )
    }

    /// Records `allocated` and `requested` as peaks if they are higher.
    pub(crate) fn note_peaks(&self, allocated: usize, requested: usize) {
        self.peak_allocated.fetch_max(allocated, Relaxed);
        self.peak_requested.fetch_max(requested, Relaxed);
    }

    /// Starts new peaks from the given current values.
    pub(crate) fn reset_peaks(&self, allocated: usize, requested: usize) {
        self.peak_allocated.store(allocated, Relaxed);
        self.peak_requested.store(requested, Relaxed);
    }
}

/// A counter written by one thread only: an atomic so that others may read it, but
/// updated with a plain load and store rather than a read-modify-write.
#[derive(Debug, Default)]
struct OwnedCounter(AtomicUsize);

impl OwnedCounter {
    #[inline]
    fn add(&self, delta: usize) {
        self.0
            .store(self.0.load(Relaxed).wrapping_add(delta), Relaxed);
    }

    #[inline]
    fn get(&self) -> usize {
        self.0.load(Relaxed)
    }
}

/// Counters of one class in one thread's cache, written by that thread only.
#[derive(Debug, Default)]
struct ClassCounters {
    /// Blocks handed out from the magazine.
    allocs: OwnedCounter,
    /// Blocks taken back into it.
    frees: OwnedCounter,
    /// Requested bytes handed out minus taken back (wrapping signed).
    requested: OwnedCounter,
    /// Blocks moved in from the depot, and out to it.
    refilled: OwnedCounter,
    flushed: OwnedCounter,
}

impl ClassCounters {
    fn cached(&self) -> usize {
        (self.refilled.get() + self.frees.get())
            .wrapping_sub(self.allocs.get() + self.flushed.get())
    }
}

/// What one thread's cache reports, written by that thread, read by `stats()`.
///
/// The hot path bumps two counters of its class; everything else (cached blocks,
/// bytes not yet in the shared totals) is derived from them when asked.
#[derive(Debug)]
pub(crate) struct CacheCounters {
    thread: String,
    classes: Box<[ClassCounters]>,
    refills: OwnedCounter,
    flushes: OwnedCounter,
    /// Allocated and requested bytes already added to the shared totals.
    published_allocated: OwnedCounter,
    published_requested: OwnedCounter,
}

impl CacheCounters {
    /// Allocated and requested bytes handed out minus taken back since the thread
    /// started, over `strides` (wrapping signed).
    fn net(&self, strides: &[usize]) -> (usize, usize) {
        self.classes.iter().zip(strides).fold(
            (0usize, 0usize),
            |(bytes, requested), (c, &stride)| {
                let blocks = c.allocs.get().wrapping_sub(c.frees.get());
                (
                    bytes.wrapping_add(blocks.wrapping_mul(stride)),
                    requested.wrapping_add(c.requested.get()),
                )
            },
        )
    }

    /// Bytes not yet added to the shared totals.
    fn pending(&self, strides: &[usize]) -> (isize, isize) {
        let (bytes, requested) = self.net(strides);
        (
            bytes.wrapping_sub(self.published_allocated.get()) as isize,
            requested.wrapping_sub(self.published_requested.get()) as isize,
        )
    }
}

/// Statistics of one thread's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadCacheStats {
    /// The thread's name, or its id.
    pub thread: String,
    /// Bytes of free blocks in its magazines.
    pub cached_bytes: usize,
    /// Allocations it served from its magazines.
    pub num_allocs: u64,
    /// Frees it took into its magazines.
    pub num_frees: u64,
    /// Batches taken from the depots.
    pub refills: u64,
    /// Batches given back to the depots.
    pub flushes: u64,
}

/// The shared side of the small tier: a depot (pool) per size class, the registry of
/// thread caches, and the totals.
#[derive(Debug)]
pub(crate) struct SmallTier {
    id: u64,
    classes: Option<SizeClasses>,
    pub(crate) pools: Box<[FixedSizePool]>,
    /// Block size per class, as laid out in the depot.
    strides: Box<[usize]>,
    /// Magazine limit per class, in blocks (0: no thread caches).
    limits: Box<[usize]>,
    trim_epoch: AtomicU64,
    registry: Mutex<Vec<Arc<CacheCounters>>>,
    /// Counts of threads that exited: allocations, frees, refills, flushes.
    retired: [AtomicU64; 4],
    pub(crate) totals: Arc<Totals>,
}

static NEXT_TIER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl SmallTier {
    /// A small tier over `pools` (one per class of `classes`), with magazines of at
    /// most `cache_bytes` per class (no thread caches with 0).
    pub(crate) fn new(
        classes: Option<SizeClasses>,
        pools: Vec<FixedSizePool>,
        cache_bytes: usize,
        totals: Arc<Totals>,
    ) -> Self {
        let limits = pools
            .iter()
            .map(|p| match cache_bytes {
                0 => 0,
                bytes => (bytes / p.stride()).clamp(2, MAX_MAGAZINE),
            })
            .collect();
        SmallTier {
            id: NEXT_TIER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            classes,
            strides: pools.iter().map(FixedSizePool::stride).collect(),
            pools: pools.into_boxed_slice(),
            limits,
            trim_epoch: AtomicU64::new(0),
            registry: Mutex::new(Vec::new()),
            retired: Default::default(),
            totals,
        }
    }

    /// The class serving `size` bytes at `align`, if any.
    #[inline]
    pub(crate) fn class_for(&self, size: usize, align: usize) -> Option<ClassIndex> {
        self.classes.as_ref()?.class_for(size, align)
    }

    /// The size classes, if the tier has any.
    pub(crate) fn classes(&self) -> Option<&SizeClasses> {
        self.classes.as_ref()
    }

    /// Asks every thread to empty its magazines at its next operation.
    pub(crate) fn request_drain(&self) {
        self.trim_epoch.fetch_add(1, Relaxed);
    }

    /// The statistics of every live thread cache, the (allocated, requested) bytes
    /// still pending in them, and their cached blocks per class.
    pub(crate) fn thread_stats(&self) -> (Vec<ThreadCacheStats>, isize, isize, Vec<usize>) {
        let registry = self.registry.lock();
        let mut pending = (0isize, 0isize);
        let mut cached_per_class = vec![0usize; self.pools.len()];
        let threads = registry
            .iter()
            .map(|c| {
                let (bytes, requested) = c.pending(&self.strides);
                pending = (
                    pending.0.wrapping_add(bytes),
                    pending.1.wrapping_add(requested),
                );
                let mut stats = ThreadCacheStats {
                    thread: c.thread.clone(),
                    cached_bytes: 0,
                    num_allocs: 0,
                    num_frees: 0,
                    refills: c.refills.get() as u64,
                    flushes: c.flushes.get() as u64,
                };
                for (class, counters) in c.classes.iter().enumerate() {
                    let cached = counters.cached();
                    cached_per_class[class] += cached;
                    stats.cached_bytes += cached * self.strides[class];
                    stats.num_allocs += counters.allocs.get() as u64;
                    stats.num_frees += counters.frees.get() as u64;
                }
                stats
            })
            .collect();
        (threads, pending.0, pending.1, cached_per_class)
    }

    /// Allocations and frees served by thread caches, those of exited threads included.
    pub(crate) fn cache_counts(&self) -> (u64, u64) {
        let registry = self.registry.lock();
        let live = registry
            .iter()
            .flat_map(|c| c.classes.iter())
            .fold((0, 0), |(a, f), c| {
                (a + c.allocs.get() as u64, f + c.frees.get() as u64)
            });
        (
            live.0 + self.retired[0].load(Relaxed),
            live.1 + self.retired[1].load(Relaxed),
        )
    }

    fn register(&self, counters: Arc<CacheCounters>) {
        self.registry.lock().push(counters);
    }

    fn retire(&self, counters: &Arc<CacheCounters>) {
        let mut registry = self.registry.lock();
        registry.retain(|c| !Arc::ptr_eq(c, counters));
        let sum = |f: fn(&ClassCounters) -> usize| counters.classes.iter().map(f).sum::<usize>();
        let counts = [
            sum(|c| c.allocs.get()),
            sum(|c| c.frees.get()),
            counters.refills.get(),
            counters.flushes.get(),
        ];
        for (slot, count) in self.retired.iter().zip(counts) {
            slot.fetch_add(count as u64, Relaxed);
        }
    }
}

/// One thread's magazines for one manager.
pub(crate) struct ThreadCache {
    tier: Weak<SmallTier>,
    tier_id: u64,
    epoch: u64,
    magazines: Box<[Vec<NonNull<u8>>]>,
    /// Blocks the next refill of each class takes: a few at first, doubling with
    /// every refill up to half a magazine, so that a class used a little holds little.
    batches: Box<[usize]>,
    counters: Arc<CacheCounters>,
}

impl ThreadCache {
    /// A cache of the calling thread for `tier`, registered with it.
    pub(crate) fn new(tier: &Arc<SmallTier>) -> Self {
        let thread = std::thread::current();
        let name = thread
            .name()
            .map_or_else(|| format!("{:?}", thread.id()), str::to_string);
        let counters = Arc::new(CacheCounters {
            thread: name,
            classes: tier
                .pools
                .iter()
                .map(|_| ClassCounters::default())
                .collect(),
            refills: OwnedCounter::default(),
            flushes: OwnedCounter::default(),
            published_allocated: OwnedCounter::default(),
            published_requested: OwnedCounter::default(),
        });
        tier.register(counters.clone());
        ThreadCache {
            tier: Arc::downgrade(tier),
            tier_id: tier.id,
            epoch: tier.trim_epoch.load(Relaxed),
            magazines: tier.pools.iter().map(|_| Vec::new()).collect(),
            batches: tier
                .limits
                .iter()
                .zip(tier.strides.iter())
                .map(|(&l, &stride)| {
                    (FIRST_BATCH_BYTES / stride)
                        .clamp(1, FIRST_BATCH)
                        .min((l / 2).max(1))
                })
                .collect(),
            counters,
        }
    }

    /// A typed block of class `class` from the magazine, if it has one and no drain
    /// is pending: the hot path, a few plain loads and stores.
    #[inline]
    pub(crate) fn try_allocate(
        &mut self,
        tier: &SmallTier,
        class: ClassIndex,
        requested: usize,
    ) -> Option<NonNull<u8>> {
        if tier.trim_epoch.load(Relaxed) != self.epoch {
            return None;
        }
        let ptr = self.magazines[class].pop()?;
        self.count_allocation(class, requested);
        Some(ptr)
    }

    /// Takes back a typed block into the magazine if it has room and no drain is
    /// pending; otherwise gives it back.
    #[inline]
    pub(crate) fn try_free(
        &mut self,
        tier: &SmallTier,
        class: ClassIndex,
        ptr: NonNull<u8>,
        requested: usize,
    ) -> Option<NonNull<u8>> {
        let magazine = &mut self.magazines[class];
        if tier.trim_epoch.load(Relaxed) != self.epoch || magazine.len() >= tier.limits[class] {
            return Some(ptr);
        }
        magazine.push(ptr);
        self.count_free(class, requested);
        None
    }

    /// A typed block of class `class` for a request of `requested` bytes, refilling
    /// the magazine from the depot if it is empty.
    pub(crate) fn allocate(
        &mut self,
        tier: &SmallTier,
        class: ClassIndex,
        requested: usize,
    ) -> Result<NonNull<u8>> {
        self.check_epoch(tier);
        if self.magazines[class].is_empty() {
            self.refill(tier, class)?;
        }
        // Not `try_allocate`: a trim requested since `check_epoch` must not make this
        // fail (loom found that); the next operation drains.
        let ptr = self.magazines[class]
            .pop()
            .expect("a refill takes at least one block");
        self.count_allocation(class, requested);
        Ok(ptr)
    }

    /// Takes back a typed block of class `class` allocated for `requested` bytes,
    /// flushing half the magazine to the depot when it is full.
    pub(crate) fn free(
        &mut self,
        tier: &SmallTier,
        class: ClassIndex,
        ptr: NonNull<u8>,
        requested: usize,
    ) {
        self.check_epoch(tier);
        if self.magazines[class].len() >= tier.limits[class] {
            self.flush(tier, class, tier.limits[class] / 2);
        }
        // Not `try_free`, which would hand the block back if a trim came in between.
        self.magazines[class].push(ptr);
        self.count_free(class, requested);
    }

    #[inline]
    fn count_allocation(&self, class: ClassIndex, requested: usize) {
        let c = &self.counters.classes[class];
        c.allocs.add(1);
        c.requested.add(requested);
    }

    #[inline]
    fn count_free(&self, class: ClassIndex, requested: usize) {
        let c = &self.counters.classes[class];
        c.frees.add(1);
        c.requested.add(requested.wrapping_neg());
    }

    fn check_epoch(&mut self, tier: &SmallTier) {
        let epoch = tier.trim_epoch.load(Relaxed);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.drain(tier, true);
        }
    }

    /// Takes a batch from the depot, and doubles the next batch (up to half a
    /// magazine).
    #[cold]
    fn refill(&mut self, tier: &SmallTier, class: ClassIndex) -> Result<()> {
        let limit = tier.limits[class];
        let magazine = &mut self.magazines[class];
        if magazine.capacity() == 0 {
            magazine.reserve_exact(limit);
        }
        let batch = self.batches[class];
        self.batches[class] = (batch * 2).min((limit / 2).max(1));
        let taken = tier.pools[class].take_batch(batch, magazine)?;
        let c = &self.counters;
        c.classes[class].refilled.add(taken);
        c.refills.add(1);
        self.publish(tier);
        Ok(())
    }

    /// Gives all but `keep` blocks of a magazine back to the depot.
    fn flush(&mut self, tier: &SmallTier, class: ClassIndex, keep: usize) {
        let magazine = &mut self.magazines[class];
        if magazine.len() <= keep {
            return;
        }
        let mut batch = magazine.split_off(keep);
        let n = batch.len();
        tier.pools[class].return_batch(&mut batch);
        let c = &self.counters;
        c.classes[class].flushed.add(n);
        c.flushes.add(1);
        self.publish(tier);
    }

    /// Gives every magazine back to the depots, trimming the pools it returned to when
    /// `trim` is set.
    pub(crate) fn drain(&mut self, tier: &SmallTier, trim: bool) {
        for class in 0..self.magazines.len() {
            if !self.magazines[class].is_empty() {
                self.flush(tier, class, 0);
                if trim {
                    tier.pools[class].trim();
                }
            }
        }
        self.publish(tier);
    }

    /// Adds this thread's pending bytes to the shared totals.
    fn publish(&mut self, tier: &SmallTier) {
        let c = &self.counters;
        let (bytes, requested) = c.pending(&tier.strides);
        tier.totals.add(bytes, requested);
        c.published_allocated.add(bytes as usize);
        c.published_requested.add(requested as usize);
    }

    /// Empties the cache into its tier if the tier still exists, and unregisters it.
    pub(crate) fn retire(mut self) {
        if let Some(tier) = self.tier.upgrade() {
            self.drain(&tier, false);
            tier.retire(&self.counters);
        }
        // Otherwise the manager is gone with its memory: the block pointers are
        // forgotten, never touched.
    }
}

/// The calling thread's caches, one per manager it used.
struct Caches(Vec<ThreadCache>);

impl Drop for Caches {
    fn drop(&mut self) {
        for cache in self.0.drain(..) {
            cache.retire();
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static CACHES: RefCell<Caches> = const { RefCell::new(Caches(Vec::new())) };
}
#[cfg(loom)]
loom::thread_local! {
    static CACHES: RefCell<Caches> = RefCell::new(Caches(Vec::new()));
}

/// Runs `f` with the calling thread's cache for `tier`, creating it on first use.
///
/// Returns `None` when the cache cannot be used: during thread-local destruction, or
/// on a reentrant call; the caller then goes to the depot directly.
#[inline]
pub(crate) fn with_cache<R>(
    tier: &Arc<SmallTier>,
    f: impl FnOnce(&mut ThreadCache) -> R,
) -> Option<R> {
    CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let caches = &mut caches.0;
            if let Some(first) = caches.first_mut().filter(|c| c.tier_id == tier.id) {
                return Some(f(first));
            }
            let index = match caches.iter().position(|c| c.tier_id == tier.id) {
                Some(i) => i,
                None => {
                    // Forget caches of managers that are gone, then make this one.
                    caches.retain(|c| c.tier.strong_count() > 0);
                    caches.push(ThreadCache::new(tier));
                    caches.len() - 1
                }
            };
            Some(f(&mut caches[index]))
        })
        .ok()
        .flatten()
}

/// Empties the calling thread's cache for `tier`, if it has one.
pub(crate) fn drain_current(tier: &Arc<SmallTier>) {
    let _ = CACHES.try_with(|caches| {
        if let Ok(mut caches) = caches.try_borrow_mut() {
            if let Some(cache) = caches.0.iter_mut().find(|c| c.tier_id == tier.id) {
                cache.drain(tier, false);
            }
        }
    });
}

/// Addresses of the blocks in the calling thread's cache for `tier`.
pub(crate) fn cached_blocks_current(tier: &Arc<SmallTier>) -> rustc_hash::FxHashSet<usize> {
    CACHES
        .try_with(|caches| {
            let caches = caches.try_borrow().ok()?;
            let cache = caches.0.iter().find(|c| c.tier_id == tier.id)?;
            Some(
                cache
                    .magazines
                    .iter()
                    .flatten()
                    .map(|p| p.as_ptr().addr())
                    .collect(),
            )
        })
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Loom models of the hand-off between thread caches and a depot: refills, flushes,
/// frees by another thread, drains requested by a trim, and thread exit. Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p tensorpool --lib --release loom`.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::upstream::HeapUpstream;
    use loom::sync::Mutex as LoomMutex;

    /// A tier of one 64-byte class whose magazines hold at most 2 blocks, so that a
    /// handful of operations refill and flush.
    fn tier() -> Arc<SmallTier> {
        let pool = FixedSizePool::builder(64)
            .upstream(Arc::new(HeapUpstream))
            .build()
            .unwrap();
        Arc::new(SmallTier::new(
            None,
            vec![pool],
            128,
            Arc::new(Totals::default()),
        ))
    }

    /// Ownership of every block is exclusive: handed out to one holder at a time.
    struct Ledger(LoomMutex<Vec<usize>>);

    impl Ledger {
        fn take(&self, ptr: NonNull<u8>) {
            let mut held = self.0.lock().unwrap();
            assert!(
                !held.contains(&ptr.as_ptr().addr()),
                "a block was handed out twice"
            );
            held.push(ptr.as_ptr().addr());
        }

        fn give(&self, ptr: NonNull<u8>) {
            let mut held = self.0.lock().unwrap();
            let i = held
                .iter()
                .position(|&a| a == ptr.as_ptr().addr())
                .expect("held");
            held.swap_remove(i);
        }
    }

    /// Every interleaving with up to three preemptions: what loom's authors advise
    /// for models of this size, exhaustive enough to find ordering bugs.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    fn balanced(tier: &SmallTier) {
        let pool = tier.pools[0].stats();
        assert_eq!(
            pool.usage.allocated_blocks, 0,
            "blocks stayed out of the depot"
        );
        assert_eq!(tier.totals.current(), (0, 0), "the totals do not balance");
        let (allocs, frees) = tier.cache_counts();
        assert_eq!(allocs, frees);
        tier.pools[0].trim();
        assert_eq!(tier.pools[0].stats().usage.reserved_bytes, 0);
    }

    #[test]
    fn refill_flush_and_cross_thread_free() {
        model(|| {
            let tier = tier();
            let ledger = Arc::new(Ledger(LoomMutex::new(Vec::new())));
            let mailbox = Arc::new(LoomMutex::new(Vec::<usize>::new()));
            let producer = {
                let (tier, ledger, mailbox) = (tier.clone(), ledger.clone(), mailbox.clone());
                loom::thread::spawn(move || {
                    let mut cache = ThreadCache::new(&tier);
                    for _ in 0..3 {
                        let p = cache.allocate(&tier, 0, 8).unwrap();
                        ledger.take(p);
                        mailbox.lock().unwrap().push(p.as_ptr().addr());
                    }
                    cache.retire();
                })
            };
            let consumer = {
                let (tier, ledger, mailbox) = (tier.clone(), ledger.clone(), mailbox.clone());
                loom::thread::spawn(move || {
                    let mut cache = ThreadCache::new(&tier);
                    // Its own block, then whatever the producer sent so far.
                    let own = cache.allocate(&tier, 0, 16).unwrap();
                    ledger.take(own);
                    let sent: Vec<usize> = mailbox.lock().unwrap().drain(..).collect();
                    for addr in sent {
                        let p = NonNull::new(addr as *mut u8).unwrap();
                        ledger.give(p);
                        cache.free(&tier, 0, p, 8);
                    }
                    ledger.give(own);
                    cache.free(&tier, 0, own, 16);
                    cache.retire();
                })
            };
            producer.join().unwrap();
            consumer.join().unwrap();
            // What was sent after the consumer looked is freed by a third cache.
            let mut last = ThreadCache::new(&tier);
            let left: Vec<usize> = mailbox.lock().unwrap().drain(..).collect();
            for addr in left {
                let p = NonNull::new(addr as *mut u8).unwrap();
                ledger.give(p);
                last.free(&tier, 0, p, 8);
            }
            last.retire();
            balanced(&tier);
        });
    }

    #[test]
    fn a_trim_request_drains_a_running_thread() {
        model(|| {
            let tier = tier();
            let ledger = Arc::new(Ledger(LoomMutex::new(Vec::new())));
            let worker = {
                let (tier, ledger) = (tier.clone(), ledger.clone());
                loom::thread::spawn(move || {
                    let mut cache = ThreadCache::new(&tier);
                    for _ in 0..2 {
                        let p = cache.allocate(&tier, 0, 8).unwrap();
                        ledger.take(p);
                        ledger.give(p);
                        cache.free(&tier, 0, p, 8);
                    }
                    cache
                })
            };
            // A trim from another thread while the worker runs.
            tier.request_drain();
            tier.pools[0].trim();
            let mut cache = worker.join().unwrap();
            // The worker's next operation drains its magazine, because of the trim.
            let p = cache.allocate(&tier, 0, 8).unwrap();
            cache.free(&tier, 0, p, 8);
            cache.retire();
            balanced(&tier);
        });
    }
}
