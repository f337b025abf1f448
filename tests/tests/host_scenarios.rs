//! Scenario files: the shipped examples run as documented, and malformed files are refused
//! with `file:line:col: what is wrong`.

use iosv::protocol::{name_bytes, ViolationRecord, VF_CONTAINED, VF_DETACH, VF_REUSED};
use iosv::rules::RuleId;
use iosv_host::scenario::{run, Scenario};
use iosv_host::thread::SIMULATED_THREAD_BASE;
use iosv_host::Host;
use iosv_tests::control::{stats, violations};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn run_file(
    name: &str,
) -> (
    Arc<Host>,
    iosv_host::scenario::RunSummary,
    Vec<ViolationRecord>,
) {
    let scenario = Scenario::from_file(&example(name)).unwrap();
    let host = Arc::new(scenario.new_host().unwrap());
    let summary = run(&host, &scenario, &mut |_| {}).unwrap();
    let (records, lost) = violations(&host).unwrap();
    assert_eq!(lost, 0);
    (host, summary, records)
}

fn rules(records: &[ViolationRecord]) -> Vec<u8> {
    records.iter().map(|r| r.rule).collect()
}

fn owner(r: &ViolationRecord) -> &str {
    std::str::from_utf8(name_bytes(&r.owner_name)).unwrap()
}

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 6);
}

#[test]
fn scripted_unmaps_break_the_rules_in_order() {
    let (host, summary, records) = run_file("scripted-unmaps.toml");
    assert_eq!(rules(&records), [1, 5, 6, 3, 2, 10, 11, 11, 12, 13, 4]);
    assert!(
        summary.expected.is_empty(),
        "raw steps are not injected bugs"
    );
    let by = |rule: u8| records.iter().find(|r| r.rule == rule).unwrap();
    assert_eq!((by(1).mapped_size, by(1).passed_size), (0x3000, 0x1000));
    assert_ne!(by(1).flags & VF_CONTAINED, 0);
    assert_eq!(by(6).address, by(6).base + 0x1000);
    assert_eq!((by(3).irql, by(2).irql), (5, 5));
    assert_eq!((by(10).cache, by(10).other_cache), (2, 0));
    assert_eq!(owner(by(12)), "uart.sys");
    assert_eq!(
        by(12).thread_id,
        SIMULATED_THREAD_BASE + 8,
        "ran as simulated thread 2"
    );
    assert_eq!(by(4).address, 0xFFFF_E000_0012_3000);
    assert!(host.mm().corruptions().is_empty());
    let audit = host.audit(&summary.expected, true).unwrap();
    assert_eq!(
        audit.mismatches.len(),
        10,
        "records of raw steps are not in the expected set"
    );
    assert!(audit.only_in_mm.is_empty() && audit.only_in_table.is_empty());
}

#[test]
fn mm_semantics() {
    let (host, summary, records) = run_file("mm-semantics.toml");
    assert_eq!(rules(&records), [5, 10, 14, 9, 9]);
    let caller = |r: &ViolationRecord| {
        std::str::from_utf8(name_bytes(&r.driver_name))
            .unwrap()
            .to_string()
    };
    // 1. The stale caller is blamed, the victim named and spared.
    let stale = &records[0];
    assert_eq!((caller(stale).as_str(), owner(stale)), ("a.sys", "b.sys"));
    assert_ne!(stale.flags & VF_REUSED, 0);
    assert_ne!(stale.flags & VF_CONTAINED, 0);
    assert_eq!(
        (stale.prior_physical, stale.physical),
        (0xF800_0000, 0xF900_0000)
    );
    // 2. Per page.
    let conflict = &records[1];
    assert_eq!(
        (caller(conflict).as_str(), owner(conflict)),
        ("b.sys", "a.sys")
    );
    assert_eq!(
        iosv::phys::shared_pages(
            conflict.physical,
            conflict.passed_size,
            conflict.other,
            conflict.mapped_size
        ),
        Some((0xFA00_0000, 0xFA00_1000))
    );
    // 3. The page of an unaligned base.
    let page = &records[2];
    assert_eq!(page.address, page.base & !0xFFF);
    assert_ne!(page.flags & VF_CONTAINED, 0);
    // 4. Detach: one report per live mapping, nothing after.
    for leak in &records[3..] {
        assert_ne!(leak.flags & VF_DETACH, 0);
        assert_eq!(owner(leak), "c.sys");
    }
    assert!(host.mm().corruptions().is_empty());
    // The bug step and the detach leak were injected; the raw steps' IOSV005 and IOSV010
    // are the only other records, and the table matches the simulated Mm.
    assert_eq!(summary.expected_total(), 3);
    let audit = host.audit(&summary.expected, true).unwrap();
    let raw: Vec<RuleId> = audit.mismatches.iter().map(|m| m.rule).collect();
    assert_eq!(raw, [RuleId::DoubleUnmap, RuleId::CacheConflict], "{audit}");
    assert!(
        audit.only_in_mm.is_empty() && audit.only_in_table.is_empty(),
        "{audit}"
    );
    assert!(
        audit.detached_unmapped_unseen.is_empty(),
        "the unload removed them: {audit}"
    );
    assert_eq!(audit.table_entries, 0);
}

#[test]
fn pnp_leaks() {
    let (host, summary, records) = run_file("pnp-leaks.toml");
    // leakunload.sys leaks its control block and its reserved range (kind reserved).
    assert_eq!(rules(&records), [7, 8, 9, 9, 7]);
    let owners: Vec<&str> = records.iter().map(owner).collect();
    assert_eq!(
        owners,
        [
            "leakstop.sys",
            "leakremove.sys",
            "leakunload.sys",
            "leakunload.sys",
            "good.sys"
        ]
    );
    assert_eq!(
        (records[2].kind, records[3].kind),
        (iosv::protocol::MK_IO_SPACE, iosv::protocol::MK_RESERVED)
    );
    assert_eq!(
        records[4].mapped_size, 0x1000,
        "the map from thread 1 during the start"
    );
    assert_eq!(
        records[4].device,
        records.iter().rev().find(|r| r.rule == 7).unwrap().device
    );
    assert_eq!(
        summary.expected_total(),
        4,
        "the three behaviours' leaks; the raw map is not counted"
    );
    let audit = host.audit(&summary.expected, true).unwrap();
    assert_eq!(audit.mismatches.len(), 1);
    assert_eq!(audit.mismatches[0].rule, RuleId::LeakOnStop);
    assert_eq!(audit.mismatches[0].driver, "good.sys");
}

#[test]
fn policy_changes_mid_run() {
    let (host, summary, records) = run_file("policy.toml");
    assert_eq!(rules(&records), [4, 2, 3, 5]);
    assert_eq!(records[0].flags & VF_CONTAINED, 0);
    assert_ne!(records[3].flags & VF_CONTAINED, 0);
    assert_eq!(host.platform().bugchecks().len(), 1);
    assert_eq!(host.platform().breaks(), 1);
    assert_eq!(host.mm().corruptions().len(), 1);
    assert_eq!(summary.corruptions, 1);
    assert_eq!(
        stats(&host).unwrap().counters.ignored,
        1,
        "the cache conflict was ignored"
    );
    let audit = host.audit(&summary.expected, false).unwrap();
    assert_eq!(
        audit.mismatches.len(),
        1,
        "only the raw DISPATCH_LEVEL unmap is unexpected: {audit}"
    );
}

#[test]
fn attach_example_is_clean() {
    let (host, summary, records) = run_file("attach.toml");
    assert!(records.is_empty(), "{:?}", rules(&records));
    assert!(summary.operations >= 200);
    assert!(host.audit(&summary.expected, true).unwrap().is_clean());
}

#[test]
#[ignore = "long: run on demand with --release"]
fn stress_example_is_clean() {
    let (host, summary, _) = run_file("stress.toml");
    assert!(summary.expected_per_rule().iter().all(|n| *n > 0));
    let audit = host.audit(&summary.expected, true).unwrap();
    assert!(audit.is_clean(), "{audit}");
}

/// Writes `text` to a scenario file and returns the error of reading it.
fn refused(tag: &str, text: &str) -> (String, String) {
    let path = std::env::temp_dir().join(format!("iosv-bad-{}-{tag}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let err = Scenario::from_file(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    (path.display().to_string(), err.to_string())
}

const HEAD: &str = "[[driver]]\nname = \"a.sys\"\n[[device]]\nname = \"d0\"\ndriver = \"a.sys\"\n";

#[test]
fn malformed_files_are_refused_with_file_line_column_and_reason() {
    let cases: &[(&str, String, &str, &str)] = &[
        ("unknown-key", format!("{HEAD}[[step]]\nop = \"load\"\ndriver = \"a.sys\"\ndevise = \"d0\"\n"), "9:1", "unknown field `devise`"),
        ("syntax", format!("{HEAD}[[step]]\nop = \"load\ndriver = \"a.sys\"\n"), "7:", "invalid"),
        ("type", format!("{HEAD}[[step]]\nop = \"io\"\ndevice = \"d0\"\ncount = \"many\"\n"), "9:9", "count `many` is not a number"),
        ("op", format!("{HEAD}[[step]]\nop = \"launch\"\n"), "7:6", "unknown op `launch`"),
        ("driver-ref", format!("{HEAD}[[step]]\nop = \"load\"\ndriver = \"b.sys\"\n"), "8:10", "no [[driver]] is named `b.sys`"),
        ("device-ref", format!("{HEAD}[[step]]\nop = \"start\"\ndevice = \"d1\"\n"), "8:10", "no [[device]] is named `d1`"),
        ("missing", format!("{HEAD}[[step]]\nop = \"map\"\ndriver = \"a.sys\"\nsize = 4096\n"), "6:1", "step `map` needs `physical`"),
        ("not-applicable", format!("{HEAD}[[step]]\nop = \"stop\"\ndevice = \"d0\"\nirql = 2\n"), "9:8", "`irql` does not apply to op `stop`"),
        ("irql", format!("{HEAD}[[step]]\nop = \"unmap\"\ndriver = \"a.sys\"\naddress = 1\nsize = 1\nirql = 16\n"), "11:8", "irql must be between 0 and 15"),
        ("rule", format!("{HEAD}[[step]]\nop = \"bug\"\ndriver = \"a.sys\"\nrule = \"IOSV099\"\n"), "9:8", "unknown rule `IOSV099`"),
        ("leak-needs-device", format!("{HEAD}[[step]]\nop = \"bug\"\ndriver = \"a.sys\"\nrule = \"leak-on-stop\"\n"), "6:1", "needs `device`"),
        ("behaviour", "[[driver]]\nname = \"a.sys\"\nbehaviour = \"sloppy\"\n".into(), "3:13", "unknown behaviour `sloppy`"),
        ("duplicate", "[[driver]]\nname = \"a.sys\"\n[[driver]]\nname = \"A.SYS\"\n".into(), "4:8", "declared twice"),
        ("name", "[[driver]]\nname = \"my driver.sys\"\n".into(), "2:8", "printable ASCII"),
        ("bar-size", "[[driver]]\nname = \"a.sys\"\n[[device]]\nname = \"d\"\ndriver = \"a.sys\"\nbars = [{ physical = 0, size = 0x400_0000 }]\n".into(), "6:32", "below 64 MiB"),
        (
            "bar-overlap",
            "[[driver]]\nname = \"a.sys\"\n[[device]]\nname = \"d\"\ndriver = \"a.sys\"\nbars = [{ physical = 0x1000, size = 0x2000 }]\n[[device]]\nname = \"e\"\ndriver = \"a.sys\"\nbars = [{ physical = 0x2000, size = 0x1000 }]\n".into(),
            "10:9",
            "overlaps a BAR of device `d`",
        ),
        ("cache", "[[driver]]\nname = \"a.sys\"\n[[device]]\nname = \"d\"\ndriver = \"a.sys\"\nbars = [{ physical = 0, size = 1, cache = \"uncached\" }]\n".into(), "6:43", "unknown cache type `uncached`"),
        ("protect", format!("{HEAD}[[step]]\nop = \"map-ex\"\ndriver = \"a.sys\"\nphysical = 0\nsize = 1\nprotect = \"PAGE_RW\"\n"), "11:11", "unknown page protection `PAGE_RW`"),
        ("rates", format!("{HEAD}[[step]]\nop = \"stress\"\nops = 10\ninject = {{ IOSV001 = 0.6, double-unmap = 0.6 }}\n"), "9:10", "add up to"),
        ("rate", format!("{HEAD}[[step]]\nop = \"stress\"\nops = 10\ninject = {{ IOSV001 = 2 }}\n"), "9:22", "0.0..=1.0"),
        ("limit", format!("{HEAD}[[step]]\nop = \"stress\"\nthreads = 2\n"), "6:1", "needs `ops`"),
        ("threads", format!("{HEAD}[[step]]\nop = \"stress\"\nops = 1\nthreads = 0\n"), "9:11", "threads must be between 1 and 16"),
        ("offset", format!("{HEAD}[[step]]\nop = \"unmap\"\ndriver = \"a.sys\"\naddress = 4096\nsize = 1\noffset = 8\n"), "11:10", "`offset` applies to `mapping`"),
        ("negative", format!("{HEAD}[[step]]\nop = \"map\"\ndriver = \"a.sys\"\nphysical = -1\nsize = 1\n"), "9:12", "physical must not be negative"),
        ("action", "[config]\nactions = { IOSV001 = \"explode\" }\n".into(), "2:23", "unknown action `explode`"),
        ("ceiling", "[config]\nirql_ceiling = \"passive\"\n".into(), "2:16", "irql_ceiling must be"),
        ("host", "[host]\ncapacity = 1\n".into(), "2:12", "capacity must be between 16"),
    ];
    for (tag, text, at, reason) in cases {
        let (path, err) = refused(tag, text);
        assert!(
            err.starts_with(&format!("{path}:{at}")),
            "{tag}: `{err}` should start with `{path}:{at}`"
        );
        assert!(err.contains(reason), "{tag}: `{err}` should say `{reason}`");
    }
    let missing = std::env::temp_dir().join("iosv-no-such-scenario.toml");
    let err = Scenario::from_file(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with(&missing.display().to_string()) && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn a_step_that_fails_at_run_time_is_reported_at_the_step() {
    let text = format!("{HEAD}[[step]]\nop = \"load\"\ndriver = \"a.sys\"\n[[step]]\nop = \"add-device\"\ndevice = \"d0\"\n[[step]]\nop = \"unload\"\ndriver = \"a.sys\"\n");
    let scenario = Scenario::parse(&text, "run.toml").unwrap();
    let host = scenario.new_host().unwrap();
    let err = run(&host, &scenario, &mut |_| {}).unwrap_err().to_string();
    assert_eq!(err, "run.toml:12:1: step `unload` failed: driver `a.sys` still has device `d0`; remove its devices before unloading");
    let text = format!("{HEAD}[[step]]\nop = \"unmap\"\ndriver = \"a.sys\"\nmapping = \"nope\"\n");
    let scenario = Scenario::parse(&text, "run.toml").unwrap();
    let err = run(&scenario.new_host().unwrap(), &scenario, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("run.toml:6:1: step `unmap` failed: driver `a.sys` is not loaded"),
        "{err}"
    );
}

#[test]
fn mdl_family_example_reports_each_rule_once_contained() {
    let (host, summary, records) = run_file("mdl.toml");
    assert_eq!(rules(&records), [15, 16, 17, 18, 19, 20, 21, 22, 23]);
    for r in &records {
        // Every record names an MDL mapping or a reserved range and its MDL.
        assert_ne!(r.kind, iosv::protocol::MK_IO_SPACE, "rule {}", r.rule);
        assert!(r.mdl != 0 || r.passed_mdl != 0, "rule {}", r.rule);
        // IOSV016 is reported and passed; every other one is contained.
        assert_eq!(r.flags & VF_CONTAINED != 0, r.rule != 16, "rule {}", r.rule);
    }
    let audit = host.audit(&summary.expected, true).unwrap();
    assert!(audit.is_clean(), "{audit}");
    assert_eq!(audit.table_entries, 0, "nothing left mapped");
    assert!(host.mm().corruptions().is_empty());
}
