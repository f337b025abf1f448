//! The one fake [`Platform`] for tests and benchmarks: the engine's unit tests, the
//! client's tests and the benches all build on it (feature `test-support`, which implies
//! `std`; always compiled for this crate's own tests).
//!
//! What it simulates is set once in a [`FakeConfig`]; what a test changes while it runs
//! (the IRQL, the thread, the process, the top stack frame, addresses Mm should hand out
//! again, failing maps, the MDL headers "Mm" reads) and what it observes (unmaps that
//! reached "Mm", every call of the MDL and reserved-mapping family in order, bug checks,
//! breaks) are public fields. Two shapes, chosen by the type so that neither pays for the other's branches:
//!
//! - `FakePlatform` (`PER_THREAD = false`, [`FakePlatform::new`] / [`FakePlatform::with`]):
//!   one IRQL, thread and clock for everyone, a shared bump allocator of virtual addresses
//!   with a reuse list, and lists of what reached Mm.
//! - [`BenchPlatform`] (`PER_THREAD = true`, [`FakePlatform::bench`]): the cheapest
//!   platform possible, so benchmark figures are the engine's own — each OS thread has its
//!   own thread id, processor (`id % 4`), clock and pool of 64 Ki addresses in a 4 GiB
//!   region, so no call writes a shared cache line; the IRQL is always PASSIVE_LEVEL,
//!   nothing is recorded and stacks are empty. `scripts/bench-check` holds it to
//!   `benches/budget.txt`. Measured there (callgrind), the benches' former platform of
//!   their own cost 998 instructions per pair; this one cost 1188 with a run-time shape
//!   switch and out-of-line methods, 1067 with `#[inline]` methods, 1024 with the shape a
//!   type parameter, and costs 1008 (budget 1012) with a constant processor count. The
//!   10 left are, as far as the profile shows, its thread-locals being read from another
//!   crate (the TLS offset loaded per access) — hence the shape in the type, the
//!   `#[inline]`s and the constant.
//!
//! The one other `Platform` outside the engine's real ones, `tests/core-link`'s stand-in,
//! stays separate: it is a `no_std` kernel image whose point is that its Mm calls import
//! `MmMapIoSpace`/`MmUnmapIoSpace` from ntoskrnl, which a std fake cannot be.

use super::{BugCheck, Irql, Platform, PlatformError};
use crate::intercept::{SlotAccess, SlotWriteError};
use crate::mdl::{
    MdlInfo, MDL_MAPPED_TO_SYSTEM_VA, MDL_PARTIAL, MDL_PARTIAL_HAS_BEEN_MAPPED, USER_MODE,
};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

/// How a [`FakePlatform`] behaves; see [`FakeConfig::default`] and [`FakeConfig::bench`].
#[derive(Debug, Clone, Copy)]
pub struct FakeConfig {
    /// What `processor_count` reports (always 4 for [`BenchPlatform`]).
    pub processors: u32,
    /// The thread id reported first (shared shape; tests may change `thread`).
    pub thread: u64,
    /// First reading of the clock, in ns (shared shape).
    pub clock_start: u64,
    /// How far the clock moves per reading (shared shape).
    pub clock_step: u64,
    /// First virtual address the shared Mm hands out.
    pub va_base: u64,
    /// Distance between consecutive addresses of the shared Mm.
    pub va_step: u64,
    /// Frame `i` of a captured stack is `stack_base + i * stack_step` (frame 0 is
    /// [`FakePlatform::frame`] when that is not 0). `None`: stacks are empty.
    pub stack: Option<(u64, u64)>,
    /// The one image name `attach_driver` finds (ASCII case-insensitive; it patches 3
    /// slots); every other name is `NotFound`.
    pub attachable: &'static [u8],
    /// Whether `detach_driver` works like `attach_driver` (otherwise `Unsupported`).
    pub detach: bool,
}

impl Default for FakeConfig {
    /// The engine's unit tests' platform: PASSIVE_LEVEL, thread 1, a clock from 1000 ns in
    /// 1 ns steps, 2 processors, addresses 1 MiB apart from `0xFFFF_F800_1000_0000`, stack
    /// frames `0xAAAA_0000`, `0xAAAA_0001`, …, `present.sys` attachable, detach unsupported.
    fn default() -> Self {
        FakeConfig {
            processors: 2,
            thread: 1,
            clock_start: 1_000,
            clock_step: 1,
            va_base: 0xFFFF_F800_1000_0000,
            va_step: 0x10_0000,
            stack: Some((0xAAAA_0000, 1)),
            attachable: b"present.sys",
            detach: false,
        }
    }
}

impl FakeConfig {
    /// The benchmark platform: per-thread everything, 4 processors, empty stacks, nothing
    /// attachable (see the module docs).
    pub fn bench() -> Self {
        FakeConfig {
            processors: BENCH_PROCESSORS,
            stack: None,
            attachable: b"",
            ..FakeConfig::default()
        }
    }
}

/// The process id reported first: the System process.
const SYSTEM_PROCESS: u64 = 4;

/// Processors the benchmark shape reports (its `processors` setting is ignored).
const BENCH_PROCESSORS: u32 = 4;

/// Numbers OS threads for [`BenchPlatform`]: consecutive threads get consecutive
/// numbers, so concurrent threads run on different "processors".
static NEXT_THREAD: AtomicU32 = AtomicU32::new(0);

std::thread_local! {
    // Const-initialised (no lazy-init state behind each read); numbered on first use.
    static THREAD: Cell<u32> = const { Cell::new(u32::MAX) };
    static NEXT_VA: Cell<u64> = const { Cell::new(0) };
    static CLOCK: Cell<u64> = const { Cell::new(1) };
}

/// The calling OS thread's number under [`BenchPlatform`] (0, 1, … in order of first
/// use), e.g. to give each benchmark thread its own physical range.
#[inline]
pub fn thread_number() -> u32 {
    THREAD.with(|t| {
        let n = t.get();
        if n != u32::MAX {
            return n;
        }
        let n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        t.set(n);
        n
    })
}

/// Locks `m`, ignoring poisoning (a test that panicked holding it has failed anyway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A release of the MDL and reserved-mapping family (or an I/O-space unmap) that reached
/// "Mm", in [`FakePlatform::mm_calls`] (shared shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmCall {
    /// `MmUnmapLockedPages(base, mdl)`.
    UnmapLocked(u64, u64),
    /// `IoFreeMdl(mdl)`.
    FreeMdl(u64),
    /// `MmUnlockPages(mdl)`.
    Unlock(u64),
    /// `MmMapLockedPagesWithReservedMapping(range, tag, mdl, ..)`.
    MapReserved(u64, u32, u64),
    /// `MmUnmapReservedMapping(base, tag, mdl)`.
    UnmapReserved(u64, u32, u64),
    /// `MmFreeMappingAddress(base, tag)`.
    FreeReserved(u64, u32),
    /// `MmUnmapIoSpace(base, ..)` (also in [`FakePlatform::unmapped`], with its size).
    UnmapIoSpace(u64),
}

/// Where user-mode MDL mappings of the shared shape live (`UserMode` maps).
const USER_VA_BASE: u64 = 0x0000_0200_0000_0000;

/// The fake platform; `PER_THREAD` picks the shape (see the module docs).
#[derive(Debug)]
pub struct FakePlatform<const PER_THREAD: bool = false> {
    config: FakeConfig,
    /// IRQL of "the current thread" (shared shape).
    pub irql: AtomicU8,
    /// Id of "the current thread" (shared shape).
    pub thread: AtomicU64,
    /// Id of "the current process" (shared shape; 4, the System process, at first).
    pub process: AtomicU64,
    /// The next clock reading (shared shape).
    pub now: AtomicU64,
    /// Return address a captured stack reports first (0: the configured pattern's).
    pub frame: AtomicU64,
    next_va: AtomicU64,
    /// Page addresses the shared Mm hands out next, last first (address reuse).
    pub reuse: Mutex<Vec<u64>>,
    /// (base, size) of every unmap that reached Mm (shared shape).
    pub unmapped: Mutex<Vec<(u64, usize)>>,
    /// The MDL headers "Mm" reads (`mdl_info`, the byte offset of an MDL mapping), by MDL
    /// address; a test sets them.
    pub mdls: Mutex<HashMap<u64, MdlInfo>>,
    /// Every release of the MDL family and every I/O-space unmap that reached Mm, in order
    /// (shared shape).
    pub mm_calls: Mutex<Vec<MmCall>>,
    /// Every bug check requested (shared shape).
    pub bugchecks: Mutex<Vec<BugCheck>>,
    /// Debug breaks requested.
    pub breaks: AtomicU64,
    /// While set, every map fails (returns 0).
    pub fail_maps: AtomicBool,
}

/// The benchmark shape of [`FakePlatform`]: per-thread everything (see the module docs).
pub type BenchPlatform = FakePlatform<true>;

impl Default for FakePlatform {
    fn default() -> Self {
        FakePlatform::new()
    }
}

impl FakePlatform {
    /// A platform with [`FakeConfig::default`].
    pub fn new() -> Self {
        FakePlatform::with(FakeConfig::default())
    }

    /// A platform that behaves as `config` says.
    pub fn with(config: FakeConfig) -> Self {
        FakePlatform::build(config)
    }
}

impl BenchPlatform {
    /// The benchmark platform ([`FakeConfig::bench`]).
    pub fn bench() -> Self {
        FakePlatform::build(FakeConfig::bench())
    }

    /// A benchmark platform that behaves as `config` says (e.g. [`FakeConfig::bench`] with
    /// stacks, to measure the engine's share of capturing and storing them).
    pub fn bench_with(config: FakeConfig) -> Self {
        FakePlatform::build(config)
    }
}

impl<const PER_THREAD: bool> FakePlatform<PER_THREAD> {
    fn build(config: FakeConfig) -> Self {
        FakePlatform {
            config,
            irql: AtomicU8::new(0),
            thread: AtomicU64::new(config.thread),
            process: AtomicU64::new(SYSTEM_PROCESS),
            now: AtomicU64::new(config.clock_start),
            frame: AtomicU64::new(0),
            next_va: AtomicU64::new(config.va_base),
            reuse: Mutex::new(Vec::new()),
            unmapped: Mutex::new(Vec::new()),
            mdls: Mutex::new(HashMap::new()),
            mm_calls: Mutex::new(Vec::new()),
            bugchecks: Mutex::new(Vec::new()),
            breaks: AtomicU64::new(0),
            fail_maps: AtomicBool::new(false),
        }
    }

    /// How this platform behaves.
    pub fn config(&self) -> &FakeConfig {
        &self.config
    }

    /// Takes the list of unmaps that reached Mm so far.
    pub fn take_unmapped(&self) -> Vec<(u64, usize)> {
        core::mem::take(&mut *lock(&self.unmapped))
    }

    /// Takes the family's calls that reached Mm so far ([`FakePlatform::mm_calls`]).
    pub fn take_mm_calls(&self) -> Vec<MmCall> {
        core::mem::take(&mut *lock(&self.mm_calls))
    }

    /// Records `call` (shared shape only).
    fn record(&self, call: MmCall) {
        if !self.per_thread() {
            lock(&self.mm_calls).push(call);
        }
    }

    /// As Mm: the MDL at `mdl` no longer records a system mapping, if `which` says the
    /// routine released the one it recorded.
    fn mdl_forgets_mapping(&self, mdl: u64, which: impl FnOnce(&MdlInfo) -> bool) {
        if let Some(i) = lock(&self.mdls).get_mut(&mdl) {
            if i.flags & MDL_MAPPED_TO_SYSTEM_VA != 0 && which(i) {
                i.flags &= !(MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED);
                i.mapped_system_va = 0;
            }
        }
    }

    /// The byte offset of the MDL at `mdl`, as set in [`FakePlatform::mdls`] (0 if unset).
    fn byte_offset(&self, mdl: u64) -> u64 {
        lock(&self.mdls)
            .get(&mdl)
            .map_or(0, |i| u64::from(i.byte_offset))
    }

    #[inline]
    fn per_thread(&self) -> bool {
        PER_THREAD
    }

    #[inline]
    fn map(&self, physical: u64) -> u64 {
        if self.per_thread() {
            // Each thread owns a 4 GiB region and cycles through 64 Ki pages of it.
            let t = u64::from(thread_number());
            let page = NEXT_VA.with(|c| {
                let v = c.get();
                c.set(v.wrapping_add(1) % 65_536);
                v
            });
            return 0xFFFF_A000_0000_0000_u64
                .wrapping_add(t << 32)
                .wrapping_add(page << 12)
                .wrapping_add(physical & 0xFFF);
        }
        if self.fail_maps.load(Ordering::Relaxed) {
            return 0;
        }
        let page = lock(&self.reuse).pop().unwrap_or_else(|| {
            self.next_va
                .fetch_add(self.config.va_step, Ordering::Relaxed)
        });
        page.wrapping_add(physical & 0xFFF)
    }

    fn finds(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        if !self.config.attachable.is_empty()
            && image_name.eq_ignore_ascii_case(self.config.attachable)
        {
            Ok(3)
        } else {
            Err(PlatformError::NotFound)
        }
    }
}

impl<const PER_THREAD: bool> SlotAccess for FakePlatform<PER_THREAD> {
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

impl<const PER_THREAD: bool> Platform for FakePlatform<PER_THREAD> {
    #[inline]
    fn current_irql(&self) -> Irql {
        if self.per_thread() {
            return Irql::PASSIVE;
        }
        Irql(self.irql.load(Ordering::SeqCst))
    }
    #[inline]
    fn current_processor(&self) -> u32 {
        if self.per_thread() {
            // A constant divisor: no division on the benchmarked path.
            return thread_number() % BENCH_PROCESSORS;
        }
        0
    }
    #[inline]
    fn processor_count(&self) -> u32 {
        if self.per_thread() {
            return BENCH_PROCESSORS;
        }
        self.config.processors
    }
    #[inline]
    fn current_process_id(&self) -> u64 {
        if self.per_thread() {
            return SYSTEM_PROCESS;
        }
        self.process.load(Ordering::Relaxed)
    }
    #[inline]
    fn current_thread_id(&self) -> u64 {
        if self.per_thread() {
            return u64::from(thread_number());
        }
        self.thread.load(Ordering::Relaxed)
    }
    #[inline]
    fn now_ns(&self) -> u64 {
        if self.per_thread() {
            return CLOCK.with(|c| {
                let v = c.get();
                c.set(v.wrapping_add(1));
                v
            });
        }
        self.now.fetch_add(self.config.clock_step, Ordering::SeqCst)
    }
    #[inline]
    fn capture_stack(&self, _skip: u32, frames: &mut [u64]) -> usize {
        let Some((base, step)) = self.config.stack else {
            return 0;
        };
        let mut at = base;
        for f in frames.iter_mut() {
            *f = at;
            at = at.wrapping_add(step);
        }
        let top = self.frame.load(Ordering::SeqCst);
        if let (Some(f), true) = (frames.first_mut(), top != 0) {
            *f = top;
        }
        frames.len()
    }
    #[inline]
    fn raise_to_dispatch(&self) -> Irql {
        if self.per_thread() {
            return Irql::PASSIVE;
        }
        Irql(self.irql.fetch_max(Irql::DISPATCH.0, Ordering::SeqCst))
    }
    #[inline]
    fn lower_irql(&self, previous: Irql) {
        if !self.per_thread() {
            self.irql.store(previous.0, Ordering::SeqCst);
        }
    }
    #[inline]
    fn mm_map_io_space(&self, physical: u64, _size: usize, _cache_type: u32) -> u64 {
        self.map(physical)
    }
    #[inline]
    fn mm_map_io_space_ex(&self, physical: u64, _size: usize, _protect: u32) -> u64 {
        self.map(physical)
    }
    #[inline]
    fn mm_unmap_io_space(&self, base: u64, size: usize) {
        if !self.per_thread() {
            lock(&self.unmapped).push((base, size));
            self.record(MmCall::UnmapIoSpace(base));
        }
    }
    fn mm_map_locked_pages_specify_cache(
        &self,
        mdl: u64,
        access_mode: u8,
        _cache_type: u32,
        _requested_address: u64,
        _bugcheck_on_failure: u32,
        _priority: u32,
    ) -> u64 {
        let va = self.map(0);
        if va == 0 {
            return 0;
        }
        let off = self.byte_offset(mdl);
        if access_mode == USER_MODE {
            // The same page sequence, moved into the user half of the address space.
            USER_VA_BASE
                .wrapping_add(va % 0x1_0000_0000)
                .wrapping_add(off)
        } else {
            // As Mm: the MDL records its system mapping.
            let base = va.wrapping_add(off);
            if let Some(i) = lock(&self.mdls).get_mut(&mdl) {
                i.flags |= MDL_MAPPED_TO_SYSTEM_VA;
                if i.flags & MDL_PARTIAL != 0 {
                    i.flags |= MDL_PARTIAL_HAS_BEEN_MAPPED;
                }
                i.mapped_system_va = base;
            }
            base
        }
    }
    fn mm_map_locked_pages(&self, mdl: u64, access_mode: u8) -> u64 {
        self.mm_map_locked_pages_specify_cache(mdl, access_mode, 1, 0, 1, 0)
    }
    fn mm_unmap_locked_pages(&self, base: u64, mdl: u64) {
        self.record(MmCall::UnmapLocked(base, mdl));
        self.mdl_forgets_mapping(mdl, |i| i.mapped_system_va == base);
    }
    fn io_free_mdl(&self, mdl: u64) {
        self.record(MmCall::FreeMdl(mdl));
        self.mdl_forgets_mapping(mdl, |i| i.released_by_prepare_for_reuse());
    }
    fn mm_unlock_pages(&self, mdl: u64) {
        self.record(MmCall::Unlock(mdl));
        self.mdl_forgets_mapping(mdl, |_| true);
    }
    fn mm_allocate_mapping_address(&self, _size: usize, _pool_tag: u32) -> u64 {
        self.map(0)
    }
    fn mm_allocate_mapping_address_ex(&self, _size: usize, _pool_tag: u32, _flags: u32) -> u64 {
        self.map(0)
    }
    fn mm_map_locked_pages_with_reserved_mapping(
        &self,
        mapping_address: u64,
        pool_tag: u32,
        mdl: u64,
        _cache_type: u32,
    ) -> u64 {
        self.record(MmCall::MapReserved(mapping_address, pool_tag, mdl));
        mapping_address.wrapping_add(self.byte_offset(mdl))
    }
    fn mm_unmap_reserved_mapping(&self, base: u64, pool_tag: u32, mdl: u64) {
        self.record(MmCall::UnmapReserved(base, pool_tag, mdl));
    }
    fn mm_free_mapping_address(&self, base: u64, pool_tag: u32) {
        self.record(MmCall::FreeReserved(base, pool_tag));
    }
    fn mdl_info(&self, mdl: u64) -> Option<MdlInfo> {
        lock(&self.mdls).get(&mdl).copied()
    }
    #[inline]
    fn debug_break(&self) {
        self.breaks.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    fn bugcheck(&self, params: BugCheck) {
        lock(&self.bugchecks).push(params);
    }
    #[inline]
    fn attach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        self.finds(image_name)
    }
    #[inline]
    fn detach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        if self.config.detach {
            self.finds(image_name)
        } else {
            Err(PlatformError::Unsupported)
        }
    }
}
