//! `iosvctl lab` and `iosvctl host serve`: the user-mode host of design.md §7 inside
//! iosvctl — run a scenario and report what the verifier found, or serve the host on a
//! socket for other clients.

use super::*;
use crate::transport::inproc::InProcess;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use iosv_host::scenario::{self, Progress, RunSummary, Scenario};
use iosv_host::{endpoint, Audit, Host};
use std::io::IsTerminal;
use std::sync::Arc;

/// A progress bar on stderr that appears only when a run lasts (and stderr is a terminal).
struct Bar {
    start: Instant,
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Bar {
    fn new(enabled: bool) -> Bar {
        Bar {
            start: Instant::now(),
            bar: None,
            enabled: enabled && io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, p: &Progress) {
        if !self.enabled {
            return;
        }
        if self.bar.is_none() && self.start.elapsed() >= Duration::from_millis(300) {
            let b = ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            self.bar = Some(b);
        }
        if let Some(b) = &self.bar {
            b.set_length(p.total);
            b.set_position(p.done);
            b.set_message(p.phase.clone());
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Text of the built-in scenario (`Scenario::builtin_default()` parses the same file),
/// for `--threads` / `--seed` without a scenario file.
const BUILTIN_TEXT: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lab.toml"));
/// Origin the host gives the built-in scenario.
const BUILTIN_ORIGIN: &str = "builtin:lab.toml";

fn load_scenario(path: Option<&std::path::Path>, run: &RunArgs) -> AppResult<Scenario> {
    let bad = |e: scenario::ScenarioError| AppError(format!("bad scenario: {e}"));
    let overrides = run.threads.is_some() || run.seed.is_some();
    let (text, origin) = match (path, overrides) {
        (Some(p), false) => return Scenario::from_file(p).map_err(bad),
        (None, false) => return Ok(Scenario::builtin_default()),
        (Some(p), true) => {
            // Read and check it as written first, so errors point into the file.
            let original = Scenario::from_file(p).map_err(bad)?;
            let text = scenario::read_file(p).map_err(bad)?;
            (text, original.origin().to_string())
        }
        (None, true) => (BUILTIN_TEXT.to_string(), BUILTIN_ORIGIN.to_string()),
    };
    let rewritten = override_stress(&text, run)
        .map_err(|e| AppError(format!("bad scenario: {origin}: {e}")))?;
    let s =
        Scenario::parse(&rewritten, &format!("{origin} (with --threads/--seed)")).map_err(bad)?;
    if run.threads.is_some() && !s.has_stress() {
        eprintln!("iosvctl: warning: {origin} has no stress phase; --threads changes nothing");
    }
    Ok(s)
}

/// The scenario text with `--threads` and `--seed` applied: the top-level `seed` and every
/// `stress` step's `threads` and `seed` replaced. The host has no API to override them, so
/// the scenario is rewritten and parsed again.
fn override_stress(text: &str, run: &RunArgs) -> Result<String, String> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    // Scenario numbers may be strings ("0x…"), which keeps seeds above i64::MAX exact.
    let seed = run.seed.map(|s| toml::Value::String(format!("0x{s:x}")));
    if let Some(s) = &seed {
        doc.insert("seed".to_string(), s.clone());
    }
    if let Some(toml::Value::Array(steps)) = doc.get_mut("step") {
        for step in steps.iter_mut().filter_map(toml::Value::as_table_mut) {
            if step.get("op").and_then(toml::Value::as_str) != Some("stress") {
                continue;
            }
            if let Some(t) = run.threads {
                let t = i64::try_from(t).map_err(|_| format!("--threads {t} is too large"))?;
                step.insert("threads".to_string(), toml::Value::Integer(t));
            }
            if let Some(s) = &seed {
                step.insert("seed".to_string(), s.clone());
            }
        }
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

fn new_host(params: iosv::config::StartParams) -> AppResult<Arc<Host>> {
    Host::try_new(params)
        .map(Arc::new)
        .map_err(|e| AppError(format!("cannot start the host: {e}")))
}

fn run_scenario(host: &Host, scenario: &Scenario, progress: bool) -> AppResult<RunSummary> {
    let mut bar = Bar::new(progress);
    let r = scenario::run(host, scenario, &mut |p: &Progress| bar.update(p));
    bar.finish();
    r.map_err(|e| AppError(format!("scenario failed: {e}")))
}

fn describe_run(s: &RunSummary, origin: &str) -> String {
    format!(
        "scenario {:?} ({origin}): {} steps, {} driver operations in {}; {} bugs injected{}",
        s.name,
        s.steps,
        s.operations,
        model::age(u64::try_from(s.duration.as_nanos()).unwrap_or(u64::MAX)),
        s.expected_total(),
        if s.corruptions > 0 {
            format!(", {} simulated PTE corruptions", s.corruptions)
        } else {
            String::new()
        }
    )
}

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

/// `iosvctl lab`.
pub fn lab(g: &Global, a: &LabArgs, out: &mut dyn Write) -> AppResult {
    let scenario = load_scenario(a.scenario.as_deref(), &a.run)?;
    let params = a.params.apply(scenario.start_params()).map_err(AppError)?;
    let host = new_host(params)?;
    let mut c = Client::connect(InProcess::new(Arc::clone(&host)))?;
    let contained_at_start =
        apply_settings(&mut c, &a.settings)?.flags & iosv::protocol::CF_CONTAINMENT != 0;
    let summary = run_scenario(&host, &scenario, !a.run.no_progress)?;
    // Corruptions count only if containment was on throughout: on at the start (after
    // the command line's settings), never turned off by the scenario, on at the end.
    let containment = contained_at_start
        && scenario.keeps_containment()
        && c.get_config()?.flags & iosv::protocol::CF_CONTAINMENT != 0;
    let audit = host
        .audit(&summary.expected, containment)
        .map_err(|e| AppError(format!("cannot audit the run: {e}")))?;

    let stats = c.stats()?;
    let images = Images::from_stats(&stats.drivers);
    let mappings = if a.no_mappings {
        None
    } else {
        Some(c.list_mappings(&MappingFilter::default())?)
    };
    match g.format {
        Format::Human => {
            writeln!(out, "{}", describe_run(&summary, scenario.origin()))?;
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
        }
        Format::Sarif | Format::Junit => {}
    }
    let mut sink = ViolationSink::new(g, out, images.clone());
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
    let outcome = sink.finish(&info, &super::driver_names(&stats))?;
    if !problems.is_empty() && g.format != Format::Human {
        eprintln!(
            "iosvctl: error: the lab audit is unclean (exit 4): {}",
            problems.join("; ")
        );
    }
    if let Some(list) = mappings {
        match g.format {
            Format::Human => {
                writeln!(out, "\nstill mapped after the run:")?;
                write!(out, "{}", human::mappings(&list, g.verbose > 0, &images))?;
            }
            Format::Json => {
                for m in &list.records {
                    writeln!(out, "{}", json::mapping(m, &list, &images))?;
                }
            }
            Format::Sarif | Format::Junit => {}
        }
    }
    Ok(outcome)
}

/// `iosvctl host serve`.
pub fn serve(_g: &Global, a: &ServeArgs, _out: &mut dyn Write) -> AppResult {
    let scenario = match &a.scenario {
        Some(p) => Some(load_scenario(Some(p), &a.run)?),
        None if a.run.threads.is_some() || a.run.seed.is_some() => {
            return Err(AppError(
                "--threads and --seed apply to the scenario of --scenario".to_string(),
            ))
        }
        None => None,
    };
    let base = scenario
        .as_ref()
        .map(Scenario::start_params)
        .unwrap_or_default();
    let host = new_host(a.params.apply(base).map_err(AppError)?)?;
    let mut c = Client::connect(InProcess::new(Arc::clone(&host)))?;
    apply_settings(&mut c, &a.settings)?;
    if let Some(s) = &scenario {
        let summary = run_scenario(&host, s, !a.run.no_progress)?;
        eprintln!("iosvctl: {}", describe_run(&summary, s.origin()));
    }
    let path = match &a.socket {
        Some(p) => p.clone(),
        None => {
            let p = crate::transport::default_socket_path();
            #[cfg(unix)]
            if let Some(dir) = p.parent() {
                crate::transport::prepare_private_dir(dir)
                    .map_err(|e| AppError(format!("cannot serve on {}: {e}", p.display())))?;
            }
            p
        }
    };
    install_stop_handler();
    let bound = endpoint::bind(&path)
        .map_err(|e| AppError(format!("cannot serve on {}: {e}", path.display())))?;
    eprintln!(
        "iosvctl: host serving on {} (Ctrl-C to stop)",
        path.display()
    );
    bound
        .serve(host, &STOP, endpoint::Limits::default())
        .map_err(|e| AppError(format!("serving on {} failed: {e}", path.display())))?;
    eprintln!("iosvctl: host stopped");
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(threads: Option<usize>, seed: Option<u64>) -> RunArgs {
        RunArgs {
            threads,
            seed,
            no_progress: true,
        }
    }

    #[test]
    fn builtin_text_is_the_builtin_scenario() {
        assert_eq!(
            Scenario::parse(BUILTIN_TEXT, BUILTIN_ORIGIN).ok(),
            Some(Scenario::builtin_default())
        );
    }

    #[test]
    fn threads_and_seed_rewrite_every_stress_phase() {
        let s = load_scenario(None, &run_args(Some(3), Some(u64::MAX))).unwrap();
        assert!(s.has_stress());
        assert_eq!(s.seed(), u64::MAX);
        let text = override_stress(BUILTIN_TEXT, &run_args(Some(3), Some(5))).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let stress: Vec<&toml::Table> = doc["step"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(toml::Value::as_table)
            .filter(|t| t.get("op").and_then(toml::Value::as_str) == Some("stress"))
            .collect();
        assert!(!stress.is_empty());
        for t in stress {
            assert_eq!(t["threads"].as_integer(), Some(3));
            assert_eq!(t["seed"].as_str(), Some("0x5"));
        }
        // Out of range: the host's parser says so.
        let e = load_scenario(None, &run_args(Some(1000), None))
            .err()
            .unwrap();
        assert!(e.0.contains("threads must be between"), "{e}");
    }

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
