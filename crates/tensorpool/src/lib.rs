//! tensorpool: a memory allocator for tensors.
//!
//! Tensor code allocates many blocks of a few recurring sizes at a high rate, with
//! lifetimes that repeat every step. tensorpool gives each size the strategy that fits
//! it and keeps memory warm:
//!
//! - [`FixedSizePool`] and the [size classes](size_class) for small tensors: O(1)
//!   allocate and free;
//! - [`Arena`] for short-lived tensors: bump allocation, released by a reset or a scope;
//! - [`BestFit`] for large tensors: best fit with splitting and coalescing, growing as
//!   expandable segments so that reserved memory stays close to the live peak;
//! - [`HugeCache`] for huge ones: dedicated segments, cached by size;
//! - [`MemoryManager`] in front: routes by size, serves small and medium blocks from
//!   [thread-owned slabs](slab) with no lock on any steady path and frees checked in
//!   O(1) from the address, counts everything ([`Stats`]), and explains itself when
//!   memory runs out ([`OutOfMemory`]).
//!
//! # Layers
//!
//! The source tree is the architecture. Each layer uses only the layers above it in
//! this list, never one below (the public paths are flat: `tensorpool::slab`,
//! `tensorpool::stats`, ... are re-exports of the modules named here):
//!
//! | layer | modules | what it is |
//! | --- | --- | --- |
//! | 1 `util` | [`bytes`], [`address_map`], `sync` | arithmetic and data structures that know nothing of allocation |
//! | 2 `observe` | [`stats`], [`snapshot`], [`debug`] | the vocabulary of reports: counters, tiers, snapshots, guards and leaks |
//! | 3 errors | [`error`], [`limits`] | every refusal, and the one check of a request's size and alignment |
//! | 4 sources | [`upstream`] | where regions come from: heap, `mmap` (with reserved address space), metered |
//! | 5 traces | `trace`, `plan` (feature `trace`) | reading, writing and recording allocation traces; offline plans of them |
//! | 6 `tiers` | [`size_class`], [`slab`], [`fixed_pool`], [`best_fit`], [`huge`], [`arena`] | the strategies, each usable on its own; the locked ones keep one crate-private contract (`tiers::contract::BlockTier`) |
//! | 7 front | [`config`], [`manager`], [`tensor`], `planned_arena` | settings and their validation, the routing [`MemoryManager`], typed tensors, arenas that run a plan |
//! | 8 process | [`global`] | a process-wide manager as Rust's `#[global_allocator]` ([`GlobalManager`]) |
//!
//! `docs/ARCHITECTURE.md` in the repository walks the allocation and free paths
//! through these layers with the real function names, and keeps the glossary.
//!
//! Metadata lives outside the managed memory: the allocator never reads or writes a
//! block it hands out, which is why a free of any address can be checked and refused
//! safely, and why the same strategies can manage device memory through another
//! [`upstream::Upstream`].
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use tensorpool::{Config, MemoryManager, Tensor};
//!
//! let mm = MemoryManager::new(Config::builder().memory_limit(8 << 30).build()?)?;
//!
//! // Collections through allocator-api2's Allocator (the one hashbrown and bumpalo use):
//! let mut v: Vec<f32, &MemoryManager> = Vec::with_capacity_in(1024, &mm);
//! v.extend((0..1024).map(|i| i as f32));
//!
//! // Typed, shaped, owning tensors:
//! let t = Tensor::<f32>::zeros(&mm, &[64, 1024])?;
//! assert_eq!(t.as_ptr() as usize % 64, 0);
//!
//! // Raw blocks for foreign callers, with a free that can never corrupt the allocator:
//! let p = mm.allocate_raw(3 << 20, 64)?;
//! mm.free_raw(p.as_ptr())?;
//! assert!(mm.free_raw(p.as_ptr()).is_err()); // double free: an error, nothing changes
//!
//! // Arenas from the manager, with scopes whose release the borrow checker proves safe:
//! let mut arena = mm.arena();
//! arena.scope(|step| {
//!     let activations = step.alloc_slice_fill(4096, 0.0f32)?;
//!     activations[0] = 1.0;
//!     Ok::<_, tensorpool::Error>(())
//! })?;
//!
//! println!("{}", mm.summary());
//! let json = serde_json::to_string(&mm.snapshot())?; // every segment and block
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The layers, lowest first: each uses only those above it in this list (see the
// crate docs' "Layers").
mod util;
pub use util::{address_map, bytes, clock, fd};
mod observe;
pub use observe::{debug, snapshot, stats};
pub mod error;
pub mod limits;
#[cfg(feature = "trace")]
pub mod plan;
mod tiers;
#[cfg(feature = "trace")]
pub mod trace;
pub mod upstream;
pub use tiers::{arena, best_fit, fixed_pool, huge, size_class, slab};
pub mod config;
pub mod global;
pub mod manager;
#[cfg(feature = "trace")]
pub mod planned_arena;
pub mod tensor;

#[cfg(test)]
mod testing;

pub use arena::{Arena, ArenaStats, Checkpoint, Scope};
pub use best_fit::{BestFit, BestFitStats};
pub use config::{Config, ConfigBuilder, PoolSpec, UpstreamKind};
pub use debug::{GuardViolation, LeakReport};
pub use error::{Error, OomCause, OutOfMemory, PointerError, Result};
pub use fixed_pool::{FixedSizePool, PoolStats};
pub use global::{GlobalManager, SystemFallbacks};
pub use huge::HugeCache;
pub use limits::{MAX_ALIGN, MAX_ALLOCATION_SIZE};
pub use manager::MemoryManager;
#[cfg(feature = "trace")]
pub use planned_arena::{PlannedArena, PlannedStats};
pub use snapshot::{BlockState, Snapshot};
pub use stats::ThreadCacheStats;
pub use stats::{Stats, Tier, Usage};
pub use tensor::Tensor;

/// The README's Rust examples, compiled and run with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
