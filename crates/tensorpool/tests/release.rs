//! Memory given back: the release policy driven by an injected clock, the soft and
//! hard limits, idle threads, and the background thread.

use std::sync::Arc;
use std::time::Duration;
use tensorpool::clock::ManualClock;
use tensorpool::{Config, MemoryManager};
use tensorpool_testkit::pattern::{self, Coverage};

/// Both ends and a byte in every 509 between: every page of a block is seen.
const COVER: Coverage = Coverage::Sampled {
    ends: 4096,
    stride: 509,
};

const MIB: usize = 1 << 20;

/// The default config with the delay in effect bounded by `max_ms`.
fn bounded(max_ms: u64) -> Config {
    Config::builder()
        .max_release_delay_ms(max_ms)
        .build()
        .unwrap()
}

fn manager(config: Config) -> (MemoryManager, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let mm = MemoryManager::with_clock(config, clock.clone()).unwrap();
    (mm, clock)
}

/// Advances the clock by `ms` in steps of `step` ms, running due passes.
fn idle(mm: &MemoryManager, clock: &ManualClock, ms: u64, step: u64) -> usize {
    let mut released = 0;
    for _ in 0..ms / step {
        clock.advance(Duration::from_millis(step));
        released += mm.release_idle();
    }
    released
}

struct Block {
    ptr: *mut u8,
    len: usize,
    seed: u64,
}

fn allocate(mm: &MemoryManager, len: usize, seed: u64) -> Block {
    let ptr = mm.allocate_raw(len, 64).unwrap().as_ptr();
    // SAFETY: a fresh block of `len` bytes, ours alone.
    pattern::fill(
        unsafe { std::slice::from_raw_parts_mut(ptr, len) },
        seed,
        COVER,
    );
    Block { ptr, len, seed }
}

fn intact(b: &Block) {
    // SAFETY: a live block of `len` bytes.
    pattern::assert_intact(
        unsafe { std::slice::from_raw_parts(b.ptr, b.len) },
        b.seed,
        COVER,
    );
}

#[test]
fn memory_reused_within_the_delay_stays_and_idle_memory_goes() {
    let (mm, clock) = manager(Config::default());
    assert_eq!(mm.release_delay(), Some(Duration::from_millis(1000)));
    // Live blocks of every tier around free ones, so that free ranges sit between
    // live ones (released in place) and at the top (decommitted).
    let mut live = Vec::new();
    let mut free = Vec::new();
    for (i, len) in [100, 3000, 40_000, 300_000, 3 * MIB, 20 * MIB]
        .into_iter()
        .enumerate()
    {
        for j in 0..4 {
            let b = allocate(&mm, len, (i * 10 + j) as u64);
            if j % 2 == 0 {
                live.push(b);
            } else {
                free.push(b);
            }
        }
    }
    let sizes: Vec<usize> = free.iter().map(|b| b.len).collect();
    for b in free.drain(..) {
        mm.free_raw(b.ptr).unwrap();
    }
    let before = mm.stats();
    // A loop that takes the same memory again every 400 ms keeps it warm.
    for step in 0..10u64 {
        clock.advance(Duration::from_millis(400));
        let again: Vec<Block> = sizes
            .iter()
            .map(|&len| allocate(&mm, len, 100 + step))
            .collect();
        assert_eq!(mm.release_idle(), 0, "released while in use, step {step}");
        for b in again {
            mm.free_raw(b.ptr).unwrap();
        }
    }
    assert_eq!(mm.stats().num_releases, before.num_releases);
    assert_eq!(mm.resident_bytes(), before.resident_bytes);
    // Unused for longer than the delay: given back, and nothing live touched.
    let released = idle(&mm, &clock, 2000, 100);
    assert!(released >= 40 * MIB, "released {released}");
    let after = mm.stats();
    assert!(after.resident_bytes + 40 * MIB <= before.resident_bytes);
    assert!(after.num_releases > before.num_releases);
    assert!(after.released_bytes >= released as u64);
    assert!(after.last_release_ms_ago.is_some());
    assert_eq!(after.allocated_bytes, before.allocated_bytes);
    for b in &live {
        intact(b);
    }
    // Released memory serves new blocks (zeroed when asked), and counts again.
    let again = mm.allocate_raw_zeroed(20 * MIB, 64).unwrap();
    // SAFETY: a live block of 20 MiB.
    let bytes = unsafe { std::slice::from_raw_parts(again.as_ptr(), 20 * MIB) };
    assert!(bytes.iter().step_by(4093).all(|&b| b == 0));
    assert!(mm.stats().resident_bytes >= after.resident_bytes + 20 * MIB);
    mm.free_raw(again.as_ptr()).unwrap();
    for b in live {
        intact(&b);
        mm.free_raw(b.ptr).unwrap();
    }
    assert_eq!(mm.stats().allocated_bytes, 0);
}

#[test]
fn without_a_delay_memory_goes_back_only_when_asked() {
    let (mm, clock) = manager(Config::builder().release_delay_ms(None).build().unwrap());
    let b = allocate(&mm, 30 * MIB, 1);
    mm.free_raw(b.ptr).unwrap();
    assert_eq!(idle(&mm, &clock, 10_000, 500), 0);
    let resident = mm.resident_bytes();
    assert!(resident >= 30 * MIB);
    // trim() gives back every free byte now.
    assert!(mm.trim() >= 30 * MIB);
    assert!(mm.resident_bytes() + 30 * MIB <= resident);
    // The delay can be set while the program runs.
    mm.set_release_delay(Some(Duration::from_millis(100)))
        .unwrap();
    // Beyond a day it is refused, as in a config, and nothing changes.
    assert!(mm
        .set_release_delay(Some(Duration::from_secs(2 * 86_400)))
        .is_err());
    assert_eq!(mm.release_delay(), Some(Duration::from_millis(100)));
    let b = allocate(&mm, 30 * MIB, 2);
    mm.free_raw(b.ptr).unwrap();
    assert!(idle(&mm, &clock, 500, 50) >= 30 * MIB);
}

#[test]
fn above_the_soft_limit_free_memory_goes_at_once() {
    let (mm, _clock) = manager(Config::builder().soft_limit(48 * MIB).build().unwrap());
    let a = allocate(&mm, 40 * MIB, 1);
    mm.free_raw(a.ptr).unwrap();
    // Resident is 40 MiB, under the soft limit: kept.
    assert!(mm.resident_bytes() >= 40 * MIB);
    // A block at another place takes resident bytes above it: the free 40 MiB go.
    let keep = allocate(&mm, 200_000, 2);
    let b = allocate(&mm, 30 * MIB, 3);
    assert!(
        mm.resident_bytes() <= 48 * MIB,
        "resident {}",
        mm.resident_bytes()
    );
    intact(&keep);
    intact(&b);
    mm.free_raw(b.ptr).unwrap();
    mm.free_raw(keep.ptr).unwrap();
    // A free above the soft limit gives back at once too (it waited for the next
    // allocation's slow path, or for the delay): 64 MiB resident, freed, goes.
    let c = allocate(&mm, 64 * MIB, 4);
    assert!(mm.resident_bytes() >= 64 * MIB);
    mm.free_raw(c.ptr).unwrap();
    assert!(
        mm.resident_bytes() <= 48 * MIB,
        "resident {} after the free",
        mm.resident_bytes()
    );
    // Limits are checked and changeable while running.
    assert!(mm.set_soft_limit(Some(0)).is_err());
    assert!(mm.set_memory_limit(Some(16 * MIB)).is_err()); // below the soft limit
    mm.set_soft_limit(None).unwrap();
    mm.set_memory_limit(Some(16 * MIB)).unwrap();
    assert_eq!(mm.stats().memory_limit, Some(16 * MIB));
}

#[test]
fn released_pages_count_against_no_limit_until_reused() {
    let (mm, clock) = manager(Config::builder().memory_limit(64 * MIB).build().unwrap());
    // Free blocks between live ones: released in place, not decommitted.
    let mut blocks: Vec<Block> = (0..6).map(|i| allocate(&mm, 8 * MIB, i)).collect();
    let freed: Vec<Block> = blocks.drain(1..5).collect();
    for b in freed {
        mm.free_raw(b.ptr).unwrap();
    }
    idle(&mm, &clock, 2000, 100);
    let s = mm.stats();
    assert!(s.reserved_bytes >= 48 * MIB, "the address range is kept");
    assert!(
        s.resident_bytes <= 17 * MIB,
        "resident {}",
        s.resident_bytes
    );
    // 40 MiB more fits under the 64 MiB limit now: resident counts, not reserved.
    let big = allocate(&mm, 40 * MIB, 9);
    for b in blocks.iter().chain([&big]) {
        intact(b);
    }
    // Beyond the limit: refused, after giving back what can be.
    assert!(mm.allocate_raw(30 * MIB, 64).is_err());
    mm.free_raw(big.ptr).unwrap();
    for b in blocks {
        mm.free_raw(b.ptr).unwrap();
    }
}

#[test]
fn an_idle_threads_empty_slabs_go_back() {
    let (mm, clock) = manager(Config::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let worker = {
        let mm = mm.clone();
        std::thread::spawn(move || {
            let blocks: Vec<_> = (0..20_000)
                .map(|_| mm.allocate_raw(256, 64).unwrap())
                .collect();
            for b in blocks {
                mm.free_raw(b.as_ptr()).unwrap();
            }
            ready_tx.send(()).unwrap();
            // Idle, holding its empty slabs, until the test ends.
            done_rx.recv().unwrap();
        })
    };
    ready_rx.recv().unwrap();
    let cached = mm.stats().thread_cached_bytes;
    let resident = mm.resident_bytes();
    assert!(resident >= 4 * MIB);
    idle(&mm, &clock, 2000, 100);
    let s = mm.stats();
    assert!(
        s.thread_cached_bytes < cached.max(1),
        "{} of {cached}",
        s.thread_cached_bytes
    );
    assert!(
        s.resident_bytes + 4 * MIB <= resident,
        "resident {}",
        s.resident_bytes
    );
    done_tx.send(()).unwrap();
    worker.join().unwrap();
}

#[test]
fn cached_huge_segments_go_back_when_idle() {
    let (mm, clock) = manager(Config::builder().huge_threshold(64 * MIB).build().unwrap());
    let b = allocate(&mm, 100 * MIB, 1);
    mm.free_raw(b.ptr).unwrap();
    let resident = mm.resident_bytes();
    assert!(resident >= 100 * MIB);
    assert!(idle(&mm, &clock, 2000, 100) >= 100 * MIB);
    assert!(mm.resident_bytes() + 100 * MIB <= resident);
}

#[test]
fn the_out_of_memory_report_says_what_was_released() {
    let (mm, clock) = manager(Config::builder().memory_limit(32 * MIB).build().unwrap());
    let b = allocate(&mm, 20 * MIB, 1);
    mm.free_raw(b.ptr).unwrap();
    idle(&mm, &clock, 2000, 100);
    let err = mm.allocate_raw(40 * MIB, 64).unwrap_err().to_string();
    assert!(err.contains("given back to the system so far"), "{err}");
    assert!(err.contains("s ago"), "{err}");
}

/// Advances the clock by `ms` in steps of `step` ms while the program works: a small
/// block allocated and freed at each step, and due passes run.
fn busy(mm: &MemoryManager, clock: &ManualClock, ms: u64, step: u64) {
    for _ in 0..ms / step {
        let b = allocate(mm, 4000, 0);
        mm.free_raw(b.ptr).unwrap();
        clock.advance(Duration::from_millis(step));
        mm.release_idle();
    }
}

/// Steps of 2 s that take 32 MiB at their start and work on small blocks after: the
/// resident bytes at the end of each step.
fn long_steps(mm: &MemoryManager, clock: &ManualClock, steps: u64) -> Vec<usize> {
    steps_of(mm, clock, steps, 2000)
}

/// [`long_steps`] of `ms` milliseconds each.
fn steps_of(mm: &MemoryManager, clock: &ManualClock, steps: u64, ms: u64) -> Vec<usize> {
    let mut resident_late = Vec::new();
    for step in 0..steps {
        let blocks: Vec<Block> = (0..4)
            .map(|i| allocate(mm, 8 * MIB, step * 10 + i))
            .collect();
        for b in blocks {
            intact(&b);
            mm.free_raw(b.ptr).unwrap();
        }
        busy(mm, clock, ms, 50);
        resident_late.push(mm.resident_bytes());
    }
    resident_late
}

#[test]
fn steps_longer_than_the_delay_stretch_it_while_the_program_works() {
    // Steps of 2 s under a 1 s delay: the first step's memory goes back during the
    // second and is taken again by the third, a regret; the delay in effect doubles
    // and the memory stays. Once the program idles, the delay set holds again.
    let (mm, clock) = manager(Config::default());
    let resident_late = long_steps(&mm, &clock, 8);
    assert!(
        resident_late[0] < 8 * MIB,
        "released at first: {resident_late:?}"
    );
    assert!(
        resident_late[3..].iter().all(|&r| r >= 32 * MIB),
        "kept once stretched: {resident_late:?}"
    );
    let s = mm.stats();
    assert_eq!(s.release_delay_ms, Some(1000));
    let stretched = s.effective_release_delay_ms.unwrap();
    assert!(stretched >= 2000, "{s:?}");
    // Idle: the delay set holds, and the memory goes back after it.
    idle(&mm, &clock, 2000, 50);
    assert!(mm.resident_bytes() < 8 * MIB, "{}", mm.resident_bytes());
    // Idle for long: the stretch unwinds.
    idle(&mm, &clock, 120_000, 250);
    assert!(mm.stats().effective_release_delay_ms.unwrap() < stretched);
}

#[test]
fn max_release_delay_bounds_the_stretch() {
    // Steps of 5 s under a 1 s delay: unbounded, the delay in effect stretches until
    // a step's memory stays (4 s: memory goes back after 6 s unused)...
    let (mm, clock) = manager(Config::default());
    let resident_late = steps_of(&mm, &clock, 8, 5000);
    assert!(mm.stats().effective_release_delay_ms.unwrap() >= 4000);
    assert!(
        resident_late[6..].iter().all(|&r| r >= 32 * MIB),
        "kept once stretched: {resident_late:?}"
    );
    // ...bounded by a delay of 3 s, it stops at 2 s (a power-of-two multiple of the
    // delay set), and every step's memory goes back before the step ends.
    let (mm, clock) = manager(bounded(3000));
    let resident_late = steps_of(&mm, &clock, 8, 5000);
    assert_eq!(mm.stats().effective_release_delay_ms, Some(2000));
    assert!(
        resident_late.iter().all(|&r| r < 8 * MIB),
        "released every step: {resident_late:?}"
    );
    // Bounded by the delay set: it never stretches, and every step's memory goes
    // back before the step ends, regrets or not.
    let (mm, clock) = manager(bounded(1000));
    let resident_late = long_steps(&mm, &clock, 8);
    assert_eq!(mm.stats().effective_release_delay_ms, Some(1000));
    assert!(
        resident_late.iter().all(|&r| r < 8 * MIB),
        "released every step: {resident_late:?}"
    );
    // A delay set later above the bound is not stretched either.
    mm.set_release_delay(Some(Duration::from_millis(1500)))
        .unwrap();
    long_steps(&mm, &clock, 4);
    assert_eq!(mm.stats().effective_release_delay_ms, Some(1500));
}

#[test]
fn a_program_that_frees_for_good_while_busy_gets_its_memory_back_after_the_bounded_delay() {
    // A busy program whose delay stretched (steps of 2 s under a 1 s delay) frees
    // 64 MiB for good and keeps allocating small blocks, as a program tearing down
    // does: under the default bound the memory stays for the stretched delay; bounded
    // by the delay set, it goes back within one and a half delays.
    let teardown = |config: Config| {
        let (mm, clock) = manager(config);
        long_steps(&mm, &clock, 6);
        let blocks: Vec<Block> = (0..8).map(|i| allocate(&mm, 8 * MIB, 900 + i)).collect();
        for b in blocks {
            mm.free_raw(b.ptr).unwrap();
        }
        busy(&mm, &clock, 1500, 50);
        mm.resident_bytes()
    };
    let kept = teardown(Config::default());
    assert!(kept >= 64 * MIB, "{} MiB", kept / MIB);
    let bounded = teardown(bounded(1000));
    assert!(bounded < 8 * MIB, "{} MiB", bounded / MIB);
}

#[test]
fn a_spike_goes_back_while_steady_steps_keep_their_memory() {
    // Steps of 64 MiB in 8 MiB blocks, one step of 256 MiB, then steady steps 50 ms
    // apart: the spike's extra memory goes back although the steady steps keep
    // reusing (and merging with) the free range it left.
    let (mm, clock) = manager(Config::default());
    let step = |n: u64, seed: u64| {
        let blocks: Vec<Block> = (0..n).map(|i| allocate(&mm, 8 * MIB, seed + i)).collect();
        for b in blocks {
            intact(&b);
            mm.free_raw(b.ptr).unwrap();
        }
    };
    for s in 0..20 {
        step(8, s * 100);
        clock.advance(Duration::from_millis(50));
        mm.release_idle();
    }
    step(32, 5000);
    let after_spike = mm.resident_bytes();
    assert!(after_spike >= 256 * MIB, "{after_spike}");
    for s in 0..200 {
        step(8, 10_000 + s * 100);
        clock.advance(Duration::from_millis(50));
        mm.release_idle();
    }
    let resident = mm.resident_bytes();
    assert!(
        resident <= 64 * MIB + 64 * MIB / 5 + 32 * MIB,
        "resident {} MiB after the spike went",
        resident / MIB
    );
    assert!(resident >= 64 * MIB, "the steady step's memory stays warm");
}

#[test]
fn an_idle_program_gets_its_memory_back_after_the_delay_set_even_once_stretched() {
    // The scenario: 512 MiB freed and given back, then rounds of 160 MiB that
    // take memory again (a regret: the delay in effect stretches), then idle: the
    // delay set holds for an idle program, and the memory is back within it plus a
    // second.
    let (mm, clock) = manager(Config::default());
    let big = allocate(&mm, 512 * MIB, 1);
    mm.free_raw(big.ptr).unwrap();
    idle(&mm, &clock, 2000, 50);
    assert!(mm.resident_bytes() < 16 * MIB);
    for round in 0..10 {
        let arrays: Vec<Block> = (0..20)
            .map(|i| allocate(&mm, 8 * MIB, round * 100 + i))
            .collect();
        for b in arrays {
            mm.free_raw(b.ptr).unwrap();
        }
        clock.advance(Duration::from_millis(30));
        mm.release_idle();
    }
    assert!(mm.resident_bytes() >= 160 * MIB);
    idle(&mm, &clock, 2000, 50);
    assert!(
        mm.resident_bytes() < 16 * MIB,
        "{} MiB resident, {:?}",
        mm.resident_bytes() / MIB,
        mm.stats().effective_release_delay_ms
    );
    assert!(mm.stats().effective_release_delay_ms.unwrap() >= 2000);
}
