#!/usr/bin/env python3
"""tensorpool as the process's allocator against glibc, jemalloc and mimalloc: the
workloads of `crates/tensorpool-cli/examples/global_workloads/` in four binaries that
differ only in their `#[global_allocator]`, run in alternating rounds.

    scripts/global_bench.py [--rounds N]

Prints a Markdown table: each workload's best time per allocator over the rounds, the
peak RSS of a whole run, and tensorpool's ratio to the best of the three peers (below
1: tensorpool is faster or smaller).
"""
import argparse
import json
import os
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ALLOCATORS = ["system", "jemalloc", "mimalloc", "tensorpool"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(
        ["cargo", "build", "-q", "--release", "-p", "tensorpool-cli", "--examples"],
        cwd=ROOT, check=True,
    )
    best = {}
    order = []
    for _ in range(args.rounds):
        for a in ALLOCATORS:
            exe = os.path.join(ROOT, "target", "release", "examples", f"global_{a}")
            out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                row = json.loads(line)
                name = row["workload"]
                value = row.get("best_ms", row.get("value"))
                if name not in order:
                    order.append(name)
                key = (name, a)
                best[key] = min(best.get(key, float("inf")), value)
    print("| workload | " + " | ".join(ALLOCATORS) + " | tensorpool ÷ best peer |")
    print("|---|" + "---:|" * (len(ALLOCATORS) + 1))
    for name in order:
        cells = [best[(name, a)] for a in ALLOCATORS]
        peer = min(best[(name, a)] for a in ALLOCATORS if a in ("jemalloc", "mimalloc"))
        unit = "" if name.startswith("peak") else " ms"
        row = " | ".join(f"{c:.1f}{unit}" for c in cells)
        print(f"| {name} | {row} | {best[(name, 'tensorpool')] / peer:.2f}x |")


if __name__ == "__main__":
    main()
