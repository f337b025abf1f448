//! Reading a scenario: TOML into raw, span-carrying structs (unknown keys refused), then
//! checked and lowered into a [`Scenario`].

use super::{
    ConfigChange, DeviceDecl, DriverDecl, ImageDecl, IoctlDecl, Limit, Location, Scenario,
    ScenarioError, Step, StepKind, StressSpec, UnmapTarget,
};
use crate::devices::{Bar, AUTO_PHYSICAL, MAX_BAR_SIZE};
use crate::regspec::RegistrySpec;
use crate::{Behaviour, Routine};
use iosv::config::{SizeParam, StartParams};
use iosv::phys::{
    PAGE_EXECUTE, PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE, PAGE_NOCACHE, PAGE_READONLY,
    PAGE_READWRITE, PAGE_WRITECOMBINE,
};
use iosv::protocol::{CLR_GRAVEYARD, CLR_JOURNAL, CLR_STATS, MAX_TARGETS, NAME_LEN};
use iosv::rules::{Action, RuleId};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::string::{String, ToString};
use std::vec::Vec;
use toml::{Spanned, Value};

type Span = core::ops::Range<usize>;

/// Most OS threads a stress phase may use: each thread owns a hooked driver of its own,
/// and the configuration holds at most [`MAX_TARGETS`] target names.
pub(crate) const MAX_THREADS: u64 = MAX_TARGETS as u64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    seed: Option<Spanned<Value>>,
    host: Option<Spanned<RawHost>>,
    config: Option<Spanned<RawConfig>>,
    #[serde(default)]
    driver: Vec<Spanned<RawDriver>>,
    #[serde(default)]
    device: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    capacity: Option<Spanned<Value>>,
    journal_records: Option<Spanned<Value>>,
    max_stack_depth: Option<Spanned<Value>>,
    graveyard: Option<Spanned<Value>>,
    untracked: Option<Spanned<Value>>,
    conflict_buckets: Option<Spanned<Value>>,
}

type Actions = Spanned<BTreeMap<Spanned<String>, Spanned<String>>>;
type Names = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    targets: Option<Names>,
    containment: Option<Spanned<bool>>,
    irql_ceiling: Option<Spanned<String>>,
    stack_depth: Option<Spanned<Value>>,
    actions: Option<Actions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDriver {
    name: Option<Spanned<String>>,
    behaviour: Option<Spanned<String>>,
    bug_every: Option<Spanned<Value>>,
    target: Option<Spanned<bool>>,
    image: Option<Spanned<String>>,
    expect: Option<Spanned<BTreeMap<Spanned<String>, Spanned<Value>>>>,
    ioctls: Option<Spanned<Vec<Spanned<RawIoctl>>>>,
    registry: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIoctl {
    code: Spanned<Value>,
    input: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    driver: Spanned<String>,
    bars: Option<Spanned<Vec<Spanned<RawBar>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBar {
    physical: Spanned<Value>,
    size: Spanned<Value>,
    cache: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    op: Spanned<String>,
    thread: Option<Spanned<Value>>,
    driver: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    mapping: Option<Spanned<String>>,
    physical: Option<Spanned<Value>>,
    size: Option<Spanned<Value>>,
    offset: Option<Spanned<Value>>,
    address: Option<Spanned<Value>>,
    cache: Option<Spanned<Value>>,
    protect: Option<Spanned<Value>>,
    irql: Option<Spanned<Value>>,
    routine: Option<Spanned<String>>,
    bypass: Option<Spanned<bool>>,
    complete: Option<Spanned<bool>>,
    count: Option<Spanned<Value>>,
    rule: Option<Spanned<String>>,
    foreign: Option<Spanned<String>>,
    targets: Option<Names>,
    add_targets: Option<Names>,
    containment: Option<Spanned<bool>>,
    irql_ceiling: Option<Spanned<String>>,
    stack_depth: Option<Spanned<Value>>,
    actions: Option<Actions>,
    what: Option<Names>,
    threads: Option<Spanned<Value>>,
    ops: Option<Spanned<Value>>,
    duration_ms: Option<Spanned<Value>>,
    seed: Option<Spanned<Value>>,
    drivers: Option<Names>,
    inject: Option<Spanned<BTreeMap<Spanned<String>, Spanned<Value>>>>,
    code: Option<Spanned<Value>>,
    input: Option<Spanned<String>>,
    image_ops: Option<Spanned<Value>>,
    image_restart_every: Option<Spanned<Value>>,
}

impl RawStep {
    /// The fields present (besides `op`), with their spans.
    fn present(&self) -> Vec<(&'static str, Span)> {
        let mut v = Vec::new();
        macro_rules! field {
            ($($f:ident),*) => {
                $(if let Some(x) = &self.$f { v.push((stringify!($f), x.span())); })*
            };
        }
        field!(
            thread,
            driver,
            device,
            name,
            mapping,
            physical,
            size,
            offset,
            address,
            cache,
            protect,
            irql,
            routine,
            bypass,
            complete,
            count,
            rule,
            foreign,
            targets,
            add_targets,
            containment,
            irql_ceiling,
            stack_depth,
            actions,
            what,
            threads,
            ops,
            duration_ms,
            seed,
            drivers,
            inject,
            code,
            input,
            image_ops,
            image_restart_every
        );
        v
    }
}

/// Turns byte offsets into line and column: the offsets where lines start are found once,
/// so each lookup is a binary search plus a walk along one line (parsing stays linear in
/// the size of the file).
pub(crate) struct Lines<'a> {
    text: &'a str,
    origin: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str, origin: &'a str) -> Lines<'a> {
        let mut starts = std::vec![0usize];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i.saturating_add(1)),
        );
        Lines {
            text,
            origin,
            starts,
        }
    }

    fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        // The number of line starts at or before `offset` is the 1-based line.
        let line = self.starts.partition_point(|s| *s <= offset).max(1);
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |s| {
                #[cfg(test)]
                tests::SCANNED.with(|n| n.set(n.get().saturating_add(s.len()).saturating_add(1)));
                s.chars().count()
            })
            .saturating_add(1);
        Location {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }

    fn err(&self, span: &Span, message: impl Into<String>) -> ScenarioError {
        let l = self.location(span.start);
        ScenarioError {
            origin: String::from(self.origin),
            line: l.line,
            column: l.column,
            message: message.into(),
        }
    }
}

type R<T> = Result<T, ScenarioError>;

fn num(l: &Lines<'_>, v: &Spanned<Value>, what: &str) -> R<u64> {
    match v.get_ref() {
        Value::Integer(i) => u64::try_from(*i)
            .map_err(|_| l.err(&v.span(), std::format!("{what} must not be negative"))),
        Value::String(s) => parse_number(s).ok_or_else(|| {
            l.err(
                &v.span(),
                std::format!(
                    "{what} `{s}` is not a number (write 4096, 0x1000 or \"0xFFFFD00000001000\")"
                ),
            )
        }),
        other => Err(l.err(
            &v.span(),
            std::format!("{what} must be a number, not {}", other.type_str()),
        )),
    }
}

fn parse_number(s: &str) -> Option<u64> {
    let t: String = s.trim().chars().filter(|c| *c != '_').collect();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        t.parse().ok()
    }
}

fn num_in(l: &Lines<'_>, v: &Spanned<Value>, what: &str, lo: u64, hi: u64) -> R<u64> {
    let n = num(l, v, what)?;
    if n < lo || n > hi {
        return Err(l.err(
            &v.span(),
            std::format!("{what} must be between {lo} and {hi}, not {n}"),
        ));
    }
    Ok(n)
}

fn irql(l: &Lines<'_>, v: &Spanned<Value>) -> R<u8> {
    if let Value::String(s) = v.get_ref() {
        let t = s.trim().to_ascii_uppercase();
        let t = t.strip_suffix("_LEVEL").unwrap_or(&t);
        let n = match t {
            "PASSIVE" => Some(0),
            "APC" => Some(1),
            "DISPATCH" => Some(2),
            "DIRQL" => Some(5),
            "CLOCK" => Some(13),
            "IPI" => Some(14),
            "HIGH" => Some(15),
            _ => None,
        };
        return n.ok_or_else(|| {
            l.err(&v.span(), std::format!("unknown IRQL `{s}` (PASSIVE_LEVEL, APC_LEVEL, DISPATCH_LEVEL, DIRQL, CLOCK_LEVEL, IPI_LEVEL, HIGH_LEVEL or 0..=15)"))
        });
    }
    let n = num_in(l, v, "irql", 0, 15)?;
    Ok(u8::try_from(n).unwrap_or(15))
}

const CACHE_NAMES: [(&str, &str, u32); 6] = [
    ("MmNonCached", "non-cached", 0),
    ("MmCached", "cached", 1),
    ("MmWriteCombined", "write-combined", 2),
    ("MmHardwareCoherentCached", "hardware-coherent-cached", 3),
    ("MmNonCachedUnordered", "non-cached-unordered", 4),
    ("MmUSWCCached", "uswc-cached", 5),
];

fn cache(l: &Lines<'_>, v: &Spanned<Value>) -> R<u32> {
    if let Value::String(s) = v.get_ref() {
        let t = s.trim();
        if let Some((_, _, n)) = CACHE_NAMES
            .iter()
            .find(|(a, b, _)| a.eq_ignore_ascii_case(t) || b.eq_ignore_ascii_case(t))
        {
            return Ok(*n);
        }
        if parse_number(t).is_none() {
            return Err(l.err(
                &v.span(),
                std::format!("unknown cache type `{s}` (non-cached, cached, write-combined, hardware-coherent-cached, non-cached-unordered, uswc-cached, their MEMORY_CACHING_TYPE names, or a number)"),
            ));
        }
    }
    let n = num_in(l, v, "cache", 0, u64::from(u32::MAX))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

const PROTECT_NAMES: [(&str, u32); 7] = [
    ("PAGE_READONLY", PAGE_READONLY),
    ("PAGE_READWRITE", PAGE_READWRITE),
    ("PAGE_EXECUTE", PAGE_EXECUTE),
    ("PAGE_EXECUTE_READ", PAGE_EXECUTE_READ),
    ("PAGE_EXECUTE_READWRITE", PAGE_EXECUTE_READWRITE),
    ("PAGE_NOCACHE", PAGE_NOCACHE),
    ("PAGE_WRITECOMBINE", PAGE_WRITECOMBINE),
];

fn protect(l: &Lines<'_>, v: &Spanned<Value>) -> R<u32> {
    if let Value::String(s) = v.get_ref() {
        if parse_number(s).is_none() {
            let mut bits = 0u32;
            for part in s.split('|') {
                let p = part.trim();
                let found = PROTECT_NAMES
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(p));
                match found {
                    Some((_, b)) => bits |= b,
                    None => {
                        return Err(l.err(
                            &v.span(),
                            std::format!("unknown page protection `{p}` (PAGE_READONLY, PAGE_READWRITE, PAGE_EXECUTE*, PAGE_NOCACHE, PAGE_WRITECOMBINE, joined with `|`, or a number)"),
                        ))
                    }
                }
            }
            return Ok(bits);
        }
    }
    let n = num_in(l, v, "protect", 0, u64::from(u32::MAX))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn routine(l: &Lines<'_>, v: &Spanned<String>) -> R<Routine> {
    let all = [
        ("driver-entry", Routine::DriverEntry),
        ("driver-unload", Routine::DriverUnload),
        ("start-device", Routine::StartDevice),
        ("stop-device", Routine::StopDevice),
        ("surprise-removal", Routine::SurpriseRemoval),
        ("remove-device", Routine::RemoveDevice),
        ("dispatch", Routine::Dispatch),
        ("work-item", Routine::WorkItem),
        ("dpc", Routine::Dpc),
        ("isr", Routine::Isr),
        ("script", Routine::Script),
    ];
    all.iter().find(|(n, _)| n.eq_ignore_ascii_case(v.get_ref().trim())).map(|(_, r)| *r).ok_or_else(|| {
        l.err(&v.span(), std::format!("unknown routine `{}` (driver-entry, driver-unload, start-device, stop-device, surprise-removal, remove-device, dispatch, work-item, dpc, isr, script)", v.get_ref()))
    })
}

fn image_name(l: &Lines<'_>, v: &Spanned<String>) -> R<String> {
    let s = v.get_ref();
    if s.is_empty() || s.len() > NAME_LEN || !s.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(l.err(&v.span(), std::format!("driver name `{s}` must be 1..={NAME_LEN} printable ASCII characters without spaces")));
    }
    Ok(s.clone())
}

fn rule(l: &Lines<'_>, v: &Spanned<String>) -> R<RuleId> {
    RuleId::parse(v.get_ref().trim()).ok_or_else(|| {
        l.err(
            &v.span(),
            std::format!(
                "unknown rule `{}` (IOSV001..IOSV013 or a rule name such as double-unmap)",
                v.get_ref()
            ),
        )
    })
}

struct Names2<'a> {
    drivers: &'a HashSet<String>,
    devices: &'a HashSet<String>,
    /// Image drivers (lowercase) and the devices of image drivers.
    images: &'a HashSet<String>,
    image_devices: &'a HashSet<String>,
}

impl Names2<'_> {
    /// A simulated driver: refuses an image driver for `what` (a step only the host's
    /// simulated drivers can do).
    fn simulated(&self, l: &Lines<'_>, v: &Spanned<String>, what: &str) -> R<String> {
        let n = self.driver(l, v)?;
        if self.images.contains(&n.to_ascii_lowercase()) {
            return Err(l.err(
                &v.span(),
                std::format!("`{n}` is a compiled driver image: {what} only applies to simulated drivers (an image does what its code does)"),
            ));
        }
        Ok(n)
    }
    fn is_image_device(&self, device: &str) -> bool {
        self.image_devices.contains(device)
    }

    fn driver(&self, l: &Lines<'_>, v: &Spanned<String>) -> R<String> {
        let n = v.get_ref();
        if self.drivers.contains(&n.to_ascii_lowercase()) {
            Ok(n.clone())
        } else {
            Err(l.err(&v.span(), std::format!("no [[driver]] is named `{n}`")))
        }
    }
    fn device(&self, l: &Lines<'_>, v: &Spanned<String>) -> R<String> {
        let n = v.get_ref();
        if self.devices.contains(n) {
            Ok(n.clone())
        } else {
            Err(l.err(&v.span(), std::format!("no [[device]] is named `{n}`")))
        }
    }
}

fn config(
    l: &Lines<'_>,
    targets: Option<&Names>,
    add_targets: Option<&Names>,
    containment: Option<&Spanned<bool>>,
    irql_ceiling: Option<&Spanned<String>>,
    stack_depth: Option<&Spanned<Value>>,
    actions: Option<&Actions>,
) -> R<ConfigChange> {
    let mut c = ConfigChange::default();
    let names = |list: &Names| -> R<Vec<String>> {
        if list.get_ref().len() > MAX_TARGETS {
            return Err(l.err(&list.span(), std::format!("at most {MAX_TARGETS} targets")));
        }
        list.get_ref().iter().map(|n| image_name(l, n)).collect()
    };
    if let Some(t) = targets {
        c.targets = Some(names(t)?);
    }
    if let Some(t) = add_targets {
        c.add_targets = names(t)?;
    }
    c.containment = containment.map(|b| *b.get_ref());
    if let Some(m) = irql_ceiling {
        c.verifier_irql = Some(match m.get_ref().trim().to_ascii_lowercase().as_str() {
            "dispatch" | "dispatch_level" | "ddi" => false,
            "apc" | "apc_level" | "verifier" | "driver-verifier" => true,
            other => return Err(l.err(&m.span(), std::format!("irql_ceiling must be \"dispatch\" (the DDI's) or \"apc\" (Driver Verifier's), not `{other}`"))),
        });
    }
    if let Some(d) = stack_depth {
        c.stack_depth = Some(u32::try_from(num_in(l, d, "stack_depth", 0, 16)?).unwrap_or(16));
    }
    if let Some(a) = actions {
        for (k, v) in a.get_ref() {
            let r = if k.get_ref().eq_ignore_ascii_case("all") {
                None
            } else {
                Some(rule(l, k)?)
            };
            let action = Action::parse(v.get_ref().trim()).ok_or_else(|| {
                l.err(
                    &v.span(),
                    std::format!(
                        "unknown action `{}` (ignore, report, break, bugcheck)",
                        v.get_ref()
                    ),
                )
            })?;
            c.actions.push((r, action));
        }
    }
    Ok(c)
}

const STEP_FIELDS: [(&str, &[&str]); 20] = [
    ("load", &["driver"]),
    ("unload", &["driver"]),
    ("attach", &["driver"]),
    ("detach", &["driver"]),
    ("add-device", &["device"]),
    ("start", &["device", "complete"]),
    ("complete-start", &["device"]),
    ("stop", &["device"]),
    ("surprise-remove", &["device"]),
    ("remove", &["device"]),
    ("io", &["device", "count"]),
    ("ioctl", &["device", "driver", "code", "input", "count"]),
    (
        "map",
        &[
            "driver", "physical", "size", "cache", "irql", "name", "routine",
        ],
    ),
    (
        "map-ex",
        &[
            "driver", "physical", "size", "protect", "irql", "name", "routine",
        ],
    ),
    (
        "unmap",
        &[
            "driver", "mapping", "offset", "address", "size", "irql", "bypass", "routine",
        ],
    ),
    ("bug", &["driver", "device", "rule", "foreign", "count"]),
    (
        "config",
        &[
            "targets",
            "add_targets",
            "containment",
            "irql_ceiling",
            "stack_depth",
            "actions",
        ],
    ),
    ("mm-fail", &["count"]),
    ("clear", &["what"]),
    (
        "stress",
        &[
            "threads",
            "ops",
            "duration_ms",
            "seed",
            "drivers",
            "inject",
            "image_ops",
            "image_restart_every",
        ],
    ),
];

fn required<'a, T>(l: &Lines<'_>, at: &Span, op: &str, field: &str, v: Option<&'a T>) -> R<&'a T> {
    v.ok_or_else(|| l.err(at, std::format!("step `{op}` needs `{field}`")))
}

fn step(l: &Lines<'_>, n: &Names2<'_>, raw: &Spanned<RawStep>) -> R<Step> {
    let s = raw.get_ref();
    let at = raw.span();
    let op_name = s.op.get_ref().as_str();
    let Some((op, allowed)) = STEP_FIELDS.iter().find(|(o, _)| *o == op_name).copied() else {
        let ops: Vec<&str> = STEP_FIELDS.iter().map(|(o, _)| *o).collect();
        return Err(l.err(
            &s.op.span(),
            std::format!("unknown op `{op_name}` (one of: {})", ops.join(", ")),
        ));
    };
    for (field, span) in s.present() {
        if field != "thread" && !allowed.contains(&field) {
            return Err(l.err(
                &span,
                std::format!(
                    "`{field}` does not apply to op `{op}` (it takes: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let thread = match &s.thread {
        Some(t) => u32::try_from(num_in(l, t, "thread", 0, 1023)?).unwrap_or(0),
        None => 0,
    };
    let drv = || -> R<String> { n.driver(l, required(l, &at, op, "driver", s.driver.as_ref())?) };
    let dev = || -> R<String> { n.device(l, required(l, &at, op, "device", s.device.as_ref())?) };
    let sim = |what: &str| -> R<String> {
        n.simulated(l, required(l, &at, op, "driver", s.driver.as_ref())?, what)
    };
    // A device op that only the host's simulated devices (`image == false`) or only
    // image drivers' devices (`image == true`) take.
    let dev_of = |image: bool, why: &str| -> R<String> {
        let name = dev()?;
        if n.is_image_device(&name) != image {
            let span = s.device.as_ref().map_or(at.clone(), Spanned::span);
            return Err(l.err(&span, std::format!("`{name}` {why}")));
        }
        Ok(name)
    };
    let count = |default: u64| -> R<u64> {
        s.count
            .as_ref()
            .map_or(Ok(default), |c| num_in(l, c, "count", 1, 1_000_000_000))
    };
    let irql_of = || -> R<u8> { s.irql.as_ref().map_or(Ok(0), |v| irql(l, v)) };
    let routine_of = |irql: u8| -> R<Routine> {
        match &s.routine {
            Some(r) => routine(l, r),
            None if irql > 2 => Ok(Routine::Isr),
            None if irql == 2 => Ok(Routine::Dpc),
            None => Ok(Routine::Script),
        }
    };
    let kind = match op {
        "load" => StepKind::Load(drv()?),
        "unload" => StepKind::Unload(drv()?),
        "attach" => StepKind::Attach(sim("`attach`")?),
        "detach" => StepKind::Detach(sim("`detach`")?),
        "add-device" => StepKind::AddDevice(dev()?),
        "start" => {
            let device = dev()?;
            let complete = s.complete.as_ref().is_none_or(|c| *c.get_ref());
            if let (Some(c), true) = (&s.complete, n.is_image_device(&device)) {
                return Err(l.err(
                    &c.span(),
                    "`complete` does not apply to a device of a compiled driver image (the driver completes its start IRP itself)",
                ));
            }
            StepKind::Start { device, complete }
        }
        "complete-start" => StepKind::CompleteStart(dev_of(
            false,
            "belongs to a compiled driver image, whose start completes by itself: `complete-start` applies to simulated devices",
        )?),
        "stop" => StepKind::Stop(dev()?),
        "surprise-remove" => StepKind::SurpriseRemove(dev()?),
        "remove" => StepKind::Remove(dev()?),
        "io" => StepKind::Io {
            device: dev_of(
                false,
                "belongs to a compiled driver image: send it requests with op `ioctl` (`io` is a simulated driver's runtime I/O)",
            )?,
            count: count(1)?,
        },
        "ioctl" => {
            let code = required(l, &at, op, "code", s.code.as_ref())?;
            let request = ioctl(l, code, s.input.as_ref())?;
            match (&s.device, &s.driver) {
                (Some(_), Some(d)) => {
                    return Err(l.err(
                        &d.span(),
                        "give `device` (a PnP device) or `driver` (a legacy driver's control device), not both",
                    ))
                }
                (None, Some(d)) => {
                    let driver = n.driver(l, d)?;
                    if !n.images.contains(&driver.to_ascii_lowercase()) {
                        return Err(l.err(&d.span(), std::format!("`{driver}` is a simulated driver: `ioctl` with `driver` sends IRPs to the device a compiled driver created in DriverEntry")));
                    }
                    StepKind::ControlIoctl {
                        driver,
                        request,
                        count: count(1)?,
                    }
                }
                _ => StepKind::Ioctl {
                    device: dev_of(
                        true,
                        "belongs to a simulated driver: `ioctl` sends IRPs to a compiled driver image's device (use `io` here)",
                    )?,
                    request,
                    count: count(1)?,
                },
            }
        }
        "map" | "map-ex" => {
            let ex = op == "map-ex";
            let physical = num(
                l,
                required(l, &at, op, "physical", s.physical.as_ref())?,
                "physical",
            )?;
            let size = num(l, required(l, &at, op, "size", s.size.as_ref())?, "size")?;
            let cache = if ex {
                s.protect
                    .as_ref()
                    .map_or(Ok(PAGE_READWRITE | PAGE_NOCACHE), |v| protect(l, v))?
            } else {
                s.cache.as_ref().map_or(Ok(0), |v| cache(l, v))?
            };
            let irql = irql_of()?;
            StepKind::Map {
                driver: sim(&std::format!("`{op}`"))?,
                physical,
                size,
                cache,
                ex,
                irql,
                name: s.name.as_ref().map(|v| v.get_ref().clone()),
                routine: routine_of(irql)?,
            }
        }
        "unmap" => {
            let target = match (&s.mapping, &s.address) {
                (Some(m), None) => UnmapTarget::Named {
                    mapping: m.get_ref().clone(),
                    offset: s.offset.as_ref().map_or(Ok(0), |o| num(l, o, "offset"))?,
                },
                (None, Some(a)) => {
                    if let Some(o) = &s.offset {
                        return Err(
                            l.err(&o.span(), "`offset` applies to `mapping`, not to `address`")
                        );
                    }
                    if s.size.is_none() {
                        return Err(l.err(&a.span(), "an unmap by `address` needs `size`"));
                    }
                    UnmapTarget::Address(num(l, a, "address")?)
                }
                (Some(_), Some(a)) => {
                    return Err(l.err(&a.span(), "give `mapping` or `address`, not both"))
                }
                (None, None) => {
                    return Err(l.err(
                        &at,
                        "step `unmap` needs `mapping` (a name given to a map) or `address`",
                    ))
                }
            };
            let irql = irql_of()?;
            StepKind::Unmap {
                driver: sim("`unmap`")?,
                target,
                size: s.size.as_ref().map(|v| num(l, v, "size")).transpose()?,
                irql,
                bypass: s.bypass.as_ref().is_some_and(|b| *b.get_ref()),
                routine: routine_of(irql)?,
            }
        }
        "bug" => {
            let r = rule(l, required(l, &at, op, "rule", s.rule.as_ref())?)?;
            let device = match &s.device {
                Some(_) => Some(dev_of(
                    false,
                    "belongs to a compiled driver image: bug injection applies to simulated devices",
                )?),
                None => None,
            };
            if device.is_none() && matches!(r, RuleId::LeakOnStop | RuleId::LeakOnRemove) {
                return Err(l.err(
                    &at,
                    std::format!("a `{}` bug needs `device`", r.info().name),
                ));
            }
            let foreign = s
                .foreign
                .as_ref()
                .map(|d| n.simulated(l, d, "`foreign`"))
                .transpose()?;
            if let (Some(f), false) = (&s.foreign, r == RuleId::UnmapForeign) {
                return Err(l.err(
                    &f.span(),
                    "`foreign` applies to the unmap-foreign (IOSV012) bug only",
                ));
            }
            StepKind::Bug {
                rule: r,
                driver: sim("bug injection")?,
                device,
                foreign,
                count: count(1)?,
            }
        }
        "config" => StepKind::Config(config(
            l,
            s.targets.as_ref(),
            s.add_targets.as_ref(),
            s.containment.as_ref(),
            s.irql_ceiling.as_ref(),
            s.stack_depth.as_ref(),
            s.actions.as_ref(),
        )?),
        "mm-fail" => StepKind::MmFail(count(1)?),
        "clear" => {
            let mut what = 0u32;
            match &s.what {
                None => what = CLR_JOURNAL | CLR_STATS | CLR_GRAVEYARD,
                Some(list) => {
                    for w in list.get_ref() {
                        what |= match w.get_ref().as_str() {
                            "journal" => CLR_JOURNAL,
                            "stats" => CLR_STATS,
                            "graveyard" => CLR_GRAVEYARD,
                            other => {
                                return Err(l.err(
                                    &w.span(),
                                    std::format!(
                                        "unknown `what` `{other}` (journal, stats, graveyard)"
                                    ),
                                ))
                            }
                        };
                    }
                    if what == 0 {
                        return Err(l.err(
                            &list.span(),
                            "`what` must name at least one of journal, stats, graveyard",
                        ));
                    }
                }
            }
            StepKind::Clear(what)
        }
        _ => StepKind::Stress(stress(l, n, &at, s)?),
    };
    let location = l.location(at.start);
    Ok(Step {
        location,
        op,
        thread,
        kind,
    })
}

fn stress(l: &Lines<'_>, n: &Names2<'_>, at: &Span, s: &RawStep) -> R<StressSpec> {
    let threads = s
        .threads
        .as_ref()
        .map_or(Ok(2), |t| num_in(l, t, "threads", 1, MAX_THREADS))?;
    let limit = match (&s.ops, &s.duration_ms) {
        (Some(o), None) => Limit::Ops(num_in(l, o, "ops", 1, 1_000_000_000_000)?),
        (None, Some(d)) => Limit::Millis(num_in(l, d, "duration_ms", 1, 86_400_000)?),
        (Some(_), Some(d)) => return Err(l.err(&d.span(), "give `ops` or `duration_ms`, not both")),
        (None, None) => {
            return Err(l.err(
                at,
                "step `stress` needs `ops` (operations in total) or `duration_ms`",
            ))
        }
    };
    let seed = s.seed.as_ref().map(|v| num(l, v, "seed")).transpose()?;
    let drivers = match &s.drivers {
        Some(list) => list
            .get_ref()
            .iter()
            .map(|d| n.driver(l, d))
            .collect::<R<Vec<_>>>()?,
        None => Vec::new(),
    };
    let mut inject = Vec::new();
    let mut total = 0.0f64;
    if let Some(map) = &s.inject {
        for (k, v) in map.get_ref() {
            let r = rule(l, k)?;
            let p = match v.get_ref() {
                Value::Float(f) => *f,
                Value::Integer(i) => *i as f64,
                other => {
                    return Err(l.err(
                        &v.span(),
                        std::format!(
                            "an injection rate must be a number, not {}",
                            other.type_str()
                        ),
                    ))
                }
            };
            if !(0.0..=1.0).contains(&p) {
                return Err(l.err(
                    &v.span(),
                    std::format!(
                        "an injection rate is a probability per operation, 0.0..=1.0, not {p}"
                    ),
                ));
            }
            total += p;
            inject.push((r, p));
        }
        if total > 1.0 {
            return Err(l.err(
                &map.span(),
                std::format!("injection rates add up to {total}, more than 1.0"),
            ));
        }
    }
    let image_ops = s
        .image_ops
        .as_ref()
        .map(|v| num_in(l, v, "image_ops", 1, 1_000_000_000))
        .transpose()?;
    let image_restart_every = s.image_restart_every.as_ref().map_or(Ok(0), |v| {
        num_in(l, v, "image_restart_every", 0, 1_000_000_000)
    })?;
    Ok(StressSpec {
        threads: u32::try_from(threads).unwrap_or(2),
        limit,
        seed,
        drivers,
        inject,
        image_ops,
        image_restart_every,
    })
}

/// Parses hex bytes (`"0a0B"`, `""`): an even number of hex digits.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(std::format!(
            "`{text}`: the input needs an even number of hex digits"
        ));
    }
    // Digits only: `from_str_radix` alone would take a sign (`+a` as 0x0a).
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(std::format!("`{text}` is not hex"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i.saturating_add(2))
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| std::format!("`{text}` is not hex"))
        })
        .collect()
}

fn ioctl(l: &Lines<'_>, code: &Spanned<Value>, input: Option<&Spanned<String>>) -> R<IoctlDecl> {
    let code = u32::try_from(num_in(l, code, "code", 0, u64::from(u32::MAX))?).unwrap_or(0);
    let input = match input {
        Some(i) => parse_hex(i.get_ref().trim()).map_err(|e| l.err(&i.span(), e))?,
        None => Vec::new(),
    };
    Ok(IoctlDecl { code, input })
}

/// The `[[driver]]` keys of a compiled image: `image`, `expect`, `ioctls`, `registry`.
/// `name` is the driver's name, `dir` the scenario file's directory.
fn image_decl(
    l: &Lines<'_>,
    rd: &RawDriver,
    name: &str,
    path: &Spanned<String>,
    dir: &std::path::Path,
) -> R<ImageDecl> {
    for (key, span) in [
        ("behaviour", rd.behaviour.as_ref().map(Spanned::span)),
        ("bug_every", rd.bug_every.as_ref().map(Spanned::span)),
        ("target", rd.target.as_ref().map(Spanned::span)),
    ] {
        if let Some(span) = span {
            return Err(l.err(&span, std::format!("`{key}` does not apply to a compiled driver image (it does what its code does, and iosv always hooks it); give `expect` for the violations it should get")));
        }
    }
    // Whether the file is there is checked before a run ([`Scenario::check_images`]), not
    // here: a scenario naming a build product parses before it is built.
    let resolved = dir.join(path.get_ref());
    let expect = match &rd.expect {
        Some(map) => {
            let mut out: Vec<(RuleId, u64)> = Vec::new();
            for (k, v) in map.get_ref() {
                let r = rule(l, k)?;
                // One count per rule: an id and a name of the same rule would be added up.
                if out.iter().any(|(seen, _)| *seen == r) {
                    return Err(l.err(
                        &k.span(),
                        std::format!("`expect` gives rule {} twice", r.info().code),
                    ));
                }
                out.push((r, num_in(l, v, "an expected count", 0, 1_000_000_000)?));
            }
            Some(out)
        }
        None => None,
    };
    let ioctls = match &rd.ioctls {
        Some(list) => list
            .get_ref()
            .iter()
            .map(|i| ioctl(l, &i.get_ref().code, i.get_ref().input.as_ref()))
            .collect::<R<Vec<_>>>()?,
        None => Vec::new(),
    };
    // Parsed by the runner's own `--registry` parser, so a malformed value stops the
    // scenario here, at its place in the file, before anything runs.
    let registry = match &rd.registry {
        Some(list) => list
            .get_ref()
            .iter()
            .map(|v| {
                RegistrySpec::parse(v.get_ref()).map_err(|e| {
                    l.err(
                        &v.span(),
                        std::format!("driver `{name}`: registry value `{}`: {e}", v.get_ref()),
                    )
                })
            })
            .collect::<R<Vec<_>>>()?,
        None => Vec::new(),
    };
    Ok(ImageDecl {
        path: resolved,
        expect,
        ioctls,
        registry,
        location: l.location(path.span().start),
    })
}

fn bars(
    l: &Lines<'_>,
    raw: &Spanned<Vec<Spanned<RawBar>>>,
    taken: &mut Vec<(u64, u64, String)>,
    device: &str,
) -> R<Vec<Bar>> {
    if raw.get_ref().is_empty() {
        return Err(l.err(
            &raw.span(),
            "a device needs at least one BAR (or leave `bars` out for two automatic ones)",
        ));
    }
    let mut out = Vec::new();
    for b in raw.get_ref() {
        let rb = b.get_ref();
        let physical = num(l, &rb.physical, "physical")?;
        let size = num(l, &rb.size, "size")?;
        if size == 0 || size >= MAX_BAR_SIZE {
            return Err(l.err(
                &rb.size.span(),
                std::format!("a BAR's size must be 1..{MAX_BAR_SIZE:#x} bytes (below 64 MiB)"),
            ));
        }
        let end = physical.checked_add(size).filter(|e| *e <= AUTO_PHYSICAL);
        let Some(end) = end else {
            return Err(l.err(&rb.physical.span(), std::format!("a BAR must lie below {AUTO_PHYSICAL:#x} (the simulator places its own windows above)")));
        };
        if let Some((_, _, other)) = taken.iter().find(|(s, e, _)| physical < *e && *s < end) {
            return Err(l.err(&b.span(), std::format!("this BAR overlaps a BAR of device `{other}`; devices must not share physical ranges")));
        }
        taken.push((physical, end, String::from(device)));
        let cache = rb.cache.as_ref().map_or(Ok(0), |c| cache(l, c))?;
        if cache >= iosv::phys::MM_MAXIMUM_CACHE_TYPE {
            return Err(l.err(
                &rb.cache.as_ref().map_or(b.span(), Spanned::span),
                "a BAR's cache type must be a valid MEMORY_CACHING_TYPE (0..=5)",
            ));
        }
        out.push(Bar {
            physical,
            size,
            cache,
        });
    }
    Ok(out)
}

fn params(l: &Lines<'_>, h: &Spanned<RawHost>) -> R<StartParams> {
    let r = h.get_ref();
    let mut out = StartParams::default();
    for (p, v) in [
        (SizeParam::Capacity, &r.capacity),
        (SizeParam::JournalRecords, &r.journal_records),
        (SizeParam::MaxStackDepth, &r.max_stack_depth),
        (SizeParam::Graveyard, &r.graveyard),
        (SizeParam::Untracked, &r.untracked),
        (SizeParam::ConflictBuckets, &r.conflict_buckets),
    ] {
        if let Some(v) = v {
            let n = num(l, v, p.key())?;
            let n = p.check(n).map_err(|e| l.err(&v.span(), e.to_string()))?;
            out.set(p, n);
        }
    }
    Ok(out)
}

pub(crate) fn parse(text: &str, origin: &str, dir: &std::path::Path) -> R<Scenario> {
    let l = Lines::new(text, origin);
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        match e.span() {
            Some(span) => l.err(&span, message),
            None => ScenarioError {
                origin: String::from(origin),
                line: 0,
                column: 0,
                message,
            },
        }
    })?;

    let mut driver_names = HashSet::new();
    let mut image_names = HashSet::new();
    let mut drivers = Vec::new();
    for d in &raw.driver {
        let rd = d.get_ref();
        // An image driver's name is its file name, as on Windows (iosv names it so).
        let file_name = rd.image.as_ref().map(|p| {
            let n = std::path::Path::new(p.get_ref())
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            Spanned::new(p.span(), n)
        });
        let name = match (&rd.name, &file_name) {
            (Some(n), Some(f)) if !n.get_ref().eq_ignore_ascii_case(f.get_ref()) => {
                return Err(l.err(
                    &n.span(),
                    std::format!(
                    "an image driver is named after its file: `{}`, not `{}` (leave `name` out)",
                    f.get_ref(),
                    n.get_ref()
                ),
                ))
            }
            (_, Some(f)) => image_name(&l, f)?,
            (Some(n), None) => image_name(&l, n)?,
            (None, None) => return Err(l.err(&d.span(), "a [[driver]] needs `name` (or `image`)")),
        };
        let name_span = rd
            .name
            .as_ref()
            .or(rd.image.as_ref())
            .map_or(d.span(), Spanned::span);
        if !driver_names.insert(name.to_ascii_lowercase()) {
            return Err(l.err(
                &name_span,
                std::format!("driver `{name}` is declared twice"),
            ));
        }
        let image = match &rd.image {
            Some(path) => {
                if !image_names.is_empty() {
                    return Err(l.err(&path.span(), "only one compiled driver image per scenario: the runner runs one image per child process (declare the others in another scenario)"));
                }
                image_names.insert(name.to_ascii_lowercase());
                Some(image_decl(&l, rd, &name, path, dir)?)
            }
            None => {
                for (key, span) in [
                    ("expect", rd.expect.as_ref().map(Spanned::span)),
                    ("ioctls", rd.ioctls.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        return Err(l.err(&span, std::format!("`{key}` applies to a compiled driver image (`image = \"x.sys\"`); a simulated driver's expected violations are what it injects")));
                    }
                }
                if let Some(r) = &rd.registry {
                    return Err(l.err(&r.span(), std::format!("`registry` applies to a compiled driver image (`image = \"x.sys\"`): driver `{name}` is simulated and reads no registry")));
                }
                None
            }
        };
        let behaviour = match &rd.behaviour {
            Some(b) => Behaviour::parse(b.get_ref().trim()).ok_or_else(|| {
                l.err(&b.span(), std::format!("unknown behaviour `{}` (well-behaved, or a rule id or name such as IOSV005 or double-unmap)", b.get_ref()))
            })?,
            None => Behaviour::WellBehaved,
        };
        let bug_every = rd
            .bug_every
            .as_ref()
            .map_or(Ok(100), |v| num_in(&l, v, "bug_every", 1, 1_000_000_000))?;
        drivers.push(DriverDecl {
            name,
            behaviour,
            bug_every,
            target: rd.target.as_ref().is_none_or(|t| *t.get_ref()),
            image,
        });
    }
    if drivers.len() > iosv::drivers::MAX_DRIVERS {
        return Err(l.err(
            &(0..0),
            std::format!("at most {} drivers", iosv::drivers::MAX_DRIVERS),
        ));
    }

    let mut device_names = HashSet::new();
    let mut image_devices = HashSet::new();
    let mut devices = Vec::new();
    let mut taken = Vec::new();
    for d in &raw.device {
        let rd = d.get_ref();
        let name = rd.name.get_ref().clone();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(l.err(
                &rd.name.span(),
                "a device name must be printable ASCII without spaces",
            ));
        }
        if !device_names.insert(name.clone()) {
            return Err(l.err(
                &rd.name.span(),
                std::format!("device `{name}` is declared twice"),
            ));
        }
        if !driver_names.contains(&rd.driver.get_ref().to_ascii_lowercase()) {
            return Err(l.err(
                &rd.driver.span(),
                std::format!("no [[driver]] is named `{}`", rd.driver.get_ref()),
            ));
        }
        let b = rd
            .bars
            .as_ref()
            .map(|b| bars(&l, b, &mut taken, &name))
            .transpose()?;
        if image_names.contains(&rd.driver.get_ref().to_ascii_lowercase()) {
            image_devices.insert(name.clone());
            let cache = rd
                .bars
                .iter()
                .flat_map(|b| b.get_ref())
                .find_map(|b| b.get_ref().cache.as_ref());
            if let Some(c) = cache {
                return Err(l.err(&c.span(), "`cache` does not apply to a BAR of a compiled driver's device: the driver chooses how it maps its BARs"));
            }
        }
        devices.push(DeviceDecl {
            name,
            driver: rd.driver.get_ref().clone(),
            bars: b,
        });
    }

    let names = Names2 {
        drivers: &driver_names,
        devices: &device_names,
        images: &image_names,
        image_devices: &image_devices,
    };
    let mut steps = Vec::new();
    let mut loaded_images = HashSet::new();
    for s in &raw.step {
        let parsed = step(&l, &names, s)?;
        if let StepKind::Load(d) = &parsed.kind {
            let d = d.to_ascii_lowercase();
            if image_names.contains(&d) && !loaded_images.insert(d) {
                return Err(l.err(&s.span(), "a compiled driver image is loaded once per scenario (the runner does not map an image twice); its devices can be added, started, stopped and removed again"));
            }
        }
        steps.push(parsed);
    }

    let config = match &raw.config {
        Some(c) => {
            let rc = c.get_ref();
            config(
                &l,
                rc.targets.as_ref(),
                None,
                rc.containment.as_ref(),
                rc.irql_ceiling.as_ref(),
                rc.stack_depth.as_ref(),
                rc.actions.as_ref(),
            )?
        }
        None => ConfigChange::default(),
    };
    let declared_targets = drivers.iter().filter(|d| d.target).count();
    if config
        .targets
        .as_ref()
        .map_or(0, Vec::len)
        .saturating_add(declared_targets)
        > MAX_TARGETS
    {
        return Err(l.err(
            &raw.config.as_ref().map_or(0..0, Spanned::span),
            std::format!("more than {MAX_TARGETS} targets"),
        ));
    }

    Ok(Scenario {
        origin: String::from(origin),
        name: raw
            .name
            .as_ref()
            .map_or_else(|| String::from(origin), |n| n.get_ref().clone()),
        description: raw
            .description
            .as_ref()
            .map_or_else(String::new, |d| d.get_ref().clone()),
        seed: raw
            .seed
            .as_ref()
            .map(|s| num(&l, s, "seed"))
            .transpose()?
            .unwrap_or(0x10_5EED),
        params: raw.host.as_ref().map(|h| params(&l, h)).transpose()?,
        config,
        drivers,
        devices,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Scenario::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_line_column_and_reason() {
        assert_eq!(err("[[driver]]\nname = \"a.sys\"\nbogus = 1\n"), "t.toml:3:1: unknown field `bogus`, expected one of `name`, `behaviour`, `bug_every`, `target`, `image`, `expect`, `ioctls`, `registry`");
        let e = err("[[driver]]\nname = \"a.sys\"\n[[step]]\nop = \"lod\"\ndriver = \"a.sys\"\n");
        assert!(e.starts_with("t.toml:4:6: unknown op `lod`"), "{e}");
        let e = err("[[driver]]\nname = \"a.sys\"\n[[step]]\nop = \"load\"\ndriver = \"b.sys\"\n");
        assert_eq!(e, "t.toml:5:10: no [[driver]] is named `b.sys`");
        let e = err(
            "[[driver]]\nname = \"a.sys\"\n[[step]]\nop = \"load\"\ndriver = \"a.sys\"\nsize = 3\n",
        );
        assert!(
            e.starts_with("t.toml:6:8: `size` does not apply to op `load`"),
            "{e}"
        );
        let e = err("[[driver]]\nname = \"a.sys\"\n[[step]]\nop = \"map\"\ndriver = \"a.sys\"\nphysical = 0\nsize = 1\nirql = \"LOW\"\n");
        assert!(e.starts_with("t.toml:8:8: unknown IRQL `LOW`"), "{e}");
        let e =
            err("[[step]]\nop = \"stress\"\nops = 1\ninject = { IOSV005 = 0.7, IOSV004 = 0.6 }\n");
        assert!(
            e.starts_with("t.toml:4:10: injection rates add up to"),
            "{e}"
        );
        let e = err("name = [\n");
        assert!(e.starts_with("t.toml:"), "{e}");
    }

    /// A directory holding an (empty) `drv.sys`, for `image` keys: the parser checks
    /// the file exists, not what it is (the runner's loader does).
    fn image_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(std::format!("iosv-scn-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("drv.sys"), b"MZ").unwrap();
        dir
    }

    const IMAGE_HEAD: &str = "[[driver]]\nimage = \"drv.sys\"\n[[driver]]\nname = \"sim.sys\"\n[[device]]\nname = \"d0\"\ndriver = \"drv.sys\"\n[[device]]\nname = \"s0\"\ndriver = \"sim.sys\"\n";

    fn image_err(tail: &str) -> String {
        let text = std::format!("{IMAGE_HEAD}{tail}");
        Scenario::parse_in(&text, "t.toml", &image_dir())
            .unwrap_err()
            .to_string()
    }

    /// Steps that only simulated drivers can do are refused on an image driver (and the
    /// reverse), at the offending key.
    #[test]
    fn image_drivers_take_only_what_a_binary_can_do() {
        let ok = std::format!(
            "{IMAGE_HEAD}[[step]]\nop = \"load\"\ndriver = \"drv.sys\"\n[[step]]\nop = \"add-device\"\ndevice = \"d0\"\n[[step]]\nop = \"start\"\ndevice = \"d0\"\n[[step]]\nop = \"ioctl\"\ndevice = \"d0\"\ncode = 0x222000\ninput = \"0a0B\"\ncount = 3\n"
        );
        let s = Scenario::parse_in(&ok, "t.toml", &image_dir()).unwrap();
        assert_eq!(s.images().len(), 1);
        assert_eq!(s.images()[0].0, "drv.sys");
        assert!(s.images()[0].1.ends_with("drv.sys"));
        assert!(matches!(
            &s.steps[3].kind,
            StepKind::Ioctl { device, request, count: 3 }
                if device == "d0" && request.code == 0x222000 && request.input == [0x0a, 0x0b]
        ));
        let e = image_err("[[step]]\nop = \"map\"\ndriver = \"drv.sys\"\nphysical = 0\nsize = 1\n");
        assert!(e.starts_with("t.toml:13:10: `drv.sys` is a compiled driver image: `map` only applies to simulated drivers"), "{e}");
        let e = image_err("[[step]]\nop = \"bug\"\ndriver = \"drv.sys\"\nrule = \"IOSV004\"\n");
        assert!(
            e.starts_with("t.toml:13:10: `drv.sys` is a compiled driver image: bug injection"),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"unmap\"\ndriver = \"drv.sys\"\nmapping = \"m\"\n");
        assert!(
            e.starts_with("t.toml:13:10: `drv.sys` is a compiled driver image: `unmap`"),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"io\"\ndevice = \"d0\"\n");
        assert!(e.starts_with("t.toml:13:10: `d0` belongs to a compiled driver image: send it requests with op `ioctl`"), "{e}");
        let e = image_err("[[step]]\nop = \"ioctl\"\ndevice = \"s0\"\ncode = 1\n");
        assert!(
            e.starts_with("t.toml:13:10: `s0` belongs to a simulated driver"),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"ioctl\"\ndevice = \"d0\"\ncode = 1\ninput = \"abc\"\n");
        assert!(
            e.starts_with("t.toml:15:9: `abc`: the input needs an even number of hex digits"),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"ioctl\"\ndevice = \"d0\"\n");
        assert!(
            e.starts_with("t.toml:11:1: step `ioctl` needs `code`"),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"start\"\ndevice = \"d0\"\ncomplete = false\n");
        assert!(
            e.starts_with(
                "t.toml:14:12: `complete` does not apply to a device of a compiled driver image"
            ),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"load\"\ndriver = \"drv.sys\"\n[[step]]\nop = \"load\"\ndriver = \"drv.sys\"\n");
        assert!(
            e.starts_with("t.toml:14:1: a compiled driver image is loaded once per scenario"),
            "{e}"
        );
        let e = image_err(
            "[[step]]\nop = \"ioctl\"\ndevice = \"d0\"\ndriver = \"drv.sys\"\ncode = 1\n",
        );
        assert!(
            e.starts_with("t.toml:14:10: give `device` (a PnP device) or `driver`"),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"ioctl\"\ndriver = \"sim.sys\"\ncode = 1\n");
        assert!(
            e.starts_with("t.toml:13:10: `sim.sys` is a simulated driver: `ioctl` with `driver`"),
            "{e}"
        );
        let e = image_err("[[step]]\nop = \"attach\"\ndriver = \"drv.sys\"\n");
        assert!(
            e.starts_with("t.toml:13:10: `drv.sys` is a compiled driver image: `attach`"),
            "{e}"
        );
    }

    #[test]
    fn image_driver_declarations_are_checked() {
        let dir = image_dir();
        let err = |text: &str| {
            Scenario::parse_in(text, "t.toml", &dir)
                .unwrap_err()
                .to_string()
        };
        let e = err("[[driver]]\nimage = \"drv.sys\"\nbehaviour = \"IOSV005\"\n");
        assert!(
            e.starts_with("t.toml:3:13: `behaviour` does not apply to a compiled driver image"),
            "{e}"
        );
        // A missing file parses; the check before a run refuses it at its key.
        let missing =
            Scenario::parse_in("[[driver]]\nimage = \"missing.sys\"\n", "t.toml", &dir).unwrap();
        let e = missing.check_images().unwrap_err().to_string();
        assert!(e.starts_with("t.toml:2:9: no driver image at `"), "{e}");
        assert!(e.contains("missing.sys"), "{e}");
        let present = Scenario::parse_in("[[driver]]\nimage = \"drv.sys\"\n", "t.toml", &dir);
        assert_eq!(present.unwrap().check_images(), Ok(()));
        let e = err("[[driver]]\nname = \"other.sys\"\nimage = \"drv.sys\"\n");
        assert!(
            e.starts_with("t.toml:2:8: an image driver is named after its file: `drv.sys`"),
            "{e}"
        );
        let e = err("[[driver]]\nname = \"a.sys\"\nexpect = { IOSV001 = 1 }\n");
        assert!(
            e.starts_with("t.toml:3:10: `expect` applies to a compiled driver image"),
            "{e}"
        );
        let e =
            err("[[driver]]\nimage = \"drv.sys\"\nexpect = { IOSV007 = 1, leak-on-stop = 2 }\n");
        assert!(
            e.starts_with("t.toml:3:") && e.contains("`expect` gives rule IOSV007 twice"),
            "{e}"
        );
        let e = err("[[driver]]\nimage = \"drv.sys\"\nexpect = { IOSV999 = 1 }\n");
        assert!(e.starts_with("t.toml:3:12: unknown rule `IOSV999`"), "{e}");
        let e = err("[[driver]]\nimage = \"drv.sys\"\n[[driver]]\nimage = \"./drv2.sys\"\n");
        assert!(
            e.starts_with("t.toml:4:9: only one compiled driver image per scenario"),
            "{e}"
        );
        let e = err("[[driver]]\nimage = \"drv.sys\"\n[[device]]\nname = \"d\"\ndriver = \"drv.sys\"\nbars = [{ physical = 0x1000, size = 0x1000, cache = \"cached\" }]\n");
        assert!(
            e.starts_with(
                "t.toml:6:53: `cache` does not apply to a BAR of a compiled driver's device"
            ),
            "{e}"
        );
        let e = err("[[driver]]\nbehaviour = \"IOSV005\"\n");
        assert!(
            e.starts_with("t.toml:1:1: a [[driver]] needs `name` (or `image`)"),
            "{e}"
        );
        // The name may be given when it is the file's (any case).
        let s = Scenario::parse_in(
            "[[driver]]\nname = \"DRV.SYS\"\nimage = \"drv.sys\"\nexpect = { IOSV007 = 2 }\n",
            "t.toml",
            &dir,
        )
        .unwrap();
        assert_eq!(s.drivers[0].name, "drv.sys");
        assert_eq!(
            s.drivers[0].image.as_ref().and_then(|i| i.expect.clone()),
            Some(std::vec![(RuleId::LeakOnStop, 2)])
        );
    }

    /// An image driver's `registry` values are parsed by the `--registry` parser when
    /// the scenario is; a malformed one is refused at its place, naming the driver and
    /// the value; a simulated driver has no registry.
    #[test]
    fn image_driver_registry_values_are_parsed_with_the_scenario() {
        use crate::regspec::{RegRoot, REG_DWORD, REG_SZ};
        let dir = image_dir();
        let s = Scenario::parse_in(
            "[[driver]]\nimage = \"drv.sys\"\nregistry = [\n  \"Parameters\\\\LeakOnStop=dword:1\",\n  '@hw\\Flavor=sz:fast',\n]\n",
            "t.toml",
            &dir,
        )
        .unwrap();
        let registry = &s.drivers[0].image.as_ref().unwrap().registry;
        let got: Vec<_> = registry
            .iter()
            .map(|r| (r.root, r.key.as_str(), r.name.as_str(), r.kind))
            .collect();
        assert_eq!(
            got,
            [
                (RegRoot::Service, "Parameters", "LeakOnStop", REG_DWORD),
                (RegRoot::DeviceHardware, "", "Flavor", REG_SZ),
            ]
        );
        assert_eq!(registry[0].to_string(), "Parameters\\LeakOnStop=dword:1");
        let none = Scenario::parse_in("[[driver]]\nimage = \"drv.sys\"\n", "t.toml", &dir);
        assert!(none.unwrap().drivers[0]
            .image
            .as_ref()
            .unwrap()
            .registry
            .is_empty());

        let err = |text: &str| {
            Scenario::parse_in(text, "t.toml", &dir)
                .unwrap_err()
                .to_string()
        };
        let e = err("[[driver]]\nimage = \"drv.sys\"\nregistry = ['Parameters\\X=dword:1', 'Parameters\\X=float:1']\n");
        assert!(
            e.starts_with("t.toml:3:37: driver `drv.sys`: registry value `Parameters\\X=float:1`: unknown type `float`"),
            "{e}"
        );
        let e = err("[[driver]]\nimage = \"drv.sys\"\nregistry = ['NoEquals']\n");
        assert!(
            e.starts_with("t.toml:3:13: driver `drv.sys`: registry value `NoEquals`: "),
            "{e}"
        );
        let e = err("[[driver]]\nname = \"sim.sys\"\nregistry = ['Parameters\\X=dword:1']\n");
        assert!(
            e.starts_with("t.toml:3:12: `registry` applies to a compiled driver image (`image = \"x.sys\"`): driver `sim.sys` is simulated"),
            "{e}"
        );
        let e = err("[[driver]]\nimage = \"drv.sys\"\nregistry = 'Parameters\\X=dword:1'\n");
        assert!(e.starts_with("t.toml:3:"), "{e}");
    }

    /// Hex input is digits only: a sign is not a digit (`+a` was read as 0x0a).
    #[test]
    fn hex_input_is_digits_only() {
        assert_eq!(parse_hex("0a0B"), Ok(std::vec![0x0a, 0x0b]));
        assert_eq!(parse_hex(""), Ok(std::vec![]));
        for bad in ["+a", "-1", "+a0b", "0x", "zz", "é1"] {
            assert!(parse_hex(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_hex("+a").unwrap_err(), "`+a` is not hex");
    }

    #[test]
    fn numbers_and_names() {
        assert_eq!(
            parse_number("0xFFFF_D000_0000_1000"),
            Some(0xFFFF_D000_0000_1000)
        );
        assert_eq!(parse_number("4096"), Some(4096));
        let s = Scenario::parse(
            "[[driver]]\nname = \"a.sys\"\n[[step]]\nop = \"unmap\"\ndriver = \"a.sys\"\naddress = \"0xFFFFE00000000000\"\nsize = 4096\nirql = \"DISPATCH_LEVEL\"\n",
            "x",
        )
        .unwrap();
        assert!(matches!(
            s.steps[0].kind,
            StepKind::Unmap {
                target: UnmapTarget::Address(0xFFFF_E000_0000_0000),
                irql: 2,
                routine: Routine::Dpc,
                ..
            }
        ));
    }

    fn steps(n: usize) -> String {
        let mut t = String::from("[[driver]]\nname = \"a.sys\"\n");
        for _ in 0..n {
            t.push_str("[[step]]\nop = \"load\"\ndriver = \"a.sys\"\n");
        }
        t
    }

    std::thread_local! {
        /// Work [`Lines::location`] did on this thread: one per call plus the bytes of the
        /// line it scanned for the column (its only work besides a binary search).
        pub(super) static SCANNED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Issue 9: each step's line and column used to be counted from the start of the file,
    /// so 10^5 steps took ~100x as long as 10^4. Now locating a step scans only its own
    /// line: the work grows by 10x, not 100x. (Counted, not timed: a timed version
    /// failed on a loaded machine.)
    #[test]
    fn parsing_is_linear_in_the_number_of_steps() {
        let scanned = |n: usize| {
            SCANNED.with(|c| c.set(0));
            let s = Scenario::parse(&steps(n), "t.toml").expect("parses");
            assert_eq!(s.steps.len(), n);
            SCANNED.with(std::cell::Cell::get)
        };
        let small = scanned(10_000);
        let large = scanned(100_000);
        assert!(small > 0, "the steps were located");
        assert!(
            large <= small * 11,
            "10^4 steps: work {small}, 10^5 steps: work {large} (more than 11x)"
        );
    }

    #[test]
    fn locations_are_right_deep_into_a_large_file() {
        let mut text = steps(5_000);
        text.push_str("[[step]]\nop = \"load\"\ndriver = \"b.sys\"\n");
        let line = 2 + 3 * 5_000 + 3;
        assert_eq!(
            err(&text),
            std::format!("t.toml:{line}:10: no [[driver]] is named `b.sys`")
        );
        let l = Lines::new("ab\n\u{e9}x\n", "o");
        assert_eq!(l.location(0), Location { line: 1, column: 1 });
        assert_eq!(l.location(3), Location { line: 2, column: 1 });
        assert_eq!(l.location(5), Location { line: 2, column: 2 });
        assert_eq!(l.location(99), Location { line: 3, column: 1 });
    }
}
