//! Kernel-space addresses for the host's routines.
//!
//! On Windows every routine a driver imports lives in kernel space (at or above
//! [`WINDOW`]), and iosv's interception plan relies on it: a slot holding a value below
//! is "not bound yet" (`intercept::is_bound_value`) and is never patched. The runner's
//! routines are code of this Linux process, in user space. When iosv's own kernel
//! component runs in the child ([`super::kernel_component`]), imports are therefore bound
//! to *aliases*: the routine's address plus [`WINDOW`], a canonical kernel address this
//! process cannot execute. A call through one faults on the instruction fetch, and the
//! fault handler ([`super::trap`]) resumes at the routine itself ([`target_of`]); the
//! return address the call pushed is untouched, so the routine returns to its caller.
//! `MmGetSystemRoutineAddress` hands out the same aliases, so a slot's value and the
//! address iosv resolves for it agree, as on Windows. Cost: one signal per call.
//!
//! Off by default (a plain `iosvctl run` binds the routines' own addresses).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Start of kernel space on x64 (`intercept::KERNEL_SPACE_START`); alias = routine +
/// `WINDOW` (user addresses are below 2^47, so every alias is canonical).
pub const WINDOW: usize = 0xFFFF_8000_0000_0000;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Calls resumed at a routine ([`target_of`] answered).
static REDIRECTS: AtomicU64 = AtomicU64::new(0);
/// Every host routine's own address, sorted (read by the fault handler: no lock).
static ROUTINES: OnceLock<Vec<usize>> = OnceLock::new();

/// From now on, host routines are bound and handed out by their aliases.
pub fn enable() {
    ROUTINES.get_or_init(|| {
        let mut v: Vec<usize> = super::kernel::IMPLEMENTED
            .iter()
            .filter_map(|n| super::kernel::lookup(n))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    });
    ENABLED.store(true, Ordering::SeqCst);
}

fn is_routine(address: usize) -> bool {
    ROUTINES
        .get()
        .is_some_and(|r| r.binary_search(&address).is_ok())
}

/// The address to bind or hand out for the host routine at `address`: its alias when
/// enabled and `address` is a host routine; else `address` itself.
#[must_use]
pub fn alias(address: usize) -> usize {
    if ENABLED.load(Ordering::Relaxed) && is_routine(address) {
        address.wrapping_add(WINDOW)
    } else {
        address
    }
}

/// The host routine an instruction fetch at `rip` was meant to reach, if `rip` is an
/// alias. Async-signal-safe (atomic loads and a binary search).
#[must_use]
pub fn target_of(rip: usize) -> Option<usize> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let real = rip.checked_sub(WINDOW)?;
    let found = is_routine(real).then_some(real);
    if found.is_some() {
        REDIRECTS.fetch_add(1, Ordering::Relaxed);
    }
    found
}

/// How many calls went through an alias so far.
#[must_use]
pub fn redirects() -> u64 {
    REDIRECTS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_kernel_addresses_that_lead_back_to_the_routine() {
        let routine = super::super::kernel::lookup("KeGetCurrentIrql").unwrap();
        // Process-wide from here on: no other unit test runs code through bound imports
        // or compares them with `lookup`.
        enable();
        let a = alias(routine);
        assert!(a >= iosv::intercept::KERNEL_SPACE_START);
        assert!(iosv::intercept::is_bound_value(a));
        assert_eq!(target_of(a), Some(routine));
        assert_eq!(target_of(routine), None);
        // Data and non-routines are left alone.
        let data = super::super::ob::io_driver_object_type();
        assert_eq!(alias(data), data);
        assert_eq!(target_of(data + WINDOW), None);
    }
}
