//! `iosvctl lab`: run a scenario in a user-mode host inside iosvctl (design.md §7), then
//! report what the verifier found, audited against what the run did.

use super::journal::{read_violations, ReadPlan};
use super::{config, driver_names, scenario};
use crate::cli::{Global, LabArgs};
use crate::client::{Client, MappingFilter};
use crate::error::{AppError, AppResult};
use crate::model;
use crate::output::sink::ViolationSink;
use crate::output::{json, sarif, Format};
use crate::transport::inproc::InProcess;
use iosv_host::scenario::RunSummary;
use iosv_host::Audit;
use std::io::Write;
use std::sync::Arc;

/// The `lab` JSON line: the scenario, its size and the bugs it injected per rule.
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
    let scenario = scenario::load(a.scenario.as_deref(), &a.run)?;
    let params = a
        .params
        .apply(scenario.start_params())
        .map_err(AppError::HostSizes)?;
    let host = scenario::new_host(params)?;
    let mut c = Client::connect(InProcess::new(Arc::clone(&host)))?;
    let contained_at_start =
        config::apply(&mut c, &a.settings)?.flags & iosv::protocol::CF_CONTAINMENT != 0;
    let summary = scenario::run(&host, &scenario, !a.run.no_progress)?;
    // Corruptions count only if containment was on throughout: on at the start (after
    // the command line's settings), never turned off by the scenario, on at the end.
    let containment = contained_at_start
        && scenario.keeps_containment()
        && c.get_config()?.flags & iosv::protocol::CF_CONTAINMENT != 0;
    let audit = host
        .audit(&summary.expected, containment)
        .map_err(AppError::Audit)?;

    let stats = c.stats()?;
    let images = super::images(g, &mut c, &stats)?;
    let mappings = if a.no_mappings {
        None
    } else {
        Some(c.list_mappings(&MappingFilter::default())?)
    };
    match format {
        Format::Human => {
            writeln!(
                out,
                "{}",
                scenario::describe_run(&summary, scenario.origin())
            )?;
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
            let mut v = summary_json(&summary, scenario.origin());
            if let Some(o) = v.as_object_mut() {
                o.insert("audit".to_string(), audit_json(&audit));
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
    let mut sink = ViolationSink::with_format(g, format, out, images.clone());
    let next = read_violations(&mut c, &ReadPlan::default(), &mut sink)?;
    let problems = audit_problems(&audit, scenario.scripts_misuse());
    let info = sarif::RunInfo {
        endpoint: format!("lab: {}", scenario.origin()),
        component_version: model::text(&c.hello().component_version),
        from_cursor: 0,
        next_cursor: next,
        problems: problems.clone(),
        audited: true,
        ..Default::default()
    };
    let outcome = sink.finish(&info, &driver_names(&stats))?;
    if !problems.is_empty() && format != Format::Human {
        eprintln!(
            "iosvctl: error: the lab audit is unclean (exit 4): {}",
            problems.join("; ")
        );
    }
    if let Some(list) = mappings {
        super::print_leftover_mappings(out, format, &list, g.verbose > 0, &images)?;
    }
    super::symbol_notes(&images, true);
    Ok(outcome)
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
