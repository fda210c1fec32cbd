//! `tensorpool plan`: how far online allocation is from the best possible, and which
//! configuration to use for a trace.
//!
//! For one trace it reports:
//!
//! - the **lower bound**: the peak of live bytes, which no allocator can go below;
//! - what the **default configuration** reserves when the trace is replayed online;
//! - a **suggested configuration**: the thresholds and class spacing that reserve least
//!   on this trace, chosen by replaying it through candidates drawn from its size
//!   histogram; written as a TOML file that `replay --config`, Rust
//!   (`Config::from_file`) and Python accept;
//! - an **offline plan** of the whole trace, as static-graph planners make one: the
//!   best of the published greedy heuristics ([`greedy`]: by size, breadth, lifetime,
//!   area and in allocation order, each buffer at the smallest gap among the buffers
//!   live at the same time that holds it). The plan is written out
//!   (`id,lower,upper,size,offset`, lifetimes in events) and verified: no two buffers
//!   live at the same time overlap. The report says whether it is above what the
//!   online manager reserves: it is not while the manager's blocks share one
//!   expandable segment (everything below `huge_threshold`, the default), since the
//!   manager's own placement is a candidate; huge blocks get segments of their own,
//!   mapped wherever the system puts them, which the manager's placement cannot show
//!   in one arena, and then the greedy orders alone stand for it.

pub mod online;

use std::ptr::NonNull;
use tensorpool::address_map::AddressMap;
pub use tensorpool::plan::{greedy, greedy_by_size, search, Placement};
use tensorpool::plan::{StepPlan, Steps};
use tensorpool::{MemoryManager, PlannedArena};

use crate::error::{CliError, Overlap, Result};
use crate::peers::{Kind, Subject};
use crate::replay;
use serde::Serialize;
use std::alloc::Layout;
use std::path::Path;
use tensorpool::trace::intervals::{self, Placed};
use tensorpool::trace::{Event, Lifetime, Trace};
use tensorpool::Config;

/// How `plan` plans: the alignment of every offset, and how long the search may look
/// for a smaller arena than the heuristics'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Every offset of the plan is a multiple of this (a power of two).
    pub align: u64,
    /// The search's budget.
    pub budget: search::Budget,
}

impl Options {
    /// The default alignment: a cache line, what tensorpool gives every block.
    pub const ALIGN: u64 = 64;
    /// The default time the search may take.
    pub const TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
}

impl Default for Options {
    fn default() -> Self {
        Options {
            align: Options::ALIGN,
            budget: search::Budget::time(Options::TIME_LIMIT),
        }
    }
}

/// Checks that no two buffers live at the same time overlap in the plan, sweeping the
/// events in order. Returns the first conflict.
pub fn verify(trace: &Trace, placements: &[Placement]) -> Result<(), Overlap> {
    // Offsets of plans made in this process: within the address space.
    let at = |x: u64| usize::try_from(x).expect("a plan's offsets fit the address space");
    let mut live = AddressMap::new(); // block id by offset
    for event in &trace.events {
        match *event {
            Event::Alloc { id, size } if size > 0 => {
                let offset = placements[id as usize].offset;
                let range = (offset, offset + size);
                if let Some((o, len, &other)) = live.overlapping(at(offset), at(size)) {
                    let (o, other_range) = (o as u64, (o as u64, (o + len) as u64));
                    // The lower one first (the one already live on a tie).
                    return Err(if o <= offset {
                        Overlap {
                            first: other,
                            first_range: other_range,
                            second: id,
                            second_range: range,
                        }
                    } else {
                        Overlap {
                            first: id,
                            first_range: range,
                            second: other,
                            second_range: other_range,
                        }
                    });
                }
                live.insert(at(offset), at(size), id);
            }
            Event::Alloc { .. } => {}
            Event::Free { id } => {
                if placements[id as usize].lifetime.size > 0 {
                    live.remove(at(placements[id as usize].offset));
                }
            }
        }
    }
    Ok(())
}

/// One replay of a trace through tensorpool.
pub struct Online {
    /// The bytes reserved at the peak.
    pub peak: u64,
    /// Where each block was placed, by id (0 for blocks never allocated).
    pub addresses: Vec<u64>,
}

/// Replays `trace` through tensorpool with `config` (pages untouched; the typed path,
/// as `replay` uses): its peak reservation and where it put each block.
pub fn online(trace: &Trace, config: &Config) -> Result<Online> {
    let subject = Subject::new(Kind::Tensorpool, config)?;
    let sizes = trace.block_sizes();
    let layouts: Vec<Layout> = sizes.iter().copied().map(replay::layout_of).collect();
    let mut peak = 0usize;
    let mut addresses = vec![0u64; sizes.len()];
    replay::run_once(
        trace,
        &sizes,
        &layouts,
        &subject,
        false,
        None,
        |_, _, id, ptr| {
            peak = peak.max(subject.reserved_bytes());
            addresses[id as usize] = ptr.as_ptr().addr() as u64;
        },
    )?;
    Ok(Online {
        peak: peak as u64,
        addresses,
    })
}

/// The bytes tensorpool reserves at its peak when `trace` is replayed with `config`.
pub fn online_peak(trace: &Trace, config: &Config) -> Result<u64> {
    online(trace, config).map(|o| o.peak)
}

/// Candidate configurations for `trace`: small/large thresholds at the powers of two
/// that separate its sizes, class spacings, commit steps, and whether the largest
/// blocks get dedicated segments.
fn candidates(trace: &Trace) -> Vec<(String, Config)> {
    let sizes = trace.block_sizes();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut thresholds = vec![0usize];
    let mut t = 1024usize;
    while t <= (1 << 20) && (t as u64) < largest.max(2048) * 2 {
        thresholds.push(t);
        t *= 4;
    }
    let mut out = Vec::new();
    for &small in &thresholds {
        for per_doubling in [4, 8] {
            for commit in [16 << 10, 64 << 10, 2 << 20] {
                if small == 0 && per_doubling == 4 {
                    continue; // no classes: the spacing does not matter
                }
                let config = Config::builder()
                    .small_threshold(small)
                    .classes_per_doubling(per_doubling)
                    .commit_granularity(commit)
                    .build();
                if let Ok(config) = config {
                    let name = match small {
                        0 => format!(
                            "no size classes, commits of {}",
                            tensorpool::bytes::format_bytes(commit)
                        ),
                        _ => format!(
                            "size classes up to {}, {per_doubling} per doubling, commits of {}",
                            tensorpool::bytes::format_bytes(small),
                            tensorpool::bytes::format_bytes(commit)
                        ),
                    };
                    out.push((name, config));
                }
            }
        }
    }
    out
}

/// The search's name in reports.
const SEARCH: &str = "search (MiniMalloc's method)";

/// One planning method's result.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    /// The method: a greedy order, or the online manager's placement with a config.
    pub method: String,
    /// Its arena.
    pub bytes: u64,
    /// `bytes / peak_live_bytes`.
    pub efficiency: f64,
}

/// What `plan` found for one trace.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The trace as given.
    pub trace: String,
    /// Buffers planned.
    pub buffers: usize,
    /// The lower bound: the most bytes live at once.
    pub peak_live_bytes: u64,
    /// What the default configuration reserves at its peak, online.
    pub default_reserved_bytes: u64,
    /// `default_reserved_bytes / peak_live_bytes`.
    pub default_efficiency: f64,
    /// The suggested configuration, described.
    pub suggested: String,
    /// Where it was written.
    pub suggested_config_file: String,
    /// What it reserves at its peak, online.
    pub suggested_reserved_bytes: u64,
    /// `suggested_reserved_bytes / peak_live_bytes`.
    pub suggested_efficiency: f64,
    /// The size of the offline plan's arena.
    pub offline_plan_bytes: u64,
    /// The method that found it.
    pub offline_method: String,
    /// Every method's arena.
    pub offline_methods: Vec<MethodResult>,
    /// The offline plan is at most what the online manager reserves with the default
    /// and the suggested config (always, while the manager's blocks share one
    /// expandable segment; with huge blocks, only as far as the greedy orders go).
    pub offline_at_most_online: bool,
    /// `offline_plan_bytes / peak_live_bytes`.
    pub offline_efficiency: f64,
    /// Where the offline plan was written.
    pub plan_file: String,
    /// The plan was checked: no two buffers live together overlap.
    pub verified: bool,
    /// Every offset of the plan is a multiple of this.
    pub alignment: u64,
    /// A lower bound on every plan at that alignment: `peak_live_bytes` with each
    /// live buffer's size rounded up to the alignment except the top one's.
    pub aligned_lower_bound_bytes: u64,
    /// The offline plan is the smallest possible at that alignment: it equals the
    /// aligned lower bound, or the search proved that nothing smaller exists.
    pub proven_optimal: bool,
    /// What the search did.
    pub search: SearchReport,
    /// The capacity asked for (`--capacity`), if one was, and whether the plan fits
    /// in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityReport>,
    /// The plan of one step, with `--step`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_plan: Option<StepReport>,
    /// The plan itself, by buffer id (for `--plot`; the plan file holds it too).
    #[serde(skip)]
    pub placements: Vec<Placement>,
}

/// The capacity a plan was asked to fit in.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CapacityReport {
    /// Bytes.
    pub bytes: u64,
    /// Whether the plan fits in them.
    pub met: bool,
}

/// The plan of one step (`--step`), which a `PlannedArena` runs.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Steps the trace was cut into.
    pub steps: usize,
    /// The planned step's first event.
    pub first_event: usize,
    /// Events in the step.
    pub events: usize,
    /// Allocations in the step.
    pub allocations: usize,
    /// Those the plan places (the others outlive the step: the manager serves them).
    pub planned: usize,
    /// The arena the step needs.
    pub arena_bytes: u64,
    /// The most bytes of planned allocations live at once.
    pub peak_live_bytes: u64,
    /// Where the step plan was written.
    pub file: String,
    /// The trace replayed with the default config through a `PlannedArena` running
    /// the plan (its region and fallbacks from a manager), and through the manager
    /// alone.
    pub replay: PlannedReplay,
}

/// A trace replayed through a `PlannedArena` ([`replay_planned`]).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedReplay {
    /// Allocations the plan served.
    pub served: u64,
    /// Allocations that fell back to the manager.
    pub fallback: u64,
    /// Peak reserved bytes: the manager under the arena (its region included).
    pub peak_reserved_bytes: u64,
    /// Peak reserved bytes of the manager alone on the same trace.
    pub manager_peak_reserved_bytes: u64,
}

/// Replays `trace` through a `PlannedArena` running `plan` (events before the first
/// step through its manager; `step()` at every step's first event) and through a
/// manager alone, both with `config`.
pub fn replay_planned(trace: &Trace, plan: &StepPlan, config: &Config) -> Result<PlannedReplay> {
    // Each step's first event (a plan from a file: the whole trace is one step).
    let step_starts: Vec<usize> = plan
        .source()
        .map_or(vec![0], |(cut, _)| cut.iter().map(|r| r.start).collect());
    let sizes = trace.block_sizes();
    // Raw blocks on both sides: the arena's checked `free` takes them.
    let raw = |mm: &MemoryManager, size: u64| {
        let layout = replay::layout_of(size);
        mm.allocate_raw(layout.size(), layout.align())
    };
    let alone = MemoryManager::new(config.clone())?;
    let mut ptrs: Vec<Option<NonNull<u8>>> = vec![None; sizes.len()];
    for e in &trace.events {
        match *e {
            Event::Alloc { id, size } => ptrs[id as usize] = Some(raw(&alone, size)?),
            Event::Free { id } => {
                let p = ptrs[id as usize].take().expect("freed after allocated");
                alone.free_raw(p.as_ptr())?;
            }
        }
    }
    free_all(&alone, &mut ptrs)?;
    // The arena is made where a program would make it: before its first step.
    let mm = MemoryManager::new(config.clone())?;
    let mut arena: Option<PlannedArena> = None;
    let mut starts = step_starts.iter().copied().peekable();
    for (i, e) in trace.events.iter().enumerate() {
        if starts.peek() == Some(&i) {
            starts.next();
            if arena.is_none() {
                arena = Some(PlannedArena::new(&mm, plan.clone())?);
            }
            arena.as_ref().expect("made").step();
        }
        match (*e, &arena) {
            (Event::Alloc { id, size }, None) => ptrs[id as usize] = Some(raw(&mm, size)?),
            (Event::Alloc { id, size }, Some(arena)) => {
                let layout = replay::layout_of(size);
                ptrs[id as usize] = Some(arena.allocate(layout.size(), layout.align())?);
            }
            (Event::Free { id }, None) => {
                let p = ptrs[id as usize].take().expect("freed after allocated");
                mm.free_raw(p.as_ptr())?;
            }
            (Event::Free { id }, Some(arena)) => {
                let p = ptrs[id as usize].take().expect("freed after allocated");
                arena.free(p)?;
            }
        }
    }
    let stats = arena.as_ref().map(PlannedArena::stats).unwrap_or_default();
    match &arena {
        Some(arena) => {
            for p in ptrs.iter_mut().filter_map(Option::take) {
                arena.free(p)?;
            }
        }
        None => free_all(&mm, &mut ptrs)?,
    }
    Ok(PlannedReplay {
        served: stats.served,
        fallback: stats.fallback(),
        peak_reserved_bytes: mm.stats().peak_reserved_bytes as u64,
        manager_peak_reserved_bytes: alone.stats().peak_reserved_bytes as u64,
    })
}

/// Frees the raw blocks of `mm` still in `ptrs`.
fn free_all(mm: &MemoryManager, ptrs: &mut [Option<NonNull<u8>>]) -> Result<()> {
    for p in ptrs.iter_mut().filter_map(Option::take) {
        mm.free_raw(p.as_ptr())?;
    }
    Ok(())
}

/// Plans one step of `trace` (cut as `steps` say) with `options`, and writes the
/// step plan to `out`.
pub fn plan_step(
    trace: &Trace,
    steps: &Steps,
    options: &Options,
    out: &Path,
) -> Result<StepReport> {
    let plan = StepPlan::from_trace(trace, steps, options.align, options.budget)?;
    let mut text = Vec::new();
    plan.write(&mut text).map_err(CliError::file(out))?;
    std::fs::write(out, text).map_err(CliError::file(out))?;
    let (cut, planned) = plan.source().expect("planned from a trace");
    let range = cut[planned].clone();
    Ok(StepReport {
        steps: cut.len(),
        first_event: range.start,
        events: range.len(),
        allocations: plan.slots().len(),
        planned: plan
            .slots()
            .iter()
            .filter(|s| s.offset.is_some() && s.size > 0)
            .count(),
        arena_bytes: plan.arena_bytes(),
        peak_live_bytes: plan.peak_live_bytes(),
        file: out.display().to_string(),
        replay: replay_planned(trace, &plan, &Config::default())?,
    })
}

/// What the search did, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    /// The arena it ended with (at most the heuristics' best).
    pub bytes: u64,
    /// Steps (nodes of the search tree) taken.
    pub steps: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// Buffers of partitions too large to search.
    pub unsearched_buffers: usize,
    /// Each smaller arena the search found, and when (how the plan converged).
    pub improvements: Vec<Improvement>,
}

/// A smaller arena the search found.
#[derive(Debug, Clone, Serialize)]
pub struct Improvement {
    /// Seconds into the search.
    pub seconds: f64,
    /// The arena.
    pub bytes: u64,
}

/// Runs the search ([`search::search`]) on `trace`'s buffers (`lifetimes`) from the
/// plan `start` (offsets by id), as `options` say.
pub fn search_from(
    trace: &Trace,
    lifetimes: &[Lifetime],
    start: &[u64],
    options: &Options,
) -> search::Searched {
    if trace.format.times_are_nanoseconds() || trace.times.is_empty() {
        return search::search(
            lifetimes,
            &trace.times,
            options.align,
            start,
            options.budget,
        );
    }
    // An instance's own times: buffers that start or end at the same moment share a
    // section boundary there (events would cut a section between each), and overlap
    // in time exactly as in events (frees come first on a tie).
    let end = trace.times.last().map_or(0, |&t| t + 1);
    let at = |e: usize| trace.times.get(e).map_or(end, |&t| t) as usize;
    let timed: Vec<Lifetime> = lifetimes
        .iter()
        .map(|l| Lifetime {
            lower: at(l.lower),
            upper: at(l.upper),
            ..*l
        })
        .collect();
    search::search(&timed, &[], options.align, start, options.budget)
}

/// Plans `trace` as `options` say, writing the suggested configuration to
/// `config_out` and the offline plan to `plan_out`.
pub fn plan(
    label: &str,
    trace: &Trace,
    config_out: &Path,
    plan_out: &Path,
    options: &Options,
) -> Result<PlanReport> {
    let live = trace.peak_live_bytes();
    let default_run = online(trace, &Config::default())?;
    let default_peak = default_run.peak;
    // The default is a candidate too (the first): a suggestion never reserves more.
    let (mut suggested, mut config, mut suggested_run) = (
        "the default configuration".to_string(),
        Config::default(),
        None,
    );
    let mut suggested_peak = default_peak;
    for (name, candidate) in candidates(trace) {
        let run = online(trace, &candidate)?;
        if run.peak < suggested_peak {
            suggested_peak = run.peak;
            (suggested, config, suggested_run) = (name, candidate, Some(run));
        }
    }
    let text = format!(
        "# Suggested by `tensorpool plan` for {label}: {suggested}.\n# Peak reserved {suggested_peak} bytes for a live peak of {live}.\n{}",
        config.to_toml_string()
    );
    std::fs::write(config_out, text).map_err(CliError::file(config_out))?;
    let lifetimes = trace.lifetimes();
    // The greedy orders, then the online manager's own placements (with the default
    // and the suggested config): the smallest arena wins, the first on a tie.
    let greedy = greedy::best(&lifetimes, options.align);
    let mut methods: Vec<(String, u64)> = greedy
        .arenas
        .iter()
        .map(|&(order, bytes)| (order.name().to_string(), bytes))
        .collect();
    let mut chosen = (
        greedy.order.name().to_string(),
        greedy.placements,
        greedy.arena,
    );
    // The two replays above, not run again.
    let suggested_run = suggested_run.as_ref().unwrap_or(&default_run);
    for (name, run) in [
        ("online manager, default config", &default_run),
        ("online manager, suggested config", suggested_run),
    ] {
        let (placements, bytes) = online::placements(&lifetimes, &run.addresses, options.align);
        methods.push((name.to_string(), bytes));
        if bytes < chosen.2 {
            chosen = (name.to_string(), placements, bytes);
        }
    }
    // The search starts from the best of them.
    let start: Vec<u64> = chosen.1.iter().map(|p| p.offset).collect();
    let searched = search_from(trace, &lifetimes, &start, options);
    methods.push((SEARCH.to_string(), searched.arena));
    if searched.arena < chosen.2 {
        let placements = lifetimes
            .iter()
            .map(|&lifetime| Placement {
                lifetime,
                offset: searched.offsets[lifetime.id as usize],
            })
            .collect();
        chosen = (SEARCH.to_string(), placements, searched.arena);
    }
    let (method, placements, arena) = chosen;
    verify(trace, &placements)?;
    if let Some(p) = placements
        .iter()
        .find(|p| p.lifetime.size > 0 && p.offset % options.align != 0)
    {
        return Err(CliError::Unaligned {
            id: p.lifetime.id,
            offset: p.offset,
            align: options.align,
        });
    }
    let placed: Vec<Placed> = placements
        .iter()
        .map(|p| Placed {
            id: p.lifetime.id as u64,
            lower: p.lifetime.lower as u64,
            upper: p.lifetime.upper as u64,
            size: p.lifetime.size,
            offset: p.offset,
        })
        .collect();
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(plan_out).map_err(CliError::file(plan_out))?);
    intervals::write(&mut file, &placed).map_err(CliError::file(plan_out))?;
    let ratio = |bytes: u64| bytes as f64 / live.max(1) as f64;
    Ok(PlanReport {
        trace: label.to_string(),
        buffers: lifetimes.len(),
        peak_live_bytes: live,
        default_reserved_bytes: default_peak,
        default_efficiency: ratio(default_peak),
        suggested,
        suggested_config_file: config_out.display().to_string(),
        suggested_reserved_bytes: suggested_peak,
        suggested_efficiency: ratio(suggested_peak),
        offline_plan_bytes: arena,
        offline_method: method,
        offline_methods: methods
            .into_iter()
            .map(|(method, bytes)| MethodResult {
                method,
                bytes,
                efficiency: ratio(bytes),
            })
            .collect(),
        offline_at_most_online: arena <= default_peak.min(suggested_peak),
        offline_efficiency: ratio(arena),
        plan_file: plan_out.display().to_string(),
        verified: true,
        alignment: options.align,
        aligned_lower_bound_bytes: searched.lower_bound,
        proven_optimal: searched.proven_optimal,
        capacity: options.budget.capacity.map(|bytes| CapacityReport {
            bytes,
            met: arena <= bytes,
        }),
        search: SearchReport {
            bytes: searched.arena,
            steps: searched.steps,
            seconds: searched.elapsed.as_secs_f64(),
            unsearched_buffers: searched.unsearched_buffers,
            improvements: searched
                .improvements
                .iter()
                .map(|&(at, bytes)| Improvement {
                    seconds: at.as_secs_f64(),
                    bytes,
                })
                .collect(),
        },
        step_plan: None,
        placements,
    })
}

/// The report for people.
pub fn text(r: &PlanReport) -> String {
    let b = |n: u64| tensorpool::bytes::format_bytes(n as usize);
    let mut out = format!(
        "{}: {} buffers\n  lower bound (peak live)        {:>12}\n  default config, online         {:>12}  {:.3}x\n  suggested config, online       {:>12}  {:.3}x  ({}; written to {})\n  offline plan                   {:>12}  {:.3}x  ({}; verified; written to {})\n",
        r.trace,
        r.buffers,
        b(r.peak_live_bytes),
        b(r.default_reserved_bytes),
        r.default_efficiency,
        b(r.suggested_reserved_bytes),
        r.suggested_efficiency,
        r.suggested,
        r.suggested_config_file,
        b(r.offline_plan_bytes),
        r.offline_efficiency,
        r.offline_method,
        r.plan_file
    );
    for m in &r.offline_methods {
        out += &format!(
            "    {:<34} {:>12}  {:.3}x\n",
            m.method,
            b(m.bytes),
            m.efficiency
        );
    }
    out += &format!(
        "  offsets aligned to {} B; aligned lower bound {} bytes; offline plan {} bytes: {} \
         (search: {} steps in {:.2} s{})\n",
        r.alignment,
        r.aligned_lower_bound_bytes,
        r.offline_plan_bytes,
        if r.proven_optimal {
            "proven optimal"
        } else {
            "not proven optimal"
        },
        r.search.steps,
        r.search.seconds,
        match r.search.unsearched_buffers {
            0 => String::new(),
            n => format!("; {n} buffers in partitions too large to search"),
        }
    );
    if let Some(c) = &r.capacity {
        out += &format!(
            "  capacity asked for, {}: {}\n",
            b(c.bytes),
            match c.met {
                true => "met".to_string(),
                false => format!("not met (the plan needs {})", b(r.offline_plan_bytes)),
            }
        );
    }
    if let Some(s) = &r.step_plan {
        out += &format!(
            "  one step (events {}..{} of {} steps): {} allocations, {} planned; arena {} bytes \
             (peak live {} bytes): written to {}\n  replayed through a PlannedArena: {} \
             allocations served by the plan, {} fell back; peak reserved {} bytes, the \
             manager alone {} bytes ({:.3}x)\n",
            s.first_event,
            s.first_event + s.events,
            s.steps,
            s.allocations,
            s.planned,
            s.arena_bytes,
            s.peak_live_bytes,
            s.file,
            s.replay.served,
            s.replay.fallback,
            s.replay.peak_reserved_bytes,
            s.replay.manager_peak_reserved_bytes,
            s.replay.peak_reserved_bytes as f64
                / s.replay.manager_peak_reserved_bytes.max(1) as f64
        );
    }
    if !r.offline_at_most_online {
        out += "  note: the offline plan is above what the online manager reserves (its huge \
                blocks had segments of their own, mapped wherever the system put them, and no \
                method here found as good a placement in one arena)\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MiniMalloc instances whose search fits in the golden test's steps: the arena
    /// it reaches and whether it proves it optimal.
    const GOLDEN: [(&str, u64, bool); 4] = [
        ("mm_C", 1_039_360, true),
        ("mm_G", 1 << 20, true),
        ("mm_H", 1 << 20, true),
        ("mm_K", 1 << 20, true),
    ];

    #[test]
    fn greedy_places_in_the_best_gap() {
        // Two long buffers leave a gap of 40 between them while a third is live.
        let l = [
            Lifetime::new(0, 0, 10, 100),
            Lifetime::new(1, 0, 10, 60),
            Lifetime::new(2, 2, 4, 50),
            Lifetime::new(3, 5, 8, 30),
        ];
        let (p, arena) = greedy_by_size(&l);
        assert_eq!(p[0].offset, 0);
        assert_eq!(p[1].offset, 100);
        // Buffer 2 does not fit below anything: on top. Buffer 3 fits the same place
        // (buffer 2 is dead by then).
        assert_eq!(p[2].offset, 160);
        assert_eq!(p[3].offset, 160);
        assert_eq!(arena, 210);
    }

    #[test]
    fn the_report_says_when_the_plan_is_above_online_and_suggests_no_worse_than_default() {
        // Huge blocks (segments of their own): the manager reserves 3.78 GiB, no
        // method finds an arena that small, and the report must say so. Then an
        // ordinary trace, where the plan is at most online.
        let huge = b"id,lower,upper,size\n0,5,9,1316166824\n1,7,11,1638544008\n\
            2,2,6,1284298074\n3,5,7,1447481864\n4,0,4,1223275\n5,2,5,2804651\n";
        let small = b"id,lower,upper,size\n0,0,4,100000\n1,1,2,3000000\n2,2,5,3000000\n3,3,6,64\n";
        let dir = std::env::temp_dir().join(format!("tp-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for bytes in [&huge[..], &small[..]] {
            let trace = Trace::parse(bytes).unwrap();
            let r = plan(
                "t",
                &trace,
                &dir.join("c.toml"),
                &dir.join("p.csv"),
                &Options::default(),
            )
            .unwrap();
            let online = r.default_reserved_bytes.min(r.suggested_reserved_bytes);
            assert_eq!(r.offline_at_most_online, r.offline_plan_bytes <= online);
            assert_eq!(text(&r).contains("note:"), !r.offline_at_most_online);
            assert!(r.suggested_reserved_bytes <= r.default_reserved_bytes);
            assert!(r.offline_plan_bytes >= r.peak_live_bytes);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What the search makes of MiniMalloc's instances from greedy's best plan,
    /// bounded by steps (not time, so that it does not depend on the machine), at
    /// MiniMalloc's capacity of 1 MiB: the arena and whether it is proven optimal.
    /// `scripts/tables.py` prints these figures for every instance (see the
    /// Planning section of docs/BENCHMARKS.md).
    #[test]
    fn golden_search_figures_on_minimalloc_instances() {
        const STEPS: u64 = 14_000;
        for (name, arena, proven) in GOLDEN {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../traces/intervals")
                .join(format!("{name}.csv.gz"));
            let trace = Trace::read(&path).unwrap();
            let lifetimes = trace.lifetimes();
            let start = greedy::best(&lifetimes, Options::ALIGN);
            let offsets: Vec<u64> = start.placements.iter().map(|p| p.offset).collect();
            let options = Options {
                align: Options::ALIGN,
                budget: search::Budget {
                    time: None,
                    steps: Some(STEPS),
                    capacity: Some(1 << 20),
                },
            };
            let found = search_from(&trace, &lifetimes, &offsets, &options);
            let placements: Vec<Placement> = lifetimes
                .iter()
                .map(|&lifetime| Placement {
                    lifetime,
                    offset: found.offsets[lifetime.id as usize],
                })
                .collect();
            verify(&trace, &placements).unwrap();
            assert!(placements.iter().all(|p| p.offset % Options::ALIGN == 0));
            assert_eq!(
                (found.arena, found.proven_optimal),
                (arena, proven),
                "{name}: {found:?}"
            );
            assert!(found.steps <= STEPS);
        }
    }

    #[test]
    fn a_larger_alignment_than_the_replay_gives_is_honoured() {
        // The online manager's blocks are 64-byte aligned; a plan at 128 must still
        // align every offset (its placement is shifted up), and never go below the
        // aligned lower bound.
        let trace = Trace::parse(b"id,lower,upper,size\n0,0,2,64\n1,0,2,64\n2,1,3,100\n3,2,4,64\n")
            .unwrap();
        let dir = std::env::temp_dir().join(format!("tp-plan-align-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for align in [1, 64, 128, 4096] {
            let options = Options {
                align,
                budget: search::Budget::steps(10_000),
            };
            let r = plan(
                "t",
                &trace,
                &dir.join("c.toml"),
                &dir.join("p.csv"),
                &options,
            )
            .unwrap();
            assert!(
                r.placements.iter().all(|p| p.offset % align == 0),
                "{align}"
            );
            assert!(
                r.offline_plan_bytes >= r.aligned_lower_bound_bytes,
                "{align}"
            );
            assert!(r.proven_optimal, "{align}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_wrong_plan_is_caught() {
        let trace = Trace::parse(b"id,lower,upper,size\n0,0,2,10\n1,1,3,10\n").unwrap();
        let l = trace.lifetimes();
        let (good, arena) = greedy_by_size(&l);
        assert_eq!(arena, 20);
        verify(&trace, &good).unwrap();
        let bad: Vec<Placement> = l
            .iter()
            .map(|&lifetime| Placement {
                lifetime,
                offset: 5,
            })
            .collect();
        let overlap = verify(&trace, &bad).unwrap_err();
        assert!(
            overlap.to_string().contains("overlap while both live"),
            "{overlap}"
        );
    }
}
