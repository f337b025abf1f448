//! JSON output: one object per line, each with a `kind` (`violation`, `gap`, `mapping`,
//! `status`, `config`, `rule`, `summary`, `end`, and `sample`: every driver's live
//! mappings and bytes at one time, written by `lab` after each step and by `violations
//! --follow` once a second, the time series of the HTML report). Addresses are hex
//! strings (kernel addresses do not fit a JSON consumer's 53-bit integers); sizes and
//! counts are numbers.
//! Cache fields (`cache`, `other_cache`) are objects that name their kind, because the two
//! kinds share numbers: `{"kind": "MEMORY_CACHING_TYPE", "name": "MmNonCached", "value":
//! 0}` (MmMapIoSpace) or `{"kind": "PAGE_PROTECTION", "name":
//! "PAGE_READWRITE|PAGE_NOCACHE", "value": 516}` (MmMapIoSpaceEx); `null` where the record
//! has none (an unmap of an address no mapping is known for).

use crate::client::{MappingList, Stats};
use crate::model::{self, hex, Images, Violation};
use iosv::protocol::*;
use iosv::rules::{Action, RULES};
use serde_json::{json, Value};

fn opt_hex(v: u64) -> Value {
    if v == 0 {
        Value::Null
    } else {
        Value::String(hex(v))
    }
}

/// The structured frames of a stack (address, module, offset, function, file, line),
/// when symbols resolved at least one of them; `None` otherwise (the `*_stack` strings
/// say everything then).
fn frames(images: &Images, stack: &[u64; MAX_STACK], depth: u8) -> Option<Value> {
    let frames = images.frames(stack, depth);
    frames
        .iter()
        .any(|f| f.source.is_some())
        .then(|| Value::from(frames.iter().map(model::Frame::json).collect::<Vec<_>>()))
}

/// Adds `key: value` to a JSON object when `value` is some.
fn insert(mut v: Value, key: &str, value: Option<Value>) -> Value {
    if let (Some(obj), Some(value)) = (v.as_object_mut(), value) {
        obj.insert(key.to_string(), value);
    }
    v
}

/// A violation. With symbols, `call_frames` and `map_frames` carry the structured
/// frames beside the `call_stack` and `map_stack` strings.
pub fn violation(v: &Violation<'_>, images: &Images) -> Value {
    let r = v.rec;
    let call_frames = frames(images, &r.call_stack, r.call_stack_depth);
    let map_frames = frames(images, &r.map_stack, r.map_stack_depth);
    let v = violation_fields(v, images);
    insert(
        insert(v, "call_frames", call_frames),
        "map_frames",
        map_frames,
    )
}

fn violation_fields(v: &Violation<'_>, images: &Images) -> Value {
    let r = v.rec;
    let known = r.flags & VF_MAPPING_KNOWN != 0;
    json!({
        "kind": "violation",
        "seq": r.seq,
        "rule": v.code(),
        "name": v.rule_name(),
        "severity": v.severity().name(),
        "action": v.action(),
        "driver": v.driver(),
        "caller": v.caller(),
        "owner": v.owner(),
        "device": opt_hex(r.device),
        "address": hex(r.address),
        "base": opt_hex(r.base),
        "passed_size": if v.is_leak() { Value::Null } else { Value::from(r.passed_size) },
        "mapped_size": if known || r.mapped_size != 0 { Value::from(r.mapped_size) } else { Value::Null },
        "physical": hex(r.physical),
        "cache": v.cache(),
        "other_cache": v.other_cache(),
        "routine": v.routine().map(|r| r.name()),
        "shared_pages": v.shared_pages().map(|(first, end)| json!({ "first": hex(first), "end": hex(end) })),
        "other": opt_hex(r.other),
        "reused": v.reused(),
        "prior": if r.flags & VF_REUSED != 0 {
            json!({
                "size": r.prior_size,
                "physical": hex(r.prior_physical),
                "map_time_ns": r.prior_map_time_ns,
                "unmap_time_ns": r.other,
                "map_site": if r.prior_map_site != 0 { Value::from(images.symbol(r.prior_map_site)) } else { Value::Null },
            })
        } else {
            Value::Null
        },
        "irql": model::irql(r.irql),
        "irql_level": r.irql,
        "map_irql": if known { Value::from(model::irql(r.map_irql)) } else { Value::Null },
        "processor": r.processor,
        "process_id": r.process_id,
        "thread_id": r.thread_id,
        "contained": v.contained(),
        "map_ex": v.map_ex(),
        "mapping_known": known,
        "detach": r.flags & VF_DETACH != 0,
        "mapping_kind": model::mapping_kind(r.kind).name(),
        "sub_range": r.flags & iosv::protocol::VF_SUB_RANGE != 0,
        "mdl": opt_hex(r.mdl),
        "passed_mdl": opt_hex(r.passed_mdl),
        "timestamp_ns": r.timestamp_ns,
        "map_time_ns": r.map_time_ns,
        "message": v.message(),
        "call_stack": images.stack(&r.call_stack, r.call_stack_depth),
        "map_stack": images.stack(&r.map_stack, r.map_stack_depth),
    })
}

/// Records the journal could not return between two cursors.
pub fn gap(from: u64, to: u64, lost: u64, discarded: u64) -> Value {
    json!({ "kind": "gap", "from_cursor": from, "to_cursor": to, "lost": lost, "discarded": discarded })
}

/// The end of a violation read.
pub fn end(next_cursor: u64, violations: u64, lost: u64, discarded: u64, failing: u64) -> Value {
    json!({
        "kind": "end",
        "next_cursor": next_cursor,
        "violations": violations,
        "failing": failing,
        "lost": lost,
        "discarded": discarded,
    })
}

/// A live mapping. With symbols, `stack_frames` carries the structured frames.
pub fn mapping(m: &MappingRecord, list: &MappingList, images: &Images) -> Value {
    let f = frames(images, &m.stack, m.stack_depth);
    insert(mapping_fields(m, list, images), "stack_frames", f)
}

fn mapping_fields(m: &MappingRecord, list: &MappingList, images: &Images) -> Value {
    let ex = m.flags & MF_MAP_EX != 0;
    let kind = model::mapping_kind(m.kind);
    json!({
        "kind": "mapping",
        "driver": model::name(&m.driver_name),
        "driver_id": m.driver_id,
        "device": opt_hex(m.device),
        "base": hex(m.base),
        "size": m.size,
        "physical": hex(m.physical),
        "cache": model::mapping_cache_json(model::mapping_kind(m.kind), m.cache, ex),
        "map_ex": ex,
        "age_ns": list.now_ns.saturating_sub(m.map_time_ns),
        "map_time_ns": m.map_time_ns,
        "irql": model::irql(m.irql),
        "processor": m.processor,
        "leak_reported": m.flags & MF_LEAK_REPORTED != 0,
        "detached": m.flags & MF_DETACHED != 0,
        "mapping_kind": kind.name(),
        "mdl": opt_hex(m.mdl),
        "user_mode": m.flags & iosv::protocol::MF_USER != 0,
        "process_id": m.process_id,
        "reserved_mapped": kind == iosv::mdl::MappingKind::Reserved
            && m.flags & iosv::protocol::MF_RESERVED_MAPPED != 0,
        "mdl_direct_io": kind == iosv::mdl::MappingKind::Mdl
            && m.flags & iosv::protocol::MF_MDL_DIRECT_IO != 0,
        "reserved_divisible": m.flags & iosv::protocol::MF_RESERVED_DIVISIBLE != 0,
        "stack": images.stack(&m.stack, m.stack_depth),
    })
}

/// A `sample` line: every driver's live mappings and bytes at endpoint time `t_ns` (the
/// time series the HTML report plots); `step` is the scenario step just run, if any.
pub fn sample<'a>(
    t_ns: u64,
    step: Option<u64>,
    drivers: impl IntoIterator<Item = (&'a str, u64, u64)>,
) -> Value {
    let drivers: Vec<Value> = drivers
        .into_iter()
        .map(|(name, live, live_bytes)| json!({ "name": name, "live": live, "live_bytes": live_bytes }))
        .collect();
    json!({ "kind": "sample", "t_ns": t_ns, "step": step, "drivers": drivers })
}

/// A `sample` line from GET_STATS.
pub fn stats_sample(stats: &Stats) -> Value {
    let names: Vec<String> = stats.drivers.iter().map(|d| model::name(&d.name)).collect();
    sample(
        stats.header.now_ns,
        None,
        names
            .iter()
            .zip(&stats.drivers)
            .map(|(n, d)| (n.as_str(), d.live, d.live_bytes)),
    )
}

/// HELLO and GET_STATS.
pub fn status(endpoint: &str, hello: &HelloReply, stats: &Stats) -> Value {
    let c = &stats.header.counters;
    let per_rule: serde_json::Map<String, Value> = RULES
        .iter()
        .map(|r| {
            (
                r.code.to_string(),
                Value::from(c.per_rule.get(r.id.index()).copied().unwrap_or(0)),
            )
        })
        .collect();
    let drivers: Vec<Value> = stats
        .drivers
        .iter()
        .map(|d| {
            json!({
                "id": d.driver_id,
                "name": model::name(&d.name),
                "state": model::driver_state(d.state),
                "image_base": hex(d.image_base),
                "image_size": d.image_size,
                "loads": d.loads,
                "maps": d.maps,
                "unmaps": d.unmaps,
                "violations": d.violations,
                "live": d.live,
                "live_bytes": d.live_bytes,
                "hook_refusal": model::hook_refusal(d.hook_refusal),
            })
        })
        .collect();
    json!({
        "kind": "status",
        "endpoint": endpoint,
        "state": model::state_flags(stats.header.flags)
            .into_iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>(),
        "protocol_version": hello.version,
        "component_version": model::text(&hello.component_version),
        "capabilities": model::capabilities(hello.capabilities),
        "limits": {
            "table_capacity": hello.table_capacity,
            "journal_capacity": hello.journal_capacity,
            "max_stack_depth": hello.max_stack_depth,
            "max_drivers": hello.max_drivers,
            "processor_count": hello.processor_count,
        },
        "now_ns": stats.header.now_ns,
        "counters": {
            "maps": c.maps,
            "map_failures": c.map_failures,
            "unmaps": c.unmaps,
            "contained": c.contained,
            "ignored": c.ignored,
            "reported": c.reported,
            "breaks": c.breaks,
            "bugchecks": c.bugchecks,
            "live": c.live,
            "table_full": c.table_full,
            "untracked_live": c.untracked_live,
            "unverified_unmaps": c.unverified_unmaps,
            "journal_written": c.journal_written,
        },
        "per_rule": per_rule,
        "total_drivers": stats.header.total_drivers,
        "drivers": drivers,
    })
}

/// A configuration block.
pub fn config(b: &ConfigBlock) -> Value {
    let actions: serde_json::Map<String, Value> = RULES
        .iter()
        .map(|r| {
            let a = b
                .actions
                .get(r.id.index())
                .and_then(|a| Action::from_u8(*a));
            (
                r.code.to_string(),
                Value::from(a.map(|a| a.name()).unwrap_or("?")),
            )
        })
        .collect();
    let targets = model::target_names(b);
    json!({
        "kind": "config",
        "containment": b.flags & CF_CONTAINMENT != 0,
        "irql_mode": if b.flags & CF_VERIFIER_IRQL != 0 { "verifier" } else { "ddi" },
        "stack_depth": b.stack_depth,
        "targets": targets,
        "actions": actions,
    })
}

/// The rule table.
pub fn rules() -> Vec<Value> {
    RULES
        .iter()
        .map(|r| {
            json!({
                "kind": "rule",
                "id": r.code,
                "name": r.name,
                "severity": r.severity.name(),
                "summary": r.summary,
                "help": r.help,
                "reference": r.reference,
                "containable": r.containable,
            })
        })
        .collect()
}
