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
//! Run: `cargo bench -p iosv --bench engine` (figures in docs/performance.md).

mod common;

use common::{thread_phys, BenchPlatform, IMAGE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use dashmap::DashMap;
use iosv::platform::{Caller, Platform};
use iosv::protocol::ViolationRecord;
use iosv::verifier::{StartParams, Verifier};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const LIVE: u64 = 10_000;

/// What the peers store per mapping: the same 48 bytes the table's payload holds.
#[derive(Clone, Copy)]
#[allow(dead_code)]
struct Entry {
    size: u64,
    physical: u64,
    device: u64,
    time: u64,
    info: u64,
    meta: u64,
}

fn entry(size: u64, physical: u64) -> Entry {
    Entry {
        size,
        physical,
        device: 0,
        time: 1,
        info: 2,
        meta: 3,
    }
}

fn engine() -> Verifier<BenchPlatform> {
    engine_with(64 * 1024, LIVE)
}

fn engine_with(capacity: usize, live: u64) -> Verifier<BenchPlatform> {
    let params = StartParams {
        max_stack_depth: 0,
        capacity,
        ..Default::default()
    };
    let v = Verifier::new(BenchPlatform::bench(), params).unwrap();
    v.driver_attached(b"bench.sys", IMAGE, 0x10_0000).unwrap();
    // Background mappings from another "thread" region.
    for i in 0..live {
        let base = 0xFFFF_B000_0000_0000 + (i << 12);
        v.table().insert(&iosv::table::Mapping::new(base, 0x1000));
    }
    v
}

fn live_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("live");
    g.throughput(Throughput::Elements(1));
    for (name, live) in [("1k", 1_000u64), ("1M", 1_000_000)] {
        let v = engine_with(1_100_000, live);
        assert_eq!(v.stats().totals().get(iosv::stats::Counter::TableFull), 0);
        g.bench_function(BenchmarkId::new("iosv", name), |b| {
            b.iter_custom(|iters| {
                concurrent(1, iters, |i| {
                    let at = Caller {
                        return_address: IMAGE + 0x40,
                    };
                    let base = v.map_io_space(at, thread_phys(i), 0x1000, 0);
                    v.unmap_io_space(at, black_box(base), 0x1000);
                })
            })
        });
        assert_eq!(
            v.stats().totals().per_rule.iter().sum::<u64>(),
            0,
            "bench churn must be clean"
        );
    }
    g.finish();
}

/// Runs `pair` `iters` times on each of `threads` threads; returns wall time / iters.
fn concurrent(threads: usize, iters: u64, pair: impl Fn(u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    let total = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let t0 = Instant::now();
                    for i in 0..iters {
                        pair(i);
                    }
                    t0.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    });
    total
}

fn pair_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("pair");
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        let v = Arc::new(engine());
        g.bench_with_input(BenchmarkId::new("iosv", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                concurrent(n, iters, |i| {
                    let at = Caller {
                        return_address: IMAGE + 0x40,
                    };
                    let phys = thread_phys(i);
                    let base = v.map_io_space(at, phys, 0x1000, 0);
                    v.unmap_io_space(at, black_box(base), 0x1000);
                })
            })
        });
        assert_eq!(
            v.stats().totals().per_rule.iter().sum::<u64>(),
            0,
            "bench churn must be clean"
        );

        let dm: Arc<DashMap<u64, Entry>> = Arc::new(DashMap::with_capacity(65_536));
        for i in 0..LIVE {
            dm.insert(0xFFFF_B000_0000_0000 + (i << 12), entry(0x1000, 0));
        }
        let p = BenchPlatform::bench();
        g.bench_with_input(BenchmarkId::new("dashmap", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                concurrent(n, iters, |i| {
                    let phys = thread_phys(i);
                    let base = p.mm_map_io_space(phys, 0x1000, 0);
                    dm.insert(base, entry(0x1000, phys));
                    let e = dm.remove(&black_box(base)).unwrap();
                    assert_eq!(e.1.size, 0x1000);
                })
            })
        });

        let mx: Arc<Mutex<HashMap<u64, Entry>>> =
            Arc::new(Mutex::new(HashMap::with_capacity(65_536)));
        for i in 0..LIVE {
            mx.lock()
                .unwrap()
                .insert(0xFFFF_B000_0000_0000 + (i << 12), entry(0x1000, 0));
        }
        g.bench_with_input(
            BenchmarkId::new("mutex_hashmap", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    concurrent(n, iters, |i| {
                        let phys = thread_phys(i);
                        let base = p.mm_map_io_space(phys, 0x1000, 0);
                        mx.lock().unwrap().insert(base, entry(0x1000, phys));
                        let e = mx.lock().unwrap().remove(&black_box(base)).unwrap();
                        assert_eq!(e.size, 0x1000);
                    })
                })
            },
        );
    }
    g.finish();
}

fn journal_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(1));
    let j = iosv::journal::Journal::new(4096).unwrap();
    let r = ViolationRecord {
        rule: 4,
        address: 0xFFFF_F800_0000_1000,
        passed_size: 0x1000,
        ..Default::default()
    };
    let q: ArrayQueue<ViolationRecord> = ArrayQueue::new(4096);
    for threads in [1usize, 2] {
        g.bench_with_input(BenchmarkId::new("push", threads), &threads, |b, &n| {
            b.iter_custom(|iters| {
                concurrent(n, iters, |_| {
                    black_box(j.push_record(&r));
                })
            })
        });
        g.bench_with_input(
            BenchmarkId::new("arrayqueue_push_pop", threads),
            &threads,
            |b, &n| {
                b.iter_custom(|iters| {
                    concurrent(n, iters, |_| {
                        let _ = q.push(black_box(r));
                        black_box(q.pop());
                    })
                })
            },
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
