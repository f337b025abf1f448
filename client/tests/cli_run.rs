//! `iosvctl run` on compiled driver images: mingw-w64-built WDM PnP drivers
//! (`runner/fixtures/wdm_pnp.c`, one bug per build) loaded in a child process, with
//! exact counts of what iosv reports, and the distinct exit statuses of a crash, an
//! unimplemented routine, a hang and an image that cannot load.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::{iosvctl, json_lines, parts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The fixtures, built once per test binary with `runner/fixtures/build.sh`.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = common::build_runner_fixtures("runner-fixtures");
        build_rust_fixture(&out);
        out
    })
}

/// Builds `runner/fixtures/rust_control.rs` with rustc and rust-lld (as
/// tests/src/fixture.rs builds the PE fixtures): `rust_control.sys`.
fn build_rust_fixture(out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runner/fixtures/rust_control.rs");
    let text = std::fs::read_to_string(&src).expect("read rust_control.rs");
    let mut cmd =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
    cmd.args([
        "--edition",
        "2021",
        "--target",
        "x86_64-pc-windows-msvc",
        "--crate-type",
        "cdylib",
        "-C",
        "panic=abort",
        "-C",
        "opt-level=1",
        "-C",
        "linker=rust-lld",
        "-C",
        "link-arg=/driver",
        "-C",
        "link-arg=/subsystem:native",
        "-C",
        "link-arg=/entry:DriverEntry",
        "-C",
        "link-arg=/nodefaultlib",
        "-C",
        "link-arg=/debug:none",
    ]);
    for arg in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("// iosv-fixture-link-arg:"))
    {
        cmd.arg("-C").arg(format!("link-arg={}", arg.trim()));
    }
    let o = cmd
        .arg("-o")
        .arg(out.join("rust_control.sys"))
        .arg(&src)
        .current_dir(out)
        .output()
        .expect("run rustc");
    assert!(
        o.status.success(),
        "building rust_control.sys failed (rustup target add x86_64-pc-windows-msvc):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

/// The ioctl every fixture handles; its bug (if any) fires in the handler.
const POKE: &str = "0x222000:01000000";

/// Runs `iosvctl run FIXTURE --ioctl POKE -f json` and returns (exit, rule → count, blamed
/// drivers, live mappings).
fn run_json(name: &str, extra: &[&str]) -> (i32, BTreeMap<String, u64>, Vec<String>, usize) {
    let (code, rules, drivers, live, _) = run_json_err(name, extra);
    (code, rules, drivers, live)
}

/// [`run_json`], and the run's stderr (the driver's DbgPrint lines).
fn run_json_err(
    name: &str,
    extra: &[&str],
) -> (i32, BTreeMap<String, u64>, Vec<String>, usize, String) {
    let path = fixture(name);
    let mut args = vec!["run", path.as_str(), "--ioctl", POKE, "-f", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = parts(&iosvctl(&args));
    let lines = json_lines(&out);
    assert_eq!(
        lines.first().map(|l| l["kind"].clone()),
        Some("run".into()),
        "{out}\n{err}"
    );
    let mut rules = BTreeMap::new();
    let mut drivers = Vec::new();
    let mut live = 0;
    for l in &lines {
        match l["kind"].as_str() {
            Some("violation") => {
                *rules
                    .entry(l["rule"].as_str().unwrap().to_string())
                    .or_insert(0) += 1;
                let blamed = if l["rule"]
                    .as_str()
                    .is_some_and(|r| ["IOSV007", "IOSV008", "IOSV009"].contains(&r))
                {
                    &l["owner"]
                } else {
                    &l["caller"]
                };
                drivers.push(blamed.as_str().unwrap_or("?").to_string());
            }
            Some("mapping") => live += 1,
            _ => {}
        }
    }
    (code, rules, drivers, live, err)
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

#[test]
fn every_bug_build_gets_exactly_its_reports() {
    // (fixture, reports, exit status, mappings still live after the run)
    type Case = (&'static str, &'static [(&'static str, u64)], i32, usize);
    let cases: &[Case] = &[
        ("clean.sys", &[], 0, 0),
        // Vetoes QUERY_STOP; REMOVE unmaps BAR0 with 0x1000 instead of 0x4000 (contained:
        // unmapped with the tracked size) and forgets BAR1.
        (
            "size_and_leak_on_remove.sys",
            &[("IOSV001", 1), ("IOSV008", 1)],
            1,
            1,
        ),
        ("leak_on_stop.sys", &[("IOSV007", 2)], 1, 0),
        ("double_unmap.sys", &[("IOSV005", 1)], 1, 0),
        ("unmap_at_dirql.sys", &[("IOSV002", 1)], 1, 0),
        ("map_at_dirql.sys", &[("IOSV003", 1)], 1, 0),
        ("interior_unmap.sys", &[("IOSV006", 1)], 1, 0),
        ("bad_params.sys", &[("IOSV011", 2)], 1, 0),
        ("leak_on_unload.sys", &[("IOSV009", 1)], 1, 1),
        // Unload ends in `jmp [IAT MmUnmapIoSpace]`: the return address is not in the
        // driver, yet the report blames it (the routine entered is remembered).
        ("tail_call_unmap.sys", &[("IOSV001", 1)], 1, 0),
        // Maps and unmaps inside KeSynchronizeExecution with its connected interrupt: at
        // the interrupt's DIRQL (5).
        (
            "unmap_in_synch.sys",
            &[("IOSV002", 1), ("IOSV003", 1)],
            1,
            0,
        ),
        // clang-built: two access violations handled by __try/__except (one through a
        // __finally frame), then a wrong-size unmap.
        ("seh.sys", &[("IOSV001", 1)], 1, 0),
        // The size/leak driver again, preferring a kernel-space base: relocated.
        ("relocated.sys", &[("IOSV001", 1), ("IOSV008", 1)], 1, 1),
    ];
    for (name, expected, exit, live) in cases {
        let (code, rules, drivers, mapped) = run_json(name, &[]);
        assert_eq!(rules, counts(expected), "{name}");
        assert_eq!(code, *exit, "{name}");
        assert!(
            drivers.iter().all(|d| d == name),
            "{name}: blamed {drivers:?}"
        );
        assert_eq!(mapped, *live, "{name}: live mappings");
    }
}

/// The disassembly of fixture `name` (mingw's objdump).
fn disassembly(name: &str) -> String {
    let o = std::process::Command::new("x86_64-w64-mingw32-objdump")
        .args(["-d", &fixture(name)])
        .output()
        .expect("run x86_64-w64-mingw32-objdump");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_tail_call_fixture_really_leaves_unload_by_a_jump_through_the_iat() {
    let text = disassembly("tail_call_unmap.sys");
    let unload = text
        .split("<Unload>:")
        .nth(1)
        .expect("Unload in the disassembly");
    let body = unload.split("\n\n").next().unwrap_or("");
    assert!(
        body.lines()
            .any(|l| l.contains("jmp") && l.contains("<__imp_MmUnmapIoSpace>")),
        "{body}"
    );
}

#[test]
fn the_surface_fixture_frees_an_mdl_at_unload_by_a_jump_through_the_iat() {
    // MdlBug 11's IoFreeMdl is Unload's last call: GCC makes it a tail call, a jump
    // through __imp_IoFreeMdl right after an epilogue (`add $…,%rsp`). (Unload is static:
    // no label to split at; the import stub `IoFreeMdl` jumps there too, with no epilogue.)
    let text = disassembly("surface.sys");
    let lines: Vec<&str> = text.lines().collect();
    let tail_calls = lines
        .windows(2)
        .filter(|w| {
            w[0].contains("add ")
                && w[0].ends_with(",%rsp")
                && w[1].contains("jmp")
                && w[1].contains("<__imp_IoFreeMdl>")
        })
        .count();
    assert_eq!(tail_calls, 1, "{text}");
}

#[test]
fn a_rust_legacy_driver_with_delay_load_imports_is_hooked_and_judged() {
    let path = fixture("rust_control.sys");
    let (code, out, err) = parts(&iosvctl(&[
        "run", &path, "--ioctl", "0x222000", "-f", "json",
    ]));
    assert_eq!(code, 1, "{out}\n{err}");
    let lines = json_lines(&out);
    let notes = lines[0]["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("5 imports of which 5 delay-load")),
        "{notes:?}"
    );
    let rules: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "violation")
        .map(|l| (l["rule"].as_str().unwrap(), l["caller"].as_str().unwrap()))
        .collect();
    assert_eq!(rules, vec![("IOSV005", "rust_control.sys")]);
}

#[test]
fn exceptions_reach_the_drivers_try_except_and_finally_blocks() {
    let path = fixture("seh.sys");
    let (code, out, err) = parts(&iosvctl(&["run", &path]));
    assert_eq!(code, 1, "{out}\n{err}");
    // DriverEntry prints what its handlers saw and fails unless both were reached with
    // STATUS_ACCESS_VIOLATION and the __finally ran once.
    assert!(
        err.contains("DbgPrint: seh: first c0000005 second c0000005 finally 1"),
        "{err}"
    );
    assert!(!out.contains("DriverEntry failed"), "{out}");
}

#[test]
fn work_items_dpcs_and_timers_run_when_the_routine_returns_at_their_irql() {
    let path = fixture("clean.sys");
    let (code, out, err) = parts(&iosvctl(&["run", &path, "--ioctl", POKE]));
    assert_eq!(code, 0, "{out}\n{err}");
    // The IOCTL queued a DPC, a work item and a 1 ms timer; they run once the dispatch
    // routine has returned: the DPC first (at DISPATCH_LEVEL), then the work item
    // (PASSIVE_LEVEL), then the timer's DPC.
    assert!(
        err.contains("DbgPrint: wdm_pnp: work item ran at IRQL 0 (DPCs 1, timer DPCs 0)"),
        "{err}"
    );
    assert!(
        err.contains("DbgPrint: wdm_pnp: timer DPC ran at IRQL 2"),
        "{err}"
    );
    // The headers' inline lookaside routines over the host's SList routines.
    assert!(
        err.contains("DbgPrint: wdm_pnp: lookaside entry reused"),
        "{err}"
    );
}

#[test]
fn surprise_removal_reports_leaks_at_the_surprise_removal() {
    // The size/leak driver unmaps in SURPRISE_REMOVAL as in REMOVE: a wrong size for
    // BAR0, and BAR1 leaked — reported when the surprise removal completes.
    let (code, rules, drivers, live) =
        run_json("size_and_leak_on_remove.sys", &["--surprise-removal"]);
    assert_eq!(rules, counts(&[("IOSV001", 1), ("IOSV008", 1)]));
    assert_eq!(code, 1);
    assert!(drivers.iter().all(|d| d == "size_and_leak_on_remove.sys"));
    assert_eq!(live, 1);
    let (code, rules, _, live) = run_json("clean.sys", &["--surprise-removal"]);
    assert_eq!((code, rules.len(), live), (0, 0, 0));
}

#[test]
fn the_ground_truth_audit_catches_what_iosv_could_not_see() {
    // seh.c linked against mingw's import library: its IAT slots are 4-byte aligned, iosv
    // refuses to patch them, and the driver's wrong-size unmap reaches the simulated Mm
    // directly. No report, but the audit sees the corruption: exit 4.
    let path = fixture("unhooked.sys");
    let (code, out, err) = parts(&iosvctl(&["run", &path]));
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(
        out.contains(
            "iosv could not attach to unhooked.sys: the interception plan was refused: \
             IAT slot at RVA 0x"
        ) && out.contains("is not pointer-aligned"),
        "{out}"
    );
    assert!(out.contains("audit: unclean:"), "{out}");
    assert!(
        out.contains("MmUnmapIoSpace(0xffffd00000000000, 0x1000) bypassing iosv of a mapping of 0x2000 bytes"),
        "{out}"
    );
    assert!(out.contains("no violations"), "{out}");
    let (code, out, _) = parts(&iosvctl(&["run", &path, "-f", "sarif"]));
    assert_eq!(code, 4);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["runs"][0]["invocations"][0]["executionSuccessful"],
        false
    );
    // Where iosv is attached, the same audit is clean.
    let (code, out, _) = parts(&iosvctl(&["run", &fixture("seh.sys")]));
    assert_eq!(code, 1);
    assert!(
        out.contains("audit: the verifier's table matches the simulated Mm; no corruption"),
        "{out}"
    );
}

#[test]
fn human_output_names_the_driver_and_the_rules() {
    let path = fixture("size_and_leak_on_remove.sys");
    let (code, out, _) = parts(&iosvctl(&["run", &path]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("driver size_and_leak_on_remove.sys ("),
        "{out}"
    );
    assert!(
        out.contains("the driver vetoed IRP_MN_QUERY_STOP_DEVICE"),
        "{out}"
    );
    assert!(
        out.contains("IOSV001  unmap-size-mismatch  error     1"),
        "{out}"
    );
    assert!(
        out.contains("IOSV008  leak-on-remove       error     1"),
        "{out}"
    );
    assert!(out.contains("1 live mapping, 0x1000 bytes"), "{out}");
}

#[test]
fn sarif_junit_and_html_come_out_whole() {
    let path = fixture("leak_on_stop.sys");
    let (code, out, _) = parts(&iosvctl(&["run", &path, "-f", "sarif"]));
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one SARIF document");
    let results = doc["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["ruleId"] == "IOSV007"));
    let (code, out, _) = parts(&iosvctl(&["run", &path, "-f", "junit"]));
    assert_eq!(code, 1);
    assert!(out.starts_with("<?xml"), "{out}");
    assert!(out.contains("IOSV007"), "{out}");
    let (code, out, _) = parts(&iosvctl(&["run", &path, "-f", "html"]));
    assert_eq!(code, 1);
    assert!(out.starts_with("<!DOCTYPE html>"), "{out}");
    assert!(out.contains("IOSV007"), "{out}");
}

#[test]
fn bars_given_on_the_command_line_are_what_the_driver_maps() {
    let path = fixture("leak_on_stop.sys");
    let (code, out, err) = parts(&iosvctl(&[
        "run",
        &path,
        "--bar",
        "0xE0000000:0x2000",
        "--bar",
        "0xE0100000:0x3000",
        "-f",
        "json",
    ]));
    assert_eq!(code, 1, "{err}");
    let leaks: Vec<_> = json_lines(&out)
        .into_iter()
        .filter(|l| l["kind"] == "violation")
        .map(|l| {
            (
                l["physical"].as_str().unwrap().to_string(),
                l["mapped_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        leaks,
        vec![
            ("0xe0000000".to_string(), 0x2000),
            ("0xe0100000".to_string(), 0x3000)
        ]
    );
}

#[test]
fn a_crash_is_a_report_with_module_offset_and_routine_and_exit_5() {
    let path = fixture("crash.sys");
    let (code, out, err) = parts(&iosvctl(&["run", &path, "--ioctl", POKE]));
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(
        err.contains("driver crash.sys crashed: SIGSEGV at crash.sys+0x"),
        "{err}"
    );
    assert!(
        err.contains("while running IRP_MJ_DEVICE_CONTROL dispatch (entry crash.sys+0x"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn an_unimplemented_routine_is_named_with_exit_6() {
    let path = fixture("unimplemented.sys");
    let (code, _, err) = parts(&iosvctl(&["run", &path, "--ioctl", POKE]));
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("driver unimplemented.sys called ntoskrnl.exe!IoGetDmaAdapter, which the host does not implement (in IRP_MJ_DEVICE_CONTROL dispatch)"),
        "{err}"
    );
}

#[test]
fn a_spinning_driver_is_ended_by_the_watchdog_with_exit_7() {
    let path = fixture("spin.sys");
    let started = std::time::Instant::now();
    let (code, _, err) = parts(&iosvctl(&[
        "run",
        &path,
        "--ioctl",
        POKE,
        "--watchdog",
        "1",
    ]));
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains(
            "driver spin.sys hung: IRP_MJ_DEVICE_CONTROL dispatch did not return within 1 s"
        ),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn an_image_that_needs_relocations_it_lacks_is_refused_with_exit_8() {
    let path = fixture("no_reloc.sys");
    let (code, _, err) = parts(&iosvctl(&["run", &path]));
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("has no base relocations (.reloc)"), "{err}");
    let (code, _, err) = parts(&iosvctl(&["run", env!("CARGO_MANIFEST_DIR")]));
    assert_eq!(code, 2, "{err}");
    let not_pe = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let (code, _, err) = parts(&iosvctl(&["run", &not_pe.display().to_string()]));
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("no PE headers"), "{err}");
}

/// What `iosvctl run` and `iosvctl lab` print on stderr for fail_entry.sys at `path`.
fn fail_entry_report(path: &str) -> String {
    format!(
        "iosvctl: cannot load {path}: DriverEntry of fail_entry.sys failed with status \
         0xc0000182 (STATUS_DEVICE_CONFIGURATION_ERROR)"
    )
}

/// A driver that fails to load fails the run, as on Windows: DriverEntry maps two pages,
/// fails with STATUS_DEVICE_CONFIGURATION_ERROR and leaves them mapped. The reports come
/// first (the image is unloaded without DriverUnload: the mapping is IOSV009, and stays
/// mapped), then exit status 8 and a message naming the NTSTATUS, in every format.
#[test]
fn a_failed_driver_entry_fails_the_run_with_exit_8_after_its_reports() {
    let path = fixture("fail_entry.sys");
    let (code, rules, drivers, live, err) = run_json_err("fail_entry.sys", &[]);
    assert_eq!(code, 8, "{err}");
    assert_eq!(rules, counts(&[("IOSV009", 1)]), "{err}");
    assert_eq!(drivers, ["fail_entry.sys"]);
    assert_eq!(live, 1, "the leaked mapping stays mapped");
    assert!(err.lines().any(|l| l == fail_entry_report(&path)), "{err}");

    let (code, out, err) = parts(&iosvctl(&["run", &path]));
    assert_eq!(code, 8, "{out}\n{err}");
    assert!(out.contains("IOSV009"), "{out}");
    assert!(
        out.contains("DriverEntry failed with status 0xc0000182"),
        "the note: {out}"
    );
    assert!(
        !out.contains("AddDevice"),
        "nothing runs after DriverEntry: {out}"
    );
    assert_eq!(
        err.lines().last(),
        Some(fail_entry_report(&path).as_str()),
        "{err}"
    );

    let (code, out, err) = parts(&iosvctl(&["run", &path, "-f", "sarif"]));
    assert_eq!(code, 8, "{err}");
    let log: serde_json::Value = serde_json::from_str(&out).expect("SARIF");
    let invocation = &log["runs"][0]["invocations"][0];
    assert_eq!(invocation["executionSuccessful"], false, "{invocation}");
    assert_eq!(invocation["exitCode"], 8, "{invocation}");
    let notes = invocation["toolExecutionNotifications"].to_string();
    assert!(
        notes.contains("STATUS_DEVICE_CONFIGURATION_ERROR"),
        "{notes}"
    );
    assert_eq!(log["runs"][0]["results"][0]["ruleId"], "IOSV009");

    // Whatever --fail-on counts, the load failure decides the status; JUnit fails a case
    // for it.
    let (code, out, err) = parts(&iosvctl(&[
        "run",
        &path,
        "--fail-on",
        "error",
        "-f",
        "junit",
    ]));
    assert_eq!(code, 8, "{err}");
    assert!(
        out.contains("run: the driver loads (DriverEntry succeeds)"),
        "{out}"
    );
}

/// `clean.sys` with `edit` applied to its bytes (given the offsets of the NT headers, the
/// optional header and the first section header), written next to the fixtures.
fn hostile_copy(name: &str, edit: impl FnOnce(&mut Vec<u8>, usize, usize, usize)) -> String {
    let mut bytes = std::fs::read(fixtures().join("clean.sys")).unwrap();
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let nt = le32(&bytes, 0x3C) as usize;
    let opt = nt + 24;
    let size_of_optional = u16::from_le_bytes(bytes[nt + 20..nt + 22].try_into().unwrap());
    let section = opt + usize::from(size_of_optional);
    edit(&mut bytes, nt, opt, section);
    let path = fixtures().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn put32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn hostile_image_headers_are_load_failures_with_exit_8() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "entry point outside the image",
            hostile_copy("hostile_entry.sys", |b, _, opt, _| {
                put32(b, opt + 16, 0xFFFF_FFF0)
            }),
            "the entry point RVA 0xfffffff0 is not inside the image",
        ),
        (
            "section data past the end of the file",
            hostile_copy("hostile_raw.sys", |b, _, _, sec| {
                put32(b, sec + 20, 0xFFFF_FF00)
            }),
            "",
        ),
        (
            "SizeOfImage of 4 GiB",
            hostile_copy("hostile_size.sys", |b, _, opt, _| {
                put32(b, opt + 56, 0xFFFF_FFFF)
            }),
            "SizeOfImage 0xffffffff is out of range",
        ),
        (
            "truncated after the headers",
            hostile_copy("hostile_short.sys", |b, _, _, _| b.truncate(0x300)),
            "",
        ),
        (
            "a writable code section",
            hostile_copy("hostile_wx.sys", |b, _, _, sec| {
                let ch = u32::from_le_bytes(b[sec + 36..sec + 40].try_into().unwrap());
                put32(b, sec + 36, ch | 0x8000_0000 | 0x2000_0000);
            }),
            "would be both writable and executable",
        ),
        (
            "a section count past the headers",
            hostile_copy("hostile_sections.sys", |b, nt, _, _| {
                b[nt + 6..nt + 8].copy_from_slice(&0xFFFFu16.to_le_bytes());
            }),
            "",
        ),
    ];
    for (what, path, says) in cases {
        let (code, out, err) = parts(&iosvctl(&["run", &path]));
        assert_eq!(code, 8, "{what}: {out}\n{err}");
        assert!(err.contains("iosvctl: cannot load "), "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(out.is_empty(), "{what}: {out}");
    }
}

/// Header bytes flipped at random (a fixed seed): whatever the child makes of them, the
/// parent reports one of the run's outcomes and never panics or hangs.
#[test]
fn randomly_corrupted_headers_never_break_the_parent() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..12 {
        let flips: Vec<(usize, u8)> = (0..4)
            .map(|_| ((next() % 0x400) as usize, next() as u8))
            .collect();
        let path = hostile_copy(&format!("hostile_random_{round}.sys"), |b, _, _, _| {
            for (at, v) in flips {
                b[at] ^= v | 1;
            }
        });
        let (code, out, err) = parts(&iosvctl(&["run", &path, "--watchdog", "2"]));
        assert!(
            [0, 1, 4, 5, 6, 7, 8].contains(&code),
            "round {round}: exit {code}\n{out}\n{err}"
        );
        assert!(!err.contains("panicked"), "round {round}: {err}");
    }
}

/// Pids of the processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next().unwrap_or("");
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(parent) && state != "Z" {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// iosvctl killed while the driver spins (the child is in its own process group, out of
/// reach of a terminal's ^C): the child does not outlive it.
#[test]
fn the_child_dies_with_iosvctl() {
    let path = fixture("spin.sys");
    let mut parent = std::process::Command::new(common::IOSVCTL)
        .args(["run", &path, "--ioctl", POKE, "--watchdog", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let child = loop {
        if let Some(&c) = children_of(parent.id()).first() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no child started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    parent.kill().unwrap();
    parent.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(child) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!alive(child), "child {child} outlived iosvctl");
    // A killed iosvctl cannot remove its socket directory; the test does.
    let _ =
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("iosv-run-{}-0", parent.id())));
}

#[test]
fn bad_run_arguments_are_usage_errors() {
    let path = fixture("clean.sys");
    for bad in [
        ["--bar", "0x1000"],
        ["--ioctl", "nope"],
        ["--watchdog", "0"],
    ] {
        let (code, _, err) = parts(&iosvctl(&["run", &path, bad[0], bad[1]]));
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
}

/// `iosvctl run surface.sys --ioctl POKE -f json` with `--registry` values: (exit, rule →
/// count, live mappings, stderr with the driver's DbgPrint lines); every report blames it.
fn run_surface(registry: &[&str]) -> (i32, BTreeMap<String, u64>, usize, String) {
    let mut extra = Vec::new();
    for r in registry {
        extra.extend(["--registry", r]);
    }
    let (code, rules, drivers, live, err) = run_json_err("surface.sys", &extra);
    assert!(
        drivers.iter().all(|d| d == "surface.sys"),
        "{registry:?}: blamed {drivers:?}"
    );
    (code, rules, live, err)
}

#[test]
fn registry_values_choose_how_many_bars_leak_at_stop() {
    // (registry, IOSV007 count): the driver maps Parameters\BarCount BARs (default 2) and
    // leaks them at STOP only when Parameters\LeakOnStop is 1.
    let cases: &[(&[&str], u64)] = &[
        (&[], 0),
        (&["Parameters\\LeakOnStop=dword:0"], 0),
        (&["Parameters\\LeakOnStop=dword:1"], 2),
        (
            &[
                "Parameters\\LeakOnStop=dword:1",
                "Parameters\\BarCount=dword:1",
            ],
            1,
        ),
        // A value of the wrong type fails RtlQueryRegistryValues' type check: the driver
        // keeps its defaults for what the table had not stored yet.
        (&["Parameters\\LeakOnStop=sz:1"], 0),
    ];
    for (registry, leaks) in cases {
        let (code, rules, live, _) = run_surface(registry);
        let expected = if *leaks == 0 {
            counts(&[])
        } else {
            counts(&[("IOSV007", *leaks)])
        };
        assert_eq!(rules, expected, "{registry:?}");
        assert_eq!(code, i32::from(*leaks > 0), "{registry:?}");
        assert_eq!(live, 0, "{registry:?}");
    }
}

#[test]
fn registry_reads_answer_as_their_ddi_pages_say() {
    let (code, _, _, err) = run_surface(&[]);
    assert_eq!(code, 0, "{err}");
    // Defaults of RtlQueryRegistryValues (DIRECT + TYPECHECK; a REG_SZ default with a
    // computed length into an allocated buffer), a missing REQUIRED value, a missing
    // value for ZwQueryValueKey, and a written value read back (KEY_VALUE_FULL_INFORMATION:
    // name "Loaded" 12 bytes, data at the 4-aligned 20 + 12 = 32, 36 bytes in all).
    for line in [
        "query 00000000 BarCount 2 LeakOnStop 0 MdlBug 0 Greeting hello Lines 0",
        "required c0000034 0",
        "blob c0000034",
        "set 00000000, read back 00000000 name 12 bytes, data 1 at 32 (36 bytes)",
        "device Flavor c0000034",
        // IoOpenDeviceRegistryKey of a device object that is not a PDO (the driver's
        // FDO): STATUS_INVALID_DEVICE_REQUEST.
        "fdo key c0000010",
    ] {
        assert!(
            err.contains(&format!("DbgPrint: surface: {line}\n")),
            "{line}\n{err}"
        );
    }
    let (code, _, _, err) = run_surface(&[
        "Parameters\\Greeting=sz:bonjour",
        "Parameters\\Lines=multi_sz:one,two",
        "Parameters\\Blob=binary:0a,0b,0c",
        "Parameters\\MustExist=dword:0x7",
        "@hw\\Flavor=sz:fast",
    ]);
    assert_eq!(code, 0, "{err}");
    for line in [
        // A REG_MULTI_SZ reaches the QueryRoutine one REG_SZ at a time.
        "line one",
        "line two",
        "query 00000000 BarCount 2 LeakOnStop 0 MdlBug 0 Greeting bonjour Lines 2",
        "required 00000000 7",
        // 4 bytes: less than the fixed part (STATUS_BUFFER_TOO_SMALL, nothing written);
        // 13: the fixed part and one byte (STATUS_BUFFER_OVERFLOW); ResultLength 12 + 3.
        "blob c0000023/15 80000005/15 first 0a type 3",
        "blob whole 3 bytes, last 0c",
        // IoOpenDeviceRegistryKey(PLUGPLAY_REGKEY_DEVICE): the hardware key.
        "device Flavor fast",
    ] {
        assert!(
            err.contains(&format!("DbgPrint: surface: {line}\n")),
            "{line}\n{err}"
        );
    }
    let (code, _, err) = parts(&iosvctl(&[
        "run",
        &fixture("surface.sys"),
        "--registry",
        "Parameters\\X=float:1",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown type `float`"), "{err}");
}

#[test]
fn every_mdl_bug_of_a_compiled_driver_gets_exactly_its_reports() {
    // (Parameters\MdlBug, reports, exit, live mappings after the run). Every build first
    // runs a clean cycle: MmGetSystemAddressForMdlSafe's mapping released by
    // MmUnlockPages, an explicit map and unmap, a reserved range mapped and unmapped.
    type Case = (u32, &'static [(&'static str, u64)], i32, usize);
    let cases: &[Case] = &[
        (0, &[], 0, 0),
        // IoFreeMdl under a live mapping: contained (iosv unmaps it first).
        (1, &[("IOSV017", 1)], 1, 0),
        // A locked-pages mapping never unmapped: reported at unload, still listed.
        (2, &[("IOSV009", 1)], 1, 1),
        (3, &[("IOSV018", 1)], 1, 0),
        (4, &[("IOSV015", 1)], 1, 0),
        (5, &[("IOSV019", 1)], 1, 0),
        (6, &[("IOSV020", 1)], 1, 0),
        // Unmapped at IRQL 5 (raised through cr8) through the routine
        // MmGetSystemRoutineAddress handed out: iosv's hook.
        (7, &[("IOSV016", 1)], 1, 0),
        // Not a bug: IoFreeMdl releases the mapping of a partial MDL (IoBuildPartialMdl)
        // itself — no report, and the audit finds the mapping gone from both sides.
        (8, &[], 0, 0),
        // IoFreeMdl under a live mapping as DriverUnload's last call, a tail call: the
        // hook's return address is the runner's, still blamed on surface.sys
        // (run_surface asserts every report's driver).
        (11, &[("IOSV017", 1)], 1, 0),
        // MmUnmapReservedMapping with another pool tag: contained (passed with the
        // range's own), so the runner's Mm, which records a wrong tag as the corruption it
        // is (Windows bug-checks 0xDA), unmaps and frees the range cleanly: exit 1, not 4.
        (12, &[("IOSV022", 1)], 1, 0),
        // An MDL mapping's address passed to MmMapLockedPagesWithReservedMapping:
        // contained (NULL, not passed to the runner's Mm, which would record it as the
        // corruption it is), and the driver unmaps its MDL mapping cleanly.
        (13, &[("IOSV023", 1)], 1, 0),
        // Not a bug: a double buffer in a divisible range (MmAllocateMappingAddressEx
        // through MmGetSystemRoutineAddress), each half unmapped at its own address.
        (14, &[], 0, 0),
        // That range freed with its second half still mapped: contained (iosv unmaps the
        // sub-range mapping first).
        (15, &[("IOSV018", 1)], 1, 0),
    ];
    for (bug, expected, exit, live) in cases {
        let value = format!("Parameters\\MdlBug=dword:{bug}");
        let (code, rules, mapped, err) = run_surface(&[&value]);
        assert_eq!(rules, counts(expected), "MdlBug {bug}");
        assert_eq!(code, *exit, "MdlBug {bug}");
        assert_eq!(mapped, *live, "MdlBug {bug}: {err}");
    }
    // The MDL the driver sees is a real MDL: the headers' macro reads MdlFlags and
    // MappedSystemVa (mapped once, at the buffer's byte offset; MDL_MAPPED_TO_SYSTEM_VA |
    // MDL_PAGES_LOCKED), and MmUnlockPages clears both flags.
    let (_, _, _, err) = run_surface(&["Parameters\\MdlBug=dword:8"]);
    // The partial MDL's own mapping: MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL |
    // MDL_PARTIAL_HAS_BEEN_MAPPED, at its byte offset.
    assert!(
        err.contains("DbgPrint: surface: partial mapped at offset 100, flags 31\n"),
        "{err}"
    );
    assert!(
        err.contains("DbgPrint: surface: mdl mapped once, offset 10, flags 3\n"),
        "{err}"
    );
    assert!(
        err.contains("DbgPrint: surface: mdl unlocked, flags 0\n"),
        "{err}"
    );
    // A mapping is a window onto the MDL's buffer pages: a store through the mapping is
    // in the buffer, a store to the buffer is seen through the mapping and through a
    // reserved mapping of the same MDL.
    assert!(
        err.contains("DbgPrint: surface: through the mapping badf00d, in the buffer 5a5a1234\n"),
        "{err}"
    );
    assert!(
        err.contains("DbgPrint: surface: through the reserved mapping 5a5a1234\n"),
        "{err}"
    );
}

/// A driver misusing a registry routine gets a bug-check report naming the routine and
/// argument (exit 5), not a fault deep in host code or an allocation of the length it
/// claimed: a ZwSetValueKey DataSize of 2 GiB past a 4-byte buffer, and a QueryRoutine
/// that is not driver code.
#[test]
fn registry_misuse_is_a_bug_check_naming_the_routine() {
    let path = fixture("surface.sys");
    for (bug, says) in [
        (1, "bug-checked: ZwSetValueKey Data: 2147483632 bytes at 0x"),
        (
            2,
            "bug-checked: RtlQueryRegistryValues: the QueryRoutine 0x1000 of a table entry is not in a driver image",
        ),
    ] {
        let value = format!("Parameters\\RegBug=dword:{bug}");
        let (code, _, err) = parts(&iosvctl(&["run", &path, "--registry", &value]));
        assert_eq!(code, 5, "RegBug {bug}: {err}");
        assert!(err.contains(says), "RegBug {bug}: {err}");
    }
}

/// IoBuildPartialMdl of a range outside the source MDL's buffer, or into a target MDL
/// too small for it, is the bug check Windows raises (0x12E INVALID_MDL_RANGE, 0x40
/// TARGET_MDL_TOO_SMALL), exit 5, not a partial MDL describing memory the source does
/// not.
#[test]
fn partial_mdl_misuse_is_the_documented_bug_check() {
    let path = fixture("surface.sys");
    for (bug, says) in [
        (
            9,
            "bug-checked: INVALID_MDL_RANGE (0x12e): IoBuildPartialMdl(0x",
        ),
        (
            10,
            "bug-checked: TARGET_MDL_TOO_SMALL (0x40): IoBuildPartialMdl(0x",
        ),
    ] {
        let value = format!("Parameters\\MdlBug=dword:{bug}");
        let (code, out, err) = parts(&iosvctl(&[
            "run",
            &path,
            "--ioctl",
            POKE,
            "--registry",
            &value,
        ]));
        assert_eq!(code, 5, "MdlBug {bug}: {err}");
        assert!(err.contains(says), "MdlBug {bug}: {err}");
        assert!(out.is_empty(), "{out}");
    }
}

/// A driver that returns STATUS_PENDING for an IOCTL and never completes it leaves the
/// child waiting in its own code, after the dispatch routine returned: the watchdog ends
/// the run (exit 7) instead of `iosvctl run` waiting forever. The test gives up after
/// 60 s (a hang) rather than hang itself.
#[test]
fn an_irp_pended_forever_is_ended_by_the_watchdog() {
    let path = fixture("surface.sys");
    let mut child = std::process::Command::new(common::IOSVCTL)
        .args([
            "run",
            &path,
            "--ioctl",
            POKE,
            "--registry",
            "Parameters\\RegBug=dword:3",
            "--watchdog",
            "1",
        ])
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
            panic!("iosvctl run waited for the pended IRP forever");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, _, err) = parts(&child.wait_with_output().expect("output"));
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains(
            "driver surface.sys hung: the host waited 1 s for the IRP (major 14, minor 0) the \
             driver returned pending to complete (the watchdog ended it)"
        ),
        "{err}"
    );
}

#[test]
fn a_double_free_of_pool_is_a_bug_check_report_not_heap_corruption() {
    let path = fixture("double_free_pool.sys");
    let (code, out, err) = parts(&iosvctl(&["run", &path, "--ioctl", POKE]));
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(
        err.contains("ExFreePoolWithTag(0x") && err.contains("not a live pool block"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

/// Freeing a pool block while a locked, mapped MDL still describes it is a bug-check
/// report naming the routine and the MDL (exit 5), as the double free is: the pages would
/// be freed under the MDL and its mapping.
#[test]
fn freeing_pool_under_an_mdl_in_use_is_a_bug_check_report() {
    let path = fixture("free_pool_under_mdl.sys");
    let (code, out, err) = parts(&iosvctl(&["run", &path, "--ioctl", POKE]));
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(
        err.contains("bug-checked: ExFreePoolWithTag(0x")
            && err.contains("the pool block is still described by MDL 0x")
            && err.contains("(its pages locked and mapped, buffer ["),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}
