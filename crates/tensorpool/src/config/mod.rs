//! `Config`: every setting of the [`MemoryManager`](crate::MemoryManager), with defaults
//! chosen by replaying real traces.
//!
//! A config is built in code with [`Config::builder`], read from a TOML or JSON
//! file (the format `tensorpool plan` writes), or from the environment
//! ([`Config::from_env`]). Unknown keys, and settings that cannot
//! apply together, are errors that name the setting; nothing is silently ignored.
//! Sizes in files may be integers or strings with a unit (`"64 MiB"`).
//!
//! ```
//! use tensorpool::Config;
//!
//! let config = Config::builder()
//!     .memory_limit(8 << 30)
//!     .pool(256, 1000) // an explicit pool: 1000 blocks of 256 bytes
//!     .build()?;
//! assert_eq!(config.memory_limit, Some(8 << 30));
//!
//! let from_file = Config::from_toml_str(r#"
//!     small_threshold = "32 KiB"
//!     memory_limit = "4 GiB"
//!     pools = [{ block_size = 64, capacity = 1000 }, { block_size = 128, capacity = 500 }]
//! "#)?;
//! assert_eq!(from_file.small_threshold, 32 << 10);
//! assert_eq!(from_file.pools.len(), 2);
//!
//! let err = Config::from_toml_str("smal_threshold = 1024").unwrap_err();
//! assert!(err.to_string().contains("unknown field `smal_threshold`"));
//! # Ok::<(), tensorpool::Error>(())
//! ```

mod env;
pub use env::{ENV_CONFIG_FILE, ENV_NOT_SETTINGS, ENV_PREFIX};

use crate::error::{Error, Result};
use crate::limits::{validate, MAX_ALIGN};
use crate::tiers::size_class::SizeClasses;
use crate::tiers::{arena, best_fit, fixed_pool};
use crate::util::bytes::{format_bytes, serde_opt_size, serde_size};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The default release delay, in milliseconds: see [`Config::release_delay_ms`]. Chosen
/// by measurement (docs/BENCHMARKS.md, "Memory given back"): long enough that the
/// steps of a training or inference loop reuse their memory warm, short enough that an
/// idle process gives back its memory within a couple of seconds.
pub const DEFAULT_RELEASE_DELAY_MS: u64 = 1000;

/// The longest release delay: a day.
pub const MAX_RELEASE_DELAY_MS: u64 = 24 * 3600 * 1000;

/// The largest `medium_threshold`: each thread's heap keeps a cache entry per page
/// count of large block up to it.
pub const MAX_MEDIUM_THRESHOLD: usize = 16 << 20;

/// Where the manager takes memory from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// Anonymous `mmap`, large regions 2 MiB-aligned (the default on Unix).
    Mmap,
    /// The global Rust allocator.
    Heap,
}

/// An explicit pool: `capacity` blocks of `block_size` bytes, tried before the tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Bytes per block.
    #[serde(with = "serde_size")]
    pub block_size: usize,
    /// Number of blocks.
    pub capacity: usize,
}

/// The release delay in a file: milliseconds, or `"never"` for none (TOML has no
/// null, and leaving the key out means the default).
mod serde_delay {
    use serde::{de, Deserializer, Serializer};
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(ms) => s.serialize_u64(*ms),
            None => s.serialize_str("never"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct Delay;
        impl de::Visitor<'_> for Delay {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of milliseconds, or \"never\"")
            }
            fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Self::Value, E> {
                Ok(Some(ms))
            }
            fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Self::Value, E> {
                u64::try_from(ms)
                    .map(Some)
                    .map_err(|_| E::custom(format!("a delay cannot be negative, got {ms}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "never" => Ok(None),
                    other => Err(E::custom(format!(
                        "expected a number of milliseconds or \"never\", got \"{other}\""
                    ))),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(Delay)
    }
}

/// Reads explicit pools as a list of specs or as a table of block size to capacity.
fn pools_from_list_or_table<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<PoolSpec>, D::Error> {
    struct PoolsVisitor;
    impl<'de> serde::de::Visitor<'de> for PoolsVisitor {
        type Value = Vec<PoolSpec>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of { block_size, capacity } or a table of block size to capacity")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pools = Vec::new();
            while let Some(spec) = seq.next_element::<PoolSpec>()? {
                pools.push(spec);
            }
            Ok(pools)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pools = Vec::new();
            while let Some((size, capacity)) = map.next_entry::<String, usize>()? {
                let block_size = crate::util::bytes::parse_bytes(&size)
                    .map_err(|e| serde::de::Error::custom(format!("in pools: {e}")))?;
                pools.push(PoolSpec {
                    block_size,
                    capacity,
                });
            }
            pools.sort_by_key(|p| p.block_size);
            Ok(pools)
        }
    }
    d.deserialize_any(PoolsVisitor)
}

/// The settings of a [`MemoryManager`](crate::MemoryManager).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Least alignment of every block (default 64: a cache line, an AVX-512 vector).
    pub alignment: usize,
    /// Smallest size class (default 64 B).
    #[serde(with = "serde_size")]
    pub min_block_size: usize,
    /// Size classes per doubling (default 8: at most 12.5% rounding waste), a power
    /// of two up to 64; classes are never closer than 8 bytes (see
    /// [`size_class`](crate::size_class)).
    pub classes_per_doubling: usize,
    /// Requests up to this size are slots of size-class slabs; a power of two, or 0
    /// for no size classes.
    #[serde(with = "serde_size")]
    pub small_threshold: usize,
    /// Requests above `small_threshold` and up to this size are large blocks that
    /// threads own and cache: each a run of pages of its own, freed and reused
    /// without the best-fit tier's lock (at most 16 MiB; 0 for none).
    #[serde(with = "serde_size")]
    pub medium_threshold: usize,
    /// Requests above this size get dedicated, size-cached segments; those between
    /// `medium_threshold` and it are served by the best-fit tier under its lock.
    #[serde(with = "serde_size")]
    pub huge_threshold: usize,
    /// The largest slab: a run of pages carved into slots of one size class or
    /// explicit pool. A class's slabs grow from a page to this as it is used.
    #[serde(with = "serde_size")]
    pub pool_chunk_size: usize,
    /// Rounding of best-fit block sizes (a power of two from the alignment to a
    /// page: slabs and cached large blocks are runs of whole pages of the same tier).
    #[serde(with = "serde_size")]
    pub large_granularity: usize,
    /// Least size of a new best-fit segment (when segments are not expandable).
    #[serde(with = "serde_size")]
    pub segment_size: usize,
    /// Grow the best-fit tier as expandable segments: one address-space reservation
    /// committed at the top as needed. Unset: wherever the upstream can (mmap);
    /// `true` with the heap upstream is an error. The reservation is 64 GiB of
    /// address space per manager (not memory; less under `ulimit -v`): some 2,000
    /// managers alive at once fill a 47-bit address space, and their allocations
    /// then fail as out of memory (the system refuses the mapping); a program that
    /// keeps that many sets this to `false`.
    pub expandable_segments: Option<bool>,
    /// The step by which an expandable segment commits memory (a power of two from
    /// a page to 2 MiB).
    #[serde(with = "serde_size")]
    pub commit_granularity: usize,
    /// Best-fit blocks at least this large are never split (no limit by default).
    #[serde(with = "serde_opt_size")]
    pub max_split_size: Option<usize>,
    /// Waste accepted when a request above `max_split_size` takes a larger block.
    #[serde(with = "serde_size")]
    pub max_oversize_waste: usize,
    /// Most bytes of freed huge segments kept cached (no bound by default).
    #[serde(with = "serde_opt_size")]
    pub huge_cache_limit: Option<usize>,
    /// Most bytes resident (reserved from upstream, less the free pages given back to
    /// the system); beyond it the manager gives back all its free memory and retries,
    /// then reports out of memory (no limit by default). Changeable while the
    /// manager runs ([`MemoryManager::set_memory_limit`](crate::MemoryManager::set_memory_limit)).
    #[serde(with = "serde_opt_size")]
    pub memory_limit: Option<usize>,
    /// Resident bytes above which free memory goes back to the system at once, not
    /// after the release delay (no soft limit by default). Changeable while the
    /// manager runs ([`MemoryManager::set_soft_limit`](crate::MemoryManager::set_soft_limit)).
    #[serde(with = "serde_opt_size")]
    pub soft_limit: Option<usize>,
    /// Free memory unused for this long goes back to the system, in every tier
    /// (see [`manager`](crate::manager), "Memory given back"); unset: only when asked
    /// (`trim()`), above the soft limit or on running out. Changeable while the
    /// manager runs ([`MemoryManager::set_release_delay`](crate::MemoryManager::set_release_delay)).
    /// In a file: milliseconds, or `"never"`.
    #[serde(with = "serde_delay")]
    pub release_delay_ms: Option<u64>,
    /// The longest the delay in effect grows to while the program keeps taking
    /// released memory back (each such *regret* doubles it, see
    /// [`manager`](crate::manager), "Memory given back"): the delay in effect is the
    /// largest power-of-two multiple of `release_delay_ms` within it (3000 with a
    /// 1000 ms delay stops at 2000). Unset: 32 times `release_delay_ms`, the most it
    /// can be; equal to `release_delay_ms`: the delay never stretches, so memory freed
    /// for good (a program tearing down, a phase that ends) goes back after the delay
    /// however busy the program is, at the cost of faulting in again the memory of
    /// steps longer than the delay.
    pub max_release_delay_ms: Option<u64>,
    /// A background thread runs the release policy while the program is idle, so
    /// that memory goes back without a call into tensorpool. Unset: each front's
    /// default (a Rust manager: off, the policy runs on the manager's slow paths;
    /// the Python package: on).
    pub background_release: Option<bool>,
    /// Most bytes of empty slabs and free large blocks each thread keeps for its next
    /// allocations (beyond it, they go back to the best-fit tier; 0: none is kept).
    /// A thread also gives them back when the best-fit tier would otherwise grow.
    #[serde(with = "serde_size")]
    pub thread_cache_bytes: usize,
    /// Explicit pools, tried smallest first before the tiers. In a file, either a
    /// list of `{ block_size, capacity }` or a table of block size to capacity
    /// (`pools = { "64" = 1000, "128" = 500 }`).
    #[serde(deserialize_with = "pools_from_list_or_table")]
    pub pools: Vec<PoolSpec>,
    /// First chunk of arenas made by the manager.
    #[serde(with = "serde_size")]
    pub arena_chunk_size: usize,
    /// Where memory comes from.
    pub upstream: UpstreamKind,
    /// Advise transparent huge pages on regions of 2 MiB and more. Unset: wherever the
    /// upstream can (mmap); `true` with the heap upstream is an error.
    pub huge_pages: Option<bool>,
    /// Debug mode: guard bytes after every block checked on free, fresh blocks
    /// filled with 0xCD and freed ones poisoned with 0xDD, live blocks tracked so that
    /// dropping the manager reports leaks (see [`debug`](crate::observe::debug)). Each
    /// allocation and free takes a lock for its record: for finding bugs, not speed.
    pub debug: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            alignment: fixed_pool::DEFAULT_ALIGN,
            min_block_size: 64,
            classes_per_doubling: 8,
            small_threshold: 32 << 10,
            medium_threshold: 1 << 20,
            huge_threshold: 1 << 30,
            pool_chunk_size: fixed_pool::DEFAULT_MAX_CHUNK,
            // A page: slabs and cached large blocks are runs of whole pages of the
            // best-fit tier, and its own blocks then tile with them.
            large_granularity: crate::tiers::slab::page_map::PAGE,
            segment_size: best_fit::DEFAULT_SEGMENT_SIZE,
            expandable_segments: None,
            commit_granularity: best_fit::DEFAULT_COMMIT_GRANULARITY,
            max_split_size: None,
            max_oversize_waste: best_fit::DEFAULT_MAX_OVERSIZE_WASTE,
            huge_cache_limit: None,
            memory_limit: None,
            soft_limit: None,
            release_delay_ms: Some(DEFAULT_RELEASE_DELAY_MS),
            max_release_delay_ms: None,
            background_release: None,
            thread_cache_bytes: 32 << 20,
            pools: Vec::new(),
            arena_chunk_size: arena::DEFAULT_FIRST_CHUNK,
            upstream: if cfg!(all(unix, not(miri))) {
                UpstreamKind::Mmap
            } else {
                UpstreamKind::Heap
            },
            huge_pages: None,
            debug: false,
        }
    }
}

/// Builds a [`Config`] from the defaults; [`build`](Self::build) validates it.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    config: Config,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => $value:expr;)*) => {
        impl ConfigBuilder {
            $(
                $(#[$doc])*
                pub fn $name(mut self, $name: $ty) -> Self {
                    self.config.$name = $value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// See [`Config::alignment`].
    alignment: usize => alignment;
    /// See [`Config::min_block_size`].
    min_block_size: usize => min_block_size;
    /// See [`Config::classes_per_doubling`].
    classes_per_doubling: usize => classes_per_doubling;
    /// See [`Config::small_threshold`].
    small_threshold: usize => small_threshold;
    /// See [`Config::medium_threshold`].
    medium_threshold: usize => medium_threshold;
    /// See [`Config::huge_threshold`].
    huge_threshold: usize => huge_threshold;
    /// See [`Config::pool_chunk_size`].
    pool_chunk_size: usize => pool_chunk_size;
    /// See [`Config::large_granularity`].
    large_granularity: usize => large_granularity;
    /// See [`Config::segment_size`].
    segment_size: usize => segment_size;
    /// See [`Config::expandable_segments`].
    expandable_segments: bool => Some(expandable_segments);
    /// See [`Config::commit_granularity`].
    commit_granularity: usize => commit_granularity;
    /// See [`Config::max_split_size`].
    max_split_size: usize => Some(max_split_size);
    /// See [`Config::max_oversize_waste`].
    max_oversize_waste: usize => max_oversize_waste;
    /// See [`Config::huge_cache_limit`].
    huge_cache_limit: usize => Some(huge_cache_limit);
    /// See [`Config::memory_limit`].
    memory_limit: usize => Some(memory_limit);
    /// See [`Config::soft_limit`].
    soft_limit: usize => Some(soft_limit);
    /// See [`Config::release_delay_ms`]; `None` releases only when asked.
    release_delay_ms: Option<u64> => release_delay_ms;
    /// See [`Config::max_release_delay_ms`].
    max_release_delay_ms: u64 => Some(max_release_delay_ms);
    /// See [`Config::background_release`].
    background_release: bool => Some(background_release);
    /// See [`Config::thread_cache_bytes`].
    thread_cache_bytes: usize => thread_cache_bytes;
    /// See [`Config::arena_chunk_size`].
    arena_chunk_size: usize => arena_chunk_size;
    /// See [`Config::upstream`].
    upstream: UpstreamKind => upstream;
    /// See [`Config::huge_pages`].
    huge_pages: bool => Some(huge_pages);
    /// See [`Config::debug`].
    debug: bool => debug;
}

impl ConfigBuilder {
    /// Adds an explicit pool of `capacity` blocks of `block_size` bytes.
    pub fn pool(mut self, block_size: usize, capacity: usize) -> Self {
        self.config.pools.push(PoolSpec {
            block_size,
            capacity,
        });
        self
    }

    /// The config, or an error naming the first setting that cannot apply.
    pub fn build(self) -> Result<Config> {
        self.config.validate()?;
        Ok(self.config)
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The size classes this config describes (`None` with `small_threshold = 0`).
    pub fn size_classes(&self) -> Result<Option<SizeClasses>> {
        if self.small_threshold == 0 {
            return Ok(None);
        }
        SizeClasses::new(
            self.min_block_size,
            self.small_threshold,
            self.classes_per_doubling,
        )
        .map(Some)
    }

    /// Checks that every setting can apply, naming the first that cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if !self.alignment.is_power_of_two() || !(8..=MAX_ALIGN).contains(&self.alignment) {
            return bad(format!(
                "alignment must be a power of two from 8 to {MAX_ALIGN}, got {}",
                self.alignment
            ));
        }
        if let Some(classes) = self.size_classes()? {
            if classes.min_size() < self.alignment {
                return bad(format!(
                    "min_block_size ({}) must be at least the alignment ({})",
                    self.min_block_size, self.alignment
                ));
            }
        }
        if self.huge_threshold <= self.small_threshold {
            return bad(format!(
                "huge_threshold ({}) must be above small_threshold ({})",
                format_bytes(self.huge_threshold),
                format_bytes(self.small_threshold)
            ));
        }
        let size = |name: &str, value: usize| {
            validate(value, 1)
                .map_err(|e| Error::InvalidConfig(format!("{name} is not a valid size: {e}")))
        };
        size("pool_chunk_size", self.pool_chunk_size)?;
        best_fit::check_segment_size(self.segment_size)?;
        size("arena_chunk_size", self.arena_chunk_size)?;
        let page = crate::tiers::slab::page_map::PAGE;
        if !self.large_granularity.is_power_of_two()
            || !(self.alignment.max(64)..=page).contains(&self.large_granularity)
        {
            return bad(format!(
                "large_granularity must be a power of two from the alignment (at least 64) to \
                 a page ({page} B: slabs are runs of pages of the best-fit tier), got {}",
                self.large_granularity
            ));
        }
        if self.medium_threshold > MAX_MEDIUM_THRESHOLD {
            return bad(format!(
                "medium_threshold must be at most {} (0 for no cached large blocks), got {}",
                format_bytes(MAX_MEDIUM_THRESHOLD),
                format_bytes(self.medium_threshold)
            ));
        }
        if self.medium_threshold > self.huge_threshold {
            return bad(format!(
                "medium_threshold ({}) must not be above huge_threshold ({})",
                format_bytes(self.medium_threshold),
                format_bytes(self.huge_threshold)
            ));
        }
        best_fit::check_max_split_size(self.max_split_size, self.segment_size)?;
        if self.memory_limit == Some(0) {
            return bad(
                "memory_limit must be at least 1 byte (leave it unset for no limit)".into(),
            );
        }
        if self.soft_limit == Some(0) {
            return bad(
                "soft_limit must be at least 1 byte (leave it unset for no soft limit)".into(),
            );
        }
        if let (Some(soft), Some(hard)) = (self.soft_limit, self.memory_limit) {
            if soft > hard {
                return bad(format!(
                    "soft_limit ({}) must not be above memory_limit ({})",
                    format_bytes(soft),
                    format_bytes(hard)
                ));
            }
        }
        if self
            .release_delay_ms
            .is_some_and(|ms| ms > MAX_RELEASE_DELAY_MS)
        {
            return bad(format!(
                "release_delay_ms must be at most {MAX_RELEASE_DELAY_MS} (a day; leave it \
                 unset to release only when asked)"
            ));
        }
        if let Some(max) = self.max_release_delay_ms {
            if max > MAX_RELEASE_DELAY_MS {
                return bad(format!(
                    "max_release_delay_ms must be at most {MAX_RELEASE_DELAY_MS} (a day)"
                ));
            }
            if let Some(delay) = self.release_delay_ms.filter(|&d| max < d) {
                return bad(format!(
                    "max_release_delay_ms ({max}) must be at least release_delay_ms ({delay})"
                ));
            }
        }
        if self.expandable_segments == Some(true) && self.upstream == UpstreamKind::Heap {
            return bad(
                "expandable_segments needs the mmap upstream; leave it unset for the heap upstream"
                    .into(),
            );
        }
        best_fit::check_commit_granularity(self.commit_granularity)?;
        if self.huge_pages == Some(true) && self.upstream == UpstreamKind::Heap {
            // Advice that cannot apply is refused rather than ignored.
            return bad(
                "huge_pages needs the mmap upstream; leave it unset for the heap upstream".into(),
            );
        }
        let mut sizes: Vec<usize> = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            validate(pool.block_size, 1).map_err(|e| {
                Error::InvalidConfig(format!("an explicit pool's block size is not valid: {e}"))
            })?;
            // A pool's slots are its block size rounded up to the alignment, and a
            // slot's index is found by a 32-bit division.
            let slot = pool.block_size.next_multiple_of(self.alignment);
            if slot > u32::MAX as usize {
                return bad(format!(
                    "an explicit pool's block size, rounded up to the alignment ({}), must \
                     be below 4 GiB, got {}",
                    self.alignment, pool.block_size
                ));
            }
            if pool.capacity == 0 {
                return bad(format!(
                    "the explicit pool of {} B blocks has a capacity of 0",
                    pool.block_size
                ));
            }
            if sizes.contains(&pool.block_size) {
                return bad(format!(
                    "two explicit pools have the same block size, {}",
                    pool.block_size
                ));
            }
            sizes.push(pool.block_size);
        }
        Ok(())
    }

    /// Reads a TOML config.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        let config = Self::read_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// A TOML config's settings over the defaults, not yet validated; an error
    /// locates the bad line.
    fn read_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| span.start);
            Error::InvalidConfig(located(text, at, e.message()))
        })
    }

    /// Reads a JSON config.
    pub fn from_json_str(text: &str) -> Result<Config> {
        let config = Self::read_json(text)?;
        config.validate()?;
        Ok(config)
    }

    /// [`read_toml`](Self::read_toml) for JSON.
    fn read_json(text: &str) -> Result<Config> {
        serde_json::from_str(text).map_err(|e| {
            // serde_json's message ends with the position, which `located` gives.
            let message = e.to_string();
            let message = message
                .rfind(" at line ")
                .map_or(message.as_str(), |end| &message[..end]);
            let at = text
                .split_inclusive('\n')
                .take(e.line().saturating_sub(1))
                .map(str::len)
                .sum::<usize>()
                + e.column().saturating_sub(1);
            Error::InvalidConfig(located(text, (e.line() > 0).then_some(at), message))
        })
    }

    /// Reads a config file: JSON if the name ends in `.json`, TOML otherwise.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        Self::from_file_over(&Config::default(), path)
    }

    /// Reads a config file as settings laid over `base`: the settings the file names
    /// change `base`'s, the others stay. [`from_file`](Self::from_file) lays them over
    /// the defaults; the process-wide allocator, over its own
    /// ([`process_defaults`](crate::global::process_defaults), where a file may say
    /// `min_block_size = 16`, which the defaults' 64-byte alignment refuses). A bad
    /// value is an error that names its line; settings that cannot apply together
    /// over `base`, one that names the file.
    ///
    /// ```
    /// use tensorpool::Config;
    ///
    /// let path = std::env::temp_dir().join("tensorpool-doc-over.toml");
    /// std::fs::write(&path, "min_block_size = 16\nmemory_limit = \"1 GiB\"\n")?;
    /// assert!(Config::from_file(&path).is_err()); // 16 B blocks, 64 B alignment
    /// let c = Config::from_file_over(&tensorpool::global::process_defaults(), &path)?;
    /// assert_eq!((c.min_block_size, c.memory_limit), (16, Some(1 << 30)));
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_file_over(base: &Config, path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let in_file = |e: Error| e.in_config(path.display());
        let text = read_config_text(path)
            .map_err(|e| Error::InvalidConfig(format!("cannot read {}: {e}", path.display())))?;
        let json = path.extension().is_some_and(|e| e == "json");
        // Each value read on its own line first, so that an error names the line.
        match json {
            true => Self::read_json(&text),
            false => Self::read_toml(&text),
        }
        .map_err(in_file)?;
        let bad = |e: String| in_file(Error::InvalidConfig(e));
        // The file's keys over the base's, in the file's own format (JSON's `null`, an
        // unset limit, has no TOML form).
        let config = if json {
            let named = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .map_err(|e| bad(e.to_string()))?;
            let serde_json::Value::Object(mut map) =
                serde_json::to_value(base).expect("a config serializes")
            else {
                unreachable!("a config is an object");
            };
            map.extend(named);
            Config::deserialize(serde_json::Value::Object(map)).map_err(|e| bad(e.to_string()))?
        } else {
            let named = text
                .parse::<toml::Table>()
                .map_err(|e| bad(e.to_string()))?;
            let mut table = toml::Table::try_from(base).expect("a config is a table");
            table.extend(named);
            Config::deserialize(table).map_err(|e| bad(e.message().to_string()))?
        };
        config.validate().map_err(in_file)?;
        Ok(config)
    }

    /// Whether to advise huge pages, as resolved for the upstream.
    pub fn uses_huge_pages(&self) -> bool {
        self.upstream == UpstreamKind::Mmap && self.huge_pages != Some(false)
    }

    /// The config as TOML, readable by [`from_toml_str`](Self::from_toml_str).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a config always serializes")
    }
}

/// `message` about the byte at `at` of a config's `text`: with its line number and
/// the line itself (which names the setting), so that a user finds what to mend.
fn located(text: &str, at: Option<usize>, message: &str) -> String {
    let Some(mut at) = at.map(|at| at.min(text.len())) else {
        return message.to_string();
    };
    // A position inside a character (serde_json counts bytes) moves to its start.
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[..start].matches('\n').count() + 1;
    let shown: String = text[start..end].trim().chars().take(120).collect();
    format!("line {line} (`{shown}`): {message}")
}

/// The largest config file read: a config is a few dozen lines.
const MAX_CONFIG_FILE: u64 = 1 << 20;

/// A config file's text: a regular file (looked at before it is opened: a FIFO would
/// block the program at its first allocation, `/dev/stdin` eat its input, and
/// `/dev/zero`, read to its end, fill its memory: a user hunt through
/// `TENSORPOOL_CONFIG`) of at most [`MAX_CONFIG_FILE`] bytes.
fn read_config_text(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a config is a TOML or JSON file)",
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {MAX_CONFIG_FILE} bytes (a config is a few dozen lines)"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(Config::from_toml_str(&c.to_toml_string()).unwrap(), c);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::from_json_str(&json).unwrap(), c);
        assert_eq!(
            Config::from_toml_str("").unwrap(),
            c,
            "every key is optional"
        );
        // The release policy's settings, including no delay, round-trip too.
        let c = Config::builder()
            .release_delay_ms(None)
            .max_release_delay_ms(20)
            .soft_limit(1 << 30)
            .background_release(true)
            .build()
            .unwrap();
        assert_eq!(Config::from_toml_str(&c.to_toml_string()).unwrap(), c);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::from_json_str(&json).unwrap(), c);
        let t = Config::from_toml_str("release_delay_ms = 250\nsoft_limit = \"2 GiB\"").unwrap();
        assert_eq!(
            (t.release_delay_ms, t.soft_limit),
            (Some(250), Some(2 << 30))
        );
        for (text, needle) in [
            ("release_delay_ms = -5", "negative"),
            ("release_delay_ms = \"soon\"", "never"),
            ("release_delay_ms = 999999999999", "at most"),
            ("max_release_delay_ms = 999999999999", "at most"),
            (
                "release_delay_ms = 250\nmax_release_delay_ms = 100",
                "max_release_delay_ms (100) must be at least release_delay_ms (250)",
            ),
            ("soft_limit = 0", "soft_limit"),
            (
                "soft_limit = \"2 GiB\"\nmemory_limit = \"1 GiB\"",
                "must not be above",
            ),
        ] {
            let err = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn each_impossible_setting_is_named() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder().alignment(48), "alignment"),
            (Config::builder().alignment(8192), "alignment"),
            (Config::builder().small_threshold(1000), "small_threshold"),
            // The size classes' own checks name the settings too (they did not).
            (Config::builder().min_block_size(65536), "min_block_size"),
            (Config::builder().min_block_size(24), "min_block_size"),
            (
                Config::builder().min_block_size(32).classes_per_doubling(4),
                "min_block_size",
            ),
            (
                Config::builder().classes_per_doubling(128),
                "classes_per_doubling",
            ),
            (
                Config::builder().classes_per_doubling(3),
                "classes_per_doubling",
            ),
            (Config::builder().huge_threshold(1024), "huge_threshold"),
            (Config::builder().pool_chunk_size(0), "pool_chunk_size"),
            (Config::builder().segment_size(0), "segment_size"),
            (Config::builder().arena_chunk_size(0), "arena_chunk_size"),
            (
                Config::builder().large_granularity(100),
                "large_granularity",
            ),
            (Config::builder().max_split_size(1 << 20), "max_split_size"),
            (Config::builder().memory_limit(0), "memory_limit"),
            (
                Config::builder()
                    .upstream(UpstreamKind::Heap)
                    .huge_pages(true),
                "huge_pages",
            ),
            (
                Config::builder()
                    .upstream(UpstreamKind::Heap)
                    .expandable_segments(true),
                "expandable_segments",
            ),
            (
                Config::builder().commit_granularity(1000),
                "commit_granularity",
            ),
            (
                Config::builder().commit_granularity(4 << 20),
                "commit_granularity",
            ),
            (Config::builder().pool(0, 10), "block size"),
            (Config::builder().pool(64, 0), "capacity of 0"),
            (Config::builder().pool(64, 1).pool(64, 2), "same block size"),
            (Config::builder().pool(8 << 30, 1), "below 4 GiB"),
            // Rounded up to the 64-byte alignment, its slots would be 4 GiB.
            (Config::builder().pool((4 << 30) - 63, 1), "below 4 GiB"),
        ];
        for (builder, needle) in cases {
            match builder.build() {
                Err(Error::InvalidConfig(msg)) => {
                    assert!(msg.contains(needle), "`{needle}` not in `{msg}`")
                }
                other => panic!("expected an error naming `{needle}`, got {other:?}"),
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "file system access")]
    fn files_name_their_errors() {
        let dir = std::env::temp_dir().join(format!("tensorpool-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"{"memory_limit": "1 GiB", "pools": [{"block_size": "4 KiB", "capacity": 8}]}"#,
        )
        .unwrap();
        let c = Config::from_file(&good).unwrap();
        assert_eq!(c.memory_limit, Some(1 << 30));
        assert_eq!(
            c.pools,
            vec![PoolSpec {
                block_size: 4096,
                capacity: 8
            }]
        );
        // A config written as JSON reads back, its unset settings `null` (they were
        // refused once read over a base), also over a base that sets them.
        let written = dir.join("written.json");
        let config = Config {
            memory_limit: Some(1 << 30),
            ..Config::default()
        };
        std::fs::write(&written, serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(Config::from_file(&written).unwrap(), config);
        let base = Config {
            soft_limit: Some(1 << 29),
            ..config.clone()
        };
        assert_eq!(Config::from_file_over(&base, &written).unwrap(), config);
        // The error of a config file named `name` holding `text`.
        let error_of = |name: &str, text: &str| {
            let bad = dir.join(name);
            std::fs::write(&bad, text).unwrap();
            Config::from_file(&bad).unwrap_err().to_string()
        };
        let msg = error_of(
            "bad.toml",
            "# limits\nsoft_limit = \"1 GiB\"\nmemory_limit = -5\n",
        );
        assert!(
            msg.contains("bad.toml: line 3 (`memory_limit = -5`)") && msg.contains("negative"),
            "the file, the line and the setting: {msg}"
        );
        let msg = error_of(
            "bad.json",
            "{\n  \"release_delay_ms\": 10,\n  \"background_release\": \"yes\"\n}",
        );
        assert!(
            msg.contains("bad.json: line 3 (`\"background_release\": \"yes\"`)")
                && msg.contains("expected a boolean")
                && !msg.contains("column"),
            "the file, the line and the setting: {msg}"
        );
        let missing = Config::from_file(dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
        // An error inside a character that is not ASCII is placed, not a panic.
        for text in [
            "{\"upstream\": \"é",
            "{\"upstream\": \"\\u00é\"}",
            "{\"ü\": 1}",
        ] {
            let msg = Config::from_json_str(text).unwrap_err().to_string();
            assert!(msg.contains("line 1"), "{msg}");
        }
        let unknown =
            Config::from_json_str(r#"{"pools": [{"block_size": 64, "capacity": 1, "colour": 3}]}"#);
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `colour`"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_largest_valid_threshold_builds_a_manager() {
        let c = Config::builder()
            .small_threshold(1 << 31)
            .huge_threshold(1 << 40)
            .build()
            .unwrap();
        crate::MemoryManager::new(c).unwrap();
        assert!(Config::builder()
            .small_threshold(1 << 32)
            .huge_threshold(1 << 40)
            .build()
            .is_err());
    }

    #[test]
    fn pools_read_as_a_list_or_a_table() {
        let table = Config::from_toml_str("pools = { \"64\" = 1000, \"128 B\" = 500 }").unwrap();
        let list = Config::from_json_str(r#"{"pools": [{"block_size": 64, "capacity": 1000}, {"block_size": 128, "capacity": 500}]}"#).unwrap();
        assert_eq!(table.pools, list.pools);
        let json_table = Config::from_json_str(r#"{"pools": {"64": 1000, "128": 500}}"#).unwrap();
        assert_eq!(json_table.pools, list.pools);
        let err = Config::from_json_str(r#"{"pools": {"lots": 3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("in pools") && err.contains("lots"), "{err}");
        let err = Config::from_json_str(r#"{"pools": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a list of"), "{err}");
    }

    #[test]
    fn zero_threshold_means_no_size_classes() {
        let c = Config::builder().small_threshold(0).build().unwrap();
        assert!(c.size_classes().unwrap().is_none());
    }
}
