//! The hooks of the MDL and reserved-mapping family (issue 11, `crate::mdl`), the real
//! routines the engine calls for them, and the read of an MDL's header.
//!
//! Routines with at most three arguments get the same naked trampolines as the I/O-space
//! hooks (`hooks` module docs): the caller's return address goes into the first free
//! argument register and the body runs with it. `MmMapLockedPagesSpecifyCache` and
//! `MmMapLockedPages` raise an exception on a user-mode failure, which must not unwind
//! through Rust: their hooks are C (`seh.c`), which calls the real routine and then
//! [`iosv_after_map_locked_pages`] with `_ReturnAddress()`.
//! `MmMapLockedPagesWithReservedMapping` (four arguments) has no free register: its hook is
//! the body itself, and reads its return address with
//! `RtlCaptureStackBackTrace` (two frames up from a helper) — documented for IRQL <= DISPATCH_LEVEL, which is the
//! documented ceiling of the routine; above it (a caller already in violation) the call
//! is unattributed.
//!
//! `MmPrepareMdlForReuse` and `MmGetSystemAddressForMdlSafe` are wdm.h macros over
//! `MmUnmapLockedPages` and `MmMapLockedPagesSpecifyCache`: they reach these hooks.
//!
//! Each body calls the engine if it is published, else the real routine (as in `hooks`).

use core::ptr::null_mut;

use wdk_sys::ntddk::{
    IoFreeMdl, MmAllocateMappingAddress, MmAllocateMappingAddressEx, MmFreeMappingAddress,
    MmMapLockedPages, MmMapLockedPagesSpecifyCache, MmMapLockedPagesWithReservedMapping,
    MmUnlockPages, MmUnmapLockedPages, MmUnmapReservedMapping, RtlCaptureStackBackTrace,
};
use wdk_sys::{DISPATCH_LEVEL, KPROCESSOR_MODE, MEMORY_CACHING_TYPE, PMDL, PVOID, SIZE_T, ULONG};

use super::irql;
use super::state::engine;
use crate::intercept::MdlHooks;
use crate::mdl::MdlInfo;
use crate::platform::Caller;

/// Declares a naked trampoline for a routine of at most three arguments: x64 copies the
/// return address (`[rsp]`) into register `$x64`, ARM64 copies LR into `$arm`, then both
/// jump to `$body`, which takes the routine's arguments plus that address.
macro_rules! trampoline {
    ($(#[$doc:meta])* $name:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?,
     $x64:literal, $arm:literal, $body:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        ///
        /// Only ever called by a target driver through a patched import slot, as the
        /// routine it replaces.
        #[cfg(target_arch = "x86_64")]
        #[allow(
            clippy::unnecessary_safety_comment,
            reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
        )]
        // SAFETY: a naked function: two instructions, no stack use, ends in a tail jump to
        // a function with the same arguments plus one register argument the ABI leaves
        // free (the routine has fewer than four arguments).
        #[unsafe(naked)]
        pub unsafe extern "system" fn $name($($arg: $ty),*) $(-> $ret)? {
            core::arch::naked_asm!(
                concat!("mov ", $x64, ", qword ptr [rsp]"),
                "jmp {body}",
                body = sym $body
            )
        }

        $(#[$doc])*
        ///
        /// # Safety
        ///
        /// As for the x64 version.
        #[cfg(target_arch = "aarch64")]
        #[allow(
            clippy::unnecessary_safety_comment,
            reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
        )]
        // SAFETY: a naked function: two instructions, no stack use, ends in a tail branch
        // to a function with the same arguments plus one register argument.
        #[unsafe(naked)]
        pub unsafe extern "system" fn $name($($arg: $ty),*) $(-> $ret)? {
            core::arch::naked_asm!(concat!("mov ", $arm, ", x30"), "b {body}", body = sym $body)
        }
    };
}

trampoline!(
    /// Replaces `MmUnmapLockedPages`.
    hook_mm_unmap_locked_pages(_base: PVOID, _mdl: PMDL),
    "r8", "x2", unmap_locked_pages_body
);
trampoline!(
    /// Replaces `IoFreeMdl`.
    hook_io_free_mdl(_mdl: PMDL),
    "rdx", "x1", io_free_mdl_body
);
trampoline!(
    /// Replaces `MmUnlockPages`.
    hook_mm_unlock_pages(_mdl: PMDL),
    "rdx", "x1", unlock_pages_body
);
trampoline!(
    /// Replaces `MmAllocateMappingAddress`.
    hook_mm_allocate_mapping_address(_size: SIZE_T, _tag: ULONG) -> PVOID,
    "r8", "x2", allocate_mapping_address_body
);
trampoline!(
    /// Replaces `MmAllocateMappingAddressEx`.
    hook_mm_allocate_mapping_address_ex(_size: SIZE_T, _tag: ULONG, _flags: ULONG) -> PVOID,
    "r9", "x3", allocate_mapping_address_ex_body
);
trampoline!(
    /// Replaces `MmUnmapReservedMapping`.
    hook_mm_unmap_reserved_mapping(_base: PVOID, _tag: ULONG, _mdl: PMDL),
    "r9", "x3", unmap_reserved_mapping_body
);
trampoline!(
    /// Replaces `MmFreeMappingAddress`.
    hook_mm_free_mapping_address(_base: PVOID, _tag: ULONG),
    "r8", "x2", free_mapping_address_body
);

fn caller(return_address: usize) -> Caller {
    Caller::at(return_address as u64)
}

/// The return address of the hook that called this (one frame up), at IRQL <=
/// DISPATCH_LEVEL; 0 above it. Never inlined, so the frame it skips is its caller's.
#[inline(never)]
fn hook_return_address() -> usize {
    if irql() > DISPATCH_LEVEL as u8 {
        return 0;
    }
    let mut frames: [PVOID; 3] = [null_mut(); 3];
    // SAFETY: room for three pointers; null hash; IRQL checked above. Frame 0 lies in this
    // function (where RtlCaptureStackBackTrace returns to), frame 1 in the hook (where
    // this function returns to), frame 2 in the target driver (where the hook returns).
    let n = unsafe { RtlCaptureStackBackTrace(0, 3, frames.as_mut_ptr(), null_mut()) };
    if n < 3 {
        return 0;
    }
    frames.get(2).map_or(0, |f| *f as usize)
}

unsafe extern "system" fn unmap_locked_pages_body(base: PVOID, mdl: PMDL, return_address: usize) {
    match engine() {
        Some(glue) => glue.verifier.unmap_locked_pages(
            caller(return_address),
            base as usize as u64,
            mdl as usize as u64,
        ),
        // SAFETY: as above.
        None => unsafe { MmUnmapLockedPages(base, mdl) },
    }
}

unsafe extern "system" fn io_free_mdl_body(mdl: PMDL, return_address: usize) {
    match engine() {
        Some(glue) => glue
            .verifier
            .io_free_mdl(caller(return_address), mdl as usize as u64),
        // SAFETY: as above.
        None => unsafe { IoFreeMdl(mdl) },
    }
}

unsafe extern "system" fn unlock_pages_body(mdl: PMDL, return_address: usize) {
    match engine() {
        Some(glue) => glue
            .verifier
            .unlock_pages(caller(return_address), mdl as usize as u64),
        // SAFETY: as above.
        None => unsafe { MmUnlockPages(mdl) },
    }
}

unsafe extern "system" fn allocate_mapping_address_body(
    size: SIZE_T,
    tag: ULONG,
    return_address: usize,
) -> PVOID {
    match engine() {
        Some(glue) => {
            glue.verifier
                .allocate_mapping_address(caller(return_address), size as usize, tag)
                as usize as PVOID
        }
        // SAFETY: as above.
        None => unsafe { MmAllocateMappingAddress(size, tag) },
    }
}

unsafe extern "system" fn allocate_mapping_address_ex_body(
    size: SIZE_T,
    tag: ULONG,
    flags: ULONG,
    return_address: usize,
) -> PVOID {
    match engine() {
        Some(glue) => glue.verifier.allocate_mapping_address_ex(
            caller(return_address),
            size as usize,
            tag,
            flags,
        ) as usize as PVOID,
        // SAFETY: as above.
        None => unsafe { MmAllocateMappingAddressEx(size, tag, flags) },
    }
}

unsafe extern "system" fn unmap_reserved_mapping_body(
    base: PVOID,
    tag: ULONG,
    mdl: PMDL,
    return_address: usize,
) {
    match engine() {
        Some(glue) => glue.verifier.unmap_reserved(
            caller(return_address),
            base as usize as u64,
            tag,
            mdl as usize as u64,
        ),
        // SAFETY: as above.
        None => unsafe { MmUnmapReservedMapping(base, tag, mdl) },
    }
}

unsafe extern "system" fn free_mapping_address_body(
    base: PVOID,
    tag: ULONG,
    return_address: usize,
) {
    match engine() {
        Some(glue) => {
            glue.verifier
                .free_mapping_address(caller(return_address), base as usize as u64, tag);
        }
        // SAFETY: as above.
        None => unsafe { MmFreeMappingAddress(base, tag) },
    }
}

// The hooks of MmMapLockedPagesSpecifyCache (and so MmGetSystemAddressForMdlSafe) and
// MmMapLockedPages are C (seh.c): with UserMode a failure raises an exception, which must
// not unwind through Rust frames. They call the real routine, then this.
unsafe extern "C" {
    /// seh.c: the hook of `MmMapLockedPagesSpecifyCache`.
    fn iosv_hook_map_locked_pages_specify_cache(
        mdl: PMDL,
        mode: KPROCESSOR_MODE,
        cache: MEMORY_CACHING_TYPE,
        requested: PVOID,
        bugcheck_on_failure: ULONG,
        priority: ULONG,
    ) -> PVOID;
    /// seh.c: the hook of `MmMapLockedPages`.
    fn iosv_hook_map_locked_pages(mdl: PMDL, mode: KPROCESSOR_MODE) -> PVOID;
}

/// Called by the C hooks of the two map routines after the real routine returned `va`
/// (it did not raise): tracks the mapping (the engine's
/// [`track_locked_pages`](crate::verifier::Verifier::track_locked_pages)). Returns `va`.
#[unsafe(no_mangle)]
extern "C" fn iosv_after_map_locked_pages(
    va: PVOID,
    mdl: PMDL,
    mode: KPROCESSOR_MODE,
    cache: MEMORY_CACHING_TYPE,
    return_address: u64,
) -> PVOID {
    match engine() {
        Some(glue) => glue.verifier.track_locked_pages(
            Caller::at(return_address),
            va as usize as u64,
            mdl as usize as u64,
            mode as u8,
            cache as u32,
        ) as usize as PVOID,
        None => va,
    }
}

/// Replaces `MmMapLockedPagesWithReservedMapping`.
///
/// # Safety
///
/// Only called through a patched import slot (or a resolved pointer), as the routine.
#[inline(never)]
pub unsafe extern "system" fn hook_mm_map_locked_pages_with_reserved_mapping(
    address: PVOID,
    tag: ULONG,
    mdl: PMDL,
    cache: MEMORY_CACHING_TYPE,
) -> PVOID {
    match engine() {
        Some(glue) => glue.verifier.map_reserved(
            caller(hook_return_address()),
            address as usize as u64,
            tag,
            mdl as usize as u64,
            cache as u32,
        ) as usize as PVOID,
        // SAFETY: as above.
        None => unsafe { MmMapLockedPagesWithReservedMapping(address, tag, mdl, cache) },
    }
}

/// The family's hook addresses, for the interception plans.
pub fn hook_addresses() -> MdlHooks {
    MdlHooks {
        map_locked_pages_specify_cache: iosv_hook_map_locked_pages_specify_cache as *const ()
            as usize,
        map_locked_pages: iosv_hook_map_locked_pages as *const () as usize,
        unmap_locked_pages: hook_mm_unmap_locked_pages as *const () as usize,
        free_mdl: hook_io_free_mdl as *const () as usize,
        unlock_pages: hook_mm_unlock_pages as *const () as usize,
        allocate_mapping_address: hook_mm_allocate_mapping_address as *const () as usize,
        allocate_mapping_address_ex: hook_mm_allocate_mapping_address_ex as *const () as usize,
        map_locked_pages_with_reserved_mapping: hook_mm_map_locked_pages_with_reserved_mapping
            as *const () as usize,
        unmap_reserved_mapping: hook_mm_unmap_reserved_mapping as *const () as usize,
        free_mapping_address: hook_mm_free_mapping_address as *const () as usize,
    }
}

// ---- the real routines (iosv's own imports, never patched) ------------------------------
//
// Each is called by the engine from the hook of the same routine, with what the target
// passed (or, for a contained violation, with the tracked MDL / base the target's call
// should have named): exactly what the target's own call would have done.

/// `MmMapLockedPagesSpecifyCache`.
pub fn map_locked_pages_specify_cache(
    mdl: u64,
    mode: u8,
    cache: u32,
    requested: u64,
    bugcheck_on_failure: u32,
    priority: u32,
) -> u64 {
    // SAFETY: the target's own arguments, passed through unchanged (see above).
    let va = unsafe {
        MmMapLockedPagesSpecifyCache(
            mdl as usize as PMDL,
            mode as KPROCESSOR_MODE,
            cache as MEMORY_CACHING_TYPE,
            requested as usize as PVOID,
            bugcheck_on_failure,
            priority,
        )
    };
    va as usize as u64
}

/// `MmMapLockedPages`.
pub fn map_locked_pages(mdl: u64, mode: u8) -> u64 {
    // SAFETY: as above.
    let va = unsafe { MmMapLockedPages(mdl as usize as PMDL, mode as KPROCESSOR_MODE) };
    va as usize as u64
}

/// `MmUnmapLockedPages`.
pub fn unmap_locked_pages(base: u64, mdl: u64) {
    // SAFETY: as above.
    unsafe { MmUnmapLockedPages(base as usize as PVOID, mdl as usize as PMDL) };
}

/// `IoFreeMdl`.
pub fn free_mdl(mdl: u64) {
    // SAFETY: as above.
    unsafe { IoFreeMdl(mdl as usize as PMDL) };
}

/// `MmUnlockPages`.
pub fn unlock_pages(mdl: u64) {
    // SAFETY: as above.
    unsafe { MmUnlockPages(mdl as usize as PMDL) };
}

/// `MmAllocateMappingAddress`.
pub fn allocate_mapping_address(size: usize, tag: u32) -> u64 {
    // SAFETY: as above.
    let va = unsafe { MmAllocateMappingAddress(size as SIZE_T, tag) };
    va as usize as u64
}

/// `MmAllocateMappingAddressEx`.
pub fn allocate_mapping_address_ex(size: usize, tag: u32, flags: u32) -> u64 {
    // SAFETY: as above.
    let va = unsafe { MmAllocateMappingAddressEx(size as SIZE_T, tag, flags) };
    va as usize as u64
}

/// `MmMapLockedPagesWithReservedMapping`.
pub fn map_locked_pages_with_reserved_mapping(address: u64, tag: u32, mdl: u64, cache: u32) -> u64 {
    // SAFETY: as above.
    let va = unsafe {
        MmMapLockedPagesWithReservedMapping(
            address as usize as PVOID,
            tag,
            mdl as usize as PMDL,
            cache as MEMORY_CACHING_TYPE,
        )
    };
    va as usize as u64
}

/// `MmUnmapReservedMapping`.
pub fn unmap_reserved_mapping(base: u64, tag: u32, mdl: u64) {
    // SAFETY: as above.
    unsafe { MmUnmapReservedMapping(base as usize as PVOID, tag, mdl as usize as PMDL) };
}

/// `MmFreeMappingAddress`.
pub fn free_mapping_address(base: u64, tag: u32) {
    // SAFETY: as above.
    unsafe { MmFreeMappingAddress(base as usize as PVOID, tag) };
}

/// The header of the MDL at `mdl`, which the target passed to a hooked routine (that
/// routine reads it too; MDLs are non-paged). `None` for a null pointer.
pub fn mdl_info(mdl: u64) -> Option<MdlInfo> {
    let p = mdl as usize as PMDL;
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-null MDL pointer the caller passed to an Mm routine whose contract
    // requires a valid MDL; the fields read are the documented header (wdm.h `MDL`).
    let m = unsafe { p.read_volatile() };
    Some(MdlInfo {
        byte_count: m.ByteCount,
        byte_offset: m.ByteOffset,
        flags: m.MdlFlags as u16,
        mapped_system_va: m.MappedSystemVa as usize as u64,
    })
}
