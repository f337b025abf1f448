//! A minimal platform for the engine's unit tests: one IRQL for everyone, a bump allocator
//! of virtual addresses, and lists of what reached "Mm".

use super::{BugCheck, Irql, Platform, PlatformError};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

pub(crate) struct FakePlatform {
    pub irql: AtomicU8,
    pub thread: AtomicU64,
    pub now: AtomicU64,
    next_va: AtomicU64,
    pub reuse: Mutex<Vec<u64>>,
    pub unmapped: Mutex<Vec<(u64, usize)>>,
    pub bugchecks: Mutex<Vec<BugCheck>>,
    pub breaks: AtomicU64,
    pub fail_maps: std::sync::atomic::AtomicBool,
}

impl FakePlatform {
    pub fn new() -> Self {
        FakePlatform {
            irql: AtomicU8::new(0),
            thread: AtomicU64::new(1),
            now: AtomicU64::new(1_000),
            next_va: AtomicU64::new(0xFFFF_F800_1000_0000),
            reuse: Mutex::new(Vec::new()),
            unmapped: Mutex::new(Vec::new()),
            bugchecks: Mutex::new(Vec::new()),
            breaks: AtomicU64::new(0),
            fail_maps: std::sync::atomic::AtomicBool::new(false),
        }
    }
    fn map(&self, physical: u64, size: usize) -> u64 {
        if self.fail_maps.load(Ordering::Relaxed) {
            return 0;
        }
        let page = self
            .reuse
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| self.next_va.fetch_add(0x10_0000, Ordering::Relaxed));
        let _ = size;
        page + (physical & 0xFFF)
    }
}

impl crate::intercept::SlotAccess for FakePlatform {
    unsafe fn read_slot(&self, _address: usize) -> usize {
        0
    }
    unsafe fn compare_exchange_slot(
        &self,
        _address: usize,
        _current: usize,
        _new: usize,
    ) -> Result<(), crate::intercept::SlotWriteError> {
        Err(crate::intercept::SlotWriteError::Failed)
    }
}

impl Platform for FakePlatform {
    fn current_irql(&self) -> Irql {
        Irql(self.irql.load(Ordering::Relaxed))
    }
    fn current_processor(&self) -> u32 {
        0
    }
    fn processor_count(&self) -> u32 {
        2
    }
    fn current_process_id(&self) -> u64 {
        4
    }
    fn current_thread_id(&self) -> u64 {
        self.thread.load(Ordering::Relaxed)
    }
    fn now_ns(&self) -> u64 {
        self.now.fetch_add(1, Ordering::Relaxed)
    }
    fn capture_stack(&self, _skip: u32, frames: &mut [u64]) -> usize {
        for (i, f) in frames.iter_mut().enumerate() {
            *f = 0xAAAA_0000 + i as u64;
        }
        frames.len()
    }
    fn raise_to_dispatch(&self) -> Irql {
        self.current_irql()
    }
    fn lower_irql(&self, _previous: Irql) {}
    fn mm_map_io_space(&self, physical: u64, size: usize, _cache_type: u32) -> u64 {
        self.map(physical, size)
    }
    fn mm_map_io_space_ex(&self, physical: u64, size: usize, _protect: u32) -> u64 {
        self.map(physical, size)
    }
    fn mm_unmap_io_space(&self, base: u64, size: usize) {
        self.unmapped.lock().unwrap().push((base, size));
    }
    fn debug_break(&self) {
        self.breaks.fetch_add(1, Ordering::Relaxed);
    }
    fn bugcheck(&self, params: BugCheck) {
        self.bugchecks.lock().unwrap().push(params);
    }
    fn attach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        if image_name == b"present.sys" {
            Ok(3)
        } else {
            Err(PlatformError::NotFound)
        }
    }
    fn detach_driver(&self, _image_name: &[u8]) -> Result<u32, PlatformError> {
        Err(PlatformError::Unsupported)
    }
}
