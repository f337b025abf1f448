//! A plain loop of map + unmap pairs through the engine, for counting instructions with
//! callgrind (repeatable whatever else the machine does), on the same platform and
//! workload as `pair/iosv/1` in `benches/engine.rs`:
//!
//! ```sh
//! cargo bench -p iosv --bench pair_count --no-run     # builds target/release/deps/pair_count-*
//! valgrind --tool=callgrind target/release/deps/pair_count-<hash> 100000
//! ```
//!
//! Under `cargo bench` it runs a short loop and prints the time per pair.
//!
//! `pair_count <n> <mode> <live>` counts the error paths that used to walk the table, with
//! `<live>` other mappings live (run it for two `n` and divide the difference, as
//! `scripts/bench-check` does; keep `n + live` under 65 536, the benchmark platform's
//! virtual pages): `interior` = `n` unmaps at an interior address of a live mapping
//! (IOSV006, contained), `conflict` = `n` map + unmap pairs whose map shares a page with a
//! live mapping of another cache type (IOSV010), `walk` = `n` lookups of an interior
//! address by a walk over every slot (what `interior` cost before the virtual index).
//! `journal` = `n` pushes of a violation record into the journal, `queue` = `n` push + pop
//! of the same record on a crossbeam `ArrayQueue` (issue #10's journal peer); `depth8` =
//! the clean pair with 8-frame stacks captured and stored (depth 0 otherwise);
//! `attributed` = the clean pair with the caller known by its return address alone (the
//! host engine's and the MDL family's hooks; the default is a call through the driver's
//! own thunk, as iosv.sys's I/O-space hooks make it); `iosv10k`,
//! `dashmap`, `mutex` = the wall-time benches' pair subjects (10 000 other entries live).
//! `IOSV_BENCH_CAPACITY`, `IOSV_BENCH_GRAVEYARD` and `IOSV_BENCH_CONFLICT_BUCKETS` size
//! the engine's table, graveyard and conflict filter (defaults otherwise).

mod common;
mod peers;

use common::{thread_phys, BenchPlatform, IMAGE};
use iosv::platform::fake::FakeConfig;
use iosv::platform::Caller;
use iosv::verifier::{StartParams, Verifier};
use std::hint::black_box;

fn main() {
    let pairs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut args = std::env::args().skip(2);
    let mode = args.next().unwrap_or_default();
    // `depth8`: the clean pair with stacks of 8 frames captured (by the fake platform: 8
    // stores, nothing like RtlWalkFrameChain's cost) and stored with the mapping.
    let depth: usize = if mode == "depth8" { 8 } else { 0 };
    // Structure sizes from the environment (IOSV_BENCH_CAPACITY, _GRAVEYARD,
    // _CONFLICT_BUCKETS; the defaults otherwise): how much of a pair's time is cache
    // misses in each structure, by shrinking it until it stays in cache.
    let size = |name: &str, default: usize| {
        std::env::var(format!("IOSV_BENCH_{name}"))
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let defaults = StartParams::default();
    let params = StartParams {
        max_stack_depth: depth,
        capacity: size("CAPACITY", defaults.capacity),
        graveyard: size("GRAVEYARD", defaults.graveyard),
        conflict_buckets: size("CONFLICT_BUCKETS", defaults.conflict_buckets),
        ..defaults
    };
    let platform = if depth == 0 {
        BenchPlatform::bench()
    } else {
        BenchPlatform::bench_with(FakeConfig {
            stack: Some((IMAGE + 0x100, 0x10)),
            ..FakeConfig::bench()
        })
    };
    let v = Verifier::new(platform, params).expect("engine");
    let id = v
        .driver_attached(b"bench.sys", IMAGE, 0x10_0000)
        .expect("driver slot");
    // As iosv.sys's I/O-space hooks call the engine: through the driver's own thunk
    // (`attributed` = as the host engine and the MDL family's hooks do: by the return
    // address alone).
    let at = if mode == "attributed" {
        Caller::at(IMAGE + 0x40)
    } else {
        Caller::through(id, IMAGE + 0x40)
    };
    if mode == "dashmap" || mode == "mutex" || mode == "iosv10k" {
        // The wall-time benches' subjects (benches/peers, 10 000 live), counted the same
        // way: the instruction ratio that their time ratio is made of.
        let (dash, mutex, engine) = (
            peers::DashPeer::new(),
            peers::MutexPeer::new(),
            peers::engine(),
        );
        for i in 0..pairs {
            match mode.as_str() {
                "dashmap" => dash.pair(i),
                "mutex" => mutex.pair(i),
                _ => peers::iosv_pair(&engine, i),
            }
        }
        println!("{pairs} {mode} pairs");
        return;
    }
    if mode == "journal" || mode == "queue" {
        let peers = peers::JournalPeers::new();
        for _ in 0..pairs {
            if mode == "journal" {
                peers.push();
            } else {
                peers.push_pop();
            }
        }
        println!("{pairs} {mode} records");
        return;
    }
    let live: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    if !mode.is_empty() && mode != "depth8" && mode != "attributed" {
        // Live mappings of one page each, non-cached, on consecutive physical pages.
        let phys = |i: u64| 0x9_0000_0000 + ((i % live.max(1)) << 12);
        let bases: Vec<u64> = (0..live)
            .map(|i| v.map_io_space(at, phys(i), 0x1000, 0))
            .collect();
        let interior = |i: u64| {
            bases
                .get((i % live.max(1)) as usize)
                .map_or(0, |b| b + 0x800)
        };
        for i in 0..pairs {
            match mode.as_str() {
                "interior" => v.unmap_io_space(at, black_box(interior(i)), 0x1000),
                "walk" => {
                    black_box(v.table().find_containing_by_walk(interior(i)));
                }
                "conflict" => {
                    let base = v.map_io_space(at, phys(i), 0x1000, 1);
                    v.unmap_io_space(at, black_box(base), 0x1000);
                }
                _ => panic!("mode: interior, walk, conflict, journal or queue"),
            }
        }
        println!("{pairs} {mode} with {live} live");
        return;
    }
    let t0 = std::time::Instant::now();
    for i in 0..pairs {
        // Every hook argument through black_box: a real hook's arguments are not
        // constants, so none may be folded into an inlined hook body.
        let base = v.map_io_space(
            black_box(at),
            black_box(thread_phys(i)),
            black_box(0x1000),
            black_box(0),
        );
        v.unmap_io_space(black_box(at), black_box(base), black_box(0x1000));
    }
    let per = t0.elapsed().as_nanos() / u128::from(pairs.max(1));
    println!("{pairs} pairs, {per} ns per pair");
}
