//! Engine tests of the MDL and reserved-mapping family: each new rule fires on its bug and
//! only on it, containment decides what reaches Mm, implicit releases are silent, and the
//! leak rules cover the new kinds. The fake platform records every Mm call in order.

use super::super::*;
use crate::mdl::{
    MdlInfo, FLAG_MDL_DIRECT_IO, KERNEL_MODE, MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED,
    MDL_PARTIAL, MDL_PARTIAL_HAS_BEEN_MAPPED, USER_MODE,
};
use crate::pe::HookedRoutine;
use crate::platform::fake::{FakePlatform as Fake, MmCall as Call};
use crate::protocol::{
    routine_of_code, ConfigBlock, ViolationRecord, MK_IO_SPACE, MK_MDL, MK_RESERVED, RULE_SLOTS,
    VF_CONTAINED, VF_MAPPING_KNOWN, VF_SUB_RANGE,
};
use std::sync::atomic::Ordering;

const DRV: u64 = 0x3000_0000;
const MDL_A: u64 = 0xFFFF_C000_0000_1000;
const MDL_B: u64 = 0xFFFF_C000_0000_2000;
const MDL_C: u64 = 0xFFFF_C000_0000_3000;

const OTHER: u64 = 0x4000_0000;

struct Bed {
    v: Verifier<Fake>,
    drv: DriverId,
    cursor: core::cell::Cell<u64>,
}

fn bed() -> Bed {
    bed_with(256)
}

fn bed_with(capacity: usize) -> Bed {
    let fake = Fake::new();
    let params = StartParams {
        capacity,
        journal_records: 256,
        ..Default::default()
    };
    let v = Verifier::new(fake, params).unwrap();
    v.with_control(|c| c.targets.add(b"mdl.sys") && c.targets.add(b"other.sys"));
    let drv = v.image_loaded(b"mdl.sys", DRV, 0x10000).unwrap();
    v.image_loaded(b"other.sys", OTHER, 0x10000).unwrap();
    let b = Bed {
        v,
        drv,
        cursor: core::cell::Cell::new(0),
    };
    b.mdl(MDL_A, 0x200, 0x1800, MDL_PAGES_LOCKED);
    b.mdl(MDL_B, 0, 0x3000, MDL_PAGES_LOCKED);
    b
}

fn me() -> Caller {
    Caller::at(DRV + 0x123)
}

impl Bed {
    fn mdl(&self, mdl: u64, byte_offset: u32, byte_count: u32, flags: u16) {
        self.v.platform().mdls.lock().unwrap().insert(
            mdl,
            MdlInfo {
                byte_count,
                byte_offset,
                flags,
                mapped_system_va: 0,
                process: 0,
            },
        );
    }
    /// Marks the MDL as locking user-space pages of a process (`MDL.Process`), as
    /// `MmProbeAndLockPages` does for a direct-I/O request's buffer.
    fn user_pages(&self, mdl: u64) {
        if let Some(i) = self.v.platform().mdls.lock().unwrap().get_mut(&mdl) {
            i.process = 0x4711;
        }
    }
    fn records(&self) -> Vec<ViolationRecord> {
        let mut out = Vec::new();
        let end = self
            .v
            .journal()
            .read_records(self.cursor.get(), 1000, |r| out.push(*r));
        self.cursor.set(end.next);
        out
    }
    fn rules(&self) -> Vec<RuleId> {
        self.records()
            .iter()
            .filter_map(|r| RuleId::from_number(r.rule))
            .collect()
    }
    fn calls(&self) -> Vec<Call> {
        self.v.platform().take_mm_calls()
    }
    fn irql(&self, irql: Irql) {
        self.v.platform().irql.store(irql.0, Ordering::Relaxed);
    }
    fn process(&self, p: u64) {
        self.v.platform().process.store(p, Ordering::Relaxed);
    }
    fn containment_off(&self) {
        self.v.settings().apply(&ConfigBlock {
            flags: 0,
            actions: [1u8; RULE_SLOTS],
            ..Default::default()
        });
    }
    fn live(&self) -> usize {
        let mut n = 0;
        self.v.table().walk(0, usize::MAX, |_| {
            n += 1;
            true
        });
        n
    }
    fn map_kernel(&self, mdl: u64) -> u64 {
        let va = self
            .v
            .map_locked_pages_specify_cache(me(), mdl, KERNEL_MODE, 1, 0, 0, 16);
        assert_ne!(va, 0);
        va
    }
    fn reserve(&self, size: usize) -> u64 {
        let r = self
            .v
            .allocate_mapping_address(me(), size, u32::from_le_bytes(*b"Tag1"));
        assert_ne!(r, 0);
        r
    }
}

const TAG: u32 = u32::from_le_bytes(*b"Tag1");

#[test]
fn a_clean_mdl_mapping_is_tracked_with_its_kind_and_mdl_then_released() {
    let b = bed();
    let va = b.map_kernel(MDL_A);
    let m = b.v.table().get(va).unwrap();
    assert_eq!(MappingKind::of(m.flags), MappingKind::Mdl);
    assert_eq!((m.physical, m.size, m.driver), (MDL_A, 0x1800, b.drv.0));
    b.v.unmap_locked_pages(me(), va, MDL_A);
    assert_eq!(b.calls(), [Call::UnmapLocked(va, MDL_A)]);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
    // The MDL's later release finds nothing to check.
    b.v.io_free_mdl(me(), MDL_A);
    assert_eq!(b.calls(), [Call::FreeMdl(MDL_A)]);
    assert!(b.rules().is_empty());
}

#[test]
fn a_map_made_by_the_platform_is_tracked_the_same() {
    let b = bed();
    // What the Windows glue's C hook does: the real call, then the engine.
    let va = b.v.platform().mm_map_locked_pages(MDL_A, KERNEL_MODE);
    assert_eq!(
        b.v.track_locked_pages(
            me(),
            HookedRoutine::MapLockedPages,
            va,
            MDL_A,
            KERNEL_MODE,
            1
        ),
        va
    );
    assert_eq!(b.v.table().get(va).unwrap().physical, MDL_A);
    assert_eq!(
        b.v.track_locked_pages(
            me(),
            HookedRoutine::MapLockedPages,
            0,
            MDL_A,
            KERNEL_MODE,
            1
        ),
        0,
        "failed: nothing"
    );
    b.v.unmap_locked_pages(me(), va, MDL_A);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
}

#[test]
fn legacy_map_locked_pages_is_tracked_too() {
    let b = bed();
    let va = b.v.map_locked_pages(me(), MDL_B, KERNEL_MODE);
    assert_eq!(b.v.table().get(va).unwrap().cache, 1);
    b.v.unmap_locked_pages(me(), va, MDL_B);
    assert!(b.rules().is_empty());
}

#[test]
fn iosv015_unmap_with_another_mdl_is_contained_with_the_tracked_one() {
    let b = bed();
    let va = b.map_kernel(MDL_A);
    b.v.unmap_locked_pages(me(), va, MDL_B);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::MdlUnmapWrongMdl.number());
    assert_eq!(
        (r[0].mdl, r[0].passed_mdl, r[0].kind),
        (MDL_A, MDL_B, MK_MDL)
    );
    assert_ne!(r[0].flags & VF_CONTAINED, 0);
    assert_eq!(b.calls(), [Call::UnmapLocked(va, MDL_A)]);
    assert_eq!(b.live(), 0);
    // Without containment the call reaches Mm as made.
    b.containment_off();
    let va = b.map_kernel(MDL_A);
    b.v.unmap_locked_pages(me(), va, MDL_B);
    assert_eq!(b.rules(), [RuleId::MdlUnmapWrongMdl]);
    assert_eq!(b.calls(), [Call::UnmapLocked(va, MDL_B)]);
}

#[test]
fn iosv016_ceiling_depends_on_the_mappings_mode() {
    let b = bed();
    // System space: DISPATCH_LEVEL is fine, a DIRQL is not.
    let va = b.map_kernel(MDL_A);
    b.irql(Irql::DISPATCH);
    b.v.unmap_locked_pages(me(), va, MDL_A);
    assert!(b.rules().is_empty());
    b.irql(Irql::PASSIVE);
    let va = b.map_kernel(MDL_A);
    b.irql(Irql(5));
    b.v.unmap_locked_pages(me(), va, MDL_A);
    assert_eq!(b.rules(), [RuleId::MdlUnmapIrql]);
    // User space: APC_LEVEL is the ceiling.
    b.irql(Irql::PASSIVE);
    let uva =
        b.v.map_locked_pages_specify_cache(me(), MDL_B, USER_MODE, 1, 0, 0, 16);
    b.irql(Irql::APC);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    assert!(b.rules().is_empty());
    b.irql(Irql::PASSIVE);
    let uva =
        b.v.map_locked_pages_specify_cache(me(), MDL_B, USER_MODE, 1, 0, 0, 16);
    b.irql(Irql::DISPATCH);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    assert_eq!(b.rules(), [RuleId::MdlUnmapIrql]);
    // Not contained: every unmap reached Mm.
    assert_eq!(b.calls().len(), 4);
}

#[test]
fn iosv017_free_of_a_mapped_mdl_is_contained_by_unmapping_first() {
    let b = bed();
    let va = b.map_kernel(MDL_A);
    b.v.io_free_mdl(me(), MDL_A);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::MdlReleasedWhileMapped.number());
    assert_eq!((r[0].base, r[0].mdl), (va, MDL_A));
    assert_ne!(r[0].flags & VF_CONTAINED, 0);
    assert_eq!(
        b.calls(),
        [Call::UnmapLocked(va, MDL_A), Call::FreeMdl(MDL_A)]
    );
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv017_without_containment_is_reported_once_and_stays_listed() {
    let b = bed();
    b.containment_off();
    let va = b.map_kernel(MDL_A);
    b.v.unlock_pages(me(), MDL_B); // another MDL: nothing to do
    b.v.io_free_mdl(me(), MDL_A);
    assert_eq!(b.rules(), [RuleId::MdlReleasedWhileMapped]);
    assert_eq!(b.calls(), [Call::Unlock(MDL_B), Call::FreeMdl(MDL_A)]);
    assert_ne!(b.v.table().get(va).unwrap().flags & FLAG_LEAK_REPORTED, 0);
    // Reported: neither a second release nor the unload reports it again.
    b.v.unlock_pages(me(), MDL_A);
    b.v.driver_detached(b.drv, false);
    assert!(b.rules().is_empty());
}

#[test]
fn unlock_releases_a_system_mapping_by_itself_and_a_later_unmap_is_a_double_unmap() {
    let b = bed();
    let va = b.map_kernel(MDL_A);
    b.v.unlock_pages(me(), MDL_A);
    assert!(
        b.rules().is_empty(),
        "MmUnlockPages releases a system mapping"
    );
    assert_eq!(b.calls(), [Call::Unlock(MDL_A)]);
    assert_eq!(b.live(), 0);
    b.v.unmap_locked_pages(me(), va, MDL_A);
    assert_eq!(b.rules(), [RuleId::DoubleUnmap]);
    assert!(b.calls().is_empty(), "contained");
}

#[test]
fn freeing_a_mapped_partial_mdl_is_an_implicit_release() {
    let b = bed();
    b.mdl(
        MDL_A,
        0,
        0x1000,
        MDL_PARTIAL | MDL_PARTIAL_HAS_BEEN_MAPPED | MDL_MAPPED_TO_SYSTEM_VA,
    );
    b.map_kernel(MDL_A);
    b.v.io_free_mdl(me(), MDL_A);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::FreeMdl(MDL_A)]);
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv017_unlock_under_a_user_mapping() {
    let b = bed();
    let uva =
        b.v.map_locked_pages_specify_cache(me(), MDL_B, USER_MODE, 1, 0, 0, 16);
    b.v.unlock_pages(me(), MDL_B);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::MdlReleasedWhileMapped.number());
    assert_eq!(
        b.calls(),
        [Call::UnmapLocked(uva, MDL_B), Call::Unlock(MDL_B)]
    );
}

#[test]
fn iosv021_user_mapping_unmapped_in_another_process_is_contained() {
    let b = bed();
    let uva =
        b.v.map_locked_pages_specify_cache(me(), MDL_B, USER_MODE, 1, 0, 0, 16);
    b.process(8);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    assert_eq!(b.rules(), [RuleId::UnmapOtherProcess]);
    assert!(b.calls().is_empty());
    assert_eq!(b.v.table().get(uva).map(|m| m.device), Some(4));
    // Back in its own process the unmap is clean.
    b.process(4);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::UnmapLocked(uva, MDL_B)]);
}

#[test]
fn the_same_user_address_in_two_processes_is_no_stale_entry_and_no_foreign_unmap() {
    // User address spaces are per process: Mm may hand two processes the same address for
    // two MDL mappings. The table holds one entry per address: the first process's stays
    // tracked, the second's is remembered as untracked. Nothing is reported (IOSV013
    // replaced and forgot the first mapping; its unmap then became IOSV004), and each
    // process's unmap reaches Mm with its own MDL, in either order.
    const MDL_C: u64 = 0xFFFF_C000_0000_3000;
    for first_unmapper in [4, 8] {
        let b = bed();
        b.mdl(MDL_C, 0, 0x1000, MDL_PAGES_LOCKED);
        let page = 0x7_0000_0000;
        b.v.platform().reuse.lock().unwrap().push(page);
        let uva =
            b.v.map_locked_pages_specify_cache(me(), MDL_B, USER_MODE, 1, 0, 0, 16);
        b.process(8);
        b.v.platform().reuse.lock().unwrap().push(page);
        let other = Caller::at(OTHER + 0x40);
        let again =
            b.v.map_locked_pages_specify_cache(other, MDL_C, USER_MODE, 1, 0, 0, 16);
        assert_eq!(again, uva, "the same user address in both processes");
        assert!(b.rules().is_empty(), "no IOSV013");
        assert_eq!(b.v.table().get(uva).map(|m| m.device), Some(4));
        assert_eq!(b.v.untracked().live(), 1);
        b.calls();

        let (process, caller, mdl) = if first_unmapper == 8 {
            (8, other, MDL_C)
        } else {
            (4, me(), MDL_B)
        };
        b.process(process);
        b.v.unmap_locked_pages(caller, uva, mdl);
        assert!(b.rules().is_empty(), "process {process} unmaps its own");
        assert_eq!(b.calls(), [Call::UnmapLocked(uva, mdl)]);
        let (process, caller, mdl) = if first_unmapper == 8 {
            (4, me(), MDL_B)
        } else {
            (8, other, MDL_C)
        };
        b.process(process);
        b.v.unmap_locked_pages(caller, uva, mdl);
        assert!(b.rules().is_empty(), "then process {process}");
        assert_eq!(b.calls(), [Call::UnmapLocked(uva, mdl)]);
        assert_eq!(b.live(), 0);
        assert_eq!(b.v.untracked().live(), 0);
    }
}

#[test]
fn a_double_unmap_of_a_user_address_another_process_maps_now_is_iosv005() {
    // Process 4 maps and unmaps a user address; process 8 is then handed the same
    // address. Process 4's second unmap repeats its own (IOSV005, contained: process 8's
    // mapping stays tracked), where an unmap from a process that never mapped the
    // address is IOSV021.
    let b = bed();
    let page = 0x7_0000_0000;
    b.v.platform().reuse.lock().unwrap().push(page);
    let uva =
        b.v.map_locked_pages_specify_cache(me(), MDL_B, USER_MODE, 1, 0, 0, 16);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    b.process(8);
    b.v.platform().reuse.lock().unwrap().push(page);
    let again =
        b.v.map_locked_pages_specify_cache(me(), MDL_B, USER_MODE, 1, 0, 0, 16);
    assert_eq!(again, uva, "the same user address in process 8");
    b.calls();
    b.process(4);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::DoubleUnmap.number());
    assert_eq!(
        (r[0].base, r[0].mapped_size, r[0].process_id),
        (uva, 0x3000, 4)
    );
    assert_ne!(r[0].flags & VF_CONTAINED, 0);
    assert!(b.calls().is_empty());
    assert_eq!(b.v.table().get(uva).map(|m| m.device), Some(8));
    // A process that never mapped it: IOSV021.
    b.process(12);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    assert_eq!(b.rules(), [RuleId::UnmapOtherProcess]);
    // Its own process unmaps it cleanly.
    b.process(8);
    b.v.unmap_locked_pages(me(), uva, MDL_B);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
}

#[test]
fn a_clean_reserved_cycle_is_silent() {
    let b = bed();
    let range = b.reserve(0x4000);
    let va = b.v.map_reserved(me(), range, TAG, MDL_A, 1);
    assert_eq!(va, range + 0x200);
    let m = b.v.table().get(range).unwrap();
    assert_eq!(MappingKind::of(m.flags), MappingKind::Reserved);
    assert_eq!((m.physical, m.cache), (MDL_A, TAG));
    b.v.unmap_reserved(me(), range, TAG, MDL_A);
    b.v.free_mapping_address(me(), range, TAG);
    assert!(b.rules().is_empty());
    assert_eq!(
        b.calls(),
        [
            Call::MapReserved(range, TAG, MDL_A),
            Call::UnmapReserved(range, TAG, MDL_A),
            Call::FreeReserved(range, TAG)
        ]
    );
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv018_free_while_mapped_is_contained_by_unmapping_first() {
    let b = bed();
    let range = b.reserve(0x4000);
    b.v.map_reserved(me(), range, TAG, MDL_A, 1);
    b.calls();
    b.v.free_mapping_address(me(), range, TAG);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::ReservedFreedWhileMapped.number());
    assert_eq!((r[0].kind, r[0].mdl), (MK_RESERVED, MDL_A));
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(range, TAG, MDL_A),
            Call::FreeReserved(range, TAG)
        ]
    );
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv019_mapping_a_mapped_range_again_returns_null_and_keeps_the_first() {
    let b = bed();
    let range = b.reserve(0x4000);
    b.v.map_reserved(me(), range, TAG, MDL_A, 1);
    b.calls();
    assert_eq!(b.v.map_reserved(me(), range, TAG, MDL_B, 1), 0);
    assert_eq!(b.rules(), [RuleId::ReservedMappedTwice]);
    assert!(b.calls().is_empty());
    assert_eq!(b.v.table().get(range).unwrap().physical, MDL_A);
}

#[test]
fn iosv020_an_mdl_larger_than_the_range_is_refused() {
    let b = bed();
    let range = b.reserve(0x2000);
    // MDL_B spans 3 pages.
    assert_eq!(b.v.map_reserved(me(), range, TAG, MDL_B, 1), 0);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::ReservedSize.number());
    assert_eq!((r[0].mapped_size, r[0].passed_size), (0x2000, 0x3000));
    assert!(b.calls().is_empty());
    // MDL_A (0x200 + 0x1800) spans exactly 2 pages: fits.
    assert_ne!(b.v.map_reserved(me(), range, TAG, MDL_A, 1), 0);
    assert!(b.rules().is_empty());
}

#[test]
fn iosv015_and_iosv016_for_reserved_unmaps() {
    let b = bed();
    let range = b.reserve(0x4000);
    b.v.map_reserved(me(), range, TAG, MDL_A, 1);
    b.calls();
    b.irql(Irql(5));
    b.v.unmap_reserved(me(), range, TAG, MDL_B);
    assert_eq!(b.rules(), [RuleId::MdlUnmapIrql, RuleId::MdlUnmapWrongMdl]);
    assert_eq!(b.calls(), [Call::UnmapReserved(range, TAG, MDL_A)]);
    b.irql(Irql::PASSIVE);
    // Unmapped now: a second unmap is a double unmap, contained.
    b.v.unmap_reserved(me(), range, TAG, MDL_A);
    assert_eq!(b.rules(), [RuleId::DoubleUnmap]);
    assert!(b.calls().is_empty());
    // And above the ceiling, both.
    b.irql(Irql(5));
    b.v.unmap_reserved(me(), range, TAG, MDL_A);
    assert_eq!(b.rules(), [RuleId::MdlUnmapIrql, RuleId::DoubleUnmap]);
}

const WRONG_TAG: u32 = u32::from_le_bytes(*b"Tag2");

/// Checks one IOSV022 record: the routine, both tags, whether it was contained.
fn assert_tag_mismatch(r: &ViolationRecord, routine: HookedRoutine, contained: bool) {
    assert_eq!(r.rule, RuleId::ReservedTagMismatch.number());
    assert_eq!((r.cache, r.other_cache), (TAG, WRONG_TAG));
    assert_eq!(routine_of_code(r.routine), Some(routine));
    assert_eq!(r.kind, MK_RESERVED);
    assert_eq!(r.flags & VF_CONTAINED != 0, contained);
}

#[test]
fn iosv022_every_reserved_routine_with_another_tag_is_contained_with_the_ranges_own() {
    let b = bed();
    let range = b.reserve(0x4000);
    // The map is refused: nothing reaches Mm, NULL, the range stays unmapped.
    assert_eq!(b.v.map_reserved(me(), range, WRONG_TAG, MDL_A, 1), 0);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_tag_mismatch(
        &r[0],
        HookedRoutine::MapLockedPagesWithReservedMapping,
        true,
    );
    assert_eq!(r[0].passed_mdl, MDL_A);
    assert!(b.calls().is_empty());
    assert_eq!(b.v.table().get(range).unwrap().physical, 0);
    // Mapped right, then unmapped and freed with the wrong tag: both passed with the
    // range's own.
    assert_ne!(b.v.map_reserved(me(), range, TAG, MDL_A, 1), 0);
    b.calls();
    b.v.unmap_reserved(me(), range, WRONG_TAG, MDL_A);
    b.v.free_mapping_address(me(), range, WRONG_TAG);
    let r = b.records();
    assert_eq!(r.len(), 2);
    assert_tag_mismatch(&r[0], HookedRoutine::UnmapReservedMapping, true);
    assert_tag_mismatch(&r[1], HookedRoutine::FreeMappingAddress, true);
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(range, TAG, MDL_A),
            Call::FreeReserved(range, TAG)
        ]
    );
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv022_without_containment_passes_the_drivers_tag_and_checks_the_rest() {
    let b = bed();
    b.containment_off();
    let range = b.reserve(0x2000);
    // Another tag and an MDL too large: both reported, the call passed as made.
    assert_eq!(b.v.map_reserved(me(), range, WRONG_TAG, MDL_B, 1), range);
    assert_eq!(
        b.rules(),
        [RuleId::ReservedTagMismatch, RuleId::ReservedSize]
    );
    assert_eq!(b.calls(), [Call::MapReserved(range, WRONG_TAG, MDL_B)]);
    b.v.unmap_reserved(me(), range, WRONG_TAG, MDL_B);
    b.v.free_mapping_address(me(), range, TAG);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_tag_mismatch(&r[0], HookedRoutine::UnmapReservedMapping, false);
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(range, WRONG_TAG, MDL_B),
            Call::FreeReserved(range, TAG)
        ]
    );
}

#[test]
fn iosv022_a_free_of_a_mapped_range_with_another_tag_unmaps_and_frees_with_its_own() {
    let b = bed();
    let range = b.reserve(0x4000);
    b.v.map_reserved(me(), range, TAG, MDL_A, 1);
    b.calls();
    b.v.free_mapping_address(me(), range, WRONG_TAG);
    let r = b.records();
    assert_eq!(r.len(), 2);
    assert_tag_mismatch(&r[0], HookedRoutine::FreeMappingAddress, true);
    assert_eq!(r[1].rule, RuleId::ReservedFreedWhileMapped.number());
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(range, TAG, MDL_A),
            Call::FreeReserved(range, TAG)
        ]
    );
    assert_eq!(b.live(), 0);
}

#[test]
fn leaks_cover_the_new_kinds_once_each() {
    let b = bed();
    let uva =
        b.v.map_locked_pages_specify_cache(me(), MDL_A, USER_MODE, 1, 0, 0, 16);
    // A direct-I/O MDL's own system mapping is released with the MDL: not a leak.
    b.user_pages(MDL_B);
    let own = b.map_kernel(MDL_B);
    let range = b.reserve(0x1000);
    b.v.driver_detached(b.drv, false);
    let r = b.records();
    let mut seen: Vec<(u8, u64, u8)> = r.iter().map(|r| (r.rule, r.base, r.kind)).collect();
    seen.sort_unstable();
    let mut want = vec![(9, uva, MK_MDL), (9, range, MK_RESERVED)];
    want.sort_unstable();
    assert_eq!(seen, want);
    assert!(b.v.table().get(own).is_some(), "tracked, not reported");
}

#[test]
fn an_mdls_own_system_mapping_released_unseen_is_dropped_without_a_report() {
    // A direct-I/O dispatch maps the IRP's MDL (MmGetSystemAddressForMdlSafe); at
    // completion the I/O manager unlocks and frees it where iosv cannot see, and pool
    // hands the MDL's address out again.
    let b = bed();
    b.user_pages(MDL_B);
    let va = b.map_kernel(MDL_B);
    let m = b.v.table().get(va).unwrap();
    assert_ne!(m.flags & FLAG_MDL_DIRECT_IO, 0);
    b.v.platform().mm_unlock_pages(MDL_B); // not through iosv
    b.calls();
    // The driver frees an MDL at that address: the MDL no longer records the mapping.
    // No IOSV017, and no MmUnmapLockedPages of an address Mm may have reused.
    b.v.io_free_mdl(me(), MDL_B);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::FreeMdl(MDL_B)]);
    assert_eq!(b.live(), 0);

    // Released unseen again, then Mm hands the address to an I/O-space mapping: no
    // IOSV013 (no unmap was missed), and the unload reports only the new mapping.
    let va = b.map_kernel(MDL_B);
    b.v.platform().mm_unlock_pages(MDL_B);
    b.v.platform().reuse.lock().unwrap().push(va);
    let io = b.v.map_io_space(me(), 0xFED0_0000, 0x1000, 0);
    assert_eq!(io, va);
    assert!(b.rules().is_empty());
    b.v.driver_detached(b.drv, false);
    let r = b.records();
    assert_eq!(
        r.iter()
            .map(|r| (r.rule, r.base, r.kind))
            .collect::<Vec<_>>(),
        [(9, io, MK_IO_SPACE)]
    );
}

#[test]
fn only_the_mapping_its_mdl_records_is_released_by_an_unlock() {
    let b = bed();
    // Mapped twice: Mm records the second; MmUnlockPages releases only that one, and the
    // first stays mapped: IOSV017, contained by unmapping it.
    let first = b.map_kernel(MDL_B);
    let second = b.map_kernel(MDL_B);
    assert_eq!(
        b.v.table().get(first).unwrap().flags & FLAG_MDL_DIRECT_IO,
        0
    );
    b.calls();
    b.v.unlock_pages(me(), MDL_B);
    let r = b.records();
    assert_eq!(
        r.iter().map(|r| (r.rule, r.base)).collect::<Vec<_>>(),
        [(RuleId::MdlReleasedWhileMapped.number(), first)]
    );
    assert_eq!(
        b.calls(),
        [Call::UnmapLocked(first, MDL_B), Call::Unlock(MDL_B)]
    );
    assert!(b.v.table().get(second).is_none(), "released by the unlock");
    assert_eq!(b.live(), 0);
    // A partial MDL's recorded mapping is released by IoFreeMdl; a user-space mapping of
    // it is not (IOSV017).
    b.mdl(MDL_C, 0, 0x1000, MDL_PAGES_LOCKED | MDL_PARTIAL);
    let sys = b.map_kernel(MDL_C);
    let uva =
        b.v.map_locked_pages_specify_cache(me(), MDL_C, USER_MODE, 1, 0, 0, 16);
    b.calls();
    b.v.io_free_mdl(me(), MDL_C);
    let r = b.records();
    assert_eq!(
        r.iter().map(|r| (r.rule, r.base)).collect::<Vec<_>>(),
        [(RuleId::MdlReleasedWhileMapped.number(), uva)]
    );
    assert!(b.v.table().get(sys).is_none());
}

#[test]
fn wrong_routine_unmaps_are_unknown_and_contained() {
    let b = bed();
    let va = b.map_kernel(MDL_A);
    b.v.unmap_io_space(me(), va, 0x1800);
    assert_eq!(b.rules(), [RuleId::UnmapUnknown]);
    assert!(b.calls().is_empty());
    let io = b.v.map_io_space(me(), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_locked_pages(me(), io, MDL_A);
    assert_eq!(b.rules(), [RuleId::UnmapUnknown]);
    assert!(b.calls().is_empty());
    // The reserved routines on an I/O-space mapping (page-aligned, as a range is): IOSV004
    // naming the mapping, not passed, the entry kept.
    b.v.unmap_reserved(me(), io, TAG, MDL_A);
    b.v.free_mapping_address(me(), io, TAG);
    let r = b.records();
    assert_eq!(r.len(), 2);
    for r in &r {
        assert_eq!(r.rule, RuleId::UnmapUnknown.number());
        assert_eq!((r.base, r.physical, r.kind), (io, 0xFED0_0000, MK_IO_SPACE));
        assert_ne!(r.flags & VF_MAPPING_KNOWN, 0);
        assert_ne!(r.flags & VF_CONTAINED, 0);
    }
    assert!(b.calls().is_empty());
    // Both entries survived and unmap cleanly with their own routines.
    b.v.unmap_locked_pages(me(), va, MDL_A);
    b.v.unmap_io_space(me(), io, 0x1000);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
}

#[test]
fn a_reserved_routine_on_another_kind_without_containment_releases_it_and_passes() {
    let b = bed();
    b.containment_off();
    let io = b.v.map_io_space(me(), 0xFED0_0000, 0x1000, 0);
    b.v.free_mapping_address(me(), io, TAG);
    assert_eq!(b.rules(), [RuleId::UnmapUnknown]);
    assert_eq!(b.calls(), [Call::FreeReserved(io, TAG)]);
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv023_mapping_into_another_kinds_mapping_is_refused_and_both_stay() {
    let b = bed();
    let io = b.v.map_io_space(me(), 0xFED0_0000, 0x1000, 0);
    // MDL_B starts at offset 0 of its page: its mapping's base is a page, as a range's is.
    let va = b.map_kernel(MDL_B);
    b.calls();
    for (base, kind) in [(io, MK_IO_SPACE), (va, MK_MDL)] {
        assert_eq!(b.v.map_reserved(me(), base, TAG, MDL_A, 1), 0);
        let r = b.records();
        assert_eq!(r.len(), 1);
        let r = r[0];
        assert_eq!(r.rule, RuleId::ReservedMapNotReserved.number());
        assert_eq!((r.base, r.address, r.kind), (base, base, kind));
        assert_eq!(r.passed_mdl, MDL_A);
        assert_eq!(
            routine_of_code(r.routine),
            Some(HookedRoutine::MapLockedPagesWithReservedMapping)
        );
        assert_ne!(r.flags & VF_MAPPING_KNOWN, 0);
        assert_ne!(r.flags & VF_CONTAINED, 0);
        assert!(b.calls().is_empty(), "nothing reaches Mm");
    }
    // Both mappings are still tracked and unmap cleanly with their own routines.
    b.v.unmap_io_space(me(), io, 0x1000);
    b.v.unmap_locked_pages(me(), va, MDL_B);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv023_without_containment_is_reported_and_passed_and_the_mapping_stays() {
    let b = bed();
    b.containment_off();
    let io = b.v.map_io_space(me(), 0xFED0_0000, 0x1000, 0);
    b.calls();
    b.v.map_reserved(me(), io, TAG, MDL_A, 1);
    assert_eq!(b.rules(), [RuleId::ReservedMapNotReserved]);
    assert_eq!(b.calls(), [Call::MapReserved(io, TAG, MDL_A)]);
    assert_eq!(b.v.table().get(io).map(|m| m.physical), Some(0xFED0_0000));
}

#[test]
fn a_detached_drivers_mapping_may_be_gone_so_a_reserved_map_there_is_not_judged() {
    let b = bed();
    let other = Caller::at(OTHER + 0x10);
    let io = b.v.map_io_space(other, 0xFED0_0000, 0x1000, 0);
    let other_id = b.v.table().get(io).map(|m| DriverId(m.driver)).unwrap();
    b.v.driver_detached(other_id, true);
    b.records();
    b.calls();
    // other.sys may have unmapped it unhooked, and the address may be a range now.
    assert_ne!(b.v.map_reserved(me(), io, TAG, MDL_A, 1), 0);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::MapReserved(io, TAG, MDL_A)]);
}

/// MM_MAPPING_ADDRESS_DIVISIBLE (`MmAllocateMappingAddressEx` flag 1).
const DIVISIBLE: u32 = 1;

impl Bed {
    /// A divisible range of four pages, and MDLs A and B of two pages each at offset 0.
    fn divisible(&self) -> u64 {
        let r = self
            .v
            .allocate_mapping_address_ex(me(), 0x4000, TAG, DIVISIBLE);
        assert_ne!(r, 0);
        self.mdl(MDL_A, 0, 0x2000, MDL_PAGES_LOCKED);
        self.mdl(MDL_B, 0, 0x2000, MDL_PAGES_LOCKED);
        r
    }
}

#[test]
fn a_divisible_range_mapped_back_to_back_is_verified_and_silent() {
    // The double buffer of Microsoft's MIDI drivers: one range of two buffers' size,
    // one MDL mapped at its base and another at its middle, each unmapped at its own
    // address, then the range freed.
    let b = bed();
    let r = b.divisible();
    let half = r + 0x2000;
    assert_eq!(b.v.map_reserved(me(), r, TAG, MDL_A, 1), r);
    assert_eq!(b.v.map_reserved(me(), half, TAG, MDL_B, 1), half);
    // The second half is an entry of its own: a sub-range mapping of MDL B.
    let sub =
        b.v.table()
            .get(half)
            .expect("the sub-range mapping is tracked");
    assert_eq!((sub.size, sub.physical, sub.cache), (0x2000, MDL_B, TAG));
    assert_eq!(b.live(), 2);
    b.calls();
    b.v.unmap_reserved(me(), r, TAG, MDL_A);
    b.v.unmap_reserved(me(), half, TAG, MDL_B);
    b.v.free_mapping_address(me(), r, TAG);
    assert!(b.rules().is_empty());
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(r, TAG, MDL_A),
            Call::UnmapReserved(half, TAG, MDL_B),
            Call::FreeReserved(r, TAG)
        ]
    );
    assert_eq!(b.live(), 0);
    // The same unmap again: the graveyard remembers it, IOSV005, contained.
    b.v.unmap_reserved(me(), half, TAG, MDL_B);
    assert_eq!(b.rules(), [RuleId::DoubleUnmap]);
    assert!(b.calls().is_empty());
}

#[test]
fn sub_range_unmaps_are_checked_like_the_ranges_own() {
    let b = bed();
    let r = b.divisible();
    let half = r + 0x2000;
    b.v.map_reserved(me(), half, TAG, MDL_B, 1);
    b.calls();
    // Another MDL: IOSV015, contained by unmapping the tracked one.
    b.v.unmap_reserved(me(), half, TAG, MDL_A);
    assert_eq!(b.rules(), [RuleId::MdlUnmapWrongMdl]);
    assert_eq!(b.calls(), [Call::UnmapReserved(half, TAG, MDL_B)]);
    // Again, while the range lives: IOSV005, not passed.
    b.v.unmap_reserved(me(), half, TAG, MDL_B);
    let r5 = b.records();
    assert_eq!(r5.len(), 1);
    assert_eq!(r5[0].rule, RuleId::DoubleUnmap.number());
    assert_eq!((r5[0].base, r5[0].mapped_size), (half, 0x2000));
    assert!(b.calls().is_empty());
    // Another tag: IOSV022, passed with the range's own.
    b.v.map_reserved(me(), half, TAG, MDL_B, 1);
    b.calls();
    b.v.unmap_reserved(me(), half, WRONG_TAG, MDL_B);
    assert_eq!(b.rules(), [RuleId::ReservedTagMismatch]);
    assert_eq!(b.calls(), [Call::UnmapReserved(half, TAG, MDL_B)]);
    b.v.free_mapping_address(me(), r, TAG);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
}

#[test]
fn sub_range_maps_that_overlap_or_overrun_or_mistag_are_refused() {
    let b = bed();
    let r = b.divisible();
    // Three pages at the base reach into the third page.
    b.mdl(MDL_C, 0, 0x3000, MDL_PAGES_LOCKED);
    b.v.map_reserved(me(), r, TAG, MDL_C, 1);
    b.calls();
    assert_eq!(b.v.map_reserved(me(), r + 0x2000, TAG, MDL_B, 1), 0);
    assert_eq!(b.rules(), [RuleId::ReservedMappedTwice]);
    // Two pages from the last page run past the range's end.
    assert_eq!(b.v.map_reserved(me(), r + 0x3000, TAG, MDL_B, 1), 0);
    assert_eq!(b.rules(), [RuleId::ReservedSize]);
    // Another tag.
    b.v.unmap_reserved(me(), r, TAG, MDL_C);
    b.calls();
    assert_eq!(b.v.map_reserved(me(), r + 0x2000, WRONG_TAG, MDL_B, 1), 0);
    assert_eq!(b.rules(), [RuleId::ReservedTagMismatch]);
    assert!(b.calls().is_empty(), "nothing reached Mm");
    // A sub-range inside a live sub-range.
    b.v.map_reserved(me(), r + 0x1000, TAG, MDL_B, 1);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::MapReserved(r + 0x1000, TAG, MDL_B)]);
    assert_eq!(b.v.map_reserved(me(), r + 0x2000, TAG, MDL_A, 1), 0);
    assert_eq!(b.rules(), [RuleId::ReservedMappedTwice]);
    // Three pages at the base reach into that sub-range too.
    assert_eq!(b.v.map_reserved(me(), r, TAG, MDL_C, 1), 0);
    assert_eq!(b.rules(), [RuleId::ReservedMappedTwice]);
    assert!(b.calls().is_empty(), "nothing reached Mm");
    assert_eq!(b.live(), 2);
}

#[test]
fn freeing_a_divisible_range_with_a_live_sub_range_unmaps_it_first() {
    let b = bed();
    let r = b.divisible();
    let half = r + 0x2000;
    b.v.map_reserved(me(), half, TAG, MDL_B, 1);
    b.calls();
    b.v.free_mapping_address(me(), r, TAG);
    let rec = b.records();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].rule, RuleId::ReservedFreedWhileMapped.number());
    assert_eq!((rec[0].base, rec[0].mdl), (half, MDL_B));
    assert_ne!(rec[0].flags & VF_SUB_RANGE, 0, "named a sub-range mapping");
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(half, TAG, MDL_B),
            Call::FreeReserved(r, TAG)
        ]
    );
    assert_eq!(b.live(), 0);
}

#[test]
fn a_sub_range_leaks_on_its_own_and_cannot_be_freed_as_a_range() {
    let b = bed();
    let r = b.divisible();
    let half = r + 0x2000;
    b.v.map_reserved(me(), half, TAG, MDL_B, 1);
    b.calls();
    // MmFreeMappingAddress of the sub-range's address: IOSV004 naming it, not passed.
    b.v.free_mapping_address(me(), half, TAG);
    let rec = b.records();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].rule, rec[0].base),
        (RuleId::UnmapUnknown.number(), half)
    );
    assert_ne!(rec[0].flags & VF_SUB_RANGE, 0);
    assert!(b.calls().is_empty());
    b.v.driver_detached(b.drv, false);
    let mut leaked: Vec<(u64, bool)> = b
        .records()
        .iter()
        .map(|r| (r.base, r.flags & VF_SUB_RANGE != 0))
        .collect();
    leaked.sort_unstable();
    assert_eq!(leaked, [(r, false), (half, true)]);
}

#[test]
fn mm_unmap_io_space_at_the_page_of_an_mdl_mapping_is_iosv004_and_leaves_it_mapped() {
    let b = bed();
    // MDL A starts 0x200 into its page: the mapping's base does too.
    let va = b.map_kernel(MDL_A);
    assert_eq!(va & 0xFFF, 0x200);
    b.calls();
    b.v.unmap_io_space(me(), va & !0xFFF, 0x1800);
    let rec = b.records();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].rule, rec[0].base, rec[0].kind),
        (RuleId::UnmapUnknown.number(), va, MK_MDL)
    );
    assert_ne!(rec[0].flags & VF_CONTAINED, 0);
    assert!(b.v.platform().unmapped.lock().unwrap().is_empty());
    assert!(b.v.table().get(va).is_some());
    b.v.unmap_locked_pages(me(), va, MDL_A);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
}

#[test]
fn an_unmap_inside_a_divisible_range_at_no_mapped_address_is_iosv004() {
    // MmUnmapReservedMapping's BaseAddress must be an address the map returned.
    let b = bed();
    let r = b.divisible();
    b.calls();
    // Nothing was ever mapped at the range's third page: contained, not passed.
    b.v.unmap_reserved(me(), r + 0x2000, TAG, MDL_B);
    let rec = b.records();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].rule, RuleId::UnmapUnknown.number());
    assert_eq!((rec[0].address, rec[0].passed_mdl), (r + 0x2000, MDL_B));
    assert_ne!(rec[0].flags & VF_CONTAINED, 0);
    assert!(b.calls().is_empty());
    // Two pages mapped at the second page; an unmap at their second page is not their
    // address either, and leaves them mapped.
    assert_eq!(
        b.v.map_reserved(me(), r + 0x1000, TAG, MDL_B, 1),
        r + 0x1000
    );
    b.calls();
    b.v.unmap_reserved(me(), r + 0x2000, TAG, MDL_B);
    assert_eq!(b.rules(), [RuleId::UnmapUnknown]);
    assert!(b.calls().is_empty());
    assert!(b.v.table().get(r + 0x1000).is_some());
    // At the address the map returned: clean.
    b.v.unmap_reserved(me(), r + 0x1000, TAG, MDL_B);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::UnmapReserved(r + 0x1000, TAG, MDL_B)]);
    // Uncontained, the call reaches Mm as made.
    b.containment_off();
    b.v.unmap_reserved(me(), r + 0x3000, TAG, MDL_B);
    assert_eq!(b.rules(), [RuleId::UnmapUnknown]);
    assert_eq!(b.calls(), [Call::UnmapReserved(r + 0x3000, TAG, MDL_B)]);
}

#[test]
fn a_sub_range_map_passed_untracked_is_unmapped_without_a_report() {
    // Uncontained, an overlapping sub-range map is reported (IOSV019) and passed; iosv
    // keeps no entry for it, so its unmap is not judged.
    let b = bed();
    let r = b.divisible();
    b.containment_off();
    assert_eq!(b.v.map_reserved(me(), r, TAG, MDL_A, 1), r);
    assert_eq!(
        b.v.map_reserved(me(), r + 0x1000, TAG, MDL_B, 1),
        r + 0x1000
    );
    assert_eq!(b.rules(), [RuleId::ReservedMappedTwice]);
    b.calls();
    b.v.unmap_reserved(me(), r + 0x1000, TAG, MDL_B);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::UnmapReserved(r + 0x1000, TAG, MDL_B)]);
    assert_eq!(b.v.untracked().live(), 0);
    b.v.unmap_reserved(me(), r, TAG, MDL_A);
    b.v.free_mapping_address(me(), r, TAG);
    assert!(b.rules().is_empty());
}

#[test]
fn a_detached_drivers_divisible_range_may_hold_unhooked_mappings() {
    let b = bed();
    let r = b.divisible();
    b.v.driver_detached(b.drv, true);
    b.records();
    b.calls();
    b.v.unmap_reserved(me(), r + 0x2000, TAG, MDL_B);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::UnmapReserved(r + 0x2000, TAG, MDL_B)]);
}

#[test]
fn a_range_the_full_table_could_not_hold_is_used_and_freed_without_a_report() {
    let b = bed_with(16);
    // Fill every slot of the table.
    for i in 0..2000u64 {
        b.v.map_io_space(me(), 0xF000_0000 + i * 0x1000, 0x1000, 0);
    }
    let r = b.reserve(0x2000);
    assert!(b.v.table().get(r).is_none(), "the table had no room");
    b.mdl(MDL_B, 0x80, 0x1000, MDL_PAGES_LOCKED);
    b.calls();
    // The address returned carries the MDL's byte offset.
    let va = b.v.map_reserved(me(), r, TAG, MDL_B, 1);
    assert_eq!(va, r + 0x80);
    b.v.unmap_reserved(me(), va, TAG, MDL_B);
    b.v.free_mapping_address(me(), r, TAG);
    assert!(b.rules().is_empty());
    assert_eq!(
        b.calls(),
        [
            Call::MapReserved(r, TAG, MDL_B),
            Call::UnmapReserved(va, TAG, MDL_B),
            Call::FreeReserved(r, TAG)
        ]
    );
}

#[test]
fn iosv017_an_mdl_still_mapped_into_a_reserved_range_is_unlocked_or_freed() {
    let b = bed();
    let r = b.reserve(0x4000);
    assert_eq!(b.v.map_reserved(me(), r, TAG, MDL_B, 1), r);
    b.calls();
    // MmUnlockPages does not release a reserved mapping: contained by unmapping it.
    b.v.unlock_pages(me(), MDL_B);
    let rec = b.records();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].rule, rec[0].base, rec[0].kind, rec[0].mdl),
        (
            RuleId::MdlReleasedWhileMapped.number(),
            r,
            MK_RESERVED,
            MDL_B
        )
    );
    assert_ne!(rec[0].flags & VF_CONTAINED, 0);
    assert_eq!(
        b.calls(),
        [Call::UnmapReserved(r, TAG, MDL_B), Call::Unlock(MDL_B)]
    );
    // The range stays allocated, unmapped: mapping it again and freeing it are clean.
    assert_eq!(b.v.map_reserved(me(), r, TAG, MDL_A, 1), r + 0x200);
    b.v.unmap_reserved(me(), r + 0x200, TAG, MDL_A);
    b.v.free_mapping_address(me(), r, TAG);
    assert!(b.rules().is_empty());

    // A divisible range's sub-range mapping, its MDL freed: the same.
    let d = b.divisible();
    b.v.map_reserved(me(), d + 0x2000, TAG, MDL_B, 1);
    b.calls();
    b.v.io_free_mdl(me(), MDL_B);
    let rec = b.records();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        (rec[0].rule, rec[0].base),
        (RuleId::MdlReleasedWhileMapped.number(), d + 0x2000)
    );
    assert_ne!(rec[0].flags & VF_SUB_RANGE, 0);
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(d + 0x2000, TAG, MDL_B),
            Call::FreeMdl(MDL_B)
        ]
    );
    assert_eq!(b.live(), 1, "the range itself");
    b.v.free_mapping_address(me(), d, TAG);
    assert!(b.rules().is_empty());

    // Uncontained: reported once, the range stays mapped and listed.
    b.containment_off();
    let r = b.reserve(0x4000);
    b.v.map_reserved(me(), r, TAG, MDL_A, 1);
    b.calls();
    b.v.unlock_pages(me(), MDL_A);
    b.v.io_free_mdl(me(), MDL_A);
    assert_eq!(b.rules(), [RuleId::MdlReleasedWhileMapped]);
    assert_eq!(b.calls(), [Call::Unlock(MDL_A), Call::FreeMdl(MDL_A)]);
    assert_eq!(b.live(), 1);
}

#[test]
fn a_range_without_the_flag_is_mapped_and_unmapped_at_its_base() {
    let b = bed();
    let r = b.reserve(0x4000);
    b.mdl(MDL_B, 0, 0x2000, MDL_PAGES_LOCKED);
    b.calls();
    // Mm maps an address inside it at the range's base: the range's own mapping.
    b.v.map_reserved(me(), r + 0x2000, TAG, MDL_B, 1);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::MapReserved(r + 0x2000, TAG, MDL_B)]);
    assert_eq!(b.live(), 1);
    assert_eq!(b.v.table().get(r).map(|m| m.physical), Some(MDL_B));
    // Mapped twice through another address inside it: IOSV019.
    assert_eq!(b.v.map_reserved(me(), r + 0x1000, TAG, MDL_A, 1), 0);
    assert_eq!(b.rules(), [RuleId::ReservedMappedTwice]);
    // Unmapped through an address inside it, then freed: clean.
    b.v.unmap_reserved(me(), r + 0x3000, TAG, MDL_B);
    b.v.free_mapping_address(me(), r, TAG);
    assert!(b.rules().is_empty());
    assert_eq!(
        b.calls(),
        [
            Call::UnmapReserved(r + 0x3000, TAG, MDL_B),
            Call::FreeReserved(r, TAG)
        ]
    );
}

#[test]
fn a_range_of_part_pages_holds_whole_pages() {
    // 0x1800 bytes reserve two pages: an MDL of two pages fits (no IOSV020).
    let b = bed();
    let r = b.reserve(0x1800);
    b.mdl(MDL_B, 0, 0x1800, MDL_PAGES_LOCKED);
    assert_ne!(b.v.map_reserved(me(), r, TAG, MDL_B, 1), 0);
    assert!(b.rules().is_empty());
}

/// Every record names the routine it judges; the leaks, found at an event, none.
#[test]
fn records_name_the_routine_of_the_call_and_none_for_an_event() {
    let b = bed();
    let va = b.map_kernel(MDL_A);
    b.v.unmap_io_space(me(), va, 0x1800);
    let io = b.v.map_io_space(me(), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_locked_pages(me(), io, MDL_A);
    let range = b.reserve(0x4000);
    b.v.free_mapping_address(me(), range, TAG);
    b.v.free_mapping_address(me(), range, TAG);
    b.v.unmap_locked_pages(me(), va, MDL_A);
    b.v.unmap_locked_pages(me(), va, MDL_A);
    let routines: Vec<_> = b
        .records()
        .iter()
        .map(|r| (RuleId::from_number(r.rule), routine_of_code(r.routine)))
        .collect();
    assert_eq!(
        routines,
        [
            (
                Some(RuleId::UnmapUnknown),
                Some(HookedRoutine::UnmapIoSpace)
            ),
            (
                Some(RuleId::UnmapUnknown),
                Some(HookedRoutine::UnmapLockedPages)
            ),
            (
                Some(RuleId::DoubleUnmap),
                Some(HookedRoutine::FreeMappingAddress)
            ),
            (
                Some(RuleId::DoubleUnmap),
                Some(HookedRoutine::UnmapLockedPages)
            ),
        ]
    );
    b.v.driver_detached(b.drv, false);
    let leaks = b.records();
    assert_eq!(leaks.len(), 1, "the I/O-space mapping");
    assert_eq!(leaks[0].rule, RuleId::LeakOnUnload.number());
    assert_eq!(leaks[0].routine, 0);
}

#[test]
fn another_drivers_mdl_mapping_is_a_foreign_unmap_contained() {
    let b = bed();
    let va = b.map_kernel(MDL_A);
    let other = Caller::at(OTHER + 0x40);
    b.v.unmap_locked_pages(other, va, MDL_A);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::UnmapForeign.number());
    assert_eq!((r[0].kind, r[0].owner_id), (MK_MDL, b.drv.0));
    assert!(b.calls().is_empty(), "the owner's mapping stays mapped");
    b.v.unmap_locked_pages(me(), va, MDL_A);
    assert!(b.rules().is_empty());
    assert_eq!(b.live(), 0);
}

#[test]
fn unknown_mdl_unmap_is_contained() {
    let b = bed();
    b.v.unmap_locked_pages(me(), 0xFFFF_F800_7777_0000, MDL_A);
    assert_eq!(b.rules(), [RuleId::UnmapUnknown]);
    assert!(b.calls().is_empty());
}

#[test]
fn iosv003_map_ceiling_of_mdl_mappings_depends_on_the_mode() {
    let b = bed();
    // System space: DISPATCH_LEVEL is the ceiling.
    b.irql(Irql::DISPATCH);
    let va = b.map_kernel(MDL_A);
    assert!(b.rules().is_empty());
    b.irql(Irql(5));
    let va2 = b.map_kernel(MDL_B);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::MapIrql.number());
    assert_eq!(
        (r[0].kind, r[0].passed_mdl, r[0].address),
        (MK_MDL, MDL_B, va2)
    );
    assert_eq!(r[0].irql, 5);
    // Reported, not contained: the mapping is tracked as usual.
    assert_eq!(b.live(), 2);
    b.irql(Irql::PASSIVE);
    b.v.unmap_locked_pages(me(), va, MDL_A);
    b.v.unmap_locked_pages(me(), va2, MDL_B);
    // User space: APC_LEVEL is the ceiling, for MmMapLockedPages too.
    b.irql(Irql::APC);
    let u = b.v.map_locked_pages(me(), MDL_A, USER_MODE);
    assert!(b.rules().is_empty());
    b.irql(Irql::DISPATCH);
    let u2 = b.v.map_locked_pages(me(), MDL_B, USER_MODE);
    assert_eq!(b.rules(), [RuleId::MapIrql]);
    b.irql(Irql::APC);
    b.v.unmap_locked_pages(me(), u, MDL_A);
    b.v.unmap_locked_pages(me(), u2, MDL_B);
    assert!(b.rules().is_empty());
}

#[test]
fn iosv003_map_ceiling_of_a_failed_mdl_map_is_judged_too() {
    let b = bed();
    b.v.platform().fail_maps.store(true, Ordering::Relaxed);
    b.irql(Irql(5));
    assert_eq!(
        b.v.map_locked_pages_specify_cache(me(), MDL_A, KERNEL_MODE, 1, 0, 0, 16),
        0
    );
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].rule, r[0].address), (RuleId::MapIrql.number(), 0));
    assert_eq!(b.live(), 0);
}

#[test]
fn iosv003_reserved_ranges_are_allocated_at_apc_and_mapped_at_dispatch_at_most() {
    let b = bed();
    b.irql(Irql::APC);
    let range = b.reserve(0x4000);
    assert!(b.rules().is_empty());
    b.irql(Irql::DISPATCH);
    let other = b.reserve(0x4000);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::MapIrql.number());
    assert_eq!(
        (r[0].kind, r[0].passed_mdl, r[0].passed_size, r[0].address),
        (MK_RESERVED, 0, 0x4000, other)
    );
    // Mapping an MDL into a range: DISPATCH_LEVEL is fine, a DIRQL is not.
    assert_ne!(b.v.map_reserved(me(), range, TAG, MDL_A, 1), 0);
    assert!(b.rules().is_empty());
    b.irql(Irql(5));
    assert_ne!(b.v.map_reserved(me(), other, TAG, MDL_B, 1), 0);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].rule, r[0].kind, r[0].passed_mdl, r[0].address),
        (RuleId::MapIrql.number(), MK_RESERVED, MDL_B, other)
    );
}

#[test]
fn iosv016_free_of_a_reserved_range_above_apc_is_reported_and_passed() {
    let b = bed();
    let range = b.reserve(0x4000);
    b.irql(Irql::APC);
    b.v.free_mapping_address(me(), range, TAG);
    assert!(b.rules().is_empty());
    assert_eq!(b.calls(), [Call::FreeReserved(range, TAG)]);
    b.irql(Irql::PASSIVE);
    let range = b.reserve(0x4000);
    b.irql(Irql::DISPATCH);
    b.v.free_mapping_address(me(), range, TAG);
    let r = b.records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::MdlUnmapIrql.number());
    assert_eq!(
        (r[0].kind, r[0].address, r[0].base),
        (MK_RESERVED, range, range)
    );
    assert_eq!(b.calls(), [Call::FreeReserved(range, TAG)]);
    assert_eq!(b.live(), 0);
}
