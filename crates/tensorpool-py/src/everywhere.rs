//! tensorpool for every NumPy array of a process: NumPy's *default* handler forwards
//! to tensorpool.
//!
//! NumPy's data-memory handler is a context variable, so `install()` reaches the
//! current context only: threads started later (thread pools, joblib's threading
//! backend, threads started from C) allocate with NumPy's default. All of them use one
//! object, the default handler (`PyDataMem_DefaultHandler`, slot 306 of NumPy's C-API
//! table), a capsule over a static `PyDataMem_Handler` in NumPy. [`install_everywhere`]
//! overwrites its four functions with forwarders (each function pointer is one aligned
//! word, stored atomically: a thread calling through the handler meanwhile gets the
//! old function or the new one, and either is right, as neither reads the context
//! pointer):
//!
//! - `malloc`/`calloc`: from the active manager while one is active, else NumPy's own
//!   functions;
//! - `free`: a block of a manager that was ever active goes back to it (found with its
//!   checked raw free, which refuses a foreign pointer and changes nothing); any other
//!   pointer is NumPy's own, from before, and goes to NumPy's `free`;
//! - `realloc`: a tensorpool block is reallocated by its manager, any other by NumPy.
//!
//! [`uninstall_everywhere`] leaves no manager active: new arrays take NumPy's own
//! functions again, and the forwarders stay, so that the arrays tensorpool made are
//! still freed by tensorpool whenever they die. Managers that were ever active are kept
//! for the life of the process (at most [`MANAGERS`]). A forked child inherits the
//! forwarders and the managers and keeps working. What this does not reach: contexts
//! that set a handler of their own (`tensorpool.use`, another library's handler), and
//! memory NumPy does not allocate through its data handler (object arrays' items,
//! temporary buffers of its own).

use crate::handler::{api_table, PyDataMemAllocator, PyDataMemHandler, ALIGN, CAPSULE};
use crate::manager::ManagerState;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, Mutex, OnceLock};
use tensorpool::{Error, MemoryManager, PointerError};

/// Most managers that can be made active over a process's life.
pub(crate) const MANAGERS: usize = 16;

/// A manager that was made active, kept for the life of the process.
struct Installed {
    mm: MemoryManager,
    state: Arc<ManagerState>,
}

/// Every manager ever made active, in order (never removed: their blocks may be
/// alive anywhere).
static MANAGERS_EVER: [OnceLock<Installed>; MANAGERS] = [const { OnceLock::new() }; MANAGERS];
/// 1 + the index of the active manager in [`MANAGERS_EVER`]; 0: none.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// NumPy's default handler and its own functions, once patched.
static PATCHED: OnceLock<Patched> = OnceLock::new();
/// Serializes installs and uninstalls.
static SWITCH: Mutex<()> = Mutex::new(());

/// NumPy's default handler, and its allocator and name as NumPy made them.
struct Patched {
    handler: usize,
    original: Original,
    name: [u8; 127],
}

/// NumPy's own functions and context.
#[derive(Clone, Copy)]
struct Original {
    ctx: usize,
    malloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    calloc: unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}

fn original() -> &'static Original {
    &PATCHED
        .get()
        .expect("the forwarders run once patched")
        .original
}

fn active() -> Option<&'static Installed> {
    match ACTIVE.load(Acquire) {
        0 => None,
        i => MANAGERS_EVER[i - 1].get(),
    }
}

/// The managers ever active, newest first.
fn ever() -> impl Iterator<Item = &'static Installed> {
    MANAGERS_EVER.iter().rev().filter_map(OnceLock::get)
}

unsafe extern "C" fn forward_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    match active() {
        Some(i) => {
            i.mm.allocate_raw(size.max(1), ALIGN)
                .map_or(std::ptr::null_mut(), |p| p.as_ptr().cast())
        }
        None => {
            let o = original();
            // SAFETY: NumPy's own function with its own context, as NumPy calls it.
            unsafe { (o.malloc)(o.ctx as *mut c_void, size) }
        }
    }
}

unsafe extern "C" fn forward_calloc(_ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    match active() {
        Some(i) => match nelem.checked_mul(elsize) {
            Some(size) => {
                i.mm.allocate_raw_zeroed(size.max(1), ALIGN)
                    .map_or(std::ptr::null_mut(), |p| p.as_ptr().cast())
            }
            None => std::ptr::null_mut(),
        },
        None => {
            let o = original();
            // SAFETY: as in `forward_malloc`.
            unsafe { (o.calloc)(o.ctx as *mut c_void, nelem, elsize) }
        }
    }
}

/// The manager whose live raw block `ptr` is, if any.
fn owner_of(ptr: *mut c_void) -> Option<&'static Installed> {
    ever().find(|i| {
        !matches!(
            i.mm.raw_size(ptr.cast()),
            Err(Error::InvalidPointer {
                reason: PointerError::Foreign,
                ..
            })
        )
    })
}

unsafe extern "C" fn forward_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    if ptr.is_null() {
        return;
    }
    for i in ever() {
        match i.mm.free_raw(ptr.cast()) {
            Ok(()) => return,
            // Not this manager's memory: another's, or NumPy's.
            Err(Error::InvalidPointer {
                reason: PointerError::Foreign,
                ..
            }) => continue,
            Err(e) => {
                i.state.note_invalid_free();
                crate::handler::report_line(&format!(
                    "NumPy freed a pointer through its default handler, but {e}"
                ));
                return;
            }
        }
    }
    let o = original();
    // SAFETY: a pointer no tensorpool manager holds: NumPy's own, made by its own
    // functions before the forwarders were installed or while none was active.
    unsafe { (o.free)(o.ctx as *mut c_void, ptr, size) }
}

unsafe extern "C" fn forward_realloc(
    ctx: *mut c_void,
    ptr: *mut c_void,
    new_size: usize,
) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: as NumPy calls malloc.
        return unsafe { forward_malloc(ctx, new_size) };
    }
    match owner_of(ptr) {
        Some(i) => {
            // SAFETY: NumPy reallocates an array's data only while it owns the array,
            // so no other thread frees or reallocates `ptr` meanwhile.
            match unsafe { i.mm.reallocate_raw(ptr.cast(), new_size.max(1), ALIGN) } {
                Ok(p) => p.as_ptr().cast(),
                Err(e @ Error::InvalidPointer { .. }) => {
                    i.state.note_invalid_free();
                    crate::handler::report_line(&format!(
                        "NumPy reallocated a pointer through its default handler, but {e}"
                    ));
                    std::ptr::null_mut()
                }
                // Out of memory: the old block stays, as C's realloc leaves it.
                Err(_) => std::ptr::null_mut(),
            }
        }
        None => {
            let o = original();
            // SAFETY: NumPy's own block, reallocated by NumPy's own function.
            unsafe { (o.realloc)(o.ctx as *mut c_void, ptr, new_size) }
        }
    }
}

/// NumPy's default handler's struct.
fn default_handler(py: Python<'_>) -> PyResult<*mut PyDataMemHandler> {
    let table = api_table(py)?;
    // SAFETY: slot 306 is `PyObject *PyDataMem_DefaultHandler` (a pointer to the
    // variable) since the C-API feature version `api_table` checked; the capsule is
    // NumPy's and lives as long as NumPy.
    let capsule = unsafe { *(*table.add(306) as *const *mut ffi::PyObject) };
    if capsule.is_null() {
        return Err(PyRuntimeError::new_err(
            "NumPy has no default data-memory handler",
        ));
    }
    // SAFETY: a capsule; a wrong name sets an exception and returns null.
    let handler = unsafe { ffi::PyCapsule_GetPointer(capsule, CAPSULE.as_ptr()) };
    if handler.is_null() {
        return Err(PyErr::fetch(py));
    }
    Ok(handler.cast())
}

/// Stores `value` into the word at `field` atomically.
///
/// # Safety
///
/// `field` is an aligned, word-sized field of NumPy's default handler, which lives as
/// long as the process, and is only ever read whole.
unsafe fn store_word<T>(field: *mut T, value: usize) {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<usize>()) };
    // SAFETY: by the caller's contract, an aligned word that readers read whole.
    unsafe { (*field.cast::<AtomicUsize>()).store(value, Release) };
}

/// Writes `name` into the handler's name (what `get_handler_name()` says).
///
/// # Safety
///
/// As for [`store_word`]: `handler` is NumPy's default handler.
unsafe fn set_name(handler: *mut PyDataMemHandler, name: &[u8]) {
    debug_assert!(name.len() < 127);
    // SAFETY: the name is a 127-byte field; `name` and its terminating NUL fit.
    unsafe {
        let dst = std::ptr::addr_of_mut!((*handler).name).cast::<c_char>();
        for (i, &b) in name.iter().chain(&[0]).enumerate() {
            dst.add(i).write_volatile(b as c_char);
        }
    }
}

/// Makes `mm` the allocator of every NumPy array whose context has NumPy's default
/// handler: every thread, also those started later, but those that set a handler of
/// their own. Arrays made before keep NumPy's allocator.
pub(crate) fn install_everywhere(
    py: Python<'_>,
    mm: &MemoryManager,
    state: &Arc<ManagerState>,
) -> PyResult<()> {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    let handler = default_handler(py)?;
    let patched = PATCHED.get_or_init(|| Patched {
        handler: handler as usize,
        // SAFETY: NumPy's default handler's name, a 127-byte field.
        name: unsafe {
            std::ptr::addr_of!((*handler).name)
                .cast::<[u8; 127]>()
                .read()
        },
        // SAFETY: NumPy's default handler, read once before anything changes it.
        original: unsafe {
            let a = &(*handler).allocator;
            Original {
                ctx: a.ctx as usize,
                malloc: a.malloc,
                calloc: a.calloc,
                realloc: a.realloc,
                free: a.free,
            }
        },
    });
    if patched.handler != handler as usize {
        return Err(PyRuntimeError::new_err(
            "NumPy's default handler changed since tensorpool patched it",
        ));
    }
    let index = match MANAGERS_EVER
        .iter()
        .position(|s| s.get().is_some_and(|i| i.mm.same_manager(mm)))
    {
        Some(i) => i,
        None => {
            let free = MANAGERS_EVER
                .iter()
                .position(|s| s.get().is_none())
                .ok_or_else(|| {
                    PyRuntimeError::new_err(format!(
                        "at most {MANAGERS} managers can serve every array over a process's life"
                    ))
                })?;
            let _ = MANAGERS_EVER[free].set(Installed {
                mm: mm.clone(),
                state: state.clone(),
            });
            free
        }
    };
    ACTIVE.store(index + 1, Release);
    // SAFETY: NumPy's default handler (checked above), whose allocator fields are
    // aligned words that NumPy reads whole before each call.
    unsafe {
        let a: *mut PyDataMemAllocator = std::ptr::addr_of_mut!((*handler).allocator);
        store_word(
            std::ptr::addr_of_mut!((*a).malloc),
            forward_malloc as *const () as usize,
        );
        store_word(
            std::ptr::addr_of_mut!((*a).calloc),
            forward_calloc as *const () as usize,
        );
        store_word(
            std::ptr::addr_of_mut!((*a).realloc),
            forward_realloc as *const () as usize,
        );
        store_word(
            std::ptr::addr_of_mut!((*a).free),
            forward_free as *const () as usize,
        );
        set_name(handler, b"tensorpool");
    }
    Ok(())
}

/// New arrays of every context with NumPy's default handler take NumPy's own
/// allocator again; those tensorpool made are still freed by it.
pub(crate) fn uninstall_everywhere() {
    let _switch = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    ACTIVE.store(0, Release);
    if let Some(p) = PATCHED.get() {
        let len = p.name.iter().position(|&b| b == 0).unwrap_or(126);
        // SAFETY: the handler patched before, NumPy's default.
        unsafe { set_name(p.handler as *mut PyDataMemHandler, &p.name[..len]) };
    }
}

/// The manager serving every array now, if any.
pub(crate) fn active_manager() -> Option<MemoryManager> {
    active().map(|i| i.mm.clone())
}
