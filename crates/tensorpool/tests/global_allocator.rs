//! tensorpool as the allocator of this whole test binary (`#[global_allocator]`):
//! every allocation of the tests and of the test harness, threads included, goes
//! through one process-wide manager, checked against its statistics.
//!
//! The tests run at once in one process and share the manager: they assert what
//! other tests cannot undo (counts that only grow, their own blocks' contents).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::mpsc;
use tensorpool::{Config, GlobalManager, MemoryManager};
use tensorpool_testkit::{pattern, Coverage};

#[global_allocator]
static GLOBAL: GlobalManager = GlobalManager::with_config(|| Config {
    // Released pages and the background thread (asked for here) are exercised too.
    release_delay_ms: Some(50),
    background_release: Some(true),
    ..Config::default()
});

fn allocs() -> u64 {
    GLOBAL.stats().expect("the manager runs").num_allocs
}

#[test]
fn the_programs_allocations_go_through_the_manager() {
    let before = allocs();
    let boxes: Vec<Box<[u64; 12]>> = (0..10_000u64).map(|i| Box::new([i; 12])).collect();
    assert!(allocs() - before >= 10_000, "boxes come from the manager");
    let stats = GLOBAL.stats().unwrap();
    assert!(stats.allocated_bytes >= 10_000 * 96, "{stats:?}");
    for (i, b) in boxes.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u64));
        assert_eq!(&**b as *const _ as usize % 64, 0, "the manager's alignment");
    }
    drop(boxes);
    let fallbacks = GLOBAL.system_fallbacks();
    assert_eq!((fallbacks.refused_frees, fallbacks.out_of_memory), (0, 0));
    let summary = GLOBAL.summary().unwrap();
    assert!(summary.contains("small"), "{summary}");
    assert!(GLOBAL.config().unwrap().background_release == Some(true));
}

#[test]
fn strings_and_vectors_grow_and_shrink_across_tiers_with_their_contents() {
    // Vec growth reallocates through every tier: slabs, thread-owned large blocks,
    // best fit; contents kept at each step.
    let mut v: Vec<u8> = Vec::new();
    let seed = 7;
    for len in [
        1usize,
        10,
        100,
        1000,
        10_000,
        100_000,
        1 << 20,
        3 << 20,
        40 << 20,
    ] {
        let old = v.len();
        v.resize(len, 0);
        pattern::fill(&mut v[old..], seed + old as u64, Coverage::Every);
        for (start, end) in [(0, 1), (1, 10), (10, 100)] {
            if end <= old {
                pattern::assert_intact(&v[start..end], seed + start as u64, Coverage::Every);
            }
        }
    }
    let prefix = v[..1000].to_vec();
    v.truncate(1000);
    v.shrink_to_fit();
    assert_eq!(v, prefix);
    let mut s = String::new();
    for i in 0..50_000 {
        s.push_str(&i.to_string());
    }
    assert!(s.starts_with("0123456789101112"));
}

#[test]
fn threads_free_each_others_blocks_and_exit() {
    // A ring of threads: each makes blocks, the next checks and frees them.
    const THREADS: usize = 4;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Vec<u64>>()).unzip();
    let mut receivers: Vec<_> = receivers.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let to_next = senders[(t + 1) % THREADS].clone();
            let from_prev = receivers[t].take().unwrap();
            std::thread::spawn(move || {
                for i in 0..2000usize {
                    let len = 1 + (i * 37 + t * 11) % 3000;
                    to_next.send(vec![(t * 1_000_000 + i) as u64; len]).unwrap();
                }
                drop(to_next);
                let mut got = 0;
                while let Ok(v) = from_prev.recv() {
                    assert!(v.iter().all(|&x| x == v[0]));
                    got += 1;
                    if got == 2000 {
                        break;
                    }
                }
                got
            })
        })
        .collect();
    drop(senders);
    for h in handles {
        assert_eq!(h.join().unwrap(), 2000);
    }
    // Many short threads: each exiting thread's heap goes to the next new one.
    for round in 0..50 {
        std::thread::spawn(move || {
            let v: Vec<Box<u32>> = (0..100).map(|i| Box::new(i + round)).collect();
            assert_eq!(*v[99], 99 + round);
        })
        .join()
        .unwrap();
    }
    assert_eq!(GLOBAL.system_fallbacks().refused_frees, 0);
}

#[test]
fn layouts_beyond_the_managers_alignment_come_from_the_system_allocator() {
    #[repr(align(8192))]
    struct Page([u8; 8192]);
    let before = GLOBAL.system_fallbacks().allocations;
    let b = Box::new(Page([3; 8192]));
    assert_eq!(&*b as *const Page as usize % 8192, 0);
    assert!(b.0.iter().all(|&x| x == 3));
    assert!(GLOBAL.system_fallbacks().allocations > before);
    drop(b);
    for align in [1usize << 13, 1 << 16, 1 << 20] {
        let layout = Layout::from_size_align(100, align).unwrap();
        // SAFETY: a non-zero-sized layout, freed below with the same layout.
        unsafe {
            let p = std::alloc::alloc(layout);
            assert!(!p.is_null() && p as usize % align == 0);
            std::alloc::dealloc(p, layout);
        }
    }
}

#[test]
fn a_block_the_manager_did_not_hand_out_goes_back_where_it_came_from() {
    let layout = Layout::from_size_align(256, 8).unwrap();
    let refused = GLOBAL.system_fallbacks().refused_frees;
    for _ in 0..100 {
        // SAFETY: a block of the system allocator, freed once through tensorpool, which
        // must hand it back to the system allocator.
        unsafe {
            let p = System.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(1, 256);
            GLOBAL.dealloc(p, layout);
        }
    }
    assert_eq!(GLOBAL.system_fallbacks().refused_frees, refused);
    // And a realloc of one stays with the system allocator.
    // SAFETY: as above; the block is freed by the system allocator at the end.
    unsafe {
        let p = System.alloc(layout);
        p.write_bytes(9, 256);
        let q = GLOBAL.realloc(p, layout, 4096);
        assert!(std::slice::from_raw_parts(q, 256).iter().all(|&b| b == 9));
        System.dealloc(q, Layout::from_size_align(4096, 8).unwrap());
    }
}

#[test]
fn a_manager_of_the_programs_own_lives_beside_the_global_one() {
    use allocator_api2::vec::Vec as ApiVec;
    let mm = MemoryManager::new(Config::default()).unwrap();
    let mut v: ApiVec<u32, &MemoryManager> = ApiVec::new_in(&mm);
    v.extend(0..100_000);
    let p = mm.allocate_raw(5 << 20, 64).unwrap();
    assert_eq!(v.iter().map(|&x| x as u64).sum::<u64>(), 4_999_950_000);
    mm.free_raw(p.as_ptr()).unwrap();
    drop(v);
    assert_eq!(mm.stats().allocated_bytes, 0);
    std::thread::spawn(move || {
        let b = allocator_api2::boxed::Box::new_in(5u64, &mm);
        assert_eq!(*b, 5);
    })
    .join()
    .unwrap();
}

#[test]
fn memory_given_back_while_the_program_waits() {
    // 64 MiB freed, then the background thread's passes give it back (other tests
    // may reuse part of it meanwhile: a quarter is asked for).
    let big = vec![1u8; 64 << 20];
    assert_eq!(big[12345], 1);
    let released = GLOBAL.stats().unwrap().released_bytes;
    drop(big);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = GLOBAL.stats().unwrap();
        if now.released_bytes >= released + (16 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not given back: {now:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_second_global_manager_does_not_take_the_process_allocators_place() {
    // Another GlobalManager (only queried) must not make the real one's thread exits
    // and background passes run unmarked, which deadlocked on the best-fit lock.
    static OTHER: GlobalManager = GlobalManager::new();
    assert!(OTHER.stats().is_some());
    for round in 0..20 {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let v: Vec<Vec<u8>> = (0..50)
                        .map(|i| vec![t as u8; 1 + (i * 6151 + round * 977) % 300_000])
                        .collect();
                    v.iter().map(|x| x.len()).sum::<usize>()
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap() > 0);
        }
    }
}

#[test]
fn growing_a_block_within_its_class_keeps_the_requested_bytes_exact() {
    // A realloc from 65 to 120 bytes stays in one 128-byte class; the manager's
    // count of requested bytes must follow the block's size. A GlobalManager of
    // this test's own (called directly), so that other tests' blocks do not count.
    static MINE: GlobalManager = GlobalManager::new();
    let layout = Layout::from_size_align(65, 8).unwrap();
    let bigger = Layout::from_size_align(120, 8).unwrap();
    let mut blocks = Vec::with_capacity(1000);
    for _ in 0..1000 {
        // SAFETY: a fresh block of `layout`, grown once; freed below with `bigger`.
        unsafe {
            let p = MINE.alloc(layout);
            p.write_bytes(5, 65);
            let q = MINE.realloc(p, layout, 120);
            assert!(std::slice::from_raw_parts(q, 65).iter().all(|&b| b == 5));
            blocks.push(q);
        }
    }
    let held = MINE.stats().unwrap();
    assert_eq!(held.requested_bytes, 1000 * 120);
    assert_eq!(held.allocated_bytes, 1000 * 128);
    for q in blocks {
        // SAFETY: each is a live block of `bigger` from MINE.
        unsafe { MINE.dealloc(q, bigger) };
    }
    let after = MINE.stats().unwrap();
    assert_eq!((after.requested_bytes, after.allocated_bytes), (0, 0));
}

#[test]
fn large_blocks_grow_and_shrink_in_place_with_exact_counts() {
    // A block of the best-fit range (1 MiB to 1 GiB) grows in place at the top of
    // its segment and shrinks in place down to half; the counts follow its layout.
    static MINE: GlobalManager = GlobalManager::new();
    let mut layout = Layout::from_size_align(2 << 20, 64).unwrap();
    // SAFETY: a fresh block of `layout`, resized below, freed with its last layout.
    unsafe {
        let first = MINE.alloc(layout);
        first.write_bytes(9, 2 << 20);
        let mut p = first;
        for mib in [3usize, 8, 20, 12] {
            p = MINE.realloc(p, layout, mib << 20);
            layout = Layout::from_size_align(mib << 20, 64).unwrap();
            p.add((mib << 20) - 1).write(1);
            let s = MINE.stats().unwrap();
            assert_eq!(
                (s.requested_bytes, s.allocated_bytes),
                (mib << 20, mib << 20)
            );
        }
        assert_eq!(p, first, "grown and shrunk in place");
        assert!(std::slice::from_raw_parts(p, 2 << 20)
            .iter()
            .all(|&b| b == 9));
        // Below half of its block, it moves.
        let q = MINE.realloc(p, layout, 4 << 20);
        assert_ne!(q, p);
        MINE.dealloc(q, Layout::from_size_align(4 << 20, 64).unwrap());
    }
    let after = MINE.stats().unwrap();
    assert_eq!((after.requested_bytes, after.allocated_bytes), (0, 0));
}

#[test]
fn a_child_forked_while_another_thread_allocates_can_allocate_and_trim() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 16 + i * 700]).collect();
                drop(v);
            }
        })
    };
    for round in 0..20u8 {
        let kept = vec![round; 1000];
        // SAFETY: the child only allocates, frees, trims and exits with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut ok = kept.iter().all(|&b| b == round);
            drop(kept);
            let blocks: Vec<Vec<u8>> = (0..40).map(|i| vec![7; 1 << (i % 24)]).collect();
            ok &= blocks.iter().all(|b| b.iter().all(|&x| x == 7));
            drop(blocks);
            GLOBAL.trim();
            ok &= GLOBAL.stats().is_some();
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child of round {round} failed: status {status}"
        );
    }
    stop.store(true, Relaxed);
    busy.join().unwrap();
}

#[test]
fn a_size_no_allocator_serves_fails_quietly() {
    // Found by a user hunt: `try_reserve` of a size no allocator could serve, an
    // error the program handles, printed the out-of-memory report and counted it.
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(usize::MAX / 2).is_err());
    assert_eq!(GLOBAL.system_fallbacks().out_of_memory, 0);
    // Nor does one the system refuses that is larger than the machine's memory
    // (Python's `bytearray(2**44)` printed a paragraph for each `MemoryError`): 64
    // TiB, which the kernel refuses under its default overcommit heuristic (with
    // `vm.overcommit_memory = 1` it may lend the address space: nothing to check).
    if v.try_reserve(64 << 40).is_err() {
        assert_eq!(GLOBAL.system_fallbacks().out_of_memory, 0);
    }
}
