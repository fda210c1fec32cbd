//! The microbenchmark workloads, shared by `tensorpool bench` and the criterion
//! benchmarks in `benches/`. Each runs a given number of rounds and returns the wall
//! time, so that a caller can time it its own way.

use crate::peers::{with_allocator, Allocates, Subject};
use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};
use tensorpool::trace::{Event, Trace};
use tensorpool::{Arena, FixedSizePool, PlannedArena};

/// Writes one byte in every page of a block, as a tensor's first use does.
pub fn touch(ptr: NonNull<u8>, size: usize) {
    for offset in (0..size).step_by(tensorpool::upstream::page_size()) {
        // SAFETY: `offset < size`, inside the caller's block.
        unsafe { ptr.as_ptr().add(offset).write_volatile(1) };
    }
}

/// Blocks held at once by the workloads that hold blocks.
pub const HELD: usize = 64;

/// `rounds` allocate + free pairs of `layout`, hot.
pub fn pairs(subject: &Subject, layout: Layout, rounds: u64) -> Duration {
    with_allocator!(subject, |a| pairs_in(a, layout, rounds))
}

fn pairs_in(a: &impl Allocates, layout: Layout, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        let p = a.alloc(black_box(layout)).expect("memory for a benchmark");
        // SAFETY: allocated just above with `layout`.
        unsafe { a.free(black_box(p), layout) };
    }
    start.elapsed()
}

/// `rounds` rounds of: allocate [`HELD`] blocks of `layout`, then free them (first
/// allocated, first freed). One round is `HELD` pairs.
pub fn held(subject: &Subject, layout: Layout, rounds: u64) -> Duration {
    with_allocator!(subject, |a| held_in(a, layout, rounds))
}

fn held_in(a: &impl Allocates, layout: Layout, rounds: u64) -> Duration {
    let mut blocks = [NonNull::<u8>::dangling(); HELD];
    let start = Instant::now();
    for _ in 0..rounds {
        for b in blocks.iter_mut() {
            *b = a.alloc(black_box(layout)).expect("memory for a benchmark");
        }
        for &b in blocks.iter() {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { a.free(black_box(b), layout) };
        }
    }
    start.elapsed()
}

/// `rounds` pairs through the sizeless interface (`allocate_raw` + `free_raw`,
/// `malloc` + `free`) of `size` bytes.
pub fn raw_pairs(subject: &Subject, size: usize, rounds: u64) -> Duration {
    with_allocator!(subject, |a| raw_pairs_in(a, size, rounds))
}

fn raw_pairs_in(a: &impl Allocates, size: usize, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        let p = a
            .alloc_raw(black_box(size))
            .expect("memory for a benchmark");
        // SAFETY: allocated just above, freed once.
        unsafe { a.free_raw(black_box(p)) };
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

/// The sizes of an arena round: 16 B to 4 KiB, cycling.
fn arena_layout(i: u64) -> Layout {
    const SIZES: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
    Layout::from_size_align(SIZES[i as usize % SIZES.len()], 8).expect("valid sizes")
}

/// `rounds` rounds of [`ARENA_ROUND`] allocations of 16 B to 4 KiB from tensorpool's
/// arena through the `Allocator` trait on `&Arena`, then a reset.
pub fn arena(arena: &mut Arena, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        for i in 0..ARENA_ROUND {
            black_box(
                allocator_api2::alloc::Allocator::allocate(&*arena, black_box(arena_layout(i)))
                    .expect("memory for a benchmark"),
            );
        }
        arena.reset();
    }
    start.elapsed()
}

/// The same with bumpalo's `alloc_layout`.
pub fn bumpalo(bump: &mut bumpalo::Bump, rounds: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..rounds {
        for i in 0..ARENA_ROUND {
            black_box(bump.alloc_layout(black_box(arena_layout(i))));
        }
        bump.reset();
    }
    start.elapsed()
}

/// One step of a recorded program, as the step benchmarks replay it: its
/// allocations (each a slot of the step, in order) and its frees of them; blocks the
/// step does not free are freed at its end.
pub struct StepOps {
    ops: Vec<StepOp>,
    layouts: Vec<Layout>,
    /// Slots the step leaves live.
    left: Vec<u32>,
}

#[derive(Clone, Copy)]
enum StepOp {
    Alloc(u32),
    Free(u32),
}

impl StepOps {
    /// The events of `trace` in `range` (a step, as [`StepPlan::source`] cuts
    /// it), each block 64-byte aligned as the replays have them.
    ///
    /// [`StepPlan::source`]: tensorpool::plan::StepPlan::source
    pub fn new(trace: &Trace, range: std::ops::Range<usize>) -> StepOps {
        let mut slot_of = std::collections::HashMap::new();
        let (mut ops, mut layouts) = (Vec::new(), Vec::new());
        for e in &trace.events[range] {
            match *e {
                Event::Alloc { id, size } => {
                    slot_of.insert(id, layouts.len() as u32);
                    ops.push(StepOp::Alloc(layouts.len() as u32));
                    layouts.push(crate::replay::layout_of(size));
                }
                Event::Free { id } => {
                    if let Some(slot) = slot_of.remove(&id) {
                        ops.push(StepOp::Free(slot));
                    }
                }
            }
        }
        let mut left: Vec<u32> = slot_of.into_values().collect();
        left.sort_unstable();
        StepOps { ops, layouts, left }
    }

    /// Allocations and frees per step (the benchmark's elements).
    pub fn events(&self) -> usize {
        self.ops.len() + self.left.len()
    }

    /// Runs the step once: `alloc` for every allocation, `free` for every free.
    #[inline(always)]
    fn run(
        &self,
        ptrs: &mut [NonNull<u8>],
        mut alloc: impl FnMut(Layout) -> NonNull<u8>,
        mut free: impl FnMut(NonNull<u8>, Layout),
    ) {
        for &op in &self.ops {
            match op {
                StepOp::Alloc(k) => ptrs[k as usize] = alloc(black_box(self.layouts[k as usize])),
                StepOp::Free(k) => free(black_box(ptrs[k as usize]), self.layouts[k as usize]),
            }
        }
        for &k in &self.left {
            free(ptrs[k as usize], self.layouts[k as usize]);
        }
    }
}

/// `rounds` steps through one of the allocators.
pub fn step(subject: &Subject, step: &StepOps, rounds: u64) -> Duration {
    with_allocator!(subject, |a| step_in(a, step, rounds))
}

fn step_in(a: &impl Allocates, step: &StepOps, rounds: u64) -> Duration {
    let mut ptrs = vec![NonNull::dangling(); step.layouts.len()];
    let start = Instant::now();
    for _ in 0..rounds {
        step.run(
            &mut ptrs,
            |layout| a.alloc(layout).expect("memory for a benchmark"),
            // SAFETY: each block is freed once, with the layout it was allocated with.
            |p, layout| unsafe { a.free(p, layout) },
        );
    }
    start.elapsed()
}

/// `rounds` steps through a `PlannedArena` running a plan of the step (`step()`
/// before each), through its `Allocator`.
pub fn step_planned(arena: &PlannedArena, step: &StepOps, rounds: u64) -> Duration {
    let mut ptrs = vec![NonNull::dangling(); step.layouts.len()];
    let start = Instant::now();
    for _ in 0..rounds {
        arena.step();
        step.run(
            &mut ptrs,
            |layout| {
                allocator_api2::alloc::Allocator::allocate(arena, layout)
                    .expect("memory for a benchmark")
                    .cast()
            },
            // SAFETY: each block is freed once, with the layout it was allocated with.
            |p, layout| unsafe { allocator_api2::alloc::Allocator::deallocate(arena, p, layout) },
        );
    }
    start.elapsed()
}

/// `rounds` steps through bumpalo: every allocation bumped, frees ignored, a reset
/// after each step (what an arena without a plan does with a step).
pub fn step_bumpalo(bump: &mut bumpalo::Bump, step: &StepOps, rounds: u64) -> Duration {
    let mut ptrs = vec![NonNull::dangling(); step.layouts.len()];
    let start = Instant::now();
    for _ in 0..rounds {
        step.run(&mut ptrs, |layout| bump.alloc_layout(layout), |_, _| {});
        bump.reset();
    }
    start.elapsed()
}

/// `rounds` rounds of: allocate `size` bytes, write every page, free.
pub fn large(subject: &Subject, size: usize, rounds: u64) -> Duration {
    with_allocator!(subject, |a| large_in(a, size, rounds))
}

fn large_in(a: &impl Allocates, size: usize, rounds: u64) -> Duration {
    let layout = Layout::from_size_align(size, 64).expect("a valid size");
    let start = Instant::now();
    for _ in 0..rounds {
        let p = a.alloc(layout).expect("memory for a benchmark");
        touch(p, size);
        // SAFETY: allocated just above with `layout`.
        unsafe { a.free(p, layout) };
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

/// The sizes of the thread workloads: 64 B to 16 KiB, mixed.
fn mixed_layout(i: usize) -> Layout {
    const SIZES: [usize; 12] = [
        64, 96, 128, 256, 384, 512, 1024, 2048, 3072, 4096, 8192, 16384,
    ];
    Layout::from_size_align(SIZES[i % SIZES.len()], 64).expect("valid sizes")
}

/// `threads` threads each doing `rounds` rounds of: allocate [`HELD`] blocks of
/// mixed sizes (64 B to 16 KiB, one byte written in each), then free them. The wall
/// time of all, from a common start; throughput is `threads * rounds * HELD` pairs
/// over it.
pub fn local(subject: &Subject, threads: usize, rounds: u64) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (subject, start) = (subject.clone(), start.clone());
            std::thread::spawn(move || {
                let mut held = [(NonNull::<u8>::dangling(), mixed_layout(0)); HELD];
                with_allocator!(&subject, |a| {
                    // Warm up outside the timed part: the thread's first slabs or pages.
                    run_local(a, &mut held, t, 4);
                    start.wait();
                    let began = Instant::now();
                    run_local(a, &mut held, t, rounds);
                    (began, Instant::now())
                })
            })
        })
        .collect();
    start.wait();
    let spans: Vec<(Instant, Instant)> = workers
        .into_iter()
        .map(|w| w.join().expect("a benchmark thread panicked"))
        .collect();
    // From the first thread's start to the last one's end, on the threads' own
    // clocks (the main thread may run late).
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    last - first
}

fn run_local(a: &impl Allocates, held: &mut [(NonNull<u8>, Layout); HELD], t: usize, rounds: u64) {
    for round in 0..rounds as usize {
        for (i, slot) in held.iter_mut().enumerate() {
            let layout = mixed_layout(i * 7 + round + t);
            let ptr = a.alloc(layout).expect("memory for a benchmark");
            // SAFETY: a fresh block of at least one byte.
            unsafe { ptr.as_ptr().write_volatile(i as u8) };
            *slot = (ptr, layout);
        }
        for &(ptr, layout) in held.iter() {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { a.free(ptr, layout) };
        }
    }
}

/// One thread allocates `blocks` blocks (mixed sizes, 64 B to 4 KiB), another frees
/// them (batches of [`HELD`] through a channel); the wall time.
pub fn producer_consumer(subject: &Subject, blocks: u64) -> Duration {
    struct Batch(Vec<(NonNull<u8>, Layout)>);
    // SAFETY: a batch owns its blocks; sending it moves that ownership.
    unsafe impl Send for Batch {}
    let (tx, rx) = mpsc::sync_channel::<Batch>(16);
    let (recycle, spare) = mpsc::channel::<Batch>();
    let start = Arc::new(Barrier::new(3));
    let producer = {
        let (subject, start) = (subject.clone(), start.clone());
        std::thread::spawn(move || {
            with_allocator!(&subject, |a| {
                start.wait();
                let mut batch = Vec::with_capacity(HELD);
                for i in 0..blocks as usize {
                    let layout = mixed_layout(i % 10);
                    let ptr = a.alloc(layout).expect("memory for a benchmark");
                    // SAFETY: a fresh block of at least one byte.
                    unsafe { ptr.as_ptr().write_volatile(1) };
                    batch.push((ptr, layout));
                    if batch.len() == HELD {
                        let next = spare
                            .try_recv()
                            .map_or_else(|_| Vec::with_capacity(HELD), |b| b.0);
                        let full = std::mem::replace(&mut batch, next);
                        tx.send(Batch(full)).expect("the consumer is alive");
                    }
                }
                tx.send(Batch(batch)).expect("the consumer is alive");
            })
        })
    };
    let consumer = {
        let (subject, start) = (subject.clone(), start.clone());
        std::thread::spawn(move || {
            with_allocator!(&subject, |a| {
                start.wait();
                for mut batch in rx {
                    for (ptr, layout) in batch.0.drain(..) {
                        // SAFETY: allocated by the producer with this layout, freed once.
                        unsafe { a.free(ptr, layout) };
                    }
                    let _ = recycle.send(batch);
                }
            })
        })
    };
    start.wait();
    let began = Instant::now();
    producer.join().expect("the producer panicked");
    consumer.join().expect("the consumer panicked");
    began.elapsed()
}
