//! Statistics kept without a shared hot counter: each processor increments its own
//! cache-line-aligned row with a relaxed `fetch_add`; readers sum the rows. A processor
//! interrupted mid-increment by a higher-IRQL hook on the same row is still correct,
//! because the increment is one atomic instruction.

#![forbid(unsafe_code)]

use crate::drivers::{DriverId, MAX_DRIVERS};
use crate::rules::RULE_COUNT;
use crate::sync::{try_boxed_slice, AtomicU64, Ordering, OutOfMemory};
use alloc::boxed::Box;

/// A global counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Successful maps (derived: the sum of the per-driver counts; never bumped).
    Maps = 0,
    /// Maps the real routine failed.
    MapFailures,
    /// Unmaps (derived: the sum of the per-driver counts; never bumped).
    Unmaps,
    /// Contained unmaps.
    Contained,
    /// Violations ignored by configuration.
    Ignored,
    /// Violation records written.
    Reported,
    /// Debugger breaks requested.
    Breaks,
    /// Bug checks requested.
    Bugchecks,
    /// Maps that found the table full.
    TableFull,
    /// Unmaps passed through as possibly untracked.
    UnverifiedUnmaps,
}

const COUNTERS: usize = 10;
/// Per-driver counters (maps, unmaps, violations) for ids 0..=MAX_DRIVERS.
const DRIVER_WORDS: usize = 3 * (MAX_DRIVERS + 1);
const DRIVERS_AT: usize = COUNTERS + RULE_COUNT;
/// Words per row: counters, one per rule, per-driver counters; whole cache lines.
const ROW: usize = (DRIVERS_AT + DRIVER_WORDS).div_ceil(8) * 8;

/// A per-driver counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DriverCounter {
    /// Successful maps (derived: the sum of the per-driver counts; never bumped).
    Maps = 0,
    /// Unmaps.
    Unmaps = 1,
    /// Violations attributed to the driver.
    Violations = 2,
}

/// One processor's counters, starting on a cache line of their own (the alignment is
/// real, not just a row length in whole lines: two processors never share a line).
#[repr(align(64))]
struct Row([AtomicU64; ROW]);

/// Per-processor counters. See the module docs.
pub struct Stats {
    /// At least one row.
    rows: Box<[Row]>,
}

/// The sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Global counters, indexed by [`Counter`].
    pub counters: [u64; COUNTERS],
    /// Violations per rule, indexed by rule number - 1.
    pub per_rule: [u64; RULE_COUNT],
    /// Per driver id (0 = unattributed): maps, unmaps, violations.
    pub per_driver: [[u64; 3]; MAX_DRIVERS + 1],
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            counters: [0; COUNTERS],
            per_rule: [0; RULE_COUNT],
            per_driver: [[0; 3]; MAX_DRIVERS + 1],
        }
    }
}

impl Totals {
    /// One counter's total.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters.get(c as usize).copied().unwrap_or(0)
    }
}

impl Stats {
    /// Rows for `processors` processors (at least 1). A processor index beyond that
    /// shares the last row (still exact, just shared).
    pub fn new(processors: usize) -> Result<Stats, OutOfMemory> {
        let processors = processors.max(1);
        Ok(Stats {
            rows: try_boxed_slice(processors, |_| {
                Row(core::array::from_fn(|_| AtomicU64::new(0)))
            })?,
        })
    }

    /// `processor`'s row; an index past the allocated rows shares the last one (one
    /// compare on the hooks' path, the last row only off it).
    #[inline(always)]
    fn row(&self, processor: u32) -> Option<&Row> {
        match self.rows.get(processor as usize) {
            Some(row) => Some(row),
            None => self.last_row(),
        }
    }

    /// The row processors past the allocated rows share.
    #[cold]
    #[inline(never)]
    fn last_row(&self) -> Option<&Row> {
        self.rows.last()
    }

    #[inline]
    fn cell(&self, processor: u32, index: usize) -> Option<&AtomicU64> {
        self.row(processor)?.0.get(index)
    }

    /// Adds one to `counter` on `processor`'s row.
    pub fn bump(&self, processor: u32, counter: Counter) {
        if let Some(c) = self.cell(processor, counter as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds one to the violation count of rule index `rule` on `processor`'s row.
    pub fn bump_rule(&self, processor: u32, rule: usize) {
        if rule < RULE_COUNT {
            if let Some(c) = self.cell(processor, COUNTERS.saturating_add(rule)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds one to a driver's counter on `processor`'s row.
    #[inline]
    pub fn bump_driver(&self, processor: u32, driver: DriverId, counter: DriverCounter) {
        let i = usize::from(driver.0);
        if i <= MAX_DRIVERS {
            let at = DRIVERS_AT
                .saturating_add(i.saturating_mul(3))
                .saturating_add(counter as usize);
            if let Some(c) = self.cell(processor, at) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sums every row.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for row in self.rows.iter() {
            for (i, w) in row.0.iter().enumerate() {
                let v = w.load(Ordering::Relaxed);
                let slot = if i < COUNTERS {
                    t.counters.get_mut(i)
                } else if i < DRIVERS_AT {
                    t.per_rule.get_mut(i.wrapping_sub(COUNTERS))
                } else {
                    let d = i.wrapping_sub(DRIVERS_AT);
                    t.per_driver
                        .get_mut(d / 3)
                        .and_then(|row| row.get_mut(d % 3))
                };
                if let Some(c) = slot {
                    *c = c.wrapping_add(v);
                }
            }
        }
        let (maps, unmaps) = t
            .per_driver
            .iter()
            .fold((0u64, 0u64), |(m, u), &[dm, du, _]| {
                (m.wrapping_add(dm), u.wrapping_add(du))
            });
        if let Some(c) = t.counters.get_mut(Counter::Maps as usize) {
            *c = maps;
        }
        if let Some(c) = t.counters.get_mut(Counter::Unmaps as usize) {
            *c = unmaps;
        }
        t
    }

    /// Zeroes every counter (CLEAR). Increments racing with it may survive.
    pub fn reset(&self) {
        for w in self.rows.iter().flat_map(|r| r.0.iter()) {
            w.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_really_line_aligned() {
        // Issue 12: the alignment the docs claim is the type's, and the allocation has it.
        assert_eq!(core::mem::align_of::<Row>(), 64);
        assert_eq!(core::mem::size_of::<Row>() % 64, 0);
        let s = Stats::new(3).unwrap();
        for row in s.rows.iter() {
            assert_eq!(core::ptr::from_ref(row) as usize % 64, 0);
        }
    }

    #[test]
    fn sums_rows() {
        let s = Stats::new(2).unwrap();
        s.bump_driver(0, DriverId(1), DriverCounter::Maps);
        s.bump_driver(1, DriverId(0), DriverCounter::Maps);
        s.bump_driver(5, DriverId(3), DriverCounter::Unmaps);
        s.bump_rule(1, 3);
        s.bump_rule(1, 99);
        s.bump_driver(0, DriverId(64), DriverCounter::Violations);
        s.bump_driver(1, DriverId(65), DriverCounter::Violations);
        let t = s.totals();
        assert_eq!(t.get(Counter::Maps), 2);
        assert_eq!(t.get(Counter::Unmaps), 1);
        assert_eq!(t.per_rule[3], 1);
        assert_eq!(t.per_driver[64], [0, 0, 1]);
        s.reset();
        assert_eq!(s.totals(), Totals::default());
    }
}
