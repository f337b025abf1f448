//! Stand-in for `wdk` 0.5 (windows-drivers-rs), for `tests/check-glue` only: the part of
//! its API iosv's glue and wdk-panic use, with the real crate's signatures.

#![no_std]

/// Breaks into the kernel debugger (`int 3`), as `wdk::dbg_break` does. Without a kernel
/// debugger attached this is a bug check, so callers guard it.
#[inline]
pub fn dbg_break() {
    // SAFETY: `int3` only raises a breakpoint exception; it touches no memory or registers
    // Rust relies on.
    unsafe { core::arch::asm!("int3") };
}

/// `NT_SUCCESS`, as `wdk::nt_success` (re-exported from wdk-sys).
#[must_use]
pub const fn nt_success(nt_status: wdk_sys::NTSTATUS) -> bool {
    wdk_sys::NT_SUCCESS(nt_status)
}
