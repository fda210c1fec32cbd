//! Helpers shared by the property tests of every strategy (compiled for tests only).

use proptest::test_runner::Config as ProptestConfig;
use std::collections::BTreeMap;

/// Property-test settings: many cases natively, a handful under Miri (which runs
/// code about a thousand times slower), and no failure files under Miri's isolation.
pub(crate) fn proptest_config(native_cases: u32) -> ProptestConfig {
    if cfg!(miri) {
        ProptestConfig {
            cases: 3,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    } else {
        ProptestConfig::with_cases(native_cases)
    }
}

/// The live blocks of a model: checks that no two overlap.
#[derive(Debug, Default)]
pub(crate) struct LiveSet {
    blocks: BTreeMap<usize, usize>,
}

impl LiveSet {
    /// Records `[start, start + len)`, panicking if it overlaps a live block.
    pub(crate) fn insert(&mut self, start: usize, len: usize) {
        let len = len.max(1);
        if let Some((&prev, &prev_len)) = self.blocks.range(..=start).next_back() {
            assert!(
                prev + prev_len <= start,
                "block {start:#x}+{len} overlaps {prev:#x}+{prev_len}"
            );
        }
        if let Some((&next, _)) = self.blocks.range(start..).next() {
            assert!(
                start + len <= next,
                "block {start:#x}+{len} overlaps {next:#x}"
            );
        }
        self.blocks.insert(start, len);
    }

    /// Forgets the block at `start`.
    pub(crate) fn remove(&mut self, start: usize) {
        assert!(
            self.blocks.remove(&start).is_some(),
            "{start:#x} was not live"
        );
    }
}

/// The bytes of a block the unit tests write: both ends (where overlaps show first)
/// and one byte per page, which keeps large blocks cheap under Miri. The integration
/// test `tests/patterns.rs` writes every byte.
fn sampled(len: usize) -> impl Iterator<Item = usize> {
    let ends = (0..len.min(64)).chain(len.saturating_sub(64).max(64)..len);
    ends.chain((64..len.saturating_sub(64)).step_by(4096))
}

/// Writes a pattern derived from `seed` into sampled bytes of `len` at `ptr`.
///
/// # Safety
///
/// `ptr` is valid for writes of `len` bytes.
pub(crate) unsafe fn fill(ptr: *mut u8, len: usize, seed: u64) {
    for i in sampled(len) {
        // SAFETY: `i < len`, within the caller's block.
        unsafe { ptr.add(i).write(pattern(seed, i)) };
    }
}

/// Checks the pattern written by [`fill`].
///
/// # Safety
///
/// `ptr` is valid for reads of `len` bytes.
pub(crate) unsafe fn check(ptr: *const u8, len: usize, seed: u64) {
    for i in sampled(len) {
        // SAFETY: `i < len`, within the caller's block.
        let got = unsafe { ptr.add(i).read() };
        assert_eq!(
            got,
            pattern(seed, i),
            "byte {i} of block {seed} was overwritten"
        );
    }
}

fn pattern(seed: u64, i: usize) -> u8 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8).wrapping_mul(31)
}
