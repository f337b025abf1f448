//! The engine: joins the table, the rules, the journal and the statistics, and performs
//! each intercepted call in the order design.md §5 requires — parameter and IRQL checks,
//! then for a map the real `MmMapIoSpace` and *then* the insert; for an unmap the
//! validate-and-remove and *then* the real `MmUnmapIoSpace` (or containment).
//!
//! Hook paths ([`Verifier::map_io_space`], [`Verifier::map_io_space_ex`],
//! [`Verifier::unmap_io_space`]) take no lock, allocate nothing and never wait. PnP and
//! driver events and control requests run at PASSIVE_LEVEL and serialise on one spin lock
//! taken at DISPATCH_LEVEL ([`IrqlLock`]).

#![forbid(unsafe_code)]

pub use crate::config::StartParams;
use crate::config::{Settings, Targets};
use crate::drivers::{DriverId, DriverState, Drivers};
use crate::journal::Journal;
use crate::mdl::{is_io_space, released_with_its_mdl, MappingKind, MdlIndex, FLAG_USER};
use crate::pe::HookedRoutine;
use crate::phys::{
    byte_offset, check_parameters, page_align, page_range, CacheClass, ConflictFilter,
};
use crate::platform::{BugCheck, Caller, Irql, Platform, BUGCHECK_SIGNATURE};
use crate::protocol::{routine_code, STATE_NO_TARGETS, STATE_UNLOAD_BLOCKED};
use crate::protocol::{
    ViolationRecord, MAX_STACK, VF_CONTAINED, VF_DETACH, VF_MAPPING_KNOWN, VF_MAP_EX,
    VF_OTHER_MAP_EX, VF_REUSED, VF_SUB_RANGE,
};
use crate::rules::{Action, Blamed, RuleId};
use crate::stats::{Counter, DriverCounter, Stats};
use crate::sync::{AtomicU32, Ordering, OutOfMemory};
use crate::table::{
    Graveyard, InsertOutcome, Mapping, MappingHead, Removal, RemoveOutcome, Table, Tombstone,
    UntrackedSet, FLAG_DETACHED, FLAG_LEAK_REPORTED, FLAG_MAP_EX, MAX_STACK_DEPTH,
};

/// Mappings a leak report (stop, removal, unload, detach) takes from one walk of the table
/// at a time; those reports run on the expanded 64 KiB stack on Windows.
const LEAK_BATCH: usize = 32;

/// Frames of iosv's own the stack capture skips (the hook and the engine).
const OWN_FRAMES: u32 = 2;

/// A spin lock that raises the IRQL to DISPATCH_LEVEL while held, so its holder is never
/// preempted on its processor (control plane only; hook paths never take it).
pub struct IrqlLock<T> {
    inner: spin::Mutex<T>,
}

impl<T> IrqlLock<T> {
    /// A lock around `value`.
    pub const fn new(value: T) -> Self {
        IrqlLock {
            inner: spin::Mutex::new(value),
        }
    }

    /// Runs `f` with the value, at DISPATCH_LEVEL.
    pub fn with<R>(&self, platform: &impl Platform, f: impl FnOnce(&mut T) -> R) -> R {
        let old = platform.raise_to_dispatch();
        let r = f(&mut self.inner.lock());
        platform.lower_irql(old);
        r
    }
}

/// A PnP event of a device in a target driver's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// IRP_MN_START_DEVICE arrived; maps from now on are attributed to the device.
    StartBegin,
    /// IRP_MN_START_DEVICE completed (successfully or not).
    StartEnd,
    /// IRP_MN_STOP_DEVICE completed: IOSV007 for mappings still live.
    Stopped,
    /// IRP_MN_SURPRISE_REMOVAL completed: IOSV008.
    SurpriseRemoved,
    /// IRP_MN_REMOVE_DEVICE completed: IOSV008 for mappings still live.
    Removed,
}

/// Control-plane state behind the engine's lock.
pub struct ControlState {
    /// Drivers to hook when they load.
    pub targets: Targets,
}

/// Who, where and when of one intercepted call.
#[derive(Clone, Copy)]
struct CallCtx {
    irql: Irql,
    processor: u32,
    driver: DriverId,
    now: u64,
    /// `ViolationRecord::routine` of the call (0: an event, not a call).
    routine: u8,
}

/// The verification engine. One per system (or per host instance).
pub struct Verifier<P: Platform> {
    platform: P,
    params: StartParams,
    table: Table,
    graveyard: Graveyard,
    untracked: UntrackedSet,
    conflicts: ConflictFilter,
    /// MDLs of live MDL mappings (the family's hooks, `verifier/mdl.rs`).
    mdls: MdlIndex,
    journal: Journal,
    stats: Stats,
    drivers: Drivers,
    settings: Settings,
    control: IrqlLock<ControlState>,
    /// `STATE_*` bits the platform set (unload blocked, configuration problems, HVCI).
    state: AtomicU32,
}

impl<P: Platform> Verifier<P> {
    /// Allocates every fixed structure (the only allocation the engine makes outside the
    /// control plane) and starts with default settings. The value itself is small (its
    /// tables live on the heap), so it can be built on a kernel stack and then boxed.
    pub fn new(platform: P, params: StartParams) -> Result<Self, OutOfMemory> {
        let params = params.clamped();
        let processors = platform.processor_count() as usize;
        Ok(Verifier {
            table: Table::new(params.capacity, params.max_stack_depth)?,
            graveyard: Graveyard::new(params.graveyard)?,
            untracked: UntrackedSet::new(params.untracked)?,
            conflicts: ConflictFilter::new(params.conflict_buckets)?,
            mdls: MdlIndex::new()?,
            journal: Journal::new(params.journal_records)?,
            stats: Stats::new(processors)?,
            drivers: Drivers::new()?,
            settings: Settings::new(params.max_stack_depth),
            control: IrqlLock::new(ControlState {
                targets: Targets::default(),
            }),
            platform,
            params,
            state: AtomicU32::new(0),
        })
    }

    /// Sets `STATE_*` bits (`protocol::STATE_*`) that the platform knows of: configuration
    /// problems found at start, the unload policy, HVCI. Bits are never cleared.
    pub fn set_state_flags(&self, bits: u32) {
        self.state.fetch_or(bits, Ordering::Relaxed);
    }

    /// Notes that the platform is about to write import slots: from now on the driver
    /// hosting the engine must never be unloaded (a call may have fetched a hook's
    /// address from a slot and not yet run its first instruction; no count inside the
    /// hook can see it). Returns true the first time. See docs/windows.md, "Unload".
    pub fn block_unload(&self) -> bool {
        self.state.fetch_or(STATE_UNLOAD_BLOCKED, Ordering::SeqCst) & STATE_UNLOAD_BLOCKED == 0
    }

    /// Whether [`block_unload`](Self::block_unload) happened.
    pub fn unload_blocked(&self) -> bool {
        self.state.load(Ordering::SeqCst) & STATE_UNLOAD_BLOCKED != 0
    }

    /// The `STATE_*` bits for a status reply: those set by the platform, plus
    /// `STATE_NO_TARGETS` when no target is configured and no driver is attached.
    pub fn state_flags(&self) -> u32 {
        let mut bits = self.state.load(Ordering::Relaxed);
        let attached = self
            .drivers
            .all()
            .any(|d| d.state == crate::drivers::DriverState::Attached);
        if !attached && self.with_control(|c| c.targets.is_empty()) {
            bits |= STATE_NO_TARGETS;
        }
        bits
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }
    /// The sizes fixed at start.
    pub fn params(&self) -> &StartParams {
        &self.params
    }
    /// The live-mapping table.
    pub fn table(&self) -> &Table {
        &self.table
    }
    /// The violation journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }
    /// The statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// The driver registry.
    pub fn drivers(&self) -> &Drivers {
        &self.drivers
    }
    /// The run-time settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    /// The graveyard of recent unmaps.
    pub fn graveyard(&self) -> &Graveyard {
        &self.graveyard
    }
    /// Untracked mappings.
    pub fn untracked(&self) -> &UntrackedSet {
        &self.untracked
    }
    /// Runs `f` on the control-plane state under the engine's lock.
    pub fn with_control<R>(&self, f: impl FnOnce(&mut ControlState) -> R) -> R {
        self.control.with(&self.platform, f)
    }

    fn ctx(&self, caller: Caller, routine: HookedRoutine) -> CallCtx {
        CallCtx {
            irql: self.platform.current_irql(),
            processor: self.platform.current_processor(),
            driver: self
                .drivers
                .attribute_call(caller.importer, caller.return_address),
            now: self.platform.now_ns(),
            routine: routine_code(routine),
        }
    }

    /// The context of an event (PnP, unload, detach): no caller, no routine.
    fn event_ctx(&self) -> CallCtx {
        CallCtx {
            routine: 0,
            ..self.ctx(Caller::at(0), HookedRoutine::UnmapIoSpace)
        }
    }

    // ---- hook paths -------------------------------------------------------------------

    /// The `MmMapIoSpace` hook: checks, calls the real routine, tracks the result.
    pub fn map_io_space(&self, caller: Caller, physical: u64, size: usize, cache_type: u32) -> u64 {
        self.map_common(caller, physical, size, cache_type, false)
    }

    /// The `MmMapIoSpaceEx` hook.
    pub fn map_io_space_ex(&self, caller: Caller, physical: u64, size: usize, protect: u32) -> u64 {
        self.map_common(caller, physical, size, protect, true)
    }

    // Inlined into both map hooks (a call, its spills and reloads are ≈15 instructions of
    // a pair; the price is the body twice in the image).
    #[inline(always)]
    fn map_common(&self, caller: Caller, physical: u64, size: usize, cache: u32, ex: bool) -> u64 {
        let routine = if ex {
            HookedRoutine::MapIoSpaceEx
        } else {
            HookedRoutine::MapIoSpace
        };
        let cx = self.ctx(caller, routine);
        let size64 = size as u64;
        let probe = || {
            let mut r = self.blank_record(&cx);
            r.address = 0;
            r.physical = physical;
            r.passed_size = size64;
            r.cache = cache;
            if ex {
                r.flags |= VF_MAP_EX;
            }
            r
        };
        if cx.irql > Irql::DISPATCH {
            self.violate(RuleId::MapIrql, &cx, probe());
        }
        if check_parameters(physical, size64, cache, ex).is_some() {
            self.violate(RuleId::MapBadParameters, &cx, probe());
        }
        let base = if ex {
            self.platform.mm_map_io_space_ex(physical, size, cache)
        } else {
            self.platform.mm_map_io_space(physical, size, cache)
        };
        if base == 0 {
            self.stats.bump(cx.processor, Counter::MapFailures);
            return 0;
        }
        // The global Maps total is the sum of the per-driver ones (Stats::totals).
        self.stats
            .bump_driver(cx.processor, cx.driver, DriverCounter::Maps);

        // Counted in the conflict filter now (uncounted again if the table has no room),
        // with the check for other classes in the same pass over the regions.
        let class = CacheClass::of(cache, ex);
        if size64 != 0 && self.conflicts.add_checked(physical, size64, class) {
            self.check_conflict(&cx, base, physical, size64, cache, ex, class);
        }

        // No 16-frame array on this path: the frames (if any) travel as a slice of the
        // configured depth, and at depth 0 there are none to build, zero or copy.
        // One literal, built in place.
        let mut m = MappingHead {
            base,
            size: size64,
            physical,
            device: self
                .drivers
                .starting_device(cx.driver, || self.platform.current_thread_id()),
            map_time_ns: cx.now,
            cache,
            driver: cx.driver.0,
            processor: u16::try_from(cx.processor).unwrap_or(u16::MAX),
            irql: cx.irql.0,
            flags: if ex { FLAG_MAP_EX } else { 0 },
            stack_depth: 0,
        };
        // A depth-0 table stores no frames, whatever the setting (not read then).
        let depth = match self.table.stack_depth() {
            0 => 0,
            table => self.settings.stack_depth().min(table),
        };
        let outcome = if depth == 0 {
            // No frames to capture (`m.stack_depth` stays 0).
            self.table.insert_head(&m, &[])
        } else {
            let mut stack = [0u64; MAX_STACK_DEPTH];
            if let Some(frames) = stack.get_mut(..depth) {
                let n = self.platform.capture_stack(OWN_FRAMES, frames);
                m.stack_depth = u8::try_from(n.min(depth)).unwrap_or(0);
            }
            self.table.insert_head(&m, &stack)
        };
        match outcome {
            InsertOutcome::Inserted => {}
            InsertOutcome::ReplacedStale(old)
                if old.flags & FLAG_DETACHED != 0 || released_with_its_mdl(old.flags) =>
            {
                // Its driver was detached and unmapped it unhooked, as a detached driver
                // may, or it was an MDL's own system mapping, released with its MDL where
                // iosv cannot see (crate::mdl): not a missed unmap, so no IOSV013.
                self.forget_mapping(&old);
                self.stats.bump(cx.processor, Counter::UnverifiedUnmaps);
            }
            InsertOutcome::ReplacedStale(old) => {
                self.forget_mapping(&old);
                let mut r = self.mapping_record(&cx, &old);
                r.address = base;
                r.passed_size = size64;
                self.violate(RuleId::StaleEntry, &cx, r);
            }
            InsertOutcome::Full => {
                if size64 != 0 {
                    self.conflicts.remove(physical, size64, class);
                }
                self.stats.bump(cx.processor, Counter::TableFull);
                self.untracked.add(base);
            }
        }
        base
    }

    #[allow(clippy::too_many_arguments)]
    fn check_conflict(
        &self,
        cx: &CallCtx,
        base: u64,
        physical: u64,
        size: u64,
        cache: u32,
        ex: bool,
        class: CacheClass,
    ) {
        // The cache attribute belongs to the page: compare whole pages. Mappings of a
        // detached driver are skipped (it may have unmapped them unseen).
        let Some((first, end)) = page_range(physical, size) else {
            return;
        };
        let mut other = None;
        let flagged = |region: u64| self.conflicts.region_may_conflict(region, class);
        // Bounded: the table's physical index, probed only where the filter flags.
        self.table.visit_physical(first, end, flagged, |m| {
            let overlaps = m.flags & FLAG_DETACHED == 0
                && page_range(m.physical, m.size).is_some_and(|(f, e)| f < end && first < e);
            if overlaps && CacheClass::of(m.cache, m.flags & FLAG_MAP_EX != 0) != class {
                other = Some(*m);
                false
            } else {
                true
            }
        });
        if let Some(o) = other {
            let mut r = self.blank_record(cx);
            r.address = base;
            r.physical = physical;
            r.passed_size = size;
            r.cache = cache;
            r.other_cache = o.cache;
            r.other = o.physical;
            if o.flags & FLAG_MAP_EX != 0 {
                r.flags |= VF_OTHER_MAP_EX;
            }
            r.base = o.base;
            r.mapped_size = o.size;
            r.owner_id = o.driver;
            r.owner_name = self.drivers.name(DriverId(o.driver));
            r.device = o.device;
            r.map_time_ns = o.map_time_ns;
            r.map_irql = o.irql;
            copy_frames(&mut r.map_stack, &mut r.map_stack_depth, o.frames());
            if ex {
                r.flags |= VF_MAP_EX;
            }
            self.violate(RuleId::CacheConflict, cx, r);
        }
    }

    /// The `MmUnmapIoSpace` hook: validates and removes the entry, then calls the real
    /// routine — with the tracked size for a contained size mismatch — or contains it.
    pub fn unmap_io_space(&self, caller: Caller, base: u64, size: usize) {
        // The entry is written in place, without its stack (no copy of the whole Mapping
        // through a result, and no 16-frame array at all at depth 0); a whole Mapping is
        // built only for a violation record.
        if self.table.stack_depth() == 0 {
            self.unmap_with(caller, base, size, &mut []);
        } else {
            let mut stack = [0u64; MAX_STACK_DEPTH];
            self.unmap_with(caller, base, size, &mut stack);
        }
    }

    /// [`unmap_io_space`](Self::unmap_io_space) with room for the removed entry's frames
    /// (inlined into both of its calls, like `map_common`).
    #[inline(always)]
    fn unmap_with(&self, caller: Caller, base: u64, size: usize, frames: &mut [u64]) {
        let cx = self.ctx(caller, HookedRoutine::UnmapIoSpace);
        let size64 = size as u64;
        self.stats
            .bump_driver(cx.processor, cx.driver, DriverCounter::Unmaps);
        // Settings are read where they decide something, not on every call: the
        // containment switch only on a violation or a size mismatch, the Driver Verifier
        // ceiling only above APC_LEVEL.
        let contain = || self.settings.containment();
        let call = || {
            let mut r = self.blank_record(&cx);
            r.address = base;
            r.passed_size = size64;
            r
        };

        // Above the ceiling: APC_LEVEL under the Driver Verifier setting, else
        // DISPATCH_LEVEL.
        let above_ceiling =
            cx.irql > Irql::DISPATCH || (cx.irql > Irql::APC && self.settings.verifier_irql());
        let mut h = MappingHead::new(base, 0);
        let found = self.table.remove_head(base, &mut h, frames);
        let frames: &[u64] = frames.get(..usize::from(h.stack_depth)).unwrap_or(&[]);
        if above_ceiling {
            let mut r = call();
            if found == Removal::Removed {
                r = self.mapping_record(&cx, &h.with_frames(frames));
                r.address = base;
                r.passed_size = size64;
            }
            self.violate(RuleId::UnmapIrql, &cx, r);
        }

        match found {
            Removal::Removed if !is_io_space(h.flags) => {
                self.unmap_io_space_of_family(&cx, &h.with_frames(frames), size, contain());
            }
            Removal::Removed
                // The usual case (owner == caller) fails the first test.
                if h.driver != cx.driver.0 && h.driver != 0 && cx.driver != DriverId::NONE =>
            {
                self.foreign_unmap(&cx, &h.with_frames(frames), base, size, contain());
            }
            Removal::Removed => {
                self.forget_head(&h);
                self.bury_io_space(&cx, &h, frames.first().copied().unwrap_or(0));
                if size64 != h.size {
                    let contain = contain();
                    let mut r = self.mapping_record(&cx, &h.with_frames(frames));
                    r.address = base;
                    r.passed_size = size64;
                    if contain {
                        self.contain_record(&cx, &mut r);
                    }
                    self.violate(RuleId::UnmapSizeMismatch, &cx, r);
                    let real = if contain {
                        usize::try_from(h.size).unwrap_or(size)
                    } else {
                        size
                    };
                    self.platform.mm_unmap_io_space(base, real);
                } else {
                    self.platform.mm_unmap_io_space(base, size);
                }
            }
            Removal::Racing => {
                self.contained_violation(RuleId::DoubleUnmap, &cx, call(), contain(), base, size);
            }
            Removal::NotFound => self.unmap_not_found(&cx, base, size, contain()),
        }
    }

    /// `MmUnmapIoSpace` of an MDL mapping or a reserved range `m` (already out of the
    /// table): not an I/O-space mapping. IOSV004; contained, the entry stays
    /// (`crate::mdl`). Out of line: the I/O-space unmap path stays as it was.
    #[cold]
    #[inline(never)]
    fn unmap_io_space_of_family(&self, cx: &CallCtx, m: &Mapping, size: usize, contain: bool) {
        let mut r = self.mapping_record(cx, m);
        r.address = m.base;
        r.passed_size = size as u64;
        self.refuse_or_release(cx, m, RuleId::UnmapUnknown, r, contain, || {
            self.platform.mm_unmap_io_space(m.base, size);
        });
    }

    /// An unmap of a base the table does not hold: untracked, IOSV014, IOSV005, IOSV006,
    /// unverified or IOSV004, in that order of checks. IOSV006 takes an address inside a
    /// live mapping's bytes, or else inside one of its pages (Mm unmaps whole pages from
    /// the address's page).
    fn unmap_not_found(&self, cx: &CallCtx, base: u64, size: usize, contain: bool) {
        if self.untracked.take_remembered(base) {
            self.platform.mm_unmap_io_space(base, size);
            return;
        }
        let call = || {
            let mut r = self.blank_record(cx);
            r.address = base;
            r.passed_size = size as u64;
            r
        };
        // A page-aligned address is checked against live unaligned bases before the
        // graveyard (Mm reuses blocks, so an earlier mapping whose base was this page may
        // have left a tombstone here); the same index lookup finds the mapping containing it, so
        // no unmap looks twice.
        let scan = if base != 0 && byte_offset(base) == 0 {
            Some(self.scan_page(base))
        } else {
            None
        };
        if let Some((Some(m), _)) = scan {
            self.page_base_unmap(cx, &m, base, size, contain);
        } else if let Some(t) = self.graveyard.find(base) {
            let mut r = call();
            self.describe_tombstone(&mut r, &t);
            r.physical = t.physical;
            self.contained_violation(RuleId::DoubleUnmap, cx, r, contain, base, size);
        } else if let Some(m) = match scan {
            Some((_, containing)) => containing,
            None => self.table.find_containing(base).or_else(|| {
                // In no mapping's bytes, but in a mapping's pages: Mm rounds the address
                // down to its page and would unmap from there.
                let (owner, containing) = self.scan_page(page_align(base));
                owner.or(containing)
            }),
        } {
            let mut r = self.mapping_record(cx, &m);
            r.address = base;
            r.passed_size = size as u64;
            self.contained_violation(RuleId::UnmapInterior, cx, r, contain, base, size);
        } else if self.drivers.attached_late(cx.driver) || self.untracked.take_uncounted() {
            self.stats.bump(cx.processor, Counter::UnverifiedUnmaps);
            self.platform.mm_unmap_io_space(base, size);
        } else {
            self.contained_violation(RuleId::UnmapUnknown, cx, call(), contain, base, size);
        }
    }

    /// Fills an IOSV005 record with what the graveyard remembers of the earlier unmap `t`
    /// (not its physical address: the MDL kinds keep their MDL there).
    fn describe_tombstone(&self, r: &mut ViolationRecord, t: &Tombstone) {
        r.base = t.base;
        r.mapped_size = t.size;
        r.map_time_ns = t.map_time_ns;
        r.other = t.unmap_time_ns;
        r.owner_id = t.driver;
        r.owner_name = self.drivers.name(DriverId(t.driver));
        r.prior_map_site = t.map_site;
        if t.map_site != 0 {
            copy_frames(&mut r.map_stack, &mut r.map_stack_depth, &[t.map_site]);
        }
    }

    /// Remembers the unmap of `m` (by the caller of `cx`) in the graveyard, with the
    /// process of a user-space mapping.
    fn bury(&self, cx: &CallCtx, m: &Mapping) {
        let process = if m.flags & FLAG_USER != 0 {
            m.device
        } else {
            0
        };
        self.graveyard.bury_mapping(
            &m.head,
            cx.now,
            cx.driver.0,
            m.frames().first().copied().unwrap_or(0),
            process,
        );
    }

    /// [`bury`](Self::bury) of an I/O-space mapping without its stack (the unmap hook's
    /// path), `map_site` its innermost frame (0 if none).
    #[inline(always)]
    fn bury_io_space(&self, cx: &CallCtx, m: &MappingHead, map_site: u64) {
        self.graveyard
            .bury_mapping(m, cx.now, cx.driver.0, map_site, 0);
    }

    /// Puts a mapping taken out of the table for a contained unmap back (hook path:
    /// bounded, never waits). If the table has no room now, the mapping becomes untracked.
    fn restore(&self, cx: &CallCtx, m: &Mapping) {
        match self.table.insert(m) {
            InsertOutcome::Inserted => {}
            // Mm cannot have handed out a base that is still mapped; if the table held
            // one anyway, the newer entry wins and the old one is forgotten.
            InsertOutcome::ReplacedStale(old) => self.forget_mapping(&old),
            InsertOutcome::Full => {
                self.forget_mapping(m);
                self.stats.bump(cx.processor, Counter::TableFull);
                self.untracked.add(m.base);
            }
        }
    }

    /// `cx`'s driver unmaps `m`, the live mapping of another driver (already taken out of
    /// the table). If the caller's own earlier mapping at this base is in the graveyard,
    /// its pointer is stale and Mm reused the address: IOSV005, naming both mappings.
    /// Otherwise IOSV012. Either way, contained, the owner's mapping stays mapped and
    /// tracked (re-inserted: the common, correct unmap pays for no extra lookup; an
    /// owner's unmap racing this bad call in the instant between removal and re-insert
    /// finds no entry and is judged as such); without containment the call reaches Mm
    /// and the entry stays removed.
    fn foreign_unmap(&self, cx: &CallCtx, m: &Mapping, base: u64, size: usize, contain: bool) {
        let mut r = self.mapping_record(cx, m);
        r.address = base;
        r.passed_size = size as u64;
        let rule = match self.stale_prior(cx, base, m.driver) {
            Some(t) => {
                note_reuse(&mut r, &t);
                RuleId::DoubleUnmap
            }
            None => RuleId::UnmapForeign,
        };
        self.refuse_or_release(cx, m, rule, r, contain, || {
            self.platform.mm_unmap_io_space(base, size);
        });
    }

    /// Marks `r` contained (the call was not passed to Mm as made) and counts it.
    fn contain_record(&self, cx: &CallCtx, r: &mut ViolationRecord) {
        r.flags |= VF_CONTAINED;
        self.stats.bump(cx.processor, Counter::Contained);
    }

    /// Reports `rule` (record `r`) for an unmap of `m` (taken out of the table) that must
    /// not tear it down: contained, `m` goes back and the call does not reach Mm;
    /// otherwise `m` is released and `real` makes the call as made.
    fn refuse_or_release(
        &self,
        cx: &CallCtx,
        m: &Mapping,
        rule: RuleId,
        mut r: ViolationRecord,
        contain: bool,
        real: impl FnOnce(),
    ) {
        if contain {
            self.restore(cx, m);
            self.contain_record(cx, &mut r);
            self.violate(rule, cx, r);
        } else {
            self.forget_mapping(m);
            self.bury(cx, m);
            self.violate(rule, cx, r);
            real();
        }
    }

    /// The caller's own tombstone at `addr` (it mapped or unmapped the mapping that was
    /// there) when the live mapping there now belongs to another driver, `owner`: the
    /// caller's pointer is stale and Mm reused the address.
    fn stale_prior(&self, cx: &CallCtx, addr: u64, owner: u16) -> Option<Tombstone> {
        if owner == 0 || cx.driver == DriverId::NONE || owner == cx.driver.0 {
            return None;
        }
        self.graveyard
            .find(addr)
            .filter(|t| t.driver == cx.driver.0 || t.unmapped_by == cx.driver.0)
    }

    /// One bounded lookup in the table's virtual index for the page-aligned address `addr`:
    /// the live mapping whose base is not page-aligned and lies in the page starting at
    /// `addr` (IOSV014), and the live mapping containing `addr` (IOSV006).
    fn scan_page(&self, addr: u64) -> (Option<Mapping>, Option<Mapping>) {
        let (mut page_owner, mut containing) = (None, None);
        self.table.visit_around(addr, |m| {
            if m.base != addr && page_align(m.base) == addr {
                page_owner = Some(*m);
            } else if containing.is_none() && m.contains(addr) {
                containing = Some(*m);
            }
            page_owner.is_none()
        });
        (page_owner, containing)
    }

    /// IOSV014: an unmap at `addr`, the page-aligned address of `m`'s unaligned base.
    /// Mm would unmap `span_pages(addr, size)` pages from `addr`, which misses the
    /// mapping's last page when its offset pushes it onto one more page. Contained, the
    /// mapping is unmapped with its tracked base and size; without containment the call
    /// reaches Mm as made. Either way the entry is removed (Mm unmaps from that page).
    ///
    /// Only for the caller's own I/O-space mapping. If `m` is another driver's, the call
    /// is judged as at its exact base: IOSV005 if the page was the base of the caller's
    /// own earlier mapping (its pointer is stale, Mm reused the address), else IOSV012;
    /// an MDL mapping or reserved range there is IOSV004 (not MmUnmapIoSpace's to
    /// release). For these, contained, nothing reaches Mm and `m` stays tracked; without
    /// containment the call reaches Mm as made and the entry is removed.
    fn page_base_unmap(&self, cx: &CallCtx, m: &Mapping, addr: u64, size: usize, contain: bool) {
        let mut r = self.mapping_record(cx, m);
        r.address = addr;
        r.passed_size = size as u64;
        let foreign = m.driver != 0 && cx.driver != DriverId::NONE && m.driver != cx.driver.0;
        let rule = if let Some(t) = self.stale_prior(cx, addr, m.driver) {
            note_reuse(&mut r, &t);
            RuleId::DoubleUnmap
        } else if !is_io_space(m.flags) {
            RuleId::UnmapUnknown
        } else if foreign {
            RuleId::UnmapForeign
        } else {
            RuleId::UnmapPageBase
        };
        if rule != RuleId::UnmapPageBase && contain {
            self.contain_record(cx, &mut r);
            self.violate(rule, cx, r);
            return;
        }
        let removed = match self.table.remove(m.base) {
            RemoveOutcome::Removed(gone) => {
                self.forget_mapping(&gone);
                self.bury(cx, &gone);
                Some(gone)
            }
            RemoveOutcome::Racing | RemoveOutcome::NotFound => None,
        };
        if contain {
            self.contain_record(cx, &mut r);
            self.violate(rule, cx, r);
            if let Some(gone) = removed {
                let real = usize::try_from(gone.size).unwrap_or(size);
                self.platform.mm_unmap_io_space(gone.base, real);
            }
        } else {
            self.violate(rule, cx, r);
            self.platform.mm_unmap_io_space(addr, size);
        }
    }

    fn contained_violation(
        &self,
        rule: RuleId,
        cx: &CallCtx,
        mut r: ViolationRecord,
        contain: bool,
        base: u64,
        size: usize,
    ) {
        if contain {
            self.contain_record(cx, &mut r);
        }
        self.violate(rule, cx, r);
        if !contain {
            self.platform.mm_unmap_io_space(base, size);
        }
    }

    /// Bookkeeping when a mapping (of any kind) leaves the table.
    fn forget_mapping(&self, m: &Mapping) {
        if is_io_space(m.flags) {
            self.forget_head(&m.head);
        } else {
            self.forget_family(&m.head);
        }
    }

    /// [`forget_mapping`](Self::forget_mapping) of a mapping without its stack.
    fn forget_head(&self, m: &MappingHead) {
        if m.size != 0 {
            self.conflicts.remove(
                m.physical,
                m.size,
                CacheClass::of(m.cache, m.flags & FLAG_MAP_EX != 0),
            );
        }
    }

    // ---- records and actions ------------------------------------------------------------

    fn blank_record(&self, cx: &CallCtx) -> ViolationRecord {
        let mut r = ViolationRecord {
            timestamp_ns: cx.now,
            irql: cx.irql.0,
            processor: u16::try_from(cx.processor).unwrap_or(u16::MAX),
            driver_id: cx.driver.0,
            // Read here, not on every hook call: only records and user-space MDL
            // mappings need it.
            process_id: self.platform.current_process_id(),
            // Read here, not on every hook call, as the process id.
            thread_id: self.platform.current_thread_id(),
            driver_name: self.drivers.name(cx.driver),
            routine: cx.routine,
            ..Default::default()
        };
        let depth = self.settings.stack_depth().min(MAX_STACK);
        if let Some(frames) = r.call_stack.get_mut(..depth) {
            let n = self.platform.capture_stack(OWN_FRAMES, frames);
            r.call_stack_depth = u8::try_from(n.min(depth)).unwrap_or(0);
        }
        r
    }

    fn mapping_record(&self, cx: &CallCtx, m: &Mapping) -> ViolationRecord {
        let mut r = self.blank_record(cx);
        r.flags |= VF_MAPPING_KNOWN;
        if m.flags & FLAG_MAP_EX != 0 {
            r.flags |= VF_MAP_EX;
        }
        r.base = m.base;
        r.mapped_size = m.size;
        r.physical = m.physical;
        r.cache = m.cache;
        r.device = m.device;
        r.map_time_ns = m.map_time_ns;
        r.map_irql = m.irql;
        r.owner_id = m.driver;
        r.owner_name = self.drivers.name(DriverId(m.driver));
        copy_frames(&mut r.map_stack, &mut r.map_stack_depth, m.frames());
        if !is_io_space(m.flags) {
            self.family_fields(&mut r, m);
        }
        r
    }

    /// The fields of a record of an MDL mapping or reserved range: they keep their MDL in
    /// `physical` (crate::mdl), a user-space mapping its process in `device`. Out of line:
    /// the I/O-space hooks' records never take it.
    #[cold]
    #[inline(never)]
    fn family_fields(&self, r: &mut ViolationRecord, m: &Mapping) {
        r.kind = MappingKind::of(m.flags) as u8;
        r.mdl = m.physical;
        r.physical = 0;
        if m.flags & FLAG_USER != 0 {
            r.device = 0;
        }
        if self.is_sub_range(m) {
            r.flags |= VF_SUB_RANGE;
        }
    }

    /// Applies `rule`'s action to a violation described by `r`.
    fn violate(&self, rule: RuleId, cx: &CallCtx, mut r: ViolationRecord) {
        let action = self.settings.action(rule);
        self.stats.bump_rule(cx.processor, rule.index());
        let blamed = match rule.blamed(r.owner_id) {
            Blamed::Owner => DriverId(r.owner_id),
            Blamed::Caller => cx.driver,
        };
        self.stats
            .bump_driver(cx.processor, blamed, DriverCounter::Violations);
        if action == Action::Ignore {
            self.stats.bump(cx.processor, Counter::Ignored);
            return;
        }
        r.rule = rule.number();
        r.action = action as u8;
        let seq = self.journal.push_record(&r);
        self.stats.bump(cx.processor, Counter::Reported);
        match action {
            Action::Break => {
                self.stats.bump(cx.processor, Counter::Breaks);
                self.platform.debug_break();
            }
            Action::Bugcheck => {
                self.stats.bump(cx.processor, Counter::Bugchecks);
                self.platform.bugcheck(BugCheck {
                    p1: BUGCHECK_SIGNATURE | u64::from(rule.number()),
                    p2: if r.address != 0 { r.address } else { r.base },
                    p3: r.passed_size,
                    p4: seq,
                });
            }
            Action::Ignore | Action::Report => {}
        }
    }

    // ---- PnP and driver events (PASSIVE_LEVEL) ------------------------------------------

    /// A PnP event of `device`, whose function driver is `driver`.
    pub fn device_event(&self, driver: DriverId, device: u64, event: DeviceEvent) {
        let thread = self.platform.current_thread_id();
        match event {
            DeviceEvent::StartBegin => {
                self.drivers.start_begin(driver, device, thread);
            }
            DeviceEvent::StartEnd => self.drivers.start_end(driver, device),
            DeviceEvent::Stopped => {
                self.report_leaks(RuleId::LeakOnStop, |m| m.device == device, 0)
            }
            DeviceEvent::SurpriseRemoved | DeviceEvent::Removed => {
                self.drivers.start_end(driver, device);
                self.report_leaks(RuleId::LeakOnRemove, |m| m.device == device, 0);
            }
        }
    }

    /// Reports every live, not yet reported mapping that `pick` selects as a leak.
    fn report_leaks(&self, rule: RuleId, pick: impl Fn(&Mapping) -> bool, extra_flags: u8) {
        let cx = self.event_ctx();
        // An MDL's own system mapping is released with its MDL, possibly unseen
        // (crate::mdl): never a leak of the mapping.
        self.for_each_picked::<LEAK_BATCH>(
            |m| m.flags & FLAG_LEAK_REPORTED == 0 && !released_with_its_mdl(m.flags) && pick(m),
            |m| {
                if self.table.mark(m.base, m.map_time_ns, FLAG_LEAK_REPORTED) {
                    let mut r = self.mapping_record(&cx, m);
                    r.address = m.base;
                    r.flags |= extra_flags;
                    self.violate(rule, &cx, r);
                }
            },
        );
    }

    /// Walks the table and runs `act` on each live mapping `pick` selects — outside the
    /// walk, in batches of `BATCH`, so `act` may change the table (mark or remove
    /// entries). The batch is on the stack (`BATCH` × ~190 bytes): `LEAK_BATCH` for the
    /// leak reports, which run on the expanded stack; a hook on the caller's stack takes a
    /// small one.
    fn for_each_picked<const BATCH: usize>(
        &self,
        pick: impl Fn(&Mapping) -> bool,
        mut act: impl FnMut(&Mapping),
    ) {
        let mut cursor = 0usize;
        loop {
            let mut batch = [None::<Mapping>; BATCH];
            let mut n = 0usize;
            let end = self.table.walk(cursor, usize::MAX, |m| {
                if !pick(m) {
                    return true;
                }
                if let Some(slot) = batch.get_mut(n) {
                    *slot = Some(*m);
                    n = n.saturating_add(1);
                }
                n < batch.len()
            });
            batch.iter().flatten().for_each(&mut act);
            if end.done {
                break;
            }
            cursor = end.next;
        }
    }

    /// An image named `name` loaded at `[base, base + size)`. If it is a target, it is
    /// registered as attached and its id returned: the caller must now patch its imports
    /// (and call [`Verifier::driver_detached`] if that fails).
    pub fn image_loaded(&self, name: &[u8], base: u64, size: u64) -> Option<DriverId> {
        self.with_control(|c| {
            if c.targets.contains(name) {
                self.drivers.register(name, base, size, true, false)
            } else {
                None
            }
        })
    }

    /// Registers an explicit attach (control IOCTL) to an already loaded image. Its
    /// mappings made before the attach are unknown to iosv, so its unmaps of unknown bases
    /// are passed through unverified (counted), not reported as IOSV004 or contained.
    pub fn driver_attached(&self, name: &[u8], base: u64, size: u64) -> Option<DriverId> {
        self.with_control(|_| self.drivers.register(name, base, size, true, true))
    }

    /// `driver` is unloading (`detach == false`) or being detached: IOSV009 for its live
    /// mappings not yet reported (each mapping is reported once, whatever reported it
    /// first), and it is marked gone.
    ///
    /// Its mappings stay in the table either way: they are still mapped. After an unload
    /// they are leaked, so Mm cannot hand their addresses out again. After a detach they
    /// are flagged detached (listed as such): the driver keeps running unhooked and may
    /// unmap them where iosv cannot see it, so when Mm hands such an address out again
    /// the entry is replaced without IOSV013 (counted as an unverified unmap), and they
    /// are not compared for cache conflicts. Only an unmap iosv sees, or the image's
    /// unload (call this again with `detach == false` when a detached image unloads),
    /// removes a detached mapping.
    pub fn driver_detached(&self, driver: DriverId, detach: bool) {
        let flags = if detach { VF_DETACH } else { 0 };
        self.report_leaks(RuleId::LeakOnUnload, |m| m.driver == driver.0, flags);
        self.drivers.set_state(driver, DriverState::Gone);
        if detach {
            self.for_each_picked::<LEAK_BATCH>(
                |m| m.driver == driver.0 && m.flags & FLAG_DETACHED == 0,
                |m| {
                    self.table.mark(m.base, m.map_time_ns, FLAG_DETACHED);
                },
            );
        } else {
            self.for_each_picked::<LEAK_BATCH>(
                |m| m.driver == driver.0 && m.flags & FLAG_DETACHED != 0,
                |m| {
                    if let RemoveOutcome::Removed(gone) = self.table.remove(m.base) {
                        self.forget_mapping(&gone);
                    }
                },
            );
        }
    }
}

/// Fills the IOSV005-after-reuse fields of `r` from the caller's own tombstone `t`.
fn note_reuse(r: &mut ViolationRecord, t: &Tombstone) {
    r.flags |= VF_REUSED;
    r.other = t.unmap_time_ns;
    r.prior_size = t.size;
    r.prior_physical = t.physical;
    r.prior_map_time_ns = t.map_time_ns;
    r.prior_map_site = t.map_site;
}

fn copy_frames(dst: &mut [u64; MAX_STACK], depth: &mut u8, src: &[u64]) {
    let mut n = 0u8;
    for (d, s) in dst.iter_mut().zip(src.iter()) {
        *d = *s;
        n = n.saturating_add(1);
    }
    *depth = n;
}

mod mdl;
#[cfg(test)]
mod tests;
