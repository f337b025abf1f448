//! The hooks of the MDL and reserved-mapping family (issue 11, `crate::mdl`), the real
//! routines the engine calls for them, and the read of an MDL's header.
//!
//! Every routine gets per-driver thunks, as the I/O-space routines do (`thunks` module):
//! the body has the caller's return address and the driver whose import slot the call
//! came through. Where the routine leaves no second free register, the id rides in the
//! upper half of the register of a narrower argument: `Flags` of
//! `MmAllocateMappingAddressEx`, `PoolTag` of `MmUnmapReservedMapping` and
//! `MmMapLockedPagesWithReservedMapping`, `AccessMode` of `MmMapLockedPagesSpecifyCache`.
//!
//! `MmMapLockedPagesSpecifyCache` and `MmMapLockedPages` raise an exception on a user-mode
//! failure, which must not unwind through Rust: their thunks jump to C hooks (`seh.c`),
//! which call the real routine and then [`iosv_after_map_locked_pages`] with
//! `_ReturnAddress()` (still the target's: a thunk has no frame) and the id.
//! `MmMapLockedPagesWithReservedMapping` (four arguments) has no register for the return
//! address: its body reads it with `RtlCaptureStackBackTrace` (two frames up from a
//! helper) — documented for IRQL <= DISPATCH_LEVEL, which is the documented ceiling of the
//! routine; above it (a caller already in violation) the call is still blamed on the
//! importer, only its return address is unknown.
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
use super::thunks::{caller, thunk_of, thunks};
use crate::drivers::DriverId;
use crate::intercept::MdlHooks;
use crate::mdl::MdlInfo;
use crate::pe::HookedRoutine;

// Per-driver thunks (`thunks` module) of the seven routines that leave a register for
// the driver id, or a 32-bit argument whose register's upper half can carry it. Each
// comment: the routine's arguments → what the thunk adds (x64 / ARM64).

// MmUnmapLockedPages(base, mdl) → r8 / x2 = return address, r9 / x3 = id.
thunks!(
    /// `MmUnmapLockedPages`'s thunks.
    static iosv_thunks_unmap_locked_pages, fn unmap_locked_pages_thunks,
    "iosv_thunk_unmap_locked_pages_",
    x64: ["mov r8, qword ptr [rsp]", "mov r9d, \\id"],
    arm: ["mov x2, x30", "mov x3, #\\id"],
    unmap_locked_pages_body
);
// IoFreeMdl(mdl) → rdx / x1 = return address, r8 / x2 = id.
thunks!(
    /// `IoFreeMdl`'s thunks.
    static iosv_thunks_free_mdl, fn free_mdl_thunks, "iosv_thunk_free_mdl_",
    x64: ["mov rdx, qword ptr [rsp]", "mov r8d, \\id"],
    arm: ["mov x1, x30", "mov x2, #\\id"],
    io_free_mdl_body
);
// MmUnlockPages(mdl) → rdx / x1 = return address, r8 / x2 = id.
thunks!(
    /// `MmUnlockPages`'s thunks.
    static iosv_thunks_unlock_pages, fn unlock_pages_thunks, "iosv_thunk_unlock_pages_",
    x64: ["mov rdx, qword ptr [rsp]", "mov r8d, \\id"],
    arm: ["mov x1, x30", "mov x2, #\\id"],
    unlock_pages_body
);
// MmAllocateMappingAddress(size, tag) → r8 / x2 = return address, r9 / x3 = id.
thunks!(
    /// `MmAllocateMappingAddress`'s thunks.
    static iosv_thunks_allocate_mapping_address, fn allocate_mapping_address_thunks,
    "iosv_thunk_allocate_mapping_address_",
    x64: ["mov r8, qword ptr [rsp]", "mov r9d, \\id"],
    arm: ["mov x2, x30", "mov x3, #\\id"],
    allocate_mapping_address_body
);
// MmAllocateMappingAddressEx(size, tag, flags: 32 bits in r8d / w2) → r8 / x2 = flags |
// id << 32, r9 / x3 = return address.
thunks!(
    /// `MmAllocateMappingAddressEx`'s thunks.
    static iosv_thunks_allocate_mapping_address_ex, fn allocate_mapping_address_ex_thunks,
    "iosv_thunk_allocate_mapping_address_ex_",
    x64: ["mov r8d, r8d", "mov rax, \\id << 32", "or r8, rax", "mov r9, qword ptr [rsp]"],
    arm: ["mov w2, w2", "movz x16, #\\id, lsl #32", "orr x2, x2, x16", "mov x3, x30"],
    allocate_mapping_address_ex_body
);
// MmUnmapReservedMapping(base, tag: 32 bits in edx / w1, mdl) → rdx / x1 = tag | id << 32,
// r9 / x3 = return address.
thunks!(
    /// `MmUnmapReservedMapping`'s thunks.
    static iosv_thunks_unmap_reserved_mapping, fn unmap_reserved_mapping_thunks,
    "iosv_thunk_unmap_reserved_mapping_",
    x64: ["mov edx, edx", "mov rax, \\id << 32", "or rdx, rax", "mov r9, qword ptr [rsp]"],
    arm: ["mov w1, w1", "movz x16, #\\id, lsl #32", "orr x1, x1, x16", "mov x3, x30"],
    unmap_reserved_mapping_body
);
// MmFreeMappingAddress(base, tag) → r8 / x2 = return address, r9 / x3 = id.
thunks!(
    /// `MmFreeMappingAddress`'s thunks.
    static iosv_thunks_free_mapping_address, fn free_mapping_address_thunks,
    "iosv_thunk_free_mapping_address_",
    x64: ["mov r8, qword ptr [rsp]", "mov r9d, \\id"],
    arm: ["mov x2, x30", "mov x3, #\\id"],
    free_mapping_address_body
);

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

unsafe extern "system" fn unmap_locked_pages_body(
    base: PVOID,
    mdl: PMDL,
    return_address: usize,
    id: u64,
) {
    match engine() {
        Some(glue) => glue.verifier.unmap_locked_pages(
            caller(id, return_address),
            base as usize as u64,
            mdl as usize as u64,
        ),
        // SAFETY: as above.
        None => unsafe { MmUnmapLockedPages(base, mdl) },
    }
}

unsafe extern "system" fn io_free_mdl_body(mdl: PMDL, return_address: usize, id: u64) {
    match engine() {
        Some(glue) => glue
            .verifier
            .io_free_mdl(caller(id, return_address), mdl as usize as u64),
        // SAFETY: as above.
        None => unsafe { IoFreeMdl(mdl) },
    }
}

unsafe extern "system" fn unlock_pages_body(mdl: PMDL, return_address: usize, id: u64) {
    match engine() {
        Some(glue) => glue
            .verifier
            .unlock_pages(caller(id, return_address), mdl as usize as u64),
        // SAFETY: as above.
        None => unsafe { MmUnlockPages(mdl) },
    }
}

unsafe extern "system" fn allocate_mapping_address_body(
    size: SIZE_T,
    tag: ULONG,
    return_address: usize,
    id: u64,
) -> PVOID {
    match engine() {
        Some(glue) => {
            glue.verifier
                .allocate_mapping_address(caller(id, return_address), size as usize, tag)
                as usize as PVOID
        }
        // SAFETY: as above.
        None => unsafe { MmAllocateMappingAddress(size, tag) },
    }
}

/// `flags_and_id`: the flags in the low half, the thunk's driver id in the high one.
unsafe extern "system" fn allocate_mapping_address_ex_body(
    size: SIZE_T,
    tag: ULONG,
    flags_and_id: u64,
    return_address: usize,
) -> PVOID {
    let flags = flags_and_id as ULONG;
    match engine() {
        Some(glue) => glue.verifier.allocate_mapping_address_ex(
            caller(flags_and_id >> 32, return_address),
            size as usize,
            tag,
            flags,
        ) as usize as PVOID,
        // SAFETY: as above.
        None => unsafe { MmAllocateMappingAddressEx(size, tag, flags) },
    }
}

/// `tag_and_id`: the tag in the low half, the thunk's driver id in the high one.
unsafe extern "system" fn unmap_reserved_mapping_body(
    base: PVOID,
    tag_and_id: u64,
    mdl: PMDL,
    return_address: usize,
) {
    let tag = tag_and_id as ULONG;
    match engine() {
        Some(glue) => glue.verifier.unmap_reserved(
            caller(tag_and_id >> 32, return_address),
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
    id: u64,
) {
    match engine() {
        Some(glue) => {
            glue.verifier.free_mapping_address(
                caller(id, return_address),
                base as usize as u64,
                tag,
            );
        }
        // SAFETY: as above.
        None => unsafe { MmFreeMappingAddress(base, tag) },
    }
}

// The hooks of MmMapLockedPagesSpecifyCache (and so MmGetSystemAddressForMdlSafe) and
// MmMapLockedPages are C (seh.c): with UserMode a failure raises an exception, which must
// not unwind through Rust frames. They call the real routine, then this.
// Their thunks: MmMapLockedPagesSpecifyCache(mdl, AccessMode: 8 bits in dl / w1, …) →
// rdx / x1 = the mode zero-extended | id << 32; MmMapLockedPages(mdl, AccessMode) → r8 /
// x2 = id. (Six and two arguments; the C hooks read their own return address.)
thunks!(
    /// `MmMapLockedPagesSpecifyCache`'s thunks (into seh.c's hook).
    static iosv_thunks_map_locked_pages_specify_cache, fn map_locked_pages_specify_cache_thunks,
    "iosv_thunk_map_locked_pages_specify_cache_",
    x64: ["movzx edx, dl", "mov rax, \\id << 32", "or rdx, rax"],
    arm: ["and x1, x1, #0xff", "movz x16, #\\id, lsl #32", "orr x1, x1, x16"],
    iosv_hook_map_locked_pages_specify_cache
);
thunks!(
    /// `MmMapLockedPages`'s thunks (into seh.c's hook).
    static iosv_thunks_map_locked_pages, fn map_locked_pages_thunks,
    "iosv_thunk_map_locked_pages_",
    x64: ["mov r8d, \\id"],
    arm: ["mov x2, #\\id"],
    iosv_hook_map_locked_pages
);

unsafe extern "C" {
    /// seh.c: the hook of `MmMapLockedPagesSpecifyCache`; `mode_and_id` = the mode in the
    /// low byte, the thunk's driver id in the upper half.
    fn iosv_hook_map_locked_pages_specify_cache(
        mdl: PMDL,
        mode_and_id: u64,
        cache: MEMORY_CACHING_TYPE,
        requested: PVOID,
        bugcheck_on_failure: ULONG,
        priority: ULONG,
    ) -> PVOID;
    /// seh.c: the hook of `MmMapLockedPages`, with the thunk's driver id.
    fn iosv_hook_map_locked_pages(mdl: PMDL, mode: KPROCESSOR_MODE, importer: u64) -> PVOID;
}

/// Called by the C hooks of the two map routines after the real routine returned `va`
/// (it did not raise): tracks the mapping (the engine's
/// [`track_locked_pages`](crate::verifier::Verifier::track_locked_pages)). `legacy` is
/// nonzero when the routine was `MmMapLockedPages`. Returns `va`.
#[unsafe(no_mangle)]
extern "C" fn iosv_after_map_locked_pages(
    va: PVOID,
    mdl: PMDL,
    mode: KPROCESSOR_MODE,
    cache: MEMORY_CACHING_TYPE,
    return_address: u64,
    id: u64,
    legacy: i32,
) -> PVOID {
    let routine = if legacy != 0 {
        HookedRoutine::MapLockedPages
    } else {
        HookedRoutine::MapLockedPagesSpecifyCache
    };
    match engine() {
        Some(glue) => glue.verifier.track_locked_pages(
            caller(id, return_address as usize),
            routine,
            va as usize as u64,
            mdl as usize as u64,
            mode as u8,
            cache as u32,
        ) as usize as PVOID,
        None => va,
    }
}

// MmMapLockedPagesWithReservedMapping(address, tag: 32 bits in edx / w1, mdl, cache) →
// rdx / x1 = tag | id << 32 (four arguments: no register left for the return address,
// which the body reads from the stack).
thunks!(
    /// `MmMapLockedPagesWithReservedMapping`'s thunks.
    static iosv_thunks_map_locked_pages_with_reserved_mapping,
    fn map_locked_pages_with_reserved_mapping_thunks,
    "iosv_thunk_map_locked_pages_with_reserved_mapping_",
    x64: ["mov edx, edx", "mov rax, \\id << 32", "or rdx, rax"],
    arm: ["mov w1, w1", "movz x16, #\\id, lsl #32", "orr x1, x1, x16"],
    map_locked_pages_with_reserved_mapping_body
);

/// `MmMapLockedPagesWithReservedMapping` through driver `tag_and_id >> 32`'s thunk (the
/// tag in the low half). Its own frame is the one [`hook_return_address`] skips: the
/// thunk jumped here without one.
#[inline(never)]
unsafe extern "system" fn map_locked_pages_with_reserved_mapping_body(
    address: PVOID,
    tag_and_id: u64,
    mdl: PMDL,
    cache: MEMORY_CACHING_TYPE,
) -> PVOID {
    let tag = tag_and_id as ULONG;
    match engine() {
        Some(glue) => glue.verifier.map_reserved(
            caller(tag_and_id >> 32, hook_return_address()),
            address as usize as u64,
            tag,
            mdl as usize as u64,
            cache as u32,
        ) as usize as PVOID,
        // SAFETY: as above.
        None => unsafe { MmMapLockedPagesWithReservedMapping(address, tag, mdl, cache) },
    }
}

/// Driver `id`'s thunks of the family (`None` for an id without thunks).
pub fn hooks_for(id: DriverId) -> Option<MdlHooks> {
    Some(MdlHooks {
        map_locked_pages_specify_cache: thunk_of(map_locked_pages_specify_cache_thunks(), id)?,
        map_locked_pages: thunk_of(map_locked_pages_thunks(), id)?,
        unmap_locked_pages: thunk_of(unmap_locked_pages_thunks(), id)?,
        free_mdl: thunk_of(free_mdl_thunks(), id)?,
        unlock_pages: thunk_of(unlock_pages_thunks(), id)?,
        allocate_mapping_address: thunk_of(allocate_mapping_address_thunks(), id)?,
        allocate_mapping_address_ex: thunk_of(allocate_mapping_address_ex_thunks(), id)?,
        map_locked_pages_with_reserved_mapping: thunk_of(
            map_locked_pages_with_reserved_mapping_thunks(),
            id,
        )?,
        unmap_reserved_mapping: thunk_of(unmap_reserved_mapping_thunks(), id)?,
        free_mapping_address: thunk_of(free_mapping_address_thunks(), id)?,
    })
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
        process: m.Process as usize as u64,
    })
}
