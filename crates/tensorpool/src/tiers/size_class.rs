//! Size classes: the geometric table that small requests are rounded to.
//!
//! Between two powers of two there are `per_doubling` classes, evenly spaced, so a
//! request above the minimum size is rounded up by less than `1 / per_doubling` of
//! itself: at most 12.5% with the default of 8. The classes start at `min_size`
//! (64 B) and end at `max_size`, the threshold above which requests go to the
//! best-fit tier.
//!
//! A class's slots are packed back to back in page-aligned chunks, so a slot is
//! aligned to the largest power of two that divides the class size. A request with
//! a larger alignment is rounded to a multiple of that alignment first, which always
//! lands on a class that honours it (see [`SizeClasses::class_for`]).
//!
//! ```
//! use tensorpool::size_class::SizeClasses;
//!
//! let classes = SizeClasses::new(64, 1 << 20, 8)?;
//! let c = classes.class_for(100, 8).unwrap();
//! assert_eq!(classes.size_of(c), 104); // 96 < 100 <= 104
//! let c = classes.class_for(100, 64).unwrap();
//! assert_eq!(classes.size_of(c), 128); // rounded to a multiple of 64 first
//! assert!(classes.class_for((1 << 20) + 1, 64).is_none()); // beyond the threshold
//! println!("{}", classes.table());
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::limits::{round_up, MAX_ALIGN};
use crate::util::bytes::format_bytes;
use std::fmt;

/// Index of a size class in its table.
pub type ClassIndex = usize;

/// A geometric table of size classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeClasses {
    min_shift: u32,
    max_shift: u32,
    per_shift: u32,
}

impl SizeClasses {
    /// A table from `min_size` to `max_size` with `per_doubling` classes between two
    /// powers of two.
    ///
    /// All three must be powers of two, with `min_size < max_size` and a spacing in
    /// the first doubling (`min_size / per_doubling`) of at least 8 bytes, so that
    /// every slot is at least 8-byte aligned.
    pub fn new(min_size: usize, max_size: usize, per_doubling: usize) -> Result<Self> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if !min_size.is_power_of_two() || min_size < 8 {
            return bad(format!(
                "the smallest size class must be a power of two of at least 8 bytes, got {min_size}"
            ));
        }
        if !max_size.is_power_of_two() || max_size <= min_size {
            return bad(format!(
                "the small/large threshold must be a power of two above the smallest class \
                 ({min_size}), got {max_size}"
            ));
        }
        // Pool blocks record their requested size in 32 bits.
        if max_size > 1 << 31 {
            return bad(format!(
                "the small/large threshold must be at most 2 GiB, got {}",
                format_bytes(max_size)
            ));
        }
        if !per_doubling.is_power_of_two() || min_size / per_doubling < 8 {
            return bad(format!(
                "classes per doubling must be a power of two with a spacing of at least 8 bytes \
                 in the first doubling (at most {} for a smallest class of {min_size}), got {per_doubling}",
                min_size / 8
            ));
        }
        Ok(SizeClasses {
            min_shift: min_size.trailing_zeros(),
            max_shift: max_size.trailing_zeros(),
            per_shift: per_doubling.trailing_zeros(),
        })
    }

    /// The smallest class size.
    pub fn min_size(&self) -> usize {
        1 << self.min_shift
    }

    /// The largest class size: requests above it are not served by size classes.
    pub fn max_size(&self) -> usize {
        1 << self.max_shift
    }

    /// Classes between two powers of two.
    pub fn per_doubling(&self) -> usize {
        1 << self.per_shift
    }

    /// Number of classes in the table.
    pub fn len(&self) -> usize {
        1 + ((self.max_shift - self.min_shift) << self.per_shift) as usize
    }

    /// Always false: a table has at least two classes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The class that serves `size` bytes at `align`, or `None` above the threshold.
    ///
    /// The size is first rounded up to a multiple of `align` (a power of two, at most
    /// [`MAX_ALIGN`]). That lands on a class aligned to `align`: either the class
    /// spacing `s` in the size's doubling is at least `align` (then every class size
    /// there is a multiple of `s`, hence of `align`), or it is smaller, and then the
    /// rounded size, a multiple of `align` and so of `s`, is itself a class size.
    #[inline]
    pub fn class_for(&self, size: usize, align: usize) -> Option<ClassIndex> {
        debug_assert!(align.is_power_of_two() && align <= MAX_ALIGN);
        let size = round_up(size, align);
        if size > self.max_size() {
            return None;
        }
        Some(self.index_of(size))
    }

    #[inline]
    fn index_of(&self, size: usize) -> ClassIndex {
        if size <= self.min_size() {
            return 0;
        }
        // 2^k < size <= 2^(k+1)
        let k = usize::BITS - 1 - (size - 1).leading_zeros();
        let step_shift = k - self.per_shift;
        let j = (size - (1 << k)).div_ceil(1 << step_shift); // 1..=per_doubling
        1 + (((k - self.min_shift) as usize) << self.per_shift) + (j - 1)
    }

    /// The block size of class `class`.
    #[inline]
    pub fn size_of(&self, class: ClassIndex) -> usize {
        if class == 0 {
            return self.min_size();
        }
        let group = (class - 1) >> self.per_shift;
        let j = ((class - 1) & ((1 << self.per_shift) - 1)) + 1;
        let k = self.min_shift as usize + group;
        (1 << k) + (j << (k - self.per_shift as usize))
    }

    /// The alignment every block of `class` has: the largest power of two dividing
    /// its size, capped at a page.
    #[inline]
    pub fn align_of(&self, class: ClassIndex) -> usize {
        let size = self.size_of(class);
        (1usize << size.trailing_zeros()).min(MAX_ALIGN)
    }

    /// The worst rounding waste of `class` for a request aligned to at most the
    /// class spacing, as a fraction of the request (0 for the smallest class, whose
    /// waste is its minimum size rather than a ratio).
    pub fn max_waste(&self, class: ClassIndex) -> f64 {
        if class == 0 {
            return 0.0;
        }
        let smallest_request = self.size_of(class - 1) + 1;
        (self.size_of(class) - smallest_request) as f64 / smallest_request as f64
    }

    /// The table, printable for people (`println!("{}", classes.table())`).
    pub fn table(&self) -> SizeClassTable<'_> {
        SizeClassTable(self)
    }
}

/// Display adaptor printing a [`SizeClasses`] table.
pub struct SizeClassTable<'a>(&'a SizeClasses);

impl fmt::Display for SizeClassTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        writeln!(
            f,
            "{} size classes, {} per doubling, {} to {}",
            t.len(),
            t.per_doubling(),
            format_bytes(t.min_size()),
            format_bytes(t.max_size())
        )?;
        writeln!(
            f,
            "{:>5}  {:>12}  {:>10}  {:>9}  {:>10}",
            "class", "block size", "bytes", "alignment", "max waste"
        )?;
        for class in 0..t.len() {
            writeln!(
                f,
                "{:>5}  {:>12}  {:>10}  {:>9}  {:>9.1}%",
                class,
                format_bytes(t.size_of(class)),
                t.size_of(class),
                t.align_of(class),
                100.0 * t.max_waste(class)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_shape() {
        let t = SizeClasses::new(64, 1 << 20, 8).unwrap();
        assert_eq!(t.len(), 1 + 14 * 8);
        assert_eq!(t.size_of(0), 64);
        assert_eq!(t.size_of(1), 72);
        assert_eq!(t.size_of(8), 128);
        assert_eq!(t.size_of(9), 144);
        assert_eq!(t.size_of(t.len() - 1), 1 << 20);
        for c in 1..t.len() {
            assert!(t.size_of(c) > t.size_of(c - 1));
            assert_eq!(t.index_of(t.size_of(c)), c);
            assert_eq!(t.index_of(t.size_of(c - 1) + 1), c);
            assert!(
                t.max_waste(c) <= 0.125,
                "class {c} wastes {}",
                t.max_waste(c)
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive arithmetic, no unsafe code")]
    fn every_request_lands_on_a_fitting_aligned_class() {
        let t = SizeClasses::new(64, 1 << 16, 8).unwrap();
        for align_shift in 0..=12 {
            let align = 1 << align_shift;
            for size in 1..=(1 << 16) {
                match t.class_for(size, align) {
                    Some(c) => {
                        assert!(t.size_of(c) >= size);
                        assert!(
                            t.align_of(c) >= align,
                            "size {size} align {align} -> {}",
                            t.size_of(c)
                        );
                        if c > 0 {
                            // the class below would not do: too small or misaligned
                            let below = t.size_of(c - 1);
                            assert!(below < size || t.align_of(c - 1) < align);
                        }
                    }
                    None => assert!(round_up(size, align) > 1 << 16),
                }
            }
        }
    }

    #[test]
    fn invalid_tables_are_refused() {
        for (min, max, per) in [
            (48, 1024, 4),
            (64, 64, 8),
            (64, 1000, 8),
            (64, 1024, 16),
            (64, 1024, 3),
            (4, 1024, 1),
        ] {
            let e = SizeClasses::new(min, max, per).unwrap_err();
            assert!(
                matches!(e, Error::InvalidConfig(_)),
                "{min} {max} {per}: {e}"
            );
        }
        assert!(SizeClasses::new(64, 1 << 32, 8).is_err());
        assert!(SizeClasses::new(64, 1 << 31, 8).is_ok());
    }

    #[test]
    fn table_prints_every_class() {
        let t = SizeClasses::new(64, 1024, 4).unwrap();
        let text = t.table().to_string();
        assert_eq!(text.lines().count(), 2 + t.len());
        assert!(text.contains("1.00 KiB"));
        assert!(text.contains("25.0%") || text.contains("23."));
    }
}
