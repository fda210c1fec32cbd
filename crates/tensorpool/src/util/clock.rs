//! Time for the release policy: how long free memory has gone unused.
//!
//! A manager reads its clock only on slow paths and in its release passes. By default
//! it is the system's monotonic clock (on Linux its coarse form, read at a quarter of
//! the cost: see [`MonotonicClock`]); tests and replays of recorded traces (whose
//! events carry their own times, compressed by a replay) give a [`ManualClock`] they
//! move themselves.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tensorpool::clock::{Clock, ManualClock};
//!
//! let clock = Arc::new(ManualClock::new());
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now(), Duration::from_millis(1500));
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A monotonic time source: the time since some fixed start.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The time now; never less than at an earlier call.
    fn now(&self) -> Duration;
}

/// The system's monotonic clock, from the moment it was made.
///
/// On Linux it reads the coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`: the time
/// of the last timer tick, at most a few milliseconds behind), which the vDSO
/// returns without reading and scaling the CPU's counter: 6 ns a read against 23 ns
/// on the 2-core development machine (a KVM guest). The release policy
/// measures delays of tens of milliseconds and more and reads its clock on every
/// slow path, where the precise clock took 6-8% of a 64 KiB allocate + free pair
/// served by the best-fit tier.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Duration,
}

impl MonotonicClock {
    /// A clock that reads zero now.
    pub fn new() -> Self {
        MonotonicClock {
            start: system_now(),
        }
    }
}

/// The coarse monotonic clock, since some fixed start.
#[cfg(all(target_os = "linux", not(miri)))]
fn system_now() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid `timespec` for the call to write into. The call cannot
    // fail with a valid pointer and a clock every kernel Rust supports has (2.6.32+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC_COARSE is missing");
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The standard library's monotonic clock (elsewhere, and under Miri), since this
/// process first asked.
#[cfg(not(all(target_os = "linux", not(miri))))]
fn system_now() -> Duration {
    use std::time::Instant;
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        system_now().saturating_sub(self.start)
    }
}

/// A clock that moves only when told to: for tests, and for replays of traces that
/// carry their own times.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock that reads zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(nanos(by), Relaxed);
    }

    /// Sets the time to `to`, if that is later than now (the clock never goes back).
    pub fn set(&self, to: Duration) {
        self.nanos.fetch_max(nanos(to), Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Relaxed))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward_only() {
        let c = ManualClock::new();
        c.set(Duration::from_secs(2));
        c.set(Duration::from_secs(1));
        assert_eq!(c.now(), Duration::from_secs(2));
        c.advance(Duration::from_millis(5));
        assert_eq!(c.now(), Duration::from_millis(2005));
        let m = MonotonicClock::new();
        let a = m.now();
        assert!(m.now() >= a);
    }

    /// The coarse clock lags by at most a timer tick (1-10 ms), far less than the
    /// release policy's delays: a sleep of 60 ms reads as at least 40 ms.
    #[test]
    #[cfg_attr(miri, ignore = "sleeps")]
    fn the_system_clock_follows_real_time() {
        let m = MonotonicClock::new();
        let a = m.now();
        std::thread::sleep(Duration::from_millis(60));
        let waited = m.now() - a;
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        assert!(waited < Duration::from_secs(30), "{waited:?}");
    }
}
