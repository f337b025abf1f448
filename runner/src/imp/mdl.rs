//! MDLs and the MDL / reserved-mapping family (docs/mdl.md) for a loaded driver: real
//! `MDL` structures in the child's memory (DDK layout, so the headers' inline
//! `MmGetSystemAddressForMdlSafe` and `MmPrepareMdlForReuse` read them), kept in step with
//! the host's simulated MDLs and PTEs (`iosv_host::mdl::SimMdls`, the ground truth the
//! audit checks), and the family's routines: unhooked, they are the simulated Mm; hooked
//! by the interception plan, they go through the verifier (IOSV015–IOSV023 and the leak
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
        process: o.get::<u64>(l::MDL_PROCESS),
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

/// Ends the run with a bug-check report naming `routine` if the `len` bytes at `p`, a pool
/// block about to be freed, overlap the buffer of an MDL still in use: its pages locked
/// (`MmProbeAndLockPages`), mapped (`MDL_MAPPED_TO_SYSTEM_VA`, a partial MDL's own
/// mapping), or aliased by a live mapping window ([`mmio::aliased`]). Freeing the pages
/// under such an MDL is a use-after-free: on Windows the pool's next owner shares the
/// locked pages and the mapping, which later DMA or stores through it corrupt. An MDL
/// merely describing the block (built, not locked or mapped) is no use of it.
pub fn require_undescribed(p: usize, len: usize, routine: &str) {
    const IN_USE: u16 = MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED;
    let windowed: Vec<u64> = WINDOWS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|w| w.mdl)
        .collect();
    let (lo, hi) = (p as u64, (p as u64).saturating_add(len as u64));
    // Under the live-MDL list's lock: no MDL read here is freed meanwhile.
    super::blocks::with_live_mdls(|live| {
        let windows = windowed.iter().map(|&m| m as usize);
        for m in live.iter().copied().chain(windows) {
            let h = header(m);
            let start = buffer(m);
            let end = start.saturating_add(u64::from(h.byte_count));
            let mapped = windowed.contains(&(m as u64));
            if (h.flags & IN_USE == 0 && !mapped) || end <= lo || start >= hi {
                continue;
            }
            let how = match (
                h.flags & MDL_PAGES_LOCKED != 0,
                h.flags & MDL_MAPPED_TO_SYSTEM_VA != 0 || mapped,
            ) {
                (true, true) => "its pages locked and mapped",
                (true, false) => "its pages locked",
                _ => "mapped",
            };
            super::trap::bugcheck(&format!(
                "{routine}({p:#x}): the pool block is still described by MDL {m:#x} ({how}, \
                 buffer [{start:#x}, {end:#x})): its pages would be freed under the MDL, a \
                 use-after-free"
            ));
        }
    });
}

// ---- routines that are never hooked ----------------------------------------------------

/// The longest buffer `IoAllocateMdl` describes: 4 GiB − PAGE_SIZE (the DDI page, for
/// Windows 7 and later); longer is NULL.
const MAX_MDL_LENGTH: u32 = 0xFFFF_F000;

/// `IoAllocateMdl(VirtualAddress, Length, SecondaryBuffer, ChargeQuota, Irp)`: an MDL
/// describing the buffer, no pages locked; NULL past [`MAX_MDL_LENGTH`]. With an `Irp`
/// the MDL goes into its MDL list as the DDI page says: `SecondaryBuffer` FALSE makes it
/// `Irp->MdlAddress`, TRUE appends it to the chain `Irp->MdlAddress` starts.
pub extern "win64" fn io_allocate_mdl(
    va: usize,
    length: u32,
    secondary: u8,
    _charge: u8,
    irp: usize,
) -> usize {
    if length > MAX_MDL_LENGTH {
        return 0;
    }
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
    if irp != 0 {
        give_to_irp(irp, m, secondary != 0);
    }
    m
}

/// Puts the new MDL `m` into the MDL list of `irp`: first (`Irp->MdlAddress`), or at the
/// end of the chain (`secondary`). A secondary buffer of an IRP with no MDL, or a chain
/// that does not end (a cycle the driver made), is a bug-check report: the page makes
/// every buffer but the first secondary, and Windows would walk the chain from NULL or
/// forever.
fn give_to_irp(irp: usize, m: usize, secondary: bool) {
    // SAFETY: the DDI contract: a non-NULL Irp is a live IRP (its fixed part).
    let i = unsafe { Obj::new(irp, l::IRP) };
    if !secondary {
        i.set::<u64>(l::IRP_MDL_ADDRESS, m as u64);
        return;
    }
    let mut last = i.get::<u64>(l::IRP_MDL_ADDRESS) as usize;
    if last == 0 {
        super::trap::bugcheck(&format!(
            "IoAllocateMdl: SecondaryBuffer TRUE for IRP {irp:#x}, which has no MDL \
             (Irp->MdlAddress is NULL): there is no chain to append to"
        ));
    }
    for _ in 0..MAX_CHAIN {
        let next = mdl_obj(last).get::<u64>(l::MDL_NEXT) as usize;
        if next == 0 {
            mdl_obj(last).set::<u64>(l::MDL_NEXT, m as u64);
            return;
        }
        last = next;
    }
    super::trap::bugcheck(&format!(
        "IoAllocateMdl: the MDL chain of IRP {irp:#x} does not end within {MAX_CHAIN} MDLs"
    ));
}

/// The most MDLs [`give_to_irp`] follows in an IRP's chain.
const MAX_CHAIN: usize = 1 << 16;

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

/// `MDL_ALLOCATED_FIXED_SIZE` (wdm.h): how the MDL was allocated.
const MDL_ALLOCATED_FIXED_SIZE: u16 = 0x0008;
/// `MDL_IO_PAGE_READ` (wdm.h).
const MDL_IO_PAGE_READ: u16 = 0x0040;
/// `MDL_IO_SPACE` (wdm.h): the pages are device memory.
const MDL_IO_SPACE: u16 = 0x0800;
/// `MDL_ALLOCATED_MUST_SUCCEED` (wdm.h): how the MDL was allocated.
const MDL_ALLOCATED_MUST_SUCCEED: u16 = 0x4000;
/// The target's own flags `IoBuildPartialMdl` keeps: how the target was allocated.
const PARTIAL_KEEPS: u16 = MDL_ALLOCATED_FIXED_SIZE | MDL_ALLOCATED_MUST_SUCCEED;
/// The source's flags a partial MDL inherits: where the pages are (nonpaged pool, I/O
/// space), the read in progress, and the source's system mapping, which it shares. (The
/// DDI page's remarks; MDL_IO_SPACE per Microsoft KB 828274, whose fix made
/// IoBuildPartialMdl carry it across; ReactOS's IoBuildPartialMdl keeps the same sets.)
const PARTIAL_INHERITS: u16 =
    MDL_SOURCE_IS_NONPAGED_POOL | MDL_MAPPED_TO_SYSTEM_VA | MDL_IO_PAGE_READ | MDL_IO_SPACE;

/// `IoBuildPartialMdl(SourceMdl, TargetMdl, VirtualAddress, Length)`: the target describes
/// `Length` bytes (0: the rest of the source) at `VirtualAddress`, which must be a
/// subrange of the source's buffer — else bug check 0x12E INVALID_MDL_RANGE, as Windows
/// (its parameters: source, target, address, length) — and fit the target's page array
/// (`MDL.Size`) — else bug check 0x40 TARGET_MDL_TOO_SMALL. The target keeps only its
/// allocation flags ([`PARTIAL_KEEPS`]), inherits [`PARTIAL_INHERITS`] from the source,
/// and is marked `MDL_PARTIAL`. A source already mapped into system space (or in
/// nonpaged pool) lends its mapping: `MappedSystemVa` points into the source's mapping,
/// so `MmGetSystemAddressForMdlSafe` uses it, as the DDI page says; otherwise mapping the
/// target makes a mapping of its own (`MDL_PARTIAL_HAS_BEEN_MAPPED`), which `IoFreeMdl`
/// and `MmPrepareMdlForReuse` release.
pub extern "win64" fn io_build_partial_mdl(source: usize, target: usize, va: usize, length: u32) {
    let s = mdl_obj(source);
    let t = mdl_obj(target);
    let start = buffer(source);
    let end = start.saturating_add(u64::from(s.get::<u32>(l::MDL_BYTE_COUNT)));
    let at = va as u64;
    let length = if length == 0 {
        end.saturating_sub(at)
    } else {
        u64::from(length)
    };
    if at < start || at.saturating_add(length) > end {
        super::trap::bugcheck(&format!(
            "INVALID_MDL_RANGE (0x12e): IoBuildPartialMdl({source:#x}, {target:#x}, {va:#x}, \
             {length:#x}): the range is not inside the source MDL's buffer [{start:#x}, \
             {end:#x})"
        ));
    }
    let pages = ((at & 0xFFF) + length).div_ceil(0x1000);
    let room = (usize::from(t.get::<u16>(l::MDL_SIZE)).saturating_sub(l::MDL) / 8) as u64;
    if pages > room {
        super::trap::bugcheck(&format!(
            "TARGET_MDL_TOO_SMALL (0x40): IoBuildPartialMdl({source:#x}, {target:#x}, {va:#x}, \
             {length:#x}): the range spans {pages} pages, the target MDL has room for {room}"
        ));
    }
    let offset = at - start;
    t.set::<u64>(l::MDL_START_VA, (va & !0xFFF) as u64);
    t.set::<u32>(l::MDL_BYTE_OFFSET, (va & 0xFFF) as u32);
    t.set::<u32>(l::MDL_BYTE_COUNT, u32::try_from(length).unwrap_or(u32::MAX));
    let inherited = s.get::<u16>(l::MDL_FLAGS) & PARTIAL_INHERITS;
    let kept = t.get::<u16>(l::MDL_FLAGS) & PARTIAL_KEEPS;
    t.set::<u16>(l::MDL_FLAGS, kept | inherited | MDL_PARTIAL);
    let lent = inherited & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(mdl: usize) -> u16 {
        mdl_obj(mdl).get::<u16>(l::MDL_FLAGS)
    }

    /// With an IRP, the first MDL becomes `Irp->MdlAddress` and secondary ones are
    /// chained at the end, in order; without one, nothing is linked.
    #[test]
    fn allocated_mdls_go_into_the_irps_mdl_list() {
        let mut irp = vec![0u64; l::IRP / 8];
        let i = irp.as_mut_ptr() as usize;
        let buf = vec![0u8; 0x3000];
        let va = buf.as_ptr() as usize;
        let first = io_allocate_mdl(va, 0x100, 0, 0, i);
        let second = io_allocate_mdl(va + 0x100, 0x100, 1, 0, i);
        let third = io_allocate_mdl(va + 0x200, 0x100, 1, 0, i);
        let alone = io_allocate_mdl(va, 0x100, 0, 0, 0);
        assert!(first != 0 && second != 0 && third != 0 && alone != 0);
        let next = |m: usize| mdl_obj(m).get::<u64>(l::MDL_NEXT) as usize;
        assert_eq!(irp[l::IRP_MDL_ADDRESS / 8] as usize, first);
        assert_eq!((next(first), next(second), next(third)), (second, third, 0));
        // A new primary buffer replaces Irp->MdlAddress.
        let again = io_allocate_mdl(va, 0x10, 0, 0, i);
        assert_eq!(irp[l::IRP_MDL_ADDRESS / 8] as usize, again);
        for m in [first, second, third, alone, again] {
            io_free_mdl(m);
        }
    }

    /// Only an MDL in use (locked or mapped) over the block stops a pool free: one merely
    /// built over it, or one in use over other memory, does not (the run goes on; the
    /// report itself ends the process: client/tests/cli_run.rs).
    #[test]
    fn a_pool_free_is_stopped_only_by_an_mdl_in_use_over_it() {
        let block = super::super::blocks::allocate(super::super::blocks::Kind::Pool, 0x200);
        let other = vec![0u8; 0x200];
        let idle = io_allocate_mdl(block + 0x10, 0x100, 0, 0, 0);
        let elsewhere = io_allocate_mdl(other.as_ptr() as usize, 0x100, 0, 0, 0);
        mm_probe_and_lock_pages(elsewhere, 0, 1);
        assert_ne!(flags(elsewhere) & MDL_PAGES_LOCKED, 0);
        // Right after the block's end: no overlap.
        let after = io_allocate_mdl(block + 0x200, 0x100, 0, 0, 0);
        mm_probe_and_lock_pages(after, 0, 1);
        require_undescribed(block, 0x200, "ExFreePool");
        super::super::blocks::free(super::super::blocks::Kind::Pool, block, "ExFreePool");
        for m in [idle, elsewhere, after] {
            io_free_mdl(m);
        }
    }

    /// Past 4 GiB − PAGE_SIZE, IoAllocateMdl returns NULL (the DDI page's limit).
    #[test]
    fn allocate_mdl_refuses_lengths_past_the_documented_limit() {
        assert_eq!(io_allocate_mdl(0x10_0000, MAX_MDL_LENGTH + 1, 0, 0, 0), 0);
        assert_eq!(io_allocate_mdl(0x10_0000, u32::MAX, 0, 0, 0), 0);
        let m = io_allocate_mdl(0x10_0000, MAX_MDL_LENGTH, 0, 0, 0);
        assert_ne!(m, 0);
        assert_eq!(mdl_obj(m).get::<u32>(l::MDL_BYTE_COUNT), MAX_MDL_LENGTH);
        io_free_mdl(m);
    }

    /// A partial MDL keeps only its own allocation flags, inherits where the source's
    /// pages are and its system mapping (at the subrange's offset), and is MDL_PARTIAL;
    /// Length 0 is the rest of the source.
    #[test]
    fn a_partial_mdl_keeps_its_allocation_flags_and_inherits_the_sources() {
        let buf = vec![0u8; 0x3000];
        let va = buf.as_ptr() as usize;
        let source = io_allocate_mdl(va + 0x10, 0x2000, 0, 0, 0);
        let target = io_allocate_mdl(va, 0x2000, 0, 0, 0);
        let s = mdl_obj(source);
        s.set::<u16>(
            l::MDL_FLAGS,
            MDL_SOURCE_IS_NONPAGED_POOL
                | MDL_IO_SPACE
                | MDL_PAGES_LOCKED
                | MDL_ALLOCATED_FIXED_SIZE,
        );
        s.set::<u64>(l::MDL_MAPPED_SYSTEM_VA, 0xFFFF_A000_0000_0010);
        mdl_obj(target).set::<u16>(
            l::MDL_FLAGS,
            MDL_ALLOCATED_MUST_SUCCEED | MDL_PAGES_LOCKED | MDL_PARTIAL_HAS_BEEN_MAPPED,
        );
        io_build_partial_mdl(source, target, va + 0x110, 0x100);
        assert_eq!(
            flags(target),
            MDL_ALLOCATED_MUST_SUCCEED | MDL_SOURCE_IS_NONPAGED_POOL | MDL_IO_SPACE | MDL_PARTIAL
        );
        let t = mdl_obj(target);
        assert_eq!(t.get::<u64>(l::MDL_MAPPED_SYSTEM_VA), 0xFFFF_A000_0000_0110);
        assert_eq!(t.get::<u32>(l::MDL_BYTE_COUNT), 0x100);
        assert_eq!(
            t.get::<u32>(l::MDL_BYTE_OFFSET),
            ((va + 0x110) & 0xFFF) as u32
        );
        // Length 0: from the address to the source's end.
        io_build_partial_mdl(source, target, va + 0x1010, 0);
        assert_eq!(t.get::<u32>(l::MDL_BYTE_COUNT), 0x1000);
        for m in [source, target] {
            io_free_mdl(m);
        }
    }
}
