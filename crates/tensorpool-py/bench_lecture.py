#!/usr/bin/env python3
"""The lecture's benchmark, honestly: pooled blocks against `np.zeros`, four ways.

    .venv/bin/python crates/tensorpool-py/bench_lecture.py [--quick] [--json]

Each workload allocates blocks, writes them, keeps them in a list, then drops them:

- `lecture`: 10,000 blocks of 256 bytes, each filled (`np.zeros(64, float32)`
  appended to a list is the NumPy side, as in the lecture);
- `1 KiB` and `64 KiB`: 10,000 blocks of 1 KiB and 1,000 of 64 KiB, every byte
  written on both sides (`np.zeros` then a fill);
- `interleaved`: 10,000 blocks of 256 bytes, at most 100 live: each allocation past
  the 100th frees the oldest block first.

and is run five ways:

- `pure Python`: the lecture's own `FixedSizePool`, written as the lecture writes it (a
  `bytearray`, a list of free offsets taken with `pop(0)` and sorted on every free, a
  `threading.Lock`, `memoryview` slices);
- `FixedSizePool`: tensorpool's class (`allocate()`, a slice assignment to fill,
  `deallocate()`), a `Buffer` per block;
- `MemoryManager`: the lecture's `MemoryManager({block_size: blocks}, 0)` (one pool, no
  arena, as its benchmark makes it), `allocate(size)` and `deallocate()`;
- `mm.zeros`: NumPy arrays from tensorpool's manager (`mm.zeros(n, uint8)`, filled);
- `np.zeros`: NumPy's own allocator.

The rounds alternate the five (each round starting one way later), and the table gives each one's best time and the median
of its per-round ratios to `np.zeros` (below 1: faster than NumPy), one row per
workload as the README shows it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

import tensorpool


class LecturePool:
    """The lecture's pure-Python fixed-size pool, as the lecture writes it."""

    def __init__(self, block_size: int, pool_size: int):
        self.block_size = block_size
        self.pool_size = pool_size
        self.memory = bytearray(block_size * pool_size)
        self.free_list = list(range(0, block_size * pool_size, block_size))
        self.lock = threading.Lock()

    def allocate(self):
        with self.lock:
            if not self.free_list:
                return None
            offset = self.free_list.pop(0)
            return memoryview(self.memory)[offset : offset + self.block_size]

    def deallocate(self, block):
        with self.lock:
            # The lecture finds the block's offset from the memory's address.
            base = np.frombuffer(self.memory, dtype=np.uint8).ctypes.data
            offset = np.frombuffer(block, dtype=np.uint8).ctypes.data - base
            self.free_list.append(offset)
            self.free_list.sort()


WORKLOADS = {
    # name: (blocks, bytes per block, live at most (None: all kept))
    "lecture: 10,000 x 256 B": (10_000, 256, None),
    "10,000 x 1 KiB, every byte written": (10_000, 1024, None),
    "1,000 x 64 KiB, every byte written": (1_000, 64 << 10, None),
    "10,000 x 256 B, 100 live (frees interleaved)": (10_000, 256, 100),
}


def one_per_workload(make):
    """`make(block_size, blocks)` for the workload's blocks, made once (before the
    timed rounds, as the lecture makes its pool once, and as the manager of
    `mm.zeros` and NumPy's allocator are made once) and kept for its rounds."""
    made = {}

    def get(blocks, size, window):
        key = (size, blocks if window is None else window)
        if key not in made:
            made.clear()
            made[key] = make(*key)
        return made[key]

    return get


def run_pool(make_pool):
    """Blocks from a pool class with the lecture's interface (`allocate()`, a slice
    assignment to fill, `deallocate(block)`)."""
    pool_for = one_per_workload(make_pool)

    def run(blocks, size, window):
        pool = pool_for(blocks, size, window)
        data = b"\x07" * size
        live = []
        for _ in range(blocks):
            if window is not None and len(live) == window:
                pool.deallocate(live.pop(0))
            b = pool.allocate()
            b[:] = data
            live.append(b)
        for b in live:
            pool.deallocate(b)

    return run


def run_manager():
    """The lecture's `MemoryManager(pool_sizes, 0)`: `allocate(size)`, a slice
    assignment to fill, `deallocate(block)`. (Its own loop: the call differs from a
    pool's, and a branch in the timed loop would cost every way.)"""
    manager_for = one_per_workload(lambda size, n: tensorpool.MemoryManager({size: n}, 0))

    def run(blocks, size, window):
        mm = manager_for(blocks, size, window)
        data = b"\x07" * size
        live = []
        for _ in range(blocks):
            if window is not None and len(live) == window:
                mm.deallocate(live.pop(0))
            b = mm.allocate(size)
            b[:] = data
            live.append(b)
        for b in live:
            mm.deallocate(b)

    return run


def run_arrays(zeros, lecture):
    def run(blocks, size, window):
        live = []
        for _ in range(blocks):
            if window is not None and len(live) == window:
                live.pop(0)
            if lecture:
                # As the lecture: zeros(64, float32), 256 bytes of zeros.
                a = zeros(size // 4, np.float32)
            else:
                a = zeros(size, np.uint8)
                a.fill(7)
            live.append(a)
        live.clear()

    return run


def measure(fn, args, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--json", action="store_true", help="print JSON rows")
    args = ap.parse_args()
    rounds, repeat = (3, 3) if args.quick else (7, 5)
    mm = tensorpool.MemoryManager()
    rows = []
    for name, (blocks, size, window) in WORKLOADS.items():
        lecture = name.startswith("lecture")
        ways = {
            "pure Python": run_pool(LecturePool),
            "FixedSizePool": run_pool(tensorpool.FixedSizePool),
            "MemoryManager": run_manager(),
            "mm.zeros": run_arrays(mm.zeros, lecture),
            "np.zeros": run_arrays(np.zeros, lecture),
        }
        times = {w: [] for w in ways}
        order = list(ways)
        for r in range(rounds):
            # Each round starts one way later: no way always runs after the same
            # other (in an A/A test, a way run right after another read up to 2%
            # slower or faster than the same way run later in the round).
            for w in order[r % len(order):] + order[: r % len(order)]:
                times[w].append(measure(ways[w], (blocks, size, window), repeat))
        base = times["np.zeros"]
        for w in ways:
            ratios = sorted(t / b for t, b in zip(times[w], base))
            rows.append(
                {
                    "workload": name,
                    "way": w,
                    "best_seconds": min(times[w]),
                    "ratio_to_np_zeros": ratios[len(ratios) // 2],
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    ways = list(dict.fromkeys(r["way"] for r in rows))
    print("| workload | " + " | ".join(ways) + " | target |")
    print("|---|" + "---:|" * len(ways) + "---|")
    for name in WORKLOADS:
        cells = []
        for way in ways:
            r = next(r for r in rows if r["workload"] == name and r["way"] == way)
            cell = duration(r["best_seconds"])
            if way != "np.zeros":
                x = r["ratio_to_np_zeros"]
                cell += f", {x:.0f}x" if x >= 10 else f", {x:.2f}x"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " | < 1.0 |")


def duration(seconds):
    """Milliseconds with three significant digits."""
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


if __name__ == "__main__":
    main()
