//! tensorpool as NumPy's allocator: a NEP 49 data-memory handler.
//!
//! NumPy allocates the data of every array through the handler in the current
//! context (`PyDataMem_SetHandler`, a context variable), and keeps a reference to that
//! handler in each array, so an array is freed by the handler that allocated it
//! wherever it dies, also after another handler was set. Our handler is a capsule
//! named `mem_handler` holding a `PyDataMem_Handler` whose context owns a manager
//! handle: the manager lives as long as any array allocated through it.
//!
//! NumPy's sizes are not trusted: `free` gets a guess (`nbytes`, or 1 for empty
//! arrays) and `realloc` none, so blocks are found from the pointer with the
//! manager's checked raw free. A pointer that is not a live block is reported on
//! stderr and counted (`handler_invalid_frees` in `mm.stats()`), never freed.
//! The functions may run without the GIL: the manager is thread-safe and they touch
//! no Python object.

use crate::manager::ManagerState;
use crate::planned::PlannedCore;
use numpy::npyffi::PY_ARRAY_API;
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyCapsule, PyCapsuleMethods, PyTuple};
use std::ffi::{c_char, c_uint, c_void, CStr};
use std::path::Path;
use std::sync::Arc;
use tensorpool::trace::TraceWriter;
use tensorpool::MemoryManager;

/// Alignment of NumPy data (NumPy's own allocator gives 16).
pub(crate) const ALIGN: usize = 64;

/// The capsule name NumPy requires of a handler.
pub(crate) const CAPSULE: &CStr = c"mem_handler";

/// NumPy's `PyDataMemAllocator` (numpy/ndarraytypes.h, NumPy >= 1.22).
#[repr(C)]
pub(crate) struct PyDataMemAllocator {
    pub(crate) ctx: *mut c_void,
    pub(crate) malloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    pub(crate) calloc: unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    pub(crate) realloc: unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    pub(crate) free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}

/// NumPy's `PyDataMem_Handler`: a name (read by `get_handler_name`), version 1.
#[repr(C)]
pub(crate) struct PyDataMemHandler {
    pub(crate) name: [c_char; 127],
    pub(crate) version: u8,
    pub(crate) allocator: PyDataMemAllocator,
}

/// What the handler's functions reach through `ctx`.
struct Context {
    mm: MemoryManager,
    state: Arc<ManagerState>,
    /// Where allocations and frees are recorded, for `tensorpool.record`.
    recorder: Option<Arc<TraceWriter>>,
    /// The planned arena whose arrays carry this handler: frees go back to it.
    planned: Option<Arc<PlannedCore>>,
}

/// Makes a handler capsule over `mm`.
pub(crate) fn new_capsule<'py>(
    py: Python<'py>,
    mm: MemoryManager,
    state: Arc<ManagerState>,
    recorder: Option<Arc<TraceWriter>>,
) -> PyResult<Bound<'py, PyAny>> {
    capsule_over(
        py,
        Context {
            mm,
            state,
            recorder,
            planned: None,
        },
    )
}

/// A handler capsule for the arrays of a planned arena: NumPy frees their data
/// through it, back to the arena (which passes the manager's blocks on). Arrays
/// never allocate through it (it is never NumPy's current handler), and it does not
/// reallocate a block of the arena's region (`ndarray.resize` raises `MemoryError`).
pub(crate) fn planned_capsule<'py>(
    py: Python<'py>,
    mm: MemoryManager,
    state: Arc<ManagerState>,
    planned: Arc<PlannedCore>,
) -> PyResult<Bound<'py, PyAny>> {
    capsule_over(
        py,
        Context {
            mm,
            state,
            recorder: None,
            planned: Some(planned),
        },
    )
}

fn capsule_over(py: Python<'_>, ctx: Context) -> PyResult<Bound<'_, PyAny>> {
    let ctx = Box::into_raw(Box::new(ctx));
    let mut name = [0 as c_char; 127];
    for (dst, &src) in name.iter_mut().zip(b"tensorpool") {
        *dst = src as c_char;
    }
    let handler = Box::into_raw(Box::new(PyDataMemHandler {
        name,
        version: 1,
        allocator: PyDataMemAllocator {
            ctx: ctx.cast(),
            malloc: hook_malloc,
            calloc: hook_calloc,
            realloc: hook_realloc,
            free: hook_free,
        },
    }));
    // SAFETY: `handler` is a valid heap pointer whose ownership the capsule takes;
    // the name is a static C string, as NumPy requires; the destructor frees exactly
    // what was boxed here, once, when the last reference (NumPy keeps one per array
    // it allocated) goes.
    let capsule = unsafe { ffi::PyCapsule_New(handler.cast(), CAPSULE.as_ptr(), Some(destroy)) };
    if capsule.is_null() {
        // SAFETY: the capsule was not made, so we still own both boxes.
        unsafe {
            drop(Box::from_raw(handler));
            drop(Box::from_raw(ctx));
        }
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, capsule) })
}

/// A recording handler over `mm` writing to `path`, and the function that stops
/// the recording.
pub(crate) fn new_recording<'py>(
    py: Python<'py>,
    mm: MemoryManager,
    state: Arc<ManagerState>,
    path: &Path,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let writer =
        Arc::new(TraceWriter::to_file(path).map_err(|e| {
            PyOSError::new_err(format!("cannot record into {}: {e}", path.display()))
        })?);
    let capsule = new_capsule(py, mm, state, Some(writer.clone()))?;
    let shown = path.display().to_string();
    let stop = PyCFunction::new_closure(py, None, None, move |_args: &Bound<'_, PyTuple>, _kw| {
        writer
            .close()
            .map_err(|e| PyOSError::new_err(format!("recording into {shown} failed: {e}")))
    })?;
    Ok((capsule, stop.into_any()))
}

unsafe extern "C" fn destroy(capsule: *mut ffi::PyObject) {
    // SAFETY: NumPy and Python call this once, on our capsule, whose pointer is the
    // handler boxed in `new_capsule`, whose ctx is the boxed `Context`.
    unsafe {
        let handler =
            ffi::PyCapsule_GetPointer(capsule, CAPSULE.as_ptr()).cast::<PyDataMemHandler>();
        if handler.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        let handler = Box::from_raw(handler);
        drop(Box::from_raw(handler.allocator.ctx.cast::<Context>()));
    }
}

/// The context behind `ctx`.
///
/// # Safety
///
/// `ctx` is the ctx of one of our handlers, alive while NumPy calls its functions
/// (NumPy holds a reference to the capsule for every array it allocated with it).
unsafe fn context<'a>(ctx: *mut c_void) -> &'a Context {
    // SAFETY: by the caller's contract.
    unsafe { &*ctx.cast::<Context>() }
}

fn note_allocation(ctx: &Context, ptr: *mut u8, size: usize) -> *mut c_void {
    if let Some(rec) = &ctx.recorder {
        if ptr.is_null() {
            rec.allocate_failure(size);
        } else {
            rec.allocate(ptr as usize, size);
        }
    }
    ptr.cast()
}

unsafe extern "C" fn hook_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: NumPy passes the ctx of the handler it calls.
    let ctx = unsafe { context(ctx) };
    let size = size.max(1);
    let ptr = ctx
        .mm
        .allocate_raw(size, ALIGN)
        .map_or(std::ptr::null_mut(), |p| p.as_ptr());
    note_allocation(ctx, ptr, size)
}

unsafe extern "C" fn hook_calloc(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    // SAFETY: NumPy passes the ctx of the handler it calls.
    let ctx = unsafe { context(ctx) };
    let Some(size) = nelem.checked_mul(elsize) else {
        return note_allocation(ctx, std::ptr::null_mut(), usize::MAX);
    };
    let size = size.max(1);
    let ptr = ctx
        .mm
        .allocate_raw_zeroed(size, ALIGN)
        .map_or(std::ptr::null_mut(), |p| p.as_ptr());
    note_allocation(ctx, ptr, size)
}

unsafe extern "C" fn hook_realloc(
    ctx: *mut c_void,
    ptr: *mut c_void,
    new_size: usize,
) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: as for malloc.
        return unsafe { hook_malloc(ctx, new_size) };
    }
    // SAFETY: NumPy passes the ctx of the handler it calls.
    let ctx_ref = unsafe { context(ctx) };
    if ctx_ref.planned.is_some() {
        // A planned arena's block stays where the plan put it.
        return std::ptr::null_mut();
    }
    let new_size = new_size.max(1);
    let moved = match &ctx_ref.recorder {
        // SAFETY: as for `reallocate_raw` below.
        Some(rec) => unsafe { realloc_recorded(&ctx_ref.mm, rec, ptr.cast(), new_size) },
        // SAFETY: NumPy reallocates an array's data only while it owns the array, so
        // no other thread frees or reallocates `ptr` meanwhile.
        None => unsafe { ctx_ref.mm.reallocate_raw(ptr.cast(), new_size, ALIGN) },
    };
    match moved {
        Ok(new) => new.as_ptr().cast(),
        Err(e @ tensorpool::Error::InvalidPointer { .. }) => {
            report(
                ctx_ref,
                &format!("NumPy reallocated a pointer tensorpool does not own: {e}"),
            );
            std::ptr::null_mut()
        }
        // Out of memory: the old block stays, as C's realloc leaves it; a recording
        // has the failure, as for an allocation (it had none: a user hunt).
        Err(_) => {
            if let Some(rec) = &ctx_ref.recorder {
                rec.allocate_failure(new_size);
            }
            std::ptr::null_mut()
        }
    }
}

/// `realloc` while recording: the block moves, and the trace has the new block's
/// allocation before the old one's free (both are live during the copy, which is
/// what a replay or a plan must make room for), and the free before the old block
/// can be reused by another thread.
///
/// # Safety
///
/// As for [`MemoryManager::reallocate_raw`]: no other thread frees or reallocates
/// `ptr` during the call.
unsafe fn realloc_recorded(
    mm: &MemoryManager,
    rec: &TraceWriter,
    ptr: *mut u8,
    new_size: usize,
) -> tensorpool::Result<std::ptr::NonNull<u8>> {
    let old = mm.raw_size(ptr)?;
    let new = mm.allocate_raw(new_size, ALIGN)?;
    // SAFETY: `ptr` is a live raw block of `old` bytes (checked above) that no other
    // thread touches (the caller's contract), `new` a fresh one of `new_size` bytes:
    // distinct blocks.
    unsafe { std::ptr::copy_nonoverlapping(ptr, new.as_ptr(), old.min(new_size)) };
    rec.allocate(new.as_ptr() as usize, new_size);
    rec.free(ptr as usize, old);
    mm.free_raw(ptr)?;
    Ok(new)
}

unsafe extern "C" fn hook_free(ctx: *mut c_void, ptr: *mut c_void, _size: usize) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: NumPy passes the ctx of the handler it calls.
    let ctx = unsafe { context(ctx) };
    free_checked(ctx, ptr as usize);
}

fn free_checked(ctx: &Context, addr: usize) {
    if let Some(core) = &ctx.planned {
        let Some(ptr) = std::ptr::NonNull::new(addr as *mut u8) else {
            return;
        };
        if let Err(e) = core.release(ptr) {
            report(
                ctx,
                &format!("NumPy freed a pointer through a planned arena's handler, but {e}"),
            );
        }
        return;
    }
    if let Some(rec) = &ctx.recorder {
        // The free goes into the trace before the block can be reused.
        if let Ok(size) = ctx.mm.raw_size(addr as *const u8) {
            rec.free(addr, size);
        }
    }
    if let Err(e) = ctx.mm.free_raw(addr as *mut u8) {
        report(
            ctx,
            &format!("NumPy freed a pointer through tensorpool's handler, but {e}"),
        );
    }
}

fn report(ctx: &Context, message: &str) {
    ctx.state.note_invalid_free();
    report_line(message);
}

/// Writes `tensorpool: message` on stderr, ignoring a failed write (`eprintln!`
/// panics on a closed pipe, and a panic in a function NumPy calls aborts).
pub(crate) fn report_line(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tensorpool: {message}");
}

/// What the handler's `free` does with `addr`, called as NumPy would.
pub(crate) fn free_as_numpy(
    mm: &MemoryManager,
    state: &Arc<ManagerState>,
    recorder: Option<Arc<TraceWriter>>,
    addr: usize,
) {
    let ctx = Context {
        mm: mm.clone(),
        state: state.clone(),
        recorder,
        planned: None,
    };
    free_checked(&ctx, addr);
}

/// Checks that this NumPy has data-memory handlers (and arrays with a
/// `mem_handler`): C-API feature version 0x0f, NumPy 1.22, or later.
pub(crate) fn check_numpy(py: Python<'_>) -> PyResult<()> {
    // NumPy is imported here first, outside rust-numpy's once-cell of its API
    // table: the import can run the program's code (an import hook), and a call
    // into tensorpool from there waited for ever on that cell. Such a call, made
    // while NumPy is still being imported, is refused: NumPy's API is not ready.
    let numpy = py.import("numpy")?;
    let initializing = numpy
        .getattr("__spec__")
        .and_then(|spec| spec.getattr("_initializing"))
        .and_then(|flag| flag.is_truthy())
        .unwrap_or(false);
    if initializing {
        return Err(pyo3::exceptions::PyImportError::new_err(
            "NumPy is still being imported: tensorpool makes no array from code that \
             NumPy's own import runs (an import hook)",
        ));
    }
    api_table(py).map(|_| ())
}

/// NumPy's C-API table, from the `_ARRAY_API` capsule, after checking that this NumPy
/// has handlers (C-API feature version 0x0f, NumPy 1.22, or later).
pub(crate) fn api_table(py: Python<'_>) -> PyResult<*const *const c_void> {
    // Importing through rust-numpy's table first checks the ABI version.
    // SAFETY: an API call without arguments that only reads the version.
    let _ = unsafe { PY_ARRAY_API.PyArray_GetNDArrayCFeatureVersion(py) };
    let module = py
        .import("numpy._core._multiarray_umath")
        .or_else(|_| py.import("numpy.core._multiarray_umath"))?;
    let capsule = module.getattr("_ARRAY_API")?;
    let capsule = capsule.cast::<PyCapsule>().map_err(PyErr::from)?;
    let table = capsule.pointer_checked(None)?.as_ptr() as *const *const c_void;
    // SAFETY: slot 211 of the table is `unsigned int PyArray_GetNDArrayCFeatureVersion(void)`
    // in every NumPy since 1.4.
    let feature = unsafe {
        let f: extern "C" fn() -> c_uint = std::mem::transmute(*table.add(211));
        f()
    };
    if feature < 0x0f {
        return Err(PyRuntimeError::new_err(format!(
            "this NumPy (C-API feature version {feature:#x}) has no data-memory handlers; \
             NumPy 1.22 or later is needed"
        )));
    }
    Ok(table)
}

/// Sets `handler` (a `mem_handler` capsule, or None for NumPy's default) as NumPy's
/// data-memory handler in the current context; returns the one it replaces.
#[pyfunction]
pub(crate) fn set_handler(
    py: Python<'_>,
    handler: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let table = api_table(py)?;
    let arg = handler.map_or(std::ptr::null_mut(), Bound::as_ptr);
    // SAFETY: slot 304 is `PyObject *PyDataMem_SetHandler(PyObject *handler)` since the
    // feature version checked above; it takes a borrowed capsule (or NULL) and returns
    // a new reference to the previous handler, or NULL with an exception set (also
    // when the capsule is not named `mem_handler`).
    let old = unsafe {
        let f: extern "C" fn(*mut ffi::PyObject) -> *mut ffi::PyObject =
            std::mem::transmute(*table.add(304));
        f(arg)
    };
    if old.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, old) }.unbind())
}

/// NumPy's data-memory handler in the current context.
#[pyfunction]
pub(crate) fn get_handler(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let table = api_table(py)?;
    // SAFETY: slot 305 is `PyObject *PyDataMem_GetHandler(void)`, returning a new
    // reference or NULL with an exception set.
    let h = unsafe {
        let f: extern "C" fn() -> *mut ffi::PyObject = std::mem::transmute(*table.add(305));
        f()
    };
    if h.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference we own.
    Ok(unsafe { Bound::from_owned_ptr(py, h) }.unbind())
}
