//! `iosv-client`: the user-mode side of the iosv I/O-space mapping verifier.
//!
//! - [`transport`]: how requests reach an endpoint — the Windows control device, a host
//!   endpoint's Unix socket, or a host in this process;
//! - [`client`]: the typed API (HELLO, GET_STATS, READ_VIOLATIONS, …) over a transport;
//! - [`model`]: what the wire records mean to people (names, blame, messages, stacks);
//! - [`output`]: human tables, JSON lines, SARIF 2.1.0 and JUnit XML;
//! - [`cli`]: the `iosvctl` command line; [`app`]: running it, with one module of [`cmd`]
//!   per command, ending in an [`outcome::Outcome`] or an [`error::AppError`] (the exit
//!   status); [`stop`]: Ctrl-C;
//! - [`symbols`]: stack frames as function and source line from local PDBs;
//! - [`report`]: the self-contained HTML report and its SVG plots;
//! - [`inf`]: the installable `iosv.inf` rendered from the template `iosv.inx`.
//!
//! Everything an endpoint sends is hostile input: outside tests the crate denies
//! `unwrap`, `expect`, `panic!` and unchecked indexing, so a bad reply is an error
//! message and exit status 2, never a panic.
// Crate-level, not in `[workspace.lints]`: they hold on non-test code only (as the kernel's
// list in driver/lib.rs, of which this is the hostile-input subset).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]

pub mod app;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod error;
pub mod inf;
pub mod model;
pub mod outcome;
pub mod output;
pub mod report;
pub mod stop;
pub mod symbols;
pub mod transport;

#[cfg(test)]
mod testutil;
