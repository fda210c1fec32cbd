//! Replays real traces through candidate configurations and prints the table that
//! justifies the defaults of `Config` (memory efficiency = peak reserved / peak live).
//!
//! ```text
//! cargo run --release -p tensorpool --example choose_defaults -- \
//!     traces/*.csv.gz traces/recorded/*.csv.gz traces/intervals/*.csv.gz
//! ```
//!
//! Pages are not touched: efficiency depends only on addresses, and the strategies
//! never read or write the memory they manage, so traces whose live peak exceeds
//! this machine's memory replay in address space alone.

use std::path::Path;
use std::time::Instant;
use tensorpool::trace::Trace;
use tensorpool::{Config, ConfigBuilder, MemoryManager};

struct Variant {
    name: &'static str,
    config: fn() -> ConfigBuilder,
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// The defaults, and each setting of the small-block engine moved one way or the
/// other from them, one at a time.
fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "default: ≤32K slabs, ≤1M spans, cache ≤32M, slabs ≤256K",
            config: Config::builder,
        },
        Variant {
            name: "best fit only",
            config: || {
                Config::builder()
                    .small_threshold(0)
                    .medium_threshold(0)
                    .huge_threshold(1 << 46)
            },
        },
        Variant {
            name: "slabs ≤4K",
            config: || Config::builder().small_threshold(4 * KIB),
        },
        Variant {
            name: "slabs ≤16K",
            config: || Config::builder().small_threshold(16 * KIB),
        },
        Variant {
            name: "slabs ≤64K",
            config: || Config::builder().small_threshold(64 * KIB),
        },
        Variant {
            name: "no spans",
            config: || Config::builder().medium_threshold(0),
        },
        Variant {
            name: "spans ≤256K",
            config: || Config::builder().medium_threshold(256 * KIB),
        },
        Variant {
            name: "spans ≤4M",
            config: || Config::builder().medium_threshold(4 * MIB),
        },
        Variant {
            name: "no thread cache",
            config: || Config::builder().thread_cache_bytes(0),
        },
        Variant {
            name: "cache ≤1M",
            config: || Config::builder().thread_cache_bytes(MIB),
        },
        Variant {
            name: "slabs ≤64K pages",
            config: || Config::builder().pool_chunk_size(64 * KIB),
        },
        Variant {
            name: "slabs ≤1M pages",
            config: || Config::builder().pool_chunk_size(MIB),
        },
        Variant {
            name: "4/doubling",
            config: || Config::builder().classes_per_doubling(4),
        },
        Variant {
            name: "2M commits",
            config: || Config::builder().commit_granularity(2 * MIB),
        },
        Variant {
            name: "huge >64M",
            config: || Config::builder().huge_threshold(64 * MIB),
        },
    ]
}

/// Replays `trace` through a manager made from `config`; returns the peak reserved
/// bytes and the nanoseconds per event.
fn replay(trace: &Trace, config: Config) -> (usize, f64) {
    let mm = MemoryManager::new(config).expect("the variants are valid");
    let start = Instant::now();
    trace
        .replay(
            |size| mm.allocate_raw(size.max(1), 64),
            |ptr, _| mm.free_raw(ptr.as_ptr()).expect("a live block"),
        )
        .expect("no limit is set");
    let elapsed = start.elapsed();
    let peak = mm.stats().peak_reserved_bytes;
    (peak, elapsed.as_nanos() as f64 / trace.events.len() as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err("usage: choose_defaults TRACE...".into());
    }
    let variants = variants();
    print!("| trace | peak live |");
    for v in &variants {
        print!(" {} |", v.name);
    }
    println!();
    println!("|---|---:|{}", "---:|".repeat(variants.len()));
    // The worst case over the real traces, and apart from it over MiniMalloc's
    // adversarial instances (1 MiB each, built to defeat online allocators).
    let mut worst = [vec![0f64; variants.len()], vec![0f64; variants.len()]];
    let mut times = vec![0f64; variants.len()];
    for path in &paths {
        let trace = Trace::read(path)?;
        let live = trace.peak_live_bytes() as f64;
        let name = Path::new(path)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let group = usize::from(name.starts_with("mm_"));
        print!(
            "| {} | {:.1} MiB |",
            name.trim_end_matches(".csv.gz"),
            live / MIB as f64
        );
        for (i, v) in variants.iter().enumerate() {
            let (reserved, ns) = replay(&trace, (v.config)().build()?);
            let efficiency = reserved as f64 / live;
            worst[group][i] = worst[group][i].max(efficiency);
            times[i] += ns / paths.len() as f64;
            print!(" {efficiency:.3} |");
        }
        println!();
    }
    for (group, label) in worst
        .iter()
        .zip(["worst, real traces", "worst, MiniMalloc"])
    {
        print!("| **{label}** | |");
        for w in group {
            print!(" **{w:.3}** |");
        }
        println!();
    }
    print!("| ns/event (mean, no touch) | |");
    for t in &times {
        print!(" {t:.0} |");
    }
    println!();
    Ok(())
}
