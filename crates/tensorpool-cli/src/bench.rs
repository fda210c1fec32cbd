//! `tensorpool bench`: the microbenchmarks against the peers, printed as ratios.
//!
//! The workloads are those of the criterion benchmarks ([`crate::workloads`]); this
//! command times them directly (the median of several runs) so that a user gets the
//! ratios in seconds, without criterion. `--full` runs longer and repeats more.

use crate::peers::{Kind, Subject};
use crate::workloads;
use std::alloc::Layout;
use std::fmt::Write as _;
use std::time::Duration;
use tensorpool::{Arena, Config};

/// How long to measure.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    /// Runs per measurement; the median is kept.
    pub runs: usize,
    /// Multiplier of the work per run.
    pub scale: u64,
}

impl Effort {
    /// Seconds in all: a first look.
    pub const QUICK: Effort = Effort { runs: 5, scale: 1 };
    /// Longer, steadier.
    pub const FULL: Effort = Effort {
        runs: 15,
        scale: 10,
    };
    /// One short run of everything: checks that the benchmarks work, measures little.
    pub const SMOKE: Effort = Effort { runs: 1, scale: 0 };
}

/// The median time per unit of work: `run(units)` is timed `effort.runs` times.
fn median_per_unit(effort: Effort, units: u64, mut run: impl FnMut(u64) -> Duration) -> f64 {
    // The smoke run does a hundredth of the quick one.
    let units = if effort.scale == 0 {
        (units / 100).max(1)
    } else {
        units
    };
    run(units / 10 + 1); // warm up
    let mut times: Vec<f64> = (0..effort.runs)
        .map(|_| run(units).as_nanos() as f64 / units as f64)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn ns(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} ms", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} µs", v / 1e3)
    } else {
        format!("{v:.1} ns")
    }
}

/// Runs every microbenchmark and returns the report. `progress` is told each step.
pub fn run(effort: Effort, threads: &[usize], mut progress: impl FnMut(&str)) -> String {
    let subjects: Vec<Subject> = Kind::ALL
        .iter()
        .map(|&k| Subject::new(k, &Config::default()).expect("the default config is valid"))
        .collect();
    let mut out = String::new();
    let peers = "system | mimalloc | jemalloc";

    let _ = writeln!(
        out,
        "Allocate + free, hot, 64-byte aligned (time per pair; ratios: tensorpool / peer)\n"
    );
    let _ = writeln!(
        out,
        "| size | tensorpool | {peers} | / system | / mimalloc | / jemalloc |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in [64usize, 256, 1024, 4096, 16384, 65536] {
        progress(&format!("pairs of {size} B"));
        let layout = Layout::from_size_align(size, 64).expect("valid sizes");
        let t: Vec<f64> = subjects
            .iter()
            .map(|s| {
                median_per_unit(effort, 200_000 * effort.scale.max(1), |n| {
                    workloads::pairs(s, layout, n)
                })
            })
            .collect();
        row(&mut out, &format!("{size} B"), &t);
    }

    progress("arena");
    let layout = Layout::from_size_align(64, 8).expect("a valid layout");
    let mut arena = Arena::new();
    let mut bump = bumpalo::Bump::new();
    let round = workloads::ARENA_ROUND as f64;
    let tp = median_per_unit(effort, 200 * effort.scale.max(1), |n| {
        workloads::arena(&mut arena, layout, n)
    }) / round;
    let bp = median_per_unit(effort, 200 * effort.scale.max(1), |n| {
        workloads::bumpalo(&mut bump, layout, n)
    }) / round;
    let _ = writeln!(out, "\nArena allocations of 64 B (time per allocation)\n");
    let _ = writeln!(
        out,
        "| tensorpool | bumpalo | tensorpool / bumpalo |\n|---:|---:|---:|"
    );
    let _ = writeln!(out, "| {} | {} | {:.2}x |", ns(tp), ns(bp), tp / bp);

    let _ = writeln!(
        out,
        "\nLarge blocks: allocate, write every page, free (time per round)\n"
    );
    let _ = writeln!(
        out,
        "| size | tensorpool | {peers} | / system | / mimalloc | / jemalloc |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for mib in [1usize, 4, 16, 64] {
        progress(&format!("large blocks of {mib} MiB"));
        let rounds = (256 / mib as u64).max(2) * effort.scale.max(1);
        let t: Vec<f64> = subjects
            .iter()
            .map(|s| median_per_unit(effort, rounds, |n| workloads::large(s, mib << 20, n)))
            .collect();
        row(&mut out, &format!("{mib} MiB"), &t);
    }

    let _ = writeln!(out, "\nThreads allocating and freeing their own blocks (time per round of one pair per thread)\n");
    let _ = writeln!(
        out,
        "| threads | tensorpool | {peers} | / system | / mimalloc | / jemalloc |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut per_count = Vec::new();
    for &n in threads {
        progress(&format!("{n} threads"));
        let t: Vec<f64> = subjects
            .iter()
            .map(|s| {
                median_per_unit(effort, 200_000 * effort.scale.max(1), |r| {
                    workloads::local(s, n, r)
                })
            })
            .collect();
        row(&mut out, &n.to_string(), &t);
        per_count.push((n, t));
    }
    if let [(n1, t1), rest @ ..] = per_count.as_slice() {
        for (n, t) in rest {
            let scaling: Vec<String> = Kind::ALL
                .iter()
                .zip(t1.iter().zip(t))
                .map(|(k, (&a, &b))| {
                    format!("{} {:.2}x", k.name(), (*n as f64 / *n1 as f64) * a / b)
                })
                .collect();
            let _ = writeln!(
                out,
                "\nThroughput with {n} threads relative to {n1}: {}",
                scaling.join(", ")
            );
        }
    }
    progress("producer/consumer");
    let t: Vec<f64> = subjects
        .iter()
        .map(|s| {
            median_per_unit(effort, 100_000 * effort.scale.max(1), |b| {
                workloads::producer_consumer(s, b)
            })
        })
        .collect();
    let _ = writeln!(
        out,
        "\nProducer/consumer: one thread allocates, another frees (time per block)\n"
    );
    let _ = writeln!(
        out,
        "| | tensorpool | {peers} | / system | / mimalloc | / jemalloc |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    row(&mut out, "blocks", &t);
    out
}

/// A table row: tensorpool's time, the peers', and tensorpool's ratio to each.
fn row(out: &mut String, label: &str, times: &[f64]) {
    let cells: Vec<String> = times.iter().map(|&t| ns(t)).collect();
    let ratios: Vec<String> = times[1..]
        .iter()
        .map(|&t| format!("{:.2}x", times[0] / t))
        .collect();
    let _ = writeln!(
        out,
        "| {label} | {} | {} |",
        cells.join(" | "),
        ratios.join(" | ")
    );
}
