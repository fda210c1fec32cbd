//! The plan of one step ([`StepPlan`]): what a [`PlannedArena`](crate::PlannedArena) runs.
//!
//! A program whose steps repeat (a training or inference loop, a solver's
//! iteration) makes the same allocations in the same order every step. A step plan
//! lists them in that order: the k-th allocation of a step has a size, an offset in
//! one arena, and the point where the plan frees it, counted in allocations of the
//! step (`freed_before`: the plan frees it before the step's allocation of that
//! index). Buffers that outlive their step get no offset: they are not the step's to
//! place.
//!
//! A plan comes from a trace (the steps named by their first events, or found as
//! the trace's period) or from a plan file `tensorpool plan` wrote. Either way it is
//! checked on the way in: no two planned buffers that the plan keeps live at once
//! overlap, which is what lets the arena serve a slot without looking at the others.

use super::{greedy, search};
use crate::address_map::AddressMap;
use crate::error::{Error, Result};
use crate::trace::{Event, Lifetime, Trace};
use rustc_hash::FxHashMap;
use std::ops::Range;
use std::path::Path;

/// How a trace is cut into steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steps {
    /// Steps start at these event indices, in increasing order; the last runs to the
    /// end of the trace. Events before the first index belong to no step.
    At(Vec<usize>),
    /// The trace repeats after a prologue: its period is found (the smallest period
    /// of the first stretch tried that repeats at least twice: from the start or
    /// after a prologue of up to half the trace, to the end or before an epilogue of
    /// up to a quarter), and steps are cut where the fewest blocks are live.
    Repeating,
}

impl std::str::FromStr for Steps {
    type Err = Error;

    /// `repeating`, or the steps' first events as `0,120,240`.
    fn from_str(text: &str) -> Result<Steps> {
        if text.trim() == "repeating" {
            return Ok(Steps::Repeating);
        }
        text.split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map(Steps::At)
            .map_err(|_| {
                Error::InvalidPlan(format!(
                    "steps `{text}`: give `repeating` or the steps' first events as `0,120,240`"
                ))
            })
    }
}

/// One allocation of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Bytes planned for it.
    pub size: u64,
    /// Its offset in the arena; `None` for a buffer that outlives its step (the
    /// arena's manager serves it).
    pub offset: Option<u64>,
    /// The plan frees it before the step's allocation of this index (the step's
    /// number of allocations when the step never frees it).
    pub freed_before: usize,
    /// Where the plan frees it, as the step's event index (the step's number of
    /// events when it never does): orders the frees that come between two
    /// allocations, so that an arena can expect them in that order.
    pub free_event: usize,
}

/// The plan of one step: the allocations of a step, in order, each with its size,
/// its offset (if the step frees it) and when the plan frees it. See the
/// [module docs](crate::plan) for where plans come from.
///
/// Two plans are equal when they plan the same slots (where a plan came from, the
/// steps of a trace or a file, is not part of it: a plan written and read back is
/// equal to itself).
#[derive(Debug, Clone)]
pub struct StepPlan {
    slots: Vec<Slot>,
    /// The slots the plan frees before allocation `k`:
    /// `due_slots[due[k]..due[k + 1]]`.
    due: Vec<u32>,
    due_slots: Vec<u32>,
    arena_bytes: u64,
    /// The steps of the trace it was planned from (event ranges) and the one
    /// planned; empty for a plan from a file or from slots.
    cut: Vec<Range<usize>>,
    planned: usize,
}

impl PartialEq for StepPlan {
    fn eq(&self, other: &Self) -> bool {
        // `due` and `due_slots` follow from the slots.
        (&self.slots, self.arena_bytes) == (&other.slots, other.arena_bytes)
    }
}

impl Eq for StepPlan {}

/// The largest alignment a plan's offsets may be asked for (1 GiB).
pub const MOST_ALIGN: u64 = 1 << 30;

/// The header of a step plan file.
const HEADER: &str = "slot,size,offset,freed_before,free_event";

impl StepPlan {
    /// A plan of `slots`, in allocation order. Refused (naming the two slots) where
    /// two planned slots live at the same time overlap, or a slot is freed before it
    /// is allocated.
    pub fn new(slots: Vec<Slot>) -> Result<StepPlan> {
        let n = slots.len();
        if u32::try_from(n).is_err() {
            return Err(Error::InvalidPlan(format!(
                "{n} allocations in one step; at most 4 billion"
            )));
        }
        let mut arena_bytes = 0u64;
        for (k, s) in slots.iter().enumerate() {
            if s.freed_before <= k || s.freed_before > n {
                return Err(Error::InvalidPlan(format!(
                    "allocation {k} is freed before allocation {} of a step of {n}: \
                     it must be after itself and at most {n}",
                    s.freed_before
                )));
            }
            if let Some(offset) = s.offset {
                let end = offset.checked_add(s.size).ok_or_else(|| {
                    Error::InvalidPlan(format!("allocation {k} ends beyond 2^64 bytes"))
                })?;
                arena_bytes = arena_bytes.max(end);
            }
        }
        if usize::try_from(arena_bytes).is_err() {
            return Err(Error::InvalidPlan(format!(
                "an arena of {arena_bytes} bytes is beyond the address space"
            )));
        }
        check_disjoint(&slots)?;
        let mut due = vec![0u32; n + 2];
        for s in &slots {
            due[s.freed_before + 1] += 1;
        }
        for k in 1..due.len() {
            due[k] += due[k - 1];
        }
        let mut next = due.clone();
        let mut due_slots = vec![0u32; n];
        for (k, s) in slots.iter().enumerate() {
            due_slots[next[s.freed_before] as usize] = k as u32;
            next[s.freed_before] += 1;
        }
        // Within each group, in the order the plan frees them.
        for k in 0..=n {
            due_slots[due[k] as usize..due[k + 1] as usize]
                .sort_by_key(|&j| (slots[j as usize].free_event, j));
        }
        Ok(StepPlan {
            slots,
            due,
            due_slots,
            arena_bytes,
            cut: Vec::new(),
            planned: 0,
        })
    }

    /// The plan of a whole trace with its offsets (`offsets` by block id), as one
    /// step: the k-th allocation of the trace is the k-th of the step. Blocks the
    /// trace never frees stay live to the end of the step.
    pub fn from_placed(trace: &Trace, offsets: &[u64]) -> Result<StepPlan> {
        if offsets.len() != trace.allocations {
            return Err(Error::InvalidPlan(format!(
                "{} offsets for {} buffers",
                offsets.len(),
                trace.allocations
            )));
        }
        let lifetimes = trace.lifetimes();
        let range = 0..trace.events.len();
        Self::new(slots_of(trace, &lifetimes, range, |id| {
            Some(offsets[id as usize])
        }))
    }

    /// Reads a plan file: a step plan [`write`](Self::write) wrote
    /// (`slot,size,offset,freed_before,free_event`), or a whole trace's plan as `tensorpool plan`
    /// writes it (`id,lower,upper,size,offset`, the whole file one step). Errors name
    /// the file, and the line where one is wrong.
    pub fn read(path: impl AsRef<Path>) -> Result<StepPlan> {
        let path = path.as_ref();
        let named = |e: Error| match e {
            Error::InvalidPlan(why) => Error::InvalidPlan(format!("{}: {why}", path.display())),
            Error::MalformedTrace { .. } => Error::TraceFile {
                path: path.display().to_string(),
                reason: Box::new(e),
            },
            other => other,
        };
        let bytes = std::fs::read(path)
            .map_err(|e| Error::InvalidPlan(format!("{}: cannot read it: {e}", path.display())))?;
        if bytes.starts_with(HEADER.as_bytes()) {
            return Self::parse_steps(&bytes).map_err(named);
        }
        let trace = Trace::parse(&bytes).map_err(named)?;
        if trace.offsets.len() != trace.allocations {
            return Err(named(Error::InvalidPlan(
                "not a plan: its rows have no `offset` column (id,lower,upper,size,offset)".into(),
            )));
        }
        Self::from_placed(&trace, &trace.offsets).map_err(named)
    }

    /// Writes the plan as `slot,size,offset,freed_before,free_event` rows, one per allocation
    /// of the step in order (`offset` empty where the plan leaves the allocation to
    /// the manager), which [`read`](Self::read) reads back.
    pub fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(out, "{HEADER}")?;
        for (k, s) in self.slots.iter().enumerate() {
            let offset = s.offset.map(|o| o.to_string()).unwrap_or_default();
            writeln!(
                out,
                "{k},{},{offset},{},{}",
                s.size, s.freed_before, s.free_event
            )?;
        }
        Ok(())
    }

    /// Parses what [`write`](Self::write) wrote.
    fn parse_steps(bytes: &[u8]) -> Result<StepPlan> {
        use crate::trace::Location;
        let bad = |n: usize, why: String| Error::MalformedTrace {
            at: Location::Line(n),
            reason: why,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            bad(
                1 + bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count(),
                "not text".into(),
            )
        })?;
        let mut slots = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').collect();
            let [slot, size, offset, freed_before, free_event] = fields[..] else {
                return Err(bad(n, format!("expected 5 fields, found {}", fields.len())));
            };
            let number = |field: &str, what: &str| {
                field
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| bad(n, format!("{what} `{field}` is not a non-negative integer")))
            };
            if number(slot, "slot")? != slots.len() as u64 {
                return Err(bad(
                    n,
                    format!("slot {slot} out of order: expected {}", slots.len()),
                ));
            }
            slots.push(Slot {
                size: number(size, "size")?,
                offset: match offset.trim() {
                    "" => None,
                    o => Some(number(o, "offset")?),
                },
                freed_before: usize::try_from(number(freed_before, "freed_before")?)
                    .unwrap_or(usize::MAX),
                free_event: usize::try_from(number(free_event, "free_event")?)
                    .unwrap_or(usize::MAX),
            });
        }
        Self::new(slots)
    }

    /// Plans one step of `trace`: the steps are cut as `steps` says, the step that
    /// recurs most often (the latest of those on a tie) is planned with the greedy
    /// heuristics' best plan, improved by the [search](search::search) within
    /// `budget`. Offsets are multiples of `align` (a power of two).
    pub fn from_trace(
        trace: &Trace,
        steps: &Steps,
        align: u64,
        budget: search::Budget,
    ) -> Result<StepPlan> {
        if !align.is_power_of_two() {
            return Err(Error::InvalidAlignment {
                align: usize::try_from(align).unwrap_or(usize::MAX),
            });
        }
        if align > MOST_ALIGN {
            return Err(Error::AlignmentTooLarge {
                align: usize::try_from(align).unwrap_or(usize::MAX),
                max: MOST_ALIGN as usize,
            });
        }
        let tokens = tokens(trace);
        let (ranges, whole) = cut(trace, &tokens, steps)?;
        let chosen = most_common(&tokens, &ranges[..whole]);
        let range = ranges[chosen].clone();
        let lifetimes = trace.lifetimes();
        // The step's buffers that it frees, numbered in allocation order.
        let mut planned: Vec<Lifetime> = Vec::new();
        let mut local = FxHashMap::default();
        for (i, e) in trace.events[range.clone()].iter().enumerate() {
            if let Event::Alloc { id, size } = *e {
                let l = lifetimes[id as usize];
                if l.upper < range.end {
                    local.insert(id, planned.len());
                    let upper = l.upper - range.start;
                    planned.push(Lifetime::new(planned.len() as u32, i, upper, size));
                }
            }
        }
        let best = greedy::best(&planned, align);
        let start: Vec<u64> = best.placements.iter().map(|p| p.offset).collect();
        let found = search::search(&planned, &[], align, &start, budget);
        let mut plan = Self::new(slots_of(trace, &lifetimes, range.clone(), |id| {
            local.get(&id).map(|&k| found.offsets[k])
        }))?;
        plan.cut = ranges;
        plan.planned = chosen;
        Ok(plan)
    }

    /// The steps of the trace the plan was made from, as event ranges (what
    /// [`Steps`] cut), and the index of the one planned; `None` for a plan read from
    /// a file or made from slots.
    pub fn source(&self) -> Option<(&[Range<usize>], usize)> {
        (!self.cut.is_empty()).then_some((&self.cut[..], self.planned))
    }

    /// The step's allocations, in order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The arena the plan needs: the highest end of a planned slot.
    pub fn arena_bytes(&self) -> u64 {
        self.arena_bytes
    }

    /// The most bytes of planned slots live at once: no plan of the step needs less.
    pub fn peak_live_bytes(&self) -> u64 {
        let mut change: Vec<(usize, i128)> = Vec::with_capacity(2 * self.slots.len());
        for (k, s) in self.slots.iter().enumerate() {
            if s.offset.is_some() {
                change.push((k, i128::from(s.size)));
                change.push((s.freed_before, -i128::from(s.size)));
            }
        }
        // Frees first at the same point.
        change.sort_unstable();
        let (mut live, mut peak) = (0i128, 0i128);
        for (_, d) in change {
            live += d;
            peak = peak.max(live);
        }
        peak as u64
    }

    /// The slots the plan frees before the step's allocation `k` (`k` up to the
    /// number of slots).
    pub(crate) fn due_before(&self, k: usize) -> &[u32] {
        &self.due_slots[self.due[k] as usize..self.due[k + 1] as usize]
    }
}

/// The slots of the allocations in `range` of `trace`, planned where `offset` says.
fn slots_of(
    trace: &Trace,
    lifetimes: &[Lifetime],
    range: Range<usize>,
    offset: impl Fn(u32) -> Option<u64>,
) -> Vec<Slot> {
    // allocations before each event of the range
    let mut before = Vec::with_capacity(range.len() + 1);
    let mut count = 0usize;
    let mut ids = Vec::new();
    for e in &trace.events[range.clone()] {
        before.push(count);
        if let Event::Alloc { id, .. } = *e {
            count += 1;
            ids.push(id);
        }
    }
    before.push(count);
    ids.into_iter()
        .map(|id| {
            let l = lifetimes[id as usize];
            let freed_in_step = l.upper < range.end;
            Slot {
                size: l.size,
                offset: offset(id),
                freed_before: if freed_in_step {
                    before[l.upper - range.start]
                } else {
                    count
                },
                free_event: if freed_in_step {
                    l.upper - range.start
                } else {
                    range.len()
                },
            }
        })
        .collect()
}

/// Checks that no two planned slots live at once overlap, sweeping the step.
fn check_disjoint(slots: &[Slot]) -> Result<()> {
    // (at, 0 = free / 1 = allocation, slot): frees first at the same point
    let mut events: Vec<(usize, u8, usize)> = Vec::with_capacity(2 * slots.len());
    for (k, s) in slots.iter().enumerate() {
        if s.offset.is_some() && s.size > 0 {
            events.push((k, 1, k));
            events.push((s.freed_before, 0, k));
        }
    }
    events.sort_unstable();
    // Every end is at most the arena, which `StepPlan::new` checked fits.
    let at = |x: u64| usize::try_from(x).expect("within the address space");
    let mut live = AddressMap::new(); // slot by offset
    for (_, kind, k) in events {
        let (offset, size) = (slots[k].offset.expect("planned"), slots[k].size);
        if kind == 0 {
            live.remove(at(offset));
            continue;
        }
        if let Some((o, len, &other)) = live.overlapping(at(offset), at(size)) {
            return Err(Error::InvalidPlan(format!(
                "allocation {k} at [{offset}, {}) overlaps allocation {other} at \
                 [{o}, {}) while both are live",
                offset + size,
                o + len
            )));
        }
        live.insert(at(offset), at(size), k);
    }
    Ok(())
}

/// The event ranges of the steps of `trace`, and how many of the first are whole
/// steps to plan from (a period found leaves a last step cut short by the trace's
/// end, which a program would still begin with `step()`).
fn cut(trace: &Trace, tokens: &[u64], steps: &Steps) -> Result<(Vec<Range<usize>>, usize)> {
    let n = trace.events.len();
    let starts = match steps {
        Steps::At(starts) => {
            if starts.is_empty() {
                return Err(Error::InvalidPlan("no step boundaries given".into()));
            }
            for w in starts.windows(2) {
                if w[0] >= w[1] {
                    return Err(Error::InvalidPlan(format!(
                        "step boundaries must increase: {} then {}",
                        w[0], w[1]
                    )));
                }
            }
            if let Some(&last) = starts.last().filter(|&&s| s >= n) {
                return Err(Error::InvalidPlan(format!(
                    "step boundary {last} is beyond the trace's {n} events"
                )));
            }
            starts.clone()
        }
        Steps::Repeating => period_starts(trace, tokens)?,
    };
    let mut ranges: Vec<Range<usize>> = starts.windows(2).map(|w| w[0]..w[1]).collect();
    let last = *starts.last().expect("not empty");
    let whole = match steps {
        Steps::At(_) => ranges.len() + 1,
        Steps::Repeating => ranges.len(),
    };
    if last < n {
        ranges.push(last..n);
    }
    Ok((ranges, whole))
}

/// Each event as the period finder and the step comparison see it: an allocation by
/// its size, a free by how many allocations ago its block was allocated.
fn tokens(trace: &Trace) -> Vec<u64> {
    let mut allocated_at = vec![0usize; trace.allocations];
    let mut allocations = 0usize;
    trace
        .events
        .iter()
        .map(|e| match *e {
            Event::Alloc { id, size } => {
                allocated_at[id as usize] = allocations;
                allocations += 1;
                size << 1
            }
            Event::Free { id } => (((allocations - allocated_at[id as usize]) as u64) << 1) | 1,
        })
        .collect()
}

/// The smallest period of `s` (the last repeat may be cut short).
fn smallest_period(s: &[u64]) -> usize {
    // Knuth-Morris-Pratt's failure function: the longest proper border.
    let mut fail = vec![0usize; s.len()];
    let mut k = 0;
    for i in 1..s.len() {
        while k > 0 && s[i] != s[k] {
            k = fail[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        fail[i] = k;
    }
    s.len() - fail.last().copied().unwrap_or(0)
}

/// The starts of the complete steps of a trace that repeats after a prologue, and
/// maybe stops mid-step or ends differently.
fn period_starts(trace: &Trace, t: &[u64]) -> Result<Vec<usize>> {
    let n = t.len();
    // Where the repetition may begin, and where it may end: a prologue and an
    // epilogue of up to half the trace.
    let mut best: Option<(usize, usize, usize)> = None; // (start, end, period)
    'outer: for start in [0, n / 32, n / 16, n / 8, n / 4, n / 2] {
        for end in [n, n - n / 32, n - n / 16, n - n / 8, n - n / 4] {
            if end <= start {
                continue;
            }
            let p = smallest_period(&t[start..end]);
            if 2 * p <= end - start {
                best = Some((start, end, p));
                break 'outer;
            }
        }
    }
    let Some((mut start, mut end, p)) = best else {
        return Err(Error::InvalidPlan(
            "the trace does not repeat (no period covers two steps); name the steps' \
             first events instead"
                .into(),
        ));
    };
    // The stretch tried was a coarse guess: grow it while the period holds.
    while end < n && t[end] == t[end - p] {
        end += 1;
    }
    while start > 0 && t[start - 1] == t[start - 1 + p] {
        start -= 1;
    }
    // Cut where the fewest blocks are live, within the first period.
    let mut live = 0usize;
    let mut at = (usize::MAX, start);
    for (i, e) in trace.events.iter().enumerate().take(start + p) {
        if i >= start && live < at.0 {
            at = (live, i);
        }
        match e {
            Event::Alloc { .. } => live += 1,
            Event::Free { .. } => live -= 1,
        }
    }
    let first = at.1;
    // Every complete step's start within the stretch that repeats (what follows is
    // a step cut short), then the end of the last.
    let starts: Vec<usize> = (0..)
        .map(|k| first + k * p)
        .take_while(|&s| s + p <= end)
        .collect();
    match starts.last() {
        Some(&last) => Ok(starts.iter().copied().chain([last + p]).collect()),
        None => Err(Error::InvalidPlan("no complete step in the trace".into())),
    }
}

/// The step that recurs most often (by its events), the latest of those on a tie.
fn most_common(t: &[u64], ranges: &[Range<usize>]) -> usize {
    let mut counts: FxHashMap<&[u64], (usize, usize)> = FxHashMap::default();
    for (i, r) in ranges.iter().enumerate() {
        let entry = counts.entry(&t[r.clone()]).or_insert((0, i));
        entry.0 += 1;
        entry.1 = i;
    }
    let (_, &(_, i)) = counts
        .iter()
        .max_by_key(|(_, &(count, latest))| (count, latest))
        .expect("at least one step");
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::intervals::{self, Placed};

    /// MiniMalloc rows `(id, lower, upper, size)` as a trace.
    fn rows(rows: &[(u64, u64, u64, u64)]) -> Trace {
        let mut text = String::from("id,lower,upper,size\n");
        for (id, lower, upper, size) in rows {
            text += &format!("{id},{lower},{upper},{size}\n");
        }
        Trace::parse(text.as_bytes()).unwrap()
    }

    /// A prologue (a weight that lives throughout), `steps` steps of three buffers
    /// with `sizes`, and an epilogue buffer.
    fn program(steps: u64, sizes: [u64; 3]) -> Trace {
        let mut r = vec![(0, 0, 1000, 777)];
        for s in 0..steps {
            let (t, id) = (10 + 10 * s, 1 + 3 * s);
            r.push((id, t, t + 2, sizes[0]));
            r.push((id + 1, t + 1, t + 3, sizes[1]));
            r.push((id + 2, t + 2, t + 4, sizes[2]));
        }
        r.push((1000, 10 + 10 * steps, 10 + 10 * steps + 1, 12345));
        rows(&r)
    }

    #[test]
    fn the_period_is_found_past_a_prologue_and_an_epilogue() {
        let trace = program(6, [4096, 1024, 3072]);
        let (ranges, whole) = cut(&trace, &tokens(&trace), &Steps::Repeating).unwrap();
        assert_eq!(whole, 6, "{ranges:?}");
        for r in &ranges[..whole] {
            assert_eq!(r.len(), 6); // three allocations and three frees
        }
        // The epilogue after the last whole step is a step cut short.
        assert_eq!(ranges.len(), 7);
        assert_eq!(ranges[6].end, trace.events.len());
        let plan = StepPlan::from_trace(&trace, &Steps::Repeating, 64, search::Budget::steps(1000))
            .unwrap();
        let sizes: Vec<u64> = plan.slots().iter().map(|s| s.size).collect();
        assert_eq!(sizes, [4096, 1024, 3072]);
        assert_eq!((plan.arena_bytes(), plan.peak_live_bytes()), (5120, 5120));
        assert_eq!(plan.slots()[2].offset, plan.slots()[0].offset);
        let (steps, planned) = plan.source().unwrap();
        assert_eq!((steps[planned].len(), steps.len()), (6, 7));
        let freed: Vec<usize> = plan.slots().iter().map(|s| s.freed_before).collect();
        assert_eq!(freed, [2, 3, 3]);
        assert_eq!(plan.due_before(2), [0]);
        assert_eq!(plan.due_before(3), [1, 2]);
        // Written and read back, it is the same plan (its source, the trace's steps,
        // made the two unequal: a user hunt).
        let mut out = Vec::new();
        plan.write(&mut out).unwrap();
        let path = std::env::temp_dir().join(format!("tp-step-eq-{}.csv", std::process::id()));
        std::fs::write(&path, &out).unwrap();
        let read = StepPlan::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(read.source().is_none());
        assert_eq!(read, plan);
    }

    #[test]
    fn a_trace_that_does_not_repeat_is_refused_with_advice() {
        let trace = rows(&[(0, 0, 2, 10), (1, 1, 3, 20), (2, 2, 5, 30), (3, 3, 4, 40)]);
        let e = StepPlan::from_trace(&trace, &Steps::Repeating, 64, search::Budget::steps(10))
            .unwrap_err();
        assert!(e.to_string().contains("does not repeat"), "{e}");
    }

    #[test]
    fn named_steps_plan_the_one_that_recurs_and_leave_what_outlives_it() {
        // A warm-up step of other sizes, then four alike; a buffer of each step
        // lives into the next (it is the manager's).
        let mut r = vec![(0, 0, 2, 99), (1, 1, 3, 98)];
        for s in 0..4 {
            let (t, id) = (10 + 10 * s, 10 + 3 * s);
            r.push((id, t, t + 2, 4096));
            r.push((id + 1, t + 1, t + 15, 512)); // into the next step
            r.push((id + 2, t + 2, t + 4, 3072));
        }
        let trace = rows(&r);
        let starts: Vec<usize> = [0, 10, 20, 30, 40]
            .iter()
            .map(|&t| trace.times.iter().position(|&x| x >= t).unwrap())
            .collect();
        let plan =
            StepPlan::from_trace(&trace, &Steps::At(starts), 64, search::Budget::steps(1000))
                .unwrap();
        let sizes: Vec<u64> = plan.slots().iter().map(|s| s.size).collect();
        assert_eq!(sizes, [4096, 512, 3072]);
        assert_eq!(plan.slots()[1].offset, None);
        assert_eq!(plan.arena_bytes(), 4096);
    }

    #[test]
    fn steps_are_read_from_text() {
        assert_eq!("repeating".parse::<Steps>().unwrap(), Steps::Repeating);
        assert_eq!(
            "0, 12,40".parse::<Steps>().unwrap(),
            Steps::At(vec![0, 12, 40])
        );
        let e = "0,x".parse::<Steps>().unwrap_err().to_string();
        assert!(e.contains("`0,x`") && e.contains("repeating"), "{e}");
    }

    #[test]
    fn bad_boundaries_are_named() {
        let trace = program(2, [64, 64, 64]);
        for (steps, needle) in [
            (Steps::At(vec![]), "no step boundaries"),
            (Steps::At(vec![3, 3]), "must increase"),
            (Steps::At(vec![1, 10_000]), "beyond the trace"),
        ] {
            let e =
                StepPlan::from_trace(&trace, &steps, 64, search::Budget::steps(10)).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        let e = StepPlan::from_trace(&trace, &Steps::Repeating, 48, search::Budget::steps(10))
            .unwrap_err();
        assert!(matches!(e, Error::InvalidAlignment { align: 48 }), "{e}");
    }

    #[test]
    fn overlapping_or_misordered_slots_are_refused() {
        let slot = |size, offset, freed_before| Slot {
            size,
            offset: Some(offset),
            freed_before,
            free_event: 0,
        };
        let e = StepPlan::new(vec![slot(100, 0, 2), slot(100, 50, 2)]).unwrap_err();
        assert!(e.to_string().contains("overlaps allocation 0"), "{e}");
        // Back to back, or one after the other in time: fine.
        StepPlan::new(vec![slot(100, 0, 2), slot(100, 100, 2)]).unwrap();
        StepPlan::new(vec![slot(100, 0, 1), slot(100, 50, 2)]).unwrap();
        let e = StepPlan::new(vec![slot(100, 0, 0)]).unwrap_err();
        assert!(e.to_string().contains("after itself"), "{e}");
        let e = StepPlan::new(vec![slot(100, u64::MAX, 1)]).unwrap_err();
        assert!(e.to_string().contains("beyond"), "{e}");
    }

    #[test]
    fn a_plan_file_is_read_back_as_one_step() {
        let placed = [
            Placed {
                id: 0,
                lower: 0,
                upper: 2,
                size: 4096,
                offset: 0,
            },
            Placed {
                id: 1,
                lower: 1,
                upper: 4,
                size: 1024,
                offset: 4096,
            },
            Placed {
                id: 2,
                lower: 3,
                upper: 5,
                size: 3072,
                offset: 0,
            },
        ];
        let dir = std::env::temp_dir().join(format!("tp-step-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plan.csv");
        let mut out = Vec::new();
        intervals::write(&mut out, &placed).unwrap();
        std::fs::write(&path, &out).unwrap();
        let plan = StepPlan::read(&path).unwrap();
        assert_eq!(
            plan.slots(),
            [
                Slot {
                    size: 4096,
                    offset: Some(0),
                    freed_before: 2,
                    free_event: 2,
                },
                Slot {
                    size: 1024,
                    offset: Some(4096),
                    freed_before: 3,
                    free_event: 4,
                },
                Slot {
                    size: 3072,
                    offset: Some(0),
                    freed_before: 3,
                    free_event: 5,
                },
            ]
        );
        // A step plan written and read back, an unplanned slot included.
        let mut step = plan.slots().to_vec();
        step[1].offset = None;
        let step = StepPlan::new(step).unwrap();
        let mut out = Vec::new();
        step.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "slot,size,offset,freed_before,free_event\n0,4096,0,2,2\n1,1024,,3,4\n2,3072,0,3,5\n"
        );
        std::fs::write(&path, &out).unwrap();
        assert_eq!(StepPlan::read(&path).unwrap(), step);
        for (rows, needle) in [
            ("0,4096,0,2,2\n2,1,0,3,3\n", "line 3: slot 2 out of order"),
            ("0,4096,x,2,2\n", "offset `x`"),
            ("0,4096,0,2\n", "expected 5 fields"),
            ("0,4096,0,0,0\n", "after itself"),
        ] {
            std::fs::write(
                &path,
                format!("slot,size,offset,freed_before,free_event\n{rows}"),
            )
            .unwrap();
            let e = StepPlan::read(&path).unwrap_err().to_string();
            assert!(
                e.contains("plan.csv") && e.contains(needle),
                "{needle}: {e}"
            );
        }
        // A plan that overlaps, and a trace without offsets, are refused by name.
        let mut bad = placed;
        bad[2].offset = 2048;
        let mut out = Vec::new();
        intervals::write(&mut out, &bad).unwrap();
        std::fs::write(&path, &out).unwrap();
        let e = StepPlan::read(&path).unwrap_err().to_string();
        assert!(e.contains("plan.csv") && e.contains("overlaps"), "{e}");
        std::fs::write(&path, "id,lower,upper,size\n0,0,1,5\n").unwrap();
        let e = StepPlan::read(&path).unwrap_err().to_string();
        assert!(e.contains("no `offset` column"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
