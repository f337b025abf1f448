//! Issue 9, "no silent success": every way a run can be wrong or incomplete has its own
//! exit status, and hostile or careless input is refused with a clear message.
#![cfg(unix)]

mod common;

use common::{data, iosvctl, parts};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn refused(args: &[&str], needle: &str) {
    let (code, out, err) = parts(&iosvctl(args));
    assert_eq!(code, 2, "exit status of {args:?}; stderr: {err}");
    assert!(out.is_empty(), "nothing on stdout for {args:?}: {out}");
    assert!(
        err.contains(needle),
        "stderr of {args:?} lacks {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// More stress threads than iosv can hook drivers for used to hook only 16, report wrong
/// counts and exit 1 like a good run.
#[test]
fn stress_threads_beyond_the_hookable_drivers_are_refused() {
    refused(
        &["lab", "--no-progress", "--threads", "17"],
        "threads must be between 1 and 16",
    );
    // 16 threads on the built-in scenario need 12 clones beside its targets: too many.
    refused(
        &["lab", "--no-progress", "--threads", "16"],
        "at most 16 targets",
    );
}

/// A journal too small for the run: the lost records make exit 3 and say so in SARIF and
/// JUnit (it was exit 0 or 1 with `executionSuccessful: true`).
#[test]
fn lost_records_are_not_success() {
    let (code, out, err) = parts(&iosvctl(&[
        "lab",
        "--no-progress",
        "--journal-records",
        "1",
        "--format",
        "sarif",
    ]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("lost"), "{err}");
    let log: serde_json::Value = serde_json::from_str(&out).expect("SARIF");
    let inv = &log["runs"][0]["invocations"][0];
    assert_eq!(inv["executionSuccessful"], false, "{inv}");
    assert_eq!(inv["exitCode"], 3);
    let notes = inv["toolExecutionNotifications"].as_array().expect("notes");
    assert!(
        notes.iter().any(|n| n["level"] == "error"
            && n["message"]["text"].as_str().unwrap_or("").contains("lost")),
        "{inv}"
    );

    let (code, out, _) = parts(&iosvctl(&[
        "lab",
        "--no-progress",
        "--journal-records",
        "1",
        "--format",
        "junit",
    ]));
    assert_eq!(code, 3);
    let doc = roxmltree::Document::parse(&out).expect("well-formed XML");
    assert_ne!(doc.root_element().attribute("errors"), Some("0"), "{out}");
    let errors: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("error"))
        .filter_map(|n| n.attribute("message"))
        .collect();
    assert!(errors.iter().any(|m| m.contains("lost")), "{out}");

    // Human and JSON: the same status.
    let (code, out, _) = parts(&iosvctl(&[
        "lab",
        "--no-progress",
        "--no-mappings",
        "--journal-records",
        "1",
    ]));
    assert_eq!(code, 3, "{out}");
    // A clean, complete run still exits 1 for its violations, and SARIF says it succeeded.
    let (code, out, _) = parts(&iosvctl(&["lab", "--no-progress", "--format", "sarif"]));
    assert_eq!(code, 1);
    let log: serde_json::Value = serde_json::from_str(&out).expect("SARIF");
    assert_eq!(
        log["runs"][0]["invocations"][0]["executionSuccessful"],
        true
    );
}

/// The sizes the scenario's `[host]` table refuses are refused on the command line too
/// (they were clamped silently).
#[test]
fn host_sizes_out_of_range_are_usage_errors() {
    for (flag, value) in [
        ("--capacity", "0"),
        ("--capacity", "18446744073709551615"),
        ("--journal-records", "0"),
        ("--max-stack-depth", "17"),
        ("--graveyard-size", "0"),
    ] {
        refused(&["lab", "--no-progress", flag, value], "must be between");
    }
}

/// `/dev/zero` grew without bound, a FIFO blocked forever.
#[test]
fn scenarios_that_are_not_regular_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("scenario.toml");
    let made = Command::new("mkfifo").arg(&fifo).status();
    let mut paths = vec!["/dev/zero".to_string()];
    if made.is_ok_and(|s| s.success()) {
        paths.push(fifo.to_string_lossy().into_owned());
    }
    for p in &paths {
        let start = Instant::now();
        refused(&["lab", "--no-progress", p], "not a regular file");
        refused(
            &[
                "host",
                "serve",
                "--no-progress",
                "--socket",
                dir.path().join("s.sock").to_str().unwrap(),
                "--scenario",
                p,
            ],
            "not a regular file",
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{p} took too long"
        );
    }
}

/// `iosvctl ... | head` used to exit 2 silently; it now ends by SIGPIPE like other
/// filters, with nothing on stderr.
#[test]
fn a_reader_that_goes_away_ends_iosvctl_by_sigpipe() {
    let mut child = Command::new(common::IOSVCTL)
        .args(["lab", "--no-progress"])
        .arg(data("every_rule.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take()); // the reader is gone before the first line is written
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cursor past the journal's end was accepted, and a follower silently skipped every
/// record up to it.
#[test]
fn a_cursor_past_the_journal_end_is_refused() {
    let server = common::Server::start(Some(&data("every_rule.toml")), &[]);
    let (code, out, _) = parts(&server.run(&["violations", "-f", "json"]));
    assert_eq!(code, 1);
    let end = common::json_lines(&out).pop().expect("end line");
    let next = end["next_cursor"].as_u64().expect("cursor");
    let (code, _, err) = parts(&server.run(&["violations", "--since", &next.to_string()]));
    assert_eq!(code, 0, "the tail itself is a valid cursor: {err}");
    let (code, _, err) = parts(&server.run(&["violations", "--since", &(next + 1).to_string()]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("past the end of the endpoint's journal"),
        "{err}"
    );
}

/// "host serving on PATH" was printed before the bind, even when the bind then failed.
#[test]
fn serving_is_announced_only_once_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken");
    std::fs::write(&path, "a regular file").unwrap();
    let (code, _, err) = parts(&iosvctl(&[
        "host",
        "serve",
        "--socket",
        path.to_str().unwrap(),
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    assert!(!err.contains("serving on"), "{err}");
}

/// The default socket lives in a private directory; one another user could have made
/// (open to others) is refused, not used.
#[test]
fn the_default_socket_directory_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let dir = tmp.path().join(format!("iosv-{uid}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = |args: &[&str]| {
        Command::new(common::IOSVCTL)
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .output()
            .expect("run")
    };
    let (code, _, err) = parts(&run(&["host", "serve"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("open to other users"), "{err}");
    let (code, _, err) = parts(&run(&["status"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("open to other users"), "{err}");
}

/// A client refuses a server that runs as another user (it could serve made-up reports)
/// unless told to trust it. Needs root to run a server as another user.
#[test]
fn a_server_of_another_user_is_refused_unless_allowed() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to start a server as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).unwrap();
    let socket = tmp.path().join("other.sock");
    let mut child = Command::new(common::IOSVCTL)
        .args(["host", "serve", "--socket"])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn as nobody");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            eprintln!("skipped: the server could not run as uid 65534 here");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = socket.to_str().unwrap();
    let (code, _, err) = parts(&iosvctl(&["--host", s, "status"]));
    // The socket is 0600 and nobody's: root can connect, and is refused by the check.
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("runs as uid 65534"), "{err}");
    assert!(err.contains("--allow-other-user"), "{err}");
    let (code, _, err) = parts(&iosvctl(&["--host", s, "--allow-other-user", "status"]));
    assert_eq!(code, 0, "{err}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `violations` against an endpoint whose journal overflowed: exit 3 in every format.
#[test]
fn violations_with_lost_records_exit_3() {
    let server = common::Server::start(Some(&data("every_rule.toml")), &["--journal-records", "2"]);
    for format in ["human", "json", "sarif", "junit"] {
        let (code, out, err) = parts(&server.run(&["violations", "--format", format]));
        assert_eq!(code, 3, "{format}: {err}");
        assert!(err.contains("lost"), "{format}: {err}");
        if format == "sarif" {
            let log: serde_json::Value = serde_json::from_str(&out).expect("SARIF");
            assert_eq!(
                log["runs"][0]["invocations"][0]["executionSuccessful"],
                false
            );
        }
    }
}
