//! A platform for the engine tests of the MDL and reserved-mapping family
//! (`verifier/mdl/tests.rs`): one IRQL and one process for everyone (both settable), a bump
//! allocator of addresses, MDL headers set by the test, and every Mm call of the family in
//! order.

use super::{BugCheck, Irql, Platform, PlatformError};
use crate::mdl::{MdlInfo, USER_MODE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// What reached "Mm", in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    UnmapLocked(u64, u64),
    FreeMdl(u64),
    Unlock(u64),
    MapReserved(u64, u64),
    UnmapReserved(u64, u32, u64),
    FreeReserved(u64, u32),
    UnmapIoSpace(u64),
}

pub(crate) struct Fake {
    pub(crate) irql: AtomicU8,
    pub(crate) process: AtomicU64,
    pub(crate) next: AtomicU64,
    pub(crate) now: AtomicU64,
    pub(crate) mdls: Mutex<HashMap<u64, MdlInfo>>,
    pub(crate) calls: Mutex<Vec<Call>>,
}

impl crate::intercept::SlotAccess for Fake {
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

impl Fake {
    pub(crate) fn new() -> Fake {
        Fake {
            irql: AtomicU8::new(0),
            process: AtomicU64::new(4),
            next: AtomicU64::new(0xFFFF_F800_1000_0000),
            now: AtomicU64::new(1000),
            mdls: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
        }
    }
    fn va(&self) -> u64 {
        self.next.fetch_add(0x10_0000, Ordering::Relaxed)
    }
    fn call(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl Platform for Fake {
    fn current_irql(&self) -> Irql {
        Irql(self.irql.load(Ordering::Relaxed))
    }
    fn current_processor(&self) -> u32 {
        0
    }
    fn processor_count(&self) -> u32 {
        1
    }
    fn current_process_id(&self) -> u64 {
        self.process.load(Ordering::Relaxed)
    }
    fn current_thread_id(&self) -> u64 {
        1
    }
    fn now_ns(&self) -> u64 {
        self.now.fetch_add(1, Ordering::Relaxed)
    }
    fn capture_stack(&self, _skip: u32, frames: &mut [u64]) -> usize {
        frames.iter_mut().for_each(|f| *f = 0xAAAA);
        frames.len()
    }
    fn raise_to_dispatch(&self) -> Irql {
        self.current_irql()
    }
    fn lower_irql(&self, _previous: Irql) {}
    fn mm_map_io_space(&self, physical: u64, _size: usize, _cache_type: u32) -> u64 {
        self.va() + (physical & 0xFFF)
    }
    fn mm_map_io_space_ex(&self, physical: u64, _size: usize, _protect: u32) -> u64 {
        self.va() + (physical & 0xFFF)
    }
    fn mm_unmap_io_space(&self, base: u64, _size: usize) {
        self.call(Call::UnmapIoSpace(base));
    }
    fn debug_break(&self) {}
    fn bugcheck(&self, _params: BugCheck) {}
    fn attach_driver(&self, _image_name: &[u8]) -> Result<u32, PlatformError> {
        Err(PlatformError::Unsupported)
    }
    fn detach_driver(&self, _image_name: &[u8]) -> Result<u32, PlatformError> {
        Err(PlatformError::Unsupported)
    }
    fn mm_map_locked_pages_specify_cache(
        &self,
        mdl: u64,
        mode: u8,
        _cache: u32,
        _requested: u64,
        _bugcheck: u32,
        _priority: u32,
    ) -> u64 {
        let off = self
            .mdls
            .lock()
            .unwrap()
            .get(&mdl)
            .map_or(0, |i| i.byte_offset);
        if mode == USER_MODE {
            0x0000_0200_0000_0000 + self.va() % 0x1_0000_0000 + u64::from(off)
        } else {
            self.va() + u64::from(off)
        }
    }
    fn mm_map_locked_pages(&self, mdl: u64, mode: u8) -> u64 {
        self.mm_map_locked_pages_specify_cache(mdl, mode, 1, 0, 1, 0)
    }
    fn mm_unmap_locked_pages(&self, base: u64, mdl: u64) {
        self.call(Call::UnmapLocked(base, mdl));
    }
    fn io_free_mdl(&self, mdl: u64) {
        self.call(Call::FreeMdl(mdl));
    }
    fn mm_unlock_pages(&self, mdl: u64) {
        self.call(Call::Unlock(mdl));
    }
    fn mm_allocate_mapping_address(&self, _size: usize, _tag: u32) -> u64 {
        self.va()
    }
    fn mm_allocate_mapping_address_ex(&self, _size: usize, _tag: u32, _flags: u32) -> u64 {
        self.va()
    }
    fn mm_map_locked_pages_with_reserved_mapping(
        &self,
        address: u64,
        _tag: u32,
        mdl: u64,
        _cache: u32,
    ) -> u64 {
        self.call(Call::MapReserved(address, mdl));
        let off = self
            .mdls
            .lock()
            .unwrap()
            .get(&mdl)
            .map_or(0, |i| i.byte_offset);
        address + u64::from(off)
    }
    fn mm_unmap_reserved_mapping(&self, base: u64, tag: u32, mdl: u64) {
        self.call(Call::UnmapReserved(base, tag, mdl));
    }
    fn mm_free_mapping_address(&self, base: u64, tag: u32) {
        self.call(Call::FreeReserved(base, tag));
    }
    fn mdl_info(&self, mdl: u64) -> Option<MdlInfo> {
        self.mdls.lock().unwrap().get(&mdl).copied()
    }
}
