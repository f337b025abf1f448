//! Scenarios: TOML scripts that drive the host — exact sequences of driver loads, device
//! PnP, maps and unmaps at chosen IRQLs and threads, bug injections and configuration
//! changes, and concurrent stress phases on real OS threads. The format is documented in
//! `docs/scenarios.md`; examples ship in `examples/`.
//!
//! [`Scenario::parse`] checks everything it can before anything runs — unknown keys,
//! values out of range, names that no declaration defines, fields that do not apply to a
//! step's `op` — and reports the first problem as `file:line:col: what is wrong`
//! ([`ScenarioError`]). [`run`] executes a scenario against a [`Host`]; a step that fails
//! at run time is reported the same way, at the step.
//!
//! [`run`] returns a [`RunSummary`] that says exactly which bugs the run injected (per
//! rule and per blamed driver), so a caller can compare them with what iosv reported
//! ([`Host::audit`]).

mod image;
mod parse;
mod run;

pub use image::ImageDriver;
pub use parse::parse_hex;
pub use run::{run, run_with_images};

use super::{Host, Injected};
use crate::Behaviour;
use iosv::config::StartParams;
use iosv::rules::{Action, RuleId, RULE_COUNT};
use std::fmt;
use std::string::String;
use std::time::Duration;
use std::vec::Vec;

/// A scenario that failed to parse or a step that failed to run, with its place in the
/// scenario file. Displays as `file:line:col: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file (or other origin) of the scenario.
    pub origin: String,
    /// 1-based line (0 when the error is not about a place in the text).
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.origin, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ScenarioError {}

/// A place in a scenario file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// Progress of a [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done: steps, or during a stress phase its operations (or milliseconds, for a
    /// phase bounded by time).
    pub done: u64,
    /// Units in total.
    pub total: u64,
    /// What runs now (`"step 3/12: start nic0"`, `"stress: 2 threads"`).
    pub phase: String,
}

/// What a stress phase did.
#[derive(Debug, Clone, PartialEq)]
pub struct StressSummary {
    /// Where the phase is in the scenario.
    pub location: Location,
    /// OS threads.
    pub threads: u32,
    /// Operations executed (I/O operations, PnP operations, bug injections).
    pub operations: u64,
    /// Wall time.
    pub duration: Duration,
    /// The seed used.
    pub seed: u64,
    /// Drivers the phase used, the clones it loaded included.
    pub drivers: Vec<String>,
    /// Bugs injected during the phase (what iosv must report).
    pub injected: Injected,
}

/// What a [`run`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The scenario's name.
    pub name: String,
    /// Steps executed.
    pub steps: u64,
    /// Driver operations executed: scripted maps and unmaps, I/O operations, PnP
    /// operations and bug injections (stress phases included).
    pub operations: u64,
    /// Bugs injected during the run, per rule and blamed driver: the violations iosv is
    /// expected to report (see [`Injected`]).
    pub expected: Injected,
    /// Wall time of the run.
    pub duration: Duration,
    /// One summary per stress phase.
    pub stress: Vec<StressSummary>,
    /// Corruptions the simulated Mm recorded during the run (uncontained bad unmaps).
    pub corruptions: u64,
    /// Every driver's live mappings and bytes before the first step and after each.
    pub timeline: crate::timeline::Timeline,
    /// Image drivers (`image = "x.sys"`) without `expect`: what they do is not known in
    /// advance, so their reports are shown but not audited (see
    /// [`RunSummary::exclude_unaudited`]). Image drivers with `expect` have it in
    /// [`RunSummary::expected`].
    pub unaudited_drivers: Vec<String>,
}

impl RunSummary {
    /// Expected violations per rule, indexed by rule number - 1.
    pub fn expected_per_rule(&self) -> [u64; RULE_COUNT] {
        let mut out = [0u64; RULE_COUNT];
        for ((rule, _), n) in &self.expected {
            if let Some(slot) = out.get_mut(rule.index()) {
                *slot = slot.saturating_add(*n);
            }
        }
        out
    }

    /// Expected violations in total.
    pub fn expected_total(&self) -> u64 {
        self.expected
            .values()
            .fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// Removes from `audit` the count mismatches of [`RunSummary::unaudited_drivers`]:
    /// a compiled driver whose scenario states no `expect` has no predicted counts.
    pub fn exclude_unaudited(&self, audit: &mut crate::Audit) {
        audit.mismatches.retain(|m| {
            !self
                .unaudited_drivers
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&m.driver))
        });
    }
}

/// A configuration change (the `[config]` table or a `config` step).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConfigChange {
    pub(crate) targets: Option<Vec<String>>,
    pub(crate) add_targets: Vec<String>,
    pub(crate) containment: Option<bool>,
    pub(crate) verifier_irql: Option<bool>,
    pub(crate) stack_depth: Option<u32>,
    pub(crate) actions: Vec<(Option<RuleId>, Action)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DriverDecl {
    pub(crate) name: String,
    pub(crate) behaviour: Behaviour,
    pub(crate) bug_every: u64,
    pub(crate) target: bool,
    /// A compiled driver image instead of a simulated driver.
    pub(crate) image: Option<ImageDecl>,
}

/// A `[[driver]]` with `image = "path.sys"`: a compiled driver run by an [`ImageDriver`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageDecl {
    /// The image file, resolved against the scenario file's directory.
    pub(crate) path: std::path::PathBuf,
    /// `expect = { IOSV007 = 2 }`: the violations the driver is expected to commit in the
    /// whole run; `None`: not audited.
    pub(crate) expect: Option<Vec<(RuleId, u64)>>,
    /// `ioctls = [...]`: what a stress phase sends the driver's devices, in turn.
    pub(crate) ioctls: Vec<IoctlDecl>,
    /// `registry = ["KEY\\NAME=TYPE:DATA", ...]`: the values its registry holds before
    /// DriverEntry, as `iosvctl run --registry` gives them.
    pub(crate) registry: Vec<crate::regspec::RegistrySpec>,
    /// Where the `image` key's value is, for errors about the image as a whole.
    pub(crate) location: Location,
}

/// One device I/O control request: code and input bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoctlDecl {
    /// The control code.
    pub code: u32,
    /// The input buffer.
    pub input: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceDecl {
    pub(crate) name: String,
    pub(crate) driver: String,
    pub(crate) bars: Option<Vec<crate::Bar>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum UnmapTarget {
    Named { mapping: String, offset: u64 },
    Address(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Limit {
    Ops(u64),
    Millis(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StressSpec {
    pub(crate) threads: u32,
    pub(crate) limit: Limit,
    pub(crate) seed: Option<u64>,
    pub(crate) drivers: Vec<String>,
    pub(crate) inject: Vec<(RuleId, f64)>,
    /// Operations on the image drivers of the phase (`image_ops`; `None`: 100 for a
    /// phase bounded by `ops`, until the deadline for one bounded by `duration_ms`).
    pub(crate) image_ops: Option<u64>,
    /// Every this many image operations one is a stop and start of a device instead of
    /// an IOCTL (`image_restart_every`; 0: never).
    pub(crate) image_restart_every: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StepKind {
    Load(String),
    Unload(String),
    Attach(String),
    Detach(String),
    AddDevice(String),
    Start {
        device: String,
        complete: bool,
    },
    CompleteStart(String),
    Stop(String),
    SurpriseRemove(String),
    Remove(String),
    Io {
        device: String,
        count: u64,
    },
    Ioctl {
        device: String,
        request: IoctlDecl,
        count: u64,
    },
    /// IOCTLs to the device an image driver created in DriverEntry (a legacy driver).
    ControlIoctl {
        driver: String,
        request: IoctlDecl,
        count: u64,
    },
    Map {
        driver: String,
        physical: u64,
        size: u64,
        cache: u32,
        ex: bool,
        irql: u8,
        name: Option<String>,
        routine: crate::Routine,
    },
    Unmap {
        driver: String,
        target: UnmapTarget,
        size: Option<u64>,
        irql: u8,
        bypass: bool,
        routine: crate::Routine,
    },
    Bug {
        rule: RuleId,
        driver: String,
        device: Option<String>,
        foreign: Option<String>,
        count: u64,
    },
    Config(ConfigChange),
    MmFail(u64),
    Clear(u32),
    Stress(StressSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub(crate) location: Location,
    pub(crate) op: &'static str,
    pub(crate) thread: u32,
    pub(crate) kind: StepKind,
}

/// A parsed, checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub(crate) origin: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) seed: u64,
    pub(crate) params: Option<StartParams>,
    pub(crate) config: ConfigChange,
    pub(crate) drivers: Vec<DriverDecl>,
    pub(crate) devices: Vec<DeviceDecl>,
    pub(crate) steps: Vec<Step>,
}

/// Largest scenario file [`read_file`] accepts (16 MiB: some 200 000 steps).
pub const MAX_SCENARIO_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a scenario file: only a regular file (not a FIFO, a device such as `/dev/zero`, or
/// a directory, which could block or never end) of at most [`MAX_SCENARIO_BYTES`], in
/// UTF-8. Every refusal is a [`ScenarioError`] naming the file.
pub fn read_file(path: &std::path::Path) -> Result<String, ScenarioError> {
    use std::io::Read;
    let origin = path.display().to_string();
    let fail = |message: String| ScenarioError {
        origin: origin.clone(),
        line: 0,
        column: 0,
        message,
    };
    let not_regular = |meta: &std::fs::Metadata| {
        fail(std::format!(
            "cannot read the scenario: not a regular file (a {}); give a .toml file",
            if meta.is_dir() {
                "directory"
            } else {
                "FIFO, socket or device"
            }
        ))
    };
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    let meta =
        std::fs::metadata(path).map_err(|e| fail(std::format!("cannot read the scenario: {e}")))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| fail(std::format!("cannot read the scenario: {e}")))?;
    // And again on what was opened, in case the path changed in between.
    let meta = file
        .metadata()
        .map_err(|e| fail(std::format!("cannot read the scenario: {e}")))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let too_large = || {
        fail(std::format!(
            "the scenario is larger than the {MAX_SCENARIO_BYTES}-byte limit ({} MiB)",
            MAX_SCENARIO_BYTES / (1024 * 1024)
        ))
    };
    if meta.len() > MAX_SCENARIO_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_SCENARIO_BYTES.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| fail(std::format!("cannot read the scenario: {e}")))?;
    if bytes.len() as u64 > MAX_SCENARIO_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| fail(std::format!("the scenario is not UTF-8 text: {e}")))
}

/// The scenario `iosvctl lab` runs by default (`examples/lab.toml`).
const BUILTIN_DEFAULT: &str = include_str!("../../examples/lab.toml");

impl Scenario {
    /// Reads and parses the scenario file at `path` (see [`read_file`] for what is
    /// refused).
    pub fn from_file(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let text = read_file(path)?;
        Scenario::parse_in(
            &text,
            &path.display().to_string(),
            path.parent().unwrap_or(std::path::Path::new("")),
        )
    }

    /// Parses scenario `text`; `origin` names it in errors (usually the file path).
    /// Relative `image` paths are resolved against the current directory.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        parse::parse(text, origin, std::path::Path::new(""))
    }

    /// [`Scenario::parse`] resolving relative `image` paths against `dir` (the directory
    /// of the scenario file).
    pub fn parse_in(
        text: &str,
        origin: &str,
        dir: &std::path::Path,
    ) -> Result<Scenario, ScenarioError> {
        parse::parse(text, origin, dir)
    }

    /// The realistic default mixed workload `iosvctl lab` runs: a NIC, a GPU, a storage
    /// controller and a sensor hub with devices started, stopped, surprise-removed and
    /// removed, a few thousand well-behaved operations on 2 threads, and at least one
    /// instance of every rule's bug.
    pub fn builtin_default() -> Scenario {
        // The text is part of the crate and a unit test parses it; an empty scenario
        // named after the error would only appear if that test had been ignored.
        Scenario::parse(BUILTIN_DEFAULT, "builtin:lab.toml").unwrap_or_else(|e| Scenario {
            origin: String::from("builtin:lab.toml"),
            name: std::format!("broken builtin scenario: {e}"),
            description: String::new(),
            seed: 0,
            params: None,
            config: ConfigChange::default(),
            drivers: Vec::new(),
            devices: Vec::new(),
            steps: Vec::new(),
        })
    }

    /// The scenario's name (its `name` key, or the origin).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its description.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Where it came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// The default seed of its stress phases.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Steps in the scenario.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }
    /// The compiled driver images the scenario names (`[[driver]]` with `image`): driver
    /// name and file. Such a scenario runs with an [`ImageDriver`]
    /// ([`run_with_images`]); `iosvctl lab` runs it in a child process.
    pub fn images(&self) -> Vec<(&str, &std::path::Path)> {
        self.drivers
            .iter()
            .filter_map(|d| {
                d.image
                    .as_ref()
                    .map(|i| (d.name.as_str(), i.path.as_path()))
            })
            .collect()
    }
    /// Checks that every compiled driver image the scenario names is a file, as the last
    /// check before a run: parsing does not look (a scenario may name a build product
    /// not built yet).
    ///
    /// # Errors
    /// The first missing image, at its `image` key.
    pub fn check_images(&self) -> Result<(), ScenarioError> {
        for d in &self.drivers {
            let Some(i) = &d.image else { continue };
            if !i.path.is_file() {
                return Err(ScenarioError {
                    origin: self.origin.clone(),
                    line: i.location.line,
                    column: i.location.column,
                    message: std::format!(
                        "no driver image at `{}` (a relative path is relative to the scenario file)",
                        i.path.display()
                    ),
                });
            }
        }
        Ok(())
    }
    /// True if the scenario has a stress phase.
    pub fn has_stress(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Stress(_)))
    }
    /// True if the scenario has raw `map` or `unmap` steps or `clear` steps: misuse they
    /// script is reported by iosv but not counted as injected, and cleared records are
    /// not read back, so the audit's per-rule counts can differ from the injected ones
    /// without anything being wrong.
    pub fn scripts_misuse(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                s.kind,
                StepKind::Map { .. } | StepKind::Unmap { .. } | StepKind::Clear(_)
            )
        })
    }
    /// True unless the scenario turns containment off (in `[config]` or a `config` step):
    /// then uncontained bad unmaps reach the simulated Mm by design.
    pub fn keeps_containment(&self) -> bool {
        self.config.containment != Some(false)
            && !self
                .steps
                .iter()
                .any(|s| matches!(&s.kind, StepKind::Config(c) if c.containment == Some(false)))
    }
    /// The start parameters its `[host]` table asks for (defaults where it is silent).
    pub fn start_params(&self) -> StartParams {
        self.params.unwrap_or_default()
    }
    /// A host built with [`Scenario::start_params`].
    pub fn new_host(&self) -> Result<Host, super::HostError> {
        Host::try_new(self.start_params())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: `/dev/zero` grew without bound and a FIFO blocked forever.
    #[cfg(unix)]
    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(std::format!("iosv-scn-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        for p in ["/dev/zero", "/dev/null"] {
            let e = read_file(std::path::Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let e = read_file(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file (a directory)"), "{e}");
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_file(&fifo).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let big = dir.join("big.toml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_SCENARIO_BYTES + 1).unwrap();
        let e = read_file(&big).unwrap_err().to_string();
        assert!(e.contains("larger than the"), "{e}");
        let ok = dir.join("ok.toml");
        std::fs::write(&ok, "name = \"x\"\n").unwrap();
        assert_eq!(Scenario::from_file(&ok).unwrap().name(), "x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn builtin_default_parses() {
        let s = Scenario::parse(BUILTIN_DEFAULT, "lab.toml").unwrap();
        assert!(s.has_stress());
        assert!(s.drivers.len() >= 4);
    }
}
