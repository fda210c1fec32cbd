//! The `tensorpool` command-line tool, as a library: replaying allocation traces
//! through tensorpool and its peers, planning configurations, benchmarking, and
//! running any program on tensorpool ([`run`]).
//!
//! The binary (`src/main.rs`) is a thin layer of argument parsing over these modules;
//! the benchmarks in `benches/` share the workloads of [`workloads`].

pub mod bench;
pub mod error;
pub mod peers;
pub mod plan;
pub mod plot;
pub mod replay;
pub mod run;
pub mod workloads;
