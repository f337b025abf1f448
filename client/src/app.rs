//! What each `iosvctl` command does, and its exit status: [`Outcome::Clean`] (0),
//! [`Outcome::Violations`] (1: a violation at or above `--fail-on`), an [`AppError`]
//! (2: usage, input, endpoint or I/O error — never a panic), [`Outcome::RecordsLost`]
//! (3: records were lost, the results are incomplete) or [`Outcome::AuditUnclean`] (4:
//! `lab` only, iosv's reports differ from what the run did); `run` adds 5 (the driver
//! crashed), 6 (it called a routine the host lacks), 7 (it hung) and 8 (the image did
//! not load). The codes are listed once,
//! in `iosvctl --help` ([`crate::cli`]) and the README.

use crate::cli::*;
use crate::client::{Client, ClientError, MappingFilter, VIOLATIONS_PER_CALL};
use crate::model::{self, Images, Violation};
use crate::output::{human, json, junit, sarif, Format, Tally};
use crate::transport::{Endpoint, Transport, TransportError};
use iosv::protocol::{ViolationRecord, CLR_ALL, CLR_GRAVEYARD, CLR_JOURNAL, CLR_STATS};
use iosv::rules::Severity;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How a command ended, when it did not fail. When several apply, the one with the
/// highest [`Outcome::exit_code`] other than 1 wins over 1: an unclean audit over lost
/// records over violations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing at or above `--fail-on` (exit 0).
    Clean,
    /// A violation at or above `--fail-on` (exit 1).
    Violations,
    /// Violation records were lost to journal overflow: the results are incomplete,
    /// whatever they say (exit 3).
    RecordsLost,
    /// `lab`: the audit found iosv's reports or live table differ from what the run did
    /// (exit 4).
    AuditUnclean,
    /// `run`: driver code crashed or bug-checked (exit 5).
    DriverCrashed,
    /// `run`: the driver called a routine the host does not implement (exit 6).
    Unimplemented,
    /// `run`: a driver routine did not return within the watchdog's time (exit 7).
    DriverHung,
    /// `run`: the image could not be loaded (exit 8).
    LoadFailed,
}

impl Outcome {
    /// The process exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Clean => 0,
            Outcome::Violations => 1,
            Outcome::RecordsLost => 3,
            Outcome::AuditUnclean => 4,
            Outcome::DriverCrashed => 5,
            Outcome::Unimplemented => 6,
            Outcome::DriverHung => 7,
            Outcome::LoadFailed => 8,
        }
    }
}

/// Set when a write to stdout failed because its reader went away (`iosvctl ... | head`):
/// [`main`] then ends the process by SIGPIPE, as `cat` or `grep` do.
static BROKEN_PIPE: AtomicBool = AtomicBool::new(false);

/// A command failed (exit 2). The text is the whole message.
#[derive(Debug)]
pub struct AppError(pub String);

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AppError {}

impl From<ClientError> for AppError {
    fn from(e: ClientError) -> Self {
        AppError(e.to_string())
    }
}

impl From<TransportError> for AppError {
    fn from(e: TransportError) -> Self {
        AppError(e.to_string())
    }
}

impl From<io::Error> for AppError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            // The reader went away (`| head`): stop quietly (see `main`).
            BROKEN_PIPE.store(true, Ordering::SeqCst);
            AppError(String::new())
        } else {
            AppError(format!("cannot write output: {e}"))
        }
    }
}

/// Result of a command.
pub type AppResult<T = Outcome> = Result<T, AppError>;

/// Set by Ctrl-C (and SIGTERM): follow loops and the host endpoint stop.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C / SIGTERM handler that sets [`STOP`] (once per process).
pub fn install_stop_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Failing to install it only means Ctrl-C kills the process the default way.
        let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    });
}

/// Runs the command line and turns its outcome into the exit status.
pub fn main(cli: Cli) -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let r = run(&cli, &mut out);
    let _ = out.flush();
    if BROKEN_PIPE.load(Ordering::SeqCst) {
        die_of_sigpipe();
    }
    match r {
        Ok(o) => ExitCode::from(o.exit_code()),
        Err(e) => {
            if !e.0.is_empty() {
                eprintln!("iosvctl: error: {e}");
            }
            ExitCode::from(2)
        }
    }
}

/// Ends the process the way a Unix filter ends when its reader goes away: by SIGPIPE (the
/// shell shows status 141). Rust ignores SIGPIPE so that sockets report EPIPE; the default
/// action is restored only here, at the very end. Elsewhere: exit status 2, quietly.
fn die_of_sigpipe() -> ! {
    #[cfg(unix)]
    {
        // SAFETY: signal() with SIG_DFL for SIGPIPE installs no handler code; no other
        // thread relies on SIGPIPE being ignored this late (the process is ending).
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        // SAFETY: raise() has no preconditions; with the default action the process ends.
        unsafe {
            libc::raise(libc::SIGPIPE);
        }
    }
    std::process::exit(2)
}

/// Runs one command, writing results to `out` (messages for people go to stderr).
pub fn run(cli: &Cli, out: &mut dyn Write) -> AppResult {
    let g = &cli.global;
    match &cli.command {
        Command::Rules => rules(g, out),
        Command::Inf(a) => inf(a, out),
        #[cfg(feature = "host")]
        Command::Lab(a) => lab::lab(g, a, out),
        #[cfg(feature = "host")]
        Command::Host(HostCommand::Serve(a)) => lab::serve(g, a, out),
        #[cfg(feature = "host")]
        Command::Run(a) => run::run(g, a, out),
        _ => {
            let mut c = open(g)?;
            run_with(cli, &mut c, out)
        }
    }
}

/// Runs a command that talks to an endpoint over `c`.
pub fn run_with<T: Transport>(cli: &Cli, c: &mut Client<T>, out: &mut dyn Write) -> AppResult {
    let g = &cli.global;
    match &cli.command {
        Command::Rules => rules(g, out),
        Command::Status => status(g, c, out),
        Command::Violations(a) => violations(g, a, c, out),
        Command::Mappings(a) => mappings(g, a, c, out),
        Command::Config(cmd) => config(g, cmd, c, out),
        Command::Attach(d) => attach(g, &d.name, true, c, out),
        Command::Detach(d) => attach(g, &d.name, false, c, out),
        Command::Clear(a) => clear(g, a, c, out),
        Command::Inf(a) => inf(a, out),
        #[cfg(feature = "host")]
        Command::Lab(_) | Command::Host(_) | Command::Run(_) => Err(AppError(
            "`lab`, `run` and `host` run a host of their own; they take no endpoint".to_string(),
        )),
    }
}

/// `inf`: renders iosv.inf for the named devices and targets.
fn inf(a: &InfArgs, out: &mut dyn Write) -> AppResult {
    let text = crate::inf::render(crate::inf::TEMPLATE, &a.hwids, &a.targets)
        .map_err(|e| AppError(e.to_string()))?;
    match &a.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| AppError(format!("cannot write {}: {e}", path.display())))?,
        None => out.write_all(text.as_bytes())?,
    }
    Ok(Outcome::Clean)
}

/// The endpoint the global options select.
pub fn endpoint(g: &Global) -> Endpoint {
    if g.device {
        Endpoint::Device
    } else if let Some(p) = &g.host {
        Endpoint::Socket(p.clone())
    } else {
        Endpoint::default_for_os()
    }
}

fn open(g: &Global) -> AppResult<Client<Box<dyn Transport>>> {
    let timeout = (g.timeout > 0).then(|| Duration::from_secs(g.timeout));
    let t = endpoint(g).open(timeout, g.allow_other_user)?;
    Ok(Client::connect(t)?)
}

/// Refuses SARIF and JUnit for commands that have no violations to report.
fn tabular_only(g: &Global, command: &str) -> AppResult<()> {
    match g.format {
        Format::Human | Format::Json => Ok(()),
        f => Err(AppError(format!(
            "--format {} is for `violations` and `lab`; `{command}` prints human or json",
            match f {
                Format::Sarif => "sarif",
                _ => "junit",
            }
        ))),
    }
}

fn line(out: &mut dyn Write, v: &serde_json::Value) -> AppResult<()> {
    writeln!(out, "{v}")?;
    Ok(())
}

fn rules(g: &Global, out: &mut dyn Write) -> AppResult {
    tabular_only(g, "rules")?;
    match g.format {
        Format::Json => {
            for r in json::rules() {
                line(out, &r)?;
            }
        }
        _ => write!(out, "{}", human::rules(g.verbose > 0))?,
    }
    Ok(Outcome::Clean)
}

fn status<T: Transport>(g: &Global, c: &mut Client<T>, out: &mut dyn Write) -> AppResult {
    tabular_only(g, "status")?;
    let stats = c.stats()?;
    let endpoint = c.describe();
    match g.format {
        Format::Json => line(out, &json::status(&endpoint, c.hello(), &stats))?,
        _ => write!(out, "{}", human::status(&endpoint, c.hello(), &stats))?,
    }
    Ok(Outcome::Clean)
}

/// Where violations go as they are read: printed at once (human, JSON) or gathered for
/// one document at the end (SARIF, JUnit). Also counts them for the summary and the exit
/// status.
pub struct ViolationSink<'a> {
    format: Format,
    verbose: bool,
    fail_on: Severity,
    out: &'a mut dyn Write,
    images: Images,
    /// Counts for the summary.
    pub tally: Tally,
    /// Records kept for SARIF/JUnit.
    pub kept: Vec<ViolationRecord>,
    /// Lost records seen.
    pub lost: u64,
    /// Discarded records seen.
    pub discarded: u64,
    header_done: bool,
}

impl<'a> ViolationSink<'a> {
    /// A sink printing to `out`.
    pub fn new(g: &Global, out: &'a mut dyn Write, images: Images) -> ViolationSink<'a> {
        ViolationSink {
            format: g.format,
            verbose: g.verbose > 0,
            fail_on: g.fail_on.severity(),
            out,
            images,
            tally: Tally::default(),
            kept: Vec::new(),
            lost: 0,
            discarded: 0,
            header_done: false,
        }
    }

    /// Replaces the images used to symbolize stacks (drivers loaded since).
    pub fn set_images(&mut self, images: Images) {
        self.images = images;
    }

    /// One violation.
    pub fn record(&mut self, rec: &ViolationRecord) -> AppResult<()> {
        let v = Violation::new(rec);
        self.tally.add(&v);
        match self.format {
            Format::Human => {
                if !self.header_done {
                    writeln!(self.out, "{}", human::violation_header())?;
                    self.header_done = true;
                }
                write!(
                    self.out,
                    "{}",
                    human::violation(&v, self.verbose, &self.images)
                )?;
                self.out.flush()?;
            }
            Format::Json => {
                writeln!(self.out, "{}", json::violation(&v, &self.images))?;
                self.out.flush()?;
            }
            Format::Sarif | Format::Junit => self.kept.push(*rec),
        }
        Ok(())
    }

    /// Records between two cursors that could not be read.
    pub fn gap(&mut self, from: u64, to: u64, lost: u64, discarded: u64) -> AppResult<()> {
        self.lost += lost;
        self.discarded += discarded;
        if lost > 0 {
            eprintln!("iosvctl: warning: {lost} violation records lost to journal overflow between cursors {from} and {to}");
        }
        if self.format == Format::Json {
            writeln!(self.out, "{}", json::gap(from, to, lost, discarded))?;
        }
        Ok(())
    }

    /// Violations at or above `--fail-on` so far.
    pub fn failing(&self) -> u64 {
        self.tally.at_least(self.fail_on)
    }

    /// The outcome so far: [`Outcome::AuditUnclean`] when `run_problem`, else
    /// [`Outcome::RecordsLost`] if records were lost, else by `--fail-on`.
    pub fn outcome(&self, run_problem: bool) -> Outcome {
        if run_problem {
            Outcome::AuditUnclean
        } else if self.lost > 0 {
            Outcome::RecordsLost
        } else if self.failing() > 0 {
            Outcome::Violations
        } else {
            Outcome::Clean
        }
    }

    /// Prints the end: the human summary, the JSON end line, or the SARIF/JUnit document.
    /// `info.problems` (an unclean lab audit) make the outcome [`Outcome::AuditUnclean`].
    pub fn finish(&mut self, info: &sarif::RunInfo, drivers: &[String]) -> AppResult {
        let outcome = self.outcome(!info.problems.is_empty());
        match self.format {
            Format::Human => {
                if self.tally.total > 0 {
                    writeln!(self.out)?;
                }
                write!(
                    self.out,
                    "{}",
                    human::summary(&self.tally, self.lost, self.discarded)
                )?;
                writeln!(self.out, "next cursor: {}", info.next_cursor)?;
            }
            Format::Json => writeln!(
                self.out,
                "{}",
                json::end(
                    info.next_cursor,
                    self.tally.total,
                    self.lost,
                    self.discarded,
                    self.failing()
                )
            )?,
            Format::Sarif => {
                let mut info = info.clone();
                info.lost = self.lost;
                info.discarded = self.discarded;
                info.exit_code = outcome.exit_code();
                writeln!(
                    self.out,
                    "{:#}",
                    sarif::log(&self.kept, &self.images, &info)
                )?;
            }
            Format::Junit => {
                let mut checks = vec![junit::RunCheck {
                    name: "journal: no violation record lost".to_string(),
                    problem: (self.lost > 0).then(|| {
                        format!(
                            "{} violation records were lost to journal overflow: the results are incomplete",
                            self.lost
                        )
                    }),
                }];
                if info.audited {
                    checks.push(junit::RunCheck {
                        name: "lab audit: reports match what the run did".to_string(),
                        problem: (!info.problems.is_empty()).then(|| info.problems.join("; ")),
                    });
                }
                write!(self.out, "{}", junit::report(&self.kept, drivers, &checks))?
            }
        }
        self.out.flush()?;
        if self.lost > 0 && self.format != Format::Human {
            eprintln!(
                "iosvctl: error: {} violation records were lost: the results are incomplete (exit 3)",
                self.lost
            );
        }
        Ok(outcome)
    }
}

/// What to read and when to stop.
#[derive(Debug, Clone, Default)]
pub struct ReadPlan {
    /// First cursor.
    pub since: u64,
    /// Stop after this many (matching) violations.
    pub max: Option<u64>,
    /// Keep polling once caught up.
    pub follow: bool,
    /// Poll interval when caught up.
    pub interval: Duration,
    /// Stop at this instant.
    pub deadline: Option<Instant>,
    /// Only these rules (empty: all).
    pub rules: Vec<iosv::rules::RuleId>,
    /// Only these blamed drivers (empty: all).
    pub drivers: Vec<String>,
}

impl ReadPlan {
    fn wants(&self, rec: &ViolationRecord) -> bool {
        let v = Violation::new(rec);
        (self.rules.is_empty() || v.rule().is_some_and(|r| self.rules.contains(&r)))
            && (self.drivers.is_empty()
                || v.driver()
                    .is_some_and(|d| self.drivers.iter().any(|x| x.eq_ignore_ascii_case(&d))))
    }

    fn expired(&self) -> bool {
        STOP.load(Ordering::SeqCst) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Reads violations per `plan` into `sink`; returns the cursor to continue from.
pub fn read_violations<T: Transport>(
    c: &mut Client<T>,
    plan: &ReadPlan,
    sink: &mut ViolationSink<'_>,
) -> AppResult<u64> {
    let mut cursor = plan.since;
    let mut matched = 0u64;
    let mut idle = 0u32;
    let mut last_images = Instant::now();
    loop {
        let want = match plan.max {
            Some(m) => u32::try_from(m.saturating_sub(matched))
                .unwrap_or(u32::MAX)
                .min(VIOLATIONS_PER_CALL),
            None => VIOLATIONS_PER_CALL,
        };
        if want == 0 {
            break;
        }
        let batch = c.read_violations(cursor, want)?;
        if batch.lost > 0 || batch.discarded > 0 {
            sink.gap(cursor, batch.next_cursor, batch.lost, batch.discarded)?;
        }
        let progressed = batch.next_cursor != cursor || !batch.records.is_empty();
        if !batch.records.is_empty()
            && plan.follow
            && last_images.elapsed() > Duration::from_secs(1)
        {
            // Drivers may have loaded since the stacks' images were read.
            sink.set_images(Images::from_stats(&c.stats()?.drivers));
            last_images = Instant::now();
        }
        for rec in &batch.records {
            if plan.wants(rec) {
                sink.record(rec)?;
                matched += 1;
                if plan.max.is_some_and(|m| matched >= m) {
                    return Ok(rec.seq.saturating_add(1));
                }
            }
        }
        cursor = batch.next_cursor;
        let caught_up = batch.records.is_empty() && cursor >= batch.tail;
        if progressed && !caught_up {
            idle = 0;
            if plan.follow && plan.expired() {
                break;
            }
            continue;
        }
        // Caught up, or a slot between cursor and tail is still being written.
        if !plan.follow {
            idle += 1;
            if caught_up || idle > 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if plan.expired() {
            break;
        }
        let until = Instant::now() + plan.interval;
        while Instant::now() < until && !plan.expired() {
            std::thread::sleep(Duration::from_millis(20).min(plan.interval));
        }
        if plan.expired() {
            // One last read so nothing written before the deadline is left behind.
            let batch = c.read_violations(cursor, VIOLATIONS_PER_CALL)?;
            for rec in batch.records.iter().filter(|r| plan.wants(r)) {
                sink.record(rec)?;
            }
            if batch.lost > 0 || batch.discarded > 0 {
                sink.gap(cursor, batch.next_cursor, batch.lost, batch.discarded)?;
            }
            cursor = batch.next_cursor;
            break;
        }
    }
    Ok(cursor)
}

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

fn driver_names(stats: &crate::client::Stats) -> Vec<String> {
    stats.drivers.iter().map(|d| model::name(&d.name)).collect()
}

fn violations<T: Transport>(
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
    };
    if plan.follow {
        install_stop_handler();
    }
    let stats = c.stats()?;
    let mut sink = ViolationSink::new(g, out, Images::from_stats(&stats.drivers));
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
    sink.finish(&info, &drivers)
}

fn mappings<T: Transport>(
    g: &Global,
    a: &MappingsArgs,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    tabular_only(g, "mappings")?;
    let stats = c.stats()?;
    let images = Images::from_stats(&stats.drivers);
    let base = MappingFilter {
        driver_id: None,
        device: a.device,
        min_age_ns: a
            .min_age
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    };
    let list = match &a.driver {
        None => c.list_mappings(&base)?,
        Some(name) => {
            let ids: Vec<u32> = stats
                .drivers
                .iter()
                .filter(|d| model::name(&d.name).eq_ignore_ascii_case(name))
                .map(|d| d.driver_id)
                .collect();
            if ids.is_empty() {
                let known = driver_names(&stats);
                return Err(AppError(format!(
                    "no driver named {name:?} is known to the endpoint (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            let mut all = crate::client::MappingList::default();
            for id in ids {
                let mut l = c.list_mappings(&MappingFilter {
                    driver_id: Some(id),
                    ..base
                })?;
                all.records.append(&mut l.records);
                all.now_ns = all.now_ns.max(l.now_ns);
                all.skipped += l.skipped;
            }
            all
        }
    };
    match g.format {
        Format::Json => {
            for m in &list.records {
                line(out, &json::mapping(m, &list, &images))?;
            }
        }
        _ => write!(out, "{}", human::mappings(&list, g.verbose > 0, &images))?,
    }
    Ok(Outcome::Clean)
}

/// Applies `settings` through SET_CONFIG (nothing when empty); returns the new block.
pub fn apply_settings<T: Transport>(
    c: &mut Client<T>,
    settings: &Settings,
) -> AppResult<iosv::protocol::ConfigBlock> {
    let mut block = c.get_config()?;
    if settings.is_empty() {
        return Ok(block);
    }
    settings.apply(&mut block).map_err(AppError)?;
    if block.stack_depth > c.hello().max_stack_depth {
        return Err(AppError(format!(
            "--stack-depth {} exceeds the endpoint's maximum of {}",
            block.stack_depth,
            c.hello().max_stack_depth
        )));
    }
    c.set_config(&block)?;
    Ok(c.get_config()?)
}

fn config<T: Transport>(
    g: &Global,
    cmd: &ConfigCommand,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    tabular_only(g, "config")?;
    let block = match cmd {
        ConfigCommand::Get => c.get_config()?,
        ConfigCommand::Set(s) => {
            if s.is_empty() {
                return Err(AppError(
                    "config set: nothing to change (see `iosvctl config set --help`)".to_string(),
                ));
            }
            apply_settings(c, s)?
        }
    };
    match g.format {
        Format::Json => line(out, &json::config(&block))?,
        _ => write!(out, "{}", human::config(&block))?,
    }
    Ok(Outcome::Clean)
}

fn attach<T: Transport>(
    g: &Global,
    name: &str,
    on: bool,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    tabular_only(g, if on { "attach" } else { "detach" })?;
    let result = if on { c.attach(name) } else { c.detach(name) };
    let slots = match result {
        Ok(slots) => slots,
        Err(ClientError::Status {
            status: iosv::protocol::Status::HookRefused,
            ..
        }) => {
            // Say why: the driver's entry in the status carries the refusal.
            let why = c
                .stats()
                .ok()
                .and_then(|s| {
                    s.drivers
                        .iter()
                        .find(|d| model::name(&d.name).eq_ignore_ascii_case(name))
                        .and_then(|d| model::hook_refusal(d.hook_refusal))
                })
                .unwrap_or("see iosvctl status");
            return Err(AppError(format!(
                "iosv refused to hook {name}: {why}; nothing was patched"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    match g.format {
        Format::Json => line(
            out,
            &serde_json::json!({ "kind": if on { "attach" } else { "detach" }, "driver": name, "slots": slots }),
        )?,
        _ => {
            if on {
                writeln!(out, "attached to {name}: {slots} import slots patched")?
            } else {
                writeln!(out, "detached from {name}: {slots} import slots restored")?
            }
        }
    }
    Ok(Outcome::Clean)
}

fn clear<T: Transport>(
    g: &Global,
    a: &ClearArgs,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    tabular_only(g, "clear")?;
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
        Format::Json => line(
            out,
            &serde_json::json!({ "kind": "clear", "cleared": names }),
        )?,
        _ => writeln!(out, "cleared {}", names.join(", "))?,
    }
    Ok(Outcome::Clean)
}

#[cfg(feature = "host")]
pub mod lab;
#[cfg(feature = "host")]
pub mod run;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Engine, EngineTransport};
    use clap::Parser;
    use std::sync::Arc;

    fn run_on(e: &Arc<Engine>, args: &[&str]) -> (AppResult, String) {
        let mut argv = vec!["iosvctl"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("args");
        let mut c = Client::connect(EngineTransport(e.clone())).expect("connect");
        let mut out = Vec::new();
        let r = run_with(&cli, &mut c, &mut out);
        (r, String::from_utf8(out).expect("utf-8"))
    }

    /// IOSV001 and IOSV004 by nic.sys, IOSV010 (a warning) by gpu.sys, IOSV002 at DIRQL 5.
    fn buggy() -> Arc<Engine> {
        let e = Engine::new();
        let b = e.nic_map(0xfe00_0000, 0x1000);
        e.unmap(false, b, 0x800);
        e.unmap(false, 0xdead_0000, 0x1000);
        e.nic_map(0xfc00_0000, 0x1000);
        e.map(true, 0xfc00_0000, 0x1000, 1);
        let b = e.nic_map(0xfb00_0000, 0x1000);
        e.set_irql(5);
        e.unmap(false, b, 0x1000);
        e.set_irql(0);
        e
    }

    fn json_lines(s: &str) -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

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
        let (_, out) = run_on(
            &e,
            &[
                "violations",
                "-f",
                "json",
                "--rule",
                "unmap-unknown",
                "--rule",
                "IOSV002",
            ],
        );
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
    fn sarif_names_rules_levels_and_locations() {
        let e = buggy();
        let (r, out) = run_on(&e, &["violations", "--format", "sarif"]);
        assert_eq!(r.unwrap(), Outcome::Violations);
        let log: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(log["version"], "2.1.0");
        let run = &log["runs"][0];
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), iosv::rules::RULE_COUNT);
        assert_eq!(rules[9]["id"], "IOSV010");
        assert_eq!(rules[9]["defaultConfiguration"]["level"], "warning");
        assert_eq!(rules[0]["helpUri"], iosv::rules::RULES[0].reference);
        let results = run["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[0]["ruleId"], "IOSV001");
        assert_eq!(results[0]["ruleIndex"], 0);
        assert_eq!(results[0]["level"], "error");
        assert_eq!(
            results[0]["locations"][0]["logicalLocations"][0]["name"],
            "nic.sys"
        );
        let text = results[0]["message"]["text"].as_str().unwrap();
        assert!(text.contains("0x800") && text.contains("0x1000"), "{text}");
    }

    #[test]
    fn junit_is_well_formed_with_a_case_per_rule_and_driver() {
        let e = buggy();
        let (r, out) = run_on(&e, &["violations", "--format", "junit"]);
        assert_eq!(r.unwrap(), Outcome::Violations);
        let doc = roxmltree::Document::parse(&out).expect("well-formed XML");
        let cases: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .filter(|n| n.attribute("classname") != Some("iosvctl.run"))
            .collect();
        assert_eq!(cases.len(), 2 * iosv::rules::RULE_COUNT);
        // The run's own check: nothing was lost.
        assert_eq!(doc.root_element().attribute("errors"), Some("0"));
        assert!(doc
            .descendants()
            .any(|n| n.attribute("classname") == Some("iosvctl.run")));
        let failed: Vec<String> = cases
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
            .map(|c| {
                format!(
                    "{} {}",
                    c.attribute("classname").unwrap(),
                    c.attribute("name").unwrap()
                )
            })
            .collect();
        assert_eq!(
            failed,
            [
                "iosv.gpu.sys IOSV010 cache-conflict",
                "iosv.nic.sys IOSV001 unmap-size-mismatch",
                "iosv.nic.sys IOSV002 unmap-irql",
                "iosv.nic.sys IOSV004 unmap-unknown",
            ]
        );
    }

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

    #[test]
    fn mappings_status_config_attach() {
        let e = Engine::new();
        e.nic_start(0xffffc000_00001000, 0xfe00_0000, 0x2000);
        e.map(true, 0xfd00_0000, 0x1000, 1);
        let (_, out) = run_on(&e, &["mappings"]);
        assert!(out.contains("2 live mappings, 0x3000 bytes"), "{out}");
        assert!(
            out.contains("0xffffc00000001000") && out.contains("MmCached"),
            "{out}"
        );
        let (_, out) = run_on(&e, &["mappings", "--driver", "NIC.sys", "-f", "json"]);
        let v = json_lines(&out);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0]["driver"].as_str(), v[0]["size"].as_u64()),
            (Some("nic.sys"), Some(0x2000))
        );
        assert_eq!(v[0]["stack"][0], "nic.sys+0x1a2b");
        let (_, out) = run_on(&e, &["mappings", "--device", "0xffffc00000001000", "-v"]);
        assert!(
            out.contains("1 live mapping,") && out.contains("#0  nic.sys+0x1a2b"),
            "{out}"
        );
        let (r, _) = run_on(&e, &["mappings", "--driver", "ghost.sys"]);
        assert!(r.unwrap_err().0.contains("known: nic.sys, gpu.sys"));

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

        let (r, out) = run_on(
            &e,
            &[
                "config",
                "set",
                "--action",
                "IOSV004=bugcheck",
                "--irql-mode",
                "verifier",
                "--containment",
                "off",
                "--stack-depth",
                "3",
                "--target",
                "nic.sys",
            ],
        );
        assert_eq!(r.unwrap(), Outcome::Clean);
        assert!(
            out.contains("containment   off")
                && out.contains("verifier")
                && out.contains("nic.sys"),
            "{out}"
        );
        let (_, out) = run_on(&e, &["config", "get", "-f", "json"]);
        let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(c["actions"]["IOSV004"], "bugcheck");
        assert_eq!(c["stack_depth"], 3);
        assert!(run_on(&e, &["config", "set"]).0.is_err());
        assert!(run_on(&e, &["config", "set", "--stack-depth", "99"])
            .0
            .unwrap_err()
            .0
            .contains("maximum"));

        let (_, out) = run_on(&e, &["attach", "nic.sys"]);
        assert_eq!(out.trim(), "attached to nic.sys: 3 import slots patched");
        let (r, _) = run_on(&e, &["detach", "other.sys"]);
        assert!(r.unwrap_err().0.contains("no loaded driver has that name"));
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

    #[test]
    fn follow_stops_at_its_deadline() {
        let e = buggy();
        let start = Instant::now();
        let (r, out) = run_on(
            &e,
            &[
                "violations",
                "-f",
                "json",
                "--duration",
                "300ms",
                "--interval",
                "50ms",
            ],
        );
        assert_eq!(r.unwrap(), Outcome::Violations);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            json_lines(&out)
                .iter()
                .filter(|o| o["kind"] == "violation")
                .count(),
            4
        );
    }
}
