//! A growable set of small integers as bits, with range operations: which pages of a
//! segment were released to the system.
//!
//! ```text
//! let mut b = Bits::default();
//! assert_eq!(b.set_range(2, 6), 4);   // newly set
//! assert_eq!(b.set_range(4, 8), 2);
//! assert_eq!(b.count(0, 10), 6);
//! assert_eq!(b.clear_range(0, 5), 3);
//! assert_eq!(b.runs_clear(0, 10).collect::<Vec<_>>(), vec![(0, 5), (8, 10)]);
//! ```

/// A set of integers, one bit each, growing as needed (all clear beyond its words).
#[derive(Debug, Default, Clone)]
pub(crate) struct Bits {
    words: Vec<u64>,
}

/// The bits of `[start, end)` that fall in word `w`, as a mask.
fn mask(w: usize, start: usize, end: usize) -> u64 {
    let lo = start.max(w * 64) - w * 64;
    let hi = end.min(w * 64 + 64) - w * 64;
    if hi <= lo {
        return 0;
    }
    let ones = if hi - lo == 64 {
        u64::MAX
    } else {
        (1u64 << (hi - lo)) - 1
    };
    ones << lo
}

impl Bits {
    fn words_of(start: usize, end: usize) -> std::ops::Range<usize> {
        if end <= start {
            return 0..0;
        }
        start / 64..end.div_ceil(64)
    }

    /// Sets `[start, end)`; returns how many were clear.
    pub(crate) fn set_range(&mut self, start: usize, end: usize) -> usize {
        let words = Self::words_of(start, end);
        if self.words.len() < words.end {
            self.words.resize(words.end, 0);
        }
        let mut newly = 0;
        for w in words {
            let m = mask(w, start, end);
            newly += (m & !self.words[w]).count_ones() as usize;
            self.words[w] |= m;
        }
        newly
    }

    /// Clears `[start, end)`; returns how many were set.
    pub(crate) fn clear_range(&mut self, start: usize, end: usize) -> usize {
        let words = Self::words_of(start, end);
        let mut cleared = 0;
        for w in words.start..words.end.min(self.words.len()) {
            let m = mask(w, start, end);
            cleared += (m & self.words[w]).count_ones() as usize;
            self.words[w] &= !m;
        }
        cleared
    }

    /// How many of `[start, end)` are set.
    pub(crate) fn count(&self, start: usize, end: usize) -> usize {
        let words = Self::words_of(start, end);
        (words.start..words.end.min(self.words.len()))
            .map(|w| (mask(w, start, end) & self.words[w]).count_ones() as usize)
            .sum()
    }

    /// The maximal runs of clear integers in `[start, end)`, as `(first, end)`.
    pub(crate) fn runs_clear(
        &self,
        start: usize,
        end: usize,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut at = start;
        std::iter::from_fn(move || {
            while at < end && self.is_set(at) {
                at += 1;
            }
            if at >= end {
                return None;
            }
            let first = at;
            while at < end && !self.is_set(at) {
                at += 1;
            }
            Some((first, at))
        })
    }

    fn is_set(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 != 0)
    }

    /// Forgets everything from `from` on (all clear).
    pub(crate) fn truncate(&mut self, from: usize) {
        self.clear_range(from, self.words.len() * 64);
        self.words.truncate(from.div_ceil(64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_set_clear_and_count_against_a_model() {
        let mut bits = Bits::default();
        let mut model = vec![false; 300];
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let a = (rng % 300) as usize;
            let b = ((rng >> 20) % 300) as usize;
            let (start, end) = (a.min(b), a.max(b));
            match rng >> 60 {
                0..=5 => {
                    let newly = model[start..end].iter().filter(|&&x| !x).count();
                    assert_eq!(bits.set_range(start, end), newly);
                    model[start..end].fill(true);
                }
                6..=11 => {
                    let set = model[start..end].iter().filter(|&&x| x).count();
                    assert_eq!(bits.clear_range(start, end), set);
                    model[start..end].fill(false);
                }
                _ => {
                    bits.truncate(start);
                    model[start..].fill(false);
                }
            }
            let set = model[start..end].iter().filter(|&&x| x).count();
            assert_eq!(bits.count(start, end), set);
            let runs: Vec<(usize, usize)> = bits.runs_clear(start, end).collect();
            let mut expected = Vec::new();
            let mut i = start;
            while i < end {
                if model[i] {
                    i += 1;
                    continue;
                }
                let first = i;
                while i < end && !model[i] {
                    i += 1;
                }
                expected.push((first, i));
            }
            assert_eq!(runs, expected);
        }
    }
}
