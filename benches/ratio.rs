//! Wall-time ratios of iosv against its peers, measured in interleaved rounds.
//!
//! criterion (`benches/engine.rs`) measures one subject for seconds, then the next: on a
//! shared VM whose speed drifts between those windows (other builds, steal time), the
//! ratio of two such figures says more about the drift than about the subjects. Here every
//! round runs one batch of every subject, in an order rotated each round, and the ratios
//! are taken *within* a round, so a slow second hits both sides of a ratio alike; the
//! table shows the median over the rounds and the spread (first and third quartile).
//!
//! ```sh
//! cargo bench -p iosv --bench ratio            # 25 rounds
//! cargo bench -p iosv --bench ratio -- 51      # more rounds
//! ```
//!
//! The subjects are those of `benches/engine.rs` (`benches/peers/`).

mod common;
mod peers;

use peers::{
    assert_clean, concurrent, engine, engine_with, iosv_pair, private_pair, DashPeer, JournalPeers,
    MutexPeer,
};
use std::time::Duration;

/// Pairs per thread in one batch of a map/insert subject (≈ 10–30 ms here).
const PAIR_BATCH: u64 = 100_000;
/// Operations per thread in one batch of a journal subject.
const JOURNAL_BATCH: u64 = 200_000;

/// One measured subject: a name, its thread count, its batch and its body.
struct Subject<'a> {
    name: &'static str,
    threads: usize,
    batch: u64,
    op: Box<dyn Fn(u64) + Sync + 'a>,
}

fn subject<'a>(
    batch: u64,
    name: &'static str,
    threads: usize,
    op: Box<dyn Fn(u64) + Sync + 'a>,
) -> Subject<'a> {
    Subject {
        name,
        threads,
        batch,
        op,
    }
}

/// Nanoseconds per operation per thread of each subject, one entry per round.
struct Samples(Vec<Vec<f64>>);

fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(25)
        .max(3);

    let v = engine();
    let live_1k = engine_with(1_100_000, 1_000);
    let live_1m = engine_with(1_100_000, 1_000_000);
    let dm = DashPeer::new();
    let mx = MutexPeer::new();
    let j = JournalPeers::new();
    let platform = common::BenchPlatform::bench();

    let subjects = [
        subject(PAIR_BATCH, "iosv", 1, Box::new(|i| iosv_pair(&v, i))),
        subject(PAIR_BATCH, "iosv", 2, Box::new(|i| iosv_pair(&v, i))),
        subject(PAIR_BATCH, "dashmap", 1, Box::new(|i| dm.pair(i))),
        subject(PAIR_BATCH, "dashmap", 2, Box::new(|i| dm.pair(i))),
        subject(PAIR_BATCH, "mutex_hashmap", 1, Box::new(|i| mx.pair(i))),
        subject(PAIR_BATCH, "mutex_hashmap", 2, Box::new(|i| mx.pair(i))),
        subject(
            PAIR_BATCH,
            "thread-local HashMap (nothing shared)",
            1,
            Box::new(|i| private_pair(&platform, i)),
        ),
        subject(
            PAIR_BATCH,
            "thread-local HashMap (nothing shared)",
            2,
            Box::new(|i| private_pair(&platform, i)),
        ),
        subject(
            PAIR_BATCH,
            "iosv 1k live",
            1,
            Box::new(|i| iosv_pair(&live_1k, i)),
        ),
        subject(
            PAIR_BATCH,
            "iosv 1M live",
            1,
            Box::new(|i| iosv_pair(&live_1m, i)),
        ),
        subject(JOURNAL_BATCH, "journal push", 1, Box::new(|_| j.push())),
        subject(JOURNAL_BATCH, "journal push", 2, Box::new(|_| j.push())),
        subject(
            JOURNAL_BATCH,
            "arrayqueue push+pop",
            1,
            Box::new(|_| j.push_pop()),
        ),
        subject(
            JOURNAL_BATCH,
            "arrayqueue push+pop",
            2,
            Box::new(|_| j.push_pop()),
        ),
    ];
    let find = |name: &str, threads: usize| {
        subjects
            .iter()
            .position(|s| s.name == name && s.threads == threads)
            .unwrap()
    };

    let mut samples = Samples(vec![Vec::with_capacity(rounds); subjects.len()]);
    for round in 0..rounds {
        for k in 0..subjects.len() {
            let at = (k + round) % subjects.len();
            let s = &subjects[at];
            let t: Duration = concurrent(s.threads, s.batch, |i| (s.op)(i));
            samples.0[at].push(t.as_nanos() as f64 / s.batch as f64);
        }
    }
    for e in [&v, &live_1k, &live_1m] {
        assert_clean(e);
    }

    println!("{rounds} interleaved rounds; ns per operation per thread: median [q1, q3]\n");
    println!("| subject | threads | ns per op |");
    println!("|---|---|---|");
    for (s, xs) in subjects.iter().zip(&samples.0) {
        let (q1, m, q3) = quartiles(xs.clone());
        println!("| {} | {} | {m:.0} [{q1:.0}, {q3:.0}] |", s.name, s.threads);
    }

    // Ratios within each round.
    let ratio = |a: usize, b: usize| {
        let xs: Vec<f64> = samples.0[a]
            .iter()
            .zip(&samples.0[b])
            .map(|(x, y)| x / y)
            .collect();
        quartiles(xs)
    };
    println!("\n| ratio (within a round) | median [q1, q3] | issue #10 target |");
    println!("|---|---|---|");
    let rows = [
        (
            "iosv / DashMap, 1 thread",
            find("iosv", 1),
            find("dashmap", 1),
            "≤ 0.6",
        ),
        (
            "iosv / DashMap, 2 threads",
            find("iosv", 2),
            find("dashmap", 2),
            "≤ 0.4",
        ),
        (
            "iosv 2 threads / 1 thread",
            find("iosv", 2),
            find("iosv", 1),
            "≤ 1.2",
        ),
        (
            "control: thread-local HashMap 2 threads / 1 thread (nothing shared)",
            find("thread-local HashMap (nothing shared)", 2),
            find("thread-local HashMap (nothing shared)", 1),
            "— (the machine's own 2-thread cost)",
        ),
        (
            "DashMap 2 threads / 1 thread",
            find("dashmap", 2),
            find("dashmap", 1),
            "—",
        ),
        (
            "Mutex<HashMap> 2 threads / 1 thread",
            find("mutex_hashmap", 2),
            find("mutex_hashmap", 1),
            "—",
        ),
        (
            "iosv 1 M live / 1 k live",
            find("iosv 1M live", 1),
            find("iosv 1k live", 1),
            "≤ 1.3",
        ),
        (
            "journal push / ArrayQueue push+pop, 1 producer",
            find("journal push", 1),
            find("arrayqueue push+pop", 1),
            "≤ 1.0",
        ),
        (
            "journal push / ArrayQueue push+pop, 2 producers",
            find("journal push", 2),
            find("arrayqueue push+pop", 2),
            "≤ 1.0",
        ),
    ];
    for (name, a, b, target) in rows {
        let (q1, m, q3) = ratio(a, b);
        println!("| {name} | {m:.2} [{q1:.2}, {q3:.2}] | {target} |");
    }
}
