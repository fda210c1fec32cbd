//! A map from address ranges to what owns them.
//!
//! Strategies keep their metadata outside the memory they manage, so to free a bare
//! pointer they must find the chunk or segment that contains it without reading the
//! memory. An [`AddressMap`] holds non-overlapping ranges and answers "which range
//! contains this address" in O(log ranges). Ranges are chunks and segments, a few
//! hundred at most, never individual blocks.
//!
//! ```
//! use tensorpool::address_map::AddressMap;
//!
//! let mut map = AddressMap::new();
//! map.insert(0x1000, 0x1000, "chunk A");
//! map.insert(0x4000, 0x2000, "segment B");
//! assert_eq!(map.find(0x1fff), Some((0x1000, 0x1000, &"chunk A")));
//! assert_eq!(map.find(0x5000).map(|(_, _, v)| *v), Some("segment B"));
//! assert_eq!(map.find(0x2000), None); // the gap between them
//! assert_eq!(map.remove(0x1000), Some((0x1000, "chunk A")));
//! assert_eq!(map.find(0x1000), None);
//! ```

use std::collections::BTreeMap;

/// Non-overlapping address ranges, each with a value.
#[derive(Debug, Clone)]
pub struct AddressMap<V> {
    ranges: BTreeMap<usize, (usize, V)>,
}

impl<V> Default for AddressMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> AddressMap<V> {
    /// An empty map.
    pub const fn new() -> Self {
        AddressMap {
            ranges: BTreeMap::new(),
        }
    }

    /// Adds `[start, start + len)`. The range must not overlap one already present
    /// (ranges come from an upstream that never hands out the same memory twice);
    /// this is checked in debug builds.
    pub fn insert(&mut self, start: usize, len: usize, value: V) {
        debug_assert!(len > 0);
        debug_assert!(
            self.overlapping(start, len).is_none(),
            "range {start:#x}+{len:#x} overlaps an existing range"
        );
        self.ranges.insert(start, (len, value));
    }

    /// A range that overlaps `[start, start + len)` (`len` > 0), if any: its start,
    /// its length and its value (the one below `start` first).
    pub fn overlapping(&self, start: usize, len: usize) -> Option<(usize, usize, &V)> {
        let below = self.find(start);
        below.or_else(|| {
            let (&next, (next_len, value)) = self.ranges.range(start..).next()?;
            (next - start < len).then_some((next, *next_len, value))
        })
    }

    /// Removes the range that starts at `start`, returning its length and value.
    pub fn remove(&mut self, start: usize) -> Option<(usize, V)> {
        self.ranges.remove(&start)
    }

    /// The range containing `addr`: its start, its length and its value.
    #[inline]
    pub fn find(&self, addr: usize) -> Option<(usize, usize, &V)> {
        let (&start, (len, value)) = self.ranges.range(..=addr).next_back()?;
        (addr - start < *len).then_some((start, *len, value))
    }

    /// The value of the range that starts exactly at `start`.
    pub fn find_mut(&mut self, start: usize) -> Option<&mut V> {
        self.ranges.get_mut(&start).map(|(_, v)| v)
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges in address order: start, length, value.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize, &V)> {
        self.ranges.iter().map(|(&s, (l, v))| (s, *l, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_found_on_either_side() {
        let mut m = AddressMap::new();
        m.insert(100, 50, 'a'); // [100, 150)
        m.insert(200, 50, 'b'); // [200, 250)
        assert_eq!(m.overlapping(150, 50), None); // the gap, exactly
        assert_eq!(m.overlapping(149, 1), Some((100, 50, &'a')));
        assert_eq!(m.overlapping(120, 100), Some((100, 50, &'a'))); // both: below first
        assert_eq!(m.overlapping(160, 41), Some((200, 50, &'b')));
        assert_eq!(m.overlapping(0, 100), None);
        assert_eq!(m.overlapping(0, 101), Some((100, 50, &'a')));
        assert_eq!(m.overlapping(250, 10), None);
    }

    #[test]
    fn boundaries_are_half_open() {
        let mut m = AddressMap::new();
        m.insert(100, 10, 1);
        m.insert(110, 5, 2);
        assert_eq!(m.find(99), None);
        assert_eq!(m.find(100).map(|r| *r.2), Some(1));
        assert_eq!(m.find(109).map(|r| *r.2), Some(1));
        assert_eq!(m.find(110).map(|r| *r.2), Some(2));
        assert_eq!(m.find(115), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.iter().map(|r| r.0).collect::<Vec<_>>(), vec![100, 110]);
        assert_eq!(m.remove(105), None);
        assert_eq!(m.remove(100), Some((10, 1)));
        assert!(!m.is_empty());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "overlaps")]
    fn overlapping_ranges_are_a_bug() {
        let mut m = AddressMap::new();
        m.insert(100, 10, ());
        m.insert(105, 10, ());
    }
}
