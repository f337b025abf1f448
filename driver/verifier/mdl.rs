//! The engine's hooks for the MDL and reserved-mapping family (issue 11; the data model
//! and what the documentation says are in [`crate::mdl`]).
//!
//! Same order as the I/O-space hooks (design.md §5): a map calls the real routine and
//! *then* inserts; an unmap validates and removes *before* the real routine runs (or is
//! contained). A reserved range is one entry for its whole life; mapping an MDL into it
//! or unmapping one takes the entry out, updates it and puts it back (bounded, never
//! waits — a call racing that instant on the same range finds no entry and is judged as
//! such, which only a driver using one range from two threads at once can see).
//! `IoFreeMdl` / `MmUnlockPages` first ask the [`MdlIndex`]
//! (one load) whether the MDL may have a tracked mapping, and walk the table only if so.
//!
//! [`MdlIndex`]: crate::mdl::MdlIndex

use super::{CallCtx, Verifier, OWN_FRAMES};
use crate::drivers::DriverId;
use crate::mdl::{
    released_with_its_mdl, MappingKind, MdlRelease, FLAG_KIND_MDL, FLAG_KIND_RESERVED,
    FLAG_MDL_DIRECT_IO, FLAG_RESERVED_DIVISIBLE, FLAG_RESERVED_MAPPED, FLAG_USER,
    MM_MAPPING_ADDRESS_DIVISIBLE, USER_MODE,
};
use crate::pe::HookedRoutine;
use crate::phys::{page_align, page_round, PAGE_SIZE as PAGE};
use crate::platform::{Caller, Irql, Platform};
use crate::protocol::{ViolationRecord, VF_MAPPING_KNOWN, VF_SUB_RANGE};
use crate::rules::RuleId;
use crate::stats::{Counter, DriverCounter};
use crate::table::{
    InsertOutcome, Mapping, MappingHead, Removal, RemoveOutcome, FLAG_DETACHED, FLAG_LEAK_REPORTED,
    MAX_STACK_DEPTH,
};

/// What a routine of reserved ranges found at its base ([`Verifier::take_reserved`]);
/// an entry found is out of the table until the caller puts it back or releases it.
enum ReservedAt {
    /// A reserved range.
    Range(Mapping),
    /// An entry of another kind (an I/O-space or MDL mapping).
    OtherKind(Mapping),
    /// No entry, at a page inside a divisible range past its first: the range (left in
    /// the table). Only [`Verifier::take_reserved_at`] says this.
    InsideDivisible(Mapping),
    /// No entry.
    Nothing,
}

/// Mappings of one MDL `mdl_released` takes from one walk of the table at a time.
const MDL_RELEASE_BATCH: usize = 2;

/// `MmCached`: the cache type `MmMapLockedPages` maps with.
const MM_CACHED: u32 = 1;

/// The MDL an entry keeps mapped: an MDL mapping's, or the one mapped into a reserved
/// range or sub-range (`None` for an I/O-space mapping or an unmapped range).
fn mapped_mdl(m: &MappingHead) -> Option<u64> {
    match MappingKind::of(m.flags) {
        MappingKind::Mdl => Some(m.physical),
        MappingKind::Reserved if m.flags & FLAG_RESERVED_MAPPED != 0 => Some(m.physical),
        _ => None,
    }
}

impl<P: Platform> Verifier<P> {
    // ---- MDL mappings -------------------------------------------------------------------

    /// The `MmMapLockedPagesSpecifyCache` hook (also what `MmGetSystemAddressForMdlSafe`
    /// expands to): calls the real routine, then tracks the mapping.
    #[allow(clippy::too_many_arguments)]
    pub fn map_locked_pages_specify_cache(
        &self,
        caller: Caller,
        mdl: u64,
        access_mode: u8,
        cache_type: u32,
        requested_address: u64,
        bugcheck_on_failure: u32,
        priority: u32,
    ) -> u64 {
        let cx = self.ctx(caller, HookedRoutine::MapLockedPagesSpecifyCache);
        let base = self.platform.mm_map_locked_pages_specify_cache(
            mdl,
            access_mode,
            cache_type,
            requested_address,
            bugcheck_on_failure,
            priority,
        );
        self.track_mdl_mapping(&cx, base, mdl, access_mode, cache_type)
    }

    /// The `MmMapLockedPages` hook (the legacy form: cached, bug check on failure in
    /// kernel mode).
    pub fn map_locked_pages(&self, caller: Caller, mdl: u64, access_mode: u8) -> u64 {
        let cx = self.ctx(caller, HookedRoutine::MapLockedPages);
        let base = self.platform.mm_map_locked_pages(mdl, access_mode);
        self.track_mdl_mapping(&cx, base, mdl, access_mode, MM_CACHED)
    }

    /// For a platform whose hook must make the real `MmMapLockedPagesSpecifyCache` /
    /// `MmMapLockedPages` call itself (the Windows glue: a user-mode failure raises an
    /// exception that must not unwind through the engine): tracks the mapping the real
    /// routine returned at `base` (0: it failed). Returns `base`.
    pub fn track_locked_pages(
        &self,
        caller: Caller,
        routine: HookedRoutine,
        base: u64,
        mdl: u64,
        access_mode: u8,
        cache_type: u32,
    ) -> u64 {
        let cx = self.ctx(caller, routine);
        self.track_mdl_mapping(&cx, base, mdl, access_mode, cache_type)
    }

    fn track_mdl_mapping(&self, cx: &CallCtx, base: u64, mdl: u64, mode: u8, cache: u32) -> u64 {
        let user = mode == USER_MODE;
        // The map routines' ceiling (their DDI pages): APC_LEVEL for a user-space mapping,
        // DISPATCH_LEVEL for a system-space one. Judged whether or not the map succeeded.
        let ceiling = if user { Irql::APC } else { Irql::DISPATCH };
        self.check_family_map_irql(cx, ceiling, MappingKind::Mdl, base, mdl, 0, cache);
        if base == 0 {
            self.stats.bump(cx.processor, Counter::MapFailures);
            return 0;
        }
        self.stats
            .bump_driver(cx.processor, cx.driver, DriverCounter::Maps);
        let info = self.platform.mdl_info(mdl);
        let size = info.map_or(0, |i| u64::from(i.byte_count));
        let mut m = self.family_head(cx, base, size);
        m.physical = mdl;
        m.cache = cache;
        if user {
            m.flags = FLAG_KIND_MDL | FLAG_USER;
            m.device = self.platform.current_process_id();
            if self.another_process_maps(base, m.device) {
                // User address spaces are per process: Mm gave this process an address
                // another process has a live mapping at. The table holds one entry per
                // address, so that one stays tracked and this one is remembered as
                // untracked (its unmap passes, `unmap_mdl_entry`). Inserting it would have
                // replaced and forgotten the other as a stale entry (a false IOSV013, and
                // then a false IOSV004 at its unmap).
                self.untracked.add(base);
                return base;
            }
        } else if info.is_some_and(|i| i.process != 0 && i.records(base)) {
            // A direct-I/O MDL's own system mapping: released with the MDL, by the I/O
            // manager at the request's completion (crate::mdl).
            m.flags = FLAG_KIND_MDL | FLAG_MDL_DIRECT_IO;
        } else {
            m.flags = FLAG_KIND_MDL;
        }
        self.insert_family(cx, m);
        base
    }

    /// Whether the table holds a live user-space mapping at `base` made in another process
    /// than `process`.
    fn another_process_maps(&self, base: u64, process: u64) -> bool {
        self.table
            .get(base)
            .is_some_and(|old| old.flags & FLAG_USER != 0 && old.device != process)
    }

    /// The `MmUnmapLockedPages` hook: validates and removes the entry, then calls the real
    /// routine (with the tracked MDL for a contained IOSV015) or contains the call.
    pub fn unmap_locked_pages(&self, caller: Caller, base: u64, mdl: u64) {
        let cx = self.ctx(caller, HookedRoutine::UnmapLockedPages);
        self.stats
            .bump_driver(cx.processor, cx.driver, DriverCounter::Unmaps);
        let contain = self.settings.containment();
        let mut frames = [0u64; MAX_STACK_DEPTH];
        let mut h = MappingHead::new(base, 0);
        let found = self.table.remove_head(base, &mut h, &mut frames);
        let depth = usize::from(h.stack_depth);
        let m = h.with_frames(frames.get(..depth).unwrap_or(&[]));
        let real = |mdl: u64| self.platform.mm_unmap_locked_pages(base, mdl);
        match found {
            Removal::Removed if MappingKind::of(m.flags) != MappingKind::Mdl => {
                // MmUnmapLockedPages of an I/O-space mapping or a reserved range: not an
                // MDL mapping (Mm would bug-check 0xDA).
                self.wrong_routine_unmap(&cx, &m, base, mdl, contain, || real(mdl));
            }
            Removal::Removed => self.unmap_mdl_entry(&cx, &m, base, mdl, contain),
            Removal::Racing => {
                let mut r = self.blank_record(&cx);
                r.address = base;
                r.passed_mdl = mdl;
                r.kind = MappingKind::Mdl as u8;
                if contain {
                    self.contain_record(&cx, &mut r);
                }
                self.violate(RuleId::DoubleUnmap, &cx, r);
                if !contain {
                    real(mdl);
                }
            }
            Removal::NotFound => {
                if self.family_not_found(&cx, base, mdl, MappingKind::Mdl, contain) {
                    real(mdl);
                }
            }
        }
    }

    /// An `MmUnmapLockedPages` of the live MDL mapping `m` (already out of the table).
    fn unmap_mdl_entry(&self, cx: &CallCtx, m: &Mapping, base: u64, mdl: u64, contain: bool) {
        let user = m.flags & FLAG_USER != 0;
        // The process the call runs in (only a user-space mapping needs it).
        let process = if user {
            self.platform.current_process_id()
        } else {
            0
        };
        if user && m.device != process && self.untracked.take_remembered(base) {
            // This process's own mapping at the address of another process's tracked one
            // (remembered as untracked at its map, `track_mdl_mapping`): the other stays
            // tracked, and this unmap, which Mm applies to the current process, passes (as
            // every unmap of a remembered untracked mapping does, uncounted: the mapping
            // showed in `untracked_live` while it lived).
            self.restore(cx, m);
            self.platform.mm_unmap_locked_pages(base, mdl);
            return;
        }
        let record = || {
            let mut r = self.family_record(cx, m);
            r.address = base;
            r.passed_mdl = mdl;
            r
        };
        let ceiling = if user { Irql::APC } else { Irql::DISPATCH };
        if cx.irql > ceiling {
            self.violate(RuleId::MdlUnmapIrql, cx, record());
        }
        if m.driver != 0 && cx.driver != DriverId::NONE && m.driver != cx.driver.0 {
            // Another driver's live MDL mapping (IOSV012, as for I/O space). Contained:
            // the owner's mapping stays mapped and tracked.
            self.refuse_or_release(cx, m, RuleId::UnmapForeign, record(), contain, || {
                self.platform.mm_unmap_locked_pages(base, mdl);
            });
            return;
        }
        if user && m.device != process {
            // Mm would unmap that range of the *current* process. If this process's own
            // earlier mapping at this address was unmapped already, that is what the call
            // repeats (IOSV005: another process maps the address now); otherwise the
            // mapping was made in another process (IOSV021). Contained: nothing reaches
            // Mm and the other process's mapping stays tracked (it still maps it).
            let (rule, r) = match self.graveyard.find(base).filter(|t| t.process == process) {
                Some(t) => {
                    let mut r = self.blank_record(cx);
                    r.address = base;
                    r.passed_mdl = mdl;
                    r.kind = MappingKind::Mdl as u8;
                    self.describe_tombstone(&mut r, &t);
                    (RuleId::DoubleUnmap, r)
                }
                None => (RuleId::UnmapOtherProcess, record()),
            };
            self.refuse_or_release(cx, m, rule, r, contain, || {
                self.platform.mm_unmap_locked_pages(base, mdl);
            });
            return;
        }
        self.forget_mapping(m);
        self.bury(cx, m);
        if mdl != m.physical {
            let mut r = record();
            if contain {
                self.contain_record(cx, &mut r);
            }
            self.violate(RuleId::MdlUnmapWrongMdl, cx, r);
            let pass = if contain { m.physical } else { mdl };
            self.platform.mm_unmap_locked_pages(base, pass);
        } else {
            self.platform.mm_unmap_locked_pages(base, mdl);
        }
    }

    /// The `IoFreeMdl` hook.
    pub fn io_free_mdl(&self, caller: Caller, mdl: u64) {
        self.mdl_released(caller, mdl, MdlRelease::Free);
        self.platform.io_free_mdl(mdl);
    }

    /// The `MmUnlockPages` hook.
    pub fn unlock_pages(&self, caller: Caller, mdl: u64) {
        self.mdl_released(caller, mdl, MdlRelease::Unlock);
        self.platform.mm_unlock_pages(mdl);
    }

    /// Before `how` releases `mdl`: its live mappings that the routine releases by itself
    /// leave the table (an implicit release); the others are IOSV017 — contained by
    /// unmapping them first when that is legal here (a system-space mapping at
    /// IRQL <= DISPATCH_LEVEL, a user-space one at <= APC_LEVEL in its own process),
    /// otherwise reported once and kept listed (flagged leak-reported).
    fn mdl_released(&self, caller: Caller, mdl: u64, how: MdlRelease) {
        if mdl == 0 || !self.mdls.may_hold(mdl) {
            return;
        }
        let routine = match how {
            MdlRelease::Free => HookedRoutine::FreeMdl,
            MdlRelease::Unlock => HookedRoutine::UnlockPages,
        };
        let cx = self.ctx(caller, routine);
        let info = self.platform.mdl_info(mdl);
        let contain = self.settings.containment();
        // A small batch: this runs inside the IoFreeMdl / MmUnlockPages hooks, on the
        // calling driver's stack at up to DISPATCH_LEVEL (an MDL has one mapping or a
        // few; more take further walks). With the leak reports' 32 the frame was 6.5 KiB.
        self.for_each_picked::<MDL_RELEASE_BATCH>(
            |m| mapped_mdl(m) == Some(mdl),
            |m| {
                if MappingKind::of(m.flags) == MappingKind::Reserved {
                    self.reserved_mdl_released(&cx, m, mdl, contain);
                    return;
                }
                if how.releases(m.base, m.flags, info) {
                    if let RemoveOutcome::Removed(gone) = self.table.remove(m.base) {
                        self.forget_mapping(&gone);
                        self.bury(&cx, &gone);
                        // An implicit release is an unmap (maps and unmaps stay equal).
                        self.stats
                            .bump_driver(cx.processor, cx.driver, DriverCounter::Unmaps);
                    }
                    return;
                }
                if released_with_its_mdl(m.flags) && info.is_some_and(|i| !i.records(m.base)) {
                    // The MDL no longer records this system mapping as its own: it was
                    // released where iosv cannot see (the MDL unlocked by the I/O manager
                    // or another driver; this may be a new MDL at the same address). No
                    // report, and no Mm call on an address Mm may have reused.
                    if let RemoveOutcome::Removed(gone) = self.table.remove(m.base) {
                        self.forget_mapping(&gone);
                        self.stats.bump(cx.processor, Counter::UnverifiedUnmaps);
                    }
                    return;
                }
                if m.flags & FLAG_LEAK_REPORTED != 0 {
                    return;
                }
                let user = m.flags & FLAG_USER != 0;
                let can_unmap = if user {
                    cx.irql <= Irql::APC && m.device == self.platform.current_process_id()
                } else {
                    cx.irql <= Irql::DISPATCH
                };
                let mut r = self.family_record(&cx, m);
                r.address = m.base;
                r.passed_mdl = mdl;
                if contain && can_unmap {
                    if let RemoveOutcome::Removed(gone) = self.table.remove(m.base) {
                        self.forget_mapping(&gone);
                        self.bury(&cx, &gone);
                        self.stats
                            .bump_driver(cx.processor, cx.driver, DriverCounter::Unmaps);
                        self.contain_record(&cx, &mut r);
                        self.violate(RuleId::MdlReleasedWhileMapped, &cx, r);
                        self.platform.mm_unmap_locked_pages(gone.base, mdl);
                    }
                } else if self.table.mark(m.base, m.map_time_ns, FLAG_LEAK_REPORTED) {
                    self.violate(RuleId::MdlReleasedWhileMapped, &cx, r);
                }
            },
        );
    }

    /// `IoFreeMdl` / `MmUnlockPages` of `mdl` while it is mapped into the reserved range
    /// or sub-range mapping `m`: neither routine releases a reserved mapping (only
    /// `MmUnmapReservedMapping` does; `MmUnlockPages` would take the MDL's
    /// `MappedSystemVa`, which the reserved map set, for a mapping of its own), so the
    /// range's PTEs would keep mapping pages that are no longer locked, or an MDL that is
    /// freed: IOSV017. Contained at IRQL <= DISPATCH_LEVEL (`MmUnmapReservedMapping`'s
    /// ceiling) by unmapping it first with the range's tag; otherwise reported once and
    /// flagged leak-reported.
    fn reserved_mdl_released(&self, cx: &CallCtx, m: &Mapping, mdl: u64, contain: bool) {
        if m.flags & FLAG_LEAK_REPORTED != 0 {
            return;
        }
        let mut r = self.family_record(cx, m);
        r.address = m.base;
        r.passed_mdl = mdl;
        if !contain || cx.irql > Irql::DISPATCH {
            if self.table.mark(m.base, m.map_time_ns, FLAG_LEAK_REPORTED) {
                self.violate(RuleId::MdlReleasedWhileMapped, cx, r);
            }
            return;
        }
        match self.take_reserved(m.base) {
            ReservedAt::Range(mut e) if mapped_mdl(&e) == Some(mdl) => {
                self.contain_record(cx, &mut r);
                self.violate(RuleId::MdlReleasedWhileMapped, cx, r);
                self.platform
                    .mm_unmap_reserved_mapping(e.base, e.cache, mdl);
                if self.is_sub_range(&e) {
                    self.forget_mapping(&e);
                    self.bury(cx, &e);
                } else {
                    self.mdls.remove(mdl);
                    e.physical = 0;
                    e.flags &= !FLAG_RESERVED_MAPPED;
                    self.restore(cx, &e);
                }
            }
            // Changed since the walk saw it (unmapped or remapped meanwhile): put back.
            ReservedAt::Range(e) | ReservedAt::OtherKind(e) => self.restore(cx, &e),
            ReservedAt::InsideDivisible(_) | ReservedAt::Nothing => {}
        }
    }

    // ---- reserved ranges ---------------------------------------------------------------

    /// The `MmAllocateMappingAddress` hook.
    pub fn allocate_mapping_address(&self, caller: Caller, size: usize, pool_tag: u32) -> u64 {
        let cx = self.ctx(caller, HookedRoutine::AllocateMappingAddress);
        let base = self.platform.mm_allocate_mapping_address(size, pool_tag);
        self.track_reserved(&cx, base, size, pool_tag, false)
    }

    /// The `MmAllocateMappingAddressEx` hook.
    pub fn allocate_mapping_address_ex(
        &self,
        caller: Caller,
        size: usize,
        pool_tag: u32,
        flags: u32,
    ) -> u64 {
        let cx = self.ctx(caller, HookedRoutine::AllocateMappingAddressEx);
        let base = self
            .platform
            .mm_allocate_mapping_address_ex(size, pool_tag, flags);
        let divisible = flags & MM_MAPPING_ADDRESS_DIVISIBLE != 0;
        self.track_reserved(&cx, base, size, pool_tag, divisible)
    }

    fn track_reserved(
        &self,
        cx: &CallCtx,
        base: u64,
        size: usize,
        tag: u32,
        divisible: bool,
    ) -> u64 {
        // MmAllocateMappingAddress[Ex]: IRQL <= APC_LEVEL (their DDI pages).
        let kind = MappingKind::Reserved;
        self.check_family_map_irql(cx, Irql::APC, kind, base, 0, size as u64, 0);
        if base == 0 {
            self.stats.bump(cx.processor, Counter::MapFailures);
            return 0;
        }
        self.stats
            .bump_driver(cx.processor, cx.driver, DriverCounter::Maps);
        let mut m = self.family_head(cx, base, size as u64);
        m.cache = tag;
        m.flags = if divisible {
            FLAG_KIND_RESERVED | FLAG_RESERVED_DIVISIBLE
        } else {
            FLAG_KIND_RESERVED
        };
        self.insert_family(cx, m);
        base
    }

    /// The `MmMapLockedPagesWithReservedMapping` hook: IOSV023 if the address is the base
    /// of another kind's mapping, IOSV022 if the tag is not the range's, IOSV019 if the
    /// range is mapped already, IOSV020 if the MDL does not fit it (all contained: NULL,
    /// nothing reaches Mm); otherwise the real routine, and the range records the MDL.
    pub fn map_reserved(
        &self,
        caller: Caller,
        mapping_address: u64,
        pool_tag: u32,
        mdl: u64,
        cache_type: u32,
    ) -> u64 {
        let cx = self.ctx(caller, HookedRoutine::MapLockedPagesWithReservedMapping);
        // MmMapLockedPagesWithReservedMapping: IRQL <= DISPATCH_LEVEL (its DDI page).
        let kind = MappingKind::Reserved;
        self.check_family_map_irql(
            &cx,
            Irql::DISPATCH,
            kind,
            mapping_address,
            mdl,
            0,
            cache_type,
        );
        let contain = self.settings.containment();
        let real = || {
            self.platform.mm_map_locked_pages_with_reserved_mapping(
                mapping_address,
                pool_tag,
                mdl,
                cache_type,
            )
        };
        let mut m = match self.take_reserved_at(page_align(mapping_address)) {
            ReservedAt::Range(m) => m,
            // The base of another kind's live mapping: that page is in no reserved range
            // (Windows bug-checks 0xDA). A detached driver's entry may be stale (it may
            // have been unmapped unhooked and the address reserved since): judged as
            // unknown below.
            ReservedAt::OtherKind(other) if other.flags & FLAG_DETACHED == 0 => {
                let mut r = self.family_record(&cx, &other);
                r.address = mapping_address;
                r.passed_mdl = mdl;
                self.restore(&cx, &other);
                if contain {
                    self.contain_record(&cx, &mut r);
                    self.violate(RuleId::ReservedMapNotReserved, &cx, r);
                    return 0;
                }
                self.violate(RuleId::ReservedMapNotReserved, &cx, r);
                return real();
            }
            // A page inside a divisible range past its first: a sub-range mapping.
            ReservedAt::InsideDivisible(range) => {
                return self.map_sub_range(&cx, &range, mapping_address, pool_tag, mdl, real);
            }
            found => {
                if let ReservedAt::OtherKind(other) = found {
                    self.restore(&cx, &other);
                }
                // Not a range iosv tracks (allocated before the attach, or untracked), or
                // a detached driver's entry: pass. Another kind's entry there goes back.
                self.stats.bump(cx.processor, Counter::UnverifiedUnmaps);
                return self.passed_untracked(real());
            }
        };
        let record = |m: &Mapping| {
            let mut r = self.family_record(&cx, m);
            r.address = mapping_address;
            r.passed_mdl = mdl;
            r
        };
        // Windows checks the tag first (bug check 0xDA/0x104). Contained, a map with the
        // wrong tag is refused rather than made with the right one.
        if self.checked_tag(&cx, || record(&m), m.cache, pool_tag, contain) != pool_tag {
            self.restore(&cx, &m);
            return 0;
        }
        let span = self.platform.mdl_info(mdl).and_then(|i| i.span_bytes());
        let rule = if m.flags & FLAG_RESERVED_MAPPED != 0 {
            Some(RuleId::ReservedMappedTwice)
        } else if span.is_some_and(|span| span > page_round(m.size)) {
            Some(RuleId::ReservedSize)
        } else if m.flags & FLAG_RESERVED_DIVISIBLE != 0
            && self.sub_range_taken(&m, m.base, m.base.saturating_add(span.unwrap_or(PAGE)))
        {
            // A divisible range's sub-range mapping holds one of the pages.
            Some(RuleId::ReservedMappedTwice)
        } else {
            None
        };
        if let Some(rule) = rule {
            let mut r = record(&m);
            r.passed_size = span.unwrap_or(0);
            if contain {
                self.restore(&cx, &m);
                self.contain_record(&cx, &mut r);
                self.violate(rule, &cx, r);
                return 0;
            }
            self.violate(rule, &cx, r);
        }
        let va = real();
        if va != 0 {
            if let Some(old) = mapped_mdl(&m) {
                // Mapped twice, uncontained: the range now records the new MDL.
                self.mdls.remove(old);
            }
            m.physical = mdl;
            m.flags |= FLAG_RESERVED_MAPPED;
            self.mdls.add(mdl);
        }
        self.restore(&cx, &m);
        va
    }

    /// The `MmUnmapReservedMapping` hook.
    pub fn unmap_reserved(&self, caller: Caller, base: u64, pool_tag: u32, mdl: u64) {
        let cx = self.ctx(caller, HookedRoutine::UnmapReservedMapping);
        let contain = self.settings.containment();
        let real_as_made = || self.platform.mm_unmap_reserved_mapping(base, pool_tag, mdl);
        let mut m = match self.take_reserved_at(page_align(base)) {
            ReservedAt::Range(m) if self.is_sub_range(&m) => {
                self.unmap_sub_range(&cx, &m, base, pool_tag, mdl, contain);
                return;
            }
            ReservedAt::Range(m) => m,
            ReservedAt::OtherKind(other) => {
                // An MDL mapping or I/O-space mapping there, not a reserved range.
                self.wrong_routine_unmap(&cx, &other, base, mdl, contain, real_as_made);
                return;
            }
            ReservedAt::InsideDivisible(range) => {
                if self.unmap_inside_divisible(&cx, &range, base, mdl, contain) {
                    real_as_made();
                }
                return;
            }
            ReservedAt::Nothing => {
                // A mapping passed untracked is remembered by its page (`passed_untracked`);
                // the address Mm returned carries the MDL's byte offset.
                if self.untracked.take_remembered(page_align(base))
                    || self.family_not_found(&cx, base, mdl, MappingKind::Reserved, contain)
                {
                    real_as_made();
                }
                return;
            }
        };
        let record = |m: &Mapping| {
            let mut r = self.family_record(&cx, m);
            r.address = base;
            r.passed_mdl = mdl;
            r
        };
        // Windows checks the tag before anything else (bug check 0xDA/0x108).
        let tag = self.checked_tag(&cx, || record(&m), m.cache, pool_tag, contain);
        let real = |mdl: u64| self.platform.mm_unmap_reserved_mapping(base, tag, mdl);
        if m.flags & FLAG_RESERVED_MAPPED == 0 {
            // Nothing is mapped into the range: an unmap of an unmapped range (above its
            // ceiling too: IOSV016, as for a mapped one).
            if cx.irql > Irql::DISPATCH {
                self.violate(RuleId::MdlUnmapIrql, &cx, record(&m));
            }
            let mut r = record(&m);
            self.restore(&cx, &m);
            if contain {
                self.contain_record(&cx, &mut r);
            }
            self.violate(RuleId::DoubleUnmap, &cx, r);
            if !contain {
                real(mdl);
            }
            return;
        }
        real(self.reserved_unmap_mdl(&cx, || record(&m), m.physical, mdl, contain));
        self.mdls.remove(m.physical);
        m.physical = 0;
        m.flags &= !FLAG_RESERVED_MAPPED;
        self.restore(&cx, &m);
    }

    /// The `MmFreeMappingAddress` hook: IOSV018 if the range is still mapped (contained:
    /// iosv unmaps it first, with the tracked MDL).
    pub fn free_mapping_address(&self, caller: Caller, base: u64, pool_tag: u32) {
        let cx = self.ctx(caller, HookedRoutine::FreeMappingAddress);
        // Statistics count a reserved range as one map (its allocation) and one unmap
        // (its free); mapping MDLs into it and out again is not counted.
        self.stats
            .bump_driver(cx.processor, cx.driver, DriverCounter::Unmaps);
        let contain = self.settings.containment();
        // MmFreeMappingAddress: IRQL <= APC_LEVEL (its DDI page); IOSV016, reported and
        // passed like the family's other releases above their ceiling.
        let above = cx.irql > Irql::APC;
        let real_as_made = || self.platform.mm_free_mapping_address(base, pool_tag);
        let m = match self.take_reserved(base) {
            ReservedAt::Range(m) if self.is_sub_range(&m) => {
                // A sub-range mapping's address, not the range's: IOSV004 naming it.
                self.wrong_routine_unmap(&cx, &m, base, 0, contain, real_as_made);
                return;
            }
            ReservedAt::Range(m) => m,
            found => {
                if above {
                    let mut r = self.blank_record(&cx);
                    r.address = base;
                    r.kind = MappingKind::Reserved as u8;
                    self.violate(RuleId::MdlUnmapIrql, &cx, r);
                }
                match found {
                    // An MDL mapping or I/O-space mapping there, not a reserved range.
                    ReservedAt::OtherKind(other) => {
                        self.wrong_routine_unmap(&cx, &other, base, 0, contain, real_as_made)
                    }
                    _ => {
                        if self.family_not_found(&cx, base, 0, MappingKind::Reserved, contain) {
                            real_as_made();
                        }
                    }
                }
                return;
            }
        };
        if above {
            let mut r = self.family_record(&cx, &m);
            r.address = base;
            self.violate(RuleId::MdlUnmapIrql, &cx, r);
        }
        let record = || {
            let mut r = self.family_record(&cx, &m);
            r.address = base;
            r
        };
        let tag = self.checked_tag(&cx, record, m.cache, pool_tag, contain);
        self.forget_mapping(&m);
        self.bury(&cx, &m);
        if m.flags & FLAG_RESERVED_MAPPED != 0 {
            let mut r = self.family_record(&cx, &m);
            r.address = base;
            self.freed_while_mapped(&cx, r, &m, contain);
        }
        if m.flags & FLAG_RESERVED_DIVISIBLE != 0 {
            self.release_sub_ranges(&cx, &m, contain);
        }
        self.platform.mm_free_mapping_address(base, tag);
    }

    /// The pool tag to pass Mm for a call on a reserved range allocated with tag `own`:
    /// `passed` if it is `own`; otherwise IOSV022 is reported (with the range's `record`,
    /// the passed tag in `other_cache`) and, contained, `own` is returned instead (an
    /// unmap or free passes it; a map is refused).
    fn checked_tag(
        &self,
        cx: &CallCtx,
        record: impl FnOnce() -> ViolationRecord,
        own: u32,
        passed: u32,
        contain: bool,
    ) -> u32 {
        if passed == own {
            return passed;
        }
        let mut r = record();
        r.other_cache = passed;
        if contain {
            self.contain_record(cx, &mut r);
        }
        self.violate(RuleId::ReservedTagMismatch, cx, r);
        if contain {
            own
        } else {
            passed
        }
    }

    /// IOSV016 above DISPATCH_LEVEL and IOSV015 for an MDL other than `mapped`, for an
    /// `MmUnmapReservedMapping` of the MDL a range (or sub-range) holds (`record` names
    /// it); returns the MDL to pass Mm: contained, the tracked one.
    fn reserved_unmap_mdl(
        &self,
        cx: &CallCtx,
        record: impl Fn() -> ViolationRecord,
        mapped: u64,
        mdl: u64,
        contain: bool,
    ) -> u64 {
        if cx.irql > Irql::DISPATCH {
            self.violate(RuleId::MdlUnmapIrql, cx, record());
        }
        if mdl == mapped {
            return mdl;
        }
        let mut r = record();
        if contain {
            self.contain_record(cx, &mut r);
        }
        self.violate(RuleId::MdlUnmapWrongMdl, cx, r);
        if contain {
            mapped
        } else {
            mdl
        }
    }

    /// IOSV018 (record `r`) for `m`, a range or sub-range whose MDL is still mapped while
    /// its range is freed: contained, iosv unmaps it first with the tracked MDL.
    fn freed_while_mapped(&self, cx: &CallCtx, mut r: ViolationRecord, m: &Mapping, contain: bool) {
        if contain {
            self.contain_record(cx, &mut r);
            self.violate(RuleId::ReservedFreedWhileMapped, cx, r);
            self.platform
                .mm_unmap_reserved_mapping(m.base, m.cache, m.physical);
        } else {
            self.violate(RuleId::ReservedFreedWhileMapped, cx, r);
        }
    }

    // ---- sub-ranges of divisible ranges -------------------------------------------------

    /// The live reserved range that holds `page` past its first page: of the reserved
    /// entries around `page`, the one with the lowest base (a divisible range's sub-range
    /// mappings lie inside it, above its base). Bounded: the table's virtual index.
    fn range_around(&self, page: u64) -> Option<Mapping> {
        let mut range: Option<Mapping> = None;
        self.table.visit_around(page, |m| {
            if MappingKind::of(m.flags) == MappingKind::Reserved
                && m.base < page
                && m.contains(page)
                && range.is_none_or(|r| m.base < r.base)
            {
                range = Some(*m);
            }
            true
        });
        range
    }

    /// True if the reserved entry `m` is a sub-range mapping (not a range).
    pub(super) fn is_sub_range(&self, m: &Mapping) -> bool {
        m.flags & FLAG_RESERVED_DIVISIBLE != 0 && self.range_around(m.base).is_some()
    }

    /// `MmMapLockedPagesWithReservedMapping` at `address`, a page inside the divisible
    /// `range` past its first: IOSV022 for another tag, IOSV020 if the MDL's pages run past
    /// the range's end, IOSV019 if they overlap a mapping already in the range (all
    /// contained: NULL, nothing reaches Mm; uncontained, passed and not tracked);
    /// otherwise `real`, and the sub-range mapping gets its own entry.
    fn map_sub_range(
        &self,
        cx: &CallCtx,
        range: &Mapping,
        address: u64,
        tag: u32,
        mdl: u64,
        real: impl FnOnce() -> u64,
    ) -> u64 {
        let contain = self.settings.containment();
        let record = || {
            let mut r = self.family_record(cx, range);
            r.address = address;
            r.passed_mdl = mdl;
            r
        };
        if self.checked_tag(cx, record, range.cache, tag, contain) != tag {
            return 0;
        }
        let span = self.platform.mdl_info(mdl).and_then(|i| i.span_bytes());
        let (Some(span), 0) = (span, address & (PAGE - 1)) else {
            // An address inside a page (Mm returns NULL) or an MDL iosv cannot read:
            // passed, not tracked.
            self.stats.bump(cx.processor, Counter::UnverifiedUnmaps);
            return self.passed_untracked(real());
        };
        let end = address.saturating_add(span);
        let rule = if end > range.base.saturating_add(page_round(range.size)) {
            Some(RuleId::ReservedSize)
        } else if self.sub_range_taken(range, address, end) {
            Some(RuleId::ReservedMappedTwice)
        } else {
            None
        };
        if let Some(rule) = rule {
            let mut r = record();
            r.passed_size = span;
            if contain {
                self.contain_record(cx, &mut r);
            }
            self.violate(rule, cx, r);
            return if contain {
                0
            } else {
                self.passed_untracked(real())
            };
        }
        let va = real();
        if va != 0 {
            let mut m = self.family_head(cx, address, span);
            m.cache = tag;
            m.physical = mdl;
            m.flags = FLAG_KIND_RESERVED | FLAG_RESERVED_MAPPED | FLAG_RESERVED_DIVISIBLE;
            self.insert_family(cx, m);
        }
        va
    }

    /// True if a mapping in the divisible `range` already holds a page of
    /// `[start, end)`: the MDL mapped at its base, or a sub-range mapping. Bounded by the
    /// pages of `[start, end)`.
    fn sub_range_taken(&self, range: &Mapping, start: u64, end: u64) -> bool {
        if range.flags & FLAG_RESERVED_MAPPED != 0 {
            let at_base = self
                .platform
                .mdl_info(range.physical)
                .and_then(|i| i.span_bytes())
                .unwrap_or(PAGE);
            if range.base.saturating_add(at_base) > start {
                return true;
            }
        }
        let mut page = start;
        while page < end {
            let mut taken = false;
            self.table.visit_around(page, |m| {
                taken = MappingKind::of(m.flags) == MappingKind::Reserved
                    && m.base > range.base
                    && m.contains(page);
                !taken
            });
            if taken {
                return true;
            }
            page = page.saturating_add(PAGE);
        }
        false
    }

    /// `MmUnmapReservedMapping` of the sub-range mapping `m` (taken out of the table) at
    /// `address`: IOSV022, IOSV016 and IOSV015 as for a range's own mapping; the entry is
    /// released and remembered (a second unmap is IOSV005).
    fn unmap_sub_range(
        &self,
        cx: &CallCtx,
        m: &Mapping,
        address: u64,
        tag: u32,
        mdl: u64,
        contain: bool,
    ) {
        let record = || {
            let mut r = self.family_record(cx, m);
            r.address = address;
            r.passed_mdl = mdl;
            r
        };
        let tag = self.checked_tag(cx, record, m.cache, tag, contain);
        let pass = self.reserved_unmap_mdl(cx, record, m.physical, mdl, contain);
        self.forget_mapping(m);
        self.bury(cx, m);
        self.platform.mm_unmap_reserved_mapping(address, tag, pass);
    }

    /// `MmUnmapReservedMapping` at a page inside the divisible `range` past its first that
    /// holds no entry: not an address MmMapLockedPagesWithReservedMapping returned (none
    /// is mapped there, or the page is inside a live mapping of the range past its base).
    /// Judged as an unmap of the family that finds nothing, looked up by the page: a
    /// mapping passed untracked there is passed again; a sub-range mapping unmapped there
    /// since the range was allocated (the graveyard remembers it) is IOSV005; a range
    /// whose driver was detached, a driver attached late or an only-counted untracked
    /// mapping leave it unverified (passed); anything else is IOSV004. True if the call
    /// should reach Mm.
    fn unmap_inside_divisible(
        &self,
        cx: &CallCtx,
        range: &Mapping,
        address: u64,
        mdl: u64,
        contain: bool,
    ) -> bool {
        let at = NotFoundAt {
            key: page_align(address),
            since: range.map_time_ns,
            detached: range.flags & FLAG_DETACHED != 0,
        };
        self.judge_not_found(cx, address, mdl, MappingKind::Reserved, contain, at)
    }

    /// A reserved map passed to Mm without an entry (`va` its result): remembered as
    /// untracked by its page, so its unmap is passed rather than judged unknown.
    fn passed_untracked(&self, va: u64) -> u64 {
        if va != 0 {
            self.untracked.add(page_align(va));
        }
        va
    }

    /// IOSV018 for every sub-range mapping still live in the divisible `range`, which is
    /// being freed: contained, iosv unmaps each first, with its tracked MDL. Bounded by
    /// the range's pages.
    fn release_sub_ranges(&self, cx: &CallCtx, range: &Mapping, contain: bool) {
        let end = range.base.saturating_add(page_round(range.size));
        let mut page = range.base.saturating_add(PAGE);
        while page < end {
            let mut next = page.saturating_add(PAGE);
            match self.take_reserved(page) {
                ReservedAt::Range(sub) => {
                    // The range is out of the table now: the record cannot find it.
                    let mut r = self.family_record(cx, &sub);
                    r.flags |= VF_SUB_RANGE;
                    r.address = range.base;
                    self.forget_mapping(&sub);
                    self.bury(cx, &sub);
                    self.freed_while_mapped(cx, r, &sub, contain);
                    next = next.max(sub.base.saturating_add(page_round(sub.size)));
                }
                ReservedAt::OtherKind(other) => self.restore(cx, &other),
                ReservedAt::InsideDivisible(_) | ReservedAt::Nothing => {}
            }
            page = next;
        }
    }

    /// [`take_reserved`](Self::take_reserved) at `page`; when `page` holds no entry but
    /// lies inside a range past its first page: a range allocated without
    /// MM_MAPPING_ADDRESS_DIVISIBLE is taken (Mm maps and unmaps such a range at its base
    /// whatever address inside it the driver passes; the free takes the base only), a
    /// divisible one is named ([`ReservedAt::InsideDivisible`]) and left in the table.
    fn take_reserved_at(&self, page: u64) -> ReservedAt {
        match self.take_reserved(page) {
            ReservedAt::Nothing => match self.range_around(page) {
                Some(range) if range.flags & FLAG_RESERVED_DIVISIBLE != 0 => {
                    ReservedAt::InsideDivisible(range)
                }
                Some(range) => self.take_reserved(range.base),
                None => ReservedAt::Nothing,
            },
            found => found,
        }
    }

    /// Takes the entry at `base` out of the table, for a routine of reserved ranges.
    fn take_reserved(&self, base: u64) -> ReservedAt {
        match self.table.remove(base) {
            RemoveOutcome::Removed(m) if MappingKind::of(m.flags) == MappingKind::Reserved => {
                ReservedAt::Range(m)
            }
            RemoveOutcome::Removed(other) => ReservedAt::OtherKind(other),
            RemoveOutcome::Racing | RemoveOutcome::NotFound => ReservedAt::Nothing,
        }
    }

    /// An unmap routine of the family called on `m`, an entry of a kind it does not
    /// release (taken out of the table): IOSV004 naming the mapping. Contained, the entry
    /// goes back and the call does not reach Mm (which would bug-check 0xDA); otherwise the
    /// entry is released and `real` makes the call as made.
    fn wrong_routine_unmap(
        &self,
        cx: &CallCtx,
        m: &Mapping,
        base: u64,
        mdl: u64,
        contain: bool,
        real: impl FnOnce(),
    ) {
        let mut r = self.family_record(cx, m);
        r.address = base;
        r.passed_mdl = mdl;
        self.refuse_or_release(cx, m, RuleId::UnmapUnknown, r, contain, real);
    }

    // ---- shared ------------------------------------------------------------------------

    /// IOSV003 for a map (or reservation) of the family above its documented `ceiling`:
    /// reported, never contained (the map itself is not wrong, only where it runs), as for
    /// `MmMapIoSpace`. The record says which routine: its kind, the MDL passed (0 for
    /// `MmAllocateMappingAddress[Ex]`, which passes a size instead), the address returned
    /// (or the reserved range mapped into).
    #[allow(clippy::too_many_arguments)]
    fn check_family_map_irql(
        &self,
        cx: &CallCtx,
        ceiling: Irql,
        kind: MappingKind,
        address: u64,
        mdl: u64,
        size: u64,
        cache: u32,
    ) {
        if cx.irql <= ceiling {
            return;
        }
        let mut r = self.blank_record(cx);
        r.kind = kind as u8;
        r.address = address;
        r.passed_mdl = mdl;
        r.passed_size = size;
        r.cache = cache;
        self.violate(RuleId::MapIrql, cx, r);
    }

    /// A head for a new entry of the family made by `cx` (map-site fields filled; the
    /// caller sets kind, MDL and cache).
    fn family_head(&self, cx: &CallCtx, base: u64, size: u64) -> MappingHead {
        let mut m = MappingHead::new(base, size);
        m.device = self
            .drivers
            .starting_device(cx.driver, || self.platform.current_thread_id());
        m.map_time_ns = cx.now;
        m.driver = cx.driver.0;
        m.processor = u16::try_from(cx.processor).unwrap_or(u16::MAX);
        m.irql = cx.irql.0;
        m
    }

    /// Inserts a new entry of the family with the map-site stack (IOSV013 if the table
    /// still held its base, as for I/O space).
    fn insert_family(&self, cx: &CallCtx, mut m: MappingHead) {
        let depth = self.settings.stack_depth().min(self.table.stack_depth());
        let mut stack = [0u64; MAX_STACK_DEPTH];
        if let Some(frames) = stack.get_mut(..depth) {
            let n = self.platform.capture_stack(OWN_FRAMES, frames);
            m.stack_depth = u8::try_from(n.min(depth)).unwrap_or(0);
        }
        let outcome = self.table.insert_head(&m, &stack);
        if !matches!(outcome, InsertOutcome::Full) {
            if let Some(mdl) = mapped_mdl(&m) {
                self.mdls.add(mdl);
            }
        }
        match outcome {
            InsertOutcome::Inserted => {}
            InsertOutcome::ReplacedStale(old) => {
                self.forget_mapping(&old);
                if old.flags & FLAG_DETACHED != 0 || released_with_its_mdl(old.flags) {
                    self.stats.bump(cx.processor, Counter::UnverifiedUnmaps);
                } else {
                    let mut r = self.mapping_record(cx, &old);
                    r.address = m.base;
                    r.passed_size = m.size;
                    self.violate(RuleId::StaleEntry, cx, r);
                }
            }
            InsertOutcome::Full => {
                self.stats.bump(cx.processor, Counter::TableFull);
                self.untracked.add(m.base);
            }
        }
    }

    /// The family's part of [`forget_mapping`](Self::forget_mapping): the MDL of an MDL
    /// mapping, or of a reserved range's or sub-range's mapping, leaves the MDL index.
    pub(super) fn forget_family(&self, m: &MappingHead) {
        if let Some(mdl) = mapped_mdl(m) {
            self.mdls.remove(mdl);
        }
    }

    /// A record naming the mapping `m` (any kind).
    fn family_record(&self, cx: &CallCtx, m: &Mapping) -> ViolationRecord {
        let mut r = self.mapping_record(cx, m);
        r.flags |= VF_MAPPING_KNOWN;
        r
    }

    /// An unmap (or free) of the family at `base` that the table does not hold: an
    /// untracked mapping (passed), a double unmap (the graveyard remembers it: IOSV005),
    /// a late-attached driver's (passed, counted unverified) or unknown (IOSV004). True if
    /// the call should reach Mm.
    fn family_not_found(
        &self,
        cx: &CallCtx,
        base: u64,
        mdl: u64,
        kind: MappingKind,
        contain: bool,
    ) -> bool {
        let at = NotFoundAt {
            key: base,
            since: 0,
            detached: false,
        };
        self.judge_not_found(cx, base, mdl, kind, contain, at)
    }

    /// The judgement of [`family_not_found`](Self::family_not_found) and
    /// [`unmap_inside_divisible`](Self::unmap_inside_divisible): a call at `address`
    /// (`mdl` passed, of `kind`) that found no entry, looked up as `at` says.
    fn judge_not_found(
        &self,
        cx: &CallCtx,
        address: u64,
        mdl: u64,
        kind: MappingKind,
        contain: bool,
        at: NotFoundAt,
    ) -> bool {
        if self.untracked.take_remembered(at.key) {
            return true;
        }
        let mut r = self.blank_record(cx);
        r.address = address;
        r.passed_mdl = mdl;
        r.kind = kind as u8;
        let again = self
            .graveyard
            .find(at.key)
            .filter(|t| t.unmap_time_ns >= at.since);
        let rule = if let Some(t) = again {
            self.describe_tombstone(&mut r, &t);
            RuleId::DoubleUnmap
        } else if at.detached
            || self.drivers.attached_late(cx.driver)
            || self.untracked.take_uncounted()
        {
            self.stats.bump(cx.processor, Counter::UnverifiedUnmaps);
            return true;
        } else {
            RuleId::UnmapUnknown
        };
        if contain {
            self.contain_record(cx, &mut r);
        }
        self.violate(rule, cx, r);
        !contain
    }
}

/// How [`Verifier::judge_not_found`] looks an address with no entry up.
struct NotFoundAt {
    /// The base asked of the untracked set and the graveyard.
    key: u64,
    /// A tombstone counts only if its unmap is this recent (platform ns; 0: any).
    since: u64,
    /// The address lies in a range of a detached driver, which may have mapped it
    /// unhooked: never judged.
    detached: bool,
}

#[cfg(test)]
mod tests;
