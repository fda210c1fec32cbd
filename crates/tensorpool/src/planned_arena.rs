//! [`PlannedArena`]: an arena that runs a [`StepPlan`], as static-graph runtimes
//! (TFLite's arena planner, IREE) run theirs.
//!
//! The arena holds one region of the plan's size, taken from a [`MemoryManager`], and
//! is owned by one thread at a time, as an [`Arena`](crate::Arena) is. A *step* is
//! what lies between two calls to [`step`](PlannedArena::step). The k-th allocation
//! of a step gets the plan's k-th offset when:
//!
//! - its size fits the slot and the slot's address has its alignment, and
//! - nothing still live overlaps the slot.
//!
//! The second is checked in O(1) while the program frees as planned: the plan
//! already keeps the slots it has live at once apart, so only blocks the plan has
//! freed by now but the program has not (*late* blocks: freed after the plan said,
//! or still live at a `step()`) can be in the way, and those are kept in a short
//! list. Anything else (a size that differs, a step that runs longer than the plan,
//! a late block in the way, a buffer the plan leaves to the manager) *falls back*
//! to the manager, which never fails for want of a plan. Frees go back to the slot,
//! or to the manager for its blocks; blocks live at a `step()` keep their memory
//! until they are freed (the next step's slots that overlap them fall back), and are
//! counted ([`PlannedStats::deferred`]).
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use tensorpool::plan::{search::Budget, StepPlan, Steps};
//! use tensorpool::trace::Trace;
//! use tensorpool::{Config, MemoryManager, PlannedArena};
//!
//! // A recorded step, three times: 4096 bytes, 1024 while they live, 3072 after.
//! let mut rows = String::from("id,lower,upper,size\n");
//! for step in 0..3 {
//!     let (t, id) = (10 * step, 3 * step);
//!     rows += &format!("{id},{t},{},4096\n", t + 2);
//!     rows += &format!("{},{},{},1024\n", id + 1, t + 1, t + 3);
//!     rows += &format!("{},{},{},3072\n", id + 2, t + 2, t + 4);
//! }
//! let trace = Trace::parse(rows.as_bytes())?;
//! let plan = StepPlan::from_trace(&trace, &Steps::Repeating, 64, Budget::steps(10_000))?;
//!
//! let mm = MemoryManager::new(Config::default())?;
//! let arena = PlannedArena::new(&mm, plan)?;
//! for _ in 0..10 {
//!     arena.step();
//!     let a: Vec<u8, &PlannedArena> = Vec::with_capacity_in(4096, &arena);
//!     let b: Vec<u8, &PlannedArena> = Vec::with_capacity_in(1024, &arena);
//!     drop(a);
//!     let c: Vec<u8, &PlannedArena> = Vec::with_capacity_in(3072, &arena);
//!     assert_eq!(c.as_ptr(), arena.region().cast_const()); // where `a` was
//!     drop((b, c));
//! }
//! let stats = arena.stats();
//! assert_eq!((stats.served, stats.fallback()), (30, 0));
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::error::{Error, PointerError, Result};
use crate::limits;
use crate::manager::MemoryManager;
use crate::plan::StepPlan;
use crate::tiers::contract::zero_sized;
use allocator_api2::alloc::{AllocError, Allocator};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::alloc::Layout;
use std::cell::RefCell;
use std::ptr::NonNull;

/// The alignment of the region (every slot's address keeps its offset's alignment
/// up to this).
const REGION_ALIGN: usize = 4096;

/// No live slot at an offset.
const NONE: u32 = u32::MAX;

/// What a [`PlannedArena`] did, since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlannedStats {
    /// Steps begun (calls to [`PlannedArena::step`]).
    pub steps: u64,
    /// Allocations served at their planned offset.
    pub served: u64,
    /// Fallbacks: the request did not fit its slot (size or alignment).
    pub fallback_mismatch: u64,
    /// Fallbacks: a late block overlapped the slot.
    pub fallback_conflict: u64,
    /// Fallbacks: the step made more allocations than the plan has.
    pub fallback_beyond_plan: u64,
    /// Fallbacks: the plan leaves the slot to the manager (it outlives its step).
    pub fallback_unplanned: u64,
    /// Blocks of the region still live at a `step()` (each counted at every step it
    /// is live at): their memory stays theirs until they are freed.
    pub deferred: u64,
    /// Blocks of the region live now.
    pub live_planned: u64,
    /// The region's size.
    pub region_bytes: u64,
}

impl PlannedStats {
    /// All allocations that fell back to the manager.
    pub fn fallback(&self) -> u64 {
        self.fallback_mismatch
            + self.fallback_conflict
            + self.fallback_beyond_plan
            + self.fallback_unplanned
    }
}

/// The arena's changing state (one thread uses it at a time: `PlannedArena` is not
/// `Sync`).
struct State {
    /// The step's allocations so far.
    next: usize,
    /// The free expected next: an index into the plan's frees due before
    /// allocation `next` (`StepPlan::due_before`), in the plan's order.
    expected_free: usize,
    /// Every slot, with what the hot paths read of its plan beside it (one cache
    /// line touched per slot).
    slots: Vec<SlotState>,
    /// Live slots the plan has freed by now, or that were live at a `step()`.
    late: Vec<u32>,
    /// The live slot at each distinct planned offset (see `PlannedArena::at`).
    at_offset: Vec<u32>,
    stats: PlannedStats,
}

/// A slot of the plan as the arena uses it.
#[derive(Clone, Copy)]
struct SlotState {
    /// Its offset (`u64::MAX` for a slot the plan leaves to the manager).
    offset: u64,
    /// Bytes planned.
    size: u64,
    /// Its offset's index in `State::at_offset`.
    offset_index: u32,
    /// It holds a live block of the region.
    live: bool,
    /// It is in `State::late`.
    late: bool,
    /// Its block was handed out by the raw `allocate` (else through `Allocator`).
    raw: bool,
}

/// An arena that runs a [`StepPlan`]; see the [module docs](self).
pub struct PlannedArena {
    manager: MemoryManager,
    plan: StepPlan,
    /// The region, `None` for a plan with nothing planned.
    region: Option<NonNull<u8>>,
    region_bytes: usize,
    /// Each distinct planned offset's index in `State::at_offset`.
    offset_index: FxHashMap<u64, u32>,
    state: RefCell<State>,
}

// SAFETY: the region is memory of the manager that only this arena hands out, and
// the state is owned; moving the arena to another thread moves all of it (it is not
// `Sync`: one thread uses it at a time).
unsafe impl Send for PlannedArena {}

impl std::fmt::Debug for PlannedArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedArena")
            .field("region_bytes", &self.region_bytes)
            .field("slots", &self.plan.slots().len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl PlannedArena {
    /// An arena for `plan` whose region and fallbacks come from `manager`.
    pub fn new(manager: &MemoryManager, plan: StepPlan) -> Result<PlannedArena> {
        let region_bytes =
            usize::try_from(plan.arena_bytes()).expect("StepPlan::new checks that it fits");
        let region = match region_bytes {
            0 => None,
            // A typed block: the manager's raw free refuses it, so only the arena
            // gives it back.
            bytes => Some(manager.try_allocate(Self::region_layout(bytes)?)?),
        };
        let mut offset_index = FxHashMap::default();
        let slots: Vec<SlotState> = plan
            .slots()
            .iter()
            .map(|s| {
                let (offset, index) = match s.offset {
                    Some(o) if s.size > 0 => {
                        let next = offset_index.len() as u32;
                        (o, *offset_index.entry(o).or_insert(next))
                    }
                    _ => (u64::MAX, NONE),
                };
                SlotState {
                    offset,
                    size: s.size,
                    offset_index: index,
                    live: false,
                    late: false,
                    raw: false,
                }
            })
            .collect();
        let state = State {
            next: 0,
            expected_free: 0,
            slots,
            late: Vec::new(),
            at_offset: vec![NONE; offset_index.len()],
            stats: PlannedStats {
                region_bytes: region_bytes as u64,
                ..PlannedStats::default()
            },
        };
        Ok(PlannedArena {
            manager: manager.clone(),
            plan,
            region,
            region_bytes,
            offset_index,
            state: RefCell::new(state),
        })
    }

    /// The region's layout.
    fn region_layout(bytes: usize) -> Result<Layout> {
        Layout::from_size_align(bytes, REGION_ALIGN).map_err(|_| Error::SizeTooLarge {
            size: bytes,
            max: crate::MAX_ALLOCATION_SIZE,
        })
    }

    /// The plan it runs.
    pub fn plan(&self) -> &StepPlan {
        &self.plan
    }

    /// The start of the region (dangling for a plan with nothing planned).
    pub fn region(&self) -> *mut u8 {
        self.region
            .map_or(NonNull::<u8>::dangling().as_ptr(), NonNull::as_ptr)
    }

    /// The manager that serves the fallbacks.
    pub fn manager(&self) -> &MemoryManager {
        &self.manager
    }

    /// Begins a step: the next allocation is the plan's first. Blocks of the region
    /// still live keep their memory until freed (counted in
    /// [`PlannedStats::deferred`]); slots that overlap them fall back.
    pub fn step(&self) {
        let mut s = self.state.borrow_mut();
        let s = &mut *s;
        s.next = 0;
        s.expected_free = 0;
        s.stats.steps += 1;
        if s.stats.live_planned > 0 {
            for (k, slot) in s.slots.iter_mut().enumerate() {
                if slot.live {
                    s.stats.deferred += 1;
                    if !slot.late {
                        slot.late = true;
                        s.late.push(k as u32);
                    }
                }
            }
        }
    }

    /// What the arena did so far.
    pub fn stats(&self) -> PlannedStats {
        self.state.borrow().stats
    }

    /// `size` bytes aligned to `align`, as the manager's raw API gives them: the
    /// step's next slot, or a raw block of the manager. Errors only where the
    /// manager's would (a bad size or alignment, out of memory). Give it back with
    /// [`free`](Self::free).
    pub fn allocate(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        limits::validate(size, align)?;
        if let Some(ptr) = self.take_slot(size, align, true) {
            return Ok(ptr);
        }
        self.manager.allocate_raw(size, align)
    }

    /// Frees a block [`allocate`](Self::allocate) gave, checked as the manager's
    /// raw free is: a pointer that is not a live block of the arena or of the
    /// manager's raw API (a double free, an interior or foreign pointer, a block an
    /// `Allocator` user holds) is refused, and nothing changes.
    pub fn free(&self, ptr: NonNull<u8>) -> Result<()> {
        match self.release_at(ptr, true) {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(Error::InvalidPointer {
                addr: ptr.as_ptr().addr(),
                reason,
            }),
            None => self.manager.free_raw(ptr.as_ptr()),
        }
    }

    /// Serves the step's next allocation from its slot, if it can; counts what it
    /// did either way.
    #[inline]
    fn take_slot(&self, size: usize, align: usize, raw: bool) -> Option<NonNull<u8>> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let k = s.next;
        s.next += 1;
        s.expected_free = 0;
        let Some(&slot) = s.slots.get(k) else {
            s.stats.fallback_beyond_plan += 1;
            return None;
        };
        // Slots the plan has freed by now and the program has not are late.
        for &j in self.plan.due_before(k) {
            let other = &mut s.slots[j as usize];
            if other.live && !other.late {
                other.late = true;
                s.late.push(j);
            }
        }
        let Some(region) = self.region.filter(|_| slot.offset != u64::MAX) else {
            s.stats.fallback_unplanned += 1;
            return None;
        };
        let at = region.as_ptr().wrapping_add(slot.offset as usize);
        if size as u64 > slot.size || size == 0 || at.addr() & (align - 1) != 0 {
            s.stats.fallback_mismatch += 1;
            return None;
        }
        let end = slot.offset + slot.size;
        let blocked = s.late.iter().any(|&j| {
            let other = &s.slots[j as usize];
            other.offset < end && slot.offset < other.offset + other.size
        });
        if blocked {
            s.stats.fallback_conflict += 1;
            return None;
        }
        s.slots[k].live = true;
        s.slots[k].raw = raw;
        s.at_offset[slot.offset_index as usize] = k as u32;
        s.stats.served += 1;
        s.stats.live_planned += 1;
        NonNull::new(at)
    }

    /// Frees the live block of the region at `ptr` (handed out by the raw
    /// `allocate` when `raw`, through `Allocator` otherwise): `None` when `ptr` is
    /// not in the region, the reason for refusing it (nothing changed) when no such
    /// block starts there.
    #[inline]
    fn release_at(
        &self,
        ptr: NonNull<u8>,
        raw: bool,
    ) -> Option<std::result::Result<(), PointerError>> {
        let region = self.region?;
        let offset = ptr.as_ptr().addr().wrapping_sub(region.as_ptr().addr());
        if offset >= self.region_bytes {
            return None;
        }
        let offset = offset as u64;
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        // A program that runs as planned frees what the plan frees before its next
        // allocation, in the plan's order: that slot first, the index of every
        // offset after.
        let due = self.plan.due_before(s.next.min(s.slots.len()));
        // (Slots that fell back or are freed already are not expected.)
        while due
            .get(s.expected_free)
            .is_some_and(|&j| !s.slots[j as usize].live)
        {
            s.expected_free += 1;
        }
        let expected = due.get(s.expected_free).map(|&j| j as usize);
        let k = match expected.filter(|&j| s.slots[j].offset == offset) {
            Some(j) => {
                s.expected_free += 1;
                j
            }
            None => match self.offset_index.get(&offset) {
                Some(&i) if s.at_offset[i as usize] != NONE => s.at_offset[i as usize] as usize,
                // Not a live block's start: inside one (a walk, on this error path
                // only), or nothing live.
                _ => {
                    let inside = s.slots.iter().find(|slot| {
                        slot.live && slot.offset < offset && offset - slot.offset < slot.size
                    });
                    return Some(Err(match inside {
                        Some(slot) => PointerError::Interior {
                            block: region.as_ptr().addr() + slot.offset as usize,
                            offset: (offset - slot.offset) as usize,
                        },
                        None => PointerError::NotLive,
                    }));
                }
            },
        };
        if s.slots[k].raw != raw {
            return Some(Err(if raw {
                PointerError::NotRaw
            } else {
                PointerError::NotLive
            }));
        }
        let slot = &mut s.slots[k];
        slot.live = false;
        s.at_offset[slot.offset_index as usize] = NONE;
        s.stats.live_planned -= 1;
        if slot.late {
            slot.late = false;
            let at = s.late.iter().position(|&j| j as usize == k).expect("late");
            s.late.swap_remove(at);
        }
        Some(Ok(()))
    }
}

impl Drop for PlannedArena {
    fn drop(&mut self) {
        if let Some(region) = self.region {
            let layout = Self::region_layout(self.region_bytes).expect("made with it");
            // SAFETY: the region was allocated from the manager with this layout in
            // `new` and is freed once, here.
            unsafe { self.manager.deallocate(region, layout) };
        }
    }
}

// SAFETY: a slot's block is `size` bytes (at most the slot's) of the region at the
// slot's offset, aligned as asked (checked), and no live block of the region
// overlaps it: the plan keeps the slots it has live at once apart (checked when the
// plan was made), and every other live block of the region is late and checked
// against the slot. It stays valid until freed or until the arena is dropped (the
// region is freed then; `&PlannedArena` borrows keep collections from outliving
// it). Fallbacks are the manager's blocks, with its guarantees.
unsafe impl Allocator for PlannedArena {
    #[inline]
    fn allocate(&self, layout: Layout) -> std::result::Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(zero_sized(layout.align()));
        }
        let ptr = match self.take_slot(layout.size(), layout.align(), false) {
            Some(ptr) => ptr,
            None => self.manager.allocate(layout)?.cast(),
        };
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        match self.release_at(ptr, false) {
            Some(Ok(())) => {}
            Some(Err(why)) => debug_assert!(false, "Allocator::deallocate of {ptr:?}: {why:?}"),
            // SAFETY: by the caller's contract `ptr` came from this arena with
            // `layout`; outside the region, that is from the manager's `allocate`.
            None => unsafe { self.manager.deallocate(ptr, layout) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::search::Budget;
    use crate::plan::{Slot, Steps};
    use crate::trace::{Event, Trace};
    use crate::Config;
    use proptest::prelude::*;

    fn manager() -> MemoryManager {
        MemoryManager::new(Config::default()).unwrap()
    }

    fn slot(size: u64, offset: u64, freed_before: usize) -> Slot {
        Slot {
            size,
            offset: Some(offset),
            freed_before,
            free_event: 0,
        }
    }

    /// Checks that a free was refused for `reason`.
    fn refused(freed: Result<()>, reason: PointerError) {
        match freed {
            Err(Error::InvalidPointer { reason: r, .. }) if r == reason => {}
            other => panic!("expected a free refused as {reason:?}, got {other:?}"),
        }
    }

    /// Live blocks with their contents, checked against every block given out.
    #[derive(Default)]
    struct Live {
        blocks: Vec<(usize, usize, u8)>, // (address, size, fill)
    }

    impl Live {
        /// Records a fresh block, fills it, and checks that it overlaps no live one.
        fn add(&mut self, ptr: NonNull<u8>, size: usize, fill: u8) {
            let a = ptr.as_ptr().addr();
            for &(b, bs, _) in &self.blocks {
                assert!(
                    a + size <= b || b + bs <= a,
                    "{a:#x}+{size} overlaps {b:#x}+{bs}"
                );
            }
            // SAFETY: a fresh block of `size` bytes, ours until freed.
            unsafe { ptr.as_ptr().write_bytes(fill, size) };
            self.blocks.push((a, size, fill));
        }

        /// Checks the block's contents and forgets it.
        fn remove(&mut self, ptr: NonNull<u8>) -> usize {
            let at = self
                .blocks
                .iter()
                .position(|b| b.0 == ptr.as_ptr().addr())
                .unwrap();
            let (_, size, fill) = self.blocks.swap_remove(at);
            // SAFETY: the block is live and `size` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), size) };
            assert!(
                bytes.iter().all(|&b| b == fill),
                "block {ptr:?} was overwritten"
            );
            size
        }
    }

    /// A step of three buffers: 0 [0, 2), 1 [1, 3) beside it, 2 [2, 3) where 0 was.
    fn three() -> StepPlan {
        StepPlan::new(vec![
            slot(4096, 0, 2),
            slot(1024, 4096, 3),
            slot(3072, 0, 3),
        ])
        .unwrap()
    }

    #[test]
    fn a_step_as_planned_is_served_from_the_slots_and_a_diverging_one_falls_back() {
        let mm = manager();
        let arena = PlannedArena::new(&mm, three()).unwrap();
        let base = arena.region().addr();
        let mut live = Live::default();
        // As planned, twice.
        for _ in 0..2 {
            arena.step();
            let a = arena.allocate(4096, 64).unwrap();
            live.add(a, 4096, 1);
            let b = arena.allocate(1000, 64).unwrap(); // smaller than its slot
            live.add(b, 1000, 2);
            live.remove(a);
            arena.free(a).unwrap();
            let c = arena.allocate(3072, 64).unwrap();
            live.add(c, 3072, 3);
            assert_eq!([a, b, c].map(|p| p.as_ptr().addr() - base), [0, 4096, 0]);
            for p in [b, c] {
                live.remove(p);
                arena.free(p).unwrap();
            }
        }
        assert_eq!(arena.stats().served, 6);
        // Diverging: `a` is freed late, so `c` cannot have its slot; a larger `b`
        // does not fit its own; then one allocation more than the plan has.
        arena.step();
        let a = arena.allocate(4096, 64).unwrap();
        live.add(a, 4096, 4);
        let b = arena.allocate(2048, 64).unwrap();
        live.add(b, 2048, 5);
        let c = arena.allocate(3072, 64).unwrap();
        live.add(c, 3072, 6);
        let d = arena.allocate(64, 64).unwrap();
        live.add(d, 64, 7);
        let s = arena.stats();
        assert_eq!(s.served, 7);
        assert_eq!(
            (
                s.fallback_mismatch,
                s.fallback_conflict,
                s.fallback_beyond_plan
            ),
            (1, 1, 1)
        );
        assert!(mm.stats().allocated_bytes >= 4096 + 2048 + 3072 + 64);
        // `a` lives on into the next step: deferred, and slot 2 and 0 stay clear of it.
        arena.step();
        assert_eq!(arena.stats().deferred, 1);
        let a2 = arena.allocate(4096, 64).unwrap();
        live.add(a2, 4096, 8);
        assert_eq!(arena.stats().fallback_conflict, 2);
        for p in [a, b, c, d, a2] {
            live.remove(p);
            arena.free(p).unwrap();
        }
        // Everything free: the next step is served again.
        arena.step();
        let a = arena.allocate(4096, 64).unwrap();
        assert_eq!(a.as_ptr().addr(), base);
        arena.free(a).unwrap();
        assert_eq!(arena.stats().live_planned, 0);
    }

    #[test]
    fn bad_frees_are_refused_and_change_nothing() {
        let mm = manager();
        let arena = PlannedArena::new(&mm, three()).unwrap();
        arena.step();
        let a = arena.allocate(4096, 64).unwrap();
        arena.free(a).unwrap();
        refused(arena.free(a), PointerError::NotLive);
        let mut outside = 0u64;
        let foreign = NonNull::from(&mut outside).cast::<u8>();
        assert!(arena.free(foreign).is_err());
        let b = arena.allocate(1024, 64).unwrap();
        let interior = NonNull::new(b.as_ptr().wrapping_add(64)).unwrap();
        // Named as the manager names it (it said "not live").
        refused(
            arena.free(interior),
            PointerError::Interior {
                block: b.as_ptr().addr(),
                offset: 64,
            },
        );
        assert_eq!(arena.stats().live_planned, 1);
        arena.free(b).unwrap();
        // A fallback block freed twice: the manager's raw free refuses the second.
        let c = arena.allocate(3072, 64).unwrap();
        let d = arena.allocate(64, 64).unwrap(); // beyond the plan: the manager's
        assert_eq!(arena.stats().fallback_beyond_plan, 1);
        arena.free(d).unwrap();
        assert!(arena.free(d).is_err());
        // Blocks that `Allocator` users hold are not the raw free's to give back:
        // the manager's, and the region's.
        let layout = Layout::from_size_align(256, 64).unwrap();
        let typed = mm.try_allocate(layout).unwrap();
        refused(arena.free(typed), PointerError::NotRaw);
        // SAFETY: allocated just above with `layout`.
        unsafe { allocator_api2::alloc::Allocator::deallocate(&mm, typed, layout) };
        arena.free(c).unwrap();
        arena.step();
        let held = allocator_api2::alloc::Allocator::allocate(
            &arena,
            Layout::from_size_align(4096, 64).unwrap(),
        )
        .unwrap()
        .cast::<u8>();
        assert_eq!(held.as_ptr(), arena.region());
        refused(arena.free(held), PointerError::NotRaw);
        assert_eq!(arena.stats().live_planned, 1);
        // SAFETY: allocated just above through `Allocator` with this layout.
        unsafe {
            allocator_api2::alloc::Allocator::deallocate(
                &arena,
                held,
                Layout::from_size_align(4096, 64).unwrap(),
            )
        };
        // The region is the arena's alone: the manager's raw free refuses it.
        assert!(mm.free_raw(arena.region()).is_err());
        // Bad requests are the manager's errors.
        assert!(matches!(arena.allocate(0, 64), Err(Error::ZeroSize)));
        assert!(arena.allocate(64, 3).is_err());
    }

    #[test]
    fn an_alignment_the_slot_lacks_falls_back() {
        let mm = manager();
        let plan = StepPlan::new(vec![slot(64, 64, 1)]).unwrap();
        let arena = PlannedArena::new(&mm, plan).unwrap();
        arena.step();
        let p = arena.allocate(64, 128).unwrap();
        assert_eq!(p.as_ptr().addr() % 128, 0);
        assert_eq!(arena.stats().fallback_mismatch, 1);
        arena.free(p).unwrap();
    }

    #[test]
    fn collections_use_it_through_allocator() {
        let mm = manager();
        let arena = PlannedArena::new(&mm, three()).unwrap();
        for _ in 0..3 {
            arena.step();
            let mut a: allocator_api2::vec::Vec<u32, &PlannedArena> =
                allocator_api2::vec::Vec::with_capacity_in(1024, &arena);
            a.extend(0..1024);
            let b: allocator_api2::vec::Vec<u8, &PlannedArena> =
                allocator_api2::vec::Vec::with_capacity_in(1024, &arena);
            assert_eq!(a.iter().sum::<u32>(), 1023 * 512);
            drop(a);
            let c = allocator_api2::boxed::Box::new_in([7u8; 3072], &arena);
            assert!(c.iter().all(|&x| x == 7));
            drop((b, c));
        }
        assert_eq!(arena.stats().served, 9);
        assert_eq!(arena.stats().fallback(), 0);
    }

    /// `steps` steps of `pattern` (lifetimes within `[0, period)` of a step) as an
    /// intervals trace.
    fn repeated(pattern: &[(u64, u64, u64)], period: u64, steps: u64) -> Trace {
        let mut rows = String::from("id,lower,upper,size\n");
        let mut id = 0;
        for s in 0..steps {
            for &(lower, upper, size) in pattern {
                let t = s * period;
                rows += &format!("{id},{},{},{size}\n", t + lower, t + upper);
                id += 1;
            }
        }
        Trace::parse(rows.as_bytes()).unwrap()
    }

    /// Replays the events of `trace` in `range` through `arena`, perturbed by `rng`
    /// (frees put off or left out, sizes grown, allocations added) when `diverge`,
    /// checking every block against every live one and its contents at its free.
    fn replay(
        arena: &PlannedArena,
        trace: &Trace,
        range: std::ops::Range<usize>,
        live: &mut Live,
        held: &mut Vec<NonNull<u8>>,
        rng: &mut tensorpool_testkit::Rng,
        diverge: bool,
    ) {
        let mut ptrs: FxHashMap<u32, NonNull<u8>> = FxHashMap::default();
        let mut fill = 1u8;
        for e in &trace.events[range] {
            match *e {
                Event::Alloc { id, size } => {
                    let mut size = size as usize;
                    if diverge && rng.below(8) == 0 {
                        size += 64 * (1 + rng.below(4));
                    }
                    if diverge && rng.below(8) == 0 {
                        let extra = arena.allocate(256, 64).unwrap();
                        live.add(extra, 256, 0xee);
                        held.push(extra);
                    }
                    let p = arena.allocate(size, 64).unwrap();
                    fill = fill.wrapping_add(1);
                    live.add(p, size, fill);
                    ptrs.insert(id, p);
                }
                Event::Free { id } => {
                    let Some(p) = ptrs.remove(&id) else {
                        continue;
                    };
                    if diverge && rng.below(6) == 0 {
                        held.push(p); // freed later, maybe steps later
                        continue;
                    }
                    live.remove(p);
                    arena.free(p).unwrap();
                }
            }
            if diverge && !held.is_empty() && rng.below(3) == 0 {
                let p = held.swap_remove(rng.below(held.len()));
                live.remove(p);
                arena.free(p).unwrap();
            }
        }
        // Blocks the range did not free stay live (into the next step).
        held.extend(ptrs.into_values());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 64 }))]

        /// Random repeating programs: planned steps replayed as recorded are all
        /// served; steps perturbed at random never give a block that overlaps a
        /// live one (planned or fallback) and never lose contents.
        #[test]
        #[cfg_attr(miri, ignore)]
        fn steps_as_recorded_are_served_and_perturbed_ones_stay_sound(
            pattern in prop::collection::vec((0u64..18, 1u64..10, 1u64..5000), 1..24),
            seed in any::<u64>(),
        ) {
            let pattern: Vec<(u64, u64, u64)> =
                pattern.into_iter().map(|(l, len, s)| (l, (l + len).min(19), s)).collect();
            let trace = repeated(&pattern, 20, 4);
            let starts: Vec<usize> = (0..4)
                .map(|s| trace.times.iter().position(|&t| t >= s * 20).unwrap())
                .collect();
            let plan = StepPlan::from_trace(&trace, &Steps::At(starts.clone()), 64, Budget::steps(2_000)).unwrap();
            prop_assert_eq!(plan.slots().len(), pattern.len());
            prop_assert!(plan.slots().iter().all(|s| s.offset.is_some()));
            let mm = manager();
            let arena = PlannedArena::new(&mm, plan).unwrap();
            let mut rng = tensorpool_testkit::Rng(seed | 1);
            let (mut live, mut held) = (Live::default(), Vec::new());
            let step_range = starts[1]..starts[2];
            for round in 0..6 {
                arena.step();
                let diverge = round % 2 == 1;
                let before = arena.stats();
                replay(&arena, &trace, step_range.clone(), &mut live, &mut held, &mut rng, diverge);
                let after = arena.stats();
                if !diverge && held.is_empty() && before.live_planned == 0 {
                    prop_assert_eq!(after.served - before.served, pattern.len() as u64);
                    prop_assert_eq!(after.fallback(), before.fallback());
                }
                if diverge {
                    for p in held.drain(..) {
                        live.remove(p);
                        arena.free(p).unwrap();
                    }
                }
            }
            prop_assert_eq!(arena.stats().live_planned, 0);
            prop_assert!(live.blocks.is_empty());
        }
    }
}
