//! The simulated identity of the calling OS thread: its IRQL, thread id, processor index
//! and the simulated call chain that [`HostPlatform::capture_stack`] reports.
//!
//! All of it is thread-local, so hook paths read it without locks or allocation, like the
//! kernel reads `KeGetCurrentIrql()` from the processor control region.
//!
//! A scenario can run a step "on simulated thread N" ([`with_simulated_thread`]): the step
//! then reports a fixed thread id and processor for N, whatever OS thread runs it.
//!
//! [`HostPlatform::capture_stack`]: iosv::platform::Platform::capture_stack

use core::cell::Cell;
use iosv::platform::Irql;
use std::sync::atomic::{AtomicU64, Ordering};

/// Frames in a simulated call chain.
pub const CHAIN_FRAMES: usize = 4;

/// First thread id handed to OS threads (ids advance by 4, as Windows ids do).
const AUTO_THREAD_BASE: u64 = 0x1000;
/// Thread id of simulated thread 0 ([`with_simulated_thread`]).
pub const SIMULATED_THREAD_BASE: u64 = 0x8000_0000;

static NEXT_THREAD: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy)]
struct Identity {
    thread_id: u64,
    index: u32,
}

thread_local! {
    static IRQL: Cell<u8> = const { Cell::new(0) };
    static AUTO: Cell<Option<Identity>> = const { Cell::new(None) };
    static OVERRIDE: Cell<Option<Identity>> = const { Cell::new(None) };
    static CHAIN: Cell<([u64; CHAIN_FRAMES], u8)> = const { Cell::new(([0; CHAIN_FRAMES], 0)) };
    static STEP: Cell<u64> = const { Cell::new(0) };
}

fn identity() -> Identity {
    if let Some(id) = OVERRIDE.with(Cell::get) {
        return id;
    }
    AUTO.with(|a| match a.get() {
        Some(id) => id,
        None => {
            let seq = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            let id = Identity {
                thread_id: AUTO_THREAD_BASE.wrapping_add(seq.wrapping_mul(4)),
                index: u32::try_from(seq & u64::from(u32::MAX)).unwrap_or(0),
            };
            a.set(Some(id));
            id
        }
    })
}

/// The calling thread's simulated IRQL (PASSIVE_LEVEL unless raised).
pub fn current_irql() -> Irql {
    Irql(IRQL.with(Cell::get))
}

/// Sets the calling thread's simulated IRQL and returns the previous one.
pub fn set_irql(irql: Irql) -> Irql {
    Irql(IRQL.with(|c| c.replace(irql.0)))
}

/// Runs `f` at `irql` on the calling thread, then restores the previous IRQL.
pub fn with_irql<R>(irql: Irql, f: impl FnOnce() -> R) -> R {
    let old = set_irql(irql);
    let r = f();
    set_irql(old);
    r
}

/// The calling thread's simulated thread id.
pub fn thread_id() -> u64 {
    identity().thread_id
}

/// A stable small index of the calling thread (the processor is this modulo the count).
pub fn thread_index() -> u32 {
    identity().index
}

/// Runs `f` as simulated thread `n`: thread id [`SIMULATED_THREAD_BASE`] + 4·n and thread
/// index `n`, whatever OS thread calls it. Nests; the previous identity is restored.
pub fn with_simulated_thread<R>(n: u32, f: impl FnOnce() -> R) -> R {
    let id = Identity {
        thread_id: SIMULATED_THREAD_BASE.wrapping_add(u64::from(n).wrapping_mul(4)),
        index: n,
    };
    let old = OVERRIDE.with(|o| o.replace(Some(id)));
    let r = f();
    OVERRIDE.with(|o| o.set(old));
    r
}

/// Runs `f` with `frames` (innermost first, at most [`CHAIN_FRAMES`]) as the simulated
/// call chain of the calling thread, then restores the previous chain.
pub fn with_call_chain<R>(frames: &[u64], f: impl FnOnce() -> R) -> R {
    let mut chain = [0u64; CHAIN_FRAMES];
    let mut n = 0u8;
    for (d, s) in chain.iter_mut().zip(frames) {
        *d = *s;
        n = n.saturating_add(1);
    }
    let old = CHAIN.with(|c| c.replace((chain, n)));
    let r = f();
    CHAIN.with(|c| c.set(old));
    r
}

/// Copies the calling thread's simulated call chain into `out`; returns frames written.
pub fn capture_chain(out: &mut [u64]) -> usize {
    let (chain, n) = CHAIN.with(Cell::get);
    let mut written = 0usize;
    for (d, s) in out.iter_mut().zip(chain.iter().take(usize::from(n))) {
        *d = *s;
        written = written.saturating_add(1);
    }
    written
}

/// Sets the scenario step the calling thread is running (`None`: none), which becomes the
/// outermost frame of simulated stacks.
pub fn set_step(step: Option<u64>) {
    STEP.with(|c| c.set(step.map_or(0, |s| s.saturating_add(1))));
}

/// The frame naming the calling thread's scenario step
/// ([`kernel_frames::SCENARIO_STEP`](super::image::kernel_frames::SCENARIO_STEP) + 16 × step), if any.
pub fn step_frame() -> Option<u64> {
    match STEP.with(Cell::get) {
        0 => None,
        s => Some(
            super::image::kernel_frames::SCENARIO_STEP
                .wrapping_add(s.wrapping_sub(1).wrapping_mul(16)),
        ),
    }
}
