//! `iosvctl status`: the endpoint's version, capabilities, limits, counters and
//! per-driver statistics.

use super::json_line;
use crate::cli::Global;
use crate::client::Client;
use crate::error::AppResult;
use crate::outcome::Outcome;
use crate::output::{human, json, Format};
use crate::transport::Transport;
use std::io::Write;

/// `iosvctl status`.
pub fn run<T: Transport>(g: &Global, c: &mut Client<T>, out: &mut dyn Write) -> AppResult {
    let stats = c.stats()?;
    let endpoint = c.describe();
    match g.format {
        Format::Json => json_line(out, &json::status(&endpoint, c.hello(), &stats))?,
        _ => write!(out, "{}", human::status(&endpoint, c.hello(), &stats))?,
    }
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use crate::testutil::{run_on, two_mappings};
    #[test]
    fn status_names_the_drivers_and_counts() {
        let e = two_mappings();
        let (_, out) = run_on(&e, &["status"]);
        assert!(
            out.contains("nic.sys")
                && out.contains("attached")
                && out.contains(&format!("protocol {}", iosv::protocol::PROTOCOL_VERSION)),
            "{out}"
        );
        let (_, out) = run_on(&e, &["status", "-f", "json"]);
        let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(s["counters"]["maps"], 2);
        assert_eq!(s["drivers"][0]["live_bytes"], 0x2000);
        assert!(run_on(&e, &["status", "-f", "sarif"]).0.is_err());
    }
}
