//! Time for the release policy: how long free memory has gone unused.
//!
//! A manager reads its clock only on slow paths and in its release passes. By default
//! it is the system's monotonic clock; tests and replays of recorded traces (whose
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
use std::time::{Duration, Instant};

/// A monotonic time source: the time since some fixed start.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The time now; never less than at an earlier call.
    fn now(&self) -> Duration;
}

/// The system's monotonic clock, from the moment it was made.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    /// A clock that reads zero now.
    pub fn new() -> Self {
        MonotonicClock {
            start: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
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
}
