//! When each stretch of a segment was last in use, counted in release passes: the
//! release policy gives back only memory that enough passes have seen unused.
//!
//! A segment is cut in granules (64 KiB by default). Freeing a block *marks* the
//! granules it touches with the pass count of the moment; a granule's age is the
//! passes run since its latest mark. The granule, not the free block, carries the age:
//! a block freed now that merges with a range free for a minute makes one free block,
//! but only its own granules are young, so the old range still goes back while a
//! program keeps reusing the young part (a spike's memory under a steady loop).
//!
//! ```text
//! let mut s = Stamps::new(4096);
//! s.mark(0, 10_000, 5);                      // granules 0..3 freed at pass 5
//! s.mark(8192, 9000, 7);                     // granule 2 again at pass 7
//! assert!(s.all_due(0, 8192, 8, 3));         // seen unused by 3 passes
//! assert!(!s.all_due(0, 10_000, 8, 3));
//! assert_eq!(s.due_runs(0, 10_000, 8, 3).collect::<Vec<_>>(), vec![(0, 8192)]);
//! assert_eq!(s.due_from(0, 12_288, 8, 3), 12_288);  // the top granule is young
//! ```

/// The last pass that saw each granule of a segment in use (0 beyond those marked).
#[derive(Debug, Clone)]
pub(crate) struct Stamps {
    shift: u32,
    marks: Vec<u32>,
}

impl Stamps {
    /// Stamps for granules of `granule` bytes, a power of two.
    pub(crate) fn new(granule: usize) -> Self {
        debug_assert!(granule.is_power_of_two());
        Stamps {
            shift: granule.trailing_zeros(),
            marks: Vec::new(),
        }
    }

    /// The granules that bytes `[lo, hi)` touch.
    fn granules(&self, lo: usize, hi: usize) -> std::ops::Range<usize> {
        if hi <= lo {
            return 0..0;
        }
        lo >> self.shift..((hi - 1) >> self.shift) + 1
    }

    fn mark_of(&self, g: usize) -> u32 {
        self.marks.get(g).copied().unwrap_or(0)
    }

    fn due(&self, g: usize, now: u32, min_age: u32) -> bool {
        now.saturating_sub(self.mark_of(g)) >= min_age
    }

    /// Bytes `[lo, hi)` were in use until pass `pass`: the granules they touch keep
    /// the later of their mark and `pass`.
    pub(crate) fn mark(&mut self, lo: usize, hi: usize, pass: u32) {
        let gs = self.granules(lo, hi);
        if self.marks.len() < gs.end {
            self.marks.resize(gs.end, 0);
        }
        for m in &mut self.marks[gs] {
            *m = (*m).max(pass);
        }
    }

    /// Whether every granule that bytes `[lo, hi)` touch is `min_age` passes old at
    /// pass `now`.
    pub(crate) fn all_due(&self, lo: usize, hi: usize, now: u32, min_age: u32) -> bool {
        self.granules(lo, hi).all(|g| self.due(g, now, min_age))
    }

    /// The least offset in `[lo, hi]` from which every granule up to `hi` is due:
    /// `lo` if all are, `hi` if the last is not.
    pub(crate) fn due_from(&self, lo: usize, hi: usize, now: u32, min_age: u32) -> usize {
        let mut from = hi;
        for g in self.granules(lo, hi).rev() {
            if !self.due(g, now, min_age) {
                break;
            }
            from = (g << self.shift).max(lo);
        }
        from
    }

    /// The maximal runs of bytes in `[lo, hi)` whose granules are due, as
    /// `(start, end)`.
    pub(crate) fn due_runs(
        &self,
        lo: usize,
        hi: usize,
        now: u32,
        min_age: u32,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut gs = self.granules(lo, hi).peekable();
        let bytes = move |g: usize| ((g << self.shift).max(lo), ((g + 1) << self.shift).min(hi));
        std::iter::from_fn(move || {
            let first = gs.find(|&g| self.due(g, now, min_age))?;
            let mut last = first;
            while let Some(g) = gs.next_if(|&g| self.due(g, now, min_age)) {
                last = g;
            }
            Some((bytes(first).0, bytes(last).1))
        })
    }

    /// Forgets the marks of every granule wholly at or above `from`.
    pub(crate) fn truncate(&mut self, from: usize) {
        self.marks
            .truncate(from.div_ceil(1 << self.shift).min(self.marks.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_example_holds() {
        let mut s = Stamps::new(4096);
        s.mark(0, 10_000, 5);
        s.mark(8192, 9000, 7);
        assert!(s.all_due(0, 8192, 8, 3));
        assert!(!s.all_due(0, 10_000, 8, 3));
        assert_eq!(
            s.due_runs(0, 10_000, 8, 3).collect::<Vec<_>>(),
            vec![(0, 8192)]
        );
        assert_eq!(s.due_from(0, 12_288, 8, 3), 12_288);
        assert_eq!(s.due_from(0, 8192, 8, 3), 0);
        assert_eq!(s.due_from(100, 8192, 8, 3), 100);
    }

    #[test]
    fn runs_and_tails_agree_with_a_model_of_byte_ages() {
        const G: usize = 16;
        const LEN: usize = 400;
        let mut s = Stamps::new(G);
        let mut model = [0u32; LEN];
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..3000u32 {
            let now = round / 10;
            let (a, b) = (
                (next() % LEN as u64) as usize,
                (next() % LEN as u64) as usize,
            );
            let (lo, hi) = (a.min(b), a.max(b));
            if next() % 3 == 0 {
                s.mark(lo, hi, now);
                // Every byte of a granule the range touches takes the later mark.
                for g in (lo / G)..hi.div_ceil(G) {
                    for m in &mut model[g * G..((g + 1) * G).min(LEN)] {
                        *m = (*m).max(now);
                    }
                }
                continue;
            }
            let min_age = (next() % 5) as u32;
            let due = |i: usize| now.saturating_sub(model[i]) >= min_age;
            assert_eq!(s.all_due(lo, hi, now, min_age), (lo..hi).all(due));
            let runs: Vec<(usize, usize)> = s.due_runs(lo, hi, now, min_age).collect();
            let mut expected = Vec::new();
            let mut i = lo;
            while i < hi {
                if due(i) {
                    let start = i;
                    while i < hi && due(i) {
                        i += 1;
                    }
                    expected.push((start, i));
                } else {
                    i += 1;
                }
            }
            assert_eq!(runs, expected, "[{lo}, {hi}) at {now}, age {min_age}");
            let from = (lo..=hi).find(|&f| (f..hi).all(due)).unwrap();
            assert_eq!(s.due_from(lo, hi, now, min_age), from);
        }
    }

    #[test]
    fn truncation_forgets_the_top() {
        let mut s = Stamps::new(4096);
        s.mark(0, 5 * 4096, 9);
        s.truncate(2 * 4096 + 1);
        assert!(!s.all_due(0, 3 * 4096, 10, 3));
        assert!(s.all_due(3 * 4096, 5 * 4096, 10, 3));
    }
}
