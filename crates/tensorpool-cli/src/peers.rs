//! The allocators tensorpool is compared with, behind one interface.
//!
//! Each [`Subject`] allocates and frees through its own entry points (tensorpool's
//! `Allocator` path; the others' `GlobalAlloc`), and reports the bytes it holds from
//! the operating system, each by its own means:
//!
//! | allocator | reserved bytes |
//! | --- | --- |
//! | tensorpool | `reserved_bytes` of its manager |
//! | system (glibc) | `mallinfo2()`: heap arena + mmapped chunks |
//! | mimalloc | `mi_process_info()`: committed bytes |
//! | jemalloc | `stats.mapped`, after an epoch refresh |
//!
//! Only tensorpool can count its calls to the operating system; the others keep no
//! such count that a program can read, so their upstream calls are reported as unknown.

use allocator_api2::alloc::Allocator;
use serde::Serialize;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::Arc;
use tensorpool::{Config, MemoryManager};

static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Which allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// tensorpool's `MemoryManager`.
    Tensorpool,
    /// The system allocator (glibc's malloc).
    System,
    /// mimalloc.
    Mimalloc,
    /// jemalloc.
    Jemalloc,
}

impl Kind {
    /// Every allocator, tensorpool first.
    pub const ALL: [Kind; 4] = [
        Kind::Tensorpool,
        Kind::System,
        Kind::Mimalloc,
        Kind::Jemalloc,
    ];

    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tensorpool => "tensorpool",
            Kind::System => "system",
            Kind::Mimalloc => "mimalloc",
            Kind::Jemalloc => "jemalloc",
        }
    }
}

/// An allocator to drive, shareable between threads.
#[derive(Clone)]
pub enum Subject {
    /// tensorpool, through the `Allocator` trait (typed path, thread caches).
    Tensorpool(Arc<MemoryManager>),
    /// A `GlobalAlloc` peer.
    Global(Kind),
}

impl Subject {
    /// tensorpool with `config`, its release policy reading `clock`.
    pub fn tensorpool_with_clock(
        config: &Config,
        clock: Arc<dyn tensorpool::clock::Clock>,
    ) -> tensorpool::Result<Subject> {
        let mm = MemoryManager::with_clock(config.clone(), clock)?;
        Ok(Subject::Tensorpool(Arc::new(mm)))
    }

    /// A fresh subject of `kind`; tensorpool with `config`.
    pub fn new(kind: Kind, config: &Config) -> tensorpool::Result<Subject> {
        Ok(match kind {
            Kind::Tensorpool => Subject::Tensorpool(Arc::new(MemoryManager::new(config.clone())?)),
            Kind::System | Kind::Mimalloc | Kind::Jemalloc => Subject::Global(kind),
        })
    }

    /// Which allocator this is.
    pub fn kind(&self) -> Kind {
        match self {
            Subject::Tensorpool(_) => Kind::Tensorpool,
            Subject::Global(kind) => *kind,
        }
    }

    /// Bytes the allocator holds from the operating system now.
    pub fn reserved_bytes(&self) -> usize {
        match self {
            Subject::Tensorpool(mm) => mm.reserved_bytes(),
            Subject::Global(Kind::System) => {
                // SAFETY: mallinfo2 only reads glibc's bookkeeping.
                let info = unsafe { libc::mallinfo2() };
                info.arena + info.hblkhd
            }
            Subject::Global(Kind::Mimalloc) => {
                let mut v = [0usize; 8];
                // SAFETY: every out-pointer points at a distinct, writable usize.
                unsafe {
                    let [a, b, c, d, e, commit, g, h] = &mut v;
                    libmimalloc_sys::mi_process_info(a, b, c, d, e, commit, g, h);
                }
                v[5]
            }
            Subject::Global(_) => {
                // A refresh makes jemalloc's statistics current.
                let _ = tikv_jemalloc_ctl::epoch::advance();
                tikv_jemalloc_ctl::stats::mapped::read().unwrap_or(0)
            }
        }
    }

    /// Bytes of memory the system backs for the allocator now, where it says:
    /// tensorpool's `resident_bytes`, jemalloc's `stats.resident` (the others keep no
    /// such figure of their own).
    pub fn resident_bytes(&self) -> Option<usize> {
        match self {
            Subject::Tensorpool(mm) => Some(mm.resident_bytes()),
            Subject::Global(Kind::Jemalloc) => {
                let _ = tikv_jemalloc_ctl::epoch::advance();
                tikv_jemalloc_ctl::stats::resident::read().ok()
            }
            Subject::Global(_) => None,
        }
    }

    /// Calls to the operating system for memory, when the allocator counts them.
    pub fn upstream_calls(&self) -> Option<u64> {
        match self {
            Subject::Tensorpool(mm) => {
                let s = mm.stats();
                Some(s.num_upstream_allocs + s.num_upstream_frees)
            }
            Subject::Global(_) => None,
        }
    }
}

/// One allocator's entry points, called directly. Each workload is compiled once
/// per allocator (the crate's `with_allocator!` macro picks the
/// allocator once per run), so that no allocator pays for a dispatch per operation,
/// nor for the registers another allocator's inlined path needs.
pub trait Allocates: Sync {
    /// A block for `layout` (non-zero size), or `None` when memory ran out.
    fn alloc(&self, layout: Layout) -> Option<NonNull<u8>>;

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// `ptr` came from `self.alloc(layout)` and has not been freed.
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout);

    /// `size` bytes (non-zero) through the allocator's sizeless interface: the raw
    /// API for tensorpool (64-byte aligned), `malloc` for the others; `None` when
    /// memory ran out.
    fn alloc_raw(&self, size: usize) -> Option<NonNull<u8>>;

    /// Frees a block from [`alloc_raw`](Self::alloc_raw) with its address alone.
    ///
    /// # Safety
    ///
    /// `ptr` came from `self.alloc_raw` and has not been freed.
    unsafe fn free_raw(&self, ptr: NonNull<u8>);
}

impl Allocates for MemoryManager {
    #[inline(always)]
    fn alloc(&self, layout: Layout) -> Option<NonNull<u8>> {
        self.allocate(layout).ok().map(NonNull::cast)
    }

    #[inline(always)]
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: as the caller promises.
        unsafe { self.deallocate(ptr, layout) }
    }

    #[inline(always)]
    fn alloc_raw(&self, size: usize) -> Option<NonNull<u8>> {
        self.allocate_raw(size, 64).ok()
    }

    #[inline(always)]
    unsafe fn free_raw(&self, ptr: NonNull<u8>) {
        self.free_raw(ptr.as_ptr()).expect("a live raw block");
    }
}

/// A `GlobalAlloc` peer and its C entry points, called directly.
macro_rules! peer {
    ($(#[$doc:meta])* $name:ident, $global:expr, $malloc:path, $free:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl Allocates for $name {
            #[inline(always)]
            fn alloc(&self, layout: Layout) -> Option<NonNull<u8>> {
                // SAFETY: callers pass non-zero layouts.
                NonNull::new(unsafe { $global.alloc(layout) })
            }

            #[inline(always)]
            unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
                // SAFETY: as the caller promises.
                unsafe { $global.dealloc(ptr.as_ptr(), layout) }
            }

            #[inline(always)]
            fn alloc_raw(&self, size: usize) -> Option<NonNull<u8>> {
                // SAFETY: the C allocators take any size and return null on failure.
                NonNull::new(unsafe { $malloc(size) }.cast())
            }

            #[inline(always)]
            unsafe fn free_raw(&self, ptr: NonNull<u8>) {
                // SAFETY: as the caller promises.
                unsafe { $free(ptr.as_ptr().cast()) }
            }
        }
    };
}

peer!(
    /// The system allocator (glibc's malloc).
    Glibc,
    System,
    libc::malloc,
    libc::free
);
peer!(
    /// mimalloc.
    Mimalloc,
    MIMALLOC,
    libmimalloc_sys::mi_malloc,
    libmimalloc_sys::mi_free
);
peer!(
    /// jemalloc.
    Jemalloc,
    JEMALLOC,
    tikv_jemalloc_sys::malloc,
    tikv_jemalloc_sys::free
);

/// Runs `$body` with `$a` bound to the allocator of `$subject` as its own type (an
/// [`Allocates`]), so that the body is compiled once per allocator.
macro_rules! with_allocator {
    ($subject:expr, |$a:ident| $body:expr) => {
        match $subject {
            $crate::peers::Subject::Tensorpool(mm) => {
                let $a: &tensorpool::MemoryManager = mm;
                $body
            }
            $crate::peers::Subject::Global($crate::peers::Kind::System) => {
                let $a = &$crate::peers::Glibc;
                $body
            }
            $crate::peers::Subject::Global($crate::peers::Kind::Mimalloc) => {
                let $a = &$crate::peers::Mimalloc;
                $body
            }
            $crate::peers::Subject::Global(_) => {
                let $a = &$crate::peers::Jemalloc;
                $body
            }
        }
    };
}
pub(crate) use with_allocator;

/// Minor page faults of this process so far.
pub fn page_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init().ru_minflt as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_allocates_frees_and_reports() {
        for kind in Kind::ALL {
            let s = Subject::new(kind, &Config::default()).unwrap();
            assert_eq!(s.kind(), kind);
            let layout = Layout::from_size_align(4 << 20, 64).unwrap();
            let p = with_allocator!(&s, |a| Allocates::alloc(a, layout)).unwrap();
            assert_eq!(p.as_ptr() as usize % 64, 0);
            // SAFETY: a fresh block of `layout`.
            unsafe { p.as_ptr().write_bytes(1, layout.size()) };
            // The sizeless interface too.
            let r = with_allocator!(&s, |a| Allocates::alloc_raw(a, 100)).unwrap();
            // SAFETY: allocated just above, freed once.
            unsafe { with_allocator!(&s, |a| Allocates::free_raw(a, r)) };
            // Under AddressSanitizer the system allocator is the sanitizer's, which
            // keeps no mallinfo2 figures (all zero even with 4 MiB allocated).
            if !(kind == Kind::System && mallinfo_is_empty()) {
                assert!(
                    s.reserved_bytes() >= 4 << 20,
                    "{kind:?} reports {}",
                    s.reserved_bytes()
                );
            }
            // SAFETY: allocated above with `layout`.
            unsafe { with_allocator!(&s, |a| Allocates::free(a, p, layout)) };
            assert_eq!(s.upstream_calls().is_some(), kind == Kind::Tensorpool);
        }
        assert!(page_faults() > 0);
    }

    /// Whether the C allocator keeps no mallinfo2 figures at all (the sanitizers'
    /// allocators do not).
    fn mallinfo_is_empty() -> bool {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's counters.
        let info = unsafe { libc::mallinfo2() };
        info.arena == 0 && info.hblkhd == 0 && info.uordblks == 0
    }
}
