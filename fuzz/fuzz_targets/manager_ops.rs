//! Arbitrary sequences of operations against a `MemoryManager` with an arbitrary
//! configuration: typed and raw allocations in every tier, frees, frees of arbitrary
//! pointers (interior, foreign, freed, typed through the raw API), reallocations, an
//! arena with resets and scopes, trims, thread-cache flushes, and reconfiguration.
//! After every step the invariants of the property tests hold: live blocks keep their
//! contents, never overlap, are aligned; the statistics count exactly the live blocks;
//! a refused free changes nothing. At the end everything goes back.

#![no_main]

use allocator_api2::alloc::Allocator;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::alloc::Layout;
use std::ptr::NonNull;
use tensorpool::{Arena, Config, Error, MemoryManager, UpstreamKind};
use tensorpool_testkit::{pattern, Coverage};

#[derive(Arbitrary, Debug, Clone)]
struct FuzzConfig {
    small: u8,
    huge: u8,
    thread_cache: u8,
    debug: bool,
    pools: Vec<(u16, u8)>,
    limit_mib: Option<u8>,
    heap: bool,
    max_split: Option<u16>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Allocate {
        tier: u8,
        size: u32,
        align_log: u8,
        raw: bool,
        zeroed: bool,
    },
    Free {
        index: u16,
    },
    FreeRaw {
        target: u8,
        index: u16,
        offset: u32,
    },
    Reallocate {
        index: u16,
        tier: u8,
        size: u32,
    },
    ArenaAllocate {
        size: u16,
        align_log: u8,
    },
    ArenaReset,
    ArenaScope {
        sizes: Vec<u16>,
    },
    Trim,
    FlushThreadCache,
    Reconfigure(FuzzConfig),
}

#[derive(Debug)]
struct Live {
    ptr: NonNull<u8>,
    size: usize,
    align: usize,
    raw: bool,
    seed: u8,
}

fn manager(c: &FuzzConfig) -> Option<MemoryManager> {
    let mut b = Config::builder()
        .small_threshold([0, 1024, 4096, 16384][c.small as usize % 4])
        .huge_threshold([64 << 10, 1 << 20, 1 << 30][c.huge as usize % 3])
        .thread_cache_bytes([0, 4096, 64 << 10][c.thread_cache as usize % 3])
        .debug(c.debug);
    for &(size, count) in c.pools.iter().take(3) {
        b = b.pool(size as usize, count as usize);
    }
    if let Some(mib) = c.limit_mib {
        b = b.memory_limit((mib as usize % 64 + 1) << 20);
    }
    if c.heap {
        b = b.upstream(UpstreamKind::Heap);
    }
    if let Some(split) = c.max_split {
        b = b.max_split_size((split as usize) << 10);
    }
    // Invalid configurations are refused with an error; that is tested elsewhere.
    MemoryManager::new(b.build().ok()?).ok()
}

fn size_for(tier: u8, size: u32) -> usize {
    let max = [256, 4096, 64 << 10, 1 << 20, 3 << 20][tier as usize % 5];
    1 + size as usize % max
}

/// The bytes of a block that are checked: all of a small one, both ends of a large one.
const CHECKED: Coverage = Coverage::Sampled {
    ends: 512,
    stride: usize::MAX,
};

fn fill(ptr: NonNull<u8>, size: usize, seed: u8) {
    // SAFETY: a live block of `size` bytes owned by this model.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), size) };
    pattern::fill(bytes, seed.into(), CHECKED);
}

fn intact(ptr: NonNull<u8>, size: usize, seed: u8) -> bool {
    // SAFETY: a live block of `size` bytes owned by this model.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), size) };
    pattern::first_difference(bytes, seed.into(), CHECKED).is_none()
}

fn layout(b: &Live) -> Layout {
    Layout::from_size_align(b.size, b.align).unwrap()
}

struct Model {
    mm: MemoryManager,
    live: Vec<Live>,
    arena: Option<Arena>,
    /// Arena allocations since its last reset (address, size).
    arena_live: Vec<(NonNull<u8>, usize, u8)>,
    /// Addresses freed, for double frees.
    freed: Vec<usize>,
    seed: u8,
}

impl Model {
    fn check(&self) {
        let mut spans: Vec<(usize, usize)> = self
            .live
            .iter()
            .map(|b| (b.ptr.as_ptr() as usize, b.size))
            .chain(
                self.arena_live
                    .iter()
                    .map(|&(p, s, _)| (p.as_ptr() as usize, s)),
            )
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "blocks overlap: {w:?}");
        }
        for b in &self.live {
            assert_eq!(b.ptr.as_ptr() as usize % b.align, 0, "misaligned");
            assert!(intact(b.ptr, b.size, b.seed), "a live block changed");
        }
        for &(p, s, seed) in &self.arena_live {
            assert!(intact(p, s, seed), "an arena block changed");
        }
        let stats = self.mm.stats();
        assert_eq!(
            stats.allocated_blocks,
            self.live.len() + self.arena_chunks()
        );
        assert!(stats.reserved_bytes >= stats.allocated_bytes);
        assert_eq!(stats.num_guard_violations, 0);
        // Requested bytes are the live blocks' sizes (debug mode counts the guards,
        // an arena its chunks).
        if self.arena.is_none() && !self.mm.config().debug {
            let live: usize = self.live.iter().map(|b| b.size).sum();
            assert_eq!(stats.requested_bytes, live, "requested bytes");
        }
    }

    fn arena_chunks(&self) -> usize {
        self.arena.as_ref().map_or(0, |a| a.stats().chunks)
    }

    fn free_all(&mut self) {
        for b in std::mem::take(&mut self.live) {
            assert!(intact(b.ptr, b.size, b.seed));
            if b.raw {
                self.mm.free_raw(b.ptr.as_ptr()).unwrap();
            } else {
                // SAFETY: allocated by `try_allocate` with this layout.
                unsafe { self.mm.deallocate(b.ptr, layout(&b)) };
            }
        }
        self.arena_live.clear();
        self.arena = None;
        let stats = self.mm.stats();
        assert_eq!(
            (
                stats.allocated_blocks,
                stats.allocated_bytes,
                stats.requested_bytes
            ),
            (0, 0, 0)
        );
        self.mm.trim();
        assert_eq!(
            self.mm.stats().reserved_bytes,
            0,
            "everything goes back after trim"
        );
        if let Some(leaks) = self.mm.leaks() {
            assert_eq!(leaks.count, 0);
        }
    }

    fn step(&mut self, op: Op) {
        self.seed = self.seed.wrapping_add(1);
        match op {
            Op::Allocate {
                tier,
                size,
                align_log,
                raw,
                zeroed,
            } => {
                let size = size_for(tier, size);
                let align = 1usize << (align_log % 13);
                let result = match (raw, zeroed) {
                    (true, false) => self.mm.allocate_raw(size, align),
                    (true, true) => self.mm.allocate_raw_zeroed(size, align),
                    (false, false) => self
                        .mm
                        .try_allocate(Layout::from_size_align(size, align).unwrap()),
                    (false, true) => self
                        .mm
                        .try_allocate_zeroed(Layout::from_size_align(size, align).unwrap()),
                };
                match result {
                    Ok(ptr) => {
                        if zeroed {
                            // SAFETY: a fresh block of `size` bytes.
                            let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), size) };
                            assert!(bytes.iter().all(|&b| b == 0), "zeroed memory is not zero");
                        }
                        fill(ptr, size, self.seed);
                        self.live.push(Live {
                            ptr,
                            size,
                            align,
                            raw,
                            seed: self.seed,
                        });
                    }
                    Err(Error::OutOfMemory(_)) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            Op::Free { index } => {
                if self.live.is_empty() {
                    return;
                }
                let b = self.live.swap_remove(index as usize % self.live.len());
                assert!(intact(b.ptr, b.size, b.seed));
                if b.raw {
                    self.mm.free_raw(b.ptr.as_ptr()).unwrap();
                } else {
                    // SAFETY: allocated by `try_allocate` with this layout.
                    unsafe { self.mm.deallocate(b.ptr, layout(&b)) };
                }
                self.freed.push(b.ptr.as_ptr() as usize);
            }
            Op::FreeRaw {
                target,
                index,
                offset,
            } => {
                let before = self.mm.stats();
                let addr = match target % 4 {
                    // inside a live block (or its start, when the offset is 0)
                    0 if !self.live.is_empty() => {
                        let b = &self.live[index as usize % self.live.len()];
                        b.ptr.as_ptr() as usize + offset as usize % b.size
                    }
                    // a freed address
                    1 if !self.freed.is_empty() => self.freed[index as usize % self.freed.len()],
                    // anywhere
                    _ => offset as usize * 4096 + index as usize,
                };
                let live_raw = self
                    .live
                    .iter()
                    .position(|b| b.raw && b.ptr.as_ptr() as usize == addr);
                let ptr = match self.live.iter().find(|b| b.ptr.as_ptr() as usize == addr) {
                    Some(b) => b.ptr.as_ptr(),
                    None => std::ptr::without_provenance_mut(addr),
                };
                match (self.mm.free_raw(ptr), live_raw) {
                    (Ok(()), Some(i)) => {
                        let b = self.live.swap_remove(i);
                        self.freed.push(b.ptr.as_ptr() as usize);
                    }
                    (Err(Error::InvalidPointer { .. }), None) => {
                        let after = self.mm.stats();
                        assert_eq!(before.allocated_blocks, after.allocated_blocks);
                        assert_eq!(before.requested_bytes, after.requested_bytes);
                    }
                    (result, expected) => {
                        panic!("free_raw({addr:#x}) gave {result:?}, live raw: {expected:?}")
                    }
                }
            }
            Op::Reallocate { index, tier, size } => {
                if self.live.is_empty() {
                    return;
                }
                let i = index as usize % self.live.len();
                let new_size = size_for(tier, size);
                let b = &self.live[i];
                // Out of memory: `Err`, the old block intact.
                let resized: Result<NonNull<u8>, ()> = if b.raw {
                    // SAFETY: no other thread uses the block.
                    match unsafe { self.mm.reallocate_raw(b.ptr.as_ptr(), new_size, b.align) } {
                        Ok(moved) => Ok(moved),
                        Err(Error::OutOfMemory(_)) => Err(()),
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                } else {
                    // A typed block through `Allocator`'s `grow`, `grow_zeroed` (on
                    // odd tiers) or `shrink`.
                    let old = Layout::from_size_align(b.size, b.align).unwrap();
                    let new = Layout::from_size_align(new_size, b.align).unwrap();
                    let zeroed = tier % 2 == 1 && new_size > b.size;
                    // SAFETY: a live typed block of `old`, used by no other thread.
                    let done = unsafe {
                        if zeroed {
                            (&self.mm).grow_zeroed(b.ptr, old, new)
                        } else if new_size >= b.size {
                            (&self.mm).grow(b.ptr, old, new)
                        } else {
                            (&self.mm).shrink(b.ptr, old, new)
                        }
                    };
                    // `AllocError` is the trait's only error: out of memory.
                    let moved = done.map(|p| p.cast::<u8>()).map_err(|_| ());
                    if let (true, Ok(p)) = (zeroed, moved) {
                        for at in CHECKED.indices(new_size).filter(|&at| at >= b.size) {
                            // SAFETY: the block holds `new_size` bytes.
                            let byte = unsafe { p.as_ptr().add(at).read() };
                            assert_eq!(byte, 0, "grow_zeroed left byte {at}");
                        }
                    }
                    moved
                };
                match resized {
                    Ok(moved) => {
                        let kept = b.size.min(new_size);
                        let seed = b.seed;
                        // The bytes the old block had written that fit the new one.
                        for at in CHECKED.indices(b.size).filter(|&at| at < kept) {
                            // SAFETY: the new block holds at least `kept` bytes.
                            let read = unsafe { moved.as_ptr().add(at).read() };
                            assert_eq!(
                                read,
                                pattern::byte(seed.into(), at),
                                "realloc lost byte {at}"
                            );
                        }
                        fill(moved, new_size, seed);
                        let b = &mut self.live[i];
                        b.ptr = moved;
                        b.size = new_size;
                    }
                    Err(()) => assert!(intact(b.ptr, b.size, b.seed)),
                }
            }
            Op::ArenaAllocate { size, align_log } => {
                let arena = self.arena.get_or_insert_with(|| self.mm.arena());
                let size = 1 + size as usize;
                if let Ok(p) = arena.allocate(size, 1 << (align_log % 12)) {
                    fill(p, size, self.seed);
                    self.arena_live.push((p, size, self.seed));
                }
            }
            Op::ArenaReset => {
                if let Some(arena) = self.arena.as_mut() {
                    arena.reset();
                    self.arena_live.clear();
                }
            }
            Op::ArenaScope { sizes } => {
                let seed = self.seed;
                let arena = self.arena.get_or_insert_with(|| self.mm.arena());
                let outer: Vec<_> = self.arena_live.clone();
                arena.scope(|s| {
                    let mut mine = Vec::new();
                    for &size in sizes.iter().take(16) {
                        let size = 1 + size as usize;
                        if let Ok(p) = s.allocate(size, 8) {
                            fill(p, size, seed);
                            mine.push((p, size));
                        }
                    }
                    for &(p, size) in &mine {
                        assert!(intact(p, size, seed));
                    }
                });
                for &(p, s, seed) in &outer {
                    assert!(intact(p, s, seed), "a scope released memory it did not own");
                }
            }
            Op::Trim => {
                self.mm.trim();
            }
            Op::FlushThreadCache => self.mm.flush_thread_cache(),
            Op::Reconfigure(config) => {
                if let Some(mm) = manager(&config) {
                    self.free_all();
                    self.mm = mm;
                    self.freed.clear();
                }
            }
        }
        self.check();
    }
}

fuzz_target!(|input: (FuzzConfig, Vec<Op>)| {
    let (config, ops) = input;
    let Some(mm) = manager(&config) else {
        return;
    };
    let mut model = Model {
        mm,
        live: Vec::new(),
        arena: None,
        arena_live: Vec::new(),
        freed: Vec::new(),
        seed: 0,
    };
    for op in ops.into_iter().take(200) {
        model.step(op);
    }
    model.free_all();
});
