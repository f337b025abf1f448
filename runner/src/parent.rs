//! The parent side: starts the child, watches it, and either hands back a session whose
//! socket serves the verifier's control codes, or a report of how the run ended.

use crate::protocol::Message;
use crate::{ExitKind, RunError, RunOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default seconds one driver routine may run ([`RunOptions::watchdog_secs`] 0).
pub const DEFAULT_WATCHDOG_SECS: u64 = 10;

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
}

impl Session {
    /// Ends the child (closes its standard input) and removes the socket directory.
    ///
    /// # Errors
    /// When the child does not exit cleanly.
    pub fn finish(mut self) -> Result<(), RunError> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        match status {
            Some(s) if s.success() => Ok(()),
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
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `program args… CHILD_ARG SOCKET IMAGE --bar … --ioctl …` (normally
/// `iosvctl`, re-executed) and follows it through the driver's life cycle.
///
/// # Errors
/// [`RunError::Unsupported`] off x86-64 Linux; [`RunError::Ended`] when the driver
/// crashed, called an unimplemented routine, hung or did not load; [`RunError::Io`] /
/// [`RunError::Protocol`] when the child could not be run.
pub fn start(program: &Path, opts: &RunOptions) -> Result<Session, RunError> {
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
    cmd.arg(crate::CHILD_ARG).arg(&socket).arg(&opts.image);
    for b in &opts.bars {
        cmd.arg("--bar").arg(b.to_string());
    }
    if opts.surprise_removal {
        cmd.arg("--surprise-removal").arg("yes");
    }
    for io in &opts.ioctls {
        let hex: String = io.input.iter().map(|b| format!("{b:02x}")).collect();
        cmd.arg("--ioctl").arg(format!("{:#x}:{hex}", io.code));
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(RunError::Io(e));
        }
    };
    let stdin = child.stdin.take();
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        return Err(RunError::Protocol("no pipe from the child".into()));
    };
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let watchdog = Duration::from_secs(if opts.watchdog_secs == 0 {
        DEFAULT_WATCHDOG_SECS
    } else {
        opts.watchdog_secs
    });
    let mut image = ImageInfo::default();
    let mut notes = Vec::new();
    let mut audit_problems = Vec::new();
    let mut routine: Option<String> = None;
    loop {
        let message = match rx.recv_timeout(watchdog) {
            Ok(Some(line)) => Message::parse(&line),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The child's stdout closed without a verdict.
                let status = child.wait()?;
                let report = died_report(&image, routine.as_deref(), status);
                return ended(&mut child, &dir, ExitKind::Crashed, report);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let report = format!(
                    "driver {} hung: {} did not return within {} s (the watchdog ended it; \
                     MMIO is plain memory here, so a driver polling for a bit that only \
                     hardware sets spins forever)",
                    display_name(&image, &opts.image),
                    routine.as_deref().unwrap_or("the host"),
                    watchdog.as_secs()
                );
                return ended(&mut child, &dir, ExitKind::Hung, report);
            }
        };
        match message {
            Some(Message::Image { name, base, size }) => image = ImageInfo { name, base, size },
            Some(Message::Enter(r)) => routine = Some(r),
            Some(Message::Note(n)) => notes.push(n),
            Some(Message::Audit(a)) => audit_problems.push(a),
            Some(Message::Ready) => {
                return Ok(Session {
                    child,
                    stdin,
                    dir,
                    socket,
                    image,
                    notes,
                    audit_problems,
                    elapsed: began.elapsed(),
                })
            }
            Some(Message::Crash(text)) => {
                let report = crash_report(&image, &opts.image, &text);
                return ended(&mut child, &dir, ExitKind::Crashed, report);
            }
            Some(Message::Unimplemented(text)) => {
                return ended(&mut child, &dir, ExitKind::Unimplemented, text);
            }
            Some(Message::LoadFail(text)) => {
                let report = format!("cannot load {}: {text}", opts.image.display());
                return ended(&mut child, &dir, ExitKind::LoadFailed, report);
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
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    Err(RunError::Ended { kind, report })
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

/// Turns the child's `crash` fields into the report.
fn crash_report(image: &ImageInfo, path: &Path, text: &str) -> String {
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
    let in_image = rip.checked_sub(image.base).is_some_and(|o| o < image.size);
    let mut out = if in_image {
        format!(
            "driver {name} crashed: {signal} at {} (rip {rip:#x}), fault address {address:#x}",
            image.describe(rip)
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
        let entry = hex(field("entry"))
            .map(|e| image.describe(e))
            .unwrap_or_default();
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

    #[test]
    fn crash_reports_name_module_offset_and_routine() {
        let image = ImageInfo {
            name: "d.sys".into(),
            base: 0x1000,
            size: 0x1000,
        };
        let r = crash_report(
            &image,
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
            Path::new("d.sys"),
            "signal=SIGSEGV address=0x8 rip=0x9999 routine=-",
        );
        assert!(r.contains("in host code"), "{r}");
        assert!(!r.contains("while running"), "{r}");
        let r = crash_report(
            &image,
            Path::new("d.sys"),
            "bugcheck KeBugCheckEx(0x1, 0x0, 0x0, 0x0, 0x0)",
        );
        assert_eq!(
            r,
            "driver d.sys bug-checked: KeBugCheckEx(0x1, 0x0, 0x0, 0x0, 0x0)"
        );
    }
}
