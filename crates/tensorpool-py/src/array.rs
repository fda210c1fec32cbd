//! NumPy arrays over tensorpool memory, without copying.
//!
//! An array made here has a hidden base object, a [`Block`], that owns its memory:
//! NumPy keeps the base alive as long as the array or any view of it lives, and when
//! the last one goes the block goes back to its allocator (a manager's pools, or an
//! arena's count of live arrays). The block also keeps the allocator alive, so arrays
//! outlive the `MemoryManager` or `Arena` object that made them.

use crate::arena::ArenaCore;
use allocator_api2::alloc::Allocator;
use numpy::npyffi::{self, npy_intp, NpyTypes, NPY_ARRAY_CARRAY, NPY_ARRAY_FARRAY, PY_ARRAY_API};
use numpy::{PyArrayDescr, PyArrayDescrMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;
use tensorpool::MemoryManager;

/// Alignment of array data: a cache line, an AVX-512 vector (NumPy's own is 16).
pub(crate) const ARRAY_ALIGN: usize = 64;

/// NumPy's limit on dimensions (NPY_MAXDIMS in NumPy 2).
const MAX_DIMS: usize = 64;

/// What owns the memory of an array.
pub(crate) enum BlockOwner {
    /// A typed block of a manager.
    Manager(MemoryManager, Layout),
    /// Memory of an arena, which counts its live arrays.
    Arena(Arc<ArenaCore>),
}

/// The hidden base object of arrays from tensorpool: gives the block back when NumPy
/// lets go of it.
#[pyclass(module = "tensorpool", frozen)]
pub struct Block {
    addr: usize,
    owner: BlockOwner,
}

impl Drop for Block {
    fn drop(&mut self) {
        match &self.owner {
            BlockOwner::Manager(mm, layout) => {
                let ptr = NonNull::new(self.addr as *mut u8).expect("blocks are never null");
                // SAFETY: the block came from this manager with `layout` (see
                // `Block::new`), and the last array over it is gone.
                unsafe { mm.deallocate(ptr, *layout) }
            }
            BlockOwner::Arena(core) => core.array_released(),
        }
    }
}

impl Block {
    /// Takes ownership of `ptr`, a live block of `owner` (for a manager, allocated with
    /// the layout it names).
    pub(crate) fn new(ptr: NonNull<u8>, owner: BlockOwner) -> Block {
        if let BlockOwner::Arena(core) = &owner {
            core.array_added();
        }
        Block {
            addr: ptr.as_ptr() as usize,
            owner,
        }
    }
}

/// A request for an array: its dimensions, element type and size.
pub(crate) struct ArraySpec<'py> {
    dims: Vec<npy_intp>,
    descr: Bound<'py, PyArrayDescr>,
    fortran: bool,
    /// Bytes of data, at least 1 (NumPy's own allocator does the same).
    pub(crate) nbytes: usize,
}

impl<'py> ArraySpec<'py> {
    /// Reads `shape` (an int or a sequence of ints), `dtype` (anything `numpy.dtype`
    /// takes; default float64) and `order` ("C" or "F") as `numpy.empty` does.
    pub(crate) fn parse(
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: &str,
    ) -> PyResult<Self> {
        let py = shape.py();
        let fortran = match order {
            "C" | "c" => false,
            "F" | "f" => true,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "order must be 'C' or 'F', not {order:?}"
                )))
            }
        };
        let mut dims = Vec::new();
        if shape.is_instance_of::<PyInt>() {
            dims.push(shape.extract::<isize>()?);
        } else {
            for d in shape
                .try_iter()
                .map_err(|_| PyTypeError::new_err("shape must be an int or a sequence of ints"))?
            {
                dims.push(d?.extract::<isize>().map_err(|_| {
                    PyTypeError::new_err("shape must be an int or a sequence of ints")
                })?);
            }
        }
        if dims.len() > MAX_DIMS {
            return Err(PyValueError::new_err(format!(
                "an array has at most {MAX_DIMS} dimensions, not {}",
                dims.len()
            )));
        }
        let descr = match dtype {
            None => numpy::dtype::<f64>(py),
            Some(d) if d.is_none() => numpy::dtype::<f64>(py),
            Some(d) => match d.cast::<PyArrayDescr>() {
                Ok(descr) => descr.clone(),
                Err(_) => PyArrayDescr::new(py, d)?,
            },
        };
        if descr.has_object() {
            return Err(PyTypeError::new_err(format!(
                "dtype {descr} holds Python objects, which tensorpool memory cannot hold \
                 (NumPy must own and initialise their references)"
            )));
        }
        let itemsize = descr.itemsize();
        if itemsize == 0 {
            return Err(PyValueError::new_err(format!(
                "dtype {descr} has no size; give one (for example 'S8' or 'U4')"
            )));
        }
        let mut count: usize = 1;
        for &d in &dims {
            if d < 0 {
                return Err(PyValueError::new_err("negative dimensions are not allowed"));
            }
            count = count.checked_mul(d as usize).ok_or_else(too_big)?;
        }
        let nbytes = count.checked_mul(itemsize).ok_or_else(too_big)?;
        if nbytes > isize::MAX as usize {
            return Err(too_big());
        }
        Ok(ArraySpec {
            dims,
            descr,
            fortran,
            nbytes: nbytes.max(1),
        })
    }

    /// The array over `block`'s memory, which must hold `self.nbytes` bytes. The block
    /// becomes the array's base and owns the memory from now on.
    pub(crate) fn wrap(mut self, ptr: NonNull<u8>, block: Block) -> PyResult<Bound<'py, PyAny>> {
        let py = self.descr.py();
        // The block owns the memory from here on, also if the array cannot be made.
        let block = Bound::new(py, block)?;
        let flags = if self.fortran {
            NPY_ARRAY_FARRAY
        } else {
            NPY_ARRAY_CARRAY
        };
        // SAFETY: the type object is NumPy's ndarray; `descr` is a valid descriptor
        // whose reference NewFromDescr steals (hence `into_ptr`); `dims` holds
        // `dims.len()` (<= 64) non-negative extents; strides are NULL so NumPy
        // computes them for the order in `flags`; `ptr` points to `nbytes` live,
        // writable bytes aligned to 64 that stay valid while `block` lives, and the
        // array holds `block` as its base (set below) before it can be used.
        let array = unsafe {
            PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                npyffi::get_type_object(py, NpyTypes::PyArray_Type),
                self.descr.clone().into_ptr().cast(),
                self.dims.len() as i32,
                self.dims.as_mut_ptr(),
                std::ptr::null_mut(),
                ptr.as_ptr().cast(),
                flags,
                std::ptr::null_mut(),
            )
        };
        if array.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `array` is a new reference we own, so taking it is sound.
        let array = unsafe { Bound::from_owned_ptr(py, array) };
        // SAFETY: `array` is a fresh ndarray with no base; SetBaseObject steals the
        // reference to `block` that `into_ptr` gives up, even when it fails.
        let rc = unsafe {
            PY_ARRAY_API.PyArray_SetBaseObject(
                py,
                array.as_ptr().cast::<npyffi::PyArrayObject>(),
                block.into_ptr(),
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(array)
    }
}

fn too_big() -> PyErr {
    PyValueError::new_err("array is too big; `arr.size * arr.dtype.itemsize` is larger than the maximum possible size")
}
