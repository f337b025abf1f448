//! The `iosvctl` commands, one module each; [`crate::app`] checks the format
//! ([`check_format`]) and dispatches to them. Each takes the global options, its own
//! arguments, the endpoint's [`Client`](crate::client::Client) where it needs one, and the
//! stream results go to; it returns the [`Outcome`](crate::outcome::Outcome) that makes
//! the exit status.

pub mod attach;
pub mod clear;
pub mod config;
pub mod inf;
pub mod journal;
#[cfg(feature = "host")]
pub mod lab;
pub mod mappings;
#[cfg(feature = "host")]
mod progress;
pub mod rules;
#[cfg(feature = "host")]
pub mod run;
#[cfg(feature = "host")]
pub mod scenario;
#[cfg(feature = "host")]
pub mod serve;
pub mod status;
pub mod violations;

use crate::cli::{Command, Global};
use crate::client::Stats;
use crate::error::{AppError, AppResult};
use crate::output::Format;
use std::io::Write;

/// Refuses SARIF and JUnit for a command that has no violations to report: all but
/// `violations` and `lab` (`inf` writes the INF and `host serve` serves, whatever the
/// format). Commands run after this check.
pub fn check_format(command: &Command, g: &Global) -> AppResult<()> {
    let command = match command {
        Command::Status => "status",
        Command::Mappings(_) => "mappings",
        Command::Config(_) => "config",
        Command::Attach(_) => "attach",
        Command::Detach(_) => "detach",
        Command::Clear(_) => "clear",
        Command::Rules => "rules",
        Command::Violations(_) | Command::Inf(_) => return Ok(()),
        #[cfg(feature = "host")]
        Command::Lab(_) | Command::Host(_) | Command::Run(_) => return Ok(()),
    };
    match g.format {
        Format::Human | Format::Json => Ok(()),
        Format::Sarif => Err(AppError::FormatNotSupported {
            format: "sarif",
            command,
        }),
        Format::Junit => Err(AppError::FormatNotSupported {
            format: "junit",
            command,
        }),
    }
}

/// Writes one JSON line.
fn json_line(out: &mut dyn Write, v: &serde_json::Value) -> AppResult<()> {
    writeln!(out, "{v}")?;
    Ok(())
}

/// The image names of the drivers the endpoint knows.
fn driver_names(stats: &Stats) -> Vec<String> {
    stats
        .drivers
        .iter()
        .map(|d| crate::model::name(&d.name))
        .collect()
}
