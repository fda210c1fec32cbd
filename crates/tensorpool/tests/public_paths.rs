//! Every public path of the crate, as a user writes it: this file compiles only while
//! each of them resolves (modules, types, traits, functions, constants, through the
//! re-exports that keep the paths flat). Written by `scripts/public_paths.py` from
//! rustdoc's output; a path removed on purpose leaves this file in the same change.

#![allow(unused_imports)]

use tensorpool::address_map as _;
use tensorpool::address_map::AddressMap as _;
use tensorpool::arena as _;
use tensorpool::arena::Arena as _;
use tensorpool::arena::ArenaBuilder as _;
use tensorpool::arena::ArenaStats as _;
use tensorpool::arena::Checkpoint as _;
use tensorpool::arena::Scope as _;
use tensorpool::arena::DEFAULT_FIRST_CHUNK as _;
use tensorpool::arena::DEFAULT_MAX_CHUNK as _;
use tensorpool::best_fit as _;
use tensorpool::best_fit::BestFit as _;
use tensorpool::best_fit::BestFitBuilder as _;
use tensorpool::best_fit::BestFitStats as _;
use tensorpool::best_fit::DEFAULT_COMMIT_GRANULARITY as _;
use tensorpool::best_fit::DEFAULT_GRANULARITY as _;
use tensorpool::best_fit::DEFAULT_MAX_OVERSIZE_WASTE as _;
use tensorpool::best_fit::DEFAULT_RESERVATION as _;
use tensorpool::best_fit::DEFAULT_SEGMENT_SIZE as _;
use tensorpool::bytes as _;
use tensorpool::bytes::format_bytes as _;
use tensorpool::bytes::parse_bytes as _;
use tensorpool::bytes::serde_opt_size as _;
use tensorpool::bytes::serde_opt_size::deserialize as _;
use tensorpool::bytes::serde_opt_size::serialize as _;
use tensorpool::bytes::serde_size as _;
use tensorpool::bytes::serde_size::deserialize as _;
use tensorpool::bytes::serde_size::serialize as _;
use tensorpool::clock as _;
use tensorpool::clock::Clock as _;
use tensorpool::clock::ManualClock as _;
use tensorpool::clock::MonotonicClock as _;
use tensorpool::config as _;
use tensorpool::config::Config as _;
use tensorpool::config::ConfigBuilder as _;
use tensorpool::config::PoolSpec as _;
use tensorpool::config::UpstreamKind as _;
use tensorpool::config::DEFAULT_RELEASE_DELAY_MS as _;
use tensorpool::config::ENV_CONFIG_FILE as _;
use tensorpool::config::ENV_NOT_SETTINGS as _;
use tensorpool::config::ENV_PREFIX as _;
use tensorpool::config::MAX_MEDIUM_THRESHOLD as _;
use tensorpool::config::MAX_RELEASE_DELAY_MS as _;
use tensorpool::debug as _;
use tensorpool::debug::GuardViolation as _;
use tensorpool::debug::LeakReport as _;
use tensorpool::debug::FRESH_BYTE as _;
use tensorpool::debug::GUARD as _;
use tensorpool::debug::GUARD_BYTE as _;
use tensorpool::debug::POISON_BYTE as _;
use tensorpool::error as _;
use tensorpool::error::Error as _;
use tensorpool::error::Location as _;
use tensorpool::error::OomCause as _;
use tensorpool::error::OutOfMemory as _;
use tensorpool::error::PointerError as _;
use tensorpool::error::Result as _;
use tensorpool::error::UpstreamError as _;
use tensorpool::fixed_pool as _;
use tensorpool::fixed_pool::FixedSizePool as _;
use tensorpool::fixed_pool::FixedSizePoolBuilder as _;
use tensorpool::fixed_pool::PoolStats as _;
use tensorpool::fixed_pool::DEFAULT_ALIGN as _;
use tensorpool::fixed_pool::DEFAULT_MAX_CHUNK as _;
use tensorpool::global as _;
use tensorpool::global::malloc as _;
use tensorpool::global::malloc::set_errno as _;
use tensorpool::global::malloc::Foreign as _;
use tensorpool::global::malloc::Malloc as _;
use tensorpool::global::malloc::MIN_ALIGN as _;
use tensorpool::global::process_config as _;
use tensorpool::global::process_defaults as _;
use tensorpool::global::GlobalManager as _;
use tensorpool::global::SystemFallbacks as _;
use tensorpool::huge as _;
use tensorpool::huge::HugeCache as _;
use tensorpool::huge::HugeStats as _;
use tensorpool::limits as _;
use tensorpool::limits::round_up as _;
use tensorpool::limits::validate as _;
use tensorpool::limits::MAX_ALIGN as _;
use tensorpool::limits::MAX_ALLOCATION_SIZE as _;
use tensorpool::manager as _;
use tensorpool::manager::MemoryManager as _;
use tensorpool::plan as _;
use tensorpool::plan::greedy as _;
use tensorpool::plan::greedy::best as _;
use tensorpool::plan::greedy::greedy as _;
use tensorpool::plan::greedy::Best as _;
use tensorpool::plan::greedy::Order as _;
use tensorpool::plan::greedy_by_size as _;
use tensorpool::plan::search as _;
use tensorpool::plan::search::search as _;
use tensorpool::plan::search::Budget as _;
use tensorpool::plan::search::Searched as _;
use tensorpool::plan::search::MOST_BUFFERS as _;
use tensorpool::plan::Placement as _;
use tensorpool::plan::Slot as _;
use tensorpool::plan::StepPlan as _;
use tensorpool::plan::Steps as _;
use tensorpool::plan::MOST_ALIGN as _;
use tensorpool::planned_arena as _;
use tensorpool::planned_arena::PlannedArena as _;
use tensorpool::planned_arena::PlannedStats as _;
use tensorpool::size_class as _;
use tensorpool::size_class::ClassIndex as _;
use tensorpool::size_class::SizeClassTable as _;
use tensorpool::size_class::SizeClasses as _;
use tensorpool::size_class::MIN_SPACING as _;
use tensorpool::slab as _;
use tensorpool::snapshot as _;
use tensorpool::snapshot::BlockSnapshot as _;
use tensorpool::snapshot::BlockState as _;
use tensorpool::snapshot::SegmentSnapshot as _;
use tensorpool::snapshot::Snapshot as _;
use tensorpool::stats as _;
use tensorpool::stats::ClassStats as _;
use tensorpool::stats::Stats as _;
use tensorpool::stats::ThreadCacheStats as _;
use tensorpool::stats::Tier as _;
use tensorpool::stats::TierStats as _;
use tensorpool::stats::Usage as _;
use tensorpool::tensor as _;
use tensorpool::tensor::Tensor as _;
#[cfg(feature = "trace")]
use tensorpool::trace as _;
#[cfg(feature = "trace")]
use tensorpool::trace::chrome as _;
#[cfg(feature = "trace")]
use tensorpool::trace::intervals as _;
#[cfg(feature = "trace")]
use tensorpool::trace::intervals::write as _;
#[cfg(feature = "trace")]
use tensorpool::trace::intervals::Placed as _;
#[cfg(feature = "trace")]
use tensorpool::trace::rmm as _;
#[cfg(feature = "trace")]
use tensorpool::trace::rmm::HEADER as _;
#[cfg(feature = "trace")]
use tensorpool::trace::Event as _;
#[cfg(feature = "trace")]
use tensorpool::trace::Format as _;
#[cfg(feature = "trace")]
use tensorpool::trace::Lifetime as _;
#[cfg(feature = "trace")]
use tensorpool::trace::Location as _;
#[cfg(feature = "trace")]
use tensorpool::trace::Recording as _;
#[cfg(feature = "trace")]
use tensorpool::trace::Trace as _;
#[cfg(feature = "trace")]
use tensorpool::trace::TraceWriter as _;
use tensorpool::upstream as _;
use tensorpool::upstream::default_upstream as _;
use tensorpool::upstream::page_size as _;
use tensorpool::upstream::AddressSpace as _;
use tensorpool::upstream::HeapUpstream as _;
use tensorpool::upstream::MeteredUpstream as _;
use tensorpool::upstream::MmapUpstream as _;
use tensorpool::upstream::Region as _;
use tensorpool::upstream::Upstream as _;
use tensorpool::upstream::UpstreamError as _;
use tensorpool::upstream::HUGE_PAGE_SIZE as _;
use tensorpool::Arena as _;
use tensorpool::ArenaStats as _;
use tensorpool::BestFit as _;
use tensorpool::BestFitStats as _;
use tensorpool::BlockState as _;
use tensorpool::Checkpoint as _;
use tensorpool::Config as _;
use tensorpool::ConfigBuilder as _;
use tensorpool::Error as _;
use tensorpool::FixedSizePool as _;
use tensorpool::GlobalManager as _;
use tensorpool::GuardViolation as _;
use tensorpool::HugeCache as _;
use tensorpool::LeakReport as _;
use tensorpool::MemoryManager as _;
use tensorpool::OomCause as _;
use tensorpool::OutOfMemory as _;
use tensorpool::PlannedArena as _;
use tensorpool::PlannedStats as _;
use tensorpool::PointerError as _;
use tensorpool::PoolSpec as _;
use tensorpool::PoolStats as _;
use tensorpool::Result as _;
use tensorpool::Scope as _;
use tensorpool::Snapshot as _;
use tensorpool::Stats as _;
use tensorpool::SystemFallbacks as _;
use tensorpool::Tensor as _;
use tensorpool::ThreadCacheStats as _;
use tensorpool::Tier as _;
use tensorpool::UpstreamKind as _;
use tensorpool::Usage as _;
use tensorpool::MAX_ALIGN as _;
use tensorpool::MAX_ALLOCATION_SIZE as _;
