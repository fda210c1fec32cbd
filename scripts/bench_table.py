#!/usr/bin/env python3
"""Prints the README's benchmark tables from criterion's results (target/criterion).

Run `cargo bench -p tensorpool-cli --bench allocators --bench threads` first. Times are criterion's
estimates (the slope of its linear fit, as it prints them); ratios compare
allocators measured in the same run, which is what stays meaningful on a shared,
noisy machine.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def estimate(*parts):
    path = ROOT.joinpath(*parts, "new", "estimates.json")
    if not path.exists():
        sys.exit(f"missing {path}: run `cargo bench -p tensorpool-cli --bench allocators --bench threads` first")
    estimates = json.loads(path.read_text())
    return (estimates.get("slope") or estimates["mean"])["point_estimate"]


def fmt(ns):
    return f"{ns / 1e6:.2f} ms" if ns >= 1e6 else f"{ns / 1e3:.1f} µs" if ns >= 1e3 else f"{ns:.1f} ns"


SIZES = [64, 256, 1024, 4096, 16384, 65536, 262144]


def size_name(size):
    return f"{size >> 10} KiB" if size >= 1024 else f"{size} B"


def main():
    peers = ["system", "mimalloc", "jemalloc"]
    print("Allocate + free through `&MemoryManager` (allocator-api2), one thread, hot, 64-byte aligned (time per pair):\n")
    print("| size | tensorpool | FixedSizePool | system | mimalloc | jemalloc | tensorpool / mimalloc (target ≤ 1.0, goal 0.5) | tensorpool / best peer |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        tp = estimate("pairs", "tensorpool", str(size))
        pool = estimate("pairs", "fixed-pool", str(size))
        times = {p: estimate("pairs", p, str(size)) for p in peers}
        print(f"| {size_name(size)} | {fmt(tp)} | {fmt(pool)} | "
              + " | ".join(fmt(times[p]) for p in peers)
              + f" | {tp / times['mimalloc']:.2f}x | {tp / min(times.values()):.2f}x |")
    print("\nThe same with 64 blocks held: allocate 64, then free them in the same order (time per pair):\n")
    print("| size | tensorpool | system | mimalloc | jemalloc | tensorpool / mimalloc (target ≤ 1.0) | tensorpool / best peer |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in SIZES:
        tp = estimate("pairs", "tensorpool-held", str(size)) / 64
        times = {p: estimate("pairs", f"{p}-held", str(size)) / 64 for p in peers}
        print(f"| {size_name(size)} | {fmt(tp)} | "
              + " | ".join(fmt(times[p]) for p in peers)
              + f" | {tp / times['mimalloc']:.2f}x | {tp / min(times.values()):.2f}x |")
    print("\nSizeless frees: `allocate_raw` + `free_raw` (every free checked) against each peer's `malloc` + `free` (time per pair):\n")
    print("| size | tensorpool | system | mimalloc | jemalloc | tensorpool / mimalloc (target ≤ 1.5) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in [64, 256, 1024, 4096, 65536]:
        tp = estimate("raw", "tensorpool", str(size))
        times = {p: estimate("raw", p, str(size)) for p in peers}
        print(f"| {size_name(size)} | {fmt(tp)} | "
              + " | ".join(fmt(times[p]) for p in peers)
              + f" | {tp / times['mimalloc']:.2f}x |")
    print("\nArena: 1000 allocations of 16 B to 4 KiB through `Allocator` on `&Arena`, then a reset, against bumpalo's `alloc_layout` (time per allocation):\n")
    print("| tensorpool Arena | bumpalo | ratio (target ≤ 1.2) |")
    print("|---:|---:|---:|")
    tp, bump = estimate("arena", "tensorpool") / 1000, estimate("arena", "bumpalo") / 1000
    print(f"| {fmt(tp)} | {fmt(bump)} | {tp / bump:.2f}x |")
    print("\nLarge blocks: allocate, write one byte per page, free (time per round):\n")
    print("| size | warm touch | tensorpool | system | mimalloc | jemalloc | tensorpool / warm (target ≤ 1.2) | system / tensorpool (target ≥ 50 at 64 MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mib in [1, 4, 16, 64]:
        warm = estimate("large", "warm-touch", str(mib))
        tp = estimate("large", "tensorpool", str(mib))
        times = {p: estimate("large", p, str(mib)) for p in peers}
        print(f"| {mib} MiB | {fmt(warm)} | {fmt(tp)} | "
              + " | ".join(fmt(times[p]) for p in peers)
              + f" | {tp / warm:.2f}x | {times['system'] / tp:.0f}x |")


def threads():
    subjects = ["tensorpool", "system", "mimalloc", "jemalloc"]
    counts = sorted(int(p.name) for p in (ROOT / "local" / "tensorpool").iterdir() if p.name.isdigit())
    print("\nThreads, each allocating 64 blocks of mixed sizes (64 B to 16 KiB), then freeing them"
          " (time per round of 64 pairs per thread, and throughput relative to one thread;"
          " target at 2: at least 1.8x and no less than mimalloc's):\n")
    print("| allocator | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in counts)
          + " | " + " | ".join(f"scaling at {t}" for t in counts if t > 1) + " |")
    print("|---|" + "---:|" * (2 * len(counts) - 1))
    for name in subjects:
        times = {t: estimate("local", name, str(t)) for t in counts}
        scaling = [f"{t * times[counts[0]] / counts[0] / times[t]:.2f}x" for t in counts if t > 1]
        print(f"| {name} | " + " | ".join(fmt(times[t]) for t in counts) + " | " + " | ".join(scaling) + " |")
    print("\nProducer/consumer: one thread allocates, another frees (time per block):\n")
    print("| tensorpool | system | mimalloc | jemalloc | tensorpool / mimalloc (target ≤ 1.0) |")
    print("|---:|---:|---:|---:|---:|")
    times = {n: estimate("producer-consumer", n) for n in subjects}
    print("| " + " | ".join(fmt(times[n]) for n in subjects) + f" | {times['tensorpool'] / times['mimalloc']:.2f}x |")


if __name__ == "__main__":
    main()
    threads()
