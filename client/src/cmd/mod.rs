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
pub mod report;
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
        Command::Violations(_) => {
            if g.format == Format::Html {
                return Err(AppError::FormatNotSupported {
                    format: "html",
                    command: "violations",
                });
            }
            return Ok(());
        }
        Command::Inf(_) | Command::Report(_) => return Ok(()),
        #[cfg(feature = "host")]
        Command::Lab(_) | Command::Host(_) | Command::Run(_) => return Ok(()),
    };
    match g.format {
        Format::Human | Format::Json => Ok(()),
        Format::Html => Err(AppError::FormatNotSupported {
            format: "html",
            command,
        }),
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

/// The images to print stacks with: the drivers of `stats`, their PDB identities
/// (GET_IMAGE_DEBUG, when the endpoint serves it) and the symbolizer of `--symbols`.
pub fn images<T: crate::transport::Transport>(
    g: &Global,
    c: &mut crate::client::Client<T>,
    stats: &Stats,
) -> AppResult<crate::model::Images> {
    let images = crate::model::Images::from_stats(&stats.drivers);
    let Some(symbols) = g.symbolizer()? else {
        return Ok(images);
    };
    Ok(images
        .with_debug(&c.image_debug()?)
        .with_symbols(Some(symbols)))
}

/// Prints what was still mapped when a `lab` or `run` ended: a table (human) or one line
/// per mapping (JSON); the other formats carry no leak view.
pub fn print_leftover_mappings(
    out: &mut dyn Write,
    format: Format,
    list: &crate::client::MappingList,
    verbose: bool,
    images: &crate::model::Images,
) -> AppResult<()> {
    match format {
        Format::Human => {
            writeln!(out, "\nstill mapped after the run:")?;
            write!(
                out,
                "{}",
                crate::output::human::mappings(list, verbose, images)
            )?;
        }
        Format::Json => {
            for m in &list.records {
                writeln!(out, "{}", crate::output::json::mapping(m, list, images))?;
            }
        }
        Format::Sarif | Format::Junit | Format::Html => {}
    }
    Ok(())
}

/// Says on stderr, once per image, which PDB symbolized its frames or why none did.
pub fn symbol_notes(images: &crate::model::Images, simulated: bool) {
    let Some(s) = images.symbolizer() else {
        return;
    };
    let mut simulated_names = Vec::new();
    for (id, status) in s.statuses() {
        use crate::symbols::PdbStatus;
        match status {
            PdbStatus::Loaded(path) => {
                eprintln!("iosvctl: symbols: {id}: {}", path.display());
            }
            PdbStatus::NotFound { mismatched } if mismatched.is_empty() => {
                if simulated {
                    simulated_names.push(id.pdb_name.clone());
                } else {
                    eprintln!("iosvctl: symbols: {id}: not found on the symbol path");
                }
            }
            PdbStatus::NotFound { mismatched } => {
                let files: Vec<String> =
                    mismatched.iter().map(|p| p.display().to_string()).collect();
                eprintln!(
                    "iosvctl: symbols: {id}: {} has another GUID or age; not used",
                    files.join(", ")
                );
            }
            PdbStatus::Malformed { path, error } => {
                eprintln!(
                    "iosvctl: symbols: {id}: cannot read {}: {error}; frames stay module+offset",
                    path.display()
                );
            }
        }
    }
    if !simulated_names.is_empty() {
        eprintln!(
            "iosvctl: symbols: no PDB for {}: the host's simulated drivers are host code whose images carry a synthetic CodeView record, not compiled drivers; their frames stay module+offset",
            simulated_names.join(", ")
        );
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
