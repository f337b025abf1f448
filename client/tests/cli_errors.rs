//! Bad input never panics: unreachable, dead or misbehaving endpoints, bad arguments and
//! malformed scenarios end with a clear message and exit status 2.
#![cfg(unix)]

mod common;

use common::{iosvctl, parts};
use iosv::frame;
use std::io::Write;
use std::os::unix::net::UnixListener;

fn assert_clean_failure(args: &[&str], needle: &str) -> String {
    let (code, out, err) = parts(&iosvctl(args));
    assert_eq!(code, 2, "exit status of {args:?}; stderr: {err}");
    assert!(out.is_empty(), "nothing on stdout for {args:?}: {out}");
    assert!(
        err.contains(needle),
        "stderr of {args:?} lacks {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn wrong_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing-here.sock");
    let err = assert_clean_failure(
        &["--host", path.to_str().unwrap(), "status"],
        "cannot connect to host socket",
    );
    assert!(
        err.contains("host serve"),
        "the message says how to start a host: {err}"
    );
}

#[test]
fn dead_host_leaves_a_socket_nobody_listens_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.sock");
    drop(UnixListener::bind(&path).unwrap()); // the file stays, the listener is gone
    assert_clean_failure(
        &["--host", path.to_str().unwrap(), "violations"],
        "nothing is listening",
    );
}

/// A server that answers the first request with only `cut` bytes of a valid reply frame.
fn half_frame_server(path: &std::path::Path, cut: usize) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            if frame::read_request(&mut s).is_ok() {
                let reply = frame::encode_reply(0, 56, &[0u8; 56]);
                let _ = s.write_all(&reply[..cut.min(reply.len())]);
            }
        }
    })
}

#[test]
fn truncated_reply() {
    let dir = tempfile::tempdir().unwrap();
    for cut in [10, 40] {
        let path = dir.path().join(format!("half{cut}.sock"));
        let server = half_frame_server(&path, cut);
        let err = assert_clean_failure(
            &["--host", path.to_str().unwrap(), "status"],
            "bad reply from host socket",
        );
        assert!(
            err.contains(&format!("connection closed after {cut} of")),
            "{err}"
        );
        server.join().unwrap();
    }
}

#[test]
fn garbage_reply() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = frame::read_request(&mut s);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    assert_clean_failure(
        &["--host", path.to_str().unwrap(), "status"],
        "bad frame magic",
    );
    server.join().unwrap();
}

#[test]
fn silent_host_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = frame::read_request(&mut s);
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
    });
    assert_clean_failure(
        &["--host", path.to_str().unwrap(), "--timeout", "1", "status"],
        "did not answer within",
    );
    server.join().unwrap();
}

#[test]
fn bad_arguments_are_usage_errors() {
    for (args, needle) in [
        (&["frobnicate"][..], "unrecognized subcommand"),
        (&["violations", "--since", "yesterday"][..], "not a number"),
        (&["violations", "--duration", "soon"][..], "not a duration"),
        (&["violations", "--rule", "IOSV999"][..], "unknown rule"),
        (&["violations", "--fail-on", "fatal"][..], "invalid value"),
        (&["config", "set", "--action", "IOSV004"][..], "RULE=ACTION"),
        (
            &["config", "set", "--action", "IOSV004=explode"][..],
            "unknown action",
        ),
        (
            &["config", "set", "--containment", "maybe"][..],
            "invalid value",
        ),
        (
            &["--device", "--host", "/tmp/x.sock", "status"][..],
            "cannot be used with",
        ),
        (&["mappings", "--device", "nic"][..], "not a number"),
        (&[][..], "Usage"),
    ] {
        let (code, out, err) = parts(&iosvctl(args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn sarif_is_refused_where_there_are_no_violations() {
    let (code, _, err) = parts(&iosvctl(&[
        "--host",
        "/nonexistent.sock",
        "status",
        "--format",
        "sarif",
    ]));
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot connect") || err.contains("--format sarif"),
        "{err}"
    );
    let (code, _, err) = parts(&iosvctl(&["rules", "--format", "junit"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("--format junit is for `violations` and `lab`"),
        "{err}"
    );
}

#[test]
fn device_off_windows_says_so() {
    if cfg!(windows) {
        return;
    }
    assert_clean_failure(&["--device", "status"], "exists only on Windows");
}

#[test]
fn help_documents_every_command_and_flag() {
    let (code, out, _) = parts(&iosvctl(&["--help"]));
    assert_eq!(code, 0);
    for word in [
        "status",
        "violations",
        "mappings",
        "config",
        "attach",
        "detach",
        "clear",
        "rules",
        "--device",
        "--host",
        "--format",
        "--fail-on",
        "Exit status",
    ] {
        assert!(out.contains(word), "--help lacks {word}: {out}");
    }
    for (cmd, flags) in [
        (
            &["violations"][..],
            &[
                "--since",
                "--follow",
                "--until",
                "--duration",
                "--interval",
                "--max",
                "--rule",
                "--driver",
            ][..],
        ),
        (
            &["mappings"][..],
            &["--driver", "--device", "--min-age"][..],
        ),
        (
            &["config", "set"][..],
            &[
                "--action",
                "--irql-mode",
                "--containment",
                "--stack-depth",
                "--target",
                "--untarget",
                "--clear-targets",
            ][..],
        ),
        (&["clear"][..], &["--journal", "--stats", "--graveyard"][..]),
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let (code, out, _) = parts(&iosvctl(&args));
        assert_eq!(code, 0, "{args:?}");
        for f in flags {
            assert!(out.contains(f), "{args:?} lacks {f}: {out}");
        }
    }
}
