//! The pattern written into a live block, and the check that it is still there.
//!
//! Byte `i` of a block with seed `s` is a byte derived from `s` plus `i mod 251`: blocks
//! with different seeds differ, and since 251 is prime, a block moved by any multiple of
//! 256 bytes (a slot or page off) does not match itself either.

/// Which bytes of a block are written and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every byte: for tests whose point is the contents.
    Every,
    /// The first and last `ends` bytes, and one byte in every `stride` between them:
    /// enough to see an overlap or a block handed out twice, cheap for large blocks
    /// (and under Miri, which runs code about a thousand times slower).
    Sampled {
        /// How many bytes at each end are covered.
        ends: usize,
        /// The distance between covered bytes in the middle (at least 1).
        stride: usize,
    },
}

impl Coverage {
    /// Every byte.
    pub const EVERY: Coverage = Coverage::Every;

    /// The indices covered in a block of `len` bytes, in increasing order, each once.
    pub fn indices(self, len: usize) -> impl Iterator<Item = usize> {
        let (ends, stride) = match self {
            Coverage::Every => (len, 1),
            Coverage::Sampled { ends, stride } => (ends, stride.max(1)),
        };
        let head = ends.min(len);
        let tail = len.saturating_sub(ends).max(head);
        (0..head)
            .chain((head..tail).step_by(stride))
            .chain(tail..len)
    }
}

/// Byte `i` of the pattern with seed `seed`.
pub fn byte(seed: u64, i: usize) -> u8 {
    let from_seed = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8;
    from_seed.wrapping_add((i % 251) as u8)
}

/// Writes the pattern of `seed` into the covered bytes of `block`.
pub fn fill(block: &mut [u8], seed: u64, coverage: Coverage) {
    for i in coverage.indices(block.len()) {
        block[i] = byte(seed, i);
    }
}

/// The first covered byte of `block` that does not hold the pattern of `seed`.
pub fn first_difference(block: &[u8], seed: u64, coverage: Coverage) -> Option<usize> {
    coverage
        .indices(block.len())
        .find(|&i| block[i] != byte(seed, i))
}

/// Panics, naming the byte, the block's address and length, if a covered byte of
/// `block` does not hold the pattern of `seed`.
#[track_caller]
pub fn assert_intact(block: &[u8], seed: u64, coverage: Coverage) {
    if let Some(i) = first_difference(block, seed, coverage) {
        panic!(
            "byte {i} of the {}-byte block at {:p} (seed {seed}) was overwritten: {:#04x}, expected {:#04x}",
            block.len(),
            block.as_ptr(),
            block[i],
            byte(seed, i)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_indices_cover_both_ends_and_the_stride_once_each() {
        let c = Coverage::Sampled { ends: 2, stride: 3 };
        assert_eq!(c.indices(10).collect::<Vec<_>>(), [0, 1, 2, 5, 8, 9]);
        assert_eq!(c.indices(3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(c.indices(0).count(), 0);
        assert_eq!(
            Coverage::EVERY.indices(5).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn a_moved_or_foreign_block_does_not_match() {
        let mut block = vec![0u8; 2048];
        fill(&mut block, 3, Coverage::EVERY);
        assert_eq!(first_difference(&block, 3, Coverage::EVERY), None);
        assert!(first_difference(&block, 4, Coverage::EVERY).is_some());
        // The same pattern seen 256 bytes on (a neighbouring slot) differs.
        assert!(first_difference(&block[256..], 3, Coverage::EVERY).is_some());
    }

    #[test]
    #[should_panic(expected = "byte 7 of the 16-byte block")]
    fn a_changed_byte_is_named() {
        let mut block = [0u8; 16];
        fill(&mut block, 9, Coverage::EVERY);
        block[7] = block[7].wrapping_add(1);
        assert_intact(&block, 9, Coverage::EVERY);
    }
}
