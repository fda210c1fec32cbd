//! The main job until the command-line tool lands: replays a recorded tensor workload
//! (three training steps of a PyTorch `nn.TransformerEncoder`, shipped in the binary)
//! through tensorpool and through the system allocator, touching every page of every
//! block as real tensors do, and prints the comparison and tensorpool's summary.
//!
//! ```text
//! cargo run --release -p tensorpool --example workload [REPEATS]
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::time::Instant;
use tensorpool::bytes::format_bytes;
use tensorpool::trace::Trace;
use tensorpool::MemoryManager;

const TRACE: &[u8] = include_bytes!("../../../traces/transformer_train.csv.gz");
const PAGE: usize = 4096;

fn touch(ptr: NonNull<u8>, size: usize) {
    for offset in (0..size).step_by(PAGE) {
        // SAFETY: `offset < size`, inside a live block of `size` bytes.
        unsafe { ptr.as_ptr().add(offset).write_volatile(1) };
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).map_or(Ok(5), |a| a.parse())?;
    let trace = Trace::parse(TRACE)?;
    let events = trace.events.len() * repeats;
    println!(
        "workload: transformer training, 3 steps, {} events x {repeats} repeats, peak live {}",
        trace.events.len(),
        format_bytes(trace.peak_live_bytes() as usize)
    );

    let mm = MemoryManager::default();
    let start = Instant::now();
    for _ in 0..repeats {
        trace.replay(
            |size| {
                let ptr = mm.allocate_raw(size.max(1), 64)?;
                touch(ptr, size);
                Ok::<_, tensorpool::Error>(ptr)
            },
            |ptr, _| {
                mm.free_raw(ptr.as_ptr())
                    .expect("the trace frees live blocks")
            },
        )?;
    }
    let tensorpool_ns = start.elapsed().as_nanos() as f64 / events as f64;

    let start = Instant::now();
    for _ in 0..repeats {
        trace.replay(
            |size| {
                let layout =
                    Layout::from_size_align(size.max(1), 64).expect("trace sizes are valid");
                // SAFETY: a non-zero layout; freed below with the same layout.
                let ptr = NonNull::new(unsafe { System.alloc(layout) }).ok_or("out of memory")?;
                touch(ptr, size);
                Ok::<_, &str>(ptr)
            },
            |ptr, size| {
                let layout = Layout::from_size_align(size.max(1), 64).expect("as allocated");
                // SAFETY: allocated above with this layout.
                unsafe { System.dealloc(ptr.as_ptr(), layout) }
            },
        )?;
    }
    let system_ns = start.elapsed().as_nanos() as f64 / events as f64;

    let stats = mm.stats();
    println!(
        "tensorpool: {tensorpool_ns:.0} ns/event; system allocator: {system_ns:.0} ns/event; \
         ratio {:.2}x",
        tensorpool_ns / system_ns
    );
    println!(
        "peak reserved {} for a peak of {} live: efficiency {:.3}",
        format_bytes(stats.peak_reserved_bytes),
        format_bytes(trace.peak_live_bytes() as usize),
        stats.peak_reserved_bytes as f64 / trace.peak_live_bytes() as f64
    );
    println!("{}", mm.summary());
    Ok(())
}
