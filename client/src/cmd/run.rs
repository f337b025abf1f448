//! `iosvctl run IMAGE.sys`: verify a compiled driver image on this Linux machine.
//!
//! iosvctl re-executes itself as a child process ([`iosv_runner::CHILD_ARG`]) that loads
//! the image, runs its device through its life cycle under iosv, and serves the
//! verifier's control codes on a Unix socket; this process pulls the reports over that
//! socket, exactly as from `iosvctl host serve`, and prints them like `lab`. A driver
//! that crashes, calls a routine the host lacks, hangs or does not load ends the run with
//! its own exit status (5–8) and a report on stderr; a driver whose DriverEntry fails gets
//! its reports first, then exit status 8 and the report.

use super::driver_names;
use super::journal::{read_violations, ReadPlan};
use crate::cli::{Global, RunImageArgs};
use crate::client::{Client, MappingFilter};
use crate::error::{AppError, AppResult};
use crate::model;
use crate::outcome::Outcome;
use crate::output::sink::ViolationSink;
use crate::output::{sarif, Format};
use crate::transport::Transport;
use iosv_runner::regspec::RegistrySpec;
use iosv_runner::{parent, BarSpec, ExitKind, IoctlSpec, RunError, RunOptions};
use std::io::Write;
use std::process::ExitCode;

/// When this process was started as the child of `iosvctl run`: runs it and returns its
/// exit status. `None` for every other command line.
pub fn child_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let marker = args.next()?;
    let scenario = marker == iosv_runner::CHILD_SCENARIO_ARG;
    if marker != iosv_runner::CHILD_ARG && !scenario {
        return None;
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        let rest: Vec<std::ffi::OsString> = args.collect();
        let code = if scenario {
            super::lab::child(&rest)
        } else {
            let rest: Vec<String> = rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            iosv_runner::child::main(&rest)
        };
        Some(ExitCode::from(u8::try_from(code).unwrap_or(2)))
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        drop(args);
        Some(ExitCode::from(2))
    }
}

fn options(a: &RunImageArgs) -> AppResult<RunOptions> {
    let bars = a
        .bars
        .iter()
        .map(|b| BarSpec::parse(b).map_err(|e| AppError::Run(format!("--bar {e}"))))
        .collect::<AppResult<Vec<_>>>()?;
    let ioctls = a
        .ioctls
        .iter()
        .map(|i| IoctlSpec::parse(i).map_err(|e| AppError::Run(format!("--ioctl {e}"))))
        .collect::<AppResult<Vec<_>>>()?;
    let registry = a
        .registry
        .iter()
        .map(|r| RegistrySpec::parse(r).map_err(|e| AppError::Run(format!("--registry {e}"))))
        .collect::<AppResult<Vec<_>>>()?;
    Ok(RunOptions {
        image: a.image.clone(),
        bars,
        ioctls,
        watchdog_secs: watchdog(a.watchdog)?,
        surprise_removal: a.surprise_removal,
        registry,
        verifier: a.verifier.clone(),
    })
}

/// The `--watchdog` seconds of `run` and `lab`, checked: at least 1.
pub(crate) fn watchdog(secs: u64) -> AppResult<u64> {
    if secs == 0 {
        return Err(AppError::Run(
            "--watchdog must be at least 1 second".to_string(),
        ));
    }
    Ok(secs)
}

/// The outcome of a run that ended without a report (exit status 5–8).
pub(crate) fn ended(kind: ExitKind) -> Outcome {
    match kind {
        ExitKind::Crashed => Outcome::DriverCrashed,
        ExitKind::Unimplemented => Outcome::Unimplemented,
        ExitKind::Hung => Outcome::DriverHung,
        ExitKind::LoadFailed => Outcome::LoadFailed,
    }
}

/// The child's socket (it runs as this user).
#[cfg(unix)]
pub(crate) fn connect(socket: &std::path::Path) -> AppResult<Box<dyn Transport>> {
    let t = crate::transport::socket::SocketTransport::connect(
        socket,
        Some(std::time::Duration::from_secs(10)),
        false,
    )?;
    Ok(Box::new(t))
}

/// No Unix sockets here; [`parent::start`] refuses to run anyway.
#[cfg(not(unix))]
pub(crate) fn connect(_socket: &std::path::Path) -> AppResult<Box<dyn Transport>> {
    Err(AppError::Run(
        "running driver images needs x86-64 Linux".to_string(),
    ))
}

/// `iosvctl run`. With `--format html` the run is written as JSON lines into memory and
/// the HTML report made from them ([`crate::report`]), as `lab` does.
pub fn run(g: &Global, a: &RunImageArgs, out: &mut dyn Write) -> AppResult {
    if g.format != Format::Html {
        return run_as(g, g.format, a, out);
    }
    let mut lines = Vec::new();
    let outcome = run_as(g, Format::Json, a, &mut lines)?;
    let text = String::from_utf8_lossy(&lines);
    let data = crate::report::ReportData::from_json_lines(&text);
    write!(
        out,
        "{}",
        crate::report::render(&data, &format!("iosvctl run {}", a.image.display()))
    )?;
    Ok(outcome)
}

fn run_as(g: &Global, format: Format, a: &RunImageArgs, out: &mut dyn Write) -> AppResult {
    let opts = options(a)?;
    for path in std::iter::once(&a.image).chain(&a.verifier) {
        if !path.is_file() {
            return Err(AppError::Run(format!("{}: no such file", path.display())));
        }
    }
    // With --verifier the host's verifier table is unused (iosv.sys keeps its own): the
    // audit can only find a corruption of the simulated Mm.
    let kernel_component = a.verifier.is_some();
    let program = std::env::current_exe()
        .map_err(|e| AppError::Run(format!("cannot find iosvctl's own executable: {e}")))?;
    let session = match parent::start(&program, &opts) {
        Ok(s) => s,
        Err(RunError::Ended { kind, report }) => {
            eprintln!("iosvctl: {report}");
            return Ok(ended(kind));
        }
        Err(e) => return Err(AppError::Run(e.to_string())),
    };
    let elapsed_ms = u64::try_from(session.elapsed.as_millis()).unwrap_or(u64::MAX);
    match format {
        Format::Human => {
            writeln!(
                out,
                "driver {} ({}): loaded at {:#x}, life cycle done in {} ms",
                session.image.name,
                a.image.display(),
                session.image.base,
                elapsed_ms
            )?;
            for n in &session.notes {
                if g.verbose > 0 || !n.starts_with("import slot") {
                    writeln!(out, "  {n}")?;
                }
            }
            if kernel_component && session.audit_problems.is_empty() {
                writeln!(
                    out,
                    "audit: the simulated Mm recorded no corruption (the kernel component keeps its own table)\n"
                )?;
            } else if session.audit_problems.is_empty() {
                writeln!(
                    out,
                    "audit: the verifier's table matches the simulated Mm; no corruption\n"
                )?;
            } else {
                writeln!(out, "audit: unclean:")?;
                for p in &session.audit_problems {
                    writeln!(out, "  {p}")?;
                }
                writeln!(out)?;
            }
        }
        Format::Json => {
            let v = serde_json::json!({
                "kind": "run",
                "image": a.image.display().to_string(),
                "driver": session.image.name,
                "base": format!("{:#x}", session.image.base),
                "size": session.image.size,
                "duration_ms": elapsed_ms,
                "notes": session.notes,
                "audit": { "clean": session.audit_problems.is_empty(), "problems": session.audit_problems, "table_compared": !kernel_component },
            });
            writeln!(out, "{v}")?;
        }
        Format::Sarif | Format::Junit | Format::Html => {}
    }
    let problems = session.audit_problems.clone();
    let end = RunEnd {
        endpoint: format!("run: {}", a.image.display()),
        problems: &problems,
        audit: "the run's audit",
        no_mappings: a.no_mappings,
        simulated_only: false,
    };
    session_reports(g, format, session, &end, out)
}

/// How [`reports`] names a run and what the run found besides the verifier's reports.
pub(crate) struct RunEnd<'a> {
    /// The SARIF invocation's endpoint: `run: PATH`, `lab: ORIGIN`.
    pub(crate) endpoint: String,
    /// What the run's audit found wrong (exit 4; empty: clean).
    pub(crate) problems: &'a [String],
    /// How the error on stderr names that audit: `the run's audit`, `the lab audit`.
    pub(crate) audit: &'a str,
    /// `--no-mappings`: no list of what is still mapped.
    pub(crate) no_mappings: bool,
    /// Only the host's simulated drivers ran (their frames have no PDB to find).
    pub(crate) simulated_only: bool,
}

/// What `run` and `lab` print after their header, from the verifier behind `c`: the
/// violations, the end (human summary, JSON end line, SARIF or JUnit document) with the
/// outcome, the mappings still live, the symbol notes. `load_failure` (a failed
/// DriverEntry's report, [`parent::Session::load_failure`]) makes the outcome
/// [`Outcome::LoadFailed`] (exit 8) whatever the reports say; its message is
/// [`session_reports`]'s to print, last.
pub(crate) fn reports<T: Transport>(
    g: &Global,
    format: Format,
    c: &mut Client<T>,
    end: &RunEnd<'_>,
    load_failure: Option<String>,
    out: &mut dyn Write,
) -> AppResult {
    let stats = c.stats()?;
    let images = super::images(g, c, &stats)?;
    let mappings = if end.no_mappings {
        None
    } else {
        Some(c.list_mappings(&MappingFilter::default())?)
    };
    let mut sink = ViolationSink::with_format(g, format, out, images.clone());
    let next = read_violations(c, &ReadPlan::default(), &mut sink)?;
    let info = sarif::RunInfo {
        endpoint: end.endpoint.clone(),
        component_version: model::text(&c.hello().component_version),
        from_cursor: 0,
        next_cursor: next,
        problems: end.problems.to_vec(),
        audited: true,
        load_failure,
        ..Default::default()
    };
    let outcome = sink.finish(&info, &driver_names(&stats))?;
    if !info.problems.is_empty() && format != Format::Human {
        eprintln!(
            "iosvctl: error: {} is unclean (exit 4): {}",
            end.audit,
            info.problems.join("; ")
        );
    }
    if let Some(list) = mappings {
        super::print_leftover_mappings(out, format, &list, g.verbose > 0, &images)?;
    }
    super::symbol_notes(&images, end.simulated_only);
    Ok(outcome)
}

/// The end of `run` and of `lab` with a compiled driver image, once the runner child is
/// `ready` and the header is printed: pulls the reports from the child's verifier over
/// its socket and prints them ([`reports`]), ends the child (printing what it noted after
/// the run: with `--verifier`, what iosv.sys's unload did), and — when the image's
/// DriverEntry failed — says so on stderr as the last line ([`Session::load_failure`]:
/// `cannot load PATH: DriverEntry of NAME failed with status 0x… (NAME)`); the outcome
/// is then [`Outcome::LoadFailed`] (exit 8). A driver that fails to load fails the run,
/// as on Windows, after its reports: what DriverEntry left mapped is among them (IOSV009
/// at the image's unload), with whatever else ran before it (a scenario's earlier steps).
///
/// [`Session::load_failure`]: parent::Session::load_failure
pub(crate) fn session_reports(
    g: &Global,
    format: Format,
    session: parent::Session,
    end: &RunEnd<'_>,
    out: &mut dyn Write,
) -> AppResult {
    let mut c = Client::connect(connect(&session.socket)?)?;
    let load_failure = session.load_failure.clone();
    let outcome = reports(g, format, &mut c, end, load_failure.clone(), out)?;
    drop(c);
    let late = session
        .finish_with_notes()
        .map_err(|e| AppError::Run(format!("after the run: {e}")))?;
    // With --verifier: what iosv.sys's unload did, after the reports were read.
    if !late.is_empty() {
        if format == Format::Human {
            writeln!(out, "after the run:")?;
            for n in &late {
                writeln!(out, "  {n}")?;
            }
        } else {
            for n in &late {
                eprintln!("iosvctl: note: {n}");
            }
        }
    }
    if let Some(report) = load_failure {
        eprintln!("iosvctl: {report}");
    }
    Ok(outcome)
}
