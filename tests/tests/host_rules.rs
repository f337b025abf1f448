//! Each rule's bug, committed by a simulated driver in the user-mode host, produces exactly
//! the expected violation — rule, blamed driver, device, addresses and sizes — and nothing
//! else; well-behaved drivers produce none; containment keeps the simulated system sound,
//! and without it the bad call does reach the simulated Mm.

use iosv::config::StartParams;
use iosv::platform::{Irql, BUGCHECK_SIGNATURE};
use iosv::protocol::{
    name_bytes, ViolationRecord, CF_CONTAINMENT, CF_VERIFIER_IRQL, MF_DETACHED, MF_LEAK_REPORTED,
    VF_CONTAINED, VF_DETACH, VF_MAPPING_KNOWN, VF_REUSED,
};
use iosv::rules::{Action, RuleId, RULE_COUNT};
use iosv_host::image::{kernel_frames, IMAGE_SIZE};
use iosv_host::mm::{Corruption, MM_CACHED, MM_NON_CACHED, NEVER_MAPPED_START};
use iosv_host::{thread, Bar, Behaviour, Host, HostError, Routine};
use iosv_tests::control::{add_target, configure, mappings, violations};
use std::sync::Arc;

const BAR0: Bar = Bar {
    physical: 0xF000_0000,
    size: 0x8000,
    cache: MM_NON_CACHED,
};
const BAR1: Bar = Bar {
    physical: 0xF001_0000,
    size: 0x1000,
    cache: MM_NON_CACHED,
};

/// A host with two target drivers (`a.sys`, `b.sys`), `a.sys` owning started device `a0`.
fn system() -> Arc<Host> {
    let host = Host::with_processors(
        StartParams {
            journal_records: 4096,
            ..Default::default()
        },
        4,
    )
    .unwrap();
    let host = Arc::new(host);
    for name in ["a.sys", "b.sys"] {
        host.declare_driver(name, Behaviour::WellBehaved, 0);
        add_target(&host, name).unwrap();
        assert!(host.load_driver(name).unwrap().driver_id().is_some());
    }
    let dev = host.add_device("a0", "a.sys", &[BAR0, BAR1]).unwrap();
    assert!(host.start_device(&dev, true).unwrap());
    host
}

fn records(host: &Arc<Host>) -> Vec<ViolationRecord> {
    let (r, lost) = violations(host).unwrap();
    assert_eq!(lost, 0);
    r
}

fn name(n: &[u8; 32]) -> &str {
    std::str::from_utf8(name_bytes(n)).unwrap()
}

/// Commits `rule` once by `a.sys` and returns its only record.
fn one(host: &Arc<Host>, rule: RuleId, device: Option<&str>) -> ViolationRecord {
    let mut actor = host.actor(7);
    assert!(
        host.commit_bug(rule, "a.sys", device, &mut actor).unwrap(),
        "{rule:?} reached iosv"
    );
    let r = records(host);
    assert_eq!(
        r.len(),
        1,
        "{rule:?}: exactly one record, got {:?}",
        r.iter().map(|x| x.rule).collect::<Vec<_>>()
    );
    let rec = r[0];
    assert_eq!(rec.rule, rule.number());
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(audit.is_clean(), "{rule:?}: {audit}");
    rec
}

fn in_image(host: &Host, driver: &str, addr: u64) -> bool {
    let base = host.driver(driver).unwrap().image().base();
    addr >= base && addr < base + IMAGE_SIZE
}

#[test]
fn well_behaved_drivers_produce_nothing() {
    let host = system();
    let dev = host.device("a0").unwrap();
    let mut dev_b = host.add_device("b0", "b.sys", &host.auto_bars()).unwrap();
    host.start_device(&dev_b, true).unwrap();
    let mut actor = host.actor(1);
    for round in 0..20 {
        for _ in 0..200 {
            host.device_io(&dev, &mut actor).unwrap();
            host.device_io(&dev_b, &mut actor).unwrap();
        }
        host.stop_device(&dev).unwrap();
        host.start_device(&dev, true).unwrap();
        if round % 5 == 4 {
            // Surprise removal, a fresh device object, a start, an orderly stop and
            // removal, and a third device object left started.
            host.surprise_remove_device(&dev_b).unwrap();
            host.remove_device(&dev_b).unwrap();
            let fresh = host.add_device("b0", "b.sys", dev_b.bars()).unwrap();
            host.start_device(&fresh, true).unwrap();
            host.stop_device(&fresh).unwrap();
            host.remove_device(&fresh).unwrap();
            dev_b = host.add_device("b0", "b.sys", fresh.bars()).unwrap();
            host.start_device(&dev_b, true).unwrap();
        }
    }
    let dev_b = host.device("b0").unwrap();
    host.stop_device(&dev_b).unwrap();
    host.remove_device(&dev_b).unwrap();
    host.unload_driver("b.sys").unwrap();
    assert!(records(&host).is_empty());
    assert!(host.injected().is_empty());
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(audit.is_clean(), "{audit}");
    // The table holds exactly a0's BARs and runtime windows, as the Mm does.
    assert_eq!(
        audit.table_entries as usize,
        2 + dev.runtime_mappings().len()
    );
    assert!(
        host.mm().counters().reuses > 100,
        "freed addresses are reused eagerly"
    );
}

#[test]
fn iosv001_unmap_size_mismatch_is_contained() {
    let host = system();
    let r = one(&host, RuleId::UnmapSizeMismatch, None);
    assert_eq!(name(&r.driver_name), "a.sys");
    assert_eq!(
        r.flags & (VF_CONTAINED | VF_MAPPING_KNOWN),
        VF_CONTAINED | VF_MAPPING_KNOWN
    );
    assert_eq!(r.passed_size, r.mapped_size + 0x1000);
    assert_eq!(r.address, r.base);
    assert!(
        !host.mm().is_mapped(r.base),
        "unmapped with the tracked size"
    );
    assert!(in_image(&host, "a.sys", r.call_stack[0]));
    assert!(in_image(&host, "a.sys", r.map_stack[0]));
}

#[test]
fn iosv002_unmap_above_dispatch() {
    let host = system();
    let r = one(&host, RuleId::UnmapIrql, None);
    assert_eq!(r.irql, 5);
    assert_eq!(r.flags & VF_CONTAINED, 0);
    assert_ne!(r.flags & VF_MAPPING_KNOWN, 0);
    assert_eq!(r.passed_size, r.mapped_size);
    // The simulated stack: call site in the driver's ISR, the ISR, the interrupt dispatch.
    let isr = Routine::Isr.entry(host.driver("a.sys").unwrap().image().base());
    assert_eq!(r.call_stack_depth, 3);
    assert_eq!(&r.call_stack[1..3], &[isr, kernel_frames::INTERRUPT]);
    assert!(r.call_stack[0] > isr && r.call_stack[0] < isr + 0x100);
}

#[test]
fn iosv003_map_above_dispatch() {
    let host = system();
    let r = one(&host, RuleId::MapIrql, None);
    assert_eq!(r.irql, 6);
    assert_ne!(r.physical, 0);
    assert_eq!(name(&r.driver_name), "a.sys");
}

#[test]
fn iosv004_unknown_address() {
    let host = system();
    let r = one(&host, RuleId::UnmapUnknown, None);
    assert!(r.address >= NEVER_MAPPED_START);
    assert_eq!(r.flags & (VF_CONTAINED | VF_MAPPING_KNOWN), VF_CONTAINED);
    assert!(host.mm().corruptions().is_empty());
}

#[test]
fn iosv005_double_unmap() {
    let host = system();
    let r = one(&host, RuleId::DoubleUnmap, None);
    assert_ne!(r.flags & VF_CONTAINED, 0);
    assert_eq!(r.base, r.address);
    assert_eq!(r.mapped_size, r.passed_size);
    assert_eq!(name(&r.owner_name), "a.sys");
    assert!(r.other >= r.map_time_ns, "the first unmap's time");
}

#[test]
fn iosv005_stale_pointer_after_reuse_spares_the_other_drivers_mapping() {
    let host = system();
    let mut actor = host.actor(4);
    actor.set_private_pages(37);
    // The first IOSV005 of an actor is the plain double unmap, the second the stale
    // pointer after Mm handed the address to another driver (b.sys here).
    for _ in 0..2 {
        assert!(host
            .commit_bug(RuleId::DoubleUnmap, "a.sys", None, &mut actor)
            .unwrap());
    }
    let r = records(&host);
    assert_eq!(
        r.len(),
        2,
        "{:?}",
        r.iter().map(|x| x.rule).collect::<Vec<_>>()
    );
    let (plain, stale) = (r[0], r[1]);
    assert_eq!(plain.flags & VF_REUSED, 0);
    assert_eq!((stale.rule, name(&stale.driver_name)), (5, "a.sys"));
    assert_eq!(name(&stale.owner_name), "b.sys", "the victim is named");
    assert_ne!(stale.flags & VF_REUSED, 0);
    assert_ne!(stale.flags & VF_CONTAINED, 0);
    assert_eq!(
        stale.address, stale.base,
        "the victim's mapping has that base"
    );
    assert_eq!(
        (stale.prior_size, stale.mapped_size),
        (37 * 0x1000, 37 * 0x1000)
    );
    assert!(
        in_image(&host, "a.sys", stale.prior_map_site),
        "the stale caller's map site"
    );
    assert!(
        in_image(&host, "b.sys", stale.map_stack[0]),
        "the victim's map site"
    );
    assert!(stale.map_time_ns > stale.other && stale.other > stale.prior_map_time_ns);
    assert!(
        !host.mm().is_mapped(stale.base),
        "b.sys then unmapped it itself"
    );
    assert_eq!(
        host.injected()
            .get(&(RuleId::DoubleUnmap, "a.sys".to_string())),
        Some(&2)
    );
    assert!(host.mm().corruptions().is_empty());
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(audit.is_clean(), "nothing blamed on b.sys: {audit}");
}

#[test]
fn iosv014_unmap_at_the_page_of_an_unaligned_base() {
    let host = system();
    let r = one(&host, RuleId::UnmapPageBase, None);
    assert_eq!(r.base & 0xFFF, 0x800, "the base carries the page offset");
    assert_eq!(r.address, r.base & !0xFFF);
    assert_eq!((r.passed_size, r.mapped_size), (0x1000, 0x1000));
    assert_ne!(r.flags & VF_CONTAINED, 0);
    assert!(
        !host.mm().is_mapped(r.base),
        "unmapped with the tracked base"
    );
    assert!(host.mm().corruptions().is_empty());
}

#[test]
fn iosv006_interior_unmap() {
    let host = system();
    let r = one(&host, RuleId::UnmapInterior, None);
    assert_eq!(r.address, r.base + 0x1000);
    assert_ne!(r.flags & (VF_CONTAINED | VF_MAPPING_KNOWN), 0);
    assert!(
        !host.mm().is_mapped(r.base),
        "the driver's correct unmap followed"
    );
}

#[test]
fn iosv007_leak_on_stop_names_the_device_and_owner() {
    let host = system();
    let dev = host.device("a0").unwrap();
    let bar0 = dev.bar_mappings()[0].unwrap();
    let r = one(&host, RuleId::LeakOnStop, Some("a0"));
    assert_eq!(r.device, dev.id());
    assert_eq!(
        (r.base, r.mapped_size, r.physical),
        (bar0.0, BAR0.size, BAR0.physical)
    );
    assert_eq!(name(&r.owner_name), "a.sys");
    assert_eq!(r.driver_id, 0, "reported at the PnP event, not by a call");
    assert!(host.mm().is_mapped(bar0.0), "leaked: still mapped");
    let start = Routine::StartDevice.entry(host.driver("a.sys").unwrap().image().base());
    assert_eq!(&r.map_stack[1..3], &[start, kernel_frames::PNP_IRP]);
    // Restarting and stopping properly reports nothing more.
    host.start_device(&dev, true).unwrap();
    host.stop_device(&dev).unwrap();
    host.remove_device(&dev).unwrap();
    assert_eq!(records(&host).len(), 1);
}

#[test]
fn iosv008_leak_on_remove() {
    let host = system();
    let old = host.device("a0").unwrap().id();
    let r = one(&host, RuleId::LeakOnRemove, Some("a0"));
    assert_eq!(r.device, old);
    assert_eq!(name(&r.owner_name), "a.sys");
    assert_ne!(
        host.device("a0").unwrap().id(),
        old,
        "a new device object was added"
    );
}

#[test]
fn iosv009_leak_on_unload_reloads_the_driver() {
    let host = system();
    let base_before = host.driver("a.sys").unwrap().image().base();
    let r = one(&host, RuleId::LeakOnUnload, None);
    assert_eq!(name(&r.owner_name), "a.sys");
    assert_eq!(r.flags & VF_DETACH, 0);
    assert_eq!(r.mapped_size, 0x3000);
    assert_ne!(
        host.driver("a.sys").unwrap().image().base(),
        base_before,
        "reloaded at a new base"
    );
    assert_eq!(
        host.device("a0").unwrap().state(),
        iosv_host::PnpState::Started
    );
}

#[test]
fn iosv010_cache_conflict_with_a_bar() {
    let host = system();
    let bar0 = host.device("a0").unwrap().bar_mappings()[0].unwrap();
    let r = one(&host, RuleId::CacheConflict, Some("a0"));
    assert_eq!((r.cache, r.other_cache), (MM_CACHED, MM_NON_CACHED));
    assert_eq!(
        (r.base, r.other),
        (bar0.0, BAR0.physical),
        "the conflicting BAR mapping"
    );
    assert_eq!(r.physical, BAR0.physical);
    assert_eq!(r.device, host.device("a0").unwrap().id());
}

#[test]
fn iosv010_cache_conflict_without_a_device() {
    let host = system();
    let r = one(&host, RuleId::CacheConflict, None);
    assert_eq!((r.cache, r.other_cache), (MM_CACHED, MM_NON_CACHED));
}

#[test]
fn iosv011_bad_parameters_each_variant() {
    let host = system();
    let mut actor = host.actor(3);
    for _ in 0..3 {
        assert!(host
            .commit_bug(RuleId::MapBadParameters, "a.sys", None, &mut actor)
            .unwrap());
    }
    let r = records(&host);
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|x| x.rule == 11));
    assert_eq!(r[0].cache, 7);
    assert_eq!(r[1].passed_size, 0);
    assert_ne!(r[2].flags & iosv::protocol::VF_MAP_EX, 0);
    assert!(host.audit(&host.injected(), true).unwrap().is_clean());
}

#[test]
fn iosv012_foreign_unmap_blames_the_unmapping_driver() {
    let host = system();
    let mut actor = host.actor(3);
    assert!(host
        .commit_bug_with(
            RuleId::UnmapForeign,
            "a.sys",
            None,
            Some("b.sys"),
            &mut actor
        )
        .unwrap());
    let r = records(&host);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rule, 12);
    assert_eq!(name(&r[0].driver_name), "b.sys");
    assert_eq!(name(&r[0].owner_name), "a.sys");
    assert_ne!(r[0].flags & VF_CONTAINED, 0, "contained by default");
    assert!(
        !host.mm().is_mapped(r[0].base),
        "a.sys kept it mapped, then unmapped it itself"
    );
    assert_eq!(
        host.injected()
            .get(&(RuleId::UnmapForeign, "b.sys".to_string())),
        Some(&1)
    );
    assert!(host.audit(&host.injected(), true).unwrap().is_clean());
}

#[test]
fn iosv013_stale_entry_after_an_unmap_iosv_did_not_see() {
    let host = system();
    let r = one(&host, RuleId::StaleEntry, None);
    assert_eq!(r.address, r.base, "Mm handed the same base out again");
    assert_eq!(name(&r.owner_name), "a.sys");
}

#[test]
fn containment_off_lets_the_bad_unmaps_reach_mm() {
    for (rule, corruption) in [
        (RuleId::UnmapSizeMismatch, "size"),
        (RuleId::UnmapUnknown, "not mapped"),
        (RuleId::DoubleUnmap, "not mapped"),
        (RuleId::UnmapInterior, "not mapped"),
        // Mm rounds the page address down and unmaps one page of two.
        (RuleId::UnmapPageBase, "size"),
    ] {
        let host = system();
        configure(&host, |b| b.flags &= !CF_CONTAINMENT).unwrap();
        let mut actor = host.actor(9);
        assert!(host.commit_bug(rule, "a.sys", None, &mut actor).unwrap());
        let r = records(&host);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].flags & VF_CONTAINED, 0, "{rule:?} not contained");
        let c = host.mm().corruptions();
        assert_eq!(
            c.len(),
            1,
            "{rule:?}: the bad call reached the simulated Mm"
        );
        match (c[0], corruption) {
            (Corruption::SizeMismatch { via_iosv: true, .. }, "size")
            | (Corruption::NotMapped { via_iosv: true, .. }, "not mapped") => {}
            other => panic!("{rule:?}: {other:?}"),
        }
        // The table still agrees with the Mm.
        let audit = host.audit(&host.injected(), false).unwrap();
        assert!(audit.is_clean(), "{rule:?}: {audit}");
    }
}

#[test]
fn containment_on_keeps_mm_sound_under_every_bug() {
    let host = system();
    let mut actor = host.actor(5);
    for rule in RuleId::ALL {
        let device = matches!(
            rule,
            RuleId::LeakOnStop | RuleId::LeakOnRemove | RuleId::CacheConflict
        )
        .then_some("a0");
        for _ in 0..3 {
            assert!(
                host.commit_bug(rule, "a.sys", device, &mut actor).unwrap(),
                "{rule:?}"
            );
        }
    }
    assert!(host.mm().corruptions().is_empty());
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(audit.is_clean(), "{audit}");
    assert_eq!(audit.records, RULE_COUNT as u64 * 3);
}

#[test]
fn buggy_behaviours_commit_their_bug_where_a_driver_would() {
    for rule in RuleId::ALL {
        let host = system();
        host.declare_driver("bug.sys", Behaviour::Buggy(rule), 10);
        add_target(&host, "bug.sys").unwrap();
        host.load_driver("bug.sys").unwrap();
        let dev = host
            .add_device("bug0", "bug.sys", &host.auto_bars())
            .unwrap();
        let mut actor = host.actor(11);
        host.start_device(&dev, true).unwrap();
        for _ in 0..100 {
            host.device_io(&dev, &mut actor).unwrap();
        }
        host.stop_device(&dev).unwrap();
        host.start_device(&dev, true).unwrap();
        host.surprise_remove_device(&dev).unwrap();
        host.remove_device(&dev).unwrap();
        host.unload_driver("bug.sys").unwrap();
        let expected = host.injected();
        let total: u64 = expected.values().sum();
        let wanted = match rule {
            RuleId::LeakOnStop | RuleId::LeakOnRemove | RuleId::LeakOnUnload => 1,
            _ => 10,
        };
        assert_eq!(total, wanted, "{rule:?}: {expected:?}");
        assert!(expected.keys().all(|(r, _)| *r == rule));
        let audit = host.audit(&expected, true).unwrap();
        assert!(audit.is_clean(), "{rule:?}: {audit}");
    }
}

#[test]
fn irql_ceiling_follows_the_configuration() {
    let host = system();
    let d = host.driver("a.sys").unwrap();
    let unmap_at = |irql: Irql| {
        let (base, _) = d
            .map_io_space(Routine::Dispatch, 0x1_0000_0000, 0x1000, MM_NON_CACHED)
            .unwrap();
        thread::with_irql(irql, || d.unmap_io_space(Routine::Dpc, base, 0x1000)).unwrap();
    };
    unmap_at(Irql::DISPATCH);
    assert!(
        records(&host).is_empty(),
        "DISPATCH_LEVEL is allowed by the DDI"
    );
    configure(&host, |b| b.flags |= CF_VERIFIER_IRQL).unwrap();
    unmap_at(Irql::APC);
    assert!(records(&host).is_empty());
    unmap_at(Irql::DISPATCH);
    let r = records(&host);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].rule, r[0].irql), (2, 2));
    assert_eq!(thread::current_irql(), Irql::PASSIVE);
}

#[test]
fn actions_break_bugcheck_and_ignore() {
    let host = system();
    configure(&host, |b| {
        b.actions[RuleId::UnmapUnknown.index()] = Action::Bugcheck as u8;
        b.actions[RuleId::MapIrql.index()] = Action::Break as u8;
        b.actions[RuleId::UnmapInterior.index()] = Action::Ignore as u8;
    })
    .unwrap();
    let mut actor = host.actor(1);
    for rule in [RuleId::UnmapUnknown, RuleId::MapIrql, RuleId::UnmapInterior] {
        host.commit_bug(rule, "a.sys", None, &mut actor).unwrap();
    }
    let bc = host.platform().bugchecks();
    assert_eq!(bc.len(), 1);
    assert_eq!(bc[0].p1, BUGCHECK_SIGNATURE | 4);
    assert!(bc[0].p2 >= NEVER_MAPPED_START);
    assert_eq!(host.platform().breaks(), 1);
    let r = records(&host);
    assert_eq!(
        r.iter().map(|x| x.rule).collect::<Vec<_>>(),
        [4, 3],
        "the ignored rule is not journaled"
    );
    assert_eq!(bc[0].p4, r[0].seq);
}

#[test]
fn attach_and_detach_through_the_control_codes() {
    let host = Arc::new(Host::with_processors(StartParams::default(), 2).unwrap());
    host.declare_driver("late.sys", Behaviour::WellBehaved, 0);
    let d = host.load_driver("late.sys").unwrap();
    assert!(d.driver_id().is_none(), "not a target: not hooked");
    let (base, hooked) = d
        .map_io_space(Routine::Dispatch, 0x2_0000_0000, 0x1000, 0)
        .unwrap();
    assert!(!hooked && base != 0);
    assert!(!host.mm().mapping(base).unwrap().via_iosv);
    d.unmap_io_space(Routine::Dispatch, base, 0x1000).unwrap();

    assert_eq!(
        host.attach("late.sys").unwrap(),
        4,
        "four import slots hooked"
    );
    assert_eq!(host.attach("late.sys").unwrap(), 4, "idempotent");
    assert!(matches!(
        host.attach("nope.sys"),
        Err(HostError::Control(iosv::protocol::Status::NotFound))
    ));
    let d = host.driver("late.sys").unwrap();
    assert!(d.driver_id().is_some());
    let dev = host
        .add_device("l0", "late.sys", &host.auto_bars())
        .unwrap();
    host.start_device(&dev, true).unwrap();
    let mut actor = host.actor(2);
    for _ in 0..50 {
        host.device_io(&dev, &mut actor).unwrap();
    }
    assert!(
        mappings(&host).unwrap().0.len() >= 2,
        "BARs tracked after attach"
    );
    host.stop_device(&dev).unwrap();
    host.remove_device(&dev).unwrap();
    assert_eq!(host.detach("late.sys").unwrap(), 4, "four slots restored");
    assert!(d.driver_id().is_none());
    let (base, hooked) = d
        .map_io_space(Routine::Dispatch, 0x2_0000_0000, 0x1000, 0)
        .unwrap();
    assert!(!hooked, "calls go straight to Mm again");
    d.unmap_io_space(Routine::Dispatch, base, 0x1000).unwrap();
    assert!(records(&host).is_empty());
    assert!(host.audit(&host.injected(), true).unwrap().is_clean());
}

#[test]
fn detach_reports_live_mappings_as_expected_leaks() {
    let host = system();
    // a0's two BARs are live when a.sys is detached: IOSV009 with the detach flag, twice.
    assert_eq!(host.detach("a.sys").unwrap(), 4);
    let r = records(&host);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|x| x.rule == 9 && x.flags & VF_DETACH != 0));
    assert_eq!(
        host.injected()
            .get(&(RuleId::LeakOnUnload, "a.sys".to_string())),
        Some(&2)
    );
}

/// A detached driver's live mappings stay listed, flagged detached and leak-reported,
/// and the table still agrees with the Mm. Its later unmaps bypass iosv: the audit lists
/// those entries as expected, and when the Mm hands such an address to another driver
/// the entry is replaced without IOSV013.
#[test]
fn detach_keeps_the_truth() {
    let host = system();
    let dev = host.device("a0").unwrap();
    let bars: Vec<(u64, u64)> = dev.bar_mappings().into_iter().flatten().collect();
    assert_eq!(host.detach("a.sys").unwrap(), 4);
    assert_eq!(records(&host).len(), 2);
    let listed = mappings(&host).unwrap().0;
    for (base, _) in &bars {
        let m = listed
            .iter()
            .find(|m| m.base == *base)
            .expect("still listed");
        assert_ne!(m.flags & MF_DETACHED, 0);
        assert_ne!(m.flags & MF_LEAK_REPORTED, 0);
    }
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(
        audit.is_clean() && audit.detached_unmapped_unseen.is_empty(),
        "{audit}"
    );

    host.stop_device(&dev).unwrap(); // unmaps through the restored (real) slots
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(audit.is_clean(), "{audit}");
    assert_eq!(audit.detached_unmapped_unseen.len(), 2, "{audit}");

    // b.sys maps BAR0's page count: the Mm hands BAR0's block out again.
    let b = host.driver("b.sys").unwrap();
    let (base, hooked) = b
        .map_io_space(Routine::Dispatch, 0x3_0000_0000, BAR0.size, MM_NON_CACHED)
        .unwrap();
    assert!(hooked);
    assert_eq!(base, bars[0].0, "address reused");
    assert_eq!(records(&host).len(), 2, "no IOSV013 against b.sys");
    b.unmap_io_space(Routine::Dispatch, base, BAR0.size)
        .unwrap();
    assert_eq!(records(&host).len(), 2);

    // Unloading the detached image removes what is left, without another report.
    host.remove_device(&dev).unwrap();
    host.unload_driver("a.sys").unwrap();
    assert_eq!(records(&host).len(), 2, "each mapping is reported once");
    let listed = mappings(&host).unwrap().0;
    assert!(listed.iter().all(|m| m.flags & MF_DETACHED == 0));
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(
        audit.is_clean() && audit.detached_unmapped_unseen.is_empty(),
        "{audit}"
    );
}

#[test]
fn a_failed_start_leaves_nothing_mapped() {
    let host = system();
    let dev = host.add_device("a1", "a.sys", &host.auto_bars()).unwrap();
    let before = host.mm().mappings().len();
    host.mm().fail_next_maps(1);
    assert!(!host.start_device(&dev, true).unwrap());
    assert_eq!(host.mm().mappings().len(), before);
    assert_eq!(dev.state(), iosv_host::PnpState::Added);
    assert!(host.start_device(&dev, true).unwrap());
    assert!(records(&host).is_empty());
    assert!(host.audit(&host.injected(), true).unwrap().is_clean());
}
