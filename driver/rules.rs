//! The rules iosv checks, as data: id, name, severity, what fires them, where the
//! requirement is documented. The engine, the client's SARIF/JUnit output and the docs all
//! read this one table.

#![forbid(unsafe_code)]

/// A rule's stable identity (`IOSV001`..`IOSV023`); the discriminant is the rule number.
/// IOSV001–IOSV014 check the I/O-space routines; IOSV015–IOSV023 the MDL and reserved
/// mapping family (see [`crate::mdl`]). The leak rules IOSV007–IOSV009 cover every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum RuleId {
    /// IOSV001: `NumberOfBytes` differs from the size given at map time.
    UnmapSizeMismatch = 1,
    /// IOSV002: unmap above the selected IRQL ceiling.
    UnmapIrql = 2,
    /// IOSV003: a map above its routine's ceiling: `MmMapIoSpace[Ex]`,
    /// `MmMapLockedPagesWithReservedMapping` and a system-space `MmMapLockedPages[SpecifyCache]`
    /// above DISPATCH_LEVEL; a user-space one or `MmAllocateMappingAddress[Ex]` above
    /// APC_LEVEL.
    MapIrql = 3,
    /// IOSV004: the base address was never mapped by a tracked driver.
    UnmapUnknown = 4,
    /// IOSV005: the base address was mapped and already unmapped — by the caller's own
    /// earlier mapping too when Mm has since handed the address to another driver (a stale
    /// pointer after address reuse).
    DoubleUnmap = 5,
    /// IOSV006: the address lies inside a live mapping but is not its base.
    UnmapInterior = 6,
    /// IOSV007: a mapping made during start is live when STOP_DEVICE completes.
    LeakOnStop = 7,
    /// IOSV008: a mapping made during start is live at SURPRISE_REMOVAL / REMOVE_DEVICE.
    LeakOnRemove = 8,
    /// IOSV009: a driver's mappings are live when it unloads or is detached.
    LeakOnUnload = 9,
    /// IOSV010: a range is mapped while an overlapping live mapping has another cache type.
    CacheConflict = 10,
    /// IOSV011: zero length, cache type or page protection out of range.
    MapBadParameters = 11,
    /// IOSV012: a driver unmaps another driver's mapping.
    UnmapForeign = 12,
    /// IOSV013: Mm returned a base the table still holds (an unmap was missed).
    StaleEntry = 13,
    /// IOSV014: unmap at the page-aligned address of a mapping whose base is not
    /// page-aligned (the base MmMapIoSpace returned carries the physical page offset).
    UnmapPageBase = 14,
    /// IOSV015: `MmUnmapLockedPages` / `MmUnmapReservedMapping` with an MDL other than the
    /// one the mapping was made with.
    MdlUnmapWrongMdl = 15,
    /// IOSV016: `MmUnmapLockedPages` above the ceiling of the mapping's mode
    /// (DISPATCH_LEVEL for system space, APC_LEVEL for user space),
    /// `MmUnmapReservedMapping` above DISPATCH_LEVEL, or `MmFreeMappingAddress` above
    /// APC_LEVEL.
    MdlUnmapIrql = 16,
    /// IOSV017: `IoFreeMdl` or `MmUnlockPages` of an MDL whose
    /// explicit mapping is live and is not released by that call.
    MdlReleasedWhileMapped = 17,
    /// IOSV018: `MmFreeMappingAddress` of a reserved range that is still mapped.
    ReservedFreedWhileMapped = 18,
    /// IOSV019: `MmMapLockedPagesWithReservedMapping` into a reserved range that is
    /// already mapped.
    ReservedMappedTwice = 19,
    /// IOSV020: `MmMapLockedPagesWithReservedMapping` with an MDL that spans more pages
    /// than the reserved range.
    ReservedSize = 20,
    /// IOSV021: a user-space MDL mapping unmapped from another process than the one it
    /// was mapped into.
    UnmapOtherProcess = 21,
    /// IOSV022: `MmMapLockedPagesWithReservedMapping`, `MmUnmapReservedMapping` or
    /// `MmFreeMappingAddress` with a pool tag other than the range's.
    ReservedTagMismatch = 22,
    /// IOSV023: `MmMapLockedPagesWithReservedMapping` at the base of another kind's live
    /// mapping, not a reserved range.
    ReservedMapNotReserved = 23,
}

/// Number of rules.
pub const RULE_COUNT: usize = 23;

impl RuleId {
    /// Every rule, in id order.
    pub const ALL: [RuleId; RULE_COUNT] = [
        RuleId::UnmapSizeMismatch,
        RuleId::UnmapIrql,
        RuleId::MapIrql,
        RuleId::UnmapUnknown,
        RuleId::DoubleUnmap,
        RuleId::UnmapInterior,
        RuleId::LeakOnStop,
        RuleId::LeakOnRemove,
        RuleId::LeakOnUnload,
        RuleId::CacheConflict,
        RuleId::MapBadParameters,
        RuleId::UnmapForeign,
        RuleId::StaleEntry,
        RuleId::UnmapPageBase,
        RuleId::MdlUnmapWrongMdl,
        RuleId::MdlUnmapIrql,
        RuleId::MdlReleasedWhileMapped,
        RuleId::ReservedFreedWhileMapped,
        RuleId::ReservedMappedTwice,
        RuleId::ReservedSize,
        RuleId::UnmapOtherProcess,
        RuleId::ReservedTagMismatch,
        RuleId::ReservedMapNotReserved,
    ];

    /// The rule with number `n` (1..=23).
    pub const fn from_number(n: u8) -> Option<RuleId> {
        Some(match n {
            1 => RuleId::UnmapSizeMismatch,
            2 => RuleId::UnmapIrql,
            3 => RuleId::MapIrql,
            4 => RuleId::UnmapUnknown,
            5 => RuleId::DoubleUnmap,
            6 => RuleId::UnmapInterior,
            7 => RuleId::LeakOnStop,
            8 => RuleId::LeakOnRemove,
            9 => RuleId::LeakOnUnload,
            10 => RuleId::CacheConflict,
            11 => RuleId::MapBadParameters,
            12 => RuleId::UnmapForeign,
            13 => RuleId::StaleEntry,
            14 => RuleId::UnmapPageBase,
            15 => RuleId::MdlUnmapWrongMdl,
            16 => RuleId::MdlUnmapIrql,
            17 => RuleId::MdlReleasedWhileMapped,
            18 => RuleId::ReservedFreedWhileMapped,
            19 => RuleId::ReservedMappedTwice,
            20 => RuleId::ReservedSize,
            21 => RuleId::UnmapOtherProcess,
            22 => RuleId::ReservedTagMismatch,
            23 => RuleId::ReservedMapNotReserved,
            _ => return None,
        })
    }

    /// The rule's number (1..=23).
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// Index into per-rule arrays (0..23).
    pub const fn index(self) -> usize {
        (self as u8).wrapping_sub(1) as usize
    }

    /// The rule's metadata.
    pub fn info(self) -> &'static RuleInfo {
        // Every variant's index is below RULE_COUNT; the fallback is never taken.
        RULES.get(self.index()).unwrap_or(&RULES_FALLBACK)
    }

    /// Whether this rule blames the owner of the mapping ([`RuleInfo::blames_owner`]).
    pub fn blames_owner(self) -> bool {
        self.info().blames_owner
    }

    /// Which driver a violation of this rule is blamed on, given the id of the mapping's
    /// owner (0: no mapping, or its owner unknown). The one statement of the blame rule,
    /// used by the engine's per-driver violation counts, the host's audit and the client:
    ///
    /// - the leak rules ([`RuleInfo::blames_owner`]: IOSV007 leak-on-stop, IOSV008
    ///   leak-on-remove, IOSV009 leak-on-unload) blame the owner of the leaked mapping —
    ///   the leak is found at an event (stop, removal, unload, detach), not at a call, and
    ///   it is the owner that failed to unmap; the caller if the owner is unknown;
    /// - every other rule blames the driver that made the call, even where it touched
    ///   another driver's mapping: IOSV012 unmap-foreign blames the unmapping driver, not
    ///   the owner whose mapping it tore at, and IOSV005 for a stale pointer after address
    ///   reuse blames the stale caller and spares the driver Mm gave the address to. An
    ///   unattributed caller (id 0) stays unattributed: the owner of the mapping it hit is
    ///   the victim, never the culprit.
    pub fn blamed(self, owner_id: u16) -> Blamed {
        if self.blames_owner() && owner_id != 0 {
            Blamed::Owner
        } else {
            Blamed::Caller
        }
    }

    /// The rule with this id (`"IOSV004"`) or name (`"unmap-unknown"`), case-insensitive.
    pub fn parse(text: &str) -> Option<RuleId> {
        RULES
            .iter()
            .find(|r| r.code.eq_ignore_ascii_case(text) || r.name.eq_ignore_ascii_case(text))
            .map(|r| r.id)
    }
}

/// The side of a violation its rule blames ([`RuleId::blamed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blamed {
    /// The driver that made the call (`driver_id` of a record; 0 if unattributed).
    Caller,
    /// The driver that owns the mapping involved (`owner_id` of a record).
    Owner,
}

/// How serious a violation of a rule is (SARIF `level`, `--fail-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Severity {
    /// Worth a look; may be legitimate.
    Note = 0,
    /// Likely a bug, but the system stays sound.
    Warning = 1,
    /// A bug that corrupts system state or leaks resources.
    Error = 2,
}

impl Severity {
    /// Lower-case name (`"error"`), as SARIF spells levels.
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What the engine does when a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Action {
    /// Count it, record nothing.
    Ignore = 0,
    /// Write a violation record to the journal (the default).
    Report = 1,
    /// Report, then break into the kernel debugger if one is attached.
    Break = 2,
    /// Report, then bug-check the machine (Driver Verifier style).
    Bugcheck = 3,
}

impl Action {
    /// The action with this wire value.
    pub const fn from_u8(v: u8) -> Option<Action> {
        match v {
            0 => Some(Action::Ignore),
            1 => Some(Action::Report),
            2 => Some(Action::Break),
            3 => Some(Action::Bugcheck),
            _ => None,
        }
    }

    /// Lower-case name (`"report"`).
    pub const fn name(self) -> &'static str {
        match self {
            Action::Ignore => "ignore",
            Action::Report => "report",
            Action::Break => "break",
            Action::Bugcheck => "bugcheck",
        }
    }

    /// The action with this name, case-insensitive.
    pub fn parse(text: &str) -> Option<Action> {
        [
            Action::Ignore,
            Action::Report,
            Action::Break,
            Action::Bugcheck,
        ]
        .into_iter()
        .find(|a| a.name().eq_ignore_ascii_case(text))
    }
}

/// A rule's metadata.
#[derive(Debug)]
pub struct RuleInfo {
    /// The rule.
    pub id: RuleId,
    /// Stable id, e.g. `"IOSV001"` (SARIF `ruleId`).
    pub code: &'static str,
    /// Short kebab-case name, e.g. `"unmap-size-mismatch"`.
    pub name: &'static str,
    /// Default severity.
    pub severity: Severity,
    /// One line: when the rule fires.
    pub summary: &'static str,
    /// What the driver should do instead.
    pub help: &'static str,
    /// Where the requirement is documented.
    pub reference: &'static str,
    /// Whether the engine can contain the violation (not pass the call to Mm as made).
    pub containable: bool,
    /// Whether a violation is blamed on the owner of the mapping rather than on the
    /// driver that made the call: true for the leaks (IOSV007–IOSV009), found at an event
    /// about the owner; see [`RuleId::blamed`].
    pub blames_owner: bool,
}

const DDI_UNMAP: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmunmapiospace";
const DDI_MAP: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmmapiospace";
const DDI_MAP_EX: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmmapiospaceex";
const DDI_MDL_UNMAP: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmunmaplockedpages";
const DDI_UNLOCK: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmunlockpages";
const DDI_FREE_MAPPING: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmfreemappingaddress";
const DDI_RESERVED_MAP: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmmaplockedpageswithreservedmapping";
const DDI_RESERVED_UNMAP: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmunmapreservedmapping";
const BUGCHECK_DA: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/debugger/bug-check-0xda--system-pte-misuse";
const BUGCHECK_C4: &str =
    "https://learn.microsoft.com/windows-hardware/drivers/debugger/bug-check-0xc4--driver-verifier-detected-violation";

static RULES_FALLBACK: RuleInfo = RuleInfo {
    id: RuleId::UnmapUnknown,
    code: "IOSV000",
    name: "unknown",
    severity: Severity::Error,
    summary: "",
    help: "",
    reference: "",
    containable: false,
    blames_owner: false,
};

/// Every rule, indexed by [`RuleId::index`].
pub static RULES: [RuleInfo; RULE_COUNT] = [
    RuleInfo {
        id: RuleId::UnmapSizeMismatch,
        code: "IOSV001",
        name: "unmap-size-mismatch",
        severity: Severity::Error,
        summary: "MmUnmapIoSpace NumberOfBytes differs from the size given to MmMapIoSpace",
        help: "Pass MmUnmapIoSpace the exact byte count that was mapped; keep it beside the base.",
        reference: DDI_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::UnmapIrql,
        code: "IOSV002",
        name: "unmap-irql",
        severity: Severity::Error,
        summary: "MmUnmapIoSpace called above the IRQL ceiling (DISPATCH_LEVEL; APC_LEVEL in Driver Verifier mode)",
        help: "Unmap at IRQL <= DISPATCH_LEVEL (<= APC_LEVEL to satisfy Driver Verifier 0xC4/0x7B), e.g. from a work item.",
        reference: BUGCHECK_C4,
        containable: false,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::MapIrql,
        code: "IOSV003",
        name: "map-irql",
        severity: Severity::Error,
        summary: "MmMapIoSpace/MmMapIoSpaceEx called above DISPATCH_LEVEL; of the MDL family, MmMapLockedPages[SpecifyCache] above DISPATCH_LEVEL (system space) or APC_LEVEL (user space), MmMapLockedPagesWithReservedMapping above DISPATCH_LEVEL, MmAllocateMappingAddress[Ex] above APC_LEVEL",
        help: "Map at IRQL <= DISPATCH_LEVEL (APC_LEVEL for user-space MDL mappings and reserving ranges), ideally at PASSIVE_LEVEL during start-device (Driver Verifier 0xC4/0x73).",
        reference: DDI_MAP,
        containable: false,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::UnmapUnknown,
        code: "IOSV004",
        name: "unmap-unknown",
        severity: Severity::Error,
        summary: "MmUnmapIoSpace of an address that no tracked driver mapped",
        help: "Only unmap bases returned by MmMapIoSpace/MmMapIoSpaceEx; check for corrupted or uninitialised pointers.",
        reference: DDI_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::DoubleUnmap,
        code: "IOSV005",
        name: "double-unmap",
        severity: Severity::Error,
        summary: "MmUnmapIoSpace of a base that was already unmapped, including through a stale pointer after Mm handed the address to another driver (the caller's own earlier mapping is remembered, the other driver's live mapping is kept)",
        help: "Clear the stored base after unmapping, and make stop and remove paths share one release routine; a stale pointer unmaps whatever Mm mapped there since.",
        reference: DDI_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::UnmapInterior,
        code: "IOSV006",
        name: "unmap-interior",
        severity: Severity::Error,
        summary: "MmUnmapIoSpace of an address inside a live mapping that is not its base (inside its bytes, or outside them in one of its pages: Mm rounds the address down to its page and unmaps whole pages from there)",
        help: "Unmap with the base MmMapIoSpace returned, not a register pointer derived from it.",
        reference: DDI_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::LeakOnStop,
        code: "IOSV007",
        name: "leak-on-stop",
        severity: Severity::Error,
        summary: "a mapping made during start-device is still live when IRP_MN_STOP_DEVICE completes",
        help: "Unmap every register range mapped in start-device when handling IRP_MN_STOP_DEVICE.",
        reference: DDI_UNMAP,
        containable: false,
        blames_owner: true,
    },
    RuleInfo {
        id: RuleId::LeakOnRemove,
        code: "IOSV008",
        name: "leak-on-remove",
        severity: Severity::Error,
        summary: "a mapping made during start-device is still live at surprise removal or remove-device",
        help: "Unmap in IRP_MN_SURPRISE_REMOVAL / IRP_MN_REMOVE_DEVICE (whichever comes first).",
        reference: DDI_UNMAP,
        containable: false,
        blames_owner: true,
    },
    RuleInfo {
        id: RuleId::LeakOnUnload,
        code: "IOSV009",
        name: "leak-on-unload",
        severity: Severity::Error,
        summary: "a driver's I/O-space mappings are still live when it unloads or is detached",
        help: "Release every mapping before DriverUnload returns; system PTEs leaked here are never recovered.",
        reference: DDI_UNMAP,
        containable: false,
        blames_owner: true,
    },
    RuleInfo {
        id: RuleId::CacheConflict,
        code: "IOSV010",
        name: "cache-conflict",
        severity: Severity::Warning,
        summary: "a physical range is mapped with a cache type that differs from an overlapping live mapping",
        help: "Map a physical range with one cache type everywhere; mixed attributes are undefined on x86 and ARM.",
        reference: DDI_MAP,
        containable: false,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::MapBadParameters,
        code: "IOSV011",
        name: "map-bad-parameters",
        severity: Severity::Error,
        summary: "MmMapIoSpace/MmMapIoSpaceEx with zero length, an out-of-range cache type or invalid protection flags",
        help: "Pass a non-zero length, a MEMORY_CACHING_TYPE below MmMaximumCacheType, and one PAGE_* protection with at most one of PAGE_NOCACHE/PAGE_WRITECOMBINE.",
        reference: DDI_MAP_EX,
        containable: false,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::UnmapForeign,
        code: "IOSV012",
        name: "unmap-foreign",
        // Reviewed for issue 8: a driver unmapping another driver's live mapping is almost
        // never right — the owner still holds the base and will use and unmap it, and once
        // Mm hands the address out again that is the corruption IOSV005-after-reuse
        // describes. So: an error, and contained (the owner's mapping stays mapped and
        // tracked; with containment off the call reaches Mm and the entry is removed).
        severity: Severity::Error,
        summary: "a driver unmapped a live mapping another driver made (contained: the owner's mapping stays mapped)",
        help: "Each driver unmaps what it mapped; if two drivers share registers, have the owner unmap them (e.g. through an interface callback).",
        reference: DDI_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::StaleEntry,
        code: "IOSV013",
        name: "stale-entry",
        severity: Severity::Warning,
        summary: "Mm returned a base that the table still holds: its unmap was missed (made by an untracked path)",
        help: "The earlier mapping at this base was unmapped without iosv seeing it, e.g. through a pointer resolved before attach.",
        reference: DDI_UNMAP,
        containable: false,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::UnmapPageBase,
        code: "IOSV014",
        name: "unmap-page-base",
        severity: Severity::Error,
        summary: "MmUnmapIoSpace of the page-aligned address of the caller's own live mapping whose base is not page-aligned (MmMapIoSpace of an unaligned physical address returns page + offset); Mm would round down and unmap ceil(NumberOfBytes / PAGE_SIZE) pages, missing the mapping's last page when offset + size crosses one more page (contained: unmapped with the tracked base and size)",
        help: "Pass MmUnmapIoSpace the exact pointer MmMapIoSpace returned, offset included; do not round it down to the page.",
        reference: DDI_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::MdlUnmapWrongMdl,
        code: "IOSV015",
        name: "mdl-unmap-wrong-mdl",
        severity: Severity::Error,
        summary: "MmUnmapLockedPages/MmUnmapReservedMapping with an MDL other than the one the mapping was made with (Mm would unmap the other MDL's page count and leave the mapped MDL flagged mapped: bug check 0xDA/0x02-0x06) (contained: unmapped with the tracked MDL)",
        help: "Pass the unmap the MDL that was mapped, and keep the MDL alive until the mapping is released.",
        reference: BUGCHECK_DA,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::MdlUnmapIrql,
        code: "IOSV016",
        name: "mdl-unmap-irql",
        severity: Severity::Error,
        summary: "MmUnmapLockedPages above DISPATCH_LEVEL for a system-space mapping or above APC_LEVEL for a user-space one, MmUnmapReservedMapping above DISPATCH_LEVEL, or MmFreeMappingAddress above APC_LEVEL",
        help: "Unmap system-space MDL mappings at IRQL <= DISPATCH_LEVEL and user-space ones at PASSIVE_LEVEL or APC_LEVEL; free reserved ranges at IRQL <= APC_LEVEL (Driver Verifier 0xC4/0x79-0x7A).",
        reference: DDI_MDL_UNMAP,
        containable: false,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::MdlReleasedWhileMapped,
        code: "IOSV017",
        name: "mdl-released-while-mapped",
        severity: Severity::Error,
        summary: "IoFreeMdl or MmUnlockPages of an MDL whose explicit mapping is live and not released by that call (a user-space mapping, a system-space mapping the MDL does not record as its MappedSystemVa, at IoFreeMdl one of an MDL that is not a mapped partial MDL, or a mapping into a reserved range): the PTEs leak or map unlocked pages (contained: iosv unmaps first)",
        help: "MmUnmapLockedPages (MmUnmapReservedMapping for a reserved range) every explicit mapping before unlocking or freeing its MDL; only MmUnlockPages releases a system-space mapping of a locked MDL by itself, the one the MDL records.",
        reference: DDI_UNLOCK,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::ReservedFreedWhileMapped,
        code: "IOSV018",
        name: "reserved-freed-while-mapped",
        severity: Severity::Error,
        summary: "MmFreeMappingAddress of a reserved range that MmMapLockedPagesWithReservedMapping mapped and nothing unmapped (contained: iosv unmaps it first)",
        help: "Call MmUnmapReservedMapping before MmFreeMappingAddress.",
        reference: DDI_FREE_MAPPING,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::ReservedMappedTwice,
        code: "IOSV019",
        name: "reserved-mapped-twice",
        severity: Severity::Error,
        summary: "MmMapLockedPagesWithReservedMapping into a reserved range that is already mapped (contained: not passed to Mm, NULL returned)",
        help: "Unmap the reserved range with MmUnmapReservedMapping before mapping another MDL into it; use one reserved range per concurrent user.",
        reference: DDI_RESERVED_MAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::ReservedSize,
        code: "IOSV020",
        name: "reserved-size",
        severity: Severity::Error,
        summary: "MmMapLockedPagesWithReservedMapping with an MDL whose pages (byte offset + byte count) do not fit the reserved range (contained: not passed to Mm, NULL returned, as Mm documents for this case)",
        help: "Reserve the largest transfer (plus one page for an unaligned buffer) with MmAllocateMappingAddress, or split the transfer.",
        reference: DDI_RESERVED_MAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::UnmapOtherProcess,
        code: "IOSV021",
        name: "unmap-other-process",
        severity: Severity::Error,
        summary: "MmUnmapLockedPages of a user-space MDL mapping from another process than the one it was mapped into (Mm would unmap that range of the current process) (contained: not passed to Mm, the mapping stays tracked)",
        help: "Unmap a user-space mapping in the context of the process it was mapped into (e.g. in IRP_MJ_CLEANUP of that process's handle).",
        reference: DDI_MDL_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::ReservedTagMismatch,
        code: "IOSV022",
        name: "reserved-tag-mismatch",
        severity: Severity::Error,
        summary: "MmMapLockedPagesWithReservedMapping, MmUnmapReservedMapping or MmFreeMappingAddress with a PoolTag other than the one MmAllocateMappingAddress reserved the range with (Windows bug-checks 0xDA: 0x104 for the map, 0x102 or 0x108 for the unmap, 0x101 for the free) (contained: a map is not passed to Mm and returns NULL; an unmap or free is passed with the range's own tag)",
        help: "Pass every routine of a reserved range the PoolTag it was allocated with; keep the tag in one constant beside the range.",
        reference: DDI_RESERVED_UNMAP,
        containable: true,
        blames_owner: false,
    },
    RuleInfo {
        id: RuleId::ReservedMapNotReserved,
        code: "IOSV023",
        name: "reserved-map-not-reserved",
        severity: Severity::Error,
        summary: "MmMapLockedPagesWithReservedMapping at the base of a live I/O-space or MDL mapping, not of a range MmAllocateMappingAddress reserved (Windows bug-checks 0xDA: the address is in no reserved range) (contained: not passed to Mm, NULL returned, the other mapping stays tracked)",
        help: "Pass the address MmAllocateMappingAddress returned, kept in its own field beside the range's tag; a field shared with a mapping's address is the usual cause.",
        reference: DDI_RESERVED_MAP,
        containable: true,
        blames_owner: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `rule` by caller 3 (`c.sys`) about a mapping of owner 7 (`o.sys`), or
    /// with `owner` 0, one whose owner is unknown.
    fn record(rule: RuleId, caller: u16, owner: u16) -> crate::protocol::ViolationRecord {
        let mut r = crate::protocol::ViolationRecord {
            rule: rule.number(),
            driver_id: caller,
            owner_id: owner,
            ..Default::default()
        };
        if caller != 0 {
            r.driver_name[..5].copy_from_slice(b"c.sys");
        }
        if owner != 0 {
            r.owner_name[..5].copy_from_slice(b"o.sys");
        }
        r
    }

    /// Checks `rule` blames `side` (with a known owner) through the rule table, the
    /// record's id and its name, and the caller when the owner is unknown.
    fn assert_blames(rule: RuleId, side: Blamed) {
        assert_eq!(rule.blamed(7), side, "{rule:?}");
        assert_eq!(rule.blames_owner(), side == Blamed::Owner, "{rule:?}");
        let r = record(rule, 3, 7);
        let (id, name): (u16, &[u8]) = match side {
            Blamed::Caller => (3, b"c.sys"),
            Blamed::Owner => (7, b"o.sys"),
        };
        assert_eq!((r.blamed(), r.blamed_driver()), (side, id), "{rule:?}");
        assert_eq!(r.blamed_driver_name(), name, "{rule:?}");
        // Owner unknown: the caller.
        let r = record(rule, 3, 0);
        assert_eq!(
            (r.blamed_driver(), r.blamed_driver_name()),
            (3, &b"c.sys"[..])
        );
        // Unattributed caller: nobody for a call rule (the owner is the victim), the owner
        // for a leak.
        let r = record(rule, 0, 7);
        let expected: (u16, &[u8]) = match side {
            Blamed::Caller => (0, b""),
            Blamed::Owner => (7, b"o.sys"),
        };
        assert_eq!((r.blamed_driver(), r.blamed_driver_name()), expected);
    }

    /// One test per rule: whom it blames. Rules found at a call blame the caller; the
    /// leaks, found at an event, blame the mapping's owner (see [`RuleId::blamed`]).
    macro_rules! blame {
        ($($test:ident: $rule:ident => $side:ident;)*) => {
            $(
                #[test]
                fn $test() {
                    assert_blames(RuleId::$rule, Blamed::$side);
                }
            )*

            /// Every rule has its test above (a new rule must say whom it blames).
            #[test]
            fn every_rule_has_a_blame_test() {
                let mut covered = vec![$(RuleId::$rule),*];
                covered.sort();
                assert_eq!(covered, RuleId::ALL.to_vec());
            }
        };
    }

    blame! {
        iosv001_unmap_size_mismatch_blames_the_caller: UnmapSizeMismatch => Caller;
        iosv002_unmap_irql_blames_the_caller: UnmapIrql => Caller;
        iosv003_map_irql_blames_the_caller: MapIrql => Caller;
        iosv004_unmap_unknown_blames_the_caller: UnmapUnknown => Caller;
        iosv005_double_unmap_and_stale_pointer_blame_the_caller_not_the_new_owner: DoubleUnmap => Caller;
        iosv006_unmap_interior_blames_the_caller: UnmapInterior => Caller;
        iosv007_leak_on_stop_blames_the_owner: LeakOnStop => Owner;
        iosv008_leak_on_remove_blames_the_owner: LeakOnRemove => Owner;
        iosv009_leak_on_unload_blames_the_owner: LeakOnUnload => Owner;
        iosv010_cache_conflict_blames_the_new_mapper: CacheConflict => Caller;
        iosv011_map_bad_parameters_blames_the_caller: MapBadParameters => Caller;
        iosv012_unmap_foreign_blames_the_unmapping_driver_not_the_owner: UnmapForeign => Caller;
        iosv013_stale_entry_blames_the_caller: StaleEntry => Caller;
        iosv014_unmap_page_base_blames_the_caller: UnmapPageBase => Caller;
        iosv015_mdl_unmap_wrong_mdl_blames_the_caller: MdlUnmapWrongMdl => Caller;
        iosv016_mdl_unmap_irql_blames_the_caller: MdlUnmapIrql => Caller;
        iosv017_mdl_released_while_mapped_blames_the_releasing_caller: MdlReleasedWhileMapped => Caller;
        iosv018_reserved_freed_while_mapped_blames_the_caller: ReservedFreedWhileMapped => Caller;
        iosv019_reserved_mapped_twice_blames_the_caller: ReservedMappedTwice => Caller;
        iosv020_reserved_size_blames_the_caller: ReservedSize => Caller;
        iosv021_unmap_other_process_blames_the_caller: UnmapOtherProcess => Caller;
        iosv022_reserved_tag_mismatch_blames_the_caller: ReservedTagMismatch => Caller;
        iosv023_reserved_map_not_reserved_blames_the_caller: ReservedMapNotReserved => Caller;
    }

    #[test]
    fn an_unknown_rule_number_blames_the_caller() {
        let mut r = record(RuleId::LeakOnStop, 3, 7);
        r.rule = 0;
        assert_eq!((r.blamed(), r.blamed_driver()), (Blamed::Caller, 3));
    }

    #[test]
    fn table_is_in_id_order_and_codes_match_numbers() {
        for (i, r) in RULES.iter().enumerate() {
            assert_eq!(r.id.index(), i);
            assert_eq!(r.code, format!("IOSV{:03}", r.id.number()));
            assert_eq!(RuleId::from_number(r.id.number()), Some(r.id));
            assert_eq!(RuleId::parse(r.name), Some(r.id));
            assert_eq!(RuleId::parse(&r.code.to_lowercase()), Some(r.id));
        }
        assert_eq!(RuleId::from_number(0), None);
        assert_eq!(RuleId::from_number(24), None);
        assert_eq!(RuleId::ALL.len(), RULE_COUNT);
    }

    #[test]
    fn containable_rules_are_the_unmap_ones() {
        let c: Vec<_> = RULES
            .iter()
            .filter(|r| r.containable)
            .map(|r| r.id)
            .collect();
        assert_eq!(
            c,
            [
                RuleId::UnmapSizeMismatch,
                RuleId::UnmapUnknown,
                RuleId::DoubleUnmap,
                RuleId::UnmapInterior,
                RuleId::UnmapForeign,
                RuleId::UnmapPageBase,
                RuleId::MdlUnmapWrongMdl,
                RuleId::MdlReleasedWhileMapped,
                RuleId::ReservedFreedWhileMapped,
                RuleId::ReservedMappedTwice,
                RuleId::ReservedSize,
                RuleId::UnmapOtherProcess,
                RuleId::ReservedTagMismatch,
                RuleId::ReservedMapNotReserved,
            ]
        );
    }
}
