//! Shared helpers of the `iosvctl` system tests: run the binary, serve a host in a child
//! process, find test data.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `iosvctl` binary Cargo built for these tests.
pub const IOSVCTL: &str = env!("CARGO_BIN_EXE_iosvctl");

/// Builds the compiled driver fixtures of `iosvctl run` (`runner/fixtures/build.sh`,
/// mingw-w64 GCC) into `dir` under this test binary's temporary directory; returns it.
/// Each test binary calls this once (behind a `OnceLock`), into a directory of its own.
pub fn build_runner_fixtures(dir: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runner/fixtures/build.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .expect("run runner/fixtures/build.sh");
    assert!(
        o.status.success(),
        "building the driver fixtures failed (scripts/test installs gcc-mingw-w64-x86-64):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A file under the workspace's `tests/data/`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name)
}

/// Runs `iosvctl` with `args` (stdin closed) and returns what it did.
pub fn iosvctl(args: &[&str]) -> Output {
    let out = Command::new(IOSVCTL)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run iosvctl");
    out
}

/// Exit code, stdout and stderr of a run, for assertions.
pub fn parts(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The JSON lines of a run's stdout.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// `iosvctl host serve` in a child process, on a socket in a temporary directory; stopped
/// with SIGTERM when dropped.
pub struct Server {
    child: Option<Child>,
    /// The socket.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a host (running `scenario` first, if given) and waits until it accepts
    /// connections.
    pub fn start(scenario: Option<&Path>, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("iosv.sock");
        let mut cmd = Command::new(IOSVCTL);
        cmd.args(["host", "serve", "--no-progress", "--socket"])
            .arg(&socket);
        if let Some(s) = scenario {
            cmd.arg("--scenario").arg(s);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn iosvctl host serve");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if UnixStream::connect(&socket).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("host serve exited with {status} before serving: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "host serve did not start serving in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child: Some(child),
            socket,
            _dir: dir,
        }
    }

    /// Runs `iosvctl --host <socket> args…`.
    pub fn run(&self, args: &[&str]) -> Output {
        let socket = self.socket.to_string_lossy().into_owned();
        let mut all = vec!["--host", socket.as_str(), "--timeout", "30"];
        all.extend_from_slice(args);
        iosvctl(&all)
    }

    /// Stops the host with SIGTERM and returns its exit code and stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        self.terminate()
    }

    fn terminate(&mut self) -> (Option<i32>, String) {
        let Some(mut child) = self.child.take() else {
            return (None, String::new());
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    break child.wait().ok().and_then(|s| s.code());
                }
            }
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
