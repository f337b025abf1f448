//! Atomics used by the lock-free structures, swapped for loom's under `cfg(loom)`.
//!
//! Every lock-free module imports its atomics from here, so the loom models in
//! `driver/tests/loom.rs` (`RUSTFLAGS="--cfg loom" cargo test -p iosv --test loom --release`,
//! as scripts/test runs them) check the very code the driver runs.

#![forbid(unsafe_code)]

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Tells the processor it is in a bounded retry loop (a `pause` on x86). Under loom it
/// yields to the model's scheduler instead.
#[inline]
pub fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Allocates a boxed slice of `len` values made by `make`, failing instead of aborting
/// when memory is short (start-up only; hook paths never allocate).
pub fn try_boxed_slice<T>(
    len: usize,
    mut make: impl FnMut(usize) -> T,
) -> Result<alloc::boxed::Box<[T]>, OutOfMemory> {
    let mut v = alloc::vec::Vec::new();
    v.try_reserve_exact(len).map_err(|_| OutOfMemory)?;
    for i in 0..len {
        v.push(make(i));
    }
    Ok(v.into_boxed_slice())
}

/// Start-up could not allocate the fixed memory it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;
