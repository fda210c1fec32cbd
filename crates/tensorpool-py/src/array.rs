//! NumPy arrays over tensorpool memory, without copying.
//!
//! A manager's array owns its data the way NumPy's own arrays do: the array has
//! `OWNDATA` set and holds the manager's NEP 49 handler, so when it dies NumPy frees
//! the data through that handler (a checked raw free), and the handler keeps the
//! manager alive as long as any array of it lives. No other object is made per
//! array, so `mm.empty` costs what `np.empty` costs plus the allocator's own path.
//!
//! An arena's array has a hidden base object instead, a [`Block`], that counts the
//! arena's live arrays: NumPy keeps the base alive as long as the array or any view
//! of it lives, and when the last one goes the count drops, and the block keeps the
//! arena alive, so arrays outlive the `Arena` object that made them.

use crate::arena::ArenaCore;
use numpy::npyffi::{self, npy_intp, NpyTypes, NPY_ARRAY_CARRAY, NPY_ARRAY_FARRAY, PY_ARRAY_API};
use numpy::{PyArrayDescr, PyArrayDescrMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyInt;
use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of array data: a cache line, an AVX-512 vector (NumPy's own is 16).
pub(crate) const ARRAY_ALIGN: usize = 64;

/// NumPy's limit on dimensions (NPY_MAXDIMS in NumPy 2).
const MAX_DIMS: usize = 64;
/// Extents kept in place in an [`ArraySpec`]; beyond, they go to the heap.
const INLINE_DIMS: usize = 8;

/// `NPY_ARRAY_OWNDATA`: the array frees its data through its `mem_handler`.
const NPY_ARRAY_OWNDATA: c_int = 0x0004;

/// NumPy's `PyArrayObject_fields` (numpy/ndarraytypes.h) as laid out since NumPy
/// 1.22 (C-API feature version 0x0f, which making a handler checks): the struct
/// behind every ndarray, up to `mem_handler`, the handler its data is freed with.
#[repr(C)]
struct ArrayFields {
    ob_base: ffi::PyObject,
    data: *mut c_char,
    nd: c_int,
    dimensions: *mut npy_intp,
    strides: *mut npy_intp,
    base: *mut ffi::PyObject,
    descr: *mut c_void,
    flags: c_int,
    weakreflist: *mut ffi::PyObject,
    buffer_info: *mut c_void,
    mem_handler: *mut ffi::PyObject,
}

/// The hidden base object of an arena's arrays: counts the array out of the arena
/// when NumPy lets go of it.
#[pyclass(module = "tensorpool", frozen)]
pub struct Block {
    core: Arc<ArenaCore>,
}

impl Drop for Block {
    fn drop(&mut self) {
        self.core.array_released();
    }
}

impl Block {
    /// Counts a new array into `core`'s arena.
    pub(crate) fn new(core: Arc<ArenaCore>) -> Block {
        core.array_added();
        Block { core }
    }
}

/// An array's extents: up to [`INLINE_DIMS`] in place (no allocation, and little to
/// zero or move per array), all of them on the heap when there are more.
struct Extents {
    inline: [npy_intp; INLINE_DIMS],
    more: Vec<npy_intp>,
    len: usize,
}

impl Extents {
    fn new() -> Self {
        Extents {
            inline: [0; INLINE_DIMS],
            more: Vec::new(),
            len: 0,
        }
    }

    /// Appends `d`, or says why an array cannot have it.
    fn push(&mut self, d: npy_intp) -> PyResult<()> {
        if self.len == MAX_DIMS {
            return Err(PyValueError::new_err(format!(
                "an array has at most {MAX_DIMS} dimensions"
            )));
        }
        if self.len < INLINE_DIMS {
            self.inline[self.len] = d;
        } else {
            if self.len == INLINE_DIMS {
                self.more.extend_from_slice(&self.inline);
            }
            self.more.push(d);
        }
        self.len += 1;
        Ok(())
    }

    fn as_mut_slice(&mut self) -> &mut [npy_intp] {
        if self.len > INLINE_DIMS {
            &mut self.more
        } else {
            &mut self.inline[..self.len]
        }
    }
}

/// NumPy's scalar types (`np.float32`, ...) and their descriptors, made once per
/// interpreter: `dtype=np.float32` is then a few pointer comparisons instead of
/// NumPy's converter, which costs about 25 ns a call (`np.zeros` pays less for it).
static SCALAR_TYPES: PyOnceLock<Vec<(usize, Py<PyArrayDescr>)>> = PyOnceLock::new();

/// NumPy's `ndarray` type object, looked up once per interpreter (rust-numpy's lookup
/// goes through its API capsule on every call).
fn array_type(py: Python<'_>) -> *mut ffi::PyTypeObject {
    static ARRAY_TYPE: PyOnceLock<usize> = PyOnceLock::new();
    *ARRAY_TYPE.get_or_init(py, || {
        // SAFETY: NumPy's API table is loaded by rust-numpy on first use, with the
        // interpreter attached (`py`); the type object lives as long as NumPy.
        unsafe { npyffi::get_type_object(py, NpyTypes::PyArray_Type) as usize }
    }) as *mut ffi::PyTypeObject
}

/// The descriptor of `dtype` if it is one of NumPy's scalar types (the type object
/// itself, not a subclass or a string).
fn scalar_type_descr<'py>(dtype: &Bound<'py, PyAny>) -> Option<Bound<'py, PyArrayDescr>> {
    let py = dtype.py();
    let table = SCALAR_TYPES.get_or_init(py, || {
        [
            numpy::dtype::<f64>(py),
            numpy::dtype::<f32>(py),
            numpy::dtype::<u8>(py),
            numpy::dtype::<i8>(py),
            numpy::dtype::<i16>(py),
            numpy::dtype::<u16>(py),
            numpy::dtype::<i32>(py),
            numpy::dtype::<u32>(py),
            numpy::dtype::<i64>(py),
            numpy::dtype::<u64>(py),
            numpy::dtype::<bool>(py),
            numpy::dtype::<numpy::Complex64>(py),
            numpy::dtype::<numpy::Complex32>(py),
        ]
        .into_iter()
        .map(|descr| (descr.typeobj().as_ptr() as usize, descr.unbind()))
        .collect()
    });
    let key = dtype.as_ptr() as usize;
    table
        .iter()
        .find(|(ty, _)| *ty == key)
        .map(|(_, descr)| descr.bind(py).clone())
}

/// A request for an array: its dimensions, element type and size.
pub(crate) struct ArraySpec<'py> {
    dims: Extents,
    descr: Bound<'py, PyArrayDescr>,
    fortran: bool,
    /// Bytes of data, at least 1 (NumPy's own allocator does the same).
    pub(crate) nbytes: usize,
    /// Whether the array has no element: its strides are then all 0, as NumPy makes
    /// them for an array it allocates.
    no_elements: bool,
}

impl<'py> ArraySpec<'py> {
    /// Reads `shape` (an int or a sequence of ints), `dtype` (anything `numpy.dtype`
    /// takes; default float64) and `order` ("C", "F", or None for "C") as
    /// `numpy.empty` does.
    #[inline(always)]
    pub(crate) fn parse(
        shape: &Bound<'py, PyAny>,
        dtype: Option<&Bound<'py, PyAny>>,
        order: Option<&str>,
    ) -> PyResult<Self> {
        let py = shape.py();
        let fortran = match order {
            // None is C, as for `numpy.empty`.
            None | Some("C" | "c") => false,
            Some("F" | "f") => true,
            Some(order) => {
                return Err(PyValueError::new_err(format!(
                    "order must be 'C' or 'F', not {order:?}"
                )))
            }
        };
        let mut dims = Extents::new();
        let not_a_shape = || PyTypeError::new_err("shape must be an int or a sequence of ints");
        if shape.is_instance_of::<PyInt>() {
            dims.push(shape.extract::<isize>()?)?;
        } else if let Ok(items) = shape.try_iter() {
            for d in items {
                dims.push(d?.extract::<isize>().map_err(|_| not_a_shape())?)?;
            }
        } else {
            // An integer of another type (`np.int64`, a 0-d array, anything with
            // `__index__`), as NumPy takes it.
            let index = shape.call_method0("__index__").map_err(|_| not_a_shape())?;
            dims.push(index.extract::<isize>()?)?;
        }
        let descr = match dtype {
            None => numpy::dtype::<f64>(py),
            Some(d) if d.is_none() => numpy::dtype::<f64>(py),
            // NumPy's scalar types first: a few pointer comparisons, where the
            // descriptor check looks NumPy's type up through its API table each time.
            Some(d) => match scalar_type_descr(d) {
                Some(descr) => descr,
                None => match d.cast::<PyArrayDescr>() {
                    Ok(descr) => descr.clone(),
                    Err(_) => PyArrayDescr::new(py, d)?,
                },
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
        for &d in dims.as_mut_slice().iter() {
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
            no_elements: count == 0,
        })
    }

    /// An array over `nbytes` at `ptr`, not owning them.
    #[inline(always)]
    fn new_array(&mut self, ptr: NonNull<u8>) -> PyResult<Bound<'py, PyAny>> {
        let py = self.descr.py();
        let flags = if self.fortran {
            NPY_ARRAY_FARRAY
        } else {
            NPY_ARRAY_CARRAY
        };
        let dims = self.dims.as_mut_slice();
        let mut zeros: [npy_intp; MAX_DIMS];
        let strides = if self.no_elements {
            zeros = [0; MAX_DIMS];
            zeros.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: the type object is NumPy's ndarray; `descr` is a valid descriptor
        // whose reference NewFromDescr steals (hence `into_ptr`); `dims` is a slice
        // of at most 64 non-negative extents; strides are NULL so NumPy computes
        // them for the order in `flags`, or, for an array without elements, as many
        // zeros as dimensions; `ptr` points to `nbytes` live, writable bytes aligned
        // to 64, which the caller keeps valid as long as the array lives.
        let array = unsafe {
            PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                array_type(py),
                self.descr.clone().into_ptr().cast(),
                dims.len() as i32,
                dims.as_mut_ptr(),
                strides,
                ptr.as_ptr().cast(),
                flags,
                std::ptr::null_mut(),
            )
        };
        if array.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `array` is a new reference we own.
        Ok(unsafe { Bound::from_owned_ptr(py, array) })
    }

    /// The array over `ptr`, a raw block of at least `self.nbytes` bytes that
    /// `handler` (a NEP 49 handler capsule) frees: the array owns the block from
    /// now on, and NumPy frees it through `handler` when the array dies. If no array
    /// can be made, the block is handed back in the error.
    #[inline(always)]
    pub(crate) fn wrap_owned(
        mut self,
        ptr: NonNull<u8>,
        handler: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyAny>, (PyErr, NonNull<u8>)> {
        let array = self.new_array(ptr).map_err(|e| (e, ptr))?;
        // SAFETY: `array` is a fresh ndarray (an `ArrayFields` since NumPy 1.22, as
        // checked when the handler was made) that nobody else has seen: it does not
        // own its data, so its `mem_handler` is NULL. Setting OWNDATA and a handler
        // reference (which the array's deallocation releases) makes NumPy free
        // `ptr` through `handler`, as for an array it allocated with it.
        unsafe {
            let fields = array.as_ptr().cast::<ArrayFields>();
            debug_assert!((*fields).mem_handler.is_null());
            (*fields).mem_handler = handler.clone().into_ptr();
            (*fields).flags |= NPY_ARRAY_OWNDATA;
        }
        Ok(array)
    }

    /// The array over `ptr`, memory of `block`'s arena holding `self.nbytes` bytes;
    /// the block becomes the array's base.
    pub(crate) fn wrap_in_block(
        mut self,
        ptr: NonNull<u8>,
        block: Block,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = self.descr.py();
        // The block counts the array from here on, also if the array cannot be made.
        let block = Bound::new(py, block)?;
        // It holds no Python object, so it can be in no cycle (as for a `Buffer`).
        crate::buffer::untrack(block.as_any());
        let array = self.new_array(ptr)?;
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
