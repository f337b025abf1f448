//! `iosvctl report --html FILE [INPUT…]`: the HTML report of saved JSON lines
//! ([`crate::report`]).

use crate::cli::ReportArgs;
use crate::error::{AppError, AppResult};
use crate::outcome::Outcome;
use crate::report::{render, ReportData};
use std::io::{Read, Write};
use std::path::Path;

/// Most bytes read from the inputs together.
pub const MAX_INPUT: u64 = 1 << 30;

fn read_input(path: &Path, text: &mut String) -> AppResult<()> {
    let mut bytes = Vec::new();
    let r = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_INPUT)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT).read_to_end(&mut bytes))
    };
    r.map_err(|e| AppError::Report(format!("cannot read {}: {e}", path.display())))?;
    text.push_str(&String::from_utf8_lossy(&bytes));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(())
}

/// `iosvctl report`.
pub fn run(a: &ReportArgs, out: &mut dyn Write) -> AppResult {
    let mut text = String::new();
    let stdin = [std::path::PathBuf::from("-")];
    let inputs = if a.inputs.is_empty() {
        &stdin[..]
    } else {
        &a.inputs[..]
    };
    for p in inputs {
        read_input(p, &mut text)?;
    }
    let data = ReportData::from_json_lines(&text);
    for (n, why) in data.unreadable.iter().take(10) {
        eprintln!("iosvctl: warning: report: input line {n} skipped: {why}");
    }
    if data.unreadable.len() > 10 {
        eprintln!(
            "iosvctl: warning: report: {} more input lines skipped (listed in the report)",
            data.unreadable.len() - 10
        );
    }
    if data.is_empty() {
        return Err(AppError::Report(format!(
            "report: no iosvctl JSON line (lab, violation, mapping, status, sample, end) in {}",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let title = a.title.clone().unwrap_or_else(|| {
        inputs
            .iter()
            .map(|p| {
                if p == Path::new("-") {
                    "standard input".to_string()
                } else {
                    p.display().to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    let html = render(&data, &title);
    if a.html == Path::new("-") {
        out.write_all(html.as_bytes())?;
        out.flush()?;
    } else {
        std::fs::write(&a.html, html).map_err(|source| AppError::WriteFile {
            path: a.html.clone(),
            source,
        })?;
    }
    Ok(Outcome::Clean)
}
