//! tensorpool as the process's allocator: [`GlobalManager`] implements
//! [`GlobalAlloc`] over one process-wide [`MemoryManager`], so that every `Box`,
//! `Vec` and `String` of a Rust program, threads included, comes from tensorpool's
//! tiers, with its statistics, its release policy and its explanations.
//!
//! ```
//! use tensorpool::GlobalManager;
//!
//! // In a binary: `#[global_allocator]` before the static (a doc test cannot
//! // replace its own allocator, so this one stays an ordinary static).
//! static GLOBAL: GlobalManager = GlobalManager::new();
//!
//! let stats = GLOBAL.stats().expect("the manager starts");
//! println!("{} bytes in use", stats.allocated_bytes);
//! ```
//!
//! Configured from the environment by [`GlobalManager::new`]
//! (`TENSORPOOL_CONFIG=file.toml` and one `TENSORPOOL_<SETTING>` variable per
//! setting; see [`Config::from_env`]: a bad variable is reported once on stderr with
//! its name and passed over, the default standing for it), or from code with
//! [`GlobalManager::with_config`]. The background release thread is off unless the
//! config asks for it (a program that did not start a thread gets none).
//!
//! # How it stays out of its own way
//!
//! The manager's bookkeeping allocates too (a registry's `Vec`, a thread heap's name,
//! a report's `String`). Every entry point marks the calling thread as inside the
//! allocator (`util::reentry`), and what is allocated while the mark is set comes from
//! the system allocator ([`System`]): so does a layout aligned beyond [`MAX_ALIGN`],
//! and every allocation if the manager could not start. A free first asks the
//! manager, which finds its blocks from the address in its own tables; a block it did
//! not hand out goes back to the system allocator, never into the pools. The same
//! mark is set while a thread that used the manager exits and while the background
//! thread gives memory back for it.
//!
//! A free that the manager refuses (a double free, an address inside a block) is
//! counted in [`SystemFallbacks::refused_frees`] and changes nothing; running out of
//! memory (a `memory_limit`) prints the manager's report on stderr, for the first
//! few times, before Rust's handler stops the program.

use crate::config::Config;
use crate::error::Error;
use crate::limits::MAX_ALIGN;
use crate::manager::MemoryManager;
use crate::observe::snapshot::Snapshot;
use crate::observe::stats::Stats;
use crate::util::reentry::Inside;
use crate::util::sync::PlainMutex;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicBool, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::OnceLock;

pub mod malloc;
pub mod recording;

/// Out-of-memory reports printed at most this many times.
const OOM_REPORTS: usize = 4;

/// A process-wide [`MemoryManager`] behind Rust's [`GlobalAlloc`]: put it in a
/// `#[global_allocator]` static. See the [module docs](self).
pub struct GlobalManager {
    process: Process,
}

/// What both process allocators ([`GlobalManager`], [`Malloc`](malloc::Malloc)) keep:
/// the manager, started at the first call, and the counts of what it did not serve.
struct Process {
    /// Started at the first call. Every `malloc` and `free` reads it: a `OnceLock`
    /// of the manager itself is one test (of an `Option` inside, two tests and a
    /// load more, six instructions an operation in the preloaded library).
    manager: OnceLock<MemoryManager>,
    /// The manager could not start: the system allocator serves from then on.
    failed: AtomicBool,
    /// Held by the thread that starts the manager; the others wait for it.
    starting: PlainMutex<()>,
    config: fn() -> Config,
    fallbacks: Counts,
}

impl Process {
    const fn new(config: fn() -> Config) -> Self {
        Process {
            manager: OnceLock::new(),
            failed: AtomicBool::new(false),
            starting: PlainMutex::new(()),
            config,
            fallbacks: Counts::new(),
        }
    }

    /// The manager, started if it is not yet; the caller is inside.
    #[inline]
    fn manager(&self, _inside: &Inside) -> Option<&MemoryManager> {
        match self.manager.get() {
            Some(mm) => Some(mm),
            None => self.start_once(),
        }
    }

    /// Starts the manager, once: `None` if it cannot start (then or before). After a
    /// failed start, every allocation of the process comes here: it reads the flag
    /// before the lock, so that they do not queue on it.
    #[cold]
    fn start_once(&self) -> Option<&MemoryManager> {
        if self.failed.load(Acquire) {
            return None;
        }
        let _starting = self.starting.lock();
        if let Some(mm) = self.manager.get() {
            return Some(mm);
        }
        if self.failed.load(Acquire) {
            return None;
        }
        match start(self.config) {
            Some(mm) => Some(self.manager.get_or_init(|| mm)),
            None => {
                self.failed.store(true, Release);
                None
            }
        }
    }

    /// The manager if it has started (never starts it).
    #[inline]
    fn running(&self) -> Option<&MemoryManager> {
        self.manager.get()
    }

    /// Runs `f` on the manager, inside the allocator (what it allocates comes from
    /// the fallback allocator); `None` if the manager cannot start or this thread is
    /// inside already.
    fn query<R>(&self, f: impl FnOnce(&MemoryManager) -> R) -> Option<R> {
        let inside = Inside::enter()?;
        self.manager(&inside).map(f)
    }

    /// Runs `f` on the manager's statistics, with the frees this front refused in
    /// `num_invalid_frees` (a free without a way to return an error: C's `free`,
    /// `GlobalAlloc::dealloc`), inside the allocator as [`query`](Self::query);
    /// `None` if the manager does not run.
    fn query_stats<R>(&self, f: impl FnOnce(Stats) -> R) -> Option<R> {
        self.query(|mm| {
            let mut stats = mm.stats();
            stats.num_invalid_frees += self.fallbacks.refused_frees.load(Relaxed) as u64;
            f(stats)
        })
    }

    /// Counts an allocation of `size` bytes that the fallback allocator serves.
    #[inline]
    fn count_fallback(&self, size: usize) {
        self.fallbacks.allocations.fetch_add(1, Relaxed);
        self.fallbacks.bytes.fetch_add(size, Relaxed);
    }

    #[cold]
    /// Counts and reports (the first few times) an allocation refused for lack of
    /// memory. A size no allocator could serve (`Vec::try_reserve(usize::MAX / 2)`,
    /// which the caller handles) fails quietly and is not counted, as in glibc; so
    /// does a request the system refused that is larger than the machine's memory
    /// (Python's `bytearray(2**44)`, which the program turns into a `MemoryError`:
    /// a paragraph on standard error for each was a user hunt's finding).
    fn count_out_of_memory(&self, e: &Error) {
        match e {
            Error::SizeTooLarge { .. } => return,
            Error::OutOfMemory(oom)
                if oom.cause == crate::error::OomCause::UpstreamFailed
                    && oom.requested > physical_memory() =>
            {
                return
            }
            _ => {}
        }
        if self.fallbacks.out_of_memory.fetch_add(1, Relaxed) < OOM_REPORTS {
            crate::util::stderr::report!("tensorpool: {e}");
        }
    }
}

/// Bytes of the machine's memory (`usize::MAX` where the system does not say).
fn physical_memory() -> usize {
    #[cfg(all(unix, not(miri)))]
    {
        // SAFETY: `sysconf` only reads a configuration value.
        let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
        if pages > 0 {
            return (pages as usize).saturating_mul(crate::upstream::page_size());
        }
    }
    usize::MAX
}

/// The counts behind [`SystemFallbacks`].
struct Counts {
    allocations: AtomicUsize,
    bytes: AtomicUsize,
    refused_frees: AtomicUsize,
    out_of_memory: AtomicUsize,
}

impl Counts {
    const fn new() -> Self {
        Counts {
            allocations: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            refused_frees: AtomicUsize::new(0),
            out_of_memory: AtomicUsize::new(0),
        }
    }

    fn get(&self) -> SystemFallbacks {
        SystemFallbacks {
            allocations: self.allocations.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            refused_frees: self.refused_frees.load(Relaxed),
            out_of_memory: self.out_of_memory.load(Relaxed),
        }
    }
}

/// What a process allocator ([`GlobalManager`], [`Malloc`](malloc::Malloc)) did not
/// hand to its manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemFallbacks {
    /// Allocations served by the system (or foreign) allocator: tensorpool's own
    /// bookkeeping, and alignments beyond [`MAX_ALIGN`] (all of them if the manager
    /// could not start).
    pub allocations: usize,
    /// Their bytes, as requested.
    pub bytes: usize,
    /// Frees the manager refused (a double free, an address inside one of its
    /// blocks): nothing was changed.
    pub refused_frees: usize,
    /// Allocations that failed for lack of memory (not counted: sizes no allocator
    /// serves, and requests larger than the machine's memory that the system
    /// refused, which fail quietly as in glibc).
    pub out_of_memory: usize,
}

/// The defaults of a process-wide manager: [`Config::default`] with malloc's
/// 16-byte alignment and size classes from 16 B (16, 32, 48, 64, 80, .. for
/// 16-aligned requests; a layout that asks for more alignment gets it), so that a
/// program of millions of tiny blocks does not pay 64 B each; and no transparent huge
/// pages asked for (`huge_pages = false`): with the kernel's default
/// `defrag = madvise`, a fault in a region advised for huge pages may compact memory
/// first, and a program of blocks from 256 KiB to 8 MiB, each page written, took
/// 190-220 ms in one run of six instead of 40-50 ms (54-60 ms every run without the
/// advice; mimalloc's 61-73 ms).
pub fn process_defaults() -> Config {
    Config {
        alignment: malloc::MIN_ALIGN,
        min_block_size: malloc::MIN_ALIGN,
        huge_pages: Some(false),
        ..Config::default()
    }
}

/// The process's config: [`process_defaults`] changed by the environment
/// ([`Config::from_env_reporting_over`]), each bad variable reported once on
/// stderr, with its name, and passed over.
pub fn process_config() -> Config {
    let (config, errors) = Config::from_env_reporting_over(process_defaults());
    for e in errors {
        crate::util::stderr::report!("tensorpool: {e}");
    }
    config
}

impl GlobalManager {
    /// A process-wide manager configured from the environment over the process
    /// defaults ([`process_config`]), started at the first allocation.
    pub const fn new() -> Self {
        Self::with_config(process_config)
    }

    /// A process-wide manager with the config `config` returns, called once at the
    /// first allocation (what it allocates comes from the system allocator). An
    /// invalid config, or one that panics, is reported on stderr and the defaults
    /// are used. `config` runs while other threads' first allocations wait for it:
    /// it must not wait for another thread that allocates (spawn and join one, or
    /// take a lock such a thread holds).
    ///
    /// ```
    /// use tensorpool::{Config, GlobalManager};
    ///
    /// // #[global_allocator]
    /// static GLOBAL: GlobalManager = GlobalManager::with_config(|| Config {
    ///     memory_limit: Some(64 << 30),
    ///     ..Config::default()
    /// });
    /// assert_eq!(GLOBAL.config().unwrap().memory_limit, Some(64 << 30));
    /// ```
    pub const fn with_config(config: fn() -> Config) -> Self {
        GlobalManager {
            process: Process::new(config),
        }
    }

    /// Runs `f` on the manager, inside the allocator (what it allocates comes from
    /// the system allocator); `None` if the manager cannot start or this thread is
    /// inside already.
    fn query<R>(&self, f: impl FnOnce(&MemoryManager) -> R) -> Option<R> {
        self.process.query(f)
    }

    /// The manager's statistics.
    pub fn stats(&self) -> Option<Stats> {
        self.process.query_stats(|stats| stats)
    }

    /// The manager's summary, for people.
    pub fn summary(&self) -> Option<String> {
        self.process.query_stats(|stats| stats.summary())
    }

    /// Every segment and block of the manager.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.query(MemoryManager::snapshot)
    }

    /// The manager's config.
    pub fn config(&self) -> Option<Config> {
        self.query(MemoryManager::config)
    }

    /// Gives every thread's free memory back to the system now; returns the bytes.
    pub fn trim(&self) -> usize {
        self.query(MemoryManager::trim).unwrap_or(0)
    }

    /// Runs a pass of the release policy now; returns the bytes given back.
    pub fn release_idle(&self) -> usize {
        self.query(MemoryManager::release_idle).unwrap_or(0)
    }

    /// What the system allocator served instead, and frees refused.
    pub fn system_fallbacks(&self) -> SystemFallbacks {
        self.process.fallbacks.get()
    }

    /// A block for `layout` from the manager, or from the system allocator where the
    /// manager does not serve it.
    #[inline]
    fn allocate(&self, inside: &Inside, layout: Layout, zeroed: bool) -> *mut u8 {
        if layout.align() <= MAX_ALIGN && layout.size() != 0 {
            if let Some(mm) = self.process.manager(inside) {
                let block = if zeroed {
                    mm.try_allocate_zeroed(layout)
                } else {
                    mm.try_allocate(layout)
                };
                return match block {
                    Ok(ptr) => ptr.as_ptr(),
                    Err(e) => {
                        self.process.count_out_of_memory(&e);
                        std::ptr::null_mut()
                    }
                };
            }
        }
        self.system(layout, zeroed)
    }

    #[cold]
    fn system(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        self.process.count_fallback(layout.size());
        // SAFETY: `layout` is a `GlobalAlloc` caller's, non-zero-sized by its contract.
        unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    /// Frees `ptr`: into the manager if it is the manager's, else to the system
    /// allocator.
    #[inline]
    fn deallocate(&self, ptr: *mut u8, layout: Layout) {
        if let (Some(mm), Some(block)) = (self.process.running(), NonNull::new(ptr)) {
            match mm.deallocate_if_held(block, layout) {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => {
                    self.process.fallbacks.refused_frees.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
        // SAFETY: not the manager's, so the system allocator's (every other block
        // comes from it), allocated with `layout` by the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Starts a process-wide manager with the config `config` returns. Nothing may
/// unwind out of an allocator: a panic (of the config function, or of the manager's
/// start) is reported and the process defaults ([`process_defaults`]: malloc's
/// 16-byte classes, not `Config::default()`'s 64-byte ones, which took a program of
/// small boxes 3x the memory), or `None` (the caller's fallback serves), stand for
/// it. The caller is inside (`util::reentry`).
fn start(config: fn() -> Config) -> Option<MemoryManager> {
    let config = std::panic::catch_unwind(config).unwrap_or_else(|_| {
        crate::util::stderr::report!(
            "tensorpool: the process allocator's config panicked; using the defaults"
        );
        process_defaults()
    });
    let started = std::panic::catch_unwind(|| {
        MemoryManager::new(config).or_else(|e| {
            crate::util::stderr::report!(
                "tensorpool: {e}; the process allocator uses the default config"
            );
            MemoryManager::new(process_defaults())
        })
    });
    match started {
        Ok(Ok(mm)) => {
            mm.mark_process_wide();
            Some(mm)
        }
        Ok(Err(e)) => {
            crate::util::stderr::report!(
                "tensorpool: the process allocator cannot start ({e}); the system allocator serves"
            );
            None
        }
        Err(_) => {
            crate::util::stderr::report!(
                "tensorpool: the process allocator's start panicked; the system allocator serves"
            );
            None
        }
    }
}

impl Default for GlobalManager {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks come from the manager (disjoint, at least `layout.size()` bytes,
// aligned as asked, valid until freed; the manager is never dropped while the static
// lives) or from the system allocator, each freed where it came from: a free asks the
// manager's own tables whether it holds the address, and hands anything else to the
// system allocator. Nothing here unwinds: panics of the start are caught.
unsafe impl GlobalAlloc for GlobalManager {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Inside::enter() {
            Some(inside) => self.allocate(&inside, layout, false),
            // Inside already: tensorpool's own bookkeeping.
            None => self.system(layout, false),
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Inside::enter() {
            Some(inside) => self.allocate(&inside, layout, true),
            None => self.system(layout, true),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Inside::enter() {
            Some(_inside) => self.deallocate(ptr, layout),
            // Inside: tensorpool's own bookkeeping frees what it allocated, which came
            // from the system allocator.
            // SAFETY: the caller keeps `GlobalAlloc::dealloc`'s contract.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(inside) = Inside::enter() else {
            // SAFETY: the caller keeps `GlobalAlloc::realloc`'s contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        let (Some(mm), Some(block)) = (self.process.running(), NonNull::new(ptr)) else {
            // SAFETY: a block of the system allocator's, by the caller's contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        if !mm.holds(block) {
            // SAFETY: as above.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_size` is non-zero and does not overflow `isize` when rounded to
        // the alignment, by `realloc`'s contract.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // In place where the block's tier can (see `resize_typed_in_place`); else a
        // new block and a copy.
        if mm.resize_typed_in_place(block, layout, new_layout) {
            return ptr;
        }
        let new = self.allocate(&inside, new_layout, false);
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct and at least this long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            self.deallocate(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_that_allocate_first_together_start_one_manager() {
        // The first allocations of a process may come from several threads at once:
        // one starts the manager, the others wait for it and use the same one.
        static GLOBAL: GlobalManager = GlobalManager::new();
        let layout = Layout::from_size_align(256, 16).unwrap();
        let barrier = std::sync::Barrier::new(8);
        let blocks: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        // SAFETY: a layout of non-zero size; the block is freed below.
                        unsafe { GLOBAL.alloc(layout) }.expose_provenance()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let stats = GLOBAL.stats().expect("the manager started");
        assert_eq!(
            stats.allocated_bytes,
            8 * 256,
            "every block from one manager"
        );
        for addr in blocks {
            let ptr = std::ptr::with_exposed_provenance_mut::<u8>(addr);
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { GLOBAL.dealloc(ptr, layout) };
        }
        assert_eq!(GLOBAL.stats().unwrap().allocated_bytes, 0);
    }
}
