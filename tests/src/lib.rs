//! System-test helpers for iosv.

pub mod fixture;
pub mod fuzz;
