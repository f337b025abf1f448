//! `iosvctl lab` on scenarios that name a compiled driver image (`image = "x.sys"`): the
//! mingw-w64-built fixtures of `iosvctl run` (`runner/fixtures/wdm_pnp.c`, one bug per
//! build) driven through scripted PnP cycles, IOCTLs and stress phases in a runner child,
//! with exact counts, the audit of `expect`, run's exit statuses, and parse errors.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::{iosvctl, json_lines, parts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The fixtures, built once per test binary with `runner/fixtures/build.sh` (as
/// `cli_run.rs` builds them, into a directory of this binary's own).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::build_runner_fixtures("runner-fixtures-lab"))
}

/// Writes `text` as `name` beside the fixtures (so `image = "x.sys"` finds them) and
/// returns its path.
fn scenario(name: &str, text: &str) -> String {
    let path = fixtures().join(name);
    std::fs::write(&path, text).expect("write the scenario");
    path.display().to_string()
}

/// What a JSON `lab` run printed: exit status, the lab line, violations per (rule,
/// blamed driver).
struct Lab {
    code: i32,
    lab: serde_json::Value,
    counts: BTreeMap<(String, String), u64>,
    err: String,
}

fn lab_json(path: &str) -> Lab {
    let (code, out, err) = parts(&iosvctl(&["lab", path, "--no-progress", "-f", "json"]));
    let lines = json_lines(&out);
    let lab = lines
        .iter()
        .find(|l| l["kind"] == "lab")
        .cloned()
        .unwrap_or_else(|| panic!("no lab line (exit {code}):\n{out}\n{err}"));
    let mut counts = BTreeMap::new();
    for l in lines.iter().filter(|l| l["kind"] == "violation") {
        let rule = l["rule"].as_str().unwrap().to_string();
        let blamed = if ["IOSV007", "IOSV008", "IOSV009"].contains(&rule.as_str()) {
            &l["owner"]
        } else {
            &l["caller"]
        };
        *counts
            .entry((rule, blamed.as_str().unwrap_or("?").to_string()))
            .or_insert(0) += 1;
    }
    Lab {
        code,
        lab,
        counts,
        err,
    }
}

fn counts(pairs: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
    pairs
        .iter()
        .map(|(r, d, n)| ((r.to_string(), d.to_string()), *n))
        .collect()
}

/// `leak_on_stop.sys` through two start/stop cycles, with `expect` on the driver.
fn two_cycles(expect: &str) -> String {
    format!(
        r#"
name = "two cycles"
[[driver]]
image = "leak_on_stop.sys"
{expect}
[[device]]
name = "dev0"
driver = "leak_on_stop.sys"
[[step]]
op = "load"
driver = "leak_on_stop.sys"
[[step]]
op = "add-device"
device = "dev0"
[[step]]
op = "start"
device = "dev0"
[[step]]
op = "ioctl"
device = "dev0"
code = 0x222000
input = "01000000"
[[step]]
op = "stop"
device = "dev0"
[[step]]
op = "start"
device = "dev0"
[[step]]
op = "stop"
device = "dev0"
[[step]]
op = "remove"
device = "dev0"
[[step]]
op = "unload"
driver = "leak_on_stop.sys"
"#
    )
}

/// Each STOP of `leak_on_stop.sys` forgets both BARs: two cycles, four IOSV007, all
/// blamed on the driver; the audit compares them with `expect` (exit 1: violations, a
/// clean audit), an expectation that is off makes the audit unclean (exit 4), and no
/// `expect` shows the reports without auditing them.
#[test]
fn two_start_stop_cycles_of_a_leaking_binary_give_exactly_its_leaks() {
    let want = counts(&[("IOSV007", "leak_on_stop.sys", 4)]);
    let r = lab_json(&scenario(
        "two-cycles-ok.toml",
        &two_cycles("expect = { IOSV007 = 4 }"),
    ));
    assert_eq!(r.counts, want, "{}", r.err);
    assert_eq!(r.code, 1, "{}", r.err);
    assert_eq!(r.lab["audit"]["clean"], true, "{}", r.lab);
    assert_eq!(r.lab["injected"]["IOSV007"], 4, "{}", r.lab);
    assert_eq!(r.lab["steps"], 9);

    let r = lab_json(&scenario(
        "two-cycles-off.toml",
        &two_cycles("expect = { IOSV007 = 3 }"),
    ));
    assert_eq!(r.counts, want);
    assert_eq!(r.code, 4, "{}", r.err);
    let m = &r.lab["audit"]["mismatches"][0];
    assert_eq!(
        (&m["rule"], &m["driver"], &m["injected"], &m["reported"]),
        (
            &"IOSV007".into(),
            &"leak_on_stop.sys".into(),
            &3.into(),
            &4.into()
        ),
        "{}",
        r.lab
    );
    assert!(r.err.contains("the lab audit is unclean"), "{}", r.err);

    assert_eq!(r.lab["unaudited_drivers"], serde_json::json!([]));

    let r = lab_json(&scenario("two-cycles-free.toml", &two_cycles("")));
    assert_eq!(r.counts, want);
    assert_eq!(r.code, 1, "{}", r.err);
    assert_eq!(r.lab["audit"]["clean"], true, "{}", r.lab);
    assert_eq!(r.lab["injected_total"], 0, "{}", r.lab);
    assert_eq!(
        r.lab["unaudited_drivers"],
        serde_json::json!(["leak_on_stop.sys"])
    );
    let (_, out, _) = parts(&iosvctl(&[
        "lab",
        &fixtures()
            .join("two-cycles-free.toml")
            .display()
            .to_string(),
        "--no-progress",
    ]));
    assert!(
        out.contains("not audited: leak_on_stop.sys"),
        "human output names the unaudited driver:\n{out}"
    );
}

/// A simulated driver's injected bugs and a compiled driver's expected ones in one run:
/// the reports are the sum, each blamed on its driver, and the audit is clean. The image
/// has two devices (one with its own BARs); `double_unmap.sys` unmaps BAR0 twice at every
/// stop and surprise removal: 2 stops in the stress phase (its 3rd and 6th operations,
/// one per device), 1 scripted stop, 1 surprise removal.
#[test]
fn a_mixed_scenario_reports_the_sum() {
    let path = scenario(
        "mixed.toml",
        r#"
[[driver]]
name = "sim.sys"
[[driver]]
image = "double_unmap.sys"
expect = { IOSV005 = 4 }
ioctls = [{ code = 0x222000, input = "01000000" }]
[[device]]
name = "s0"
driver = "sim.sys"
[[device]]
name = "d0"
driver = "double_unmap.sys"
[[device]]
name = "d1"
driver = "double_unmap.sys"
bars = [{ physical = 0xF000_0000, size = 0x4000 }, { physical = 0xF001_0000, size = 0x1000 }]
[[step]]
op = "load"
driver = "sim.sys"
[[step]]
op = "add-device"
device = "s0"
[[step]]
op = "bug"
driver = "sim.sys"
rule = "IOSV004"
count = 2
[[step]]
op = "load"
driver = "double_unmap.sys"
[[step]]
op = "add-device"
device = "d0"
[[step]]
op = "add-device"
device = "d1"
[[step]]
op = "stress"
threads = 1
ops = 500
image_ops = 6
image_restart_every = 3
[[step]]
op = "surprise-remove"
device = "d0"
[[step]]
op = "remove"
device = "d0"
[[step]]
op = "stop"
device = "d1"
[[step]]
op = "remove"
device = "d1"
[[step]]
op = "unload"
driver = "double_unmap.sys"
"#,
    );
    let r = lab_json(&path);
    assert_eq!(
        r.counts,
        counts(&[
            ("IOSV004", "sim.sys", 2),
            ("IOSV005", "double_unmap.sys", 4)
        ]),
        "{}",
        r.err
    );
    assert_eq!(r.code, 1, "{}", r.err);
    assert_eq!(r.lab["audit"]["clean"], true, "{}", r.lab);
    assert_eq!(r.lab["injected_total"], 6, "{}", r.lab);
}

/// run's exit statuses: a crash in driver code is 5 with its report on stderr, a call of
/// a routine the host lacks 6, an image that cannot load 8; a step the image cannot take fails the scenario at the step.
#[test]
fn crashes_and_load_failures_end_the_lab_run_as_they_end_run() {
    let steps = |image: &str| {
        format!(
            r#"
[[driver]]
image = "{image}"
[[device]]
name = "d0"
driver = "{image}"
[[step]]
op = "load"
driver = "{image}"
[[step]]
op = "add-device"
device = "d0"
[[step]]
op = "start"
device = "d0"
[[step]]
op = "ioctl"
device = "d0"
code = 0x222000
input = "01000000"
"#
        )
    };
    let path = scenario("crash.toml", &steps("crash.sys"));
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress"]));
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("driver crash.sys crashed: SIGSEGV at crash.sys+")
            && err.contains("while running IRP_MJ_DEVICE_CONTROL dispatch"),
        "{err}"
    );
    let path = scenario("unimplemented.toml", &steps("unimplemented.sys"));
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress"]));
    assert_eq!(code, 6, "{out}\n{err}");
    assert!(
        err.contains("driver unimplemented.sys called ")
            && err.contains("which the host does not implement"),
        "{err}"
    );
    let path = scenario("no-reloc.toml", &steps("no_reloc.sys"));
    let (code, _, err) = parts(&iosvctl(&["lab", &path, "--no-progress"]));
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("cannot load") && err.contains(".reloc"),
        "{err}"
    );
    // A failed DriverEntry: a_failed_driver_entry_stops_the_scenario_after_its_reports.
    let path = scenario(
        "stop-unstarted.toml",
        &steps("clean.sys").replace("op = \"start\"", "op = \"stop\""),
    );
    let (code, _, err) = parts(&iosvctl(&["lab", &path, "--no-progress"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{path}:13:1: step `stop` failed: device `d0` is not started"
        )),
        "{err}"
    );
}

/// A failed DriverEntry ends `lab` as it ends `iosvctl run` (client/tests/cli_run.rs):
/// `fail_entry.sys` maps two pages in DriverEntry and fails with
/// STATUS_DEVICE_CONFIGURATION_ERROR without unmapping them. The scenario stops at the
/// `load` step (the steps after it do not run), the reports collected up to there are
/// printed — the simulated driver's injected IOSV004 before the load, and the leaked
/// mapping, IOSV009, when the image is unloaded without DriverUnload — then the message
/// on stderr as its last line, and exit 8, in every format.
#[test]
fn a_failed_driver_entry_stops_the_scenario_after_its_reports() {
    let path = scenario(
        "fail-entry.toml",
        r#"
name = "fail entry"
[[driver]]
name = "sim.sys"
[[driver]]
image = "fail_entry.sys"
[[device]]
name = "s0"
driver = "sim.sys"
[[device]]
name = "d0"
driver = "fail_entry.sys"
[[step]]
op = "load"
driver = "sim.sys"
[[step]]
op = "add-device"
device = "s0"
[[step]]
op = "bug"
driver = "sim.sys"
rule = "IOSV004"
count = 1
[[step]]
op = "load"
driver = "fail_entry.sys"
[[step]]
op = "add-device"
device = "d0"
[[step]]
op = "start"
device = "d0"
"#,
    );
    let message = format!(
        "iosvctl: cannot load {}: DriverEntry of fail_entry.sys failed with status \
         0xc0000182 (STATUS_DEVICE_CONFIGURATION_ERROR)",
        fixtures().join("fail_entry.sys").display()
    );

    // JSON: the violations, the end line and the leaked mapping, still live; no `lab`
    // line (the scenario did not finish, so there is no summary or audit).
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress", "-f", "json"]));
    assert_eq!(code, 8, "{out}\n{err}");
    let lines = json_lines(&out);
    let mut reported = BTreeMap::new();
    for l in lines.iter().filter(|l| l["kind"] == "violation") {
        let rule = l["rule"].as_str().unwrap().to_string();
        let blamed = if rule == "IOSV009" {
            &l["owner"]
        } else {
            &l["caller"]
        };
        *reported
            .entry((rule, blamed.as_str().unwrap_or("?").to_string()))
            .or_insert(0) += 1;
    }
    assert_eq!(
        reported,
        counts(&[("IOSV004", "sim.sys", 1), ("IOSV009", "fail_entry.sys", 1)]),
        "{out}\n{err}"
    );
    assert!(!lines.iter().any(|l| l["kind"] == "lab"), "{out}");
    assert_eq!(
        lines.iter().filter(|l| l["kind"] == "end").count(),
        1,
        "{out}"
    );
    let live: Vec<_> = lines.iter().filter(|l| l["kind"] == "mapping").collect();
    assert_eq!(live.len(), 1, "the leaked mapping stays mapped: {out}");
    assert_eq!(live[0]["driver"], "fail_entry.sys");
    assert_eq!(err.lines().last(), Some(message.as_str()), "{err}");

    // Human: the child's notes say where the scenario stopped; nothing after the `load`
    // step ran.
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress"]));
    assert_eq!(code, 8, "{out}\n{err}");
    assert!(
        out.contains("IOSV009") && out.contains("leak-on-unload"),
        "{out}"
    );
    assert!(out.contains("IOSV004"), "{out}");
    assert!(
        out.contains("DriverEntry failed with status 0xc0000182"),
        "the child's note: {out}"
    );
    assert!(
        out.contains(&format!("{path}:24:1: step `load` failed")),
        "where the scenario stopped: {out}"
    );
    assert!(
        !out.contains("AddDevice"),
        "nothing runs after the load: {out}"
    );
    assert_eq!(err.lines().last(), Some(message.as_str()), "{err}");

    // SARIF: the run failed (exit 8), with the reports as results.
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress", "-f", "sarif"]));
    assert_eq!(code, 8, "{err}");
    let log: serde_json::Value = serde_json::from_str(&out).expect("SARIF");
    let invocation = &log["runs"][0]["invocations"][0];
    assert_eq!(invocation["executionSuccessful"], false, "{invocation}");
    assert_eq!(invocation["exitCode"], 8, "{invocation}");
    let rules: Vec<&str> = log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ruleId"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"IOSV009"), "{rules:?}");
    assert_eq!(err.lines().last(), Some(message.as_str()), "{err}");

    // JUnit: a failed check named after the command.
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress", "-f", "junit"]));
    assert_eq!(code, 8, "{err}");
    assert!(
        out.contains("lab: the driver loads (DriverEntry succeeds)")
            && !out.contains("run: the driver loads"),
        "{out}"
    );
    assert_eq!(err.lines().last(), Some(message.as_str()), "{err}");
}

/// Steps only simulated drivers can do are refused before anything runs, at their key.
#[test]
fn simulated_only_steps_on_an_image_are_parse_errors() {
    let path = scenario(
        "map-on-image.toml",
        "[[driver]]\nimage = \"clean.sys\"\n[[step]]\nop = \"map\"\ndriver = \"clean.sys\"\nphysical = 0x1000\nsize = 0x1000\n",
    );
    let (code, out, err) = parts(&iosvctl(&["lab", &path]));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "{path}:5:10: `clean.sys` is a compiled driver image: `map` only applies to simulated drivers"
        )),
        "{err}"
    );
}

/// A driver routine that spins is ended by the watchdog (exit 7, as `run`), also after
/// simulated steps ran with no driver code (the watchdog waits while none runs).
#[test]
fn a_spinning_image_is_ended_by_the_watchdog_with_exit_7() {
    let path = scenario(
        "spin.toml",
        r#"
[[driver]]
name = "sim.sys"
[[driver]]
image = "spin.sys"
[[device]]
name = "s0"
driver = "sim.sys"
[[device]]
name = "d0"
driver = "spin.sys"
[[step]]
op = "load"
driver = "spin.sys"
[[step]]
op = "load"
driver = "sim.sys"
[[step]]
op = "add-device"
device = "s0"
[[step]]
op = "start"
device = "s0"
[[step]]
op = "add-device"
device = "d0"
[[step]]
op = "start"
device = "d0"
[[step]]
op = "ioctl"
device = "d0"
code = 0x222000
input = "01000000"
"#,
    );
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress"]));
    assert_eq!(code, 7, "{out}\n{err}");
    assert!(
        err.contains(
            "driver spin.sys hung: IRP_MJ_DEVICE_CONTROL dispatch did not return within 10 s"
        ),
        "{err}"
    );
}

/// A missing image is refused before anything runs, at its `image` key (parsing alone
/// accepts it: a scenario may name a build product not built yet).
#[test]
fn a_missing_image_is_refused_before_the_run_at_its_key() {
    let path = scenario(
        "missing-image.toml",
        "[[driver]]\nimage = \"not_built.sys\"\n[[step]]\nop = \"load\"\ndriver = \"not_built.sys\"\n",
    );
    let (code, out, err) = parts(&iosvctl(&["lab", &path, "--no-progress"]));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(&format!("{path}:2:9: no driver image at `")) && err.contains("not_built.sys"),
        "{err}"
    );
}

/// The shipped `examples/image-leaks.toml` does what its comments say: six IOSV007 of
/// the compiled driver (as its `expect` states), the simulated NIC's leaks as injected, a
/// clean audit. Run beside the fixtures (its image path points at a build directory).
#[test]
fn the_shipped_image_example_runs_as_documented() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/image-leaks.toml");
    let text = std::fs::read_to_string(&example).expect("read the example");
    let from = "image = \"../target/fixtures/leak_on_stop.sys\"";
    assert!(text.contains(from), "the example's image path changed");
    let path = scenario(
        "image-leaks.toml",
        &text.replace(from, "image = \"leak_on_stop.sys\""),
    );
    let r = lab_json(&path);
    assert_eq!(
        r.counts.get(&("IOSV007".into(), "leak_on_stop.sys".into())),
        Some(&6),
        "{:?}\n{}",
        r.counts,
        r.err
    );
    assert_eq!(r.code, 1, "{}", r.err);
    assert_eq!(r.lab["audit"]["clean"], true, "{}", r.lab);
}

/// The shipped `examples/image-registry.toml`: the image driver's `registry` values reach
/// its registry before DriverEntry as `iosvctl run --registry` puts them — the service
/// key's Parameters (one BAR mapped per start, leaked at each stop: two IOSV007, as its
/// `expect` states; the greeting read) and `@hw` in the hardware key of device instance
/// 0000, the first device added, only. A malformed value stops the scenario before
/// anything runs, naming the driver and the value.
#[test]
fn the_shipped_registry_example_gives_the_driver_its_values() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/image-registry.toml");
    let text = std::fs::read_to_string(&example).expect("read the example");
    let from = "image = \"../target/fixtures/surface.sys\"";
    assert!(text.contains(from), "the example's image path changed");
    let text = text.replace(from, "image = \"surface.sys\"");
    let path = scenario("image-registry.toml", &text);
    let r = lab_json(&path);
    assert_eq!(
        r.counts,
        counts(&[("IOSV007", "surface.sys", 2)]),
        "{}",
        r.err
    );
    assert_eq!(r.code, 1, "{}", r.err);
    assert_eq!(r.lab["audit"]["clean"], true, "{}", r.lab);
    let said = |line: &str| {
        r.err
            .lines()
            .filter(|l| *l == format!("DbgPrint: surface: {line}"))
            .count()
    };
    assert_eq!(
        said("query 00000000 BarCount 1 LeakOnStop 1 MdlBug 0 Greeting bonjour Lines 0"),
        1,
        "{}",
        r.err
    );
    assert_eq!(said("started with 1 BARs mapped"), 2, "{}", r.err);
    // fx0 is instance 0000 and has the @hw value; fx1 (0001) has an empty key.
    assert_eq!(said("device Flavor fast"), 1, "{}", r.err);
    assert_eq!(said("device Flavor c0000034"), 1, "{}", r.err);

    // Without the values the driver keeps its defaults: two BARs per start, no leak
    // (and `expect` then fails the audit).
    let start = text.find("registry = [").unwrap();
    let end = start + text[start..].find("]\n").unwrap() + 2;
    let bare = scenario(
        "image-registry-bare.toml",
        &format!("{}{}", &text[..start], &text[end..]),
    );
    let r = lab_json(&bare);
    assert!(r.counts.is_empty(), "{:?}\n{}", r.counts, r.err);
    assert_eq!(r.code, 4, "the audit misses the expected leaks: {}", r.err);

    let bad = scenario(
        "image-registry-bad.toml",
        &text.replace("dword:1", "dword:one"),
    );
    let (code, out, err) = parts(&iosvctl(&["lab", &bad, "--no-progress"]));
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "{bad}:24:5: driver `surface.sys`: registry value `Parameters\\LeakOnStop=dword:one`: \
             `one` is not a 32-bit number"
        )),
        "{err}"
    );
    assert!(!err.contains("DbgPrint"), "nothing ran: {err}");
}

/// An IRP the driver returns pending and never completes ends a lab run with exit 7 after
/// `--watchdog` seconds, as in `run`, instead of the run waiting forever (the watchdog
/// pauses between driver routines, not while the runner waits for the driver). The test
/// gives up after 60 s (a hang) rather than hang itself. `--watchdog 0` is refused as by
/// `run`.
#[test]
fn an_irp_pended_forever_ends_a_lab_run_with_exit_7() {
    let path = scenario(
        "pend.toml",
        r#"
[[driver]]
image = "pend_forever.sys"
[[device]]
name = "d0"
driver = "pend_forever.sys"
[[step]]
op = "load"
driver = "pend_forever.sys"
[[step]]
op = "add-device"
device = "d0"
[[step]]
op = "start"
device = "d0"
[[step]]
op = "ioctl"
device = "d0"
code = 0x222000
input = "01000000"
"#,
    );
    let mut child = std::process::Command::new(common::IOSVCTL)
        .args(["lab", &path, "--no-progress", "--watchdog", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run iosvctl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iosvctl lab waited for the pended IRP forever");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, out, err) = parts(&child.wait_with_output().expect("output"));
    assert_eq!(code, 7, "{out}\n{err}");
    assert!(
        err.contains(
            "driver pend_forever.sys hung: the host waited 1 s for the IRP (major 14, minor 0) \
             the driver returned pending to complete (the watchdog ended it)"
        ),
        "{err}"
    );
    let (code, _, err) = parts(&iosvctl(&["lab", &path, "--watchdog", "0"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--watchdog must be at least 1 second"),
        "{err}"
    );
}
