//! The allocation strategies, each usable on its own, each a *tier* of the
//! [`MemoryManager`](crate::MemoryManager):
//!
//! | module | serves | how |
//! | --- | --- | --- |
//! | [`contract`] | the locked tiers' common contract | `BlockTier`: grant, sizes, release, trim, snapshot |
//! | [`size_class`] | the size classes' arithmetic | geometric classes, a table below 1 KiB |
//! | [`slab`] | small and medium blocks (the manager's engine) | thread-owned slabs, page map, spans |
//! | [`fixed_pool`] | one block size, standalone | free list in side metadata |
//! | [`best_fit`] | large blocks | best fit, splitting, coalescing, expandable segments |
//! | [`huge`] | huge blocks | a segment each, cached by size |
//! | [`arena`] | short-lived blocks | bump allocation, reset, rewind, scopes |
//!
//! Tiers use the layers below them ([`util`](crate::util), [`observe`](crate::observe),
//! [`error`](crate::error), [`limits`](crate::limits), [`upstream`](crate::upstream))
//! and never the manager. Within this layer, the engine ([`slab`]) takes its large
//! blocks' pages from [`best_fit`], and every tier keeps its metadata outside the
//! memory it hands out.

pub mod arena;
pub mod best_fit;
pub(crate) mod contract;
pub mod fixed_pool;
pub mod huge;
pub mod size_class;
pub mod slab;
