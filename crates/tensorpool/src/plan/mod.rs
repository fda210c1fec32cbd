//! Offline planning: where each buffer of a known sequence of allocations goes in one
//! arena, so that no two buffers live at the same time overlap and the arena is as
//! small as it can be found.
//!
//! - [`greedy`]: the published heuristics (by size, breadth, lifetime, area, and in
//!   allocation order), each buffer at the best-fitting gap; n log n or near it.
//! - [`search`]: a depth-first search over canonical placements in the manner of
//!   MiniMalloc, which improves the heuristics' plan under a budget and proves it
//!   optimal where it can.
//! - [`StepPlan`]: the plan of one step of a program whose steps repeat (found in a
//!   trace from step boundaries or its period, or read from a plan file), what a
//!   [`PlannedArena`](crate::PlannedArena) runs.
//!
//! The `tensorpool plan` command reports all of them side by side for a trace.
//!
//! ```
//! use tensorpool::plan::{search::Budget, Steps, StepPlan};
//! use tensorpool::trace::Trace;
//!
//! // Three steps of the same program (MiniMalloc's `id,lower,upper,size` rows):
//! // 4096 bytes, then 1024 allocated while they live, then 3072 that replace them.
//! let mut rows = String::from("id,lower,upper,size\n");
//! for step in 0..3 {
//!     let (t, id) = (10 * step, 3 * step);
//!     rows += &format!("{id},{t},{},4096\n", t + 2);
//!     rows += &format!("{},{},{},1024\n", id + 1, t + 1, t + 3);
//!     rows += &format!("{},{},{},3072\n", id + 2, t + 2, t + 4);
//! }
//! let trace = Trace::parse(rows.as_bytes())?;
//! let plan = StepPlan::from_trace(&trace, &Steps::Repeating, 64, Budget::steps(10_000))?;
//! assert_eq!(plan.slots().len(), 3);
//! // 4096 and 1024 live together, then 1024 and 3072: 5120 bytes hold the step.
//! assert_eq!(plan.arena_bytes(), 5120);
//! # Ok::<(), tensorpool::Error>(())
//! ```

pub mod greedy;
pub mod search;
mod step;

pub use step::{Slot, StepPlan, Steps, MOST_ALIGN};

use crate::trace::Lifetime;

/// A buffer placed by an offline planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The buffer.
    pub lifetime: Lifetime,
    /// Its offset in the planned arena.
    pub offset: u64,
}

/// Places every buffer largest first, each at the best-fitting gap among the placed
/// buffers that live at the same time (see [`greedy`]).
pub fn greedy_by_size(lifetimes: &[Lifetime]) -> (Vec<Placement>, u64) {
    greedy::greedy(lifetimes, greedy::Order::Size, 1)
}
