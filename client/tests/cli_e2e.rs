//! End to end across processes: `iosvctl host serve` runs a scenario in a child process
//! and serves it on a Unix socket; other `iosvctl` processes pull violations, mappings,
//! statistics and configuration from it. Every rule's violation is checked exactly (rule,
//! driver, device, sizes), and the well-behaved drivers must cause none.
#![cfg(all(unix, feature = "host"))]

mod common;

use common::{data, iosvctl, json_lines, parts, Server};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn violations(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut by_rule = BTreeMap::new();
    for v in lines.iter().filter(|v| v["kind"] == "violation") {
        let rule = v["rule"].as_str().unwrap().to_string();
        assert!(
            by_rule.insert(rule.clone(), v.clone()).is_none(),
            "{rule} reported twice"
        );
    }
    by_rule
}

/// Violations of `tests/data/every_rule.toml`: one of each rule.
const N: u64 = iosv::rules::RULE_COUNT as u64;

fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn every_rule_exactly_once_over_the_socket() {
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    let (code, out, err) = parts(&server.run(&["violations", "--format", "json"]));
    assert_eq!(code, 1, "errors found: exit 1; stderr: {err}");
    let lines = json_lines(&out);
    let v = violations(&lines);
    let rules: Vec<&str> = v.keys().map(String::as_str).collect();
    assert_eq!(
        rules,
        (1..=iosv::rules::RULE_COUNT)
            .map(|n| format!("IOSV{n:03}"))
            .collect::<Vec<_>>()
    );

    // Nothing is blamed on, made by or owned by the well-behaved driver.
    for (rule, r) in &v {
        for field in ["driver", "caller", "owner"] {
            assert_ne!(r[field], "good.sys", "{rule}: {r}");
        }
        assert_eq!(
            r["driver"],
            if rule == "IOSV012" {
                "thief.sys"
            } else {
                "bad.sys"
            },
            "{rule}"
        );
    }

    let r = &v["IOSV001"];
    assert_eq!(
        (r["passed_size"].as_u64(), r["mapped_size"].as_u64()),
        (Some(0x1000), Some(0x2000))
    );
    assert_eq!(
        (r["contained"].as_bool(), r["device"].is_null()),
        (Some(true), true)
    );
    assert_eq!(r["address"], r["base"]);
    assert_eq!(r["severity"], "error");

    let r = &v["IOSV002"];
    assert_eq!(
        (r["passed_size"].as_u64(), r["mapped_size"].as_u64()),
        (Some(0x1000), Some(0x1000))
    );
    assert_eq!(
        (r["irql"].as_str(), r["contained"].as_bool()),
        (Some("DIRQL 5"), Some(false))
    );

    let r = &v["IOSV003"];
    assert_eq!(
        (r["irql"].as_str(), r["passed_size"].as_u64()),
        (Some("HIGH_LEVEL"), Some(0x1000))
    );
    assert_eq!(hex(&r["physical"]), 0xF302_0000);

    let r = &v["IOSV004"];
    assert_eq!(hex(&r["address"]), 0xFFFF_E000_0004_2000);
    assert_eq!(
        (r["passed_size"].as_u64(), r["contained"].as_bool()),
        (Some(0x1000), Some(true))
    );
    assert!(r["owner"].is_null() && r["base"].is_null(), "{r}");

    let r = &v["IOSV005"];
    assert_eq!(r["contained"], true);
    assert_eq!(r["passed_size"], r["mapped_size"]);
    assert_eq!(r["address"], r["base"]);

    let r = &v["IOSV006"];
    assert_eq!(
        (r["passed_size"].as_u64(), r["mapped_size"].as_u64()),
        (Some(0x1000), Some(0x4000))
    );
    assert_eq!(hex(&r["address"]), hex(&r["base"]) + 0x1000);
    assert_eq!(
        (hex(&r["physical"]), r["contained"].as_bool()),
        (0xF303_0000, Some(true))
    );

    // Leaks: no call passed a size; the mapping's own size, physical address and device.
    let r7 = &v["IOSV007"];
    assert_eq!(
        (r7["passed_size"].is_null(), r7["mapped_size"].as_u64()),
        (true, Some(0x2000))
    );
    assert_eq!(hex(&r7["physical"]), 0xF200_0000);
    let r8 = &v["IOSV008"];
    assert_eq!(
        (r8["mapped_size"].as_u64(), hex(&r8["physical"])),
        (Some(0x3000), 0xF210_0000)
    );
    assert!(!r7["device"].is_null() && !r8["device"].is_null() && r7["device"] != r8["device"]);
    let r9 = &v["IOSV009"];
    assert_eq!(
        (r9["mapped_size"].as_u64(), hex(&r9["physical"])),
        (Some(0x5000), 0xF307_0000)
    );
    assert!(r9["device"].is_null(), "mapped outside start-device: {r9}");

    let r = &v["IOSV010"];
    assert_eq!(r["severity"], "warning");
    assert_eq!(
        (hex(&r["physical"]), r["passed_size"].as_u64()),
        (0xF304_0000, Some(0x1000))
    );
    // Each cache field names its kind: a MEMORY_CACHING_TYPE here, on both sides.
    assert_eq!(r["cache"]["kind"], "MEMORY_CACHING_TYPE");
    assert_eq!(r["cache"]["name"], "MmCached");
    assert_eq!(r["other_cache"]["kind"], "MEMORY_CACHING_TYPE");
    assert_eq!(r["other_cache"]["name"], "MmNonCached");
    assert_eq!(
        (
            hex(&r["shared_pages"]["first"]),
            hex(&r["shared_pages"]["end"])
        ),
        (0xF304_0000, 0xF304_1000)
    );

    let r = &v["IOSV011"];
    assert_eq!(
        (hex(&r["physical"]), r["passed_size"].as_u64()),
        (0xF305_0000, Some(0))
    );
    assert!(r["message"]
        .as_str()
        .unwrap()
        .contains("NumberOfBytes is zero"));

    let r = &v["IOSV012"];
    assert_eq!(
        (r["caller"].as_str(), r["owner"].as_str()),
        (Some("thief.sys"), Some("bad.sys"))
    );
    assert_eq!(
        (r["passed_size"].as_u64(), r["mapped_size"].as_u64()),
        (Some(0x3000), Some(0x3000))
    );
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("thief.sys") && msg.contains("bad.sys"),
        "both sides named: {msg}"
    );
    assert_eq!(
        (r["severity"].as_str(), r["contained"].as_bool()),
        (Some("error"), Some(true))
    );
    // Unmaps that name no mapping carry no cache field.
    assert!(v["IOSV004"]["cache"].is_null(), "{}", v["IOSV004"]);

    let r = &v["IOSV013"];
    assert_eq!(r["severity"], "warning");
    assert_eq!(r["address"], r["base"]);

    // The MDL family: kind, MDL and the call's MDL named; all contained but IOSV016.
    for n in 15..=21 {
        let r = &v[&format!("IOSV{n:03}")];
        let kind = if (18..=20).contains(&n) {
            "reserved"
        } else {
            "mdl"
        };
        assert_eq!(r["mapping_kind"], kind, "{r}");
        assert_eq!(r["contained"].as_bool(), Some(n != 16), "{r}");
        assert!(!r["mdl"].is_null() || !r["passed_mdl"].is_null(), "{r}");
    }
    let r = &v["IOSV015"];
    assert_ne!(r["mdl"], r["passed_mdl"]);
    assert_eq!(v["IOSV016"]["irql"], "DIRQL 5");

    let r = &v["IOSV014"];
    assert_eq!(
        (r["severity"].as_str(), r["contained"].as_bool()),
        (Some("error"), Some(true))
    );
    assert_eq!(hex(&r["address"]), hex(&r["base"]) & !0xFFF);
    assert_eq!(hex(&r["base"]) & 0xFFF, 0x800);
    assert_eq!(r["cache"]["name"], "MmNonCached");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("would unmap 1 page") && msg.contains("spans 2"),
        "{msg}"
    );

    let end = lines.last().unwrap();
    assert_eq!(
        (end["kind"].as_str(), end["next_cursor"].as_u64()),
        (Some("end"), Some(N))
    );
    assert_eq!(
        (
            end["violations"].as_u64(),
            end["failing"].as_u64(),
            end["lost"].as_u64()
        ),
        (Some(N), Some(N - 2), Some(0))
    );

    // The leak view agrees: the leaked mappings are still live, on the same devices.
    let (code, out, _) =
        parts(&server.run(&["mappings", "--driver", "bad.sys", "--format", "json"]));
    assert_eq!(code, 0);
    let maps = json_lines(&out);
    let by_phys: BTreeMap<u64, &Value> = maps.iter().map(|m| (hex(&m["physical"]), m)).collect();
    assert_eq!(
        by_phys.keys().copied().collect::<Vec<_>>(),
        [0xF200_0000, 0xF210_0000, 0xF307_0000]
    );
    assert_eq!(by_phys[&0xF200_0000]["device"], r7["device"]);
    assert_eq!(by_phys[&0xF210_0000]["device"], r8["device"]);
    assert_eq!(by_phys[&0xF200_0000]["base"], r7["base"]);
    assert!(maps
        .iter()
        .all(|m| m["leak_reported"] == true && m["driver"] == "bad.sys"));
    let device = r7["device"].as_str().unwrap();
    let (_, out, _) = parts(&server.run(&["mappings", "--device", device, "--format", "json"]));
    assert_eq!(json_lines(&out).len(), 1);
    let (_, out, _) = parts(&server.run(&["mappings", "--driver", "good.sys", "--format", "json"]));
    assert!(out.is_empty(), "good.sys leaked nothing: {out}");

    // Statistics per driver.
    let (code, out, _) = parts(&server.run(&["status", "--format", "json"]));
    assert_eq!(code, 0);
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    let drivers: BTreeMap<&str, &Value> = s["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d))
        .collect();
    assert_eq!(drivers["good.sys"]["violations"], 0);
    assert_eq!(drivers["bad.sys"]["violations"], N - 1);
    assert_eq!(drivers["thief.sys"]["violations"], 1);
    assert_eq!(s["per_rule"]["IOSV001"], 1);
    assert!(s["capabilities"]
        .as_array()
        .unwrap()
        .contains(&Value::from("host")));

    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "host serve ends cleanly on SIGTERM: {err}");
}

#[test]
fn human_output_names_rules_drivers_irqls_and_stacks() {
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    let (code, out, _) = parts(&server.run(&["violations"]));
    assert_eq!(code, 1);
    let line = out.lines().find(|l| l.contains("IOSV001")).unwrap();
    for part in [
        "unmap-size-mismatch",
        "bad.sys",
        "0x1000",
        "0x2000",
        "PASSIVE_LEVEL",
        "contained",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(
        out.lines().any(|l| l.contains("IOSV003")
            && l.contains("HIGH_LEVEL")
            && l.contains("phys 0xf3020000")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{N} violations ({} error, 2 warning, 0 note)",
            N - 2
        )),
        "{out}"
    );
    assert!(out.contains(&format!("next cursor: {N}")), "{out}");
    // -v: the sentence and the stacks, frames inside a loaded image as module+offset.
    let (_, out, _) = parts(&server.run(&["violations", "-v", "--rule", "IOSV012"]));
    assert!(out.contains("thief.sys called MmUnmapIoSpace("), "{out}");
    assert!(
        out.contains("call stack:") && out.contains("thief.sys+0x"),
        "{out}"
    );
    let (_, out, _) = parts(&server.run(&["mappings", "-v"]));
    assert!(out.contains("3 live mappings, 0xa000 bytes"), "{out}");
    assert!(out.contains("#0  bad.sys+0x"), "{out}");
    let (code, out, _) = parts(&server.run(&["status"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("capabilities") && out.contains("good.sys") && out.contains("IOSV013"),
        "{out}"
    );
}

#[test]
fn cursors_filters_follow_and_fail_on() {
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    let (_, out, _) = parts(&server.run(&["violations", "--since", "10", "--format", "json"]));
    let seqs: Vec<u64> = json_lines(&out)
        .iter()
        .filter(|v| v["kind"] == "violation")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (10..N).collect::<Vec<u64>>());

    let (code, out, _) = parts(&server.run(&["violations", "--max", "2", "--format", "json"]));
    assert_eq!(code, 1);
    let l = json_lines(&out);
    assert_eq!(l.iter().filter(|v| v["kind"] == "violation").count(), 2);
    assert_eq!(l.last().unwrap()["next_cursor"], 2);

    // Only warnings: clean unless --fail-on warning (or note).
    let warnings = [
        "violations",
        "--rule",
        "cache-conflict",
        "--rule",
        "stale-entry",
    ];
    assert_eq!(parts(&server.run(&warnings)).0, 0);
    let mut strict = warnings.to_vec();
    strict.extend(["--fail-on", "warning"]);
    assert_eq!(parts(&server.run(&strict)).0, 1);
    // thief.sys's only violation, IOSV012, is an error.
    let driver = ["violations", "--driver", "THIEF.SYS", "--format", "json"];
    let (code, out, _) = parts(&server.run(&driver));
    assert_eq!(code, 1);
    assert_eq!(json_lines(&out)[0]["rule"], "IOSV012");

    // --follow ends at its deadline with everything that was there.
    let start = Instant::now();
    let (code, out, _) = parts(&server.run(&[
        "violations",
        "--follow",
        "--duration",
        "700ms",
        "--interval",
        "100ms",
        "-f",
        "json",
    ]));
    assert!(start.elapsed() >= Duration::from_millis(700));
    assert_eq!(code, 1);
    assert_eq!(
        json_lines(&out)
            .iter()
            .filter(|v| v["kind"] == "violation")
            .count(),
        N as usize
    );
}

#[test]
fn configuration_clear_and_attach_over_the_socket() {
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    let (code, out, err) = parts(&server.run(&[
        "config",
        "set",
        "--action",
        "IOSV004=bugcheck",
        "--action",
        "double-unmap=ignore",
        "--irql-mode",
        "verifier",
        "--containment",
        "off",
        "--stack-depth",
        "4",
        "--target",
        "nic.sys",
        "--target",
        "gpu.sys",
        "-f",
        "json",
    ]));
    assert_eq!(code, 0, "{err}");
    let c: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            c["actions"]["IOSV004"].as_str(),
            c["actions"]["IOSV005"].as_str()
        ),
        (Some("bugcheck"), Some("ignore"))
    );
    assert_eq!(
        (
            c["irql_mode"].as_str(),
            c["containment"].as_bool(),
            c["stack_depth"].as_u64()
        ),
        (Some("verifier"), Some(false), Some(4))
    );
    // The scenario's drivers are targets already; the new ones are added after them.
    assert_eq!(
        c["targets"],
        serde_json::json!(["good.sys", "bad.sys", "thief.sys", "nic.sys", "gpu.sys"])
    );
    let (_, out, _) = parts(&server.run(&[
        "config",
        "set",
        "--untarget",
        "NIC.SYS",
        "--untarget",
        "good.sys",
        "--irql-mode",
        "ddi",
    ]));
    assert!(
        out.contains("targets       bad.sys, thief.sys, gpu.sys\n")
            && out.contains("irql mode     ddi"),
        "{out}"
    );
    let (_, out, _) = parts(&server.run(&["config", "get", "-f", "json"]));
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap()["actions"]["IOSV004"],
        "bugcheck"
    );
    let (code, _, err) = parts(&server.run(&["config", "set", "--stack-depth", "99"]));
    assert_eq!(code, 2);
    assert!(err.contains("exceeds the endpoint's maximum"), "{err}");

    let (code, out, _) = parts(&server.run(&["attach", "thief.sys"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("attached to thief.sys:"), "{out}");
    let (code, _, err) = parts(&server.run(&["attach", "nosuch.sys"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("ATTACH failed: no loaded driver has that name"),
        "{err}"
    );

    let (code, out, _) = parts(&server.run(&["clear", "--journal"]));
    assert_eq!((code, out.trim()), (0, "cleared journal"));
    let (code, out, _) = parts(&server.run(&["violations", "-f", "json"]));
    assert_eq!(code, 0, "nothing left to fail on");
    let l = json_lines(&out);
    assert!(
        l.iter().any(|v| v["kind"] == "gap" && v["discarded"] == N),
        "{out}"
    );
    assert_eq!(l.last().unwrap()["discarded"], N);
}

#[test]
fn well_behaved_drivers_cause_no_violation() {
    let server = Server::start(Some(&data("well_behaved.toml")), &[]);
    let (code, out, err) = parts(&server.run(&["violations", "--fail-on", "note", "-f", "json"]));
    assert_eq!(code, 0, "{err}");
    let l = json_lines(&out);
    assert_eq!(l.len(), 1, "only the end line: {out}");
    assert_eq!(
        (l[0]["violations"].as_u64(), l[0]["lost"].as_u64()),
        (Some(0), Some(0))
    );
    let (_, out, _) = parts(&server.run(&["mappings", "-f", "json"]));
    assert!(out.is_empty(), "nothing left mapped: {out}");
    let (_, out, _) = parts(&server.run(&["status", "-f", "json"]));
    let s: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(s["counters"]["maps"].as_u64().unwrap() > 100, "{s}");
    assert_eq!(s["counters"]["maps"], s["counters"]["unmaps"]);
    assert_eq!(s["counters"]["reported"], 0);
}

#[test]
fn lab_runs_in_process_and_gates_on_severity() {
    // The same scenario in-process finds the same violations as the served host.
    let (code, out, err) = parts(&iosvctl(&[
        "lab",
        data("every_rule.toml").to_str().unwrap(),
        "-f",
        "json",
        "--no-progress",
    ]));
    assert_eq!(code, 1, "{err}");
    let l = json_lines(&out);
    assert_eq!(l[0]["kind"], "lab");
    assert_eq!(l[0]["scenario"], "every-rule");
    let v = violations(&l);
    assert_eq!(v.len(), N as usize);
    assert_eq!(v["IOSV001"]["passed_size"], 0x1000);
    assert_eq!(v["IOSV012"]["driver"], "thief.sys");
    assert_eq!(l.iter().filter(|x| x["kind"] == "mapping").count(), 3);

    let (code, out, err) = parts(&iosvctl(&[
        "lab",
        data("well_behaved.toml").to_str().unwrap(),
        "--fail-on",
        "note",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no violations") && out.contains("audit: nothing injected, nothing reported"),
        "{out}"
    );

    // The built-in scenario: every rule, and an audit that iosv reported every injected bug.
    let (code, out, err) = parts(&iosvctl(&["lab", "-f", "json"]));
    assert_eq!(code, 1, "{err}");
    let l = json_lines(&out);
    assert_eq!(l[0]["audit"]["clean"], true, "{}", l[0]);
    let rules: std::collections::BTreeSet<&str> = l
        .iter()
        .filter(|v| v["kind"] == "violation")
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules.len(), iosv::rules::RULE_COUNT);
}

#[test]
fn malformed_scenarios_are_reported_with_their_place() {
    let bad = data("malformed.toml");
    let (code, out, err) = parts(&iosvctl(&["lab", bad.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("malformed.toml:11:8: size `lots` is not a number"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let (code, _, err) = parts(&iosvctl(&[
        "host",
        "serve",
        "--socket",
        sock.to_str().unwrap(),
        "--scenario",
        bad.to_str().unwrap(),
    ]));
    assert_eq!(code, 2);
    assert!(err.contains("malformed.toml:11:8"), "{err}");
    assert!(!sock.exists());
    let (code, _, err) = parts(&iosvctl(&["lab", "/nonexistent/scenario.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the scenario"), "{err}");
}

#[test]
fn host_serve_stops_on_sigterm_and_removes_its_socket() {
    let server = Server::start(None, &[]);
    let sock = server.socket.clone();
    let (code, out, _) = parts(&server.run(&["violations"]));
    assert_eq!((code, out.contains("no violations")), (0, true));
    let (code, err) = server.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("host serving on"), "{err}");
    assert!(!sock.exists(), "socket removed");
    // Now it is gone: a clear error, exit 2.
    let (code, _, err) = parts(&iosvctl(&["--host", sock.to_str().unwrap(), "status"]));
    assert_eq!(code, 2);
    assert!(err.contains("cannot connect"), "{err}");
}
