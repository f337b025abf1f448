//! `iosvctl`'s top: runs the command line — each command is a module of [`crate::cmd`] —
//! and turns the result into the exit status: an [`Outcome`](crate::outcome::Outcome)
//! (0, 1, 3 or 4) or an [`AppError`](crate::error::AppError) (2). The codes are listed
//! once for users, in `iosvctl --help` ([`crate::cli`]) and the README.

#[cfg(feature = "host")]
use crate::cli::HostCommand;
use crate::cli::{Cli, Command, Global};
use crate::client::Client;
use crate::cmd;
use crate::error::AppResult;
use crate::transport::{Endpoint, Transport};
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Runs the command line and turns its outcome into the exit status.
pub fn main(cli: Cli) -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let r = run(&cli, &mut out);
    let _ = out.flush();
    match r {
        Ok(o) => ExitCode::from(o.exit_code()),
        // The reader went away (`iosvctl ... | head`): end quietly, as `cat` or `grep` do.
        Err(e) if e.is_broken_pipe() => die_of_sigpipe(),
        Err(e) => {
            eprintln!("iosvctl: error: {e}");
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
    // A bad --symbols is a usage error whatever the command.
    if g.symbols.is_some() {
        g.symbolizer()?;
    }
    match &cli.command {
        Command::Rules => {
            cmd::check_format(&cli.command, g)?;
            cmd::rules::run(g, out)
        }
        Command::Inf(a) => cmd::inf::run(a, out),
        Command::Report(a) => cmd::report::run(a, out),
        #[cfg(feature = "host")]
        Command::Lab(a) => cmd::lab::run(g, a, out),
        #[cfg(feature = "host")]
        Command::Host(HostCommand::Serve(a)) => cmd::serve::run(a),
        #[cfg(feature = "host")]
        Command::Run(a) => cmd::run::run(g, a, out),
        _ => {
            let mut c = open(g)?;
            run_with(cli, &mut c, out)
        }
    }
}

/// Runs a command that talks to an endpoint over `c`.
pub fn run_with<T: Transport>(cli: &Cli, c: &mut Client<T>, out: &mut dyn Write) -> AppResult {
    let g = &cli.global;
    cmd::check_format(&cli.command, g)?;
    match &cli.command {
        Command::Rules => cmd::rules::run(g, out),
        Command::Status => cmd::status::run(g, c, out),
        Command::Violations(a) => cmd::violations::run(g, a, c, out),
        Command::Mappings(a) => cmd::mappings::run(g, a, c, out),
        Command::Config(a) => cmd::config::run(g, a, c, out),
        Command::Attach(d) => cmd::attach::run(g, &d.name, true, c, out),
        Command::Detach(d) => cmd::attach::run(g, &d.name, false, c, out),
        Command::Clear(a) => cmd::clear::run(g, a, c, out),
        Command::Inf(a) => cmd::inf::run(a, out),
        Command::Report(a) => cmd::report::run(a, out),
        #[cfg(feature = "host")]
        Command::Lab(_) | Command::Host(_) | Command::Run(_) => {
            Err(crate::error::AppError::NoEndpointCommand)
        }
    }
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

/// Opens the selected endpoint and says HELLO.
fn open(g: &Global) -> AppResult<Client<Box<dyn Transport>>> {
    let timeout = (g.timeout > 0).then(|| Duration::from_secs(g.timeout));
    let t = endpoint(g).open(timeout, g.allow_other_user)?;
    Ok(Client::connect(t)?)
}
