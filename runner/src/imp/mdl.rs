//! MDLs and the MDL / reserved-mapping family (docs/mdl.md) for a loaded driver: real
//! `MDL` structures in the child's memory (DDK layout, so the headers' inline
//! `MmGetSystemAddressForMdlSafe` and `MmPrepareMdlForReuse` read them), kept in step with
//! the host's simulated MDLs and PTEs (`iosv_host::mdl::SimMdls`, the ground truth the
//! audit checks), and the family's routines: unhooked, they are the simulated Mm; hooked
//! by the interception plan, they go through the verifier (IOSV015–IOSV021 and the leak
//! rules).
//!
//! An MDL mapping's address comes from the simulated Mm (system space, `0xFFFF_A000…`, or
//! the simulated user space), which user code cannot touch: each live mapping is made a
//! window onto the MDL's buffer pages ([`mmio::aliased`]), so the fault handler performs
//! the driver's `mov` accesses through it on the buffer.

use super::engine::{Engine, FamilyCall};
use super::kernel::{engine, frames, layout as l};
use super::{mmio, Obj};
use iosv::intercept::MdlHooks;
use iosv::mdl::{
    MdlInfo, MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED, MDL_PARTIAL, MDL_PARTIAL_HAS_BEEN_MAPPED,
    MDL_SOURCE_IS_NONPAGED_POOL,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// `MmCached`: what `MmMapLockedPages` maps with.
const MM_CACHED: u32 = 1;
/// The flags the simulated Mm owns: copied from it into the driver's MDL after each call.
const MM_FLAGS: u16 = MDL_MAPPED_TO_SYSTEM_VA | MDL_PAGES_LOCKED | MDL_PARTIAL_HAS_BEEN_MAPPED;

fn mdl_obj(mdl: usize) -> Obj {
    // SAFETY: the DDI contract of every routine here: the caller passes a live MDL (at
    // least the fixed header). A driver passing garbage faults, which is reported.
    unsafe { Obj::new(mdl, l::MDL) }
}

/// The header fields of the driver's MDL at `mdl`.
fn header(mdl: usize) -> MdlInfo {
    let o = mdl_obj(mdl);
    MdlInfo {
        byte_count: o.get::<u32>(l::MDL_BYTE_COUNT),
        byte_offset: o.get::<u32>(l::MDL_BYTE_OFFSET),
        flags: o.get::<u16>(l::MDL_FLAGS),
        mapped_system_va: o.get::<u64>(l::MDL_MAPPED_SYSTEM_VA),
    }
}

/// The start of the buffer an MDL describes (`StartVa + ByteOffset`).
fn buffer(mdl: usize) -> u64 {
    let o = mdl_obj(mdl);
    o.get::<u64>(l::MDL_START_VA)
        .wrapping_add(u64::from(o.get::<u32>(l::MDL_BYTE_OFFSET)))
}

/// Copies what the simulated Mm now says of the MDL (mapped, locked, its system address)
/// into the driver's MDL, as the real routines update the structure.
fn sync(e: &dyn Engine, mdl: usize) {
    let Some(info) = e.mdl_info(mdl as u64) else {
        return;
    };
    let o = mdl_obj(mdl);
    let flags = (o.get::<u16>(l::MDL_FLAGS) & !MM_FLAGS) | (info.flags & MM_FLAGS);
    o.set::<u16>(l::MDL_FLAGS, flags);
    if info.flags & MDL_MAPPED_TO_SYSTEM_VA != 0 {
        o.set::<u64>(l::MDL_MAPPED_SYSTEM_VA, info.mapped_system_va);
    } else if flags & MDL_SOURCE_IS_NONPAGED_POOL != 0 {
        o.set::<u64>(l::MDL_MAPPED_SYSTEM_VA, buffer(mdl));
    }
}

/// A live MDL mapping made a window onto its buffer: where the simulated Mm keys it
/// (`key`: the mapping's address, or the reserved range's base), the window's page-aligned
/// base, and the MDL.
struct Window {
    key: u64,
    base: u64,
    mdl: u64,
}

static WINDOWS: Mutex<Vec<Window>> = Mutex::new(Vec::new());

/// After a family call: a mapping it made (`made`: the address returned and the key the
/// simulated Mm files it under) becomes a window onto the MDL's buffer, and the windows
/// of mappings the simulated Mm no longer holds close.
fn update_windows(e: &dyn Engine, made: Option<(u64, u64)>, mdl: usize) {
    let mut w = WINDOWS.lock().unwrap_or_else(PoisonError::into_inner);
    w.retain(|x| {
        let live = e.mdl_mapped_at(x.key) == Some(x.mdl);
        if !live {
            mmio::unaliased(x.base);
        }
        live
    });
    let Some((address, key)) = made.filter(|&(a, _)| a != 0 && mdl != 0) else {
        return;
    };
    let Some(span) = e.mdl_info(mdl as u64).and_then(|i| i.span_bytes()) else {
        return;
    };
    let base = address & !0xFFF;
    let host = mdl_obj(mdl).get::<u64>(l::MDL_START_VA) & !0xFFF;
    mmio::aliased(base, span, host);
    w.retain(|x| x.base != base);
    w.push(Window {
        key,
        base,
        mdl: mdl as u64,
    });
}

/// Tells the simulated Mm the driver's MDL as it is now.
fn register(mdl: usize) {
    if let Some(e) = engine() {
        e.register_mdl(mdl as u64, header(mdl));
    }
}

// ---- routines that are never hooked ----------------------------------------------------

/// `IoAllocateMdl(VirtualAddress, Length, SecondaryBuffer, ChargeQuota, Irp)`: an MDL
/// describing the buffer, no pages locked (the IRP is not given the MDL).
pub extern "win64" fn io_allocate_mdl(
    va: usize,
    length: u32,
    _secondary: u8,
    _charge: u8,
    _irp: usize,
) -> usize {
    let pages = (va % 0x1000 + length as usize).div_ceil(0x1000);
    let size = l::MDL + 8 * pages;
    let m = super::blocks::allocate(super::blocks::Kind::Mdl, size);
    if m == 0 {
        return 0;
    }
    // SAFETY: `m` is a fresh allocation of `size` bytes.
    let o = unsafe { Obj::new(m, size) };
    o.set::<u16>(l::MDL_SIZE, u16::try_from(size).unwrap_or(u16::MAX));
    o.set::<u64>(l::MDL_START_VA, (va & !0xFFF) as u64);
    o.set::<u32>(l::MDL_BYTE_COUNT, length);
    o.set::<u32>(l::MDL_BYTE_OFFSET, (va & 0xFFF) as u32);
    register(m);
    m
}

/// `MmBuildMdlForNonPagedPool`: the buffer is its own system address.
pub extern "win64" fn mm_build_mdl_for_non_paged_pool(mdl: usize) {
    let o = mdl_obj(mdl);
    o.set::<u64>(l::MDL_MAPPED_SYSTEM_VA, buffer(mdl));
    o.set::<u16>(
        l::MDL_FLAGS,
        o.get::<u16>(l::MDL_FLAGS) | MDL_SOURCE_IS_NONPAGED_POOL,
    );
    register(mdl);
}

/// `MmProbeAndLockPages(Mdl, AccessMode, Operation)`: the buffer is the driver's own
/// memory, always resident here; the MDL is marked locked.
pub extern "win64" fn mm_probe_and_lock_pages(mdl: usize, _mode: u8, _operation: u32) {
    let o = mdl_obj(mdl);
    o.set::<u16>(l::MDL_FLAGS, o.get::<u16>(l::MDL_FLAGS) | MDL_PAGES_LOCKED);
    register(mdl);
}

/// `IoBuildPartialMdl(SourceMdl, TargetMdl, VirtualAddress, Length)`: the target describes
/// `Length` bytes (0: the rest of the source) at `VirtualAddress`, marked `MDL_PARTIAL`.
/// A source already mapped into system space (or in nonpaged pool) lends its mapping:
/// the target inherits the flag and `MappedSystemVa` points into the source's mapping,
/// so `MmGetSystemAddressForMdlSafe` uses it, as the DDI page says; otherwise mapping the
/// target makes a mapping of its own (`MDL_PARTIAL_HAS_BEEN_MAPPED`), which `IoFreeMdl`
/// and `MmPrepareMdlForReuse` release.
pub extern "win64" fn io_build_partial_mdl(source: usize, target: usize, va: usize, length: u32) {
    let s = mdl_obj(source);
    let t = mdl_obj(target);
    let offset = (va as u64).wrapping_sub(buffer(source));
    let length = if length == 0 {
        u64::from(s.get::<u32>(l::MDL_BYTE_COUNT)).saturating_sub(offset)
    } else {
        u64::from(length)
    };
    t.set::<u64>(l::MDL_START_VA, (va & !0xFFF) as u64);
    t.set::<u32>(l::MDL_BYTE_OFFSET, (va & 0xFFF) as u32);
    t.set::<u32>(l::MDL_BYTE_COUNT, u32::try_from(length).unwrap_or(u32::MAX));
    let lent = s.get::<u16>(l::MDL_FLAGS) & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL);
    t.set::<u16>(l::MDL_FLAGS, MDL_PARTIAL | lent);
    let mapped = if lent == 0 {
        0
    } else {
        s.get::<u64>(l::MDL_MAPPED_SYSTEM_VA).wrapping_add(offset)
    };
    t.set::<u64>(l::MDL_MAPPED_SYSTEM_VA, mapped);
    register(target);
}

/// `STATUS_INVALID_PAGE_PROTECTION`.
const STATUS_INVALID_PAGE_PROTECTION: i32 = 0xC000_0045_u32 as i32;
/// `STATUS_NOT_MAPPED_VIEW`.
const STATUS_NOT_MAPPED_VIEW: i32 = 0xC000_0019_u32 as i32;

/// `MmProtectMdlSystemAddress(MemoryDescriptorList, NewProtect)`: sets what the MDL's
/// system mapping allows. `NewProtect` is one of `PAGE_NOACCESS`, `PAGE_READONLY`,
/// `PAGE_READWRITE`, `PAGE_EXECUTE`, `PAGE_EXECUTE_READ`, `PAGE_EXECUTE_READWRITE`
/// (else `STATUS_INVALID_PAGE_PROTECTION`); an MDL not mapped to system space is
/// `STATUS_NOT_MAPPED_VIEW` (the DDI page). The mapping is a window onto the buffer
/// ([`mmio::aliased`]): a writable one writes the buffer even where this process maps it
/// read-only, as a second mapping of the physical page does on Windows.
pub extern "win64" fn mm_protect_mdl_system_address(mdl: usize, protect: u32) -> i32 {
    let (readable, writable) = match protect {
        0x01 => (false, false),
        0x02 | 0x10 | 0x20 => (true, false),
        0x04 | 0x40 => (true, true),
        _ => return STATUS_INVALID_PAGE_PROTECTION,
    };
    let info = header(mdl);
    if info.flags & MDL_MAPPED_TO_SYSTEM_VA == 0 || info.mapped_system_va == 0 {
        return STATUS_NOT_MAPPED_VIEW;
    }
    if !mmio::protect_alias(info.mapped_system_va, readable, writable) {
        return STATUS_NOT_MAPPED_VIEW;
    }
    0
}

// ---- the family, unhooked (the simulated Mm) and hooked (the verifier) -------------------

/// Runs a family call on `mdl` (0: none) through the verifier (`ret` is the hook's
/// return address) or unhooked (`None`), then updates the driver's MDL.
fn call(ret: Option<u64>, mdl: usize, c: FamilyCall) -> u64 {
    let Some(e) = engine() else { return 0 };
    let maps = matches!(
        c,
        FamilyCall::MapLocked { .. } | FamilyCall::MapReserved { .. }
    );
    if maps && mdl != 0 && e.mdl_info(mdl as u64).is_none() {
        // An MDL the driver built in its own memory (MmInitializeMdl): Mm reads it.
        register(mdl);
    }
    let r = match ret {
        Some(ret) => {
            let (f, n) = frames(ret);
            e.family(Some(f.get(..n).unwrap_or(&[])), c)
        }
        None => e.family(None, c),
    };
    if mdl != 0 && !matches!(c, FamilyCall::FreeMdl { .. }) {
        sync(e, mdl);
    }
    let made = match c {
        FamilyCall::MapLocked { .. } => Some((r, r)),
        FamilyCall::MapReserved { range, .. } => Some((r, range & !0xFFF)),
        _ => None,
    };
    update_windows(e, made, mdl);
    r
}

fn map_specify(
    ret: Option<u64>,
    mdl: usize,
    mode: u8,
    cache: u32,
    requested: u64,
    bugcheck: u32,
    priority: u32,
) -> u64 {
    let c = FamilyCall::MapLocked {
        mdl: mdl as u64,
        mode,
        cache,
        requested,
        bugcheck,
        priority,
        specify: true,
    };
    call(ret, mdl, c)
}

fn map(ret: Option<u64>, mdl: usize, mode: u8) -> u64 {
    let c = FamilyCall::MapLocked {
        mdl: mdl as u64,
        mode,
        cache: MM_CACHED,
        requested: 0,
        bugcheck: 0,
        priority: 0,
        specify: false,
    };
    call(ret, mdl, c)
}

fn unmap(ret: Option<u64>, base: u64, mdl: usize) {
    let c = FamilyCall::UnmapLocked {
        base,
        mdl: mdl as u64,
    };
    call(ret, mdl, c);
}

fn free_mdl(ret: Option<u64>, mdl: usize) {
    // Checked first: a foreign or freed MDL is a bug-check report before anything
    // (the engine included) looks at it.
    super::blocks::require_live(super::blocks::Kind::Mdl, mdl, "IoFreeMdl");
    call(ret, mdl, FamilyCall::FreeMdl { mdl: mdl as u64 });
    super::blocks::free(super::blocks::Kind::Mdl, mdl, "IoFreeMdl");
}

fn unlock(ret: Option<u64>, mdl: usize) {
    call(ret, mdl, FamilyCall::UnlockPages { mdl: mdl as u64 });
}

fn allocate(ret: Option<u64>, size: usize, tag: u32, flags: Option<u32>) -> u64 {
    let c = FamilyCall::AllocateMappingAddress {
        size: size as u64,
        tag,
        flags,
    };
    call(ret, 0, c)
}

fn map_reserved(ret: Option<u64>, range: u64, tag: u32, mdl: usize, cache: u32) -> u64 {
    let c = FamilyCall::MapReserved {
        range,
        tag,
        mdl: mdl as u64,
        cache,
    };
    call(ret, mdl, c)
}

fn unmap_reserved(ret: Option<u64>, range: u64, tag: u32, mdl: usize) {
    let c = FamilyCall::UnmapReserved {
        range,
        tag,
        mdl: mdl as u64,
    };
    call(ret, mdl, c);
}

fn free_mapping_address(ret: Option<u64>, range: u64, tag: u32) {
    call(ret, 0, FamilyCall::FreeMappingAddress { range, tag });
}

/// `MmMapLockedPagesSpecifyCache`, unhooked.
pub extern "win64" fn mm_map_locked_pages_specify_cache(
    mdl: usize,
    mode: u8,
    cache: u32,
    requested: u64,
    bugcheck: u32,
    priority: u32,
) -> u64 {
    map_specify(None, mdl, mode, cache, requested, bugcheck, priority)
}

/// `MmMapLockedPages`, unhooked.
pub extern "win64" fn mm_map_locked_pages(mdl: usize, mode: u8) -> u64 {
    map(None, mdl, mode)
}

/// `MmUnmapLockedPages`, unhooked.
pub extern "win64" fn mm_unmap_locked_pages(base: u64, mdl: usize) {
    unmap(None, base, mdl);
}

/// `IoFreeMdl`, unhooked.
pub extern "win64" fn io_free_mdl(mdl: usize) {
    free_mdl(None, mdl);
}

/// `MmUnlockPages`, unhooked.
pub extern "win64" fn mm_unlock_pages(mdl: usize) {
    unlock(None, mdl);
}

/// `MmAllocateMappingAddress`, unhooked.
pub extern "win64" fn mm_allocate_mapping_address(size: usize, tag: u32) -> u64 {
    allocate(None, size, tag, None)
}

/// `MmAllocateMappingAddressEx`, unhooked.
pub extern "win64" fn mm_allocate_mapping_address_ex(size: usize, tag: u32, flags: u32) -> u64 {
    allocate(None, size, tag, Some(flags))
}

/// `MmMapLockedPagesWithReservedMapping`, unhooked.
pub extern "win64" fn mm_map_locked_pages_with_reserved_mapping(
    range: u64,
    tag: u32,
    mdl: usize,
    cache: u32,
) -> u64 {
    map_reserved(None, range, tag, mdl, cache)
}

/// `MmUnmapReservedMapping`, unhooked.
pub extern "win64" fn mm_unmap_reserved_mapping(range: u64, tag: u32, mdl: usize) {
    unmap_reserved(None, range, tag, mdl);
}

/// `MmFreeMappingAddress`, unhooked.
pub extern "win64" fn mm_free_mapping_address(range: u64, tag: u32) {
    free_mapping_address(None, range, tag);
}

// ---- hooks -----------------------------------------------------------------------------

/// The return address of the family hook being entered. Each trampoline stores it here
/// before jumping to its body, which reads it first: one thread runs driver code, and
/// nothing runs in between. (The family's routines take up to six arguments, so no free
/// argument register can carry it, as the I/O-space hooks' trampolines do.)
static HOOK_RETURN: AtomicU64 = AtomicU64::new(0);

fn hook_return() -> Option<u64> {
    Some(HOOK_RETURN.load(Ordering::Relaxed))
}

macro_rules! trampolines {
    ($($tramp:ident => $body:ident,)*) => {
        core::arch::global_asm!(
            ".pushsection .text.iosv_runner_mdl_hooks,\"ax\",@progbits",
            $(
                ".p2align 4",
                concat!(".globl ", stringify!($tramp)),
                concat!(stringify!($tramp), ":"),
                "mov rax, [rsp]",
                "mov qword ptr [rip + {ret}], rax",
                concat!("jmp {", stringify!($body), "}"),
            )*
            ".popsection",
            ret = sym HOOK_RETURN,
            $($body = sym $body,)*
        );
        unsafe extern "win64" {
            $(fn $tramp();)*
        }
    };
}

trampolines! {
    iosv_runner_hook_map_locked_specify => hook_map_locked_specify,
    iosv_runner_hook_map_locked => hook_map_locked,
    iosv_runner_hook_unmap_locked => hook_unmap_locked,
    iosv_runner_hook_free_mdl => hook_free_mdl,
    iosv_runner_hook_unlock_pages => hook_unlock_pages,
    iosv_runner_hook_allocate_mapping => hook_allocate_mapping,
    iosv_runner_hook_allocate_mapping_ex => hook_allocate_mapping_ex,
    iosv_runner_hook_map_reserved => hook_map_reserved,
    iosv_runner_hook_unmap_reserved => hook_unmap_reserved,
    iosv_runner_hook_free_mapping => hook_free_mapping,
}

extern "win64" fn hook_map_locked_specify(
    mdl: usize,
    mode: u8,
    cache: u32,
    requested: u64,
    bugcheck: u32,
    priority: u32,
) -> u64 {
    let ret = hook_return();
    map_specify(ret, mdl, mode, cache, requested, bugcheck, priority)
}

extern "win64" fn hook_map_locked(mdl: usize, mode: u8) -> u64 {
    map(hook_return(), mdl, mode)
}

extern "win64" fn hook_unmap_locked(base: u64, mdl: usize) {
    unmap(hook_return(), base, mdl);
}

extern "win64" fn hook_free_mdl(mdl: usize) {
    free_mdl(hook_return(), mdl);
}

extern "win64" fn hook_unlock_pages(mdl: usize) {
    unlock(hook_return(), mdl);
}

extern "win64" fn hook_allocate_mapping(size: usize, tag: u32) -> u64 {
    allocate(hook_return(), size, tag, None)
}

extern "win64" fn hook_allocate_mapping_ex(size: usize, tag: u32, flags: u32) -> u64 {
    allocate(hook_return(), size, tag, Some(flags))
}

extern "win64" fn hook_map_reserved(range: u64, tag: u32, mdl: usize, cache: u32) -> u64 {
    map_reserved(hook_return(), range, tag, mdl, cache)
}

extern "win64" fn hook_unmap_reserved(range: u64, tag: u32, mdl: usize) {
    unmap_reserved(hook_return(), range, tag, mdl);
}

extern "win64" fn hook_free_mapping(range: u64, tag: u32) {
    free_mapping_address(hook_return(), range, tag);
}

/// The addresses of the family's hooks, for the interception plan.
#[must_use]
pub fn hooks() -> MdlHooks {
    MdlHooks {
        map_locked_pages_specify_cache: iosv_runner_hook_map_locked_specify as *const () as usize,
        map_locked_pages: iosv_runner_hook_map_locked as *const () as usize,
        unmap_locked_pages: iosv_runner_hook_unmap_locked as *const () as usize,
        free_mdl: iosv_runner_hook_free_mdl as *const () as usize,
        unlock_pages: iosv_runner_hook_unlock_pages as *const () as usize,
        allocate_mapping_address: iosv_runner_hook_allocate_mapping as *const () as usize,
        allocate_mapping_address_ex: iosv_runner_hook_allocate_mapping_ex as *const () as usize,
        map_locked_pages_with_reserved_mapping: iosv_runner_hook_map_reserved as *const () as usize,
        unmap_reserved_mapping: iosv_runner_hook_unmap_reserved as *const () as usize,
        free_mapping_address: iosv_runner_hook_free_mapping as *const () as usize,
    }
}
