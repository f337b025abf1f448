//! `iosvctl run --verifier iosv.sys X.sys`: iosv's own kernel component — the Windows
//! glue as `scripts/check-glue` links it — runs in the runner's child beside the driver
//! fixtures and verifies them: it must report exactly what the runner's host engine
//! reports for the same fixture (`iosvctl run X.sys`), and its notes must show that it
//! patched the fixture's import slots itself.
//!
//! iosv.sys is built with `scripts/check-glue` (build only), as tests/tests/glue_image.rs
//! does. Under CI (`CI` set) a build failure fails; elsewhere the tests are skipped with a
//! message when the script's toolchain (clang, llvm-lib, the mingw-w64 DDK headers, the
//! Rust target x86_64-pc-windows-msvc) is missing.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use common::{iosvctl, json_lines, parts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `scripts/check-glue` needs and does not install by itself without root: its
/// absence skips the tests outside CI.
fn glue_toolchain_missing() -> Option<String> {
    let has = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for tool in ["clang", "llvm-lib", "llvm-dlltool", "rustup"] {
        if !has(tool) {
            return Some(format!("{tool} not found"));
        }
    }
    if !Path::new("/usr/share/mingw-w64/include/ddk/ntifs.h").is_file() {
        return Some("the mingw-w64 DDK headers are not installed".into());
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !targets
        .lines()
        .any(|t| t.trim() == "x86_64-pc-windows-msvc")
    {
        return Some("the Rust target x86_64-pc-windows-msvc is not installed".into());
    }
    None
}

/// target/check-glue/iosv.sys, freshly built; `None` (with a message) when the tests are
/// skipped.
fn iosv_sys() -> Option<&'static Path> {
    static IMAGE: OnceLock<Option<PathBuf>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let ci = std::env::var_os("CI").is_some();
            if !ci {
                if let Some(why) = glue_toolchain_missing() {
                    eprintln!("skipped: cannot build iosv.sys with scripts/check-glue ({why})");
                    return None;
                }
            }
            let out = Command::new(root().join("scripts/check-glue"))
                .env("IOSV_GLUE_NO_CLIPPY", "1")
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .expect("run scripts/check-glue");
            assert!(
                out.status.success(),
                "scripts/check-glue failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(root().join("target/check-glue/iosv.sys"))
        })
        .as_deref()
}

/// The C fixtures, built once per test binary with `runner/fixtures/build.sh`.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::build_runner_fixtures("runner-fixtures-kernel"))
}

/// The ioctl every fixture handles; its bug (if any) fires in the handler.
const POKE: &str = "0x222000:01000000";

/// What a run reported, to compare: exit status, rule → count, the driver each report
/// blames, mappings still live.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    exit: i32,
    rules: BTreeMap<String, u64>,
    blamed: Vec<String>,
    live: usize,
}

/// `iosvctl run [--verifier IOSV.sys] FIXTURE --ioctl POKE -f json`: the outcome and the
/// run's notes.
fn run(fixture: &str, verifier: Option<&Path>) -> (Outcome, Vec<String>) {
    run_with(fixture, verifier, &[])
}

/// [`run`] with `extra` arguments.
fn run_with(fixture: &str, verifier: Option<&Path>, extra: &[&str]) -> (Outcome, Vec<String>) {
    let (o, notes, _) = run_late(fixture, verifier, extra);
    (o, notes)
}

/// [`run_with`], and the notes written after the reports were read (`iosvctl: note: …`
/// on stderr).
fn run_late(
    fixture: &str,
    verifier: Option<&Path>,
    extra: &[&str],
) -> (Outcome, Vec<String>, Vec<String>) {
    let path = fixtures().join(fixture).display().to_string();
    let v = verifier.map(|v| v.display().to_string());
    let mut args = vec!["run"];
    if let Some(v) = &v {
        args.extend(["--verifier", v.as_str()]);
    }
    args.extend([path.as_str(), "--ioctl", POKE, "-f", "json"]);
    args.extend_from_slice(extra);
    let (exit, out, err) = parts(&iosvctl(&args));
    let lines = json_lines(&out);
    let head = lines.first().cloned().unwrap_or_default();
    assert_eq!(head["kind"], "run", "{fixture}: {out}\n{err}");
    let notes = head["notes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut o = Outcome {
        exit,
        rules: BTreeMap::new(),
        blamed: Vec::new(),
        live: 0,
    };
    for l in &lines {
        match l["kind"].as_str() {
            Some("violation") => {
                let rule = l["rule"].as_str().unwrap_or("?").to_string();
                let who = if ["IOSV007", "IOSV008", "IOSV009"].contains(&rule.as_str()) {
                    &l["owner"]
                } else {
                    &l["caller"]
                };
                o.blamed.push(who.as_str().unwrap_or("?").to_string());
                *o.rules.entry(rule).or_insert(0) += 1;
            }
            Some("mapping") => o.live += 1,
            _ => {}
        }
    }
    let late = err
        .lines()
        .filter_map(|l| l.strip_prefix("iosvctl: note: "))
        .map(String::from)
        .collect();
    (o, notes, late)
}

#[test]
fn the_kernel_component_reports_exactly_what_the_host_engine_reports() {
    let Some(iosv) = iosv_sys() else { return };
    // Every bug build of wdm_pnp.c (and the SEH, relocated and unhooked builds): one rule or two,
    // at PASSIVE_LEVEL and DIRQL, at stop, remove and unload, through a tail call (blamed
    // on the driver by both: the host engine knows the routine it entered, iosv.sys the
    // import slot's thunk the call went through).
    let fixtures = [
        "clean.sys",
        "size_and_leak_on_remove.sys",
        "leak_on_stop.sys",
        "double_unmap.sys",
        "unmap_at_dirql.sys",
        "map_at_dirql.sys",
        "interior_unmap.sys",
        "bad_params.sys",
        "leak_on_unload.sys",
        "tail_call_unmap.sys",
        "unmap_in_synch.sys",
        "seh.sys",
        "relocated.sys",
        // DriverEntry maps, then fails: the image unloads without DriverUnload and without
        // an unload notification; both report the mapping as IOSV009 and exit 8.
        "fail_entry.sys",
        // Its 4-byte aligned import slots are refused (iosv.sys's own plan refuses them
        // too): no report, but the wrong-size unmap corrupts the simulated Mm — the audit
        // says so, exit 4, with or without iosv.sys.
        "unhooked.sys",
    ];
    let mut reported = 0;
    for name in fixtures {
        let (host, _) = run(name, None);
        let (kernel, notes) = run(name, Some(iosv));
        if name == "fail_entry.sys" {
            assert_eq!(
                (host.exit, host.rules.get("IOSV009")),
                (8, Some(&1)),
                "{name}"
            );
        }
        assert_eq!(
            kernel, host,
            "{name}: iosv.sys vs the host engine\n{notes:#?}"
        );
        reported += host.rules.values().sum::<u64>();
    }
    // Not vacuous: the fixtures do report.
    assert!(reported >= 16, "{reported} reports in all");
}

#[test]
fn the_kernel_component_verifies_the_mdl_family_like_the_host_engine() {
    let Some(iosv) = iosv_sys() else { return };
    // surface.sys: a clean MDL cycle, then the bug Parameters\MdlBug names (0: none,
    // 1-7: IOSV017, IOSV009, IOSV018, IOSV015, IOSV019, IOSV020, IOSV016; 8: a partial
    // MDL freed mapped, clean; 11: IOSV017 by a tail call from DriverUnload, blamed on the
    // driver through IoFreeMdl's per-driver thunk; 12: IOSV022, an unmap with another pool
    // tag, contained; 13: IOSV023, an MDL mapping's address passed as a reserved range,
    // contained; 14: a double buffer in a divisible range, clean; 15: that range freed
    // with its second half mapped, IOSV018) — through iosv.sys's MDL hooks and the
    // runner's Mm.
    let mut reported = 0;
    for bug in (0..=8).chain([11, 12, 13, 14, 15]) {
        let value = format!("Parameters\\MdlBug=dword:{bug}");
        let extra = ["--registry", value.as_str()];
        let (host, _) = run_with("surface.sys", None, &extra);
        let (kernel, notes) = run_with("surface.sys", Some(iosv), &extra);
        assert_eq!(
            kernel, host,
            "MdlBug={bug}: iosv.sys vs the host engine\n{notes:#?}"
        );
        reported += host.rules.values().sum::<u64>();
    }
    assert_eq!(reported, 11);
}

#[test]
fn iosv_sys_patches_the_slots_at_load_and_keeps_them_at_its_unload() {
    let Some(iosv) = iosv_sys() else { return };
    let (o, notes, late_notes) = run_late("leak_on_stop.sys", Some(iosv), &[]);
    assert_eq!(o.rules.get("IOSV007"), Some(&2), "{notes:#?}");
    let find = |prefix: &str| {
        notes
            .iter()
            .find(|n| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no note `{prefix}…` in {notes:#?}"))
            .clone()
    };
    // Nothing bound to a lazy stub: the runner implements every routine iosv.sys imports.
    assert!(
        find("loaded iosv.sys").contains("0 bound to lazy stubs"),
        "{notes:#?}"
    );
    let entry = find("iosv.sys: DriverEntry succeeded");
    assert!(
        entry.contains("1 image-load routine(s) registered"),
        "{entry}"
    );
    assert!(entry.contains("\\dosdevices\\iospaceverifier"), "{entry}");
    // The image-load callback patched the three hooked slots the fixture imports, each
    // now pointing into iosv.sys (written through the MDL alias).
    let at_load = find("after the image-load notification");
    assert!(
        at_load.contains("3 of leak_on_stop.sys's 3 hooked import slots point into iosv.sys"),
        "{at_load}"
    );
    for routine in [
        "MmMapIoSpace",
        "MmUnmapIoSpace",
        "MmGetSystemRoutineAddress",
    ] {
        assert!(at_load.contains(routine), "{routine}: {at_load}");
    }
    assert!(at_load.ends_with("0 hold the kernel routine"), "{at_load}");
    assert!(
        find("iosv.sys's AddDevice returned 0x00000000").ends_with("iosv.sys's filter"),
        "{notes:#?}"
    );
    // The glue's unload policy: once a slot was patched, DriverUnload refuses (iosv
    // stays loaded, the callback stays registered, nothing is restored). It runs after
    // the reports were read; its notes come on stderr (JSON output).
    let unload = late_notes
        .iter()
        .find(|n| n.starts_with("iosv.sys's DriverUnload ran"))
        .unwrap_or_else(|| panic!("no unload note in {late_notes:#?}"));
    assert!(
        unload.contains("1 image-load routine(s) still registered")
            && unload.contains("control device still there (unload refused)")
            && unload.contains("3 slot(s) still patched, 0 restored"),
        "{unload}"
    );
}

#[test]
fn a_verifier_image_that_is_not_iosv_is_a_load_failure() {
    // A driver that creates no control device link cannot serve the control codes.
    let not_iosv = fixtures().join("leak_on_stop.sys").display().to_string();
    let target = fixtures().join("clean.sys").display().to_string();
    let (code, _, err) = parts(&iosvctl(&["run", "--verifier", &not_iosv, &target]));
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("leak_on_stop.sys created no control device with a symbolic link"),
        "{err}"
    );
    // Not an image at all.
    let text = root().join("README.md").display().to_string();
    let (code, _, err) = parts(&iosvctl(&["run", "--verifier", &text, &target]));
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("the verifier image"), "{err}");
}
