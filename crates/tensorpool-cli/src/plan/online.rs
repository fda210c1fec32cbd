//! The online manager's own placement, as an offline plan: a planner that knows the
//! whole trace should never need more than the allocator that did not, so `plan`
//! offers what the manager did as one more candidate.
//!
//! The trace is replayed through a `MemoryManager` ([`super::online`](fn@super::online), the same
//! replay that measures its peak) and each buffer's address kept.
//! Address ranges no buffer ever used (the gaps between segments, pages of
//! never-used slab slots) are squeezed out: the buffers keep their order along the
//! address line and their lengths, so two that never shared an address still do not,
//! and the arena is the total length of the addresses ever used. Within one
//! expandable segment (every block below `huge_threshold`, the default) that is at
//! most what the manager reserved at its peak; huge blocks get segments of their own,
//! mapped wherever the system puts them (and given back and mapped again elsewhere),
//! and then the addresses ever used can add up to more.

use super::Placement;
use tensorpool::trace::Lifetime;

/// The placement the manager made of the buffers (`address` by id, from
/// [`super::online`](fn@super::online)), as a plan whose offsets are multiples of
/// `align` (the addresses are: the replay asks for 64-byte blocks): placements by id,
/// and the arena size.
pub fn placements(lifetimes: &[Lifetime], address: &[u64], align: u64) -> (Vec<Placement>, u64) {
    let (offsets, arena) = squeeze(lifetimes, address, align.max(1));
    let placements = lifetimes
        .iter()
        .map(|&lifetime| Placement {
            lifetime,
            offset: offsets[lifetime.id as usize],
        })
        .collect();
    (placements, arena)
}

/// Offsets that keep the buffers' order and lengths along the address line with
/// every address range no buffer covers removed (down to a multiple of `align`, so
/// that addresses aligned to it stay aligned), each offset then rounded up to `align`
/// where the address was not (a larger alignment than the replay's), shifting all
/// that follow by as much; and the arena size.
fn squeeze(lifetimes: &[Lifetime], address: &[u64], align: u64) -> (Vec<u64>, u64) {
    let mut by_address: Vec<&Lifetime> = lifetimes.iter().filter(|l| l.size > 0).collect();
    by_address.sort_by_key(|l| (address[l.id as usize], l.id));
    let mut offsets = vec![0u64; lifetimes.len()];
    let (mut removed, mut covered) = (0u64, None::<u64>);
    // How far the offsets from here on moved up for alignment: never less along the
    // address line, so two buffers apart in addresses stay apart.
    let mut shift = 0u64;
    let mut arena = 0u64;
    for l in by_address {
        let a = address[l.id as usize];
        match covered {
            None => removed = a - a % align,
            Some(end) if a > end => removed += (a - end) - (a - end) % align,
            Some(_) => {}
        }
        let squeezed = a - removed + shift;
        let offset = squeezed.next_multiple_of(align);
        shift += offset - squeezed;
        offsets[l.id as usize] = offset;
        arena = arena.max(offset + l.size);
        covered = Some(covered.map_or(a + l.size, |end| end.max(a + l.size)));
    }
    (offsets, arena)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensorpool::trace::Trace;
    use tensorpool::Config;

    #[test]
    fn squeezing_removes_unused_addresses_and_keeps_order_and_lengths() {
        let l = |id, size| Lifetime::new(id, 0, 1, size);
        let lifetimes = [l(0, 100), l(1, 50), l(2, 10), l(3, 0)];
        // 0 at 1000, 1 at 1100 (touching), 2 inside 0's range (another time), then a
        // hole of a gigabyte.
        let address = [1000, 1100, 1020, 0];
        let (offsets, arena) = squeeze(&lifetimes, &address, 1);
        assert_eq!(&offsets[..3], &[0, 100, 20]);
        assert_eq!(arena, 150);
        let far = [1000, 1 << 30, 1020, 0];
        let (offsets, arena) = squeeze(&lifetimes, &far, 1);
        assert_eq!(&offsets[..3], &[0, 100, 20]);
        assert_eq!(arena, 150);
        // Aligned addresses stay aligned: the hole before 1 shrinks to what keeps
        // its offset a multiple of 64.
        let aligned = [1024, 4096, 1024 + 64, 0];
        let (offsets, arena) = squeeze(&lifetimes, &aligned, 64);
        assert_eq!(&offsets[..3], &[0, 128, 64]);
        assert_eq!(arena, 178);
        // A larger alignment than the addresses have: offsets rounded up, and what
        // follows moves with them (two 64-byte buffers side by side at 64-byte
        // addresses, planned at 128).
        let pair = [Lifetime::new(0, 0, 1, 64), Lifetime::new(1, 0, 1, 64)];
        let (offsets, arena) = squeeze(&pair, &[0x10000, 0x10040], 128);
        assert_eq!(offsets, vec![0, 128]);
        assert_eq!(arena, 192);
    }

    #[test]
    fn the_online_plan_is_valid_and_within_what_the_manager_reserved() {
        let trace = Trace::parse(
            b"id,lower,upper,size\n0,0,4,100000\n1,1,2,3000000\n2,2,5,3000000\n3,3,6,64\n4,4,7,200\n",
        )
        .unwrap();
        let lifetimes = trace.lifetimes();
        let run = super::super::online(&trace, &Config::default()).unwrap();
        let (placements, arena) = placements(&lifetimes, &run.addresses, 64);
        assert!(placements.iter().all(|p| p.offset % 64 == 0));
        super::super::verify(&trace, &placements).unwrap();
        assert!(arena >= trace.peak_live_bytes());
        assert!(arena <= run.peak);
    }
}
