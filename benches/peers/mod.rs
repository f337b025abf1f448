//! The subjects the wall-time benches compare, in one place: iosv's map + unmap pair
//! through the whole engine, and the same insert + remove churn on `DashMap` and on
//! `Mutex<HashMap>`; a violation record pushed into the journal, and the same record
//! pushed into and popped from a crossbeam `ArrayQueue`. `benches/engine.rs` (criterion)
//! and `benches/ratio.rs` (interleaved rounds) measure them.

#![allow(dead_code)] // each bench uses its own part

use crate::common::{thread_phys, BenchPlatform, IMAGE};
use crossbeam_queue::ArrayQueue;
use dashmap::DashMap;
use iosv::drivers::DriverId;
use iosv::journal::Journal;
use iosv::platform::{Caller, Platform};
use iosv::protocol::ViolationRecord;
use iosv::verifier::{StartParams, Verifier};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// Mappings kept live in every structure, so lookups meet populated buckets.
pub const LIVE: u64 = 10_000;

/// Base of the background mappings (another "thread" region than any benchmark thread's).
const BACKGROUND: u64 = 0xFFFF_B000_0000_0000;

/// What the peers store per mapping: the same 48 bytes the table's payload holds.
#[derive(Clone, Copy)]
pub struct Entry {
    /// Mapped size.
    pub size: u64,
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

/// An engine at stack depth 0 for `capacity` mappings with `live` one-page mappings live
/// and the benchmark driver attached.
pub fn engine_with(capacity: usize, live: u64) -> Verifier<BenchPlatform> {
    let params = StartParams {
        max_stack_depth: 0,
        capacity,
        ..Default::default()
    };
    let v = Verifier::new(BenchPlatform::bench(), params).unwrap();
    let id = v.driver_attached(b"bench.sys", IMAGE, 0x10_0000).unwrap();
    assert_eq!(id, BENCH_DRIVER);
    for i in 0..live {
        v.table()
            .insert(&iosv::table::Mapping::new(BACKGROUND + (i << 12), 0x1000));
    }
    v
}

/// The default engine of the pair benches: 64 Ki capacity, [`LIVE`] live.
pub fn engine() -> Verifier<BenchPlatform> {
    engine_with(64 * 1024, LIVE)
}

/// The id of the bench engines' one driver.
pub const BENCH_DRIVER: DriverId = DriverId(1);

/// One map + unmap pair (`i`-th of this thread) through the engine, called as iosv.sys's
/// I/O-space hooks call it: through the driver's own import-slot thunk.
#[inline]
pub fn iosv_pair(v: &Verifier<BenchPlatform>, i: u64) {
    let at = Caller::through(BENCH_DRIVER, IMAGE + 0x40);
    let base = v.map_io_space(at, thread_phys(i), 0x1000, 0);
    v.unmap_io_space(at, black_box(base), 0x1000);
}

/// Panics unless the engine's churn raised no violation (a bench of an error path would
/// measure something else).
pub fn assert_clean(v: &Verifier<BenchPlatform>) {
    assert_eq!(
        v.stats().totals().per_rule.iter().sum::<u64>(),
        0,
        "bench churn must be clean"
    );
}

/// `DashMap` holding [`LIVE`] entries, with the platform that hands out its addresses.
pub struct DashPeer {
    map: DashMap<u64, Entry>,
    platform: BenchPlatform,
}

impl DashPeer {
    /// The map, populated.
    pub fn new() -> Self {
        let map = DashMap::with_capacity(65_536);
        for i in 0..LIVE {
            map.insert(BACKGROUND + (i << 12), entry(0x1000, 0));
        }
        DashPeer {
            map,
            platform: BenchPlatform::bench(),
        }
    }

    /// The same churn as [`iosv_pair`]: the platform's map, an insert, a remove.
    #[inline]
    pub fn pair(&self, i: u64) {
        let phys = thread_phys(i);
        let base = self.platform.mm_map_io_space(phys, 0x1000, 0);
        self.map.insert(base, entry(0x1000, phys));
        let e = self.map.remove(&black_box(base)).unwrap();
        assert_eq!(e.1.size, 0x1000);
    }
}

/// `Mutex<HashMap>` holding [`LIVE`] entries.
pub struct MutexPeer {
    map: Mutex<HashMap<u64, Entry>>,
    platform: BenchPlatform,
}

impl MutexPeer {
    /// The map, populated.
    pub fn new() -> Self {
        let mut map = HashMap::with_capacity(65_536);
        for i in 0..LIVE {
            map.insert(BACKGROUND + (i << 12), entry(0x1000, 0));
        }
        MutexPeer {
            map: Mutex::new(map),
            platform: BenchPlatform::bench(),
        }
    }

    /// The same churn as [`iosv_pair`], one lock per operation.
    #[inline]
    pub fn pair(&self, i: u64) {
        let phys = thread_phys(i);
        let base = self.platform.mm_map_io_space(phys, 0x1000, 0);
        self.map.lock().unwrap().insert(base, entry(0x1000, phys));
        let e = self.map.lock().unwrap().remove(&black_box(base)).unwrap();
        assert_eq!(e.size, 0x1000);
    }
}

std::thread_local! {
    /// [`private_pair`]'s table: one per thread, so nothing is shared.
    static PRIVATE: std::cell::RefCell<HashMap<u64, Entry>> = std::cell::RefCell::new({
        let mut map = HashMap::with_capacity(65_536);
        for i in 0..LIVE {
            map.insert(BACKGROUND + (i << 12), entry(0x1000, 0));
        }
        map
    });
}

/// A control with nothing shared between threads: the same churn as [`MutexPeer::pair`]
/// on a `HashMap` of the calling thread's own (built on its first call). Its 2-thread /
/// 1-thread ratio is what the machine itself adds when two threads run at once.
#[inline]
pub fn private_pair(platform: &BenchPlatform, i: u64) {
    let phys = thread_phys(i);
    let base = platform.mm_map_io_space(phys, 0x1000, 0);
    PRIVATE.with(|m| {
        let mut m = m.borrow_mut();
        m.insert(base, entry(0x1000, phys));
        let e = m.remove(&black_box(base)).unwrap();
        assert_eq!(e.size, 0x1000);
    });
}

/// The violation record both journal subjects carry (472 bytes).
pub fn record() -> ViolationRecord {
    ViolationRecord {
        rule: 4,
        address: 0xFFFF_F800_0000_1000,
        passed_size: 0x1000,
        ..Default::default()
    }
}

/// The journal (4096 records) and its peer queue of the same capacity.
pub struct JournalPeers {
    /// iosv's journal.
    pub journal: Journal,
    /// crossbeam's bounded queue.
    pub queue: ArrayQueue<ViolationRecord>,
    record: ViolationRecord,
}

impl JournalPeers {
    /// Both, empty.
    pub fn new() -> Self {
        JournalPeers {
            journal: Journal::new(4096).unwrap(),
            queue: ArrayQueue::new(4096),
            record: record(),
        }
    }

    /// One journal push.
    #[inline]
    pub fn push(&self) {
        black_box(self.journal.push_record(&self.record));
    }

    /// One queue push + pop.
    #[inline]
    pub fn push_pop(&self) {
        let _ = self.queue.push(black_box(self.record));
        black_box(self.queue.pop());
    }
}

/// Runs `pair` `iters` times on each of `threads` threads started together; returns the
/// wall time of the slowest thread.
pub fn concurrent(threads: usize, iters: u64, pair: impl Fn(u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
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
    })
}
