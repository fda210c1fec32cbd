//! tensorpool against its peers, measured in one process:
//!
//! - `pairs/<size>`: allocate and free one block of 64 B to 64 KiB, 64-byte aligned,
//!   hot (the same size again and again), through tensorpool's manager (the
//!   `Allocator` path), a standalone `FixedSizePool`, the system allocator, mimalloc
//!   and jemalloc;
//! - `arena`: 1000 allocations of 64 bytes then a reset, tensorpool's `Arena` against
//!   bumpalo, per allocation;
//! - `large/<MiB>`: allocate 1 to 64 MiB, write one byte in every page, free; against
//!   the same peers and against touching memory that is already mapped ("warm").
//!
//! `cargo bench -p tensorpool --bench allocators`, then `python3 scripts/bench_table.py`
//! prints the ratios of the README.

use allocator_api2::alloc::Allocator;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Duration;
use tensorpool::{Arena, FixedSizePool, MemoryManager};

/// A peer allocator reached through `GlobalAlloc`, as programs that link it would.
struct Peer {
    name: &'static str,
    heap: &'static dyn GlobalAlloc,
}

static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn peers() -> [Peer; 3] {
    [
        Peer {
            name: "system",
            heap: &System,
        },
        Peer {
            name: "mimalloc",
            heap: &MIMALLOC,
        },
        Peer {
            name: "jemalloc",
            heap: &JEMALLOC,
        },
    ]
}

const PAGE: usize = 4096;

/// Writes one byte in every page, as a tensor's first use does.
fn touch(ptr: *mut u8, size: usize) {
    for offset in (0..size).step_by(PAGE) {
        // SAFETY: `offset < size`, inside the caller's block.
        unsafe { ptr.add(offset).write_volatile(1) };
    }
}

fn pairs(c: &mut Criterion) {
    let mm = MemoryManager::default();
    let mut group = c.benchmark_group("pairs");
    group
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for size in [64usize, 256, 1024, 4096, 16384, 65536] {
        let layout = Layout::from_size_align(size, 64).unwrap();
        group.bench_with_input(
            BenchmarkId::new("tensorpool", size),
            &layout,
            |b, &layout| {
                b.iter(|| {
                    let p = mm.allocate(black_box(layout)).unwrap();
                    // SAFETY: allocated just above with `layout`.
                    unsafe { mm.deallocate(p.cast(), layout) };
                })
            },
        );
        let pool = FixedSizePool::new(size).unwrap();
        group.bench_with_input(BenchmarkId::new("fixed-pool", size), &pool, |b, pool| {
            b.iter(|| {
                let p = pool.allocate().unwrap();
                pool.deallocate(black_box(p)).unwrap();
            })
        });
        for peer in peers() {
            group.bench_with_input(BenchmarkId::new(peer.name, size), &layout, |b, &layout| {
                b.iter(|| {
                    // SAFETY: a non-zero layout; the block is freed with it at once.
                    unsafe {
                        let p = peer.heap.alloc(black_box(layout));
                        assert!(!p.is_null());
                        peer.heap.dealloc(black_box(p), layout);
                    }
                })
            });
        }
    }
    group.finish();
}

fn arena(c: &mut Criterion) {
    const N: u64 = 1000;
    let layout = Layout::from_size_align(64, 8).unwrap();
    let mut group = c.benchmark_group("arena");
    group.throughput(Throughput::Elements(N));
    group
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    let mut arena = Arena::new();
    group.bench_function("tensorpool", |b| {
        b.iter(|| {
            for _ in 0..N {
                black_box(Allocator::allocate(&arena, black_box(layout)).unwrap());
            }
            arena.reset();
        })
    });
    let mut bump = bumpalo::Bump::new();
    group.bench_function("bumpalo", |b| {
        b.iter(|| {
            for _ in 0..N {
                black_box(bump.alloc_layout(black_box(layout)));
            }
            bump.reset();
        })
    });
    group.finish();
}

fn large(c: &mut Criterion) {
    let mm = MemoryManager::default();
    let mut warm = vec![0u8; 64 << 20];
    let mut group = c.benchmark_group("large");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for mib in [1usize, 4, 16, 64] {
        let size = mib << 20;
        let layout = Layout::from_size_align(size, 64).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("warm-touch", mib), &size, |b, &size| {
            b.iter(|| touch(black_box(warm.as_mut_ptr()), size))
        });
        group.bench_with_input(
            BenchmarkId::new("tensorpool", mib),
            &layout,
            |b, &layout| {
                b.iter(|| {
                    let p: NonNull<u8> = mm.allocate(layout).unwrap().cast();
                    touch(p.as_ptr(), layout.size());
                    // SAFETY: allocated just above with `layout`.
                    unsafe { mm.deallocate(p, layout) };
                })
            },
        );
        for peer in peers() {
            group.bench_with_input(BenchmarkId::new(peer.name, mib), &layout, |b, &layout| {
                b.iter(|| {
                    // SAFETY: a non-zero layout; the block is freed with it at once.
                    unsafe {
                        let p = peer.heap.alloc(layout);
                        assert!(!p.is_null());
                        touch(p, layout.size());
                        peer.heap.dealloc(p, layout);
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pairs, arena, large);
criterion_main!(benches);
