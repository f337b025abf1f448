//! Stand-in for `wdk-panic` 0.5 (windows-drivers-rs), for `tests/check-glue` only: the
//! kernel panic handler, which (in debug builds after `wdk::dbg_break()`) calls
//! `KeBugCheckEx(0x52504E43 "RPNC", file pointer, file length, line, column)` as the real
//! one does.

#![no_std]

use core::panic::PanicInfo;

unsafe extern "system" {
    /// `KeBugCheckEx` (wdm.h), never returns.
    fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
}

/// Bug-check code: ASCII "RPNC".
const RUST_PANIC: u32 = u32::from_be_bytes(*b"RPNC");

#[panic_handler]
#[cold]
fn panic(info: &PanicInfo) -> ! {
    #[cfg(debug_assertions)]
    wdk::dbg_break();
    let (file, len, line, column) = info.location().map_or((0, 0, 0, 0), |l| {
        (
            l.file().as_ptr() as usize,
            l.file().len(),
            l.line() as usize,
            l.column() as usize,
        )
    });
    // SAFETY: KeBugCheckEx takes plain values and may be called at any IRQL.
    unsafe { KeBugCheckEx(RUST_PANIC, file, len, line, column) }
}
