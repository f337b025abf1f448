//! How control requests reach an iosv endpoint.
//!
//! A [`Transport`] moves one request — IOCTL code, input bytes, output capacity — and
//! brings back the NTSTATUS, `Information` and output bytes, exactly as `DeviceIoControl`
//! would. Three exist:
//!
//! - [`socket::SocketTransport`] (Unix): the host endpoint's Unix domain socket, in the
//!   [`frame`] format;
//! - `windows::DeviceTransport` (Windows): the control device `\\.\IoSpaceVerifier`;
//! - `inproc::InProcess` (feature `host`): a [`iosv::platform::host::Host`] in this
//!   process, for `iosvctl lab`.
//!
//! [`Endpoint`] names one of them as the user chose it on the command line and opens it.

pub mod frame;
#[cfg(feature = "host")]
pub mod inproc;
#[cfg(unix)]
pub mod socket;
#[cfg(windows)]
pub mod windows;

use iosv::protocol::Status;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What an endpoint answered to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The NTSTATUS (see [`iosv::protocol::Status`]); raw, since a peer may send any value.
    pub status: u32,
    /// `IoStatus.Information`: output bytes written, or the size required when the status
    /// is STATUS_BUFFER_TOO_SMALL (0 when the transport cannot tell).
    pub information: u64,
    /// The output bytes returned (never more than the capacity asked for).
    pub output: Vec<u8>,
}

/// Why a request did not reach the endpoint or its reply did not come back whole.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint could not be opened.
    #[error("cannot connect to {endpoint}: {source}{hint}")]
    Connect {
        /// The endpoint, as people name it.
        endpoint: String,
        /// The OS error.
        source: io::Error,
        /// What to do about it (may be empty; starts with "; " otherwise).
        hint: String,
    },
    /// A read or write on an open endpoint failed.
    #[error("I/O error talking to {endpoint}: {source}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// The endpoint did not answer within the timeout.
    #[error("{endpoint} did not answer within {timeout:?} (is the host alive?)")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The reply was cut short or is not a valid frame.
    #[error("bad reply from {endpoint}: {source}")]
    Frame {
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        source: frame::FrameError,
    },
    /// This transport does not exist on this platform or build.
    #[error("{0}")]
    Unsupported(String),
}

/// One way to reach an endpoint. Implementations are synchronous: one request at a time.
pub trait Transport {
    /// Sends a request and waits for its reply.
    fn call(
        &mut self,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<RawReply, TransportError>;
    /// The endpoint, as people name it (`host socket /run/user/1000/iosv.sock`).
    fn describe(&self) -> String;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn call(
        &mut self,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<RawReply, TransportError> {
        (**self).call(code, input, output_capacity)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// The endpoint the user selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The Windows control device.
    Device,
    /// A host endpoint's Unix domain socket.
    Socket(PathBuf),
}

impl Endpoint {
    /// The default for this OS: the device on Windows, the host socket elsewhere.
    pub fn default_for_os() -> Endpoint {
        if cfg!(windows) {
            Endpoint::Device
        } else {
            Endpoint::Socket(default_socket_path())
        }
    }

    /// Opens the endpoint; `timeout` bounds each socket read and write.
    pub fn open(&self, timeout: Option<Duration>) -> Result<Box<dyn Transport>, TransportError> {
        match self {
            Endpoint::Device => open_device(),
            Endpoint::Socket(path) => open_socket(path, timeout),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Device => write!(f, "device {}", iosv::protocol::WIN32_DEVICE_PATH),
            Endpoint::Socket(p) => write!(f, "host socket {}", p.display()),
        }
    }
}

#[cfg(windows)]
fn open_device() -> Result<Box<dyn Transport>, TransportError> {
    Ok(Box::new(windows::DeviceTransport::open()?))
}

#[cfg(not(windows))]
fn open_device() -> Result<Box<dyn Transport>, TransportError> {
    Err(TransportError::Unsupported(format!(
        "the control device {} exists only on Windows; use --host PATH to reach a host endpoint",
        iosv::protocol::WIN32_DEVICE_PATH
    )))
}

#[cfg(unix)]
fn open_socket(
    path: &Path,
    timeout: Option<Duration>,
) -> Result<Box<dyn Transport>, TransportError> {
    Ok(Box::new(socket::SocketTransport::connect(path, timeout)?))
}

#[cfg(not(unix))]
fn open_socket(
    path: &Path,
    _timeout: Option<Duration>,
) -> Result<Box<dyn Transport>, TransportError> {
    Err(TransportError::Unsupported(format!(
        "host sockets ({}) are Unix domain sockets, which this build does not support",
        path.display()
    )))
}

/// Where a host endpoint listens unless told otherwise: `$XDG_RUNTIME_DIR/iosv.sock`, or
/// `/tmp/iosv-$UID.sock` when that variable is unset or empty.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("iosv.sock"),
        _ => std::env::temp_dir().join(format!("iosv-{}.sock", user_id())),
    }
}

#[cfg(unix)]
fn user_id() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(not(unix))]
fn user_id() -> u32 {
    0
}

/// The iosv status a Win32 error code from `DeviceIoControl` stands for: the inverse of
/// `RtlNtStatusToDosError` over the NTSTATUS values iosv returns. Lossy where Windows is:
/// STATUS_INVALID_PARAMETER and STATUS_INVALID_PARAMETER_2 both become
/// ERROR_INVALID_PARAMETER (87), reported here as [`Status::ReservedNotZero`].
pub fn status_from_win32(error: u32) -> Option<Status> {
    Some(match error {
        122 | 234 => Status::OutputTooSmall, // ERROR_INSUFFICIENT_BUFFER, ERROR_MORE_DATA
        24 => Status::InputTooLong,          // ERROR_BAD_LENGTH
        87 => Status::ReservedNotZero,       // ERROR_INVALID_PARAMETER
        1 => Status::UnknownCode,            // ERROR_INVALID_FUNCTION
        1306 => Status::RevisionMismatch,    // ERROR_REVISION_MISMATCH
        1168 => Status::NotFound,            // ERROR_NOT_FOUND
        50 => Status::NotSupported,          // ERROR_NOT_SUPPORTED
        1784 => Status::InputTooShort,       // ERROR_INVALID_USER_BUFFER
        1450 => Status::NoResources,         // ERROR_NO_SYSTEM_RESOURCES
        193 => Status::BadImage,             // ERROR_BAD_EXE_FORMAT
        31 => Status::SlotChanged,           // ERROR_GEN_FAILURE
        19 => Status::HookRefused,           // ERROR_WRITE_PROTECT
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn win32_errors_map_back_to_statuses() {
        assert_eq!(status_from_win32(122), Some(Status::OutputTooSmall));
        assert_eq!(status_from_win32(1306), Some(Status::RevisionMismatch));
        assert_eq!(status_from_win32(5), None); // access denied is a transport error
    }

    #[test]
    fn default_socket_path_prefers_xdg_runtime_dir() {
        let p = default_socket_path();
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => assert_eq!(p, Path::new(&d).join("iosv.sock")),
            _ => assert!(p.to_string_lossy().contains("iosv-")),
        }
    }

    #[cfg(not(windows))]
    #[test]
    fn device_is_refused_off_windows_with_a_hint() {
        let e = Endpoint::Device
            .open(None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--host"), "{e}");
    }
}
