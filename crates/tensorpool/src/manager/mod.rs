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
//! All memory comes through one [`MeteredUpstream`], which counts reserved bytes and
//! enforces the optional limit. When an allocation runs out of memory, the manager
//! returns cached memory to upstream ([`trim`](MemoryManager::trim)) and retries once
//! before reporting an [`OutOfMemory`](crate::OutOfMemory) that describes its state.
//!
//! Memory is handed out three ways, which this crate calls *typed* and *raw*:
//!
//! - **typed**: through allocator-api2's [`Allocator`] (`Vec<f32, &MemoryManager>`,
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

use crate::config::{Config, UpstreamKind};
use crate::error::{Error, OomCause, PointerError, Result};
use crate::limits::{validate, MAX_ALIGN};
use crate::observe::debug::{self, GuardViolation, LeakReport, Record, Tracker, GUARD};
use crate::observe::snapshot::Snapshot;
use crate::observe::stats::{fragmentation, ClassStats, Stats, Tier, TierStats, Totals, Usage};
use crate::tiers::arena::Arena;
use crate::tiers::best_fit::BestFit;
use crate::tiers::contract::{zero_sized, BlockTier};
use crate::tiers::huge::HugeCache;
use crate::tiers::size_class::SizeClasses;
use crate::tiers::slab::{Engine, EngineStats};
#[cfg(all(unix, not(miri)))]
use crate::upstream::MmapUpstream;
use crate::upstream::{AddressSpace, HeapUpstream, MeteredUpstream, Upstream, UpstreamError};
use crate::util::address_map::AddressMap;
use allocator_api2::alloc::{AllocError, Allocator};
use parking_lot::RwLock;
use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The tiered memory manager.
#[derive(Clone)]
pub struct MemoryManager {
    inner: Arc<Inner>,
}

struct Inner {
    /// Whether the hot paths may serve: not in debug mode (which records every
    /// block) nor with explicit pools (which are tried first).
    fast: bool,
    config: Config,
    /// Slabs of size classes and explicit pools, and cached large blocks; it holds
    /// the best-fit tier, which gives it pages.
    engine: Arc<Engine>,
    /// Whether the config names explicit pools: then a block's layout does not say
    /// where it is, and frees look it up.
    pools: bool,
    huge: HugeCache,
    metered: Arc<MeteredUpstream>,
    /// Regions of the best-fit and huge tiers, for frees the engine does not hold.
    owners: Arc<RwLock<AddressMap<Owner>>>,
    counters: Counters,
    /// Debug mode's records of live blocks and overruns.
    debug: Option<Tracker>,
}

/// Which tier owns a region (the engine finds its own blocks in its page map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Large,
    Huge,
}

/// Where a request goes when no explicit pool takes it.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// A size class of the engine.
    Class(usize),
    /// A cached large block of the engine, of this many pages.
    Span(usize),
    /// The best-fit tier, under its lock.
    Large,
    Huge,
}

#[derive(Debug, Default)]
struct Counters {
    /// Bytes users hold: the locked tiers add each block, the engine's heaps publish
    /// theirs at slow paths.
    totals: Arc<Totals>,
    retries: AtomicU64,
    ooms: AtomicU64,
    arena_bytes: AtomicUsize,
}

impl Counters {
    #[inline]
    fn on_alloc(&self, block: usize, requested: usize) {
        self.totals.add(block as isize, requested as isize);
    }

    #[inline]
    fn on_free(&self, block: usize, requested: usize) {
        self.totals.add(-(block as isize), -(requested as isize));
    }
}

/// Puts every region a tier takes into the owner map, so that a raw pointer can be
/// traced back to the tier that must free it.
#[derive(Debug)]
struct Registrar {
    upstream: Arc<MeteredUpstream>,
    owners: Arc<RwLock<AddressMap<Owner>>>,
    owner: Owner,
}

// SAFETY: regions come from the metered upstream unchanged; the map only records them.
unsafe impl Upstream for Registrar {
    fn allocate(
        &self,
        size: usize,
        align: usize,
    ) -> std::result::Result<NonNull<u8>, UpstreamError> {
        let ptr = self.upstream.allocate(size, align)?;
        self.owners
            .write()
            .insert(ptr.as_ptr().addr(), size, self.owner);
        Ok(ptr)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        self.owners.write().remove(ptr.as_ptr().addr());
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.upstream.deallocate(ptr, size, align) }
    }

    fn name(&self) -> &str {
        self.upstream.name()
    }

    fn zeroed(&self) -> bool {
        self.upstream.zeroed()
    }

    fn address_space(&self) -> Option<&dyn AddressSpace> {
        self.upstream
            .address_space()
            .map(|_| self as &dyn AddressSpace)
    }
}

// SAFETY: forwards to the metered address space unchanged; the owner map records each
// reservation from `reserve` to `unreserve`.
unsafe impl AddressSpace for Registrar {
    fn reserve(&self, size: usize) -> std::result::Result<NonNull<u8>, UpstreamError> {
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        let ptr = space.reserve(size)?;
        self.owners
            .write()
            .insert(ptr.as_ptr().addr(), size, self.owner);
        Ok(ptr)
    }

    unsafe fn commit(
        &self,
        ptr: NonNull<u8>,
        len: usize,
    ) -> std::result::Result<(), UpstreamError> {
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { space.commit(ptr, len) }
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, len: usize) {
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { space.decommit(ptr, len) }
    }

    unsafe fn unreserve(&self, ptr: NonNull<u8>, size: usize) {
        self.owners.write().remove(ptr.as_ptr().addr());
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { space.unreserve(ptr, size) }
    }
}

/// Chunks of arenas made by [`MemoryManager::arena`], as typed blocks of the manager.
#[derive(Debug)]
struct ArenaUpstream {
    manager: Arc<Inner>,
}

// SAFETY: each region is a live block of the manager, exclusively the arena's until
// the arena passes it back, and the arena holds the manager alive until then.
unsafe impl Upstream for ArenaUpstream {
    fn allocate(
        &self,
        size: usize,
        align: usize,
    ) -> std::result::Result<NonNull<u8>, UpstreamError> {
        match self.manager.serve(size, align, false) {
            Ok((ptr, _)) => {
                self.manager.counters.arena_bytes.fetch_add(size, Relaxed);
                Ok(ptr)
            }
            Err(Error::OutOfMemory(report)) if report.cause == OomCause::LimitReached => {
                Err(UpstreamError::LimitReached {
                    size,
                    reserved: report.reserved_bytes,
                    limit: report.limit.unwrap_or(0),
                })
            }
            Err(_) => Err(UpstreamError::OutOfMemory { size }),
        }
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        self.manager.counters.arena_bytes.fetch_sub(size, Relaxed);
        let freed = self.manager.reclaim_typed(ptr, size, align);
        debug_assert!(
            freed.is_ok(),
            "an arena chunk was not a live block: {freed:?}"
        );
    }

    fn name(&self) -> &str {
        "manager"
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(tracker) = &self.debug {
            let report = tracker.leaks("manager");
            if report.count > 0 {
                eprintln!("tensorpool: {report}");
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
        Self::with_upstream(config, upstream)
    }

    /// A manager with `config`, taking memory from `upstream` (a device, a test
    /// double, a wrapper that injects failures).
    pub fn with_upstream(config: Config, upstream: Arc<dyn Upstream>) -> Result<Self> {
        config.validate()?;
        let classes = config.size_classes()?;
        let metered = Arc::new(MeteredUpstream::new(upstream, config.memory_limit));
        let owners = Arc::new(RwLock::new(AddressMap::new()));
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
        Ok(MemoryManager {
            inner: Arc::new(Inner {
                fast: config.pools.is_empty() && !config.debug,
                pools: !config.pools.is_empty(),
                config,
                engine,
                huge,
                metered,
                owners,
                counters,
                debug,
            }),
        })
    }

    /// Whether `self` and `other` are handles to the same manager.
    pub fn same_manager(&self, other: &MemoryManager) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
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
        match self.inner.serve_hot(size, align, true) {
            Some(ptr) => Ok(ptr),
            None => self.allocate_raw_cold(size, align),
        }
    }

    #[cold]
    #[inline(never)]
    fn allocate_raw_cold(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        self.inner.serve(size, align, true).map(|(p, _)| p)
    }

    /// The same as [`allocate_raw`](Self::allocate_raw), with the memory zeroed
    /// (without writing it when the block's pages are fresh from the system).
    #[inline]
    pub fn allocate_raw_zeroed(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        if let Some(ptr) = self.inner.serve_hot(size, align, true) {
            // SAFETY: a fresh block of at least `size` bytes, exclusively ours.
            unsafe { ptr.as_ptr().write_bytes(0, size) };
            return Ok(ptr);
        }
        self.allocate_raw_zeroed_cold(size, align)
    }

    #[cold]
    #[inline(never)]
    fn allocate_raw_zeroed_cold(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        let (ptr, zero) = self.inner.serve(size, align, true)?;
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
    #[inline]
    pub fn free_raw(&self, ptr: *mut u8) -> Result<()> {
        let inner = &*self.inner;
        if inner.fast && inner.engine.release_hot(ptr, true, 0, None) {
            return Ok(());
        }
        inner.reclaim_raw(ptr)
    }

    /// The size requested for the live raw block at `ptr`, with the same checks as
    /// [`free_raw`](Self::free_raw) and changing nothing: what `realloc` and
    /// a recording of frees need when the caller does not know the size.
    pub fn raw_size(&self, ptr: *const u8) -> Result<usize> {
        self.inner.raw_size(ptr.addr())
    }

    /// Moves the live raw block at `ptr` to a block of `new_size` bytes aligned to
    /// `align`, keeping the first `min(old, new)` bytes, as C's `realloc` does.
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
        let old = inner.raw_size(ptr.addr())?;
        let (new, _) = inner.serve(new_size, align, true)?;
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

    /// An arena whose chunks come from this manager (and count in its stats).
    pub fn arena(&self) -> Arena {
        Arena::builder()
            .first_chunk_size(self.inner.config.arena_chunk_size)
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
    }

    /// Bytes taken from upstream now: a cheap read of `stats().reserved_bytes`.
    pub fn reserved_bytes(&self) -> usize {
        self.inner.metered.reserved_bytes()
    }

    /// The statistics: totals, per tier, per size class, per thread.
    ///
    /// They are exact: frees that other threads posted to a thread's slabs are
    /// collected first (every thread's heap is stopped between two of its
    /// operations for a moment). Where the system has no `membarrier` (not Linux,
    /// or a kernel before 4.14), a running thread's heap is not stopped, and the
    /// blocks other threads freed into it count as allocated until it collects them.
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

    #[cold]
    #[inline(never)]
    fn allocate_cold(&self, layout: Layout) -> std::result::Result<NonNull<u8>, AllocError> {
        self.allocate_typed(layout).map_err(|_| AllocError)
    }

    #[cold]
    #[inline(never)]
    fn deallocate_cold(&self, ptr: NonNull<u8>, layout: Layout) {
        let freed = self.inner.reclaim_typed(ptr, layout.size(), layout.align());
        debug_assert!(
            freed.is_ok(),
            "Allocator::deallocate broke its contract: {freed:?}"
        );
    }

    /// Allocates for a typed owner (what [`Allocator::allocate`] does past its fast
    /// path).
    pub(crate) fn allocate_typed(&self, layout: Layout) -> Result<NonNull<u8>> {
        self.inner
            .serve(layout.size(), layout.align(), false)
            .map(|(p, _)| p)
    }

    /// A block for `layout` (not zero-sized), as [`Allocator::allocate`] gives, with
    /// the error that says why when there is none (the out-of-memory report).
    /// Give it back with [`Allocator::deallocate`] and the same layout.
    #[inline]
    pub fn try_allocate(&self, layout: Layout) -> Result<NonNull<u8>> {
        if layout.size() == 0 {
            return Err(Error::ZeroSize);
        }
        match self.inner.serve_hot(layout.size(), layout.align(), false) {
            Some(ptr) => Ok(ptr),
            None => self.allocate_typed(layout),
        }
    }

    /// [`try_allocate`](Self::try_allocate), zeroed (without writing the memory
    /// when its pages are fresh from the system).
    pub fn try_allocate_zeroed(&self, layout: Layout) -> Result<NonNull<u8>> {
        if layout.size() == 0 {
            return Err(Error::ZeroSize);
        }
        let (ptr, zero) = self.inner.serve(layout.size(), layout.align(), false)?;
        if !zero {
            // SAFETY: the block is `layout.size()` bytes, fresh, and exclusively ours.
            unsafe { ptr.as_ptr().write_bytes(0, layout.size()) };
        }
        Ok(ptr)
    }
}

impl Inner {
    #[inline]
    fn route(&self, size: usize, align: usize) -> Route {
        if let Some(class) = self.engine.class_for(size, align) {
            return Route::Class(class);
        }
        match self.engine.span_for(size, align) {
            Some(pages) => Route::Span(pages),
            None if size <= self.config.huge_threshold => Route::Large,
            None => Route::Huge,
        }
    }

    /// The hot path of small allocations: a slot of the calling thread's current
    /// slab of the class, with no lock and no atomic read-modify-write. `None` sends
    /// the request down the full path (debug mode, explicit pools, a size or
    /// alignment no class serves, a slab to change).
    #[inline(always)]
    fn serve_hot(&self, size: usize, align: usize, raw: bool) -> Option<NonNull<u8>> {
        // One comparison for a size of 0 and one beyond any limit (whose rounding
        // would overflow): both go to the full path, which says why.
        if !self.fast || align > MAX_ALIGN || size.wrapping_sub(1) >= crate::MAX_ALLOCATION_SIZE {
            return None;
        }
        let align = align.max(self.config.alignment);
        match self.engine.class_for(size, align) {
            Some(class) => self.engine.grant_hot(class, size, raw),
            None => {
                let pages = self.engine.span_for(size, align)?;
                self.engine.grant_span_hot(pages, size, raw)
            }
        }
    }

    /// The hot path of typed frees: `true` if the block was freed.
    #[inline(always)]
    fn reclaim_typed_hot(&self, ptr: NonNull<u8>, size: usize, align: usize) -> bool {
        if !self.fast || align > MAX_ALIGN {
            return false;
        }
        let class = self
            .engine
            .class_for(size, align.max(self.config.alignment));
        self.engine.release_hot(ptr.as_ptr(), false, size, class)
    }

    fn serve(&self, size: usize, align: usize, raw: bool) -> Result<(NonNull<u8>, bool)> {
        let Some(tracker) = &self.debug else {
            return self.serve_retrying(size, align, raw);
        };
        validate(size, align)?;
        let padded = size.checked_add(GUARD).ok_or(Error::SizeTooLarge {
            size,
            max: crate::MAX_ALLOCATION_SIZE,
        })?;
        let (ptr, _) = self.serve_retrying(padded, align, raw)?;
        // SAFETY: a fresh block of `padded` bytes.
        unsafe { debug::arm(ptr, size, true) };
        let tier = self.tier_at(ptr.as_ptr().addr());
        tracker.insert(
            ptr.as_ptr().addr(),
            Record {
                size,
                tier,
                raw,
                site: debug::site(),
            },
        );
        // Debug mode fills fresh blocks: they are never zero.
        Ok((ptr, false))
    }

    /// The tier of the block at `addr` (a live block's).
    fn tier_at(&self, addr: usize) -> Tier {
        if let Some(tier) = self.engine.tier_of(addr) {
            return tier;
        }
        self.owner_at(addr)
            .map_or(Tier::Large, |owner| self.locked_tier(owner).tier())
    }

    /// The locked tier whose region holds `addr`, from the owners map (the engine's
    /// blocks are not in it: its page map finds them).
    fn owner_at(&self, addr: usize) -> Option<Owner> {
        self.owners.read().find(addr).map(|(_, _, &owner)| owner)
    }

    /// The tier an owner names: the manager speaks to it through the contract alone.
    fn locked_tier(&self, owner: Owner) -> &dyn BlockTier {
        match owner {
            Owner::Large => &self.engine.large,
            Owner::Huge => &self.huge,
        }
    }

    /// Every locked tier, for what the manager asks of them all.
    fn locked_tiers(&self) -> [&dyn BlockTier; 2] {
        [&self.engine.large, &self.huge]
    }

    fn serve_retrying(&self, size: usize, align: usize, raw: bool) -> Result<(NonNull<u8>, bool)> {
        validate(size, align)?;
        let align = align.max(self.config.alignment);
        match self.serve_once(size, align, raw) {
            Err(Error::OutOfMemory(_)) => {
                // Give cached memory back and try once more, as PyTorch does.
                self.counters.retries.fetch_add(1, Relaxed);
                self.trim();
                self.serve_once(size, align, raw)
                    .map_err(|e| self.widen(e, size, align))
            }
            other => other,
        }
    }

    fn serve_once(&self, size: usize, align: usize, raw: bool) -> Result<(NonNull<u8>, bool)> {
        let engine = &self.engine;
        for class in engine.first_pool..engine.classes.len() {
            let pool = &engine.classes[class];
            if pool.block_size < size || pool.align < align {
                continue;
            }
            match engine.grant(class, size, raw) {
                Ok(served) => return Ok(served),
                // Full: try the next pool, then the tiers.
                Err(Error::OutOfMemory(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        match self.route(size, align) {
            Route::Class(class) => engine.grant(class, size, raw),
            Route::Span(pages) => engine.grant_span(pages, size, raw),
            Route::Large => {
                engine.publish_current();
                // The tier grows only after the calling thread gave back what it
                // keeps cached (as a new slab does): memory follows use.
                let grant = match engine.large.grant_cached(size, align, raw) {
                    Some(grant) => grant,
                    None if engine.release_current() > 0 => {
                        match engine.large.grant_cached(size, align, raw) {
                            Some(grant) => grant,
                            None => engine.large.grant(size, align, raw)?,
                        }
                    }
                    None => engine.large.grant(size, align, raw)?,
                };
                self.counters.on_alloc(grant.block_size, size);
                Ok((grant.ptr, grant.zeroed))
            }
            Route::Huge => {
                engine.publish_current();
                let grant = self.huge.grant(size, align, raw)?;
                self.counters.on_alloc(grant.block_size, size);
                Ok((grant.ptr, grant.zeroed))
            }
        }
    }

    /// Replaces a tier's view in an out-of-memory report with the request and the
    /// manager's totals.
    fn widen(&self, e: Error, size: usize, align: usize) -> Error {
        match e {
            Error::OutOfMemory(mut report) => {
                // A tier may have failed while taking pages for a slab.
                report.requested = size;
                report.align = align;
                self.counters.ooms.fetch_add(1, Relaxed);
                let engine = self.engine.stats();
                let allocated = self.current_totals_with(&engine).0;
                let reserved = self.metered.reserved_bytes();
                report.allocated_bytes = allocated;
                report.reserved_bytes = reserved;
                report.cached_bytes = reserved.saturating_sub(allocated);
                report.largest_free_block = self.largest_free_block(&engine);
                report.limit = self.config.memory_limit;
                Error::OutOfMemory(report)
            }
            other => other,
        }
    }

    /// The largest block servable from cached memory without going upstream: the
    /// largest free block of the best-fit tier, a cached huge segment, or a class
    /// with free slots. The one rule for `stats()` and the out-of-memory report.
    fn largest_free_block(&self, engine: &EngineStats) -> usize {
        let classes = self
            .engine
            .classes
            .iter()
            .zip(&engine.classes)
            .filter(|(_, f)| f.slots > f.live)
            .map(|(c, _)| c.block_size)
            .max()
            .unwrap_or(0);
        self.locked_tiers()
            .iter()
            .map(|tier| tier.largest_free_block())
            .fold(classes.max(engine.largest_cached_span), usize::max)
    }

    fn raw_size(&self, addr: usize) -> Result<usize> {
        if let Some(tracker) = &self.debug {
            if let Some(size) = tracker.raw_size(addr) {
                return Ok(size);
            }
            // Not a live raw block: the tiers say why.
            self.raw_block_size(addr)?;
            return Err(Error::InvalidPointer {
                addr,
                reason: PointerError::NotLive,
            });
        }
        self.raw_block_size(addr)
    }

    fn raw_block_size(&self, addr: usize) -> Result<usize> {
        let invalid = |reason| Error::InvalidPointer { addr, reason };
        if let Some(found) = self.engine.raw_size(addr) {
            return found.map_err(invalid);
        }
        match self.owner_at(addr) {
            None => Err(invalid(PointerError::Foreign)),
            Some(owner) => Ok(self.locked_tier(owner).sizes(addr, true)?.requested),
        }
    }

    #[cold]
    #[inline(never)]
    fn reclaim_raw(&self, ptr: *mut u8) -> Result<()> {
        let addr = ptr.addr();
        if let Some(tracker) = &self.debug {
            if let Some(record) = tracker.take(addr, true) {
                let ptr = NonNull::new(ptr).expect("live blocks are not null");
                // SAFETY: `addr` was a live raw block of `size + GUARD` bytes, and taking
                // its record made this call the only one to free it.
                unsafe { tracker.check_and_poison(ptr, &record) };
            }
        }
        // Without a record in debug mode, the block is not a live raw one: the checks
        // below say why.
        self.reclaim(addr, true, 0, None)
    }

    /// Frees the block at `addr` held raw or typed; `size` and `class` are a typed
    /// holder's size and the class its layout maps to.
    #[inline]
    fn reclaim(&self, addr: usize, raw: bool, size: usize, class: Option<usize>) -> Result<()> {
        let invalid = |reason| Error::InvalidPointer { addr, reason };
        if let Some(done) = self.engine.release(addr, raw, size, class) {
            return done.map_err(invalid);
        }
        let Some(owner) = self.owner_at(addr) else {
            return Err(invalid(PointerError::Foreign));
        };
        let freed = self.locked_tier(owner).release(addr, raw)?;
        self.counters.on_free(freed.block_size, freed.requested);
        Ok(())
    }

    /// Frees a typed block allocated with this size and alignment.
    fn reclaim_typed(&self, ptr: NonNull<u8>, size: usize, align: usize) -> Result<()> {
        let Some(tracker) = &self.debug else {
            return self.reclaim_typed_block(ptr, size, align);
        };
        let record = tracker
            .take(ptr.as_ptr().addr(), false)
            .ok_or(Error::InvalidPointer {
                addr: ptr.as_ptr().addr(),
                reason: PointerError::NotLive,
            })?;
        debug_assert_eq!(record.size, size, "a typed block freed with another size");
        // SAFETY: a live typed block of `size + GUARD` bytes, whose record this call took.
        unsafe { tracker.check_and_poison(ptr, &record) };
        self.reclaim_typed_block(ptr, size + GUARD, align)
    }

    #[inline]
    fn reclaim_typed_block(&self, ptr: NonNull<u8>, size: usize, align: usize) -> Result<()> {
        let class = match self.pools {
            // With explicit pools, a layout may be served by a pool or a class.
            true => None,
            false if align > MAX_ALIGN => None,
            false => self
                .engine
                .class_for(size, align.max(self.config.alignment)),
        };
        self.reclaim(ptr.as_ptr().addr(), false, size, class)
    }

    /// (allocated, requested) bytes held by users now: the shared totals plus what
    /// heaps have not published yet.
    fn current_totals(&self) -> (usize, usize) {
        self.current_totals_with(&self.engine.stats())
    }

    fn current_totals_with(&self, engine: &EngineStats) -> (usize, usize) {
        let (allocated, requested) = self.counters.totals.current();
        (
            allocated.wrapping_add(engine.pending.0).max(0) as usize,
            requested.wrapping_add(engine.pending.1).max(0) as usize,
        )
    }

    fn trim(&self) -> usize {
        self.engine.trim();
        self.locked_tiers().iter().map(|tier| tier.trim()).sum()
    }

    fn stats(&self) -> Stats {
        let engine = self.engine.stats();
        let e = &self.engine;
        let mut classes = Vec::new();
        let mut tiers = Vec::new();
        let mut slab_bytes = 0usize;
        for (tier, range) in [
            (Tier::Pool, e.first_pool..e.classes.len()),
            (Tier::Small, 0..e.first_pool),
        ] {
            if range.is_empty() {
                continue;
            }
            let counts = &engine.tiers[crate::tiers::slab::heap::tier_index(tier)];
            let mut usage = Usage {
                allocated_bytes: counts.bytes as usize,
                requested_bytes: counts.requested as usize,
                num_allocs: counts.allocs,
                num_frees: counts.frees,
                ..Usage::default()
            };
            let mut largest = 0;
            for class in range {
                let (c, f) = (&e.classes[class], &engine.classes[class]);
                usage.allocated_blocks += f.live as usize;
                usage.reserved_bytes += f.slab_bytes as usize;
                usage.misses += f.misses;
                if f.slots > f.live {
                    largest = largest.max(c.block_size);
                }
                if f.slabs > 0 || f.live > 0 {
                    classes.push(ClassStats {
                        block_size: c.block_size,
                        allocated_blocks: f.live as usize,
                        free_blocks: (f.slots - f.live) as usize,
                        slabs: f.slabs as usize,
                        reserved_bytes: f.slab_bytes as usize,
                    });
                }
            }
            usage.num_upstream_allocs = usage.misses;
            usage.hits = usage.num_allocs - usage.misses.min(usage.num_allocs);
            usage.peak_allocated_bytes = usage.allocated_bytes;
            usage.peak_reserved_bytes = usage.reserved_bytes;
            slab_bytes += usage.reserved_bytes;
            tiers.push(TierStats {
                tier,
                usage,
                largest_free_block: largest,
            });
        }
        let large = e.large.stats();
        let spans = &engine.tiers[crate::tiers::slab::heap::LARGE];
        let mut large_usage = large.usage;
        large_usage.allocated_bytes += spans.bytes as usize;
        large_usage.requested_bytes += spans.requested as usize;
        large_usage.allocated_blocks += (spans.allocs - spans.frees) as usize;
        large_usage.num_allocs += spans.allocs;
        large_usage.num_frees += spans.frees;
        large_usage.hits += spans.allocs - engine.span_misses.min(spans.allocs);
        large_usage.misses += engine.span_misses;
        // The best-fit tier's reserved bytes include the slabs' pages.
        large_usage.reserved_bytes = large_usage.reserved_bytes.saturating_sub(slab_bytes);
        large_usage.peak_allocated_bytes = large_usage
            .peak_allocated_bytes
            .max(large_usage.allocated_bytes);
        tiers.push(TierStats {
            tier: Tier::Large,
            usage: large_usage,
            largest_free_block: large.largest_free_block.max(engine.largest_cached_span),
        });
        let huge = self.huge.stats();
        tiers.push(TierStats {
            tier: Tier::Huge,
            usage: huge.usage,
            largest_free_block: huge.largest_cached,
        });
        let mut total = Usage::default();
        for t in &tiers {
            total.accumulate(&t.usage);
        }
        let c = &self.counters;
        let (allocated, requested) = self.current_totals_with(&engine);
        c.totals.note_peaks(allocated, requested);
        let (peak_allocated, peak_requested) = c.totals.peaks();
        let reserved = self.metered.reserved_bytes();
        let cached = reserved.saturating_sub(allocated);
        let largest = self.largest_free_block(&engine);
        Stats {
            allocated_bytes: allocated,
            peak_allocated_bytes: peak_allocated,
            requested_bytes: requested,
            peak_requested_bytes: peak_requested,
            reserved_bytes: reserved,
            peak_reserved_bytes: self.metered.peak_reserved_bytes(),
            cached_bytes: cached,
            thread_cached_bytes: engine.cached_bytes,
            internal_waste_bytes: allocated.saturating_sub(requested),
            allocated_blocks: total.allocated_blocks,
            num_allocs: total.num_allocs,
            num_frees: total.num_frees,
            num_alloc_retries: c.retries.load(Relaxed),
            num_ooms: c.ooms.load(Relaxed),
            num_invalid_frees: engine.late_refusals,
            num_upstream_allocs: self.metered.num_allocs(),
            num_upstream_frees: self.metered.num_frees(),
            largest_free_block: largest,
            fragmentation: fragmentation(largest, cached),
            arena_bytes: c.arena_bytes.load(Relaxed),
            memory_limit: self.config.memory_limit,
            num_guard_violations: self
                .debug
                .as_ref()
                .map_or(0, |t| t.violations().len() as u64),
            tiers,
            classes,
            threads: engine.threads,
        }
    }
}

// SAFETY: blocks come from the tiers, which hand out disjoint memory of at least the
// requested size and alignment; they stay valid until deallocated or until the last
// handle to the manager is dropped, and every `&MemoryManager` or clone keeps it.
unsafe impl Allocator for MemoryManager {
    #[inline(always)]
    fn allocate(&self, layout: Layout) -> std::result::Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(zero_sized(layout.align()));
        }
        let ptr = match self.inner.serve_hot(layout.size(), layout.align(), false) {
            Some(ptr) => ptr,
            None => self.allocate_cold(layout)?,
        };
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    #[inline(always)]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0
            || self
                .inner
                .reclaim_typed_hot(ptr, layout.size(), layout.align())
        {
            return;
        }
        self.deallocate_cold(ptr, layout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamKind;

    fn heap_config() -> crate::config::ConfigBuilder {
        Config::builder().upstream(UpstreamKind::Heap)
    }

    fn manager(builder: crate::config::ConfigBuilder) -> MemoryManager {
        MemoryManager::new(builder.build().unwrap()).unwrap()
    }

    #[test]
    fn routes_by_size() {
        let mm = manager(heap_config().small_threshold(4096).huge_threshold(8 << 20));
        let small = mm.allocate_raw(100, 8).unwrap();
        let large = mm.allocate_raw(100_000, 8).unwrap();
        let huge = mm.allocate_raw(9 << 20, 8).unwrap();
        let s = mm.stats();
        let tier = |t| {
            s.tiers
                .iter()
                .find(|x| x.tier == t)
                .unwrap()
                .usage
                .allocated_blocks
        };
        assert_eq!(
            (tier(Tier::Small), tier(Tier::Large), tier(Tier::Huge)),
            (1, 1, 1)
        );
        assert_eq!(s.requested_bytes, 100 + 100_000 + (9 << 20));
        // The large block is rounded to whole pages (a cached block of the engine).
        assert_eq!(s.allocated_bytes, 128 + 102_400 + (10 << 20));
        assert_eq!(s.classes.len(), 1);
        assert_eq!(
            s.classes[0].block_size, 128,
            "64-byte alignment rounds 100 up to 128"
        );
        for p in [small, large, huge] {
            assert_eq!(p.as_ptr() as usize % 64, 0);
            mm.free_raw(p.as_ptr()).unwrap();
        }
        let s = mm.stats();
        assert_eq!(
            (s.allocated_bytes, s.requested_bytes, s.allocated_blocks),
            (0, 0, 0)
        );
        assert_eq!(s.num_allocs, s.num_frees);
        mm.trim();
        let s = mm.stats();
        assert_eq!(s.reserved_bytes, 0);
        assert_eq!(s.num_upstream_allocs, s.num_upstream_frees);
    }

    #[test]
    fn explicit_pools_first_then_fall_through() {
        let mm = manager(heap_config().pool(256, 2).pool(1024, 1));
        let a = mm.allocate_raw(200, 64).unwrap();
        let b = mm.allocate_raw(200, 64).unwrap();
        let c = mm.allocate_raw(200, 64).unwrap(); // 256 pool full: the 1024 pool
        let d = mm.allocate_raw(200, 64).unwrap(); // both full: the size classes
        let s = mm.stats();
        let pool_tier = s.tiers.iter().find(|t| t.tier == Tier::Pool).unwrap();
        assert_eq!(pool_tier.usage.allocated_blocks, 3);
        assert_eq!(pool_tier.usage.allocated_bytes, 256 * 2 + 1024);
        let small = s.tiers.iter().find(|t| t.tier == Tier::Small).unwrap();
        assert_eq!(small.usage.allocated_blocks, 1);
        // Typed frees are routed through the owner map when explicit pools exist.
        let layout = Layout::from_size_align(200, 8).unwrap();
        let typed = Allocator::allocate(&mm, layout).unwrap().cast::<u8>();
        // SAFETY: allocated above with `layout`.
        unsafe { Allocator::deallocate(&mm, typed, layout) };
        for p in [a, b, c, d] {
            mm.free_raw(p.as_ptr()).unwrap();
        }
        assert_eq!(mm.stats().allocated_bytes, 0);
    }

    #[test]
    fn raw_size_and_reallocate_raw_in_every_tier() {
        // Under Miri every byte copied is interpreted: smaller blocks, same tiers.
        let huge = if cfg!(miri) { 64 << 10 } else { 2 << 20 };
        let mm = manager(
            heap_config()
                .small_threshold(4096)
                .medium_threshold(huge / 2)
                .huge_threshold(huge)
                .expandable_segments(false),
        );
        // Sizes in the small, medium (spans), large (best fit) and huge tiers, grown
        // and shrunk across them.
        let sizes = [100usize, 3000, huge / 2, huge / 4 * 3, huge + 4096, 50, 1];
        let mut ptr = mm.allocate_raw(sizes[0], 8).unwrap().as_ptr();
        let fill = |p: *mut u8, n: usize| {
            // SAFETY: `p` is a live raw block of at least `n` bytes.
            unsafe { std::slice::from_raw_parts_mut(p, n) }
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 251) as u8);
        };
        fill(ptr, sizes[0]);
        for pair in sizes.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            assert_eq!(mm.raw_size(ptr).unwrap(), old);
            // SAFETY: no other thread uses `ptr`.
            let moved = unsafe { mm.reallocate_raw(ptr, new, 64) }.unwrap().as_ptr();
            assert_eq!(moved.addr() % 64, 0);
            // SAFETY: `moved` is a live raw block of `new` bytes.
            let kept = unsafe { std::slice::from_raw_parts(moved, old.min(new)) };
            assert!(kept.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            assert!(matches!(
                mm.free_raw(ptr),
                Err(Error::InvalidPointer {
                    reason: PointerError::NotLive | PointerError::Foreign,
                    ..
                })
            ));
            fill(moved, new);
            ptr = moved;
        }
        assert_eq!(mm.stats().allocated_blocks, 1);
        assert_eq!(mm.stats().requested_bytes, 1);
        mm.free_raw(ptr).unwrap();
        assert_eq!(mm.stats().allocated_blocks, 0);
    }

    #[test]
    fn raw_size_and_reallocate_raw_refuse_bad_pointers() {
        let mm = manager(heap_config());
        let raw = mm.allocate_raw(1000, 8).unwrap().as_ptr();
        let layout = Layout::from_size_align(1000, 8).unwrap();
        let typed = mm.try_allocate(layout).unwrap();
        let before = mm.stats();
        for bad in [
            raw.wrapping_add(8),
            typed.as_ptr(),
            std::ptr::without_provenance_mut(0x1000),
        ] {
            assert!(matches!(
                mm.raw_size(bad),
                Err(Error::InvalidPointer { .. })
            ));
            // SAFETY: no other thread uses these pointers.
            let moved = unsafe { mm.reallocate_raw(bad, 10, 8) };
            assert!(matches!(moved, Err(Error::InvalidPointer { .. })));
        }
        assert_eq!(mm.stats().allocated_blocks, before.allocated_blocks);
        // A failed move (no memory) leaves the block live and intact.
        let limited = manager(heap_config().memory_limit(1 << 20));
        let p = limited.allocate_raw(1000, 8).unwrap().as_ptr();
        // SAFETY: no other thread uses `p`.
        let e = unsafe { limited.reallocate_raw(p, 4 << 20, 8) }.unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)));
        assert_eq!(limited.raw_size(p).unwrap(), 1000);
        limited.free_raw(p).unwrap();
        // SAFETY: the typed block came from `try_allocate` with `layout`.
        unsafe { mm.deallocate(typed, layout) };
        mm.free_raw(raw).unwrap();
    }

    #[test]
    fn try_allocate_explains_failures() {
        let mm = manager(heap_config().memory_limit(1 << 20));
        let zero = Layout::from_size_align(0, 8).unwrap();
        assert_eq!(mm.try_allocate(zero), Err(Error::ZeroSize));
        let big = Layout::from_size_align(2 << 20, 8).unwrap();
        let Err(Error::OutOfMemory(report)) = mm.try_allocate(big) else {
            panic!("expected an out-of-memory report");
        };
        assert_eq!(report.requested, 2 << 20);
        let small = Layout::from_size_align(100, 8).unwrap();
        let p = mm.try_allocate_zeroed(small).unwrap();
        // SAFETY: a live block of 100 bytes.
        assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 100) }
            .iter()
            .all(|&b| b == 0));
        // SAFETY: allocated above with `small`.
        unsafe { mm.deallocate(p, small) };
        assert!(mm.same_manager(&mm.clone()));
        assert!(!mm.same_manager(&manager(heap_config())));
    }

    #[test]
    fn free_raw_refuses_every_bad_pointer() {
        let mm = manager(heap_config());
        let small = mm.allocate_raw(64, 64).unwrap();
        // The typed block first, so that the pages past the large block stay free.
        let v: allocator_api2::vec::Vec<u8, &MemoryManager> =
            allocator_api2::vec::Vec::with_capacity_in(1000, &mm);
        let large = mm.allocate_raw(1 << 20, 64).unwrap();
        let before = mm.stats();
        let reason = |p: *mut u8| match mm.free_raw(p) {
            Err(Error::InvalidPointer { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let local = 0u64;
        assert_eq!(
            reason(&local as *const u64 as *mut u8),
            PointerError::Foreign
        );
        assert_eq!(reason(std::ptr::null_mut()), PointerError::Foreign);
        assert!(matches!(
            reason(small.as_ptr().wrapping_add(1)),
            PointerError::Interior { .. }
        ));
        assert!(matches!(
            reason(large.as_ptr().wrapping_add(4096)),
            PointerError::Interior { .. }
        ));
        assert_eq!(
            reason(large.as_ptr().wrapping_add(1 << 20)),
            PointerError::NotLive
        );
        assert_eq!(reason(v.as_ptr() as *mut u8), PointerError::NotRaw);
        assert_eq!(mm.stats(), before);
        mm.free_raw(small.as_ptr()).unwrap();
        assert_eq!(reason(small.as_ptr()), PointerError::NotLive);
        mm.free_raw(large.as_ptr()).unwrap();
        drop(v);
        assert_eq!(mm.stats().allocated_bytes, 0);
    }

    #[test]
    fn limit_releases_cache_then_reports() {
        let mm = manager(heap_config().memory_limit(8 << 20));
        let a = mm.allocate_raw(3 << 20, 64).unwrap();
        mm.free_raw(a.as_ptr()).unwrap(); // 4 MiB segment cached
        let b = mm.allocate_raw(6 << 20, 64).unwrap(); // needs the cache released
        let s = mm.stats();
        assert_eq!(s.num_alloc_retries, 1);
        assert_eq!(s.reserved_bytes, 6 << 20);
        let err = mm.allocate_raw(4 << 20, 64).unwrap_err();
        let Error::OutOfMemory(report) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(report.cause, OomCause::LimitReached);
        assert_eq!(report.limit, Some(8 << 20));
        assert_eq!(report.allocated_bytes, 6 << 20);
        assert_eq!(report.reserved_bytes, 6 << 20);
        assert_eq!(report.tier, Tier::Large);
        assert!(err.to_string().contains("tried to allocate 4.00 MiB"));
        assert_eq!(mm.stats().num_ooms, 1);
        mm.free_raw(b.as_ptr()).unwrap();
        // memory is available again
        let c = mm.allocate_raw(4 << 20, 64).unwrap();
        mm.free_raw(c.as_ptr()).unwrap();
    }

    #[test]
    fn the_oom_report_and_stats_agree_on_the_largest_free_block() {
        let mm = manager(heap_config().memory_limit(16 << 20));
        // Free memory in several tiers: slots of a class, a large block's pages.
        let small: Vec<_> = (0..64).map(|_| mm.allocate_raw(256, 64).unwrap()).collect();
        for p in small.iter().step_by(2) {
            mm.free_raw(p.as_ptr()).unwrap();
        }
        let large = mm.allocate_raw(2 << 20, 64).unwrap();
        let held = mm.allocate_raw(5 << 20, 64).unwrap();
        mm.free_raw(large.as_ptr()).unwrap();
        let err = mm.allocate_raw(14 << 20, 64).unwrap_err();
        let Error::OutOfMemory(report) = &err else {
            panic!("{err:?}")
        };
        let stats = mm.stats();
        // The freed large block's pages stay cached (the retry could not help).
        assert!(report.largest_free_block >= 1 << 20, "{report:?}");
        assert_eq!(report.largest_free_block, stats.largest_free_block);
        assert_eq!(report.cached_bytes, stats.cached_bytes);
        mm.free_raw(held.as_ptr()).unwrap();
        for p in small.iter().skip(1).step_by(2) {
            mm.free_raw(p.as_ptr()).unwrap();
        }
    }

    #[test]
    fn arenas_take_chunks_from_the_manager() {
        let mm = manager(heap_config());
        {
            let mut arena = mm.arena();
            let n = if cfg!(miri) { 20_000 } else { 100_000 };
            let xs = arena.alloc_slice_fill(n, 1.5f32).unwrap();
            assert_eq!(xs.iter().sum::<f32>(), 1.5 * n as f32);
            let s = mm.stats();
            assert!(s.arena_bytes >= 4 * n);
            assert!(s.allocated_bytes >= s.arena_bytes);
            // an arena chunk is not the raw API's to free
            let chunk = mm
                .snapshot()
                .segments
                .iter()
                .flat_map(|s| s.blocks.clone())
                .find(|b| {
                    b.size >= 4 * n && b.state == crate::observe::snapshot::BlockState::Allocated
                })
                .unwrap();
            assert!(matches!(
                mm.free_raw(std::ptr::without_provenance_mut(chunk.address)),
                Err(Error::InvalidPointer {
                    reason: PointerError::NotRaw,
                    ..
                })
            ));
            arena.reset();
        }
        let s = mm.stats();
        assert_eq!((s.arena_bytes, s.allocated_bytes), (0, 0));
        let fixed = mm.arena_with_capacity(4096).unwrap();
        assert!(fixed.allocate(5000, 8).is_err());
    }

    #[test]
    fn bad_requests_are_errors() {
        let mm = manager(heap_config());
        assert_eq!(mm.allocate_raw(0, 64), Err(Error::ZeroSize));
        assert_eq!(
            mm.allocate_raw(64, 3),
            Err(Error::InvalidAlignment { align: 3 })
        );
        assert!(matches!(
            mm.allocate_raw(64, 1 << 13),
            Err(Error::AlignmentTooLarge { .. })
        ));
        assert!(matches!(
            mm.allocate_raw(usize::MAX, 64),
            Err(Error::SizeTooLarge { .. })
        ));
        assert_eq!(mm.stats().num_allocs, 0);
    }

    #[test]
    fn peaks_and_summary() {
        let mm = manager(heap_config());
        let a = mm.allocate_raw(1 << 20, 64).unwrap();
        let b = mm.allocate_raw(1 << 20, 64).unwrap();
        mm.free_raw(a.as_ptr()).unwrap();
        let s = mm.stats();
        assert_eq!(s.peak_allocated_bytes, 2 << 20);
        assert_eq!(s.allocated_bytes, 1 << 20);
        assert!(s.largest_free_block >= 1 << 20);
        mm.reset_peak_stats();
        assert_eq!(mm.stats().peak_allocated_bytes, 1 << 20);
        let text = mm.summary();
        assert!(text.contains("allocated (held by program)") && text.contains("large (best fit)"));
        let json = serde_json::to_value(mm.stats()).unwrap();
        for key in [
            "allocated_bytes",
            "requested_bytes",
            "reserved_bytes",
            "cached_bytes",
            "peak_allocated_bytes",
            "peak_reserved_bytes",
            "num_allocs",
            "num_frees",
            "num_ooms",
            "largest_free_block",
            "fragmentation",
            "internal_waste_bytes",
            "tiers",
            "classes",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        mm.free_raw(b.as_ptr()).unwrap();
    }

    #[test]
    fn clones_share_one_manager() {
        let mm = manager(heap_config());
        let other = mm.clone();
        let p = other.allocate_raw(64, 64).unwrap();
        drop(other);
        assert_eq!(mm.stats().allocated_blocks, 1);
        mm.free_raw(p.as_ptr()).unwrap();
    }

    mod model {
        use super::*;
        use crate::limits::round_up;
        use crate::observe::snapshot::BlockState;
        use crate::testing::{check, fill, ops_len, proptest_config, LiveSet};
        use crate::upstream::HUGE_PAGE_SIZE;
        use proptest::prelude::*;

        const SMALL: usize = 4096;
        const HUGE: usize = 4 << 20;

        #[derive(Debug, Clone)]
        enum Op {
            Alloc {
                size: usize,
                align: usize,
                raw: bool,
            },
            Free(usize),
            BadFree(usize, usize),
            Trim,
        }

        fn op() -> impl Strategy<Value = Op> {
            let size = prop_oneof![
                1usize..SMALL,
                SMALL..300_000,
                300_000..HUGE,
                HUGE..(6 << 20)
            ];
            let align = prop_oneof![Just(1usize), Just(8), Just(64), Just(256), Just(4096)];
            prop_oneof![
                6 => (size, align, any::<bool>()).prop_map(|(size, align, raw)| Op::Alloc { size, align, raw }),
                4 => any::<usize>().prop_map(Op::Free),
                1 => (any::<usize>(), 0usize..5000).prop_map(|(i, o)| Op::BadFree(i, o)),
                1 => Just(Op::Trim),
            ]
        }

        struct Live {
            ptr: NonNull<u8>,
            size: usize,
            align: usize,
            raw: bool,
            seed: u64,
        }

        fn expected_block(mm: &MemoryManager, size: usize, align: usize) -> Option<(Tier, usize)> {
            let align = align.max(64);
            match mm
                .size_classes()
                .and_then(|c| c.class_for(size, align).map(|i| c.size_of(i)))
            {
                Some(block) => Some((Tier::Small, block)),
                None if size > HUGE => Some((Tier::Huge, round_up(size, HUGE_PAGE_SIZE))),
                None => None,
            }
        }

        proptest! {
            #![proptest_config(proptest_config(96))]

            /// The manager against a model of live blocks, through both the raw API and
            /// the Allocator trait, with and without explicit pools and a limit.
            #[test]
            fn manager_matches_model(
                pools in any::<bool>(),
                limit in proptest::option::of(16usize..40),
                ops in proptest::collection::vec(op(), ops_len(100)),
            ) {
                let mut config = Config::builder()
                    .upstream(UpstreamKind::Heap)
                    .small_threshold(SMALL)
                    .huge_threshold(HUGE)
                    .pool_chunk_size(16 << 10);
                if pools {
                    config = config.pool(256, 3).pool(2048, 2);
                }
                if let Some(mib) = limit {
                    config = config.memory_limit(mib << 20);
                }
                let mm = MemoryManager::new(config.build().unwrap()).unwrap();
                let mut live: Vec<Live> = Vec::new();
                let mut seed = 0;
                for op in ops {
                    match op {
                        Op::Alloc { size, align, raw } => {
                            let before = mm.stats();
                            let result = if raw {
                                mm.allocate_raw(size, align)
                            } else {
                                mm.allocate_typed(Layout::from_size_align(size, align).unwrap())
                            };
                            match result {
                                Ok(ptr) => {
                                    prop_assert_eq!(ptr.as_ptr() as usize % align.max(64), 0);
                                    seed += 1;
                                    // SAFETY: a live block of `size` bytes.
                                    unsafe { fill(ptr.as_ptr(), size, seed) };
                                    live.push(Live { ptr, size, align, raw, seed });
                                }
                                Err(Error::OutOfMemory(report)) => {
                                    prop_assert!(limit.is_some(), "OOM without a limit");
                                    prop_assert_eq!(report.requested, size);
                                    prop_assert!(report.reserved_bytes + size > report.limit.unwrap() - (2 << 20));
                                    let after = mm.stats();
                                    prop_assert_eq!(after.num_ooms, before.num_ooms + 1);
                                    prop_assert_eq!(after.allocated_bytes, before.allocated_bytes);
                                }
                                Err(e) => prop_assert!(false, "unexpected {}", e),
                            }
                        }
                        Op::Free(i) if !live.is_empty() => {
                            let l = live.swap_remove(i % live.len());
                            // SAFETY: live, filled with `l.seed`.
                            unsafe { check(l.ptr.as_ptr(), l.size, l.seed) };
                            if l.raw {
                                mm.free_raw(l.ptr.as_ptr()).unwrap();
                                prop_assert!(mm.free_raw(l.ptr.as_ptr()).is_err(), "double free accepted");
                            } else {
                                let refused = matches!(
                                    mm.free_raw(l.ptr.as_ptr()),
                                    Err(Error::InvalidPointer { reason: PointerError::NotRaw, .. })
                                );
                                prop_assert!(refused, "free_raw took a typed block");
                                // SAFETY: allocated through the Allocator with this layout.
                                unsafe { Allocator::deallocate(&mm, l.ptr, Layout::from_size_align(l.size, l.align).unwrap()) };
                            }
                        }
                        Op::BadFree(i, off) if !live.is_empty() => {
                            let l = &live[i % live.len()];
                            if off > 0 && off < l.size {
                                let before = mm.stats();
                                prop_assert!(mm.free_raw(l.ptr.as_ptr().wrapping_add(off)).is_err());
                                prop_assert_eq!(mm.stats(), before);
                            }
                        }
                        Op::Trim => {
                            mm.trim();
                        }
                        _ => {}
                    }
                    let mut set = LiveSet::default();
                    for l in &live {
                        set.insert(l.ptr.as_ptr() as usize, l.size);
                    }
                    let s = mm.stats();
                    prop_assert_eq!(s.allocated_blocks, live.len());
                    prop_assert_eq!(s.requested_bytes, live.iter().map(|l| l.size).sum::<usize>());
                    prop_assert!(s.reserved_bytes >= s.allocated_bytes);
                    if let Some(mib) = limit {
                        prop_assert!(s.reserved_bytes <= mib << 20);
                    }
                    // Every live block appears in the snapshot with its state, and the
                    // snapshot's live bytes are the allocated bytes.
                    let snap = mm.snapshot();
                    let blocks: std::collections::HashMap<usize, (usize, BlockState)> = snap.segments.iter()
                        .flat_map(|seg| seg.blocks.iter())
                        .filter(|b| !matches!(b.state, BlockState::Free | BlockState::Slab))
                        .map(|b| (b.address, (b.size, b.state)))
                        .collect();
                    prop_assert_eq!(blocks.len(), live.len());
                    prop_assert_eq!(blocks.values().map(|b| b.0).sum::<usize>(), s.allocated_bytes);
                    for l in &live {
                        let (block, state) = blocks[&(l.ptr.as_ptr() as usize)];
                        prop_assert!(block >= l.size);
                        prop_assert_eq!(state, BlockState::live(l.raw));
                        if !pools {
                            if let Some((_, expected)) = expected_block(&mm, l.size, l.align) {
                                prop_assert_eq!(block, expected);
                            }
                        }
                    }
                }
                for l in live {
                    // SAFETY: live, filled with `l.seed`.
                    unsafe { check(l.ptr.as_ptr(), l.size, l.seed) };
                    if l.raw {
                        mm.free_raw(l.ptr.as_ptr()).unwrap();
                    } else {
                        // SAFETY: allocated through the Allocator with this layout.
                        unsafe { Allocator::deallocate(&mm, l.ptr, Layout::from_size_align(l.size, l.align).unwrap()) };
                    }
                }
                let s = mm.stats();
                prop_assert_eq!((s.allocated_bytes, s.requested_bytes, s.allocated_blocks), (0, 0, 0));
                prop_assert_eq!(s.num_allocs, s.num_frees);
                mm.trim();
                let s = mm.stats();
                prop_assert_eq!(s.reserved_bytes, 0);
                prop_assert_eq!(s.num_upstream_allocs, s.num_upstream_frees);
            }
        }
    }
}
