//! `iosv` — the kernel component of the I/O-space mapping verifier.
//!
//! The portable, `no_std` heart of `iosv.sys`: the live-mapping [`table`], the violation
//! [`journal`], the [`rules`] and the [`verifier`] engine that joins them, the wire
//! [`protocol`] and the [`control`] endpoint that serves it, the [`pe`] import-table reader
//! and the [`intercept`] plan that patches import slots. The engine reaches the OS only
//! through the [`platform::Platform`] trait: the Windows glue implements it with wdk-sys
//! (feature `kernel`, Windows hosts only), the user-mode host (feature `host`) with std.
//!
//! See `design.md` in the project's shared material for the data flow and the rules of
//! conduct every hook path obeys (no locks, no allocation, no waiting on another hook).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
// The kernel's no-panic lints: a panic in a hook is a bug check. They are crate-level here,
// not in `[workspace.lints]` (Cargo.toml), because they hold on this crate's non-test code
// only: a `[lints]` table reaches every target of every member, and unit tests,
// integration tests, benches and the client's tests unwrap by design. Everything else is
// in `[workspace.lints]`; driver/pe.rs and driver/intercept.rs add `as_conversions`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

#[cfg(target_endian = "big")]
compile_error!("iosv's wire protocol is little-endian; big-endian targets are not supported");

extern crate alloc;

pub mod config;
pub mod control;
pub mod drivers;
#[cfg(any(test, feature = "std"))]
pub mod frame;
pub mod intercept;
pub mod journal;
pub mod pe;
pub mod phys;
pub mod platform;
pub mod protocol;
pub mod rules;
pub mod stats;
pub mod sync;
pub mod table;
pub mod verifier;

pub use platform::{Caller, Irql, Platform};
pub use rules::{Action, RuleId};
pub use verifier::{StartParams, Verifier};
