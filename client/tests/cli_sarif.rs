//! `--format sarif` is valid SARIF 2.1.0: validated against the OASIS JSON schema, which
//! the `serde-sarif` package ships as `src/schema.json` (a dev-dependency, so Cargo has
//! already fetched it; `cargo metadata` says where). `IOSV_SARIF_SCHEMA` may name another
//! copy of the schema instead.
#![cfg(all(unix, feature = "host"))]

mod common;

use common::{data, iosvctl, parts, Server};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn schema_path() -> PathBuf {
    if let Some(p) = std::env::var_os("IOSV_SARIF_SCHEMA") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let metadata = |offline: bool| {
        let mut c = Command::new(&cargo);
        c.args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            manifest,
        ]);
        if offline {
            c.arg("--offline");
        }
        c.output().ok().filter(|o| o.status.success())
    };
    let out = metadata(true)
        .or_else(|| metadata(false))
        .expect("cargo metadata");
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "serde-sarif"))
        .expect("serde-sarif in the dependency graph");
    let dir = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    let path = dir.parent().expect("package dir").join("src/schema.json");
    assert!(path.is_file(), "{} missing", path.display());
    path
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema_path()).expect("read the SARIF schema");
    let mut schema: Value = serde_json::from_str(&text).expect("schema JSON");
    assert_eq!(
        schema["title"],
        "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    );
    // The published schema's `language` patterns have a bare `]`, a literal in ECMAScript
    // regexes but an error for the Rust regex engines jsonschema uses. Escape it: the
    // patterns keep their meaning (iosvctl emits no `language` anyway).
    escape_language_patterns(&mut schema);
    jsonschema::validator_for(&schema).expect("compile the SARIF schema")
}

fn escape_language_patterns(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if k == "pattern" && x == "^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$" {
                    *x = Value::from(r"^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}\]?$");
                } else {
                    escape_language_patterns(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_language_patterns),
        _ => {}
    }
}

fn assert_valid(v: &jsonschema::Validator, log: &Value) {
    let errors: Vec<String> = v
        .iter_errors(log)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "SARIF schema violations:\n{}",
        errors.join("\n")
    );
    // And it reads back as SARIF types.
    let typed: serde_sarif::sarif::Sarif =
        serde_json::from_value(log.clone()).expect("serde-sarif reads it");
    assert_eq!(typed.runs.len(), 1);
}

#[test]
fn violations_sarif_is_schema_valid_and_complete() {
    let v = validator();
    let server = Server::start(Some(&data("every_rule.toml")), &[]);
    let (code, out, err) = parts(&server.run(&["violations", "--format", "sarif"]));
    assert_eq!(code, 1, "{err}");
    let log: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_valid(&v, &log);
    // The validator does reject what breaks the schema.
    let mut broken = log.clone();
    broken["runs"][0]["results"][0]["level"] = Value::from("fatal");
    assert!(!v.is_valid(&broken));

    let run = &log["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), iosv::rules::RULE_COUNT);
    for (i, r) in rules.iter().enumerate() {
        let info = &iosv::rules::RULES[i];
        assert_eq!(r["id"], info.code);
        assert_eq!(r["name"], info.name);
        assert_eq!(r["shortDescription"]["text"], info.summary);
        assert_eq!(r["help"]["text"], info.help);
        assert_eq!(r["helpUri"], info.reference);
        assert_eq!(r["defaultConfiguration"]["level"], info.severity.name());
    }
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), iosv::rules::RULE_COUNT);
    // Cache fields name their kind (MEMORY_CACHING_TYPE or PAGE_PROTECTION), both sides.
    let conflict = results.iter().find(|r| r["ruleId"] == "IOSV010").unwrap();
    let props = &conflict["properties"];
    assert_eq!(props["cache"]["kind"], "MEMORY_CACHING_TYPE");
    assert_eq!(props["cache"]["name"], "MmCached");
    assert_eq!(props["otherCache"]["name"], "MmNonCached");
    assert_eq!(props["sharedPages"]["first"], "0xf3040000");
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        let idx = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], id);
        assert_eq!(r["level"], rules[idx]["defaultConfiguration"]["level"]);
        let loc = &r["locations"][0]["logicalLocations"][0];
        assert_eq!(loc["kind"], "module");
        assert_eq!(
            loc["name"],
            if id == "IOSV012" {
                "thief.sys"
            } else {
                "bad.sys"
            }
        );
        assert!(!r["message"]["text"].as_str().unwrap().is_empty());
    }
    let leak = results.iter().find(|r| r["ruleId"] == "IOSV007").unwrap();
    let dev = &leak["locations"][0]["logicalLocations"][1];
    assert_eq!(dev["kind"], "object");
    assert!(
        dev["name"].as_str().unwrap().starts_with("device 0x"),
        "{dev}"
    );
    let size = results.iter().find(|r| r["ruleId"] == "IOSV001").unwrap();
    let text = size["message"]["text"].as_str().unwrap();
    assert!(
        text.contains("0x1000") && text.contains("0x2000"),
        "both sizes named: {text}"
    );
    assert!(
        size["stacks"][0]["frames"][0]["location"]["logicalLocations"][0]["fullyQualifiedName"]
            .as_str()
            .unwrap()
            .starts_with("bad.sys+0x")
    );
}

#[test]
fn empty_and_lab_sarif_are_schema_valid() {
    let v = validator();
    let server = Server::start(Some(&data("well_behaved.toml")), &[]);
    let (code, out, _) = parts(&server.run(&["violations", "--format", "sarif"]));
    assert_eq!(code, 0);
    let log: Value = serde_json::from_str(&out).unwrap();
    assert_valid(&v, &log);
    assert_eq!(log["runs"][0]["results"].as_array().unwrap().len(), 0);

    let (code, out, err) = parts(&iosvctl(&["lab", "--format", "sarif", "--no-progress"]));
    assert_eq!(code, 1, "{err}");
    let log: Value = serde_json::from_str(&out).unwrap();
    assert_valid(&v, &log);
    assert!(log["runs"][0]["results"].as_array().unwrap().len() >= 13);
}

#[test]
fn symbolized_locations_are_schema_valid() {
    use iosv_client::model::Frame;
    use iosv_client::output::sarif::{file_uri, frame_location};
    use iosv_client::symbols::{Resolved, SourceFrame};
    let v = validator();
    let (code, out, err) = parts(&iosvctl(&["lab", "--format", "sarif", "--no-progress"]));
    assert_eq!(code, 1, "{err}");
    let mut log: Value = serde_json::from_str(&out).unwrap();
    // A frame as a matching PDB resolves it (tests/tests/symbols.rs does it with a real
    // one), with a Windows path that needs escaping, and one resolved without a file.
    let frame = |file: Option<&str>, line| Frame {
        address: 0xffff_f806_0000_1234,
        module: Some("nic.sys".into()),
        offset: 0x1234,
        source: Some(Resolved {
            frames: vec![SourceFrame {
                function: "nic::map_registers".into(),
                file: file.map(str::to_string),
                line,
            }],
            function_offset: 0x1b,
        }),
    };
    let with_file = frame_location(&frame(Some(r"C:\build dir\src\nic#1.rs"), Some(27)));
    assert_eq!(
        with_file["physicalLocation"]["artifactLocation"]["uri"],
        "file:///C:/build%20dir/src/nic%231.rs"
    );
    assert_eq!(with_file["physicalLocation"]["region"]["startLine"], 27);
    let without = frame_location(&frame(None, None));
    assert!(without.get("physicalLocation").is_none());
    assert_eq!(file_uri("/src/a.rs"), "file:///src/a.rs");
    assert_eq!(file_uri("src/a.rs"), "src/a.rs");
    let result = &mut log["runs"][0]["results"][0];
    result["locations"][0]["physicalLocation"] = with_file["physicalLocation"].clone();
    result["stacks"][0]["frames"][0]["location"] = with_file;
    result["stacks"][0]["frames"][1]["location"] = without;
    assert_valid(&v, &log);
}
