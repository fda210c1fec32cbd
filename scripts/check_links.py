#!/usr/bin/env python3
"""Checks the relative links of the project's Markdown: every file exists, every #anchor
names a heading of its file (GitHub's rule: lower case, punctuation dropped, spaces to
dashes). Prints each broken link with its file and exits 1 if there is one."""
import glob
import os
import re
import sys

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def anchors(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # headings only, not code
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


broken = []
for md in ["README.md"] + sorted(glob.glob("docs/*.md")) + sorted(glob.glob("crates/*/README.md")):
    for link in re.findall(r"\]\(([^)\s]+)\)", open(md, encoding="utf-8").read()):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, fragment = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
        if not os.path.exists(target):
            broken.append(f"{md}: {link}: no file {target}")
        elif fragment and target.endswith(".md") and fragment not in anchors(target):
            broken.append(f"{md}: {link}: {target} has no heading #{fragment}")
for line in broken:
    print(line)
sys.exit(1 if broken else 0)
