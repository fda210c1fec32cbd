//! Size classes: the geometric table that small requests are rounded to.
//!
//! Between two powers of two there are `per_doubling` classes, evenly spaced, so a
//! request above the minimum size is rounded up by less than `1 / per_doubling` of
//! itself: at most 12.5% with the default of 8. The classes start at `min_size`
//! (64 B) and end at `max_size`, the threshold above which requests go to the
//! best-fit tier.
//!
//! Classes are never closer than [`MIN_SPACING`] (8 bytes), so that every slot is
//! 8-byte aligned: below `8 * per_doubling` the table is linear, one class every 8
//! bytes from `min_size`, and geometric from there (jemalloc's and mimalloc's shape).
//! The C front's table, 16 B to 32 KiB with 8 per doubling, is 16, 24, .., 64, then
//! 72, 80, .., 128, 144, ..: a 16-aligned `malloc` lands on 16, 32, 48, 64, 80, ..
//! (the 8-aligned classes between stay unused, and cost nothing until used).
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

/// The least distance between two classes, and so the least alignment of a slot.
pub const MIN_SPACING: usize = 8;

/// A table of size classes: linear by [`MIN_SPACING`] up to `8 * per_doubling`,
/// geometric from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeClasses {
    min_shift: u32,
    max_shift: u32,
    per_shift: u32,
    /// Where the geometric part starts: `max(min_size, MIN_SPACING * per_doubling)`.
    geo_shift: u32,
    /// Classes of the linear part after the smallest (`min_size + MIN_SPACING` up to
    /// `1 << geo_shift`); 0 when the table is geometric from `min_size`.
    linear: usize,
}

impl SizeClasses {
    /// A table from `min_size` to `max_size` with `per_doubling` classes between two
    /// powers of two.
    ///
    /// All three must be powers of two, with `8 <= min_size < max_size` and
    /// `per_doubling <= 64`.
    pub fn new(min_size: usize, max_size: usize, per_doubling: usize) -> Result<Self> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if !min_size.is_power_of_two() || min_size < 8 {
            return bad(format!(
                "min_block_size (the smallest size class) must be a power of two of at least 8 \
                 bytes, got {min_size}"
            ));
        }
        if !max_size.is_power_of_two() || max_size <= min_size {
            return bad(format!(
                "small_threshold (the small/large threshold) must be a power of two above \
                 min_block_size ({min_size}), got {max_size}"
            ));
        }
        // Pool blocks record their requested size in 32 bits.
        if max_size > 1 << 31 {
            return bad(format!(
                "small_threshold (the small/large threshold) must be at most 2 GiB, got {}",
                format_bytes(max_size)
            ));
        }
        if !per_doubling.is_power_of_two() || per_doubling > 64 {
            return bad(format!(
                "classes_per_doubling must be a power of two up to 64, got {per_doubling}"
            ));
        }
        let geo = min_size.max(MIN_SPACING * per_doubling);
        if geo >= max_size {
            return bad(format!(
                "small_threshold ({max_size}) must be above {geo}: with classes_per_doubling \
                 = {per_doubling}, the classes below it are {MIN_SPACING} bytes apart"
            ));
        }
        Ok(SizeClasses {
            min_shift: min_size.trailing_zeros(),
            max_shift: max_size.trailing_zeros(),
            per_shift: per_doubling.trailing_zeros(),
            geo_shift: geo.trailing_zeros(),
            linear: (geo - min_size) / MIN_SPACING,
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
        1 + self.linear + ((self.max_shift - self.geo_shift) << self.per_shift) as usize
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
        if size <= 1 << self.geo_shift {
            return (size - self.min_size()).div_ceil(MIN_SPACING);
        }
        // 2^k < size <= 2^(k+1)
        let k = usize::BITS - 1 - (size - 1).leading_zeros();
        let step_shift = k - self.per_shift;
        let j = (size - (1 << k)).div_ceil(1 << step_shift); // 1..=per_doubling
        1 + self.linear + (((k - self.geo_shift) as usize) << self.per_shift) + (j - 1)
    }

    /// The block size of class `class`.
    #[inline]
    pub fn size_of(&self, class: ClassIndex) -> usize {
        if class <= self.linear {
            return self.min_size() + class * MIN_SPACING;
        }
        let class = class - self.linear;
        let group = (class - 1) >> self.per_shift;
        let j = ((class - 1) & ((1 << self.per_shift) - 1)) + 1;
        let k = self.geo_shift as usize + group;
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
    fn linear_then_geometric_tables() {
        // The C front's: 8 bytes apart up to 64, then 8 per doubling.
        let t = SizeClasses::new(16, 1 << 15, 8).unwrap();
        let sizes: Vec<usize> = (0..12).map(|c| t.size_of(c)).collect();
        assert_eq!(sizes, [16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104]);
        assert_eq!(t.size_of(t.len() - 1), 1 << 15);
        assert_eq!(t.len(), 1 + 6 + 9 * 8);
        let c16 = |size| t.size_of(t.class_for(size, 16).unwrap());
        assert_eq!(
            [1, 16, 17, 33, 49, 65, 129, 257].map(c16),
            [16, 16, 32, 48, 64, 80, 144, 288]
        );
        // 16 per doubling from 64 B: linear up to 128.
        let t = SizeClasses::new(64, 1 << 12, 16).unwrap();
        assert_eq!(t.size_of(1), 72);
        assert_eq!(t.index_of(128), 8);
        assert_eq!(t.size_of(9), 136);
        for (min, per) in [
            (8, 1),
            (8, 8),
            (16, 4),
            (16, 8),
            (32, 16),
            (64, 8),
            (128, 2),
        ] {
            let t = SizeClasses::new(min, 1 << 14, per).unwrap();
            assert_eq!(t.size_of(0), min);
            assert_eq!(t.size_of(t.len() - 1), 1 << 14);
            for c in 1..t.len() {
                let (below, size) = (t.size_of(c - 1), t.size_of(c));
                assert!(
                    size > below && size - below >= MIN_SPACING,
                    "{min}/{per}: {c}"
                );
                assert_eq!(t.index_of(size), c);
                assert_eq!(t.index_of(below + 1), c);
                assert!(
                    size - below <= (below / per).max(MIN_SPACING),
                    "{min}/{per}: {c}"
                );
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "exhaustive arithmetic, no unsafe code")]
    fn every_request_lands_on_a_fitting_aligned_class() {
        for (min, per) in [(64, 8), (16, 8), (8, 4)] {
            every_request_fits(&SizeClasses::new(min, 1 << 16, per).unwrap());
        }
    }

    fn every_request_fits(t: &SizeClasses) {
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
            (64, 1024, 3),
            (4, 1024, 1),
            (64, 1024, 128),
            (16, 128, 16),
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
