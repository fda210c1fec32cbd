//! The background thread of the release policy: one per process, for every manager
//! made with `background_release`, so that a program that frees its memory and then
//! waits (a server between requests, a notebook between cells) gets it back without
//! calling into tensorpool.
//!
//! The thread (named `tp-release`: thread names are at most 15 bytes) sleeps until
//! the next manager's pass is due, runs the passes that are due, and exits when no
//! such manager has been left for [`LINGER`]. It holds managers weakly: a manager
//! that goes away takes nothing of the thread with it.
//!
//! After `fork()` the child has no thread (only the forking thread survives), and
//! none is started until the child allocates on a slow path: a child that only
//! computes, or `exec`s at once, never gets one. The registry's lock, and the lock
//! the thread holds while it runs passes, are taken around `fork()`
//! (`pthread_atfork`): a fork waits for the thread's running pass to end, so the
//! child never finds a lock held by this thread, which does not exist there (a pass
//! holds its manager's locks; a child forked during one waited for ever on its
//! first allocation). The other threads of a program that forks are the program's
//! to stop: only the process-wide manager's locks are all held across `fork()`.

use super::Inner;
use crate::util::reentry::Inside;
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The managers the thread serves.
struct Registry {
    managers: Vec<Weak<Inner>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    managers: Vec::new(),
});
/// Held by the thread while it runs passes (without the registry's lock), and by a
/// forking thread across `fork()`.
static PASSES: Mutex<()> = Mutex::new(());
/// Wakes the thread early: a manager came whose first pass is due before the thread
/// would wake.
static WAKE: Condvar = Condvar::new();
/// When the thread wakes next, in nanoseconds from [`epoch`]; `u64::MAX` (never:
/// any manager that comes wakes it) while it lingers, works or does not run. A manager that comes or goes wakes it only when it must
/// (a new manager's first pass is due earlier): waking it at each, a program that
/// made managers one after another paid two context switches for each.
static WAKES_AT: AtomicU64 = AtomicU64::new(u64::MAX);
/// A manager came while the thread was running passes (not waiting): it looks at
/// the registry again before it waits, so that the newcomer's first pass is not
/// left to the end of a sleep computed without it.
static CAME: AtomicBool = AtomicBool::new(false);
/// Whether the thread runs (in this process: a forked child's is false).
static RUNNING: AtomicBool = AtomicBool::new(false);
/// The thread sleeps at most this long (it rechecks which managers are left).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// The shortest wait. The policy's clock (Linux's coarse monotonic clock) may lag
/// the timer the thread waits on by a tick (1-10 ms): a thread that wakes before the
/// pass is due by that clock waits again for what is left, at least this long (and
/// this long when a pass is due but another thread runs one).
const MIN_WAIT: Duration = Duration::from_millis(1);
/// How long the thread waits for a new manager once the last one went away before
/// it exits: a program that makes managers one after another (a test suite, a
/// manager per request) would otherwise start a thread for each (measured: a fifth
/// of the time of making a manager and 100 small arrays from it, in a loop).
#[cfg(not(test))]
const LINGER: Duration = Duration::from_secs(1);
/// Longer in tests, so that a manager left waiting out the linger shows.
#[cfg(test)]
const LINGER: Duration = Duration::from_secs(5);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn passes() -> MutexGuard<'static, ()> {
    PASSES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The instant [`WAKES_AT`] counts from.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Nanoseconds from [`epoch`] to `duration` from now.
fn from_now(duration: Duration) -> u64 {
    let at = epoch().elapsed().saturating_add(duration);
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

/// Serves `inner` from the background thread, starting it if needed.
pub(super) fn register(inner: &Arc<Inner>) {
    super::fork::register_handlers();
    let due = inner.release.until_next_pass().map(from_now);
    let mut reg = registry();
    // The thread sets its wake-up time under the registry's lock, before it waits:
    // read here under the lock, it is the one the thread waits for now.
    let early = due.is_some_and(|due| due < WAKES_AT.load(Relaxed));
    reg.managers.push(Arc::downgrade(inner));
    CAME.store(true, Relaxed);
    drop(reg);
    if early {
        WAKE.notify_all();
    }
    ensure_running();
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
    match spawned {
        Ok(_) => {
            #[cfg(test)]
            STARTS.fetch_add(1, Relaxed);
        }
        // No thread: the policy still runs on the managers' slow paths.
        Err(_) => RUNNING.store(false, Release),
    }
}

/// Threads started in this process (for tests).
#[cfg(test)]
static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Threads started in this process so far (for tests).
#[cfg(test)]
pub(crate) fn starts() -> usize {
    STARTS.load(Relaxed)
}

/// The thread's loop.
fn run() {
    let mut reg = registry();
    loop {
        reg.managers.retain(|m| m.strong_count() > 0);
        let deadline = std::time::Instant::now() + LINGER;
        while reg.managers.is_empty() {
            let now = std::time::Instant::now();
            if now >= deadline {
                // Under the registry's lock: a manager registered after this starts
                // a new thread.
                RUNNING.store(false, Release);
                return;
            }
            // Any manager that comes now wakes the thread (its first pass is due
            // before "never").
            WAKES_AT.store(u64::MAX, Relaxed);
            reg = WAKE
                .wait_timeout(reg, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            WAKES_AT.store(u64::MAX, Relaxed);
            reg.managers.retain(|m| m.strong_count() > 0);
        }
        let live: Vec<Arc<Inner>> = reg.managers.iter().filter_map(Weak::upgrade).collect();
        drop(reg);
        let running = passes();
        for inner in &live {
            // For the process-wide allocator, what the pass allocates comes from the
            // system allocator (see `util::reentry`).
            let inside = Inside::enter_if(inner.engine.process_wide.load(Relaxed));
            inner.release_if_due();
            drop(inside);
        }
        drop(running);
        let sleep = next_wait(&live);
        drop(live);
        reg = registry();
        if CAME.swap(false, Relaxed) {
            // Under the lock, where `register` sets it: a manager came since `live`
            // was taken.
            continue;
        }
        WAKES_AT.store(from_now(sleep), Relaxed);
        reg = WAKE
            .wait_timeout(reg, sleep)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        WAKES_AT.store(u64::MAX, Relaxed);
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

/// What the forking thread holds across `fork()`: the registry's lock and the passes'.
type Held = (MutexGuard<'static, Registry>, MutexGuard<'static, ()>);

thread_local! {
    static HELD: std::cell::RefCell<Option<Held>> = const { std::cell::RefCell::new(None) };
}

/// Before `fork()` (`manager::fork`, first of all locks): the registry, then the
/// passes' lock (a running pass ends first), held by the forking thread (in a
/// thread-local of its own, the thread that runs all three). The thread takes the
/// passes' lock without the registry's, so the order cannot deadlock.
pub(super) fn before_fork() {
    let guard = registry();
    let running = passes();
    HELD.with(|h| *h.borrow_mut() = Some((guard, running)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a user hunt: a child forked while the thread ran a pass (which holds
    /// its manager's locks) waited for ever on its first allocation, one fork in a
    /// few hundred. The fork now waits for the pass to end.
    #[test]
    fn a_fork_waits_for_a_running_pass_to_end() {
        let running = passes(); // as the thread holds it during its passes
        let (forked, done) = std::sync::mpsc::channel();
        let forker = std::thread::spawn(move || {
            before_fork();
            forked.send(()).unwrap();
            after_fork();
        });
        assert!(
            done.recv_timeout(Duration::from_millis(200)).is_err(),
            "the fork went ahead during a pass"
        );
        drop(running);
        done.recv_timeout(Duration::from_secs(10))
            .expect("the fork goes ahead once the pass ends");
        forker.join().unwrap();
    }
}
