//! The one error type of tensorpool, and the out-of-memory report it carries.
//!
//! Every expected failure is a value, never a panic: a bad size or alignment, a full
//! pool, memory that ran out, a pointer that tensorpool did not hand out. The
//! out-of-memory error explains the state of the allocator the way PyTorch's message
//! does, so that a user can act on it:
//!
//! ```
//! use tensorpool::{Config, Error, MemoryManager};
//!
//! let mm = MemoryManager::new(Config::builder().memory_limit(4 << 20).build()?)?;
//! let err = mm.allocate_raw(64 << 20, 64).unwrap_err();
//! assert!(matches!(err, Error::OutOfMemory(_)));
//! let text = err.to_string();
//! assert!(text.contains("tried to allocate 64.00 MiB"));
//! assert!(text.contains("limit"));
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::observe::stats::{Tier, Usage};
use crate::util::bytes::format_bytes;
use std::fmt;

/// Result of a tensorpool operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tensorpool.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A size of zero was asked for where a block is needed.
    #[error("invalid size: a block of 0 bytes was requested; sizes must be at least 1 byte")]
    ZeroSize,
    /// A size beyond [`MAX_ALLOCATION_SIZE`](crate::MAX_ALLOCATION_SIZE), or one whose
    /// rounding overflows.
    #[error("invalid size: {size} bytes is beyond the largest allocation tensorpool serves ({max} bytes, {})", format_bytes(*max))]
    SizeTooLarge {
        /// The size asked for.
        size: usize,
        /// The largest size accepted.
        max: usize,
    },
    /// An alignment that is not a power of two.
    #[error("invalid alignment: {align} is not a power of two")]
    InvalidAlignment {
        /// The alignment asked for.
        align: usize,
    },
    /// An alignment larger than the strategy can honour.
    #[error("invalid alignment: {align} is larger than the largest supported alignment, {max}")]
    AlignmentTooLarge {
        /// The alignment asked for.
        align: usize,
        /// The largest alignment supported.
        max: usize,
    },
    /// Memory ran out: the report says why and what to do.
    #[error("{0}")]
    OutOfMemory(Box<OutOfMemory>),
    /// A pointer given to a free (or to `raw_size`, `reallocate_raw`) that is not a
    /// live block handed out for raw use. Nothing was changed.
    #[error("invalid pointer {addr:#x}: {reason}; nothing was changed")]
    InvalidPointer {
        /// The address passed to the free.
        addr: usize,
        /// What the address turned out to be.
        reason: PointerError,
    },
    /// An arena checkpoint of another arena, from before its last reset, or whose
    /// chunk is no longer where it was.
    #[error("invalid checkpoint: {0}")]
    InvalidCheckpoint(&'static str),
    /// A shape that does not match the data or the tensor.
    #[error("invalid shape: {0}")]
    InvalidShape(String),
    /// A trace that cannot be read: where and why.
    #[cfg(feature = "trace")]
    #[error("malformed trace at {at}: {reason}")]
    MalformedTrace {
        /// Where in the file.
        at: Location,
        /// What is wrong.
        reason: String,
    },
    /// A trace file that cannot be read at all (missing, a directory, no
    /// permission), with the system's reason.
    #[cfg(feature = "trace")]
    #[error("cannot read it: {0}")]
    UnreadableTrace(String),
    /// A trace file that cannot be read, with the file named.
    #[cfg(feature = "trace")]
    #[error("{path}: {reason}")]
    TraceFile {
        /// The file.
        path: String,
        /// What went wrong in it.
        reason: Box<Error>,
    },
    /// A configuration that cannot apply, with the reason.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A plan that cannot be run: buffers live at once that overlap, a step that
    /// cannot be found, with the reason.
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
}

impl Error {
    /// A configuration error with `context` (a file, a variable) before its reason;
    /// any other error as it is.
    pub(crate) fn in_config(self, context: impl fmt::Display) -> Error {
        match self {
            Error::InvalidConfig(why) => {
                Error::InvalidConfig(format!("{context}: {}", why.trim_end()))
            }
            other => other,
        }
    }
}

/// Why a pointer passed to a free was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PointerError {
    /// The address is not inside any memory this allocator manages.
    Foreign,
    /// The address is inside managed memory but no live block starts there: it was
    /// already freed, or never handed out.
    NotLive,
    /// The address points inside a live block, `offset` bytes after its start.
    Interior {
        /// Start of the block that contains the address.
        block: usize,
        /// Distance of the address from the block's start.
        offset: usize,
    },
    /// The block is live but owned by a typed handle (an `Allocator` user, a
    /// `Tensor`, an arena chunk): only the owner may free it.
    NotRaw,
}

impl fmt::Display for PointerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointerError::Foreign => f.write_str("the address is not in memory managed by this allocator"),
            PointerError::NotLive => f.write_str(
                "no live block starts at this address (it was already freed, or never allocated)",
            ),
            PointerError::Interior { block, offset } => write!(
                f,
                "the address is {offset} bytes inside the live block at {block:#x}, not at its start"
            ),
            PointerError::NotRaw => f.write_str(
                "the block is owned by a typed handle (Allocator, Tensor or arena), not by the raw API",
            ),
        }
    }
}

/// Why an allocation ran out of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OomCause {
    /// Taking more memory would exceed the configured limit on reserved bytes.
    LimitReached,
    /// The upstream source (the operating system, a device) refused more memory.
    UpstreamFailed,
    /// A pool or arena with a fixed capacity is full.
    CapacityReached {
        /// Its capacity, in blocks for a pool or bytes for an arena.
        capacity: usize,
    },
}

/// The state of the allocator when an allocation failed, and what can be done.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfMemory {
    /// Bytes asked for.
    pub requested: usize,
    /// Alignment asked for.
    pub align: usize,
    /// The tier that could not serve the request.
    pub tier: Tier,
    /// Why it could not.
    pub cause: OomCause,
    /// Bytes held by the program (blocks as rounded).
    pub allocated_bytes: usize,
    /// Bytes taken from upstream.
    pub reserved_bytes: usize,
    /// Reserved bytes not held by the program (free blocks kept for reuse).
    pub cached_bytes: usize,
    /// The largest block that could be served from cached memory without growing.
    pub largest_free_block: usize,
    /// The limit on resident bytes, if one is set.
    pub limit: Option<usize>,
    /// Bytes the manager has given back to the system so far (0 from a strategy on
    /// its own), and how long ago it last did, if it ever did.
    pub released_bytes: u64,
    /// See [`released_bytes`](Self::released_bytes).
    pub last_release: Option<std::time::Duration>,
}

impl OutOfMemory {
    /// The report of a strategy that could not serve `requested` bytes at `align`,
    /// from its own counters. The manager widens it to its own totals.
    pub(crate) fn new(
        requested: usize,
        align: usize,
        tier: Tier,
        cause: OomCause,
        usage: &Usage,
        largest_free_block: usize,
    ) -> Self {
        OutOfMemory {
            requested,
            align,
            tier,
            cause,
            allocated_bytes: usage.allocated_bytes,
            reserved_bytes: usage.reserved_bytes,
            cached_bytes: usage.cached_bytes(),
            largest_free_block,
            limit: None,
            released_bytes: 0,
            last_release: None,
        }
    }

    /// The report of a strategy whose upstream refused the region it needed.
    pub(crate) fn from_upstream(
        requested: usize,
        align: usize,
        tier: Tier,
        refusal: UpstreamError,
        usage: &Usage,
        largest_free_block: usize,
    ) -> Self {
        let (cause, limit) = match refusal {
            UpstreamError::OutOfMemory { .. } => (OomCause::UpstreamFailed, None),
            UpstreamError::LimitReached { limit, .. } => (OomCause::LimitReached, Some(limit)),
        };
        OutOfMemory {
            limit,
            ..Self::new(requested, align, tier, cause, usage, largest_free_block)
        }
    }

    /// An error for `self`.
    pub fn into_error(self) -> Error {
        Error::OutOfMemory(Box::new(self))
    }
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of memory: tried to allocate {} (align {}) in the {} tier",
            format_bytes(self.requested),
            self.align,
            self.tier
        )?;
        match self.cause {
            OomCause::LimitReached => write!(
                f,
                "; the memory limit of {} would be exceeded",
                format_bytes(self.limit.unwrap_or(0))
            )?,
            OomCause::UpstreamFailed => {
                f.write_str("; the upstream memory source refused more memory")?
            }
            OomCause::CapacityReached { capacity } => {
                write!(f, "; it is full (fixed capacity {capacity})")?
            }
        }
        // A full pool or arena could not use what it holds free for this request
        // (the rest of a pool's pages, an arena's gaps): "cached" would promise reuse.
        let free = match self.cause {
            OomCause::CapacityReached { .. } => "free but cannot hold this request",
            _ => "cached and free",
        };
        write!(
            f,
            ". {} allocated by the program, {} reserved in total, of which {} is {free}; \
             the largest free block is {}",
            format_bytes(self.allocated_bytes),
            format_bytes(self.reserved_bytes),
            format_bytes(self.cached_bytes),
            format_bytes(self.largest_free_block),
        )?;
        // A full pool or arena with a free block large enough: the alignment is why.
        // (For the manager's tiers, the largest free block is any tier's, maybe one
        // that does not serve this size.)
        if matches!(self.cause, OomCause::CapacityReached { .. })
            && self.largest_free_block >= self.requested
        {
            write!(f, ", which does not hold it at alignment {}", self.align)?;
        }
        match self.limit {
            Some(limit) if self.cause != OomCause::LimitReached => {
                write!(f, "; the limit is {}", format_bytes(limit))?
            }
            _ => {}
        }
        if self.released_bytes > 0 {
            write!(
                f,
                "; {} was given back to the system so far",
                format_bytes(self.released_bytes as usize)
            )?;
            if let Some(ago) = self.last_release {
                write!(f, ", last {:.1} s ago", ago.as_secs_f64())?;
            }
        }
        f.write_str(". ")?;
        match self.cause {
            OomCause::CapacityReached { .. } => f.write_str(
                "Free blocks you no longer need, or give the pool or arena a larger capacity.",
            ),
            _ if self.cached_bytes >= self.requested => f.write_str(
                "Cached memory is larger than the request but fragmented: free blocks you no \
                 longer need, call trim(), or set max_split_size to limit splitting of large \
                 blocks; otherwise raise the limit.",
            ),
            OomCause::LimitReached => f.write_str(
                "Free tensors you no longer need, call trim() to return cached memory, or raise \
                 the limit (Config::memory_limit).",
            ),
            // No limit of tensorpool's was reached (advice to raise it misled): the
            // system refused.
            OomCause::UpstreamFailed => f.write_str(
                "Free tensors you no longer need, or call trim() to return cached memory; the \
                 system refused more (its memory, or a limit on the process's address space: \
                 ulimit -v).",
            ),
        }
    }
}

/// Why an upstream source refused a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The source itself has no memory left (the OS refused the mapping).
    OutOfMemory {
        /// Bytes asked for.
        size: usize,
    },
    /// Handing out the region would exceed a limit on reserved bytes.
    LimitReached {
        /// Bytes asked for.
        size: usize,
        /// Bytes reserved before the request.
        reserved: usize,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UpstreamError::OutOfMemory { size } => {
                write!(
                    f,
                    "the upstream source could not provide {}",
                    format_bytes(size)
                )
            }
            UpstreamError::LimitReached {
                size,
                reserved,
                limit,
            } => write!(
                f,
                "{} more would exceed the limit of {} ({} reserved)",
                format_bytes(size),
                format_bytes(limit),
                format_bytes(reserved)
            ),
        }
    }
}

/// Where in a trace file a problem is.
#[cfg(feature = "trace")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A 1-based line of a text file.
    Line(usize),
    /// The index of an event in a JSON trace's `traceEvents`.
    Event(usize),
    /// The file as a whole (an empty file, a damaged gzip stream).
    File,
}

#[cfg(feature = "trace")]
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Event(n) => write!(f, "event {n}"),
            Location::File => f.write_str("the file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cause: OomCause, cached: usize) -> OutOfMemory {
        OutOfMemory {
            requested: 3 << 20,
            align: 64,
            tier: Tier::Large,
            cause,
            allocated_bytes: 10 << 20,
            reserved_bytes: 16 << 20,
            cached_bytes: cached,
            largest_free_block: 1 << 20,
            limit: Some(16 << 20),
            released_bytes: 32 << 20,
            last_release: Some(std::time::Duration::from_millis(2500)),
        }
    }

    #[test]
    fn oom_message_names_every_figure() {
        let text = report(OomCause::LimitReached, 6 << 20)
            .into_error()
            .to_string();
        for needle in [
            "tried to allocate 3.00 MiB",
            "align 64",
            "in the large (best fit) tier",
            "limit of 16.00 MiB",
            "10.00 MiB allocated",
            "16.00 MiB reserved",
            "6.00 MiB is cached",
            "largest free block is 1.00 MiB",
            "fragmented",
            "32.00 MiB was given back to the system so far, last 2.5 s ago",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from: {text}");
        }
        let text = report(OomCause::UpstreamFailed, 0).into_error().to_string();
        assert!(text.contains("refused"), "{text}");
        assert!(text.contains("call trim()"), "{text}");
        // No limit of tensorpool's was reached: no advice to raise it (a user hunt
        // under `ulimit -v` was told to raise Config::memory_limit).
        assert!(
            !text.contains("memory_limit") && text.contains("ulimit -v"),
            "{text}"
        );
        let text = report(OomCause::LimitReached, 0).into_error().to_string();
        assert!(
            text.contains("raise the limit (Config::memory_limit)"),
            "{text}"
        );
        let text = report(OomCause::CapacityReached { capacity: 8 }, 0)
            .into_error()
            .to_string();
        assert!(text.contains("fixed capacity 8"), "{text}");
        // What a full pool or arena holds free could not serve the request: not
        // "cached", which promises reuse.
        assert!(
            text.contains("0 B is free but cannot hold this request") && !text.contains("cached"),
            "{text}"
        );
        let mut aligned = report(OomCause::CapacityReached { capacity: 8 }, 4 << 20);
        aligned.largest_free_block = 4 << 20;
        aligned.align = 8192;
        let text = aligned.into_error().to_string();
        assert!(
            text.contains(
                "largest free block is 4.00 MiB, which does not hold it at alignment 8192"
            ),
            "the alignment is the cause: {text}"
        );
        assert!(!report(OomCause::LimitReached, 0)
            .into_error()
            .to_string()
            .contains("alignment"));
    }

    #[test]
    fn pointer_errors_explain_themselves() {
        let e = Error::InvalidPointer {
            addr: 0x1040,
            reason: PointerError::Interior {
                block: 0x1000,
                offset: 64,
            },
        };
        let text = e.to_string();
        assert!(
            text.contains("0x1040") && text.contains("64 bytes inside") && text.contains("0x1000")
        );
        assert!(text.starts_with("invalid pointer 0x1040") && text.contains("nothing was changed"));
        for reason in [
            PointerError::Foreign,
            PointerError::NotLive,
            PointerError::NotRaw,
        ] {
            assert!(!reason.to_string().is_empty());
        }
    }
}
