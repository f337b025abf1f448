//! What the wire records mean to people: names of IRQLs and cache types, the driver a
//! violation is blamed on, a sentence naming both sides of each conflict, and stack
//! frames as `module+offset`. Every output format reads these, so the human table, JSON,
//! SARIF and JUnit say the same thing.

use iosv::pe::HookedRoutine;
use iosv::phys::{byte_offset, check_parameters, shared_pages, span_pages, BadParameter};
use iosv::platform::Irql;
use iosv::protocol::*;
use iosv::rules::{Action, RuleId, RuleInfo, Severity};

/// A wire name (NUL-padded ASCII) as text; bytes that are not printable ASCII are escaped.
pub fn name(n: &[u8; NAME_LEN]) -> String {
    text(n)
}

/// The names of a configuration block's targets (the first `target_count` slots).
pub fn target_names(b: &iosv::protocol::ConfigBlock) -> Vec<String> {
    b.targets
        .iter()
        .take(b.target_count as usize)
        .map(name)
        .collect()
}

/// NUL-padded ASCII bytes as text, up to the first NUL; other bytes that are not
/// printable ASCII are escaped.
pub fn text(b: &[u8]) -> String {
    let len = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    b.iter()
        .take(len)
        .flat_map(|c| std::ascii::escape_default(*c))
        .map(char::from)
        .collect()
}

/// An address in hex (`0xfffff80012340000`).
pub fn hex(v: u64) -> String {
    format!("0x{v:x}")
}

/// A device object, or `-` for none.
pub fn device(v: u64) -> String {
    if v == 0 {
        "-".to_string()
    } else {
        hex(v)
    }
}

/// An IRQL by its WDK name (`DISPATCH_LEVEL`); device IRQLs as `DIRQL n`.
pub fn irql(level: u8) -> String {
    match Irql(level).name() {
        Some(n) => n.to_string(),
        None => format!("DIRQL {level}"),
    }
}

/// A MmMapIoSpace cache type (`MmNonCached`) or a MmMapIoSpaceEx protection
/// (`PAGE_READWRITE|PAGE_NOCACHE`).
pub fn cache(value: u32, map_ex: bool) -> String {
    if map_ex {
        let mut parts = Vec::new();
        let mut rest = value;
        for (bit, n) in [
            (0x01, "PAGE_NOACCESS"),
            (0x02, "PAGE_READONLY"),
            (0x04, "PAGE_READWRITE"),
            (0x08, "PAGE_WRITECOPY"),
            (0x10, "PAGE_EXECUTE"),
            (0x20, "PAGE_EXECUTE_READ"),
            (0x40, "PAGE_EXECUTE_READWRITE"),
            (0x80, "PAGE_EXECUTE_WRITECOPY"),
            (0x100, "PAGE_GUARD"),
            (0x200, "PAGE_NOCACHE"),
            (0x400, "PAGE_WRITECOMBINE"),
        ] {
            if value & bit != 0 {
                parts.push(n.to_string());
                rest &= !bit;
            }
        }
        if rest != 0 || parts.is_empty() {
            parts.push(format!("0x{rest:x}"));
        }
        parts.join("|")
    } else {
        match value {
            0 => "MmNonCached".to_string(),
            1 => "MmCached".to_string(),
            2 => "MmWriteCombined".to_string(),
            3 => "MmHardwareCoherentCached".to_string(),
            4 => "MmNonCachedUnordered".to_string(),
            5 => "MmUSWCCached".to_string(),
            v => format!("cache type {v}"),
        }
    }
}

/// What a cache field holds: a `MEMORY_CACHING_TYPE` (MmMapIoSpace) or a page
/// protection (MmMapIoSpaceEx). The two share numbers (4 is both PAGE_READWRITE and
/// MmNonCachedUnordered), so every report names the kind beside the value.
pub fn cache_kind(map_ex: bool) -> &'static str {
    if map_ex {
        "PAGE_PROTECTION"
    } else {
        "MEMORY_CACHING_TYPE"
    }
}

/// The cache field of a mapping of `kind` for machine-readable reports: a reserved range
/// keeps its pool tag there (`{"kind": "POOL_TAG", "name": "'Rsvd'", ...}`), every other
/// kind a cache type or protection ([`cache_json`]).
pub fn mapping_cache_json(
    kind: iosv::mdl::MappingKind,
    value: u32,
    map_ex: bool,
) -> serde_json::Value {
    if kind == iosv::mdl::MappingKind::Reserved {
        return serde_json::json!({ "kind": "POOL_TAG", "name": pool_tag(value), "value": value });
    }
    cache_json(value, map_ex)
}

/// A cache field for machine-readable reports: its kind, its name and its value.
pub fn cache_json(value: u32, map_ex: bool) -> serde_json::Value {
    serde_json::json!({
        "kind": cache_kind(map_ex),
        "name": cache(value, map_ex),
        "value": value,
    })
}

/// A duration in ns, short (`350ms`, `12.3s`, `5m07s`, `2h05m`).
pub fn age(ns: u64) -> String {
    let ms = ns / 1_000_000;
    if ms < 1000 {
        if ns < 1_000_000 {
            return format!("{}us", ns / 1000);
        }
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s < 60 {
        return format!("{}.{}s", s, (ms % 1000) / 100);
    }
    if s < 3600 {
        return format!("{}m{:02}s", s / 60, s % 60);
    }
    format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
}

/// Loaded driver images, to print stack frames as `nic.sys+0x1a2b` — or, with a
/// [`Symbolizer`](crate::symbols::Symbolizer) and the images' PDB identities, as
/// `nic.sys!map_registers+0x12 (src\nic.rs:42)`.
#[derive(Debug, Clone, Default)]
pub struct Images {
    images: Vec<ImageEntry>,
    symbols: Option<std::sync::Arc<crate::symbols::Symbolizer>>,
}

#[derive(Debug, Clone)]
struct ImageEntry {
    base: u64,
    size: u64,
    name: String,
    identity: Option<crate::symbols::ImageIdentity>,
}

/// One stack frame: the address, the module and offset it lies at, and its source
/// location when a matching PDB resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The return address.
    pub address: u64,
    /// The driver image it lies in, if known.
    pub module: Option<String>,
    /// Offset from the image base (0 without a module).
    pub offset: u64,
    /// Function and line, from the image's PDB.
    pub source: Option<crate::symbols::Resolved>,
}

impl Frame {
    /// `nic.sys!map_registers+0x12 (src\nic.rs:42)` when symbolized, `nic.sys+0x1a2b`
    /// in a known image, the address otherwise.
    pub fn text(&self) -> String {
        let Some(module) = &self.module else {
            return hex(self.address);
        };
        let Some((source, inner)) = self.source.as_ref().and_then(|s| Some((s, s.innermost()?)))
        else {
            return format!("{module}+0x{:x}", self.offset);
        };
        let outer = source.frames.last().unwrap_or(inner);
        let mut t = format!("{module}!{}+0x{:x}", outer.function, source.function_offset);
        if source.frames.len() > 1 {
            t.push_str(&format!(" [inlined {}]", inner.function));
        }
        match (&inner.file, inner.line) {
            (Some(f), Some(l)) => t.push_str(&format!(" ({f}:{l})")),
            (Some(f), None) => t.push_str(&format!(" ({f})")),
            _ => {}
        }
        t
    }

    /// The frame for JSON: address, module, offset, and (when symbolized) function,
    /// file, line and inlined frames.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "address": hex(self.address),
            "module": self.module,
            "offset": self.module.as_ref().map(|_| hex(self.offset)),
            "text": self.text(),
        });
        if let (Some(obj), Some(src)) = (v.as_object_mut(), &self.source) {
            let outer = src.frames.last();
            let inner = src.innermost();
            obj.insert("function".into(), outer.map(|f| f.function.clone()).into());
            obj.insert("file".into(), inner.and_then(|f| f.file.clone()).into());
            obj.insert("line".into(), inner.and_then(|f| f.line).into());
            if src.frames.len() > 1 {
                let inlined: Vec<serde_json::Value> = src
                    .frames
                    .iter()
                    .map(|f| serde_json::json!({ "function": f.function, "file": f.file, "line": f.line }))
                    .collect();
                obj.insert("inlined".into(), inlined.into());
            }
        }
        v
    }

    /// The innermost source file and line, when known.
    pub fn file_line(&self) -> Option<(&str, Option<u32>)> {
        let inner = self.source.as_ref()?.innermost()?;
        Some((inner.file.as_deref()?, inner.line))
    }
}

impl Images {
    /// The images of the drivers GET_STATS reported.
    pub fn from_stats(drivers: &[DriverStats]) -> Images {
        let images = drivers
            .iter()
            .filter(|d| d.image_size != 0)
            .map(|d| ImageEntry {
                base: d.image_base,
                size: d.image_size,
                name: name(&d.name),
                identity: None,
            })
            .collect();
        Images {
            images,
            symbols: None,
        }
    }

    /// Adds the images' PDB identities (GET_IMAGE_DEBUG), each matched to the image by
    /// its base.
    pub fn with_debug(mut self, records: &[ImageDebugRecord]) -> Images {
        for e in &mut self.images {
            if let Some(r) = records.iter().find(|r| r.image_base == e.base) {
                e.identity = crate::symbols::ImageIdentity::from_record(r);
            }
        }
        self
    }

    /// Symbolizes frames through `symbols` (none: frames stay `module+offset`).
    pub fn with_symbols(
        mut self,
        symbols: Option<std::sync::Arc<crate::symbols::Symbolizer>>,
    ) -> Images {
        self.symbols = symbols;
        self
    }

    /// The symbolizer, if any.
    pub fn symbolizer(&self) -> Option<&crate::symbols::Symbolizer> {
        self.symbols.as_deref()
    }

    /// A shared handle on the symbolizer, if any.
    pub fn symbols(&self) -> Option<std::sync::Arc<crate::symbols::Symbolizer>> {
        self.symbols.clone()
    }

    /// Each image's name and PDB identity (when its CodeView record was read).
    pub fn identities(&self) -> Vec<(String, Option<crate::symbols::ImageIdentity>)> {
        self.images
            .iter()
            .map(|e| (e.name.clone(), e.identity.clone()))
            .collect()
    }

    /// The frame at `addr`.
    pub fn frame(&self, addr: u64) -> Frame {
        for e in &self.images {
            if addr >= e.base && addr - e.base < e.size {
                let offset = addr - e.base;
                let source = match (&self.symbols, &e.identity, u32::try_from(offset)) {
                    (Some(s), Some(id), Ok(rva)) => s.resolve_return_address(id, rva),
                    _ => None,
                };
                return Frame {
                    address: addr,
                    module: Some(e.name.clone()),
                    offset,
                    source,
                };
            }
        }
        Frame {
            address: addr,
            module: None,
            offset: 0,
            source: None,
        }
    }

    /// `module+0xoffset` (or `module!function+0xoff (file:line)` when symbolized) when
    /// `addr` lies in a known image, the raw address otherwise.
    pub fn symbol(&self, addr: u64) -> String {
        self.frame(addr).text()
    }

    /// The first `depth` frames of `stack`.
    pub fn frames(&self, stack: &[u64; MAX_STACK], depth: u8) -> Vec<Frame> {
        stack
            .iter()
            .take(usize::from(depth))
            .map(|a| self.frame(*a))
            .collect()
    }

    /// The first `depth` frames of `stack`, symbolized.
    pub fn stack(&self, stack: &[u64; MAX_STACK], depth: u8) -> Vec<String> {
        self.frames(stack, depth).iter().map(Frame::text).collect()
    }
}

/// A violation record with its meaning.
#[derive(Debug, Clone, Copy)]
pub struct Violation<'a> {
    /// The record.
    pub rec: &'a ViolationRecord,
}

impl<'a> Violation<'a> {
    /// Wraps a record.
    pub fn new(rec: &'a ViolationRecord) -> Violation<'a> {
        Violation { rec }
    }

    /// The rule, if the record's number names one.
    pub fn rule(&self) -> Option<RuleId> {
        RuleId::from_number(self.rec.rule)
    }

    /// The rule's metadata (a placeholder for unknown numbers).
    pub fn info(&self) -> Option<&'static RuleInfo> {
        self.rule().map(|r| r.info())
    }

    /// `IOSV001`, or `IOSV0nn` for a rule this build does not know.
    pub fn code(&self) -> String {
        self.info()
            .map(|i| i.code.to_string())
            .unwrap_or_else(|| format!("IOSV{:03}", self.rec.rule))
    }

    /// `unmap-size-mismatch`, or `unknown-rule`.
    pub fn rule_name(&self) -> &'static str {
        self.info().map(|i| i.name).unwrap_or("unknown-rule")
    }

    /// The rule's severity; unknown rules count as errors.
    pub fn severity(&self) -> Severity {
        self.info().map(|i| i.severity).unwrap_or(Severity::Error)
    }

    /// The action the endpoint took.
    pub fn action(&self) -> String {
        Action::from_u8(self.rec.action)
            .map(|a| a.name().to_string())
            .unwrap_or_else(|| format!("action {}", self.rec.action))
    }

    /// Whether the call was contained (not passed to Mm as made).
    pub fn contained(&self) -> bool {
        self.rec.flags & VF_CONTAINED != 0
    }

    /// Whether the call was MmMapIoSpaceEx.
    pub fn map_ex(&self) -> bool {
        self.rec.flags & VF_MAP_EX != 0
    }

    /// Whether the record's `cache` field means something: the rule judges a map call,
    /// or the record carries the tracked mapping (a graveyard tombstone has no cache).
    pub fn cache_known(&self) -> bool {
        self.rec.flags & VF_MAPPING_KNOWN != 0
            || (matches!(
                self.rule(),
                Some(RuleId::MapIrql | RuleId::MapBadParameters | RuleId::CacheConflict)
            ) && self.rec.kind == iosv::protocol::MK_IO_SPACE)
    }

    /// The cache field (kind, name, value), `None` when the record has none.
    pub fn cache(&self) -> Option<serde_json::Value> {
        self.cache_known()
            .then(|| mapping_cache_json(mapping_kind(self.rec.kind), self.rec.cache, self.map_ex()))
    }

    /// IOSV010: the conflicting live mapping's cache field; IOSV022: the pool tag the call
    /// passed (the range's own is [`cache`](Self::cache)).
    pub fn other_cache(&self) -> Option<serde_json::Value> {
        match self.rule() {
            Some(RuleId::CacheConflict) => Some(cache_json(
                self.rec.other_cache,
                self.rec.flags & VF_OTHER_MAP_EX != 0,
            )),
            Some(RuleId::ReservedTagMismatch) => Some(mapping_cache_json(
                iosv::mdl::MappingKind::Reserved,
                self.rec.other_cache,
                false,
            )),
            _ => None,
        }
    }

    /// IOSV010: the physical pages both mappings cover, `[first, end)`.
    pub fn shared_pages(&self) -> Option<(u64, u64)> {
        let r = self.rec;
        if self.rule() != Some(RuleId::CacheConflict) {
            return None;
        }
        shared_pages(r.physical, r.passed_size, r.other, r.mapped_size)
    }

    /// IOSV005: Mm handed the base to another driver since the caller unmapped it.
    pub fn reused(&self) -> bool {
        self.rec.flags & VF_REUSED != 0
    }

    /// The driver that made the call (`None` when unattributed).
    pub fn caller(&self) -> Option<String> {
        (self.rec.driver_id != 0).then(|| name(&self.rec.driver_name))
    }

    /// The driver that owns the mapping involved, if known.
    pub fn owner(&self) -> Option<String> {
        (self.rec.owner_id != 0).then(|| name(&self.rec.owner_name))
    }

    /// Whether the rule is a leak (IOSV007–IOSV009), found at an event rather than a call.
    pub fn is_leak(&self) -> bool {
        matches!(
            self.rule(),
            Some(RuleId::LeakOnStop | RuleId::LeakOnRemove | RuleId::LeakOnUnload)
        )
    }

    /// The driver the violation is blamed on (iosv's one blame rule,
    /// [`iosv::rules::RuleId::blamed`]): the owner of a leaked mapping, otherwise the
    /// caller. `None` if that driver is unattributed.
    pub fn driver(&self) -> Option<String> {
        (self.rec.blamed_driver() != 0).then(|| text(self.rec.blamed_driver_name()))
    }

    /// The blamed driver, or `(unattributed)`.
    pub fn driver_label(&self) -> String {
        self.driver()
            .unwrap_or_else(|| "(unattributed)".to_string())
    }

    /// The routine whose call the record judges; `None` for an event (a leak found at
    /// stop, removal, unload or detach) and for a routine code this `iosvctl` does not
    /// know.
    pub fn routine(&self) -> Option<HookedRoutine> {
        routine_of_code(self.rec.routine)
    }

    fn map_fn(&self) -> &'static str {
        if self.map_ex() {
            "MmMapIoSpaceEx"
        } else {
            "MmMapIoSpace"
        }
    }

    /// One sentence naming both sides of the conflict: what the call passed and what the
    /// tracked mapping holds.
    pub fn message(&self) -> String {
        let r = self.rec;
        let caller = self
            .caller()
            .unwrap_or_else(|| "an unattributed caller".to_string());
        let owner = self
            .owner()
            .unwrap_or_else(|| "an unknown driver".to_string());
        let known = r.flags & VF_MAPPING_KNOWN != 0;
        let unmap = match self.routine() {
            Some(HookedRoutine::UnmapLockedPages) => format!(
                "{caller} called MmUnmapLockedPages({}, MDL {})",
                hex(r.address),
                hex(r.passed_mdl)
            ),
            Some(HookedRoutine::UnmapReservedMapping) => format!(
                "{caller} called MmUnmapReservedMapping({}, MDL {})",
                hex(r.address),
                hex(r.passed_mdl)
            ),
            Some(HookedRoutine::FreeMappingAddress) => {
                format!("{caller} called MmFreeMappingAddress({})", hex(r.address))
            }
            _ => format!(
                "{caller} called MmUnmapIoSpace({}, 0x{:x})",
                hex(r.address),
                r.passed_size
            ),
        };
        let kind =
            iosv::mdl::MappingKind::from_u8(r.kind).unwrap_or(iosv::mdl::MappingKind::IoSpace);
        let sub_range = r.flags & iosv::protocol::VF_SUB_RANGE != 0;
        let mapping = if kind != iosv::mdl::MappingKind::IoSpace {
            format!(
                "the {} at {} (0x{:x} bytes, MDL {}) made by {owner}",
                match kind {
                    iosv::mdl::MappingKind::Reserved if sub_range => {
                        "sub-range mapping of a divisible reserved range"
                    }
                    iosv::mdl::MappingKind::Reserved => "reserved range",
                    _ => "MDL mapping",
                },
                hex(r.base),
                r.mapped_size,
                hex(r.mdl)
            )
        } else {
            format!(
                "the mapping at {} ({} 0x{:x} bytes, physical {}{}) made by {owner}",
                hex(r.base),
                if known { "size" } else { "last known size" },
                r.mapped_size,
                hex(r.physical),
                if self.cache_known() {
                    format!(", {}", cache(r.cache, self.map_ex()))
                } else {
                    String::new()
                },
            )
        };
        let contained = if self.contained() {
            match self.rule() {
                Some(RuleId::UnmapSizeMismatch) => {
                    "; contained: unmapped with the tracked size".to_string()
                }
                Some(RuleId::UnmapPageBase) => {
                    "; contained: unmapped with the tracked base and size".to_string()
                }
                Some(RuleId::UnmapForeign) => format!(
                    "; contained: the call was not passed to MmUnmapIoSpace, {owner}'s mapping stays mapped"
                ),
                Some(RuleId::DoubleUnmap) if self.reused() => format!(
                    "; contained: the call was not passed to MmUnmapIoSpace, {owner}'s mapping stays mapped"
                ),
                Some(RuleId::MdlUnmapWrongMdl) => {
                    "; contained: unmapped with the tracked MDL".to_string()
                }
                Some(RuleId::MdlReleasedWhileMapped | RuleId::ReservedFreedWhileMapped) => {
                    "; contained: iosv unmapped it first".to_string()
                }
                Some(RuleId::ReservedMappedTwice | RuleId::ReservedSize) => {
                    "; contained: not passed to Mm, NULL returned".to_string()
                }
                Some(RuleId::ReservedMapNotReserved) => format!(
                    "; contained: not passed to Mm, NULL returned; {owner}'s mapping stays tracked"
                ),
                Some(RuleId::UnmapOtherProcess) => {
                    "; contained: not passed to MmUnmapLockedPages, the mapping stays tracked".to_string()
                }
                Some(RuleId::ReservedTagMismatch)
                    if self.routine() == Some(HookedRoutine::MapLockedPagesWithReservedMapping) =>
                {
                    "; contained: not passed to Mm, NULL returned".to_string()
                }
                Some(RuleId::ReservedTagMismatch) => {
                    "; contained: the wrong tag did not reach Mm".to_string()
                }
                _ if kind != iosv::mdl::MappingKind::IoSpace => {
                    "; contained: the call was not passed to Mm".to_string()
                }
                _ => "; contained: the call was not passed to MmUnmapIoSpace".to_string(),
            }
        } else {
            String::new()
        };
        let text = match self.rule() {
            Some(RuleId::UnmapSizeMismatch) => format!(
                "{unmap}, but the mapping at that base was made with NumberOfBytes 0x{:x} (physical {}, by {owner})",
                r.mapped_size,
                hex(r.physical)
            ),
            Some(RuleId::UnmapIrql) => format!(
                "{unmap} at {}, above the unmap IRQL ceiling (DISPATCH_LEVEL; APC_LEVEL in Driver Verifier mode)",
                irql(r.irql)
            ),
            Some(RuleId::MapIrql) if kind == iosv::mdl::MappingKind::Mdl => format!(
                "{caller} called MmMapLockedPages[SpecifyCache](MDL {}) at {}, above the ceiling of its mode (DISPATCH_LEVEL for KernelMode, APC_LEVEL for UserMode){}",
                hex(r.passed_mdl),
                irql(r.irql),
                if r.address != 0 { format!("; mapped at {}", hex(r.address)) } else { String::new() }
            ),
            Some(RuleId::MapIrql) if kind == iosv::mdl::MappingKind::Reserved && r.passed_mdl != 0 => format!(
                "{caller} called MmMapLockedPagesWithReservedMapping({}, MDL {}) at {}, above DISPATCH_LEVEL",
                hex(r.address),
                hex(r.passed_mdl),
                irql(r.irql)
            ),
            Some(RuleId::MapIrql) if kind == iosv::mdl::MappingKind::Reserved => format!(
                "{caller} called MmAllocateMappingAddress(0x{:x}) at {}, above APC_LEVEL{}",
                r.passed_size,
                irql(r.irql),
                if r.address != 0 { format!("; reserved {}", hex(r.address)) } else { String::new() }
            ),
            Some(RuleId::MapIrql) => format!(
                "{caller} called {}(physical {}, 0x{:x}, {}) at {}, above DISPATCH_LEVEL",
                self.map_fn(),
                hex(r.physical),
                r.passed_size,
                cache(r.cache, self.map_ex()),
                irql(r.irql)
            ),
            Some(RuleId::UnmapUnknown) if known => format!(
                "{unmap}, but {mapping} is not released by that routine ({} releases it)",
                match kind {
                    iosv::mdl::MappingKind::IoSpace => "MmUnmapIoSpace",
                    iosv::mdl::MappingKind::Mdl => "MmUnmapLockedPages",
                    iosv::mdl::MappingKind::Reserved if sub_range => "MmUnmapReservedMapping",
                    iosv::mdl::MappingKind::Reserved =>
                        "MmFreeMappingAddress, after MmUnmapReservedMapping of its MDL",
                }
            ),
            Some(RuleId::UnmapUnknown) => format!("{unmap}, but no tracked mapping has that base"),
            Some(RuleId::DoubleUnmap) if self.reused() => {
                let when = if r.other != 0 && r.timestamp_ns >= r.other {
                    format!(" {} ago", age(r.timestamp_ns - r.other))
                } else {
                    String::new()
                };
                let site = if r.prior_map_site != 0 {
                    format!(", mapped at {}", hex(r.prior_map_site))
                } else {
                    String::new()
                };
                format!(
                    "{unmap} through a stale pointer: it mapped that address itself (0x{:x} bytes, physical {}{site}) and unmapped it{when}, and Mm has since reused it for {mapping}; the call would have torn down {owner}'s live mapping",
                    r.prior_size,
                    hex(r.prior_physical),
                )
            }
            Some(RuleId::DoubleUnmap) if r.base != 0 => {
                let when = if r.other != 0 && r.timestamp_ns >= r.other {
                    format!(" {} earlier", age(r.timestamp_ns - r.other))
                } else {
                    String::new()
                };
                format!("{unmap}, but that base was already unmapped{when}; {mapping}")
            }
            Some(RuleId::DoubleUnmap) => format!("{unmap} while another unmap of that base was in progress"),
            Some(RuleId::UnmapInterior)
                if r.address < r.base || r.address - r.base >= r.mapped_size =>
            {
                format!(
                    "{unmap}, outside the bytes of the live mapping at {} (0x{:x} bytes, physical {}, made by {owner}) but in one of its pages, which MmUnmapIoSpace would unmap from (it rounds the address down to its page); pass the base",
                    hex(r.base),
                    r.mapped_size,
                    hex(r.physical)
                )
            }
            Some(RuleId::UnmapInterior) => format!(
                "{unmap}, 0x{:x} bytes inside the live mapping at {} (0x{:x} bytes, physical {}, made by {owner}); pass the base",
                r.address.wrapping_sub(r.base),
                hex(r.base),
                r.mapped_size,
                hex(r.physical)
            ),
            Some(RuleId::LeakOnStop) => format!(
                "{mapping} while starting device {} is still live after IRP_MN_STOP_DEVICE",
                device(r.device)
            ),
            Some(RuleId::LeakOnRemove) => format!(
                "{mapping} while starting device {} is still live at surprise removal / IRP_MN_REMOVE_DEVICE",
                device(r.device)
            ),
            Some(RuleId::LeakOnUnload) => format!(
                "{mapping} is still live when {owner} {}",
                if r.flags & VF_DETACH != 0 { "is detached" } else { "unloads" }
            ),
            Some(RuleId::CacheConflict) => format!(
                "{caller} mapped physical {}+0x{:x} as {} (at {}) while the live mapping at {} (physical {}+0x{:x}, made by {owner}) covers it as {}",
                hex(r.physical),
                r.passed_size,
                cache(r.cache, self.map_ex()),
                hex(r.address),
                hex(r.base),
                hex(r.other),
                r.mapped_size,
                cache(r.other_cache, r.flags & VF_OTHER_MAP_EX != 0)
            ) + &match self.shared_pages() {
                Some((first, end)) => format!(
                    "; they share physical page{} {}..{} (the cache attribute belongs to the page)",
                    if end.wrapping_sub(first) > 0x1000 { "s" } else { "" },
                    hex(first),
                    hex(end)
                ),
                None => String::new(),
            },
            Some(RuleId::MapBadParameters) => {
                let why = match check_parameters(r.physical, r.passed_size, r.cache, self.map_ex()) {
                    Some(BadParameter::ZeroLength) => "NumberOfBytes is zero",
                    Some(BadParameter::RangeWraps) => "the physical range wraps past 2^64",
                    Some(BadParameter::CacheType) => "the cache type is not below MmMaximumCacheType",
                    Some(BadParameter::Protection) => "the protection is not one PAGE_* value with at most one of PAGE_NOCACHE/PAGE_WRITECOMBINE",
                    None => "the parameters are out of range",
                };
                format!(
                    "{caller} called {}(physical {}, 0x{:x}, {}): {why}",
                    self.map_fn(),
                    hex(r.physical),
                    r.passed_size,
                    cache(r.cache, self.map_ex())
                )
            }
            Some(RuleId::UnmapForeign) => format!(
                "{unmap}, but {mapping}; each driver unmaps what it mapped"
            ),
            Some(RuleId::StaleEntry) => format!(
                "Mm returned base {} to {caller} for 0x{:x} bytes, but the table still held {}: its unmap was missed",
                hex(r.address),
                r.passed_size,
                mapping
            ),
            Some(RuleId::UnmapPageBase) => {
                let ask = span_pages(r.address, r.passed_size).unwrap_or(0);
                let spans = span_pages(r.base, r.mapped_size).unwrap_or(0);
                let effect = match ask.cmp(&spans) {
                    core::cmp::Ordering::Less => format!(
                        ", leaving {} of its pages mapped (a leaked system PTE range)",
                        spans - ask
                    ),
                    core::cmp::Ordering::Greater => format!(
                        ", {} more than it maps (PTEs of whatever follows)",
                        ask - spans
                    ),
                    core::cmp::Ordering::Equal => {
                        ", which happens to cover it: the call works only by Mm's rounding".to_string()
                    }
                };
                format!(
                    "{unmap}, the page-aligned address of {mapping}, whose base carries the physical page offset 0x{:x}; MmUnmapIoSpace rounds down and would unmap {ask} page{} from {} where the mapping spans {spans}{effect}; pass the base {}",
                    byte_offset(r.base),
                    if ask == 1 { "" } else { "s" },
                    hex(r.address),
                    hex(r.base)
                )
            }
            Some(RuleId::MdlUnmapWrongMdl) => format!(
                "{caller} unmapped {} with MDL {}, but {mapping}",
                hex(r.address),
                hex(r.passed_mdl)
            ),
            Some(RuleId::MdlUnmapIrql)
                if kind == iosv::mdl::MappingKind::Reserved && r.passed_mdl == 0 =>
            {
                format!(
                    "{caller} called MmFreeMappingAddress({}) at {}, above APC_LEVEL{}",
                    hex(r.address),
                    irql(r.irql),
                    if known { format!(": {mapping}") } else { String::new() }
                )
            }
            Some(RuleId::MdlUnmapIrql) => format!(
                "{caller} unmapped {} at {}: {mapping}; the ceiling is DISPATCH_LEVEL for system space, APC_LEVEL for user space",
                hex(r.address),
                irql(r.irql)
            ),
            Some(RuleId::MdlReleasedWhileMapped) => format!(
                "{caller} freed, unlocked or reused MDL {} while {mapping} was live and not released by that call",
                hex(r.passed_mdl)
            ),
            Some(RuleId::ReservedFreedWhileMapped) => format!(
                "{caller} called MmFreeMappingAddress({}) while MDL {} is still mapped into {mapping}",
                hex(r.address),
                hex(r.mdl)
            ),
            Some(RuleId::ReservedMappedTwice) => format!(
                "{caller} mapped MDL {} into {mapping}, which MDL {} already maps",
                hex(r.passed_mdl),
                hex(r.mdl)
            ),
            Some(RuleId::ReservedSize) => format!(
                "{caller} mapped MDL {} spanning 0x{:x} bytes of pages into {mapping}, which reserves 0x{:x}",
                hex(r.passed_mdl),
                r.passed_size,
                r.mapped_size
            ),
            Some(RuleId::UnmapOtherProcess) => format!(
                "{caller} unmapped the user-space {} from process {}, not the process it was mapped into; {mapping}",
                hex(r.address),
                r.process_id
            ),
            Some(RuleId::ReservedTagMismatch) => format!(
                "{caller} called {}({}) with pool tag {}, but {mapping} was reserved with {}",
                self.routine().map_or("a reserved-range routine", HookedRoutine::name),
                hex(r.address),
                pool_tag(r.other_cache),
                pool_tag(r.cache)
            ),
            Some(RuleId::ReservedMapNotReserved) => format!(
                "{caller} called MmMapLockedPagesWithReservedMapping({}, MDL {}), but that page is {mapping}, not a range MmAllocateMappingAddress reserved",
                hex(r.address),
                hex(r.passed_mdl)
            ),
            None => format!("rule {} fired at {} (unknown to this iosvctl)", r.rule, hex(r.address)),
        };
        format!("{text}{contained}")
    }
}

/// The kind of a mapping record (`MK_*`; an unknown value reads as I/O space).
pub fn mapping_kind(kind: u8) -> iosv::mdl::MappingKind {
    iosv::mdl::MappingKind::from_u8(kind).unwrap_or(iosv::mdl::MappingKind::IoSpace)
}

/// A pool tag as its four characters (`'Rsvd'`), non-printable bytes as `.`.
pub fn pool_tag(tag: u32) -> String {
    let chars: String = tag
        .to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    format!("'{chars}'")
}

/// Human name of a `DRIVER_*` state.
pub fn driver_state(state: u32) -> &'static str {
    match state {
        DRIVER_ATTACHED => "attached",
        DRIVER_LOADED => "loaded",
        DRIVER_GONE => "gone",
        _ => "?",
    }
}

/// Why iosv refused to hook a driver (`DriverStats::hook_refusal`), or `None`.
pub fn hook_refusal(code: u32) -> Option<&'static str> {
    if code == 0 {
        return None;
    }
    Some(
        iosv::intercept::SiteRefusal::from_code(code)
            .map_or("refused (unknown reason)", |r| r.describe()),
    )
}

/// The `STATE_*` bits set in a status reply: (short name, meaning).
pub fn state_flags(bits: u32) -> Vec<(&'static str, &'static str)> {
    iosv::protocol::STATE_FLAGS
        .into_iter()
        .filter(|(bit, _, _)| bits & bit != 0)
        .map(|(_, name, meaning)| (name, meaning))
        .collect()
}

/// Names of the `CAP_*` bits set.
pub fn capabilities(caps: u32) -> Vec<&'static str> {
    [
        (CAP_MAP_EX, "map-ex"),
        (CAP_CONTAINMENT, "containment"),
        (CAP_STACKS, "stacks"),
        (CAP_ATTACH, "attach"),
        (CAP_HOST, "host"),
    ]
    .into_iter()
    .filter(|(bit, _)| caps & bit != 0)
    .map(|(_, n)| n)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(irql(2), "DISPATCH_LEVEL");
        assert_eq!(irql(5), "DIRQL 5");
        assert_eq!(cache(0, false), "MmNonCached");
        assert_eq!(cache(9, false), "cache type 9");
        assert_eq!(cache(0x204, true), "PAGE_READWRITE|PAGE_NOCACHE");
        assert_eq!(cache(0x1000, true), "0x1000");
        assert_eq!(age(350_000_000), "350ms");
        assert_eq!(age(12_345_000_000), "12.3s");
        assert_eq!(age(307_000_000_000), "5m07s");
        assert_eq!(name(&wire_name(b"nic\x01.sys")), "nic\\x01.sys");
    }

    #[test]
    fn cache_fields_name_their_kind() {
        // 4 is MmNonCachedUnordered and PAGE_READWRITE: the kind tells them apart.
        let t = cache_json(4, false);
        let p = cache_json(4, true);
        assert_eq!(
            (t["kind"].as_str(), t["name"].as_str()),
            (Some("MEMORY_CACHING_TYPE"), Some("MmNonCachedUnordered"))
        );
        assert_eq!(
            (p["kind"].as_str(), p["name"].as_str()),
            (Some("PAGE_PROTECTION"), Some("PAGE_READWRITE"))
        );
        let mut r = ViolationRecord {
            rule: RuleId::CacheConflict.number(),
            flags: VF_OTHER_MAP_EX,
            cache: 1,
            other_cache: 0x204,
            physical: 0x5800,
            passed_size: 0x800,
            other: 0x5000,
            mapped_size: 0x800,
            ..Default::default()
        };
        let v = Violation::new(&r);
        assert_eq!(v.cache().unwrap()["name"], "MmCached");
        assert_eq!(v.other_cache().unwrap()["kind"], "PAGE_PROTECTION");
        assert_eq!(
            v.other_cache().unwrap()["name"],
            "PAGE_READWRITE|PAGE_NOCACHE"
        );
        assert_eq!(v.shared_pages(), Some((0x5000, 0x6000)));
        assert!(
            v.message().contains("share physical page 0x5000..0x6000"),
            "{}",
            v.message()
        );
        // An unmap of an unknown address names no cache at all.
        r = ViolationRecord {
            rule: RuleId::UnmapUnknown.number(),
            ..Default::default()
        };
        let v = Violation::new(&r);
        assert!(v.cache().is_none() && v.other_cache().is_none());
        // A reserved range keeps its pool tag in the cache field.
        r = ViolationRecord {
            rule: RuleId::ReservedFreedWhileMapped.number(),
            flags: VF_MAPPING_KNOWN,
            kind: iosv::protocol::MK_RESERVED,
            cache: u32::from_le_bytes(*b"Rsvd"),
            ..Default::default()
        };
        let c = Violation::new(&r).cache().unwrap();
        assert_eq!(
            (c["kind"].as_str(), c["name"].as_str()),
            (Some("POOL_TAG"), Some("'Rsvd'"))
        );
    }

    #[test]
    fn an_interior_unmap_outside_the_bytes_says_so() {
        let r = |address: u64| ViolationRecord {
            rule: RuleId::UnmapInterior.number(),
            routine: routine_code(HookedRoutine::UnmapIoSpace),
            flags: VF_MAPPING_KNOWN,
            address,
            base: 0xF800,
            mapped_size: 0x100,
            passed_size: 0x1000,
            ..Default::default()
        };
        let inside = Violation::new(&r(0xF880)).message();
        assert!(
            inside.contains("0x80 bytes inside the live mapping at 0xf800"),
            "{inside}"
        );
        for outside in [0xF400, 0xFA00] {
            let m = Violation::new(&r(outside)).message();
            assert!(
                m.contains("outside the bytes of the live mapping at 0xf800")
                    && m.contains("rounds the address down to its page"),
                "{m}"
            );
        }
    }

    #[test]
    fn unmaps_of_the_family_name_their_routine_and_the_right_one() {
        use iosv::protocol::{MK_IO_SPACE, MK_MDL, MK_RESERVED};
        let rec = |rule: RuleId, routine: HookedRoutine, kind: u8, known: bool| ViolationRecord {
            rule: rule.number(),
            routine: routine_code(routine),
            kind,
            flags: if known { VF_MAPPING_KNOWN } else { 0 },
            driver_id: 1,
            driver_name: wire_name(b"a.sys"),
            owner_id: 1,
            owner_name: wire_name(b"a.sys"),
            address: 0xF000,
            base: 0xF000,
            mapped_size: 0x1000,
            passed_size: 0x1000,
            passed_mdl: if routine == HookedRoutine::FreeMappingAddress {
                0
            } else {
                0xA000
            },
            mdl: if kind == MK_IO_SPACE { 0 } else { 0xA000 },
            ..Default::default()
        };
        let message = |r: ViolationRecord| Violation::new(&r).message();
        // MmUnmapIoSpace of an MDL mapping, MmUnmapLockedPages of an I/O-space one.
        assert_eq!(
            message(rec(RuleId::UnmapUnknown, HookedRoutine::UnmapIoSpace, MK_MDL, true)),
            "a.sys called MmUnmapIoSpace(0xf000, 0x1000), but the MDL mapping at 0xf000 (0x1000 bytes, MDL 0xa000) made by a.sys is not released by that routine (MmUnmapLockedPages releases it)"
        );
        assert!(message(rec(
            RuleId::UnmapUnknown,
            HookedRoutine::UnmapLockedPages,
            MK_IO_SPACE,
            true
        ))
        .starts_with(
            "a.sys called MmUnmapLockedPages(0xf000, MDL 0xa000), but the mapping at 0xf000"
        ));
        // Double unmaps name the routine called twice.
        assert!(message(rec(
            RuleId::DoubleUnmap,
            HookedRoutine::FreeMappingAddress,
            MK_RESERVED,
            false
        ))
        .starts_with(
            "a.sys called MmFreeMappingAddress(0xf000), but that base was already unmapped"
        ));
        assert!(message(rec(
            RuleId::UnmapUnknown,
            HookedRoutine::UnmapReservedMapping,
            MK_RESERVED,
            false
        ))
        .starts_with(
            "a.sys called MmUnmapReservedMapping(0xf000, MDL 0xa000), but no tracked mapping has that base"
        ));
        // A record that names no routine (an event's): the I/O-space form.
        let mut old = rec(
            RuleId::UnmapUnknown,
            HookedRoutine::UnmapIoSpace,
            MK_IO_SPACE,
            false,
        );
        old.routine = 0;
        assert!(message(old).starts_with("a.sys called MmUnmapIoSpace(0xf000, 0x1000)"));
    }

    /// A known, contained record of a family mapping at 0xf000 (MDL 0xa000) made by
    /// a.sys, judging a call of `routine` by a.sys.
    fn family_rec(rule: RuleId, kind: u8, routine: HookedRoutine) -> ViolationRecord {
        ViolationRecord {
            rule: rule.number(),
            flags: VF_MAPPING_KNOWN | VF_CONTAINED,
            kind,
            driver_id: 1,
            driver_name: wire_name(b"a.sys"),
            owner_id: 1,
            owner_name: wire_name(b"a.sys"),
            address: 0xF000,
            base: 0xF000,
            mapped_size: 0x2000,
            mdl: 0xA000,
            routine: routine_code(routine),
            ..Default::default()
        }
    }

    #[test]
    fn a_tag_mismatch_names_the_routine_and_both_tags() {
        let mut r = ViolationRecord {
            cache: u32::from_le_bytes(*b"Rsvd"),
            other_cache: u32::from_le_bytes(*b"Rsv2"),
            ..family_rec(
                RuleId::ReservedTagMismatch,
                iosv::protocol::MK_RESERVED,
                HookedRoutine::UnmapReservedMapping,
            )
        };
        let v = Violation::new(&r);
        assert_eq!(v.routine(), Some(HookedRoutine::UnmapReservedMapping));
        assert_eq!(
            v.message(),
            "a.sys called MmUnmapReservedMapping(0xf000) with pool tag 'Rsv2', but the reserved range at 0xf000 (0x2000 bytes, MDL 0xa000) made by a.sys was reserved with 'Rsvd'; contained: the wrong tag did not reach Mm"
        );
        let tag = v.other_cache().unwrap();
        assert_eq!(
            (tag["kind"].as_str(), tag["name"].as_str()),
            (Some("POOL_TAG"), Some("'Rsv2'"))
        );
        r.routine = routine_code(HookedRoutine::MapLockedPagesWithReservedMapping);
        assert!(Violation::new(&r)
            .message()
            .ends_with("; contained: not passed to Mm, NULL returned"));
        // A routine code this iosvctl does not know is not guessed at.
        r.routine = 99;
        assert!(Violation::new(&r)
            .message()
            .starts_with("a.sys called a reserved-range routine(0xf000)"));
    }

    #[test]
    fn a_reserved_map_at_another_mapping_names_that_mapping() {
        let r = ViolationRecord {
            owner_id: 2,
            owner_name: wire_name(b"b.sys"),
            mapped_size: 0x1000,
            passed_mdl: 0xB000,
            ..family_rec(
                RuleId::ReservedMapNotReserved,
                iosv::protocol::MK_MDL,
                HookedRoutine::MapLockedPagesWithReservedMapping,
            )
        };
        assert_eq!(
            Violation::new(&r).message(),
            "a.sys called MmMapLockedPagesWithReservedMapping(0xf000, MDL 0xb000), but that page is the MDL mapping at 0xf000 (0x1000 bytes, MDL 0xa000) made by b.sys, not a range MmAllocateMappingAddress reserved; contained: not passed to Mm, NULL returned; b.sys's mapping stays tracked"
        );
    }

    #[test]
    fn a_sub_range_mapping_is_named_as_such() {
        let mut r = family_rec(
            RuleId::UnmapUnknown,
            iosv::protocol::MK_RESERVED,
            HookedRoutine::FreeMappingAddress,
        );
        r.flags |= iosv::protocol::VF_SUB_RANGE;
        assert_eq!(
            Violation::new(&r).message(),
            "a.sys called MmFreeMappingAddress(0xf000), but the sub-range mapping of a divisible reserved range at 0xf000 (0x2000 bytes, MDL 0xa000) made by a.sys is not released by that routine (MmUnmapReservedMapping releases it); contained: the call was not passed to Mm"
        );
        r.flags &= !iosv::protocol::VF_SUB_RANGE;
        assert!(Violation::new(&r)
            .message()
            .contains("the reserved range at 0xf000"));
    }

    #[test]
    fn family_irql_messages_name_the_routine_and_its_ceiling() {
        use iosv::protocol::{MK_MDL, MK_RESERVED};
        let rec = |rule: RuleId, kind: u8, address: u64, passed_mdl: u64, passed_size: u64| {
            ViolationRecord {
                rule: rule.number(),
                kind,
                irql: 5,
                driver_id: 1,
                driver_name: wire_name(b"a.sys"),
                address,
                passed_mdl,
                passed_size,
                cache: 7,
                ..Default::default()
            }
        };
        let m = rec(RuleId::MapIrql, MK_MDL, 0xF000, 0xA000, 0);
        let v = Violation::new(&m);
        assert_eq!(
            v.message(),
            "a.sys called MmMapLockedPages[SpecifyCache](MDL 0xa000) at DIRQL 5, above the ceiling of its mode (DISPATCH_LEVEL for KernelMode, APC_LEVEL for UserMode); mapped at 0xf000"
        );
        // A family record's cache field is not an I/O-space cache type: none shown.
        assert!(v.cache().is_none());
        let m = rec(RuleId::MapIrql, MK_RESERVED, 0xF000, 0xA000, 0);
        assert_eq!(
            Violation::new(&m).message(),
            "a.sys called MmMapLockedPagesWithReservedMapping(0xf000, MDL 0xa000) at DIRQL 5, above DISPATCH_LEVEL"
        );
        let m = rec(RuleId::MapIrql, MK_RESERVED, 0xF000, 0, 0x4000);
        assert_eq!(
            Violation::new(&m).message(),
            "a.sys called MmAllocateMappingAddress(0x4000) at DIRQL 5, above APC_LEVEL; reserved 0xf000"
        );
        let m = rec(RuleId::MdlUnmapIrql, MK_RESERVED, 0xF000, 0, 0);
        assert_eq!(
            Violation::new(&m).message(),
            "a.sys called MmFreeMappingAddress(0xf000) at DIRQL 5, above APC_LEVEL"
        );
    }

    #[test]
    fn stale_pointer_and_page_base_messages_say_what_mm_would_do() {
        let r = ViolationRecord {
            rule: RuleId::DoubleUnmap.number(),
            flags: VF_MAPPING_KNOWN | VF_REUSED | VF_CONTAINED,
            driver_id: 1,
            driver_name: wire_name(b"a.sys"),
            owner_id: 2,
            owner_name: wire_name(b"b.sys"),
            address: 0x7000,
            base: 0x7000,
            passed_size: 0x2000,
            mapped_size: 0x3000,
            prior_size: 0x2000,
            prior_physical: 0xF000_0000,
            prior_map_site: 0x1234,
            ..Default::default()
        };
        let m = Violation::new(&r).message();
        for part in [
            "a.sys",
            "b.sys",
            "stale pointer",
            "0x1234",
            "0xf0000000",
            "b.sys's mapping stays mapped",
        ] {
            assert!(m.contains(part), "{part}: {m}");
        }
        let r = ViolationRecord {
            rule: RuleId::UnmapPageBase.number(),
            flags: VF_MAPPING_KNOWN | VF_CONTAINED,
            driver_id: 1,
            driver_name: wire_name(b"a.sys"),
            owner_id: 1,
            owner_name: wire_name(b"a.sys"),
            address: 0x7000,
            base: 0x7800,
            passed_size: 0x1000,
            mapped_size: 0x1000,
            ..Default::default()
        };
        let m = Violation::new(&r).message();
        for part in [
            "would unmap 1 page from 0x7000",
            "spans 2",
            "leaving 1",
            "pass the base 0x7800",
            "tracked base and size",
        ] {
            assert!(m.contains(part), "{part}: {m}");
        }
    }

    #[test]
    fn frames_are_symbolized_inside_known_images_only() {
        let d = DriverStats {
            name: wire_name(b"nic.sys"),
            image_base: 0x1000,
            image_size: 0x100,
            ..Default::default()
        };
        let im = Images::from_stats(&[d]);
        assert_eq!(im.symbol(0x10a0), "nic.sys+0xa0");
        assert_eq!(im.symbol(0x1100), "0x1100");
        assert_eq!(im.symbol(0xfff), "0xfff");
    }

    #[test]
    fn leaks_are_blamed_on_the_owner_and_unmaps_on_the_caller() {
        let mut r = ViolationRecord {
            rule: RuleId::LeakOnUnload.number(),
            owner_id: 2,
            owner_name: wire_name(b"gpu.sys"),
            ..Default::default()
        };
        assert_eq!(Violation::new(&r).driver().as_deref(), Some("gpu.sys"));
        r.rule = RuleId::UnmapForeign.number();
        r.driver_id = 1;
        r.driver_name = wire_name(b"nic.sys");
        let v = Violation::new(&r);
        assert_eq!(v.driver().as_deref(), Some("nic.sys"));
        assert!(
            v.message().contains("nic.sys") && v.message().contains("gpu.sys"),
            "{}",
            v.message()
        );
        // An unattributed caller is not blamed on the owner whose mapping it hit.
        r.driver_id = 0;
        r.driver_name = [0; NAME_LEN];
        assert_eq!(Violation::new(&r).driver(), None);
        assert_eq!(Violation::new(&r).driver_label(), "(unattributed)");
    }

    #[test]
    fn every_rule_has_a_message_naming_both_sizes_where_it_has_them() {
        for rule in RuleId::ALL {
            let r = ViolationRecord {
                rule: rule.number(),
                flags: VF_MAPPING_KNOWN,
                driver_id: 1,
                driver_name: wire_name(b"a.sys"),
                owner_id: 1,
                owner_name: wire_name(b"a.sys"),
                passed_size: 0x800,
                mapped_size: 0x1000,
                base: 0x5000,
                address: 0x5000,
                ..Default::default()
            };
            let m = Violation::new(&r).message();
            assert!(m.contains("a.sys"), "{rule:?}: {m}");
        }
    }
}
