//! `tensorpool.Arena`: bump allocation, freed all at once.
//!
//! A standalone `Arena(arena_size)` holds at most `arena_size` bytes; `mm.arena()`
//! makes one whose chunks come from a manager, used as a scope:
//!
//! ```python
//! with mm.arena() as a:
//!     tmp = a.empty((1024, 1024))   # bump-allocated
//!     out = (tmp * 2).sum()
//! # the scope's memory went back to the manager
//! ```
//!
//! Python code never sees arena memory reused under it: `reset()` raises
//! `BufferError` while an array from `empty`/`zeros` or an export of a buffer is
//! alive, and buffers without exports are released by it. A scope that ends while
//! arrays are alive defers its release to the last of them (`mm.stats()` counts
//! deferred scopes).

use crate::array::{ArraySpec, Block, ARRAY_ALIGN};
use crate::buffer::{Buffer, Owner};
use crate::manager::{json_to_py, ManagerState};
use crate::to_py;
use parking_lot::Mutex;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tensorpool::Arena;

/// The arena and what keeps its memory in use; shared by the Python `Arena` and
/// every buffer and array made from it.
pub(crate) struct ArenaCore {
    /// `None` once the memory went back (a scope ended with nothing alive).
    arena: Mutex<Option<Arena>>,
    /// Bumped by each reset: buffers from an older generation are released.
    generation: AtomicU64,
    /// Live exports of buffers, and live arrays.
    exports: AtomicUsize,
    arrays: AtomicUsize,
    /// Set when a scope ended with memory still in use: the manager's counters
    /// include this arena until it goes.
    deferred: AtomicBool,
    /// The manager's counters, for arenas of a manager.
    state: Option<Arc<ManagerState>>,
}

impl ArenaCore {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    pub(crate) fn export_added(&self) {
        self.exports.fetch_add(1, Relaxed);
    }

    pub(crate) fn export_released(&self) {
        self.exports.fetch_sub(1, Relaxed);
    }

    pub(crate) fn array_added(&self) {
        self.arrays.fetch_add(1, Relaxed);
    }

    pub(crate) fn array_released(&self) {
        self.arrays.fetch_sub(1, Relaxed);
    }

    fn in_use(&self) -> Option<String> {
        let (arrays, exports) = (self.arrays.load(Relaxed), self.exports.load(Relaxed));
        (arrays + exports > 0).then(|| {
            format!("{arrays} array(s) and {exports} buffer export(s) still use its memory")
        })
    }

    fn reserved(arena: &Option<Arena>) -> usize {
        arena.as_ref().map_or(0, |a| a.stats().reserved_bytes)
    }
}

impl Drop for ArenaCore {
    fn drop(&mut self) {
        // What `close` counted as deferred, before the reset below changes it.
        let deferred = self
            .deferred
            .load(Relaxed)
            .then(|| Self::reserved(self.arena.get_mut()));
        // Nothing uses the arena any more (the last array or export went): its
        // blocks are free, as a reset says (in debug mode, dropping it with blocks
        // counted live reported them as leaks).
        if let Some(arena) = self.arena.get_mut().as_mut() {
            arena.reset();
        }
        if let (Some(bytes), Some(state)) = (deferred, &self.state) {
            state.undefer(bytes);
        }
    }
}

/// A bump allocator: `allocate(size)` is a pointer bump, `reset()` frees everything.
///
/// Arena(arena_size): at most `arena_size` bytes; a request beyond what is left
/// raises `OutOfMemoryError`.
#[pyclass(name = "Arena", module = "tensorpool", frozen)]
pub struct PyArena {
    /// `None` once the scope ended.
    core: Mutex<Option<Arc<ArenaCore>>>,
}

impl PyArena {
    fn with(arena: Arena, state: Option<Arc<ManagerState>>) -> PyArena {
        PyArena {
            core: Mutex::new(Some(Arc::new(ArenaCore {
                arena: Mutex::new(Some(arena)),
                generation: AtomicU64::new(0),
                exports: AtomicUsize::new(0),
                arrays: AtomicUsize::new(0),
                deferred: AtomicBool::new(false),
                state,
            }))),
        }
    }

    pub(crate) fn from_manager(arena: Arena, state: Arc<ManagerState>) -> PyArena {
        Self::with(arena, Some(state))
    }

    /// The address that identifies this arena's buffers (for telling them from
    /// other allocators').
    pub(crate) fn allocator(&self) -> PyResult<usize> {
        Ok(Arc::as_ptr(&self.core()?) as usize)
    }

    fn core(&self) -> PyResult<Arc<ArenaCore>> {
        self.core
            .lock()
            .clone()
            .ok_or_else(|| PyValueError::new_err("the arena's scope has ended"))
    }

    /// `size` bytes aligned to `align`, as a `Buffer` (uninitialised): `allocate`,
    /// and the manager's fallback after its pools.
    pub(crate) fn buffer(&self, size: usize, align: usize) -> PyResult<Buffer> {
        let core = self.core()?;
        let ptr = Self::bump(&core, size, align)?;
        let generation = core.generation();
        Ok(Buffer::new(ptr, size, Owner::Arena(core, generation)))
    }

    fn bump(core: &ArenaCore, size: usize, align: usize) -> PyResult<std::ptr::NonNull<u8>> {
        let arena = core.arena.lock();
        let arena = arena
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("the arena's scope has ended"))?;
        arena.allocate(size, align).map_err(to_py)
    }

    fn array<'py>(
        &self,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
        zeroed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core()?;
        let spec = ArraySpec::parse(shape, dtype, order)?;
        let ptr = Self::bump(&core, spec.nbytes, ARRAY_ALIGN)?;
        if zeroed {
            // SAFETY: fresh arena memory of `nbytes` bytes that nothing else uses.
            unsafe { ptr.as_ptr().write_bytes(0, spec.nbytes) };
        }
        spec.wrap_in_block(ptr, Block::new(core))
    }
}

#[pymethods]
impl PyArena {
    #[new]
    fn new(arena_size: usize) -> PyResult<Self> {
        let arena = Arena::with_capacity(arena_size).map_err(to_py)?;
        Ok(Self::with(arena, None))
    }

    /// `size` bytes aligned to `align`, as a `Buffer` (uninitialised).
    #[pyo3(signature = (size, align=ARRAY_ALIGN))]
    fn allocate<'py>(
        &self,
        py: Python<'py>,
        size: usize,
        align: usize,
    ) -> PyResult<Bound<'py, Buffer>> {
        self.buffer(size, align)?.into_untracked(py)
    }

    /// A new array in the arena, uninitialised, as `numpy.empty`.
    #[pyo3(signature = (shape, dtype=None, order="C"))]
    fn empty<'py>(
        &self,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.array(shape, dtype, order, false)
    }

    /// A new array of zeros in the arena, as `numpy.zeros`.
    #[pyo3(signature = (shape, dtype=None, order="C"))]
    fn zeros<'py>(
        &self,
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.array(shape, dtype, order, true)
    }

    /// Frees everything at once. `BufferError` while an array from the arena or an
    /// export of one of its buffers is alive (nothing changes then); buffers without
    /// exports are released.
    pub(crate) fn reset(&self) -> PyResult<()> {
        let core = self.core()?;
        let mut arena = core.arena.lock();
        if let Some(why) = core.in_use() {
            return Err(PyBufferError::new_err(format!(
                "cannot reset the arena: {why}"
            )));
        }
        core.generation.fetch_add(1, Relaxed);
        if let Some(arena) = arena.as_mut() {
            arena.reset();
        }
        Ok(())
    }

    /// Ends the arena's scope: its memory goes back now, or, while arrays or exports
    /// still use it, when the last of them goes. Further allocations raise
    /// `ValueError`. `with` calls this at the end of the block.
    fn close(&self) {
        let Some(core) = self.core.lock().take() else {
            return;
        };
        let mut arena = core.arena.lock();
        if core.in_use().is_some() {
            if !core.deferred.swap(true, Relaxed) {
                if let Some(state) = &core.state {
                    state.defer(ArenaCore::reserved(&arena));
                }
            }
            return;
        }
        core.generation.fetch_add(1, Relaxed);
        // Nothing uses it: its blocks are free (a reset says so, for debug mode's
        // leak check), and dropping it gives its chunks back.
        if let Some(mut arena) = arena.take() {
            arena.reset();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    /// Whether the scope has ended.
    #[getter]
    fn closed(&self) -> bool {
        self.core.lock().is_none()
    }

    /// The arena's statistics as a dict (bytes allocated, reserved, peaks, chunks).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = match self.core.lock().as_ref() {
            Some(core) => core
                .arena
                .lock()
                .as_ref()
                .map(Arena::stats)
                .unwrap_or_default(),
            None => Default::default(),
        };
        json_to_py(py, &serde_json::to_string(&stats).expect("stats serialize"))
    }

    fn __repr__(&self) -> String {
        match self.core.lock().as_ref() {
            None => "<tensorpool.Arena (closed)>".to_string(),
            Some(core) => {
                let stats = core
                    .arena
                    .lock()
                    .as_ref()
                    .map(Arena::stats)
                    .unwrap_or_default();
                format!(
                    "<tensorpool.Arena: {} bytes used of {} reserved>",
                    stats.allocated_bytes, stats.reserved_bytes
                )
            }
        }
    }
}
