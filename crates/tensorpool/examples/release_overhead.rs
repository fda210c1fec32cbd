//! What the release policy costs a replay: each trace through two managers in one
//! process, one with the default policy (its passes on the trace's own clock), one
//! that gives memory back only when asked (`release_delay_ms` unset), repetitions
//! alternating between them, every page of every block written.
//!
//! ```text
//! cargo run --release -p tensorpool --example release_overhead [-- TRACE ... [--reps N]]
//! ```
//!
//! With no trace, every trace with times under `traces/` (RMM CSV, Chrome JSON).
//! Alternating in one process puts both sides through the same noise of a shared
//! machine, which separate processes (`tensorpool replay --config`) do not; which side
//! goes first alternates too, and the first repetition of each warms it up and is not
//! counted. Prints a Markdown table: the least and the median time per event of each
//! side, their ratios, the page faults per repetition of each, and the bytes the
//! policy gave back.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tensorpool::clock::{Clock, ManualClock};
use tensorpool::trace::{Event, Trace};
use tensorpool::{Config, MemoryManager};

const PAGE: usize = 4096;

/// A manager on a clock of its own.
struct Side {
    mm: MemoryManager,
    clock: Arc<ManualClock>,
    times: Vec<f64>,
    faults: u64,
}

/// The process's minor page faults so far.
fn minor_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let done = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(done, 0, "getrusage");
    // SAFETY: initialised by the successful call above.
    unsafe { usage.assume_init() }.ru_minflt as u64
}

impl Side {
    fn new(release_delay_ms: Option<u64>) -> Side {
        let clock = Arc::new(ManualClock::new());
        let config = Config::builder()
            .release_delay_ms(release_delay_ms)
            .build()
            .expect("a valid config");
        let mm = MemoryManager::with_clock(config, clock.clone()).expect("a manager");
        Side {
            mm,
            clock,
            times: Vec::new(),
            faults: 0,
        }
    }

    /// Replays `trace` once, the clock moving along its times from where it stands;
    /// records the time per event and the page faults if `counted`.
    fn replay(&mut self, trace: &Trace, live: &mut [Option<NonNull<u8>>], counted: bool) {
        let (base, first) = (self.clock.now(), trace.times[0]);
        let faults = minor_faults();
        let start = Instant::now();
        for (event, &time) in trace.events.iter().zip(&trace.times) {
            self.clock
                .set(base + Duration::from_nanos(time.saturating_sub(first)));
            match *event {
                Event::Alloc { id, size } => {
                    let size = (size as usize).max(1);
                    let ptr = self.mm.allocate_raw(size, 64).expect("memory");
                    for off in (0..size).step_by(PAGE) {
                        // SAFETY: `off < size`, inside the block just allocated.
                        unsafe { ptr.as_ptr().add(off).write_volatile(1) };
                    }
                    live[id as usize] = Some(ptr);
                }
                Event::Free { id } => {
                    if let Some(ptr) = live[id as usize].take() {
                        self.mm.free_raw(ptr.as_ptr()).expect("a live block");
                    }
                }
            }
        }
        for ptr in live.iter_mut().filter_map(Option::take) {
            self.mm.free_raw(ptr.as_ptr()).expect("a live block");
        }
        let time = start.elapsed().as_nanos() as f64 / trace.events.len().max(1) as f64;
        if counted {
            self.times.push(time);
            self.faults += minor_faults() - faults;
        }
    }

    fn least_and_median(&mut self) -> (f64, f64) {
        self.times.sort_by(f64::total_cmp);
        (self.times[0], self.times[self.times.len() / 2])
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut reps = 20;
    if let Some(i) = args.iter().position(|a| a == "--reps") {
        reps = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .expect("--reps N");
        args.drain(i..i + 2);
    }
    if args.is_empty() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../traces");
        for dir in [root.to_string(), format!("{root}/recorded")] {
            let mut found: Vec<String> = std::fs::read_dir(&dir)
                .expect("the traces folder")
                .filter_map(|e| e.ok().map(|e| e.path().display().to_string()))
                .filter(|p| p.ends_with(".csv.gz") || p.ends_with(".json"))
                .collect();
            found.sort();
            args.extend(found);
        }
    }
    println!("| trace | ns/event, policy (least / median) | only when asked (least / median) | ratio (least / median) | page faults / repetition | given back |");
    println!("|---|---:|---:|---:|---:|---:|");
    for path in args {
        let trace = Trace::read(&path).expect("a readable trace");
        if trace.times.is_empty() || !trace.format.times_are_nanoseconds() {
            continue;
        }
        let mut live = vec![None; trace.block_sizes().len()];
        let mut policy = Side::new(Config::default().release_delay_ms);
        let mut never = Side::new(None);
        for rep in 0..=reps {
            let counted = rep > 0;
            if rep % 2 == 0 {
                policy.replay(&trace, &mut live, counted);
                never.replay(&trace, &mut live, counted);
            } else {
                never.replay(&trace, &mut live, counted);
                policy.replay(&trace, &mut live, counted);
            }
        }
        let (pl, pm) = policy.least_and_median();
        let (nl, nm) = never.least_and_median();
        let stats = policy.mm.stats();
        println!(
            "| {} | {pl:.1} / {pm:.1} | {nl:.1} / {nm:.1} | {:.3}x / {:.3}x | {} / {} | {} in {} passes |",
            std::path::Path::new(&path)
                .file_name()
                .map_or(path.clone(), |n| n.to_string_lossy().into_owned()),
            pl / nl,
            pm / nm,
            policy.faults / reps as u64,
            never.faults / reps as u64,
            tensorpool::bytes::format_bytes(stats.released_bytes as usize),
            stats.num_releases
        );
    }
}
