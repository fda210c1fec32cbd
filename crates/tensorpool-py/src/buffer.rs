//! `Buffer`: a block of tensorpool memory as a Python object with the buffer protocol.
//!
//! A `Buffer` owns its block: the block goes back to its allocator when the buffer is
//! deallocated explicitly or when the last reference to it goes. It exports its
//! memory writable (`memoryview(buf)`, `numpy.frombuffer(buf, ...)`,
//! `numpy.asarray(buf)`); while an export is alive the block cannot be freed or
//! reused (`BufferError`), exactly as a `bytearray` cannot be resized, so Python code
//! never sees memory change owner under it.

use crate::arena::ArenaCore;
use allocator_api2::alloc::Allocator;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::alloc::Layout;
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::sync::Arc;
use tensorpool::{FixedSizePool, MemoryManager};

/// Who a block belongs to, and so how it goes back.
pub(crate) enum Owner {
    /// A typed block of a manager, freed with its layout.
    Manager(MemoryManager, Layout),
    /// A slot of a standalone pool.
    Pool(Arc<FixedSizePool>),
    /// Memory of an arena, valid while the arena is at this generation (not reset).
    Arena(Arc<ArenaCore>, u64),
}

impl Owner {
    /// Gives the block at `addr` back.
    ///
    /// # Safety
    ///
    /// `addr` is a live block this owner handed out, and nothing uses it afterwards.
    pub(crate) unsafe fn release(&self, addr: usize) {
        let ptr = NonNull::new(addr as *mut u8).expect("blocks are never null");
        match self {
            // SAFETY: by our contract the block came from this manager with `layout`.
            Owner::Manager(mm, layout) => unsafe { mm.deallocate(ptr, *layout) },
            Owner::Pool(pool) => {
                let freed = pool.deallocate(ptr);
                debug_assert!(freed.is_ok(), "a pool buffer's block was live: {freed:?}");
            }
            // Arena memory goes back all at once, at reset or when the arena goes.
            Owner::Arena(..) => {}
        }
    }

    fn same_allocator(&self, other: &Owner) -> bool {
        match (self, other) {
            (Owner::Manager(a, _), Owner::Manager(b, _)) => a.same_manager(b),
            (Owner::Pool(a), Owner::Pool(b)) => Arc::ptr_eq(a, b),
            (Owner::Arena(a, _), Owner::Arena(b, _)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A block of memory from a tensorpool allocator, with the buffer protocol.
///
/// Made by `MemoryManager.allocate`, `FixedSizePool.allocate` and
/// `Arena.allocate`; freed by the matching `deallocate` (arenas: `reset`) or when the
/// last reference goes.
#[pyclass(module = "tensorpool")]
pub struct Buffer {
    addr: usize,
    len: usize,
    /// `None` once the block was given back.
    owner: Option<Owner>,
    /// Live exports (memoryviews, NumPy arrays over the buffer).
    exports: usize,
}

impl Buffer {
    pub(crate) fn new(ptr: NonNull<u8>, len: usize, owner: Owner) -> Buffer {
        Buffer {
            addr: ptr.as_ptr() as usize,
            len,
            owner: Some(owner),
            exports: 0,
        }
    }

    /// Whether the memory is still this buffer's: not given back, and for an arena
    /// buffer, the arena not reset since.
    fn is_valid(&self) -> bool {
        match &self.owner {
            None => false,
            Some(Owner::Arena(core, generation)) => core.generation() == *generation,
            Some(_) => true,
        }
    }

    fn check_valid(&self) -> PyResult<()> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(PyValueError::new_err(
                "the buffer was released: its memory went back to its allocator",
            ))
        }
    }

    /// Takes the block back for `owner`'s allocator: refuses a buffer of another
    /// allocator (`ValueError`) or one with live exports (`BufferError`), changing
    /// nothing then.
    pub(crate) fn deallocate_from(&mut self, owner: &Owner) -> PyResult<()> {
        self.check_valid()?;
        let own = self.owner.as_ref().expect("valid buffers have an owner");
        if !own.same_allocator(owner) {
            return Err(PyValueError::new_err(
                "the buffer was not allocated by this allocator; nothing was freed",
            ));
        }
        if self.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot free a buffer while {} export(s) (memoryview, array) of it are alive",
                self.exports
            )));
        }
        let own = self.owner.take().expect("checked above");
        // SAFETY: the buffer was valid (its block live and owned by `own`), it has no
        // exports, and with the owner taken it never touches the block again.
        unsafe { own.release(self.addr) };
        Ok(())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // Exports hold a reference to the buffer, so none is alive when it drops.
        if self.is_valid() {
            let owner = self.owner.take().expect("valid buffers have an owner");
            // SAFETY: the block is live, ours, and nothing references the buffer.
            unsafe { owner.release(self.addr) };
        }
    }
}

#[pymethods]
impl Buffer {
    /// The size in bytes (0 once released).
    fn __len__(&self) -> usize {
        if self.is_valid() {
            self.len
        } else {
            0
        }
    }

    /// The address of the first byte (for foreign code; 0 once released).
    #[getter]
    fn address(&self) -> usize {
        if self.is_valid() {
            self.addr
        } else {
            0
        }
    }

    /// The size in bytes (0 once released).
    #[getter]
    fn nbytes(&self) -> usize {
        self.__len__()
    }

    /// Whether the memory went back to its allocator.
    #[getter]
    fn released(&self) -> bool {
        !self.is_valid()
    }

    fn __repr__(&self) -> String {
        if self.is_valid() {
            format!(
                "<tensorpool.Buffer of {} bytes at {:#x}>",
                self.len, self.addr
            )
        } else {
            "<tensorpool.Buffer (released)>".to_string()
        }
    }

    /// Exports the memory, writable.
    unsafe fn __getbuffer__(
        mut slf: PyRefMut<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if !slf.is_valid() {
            return Err(PyBufferError::new_err(
                "the buffer was released: its memory went back to its allocator",
            ));
        }
        let (addr, len) = (slf.addr, slf.len);
        // SAFETY: `view` is the caller's Py_buffer to fill; the memory is `len` live,
        // writable bytes that stay valid while the export holds a reference to the
        // buffer (`obj`, set by PyBuffer_FillInfo): the buffer refuses to free or
        // reset under a live export.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                addr as *mut std::ffi::c_void,
                len as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        slf.exports += 1;
        if let Some(Owner::Arena(core, _)) = &slf.owner {
            core.export_added();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&mut self, _view: *mut ffi::Py_buffer) {
        self.exports -= 1;
        if let Some(Owner::Arena(core, _)) = &self.owner {
            core.export_released();
        }
    }
}
