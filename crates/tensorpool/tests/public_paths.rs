//! Every public path of the crate, as a user writes it: this file compiles only while
//! each of them resolves (modules, types, traits, functions, constants, through the
//! re-exports that keep the paths flat). Written by `scripts/public_paths.py` from
//! rustdoc's output; a path removed on purpose leaves this file in the same change.

#![allow(unused_imports)]

use tensorpool::Arena as _; // struct
use tensorpool::ArenaStats as _; // struct
use tensorpool::BestFit as _; // struct
use tensorpool::BestFitStats as _; // struct
use tensorpool::BlockState as _; // enum
use tensorpool::Checkpoint as _; // struct
use tensorpool::Config as _; // struct
use tensorpool::ConfigBuilder as _; // struct
use tensorpool::Error as _; // enum
use tensorpool::FixedSizePool as _; // struct
use tensorpool::GuardViolation as _; // struct
use tensorpool::HugeCache as _; // struct
use tensorpool::LeakReport as _; // struct
use tensorpool::MAX_ALIGN as _; // constant
use tensorpool::MAX_ALLOCATION_SIZE as _; // constant
use tensorpool::MemoryManager as _; // struct
use tensorpool::OomCause as _; // enum
use tensorpool::OutOfMemory as _; // struct
use tensorpool::PointerError as _; // enum
use tensorpool::PoolSpec as _; // struct
use tensorpool::PoolStats as _; // struct
use tensorpool::Result as _; // type_alias
use tensorpool::Scope as _; // struct
use tensorpool::Snapshot as _; // struct
use tensorpool::Stats as _; // struct
use tensorpool::Tensor as _; // struct
use tensorpool::ThreadCacheStats as _; // struct
use tensorpool::Tier as _; // enum
use tensorpool::UpstreamKind as _; // enum
use tensorpool::Usage as _; // struct
use tensorpool::address_map as _; // module
use tensorpool::address_map::AddressMap as _; // struct
use tensorpool::arena as _; // module
use tensorpool::arena::Arena as _; // struct
use tensorpool::arena::ArenaBuilder as _; // struct
use tensorpool::arena::ArenaStats as _; // struct
use tensorpool::arena::Checkpoint as _; // struct
use tensorpool::arena::DEFAULT_FIRST_CHUNK as _; // constant
use tensorpool::arena::DEFAULT_MAX_CHUNK as _; // constant
use tensorpool::arena::Scope as _; // struct
use tensorpool::best_fit as _; // module
use tensorpool::best_fit::BestFit as _; // struct
use tensorpool::best_fit::BestFitBuilder as _; // struct
use tensorpool::best_fit::BestFitStats as _; // struct
use tensorpool::best_fit::DEFAULT_COMMIT_GRANULARITY as _; // constant
use tensorpool::best_fit::DEFAULT_GRANULARITY as _; // constant
use tensorpool::best_fit::DEFAULT_MAX_OVERSIZE_WASTE as _; // constant
use tensorpool::best_fit::DEFAULT_RESERVATION as _; // constant
use tensorpool::best_fit::DEFAULT_SEGMENT_SIZE as _; // constant
use tensorpool::bytes as _; // module
use tensorpool::bytes::format_bytes as _; // function
use tensorpool::bytes::parse_bytes as _; // function
use tensorpool::bytes::serde_opt_size as _; // module
use tensorpool::bytes::serde_opt_size::deserialize as _; // function
use tensorpool::bytes::serde_opt_size::serialize as _; // function
use tensorpool::bytes::serde_size as _; // module
use tensorpool::bytes::serde_size::deserialize as _; // function
use tensorpool::bytes::serde_size::serialize as _; // function
use tensorpool::config as _; // module
use tensorpool::config::Config as _; // struct
use tensorpool::config::ConfigBuilder as _; // struct
use tensorpool::config::MAX_MEDIUM_THRESHOLD as _; // constant
use tensorpool::config::PoolSpec as _; // struct
use tensorpool::config::UpstreamKind as _; // enum
use tensorpool::debug as _; // module
use tensorpool::debug::FRESH_BYTE as _; // constant
use tensorpool::debug::GUARD as _; // constant
use tensorpool::debug::GUARD_BYTE as _; // constant
use tensorpool::debug::GuardViolation as _; // struct
use tensorpool::debug::LeakReport as _; // struct
use tensorpool::debug::POISON_BYTE as _; // constant
use tensorpool::error as _; // module
use tensorpool::error::Error as _; // enum
use tensorpool::error::Location as _; // enum
use tensorpool::error::OomCause as _; // enum
use tensorpool::error::OutOfMemory as _; // struct
use tensorpool::error::PointerError as _; // enum
use tensorpool::error::Result as _; // type_alias
use tensorpool::error::UpstreamError as _; // enum
use tensorpool::fixed_pool as _; // module
use tensorpool::fixed_pool::DEFAULT_ALIGN as _; // constant
use tensorpool::fixed_pool::DEFAULT_MAX_CHUNK as _; // constant
use tensorpool::fixed_pool::FixedSizePool as _; // struct
use tensorpool::fixed_pool::FixedSizePoolBuilder as _; // struct
use tensorpool::fixed_pool::PoolStats as _; // struct
use tensorpool::huge as _; // module
use tensorpool::huge::HugeCache as _; // struct
use tensorpool::huge::HugeStats as _; // struct
use tensorpool::limits as _; // module
use tensorpool::limits::MAX_ALIGN as _; // constant
use tensorpool::limits::MAX_ALLOCATION_SIZE as _; // constant
use tensorpool::limits::round_up as _; // function
use tensorpool::limits::validate as _; // function
use tensorpool::manager as _; // module
use tensorpool::manager::MemoryManager as _; // struct
use tensorpool::size_class as _; // module
use tensorpool::size_class::ClassIndex as _; // type_alias
use tensorpool::size_class::SizeClassTable as _; // struct
use tensorpool::size_class::SizeClasses as _; // struct
use tensorpool::slab as _; // module
use tensorpool::snapshot as _; // module
use tensorpool::snapshot::BlockSnapshot as _; // struct
use tensorpool::snapshot::BlockState as _; // enum
use tensorpool::snapshot::SegmentSnapshot as _; // struct
use tensorpool::snapshot::Snapshot as _; // struct
use tensorpool::stats as _; // module
use tensorpool::stats::ClassStats as _; // struct
use tensorpool::stats::Stats as _; // struct
use tensorpool::stats::ThreadCacheStats as _; // struct
use tensorpool::stats::Tier as _; // enum
use tensorpool::stats::TierStats as _; // struct
use tensorpool::stats::Usage as _; // struct
use tensorpool::tensor as _; // module
use tensorpool::tensor::Tensor as _; // struct
#[cfg(feature = "trace")]
use tensorpool::trace as _; // module
#[cfg(feature = "trace")]
use tensorpool::trace::Event as _; // enum
#[cfg(feature = "trace")]
use tensorpool::trace::Format as _; // enum
#[cfg(feature = "trace")]
use tensorpool::trace::Lifetime as _; // struct
#[cfg(feature = "trace")]
use tensorpool::trace::Location as _; // enum
#[cfg(feature = "trace")]
use tensorpool::trace::Recording as _; // struct
#[cfg(feature = "trace")]
use tensorpool::trace::Trace as _; // struct
#[cfg(feature = "trace")]
use tensorpool::trace::TraceWriter as _; // struct
#[cfg(feature = "trace")]
use tensorpool::trace::chrome as _; // module
#[cfg(feature = "trace")]
use tensorpool::trace::intervals as _; // module
#[cfg(feature = "trace")]
use tensorpool::trace::intervals::Placed as _; // struct
#[cfg(feature = "trace")]
use tensorpool::trace::intervals::write as _; // function
#[cfg(feature = "trace")]
use tensorpool::trace::rmm as _; // module
#[cfg(feature = "trace")]
use tensorpool::trace::rmm::HEADER as _; // constant
use tensorpool::upstream as _; // module
use tensorpool::upstream::AddressSpace as _; // trait
use tensorpool::upstream::HUGE_PAGE_SIZE as _; // constant
use tensorpool::upstream::HeapUpstream as _; // struct
use tensorpool::upstream::MeteredUpstream as _; // struct
use tensorpool::upstream::MmapUpstream as _; // struct
use tensorpool::upstream::Region as _; // struct
use tensorpool::upstream::Upstream as _; // trait
use tensorpool::upstream::UpstreamError as _; // enum
use tensorpool::upstream::default_upstream as _; // function
use tensorpool::upstream::page_size as _; // function
