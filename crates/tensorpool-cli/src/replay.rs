//! `tensorpool replay`: a trace through tensorpool and its peers, side by side.
//!
//! Each (trace, allocator) pair is measured in a fresh process of this same binary
//! (the hidden `replay-worker` subcommand), so that no allocator inherits another's
//! heap, and each starts as a program would. A worker does two things:
//!
//! 1. **One sampling pass**, pages untouched, reading the allocator's reserved bytes
//!    after every allocation: the exact peak at event granularity, and a timeline for
//!    the plot. tensorpool's upstream calls are counted in this pass.
//! 2. **Timed repetitions** of the whole trace on the same allocator, every page of
//!    every block written on allocation (as a tensor's first use does) unless
//!    `--no-touch`; the median time per event, and the minor page faults per
//!    repetition. The sampling pass has warmed every allocator up alike, as the steps
//!    before it warm a training program's.
//!
//! The replay loop's own cost (walking the events, the pointer table) is measured with
//! an allocator that does nothing, and reported beside the results.

use crate::error::{CliError, Result};
use crate::peers::{page_faults, with_allocator, Allocates, Kind, Subject};
use crate::workloads;
use serde::{Deserialize, Serialize};
use std::alloc::Layout;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tensorpool::clock::{Clock, ManualClock};
use tensorpool::trace::{Event, Trace};
use tensorpool::Config;

/// The trace replayed when none is given: three training steps of a PyTorch
/// `nn.TransformerEncoder` (4 layers, d_model 256), recorded from the profiler.
pub const EMBEDDED_NAME: &str = "embedded:transformer_train";
const EMBEDDED: &[u8] = include_bytes!("../../../traces/transformer_train.csv.gz");

/// Where a trace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The trace shipped in the binary.
    Embedded,
    /// A file.
    File(PathBuf),
    /// A file that could be read only once (a pipe), as given, and its copy.
    Copied {
        /// The path given.
        given: PathBuf,
        /// Its bytes, in a temporary file.
        copy: std::sync::Arc<Spilled>,
    },
}

impl Source {
    /// `embedded:transformer_train`, or a path.
    pub fn parse(arg: &str) -> Source {
        if arg == EMBEDDED_NAME {
            Source::Embedded
        } else {
            Source::File(PathBuf::from(arg))
        }
    }

    /// How the trace is named in reports: the path as given.
    pub fn label(&self) -> String {
        match self {
            Source::Embedded => EMBEDDED_NAME.to_string(),
            Source::File(p) | Source::Copied { given: p, .. } => p.display().to_string(),
        }
    }

    /// Reads and parses the trace.
    pub fn load(&self) -> tensorpool::Result<Trace> {
        match self {
            Source::Embedded => Trace::parse(EMBEDDED),
            Source::File(p) => Trace::read(p),
            Source::Copied { given, copy } => {
                Trace::parse_file(given, &Trace::read_bytes(&copy.0)?)
            }
        }
    }

    /// Checks the trace (reads and parses it) before the long work, and makes it
    /// readable by every worker: a file that can be read only once (a pipe,
    /// `/dev/stdin`, a FIFO, a process substitution) is read here, and its bytes go
    /// to the workers in a temporary file, removed when the last copy of the
    /// returned source is dropped. (Each worker opened the path again: the second
    /// open of a FIFO waited for a writer for ever, and a pipe read as empty.)
    pub fn prepare(self) -> Result<Source> {
        let Source::File(path) = &self else {
            self.load()?;
            return Ok(self);
        };
        if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            self.load()?;
            return Ok(self);
        }
        let bytes = Trace::read_bytes(path)?;
        Trace::parse_file(path, &bytes)?;
        let copy = Spilled::write(&bytes).map_err(|e| CliError::Spill {
            path: path.clone(),
            source: e,
        })?;
        Ok(Source::Copied {
            given: path.clone(),
            copy: std::sync::Arc::new(copy),
        })
    }

    /// The path a worker reads the trace from, or the embedded trace's name.
    fn worker_arg(&self) -> std::ffi::OsString {
        match self {
            Source::Embedded => self.label().into(),
            Source::File(path) => path.clone().into(),
            Source::Copied { copy, .. } => copy.0.clone().into(),
        }
    }
}

/// A trace's bytes in a temporary file, for the workers; removed on drop.
#[derive(Debug, PartialEq, Eq)]
pub struct Spilled(PathBuf);

impl Spilled {
    fn write(bytes: &[u8]) -> std::io::Result<Spilled> {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tensorpool-replay-{}-{}.trace",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        use std::os::unix::fs::OpenOptionsExt;
        // Readable by this user alone, in a directory others share.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let spilled = Spilled(path);
        std::io::Write::write_all(&mut file, bytes)?;
        Ok(spilled)
    }
}

impl Drop for Spilled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timed repetitions; the median is reported.
    pub reps: usize,
    /// Write every page of every block on allocation.
    pub touch: bool,
    /// tensorpool's configuration.
    pub config: Config,
    /// The file the configuration came from (none: the defaults).
    pub config_path: Option<PathBuf>,
    /// Points of the timeline.
    pub samples: usize,
}

/// What a worker measured for one allocator on one trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Median time per event over the repetitions, in nanoseconds (NaN, written as
    /// null, when the replay failed).
    #[serde(deserialize_with = "nan_if_null")]
    pub ns_per_event: f64,
    /// Each repetition's time per event.
    pub ns_per_event_reps: Vec<f64>,
    /// The most bytes the allocator held from the operating system.
    pub peak_reserved_bytes: u64,
    /// Its calls to the operating system, if it counts them.
    pub upstream_calls: Option<u64>,
    /// Minor page faults per repetition.
    pub page_faults: u64,
    /// Memory the system backs for the allocator after the sampling pass, where it
    /// says (see [`Subject::resident_bytes`]).
    pub resident_bytes: Option<u64>,
    /// `(event, live bytes, reserved bytes)` along the trace.
    pub timeline: Vec<[u64; 3]>,
    /// Why it failed, if it did (out of memory).
    pub error: Option<String>,
}

/// `x` shown by `show`, or "-" when it is not a number (a ratio to nothing).
fn finite(x: f64, show: impl Fn(f64) -> String) -> String {
    if x.is_finite() {
        show(x)
    } else {
        "-".to_string()
    }
}

/// A number that JSON wrote as null (serde_json writes NaN so): NaN again.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One allocator's row in a report.
#[derive(Debug, Clone, Serialize)]
pub struct AllocatorReport {
    /// `tensorpool`, `system`, `mimalloc` or `jemalloc`.
    pub name: &'static str,
    /// Median time per event, in nanoseconds.
    pub ns_per_event: f64,
    /// Each timed repetition's time per event (noise on a shared machine only adds
    /// time: the least is the steadiest figure to compare configurations by).
    pub ns_per_event_reps: Vec<f64>,
    /// The most bytes held from the operating system.
    pub peak_reserved_bytes: u64,
    /// `peak_reserved_bytes / peak_live_bytes`.
    pub efficiency: f64,
    /// Calls to the operating system, where the allocator counts them (else null).
    pub upstream_calls: Option<u64>,
    /// Minor page faults per repetition.
    pub page_faults: u64,
    /// Memory the system backs for the allocator when the trace is over (every block
    /// freed), where it says: tensorpool's `resident_bytes`, jemalloc's
    /// `stats.resident`; else null. tensorpool's release policy follows the trace's
    /// own clock (RMM CSV and Chrome JSON times).
    pub resident_bytes: Option<u64>,
    /// tensorpool's time per event divided by this one's.
    pub tensorpool_time_ratio: f64,
    /// tensorpool's peak reserved bytes divided by this one's.
    pub tensorpool_memory_ratio: f64,
    /// Why the replay failed, if it did.
    pub error: Option<String>,
    /// The timeline of the first run (see [`Measurement::timeline`]), for plots.
    #[serde(skip)]
    pub timeline: Vec<[u64; 3]>,
}

/// The report of one trace.
#[derive(Debug, Clone, Serialize)]
pub struct TraceReport {
    /// The trace as given.
    pub trace: String,
    /// `rmm_csv`, `intervals` or `chrome_json`.
    pub format: &'static str,
    /// Allocation and free events replayed.
    pub events: usize,
    /// Allocations.
    pub allocations: usize,
    /// The most bytes live at once.
    pub peak_live_bytes: u64,
    /// Frees of addresses never allocated in the trace (skipped).
    pub unmatched_frees: usize,
    /// Blocks never freed in the trace (freed at the end of each replay).
    pub leaked_blocks: usize,
    /// Whether pages were written.
    pub touched: bool,
    /// Why pages were not written although asked, if so.
    pub note: Option<String>,
    /// The replay loop's own time per event (an allocator that does nothing).
    pub replay_overhead_ns_per_event: f64,
    /// Events read and parsed per second (decompression included).
    pub parse_events_per_second: f64,
    /// One entry per allocator, tensorpool first.
    pub allocators: Vec<AllocatorReport>,
}

/// The layout a block of `size` bytes is replayed with: 64-byte aligned, as tensors are.
pub(crate) fn layout_of(size: u64) -> Layout {
    Layout::from_size_align((size as usize).max(1), 64).expect("trace sizes are below isize::MAX")
}

/// Runs the whole trace once against `subject`, calling `after_alloc(event index,
/// live bytes, block id, address)` after every allocation. Returns an error if the
/// allocator runs out. With a `clock` (tensorpool's, for its release policy), moves it
/// along the trace's own times, from where it stands.
pub(crate) fn run_once(
    trace: &Trace,
    sizes: &[u64],
    layouts: &[Layout],
    subject: &Subject,
    touch_pages: bool,
    clock: Option<&ManualClock>,
    after_alloc: impl FnMut(usize, u64, u32, NonNull<u8>),
) -> Result<()> {
    with_allocator!(subject, |a| run_once_in(
        trace,
        sizes,
        layouts,
        a,
        touch_pages,
        clock,
        after_alloc
    ))
}

#[allow(clippy::too_many_arguments)]
fn run_once_in(
    trace: &Trace,
    sizes: &[u64],
    layouts: &[Layout],
    subject: &impl Allocates,
    touch_pages: bool,
    clock: Option<&ManualClock>,
    mut after_alloc: impl FnMut(usize, u64, u32, NonNull<u8>),
) -> Result<()> {
    let mut live: Vec<Option<NonNull<u8>>> = vec![None; layouts.len()];
    let mut live_bytes = 0u64;
    let mut result = Ok(());
    let clock = clock.filter(|_| !trace.times.is_empty() && trace.format.times_are_nanoseconds());
    let (base, first) = match clock {
        Some(c) => (c.now(), trace.times[0]),
        None => (Duration::ZERO, 0),
    };
    for (i, event) in trace.events.iter().enumerate() {
        if let Some(c) = clock {
            c.set(base + Duration::from_nanos(trace.times[i].saturating_sub(first)));
        }
        match *event {
            Event::Alloc { id, size } => {
                let layout = layouts[id as usize];
                let Some(ptr) = subject.alloc(layout) else {
                    result = Err(CliError::OutOfMemory { event: i, size });
                    break;
                };
                if touch_pages {
                    workloads::touch(ptr, layout.size());
                }
                live[id as usize] = Some(ptr);
                live_bytes += size;
                after_alloc(i, live_bytes, id, ptr);
            }
            Event::Free { id } => {
                if let Some(ptr) = live[id as usize].take() {
                    live_bytes -= sizes[id as usize];
                    // SAFETY: allocated above with this layout, freed once.
                    unsafe { subject.free(ptr, layouts[id as usize]) };
                }
            }
        }
    }
    for (id, ptr) in live.into_iter().enumerate() {
        if let Some(ptr) = ptr {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { subject.free(ptr, layouts[id]) };
        }
    }
    result
}

/// Measures `kind` on `trace`: the worker's whole job.
///
/// It runs on a thread of its own: glibc gives a new thread a fresh arena, so the
/// system allocator does not start with the free memory left by reading the trace.
pub fn measure(trace: &Trace, kind: Kind, options: &Options) -> tensorpool::Result<Measurement> {
    std::thread::scope(|s| {
        s.spawn(|| measure_here(trace, kind, options))
            .join()
            .expect("the measuring thread panicked")
    })
}

fn measure_here(trace: &Trace, kind: Kind, options: &Options) -> tensorpool::Result<Measurement> {
    let sizes = trace.block_sizes();
    let layouts: Vec<Layout> = sizes.iter().copied().map(layout_of).collect();
    let stride = (trace.events.len() / options.samples.max(1)).max(1);

    // 1. The sampling pass, on a fresh allocator. This process's own allocations
    // (reading the trace) use the system allocator: give its free memory back first,
    // so that glibc's figure is not helped by what the tool freed.
    if kind == Kind::System {
        // SAFETY: malloc_trim only returns free memory to the operating system.
        unsafe { libc::malloc_trim(0) };
    }
    // tensorpool's release policy follows the trace's clock.
    let clock = Arc::new(ManualClock::new());
    let sampler = match kind {
        Kind::Tensorpool => Subject::tensorpool_with_clock(&options.config, clock.clone())?,
        _ => Subject::new(kind, &options.config)?,
    };
    let clock = (kind == Kind::Tensorpool).then_some(&*clock);
    let baseline = sampler.reserved_bytes();
    let mut peak = 0usize;
    let mut timeline = Vec::new();
    let sampled = run_once(
        trace,
        &sizes,
        &layouts,
        &sampler,
        false,
        clock,
        |i, live, _, _| {
            let reserved = sampler.reserved_bytes().saturating_sub(baseline);
            peak = peak.max(reserved);
            if i % stride == 0 {
                timeline.push([i as u64, live, reserved as u64]);
            }
        },
    );
    let upstream_calls = sampler.upstream_calls();
    let resident_bytes = sampler.resident_bytes().map(|r| r as u64);

    // 2. The timed repetitions, on the same allocator: the sampling pass warmed every
    // allocator up alike, as the steps before it warm a real program's.
    let subject = sampler;
    let mut reps = Vec::with_capacity(options.reps);
    let faults = page_faults();
    let mut error = sampled.err().map(|e| e.to_string());
    for _ in 0..options.reps.max(1) {
        if error.is_some() {
            break;
        }
        let start = Instant::now();
        error = run_once(
            trace,
            &sizes,
            &layouts,
            &subject,
            options.touch,
            clock,
            |_, _, _, _| {},
        )
        .err()
        .map(|e| e.to_string());
        // A trace without events has no time per event (its ratios are unknown): no
        // repetition is reported, and the median of none is NaN (null in JSON; a
        // list of nulls did not read back from the worker).
        if !trace.events.is_empty() {
            reps.push(start.elapsed().as_nanos() as f64 / trace.events.len() as f64);
        }
    }
    let faults = (page_faults() - faults) / reps.len().max(1) as u64;
    Ok(Measurement {
        ns_per_event: median(&reps),
        ns_per_event_reps: reps,
        peak_reserved_bytes: peak as u64,
        upstream_calls,
        page_faults: faults,
        resident_bytes,
        timeline,
        error,
    })
}

/// The replay loop's own time per event, with an allocator that does nothing.
pub fn overhead(trace: &Trace) -> f64 {
    if trace.events.is_empty() {
        return f64::NAN;
    }
    let mut dummy = [0u8; 64];
    let ptr = NonNull::from(&mut dummy).cast::<u8>();
    let sizes = trace.block_sizes();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        let mut live: Vec<Option<NonNull<u8>>> = vec![None; sizes.len()];
        let mut bytes = 0u64;
        for event in &trace.events {
            match *event {
                Event::Alloc { id, size } => {
                    live[id as usize] = Some(std::hint::black_box(ptr));
                    bytes = bytes.wrapping_add(size);
                }
                Event::Free { id } => {
                    if let Some(p) = live[id as usize].take() {
                        std::hint::black_box(p);
                        bytes = bytes.wrapping_sub(sizes[id as usize]);
                    }
                }
            }
        }
        std::hint::black_box(bytes);
        best = best.min(start.elapsed().as_nanos() as f64 / trace.events.len() as f64);
    }
    best
}

/// Bytes of physical memory on this machine.
fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64) * (size.max(0) as u64)
}

/// Runs a worker process for (`source`, `kind`) and reads its measurement.
fn run_worker(
    exe: &Path,
    source: &Source,
    kind: Kind,
    options: &Options,
    touch: bool,
) -> Result<Measurement> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("replay-worker")
        .arg("--allocator")
        .arg(kind.name())
        .arg("--reps")
        .arg(options.reps.to_string())
        .arg("--samples")
        .arg(options.samples.to_string());
    if !touch {
        cmd.arg("--no-touch");
    }
    if let Some(config) = &options.config_path {
        // One argument, so that a path that starts with `-` stays a path.
        let mut arg = std::ffi::OsString::from("--config=");
        arg.push(config);
        cmd.arg(arg);
    }
    if options.config.debug {
        cmd.arg("--debug");
    }
    // After `--`: a trace whose name starts with `-` is not an option.
    cmd.arg("--");
    cmd.arg(source.worker_arg());
    let failed = |why: String| CliError::Worker {
        allocator: kind.name(),
        why,
    };
    let output = cmd
        .output()
        .map_err(|e| failed(format!("it could not start: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(stderr.trim().to_string()));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| failed(format!("its output is not a measurement: {e}")))
}

/// Replays every source through every allocator and builds the reports. `progress`
/// is told about each step.
pub fn replay_all(
    sources: &[Source],
    options: &Options,
    mut progress: impl FnMut(&str),
) -> Result<Vec<TraceReport>> {
    let exe = std::env::current_exe().map_err(CliError::CurrentExe)?;
    let mut reports = Vec::new();
    for source in sources {
        let started = Instant::now();
        let trace = source.load()?;
        let parse_seconds = started.elapsed().as_secs_f64();
        let peak_live = trace.peak_live_bytes();
        let too_big = options.touch && peak_live > physical_memory() / 10 * 6;
        let touched = options.touch && !too_big;
        let note = too_big.then(|| {
            format!(
                "pages not touched: the live peak ({}) exceeds 60% of this machine's memory",
                tensorpool::bytes::format_bytes(peak_live as usize)
            )
        });
        let mut rows = Vec::new();
        for kind in Kind::ALL {
            progress(&format!("{} · {}", source.label(), kind.name()));
            let m =
                run_worker(&exe, source, kind, options, touched).unwrap_or_else(|e| Measurement {
                    ns_per_event: f64::NAN,
                    ns_per_event_reps: Vec::new(),
                    peak_reserved_bytes: 0,
                    upstream_calls: None,
                    page_faults: 0,
                    resident_bytes: None,
                    timeline: Vec::new(),
                    error: Some(e.to_string()),
                });
            rows.push((kind, m));
        }
        // Ratios to an allocator that failed, or that reports no memory held (a
        // trace too small for its counters), say nothing: NaN, shown as "-".
        let tp_failed = rows[0].1.error.is_some();
        let (tp_time, tp_peak) = match tp_failed {
            true => (f64::NAN, f64::NAN),
            false => (rows[0].1.ns_per_event, rows[0].1.peak_reserved_bytes as f64),
        };
        let per = |x: f64, y: u64| if y == 0 { f64::NAN } else { x / y as f64 };
        let allocators = rows
            .into_iter()
            .map(|(kind, m)| AllocatorReport {
                name: kind.name(),
                ns_per_event: m.ns_per_event,
                ns_per_event_reps: m.ns_per_event_reps,
                peak_reserved_bytes: m.peak_reserved_bytes,
                // Less held than live cannot be: the allocator's counters did not
                // see these blocks (glibc's, for a trace of a few small blocks that
                // its arena held before the replay began): unknown, shown as "-".
                efficiency: match m.peak_reserved_bytes < peak_live {
                    true => f64::NAN,
                    false => per(m.peak_reserved_bytes as f64, peak_live),
                },
                upstream_calls: m.upstream_calls,
                page_faults: m.page_faults,
                resident_bytes: m.resident_bytes,
                tensorpool_time_ratio: tp_time / m.ns_per_event,
                tensorpool_memory_ratio: per(tp_peak, m.peak_reserved_bytes),
                error: m.error,
                timeline: m.timeline,
            })
            .collect();
        reports.push(TraceReport {
            trace: source.label(),
            format: match trace.format {
                tensorpool::trace::Format::RmmCsv => "rmm_csv",
                tensorpool::trace::Format::Intervals => "intervals",
                tensorpool::trace::Format::ChromeJson => "chrome_json",
            },
            events: trace.events.len(),
            allocations: trace.allocations,
            peak_live_bytes: peak_live,
            unmatched_frees: trace.unmatched_frees,
            leaked_blocks: trace.leaked_blocks,
            touched,
            note,
            replay_overhead_ns_per_event: overhead(&trace),
            parse_events_per_second: trace.events.len() as f64 / parse_seconds.max(1e-9),
            allocators,
        });
    }
    Ok(reports)
}

/// The median of `values` (of an even count, the mean of the middle two; the upper
/// one was taken before, which is no median); NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The reports as a table for people.
pub fn table(reports: &[TraceReport]) -> String {
    use std::fmt::Write as _;
    let b = |n: u64| tensorpool::bytes::format_bytes(n as usize);
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(
            out,
            "{} ({}): {} events, {} allocations, peak live {}, {} unmatched frees, {} leaked blocks; pages {}; parsed at {:.1} M events/s; replay loop {} ns/event",
            r.trace,
            r.format,
            r.events,
            r.allocations,
            b(r.peak_live_bytes),
            r.unmatched_frees,
            r.leaked_blocks,
            if r.touched { "touched" } else { "not touched" },
            r.parse_events_per_second / 1e6,
            finite(r.replay_overhead_ns_per_event, |x| format!("{x:.1}"))
        );
        if let Some(note) = &r.note {
            let _ = writeln!(out, "  note: {note}");
        }
        let _ = writeln!(
            out,
            "  {:<11} {:>12} {:>14} {:>10} {:>12} {:>10} {:>12} {:>13} {:>13}",
            "allocator",
            "ns/event",
            "peak reserved",
            "efficiency",
            "resident end",
            "upstream",
            "page faults",
            "tp time ×",
            "tp memory ×"
        );
        for a in &r.allocators {
            if let Some(e) = &a.error {
                let _ = writeln!(out, "  {:<11} failed: {e}", a.name);
                continue;
            }
            let upstream = a
                .upstream_calls
                .map_or_else(|| "-".to_string(), |n| n.to_string());
            let _ = writeln!(
                out,
                "  {:<11} {:>12} {:>14} {:>10} {:>12} {:>10} {:>12} {:>13} {:>13}",
                a.name,
                finite(a.ns_per_event, |x| format!("{x:.1}")),
                b(a.peak_reserved_bytes),
                finite(a.efficiency, |x| format!("{x:.3}")),
                a.resident_bytes.map_or_else(|| "-".to_string(), b),
                upstream,
                a.page_faults,
                finite(a.tensorpool_time_ratio, |x| format!("{x:.2}x")),
                finite(a.tensorpool_memory_ratio, |x| format!("{x:.2}x"))
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "tp time × / tp memory ×: tensorpool's time per event and peak reserved bytes divided by the allocator's (below 1: tensorpool is faster / smaller)."
    );
    out
}
