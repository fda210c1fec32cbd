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
//!   free; `warm-touch` writes the pages of memory already mapped;
//! - `step/<trace>/<allocator>`: one step of a real repeating trace (its period
//!   found), its allocations and frees in order, time per event: a `PlannedArena`
//!   running the step's plan (`planned`), bumpalo (frees ignored, a reset after the
//!   step), the manager and the peers.
//!
//! `cargo bench -p tensorpool-cli --bench allocators`; `python3 scripts/bench_table.py`
//! prints the ratios.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::alloc::Layout;
use std::time::Duration;
use tensorpool::plan::{search::Budget, StepPlan, Steps};
use tensorpool::trace::Trace;
use tensorpool::{Arena, Config, FixedSizePool, MemoryManager, PlannedArena};
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

fn step(c: &mut Criterion) {
    let subjects = subjects();
    let mut group = c.benchmark_group("step");
    group
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    for name in ["transformer_train", "sk_mlp"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../traces")
            .join(format!("{name}.csv.gz"));
        let trace = Trace::read(&path).expect("the project's traces");
        let plan = StepPlan::from_trace(&trace, &Steps::Repeating, 64, Budget::steps(20_000))
            .expect("the trace repeats");
        let (cut, planned) = plan.source().expect("planned from the trace");
        let ops = workloads::StepOps::new(&trace, cut[planned].clone());
        group.throughput(Throughput::Elements(ops.events() as u64));
        let mm = MemoryManager::new(Config::default()).expect("the default config");
        let arena = PlannedArena::new(&mm, plan).expect("memory for the region");
        group.bench_function(BenchmarkId::new(name, "planned"), |b| {
            b.iter_custom(|n| workloads::step_planned(&arena, &ops, n))
        });
        let mut bump = bumpalo::Bump::new();
        group.bench_function(BenchmarkId::new(name, "bumpalo"), |b| {
            b.iter_custom(|n| workloads::step_bumpalo(&mut bump, &ops, n))
        });
        for s in &subjects {
            group.bench_function(BenchmarkId::new(name, s.kind().name()), |b| {
                b.iter_custom(|n| workloads::step(s, &ops, n))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pairs, raw, arena, large, step);
criterion_main!(benches);
