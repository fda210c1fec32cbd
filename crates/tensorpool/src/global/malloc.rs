//! C's allocation functions over a process-wide manager: [`Malloc`] is what the
//! preloaded library `libtensorpool.so` (`crates/tensorpool-malloc`) exports as
//! `malloc`, `free`, `realloc`, `posix_memalign` and the rest, kept here so that
//! their semantics are tested in Rust, beside the manager they drive.
//!
//! ```
//! use tensorpool::global::{malloc::{Foreign, Malloc}, process_config};
//!
//! static C: Malloc = Malloc::new(process_config, Foreign::libc());
//!
//! // SAFETY: each block is used within its size and freed once.
//! unsafe {
//!     let p = C.malloc(100).cast::<u8>();
//!     assert!(!p.is_null() && p as usize % 16 == 0);
//!     assert!(C.usable_size(p.cast()) >= 100);
//!     let q = C.realloc(p.cast(), 5000).cast::<u8>(); // the first 100 bytes kept
//!     C.free(q.cast());
//! }
//! assert_eq!(C.stats().unwrap().allocated_bytes, 0);
//! ```
//!
//! # What it promises (glibc's behaviour where C leaves a choice)
//!
//! - `malloc(0)` returns a unique block (of one byte), `free(NULL)` does nothing,
//!   `realloc(NULL, n)` is `malloc(n)`, `realloc(p, 0)` frees `p` and returns NULL.
//! - Failure returns NULL with `errno = ENOMEM` (sizes beyond
//!   [`MAX_ALLOCATION_SIZE`](crate::MAX_ALLOCATION_SIZE) included); `calloc` and
//!   `reallocarray` check their products for overflow; a failed `realloc` leaves the
//!   old block as it was.
//! - Blocks are aligned to 16 bytes at least (malloc's `max_align_t`); any power of
//!   two is honoured by [`aligned`](Malloc::aligned): up to a page by the manager,
//!   beyond it by the foreign allocator.
//! - [`usable_size`](Malloc::usable_size) is the size asked for (so stable for the
//!   block's life, never less than asked).
//!
//! # Memory that is not the manager's
//!
//! A [`Foreign`] allocator (glibc's `__libc_malloc` family in the preloaded
//! library) serves what the manager does not: allocations made inside the
//! allocator (its own bookkeeping, and `malloc` calls that come back while it
//! works, from `__tls_get_addr` or `dlsym`), alignments beyond a page, and
//! everything if the manager could not start. A free asks the manager first; an
//! address that is in none of its regions (from the foreign allocator, or from
//! before the library was loaded) goes back to the foreign allocator, and never
//! into the pools. A free the manager refuses (a double free, an address inside a
//! block) changes nothing, is counted in [`SystemFallbacks::refused_frees`] and
//! reported on stderr the first few times.
//!
//! A free of one of the manager's blocks that arrives while the thread is inside
//! the allocator (glibc growing a thread's TLS vector from inside `malloc`) cannot
//! run then: it is parked on a lock-free list, written into the block itself, and
//! done by the next free from outside.

use super::{Process, SystemFallbacks};
use crate::config::Config;
use crate::error::{Error, PointerError};
use crate::limits::MAX_ALIGN;
use crate::manager::MemoryManager;
use crate::observe::stats::Stats;
#[cfg(feature = "trace")]
use crate::trace::TraceWriter;
use crate::util::reentry::{Inside, WritingRegions};
use std::ffi::c_void;
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{
    AtomicBool, AtomicPtr, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::OnceLock;

/// The least alignment of every block: glibc's `malloc` on 64-bit targets.
pub const MIN_ALIGN: usize = 16;

/// Refused frees reported on stderr at most this many times.
const REFUSAL_REPORTS: usize = 4;

/// The allocator that serves what the manager does not (see the
/// [module docs](self)). Each function has the C semantics of its namesake.
#[derive(Clone, Copy)]
pub struct Foreign {
    /// `malloc`.
    pub malloc: unsafe extern "C" fn(usize) -> *mut c_void,
    /// `calloc`.
    pub calloc: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    /// `realloc`.
    pub realloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    /// `free`.
    pub free: unsafe extern "C" fn(*mut c_void),
    /// `memalign(alignment, size)`.
    pub memalign: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    /// `malloc_usable_size`, where the foreign allocator has one.
    pub usable_size: Option<unsafe extern "C" fn(*mut c_void) -> usize>,
}

impl Foreign {
    /// The C library's functions as this program links them: for a program that
    /// uses [`Malloc`] beside the C library's allocator (tests, a Rust program), not
    /// for a library that replaces `malloc` itself (that one names glibc's
    /// `__libc_malloc` family).
    pub const fn libc() -> Foreign {
        Foreign {
            malloc: libc::malloc,
            calloc: libc::calloc,
            realloc: libc::realloc,
            free: libc::free,
            memalign: libc::memalign,
            usable_size: Some(libc::malloc_usable_size),
        }
    }
}

/// C's allocation functions over a process-wide [`MemoryManager`], started at the
/// first call. See the [module docs](self).
pub struct Malloc {
    process: Process,
    foreign: Foreign,
    /// Frees of the manager's blocks that arrived inside the allocator: a list
    /// linked through the blocks' first word.
    parked: AtomicPtr<c_void>,
    /// Whether calls from the program are recorded into `recorder`.
    recording: AtomicBool,
    #[cfg(feature = "trace")]
    recorder: OnceLock<Recorder>,
}

/// A recording of the process's calls, and the process that writes it (a forked
/// child's calls are not the recorded process's, and its copy of the buffer must
/// not be written twice).
#[cfg(feature = "trace")]
struct Recorder {
    writer: TraceWriter,
    pid: u32,
}

impl Malloc {
    /// C's functions over a manager with the config `config` returns (called once,
    /// at the first call; a panic or an invalid config is reported and the defaults
    /// stand), and `foreign` for what the manager does not serve.
    pub const fn new(config: fn() -> Config, foreign: Foreign) -> Self {
        Malloc {
            process: Process::new(config),
            foreign,
            parked: AtomicPtr::new(null_mut()),
            recording: AtomicBool::new(false),
            #[cfg(feature = "trace")]
            recorder: OnceLock::new(),
        }
    }

    /// Records every later call from the program (`malloc`, `free`, .., not the
    /// allocator's own bookkeeping) into a new file at `path`, in the RMM CSV format
    /// that `tensorpool replay` and `plan` read, with the system's thread ids; a
    /// `realloc` is a free and an allocation. An error if the file cannot be made
    /// or a recording runs already. A forked child does not record.
    #[cfg(feature = "trace")]
    pub fn record_to(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        let Some(_inside) = Inside::enter() else {
            return Err(std::io::Error::other("called from inside the allocator"));
        };
        let writer = TraceWriter::to_file(path)?.with_os_thread_ids();
        let recorder = Recorder {
            writer,
            pid: std::process::id(),
        };
        self.recorder
            .set(recorder)
            .map_err(|_| std::io::Error::other("a recording runs already"))?;
        self.recording.store(true, Release);
        Ok(())
    }

    /// Flushes the recording (in the process that started it) and returns the
    /// first write error; later calls are still recorded. `Ok` without a recording.
    #[cfg(feature = "trace")]
    pub fn finish_recording(&self) -> std::io::Result<()> {
        let Some(_inside) = Inside::enter() else {
            return Err(std::io::Error::other("called from inside the allocator"));
        };
        match self.recorder.get() {
            Some(r) if r.pid == std::process::id() => r.writer.finish(),
            _ => Ok(()),
        }
    }

    /// Records an allocation (`size` bytes at `ptr`, NULL for a failure) and the
    /// free of `freed` (`freed_size` bytes) before it; the caller is inside.
    #[cold]
    fn record(
        &self,
        _inside: &Inside,
        freed: Option<(*mut c_void, usize)>,
        ptr: *mut c_void,
        size: usize,
    ) {
        #[cfg(feature = "trace")]
        if let Some(r) = self.recorder.get() {
            if r.pid != std::process::id() {
                self.recording.store(false, Relaxed);
                return;
            }
            if let Some((old, old_size)) = freed {
                r.writer.free(old.addr(), old_size);
            }
            match ptr.is_null() {
                true if size > 0 => r.writer.allocate_failure(size),
                true => {}
                false => r.writer.allocate(ptr.addr(), size),
            }
        }
        #[cfg(not(feature = "trace"))]
        let _ = (freed, ptr, size);
    }

    /// Whether calls are being recorded.
    #[inline]
    fn recording(&self) -> bool {
        self.recording.load(Relaxed)
    }

    /// The size to record for a free of `ptr`: the size asked for, for a block of
    /// the manager's; for one of the foreign allocator's (an alignment beyond a
    /// page, or from before the library was loaded), what that allocator says the
    /// block holds (a size of 0 in the trace said nothing); `None` for a free the
    /// manager refuses, which is not recorded (a double free was, as the free of a
    /// block of 0 bytes: a user hunt).
    fn recorded_size(&self, ptr: *mut c_void) -> Option<usize> {
        let Some(mm) = self.process.running() else {
            return Some(0);
        };
        match mm.raw_size(ptr.cast()) {
            Ok(size) => Some(size),
            Err(Error::InvalidPointer {
                reason: PointerError::Foreign,
                ..
            }) => Some(match self.foreign.usable_size {
                // SAFETY: not in the manager's memory (nor in memory it gave back
                // lately), so a block of the foreign allocator's, which the free
                // being recorded hands back to it.
                Some(usable) if !ptr.is_null() => unsafe { usable(ptr) },
                _ => 0,
            }),
            Err(_) => None,
        }
    }

    /// The manager if it runs, started if it is not yet; `None` if it cannot start
    /// or the calling thread is inside the allocator. What it allocates while the
    /// caller holds the mark comes from the foreign allocator, as every call made
    /// from `f` does.
    pub fn query<R>(&self, f: impl FnOnce(&MemoryManager) -> R) -> Option<R> {
        self.process.query(f)
    }

    /// The manager's statistics.
    pub fn stats(&self) -> Option<Stats> {
        self.query_stats(|stats| stats)
    }

    /// Runs `f` on the manager's statistics (with the frees this front refused in
    /// `num_invalid_frees`) inside the allocator, as [`query`](Self::query): what `f`
    /// allocates, and the statistics' own vectors, come from the foreign allocator
    /// and are neither counted nor recorded.
    pub fn query_stats<R>(&self, f: impl FnOnce(Stats) -> R) -> Option<R> {
        self.process.query_stats(f)
    }

    /// The manager's summary, for people.
    pub fn summary(&self) -> Option<String> {
        self.query_stats(|stats| stats.summary())
    }

    /// Gives every thread's free memory back to the system now (`malloc_trim`);
    /// returns the bytes.
    pub fn trim(&self) -> usize {
        self.query(MemoryManager::trim).unwrap_or(0)
    }

    /// What the foreign allocator served, and frees refused.
    pub fn fallbacks(&self) -> SystemFallbacks {
        self.process.fallbacks.get()
    }

    /// `malloc(size)`.
    ///
    /// # Safety
    ///
    /// None beyond C's: the block is used within `size` bytes and freed once, with
    /// [`free`](Self::free) or [`realloc`](Self::realloc).
    #[inline]
    pub unsafe fn malloc(&self, size: usize) -> *mut c_void {
        match Inside::enter() {
            Some(inside) => {
                let ptr = self.serve(&inside, size, MIN_ALIGN, false);
                if self.recording() {
                    self.record(&inside, None, ptr, size);
                }
                ptr
            }
            // SAFETY: the foreign allocator's `malloc`, with C's contract.
            None => unsafe { self.foreign_alloc(size, || (self.foreign.malloc)(size)) },
        }
    }

    /// `calloc(count, size)`: zeroed, NULL with `ENOMEM` if the product overflows.
    ///
    /// # Safety
    ///
    /// As [`malloc`](Self::malloc).
    pub unsafe fn calloc(&self, count: usize, size: usize) -> *mut c_void {
        let Some(bytes) = count.checked_mul(size) else {
            return no_memory();
        };
        match Inside::enter() {
            Some(inside) => {
                let ptr = self.serve(&inside, bytes, MIN_ALIGN, true);
                if self.recording() {
                    self.record(&inside, None, ptr, bytes);
                }
                ptr
            }
            // SAFETY: the foreign allocator's `calloc`, with C's contract.
            None => unsafe { self.foreign_alloc(bytes, || (self.foreign.calloc)(count, size)) },
        }
    }

    /// `size` bytes aligned to `align`, a power of two (the caller checks it: each
    /// C function refuses a bad alignment its own way).
    ///
    /// # Safety
    ///
    /// As [`malloc`](Self::malloc).
    pub unsafe fn aligned(&self, align: usize, size: usize) -> *mut c_void {
        debug_assert!(align.is_power_of_two());
        let align = align.max(MIN_ALIGN);
        let inside = Inside::enter();
        let ptr = match &inside {
            Some(inside) if align <= MAX_ALIGN => self.serve(inside, size, align, false),
            // SAFETY: the foreign allocator's `memalign` with a power of two.
            _ => unsafe { self.foreign_alloc(size, || (self.foreign.memalign)(align, size)) },
        };
        if let Some(inside) = inside.filter(|_| self.recording()) {
            self.record(&inside, None, ptr, size);
        }
        ptr
    }

    /// A block from the manager (or from the foreign allocator if it cannot start),
    /// NULL with `ENOMEM` when none can be had.
    #[inline]
    fn serve(&self, inside: &Inside, size: usize, align: usize, zeroed: bool) -> *mut c_void {
        let Some(mm) = self.process.manager(inside) else {
            // SAFETY: the foreign allocator's functions, with C's contract.
            return unsafe {
                self.foreign_alloc(size, || match zeroed {
                    true => (self.foreign.calloc)(1, size),
                    false => (self.foreign.memalign)(align, size),
                })
            };
        };
        let size = size.max(1);
        let block = match zeroed {
            true => mm.allocate_raw_zeroed(size, align),
            false => mm.allocate_raw(size, align),
        };
        match block {
            Ok(ptr) => ptr.as_ptr().cast(),
            Err(e) => self.out_of_memory(e),
        }
    }

    /// A block of the foreign allocator's, counted.
    ///
    /// # Safety
    ///
    /// `alloc` calls one of the foreign allocator's functions, with C's contract.
    #[cold]
    unsafe fn foreign_alloc(
        &self,
        size: usize,
        alloc: impl FnOnce() -> *mut c_void,
    ) -> *mut c_void {
        self.process.count_fallback(size);
        alloc()
    }

    #[cold]
    fn out_of_memory(&self, e: Error) -> *mut c_void {
        // Running out of memory explains the manager's state, the first few times
        // (sizes no allocator could serve fail quietly, as glibc's do).
        self.process.count_out_of_memory(&e);
        no_memory()
    }

    /// `free(ptr)`.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or a block of this allocator's (or of the foreign one's) that is
    /// not used after this call. An address that is neither is refused or handed to
    /// the foreign allocator, whose own checks then apply.
    #[inline]
    pub unsafe fn free(&self, ptr: *mut c_void) {
        if ptr.is_null() {
            return;
        }
        let inside = Inside::enter();
        if let (Some(_), Some(mm)) = (&inside, self.process.running()) {
            if !self.recording()
                && self.parked.load(Relaxed).is_null()
                && mm.free_raw_hot(ptr.cast())
            {
                return;
            }
        }
        // `free` leaves `errno` as it was (glibc since 2.33, POSIX 2024); a slow path
        // may make system calls (a lock's wait, `madvise`, a report).
        let _errno = SavedErrno::now();
        match inside {
            // SAFETY: forwarded with the caller's contract.
            Some(inside) => unsafe { self.free_slow(&inside, ptr) },
            // SAFETY: forwarded with the caller's contract.
            None => unsafe { self.free_inside(ptr) },
        }
    }

    /// [`free`](Self::free) of a non-null `ptr` that the hot path did not take; the
    /// caller is inside and saved `errno`.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    unsafe fn free_slow(&self, inside: &Inside, ptr: *mut c_void) {
        if self.recording() {
            self.record_free(inside, ptr);
        }
        let Some(mm) = self.process.running() else {
            // SAFETY: no manager, so every block is the foreign allocator's.
            return unsafe { (self.foreign.free)(ptr) };
        };
        match mm.free_raw(ptr.cast()) {
            Ok(()) => {
                if !self.parked.load(Relaxed).is_null() {
                    self.free_parked(inside, mm);
                }
            }
            // SAFETY: forwarded with the caller's contract.
            Err(e) => unsafe { self.not_freed(ptr, e) },
        }
    }

    #[cold]
    fn record_free(&self, _inside: &Inside, ptr: *mut c_void) {
        #[cfg(feature = "trace")]
        if let Some(r) = self.recorder.get() {
            if r.pid == std::process::id() {
                if let Some(size) = self.recorded_size(ptr) {
                    r.writer.free(ptr.addr(), size);
                }
            }
        }
    }

    /// A free the manager did not take: the foreign allocator's block, or a refusal.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    #[cold]
    unsafe fn not_freed(&self, ptr: *mut c_void, e: Error) {
        match e {
            Error::InvalidPointer {
                reason: PointerError::Foreign,
                ..
            } => {
                // SAFETY: not in the manager's memory, so the foreign allocator's.
                unsafe { (self.foreign.free)(ptr) }
            }
            e => self.refused(ptr, e),
        }
    }

    #[cold]
    fn refused(&self, ptr: *mut c_void, e: Error) {
        if self.process.fallbacks.refused_frees.fetch_add(1, Relaxed) < REFUSAL_REPORTS {
            crate::util::stderr::report!("tensorpool: free({ptr:p}) refused, nothing changed: {e}");
        }
    }

    /// A free that arrived inside the allocator: the foreign allocator's blocks go
    /// back to it, the manager's are parked for the next free from outside.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free).
    #[cold]
    unsafe fn free_inside(&self, ptr: *mut c_void) {
        let Some(mm) = self.managers(ptr) else {
            // SAFETY: not the manager's, so the foreign allocator's.
            return unsafe { (self.foreign.free)(ptr) };
        };
        match mm.raw_size(ptr.cast()) {
            Ok(_) => self.park(ptr),
            Err(e) => self.refused(ptr, e),
        }
    }

    /// The manager, if `ptr` lies in its memory (it is not entered). While the
    /// calling thread writes the manager's table of regions, what it frees is the
    /// table's own memory, from the foreign allocator, and the table cannot be read.
    fn managers(&self, ptr: *mut c_void) -> Option<&MemoryManager> {
        if WritingRegions::now() {
            return None;
        }
        match (self.process.running(), NonNull::new(ptr)) {
            (Some(mm), Some(block)) if mm.holds(block.cast()) => Some(mm),
            _ => None,
        }
    }

    /// Parks the manager's block `ptr` on the list of frees to do.
    fn park(&self, ptr: *mut c_void) {
        let mut head = self.parked.load(Relaxed);
        loop {
            // SAFETY: a live block of the manager's, at least 16 bytes and 16-aligned,
            // which its owner no longer uses: its first word is ours to write.
            unsafe { ptr.cast::<*mut c_void>().write(head) };
            match self
                .parked
                .compare_exchange_weak(head, ptr, Release, Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Frees every parked block (taken all at once: no ABA).
    #[cold]
    fn free_parked(&self, _inside: &Inside, mm: &MemoryManager) {
        let mut next = self.parked.swap(null_mut(), Acquire);
        while !next.is_null() {
            let ptr = next;
            // SAFETY: parked blocks hold the next one's address in their first word,
            // written before the `Release` that published them.
            next = unsafe { ptr.cast::<*mut c_void>().read() };
            if let Err(e) = mm.free_raw(ptr.cast()) {
                self.refused(ptr, e);
            }
        }
    }

    /// `realloc(ptr, size)`: glibc's rules for NULL and 0 (see the
    /// [module docs](self)); on failure NULL with `ENOMEM` and the old block as it was.
    ///
    /// # Safety
    ///
    /// As [`free`](Self::free) for `ptr`, and no other thread frees it meanwhile.
    pub unsafe fn realloc(&self, ptr: *mut c_void, size: usize) -> *mut c_void {
        if ptr.is_null() {
            // SAFETY: C's contract, forwarded.
            return unsafe { self.malloc(size) };
        }
        if size == 0 {
            // SAFETY: C's contract, forwarded.
            unsafe { self.free(ptr) };
            return null_mut();
        }
        match self.recording() {
            // SAFETY: C's contract, forwarded.
            true => unsafe { self.realloc_recorded(ptr, size) },
            // SAFETY: C's contract, forwarded.
            false => unsafe { self.move_block(ptr, size) },
        }
    }

    /// `realloc` of a block (not null) to a size (not 0), not recorded.
    ///
    /// # Safety
    ///
    /// As [`realloc`](Self::realloc).
    unsafe fn move_block(&self, ptr: *mut c_void, size: usize) -> *mut c_void {
        let Some(inside) = Inside::enter() else {
            // SAFETY: C's contract, forwarded.
            return unsafe { self.realloc_inside(ptr, size) };
        };
        let Some(mm) = self.process.running() else {
            // SAFETY: no manager, so the foreign allocator's block.
            return unsafe { (self.foreign.realloc)(ptr, size) };
        };
        // SAFETY: by our caller's contract no other thread frees `ptr` meanwhile; an
        // address that is not a live raw block is reported, not read.
        let new = unsafe { self.reallocate(mm, ptr, size) };
        drop(inside);
        new
    }

    /// `realloc` while recording. A live block of the manager's moves by hand: the
    /// new block is allocated (and recorded) first, the bytes copied, then the old
    /// one freed (its free recorded before it happens, as every free is), so the
    /// trace has both blocks live during the copy, as they were, and a replay or a
    /// plan makes room for them. Other blocks (the foreign allocator's, or a pointer
    /// the manager refuses) take [`realloc_recorded_other`](Self::realloc_recorded_other).
    ///
    /// # Safety
    ///
    /// As [`realloc`](Self::realloc), with `ptr` not null and `size` not 0.
    #[cold]
    unsafe fn realloc_recorded(&self, ptr: *mut c_void, size: usize) -> *mut c_void {
        let live = match (self.process.running(), NonNull::new(ptr.cast::<u8>())) {
            (Some(mm), Some(block)) if mm.holds(block) => mm.raw_size(block.as_ptr()).ok(),
            _ => None,
        };
        let Some(old) = live else {
            // SAFETY: as ours.
            return unsafe { self.realloc_recorded_other(ptr, size) };
        };
        // SAFETY: C's contract for `malloc`; a failure leaves the old block as it was
        // (and `errno` set), as `realloc` must.
        let new = unsafe { self.malloc(size) };
        if !new.is_null() {
            // SAFETY: `ptr` is a live raw block of `old` bytes that, by C's contract,
            // nobody frees meanwhile; `new` a fresh one of `size` bytes: distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size));
                self.free(ptr);
            }
        }
        new
    }

    /// `realloc` while recording of a block that is not a live one of the
    /// manager's: the free of the old block is recorded before it happens (another
    /// thread may be handed its address at once), the new block after; a failure
    /// records the old block as live again.
    ///
    /// # Safety
    ///
    /// As [`realloc`](Self::realloc), with `ptr` not null and `size` not 0.
    #[cold]
    unsafe fn realloc_recorded_other(&self, ptr: *mut c_void, size: usize) -> *mut c_void {
        // `None`: nothing recorded of the old block (a refused one, or a call from
        // inside the allocator).
        let old_size = Inside::enter().and_then(|inside| {
            let old_size = self.recorded_size(ptr)?;
            self.record(&inside, Some((ptr, old_size)), null_mut(), 0);
            Some(old_size)
        });
        // SAFETY: C's contract, forwarded.
        let new = unsafe { self.move_block(ptr, size) };
        if let Some(inside) = Inside::enter() {
            match (new.is_null(), old_size) {
                (false, _) => self.record(&inside, None, new, size),
                (true, Some(old_size)) => self.record(&inside, None, ptr, old_size),
                (true, None) => {}
            }
        }
        new
    }

    /// `realloc` of a block that may be the manager's (the caller is inside).
    ///
    /// # Safety
    ///
    /// As [`realloc`](Self::realloc).
    unsafe fn reallocate(&self, mm: &MemoryManager, ptr: *mut c_void, size: usize) -> *mut c_void {
        // SAFETY: by our caller's contract no other thread frees `ptr` meanwhile; an
        // address that is not a live raw block is reported, not read.
        match unsafe { mm.reallocate_raw(ptr.cast(), size, MIN_ALIGN) } {
            Ok(new) => new.as_ptr().cast(),
            Err(Error::InvalidPointer {
                reason: PointerError::Foreign,
                ..
            }) => {
                // SAFETY: not in the manager's memory, so the foreign allocator's.
                unsafe { (self.foreign.realloc)(ptr, size) }
            }
            Err(e @ Error::InvalidPointer { .. }) => {
                self.refused(ptr, e);
                set_errno(libc::EINVAL);
                null_mut()
            }
            Err(e) => self.out_of_memory(e),
        }
    }

    /// A `realloc` inside the allocator: a foreign block for the new size, the
    /// manager's old block parked.
    ///
    /// # Safety
    ///
    /// As [`realloc`](Self::realloc).
    #[cold]
    unsafe fn realloc_inside(&self, ptr: *mut c_void, size: usize) -> *mut c_void {
        let Some(mm) = self.managers(ptr) else {
            // SAFETY: the foreign allocator's block.
            return unsafe { (self.foreign.realloc)(ptr, size) };
        };
        let old = match mm.raw_size(ptr.cast()) {
            Ok(old) => old,
            Err(e) => {
                self.refused(ptr, e);
                set_errno(libc::EINVAL);
                return null_mut();
            }
        };
        // SAFETY: the foreign allocator's `malloc`.
        let new = unsafe { self.foreign_alloc(size, || (self.foreign.malloc)(size)) };
        if !new.is_null() {
            // SAFETY: `ptr` is a live block of `old` bytes (the manager says so) and
            // `new` a fresh one of `size`; they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size))
            };
            self.park(ptr);
        }
        new
    }

    /// `malloc_usable_size(ptr)`: the size asked for the block (0 for NULL).
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or a live block of this allocator's or the foreign one's.
    pub unsafe fn usable_size(&self, ptr: *mut c_void) -> usize {
        if ptr.is_null() {
            return 0;
        }
        if let Some(mm) = self.process.running() {
            match mm.raw_size(ptr.cast()) {
                Ok(size) => return size,
                Err(Error::InvalidPointer {
                    reason: PointerError::Foreign,
                    ..
                }) => {}
                Err(_) => return 0,
            }
        }
        match self.foreign.usable_size {
            // SAFETY: not the manager's, so a block of the foreign allocator's.
            Some(usable) => unsafe { usable(ptr) },
            None => 0,
        }
    }
}

/// The calling thread's `errno`, put back when this drops.
struct SavedErrno(i32);

impl SavedErrno {
    #[inline]
    fn now() -> Self {
        // SAFETY: `__errno_location` returns the calling thread's `errno`.
        SavedErrno(unsafe { *libc::__errno_location() })
    }
}

impl Drop for SavedErrno {
    #[inline]
    fn drop(&mut self) {
        set_errno(self.0);
    }
}

/// NULL, with `errno = ENOMEM`.
fn no_memory() -> *mut c_void {
    set_errno(libc::ENOMEM);
    null_mut()
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: i32) {
    // SAFETY: `__errno_location` returns the calling thread's `errno`, always valid.
    unsafe { *libc::__errno_location() = value };
}

#[cfg(test)]
mod tests {
    use super::*;

    static C: Malloc = Malloc::new(crate::global::process_defaults, Foreign::libc());

    fn errno() -> i32 {
        // SAFETY: the calling thread's `errno`.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn c_semantics_on_edge_inputs() {
        // SAFETY: every block is used within its size and freed once.
        unsafe {
            let zero = C.malloc(0);
            let zero2 = C.malloc(0);
            assert!(!zero.is_null() && zero != zero2, "malloc(0) is unique");
            C.free(zero);
            C.free(zero2);
            C.free(null_mut());
            set_errno(0);
            assert!(C.malloc(usize::MAX).is_null());
            assert_eq!(errno(), libc::ENOMEM);
            set_errno(0);
            assert!(C.calloc(usize::MAX / 2, 3).is_null(), "overflow");
            assert_eq!(errno(), libc::ENOMEM);
            let z = C.calloc(100, 7).cast::<u8>();
            assert!((0..700).all(|i| *z.add(i) == 0));
            assert_eq!(C.usable_size(z.cast()), 700);
            let p = C.realloc(null_mut(), 24).cast::<u8>();
            p.write_bytes(7, 24);
            assert_eq!(p as usize % MIN_ALIGN, 0);
            let p = C.realloc(p.cast(), 1 << 20).cast::<u8>();
            assert!((0..24).all(|i| *p.add(i) == 7), "contents kept");
            let p = C.realloc(p.cast(), 10).cast::<u8>();
            assert!((0..10).all(|i| *p.add(i) == 7), "contents kept shrinking");
            assert!(C.realloc(p.cast(), 0).is_null(), "realloc(p, 0) frees");
            C.free(z.cast());
        }
    }

    #[test]
    fn free_leaves_errno_as_it_was() {
        // SAFETY: blocks of the front's and the C library's, freed once; the bad
        // frees are refused.
        unsafe {
            let blocks: Vec<_> = [16, 5000, 100_000, 3 << 20].map(|n| C.malloc(n)).into();
            let foreign = libc::malloc(10);
            set_errno(libc::EDOM);
            for p in blocks {
                C.free(p.cast::<u8>().add(16).cast()); // refused, and reported
                C.free(p);
                C.free(p); // a double free
            }
            C.free(foreign);
            assert_eq!(errno(), libc::EDOM);
            let p = C.malloc(100);
            assert!(C.realloc(p, 0).is_null());
            assert_eq!(errno(), libc::EDOM);
        }
    }

    #[test]
    fn every_alignment_from_1_to_1_mib() {
        for shift in 0..=20 {
            let align = 1usize << shift;
            // SAFETY: freed once, used within its size.
            unsafe {
                let p = C.aligned(align, 100);
                assert!(!p.is_null());
                assert_eq!(p as usize % align.max(MIN_ALIGN), 0, "align {align}");
                p.cast::<u8>().write_bytes(1, 100);
                assert!(C.usable_size(p) >= 100);
                C.free(p);
            }
        }
    }

    #[test]
    fn foreign_blocks_go_back_to_the_foreign_allocator() {
        // SAFETY: the C library's own blocks, freed once, through the front.
        unsafe {
            let before = C.fallbacks().refused_frees;
            let p = libc::malloc(64);
            assert!(C.usable_size(p) >= 64);
            C.free(p);
            let q = libc::malloc(64);
            let q = C.realloc(q, 4096);
            assert!(!q.is_null());
            C.free(q);
            assert_eq!(C.fallbacks().refused_frees, before);
        }
    }

    #[test]
    fn bad_frees_are_refused_and_change_nothing() {
        // SAFETY: the bad frees below are refused before anything is written.
        unsafe {
            let p = C.malloc(64).cast::<u8>();
            p.write_bytes(9, 64);
            let before = C.fallbacks().refused_frees;
            C.free(p.add(8).cast());
            let keep = C.malloc(64);
            C.free(p.cast());
            C.free(p.cast()); // a double free
            assert!(C.fallbacks().refused_frees >= before + 2);
            set_errno(0);
            assert!(C.realloc(p.cast(), 100).is_null());
            assert_eq!(errno(), libc::EINVAL);
            C.free(keep);
        }
    }

    #[test]
    #[cfg(feature = "trace")]
    fn a_recording_replays() {
        static C: Malloc = Malloc::new(crate::global::process_defaults, Foreign::libc());
        let path = std::env::temp_dir().join(format!("tp-malloc-rec-{}.csv", std::process::id()));
        C.record_to(&path).unwrap();
        assert!(C.record_to(&path).is_err(), "one recording at a time");
        // SAFETY: blocks of the front's, freed once each.
        unsafe {
            let a = C.malloc(100);
            let b = C.calloc(10, 10);
            let a = C.realloc(a, 3000);
            let c = C.aligned(8192, 10);
            C.free(a);
            C.free(b);
            C.free(c);
        }
        C.finish_recording().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // SAFETY: `gettid` has no preconditions.
        let tid = unsafe { libc::gettid() };
        assert!(
            text.lines()
                .skip(1)
                .all(|l| l.starts_with(&format!("{tid},"))),
            "{text}"
        );
        let trace = crate::trace::Trace::read(&path).unwrap();
        assert_eq!((trace.allocations, trace.leaked_blocks), (4, 0), "{text}");
        // The realloc's new block is recorded before the old one's free: both were
        // live during the copy, and the trace's peak says so.
        let actions: Vec<(&str, &str)> = text
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[2], f[4])
            })
            .collect();
        let grown = actions
            .iter()
            .position(|&a| a == ("allocate", "3000"))
            .unwrap();
        let freed = actions.iter().position(|&a| a == ("free", "100")).unwrap();
        assert!(grown < freed, "{text}");
        assert!(trace.peak_live_bytes() >= 100 + 100 + 3000, "{text}");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn frees_inside_the_allocator_are_parked_then_done() {
        // A front of its own: the other tests' blocks would move the counts.
        static C: Malloc = Malloc::new(crate::global::process_defaults, Foreign::libc());
        // SAFETY: blocks of the front's, freed once each.
        unsafe {
            let a = C.malloc(48);
            let b = C.malloc(5000);
            let c = C.malloc(100);
            let allocated = C.stats().unwrap().allocated_blocks;
            {
                let _inside = Inside::enter().expect("not inside yet");
                // What glibc does from inside `malloc`: frees and reallocs of the
                // manager's blocks, and allocations, which the foreign one serves.
                C.free(a);
                let d = C.realloc(c, 200);
                assert!(!d.is_null() && C.managers(d).is_none());
                C.free(d);
            }
            assert_eq!(
                C.stats().unwrap().allocated_blocks,
                allocated,
                "parked, not freed"
            );
            C.free(b);
            assert_eq!(C.stats().unwrap().allocated_blocks, allocated - 3);
        }
    }
}
