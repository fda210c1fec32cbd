//! `MemoryManager`: the tiered front that routes every request by size.
//!
//! - explicit pools named in the [`Config`] are tried first, smallest fitting first,
//!   and when all are full the request falls through to the tiers (it never gives
//!   up at the first full pool);
//! - sizes up to `small_threshold` are slots of size-class slabs, and sizes up to
//!   `medium_threshold` large blocks of their own pages, both owned by the calling
//!   thread's heap in the [small-block engine](crate::tiers::slab): no lock, frees checked
//!   in O(1) from the address;
//! - sizes up to `huge_threshold` go to the coalescing [`BestFit`] tier, which also
//!   gives the engine its pages;
//! - larger ones get dedicated segments from the [`HugeCache`], cached by size.
//!
//! All memory comes through one [`MeteredUpstream`], which counts reserved and
//! resident bytes and enforces the optional limit. When an allocation runs out of
//! memory, the manager returns cached memory to upstream ([`trim`](MemoryManager::trim))
//! and retries once before reporting an [`OutOfMemory`](crate::OutOfMemory) that
//! describes its state.
//!
//! # Memory given back
//!
//! Free memory unused for [`Config::release_delay_ms`] (1 s by default) goes back to
//! the system, in every tier and from every thread, while memory reused within the
//! delay stays warm; above [`Config::soft_limit`] free memory goes back at once, and
//! [`trim`](MemoryManager::trim) gives back all of it now. The policy runs on the
//! manager's slow paths, and with [`Config::background_release`] from a background
//! thread while the program is idle. `stats()` counts `resident_bytes` (reserved less
//! the pages given back in place), `released_bytes` and `num_releases`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tensorpool::clock::ManualClock;
//! use tensorpool::{Config, MemoryManager};
//!
//! let clock = Arc::new(ManualClock::new());
//! let mm = MemoryManager::with_clock(Config::default(), clock.clone())?;
//! let big = mm.allocate_raw(64 << 20, 64)?;
//! mm.free_raw(big.as_ptr())?;
//! let resident = mm.stats().resident_bytes;
//! for _ in 0..4 {
//!     clock.advance(Duration::from_millis(500)); // passes run a half-delay apart
//!     mm.release_idle();
//! }
//! assert!(mm.stats().resident_bytes + (60 << 20) <= resident); // given back
//! # Ok::<(), tensorpool::Error>(())
//! ```
//!
//! Memory is handed out three ways, which this crate calls *typed* and *raw*:
//!
//! - **typed**: through allocator-api2's [`Allocator`](allocator_api2::alloc::Allocator) (`Vec<f32, &MemoryManager>`,
//!   hashbrown) and the owning [`Tensor`](crate::Tensor) handle, whose frees come with
//!   the layout of the allocation;
//! - **raw**: through [`allocate_raw`](MemoryManager::allocate_raw) and the safe
//!   [`free_raw`](MemoryManager::free_raw), for foreign callers (NumPy, C) that free
//!   with the address alone; the manager finds the block from the address, never
//!   reading the memory, and refuses anything that is not a live raw block;
//! - as [`Arena`]s whose chunks are typed blocks of the manager.
//!
//! A `MemoryManager` is a cheap handle: clones share one manager, which lives until
//! the last handle, tensor and arena are gone.
//!
//! The module's files, one concept each (`docs/ARCHITECTURE.md` walks the paths):
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the public handle and its methods; `Inner`, the shared state |
//! | `allocator.rs` | allocator-api2's `Allocator` for `&MemoryManager` |
//! | `serve.rs` | the allocation path: hot path, debug guards, retry after trim, routing by size |
//! | `reclaim.rs` | the free path and the raw size queries |
//! | `release.rs` | memory given back: the release policy's passes, the soft limit, `trim` |
//! | `releaser.rs` | the background thread that runs the passes while the program is idle |
//! | `owners.rs` | the owner map of the locked tiers, the upstream adaptor that fills it, the lookups |
//! | `counters.rs` | the manager's counters and the totals of bytes held |
//! | `stats.rs` | `stats()`: every tier's counts gathered |
//! | `arena_upstream.rs` | the upstream of arenas made by the manager |
//! | `tests.rs` | unit and property tests against a model |
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use tensorpool::{Config, MemoryManager};
//!
//! let mm = MemoryManager::new(Config::default())?;
//! let mut v: Vec<f32, &MemoryManager> = Vec::with_capacity_in(1024, &mm);
//! v.extend((0..1024).map(|i| i as f32));
//! assert_eq!(v.as_ptr() as usize % 64, 0);
//!
//! let raw = mm.allocate_raw(10 << 20, 64)?; // best-fit tier
//! assert!(mm.free_raw(v.as_ptr() as *mut u8).is_err()); // owned by the Vec: refused
//! mm.free_raw(raw.as_ptr())?;
//! assert!(mm.free_raw(raw.as_ptr()).is_err()); // double free: refused, nothing changes
//! drop(v);
//! assert_eq!(mm.stats().allocated_bytes, 0);
//! mm.trim();
//! assert_eq!(mm.stats().reserved_bytes, 0);
//! # Ok::<(), tensorpool::Error>(())
//! ```

mod allocator;
mod arena_upstream;
mod counters;
mod fork;
mod owners;
mod reclaim;
mod release;
mod releaser;
mod serve;
mod stats;
#[cfg(test)]
mod tests;

use crate::config::{Config, UpstreamKind};
use crate::error::{Error, Result};
use crate::observe::debug::{GuardViolation, LeakReport, Tracker};
use crate::observe::snapshot::Snapshot;
use crate::observe::stats::{Stats, Tier};
use crate::tiers::arena::Arena;
use crate::tiers::best_fit::BestFit;
use crate::tiers::huge::HugeCache;
use crate::tiers::size_class::SizeClasses;
use crate::tiers::slab::Engine;
#[cfg(all(unix, not(miri)))]
use crate::upstream::MmapUpstream;
use crate::upstream::{HeapUpstream, MeteredUpstream, Upstream};
use crate::util::clock::{Clock, MonotonicClock};
use crate::util::sync::{CacheLine, RwLock};
use arena_upstream::ArenaUpstream;
use counters::Counters;
use owners::{Owner, Registrar};
use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// The tiered memory manager.
#[derive(Clone)]
pub struct MemoryManager {
    inner: Arc<Inner>,
}

/// A raw block that grows beyond its own, from this size up, moves to one with room
/// for an eighth more (see [`MemoryManager::reallocate_raw`]). Below it, the size
/// classes' spacing leaves room.
const ROOM_FROM: usize = 4096;

// What every allocation and free reads first, on a line that nothing writes after
// the manager is made (`repr(C)` keeps the order): the release policy's tick of the
// slow paths, which every thread writes, and the counters are further on.
#[repr(C)]
struct Inner {
    /// The largest size whose class the hot paths look up in the engine's table, at
    /// an alignment up to `table_align`; 0 when the hot paths may not serve (debug
    /// mode, which records every block) or serve pools instead (explicit pools,
    /// which are tried first: `pools_hot`).
    table_limit: usize,
    table_align: usize,
    /// The sizes only spans serve, where the hot paths go to them at once: past
    /// `span_floor`, `span_sizes` of them (0 when the hot paths may not serve).
    span_floor: usize,
    span_sizes: usize,
    /// Slabs of size classes and explicit pools, and cached large blocks; it holds
    /// the best-fit tier, which gives it pages.
    engine: Arc<Engine>,
    /// Whether the hot paths serve the size classes and spans (no debug mode, no
    /// explicit pools).
    fast: bool,
    /// Whether the config names explicit pools: then a block's layout does not say
    /// where it is, and frees look it up.
    pools: bool,
    /// Whether the hot paths serve the explicit pools (pools, and no debug mode):
    /// the smallest pool that fits, from the calling thread's current slab of it.
    pools_hot: bool,
    _read_only_line: [CacheLine; 0],
    config: Config,
    huge: HugeCache,
    metered: Arc<MeteredUpstream>,
    /// Regions of the best-fit and huge tiers, for frees the engine does not hold.
    owners: Arc<RwLock<owners::Regions>>,
    counters: Counters,
    /// Debug mode's records of live blocks and overruns.
    debug: Option<Tracker>,
    /// The release policy.
    release: release::Release,
    /// Whether the background thread serves this manager.
    background: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(tracker) = &self.debug {
            let report = tracker.leaks("manager");
            if report.count > 0 {
                crate::util::stderr::report!("tensorpool: {report}");
            }
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryManager")
            .field("reserved_bytes", &self.metered.reserved_bytes())
            .field("allocated_bytes", &self.counters.totals.current().0)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for MemoryManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Default for MemoryManager {
    fn default() -> Self {
        Self::new(Config::default()).expect("the default config is valid")
    }
}

impl MemoryManager {
    /// A manager with `config`, taking memory from the upstream the config names.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_clock(config, Arc::new(MonotonicClock::new()))
    }

    /// A manager with `config` whose release policy reads `clock` (a
    /// [`ManualClock`](crate::clock::ManualClock) in tests, or one that follows a
    /// recorded trace's times).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self> {
        let upstream: Arc<dyn Upstream> =
            match config.upstream {
                #[cfg(all(unix, not(miri)))]
                UpstreamKind::Mmap => Arc::new(MmapUpstream::new(config.uses_huge_pages())),
                #[cfg(not(all(unix, not(miri))))]
                UpstreamKind::Mmap => return Err(Error::InvalidConfig(
                    "the mmap upstream is not available on this platform; use upstream = \"heap\""
                        .into(),
                )),
                UpstreamKind::Heap => Arc::new(HeapUpstream),
            };
        Self::with_upstream_and_clock(config, upstream, clock)
    }

    /// A manager with `config`, taking memory from `upstream` (a device, a test
    /// double, a wrapper that injects failures).
    pub fn with_upstream(config: Config, upstream: Arc<dyn Upstream>) -> Result<Self> {
        Self::with_upstream_and_clock(config, upstream, Arc::new(MonotonicClock::new()))
    }

    /// A manager with `config`, `upstream` and the release policy's `clock`.
    pub fn with_upstream_and_clock(
        config: Config,
        upstream: Arc<dyn Upstream>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        config.validate()?;
        let classes = config.size_classes()?;
        let metered = Arc::new(MeteredUpstream::new(upstream, config.memory_limit));
        let owners = Arc::new(RwLock::new(owners::Regions::default()));
        let registrar = |owner| -> Arc<dyn Upstream> {
            Arc::new(Registrar {
                upstream: metered.clone(),
                owners: owners.clone(),
                owner,
            })
        };
        let large = BestFit::builder()
            .granularity(config.large_granularity)
            .segment_size(config.segment_size)
            .expandable(config.expandable_segments != Some(false))
            .commit_granularity(config.commit_granularity)
            .max_split_size(config.max_split_size)
            .max_oversize_waste(config.max_oversize_waste)
            .tier(Tier::Large)
            .upstream(registrar(Owner::Large))
            .build()?;
        let huge = HugeCache::with_upstream(config.huge_cache_limit, registrar(Owner::Huge));
        let counters = Counters::default();
        let mut pools: Vec<(usize, usize)> = config
            .pools
            .iter()
            .map(|p| (p.block_size, p.capacity))
            .collect();
        pools.sort_unstable();
        let engine = Engine::new(
            classes,
            &pools,
            config.alignment,
            config.medium_threshold,
            config.pool_chunk_size,
            config.thread_cache_bytes,
            large,
            counters.totals.clone(),
        );
        let debug = config.debug.then(Tracker::default);
        let fast = config.pools.is_empty() && !config.debug;
        let release = release::Release::new(
            clock,
            config
                .release_delay_ms
                .map(std::time::Duration::from_millis),
            config
                .max_release_delay_ms
                .map(std::time::Duration::from_millis),
            config.soft_limit,
        );
        let background = config.background_release == Some(true);
        let mm = MemoryManager {
            inner: Arc::new(Inner {
                table_limit: if fast { engine.table_limit() } else { 0 },
                table_align: config.alignment,
                span_floor: engine.span_sizes().0,
                span_sizes: if fast { engine.span_sizes().1 } else { 0 },
                fast,
                pools: !config.pools.is_empty(),
                pools_hot: !config.pools.is_empty() && !config.debug,
                _read_only_line: [],
                config,
                engine,
                huge,
                metered,
                owners,
                counters,
                debug,
                release,
                background,
            }),
        };
        if background {
            releaser::register(&mm.inner);
        }
        Ok(mm)
    }

    /// Whether `self` and `other` are handles to the same manager.
    pub fn same_manager(&self, other: &MemoryManager) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The configuration in effect: the one the manager was made with, and the
    /// settings changed since ([`set_memory_limit`](Self::set_memory_limit),
    /// [`set_soft_limit`](Self::set_soft_limit),
    /// [`set_release_delay`](Self::set_release_delay)) as they are now.
    pub fn config(&self) -> Config {
        let inner = &self.inner;
        // Whole milliseconds, rounded up (a delay of 500 µs is not "0 ms").
        let delay_ms = inner
            .release
            .delay()
            .map(|d| u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX));
        Config {
            memory_limit: inner.metered.limit(),
            soft_limit: inner.release.soft_limit(),
            release_delay_ms: delay_ms,
            // A delay set above the configured maximum is not stretched (see
            // `set_release_delay`): the same as a maximum equal to it, which a valid
            // config needs.
            max_release_delay_ms: match (inner.config.max_release_delay_ms, delay_ms) {
                (Some(max), Some(delay)) => Some(max.max(delay)),
                (max, _) => max,
            },
            ..inner.config.clone()
        }
    }

    /// The size classes of the small tier, if it has any.
    pub fn size_classes(&self) -> Option<&SizeClasses> {
        self.inner.engine.size_classes()
    }

    /// Collects the frees other threads made into the calling thread's slabs, and
    /// gives the thread's empty slabs and cached large blocks back to the best-fit
    /// tier. Threads do this when they exit; a worker thread that goes idle for long
    /// can call it (`trim()` does it for every thread).
    pub fn flush_thread_cache(&self) {
        self.inner.engine.flush_current();
    }

    /// `size` bytes aligned to `align` (a power of two up to a page; the configured
    /// alignment at least), for a foreign caller: NumPy, C, a tensor library.
    ///
    /// Give it back with [`free_raw`](Self::free_raw).
    #[inline]
    pub fn allocate_raw(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        if align.is_power_of_two() {
            if let Some(ptr) = self.inner.serve_leaf::<NonNull<u8>>(size, align, true) {
                return Ok(ptr);
            }
        }
        self.allocate_raw_past_leaf(size, align)
    }

    /// [`allocate_raw`](Self::allocate_raw) past its leaf (see
    /// [`Allocator::allocate`](allocator_api2::alloc::Allocator::allocate)'s): the
    /// other hot paths, then the full path, which refuses a bad alignment.
    #[inline(never)]
    fn allocate_raw_past_leaf(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        match self.inner.serve_hot_raw(size, align) {
            Some((ptr, _)) => Ok(ptr),
            None => self.inner.serve(size, align, true).map(|(p, _)| p),
        }
    }

    /// The same as [`allocate_raw`](Self::allocate_raw), with the memory zeroed
    /// (without writing it when the block's pages are fresh from the system).
    #[inline]
    pub fn allocate_raw_zeroed(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        if align.is_power_of_two() {
            if let Some((ptr, zero)) = self
                .inner
                .serve_leaf::<(NonNull<u8>, bool)>(size, align, true)
            {
                if !zero {
                    // SAFETY: a fresh block of at least `size` bytes, exclusively ours.
                    unsafe { ptr.as_ptr().write_bytes(0, size) };
                }
                return Ok(ptr);
            }
        }
        self.allocate_raw_zeroed_past_leaf(size, align)
    }

    /// [`allocate_raw_zeroed`](Self::allocate_raw_zeroed) past its leaf, as
    /// [`allocate_raw_past_leaf`](Self::allocate_raw_past_leaf).
    #[inline(never)]
    fn allocate_raw_zeroed_past_leaf(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        let (ptr, zero) = match self.inner.serve_hot_raw(size, align) {
            Some(served) => served,
            None => self.inner.serve(size, align, true)?,
        };
        if !zero {
            // SAFETY: the block is `size` bytes, fresh, and exclusively ours.
            unsafe { ptr.as_ptr().write_bytes(0, size) };
        }
        Ok(ptr)
    }

    /// Frees a block from [`allocate_raw`](Self::allocate_raw).
    ///
    /// Safe for any address: the block is found from the address in side tables
    /// (for slab blocks, the engine's page map: O(1), no lock), the memory is never
    /// read, and an address that is not a live raw block (never allocated, already
    /// freed, inside a block, owned by a typed handle) returns
    /// [`Error::InvalidPointer`] and changes nothing. A free of a block another
    /// thread's slab holds is posted to that thread and checked at once as far as
    /// it can be; what only the owner can tell (the block was freed and handed out
    /// again meanwhile) it checks when it collects the post, and counts a refusal
    /// then in `stats().num_invalid_frees` instead of returning it.
    #[inline(always)]
    pub fn free_raw(&self, ptr: *mut u8) -> Result<()> {
        if self.free_raw_hot(ptr) {
            return Ok(());
        }
        self.inner.reclaim_raw(ptr)
    }

    /// The size requested for the live raw block at `ptr`, with the same checks as
    /// [`free_raw`](Self::free_raw) and changing nothing: what `realloc` and
    /// a recording of frees need when the caller does not know the size.
    pub fn raw_size(&self, ptr: *const u8) -> Result<usize> {
        self.inner.raw_size(ptr.addr())
    }

    /// Resizes the live raw block at `ptr` to `new_size` bytes aligned to `align`,
    /// keeping the first `min(old, new)` bytes, as C's `realloc` does: in place or
    /// by a move to a new block.
    ///
    /// A block that holds `new_size` bytes and is at most twice as large stays where
    /// it is (only its size changes); a block that grows beyond its own moves to one
    /// with room for an eighth more, which the next growths fill in place. So a
    /// buffer grown a little at a time is copied a bounded number of times per
    /// doubling, not at every step (a block of size classes or of the calling
    /// thread's heap is resized by that thread alone; another thread's moves).
    /// A large block (the engine's, up to `medium_threshold`, and the best-fit
    /// tier's) grows in place as glibc's do: into free pages that follow it, or, at
    /// the top of its expandable segment, by committing more memory there (an
    /// eighth more than asked, within the limit); so a large buffer grown at the top
    /// is never copied. A best-fit block that shrinks in place gives the tail it no
    /// longer needs back to the tier. (Typed blocks are resized in place the same
    /// way through `Allocator`'s `grow` and `shrink` and the process-wide allocator's
    /// `realloc`, those of the engine while the new size stays in their size class or
    /// in the large range.)
    /// Debug mode, which keeps every block's size with its guard bytes, and a
    /// manager with explicit pools always move.
    ///
    /// On error (a bad pointer, no memory) the old block is untouched and still live.
    ///
    /// # Safety
    ///
    /// No other thread frees or reallocates `ptr` during the call (the bytes are
    /// copied from it). A `ptr` that is not a live raw block is reported, not read.
    pub unsafe fn reallocate_raw(
        &self,
        ptr: *mut u8,
        new_size: usize,
        align: usize,
    ) -> Result<NonNull<u8>> {
        let inner = &*self.inner;
        crate::limits::validate(new_size, align)?;
        let in_place = inner.fast && ptr.addr() % align == 0;
        if in_place && inner.resize_in_place(ptr, new_size, true) {
            return Ok(NonNull::new(ptr).expect("a live block is not null"));
        }
        let old = inner.raw_size(ptr.addr())?;
        let room = crate::tiers::contract::with_room(new_size);
        // Room to grow (below `ROOM_FROM`, the size classes are the room), where it
        // cannot be what runs the manager out of memory: without a limit, or well
        // within it. Failing that, the size asked for, by the full path.
        let roomy = in_place
            && new_size > old
            && new_size >= ROOM_FROM
            && room <= crate::MAX_ALLOCATION_SIZE
            && inner
                .metered
                .limit()
                .is_none_or(|limit| inner.metered.resident_bytes().saturating_add(room) <= limit);
        let new = match roomy.then(|| inner.serve_with_room(room, new_size, align)) {
            Some(Some(new)) => new,
            _ => inner.serve(new_size, align, true)?.0,
        };
        // SAFETY: `ptr` is a live raw block of at least `old` bytes (checked above, and
        // by our caller's contract nobody frees it meanwhile) and `new` a fresh block of
        // `new_size` bytes; distinct live blocks never overlap.
        unsafe { std::ptr::copy_nonoverlapping(ptr, new.as_ptr(), old.min(new_size)) };
        inner.reclaim_raw(ptr)?;
        Ok(new)
    }

    /// In debug mode, the blocks live now (count, bytes, largest, allocation sites):
    /// what dropping the manager would report. `None` outside debug mode.
    pub fn leaks(&self) -> Option<LeakReport> {
        self.inner.debug.as_ref().map(|t| t.leaks("manager"))
    }

    /// In debug mode, the overruns of guard bytes found so far (also printed when
    /// found). Empty outside debug mode.
    pub fn guard_violations(&self) -> Vec<GuardViolation> {
        self.inner
            .debug
            .as_ref()
            .map_or_else(Vec::new, Tracker::violations)
    }

    /// An arena whose chunks come from this manager (and count in its stats). Its
    /// chunks start at `arena_chunk_size` and double up to 64 MiB, or up to the first
    /// chunk when that is larger.
    pub fn arena(&self) -> Arena {
        let first = self.inner.config.arena_chunk_size;
        Arena::builder()
            .first_chunk_size(first)
            // A first chunk above the default largest one (a config may ask for it)
            // made the builder refuse, and this panic.
            .max_chunk_size(first.max(crate::tiers::arena::DEFAULT_MAX_CHUNK))
            .debug(self.inner.config.debug)
            .upstream(Arc::new(ArenaUpstream {
                manager: self.inner.clone(),
            }))
            .build()
            .expect("arena_chunk_size was validated with the config")
    }

    /// An arena from this manager that never holds more than `bytes`.
    pub fn arena_with_capacity(&self, bytes: usize) -> Result<Arena> {
        Arena::builder()
            .capacity(bytes)
            .debug(self.inner.config.debug)
            .upstream(Arc::new(ArenaUpstream {
                manager: self.inner.clone(),
            }))
            .build()
    }

    /// Returns all cached memory that can go back to upstream, of every thread:
    /// frees other threads posted are collected, empty slabs and cached large blocks
    /// go back to the best-fit tier, whose free segments and free tops go back to
    /// upstream, with cached huge segments. Returns the bytes released to upstream.
    pub fn trim(&self) -> usize {
        self.inner.trim()
    }

    /// Starts new peaks (`peak_allocated_bytes`, `peak_requested_bytes`,
    /// `peak_reserved_bytes`) from the current values.
    pub fn reset_peak_stats(&self) {
        let (allocated, requested) = self.inner.current_totals();
        self.inner.counters.totals.reset_peaks(allocated, requested);
        self.inner.metered.reset_peak();
        // The tiers' own peaks too (the best-fit and huge tiers kept theirs).
        self.inner.engine.large.reset_peaks();
        self.inner.huge.reset_peaks();
    }

    /// Bytes taken from upstream now: a cheap read of `stats().reserved_bytes`.
    pub fn reserved_bytes(&self) -> usize {
        self.inner.metered.reserved_bytes()
    }

    /// Resident bytes now (reserved, less the free pages given back in place): a
    /// cheap read of `stats().resident_bytes`.
    pub fn resident_bytes(&self) -> usize {
        self.inner.metered.resident_bytes()
    }

    /// Runs a pass of the release policy if one is due by the manager's clock (see
    /// the module docs, "Memory given back"); the bytes given back to the system.
    /// The manager's slow paths and the background thread call this; a program with
    /// neither can call it from a loop or a timer.
    pub fn release_idle(&self) -> usize {
        self.inner.release_if_due()
    }

    /// Sets the release delay (`None`: free memory goes back only when asked, above
    /// the soft limit, or on running out). Takes effect from the next pass. An error
    /// if it is beyond [`MAX_RELEASE_DELAY_MS`](crate::config::MAX_RELEASE_DELAY_MS),
    /// as in a [`Config`].
    pub fn set_release_delay(&self, delay: Option<std::time::Duration>) -> Result<()> {
        Config {
            release_delay_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ..Config::default()
        }
        .validate()?;
        self.inner.release.set_delay(delay);
        Ok(())
    }

    /// The release delay, if memory goes back on one.
    pub fn release_delay(&self) -> Option<std::time::Duration> {
        self.inner.release.delay()
    }

    /// Sets the soft limit: resident bytes above which free memory goes back at
    /// once (`None`: none). An error if it is above the hard limit or zero. (Each
    /// limit is checked against the other as it is then: two threads that change
    /// both at once can leave them out of order; change them from one thread.)
    pub fn set_soft_limit(&self, limit: Option<usize>) -> Result<()> {
        check_limits(limit, self.inner.metered.limit())?;
        self.inner.release.set_soft_limit(limit);
        self.inner.release_over_soft_limit();
        Ok(())
    }

    /// Sets the hard limit on resident bytes (`None`: none): later growth beyond it
    /// gives back free memory and retries, then fails as out of memory. An error if
    /// it is zero or below the soft limit.
    pub fn set_memory_limit(&self, limit: Option<usize>) -> Result<()> {
        check_limits(self.inner.release.soft_limit(), limit)?;
        self.inner.metered.set_limit(limit);
        Ok(())
    }

    /// The statistics: totals, per tier, per size class, per thread.
    ///
    /// The current figures are exact: frees that other threads posted to a thread's
    /// slabs are collected first (every thread's heap is stopped between two of its
    /// operations for a moment). The peaks of small blocks are recorded at the
    /// threads' slow paths, within a slab per class and thread (see
    /// [`Stats::peak_allocated_bytes`](crate::Stats::peak_allocated_bytes)). Where the
    /// system has no `membarrier` (not Linux, or a kernel before 4.14), a running
    /// thread's heap is not stopped, and the blocks other threads freed into it count
    /// as allocated until it collects them.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The statistics as a table for people.
    pub fn summary(&self) -> String {
        self.stats().summary()
    }

    /// Every segment and block with its state.
    pub fn snapshot(&self) -> Snapshot {
        let inner = &*self.inner;
        let mut segments = Vec::new();
        inner.engine.snapshot_into(&mut segments);
        for tier in inner.locked_tiers() {
            tier.snapshot_into(&mut segments);
        }
        Snapshot { segments }
    }

    /// Allocates for a typed owner (what [`Allocator::allocate`](allocator_api2::alloc::Allocator::allocate) does past its fast
    /// path).
    pub(crate) fn allocate_typed(&self, layout: Layout) -> Result<NonNull<u8>> {
        self.inner
            .serve(layout.size(), layout.align(), false)
            .map(|(p, _)| p)
    }

    /// A block for `layout` (not zero-sized), as [`Allocator::allocate`](allocator_api2::alloc::Allocator::allocate) gives, with
    /// the error that says why when there is none (the out-of-memory report).
    /// Give it back with [`Allocator::deallocate`](allocator_api2::alloc::Allocator::deallocate) and the same layout.
    #[inline]
    pub fn try_allocate(&self, layout: Layout) -> Result<NonNull<u8>> {
        if layout.size() == 0 {
            return Err(Error::ZeroSize);
        }
        match self.inner.serve_hot(layout.size(), layout.align(), false) {
            Some((ptr, _)) => Ok(ptr),
            None => self.allocate_typed(layout),
        }
    }

    /// A block for `layout` from the explicit pools only (`Config::pools`): the
    /// smallest pool whose blocks fit, or the next one when it is full, as the
    /// lecture's `MemoryManager` tries its pools. `Ok(None)` when no pool fits or
    /// every pool that fits is full (nothing else is tried); errors for a bad layout.
    /// Give the block back with [`Allocator::deallocate`](allocator_api2::alloc::Allocator::deallocate) and the same layout.
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tensorpool::{Config, MemoryManager};
    ///
    /// let mm = MemoryManager::new(Config::builder().pool(256, 1).build()?)?;
    /// let layout = Layout::from_size_align(200, 64).unwrap();
    /// let block = mm.try_allocate_from_pools(layout)?.expect("the 256 B pool has a block");
    /// assert!(mm.try_allocate_from_pools(layout)?.is_none()); // full
    /// assert!(mm.try_allocate_from_pools(Layout::from_size_align(300, 64).unwrap())?.is_none());
    /// // SAFETY: allocated above with `layout`.
    /// unsafe { allocator_api2::alloc::Allocator::deallocate(&mm, block, layout) };
    /// # Ok::<(), tensorpool::Error>(())
    /// ```
    pub fn try_allocate_from_pools(&self, layout: Layout) -> Result<Option<NonNull<u8>>> {
        if layout.size() == 0 {
            return Err(Error::ZeroSize);
        }
        self.inner.serve_from_pools(layout.size(), layout.align())
    }

    /// [`try_allocate`](Self::try_allocate), zeroed (without writing the memory
    /// when its pages are fresh from the system).
    pub fn try_allocate_zeroed(&self, layout: Layout) -> Result<NonNull<u8>> {
        if layout.size() == 0 {
            return Err(Error::ZeroSize);
        }
        let (ptr, zero) = match self.inner.serve_hot(layout.size(), layout.align(), false) {
            Some(served) => served,
            None => self.inner.serve(layout.size(), layout.align(), false)?,
        };
        if !zero {
            // SAFETY: the block is `layout.size()` bytes, fresh, and exclusively ours.
            unsafe { ptr.as_ptr().write_bytes(0, layout.size()) };
        }
        Ok(ptr)
    }
}

/// The rules for a soft and a hard limit together: neither zero, the soft one not
/// above the hard one.
fn check_limits(soft: Option<usize>, hard: Option<usize>) -> Result<()> {
    Config {
        soft_limit: soft,
        memory_limit: hard,
        ..Config::default()
    }
    .validate()
}
