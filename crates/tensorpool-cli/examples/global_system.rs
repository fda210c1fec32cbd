//! The workloads of `global_workloads` with system as the process's allocator
//! (`scripts/global_bench.py` runs every allocator's example side by side).

// glibc's malloc: the default allocator.

#[path = "global_workloads/mod.rs"]
mod workloads;

fn main() {
    workloads::run();
}
