//! Debug mode: poisoned frees, guard bytes, leak reports.
//!
//! With [`Config::debug`](crate::Config::debug) set (or an arena built with
//! [`ArenaBuilder::debug`](crate::tiers::arena::ArenaBuilder::debug)), every block gets
//! [`GUARD`] bytes of [`GUARD_BYTE`] after it, checked when the block is freed (for
//! arenas: when a reset, rewind, scope end or drop releases it); fresh blocks are
//! filled with [`FRESH_BYTE`] and freed ones with [`POISON_BYTE`], so that a read of
//! uninitialised or freed memory shows a recognisable pattern instead of plausible
//! data. A manager tracks its live blocks: dropping it with blocks still live prints
//! a [`LeakReport`] (count, bytes, largest, where they were allocated), and
//! [`MemoryManager::leaks`](crate::MemoryManager::leaks) returns it before then.
//! An overrun is printed as a [`GuardViolation`] (the block's address, size, tier and,
//! with `RUST_BACKTRACE=1`, where it was allocated) and kept for
//! [`MemoryManager::guard_violations`](crate::MemoryManager::guard_violations).
//!
//! Debug mode turns the thread caches off and takes a lock per allocation and free
//! for its records: it is for finding bugs, not for speed (docs/BENCHMARKS.md measures it).
//!
//! ```
//! use tensorpool::{Config, MemoryManager};
//!
//! let mm = MemoryManager::new(Config::builder().debug(true).build()?)?;
//! let p = mm.allocate_raw(100, 8)?;
//! // SAFETY (of the demonstration): the write lands in the guard bytes after the
//! // block, which debug mode owns; this is the bug it exists to catch.
//! unsafe { p.as_ptr().add(100).write(0) };
//! mm.free_raw(p.as_ptr())?; // prints the overrun on stderr
//! let overruns = mm.guard_violations();
//! assert_eq!((overruns[0].size, overruns[0].offset), (100, 0));
//!
//! let leaked = mm.allocate_raw(4096, 8)?;
//! let report = mm.leaks().expect("debug mode tracks live blocks");
//! assert_eq!((report.count, report.bytes, report.largest), (1, 4096, 4096));
//! # mm.free_raw(leaked.as_ptr())?;
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::observe::stats::Tier;
use crate::util::bytes::format_bytes;
use crate::util::sync::PlainMutex as Mutex;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Guard bytes after every block in debug mode.
pub const GUARD: usize = 16;
/// The value of guard bytes.
pub const GUARD_BYTE: u8 = 0xFB;
/// The value fresh (non-zeroed) blocks are filled with.
pub const FRESH_BYTE: u8 = 0xCD;
/// The value freed blocks are filled with.
pub const POISON_BYTE: u8 = 0xDD;

/// A write past the end of a block, found when the block was freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardViolation {
    /// The block's address.
    pub addr: usize,
    /// The block's size as requested.
    pub size: usize,
    /// The tier (or strategy) that served it.
    pub tier: Tier,
    /// Offset past the end of the block of the first guard byte found changed.
    pub offset: usize,
    /// Where the block was allocated, when backtraces are enabled (`RUST_BACKTRACE=1`).
    pub site: Option<String>,
}

impl fmt::Display for GuardViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "heap overrun: the block of {} bytes at {:#x} (tier: {}) was written {} byte(s) \
             past its end (guard byte at offset {} changed)",
            self.size,
            self.addr,
            self.tier,
            self.offset + 1,
            self.offset
        )?;
        match &self.site {
            Some(site) => write!(f, "; allocated at:\n{site}"),
            None => write!(
                f,
                "; set RUST_BACKTRACE=1 to record where blocks are allocated"
            ),
        }
    }
}

/// Blocks still live when a manager or arena goes away (or when asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakReport {
    /// What leaked: "manager" or "arena".
    pub owner: &'static str,
    /// Live blocks.
    pub count: usize,
    /// Their bytes, as requested.
    pub bytes: usize,
    /// The largest one.
    pub largest: usize,
    /// Allocation sites of up to 5 of the largest blocks, when recorded.
    pub sites: Vec<String>,
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "leak: the {} was dropped with {} live block(s), {} in all, the largest {}",
            self.owner,
            self.count,
            format_bytes(self.bytes),
            format_bytes(self.largest)
        )?;
        for site in &self.sites {
            write!(f, "\n  allocated at:\n{site}")?;
        }
        Ok(())
    }
}

/// Where a block was allocated, if backtraces are enabled: captured now, symbolized
/// only if a report prints it. Not in a forked child of the process-wide allocator's
/// process: another thread may have held the standard library's backtrace lock at
/// the fork, and in the child nobody would ever let it go.
pub(crate) fn site() -> Option<Arc<Backtrace>> {
    if IN_FORKED_CHILD.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let bt = Backtrace::capture();
    (bt.status() == BacktraceStatus::Captured).then(|| Arc::new(bt))
}

/// Set in a forked child (by the process-wide allocator's fork handler): no call
/// sites are captured there.
pub(crate) static IN_FORKED_CHILD: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Writes the guard after a block of `size` bytes at `ptr`.
///
/// # Safety
///
/// `ptr` is valid for writes of `size + GUARD` bytes.
pub(crate) unsafe fn arm(ptr: NonNull<u8>, size: usize, fresh: bool) {
    // SAFETY: by the caller's contract.
    unsafe {
        if fresh {
            ptr.as_ptr().write_bytes(FRESH_BYTE, size);
        }
        ptr.as_ptr().add(size).write_bytes(GUARD_BYTE, GUARD);
    }
}

/// Releases a block of `size` bytes at `ptr`: checks its guard, prints an overrun,
/// and fills the block and its guard with the poison. Returns the overrun, if any.
///
/// # Safety
///
/// `ptr` is valid for reads and writes of `size + GUARD` bytes, and nobody uses them
/// any more.
pub(crate) unsafe fn release(
    ptr: NonNull<u8>,
    size: usize,
    tier: Tier,
    site: Option<&Backtrace>,
) -> Option<GuardViolation> {
    // SAFETY: by the caller's contract, the guard is readable.
    let guard = unsafe { std::slice::from_raw_parts(ptr.as_ptr().add(size), GUARD) };
    let violation = guard
        .iter()
        .position(|&b| b != GUARD_BYTE)
        .map(|offset| GuardViolation {
            addr: ptr.as_ptr() as usize,
            size,
            tier,
            offset,
            site: site.map(Backtrace::to_string),
        });
    if let Some(v) = &violation {
        crate::util::stderr::report!("tensorpool: {v}");
    }
    // SAFETY: by the caller's contract; nobody uses the block any more (the slice
    // above is no longer used).
    unsafe { ptr.as_ptr().write_bytes(POISON_BYTE, size + GUARD) };
    violation
}

/// A live block as debug mode records it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub size: usize,
    pub tier: Tier,
    pub raw: bool,
    pub site: Option<Arc<Backtrace>>,
}

/// A manager's debug records: its live blocks and the overruns found.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    live: Mutex<FxHashMap<usize, Record>>,
    violations: Mutex<Vec<GuardViolation>>,
}

/// A tracker's locks, held across `fork()` (`manager::fork`).
pub(crate) struct TrackerHold<'a>(
    #[allow(dead_code)] std::sync::MutexGuard<'a, FxHashMap<usize, Record>>,
    #[allow(dead_code)] std::sync::MutexGuard<'a, Vec<GuardViolation>>,
);

impl Tracker {
    /// Takes the tracker's locks, to hold across `fork()`.
    pub(crate) fn hold_for_fork(&self) -> TrackerHold<'_> {
        TrackerHold(self.live.lock(), self.violations.lock())
    }

    pub(crate) fn insert(&self, addr: usize, record: Record) {
        self.live.lock().insert(addr, record);
    }

    /// Takes the record of the live block at `addr` if its raw flag is `raw`.
    pub(crate) fn take(&self, addr: usize, raw: bool) -> Option<Record> {
        let mut live = self.live.lock();
        match live.get(&addr) {
            Some(r) if r.raw == raw => live.remove(&addr),
            _ => None,
        }
    }

    /// The requested size of the live raw block at `addr`.
    pub(crate) fn raw_size(&self, addr: usize) -> Option<usize> {
        self.live
            .lock()
            .get(&addr)
            .filter(|r| r.raw)
            .map(|r| r.size)
    }

    /// Checks the guard of a block being freed and poisons it; reports and keeps an
    /// overrun.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of `record.size + GUARD` bytes, being freed.
    pub(crate) unsafe fn check_and_poison(&self, ptr: NonNull<u8>, record: &Record) {
        // SAFETY: by the caller's contract.
        let overrun = unsafe { release(ptr, record.size, record.tier, record.site.as_deref()) };
        if let Some(violation) = overrun {
            self.violations.lock().push(violation);
        }
    }

    pub(crate) fn violations(&self) -> Vec<GuardViolation> {
        self.violations.lock().clone()
    }

    pub(crate) fn leaks(&self, owner: &'static str) -> LeakReport {
        let live = self.live.lock();
        leak_report(owner, live.values().map(|r| (r.size, r.site.clone())))
    }
}

/// A report of `blocks` (size, site).
pub(crate) fn leak_report(
    owner: &'static str,
    blocks: impl Iterator<Item = (usize, Option<Arc<Backtrace>>)>,
) -> LeakReport {
    let mut blocks: Vec<_> = blocks.collect();
    blocks.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    LeakReport {
        owner,
        count: blocks.len(),
        bytes: blocks.iter().map(|(s, _)| s).sum(),
        largest: blocks.first().map_or(0, |(s, _)| *s),
        sites: blocks
            .iter()
            .filter_map(|(_, site)| site.as_ref().map(|bt| bt.to_string()))
            .take(5)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arena, Config, MemoryManager, UpstreamKind};
    use allocator_api2::alloc::Allocator;
    use std::alloc::Layout;

    /// The debug paths over the heap upstream, so that Miri checks every access they
    /// make (guards written, read and poisoned; records taken once).
    #[test]
    fn guards_poison_and_records_on_every_path() {
        let config = Config::builder()
            .upstream(UpstreamKind::Heap)
            .debug(true)
            .small_threshold(1024)
            .huge_threshold(1 << 20)
            .build()
            .unwrap();
        let mm = MemoryManager::new(config).unwrap();
        for size in [10, 5000, 2 << 20] {
            let p = mm.allocate_raw(size, 8).unwrap();
            // SAFETY: one byte past the block: the guard, which debug mode owns.
            unsafe { p.as_ptr().add(size).write(0) };
            mm.free_raw(p.as_ptr()).unwrap();
            assert!(mm.free_raw(p.as_ptr()).is_err());
        }
        assert_eq!(mm.guard_violations().len(), 3);
        let layout = Layout::from_size_align(100, 8).unwrap();
        let t = mm.allocate(layout).unwrap().cast::<u8>();
        assert_eq!(mm.leaks().unwrap().count, 1);
        // SAFETY: allocated above with `layout`.
        unsafe { mm.deallocate(t, layout) };
        assert_eq!(mm.leaks().unwrap().count, 0);
        let mut arena = Arena::builder()
            .upstream(Arc::new(crate::upstream::HeapUpstream))
            .debug(true)
            .build()
            .unwrap();
        let a = arena.allocate(24, 8).unwrap();
        // SAFETY: the arena allocation's guard.
        unsafe { a.as_ptr().add(24).write(1) };
        arena.reset();
        assert_eq!(arena.guard_violations()[0].size, 24);
    }
}
