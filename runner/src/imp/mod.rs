//! The x86-64 Linux implementation: loader, kernel surface, traps and the child.

pub mod blocks;
pub mod child;
pub mod engine;
pub mod guarded;
pub mod kaddr;
pub mod kernel;
pub mod kernel_component;
pub mod loader;
pub mod mdl;
pub mod mmio;
pub mod ob;
pub mod ps;
pub mod registry;
pub mod scenario;
pub mod seh;
pub mod stack;
pub mod trap;

use std::cell::Cell;

/// Raw access to a kernel object (a driver's `DEVICE_OBJECT`, an IRP, ...) in this
/// process. Reads and writes are unaligned and bounds-checked against the length given
/// at construction: an access past it reads 0 and writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obj {
    addr: usize,
    len: usize,
}

impl Obj {
    /// An object of `len` bytes at `addr`.
    ///
    /// # Safety
    /// `[addr, addr + len)` is readable and writable memory for as long as the returned
    /// value (or a copy) is used, and nothing holds a Rust reference into it.
    #[must_use]
    pub const unsafe fn new(addr: usize, len: usize) -> Self {
        Self { addr, len }
    }

    /// The address.
    #[must_use]
    pub const fn addr(self) -> usize {
        self.addr
    }

    fn fits<T>(self, off: usize) -> bool {
        // The end must not wrap the address space either: a driver pointer near the top
        // would otherwise overflow `addr + off` inside an `extern "win64"` routine, where
        // a panic aborts the child without a report.
        off.checked_add(std::mem::size_of::<T>())
            .is_some_and(|end| end <= self.len && self.addr.checked_add(end).is_some())
            && self.addr != 0
    }

    /// Reads a `T` at byte offset `off` (zero past the end).
    #[must_use]
    pub fn get<T: Copy + Default>(self, off: usize) -> T {
        if !self.fits::<T>(off) {
            return T::default();
        }
        // SAFETY: in bounds (checked), readable by the type's invariant; unaligned read.
        unsafe { ((self.addr + off) as *const T).read_unaligned() }
    }

    /// Writes a `T` at byte offset `off` (nothing past the end).
    pub fn set<T: Copy>(self, off: usize, value: T) {
        if !self.fits::<T>(off) {
            return;
        }
        // SAFETY: in bounds (checked), writable by the type's invariant; unaligned write.
        unsafe { ((self.addr + off) as *mut T).write_unaligned(value) }
    }

    /// Zeroes the whole object.
    pub fn zero(self) {
        if self.addr == 0 {
            return;
        }
        // SAFETY: [addr, addr + len) is writable by the type's invariant.
        unsafe { std::ptr::write_bytes(self.addr as *mut u8, 0, self.len) }
    }
}

/// The driver routine a thread runs, for attribution and crash reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entered {
    /// What the routine is (`DriverEntry`, `IRP_MJ_PNP dispatch`, ...).
    pub name: &'static str,
    /// Its entry address (in the image).
    pub entry: usize,
}

thread_local! {
    static CURRENT: Cell<Option<Entered>> = const { Cell::new(None) };
    static DRAINING: Cell<bool> = const { Cell::new(false) };
    static SILENT: Cell<bool> = const { Cell::new(false) };
}

/// From now on the calling thread's driver routines are not announced to the parent
/// (`enter` / `leave`): for a thread that runs driver code after `ready`, when the parent
/// no longer reads the child's output and its watchdog is off.
pub fn silence_thread() {
    SILENT.with(|s| s.set(true));
}

/// The driver routine the calling thread runs, if any.
#[must_use]
pub fn current() -> Option<Entered> {
    CURRENT.with(Cell::get)
}

/// Runs `f` as a call of driver routine `name` at `entry`: the parent is told (its
/// watchdog restarts), and the routine is remembered for attribution — a hooked call
/// reached by a tail call (`jmp [IAT]`) has a return address outside the driver.
pub fn entering<R>(name: &'static str, entry: usize, f: impl FnOnce() -> R) -> R {
    let silent = SILENT.with(Cell::get);
    if !silent {
        report::line(&["enter ", name]);
    }
    let previous = CURRENT.with(|c| c.replace(Some(Entered { name, entry })));
    let r = f();
    CURRENT.with(|c| c.set(previous));
    if previous.is_none() && !DRAINING.with(|d| d.replace(true)) {
        // Back in the runner: the work the routine queued runs now (once, not from
        // within the routines this runs).
        kernel::run_deferred();
        DRAINING.with(|d| d.set(false));
        // No driver code runs now: the watchdog waits (a scenario's simulated steps may
        // take long between driver routines).
        if !silent {
            report::line(&["leave"]);
        }
    }
    r
}

/// Runs `f`, the host waiting for the driver between its routines (for `what`, e.g. an
/// IRP it returned pending): the parent is told, so its watchdog runs during the wait
/// also in a scenario, where it otherwise waits only while driver code runs.
pub fn waiting_for<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let silent = SILENT.with(Cell::get);
    if !silent {
        report::line(&["wait ", what]);
    }
    let r = f();
    if !silent {
        report::line(&["waited"]);
    }
    r
}

/// Messages to the parent, on standard output (see [`crate::protocol`]).
pub mod report {
    /// Writes the concatenation of `parts` and a newline to standard output; no
    /// allocation (callable from the fault handler). A line break inside a part (a name
    /// from the image, a driver's string) is written as a space, so it cannot end the
    /// line early and forge a message (`ready`, `crash ...`) to the parent.
    pub fn line(parts: &[&str]) {
        for p in parts {
            for (i, piece) in p.split(['\n', '\r']).enumerate() {
                if i > 0 {
                    write_all(b" ");
                }
                write_all(piece.as_bytes());
            }
        }
        write_all(b"\n");
    }

    /// Writes `bytes` to standard output, retrying short writes.
    pub fn write_all(mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: fd 1 is the child's stdout; the pointer and length describe `bytes`.
            let n = unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
            match usize::try_from(n) {
                Ok(n) if n > 0 => bytes = bytes.get(n..).unwrap_or(&[]),
                _ => return,
            }
        }
    }

    /// A fixed buffer that formats without allocating.
    pub struct Buf {
        bytes: [u8; 512],
        len: usize,
    }

    impl Buf {
        /// An empty buffer.
        #[must_use]
        pub const fn new() -> Self {
            Self {
                bytes: [0; 512],
                len: 0,
            }
        }

        /// The text so far.
        #[must_use]
        pub fn as_str(&self) -> &str {
            std::str::from_utf8(self.bytes.get(..self.len).unwrap_or(&[])).unwrap_or("")
        }
    }

    impl Default for Buf {
        fn default() -> Self {
            Self::new()
        }
    }

    impl core::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for &b in s.as_bytes() {
                // Newlines would break the line protocol.
                let b = if b == b'\n' { b' ' } else { b };
                if let Some(slot) = self.bytes.get_mut(self.len) {
                    *slot = b;
                    self.len += 1;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod obj_tests {
    use super::Obj;

    #[test]
    fn an_object_that_would_wrap_the_address_space_reads_zero_and_ignores_writes() {
        // SAFETY: nothing is read or written: every access wraps and is refused first.
        let o = unsafe { Obj::new(usize::MAX - 7, 64) };
        assert_eq!(o.get::<u64>(8), 0);
        o.set::<u64>(16, 1);
    }
}
