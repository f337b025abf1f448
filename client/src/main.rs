//! `iosvctl`: pull violations, live mappings and statistics from iosv; run the host.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `iosvctl run` re-executes iosvctl as its child, the simulated machine.
    #[cfg(feature = "host")]
    if let Some(code) = iosv_client::cmd::run::child_if_requested() {
        return code;
    }
    let cli = match iosv_client::cli::Cli::try_parse() {
        Ok(c) => c,
        // Usage errors exit 2; --help and --version print and exit 0.
        Err(e) => e.exit(),
    };
    iosv_client::app::main(cli)
}
