//! Which locked tier owns a region: the owner map, the upstream adaptor that fills it
//! as the tiers take regions, and the lookups that give the manager a tier's contract.
//!
//! The map also remembers the last [`RETIRED`] regions the tiers gave back to the
//! system, so that a free of an address in one that nothing maps any more (a block
//! freed twice, the second time after its memory went back) is refused as no live
//! block (`NotLive`) rather than as memory the manager never held (`Foreign`): the C
//! front hands a foreign address to glibc's `free`, which read the bytes before it
//! as a chunk header and crashed (a user hunt: a double free after `malloc_trim(0)`,
//! or after the release policy gave a huge block back). An address there that is
//! mapped again is someone else's (glibc's, another manager's): `Foreign`, as
//! before, so that its allocator frees it.

use super::Inner;
use crate::error::PointerError;
use crate::observe::stats::Tier;
use crate::tiers::contract::BlockTier;
use crate::upstream::{AddressSpace, MeteredUpstream, Upstream, UpstreamError};
use crate::util::address_map::AddressMap;
use crate::util::reentry::WritingRegions;
use crate::util::sync::RwLock;
use std::ptr::NonNull;
use std::sync::Arc;

/// Which tier owns a region (the engine finds its own blocks in its page map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Large,
    Huge,
}

/// Regions given back that the map remembers (a ring: the oldest is forgotten).
pub(super) const RETIRED: usize = 64;

/// The regions of the locked tiers, and the last ones they gave back.
#[derive(Debug)]
pub(super) struct Regions {
    owners: AddressMap<Owner>,
    /// `[start, end)` of regions given back, newest at `next - 1`; empty entries
    /// are `(0, 0)`. Fixed-size: writing it allocates nothing (it is written with
    /// the map, where the C front's frees must not reach the manager).
    retired: [(usize, usize); RETIRED],
    next: usize,
}

impl Default for Regions {
    fn default() -> Self {
        Regions {
            owners: AddressMap::new(),
            retired: [(0, 0); RETIRED],
            next: 0,
        }
    }
}

impl Regions {
    /// A region the tiers took: in use, not retired (an address range given back can
    /// come back from the system).
    fn take(&mut self, start: usize, len: usize, owner: Owner) {
        self.owners.insert(start, len, owner);
        self.unretire(start, len);
    }

    /// A region the tiers gave back to the system.
    fn give_back(&mut self, start: usize, len: usize) {
        self.owners.remove(start);
        self.retired[self.next] = (start, start.saturating_add(len));
        self.next = (self.next + 1) % RETIRED;
    }

    /// Forgets retired regions that overlap `[start, start + len)`: memory there is
    /// someone else's now.
    fn unretire(&mut self, start: usize, len: usize) {
        let end = start.saturating_add(len);
        for range in &mut self.retired {
            if range.0 < end && start < range.1 {
                *range = (0, 0);
            }
        }
    }

    /// Whether `addr` lies in a region given back (and not taken again since).
    fn retired_at(&self, addr: usize) -> bool {
        self.retired
            .iter()
            .any(|&(start, end)| start <= addr && addr < end)
    }
}

/// The owner map, locked for writing by the calling thread, which is marked as
/// writing it (`util::reentry::WritingRegions`) until the lock is let go.
pub(super) struct RegionsWrite<'a> {
    map: std::sync::RwLockWriteGuard<'a, Regions>,
    _writing: WritingRegions,
}

impl<'a> RegionsWrite<'a> {
    pub(super) fn lock(owners: &'a RwLock<Regions>) -> Self {
        let writing = WritingRegions::start();
        RegionsWrite {
            map: owners.write(),
            _writing: writing,
        }
    }

    fn map(&mut self) -> &mut Regions {
        &mut self.map
    }
}

/// Puts every region a tier takes into the owner map, so that a raw pointer can be
/// traced back to the tier that must free it.
#[derive(Debug)]
pub(super) struct Registrar {
    pub(super) upstream: Arc<MeteredUpstream>,
    pub(super) owners: Arc<RwLock<Regions>>,
    pub(super) owner: Owner,
}

// SAFETY: regions come from the metered upstream unchanged; the map only records them.
unsafe impl Upstream for Registrar {
    fn allocate(
        &self,
        size: usize,
        align: usize,
    ) -> std::result::Result<NonNull<u8>, UpstreamError> {
        let ptr = self.upstream.allocate(size, align)?;
        RegionsWrite::lock(&self.owners)
            .map()
            .take(ptr.as_ptr().addr(), size, self.owner);
        Ok(ptr)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        RegionsWrite::lock(&self.owners)
            .map()
            .give_back(ptr.as_ptr().addr(), size);
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.upstream.deallocate(ptr, size, align) }
    }

    fn name(&self) -> &str {
        self.upstream.name()
    }

    fn zeroed(&self) -> bool {
        self.upstream.zeroed()
    }

    unsafe fn release_pages(&self, ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.upstream.release_pages(ptr, len) }
    }

    fn reuse_pages(
        &self,
        len: usize,
        within_limit: bool,
    ) -> std::result::Result<(), UpstreamError> {
        self.upstream.reuse_pages(len, within_limit)
    }

    fn address_space(&self) -> Option<&dyn AddressSpace> {
        self.upstream
            .address_space()
            .map(|_| self as &dyn AddressSpace)
    }
}

// SAFETY: forwards to the metered address space unchanged; the owner map records each
// reservation from `reserve` to `unreserve`.
unsafe impl AddressSpace for Registrar {
    fn reserve(&self, size: usize) -> std::result::Result<NonNull<u8>, UpstreamError> {
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        let ptr = space.reserve(size)?;
        RegionsWrite::lock(&self.owners)
            .map()
            .take(ptr.as_ptr().addr(), size, self.owner);
        Ok(ptr)
    }

    fn reservation_cap(&self) -> usize {
        self.upstream
            .address_space()
            .map_or(usize::MAX, |space| space.reservation_cap())
    }

    unsafe fn commit(
        &self,
        ptr: NonNull<u8>,
        len: usize,
    ) -> std::result::Result<(), UpstreamError> {
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { space.commit(ptr, len) }
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, len: usize) {
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { space.decommit(ptr, len) }
    }

    unsafe fn unreserve(&self, ptr: NonNull<u8>, size: usize) {
        RegionsWrite::lock(&self.owners)
            .map()
            .give_back(ptr.as_ptr().addr(), size);
        let space = self
            .upstream
            .address_space()
            .expect("checked by address_space()");
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { space.unreserve(ptr, size) }
    }
}

impl Inner {
    /// The tier of the block at `addr` (a live block's).
    pub(super) fn tier_at(&self, addr: usize) -> Tier {
        if let Some(tier) = self.engine.tier_of(addr) {
            return tier;
        }
        self.owner_at(addr)
            .map_or(Tier::Large, |owner| self.locked_tier(owner).tier())
    }

    /// The locked tier whose region holds `addr`, from the owners map (the engine's
    /// blocks are not in it: its page map finds them).
    pub(super) fn owner_at(&self, addr: usize) -> Option<Owner> {
        self.owners
            .read()
            .owners
            .find(addr)
            .map(|(_, _, &owner)| owner)
    }

    /// The locked tier whose region holds `addr`; else why a free of it is refused:
    /// `NotLive` if it lies in a region the manager gave back to the system lately
    /// that nothing maps now (see the module docs), `Foreign` otherwise. One look at
    /// the map: a region taken between two looks could not make a refusal wrong.
    pub(super) fn owner_or_refusal(&self, addr: usize) -> Result<Owner, PointerError> {
        let regions = self.owners.read();
        match regions.owners.find(addr) {
            Some((_, _, &owner)) => Ok(owner),
            None if regions.retired_at(addr) && !crate::upstream::mapped(addr) => {
                Err(PointerError::NotLive)
            }
            None => Err(PointerError::Foreign),
        }
    }

    /// The tier an owner names: the manager speaks to it through the contract alone.
    pub(super) fn locked_tier(&self, owner: Owner) -> &dyn BlockTier {
        match owner {
            Owner::Large => &self.engine.large,
            Owner::Huge => &self.huge,
        }
    }

    /// Every locked tier, for what the manager asks of them all.
    pub(super) fn locked_tiers(&self) -> [&dyn BlockTier; 2] {
        [&self.engine.large, &self.huge]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_regions_given_back_are_remembered_until_taken_again() {
        let mut r = Regions::default();
        r.take(0x10_000, 0x1000, Owner::Huge);
        assert!(!r.retired_at(0x10_000));
        r.give_back(0x10_000, 0x1000);
        assert!(r.owners.find(0x10_000).is_none());
        assert!(r.retired_at(0x10_000) && r.retired_at(0x10_fff));
        assert!(!r.retired_at(0x11_000) && !r.retired_at(0xf_fff));
        // Taken again (the system gave the range back), even in part: not retired.
        r.take(0x10_800, 0x1000, Owner::Large);
        assert!(!r.retired_at(0x10_000));
        // A ring: the oldest of more than RETIRED is forgotten.
        for i in 0..=RETIRED {
            r.give_back(0x100_000 * (i + 1), 0x1000);
        }
        assert!(!r.retired_at(0x100_000));
        assert!((2..=RETIRED + 1).all(|i| r.retired_at(0x100_000 * i)));
        r.unretire(0x200_000, 1);
        assert!(!r.retired_at(0x200_000));
    }
}
