//! Chooses the release delay by measurement: a loop of steps that each allocate and
//! write 64 MiB in 8 MiB tensors, then free them, run under every delay and every step
//! period, with the program idle for the rest of each step (a server between
//! requests) or busy with small blocks (a training step's compute). The clock is
//! injected ([`ManualClock`]), so a period of seconds costs no waiting; the time
//! measured is the real cost of the steps, page faults included.
//!
//! ```text
//! cargo run --release -p tensorpool --example release_delay
//! ```
//!
//! Prints two tables (idle, busy): per step period, each delay's time per step
//! relative to never releasing, and the memory that stays resident between steps.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tensorpool::clock::ManualClock;
use tensorpool::{Config, MemoryManager};

const MIB: usize = 1 << 20;
const TENSOR: usize = 8 * MIB;
const TENSORS: usize = 8;
const STEPS: usize = 24;

/// Runs the loop; returns the mean real time per step (the first four steps, which
/// fault the memory in under every delay, left out) and the resident bytes at the end
/// of the last step's gap, where the program is `busy` allocating small blocks or idle.
fn run(delay: Option<Duration>, period: Duration, busy: bool) -> (Duration, usize) {
    let clock = Arc::new(ManualClock::new());
    let config = Config::builder()
        .release_delay_ms(delay.map(|d| d.as_millis() as u64))
        .build()
        .expect("a valid config");
    let mm = MemoryManager::with_clock(config, clock.clone()).expect("a manager");
    let page = 4096;
    let mut timed = Duration::ZERO;
    for step in 0..STEPS {
        let start = Instant::now();
        let blocks: Vec<_> = (0..TENSORS)
            .map(|_| mm.allocate_raw(TENSOR, 64).expect("memory"))
            .collect();
        for b in &blocks {
            for off in (0..TENSOR).step_by(page) {
                // SAFETY: a live block of TENSOR bytes.
                unsafe { b.as_ptr().add(off).write_volatile(step as u8) };
            }
        }
        for b in blocks {
            mm.free_raw(b.as_ptr()).expect("a live block");
        }
        if step >= 4 {
            timed += start.elapsed();
        }
        // The rest of the step: the program computes (allocating small blocks, if
        // busy), the memory sits free. The policy's passes run as they would, a
        // half-delay apart.
        let pass = delay.map_or(period, |d| (d / 2).max(Duration::from_millis(10)));
        let mut waited = Duration::ZERO;
        while waited < period {
            if busy {
                let small = mm.allocate_raw(4096, 64).expect("memory");
                mm.free_raw(small.as_ptr()).expect("a live block");
            }
            let dt = pass.min(period - waited);
            clock.advance(dt);
            waited += dt;
            mm.release_idle();
        }
    }
    (timed / (STEPS - 4) as u32, mm.resident_bytes())
}

fn main() {
    let delays: [(&str, Option<Duration>); 6] = [
        ("10 ms", Some(Duration::from_millis(10))),
        ("100 ms", Some(Duration::from_millis(100))),
        ("500 ms", Some(Duration::from_millis(500))),
        ("1 s", Some(Duration::from_secs(1))),
        ("10 s", Some(Duration::from_secs(10))),
        ("never", None),
    ];
    let periods = [
        ("10 ms", Duration::from_millis(10)),
        ("100 ms", Duration::from_millis(100)),
        ("500 ms", Duration::from_millis(500)),
        ("2 s", Duration::from_secs(2)),
        ("20 s", Duration::from_secs(20)),
    ];
    for (title, busy) in [
        ("The program idle between steps", false),
        (
            "The program busy between steps (a small block allocated and freed at each pass)",
            true,
        ),
    ] {
        println!("{title}:\n");
        print!("| step period |");
        for (name, _) in &delays {
            print!(" delay {name} |");
        }
        println!();
        println!("|---|{}", "---:|".repeat(delays.len()));
        for (pname, period) in periods {
            let (never, _) = run(None, period, busy);
            print!("| {pname} |");
            for (_, delay) in delays {
                let (t, resident) = run(delay, period, busy);
                print!(
                    " {:.2}x, {} MiB |",
                    t.as_secs_f64() / never.as_secs_f64(),
                    resident / MIB
                );
            }
            println!();
        }
        println!();
    }
    println!(
        "Each cell: time per step of {} MiB allocated, written and freed (mean of {} steps) \
         relative to never releasing, and the memory resident while the step's memory sits free.",
        TENSOR * TENSORS / MIB,
        STEPS - 4
    );
}
