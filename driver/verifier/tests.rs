//! Engine tests: each rule fires on its bug, and only on it; containment decides what
//! reaches Mm.

use super::*;
use crate::platform::fake::FakePlatform;
use crate::protocol::ViolationRecord;
use std::sync::atomic::Ordering;

const NIC: u64 = 0x1000_0000;
const GPU: u64 = 0x2000_0000;

struct Bed {
    v: Verifier<FakePlatform>,
    nic: DriverId,
    gpu: DriverId,
    cursor: core::cell::Cell<u64>,
}

fn bed() -> Bed {
    bed_with(StartParams {
        capacity: 256,
        journal_records: 256,
        ..Default::default()
    })
}

fn bed_with(params: StartParams) -> Bed {
    let v = Verifier::new(FakePlatform::new(), params).unwrap();
    v.with_control(|c| c.targets.add(b"nic.sys") && c.targets.add(b"gpu.sys"));
    let nic = v.image_loaded(b"nic.sys", NIC, 0x10000).unwrap();
    let gpu = v.image_loaded(b"gpu.sys", GPU, 0x10000).unwrap();
    Bed {
        v,
        nic,
        gpu,
        cursor: core::cell::Cell::new(0),
    }
}

fn at(image: u64) -> Caller {
    Caller::at(image + 0x123)
}

impl Bed {
    fn new_records(&self) -> Vec<ViolationRecord> {
        let mut out = Vec::new();
        let end = self
            .v
            .journal()
            .read_records(self.cursor.get(), 1000, |r| out.push(*r));
        assert_eq!(end.lost, 0);
        self.cursor.set(end.next);
        out
    }
    fn rules(&self) -> Vec<u8> {
        self.new_records().iter().map(|r| r.rule).collect()
    }
    fn unmapped(&self) -> Vec<(u64, usize)> {
        std::mem::take(&mut *self.v.platform().unmapped.lock().unwrap())
    }
    fn containment_off(&self) {
        self.v.settings().apply(&crate::protocol::ConfigBlock {
            flags: 0,
            actions: [1u8; crate::protocol::RULE_SLOTS],
            ..Default::default()
        });
    }
    fn set_irql(&self, irql: u8) {
        self.v.platform().irql.store(irql, Ordering::Relaxed);
    }
}

#[test]
fn well_behaved_map_unmap_is_silent_and_reaches_mm() {
    let b = bed();
    let base = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    assert_ne!(base, 0);
    assert_eq!(b.v.table().get(base).unwrap().driver, b.nic.0);
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    assert_eq!(b.unmapped(), [(base, 0x1000)]);
    assert!(b.rules().is_empty());
    assert!(b.v.table().get(base).is_none());
}

#[test]
fn iosv001_size_mismatch_contained_with_tracked_size() {
    let b = bed();
    let base = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x2000, 0);
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    let r = b.new_records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, 1);
    assert_eq!((r[0].mapped_size, r[0].passed_size), (0x2000, 0x1000));
    assert_ne!(r[0].flags & crate::protocol::VF_CONTAINED, 0);
    assert_eq!(crate::protocol::name_bytes(&r[0].driver_name), b"nic.sys");
    assert_eq!(b.unmapped(), [(base, 0x2000)]);

    b.v.settings().apply(&crate::protocol::ConfigBlock {
        flags: 0,
        actions: [1u8; crate::protocol::RULE_SLOTS],
        ..Default::default()
    });
    let base = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x2000, 0);
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    assert_eq!(b.rules(), [1]);
    assert_eq!(
        b.unmapped(),
        [(base, 0x1000)],
        "containment off passes the wrong size through"
    );
}

#[test]
fn iosv002_unmap_irql_ceiling_ddi_and_verifier_modes() {
    let b = bed();
    let base = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.set_irql(2);
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    assert!(
        b.rules().is_empty(),
        "DISPATCH_LEVEL is allowed by the DDI ceiling"
    );
    assert_eq!(b.unmapped(), [(base, 0x1000)]);
    b.set_irql(0);
    let base = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.settings().apply(&crate::protocol::ConfigBlock {
        flags: crate::protocol::CF_CONTAINMENT | crate::protocol::CF_VERIFIER_IRQL,
        actions: [1u8; crate::protocol::RULE_SLOTS],
        ..Default::default()
    });
    b.set_irql(2);
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    let r = b.new_records();
    assert_eq!(r.iter().map(|r| r.rule).collect::<Vec<_>>(), [2]);
    assert_eq!(r[0].irql, 2);
    assert_eq!(r[0].base, base);
    assert_eq!(
        b.unmapped(),
        [(base, 0x1000)],
        "an IRQL violation is not contained"
    );
}

#[test]
fn iosv003_and_iosv011_map_checks() {
    let b = bed();
    b.set_irql(5);
    let base = b.v.map_io_space(at(GPU), 0xE000_0000, 0x1000, 0);
    b.set_irql(0);
    assert_eq!(b.rules(), [3]);
    assert_ne!(base, 0, "the map itself is passed through");
    b.v.map_io_space(at(GPU), 0xE000_0000, 0, 0);
    b.v.map_io_space(at(GPU), 0xE100_0000, 0x1000, 9);
    b.v.map_io_space_ex(at(GPU), 0xE200_0000, 0x1000, crate::phys::PAGE_NOCACHE);
    let r = b.new_records();
    assert_eq!(r.iter().map(|r| r.rule).collect::<Vec<_>>(), [11, 11, 11]);
    assert_eq!(r[1].cache, 9);
    assert_ne!(r[2].flags & crate::protocol::VF_MAP_EX, 0);
}

#[test]
fn iosv004_unknown_is_contained() {
    let b = bed();
    b.v.unmap_io_space(at(NIC), 0xFFFF_F800_DEAD_0000, 0x1000);
    assert_eq!(b.rules(), [4]);
    assert!(b.unmapped().is_empty());
    // Non-canonical garbage is unknown too.
    b.v.unmap_io_space(at(NIC), 0x1234_5678_9ABC_DEF0, 0x1000);
    assert_eq!(b.rules(), [4]);
}

#[test]
fn iosv005_double_unmap_names_the_earlier_unmap() {
    let b = bed();
    let base = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    b.unmapped();
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    let r = b.new_records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, 5);
    assert_eq!(r[0].mapped_size, 0x1000);
    assert_ne!(r[0].other, 0, "time of the first unmap");
    assert!(b.unmapped().is_empty(), "contained");
}

#[test]
fn iosv006_interior_unmap_names_the_containing_mapping() {
    let b = bed();
    let base = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x4000, 0);
    b.v.unmap_io_space(at(NIC), base + 0x1000, 0x1000);
    let r = b.new_records();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].rule, r[0].base, r[0].address),
        (6, base, base + 0x1000)
    );
    assert!(b.unmapped().is_empty());
    assert!(b.v.table().get(base).is_some(), "the mapping stays live");
}

#[test]
fn iosv007_008_leaks_at_stop_and_remove_once_each_mapping() {
    let b = bed();
    let dev = 0xFFFF_A000_0000_1000;
    b.v.device_event(b.nic, dev, DeviceEvent::StartBegin);
    let bar0 = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    let bar1 = b.v.map_io_space(at(NIC), 0xFED1_0000, 0x1000, 0);
    b.v.device_event(b.nic, dev, DeviceEvent::StartEnd);
    let runtime = b.v.map_io_space(at(NIC), 0xFED2_0000, 0x1000, 0);
    assert_eq!(b.v.table().get(bar0).unwrap().device, dev);
    assert_eq!(b.v.table().get(runtime).unwrap().device, 0);
    b.v.unmap_io_space(at(NIC), bar1, 0x1000);
    b.v.device_event(b.nic, dev, DeviceEvent::Stopped);
    let r = b.new_records();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].rule, r[0].base, r[0].device), (7, bar0, dev));
    assert_eq!(r[0].map_stack_depth, 8);
    b.v.device_event(b.nic, dev, DeviceEvent::Removed);
    assert!(b.rules().is_empty(), "bar0 was reported already");

    let dev2 = 0xFFFF_A000_0000_2000;
    b.v.device_event(b.gpu, dev2, DeviceEvent::StartBegin);
    let fb = b.v.map_io_space(at(GPU), 0xC000_0000, 0x10000, 2);
    b.v.device_event(b.gpu, dev2, DeviceEvent::StartEnd);
    b.v.device_event(b.gpu, dev2, DeviceEvent::SurpriseRemoved);
    let r = b.new_records();
    assert_eq!((r.len(), r[0].rule, r[0].base), (1, 8, fb));
}

#[test]
fn iosv009_leak_on_unload_and_detach() {
    let b = bed();
    let a = b.v.map_io_space(at(GPU), 0xC000_0000, 0x1000, 1);
    b.v.driver_detached(b.gpu, false);
    let r = b.new_records();
    assert_eq!(
        (r.len(), r[0].rule, r[0].base, r[0].owner_id),
        (1, 9, a, b.gpu.0)
    );
    assert_eq!(r[0].flags & crate::protocol::VF_DETACH, 0);
    let c = b.v.map_io_space(at(NIC), 0xC100_0000, 0x1000, 1);
    b.v.driver_detached(b.nic, true);
    let r = b.new_records();
    assert_eq!((r.len(), r[0].rule, r[0].base), (1, 9, c));
    assert_ne!(r[0].flags & crate::protocol::VF_DETACH, 0);
}

#[test]
fn per_driver_violation_counts_follow_the_blame_rule() {
    use crate::stats::DriverCounter;
    let b = bed();
    let count = |d: DriverId| {
        b.v.stats().totals().per_driver[usize::from(d.0)][DriverCounter::Violations as usize]
    };
    // IOSV012: gpu unmaps nic's mapping: gpu is blamed, nic (the victim) is not.
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(at(GPU), a, 0x1000);
    assert_eq!((count(b.gpu), count(b.nic)), (1, 0));
    // IOSV009: nic's mapping leaks at its detach: nic, the owner, is blamed.
    b.v.driver_detached(b.nic, false);
    assert_eq!(b.new_records().last().map(|r| r.rule), Some(9));
    assert_eq!((count(b.gpu), count(b.nic)), (1, 1));
    // IOSV001 by an unattributed caller on gpu's mapping: unattributed (slot 0), not gpu.
    let g = b.v.map_io_space(at(GPU), 0xFED1_0000, 0x1000, 0);
    b.v.unmap_io_space(Caller::at(0), g, 0x2000);
    let r = b.new_records();
    assert_eq!((r.len(), r[0].rule), (1, 1));
    assert_eq!((r[0].owner_id, r[0].blamed_driver()), (b.gpu.0, 0));
    assert_eq!((count(DriverId::NONE), count(b.gpu)), (1, 1));
}

#[test]
fn iosv010_cache_conflict_only_on_overlap_with_other_type() {
    let b = bed();
    let a = b.v.map_io_space(at(GPU), 0xC000_0000, 0x10000, 1); // cached
    b.v.map_io_space(at(GPU), 0xC000_8000, 0x1000, 1); // same type: fine
    b.v.map_io_space(at(GPU), 0xC001_0000, 0x1000, 0); // adjacent, other type: fine
    assert!(b.rules().is_empty());
    b.v.map_io_space(at(NIC), 0xC000_F000, 0x2000, 0); // overlaps a, non-cached
    let r = b.new_records();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (
            r[0].rule,
            r[0].base,
            r[0].other,
            r[0].other_cache,
            r[0].cache
        ),
        (10, a, 0xC000_0000, 1, 0)
    );
    assert_eq!(r[0].flags & crate::protocol::VF_OTHER_MAP_EX, 0);
    b.v.unmap_io_space(at(GPU), a, 0x10000);
    b.v.map_io_space_ex(
        at(NIC),
        0xC000_0000,
        0x1000,
        crate::phys::PAGE_READWRITE | crate::phys::PAGE_NOCACHE,
    );
    assert!(
        b.rules().is_empty(),
        "a is gone; 0xC000_8000 (cached) does not overlap"
    );
}

#[test]
fn iosv012_foreign_unmap_is_contained_and_the_owner_keeps_its_mapping() {
    let b = bed();
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(at(GPU), a, 0x1000);
    let r = b.new_records();
    assert_eq!(
        (r.len(), r[0].rule, r[0].driver_id, r[0].owner_id),
        (1, 12, b.gpu.0, b.nic.0)
    );
    assert_ne!(r[0].flags & crate::protocol::VF_CONTAINED, 0);
    assert_eq!(r[0].flags & crate::protocol::VF_REUSED, 0);
    assert!(b.unmapped().is_empty(), "contained: not passed to Mm");
    assert_eq!(b.v.table().get(a).unwrap().driver, b.nic.0, "still nic's");
    // The owner's own unmap is then clean.
    b.v.unmap_io_space(at(NIC), a, 0x1000);
    assert!(b.rules().is_empty());
    assert_eq!(b.unmapped(), [(a, 0x1000)]);

    // Containment off: the call reaches Mm and the entry is gone.
    b.containment_off();
    let c = b.v.map_io_space(at(NIC), 0xFED1_0000, 0x1000, 0);
    b.v.unmap_io_space(at(GPU), c, 0x1000);
    let r = b.new_records();
    assert_eq!((r.len(), r[0].rule), (1, 12));
    assert_eq!(r[0].flags & crate::protocol::VF_CONTAINED, 0);
    assert_eq!(b.unmapped(), [(c, 0x1000)]);
    assert!(b.v.table().get(c).is_none());
}

#[test]
fn iosv005_stale_pointer_after_reuse_blames_the_stale_caller_and_spares_the_victim() {
    let b = bed();
    // nic maps and unmaps; Mm hands the same address to gpu.
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x2000, 0);
    b.v.unmap_io_space(at(NIC), a, 0x2000);
    b.v.platform().reuse.lock().unwrap().push(a);
    let g = b.v.map_io_space(at(GPU), 0xC000_0000, 0x3000, 1);
    assert_eq!(g, a, "address reused");
    assert_eq!(b.unmapped(), [(a, 0x2000)]);
    assert!(b.rules().is_empty());
    // nic unmaps again through its stale pointer.
    b.v.unmap_io_space(at(NIC), a, 0x2000);
    let r = b.new_records();
    assert_eq!(
        r.len(),
        1,
        "{:?}",
        r.iter().map(|x| x.rule).collect::<Vec<_>>()
    );
    let r = r[0];
    assert_eq!(r.rule, RuleId::DoubleUnmap.number());
    assert_eq!(
        (r.driver_id, r.owner_id),
        (b.nic.0, b.gpu.0),
        "both drivers"
    );
    assert_eq!(crate::protocol::name_bytes(&r.owner_name), b"gpu.sys");
    assert_ne!(r.flags & crate::protocol::VF_REUSED, 0);
    assert_ne!(r.flags & crate::protocol::VF_CONTAINED, 0);
    // The victim's live mapping and the caller's own earlier one.
    assert_eq!(
        (r.base, r.mapped_size, r.physical, r.cache),
        (a, 0x3000, 0xC000_0000, 1)
    );
    assert_eq!((r.prior_size, r.prior_physical), (0x2000, 0xFED0_0000));
    assert!(
        r.map_stack_depth > 0 && r.prior_map_site != 0,
        "both map sites"
    );
    assert!(
        r.other > r.prior_map_time_ns && r.map_time_ns > r.other,
        "map, unmap, reuse"
    );
    assert!(b.unmapped().is_empty(), "gpu's mapping was not torn down");
    assert_eq!(b.v.table().get(a).unwrap().driver, b.gpu.0);
    assert_eq!(b.v.stats().totals().per_rule[4], 1);
    // gpu's own, correct unmap is clean.
    b.v.unmap_io_space(at(GPU), a, 0x3000);
    assert!(b.rules().is_empty());
    assert_eq!(b.unmapped(), [(a, 0x3000)]);
}

#[test]
fn iosv005_stale_pointer_without_containment_reaches_mm() {
    let b = bed();
    b.containment_off();
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(at(NIC), a, 0x1000);
    b.v.platform().reuse.lock().unwrap().push(a);
    assert_eq!(b.v.map_io_space(at(GPU), 0xC000_0000, 0x1000, 1), a);
    b.unmapped();
    b.v.unmap_io_space(at(NIC), a, 0x1000);
    let r = b.new_records();
    assert_eq!((r.len(), r[0].rule, r[0].driver_id), (1, 5, b.nic.0));
    assert_eq!(r[0].flags & crate::protocol::VF_CONTAINED, 0);
    assert_eq!(b.unmapped(), [(a, 0x1000)]);
    assert!(b.v.table().get(a).is_none());
}

#[test]
fn iosv013_stale_entry_when_mm_reuses_a_base_we_still_hold() {
    let b = bed();
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    // The driver unmaps behind iosv's back; Mm hands the same VA out again.
    b.v.platform().reuse.lock().unwrap().push(a);
    let again = b.v.map_io_space(at(GPU), 0xFED0_0000, 0x3000, 0);
    assert_eq!(again, a);
    let r = b.new_records();
    assert_eq!(
        (r.len(), r[0].rule, r[0].mapped_size, r[0].passed_size),
        (1, 13, 0x1000, 0x3000)
    );
    assert_eq!(b.v.table().get(a).unwrap().size, 0x3000);
}

#[test]
fn actions_ignore_break_bugcheck() {
    let b = bed();
    b.v.settings()
        .set_action(RuleId::UnmapUnknown, Action::Ignore);
    b.v.unmap_io_space(at(NIC), 0xFFFF_F800_DEAD_0000, 0x1000);
    assert!(b.rules().is_empty());
    b.v.settings()
        .set_action(RuleId::UnmapUnknown, Action::Break);
    b.v.unmap_io_space(at(NIC), 0xFFFF_F800_DEAD_0000, 0x1000);
    assert_eq!(b.rules(), [4]);
    assert_eq!(b.v.platform().breaks.load(Ordering::Relaxed), 1);
    b.v.settings()
        .set_action(RuleId::UnmapUnknown, Action::Bugcheck);
    b.v.unmap_io_space(at(NIC), 0xFFFF_F800_DEAD_0000, 0x1000);
    let r = b.new_records();
    let bc = b.v.platform().bugchecks.lock().unwrap()[0];
    assert_eq!(bc.p1, crate::platform::BUGCHECK_SIGNATURE | 4);
    assert_eq!(
        (bc.p2, bc.p3, bc.p4),
        (0xFFFF_F800_DEAD_0000, 0x1000, r[0].seq)
    );
    let t = b.v.stats().totals();
    assert_eq!(t.get(Counter::Ignored), 1);
    assert_eq!(t.per_rule[3], 3);
}

#[test]
fn full_table_tracks_untracked_unmaps_without_reporting() {
    let b = bed_with(StartParams {
        capacity: 16,
        untracked: 16,
        ..Default::default()
    });
    let bases: Vec<u64> = (0..200u64)
        .map(|i| {
            b.v.map_io_space(at(NIC), 0xF000_0000 + i * 0x1000, 0x1000, 0)
        })
        .collect();
    let full = b.v.stats().totals().get(Counter::TableFull);
    assert!(full > 0);
    for base in &bases {
        b.v.unmap_io_space(at(NIC), *base, 0x1000);
    }
    assert!(
        b.rules().is_empty(),
        "no unmap of an untracked mapping is reported"
    );
    assert_eq!(b.unmapped().len(), 200, "every unmap reached Mm");
    assert_eq!(b.v.untracked().live(), 0);
}

#[test]
fn map_failure_is_counted_not_tracked() {
    let b = bed();
    b.v.platform().fail_maps.store(true, Ordering::Relaxed);
    assert_eq!(b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0), 0);
    assert_eq!(b.v.stats().totals().get(Counter::MapFailures), 1);
}

#[test]
fn image_loaded_registers_only_targets() {
    let b = bed();
    assert_eq!(b.v.image_loaded(b"disk.sys", 0x3000_0000, 0x1000), None);
    b.v.with_control(|c| c.targets.add(b"DISK.SYS"));
    let id = b.v.image_loaded(b"disk.sys", 0x3000_0000, 0x1000).unwrap();
    assert_eq!(b.v.drivers().attribute(0x3000_0010), id);
}

#[test]
fn unattributed_callers_are_still_checked() {
    let b = bed();
    let a = b.v.map_io_space(Caller::at(0), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(Caller::at(0), a, 0x2000);
    let r = b.new_records();
    assert_eq!((r[0].rule, r[0].driver_id), (1, 0));
}

#[test]
fn a_call_through_a_drivers_import_slot_is_blamed_on_that_driver() {
    // A tail call (`jmp [IAT]`) hands the hook the return address of whoever called the
    // routine that jumped: outside every driver (the I/O manager, KMDF), or inside
    // another driver. The importer the hook names wins over it.
    let b = bed();
    let outside = Caller::through(b.nic, 0xFFFF_F800_0000_1000);
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x2000, 0);
    b.v.unmap_io_space(outside, a, 0x1000);
    let r = b.new_records();
    assert_eq!((r.len(), r[0].rule, r[0].driver_id), (1, 1, b.nic.0));
    assert_eq!(
        b.v.stats().totals().per_driver[usize::from(b.nic.0)][1],
        1,
        "the unmap is counted for the importer"
    );
    // Returning into the GPU driver's image: still the NIC driver's own unmap, so no
    // IOSV012 (foreign unmap) either.
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(Caller::through(b.nic, GPU + 0x40), a, 0x1000);
    assert!(b.rules().is_empty());
    // Without the importer, the same call is judged by its return address: foreign.
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(at(GPU), a, 0x1000);
    assert_eq!(b.rules(), [12]);
}

#[test]
fn an_importer_no_longer_attached_falls_back_to_the_return_address() {
    let b = bed();
    // A call that was in flight through the NIC driver's slot when it was detached.
    b.v.driver_detached(b.nic, true);
    let a =
        b.v.map_io_space(Caller::through(b.nic, GPU + 0x40), 0xFED0_0000, 0x1000, 0);
    assert_eq!(b.v.table().get(a).unwrap().driver, b.gpu.0);
    let a =
        b.v.map_io_space(Caller::through(b.nic, 0), 0xFED1_0000, 0x1000, 0);
    assert_eq!(b.v.table().get(a).unwrap().driver, 0);
    // An id past the registry, or none, is no importer either.
    let a = b.v.map_io_space(
        Caller::through(DriverId(999), GPU + 0x40),
        0xFED2_0000,
        0x1000,
        0,
    );
    assert_eq!(b.v.table().get(a).unwrap().driver, b.gpu.0);
    let a = b.v.map_io_space(
        Caller::through(DriverId::NONE, GPU + 0x40),
        0xFED3_0000,
        0x1000,
        0,
    );
    assert_eq!(b.v.table().get(a).unwrap().driver, b.gpu.0);
}

#[test]
fn engine_value_is_small_enough_for_a_kernel_stack() {
    // Kernel stacks are 24 KiB on x64; the engine's tables are on the heap (the value
    // holds their pointers, the settings and the 512-byte target list).
    assert!(
        core::mem::size_of::<Verifier<FakePlatform>>() <= 2048,
        "{}",
        core::mem::size_of::<Verifier<FakePlatform>>()
    );
}

#[test]
fn late_attached_driver_unmaps_of_unknown_bases_pass_through_unverified() {
    let b = bed();
    let late =
        b.v.driver_attached(b"late.sys", 0x3000_0000, 0x1000)
            .unwrap();
    let at_late = Caller::at(0x3000_0010);
    // Mapped before the attach: iosv never saw it.
    b.v.unmap_io_space(at_late, 0xFFFF_F800_1234_0000, 0x1000);
    assert!(b.rules().is_empty());
    assert_eq!(b.unmapped(), [(0xFFFF_F800_1234_0000, 0x1000)]);
    assert_eq!(b.v.stats().totals().get(Counter::UnverifiedUnmaps), 1);
    // Its double unmaps are still caught.
    let a = b.v.map_io_space(at_late, 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(at_late, a, 0x1000);
    b.v.unmap_io_space(at_late, a, 0x1000);
    assert_eq!(b.rules(), [5]);
    assert!(b.v.drivers().attached_late(late));
}

#[test]
fn detach_keeps_live_mappings_flagged_until_seen_unmapped_reused_or_unloaded() {
    let b = bed();
    let a = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    let a2 = b.v.map_io_space(at(NIC), 0xFED1_0000, 0x1000, 0);
    let g = b.v.map_io_space(at(GPU), 0xC000_0000, 0x1000, 0);
    b.v.driver_detached(b.nic, true);
    assert_eq!(b.rules(), [9, 9]);
    for base in [a, a2] {
        let m =
            b.v.table()
                .get(base)
                .expect("a detached driver's mapping stays listed");
        assert_ne!(m.flags & FLAG_DETACHED, 0);
        assert_ne!(m.flags & FLAG_LEAK_REPORTED, 0);
    }
    // A detached mapping is not compared for cache conflicts (it may be gone).
    b.v.map_io_space(at(GPU), 0xFED0_0000, 0x1000, 1);
    assert!(b.rules().is_empty());
    // The detached driver unmapped `a` unhooked; Mm hands its address out again: no
    // IOSV013, counted as unverified.
    b.v.platform().reuse.lock().unwrap().push(a);
    assert_eq!(b.v.map_io_space(at(GPU), 0xFED2_0000, 0x1000, 0), a);
    assert!(b.rules().is_empty());
    assert_eq!(b.v.stats().totals().get(Counter::UnverifiedUnmaps), 1);
    assert_eq!(b.v.table().get(a).unwrap().driver, b.gpu.0);
    // Attached again, it unmaps `a2` where iosv sees it: clean, removed.
    let again = b.v.driver_attached(b"nic.sys", NIC, 0x10000).unwrap();
    assert_eq!(again, b.nic);
    b.v.unmap_io_space(at(NIC), a2, 0x1000);
    assert!(b.rules().is_empty());
    assert!(b.v.table().get(a2).is_none());
    // A detached mapping is removed at the image's unload, reported only once.
    let a3 = b.v.map_io_space(at(NIC), 0xFED3_0000, 0x1000, 0);
    b.v.driver_detached(b.nic, true);
    assert_eq!(b.rules(), [9]);
    b.v.driver_detached(b.nic, false);
    assert!(b.rules().is_empty(), "each mapping is reported once");
    assert!(b.v.table().get(a3).is_none());
    // An unloaded driver's leaks stay: still mapped, Mm cannot reuse their addresses.
    b.v.driver_detached(b.gpu, false);
    assert_eq!(
        b.rules(),
        [9, 9, 9],
        "g, the mapping of nic's old physical page, and a"
    );
    let m =
        b.v.table()
            .get(g)
            .expect("an unloaded driver's leak stays mapped");
    assert_eq!(m.flags & FLAG_DETACHED, 0);
}

#[test]
fn leaks_are_reported_once_whichever_event_comes_first() {
    let b = bed();
    let dev = 0xFFFF_A000_0000_1000;
    b.v.device_event(b.nic, dev, DeviceEvent::StartBegin);
    let bar = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.device_event(b.nic, dev, DeviceEvent::StartEnd);
    b.v.device_event(b.nic, dev, DeviceEvent::Stopped);
    b.v.device_event(b.nic, dev, DeviceEvent::SurpriseRemoved);
    b.v.device_event(b.nic, dev, DeviceEvent::Removed);
    b.v.driver_detached(b.nic, true);
    b.v.driver_detached(b.nic, false);
    let r = b.new_records();
    assert_eq!((r.len(), r[0].rule, r[0].base), (1, 7, bar));
}

#[test]
fn iosv010_compares_whole_pages() {
    let b = bed();
    // Two halves of one physical page, MmNonCached and MmCached: they share the page.
    let lo = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x800, 0);
    let hi = b.v.map_io_space(at(GPU), 0xFED0_0800, 0x800, 1);
    let r = b.new_records();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (
            r[0].rule,
            r[0].base,
            r[0].other,
            r[0].address,
            r[0].driver_id
        ),
        (10, lo, 0xFED0_0000, hi, b.gpu.0)
    );
    assert_eq!(
        crate::phys::shared_pages(
            r[0].physical,
            r[0].passed_size,
            r[0].other,
            r[0].mapped_size
        ),
        Some((0xFED0_0000, 0xFED0_1000))
    );
    // The next page, other type: no page in common.
    b.v.map_io_space(at(GPU), 0xFED0_1000, 0x800, 1);
    // The last byte of the page before, other type.
    b.v.map_io_space(at(GPU), 0xFECF_FFFF, 1, 2);
    assert!(b.rules().is_empty());
    // One byte into lo's page from the page before: conflict.
    b.v.map_io_space(at(GPU), 0xFECF_FFFF, 2, 2);
    assert_eq!(b.rules(), [10]);
}

#[test]
fn iosv014_unmap_at_the_page_of_an_unaligned_base_is_contained_with_the_tracked_base() {
    let b = bed();
    // MmMapIoSpace of an unaligned physical address returns page + offset.
    let base = b.v.map_io_space(at(NIC), 0xFED0_0800, 0x1000, 0);
    assert_eq!(base & 0xFFF, 0x800);
    let page = base & !0xFFF;
    b.v.unmap_io_space(at(NIC), page, 0x1000);
    let r = b.new_records();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, RuleId::UnmapPageBase.number());
    assert_eq!((r[0].address, r[0].base), (page, base));
    assert_eq!((r[0].passed_size, r[0].mapped_size), (0x1000, 0x1000));
    assert_ne!(r[0].flags & crate::protocol::VF_CONTAINED, 0);
    // Mm would unmap one page from `page`; the mapping spans two.
    assert_eq!(crate::phys::span_pages(page, 0x1000), Some(1));
    assert_eq!(crate::phys::span_pages(base, 0x1000), Some(2));
    assert_eq!(
        b.unmapped(),
        [(base, 0x1000)],
        "unmapped with the tracked base and size"
    );
    assert!(b.v.table().get(base).is_none());
    // Its base again is a double unmap; a page-aligned mapping's base is a plain base.
    b.v.unmap_io_space(at(NIC), base, 0x1000);
    assert_eq!(b.rules(), [5]);

    b.containment_off();
    let base = b.v.map_io_space(at(NIC), 0xFED1_0010, 0x100, 0);
    b.v.unmap_io_space(at(NIC), base & !0xFFF, 0x100);
    assert_eq!(b.rules(), [14]);
    assert_eq!(
        b.unmapped(),
        [(base & !0xFFF, 0x100)],
        "passed through as made"
    );
    assert!(b.v.table().get(base).is_none());
}

#[test]
fn iosv014_wins_over_an_old_tombstone_of_the_same_page_and_a_stale_page_is_iosv005() {
    let b = bed();
    // nic maps and unmaps a page-aligned mapping; Mm reuses its page for nic's unaligned
    // mapping; nic unmaps at the page: the live mapping's page, not the old base.
    let old = b.v.map_io_space(at(NIC), 0xFED0_0000, 0x1000, 0);
    b.v.unmap_io_space(at(NIC), old, 0x1000);
    b.v.platform().reuse.lock().unwrap().push(old);
    let base = b.v.map_io_space(at(NIC), 0xFED1_0800, 0x1000, 0);
    assert_eq!(base, old + 0x800);
    b.unmapped();
    b.v.unmap_io_space(at(NIC), old, 0x1000);
    assert_eq!(b.rules(), [14]);
    assert_eq!(b.unmapped(), [(base, 0x1000)]);

    // The same page given to gpu's unaligned mapping: nic's pointer is stale.
    let old = b.v.map_io_space(at(NIC), 0xFED2_0000, 0x1000, 0);
    b.v.unmap_io_space(at(NIC), old, 0x1000);
    b.v.platform().reuse.lock().unwrap().push(old);
    let theirs = b.v.map_io_space(at(GPU), 0xFED3_0800, 0x1000, 0);
    assert_eq!(theirs, old + 0x800);
    b.unmapped();
    b.v.unmap_io_space(at(NIC), old, 0x1000);
    let r = b.new_records();
    assert_eq!(
        (r.len(), r[0].rule, r[0].driver_id, r[0].owner_id),
        (1, 5, b.nic.0, b.gpu.0)
    );
    assert_ne!(r[0].flags & crate::protocol::VF_REUSED, 0);
    assert!(b.unmapped().is_empty(), "contained");
    assert!(b.v.table().get(theirs).is_some(), "gpu's mapping survives");
}

#[test]
fn an_unmap_in_a_mappings_page_but_outside_its_bytes_is_iosv006_not_unknown() {
    // Mm unmaps whole pages from the address's page: an address in a mapping's page is
    // that mapping's business, whether or not it falls in the bytes mapped.
    let b = bed();
    // Below an unaligned base, in its first page.
    let hi = b.v.map_io_space(at(NIC), 0xFED0_0800, 0x1000, 0);
    // Past a short mapping's bytes, in its page.
    let short = b.v.map_io_space(at(NIC), 0xFED1_0000, 0x100, 0);
    // Past a mapping's last byte, in its last page.
    let long = b.v.map_io_space(at(NIC), 0xFED2_0000, 0x1100, 0);
    b.unmapped();
    for (addr, owner) in [
        (hi - 0x400, hi),
        (short + 0x800, short),
        (long + 0x1800, long),
    ] {
        b.v.unmap_io_space(at(NIC), addr, 0x1000);
        let r = b.new_records();
        assert_eq!(
            (r.len(), r[0].rule, r[0].address, r[0].base),
            (1, RuleId::UnmapInterior.number(), addr, owner),
            "{addr:#x}"
        );
        assert_ne!(r[0].flags & crate::protocol::VF_CONTAINED, 0);
    }
    assert!(b.unmapped().is_empty(), "contained: nothing reached Mm");
    // In no mapping's page at all: still unknown.
    b.v.unmap_io_space(at(NIC), long + 0x2800, 0x1000);
    assert_eq!(b.rules(), [RuleId::UnmapUnknown.number()]);
    for base in [hi, short, long] {
        assert!(b.v.table().get(base).is_some());
    }
}

#[test]
fn an_unmap_at_the_page_of_another_drivers_unaligned_base_is_iosv012_and_leaves_it_mapped() {
    let b = bed();
    let theirs = b.v.map_io_space(at(NIC), 0xFED0_0800, 0x1000, 0);
    let page = theirs & !0xFFF;
    b.unmapped();
    // gpu never mapped that page: a foreign unmap, as at the exact base (not IOSV014,
    // whose containment unmaps the mapping).
    b.v.unmap_io_space(at(GPU), page, 0x1000);
    let r = b.new_records();
    assert_eq!(
        (r.len(), r[0].rule, r[0].driver_id, r[0].owner_id),
        (1, RuleId::UnmapForeign.number(), b.gpu.0, b.nic.0)
    );
    assert_eq!((r[0].address, r[0].base), (page, theirs));
    assert_ne!(r[0].flags & crate::protocol::VF_CONTAINED, 0);
    assert!(b.unmapped().is_empty(), "contained: nothing reaches Mm");
    assert!(
        b.v.table().get(theirs).is_some(),
        "nic's mapping stays tracked"
    );
    // nic's own unmap is clean.
    b.v.unmap_io_space(at(NIC), theirs, 0x1000);
    assert!(b.rules().is_empty());
    assert_eq!(b.unmapped(), [(theirs, 0x1000)]);

    // Uncontained: reported, passed as made, the entry leaves the table.
    b.containment_off();
    let theirs = b.v.map_io_space(at(NIC), 0xFED1_0800, 0x1000, 0);
    let page = theirs & !0xFFF;
    b.v.unmap_io_space(at(GPU), page, 0x1000);
    assert_eq!(b.rules(), [RuleId::UnmapForeign.number()]);
    assert_eq!(b.unmapped(), [(page, 0x1000)]);
    assert!(b.v.table().get(theirs).is_none());
}

#[test]
fn mapping_records_carry_the_detached_flag_on_the_wire() {
    assert_eq!(FLAG_DETACHED, crate::protocol::MF_DETACHED);
    assert_eq!(FLAG_LEAK_REPORTED, crate::protocol::MF_LEAK_REPORTED);
    assert_eq!(FLAG_MAP_EX, crate::protocol::MF_MAP_EX);
}
