//! The workloads of `global_workloads` with mimalloc as the process's allocator
//! (`scripts/global_bench.py` runs every allocator's example side by side).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "global_workloads/mod.rs"]
mod workloads;

fn main() {
    workloads::run();
}
