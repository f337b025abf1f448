//! The benchmark platform shared by the benches: the cheapest possible `Platform` (a
//! counter for time, a per-thread address pool for Mm), so figures are the engine's own.

use iosv::intercept::{SlotAccess, SlotWriteError};
use iosv::platform::{BugCheck, Irql, Platform, PlatformError};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub static NEXT_THREAD: AtomicU32 = AtomicU32::new(0);
thread_local! {
    pub static THREAD: u32 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    static NEXT_VA: Cell<u64> = const { Cell::new(0) };
    static CLOCK: Cell<u64> = const { Cell::new(1) };
}

/// Processors the benchmark platform reports.
const PROCESSORS: u32 = 4;

/// See the module docs.
pub struct BenchPlatform {
    /// Unused (kept for the benches' constructors): the "clock" is a per-thread counter,
    /// as a real processor's time source is read without writing a shared line.
    #[allow(dead_code)]
    pub clock: AtomicU64,
}

impl SlotAccess for BenchPlatform {
    unsafe fn read_slot(&self, _address: usize) -> usize {
        0
    }
    unsafe fn compare_exchange_slot(
        &self,
        _address: usize,
        _current: usize,
        _new: usize,
    ) -> Result<(), SlotWriteError> {
        Err(SlotWriteError::Failed)
    }
}

impl Platform for BenchPlatform {
    fn current_irql(&self) -> Irql {
        Irql::PASSIVE
    }
    fn current_processor(&self) -> u32 {
        // Criterion starts new threads for every batch: concurrent threads have
        // consecutive numbers, so they run on different "processors".
        THREAD.with(|t| *t) % PROCESSORS
    }
    fn processor_count(&self) -> u32 {
        PROCESSORS
    }
    fn current_process_id(&self) -> u64 {
        4
    }
    fn current_thread_id(&self) -> u64 {
        u64::from(THREAD.with(|t| *t))
    }
    fn now_ns(&self) -> u64 {
        CLOCK.with(|c| {
            let v = c.get();
            c.set(v + 1);
            v
        })
    }
    fn capture_stack(&self, _skip: u32, _frames: &mut [u64]) -> usize {
        0
    }
    fn raise_to_dispatch(&self) -> Irql {
        Irql::PASSIVE
    }
    fn lower_irql(&self, _previous: Irql) {}
    fn mm_map_io_space(&self, physical: u64, _size: usize, _cache_type: u32) -> u64 {
        // Each thread owns a 4 GiB region and cycles through 64 Ki pages of it.
        let t = u64::from(THREAD.with(|t| *t));
        let page = NEXT_VA.with(|c| {
            let v = c.get();
            c.set((v + 1) % 65_536);
            v
        });
        0xFFFF_A000_0000_0000 + (t << 32) + (page << 12) + (physical & 0xFFF)
    }
    fn mm_map_io_space_ex(&self, physical: u64, size: usize, _protect: u32) -> u64 {
        self.mm_map_io_space(physical, size, 0)
    }
    fn mm_unmap_io_space(&self, _base: u64, _size: usize) {}
    fn debug_break(&self) {}
    fn bugcheck(&self, _params: BugCheck) {}
    fn attach_driver(&self, _image_name: &[u8]) -> Result<u32, PlatformError> {
        Err(PlatformError::Unsupported)
    }
    fn detach_driver(&self, _image_name: &[u8]) -> Result<u32, PlatformError> {
        Err(PlatformError::Unsupported)
    }
}

/// Image base of the benchmark's target driver.
pub const IMAGE: u64 = 0xFFFF_F806_1000_0000;

/// Physical page `i % 64` of this thread's own 16 MiB window: each thread plays a
/// different device's BAR, as concurrent drivers do.
pub fn thread_phys(i: u64) -> u64 {
    let t = u64::from(THREAD.with(|t| *t));
    0xF000_0000 + (t << 24) + ((i & 63) << 12)
}
