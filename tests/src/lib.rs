//! System-test helpers for iosv.

pub mod fixture;
