//! `iosvctl violations`: the violation reports after a cursor, once or following the
//! journal (`--follow`, `--duration`, `--until`), filtered by rule and driver.

use super::driver_names;
use super::journal::{read_violations, ReadPlan};
use crate::cli::{Global, ViolationsArgs};
use crate::client::Client;
use crate::error::AppResult;
use crate::model;
use crate::output::sarif;
use crate::output::sink::ViolationSink;
use crate::transport::Transport;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

/// When following ends: the earlier of `--duration` from now and `--until`.
fn deadline(a: &ViolationsArgs) -> Option<Instant> {
    let d1 = a.duration.map(|d| Instant::now() + d);
    let d2 = a.until.map(|t| {
        Instant::now()
            + t.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
    });
    match (d1, d2) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `iosvctl violations`.
pub fn run<T: Transport>(
    g: &Global,
    a: &ViolationsArgs,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    let plan = ReadPlan {
        since: a.since,
        max: a.max,
        follow: a.follow || a.duration.is_some() || a.until.is_some(),
        interval: a.interval,
        deadline: deadline(a),
        rules: a.rule.clone(),
        drivers: a.driver.clone(),
        progress: !a.no_progress,
    };
    if plan.follow {
        crate::stop::install_handler();
    }
    let stats = c.stats()?;
    let images = super::images(g, c, &stats)?;
    let mut sink = ViolationSink::new(g, out, images);
    let next = read_violations(c, &plan, &mut sink)?;
    let drivers = if plan.follow {
        driver_names(&c.stats()?)
    } else {
        driver_names(&stats)
    };
    let info = sarif::RunInfo {
        endpoint: c.describe(),
        component_version: model::text(&c.hello().component_version),
        from_cursor: a.since,
        next_cursor: next,
        ..Default::default()
    };
    let outcome = sink.finish(&info, &drivers);
    super::symbol_notes(
        sink.images(),
        c.hello().capabilities & iosv::protocol::CAP_HOST != 0,
    );
    outcome
}

#[cfg(test)]
mod tests {
    use crate::outcome::Outcome;
    use crate::testutil::{buggy, json_lines, run_line, run_on, two_mappings, Engine};

    #[test]
    fn violations_as_human_lines_with_names_and_a_summary() {
        let e = buggy();
        let (r, out) = run_on(&e, &["violations"]);
        assert_eq!(r.unwrap(), Outcome::Violations);
        let line = out.lines().find(|l| l.contains("IOSV001")).expect(&out);
        for part in [
            "unmap-size-mismatch",
            "nic.sys",
            "0x800",
            "0x1000",
            "PASSIVE_LEVEL",
            "contained",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        assert!(
            out.lines()
                .any(|l| l.contains("IOSV002") && l.contains("DIRQL 5")),
            "{out}"
        );
        assert!(
            out.contains("4 violations (3 error, 1 warning, 0 note)"),
            "{out}"
        );
        assert!(out.contains("next cursor: 4"), "{out}");
        assert!(!out.contains("nic.sys+0x"), "stacks only with -v");
        let (_, out) = run_on(&e, &["violations", "-v"]);
        assert!(
            out.contains("call stack:") && out.contains("nic.sys+0x2000"),
            "{out}"
        );
        assert!(
            out.contains("map stack:") && out.contains("nic.sys+0x1a2b"),
            "{out}"
        );
        assert!(
            out.contains("but the mapping at that base was made with NumberOfBytes 0x1000"),
            "{out}"
        );
    }

    #[test]
    fn violations_as_json_lines() {
        let e = buggy();
        let (r, out) = run_on(&e, &["violations", "--format", "json"]);
        assert_eq!(r.unwrap(), Outcome::Violations);
        let v = json_lines(&out);
        let viol: Vec<_> = v.iter().filter(|o| o["kind"] == "violation").collect();
        assert_eq!(viol.len(), 4);
        assert_eq!(viol[0]["rule"], "IOSV001");
        assert_eq!(viol[0]["driver"], "nic.sys");
        assert_eq!(viol[0]["passed_size"], 0x800);
        assert_eq!(viol[0]["mapped_size"], 0x1000);
        assert_eq!(viol[0]["contained"], true);
        assert_eq!(viol[2]["rule"], "IOSV010");
        assert_eq!(viol[2]["driver"], "gpu.sys");
        assert_eq!(viol[2]["owner"], "nic.sys");
        assert_eq!(viol[2]["severity"], "warning");
        let end = v.last().unwrap();
        assert_eq!(
            (
                end["kind"].as_str(),
                end["next_cursor"].as_u64(),
                end["failing"].as_u64()
            ),
            (Some("end"), Some(4), Some(3))
        );
    }

    #[test]
    fn fail_on_and_filters_choose_what_counts() {
        let e = Engine::new();
        e.nic_map(0xfc00_0000, 0x1000);
        e.map(true, 0xfc00_0000, 0x1000, 1); // IOSV010, a warning
        assert_eq!(run_on(&e, &["violations"]).0.unwrap(), Outcome::Clean);
        assert_eq!(
            run_on(&e, &["violations", "--fail-on", "warning"])
                .0
                .unwrap(),
            Outcome::Violations
        );
        assert_eq!(
            run_on(&e, &["violations", "--fail-on", "note"]).0.unwrap(),
            Outcome::Violations
        );

        let e = buggy();
        let (_, out) = run_line(&e, "violations -f json --rule unmap-unknown --rule IOSV002");
        let rules: Vec<_> = json_lines(&out)
            .iter()
            .filter(|o| o["kind"] == "violation")
            .map(|o| o["rule"].clone())
            .collect();
        assert_eq!(rules, ["IOSV004", "IOSV002"]);
        let (r, out) = run_on(&e, &["violations", "-f", "json", "--driver", "GPU.SYS"]);
        assert_eq!(r.unwrap(), Outcome::Clean, "gpu.sys only has a warning");
        assert_eq!(
            json_lines(&out)
                .iter()
                .filter(|o| o["kind"] == "violation")
                .count(),
            1
        );
        let (_, out) = run_on(
            &e,
            &["violations", "-f", "json", "--max", "1", "--since", "1"],
        );
        let v = json_lines(&out);
        assert_eq!(v[0]["seq"], 1);
        assert_eq!(v.last().unwrap()["next_cursor"], 2);
    }

    #[test]
    fn following_as_json_writes_samples_for_the_report() {
        let e = two_mappings();
        let (r, out) = run_on(
            &e,
            &[
                "violations",
                "-f",
                "json",
                "--duration",
                "300ms",
                "--no-progress",
            ],
        );
        assert_eq!(r.unwrap(), Outcome::Clean);
        let v = json_lines(&out);
        let sample = v.iter().find(|o| o["kind"] == "sample").expect(&out);
        let nic = sample["drivers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "nic.sys")
            .unwrap();
        assert_eq!(
            (nic["live"].as_u64(), nic["live_bytes"].as_u64()),
            (Some(1), Some(0x2000))
        );
        let html =
            crate::report::render(&crate::report::ReportData::from_json_lines(&out), "follow");
        assert!(html.contains("<svg class=\"series\""));
        // Not following: no samples.
        let (_, out) = run_on(&e, &["violations", "-f", "json"]);
        assert!(!out.contains("\"sample\""));
        // HTML is the lab's (and `report`'s) format.
        let (r, _) = run_on(&e, &["violations", "-f", "html"]);
        assert!(r.unwrap_err().to_string().contains("report --html"));
    }

    #[test]
    fn leaks_name_the_owner_and_the_device() {
        let e = Engine::new();
        e.nic_start(0xffffc000_00002000, 0xfe00_0000, 0x3000);
        e.nic_stop(0xffffc000_00002000);
        let (r, out) = run_on(&e, &["violations", "-f", "json"]);
        assert_eq!(r.unwrap(), Outcome::Violations);
        let v = json_lines(&out);
        assert_eq!(v[0]["rule"], "IOSV007");
        assert_eq!(v[0]["driver"], "nic.sys");
        assert_eq!(v[0]["caller"], serde_json::Value::Null);
        assert_eq!(v[0]["device"], "0xffffc00000002000");
        assert_eq!(v[0]["mapped_size"], 0x3000);
        assert!(v[0]["message"]
            .as_str()
            .unwrap()
            .contains("IRP_MN_STOP_DEVICE"));
    }
}
