#!/usr/bin/env python3
"""Lists every public item path of the `tensorpool` crate (modules, types, traits,
functions, constants), following re-exports, from rustdoc's JSON output, and writes
`crates/tensorpool/tests/public_paths.rs`, which names each of them: that test compiles
only while every path a user may have written still resolves.

    scripts/public_paths.py            regenerate the test (needs the nightly toolchain)
    scripts/public_paths.py --list     print the listing instead

A path removed on purpose leaves the test in the same change; one removed by accident
fails the build of the tests."""
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TARGET = os.path.join(ROOT, "target", "public-paths")
subprocess.run(
    ["cargo", "+nightly", "rustdoc", "-q", "-p", "tensorpool", "--lib", "--all-features",
     "--", "-Z", "unstable-options", "--output-format", "json"],
    cwd=ROOT, check=True, env={**os.environ, "CARGO_TARGET_DIR": TARGET},
)
d = json.load(open(os.path.join(TARGET, "doc", "tensorpool.json")))
idx=d['index']; root=d['root']
out=set()
KINDS={'module','struct','enum','trait','function','constant','static','type_alias','macro','union'}
def kind(item):
    inner=item['inner']; return next(iter(inner)) if isinstance(inner,dict) else inner
def walk(mid, prefix, seen):
    if mid in seen: return
    seen=seen|{mid}
    item=idx[str(mid)] if str(mid) in idx else None
    if item is None: return
    for cid in item['inner']['module']['items']:
        c=idx.get(str(cid))
        if c is None: continue
        k=kind(c)
        if k=='use':
            u=c['inner']['use']
            if u.get('is_glob'):
                t=idx.get(str(u['id'])) if u.get('id') is not None else None
                if t and kind(t)=='module': walk(u['id'],prefix,seen)
                continue
            tid=u.get('id'); name=u['name']
            t=idx.get(str(tid)) if tid is not None else None
            if t is None:
                out.add(('external',prefix+'::'+name)); continue
            tk=kind(t)
            if tk=='module':
                out.add(('module',prefix+'::'+name)); walk(tid,prefix+'::'+name,seen)
            elif tk in KINDS: out.add((tk,prefix+'::'+name))
            continue
        if c.get('visibility')!='public': continue
        name=c.get('name')
        if k=='module':
            out.add(('module',prefix+'::'+name)); walk(cid,prefix+'::'+name,seen)
        elif k in KINDS:
            out.add((k,prefix+'::'+name))
walk(root,'tensorpool',frozenset())
paths = sorted(out, key=lambda x: x[1])
if "--list" in sys.argv:
    for k, p in paths:
        print(k, p)
    sys.exit(0)
lines = [
    "//! Every public path of the crate, as a user writes it: this file compiles only while",
    "//! each of them resolves (modules, types, traits, functions, constants, through the",
    "//! re-exports that keep the paths flat). Written by `scripts/public_paths.py` from",
    "//! rustdoc's output; a path removed on purpose leaves this file in the same change.",
    "",
    "#![allow(unused_imports)]",
    "",
]
for k, p in paths:
    if k == "external":
        continue
    if p == "tensorpool::trace" or p.startswith("tensorpool::trace::"):
        lines.append('#[cfg(feature = "trace")]')  # the one optional module
    lines.append(f"use {p} as _;")
OUT = os.path.join(ROOT, "crates", "tensorpool", "tests", "public_paths.rs")
open(OUT, "w").write("\n".join(lines) + "\n")
# rustfmt orders the imports its own way (upper case first); the file is written in
# that order so that `cargo fmt --check` passes on it as generated.
subprocess.run(["rustfmt", "--edition", "2021", OUT], check=True)
print(f"{len(paths)} public paths written to crates/tensorpool/tests/public_paths.rs")
