//! Many threads (more than the machine's cores) allocate, write a pattern, check it
//! and free, through every path of one manager; a share of the blocks is freed by
//! another thread, handed over through a channel. At the end the statistics balance
//! exactly: nothing allocated once everything is freed, nothing reserved after trim.

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::sync::Arc;
use tensorpool::{Config, MemoryManager};

const THREADS: usize = 8;

/// Steps per thread: many natively, few under Miri (which checks for data races and
/// runs about a thousand times slower).
const STEPS: usize = if cfg!(miri) { 60 } else { 20_000 };

/// Natively the default upstream (mmap); under Miri, which has no mmap, the heap.
fn config() -> tensorpool::ConfigBuilder {
    let builder = Config::builder().huge_threshold(8 << 20);
    if cfg!(miri) {
        builder.upstream(tensorpool::UpstreamKind::Heap)
    } else {
        builder
    }
}

use tensorpool_testkit::{pattern, Coverage, Rng};

/// Both ends and every 512th byte: enough to see overlaps, cheap for big blocks.
const SAMPLED: Coverage = Coverage::Sampled {
    ends: 64,
    stride: 512,
};

/// A block and how to free it. Raw pointers are `Send` through this wrapper: the
/// block is owned by whoever holds the `Block`.
struct Block {
    ptr: NonNull<u8>,
    size: usize,
    layout: Option<Layout>,
    seed: u8,
}

// SAFETY: a Block is the only handle to its memory; moving it moves the ownership.
unsafe impl Send for Block {}

impl Block {
    fn new(mm: &MemoryManager, rng: &mut Rng, seed: u8) -> Block {
        let scale = if cfg!(miri) { 16 } else { 1 };
        let size = match rng.below(100) {
            0..=84 => 1 + rng.below(16 << 10), // small: thread caches
            85..=97 => 1 + rng.below((1 << 20) / scale), // large: best fit
            _ if cfg!(miri) => 1 + rng.below(64 << 10),
            _ => (8 << 20) + rng.below(4 << 20), // huge (threshold lowered below)
        };
        let align = 1 << rng.below(9);
        let (ptr, layout) = if rng.below(4) == 0 {
            (mm.allocate_raw(size, align).unwrap(), None)
        } else {
            let layout = Layout::from_size_align(size, align).unwrap();
            (mm.allocate(layout).unwrap().cast(), Some(layout))
        };
        let mut block = Block {
            ptr,
            size,
            layout,
            seed,
        };
        block.fill();
        block
    }

    fn fill(&mut self) {
        // SAFETY: the block is live, `size` bytes, and owned by this handle.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) };
        pattern::fill(bytes, self.seed.into(), SAMPLED);
    }

    fn check(&self) {
        // SAFETY: the block is live, `size` bytes, and owned by this handle.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.size) };
        pattern::assert_intact(bytes, self.seed.into(), SAMPLED);
    }

    fn free(self, mm: &MemoryManager) {
        self.check();
        match self.layout {
            // SAFETY: allocated through the Allocator with this layout.
            Some(layout) => unsafe { mm.deallocate(self.ptr, layout) },
            None => mm.free_raw(self.ptr.as_ptr()).unwrap(),
        }
    }
}

#[test]
fn threads_share_one_manager_and_the_books_balance() {
    let mm = Arc::new(MemoryManager::new(config().build().unwrap()).unwrap());
    // Thread i sends blocks to thread (i + 1) % THREADS.
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Block>()).unzip();
    let mut handles = Vec::new();
    for (i, inbox) in receivers.into_iter().enumerate() {
        let mm = mm.clone();
        let outbox = senders[(i + 1) % THREADS].clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let mut rng = Rng(0x9E37_79B9 + i as u64);
                    let mut live: Vec<Block> = Vec::new();
                    for step in 0..STEPS {
                        match rng.below(10) {
                            0..=4 if live.len() < 64 => {
                                live.push(Block::new(&mm, &mut rng, step as u8))
                            }
                            0..=6 if !live.is_empty() => {
                                let b = live.swap_remove(rng.below(live.len()));
                                b.free(&mm);
                            }
                            7 if !live.is_empty() => {
                                // Freed by the next thread.
                                let b = live.swap_remove(rng.below(live.len()));
                                b.check();
                                outbox.send(b).unwrap();
                            }
                            _ => {
                                while let Ok(b) = inbox.try_recv() {
                                    b.free(&mm);
                                }
                            }
                        }
                    }
                    drop(outbox);
                    for b in live {
                        b.free(&mm);
                    }
                    // Blocks sent to us after our last look are freed by whoever
                    // drains the inbox at the end.
                    inbox
                })
                .unwrap(),
        );
    }
    drop(senders);
    let inboxes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for inbox in inboxes {
        for b in inbox.try_iter() {
            b.free(&mm);
        }
    }
    let s = mm.stats();
    assert_eq!(s.allocated_bytes, 0, "{}", s.summary());
    assert_eq!(s.requested_bytes, 0);
    assert_eq!(s.allocated_blocks, 0);
    assert_eq!(s.num_allocs, s.num_frees);
    assert!(s.num_allocs as usize > STEPS * THREADS / 4);
    mm.trim();
    let s = mm.stats();
    assert_eq!(s.reserved_bytes, 0, "{}", s.summary());
    assert_eq!(s.thread_cached_bytes, 0);
}

#[test]
fn an_idle_thread_returns_its_cache_when_asked_or_when_it_exits() {
    let mm = Arc::new(MemoryManager::new(config().build().unwrap()).unwrap());
    let layout = Layout::from_size_align(256, 64).unwrap();
    let (go, wait) = mpsc::channel::<()>();
    let (done, finished) = mpsc::channel::<()>();
    let worker = {
        let mm = mm.clone();
        std::thread::spawn(move || {
            let blocks: Vec<NonNull<u8>> = (0..100)
                .map(|_| mm.allocate(layout).unwrap().cast())
                .collect();
            for b in blocks {
                // SAFETY: allocated above with `layout`.
                unsafe { mm.deallocate(b, layout) };
            }
            done.send(()).unwrap();
            wait.recv().unwrap(); // idle, holding a cache
            mm.flush_thread_cache();
            done.send(()).unwrap();
            wait.recv().unwrap();
            // a thread that allocates again after a trim drains at once
            let b: NonNull<u8> = mm.allocate(layout).unwrap().cast();
            // SAFETY: allocated just above with `layout`.
            unsafe { mm.deallocate(b, layout) };
        })
    };
    finished.recv().unwrap();
    let s = mm.stats();
    assert!(s.thread_cached_bytes > 0);
    assert_eq!(s.threads.len(), 1);
    assert_eq!(s.allocated_bytes, 0);
    go.send(()).unwrap();
    finished.recv().unwrap();
    assert_eq!(mm.stats().thread_cached_bytes, 0);
    mm.trim();
    go.send(()).unwrap();
    worker.join().unwrap();
    let s = mm.stats();
    assert_eq!((s.thread_cached_bytes, s.allocated_bytes), (0, 0));
    assert!(
        s.threads.is_empty(),
        "an exited thread's cache is unregistered"
    );
    assert_eq!(s.num_allocs, 101);
    mm.trim();
    assert_eq!(mm.stats().reserved_bytes, 0);
}

#[test]
fn a_thread_may_outlive_its_manager() {
    let (tx, rx) = mpsc::channel::<()>();
    let (ready, go) = mpsc::channel::<()>();
    let layout = Layout::from_size_align(64, 8).unwrap();
    let worker = {
        let mm = MemoryManager::new(config().build().unwrap()).unwrap();
        let handle = std::thread::spawn(move || {
            let p: NonNull<u8> = mm.allocate(layout).unwrap().cast();
            // SAFETY: allocated just above with `layout`.
            unsafe { mm.deallocate(p, layout) };
            drop(mm); // the last handle: the manager and its memory go
            ready.send(()).unwrap();
            rx.recv().unwrap();
            // This thread's cache still names the dead manager; exiting must not touch it.
        });
        go.recv().unwrap();
        handle
    };
    tx.send(()).unwrap();
    worker.join().unwrap();
}

/// Every raw block is freed by two or three threads at once (its allocator among
/// them half the time). Each block is freed exactly once: every accepted free took
/// effect, or was refused when its slab's owner collected it (and counted); the
/// books balance exactly and the memory all goes back.
#[test]
fn racing_double_frees_take_effect_once_and_the_books_balance() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    const RACERS: usize = 3;
    let blocks_per_thread = if cfg!(miri) { 20 } else { 20_000 };
    let mm = Arc::new(MemoryManager::new(config().build().unwrap()).unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    // Racer i frees what the allocators send it; the allocators free half of them too.
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..RACERS).map(|_| mpsc::channel::<usize>()).unzip();
    let racers: Vec<_> = receivers
        .into_iter()
        .map(|rx| {
            let (mm, accepted) = (mm.clone(), accepted.clone());
            std::thread::spawn(move || {
                for addr in rx {
                    if mm.free_raw(std::ptr::without_provenance_mut(addr)).is_ok() {
                        accepted.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    let allocators: Vec<_> = (0..2)
        .map(|t| {
            let (mm, accepted, senders) = (mm.clone(), accepted.clone(), senders.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0xD0B1E + t);
                for i in 0..blocks_per_thread {
                    let most = if rng.below(8) == 0 { 200_000 } else { 4096 };
                    let size = 1 + rng.below(most);
                    let p = mm.allocate_raw(size, 64).unwrap().as_ptr();
                    let first = rng.below(RACERS);
                    senders[first].send(p.addr()).unwrap();
                    senders[(first + 1) % RACERS].send(p.addr()).unwrap();
                    if i % 2 == 0 && mm.free_raw(p).is_ok() {
                        accepted.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    drop(senders);
    for t in allocators {
        t.join().unwrap();
    }
    for t in racers {
        t.join().unwrap();
    }
    let s = mm.stats();
    let blocks = 2 * blocks_per_thread as u64;
    assert_eq!(s.num_allocs, blocks);
    assert_eq!(
        accepted.load(Relaxed) - s.num_invalid_frees,
        blocks,
        "a free took effect twice, or not at all: {}",
        s.summary()
    );
    assert_eq!(
        (s.allocated_bytes, s.requested_bytes),
        (0, 0),
        "{}",
        s.summary()
    );
    assert_eq!(s.num_frees, s.num_allocs);
    mm.trim();
    assert_eq!(mm.stats().reserved_bytes, 0);
}
