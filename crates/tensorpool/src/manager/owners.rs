//! Which locked tier owns a region: the owner map, the upstream adaptor that fills it
//! as the tiers take regions, and the lookups that give the manager a tier's contract.

use super::Inner;
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

/// The owner map, locked for writing by the calling thread, which is marked as
/// writing it (`util::reentry::WritingRegions`) until the lock is let go.
pub(super) struct RegionsWrite<'a> {
    map: std::sync::RwLockWriteGuard<'a, AddressMap<Owner>>,
    _writing: WritingRegions,
}

impl<'a> RegionsWrite<'a> {
    pub(super) fn lock(owners: &'a RwLock<AddressMap<Owner>>) -> Self {
        let writing = WritingRegions::start();
        RegionsWrite {
            map: owners.write(),
            _writing: writing,
        }
    }

    fn map(&mut self) -> &mut AddressMap<Owner> {
        &mut self.map
    }
}

/// Puts every region a tier takes into the owner map, so that a raw pointer can be
/// traced back to the tier that must free it.
#[derive(Debug)]
pub(super) struct Registrar {
    pub(super) upstream: Arc<MeteredUpstream>,
    pub(super) owners: Arc<RwLock<AddressMap<Owner>>>,
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
            .insert(ptr.as_ptr().addr(), size, self.owner);
        Ok(ptr)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        RegionsWrite::lock(&self.owners)
            .map()
            .remove(ptr.as_ptr().addr());
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
            .insert(ptr.as_ptr().addr(), size, self.owner);
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
            .remove(ptr.as_ptr().addr());
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
        self.owners.read().find(addr).map(|(_, _, &owner)| owner)
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
