#!/usr/bin/env python3
"""Prints the benchmark tables of docs/BENCHMARKS.md from criterion's results (target/criterion).

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


def sizes(*parts):
    """The sizes measured under `parts` (criterion's directories: the benches' own list)."""
    return sorted(int(p.name) for p in ROOT.joinpath(*parts).iterdir() if p.name.isdigit())


def per_element(*parts):
    """Time per element of a benchmark that declared a throughput in elements (a round
    of pairs), or per iteration."""
    meta = json.loads(ROOT.joinpath(*parts, "new", "benchmark.json").read_text())
    return estimate(*parts) / ((meta.get("throughput") or {}).get("Elements") or 1)


def size_name(size):
    return f"{size >> 10} KiB" if size >= 1024 else f"{size} B"


PEERS = ["system", "mimalloc", "jemalloc"]


def peer_rows(group, suffix, sizes_, extra=None, best=True):
    """One row per size: tensorpool's time, the peers', and the ratios to mimalloc and
    (with `best`) to the best peer; `extra(size)` adds a column after tensorpool's."""
    for size in sizes_:
        tp = per_element(group, f"tensorpool{suffix}", str(size))
        times = {p: per_element(group, f"{p}{suffix}", str(size)) for p in PEERS}
        cells = [size_name(size), fmt(tp)] + ([fmt(extra(size))] if extra else [])
        cells += [fmt(times[p]) for p in PEERS] + [f"{tp / times['mimalloc']:.2f}x"]
        if best:
            cells.append(f"{tp / min(times.values()):.2f}x")
        print("| " + " | ".join(cells) + " |")


def main():
    pair_sizes = sizes("pairs", "tensorpool")
    print("Allocate + free through `&MemoryManager` (allocator-api2), one thread, hot, 64-byte aligned (time per pair):\n")
    print("| size | tensorpool | FixedSizePool | system | mimalloc | jemalloc | tensorpool / mimalloc (target ≤ 1.0, goal 0.5) | tensorpool / best peer |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    peer_rows("pairs", "", pair_sizes, extra=lambda size: per_element("pairs", "fixed-pool", str(size)))
    print("\nThe same with 64 blocks held: allocate 64, then free them in the same order (time per pair):\n")
    print("| size | tensorpool | system | mimalloc | jemalloc | tensorpool / mimalloc (target ≤ 1.0) | tensorpool / best peer |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    peer_rows("pairs", "-held", sizes("pairs", "tensorpool-held"))
    print("\nSizeless frees: `allocate_raw` + `free_raw` (every free checked) against each peer's `malloc` + `free` (time per pair):\n")
    print("| size | tensorpool | system | mimalloc | jemalloc | tensorpool / mimalloc (target ≤ 1.5) |")
    print("|---:|---:|---:|---:|---:|---:|")
    peer_rows("raw", "", sizes("raw", "tensorpool"), best=False)
    print("\nArena: 1000 allocations of 16 B to 4 KiB through `Allocator` on `&Arena`, then a reset, against bumpalo's `alloc_layout` (time per allocation):\n")
    print("| tensorpool Arena | bumpalo | ratio (target ≤ 1.2) |")
    print("|---:|---:|---:|")
    tp, bump = per_element("arena", "tensorpool"), per_element("arena", "bumpalo")
    print(f"| {fmt(tp)} | {fmt(bump)} | {tp / bump:.2f}x |")
    print("\nLarge blocks: allocate, write one byte per page, free (time per round):\n")
    print("| size | warm touch | tensorpool | system | mimalloc | jemalloc | tensorpool / warm (target ≤ 1.2) | system / tensorpool (target ≥ 50 at 64 MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mib in sizes("large", "tensorpool"):
        warm = estimate("large", "warm-touch", str(mib))
        tp = estimate("large", "tensorpool", str(mib))
        times = {p: estimate("large", p, str(mib)) for p in PEERS}
        print(f"| {mib} MiB | {fmt(warm)} | {fmt(tp)} | "
              + " | ".join(fmt(times[p]) for p in PEERS)
              + f" | {tp / warm:.2f}x | {times['system'] / tp:.0f}x |")
    if ROOT.joinpath("step").exists():
        print("\nOne step of a real repeating trace, planned and run by a `PlannedArena`, against the manager, bumpalo (frees ignored) and the peers (time per step):\n")
        print("| step | events | PlannedArena | manager | bumpalo | system | mimalloc | jemalloc | planned / manager | planned / bumpalo |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for trace in sorted(p.name for p in ROOT.joinpath("step").iterdir() if p.is_dir() and p.name != "report"):
            meta = json.loads(ROOT.joinpath("step", trace, "planned", "new", "benchmark.json").read_text())
            events = (meta.get("throughput") or {}).get("Elements") or 0
            t = {n: estimate("step", trace, n) for n in ["planned", "tensorpool", "bumpalo", *PEERS]}
            print(f"| {trace} | {events:,} | " + " | ".join(fmt(t[n]) for n in ["planned", "tensorpool", "bumpalo", *PEERS])
                  + f" | {t['planned'] / t['tensorpool']:.2f}x | {t['planned'] / t['bumpalo']:.2f}x |")


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
