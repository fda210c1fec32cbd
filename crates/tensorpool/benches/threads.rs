//! Threads: tensorpool's manager (its per-thread caches) against mimalloc, jemalloc
//! and the system allocator, in one process.
//!
//! - `local/<allocator>/<threads>`: each thread allocates and frees its own blocks
//!   (sizes 64 B to 4 KiB, a ring of 16 live blocks per thread, one byte written per
//!   block). Time per round, each thread doing one allocate + free per round, so
//!   throughput scales as `threads / time`.
//! - `producer-consumer/<allocator>`: one thread allocates, another frees what it
//!   receives (batches of 64 through a channel). Time per block.
//!
//! The thread counts come from `TENSORPOOL_BENCH_THREADS` (default `1,2`: this
//! machine has two cores). `python3 scripts/bench_table.py` prints the ratios.

use allocator_api2::alloc::Allocator;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};
use tensorpool::MemoryManager;

static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Any of the allocators, shareable across threads.
#[derive(Clone)]
enum Subject {
    Tensorpool(Arc<MemoryManager>),
    Global(&'static (dyn GlobalAlloc + Sync)),
}

impl Subject {
    fn all() -> Vec<(&'static str, Subject)> {
        vec![
            (
                "tensorpool",
                Subject::Tensorpool(Arc::new(MemoryManager::default())),
            ),
            ("system", Subject::Global(&System)),
            ("mimalloc", Subject::Global(&MIMALLOC)),
            ("jemalloc", Subject::Global(&JEMALLOC)),
        ]
    }

    #[inline]
    fn alloc(&self, layout: Layout) -> NonNull<u8> {
        match self {
            Subject::Tensorpool(mm) => mm.allocate(layout).unwrap().cast(),
            // SAFETY: a non-zero layout.
            Subject::Global(heap) => NonNull::new(unsafe { heap.alloc(layout) }).unwrap(),
        }
    }

    /// # Safety
    ///
    /// `ptr` came from `self.alloc(layout)` and is not freed yet.
    #[inline]
    unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: as the caller promises.
        unsafe {
            match self {
                Subject::Tensorpool(mm) => mm.deallocate(ptr, layout),
                Subject::Global(heap) => heap.dealloc(ptr.as_ptr(), layout),
            }
        }
    }
}

fn layout(i: usize) -> Layout {
    const SIZES: [usize; 8] = [64, 128, 256, 512, 1024, 2048, 3072, 4096];
    Layout::from_size_align(SIZES[i % SIZES.len()], 64).unwrap()
}

/// `threads` threads doing `rounds` allocate + free each; the wall time of all.
fn run_local(subject: &Subject, threads: usize, rounds: u64) -> Duration {
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
                    let ptr = subject.alloc(layout);
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
        w.join().unwrap();
    }
    began.elapsed()
}

/// One thread allocates `blocks` blocks, another frees them; the wall time.
fn run_producer_consumer(subject: &Subject, blocks: u64) -> Duration {
    struct Batch(Vec<(NonNull<u8>, Layout)>);
    // SAFETY: the batch owns its blocks; sending it moves that ownership.
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
                let ptr = subject.alloc(layout);
                // SAFETY: a fresh block of at least one byte.
                unsafe { ptr.as_ptr().write_volatile(1) };
                batch.push((ptr, layout));
                if batch.len() == BATCH {
                    tx.send(Batch(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH),
                    )))
                    .unwrap();
                }
            }
            tx.send(Batch(batch)).unwrap();
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
    producer.join().unwrap();
    consumer.join().unwrap();
    began.elapsed()
}

fn thread_counts() -> Vec<usize> {
    std::env::var("TENSORPOOL_BENCH_THREADS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2])
}

fn local(c: &mut Criterion) {
    let mut group = c.benchmark_group("local");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, subject) in Subject::all() {
        for threads in thread_counts() {
            group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                b.iter_custom(|rounds| run_local(&subject, threads, rounds))
            });
        }
    }
    group.finish();
}

fn producer_consumer(c: &mut Criterion) {
    let mut group = c.benchmark_group("producer-consumer");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, subject) in Subject::all() {
        group.bench_function(name, |b| {
            b.iter_custom(|blocks| run_producer_consumer(&subject, blocks))
        });
    }
    group.finish();
}

criterion_group!(benches, local, producer_consumer);
criterion_main!(benches);
