//! The free path past the public handle: the hot typed free, debug checks, the engine,
//! then the locked tier that owns the address; and the raw size queries.

use super::Inner;
use crate::error::{Error, PointerError, Result};
use crate::limits::MAX_ALIGN;
use crate::observe::debug::GUARD;
use crate::tiers::slab::InPlace;
use std::ptr::NonNull;

impl Inner {
    /// The hot path of typed frees of sizes in the class table: `true` if the block
    /// was in its class's current slab of the calling thread, now free; calls
    /// nothing (see [`serve_leaf`](Self::serve_leaf)). Otherwise
    /// [`reclaim_typed_hot`](Self::reclaim_typed_hot), then the full path.
    #[inline(always)]
    pub(super) fn reclaim_typed_leaf(&self, ptr: NonNull<u8>, size: usize, align: usize) -> bool {
        self.table_class(size, align)
            .is_some_and(|class| self.engine.release_typed_leaf(ptr.as_ptr(), size, class))
    }

    /// The hot path of typed frees: `true` if the block was freed.
    #[inline(always)]
    pub(super) fn reclaim_typed_hot(&self, ptr: NonNull<u8>, size: usize, align: usize) -> bool {
        let class = if let Some(class) = self.table_class(size, align) {
            Some(class)
        } else if !self.fast || align > MAX_ALIGN {
            // With explicit pools, a layout does not say which pool or class holds
            // the block: the engine finds its slab from the address (and checks it).
            return self.pools_hot && self.engine.release_hot(ptr.as_ptr(), false, size, None);
        } else {
            self.engine.class_for(size, align)
        };
        self.engine.release_hot(ptr.as_ptr(), false, size, class)
    }

    pub(super) fn raw_size(&self, addr: usize) -> Result<usize> {
        if let Some(tracker) = &self.debug {
            if let Some(size) = tracker.raw_size(addr) {
                return Ok(size);
            }
            // Not a live raw block: the tiers say why.
            self.raw_block_size(addr)?;
            return Err(Error::InvalidPointer {
                addr,
                reason: PointerError::NotLive,
            });
        }
        self.raw_block_size(addr)
    }

    /// Resizes the live block at `ptr` of the calling thread's slabs in place to
    /// `size` bytes if the engine can (see
    /// [`Engine::resize`](crate::tiers::slab::Engine::resize); `typed` is a typed
    /// holder's size, `None` for a raw block); `false`, nothing changed, otherwise.
    pub(super) fn resize_engine_block(
        &self,
        ptr: *mut u8,
        size: usize,
        typed: Option<usize>,
    ) -> bool {
        match self.engine.resize(ptr, size, typed) {
            InPlace::No => false,
            InPlace::Slot => true,
            InPlace::Pages => {
                // Memory may have been committed: as after any slow path.
                self.after_slow_path();
                true
            }
        }
    }

    /// Resizes the live block at `ptr`, held raw or typed (`raw`), in place to `size`
    /// bytes if its tier can (see
    /// [`MemoryManager::reallocate_raw`](super::MemoryManager::reallocate_raw); for
    /// typed blocks, the locked tiers here, the engine's through
    /// [`resize_engine_block`](Self::resize_engine_block)); `false`, nothing changed,
    /// otherwise.
    pub(super) fn resize_in_place(&self, ptr: *mut u8, size: usize, raw: bool) -> bool {
        if raw && self.resize_engine_block(ptr, size, None) {
            return true;
        }
        let Some(owner) = self.owner_at(ptr.addr()) else {
            return false;
        };
        // The best-fit tier's blocks grow in place up to its range's end; beyond,
        // the block moves to the huge tier.
        if owner == super::owners::Owner::Large && size > self.config.huge_threshold {
            return false;
        }
        match self.locked_tier(owner).resize(ptr.addr(), size, raw) {
            Some(resized) => {
                self.counters.on_resize(resized, size);
                // Growth may have committed memory: the soft limit and the release
                // policy look, as after any slow path.
                self.after_slow_path();
                true
            }
            None => false,
        }
    }

    pub(super) fn raw_block_size(&self, addr: usize) -> Result<usize> {
        let invalid = |reason| Error::InvalidPointer { addr, reason };
        if let Some(found) = self.engine.raw_size(addr) {
            return found.map_err(invalid);
        }
        match self.owner_or_refusal(addr) {
            Err(reason) => Err(invalid(reason)),
            Ok(owner) => match self.locked_tier(owner).sizes(addr, true) {
                Ok(sizes) => Ok(sizes.requested),
                Err(e) => Err(self.refusal(e)),
            },
        }
    }

    /// A tier's refusal of an address, as the manager says it: an address inside a
    /// large block of the engine that is free (cached, its pages still the best-fit
    /// tier's block) is no block, not inside a live one.
    #[cold]
    fn refusal(&self, e: Error) -> Error {
        match e {
            Error::InvalidPointer {
                addr,
                reason: PointerError::Interior { block, .. },
            } if self.engine.free_span_at(block) => Error::InvalidPointer {
                addr,
                reason: PointerError::NotLive,
            },
            e => e,
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn reclaim_raw(&self, ptr: *mut u8) -> Result<()> {
        let addr = ptr.addr();
        if let Some(tracker) = &self.debug {
            if let Some(record) = tracker.take(addr, true) {
                let ptr = NonNull::new(ptr).expect("live blocks are not null");
                // SAFETY: `addr` was a live raw block of `size + GUARD` bytes, and taking
                // its record made this call the only one to free it.
                unsafe { tracker.check_and_poison(ptr, &record) };
            }
        }
        // Without a record in debug mode, the block is not a live raw one: the checks
        // below say why.
        self.reclaim(addr, true, 0, None)
    }

    /// Frees the block at `addr` held raw or typed; `size` and `class` are a typed
    /// holder's size and the class its layout maps to.
    #[inline]
    pub(super) fn reclaim(
        &self,
        addr: usize,
        raw: bool,
        size: usize,
        class: Option<usize>,
    ) -> Result<()> {
        let invalid = |reason| Error::InvalidPointer { addr, reason };
        if let Some(done) = self.engine.release(addr, raw, size, class) {
            return done.map_err(invalid);
        }
        let owner = self.owner_or_refusal(addr).map_err(invalid)?;
        let freed = self
            .locked_tier(owner)
            .release(addr, raw)
            .map_err(|e| self.refusal(e))?;
        self.counters.on_free(freed.block_size, freed.requested);
        // Above the soft limit, the memory freed goes back now.
        self.release_freed_over_soft_limit(owner, freed.block_size);
        self.release_if_due();
        Ok(())
    }

    /// Frees a typed block allocated with this size and alignment.
    pub(super) fn reclaim_typed(&self, ptr: NonNull<u8>, size: usize, align: usize) -> Result<()> {
        let Some(tracker) = &self.debug else {
            return self.reclaim_typed_block(ptr, size, align);
        };
        let record = tracker
            .take(ptr.as_ptr().addr(), false)
            .ok_or(Error::InvalidPointer {
                addr: ptr.as_ptr().addr(),
                reason: PointerError::NotLive,
            })?;
        debug_assert_eq!(record.size, size, "a typed block freed with another size");
        // SAFETY: a live typed block of `size + GUARD` bytes, whose record this call took.
        unsafe { tracker.check_and_poison(ptr, &record) };
        self.reclaim_typed_block(ptr, size + GUARD, align)
    }

    #[inline]
    pub(super) fn reclaim_typed_block(
        &self,
        ptr: NonNull<u8>,
        size: usize,
        align: usize,
    ) -> Result<()> {
        let class = match self.pools {
            // With explicit pools, a layout may be served by a pool or a class.
            true => None,
            false if align > MAX_ALIGN => None,
            false => self.engine.class_for(size, align),
        };
        self.reclaim(ptr.as_ptr().addr(), false, size, class)
    }
}
