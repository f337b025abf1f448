//! The routines patched into target drivers' import slots: `MmMapIoSpace`,
//! `MmMapIoSpaceEx`, `MmUnmapIoSpace` and `MmGetSystemRoutineAddress` (the MDL family's are
//! in `mdl_hooks`).
//!
//! Each attached driver gets its own thunks of the four routines (`thunks` module):
//! [`hooks_for`] hands driver `id`'s plan the thunks of id `id`, and its
//! `MmGetSystemRoutineAddress` answers with them too. A thunk passes the body the caller's
//! return address and its driver id; for the two map routines, whose fourth register
//! already takes the return address, the id rides in the upper half of the register of the
//! 32-bit third argument.
//!
//! The engine blames the importer ([`Caller::through`]): a driver that leaves a routine by
//! a tail call (`jmp [IAT]`, what an optimizing compiler makes of a last
//! `MmUnmapIoSpace(...)` in `EvtDeviceReleaseHardware` or `DriverUnload`) passes the hook
//! the return address of whoever called that routine, in KMDF or the I/O manager, which a
//! return address alone could not attribute. The return address at entry is exact, so it
//! works at every IRQL, needs no stack walk and does not depend on inlining. (Rust has no
//! stable `_ReturnAddress`; a `RtlCaptureStackBackTrace` of one frame would be limited to
//! IRQL <= DISPATCH_LEVEL, which is exactly where the calls worth catching are not.)
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
use super::thunks::{caller, importer, thunk_of, thunks};
use crate::drivers::{DriverId, MAX_DRIVERS};
use crate::intercept::{system_routine_override, HookTable, Hooks};
use crate::pe::HookedRoutine;

// ---- thunks ----------------------------------------------------------------------------

// MmMapIoSpace(Ex): rcx / x0, rdx / x1, a 32-bit cache type or protection in r8d / w2 →
// that register = the value zero-extended | id << 32 (rax / x16, volatile and carrying no
// argument, builds it), r9 / x3 = return address.
thunks!(
    /// `MmMapIoSpace`'s thunks.
    static iosv_thunks_map_io_space, fn map_thunks, "iosv_thunk_map_io_space_",
    x64: ["mov r8d, r8d", "mov rax, \\id << 32", "or r8, rax", "mov r9, qword ptr [rsp]"],
    arm: ["mov w2, w2", "movz x16, #\\id, lsl #32", "orr x2, x2, x16", "mov x3, x30"],
    map_io_space_body
);
thunks!(
    /// `MmMapIoSpaceEx`'s thunks.
    static iosv_thunks_map_io_space_ex, fn map_ex_thunks, "iosv_thunk_map_io_space_ex_",
    x64: ["mov r8d, r8d", "mov rax, \\id << 32", "or r8, rax", "mov r9, qword ptr [rsp]"],
    arm: ["mov w2, w2", "movz x16, #\\id, lsl #32", "orr x2, x2, x16", "mov x3, x30"],
    map_io_space_ex_body
);
// MmUnmapIoSpace: rcx / x0, rdx / x1 → r8 / x2 = return address, r9 / x3 = id.
thunks!(
    /// `MmUnmapIoSpace`'s thunks.
    static iosv_thunks_unmap_io_space, fn unmap_thunks, "iosv_thunk_unmap_io_space_",
    x64: ["mov r8, qword ptr [rsp]", "mov r9d, \\id"],
    arm: ["mov x2, x30", "mov x3, #\\id"],
    unmap_io_space_body
);
// MmGetSystemRoutineAddress: rcx / x0 → rdx / x1 = id.
thunks!(
    /// `MmGetSystemRoutineAddress`'s thunks.
    static iosv_thunks_get_system_routine_address, fn get_routine_thunks,
    "iosv_thunk_get_system_routine_address_",
    x64: ["mov edx, \\id"],
    arm: ["mov x1, #\\id"],
    get_system_routine_address_body
);

// The trampolines exist for the two architectures Windows drivers are built for.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("iosv's hooks exist for x86_64 and aarch64 only");

/// The hooks to patch into driver `id`'s import slots: its own thunks for the I/O-space
/// routines and `MmGetSystemRoutineAddress`, and the MDL family's (`mdl_hooks`: its own
/// thunks where the routine leaves a register for the id, shared hooks otherwise).
/// `None` for an id without thunks.
pub fn hooks_for(id: DriverId) -> Option<HookTable> {
    Some(HookTable {
        io: Hooks {
            map_io_space: thunk_of(map_thunks(), id)?,
            map_io_space_ex: thunk_of(map_ex_thunks(), id)?,
            unmap_io_space: thunk_of(unmap_thunks(), id)?,
            get_system_routine_address: thunk_of(get_routine_thunks(), id)?,
        },
        mdl: super::mdl_hooks::hooks_for(id)?,
    })
}

/// The hooked routine whose hook — any driver's thunk — is at `address` (a slot iosv
/// patched before, seen again by a late attach): each id's [`hooks_for`] asked in turn.
pub fn routine_of_hook(address: usize) -> Option<HookedRoutine> {
    (1..=MAX_DRIVERS)
        .filter_map(|i| u16::try_from(i).ok())
        .find_map(|i| hooks_for(DriverId(i))?.routine_at(address))
}

// ---- bodies ----------------------------------------------------------------------------

/// `MmMapIoSpace` through driver `cache_and_id >> 32`'s thunk; the cache type is the low
/// half.
unsafe extern "system" fn map_io_space_body(
    physical: PHYSICAL_ADDRESS,
    size: SIZE_T,
    cache_and_id: u64,
    return_address: usize,
) -> PVOID {
    let cache = cache_and_id as u32;
    match engine() {
        Some(glue) => {
            // SAFETY: every bit pattern of the 8-byte union is a valid i64.
            let pa = unsafe { physical.QuadPart } as u64;
            let caller = caller(cache_and_id >> 32, return_address);
            let base = glue.verifier.map_io_space(caller, pa, size as usize, cache);
            base as usize as PVOID
        }
        // SAFETY: iosv is unloading: pass the call to the real routine unchanged.
        None => unsafe { MmMapIoSpace(physical, size, cache as MEMORY_CACHING_TYPE) },
    }
}

/// `MmMapIoSpaceEx` through driver `protect_and_id >> 32`'s thunk; the protection is the
/// low half.
unsafe extern "system" fn map_io_space_ex_body(
    physical: PHYSICAL_ADDRESS,
    size: SIZE_T,
    protect_and_id: u64,
    return_address: usize,
) -> PVOID {
    let protect = protect_and_id as ULONG;
    match engine() {
        Some(glue) => {
            // SAFETY: every bit pattern of the 8-byte union is a valid i64.
            let pa = unsafe { physical.QuadPart } as u64;
            let caller = caller(protect_and_id >> 32, return_address);
            let base = glue
                .verifier
                .map_io_space_ex(caller, pa, size as usize, protect);
            base as usize as PVOID
        }
        // SAFETY: iosv is unloading: pass the call to the real routine unchanged.
        None => unsafe { MmMapIoSpaceEx(physical, size, protect) },
    }
}

/// `MmUnmapIoSpace` through driver `id`'s thunk.
unsafe extern "system" fn unmap_io_space_body(
    base: PVOID,
    size: SIZE_T,
    return_address: usize,
    id: usize,
) {
    match engine() {
        Some(glue) => {
            let caller = caller(id as u64, return_address);
            glue.verifier
                .unmap_io_space(caller, base as usize as u64, size as usize);
        }
        // SAFETY: iosv is unloading: pass the call to the real routine unchanged.
        None => unsafe { MmUnmapIoSpace(base, size) },
    }
}

/// `MmGetSystemRoutineAddress` through driver `id`'s thunk (PASSIVE_LEVEL by contract):
/// hands out driver `id`'s thunk for a hooked routine, so pointers resolved at run time are
/// verified, and attributed, too. The caller then holds a pointer into iosv that no detach
/// can revoke, so the first such answer blocks iosv's unload
/// ([`Glue::block_unload`](super::state::Glue::block_unload)).
///
/// # Safety
///
/// Called as `MmGetSystemRoutineAddress`: `name` is a valid `UNICODE_STRING`.
unsafe extern "system" fn get_system_routine_address_body(
    name: PUNICODE_STRING,
    id: usize,
) -> PVOID {
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
    let Some(hooks) = hooks_for(importer(id as u64)) else {
        return real;
    };
    match system_routine_override(units, &hooks) {
        // Once an unload has begun, no hook is handed out (the caller gets the real
        // routine, unverified).
        Some(hook) if glue.block_unload() => hook as PVOID,
        Some(_) => real,
        None => real,
    }
}
