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
