//! SARIF 2.1.0 output: one run whose `tool.driver.rules` is iosv's rule table and whose
//! results are the violations, each with the rule's level, a message naming both sides
//! of the conflict, a logical location naming the driver (and the device, if any), and
//! the call and map stacks.

use crate::model::{hex, Frame, Images, Violation};
use iosv::protocol::ViolationRecord;
use iosv::rules::RULES;
use serde_json::{json, Value};

/// The `$schema` URI written into the log.
pub const SCHEMA_URI: &str =
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json";

/// Facts about the read that produced the results.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// The endpoint, as people name it.
    pub endpoint: String,
    /// Version of the iosv component that produced the records.
    pub component_version: String,
    /// Cursor the read started at.
    pub from_cursor: u64,
    /// Cursor to continue from.
    pub next_cursor: u64,
    /// Records lost to journal overflow.
    pub lost: u64,
    /// Records discarded by CLEAR.
    pub discarded: u64,
    /// Problems with the run itself besides lost records (e.g. an unclean lab audit):
    /// each is an error notification and makes `executionSuccessful` false.
    pub problems: Vec<String>,
    /// The exit status iosvctl returns for this run.
    pub exit_code: u8,
    /// The run was audited (`lab`): JUnit shows the audit as a test case.
    pub audited: bool,
    /// `run`: the driver's DriverEntry failed (the report): an error notification,
    /// `executionSuccessful` false, and the run's outcome is
    /// [`Outcome::LoadFailed`](crate::outcome::Outcome::LoadFailed) (exit 8) whatever the
    /// reports say.
    pub load_failure: Option<String>,
}

fn rule_descriptors() -> Vec<Value> {
    RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.code,
                "name": r.name,
                "shortDescription": { "text": r.summary },
                "fullDescription": { "text": r.summary },
                "help": { "text": r.help },
                "helpUri": r.reference,
                "defaultConfiguration": { "level": r.severity.name() },
                "properties": { "containable": r.containable },
            })
        })
        .collect()
}

/// A source path as a SARIF `artifactLocation.uri` (a URI reference): Windows and Unix
/// absolute paths become `file:` URIs, separators become `/`, and bytes outside the URI
/// unreserved set are percent-encoded.
pub fn file_uri(path: &str) -> String {
    let slashed = path.replace('\\', "/");
    let (prefix, rest) = if slashed.starts_with('/') {
        ("file://", slashed.as_str())
    } else if slashed.len() >= 2 && slashed.as_bytes().get(1) == Some(&b':') {
        ("file:///", slashed.as_str())
    } else {
        ("", slashed.as_str())
    };
    let mut out = String::from(prefix);
    for b in rest.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A SARIF `location` for a frame: its logical location (the symbolized text) and, when
/// the PDB gave one, its physical location (file and line).
pub fn frame_location(f: &Frame) -> Value {
    let mut loc = json!({ "logicalLocations": [{ "fullyQualifiedName": f.text() }] });
    if let (Some(obj), Some((file, line))) = (loc.as_object_mut(), f.file_line()) {
        let mut physical = json!({ "artifactLocation": { "uri": file_uri(file) } });
        if let (Some(p), Some(line)) = (physical.as_object_mut(), line.filter(|l| *l > 0)) {
            p.insert("region".into(), json!({ "startLine": line }));
        }
        obj.insert("physicalLocation".into(), physical);
    }
    loc
}

fn stack(label: &str, frames: &[Frame]) -> Value {
    let frames: Vec<Value> = frames
        .iter()
        .map(|f| json!({ "location": frame_location(f) }))
        .collect();
    json!({ "message": { "text": label }, "frames": frames })
}

fn result(rec: &ViolationRecord, images: &Images) -> Value {
    let v = Violation::new(rec);
    let driver = v.driver_label();
    let mut logical =
        vec![json!({ "name": driver, "fullyQualifiedName": driver, "kind": "module" })];
    if rec.device != 0 {
        let dev = format!("device {}", hex(rec.device));
        logical.push(json!({ "name": dev, "fullyQualifiedName": format!("{driver}/{dev}"), "kind": "object" }));
    }
    let mut stacks = Vec::new();
    let call = images.frames(&rec.call_stack, rec.call_stack_depth);
    let map = images.frames(&rec.map_stack, rec.map_stack_depth);
    if !call.is_empty() {
        stacks.push(stack("stack of the violating call", &call));
    }
    if !map.is_empty() {
        stacks.push(stack("stack of the map call", &map));
    }
    if v.reused() && rec.prior_map_site != 0 {
        stacks.push(stack(
            "map site of the caller's own earlier mapping at this address",
            &[images.frame(rec.prior_map_site)],
        ));
    }
    // The result's location: the driver, and the innermost frame of the violating call
    // (else of the map) that has a source file, when symbols gave one.
    let mut location = json!({ "logicalLocations": logical });
    if let Some(f) = call
        .iter()
        .chain(map.iter())
        .find(|f| f.file_line().is_some())
    {
        if let (Some(obj), Some(physical)) = (
            location.as_object_mut(),
            frame_location(f).get("physicalLocation").cloned(),
        ) {
            obj.insert("physicalLocation".into(), physical);
        }
    }
    let mut r = json!({
        "ruleId": v.code(),
        "level": v.severity().name(),
        "message": { "text": v.message() },
        "locations": [location],
        "properties": {
            "seq": rec.seq,
            "action": v.action(),
            "caller": v.caller(),
            "owner": v.owner(),
            "address": hex(rec.address),
            "base": hex(rec.base),
            "passedSize": rec.passed_size,
            "mappedSize": rec.mapped_size,
            "physical": hex(rec.physical),
            "irql": crate::model::irql(rec.irql),
            "cache": v.cache(),
            "otherCache": v.other_cache(),
            "routine": v.routine().map(|r| r.name()),
            "sharedPages": v.shared_pages().map(|(first, end)| json!({ "first": hex(first), "end": hex(end) })),
            "reused": v.reused(),
            "contained": v.contained(),
            "timestampNs": rec.timestamp_ns,
        },
    });
    if let Some(obj) = r.as_object_mut() {
        if let Some(rule) = v.rule() {
            obj.insert("ruleIndex".to_string(), Value::from(rule.index()));
        }
        if !stacks.is_empty() {
            obj.insert("stacks".to_string(), Value::from(stacks));
        }
    }
    r
}

/// A SARIF log of `records`.
pub fn log(records: &[ViolationRecord], images: &Images, info: &RunInfo) -> Value {
    let results: Vec<Value> = records.iter().map(|r| result(r, images)).collect();
    let mut notifications = Vec::new();
    if info.lost > 0 {
        notifications.push(json!({
            "level": "error",
            "message": { "text": format!("{} violation records were lost to journal overflow before they could be read: the results are incomplete", info.lost) },
        }));
    }
    for p in info.problems.iter().chain(&info.load_failure) {
        notifications.push(json!({ "level": "error", "message": { "text": p } }));
    }
    let successful = info.lost == 0 && info.problems.is_empty() && info.load_failure.is_none();
    let mut driver = json!({ "name": "iosv", "rules": rule_descriptors() });
    if !info.component_version.is_empty() {
        if let Some(obj) = driver.as_object_mut() {
            obj.insert(
                "version".to_string(),
                Value::from(info.component_version.clone()),
            );
        }
    }
    json!({
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": driver },
            "invocations": [{
                "executionSuccessful": successful,
                "exitCode": info.exit_code,
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
            "properties": {
                "endpoint": info.endpoint,
                "fromCursor": info.from_cursor,
                "nextCursor": info.next_cursor,
                "lost": info.lost,
                "discarded": info.discarded,
            },
        }],
    })
}
