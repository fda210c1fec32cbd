//! `tensorpool.MemoryManager`: the tiered manager, as a Python class.
//!
//! Configured by keyword arguments (every key of the Rust `Config`, plus the
//! familiar `pool_sizes` and `arena_size`) or by a config file, the format the
//! command's `plan` writes. Arrays from `empty`/`zeros` and buffers from `allocate`
//! keep the manager alive.

use crate::arena::PyArena;
use crate::array::{ArraySpec, ARRAY_ALIGN};
use crate::buffer::{Buffer, Owner};
use crate::handler;
use crate::planned::PyPlannedArena;
use crate::to_py;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tensorpool::{Config, MemoryManager};

/// Counters the Python layer keeps beside a manager's own statistics.
#[derive(Debug, Default)]
pub(crate) struct ManagerState {
    /// Arena scopes that ended while arrays still used their memory, and the bytes
    /// those arenas hold.
    deferred_scopes: AtomicUsize,
    deferred_bytes: AtomicUsize,
    /// Pointers NumPy's allocator hook was asked to free that were not live blocks.
    invalid_frees: AtomicU64,
}

impl ManagerState {
    pub(crate) fn defer(&self, bytes: usize) {
        self.deferred_scopes.fetch_add(1, Relaxed);
        self.deferred_bytes.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn undefer(&self, bytes: usize) {
        self.deferred_scopes.fetch_sub(1, Relaxed);
        self.deferred_bytes.fetch_sub(bytes, Relaxed);
    }

    pub(crate) fn deferred(&self) -> (usize, usize) {
        (
            self.deferred_scopes.load(Relaxed),
            self.deferred_bytes.load(Relaxed),
        )
    }

    pub(crate) fn note_invalid_free(&self) {
        self.invalid_frees.fetch_add(1, Relaxed);
    }

    pub(crate) fn invalid_frees(&self) -> u64 {
        self.invalid_frees.load(Relaxed)
    }
}

/// A tiered memory manager: size-class pools for small blocks, a best-fit tier for
/// large ones, dedicated segments for huge ones, and arenas.
///
/// MemoryManager(config=None, arena_size=None, *, pool_sizes=None, **settings)
///
/// `config` is the path of a TOML or JSON config file (what `tensorpool plan`
/// writes), or, as the lecture's `MemoryManager(pool_sizes, arena_size)` has it, a
/// dict of pool sizes; `settings` are the keys of a config file
/// (`memory_limit="8 GiB"`, `small_threshold=16384`, ...) and override it.
/// `pool_sizes` maps block sizes to block counts: explicit pools, tried smallest
/// first. `arena_size` (bytes, an int or a string such as "2 GiB"; 0 or None: no
/// arena) makes the manager's arena: `allocate(size)` then tries the pools that fit
/// and falls back to that arena, as in the lecture (`reset_arena()` frees it), and
/// the scopes `arena()` makes hold at most that much unless given a capacity.
/// Without it, `allocate` falls back to the manager's tiers.
#[pyclass(name = "MemoryManager", module = "tensorpool", frozen)]
pub struct PyMemoryManager {
    pub(crate) mm: MemoryManager,
    arena_size: Option<usize>,
    /// The lecture's arena, behind the pools in `allocate`, with `arena_size` bytes.
    arena: Option<PyArena>,
    pub(crate) state: Arc<ManagerState>,
    /// The NEP 49 handler over this manager, made on first use.
    handler: pyo3::sync::PyOnceLock<Py<PyAny>>,
}

impl PyMemoryManager {
    fn layout(nbytes: usize) -> PyResult<Layout> {
        Layout::from_size_align(nbytes, ARRAY_ALIGN)
            .map_err(|_| PyValueError::new_err(format!("{nbytes} bytes is too large a block")))
    }

    fn allocate_block(&self, nbytes: usize, zeroed: bool) -> PyResult<(NonNull<u8>, Layout)> {
        let layout = Self::layout(nbytes)?;
        let block = if zeroed {
            self.mm.try_allocate_zeroed(layout)
        } else {
            self.mm.try_allocate(layout)
        };
        Ok((block.map_err(to_py)?, layout))
    }

    /// An array that owns a raw block of this manager, freed through the manager's
    /// handler when NumPy lets go of it (as `np.empty`'s data is freed).
    fn array<'py>(
        &self,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
        zeroed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = shape.py();
        let handler = self.handler_bound(py)?;
        let spec = ArraySpec::parse(shape, dtype, order)?;
        let block = if zeroed {
            self.mm.allocate_raw_zeroed(spec.nbytes, ARRAY_ALIGN)
        } else {
            self.mm.allocate_raw(spec.nbytes, ARRAY_ALIGN)
        };
        let ptr = block.map_err(to_py)?;
        spec.wrap_owned(ptr, handler).map_err(|(e, ptr)| {
            self.mm
                .free_raw(ptr.as_ptr())
                .expect("the block was just allocated raw");
            e
        })
    }

    /// The NEP 49 handler over this manager, made on first use (after checking that
    /// this NumPy has handlers). Made outside the cell: the check imports NumPy,
    /// which can run the program's code (an import hook), and a call into this
    /// manager from there waited for ever on the cell's initialisation.
    fn handler_bound<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyAny>> {
        if self.handler.get(py).is_none() {
            handler::check_numpy(py)?;
            let capsule = handler::new_capsule(py, self.mm.clone(), self.state.clone(), None)?;
            // A nested call may have made one meanwhile: the first stays.
            let _ = self.handler.set(py, capsule.unbind());
        }
        Ok(self.handler.get(py).expect("set above").bind(py))
    }
}

/// The config from a file and keyword settings (which win).
fn config_from(
    py: Python<'_>,
    path: Option<&Bound<'_, PyAny>>,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<Config> {
    let mut value = match path {
        None => serde_json::to_value(Config::default()).expect("a config serializes"),
        Some(p) => {
            let path: std::path::PathBuf = p.extract()?;
            if !path.exists() {
                return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            let config = Config::from_file(&path).map_err(to_py)?;
            serde_json::to_value(config).expect("a config serializes")
        }
    };
    if let Some(settings) = settings {
        let json = py.import("json")?;
        let map = value.as_object_mut().expect("a config is a table");
        for (key, v) in settings.iter() {
            let shown = format!("{}={}", key.str()?, v.repr()?);
            let key: String = key.extract()?;
            let text: String = json
                .call_method1("dumps", (&v,))
                .map_err(|e| PyValueError::new_err(format!("{shown}: {e}")))?
                .extract()?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| PyValueError::new_err(format!("{shown}: {e}")))?;
            map.insert(key, v);
            // Each setting is read on its own, so that a bad one is named (a config
            // read from a value has no line or column to point at).
            if let Err(e) = serde_json::from_value::<Config>(serde_json::Value::Object(map.clone()))
            {
                return Err(PyValueError::new_err(format!(
                    "invalid setting {shown}: {e}"
                )));
            }
        }
    }
    Config::from_json_str(&value.to_string()).map_err(to_py)
}

#[pymethods]
impl PyMemoryManager {
    #[new]
    #[pyo3(signature = (config=None, arena_size=None, *, pool_sizes=None, **settings))]
    fn new(
        py: Python<'_>,
        config: Option<&Bound<'_, PyAny>>,
        arena_size: Option<&Bound<'_, PyAny>>,
        pool_sizes: Option<&Bound<'_, PyDict>>,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let arena_size = size_arg("arena_size", arena_size)?;
        // The lecture's MemoryManager(pool_sizes, arena_size): a dict first is pools.
        let (config, pool_sizes) = match config.map(|c| c.cast::<PyDict>()) {
            Some(Ok(pools)) => {
                if pool_sizes.is_some() {
                    return Err(PyTypeError::new_err(
                        "pool sizes given twice: as the first argument and as pool_sizes=",
                    ));
                }
                (None, Some(pools.clone()))
            }
            _ => (config, pool_sizes.cloned()),
        };
        let settings = match settings {
            Some(s) => s.copy()?,
            None => PyDict::new(py),
        };
        if let Some(pools) = &pool_sizes {
            if settings.contains("pools")? {
                return Err(PyTypeError::new_err(
                    "pools given twice: as pool_sizes and as pools=",
                ));
            }
            let table = PyDict::new(py);
            // A snapshot of the caller's dict: reading an entry may run its code
            // (`__index__`), which may change the dict (iterating it then panicked).
            for item in pools.items().iter() {
                let (size, count): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
                let entry = || -> PyResult<String> {
                    Ok(format!(
                        "pool_sizes entry {}: {}",
                        size.repr()?,
                        count.repr()?
                    ))
                };
                let (Ok(block), Ok(n)) = (size.extract::<i128>(), count.extract::<i128>()) else {
                    return Err(PyTypeError::new_err(format!(
                        "{}: pool_sizes maps block sizes (int) to block counts (int)",
                        entry()?
                    )));
                };
                let (Ok(block), Ok(n)) = (usize::try_from(block), usize::try_from(n)) else {
                    return Err(PyValueError::new_err(format!(
                        "{}: a block size and a block count cannot be negative",
                        entry()?
                    )));
                };
                table.set_item(block.to_string(), n)?;
            }
            settings.set_item("pools", table)?;
        }
        let arena_size = arena_size.filter(|&bytes| bytes > 0);
        let mut config = config_from(py, config, Some(&settings))?;
        // In Python the release policy's background thread is on unless asked off: an
        // interpreter often waits (a notebook between cells, a server between
        // requests), and its memory should go back meanwhile.
        config.background_release.get_or_insert(true);
        let mm = MemoryManager::new(config).map_err(to_py)?;
        let state = Arc::new(ManagerState::default());
        let arena = match arena_size {
            Some(bytes) => Some(PyArena::from_manager(
                mm.arena_with_capacity(bytes).map_err(to_py)?,
                state.clone(),
            )),
            None => None,
        };
        Ok(PyMemoryManager {
            mm,
            arena_size,
            arena,
            state,
            handler: pyo3::sync::PyOnceLock::new(),
        })
    }

    /// A new array of `shape` and `dtype` in the manager's memory, uninitialised, as
    /// `numpy.empty`. Its memory goes back to the manager when the array and all its
    /// views are gone.
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

    /// `size` bytes as a `Buffer` of exactly `size` bytes, uninitialised: from the
    /// pools that fit, smallest first, then from the manager's arena if it has one
    /// (`arena_size`; a full arena raises `OutOfMemoryError`), else from the tiers by
    /// size.
    fn allocate<'py>(slf: &Bound<'py, Self>, size: usize) -> PyResult<Bound<'py, Buffer>> {
        let this = slf.get();
        let owner = |layout| Owner::Manager(slf.clone().unbind(), layout);
        let buffer = match &this.arena {
            None => {
                let (ptr, layout) = this.allocate_block(size, false)?;
                Buffer::new(ptr, size, owner(layout))
            }
            Some(arena) => {
                let layout = Self::layout(size)?;
                match this.mm.try_allocate_from_pools(layout).map_err(to_py)? {
                    Some(ptr) => Buffer::new(ptr, size, owner(layout)),
                    None => arena.buffer(size, ARRAY_ALIGN)?,
                }
            }
        };
        buffer.into_untracked(slf.py())
    }

    /// Gives a buffer from `allocate` (or a slice of one) back now: its whole block.
    /// A block of the manager's arena stays until `reset_arena()` (as in the
    /// lecture: nothing to do). `ValueError` if the buffer is not this manager's (or
    /// was freed already), `BufferError` while it is exported; nothing changes then.
    fn deallocate(slf: &Bound<'_, Self>, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffer = buffer.cast::<Buffer>().map_err(not_a_buffer)?.get();
        if let Some(arena) = &slf.get().arena {
            if buffer.belongs_to(arena.allocator()?) {
                return Ok(());
            }
        }
        buffer.deallocate_from(slf.as_ptr() as usize)
    }

    /// Frees everything in the manager's arena at once (the lecture's
    /// `reset_arena`). `BufferError` while a block of it (or a slice of one) is
    /// exported, as `Arena.reset()`; nothing changes then. `ValueError` without an
    /// arena (`arena_size` 0 or not given).
    fn reset_arena(&self) -> PyResult<()> {
        match &self.arena {
            Some(arena) => arena.reset(),
            None => Err(PyValueError::new_err(
                "this manager has no arena: make it with arena_size > 0",
            )),
        }
    }

    /// An arena whose chunks come from this manager, for short-lived arrays:
    /// `with mm.arena() as a: x = a.empty(...)`. `capacity` bounds it (default: the
    /// manager's `arena_size`, else unbounded).
    #[pyo3(signature = (capacity=None))]
    fn arena(&self, capacity: Option<usize>) -> PyResult<PyArena> {
        let arena = match capacity.or(self.arena_size) {
            Some(bytes) => self.mm.arena_with_capacity(bytes).map_err(to_py)?,
            None => self.mm.arena(),
        };
        Ok(PyArena::from_manager(arena, self.state.clone()))
    }

    /// An arena that runs a plan of one step (`step()` begins each step; the k-th
    /// array of a step gets the plan's k-th offset when its size fits and nothing
    /// alive is in the way, else the manager's memory). `plan` is a step plan file
    /// (`tensorpool plan --step` writes one) or a whole trace's plan; `trace` a
    /// trace to plan one step of, cut at `steps` ("repeating": its period is found;
    /// or a list of the steps' first events), searched for `time_limit` seconds;
    /// with neither, the arena records the program's own steps until its `plan()`.
    #[pyo3(signature = (plan=None, *, trace=None, steps=None, align=64, time_limit=1.0))]
    fn planned_arena(
        &self,
        py: Python<'_>,
        plan: Option<std::path::PathBuf>,
        trace: Option<std::path::PathBuf>,
        steps: Option<&Bound<'_, PyAny>>,
        align: u64,
        time_limit: f64,
    ) -> PyResult<PyPlannedArena> {
        PyPlannedArena::new(py, self, plan, trace, steps, align, time_limit)
    }

    /// The statistics, a dict with the keys of the Rust `Stats` (bytes allocated,
    /// reserved, peaks, per tier and size class), plus `deferred_arena_scopes` and
    /// `deferred_arena_bytes` (arena scopes that ended while arrays still used them)
    /// and `handler_invalid_frees` (bad pointers NumPy's allocator hook was given).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = json_to_py(
            py,
            &serde_json::to_string(&self.mm.stats()).expect("stats serialize"),
        )?;
        let (scopes, bytes) = self.state.deferred();
        stats.set_item("deferred_arena_scopes", scopes)?;
        stats.set_item("deferred_arena_bytes", bytes)?;
        stats.set_item("handler_invalid_frees", self.state.invalid_frees())?;
        Ok(stats)
    }

    /// In debug mode (`MemoryManager(debug=True)`), the blocks live now as a dict
    /// (`count`, `bytes`, `largest`, `sites`): what dropping the manager would report.
    /// None outside debug mode.
    fn leaks<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.mm
            .leaks()
            .map(|r| json_to_py(py, &serde_json::to_string(&r).expect("reports serialize")))
            .transpose()
    }

    /// In debug mode, the overruns of guard bytes found so far, as dicts (`addr`,
    /// `size`, `tier`, `offset`, `site`).
    fn guard_violations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.mm.guard_violations();
        json_to_py(py, &serde_json::to_string(&v).expect("reports serialize"))
    }

    /// The statistics as a table for people (like `torch.cuda.memory_summary()`).
    fn summary(&self) -> String {
        self.mm.summary()
    }

    /// Every segment and block with its state, as a dict.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(
            py,
            &serde_json::to_string(&self.mm.snapshot()).expect("snapshot serializes"),
        )
    }

    /// Gives every free byte back to the system now, every thread's included;
    /// returns the bytes released.
    fn trim(&self) -> usize {
        self.mm.trim()
    }

    /// Runs a pass of the release policy now if one is due (the background thread
    /// does this on its own); returns the bytes given back.
    fn release_idle(&self) -> usize {
        self.mm.release_idle()
    }

    /// Sets the release delay in milliseconds (None: free memory goes back only when
    /// asked, above the soft limit, or on running out).
    fn set_release_delay(&self, ms: Option<u64>) -> PyResult<()> {
        self.mm
            .set_release_delay(ms.map(std::time::Duration::from_millis))
            .map_err(to_py)
    }

    /// Sets the soft limit (bytes, or a string such as "2 GiB"; None for none):
    /// resident bytes above it send free memory back at once.
    fn set_soft_limit(&self, limit: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.mm
            .set_soft_limit(size_arg("soft_limit", limit)?)
            .map_err(to_py)
    }

    /// Sets the hard limit on resident bytes (bytes, a string such as "8 GiB", or
    /// None): growth beyond it gives back free memory and retries, then raises
    /// `OutOfMemoryError`.
    fn set_memory_limit(&self, limit: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.mm
            .set_memory_limit(size_arg("memory_limit", limit)?)
            .map_err(to_py)
    }

    /// Starts new peaks from the current values.
    fn reset_peak_stats(&self) {
        self.mm.reset_peak_stats()
    }

    /// Collects the frees other threads made into the calling thread's slabs and
    /// gives the thread's empty slabs and cached large blocks back to the best-fit
    /// tier (threads do this when they exit; `trim()` does it for every thread).
    fn flush_thread_cache(&self) {
        self.mm.flush_thread_cache()
    }

    /// The configuration, as a dict (the keys of a config file).
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(
            py,
            &serde_json::to_string(&self.mm.config()).expect("config serializes"),
        )
    }

    /// The NEP 49 handler capsule over this manager (`install` and `use` set it).
    fn handler(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.handler_bound(py).map(|h| h.clone().unbind())
    }

    /// A NEP 49 handler capsule over this manager that records every allocation and
    /// free into `path` as an RMM CSV trace, and the function that stops the
    /// recording (flushes and closes the file).
    fn recording_handler<'py>(
        &self,
        py: Python<'py>,
        path: std::path::PathBuf,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        handler::new_recording(py, self.mm.clone(), self.state.clone(), &path)
    }

    /// Calls this manager's handler `free` as NumPy would, on `address` (for tests of
    /// the checks NumPy's frees go through).
    fn _handler_free(&self, address: usize) {
        handler::free_as_numpy(&self.mm, &self.state, None, address)
    }

    fn __repr__(&self) -> String {
        let s = self.mm.stats();
        format!(
            "<tensorpool.MemoryManager: {} allocated, {} reserved>",
            tensorpool::bytes::format_bytes(s.allocated_bytes),
            tensorpool::bytes::format_bytes(s.reserved_bytes)
        )
    }
}

/// Makes `mm` the allocator of every NumPy array of the process whose context has
/// NumPy's default handler (see the `everywhere` module); returns None.
#[pyfunction]
pub(crate) fn install_everywhere(py: Python<'_>, mm: &PyMemoryManager) -> PyResult<()> {
    crate::everywhere::install_everywhere(py, &mm.mm, &mm.state)
}

/// Undoes `install_everywhere` for new arrays (those tensorpool made are still freed
/// by it); returns the manager that served until now, if one did.
#[pyfunction]
pub(crate) fn uninstall_everywhere() -> bool {
    let was = crate::everywhere::active_manager().is_some();
    crate::everywhere::uninstall_everywhere();
    was
}

/// The size `what` given as an int or a string such as "2 GiB", or None; errors
/// name `what`.
fn size_arg(what: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if let Ok(n) = v.extract::<i128>() {
        return match usize::try_from(n) {
            Ok(n) => Ok(Some(n)),
            Err(_) if n < 0 => Err(PyValueError::new_err(format!(
                "{what}: a size cannot be negative, got {n}"
            ))),
            Err(_) => Err(PyValueError::new_err(format!(
                "{what}: {n} bytes is beyond any address space"
            ))),
        };
    }
    let text: String = v.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what}: a size is an int, a string such as \"2 GiB\", or None, not {}",
            v.get_type()
                .name()
                .map_or_else(|_| "this".into(), |n| n.to_string())
        ))
    })?;
    tensorpool::bytes::parse_bytes(&text)
        .map(Some)
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

pub(crate) fn not_a_buffer<E>(_: E) -> PyErr {
    PyValueError::new_err(
        "not a tensorpool.Buffer: only buffers from this allocator can be deallocated; nothing was freed",
    )
}

/// A Python object (dict, list, ...) from JSON text.
pub(crate) fn json_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?
        .call_method1("loads", (PyString::new(py, text),))
}
