//! The limits every request is checked against, in one place.
//!
//! A request is a size and an alignment. Sizes must be at least one byte and at most
//! [`MAX_ALLOCATION_SIZE`]; alignments must be powers of two no larger than
//! [`MAX_ALIGN`] (a page). Every strategy calls [`validate`] first, so each one rejects
//! the same bad input with the same error. (Two go further where C and Rust need it:
//! an [`Arena`](crate::Arena) honours any power of two, its chunk taking the slack,
//! and the process allocators hand larger alignments to the system allocator.)
//!
//! ```
//! use tensorpool::{limits, Error};
//!
//! assert!(limits::validate(64, 64).is_ok());
//! assert_eq!(limits::validate(0, 64), Err(Error::ZeroSize));
//! assert_eq!(limits::validate(64, 48), Err(Error::InvalidAlignment { align: 48 }));
//! assert!(matches!(limits::validate(64, 1 << 20), Err(Error::AlignmentTooLarge { .. })));
//! assert!(matches!(limits::validate(usize::MAX, 64), Err(Error::SizeTooLarge { .. })));
//! ```

use crate::error::{Error, Result};

/// The largest block tensorpool serves: 128 TiB, the user address space of x86-64 and
/// AArch64 with 4-level page tables. Anything larger cannot be mapped anyway, and the
/// bound keeps every rounding computation far from overflow.
pub const MAX_ALLOCATION_SIZE: usize = 1 << 47;

/// The largest alignment honoured: one 4 KiB page. Chunks and segments start on page
/// boundaries (large segments on 2 MiB ones), so any power of two up to this is free.
pub const MAX_ALIGN: usize = 4096;

/// Checks a request's size and alignment.
pub fn validate(size: usize, align: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    if !align.is_power_of_two() {
        return Err(Error::InvalidAlignment { align });
    }
    if align > MAX_ALIGN {
        return Err(Error::AlignmentTooLarge {
            align,
            max: MAX_ALIGN,
        });
    }
    if size > MAX_ALLOCATION_SIZE {
        return Err(Error::SizeTooLarge {
            size,
            max: MAX_ALLOCATION_SIZE,
        });
    }
    Ok(())
}

/// Rounds `value` up to a multiple of `align`, a power of two. Callers keep `value`
/// at most [`MAX_ALLOCATION_SIZE`] plus a few megabytes, far from overflow.
#[inline]
pub const fn round_up(value: usize, align: usize) -> usize {
    (value + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_up_is_exact_on_multiples() {
        assert_eq!(round_up(0, 64), 0);
        assert_eq!(round_up(1, 64), 64);
        assert_eq!(round_up(64, 64), 64);
        assert_eq!(round_up(65, 64), 128);
        assert_eq!(
            round_up(MAX_ALLOCATION_SIZE - 1, 2 << 20),
            MAX_ALLOCATION_SIZE
        );
    }

    #[test]
    fn limits_are_inclusive() {
        assert!(validate(MAX_ALLOCATION_SIZE, MAX_ALIGN).is_ok());
        assert!(validate(MAX_ALLOCATION_SIZE + 1, 1).is_err());
        assert!(validate(1, 1).is_ok());
        assert_eq!(validate(1, 0), Err(Error::InvalidAlignment { align: 0 }));
    }
}
