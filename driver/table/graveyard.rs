//! A bounded graveyard of recent unmaps, so a second unmap of a base is told apart from an
//! unmap of a base never mapped (IOSV005 vs IOSV004).
//!
//! Direct-mapped by a hash of the base: each slot remembers the last base unmapped into
//! it, with its size, owner and times. A newer unmap whose base hashes to the same slot
//! replaces it, so the graveyard remembers roughly its size in recent unmaps. Writers
//! claim a slot with one CAS on its sequence number (even → odd) and skip a slot another
//! writer holds — losing that tombstone, never waiting; readers validate the sequence
//! around their reads (seqlock) and treat a torn slot as a miss.

use crate::sync::{fence, try_boxed_slice, AtomicU32, AtomicU64, Ordering, OutOfMemory};
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
}

struct GraveSlot {
    seq: AtomicU32,
    base: AtomicU64,
    size: AtomicU64,
    physical: AtomicU64,
    map_time_ns: AtomicU64,
    unmap_time_ns: AtomicU64,
    drivers: AtomicU32,
}

/// See the module docs.
pub struct Graveyard {
    slots: Box<[GraveSlot]>,
}

impl Graveyard {
    /// A graveyard of `len` slots (at least 1).
    pub fn new(len: usize) -> Result<Graveyard, OutOfMemory> {
        Ok(Graveyard {
            slots: try_boxed_slice(len.max(1), |_| GraveSlot {
                seq: AtomicU32::new(0),
                base: AtomicU64::new(0),
                size: AtomicU64::new(0),
                physical: AtomicU64::new(0),
                map_time_ns: AtomicU64::new(0),
                unmap_time_ns: AtomicU64::new(0),
                drivers: AtomicU32::new(0),
            })?,
        })
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a graveyard has at least one slot.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn slot(&self, base: u64) -> Option<&GraveSlot> {
        let h = base.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let idx = (u128::from(h).wrapping_mul(self.slots.len() as u128) >> 64) as usize;
        self.slots.get(idx)
    }

    /// Remembers an unmap. Returns false if the slot was busy with another writer (the
    /// tombstone is then dropped).
    pub fn bury(&self, t: &Tombstone) -> bool {
        let Some(s) = self.slot(t.base) else {
            return false;
        };
        let seq = s.seq.load(Ordering::Relaxed);
        if seq & 1 == 1
            || s.seq
                .compare_exchange(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return false;
        }
        fence(Ordering::Release);
        s.base.store(t.base, Ordering::Relaxed);
        s.size.store(t.size, Ordering::Relaxed);
        s.physical.store(t.physical, Ordering::Relaxed);
        s.map_time_ns.store(t.map_time_ns, Ordering::Relaxed);
        s.unmap_time_ns.store(t.unmap_time_ns, Ordering::Relaxed);
        s.drivers.store(
            u32::from(t.driver) | u32::from(t.unmapped_by) << 16,
            Ordering::Relaxed,
        );
        s.seq.store(seq.wrapping_add(2), Ordering::Release);
        true
    }

    /// The tombstone of `base`, if it is still remembered.
    pub fn find(&self, base: u64) -> Option<Tombstone> {
        let s = self.slot(base)?;
        for _ in 0..4 {
            let s1 = s.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                crate::sync::spin_hint();
                continue;
            }
            let t = Tombstone {
                base: s.base.load(Ordering::Relaxed),
                size: s.size.load(Ordering::Relaxed),
                physical: s.physical.load(Ordering::Relaxed),
                map_time_ns: s.map_time_ns.load(Ordering::Relaxed),
                unmap_time_ns: s.unmap_time_ns.load(Ordering::Relaxed),
                driver: s.drivers.load(Ordering::Relaxed) as u16,
                unmapped_by: (s.drivers.load(Ordering::Relaxed) >> 16) as u16,
            };
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) == s1 {
                return (t.base == base && base != 0).then_some(t);
            }
        }
        None
    }

    /// Forgets `base` if it is remembered (it was mapped again by a tracked driver).
    pub fn forget(&self, base: u64) {
        let Some(s) = self.slot(base) else { return };
        let seq = s.seq.load(Ordering::Relaxed);
        if s.base.load(Ordering::Relaxed) != base
            || seq & 1 == 1
            || s.seq
                .compare_exchange(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        if s.base.load(Ordering::Relaxed) == base {
            s.base.store(0, Ordering::Relaxed);
        }
        s.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Forgets everything (CLEAR). Slots busy with a writer keep what it writes.
    pub fn clear(&self) {
        for s in self.slots.iter() {
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

    fn t(base: u64) -> Tombstone {
        Tombstone {
            base,
            size: 0x1000,
            physical: 5,
            map_time_ns: 1,
            unmap_time_ns: 2,
            driver: 3,
            unmapped_by: 4,
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
