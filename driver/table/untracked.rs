//! Bases of mappings the table had no room for ("untracked"), so their unmaps are passed
//! through instead of being reported as unknown (IOSV004) or contained.
//!
//! A fixed array of bases claimed by CAS within a bounded probe window. When even that is
//! full, the mapping is only *counted*; while that count is non-zero, an unmap of an
//! unknown base consumes one count and is passed through unverified, because it may be
//! one of them. Both paths are counted in the statistics, so a lab run can see that its
//! table was too small.

use crate::sync::{try_boxed_slice, AtomicU64, Ordering, OutOfMemory};
use alloc::boxed::Box;

const PROBE: usize = 16;

/// See the module docs.
pub struct UntrackedSet {
    bases: Box<[AtomicU64]>,
    uncounted: AtomicU64,
}

impl UntrackedSet {
    /// A set remembering up to `len` bases.
    pub fn new(len: usize) -> Result<UntrackedSet, OutOfMemory> {
        Ok(UntrackedSet {
            bases: try_boxed_slice(len.max(PROBE), |_| AtomicU64::new(0))?,
            uncounted: AtomicU64::new(0),
        })
    }

    fn start(&self, base: u64) -> usize {
        let h = base.wrapping_mul(super::FIB);
        (u128::from(h).wrapping_mul(self.bases.len() as u128) >> 64) as usize
    }

    /// Records an untracked mapping.
    pub fn add(&self, base: u64) {
        let start = self.start(base);
        for i in 0..PROBE {
            let Some(idx) = start.wrapping_add(i).checked_rem(self.bases.len()) else {
                continue;
            };
            if let Some(b) = self.bases.get(idx) {
                if b.compare_exchange(0, base, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
        }
        self.uncounted.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets `base` if it is a remembered untracked mapping; true if it was.
    pub fn take_remembered(&self, base: u64) -> bool {
        if base == 0 {
            return false;
        }
        let start = self.start(base);
        for i in 0..PROBE {
            let Some(idx) = start.wrapping_add(i).checked_rem(self.bases.len()) else {
                continue;
            };
            if let Some(b) = self.bases.get(idx) {
                if b.compare_exchange(base, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
            }
        }
        false
    }

    /// Consumes one only-counted untracked mapping, if any: an unmap of an unknown base
    /// may be its unmap. Bounded: under heavy contention a few failed attempts give up.
    pub fn take_uncounted(&self) -> bool {
        let mut n = self.uncounted.load(Ordering::Acquire);
        for _ in 0..16 {
            if n == 0 {
                return false;
            }
            match self.uncounted.compare_exchange_weak(
                n,
                n.saturating_sub(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// Untracked mappings believed live (remembered + only counted).
    pub fn live(&self) -> u64 {
        let remembered = self
            .bases
            .iter()
            .filter(|b| b.load(Ordering::Relaxed) != 0)
            .count();
        (remembered as u64).saturating_add(self.uncounted.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_then_counted() {
        let u = UntrackedSet::new(16).unwrap();
        for i in 1..=20u64 {
            u.add(i << 12);
        }
        assert_eq!(u.live(), 20);
        let remembered = (1..=20u64).filter(|i| u.take_remembered(i << 12)).count();
        assert_eq!(remembered, 16);
        assert!(!u.take_remembered(0x9999_0000));
        assert_eq!((0..10).filter(|_| u.take_uncounted()).count(), 4);
        assert_eq!(u.live(), 0);
    }
}
