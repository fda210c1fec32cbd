//! Arbitrary sequences of operations against each strategy on its own: a
//! `FixedSizePool` (fixed capacity or growing), a `BestFit` (plain or expandable
//! segments, `max_split_size`), an `Arena` (resets, checkpoints, nested scopes).
//! After every step: live blocks keep their contents and never overlap; refused
//! frees (interior, foreign, double) change nothing; the counts match the model.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::ptr::NonNull;
use tensorpool::{Arena, BestFit, Error, FixedSizePool};
use tensorpool_testkit::{pattern, Coverage};

#[derive(Arbitrary, Debug)]
enum Input {
    Pool {
        block: u16,
        capacity: Option<u8>,
        ops: Vec<PoolOp>,
    },
    BestFit {
        expandable: bool,
        max_split: Option<u16>,
        ops: Vec<FitOp>,
    },
    Arena {
        capacity: Option<u16>,
        ops: Vec<ArenaOp>,
    },
}

#[derive(Arbitrary, Debug)]
enum PoolOp {
    Allocate,
    Free(u16),
    FreeBad(u16, u16),
    Trim,
}

#[derive(Arbitrary, Debug)]
enum FitOp {
    Allocate(u32, u8),
    Free(u16),
    FreeBad(u16, u32),
    Trim,
}

#[derive(Arbitrary, Debug)]
enum ArenaOp {
    Allocate(u16, u8),
    Checkpoint,
    Rewind(u8),
    Reset,
    Scope(Vec<u16>),
}

/// The first, middle and last byte: enough to see a block handed out twice.
fn checked(size: usize) -> Coverage {
    Coverage::Sampled {
        ends: 1,
        stride: (size / 2).max(1),
    }
}

fn fill(p: NonNull<u8>, size: usize, seed: usize) {
    // SAFETY: a live block of `size` bytes owned by the model.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), size) };
    pattern::fill(bytes, seed as u64, checked(size));
}

fn intact(p: NonNull<u8>, size: usize, seed: usize) -> bool {
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
    pattern::first_difference(bytes, seed as u64, checked(size)).is_none()
}

fn no_overlap(blocks: &[(NonNull<u8>, usize, usize)]) {
    let mut spans: Vec<_> = blocks
        .iter()
        .map(|&(p, s, _)| (p.as_ptr() as usize, s))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "blocks overlap: {w:?}");
    }
    for &(p, s, seed) in blocks {
        assert!(intact(p, s, seed), "a live block changed");
    }
}

fn bad_pointer(live: &[(NonNull<u8>, usize, usize)], i: u16, off: usize) -> *mut u8 {
    match live.get(i as usize % live.len().max(1)) {
        Some(&(p, s, _)) if s > 1 => p.as_ptr().wrapping_add(1 + off % (s - 1)),
        _ => std::ptr::without_provenance_mut(0x1000 + off),
    }
}

fuzz_target!(|input: Input| match input {
    Input::Pool {
        block,
        capacity,
        ops,
    } => {
        let block = 1 + block as usize;
        let pool = match capacity {
            Some(c) => FixedSizePool::with_capacity(block, 1 + c as usize),
            None => FixedSizePool::new(block),
        }
        .unwrap();
        let mut live = Vec::new();
        for (n, op) in ops.into_iter().take(300).enumerate() {
            match op {
                PoolOp::Allocate => match pool.allocate() {
                    Ok(p) => {
                        fill(p, block, n);
                        live.push((p, block, n));
                    }
                    Err(Error::OutOfMemory(_)) => assert!(pool.is_full()),
                    Err(e) => panic!("{e}"),
                },
                PoolOp::Free(i) if !live.is_empty() => {
                    let (p, _, _) = live.swap_remove(i as usize % live.len());
                    pool.deallocate(p).unwrap();
                    assert!(pool.deallocate(p).is_err(), "a double free is refused");
                }
                PoolOp::FreeBad(i, off) => {
                    let p = bad_pointer(&live, i, off as usize);
                    if let Some(p) = NonNull::new(p) {
                        assert!(pool.deallocate(p).is_err());
                    }
                }
                PoolOp::Trim => {
                    pool.trim();
                }
                _ => {}
            }
            assert_eq!(pool.len(), live.len());
            no_overlap(&live);
        }
    }
    Input::BestFit {
        expandable,
        max_split,
        ops,
    } => {
        // Settings that cannot apply are refused with an error naming them.
        let Ok(fit) = BestFit::builder()
            .expandable(expandable)
            .max_split_size(max_split.map(|k| (k as usize) << 10))
            .build()
        else {
            return;
        };
        let mut live = Vec::new();
        for (n, op) in ops.into_iter().take(200).enumerate() {
            match op {
                FitOp::Allocate(size, align) => {
                    let size = 1 + size as usize % (4 << 20);
                    let align = 1usize << (align % 13);
                    match fit.allocate(size, align) {
                        Ok(p) => {
                            assert_eq!(p.as_ptr() as usize % align, 0);
                            fill(p, size, n);
                            live.push((p, size, n));
                        }
                        Err(Error::OutOfMemory(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                FitOp::Free(i) if !live.is_empty() => {
                    let (p, _, _) = live.swap_remove(i as usize % live.len());
                    fit.deallocate(p).unwrap();
                    assert!(fit.deallocate(p).is_err(), "a double free is refused");
                }
                FitOp::FreeBad(i, off) => {
                    if let Some(p) = NonNull::new(bad_pointer(&live, i, off as usize)) {
                        assert!(fit.deallocate(p).is_err());
                    }
                }
                FitOp::Trim => {
                    fit.trim();
                }
                _ => {}
            }
            assert_eq!(fit.stats().usage.allocated_blocks, live.len());
            no_overlap(&live);
        }
        for (p, _, _) in live {
            fit.deallocate(p).unwrap();
        }
        fit.trim();
        assert_eq!(fit.stats().usage.reserved_bytes, 0);
    }
    Input::Arena { capacity, ops } => {
        let mut arena = match capacity {
            Some(c) => Arena::with_capacity(1 + c as usize * 16).unwrap(),
            None => Arena::new(),
        };
        let mut live: Vec<(NonNull<u8>, usize, usize)> = Vec::new();
        let mut checkpoints = Vec::new();
        for (n, op) in ops.into_iter().take(300).enumerate() {
            match op {
                ArenaOp::Allocate(size, align) => {
                    let size = 1 + size as usize;
                    let align = 1usize << (align % 12);
                    if let Ok(p) = arena.allocate(size, align) {
                        assert_eq!(p.as_ptr() as usize % align, 0);
                        fill(p, size, n);
                        live.push((p, size, n));
                    }
                }
                ArenaOp::Checkpoint => checkpoints.push((arena.checkpoint(), live.len())),
                ArenaOp::Rewind(i) if !checkpoints.is_empty() => {
                    let at = i as usize % checkpoints.len();
                    let (cp, len) = checkpoints[at];
                    arena.rewind(cp).unwrap();
                    live.truncate(len);
                    checkpoints.truncate(at + 1);
                }
                ArenaOp::Reset => {
                    arena.reset();
                    live.clear();
                    for (cp, _) in checkpoints.drain(..) {
                        assert!(
                            arena.rewind(cp).is_err(),
                            "a checkpoint from before a reset"
                        );
                    }
                }
                ArenaOp::Scope(sizes) => {
                    let outer = live.clone();
                    arena.scope(|s| {
                        let mut mine = outer.clone();
                        for (k, &size) in sizes.iter().take(16).enumerate() {
                            if let Ok(p) = s.allocate(1 + size as usize, 8) {
                                fill(p, 1 + size as usize, k);
                                mine.push((p, 1 + size as usize, k));
                            }
                        }
                        no_overlap(&mine);
                    });
                }
                _ => {}
            }
            no_overlap(&live);
        }
    }
});
