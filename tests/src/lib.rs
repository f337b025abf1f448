//! System-test helpers for iosv.

pub mod control;
pub mod fixture;
pub mod fuzz;
