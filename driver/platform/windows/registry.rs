//! The service's `Parameters` key (`HKLM\SYSTEM\CurrentControlSet\Services\iosv\Parameters`),
//! read once in `DriverEntry`:
//!
//! | value | type | field |
//! |---|---|---|
//! | `Capacity` | REG_DWORD | `StartParams::capacity` |
//! | `JournalRecords` | REG_DWORD | `StartParams::journal_records` |
//! | `StackDepth` | REG_DWORD | `StartParams::max_stack_depth` |
//! | `Graveyard` | REG_DWORD | `StartParams::graveyard` |
//! | `Untracked` | REG_DWORD | `StartParams::untracked` |
//! | `ConflictBuckets` | REG_DWORD | `StartParams::conflict_buckets` |
//! | `Targets` | REG_MULTI_SZ | image names hooked when they load |
//!
//! A missing key or value leaves the default. A wrong type or length, a `Targets` value
//! longer than 4 KiB, an unusable name or more names than fit is logged and recorded in
//! [`Config::problems`] (`STATE_*` bits, shown by `iosvctl status`); bad input never fails
//! the load. Ranges are clamped by `StartParams::clamped` in `Verifier::new`.

use alloc::vec::Vec;
use core::ffi::CStr;
use core::ptr::null_mut;

use wdk_sys::ntddk::{ZwClose, ZwOpenKey, ZwQueryValueKey};
use wdk_sys::{
    HANDLE, KEY_QUERY_VALUE, NT_SUCCESS, OBJECT_ATTRIBUTES, PCUNICODE_STRING, PVOID,
    STATUS_BUFFER_OVERFLOW, STATUS_BUFFER_TOO_SMALL, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_UNSUCCESSFUL,
};
use zerocopy::IntoBytes;

use super::ffi::{self, ascii_wide, log, log_name, log_value, unicode_string, Level};
use crate::protocol::{
    MAX_TARGETS, NAME_LEN, STATE_PARAMETER_IGNORED, STATE_TARGETS_BAD_NAME, STATE_TARGETS_TOO_LONG,
    STATE_TARGETS_TOO_MANY, STATE_TARGETS_WRONG_TYPE,
};
use crate::verifier::StartParams;

/// `OBJ_CASE_INSENSITIVE` (ntdef.h).
const OBJ_CASE_INSENSITIVE: u32 = 0x40;
/// `OBJ_KERNEL_HANDLE` (ntdef.h).
const OBJ_KERNEL_HANDLE: u32 = 0x200;
/// Largest `Targets` value read (bytes of UTF-16).
const MAX_MULTI_SZ: usize = 4096;

const PARAMETERS_STR: &str = "\\Parameters";
const PARAMETERS: [u16; PARAMETERS_STR.len()] = ascii_wide(PARAMETERS_STR);

macro_rules! wide_const {
    ($name:ident, $s:literal) => {
        const $name: [u16; $s.len()] = ascii_wide($s);
    };
}
wide_const!(CAPACITY, "Capacity");
wide_const!(JOURNAL_RECORDS, "JournalRecords");
wide_const!(STACK_DEPTH, "StackDepth");
wide_const!(GRAVEYARD, "Graveyard");
wide_const!(UNTRACKED, "Untracked");
wide_const!(CONFLICT_BUCKETS, "ConflictBuckets");
wide_const!(TARGETS, "Targets");

/// Target image names from the registry.
pub struct TargetNames {
    names: [[u8; NAME_LEN]; MAX_TARGETS],
    lens: [usize; MAX_TARGETS],
    count: usize,
}

impl TargetNames {
    fn new() -> TargetNames {
        TargetNames {
            names: [[0; NAME_LEN]; MAX_TARGETS],
            lens: [0; MAX_TARGETS],
            count: 0,
        }
    }

    fn push(&mut self, name: &[u8]) -> bool {
        let (Some(dst), Some(len)) = (
            self.names.get_mut(self.count),
            self.lens.get_mut(self.count),
        ) else {
            return false;
        };
        let Some(prefix) = dst.get_mut(..name.len()) else {
            return false;
        };
        prefix.copy_from_slice(name);
        *len = name.len();
        self.count = self.count.saturating_add(1);
        true
    }

    /// The names.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.names
            .iter()
            .zip(self.lens.iter())
            .take(self.count)
            .map(|(n, len)| n.get(..*len).unwrap_or(&[]))
    }
}

/// What `DriverEntry` reads from the registry.
pub struct Config {
    /// Sizes of the engine's memory.
    pub params: StartParams,
    /// Drivers to hook when they load.
    pub targets: TargetNames,
    /// `STATE_*` bits for what was wrong with the values (0: nothing).
    pub problems: u32,
}

/// Why a value could not be read.
enum QueryError {
    /// Absent (or the key could not be read): the default applies silently.
    Absent,
    /// Longer than the caller accepts.
    TooLong,
}

/// Reads `<registry_path>\Parameters` (PASSIVE_LEVEL). Never fails: defaults fill in.
///
/// # Safety
///
/// `registry_path` is DriverEntry's registry path (or null), valid during the call.
pub unsafe fn read(registry_path: PCUNICODE_STRING) -> Config {
    let mut config = Config {
        params: StartParams::default(),
        targets: TargetNames::new(),
        problems: 0,
    };
    // SAFETY: DriverEntry's registry path is valid for the duration of DriverEntry.
    let service = unsafe { ffi::unicode_units(registry_path) };
    let mut path = Vec::new();
    if path
        .try_reserve_exact(service.len().saturating_add(PARAMETERS.len()))
        .is_err()
    {
        log(
            Level::Warning,
            c"no memory to read parameters; using defaults",
        );
        return config;
    }
    path.extend_from_slice(service);
    path.extend_from_slice(&PARAMETERS);
    let Some(mut key_name) = unicode_string(&path) else {
        return config;
    };
    let mut attributes = OBJECT_ATTRIBUTES {
        Length: core::mem::size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: null_mut(),
        ObjectName: &mut key_name,
        Attributes: OBJ_KERNEL_HANDLE | OBJ_CASE_INSENSITIVE,
        SecurityDescriptor: null_mut(),
        SecurityQualityOfService: null_mut(),
    };
    let mut key: HANDLE = null_mut();
    // SAFETY: valid out handle and attributes naming a counted string that outlives the
    // call; kernel handle; PASSIVE_LEVEL.
    let status = unsafe { ZwOpenKey(&mut key, KEY_QUERY_VALUE, &mut attributes) };
    if !NT_SUCCESS(status) {
        log_value(
            Level::Info,
            c"no Parameters key; using defaults, status",
            status as u32 as u64,
        );
        return config;
    }
    let p = &mut config.params;
    let fields: [(&[u16], &CStr, &mut usize); 6] = [
        (&CAPACITY, c"Capacity", &mut p.capacity),
        (&JOURNAL_RECORDS, c"JournalRecords", &mut p.journal_records),
        (&STACK_DEPTH, c"StackDepth", &mut p.max_stack_depth),
        (&GRAVEYARD, c"Graveyard", &mut p.graveyard),
        (&UNTRACKED, c"Untracked", &mut p.untracked),
        (
            &CONFLICT_BUCKETS,
            c"ConflictBuckets",
            &mut p.conflict_buckets,
        ),
    ];
    let mut problems = 0u32;
    for (name, label, field) in fields {
        match query(key, name, 16) {
            Ok((ffi::REG_DWORD, data)) => match <[u8; 4]>::try_from(data.as_slice()) {
                Ok(bytes) => *field = u32::from_le_bytes(bytes) as usize,
                Err(_) => {
                    problems |= STATE_PARAMETER_IGNORED;
                    log_name(
                        Level::Warning,
                        c"ignored, not a 4-byte REG_DWORD:",
                        label.to_bytes(),
                    );
                }
            },
            Ok(_) | Err(QueryError::TooLong) => {
                problems |= STATE_PARAMETER_IGNORED;
                log_name(
                    Level::Warning,
                    c"ignored, not a REG_DWORD:",
                    label.to_bytes(),
                );
            }
            Err(QueryError::Absent) => {}
        }
    }
    match query(key, &TARGETS, MAX_MULTI_SZ) {
        Ok((ffi::REG_MULTI_SZ, data)) => {
            problems |= parse_targets(&data, &mut config.targets);
        }
        Ok(_) => {
            problems |= STATE_TARGETS_WRONG_TYPE;
            log(Level::Error, c"Targets is not REG_MULTI_SZ; ignored");
        }
        Err(QueryError::TooLong) => {
            problems |= STATE_TARGETS_TOO_LONG;
            log(
                Level::Error,
                c"Targets is longer than 4 KiB (16 names of at most 31 characters fit); ignored",
            );
        }
        Err(QueryError::Absent) => {}
    }
    config.problems = problems;
    // SAFETY: opened above, closed once.
    let _ = unsafe { ZwClose(key) };
    config
}

/// Splits a REG_MULTI_SZ (UTF-16LE bytes) into ASCII names; skips and logs bad ones.
/// Returns the `STATE_TARGETS_*` bits of what was skipped.
fn parse_targets(data: &[u8], out: &mut TargetNames) -> u32 {
    let mut problems = 0u32;
    let mut name = [0u8; NAME_LEN];
    let mut len = 0usize;
    let mut bad = false;
    // A final name without its NUL (a value written by hand) ends at the data's end.
    for unit in data
        .chunks_exact(2)
        .chain(core::iter::once(&[0u8, 0][..]))
        .map(|c| {
            u16::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
    {
        if unit == 0 {
            let current = name.get(..len).unwrap_or(&[]);
            if bad {
                problems |= STATE_TARGETS_BAD_NAME;
                log_name(
                    Level::Warning,
                    c"bad target name skipped (not printable ASCII or too long):",
                    current,
                );
            } else if !current.is_empty() && !out.push(current) {
                problems |= STATE_TARGETS_TOO_MANY;
                log_name(Level::Warning, c"too many targets; skipped", current);
            }
            len = 0;
            bad = false;
            continue;
        }
        match (
            u8::try_from(unit).ok().filter(u8::is_ascii_graphic),
            name.get_mut(len),
        ) {
            (Some(byte), Some(dst)) => {
                *dst = byte;
                len = len.saturating_add(1);
            }
            _ => bad = true,
        }
    }
    problems
}

/// Reads value `name` (at most `max` data bytes): `(type, data)`, or why not.
fn query(key: HANDLE, name: &[u16], max: usize) -> Result<(u32, Vec<u8>), QueryError> {
    read_value(key, name, max).map_err(|status| {
        if status == STATUS_BUFFER_OVERFLOW || status == STATUS_BUFFER_TOO_SMALL {
            QueryError::TooLong
        } else {
            QueryError::Absent
        }
    })
}

/// [`query`]'s body; the NTSTATUS of what failed (`STATUS_UNSUCCESSFUL` for a reply that
/// does not hold together).
fn read_value(key: HANDLE, name: &[u16], max: usize) -> Result<(u32, Vec<u8>), i32> {
    let mut value_name = unicode_string(name).ok_or(STATUS_UNSUCCESSFUL)?;
    let size = ffi::PARTIAL_INFO_HEADER.saturating_add(max);
    let mut buffer: Vec<u64> = Vec::new();
    let words = size.div_ceil(8);
    buffer
        .try_reserve_exact(words)
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    buffer.resize(words, 0);
    let mut result = 0u32;
    // SAFETY: `buffer` has `size` writable bytes, 8-aligned as KEY_VALUE_PARTIAL_INFORMATION
    // requires; PASSIVE_LEVEL; `key` is open.
    let status = unsafe {
        ZwQueryValueKey(
            key,
            &mut value_name,
            wdk_sys::_KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation,
            buffer.as_mut_ptr().cast::<core::ffi::c_void>() as PVOID,
            u32::try_from(size).map_err(|_| STATUS_UNSUCCESSFUL)?,
            &mut result,
        )
    };
    if !NT_SUCCESS(status) {
        return Err(status);
    }
    let bytes: &[u8] = buffer.as_slice().as_bytes();
    let field = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(<[u8; 4]>::try_from(b).ok()?))
    };
    let kind = field(4).ok_or(STATUS_UNSUCCESSFUL)?;
    let length = field(8).ok_or(STATUS_UNSUCCESSFUL)? as usize;
    let data = ffi::PARTIAL_INFO_HEADER
        .checked_add(length)
        .and_then(|end| bytes.get(ffi::PARTIAL_INFO_HEADER..end))
        .ok_or(STATUS_UNSUCCESSFUL)?;
    let mut out = Vec::new();
    out.try_reserve_exact(data.len())
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    out.extend_from_slice(data);
    Ok((kind, out))
}
