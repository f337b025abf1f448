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
//! # Resources
//! Every resource a client can make the server hold is bounded ([`Limits`]): at most
//! [`Limits::max_connections`] connections (one more is answered with
//! [`STATUS_INSUFFICIENT_RESOURCES`] and closed); a connection that sends nothing for
//! [`Limits::idle_timeout`], or takes longer than [`Limits::frame_timeout`] to send one
//! request, or does not take its reply within [`Limits::write_timeout`], is closed. The
//! output buffer of a request is allocated for that request only and sized by what the
//! control code can produce ([`reply_bound`]), not by the capacity the client names; all
//! buffers together stay within [`Limits::reply_budget`] (a request that does not fit waits
//! up to [`Limits::frame_timeout`], then gets [`STATUS_INSUFFICIENT_RESOURCES`]).
//!
//! # Access
//! The socket is bound in a private directory (mode 0700) next to its final path, given
//! mode 0600 there, and renamed into place: no other user can connect at any moment,
//! whatever the umask (the device is open to Administrators and SYSTEM only; the host to
//! its owner). A stale socket file left by a crashed host is replaced; a live one
//! (something accepts connections on it) or any other kind of file at the path is an
//! error.

use super::Host;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

pub use iosv::frame::*;

/// How often the server checks its stop flag.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// STATUS_INSUFFICIENT_RESOURCES: the reply to a connection beyond
/// [`Limits::max_connections`] or a request whose reply does not fit
/// [`Limits::reply_budget`].
pub const STATUS_INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;

/// Records a reply of READ_VIOLATIONS or LIST_MAPPINGS carries at most, whatever the
/// request's `max_records` (a client reads on from the reply's cursor).
pub const MAX_RECORDS_PER_REPLY: usize = 4096;

/// Output bytes granted to a control code whose reply is one fixed struct.
pub const FIXED_REPLY_BOUND: usize = 64 * 1024;

/// What the server lets clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (default 64).
    pub max_connections: usize,
    /// Bytes of reply buffers held by all connections together (default 64 MiB).
    pub reply_budget: usize,
    /// A connection that sends no request for this long is closed (default 60 s; the
    /// client reconnects on its own after a pause).
    pub idle_timeout: std::time::Duration,
    /// A request must arrive whole within this long of its first byte (default 10 s).
    pub frame_timeout: std::time::Duration,
    /// A reply must be taken within this long, else the connection is closed (default
    /// 10 s; a stopping server waits at most [`POLL`] for it).
    pub write_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            reply_budget: 64 * 1024 * 1024,
            idle_timeout: std::time::Duration::from_secs(60),
            frame_timeout: std::time::Duration::from_secs(10),
            write_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// What the server did about its limits (for tests and diagnostics).
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Connections accepted and served.
    pub connections: AtomicU64,
    /// Connections refused because [`Limits::max_connections`] were open.
    pub refused_connections: AtomicU64,
    /// Connections closed for idling, a slow request or an untaken reply.
    pub timed_out: AtomicU64,
    /// Requests refused because their reply did not fit [`Limits::reply_budget`].
    pub refused_requests: AtomicU64,
    /// Reply buffer bytes held now.
    pub reply_bytes: AtomicUsize,
    /// Most reply buffer bytes held at once.
    pub peak_reply_bytes: AtomicUsize,
}

/// The output bytes a request can use: what control code `code` can produce for `input`
/// now, at most `capacity`. READ_VIOLATIONS: the records from the cursor to the journal's
/// tail, at most the journal's size and [`MAX_RECORDS_PER_REPLY`]; LIST_MAPPINGS: at most
/// [`MAX_RECORDS_PER_REPLY`] records; GET_STATS: one row per driver slot; every other code:
/// [`FIXED_REPLY_BOUND`]. A bound below what the reply needs only shortens a
/// cursor-based read (the client reads on), as a smaller buffer would.
pub fn reply_bound(host: &Host, code: u32, input: &[u8], capacity: usize) -> usize {
    use core::mem::size_of;
    use iosv::protocol::{
        DriverStats, ListMappingsReply, ListMappingsRequest, MappingRecord, ReadViolationsReply,
        ReadViolationsRequest, StatsReply, StatsRequest, ViolationRecord, IOCTL_GET_STATS,
        IOCTL_LIST_MAPPINGS, IOCTL_READ_VIOLATIONS,
    };
    use zerocopy::FromBytes;
    let records = |header: usize, item: usize, n: usize| {
        header.saturating_add(n.clamp(1, MAX_RECORDS_PER_REPLY).saturating_mul(item))
    };
    let bound = match code {
        IOCTL_READ_VIOLATIONS => match ReadViolationsRequest::read_from_prefix(input) {
            Ok((r, _)) => {
                let j = host.verifier().journal();
                let held = j.tail().saturating_sub(r.cursor).min(j.capacity());
                let n = usize::try_from(held.min(u64::from(r.max_records))).unwrap_or(usize::MAX);
                records(
                    size_of::<ReadViolationsReply>(),
                    size_of::<ViolationRecord>(),
                    n,
                )
            }
            Err(_) => FIXED_REPLY_BOUND,
        },
        IOCTL_LIST_MAPPINGS => match ListMappingsRequest::read_from_prefix(input) {
            Ok((r, _)) => records(
                size_of::<ListMappingsReply>(),
                size_of::<MappingRecord>(),
                r.max_records as usize,
            ),
            Err(_) => FIXED_REPLY_BOUND,
        },
        IOCTL_GET_STATS => match StatsRequest::read_from_prefix(input) {
            Ok((r, _)) => size_of::<StatsReply>().saturating_add(
                (r.max_drivers as usize)
                    .min(iosv::drivers::MAX_DRIVERS)
                    .saturating_mul(size_of::<DriverStats>()),
            ),
            Err(_) => FIXED_REPLY_BOUND,
        },
        _ => FIXED_REPLY_BOUND,
    };
    bound.min(capacity)
}

#[cfg(unix)]
pub use unix::{bind, serve, spawn, spawn_with, Bound, EndpointHandle};

#[cfg(not(unix))]
pub use other::{bind, serve, spawn, spawn_with, Bound, EndpointHandle};

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

    /// A bound socket (never exists on this platform).
    pub struct Bound {
        _never: core::convert::Infallible,
    }

    impl Bound {
        /// Serves until `stop` is set: not available on this platform.
        pub fn serve(
            self,
            _host: Arc<Host>,
            _stop: &AtomicBool,
            _limits: Limits,
        ) -> io::Result<()> {
            match self._never {}
        }
    }

    /// Binds the socket: not available on this platform.
    pub fn bind(_path: &Path) -> io::Result<Bound> {
        Err(unsupported())
    }

    /// Serve `host` on a Unix domain socket: not available on this platform.
    pub fn serve(_host: Arc<Host>, _path: &Path, _stop: &AtomicBool) -> io::Result<()> {
        Err(unsupported())
    }

    /// Serve `host` on a background thread: not available on this platform.
    pub fn spawn(_host: Arc<Host>, _path: &Path) -> io::Result<EndpointHandle> {
        Err(unsupported())
    }

    /// Serve `host` on a background thread: not available on this platform.
    pub fn spawn_with(
        _host: Arc<Host>,
        _path: &Path,
        _limits: Limits,
    ) -> io::Result<EndpointHandle> {
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

        /// What the server did about its limits.
        pub fn stats(&self) -> &EndpointStats {
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
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};
    use std::vec::Vec;

    /// A socket bound at its path and listening, not yet served.
    pub struct Bound {
        listener: UnixListener,
        path: PathBuf,
    }

    impl Bound {
        /// The socket path.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// Serves `host` until `stop` is set (checked every [`POLL`]). Each connection is
        /// served on its own thread; all are joined and the socket file removed before
        /// this returns.
        pub fn serve(self, host: Arc<Host>, stop: &AtomicBool, limits: Limits) -> io::Result<()> {
            run(
                &self.listener,
                host,
                &self.path,
                stop,
                limits,
                &Arc::new(EndpointStats::default()),
            )
        }
    }

    impl Drop for Bound {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Removes the private bind directory (and anything left in it) when dropped.
    struct BindDir(PathBuf);

    impl Drop for BindDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Binds the socket at `path` with mode 0600 from its first moment: bound inside a
    /// fresh private directory (0700) in the same directory, then renamed into place. A
    /// stale socket file is replaced; a live socket or another kind of file is an error.
    pub fn bind(path: &Path) -> io::Result<Bound> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    std::format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    std::format!("another endpoint is serving on {}", path.display()),
                ));
            }
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = parent.join(std::format!(
            ".iosv-bind-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let dir = BindDir(dir);
        // The umask may have cleared bits of 0700, never added any; make it exact.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700))?;
        let tmp = dir.0.join("s");
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        listener.set_nonblocking(true)?;
        Ok(Bound {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serve `host` on a Unix domain socket at `path` with the default [`Limits`] until
    /// `stop` is set (see [`Bound::serve`]).
    pub fn serve(host: Arc<Host>, path: &Path, stop: &AtomicBool) -> io::Result<()> {
        bind(path)?.serve(host, stop, Limits::default())
    }

    /// Reserved reply bytes, given back when dropped.
    struct Reservation<'a> {
        stats: &'a EndpointStats,
        bytes: usize,
    }

    impl Drop for Reservation<'_> {
        fn drop(&mut self) {
            self.stats
                .reply_bytes
                .fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }

    /// Reserves `bytes` of the reply budget, waiting up to `wait` (and while not
    /// `closing`) for other replies to finish.
    fn reserve<'a>(
        stats: &'a EndpointStats,
        budget: usize,
        bytes: usize,
        wait: Duration,
        closing: &AtomicBool,
    ) -> Option<Reservation<'a>> {
        let until = Instant::now().checked_add(wait);
        loop {
            let now = stats.reply_bytes.load(Ordering::Acquire);
            let after = now.saturating_add(bytes);
            if after <= budget {
                if stats
                    .reply_bytes
                    .compare_exchange(now, after, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    stats.peak_reply_bytes.fetch_max(after, Ordering::AcqRel);
                    return Some(Reservation { stats, bytes });
                }
                continue;
            }
            if closing.load(Ordering::Acquire) || until.is_none_or(|u| Instant::now() >= u) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn run(
        listener: &UnixListener,
        host: Arc<Host>,
        path: &Path,
        stop: &AtomicBool,
        limits: Limits,
        stats: &Arc<EndpointStats>,
    ) -> io::Result<()> {
        let closing = Arc::new(AtomicBool::new(false));
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        let result = loop {
            if stop.load(Ordering::Acquire) {
                break Ok(());
            }
            let (done, running): (Vec<_>, Vec<_>) =
                workers.drain(..).partition(JoinHandle::is_finished);
            workers = running;
            for h in done {
                let _ = h.join();
            }
            match listener.accept() {
                Ok((stream, _)) if workers.len() >= limits.max_connections => {
                    stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                    refuse(stream);
                }
                Ok((stream, _)) => {
                    let host = Arc::clone(&host);
                    let closing = Arc::clone(&closing);
                    let st = Arc::clone(stats);
                    let spawned = std::thread::Builder::new()
                        .name(std::string::String::from("iosv-endpoint-conn"))
                        .spawn(move || connection(stream, &host, &closing, &limits, &st));
                    if let Ok(h) = spawned {
                        stats.connections.fetch_add(1, Ordering::Relaxed);
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
        };
        closing.store(true, Ordering::Release);
        for h in workers {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(path);
        result
    }

    /// Answers a connection beyond the limit with one STATUS_INSUFFICIENT_RESOURCES reply
    /// (20 bytes, which a fresh socket's buffer always takes) and closes it.
    fn refuse(stream: UnixStream) {
        let _ = stream.set_nonblocking(true);
        let mut s = stream;
        let _ = s.write_all(&encode_reply(STATUS_INSUFFICIENT_RESOURCES, 0, &[]));
        let _ = s.shutdown(std::net::Shutdown::Both);
    }

    /// How a read of a whole frame part ended.
    enum Got {
        /// All bytes read.
        All,
        /// Clean end of stream before the first byte, or the server is closing.
        End,
        /// Idle too long, or the frame took too long.
        TimedOut,
    }

    /// Reads exactly `buf.len()` bytes, polling `closing`, by `deadline` (`None`: the idle
    /// deadline applies until the first byte, then `frame_deadline`).
    fn read_full(
        stream: &mut UnixStream,
        buf: &mut [u8],
        closing: &AtomicBool,
        frame_start: bool,
        idle_deadline: Instant,
        frame_timeout: Duration,
        frame_deadline: &mut Option<Instant>,
    ) -> io::Result<Got> {
        let mut got = 0usize;
        while got < buf.len() {
            if closing.load(Ordering::Acquire) {
                return Ok(Got::End);
            }
            let deadline = frame_deadline.unwrap_or(idle_deadline);
            if Instant::now() >= deadline {
                return Ok(Got::TimedOut);
            }
            let Some(rest) = buf.get_mut(got..) else {
                break;
            };
            match stream.read(rest) {
                Ok(0) if got == 0 && frame_start && frame_deadline.is_none() => {
                    return Ok(Got::End)
                }
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    if frame_deadline.is_none() {
                        *frame_deadline = Some(
                            Instant::now()
                                .checked_add(frame_timeout)
                                .unwrap_or_else(Instant::now),
                        );
                    }
                    got = got.saturating_add(n);
                }
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
        Ok(Got::All)
    }

    /// Writes `frame`, polling `closing` every [`POLL`]; false if the reply was not taken
    /// within `timeout`, the server is closing, or the peer is gone.
    fn write_full(
        stream: &mut UnixStream,
        frame: &[u8],
        closing: &AtomicBool,
        timeout: Duration,
    ) -> bool {
        let until = Instant::now().checked_add(timeout);
        let mut sent = 0usize;
        while sent < frame.len() {
            if closing.load(Ordering::Acquire) || until.is_none_or(|u| Instant::now() >= u) {
                return false;
            }
            let Some(rest) = frame.get(sent..) else {
                break;
            };
            match stream.write(rest) {
                Ok(0) => return false,
                Ok(n) => sent = sent.saturating_add(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn connection(
        mut stream: UnixStream,
        host: &Host,
        closing: &AtomicBool,
        limits: &Limits,
        stats: &EndpointStats,
    ) {
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(Some(POLL)).is_err()
            || stream.set_write_timeout(Some(POLL)).is_err()
        {
            return;
        }
        let timed_out = || {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        };
        let mut input = Vec::new();
        loop {
            let idle_deadline = Instant::now()
                .checked_add(limits.idle_timeout)
                .unwrap_or_else(Instant::now);
            let mut frame_deadline = None;
            let mut hb = [0u8; REQUEST_HEADER_LEN];
            match read_full(
                &mut stream,
                &mut hb,
                closing,
                true,
                idle_deadline,
                limits.frame_timeout,
                &mut frame_deadline,
            ) {
                Ok(Got::All) => {}
                Ok(Got::TimedOut) => return timed_out(),
                Ok(Got::End) | Err(_) => return,
            }
            let h = match decode_request_header(&hb) {
                Ok(h) => h,
                Err(_) => {
                    let _ = write_full(
                        &mut stream,
                        &encode_reply(STATUS_INVALID_PARAMETER, 0, &[]),
                        closing,
                        limits.write_timeout,
                    );
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            };
            input.clear();
            input.resize(h.input_len as usize, 0);
            match read_full(
                &mut stream,
                &mut input,
                closing,
                false,
                idle_deadline,
                limits.frame_timeout,
                &mut frame_deadline,
            ) {
                Ok(Got::All) => {}
                Ok(Got::TimedOut) => return timed_out(),
                Ok(Got::End) | Err(_) => return,
            }
            let grant = reply_bound(host, h.code, &input, h.output_capacity as usize);
            let frame = match reserve(
                stats,
                limits.reply_budget,
                grant,
                limits.frame_timeout,
                closing,
            ) {
                Some(reservation) => {
                    let mut output = std::vec![0u8; grant];
                    let r = host.control(h.code, &input, &mut output);
                    let status = r.status as u32;
                    let n = if status == 0 {
                        r.information.min(output.len())
                    } else {
                        0
                    };
                    let frame =
                        encode_reply(status, r.information as u64, output.get(..n).unwrap_or(&[]));
                    drop(output);
                    drop(reservation);
                    frame
                }
                None => {
                    stats.refused_requests.fetch_add(1, Ordering::Relaxed);
                    encode_reply(STATUS_INSUFFICIENT_RESOURCES, 0, &[])
                }
            };
            if !write_full(&mut stream, &frame, closing, limits.write_timeout) {
                if !closing.load(Ordering::Acquire) {
                    timed_out();
                }
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
        stats: Arc<EndpointStats>,
    }

    impl EndpointHandle {
        /// The socket path.
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// What the server did about its limits.
        pub fn stats(&self) -> &EndpointStats {
            &self.stats
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

    /// Serves `host` at `path` on a background thread with the default [`Limits`]. The
    /// socket is bound before this returns, so clients can connect at once.
    pub fn spawn(host: Arc<Host>, path: &Path) -> io::Result<EndpointHandle> {
        spawn_with(host, path, Limits::default())
    }

    /// [`spawn`] with chosen limits.
    pub fn spawn_with(host: Arc<Host>, path: &Path, limits: Limits) -> io::Result<EndpointHandle> {
        let bound = bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let stats = Arc::new(EndpointStats::default());
        let st = Arc::clone(&stats);
        let owned = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name(std::string::String::from("iosv-endpoint"))
            .spawn(move || run(&bound.listener, host, &owned, &flag, limits, &st))?;
        Ok(EndpointHandle {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
            stats,
        })
    }
}
