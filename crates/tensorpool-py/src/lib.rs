//! `tensorpool._tensorpool`: the Rust half of the `tensorpool` Python package.
//!
//! The package's public names are defined here, as Python classes backed by the
//! Rust core, and re-exported by `python/tensorpool/__init__.py`, which adds the
//! context managers (`use`, `record`) and the default manager:
//!
//! - [`MemoryManager`](manager::PyMemoryManager): the tiered manager; `empty`/`zeros`
//!   return NumPy arrays whose data lives in its pools, `allocate` returns a
//!   [`Buffer`](buffer::Buffer);
//! - [`FixedSizePool`](pool::PyFixedSizePool) and [`Arena`](arena::PyArena): the
//!   building blocks on their own;
//! - [`PlannedArena`](planned::PyPlannedArena): an arena that runs a plan of one
//!   step (from a plan file, a trace, or the steps it watched);
//! - [`handler`]: the NEP 49 data-memory handler that makes tensorpool NumPy's
//!   allocator.
//!
//! Memory handed to Python is owned by a Python object (a `Buffer`, or the array
//! itself, which owns its data through the manager's handler) that gives it back
//! when the last reference goes, so Python code never sees freed memory. The unsafe code is where raw memory meets
//! NumPy's C API; each block says why it is sound.
// These docs are for the extension's maintainers (its items are private: Python
// sees the classes): build them with `cargo doc -p tensorpool-py
// --document-private-items`, where the links resolve.
#![allow(rustdoc::private_intra_doc_links)]

use pyo3::create_exception;
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use tensorpool::Error;

mod arena;
mod array;
mod buffer;
mod everywhere;
mod handler;
mod manager;
mod planned;
mod pool;

create_exception!(
    tensorpool,
    OutOfMemoryError,
    PyMemoryError,
    "Memory ran out in a tensorpool allocator; the message explains its state."
);

/// The Python exception for a tensorpool error: out of memory is an
/// `OutOfMemoryError` (a `MemoryError`), everything else is bad input, a `ValueError`.
pub(crate) fn to_py(e: Error) -> PyErr {
    match e {
        Error::OutOfMemory(_) => OutOfMemoryError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

#[pymodule]
fn _tensorpool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("OutOfMemoryError", m.py().get_type::<OutOfMemoryError>())?;
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<manager::PyMemoryManager>()?;
    m.add_class::<pool::PyFixedSizePool>()?;
    m.add_class::<arena::PyArena>()?;
    m.add_class::<planned::PyPlannedArena>()?;
    m.add_function(wrap_pyfunction!(handler::set_handler, m)?)?;
    m.add_function(wrap_pyfunction!(handler::get_handler, m)?)?;
    m.add_function(wrap_pyfunction!(manager::install_everywhere, m)?)?;
    m.add_function(wrap_pyfunction!(manager::uninstall_everywhere, m)?)?;
    m.add("MAX_ALLOCATION_SIZE", tensorpool::MAX_ALLOCATION_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
