//! The Windows kernel glue (feature `kernel`, Windows hosts only): [`WindowsPlatform`],
//! the engine's [`Platform`](super::Platform) over wdk-sys, plus the driver around it —
//! `DriverEntry` and unload ([`entry`]), the control device and the upper-filter dispatch
//! ([`dispatch`]), the hooks patched into target drivers' import tables ([`hooks`]),
//! image-load notification and attach/detach ([`images`]), the service's registry
//! parameters ([`registry`]) and the one global ([`state`]).
//!
//! The glue is deliberately thin: FFI calls and IRP field access. What to check, what to
//! record, which slots to patch and how to restore them are decided by the portable
//! modules (`verifier`, `control`, `pe`, `intercept`), which are tested on Linux.
//!
//! Nothing here has been compiled against the real wdk-sys: wdk-build refuses to build on
//! non-Windows hosts. See `docs/windows.md` for the build, the names used and where each
//! was checked.
//!
//! IRQL rules kept here (design.md §5): every [`Platform`](super::Platform) method may run
//! at any IRQL up to HIGH_LEVEL, so each one either uses a routine documented for any
//! IRQL or checks the IRQL first and degrades (no stack, id 0, no debugger refresh).

pub mod dispatch;
pub mod entry;
pub mod ffi;
pub mod hooks;
pub mod images;
pub mod mdl_hooks;
pub mod registry;
pub mod slots;
pub mod state;
pub mod thunks;

use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};

use wdk_sys::ntddk::{
    KdRefreshDebuggerNotPresent, KeGetCurrentIrql, KeGetCurrentProcessorNumberEx,
    KeQueryActiveProcessorCountEx, KeQueryInterruptTimePrecise, KfRaiseIrql, MmMapIoSpace,
    MmMapIoSpaceEx, MmUnmapIoSpace, PsGetCurrentProcessId, PsGetCurrentThreadId,
    RtlCaptureStackBackTrace,
};
use wdk_sys::{DISPATCH_LEVEL, MEMORY_CACHING_TYPE, PHYSICAL_ADDRESS, PVOID, SIZE_T};

use super::{BugCheck, Irql, Platform, PlatformError, BUGCHECK_CODE};

/// Frames `RtlCaptureStackBackTrace` is asked for: iosv's own frames (dropped) plus the
/// deepest stack the engine stores (16). Below the 63 that old kernels accept.
const CAPTURE_FRAMES: usize = 32;

/// Whether a kernel debugger was attached when last checked. `KdRefreshDebuggerNotPresent`
/// takes the debugger's locks, so it is only called at IRQL <= DISPATCH_LEVEL; above
/// that the last known answer is used.
static DEBUGGER_PRESENT: AtomicBool = AtomicBool::new(false);

/// The engine's view of the Windows kernel. Copyable and stateless apart from the range of
/// iosv's own image, used to drop iosv's frames from captured stacks.
#[derive(Debug, Clone, Copy)]
pub struct WindowsPlatform {
    own_start: u64,
    own_end: u64,
}

impl WindowsPlatform {
    /// A platform for the driver image loaded at `[start, start + size)`.
    pub fn new(start: u64, size: u64) -> WindowsPlatform {
        WindowsPlatform {
            own_start: start,
            own_end: start.saturating_add(size),
        }
    }

    fn is_own(&self, address: u64) -> bool {
        address >= self.own_start && address < self.own_end
    }

    /// Whether `base` is iosv's own image (never hooked: its imports are the real
    /// routines the hooks call).
    pub fn is_own_image(&self, base: usize) -> bool {
        base as u64 == self.own_start
    }

    /// Updates [`DEBUGGER_PRESENT`] (IRQL <= DISPATCH_LEVEL only) and returns it.
    pub fn refresh_debugger(&self) -> bool {
        if irql() <= DISPATCH_LEVEL as u8 {
            // SAFETY: no arguments; documented for IRQL <= DISPATCH_LEVEL (it takes the
            // debugger's locks), which was checked just above.
            let not_present = unsafe { KdRefreshDebuggerNotPresent() };
            DEBUGGER_PRESENT.store(not_present == 0, Ordering::Relaxed);
        }
        DEBUGGER_PRESENT.load(Ordering::Relaxed)
    }
}

/// The current IRQL.
pub fn irql() -> u8 {
    // SAFETY: KeGetCurrentIrql has no arguments and is callable at any IRQL.
    unsafe { KeGetCurrentIrql() }
}

impl Platform for WindowsPlatform {
    fn current_irql(&self) -> Irql {
        Irql(irql())
    }

    fn current_processor(&self) -> u32 {
        // SAFETY: a null PROCESSOR_NUMBER pointer is allowed; callable at any IRQL.
        unsafe { KeGetCurrentProcessorNumberEx(null_mut()) }
    }

    fn processor_count(&self) -> u32 {
        // SAFETY: plain value argument; callable at any IRQL.
        unsafe { KeQueryActiveProcessorCountEx(ffi::ALL_PROCESSOR_GROUPS) }
    }

    fn current_process_id(&self) -> u64 {
        // PsGetCurrentProcessId is annotated for IRQL <= DISPATCH_LEVEL; above it the id is
        // meaningless anyway (an interrupt borrows whatever thread is running).
        if irql() > DISPATCH_LEVEL as u8 {
            return 0;
        }
        // SAFETY: no arguments; IRQL checked above.
        let id = unsafe { PsGetCurrentProcessId() };
        id as usize as u64
    }

    fn current_thread_id(&self) -> u64 {
        if irql() > DISPATCH_LEVEL as u8 {
            return 0;
        }
        // SAFETY: no arguments; IRQL checked above.
        let id = unsafe { PsGetCurrentThreadId() };
        id as usize as u64
    }

    fn now_ns(&self) -> u64 {
        let mut qpc = 0u64;
        // SAFETY: `qpc` is a valid out pointer; KeQueryInterruptTimePrecise is documented
        // for any IRQL. The result counts 100 ns units since boot.
        let ticks = unsafe { KeQueryInterruptTimePrecise(&mut qpc) };
        ticks.saturating_mul(100)
    }

    /// Captures at IRQL <= DISPATCH_LEVEL only: RtlCaptureStackBackTrace walks unwind data
    /// that may be pageable and is documented up to DISPATCH_LEVEL. Above it, no frames
    /// (the caller's return address still attributes the call). `skip` is honoured by
    /// dropping every leading frame inside iosv's own image, which also covers frames the
    /// compiler inlined or not.
    fn capture_stack(&self, _skip: u32, frames: &mut [u64]) -> usize {
        if frames.is_empty() || irql() > DISPATCH_LEVEL as u8 {
            return 0;
        }
        let mut raw: [PVOID; CAPTURE_FRAMES] = [null_mut(); CAPTURE_FRAMES];
        // SAFETY: `raw` has room for CAPTURE_FRAMES pointers; the hash pointer may be null;
        // IRQL <= DISPATCH_LEVEL was checked above.
        let captured = unsafe {
            RtlCaptureStackBackTrace(0, CAPTURE_FRAMES as u32, raw.as_mut_ptr(), null_mut())
        };
        let captured = raw.get(..usize::from(captured)).unwrap_or(&[]);
        let mut written = 0usize;
        for (dst, src) in frames.iter_mut().zip(
            captured
                .iter()
                .map(|f| *f as usize as u64)
                .skip_while(|f| self.is_own(*f)),
        ) {
            *dst = src;
            written = written.saturating_add(1);
        }
        written
    }

    fn raise_to_dispatch(&self) -> Irql {
        let current = irql();
        if current >= DISPATCH_LEVEL as u8 {
            return Irql(current);
        }
        // SAFETY: raising from below DISPATCH_LEVEL to DISPATCH_LEVEL is always allowed.
        // KeRaiseIrql is a macro over KfRaiseIrql (wdm.h, AMD64 and ARM64).
        Irql(unsafe { KfRaiseIrql(DISPATCH_LEVEL as u8) })
    }

    fn lower_irql(&self, previous: Irql) {
        if irql() <= previous.0 {
            return;
        }
        lower_to(previous.0);
    }

    fn mm_map_io_space(&self, physical: u64, size: usize, cache_type: u32) -> u64 {
        let pa = PHYSICAL_ADDRESS {
            QuadPart: physical as i64,
        };
        // SAFETY: iosv's own import of MmMapIoSpace is never patched, so this is the real
        // routine; the arguments are the caller's, passed through unchanged.
        let base = unsafe { MmMapIoSpace(pa, size as SIZE_T, cache_type as MEMORY_CACHING_TYPE) };
        base as usize as u64
    }

    fn mm_map_io_space_ex(&self, physical: u64, size: usize, protect: u32) -> u64 {
        let pa = PHYSICAL_ADDRESS {
            QuadPart: physical as i64,
        };
        // SAFETY: iosv's own import of MmMapIoSpaceEx is never patched (plans are built for
        // target images only), so this is the real routine; the arguments are the
        // caller's, passed through unchanged, and Mm validates them itself.
        let base = unsafe { MmMapIoSpaceEx(pa, size as SIZE_T, protect) };
        base as usize as u64
    }

    fn mm_unmap_io_space(&self, base: u64, size: usize) {
        // SAFETY: the engine calls this only for a base it validated (or, with containment
        // off, for what the target passed — exactly what the target would have done).
        unsafe { MmUnmapIoSpace(base as usize as PVOID, size as SIZE_T) };
    }

    // The MDL and reserved-mapping family: mdl_hooks.
    fn mm_map_locked_pages_specify_cache(
        &self,
        mdl: u64,
        access_mode: u8,
        cache_type: u32,
        requested_address: u64,
        bugcheck_on_failure: u32,
        priority: u32,
    ) -> u64 {
        mdl_hooks::map_locked_pages_specify_cache(
            mdl,
            access_mode,
            cache_type,
            requested_address,
            bugcheck_on_failure,
            priority,
        )
    }
    fn mm_map_locked_pages(&self, mdl: u64, access_mode: u8) -> u64 {
        mdl_hooks::map_locked_pages(mdl, access_mode)
    }
    fn mm_unmap_locked_pages(&self, base: u64, mdl: u64) {
        mdl_hooks::unmap_locked_pages(base, mdl);
    }
    fn io_free_mdl(&self, mdl: u64) {
        mdl_hooks::free_mdl(mdl);
    }
    fn mm_unlock_pages(&self, mdl: u64) {
        mdl_hooks::unlock_pages(mdl);
    }
    fn mm_allocate_mapping_address(&self, size: usize, pool_tag: u32) -> u64 {
        mdl_hooks::allocate_mapping_address(size, pool_tag)
    }
    fn mm_allocate_mapping_address_ex(&self, size: usize, pool_tag: u32, flags: u32) -> u64 {
        mdl_hooks::allocate_mapping_address_ex(size, pool_tag, flags)
    }
    fn mm_map_locked_pages_with_reserved_mapping(
        &self,
        mapping_address: u64,
        pool_tag: u32,
        mdl: u64,
        cache_type: u32,
    ) -> u64 {
        mdl_hooks::map_locked_pages_with_reserved_mapping(
            mapping_address,
            pool_tag,
            mdl,
            cache_type,
        )
    }
    fn mm_unmap_reserved_mapping(&self, base: u64, pool_tag: u32, mdl: u64) {
        mdl_hooks::unmap_reserved_mapping(base, pool_tag, mdl);
    }
    fn mm_free_mapping_address(&self, base: u64, pool_tag: u32) {
        mdl_hooks::free_mapping_address(base, pool_tag);
    }
    fn mdl_info(&self, mdl: u64) -> Option<crate::mdl::MdlInfo> {
        mdl_hooks::mdl_info(mdl)
    }

    fn debug_break(&self) {
        // An int 3 without a kernel debugger is itself a bug check: break only when one
        // is attached.
        if self.refresh_debugger() {
            wdk::dbg_break();
        }
    }

    fn bugcheck(&self, params: BugCheck) {
        // SAFETY: KeBugCheckEx takes plain values and is callable at any IRQL; it does not
        // return.
        unsafe {
            ffi::KeBugCheckEx(
                BUGCHECK_CODE,
                params.p1 as usize,
                params.p2 as usize,
                params.p3 as usize,
                params.p4 as usize,
            )
        }
    }

    fn attach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        images::attach_by_name(image_name)
    }

    fn detach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        images::detach_by_name(image_name)
    }

    fn refresh(&self) {
        if let Some(glue) = state::engine() {
            images::sweep(glue);
        }
    }
}

/// `KeLowerIrql`: a real export on AMD64 (wdm.h declares `KeLowerIrql` NTKERNELAPI for
/// NTDDI >= WIN8), a macro over `KfLowerIrql` on ARM64.
#[cfg(target_arch = "x86_64")]
fn lower_to(level: u8) {
    // SAFETY: only called with a level below the current IRQL that an earlier raise
    // returned.
    unsafe { wdk_sys::ntddk::KeLowerIrql(level) }
}

#[cfg(target_arch = "aarch64")]
fn lower_to(level: u8) {
    // SAFETY: only called with a level below the current IRQL that an earlier raise
    // returned (KfLowerIrql's contract, as KeLowerIrql's on x64).
    unsafe { wdk_sys::ntddk::KfLowerIrql(level) }
}
