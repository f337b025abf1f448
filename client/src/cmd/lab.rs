//! `iosvctl lab`: run a scenario in a user-mode host inside iosvctl (design.md §7), then
//! report what the verifier found, audited against what the run did.

use super::run::{reports, session_reports, RunEnd};
use super::{config, scenario};
use crate::cli::{Global, LabArgs};
use crate::client::Client;
use crate::error::{AppError, AppResult};
use crate::output::{json, Format};
use crate::transport::inproc::InProcess;
use iosv_host::scenario::{ImageDriver, RunSummary, Scenario};
use iosv_host::{Audit, Host};
use iosv_runner::{parent, RunError};
use std::io::Write;
use std::sync::Arc;

/// The `lab` JSON line: the scenario, its size, the bugs it injected (and its compiled
/// drivers' `expect`) per rule, and the compiled drivers whose reports are not audited.
fn summary_json(s: &RunSummary, origin: &str) -> serde_json::Value {
    let injected: serde_json::Map<String, serde_json::Value> = iosv::rules::RULES
        .iter()
        .zip(s.expected_per_rule())
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.code.to_string(), serde_json::Value::from(n)))
        .collect();
    serde_json::json!({
        "kind": "lab",
        "scenario": s.name,
        "origin": origin,
        "steps": s.steps,
        "operations": s.operations,
        "duration_ms": u64::try_from(s.duration.as_millis()).unwrap_or(u64::MAX),
        "injected": injected,
        "injected_total": s.expected_total(),
        "corruptions": s.corruptions,
        "unaudited_drivers": s.unaudited_drivers,
    })
}

/// The `audit` object of the `lab` JSON line.
fn audit_json(a: &Audit) -> serde_json::Value {
    let mismatches: Vec<serde_json::Value> = a
        .mismatches
        .iter()
        .map(|m| serde_json::json!({ "rule": m.rule.info().code, "driver": m.driver, "injected": m.expected, "reported": m.reported }))
        .collect();
    serde_json::json!({
        "clean": a.is_clean(),
        "records": a.records,
        "duplicate_records": a.duplicate_records,
        "lost": a.lost,
        "mismatches": mismatches,
        "only_in_table": a.only_in_table.len(),
        "only_in_mm": a.only_in_mm.len(),
        "detached_unmapped_unseen": a.detached_unmapped_unseen.len(),
        "corruptions": a.corruptions.len(),
    })
}

/// What the audit found wrong beyond what lost records explain (those make exit 3 on
/// their own): duplicates, a table that differs from the simulated Mm, corruption of the
/// simulated system, or counts that differ from what was injected (with lost records,
/// only counts above the injected ones). Empty when the audit is clean.
///
/// With `scripted` (the scenario scripts misuse with raw steps, which iosv reports but
/// the run does not count as injected), only injected bugs that were not reported count.
fn audit_problems(a: &Audit, scripted: bool) -> Vec<String> {
    let mut p = Vec::new();
    if a.duplicate_records > 0 {
        p.push(format!("{} duplicate records", a.duplicate_records));
    }
    for m in &a.mismatches {
        let missed = m.reported < m.expected && a.lost == 0;
        let extra = m.reported > m.expected && !scripted;
        if missed || extra {
            p.push(format!(
                "{} {}: injected {}, reported {}",
                m.rule.info().code,
                m.driver,
                m.expected,
                m.reported
            ));
        }
    }
    if a.table_skipped > 0 {
        p.push(format!(
            "{} table entries skipped by the listing",
            a.table_skipped
        ));
    }
    if !a.only_in_table.is_empty() || !a.only_in_mm.is_empty() {
        p.push(format!(
            "the table and the simulated Mm differ ({} only in the table, {} only in the Mm)",
            a.only_in_table.len(),
            a.only_in_mm.len()
        ));
    }
    if !a.corruptions.is_empty() {
        p.push(format!(
            "{} simulated PTE corruptions with containment on",
            a.corruptions.len()
        ));
    }
    p
}

/// `iosvctl lab`. With `--format html` the run is written as JSON lines into memory and
/// the HTML report made from them ([`crate::report`]), as `report --html` does from a
/// saved stream.
pub fn run(g: &Global, a: &LabArgs, out: &mut dyn Write) -> AppResult {
    if g.format != Format::Html {
        return run_as(g, g.format, a, out);
    }
    let mut lines = Vec::new();
    let outcome = run_as(g, Format::Json, a, &mut lines)?;
    let text = String::from_utf8_lossy(&lines);
    let data = crate::report::ReportData::from_json_lines(&text);
    let origin = a.scenario.as_ref().map_or_else(
        || "builtin:lab.toml".to_string(),
        |p| p.display().to_string(),
    );
    write!(
        out,
        "{}",
        crate::report::render(&data, &format!("iosvctl lab {origin}"))
    )?;
    out.flush()?;
    Ok(outcome)
}

fn run_as(g: &Global, format: Format, a: &LabArgs, out: &mut dyn Write) -> AppResult {
    super::run::watchdog(a.watchdog)?;
    let scenario = scenario::load(a.scenario.as_deref(), &a.run)?;
    if let Some((_, image)) = scenario.images().first() {
        scenario.check_images().map_err(AppError::Scenario)?;
        return run_in_child(g, format, a, &scenario, image, out);
    }
    let host = new_host(a, &scenario)?;
    let mut c = Client::connect(InProcess::new(Arc::clone(&host)))?;
    let (summary, audit) = execute(&host, &mut c, a, &scenario, None)?;
    header(out, format, &scenario, &summary, &audit)?;
    let problems = audit_problems(&audit, scenario.scripts_misuse());
    let end = run_end(a, &scenario, &problems, true);
    reports(g, format, &mut c, &end, None, out)
}

/// The host `lab` runs `scenario` in: its `[host]` sizes under the command line's.
fn new_host(a: &LabArgs, scenario: &Scenario) -> AppResult<Arc<Host>> {
    let params = a
        .params
        .apply(scenario.start_params())
        .map_err(AppError::HostSizes)?;
    scenario::new_host(params)
}

/// Applies the command line's settings, runs the scenario (its image steps through
/// `images`), and audits the result against what it injected and expected.
fn execute<T: crate::transport::Transport>(
    host: &Host,
    c: &mut Client<T>,
    a: &LabArgs,
    scenario: &Scenario,
    images: Option<&mut dyn ImageDriver>,
) -> AppResult<(RunSummary, Audit)> {
    let contained_at_start =
        config::apply(c, &a.settings)?.flags & iosv::protocol::CF_CONTAINMENT != 0;
    let summary = match images {
        None => scenario::run(host, scenario, !a.run.no_progress)?,
        Some(i) => scenario::run_with_images(host, scenario, i, !a.run.no_progress)?,
    };
    // Corruptions count only if containment was on throughout: on at the start (after
    // the command line's settings), never turned off by the scenario, on at the end.
    let containment = contained_at_start
        && scenario.keeps_containment()
        && c.get_config()?.flags & iosv::protocol::CF_CONTAINMENT != 0;
    let mut audit = host
        .audit(&summary.expected, containment)
        .map_err(AppError::Audit)?;
    summary.exclude_unaudited(&mut audit);
    Ok((summary, audit))
}

/// What `lab` prints before the violations: the run's summary and its audit.
fn header(
    out: &mut dyn Write,
    format: Format,
    scenario: &Scenario,
    summary: &RunSummary,
    audit: &Audit,
) -> AppResult<()> {
    match format {
        Format::Human => {
            writeln!(
                out,
                "{}",
                scenario::describe_run(summary, scenario.origin())
            )?;
            if !summary.unaudited_drivers.is_empty() {
                writeln!(
                    out,
                    "not audited: {} (compiled drivers without `expect`: their reports are shown, not compared)",
                    summary.unaudited_drivers.join(", ")
                )?;
            }
            if audit.is_clean() && summary.expected_total() == 0 {
                writeln!(out, "audit: nothing injected, nothing reported; the table matches the simulated Mm\n")?;
            } else if audit.is_clean() {
                writeln!(out, "audit: every injected bug was reported once, nothing else; the table matches the simulated Mm\n")?;
            } else {
                write!(
                    out,
                    "audit: iosv's reports differ from the bugs the run injected (scripted misuse outside `bug` steps and stress phases is not counted as injected):\n{audit}\n"
                )?;
            }
        }
        Format::Json => {
            let mut v = summary_json(summary, scenario.origin());
            if let Some(o) = v.as_object_mut() {
                o.insert("audit".to_string(), audit_json(audit));
            }
            writeln!(out, "{v}")?;
            for smp in &summary.timeline.samples {
                let line = json::sample(
                    smp.t_ns,
                    smp.step,
                    smp.drivers
                        .iter()
                        .map(|d| (d.name.as_str(), d.live, d.live_bytes)),
                );
                writeln!(out, "{line}")?;
            }
        }
        Format::Sarif | Format::Junit | Format::Html => {}
    }
    Ok(())
}

/// How `lab` names its run for [`super::run::reports`]: the audit's `problems`, and
/// whether only simulated drivers ran.
fn run_end<'a>(
    a: &LabArgs,
    scenario: &Scenario,
    problems: &'a [String],
    simulated_only: bool,
) -> RunEnd<'a> {
    RunEnd {
        endpoint: format!("lab: {}", scenario.origin()),
        problems,
        audit: "the lab audit",
        no_mappings: a.no_mappings,
        simulated_only,
    }
}

/// The `lab` lines of the scenario child: `out TEXT` is a line of the header, `problem
/// TEXT` one of the audit's problems.
const OUT: &str = "out ";
const PROBLEM: &str = "problem ";

/// `lab` for a scenario naming a compiled driver image: driver code runs only in a child
/// process ([`iosv_runner::parent::start_scenario`]), which runs the whole scenario as
/// [`child`] and serves the verifier; this process prints the child's header, then pulls
/// the violations over the socket as `iosvctl run` does ([`session_reports`]). A crash, an
/// unimplemented routine, a hang or an image that does not load ends the run with run's
/// exit status; a failed DriverEntry stops the scenario at its `load` step and, as in
/// `iosvctl run`, ends the run with exit status 8 and its message after the reports
/// collected up to it (no header: the scenario did not finish; in human form the
/// child's notes say where it stopped).
fn run_in_child(
    g: &Global,
    format: Format,
    a: &LabArgs,
    scenario: &Scenario,
    image: &std::path::Path,
    out: &mut dyn Write,
) -> AppResult {
    let program = std::env::current_exe()
        .map_err(|e| AppError::Run(format!("cannot find iosvctl's own executable: {e}")))?;
    // The child parses and runs this very command line (`lab` and its options).
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let watchdog = super::run::watchdog(a.watchdog)?;
    let session = match parent::start_scenario(&program, image, &args, watchdog) {
        Ok(s) => s,
        Err(RunError::Ended { kind, report }) => {
            eprintln!("iosvctl: {report}");
            return Ok(super::run::ended(kind));
        }
        Err(RunError::Failed(text)) => return Err(AppError::Run(text)),
        Err(e) => return Err(AppError::Run(e.to_string())),
    };
    let mut problems = Vec::new();
    for line in &session.lab {
        if let Some(text) = line.strip_prefix(OUT) {
            writeln!(out, "{text}")?;
        } else if let Some(p) = line.strip_prefix(PROBLEM) {
            problems.push(p.to_string());
        }
    }
    if format == Format::Human {
        let notes: Vec<&String> = session
            .notes
            .iter()
            .filter(|n| g.verbose > 0 || !n.starts_with("import slot"))
            .collect();
        if !notes.is_empty() {
            writeln!(out, "driver {} ({}):", session.image.name, image.display())?;
            for n in notes {
                writeln!(out, "  {n}")?;
            }
            writeln!(out)?;
        }
    }
    // Then the reports, as `iosvctl run` prints them; after a failed DriverEntry, those
    // collected up to it (the scenario stopped at its `load` step), then the failure
    // (exit 8).
    session_reports(
        g,
        format,
        session,
        &run_end(a, scenario, &problems, false),
        out,
    )
}

/// The child of `run_in_child`: `args` are `SOCKET` and `lab`'s command line. It
/// builds the host as `lab` does, runs the scenario with the runner's image backend,
/// audits it, and sends the header and the audit's problems to the parent; then serves
/// the verifier until the parent is done. Returns its exit status.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn child(args: &[std::ffi::OsString]) -> i32 {
    use clap::Parser as _;
    let Some((socket, rest)) = args.split_first() else {
        return iosv_runner::scenario::fail("missing socket path");
    };
    let cli = match crate::cli::Cli::try_parse_from(
        std::iter::once(std::ffi::OsString::from("iosvctl")).chain(rest.iter().cloned()),
    ) {
        Ok(c) => c,
        Err(e) => return iosv_runner::scenario::fail(&e.to_string()),
    };
    let crate::cli::Command::Lab(a) = cli.command else {
        return iosv_runner::scenario::fail("the scenario child runs `lab` only");
    };
    // HTML is made from JSON lines by the parent.
    let format = match cli.global.format {
        Format::Html => Format::Json,
        f => f,
    };
    let prepared = scenario::load(a.scenario.as_deref(), &a.run)
        .and_then(|s| new_host(&a, &s).map(|h| (s, h)));
    let (scenario, host) = match prepared {
        Ok(p) => p,
        Err(e) => return iosv_runner::scenario::fail(&e.to_string()),
    };
    let mut body = |images: &mut dyn ImageDriver| -> Result<Vec<String>, String> {
        let mut run = || -> AppResult<Vec<String>> {
            let mut c = Client::connect(InProcess::new(Arc::clone(&host)))?;
            let (summary, audit) = execute(&host, &mut c, &a, &scenario, Some(images))?;
            let mut text = Vec::new();
            header(&mut text, format, &scenario, &summary, &audit)?;
            let mut lines: Vec<String> = String::from_utf8_lossy(&text)
                .lines()
                .map(|l| format!("{OUT}{l}"))
                .collect();
            lines.extend(
                audit_problems(&audit, scenario.scripts_misuse())
                    .into_iter()
                    .map(|p| format!("{PROBLEM}{p}")),
            );
            Ok(lines)
        };
        run().map_err(|e| e.to_string())
    };
    iosv_runner::scenario::main(std::path::Path::new(socket), &host, &mut body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    fn audit() -> Audit {
        Audit {
            records: 3,
            duplicate_records: 0,
            lost: 0,
            mismatches: Vec::new(),
            table_entries: 0,
            table_skipped: 0,
            only_in_table: Vec::new(),
            only_in_mm: Vec::new(),
            detached_unmapped_unseen: Vec::new(),
            corruptions: Vec::new(),
        }
    }

    fn mismatch(expected: u64, reported: u64) -> iosv_host::Mismatch {
        iosv_host::Mismatch {
            rule: iosv::rules::RuleId::UnmapUnknown,
            driver: "a.sys".to_string(),
            expected,
            reported,
        }
    }

    /// An unclean audit is its own outcome (exit 4); what lost records or scripted misuse
    /// explain is not counted against it.
    #[test]
    fn audit_problems_make_their_own_outcome() {
        assert!(audit_problems(&audit(), false).is_empty());
        let mut a = audit();
        a.mismatches.push(mismatch(2, 1));
        assert_eq!(
            audit_problems(&a, true).len(),
            1,
            "a missed bug always counts"
        );
        a.lost = 1;
        assert!(
            audit_problems(&a, false).is_empty(),
            "loss explains it (exit 3)"
        );
        let mut a = audit();
        a.mismatches.push(mismatch(0, 1));
        assert_eq!(audit_problems(&a, false).len(), 1);
        assert!(audit_problems(&a, true).is_empty(), "scripted misuse");
        let mut a = audit();
        a.only_in_mm.push((0x1000, 0x1000));
        a.duplicate_records = 1;
        assert_eq!(audit_problems(&a, true).len(), 2);
        assert_eq!(Outcome::AuditUnclean.exit_code(), 4);
        assert_eq!(Outcome::RecordsLost.exit_code(), 3);
    }
}
