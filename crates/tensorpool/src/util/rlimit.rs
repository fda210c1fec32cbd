//! The process's resource limits (`ulimit`), as the allocator reads them: how much
//! address space a reservation may take (`upstream::mmap`), which descriptor
//! numbers a kept file may use (`util::fd`).
//!
//! ```ignore
//! // Under `ulimit -v 1000000`: Some(1_024_000_000).
//! let limit = rlimit::soft_limit(rlimit::Resource::AddressSpace);
//! ```

/// A limit tensorpool reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resource {
    /// `RLIMIT_AS`: the address space (`ulimit -v`).
    AddressSpace,
    /// `RLIMIT_NOFILE`: one more than the highest descriptor number (`ulimit -n`).
    Descriptors,
}

/// The soft limit on `what`; `None` where there is none (or it cannot be read).
pub(crate) fn soft_limit(what: Resource) -> Option<libc::rlim_t> {
    let resource = match what {
        Resource::AddressSpace => libc::RLIMIT_AS,
        Resource::Descriptors => libc::RLIMIT_NOFILE,
    };
    // SAFETY: a zeroed rlimit is a valid buffer for getrlimit to fill.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes into `limit` only.
    let read = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
    (read && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}
