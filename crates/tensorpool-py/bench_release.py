#!/usr/bin/env python3
"""Memory given back, measured in resident memory (RSS) of fresh interpreters.

    .venv/bin/python crates/tensorpool-py/bench_release.py [--json]

Two scenarios, each run with NumPy's own allocator, with tensorpool (its default
release policy: a 1 s delay and the background thread), and with tensorpool releasing
only when asked (`release_delay_ms="never"`, the behaviour before the policy):

- `idle`: a 512 MiB array made and freed, then the program waits; RSS above the start
  right after the free, and after the delay plus one second. Then ten rounds of
  160 MiB in 8 MiB arrays and two seconds idle.
- `spike`: steps of 64 MiB live in 8 MiB arrays (every page written), one step of
  256 MiB, then 10 s of normal steps; the most RSS above the start over the last two
  seconds, and the time per normal step.

Prints a Markdown table; `--json` prints the rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

COMMON = """
import gc, json, os, time
import numpy as np
import tensorpool
MIB = 1 << 20
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
WAY = {way!r}
if WAY == "numpy":
    ctx = None
else:
    settings = {{"release_delay_ms": "never"}} if WAY == "tensorpool, only when asked" else {{}}
    mm = tensorpool.MemoryManager(**settings)
    tensorpool.install(mm)
gc.collect()
start = rss()
out = {{}}
"""

IDLE = """
a = np.ones(64 * MIB)          # 512 MiB, every page written
del a
gc.collect()
out["after the free"] = rss() - start
time.sleep(2.0)                # the delay (1 s) plus one second
out["after 2 s idle"] = rss() - start
for _ in range(10):
    arrays = [np.ones(MIB) for _ in range(20)]   # 160 MiB in 8 MiB arrays
    del arrays
time.sleep(2.0)
out["after 10 rounds of 160 MiB, 2 s idle"] = rss() - start
print(json.dumps(out))
"""

SPIKE = """
def step(n):
    arrays = [np.ones(MIB) for _ in range(n)]    # n arrays of 8 MiB, pages written
    return sum(float(a[0]) for a in arrays)
for _ in range(20):
    step(8)                    # 64 MiB live per step
step(32)                       # one step of 256 MiB
t0 = time.monotonic()
late = 0
steps = 0
while time.monotonic() - t0 < 10.0:
    s = time.monotonic()
    step(8)
    steps += 1
    time.sleep(0.05)
    if time.monotonic() - t0 > 8.0:
        late = max(late, rss() - start)
out["most RSS above start, last 2 s"] = late
out["ms per step"] = 1e3 * 10.0 / steps
print(json.dumps(out))
"""

WAYS = ["numpy", "tensorpool", "tensorpool, only when asked"]


def run(body: str, way: str) -> dict:
    code = textwrap.dedent(COMMON.format(way=way)) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON rows")
    args = ap.parse_args()
    rows = []
    for name, body in [("idle", IDLE), ("spike", SPIKE)]:
        for way in WAYS:
            for figure, value in run(body, way).items():
                rows.append({"scenario": name, "way": way, "figure": figure, "value": value})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| scenario | figure | NumPy's allocator | tensorpool | tensorpool, only when asked |")
    print("|---|---|---:|---:|---:|")
    figures = []
    for r in rows:
        key = (r["scenario"], r["figure"])
        if key not in figures:
            figures.append(key)
    for scenario, figure in figures:
        cells = []
        for way in WAYS:
            v = next(r["value"] for r in rows if (r["scenario"], r["figure"], r["way"]) == (scenario, figure, way))
            cells.append(f"{v:.1f} ms" if figure == "ms per step" else f"{round(v / (1 << 20))} MiB")
        print(f"| {scenario} | {figure} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
