//! `iosvctl inf`: the installable iosv.inf for the devices and drivers to verify, rendered
//! from the template iosv.inx by [`crate::inf`].

use crate::cli::InfArgs;
use crate::error::{AppError, AppResult};
use crate::outcome::Outcome;
use std::io::Write;

/// `inf`: renders iosv.inf for the named devices and targets.
pub fn run(a: &InfArgs, out: &mut dyn Write) -> AppResult {
    let text = crate::inf::render(crate::inf::TEMPLATE, &a.hwids, &a.targets)?;
    match &a.output {
        Some(path) => std::fs::write(path, text).map_err(|source| AppError::WriteFile {
            path: path.clone(),
            source,
        })?,
        None => out.write_all(text.as_bytes())?,
    }
    Ok(Outcome::Clean)
}
