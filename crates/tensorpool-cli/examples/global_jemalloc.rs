//! The workloads of `global_workloads` with jemalloc as the process's allocator
//! (`scripts/global_bench.py` runs every allocator's example side by side).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "global_workloads/mod.rs"]
mod workloads;

fn main() {
    workloads::run();
}
