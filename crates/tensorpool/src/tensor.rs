//! `Tensor<T>`: a typed, shaped, owning handle to memory from a [`MemoryManager`].
//!
//! A tensor is a contiguous, row-major array of `T` with a shape. It derefs to a
//! slice, returns its block to the manager when dropped, and keeps the manager alive
//! while it exists. With the `ndarray` feature it views as an `ndarray::ArrayViewD`
//! without copying.
//!
//! ```
//! use tensorpool::{MemoryManager, Tensor};
//!
//! let mm = MemoryManager::default();
//! let mut t = Tensor::<f32>::zeros(&mm, &[2, 3])?;
//! t[4] = 1.5; // row 1, column 1
//! assert_eq!(t.shape(), &[2, 3]);
//! assert_eq!(t.strides(), vec![3, 1]);
//! assert_eq!(t.iter().sum::<f32>(), 1.5);
//! assert_eq!(t.as_ptr() as usize % 64, 0);
//! let t = t.reshape(&[3, 2])?;
//! assert_eq!(t.len(), 6);
//! drop(t); // the block goes back to its size class
//! assert_eq!(mm.stats().allocated_bytes, 0);
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::limits::MAX_ALLOCATION_SIZE;
use crate::manager::MemoryManager;
use allocator_api2::boxed::Box;
use bytemuck::Zeroable;
use std::alloc::Layout;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};

/// A row-major array of `T` in memory from a [`MemoryManager`].
pub struct Tensor<T> {
    data: Box<[T], MemoryManager>,
    shape: Vec<usize>,
}

fn element_count(shape: &[usize]) -> Result<usize> {
    // The product of the extents but the zero ones must fit too: every stride is a
    // product of some of them, also when another extent makes the tensor empty.
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::InvalidShape(format!(
                "{shape:?} has more elements than a machine word counts, or strides that \
                 overflow one (no allocation serves more than {MAX_ALLOCATION_SIZE} bytes)"
            ))
        })?;
    Ok(if shape.contains(&0) { 0 } else { nonzero })
}

/// A boxed slice of `len` elements from `mm`, uninitialized, or zeroed (memory fresh
/// from the system is not written again: `MemoryManager::try_allocate_zeroed`); with
/// the manager's own error on failure (the `Box` constructors would only say
/// "allocation failed").
fn block<T>(
    mm: &MemoryManager,
    len: usize,
    zeroed: bool,
) -> Result<Box<[MaybeUninit<T>], MemoryManager>> {
    let layout = Layout::array::<T>(len).map_err(|_| Error::SizeTooLarge {
        size: len.saturating_mul(size_of::<T>()),
        max: MAX_ALLOCATION_SIZE,
    })?;
    if layout.size() == 0 {
        // Nothing to allocate; the Box neither allocates nor frees for zero bytes.
        return Ok(Box::new_uninit_slice_in(len, mm.clone()));
    }
    let ptr = match zeroed {
        true => mm.try_allocate_zeroed(layout)?,
        false => mm.allocate_typed(layout)?,
    };
    let slice = std::ptr::slice_from_raw_parts_mut(ptr.as_ptr().cast::<MaybeUninit<T>>(), len);
    // SAFETY: `ptr` is a fresh block of `layout` = `[T; len]` from `mm`, and the Box
    // frees it with `Layout::for_value` of the slice, the same layout, through `mm`.
    Ok(unsafe { Box::from_raw_in(slice, mm.clone()) })
}

impl<T> Tensor<T> {
    fn from_uninit(
        mut data: Box<[MaybeUninit<T>], MemoryManager>,
        shape: &[usize],
        mut f: impl FnMut(usize) -> T,
    ) -> Self {
        for (i, slot) in data.iter_mut().enumerate() {
            slot.write(f(i));
        }
        // SAFETY: every element was written above (a panic in `f` drops the box of
        // `MaybeUninit`, which frees the block and leaks nothing but written values).
        let data = unsafe { data.assume_init() };
        Tensor {
            data,
            shape: shape.to_vec(),
        }
    }

    /// A tensor whose element at flat (row-major) index `i` is `f(i)`.
    pub fn from_fn(mm: &MemoryManager, shape: &[usize], f: impl FnMut(usize) -> T) -> Result<Self> {
        let data = block(mm, element_count(shape)?, false)?;
        Ok(Self::from_uninit(data, shape, f))
    }

    /// A tensor filled with `value`.
    pub fn full(mm: &MemoryManager, shape: &[usize], value: T) -> Result<Self>
    where
        T: Clone,
    {
        Self::from_fn(mm, shape, |_| value.clone())
    }

    /// A tensor of zeros. Memory fresh from the system is known to be zero and is not
    /// written (a large tensor's pages are then touched first by the program), as
    /// `calloc` does.
    pub fn zeros(mm: &MemoryManager, shape: &[usize]) -> Result<Self>
    where
        T: Zeroable,
    {
        let data = block::<T>(mm, element_count(shape)?, true)?;
        // SAFETY: every byte of the slice is zero, and all-zero bytes are a valid `T`
        // (`Zeroable`).
        let data = unsafe { data.assume_init() };
        Ok(Tensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// A tensor whose elements are not initialized yet: write every one, then
    /// [`assume_init`](Tensor::assume_init). For data that comes from elsewhere (a
    /// file, a kernel's output), without writing the memory twice.
    ///
    /// ```
    /// use tensorpool::{MemoryManager, Tensor};
    ///
    /// let mm = MemoryManager::default();
    /// let mut t = Tensor::<u32>::uninit(&mm, &[2, 2])?;
    /// for (i, x) in t.iter_mut().enumerate() {
    ///     x.write(i as u32 * 10);
    /// }
    /// // SAFETY: every element was written above.
    /// let t = unsafe { t.assume_init() };
    /// assert_eq!(&t[..], &[0, 10, 20, 30]);
    /// # Ok::<(), tensorpool::Error>(())
    /// ```
    pub fn uninit(mm: &MemoryManager, shape: &[usize]) -> Result<Tensor<MaybeUninit<T>>> {
        Ok(Tensor {
            data: block::<T>(mm, element_count(shape)?, false)?,
            shape: shape.to_vec(),
        })
    }

    /// A tensor holding a copy of `values`, which must have as many elements as the
    /// shape.
    pub fn from_slice(mm: &MemoryManager, shape: &[usize], values: &[T]) -> Result<Self>
    where
        T: Clone,
    {
        let n = element_count(shape)?;
        if n != values.len() {
            return Err(Error::InvalidShape(format!(
                "shape {shape:?} holds {n} elements, but {} were given",
                values.len()
            )));
        }
        Self::from_fn(mm, shape, |i| values[i].clone())
    }

    /// A copy of this tensor in memory from the same manager.
    pub fn try_clone(&self) -> Result<Self>
    where
        T: Clone,
    {
        Self::from_slice(Box::allocator(&self.data), &self.shape, &self.data)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Row-major strides, in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.shape.len()];
        for i in (0..self.shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.shape[i + 1];
        }
        strides
    }

    /// The same data with another shape of as many elements.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n = element_count(shape)?;
        if n != self.data.len() {
            return Err(Error::InvalidShape(format!(
                "cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)",
                self.shape,
                self.data.len()
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// The manager the memory came from.
    pub fn manager(&self) -> &MemoryManager {
        Box::allocator(&self.data)
    }

    /// A zero-copy `ndarray` view.
    #[cfg(feature = "ndarray")]
    pub fn view(&self) -> ndarray::ArrayViewD<'_, T> {
        ndarray::ArrayViewD::from_shape(ndarray::IxDyn(&self.shape), &self.data)
            .expect("the shape holds exactly the tensor's elements")
    }

    /// A zero-copy mutable `ndarray` view.
    #[cfg(feature = "ndarray")]
    pub fn view_mut(&mut self) -> ndarray::ArrayViewMutD<'_, T> {
        ndarray::ArrayViewMutD::from_shape(ndarray::IxDyn(&self.shape), &mut self.data)
            .expect("the shape holds exactly the tensor's elements")
    }
}

impl<T> Tensor<MaybeUninit<T>> {
    /// The tensor with its elements taken as initialized, in the same memory.
    ///
    /// # Safety
    ///
    /// Every element was written (as for [`MaybeUninit::assume_init`]).
    pub unsafe fn assume_init(self) -> Tensor<T> {
        Tensor {
            // SAFETY: by the caller's contract.
            data: unsafe { self.data.assume_init() },
            shape: self.shape,
        }
    }
}

impl<T> Deref for Tensor<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.data
    }
}

impl<T> DerefMut for Tensor<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
}

impl<T: fmt::Debug> fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let head = &self.data[..self.data.len().min(SHOWN)];
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("head", &head)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, UpstreamKind};

    fn mm() -> MemoryManager {
        MemoryManager::new(
            Config::builder()
                .upstream(UpstreamKind::Heap)
                .build()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn constructors_fill_and_free() {
        let mm = mm();
        let a = Tensor::<u32>::from_fn(&mm, &[4, 5], |i| i as u32).unwrap();
        assert_eq!(a[19], 19);
        let b = Tensor::full(&mm, &[3], 2.5f64).unwrap();
        assert_eq!(&*b, &[2.5, 2.5, 2.5]);
        let c = a.try_clone().unwrap();
        assert_eq!(&*c, &*a);
        assert_ne!(c.as_ptr(), a.as_ptr());
        // Large enough for the best-fit tier natively; small under Miri, which is slow.
        let side = if cfg!(miri) { 96 } else { 1024 };
        let big = Tensor::<f32>::zeros(&mm, &[side, side]).unwrap();
        assert!(big.iter().all(|&x| x == 0.0));
        assert_eq!(mm.stats().allocated_blocks, 4);
        drop((a, b, c, big));
        assert_eq!(mm.stats().allocated_bytes, 0);
    }

    #[test]
    fn uninit_tensors_are_written_then_assumed_initialized() {
        let mm = mm();
        let mut t = Tensor::<String>::uninit(&mm, &[2, 3]).unwrap();
        assert_eq!((t.shape(), t.len()), (&[2, 3][..], 6));
        for (i, x) in t.iter_mut().enumerate() {
            x.write(format!("#{i}"));
        }
        // SAFETY: every element was written above.
        let t = unsafe { t.assume_init() };
        assert_eq!(t[5], "#5");
        drop(t); // the strings are dropped with the tensor, the block goes back
        assert_eq!(mm.stats().allocated_bytes, 0);
        let empty = Tensor::<u64>::uninit(&mm, &[0, 4]).unwrap();
        // SAFETY: no element to write.
        assert!(unsafe { empty.assume_init() }.is_empty());
    }

    #[test]
    fn zeros_are_zero_also_in_reused_memory() {
        let mm = mm();
        let mut dirty = Tensor::<u32>::full(&mm, &[1000], u32::MAX).unwrap();
        dirty[0] = 7;
        let at = dirty.as_ptr();
        drop(dirty);
        let z = Tensor::<u32>::zeros(&mm, &[1000]).unwrap();
        assert_eq!(z.as_ptr(), at, "the same block again");
        assert!(z.iter().all(|&x| x == 0));
    }

    #[test]
    #[cfg(all(unix, not(miri)))]
    fn zeros_of_fresh_pages_leave_them_untouched() {
        // `calloc`'s promise: memory fresh from the system is zero already, and a
        // large tensor of zeros does not fault its pages in (writing them did, 64 MiB
        // of page faults before the program touched any).
        let mm = MemoryManager::default();
        let bytes = 64 << 20;
        let z = Tensor::<u8>::zeros(&mm, &[bytes]).unwrap();
        let page = crate::upstream::page_size();
        let pages = bytes / page;
        let mut resident = vec![0u8; pages];
        // SAFETY: the range is the tensor's block, page-aligned (blocks this large
        // are), and `resident` has one byte per page; `mincore` only reads the page
        // tables.
        let r = unsafe {
            libc::mincore(
                z.as_ptr() as *mut libc::c_void,
                bytes,
                resident.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        let touched = resident.iter().filter(|&&b| b & 1 != 0).count();
        assert!(touched < pages / 8, "{touched} of {pages} pages resident");
        assert!(z.iter().step_by(page).all(|&b| b == 0));
    }

    #[test]
    fn zero_elements_and_zero_sized_types_allocate_nothing() {
        let mm = mm();
        let empty = Tensor::<f32>::zeros(&mm, &[0, 7]).unwrap();
        assert!(empty.is_empty());
        let units = Tensor::full(&mm, &[10], ()).unwrap();
        assert_eq!(units.len(), 10);
        assert_eq!(mm.stats().num_allocs, 0);
    }

    #[test]
    fn shapes_are_checked() {
        let mm = mm();
        assert!(matches!(
            Tensor::<u8>::zeros(&mm, &[usize::MAX, 2]),
            Err(Error::InvalidShape(why)) if why.contains("more elements")
        ));
        assert!(matches!(
            Tensor::<u64>::zeros(&mm, &[usize::MAX / 4]),
            Err(Error::SizeTooLarge { .. })
        ));
        assert!(matches!(
            Tensor::from_slice(&mm, &[2, 2], &[1, 2, 3]),
            Err(Error::InvalidShape(_))
        ));
        let t = Tensor::from_slice(&mm, &[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
        assert!(matches!(t.reshape(&[4]), Err(Error::InvalidShape(_))));
        let t = Tensor::<i8>::zeros(&mm, &[]).unwrap();
        assert_eq!((t.len(), t.ndim(), t.strides()), (1, 0, vec![]));
        // Empty, but with strides past a machine word: refused, also by `reshape`.
        assert!(matches!(
            Tensor::<f32>::zeros(&mm, &[0, usize::MAX, 2]),
            Err(Error::InvalidShape(_))
        ));
        let empty = Tensor::<f32>::zeros(&mm, &[0, 4]).unwrap();
        assert_eq!(empty.strides(), vec![4, 1]);
        assert!(matches!(
            empty.reshape(&[usize::MAX, 0, 2]),
            Err(Error::InvalidShape(_))
        ));
    }

    #[test]
    fn out_of_memory_keeps_the_managers_explanation() {
        let mm = MemoryManager::new(
            Config::builder()
                .upstream(UpstreamKind::Heap)
                .memory_limit(1 << 20)
                .build()
                .unwrap(),
        )
        .unwrap();
        let err = Tensor::<f32>::zeros(&mm, &[1 << 20]).unwrap_err();
        assert!(err.to_string().contains("limit of 1.00 MiB"), "{err}");
    }

    #[test]
    fn tensors_keep_the_manager_alive() {
        let t = {
            let mm = mm();
            Tensor::<f32>::full(&mm, &[100], 1.0).unwrap()
        };
        assert_eq!(t.iter().sum::<f32>(), 100.0);
        assert_eq!(t.manager().stats().allocated_blocks, 1);
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn ndarray_views_share_memory() {
        let mm = mm();
        let mut t = Tensor::<f32>::zeros(&mm, &[2, 3]).unwrap();
        t.view_mut()[[1, 2]] = 7.0;
        assert_eq!(t[5], 7.0);
        let v = t.view();
        assert_eq!(v.shape(), &[2, 3]);
        assert_eq!(v.as_ptr(), t.as_ptr());
        assert_eq!(v.sum(), 7.0);
    }
}
