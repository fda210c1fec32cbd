//! Every live block carries a distinct pattern in every byte, checked before it is
//! freed and at the end: any overlap between blocks, or any write by the allocator
//! into memory it handed out, shows as a changed byte.

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use tensorpool::{Arena, BestFit, Config, FixedSizePool, MemoryManager};

use tensorpool_testkit::{pattern, Coverage, Rng};

/// Sizes spread over every tier: mostly small, some large, a few huge.
fn size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=69 => 1 + rng.below(64 << 10),
        70..=97 => 1 + rng.below(8 << 20),
        _ => (8 << 20) + rng.below(16 << 20),
    }
}

struct Block {
    ptr: NonNull<u8>,
    size: usize,
    seed: u8,
}

impl Block {
    fn fill(&self) {
        // SAFETY: the block is live, `size` bytes long, and only this test uses it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) };
        pattern::fill(bytes, self.seed.into(), Coverage::EVERY);
    }

    fn check(&self) {
        // SAFETY: the block is live and `size` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.size) };
        pattern::assert_intact(bytes, self.seed.into(), Coverage::EVERY);
    }
}

#[test]
fn manager_blocks_keep_their_patterns() {
    // A huge threshold of 8 MiB so that the huge tier is exercised with modest sizes.
    let config = Config::builder().huge_threshold(8 << 20).build().unwrap();
    let mm = MemoryManager::new(config).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut live: Vec<(Block, Option<Layout>)> = Vec::new();
    for step in 0..3000 {
        if live.len() < 200 && (live.is_empty() || rng.below(100) < 55) {
            let size = size(&mut rng);
            let align = 1 << rng.below(13);
            let typed = rng.below(2) == 0;
            let (ptr, layout) = if typed {
                let layout = Layout::from_size_align(size, align).unwrap();
                (mm.allocate(layout).unwrap().cast::<u8>(), Some(layout))
            } else {
                (mm.allocate_raw(size, align).unwrap(), None)
            };
            assert_eq!(ptr.as_ptr() as usize % align.max(64), 0);
            let block = Block {
                ptr,
                size,
                seed: step as u8,
            };
            block.fill();
            live.push((block, layout));
        } else {
            let (block, layout) = live.swap_remove(rng.below(live.len()));
            block.check();
            match layout {
                // SAFETY: allocated through the Allocator with this layout.
                Some(layout) => unsafe { mm.deallocate(block.ptr, layout) },
                None => mm.free_raw(block.ptr.as_ptr()).unwrap(),
            }
        }
        if step % 500 == 0 {
            mm.trim();
            live.iter().for_each(|(b, _)| b.check());
        }
    }
    for (block, layout) in live {
        block.check();
        match layout {
            // SAFETY: allocated through the Allocator with this layout.
            Some(layout) => unsafe { mm.deallocate(block.ptr, layout) },
            None => mm.free_raw(block.ptr.as_ptr()).unwrap(),
        }
    }
    assert_eq!(mm.stats().allocated_bytes, 0);
    mm.trim();
    assert_eq!(mm.stats().reserved_bytes, 0);
}

#[test]
fn strategy_blocks_keep_their_patterns() {
    let mut rng = Rng(42);
    let pool = FixedSizePool::new(1000).unwrap();
    let bf = BestFit::new();
    let mut live: Vec<(Block, bool)> = Vec::new();
    for step in 0..4000 {
        if live.len() < 300 && (live.is_empty() || rng.below(100) < 55) {
            let from_pool = rng.below(2) == 0;
            let (ptr, size) = if from_pool {
                (pool.allocate().unwrap(), 1000)
            } else {
                let size = 1 + rng.below(4 << 20);
                (bf.allocate(size, 1 << rng.below(13)).unwrap(), size)
            };
            let block = Block {
                ptr,
                size,
                seed: step as u8,
            };
            block.fill();
            live.push((block, from_pool));
        } else {
            let (block, from_pool) = live.swap_remove(rng.below(live.len()));
            block.check();
            if from_pool {
                pool.deallocate(block.ptr).unwrap();
            } else {
                bf.deallocate(block.ptr).unwrap();
            }
        }
    }
    live.iter().for_each(|(b, _)| b.check());

    let mut arena = Arena::new();
    for round in 0..20u8 {
        let blocks: Vec<Block> = (0..200)
            .map(|i| {
                let size = 1 + rng.below(50_000);
                let ptr = arena.allocate(size, 1 << rng.below(8)).unwrap();
                let block = Block {
                    ptr,
                    size,
                    seed: round ^ i as u8,
                };
                block.fill();
                block
            })
            .collect();
        blocks.iter().for_each(Block::check);
        arena.reset();
    }
}
