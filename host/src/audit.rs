//! The audit: the run's ground truth against what iosv reported — every injected bug
//! ([`Injected`]) reported exactly as often, nothing else, nothing lost, the live table
//! equal to the simulated Mm's mappings made through iosv, and (with containment) no
//! corruption of the simulated system.
//!
//! The host reads its own verifier's journal and table from the engine, as the kernel
//! component would, not through a control client (see `requests`).

use crate::{mm, Host, HostError, Injected};
use iosv::protocol::{ViolationRecord, MF_DETACHED};
use iosv::rules::RuleId;
use std::collections::BTreeMap;
use std::fmt;
use std::string::String;
use std::vec::Vec;

/// A live entry of the verifier's table, as far as the audit looks at it.
struct Entry {
    base: u64,
    size: u64,
    flags: u8,
}

impl Host {
    /// Every violation record the journal still holds, oldest first, and how many were
    /// lost to overflow.
    fn journal_records(&self) -> (Vec<ViolationRecord>, u64) {
        let mut records = Vec::new();
        let end = self
            .verifier
            .journal()
            .read_records(0, usize::MAX, |r| records.push(*r));
        (records, end.lost)
    }

    /// Every live entry of the verifier's table, and how many changed under the walk
    /// too often to be read.
    fn table_entries(&self) -> (Vec<Entry>, u64) {
        let mut entries = Vec::new();
        let end = self.verifier.table().walk(0, usize::MAX, |m| {
            entries.push(Entry {
                base: m.base,
                size: m.size,
                flags: m.flags,
            });
            true
        });
        (entries, u64::from(end.skipped))
    }

    /// Checks the run so far against what was injected: every expected violation reported
    /// exactly as often as injected, nothing else reported, nothing lost, the verifier's
    /// table equal to the simulated Mm's mappings made through iosv, and (when
    /// `containment_was_on`) no corruption of the simulated system. Call it when no
    /// driver call is running. It does not fail today (it reads the engine directly); the
    /// `Result` is kept for its callers.
    pub fn audit(&self, expected: &Injected, containment_was_on: bool) -> Result<Audit, HostError> {
        let (records, lost) = self.journal_records();
        let mut reported: Injected = BTreeMap::new();
        let mut seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        for r in &records {
            if let Some(rule) = RuleId::from_number(r.rule) {
                let c = reported
                    .entry((
                        rule,
                        String::from_utf8_lossy(r.blamed_driver_name()).into_owned(),
                    ))
                    .or_insert(0);
                *c = c.saturating_add(1);
            }
        }
        let mut mismatches = Vec::new();
        let keys: std::collections::BTreeSet<_> =
            expected.keys().chain(reported.keys()).cloned().collect();
        for k in keys {
            let e = expected.get(&k).copied().unwrap_or(0);
            let g = reported.get(&k).copied().unwrap_or(0);
            if e != g {
                mismatches.push(Mismatch {
                    rule: k.0,
                    driver: k.1,
                    expected: e,
                    reported: g,
                });
            }
        }
        let (table, skipped) = self.table_entries();
        // A detached driver may unmap where iosv cannot see: its entries stay (flagged)
        // until an unmap iosv sees, its unload or Mm's reuse of the address removes them.
        let (unseen, table): (Vec<Entry>, Vec<Entry>) = table
            .into_iter()
            .partition(|m| m.flags & MF_DETACHED != 0 && !self.mm().is_mapped(m.base));
        let mut tracked: Vec<(u64, u64)> = table.iter().map(|m| (m.base, m.size)).collect();
        tracked.sort_unstable();
        let truth: Vec<(u64, u64)> = self
            .mm()
            .mappings()
            .iter()
            .filter(|m| m.via_iosv)
            .map(|m| (m.base, m.size))
            .collect();
        let only_table: Vec<(u64, u64)> = tracked
            .iter()
            .filter(|t| truth.binary_search(t).is_err())
            .copied()
            .collect();
        let only_mm: Vec<(u64, u64)> = truth
            .iter()
            .filter(|t| tracked.binary_search(t).is_err())
            .copied()
            .collect();
        let corruptions = self.mm().corruptions();
        Ok(Audit {
            records: records.len() as u64,
            duplicate_records: (records.len() as u64).saturating_sub(seqs.len() as u64),
            lost,
            mismatches,
            table_entries: tracked.len() as u64,
            table_skipped: skipped,
            only_in_table: only_table,
            only_in_mm: only_mm,
            detached_unmapped_unseen: unseen.iter().map(|m| (m.base, m.size)).collect(),
            corruptions: if containment_was_on {
                corruptions
            } else {
                Vec::new()
            },
        })
    }
}

/// One (rule, driver) whose reported count differs from the injected count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The rule.
    pub rule: RuleId,
    /// The blamed driver's name.
    pub driver: String,
    /// Injected.
    pub expected: u64,
    /// Reported.
    pub reported: u64,
}

/// What [`Host::audit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Records read.
    pub records: u64,
    /// Records whose sequence number appeared twice.
    pub duplicate_records: u64,
    /// Records lost to journal overflow.
    pub lost: u64,
    /// Rules and drivers whose counts differ from the injected ones.
    pub mismatches: Vec<Mismatch>,
    /// Live entries in the verifier's table.
    pub table_entries: u64,
    /// Entries the listing skipped (changing under the walk).
    pub table_skipped: u64,
    /// (base, size) the table holds but the Mm does not hold as made through iosv.
    pub only_in_table: Vec<(u64, u64)>,
    /// (base, size) the Mm holds as made through iosv but the table does not.
    pub only_in_mm: Vec<(u64, u64)>,
    /// (base, size) of entries flagged detached that their driver unmapped after the
    /// detach, where iosv cannot see it: expected, not a mismatch (the entry goes when Mm
    /// hands the address out again or the image unloads).
    pub detached_unmapped_unseen: Vec<(u64, u64)>,
    /// Corruptions of the simulated system (only checked when containment was on).
    pub corruptions: Vec<mm::Corruption>,
}

impl Audit {
    /// True if everything matched.
    pub fn is_clean(&self) -> bool {
        self.duplicate_records == 0
            && self.lost == 0
            && self.mismatches.is_empty()
            && self.table_skipped == 0
            && self.only_in_table.is_empty()
            && self.only_in_mm.is_empty()
            && self.corruptions.is_empty()
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} records ({} duplicate, {} lost), {} live mappings",
            self.records, self.duplicate_records, self.lost, self.table_entries
        )?;
        for m in &self.mismatches {
            writeln!(
                f,
                "  {} {}: injected {}, reported {}",
                m.rule.info().code,
                m.driver,
                m.expected,
                m.reported
            )?;
        }
        for (b, s) in &self.only_in_table {
            writeln!(f, "  table holds {b:#x}+{s:#x}, the Mm does not")?;
        }
        for (b, s) in &self.only_in_mm {
            writeln!(f, "  the Mm holds {b:#x}+{s:#x}, the table does not")?;
        }
        for (b, s) in &self.detached_unmapped_unseen {
            writeln!(
                f,
                "  (expected) {b:#x}+{s:#x}: unmapped by its detached driver, unseen"
            )?;
        }
        for c in &self.corruptions {
            writeln!(f, "  corruption: {c}")?;
        }
        Ok(())
    }
}
