//! The routines patched into target drivers' import slots.
//!
//! Each attached driver gets its own *thunks* for `MmMapIoSpace`, `MmMapIoSpaceEx`,
//! `MmUnmapIoSpace` and `MmGetSystemRoutineAddress`: [`hooks_for`] hands driver `id`'s
//! plan the thunks of id `id`, so a call that reaches a thunk came through that driver's
//! import slot (or through a pointer `MmGetSystemRoutineAddress` handed that driver). A
//! thunk is three to five instructions, no stack use: it copies the caller's return
//! address into the first free argument register, puts its driver id in the next one
//! (for the map routines, whose fourth register already takes the return address, in the
//! upper half of the 32-bit third argument's register, which the ABI leaves undefined),
//! and jumps to the body, which then has the routine's own arguments plus those two.
//!
//! The engine blames the importer ([`Caller::through`]): a driver that leaves a routine by
//! a tail call (`jmp [IAT]`, what an optimizing compiler makes of a last
//! `MmUnmapIoSpace(...)` in `EvtDeviceReleaseHardware` or `DriverUnload`) passes the hook
//! the return address of whoever called that routine, in KMDF or the I/O manager, which a
//! return address alone could not attribute. The return address at entry is exact —
//! `[rsp]` on x64, `x30` (LR) on ARM64, before any prologue — so it works at every IRQL,
//! needs no stack walk and does not depend on inlining. (Rust has no stable
//! `_ReturnAddress`; a `RtlCaptureStackBackTrace` of one frame would be limited to IRQL
//! <= DISPATCH_LEVEL, which is exactly where the calls worth catching are not.) The jump
//! keeps the stack as the caller left it, so the body returns straight to the target
//! driver; the Win64 ABI's 32-byte home area, which every caller allocates, covers the
//! extra register arguments.
//!
//! The thunks are `global_asm!` (64 per routine, [`MAX_DRIVERS`]), listed in read-only
//! tables of their addresses; no code is generated at run time (HVCI allows none).
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
use crate::drivers::{DriverId, MAX_DRIVERS};
use crate::intercept::{system_routine_override, HookTable, Hooks};
use crate::pe::HookedRoutine;
use crate::platform::Caller;

// ---- thunks ----------------------------------------------------------------------------

/// The driver ids the thunk tables cover, as the assembler's `.irp` list (one thunk per
/// id, 1..=MAX_DRIVERS; checked against `MAX_DRIVERS` below).
macro_rules! thunk_ids {
    () => {
        "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,\
         33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,\
         61,62,63,64"
    };
}
const _: () = assert!(
    MAX_DRIVERS == 64,
    "thunk_ids! lists one thunk per driver id"
);

/// Emits one routine's thunks, `$name` followed by the id, then the read-only table of
/// their addresses, `$table` (64 pointer-sized words, id 1 first).
macro_rules! thunk_table_asm {
    ($table:literal, $name:literal, $($code:literal),+) => {
        concat!(
            ".text\n",
            ".irp id, ", thunk_ids!(), "\n",
            ".p2align 4\n",
            $name, "\\id:\n",
            $($code, "\n",)+
            ".endr\n",
            ".section .rdata,\"dr\"\n",
            ".p2align 3\n",
            ".globl ", $table, "\n",
            $table, ":\n",
            ".irp id, ", thunk_ids!(), "\n",
            ".quad ", $name, "\\id\n",
            ".endr\n",
            ".text\n",
        )
    };
}

// x64. MmMapIoSpace(Ex): rcx, rdx, r8d (a 32-bit cache type / protection) → r8 = that
// value zero-extended | id << 32, r9 = return address. MmUnmapIoSpace: rcx, rdx → r8 =
// return address, r9 = id. MmGetSystemRoutineAddress: rcx → rdx = id. rax is volatile
// and carries no argument.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    thunk_table_asm!(
        "iosv_thunks_map_io_space",
        "iosv_thunk_map_io_space_",
        "mov r8d, r8d",
        "mov rax, \\id << 32",
        "or r8, rax",
        "mov r9, qword ptr [rsp]",
        "jmp {map}"
    ),
    thunk_table_asm!(
        "iosv_thunks_map_io_space_ex",
        "iosv_thunk_map_io_space_ex_",
        "mov r8d, r8d",
        "mov rax, \\id << 32",
        "or r8, rax",
        "mov r9, qword ptr [rsp]",
        "jmp {map_ex}"
    ),
    thunk_table_asm!(
        "iosv_thunks_unmap_io_space",
        "iosv_thunk_unmap_io_space_",
        "mov r8, qword ptr [rsp]",
        "mov r9d, \\id",
        "jmp {unmap}"
    ),
    thunk_table_asm!(
        "iosv_thunks_get_system_routine_address",
        "iosv_thunk_get_system_routine_address_",
        "mov edx, \\id",
        "jmp {get}"
    ),
    map = sym map_io_space_body,
    map_ex = sym map_io_space_ex_body,
    unmap = sym unmap_io_space_body,
    get = sym get_system_routine_address_body,
);

// ARM64. The map routines: x0, x1, w2 → x2 = w2 zero-extended | id << 32 (x16, the
// intra-procedure-call scratch register, builds it), x3 = LR. MmUnmapIoSpace: x0, x1 →
// x2 = LR, x3 = id. MmGetSystemRoutineAddress: x0 → x1 = id. LR is left as it was.
#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    thunk_table_asm!(
        "iosv_thunks_map_io_space",
        "iosv_thunk_map_io_space_",
        "mov w2, w2",
        "movz x16, #\\id, lsl #32",
        "orr x2, x2, x16",
        "mov x3, x30",
        "b {map}"
    ),
    thunk_table_asm!(
        "iosv_thunks_map_io_space_ex",
        "iosv_thunk_map_io_space_ex_",
        "mov w2, w2",
        "movz x16, #\\id, lsl #32",
        "orr x2, x2, x16",
        "mov x3, x30",
        "b {map_ex}"
    ),
    thunk_table_asm!(
        "iosv_thunks_unmap_io_space",
        "iosv_thunk_unmap_io_space_",
        "mov x2, x30",
        "mov x3, #\\id",
        "b {unmap}"
    ),
    thunk_table_asm!(
        "iosv_thunks_get_system_routine_address",
        "iosv_thunk_get_system_routine_address_",
        "mov x1, #\\id",
        "b {get}"
    ),
    map = sym map_io_space_body,
    map_ex = sym map_io_space_ex_body,
    unmap = sym unmap_io_space_body,
    get = sym get_system_routine_address_body,
);

// The trampolines exist for the two architectures Windows drivers are built for.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("iosv's hooks exist for x86_64 and aarch64 only");

unsafe extern "C" {
    /// Addresses of the `MmMapIoSpace` thunks, id 1 first (the `global_asm!` above).
    static iosv_thunks_map_io_space: [usize; MAX_DRIVERS];
    /// Addresses of the `MmMapIoSpaceEx` thunks.
    static iosv_thunks_map_io_space_ex: [usize; MAX_DRIVERS];
    /// Addresses of the `MmUnmapIoSpace` thunks.
    static iosv_thunks_unmap_io_space: [usize; MAX_DRIVERS];
    /// Addresses of the `MmGetSystemRoutineAddress` thunks.
    static iosv_thunks_get_system_routine_address: [usize; MAX_DRIVERS];
}

/// The four thunk tables: map, map-ex, unmap, get-routine.
fn thunk_tables() -> [&'static [usize; MAX_DRIVERS]; 4] {
    // SAFETY (each block): the table is defined by the `global_asm!` above as MAX_DRIVERS
    // pointer-sized words in a read-only section, filled by the loader's relocations
    // before any code of this image runs and never written after.
    [
        // SAFETY: see above.
        unsafe { &iosv_thunks_map_io_space },
        // SAFETY: see above.
        unsafe { &iosv_thunks_map_io_space_ex },
        // SAFETY: see above.
        unsafe { &iosv_thunks_unmap_io_space },
        // SAFETY: see above.
        unsafe { &iosv_thunks_get_system_routine_address },
    ]
}

/// The hooks to patch into driver `id`'s import slots: its own thunks for the I/O-space
/// routines and `MmGetSystemRoutineAddress`, the MDL family's shared hooks (`mdl_hooks`,
/// attributed by return address). `None` for an id without thunks.
pub fn hooks_for(id: DriverId) -> Option<HookTable> {
    let i = usize::from(id.0).checked_sub(1)?;
    let [map, map_ex, unmap, get] = thunk_tables();
    Some(HookTable {
        io: Hooks {
            map_io_space: *map.get(i)?,
            map_io_space_ex: *map_ex.get(i)?,
            unmap_io_space: *unmap.get(i)?,
            get_system_routine_address: *get.get(i)?,
        },
        mdl: super::mdl_hooks::hook_addresses(),
    })
}

/// The hooked routine whose hook — any driver's thunk, or the MDL family's shared hook —
/// is at `address` (a slot iosv patched before, seen again by a late attach).
pub fn routine_of_hook(address: usize) -> Option<HookedRoutine> {
    if address == 0 {
        return None;
    }
    let [map, map_ex, unmap, get] = thunk_tables();
    let routines = [
        (map, HookedRoutine::MapIoSpace),
        (map_ex, HookedRoutine::MapIoSpaceEx),
        (unmap, HookedRoutine::UnmapIoSpace),
        (get, HookedRoutine::GetSystemRoutineAddress),
    ];
    routines
        .into_iter()
        .find(|(table, _)| table.contains(&address))
        .map(|(_, routine)| routine)
        .or_else(|| {
            HookTable {
                io: Hooks {
                    map_io_space: 0,
                    map_io_space_ex: 0,
                    unmap_io_space: 0,
                    get_system_routine_address: 0,
                },
                mdl: super::mdl_hooks::hook_addresses(),
            }
            .routine_at(address)
        })
}

/// The driver a thunk names (its register argument), as a [`DriverId`].
fn importer(id: usize) -> DriverId {
    DriverId(u16::try_from(id).unwrap_or(0))
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
            let caller = Caller::through(
                importer((cache_and_id >> 32) as usize),
                return_address as u64,
            );
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
            let caller = Caller::through(
                importer((protect_and_id >> 32) as usize),
                return_address as u64,
            );
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
            let caller = Caller::through(importer(id), return_address as u64);
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
    let Some(hooks) = hooks_for(importer(id)) else {
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
