//! [`HostError`]: why an operation of the host failed.

use crate::PnpState;
use iosv::protocol::Status;
use iosv::rules::RuleId;
use std::fmt;
use std::string::String;

/// Why a host operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The verifier could not allocate its fixed memory.
    OutOfMemory,
    /// No driver of that name was declared or loaded.
    UnknownDriver(String),
    /// The driver is not loaded.
    NotLoaded(String),
    /// The driver is loaded already.
    AlreadyLoaded(String),
    /// The driver cannot unload while it has devices.
    HasDevices {
        /// The driver.
        driver: String,
        /// One of its devices.
        device: String,
    },
    /// No device of that name.
    UnknownDevice(String),
    /// A device of that name exists already.
    DeviceExists(String),
    /// The device is not in a state that allows the operation.
    DeviceState {
        /// The device.
        device: String,
        /// Its state.
        state: PnpState,
        /// The operation refused.
        operation: &'static str,
    },
    /// A map the operation needs returned NULL.
    MapFailed(&'static str),
    /// The bug needs a device and none was given.
    NeedsDevice(RuleId),
    /// IOSV012 needs a second loaded, hooked driver and there is none.
    NoForeignDriver,
    /// A control request failed with this status.
    Control(Status),
    /// A driver's import slot held an address that is neither a hook nor a routine.
    BadCallTarget(u64),
    /// Too many drivers or devices for the simulated system.
    NoResources,
    /// The configuration holds [`MAX_TARGETS`](iosv::protocol::MAX_TARGETS) target names
    /// already; this one does not fit.
    TargetsFull(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::OutOfMemory => write!(f, "the verifier could not allocate its memory"),
            HostError::UnknownDriver(d) => write!(f, "no driver named `{d}`"),
            HostError::NotLoaded(d) => write!(f, "driver `{d}` is not loaded"),
            HostError::AlreadyLoaded(d) => write!(f, "driver `{d}` is already loaded"),
            HostError::HasDevices { driver, device } => {
                write!(f, "driver `{driver}` still has device `{device}`; remove its devices before unloading")
            }
            HostError::UnknownDevice(d) => write!(f, "no device named `{d}`"),
            HostError::DeviceExists(d) => write!(f, "device `{d}` exists already"),
            HostError::DeviceState {
                device,
                state,
                operation,
            } => {
                write!(
                    f,
                    "cannot {operation} device `{device}`: it is {}",
                    state.name()
                )
            }
            HostError::MapFailed(what) => {
                write!(f, "the simulated MmMapIoSpace returned NULL ({what})")
            }
            HostError::NeedsDevice(r) => write!(f, "{} needs a device", r.info().code),
            HostError::NoForeignDriver => {
                write!(
                    f,
                    "IOSV012 needs a second loaded driver that iosv is attached to"
                )
            }
            HostError::Control(s) => write!(
                f,
                "control request failed: {} ({:#010X})",
                s.describe(),
                *s as u32
            ),
            HostError::BadCallTarget(a) => {
                write!(f, "import slot holds {a:#x}, neither a hook nor a routine")
            }
            HostError::NoResources => {
                write!(f, "the simulated system is out of driver or device slots")
            }
            HostError::TargetsFull(name) => write!(
                f,
                "cannot make `{name}` a target: the configuration holds at most {} target drivers",
                iosv::protocol::MAX_TARGETS
            ),
        }
    }
}

impl std::error::Error for HostError {}
