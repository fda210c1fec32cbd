#!/usr/bin/env python3
"""Online placement policies simulated over the large blocks of real traces: the floor of
a non-moving allocator that places every block of `MIN` bytes and more (rounded to
4 KiB pages) in one growing segment, with free neighbours merged, for each policy.

    python3 scripts/placement_sim.py MIN POLICY[,POLICY...] TRACE...
    python3 scripts/placement_sim.py 32768 best,first,worst,best_end traces/recorded/*.csv.gz

Policies: `best` (the smallest hole that fits, the lowest address among equals),
`first` (the lowest hole that fits), `worst` (the largest hole), `best_high` (best,
the highest address among equals), `best_end` (best, the block at the hole's end),
`bestqQ` (the lowest-addressed hole within a fraction Q of the best size). A request
no hole fits extends the segment's top. Prints peak reserved / peak live of the blocks
simulated, per trace and policy (slabs, spans and caches are left out: this is the
placement alone). Reads RMM CSV and MiniMalloc interval traces, gzip or not.
"""
import gzip, sys, bisect, collections
PAGE = 4096
def load(path, minsize):
    ev = []
    live = {}
    op = gzip.open if path.endswith('.gz') else open
    with op(path, 'rt') as f:
        head = f.readline().strip().split(',')
        if head[0] == 'Thread':
            for line in f:
                p = line.rstrip('\n').split(',')
                act, ptr, size = p[2], p[3], int(p[4])
                if act == 'allocate':
                    if size >= minsize:
                        bid = len(ev)
                        live[ptr] = bid
                        ev.append(('a', bid, -(-size // PAGE) * PAGE))
                elif act == 'free':
                    bid = live.pop(ptr, None)
                    if bid is not None:
                        ev.append(('f', bid, 0))
        else:  # intervals id,lower,upper,size
            rows = []
            for line in f:
                p = line.strip().split(',')
                if len(p) < 4: continue
                rows.append((int(p[1]), int(p[2]), int(p[3])))
            steps = collections.defaultdict(lambda: ([], []))
            for i, (lo, up, sz) in enumerate(rows):
                if sz >= minsize:
                    steps[lo][1].append((i, sz)); steps[up][0].append(i)
            for t in sorted(steps):
                fr, al = steps[t]
                for i in fr: ev.append(('f', i, 0))
                for i, sz in al: ev.append(('a', i, -(-sz // PAGE) * PAGE))
    return ev

def simulate(ev, policy):
    holes = []  # sorted list of (start, size) free holes below top
    top = 0; peak = 0; live = 0; peak_live = 0
    where = {}
    def add_hole(s, n):
        nonlocal top
        i = bisect.bisect_left(holes, (s, 0))
        # merge with prev
        if i > 0 and holes[i-1][0] + holes[i-1][1] == s:
            s = holes[i-1][0]; n += holes[i-1][1]; holes.pop(i-1); i -= 1
        if i < len(holes) and s + n == holes[i][0]:
            n += holes[i][1]; holes.pop(i)
        if s + n == top:
            top = s
        else:
            holes.insert(i, (s, n))
    for kind, bid, size in ev:
        if kind == 'a':
            cands = [(i, h) for i, h in enumerate(holes) if h[1] >= size]
            pick = None
            if cands:
                if policy == 'best':
                    pick = min(cands, key=lambda c: (c[1][1], c[1][0]))
                elif policy == 'first':
                    pick = cands[0]
                elif policy == 'worst':
                    pick = max(cands, key=lambda c: (c[1][1], -c[1][0]))
                elif policy == 'best_high':
                    pick = min(cands, key=lambda c: (c[1][1], -c[1][0]))
                elif policy.startswith('bestq'):
                    # best fit among holes, but prefer exact-ish (within q) lowest address
                    q = float(policy[5:])
                    best = min(c[1][1] for c in cands)
                    ok = [c for c in cands if c[1][1] <= best * (1 + q)]
                    pick = min(ok, key=lambda c: c[1][0])
                elif policy == 'best_or_top':
                    # best fit, but if the best hole would leave a remainder bigger than the request, extend the free top when top hole exists
                    pick = min(cands, key=lambda c: (c[1][1], c[1][0]))
                elif policy == 'best_end':
                    # best fit, placing the block at the END of the hole
                    pick = min(cands, key=lambda c: (c[1][1], c[1][0]))
            if pick is None:
                start = top; top += size
            else:
                i, (s, n) = pick
                holes.pop(i)
                if policy == 'best_end':
                    start = s + n - size
                    if n > size: holes.insert(i, (s, n - size))
                else:
                    start = s
                    if n > size: holes.insert(i, (s + size, n - size))
            where[bid] = (start, size)
            live += size; peak_live = max(peak_live, live); peak = max(peak, top)
        else:
            s, n = where.pop(bid)
            live -= n
            add_hole(s, n)
    return peak, peak_live

if __name__ == '__main__':
    minsize = int(sys.argv[1]); pols = sys.argv[2].split(','); paths = sys.argv[3:]
    print('trace'.ljust(28) + ''.join(p.rjust(11) for p in pols))
    for path in paths:
        ev = load(path, minsize)
        row = []
        for pol in pols:
            pk, pl = simulate(ev, pol)
            row.append(pk / pl if pl else 0)
        print(path.split('/')[-1][:27].ljust(28) + ''.join(f'{r:11.3f}' for r in row))
