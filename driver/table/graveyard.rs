//! A bounded graveyard of recent unmaps, so a second unmap of a base is told apart from an
//! unmap of a base never mapped (IOSV005 vs IOSV004).
//!
//! Four-way set-associative by a hash of the base: a tombstone (base, size, owner,
//! times) goes to a free slot of its set, or replaces the set's oldest, so the graveyard
//! remembers roughly its size in recent unmaps and one busy set does not evict a fresh
//! tombstone. Writers claim a slot with one CAS on its sequence number (even → odd) and
//! move on to the next slot of the set if another writer holds it — dropping the
//! tombstone only when all four are held, never waiting; readers validate the sequence
//! around their reads (seqlock) and treat a torn slot as a miss.
//!
//! Two burials into one set at the same time may choose the same free slot (or the same
//! oldest one) from their scans. The claim alone would let the later one replace the
//! other's fresh tombstone (a later IOSV005 would then read as IOSV004), so a writer uses
//! a claimed slot only if it still holds what its scan saw; otherwise it gives the slot
//! back unchanged and scans again, and the other's tombstone, now the newest, is kept
//! (loom model `graveyard_racing_burials_and_a_reader`). Retries are bounded (each
//! follows a burial that completed in the set); a tombstone is dropped only when every
//! slot of its set is held by another writer, never waiting.

use super::MappingHead;
use crate::sync::{fence, try_boxed_slice, AtomicU32, AtomicU64, Ordering, OutOfMemory};

/// Slots per set: a tombstone can live in any of the [`WAYS`] slots of its set.
pub const WAYS: usize = 4;
use alloc::boxed::Box;

/// A remembered unmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// Base that was unmapped.
    pub base: u64,
    /// Size the mapping had.
    pub size: u64,
    /// Physical address it mapped.
    pub physical: u64,
    /// When it was mapped (ns).
    pub map_time_ns: u64,
    /// When it was unmapped (ns).
    pub unmap_time_ns: u64,
    /// Driver that owned it.
    pub driver: u16,
    /// Driver that unmapped it.
    pub unmapped_by: u16,
    /// Map site: the innermost frame of the map call's stack (0 if none was captured).
    pub map_site: u64,
    /// The process a user-space mapping was mapped into (0 for system space): one user
    /// address can be mapped in two processes.
    pub process: u64,
}

/// One slot: a cache line of its own (really aligned), so writers of neighbouring
/// slots never share a line.
#[repr(align(64))]
struct GraveSlot {
    seq: AtomicU32,
    base: AtomicU64,
    size: AtomicU64,
    physical: AtomicU64,
    map_time_ns: AtomicU64,
    unmap_time_ns: AtomicU64,
    map_site: AtomicU64,
    drivers: AtomicU32,
    process: AtomicU64,
}

/// See the module docs.
pub struct Graveyard {
    /// The sets, `len / WAYS` of them (none for a graveyard of fewer than [`WAYS`] slots).
    sets: Box<[[GraveSlot; WAYS]]>,
    /// The `len % WAYS` slots past the last whole set: the one (short) set of a graveyard
    /// of fewer than [`WAYS`] slots, unused otherwise (as before: `len / WAYS` sets).
    tail: Box<[GraveSlot]>,
}

impl Graveyard {
    /// A graveyard of `len` slots (at least 1).
    pub fn new(len: usize) -> Result<Graveyard, OutOfMemory> {
        let len = len.max(1);
        let slot = |_| GraveSlot {
            seq: AtomicU32::new(0),
            base: AtomicU64::new(0),
            size: AtomicU64::new(0),
            physical: AtomicU64::new(0),
            map_time_ns: AtomicU64::new(0),
            unmap_time_ns: AtomicU64::new(0),
            map_site: AtomicU64::new(0),
            drivers: AtomicU32::new(0),
            process: AtomicU64::new(0),
        };
        Ok(Graveyard {
            sets: try_boxed_slice(len / WAYS, |_| core::array::from_fn(slot))?,
            tail: try_boxed_slice(len % WAYS, slot)?,
        })
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.sets
            .len()
            .saturating_mul(WAYS)
            .saturating_add(self.tail.len())
    }

    /// Always false: a graveyard has at least one slot.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every slot (whole sets, then the tail).
    fn slots(&self) -> impl Iterator<Item = &GraveSlot> {
        self.sets.iter().flatten().chain(self.tail.iter())
    }

    /// The whole set `base` may be remembered in; `None` for a graveyard of fewer than
    /// [`WAYS`] slots (its one set is the tail).
    #[inline(always)]
    fn full_set(&self, base: u64) -> Option<&[GraveSlot; WAYS]> {
        let h = base.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let set = (u128::from(h).wrapping_mul(self.sets.len() as u128) >> 64) as usize;
        self.sets.get(set)
    }

    /// The set of (at most) [`WAYS`] slots `base` may be remembered in.
    fn set(&self, base: u64) -> &[GraveSlot] {
        match self.full_set(base) {
            Some(set) => set,
            None => &self.tail,
        }
    }

    /// Claims `s` for writing (seq even → odd); the even value it had, or `None` if
    /// another writer holds it.
    fn claim(s: &GraveSlot) -> Option<u32> {
        let seq = s.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 {
            return None;
        }
        s.seq
            .compare_exchange(
                seq,
                seq.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()?;
        fence(Ordering::Release);
        Some(seq)
    }

    /// Remembers an unmap in its set: in place of an older tombstone of the same base,
    /// else in a free slot, else in place of the oldest. Returns false if every slot of
    /// the set was busy with another writer (the tombstone is then dropped).
    pub fn bury(&self, t: &Tombstone) -> bool {
        let Some((s, seq)) = self.claim_for(t.base) else {
            return false;
        };
        s.base.store(t.base, Ordering::Relaxed);
        s.size.store(t.size, Ordering::Relaxed);
        s.physical.store(t.physical, Ordering::Relaxed);
        s.map_time_ns.store(t.map_time_ns, Ordering::Relaxed);
        s.unmap_time_ns.store(t.unmap_time_ns, Ordering::Relaxed);
        s.map_site.store(t.map_site, Ordering::Relaxed);
        s.drivers.store(
            u32::from(t.driver) | u32::from(t.unmapped_by) << 16,
            Ordering::Relaxed,
        );
        s.process.store(t.process, Ordering::Relaxed);
        Self::release(s, seq);
        true
    }

    /// [`bury`](Self::bury) of the tombstone of mapping `m`, unmapped at `unmap_time_ns` by
    /// driver `unmapped_by`, `map_site` its innermost map-site frame (0 if none), mapped
    /// into user-space `process` (0 for system space): the unmap hook's path, which reads
    /// the fields from the removed entry instead of building a [`Tombstone`] first.
    #[inline(always)]
    pub fn bury_mapping(
        &self,
        m: &MappingHead,
        unmap_time_ns: u64,
        unmapped_by: u16,
        map_site: u64,
        process: u64,
    ) -> bool {
        let Some((s, seq)) = self.claim_for(m.base) else {
            return false;
        };
        s.base.store(m.base, Ordering::Relaxed);
        s.size.store(m.size, Ordering::Relaxed);
        s.physical.store(m.physical, Ordering::Relaxed);
        s.map_time_ns.store(m.map_time_ns, Ordering::Relaxed);
        s.unmap_time_ns.store(unmap_time_ns, Ordering::Relaxed);
        s.map_site.store(map_site, Ordering::Relaxed);
        s.drivers.store(
            u32::from(m.driver) | u32::from(unmapped_by) << 16,
            Ordering::Relaxed,
        );
        s.process.store(process, Ordering::Relaxed);
        Self::release(s, seq);
        true
    }

    /// The slot a tombstone of `tbase` goes to, claimed for writing (with the even
    /// sequence number it had), or `None` if every slot of its set was held by another
    /// writer. The caller writes the tombstone and [`release`](Self::release)s it.
    ///
    /// The common case takes one scan and one CAS: the chosen slot's sequence number is
    /// read, then its base checked against what the scan chose, then the slot claimed
    /// from that sequence number — so the claim fails if anyone wrote the slot since (a
    /// racing burial filled "the free slot" or replaced "the oldest"). Then, or when the
    /// slot is held, the careful path runs out of line
    /// ([`claim_after_race`](Self::claim_after_race)).
    #[inline(always)]
    fn claim_for(&self, tbase: u64) -> Option<(&GraveSlot, u32)> {
        // A whole set (every graveyard of at least WAYS slots) as a fixed-size array, so
        // the scan needs no index and no bounds check; a smaller graveyard's one short set
        // takes the general scan over a slice.
        let (set, (s, expected)): (&[GraveSlot], _) = match self.full_set(tbase) {
            Some(ways) => (ways, Self::choose_in_set(ways, tbase)),
            None => {
                let (i, expected) = Self::choose(&self.tail, tbase);
                match self.tail.get(i) {
                    Some(s) => (&self.tail, (s, expected)),
                    None => return None,
                }
            }
        };
        // Any odd value is held by a writer: the CAS from the even value then fails.
        let seq = s.seq.load(Ordering::Acquire) & !1;
        if s.base.load(Ordering::Relaxed) == expected
            && s.seq
                .compare_exchange(seq, seq | 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            fence(Ordering::Release);
            return Some((s, seq));
        }
        Self::claim_after_race(set, tbase)
    }

    /// [`choose`](Self::choose) in a whole set: the slot and the base it held. The four
    /// bases are read first; when none is this base or free (a full set, the steady
    /// state) the oldest is found by a branch-free tournament (the first of equal
    /// times, as in `choose`); otherwise `choose` runs out of line.
    #[inline(always)]
    fn choose_in_set(set: &[GraveSlot; WAYS], tbase: u64) -> (&GraveSlot, u64) {
        let [s0, s1, s2, s3] = set;
        let b = |s: &GraveSlot| s.base.load(Ordering::Relaxed);
        let (b0, b1, b2, b3) = (b(s0), b(s1), b(s2), b(s3));
        let special = |x: u64| x == tbase || x == 0;
        if special(b0) || special(b1) || special(b2) || special(b3) {
            return Self::choose_own_or_free(set, tbase);
        }
        let w = |s: &GraveSlot| s.unmap_time_ns.load(Ordering::Relaxed);
        let (w0, w1, w2, w3) = (w(s0), w(s1), w(s2), w(s3));
        // Strictly older wins, so on equal times the lower index stays.
        let (i01, b01, t01) = if w1 < w0 { (1, b1, w1) } else { (0, b0, w0) };
        let (i23, b23, t23) = if w3 < w2 { (3, b3, w3) } else { (2, b2, w2) };
        let (i, expected) = if t23 < t01 { (i23, b23) } else { (i01, b01) };
        // `i` is below WAYS: the mask only lets the compiler see it.
        (set.get(i & (WAYS - 1)).unwrap_or(s0), expected)
    }

    /// [`choose`](Self::choose) in a whole set that holds this base or a free slot (out
    /// of line: the steady state is a full set).
    #[inline(never)]
    fn choose_own_or_free(set: &[GraveSlot; WAYS], tbase: u64) -> (&GraveSlot, u64) {
        let [s0, ..] = set;
        let (i, expected) = Self::choose(set, tbase);
        (set.get(i).unwrap_or(s0), expected)
    }

    /// The slot a tombstone of `tbase` should go to: the first slot holding this base,
    /// else the first free one, else the oldest (the first of equal times, whatever the
    /// time); with the base it held.
    fn choose(set: &[GraveSlot], tbase: u64) -> (usize, u64) {
        // One pass with plain indexes (no Option juggling). The oldest is tracked over
        // every used slot, but used only when none is free.
        const NONE: usize = usize::MAX;
        let mut free = NONE;
        let (mut oldest, mut oldest_when, mut oldest_base) = (0usize, u64::MAX, 0u64);
        for (i, s) in set.iter().enumerate() {
            let base = s.base.load(Ordering::Relaxed);
            if base == tbase {
                return (i, base);
            }
            if base == 0 {
                if free == NONE {
                    free = i;
                }
            } else {
                let when = s.unmap_time_ns.load(Ordering::Relaxed);
                if when < oldest_when || oldest_base == 0 {
                    oldest = i;
                    oldest_when = when;
                    oldest_base = base;
                }
            }
        }
        if free != NONE {
            (free, 0)
        } else {
            (oldest, oldest_base)
        }
    }

    /// The careful path, after the chosen slot's claim failed (held by a writer, or
    /// written since the scan): at most [`WAYS`] scans, each followed by claims of the
    /// chosen slot and then the ones after it, wrapping around. A claimed slot is kept
    /// only if it still holds what was chosen: the chosen slot what the scan read there,
    /// any other slot nothing (or this base); otherwise another burial got there between
    /// the scan and the claim, the slot is given back unchanged and the set scanned
    /// again (each retry follows a burial that completed in this set). `None` only when
    /// every slot is held by another writer, never waiting.
    #[cold]
    #[inline(never)]
    fn claim_after_race(set: &[GraveSlot], tbase: u64) -> Option<(&GraveSlot, u32)> {
        let n = set.len();
        'scan: for _ in 0..WAYS {
            let (preferred, expected) = Self::choose(set, tbase);
            let mut i = preferred;
            for _ in 0..n {
                if i >= n {
                    i = 0;
                }
                let Some(s) = set.get(i) else { break };
                let want = if i == preferred { expected } else { 0 };
                i = i.wrapping_add(1);
                let Some(seq) = Self::claim(s) else { continue };
                let now = s.base.load(Ordering::Relaxed);
                if now != want && now != tbase {
                    // Filled or replaced since the scan: give it back as it was.
                    s.seq.store(seq, Ordering::Release);
                    continue 'scan;
                }
                return Some((s, seq));
            }
            return None;
        }
        None
    }

    /// Releases slot `s`, claimed from the even sequence number `seq`, after its
    /// tombstone was written: readers see the new tombstone whole from now on.
    #[inline(always)]
    fn release(s: &GraveSlot, seq: u32) {
        s.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// A consistent copy of slot `s`, or `None` if it kept changing.
    fn read(s: &GraveSlot) -> Option<Tombstone> {
        for _ in 0..4 {
            let s1 = s.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                crate::sync::spin_hint();
                continue;
            }
            let drivers = s.drivers.load(Ordering::Relaxed);
            let t = Tombstone {
                base: s.base.load(Ordering::Relaxed),
                size: s.size.load(Ordering::Relaxed),
                physical: s.physical.load(Ordering::Relaxed),
                map_time_ns: s.map_time_ns.load(Ordering::Relaxed),
                unmap_time_ns: s.unmap_time_ns.load(Ordering::Relaxed),
                driver: drivers as u16,
                unmapped_by: (drivers >> 16) as u16,
                map_site: s.map_site.load(Ordering::Relaxed),
                process: s.process.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) == s1 {
                return Some(t);
            }
        }
        None
    }

    /// The tombstone of `base`, if it is still remembered.
    pub fn find(&self, base: u64) -> Option<Tombstone> {
        if base == 0 {
            return None;
        }
        self.set(base)
            .iter()
            .filter(|s| s.base.load(Ordering::Relaxed) == base)
            .find_map(|s| Self::read(s).filter(|t| t.base == base))
    }

    /// Forgets `base` if it is remembered (it was mapped again by a tracked driver).
    pub fn forget(&self, base: u64) {
        for s in self.set(base) {
            if s.base.load(Ordering::Relaxed) != base {
                continue;
            }
            if let Some(seq) = Self::claim(s) {
                if s.base.load(Ordering::Relaxed) == base {
                    s.base.store(0, Ordering::Relaxed);
                }
                s.seq.store(seq.wrapping_add(2), Ordering::Release);
            }
        }
    }

    /// Forgets everything (CLEAR). Slots busy with a writer keep what it writes.
    pub fn clear(&self) {
        for s in self.slots() {
            let seq = s.seq.load(Ordering::Relaxed);
            if seq & 1 == 0
                && s.seq
                    .compare_exchange(
                        seq,
                        seq.wrapping_add(1),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                s.base.store(0, Ordering::Relaxed);
                s.seq.store(seq.wrapping_add(2), Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_really_lines() {
        assert_eq!(core::mem::align_of::<GraveSlot>(), 64);
        assert_eq!(core::mem::size_of::<GraveSlot>(), 64);
        let g = Graveyard::new(9).unwrap();
        assert_eq!(g.len(), 9);
        assert_eq!(g.slots().count(), 9);
        for s in g.slots() {
            assert_eq!(core::ptr::from_ref(s) as usize % 64, 0);
        }
    }

    fn t(base: u64) -> Tombstone {
        Tombstone {
            base,
            size: 0x1000,
            physical: 5,
            map_time_ns: 1,
            unmap_time_ns: 2,
            driver: 3,
            unmapped_by: 4,
            map_site: 0x1000_0123,
            process: 0,
        }
    }

    #[test]
    fn a_set_keeps_four_and_evicts_the_oldest() {
        let g = Graveyard::new(4).unwrap(); // one set
        for i in 1..=4u64 {
            let mut x = t(i << 12);
            x.unmap_time_ns = i;
            assert!(g.bury(&x));
        }
        for i in 1..=4u64 {
            assert!(g.find(i << 12).is_some());
        }
        let mut x = t(5 << 12);
        x.unmap_time_ns = 5;
        g.bury(&x);
        assert!(g.find(1 << 12).is_none(), "the oldest was evicted");
        assert!(g.find(2 << 12).is_some() && g.find(5 << 12).is_some());
        // A base unmapped again replaces its own older tombstone.
        let mut y = t(3 << 12);
        y.unmap_time_ns = 9;
        g.bury(&y);
        assert_eq!(g.find(3 << 12).unwrap().unmap_time_ns, 9);
        assert!(g.find(2 << 12).is_some() && g.find(4 << 12).is_some());
    }

    #[test]
    fn a_full_set_evicts_the_first_of_the_oldest() {
        // Whatever order the times come in: the smallest unmap time goes first, the
        // lowest slot among equal times, and any used slot can be evicted (u64::MAX too).
        let cases: [([u64; 4], usize); 6] = [
            ([4, 3, 2, 1], 3),
            ([2, 1, 1, 3], 1),
            ([5, 5, 5, 5], 0),
            ([9, 7, 7, 7], 1),
            ([3, 8, 1, 1], 2),
            ([u64::MAX; 4], 0),
        ];
        for (times, victim) in cases {
            let g = Graveyard::new(4).unwrap(); // one set
            let bases: [u64; 4] = core::array::from_fn(|i| (i as u64 + 1) << 12);
            for (&base, &when) in bases.iter().zip(&times) {
                let mut x = t(base);
                x.unmap_time_ns = when;
                assert!(g.bury(&x));
            }
            let mut m = MappingHead::new(0x77 << 12, 0x1000);
            m.driver = 3;
            assert!(g.bury_mapping(&m, 6, 4, 0, 0));
            for (i, &base) in bases.iter().enumerate() {
                assert_eq!(g.find(base).is_none(), i == victim, "{times:?}: slot {i}");
            }
            assert_eq!(g.find(0x77 << 12).map(|t| t.unmap_time_ns), Some(6));
        }
    }

    #[test]
    fn remembers_and_forgets() {
        let g = Graveyard::new(64).unwrap();
        assert!(g.bury(&t(0xFFFF_F000_0000_1000)));
        assert_eq!(
            g.find(0xFFFF_F000_0000_1000),
            Some(t(0xFFFF_F000_0000_1000))
        );
        assert_eq!(g.find(0xFFFF_F000_0000_2000), None);
        g.forget(0xFFFF_F000_0000_1000);
        assert_eq!(g.find(0xFFFF_F000_0000_1000), None);
        g.bury(&t(0xFFFF_F000_0000_1000));
        g.clear();
        assert_eq!(g.find(0xFFFF_F000_0000_1000), None);
        assert_eq!(g.find(0), None);
    }
}
