//! Debug mode: guard bytes checked on free, fresh and freed memory filled with
//! patterns, leaks reported, every bad free still refused.

use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::ptr::NonNull;
use tensorpool::debug::{FRESH_BYTE, GUARD, POISON_BYTE};
use tensorpool::{Arena, Config, Error, MemoryManager, PointerError, Tier};

fn debug_manager() -> MemoryManager {
    MemoryManager::new(
        Config::builder()
            .debug(true)
            .small_threshold(4096)
            .huge_threshold(4 << 20)
            .pool(100, 4)
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn bytes<'a>(ptr: NonNull<u8>, len: usize) -> &'a [u8] {
    // SAFETY: callers pass memory the manager keeps mapped (a live block, or a freed
    // block of a chunk or segment that another live block keeps).
    unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) }
}

/// Writes `n` bytes past the end of a `size`-byte block: the bug debug mode catches.
fn overrun(ptr: NonNull<u8>, size: usize, n: usize) {
    assert!(n <= GUARD);
    // SAFETY: in debug mode the `GUARD` bytes after the block belong to it.
    unsafe { ptr.as_ptr().add(size).write_bytes(0, n) };
}

#[test]
fn overruns_are_found_in_every_tier_with_size_and_tier() {
    let mm = debug_manager();
    // an explicit pool, the size classes, best fit, huge
    // (Blocks take GUARD bytes more: the pool of 100-byte blocks serves up to 84.)
    let cases = [
        (80, Tier::Pool),
        (1000, Tier::Small),
        (100_000, Tier::Large),
        (5 << 20, Tier::Huge),
    ];
    for (i, &(size, tier)) in cases.iter().enumerate() {
        let p = mm.allocate_raw(size, 64).unwrap();
        overrun(p, size, i + 1);
        mm.free_raw(p.as_ptr()).unwrap();
        let v = mm.guard_violations();
        assert_eq!(v.len(), i + 1);
        let last = &v[i];
        assert_eq!(
            (last.addr, last.size, last.tier, last.offset),
            (p.as_ptr() as usize, size, tier, 0)
        );
        assert!(
            last.to_string().contains(&format!("{size} bytes")),
            "{last}"
        );
    }
    assert_eq!(mm.stats().num_guard_violations, 4);
    // Typed blocks too, through the Allocator trait.
    let layout = Layout::from_size_align(200, 8).unwrap();
    let p = mm.allocate(layout).unwrap().cast::<u8>();
    overrun(p, 200, GUARD);
    // SAFETY: allocated above with `layout`.
    unsafe { mm.deallocate(p, layout) };
    assert_eq!(mm.guard_violations().last().unwrap().size, 200);
    // A block written exactly to its end is fine.
    let p = mm.allocate_raw(300, 8).unwrap();
    // SAFETY: the block's own 300 bytes.
    unsafe { p.as_ptr().write_bytes(1, 300) };
    mm.free_raw(p.as_ptr()).unwrap();
    assert_eq!(mm.guard_violations().len(), 5);
}

#[test]
fn fresh_blocks_are_filled_and_freed_blocks_poisoned() {
    let mm = debug_manager();
    let keep = mm.allocate_raw(1000, 64).unwrap(); // keeps the class's chunk mapped
    let p = mm.allocate_raw(1000, 64).unwrap();
    assert!(bytes(p, 1000).iter().all(|&b| b == FRESH_BYTE));
    let z = mm.allocate_raw_zeroed(1000, 64).unwrap();
    assert!(bytes(z, 1000).iter().all(|&b| b == 0));
    mm.free_raw(p.as_ptr()).unwrap();
    assert!(bytes(p, 1000 + GUARD).iter().all(|&b| b == POISON_BYTE));
    let layout = Layout::from_size_align(1000, 64).unwrap();
    let t = mm.try_allocate(layout).unwrap();
    assert!(bytes(t, 1000).iter().all(|&b| b == FRESH_BYTE));
    // SAFETY: allocated above with `layout`.
    unsafe { mm.deallocate(t, layout) };
    assert!(bytes(t, 1000).iter().all(|&b| b == POISON_BYTE));
    mm.free_raw(z.as_ptr()).unwrap();
    mm.free_raw(keep.as_ptr()).unwrap();
    assert!(mm.guard_violations().is_empty());
}

#[test]
fn leaks_are_counted_with_bytes_and_largest() {
    let mm = debug_manager();
    assert_eq!(mm.leaks().unwrap().count, 0);
    let a = mm.allocate_raw(100, 8).unwrap();
    let b = mm.allocate_raw(70_000, 8).unwrap();
    let layout = Layout::from_size_align(3000, 8).unwrap();
    let c = mm.try_allocate(layout).unwrap();
    let report = mm.leaks().unwrap();
    assert_eq!(
        (report.count, report.bytes, report.largest),
        (3, 73_100, 70_000)
    );
    assert!(report.to_string().contains("3 live block(s)"), "{report}");
    mm.free_raw(a.as_ptr()).unwrap();
    mm.free_raw(b.as_ptr()).unwrap();
    // SAFETY: allocated above with `layout`.
    unsafe { mm.deallocate(c, layout) };
    assert_eq!(mm.leaks().unwrap().count, 0);
    // Outside debug mode there is nothing to report.
    assert!(MemoryManager::default().leaks().is_none());
}

#[test]
fn bad_frees_are_still_refused_and_change_nothing() {
    let mm = debug_manager();
    let p = mm.allocate_raw(500, 8).unwrap();
    let interior = mm.free_raw(p.as_ptr().wrapping_add(8));
    assert!(matches!(
        interior,
        Err(Error::InvalidPointer {
            reason: PointerError::Interior { .. },
            ..
        })
    ));
    let layout = Layout::from_size_align(500, 8).unwrap();
    let typed = mm.try_allocate(layout).unwrap();
    let not_raw = mm.free_raw(typed.as_ptr());
    assert!(matches!(
        not_raw,
        Err(Error::InvalidPointer {
            reason: PointerError::NotRaw,
            ..
        })
    ));
    assert!(
        bytes(typed, 500).iter().all(|&b| b == FRESH_BYTE),
        "a refused free poisons nothing"
    );
    mm.free_raw(p.as_ptr()).unwrap();
    let double = mm.free_raw(p.as_ptr());
    assert!(matches!(
        double,
        Err(Error::InvalidPointer {
            reason: PointerError::NotLive,
            ..
        })
    ));
    assert!(mm.free_raw(0x1000 as *mut u8).is_err());
    assert_eq!(mm.leaks().unwrap().count, 1);
    assert!(mm.guard_violations().is_empty());
    // SAFETY: allocated above with `layout`.
    unsafe { mm.deallocate(typed, layout) };
}

#[test]
fn reallocation_and_sizes_see_the_block_not_the_guard() {
    let mm = debug_manager();
    let p = mm.allocate_raw(100, 8).unwrap();
    assert_eq!(mm.raw_size(p.as_ptr()).unwrap(), 100);
    // SAFETY: the block's own bytes; no other thread uses it.
    unsafe { p.as_ptr().write_bytes(7, 100) };
    // SAFETY: no other thread uses `p`.
    let q = unsafe { mm.reallocate_raw(p.as_ptr(), 50_000, 8) }.unwrap();
    assert!(bytes(q, 100).iter().all(|&b| b == 7));
    assert_eq!(mm.raw_size(q.as_ptr()).unwrap(), 50_000);
    assert!(mm.raw_size(p.as_ptr()).is_err());
    mm.free_raw(q.as_ptr()).unwrap();
    assert!(mm.guard_violations().is_empty());
    assert_eq!(mm.stats().allocated_blocks, 0);
}

#[test]
fn arenas_check_guards_when_they_release() {
    let mut arena = Arena::builder().debug(true).build().unwrap();
    let a = arena.allocate(64, 8).unwrap();
    let b = arena.allocate(100, 16).unwrap();
    assert!(bytes(b, 100).iter().all(|&x| x == FRESH_BYTE));
    overrun(b, 100, 3);
    assert_eq!(arena.leaks().unwrap().count, 2);
    arena.reset();
    let v = arena.guard_violations();
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].addr, v[0].size, v[0].tier),
        (b.as_ptr() as usize, 100, Tier::Arena)
    );
    assert!(bytes(a, 64).iter().all(|&x| x == POISON_BYTE));
    assert_eq!(arena.leaks().unwrap().count, 0);
    // Scopes release (and check) what they allocated.
    arena.scope(|s| {
        let inner = s.allocate(32, 8).unwrap();
        overrun(inner, 32, 1);
    });
    assert_eq!(arena.guard_violations().len(), 2);
    // A rewind too.
    let cp = arena.checkpoint();
    let c = arena.allocate(10, 1).unwrap();
    overrun(c, 10, 1);
    arena.rewind(cp).unwrap();
    assert_eq!(arena.guard_violations().len(), 3);
}

#[test]
fn arena_vectors_grow_and_shrink_in_debug_mode() {
    let arena = Arena::builder().debug(true).build().unwrap();
    let mut v: allocator_api2::vec::Vec<u64, &Arena> = allocator_api2::vec::Vec::new_in(&arena);
    for i in 0..10_000u64 {
        v.push(i);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    drop(v);
    assert!(arena.guard_violations().is_empty());
}

#[test]
fn manager_arenas_follow_the_config() {
    let mm = debug_manager();
    let mut arena = mm.arena();
    let p = arena.allocate(100, 8).unwrap();
    overrun(p, 100, 1);
    arena.reset();
    assert_eq!(arena.guard_violations().len(), 1);
    drop(arena);
    assert_eq!(mm.leaks().unwrap().count, 0, "the arena's chunks went back");
}
