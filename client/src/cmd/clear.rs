//! `iosvctl clear`: discard journal records, reset counters and/or forget recent unmaps
//! (all three when no flag is given).

use super::json_line;
use crate::cli::{ClearArgs, Global};
use crate::client::Client;
use crate::error::AppResult;
use crate::outcome::Outcome;
use crate::output::Format;
use crate::transport::Transport;
use iosv::protocol::{CLR_ALL, CLR_GRAVEYARD, CLR_JOURNAL, CLR_STATS};
use std::io::Write;

/// `iosvctl clear`.
pub fn run<T: Transport>(
    g: &Global,
    a: &ClearArgs,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    let mut what = 0;
    if a.journal {
        what |= CLR_JOURNAL;
    }
    if a.stats {
        what |= CLR_STATS;
    }
    if a.graveyard {
        what |= CLR_GRAVEYARD;
    }
    if what == 0 {
        what = CLR_ALL;
    }
    c.clear(what)?;
    let names: Vec<&str> = [
        (CLR_JOURNAL, "journal"),
        (CLR_STATS, "statistics"),
        (CLR_GRAVEYARD, "graveyard"),
    ]
    .into_iter()
    .filter(|(b, _)| what & b != 0)
    .map(|(_, n)| n)
    .collect();
    match g.format {
        Format::Json => json_line(
            out,
            &serde_json::json!({ "kind": "clear", "cleared": names }),
        )?,
        _ => writeln!(out, "cleared {}", names.join(", "))?,
    }
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use crate::outcome::Outcome;
    use crate::testutil::{buggy, json_lines, run_on};

    #[test]
    fn clear_shows_up_as_discarded() {
        let e = buggy();
        let (r, out) = run_on(&e, &["clear", "--journal"]);
        assert_eq!(r.unwrap(), Outcome::Clean);
        assert_eq!(out.trim(), "cleared journal");
        let (r, out) = run_on(&e, &["violations", "-f", "json"]);
        assert_eq!(r.unwrap(), Outcome::Clean);
        let v = json_lines(&out);
        assert!(
            v.iter().any(|o| o["kind"] == "gap" && o["discarded"] == 4),
            "{out}"
        );
        let (_, out) = run_on(&e, &["violations"]);
        assert!(out.contains("4 discarded by clear"), "{out}");
    }
}
