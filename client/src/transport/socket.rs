//! The host endpoint over a Unix domain socket, in the [`iosv::frame`] format.

use super::{CallResult, RawReply, Transport, TransportError};
use iosv::frame::{self, FrameError};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A connection idle this long is replaced by a fresh one before the next request: the
/// host closes connections idle for a minute (its `Limits::idle_timeout`).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(30);

/// A connection to a host endpoint (`iosvctl host serve`).
#[derive(Debug)]
pub struct SocketTransport {
    stream: UnixStream,
    path: PathBuf,
    timeout: Option<Duration>,
    allow_other_user: bool,
    last_used: Instant,
    /// Set after a failed exchange: the stream may be mid-frame, so it is not reused.
    broken: bool,
}

/// The user id of the process at the other end of `stream` (SO_PEERCRED on Linux,
/// getpeereid elsewhere).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `stream`; `cred` and `len` are valid for
    // writes of the size passed, which is the size of `ucred` SO_PEERCRED fills.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// The user id of the process at the other end of `stream` (SO_PEERCRED on Linux,
/// getpeereid elsewhere).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut uid: libc::uid_t = 0;
    let mut gid: libc::gid_t = 0;
    // SAFETY: the fd is a live socket owned by `stream`; both out-pointers are valid.
    let r = unsafe { libc::getpeereid(stream.as_raw_fd(), &raw mut uid, &raw mut gid) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid)
}

/// Accepts a server running as `peer` for a client running as `me`: the same user, or
/// root (who can read and forge anything of the user's anyway).
pub fn check_peer(peer: u32, me: u32) -> io::Result<()> {
    if peer == me || peer == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the server runs as uid {peer}, not as you (uid {me}) or root"),
        ))
    }
}

impl SocketTransport {
    /// Connects to the socket at `path`; `timeout` bounds every read and write. The
    /// server must run as this user or root (checked with the peer's credentials), unless
    /// `allow_other_user`: another user's server could feed this client made-up reports.
    pub fn connect(
        path: &Path,
        timeout: Option<Duration>,
        allow_other_user: bool,
    ) -> Result<SocketTransport, TransportError> {
        let stream = Self::open(path, timeout, allow_other_user)?;
        Ok(SocketTransport {
            stream,
            path: path.to_path_buf(),
            timeout,
            allow_other_user,
            last_used: Instant::now(),
            broken: false,
        })
    }

    fn open(
        path: &Path,
        timeout: Option<Duration>,
        allow_other_user: bool,
    ) -> Result<UnixStream, TransportError> {
        let endpoint = format!("host socket {}", path.display());
        let stream = UnixStream::connect(path).map_err(|source| {
            let hint = match source.kind() {
                io::ErrorKind::NotFound => {
                    "; nothing exists at that path (start a host with `iosvctl host serve --socket PATH` or pass --host PATH)"
                }
                io::ErrorKind::ConnectionRefused => "; nothing is listening there (the host that made it has exited?)",
                io::ErrorKind::PermissionDenied => "; permission denied (the socket belongs to another user?)",
                _ => "",
            };
            TransportError::Connect { endpoint: endpoint.clone(), source, hint: hint.to_string() }
        })?;
        let io_err = |source| TransportError::Io {
            endpoint: endpoint.clone(),
            source,
        };
        if !allow_other_user {
            let peer = peer_uid(&stream).map_err(io_err)?;
            check_peer(peer, super::user_id()).map_err(|source| TransportError::Connect {
                endpoint: endpoint.clone(),
                source,
                hint: "; pass --allow-other-user to trust it".to_string(),
            })?;
        }
        stream.set_read_timeout(timeout).map_err(io_err)?;
        stream.set_write_timeout(timeout).map_err(io_err)?;
        Ok(stream)
    }

    fn error(&self, e: FrameError) -> TransportError {
        let endpoint = self.describe();
        match e {
            FrameError::Io(source)
                if matches!(
                    source.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                TransportError::Timeout {
                    endpoint,
                    timeout: self.timeout.unwrap_or_default(),
                }
            }
            FrameError::Io(source) => TransportError::Io { endpoint, source },
            source => TransportError::Frame { endpoint, source },
        }
    }
}

impl Transport for SocketTransport {
    fn call(&mut self, code: u32, input: &[u8], output_capacity: usize) -> CallResult {
        if self.broken {
            return Err(TransportError::Io {
                endpoint: self.describe(),
                source: io::Error::other("connection unusable after an earlier error"),
            });
        }
        // The client never asks for more than `iosv::frame::MAX_OUTPUT`; a larger capacity
        // is refused by the encoder.
        let capacity = u32::try_from(output_capacity).unwrap_or(u32::MAX);
        let request = frame::encode_request(code, input, capacity).map_err(|e| self.error(e))?;
        if self.last_used.elapsed() >= RECONNECT_AFTER {
            // The host may have closed this idle connection; nothing was sent on it since.
            self.stream = Self::open(&self.path, self.timeout, self.allow_other_user)?;
        }
        let result = frame::write_frame(&mut self.stream, &request)
            .and_then(|()| frame::read_reply(&mut self.stream, output_capacity));
        self.last_used = Instant::now();
        match result {
            Ok((header, output)) => Ok(RawReply {
                status: header.status,
                information: header.information,
                output,
            }),
            Err(e) => {
                self.broken = true;
                Err(self.error(e))
            }
        }
    }

    fn describe(&self) -> String {
        format!("host socket {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_or_roots_server_is_trusted() {
        assert!(check_peer(1000, 1000).is_ok());
        assert!(check_peer(0, 1000).is_ok());
        let e = check_peer(1001, 1000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("uid 1001"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_uid(&a).unwrap(), super::super::user_id());
    }
}
