//! The synchronization primitives of the parts that loom model-checks.
//!
//! Natively these are the standard library's mutex and atomics; built with
//! `RUSTFLAGS="--cfg loom"` they are loom's, so that loom can explore every
//! interleaving of the small-block engine's hand-offs (see `slab`). The tiers
//! outside the models take [`PlainMutex`] and [`RwLock`], the standard library's
//! in every build.
//!
//! Why the standard library's and not parking_lot's: a lock held across `fork()`
//! (`manager::fork`) is let go in the child, where only the forking thread lives.
//! The standard (futex) locks then simply become free; parking_lot's may hand the
//! lock to a thread that was parked on it in the parent, which does not exist in
//! the child, and the lock stays taken for ever. Poisoning is passed over: every
//! structure behind these locks is left whole by the code that holds them (a
//! panic there is a bug that has already been reported).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// A cache line's alignment, for `repr(C)` records that keep what one thread writes
/// often apart from what others read or write: a zero-length array of it as a field
/// starts the fields after it on a line of their own (the compiler keeps the order).
#[repr(align(64))]
pub(crate) struct CacheLine;

/// The guard of a [`Mutex`].
#[cfg(not(loom))]
pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

/// A mutex whose `lock` returns the guard directly: natively [`PlainMutex`], loom's
/// under loom.
#[cfg(not(loom))]
pub(crate) use PlainMutex as Mutex;

/// A mutex whose `lock` returns the guard directly: natively [`PlainMutex`], loom's
/// under loom.
#[cfg(loom)]
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

/// The standard library's mutex in every build (loom's models leave it out), its
/// `lock` returning the guard directly.
#[derive(Debug, Default)]
pub(crate) struct PlainMutex<T>(std::sync::Mutex<T>);

impl<T> PlainMutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        PlainMutex(std::sync::Mutex::new(value))
    }

    #[inline]
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The standard library's readers-writer lock, its guards returned directly.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        RwLock(std::sync::RwLock::new(value))
    }

    #[inline]
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[inline]
    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, T> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        // A poisoned lock means a panic in a model thread, which fails the model.
        self.0.lock().expect("a model thread panicked")
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().expect("a model thread panicked")
    }
}

/// Lets other threads run while this one waits for a condition another thread will
/// make true (loom must be told, or it would explore the spin for ever).
#[inline]
pub(crate) fn spin_wait() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}
