//! The manager's unit and property tests.

use super::*;
use crate::config::UpstreamKind;
use crate::error::{OomCause, PointerError};
use crate::testing::BYTE_STEP;
use allocator_api2::alloc::Allocator;

fn heap_config() -> crate::config::ConfigBuilder {
    Config::builder().upstream(UpstreamKind::Heap)
}

fn manager(builder: crate::config::ConfigBuilder) -> MemoryManager {
    MemoryManager::new(builder.build().unwrap()).unwrap()
}

#[test]
fn a_heaps_running_count_of_slot_bytes_follows_its_classes() {
    // The cache's budget and the publications read a heap's allocated bytes from a
    // running count kept beside the classes' tallies: it follows allocations of
    // several classes with waste, frees here, frees posted by another thread and
    // collected, and resizes in place.
    let mm = manager(heap_config());
    let engine = &mm.inner.engine;
    let agree = |when: &str| {
        let (running, summed) = engine.calling_heap_counts();
        assert_eq!(running, summed, "{when}");
        running.0
    };
    let layout = |size| Layout::from_size_align(size, 8).unwrap();
    /// A block's pointer, handed to another thread for its free.
    #[derive(Clone, Copy)]
    struct Held(NonNull<u8>);
    // SAFETY: the test frees each block once, on one thread.
    unsafe impl Send for Held {}
    // SAFETY: as above; the pointer is only read.
    unsafe impl Sync for Held {}
    let typed: Vec<(Held, Layout)> = [24, 100, 1000, 3000, 20_000, 100_000]
        .iter()
        .flat_map(|&size| (0..if cfg!(miri) { 8 } else { 70 }).map(move |_| size))
        .map(|size| {
            (
                Held(mm.allocate(layout(size)).unwrap().cast()),
                layout(size),
            )
        })
        .collect();
    let free = |h: Held, l| {
        // SAFETY: a block allocated above with `l`, freed once.
        unsafe { mm.deallocate(h.0, l) };
    };
    let raw: Vec<Held> = (1..if cfg!(miri) { 60 } else { 300 })
        .map(|i| Held(mm.allocate_raw(i * 37, 16).unwrap()))
        .collect();
    assert!(agree("allocated") > 0);
    for &(h, l) in typed.iter().step_by(3) {
        free(h, l);
    }
    agree("typed frees here");
    std::thread::scope(|s| {
        s.spawn(|| {
            for h in raw.iter().step_by(2) {
                mm.free_raw(h.0.as_ptr()).unwrap();
            }
            for &(h, l) in typed.iter().skip(1).step_by(3) {
                free(h, l);
            }
        });
    });
    mm.trim(); // collects the posts
    agree("posted frees collected");
    for (k, h) in raw.iter().enumerate().skip(1).step_by(2).take(20) {
        let size = (k + 1) * 37;
        // SAFETY: a live raw block of this manager, not used elsewhere.
        let p = unsafe { mm.reallocate_raw(h.0.as_ptr(), size - 1, 16) }.unwrap();
        assert_eq!(p, h.0, "shrunk in place");
    }
    agree("resized");
    for h in raw.iter().skip(1).step_by(2) {
        mm.free_raw(h.0.as_ptr()).unwrap();
    }
    for &(h, l) in typed.iter().skip(2).step_by(3) {
        free(h, l);
    }
    assert_eq!(agree("all freed"), 0);
}

#[test]
#[cfg(unix)]
#[cfg_attr(miri, ignore = "blocks of 40 MiB; Miri does not model mmap")]
fn a_second_free_after_the_memory_went_back_is_refused_as_not_live() {
    // A block freed, its memory given back to the system (trim), then freed again:
    // refused as no live block, not as memory the manager never held (the C front
    // hands those to glibc's free, which crashed on them: a user hunt).
    let mm = manager(Config::builder());
    for size in [64, 100_000, 3 << 20, 40 << 20] {
        let p = mm.allocate_raw(size, 16).unwrap();
        mm.free_raw(p.as_ptr()).unwrap();
        mm.trim();
        let again = mm.free_raw(p.as_ptr()).unwrap_err();
        assert!(
            matches!(
                again,
                Error::InvalidPointer {
                    reason: PointerError::NotLive,
                    ..
                }
            ),
            "{size}: {again}"
        );
        assert!(mm.raw_size(p.as_ptr()).is_err());
    }
    // An address the manager never held is still foreign.
    let outside = Box::new(0u64);
    let reason = |e| match e {
        Error::InvalidPointer { reason, .. } => reason,
        e => panic!("{e}"),
    };
    let addr = &*outside as *const u64 as *mut u8;
    assert_eq!(
        reason(mm.free_raw(addr).unwrap_err()),
        PointerError::Foreign
    );
    // Memory mapped again where the manager gave some back is someone else's (glibc's
    // block, another manager's): foreign, for its allocator to free.
    let p = mm.allocate_raw(40 << 20, 16).unwrap();
    mm.free_raw(p.as_ptr()).unwrap();
    mm.trim();
    assert_eq!(
        reason(mm.free_raw(p.as_ptr()).unwrap_err()),
        PointerError::NotLive
    );
    let page = crate::upstream::page_size();
    let at = p.as_ptr().addr() & !(page - 1);
    // SAFETY: a fresh anonymous mapping at an address nothing maps (the manager gave
    // it back), refused rather than placed over another mapping.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::without_provenance_mut(at),
            page,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if mapped.addr() == at {
        assert_eq!(
            reason(mm.free_raw(p.as_ptr()).unwrap_err()),
            PointerError::Foreign
        );
        // SAFETY: the mapping made above, unused.
        unsafe { libc::munmap(mapped, page) };
    }
}

#[test]
fn routes_by_size() {
    let mm = manager(heap_config().small_threshold(4096).huge_threshold(8 << 20));
    let small = mm.allocate_raw(100, 8).unwrap();
    let large = mm.allocate_raw(100_000, 8).unwrap();
    let huge = mm.allocate_raw(9 << 20, 8).unwrap();
    let s = mm.stats();
    let tier = |t| {
        s.tiers
            .iter()
            .find(|x| x.tier == t)
            .unwrap()
            .usage
            .allocated_blocks
    };
    assert_eq!(
        (tier(Tier::Small), tier(Tier::Large), tier(Tier::Huge)),
        (1, 1, 1)
    );
    assert_eq!(s.requested_bytes, 100 + 100_000 + (9 << 20));
    // The large block is rounded to whole pages (a cached block of the engine).
    assert_eq!(s.allocated_bytes, 128 + 102_400 + (10 << 20));
    assert_eq!(s.classes.len(), 1);
    assert_eq!(
        s.classes[0].block_size, 128,
        "64-byte alignment rounds 100 up to 128"
    );
    for p in [small, large, huge] {
        assert_eq!(p.as_ptr() as usize % 64, 0);
        mm.free_raw(p.as_ptr()).unwrap();
    }
    let s = mm.stats();
    assert_eq!(
        (s.allocated_bytes, s.requested_bytes, s.allocated_blocks),
        (0, 0, 0)
    );
    assert_eq!(s.num_allocs, s.num_frees);
    mm.trim();
    let s = mm.stats();
    assert_eq!(s.reserved_bytes, 0);
    assert_eq!(s.num_upstream_allocs, s.num_upstream_frees);
}

#[test]
fn explicit_pools_first_then_fall_through() {
    let mm = manager(heap_config().pool(256, 2).pool(1024, 1));
    let a = mm.allocate_raw(200, 64).unwrap();
    let b = mm.allocate_raw(200, 64).unwrap();
    let c = mm.allocate_raw(200, 64).unwrap(); // 256 pool full: the 1024 pool
    let d = mm.allocate_raw(200, 64).unwrap(); // both full: the size classes
    let s = mm.stats();
    let pool_tier = s.tiers.iter().find(|t| t.tier == Tier::Pool).unwrap();
    assert_eq!(pool_tier.usage.allocated_blocks, 3);
    assert_eq!(pool_tier.usage.allocated_bytes, 256 * 2 + 1024);
    let small = s.tiers.iter().find(|t| t.tier == Tier::Small).unwrap();
    assert_eq!(small.usage.allocated_blocks, 1);
    // Typed frees are routed through the owner map when explicit pools exist.
    let layout = Layout::from_size_align(200, 8).unwrap();
    let typed = Allocator::allocate(&mm, layout).unwrap().cast::<u8>();
    // SAFETY: allocated above with `layout`.
    unsafe { Allocator::deallocate(&mm, typed, layout) };
    for p in [a, b, c, d] {
        mm.free_raw(p.as_ptr()).unwrap();
    }
    assert_eq!(mm.stats().allocated_bytes, 0);
}

#[test]
fn explicit_pools_on_the_hot_path_keep_their_order_checks_and_counts() {
    // The lecture's manager: pools tried smallest first, the next when one is full,
    // served from the calling thread's slabs without the full path.
    // Block sizes no size class has, to tell the pools apart in the stats.
    let mm = manager(heap_config().pool(240, 10).pool(1000, 10));
    let pool_blocks = |mm: &MemoryManager, size| {
        mm.stats()
            .classes
            .iter()
            .filter(|c| c.block_size == size)
            .map(|c| c.allocated_blocks)
            .sum::<usize>()
    };
    let layout = Layout::from_size_align(200, 8).unwrap();
    let mut held: Vec<NonNull<u8>> = (0..12)
        .map(|_| Allocator::allocate(&mm, layout).unwrap().cast())
        .collect();
    assert_eq!((pool_blocks(&mm, 240), pool_blocks(&mm, 1000)), (10, 2));
    // A slot of the smaller pool freed: the next block comes from it again, though
    // the larger pool's slab is the warm one.
    let freed = held.remove(0);
    // SAFETY: allocated above with `layout`, freed once.
    unsafe { Allocator::deallocate(&mm, freed, layout) };
    held.push(Allocator::allocate(&mm, layout).unwrap().cast());
    assert_eq!((pool_blocks(&mm, 240), pool_blocks(&mm, 1000)), (10, 2));
    // An alignment above the pools' goes past them, to the size classes.
    let aligned = mm.allocate_raw(200, 128).unwrap();
    assert_eq!(aligned.as_ptr().addr() % 128, 0);
    assert_eq!((pool_blocks(&mm, 240), pool_blocks(&mm, 1000)), (10, 2));
    // Raw blocks of the pools: a free is checked (twice is refused, and changes
    // nothing), also for a block freed by another thread.
    let raw = mm.allocate_raw(100, 64).unwrap();
    assert_eq!(pool_blocks(&mm, 1000), 3);
    mm.free_raw(raw.as_ptr()).unwrap();
    assert!(matches!(
        mm.free_raw(raw.as_ptr()),
        Err(Error::InvalidPointer {
            reason: PointerError::NotLive,
            ..
        })
    ));
    let typed_as_raw = held[0];
    assert!(matches!(
        mm.free_raw(typed_as_raw.as_ptr()),
        Err(Error::InvalidPointer {
            reason: PointerError::NotRaw,
            ..
        })
    ));
    // Sent as an `AtomicPtr`: a pointer keeps its provenance (Miri checks it).
    let across = std::sync::atomic::AtomicPtr::new(mm.allocate_raw(300, 64).unwrap().as_ptr());
    std::thread::scope(|s| {
        s.spawn(|| {
            mm.free_raw(across.load(std::sync::atomic::Ordering::Relaxed))
                .unwrap()
        });
    });
    mm.free_raw(aligned.as_ptr()).unwrap();
    // Sizes no pool fits: a size class, a large block of the engine (a span), typed
    // and raw, as without pools.
    for size in [4000, 100 << 10] {
        let layout = Layout::from_size_align(size, 64).unwrap();
        let typed = Allocator::allocate(&mm, layout).unwrap().cast::<u8>();
        let raw = mm.allocate_raw(size, 64).unwrap();
        assert_eq!(mm.raw_size(raw.as_ptr()).unwrap(), size);
        assert!(pool_blocks(&mm, 240) + pool_blocks(&mm, 1000) == 12);
        mm.free_raw(raw.as_ptr()).unwrap();
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { Allocator::deallocate(&mm, typed, layout) };
    }
    for p in held {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { Allocator::deallocate(&mm, p, layout) };
    }
    mm.flush_thread_cache();
    let s = mm.stats();
    assert_eq!(
        (s.allocated_bytes, s.requested_bytes, s.allocated_blocks),
        (0, 0, 0)
    );
    assert_eq!(s.num_allocs, s.num_frees);
}

#[test]
fn a_pools_free_slots_in_another_threads_slab_serve_this_thread() {
    // The main thread used the pool once: its slab, empty now, took the pool's whole
    // capacity. Another thread still gets every block of the pool.
    let mm = manager(heap_config().pool(240, 10));
    let layout = Layout::from_size_align(200, 64).unwrap();
    let once = mm.try_allocate_from_pools(layout).unwrap().unwrap();
    // SAFETY: allocated above with `layout`, freed once.
    unsafe { Allocator::deallocate(&mm, once, layout) };
    let pool_blocks = |mm: &MemoryManager| {
        let s = mm.stats();
        s.classes
            .iter()
            .filter(|c| c.block_size == 240)
            .map(|c| c.allocated_blocks)
            .sum::<usize>()
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let held: Vec<_> = (0..10)
                .map(|_| {
                    mm.try_allocate_from_pools(layout)
                        .unwrap()
                        .expect("a block of the pool")
                })
                .collect();
            assert_eq!(pool_blocks(&mm), 10);
            // Truly full now: nothing else is tried, and nothing is stopped for it.
            assert_eq!(mm.try_allocate_from_pools(layout).unwrap(), None);
            for p in held {
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { Allocator::deallocate(&mm, p, layout) };
            }
        });
    });
    assert_eq!(pool_blocks(&mm), 0);
    assert_eq!(mm.stats().allocated_bytes, 0);
    // The other way round, with the frees still pending: a thread that stays alive
    // (and idle) allocated the whole pool; this one frees every block (posted to
    // that thread) and allocates again: still the pool's blocks.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<std::sync::atomic::AtomicPtr<u8>>>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (mm, tx) = (&mm, tx);
        s.spawn(move || {
            let held = (0..10)
                .map(|_| {
                    let p = mm
                        .try_allocate_from_pools(layout)
                        .unwrap()
                        .expect("a pool block");
                    std::sync::atomic::AtomicPtr::new(p.as_ptr())
                })
                .collect();
            tx.send(held).unwrap();
            done_rx.recv().unwrap(); // idle: its posts wait for it
        });
        let held = rx.recv().unwrap();
        for p in &held {
            let p = NonNull::new(p.load(std::sync::atomic::Ordering::Relaxed)).unwrap();
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { Allocator::deallocate(&mm, p, layout) };
        }
        let again: Vec<_> = (0..10)
            .map(|_| {
                mm.try_allocate_from_pools(layout)
                    .unwrap()
                    .expect("a block of the pool")
            })
            .collect();
        assert_eq!(pool_blocks(mm), 10);
        for p in again {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { Allocator::deallocate(&mm, p, layout) };
        }
        done_tx.send(()).unwrap();
    });
    assert_eq!(pool_blocks(&mm), 0);
}

#[test]
fn the_slab_tiers_record_their_own_peaks() {
    // The lecture's program: 10,000 blocks of a pool held at once, then freed, and
    // as many of a size class. Each tier's peaks are its own (they were its current
    // values, 0 once everything was freed).
    let n = if cfg!(miri) { 300 } else { 10_000 };
    let mm = manager(heap_config().pool(256, n));
    let tier = |mm: &MemoryManager, t| {
        let s = mm.stats();
        s.tiers.iter().find(|x| x.tier == t).unwrap().usage
    };
    for (size, t) in [(256, Tier::Pool), (1000, Tier::Small)] {
        let layout = Layout::from_size_align(size, 64).unwrap();
        let held: Vec<NonNull<u8>> = (0..n)
            .map(|_| Allocator::allocate(&mm, layout).unwrap().cast())
            .collect();
        let live = tier(&mm, t);
        for p in held {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { Allocator::deallocate(&mm, p, layout) };
        }
        let after = tier(&mm, t);
        assert_eq!(after.allocated_bytes, 0, "{t:?}");
        // Peaks of slab tiers are known within a publication step per thread.
        assert!(
            after.peak_allocated_bytes + crate::tiers::slab::heap::PUBLISH_STEP
                >= live.allocated_bytes
                && after.peak_allocated_bytes <= live.allocated_bytes,
            "{t:?}: peak {} of {} live",
            after.peak_allocated_bytes,
            live.allocated_bytes
        );
        assert!(after.peak_reserved_bytes >= live.reserved_bytes, "{t:?}");
    }
    // A new peak starts from what is held now.
    mm.trim();
    mm.reset_peak_stats();
    let pool = tier(&mm, Tier::Pool);
    assert_eq!(
        (pool.peak_allocated_bytes, pool.peak_reserved_bytes),
        (0, 0)
    );
    // The best-fit tier's peaks start anew too (they stayed at their old highs).
    let big = mm
        .allocate_raw(if cfg!(miri) { 2 << 20 } else { 8 << 20 }, 64)
        .unwrap();
    mm.free_raw(big.as_ptr()).unwrap();
    mm.trim();
    mm.reset_peak_stats();
    let large = tier(&mm, Tier::Large);
    assert_eq!(large.peak_allocated_bytes, large.allocated_bytes);
    assert_eq!(large.peak_reserved_bytes, large.reserved_bytes);
}

/// Found by a user hunt: threads that allocated and freed in turn, each then
/// waiting, left their freed bytes in the totals (frees published nothing), and
/// the next thread's allocations raised the peak to the sum of all of them: four
/// threads freeing 10 MB in turn read a 40 MB peak, above the reserved peak. Frees
/// that empty a slab or free a large block publish now.
#[test]
fn threads_that_allocate_and_free_in_turn_do_not_add_up_in_the_peak() {
    let (threads, blocks, size) = if cfg!(miri) {
        (2, 4, 64 << 10)
    } else {
        (4, 40, 100_000)
    };
    let mm = manager(heap_config());
    let layout = Layout::from_size_align(size, 64).unwrap();
    let (done, turns) = std::sync::mpsc::channel();
    let go = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (mm, done, go) = (mm.clone(), done.clone(), go.clone());
            let turn = std::sync::mpsc::channel::<()>();
            let wait = turn.1;
            let handle = std::thread::spawn(move || {
                wait.recv().unwrap();
                let held: Vec<NonNull<u8>> = (0..blocks)
                    .map(|_| Allocator::allocate(&mm, layout).unwrap().cast())
                    .collect();
                for p in held {
                    // SAFETY: allocated above with `layout`, freed once.
                    unsafe { Allocator::deallocate(&mm, p, layout) };
                }
                done.send(t).unwrap();
                go.wait(); // holds its heap, idle, until every thread had its turn
            });
            (turn.0, handle)
        })
        .collect();
    for (turn, _) in &workers {
        turn.send(()).unwrap();
        turns.recv().unwrap();
    }
    let s = mm.stats();
    go.wait();
    for (_, handle) in workers {
        handle.join().unwrap();
    }
    let one = blocks * size;
    assert!(
        s.peak_allocated_bytes <= one + threads * crate::tiers::slab::heap::PUBLISH_STEP,
        "peak {} for {one} live at once",
        s.peak_allocated_bytes
    );
    assert!(s.peak_allocated_bytes >= one - crate::tiers::slab::heap::PUBLISH_STEP);
}

#[test]
#[cfg_attr(miri, ignore = "a 128 MiB chunk")]
fn an_arena_whose_first_chunk_is_larger_than_the_default_largest_is_made() {
    // The config allowed it; `arena()` panicked on it.
    let mm = manager(heap_config().arena_chunk_size(128 << 20));
    let arena = mm.arena();
    let p = arena.allocate(64, 8).unwrap();
    assert_eq!(p.as_ptr().addr() % 8, 0);
}

#[test]
fn allocation_from_the_pools_only_stops_where_they_do() {
    for debug in [false, true] {
        let mm = manager(heap_config().pool(64, 1000).pool(256, 2).debug(debug));
        let layout = Layout::from_size_align(200, 64).unwrap();
        let a = mm.try_allocate_from_pools(layout).unwrap().unwrap();
        let b = mm.try_allocate_from_pools(layout).unwrap().unwrap();
        // The 256 B pool is full and no other fits: nothing else is tried.
        assert_eq!(mm.try_allocate_from_pools(layout).unwrap(), None);
        let big = Layout::from_size_align(4096, 64).unwrap();
        assert_eq!(mm.try_allocate_from_pools(big).unwrap(), None);
        let small = Layout::from_size_align(32, 64).unwrap();
        let c = mm.try_allocate_from_pools(small).unwrap().unwrap();
        assert!(matches!(
            mm.try_allocate_from_pools(Layout::from_size_align(0, 1).unwrap()),
            Err(Error::ZeroSize)
        ));
        let s = mm.stats();
        let pool_tier = s.tiers.iter().find(|t| t.tier == Tier::Pool).unwrap();
        assert_eq!(pool_tier.usage.allocated_blocks, 3, "debug {debug}");
        // SAFETY: each was allocated above with its layout, and is freed once.
        unsafe {
            Allocator::deallocate(&mm, a, layout);
            Allocator::deallocate(&mm, b, layout);
            Allocator::deallocate(&mm, c, small);
        }
        assert_eq!(mm.stats().allocated_bytes, 0);
        assert_eq!(mm.stats().num_guard_violations, 0);
    }
}

#[test]
fn raw_size_and_reallocate_raw_in_every_tier() {
    // Under Miri every byte copied is interpreted: smaller blocks, same tiers.
    let huge = if cfg!(miri) { 64 << 10 } else { 2 << 20 };
    let mm = manager(
        heap_config()
            .small_threshold(4096)
            .medium_threshold(huge / 2)
            .huge_threshold(huge)
            .expandable_segments(false),
    );
    // Sizes in the small, medium (spans), large (best fit) and huge tiers, grown
    // and shrunk across them.
    let sizes = [100usize, 3000, huge / 2, huge / 4 * 3, huge + 4096, 50, 1];
    let mut ptr = mm.allocate_raw(sizes[0], 8).unwrap().as_ptr();
    // Every byte natively; under Miri, which takes microseconds a byte, a sample.
    let fill = |p: *mut u8, n: usize| {
        // SAFETY: `p` is a live raw block of at least `n` bytes.
        unsafe { std::slice::from_raw_parts_mut(p, n) }
            .iter_mut()
            .enumerate()
            .step_by(BYTE_STEP)
            .for_each(|(i, b)| *b = (i % 251) as u8);
    };
    fill(ptr, sizes[0]);
    for pair in sizes.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        assert_eq!(mm.raw_size(ptr).unwrap(), old);
        // SAFETY: no other thread uses `ptr`.
        let moved = unsafe { mm.reallocate_raw(ptr, new, 64) }.unwrap().as_ptr();
        assert_eq!(moved.addr() % 64, 0);
        // SAFETY: `moved` is a live raw block of `new` bytes.
        let kept = unsafe { std::slice::from_raw_parts(moved, old.min(new)) };
        assert!(kept
            .iter()
            .enumerate()
            .step_by(BYTE_STEP)
            .all(|(i, &b)| b == (i % 251) as u8));
        // A block that moved is gone (one that grew or shrank in place is not).
        assert!(
            moved == ptr
                || matches!(
                    mm.free_raw(ptr),
                    Err(Error::InvalidPointer {
                        reason: PointerError::NotLive | PointerError::Foreign,
                        ..
                    })
                )
        );
        fill(moved, new);
        ptr = moved;
    }
    assert_eq!(mm.stats().allocated_blocks, 1);
    assert_eq!(mm.stats().requested_bytes, 1);
    mm.free_raw(ptr).unwrap();
    assert_eq!(mm.stats().allocated_blocks, 0);
}

#[test]
fn a_block_grown_a_little_at_a_time_moves_once_per_size_class() {
    // C programs grow buffers by realloc in small steps: each step that fits the
    // block's slot keeps it where it is (it was a move and a copy every time).
    let mm = manager(heap_config());
    // Under Miri, which interprets every step, fewer and larger ones.
    let (step, top) = if cfg!(miri) {
        (4096, 48 << 10)
    } else {
        (16, 256 << 10)
    };
    let mut ptr = mm.allocate_raw(16, 16).unwrap().as_ptr();
    let (mut moves, mut size) = (0, 16);
    // SAFETY: `ptr` is a live raw block of `size` bytes, ours alone.
    unsafe { ptr.write(7) };
    while size < top {
        size += step;
        // SAFETY: no other thread uses `ptr`.
        let new = unsafe { mm.reallocate_raw(ptr, size, 16) }
            .unwrap()
            .as_ptr();
        if new != ptr {
            moves += 1;
        }
        ptr = new;
        // SAFETY: as above, `size` bytes now.
        unsafe {
            assert_eq!(ptr.read(), 7, "contents kept at {size}");
            ptr.add(size - 1).write(1);
        }
        assert_eq!(mm.raw_size(ptr).unwrap(), size);
        let s = mm.stats();
        assert_eq!((s.allocated_blocks, s.requested_bytes), (1, size));
    }
    // One move per size class, then one per eighth more: about 60, against 16,000
    // steps (every step moved before).
    assert!(moves < 70, "{moves} moves growing to 256 KiB");
    // The same beyond the slabs and cached spans, in the best-fit and huge tiers.
    if !cfg!(miri) {
        let mut moves = 0;
        while size < 24 << 20 {
            size += 64 << 10;
            // SAFETY: as above.
            let new = unsafe { mm.reallocate_raw(ptr, size, 16) }
                .unwrap()
                .as_ptr();
            moves += usize::from(new != ptr);
            ptr = new;
            // SAFETY: as above.
            unsafe { assert_eq!(ptr.read(), 7, "contents kept at {size}") };
            assert_eq!(mm.stats().requested_bytes, size);
        }
        assert!(moves < 40, "{moves} moves growing to 24 MiB by 64 KiB");
    }
    // Shrinking a little stays; to less than half, it moves to a smaller block.
    // SAFETY: as above.
    let same = unsafe { mm.reallocate_raw(ptr, size - 100, 16) }
        .unwrap()
        .as_ptr();
    assert_eq!(same, ptr);
    // SAFETY: as above.
    let small = unsafe { mm.reallocate_raw(same, 100, 16) }
        .unwrap()
        .as_ptr();
    assert_ne!(small, same);
    assert_eq!(mm.stats().requested_bytes, 100);
    mm.free_raw(small).unwrap();
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
    // Another thread's block moves (only its owner may change it), correctly.
    let theirs = std::thread::scope(|t| {
        t.spawn(|| std::sync::atomic::AtomicPtr::new(mm.allocate_raw(1000, 16).unwrap().as_ptr()))
            .join()
            .unwrap()
    })
    .into_inner();
    // SAFETY: live and raw, no other thread uses it now.
    let mine = unsafe { mm.reallocate_raw(theirs, 1010, 16) }
        .unwrap()
        .as_ptr();
    assert_ne!(mine, theirs);
    mm.free_raw(mine).unwrap();
    assert_eq!(mm.stats().requested_bytes, 0);
}

#[test]
fn resized_blocks_keep_the_stats_exact() {
    // Large blocks shrink in place under their tier's lock; the peak of requested
    // bytes never counts the room a growing block moves into.
    // Huge segments are whole 2 MiB pages: at least that under Miri too.
    let huge = if cfg!(miri) { 2 << 20 } else { 8 << 20 };
    let mm = manager(
        heap_config()
            .medium_threshold(huge / 8)
            .huge_threshold(huge),
    );
    for size in [huge / 4, huge * 2] {
        let p = mm.allocate_raw(size, 64).unwrap().as_ptr();
        // SAFETY: a live raw block, ours alone.
        let q = unsafe { mm.reallocate_raw(p, size - size / 4, 64) }
            .unwrap()
            .as_ptr();
        assert_eq!(q, p, "{size}: a shrink by a quarter stays");
        assert_eq!(mm.stats().requested_bytes, size - size / 4);
        mm.reset_peak_stats();
        // SAFETY: as above.
        let r = unsafe { mm.reallocate_raw(q, size + size / 2, 64) }
            .unwrap()
            .as_ptr();
        let s = mm.stats();
        assert_eq!(s.requested_bytes, size + size / 2);
        assert!(
            s.peak_requested_bytes <= (size - size / 4) + (size + size / 2),
            "{size}: the peak {} counts no room",
            s.peak_requested_bytes
        );
        mm.free_raw(r).unwrap();
    }
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
    // A block resized by its owner and freed by another thread: the owner counts
    // the free with the size it has now.
    let block = mm.allocate_raw(1000, 16).unwrap().as_ptr();
    // SAFETY: as above.
    let same = unsafe { mm.reallocate_raw(block, 1010, 16) }.unwrap();
    assert_eq!(same.as_ptr(), block);
    let shared = std::sync::atomic::AtomicPtr::new(block);
    std::thread::scope(|t| {
        t.spawn(|| {
            let p = shared.load(std::sync::atomic::Ordering::Relaxed);
            mm.free_raw(p).unwrap();
        });
    });
    mm.trim(); // collects the posted free
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0), "{s:?}");
}

#[test]
#[cfg_attr(miri, ignore = "copies tens of MiB")]
fn realloc_near_the_memory_limit_does_not_ask_for_room() {
    // The room a growing block moves into must not be what fails the request.
    let mm = manager(
        heap_config()
            .memory_limit(100 << 20)
            .huge_threshold(4 << 20),
    );
    let p = mm.allocate_raw(40 << 20, 64).unwrap().as_ptr();
    // SAFETY: a live raw block, ours alone.
    let q = unsafe { mm.reallocate_raw(p, 55 << 20, 64) }.unwrap();
    let s = mm.stats();
    assert_eq!((s.requested_bytes, s.num_ooms), (55 << 20, 0));
    mm.free_raw(q.as_ptr()).unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "maps tens of MiB")]
fn large_blocks_grow_in_place_at_the_top_and_within_the_limit() {
    // A buffer grown step by step at the top of the best-fit tier's expandable
    // segment never moves (it moved once per eighth before); near the limit, the
    // room is left out and the block still grows where it is.
    let mm = manager(Config::builder().memory_limit(64 << 20));
    let first = mm.allocate_raw(2 << 20, 64).unwrap().as_ptr();
    // SAFETY: a live raw block, ours alone.
    unsafe { first.write(7) };
    let (mut p, mut size) = (first, 2 << 20);
    while size < 40 << 20 {
        size += 64 << 10;
        // SAFETY: as above.
        p = unsafe { mm.reallocate_raw(p, size, 64) }.unwrap().as_ptr();
        // SAFETY: `size` bytes now.
        unsafe { p.add(size - 1).write(1) };
        let s = mm.stats();
        assert_eq!((s.allocated_bytes, s.requested_bytes), (size, size));
    }
    assert_eq!(p, first, "grown in place");
    // SAFETY: as above.
    unsafe { assert_eq!(p.read(), 7) };
    // SAFETY: as above.
    let q = unsafe { mm.reallocate_raw(p, 63 << 20, 64) }
        .unwrap()
        .as_ptr();
    assert_eq!(q, first, "grown in place without room");
    let s = mm.stats();
    assert_eq!((s.requested_bytes, s.num_ooms), (63 << 20, 0));
    assert!(s.reserved_bytes <= 64 << 20);
    mm.free_raw(q).unwrap();
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
}

#[test]
#[cfg_attr(miri, ignore = "copies MiB")]
fn a_large_block_that_moves_keeps_its_room() {
    // A best-fit block that cannot grow where it is moves to one with an eighth
    // more room, which stays its own (counted allocated, not requested) so that its
    // next growths fill it in place whatever else is allocated meanwhile.
    let mm = manager(heap_config());
    let p = mm.allocate_raw(2 << 20, 64).unwrap().as_ptr();
    // In a segment of its own (2 MiB), with nothing free after it.
    let other = mm.allocate_raw(2 << 20, 64).unwrap().as_ptr();
    // SAFETY: a live raw block, ours alone.
    let q = unsafe { mm.reallocate_raw(p, 3 << 20, 64) }
        .unwrap()
        .as_ptr();
    assert_ne!(q, p);
    let s = mm.stats();
    assert_eq!(s.requested_bytes, 5 << 20);
    assert_eq!(
        s.allocated_bytes,
        (5 << 20) + (3 << 17),
        "the room is the block's"
    );
    // Growths within the room keep it whole, whatever is allocated between them.
    // SAFETY: as above.
    let r = unsafe { mm.reallocate_raw(q, (3 << 20) + (1 << 17), 64) }
        .unwrap()
        .as_ptr();
    assert_eq!(r, q, "grown into its room");
    assert_eq!(mm.stats().allocated_bytes, (5 << 20) + (3 << 17));
    let filler = mm.allocate_raw(1 << 20, 64).unwrap().as_ptr();
    // SAFETY: as above.
    let r = unsafe { mm.reallocate_raw(r, (3 << 20) + (3 << 17), 64) }
        .unwrap()
        .as_ptr();
    assert_eq!(r, q, "grown into its room");
    for block in [r, other, filler] {
        mm.free_raw(block).unwrap();
    }
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
}

#[test]
fn thread_owned_large_blocks_grow_their_pages_in_place() {
    // A raw block of the engine's large range (a span: one block of whole pages)
    // grows by 4 KiB steps: its pages extend into the best-fit tier's free pages
    // after it, so it moves only to leave the range. A span grown so and freed by
    // another thread, or cached and reused, counts exactly.
    let mm = manager(heap_config());
    let start = 64 << 10;
    let first = mm.allocate_raw(start, 64).unwrap().as_ptr();
    // SAFETY: a live raw block, ours alone.
    unsafe { first.write(7) };
    let (mut p, mut size, mut moves) = (first, start, 0);
    let top = if cfg!(miri) { 256 << 10 } else { 1 << 20 };
    while size < top {
        size += 4096;
        // SAFETY: as above.
        let q = unsafe { mm.reallocate_raw(p, size, 64) }.unwrap().as_ptr();
        moves += usize::from(q != p);
        p = q;
        // SAFETY: `size` bytes now.
        unsafe { p.add(size - 1).write(1) };
        let s = mm.stats();
        assert_eq!((s.requested_bytes, s.allocated_blocks), (size, 1));
        assert!(s.allocated_bytes >= size && s.allocated_bytes <= size + size / 8 + 4096);
    }
    assert_eq!((moves, p), (0, first), "grown in place");
    // SAFETY: as above.
    unsafe { assert_eq!(p.read(), 7) };
    let shared = std::sync::atomic::AtomicPtr::new(p);
    std::thread::scope(|t| {
        t.spawn(|| mm.free_raw(shared.load(std::sync::atomic::Ordering::Relaxed)))
            .join()
            .unwrap()
            .unwrap();
    });
    mm.trim();
    let s = mm.stats();
    assert_eq!(
        (s.allocated_bytes, s.requested_bytes, s.reserved_bytes),
        (0, 0, 0)
    );
    // Grown, freed and reused from the heap's cache at its new size.
    let p = mm.allocate_raw(start, 64).unwrap().as_ptr();
    // SAFETY: as above.
    let q = unsafe { mm.reallocate_raw(p, 2 * start, 64) }
        .unwrap()
        .as_ptr();
    assert_eq!(q, p);
    let grown = mm.stats().allocated_bytes;
    mm.free_raw(q).unwrap();
    let again = mm.allocate_raw(grown, 64).unwrap().as_ptr();
    assert_eq!(again, q, "the cached block of its size");
    assert_eq!(mm.stats().allocated_bytes, grown);
    mm.free_raw(again).unwrap();
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
}

#[test]
#[cfg_attr(miri, ignore = "maps tens of MiB")]
fn typed_large_blocks_grow_and_shrink_in_place_through_the_allocator_trait() {
    // allocator-api2's `grow`, `grow_zeroed` and `shrink` on `&MemoryManager`: a
    // vector of the best-fit range grows at the top of its segment without a copy;
    // the counts follow its layout; a block shrunk into the size classes' range is
    // freed with its small layout.
    use allocator_api2::vec::Vec as AVec;
    let mm = manager(Config::builder());
    let mut v: AVec<u8, &MemoryManager> = AVec::with_capacity_in(2 << 20, &mm);
    v.resize(2 << 20, 3);
    let first = v.as_ptr();
    while v.len() < 32 << 20 {
        v.extend_from_slice(&[4; 1 << 16]);
    }
    assert_eq!(v.as_ptr(), first, "grown in place");
    assert!(v[..2 << 20].iter().all(|&b| b == 3) && v[2 << 20..].iter().all(|&b| b == 4));
    let s = mm.stats();
    assert_eq!(s.requested_bytes, v.capacity());
    v.truncate(20 << 20);
    v.shrink_to_fit();
    assert_eq!(v.as_ptr(), first, "shrunk in place");
    assert_eq!(mm.stats().requested_bytes, 20 << 20);
    drop(v);
    assert_eq!(mm.stats().allocated_bytes, 0);
    // `grow_zeroed` in place zeroes the new bytes only; `shrink` below half moves.
    let small = Layout::from_size_align(2 << 20, 64).unwrap();
    let big = Layout::from_size_align(3 << 20, 64).unwrap();
    let tiny = Layout::from_size_align(1000, 64).unwrap();
    let p = mm.allocate(small).unwrap().cast::<u8>();
    // SAFETY: live blocks of the layouts given, each resized once and freed with its
    // last layout.
    unsafe {
        p.as_ptr().write_bytes(8, 2 << 20);
        let q = mm.grow_zeroed(p, small, big).unwrap().cast::<u8>();
        assert_eq!(q, p);
        let bytes = std::slice::from_raw_parts(q.as_ptr(), 3 << 20);
        assert!(bytes[..2 << 20].iter().all(|&b| b == 8));
        assert!(bytes[2 << 20..].iter().all(|&b| b == 0));
        let r = mm.shrink(q, big, tiny).unwrap().cast::<u8>();
        assert_ne!(r, q);
        assert!(std::slice::from_raw_parts(r.as_ptr(), 1000)
            .iter()
            .all(|&b| b == 8));
        assert_eq!(mm.stats().requested_bytes, 1000);
        mm.deallocate(r, tiny);
    }
    // A block of the best-fit range shrunk in place to a size of the classes'
    // range is still the best-fit tier's: freed with its small layout.
    let mid = Layout::from_size_align(600 << 10, 64).unwrap();
    let p = mm
        .allocate(Layout::from_size_align(1100 << 10, 64).unwrap())
        .unwrap()
        .cast::<u8>();
    // SAFETY: as above.
    unsafe {
        let q = mm
            .shrink(p, Layout::from_size_align(1100 << 10, 64).unwrap(), mid)
            .unwrap()
            .cast::<u8>();
        assert_eq!(q, p);
        mm.deallocate(q, mid);
    }
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
}

#[test]
fn typed_engine_blocks_resize_in_place_within_their_class_or_pages() {
    // `grow` and `shrink` of a typed block of the engine: a slot keeps a block while
    // the new layout stays in its class; a large block (a span) grows its pages. The
    // requested bytes follow each layout, also for a block freed by another thread.
    let mm = manager(heap_config());
    let byte = Layout::from_size_align(1000, 8).unwrap();
    let (mut p, mut layout, mut moves) = (mm.allocate(byte).unwrap().cast::<u8>(), byte, 0);
    // SAFETY: a live block of `layout`, ours alone, resized with its layout and freed
    // with its last.
    unsafe { p.as_ptr().write(5) };
    // Under Miri, a size in 97 (each `stats()` is costly there).
    let step = if cfg!(miri) { 97 } else { 1 };
    for size in (1001..=4000).step_by(step) {
        let next = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: as above.
        let q = unsafe { mm.grow(p, layout, next) }.unwrap().cast::<u8>();
        moves += usize::from(q != p);
        (p, layout) = (q, next);
        assert_eq!(mm.stats().requested_bytes, size);
    }
    // One move per class crossed, of the few classes from 1000 to 4000 bytes.
    assert!(
        moves > 0 && moves < 20,
        "{moves} moves in {} steps",
        3000 / step
    );
    // SAFETY: as above.
    unsafe {
        assert_eq!(p.as_ptr().read(), 5);
        let shrunk = Layout::from_size_align(3990, 8).unwrap();
        let q = mm.shrink(p, layout, shrunk).unwrap().cast::<u8>();
        assert_eq!(q, p, "the same class");
        assert_eq!(mm.stats().requested_bytes, 3990);
        mm.deallocate(q, shrunk);
    }
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));

    // A vector of the engine's large range grows by 4 KiB steps without a copy.
    use allocator_api2::vec::Vec as AVec;
    let top = if cfg!(miri) { 96 << 10 } else { 1 << 20 };
    let mut v: AVec<u8, &MemoryManager> = AVec::with_capacity_in(40 << 10, &mm);
    v.resize(40 << 10, 9);
    let first = v.as_ptr();
    while v.len() < top {
        v.reserve_exact(4096);
        v.extend_from_slice(&[1; 4096]);
        assert_eq!(mm.stats().requested_bytes, v.capacity());
    }
    assert_eq!(v.as_ptr(), first, "grown in place");
    let kept =
        |from: usize, to: usize, b: u8| v[from..to].iter().step_by(BYTE_STEP).all(|&x| x == b);
    assert!(kept(0, 40 << 10, 9) && kept(40 << 10, v.len(), 1));
    v.truncate(top - (top >> 2));
    v.shrink_to_fit();
    assert_eq!(v.as_ptr(), first, "shrunk in place");
    assert_eq!(mm.stats().requested_bytes, v.capacity());
    // Freed by another thread with its last layout: collected, nothing is left.
    let shared = std::sync::Mutex::new(Some(v));
    std::thread::scope(|t| {
        t.spawn(|| drop(shared.lock().unwrap().take()))
            .join()
            .unwrap();
    });
    mm.trim();
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.requested_bytes), (0, 0));
}

#[test]
fn zeroed_blocks_are_zero_also_when_reused() {
    // Fresh slots are not written (their pages came zero); reused ones are.
    let mm = manager(heap_config());
    for size in [64, 100, 1000, 5000, 40_000, 100_000] {
        let layout = std::alloc::Layout::from_size_align(size, 64).unwrap();
        for round in 0..3 {
            let typed = mm.allocate_zeroed(layout).unwrap().cast::<u8>();
            let raw = mm.allocate_raw_zeroed(size, 64).unwrap();
            // SAFETY: both are live blocks of `size` bytes, ours alone.
            unsafe {
                let t = std::slice::from_raw_parts_mut(typed.as_ptr(), size);
                let r = std::slice::from_raw_parts_mut(raw.as_ptr(), size);
                let zero = |s: &[u8]| s.iter().step_by(BYTE_STEP).all(|&b| b == 0);
                assert!(zero(t), "{size} typed round {round}");
                assert!(zero(r), "{size} raw round {round}");
                t.fill(0xAB);
                r.fill(0xCD);
                mm.deallocate(typed, layout);
            }
            mm.free_raw(raw.as_ptr()).unwrap();
        }
    }
    assert_eq!(mm.stats().allocated_bytes, 0);
}

#[test]
fn raw_size_and_reallocate_raw_refuse_bad_pointers() {
    let mm = manager(heap_config());
    let raw = mm.allocate_raw(1000, 8).unwrap().as_ptr();
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let typed = mm.try_allocate(layout).unwrap();
    let before = mm.stats();
    for bad in [
        raw.wrapping_add(8),
        typed.as_ptr(),
        std::ptr::without_provenance_mut(0x1000),
    ] {
        assert!(matches!(
            mm.raw_size(bad),
            Err(Error::InvalidPointer { .. })
        ));
        // SAFETY: no other thread uses these pointers.
        let moved = unsafe { mm.reallocate_raw(bad, 10, 8) };
        assert!(matches!(moved, Err(Error::InvalidPointer { .. })));
    }
    assert_eq!(mm.stats().allocated_blocks, before.allocated_blocks);
    // A failed move (no memory) leaves the block live and intact.
    let limited = manager(heap_config().memory_limit(1 << 20));
    let p = limited.allocate_raw(1000, 8).unwrap().as_ptr();
    // SAFETY: no other thread uses `p`.
    let e = unsafe { limited.reallocate_raw(p, 4 << 20, 8) }.unwrap_err();
    assert!(matches!(e, Error::OutOfMemory(_)));
    assert_eq!(limited.raw_size(p).unwrap(), 1000);
    limited.free_raw(p).unwrap();
    // SAFETY: the typed block came from `try_allocate` with `layout`.
    unsafe { mm.deallocate(typed, layout) };
    mm.free_raw(raw).unwrap();
}

#[test]
fn try_allocate_explains_failures() {
    let mm = manager(heap_config().memory_limit(1 << 20));
    let zero = Layout::from_size_align(0, 8).unwrap();
    assert_eq!(mm.try_allocate(zero), Err(Error::ZeroSize));
    let big = Layout::from_size_align(2 << 20, 8).unwrap();
    let Err(Error::OutOfMemory(report)) = mm.try_allocate(big) else {
        panic!("expected an out-of-memory report");
    };
    assert_eq!(report.requested, 2 << 20);
    let small = Layout::from_size_align(100, 8).unwrap();
    let p = mm.try_allocate_zeroed(small).unwrap();
    // SAFETY: a live block of 100 bytes.
    assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 100) }
        .iter()
        .all(|&b| b == 0));
    // SAFETY: allocated above with `small`.
    unsafe { mm.deallocate(p, small) };
    assert!(mm.same_manager(&mm.clone()));
    assert!(!mm.same_manager(&manager(heap_config())));
}

#[test]
fn free_raw_refuses_every_bad_pointer() {
    let mm = manager(heap_config());
    let small = mm.allocate_raw(64, 64).unwrap();
    // The typed block first, so that the pages past the large block stay free.
    let v: allocator_api2::vec::Vec<u8, &MemoryManager> =
        allocator_api2::vec::Vec::with_capacity_in(1000, &mm);
    let large = mm.allocate_raw(1 << 20, 64).unwrap();
    let before = mm.stats();
    let reason = |p: *mut u8| match mm.free_raw(p) {
        Err(Error::InvalidPointer { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    let local = 0u64;
    assert_eq!(
        reason(&local as *const u64 as *mut u8),
        PointerError::Foreign
    );
    assert_eq!(reason(std::ptr::null_mut()), PointerError::Foreign);
    assert!(matches!(
        reason(small.as_ptr().wrapping_add(1)),
        PointerError::Interior { .. }
    ));
    assert!(matches!(
        reason(large.as_ptr().wrapping_add(4096)),
        PointerError::Interior { .. }
    ));
    assert_eq!(
        reason(large.as_ptr().wrapping_add(1 << 20)),
        PointerError::NotLive
    );
    assert_eq!(reason(v.as_ptr() as *mut u8), PointerError::NotRaw);
    assert_eq!(mm.stats(), before);
    mm.free_raw(small.as_ptr()).unwrap();
    assert_eq!(reason(small.as_ptr()), PointerError::NotLive);
    mm.free_raw(large.as_ptr()).unwrap();
    drop(v);
    assert_eq!(mm.stats().allocated_bytes, 0);
}

#[test]
fn an_address_inside_a_free_slot_is_no_block() {
    // It was refused as "inside the live block" (a user hunt).
    let mm = manager(heap_config());
    let reason = |p: *mut u8| match mm.free_raw(p) {
        Err(Error::InvalidPointer { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    let small = mm.allocate_raw(100, 64).unwrap().as_ptr();
    let medium = mm.allocate_raw(100_000, 64).unwrap().as_ptr();
    assert!(matches!(
        reason(small.wrapping_add(8)),
        PointerError::Interior { .. }
    ));
    // The next slot of the small block's slab was never handed out.
    assert_eq!(reason(small.wrapping_add(128 + 8)), PointerError::NotLive);
    mm.free_raw(small).unwrap();
    mm.free_raw(medium).unwrap();
    assert_eq!(reason(small.wrapping_add(8)), PointerError::NotLive);
    assert_eq!(reason(medium.wrapping_add(4096)), PointerError::NotLive);
    for inside in [small.wrapping_add(8), medium.wrapping_add(4096)] {
        assert!(matches!(
            mm.raw_size(inside),
            Err(Error::InvalidPointer {
                reason: PointerError::NotLive,
                ..
            })
        ));
    }
    // From a thread that does not own the slab, the same.
    let inside = small.wrapping_add(8).addr();
    std::thread::scope(|s| {
        s.spawn(|| {
            let refused = mm.free_raw(std::ptr::without_provenance_mut(inside));
            assert!(matches!(
                refused,
                Err(Error::InvalidPointer {
                    reason: PointerError::NotLive,
                    ..
                })
            ));
        });
    });
    assert_eq!(mm.stats().allocated_bytes, 0);
}

#[test]
fn limit_releases_cache_then_reports() {
    let mm = manager(heap_config().memory_limit(8 << 20));
    let a = mm.allocate_raw(3 << 20, 64).unwrap();
    mm.free_raw(a.as_ptr()).unwrap(); // 4 MiB segment cached
    let b = mm.allocate_raw(6 << 20, 64).unwrap(); // needs the cache released
    let s = mm.stats();
    assert_eq!(s.num_alloc_retries, 1);
    assert_eq!(s.reserved_bytes, 6 << 20);
    let err = mm.allocate_raw(4 << 20, 64).unwrap_err();
    let Error::OutOfMemory(report) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(report.cause, OomCause::LimitReached);
    assert_eq!(report.limit, Some(8 << 20));
    assert_eq!(report.allocated_bytes, 6 << 20);
    assert_eq!(report.reserved_bytes, 6 << 20);
    assert_eq!(report.tier, Tier::Large);
    assert!(err.to_string().contains("tried to allocate 4.00 MiB"));
    assert_eq!(mm.stats().num_ooms, 1);
    mm.free_raw(b.as_ptr()).unwrap();
    // memory is available again
    let c = mm.allocate_raw(4 << 20, 64).unwrap();
    mm.free_raw(c.as_ptr()).unwrap();
}

#[test]
fn the_oom_report_and_stats_agree_on_the_largest_free_block() {
    let mm = manager(heap_config().memory_limit(16 << 20));
    // Free memory in several tiers: slots of a class, a large block's pages.
    let small: Vec<_> = (0..64).map(|_| mm.allocate_raw(256, 64).unwrap()).collect();
    for p in small.iter().step_by(2) {
        mm.free_raw(p.as_ptr()).unwrap();
    }
    let large = mm.allocate_raw(2 << 20, 64).unwrap();
    let held = mm.allocate_raw(5 << 20, 64).unwrap();
    mm.free_raw(large.as_ptr()).unwrap();
    let err = mm.allocate_raw(14 << 20, 64).unwrap_err();
    let Error::OutOfMemory(report) = &err else {
        panic!("{err:?}")
    };
    let stats = mm.stats();
    // The freed large block's pages stay cached (the retry could not help).
    assert!(report.largest_free_block >= 1 << 20, "{report:?}");
    assert_eq!(report.largest_free_block, stats.largest_free_block);
    assert_eq!(report.cached_bytes, stats.cached_bytes);
    mm.free_raw(held.as_ptr()).unwrap();
    for p in small.iter().skip(1).step_by(2) {
        mm.free_raw(p.as_ptr()).unwrap();
    }
}

#[test]
fn arenas_take_chunks_from_the_manager() {
    let mm = manager(heap_config());
    {
        let mut arena = mm.arena();
        let n = if cfg!(miri) { 20_000 } else { 100_000 };
        let xs = arena.alloc_slice_fill(n, 1.5f32).unwrap();
        assert_eq!(xs.iter().sum::<f32>(), 1.5 * n as f32);
        let s = mm.stats();
        assert!(s.arena_bytes >= 4 * n);
        assert!(s.allocated_bytes >= s.arena_bytes);
        // an arena chunk is not the raw API's to free
        let chunk = mm
            .snapshot()
            .segments
            .iter()
            .flat_map(|s| s.blocks.clone())
            .find(|b| b.size >= 4 * n && b.state == crate::observe::snapshot::BlockState::Allocated)
            .unwrap();
        assert!(matches!(
            mm.free_raw(std::ptr::without_provenance_mut(chunk.address)),
            Err(Error::InvalidPointer {
                reason: PointerError::NotRaw,
                ..
            })
        ));
        arena.reset();
    }
    let s = mm.stats();
    assert_eq!((s.arena_bytes, s.allocated_bytes), (0, 0));
    let fixed = mm.arena_with_capacity(4096).unwrap();
    assert!(fixed.allocate(5000, 8).is_err());
}

#[test]
fn bad_alignments_are_refused_also_by_a_warm_class() {
    // The hot path serves from the thread's current slab: a bad alignment must not
    // reach it once the class has one (it used to, for every size up to 40 KB).
    let mm = manager(heap_config());
    for size in [8, 100, 5000, 40_000] {
        let warm = mm.allocate_raw(size, 64).unwrap();
        for align in [0, 3, 5, 48, 63, 100, 4095] {
            assert_eq!(
                mm.allocate_raw(size, align),
                Err(Error::InvalidAlignment { align }),
                "{size} B at {align}"
            );
            assert_eq!(
                mm.allocate_raw_zeroed(size, align),
                Err(Error::InvalidAlignment { align })
            );
        }
        mm.free_raw(warm.as_ptr()).unwrap();
    }
    assert_eq!(mm.stats().allocated_bytes, 0);
}

#[test]
fn bad_requests_are_errors() {
    let mm = manager(heap_config());
    assert_eq!(mm.allocate_raw(0, 64), Err(Error::ZeroSize));
    assert_eq!(
        mm.allocate_raw(64, 3),
        Err(Error::InvalidAlignment { align: 3 })
    );
    assert!(matches!(
        mm.allocate_raw(64, 1 << 13),
        Err(Error::AlignmentTooLarge { .. })
    ));
    assert!(matches!(
        mm.allocate_raw(usize::MAX, 64),
        Err(Error::SizeTooLarge { .. })
    ));
    assert_eq!(mm.stats().num_allocs, 0);
}

#[test]
fn peaks_and_summary() {
    let mm = manager(heap_config());
    let a = mm.allocate_raw(1 << 20, 64).unwrap();
    let b = mm.allocate_raw(1 << 20, 64).unwrap();
    mm.free_raw(a.as_ptr()).unwrap();
    let s = mm.stats();
    assert_eq!(s.peak_allocated_bytes, 2 << 20);
    assert_eq!(s.allocated_bytes, 1 << 20);
    assert!(s.largest_free_block >= 1 << 20);
    mm.reset_peak_stats();
    assert_eq!(mm.stats().peak_allocated_bytes, 1 << 20);
    let text = mm.summary();
    assert!(text.contains("allocated (held by program)") && text.contains("large (best fit)"));
    // The tier table's columns line up: every row as long as its header.
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.starts_with(" tier ")).unwrap();
    for row in &lines[header + 1..header + 4] {
        assert_eq!(row.len(), lines[header].len(), "{row:?} against the header");
    }
    let json = serde_json::to_value(mm.stats()).unwrap();
    for key in [
        "allocated_bytes",
        "requested_bytes",
        "reserved_bytes",
        "cached_bytes",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "num_allocs",
        "num_frees",
        "num_ooms",
        "largest_free_block",
        "fragmentation",
        "internal_waste_bytes",
        "tiers",
        "classes",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    mm.free_raw(b.as_ptr()).unwrap();
}

#[test]
fn clones_share_one_manager() {
    let mm = manager(heap_config());
    let other = mm.clone();
    let p = other.allocate_raw(64, 64).unwrap();
    drop(other);
    assert_eq!(mm.stats().allocated_blocks, 1);
    mm.free_raw(p.as_ptr()).unwrap();
}

mod model {
    use super::*;
    use crate::limits::round_up;
    use crate::observe::snapshot::BlockState;
    use crate::testing::{check, fill, ops_len, proptest_config, LiveSet};
    use crate::upstream::HUGE_PAGE_SIZE;
    use proptest::prelude::*;

    const SMALL: usize = 4096;
    const HUGE: usize = 4 << 20;

    #[derive(Debug, Clone)]
    enum Op {
        Alloc {
            size: usize,
            align: usize,
            raw: bool,
        },
        Free(usize),
        BadFree(usize, usize),
        Trim,
    }

    fn op() -> impl Strategy<Value = Op> {
        let size = prop_oneof![
            1usize..SMALL,
            SMALL..300_000,
            300_000..HUGE,
            HUGE..(6 << 20)
        ];
        let align = prop_oneof![Just(1usize), Just(8), Just(64), Just(256), Just(4096)];
        prop_oneof![
            6 => (size, align, any::<bool>()).prop_map(|(size, align, raw)| Op::Alloc { size, align, raw }),
            4 => any::<usize>().prop_map(Op::Free),
            1 => (any::<usize>(), 0usize..5000).prop_map(|(i, o)| Op::BadFree(i, o)),
            1 => Just(Op::Trim),
        ]
    }

    struct Live {
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
        raw: bool,
        seed: u64,
    }

    fn expected_block(mm: &MemoryManager, size: usize, align: usize) -> Option<(Tier, usize)> {
        let align = align.max(64);
        match mm
            .size_classes()
            .and_then(|c| c.class_for(size, align).map(|i| c.size_of(i)))
        {
            Some(block) => Some((Tier::Small, block)),
            None if size > HUGE => Some((Tier::Huge, round_up(size, HUGE_PAGE_SIZE))),
            None => None,
        }
    }

    proptest! {
        #![proptest_config(proptest_config(96))]

        /// The manager against a model of live blocks, through both the raw API and
        /// the Allocator trait, with and without explicit pools and a limit.
        #[test]
        fn manager_matches_model(
            pools in any::<bool>(),
            limit in proptest::option::of(16usize..40),
            ops in proptest::collection::vec(op(), ops_len(100)),
        ) {
            let mut config = Config::builder()
                .upstream(UpstreamKind::Heap)
                .small_threshold(SMALL)
                .huge_threshold(HUGE)
                .pool_chunk_size(16 << 10);
            if pools {
                config = config.pool(256, 3).pool(2048, 2);
            }
            if let Some(mib) = limit {
                config = config.memory_limit(mib << 20);
            }
            let mm = MemoryManager::new(config.build().unwrap()).unwrap();
            let mut live: Vec<Live> = Vec::new();
            let mut seed = 0;
            for op in ops {
                match op {
                    Op::Alloc { size, align, raw } => {
                        let before = mm.stats();
                        let result = if raw {
                            mm.allocate_raw(size, align)
                        } else {
                            mm.allocate_typed(Layout::from_size_align(size, align).unwrap())
                        };
                        match result {
                            Ok(ptr) => {
                                prop_assert_eq!(ptr.as_ptr() as usize % align.max(64), 0);
                                seed += 1;
                                // SAFETY: a live block of `size` bytes.
                                unsafe { fill(ptr.as_ptr(), size, seed) };
                                live.push(Live { ptr, size, align, raw, seed });
                            }
                            Err(Error::OutOfMemory(report)) => {
                                prop_assert!(limit.is_some(), "OOM without a limit");
                                prop_assert_eq!(report.requested, size);
                                prop_assert!(report.reserved_bytes + size > report.limit.unwrap() - (2 << 20));
                                let after = mm.stats();
                                prop_assert_eq!(after.num_ooms, before.num_ooms + 1);
                                prop_assert_eq!(after.allocated_bytes, before.allocated_bytes);
                            }
                            Err(e) => prop_assert!(false, "unexpected {}", e),
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let l = live.swap_remove(i % live.len());
                        // SAFETY: live, filled with `l.seed`.
                        unsafe { check(l.ptr.as_ptr(), l.size, l.seed) };
                        if l.raw {
                            mm.free_raw(l.ptr.as_ptr()).unwrap();
                            prop_assert!(mm.free_raw(l.ptr.as_ptr()).is_err(), "double free accepted");
                        } else {
                            let refused = matches!(
                                mm.free_raw(l.ptr.as_ptr()),
                                Err(Error::InvalidPointer { reason: PointerError::NotRaw, .. })
                            );
                            prop_assert!(refused, "free_raw took a typed block");
                            // SAFETY: allocated through the Allocator with this layout.
                            unsafe { Allocator::deallocate(&mm, l.ptr, Layout::from_size_align(l.size, l.align).unwrap()) };
                        }
                    }
                    Op::BadFree(i, off) if !live.is_empty() => {
                        let l = &live[i % live.len()];
                        if off > 0 && off < l.size {
                            // A refused free changes nothing (the age of the last
                            // release moves with the clock).
                            let still = || Stats { last_release_ms_ago: None, ..mm.stats() };
                            let before = still();
                            prop_assert!(mm.free_raw(l.ptr.as_ptr().wrapping_add(off)).is_err());
                            prop_assert_eq!(still(), before);
                        }
                    }
                    Op::Trim => {
                        mm.trim();
                    }
                    _ => {}
                }
                let mut set = LiveSet::default();
                for l in &live {
                    set.insert(l.ptr.as_ptr() as usize, l.size);
                }
                let s = mm.stats();
                prop_assert_eq!(s.allocated_blocks, live.len());
                prop_assert_eq!(s.requested_bytes, live.iter().map(|l| l.size).sum::<usize>());
                prop_assert!(s.reserved_bytes >= s.allocated_bytes);
                if let Some(mib) = limit {
                    prop_assert!(s.reserved_bytes <= mib << 20);
                }
                // Every live block appears in the snapshot with its state, and the
                // snapshot's live bytes are the allocated bytes.
                let snap = mm.snapshot();
                let blocks: std::collections::HashMap<usize, (usize, BlockState)> = snap.segments.iter()
                    .flat_map(|seg| seg.blocks.iter())
                    .filter(|b| !matches!(b.state, BlockState::Free | BlockState::Slab))
                    .map(|b| (b.address, (b.size, b.state)))
                    .collect();
                prop_assert_eq!(blocks.len(), live.len());
                prop_assert_eq!(blocks.values().map(|b| b.0).sum::<usize>(), s.allocated_bytes);
                for l in &live {
                    let (block, state) = blocks[&(l.ptr.as_ptr() as usize)];
                    prop_assert!(block >= l.size);
                    prop_assert_eq!(state, BlockState::live(l.raw));
                    if !pools {
                        if let Some((_, expected)) = expected_block(&mm, l.size, l.align) {
                            prop_assert_eq!(block, expected);
                        }
                    }
                }
            }
            for l in live {
                // SAFETY: live, filled with `l.seed`.
                unsafe { check(l.ptr.as_ptr(), l.size, l.seed) };
                if l.raw {
                    mm.free_raw(l.ptr.as_ptr()).unwrap();
                } else {
                    // SAFETY: allocated through the Allocator with this layout.
                    unsafe { Allocator::deallocate(&mm, l.ptr, Layout::from_size_align(l.size, l.align).unwrap()) };
                }
            }
            let s = mm.stats();
            prop_assert_eq!((s.allocated_bytes, s.requested_bytes, s.allocated_blocks), (0, 0, 0));
            prop_assert_eq!(s.num_allocs, s.num_frees);
            mm.trim();
            let s = mm.stats();
            prop_assert_eq!(s.reserved_bytes, 0);
            prop_assert_eq!(s.num_upstream_allocs, s.num_upstream_frees);
        }
    }
}

#[test]
fn the_background_thread_waits_for_the_next_pass_not_an_interval() {
    // Regression: the thread waited one interval after its own pass; when a slow
    // path had run a pass since (or the coarse clock lagged the timer), it woke just
    // before the next pass was due, skipped it and waited a whole interval more, so
    // memory went back after up to two delays.
    use std::time::Duration;
    let clock = Arc::new(crate::util::clock::ManualClock::new());
    let mm = MemoryManager::with_clock(Config::default(), clock.clone()).unwrap();
    let wait = || super::releaser::next_wait(std::slice::from_ref(&mm.inner));
    assert_eq!(wait(), Duration::from_millis(500));
    clock.advance(Duration::from_millis(600));
    mm.release_idle(); // a pass, due: the next is due at 1100 ms
    clock.advance(Duration::from_millis(300));
    assert_eq!(wait(), Duration::from_millis(200), "not an interval");
    clock.advance(Duration::from_millis(300));
    // Due: the shortest wait (the thread runs the pass first, unless another does).
    assert_eq!(wait(), Duration::from_millis(1));
    mm.set_release_delay(None).unwrap();
    assert_eq!(
        wait(),
        Duration::from_secs(1),
        "no passes: the longest wait"
    );
}

/// Waits until `done()`, failing with `what()` after `limit`.
fn poll_until(limit: std::time::Duration, done: impl Fn() -> bool, what: impl Fn() -> String) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A manager whose background thread gives free memory back after 50 ms.
fn background_manager() -> MemoryManager {
    MemoryManager::new(
        Config::builder()
            .release_delay_ms(Some(50))
            .background_release(true)
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[test]
#[cfg_attr(miri, ignore = "real time and a background thread")]
fn the_background_thread_gives_memory_back_while_the_program_waits() {
    let secs = std::time::Duration::from_secs;
    let mm = background_manager();
    assert!(super::releaser::running());
    let p = mm.allocate_raw(32 << 20, 64).unwrap();
    mm.free_raw(p.as_ptr()).unwrap();
    let resident = mm.resident_bytes();
    assert!(resident >= 32 << 20);
    // No call into the manager: the thread's passes give the block back.
    poll_until(
        secs(10),
        || mm.resident_bytes() + (32 << 20) <= resident,
        || format!("not given back: resident {}", mm.resident_bytes()),
    );
    // A manager made after the last one went away finds the thread still there (a
    // program that makes managers one after another started one for each before).
    let starts = super::releaser::starts();
    drop(mm);
    // Past the thread's longest sleep: it has found no manager and lingers.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let next = background_manager();
    assert!(super::releaser::running());
    assert_eq!(super::releaser::starts(), starts);
    // ... and wakes it for its passes, not at the end of the linger (5 s in tests).
    let p = next.allocate_raw(32 << 20, 64).unwrap();
    next.free_raw(p.as_ptr()).unwrap();
    poll_until(
        std::time::Duration::from_millis(2500),
        || next.resident_bytes() < 32 << 20,
        || {
            format!(
                "not given back during the linger: resident {}",
                next.resident_bytes()
            )
        },
    );
    // The thread stops when no manager has needed it for a while.
    drop(next);
    poll_until(
        secs(10),
        || !super::releaser::running(),
        || "still running".into(),
    );
}

#[test]
fn the_fields_every_allocation_reads_share_no_line_with_written_ones() {
    use std::mem::offset_of;
    assert_eq!(std::mem::align_of::<Inner>(), 64);
    for read in [
        offset_of!(Inner, table_limit),
        offset_of!(Inner, table_align),
        offset_of!(Inner, engine),
        offset_of!(Inner, fast),
        offset_of!(Inner, pools),
        offset_of!(Inner, pools_hot),
    ] {
        assert!(read < 64);
    }
    for written in [offset_of!(Inner, release), offset_of!(Inner, counters)] {
        assert!(written >= 64);
    }
}

#[test]
fn an_arena_of_the_manager_reports_the_managers_state_when_out_of_memory() {
    // Its report said "0 B allocated, 0 B reserved" (the arena's own counters)
    // while the manager held 3 MiB under a 4 MiB limit (a user hunt).
    let mm = manager(heap_config().memory_limit(4 << 20));
    let held = mm.allocate_raw(3 << 20, 64).unwrap();
    let arena = mm.arena();
    let Err(Error::OutOfMemory(report)) = arena.allocate(2 << 20, 64) else {
        panic!("the limit must refuse the arena's chunk");
    };
    assert_eq!(report.tier, crate::observe::stats::Tier::Arena);
    assert_eq!(report.requested, 2 << 20);
    assert_eq!(report.cause, OomCause::LimitReached);
    assert_eq!(report.limit, Some(4 << 20));
    assert!(report.allocated_bytes >= 3 << 20, "{report}");
    assert!(report.reserved_bytes >= 3 << 20, "{report}");
    mm.free_raw(held.as_ptr()).unwrap();
}

#[test]
fn the_config_shows_the_settings_changed_while_running() {
    // It kept the values the manager was made with (a user hunt).
    let mm = manager(heap_config().memory_limit(64 << 20));
    mm.set_memory_limit(Some(32 << 20)).unwrap();
    mm.set_soft_limit(Some(16 << 20)).unwrap();
    mm.set_release_delay(Some(std::time::Duration::from_millis(1500)))
        .unwrap();
    let config = mm.config();
    assert_eq!(config.memory_limit, Some(32 << 20));
    assert_eq!(config.soft_limit, Some(16 << 20));
    assert_eq!(config.release_delay_ms, Some(1500));
    config.validate().unwrap();
    mm.set_memory_limit(None).unwrap();
    mm.set_release_delay(None).unwrap();
    assert_eq!(mm.config().memory_limit, None);
    assert_eq!(mm.config().release_delay_ms, None);
    // A delay above the configured maximum (which it may be: it is then not
    // stretched), and one under a millisecond: still a valid config, which makes a
    // manager (the review of the change).
    let mm = manager(heap_config().max_release_delay_ms(2000));
    mm.set_release_delay(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let config = mm.config();
    assert_eq!(config.release_delay_ms, Some(5000));
    assert_eq!(config.max_release_delay_ms, Some(5000));
    MemoryManager::new(config).unwrap();
    mm.set_release_delay(Some(std::time::Duration::from_micros(500)))
        .unwrap();
    assert_eq!(mm.config().release_delay_ms, Some(1));
    MemoryManager::new(mm.config()).unwrap();
}

#[test]
fn a_large_block_made_and_dropped_over_and_over_stays_with_its_thread() {
    // A heap whose share of its live bytes was below one block gave every block of
    // 256 KiB-1 MiB back at its free and carved it anew at the next allocation: one
    // array of 300 KB made and dropped took 176 ns a pair, 22 just below (a user
    // hunt). It now stays in the thread's cache, alone, until pages are taken for
    // another block.
    let mm = manager(Config::builder());
    for size in [300_000, 1 << 20] {
        let first = mm.allocate_raw(size, 64).unwrap();
        mm.free_raw(first.as_ptr()).unwrap();
        assert!(
            mm.stats().thread_cached_bytes >= size,
            "{size}: {}",
            mm.stats().thread_cached_bytes
        );
        let again = mm.allocate_raw(size, 64).unwrap();
        assert_eq!(again, first, "{size}: served from the thread's cache");
        mm.free_raw(again.as_ptr()).unwrap();
    }
    // A block of another size the cache does not serve: what it holds beyond its
    // share goes back first.
    let other = mm.allocate_raw(600_000, 64).unwrap();
    assert!(mm.stats().thread_cached_bytes < 1 << 20);
    mm.free_raw(other.as_ptr()).unwrap();
}

#[test]
fn blocks_held_across_slabs_are_freed_by_the_leaf_paths_and_their_fallbacks() {
    // Allocations and frees first try a leaf (the current slab of a class, or a slab
    // a free found last), which calls nothing; a block elsewhere in the thread's
    // slabs goes on in a call that ends the operation (`release_elsewhere`,
    // `settle_ending`, `grant_refill_ending`). Blocks held by the hundred span
    // several slabs of a class, so every one of those runs.
    let mm = manager(heap_config());
    let layout = Layout::from_size_align(1024, 64).unwrap();
    let n = if cfg!(miri) { 40 } else { 300 };
    for round in 0..if cfg!(miri) { 1 } else { 3 } {
        let typed: Vec<NonNull<u8>> = (0..n)
            .map(|_| mm.allocate(layout).unwrap().cast())
            .collect();
        let raw: Vec<NonNull<u8>> = (0..n).map(|_| mm.allocate_raw(1000, 64).unwrap()).collect();
        let mut all: Vec<usize> = typed
            .iter()
            .chain(&raw)
            .map(|p| p.as_ptr().addr())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2 * n, "round {round}: no block handed out twice");
        assert_eq!(mm.stats().allocated_bytes, 2 * n * 1024);
        // The first blocks of each are in slabs that are no longer current.
        for (i, p) in typed.iter().enumerate() {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { mm.deallocate(*p, layout) };
            if i % 16 == 0 {
                assert_eq!(mm.stats().allocated_bytes, (2 * n - 1 - i) * 1024);
            }
        }
        for p in &raw {
            mm.free_raw(p.as_ptr()).unwrap();
            // A second free is refused, also right after the first (its slab is
            // the one the leaf looks at first), and changes nothing.
            assert!(matches!(
                mm.free_raw(p.as_ptr()),
                Err(Error::InvalidPointer {
                    reason: PointerError::NotLive,
                    ..
                })
            ));
        }
        let s = mm.stats();
        assert_eq!(
            (s.allocated_bytes, s.allocated_blocks),
            (0, 0),
            "round {round}"
        );
        // A free refused with an error changes nothing, not even this count.
        assert_eq!(s.num_invalid_frees, 0);
    }
}

#[test]
fn the_leaf_paths_step_aside_for_a_trim_from_another_thread() {
    // A trim stops every heap; an owner on a leaf path that sees the stopper's
    // signal ends its operation and takes the full path, which waits for the
    // stopper. Allocations and frees racing with trims balance.
    let mm = manager(heap_config());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                mm.trim();
            }
        });
        let layout = Layout::from_size_align(64, 64).unwrap();
        for _ in 0..if cfg!(miri) { 5 } else { 3_000 } {
            let held: Vec<NonNull<u8>> = (0..40)
                .map(|i| match i % 2 {
                    0 => mm.allocate(layout).unwrap().cast(),
                    _ => mm.allocate_raw(64, 64).unwrap(),
                })
                .collect();
            for (i, p) in held.iter().enumerate() {
                match i % 2 {
                    // SAFETY: allocated above with `layout`, freed once.
                    0 => unsafe { mm.deallocate(*p, layout) },
                    _ => mm.free_raw(p.as_ptr()).unwrap(),
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let s = mm.stats();
    assert_eq!((s.allocated_bytes, s.num_invalid_frees), (0, 0));
}

#[test]
#[cfg_attr(miri, ignore = "a policy, no unsafe code of its own: slow under Miri")]
fn a_class_that_holds_many_blocks_ends_up_in_few_slabs() {
    // Slabs are sized by what their class holds, so a class that grows starts with
    // small ones (4, 4, 8, 16, 32 KiB for 64 blocks of 1 KiB); an empty slab far
    // smaller than what the class holds elsewhere goes back when it empties, and
    // the slabs made next are larger.
    let mm = manager(heap_config());
    let layout = Layout::from_size_align(1024, 64).unwrap();
    let slabs = |mm: &MemoryManager| {
        let s = mm.stats();
        let class = s.classes.iter().find(|c| c.block_size == 1024).unwrap();
        (class.slabs, class.reserved_bytes)
    };
    let mut first = None;
    for _ in 0..8 {
        let held: Vec<NonNull<u8>> = (0..64)
            .map(|_| mm.allocate(layout).unwrap().cast())
            .collect();
        first.get_or_insert(slabs(&mm));
        for p in &held {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { mm.deallocate(*p, layout) };
        }
    }
    let held: Vec<NonNull<u8>> = (0..64)
        .map(|_| mm.allocate(layout).unwrap().cast())
        .collect();
    let (first, last) = (first.unwrap(), slabs(&mm));
    assert!(first.0 >= 5, "first round: {first:?}");
    assert!(last.0 < first.0, "{first:?} -> {last:?}");
    // No more memory than the first round's slabs held.
    assert!(last.1 <= first.1, "{first:?} -> {last:?}");
    for p in &held {
        // SAFETY: as above.
        unsafe { mm.deallocate(*p, layout) };
    }
    assert_eq!(mm.stats().allocated_bytes, 0);
}

#[test]
fn large_blocks_freed_together_come_back_from_the_thread_cache() {
    // 64 blocks of 64 KiB made and freed over and over (a layer's activations): the
    // heap keeps all of them (up to the most it held live), so the next round takes
    // them back without best fit; a request the cache cannot serve first gives back
    // what it keeps beyond an eighth of that high-water mark.
    let mm = manager(heap_config().release_delay_ms(None));
    let n = if cfg!(miri) { 8 } else { 64 };
    let layout = Layout::from_size_align(64 << 10, 64).unwrap();
    let take = || -> Vec<NonNull<u8>> {
        (0..n)
            .map(|_| mm.allocate(layout).unwrap().cast())
            .collect()
    };
    let give = |blocks: &[NonNull<u8>]| {
        for &p in blocks {
            // SAFETY: allocated by `take` with `layout`, freed once.
            unsafe { mm.deallocate(p, layout) };
        }
    };
    let sorted = |blocks: &[NonNull<u8>]| {
        let mut a: Vec<usize> = blocks.iter().map(|p| p.as_ptr().addr()).collect();
        a.sort_unstable();
        a
    };
    let first = take();
    give(&first);
    let kept = mm.stats().thread_cached_bytes;
    assert_eq!(kept, n * layout.size(), "every block freed is kept");
    let reserved = mm.stats().reserved_bytes;
    for _ in 0..3 {
        let again = take();
        assert_eq!(sorted(&again), sorted(&first), "the same blocks come back");
        assert_eq!(mm.stats().thread_cached_bytes, 0);
        give(&again);
        assert_eq!(mm.stats().thread_cached_bytes, kept);
        assert_eq!(mm.stats().reserved_bytes, reserved);
    }
    // A miss: a size the cache holds none of.
    let other = Layout::from_size_align(100 << 10, 64).unwrap();
    let p = mm.allocate(other).unwrap().cast::<u8>();
    let eighth = (n * layout.size() / 8).max(128 << 10);
    assert!(
        mm.stats().thread_cached_bytes <= eighth,
        "{} kept past a miss",
        mm.stats().thread_cached_bytes
    );
    // SAFETY: allocated just above with `other`.
    unsafe { mm.deallocate(p, other) };
    mm.trim();
    assert_eq!(mm.stats().thread_cached_bytes, 0);
}

#[test]
fn a_miss_gives_back_the_blocks_cached_longest_ago() {
    // A block of a size no longer asked for, freed first, then 16 blocks of 256 KiB:
    // the heap keeps them all (it held them live together). A request the cache
    // cannot serve trims it to an eighth of that high-water mark, the oldest first,
    // so the block freed last stays and serves the next request of its size.
    // (Largest first kept the old block beside it.)
    let mm = manager(heap_config().release_delay_ms(None));
    let layout = |size| Layout::from_size_align(size, 64).unwrap();
    let small = layout(40 << 10);
    let big = layout(256 << 10);
    let old = mm.allocate(small).unwrap().cast::<u8>();
    let blocks: Vec<NonNull<u8>> = (0..16).map(|_| mm.allocate(big).unwrap().cast()).collect();
    // SAFETY: allocated above with `small`, freed once.
    unsafe { mm.deallocate(old, small) };
    for &p in &blocks {
        // SAFETY: allocated above with `big`, freed once.
        unsafe { mm.deallocate(p, big) };
    }
    assert_eq!(
        mm.stats().thread_cached_bytes,
        16 * big.size() + small.size()
    );
    let other = layout(100 << 10);
    let miss = mm.allocate(other).unwrap().cast::<u8>();
    // Whole big blocks, the old one gone.
    let kept = mm.stats().thread_cached_bytes;
    assert_eq!(kept % big.size(), 0, "{kept} kept");
    let n = kept / big.size();
    assert!((1..=2).contains(&n), "{n} blocks kept");
    let again: Vec<NonNull<u8>> = (0..n).map(|_| mm.allocate(big).unwrap().cast()).collect();
    let newest: Vec<NonNull<u8>> = blocks[16 - n..].iter().rev().copied().collect();
    assert_eq!(again, newest, "the blocks freed last, newest first");
    assert_eq!(mm.stats().thread_cached_bytes, 0);
    // SAFETY: allocated above with `big` and `other`, each freed once.
    unsafe {
        for p in again {
            mm.deallocate(p, big);
        }
        mm.deallocate(miss, other);
    }
}

#[test]
fn raw_frees_in_no_order_are_checked_through_the_page_map() {
    // Raw blocks of five classes freed in a scattered order: most frees find their
    // slab in neither of the two the thread's last frees found, so the free's leaf
    // reads the page map. Every check holds there as on the full path: a second
    // free, an interior address and a typed block are refused and change nothing;
    // a block of another thread's slab goes to the full path (posted).
    let mm = manager(heap_config());
    let sizes = [48, 200, 700, 3000, 9000];
    let per = if cfg!(miri) { 6 } else { 60 };
    let blocks: Vec<(NonNull<u8>, usize)> = (0..per)
        .flat_map(|_| sizes.iter().map(|&s| (mm.allocate_raw(s, 16).unwrap(), s)))
        .collect();
    let layout = Layout::from_size_align(700, 16).unwrap();
    let typed = mm.allocate(layout).unwrap().cast::<u8>();
    let theirs = std::thread::scope(|s| {
        s.spawn(|| mm.allocate_raw(200, 16).unwrap().as_ptr().addr())
            .join()
            .unwrap()
    });
    let n = blocks.len();
    // A stride prime to the count visits every block once, scattered.
    let order: Vec<usize> = (0..n).map(|i| i * 7 % n).collect();
    for (k, &i) in order.iter().enumerate() {
        let (p, _) = blocks[i];
        // An interior address of a block still live, in a slab not looked at last.
        let (q, _) = blocks[order[(k + n / 2) % n]];
        if k < n / 2 {
            assert!(matches!(
                mm.free_raw(q.as_ptr().wrapping_add(16)),
                Err(Error::InvalidPointer {
                    reason: PointerError::Interior { .. },
                    ..
                })
            ));
        }
        mm.free_raw(p.as_ptr()).unwrap();
    }
    assert_eq!(mm.stats().requested_bytes, 700 + 200);
    // Second frees, in another order: refused through the page map too.
    for &i in order.iter().rev() {
        assert!(matches!(
            mm.free_raw(blocks[i].0.as_ptr()),
            Err(Error::InvalidPointer {
                reason: PointerError::NotLive,
                ..
            })
        ));
    }
    assert!(matches!(
        mm.free_raw(typed.as_ptr()),
        Err(Error::InvalidPointer {
            reason: PointerError::NotRaw,
            ..
        })
    ));
    // `free_raw` reads only the address.
    mm.free_raw(std::ptr::without_provenance_mut(theirs))
        .unwrap();
    // SAFETY: allocated above with `layout`, freed once.
    unsafe { mm.deallocate(typed, layout) };
    let s = mm.stats();
    assert_eq!((s.allocated_blocks, s.requested_bytes), (0, 0));
    assert_eq!(s.num_invalid_frees, 0);
}

#[test]
fn a_release_pass_keeps_the_cache_oldest_first() {
    // A release pass takes every cached large block out and puts back those still
    // young, each with the stamp it had: a block of 256 KiB freed before one of
    // 40 KiB is still the older at the next miss, with or without a pass between.
    // (With new stamps, the smaller looked older and went first.)
    let mm = manager(heap_config().release_delay_ms(None));
    let layout = |size| Layout::from_size_align(size, 64).unwrap();
    let (big, small, other) = (layout(256 << 10), layout(40 << 10), layout(100 << 10));
    for pass in [false, true] {
        let b = mm.allocate(big).unwrap().cast::<u8>();
        let s = mm.allocate(small).unwrap().cast::<u8>();
        // SAFETY: allocated just above, each freed once.
        unsafe {
            mm.deallocate(b, big);
            mm.deallocate(s, small);
        }
        if pass {
            // Old enough for nothing to go.
            assert_eq!(mm.inner.engine.release_idle(u8::MAX), 0);
        }
        let m = mm.allocate(other).unwrap().cast::<u8>();
        // The miss trims to 128 KiB, the older block first: the newer stays.
        assert_eq!(mm.stats().thread_cached_bytes, small.size(), "pass {pass}");
        // SAFETY: allocated just above.
        unsafe { mm.deallocate(m, other) };
        mm.trim();
    }
}

#[test]
fn large_blocks_take_the_span_leaves_and_keep_every_check() {
    // Sizes past the size classes that a span serves go straight to the thread's
    // cache of large blocks (`hot_span_pages`, `grant_span_leaf`,
    // `release_span_leaf`): a block freed comes back at the next request of its
    // size; frees keep the checks of the full path; another thread's free of one
    // goes the full path (posted to the owner).
    let mm = manager(heap_config().release_delay_ms(None));
    for size in [40 << 10, 64 << 10, 300 << 10, 1 << 20] {
        let layout = Layout::from_size_align(size, 64).unwrap();
        let p = mm.allocate(layout).unwrap().cast::<u8>();
        // SAFETY: allocated just above with `layout`.
        unsafe { mm.deallocate(p, layout) };
        let q = mm.allocate(layout).unwrap().cast::<u8>();
        assert_eq!(p, q, "{size}: the cached block");
        // SAFETY: as above.
        unsafe { mm.deallocate(q, layout) };
        let r = mm.allocate_raw(size, 64).unwrap();
        assert_eq!(r, p, "{size}: raw, the same cached block");
        assert!(matches!(
            mm.free_raw(r.as_ptr().wrapping_add(4096)),
            Err(Error::InvalidPointer {
                reason: PointerError::Interior { .. },
                ..
            })
        ));
        mm.free_raw(r.as_ptr()).unwrap();
        assert!(matches!(
            mm.free_raw(r.as_ptr()),
            Err(Error::InvalidPointer {
                reason: PointerError::NotLive,
                ..
            })
        ));
        // A block of this thread, freed by another: posted, collected by `stats`.
        struct Held(NonNull<u8>);
        // SAFETY: the block is freed once, by the thread it is sent to.
        unsafe impl Send for Held {}
        let held = Held(mm.allocate(layout).unwrap().cast::<u8>());
        std::thread::scope(|s| {
            s.spawn(|| {
                let held = held;
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { mm.deallocate(held.0, layout) };
            });
        });
        assert_eq!(mm.stats().allocated_blocks, 0, "{size}");
        // Each size from an empty cache (a free past the heap's high-water mark
        // would give the oldest blocks back first).
        mm.trim();
    }
    let s = mm.stats();
    assert_eq!(s.num_invalid_frees, 0);
}
