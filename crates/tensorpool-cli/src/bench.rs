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

/// Block sizes of the pair benchmarks (64 B to 256 KiB: the range).
pub const PAIR_SIZES: [usize; 7] = [64, 256, 1024, 4096, 16 << 10, 64 << 10, 256 << 10];
/// Sizes of the raw (sizeless free) pairs.
pub const RAW_SIZES: [usize; 5] = [64, 256, 1024, 4096, 64 << 10];
/// Sizes of the large touched blocks, in MiB.
pub const LARGE_MIB: [usize; 4] = [1, 4, 16, 64];

/// The number of steps [`run`] reports to its progress callback.
pub fn steps(threads: &[usize]) -> usize {
    2 * PAIR_SIZES.len() + RAW_SIZES.len() + 1 + LARGE_MIB.len() + threads.len() + 1
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

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

const PEERS: &str = "system | mimalloc | jemalloc";
const HEADER_RATIOS: &str = "/ system | / mimalloc | / jemalloc";

fn header(out: &mut String, first: &str) {
    let _ = writeln!(out, "| {first} | tensorpool | {PEERS} | {HEADER_RATIOS} |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
}

/// Runs every microbenchmark and returns the report. `progress` is told each of the
/// [`steps`] steps.
pub fn run(effort: Effort, threads: &[usize], mut progress: impl FnMut(&str)) -> String {
    let subjects: Vec<Subject> = Kind::ALL
        .iter()
        .map(|&k| Subject::new(k, &Config::default()).expect("the default config is valid"))
        .collect();
    let scale = effort.scale.max(1);
    let mut out = String::new();

    let _ = writeln!(
        out,
        "Allocate + free, hot, 64-byte aligned (time per pair; ratios: tensorpool / peer)\n"
    );
    header(&mut out, "size");
    for bytes in PAIR_SIZES {
        progress(&format!("pairs of {}", size(bytes)));
        let layout = Layout::from_size_align(bytes, 64).expect("valid sizes");
        let t: Vec<f64> = subjects
            .iter()
            .map(|s| median_per_unit(effort, 200_000 * scale, |n| workloads::pairs(s, layout, n)))
            .collect();
        row(&mut out, &size(bytes), &t);
    }

    let _ = writeln!(
        out,
        "\nAllocate {} blocks, then free them, 64-byte aligned (time per pair)\n",
        workloads::HELD
    );
    header(&mut out, "size");
    for bytes in PAIR_SIZES {
        progress(&format!(
            "{} held blocks of {}",
            workloads::HELD,
            size(bytes)
        ));
        let layout = Layout::from_size_align(bytes, 64).expect("valid sizes");
        let per_round = workloads::HELD as f64;
        let t: Vec<f64> = subjects
            .iter()
            .map(|s| {
                median_per_unit(effort, 4_000 * scale, |n| workloads::held(s, layout, n))
                    / per_round
            })
            .collect();
        row(&mut out, &size(bytes), &t);
    }

    let _ = writeln!(
        out,
        "\nSizeless frees: tensorpool's allocate_raw + free_raw (64-byte aligned, every free \
         checked) against each peer's malloc + free (time per pair)\n"
    );
    header(&mut out, "size");
    for bytes in RAW_SIZES {
        progress(&format!("raw pairs of {}", size(bytes)));
        let t: Vec<f64> = subjects
            .iter()
            .map(|s| {
                median_per_unit(effort, 200_000 * scale, |n| {
                    workloads::raw_pairs(s, bytes, n)
                })
            })
            .collect();
        row(&mut out, &size(bytes), &t);
    }

    progress("arena");
    let mut arena = Arena::new();
    let mut bump = bumpalo::Bump::new();
    let round = workloads::ARENA_ROUND as f64;
    let tp = median_per_unit(effort, 200 * scale, |n| workloads::arena(&mut arena, n)) / round;
    let bp = median_per_unit(effort, 200 * scale, |n| workloads::bumpalo(&mut bump, n)) / round;
    let _ = writeln!(
        out,
        "\nArena allocations of 16 B to 4 KiB through `Allocator` on `&Arena`, against \
         bumpalo's alloc_layout (time per allocation)\n"
    );
    let _ = writeln!(
        out,
        "| tensorpool | bumpalo | tensorpool / bumpalo |\n|---:|---:|---:|"
    );
    let _ = writeln!(out, "| {} | {} | {:.2}x |", ns(tp), ns(bp), tp / bp);

    let _ = writeln!(
        out,
        "\nLarge blocks: allocate, write every page, free (time per round)\n"
    );
    header(&mut out, "size");
    for mib in LARGE_MIB {
        progress(&format!("large blocks of {mib} MiB"));
        let rounds = (256 / mib as u64).max(2) * scale;
        let t: Vec<f64> = subjects
            .iter()
            .map(|s| median_per_unit(effort, rounds, |n| workloads::large(s, mib << 20, n)))
            .collect();
        row(&mut out, &format!("{mib} MiB"), &t);
    }

    let _ = writeln!(
        out,
        "\nThreads, each allocating {} blocks of mixed sizes (64 B to 16 KiB) and then \
         freeing them (millions of pairs per second, all threads)\n",
        workloads::HELD
    );
    let _ = writeln!(out, "| threads | tensorpool | {PEERS} |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
    let mut per_count = Vec::new();
    for &n in threads {
        progress(&format!("{n} threads"));
        let rounds = 2_000 * scale;
        let pairs = (n as u64 * rounds * workloads::HELD as u64) as f64;
        let rates: Vec<f64> = subjects
            .iter()
            .map(|s| {
                let per_round =
                    median_per_unit(effort, rounds, |r| workloads::local(s, n, r)) * rounds as f64;
                pairs / per_round * 1e3
            })
            .collect();
        let cells: Vec<String> = rates.iter().map(|r| format!("{r:.1} M/s")).collect();
        let _ = writeln!(out, "| {n} | {} |", cells.join(" | "));
        per_count.push((n, rates));
    }
    if let [(n1, r1), rest @ ..] = per_count.as_slice() {
        for (n, r) in rest {
            let scaling: Vec<String> = Kind::ALL
                .iter()
                .zip(r1.iter().zip(r))
                .map(|(k, (&a, &b))| format!("{} {:.2}x", k.name(), b / a))
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
            median_per_unit(effort, 100_000 * scale, |b| {
                workloads::producer_consumer(s, b)
            })
        })
        .collect();
    let _ = writeln!(
        out,
        "\nProducer/consumer: one thread allocates, another frees every block (time per \
         block)\n"
    );
    header(&mut out, "");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_bar_counts_the_steps_run() {
        let threads = [1, 2];
        let mut told = Vec::new();
        let report = run(Effort::SMOKE, &threads, |step| told.push(step.to_string()));
        assert_eq!(told.len(), steps(&threads), "steps told: {told:?}");
        assert_eq!(told.first().map(String::as_str), Some("pairs of 64 B"));
        assert_eq!(told.last().map(String::as_str), Some("producer/consumer"));
        assert!(report.starts_with("Allocate + free, hot"), "{report}");
    }
}
