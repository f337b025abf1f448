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

mod common;

use common::{thread_phys, BenchPlatform, IMAGE};
use iosv::platform::Caller;
use iosv::verifier::{StartParams, Verifier};
use std::hint::black_box;

fn main() {
    let pairs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let params = StartParams {
        max_stack_depth: 0,
        ..Default::default()
    };
    let v = Verifier::new(BenchPlatform::bench(), params).expect("engine");
    v.driver_attached(b"bench.sys", IMAGE, 0x10_0000)
        .expect("driver slot");
    let at = Caller {
        return_address: IMAGE + 0x40,
    };
    let t0 = std::time::Instant::now();
    for i in 0..pairs {
        let base = v.map_io_space(at, thread_phys(i), 0x1000, 0);
        v.unmap_io_space(at, black_box(base), 0x1000);
    }
    let per = t0.elapsed().as_nanos() / u128::from(pairs.max(1));
    println!("{pairs} pairs, {per} ns per pair");
}
