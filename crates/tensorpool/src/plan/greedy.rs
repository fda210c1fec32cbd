//! Greedy offline placement: buffers taken in an order, each placed at the
//! best-fitting gap among the already placed buffers whose lifetimes overlap its own,
//! or above them all. The published heuristics differ only in the order
//! ([`Order`]); `plan` runs them all and keeps the smallest arena.
//!
//! Finding the placed buffers that overlap a lifetime is the inner loop. All
//! lifetimes are known in advance, so they are indexed once, sorted by start, under a
//! segment tree that keeps the latest end of the *placed* buffers in each range: the
//! overlapping ones (start before this one ends, end after it starts) are found by
//! descending only into ranges whose latest end is late enough, in
//! O((k + 1) log n) for k overlapping buffers, instead of a scan of every placed one.
//!
//! ```
//! use tensorpool::trace::Lifetime;
//! use tensorpool::plan::greedy::{greedy, Order};
//!
//! let l = |id, lower, upper, size| Lifetime { id, lower, upper, size };
//! let buffers = [l(0, 0, 4, 100), l(1, 1, 2, 50), l(2, 2, 3, 50)];
//! let (placements, arena) = greedy(&buffers, Order::Size, 1);
//! assert_eq!(arena, 150); // buffers 1 and 2 never live together: one place for both
//! assert_eq!(placements[1].offset, placements[2].offset);
//! ```

use super::Placement;
use crate::trace::Lifetime;
use serde::Serialize;

/// The order in which a greedy planner takes buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Largest first (TensorFlow Lite's and MiniMalloc's first solution).
    Size,
    /// Those living through the most crowded moment first: the most bytes live at
    /// once during the buffer's life, then size (greedy by breadth).
    Breadth,
    /// Longest-lived first, then size.
    Lifetime,
    /// Largest size times lifetime first.
    Area,
    /// In allocation order, as an online allocator sees them (best fit, but knowing
    /// where each buffer's neighbours end).
    Allocation,
}

impl Order {
    /// Every order, in the order `plan` reports them.
    pub const ALL: [Order; 5] = [
        Order::Size,
        Order::Breadth,
        Order::Lifetime,
        Order::Area,
        Order::Allocation,
    ];

    /// The order's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Order::Size => "greedy by size",
            Order::Breadth => "greedy by breadth",
            Order::Lifetime => "greedy by lifetime",
            Order::Area => "greedy by area",
            Order::Allocation => "greedy in allocation order",
        }
    }
}

/// Places every buffer in `order` (ties: larger, then earlier, then lower id), each
/// at an offset that is a multiple of `align`. Returns the placements by id, and the
/// arena size.
pub fn greedy(lifetimes: &[Lifetime], order: Order, align: u64) -> (Vec<Placement>, u64) {
    let index = Index::new(lifetimes);
    let breadth = match order {
        Order::Breadth => breadths(lifetimes),
        _ => Vec::new(),
    };
    let mut ids: Vec<usize> = (0..lifetimes.len())
        .filter(|&i| lifetimes[i].size > 0)
        .collect();
    let span = |l: &Lifetime| (l.upper - l.lower) as u64;
    let tie = |a: &Lifetime, b: &Lifetime| {
        b.size
            .cmp(&a.size)
            .then(a.lower.cmp(&b.lower))
            .then(a.id.cmp(&b.id))
    };
    ids.sort_by(|&x, &y| {
        let (a, b) = (&lifetimes[x], &lifetimes[y]);
        let first = match order {
            Order::Size => std::cmp::Ordering::Equal,
            Order::Breadth => breadth[y].cmp(&breadth[x]),
            Order::Lifetime => span(b).cmp(&span(a)),
            Order::Area => {
                (b.size as u128 * span(b) as u128).cmp(&(a.size as u128 * span(a) as u128))
            }
            Order::Allocation => a.lower.cmp(&b.lower).then(a.id.cmp(&b.id)),
        };
        first.then_with(|| tie(a, b))
    });
    index.place_all(lifetimes, &ids, align.max(1))
}

/// The plan of the order that needs the smallest arena.
#[derive(Debug, Clone)]
pub struct Best {
    /// The placements by id.
    pub placements: Vec<Placement>,
    /// The arena size.
    pub arena: u64,
    /// The order that found it (the first in [`Order::ALL`] on a tie).
    pub order: Order,
    /// Every order's arena, in [`Order::ALL`]'s order.
    pub arenas: Vec<(Order, u64)>,
}

/// Runs every order (offsets multiples of `align`) and keeps the smallest arena. The
/// orders run on as many threads as the machine has cores (each holds its own index
/// of the buffers: one at a time per thread bounds the memory).
pub fn best(lifetimes: &[Lifetime], align: u64) -> Best {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(Order::ALL.len());
    // (order's position, placements, arena) for every order.
    let mut results: Vec<(usize, Vec<Placement>, u64)> = std::thread::scope(|scope| {
        let work = || {
            let mut done = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&order) = Order::ALL.get(k) else {
                    return done;
                };
                let (placements, arena) = greedy(lifetimes, order, align);
                done.push((k, placements, arena));
            }
        };
        let threads: Vec<_> = (1..workers).map(|_| scope.spawn(work)).collect();
        let mut all = work();
        for t in threads {
            all.extend(
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        all
    });
    results.sort_by_key(|&(k, _, _)| k);
    let arenas: Vec<(Order, u64)> = results
        .iter()
        .map(|&(k, _, arena)| (Order::ALL[k], arena))
        .collect();
    // The smallest arena; the first in `Order::ALL` on a tie.
    let (k, placements, arena) = results
        .into_iter()
        .min_by_key(|&(k, _, arena)| (arena, k))
        .expect("there is an order");
    Best {
        placements,
        arena,
        order: Order::ALL[k],
        arenas,
    }
}

/// For each buffer, the most bytes live at once while it lives.
fn breadths(lifetimes: &[Lifetime]) -> Vec<u64> {
    let end = lifetimes.iter().map(|l| l.upper).max().unwrap_or(0) + 1;
    let mut delta = vec![0i128; end + 1];
    for l in lifetimes.iter().filter(|l| l.size > 0) {
        delta[l.lower] += l.size as i128;
        delta[l.upper] -= l.size as i128;
    }
    let mut live = 0i128;
    let profile: Vec<u64> = delta
        .iter()
        .map(|d| {
            live += d;
            live as u64
        })
        .collect();
    let tree = MaxTree::new(&profile);
    lifetimes
        .iter()
        .map(|l| tree.max(l.lower, l.upper.max(l.lower + 1)))
        .collect()
}

/// The placed buffers, by start, for the overlap queries.
struct Index {
    /// Buffer ids sorted by start.
    by_lower: Vec<usize>,
    /// Their starts, in the same order.
    lowers: Vec<usize>,
    /// Position of each buffer id in `by_lower`.
    position: Vec<usize>,
    /// The latest end of the placed buffers in each range of `by_lower` (0: none).
    ends: MaxTree,
    /// Each placed buffer's offset and end, by id.
    extents: Vec<(u64, u64)>,
}

impl Index {
    fn new(lifetimes: &[Lifetime]) -> Self {
        let mut by_lower: Vec<usize> = (0..lifetimes.len()).collect();
        by_lower.sort_by_key(|&i| (lifetimes[i].lower, i));
        let lowers = by_lower.iter().map(|&i| lifetimes[i].lower).collect();
        let mut position = vec![0; lifetimes.len()];
        for (p, &i) in by_lower.iter().enumerate() {
            position[i] = p;
        }
        Index {
            by_lower,
            lowers,
            position,
            ends: MaxTree::new(&vec![0; lifetimes.len()]),
            extents: vec![(0, 0); lifetimes.len()],
        }
    }

    fn place_all(
        mut self,
        lifetimes: &[Lifetime],
        order: &[usize],
        align: u64,
    ) -> (Vec<Placement>, u64) {
        let mut arena = 0u64;
        let mut found = Vec::new();
        let mut overlapping: Vec<(u64, u64)> = Vec::new();
        for &i in order {
            let l = &lifetimes[i];
            // Placed buffers that start before `l` ends and end after it starts.
            let starts_before = self.lowers.partition_point(|&s| s < l.upper);
            found.clear();
            self.ends
                .positions_above(starts_before, l.lower as u64, &mut found);
            overlapping.clear();
            overlapping.extend(found.iter().map(|&p| self.extents[self.by_lower[p]]));
            overlapping.sort_unstable();
            let offset = best_gap(&overlapping, l.size, align);
            self.extents[i] = (offset, offset + l.size);
            self.ends.set(self.position[i], l.upper as u64);
            arena = arena.max(offset + l.size);
        }
        let placements = lifetimes
            .iter()
            .map(|&lifetime| Placement {
                lifetime,
                offset: self.extents[lifetime.id as usize].0,
            })
            .collect();
        (placements, arena)
    }
}

/// The lowest aligned offset of the smallest gap that holds `size` bytes there,
/// between the extents (sorted by offset), or the aligned top of them all.
fn best_gap(extents: &[(u64, u64)], size: u64, align: u64) -> u64 {
    let (mut best, mut best_gap) = (None, u64::MAX);
    let mut top = 0u64;
    for &(offset, end) in extents {
        let start = top.next_multiple_of(align);
        if offset > start {
            let gap = offset - start;
            if gap >= size && gap < best_gap {
                (best, best_gap) = (Some(start), gap);
            }
        }
        top = top.max(end);
    }
    best.unwrap_or(top.next_multiple_of(align))
}

/// A segment tree of maxima over a fixed number of positions.
struct MaxTree {
    /// Leaves from `width`; node `n`'s children at `2n` and `2n + 1`.
    nodes: Vec<u64>,
    width: usize,
}

impl MaxTree {
    fn new(values: &[u64]) -> Self {
        let width = values.len().next_power_of_two().max(1);
        let mut nodes = vec![0; 2 * width];
        nodes[width..width + values.len()].copy_from_slice(values);
        for n in (1..width).rev() {
            nodes[n] = nodes[2 * n].max(nodes[2 * n + 1]);
        }
        MaxTree { nodes, width }
    }

    fn set(&mut self, position: usize, value: u64) {
        let mut n = self.width + position;
        self.nodes[n] = value;
        while n > 1 {
            n /= 2;
            self.nodes[n] = self.nodes[2 * n].max(self.nodes[2 * n + 1]);
        }
    }

    /// The maximum over positions `[from, to)` (`to > from`).
    fn max(&self, from: usize, to: usize) -> u64 {
        let (mut lo, mut hi) = (from + self.width, to + self.width);
        let mut best = 0;
        while lo < hi {
            if lo & 1 == 1 {
                best = best.max(self.nodes[lo]);
                lo += 1;
            }
            if hi & 1 == 1 {
                hi -= 1;
                best = best.max(self.nodes[hi]);
            }
            lo /= 2;
            hi /= 2;
        }
        best
    }

    /// Appends every position below `to` whose value is above `floor`.
    fn positions_above(&self, to: usize, floor: u64, out: &mut Vec<usize>) {
        let mut stack = vec![(1usize, 0usize, self.width)];
        while let Some((n, lo, hi)) = stack.pop() {
            if lo >= to || self.nodes[n] <= floor {
                continue;
            }
            if n >= self.width {
                out.push(n - self.width);
                continue;
            }
            let mid = (lo + hi) / 2;
            stack.push((2 * n + 1, mid, hi));
            stack.push((2 * n, lo, mid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random buffers: `n` lifetimes over about `2n` events.
    fn random(n: usize, seed: u64) -> Vec<Lifetime> {
        let mut rng = tensorpool_testkit::Rng(seed | 1);
        let mut next = move || rng.next();
        (0..n)
            .map(|id| {
                let lower = (next() % (2 * n as u64)) as usize;
                let len = 1 + (next() % if next() % 8 == 0 { n as u64 } else { 8 }) as usize;
                let size = [0, 1, 64, 100, 4096, 1 << 20][(next() % 6) as usize] + next() % 64;
                Lifetime::new(id as u32, lower, lower + len, size)
            })
            .collect()
    }

    /// No two buffers that live together overlap, and the arena holds every buffer.
    fn check(lifetimes: &[Lifetime], placements: &[Placement], arena: u64) {
        for a in placements {
            assert!(a.offset + a.lifetime.size <= arena);
            for b in placements {
                let (la, lb) = (&a.lifetime, &b.lifetime);
                if la.id < lb.id
                    && la.size > 0
                    && lb.size > 0
                    && la.lower < lb.upper
                    && lb.lower < la.upper
                {
                    assert!(
                        a.offset + la.size <= b.offset || b.offset + lb.size <= a.offset,
                        "{la:?} at {} overlaps {lb:?} at {}",
                        a.offset,
                        b.offset
                    );
                }
            }
        }
        assert_eq!(placements.len(), lifetimes.len());
    }

    #[test]
    fn every_order_gives_a_valid_plan_at_or_above_the_peak() {
        for seed in 1..40 {
            let l = random(60 + seed as usize, seed);
            let peak = breadths(&l).into_iter().max().unwrap_or(0);
            for order in Order::ALL {
                let (p, arena) = greedy(&l, order, 1);
                check(&l, &p, arena);
                assert!(arena >= peak, "{order:?}: {arena} below the peak {peak}");
                let (p, arena) = greedy(&l, order, 64);
                check(&l, &p, arena);
                assert!(p.iter().all(|p| p.offset % 64 == 0), "{order:?}: unaligned");
            }
        }
    }

    #[test]
    fn the_index_finds_exactly_the_overlapping_buffers() {
        let l = random(300, 7);
        let mut index = Index::new(&l);
        let mut placed = Vec::new();
        for (k, b) in l.iter().enumerate() {
            if k % 3 == 0 {
                index.ends.set(index.position[k], b.upper as u64);
                placed.push(k);
            }
        }
        for q in &l {
            let mut found = Vec::new();
            let to = index.lowers.partition_point(|&s| s < q.upper);
            index.ends.positions_above(to, q.lower as u64, &mut found);
            let mut got: Vec<usize> = found.iter().map(|&p| index.by_lower[p]).collect();
            got.sort_unstable();
            let want: Vec<usize> = placed
                .iter()
                .copied()
                .filter(|&k| l[k].lower < q.upper && q.lower < l[k].upper)
                .collect();
            assert_eq!(got, want, "{q:?}");
        }
    }

    #[test]
    fn breadth_is_the_most_bytes_live_during_a_life() {
        let l = [
            Lifetime::new(0, 0, 10, 100),
            Lifetime::new(1, 2, 4, 50),
            Lifetime::new(2, 5, 6, 70),
            Lifetime::new(3, 8, 9, 1),
        ];
        assert_eq!(breadths(&l), vec![170, 150, 170, 101]);
    }

    #[test]
    fn the_best_order_is_the_smallest_arena_and_ties_keep_the_first() {
        for seed in 1..20 {
            let l = random(80, seed);
            let best = best(&l, 1);
            check(&l, &best.placements, best.arena);
            let arenas: Vec<u64> = Order::ALL.iter().map(|&o| greedy(&l, o, 1).1).collect();
            assert_eq!(best.arena, *arenas.iter().min().unwrap());
            let first = Order::ALL[arenas.iter().position(|&a| a == best.arena).unwrap()];
            assert_eq!(best.order, first);
            assert_eq!(best.arenas.iter().map(|a| a.1).collect::<Vec<_>>(), arenas);
        }
    }
}
