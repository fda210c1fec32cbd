//! What the allocator tells about itself: the counters every tier keeps and their
//! totals ([`stats`]), the picture of every segment and block ([`snapshot`]), and
//! debug mode's guards, poison and leak reports ([`debug`]). These are vocabulary
//! types and pure functions over them; they use only [`util`](crate::util), so
//! that every layer above (errors included) can report in their terms.

pub mod debug;
pub mod snapshot;
pub mod stats;
