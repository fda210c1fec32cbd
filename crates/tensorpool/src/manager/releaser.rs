//! The background thread of the release policy: one per process, for every manager
//! made with `background_release`, so that a program that frees its memory and then
//! waits (a server between requests, a notebook between cells) gets it back without
//! calling into tensorpool.
//!
//! The thread (named `tp-release`: thread names are at most 15 bytes) sleeps until
//! the next manager's pass is due, runs the passes that are due, and exits when no
//! such manager is left. It holds managers weakly: a manager that goes away takes
//! nothing of the thread with it.
//!
//! After `fork()` the child has no thread (only the forking thread survives), and
//! none is started until the child allocates on a slow path: a child that only
//! computes, or `exec`s at once, never gets one. The registry's lock is taken around
//! `fork()` (`pthread_atfork`), so the child never finds it held by a thread that
//! does not exist there.

use super::Inner;
use crate::util::reentry::Inside;
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The managers the thread serves.
struct Registry {
    managers: Vec<Weak<Inner>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    managers: Vec::new(),
});
/// Wakes the thread early: a manager came or went.
static WAKE: Condvar = Condvar::new();
/// Whether the thread runs (in this process: a forked child's is false).
static RUNNING: AtomicBool = AtomicBool::new(false);
/// The thread sleeps at most this long (it rechecks which managers are left).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// The shortest wait. The policy's clock (Linux's coarse monotonic clock) may lag
/// the timer the thread waits on by a tick (1-10 ms): a thread that wakes before the
/// pass is due by that clock waits again for what is left, at least this long (and
/// this long when a pass is due but another thread runs one).
const MIN_WAIT: Duration = Duration::from_millis(1);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves `inner` from the background thread, starting it if needed.
pub(super) fn register(inner: &Arc<Inner>) {
    super::fork::register_handlers();
    registry().managers.push(Arc::downgrade(inner));
    WAKE.notify_all();
    ensure_running();
}

/// Tells the thread that a manager went away (it exits when none is left).
pub(super) fn wake() {
    if RUNNING.load(Acquire) {
        WAKE.notify_all();
    }
}

/// Starts the thread if it does not run in this process and some manager needs it
/// (a slow path calls this: the first allocation of a forked child starts it).
#[inline]
pub(super) fn ensure_running() {
    if RUNNING.load(Acquire) {
        return;
    }
    start();
}

#[cold]
fn start() {
    let reg = registry();
    if reg.managers.is_empty() || RUNNING.swap(true, Release) {
        return;
    }
    drop(reg);
    let spawned = std::thread::Builder::new()
        .name("tp-release".into())
        .spawn(run);
    if spawned.is_err() {
        // No thread: the policy still runs on the managers' slow paths.
        RUNNING.store(false, Release);
    }
}

/// The thread's loop.
fn run() {
    let mut reg = registry();
    loop {
        reg.managers.retain(|m| m.strong_count() > 0);
        if reg.managers.is_empty() {
            RUNNING.store(false, Release);
            return;
        }
        let live: Vec<Arc<Inner>> = reg.managers.iter().filter_map(Weak::upgrade).collect();
        drop(reg);
        for inner in &live {
            // For the process-wide allocator, what the pass allocates comes from the
            // system allocator (see `util::reentry`).
            let inside = Inside::enter_if(inner.engine.process_wide.load(Relaxed));
            inner.release_if_due();
            drop(inside);
        }
        let sleep = next_wait(&live);
        drop(live);
        reg = registry();
        reg = WAKE
            .wait_timeout(reg, sleep)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// How long the thread waits before it looks again: until the first of `managers`'
/// next passes is due ([`MIN_WAIT`] at least, [`MAX_SLEEP`] at most). Waiting an
/// interval after its own passes instead, the thread woke just before a pass was due
/// whenever a slow path had run the last one, or the clock lagged its timer, and
/// skipped a whole interval: memory went back after up to two delays, not one and a
/// half.
pub(super) fn next_wait(managers: &[Arc<Inner>]) -> Duration {
    managers
        .iter()
        .filter_map(|inner| inner.release.until_next_pass())
        .fold(MAX_SLEEP, Duration::min)
        .max(MIN_WAIT)
}

thread_local! {
    /// The registry's lock, held by the forking thread across `fork()`.
    static HELD: std::cell::RefCell<Option<MutexGuard<'static, Registry>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before `fork()` (`manager::fork`, first of all locks): the registry, held by the
/// forking thread (in a thread-local of its own, the thread that runs all three).
pub(super) fn before_fork() {
    let guard = registry();
    HELD.with(|h| *h.borrow_mut() = Some(guard));
}

/// After `fork()`, in the parent.
pub(super) fn after_fork() {
    HELD.with(|h| drop(h.borrow_mut().take()));
}

/// After `fork()`, in the child: only the forking thread lives on, so no releaser
/// runs there (the child's first allocation that needs one starts it).
pub(super) fn in_child() {
    RUNNING.store(false, Release);
    HELD.with(|h| drop(h.borrow_mut().take()));
}

/// Whether the thread runs in this process (for tests).
#[cfg(test)]
pub(crate) fn running() -> bool {
    RUNNING.load(Acquire)
}
