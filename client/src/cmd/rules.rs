//! `iosvctl rules`: the rules iosv checks (with -v: help and reference of each).

use super::json_line;
use crate::cli::Global;
use crate::error::AppResult;
use crate::outcome::Outcome;
use crate::output::{human, json, Format};
use std::io::Write;

/// `iosvctl rules`.
pub fn run(g: &Global, out: &mut dyn Write) -> AppResult {
    match g.format {
        Format::Json => {
            for r in json::rules() {
                json_line(out, &r)?;
            }
        }
        _ => write!(out, "{}", human::rules(g.verbose > 0))?,
    }
    Ok(Outcome::Clean)
}
