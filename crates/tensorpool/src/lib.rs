//! tensorpool: a memory allocator for tensors.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod address_map;
pub mod arena;
pub mod best_fit;
pub mod bytes;
pub mod config;
pub mod error;
pub mod fixed_pool;
pub mod huge;
pub mod limits;
pub mod manager;
pub mod size_class;
pub mod snapshot;
pub mod stats;
pub mod tensor;
#[cfg(feature = "trace")]
pub mod trace;
pub mod upstream;

#[cfg(test)]
mod testing;

pub use arena::{Arena, ArenaStats, Checkpoint, Scope};
pub use best_fit::{BestFit, BestFitStats};
pub use config::{Config, ConfigBuilder, PoolSpec, UpstreamKind};
pub use error::{Error, OomCause, OutOfMemory, PointerError, Result};
pub use fixed_pool::{FixedSizePool, PoolStats};
pub use huge::HugeCache;
pub use limits::{MAX_ALIGN, MAX_ALLOCATION_SIZE};
pub use manager::MemoryManager;
pub use snapshot::{BlockState, Snapshot};
pub use stats::{Stats, Tier, Usage};
pub use tensor::Tensor;
