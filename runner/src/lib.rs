//! Runs compiled Windows x64 kernel driver images (`.sys`) on Linux, verified by iosv.
//!
//! `iosvctl run IMAGE.sys` starts a **child process** (a re-exec of `iosvctl` with the
//! hidden first argument [`CHILD_ARG`]) that is the simulated machine: iosv's engine (the
//! user-mode host's `Verifier` over its simulated Mm) and the driver image, loaded into the
//! child's address space, its imports bound to this crate's `extern "win64"` kernel
//! routines, and its `MmMapIoSpace`/`MmMapIoSpaceEx`/`MmUnmapIoSpace`/
//! `MmGetSystemRoutineAddress` import slots then patched by the real interception plan
//! ([`iosv::intercept::Plan`]) to hook trampolines that call the engine. The child plays
//! the PnP manager (DriverEntry, AddDevice, START_DEVICE with two memory BARs, the
//! IOCTLs, QUERY_STOP/STOP, QUERY_REMOVE/REMOVE, unload), then serves the verifier's
//! control codes on a Unix socket, where the parent pulls the reports exactly as it pulls
//! them from `iosvctl host serve`.
//!
//! The parent ([`parent`]) never runs driver code: a driver that crashes, calls a routine
//! the host does not implement, or spins is reported by the parent with its own exit
//! status ([`ExitKind`]).
//!
//! Only x86-64 Linux can run driver code; elsewhere [`parent::start`] fails with
//! [`RunError::Unsupported`]. See `docs/running-drivers.md`.

use std::fmt;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use imp::{child, kernel, loader, scenario};

pub mod parent;
pub mod protocol;
/// `--registry 'KEY\NAME=TYPE:DATA'` values: the host's parser
/// ([`iosv_host::regspec`]), which a scenario's `registry` key uses too.
pub use iosv_host::regspec;

/// The hidden first argument that makes `iosvctl` the child (the simulated machine).
pub const CHILD_ARG: &str = "__iosv-run-child";

/// The hidden first argument that makes `iosvctl` the child of `iosvctl lab` for a
/// scenario naming a compiled driver image: `__iosv-scenario-child SOCKET ARGS…`, ARGS
/// being `lab`'s own command line, which the child parses and runs as `lab` would,
/// image steps included ([`scenario::main`]).
pub const CHILD_SCENARIO_ARG: &str = "__iosv-scenario-child";

/// How a run ended when it did not produce a verifier report: each has its own exit
/// status, above those of the other `iosvctl` commands (0–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Driver code faulted (or the driver bug-checked) and the fault could not be
    /// emulated: exit status 5.
    Crashed,
    /// The driver called a routine the host does not implement: exit status 6.
    Unimplemented,
    /// A driver routine did not return within the watchdog's time: exit status 7.
    Hung,
    /// The image could not be loaded (not a PE32+ x64 native image, needs relocation
    /// without `.reloc`, ...), or its DriverEntry failed: exit status 8, as a driver that
    /// fails to load fails on Windows. A failed DriverEntry is reported by
    /// [`driver_entry_failure`] in both commands, after the reports collected up to the
    /// failure (what the driver mapped before failing and did not unmap is IOSV009 when
    /// the image is unloaded; [`parent::Session::load_failure`]): `iosvctl run` prints
    /// them and ends with this status, and so does a scenario (`iosvctl lab`), which
    /// stops at its `load` step.
    LoadFailed,
}

impl ExitKind {
    /// The process exit status for this outcome.
    #[must_use]
    pub const fn exit_code(self) -> u8 {
        match self {
            Self::Crashed => 5,
            Self::Unimplemented => 6,
            Self::Hung => 7,
            Self::LoadFailed => 8,
        }
    }
}

/// The name of a common NTSTATUS failure code (as `ntstatus.h` spells it), `None` for
/// one this table does not know.
#[must_use]
pub fn ntstatus_name(status: u32) -> Option<&'static str> {
    Some(match status {
        0xC000_0001 => "STATUS_UNSUCCESSFUL",
        0xC000_0002 => "STATUS_NOT_IMPLEMENTED",
        0xC000_0005 => "STATUS_ACCESS_VIOLATION",
        0xC000_000D => "STATUS_INVALID_PARAMETER",
        0xC000_000E => "STATUS_NO_SUCH_DEVICE",
        0xC000_0010 => "STATUS_INVALID_DEVICE_REQUEST",
        0xC000_0017 => "STATUS_NO_MEMORY",
        0xC000_0022 => "STATUS_ACCESS_DENIED",
        0xC000_0023 => "STATUS_BUFFER_TOO_SMALL",
        0xC000_0034 => "STATUS_OBJECT_NAME_NOT_FOUND",
        0xC000_0035 => "STATUS_OBJECT_NAME_COLLISION",
        0xC000_009A => "STATUS_INSUFFICIENT_RESOURCES",
        0xC000_00BB => "STATUS_NOT_SUPPORTED",
        0xC000_00C0 => "STATUS_DEVICE_DOES_NOT_EXIST",
        0xC000_0182 => "STATUS_DEVICE_CONFIGURATION_ERROR",
        0xC000_0184 => "STATUS_INVALID_DEVICE_STATE",
        0xC000_0185 => "STATUS_IO_DEVICE_ERROR",
        0xC000_01A0 => "STATUS_DRIVER_UNABLE_TO_LOAD",
        0xC000_0263 => "STATUS_DRIVER_ENTRYPOINT_NOT_FOUND",
        0xC000_0365 => "STATUS_FAILED_DRIVER_ENTRY",
        _ => return None,
    })
}

/// The report of an image whose DriverEntry returned the failure `status`: one form for
/// `iosvctl run` and `iosvctl lab` (a scenario's `load` step), both printing it after
/// their reports and ending with [`ExitKind::LoadFailed`]. `image` is the path the user named, `driver` the
/// driver's name.
#[must_use]
pub fn driver_entry_failure(image: &std::path::Path, driver: &str, status: u32) -> String {
    format!(
        "cannot load {}: DriverEntry of {driver} failed with status {status:#010x}{}",
        image.display(),
        ntstatus_name(status).map_or_else(String::new, |n| format!(" ({n})"))
    )
}

/// Why [`parent::start`] could not give a verifiable session.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// This platform cannot run x64 driver code (only x86-64 Linux can).
    #[error("running driver images needs x86-64 Linux; this is {os}/{arch}")]
    Unsupported {
        /// `std::env::consts::OS`.
        os: &'static str,
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// The child could not be started or talked to.
    #[error("cannot run the driver host process: {0}")]
    Io(#[from] std::io::Error),
    /// The run ended without a report; `report` says what happened, `kind` which exit
    /// status it gets.
    #[error("{report}")]
    Ended {
        /// Crash, unimplemented routine, hang or load failure.
        kind: ExitKind,
        /// The whole human-readable report (several lines).
        report: String,
    },
    /// The scenario the child ran failed (a step failed, or the host could not start):
    /// the scenario's `file:line:col: ...` message.
    #[error("{0}")]
    Failed(String),
    /// The child broke the runner protocol (exited without a word, or said nonsense).
    #[error("the driver host process failed: {0}")]
    Protocol(String),
}

/// One `--bar PA:LEN` memory resource of the simulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    /// Physical base address.
    pub physical: u64,
    /// Length in bytes (a `CM_PARTIAL_RESOURCE_DESCRIPTOR` holds 32 bits).
    pub length: u32,
}

impl BarSpec {
    /// The two memory BARs a device gets when none is given: 16 KiB and 4 KiB.
    pub const DEFAULTS: [BarSpec; 2] = [
        BarSpec {
            physical: 0xF780_0000,
            length: 0x4000,
        },
        BarSpec {
            physical: 0xF781_0000,
            length: 0x1000,
        },
    ];

    /// Parses `PA:LEN` (each decimal or `0x` hex).
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (pa, len) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}`: expected PA:LEN, e.g. 0xF7800000:0x4000"))?;
        let physical = parse_u64(pa).ok_or_else(|| format!("`{pa}` is not a number"))?;
        let length = parse_u64(len)
            .and_then(|l| u32::try_from(l).ok())
            .filter(|&l| l > 0)
            .ok_or_else(|| format!("`{len}`: the length must be 1..=0xFFFFFFFF"))?;
        if physical.checked_add(u64::from(length)).is_none() {
            return Err(format!("`{text}`: the range wraps"));
        }
        Ok(Self { physical, length })
    }
}

/// One `--ioctl CODE:HEX` request sent to the device as IRP_MJ_DEVICE_CONTROL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoctlSpec {
    /// The control code.
    pub code: u32,
    /// The input buffer.
    pub input: Vec<u8>,
}

impl IoctlSpec {
    /// Parses `CODE[:HEX]`: the code decimal or `0x` hex, the input as hex bytes.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (code, hex) = text.split_once(':').unwrap_or((text, ""));
        let code = parse_u64(code)
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| format!("`{code}` is not a 32-bit control code"))?;
        let input = iosv_host::scenario::parse_hex(hex)?;
        Ok(Self { code, input })
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    let t = text.trim().replace('_', "");
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// What the child is asked to do with the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// The driver image.
    pub image: std::path::PathBuf,
    /// Memory BARs of its device ([`BarSpec::DEFAULTS`] when empty).
    pub bars: Vec<BarSpec>,
    /// IOCTLs sent after START_DEVICE, in order.
    pub ioctls: Vec<IoctlSpec>,
    /// Seconds one driver routine may run before the watchdog ends the run.
    pub watchdog_secs: u64,
    /// End the device with IRP_MN_SURPRISE_REMOVAL then IRP_MN_REMOVE_DEVICE (the device
    /// vanished) instead of QUERY_STOP/STOP and QUERY_REMOVE/REMOVE.
    pub surprise_removal: bool,
    /// Registry values the child's registry holds before `DriverEntry`.
    pub registry: Vec<regspec::RegistrySpec>,
    /// iosv's own kernel component (the glue's linked `iosv.sys`) to load first, as the
    /// verifier of the image: it hooks the image, and the reports come from it
    /// (docs/running-drivers.md, "The kernel component itself"). `None`: the runner's
    /// engine verifies.
    pub verifier: Option<std::path::PathBuf>,
}

impl fmt::Display for BarSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}:{:#x}", self.physical, self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_and_ioctl_specs_parse_and_refuse() {
        assert_eq!(
            BarSpec::parse("0xF7800000:0x4000"),
            Ok(BarSpec {
                physical: 0xF780_0000,
                length: 0x4000
            })
        );
        assert!(BarSpec::parse("0x1000").is_err());
        assert!(BarSpec::parse("0x1000:0").is_err());
        assert!(BarSpec::parse("0xffffffffffffffff:2").is_err());
        assert_eq!(
            IoctlSpec::parse("0x222000:0a0B"),
            Ok(IoctlSpec {
                code: 0x222000,
                input: vec![0x0a, 0x0b]
            })
        );
        assert_eq!(IoctlSpec::parse("8").map(|s| s.input.len()), Ok(0));
        assert!(IoctlSpec::parse("0x222000:abc").is_err());
        assert!(IoctlSpec::parse("0x222000:zz").is_err());
    }

    #[test]
    fn a_failed_driver_entry_names_the_image_the_driver_and_the_status() {
        assert_eq!(
            driver_entry_failure(std::path::Path::new("out/x.sys"), "x.sys", 0xC000_0182),
            "cannot load out/x.sys: DriverEntry of x.sys failed with status 0xc0000182 \
             (STATUS_DEVICE_CONFIGURATION_ERROR)"
        );
        assert_eq!(
            driver_entry_failure(std::path::Path::new("x.sys"), "x.sys", 0xC0DE_0001),
            "cannot load x.sys: DriverEntry of x.sys failed with status 0xc0de0001"
        );
        assert_eq!(ntstatus_name(0), None);
    }
}
