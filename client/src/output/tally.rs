//! Violation counts per severity, rule and driver, for summaries and the exit status.

use crate::model::Violation;
use iosv::rules::Severity;
use std::collections::BTreeMap;

/// Violations counted per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BySeverity {
    /// Errors.
    pub error: u64,
    /// Warnings.
    pub warning: u64,
    /// Notes.
    pub note: u64,
}

impl BySeverity {
    /// Counts one of `sev`.
    pub fn add(&mut self, sev: Severity) {
        match sev {
            Severity::Error => self.error += 1,
            Severity::Warning => self.warning += 1,
            Severity::Note => self.note += 1,
        }
    }

    /// How many are at or above `threshold`.
    pub fn at_least(&self, threshold: Severity) -> u64 {
        match threshold {
            Severity::Error => self.error,
            Severity::Warning => self.error + self.warning,
            Severity::Note => self.error + self.warning + self.note,
        }
    }
}

/// Violation counts per rule, per driver and per severity, for summaries.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Violations counted.
    pub total: u64,
    /// Per severity.
    pub by_severity: BySeverity,
    /// Per rule: (code, name, severity) → count.
    pub by_rule: BTreeMap<(String, &'static str, Severity), u64>,
    /// Per blamed driver, per severity.
    pub by_driver: BTreeMap<String, BySeverity>,
}

impl Tally {
    /// Counts one violation.
    pub fn add(&mut self, v: &Violation<'_>) {
        let sev = v.severity();
        self.total += 1;
        self.by_severity.add(sev);
        *self
            .by_rule
            .entry((v.code(), v.rule_name(), sev))
            .or_default() += 1;
        self.by_driver.entry(v.driver_label()).or_default().add(sev);
    }

    /// Violations at or above `threshold`.
    pub fn at_least(&self, threshold: Severity) -> u64 {
        self.by_severity.at_least(threshold)
    }
}
