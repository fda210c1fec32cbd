//! `tensorpool.FixedSizePool`: a pool of fixed-size blocks, O(1) allocate and free.

use crate::buffer::{Buffer, Owner};
use crate::manager::{json_to_py, not_a_buffer};
use crate::to_py;
use pyo3::prelude::*;
use std::sync::Arc;
use tensorpool::FixedSizePool;

/// A pool of `pool_size` blocks of `block_size` bytes each.
///
/// `allocate()` returns a `Buffer` of `block_size` bytes; when all blocks are out it
/// raises `OutOfMemoryError`. `deallocate(buf)` gives a block back (`ValueError` for
/// a buffer of another allocator, `BufferError` while the buffer is exported).
#[pyclass(name = "FixedSizePool", module = "tensorpool", frozen)]
pub struct PyFixedSizePool {
    pub(crate) pool: Arc<FixedSizePool>,
}

#[pymethods]
impl PyFixedSizePool {
    #[new]
    #[pyo3(signature = (block_size, pool_size, *, alignment=64))]
    fn new(block_size: usize, pool_size: usize, alignment: usize) -> PyResult<Self> {
        let pool = FixedSizePool::builder(block_size)
            .alignment(alignment)
            .capacity(pool_size)
            .build()
            .map_err(to_py)?;
        Ok(PyFixedSizePool {
            pool: Arc::new(pool),
        })
    }

    /// A block, as a `Buffer` of `block_size` bytes (uninitialised).
    fn allocate<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Buffer>> {
        let pool = &slf.get().pool;
        let ptr = pool.allocate().map_err(to_py)?;
        Buffer::new(ptr, pool.block_size(), Owner::Pool(slf.clone().unbind()))
            .into_untracked(slf.py())
    }

    /// Gives a block back.
    fn deallocate(slf: &Bound<'_, Self>, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffer = buffer.cast::<Buffer>().map_err(not_a_buffer)?;
        buffer.get().deallocate_from(slf.as_ptr() as usize)
    }

    /// The size of each block.
    #[getter]
    fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// The number of blocks.
    #[getter]
    fn pool_size(&self) -> usize {
        self.pool.capacity().expect("Python pools have a capacity")
    }

    /// Blocks handed out now.
    fn __len__(&self) -> usize {
        self.pool.len()
    }

    /// Blocks free now.
    #[getter]
    fn available(&self) -> usize {
        self.pool_size() - self.pool.len()
    }

    /// The pool's statistics as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(
            py,
            &serde_json::to_string(&self.pool.stats()).expect("stats serialize"),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "<tensorpool.FixedSizePool: {} of {} blocks of {} bytes in use>",
            self.pool.len(),
            self.pool_size(),
            self.pool.block_size()
        )
    }
}
