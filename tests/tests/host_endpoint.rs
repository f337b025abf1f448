//! The host endpoint over a Unix domain socket: several clients at once, clients that
//! vanish mid-call, frames that break the limits, and the socket file's life.
#![cfg(unix)]

use iosv::config::StartParams;
use iosv::protocol::{IOCTL_GET_STATS, IOCTL_HELLO, IOCTL_READ_VIOLATIONS, PROTOCOL_VERSION};
use iosv::rules::RuleId;
use iosv_host::endpoint::{
    self, call, decode_reply_header, encode_request_header, read_reply, RequestHeader, FRAME_MAGIC,
    MAX_INPUT, MAX_OUTPUT, REPLY_HEADER_LEN, STATUS_INVALID_PARAMETER,
};
use iosv_host::{Behaviour, Host};
use iosv_tests::control::add_target;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn socket_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("iosv-ep-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn host() -> Arc<Host> {
    let host = Arc::new(Host::with_processors(StartParams::default(), 2).unwrap());
    host.declare_driver("a.sys", Behaviour::WellBehaved, 0);
    add_target(&host, "a.sys").unwrap();
    host.load_driver("a.sys").unwrap();
    host
}

fn hello_input() -> Vec<u8> {
    let mut v = PROTOCOL_VERSION.to_le_bytes().to_vec();
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

fn connect(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection; true if it did.
fn closed_by_server(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0))
}

#[test]
fn several_clients_at_once_while_drivers_run() {
    let host = host();
    let path = socket_path("many");
    let ep = endpoint::spawn(Arc::clone(&host), &path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bugs = {
        let (host, stop) = (Arc::clone(&host), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut actor = host.actor(1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                host.commit_bug(RuleId::UnmapUnknown, "a.sys", None, &mut actor)
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = connect(&path);
                let mut out = vec![0u8; 4096];
                let mut seen = 0u64;
                for round in 0..150 {
                    let h = call(&mut s, IOCTL_HELLO, &hello_input(), &mut out).unwrap();
                    assert_eq!((h.status, h.information, h.output_len), (0, 56, 56));
                    assert_eq!(
                        u32::from_le_bytes(out[..4].try_into().unwrap()),
                        PROTOCOL_VERSION
                    );
                    let mut req = PROTOCOL_VERSION.to_le_bytes().to_vec();
                    req.extend_from_slice(&4u32.to_le_bytes());
                    req.extend_from_slice(&0u64.to_le_bytes());
                    let h = call(&mut s, IOCTL_READ_VIOLATIONS, &req, &mut out).unwrap();
                    assert_eq!(h.status, 0, "client {i} round {round}");
                    seen = seen.max(u32::from_le_bytes(out[4..8].try_into().unwrap()) as u64);
                }
                seen
            })
        })
        .collect();
    let seen: Vec<u64> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let injected = bugs.join().unwrap();
    assert!(injected > 0);
    assert!(
        seen.iter().any(|n| *n > 0),
        "clients read records while bugs were injected"
    );
    drop(ep);
    assert!(!path.exists(), "the handle removes the socket file");
}

#[test]
fn clients_that_vanish_mid_call_harm_nothing() {
    let host = host();
    let path = socket_path("vanish");
    let ep = endpoint::spawn(Arc::clone(&host), &path).unwrap();
    // 1. Half a header.
    {
        let mut s = connect(&path);
        s.write_all(&FRAME_MAGIC.to_le_bytes()).unwrap();
    }
    // 2. A header promising input that never comes.
    {
        let mut s = connect(&path);
        let h = RequestHeader {
            code: IOCTL_HELLO,
            input_len: 8,
            output_capacity: 64,
        };
        s.write_all(&encode_request_header(&h)).unwrap();
        s.write_all(&[1, 0]).unwrap();
    }
    // 3. A complete request whose reply (16 MiB of capacity) is never read.
    {
        let mut s = connect(&path);
        let h = RequestHeader {
            code: IOCTL_GET_STATS,
            input_len: 8,
            output_capacity: MAX_OUTPUT,
        };
        s.write_all(&encode_request_header(&h)).unwrap();
        let mut req = PROTOCOL_VERSION.to_le_bytes().to_vec();
        req.extend_from_slice(&64u32.to_le_bytes());
        s.write_all(&req).unwrap();
    }
    // 4. Many requests pipelined, then gone.
    {
        let mut s = connect(&path);
        for _ in 0..100 {
            endpoint::write_request(&mut s, IOCTL_HELLO, &hello_input(), 56).unwrap();
        }
    }
    // The endpoint still serves, on a new connection and repeatedly.
    let mut s = connect(&path);
    let mut out = [0u8; 56];
    for _ in 0..10 {
        let h = call(&mut s, IOCTL_HELLO, &hello_input(), &mut out).unwrap();
        assert_eq!(h.status, 0);
    }
    drop(s);
    let started = Instant::now();
    ep.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stops promptly with idle connections"
    );
    assert!(!path.exists());
}

#[test]
fn frames_that_break_the_limits_are_refused_and_closed() {
    let host = host();
    let path = socket_path("limits");
    let _ep = endpoint::spawn(Arc::clone(&host), &path).unwrap();
    let cases = [
        encode_request_header(&RequestHeader {
            code: IOCTL_HELLO,
            input_len: MAX_INPUT + 1,
            output_capacity: 56,
        }),
        encode_request_header(&RequestHeader {
            code: IOCTL_HELLO,
            input_len: 8,
            output_capacity: MAX_OUTPUT + 1,
        }),
        {
            let mut h = encode_request_header(&RequestHeader {
                code: IOCTL_HELLO,
                input_len: 8,
                output_capacity: 56,
            });
            h[0] ^= 0xFF;
            h
        },
    ];
    for header in cases {
        let mut s = connect(&path);
        s.write_all(&header).unwrap();
        let mut hb = [0u8; REPLY_HEADER_LEN];
        s.read_exact(&mut hb).unwrap();
        let h = decode_reply_header(&hb).unwrap();
        assert_eq!(
            (h.status, h.information, h.output_len),
            (STATUS_INVALID_PARAMETER, 0, 0)
        );
        assert!(
            closed_by_server(&mut s),
            "the connection is closed after the refusal"
        );
    }
    // At the limits exactly, the frame is served (the control code itself refuses the
    // oversized input with its own status) and the connection stays open.
    let mut s = connect(&path);
    let big = vec![0u8; MAX_INPUT as usize];
    endpoint::write_request(&mut s, IOCTL_HELLO, &big, MAX_OUTPUT).unwrap();
    let (h, out) = read_reply(&mut s, MAX_OUTPUT as usize).unwrap();
    assert_eq!(h.status, iosv::protocol::Status::InputTooLong as u32);
    assert!(out.is_empty());
    // Output too small: the size needed comes back in `information`, no bytes.
    let mut small = [0u8; 8];
    let h = call(&mut s, IOCTL_HELLO, &hello_input(), &mut small).unwrap();
    assert_eq!(
        (h.status, h.information, h.output_len),
        (iosv::protocol::Status::OutputTooSmall as u32, 56, 0)
    );
    // Unknown code.
    let h = call(&mut s, 0x1234_5678, &[], &mut small).unwrap();
    assert_eq!(h.status, iosv::protocol::Status::UnknownCode as u32);
    // The client side refuses to build frames beyond the limits.
    assert!(endpoint::encode_request(IOCTL_HELLO, &vec![0; MAX_INPUT as usize + 1], 0).is_err());
}

#[test]
fn socket_file_life() {
    let host = host();
    // A regular file at the path is not clobbered.
    let path = socket_path("file");
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(endpoint::spawn(Arc::clone(&host), &path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();

    // A live endpoint is not replaced; a stale socket is.
    let path = socket_path("live");
    let ep = endpoint::spawn(Arc::clone(&host), &path).unwrap();
    let err = endpoint::spawn(Arc::clone(&host), &path).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    drop(ep);
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale); // the file stays, nobody listens
    assert!(path.exists());
    let ep = endpoint::spawn(Arc::clone(&host), &path).unwrap();
    drop(ep);

    // serve() returns soon after its stop flag is set.
    let path = socket_path("serve");
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (host, path, stop) = (Arc::clone(&host), path.clone(), Arc::clone(&stop));
        std::thread::spawn(move || endpoint::serve(host, &path, &stop))
    };
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut s = connect(&path);
    let mut out = [0u8; 56];
    assert_eq!(
        call(&mut s, IOCTL_HELLO, &hello_input(), &mut out)
            .unwrap()
            .status,
        0
    );
    let started = Instant::now();
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap().unwrap();
    // The client stays connected and idle: a server that waited for it would never stop.
    // The bound only separates "stopped" from "hung" on a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!path.exists());
}

// ---- Issue 9: bounded resources -------------------------------------------------------

use endpoint::{Limits, STATUS_INSUFFICIENT_RESOURCES};

fn read_violations_input(cursor: u64, max: u32) -> Vec<u8> {
    use zerocopy::IntoBytes;
    iosv::protocol::ReadViolationsRequest {
        version: PROTOCOL_VERSION,
        max_records: max,
        cursor,
    }
    .as_bytes()
    .to_vec()
}

/// One 24-byte request asking for 16 MiB of output used to pin a 16 MiB buffer for the
/// life of its connection; 150 of them took 2.4 GiB. Buffers are now sized by what the
/// reply can hold and live for one request.
#[test]
fn reply_memory_is_sized_by_what_is_produced() {
    let host = host();
    let path = socket_path("mem");
    let ep = endpoint::spawn_with(
        Arc::clone(&host),
        &path,
        Limits {
            max_connections: 200,
            ..Limits::default()
        },
    )
    .unwrap();
    let mut conns = Vec::new();
    for _ in 0..150 {
        let mut s = connect(&path);
        endpoint::write_request(
            &mut s,
            IOCTL_READ_VIOLATIONS,
            &read_violations_input(0, u32::MAX),
            MAX_OUTPUT,
        )
        .unwrap();
        let (h, _) = read_reply(&mut s, MAX_OUTPUT as usize).unwrap();
        assert_eq!(h.status, 0);
        conns.push(s); // held open
    }
    let peak = ep.stats().peak_reply_bytes.load(Ordering::Relaxed);
    assert!(
        peak < 1024 * 1024,
        "{peak} bytes of reply buffers at once for an empty journal"
    );
    assert_eq!(ep.stats().reply_bytes.load(Ordering::Relaxed), 0);
}

/// All reply buffers together stay within the budget; a request that does not fit gets
/// STATUS_INSUFFICIENT_RESOURCES and the connection stays usable.
#[test]
fn reply_memory_has_a_budget() {
    let host = host();
    let path = socket_path("budget");
    let ep = endpoint::spawn_with(
        Arc::clone(&host),
        &path,
        Limits {
            reply_budget: 100,
            frame_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
    )
    .unwrap();
    let mut s = connect(&path);
    let mut out = vec![0u8; 4096];
    let h = call(&mut s, IOCTL_HELLO, &hello_input(), &mut out).unwrap();
    assert_eq!(h.status, STATUS_INSUFFICIENT_RESOURCES);
    assert_eq!(ep.stats().refused_requests.load(Ordering::Relaxed), 1);
    // Within the budget: served on the same connection.
    let mut small = [0u8; 56];
    let h = call(&mut s, IOCTL_HELLO, &hello_input(), &mut small).unwrap();
    assert_eq!(h.status, 0);
}

/// Connections beyond the limit get one refusal and are closed; a freed slot is reused.
#[test]
fn connections_are_capped() {
    let host = host();
    let path = socket_path("cap");
    let ep = endpoint::spawn_with(
        Arc::clone(&host),
        &path,
        Limits {
            max_connections: 4,
            ..Limits::default()
        },
    )
    .unwrap();
    let mut held: Vec<UnixStream> = (0..4)
        .map(|_| {
            let mut s = connect(&path);
            let mut out = [0u8; 56];
            assert_eq!(
                call(&mut s, IOCTL_HELLO, &hello_input(), &mut out)
                    .unwrap()
                    .status,
                0
            );
            s
        })
        .collect();
    let mut extra = connect(&path);
    let mut hb = [0u8; REPLY_HEADER_LEN];
    extra.read_exact(&mut hb).unwrap();
    assert_eq!(
        decode_reply_header(&hb).unwrap().status,
        STATUS_INSUFFICIENT_RESOURCES
    );
    assert!(closed_by_server(&mut extra));
    assert_eq!(ep.stats().refused_connections.load(Ordering::Relaxed), 1);
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect(&path);
        let mut out = [0u8; 56];
        if let Ok(h) = call(&mut s, IOCTL_HELLO, &hello_input(), &mut out) {
            if h.status == 0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection that idles, or sends a request slowly (slowloris), is closed.
#[test]
fn idle_and_slow_connections_are_closed() {
    let host = host();
    let path = socket_path("idle");
    let ep = endpoint::spawn_with(
        Arc::clone(&host),
        &path,
        Limits {
            idle_timeout: Duration::from_millis(300),
            frame_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let mut idle = connect(&path);
    let mut slow = connect(&path);
    slow.write_all(&FRAME_MAGIC.to_le_bytes()[..2]).unwrap();
    assert!(closed_by_server(&mut idle));
    assert!(closed_by_server(&mut slow));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ep.stats().timed_out.load(Ordering::Relaxed), 2);
}

/// A client that sends requests and never reads its replies no longer holds a stopping
/// server for the 10-second write timeout.
#[test]
fn stop_does_not_wait_for_a_client_that_does_not_read() {
    let host = host();
    let path = socket_path("noread");
    let ep = endpoint::spawn(Arc::clone(&host), &path).unwrap();
    let s = connect(&path);
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let req = endpoint::encode_request(IOCTL_HELLO, &hello_input(), 4096).unwrap();
    // Until the socket buffers are full both ways: the server is stuck writing a reply.
    for _ in 0..200_000 {
        if w.write_all(&req).is_err() {
            break;
        }
    }
    let started = Instant::now();
    ep.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
    drop(s);
}

/// The socket never exists with a mode other than 0600, whatever the umask: it is bound
/// in a private directory and renamed into place.
#[test]
fn the_socket_is_never_open_to_others_even_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    let host = host();
    let dir = std::env::temp_dir().join(format!("iosv-ep-umask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    // SAFETY: umask(2) has no preconditions; it is restored below.
    let old = unsafe { libc::umask(0) };
    let seen_bad = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (path, seen_bad, done) = (path.clone(), Arc::clone(&seen_bad), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    if m.permissions().mode() & 0o077 != 0 {
                        seen_bad.store(true, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    for _ in 0..100 {
        let ep = endpoint::spawn(Arc::clone(&host), &path).unwrap();
        drop(ep);
    }
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    // SAFETY: umask(2) has no preconditions and cannot fail; this puts back the mask saved
    // before the loop (`old`).
    unsafe { libc::umask(old) };
    assert!(
        !seen_bad.load(Ordering::Relaxed),
        "the socket was seen open to others"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "bind directories left behind: {leftovers:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The output granted to a request (`reply_bound`) always holds the whole reply the
/// control code produces with an unbounded buffer.
#[test]
fn reply_bounds_hold_every_whole_reply() {
    use iosv::protocol::{
        GetConfigRequest, ListMappingsRequest, StatsRequest, IOCTL_GET_CONFIG, IOCTL_LIST_MAPPINGS,
    };
    use zerocopy::IntoBytes;
    let host = host();
    let mut actor = host.actor(1);
    for _ in 0..5 {
        host.commit_bug(RuleId::UnmapUnknown, "a.sys", None, &mut actor)
            .unwrap();
    }
    let v = PROTOCOL_VERSION;
    let cases: Vec<(u32, Vec<u8>)> = vec![
        (IOCTL_HELLO, hello_input()),
        (
            IOCTL_GET_STATS,
            StatsRequest {
                version: v,
                max_drivers: u32::MAX,
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            IOCTL_GET_CONFIG,
            GetConfigRequest {
                version: v,
                reserved: 0,
            }
            .as_bytes()
            .to_vec(),
        ),
        (IOCTL_READ_VIOLATIONS, read_violations_input(0, u32::MAX)),
        (IOCTL_READ_VIOLATIONS, read_violations_input(2, 2)),
        (
            IOCTL_LIST_MAPPINGS,
            ListMappingsRequest {
                version: v,
                max_records: u32::MAX,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
    ];
    let mut full = vec![0u8; MAX_OUTPUT as usize];
    for (code, input) in cases {
        let r = host.control(code, &input, &mut full);
        assert_eq!(r.status, iosv::protocol::Status::Success, "{code:#x}");
        let bound = endpoint::reply_bound(&host, code, &input, MAX_OUTPUT as usize);
        assert!(
            r.information <= bound,
            "code {code:#x}: reply of {} bytes, bound {bound}",
            r.information
        );
        assert!(bound < 2 * 1024 * 1024, "code {code:#x}: bound {bound}");
    }
}
