//! The simulated MDL side of the memory manager (issue 11): MDLs with their header fields,
//! MDL mappings into system space (system PTEs) and into a process's user space, and
//! reserved ranges — with the ground truth the audit compares iosv's table against, and a
//! [`Corruption`] for every call a real system would not survive.
//!
//! The real routines behave as their DDI pages say (see `iosv::mdl` for the quotes):
//! `MmUnlockPages` releases the MDL's system-space mapping; `IoFreeMdl` releases the
//! mapping of a partial MDL
//! (`MDL_PARTIAL_HAS_BEEN_MAPPED`) and leak any other (the PTEs stay used: a corruption);
//! `MmMapLockedPagesWithReservedMapping` returns NULL when the range cannot span the MDL;
//! `MmFreeMappingAddress` of a mapped range, an unmap with another MDL or in another
//! process, and an unmap of what is not mapped are corruptions.
//!
//! Addresses: MDL structures at [`MDL_REGION`], system-space mappings and reserved ranges
//! at [`SYSTEM_PTE_REGION`] (apart from the I/O-space range of [`SimMm`](super::mm::SimMm),
//! so the I/O-space bugs' address reuse is untouched), user-space mappings at
//! [`USER_REGION`] (unique across the simulated processes, so the table's keys never
//! collide; on Windows two processes can map the same user address — see docs).
//!
//! The simulated drivers' bugs of rules IOSV015–IOSV023 (`commit`) each allocate their
//! own MDLs and ranges, so they run beside any other thread's work.

use crate::driver_calls::{DriverRef, Routine};
use crate::image::{HOOK_TABLE, REAL_TABLE};
use crate::mm::{Corruption, PAGE_SIZE};
use crate::{lock, thread, Host, HostError};
use iosv::mdl::{
    MdlInfo, KERNEL_MODE, MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED, MDL_PARTIAL,
    MDL_PARTIAL_HAS_BEEN_MAPPED, USER_MODE,
};
use iosv::pe::HookedRoutine;
use iosv::platform::{Caller, Irql};
use iosv::rules::RuleId;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::vec::Vec;

/// Where simulated MDL structures live (one 0x100-byte slot each).
pub const MDL_REGION: u64 = 0xFFFF_C100_0000_0000;
/// Where system-space MDL mappings and reserved ranges are handed out.
pub const SYSTEM_PTE_REGION: u64 = 0xFFFF_A000_0000_0000;
/// Where user-space MDL mappings are handed out (all simulated processes).
pub const USER_REGION: u64 = 0x0000_0200_0000_0000;
/// A process id the bugs of IOSV021 map into (not the host's own).
pub const CLIENT_PROCESS: u64 = 0x1F00;
/// The process IOSV021's bad unmap runs in.
pub const OTHER_PROCESS: u64 = 0x2F00;
/// Pool tag of the simulated drivers' reserved ranges (`'Rsvd'`).
pub const RESERVED_TAG: u32 = u32::from_le_bytes(*b"Rsvd");
/// The wrong tag of the IOSV022 bug (`'Rsv2'`).
const OTHER_TAG: u32 = u32::from_le_bytes(*b"Rsv2");
/// `MmCached`.
const MM_CACHED: u32 = 1;
/// DIRQL of IOSV016's bad unmap.
const DIRQL: Irql = Irql(5);

thread_local! {
    static PROCESS: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` attached to process `pid` (as `KeStackAttachProcess` would): the host's
/// `current_process_id` returns it meanwhile.
pub fn with_process<R>(pid: u64, f: impl FnOnce() -> R) -> R {
    let old = PROCESS.with(|p| p.replace(pid));
    let r = f();
    PROCESS.with(|p| p.set(old));
    r
}

/// The process the calling thread is attached to, if [`with_process`] set one.
pub fn attached_process() -> Option<u64> {
    match PROCESS.with(Cell::get) {
        0 => None,
        p => Some(p),
    }
}

/// One MDL or reserved-range mapping the simulated Mm holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyMapping {
    /// Address returned (an MDL mapping) or the range's base (a reserved range).
    pub base: u64,
    /// The MDL's byte count, or the range's size.
    pub size: u64,
    /// The MDL mapped (a reserved range: the one mapped into it now, 0 if none).
    pub mdl: u64,
    /// A reserved range (else an MDL mapping).
    pub reserved: bool,
    /// Mapped into user space of `process`.
    pub user: bool,
    /// The process of a user-space mapping.
    pub process: u64,
    /// Made through iosv's hook.
    pub via_iosv: bool,
}

#[derive(Debug, Clone, Copy)]
struct Reserved {
    m: FamilyMapping,
    tag: u32,
    /// Allocated with `MM_MAPPING_ADDRESS_DIVISIBLE`: MDLs may be mapped at any page of it.
    divisible: bool,
}

/// An MDL mapped at a page of a divisible range past its first (a sub-range mapping).
#[derive(Debug, Clone, Copy)]
struct SubRange {
    /// `base` the page, `size` the MDL's pages, `mdl` the MDL.
    m: FamilyMapping,
    /// The range's base.
    range: u64,
}

#[derive(Default)]
struct State {
    mdls: HashMap<u64, MdlInfo>,
    live: HashMap<u64, FamilyMapping>,
    reserved: HashMap<u64, Reserved>,
    /// Sub-range mappings of divisible ranges, by page.
    subs: HashMap<u64, SubRange>,
    next_mdl: u64,
    next_va: u64,
    next_user: u64,
    /// System PTEs in use (MDL mappings and reserved ranges).
    ptes: u64,
    /// Most system PTEs ever in use at once.
    peak_ptes: u64,
}

impl State {
    /// The reserved range whose pages hold `page`.
    fn range_of(&self, page: u64) -> Option<Reserved> {
        self.reserved
            .values()
            .find(|r| {
                page >= r.m.base && page - r.m.base < pages(r.m.size).saturating_mul(PAGE_SIZE)
            })
            .copied()
    }

    /// True if a sub-range mapping holds a page of `[start, end)`.
    fn sub_held(&self, start: u64, end: u64) -> bool {
        self.subs
            .values()
            .any(|sub| sub.m.base < end && start < sub.m.base.saturating_add(sub.m.size))
    }
}

/// The simulated MDL side of Mm. See the module docs.
pub struct SimMdls {
    state: Mutex<State>,
    corruptions: Mutex<Vec<Corruption>>,
    calls: AtomicU64,
}

impl Default for SimMdls {
    fn default() -> Self {
        SimMdls::new()
    }
}

fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE)
}

impl SimMdls {
    /// Nothing allocated.
    pub fn new() -> SimMdls {
        SimMdls {
            state: Mutex::new(State {
                next_mdl: MDL_REGION,
                next_va: SYSTEM_PTE_REGION,
                next_user: USER_REGION,
                ..State::default()
            }),
            corruptions: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
        }
    }

    fn corrupt(&self, what: &'static str, address: u64, mdl: u64, via_iosv: bool) {
        lock(&self.corruptions).push(Corruption::Family {
            what,
            address,
            mdl,
            via_iosv,
        });
    }

    /// Every corruption recorded so far.
    pub fn corruptions(&self) -> Vec<Corruption> {
        lock(&self.corruptions).clone()
    }

    /// `IoAllocateMdl` + `MmProbeAndLockPages` (or a partial MDL, `partial`): a locked MDL
    /// describing `byte_count` bytes at `byte_offset` into its first page.
    pub fn allocate_mdl(&self, byte_offset: u32, byte_count: u32, partial: bool) -> u64 {
        let mut s = lock(&self.state);
        let mdl = s.next_mdl;
        s.next_mdl = s.next_mdl.wrapping_add(0x100);
        let flags = if partial {
            MDL_PAGES_LOCKED | MDL_PARTIAL
        } else {
            MDL_PAGES_LOCKED
        };
        s.mdls.insert(
            mdl,
            MdlInfo {
                byte_count,
                byte_offset: byte_offset % 0x1000,
                flags,
                mapped_system_va: 0,
                process: 0,
            },
        );
        mdl
    }

    /// Registers (or replaces) the header of an MDL the caller built at `mdl` — a real
    /// `MDL` structure elsewhere, e.g. in the memory of a driver the runner runs
    /// (`IoAllocateMdl`, `MmBuildMdlForNonPagedPool`, `MmProbeAndLockPages` there).
    pub fn register_mdl(&self, mdl: u64, info: MdlInfo) {
        lock(&self.state).mdls.insert(mdl, info);
    }

    /// The header of `mdl`, if it exists.
    pub fn info(&self, mdl: u64) -> Option<MdlInfo> {
        lock(&self.state).mdls.get(&mdl).copied()
    }

    /// `MmMapLockedPagesSpecifyCache` / `MmMapLockedPages` into system space
    /// (`access_mode` KernelMode) or the current process's user space.
    pub fn map_locked(&self, mdl: u64, access_mode: u8, process: u64, via_iosv: bool) -> u64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        let Some(info) = s.mdls.get(&mdl).copied() else {
            drop(s);
            self.corrupt("MmMapLockedPages of a freed MDL", 0, mdl, via_iosv);
            return 0;
        };
        let span = info.span_bytes().unwrap_or(0);
        let user = access_mode == USER_MODE;
        let block = if user {
            let b = s.next_user;
            s.next_user = s.next_user.wrapping_add(span.max(PAGE_SIZE));
            b
        } else {
            let b = s.next_va;
            s.next_va = s.next_va.wrapping_add(span.max(PAGE_SIZE));
            s.ptes = s.ptes.saturating_add(pages(span));
            s.peak_ptes = s.peak_ptes.max(s.ptes);
            b
        };
        let va = block | u64::from(info.byte_offset);
        if !user {
            if let Some(i) = s.mdls.get_mut(&mdl) {
                i.flags |= MDL_MAPPED_TO_SYSTEM_VA;
                if i.flags & MDL_PARTIAL != 0 {
                    i.flags |= MDL_PARTIAL_HAS_BEEN_MAPPED;
                }
                i.mapped_system_va = va;
            }
        }
        s.live.insert(
            va,
            FamilyMapping {
                base: va,
                size: u64::from(info.byte_count),
                mdl,
                reserved: false,
                user,
                process: if user { process } else { 0 },
                via_iosv,
            },
        );
        va
    }

    fn release(s: &mut State, m: &FamilyMapping) {
        s.live.remove(&m.base);
        if !m.user {
            let span = s
                .mdls
                .get(&m.mdl)
                .and_then(|i| i.span_bytes())
                .unwrap_or(m.size);
            s.ptes = s.ptes.saturating_sub(pages(span));
            if let Some(i) = s.mdls.get_mut(&m.mdl) {
                i.flags &= !(MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED);
                i.mapped_system_va = 0;
            }
        }
    }

    /// `MmUnmapLockedPages(base, mdl)` in `process`.
    pub fn unmap_locked(&self, base: u64, mdl: u64, process: u64, via_iosv: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        let Some(m) = s.live.get(&base).copied() else {
            drop(s);
            self.corrupt(
                "MmUnmapLockedPages of an address not mapped",
                base,
                mdl,
                via_iosv,
            );
            return;
        };
        Self::release(&mut s, &m);
        drop(s);
        if m.mdl != mdl {
            self.corrupt(
                "MmUnmapLockedPages with another MDL than the mapped one",
                base,
                mdl,
                via_iosv,
            );
        }
        if m.user && m.process != process {
            self.corrupt(
                "MmUnmapLockedPages of a user mapping from another process",
                base,
                mdl,
                via_iosv,
            );
        }
    }

    /// The live mappings of `mdl`.
    fn mappings_of(s: &State, mdl: u64) -> Vec<FamilyMapping> {
        s.live.values().filter(|m| m.mdl == mdl).copied().collect()
    }

    /// `MmUnlockPages(mdl)`: releases its system-space mapping; a user-space mapping
    /// left over now maps unlocked pages (a corruption).
    pub fn unlock(&self, mdl: u64, via_iosv: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        let mut bad = Vec::new();
        for m in Self::mappings_of(&s, mdl) {
            if m.user {
                bad.push(m.base);
            } else {
                Self::release(&mut s, &m);
            }
        }
        if let Some(i) = s.mdls.get_mut(&mdl) {
            i.flags &= !MDL_PAGES_LOCKED;
        }
        drop(s);
        for base in bad {
            self.corrupt(
                "MmUnlockPages under a live user-space mapping",
                base,
                mdl,
                via_iosv,
            );
        }
    }

    /// `IoFreeMdl(mdl)` (`free`; `false`: the part of it `MmPrepareMdlForReuse` does): a
    /// partial MDL's mapping is released; any other live mapping leaks (stays, a
    /// corruption).
    pub fn prepare_or_free(&self, mdl: u64, free: bool, via_iosv: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        let info = s.mdls.get(&mdl).copied();
        let mut bad = Vec::new();
        for m in Self::mappings_of(&s, mdl) {
            if !m.user && info.is_some_and(|i| i.released_by_prepare_for_reuse()) {
                Self::release(&mut s, &m);
            } else {
                bad.push(m.base);
            }
        }
        if free && s.mdls.remove(&mdl).is_none() {
            bad.push(0);
        }
        drop(s);
        let what = if free {
            "IoFreeMdl of an MDL with a live mapping (or no MDL)"
        } else {
            "MmPrepareMdlForReuse of an MDL with a live mapping"
        };
        for base in bad {
            self.corrupt(what, base, mdl, via_iosv);
        }
    }

    /// `MmAllocateMappingAddress`.
    pub fn allocate_reserved(&self, size: u64, tag: u32, via_iosv: bool) -> u64 {
        self.allocate_reserved_ex(size, tag, 0, via_iosv)
    }

    /// `MmAllocateMappingAddressEx`: `flags` bit 0 is `MM_MAPPING_ADDRESS_DIVISIBLE`.
    pub fn allocate_reserved_ex(&self, size: u64, tag: u32, flags: u32, via_iosv: bool) -> u64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if size == 0 {
            return 0;
        }
        let mut s = lock(&self.state);
        let bytes = pages(size).saturating_mul(PAGE_SIZE);
        let base = s.next_va;
        // One guard page after each range, as the kernel keeps a header PTE.
        s.next_va = s.next_va.wrapping_add(bytes).wrapping_add(PAGE_SIZE);
        s.ptes = s.ptes.saturating_add(pages(size));
        s.peak_ptes = s.peak_ptes.max(s.ptes);
        s.reserved.insert(
            base,
            Reserved {
                m: FamilyMapping {
                    base,
                    size,
                    mdl: 0,
                    reserved: true,
                    user: false,
                    process: 0,
                    via_iosv,
                },
                tag,
                divisible: flags & iosv::mdl::MM_MAPPING_ADDRESS_DIVISIBLE != 0,
            },
        );
        base
    }

    /// `MmMapLockedPagesWithReservedMapping`: NULL if the range cannot span the MDL. A
    /// page of a divisible range past its first takes a sub-range mapping; any other
    /// address inside a range maps at the range's base (as Windows does).
    pub fn map_reserved(&self, address: u64, tag: u32, mdl: u64, via_iosv: bool) -> u64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        let info = s.mdls.get(&mdl).copied();
        let page = address & !(PAGE_SIZE - 1);
        let base = match s.range_of(page) {
            Some(r) if r.m.base != page && r.divisible => {
                return self.map_sub_range(s, r, address, tag, mdl, via_iosv);
            }
            Some(r) => r.m.base,
            None => page,
        };
        let span = info.and_then(|i| i.span_bytes()).unwrap_or(u64::MAX);
        let held = s.sub_held(base, base.saturating_add(span));
        let Some(r) = s.reserved.get(&base).copied() else {
            drop(s);
            self.corrupt(
                "MmMapLockedPagesWithReservedMapping of no reserved range",
                address,
                mdl,
                via_iosv,
            );
            return 0;
        };
        let span = info.and_then(|i| i.span_bytes()).unwrap_or(u64::MAX);
        if span > pages(r.m.size).saturating_mul(PAGE_SIZE) {
            return 0;
        }
        if r.m.mdl != 0 || r.tag != tag || held {
            drop(s);
            self.corrupt(
                "MmMapLockedPagesWithReservedMapping into a mapped range (or with another tag)",
                base,
                mdl,
                via_iosv,
            );
            return 0;
        }
        if let Some(e) = s.reserved.get_mut(&base) {
            e.m.mdl = mdl;
        }
        base | u64::from(info.map_or(0, |i| i.byte_offset))
    }

    /// [`map_reserved`](Self::map_reserved) at `address`, a page of the divisible range
    /// `r` past its first: NULL for an address inside a page or an MDL that runs past the
    /// range's end; a corruption for another tag or a page held already.
    fn map_sub_range(
        &self,
        mut s: std::sync::MutexGuard<'_, State>,
        r: Reserved,
        address: u64,
        tag: u32,
        mdl: u64,
        via_iosv: bool,
    ) -> u64 {
        let info = s.mdls.get(&mdl).copied();
        let span = info.and_then(|i| i.span_bytes()).unwrap_or(u64::MAX);
        let end =
            r.m.base
                .saturating_add(pages(r.m.size).saturating_mul(PAGE_SIZE));
        if !address.is_multiple_of(PAGE_SIZE) || address.saturating_add(span) > end {
            return 0;
        }
        let at_base = s
            .mdls
            .get(&r.m.mdl)
            .and_then(|i| i.span_bytes())
            .unwrap_or(PAGE_SIZE);
        let held = (r.m.mdl != 0 && r.m.base.saturating_add(at_base) > address)
            || s.sub_held(address, address.saturating_add(span));
        if held || r.tag != tag {
            drop(s);
            self.corrupt(
                "MmMapLockedPagesWithReservedMapping into a mapped sub-range (or with another tag)",
                address,
                mdl,
                via_iosv,
            );
            return 0;
        }
        s.subs.insert(
            address,
            SubRange {
                m: FamilyMapping {
                    base: address,
                    size: span,
                    mdl,
                    reserved: true,
                    user: false,
                    process: 0,
                    via_iosv,
                },
                range: r.m.base,
            },
        );
        address | u64::from(info.map_or(0, |i| i.byte_offset))
    }

    /// `MmUnmapReservedMapping`: of a sub-range mapping at its page; at any other address
    /// inside a range, of the range's own mapping.
    pub fn unmap_reserved(&self, base: u64, tag: u32, mdl: u64, via_iosv: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        let page = base & !(PAGE_SIZE - 1);
        if let Some(sub) = s.subs.get(&page).copied() {
            let tag_ok = s.reserved.get(&sub.range).is_some_and(|r| r.tag == tag);
            s.subs.remove(&page);
            drop(s);
            if sub.m.mdl != mdl || !tag_ok {
                self.corrupt(
                    "MmUnmapReservedMapping of a sub-range with another MDL (or tag)",
                    base,
                    mdl,
                    via_iosv,
                );
            }
            return;
        }
        let block = match s.range_of(page) {
            Some(r) if r.divisible && r.m.base != page => {
                drop(s);
                self.corrupt(
                    "MmUnmapReservedMapping of an unmapped sub-range",
                    base,
                    mdl,
                    via_iosv,
                );
                return;
            }
            Some(r) => r.m.base,
            None => page,
        };
        let what = match s.reserved.get_mut(&block) {
            None => Some("MmUnmapReservedMapping of no reserved range"),
            Some(r) if r.m.mdl == 0 => Some("MmUnmapReservedMapping of an unmapped range"),
            Some(r) => {
                let ok = r.m.mdl == mdl && r.tag == tag;
                r.m.mdl = 0;
                (!ok).then_some("MmUnmapReservedMapping with another MDL (or tag)")
            }
        };
        drop(s);
        if let Some(what) = what {
            self.corrupt(what, base, mdl, via_iosv);
        }
    }

    /// `MmFreeMappingAddress`.
    pub fn free_reserved(&self, base: u64, tag: u32, via_iosv: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        let what = match s.reserved.remove(&base) {
            None => Some("MmFreeMappingAddress of no reserved range"),
            Some(r) => {
                s.ptes = s.ptes.saturating_sub(pages(r.m.size));
                let subs = s.subs.len();
                s.subs.retain(|_, sub| sub.range != base);
                if r.m.mdl != 0 || s.subs.len() != subs {
                    Some("MmFreeMappingAddress of a mapped range")
                } else if r.tag != tag {
                    Some("MmFreeMappingAddress with another tag")
                } else {
                    None
                }
            }
        };
        drop(s);
        if let Some(what) = what {
            self.corrupt(what, base, 0, via_iosv);
        }
    }

    /// Every live MDL mapping and reserved range.
    pub fn mappings(&self) -> Vec<FamilyMapping> {
        let s = lock(&self.state);
        let mut v: Vec<FamilyMapping> = s.live.values().copied().collect();
        v.extend(s.reserved.values().map(|r| r.m));
        v.extend(s.subs.values().map(|sub| sub.m));
        v.sort_by_key(|m| m.base);
        v
    }

    /// True if an MDL mapping at `base` is live.
    pub fn is_mapped(&self, base: u64) -> bool {
        lock(&self.state).live.contains_key(&base)
    }

    /// True if an MDL mapping or a reserved range at `base` is live.
    pub fn holds(&self, base: u64) -> bool {
        let s = lock(&self.state);
        s.live.contains_key(&base) || s.reserved.contains_key(&base) || s.subs.contains_key(&base)
    }

    /// System PTEs in use now and at most so far (MDL mappings and reserved ranges).
    pub fn system_ptes(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.ptes, s.peak_ptes)
    }
}

// ---- calls from the simulated drivers through their import slots ------------------------

/// How a family call reached its routine.
enum Reached {
    Hook,
    Real,
}

fn reach(d: &DriverRef, routine: HookedRoutine) -> Result<Reached, HostError> {
    let target = d.image().slot_value(routine);
    if target == HOOK_TABLE.get(routine) as u64 && target != 0 {
        Ok(Reached::Hook)
    } else if target == REAL_TABLE.get(routine) as u64 {
        Ok(Reached::Real)
    } else {
        Err(HostError::BadCallTarget(target))
    }
}

/// Calls `routine` from driver `d`'s `from` routine through its import slot: the hook
/// runs `hooked` (the verifier), the real routine `real` (the simulated Mm directly).
/// Returns the result and whether iosv's hook ran.
fn call<R>(
    d: &DriverRef,
    from: Routine,
    routine: HookedRoutine,
    hooked: impl FnOnce(Caller) -> R,
    real: impl FnOnce() -> R,
) -> Result<(R, bool), HostError> {
    let _in = d
        .image()
        .enter()
        .ok_or_else(|| HostError::NotLoaded(String::from(d.name())))?;
    let ret = from
        .entry(d.image().base())
        .wrapping_add(0x80)
        .wrapping_add((routine.index() as u64).wrapping_mul(0x10));
    let (frames, n) = d.frames(from, ret);
    let how = reach(d, routine)?;
    thread::with_call_chain(frames.get(..n).unwrap_or(&[]), || match how {
        Reached::Hook => Ok((hooked(Caller::at(ret)), true)),
        Reached::Real => Ok((real(), false)),
    })
}

fn process(d: &DriverRef) -> u64 {
    attached_process().unwrap_or_else(|| d.sys.process_id())
}

impl DriverRef {
    /// `MmMapLockedPagesSpecifyCache(mdl, mode, MmCached, NULL, FALSE, Normal)` from
    /// `from`. Returns the address and whether iosv's hook ran.
    pub fn map_locked_pages(
        &self,
        from: Routine,
        mdl: u64,
        mode: u8,
    ) -> Result<(u64, bool), HostError> {
        call(
            self,
            from,
            HookedRoutine::MapLockedPagesSpecifyCache,
            |c| {
                self.verifier
                    .map_locked_pages_specify_cache(c, mdl, mode, MM_CACHED, 0, 0, 16)
            },
            || self.sys.mdls.map_locked(mdl, mode, process(self), false),
        )
    }

    /// `MmUnmapLockedPages(base, mdl)` from `from`.
    pub fn unmap_locked_pages(
        &self,
        from: Routine,
        base: u64,
        mdl: u64,
    ) -> Result<bool, HostError> {
        call(
            self,
            from,
            HookedRoutine::UnmapLockedPages,
            |c| self.verifier.unmap_locked_pages(c, base, mdl),
            || self.sys.mdls.unmap_locked(base, mdl, process(self), false),
        )
        .map(|(_, hooked)| hooked)
    }

    /// `IoFreeMdl(mdl)` from `from`.
    pub fn free_mdl(&self, from: Routine, mdl: u64) -> Result<bool, HostError> {
        call(
            self,
            from,
            HookedRoutine::FreeMdl,
            |c| self.verifier.io_free_mdl(c, mdl),
            || self.sys.mdls.prepare_or_free(mdl, true, false),
        )
        .map(|(_, hooked)| hooked)
    }

    /// `MmUnlockPages(mdl)` from `from`.
    pub fn unlock_pages(&self, from: Routine, mdl: u64) -> Result<bool, HostError> {
        call(
            self,
            from,
            HookedRoutine::UnlockPages,
            |c| self.verifier.unlock_pages(c, mdl),
            || self.sys.mdls.unlock(mdl, false),
        )
        .map(|(_, hooked)| hooked)
    }

    /// `MmAllocateMappingAddress(size, RESERVED_TAG)` from `from`.
    pub fn allocate_mapping_address(
        &self,
        from: Routine,
        size: u64,
    ) -> Result<(u64, bool), HostError> {
        self.allocate_range(from, size, None)
    }

    /// `MmAllocateMappingAddressEx(size, RESERVED_TAG, flags)` from `from`.
    pub fn allocate_mapping_address_ex(
        &self,
        from: Routine,
        size: u64,
        flags: u32,
    ) -> Result<(u64, bool), HostError> {
        self.allocate_range(from, size, Some(flags))
    }

    /// `MmAllocateMappingAddress` (`flags` `None`) or `MmAllocateMappingAddressEx`.
    fn allocate_range(
        &self,
        from: Routine,
        size: u64,
        flags: Option<u32>,
    ) -> Result<(u64, bool), HostError> {
        let bytes = usize::try_from(size).unwrap_or(usize::MAX);
        let routine = match flags {
            None => HookedRoutine::AllocateMappingAddress,
            Some(_) => HookedRoutine::AllocateMappingAddressEx,
        };
        call(
            self,
            from,
            routine,
            |c| match flags {
                None => self
                    .verifier
                    .allocate_mapping_address(c, bytes, RESERVED_TAG),
                Some(f) => self
                    .verifier
                    .allocate_mapping_address_ex(c, bytes, RESERVED_TAG, f),
            },
            || {
                self.sys
                    .mdls
                    .allocate_reserved_ex(size, RESERVED_TAG, flags.unwrap_or(0), false)
            },
        )
    }

    /// `MmMapLockedPagesWithReservedMapping(range, RESERVED_TAG, mdl, MmCached)`.
    pub fn map_reserved(
        &self,
        from: Routine,
        range: u64,
        mdl: u64,
    ) -> Result<(u64, bool), HostError> {
        call(
            self,
            from,
            HookedRoutine::MapLockedPagesWithReservedMapping,
            |c| {
                self.verifier
                    .map_reserved(c, range, RESERVED_TAG, mdl, MM_CACHED)
            },
            || self.sys.mdls.map_reserved(range, RESERVED_TAG, mdl, false),
        )
    }

    /// `MmUnmapReservedMapping(range, RESERVED_TAG, mdl)`.
    pub fn unmap_reserved(&self, from: Routine, range: u64, mdl: u64) -> Result<bool, HostError> {
        self.unmap_reserved_tagged(from, range, RESERVED_TAG, mdl)
    }

    /// `MmUnmapReservedMapping(range, tag, mdl)`: [`unmap_reserved`](Self::unmap_reserved)
    /// with a tag of the caller's choosing.
    pub fn unmap_reserved_tagged(
        &self,
        from: Routine,
        range: u64,
        tag: u32,
        mdl: u64,
    ) -> Result<bool, HostError> {
        call(
            self,
            from,
            HookedRoutine::UnmapReservedMapping,
            |c| self.verifier.unmap_reserved(c, range, tag, mdl),
            || self.sys.mdls.unmap_reserved(range, tag, mdl, false),
        )
        .map(|(_, hooked)| hooked)
    }

    /// `MmFreeMappingAddress(range, RESERVED_TAG)`.
    pub fn free_mapping_address(&self, from: Routine, range: u64) -> Result<bool, HostError> {
        call(
            self,
            from,
            HookedRoutine::FreeMappingAddress,
            |c| self.verifier.free_mapping_address(c, range, RESERVED_TAG),
            || self.sys.mdls.free_reserved(range, RESERVED_TAG, false),
        )
        .map(|(_, hooked)| hooked)
    }

    /// True if iosv hooks every routine of the MDL family in this driver's image.
    pub fn family_hooked(&self) -> bool {
        HookedRoutine::ALL
            .into_iter()
            .filter(|r| r.is_mdl_family())
            .all(|r| matches!(reach(self, r), Ok(Reached::Hook)))
    }
}

/// A clean MDL cycle of driver `d` (what a well-behaved driver does with an IRP's buffer):
/// lock, map into system space, unmap, unlock, free; then a reserved range mapped and
/// unmapped twice and freed, and a divisible one holding a double buffer. Nothing to
/// report.
pub fn clean_cycle(host: &Host, d: &DriverRef) -> Result<(), HostError> {
    let mdls = &host.sys.mdls;
    thread::with_irql(Irql::PASSIVE, || {
        let a = mdls.allocate_mdl(0x10, 0x2000, false);
        let (va, _) = d.map_locked_pages(Routine::Dispatch, a, KERNEL_MODE)?;
        if va == 0 {
            return Err(HostError::MapFailed("MDL mapping"));
        }
        thread::with_irql(Irql::DISPATCH, || d.unmap_locked_pages(Routine::Dpc, va, a))?;
        // MmGetSystemAddressForMdlSafe's mapping, released by MmUnlockPages itself.
        let (va2, _) = d.map_locked_pages(Routine::Dispatch, a, KERNEL_MODE)?;
        let _ = va2;
        d.unlock_pages(Routine::Dispatch, a)?;
        d.free_mdl(Routine::Dispatch, a)?;
        let (range, _) = d.allocate_mapping_address(Routine::Dispatch, 0x4000)?;
        if range == 0 {
            return Err(HostError::MapFailed("reserved range"));
        }
        for _ in 0..2 {
            let b = mdls.allocate_mdl(0x200, 0x3000, false);
            let (v, _) = d.map_reserved(Routine::Dispatch, range, b)?;
            if v != 0 {
                d.unmap_reserved(Routine::Dispatch, range, b)?;
            }
            d.unlock_pages(Routine::Dispatch, b)?;
            d.free_mdl(Routine::Dispatch, b)?;
        }
        d.free_mapping_address(Routine::Dispatch, range)?;
        // A double buffer in a divisible range, as Microsoft's MIDI drivers build it:
        // one MDL at the range's base, one at its middle, each unmapped at its address.
        let (range, _) = d.allocate_mapping_address_ex(
            Routine::Dispatch,
            0x4000,
            iosv::mdl::MM_MAPPING_ADDRESS_DIVISIBLE,
        )?;
        if range == 0 {
            return Err(HostError::MapFailed("divisible reserved range"));
        }
        let halves = [range, range + 0x2000].map(|at| (at, mdls.allocate_mdl(0, 0x2000, false)));
        for (at, m) in halves {
            let (v, _) = d.map_reserved(Routine::Dispatch, at, m)?;
            if v == 0 {
                return Err(HostError::MapFailed("reserved sub-range"));
            }
        }
        for (at, m) in halves {
            d.unmap_reserved(Routine::Dispatch, at, m)?;
            d.unlock_pages(Routine::Dispatch, m)?;
            d.free_mdl(Routine::Dispatch, m)?;
        }
        d.free_mapping_address(Routine::Dispatch, range)?;
        Ok(())
    })
}

/// Commits one bug of rule `rule` (IOSV015–IOSV023) as driver `d`: exactly one violation
/// of that rule when iosv hooks the family in `d`, and everything it allocated released
/// again (by iosv's containment, or by the driver). Returns whether the bug reached iosv
/// (then it was counted as injected). A driver iosv does not hook commits nothing (the
/// simulated Mm would record the corruption a real system would not survive).
pub(crate) fn commit(host: &Host, rule: RuleId, d: &DriverRef) -> Result<bool, HostError> {
    if !d.family_hooked() {
        return Ok(false);
    }
    let mdls = &host.sys.mdls;
    let contain = host.verifier().settings().containment();
    let passive = |f: &dyn Fn() -> Result<(), HostError>| thread::with_irql(Irql::PASSIVE, f);
    match rule {
        RuleId::MdlUnmapWrongMdl => passive(&|| {
            let a = mdls.allocate_mdl(0x80, 0x1000, false);
            let b = mdls.allocate_mdl(0, 0x3000, false);
            let (va, _) = d.map_locked_pages(Routine::Dispatch, a, KERNEL_MODE)?;
            d.unmap_locked_pages(Routine::Dispatch, va, b)?;
            d.unlock_pages(Routine::Dispatch, a)?;
            d.unlock_pages(Routine::Dispatch, b)?;
            d.free_mdl(Routine::Dispatch, a)?;
            d.free_mdl(Routine::Dispatch, b)?;
            Ok(())
        })?,
        RuleId::MdlUnmapIrql => passive(&|| {
            let a = mdls.allocate_mdl(0, 0x2000, false);
            let (va, _) = d.map_locked_pages(Routine::Dispatch, a, KERNEL_MODE)?;
            thread::with_irql(DIRQL, || d.unmap_locked_pages(Routine::Isr, va, a))?;
            d.unlock_pages(Routine::Dispatch, a)?;
            d.free_mdl(Routine::Dispatch, a)?;
            Ok(())
        })?,
        RuleId::MdlReleasedWhileMapped => passive(&|| {
            // A driver-built MDL (no MmUnlockPages owns its mapping) mapped, then freed.
            let a = mdls.allocate_mdl(0x40, 0x1800, false);
            d.map_locked_pages(Routine::Dispatch, a, KERNEL_MODE)?;
            d.free_mdl(Routine::Dispatch, a)?;
            Ok(())
        })?,
        RuleId::ReservedFreedWhileMapped => passive(&|| {
            let a = mdls.allocate_mdl(0, 0x2000, false);
            let (range, _) = d.allocate_mapping_address(Routine::Dispatch, 0x4000)?;
            d.map_reserved(Routine::Dispatch, range, a)?;
            d.free_mapping_address(Routine::Dispatch, range)?;
            d.unlock_pages(Routine::Dispatch, a)?;
            d.free_mdl(Routine::Dispatch, a)?;
            Ok(())
        })?,
        RuleId::ReservedMappedTwice => passive(&|| {
            let a = mdls.allocate_mdl(0, 0x1000, false);
            let b = mdls.allocate_mdl(0, 0x1000, false);
            let (range, _) = d.allocate_mapping_address(Routine::Dispatch, 0x4000)?;
            d.map_reserved(Routine::Dispatch, range, a)?;
            let (second, _) = d.map_reserved(Routine::Dispatch, range, b)?;
            if second == 0 || !contain {
                // Refused (or NULL from Mm): the first MDL is still mapped.
                d.unmap_reserved(Routine::Dispatch, range, a)?;
            }
            d.free_mapping_address(Routine::Dispatch, range)?;
            for m in [a, b] {
                d.unlock_pages(Routine::Dispatch, m)?;
                d.free_mdl(Routine::Dispatch, m)?;
            }
            Ok(())
        })?,
        RuleId::ReservedSize => passive(&|| {
            // 0x2000 reserved; the buffer starts 0x800 into its page: three pages.
            let a = mdls.allocate_mdl(0x800, 0x2000, false);
            let (range, _) = d.allocate_mapping_address(Routine::Dispatch, 0x2000)?;
            let (va, _) = d.map_reserved(Routine::Dispatch, range, a)?;
            if va != 0 {
                d.unmap_reserved(Routine::Dispatch, range, a)?;
            }
            d.free_mapping_address(Routine::Dispatch, range)?;
            d.unlock_pages(Routine::Dispatch, a)?;
            d.free_mdl(Routine::Dispatch, a)?;
            Ok(())
        })?,
        RuleId::ReservedTagMismatch => passive(&|| {
            // The range is reserved with one tag and unmapped with another (a second
            // constant for the same range); freed with the right one.
            let a = mdls.allocate_mdl(0, 0x1000, false);
            let (range, _) = d.allocate_mapping_address(Routine::Dispatch, 0x2000)?;
            let (va, _) = d.map_reserved(Routine::Dispatch, range, a)?;
            if va != 0 {
                d.unmap_reserved_tagged(Routine::Dispatch, range, OTHER_TAG, a)?;
            }
            d.free_mapping_address(Routine::Dispatch, range)?;
            d.unlock_pages(Routine::Dispatch, a)?;
            d.free_mdl(Routine::Dispatch, a)?;
            Ok(())
        })?,
        RuleId::ReservedMapNotReserved => passive(&|| {
            // One pointer field serves two buffers: the address of an MDL mapping is
            // passed where the reserved range's belongs.
            let a = mdls.allocate_mdl(0, 0x1000, false);
            let b = mdls.allocate_mdl(0, 0x1000, false);
            let (va, _) = d.map_locked_pages(Routine::Dispatch, a, KERNEL_MODE)?;
            d.map_reserved(Routine::Dispatch, va, b)?;
            d.unmap_locked_pages(Routine::Dispatch, va, a)?;
            for m in [a, b] {
                d.unlock_pages(Routine::Dispatch, m)?;
                d.free_mdl(Routine::Dispatch, m)?;
            }
            Ok(())
        })?,
        RuleId::UnmapOtherProcess => passive(&|| {
            // Mapped into a client process in its IOCTL; "cleaned up" from a system
            // worker thread of another process, then (the mapping is still there) again
            // at the client's IRP_MJ_CLEANUP, in its own process.
            let a = mdls.allocate_mdl(0, 0x1000, false);
            let (uva, _) = with_process(CLIENT_PROCESS, || {
                d.map_locked_pages(Routine::Dispatch, a, USER_MODE)
            })?;
            with_process(OTHER_PROCESS, || {
                d.unmap_locked_pages(Routine::WorkItem, uva, a)
            })?;
            if mdls.is_mapped(uva) {
                with_process(CLIENT_PROCESS, || {
                    d.unmap_locked_pages(Routine::Dispatch, uva, a)
                })?;
            }
            d.unlock_pages(Routine::Dispatch, a)?;
            d.free_mdl(Routine::Dispatch, a)?;
            Ok(())
        })?,
        _ => return Ok(false),
    }
    host.sys.inject(rule, d.name());
    Ok(true)
}

/// IOSV003 of the family: maps a user buffer's MDL into the client process from a DPC
/// (DISPATCH_LEVEL; the ceiling of a user-space mapping is APC_LEVEL), then unmaps it at
/// PASSIVE_LEVEL in that process. Returns whether the map reached iosv; `None` if `d`'s
/// family slots are not hooked (the caller commits the I/O-space form instead).
pub(crate) fn commit_map_irql(d: &DriverRef, host: &Host) -> Result<Option<bool>, HostError> {
    if !d.family_hooked() {
        return Ok(None);
    }
    let mdls = &host.sys.mdls;
    let a = mdls.allocate_mdl(0, 0x1000, false);
    let (uva, reached) = with_process(CLIENT_PROCESS, || {
        thread::with_irql(Irql::DISPATCH, || {
            d.map_locked_pages(Routine::Dpc, a, USER_MODE)
        })
    })?;
    thread::with_irql(Irql::PASSIVE, || -> Result<(), HostError> {
        if uva != 0 {
            with_process(CLIENT_PROCESS, || {
                d.unmap_locked_pages(Routine::Dispatch, uva, a)
            })?;
        }
        d.unlock_pages(Routine::Dispatch, a)?;
        d.free_mdl(Routine::Dispatch, a)?;
        Ok(())
    })?;
    Ok(Some(reached))
}

/// True for the rules `commit` commits.
pub fn is_family_rule(rule: RuleId) -> bool {
    rule.number() >= RuleId::MdlUnmapWrongMdl.number()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_ptes_and_implicit_releases_follow_the_documentation() {
        let m = SimMdls::new();
        let a = m.allocate_mdl(0x800, 0x1000, false); // two pages
        let va = m.map_locked(a, KERNEL_MODE, 4, true);
        assert_eq!(va & 0xFFF, 0x800, "the byte offset is kept");
        assert_eq!(m.system_ptes(), (2, 2));
        assert_ne!(m.info(a).unwrap().flags & MDL_MAPPED_TO_SYSTEM_VA, 0);
        // MmUnlockPages releases a system-space mapping by itself.
        m.unlock(a, true);
        assert_eq!(m.system_ptes().0, 0);
        assert!(!m.is_mapped(va));
        m.prepare_or_free(a, true, true);
        assert!(m.corruptions().is_empty());
    }

    #[test]
    fn a_freed_mdl_leaks_its_mapping_unless_it_is_a_mapped_partial_mdl() {
        let m = SimMdls::new();
        let partial = m.allocate_mdl(0, 0x1000, true);
        m.map_locked(partial, KERNEL_MODE, 4, true);
        m.prepare_or_free(partial, true, true);
        assert_eq!(m.system_ptes().0, 0, "released by MmPrepareMdlForReuse");
        let full = m.allocate_mdl(0, 0x3000, false);
        let va = m.map_locked(full, KERNEL_MODE, 4, true);
        m.prepare_or_free(full, true, true);
        assert_eq!(m.system_ptes().0, 3, "leaked");
        assert!(m.is_mapped(va));
        assert_eq!(m.corruptions().len(), 1);
    }

    #[test]
    fn user_mappings_belong_to_their_process() {
        let m = SimMdls::new();
        let a = m.allocate_mdl(0, 0x1000, false);
        let uva = m.map_locked(a, USER_MODE, CLIENT_PROCESS, true);
        assert!(uva < 0x8000_0000_0000, "a user-space address");
        assert_eq!(m.system_ptes().0, 0, "no system PTE");
        m.unlock(a, true);
        assert_eq!(m.corruptions().len(), 1, "unlocked under a user mapping");
        m.unmap_locked(uva, a, OTHER_PROCESS, true);
        assert_eq!(m.corruptions().len(), 2, "unmapped from another process");
    }

    #[test]
    fn divisible_ranges_take_sub_ranges_and_others_map_at_their_base() {
        let m = SimMdls::new();
        let r = m.allocate_reserved_ex(0x4000, RESERVED_TAG, 1, true);
        let a = m.allocate_mdl(0, 0x2000, false);
        let b = m.allocate_mdl(0, 0x2000, false);
        assert_eq!(m.map_reserved(r, RESERVED_TAG, a, true), r);
        assert_eq!(
            m.map_reserved(r + 0x2000, RESERVED_TAG, b, true),
            r + 0x2000
        );
        let listed: Vec<(u64, u64)> = m.mappings().iter().map(|x| (x.base, x.size)).collect();
        assert_eq!(listed, [(r, 0x4000), (r + 0x2000, 0x2000)]);
        // A page held already, and two pages past the end.
        assert_eq!(m.map_reserved(r + 0x1000, RESERVED_TAG, b, true), 0);
        assert_eq!(m.corruptions().len(), 1);
        assert_eq!(m.map_reserved(r + 0x3000, RESERVED_TAG, b, true), 0);
        assert_eq!(
            m.corruptions().len(),
            1,
            "does not fit: NULL, no corruption"
        );
        m.unmap_reserved(r + 0x2000, RESERVED_TAG, b, true);
        m.unmap_reserved(r, RESERVED_TAG, a, true);
        m.free_reserved(r, RESERVED_TAG, true);
        assert_eq!(m.corruptions().len(), 1);
        assert!(m.mappings().is_empty());
        // Without the flag, an address inside the range maps (and unmaps) at its base.
        let r = m.allocate_reserved(0x4000, RESERVED_TAG, true);
        assert_eq!(m.map_reserved(r + 0x2000, RESERVED_TAG, a, true), r);
        m.unmap_reserved(r + 0x2000, RESERVED_TAG, a, true);
        m.free_reserved(r, RESERVED_TAG, true);
        assert_eq!(m.corruptions().len(), 1);
        // A range freed with a sub-range mapped: a corruption, and nothing stays listed.
        let r = m.allocate_reserved_ex(0x4000, RESERVED_TAG, 1, true);
        m.map_reserved(r + 0x1000, RESERVED_TAG, b, true);
        m.free_reserved(r, RESERVED_TAG, true);
        assert_eq!(m.corruptions().len(), 2);
        assert!(m.mappings().is_empty());
    }

    #[test]
    fn reserved_ranges_refuse_what_does_not_fit_and_record_misuse() {
        let m = SimMdls::new();
        let r = m.allocate_reserved(0x2000, RESERVED_TAG, true);
        let big = m.allocate_mdl(0x800, 0x2000, false);
        assert_eq!(
            m.map_reserved(r, RESERVED_TAG, big, true),
            0,
            "three pages into two"
        );
        let fits = m.allocate_mdl(0x10, 0x1000, false);
        assert_eq!(m.map_reserved(r, RESERVED_TAG, fits, true), r + 0x10);
        assert!(m.corruptions().is_empty());
        m.free_reserved(r, RESERVED_TAG, true);
        assert_eq!(m.corruptions().len(), 1, "freed while mapped");
        assert!(m.mappings().is_empty());
        assert_eq!(m.system_ptes().0, 0);
    }
}
