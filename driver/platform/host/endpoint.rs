//! The host's control endpoint: the device's control codes over a Unix domain socket.
//!
//! The transport carries exactly what `DeviceIoControl` carries — a code, an input buffer,
//! an output capacity — and returns what the I/O manager returns: a status, the
//! `Information` value and the output bytes. [`Host::control`](super::Host::control)
//! interprets every byte; this module only frames them.
//!
//! # Frames (little-endian), one request per frame, many frames per connection
//! ```text
//! request : magic u32 = FRAME_MAGIC ("IOSV"), code u32, input_len u32, output_capacity u32,
//!           then input_len bytes
//! reply   : magic u32 = FRAME_MAGIC, status u32 (NTSTATUS), information u64, output_len u32,
//!           then output_len bytes
//! ```
//! `output_len` is `information` when the status is success and 0 otherwise (for
//! STATUS_BUFFER_TOO_SMALL, `information` is the size needed). A request with another
//! magic, `input_len` above [`MAX_INPUT`] or `output_capacity` above [`MAX_OUTPUT`] gets
//! one reply with [`STATUS_INVALID_PARAMETER`] and information 0, and the connection is
//! closed. A client that disconnects mid-frame or before reading its reply harms nothing:
//! the request, if complete, is served and the reply dropped.
//!
//! # Access
//! The socket file is created with mode 0600 (the device is open to Administrators and
//! SYSTEM only; the host to its owner). A stale socket file left by a crashed host is
//! replaced; a live one (something accepts connections on it) or any other kind of file
//! at the path is an error.

use super::Host;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::vec::Vec;

pub use crate::frame::*;

/// How often the server checks its stop flag.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(50);

#[cfg(unix)]
pub use unix::{serve, spawn, EndpointHandle};

#[cfg(not(unix))]
pub use other::{serve, spawn, EndpointHandle};

/// Platforms without Unix domain sockets in std: the endpoint is unavailable.
#[cfg(not(unix))]
mod other {
    use super::*;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "the host endpoint needs Unix domain sockets",
        )
    }

    /// Serve `host` on a Unix domain socket: not available on this platform.
    pub fn serve(_host: Arc<Host>, _path: &Path, _stop: &AtomicBool) -> io::Result<()> {
        Err(unsupported())
    }

    /// Serve `host` on a background thread: not available on this platform.
    pub fn spawn(_host: Arc<Host>, _path: &Path) -> io::Result<EndpointHandle> {
        Err(unsupported())
    }

    /// An endpoint served on a background thread (never exists on this platform).
    pub struct EndpointHandle {
        _never: core::convert::Infallible,
    }

    impl EndpointHandle {
        /// The socket path.
        pub fn path(&self) -> &Path {
            match self._never {}
        }

        /// Stops the server.
        pub fn stop(self) -> io::Result<()> {
            match self._never {}
        }
    }
}

#[cfg(unix)]
mod unix {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    /// Binds the socket, replacing a stale socket file, with mode 0600.
    fn bind(path: &Path) -> io::Result<UnixListener> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    std::format!("{} exists and is not a socket", path.display()),
                ));
            }
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        std::format!("another endpoint is serving on {}", path.display()),
                    ))
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Serve `host` on a Unix domain socket at `path` until `stop` is set (checked every
    /// [`POLL`]). Each connection is served on its own thread; all are joined and the
    /// socket file removed before this returns.
    pub fn serve(host: Arc<Host>, path: &Path, stop: &AtomicBool) -> io::Result<()> {
        let listener = bind(path)?;
        run(&listener, host, path, stop)
    }

    fn run(
        listener: &UnixListener,
        host: Arc<Host>,
        path: &Path,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let closing = Arc::new(AtomicBool::new(false));
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        let result = loop {
            if stop.load(Ordering::Acquire) {
                break Ok(());
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    let host = Arc::clone(&host);
                    let closing = Arc::clone(&closing);
                    let spawned = std::thread::Builder::new()
                        .name(std::string::String::from("iosv-endpoint-conn"))
                        .spawn(move || connection(stream, &host, &closing));
                    if let Ok(h) = spawned {
                        workers.push(h);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(c) if c == 24 || c == 23 || c == 103) => {
                    // EMFILE / ENFILE / ECONNABORTED: transient; keep serving.
                    std::thread::sleep(POLL);
                }
                Err(e) => break Err(e),
            }
            let (done, running): (Vec<_>, Vec<_>) =
                workers.drain(..).partition(JoinHandle::is_finished);
            workers = running;
            for h in done {
                let _ = h.join();
            }
        };
        closing.store(true, Ordering::Release);
        for h in workers {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(path);
        result
    }

    /// Reads exactly `buf.len()` bytes, polling `closing`. `Ok(false)`: clean end of stream
    /// before the first byte (when `frame_start`), or the server is closing.
    fn read_full(
        stream: &mut UnixStream,
        buf: &mut [u8],
        closing: &AtomicBool,
        frame_start: bool,
    ) -> io::Result<bool> {
        let mut got = 0usize;
        while got < buf.len() {
            if closing.load(Ordering::Acquire) {
                return Ok(false);
            }
            let Some(rest) = buf.get_mut(got..) else {
                break;
            };
            match stream.read(rest) {
                Ok(0) if got == 0 && frame_start => return Ok(false),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => got = got.saturating_add(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn connection(mut stream: UnixStream, host: &Host, closing: &AtomicBool) {
        if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
            return;
        }
        let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(10)));
        let mut input = Vec::new();
        let mut output = Vec::new();
        loop {
            let mut hb = [0u8; REQUEST_HEADER_LEN];
            match read_full(&mut stream, &mut hb, closing, true) {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
            let h = match decode_request_header(&hb) {
                Ok(h) => h,
                Err(_) => {
                    let _ = stream.write_all(&encode_reply(STATUS_INVALID_PARAMETER, 0, &[]));
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            };
            input.clear();
            input.resize(h.input_len as usize, 0);
            match read_full(&mut stream, &mut input, closing, false) {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
            output.clear();
            output.resize(h.output_capacity as usize, 0);
            let r = host.control(h.code, &input, &mut output);
            let status = r.status as u32;
            let n = if status == 0 {
                r.information.min(output.len())
            } else {
                0
            };
            let frame = encode_reply(status, r.information as u64, output.get(..n).unwrap_or(&[]));
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
    }

    /// An endpoint served on a background thread; dropping it stops the server, joins it
    /// and removes the socket file.
    pub struct EndpointHandle {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<io::Result<()>>>,
        path: PathBuf,
    }

    impl EndpointHandle {
        /// The socket path.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// Stops the server and returns how serving ended.
        pub fn stop(mut self) -> io::Result<()> {
            self.shutdown()
        }

        fn shutdown(&mut self) -> io::Result<()> {
            self.stop.store(true, Ordering::Release);
            let r = match self.thread.take() {
                Some(t) => t
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("endpoint thread panicked"))),
                None => Ok(()),
            };
            let _ = std::fs::remove_file(&self.path);
            r
        }
    }

    impl Drop for EndpointHandle {
        fn drop(&mut self) {
            let _ = self.shutdown();
        }
    }

    /// Serves `host` at `path` on a background thread. The socket is bound before this
    /// returns, so clients can connect at once.
    pub fn spawn(host: Arc<Host>, path: &Path) -> io::Result<EndpointHandle> {
        let listener = bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let owned = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name(std::string::String::from("iosv-endpoint"))
            .spawn(move || run(&listener, host, &owned, &flag))?;
        Ok(EndpointHandle {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }
}
