//! Tables for people: one line per violation or mapping, `-v` for the sentence and the
//! stacks below it.

use super::Tally;
use crate::client::{MappingList, Stats};
use crate::model::{self, device, hex, Images, Violation};
use iosv::protocol::*;
use iosv::rules::{Action, RULES};
use std::fmt::Write as _;

/// Pads the columns of `rows` (the first is the header) to a table, two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The header over [`violation`] lines.
pub fn violation_header() -> String {
    format!(
        "{:<6} {:<7} {:<w$} {:<7} {:<14} {:<18} {:<23} {:<18} {:<10} {:<10} {:<15} FLAGS",
        "SEQ",
        "RULE",
        "NAME",
        "SEV",
        "DRIVER",
        "DEVICE",
        "ADDRESS",
        "BASE",
        "PASSED",
        "MAPPED",
        "IRQL",
        w = name_width()
    )
}

/// Width of the NAME column: the longest rule name.
fn name_width() -> usize {
    iosv::rules::RULES
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(20)
}

/// One violation: a line, and with `verbose` the message, context and stacks below it.
pub fn violation(v: &Violation<'_>, verbose: bool, images: &Images) -> String {
    let r = v.rec;
    let mut flags = Vec::new();
    if v.contained() {
        flags.push("contained".to_string());
    }
    if v.map_ex() {
        flags.push("ex".to_string());
    }
    if r.flags & VF_DETACH != 0 {
        flags.push("detach".to_string());
    }
    if v.reused() {
        flags.push("reused".to_string());
    }
    let action = v.action();
    if action != Action::Report.name() {
        flags.push(action);
    }
    let mapped = if r.mapped_size != 0 || r.flags & VF_MAPPING_KNOWN != 0 {
        format!("0x{:x}", r.mapped_size)
    } else {
        "-".to_string()
    };
    let base = if r.base != 0 {
        hex(r.base)
    } else {
        "-".to_string()
    };
    // A map that failed its checks has no virtual address yet: show what it asked for.
    let address = if r.address == 0 && r.physical != 0 {
        format!("phys {}", hex(r.physical))
    } else {
        hex(r.address)
    };
    // Leaks are found at PnP or unload events, not in a call that passes a size.
    // The MDL family's calls pass an MDL, not a size (the MDL is in the verbose lines).
    let passed = if v.is_leak() || (r.kind != 0 && r.passed_size == 0) {
        "-".to_string()
    } else {
        format!("0x{:x}", r.passed_size)
    };
    let mut s = format!(
        "{:<6} {:<7} {:<w$} {:<7} {:<14} {:<18} {:<23} {:<18} {:<10} {:<10} {:<15} {}",
        r.seq,
        v.code(),
        v.rule_name(),
        v.severity().name(),
        v.driver_label(),
        device(r.device),
        address,
        base,
        passed,
        mapped,
        model::irql(r.irql),
        if flags.is_empty() {
            "-".to_string()
        } else {
            flags.join(",")
        },
        w = name_width()
    );
    s = s.trim_end().to_string();
    s.push('\n');
    if verbose {
        let _ = writeln!(s, "       {}", v.message());
        let _ = writeln!(
            s,
            "       cpu {}  process 0x{:x}  thread 0x{:x}  at {}  action {}",
            r.processor,
            r.process_id,
            r.thread_id,
            model::age(r.timestamp_ns),
            v.action()
        );
        for (label, frames) in [
            (
                "call stack",
                images.stack(&r.call_stack, r.call_stack_depth),
            ),
            ("map stack", images.stack(&r.map_stack, r.map_stack_depth)),
            (
                "the caller's own earlier map site",
                if v.reused() && r.prior_map_site != 0 {
                    vec![images.symbol(r.prior_map_site)]
                } else {
                    Vec::new()
                },
            ),
        ] {
            if frames.is_empty() {
                continue;
            }
            let _ = writeln!(s, "       {label}:");
            for (i, f) in frames.iter().enumerate() {
                let _ = writeln!(s, "         #{i:<2} {f}");
            }
        }
    }
    s
}

/// Counts of violations per rule and per driver.
pub fn summary(t: &Tally, lost: u64, discarded: u64) -> String {
    let mut s = if t.total == 0 {
        "no violations".to_string()
    } else {
        format!(
            "{} violation{} ({} error, {} warning, {} note)",
            t.total,
            if t.total == 1 { "" } else { "s" },
            t.by_severity.error,
            t.by_severity.warning,
            t.by_severity.note,
        )
    };
    if lost > 0 {
        let _ = write!(s, "; {lost} lost to journal overflow");
    }
    if discarded > 0 {
        let _ = write!(s, "; {discarded} discarded by clear");
    }
    s.push('\n');
    if t.total == 0 {
        return s;
    }
    let mut rows = vec![vec![
        "RULE".to_string(),
        "NAME".to_string(),
        "SEVERITY".to_string(),
        "COUNT".to_string(),
    ]];
    for ((code, name, sev), n) in &t.by_rule {
        rows.push(vec![
            code.clone(),
            name.to_string(),
            sev.name().to_string(),
            n.to_string(),
        ]);
    }
    s.push_str("\nby rule:\n");
    s.push_str(&indent(&table(&rows)));
    let mut rows = vec![vec![
        "DRIVER".to_string(),
        "ERRORS".to_string(),
        "WARNINGS".to_string(),
        "NOTES".to_string(),
    ]];
    for (d, n) in &t.by_driver {
        rows.push(vec![
            d.clone(),
            n.error.to_string(),
            n.warning.to_string(),
            n.note.to_string(),
        ]);
    }
    s.push_str("\nby driver:\n");
    s.push_str(&indent(&table(&rows)));
    s
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// Live mappings, oldest first, with `verbose` stacks.
pub fn mappings(list: &MappingList, verbose: bool, images: &Images) -> String {
    if list.records.is_empty() {
        return "no live mappings\n".to_string();
    }
    let mut recs: Vec<&MappingRecord> = list.records.iter().collect();
    recs.sort_by_key(|m| (m.map_time_ns, m.base));
    let mut s = String::new();
    let header = [
        "BASE", "SIZE", "KIND", "PHYSICAL", "MDL", "CACHE", "DRIVER", "DEVICE", "AGE", "IRQL",
        "CPU", "FLAGS",
    ];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let mut stacks = Vec::new();
    for m in &recs {
        let ex = m.flags & MF_MAP_EX != 0;
        let mut flags = Vec::new();
        if ex {
            flags.push("ex");
        }
        if m.flags & MF_LEAK_REPORTED != 0 {
            flags.push("leak-reported");
        }
        if m.flags & MF_DETACHED != 0 {
            flags.push("detached");
        }
        let kind = model::mapping_kind(m.kind);
        let user = format!("user:pid {}", m.process_id);
        if m.flags & iosv::protocol::MF_USER != 0 {
            flags.push(&user);
        }
        if m.flags & iosv::protocol::MF_RESERVED_MAPPED != 0 {
            // One bit, two meanings by kind.
            flags.push(if kind == iosv::mdl::MappingKind::Mdl {
                "direct-io"
            } else {
                "mapped"
            });
        }
        if m.flags & iosv::protocol::MF_RESERVED_DIVISIBLE != 0 {
            flags.push("divisible");
        }
        let io = kind == iosv::mdl::MappingKind::IoSpace;
        rows.push(vec![
            hex(m.base),
            format!("0x{:x}", m.size),
            kind.name().to_string(),
            if io { hex(m.physical) } else { "-".to_string() },
            if m.mdl != 0 {
                hex(m.mdl)
            } else {
                "-".to_string()
            },
            match kind {
                iosv::mdl::MappingKind::Reserved => model::pool_tag(m.cache),
                _ => model::cache(m.cache, ex),
            },
            model::name(&m.driver_name),
            device(m.device),
            model::age(list.now_ns.saturating_sub(m.map_time_ns)),
            model::irql(m.irql),
            m.processor.to_string(),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(",")
            },
        ]);
        stacks.push(images.stack(&m.stack, m.stack_depth));
    }
    if verbose {
        // Widths from the whole table, then each row followed by its stack.
        let t = table(&rows);
        let mut lines = t.lines();
        if let Some(h) = lines.next() {
            let _ = writeln!(s, "{h}");
        }
        for (line, frames) in lines.zip(stacks) {
            let _ = writeln!(s, "{line}");
            for (i, f) in frames.iter().enumerate() {
                let _ = writeln!(s, "    #{i:<2} {f}");
            }
        }
    } else {
        s.push_str(&table(&rows));
    }
    let bytes: u64 = recs.iter().map(|m| m.size).sum();
    let _ = writeln!(
        s,
        "{} live mapping{}, 0x{bytes:x} bytes",
        recs.len(),
        if recs.len() == 1 { "" } else { "s" }
    );
    if list.skipped > 0 {
        let _ = writeln!(
            s,
            "{} entries changed during the walk and were skipped",
            list.skipped
        );
    }
    s
}

/// HELLO and GET_STATS for people.
pub fn status(endpoint: &str, hello: &HelloReply, stats: &Stats) -> String {
    let c = &stats.header.counters;
    let mut s = String::new();
    let _ = writeln!(s, "endpoint      {endpoint}");
    let _ = writeln!(
        s,
        "component     iosv {} (protocol {})",
        model::text(&hello.component_version),
        hello.version
    );
    let _ = writeln!(
        s,
        "capabilities  {}",
        model::capabilities(hello.capabilities).join(" ")
    );
    let _ = writeln!(
        s,
        "limits        table {} mappings, journal {} records, stack depth {}, {} drivers, {} processors",
        hello.table_capacity, hello.journal_capacity, hello.max_stack_depth, hello.max_drivers, hello.processor_count
    );
    let _ = writeln!(s, "uptime        {}", model::age(stats.header.now_ns));
    for (name, meaning) in model::state_flags(stats.header.flags) {
        let _ = writeln!(s, "attention     {name}: {meaning}");
    }
    let _ = writeln!(s, "\ncounters:");
    let rows = vec![
        vec![
            "maps".to_string(),
            c.maps.to_string(),
            "map failures".to_string(),
            c.map_failures.to_string(),
        ],
        vec![
            "unmaps".to_string(),
            c.unmaps.to_string(),
            "contained".to_string(),
            c.contained.to_string(),
        ],
        vec![
            "live".to_string(),
            c.live.to_string(),
            "reported".to_string(),
            c.reported.to_string(),
        ],
        vec![
            "ignored".to_string(),
            c.ignored.to_string(),
            "breaks".to_string(),
            c.breaks.to_string(),
        ],
        vec![
            "bugchecks".to_string(),
            c.bugchecks.to_string(),
            "table full".to_string(),
            c.table_full.to_string(),
        ],
        vec![
            "untracked live".to_string(),
            c.untracked_live.to_string(),
            "unverified unmaps".to_string(),
            c.unverified_unmaps.to_string(),
        ],
        vec!["journal written".to_string(), c.journal_written.to_string()],
    ];
    s.push_str(&indent(&table(&rows)));
    let fired: Vec<_> = RULES
        .iter()
        .filter(|r| c.per_rule.get(r.id.index()).copied().unwrap_or(0) > 0)
        .collect();
    if !fired.is_empty() {
        let _ = writeln!(s, "\nviolations by rule:");
        let mut rows = Vec::new();
        for r in fired {
            rows.push(vec![
                r.code.to_string(),
                r.name.to_string(),
                r.severity.name().to_string(),
                c.per_rule
                    .get(r.id.index())
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]);
        }
        s.push_str(&indent(&table(&rows)));
    }
    let _ = writeln!(s, "\ndrivers ({} known):", stats.header.total_drivers);
    let mut rows = vec![[
        "ID",
        "NAME",
        "STATE",
        "IMAGE",
        "SIZE",
        "LOADS",
        "MAPS",
        "UNMAPS",
        "VIOLATIONS",
        "LIVE",
        "LIVE BYTES",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect::<Vec<_>>()];
    for d in &stats.drivers {
        rows.push(vec![
            d.driver_id.to_string(),
            model::name(&d.name),
            model::driver_state(d.state).to_string(),
            hex(d.image_base),
            format!("0x{:x}", d.image_size),
            d.loads.to_string(),
            d.maps.to_string(),
            d.unmaps.to_string(),
            d.violations.to_string(),
            d.live.to_string(),
            format!("0x{:x}", d.live_bytes),
        ]);
    }
    s.push_str(&indent(&table(&rows)));
    for d in &stats.drivers {
        if let Some(why) = model::hook_refusal(d.hook_refusal) {
            let _ = writeln!(s, "  {} not hooked: {why}", model::name(&d.name));
        }
    }
    s
}

/// A configuration block for people.
pub fn config(b: &ConfigBlock) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "containment   {}",
        if b.flags & CF_CONTAINMENT != 0 {
            "on"
        } else {
            "off"
        }
    );
    let _ = writeln!(
        s,
        "irql mode     {}",
        if b.flags & CF_VERIFIER_IRQL != 0 {
            "verifier (unmap ceiling APC_LEVEL, as Driver Verifier 0xC4/0x7B)"
        } else {
            "ddi (unmap ceiling DISPATCH_LEVEL, as the MmUnmapIoSpace reference)"
        }
    );
    let _ = writeln!(s, "stack depth   {}", b.stack_depth);
    let targets = model::target_names(b);
    let _ = writeln!(
        s,
        "targets       {}",
        if targets.is_empty() {
            "(none)".to_string()
        } else {
            targets.join(", ")
        }
    );
    let _ = writeln!(s, "actions:");
    let mut rows = Vec::new();
    for r in RULES.iter() {
        let a = b
            .actions
            .get(r.id.index())
            .and_then(|a| Action::from_u8(*a))
            .map(|a| a.name())
            .unwrap_or("?");
        rows.push(vec![r.code.to_string(), r.name.to_string(), a.to_string()]);
    }
    s.push_str(&indent(&table(&rows)));
    s
}

/// The rule table for people.
pub fn rules(verbose: bool) -> String {
    let mut rows = vec![vec![
        "ID".to_string(),
        "NAME".to_string(),
        "SEVERITY".to_string(),
        "FIRES WHEN".to_string(),
    ]];
    for r in RULES.iter() {
        rows.push(vec![
            r.code.to_string(),
            r.name.to_string(),
            r.severity.name().to_string(),
            r.summary.to_string(),
        ]);
    }
    let mut s = table(&rows);
    if verbose {
        for r in RULES.iter() {
            let _ = writeln!(
                s,
                "\n{} {}\n  help: {}\n  reference: {}",
                r.code, r.name, r.help, r.reference
            );
        }
    }
    s
}
