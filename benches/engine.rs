//! Engine benchmarks, side by side with the peers named in the issue.
//!
//! * `pair/*`: one MmMapIoSpace + MmUnmapIoSpace pair through the whole engine (attribution,
//!   IRQL and parameter checks, cache-conflict filter, table insert, validate-and-remove,
//!   graveyard, per-processor statistics; stack depth 0), against the same insert + remove
//!   churn on `DashMap` and on `Mutex<HashMap>` holding an entry of the same size. 10 000
//!   mappings stay live in every structure so lookups meet populated buckets. At 2 threads,
//!   each thread runs the pairs concurrently; the figure is wall time per pair per thread.
//! * `live/*`: the same pair at 1 thread with 1 000 and with 1 000 000 other mappings live,
//!   in one table sized for 1.1 M (the per-pair cost must not grow with the live count).
//! * `journal/*`: a violation record pushed into the journal, against a crossbeam
//!   `ArrayQueue` push + pop of the same record, 1 and 2 producers.
//!
//! The platform here is the cheapest possible (a counter for time, a per-thread address
//! pool for Mm) so the figures are the engine's own cost.
//!
//! Run: `cargo bench -p iosv --bench engine` (figures in docs/performance.md). The
//! subjects live in `benches/peers/`; `benches/ratio.rs` measures the same ones in
//! interleaved rounds, which a shared, noisy machine disturbs less.

mod common;
mod peers;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peers::{
    assert_clean, concurrent, engine, engine_with, iosv_pair, DashPeer, JournalPeers, MutexPeer,
};
use std::sync::Arc;
use std::time::Duration;

fn live_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("live");
    g.throughput(Throughput::Elements(1));
    for (name, live) in [("1k", 1_000u64), ("1M", 1_000_000)] {
        let v = engine_with(1_100_000, live);
        assert_eq!(v.stats().totals().get(iosv::stats::Counter::TableFull), 0);
        g.bench_function(BenchmarkId::new("iosv", name), |b| {
            b.iter_custom(|iters| concurrent(1, iters, |i| iosv_pair(&v, i)))
        });
        assert_clean(&v);
    }
    g.finish();
}

fn pair_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair");
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        let v = Arc::new(engine());
        g.bench_with_input(BenchmarkId::new("iosv", threads), &threads, |b, &n| {
            b.iter_custom(|iters| concurrent(n, iters, |i| iosv_pair(&v, i)))
        });
        assert_clean(&v);

        let dm = DashPeer::new();
        g.bench_with_input(BenchmarkId::new("dashmap", threads), &threads, |b, &n| {
            b.iter_custom(|iters| concurrent(n, iters, |i| dm.pair(i)))
        });

        let mx = MutexPeer::new();
        g.bench_with_input(
            BenchmarkId::new("mutex_hashmap", threads),
            &threads,
            |b, &n| b.iter_custom(|iters| concurrent(n, iters, |i| mx.pair(i))),
        );
    }
    g.finish();
}

fn journal_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(1));
    let j = JournalPeers::new();
    for threads in [1usize, 2] {
        g.bench_with_input(BenchmarkId::new("push", threads), &threads, |b, &n| {
            b.iter_custom(|iters| concurrent(n, iters, |_| j.push()))
        });
        g.bench_with_input(
            BenchmarkId::new("arrayqueue_push_pop", threads),
            &threads,
            |b, &n| b.iter_custom(|iters| concurrent(n, iters, |_| j.push_pop())),
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = pair_benches, live_benches, journal_benches
}
criterion_main!(benches);
