#!/usr/bin/env python3
"""Benchmarks of the Python package against NumPy's own allocator, in one run.

    .venv/bin/python crates/tensorpool-py/bench.py [--quick] [--json]

Measures, alternating the two sides so that both see the same machine:
  - `mm.empty(n)` vs `np.empty(n)` for small arrays (the pooled small-array path);
  - the lecture's benchmark: 10,000 `zeros(64, float32)` kept in a list, then
    dropped, with `mm.zeros` and with `np.zeros`;
  - allocate + fill of 1, 4 and 64 MiB arrays, repeated: `mm.empty` vs `np.empty`
    (NumPy's allocator gives large blocks back to the OS, so each one page-faults);
  - a small NumPy operation (`x + 1`, 100 doubles) with and without `install()`;
  - a repeating step of 48 arrays of 2 KiB to 128 KiB, three alive at a time, with
    `np.empty` and from a `PlannedArena` that recorded and planned it
    (`mm.planned_arena()`);
  - the NumPy MLP training loop of `tensorpool.workloads` with and without `install()`.
Prints a Markdown table with the best time of each side and the median of the
per-round ratios tensorpool / NumPy (below 1: tensorpool is faster), with the targets
of the small-block engine's issue (see the "Python" benchmarks in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import timeit

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import tensorpool  # noqa: E402
from tensorpool.workloads import mlp_training  # noqa: E402


def per_call(fn, number, repeat):
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def paired(a, b, number, repeat, rounds):
    """Times of a and b measured in alternating rounds: the best of each, and the
    median of the per-round ratios b / a (robust to the machine's load changing
    between rounds)."""
    return paired_times(lambda: per_call(a, number, repeat), lambda: per_call(b, number, repeat), rounds)


def paired_times(time_a, time_b, rounds):
    """`paired` for two functions that each return a time: the side that runs first
    alternates from round to round (a run after the other side's ran slower or
    faster by up to 2% here in an A/A test, whichever side it was)."""
    ta, tb = [], []
    for r in range(rounds):
        if r % 2 == 0:
            ta.append(time_a())
            tb.append(time_b())
        else:
            tb.append(time_b())
            ta.append(time_a())
    ratios = sorted(y / x for x, y in zip(ta, tb))
    return min(ta), min(tb), ratios[len(ratios) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", action="store_true", help="print JSON rows")
    args = ap.parse_args()
    rounds = 2 if args.quick else 5
    mm = tensorpool.MemoryManager()
    rows = []

    def row(what, measured, target=None):
        numpy_s, tp_s, ratio = measured
        rows.append({"benchmark": what, "numpy_s": numpy_s, "tensorpool_s": tp_s,
                     "ratio": ratio, "target": target})

    f32 = np.float32
    row("empty(64) float32",
        paired(lambda: np.empty(64, f32), lambda: mm.empty(64, f32), 100_000, 5, rounds), "<= 1.0")
    for n in (1, 16, 128):
        row(f"empty({n}) float64",
            paired(lambda: np.empty(n), lambda: mm.empty(n), 100_000, 5, rounds), "<= 1.0")

    def lecture_np():
        kept = [np.zeros(64, dtype=f32) for _ in range(10_000)]
        del kept

    def lecture_tp():
        kept = [mm.zeros(64, dtype=f32) for _ in range(10_000)]
        del kept

    row("lecture: 10,000 zeros(64, float32) kept",
        paired(lecture_np, lecture_tp, 10, 3, rounds * 2), "< 1.0")

    for mib in (1, 4, 64):
        size = mib << 20

        def np_fill():
            a = np.empty(size, np.uint8)
            a.fill(1)

        def tp_fill():
            a = mm.empty(size, np.uint8)
            a.fill(1)

        number = max(1, 256 // mib)
        row(f"empty + fill {mib} MiB", paired(np_fill, tp_fill, number, 3, rounds),
            "<= 0.33" if mib == 64 else None)

    x = np.ones(100)

    def small_op():
        return x + 1

    def small_op_installed():
        with tensorpool.use(mm):
            return per_call(small_op, 100_000, 5)

    row("x + 1 (100 doubles), install()",
        paired_times(lambda: per_call(small_op, 100_000, 5), small_op_installed, rounds),
        "<= 1.05")

    def layer_step(empty):
        # One step of a small network: 48 arrays of 2 KiB to 128 KiB, each touched,
        # three alive at a time.
        acts = []
        for width in (256, 2048, 16384, 512) * 12:
            h = empty(width)
            h[0] = 1.0
            acts.append(h)
            if len(acts) > 3:
                acts.pop(0)
        del acts

    arena = mm.planned_arena()
    for _ in range(3):
        arena.step()
        layer_step(arena.empty)
    arena.plan(time_limit=1.0)

    def planned_step():
        arena.step()
        layer_step(arena.empty)

    row("PlannedArena: a step of 48 arrays (2 KiB-128 KiB, 3 alive)",
        paired(lambda: layer_step(np.empty), planned_step, 200, 3, rounds), None)
    served = arena.stats()
    assert served["fallback"] == 0, served

    steps = 60 if args.quick else 200

    def mlp():
        mlp_training(steps)

    def mlp_installed():
        with tensorpool.use(mm):
            mlp_training(steps)

    # A manager of its own, as a program that installs tensorpool would have.
    mm = tensorpool.MemoryManager()
    row(f"MLP training, {steps} steps, install()",
        paired(mlp, mlp_installed, 1, 3, rounds * 2), "< 1.0")

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| benchmark | NumPy (best) | tensorpool (best) | ratio (median) | target |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['benchmark']} | {fmt(r['numpy_s'])} | {fmt(r['tensorpool_s'])} "
              f"| {r['ratio']:.2f}x | {r['target'] or ''} |")


def fmt(seconds):
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


if __name__ == "__main__":
    main()
