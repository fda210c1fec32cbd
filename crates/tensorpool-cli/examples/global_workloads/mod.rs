//! Workloads for a process-wide allocator, shared by the `global_*` examples, each of
//! which installs another `#[global_allocator]` (`scripts/global_bench.py` runs them
//! side by side). Each workload prints its best time of seven runs, after one warm-up,
//! as a JSON line.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

fn time(name: &str, f: impl Fn()) {
    f();
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{{\"workload\": \"{name}\", \"best_ms\": {:.3}}}",
        best * 1e3
    );
}

/// A xorshift step.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs every workload, then prints the process's peak resident memory.
pub fn run() {
    time("2M pairs of 64 B boxes", || {
        for i in 0..2_000_000u64 {
            drop(black_box(Box::new([i; 8])));
        }
    });
    time("2M replacements among 1,000 held, 16 B-4 KiB", || {
        let mut held: Vec<Vec<u8>> = (0..1000).map(|_| Vec::new()).collect();
        let mut x = 12345u64;
        for _ in 0..2_000_000 {
            let r = next(&mut x);
            held[(r >> 20) as usize % 1000] = Vec::with_capacity(16 + (r % 4080) as usize);
        }
    });
    time("BTreeMap of 200k string pairs", || {
        let mut m = BTreeMap::new();
        for i in 0..200_000u64 {
            m.insert(format!("key-{i:08}"), i.to_string());
        }
        black_box(m.len());
    });
    time("4 Vec<u64> grown to 64 MiB by push", || {
        for _ in 0..4 {
            let mut v = Vec::new();
            for i in 0..(64u64 << 20) / 8 {
                v.push(i);
            }
            black_box(v.len());
        }
    });
    time("tensors: 500 steps of 16 arrays, 4 KiB-4 MiB", || {
        let mut x = 99u64;
        for _ in 0..500 {
            let step: Vec<Vec<f32>> = (0..16)
                .map(|_| vec![1.0f32; 1024 << (next(&mut x) % 11)])
                .collect();
            black_box(step.len());
        }
    });
    time("producer/consumer: 500k boxes of 128 B", || {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Box<[u64; 16]>>(1024);
        let consumer = std::thread::spawn(move || {
            let mut n = 0u64;
            while let Ok(b) = rx.recv() {
                n = n.wrapping_add(b[0]);
            }
            n
        });
        for i in 0..500_000u64 {
            tx.send(Box::new([i; 16])).unwrap();
        }
        drop(tx);
        black_box(consumer.join().unwrap());
    });
    time("2 threads: 1M replacements each among 256 held", || {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut held: Vec<Vec<u8>> = (0..256).map(|_| Vec::new()).collect();
                    let mut x = 777 + t;
                    for _ in 0..1_000_000 {
                        let r = next(&mut x);
                        held[(r >> 24) as usize % 256] =
                            Vec::with_capacity(16 + (r % 16_368) as usize);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    println!(
        "{{\"workload\": \"peak RSS (MiB)\", \"value\": {:.1}}}",
        peak_rss_kib() as f64 / 1024.0
    );
}
