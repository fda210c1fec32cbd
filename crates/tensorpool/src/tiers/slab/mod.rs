//! The small-block engine: thread-owned slabs, frees validated in O(1) from the
//! address alone, and no shared lock on any steady path.
//!
//! Blocks up to `small_threshold` are slots of *slabs*: runs of pages carved into
//! slots of one size class (or of one explicit pool). Large blocks up to
//! `medium_threshold` are *spans*: slabs of one slot, a page-rounded block. Both
//! come from the best-fit tier's pages and belong to the heap of one thread:
//!
//! - the owner allocates and frees with plain loads and stores: a stack of free
//!   slots per slab, the last freed handed out first, and a bitmap that checks every
//!   free; a span is cached in its heap when freed and reused for the next block of
//!   its size, and a raw span that `realloc` grows takes the best-fit tier's free
//!   pages after it, in place;
//! - another thread's free costs one compare-and-swap on the slab's post word (and,
//!   for the first post since the owner last looked, a swap and a push onto the
//!   owner's inbox); the owner collects posts when it runs out of free slots;
//! - any address finds its slab through the page map (`page_map`) in three loads,
//!   the slot by one multiplication, and the slot's live and raw bits refuse a
//!   foreign, interior, already freed or typed pointer (see the `slab` module for how frees
//!   from other threads are checked, at once or when collected).
//!
//! Heaps are per thread and per engine (see the `thread` module): an exited thread's heap is
//! adopted whole by the next new thread, and `trim()` reaches every heap, also those
//! of threads that sleep, through an asymmetric handshake (`membarrier`).
//!
//! ```
//! use tensorpool::{Config, MemoryManager};
//!
//! let mm = MemoryManager::new(Config::default())?;
//! let p = mm.allocate_raw(256, 64)?; // a slot of the 256 B class in this thread's slab
//! assert!(mm.free_raw(p.as_ptr().wrapping_add(8)).is_err()); // interior: refused
//! let q = p.as_ptr() as usize;
//! std::thread::scope(|s| {
//!     // Another thread's free of it is posted to this thread's heap.
//!     s.spawn(|| mm.free_raw(q as *mut u8)).join().unwrap()
//! })?;
//! assert!(mm.free_raw(p.as_ptr()).is_err()); // already freed
//! assert_eq!(mm.stats().allocated_bytes, 0);
//! # Ok::<(), tensorpool::Error>(())
//! ```

pub(crate) mod heap;
pub(crate) mod page_map;
#[allow(clippy::module_inception)]
pub(crate) mod slab;
pub(crate) mod thread;

#[cfg(all(test, loom))]
mod loom_models;

use crate::error::{PointerError, Result};
use crate::limits::round_up;
use crate::observe::snapshot::{BlockSnapshot, BlockState, SegmentSnapshot};
use crate::observe::stats::{Tier, Totals};
use crate::tiers::best_fit::BestFit;
use crate::tiers::size_class::SizeClasses;
use crate::util::sync::Mutex;
pub(crate) use heap::InPlace;
use heap::{Freed, Heap, HeapBox, MAX_SLOTS};
use page_map::{PageMap, PAGE};
use slab::{Posted, Slab};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use thread::{current_heap, enter, enter_bound, enter_leaf, with_heap, Stopped};

/// What an allocation's leaf returns (`Engine::grant_leaf`): the block, and whether
/// its bytes are known to be zero, or the block alone.
pub(crate) trait Grant: Sized {
    fn from_served(ptr: NonNull<u8>, zero: bool) -> Self;
}

impl Grant for NonNull<u8> {
    #[inline(always)]
    fn from_served(ptr: NonNull<u8>, _zero: bool) -> Self {
        ptr
    }
}

impl Grant for (NonNull<u8>, bool) {
    #[inline(always)]
    fn from_served(ptr: NonNull<u8>, zero: bool) -> Self {
        (ptr, zero)
    }
}

/// The class number of spans (slabs of one large block).
pub(crate) const SPAN_CLASS: u32 = u32::MAX;

/// Sizes up to this find their class in a table (4 KiB of it).
const TABLE_LIMIT: usize = 32 << 10;

/// Late refusals printed on standard error per engine; later ones are only counted.
const LATE_REPORTS: u32 = 8;

pub(crate) fn round_to_page(bytes: usize) -> usize {
    round_up(bytes, PAGE)
}

/// The class of every size up to [`TABLE_LIMIT`] (and the classes' largest) in steps
/// of 8 bytes, the least class spacing, for blocks aligned to `alignment` (the
/// engine's least): entry `i` is the class of `8 * (i + 1)` bytes at `alignment`, and
/// so of every size in `(8 * i, 8 * (i + 1)]` (class sizes are multiples of 8). Filled
/// a class at a time (a memset each), not a lookup per entry.
fn class_table(sc: &SizeClasses, alignment: usize) -> Box<[u8]> {
    let len = sc.max_size().min(TABLE_LIMIT) / 8;
    let mut table = vec![0u8; len].into_boxed_slice();
    let mut start = 0;
    while start < len {
        let class = sc
            .class_for(8 * (start + 1), alignment)
            .expect("the table stops at the largest class");
        // Every size up to this class's size maps to it.
        let end = (sc.size_of(class) / 8).min(len);
        table[start..end].fill(class as u8);
        start = end;
    }
    table
}

/// Slots an explicit pool may still put in slabs.
#[derive(Debug)]
pub(crate) struct Capacity {
    pub(crate) total: usize,
    remaining: AtomicUsize,
}

impl Capacity {
    /// Takes up to `slots`; returns how many were granted.
    pub(crate) fn take(&self, slots: u32) -> u32 {
        let mut granted = 0;
        let _ = self.remaining.fetch_update(Relaxed, Relaxed, |left| {
            granted = left.min(slots as usize);
            Some(left - granted)
        });
        granted as u32
    }

    pub(crate) fn give(&self, slots: u32) {
        self.remaining.fetch_add(slots as usize, Relaxed);
    }
}

/// A class of slots: a size class, or an explicit pool.
#[derive(Debug)]
pub(crate) struct Class {
    /// Distance between slots.
    pub(crate) stride: usize,
    /// The size served (a pool's block size as configured).
    pub(crate) block_size: usize,
    /// Least alignment of every slot.
    pub(crate) align: usize,
    pub(crate) tier: Tier,
    /// The tier's index in a heap's counters.
    pub(crate) tier_index: usize,
    /// A pool's capacity.
    pub(crate) capacity: Option<Capacity>,
}

impl Class {
    /// Slots and bytes of a new slab, given `held` bytes of this class's slabs in
    /// the heap already: as large as what it holds (doubling), from a page to
    /// `max_slab` (but always one slot), with a tail of at most 1/16 unused.
    pub(crate) fn slab_layout(&self, held: usize, max_slab: usize) -> (u32, usize) {
        let stride = self.stride;
        let target = held.clamp(PAGE, max_slab.max(PAGE));
        let mut n = (target / stride).clamp(1, MAX_SLOTS as usize);
        loop {
            let bytes = round_to_page(n * stride);
            if (bytes - n * stride) * 16 <= bytes || n >= MAX_SLOTS as usize {
                let n = (bytes / stride).min(MAX_SLOTS as usize);
                return (n as u32, bytes);
            }
            n += 1;
        }
    }
}

/// What [`Engine::hold_for_fork`] holds; let go in the order of the fields (the
/// reverse of the taking).
pub(crate) struct EngineHold<'a> {
    #[allow(dead_code)]
    map: page_map::PageMapHold<'a>,
    #[allow(dead_code)]
    large: crate::tiers::best_fit::BestFitHold<'a>,
    #[allow(dead_code)]
    shared: crate::util::sync::MutexGuard<'a, ()>,
    stopped: Stopped<'a>,
    #[allow(dead_code)]
    registry: crate::util::sync::MutexGuard<'a, Registry>,
    #[allow(dead_code)]
    serial: crate::util::sync::MutexGuard<'a, ()>,
}

/// A heap's standing in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// A thread holds it.
    Bound,
    /// Its thread exited; the next new thread adopts it.
    Abandoned,
    /// Abandoned, and a trim or a snapshot works on it now.
    Claimed,
}

#[derive(Debug, Default)]
struct Registry {
    heaps: Vec<(HeapBox, Standing)>,
}

/// The small-block engine of one manager. `repr(C)`: first what every allocation and
/// free reads and nothing writes after the engine is made, then, from a line of
/// their own, the locks and what they guard, which any thread writes (the best-fit
/// tier's state, the page map's writers' list, the registry); the best-fit tier's
/// state had landed on the line of the classes' table.
#[repr(C)]
pub(crate) struct Engine {
    // ---- read by every allocation and free ----
    /// Unique for the process, never 0.
    pub(crate) id: u64,
    /// Size classes first, then explicit pools.
    pub(crate) classes: Box<[Class]>,
    /// Each class's stride, for the sums over classes of a heap's counters.
    pub(crate) strides: Box<[usize]>,

    /// The class of every size up to [`TABLE_LIMIT`] (or the threshold) at the
    /// engine's alignment, in steps of 8 bytes (the least class spacing):
    /// `class_table[(size - 1) / 8]` (see [`class_table`]).
    class_table: Box<[u8]>,
    /// Most pages of a span.
    span_pages: usize,
    /// Least alignment of every block.
    pub(crate) alignment: usize,
    /// Where the explicit pools start in `classes`.
    pub(crate) first_pool: usize,
    /// Most bytes of empty slabs and cached blocks a heap keeps.
    pub(crate) cache_limit: usize,
    /// Most bytes of one slab.
    pub(crate) max_slab: usize,
    /// The manager's totals, where heaps publish their bytes at slow paths.
    pub(crate) totals: Arc<Totals>,
    /// The heap of threads that cannot use their own, under its lock.
    shared: HeapBox,
    size_classes: Option<SizeClasses>,
    /// Its entries are read by every free; its writers' list starts a line of its
    /// own (see `PageMap`).
    pub(crate) map: PageMap,
    // ---- written by any thread ----
    /// Where pages come from: the best-fit tier.
    pub(crate) large: BestFit,
    registry: Mutex<Registry>,
    shared_lock: Mutex<()>,
    /// Serializes trims, statistics and snapshots, which stop heaps.
    stop_lock: Mutex<()>,
    late_reports: AtomicU32,
    /// Frees refused late, not reported yet (reports wait while heaps are stopped).
    late_pending: AtomicU32,
    /// A pass over every heap runs (heaps may be stopped).
    stopping: AtomicBool,
    /// The engine of the process-wide allocator (`crate::global`): its own
    /// bookkeeping must not allocate from it (see `util::reentry`).
    pub(crate) process_wide: AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("classes", &self.classes.len())
            .finish_non_exhaustive()
    }
}

static NEXT_ENGINE: AtomicU64 = AtomicU64::new(1);

/// What the statistics need from the engine.
#[derive(Debug, Default, Clone)]
pub(crate) struct EngineStats {
    /// Per class: live blocks, slots, slabs and their bytes, slabs made.
    pub(crate) classes: Vec<ClassFigures>,
    /// Per tier the engine serves (small, pool, large): allocations, frees, live
    /// bytes and requested bytes.
    pub(crate) tiers: [TierFigures; 3],
    /// Cached large blocks: held (live or cached), their bytes, made.
    pub(crate) spans: u64,
    pub(crate) span_bytes: u64,
    pub(crate) span_misses: u64,
    /// Bytes of empty slabs and cached blocks, in all heaps.
    pub(crate) cached_bytes: usize,
    /// The largest cached free large block of any heap.
    pub(crate) largest_cached_span: usize,
    pub(crate) late_refusals: u64,
    pub(crate) threads: Vec<crate::observe::stats::ThreadCacheStats>,
    /// Allocated and requested bytes not yet published to the totals.
    pub(crate) pending: (isize, isize),
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ClassFigures {
    pub(crate) live: u64,
    pub(crate) slots: u64,
    pub(crate) slabs: u64,
    pub(crate) slab_bytes: u64,
    pub(crate) misses: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TierFigures {
    pub(crate) allocs: u64,
    pub(crate) frees: u64,
    pub(crate) bytes: u64,
    pub(crate) requested: u64,
}

impl Engine {
    /// An engine for `size_classes` (if any) and explicit `pools` (block size,
    /// capacity), taking pages from `large`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        size_classes: Option<SizeClasses>,
        pools: &[(usize, usize)],
        alignment: usize,
        medium_threshold: usize,
        max_slab: usize,
        cache_limit: usize,
        large: BestFit,
        totals: Arc<Totals>,
    ) -> Arc<Engine> {
        let mut classes: Vec<Class> = match &size_classes {
            Some(sc) => (0..sc.len())
                .map(|c| Class {
                    stride: sc.size_of(c),
                    block_size: sc.size_of(c),
                    align: sc.align_of(c),
                    tier: Tier::Small,
                    tier_index: heap::SMALL,
                    capacity: None,
                })
                .collect(),
            None => Vec::new(),
        };
        let first_pool = classes.len();
        for &(block_size, capacity) in pools {
            classes.push(Class {
                stride: round_up(block_size, alignment),
                block_size,
                align: alignment,
                tier: Tier::Pool,
                tier_index: heap::POOL,
                capacity: Some(Capacity {
                    total: capacity,
                    remaining: AtomicUsize::new(capacity),
                }),
            });
        }
        let span_pages = medium_threshold / PAGE;
        let shared = Heap::boxed(&classes, span_pages);
        let class_table = match &size_classes {
            Some(sc) if sc.len() <= 256 => class_table(sc, alignment),
            _ => Box::default(),
        };
        Arc::new(Engine {
            id: NEXT_ENGINE.fetch_add(1, Relaxed),
            strides: classes.iter().map(|c| c.stride).collect(),
            classes: classes.into_boxed_slice(),
            size_classes,
            class_table,
            first_pool,
            map: PageMap::new(),
            large,
            span_pages,
            cache_limit,
            max_slab,
            alignment,
            totals,
            registry: Mutex::new(Registry::default()),
            shared,
            shared_lock: Mutex::new(()),
            stop_lock: Mutex::new(()),
            late_reports: AtomicU32::new(0),
            late_pending: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            process_wide: AtomicBool::new(false),
        })
    }

    /// The size classes, if any.
    pub(crate) fn size_classes(&self) -> Option<&SizeClasses> {
        self.size_classes.as_ref()
    }

    /// The size class serving `size` bytes at `align`: a table lookup for sizes up
    /// to [`TABLE_LIMIT`], the arithmetic of [`SizeClasses::class_for`] above.
    #[inline(always)]
    pub(crate) fn class_for(&self, size: usize, align: usize) -> Option<usize> {
        // Rounded to a larger alignment, the size lands on a class that honours it
        // (see `SizeClasses::class_for`); the table rounds to the engine's own.
        let rounded = round_up(size, align.max(self.alignment));
        if let Some(&class) = self.class_table.get(rounded.wrapping_sub(1) >> 3) {
            return Some(class as usize);
        }
        self.size_classes
            .as_ref()?
            .class_for(size, align.max(self.alignment))
    }

    /// The largest size [`table_class`](Self::table_class) serves (0 if none).
    pub(crate) fn table_limit(&self) -> usize {
        self.class_table.len() * 8
    }

    /// The sizes that only spans serve, at an alignment up to a page: past the
    /// largest size class, up to the largest span (as the first size past the
    /// classes, less one, and the number of sizes; see the manager's
    /// `hot_span_pages`).
    pub(crate) fn span_sizes(&self) -> (usize, usize) {
        let classes = self
            .size_classes
            .as_ref()
            .map_or(0, SizeClasses::max_size)
            .max(self.table_limit());
        let most = self.span_pages * PAGE;
        (classes, most.saturating_sub(classes))
    }

    /// The size class of `size` bytes at the engine's alignment, from the table.
    ///
    /// # Safety
    ///
    /// `1 <= size <= self.table_limit()`.
    #[inline(always)]
    pub(crate) unsafe fn table_class(&self, size: usize) -> usize {
        debug_assert!(size >= 1 && size <= self.table_limit());
        // SAFETY: by the caller's contract, `(size - 1) / 8 < class_table.len()`.
        usize::from(unsafe { *self.class_table.get_unchecked((size - 1) >> 3) })
    }

    /// The pages of a span for `size` bytes at `align`, if spans serve it.
    #[inline]
    pub(crate) fn span_for(&self, size: usize, align: usize) -> Option<usize> {
        let pages = size.div_ceil(PAGE);
        (pages <= self.span_pages && align <= PAGE).then_some(pages)
    }

    /// Runs `f` on the calling thread's heap, or on the shared heap when the thread
    /// cannot use its own.
    #[inline]
    fn with_owned<R>(self: &Arc<Self>, f: impl Fn(&heap::Owned<'_>) -> R) -> R {
        // SAFETY: `with_heap` runs the closure inside an operation of the calling
        // thread's heap, which holds it.
        if let Some(r) = with_heap(self, |heap| f(&unsafe { heap.owned() })) {
            return r;
        }
        let _lock = self.shared_lock.lock();
        // SAFETY: the shared heap is held by whoever holds its lock.
        f(&unsafe { self.shared.owned() })
    }

    /// The calling thread's heap's allocated and requested bytes from its running
    /// counts, and summed over its classes' tallies: always equal.
    #[cfg(test)]
    pub(crate) fn calling_heap_counts(self: &Arc<Self>) -> ((usize, usize), (usize, usize)) {
        self.with_owned(|owned| {
            let running = owned.running_sums(self);
            assert_eq!(running.0, owned.allocated(self));
            (running, owned.net(self))
        })
    }

    /// The hot path: a block of class `class` from the calling thread's slabs of the
    /// class, and whether it is known zero; or `None` (then [`grant`](Self::grant)).
    #[inline(always)]
    pub(crate) fn grant_hot(
        self: &Arc<Self>,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        let entered = enter(self)?;
        let owned = entered.owned();
        match owned.grant_hot(self, class, size, raw) {
            Some(served) => Some(served),
            None => owned.grant_refill(self, class, size, raw),
        }
    }

    /// [`grant_hot`](Self::grant_hot) from the current slab alone, calling nothing:
    /// `None`, nothing changed, when the calling thread must bind a heap, wait for
    /// a stopper or change slabs (the caller's full path does). What it returns is
    /// the caller's choice of [`Grant`]: a caller that needs no zero flag asks for
    /// the pointer alone, which an `Option` holds in one register.
    #[inline(always)]
    pub(crate) fn grant_leaf<G: Grant>(&self, class: usize, size: usize, raw: bool) -> Option<G> {
        let entered = enter_leaf(self)?;
        if let Some((ptr, zero)) = entered.owned().grant_hot(self, class, size, raw) {
            return Some(G::from_served(ptr, zero));
        }
        // The operation goes on in the call, which ends it: nothing is left to do
        // here after it, so nothing is saved for it.
        self.grant_refill_ending(entered, class, size, raw)
    }

    /// [`Owned::grant_refill`](heap::Owned::grant_refill) inside `entered`, which it
    /// ends.
    #[inline(never)]
    fn grant_refill_ending<G: Grant>(
        &self,
        entered: thread::Entered<'_>,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Option<G> {
        let (ptr, zero) = entered.owned().grant_refill(self, class, size, raw)?;
        Some(G::from_served(ptr, zero))
    }

    /// [`release_hot`](Self::release_hot) of a typed block of `class` in the class's
    /// current slab, or in another slab of the calling thread's (as the raw leaf
    /// finds it), calling nothing unless the slab must then move: `false`, nothing
    /// changed, otherwise.
    #[inline(always)]
    pub(crate) fn release_typed_leaf(&self, ptr: *mut u8, size: usize, class: usize) -> bool {
        let Some(entered) = enter_leaf(self) else {
            return false;
        };
        let owned = entered.owned();
        if owned.release_typed_hot(class, ptr, size) {
            return true;
        }
        // Blocks held by the hundred span slabs of several sizes (a class's slabs grow
        // with what it holds): 64 blocks of 1 KiB made and freed over and over freed
        // 44 a round outside the current slab, each in a call.
        let addr = ptr.addr();
        let Some(slab) = self.own_slab_holding(&owned, entered.heap, addr) else {
            return false;
        };
        match owned.release_typed_slot(slab, class, addr, size) {
            Freed::No => false,
            Freed::Done => true,
            Freed::Moves => {
                let slab: *const Slab = slab;
                // As in `grant_leaf`: the call ends the operation.
                self.settle_ending(entered, slab)
            }
        }
    }

    /// [`release_hot`](Self::release_hot) of a raw block, calling nothing where it
    /// is a slot of a slab of a class the calling thread holds (one of the slabs its
    /// last frees found, else the page map's): `true` if `ptr` was a live raw block
    /// of the calling thread's slabs, now free; `false`, nothing changed, otherwise
    /// (the caller's full path says why).
    #[inline(always)]
    pub(crate) fn release_raw_leaf(&self, ptr: *mut u8) -> bool {
        let addr = ptr.addr();
        let Some(entered) = enter_leaf(self) else {
            return false;
        };
        let owned = entered.owned();
        let slab = match owned.last_holding(addr) {
            Some(slab) => slab,
            None => {
                // Blocks freed in no particular order (a window of blocks replaced at
                // random) miss the last slabs: the page map's three loads, here
                // rather than in a call (`stress threads 1` preloaded: 95% of its
                // frees took the call, 115 instructions each).
                // SAFETY: records live as long as the engine, which the caller holds.
                match unsafe { self.map.get(addr).as_ref() } {
                    Some(slab) if std::ptr::eq(slab.heap(), entered.heap) => {
                        owned.remember(slab);
                        slab
                    }
                    // Another thread's slab, or no slab: the full path's.
                    _ => return false,
                }
            }
        };
        if slab.class() == SPAN_CLASS {
            return owned.release_span(self, slab, addr, true, 0);
        }
        match owned.release_slot(slab, addr, true, 0) {
            Freed::No => false,
            Freed::Done => true,
            Freed::Moves => {
                let slab: *const Slab = slab;
                self.settle_ending(entered, slab)
            }
        }
    }

    /// [`release_hot`](Self::release_hot) past the class's current slab, inside
    /// `entered`, which it ends: the slab of `addr` among the calling thread's (the
    /// last that frees found, else the page map's), freed into by a typed free of
    /// `class`, or by a raw or sizeless one (`class` `None`, checked as `raw` says).
    #[inline(never)]
    fn release_elsewhere(
        &self,
        entered: thread::Entered<'_>,
        addr: usize,
        raw: bool,
        size: usize,
        class: Option<usize>,
    ) -> bool {
        let owned = entered.owned();
        let Some(slab) = self.own_slab_holding(&owned, entered.heap, addr) else {
            return false;
        };
        match class {
            Some(class) => owned.release_typed(self, slab, class, addr, size),
            None => owned.release_hot(self, slab, addr, raw, size),
        }
    }

    /// Moves `slab`, of the heap of `entered`, where a free left it, inside `entered`,
    /// which it ends; `true` (the free was done).
    #[inline(never)]
    fn settle_ending(&self, entered: thread::Entered<'_>, slab: *const Slab) -> bool {
        // SAFETY: a slab of the calling thread's heap, which holds it inside
        // `entered`; records live as long as the engine.
        let slab = unsafe { &*slab };
        entered.owned().settle(self, slab, slab.class() as usize);
        true
    }

    /// [`grant_span_hot`](Self::grant_span_hot) through the handshake's leaf: `None`,
    /// nothing changed, when the calling thread must bind a heap or wait for a
    /// stopper, or its cache has no block of `pages` pages (the caller's full path
    /// does the rest).
    #[inline(always)]
    pub(crate) fn grant_span_leaf(
        &self,
        pages: usize,
        size: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        let entered = enter_leaf(self)?;
        entered.owned().grant_span_fast(self, pages, size, raw)
    }

    /// The free of a typed large block of the calling thread's heap through the
    /// handshake's leaf and the slab lookup of the other leaves: `false`, nothing
    /// changed, for anything else (the caller's full path says why).
    #[inline(always)]
    pub(crate) fn release_span_leaf(&self, ptr: *mut u8, size: usize) -> bool {
        let addr = ptr.addr();
        let Some(entered) = enter_leaf(self) else {
            return false;
        };
        let owned = entered.owned();
        match self.own_slab_holding(&owned, entered.heap, addr) {
            Some(slab) if slab.class() == SPAN_CLASS => {
                owned.release_span(self, slab, addr, false, size)
            }
            _ => false,
        }
    }

    /// The hot path of a large block: one of `pages` pages from the calling thread's
    /// cache, and whether it is known zero; or `None` (then
    /// [`grant_span`](Self::grant_span)).
    #[inline(always)]
    pub(crate) fn grant_span_hot(
        self: &Arc<Self>,
        pages: usize,
        size: usize,
        raw: bool,
    ) -> Option<(NonNull<u8>, bool)> {
        let entered = enter(self)?;
        entered.owned().grant_span_fast(self, pages, size, raw)
    }

    /// The hot path of a free: `true` if `addr` was a live block of the calling
    /// thread's slabs, now free; `false` if the slow path ([`free`](Self::free))
    /// must look (another thread's slab, another tier, a bad pointer): nothing
    /// changed. `class`, for a typed free, lets the current slab skip the page map.
    #[inline(always)]
    pub(crate) fn release_hot(
        self: &Arc<Self>,
        ptr: *mut u8,
        raw: bool,
        size: usize,
        class: Option<usize>,
    ) -> bool {
        let Some(entered) = enter_bound(self) else {
            return false;
        };
        if let Some(class) = class {
            if entered.owned().release_typed_hot(class, ptr, size) {
                return true;
            }
        }
        self.release_elsewhere(entered, ptr.addr(), raw, size, class)
    }

    /// Resizes the live block at `ptr` in place to `size` bytes if it is a block of
    /// the calling thread's slabs whose slot holds them, or a large block of its whose
    /// pages can grow (see [`Owned::resize`](heap::Owned::resize), which says what
    /// `typed` is); how it went (`InPlace::No`: nothing changed).
    pub(crate) fn resize(
        self: &Arc<Self>,
        ptr: *mut u8,
        size: usize,
        typed: Option<usize>,
    ) -> InPlace {
        let addr = ptr.addr();
        let Some(entered) = enter_bound(self) else {
            return InPlace::No;
        };
        let owned = entered.owned();
        let Some(slab) = self.own_slab_holding(&owned, entered.heap, addr) else {
            return InPlace::No;
        };
        owned.resize(self, slab, addr, size, typed)
    }

    /// The slab of `heap` (the calling thread's, held as `owned`) that holds `addr`:
    /// one of the last that frees looked up, else the page map's, then remembered;
    /// `None` if `addr` is in no slab, or in another heap's.
    #[inline(always)]
    fn own_slab_holding<'o>(
        &self,
        owned: &'o heap::Owned<'_>,
        heap: &Heap,
        addr: usize,
    ) -> Option<&'o Slab> {
        if let Some(slab) = owned.last_holding(addr) {
            return Some(slab);
        }
        // SAFETY: records live as long as the engine.
        let slab = unsafe { self.map.get(addr).as_ref() }?;
        if !std::ptr::eq(slab.heap(), heap) {
            return None;
        }
        owned.remember(slab);
        Some(slab)
    }

    /// A block of class `class` for `size` bytes, and whether it is known zero.
    #[inline(always)]
    pub(crate) fn grant(
        self: &Arc<Self>,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        let fast = with_heap(self, |heap| {
            // SAFETY: `with_heap` runs the closure inside an operation of the calling
            // thread's heap, which holds it.
            unsafe { heap.owned() }.grant_hot(self, class, size, raw)
        });
        match fast {
            Some(Some(served)) => Ok(served),
            _ => self.grant_slow(class, size, raw),
        }
    }

    #[cold]
    #[inline(never)]
    fn grant_slow(
        self: &Arc<Self>,
        class: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        self.with_owned(|owned| owned.grant(self, class, size, raw))
    }

    /// A large block of `pages` pages for `size` bytes, and whether it is known zero.
    #[inline(always)]
    pub(crate) fn grant_span(
        self: &Arc<Self>,
        pages: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        let fast = with_heap(self, |heap| {
            // SAFETY: as in `allocate`.
            unsafe { heap.owned() }.grant_span_fast(self, pages, size, raw)
        });
        match fast {
            Some(Some(served)) => Ok(served),
            _ => self.grant_span_slow(pages, size, raw),
        }
    }

    #[cold]
    #[inline(never)]
    fn grant_span_slow(
        self: &Arc<Self>,
        pages: usize,
        size: usize,
        raw: bool,
    ) -> Result<(NonNull<u8>, bool)> {
        self.with_owned(|owned| owned.grant_span(self, pages, size, raw))
    }

    /// Frees the block at `addr`; `None` if no slab holds `addr` (another tier may).
    /// `size` is a typed holder's size; `class` the class its layout maps to, which
    /// lets the owner skip the page map when the block is in the class's current
    /// slab.
    #[inline(always)]
    pub(crate) fn release(
        self: &Arc<Self>,
        addr: usize,
        raw: bool,
        size: usize,
        class: Option<usize>,
    ) -> Option<std::result::Result<(), PointerError>> {
        /// What the calling thread's heap made of the free.
        enum Seen {
            Done(std::result::Result<(), PointerError>),
            NotInASlab,
        }
        if class.is_none() && self.map.get(addr).is_null() {
            // Not in a slab: another tier's, or foreign (and no heap is made for it).
            return None;
        }
        let seen = with_heap(self, |heap| {
            // SAFETY: `with_heap` runs the closure inside an operation of the calling
            // thread's heap, which holds it.
            let owned = unsafe { heap.owned() };
            let slab = match class.and_then(|c| owned.current_holding(c, addr)) {
                Some(slab) => slab,
                None => {
                    let slab = self.map.get(addr);
                    if slab.is_null() {
                        return Seen::NotInASlab;
                    }
                    // SAFETY: records live as long as the engine.
                    let slab = unsafe { &*slab };
                    if !std::ptr::eq(slab.heap(), heap) {
                        let posted = self.post(slab, addr, raw);
                        if posted.is_ok() && !raw {
                            owned.posted_typed(slab, size);
                        }
                        return Seen::Done(posted);
                    }
                    slab
                }
            };
            Seen::Done(owned.release(self, slab, addr, raw, size))
        });
        match seen {
            Some(Seen::Done(done)) => Some(done),
            Some(Seen::NotInASlab) => None,
            None => self.release_without_heap(addr, raw, size),
        }
    }

    /// A free on a thread that cannot use its heap now: posted like a remote one,
    /// counted on the shared heap.
    #[cold]
    fn release_without_heap(
        &self,
        addr: usize,
        raw: bool,
        size: usize,
    ) -> Option<std::result::Result<(), PointerError>> {
        let slab = self.map.get(addr);
        if slab.is_null() {
            return None;
        }
        // SAFETY: records live as long as the engine.
        let slab = unsafe { &*slab };
        let posted = self.post(slab, addr, raw);
        if posted.is_ok() && !raw {
            let _lock = self.shared_lock.lock();
            // SAFETY: the shared heap is held by whoever holds its lock.
            unsafe { self.shared.owned() }.posted_typed(slab, size);
        }
        Some(posted)
    }

    /// A free by a thread that does not own the slab.
    fn post(&self, slab: &Slab, addr: usize, raw: bool) -> std::result::Result<(), PointerError> {
        match slab.post(addr, raw) {
            Ok(Posted::Posted) => Ok(()),
            Ok(Posted::PostedFirst) => {
                // SAFETY: heaps live as long as the engine, and a record's heap never
                // changes.
                let heap = unsafe { &*slab.heap() };
                slab.push_to(&heap.inbox);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The requested size of the live raw block at `addr`; `None` if no slab holds
    /// `addr`.
    pub(crate) fn raw_size(&self, addr: usize) -> Option<std::result::Result<usize, PointerError>> {
        let slab = self.map.get(addr);
        if slab.is_null() {
            return None;
        }
        // SAFETY: records live as long as the engine.
        let slab = unsafe { &*slab };
        Some(
            slab.shared_slot_of(addr)
                .and_then(|slot| slab.check_owned(slot, true)),
        )
    }

    /// Whether a large block of the engine starts at `block` and is free (cached):
    /// the best-fit tier, which holds its pages, sees an address inside it as inside
    /// a live block.
    pub(crate) fn free_span_at(&self, block: usize) -> bool {
        let slab = self.map.get(block);
        if slab.is_null() {
            return false;
        }
        // SAFETY: records live as long as the engine.
        let slab = unsafe { &*slab };
        slab.class() == SPAN_CLASS && slab.shared_slot_of(block) == Ok(0) && !slab.slot_is_live(0)
    }

    /// The tier of the block at `addr`, if a slab holds it.
    pub(crate) fn tier_of(&self, addr: usize) -> Option<Tier> {
        let slab = self.map.get(addr);
        if slab.is_null() {
            return None;
        }
        // SAFETY: records live as long as the engine.
        let class = unsafe { &*slab }.class();
        Some(if class == SPAN_CLASS {
            Tier::Large
        } else {
            self.classes[class as usize].tier
        })
    }

    /// Counts `n` frees refused after they had returned, to report later
    /// ([`report_pending_late_refusals`](Self::report_pending_late_refusals)).
    #[inline(always)]
    pub(crate) fn count_late_refusal(&self, n: u32) {
        self.late_pending.fetch_add(n, Relaxed);
    }

    /// Prints the late refusals counted and not reported yet, unless heaps are
    /// stopped: while a pass over every heap runs, the report waits for its end (a
    /// stopped thread may hold the lock of standard error).
    pub(crate) fn report_pending_late_refusals(&self) {
        if self.late_pending.load(Relaxed) != 0 && !self.stopping.load(Relaxed) {
            self.print_late_refusals();
        }
    }

    fn print_late_refusals(&self) {
        let n = self.late_pending.swap(0, Relaxed);
        if n > 0 && self.late_reports.fetch_add(1, Relaxed) < LATE_REPORTS {
            crate::util::stderr::report!(
                "tensorpool: {n} free(s) from another thread were refused when collected \
                 (the block was freed twice, or not live with the kind freed); nothing \
                 was changed. Later refusals are only counted (stats: num_invalid_frees)."
            );
        }
    }

    // ---- heaps -----------------------------------------------------------------

    /// A heap for the calling thread: one an exited thread left, or a new one.
    pub(crate) fn adopt(&self) -> *const Heap {
        let name = {
            let t = std::thread::current();
            t.name()
                .map_or_else(|| format!("{:?}", t.id()), str::to_string)
        };
        let mut reg = self.registry.lock();
        let heap = match reg
            .heaps
            .iter_mut()
            .rev()
            .find(|(_, s)| *s == Standing::Abandoned)
        {
            Some((heap, standing)) => {
                *standing = Standing::Bound;
                &**heap as *const Heap
            }
            None => {
                let heap = Heap::boxed(&self.classes, self.span_pages);
                let ptr = &*heap as *const Heap;
                reg.heaps.push((heap, Standing::Bound));
                ptr
            }
        };
        // SAFETY: registered heaps live as long as the engine.
        *unsafe { &*heap }.thread.lock() = name;
        heap
    }

    /// The calling thread, exiting, leaves `heap` (its own) to the engine.
    pub(crate) fn abandon(&self, heap: &Heap) {
        if heap.try_enter() {
            // SAFETY: the calling thread holds its heap inside this operation.
            let owned = unsafe { heap.owned() };
            owned.flush(self);
            owned.publish_now(self);
            heap.leave();
        }
        self.report_pending_late_refusals();
        let mut reg = self.registry.lock();
        if let Some((_, standing)) = reg.heaps.iter_mut().find(|(h, _)| std::ptr::eq(&**h, heap)) {
            *standing = Standing::Abandoned;
        }
    }

    /// Runs `f` on every heap, each held for the call: the caller's own (inside an
    /// operation), the shared one (under its lock), abandoned ones (claimed), and
    /// the other threads' (stopped, where `membarrier` allows). Returns the sum.
    fn on_every_heap(self: &Arc<Self>, f: impl Fn(&heap::Owned<'_>) -> usize) -> usize {
        let _serial = self.stop_lock.lock();
        self.stopping.store(true, Relaxed);
        let mut total = 0;
        let mine = current_heap(self);
        if !mine.is_null() {
            // SAFETY: the calling thread's heap, which lives as long as the engine.
            let heap = unsafe { &*mine };
            if heap.try_enter() {
                // SAFETY: inside an operation of the calling thread's own heap.
                total += f(&unsafe { heap.owned() });
                heap.leave();
            }
        }
        {
            let _lock = self.shared_lock.lock();
            // SAFETY: the shared heap is held by whoever holds its lock.
            total += f(&unsafe { self.shared.owned() });
        }
        let (claimed, bound): (Vec<*const Heap>, Vec<*const Heap>) = {
            let mut reg = self.registry.lock();
            let mut claimed = Vec::new();
            let mut bound = Vec::new();
            for (heap, standing) in reg.heaps.iter_mut() {
                let ptr = &**heap as *const Heap;
                if ptr == mine {
                    continue;
                }
                match standing {
                    Standing::Abandoned => {
                        *standing = Standing::Claimed;
                        claimed.push(ptr);
                    }
                    Standing::Bound => bound.push(ptr),
                    Standing::Claimed => {}
                }
            }
            (claimed, bound)
        };
        for &heap in &claimed {
            // SAFETY: a claimed heap has no thread and no other claimant.
            total += f(&unsafe { (*heap).owned() });
        }
        {
            let mut reg = self.registry.lock();
            for (heap, standing) in reg.heaps.iter_mut() {
                if claimed.contains(&(&**heap as *const Heap)) {
                    *standing = Standing::Abandoned;
                }
            }
        }
        // SAFETY: registered heaps live as long as the engine.
        let bound: Vec<&Heap> = bound.into_iter().map(|h| unsafe { &*h }).collect();
        let stopped = Stopped::all(&bound);
        for heap in stopped.heaps() {
            // SAFETY: the heap is stopped: its owner waits until `stopped` drops.
            total += f(&unsafe { heap.owned() });
        }
        drop(stopped);
        self.stopping.store(false, Relaxed);
        self.print_late_refusals();
        total
    }

    /// Takes everything of the engine's that another thread could hold at a
    /// `fork()`, in the engine's lock order (`manager::fork`): the stopper's lock,
    /// the registry, every other thread's heap stopped (where `membarrier` allows),
    /// the shared heap, the best-fit tier, the page map's writers (a shared-heap
    /// operation takes them in this order: `with_owned`, then `take_pages`, then
    /// `PageMap::set`). The caller is in no operation of its own heap.
    pub(crate) fn hold_for_fork(&self) -> EngineHold<'_> {
        let serial = self.stop_lock.lock();
        let mine = current_heap(self);
        let registry = self.registry.lock();
        let bound: Vec<&Heap> = registry
            .heaps
            .iter()
            .filter(|(heap, standing)| *standing == Standing::Bound && !std::ptr::eq(&**heap, mine))
            // SAFETY: registered heaps live as long as the engine.
            .map(|(heap, _)| unsafe { &*(&**heap as *const Heap) })
            .collect();
        let stopped = Stopped::all(&bound);
        let shared = self.shared_lock.lock();
        let large = self.large.hold_for_fork();
        EngineHold {
            map: self.map.hold_for_fork(),
            large,
            shared,
            stopped,
            registry,
            serial,
        }
    }

    /// In a forked child: lets the hold go, and leaves the heaps that were stopped
    /// (their threads did not come with the fork) to the child's threads to adopt.
    /// A heap that could not be stopped (no `membarrier`) may have been half
    /// changed by its thread: it stays bound to that thread, never touched again.
    pub(crate) fn in_forked_child(&self, hold: EngineHold<'_>) {
        let stopped: Vec<*const Heap> = hold.stopped.heaps().map(std::ptr::from_ref).collect();
        drop(hold);
        let mut reg = self.registry.lock();
        for (heap, standing) in reg.heaps.iter_mut() {
            if stopped.contains(&std::ptr::from_ref(&**heap)) && *standing == Standing::Bound {
                *standing = Standing::Abandoned;
                // Its owner, stopped outside any operation, may have been inside the
                // handshake's own few instructions when the memory was copied (its
                // mark set, the signal read, the mark not yet cleared): no thread of
                // the child runs it, and the next that adopts it starts afresh.
                heap.hot.active.store(0, Relaxed);
            }
        }
        self.stopping.store(false, Relaxed);
    }

    /// Gives the slots of explicit pool `class` that sit in other threads' empty
    /// slabs back to the pool: when some heap holds a slab of the pool whose every
    /// live slot has a free pending (posted by another thread) or that has none,
    /// every heap collects its pending frees and gives back its empty slabs of the
    /// pool (its current one too). Returns the bytes of the slabs given back (0, and
    /// nothing stopped, when no slab of the pool can empty: its blocks are live, or
    /// its free slots are in slabs that also hold live blocks, which stay with their
    /// thread).
    ///
    /// A pool's capacity goes to the slabs a thread makes for it, and a slab keeps
    /// its slots while it is empty: a thread that used a pool once kept it full for
    /// every other thread.
    pub(crate) fn reclaim_pool(self: &Arc<Self>, class: usize) -> usize {
        if self.classes[class].capacity.is_none() {
            return 0;
        }
        let could_empty = {
            let reg = self.registry.lock();
            let could_empty = reg
                .heaps
                .iter()
                .map(|(h, _)| &**h)
                .chain([&*self.shared])
                .flat_map(|heap| heap.records())
                // A moment's view of records other threads own: a hint, and the
                // stopped heaps below decide.
                .any(|slab| {
                    slab.is_live()
                        && slab.class() as usize == class
                        && slab.live() <= slab.pending()
                });
            could_empty
        };
        if !could_empty {
            return 0;
        }
        self.on_every_heap(|owned| {
            owned.collect_all(self);
            owned.release_empty_class(self, class)
        })
    }

    /// Collects every pending free and gives every empty slab and cached block back
    /// to the best-fit tier; returns the bytes given back.
    pub(crate) fn trim(self: &Arc<Self>) -> usize {
        self.on_every_heap(|owned| {
            let released = owned.flush(self);
            owned.publish_now(self);
            released
        })
    }

    /// A pass of the release policy over every heap (see `Owned::release_idle`):
    /// returns the bytes given back to the best-fit tier.
    pub(crate) fn release_idle(self: &Arc<Self>, min_age: u8) -> usize {
        self.on_every_heap(|owned| owned.release_idle(self, min_age))
    }

    /// The allocations every heap made so far (a count that changes whenever a thread
    /// allocates from the engine, for the release policy's idle test).
    pub(crate) fn allocations(&self) -> u64 {
        let reg = self.registry.lock();
        reg.heaps
            .iter()
            .map(|(h, _)| &**h)
            .chain([&*self.shared])
            .map(|heap| {
                heap.tally
                    .iter()
                    .map(|t| t.allocs.get())
                    .fold(heap.hot.large.allocs.get(), u64::wrapping_add)
            })
            .fold(0, u64::wrapping_add)
    }

    /// Readies the calling thread's heap for a locked tier to add a block: gives
    /// back what its cache holds beyond its budget (the block is placed among pages
    /// as eager giving back leaves them, see `Owned::trim_cache`), and publishes its
    /// bytes to the totals if they changed by a step (so that a peak counts this
    /// heap as it is, not as it was).
    pub(crate) fn before_tier_places(self: &Arc<Self>) {
        if let Some(entered) = enter_bound(self) {
            let owned = entered.owned();
            owned.trim_cache(self);
            owned.publish(self);
        }
    }

    /// Gives the calling thread's empty slabs and cached large blocks back to the
    /// best-fit tier (before it grows for a block of its own); returns the bytes.
    pub(crate) fn release_current(self: &Arc<Self>) -> usize {
        match enter_bound(self) {
            Some(entered) => entered.owned().release_empty(self, None),
            None => 0,
        }
    }

    /// The calling thread's heap: collects and gives back what it holds free.
    pub(crate) fn flush_current(self: &Arc<Self>) {
        let mine = current_heap(self);
        if mine.is_null() {
            return;
        }
        // SAFETY: the calling thread's heap, which lives as long as the engine.
        let heap = unsafe { &*mine };
        if heap.try_enter() {
            // SAFETY: inside an operation of the calling thread's own heap.
            let owned = unsafe { heap.owned() };
            owned.flush(self);
            owned.publish_now(self);
            heap.leave();
        }
    }

    /// The figures of every heap, after collecting the frees other threads posted.
    pub(crate) fn stats(self: &Arc<Self>) -> EngineStats {
        let largest = std::cell::Cell::new(0);
        let empty_current = self.on_every_heap(|owned| {
            owned.collect_all(self);
            largest.set(largest.get().max(owned.largest_cached_span()));
            owned.empty_current_bytes()
        });
        let mut s = EngineStats {
            classes: vec![ClassFigures::default(); self.classes.len()],
            largest_cached_span: largest.get(),
            cached_bytes: empty_current,
            ..EngineStats::default()
        };
        let reg = self.registry.lock();
        let heaps = reg
            .heaps
            .iter()
            .map(|(h, standing)| (&**h, *standing == Standing::Bound))
            .chain([(&*self.shared, false)]);
        for (heap, bound) in heaps {
            let c = &heap.counts;
            let mut thread = crate::observe::stats::ThreadCacheStats {
                thread: heap.thread.lock().clone(),
                cached_bytes: c.cached_bytes.get() as usize,
                num_allocs: 0,
                num_frees: 0,
                remote_frees: c.remote_frees.get(),
                slabs: c.spans.get() as usize,
            };
            let mut add = |tier: usize, allocs: u64, frees: u64, bytes: u64, requested: u64| {
                let figures = &mut s.tiers[tier];
                figures.allocs += allocs;
                figures.frees += frees;
                figures.bytes = figures.bytes.wrapping_add(bytes);
                figures.requested = figures.requested.wrapping_add(requested);
                thread.num_allocs += allocs;
                thread.num_frees += frees;
            };
            for (class, tally) in self.classes.iter().zip(heap.tally.iter()) {
                let (bytes, requested) = tally.live(class.stride);
                add(
                    class.tier_index,
                    tally.allocs.get(),
                    tally.frees.get(),
                    bytes,
                    requested,
                );
            }
            let large = &heap.hot.large;
            add(
                heap::LARGE,
                large.allocs.get(),
                large.frees.get(),
                large.bytes.get(),
                large.requested.get(),
            );
            for (figures, counts) in s.classes.iter_mut().zip(c.classes.iter()) {
                figures.slabs += counts.slabs.get();
                figures.slab_bytes += counts.slab_bytes.get();
                figures.misses += counts.misses.get();
                thread.slabs += counts.slabs.get() as usize;
            }
            for slab in heap.records().filter(|r| r.is_live()) {
                let class = slab.class();
                if class != SPAN_CLASS {
                    let figures = &mut s.classes[class as usize];
                    figures.live += slab.live() as u64;
                    figures.slots += slab.slots() as u64;
                }
            }
            s.spans += c.spans.get();
            s.span_bytes += c.span_bytes.get();
            s.span_misses += c.span_misses.get();
            s.cached_bytes += c.cached_bytes.get() as usize;
            s.late_refusals += c.late_refusals.get();
            let (allocated, requested) = heap.net(self);
            let unpublished =
                |now: usize, published: u64| now.wrapping_sub(published as usize) as isize;
            s.pending.0 = s
                .pending
                .0
                .wrapping_add(unpublished(allocated, c.published_allocated.get()));
            s.pending.1 = s
                .pending
                .1
                .wrapping_add(unpublished(requested, c.published_requested.get()));
            if bound {
                s.threads.push(thread);
            }
        }
        s
    }

    /// Appends a snapshot of every slab (segments of their tier) to `out`.
    pub(crate) fn snapshot_into(self: &Arc<Self>, out: &mut Vec<SegmentSnapshot>) {
        let segments = std::cell::RefCell::new(Vec::new());
        self.on_every_heap(|owned| {
            owned.collect_all(self);
            let mut segments = segments.borrow_mut();
            for slab in owned.slabs() {
                let (address, size) = owned.extent(slab);
                let class = slab.class();
                let (tier, block_size) = if class == SPAN_CLASS {
                    (Tier::Large, None)
                } else {
                    let c = &self.classes[class as usize];
                    (c.tier, Some(c.stride))
                };
                let stride = slab.stride();
                let blocks: Vec<BlockSnapshot> = owned
                    .live_slots(slab)
                    .into_iter()
                    .map(|(slot, raw)| BlockSnapshot {
                        address: address + slot as usize * stride,
                        size: stride,
                        // Only raw slots record the size asked.
                        requested: if raw { slab.requested(slot) } else { stride },
                        state: BlockState::live(raw),
                    })
                    .collect();
                let live = blocks.len();
                segments.push(SegmentSnapshot {
                    tier,
                    address,
                    size,
                    block_size,
                    allocated_bytes: live * stride,
                    free_blocks: slab.slots() as usize - live,
                    blocks,
                });
            }
            0
        });
        let mut segments = segments.into_inner();
        segments.sort_by_key(|s| s.address);
        out.extend(segments);
    }
}

/// An engine of one 64-byte class over the heap, slabs of one page (64 slots): what
/// the loom models and the engine's own tests run on.
#[cfg(test)]
fn one_class_engine() -> Arc<Engine> {
    let classes = SizeClasses::new(64, 128, 1).expect("a valid table");
    let large = BestFit::builder()
        .upstream(Arc::new(crate::upstream::HeapUpstream))
        .build()
        .expect("valid settings");
    Engine::new(
        Some(classes),
        &[],
        64,
        0,
        PAGE,
        1 << 20,
        large,
        Arc::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_every_allocation_reads_shares_no_line_with_what_threads_write() {
        use std::mem::offset_of;
        assert_eq!(std::mem::align_of::<Engine>(), 64);
        let written_from = offset_of!(Engine, map) + page_map::PageMap::WRITERS_AT;
        assert_eq!(written_from % 64, 0);
        for read in [
            offset_of!(Engine, id),
            offset_of!(Engine, classes),
            offset_of!(Engine, strides),
            offset_of!(Engine, class_table),
            offset_of!(Engine, span_pages),
            offset_of!(Engine, alignment),
            offset_of!(Engine, totals),
            offset_of!(Engine, size_classes),
            offset_of!(Engine, map),
        ] {
            assert!(read < written_from);
        }
        for written in [
            offset_of!(Engine, large),
            offset_of!(Engine, registry),
            offset_of!(Engine, shared_lock),
            offset_of!(Engine, stop_lock),
            offset_of!(Engine, late_pending),
        ] {
            assert!(written >= written_from);
        }
    }

    fn class(stride: usize) -> Class {
        Class {
            stride,
            block_size: stride,
            align: 64,
            tier: Tier::Small,
            tier_index: heap::SMALL,
            capacity: None,
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive arithmetic, no unsafe code")]
    fn the_class_table_agrees_with_the_arithmetic() {
        for (min, max, per) in [
            (64, 32 << 10, 8),
            (16, 32 << 10, 8),
            (8, 1 << 20, 1),
            (64, 4096, 4),
        ] {
            let sc = SizeClasses::new(min, max, per).unwrap();
            let large = BestFit::builder()
                .upstream(Arc::new(crate::upstream::HeapUpstream))
                .build()
                .unwrap();
            let eng = Engine::new(
                Some(sc.clone()),
                &[],
                8,
                0,
                1 << 18,
                0,
                large,
                Default::default(),
            );
            for align in [8, 16, 64, 256, 4096] {
                for size in 1..=max + 100 {
                    assert_eq!(
                        eng.class_for(size, align),
                        sc.class_for(size, align),
                        "{size} {align}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_heap_a_fork_caught_inside_the_handshake_is_adopted_clean() {
        // A stopper sees an owner outside any operation and goes on; the owner may
        // then set its mark, read the signal and give up (`enter_leaf`, or `enter`
        // waiting): a fork in those few instructions copies the mark set. The child
        // leaves the heap to its threads to adopt, its mark cleared (the debug
        // assertion of the hot paths failed at the adopter's first operation).
        let eng = one_class_engine();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let owner = std::thread::spawn({
            let eng = eng.clone();
            move || {
                let (p, _) = eng.grant(0, 64, true).unwrap();
                assert!(eng.release_raw_leaf(p.as_ptr()));
                bound_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            }
        });
        bound_rx.recv().unwrap();
        // The owner's heap: the only one bound (this thread has none).
        let heap: *const Heap = eng
            .registry
            .lock()
            .heaps
            .iter()
            .find(|(_, s)| *s == Standing::Bound)
            .map(|(h, _)| &**h as *const Heap)
            .expect("the owner's heap");
        // SAFETY: the engine's heaps live as long as the engine.
        let heap = unsafe { &*heap };
        let hold = eng.hold_for_fork();
        heap.hot.active.store(1, Relaxed); // as the copied mark would be
        eng.in_forked_child(hold);
        assert_eq!(heap.hot.active.load(Relaxed), 0);
        let standing = eng
            .registry
            .lock()
            .heaps
            .iter()
            .find(|(h, _)| std::ptr::eq(&**h, heap))
            .map(|(_, s)| *s);
        assert_eq!(standing, Some(Standing::Abandoned));
        go_tx.send(()).unwrap();
        owner.join().unwrap();
        // The next thread adopts it and works in it.
        std::thread::scope(|s| {
            s.spawn(|| {
                let (p, _) = eng.grant(0, 64, true).unwrap();
                assert!(eng.release_raw_leaf(p.as_ptr()));
            });
        });
    }

    #[test]
    fn freed_blocks_come_back_last_freed_first() {
        // 100 typed blocks of one class (two slabs of 64), freed in order: the next
        // allocations take the current slab's blocks back, the last freed first (its
        // lines are the warmest), and 100 of them make no new slab.
        let mm = crate::MemoryManager::new(
            crate::Config::builder()
                .upstream(crate::UpstreamKind::Heap)
                .build()
                .unwrap(),
        )
        .unwrap();
        let layout = std::alloc::Layout::from_size_align(64, 64).unwrap();
        let take = |n: usize| -> Vec<NonNull<u8>> {
            (0..n)
                .map(|_| {
                    allocator_api2::alloc::Allocator::allocate(&mm, layout)
                        .unwrap()
                        .cast()
                })
                .collect()
        };
        let slabs = || mm.stats().classes.iter().map(|c| c.slabs).sum::<usize>();
        let first = take(100);
        let made = slabs();
        for &p in &first {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { allocator_api2::alloc::Allocator::deallocate(&mm, p, layout) };
        }
        let mut again = take(100);
        let reversed: Vec<NonNull<u8>> = first[64..].iter().rev().copied().collect();
        assert_eq!(again[..36], reversed[..]);
        let mut distinct: Vec<usize> = again.iter().map(|p| p.as_ptr().addr()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 100);
        assert!(distinct.iter().all(|a| a % 64 == 0));
        assert_eq!(slabs(), made);
        assert_eq!(mm.stats().allocated_blocks, 100);
        for p in again.drain(..).rev() {
            // SAFETY: as above.
            unsafe { allocator_api2::alloc::Allocator::deallocate(&mm, p, layout) };
        }
        let s = mm.stats();
        assert_eq!((s.allocated_blocks, s.allocated_bytes), (0, 0));
        // A raw block taken from a reused slot is checked as raw.
        let r = mm.allocate_raw(64, 64).unwrap();
        assert!(distinct.contains(&r.as_ptr().addr()));
        assert!(mm.free_raw(r.as_ptr()).is_ok());
        assert!(mm.free_raw(r.as_ptr()).is_err());
    }

    #[test]
    fn slabs_grow_with_demand_and_waste_little() {
        // A first slab is a page (or one slot of a larger class), then as large as
        // what the class holds, up to the largest slab.
        assert_eq!(class(64).slab_layout(0, 256 << 10), (64, 4096));
        assert_eq!(class(64).slab_layout(4096, 256 << 10), (64, 4096));
        assert_eq!(class(64).slab_layout(8192, 256 << 10), (128, 8192));
        assert_eq!(class(64).slab_layout(1 << 30, 256 << 10), (4096, 256 << 10));
        assert_eq!(class(32 << 10).slab_layout(0, 256 << 10), (1, 32 << 10));
        // A class that does not divide a page takes enough slots to waste < 1/16.
        for stride in [72, 104, 4608, 5120, 7168, 18 << 10, 28 << 10] {
            for held in [0, 64 << 10, 1 << 20] {
                let (slots, bytes) = class(stride).slab_layout(held, 256 << 10);
                assert_eq!(bytes % PAGE, 0);
                assert!(slots as usize * stride <= bytes);
                assert!(
                    (bytes - slots as usize * stride) * 16 <= bytes,
                    "{stride} {held}"
                );
            }
        }
    }
}
