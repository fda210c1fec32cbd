//! `Buffer`: a block of tensorpool memory as a Python object that behaves as a
//! writable, one-dimensional `memoryview` of bytes.
//!
//! A `Buffer` is a view of a [`Block`]: the whole block, as an allocator hands it out,
//! or a slice of it (`buf[2:10]`, `buf[::2]`), which is a `Buffer` too and keeps the
//! block alive. Indexing, item and slice assignment, `len`, `bytes()`, `tobytes()`,
//! `hex()`, `tolist()`, iteration and comparison behave, and fail, as a
//! `memoryview`'s do; no byte is copied to make a view.
//!
//! The block goes back to its allocator when any view of it is deallocated
//! explicitly (`deallocate(buf[:size])` frees the block, as the lecture's code does),
//! or when the last view goes. It exports its memory writable (`memoryview(buf)`,
//! `numpy.frombuffer(buf, ...)`, `numpy.asarray(buf)`); while an export of any view is
//! alive the block cannot be freed or reused (`BufferError`), exactly as a
//! `bytearray` cannot be resized, so Python code never sees memory change owner
//! under it. Views of a block given back read as released (length 0).

use crate::arena::ArenaCore;
use crate::manager::PyMemoryManager;
use crate::pool::PyFixedSizePool;
use allocator_api2::alloc::Allocator;
use parking_lot::Mutex;
use pyo3::exceptions::{PyBufferError, PyIndexError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyBytes, PyMemoryView, PySlice};
use std::alloc::Layout;
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicBool, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;

/// Who a block belongs to, and so how it goes back. The allocator's Python object
/// is held (a reference count, no atomic operation under the GIL), which keeps the
/// allocator alive as long as the block.
pub(crate) enum Owner {
    /// A typed block of a manager, freed with its layout.
    Manager(Py<PyMemoryManager>, Layout),
    /// A slot of a standalone pool.
    Pool(Py<PyFixedSizePool>),
    /// Memory of an arena, valid while the arena is at this generation (not reset).
    Arena(Arc<ArenaCore>, u64),
}

impl Owner {
    /// Gives the block at `addr` back.
    ///
    /// # Safety
    ///
    /// `addr` is a live block this owner handed out, and nothing uses it afterwards.
    unsafe fn release(&self, addr: usize) {
        let ptr = NonNull::new(addr as *mut u8).expect("blocks are never null");
        match self {
            // SAFETY: by our contract the block came from this manager with `layout`.
            Owner::Manager(mm, layout) => unsafe { mm.get().mm.deallocate(ptr, *layout) },
            Owner::Pool(pool) => {
                let freed = pool.get().pool.deallocate(ptr);
                debug_assert!(freed.is_ok(), "a pool buffer's block was live: {freed:?}");
            }
            // Arena memory goes back all at once, at reset or when the arena goes.
            Owner::Arena(..) => {}
        }
    }

    /// The allocator, as an address that identifies it.
    fn allocator(&self) -> usize {
        match self {
            Owner::Manager(mm, _) => mm.as_ptr() as usize,
            Owner::Pool(pool) => pool.as_ptr() as usize,
            Owner::Arena(core, _) => Arc::as_ptr(core) as usize,
        }
    }

    fn is_valid(&self) -> bool {
        match self {
            Owner::Arena(core, generation) => core.generation() == *generation,
            _ => true,
        }
    }
}

/// A block handed out by an allocator: kept by the `Buffer` the allocator made
/// (the *root*), which every slice of it holds.
pub(crate) struct Block {
    addr: usize,
    /// `None` once the block was given back.
    owner: Mutex<Option<Owner>>,
    /// False once the block was given back (what `owner` says, read without its
    /// lock on every access of a view).
    live: AtomicBool,
    /// For arena memory, the arena and the generation the block belongs to.
    arena: Option<(Arc<ArenaCore>, u64)>,
    /// Live exports (memoryviews, arrays) of any view of the block.
    exports: AtomicUsize,
}

impl Block {
    /// Whether the memory is still the block's: not given back, and for arena
    /// memory, the arena not reset since.
    fn is_valid(&self) -> bool {
        self.live.load(Acquire)
            && self
                .arena
                .as_ref()
                .is_none_or(|(core, generation)| core.generation() == *generation)
    }

    /// Whether the block is valid and belongs to `allocator` (an address from
    /// [`Owner::allocator`], or of the allocator's object).
    pub(crate) fn belongs_to(&self, allocator: usize) -> bool {
        self.owner
            .lock()
            .as_ref()
            .is_some_and(|own| own.is_valid() && own.allocator() == allocator)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // Exports hold a reference to a view, which holds the root: none is alive.
        if let Some(owner) = self.owner.get_mut().take() {
            if owner.is_valid() {
                // SAFETY: the block is live, owned by `owner`, and no view is left.
                unsafe { owner.release(self.addr) };
            }
        }
    }
}

/// Where a view's block is.
enum Backing {
    /// This buffer is the one the allocator made: the block is here.
    Root(Block),
    /// A slice: the block is in the root buffer, which this holds alive.
    Slice(Py<Buffer>),
}

/// A block of memory from a tensorpool allocator, or a slice of one: a writable,
/// one-dimensional `memoryview` of bytes that owns its block.
///
/// Made by `MemoryManager.allocate`, `FixedSizePool.allocate` and
/// `Arena.allocate`, and by slicing a `Buffer`; freed by the matching `deallocate`
/// (arenas: `reset`) or when the last view of the block goes.
#[pyclass(module = "tensorpool", frozen)]
pub struct Buffer {
    backing: Backing,
    /// The address of the view's first byte, its length and the distance between
    /// its bytes (negative for a reversed slice).
    start: usize,
    len: usize,
    step: isize,
    /// The shape and strides an export points at: `[len]` and `[step]`.
    shape: [ffi::Py_ssize_t; 1],
    strides: [ffi::Py_ssize_t; 1],
}

impl Buffer {
    /// The whole of a new block of `len` bytes at `ptr`, from `owner`.
    pub(crate) fn new(ptr: NonNull<u8>, len: usize, owner: Owner) -> Buffer {
        let arena = match &owner {
            Owner::Arena(core, generation) => Some((core.clone(), *generation)),
            _ => None,
        };
        let block = Block {
            addr: ptr.as_ptr() as usize,
            owner: Mutex::new(Some(owner)),
            live: AtomicBool::new(true),
            arena,
            exports: AtomicUsize::new(0),
        };
        Buffer::view(Backing::Root(block), ptr.as_ptr() as usize, len, 1)
    }

    /// This buffer as a Python object, which the cycle collector does not track.
    ///
    /// PyO3 makes every class a garbage-collected type, so each new `Buffer` joins
    /// the collector's youngest generation, and every collection (one per 700 new
    /// objects) walks all the buffers alive: 13% of the lecture's loop of 10,000
    /// blocks. A `Buffer` can never be part of a reference cycle: the only Python
    /// objects it holds are its allocator's object (a pool, a manager, which hold
    /// none that could lead back to a buffer) and the root buffer of a slice, and
    /// it has no `__dict__` and no subclasses to add any. So, as CPython does for a
    /// tuple of atomic objects, it is untracked: freed by its reference count alone.
    pub(crate) fn into_untracked(self, py: Python<'_>) -> PyResult<Bound<'_, Buffer>> {
        let object = Bound::new(py, self)?;
        untrack(object.as_any());
        Ok(object)
    }

    fn view(backing: Backing, start: usize, len: usize, step: isize) -> Buffer {
        Buffer {
            backing,
            start,
            len,
            step,
            shape: [len as ffi::Py_ssize_t],
            strides: [step as ffi::Py_ssize_t],
        }
    }

    /// The block this buffer views.
    fn block(&self) -> &Block {
        match &self.backing {
            Backing::Root(block) => block,
            Backing::Slice(root) => root.get().block(),
        }
    }

    /// The root buffer of this view, as a new reference (for a slice of it).
    fn root(slf: &Bound<'_, Self>) -> Py<Buffer> {
        match &slf.get().backing {
            Backing::Root(_) => slf.clone().unbind(),
            Backing::Slice(root) => root.clone_ref(slf.py()),
        }
    }

    /// Byte `i` of the view.
    ///
    /// # Safety
    ///
    /// `i < len`, and the caller, holding the GIL, checked the block valid
    /// (`check_valid`) and has run no Python code since (only a thread holding the
    /// GIL can free the block).
    unsafe fn byte(&self, i: usize) -> u8 {
        debug_assert!(i < self.len);
        let addr = (self.start as isize + i as isize * self.step) as usize;
        // SAFETY: `i < len`, so `addr` is a byte of the view, inside the block, which
        // is live and stays so (the caller's contract).
        unsafe { *(addr as *const u8) }
    }

    fn check_valid(&self) -> PyResult<()> {
        if self.block().is_valid() {
            Ok(())
        } else {
            Err(PyValueError::new_err(
                "the buffer was released: its memory went back to its allocator",
            ))
        }
    }

    /// Gives the block back for `allocator` (the address of its Python object):
    /// refuses a buffer of another allocator (`ValueError`) or one with live exports
    /// (`BufferError`), changing nothing then. Every view of the block reads as
    /// released afterwards.
    pub(crate) fn deallocate_from(&self, allocator: usize) -> PyResult<()> {
        self.check_valid()?;
        let mut own = self.block().owner.lock();
        if own.as_ref().is_none_or(|o| o.allocator() != allocator) {
            return Err(PyValueError::new_err(
                "the buffer was not allocated by this allocator; nothing was freed",
            ));
        }
        let exports = self.block().exports.load(Relaxed);
        if exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot free a buffer while {exports} export(s) (memoryview, array) of it are alive"
            )));
        }
        let own = own.take().expect("checked above");
        self.block().live.store(false, Release);
        // SAFETY: the block was valid (live and owned by `own`), it has no exports,
        // and with the owner taken no view touches it again.
        unsafe { own.release(self.block().addr) };
        Ok(())
    }

    /// Whether this view's block belongs to `allocator` (as for
    /// [`deallocate_from`](Self::deallocate_from)).
    pub(crate) fn belongs_to(&self, allocator: usize) -> bool {
        self.block().belongs_to(allocator)
    }

    /// A `memoryview` of this view (for the operations that behave as a memoryview's).
    fn memoryview<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        PyMemoryView::from(slf.as_any())
    }
}

#[pymethods]
impl Buffer {
    /// The size in bytes (0 once released).
    fn __len__(&self) -> usize {
        if self.block().is_valid() {
            self.len
        } else {
            0
        }
    }

    /// The address of the first byte (for foreign code; 0 once released).
    #[getter]
    fn address(&self) -> usize {
        if self.block().is_valid() {
            self.start
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
        !self.block().is_valid()
    }

    /// Always false: the memory is writable.
    #[getter]
    fn readonly(&self) -> bool {
        false
    }

    /// `'B'`: unsigned bytes, as a memoryview of bytes.
    #[getter]
    fn format(&self) -> &'static str {
        "B"
    }

    #[getter]
    fn itemsize(&self) -> usize {
        1
    }

    #[getter]
    fn ndim(&self) -> usize {
        1
    }

    #[getter]
    fn shape(&self) -> (usize,) {
        (self.__len__(),)
    }

    #[getter]
    fn strides(&self) -> (isize,) {
        (self.step,)
    }

    /// Whether the bytes are contiguous (not a slice with a step).
    #[getter]
    fn contiguous(&self) -> bool {
        self.step == 1 || self.len <= 1
    }

    /// As [`contiguous`](Self::contiguous): one dimension is C- and F-ordered alike.
    #[getter]
    fn c_contiguous(&self) -> bool {
        self.contiguous()
    }

    /// As [`contiguous`](Self::contiguous).
    #[getter]
    fn f_contiguous(&self) -> bool {
        self.contiguous()
    }

    /// No suboffsets, as a memoryview of bytes has none.
    #[getter]
    fn suboffsets<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyTuple> {
        pyo3::types::PyTuple::empty(py)
    }

    fn __repr__(&self) -> String {
        if !self.block().is_valid() {
            return "<tensorpool.Buffer (released)>".to_string();
        }
        let step = if self.step == 1 {
            String::new()
        } else {
            format!(", step {}", self.step)
        };
        format!(
            "<tensorpool.Buffer of {} bytes at {:#x}{step}>",
            self.len, self.start
        )
    }

    /// `buf[i]`: the byte at `i` (an int); `buf[a:b:c]`: a `Buffer` over the same
    /// memory, keeping the block alive; anything else as a memoryview takes it.
    fn __getitem__<'py>(
        slf: &Bound<'py, Self>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        // The key is read first: reading it may run Python code (`__index__`) that
        // frees the block, and only then is the block checked (a memoryview holds an
        // export over the whole operation instead).
        if let Ok(slice) = key.cast::<PySlice>() {
            let idx = slice.indices(this.len as isize)?;
            this.check_valid()?;
            let start = (this.start as isize + idx.start * this.step) as usize;
            let view = Buffer::view(
                Backing::Slice(Buffer::root(slf)),
                start,
                idx.slicelength,
                this.step * idx.step,
            );
            return Ok(view.into_untracked(py)?.into_any());
        }
        if let Ok(index) = key.extract::<isize>() {
            this.check_valid()?;
            let i = if index < 0 {
                index + this.len as isize
            } else {
                index
            };
            if i < 0 || i >= this.len as isize {
                return Err(PyIndexError::new_err("index out of bounds on dimension 1"));
            }
            // SAFETY: `0 <= i < len`; the block was checked valid above, after the
            // key was read, and this thread has run no Python code since.
            let byte = unsafe { this.byte(i as usize) };
            return Ok(byte.into_pyobject(py)?.into_any());
        }
        this.check_valid()?;
        Buffer::memoryview(slf)?.get_item(key)
    }

    /// `buf[i] = byte`, `buf[a:b] = bytes-like`: as a memoryview assigns, with its
    /// errors (a length that differs, a value out of range).
    fn __setitem__(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let this = slf.get();
        // The lecture's `buf[a:b] = some_bytes` on a contiguous view: one copy. The
        // slice is read before the block is checked (as in `__getitem__`).
        if let (Ok(slice), Ok(bytes)) = (key.cast::<PySlice>(), value.cast::<PyBytes>()) {
            let idx = slice.indices(this.len as isize)?;
            this.check_valid()?;
            let src = bytes.as_bytes();
            if this.step == 1 && idx.step == 1 && src.len() == idx.slicelength {
                // SAFETY: `[start, start + slicelength)` lies inside the view, in the
                // live block (checked valid above, after the slice was read; only this
                // thread, holding the GIL, could free it, and it runs no Python code
                // since); the source is a separate, immutable bytes object.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        (this.start + idx.start as usize) as *mut u8,
                        src.len(),
                    )
                };
                return Ok(());
            }
        }
        this.check_valid()?;
        Buffer::memoryview(slf)?.set_item(key, value)
    }

    /// The bytes, one int each, read as the iteration goes (as a memoryview's: a
    /// write during the loop is seen; the first copied the whole buffer, 128 MiB of
    /// ints for 16 MiB). The iteration holds no export: the block can go meanwhile,
    /// and the next step then raises.
    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<ByteIter> {
        ByteIter::over(slf, false)
    }

    /// The bytes from the last, one int each, as [`__iter__`](Self::__iter__) reads
    /// them.
    fn __reversed__(slf: &Bound<'_, Self>) -> PyResult<ByteIter> {
        ByteIter::over(slf, true)
    }

    /// Pickling is refused, as for a memoryview (protocols 0 and 1 wrote a pickle
    /// that could not be loaded).
    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "cannot pickle 'tensorpool.Buffer' object",
        ))
    }

    /// `del buf[i]`: refused, as a memoryview refuses it (its size is fixed).
    fn __delitem__(&self, _key: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(pyo3::exceptions::PyTypeError::new_err(
            "cannot delete memory",
        ))
    }

    /// `hash(buf)`: refused, as for a writable memoryview (its bytes can change).
    fn __hash__(&self) -> PyResult<isize> {
        Err(PyValueError::new_err(
            "cannot hash writable tensorpool.Buffer object",
        ))
    }

    /// The bytes as `bytes`.
    #[pyo3(signature = (order=None))]
    fn tobytes<'py>(
        slf: &Bound<'py, Self>,
        order: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().check_valid()?;
        Buffer::memoryview(slf)?.call_method1("tobytes", (order,))
    }

    /// The bytes as a list of ints.
    fn tolist<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().check_valid()?;
        Buffer::memoryview(slf)?.call_method0("tolist")
    }

    /// The bytes in hexadecimal, as `bytes.hex` (with its `sep` and
    /// `bytes_per_sep`, by position or by name).
    #[pyo3(signature = (*args, **kwargs))]
    fn hex<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, pyo3::types::PyTuple>,
        kwargs: Option<&Bound<'py, pyo3::types::PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().check_valid()?;
        Buffer::memoryview(slf)?.call_method("hex", args, kwargs)
    }

    /// `==` and `!=` compare the bytes with any bytes-like object, as a
    /// memoryview's do.
    fn __richcmp__<'py>(
        slf: &Bound<'py, Self>,
        other: &Bound<'py, PyAny>,
        op: CompareOp,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if !matches!(op, CompareOp::Eq | CompareOp::Ne) || !slf.get().block().is_valid() {
            return Ok(py.NotImplemented().into_bound(py));
        }
        let mine = Buffer::memoryview(slf)?;
        mine.rich_compare(other, op)
    }

    /// Exports the memory, writable (with strides for a slice with a step).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        if !this.block().is_valid() {
            return Err(PyBufferError::new_err(
                "the buffer was released: its memory went back to its allocator",
            ));
        }
        if this.step == 1 || this.len <= 1 {
            // SAFETY: `view` is the caller's Py_buffer to fill; the memory is `len`
            // live, writable bytes that stay valid while the export holds a
            // reference to this view (`obj`, set by PyBuffer_FillInfo), which holds
            // the block: the block refuses to be freed or reset under an export.
            let rc = unsafe {
                ffi::PyBuffer_FillInfo(
                    view,
                    slf.as_ptr(),
                    this.start as *mut std::ffi::c_void,
                    this.len as ffi::Py_ssize_t,
                    0,
                    flags,
                )
            };
            if rc != 0 {
                return Err(PyErr::fetch(slf.py()));
            }
        } else {
            // A consumer that asks for contiguous memory (any order) gets none: it
            // would take the first byte's address for the start of `len` contiguous
            // bytes, outside the view (a reversed slice's first byte is its block's
            // last: a consumer read the next block; a user hunt).
            let asks = |request: c_int| flags & request == request;
            if !asks(ffi::PyBUF_STRIDES)
                || asks(ffi::PyBUF_C_CONTIGUOUS)
                || asks(ffi::PyBUF_F_CONTIGUOUS)
                || asks(ffi::PyBUF_ANY_CONTIGUOUS)
            {
                return Err(PyBufferError::new_err(
                    "the buffer is a slice with a step: it is not contiguous",
                ));
            }
            // SAFETY: as above; the bytes are `len` bytes `step` apart from `start`,
            // all inside the block; `shape` and `strides` live in this view, which
            // the export keeps alive (`obj` holds a new reference to it).
            unsafe {
                let v = &mut *view;
                v.buf = this.start as *mut std::ffi::c_void;
                v.obj = ffi::Py_NewRef(slf.as_ptr());
                v.len = this.len as ffi::Py_ssize_t;
                v.readonly = 0;
                v.itemsize = 1;
                v.format = if flags & ffi::PyBUF_FORMAT != 0 {
                    c"B".as_ptr().cast_mut()
                } else {
                    std::ptr::null_mut()
                };
                v.ndim = 1;
                v.shape = this.shape.as_ptr().cast_mut();
                v.strides = this.strides.as_ptr().cast_mut();
                v.suboffsets = std::ptr::null_mut();
                v.internal = std::ptr::null_mut();
            }
        }
        this.block().exports.fetch_add(1, Relaxed);
        if let Some(Owner::Arena(core, _)) = &*this.block().owner.lock() {
            core.export_added();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.block().exports.fetch_sub(1, Relaxed);
        if let Some(Owner::Arena(core, _)) = &*self.block().owner.lock() {
            core.export_released();
        }
    }
}

/// Takes `object`, which can never be part of a reference cycle, off the cycle
/// collector's lists (see [`Buffer::into_untracked`]).
pub(crate) fn untrack(object: &Bound<'_, PyAny>) {
    // SAFETY: `object` is a live object of a garbage-collected type (every PyO3
    // class is one), which `PyObject_GC_UnTrack` accepts tracked or not; its
    // deallocator untracks it again, which is a no-op on an untracked object.
    unsafe { ffi::PyObject_GC_UnTrack(object.as_ptr().cast()) };
}

/// The iterator of a [`Buffer`]'s bytes: reads the next byte at each step, from the
/// first or the last, while the block lives.
#[pyclass(module = "tensorpool")]
pub struct ByteIter {
    buffer: Py<Buffer>,
    /// Bytes read so far.
    next: usize,
    reversed: bool,
}

impl ByteIter {
    /// The iteration over `buffer`'s bytes, from the first or (`reversed`) the last.
    fn over(buffer: &Bound<'_, Buffer>, reversed: bool) -> PyResult<ByteIter> {
        buffer.get().check_valid()?;
        Ok(ByteIter {
            buffer: buffer.clone().unbind(),
            next: 0,
            reversed,
        })
    }
}

#[pymethods]
impl ByteIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self) -> PyResult<Option<u8>> {
        let buffer = self.buffer.get();
        if self.next >= buffer.len {
            return Ok(None);
        }
        buffer.check_valid()?;
        let i = if self.reversed {
            buffer.len - 1 - self.next
        } else {
            self.next
        };
        self.next += 1;
        // SAFETY: `i < len`; the block was checked valid just above, and this
        // thread has run no Python code since.
        Ok(Some(unsafe { buffer.byte(i) }))
    }
}
