//! The microbenchmark workloads, shared by `tensorpool bench` and the criterion
//! benchmarks in `benches/`. Each runs a given number of rounds and returns the wall
//! time, so that a caller can time it its own way.

use crate::peers::Subject;
use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};
use tensorpool::{Arena, FixedSizePool};

const PAGE: usize = 4096;

/// Writes one byte in every page of a block, as a tensor's first use does.
pub fn touch(ptr: NonNull<u8>, size: usize) {
    for offset in (0..size).step_by(PAGE) {
        // SAFETY: `offset < size`, inside the caller's block.
        unsafe { ptr.as_ptr().add(offset).write_volatile(1) };
    }
}

/// `rounds` allocate + free pairs of `layout`, hot.
pub fn pairs(subject: &Subject, layout: Layout, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        let p = subject
            .alloc(black_box(layout))
            .expect("memory for a benchmark");
        // SAFETY: allocated just above with `layout`.
        unsafe { subject.free(black_box(p), layout) };
    }
    start.elapsed()
}

/// `rounds` allocate + free pairs through a standalone pool.
pub fn pool_pairs(pool: &FixedSizePool, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        let p = pool.allocate().expect("memory for a benchmark");
        pool.deallocate(black_box(p)).expect("a live block");
    }
    start.elapsed()
}

/// Allocations per arena round.
pub const ARENA_ROUND: u64 = 1000;

/// `rounds` rounds of [`ARENA_ROUND`] allocations of `layout` from tensorpool's arena,
/// then a reset.
pub fn arena(arena: &mut Arena, layout: Layout, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        for _ in 0..ARENA_ROUND {
            black_box(
                allocator_api2::alloc::Allocator::allocate(&*arena, black_box(layout))
                    .expect("memory for a benchmark"),
            );
        }
        arena.reset();
    }
    start.elapsed()
}

/// The same with bumpalo.
pub fn bumpalo(bump: &mut bumpalo::Bump, layout: Layout, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        for _ in 0..ARENA_ROUND {
            black_box(bump.alloc_layout(black_box(layout)));
        }
        bump.reset();
    }
    start.elapsed()
}

/// `rounds` rounds of: allocate `size` bytes, write every page, free.
pub fn large(subject: &Subject, size: usize, rounds: u64) -> Duration {
    let layout = Layout::from_size_align(size, 64).expect("a valid size");
    let start = Instant::now();
    for _ in 0..rounds {
        let p = subject.alloc(layout).expect("memory for a benchmark");
        touch(p, size);
        // SAFETY: allocated just above with `layout`.
        unsafe { subject.free(p, layout) };
    }
    start.elapsed()
}

/// `rounds` times writing every page of `size` bytes of memory already mapped.
pub fn warm_touch(buffer: &mut [u8], size: usize, rounds: u64) -> Duration {
    let ptr = NonNull::from(&mut *buffer).cast::<u8>();
    let start = Instant::now();
    for _ in 0..rounds {
        touch(black_box(ptr), size.min(buffer.len()));
    }
    start.elapsed()
}

/// The sizes of the thread workloads: 64 B to 4 KiB.
fn layout(i: usize) -> Layout {
    const SIZES: [usize; 8] = [64, 128, 256, 512, 1024, 2048, 3072, 4096];
    Layout::from_size_align(SIZES[i % SIZES.len()], 64).expect("valid sizes")
}

/// `threads` threads each doing `rounds` allocate + free of their own blocks (a ring of
/// 16 live blocks each, one byte written per block); the wall time of all.
pub fn local(subject: &Subject, threads: usize, rounds: u64) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (subject, start) = (subject.clone(), start.clone());
            std::thread::spawn(move || {
                const RING: usize = 16;
                let mut ring: [Option<(NonNull<u8>, Layout)>; RING] = [None; RING];
                start.wait();
                for i in 0..rounds as usize {
                    let slot = &mut ring[i % RING];
                    if let Some((ptr, layout)) = slot.take() {
                        // SAFETY: allocated below with this layout, freed once.
                        unsafe { subject.free(ptr, layout) };
                    }
                    let layout = layout(i * 7 + t);
                    let ptr = subject.alloc(layout).expect("memory for a benchmark");
                    // SAFETY: a fresh block of at least one byte.
                    unsafe { ptr.as_ptr().write_volatile(i as u8) };
                    *slot = Some((ptr, layout));
                }
                for (ptr, layout) in ring.into_iter().flatten() {
                    // SAFETY: allocated above with this layout, freed once.
                    unsafe { subject.free(ptr, layout) };
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for w in workers {
        w.join().expect("a benchmark thread panicked");
    }
    began.elapsed()
}

/// One thread allocates `blocks` blocks, another frees them (batches of 64 through a
/// channel); the wall time.
pub fn producer_consumer(subject: &Subject, blocks: u64) -> Duration {
    struct Batch(Vec<(NonNull<u8>, Layout)>);
    // SAFETY: a batch owns its blocks; sending it moves that ownership.
    unsafe impl Send for Batch {}
    const BATCH: usize = 64;
    let (tx, rx) = mpsc::sync_channel::<Batch>(16);
    let start = Arc::new(Barrier::new(3));
    let producer = {
        let (subject, start) = (subject.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut batch = Vec::with_capacity(BATCH);
            for i in 0..blocks as usize {
                let layout = layout(i);
                let ptr = subject.alloc(layout).expect("memory for a benchmark");
                // SAFETY: a fresh block of at least one byte.
                unsafe { ptr.as_ptr().write_volatile(1) };
                batch.push((ptr, layout));
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    tx.send(Batch(full)).expect("the consumer is alive");
                }
            }
            tx.send(Batch(batch)).expect("the consumer is alive");
        })
    };
    let consumer = {
        let (subject, start) = (subject.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            for batch in rx {
                for (ptr, layout) in batch.0 {
                    // SAFETY: allocated by the producer with this layout, freed once.
                    unsafe { subject.free(ptr, layout) };
                }
            }
        })
    };
    start.wait();
    let began = Instant::now();
    producer.join().expect("the producer panicked");
    consumer.join().expect("the consumer panicked");
    began.elapsed()
}
