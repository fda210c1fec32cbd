//! `tensorpool.PlannedArena`: an arena that runs a plan of one step, for Python
//! programs whose steps repeat.
//!
//! `mm.planned_arena(plan=...)` runs a step plan file (`tensorpool plan --step`
//! writes one), `mm.planned_arena(trace=..., steps=...)` plans one step of a recorded
//! trace, and `mm.planned_arena()` watches the program's own steps first:
//!
//! ```python
//! arena = mm.planned_arena()        # records: every array comes from the manager
//! for _ in range(3):
//!     arena.step()
//!     forward(arena)                # arena.empty(...) / arena.zeros(...)
//! arena.plan()                      # plans the step it saw most often
//! for _ in range(1000):
//!     arena.step()
//!     forward(arena)                # each array at its planned offset
//! ```
//!
//! Each array owns its data as NumPy's own do, through a NEP 49 handler of the
//! arena's that gives the block back to the arena when NumPy lets go of it (and
//! keeps the arena alive until then); arrays still alive at `step()` keep their
//! memory (counted in `stats()["deferred"]`), and the slots they are in the way of
//! fall back to the manager. The handler does not move a block of the plan's
//! region: `ndarray.resize` of such an array raises `MemoryError`.

use crate::array::{ArraySpec, ARRAY_ALIGN};
use crate::handler;
use crate::manager::{json_to_py, PyMemoryManager};
use crate::to_py;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;
use tensorpool::plan::search::Budget;
use tensorpool::plan::{StepPlan, Steps, MOST_ALIGN};
use tensorpool::trace::{Event, Format, Trace};
use tensorpool::{MemoryManager, PlannedArena, PlannedStats};

/// What the arena does: record the program's steps, or run a plan.
enum Mode {
    Recording(Recorder),
    Running(Box<PlannedArena>),
}

/// The allocations and frees of the arena while it records, as a trace.
struct Recorder {
    mm: MemoryManager,
    events: Vec<Event>,
    /// Live blocks: address -> block id.
    live: HashMap<usize, u32>,
    blocks: u32,
    /// The events at which `step()` was called.
    starts: Vec<usize>,
}

/// The arena and its mode; shared by the Python object and every array's base.
pub(crate) struct PlannedCore {
    mode: Mutex<Mode>,
}

impl PlannedCore {
    fn allocate(&self, size: usize) -> PyResult<NonNull<u8>> {
        match &mut *self.mode.lock() {
            Mode::Running(arena) => arena.allocate(size, ARRAY_ALIGN).map_err(to_py),
            Mode::Recording(r) => {
                if r.blocks == u32::MAX {
                    return Err(PyValueError::new_err(
                        "4 billion arrays recorded: call plan() after a few steps",
                    ));
                }
                let ptr = r.mm.allocate_raw(size, ARRAY_ALIGN).map_err(to_py)?;
                let id = r.blocks;
                r.blocks += 1;
                r.events.push(Event::Alloc {
                    id,
                    size: size as u64,
                });
                r.live.insert(ptr.as_ptr().addr(), id);
                Ok(ptr)
            }
        }
    }

    /// Gives back the block at `ptr` (an array's, when it dies), checked: an error
    /// (nothing changed) for a pointer that is not a live block of the arena or of
    /// the manager's raw API. Blocks recorded before a plan are raw blocks of the
    /// manager, which a running arena passes on.
    pub(crate) fn release(&self, ptr: NonNull<u8>) -> tensorpool::Result<()> {
        match &mut *self.mode.lock() {
            Mode::Running(arena) => arena.free(ptr),
            Mode::Recording(r) => {
                let freed = r.mm.free_raw(ptr.as_ptr());
                if freed.is_ok() {
                    if let Some(id) = r.live.remove(&ptr.as_ptr().addr()) {
                        r.events.push(Event::Free { id });
                    }
                }
                freed
            }
        }
    }
}

/// The plan's search budget from Python's `time_limit` (seconds, up to a day).
fn budget(time_limit: f64) -> PyResult<Budget> {
    match Duration::try_from_secs_f64(time_limit) {
        Ok(t) if t <= Duration::from_secs(86_400) => Ok(Budget::time(t)),
        _ => Err(PyValueError::new_err(format!(
            "time_limit={time_limit}: a number of seconds, from 0 to 86400"
        ))),
    }
}

/// A plan's alignment from Python: a power of two from the arrays' 64 B to 1 GiB
/// (offsets aligned less would never serve an array).
fn alignment(align: u64) -> PyResult<u64> {
    if align.is_power_of_two() && (ARRAY_ALIGN as u64..=MOST_ALIGN).contains(&align) {
        Ok(align)
    } else {
        Err(PyValueError::new_err(format!(
            "align={align}: a power of two from {ARRAY_ALIGN} to {MOST_ALIGN}"
        )))
    }
}

/// `steps` from Python: "repeating" or a list of event indices.
fn steps(steps: &Bound<'_, PyAny>) -> PyResult<Steps> {
    if let Ok(text) = steps.extract::<String>() {
        return text.parse().map_err(to_py);
    }
    steps.extract::<Vec<usize>>().map(Steps::At).map_err(|_| {
        PyValueError::new_err("steps: \"repeating\" or a list of the steps' first events")
    })
}

/// An arena that runs a plan of one step; see `MemoryManager.planned_arena`.
#[pyclass(name = "PlannedArena", module = "tensorpool", frozen)]
pub struct PyPlannedArena {
    core: Arc<PlannedCore>,
    /// The manager, for `plan()` after recording.
    mm: MemoryManager,
    /// The NEP 49 handler every array of the arena carries: NumPy frees the array's
    /// data through it, back to the arena (it holds the arena, so arrays outlive
    /// this object).
    handler: Py<PyAny>,
}

impl PyPlannedArena {
    /// An arena for `mm`: running the plan file at `plan`, planning one step of the
    /// trace at `trace`, or recording.
    pub(crate) fn new(
        py: Python<'_>,
        mm: &PyMemoryManager,
        plan: Option<std::path::PathBuf>,
        trace: Option<std::path::PathBuf>,
        steps_given: Option<&Bound<'_, PyAny>>,
        align: u64,
        time_limit: f64,
    ) -> PyResult<PyPlannedArena> {
        handler::check_numpy(py)?;
        let state = mm.state.clone();
        let mm = mm.mm.clone();
        if steps_given.is_some() && trace.is_none() {
            return Err(PyValueError::new_err(
                "steps= cuts a trace: give trace= too",
            ));
        }
        let mode = match (plan, trace) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("give a plan or a trace, not both"))
            }
            (Some(path), None) => {
                let plan = StepPlan::read(&path).map_err(to_py)?;
                Mode::Running(Box::new(PlannedArena::new(&mm, plan).map_err(to_py)?))
            }
            (None, Some(path)) => {
                let trace = Trace::read(&path).map_err(to_py)?;
                let steps = match steps_given {
                    Some(s) => steps(s)?,
                    None => Steps::Repeating,
                };
                let (align, budget) = (alignment(align)?, budget(time_limit)?);
                let plan = py
                    .detach(|| StepPlan::from_trace(&trace, &steps, align, budget))
                    .map_err(to_py)?;
                Mode::Running(Box::new(PlannedArena::new(&mm, plan).map_err(to_py)?))
            }
            (None, None) => Mode::Recording(Recorder {
                mm: mm.clone(),
                events: Vec::new(),
                live: HashMap::new(),
                blocks: 0,
                starts: Vec::new(),
            }),
        };
        let core = Arc::new(PlannedCore {
            mode: Mutex::new(mode),
        });
        let handler = handler::planned_capsule(py, mm.clone(), state, core.clone())?.unbind();
        Ok(PyPlannedArena { core, mm, handler })
    }

    fn array<'py>(
        &self,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
        zeroed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let spec = ArraySpec::parse(shape, dtype, order)?;
        let ptr = self.core.allocate(spec.nbytes)?;
        if zeroed {
            // SAFETY: a fresh block of `nbytes` bytes that nothing else uses.
            unsafe { ptr.as_ptr().write_bytes(0, spec.nbytes) };
        }
        spec.wrap_owned(ptr, self.handler.bind(shape.py()))
            .map_err(|(e, ptr)| {
                // (NumPy could not make the array: the block goes back; its slot
                // stays taken for this step, whose later arrays may fall back.)
                let freed = self.core.release(ptr);
                debug_assert!(freed.is_ok(), "the block was just allocated: {freed:?}");
                e
            })
    }
}

#[pymethods]
impl PyPlannedArena {
    /// Begins a step: the next array is the plan's first. Arrays still alive keep
    /// their memory.
    fn step(&self) {
        match &mut *self.core.mode.lock() {
            Mode::Running(arena) => arena.step(),
            Mode::Recording(r) => r.starts.push(r.events.len()),
        }
    }

    /// A new array, uninitialised, as `numpy.empty`: the step's next slot, or the
    /// manager's memory.
    #[pyo3(signature = (shape, dtype=None, order="C"))]
    fn empty<'py>(
        &self,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.array(shape, dtype, order, false)
    }

    /// A new array of zeros, as `numpy.zeros`.
    #[pyo3(signature = (shape, dtype=None, order="C"))]
    fn zeros<'py>(
        &self,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.array(shape, dtype, order, true)
    }

    /// Plans the step the arena recorded most often (steps begin at each `step()`)
    /// and runs that plan from now on. `ValueError` when the arena already runs a
    /// plan, or recorded no step.
    #[pyo3(signature = (*, align=64, time_limit=1.0))]
    fn plan(&self, py: Python<'_>, align: u64, time_limit: f64) -> PyResult<()> {
        let (align, budget) = (alignment(align)?, budget(time_limit)?);
        let already = || PyValueError::new_err("the arena already runs a plan");
        let (trace, starts) = {
            let mode = self.core.mode.lock();
            let Mode::Recording(r) = &*mode else {
                return Err(already());
            };
            if r.starts.is_empty() {
                return Err(PyValueError::new_err(
                    "no step recorded: call step() at the start of every step",
                ));
            }
            let trace = Trace {
                format: Format::RmmCsv,
                events: r.events.clone(),
                allocations: r.blocks as usize,
                unmatched_frees: 0,
                failed_allocations: 0,
                leaked_blocks: r.live.len(),
                times: Vec::new(),
                offsets: Vec::new(),
            };
            // (A step() twice in a row, or at the end, begins no step of its own.)
            let mut starts: Vec<usize> = r
                .starts
                .iter()
                .copied()
                .filter(|&s| s < trace.events.len())
                .collect();
            starts.dedup();
            (trace, starts)
        };
        // The search runs without the arena's lock and without the GIL: other
        // threads go on (and may free the arena's arrays) meanwhile.
        let plan = py
            .detach(|| StepPlan::from_trace(&trace, &Steps::At(starts), align, budget))
            .map_err(to_py)?;
        let arena = PlannedArena::new(&self.mm, plan).map_err(to_py)?;
        let mut mode = self.core.mode.lock();
        if !matches!(*mode, Mode::Recording(_)) {
            return Err(already());
        }
        // Blocks recorded and still alive are the manager's: the arena passes their
        // frees on to it.
        *mode = Mode::Running(Box::new(arena));
        Ok(())
    }

    /// Writes the plan it runs as a step plan file (`slot,size,offset,freed_before,free_event`).
    fn write_plan(&self, path: std::path::PathBuf) -> PyResult<()> {
        let mode = self.core.mode.lock();
        let Mode::Running(arena) = &*mode else {
            return Err(PyValueError::new_err("the arena records: no plan yet"));
        };
        let mut out = Vec::new();
        arena.plan().write(&mut out)?;
        std::fs::write(&path, out)?;
        Ok(())
    }

    /// Whether it records the program's steps (no plan yet).
    #[getter]
    fn recording(&self) -> bool {
        matches!(&*self.core.mode.lock(), Mode::Recording(_))
    }

    /// The plan's arena in bytes (0 while recording).
    #[getter]
    fn arena_bytes(&self) -> u64 {
        match &*self.core.mode.lock() {
            Mode::Running(arena) => arena.plan().arena_bytes(),
            Mode::Recording(_) => 0,
        }
    }

    /// The statistics, a dict: steps, `served` (arrays at their planned offset),
    /// the fallbacks by reason (`fallback_mismatch`, `fallback_conflict`,
    /// `fallback_beyond_plan`, `fallback_unplanned`) and in all (`fallback`),
    /// `deferred` (arrays alive at a `step()`), `live_planned`, `region_bytes`; while
    /// recording, the steps and arrays recorded.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (stats, recorded) = match &*self.core.mode.lock() {
            Mode::Running(arena) => (arena.stats(), None),
            Mode::Recording(r) => (
                PlannedStats {
                    steps: r.starts.len() as u64,
                    ..PlannedStats::default()
                },
                Some(r.blocks),
            ),
        };
        let mut value = serde_json::to_value(stats).expect("stats serialize");
        value["fallback"] = stats.fallback().into();
        value["recording"] = recorded.is_some().into();
        value["recorded_arrays"] = recorded.unwrap_or(0).into();
        json_to_py(py, &value.to_string())
    }

    fn __repr__(&self) -> String {
        match &*self.core.mode.lock() {
            Mode::Running(arena) => {
                let s = arena.stats();
                format!(
                    "<tensorpool.PlannedArena: {} slots in {} bytes; {} served, {} fell back>",
                    arena.plan().slots().len(),
                    s.region_bytes,
                    s.served,
                    s.fallback()
                )
            }
            Mode::Recording(r) => format!(
                "<tensorpool.PlannedArena (recording): {} steps, {} arrays>",
                r.starts.len(),
                r.blocks
            ),
        }
    }
}
