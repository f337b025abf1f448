//! Device memory behind the simulated Mm's mappings, and KUSER_SHARED_DATA.
//!
//! The simulated Mm hands out canonical *kernel* addresses (`0xFFFFD000…`), which user
//! code cannot touch: a driver's `READ_REGISTER_ULONG(Bar0 + 4)` faults. The fault
//! handler ([`super::trap`]) decodes the instruction and, when its memory operand lies in
//! a live mapping registered here, performs the access against **device memory**: one
//! zero-initialised 4 KiB page per physical page, shared by every mapping of that page,
//! that keeps what was written (registers read back their last value — there is no device
//! model, so a driver polling for a bit that only hardware sets spins until the watchdog).
//!
//! MDL mappings ([`aliased`]) are windows onto memory of the child instead: the pages of
//! the driver's buffer the MDL describes, as a system-space mapping of its physical pages
//! is on Windows.
//!
//! Loads from KUSER_SHARED_DATA (`0xFFFFF780_00000000`, what `KeQueryTickCount` and
//! friends read) are served from a page whose time fields follow the monotonic clock.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

const PAGE: u64 = 0x1000;
/// Where KUSER_SHARED_DATA is in the kernel address space.
pub const KUSER_SHARED_DATA: u64 = 0xFFFF_F780_0000_0000;
/// Largest mapping given device memory (larger mappings are tracked but not accessible).
pub const MAX_BACKED: u64 = 64 << 20;

struct Region {
    base: u64,
    size: u64,
    physical: u64,
}

/// A window at `base` onto `size` bytes of the child's memory at `host`.
struct Alias {
    base: u64,
    size: u64,
    host: u64,
    /// Writes allowed (a system mapping is read-write until `MmProtectMdlSystemAddress`
    /// says otherwise), whatever the protection of the memory behind it.
    writable: bool,
    /// Reads allowed (not `PAGE_NOACCESS`).
    readable: bool,
}

#[derive(Default)]
struct State {
    regions: Vec<Region>,
    aliases: Vec<Alias>,
    pages: HashMap<u64, Box<[u8; PAGE as usize]>>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// A mapping `[base, base + size)` of `physical` was made: give it device memory.
pub fn mapped(base: u64, size: u64, physical: u64) {
    if base == 0 || size == 0 || size > MAX_BACKED {
        return;
    }
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let st = guard.get_or_insert_with(State::default);
    let first = physical / PAGE;
    let last = physical.saturating_add(size - 1) / PAGE;
    for p in first..=last {
        st.pages
            .entry(p)
            .or_insert_with(|| Box::new([0; PAGE as usize]));
    }
    st.regions.retain(|r| r.base != base);
    st.regions.push(Region {
        base,
        size,
        physical,
    });
}

/// The mapping at `base` is gone: its addresses fault again.
pub fn unmapped(base: u64) {
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(st) = guard.as_mut() {
        st.regions.retain(|r| r.base != base);
    }
}

/// An MDL mapping at `base` (`size` bytes, whole pages) now shows the child's memory at
/// `host` (the page-aligned start of the MDL's buffer). Replaces an alias at `base`.
pub fn aliased(base: u64, size: u64, host: u64) {
    if base == 0 || size == 0 || host == 0 {
        return;
    }
    // Opened now, outside the fault handler, which writes through it.
    let _ = self_mem();
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let st = guard.get_or_insert_with(State::default);
    st.aliases.retain(|a| a.base != base);
    st.aliases.push(Alias {
        base,
        size,
        host,
        writable: true,
        readable: true,
    });
}

/// Sets what the MDL mapping containing `address` allows (`MmProtectMdlSystemAddress`).
/// `false` when no alias contains it.
pub fn protect_alias(address: u64, readable: bool, writable: bool) -> bool {
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(st) = guard.as_mut() else {
        return false;
    };
    let Some(a) = st
        .aliases
        .iter_mut()
        .find(|a| address.checked_sub(a.base).is_some_and(|o| o < a.size))
    else {
        return false;
    };
    a.readable = readable;
    a.writable = writable;
    true
}

/// `/proc/self/mem`, opened once: writes through an alias go there, so they land even on
/// a page this process maps read-only (an image's import table), as a write through a
/// second, writable system mapping of the same physical page does on Windows.
fn self_mem() -> i32 {
    static FD: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *FD.get_or_init(|| {
        // SAFETY: a NUL-terminated path; the descriptor is kept for the process's life.
        unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) }
    })
}

/// Writes `bytes` at `host` in this process's memory, whatever its protection.
fn write_through(host: u64, bytes: &[u8]) -> Result<(), Miss> {
    let fd = self_mem();
    if fd < 0 {
        return Err(Miss::Unavailable);
    }
    let offset = libc::off64_t::try_from(host).map_err(|_| Miss::Unavailable)?;
    // SAFETY: pwrite64 reads `bytes` and writes the process's own memory at `host`,
    // which lies in the buffer of a live MDL mapping (the caller found it in an alias);
    // async-signal-safe.
    let n = unsafe { libc::pwrite64(fd, bytes.as_ptr().cast(), bytes.len(), offset) };
    if usize::try_from(n) == Ok(bytes.len()) {
        Ok(())
    } else {
        // The kernel refused the address (EIO / EFAULT: the MDL's buffer is not there):
        // a fault of the driver's, as on Windows.
        Err(Miss::Unmapped)
    }
}

/// The MDL mapping at `base` is gone.
pub fn unaliased(base: u64) {
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(st) = guard.as_mut() {
        st.aliases.retain(|a| a.base != base);
    }
}

/// The alias holding `len` bytes at `address`, and the child's address behind them.
fn alias_of(st: &State, address: u64, len: usize) -> Option<(&Alias, u64)> {
    st.aliases.iter().find_map(|a| {
        let off = address.checked_sub(a.base)?;
        let end = off.checked_add(len as u64)?;
        (end <= a.size).then(|| (a, a.host.wrapping_add(off)))
    })
}

/// Why an access could not be performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The address is in no live mapping (nor KUSER_SHARED_DATA).
    Unmapped,
    /// A write to KUSER_SHARED_DATA (read-only to drivers), or an access an MDL
    /// mapping's protection (`MmProtectMdlSystemAddress`) forbids.
    ReadOnly,
    /// The access straddles the end of a mapping, or state is busy.
    Unavailable,
}

/// Reads `len` (1, 2, 4 or 8) bytes at kernel address `address`. Called from the fault
/// handler: takes the lock only if free (the faulting driver code never holds it).
///
/// # Errors
/// A [`Miss`] when the address is not device memory or KUSER_SHARED_DATA.
pub fn read(address: u64, len: usize) -> Result<u64, Miss> {
    if let Some(off) = address.checked_sub(KUSER_SHARED_DATA).filter(|&o| o < PAGE) {
        return Ok(kuser(off, len));
    }
    let guard = STATE.try_lock().map_err(|_| Miss::Unavailable)?;
    let st = guard.as_ref().ok_or(Miss::Unmapped)?;
    if let Some((alias, host)) = alias_of(st, address, len) {
        if !alias.readable {
            return Err(Miss::ReadOnly);
        }
        let mut bytes = [0u8; 8];
        let n = len.min(8);
        // Through the kernel, not a plain copy: this runs in the SIGSEGV handler, where a
        // bogus MDL buffer faulting again would kill the child without a report.
        if !super::trap::read_own(host, bytes.get_mut(..n).unwrap_or(&mut [])) {
            return Err(Miss::Unmapped);
        }
        return Ok(u64::from_le_bytes(bytes));
    }
    let mut value = 0u64;
    for i in 0..len {
        let b = byte_at(st, address.wrapping_add(i as u64))?;
        value |= u64::from(*b) << (8 * i);
    }
    Ok(value)
}

/// Writes the low `len` bytes of `value` at kernel address `address`.
///
/// # Errors
/// A [`Miss`] when the address is not device memory.
pub fn write(address: u64, len: usize, value: u64) -> Result<(), Miss> {
    if address
        .checked_sub(KUSER_SHARED_DATA)
        .is_some_and(|o| o < PAGE)
    {
        return Err(Miss::ReadOnly);
    }
    let mut guard = STATE.try_lock().map_err(|_| Miss::Unavailable)?;
    let st = guard.as_mut().ok_or(Miss::Unmapped)?;
    if let Some((alias, host)) = alias_of(st, address, len) {
        if !alias.writable {
            return Err(Miss::ReadOnly);
        }
        let bytes = value.to_le_bytes();
        return write_through(host, bytes.get(..len.min(8)).unwrap_or(&[]));
    }
    // Check every byte first, so a straddling write changes nothing.
    for i in 0..len {
        byte_at(st, address.wrapping_add(i as u64))?;
    }
    for i in 0..len {
        let at = address.wrapping_add(i as u64);
        if let Some(page) = page_of(st, at) {
            if let Some(b) = st
                .pages
                .get_mut(&(page / PAGE))
                .and_then(|p| p.get_mut((page % PAGE) as usize))
            {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }
    Ok(())
}

/// The physical address behind kernel address `at`, if mapped.
fn page_of(st: &State, at: u64) -> Option<u64> {
    st.regions
        .iter()
        .find(|r| at >= r.base && at - r.base < r.size)
        .map(|r| r.physical + (at - r.base))
}

fn byte_at(st: &State, at: u64) -> Result<&u8, Miss> {
    let phys = page_of(st, at).ok_or(Miss::Unmapped)?;
    st.pages
        .get(&(phys / PAGE))
        .and_then(|p| p.get((phys % PAGE) as usize))
        .ok_or(Miss::Unavailable)
}

/// A KUSER_SHARED_DATA read: the time fields follow the monotonic clock (100 ns units;
/// the tick is 15.625 ms), the version is Windows 10 2004 (19041); the rest reads 0.
fn kuser(off: u64, len: usize) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let hundred_ns = (ts.tv_sec as u64)
        .wrapping_mul(10_000_000)
        .wrapping_add(ts.tv_nsec as u64 / 100);
    let ticks = hundred_ns / 156_250;
    // (offset, 8-byte value) of the fields served.
    let fields: [(u64, u64); 6] = [
        (0x04, 0x0FA0_0000), // TickCountMultiplier (low dword)
        (0x08, hundred_ns),  // InterruptTime
        (0x14, hundred_ns),  // SystemTime
        (0x260, 19041),      // NtBuildNumber
        (0x26C, 10),         // NtMajorVersion (then NtMinorVersion 0)
        (0x320, ticks),      // TickCount
    ];
    let mut bytes = [0u8; 16];
    for (at, v) in fields {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            let pos = (at + i as u64).wrapping_sub(off);
            if let Some(slot) = usize::try_from(pos).ok().and_then(|p| bytes.get_mut(p)) {
                *slot = *b;
            }
        }
    }
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(len.min(8)).enumerate() {
        value |= u64::from(*b) << (8 * i);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test at a time: `read` and `write` only try the state's lock (they run in the
    /// fault handler), so a test holding it while another reads made that read
    /// `Unavailable`, now and then.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[test]
    fn device_memory_keeps_writes_and_is_shared_by_physical_page() {
        let _one = serial();
        mapped(0xFFFF_D000_0000_0000, 0x2000, 0xE000_0000);
        write(0xFFFF_D000_0000_1004, 4, 0xDEAD_BEEF).unwrap();
        assert_eq!(read(0xFFFF_D000_0000_1004, 4), Ok(0xDEAD_BEEF));
        assert_eq!(read(0xFFFF_D000_0000_1005, 1), Ok(0xBE));
        mapped(0xFFFF_D000_0001_0000, 0x1000, 0xE000_1000);
        assert_eq!(read(0xFFFF_D000_0001_0004, 4), Ok(0xDEAD_BEEF));
        assert_eq!(write(0xFFFF_D000_0000_1FFE, 4, 1), Err(Miss::Unmapped));
        unmapped(0xFFFF_D000_0000_0000);
        assert_eq!(read(0xFFFF_D000_0000_1004, 4), Err(Miss::Unmapped));
        assert_eq!(read(KUSER_SHARED_DATA + 0x260, 4), Ok(19041));
        assert_eq!(write(KUSER_SHARED_DATA, 4, 0), Err(Miss::ReadOnly));
    }

    #[test]
    fn an_mdl_mapping_is_a_window_onto_the_buffer() {
        let _one = serial();
        let mut buffer = vec![0u8; 0x2000];
        let host = buffer.as_mut_ptr() as u64;
        // Far from where the host's simulated Mm hands out MDL mappings
        // (0xFFFF_A000_0000_0000 up): the alias table is global, and the engine's tests
        // in this process map there at the same time.
        aliased(0xFFFF_AFFF_0000_0000, 0x2000, host);
        write(0xFFFF_AFFF_0000_0010, 4, 0x1122_3344).unwrap();
        assert_eq!(buffer.get(0x10..0x14), Some(&[0x44, 0x33, 0x22, 0x11][..]));
        buffer[0x1FFF] = 0xAB;
        assert_eq!(read(0xFFFF_AFFF_0000_1FFF, 1), Ok(0xAB));
        // Past the end, or straddling it: not the buffer.
        assert_eq!(read(0xFFFF_AFFF_0000_1FFE, 4), Err(Miss::Unmapped));
        assert_eq!(read(0xFFFF_AFFF_0000_2000, 1), Err(Miss::Unmapped));
        // A window onto a buffer that is not there: refused, not a fault.
        aliased(0xFFFF_AFFF_0010_0000, 0x1000, 0x10);
        assert_eq!(read(0xFFFF_AFFF_0010_0000, 4), Err(Miss::Unmapped));
        assert_eq!(write(0xFFFF_AFFF_0010_0000, 4, 1), Err(Miss::Unmapped));
        unaliased(0xFFFF_AFFF_0010_0000);
        unaliased(0xFFFF_AFFF_0000_0000);
        assert_eq!(read(0xFFFF_AFFF_0000_0010, 4), Err(Miss::Unmapped));
    }

    #[test]
    fn a_window_writes_a_read_only_page_until_protected_read_only() {
        let _one = serial();
        // SAFETY: a fresh private anonymous page, unmapped at the end.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x1000,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        let host = page as u64;
        let base = 0xFFFF_AFFE_0000_0000;
        aliased(base, 0x1000, host);
        // A system mapping is read-write: the write lands although the page is read-only
        // to this process (as an import table's page is).
        write(base + 8, 8, 0x1122_3344_5566_7788).unwrap();
        // SAFETY: the page is mapped and readable.
        let value = unsafe { *((host + 8) as *const u64) };
        assert_eq!(value, 0x1122_3344_5566_7788);
        assert!(protect_alias(base + 0x10, true, false));
        assert_eq!(write(base + 8, 8, 0), Err(Miss::ReadOnly));
        assert_eq!(read(base + 8, 8), Ok(0x1122_3344_5566_7788));
        assert!(protect_alias(base, false, false));
        assert_eq!(read(base + 8, 8), Err(Miss::ReadOnly));
        unaliased(base);
        assert!(!protect_alias(base, true, true));
        // SAFETY: mapped above, no reference into it remains.
        unsafe { libc::munmap(page, 0x1000) };
    }
}
