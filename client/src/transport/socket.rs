//! The host endpoint over a Unix domain socket, in the [`super::frame`] format.

use super::frame::{self, FrameError};
use super::{RawReply, Transport, TransportError};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A connection to a host endpoint (`iosvctl host serve`).
#[derive(Debug)]
pub struct SocketTransport {
    stream: UnixStream,
    path: PathBuf,
    timeout: Option<Duration>,
    /// Set after a failed exchange: the stream may be mid-frame, so it is not reused.
    broken: bool,
}

impl SocketTransport {
    /// Connects to the socket at `path`; `timeout` bounds every read and write.
    pub fn connect(
        path: &Path,
        timeout: Option<Duration>,
    ) -> Result<SocketTransport, TransportError> {
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
        stream.set_read_timeout(timeout).map_err(io_err)?;
        stream.set_write_timeout(timeout).map_err(io_err)?;
        Ok(SocketTransport {
            stream,
            path: path.to_path_buf(),
            timeout,
            broken: false,
        })
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
    fn call(
        &mut self,
        code: u32,
        input: &[u8],
        output_capacity: usize,
    ) -> Result<RawReply, TransportError> {
        if self.broken {
            return Err(TransportError::Io {
                endpoint: self.describe(),
                source: io::Error::other("connection unusable after an earlier error"),
            });
        }
        let request =
            frame::encode_request(code, input, output_capacity).map_err(|e| self.error(e))?;
        let result = frame::write_frame(&mut self.stream, &request)
            .and_then(|()| frame::read_reply(&mut self.stream, output_capacity));
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
