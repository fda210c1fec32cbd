//! Threads: tensorpool's manager (its thread-owned slabs) against the system allocator,
//! mimalloc and jemalloc, in one process (workloads in `src/workloads.rs`):
//!
//! - `local/<allocator>/<threads>`: each thread allocates 64 blocks of mixed sizes
//!   (64 B to 16 KiB) and frees them; time per round of 64 pairs per thread.
//! - `producer-consumer/<allocator>`: one thread allocates, another frees what it
//!   receives; time per block.
//!
//! Thread counts from `TENSORPOOL_BENCH_THREADS` (default `1,2`: this machine has two
//! cores). `python3 scripts/bench_table.py` prints the ratios.

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use std::time::Duration;
use tensorpool::Config;
use tensorpool_cli::peers::{Kind, Subject};
use tensorpool_cli::workloads;

fn thread_counts() -> Vec<usize> {
    std::env::var("TENSORPOOL_BENCH_THREADS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2])
}

/// A benchmark group with the settings both thread benchmarks use: threads make
/// samples noisy, so fewer and longer ones.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    group
}

fn local(c: &mut Criterion) {
    let mut group = group(c, "local");
    for kind in Kind::ALL {
        let subject = Subject::new(kind, &Config::default()).unwrap();
        for threads in thread_counts() {
            group.bench_with_input(
                BenchmarkId::new(kind.name(), threads),
                &threads,
                |b, &threads| b.iter_custom(|rounds| workloads::local(&subject, threads, rounds)),
            );
        }
    }
    group.finish();
}

fn producer_consumer(c: &mut Criterion) {
    let mut group = group(c, "producer-consumer");
    for kind in Kind::ALL {
        let subject = Subject::new(kind, &Config::default()).unwrap();
        group.bench_function(kind.name(), |b| {
            b.iter_custom(|blocks| workloads::producer_consumer(&subject, blocks))
        });
    }
    group.finish();
}

criterion_group!(benches, local, producer_consumer);
criterion_main!(benches);
