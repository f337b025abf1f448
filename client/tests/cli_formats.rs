//! Machine-readable output parses: JUnit is well-formed XML with one test case per rule
//! and driver seen, and every command's `--format json` is one JSON object per line.
#![cfg(all(unix, feature = "host"))]

mod common;

use common::{data, iosvctl, json_lines, parts, Server};

#[test]
fn junit_is_well_formed_with_failures_where_rules_were_broken() {
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    let (code, out, err) = parts(&server.run(&["violations", "--format", "junit"]));
    assert_eq!(code, 1, "{err}");
    let doc = roxmltree::Document::parse(&out).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suites: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    let names: Vec<&str> = suites
        .iter()
        .map(|s| s.attribute("name").unwrap())
        .collect();
    // The drivers' suites, then `iosvctl` with the run's own check (nothing lost).
    assert_eq!(names, ["bad.sys", "good.sys", "thief.sys", "iosvctl"]);
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .filter(|n| n.attribute("classname") != Some("iosvctl.run"))
        .collect();
    let n = iosv::rules::RULE_COUNT;
    assert_eq!(cases.len(), 3 * n);
    assert_eq!(
        root.attribute("tests"),
        Some(format!("{}", 3 * n + 1).as_str())
    );
    assert_eq!(root.attribute("errors"), Some("0"));
    assert_eq!(root.attribute("failures"), Some(format!("{n}").as_str()));
    let failures: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .collect();
    assert_eq!(failures.len(), n);
    let good = suites
        .iter()
        .find(|s| s.attribute("name") == Some("good.sys"))
        .unwrap();
    assert_eq!(good.attribute("failures"), Some("0"));
    let thief = suites
        .iter()
        .find(|s| s.attribute("name") == Some("thief.sys"))
        .unwrap();
    let f = thief
        .descendants()
        .find(|n| n.has_tag_name("failure"))
        .unwrap();
    assert_eq!(f.attribute("type"), Some("IOSV012"));
    assert!(
        f.text()
            .unwrap()
            .contains("thief.sys called MmUnmapIoSpace"),
        "{:?}",
        f.text()
    );

    // No violations: still a document, every case passing.
    let server = Server::start(Some(&data("well_behaved.toml")), &[]);
    let (code, out, _) = parts(&server.run(&["violations", "--format", "junit"]));
    assert_eq!(code, 0);
    let doc = roxmltree::Document::parse(&out).expect("well-formed XML");
    assert_eq!(doc.root_element().attribute("failures"), Some("0"));
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .count(),
        2 * iosv::rules::RULE_COUNT + 1
    );
}

#[test]
fn every_command_speaks_json_lines() {
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    for (args, kind) in [
        (&["status"][..], "status"),
        (&["violations"][..], "violation"),
        (&["mappings"][..], "mapping"),
        (&["config", "get"][..], "config"),
        (&["config", "set", "--stack-depth", "2"][..], "config"),
        (&["attach", "thief.sys"][..], "attach"),
        (&["detach", "thief.sys"][..], "detach"),
        (&["clear", "--stats", "--graveyard"][..], "clear"),
    ] {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let (code, out, err) = parts(&server.run(&a));
        assert!(code == 0 || code == 1, "{a:?}: {err}");
        let lines = json_lines(&out);
        assert!(!lines.is_empty(), "{a:?} printed nothing");
        assert!(
            lines.iter().all(|l| l["kind"].is_string()),
            "{a:?}: every line has a kind"
        );
        assert_eq!(lines[0]["kind"], kind, "{a:?}");
    }
    let (code, out, _) = parts(&iosvctl(&["rules", "--format", "json"]));
    assert_eq!(code, 0);
    let rules = json_lines(&out);
    assert_eq!(rules.len(), iosv::rules::RULE_COUNT);
    assert_eq!(rules[3]["id"], "IOSV004");
    assert_eq!(rules[3]["containable"], true);
}

/// `--symbols` through a host socket: the host's images carry CodeView records, the
/// endpoint serves them (GET_IMAGE_DEBUG), iosvctl looks each PDB up and says that the
/// simulated drivers have none; a PDB of the right name but another GUID is not used;
/// frames stay `module+offset`; a bad symbol path is exit 2.
#[test]
fn symbols_through_the_wire_for_simulated_drivers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.pdb"), b"not a PDB").unwrap();
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = parts(&server.run(&["--symbols", d, "violations", "-v"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no PDB for"), "{err}");
    assert!(err.contains("thief.pdb"), "{err}");
    // bad.pdb exists but is no PDB: named, not fatal.
    assert!(
        err.contains("bad.pdb") && err.contains("cannot read"),
        "{err}"
    );
    assert!(out.contains("bad.sys+0x"), "{out}");
    let (code, _, err) = parts(&server.run(&["--symbols", "/no/such/dir", "status"]));
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/dir"), "{err}");
}
