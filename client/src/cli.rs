//! The `iosvctl` command line (clap): every command and flag, with the help text users
//! read. Ranges and defaults of the engine's sizes come from the engine ([`SizeParam`],
//! [`StartParams`], [`MAX_TARGETS`]), not copies. What each command does is in
//! [`crate::cmd`].

use crate::output::Format;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use iosv::config::{SizeParam, StartParams};
use iosv::protocol::{CF_CONTAINMENT, CF_VERIFIER_IRQL, MAX_TARGETS, NAME_LEN};
use iosv::rules::{Action, RuleId, Severity, RULE_COUNT};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

const AFTER_HELP: &str = "\
Endpoints:
  On Windows iosvctl opens the control device \\\\.\\IoSpaceVerifier (Administrators and
  SYSTEM only). Elsewhere it connects to a user-mode host (`iosvctl host serve`) at
  $XDG_RUNTIME_DIR/iosv.sock, or /tmp/iosv-$UID/iosv.sock (a directory of mode 0700
  that must belong to you) when XDG_RUNTIME_DIR is unset. --device and --host PATH
  choose explicitly. A host socket served by another user (not root) is refused unless
  --allow-other-user is given.

Exit status (the first that applies, top down):
  2  usage error, bad input (scenario file, sizes, --threads), unreachable or misbehaving
     endpoint, I/O error
  4  `lab`: the audit is unclean — iosv's reports or live table differ from what the run
     did; `run`: the live table differs from the simulated Mm or the Mm was corrupted
     (SARIF: executionSuccessful false; JUnit: an error in suite iosvctl)
  3  violation records were lost to journal overflow: the results are incomplete (SARIF:
     executionSuccessful false; JUnit: an error in suite iosvctl)
  1  `violations`, `lab` or `run` saw a violation at or above --fail-on
  0  otherwise: success
  `run` only, instead of a report: 5 the driver crashed (or bug-checked), 6 it called a
  routine the host does not implement, 7 a driver routine hung (watchdog), 8 the image
  could not be loaded (8 also when its DriverEntry failed: `run`, and `lab` with an
  image, print the reports collected up to it first); 2 also when the platform cannot
  run driver code (x86-64 Linux only)
  When the reader of stdout goes away (`iosvctl ... | head`), iosvctl ends by SIGPIPE,
  as other filters do.";

/// `iosvctl`: the client of the iosv I/O-space mapping verifier.
#[derive(Debug, Parser)]
#[command(
    name = "iosvctl",
    version,
    about = "Pull I/O-space mapping violations, live mappings and statistics from iosv, or run its user-mode host",
    long_about = "iosvctl talks to iosv, the verifier of MmMapIoSpace / MmMapIoSpaceEx / MmUnmapIoSpace \
                  use by Windows kernel drivers: it reads violation reports and live mappings, shows \
                  statistics, changes the configuration, attaches to drivers, and runs the user-mode \
                  host for lab runs without a Windows test machine.",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Talk to the Windows control device \\.\IoSpaceVerifier (the default on Windows).
    /// Give it before the command (`iosvctl --device status`): after `mappings`, --device
    /// filters by device object.
    #[arg(long, conflicts_with = "host", help_heading = "Global options")]
    pub device: bool,

    /// Talk to the host endpoint listening on the Unix socket PATH (the default off Windows:
    /// $XDG_RUNTIME_DIR/iosv.sock, else /tmp/iosv-$UID/iosv.sock).
    #[arg(
        long,
        value_name = "PATH",
        global = true,
        help_heading = "Global options"
    )]
    pub host: Option<PathBuf>,

    /// Output format: human tables, JSON lines, a SARIF 2.1.0 log, a JUnit XML report or
    /// a self-contained HTML report (sarif and junit only for `violations` and `lab`, html
    /// only for `lab`; `iosvctl report --html` makes it from saved JSON lines).
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Human, global = true, help_heading = "Global options")]
    pub format: Format,

    /// `violations` and `lab` exit 1 when they see a violation of at least this severity.
    #[arg(long, value_enum, value_name = "SEVERITY", default_value_t = FailOn::Error, global = true, help_heading = "Global options")]
    pub fail_on: FailOn,

    /// More detail: each violation's message, context and stacks; each mapping's stack.
    #[arg(short, long, action = ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,

    /// Trust a host socket served by another user. Without it iosvctl checks the server's
    /// user id (SO_PEERCRED) and refuses any but yours and root's.
    #[arg(long, global = true, help_heading = "Global options")]
    pub allow_other_user: bool,

    /// Symbolize stack frames with the PDBs in these local directories (`;`-separated;
    /// each searched as a symbol store, DIR/name.pdb/GUIDAGE/name.pdb, then flat), each
    /// PDB matched by the image's CodeView GUID and age. Without it, the local parts of
    /// _NT_SYMBOL_PATH (plain directories, srv*CACHE*…, cache*CACHE) are used. The network
    /// is never used.
    #[arg(
        long,
        value_name = "DIR[;DIR...]",
        global = true,
        help_heading = "Global options"
    )]
    pub symbols: Option<String>,

    /// The symbolizer made from --symbols / _NT_SYMBOL_PATH, once per run.
    #[arg(skip)]
    pub symbolizer: std::sync::OnceLock<Option<std::sync::Arc<crate::symbols::Symbolizer>>>,

    /// Seconds to wait for each reply of a host socket before giving up (0 waits forever).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        global = true,
        help_heading = "Global options"
    )]
    pub timeout: u64,
}

impl Global {
    /// The symbolizer of `--symbols` (else `_NT_SYMBOL_PATH`'s local directories), or
    /// `None` when neither names one. Skipped `_NT_SYMBOL_PATH` elements (network
    /// locations, missing directories) are said once on stderr.
    ///
    /// # Errors
    ///
    /// A `--symbols` element that is not an existing local directory.
    pub fn symbolizer(
        &self,
    ) -> Result<Option<std::sync::Arc<crate::symbols::Symbolizer>>, crate::symbols::SymbolPathError>
    {
        if let Some(s) = self.symbolizer.get() {
            return Ok(s.clone());
        }
        let path = crate::symbols::SymbolPath::resolve(self.symbols.as_deref())?;
        if let Some(p) = &path {
            for skipped in &p.skipped {
                eprintln!("iosvctl: symbols: skipped {skipped}");
            }
        }
        let s = path
            .filter(|p| !p.dirs.is_empty())
            .map(|p| std::sync::Arc::new(crate::symbols::Symbolizer::new(p)));
        Ok(self.symbolizer.get_or_init(|| s).clone())
    }
}

/// Severity threshold of `--fail-on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    /// Fail on any violation.
    Note,
    /// Fail on warnings and errors.
    Warning,
    /// Fail on errors only.
    Error,
}

impl FailOn {
    /// The severity.
    pub fn severity(self) -> Severity {
        match self {
            FailOn::Note => Severity::Note,
            FailOn::Warning => Severity::Warning,
            FailOn::Error => Severity::Error,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the endpoint's version, capabilities, limits, counters and per-driver statistics.
    Status,
    /// Print violation reports after a cursor; --follow keeps pulling new ones.
    Violations(ViolationsArgs),
    /// List live mappings (the leak view): age, size, physical address, cache type, stack.
    Mappings(MappingsArgs),
    /// Show or change the run-time configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Attach to an already loaded driver (patch its imports) without a reboot.
    Attach(DriverName),
    /// Detach from a driver and restore its imports; its live mappings are reported (IOSV009).
    Detach(DriverName),
    /// Discard journal records, reset counters and/or forget recent unmaps (all three when
    /// no flag is given).
    Clear(ClearArgs),
    /// List the rules iosv checks (with -v: help and reference of each).
    Rules,
    /// Write the installable iosv.inf for the devices and drivers to verify (from the
    /// template iosv.inx); needs at least one --hwid and one --target.
    Inf(InfArgs),
    /// Write the self-contained HTML report (summary, violations with stacks, live
    /// mappings, per-driver plots over time) of saved `--format json` output of
    /// `violations` (also --follow), `mappings`, `status` and `lab`.
    Report(ReportArgs),
    /// Run a scenario in a user-mode host inside iosvctl, then show what the verifier found.
    #[cfg(feature = "host")]
    Lab(LabArgs),
    /// Run the user-mode host.
    #[cfg(feature = "host")]
    #[command(subcommand)]
    Host(HostCommand),
    /// Load a compiled x64 driver image (.sys) in a child process on this Linux machine,
    /// take its device through START, the IOCTLs, STOP, REMOVE and unload with iosv
    /// hooked into its imports, then show what the verifier found (docs/running-drivers.md).
    #[cfg(feature = "host")]
    Run(RunImageArgs),
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunImageArgs {
    /// The driver image: a PE32+ x64 native image (a WDM driver's .sys).
    #[arg(value_name = "IMAGE.sys")]
    pub image: PathBuf,
    /// A memory BAR of the device, as physical address and length (e.g.
    /// 0xF7800000:0x4000); repeat for several. Default: 0xF7800000:0x4000 and
    /// 0xF7810000:0x1000.
    #[arg(long = "bar", value_name = "PA:LEN")]
    pub bars: Vec<String>,
    /// An IRP_MJ_DEVICE_CONTROL request sent after START, as control code and input bytes
    /// in hex (e.g. 0x222000:01000000); repeat for several, sent in order.
    #[arg(long = "ioctl", value_name = "CODE[:HEX]")]
    pub ioctls: Vec<String>,
    /// Seconds one driver routine may run before the watchdog ends the run (exit 7).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub watchdog: u64,
    /// Do not list the mappings still live after the run.
    #[arg(long)]
    pub no_mappings: bool,
    /// After the IOCTLs, remove the device by surprise (IRP_MN_SURPRISE_REMOVAL, then
    /// IRP_MN_REMOVE_DEVICE) instead of stopping and removing it.
    #[arg(long)]
    pub surprise_removal: bool,
    /// A registry value the driver finds, as KEY\NAME=TYPE:DATA: KEY relative to its
    /// service key (e.g. Parameters\LeakOnStop=dword:1), or @hw\ / @sw\ for its
    /// device's hardware / software key, or absolute (\Registry\...); NAME @ is the
    /// default value; TYPE dword, qword, sz, expand_sz, multi_sz (a,b) or binary (01,ff).
    /// Repeat for several.
    #[arg(long = "registry", value_name = "KEY\\NAME=TYPE:DATA")]
    pub registry: Vec<String>,
    /// Load iosv's own kernel component first — the Windows glue's image, as
    /// scripts/check-glue links it (target/check-glue/iosv.sys) — and let it verify the
    /// driver: its image-load callback patches the driver's import slots, its filter
    /// device joins the stack, and the reports are pulled from its control device. The
    /// runner's own engine then hooks nothing. See docs/running-drivers.md, "The kernel
    /// component itself".
    #[arg(long = "verifier", value_name = "IOSV.sys")]
    pub verifier: Option<PathBuf>,
}

/// `violations` options.
#[derive(Debug, Args)]
pub struct ViolationsArgs {
    /// Start at this journal sequence number (0: the oldest record held). Pass the
    /// `next cursor` an earlier run printed to see only what is new.
    #[arg(long, value_name = "CURSOR", default_value_t = 0, value_parser = parse_u64)]
    pub since: u64,

    /// Stop after this many violations.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,

    /// Keep pulling new violations until Ctrl-C, --duration or --until.
    #[arg(long)]
    pub follow: bool,

    /// With --follow: how long to wait between polls when nothing is new (e.g. 500ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub interval: Duration,

    /// Follow for this long, then stop (e.g. 30s, 10m, 2h); implies --follow.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Follow until this time, then stop (RFC 3339, e.g. 2025-11-25T18:00:00Z); implies --follow.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<SystemTime>,

    /// Only these rules (id such as IOSV004 or name such as unmap-unknown; repeatable).
    #[arg(long, value_name = "RULE", value_parser = parse_rule)]
    pub rule: Vec<RuleId>,

    /// Only violations blamed on this driver (image name, case-insensitive; repeatable).
    #[arg(long, value_name = "NAME")]
    pub driver: Vec<String>,

    /// No status line while following, even on a terminal (it shows only when the
    /// results go to a file or pipe and stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// `report` options.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write the HTML report to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,

    /// JSON-lines files to read, in order (`-` or none: standard input), e.g. the saved
    /// output of `iosvctl violations --follow --format json` and `iosvctl mappings
    /// --format json`.
    #[arg(value_name = "INPUT.jsonl")]
    pub inputs: Vec<PathBuf>,

    /// The report's title (default: the input files' names).
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
}

/// `mappings` options.
#[derive(Debug, Args)]
pub struct MappingsArgs {
    /// Only mappings owned by this driver (image name, case-insensitive).
    #[arg(long, value_name = "NAME")]
    pub driver: Option<String>,

    /// Only mappings attributed to this device object (address, hex with 0x or decimal).
    #[arg(long, value_name = "ADDRESS", value_parser = parse_u64)]
    pub device: Option<u64>,

    /// Only mappings at least this old (e.g. 5s, 10m): long-lived ones are leak suspects.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_age: Option<Duration>,

    /// Only mappings of this kind: io-space (MmMapIoSpace/Ex), mdl (MDL mappings) or
    /// reserved (MmAllocateMappingAddress ranges): the leak view per kind.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Option<iosv::mdl::MappingKind>,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show the configuration: containment, IRQL mode, stack depth, targets, rule actions.
    Get,
    /// Change the configuration (other settings keep their values), then show it.
    Set(Settings),
}

/// Settings that `config set`, `lab` and `host serve` can change.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Configuration")]
pub struct Settings {
    /// Set a rule's action: RULE=ACTION, RULE an id (IOSV004), a name (unmap-unknown) or
    /// `all`; ACTION one of ignore, report, break, bugcheck. Repeatable.
    #[arg(long, value_name = "RULE=ACTION", value_parser = parse_rule_action)]
    pub action: Vec<RuleAction>,

    /// Unmap IRQL ceiling: ddi (DISPATCH_LEVEL, as the MmUnmapIoSpace reference) or
    /// verifier (APC_LEVEL, as Driver Verifier 0xC4/0x7B).
    #[arg(long, value_enum, value_name = "MODE")]
    pub irql_mode: Option<IrqlMode>,

    /// Contain unknown, double and interior unmaps (not passed to Mm) and unmap size
    /// mismatches with the tracked size.
    #[arg(long, value_enum, value_name = "on|off")]
    pub containment: Option<OnOff>,

    /// Stack frames captured per map and per violation (0 up to the endpoint's maximum).
    #[arg(long, value_name = "N")]
    pub stack_depth: Option<u32>,

    /// Hook this driver image when it loads (e.g. nic.sys; repeatable).
    #[arg(long, value_name = "NAME")]
    pub target: Vec<String>,

    /// Stop hooking this driver image at its next load (repeatable).
    #[arg(long, value_name = "NAME")]
    pub untarget: Vec<String>,

    /// Remove every target before adding those of --target.
    #[arg(long)]
    pub clear_targets: bool,
}

/// One `--action RULE=ACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleAction {
    /// The rule, or `None` for all.
    pub rule: Option<RuleId>,
    /// The action.
    pub action: Action,
}

/// `--irql-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IrqlMode {
    /// Unmap ceiling DISPATCH_LEVEL (the DDI reference; the default).
    Ddi,
    /// Unmap ceiling APC_LEVEL (Driver Verifier 0xC4/0x7B).
    Verifier,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl Settings {
    /// True if no setting was given.
    pub fn is_empty(&self) -> bool {
        self.action.is_empty()
            && self.irql_mode.is_none()
            && self.containment.is_none()
            && self.stack_depth.is_none()
            && self.target.is_empty()
            && self.untarget.is_empty()
            && !self.clear_targets
    }

    /// Applies the settings to a configuration block.
    pub fn apply(&self, b: &mut iosv::protocol::ConfigBlock) -> Result<(), String> {
        for ra in &self.action {
            let rules: Vec<RuleId> = match ra.rule {
                Some(r) => vec![r],
                None => RuleId::ALL.to_vec(),
            };
            for r in rules {
                if let Some(slot) = b.actions.get_mut(r.index()) {
                    *slot = ra.action as u8;
                }
            }
        }
        match self.irql_mode {
            Some(IrqlMode::Verifier) => b.flags |= CF_VERIFIER_IRQL,
            Some(IrqlMode::Ddi) => b.flags &= !CF_VERIFIER_IRQL,
            None => {}
        }
        match self.containment {
            Some(OnOff::On) => b.flags |= CF_CONTAINMENT,
            Some(OnOff::Off) => b.flags &= !CF_CONTAINMENT,
            None => {}
        }
        if let Some(d) = self.stack_depth {
            b.stack_depth = d;
        }
        let mut targets = crate::model::target_names(b);
        if self.clear_targets {
            targets.clear();
        }
        targets.retain(|t| !self.untarget.iter().any(|u| u.eq_ignore_ascii_case(t)));
        for t in &self.target {
            if t.is_empty() || t.len() > NAME_LEN || !t.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "target {t:?}: an image name is 1..={NAME_LEN} printable ASCII characters"
                ));
            }
            if !targets.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                targets.push(t.clone());
            }
        }
        if targets.len() > MAX_TARGETS {
            return Err(format!(
                "at most {MAX_TARGETS} targets fit the configuration ({} given)",
                targets.len()
            ));
        }
        b.targets = Default::default();
        for (slot, t) in b.targets.iter_mut().zip(&targets) {
            *slot = iosv::protocol::wire_name(t.as_bytes());
        }
        b.target_count = targets.len() as u32;
        // Slots past the rules must stay zero.
        for a in b.actions.iter_mut().skip(RULE_COUNT) {
            *a = 0;
        }
        Ok(())
    }
}

/// A driver image name argument.
#[derive(Debug, Args)]
pub struct DriverName {
    /// Image name of the driver, e.g. nic.sys.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// `inf` options.
#[derive(Debug, Args)]
pub struct InfArgs {
    /// Hardware ID of a device iosv filters (repeat for more), e.g.
    /// "PCI\VEN_8086&DEV_1533" (`pnputil /enum-devices /ids`).
    #[arg(long = "hwid", value_name = "ID")]
    pub hwids: Vec<String>,

    /// Image name of a driver iosv hooks when it loads (repeat for more, up to
    /// [`MAX_TARGETS`]), e.g. nic.sys: usually the filtered device's function driver.
    #[arg(long = "target", value_name = "NAME", help = format!(
        "Image name of a driver iosv hooks when it loads (repeat for more, up to {MAX_TARGETS}), \
         e.g. nic.sys: usually the filtered device's function driver"
    ))]
    pub targets: Vec<String>,

    /// Write the INF here instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

/// `clear` options.
#[derive(Debug, Args)]
pub struct ClearArgs {
    /// Discard the violation records written so far (readers see them as `discarded`).
    #[arg(long)]
    pub journal: bool,
    /// Reset the counters and per-driver statistics.
    #[arg(long)]
    pub stats: bool,
    /// Forget recently unmapped bases (double-unmap detection starts afresh).
    #[arg(long)]
    pub graveyard: bool,
}

/// Sizes of the memory a host allocates at start (as the driver's registry parameters).
/// Unset sizes come from the scenario's `[host]` table, else from iosv's defaults. Each is
/// checked against the same range as the `[host]` table (exit 2 when out of range).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Host sizes (default: the scenario's [host] table, else these)")]
pub struct HostParams {
    /// Live mappings the table can hold ([`SizeParam::Capacity`]).
    #[arg(long, value_name = "N", value_parser = parse_u64, help = size_help(
        SizeParam::Capacity,
        "Live mappings the table can hold"
    ))]
    pub capacity: Option<u64>,
    /// Violation records the journal holds ([`SizeParam::JournalRecords`]).
    #[arg(long, value_name = "N", value_parser = parse_u64, help = size_help(
        SizeParam::JournalRecords,
        "Violation records the journal holds before the oldest is overwritten"
    ))]
    pub journal_records: Option<u64>,
    /// Stack frames allocated per mapping and per record ([`SizeParam::MaxStackDepth`]).
    #[arg(long, value_name = "N", value_parser = parse_u64, help = size_help(
        SizeParam::MaxStackDepth,
        "Stack frames allocated per mapping and per record"
    ))]
    pub max_stack_depth: Option<u64>,
    /// Recent unmaps remembered for double-unmap detection ([`SizeParam::Graveyard`]).
    #[arg(long, value_name = "N", value_parser = parse_u64, help = size_help(
        SizeParam::Graveyard,
        "Recent unmaps remembered for double-unmap detection"
    ))]
    pub graveyard_size: Option<u64>,
}

/// The help of a host size flag: `what`, then the range iosv supports and its default,
/// both from the engine ([`SizeParam::range`], [`StartParams::default`]).
fn size_help(p: SizeParam, what: &str) -> String {
    let (lo, hi) = p.range();
    let default = StartParams::default().get(p);
    format!("{what}, {lo}..={hi} [default: {default}]")
}

impl HostParams {
    /// `base` with the sizes given on the command line, each checked by
    /// [`SizeParam::check`] (the check the scenario's `[host]` table gets).
    pub fn apply(&self, base: StartParams) -> Result<StartParams, String> {
        let mut out = base;
        for (flag, p, v) in [
            ("--capacity", SizeParam::Capacity, self.capacity),
            (
                "--journal-records",
                SizeParam::JournalRecords,
                self.journal_records,
            ),
            (
                "--max-stack-depth",
                SizeParam::MaxStackDepth,
                self.max_stack_depth,
            ),
            (
                "--graveyard-size",
                SizeParam::Graveyard,
                self.graveyard_size,
            ),
        ] {
            if let Some(v) = v {
                let n = p.check(v).map_err(|e| {
                    let (lo, hi) = e.param.range();
                    format!("{flag} must be between {lo} and {hi}, not {v}")
                })?;
                out.set(p, n);
            }
        }
        out.validate().map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// What a scenario run takes besides the scenario.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Run")]
pub struct RunArgs {
    /// OS threads of every stress phase of the scenario, 1..=[`MAX_TARGETS`] (each thread
    /// owns a hooked driver; default: the scenario's).
    #[arg(long, value_name = "N", help = format!(
        "OS threads of every stress phase of the scenario, 1..={MAX_TARGETS} (each thread owns \
         a hooked driver, and iosv hooks at most {MAX_TARGETS}; default: the scenario's)"
    ))]
    pub threads: Option<usize>,
    /// Seed of the scenario and its stress phases, to replay or vary a run (default: the
    /// scenario's).
    #[arg(long, value_name = "S", value_parser = parse_u64)]
    pub seed: Option<u64>,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// `lab` options.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Scenario file (TOML). Without it the built-in one runs: a NIC, a GPU, a storage
    /// controller and a sensor hub through start, I/O, stop, surprise removal and removal,
    /// every rule's bug at least once, and a 2-thread stress phase.
    #[arg(value_name = "SCENARIO.toml")]
    pub scenario: Option<PathBuf>,
    /// Do not list the mappings still live after the run.
    #[arg(long)]
    pub no_mappings: bool,
    /// For a scenario with a compiled driver image: seconds one driver routine may run, or
    /// the host wait for an IRP the driver returned pending, before the watchdog ends the
    /// run (exit 7), as `run --watchdog`.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub watchdog: u64,
    /// How the scenario runs.
    #[command(flatten)]
    pub run: RunArgs,
    /// Host sizes.
    #[command(flatten)]
    pub params: HostParams,
    /// Configuration applied before the run (a scenario's own `[config]` and `config` steps
    /// take effect after it).
    #[command(flatten)]
    pub settings: Settings,
}

/// `host` subcommands.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Serve a user-mode host on a Unix socket until Ctrl-C (or SIGTERM); other iosvctl
    /// invocations reach it with --host PATH.
    Serve(ServeArgs),
}

/// `host serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket to listen on (default: $XDG_RUNTIME_DIR/iosv.sock, else
    /// /tmp/iosv-$UID/iosv.sock in a private directory made if missing). The socket is
    /// created with mode 0600.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Run this scenario (TOML) in the host before serving, so clients find its results.
    #[arg(long, value_name = "SCENARIO.toml")]
    pub scenario: Option<PathBuf>,
    /// How the scenario runs.
    #[command(flatten)]
    pub run: RunArgs,
    /// Host sizes.
    #[command(flatten)]
    pub params: HostParams,
    /// Configuration applied at start.
    #[command(flatten)]
    pub settings: Settings,
}

/// Parses a number, decimal or `0x` hex.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim().replace(['_', '`'], "");
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal, or hex with 0x)"))
}

/// Parses a duration such as `500ms`, `30s`, `10m`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s, 10m or 2h: {e}"))
}

/// Parses an RFC 3339 time such as `2025-11-25T18:00:00Z`.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2025-11-25T18:00:00Z: {e}"))
}

/// Parses a rule id or name.
pub fn parse_rule(s: &str) -> Result<RuleId, String> {
    RuleId::parse(s).ok_or_else(|| format!("unknown rule {s:?} (see `iosvctl rules`)"))
}

/// Parses a mapping kind: `io-space`, `mdl` or `reserved` (case-insensitive).
pub fn parse_kind(s: &str) -> Result<iosv::mdl::MappingKind, String> {
    use iosv::mdl::MappingKind;
    [
        MappingKind::IoSpace,
        MappingKind::Mdl,
        MappingKind::Reserved,
    ]
    .into_iter()
    .find(|k| k.name().eq_ignore_ascii_case(s))
    .ok_or_else(|| format!("unknown kind {s:?} (io-space, mdl or reserved)"))
}

/// Parses `RULE=ACTION`.
pub fn parse_rule_action(s: &str) -> Result<RuleAction, String> {
    let (rule, action) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not RULE=ACTION (e.g. IOSV004=bugcheck)"))?;
    let rule = if rule.eq_ignore_ascii_case("all") {
        None
    } else {
        Some(parse_rule(rule)?)
    };
    let action = Action::parse(action).ok_or_else(|| {
        format!("unknown action {action:?} (one of ignore, report, break, bugcheck)")
    })?;
    Ok(RuleAction { rule, action })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for a in cmd.get_arguments() {
                if matches!(a.get_id().as_str(), "help" | "version") {
                    continue;
                }
                assert!(
                    a.get_help().is_some(),
                    "{path} --{} has no help",
                    a.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no about",
                    sub.get_name()
                );
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "iosvctl");
    }

    #[test]
    fn parses_values() {
        assert_eq!(parse_u64("0x10"), Ok(16));
        assert_eq!(parse_u64("fffff800`00000000").ok(), None);
        assert_eq!(parse_u64("0xfffff800`00000000"), Ok(0xfffff800_00000000));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_rule("iosv999").is_err());
        assert_eq!(
            parse_rule_action("unmap-unknown=bugcheck"),
            Ok(RuleAction {
                rule: Some(RuleId::UnmapUnknown),
                action: Action::Bugcheck
            })
        );
        assert_eq!(
            parse_rule_action("ALL=ignore"),
            Ok(RuleAction {
                rule: None,
                action: Action::Ignore
            })
        );
        assert!(parse_rule_action("IOSV004").is_err());
    }

    #[test]
    fn settings_apply_to_a_block() {
        let s = Settings {
            action: vec![RuleAction {
                rule: Some(RuleId::UnmapUnknown),
                action: Action::Bugcheck,
            }],
            irql_mode: Some(IrqlMode::Verifier),
            containment: Some(OnOff::Off),
            stack_depth: Some(4),
            target: vec!["nic.sys".into(), "NIC.SYS".into(), "gpu.sys".into()],
            untarget: vec!["old.sys".into()],
            clear_targets: false,
        };
        let mut b = iosv::protocol::ConfigBlock {
            flags: CF_CONTAINMENT,
            target_count: 1,
            ..Default::default()
        };
        b.targets[0] = iosv::protocol::wire_name(b"old.sys");
        s.apply(&mut b).unwrap();
        assert_eq!(
            b.actions[RuleId::UnmapUnknown.index()],
            Action::Bugcheck as u8
        );
        assert_eq!(b.flags, CF_VERIFIER_IRQL);
        assert_eq!(b.stack_depth, 4);
        assert_eq!(b.target_count, 2);
        assert_eq!(crate::model::name(&b.targets[1]), "gpu.sys");
        let too_long = Settings {
            target: vec!["x".repeat(33)],
            ..Default::default()
        };
        assert!(too_long.apply(&mut b).is_err());
    }

    #[cfg(feature = "host")]
    #[test]
    fn host_sizes_are_checked_like_the_host_table() {
        let base = StartParams::default();
        for (flag, bad) in [
            ("--capacity", "0"),
            ("--capacity", "18446744073709551615"),
            ("--journal-records", "0"),
            ("--max-stack-depth", "17"),
            ("--graveyard-size", "0"),
        ] {
            let cli = Cli::try_parse_from(["iosvctl", "lab", flag, bad]).expect("parses");
            let Command::Lab(a) = cli.command else {
                panic!("not lab")
            };
            let e = a.params.apply(base).expect_err(flag);
            assert!(e.contains(flag) && e.contains("must be between"), "{e}");
            // The scenario's [host] table refuses the same value.
            let key = flag.trim_start_matches("--").replace('-', "_");
            let key = if key == "graveyard_size" {
                "graveyard".to_string()
            } else {
                key
            };
            let toml = format!("[host]\n{key} = {bad}\n");
            let r = iosv_host::scenario::Scenario::parse(&toml, "t.toml");
            assert!(r.is_err(), "[host] {key} = {bad} accepted");
        }
        let cli = Cli::try_parse_from([
            "iosvctl",
            "lab",
            "--capacity",
            "16",
            "--max-stack-depth",
            "16",
        ])
        .expect("parses");
        let Command::Lab(a) = cli.command else {
            panic!("not lab")
        };
        let p = a.params.apply(base).expect("in range");
        assert_eq!((p.capacity, p.max_stack_depth), (16, 16));
    }
}
