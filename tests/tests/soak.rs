//! The soak (`scripts/soak MINUTES`): rounds of the lab stress scenario
//! (`examples/stress.toml`, 4 threads x 200 000 operations, every rule's bug injected)
//! with a new seed each round, each in a fresh host served on a Unix socket while
//! followers (`iosvctl`'s client library over the socket, as `violations --follow`) read
//! the journal concurrently. Each round must audit clean (every injected bug reported
//! exactly once, nothing else, the table equal to the simulated Mm, no corruption), and
//! every follower must see every sequence number from 0 to the journal's tail exactly
//! once, in order, with nothing lost. Ends with one summary line.
//!
//! `IOSV_SOAK_SECS` (default 10) bounds the time; a round in progress finishes.
#![cfg(unix)]

use iosv_client::client::Client;
use iosv_client::transport::socket::SocketTransport;
use iosv_host::endpoint;
use iosv_host::scenario::{self, Scenario};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Followers per round.
const FOLLOWERS: usize = 3;

/// What one follower saw.
#[derive(Debug, Default)]
struct Followed {
    records: u64,
    calls: u64,
    lost: u64,
    out_of_order: u64,
    next: u64,
}

/// Follows the journal at `path` until `done` is set and it has caught up with `tail()`.
fn follow(path: &Path, done: &AtomicBool, tail: &dyn Fn() -> u64) -> Followed {
    let t = SocketTransport::connect(path, Some(Duration::from_secs(30)), false).expect("connect");
    let mut c = Client::connect(t).expect("hello");
    let mut f = Followed::default();
    loop {
        let finished = done.load(Ordering::Acquire);
        let batch = c.read_violations(f.next, 256).expect("read");
        f.calls += 1;
        f.lost += batch.lost + batch.discarded;
        for r in &batch.records {
            if r.seq != f.next {
                f.out_of_order += 1;
            }
            f.next = r.seq + 1;
            f.records += 1;
        }
        f.next = f.next.max(batch.next_cursor);
        if batch.records.is_empty() {
            if finished && f.next >= tail() {
                return f;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
#[ignore = "long; run by scripts/soak"]
fn soak() {
    let secs: u64 = std::env::var("IOSV_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stress.toml"),
    )
    .expect("examples/stress.toml");
    assert!(
        text.contains("\nseed = 42\n"),
        "stress.toml's seed line moved"
    );
    let dir = tempfile_dir();
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut operations = 0u64;
    let mut records = 0u64;
    let mut followed = 0u64;
    let mut calls = 0u64;
    let base_seed = std::env::var("IOSV_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
    while rounds == 0 || started.elapsed() < Duration::from_secs(secs) {
        let seed = base_seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(rounds);
        let s = Scenario::parse(
            &text.replace("\nseed = 42\n", &format!("\nseed = \"0x{seed:x}\"\n")),
            &format!("stress.toml (seed {seed})"),
        )
        .expect("parses");
        let host = Arc::new(s.new_host().expect("host"));
        let path = dir.join(format!("soak-{rounds}.sock"));
        let ep = endpoint::spawn(Arc::clone(&host), &path).expect("serve");
        let done = Arc::new(AtomicBool::new(false));
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|_| {
                let (host, path, done) = (Arc::clone(&host), path.clone(), Arc::clone(&done));
                std::thread::spawn(move || {
                    follow(&path, &done, &|| host.verifier().journal().tail())
                })
            })
            .collect();
        let summary = scenario::run(&host, &s, &mut |_| {}).expect("scenario runs");
        done.store(true, Ordering::Release);
        let audit = host.audit(&summary.expected, true).expect("audit");
        assert!(audit.is_clean(), "seed {seed}: audit unclean:\n{audit}");
        let tail = host.verifier().journal().tail();
        for f in followers {
            let f = f.join().expect("follower");
            assert_eq!(
                (f.lost, f.out_of_order, f.records, f.next),
                (0, 0, tail, tail),
                "seed {seed}: follower saw {f:?} of a journal of {tail} records"
            );
            followed += f.records;
            calls += f.calls;
        }
        ep.stop().expect("endpoint stops");
        rounds += 1;
        operations += summary.operations;
        records += tail;
    }
    println!(
        "soak: {rounds} rounds in {:.0?}, {operations} driver operations, {records} violation records, \
         {followed} read by {FOLLOWERS} followers per round in {calls} calls; every audit clean, \
         every follower contiguous, nothing lost (seeds from {base_seed})",
        started.elapsed()
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("iosv-soak-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
