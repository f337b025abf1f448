//! The routines patched into target drivers' import slots.
//!
//! `hook_mm_map_io_space`, `hook_mm_map_io_space_ex` and `hook_mm_unmap_io_space` are
//! naked trampolines: their only instructions copy the caller's return address into the
//! first free argument register and jump to the body, which then has the routine's own
//! arguments plus that address. At entry the return address is exact — `[rsp]` on x64,
//! `x30` (LR) on ARM64, before any prologue — so attribution works at every IRQL, needs no
//! stack walk and does not depend on inlining. (Rust has no stable `_ReturnAddress`; a
//! `RtlCaptureStackBackTrace` of one frame would be limited to IRQL <= DISPATCH_LEVEL,
//! which is exactly where the calls worth catching are not.) The jump keeps the stack as
//! the caller left it, so the body returns straight to the target driver; the Win64 ABI's
//! 32-byte home area, which every caller allocates, covers the extra register argument.
//!
//! Each body calls the engine if it is published, else the real routine. No lock, no
//! allocation, no wait, no shared counter (design.md §5). No in-flight count is kept on
//! the hook path: it could not cover a call interrupted between fetching a slot and the
//! hook's first instruction, so iosv never unloads once a slot was patched
//! (`state` module docs) and the engine is never freed while a hook can run.

use wdk_sys::ntddk::{MmGetSystemRoutineAddress, MmMapIoSpace, MmMapIoSpaceEx, MmUnmapIoSpace};
use wdk_sys::{MEMORY_CACHING_TYPE, PHYSICAL_ADDRESS, PUNICODE_STRING, PVOID, SIZE_T, ULONG};

use super::ffi::unicode_units;
use super::state::engine;
use crate::intercept::system_routine_override;
use crate::platform::Caller;

// ---- trampolines ---------------------------------------------------------------------

/// Replaces `MmMapIoSpace` in a target's import slot. x64: return address → r9 (4th arg).
///
/// # Safety
///
/// Only ever called by a target driver through a patched import slot, as `MmMapIoSpace`.
#[cfg(target_arch = "x86_64")]
#[allow(
    clippy::unnecessary_safety_comment,
    reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
)]
// SAFETY: a naked function: two instructions, no stack use, ends in a tail jump to a
// function with the same arguments plus one register argument the ABI leaves free.
#[unsafe(naked)]
pub unsafe extern "system" fn hook_mm_map_io_space(
    _physical: PHYSICAL_ADDRESS,
    _size: SIZE_T,
    _cache: MEMORY_CACHING_TYPE,
) -> PVOID {
    core::arch::naked_asm!("mov r9, qword ptr [rsp]", "jmp {body}", body = sym map_io_space_body)
}

/// Replaces `MmMapIoSpaceEx`. x64: return address → r9.
///
/// # Safety
///
/// Only called through a patched import slot, as `MmMapIoSpaceEx`.
#[cfg(target_arch = "x86_64")]
#[allow(
    clippy::unnecessary_safety_comment,
    reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
)]
// SAFETY: a naked function: two instructions, no stack use, ends in a tail jump to
// map_io_space_ex_body, whose first three arguments are this routine's (rcx, rdx, r8,
// untouched) and whose fourth is r9, free here (MmMapIoSpaceEx has three).
#[unsafe(naked)]
pub unsafe extern "system" fn hook_mm_map_io_space_ex(
    _physical: PHYSICAL_ADDRESS,
    _size: SIZE_T,
    _protect: ULONG,
) -> PVOID {
    core::arch::naked_asm!("mov r9, qword ptr [rsp]", "jmp {body}", body = sym map_io_space_ex_body)
}

/// Replaces `MmUnmapIoSpace`. x64: return address → r8 (3rd arg).
///
/// # Safety
///
/// Only called through a patched import slot, as `MmUnmapIoSpace`.
#[cfg(target_arch = "x86_64")]
#[allow(
    clippy::unnecessary_safety_comment,
    reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
)]
// SAFETY: a naked function: two instructions, no stack use, ends in a tail jump to
// unmap_io_space_body, whose first two arguments are this routine's (rcx, rdx, untouched)
// and whose third is r8, free here (MmUnmapIoSpace has two).
#[unsafe(naked)]
pub unsafe extern "system" fn hook_mm_unmap_io_space(_base: PVOID, _size: SIZE_T) {
    core::arch::naked_asm!("mov r8, qword ptr [rsp]", "jmp {body}", body = sym unmap_io_space_body)
}

/// Replaces `MmMapIoSpace`. ARM64: LR (x30) → x3 (4th arg).
///
/// # Safety
///
/// Only called through a patched import slot, as `MmMapIoSpace`.
#[cfg(target_arch = "aarch64")]
#[allow(
    clippy::unnecessary_safety_comment,
    reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
)]
// SAFETY: a naked function: two instructions, no stack use, ends in a tail branch to a
// function with the same arguments plus one register argument the ABI leaves free.
#[unsafe(naked)]
pub unsafe extern "system" fn hook_mm_map_io_space(
    _physical: PHYSICAL_ADDRESS,
    _size: SIZE_T,
    _cache: MEMORY_CACHING_TYPE,
) -> PVOID {
    core::arch::naked_asm!("mov x3, x30", "b {body}", body = sym map_io_space_body)
}

/// Replaces `MmMapIoSpaceEx`. ARM64: LR → x3.
///
/// # Safety
///
/// Only called through a patched import slot, as `MmMapIoSpaceEx`.
#[cfg(target_arch = "aarch64")]
#[allow(
    clippy::unnecessary_safety_comment,
    reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
)]
// SAFETY: a naked function: two instructions, no stack use, ends in a tail branch to
// map_io_space_ex_body, whose first three arguments are this routine's (x0..x2, untouched)
// and whose fourth is x3, free here (MmMapIoSpaceEx has three); LR is left as it was.
#[unsafe(naked)]
pub unsafe extern "system" fn hook_mm_map_io_space_ex(
    _physical: PHYSICAL_ADDRESS,
    _size: SIZE_T,
    _protect: ULONG,
) -> PVOID {
    core::arch::naked_asm!("mov x3, x30", "b {body}", body = sym map_io_space_ex_body)
}

/// Replaces `MmUnmapIoSpace`. ARM64: LR → x2.
///
/// # Safety
///
/// Only called through a patched import slot, as `MmUnmapIoSpace`.
#[cfg(target_arch = "aarch64")]
#[allow(
    clippy::unnecessary_safety_comment,
    reason = "the SAFETY comment is for #[unsafe(naked)]; the fn's contract is its # Safety doc"
)]
// SAFETY: a naked function: two instructions, no stack use, ends in a tail branch to
// unmap_io_space_body, whose first two arguments are this routine's (x0, x1, untouched)
// and whose third is x2, free here (MmUnmapIoSpace has two); LR is left as it was.
#[unsafe(naked)]
pub unsafe extern "system" fn hook_mm_unmap_io_space(_base: PVOID, _size: SIZE_T) {
    core::arch::naked_asm!("mov x2, x30", "b {body}", body = sym unmap_io_space_body)
}

// ---- bodies ----------------------------------------------------------------------------

unsafe extern "system" fn map_io_space_body(
    physical: PHYSICAL_ADDRESS,
    size: SIZE_T,
    cache: MEMORY_CACHING_TYPE,
    return_address: usize,
) -> PVOID {
    match engine() {
        Some(glue) => {
            // SAFETY: every bit pattern of the 8-byte union is a valid i64.
            let pa = unsafe { physical.QuadPart } as u64;
            let caller = Caller {
                return_address: return_address as u64,
            };
            let base = glue
                .verifier
                .map_io_space(caller, pa, size as usize, cache as u32);
            base as usize as PVOID
        }
        // SAFETY: iosv is unloading: pass the call to the real routine unchanged.
        None => unsafe { MmMapIoSpace(physical, size, cache) },
    }
}

unsafe extern "system" fn map_io_space_ex_body(
    physical: PHYSICAL_ADDRESS,
    size: SIZE_T,
    protect: ULONG,
    return_address: usize,
) -> PVOID {
    match engine() {
        Some(glue) => {
            // SAFETY: every bit pattern of the 8-byte union is a valid i64.
            let pa = unsafe { physical.QuadPart } as u64;
            let caller = Caller {
                return_address: return_address as u64,
            };
            let base = glue
                .verifier
                .map_io_space_ex(caller, pa, size as usize, protect);
            base as usize as PVOID
        }
        // SAFETY: iosv is unloading: pass the call to the real routine unchanged.
        None => unsafe { MmMapIoSpaceEx(physical, size, protect) },
    }
}

unsafe extern "system" fn unmap_io_space_body(base: PVOID, size: SIZE_T, return_address: usize) {
    match engine() {
        Some(glue) => {
            let caller = Caller {
                return_address: return_address as u64,
            };
            glue.verifier
                .unmap_io_space(caller, base as usize as u64, size as usize);
        }
        // SAFETY: iosv is unloading: pass the call to the real routine unchanged.
        None => unsafe { MmUnmapIoSpace(base, size) },
    }
}

/// Replaces `MmGetSystemRoutineAddress` (PASSIVE_LEVEL by contract): hands out iosv's hook
/// for a hooked routine, so pointers resolved at run time are verified too. The caller
/// then holds a pointer into iosv that no detach can revoke, so the first such answer
/// blocks iosv's unload ([`Glue::block_unload`](super::state::Glue::block_unload)).
///
/// # Safety
///
/// Called as `MmGetSystemRoutineAddress`: `name` is a valid `UNICODE_STRING`.
pub unsafe extern "system" fn hook_mm_get_system_routine_address(name: PUNICODE_STRING) -> PVOID {
    // SAFETY: iosv's own import is not patched: this is the real routine, given the
    // caller's argument unchanged.
    let real = unsafe { MmGetSystemRoutineAddress(name) };
    let Some(glue) = engine() else { return real };
    if real.is_null() {
        // Not exported by this kernel: never hand out a hook for it.
        return real;
    }
    // SAFETY: the routine's contract requires a valid UNICODE_STRING; the real routine
    // just read it.
    let units = unsafe { unicode_units(name) };
    match system_routine_override(units, &glue.hooks) {
        // Once an unload has begun, no hook is handed out (the caller gets the real
        // routine, unverified).
        Some(hook) if glue.block_unload() => hook as PVOID,
        Some(_) => real,
        None => real,
    }
}

/// The hook addresses (the MDL family's from `mdl_hooks`), for the interception plans.
pub fn hook_addresses() -> crate::intercept::HookTable {
    crate::intercept::HookTable {
        io: io_hook_addresses(),
        mdl: super::mdl_hooks::hook_addresses(),
    }
}

/// The I/O-space routines' and `MmGetSystemRoutineAddress`'s hook addresses.
fn io_hook_addresses() -> crate::intercept::Hooks {
    crate::intercept::Hooks {
        map_io_space: hook_mm_map_io_space as *const () as usize,
        map_io_space_ex: hook_mm_map_io_space_ex as *const () as usize,
        unmap_io_space: hook_mm_unmap_io_space as *const () as usize,
        get_system_routine_address: hook_mm_get_system_routine_address as *const () as usize,
    }
}

// The trampolines exist for the two architectures Windows drivers are built for.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("iosv's hooks exist for x86_64 and aarch64 only");
