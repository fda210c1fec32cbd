//! Chooses how free pages go back, by measurement: `MADV_DONTNEED` (the pages leave
//! at once and read as zero when next touched) against `MADV_FREE` (the kernel takes
//! them only under memory pressure; until then they stay resident and a touch reuses
//! them), on 256 MiB written, given back, then written again.
//!
//! ```text
//! cargo run --release -p tensorpool --example release_advice
//! ```
//!
//! Prints, for each advice, the process's resident memory after the advice, the cost of
//! the advice call, and the time to write every page again, per 4 KiB page.

use std::time::Instant;

const LEN: usize = 256 << 20;
const PAGE: usize = 4096;

/// The process's resident bytes, from `/proc/self/statm`.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    pages * PAGE
}

/// Writes a byte in every page of `len` bytes at `ptr`; the time per page.
fn touch(ptr: *mut u8, len: usize, value: u8) -> f64 {
    let start = Instant::now();
    for off in (0..len).step_by(PAGE) {
        // SAFETY: `off < len`, inside the mapping made by `main`.
        unsafe { ptr.add(off).write_volatile(value) };
    }
    start.elapsed().as_nanos() as f64 / (len / PAGE) as f64
}

fn main() {
    println!("| advice | resident after it | advice call, ns/page | writing again, ns/page |");
    println!("|---|---:|---:|---:|");
    for (name, advice) in [
        ("MADV_DONTNEED", libc::MADV_DONTNEED),
        ("MADV_FREE", libc::MADV_FREE),
    ] {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {LEN} bytes");
        let ptr = ptr.cast::<u8>();
        let first = touch(ptr, LEN, 1);
        let before = resident();
        let start = Instant::now();
        // SAFETY: the whole mapping, page-aligned, holding nothing anyone reads after.
        let done = unsafe { libc::madvise(ptr.cast(), LEN, advice) };
        let call = start.elapsed().as_nanos() as f64 / (LEN / PAGE) as f64;
        assert_eq!(done, 0, "madvise({name})");
        let after = resident();
        let again = touch(ptr, LEN, 2);
        // The mapping's share of the resident memory after the advice.
        let kept = (after + LEN).saturating_sub(before).min(LEN);
        println!(
            "| {name} | {} of {} MiB | {call:.0} | {again:.0} (first write {first:.0}) |",
            kept >> 20,
            LEN >> 20,
        );
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(ptr.cast(), LEN) };
    }
}
