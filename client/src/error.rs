//! Why a command failed: [`AppError`], exit status 2 (usage, input, endpoint or I/O error —
//! never a panic). Its text is the whole message `iosvctl: error: …` shows.

use crate::client::ClientError;
use crate::inf::InfError;
use crate::transport::TransportError;
use std::io;
use std::path::PathBuf;

/// A command failed (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A request to the endpoint failed or its reply was refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The endpoint could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Writing the results failed; a reader that went away (`| head`) is
    /// [`AppError::is_broken_pipe`].
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// A file named on the command line could not be written.
    #[error("cannot write {}: {source}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `--format sarif` or `junit` for a command without violations to report, or
    /// `--format html` for another command than `lab`.
    #[error("--format {format} is for {}; `{command}` prints {}", if *format == "html" { "`lab` (for saved JSON lines: `iosvctl report --html FILE`)" } else { "`violations` and `lab`" }, if *command == "violations" { "human, json, sarif or junit" } else { "human or json" })]
    FormatNotSupported {
        /// The format asked for.
        format: &'static str,
        /// The command.
        command: &'static str,
    },
    /// `lab`, `run` or `host` given to [`crate::app::run_with`], which talks to an
    /// endpoint.
    #[error("`lab`, `run` and `host` run a host of their own; they take no endpoint")]
    NoEndpointCommand,
    /// `run`: a bad argument, or the driver host process could not be run.
    #[error("{0}")]
    Run(String),
    /// `--symbols` names something that is not a local directory.
    #[error("--symbols: {0}")]
    Symbols(#[from] crate::symbols::SymbolPathError),
    /// `report`: the input cannot be read or holds no usable record.
    #[error("{0}")]
    Report(String),
    /// `inf`: the hardware IDs or targets cannot be written into the INF.
    #[error(transparent)]
    Inf(#[from] InfError),
    /// `mappings --driver NAME`: the endpoint knows no driver by that name.
    #[error("no driver named {name:?} is known to the endpoint (known: {known})")]
    UnknownDriver {
        /// The name given.
        name: String,
        /// The drivers the endpoint knows, comma-separated, or `none`.
        known: String,
    },
    /// `config set` without a setting.
    #[error("config set: nothing to change (see `iosvctl config set --help`)")]
    NothingToSet,
    /// A configuration option is malformed or does not fit the configuration block.
    #[error("{0}")]
    Settings(String),
    /// `--stack-depth` above what the endpoint allocated at start.
    #[error("--stack-depth {depth} exceeds the endpoint's maximum of {max}")]
    StackDepth {
        /// The depth asked for.
        depth: u32,
        /// The endpoint's maximum.
        max: u32,
    },
    /// `attach`: iosv refused to patch the driver's imports.
    #[error("iosv refused to hook {name}: {why}; nothing was patched")]
    HookRefused {
        /// The driver.
        name: String,
        /// The refusal, as `status` shows it.
        why: &'static str,
    },
    /// A host size (`--capacity`, …) is out of range.
    #[error("{0}")]
    HostSizes(String),
    /// `host serve --threads/--seed` without `--scenario`.
    #[error("--threads and --seed apply to the scenario of --scenario")]
    RunArgsWithoutScenario,
    /// The scenario file cannot be read or parsed.
    #[cfg(feature = "host")]
    #[error("bad scenario: {0}")]
    Scenario(#[from] iosv_host::scenario::ScenarioError),
    /// `--threads` / `--seed` cannot be applied to the scenario's text.
    #[error("bad scenario: {origin}: {reason}")]
    ScenarioOverride {
        /// Where the scenario comes from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A step of the scenario failed.
    #[cfg(feature = "host")]
    #[error("scenario failed: {0}")]
    ScenarioRun(iosv_host::scenario::ScenarioError),
    /// The host could not be started.
    #[cfg(feature = "host")]
    #[error("cannot start the host: {0}")]
    HostStart(iosv_host::HostError),
    /// The lab audit could not be taken.
    #[cfg(feature = "host")]
    #[error("cannot audit the run: {0}")]
    Audit(iosv_host::HostError),
    /// `host serve`: the socket could not be prepared or bound.
    #[error("cannot serve on {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `host serve`: serving stopped with an error.
    #[error("serving on {} failed: {source}", path.display())]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl AppError {
    /// True if the output's reader went away (`iosvctl … | head`): the process then ends
    /// quietly by SIGPIPE, as `cat` or `grep` do.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, AppError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Result of a command: its [`Outcome`](crate::outcome::Outcome) by default.
pub type AppResult<T = crate::outcome::Outcome> = Result<T, AppError>;
