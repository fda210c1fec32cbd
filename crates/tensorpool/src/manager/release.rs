//! Memory given back: the release policy, its passes, the soft limit.
//!
//! Keeping memory warm is the manager's speed (a first-touch page fault costs
//! microseconds per page), so free memory goes back to the system by a deliberate
//! policy, as jemalloc's decay and mimalloc's purge delay do:
//!
//! - **After a delay.** Free memory unused for `release_delay_ms` goes back, in every
//!   tier: threads' empty slabs and cached large blocks (also those of idle threads,
//!   which a pass stops for a moment, as `trim()` does) return to the best-fit tier,
//!   which gives back the pages inside its free blocks in place (`madvise`, the block
//!   structure and address range kept), decommits the free top of its expandable
//!   segments and returns wholly free segments; cached huge segments are unmapped.
//!   Memory reused within the delay is not released, so a loop whose steps repeat
//!   keeps its pages.
//! - **In passes.** A pass ages every free item by one and releases those that
//!   [`RELEASE_AGE`] passes have seen unused; passes run `delay / 2` apart, so memory
//!   goes back after at least the delay unused and at most one and a half times it.
//!   A pass runs on the manager's slow paths when one is due by its clock, and, with
//!   `background_release`, from a background thread while the program is idle (see
//!   the `releaser` module). The clock is the system's, or one the caller moves
//!   ([`MemoryManager::with_clock`](super::MemoryManager::with_clock)).
//! - **At once**, above the soft limit (resident bytes beyond it release all free
//!   memory after each growth), on running out of memory (all free memory, then a
//!   retry), and on `trim()`.
//!
//! - **Adapting** to programs whose steps are longer than the delay. When the
//!   manager takes memory from the system again (64 KiB or more between two passes)
//!   within four delays of giving some back, the release was likely a mistake that
//!   cost a page fault per page: while the program keeps allocating, the delay in
//!   effect doubles (up to 32 times the one set, or up to `max_release_delay_ms`);
//!   with no such regret it halves again after 64 passes of a busy program or 16 of
//!   an idle one. A pass that finds no allocation since the one before sees an idle
//!   program, and for it the delay set holds: a server between requests or a
//!   notebook between cells gets its memory back after the delay set, however long
//!   the delay in effect grew (docs/BENCHMARKS.md, "Memory given back"). A program
//!   that frees much while it keeps allocating (one tearing down) gets its memory
//!   back only after the delay in effect: `max_release_delay_ms` bounds that.
//!
//! Released pages are no longer resident: they count against neither the limits nor
//! `resident_bytes`, and count again when reused. The heap upstream cannot release
//! pages in place: with it, only whole regions go back.

use super::Inner;
use crate::tiers::contract::RELEASE_AGE;
use crate::util::clock::Clock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Passes run at least this far apart (a delay of 0 releases at every pass).
pub(super) const MIN_PASS_INTERVAL: Duration = Duration::from_millis(10);

/// Free memory above this much is worth releasing at once over the soft limit.
const SOFT_LIMIT_SLACK: usize = 1 << 20;

/// Memory taken from the system between two passes, soon after a release, that
/// makes the delay in effect double.
const REGRET_BYTES: u64 = 64 << 10;
/// The delay in effect is at most the one set times 2^this (or less under
/// `max_release_delay_ms`).
const MAX_STRETCH: u32 = 5;
/// Quiet after which the delay in effect halves: a pass without regret adds 1 while
/// the program allocates, 8 while it is idle (the stretch unwinds after 64 busy
/// passes, or 16 idle ones).
const QUIET_TO_UNWIND: u32 = 128;
/// Memory taken back this many passes or fewer after a release (four delays in
/// effect) is a regret.
const REGRET_WINDOW: u32 = 8;

/// The release policy's settings and state.
#[derive(Debug)]
pub(super) struct Release {
    pub(super) clock: Arc<dyn Clock>,
    /// The delay in nanoseconds; `u64::MAX`: none (release only when asked).
    delay: AtomicU64,
    /// The longest delay in effect, in nanoseconds; `u64::MAX`: the delay times
    /// 2^[`MAX_STRETCH`].
    max_delay: u64,
    /// Resident bytes above which free memory goes at once; `usize::MAX`: none.
    soft_limit: AtomicUsize,
    /// When the next pass is due, in the clock's nanoseconds.
    next_pass: AtomicU64,
    /// Set while a pass runs: one at a time.
    passing: AtomicBool,
    /// When memory last went back, in the clock's nanoseconds plus one (0: never).
    last: AtomicU64,
    /// The adaptation (see the module docs), changed by passes only.
    adapt: crate::util::sync::PlainMutex<Adapt>,
    /// Ticks of the slow paths, for [`Inner::activity`]: a load and a store, not an
    /// atomic increment (a tick lost to a race still changes the count).
    slow_paths: AtomicU64,
}

/// What the passes learn of the program's reuse.
#[derive(Debug, Default)]
struct Adapt {
    /// The delay in effect is the one set times 2^stretch; at most
    /// [`Release::stretch_limit`] (kept by `learn` and `set_delay`).
    stretch: u32,
    /// Quiet since the last regret or unwinding (see [`QUIET_TO_UNWIND`]).
    quiet: u32,
    /// Whether the last pass found the program idle.
    idle: bool,
    /// Passes since memory last went back (`u32::MAX`: long ago).
    since_release: u32,
    /// The upstream's acquired bytes at the last pass.
    acquired: u64,
    /// The program's allocations counted at the last pass (see [`Inner::activity`]).
    activity: u64,
}

/// The free bytes worth the calls of a release above the soft limit `soft`.
fn worth_releasing(soft: usize) -> usize {
    SOFT_LIMIT_SLACK.min(soft / 32).max(1)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// The policy's lock, held across `fork()` (`manager::fork`).
pub(super) struct ReleaseHold<'a>(#[allow(dead_code)] std::sync::MutexGuard<'a, Adapt>);

impl Release {
    /// Takes the policy's lock, to hold across `fork()`.
    pub(super) fn hold_for_fork(&self) -> ReleaseHold<'_> {
        ReleaseHold(self.adapt.lock())
    }

    /// In a forked child: a pass that another thread ran at the fork never ends
    /// there, so none runs.
    pub(super) fn in_forked_child(&self) {
        self.passing.store(false, Relaxed);
    }

    pub(super) fn new(
        clock: Arc<dyn Clock>,
        delay: Option<Duration>,
        max_delay: Option<Duration>,
        soft_limit: Option<usize>,
    ) -> Release {
        let r = Release {
            clock,
            delay: AtomicU64::new(u64::MAX),
            max_delay: max_delay.map_or(u64::MAX, nanos),
            soft_limit: AtomicUsize::new(soft_limit.unwrap_or(usize::MAX)),
            next_pass: AtomicU64::new(0),
            passing: AtomicBool::new(false),
            last: AtomicU64::new(0),
            adapt: crate::util::sync::PlainMutex::new(Adapt {
                since_release: u32::MAX,
                ..Adapt::default()
            }),
            slow_paths: AtomicU64::new(0),
        };
        r.set_delay(delay);
        r
    }

    /// The delay, or `None` when memory goes back only when asked.
    pub(super) fn delay(&self) -> Option<Duration> {
        match self.delay.load(Relaxed) {
            u64::MAX => None,
            d => Some(Duration::from_nanos(d)),
        }
    }

    pub(super) fn set_delay(&self, delay: Option<Duration>) {
        self.delay.store(delay.map_or(u64::MAX, nanos), Relaxed);
        // The stretch stays within the bound for this delay (a delay raised past
        // `max_release_delay_ms` is not stretched); passes only ever raise it up to
        // the bound, so the delay in effect never exceeds it.
        let limit = self.stretch_limit();
        let mut a = self.adapt.lock();
        a.stretch = a.stretch.min(limit);
        drop(a);
        // The next pass is one interval from now.
        if let Some(interval) = self.interval() {
            let now = nanos(self.clock.now());
            self.next_pass
                .store(now.saturating_add(nanos(interval)), Relaxed);
        }
    }

    /// The delay in effect while the program allocates: the one set, stretched while
    /// the program keeps taking back released memory.
    pub(super) fn effective_delay(&self) -> Option<Duration> {
        let stretch = self.adapt.lock().stretch;
        self.delay().map(|d| d.saturating_mul(1 << stretch))
    }

    /// The most doublings of the delay set: [`MAX_STRETCH`], or as many as keep it
    /// within `max_release_delay_ms` (none when that is below the delay, which
    /// `set_release_delay` may have raised above it).
    fn stretch_limit(&self) -> u32 {
        let delay = self.delay.load(Relaxed);
        if self.max_delay == u64::MAX || delay == 0 || delay == u64::MAX {
            return MAX_STRETCH;
        }
        match self.max_delay / delay {
            0 => 0,
            ratio => ratio.ilog2().min(MAX_STRETCH),
        }
    }

    /// The time between passes, if there are passes.
    pub(super) fn interval(&self) -> Option<Duration> {
        self.delay().map(|d| (d / 2).max(MIN_PASS_INTERVAL))
    }

    /// How long until the next pass is due by the policy's clock (zero if it is
    /// due), if there are passes: what the background thread waits (see
    /// `releaser::next_wait`).
    pub(super) fn until_next_pass(&self) -> Option<Duration> {
        self.interval()?;
        let now = nanos(self.clock.now());
        Some(Duration::from_nanos(
            self.next_pass.load(Relaxed).saturating_sub(now),
        ))
    }

    /// The passes that must see free memory unused before it goes back, for a pass
    /// that found the program's allocations at `activity`: one with a delay of zero,
    /// [`RELEASE_AGE`] for an idle program, and that many times the stretch while it
    /// allocates.
    fn min_age(&self, activity: u64) -> u8 {
        if self.delay() == Some(Duration::ZERO) {
            return 1;
        }
        let mut a = self.adapt.lock();
        let idle = std::mem::replace(&mut a.activity, activity) == activity;
        a.idle = idle;
        if idle {
            RELEASE_AGE
        } else {
            RELEASE_AGE << a.stretch
        }
    }

    /// Learns from the pass that ran: `acquired`, the upstream's acquired bytes now,
    /// and whether the pass released anything.
    fn learn(&self, acquired: u64, released: bool) {
        let mut a = self.adapt.lock();
        let regret =
            acquired.saturating_sub(a.acquired) >= REGRET_BYTES && a.since_release <= REGRET_WINDOW;
        a.acquired = acquired;
        if regret {
            a.stretch = (a.stretch + 1).min(self.stretch_limit());
            a.quiet = 0;
        } else {
            a.quiet += if a.idle { 8 } else { 1 };
            if a.quiet >= QUIET_TO_UNWIND {
                a.stretch = a.stretch.saturating_sub(1);
                a.quiet = 0;
            }
        }
        a.since_release = if released {
            0
        } else {
            a.since_release.saturating_add(1)
        };
    }

    pub(super) fn soft_limit(&self) -> Option<usize> {
        match self.soft_limit.load(Relaxed) {
            usize::MAX => None,
            l => Some(l),
        }
    }

    pub(super) fn set_soft_limit(&self, limit: Option<usize>) {
        self.soft_limit.store(limit.unwrap_or(usize::MAX), Relaxed);
    }

    /// How long ago memory last went back, if it ever did.
    pub(super) fn since_last(&self) -> Option<Duration> {
        match self.last.load(Relaxed) {
            0 => None,
            t => Some(self.clock.now().saturating_sub(Duration::from_nanos(t - 1))),
        }
    }

    fn note(&self, released: usize) {
        if released > 0 {
            self.last
                .store(nanos(self.clock.now()).saturating_add(1), Relaxed);
        }
    }
}

impl Inner {
    /// Counts a slow path of allocation or free.
    #[inline]
    pub(super) fn tick_slow_path(&self) {
        let ticks = &self.release.slow_paths;
        ticks.store(ticks.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// A count that changes whenever the program allocates: the threads' allocations
    /// from the engine plus the slow paths' ticks.
    fn activity(&self) -> u64 {
        self.engine
            .allocations()
            .wrapping_add(self.release.slow_paths.load(Relaxed))
    }

    /// Runs a pass of the release policy if one is due by the clock; the bytes given
    /// back. Cheap when none is due: a clock read and a comparison.
    pub(super) fn release_if_due(&self) -> usize {
        let r = &self.release;
        let Some(interval) = r.interval() else {
            return 0;
        };
        let now = nanos(r.clock.now());
        if now < r.next_pass.load(Relaxed) || r.passing.swap(true, Relaxed) {
            return 0;
        }
        r.next_pass
            .store(now.saturating_add(nanos(interval)), Relaxed);
        let min_age = r.min_age(self.activity());
        // The engine first: the pages of its idle slabs reach the best-fit tier
        // already aged, and go back to the system in this same pass.
        self.engine.release_idle(min_age);
        let released = self
            .locked_tiers()
            .iter()
            .map(|tier| tier.release_idle(min_age))
            .sum::<usize>();
        r.note(released);
        r.learn(self.metered.acquired_bytes(), released > 0);
        r.passing.store(false, Relaxed);
        released
    }

    /// After a free of `bytes` bytes by `owner`, a locked tier: above the soft limit,
    /// gives back that tier's free memory now, if the block was worth the calls (the
    /// smaller ones wait for the next growth, below). Only that tier's: the engine's
    /// caches would take stopping every thread's heap, at every such free, while
    /// live memory stays above the limit.
    pub(super) fn release_freed_over_soft_limit(&self, owner: super::owners::Owner, bytes: usize) {
        let Some(soft) = self.release.soft_limit() else {
            return;
        };
        if bytes < worth_releasing(soft) || self.metered.resident_bytes() <= soft {
            return;
        }
        let released = self.locked_tier(owner).trim();
        self.release.note(released);
    }

    /// After the manager grew: above the soft limit, gives every free byte back now.
    pub(super) fn release_over_soft_limit(&self) {
        let Some(soft) = self.release.soft_limit() else {
            return;
        };
        let resident = self.metered.resident_bytes();
        if resident <= soft {
            return;
        }
        // Only when there is free memory worth the calls (live memory alone may be
        // above the limit).
        let (allocated, _) = self.counters.totals.current();
        let free = resident.saturating_sub(allocated.max(0) as usize);
        if free >= worth_releasing(soft) {
            self.trim();
        }
    }

    /// Gives every free byte back now, every thread's included; the bytes.
    pub(super) fn trim(&self) -> usize {
        // The engine's free slabs and blocks go to the best-fit tier, which gives
        // them back to the system with the rest.
        self.engine.trim();
        let released = self
            .locked_tiers()
            .iter()
            .map(|tier| tier.trim())
            .sum::<usize>();
        self.release.note(released);
        released
    }
}
