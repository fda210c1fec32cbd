#!/usr/bin/env python3
"""Every program on glibc, jemalloc, mimalloc, tcmalloc and tensorpool, each
allocator preloaded (LD_PRELOAD) into the same binaries, run in alternating rounds.

    scripts/preload_bench.py [--rounds N] [--python PY] [--only NAME,...] [--bounded-delay]

Tensor workloads (Python, crates/tensorpool-malloc/benches/*.py): a NumPy MLP, a
scikit-learn pipeline, a PyTorch CPU training step (skipped where the Python lacks
torch: `python3 -m venv .venv-bench && .venv-bench/bin/pip install numpy==2.4.6
scikit-learn==1.7.2 torch==2.15.0`, several GB with torch's CUDA libraries).
Stress programs (benches/stress.c, built here with cc): threads replacing random
blocks, producer/consumer hand-offs, short- and long-lived mixes, large blocks.

The peers are Debian's packages (`apt-get install libjemalloc2 libmimalloc2.0
libtcmalloc-minimal4`); a missing one is left out of the table. Prints a Markdown
table: each program's median time (the program's own timing of its work) and
largest peak RSS (GNU time's %M: `apt-get install time`) over the rounds per allocator, and tensorpool's ratios to the best
of jemalloc, mimalloc and tcmalloc (below 1: tensorpool is faster or smaller).
"""
import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BENCHES = os.path.join(ROOT, "crates", "tensorpool-malloc", "benches")
LIBDIR = "/usr/lib/x86_64-linux-gnu"
PEERS = {
    "jemalloc": f"{LIBDIR}/libjemalloc.so.2",
    "mimalloc": f"{LIBDIR}/libmimalloc.so.2",
    "tcmalloc": f"{LIBDIR}/libtcmalloc_minimal.so.4",
}


# `--bounded-delay`: tensorpool once more, with the release delay that gives the
# lowest peak RSS (a 20 ms delay that never stretches; docs/BENCHMARKS.md).
BOUNDED_DELAY = {"TENSORPOOL_RELEASE_DELAY_MS": "20", "TENSORPOOL_MAX_RELEASE_DELAY_MS": "20"}


def run_once(argv, preload, settings=None):
    """The program's own timing (the last word it prints) and its peak RSS in KiB
    (GNU time's %M, measured for the program alone), with `settings` added to the
    environment."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.update(settings or {})
    if preload:
        env["LD_PRELOAD"] = preload
    proc = subprocess.run(["/usr/bin/time", "-f", "rss=%M"] + argv, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} under {preload or 'glibc'} failed:\n{proc.stderr}")
    rss = int(proc.stderr.strip().splitlines()[-1].removeprefix("rss="))
    return float(proc.stdout.split()[-1]), rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"))
    ap.add_argument("--only", default="")
    ap.add_argument("--bounded-delay", action="store_true",
                    help="also tensorpool with TENSORPOOL_RELEASE_DELAY_MS=20 and "
                         "TENSORPOOL_MAX_RELEASE_DELAY_MS=20")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "-q", "--release", "--locked", "-p", "tensorpool-malloc"],
                   cwd=ROOT, check=True)
    stress = os.path.join(ROOT, "target", "preload-bench", "stress")
    os.makedirs(os.path.dirname(stress), exist_ok=True)
    subprocess.run(["cc", "-O2", "-pthread", os.path.join(BENCHES, "stress.c"), "-o", stress],
                   check=True)
    allocators = {"glibc": None}
    allocators.update({k: v for k, v in PEERS.items() if os.path.exists(v)})
    library = os.path.join(ROOT, "target", "release", "libtensorpool.so")
    allocators["tensorpool"] = library
    settings = {}
    if args.bounded_delay:
        allocators["tensorpool, 20 ms bounded"] = library
        settings["tensorpool, 20 ms bounded"] = BOUNDED_DELAY

    programs = []
    py = args.python
    has = lambda mod: subprocess.run([py, "-c", f"import {mod}"], capture_output=True).returncode == 0
    if has("numpy"):
        programs.append(("NumPy MLP (Python)", [py, os.path.join(BENCHES, "numpy_mlp.py")], "tensor"))
    if has("sklearn"):
        programs.append(("scikit-learn pipeline", [py, os.path.join(BENCHES, "sklearn_pipeline.py")], "tensor"))
    if has("torch"):
        programs.append(("PyTorch CPU training", [py, os.path.join(BENCHES, "torch_train.py")], "tensor"))
    for name, argv in [
        ("stress: 2 threads, random blocks", [stress, "threads", "2"]),
        ("stress: 4 threads, random blocks", [stress, "threads", "4"]),
        ("stress: producer/consumer", [stress, "handoff", "1"]),
        ("stress: short and long lifetimes", [stress, "lifetimes"]),
        ("stress: large blocks", [stress, "large"]),
    ]:
        programs.append((name, argv, "stress"))
    if args.only:
        keep = args.only.split(",")
        programs = [p for p in programs if any(k in p[0] for k in keep)]

    times = {}
    rss = {}
    for _ in range(args.rounds):
        for name, argv, _kind in programs:
            for alloc, lib in allocators.items():
                ms, kib = run_once(argv, lib, settings.get(alloc))
                times.setdefault((name, alloc), []).append(ms)
                rss[(name, alloc)] = max(rss.get((name, alloc), 0), kib)

    names = list(allocators)
    ours = [a for a in names if a.startswith("tensorpool")]
    # One pair of ratio columns per tensorpool run (the defaults keep the plain names).
    label = lambda a: "" if a == "tensorpool" else f" ({a})"
    ratio_heads = "".join(f" time ÷ best peer{label(a)} | peak RSS ÷ best peer{label(a)} |"
                          for a in ours)
    print("| program | " + " | ".join(names) + " |" + ratio_heads)
    print("|---|" + "---:|" * (len(names) + 2 * len(ours)))
    for name, _argv, kind in programs:
        med = {a: statistics.median(times[(name, a)]) for a in names}
        peers = [a for a in names if a in PEERS]
        best_t = min(med[a] for a in peers)
        best_r = min(rss[(name, a)] for a in peers)
        cells = " | ".join(f"{med[a]:.0f} ms, {rss[(name, a)] / 1024:.0f} MiB" for a in names)
        ratios = "".join(f" {med[a] / best_t:.2f}x | {rss[(name, a)] / best_r:.2f}x |"
                         for a in ours)
        print(f"| {name} | {cells} |{ratios}")


if __name__ == "__main__":
    main()
