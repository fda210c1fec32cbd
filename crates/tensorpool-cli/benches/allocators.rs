//! tensorpool against its peers, measured in one process (workloads shared with
//! `tensorpool bench`, see `src/workloads.rs`):
//!
//! - `pairs/<allocator>/<size>`: allocate and free one block of 64 B to 256 KiB,
//!   64-byte aligned, hot; tensorpool through its manager (`Allocator` path) and as a
//!   standalone `FixedSizePool` (`fixed-pool`); `pairs/<allocator>-held/<size>`:
//!   allocate 64 blocks, then free them;
//! - `raw/<allocator>/<size>`: tensorpool's `allocate_raw` + `free_raw` against the
//!   peers' `malloc` + `free`;
//! - `arena/<allocator>`: 1000 allocations of 16 B to 4 KiB then a reset, tensorpool's
//!   `Arena` through `Allocator` against bumpalo's `alloc_layout` (time per round);
//! - `large/<allocator>/<MiB>`: allocate 1 to 64 MiB, write one byte in every page,
//!   free; `warm-touch` writes the pages of memory already mapped.
//!
//! `cargo bench -p tensorpool-cli --bench allocators`; `python3 scripts/bench_table.py`
//! prints the ratios.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::alloc::Layout;
use std::time::Duration;
use tensorpool::{Arena, Config, FixedSizePool};
use tensorpool_cli::peers::{Kind, Subject};
use tensorpool_cli::workloads;

fn subjects() -> Vec<Subject> {
    Kind::ALL
        .iter()
        .map(|&k| Subject::new(k, &Config::default()).expect("the default config is valid"))
        .collect()
}

fn pairs(c: &mut Criterion) {
    let subjects = subjects();
    let mut group = c.benchmark_group("pairs");
    group
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for size in tensorpool_cli::bench::PAIR_SIZES {
        let layout = Layout::from_size_align(size, 64).unwrap();
        for s in &subjects {
            group.bench_with_input(
                BenchmarkId::new(s.kind().name(), size),
                &layout,
                |b, &layout| b.iter_custom(|n| workloads::pairs(s, layout, n)),
            );
        }
        group.throughput(Throughput::Elements(workloads::HELD as u64));
        for s in &subjects {
            group.bench_with_input(
                BenchmarkId::new(format!("{}-held", s.kind().name()), size),
                &layout,
                |b, &layout| b.iter_custom(|n| workloads::held(s, layout, n)),
            );
        }
        group.throughput(Throughput::Elements(1));
        let pool = FixedSizePool::new(size).unwrap();
        group.bench_with_input(BenchmarkId::new("fixed-pool", size), &pool, |b, pool| {
            b.iter_custom(|n| workloads::pool_pairs(pool, n))
        });
    }
    group.finish();
}

fn raw(c: &mut Criterion) {
    let subjects = subjects();
    let mut group = c.benchmark_group("raw");
    group
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for size in tensorpool_cli::bench::RAW_SIZES {
        for s in &subjects {
            group.bench_with_input(
                BenchmarkId::new(s.kind().name(), size),
                &size,
                |b, &size| b.iter_custom(|n| workloads::raw_pairs(s, size, n)),
            );
        }
    }
    group.finish();
}

fn arena(c: &mut Criterion) {
    let mut group = c.benchmark_group("arena");
    group.throughput(Throughput::Elements(workloads::ARENA_ROUND));
    group
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    let mut arena = Arena::new();
    group.bench_function("tensorpool", |b| {
        b.iter_custom(|n| workloads::arena(&mut arena, n))
    });
    let mut bump = bumpalo::Bump::new();
    group.bench_function("bumpalo", |b| {
        b.iter_custom(|n| workloads::bumpalo(&mut bump, n))
    });
    group.finish();
}

fn large(c: &mut Criterion) {
    let subjects = subjects();
    let mut warm = vec![0u8; 64 << 20];
    let mut group = c.benchmark_group("large");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for mib in [1usize, 4, 16, 64] {
        let size = mib << 20;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("warm-touch", mib), &size, |b, &size| {
            b.iter_custom(|n| workloads::warm_touch(&mut warm, size, n))
        });
        for s in &subjects {
            group.bench_with_input(BenchmarkId::new(s.kind().name(), mib), &size, |b, &size| {
                b.iter_custom(|n| workloads::large(s, size, n))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pairs, raw, arena, large);
criterion_main!(benches);
