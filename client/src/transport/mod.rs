//! How control requests reach an iosv endpoint.
//!
//! A [`Transport`] moves one request — IOCTL code, input bytes, output capacity — and
//! brings back the NTSTATUS, `Information` and output bytes, exactly as `DeviceIoControl`
//! would. Three exist:
//!
//! - [`socket::SocketTransport`] (Unix): the host endpoint's Unix domain socket, in the
//!   [`iosv::frame`] format;
//! - `windows::DeviceTransport` (Windows): the control device `\\.\IoSpaceVerifier`;
//! - `inproc::InProcess` (feature `host`): a [`iosv_host::Host`] in this
//!   process, for `iosvctl lab`.
//!
//! [`Endpoint`] names one of them as the user chose it on the command line and opens it.

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

impl RawReply {
    /// The reply of a request served in this process by `iosv::control`: `output` is the
    /// buffer it wrote into, kept up to `information` bytes on success, none otherwise.
    pub fn from_control(reply: iosv::control::Reply, mut output: Vec<u8>) -> RawReply {
        let valid = if reply.status == Status::Success {
            reply.information.min(output.len())
        } else {
            0
        };
        output.truncate(valid);
        RawReply {
            status: reply.status as u32,
            information: reply.information as u64,
            output,
        }
    }
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
        source: iosv::frame::FrameError,
    },
    /// This transport does not exist on this platform or build.
    #[error("{0}")]
    Unsupported(String),
}

/// What one [`Transport::call`] brings back: the reply, or why there is none.
pub type CallResult = Result<RawReply, TransportError>;

/// One way to reach an endpoint. Implementations are synchronous: one request at a time.
pub trait Transport {
    /// Sends a request and waits for its reply.
    fn call(&mut self, code: u32, input: &[u8], output_capacity: usize) -> CallResult;
    /// The endpoint, as people name it (`host socket /run/user/1000/iosv.sock`).
    fn describe(&self) -> String;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn call(&mut self, code: u32, input: &[u8], output_capacity: usize) -> CallResult {
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

    /// Opens the endpoint; `timeout` bounds each socket read and write. A host socket
    /// must be served by this user (or root) unless `allow_other_user`.
    pub fn open(
        &self,
        timeout: Option<Duration>,
        allow_other_user: bool,
    ) -> Result<Box<dyn Transport>, TransportError> {
        match self {
            Endpoint::Device => open_device(),
            Endpoint::Socket(path) => open_socket(path, timeout, allow_other_user),
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
    allow_other_user: bool,
) -> Result<Box<dyn Transport>, TransportError> {
    if path == default_socket_path() {
        if let Some(dir) = path.parent() {
            check_private_dir(dir).map_err(|e| TransportError::Connect {
                endpoint: format!("host socket {}", path.display()),
                source: e,
                hint: String::new(),
            })?;
        }
    }
    Ok(Box::new(socket::SocketTransport::connect(
        path,
        timeout,
        allow_other_user,
    )?))
}

#[cfg(not(unix))]
fn open_socket(
    path: &Path,
    _timeout: Option<Duration>,
    _allow_other_user: bool,
) -> Result<Box<dyn Transport>, TransportError> {
    Err(TransportError::Unsupported(format!(
        "host sockets ({}) are Unix domain sockets, which this build does not support",
        path.display()
    )))
}

/// Where a host endpoint listens unless told otherwise: `$XDG_RUNTIME_DIR/iosv.sock` (a
/// directory private to the user by the XDG spec), or `iosv.sock` in the private directory
/// `/tmp/iosv-$UID/` when that variable is unset or empty (see [`prepare_private_dir`]).
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("iosv.sock"),
        _ => std::env::temp_dir()
            .join(format!("iosv-{}", user_id()))
            .join("iosv.sock"),
    }
}

/// Checks that `dir` is a directory (not a symbolic link) owned by this user and closed to
/// everyone else (no group or other permission bits): a directory another user made in a
/// world-writable place (squatting the default path) is refused.
#[cfg(unix)]
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = user_id();
    let problem = if !meta.file_type().is_dir() {
        Some("is not a directory".to_string())
    } else if meta.uid() != uid {
        Some(format!(
            "belongs to uid {}, not to you (uid {uid})",
            meta.uid()
        ))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!(
            "is open to other users (mode {:o}; it must be 0700)",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} {p}: refusing to use it for the host socket (remove it, or pass --host / --socket PATH)",
                dir.display()
            ),
        )),
    }
}

/// Creates `dir` with mode 0700 if it does not exist, then [`check_private_dir`]s it.
#[cfg(unix)]
pub fn prepare_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private_dir(dir)
}

/// This process's user id.
#[cfg(unix)]
pub fn user_id() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(not(unix))]
/// This process's user id (0: no such notion here).
pub fn user_id() -> u32 {
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
            _ => assert!(p.ends_with(format!("iosv-{}/iosv.sock", user_id()))),
        }
    }

    #[cfg(not(windows))]
    #[test]
    fn device_is_refused_off_windows_with_a_hint() {
        let e = Endpoint::Device
            .open(None, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--host"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn the_default_socket_directory_must_be_private_and_ours() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("iosv-priv-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("d");
        prepare_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A squatter's directory open to others is refused, not used.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_private_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("open to other users"), "{e}");
        // So is a symbolic link to a private directory.
        let link = base.join("l");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = check_private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        // And one that belongs to another user (only root can make one here).
        if user_id() == 0 {
            let other = base.join("o");
            std::fs::create_dir(&other).unwrap();
            std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), None).unwrap();
            let e = check_private_dir(&other).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
