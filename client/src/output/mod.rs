//! Output: the formats — [`human`] tables, [`json`] lines, [`sarif`] 2.1.0 and [`junit`]
//! XML — the [`sink`] that sends violations to one of them as they are read, and the
//! [`tally`] of what was seen.

pub mod human;
pub mod json;
pub mod junit;
pub mod sarif;
pub mod sink;
pub mod tally;

pub use tally::{BySeverity, Tally};

/// How `iosvctl` prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables for people (the default).
    Human,
    /// One JSON object per line, each with a `kind` field.
    Json,
    /// One SARIF 2.1.0 log (violations only: `violations`, `lab`).
    Sarif,
    /// One JUnit XML report, a test case per rule and driver (`violations`, `lab`).
    Junit,
    /// One self-contained HTML report with plots (`lab`; for a device's saved JSON lines,
    /// `iosvctl report --html FILE`).
    Html,
}
