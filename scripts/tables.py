#!/usr/bin/env python3
"""Prints the replay and plan tables of docs/BENCHMARKS.md, running the `tensorpool` command.

    python3 scripts/tables.py            # builds the command in release mode first

The replay table covers the real program traces, those recorded here (traces/recorded)
included (pages touched, 5 repetitions); the
plan table covers the static interval traces, with MiniMalloc's instances apart.
"""
import glob
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXE = ROOT / "target" / "release" / "tensorpool"


def run(*args):
    out = subprocess.run([str(EXE), *args, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr)
    return json.loads(out.stdout)


def size(n):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def replay_table():
    traces = ["traces/transformer_train.csv.gz", "traces/sk_mlp.csv.gz", "traces/torch_profiler_mlp.json"]
    traces += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "traces" / "recorded").glob("*.csv.gz"))
    reports = run("replay", "--json", *traces)
    print("| trace | events | peak live | allocator | ns/event | peak reserved | efficiency | page faults / run | tensorpool time ÷ | tensorpool memory ÷ |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in reports:
        for i, a in enumerate(r["allocators"]):
            head = f"| {pathlib.Path(r['trace']).name} | {r['events']} | {size(r['peak_live_bytes'])} |" if i == 0 else "| | | |"
            print(f"{head} {a['name']} | {a['ns_per_event']:.1f} | {size(a['peak_reserved_bytes'])} | {a['efficiency']:.3f} "
                  f"| {a['page_faults']} | {a['tensorpool_time_ratio']:.2f}x | {a['tensorpool_memory_ratio']:.2f}x |")
    print()
    for r in reports:
        print(f"- {pathlib.Path(r['trace']).name}: parsed at {r['parse_events_per_second'] / 1e6:.1f} M events/s; "
              f"replay loop overhead {r['replay_overhead_ns_per_event']:.1f} ns/event")


def plan_table():
    """`tensorpool plan` on every interval trace: MiniMalloc's instances at their
    capacity of 1 MiB (`--capacity`) with 60 s each, as MiniMalloc's benchmark poses
    them; the DL traces with the default time limit."""
    print("| trace | buffers | lower bound | default config (online) | suggested config (online) | greedy by size | best heuristic | search | proven optimal | fits 1 MiB after | by |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    rows = sorted(glob.glob(str(ROOT / "traces" / "intervals" / "*.csv.gz")), key=lambda p: pathlib.Path(p).name.startswith("mm_"))
    with tempfile.TemporaryDirectory() as tmp:
        worst = {False: 0.0, True: 0.0}
        for path in rows:
            name = pathlib.Path(path).name.removesuffix(".csv.gz")
            mm = name.startswith("mm_")
            extra = ["--capacity", "1048576", "--time-limit", "60"] if mm else []
            r = run("plan", "--json", path, "--config-out", f"{tmp}/c.toml", "--plan-out", f"{tmp}/p.csv", *extra)
            worst[mm] = max(worst[mm], r["offline_efficiency"])
            methods = r["offline_methods"]
            by_size = next(m for m in methods if m["method"] == "greedy by size")
            heuristic = min((m for m in methods if not m["method"].startswith("search")), key=lambda m: m["bytes"])
            fit = [i["seconds"] for i in r["search"]["improvements"] if i["bytes"] <= 1 << 20]
            fits = (f"{min(fit):.1f} s" if fit else ("at the start" if heuristic["bytes"] <= 1 << 20 else "no")) if mm else ""
            print(f"| {name} | {r['buffers']} | {size(r['peak_live_bytes'])} | {r['default_efficiency']:.3f}x "
                  f"| {r['suggested_efficiency']:.3f}x | {by_size['efficiency']:.3f}x | {heuristic['efficiency']:.3f}x "
                  f"| {r['offline_efficiency']:.3f}x | {'yes' if r['proven_optimal'] else 'no'} | {fits} | {r['offline_method']} |")
    print(f"\nWorst offline plan: {worst[False]:.3f}x on the DL traces, {worst[True]:.3f}x on MiniMalloc's instances.")


if __name__ == "__main__":
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "tensorpool"], cwd=ROOT, check=True)
    print("### Replay\n")
    replay_table()
    print("\n### Plan\n")
    plan_table()
