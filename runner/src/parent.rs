//! The parent side: starts the child, watches it, and either hands back a session whose
//! socket serves the verifier's control codes, or a report of how the run ended.

use crate::protocol::Message;
use crate::{ExitKind, RunError, RunOptions};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default seconds one driver routine may run ([`RunOptions::watchdog_secs`] 0).
pub const DEFAULT_WATCHDOG_SECS: u64 = 10;
/// Longest line the child may send; a longer one is cut there (the rest is dropped).
pub const MAX_LINE: usize = 16 * 1024;
/// Most `note`/`audit` lines kept; further ones are counted, not stored.
pub const MAX_NOTES: usize = 10_000;
/// Most bytes of `lab` lines kept (a scenario child's output: a line per step for JSON);
/// a child that sends more ends the run with an error (not output cut short).
pub const MAX_LAB_BYTES: usize = 256 * 1024 * 1024;
/// How long the parent waits for a child that closed its standard output to exit.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What the child said about the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// File name.
    pub name: String,
    /// Where it was mapped.
    pub base: u64,
    /// Bytes mapped.
    pub size: u64,
}

impl ImageInfo {
    /// `name+0xOFF` for an address in the image, else the address.
    #[must_use]
    pub fn describe(&self, address: u64) -> String {
        match address.checked_sub(self.base) {
            Some(off) if off < self.size && !self.name.is_empty() => {
                format!("{}+{off:#x}", self.name)
            }
            _ => format!("{address:#x}"),
        }
    }
}

/// A run whose driver finished its life cycle; the child serves the verifier's control
/// codes on [`Session::socket`] until [`Session::finish`].
#[derive(Debug)]
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Kept open so that the child's writes after `ready` do not fail; read by
    /// [`Session::finish_with_notes`].
    lines: mpsc::Receiver<Option<String>>,
    dir: PathBuf,
    /// The Unix socket the child's endpoint listens on.
    pub socket: PathBuf,
    /// The image as loaded.
    pub image: ImageInfo,
    /// What the child noted on the way (imports bound to stubs, failed IRPs, ...).
    pub notes: Vec<String>,
    /// Where the verifier's live table and the simulated Mm's ground truth differ after
    /// the run, or the Mm was corrupted (empty: they match).
    pub audit_problems: Vec<String>,
    /// Time from start to the end of the driver's life cycle.
    pub elapsed: Duration,
    /// What a scenario child sent for the parent to print (`lab` lines), in order.
    pub lab: Vec<String>,
    /// `Some` when the image's DriverEntry failed: the report
    /// ([`crate::driver_entry_failure`]). The child still went on to `ready` — the image
    /// unloaded, what DriverEntry left mapped reported as leaked; a scenario child stopped
    /// the scenario at its `load` step — so the reports collected up to the failure can
    /// be read; the run must then end with [`ExitKind::LoadFailed`], as a driver that
    /// fails to load fails on Windows.
    pub load_failure: Option<String>,
}

impl Session {
    /// Ends the child (closes its standard input) and removes the socket directory.
    ///
    /// # Errors
    /// When the child does not exit cleanly.
    pub fn finish(self) -> Result<(), RunError> {
        self.finish_with_notes().map(|_| ())
    }

    /// [`Session::finish`], returning the notes the child wrote after `ready` (with
    /// `--verifier`: what iosv.sys's unload did).
    ///
    /// # Errors
    /// When the child does not exit cleanly.
    pub fn finish_with_notes(mut self) -> Result<Vec<String>, RunError> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut self.child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        // The child has exited: what it wrote after `ready` is in the channel (the reader
        // thread ends at end of file); at most MAX_NOTES notes are kept.
        let mut late = Vec::new();
        while let Ok(Some(line)) = self.lines.recv_timeout(Duration::from_secs(1)) {
            if let Some(Message::Note(n)) = Message::parse(&line) {
                push_bounded(&mut late, n, "notes");
            }
        }
        match status {
            Some(s) if s.success() => Ok(late),
            Some(s) => Err(RunError::Protocol(format!(
                "the driver host process exited with {s} after the run"
            ))),
            None => Err(RunError::Protocol(
                "the driver host process did not exit; it was killed".into(),
            )),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
            if matches!(self.child.try_wait(), Ok(None)) {
                kill_and_reap(&mut self.child);
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `program CHILD_ARG SOCKET IMAGE --bar … --registry … --ioctl …` (normally `iosvctl`,
/// re-executed) and follows it through the driver's life cycle.
///
/// # Errors
/// [`RunError::Unsupported`] off x86-64 Linux; [`RunError::Ended`] when the driver
/// crashed, called an unimplemented routine, hung or did not load; [`RunError::Io`] /
/// [`RunError::Protocol`] when the child could not be run.
pub fn start(program: &Path, opts: &RunOptions) -> Result<Session, RunError> {
    let mut args: Vec<OsString> = vec![opts.image.clone().into()];
    if let Some(v) = &opts.verifier {
        args.extend(["--verifier".into(), v.clone().into()]);
    }
    for b in &opts.bars {
        args.extend(["--bar".into(), b.to_string().into()]);
    }
    if opts.surprise_removal {
        args.extend(["--surprise-removal".into(), "yes".into()]);
    }
    for r in &opts.registry {
        args.extend(["--registry".into(), r.to_string().into()]);
    }
    for io in &opts.ioctls {
        let hex: String = io.input.iter().map(|b| format!("{b:02x}")).collect();
        args.extend(["--ioctl".into(), format!("{:#x}:{hex}", io.code).into()]);
    }
    follow(
        program,
        crate::CHILD_ARG,
        &args,
        &opts.image,
        opts.watchdog_secs,
        false,
    )
}

/// Starts `program CHILD_SCENARIO_ARG SOCKET ARGS…` (`iosvctl lab`'s child for a
/// scenario that names a compiled driver image, `image`; `args` is `lab`'s command line)
/// and follows it until the scenario ran: the [`Session`]'s `lab` lines are what the
/// child wrote for the parent to print. The watchdog (`watchdog_secs`, 0:
/// [`DEFAULT_WATCHDOG_SECS`]) applies while driver code runs and while the host waits for
/// the driver (an IRP it returned pending).
///
/// # Errors
/// As [`start`]; [`RunError::Failed`] when the scenario failed.
pub fn start_scenario(
    program: &Path,
    image: &Path,
    args: &[OsString],
    watchdog_secs: u64,
) -> Result<Session, RunError> {
    // Watched only while driver code runs or is waited for: simulated steps may run long
    // before the image is even loaded.
    follow(
        program,
        crate::CHILD_SCENARIO_ARG,
        args,
        image,
        watchdog_secs,
        true,
    )
}

/// Starts `program MARKER SOCKET ARGS…` and follows it to `ready` or an ending. `image`
/// names the driver in reports until the child says which it loaded. For a `scenario`
/// child, whose simulated steps may take long, the watchdog runs only from `enter` to
/// `leave` and from `wait` to `waited` (the host waiting for the driver: an IRP it
/// returned pending); for `iosvctl run`'s child the watchdog runs from the start to the
/// end — the child's own code between driver routines is watched too: such a wait, a
/// walk of a structure the driver corrupted. In both, a failed DriverEntry (`entryfail`)
/// is kept for after the reports ([`Session::load_failure`]): the child goes on to
/// `ready` and serves them.
fn follow(
    program: &Path,
    marker: &str,
    args: &[OsString],
    image_path: &Path,
    watchdog_secs: u64,
    scenario: bool,
) -> Result<Session, RunError> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(RunError::Unsupported {
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        });
    }
    let began = Instant::now();
    let dir = socket_dir()?;
    let socket = dir.join("iosv.sock");
    let mut cmd = Command::new(program);
    cmd.arg(marker).arg(&socket).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Its own process group, so the watchdog ends whatever it started too. A ^C at the
    // terminal then reaches only iosvctl; the child asked for SIGKILL when its parent
    // dies (PR_SET_PDEATHSIG, child.rs), so it does not outlive iosvctl.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(RunError::Io(e));
        }
    };
    let stdin = child.stdin.take();
    let Some(stdout) = child.stdout.take() else {
        kill_and_reap(&mut child);
        let _ = std::fs::remove_dir_all(&dir);
        return Err(RunError::Protocol("no pipe from the child".into()));
    };
    // Bounded: a child that floods its output (even after `ready`, when nobody reads the
    // channel) blocks on its pipe instead of growing this process's memory.
    let (tx, rx) = mpsc::sync_channel::<Option<String>>(256);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        while let Some(line) = read_line_bounded(&mut reader) {
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    let watchdog = Duration::from_secs(if watchdog_secs == 0 {
        DEFAULT_WATCHDOG_SECS
    } else {
        watchdog_secs
    });
    let mut image = ImageInfo::default();
    let mut modules: Vec<ImageInfo> = Vec::new();
    let mut notes = Vec::new();
    let mut audit_problems = Vec::new();
    let mut lab = Vec::new();
    let (mut lab_line, mut lab_bytes) = (String::new(), 0usize);
    let mut routine: Option<String> = None;
    // What the host waits for between driver routines (`wait`), watched like a routine.
    let mut waiting: Option<String> = None;
    let mut load_failure: Option<String> = None;
    loop {
        let idle = scenario && routine.is_none() && waiting.is_none();
        let received = if idle {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(watchdog)
        };
        let message = match received {
            Ok(Some(line)) => Message::parse(&line),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The child's stdout closed without a verdict; it should be exiting, but
                // a broken child may have closed the pipe and kept running.
                let report = match wait_timeout(&mut child, EXIT_GRACE) {
                    Some(status) => died_report(&image, routine.as_deref(), status),
                    None => format!(
                        "the driver host process closed its output without a report and \
                         did not exit{} (it was killed)",
                        routine
                            .as_deref()
                            .map_or_else(String::new, |r| format!(", while running {r}"))
                    ),
                };
                return ended(&mut child, &dir, ExitKind::Crashed, report);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let name = display_name(&image, image_path);
                let secs = watchdog.as_secs();
                let report = match (&routine, &waiting) {
                    (Some(r), _) => format!(
                        "driver {name} hung: {r} did not return within {secs} s (the watchdog \
                         ended it; MMIO is plain memory here, so a driver polling for a bit \
                         that only hardware sets spins forever)"
                    ),
                    (None, Some(w)) => format!(
                        "driver {name} hung: the host waited {secs} s for {w} (the watchdog \
                         ended it)"
                    ),
                    // Between driver routines: the host waits for the driver.
                    (None, None) => format!(
                        "driver {name} hung: no driver routine ran and the host had not \
                         finished within {secs} s (the watchdog ended it; e.g. an IRP the \
                         driver returned pending and never completed)"
                    ),
                };
                return ended(&mut child, &dir, ExitKind::Hung, report);
            }
        };
        match message {
            Some(Message::Image { name, base, size }) => image = ImageInfo { name, base, size },
            Some(Message::Module { name, base, size }) if modules.len() < 16 => {
                modules.push(ImageInfo { name, base, size });
            }
            Some(Message::Module { .. }) => {}
            Some(Message::Enter(r)) => routine = Some(r),
            Some(Message::Leave) => routine = None,
            Some(Message::Wait(w)) => waiting = Some(w),
            Some(Message::Waited) => waiting = None,
            Some(Message::LabMore(piece)) => {
                if let Err(e) = lab_piece(&mut lab_bytes, &mut lab_line, &piece) {
                    kill_and_reap(&mut child);
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(RunError::Protocol(e));
                }
            }
            Some(Message::Lab(piece)) => {
                if let Err(e) = lab_piece(&mut lab_bytes, &mut lab_line, &piece) {
                    kill_and_reap(&mut child);
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(RunError::Protocol(e));
                }
                lab.push(std::mem::take(&mut lab_line));
            }
            Some(Message::Fail(text)) => {
                kill_and_reap(&mut child);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(RunError::Failed(text));
            }
            Some(Message::Note(n)) => push_bounded(&mut notes, n, "notes"),
            Some(Message::Audit(a)) => push_bounded(&mut audit_problems, a, "audit problems"),
            Some(Message::Ready) => {
                return Ok(Session {
                    child,
                    stdin,
                    lines: rx,
                    dir,
                    socket,
                    image,
                    notes,
                    audit_problems,
                    elapsed: began.elapsed(),
                    lab,
                    load_failure,
                })
            }
            Some(Message::Crash(text)) => {
                let report = crash_report(&image, &modules, image_path, &text);
                return ended(&mut child, &dir, ExitKind::Crashed, report);
            }
            Some(Message::Unimplemented(text)) => {
                return ended(&mut child, &dir, ExitKind::Unimplemented, text);
            }
            Some(Message::LoadFail(text)) => {
                let report = format!("cannot load {}: {text}", image_path.display());
                return ended(&mut child, &dir, ExitKind::LoadFailed, report);
            }
            Some(Message::EntryFail(status)) => {
                let report = crate::driver_entry_failure(
                    image_path,
                    &display_name(&image, image_path),
                    status,
                );
                load_failure = Some(report);
            }
            None => {}
        }
    }
}

fn ended(
    child: &mut Child,
    dir: &Path,
    kind: ExitKind,
    report: String,
) -> Result<Session, RunError> {
    kill_and_reap(child);
    let _ = std::fs::remove_dir_all(dir);
    Err(RunError::Ended { kind, report })
}

/// Kills the child's whole process group (it leads its own, see [`start`]) and reaps the
/// child. Harmless when it already exited: the group is then empty or gone (the child is
/// not reaped yet, so its pid, the group id, cannot have been reused).
fn kill_and_reap(child: &mut Child) {
    #[cfg(all(unix, target_os = "linux", target_arch = "x86_64"))]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group `pid`; the child
        // was started as the leader of that group and is not reaped yet, so the id still
        // names it and nothing else.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to `limit` for the child to exit.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return None,
        }
    }
}

/// Keeps at most [`MAX_NOTES`] lines; the last kept one says how many were dropped.
/// Adds a piece of a `lab` line (`lab+` or `lab`) to `line`, counting `total` against
/// [`MAX_LAB_BYTES`].
fn lab_piece(total: &mut usize, line: &mut String, piece: &str) -> Result<(), String> {
    *total = total.saturating_add(piece.len().saturating_add(1));
    if *total > MAX_LAB_BYTES {
        return Err(format!(
            "the scenario child sent more than {} MiB of output lines",
            MAX_LAB_BYTES / (1024 * 1024)
        ));
    }
    line.push_str(piece);
    Ok(())
}

fn push_bounded(list: &mut Vec<String>, line: String, what: &str) {
    match list.len() {
        n if n < MAX_NOTES => list.push(line),
        n if n == MAX_NOTES => {
            list.push(format!("(more {what} than {MAX_NOTES}; the rest dropped)"))
        }
        _ => {}
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes (the rest of a longer line is read and
/// dropped), without its newline, invalid UTF-8 replaced. `None` at the end of the
/// stream or on a read error.
fn read_line_bounded(reader: &mut impl BufRead) -> Option<String> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .ok()?;
    if n == 0 {
        return None;
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() >= MAX_LINE {
        // Skip to the end of the overlong line, in bounded chunks.
        loop {
            let buf = reader.fill_buf().ok()?;
            if buf.is_empty() {
                break;
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    reader.consume(i + 1);
                    break;
                }
                None => {
                    let len = buf.len();
                    reader.consume(len);
                }
            }
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

fn display_name(image: &ImageInfo, path: &Path) -> String {
    if image.name.is_empty() {
        path.display().to_string()
    } else {
        image.name.clone()
    }
}

fn died_report(
    image: &ImageInfo,
    routine: Option<&str>,
    status: std::process::ExitStatus,
) -> String {
    #[cfg(unix)]
    let signal = {
        use std::os::unix::process::ExitStatusExt as _;
        status.signal()
    };
    #[cfg(not(unix))]
    let signal: Option<i32> = None;
    let how = match signal {
        Some(sig) => format!("was killed by signal {sig}"),
        None => format!("exited with {status}"),
    };
    format!(
        "the driver host process {how} without a report{}{}",
        if image.name.is_empty() {
            String::new()
        } else {
            format!(" (driver {})", image.name)
        },
        routine.map_or_else(String::new, |r| format!(", while running {r}"))
    )
}

/// Turns the child's `crash` fields into the report. `modules`: the other images mapped
/// (iosv's kernel component), whose offsets the report names too.
fn crash_report(image: &ImageInfo, modules: &[ImageInfo], path: &Path, text: &str) -> String {
    let name = display_name(image, path);
    if let Some(rest) = text.strip_prefix("bugcheck ") {
        return format!("driver {name} bug-checked: {rest}");
    }
    let field = |key: &str| {
        text.split(' ')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let hex =
        |v: Option<&str>| v.and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
    let signal = field("signal").unwrap_or("a signal");
    let rip = hex(field("rip")).unwrap_or(0);
    let address = hex(field("address")).unwrap_or(0);
    let routine = field("routine").filter(|r| *r != "-");
    let contains = |m: &ImageInfo, a: u64| a.checked_sub(m.base).is_some_and(|o| o < m.size);
    let in_image = contains(image, rip);
    let module = modules.iter().find(|m| contains(m, rip));
    let describe = |a: u64| match modules.iter().find(|m| contains(m, a)) {
        Some(m) => m.describe(a),
        None => image.describe(a),
    };
    let mut out = if in_image {
        format!(
            "driver {name} crashed: {signal} at {} (rip {rip:#x}), fault address {address:#x}",
            image.describe(rip)
        )
    } else if let Some(m) = module {
        format!(
            "{} crashed (beside driver {name}): {signal} at {} (rip {rip:#x}), fault address \
             {address:#x}",
            m.name,
            m.describe(rip)
        )
    } else {
        format!(
            "driver {name} crashed: {signal} in host code at rip {rip:#x} (not in the image: \
             probably a bad pointer passed to a kernel routine), fault address {address:#x}"
        )
    };
    if let Some(r) = routine {
        // The routine names have spaces: everything from `routine=` to ` entry=`.
        let full = text
            .split_once("routine=")
            .map(|(_, rest)| rest.split(" entry=").next().unwrap_or(rest))
            .unwrap_or(r);
        let entry = hex(field("entry")).map(describe).unwrap_or_default();
        out.push_str(&format!("\n  while running {full} (entry {entry})"));
    }
    if let Some(why) = field("why") {
        out.push_str(&format!("\n  not emulated: {}", why.replace('-', " ")));
    }
    out
}

fn socket_dir() -> Result<PathBuf, RunError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("iosv-run-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RunError::Io(e)),
        }
    }
    Err(RunError::Protocol(
        "cannot create a socket directory".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory `iosv-<tag>-<pid>` under the temporary directory, for a stand-in
    /// child.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn child_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iosv-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes the stand-in child `dir/child.sh` (`body`, a shell script) and makes it
    /// executable; returns its path.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn write_child(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("child.sh");
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// `start(..)` or `start_scenario(..)` of a stand-in child, again while it fails with
    /// ETXTBSY: the script was just written, and another test's thread may have forked
    /// while its file was open for writing (the fork holds the descriptor until it
    /// execs), which makes exec of the script fail for that instant.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn retrying<T>(start: impl Fn() -> Result<T, RunError>) -> Result<T, RunError> {
        let mut tries = 0;
        loop {
            match start() {
                Err(RunError::Io(e)) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn child_lines_are_bounded_and_lossy() {
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\nready\r\nnote \xff\xfe\nlast");
        let mut r = BufReader::with_capacity(64, &input[..]);
        let first = read_line_bounded(&mut r).unwrap();
        assert_eq!(first.len(), MAX_LINE);
        assert_eq!(read_line_bounded(&mut r).as_deref(), Some("ready"));
        assert_eq!(
            read_line_bounded(&mut r).as_deref(),
            Some("note \u{fffd}\u{fffd}")
        );
        assert_eq!(read_line_bounded(&mut r).as_deref(), Some("last"));
        assert_eq!(read_line_bounded(&mut r), None);
        let mut notes = Vec::new();
        for i in 0..MAX_NOTES + 5 {
            push_bounded(&mut notes, i.to_string(), "notes");
        }
        assert_eq!(notes.len(), MAX_NOTES + 1);
        assert!(notes[MAX_NOTES].contains("dropped"), "{:?}", notes.last());
    }

    /// A child that floods its output, then closes it and keeps running (in a process
    /// group with a grandchild) gets a report, is killed with its group and reaped, and
    /// leaves no socket directory.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn a_hostile_child_is_reported_killed_and_reaped() {
        let dir = child_dir("hostile");
        let marker = dir.join("grandchild.pid");
        let script = write_child(
            &dir,
            &format!(
                "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x\nprintf 'note \\377\\n'\n\
                 sleep 300 >/dev/null & echo $! > {}\nexec >&-\nsleep 300\n",
                marker.display()
            ),
        );
        let opts = RunOptions {
            image: "x.sys".into(),
            bars: vec![],
            ioctls: vec![],
            watchdog_secs: 30,
            surprise_removal: false,
            registry: vec![],
            verifier: None,
        };
        let began = Instant::now();
        let err = retrying(|| start(&script, &opts)).expect_err("no session from a broken child");
        assert!(began.elapsed() < Duration::from_secs(20));
        let RunError::Ended { kind, report } = err else {
            panic!("{err}");
        };
        assert_eq!(kind, ExitKind::Crashed);
        assert!(report.contains("did not exit"), "{report}");
        // The grandchild went with the group.
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "grandchild {pid} survived");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A scenario child's `lab` lines arrive whole, joined from their `lab+` pieces; the
    /// output's size is bounded with an error, not cut short.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn lab_lines_are_joined_from_pieces_and_bounded() {
        let dir = child_dir("lab-pieces");
        let script = write_child(
            &dir,
            "#!/bin/sh\nprintf 'lab+ ab\\nlab+ c\\nlab d\\nlab e\\nready\\n'\ncat >/dev/null\n",
        );
        let session = retrying(|| start_scenario(&script, Path::new("x.sys"), &[], 0)).unwrap();
        assert_eq!(session.lab, ["abcd", "e"]);
        drop(session);
        let _ = std::fs::remove_dir_all(&dir);

        let (mut total, mut line) = (MAX_LAB_BYTES - 4, String::new());
        assert_eq!(lab_piece(&mut total, &mut line, "ab"), Ok(()));
        assert_eq!(line, "ab");
        let e = lab_piece(&mut total, &mut line, "c").unwrap_err();
        assert!(e.contains("more than 256 MiB"), "{e}");
    }

    /// A scenario child whose image's DriverEntry failed (`entryfail`) goes on to `ready`
    /// and serves the reports collected so far, as `iosvctl run`'s child does: the
    /// session carries the failure (for exit 8 after the reports) and the notes.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn a_scenario_child_whose_driver_entry_failed_still_serves_its_reports() {
        let dir = child_dir("lab-entry");
        let script = write_child(
            &dir,
            "#!/bin/sh\nprintf 'image x.sys 0x1000 0x1000\\nenter DriverEntry\\nleave\\n\
             entryfail 0xc0000182\\nnote x.toml:4:1: step `load` failed\\nready\\n'\ncat >/dev/null\n",
        );
        let session = retrying(|| start_scenario(&script, Path::new("dir/x.sys"), &[], 0)).unwrap();
        assert_eq!(
            session.load_failure.as_deref(),
            Some(
                "cannot load dir/x.sys: DriverEntry of x.sys failed with status 0xc0000182 \
                 (STATUS_DEVICE_CONFIGURATION_ERROR)"
            )
        );
        assert_eq!(session.notes, ["x.toml:4:1: step `load` failed"]);
        session.finish().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A scenario child that waits for the driver (`wait`, e.g. an IRP it returned
    /// pending and never completes) between driver routines is ended by the watchdog, as
    /// a routine that does not return is: the parent stops watching only between `leave`
    /// and the next `enter` or `wait`.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn a_scenario_child_waiting_for_the_driver_is_ended_by_the_watchdog() {
        let dir = child_dir("lab-wait");
        let script = write_child(
            &dir,
            "#!/bin/sh\nprintf 'image x.sys 0x1000 0x1000\\nenter AddDevice\\nleave\\n\
             wait the IRP (major 14, minor 0)\\n'\nsleep 60\n",
        );
        let err = retrying(|| start_scenario(&script, Path::new("x.sys"), &[], 1))
            .expect_err("the watchdog ends the wait");
        let _ = std::fs::remove_dir_all(&dir);
        let RunError::Ended { kind, report } = err else {
            panic!("{err}");
        };
        assert_eq!(kind, ExitKind::Hung, "{report}");
        assert_eq!(
            report,
            "driver x.sys hung: the host waited 1 s for the IRP (major 14, minor 0) (the \
             watchdog ended it)"
        );
    }

    #[test]
    fn crash_reports_name_module_offset_and_routine() {
        let image = ImageInfo {
            name: "d.sys".into(),
            base: 0x1000,
            size: 0x1000,
        };
        let r = crash_report(
            &image,
            &[],
            Path::new("d.sys"),
            "signal=SIGSEGV address=0x0 rip=0x1234 routine=IRP_MJ_DEVICE_CONTROL dispatch entry=0x1200",
        );
        assert!(r.contains("SIGSEGV at d.sys+0x234"), "{r}");
        assert!(
            r.contains("while running IRP_MJ_DEVICE_CONTROL dispatch (entry d.sys+0x200)"),
            "{r}"
        );
        let r = crash_report(
            &image,
            &[],
            Path::new("d.sys"),
            "signal=SIGSEGV address=0x8 rip=0x9999 routine=-",
        );
        assert!(r.contains("in host code"), "{r}");
        assert!(!r.contains("while running"), "{r}");
        let r = crash_report(
            &image,
            &[],
            Path::new("d.sys"),
            "bugcheck KeBugCheckEx(0x1, 0x0, 0x0, 0x0, 0x0)",
        );
        assert_eq!(
            r,
            "driver d.sys bug-checked: KeBugCheckEx(0x1, 0x0, 0x0, 0x0, 0x0)"
        ); // A fault in another module (iosv's kernel component) names its offset.
        let iosv = ImageInfo {
            name: "iosv.sys".into(),
            base: 0x8000,
            size: 0x2000,
        };
        let r = crash_report(
            &image,
            std::slice::from_ref(&iosv),
            Path::new("d.sys"),
            "signal=SIGSEGV address=0x10 rip=0x9010 routine=load-image notify routine entry=0x8100",
        );
        assert!(
            r.starts_with("iosv.sys crashed (beside driver d.sys): SIGSEGV at iosv.sys+0x1010"),
            "{r}"
        );
        assert!(
            r.contains("while running load-image notify routine (entry iosv.sys+0x100)"),
            "{r}"
        );
    }
}
