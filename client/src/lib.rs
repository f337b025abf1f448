//! `iosv-client`: the user-mode side of the iosv I/O-space mapping verifier.
//!
//! - [`transport`]: how requests reach an endpoint — the Windows control device, a host
//!   endpoint's Unix socket, or a host in this process;
//! - [`client`]: the typed API (HELLO, GET_STATS, READ_VIOLATIONS, …) over a transport;
//! - [`model`]: what the wire records mean to people (names, blame, messages, stacks);
//! - [`output`]: human tables, JSON lines, SARIF 2.1.0 and JUnit XML;
//! - [`cli`] and [`app`]: the `iosvctl` command line and what each command does;
//! - [`symbols`]: stack frames as function and source line from local PDBs;
//! - [`report`]: the self-contained HTML report and its SVG plots;
//! - [`inf`]: the installable `iosv.inf` rendered from the template `iosv.inx`.
//!
//! Everything an endpoint sends is hostile input: outside tests the crate denies
//! `unwrap`, `expect`, `panic!` and unchecked indexing, so a bad reply is an error
//! message and exit status 2, never a panic.
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
pub mod inf;
pub mod model;
pub mod output;
pub mod symbols;
pub mod transport;

#[cfg(test)]
mod testutil;
