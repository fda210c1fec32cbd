//! What tensorpool's tests share: one byte pattern and one random generator.
//!
//! Every test that checks an allocator's blocks does the same thing: it writes a pattern
//! derived from a per-block seed into a block when it gets it, and checks the pattern
//! before it frees it, so that a block handed out twice, an overlap, or a write past a
//! neighbour's end shows as a changed byte. The unit tests of `tensorpool`, its
//! integration tests and its fuzz targets all use this crate, so that there is one
//! pattern and one way to sample a large block.
//!
//! ```
//! use tensorpool_testkit::{pattern, Coverage, Rng};
//!
//! let mut block = vec![0u8; 10_000];
//! let seed = Rng(7).next();
//! pattern::fill(&mut block, seed, Coverage::EVERY);
//! assert_eq!(pattern::first_difference(&block, seed, Coverage::EVERY), None);
//!
//! block[5_000] ^= 1; // a stray write
//! assert_eq!(pattern::first_difference(&block, seed, Coverage::EVERY), Some(5_000));
//! // A sample sees the ends and one byte in every `stride`; this one misses byte 5,000.
//! let sampled = Coverage::Sampled { ends: 64, stride: 4096 };
//! assert_eq!(pattern::first_difference(&block, seed, sampled), None);
//! ```

pub mod pattern;

pub use pattern::Coverage;

/// xorshift64*: small and deterministic, so that a failing seed replays.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    // Not `Iterator`: the generator never ends, and callers want a plain number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_generator_is_deterministic_and_spreads() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng(1);
                move |_| r.next()
            })
            .collect();
        let mut r = Rng(1);
        assert_eq!(a, (0..4).map(|_| r.next()).collect::<Vec<_>>());
        let mut seen = [false; 10];
        for _ in 0..200 {
            seen[r.below(10)] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "200 draws below 10 hit every value"
        );
    }
}
