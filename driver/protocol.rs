//! The wire contract between `iosv.sys` (or the host endpoint) and its clients: IOCTL
//! codes and the versioned, fixed-size, little-endian `#[repr(C)]` structs they carry —
//! the Rust counterpart of a WDK sample's `Public.h`.
//!
//! Every request starts with `version: u32` ([`PROTOCOL_VERSION`]) and every reserved
//! field must be zero. Replies that carry a list are a fixed header followed by as many
//! fixed-size items as fit the output buffer (and the request's `max`). Structs derive
//! zerocopy's traits, so they are read from and written to byte buffers without a
//! hand-written transmute; their sizes are pinned by compile-time assertions below.

#![forbid(unsafe_code)]

use crate::pe::HookedRoutine;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Version of this protocol. A request with another version gets
/// [`Status::RevisionMismatch`]. Version 2 added the `prior_*` fields of
/// [`ViolationRecord`] (IOSV005 after address reuse), rule IOSV014,
/// `DriverStats::hook_refusal`, `StatsReply::flags` and [`Status::HookRefused`].
/// Version 3 added the MDL and reserved mapping family (issue 11): rules
/// IOSV015–IOSV021 (`RULE_SLOTS` 32), `kind`, `mdl` and `passed_mdl` of
/// [`ViolationRecord`], `kind`, `mdl` and `process_id` of [`MappingRecord`] (struct
/// sizes changed, so the version did). Version 4 added rule IOSV022 (a version-3 client
/// zeroes the action slots past its last rule, so against a newer endpoint it would turn
/// the new rule off without a word) and `routine` of [`ViolationRecord`] (in half of
/// what was its `processor`, now 16 bits as in [`MappingRecord`]). Version 5 added rule
/// IOSV023 (no struct changed; the version did for the action slots, as in version 4).
///
/// Additions that leave every existing struct and code as it was do not change the
/// version: they are announced by a `CAP_*` bit instead, so clients and endpoints of
/// either side of the addition keep talking. [`IOCTL_GET_IMAGE_DEBUG`] is one
/// ([`CAP_IMAGE_DEBUG`]): a client that sees the bit clear (an older `iosv.sys`) does
/// without symbols; an older client never sends the code.
pub const PROTOCOL_VERSION: u32 = 5;

/// NT name of the control device.
pub const DEVICE_NAME: &str = r"\Device\IoSpaceVerifier";
/// DOS name (symbolic link) of the control device.
pub const DOS_DEVICE_NAME: &str = r"\DosDevices\IoSpaceVerifier";
/// Path a Win32 client opens.
pub const WIN32_DEVICE_PATH: &str = r"\\.\IoSpaceVerifier";

/// Vendor device type of the control device (0x8000 and above are for vendors).
pub const DEVICE_TYPE: u32 = 0x8A55;
/// `METHOD_BUFFERED`: the only transfer method iosv accepts.
pub const METHOD_BUFFERED: u32 = 0;
/// `FILE_READ_ACCESS`.
pub const FILE_READ_ACCESS: u32 = 1;
/// `FILE_WRITE_ACCESS`.
pub const FILE_WRITE_ACCESS: u32 = 2;

/// The WDK `CTL_CODE` macro.
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// Protocol version and limits → [`HelloRequest`] / [`HelloReply`].
pub const IOCTL_HELLO: u32 = ctl_code(DEVICE_TYPE, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Global and per-driver statistics → [`StatsRequest`] / [`StatsReply`] + [`DriverStats`]s.
pub const IOCTL_GET_STATS: u32 = ctl_code(DEVICE_TYPE, 0x801, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Violation records after a cursor → [`ReadViolationsRequest`] / [`ReadViolationsReply`] +
/// [`ViolationRecord`]s.
pub const IOCTL_READ_VIOLATIONS: u32 =
    ctl_code(DEVICE_TYPE, 0x802, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Live mappings (the leak view) → [`ListMappingsRequest`] / [`ListMappingsReply`] +
/// [`MappingRecord`]s.
pub const IOCTL_LIST_MAPPINGS: u32 =
    ctl_code(DEVICE_TYPE, 0x803, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Current configuration → [`GetConfigRequest`] / [`ConfigBlock`].
pub const IOCTL_GET_CONFIG: u32 = ctl_code(DEVICE_TYPE, 0x804, METHOD_BUFFERED, FILE_READ_ACCESS);
/// Replace the configuration → [`ConfigBlock`] / nothing.
pub const IOCTL_SET_CONFIG: u32 = ctl_code(
    DEVICE_TYPE,
    0x805,
    METHOD_BUFFERED,
    FILE_READ_ACCESS | FILE_WRITE_ACCESS,
);
/// Discard journal records, reset statistics, forget unmapped bases → [`ClearRequest`].
pub const IOCTL_CLEAR: u32 = ctl_code(DEVICE_TYPE, 0x806, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Attach to an already loaded driver → [`DriverNameRequest`] / [`AttachReply`].
pub const IOCTL_ATTACH: u32 = ctl_code(DEVICE_TYPE, 0x807, METHOD_BUFFERED, FILE_WRITE_ACCESS);
/// Detach from a driver → [`DriverNameRequest`] / [`AttachReply`].
pub const IOCTL_DETACH: u32 = ctl_code(DEVICE_TYPE, 0x808, METHOD_BUFFERED, FILE_WRITE_ACCESS);

/// The PDB identity (CodeView GUID, age, file name) of every registered driver image →
/// [`ImageDebugRequest`] / [`ImageDebugReply`] + [`ImageDebugRecord`]s. Served when the
/// endpoint sets [`CAP_IMAGE_DEBUG`].
pub const IOCTL_GET_IMAGE_DEBUG: u32 =
    ctl_code(DEVICE_TYPE, 0x809, METHOD_BUFFERED, FILE_READ_ACCESS);

/// Every IOCTL code iosv serves, with its name.
pub const IOCTLS: [(u32, &str); 10] = [
    (IOCTL_HELLO, "HELLO"),
    (IOCTL_GET_STATS, "GET_STATS"),
    (IOCTL_READ_VIOLATIONS, "READ_VIOLATIONS"),
    (IOCTL_LIST_MAPPINGS, "LIST_MAPPINGS"),
    (IOCTL_GET_CONFIG, "GET_CONFIG"),
    (IOCTL_SET_CONFIG, "SET_CONFIG"),
    (IOCTL_CLEAR, "CLEAR"),
    (IOCTL_ATTACH, "ATTACH"),
    (IOCTL_DETACH, "DETACH"),
    (IOCTL_GET_IMAGE_DEBUG, "GET_IMAGE_DEBUG"),
];

/// Outcome of a control request: an NTSTATUS value, the same on the device and the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// STATUS_SUCCESS.
    Success = 0,
    /// STATUS_INFO_LENGTH_MISMATCH: the input is longer than the request struct.
    InputTooLong = 0xC000_0004,
    /// STATUS_INVALID_PARAMETER: a reserved field or flag bit is not zero.
    ReservedNotZero = 0xC000_000D,
    /// STATUS_INVALID_DEVICE_REQUEST: unknown IOCTL code.
    UnknownCode = 0xC000_0010,
    /// STATUS_BUFFER_TOO_SMALL: the output buffer cannot hold the reply; the transport's
    /// `Information` carries the required size.
    OutputTooSmall = 0xC000_0023,
    /// STATUS_REVISION_MISMATCH: the request's `version` is not [`PROTOCOL_VERSION`].
    RevisionMismatch = 0xC000_0059,
    /// STATUS_NOT_FOUND: no driver by that name.
    NotFound = 0xC000_0225,
    /// STATUS_NOT_SUPPORTED: the platform cannot do this.
    NotSupported = 0xC000_00BB,
    /// STATUS_INVALID_PARAMETER_2: a field's value is out of range.
    InvalidField = 0xC000_00F0,
    /// STATUS_INVALID_BUFFER_SIZE: the input is shorter than the request struct.
    InputTooShort = 0xC000_0206,
    /// STATUS_INSUFFICIENT_RESOURCES: a fixed table is full.
    NoResources = 0xC000_009A,
    /// STATUS_INVALID_IMAGE_FORMAT: the target image could not be parsed.
    BadImage = 0xC000_007B,
    /// STATUS_UNSUCCESSFUL: a slot changed under iosv and was left alone.
    SlotChanged = 0xC000_0001,
    /// STATUS_MEDIA_WRITE_PROTECTED: iosv refused to patch the driver's import slots;
    /// the driver's `DriverStats::hook_refusal` says why. Nothing was written.
    HookRefused = 0xC000_00A2,
}

impl Status {
    /// The status with this NTSTATUS value.
    pub fn from_ntstatus(v: u32) -> Option<Status> {
        ALL_STATUSES.iter().copied().find(|s| *s as u32 == v)
    }
    /// Short explanation for people.
    pub const fn describe(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::InputTooLong => "input buffer longer than the request",
            Status::ReservedNotZero => "a reserved field or flag is not zero",
            Status::UnknownCode => "unknown IOCTL code",
            Status::OutputTooSmall => "output buffer too small",
            Status::RevisionMismatch => "protocol version mismatch",
            Status::NotFound => "no loaded driver has that name",
            Status::NotSupported => "not supported by this endpoint",
            Status::InvalidField => "a field's value is out of range",
            Status::InputTooShort => "input buffer shorter than the request",
            Status::NoResources => {
                "insufficient resources (a fixed table is full, or the endpoint is at its connection or memory limit)"
            }
            Status::BadImage => "the driver image could not be parsed",
            Status::SlotChanged => "an import slot no longer holds iosv's hook",
            Status::HookRefused => "iosv refused to patch the driver's import slots",
        }
    }
}

const ALL_STATUSES: [Status; 14] = [
    Status::Success,
    Status::InputTooLong,
    Status::ReservedNotZero,
    Status::UnknownCode,
    Status::OutputTooSmall,
    Status::RevisionMismatch,
    Status::NotFound,
    Status::NotSupported,
    Status::InvalidField,
    Status::InputTooShort,
    Status::NoResources,
    Status::BadImage,
    Status::SlotChanged,
    Status::HookRefused,
];

/// Bytes in a driver image name on the wire (NUL-padded ASCII; longer names are cut).
pub const NAME_LEN: usize = 32;
/// Frames in a wire stack (entries past a record's depth are zero).
pub const MAX_STACK: usize = 16;
/// Slots in per-rule arrays on the wire (23 rules used, room to grow).
pub const RULE_SLOTS: usize = 32;
/// Target image names a configuration holds.
pub const MAX_TARGETS: usize = 16;

/// `HelloReply::capabilities`: MmMapIoSpaceEx is hooked.
pub const CAP_MAP_EX: u32 = 1 << 0;
/// `HelloReply::capabilities`: unmap violations can be contained.
pub const CAP_CONTAINMENT: u32 = 1 << 1;
/// `HelloReply::capabilities`: map-site and call-site stacks are captured.
pub const CAP_STACKS: u32 = 1 << 2;
/// `HelloReply::capabilities`: ATTACH/DETACH work on this endpoint.
pub const CAP_ATTACH: u32 = 1 << 3;
/// `HelloReply::capabilities`: the endpoint is the user-mode host, not the kernel.
pub const CAP_HOST: u32 = 1 << 4;
/// `HelloReply::capabilities`: [`IOCTL_GET_IMAGE_DEBUG`] is served (the images' PDB
/// identities, for symbolizing stacks).
pub const CAP_IMAGE_DEBUG: u32 = 1 << 5;

/// Request of [`IOCTL_HELLO`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct HelloRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Zero.
    pub reserved: u32,
}

/// Reply of [`IOCTL_HELLO`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct HelloReply {
    /// [`PROTOCOL_VERSION`] of the endpoint.
    pub version: u32,
    /// `CAP_*` bits.
    pub capabilities: u32,
    /// Version of the iosv component, NUL-padded (`"0.1.0"`).
    pub component_version: [u8; 16],
    /// Live mappings the table can hold.
    pub table_capacity: u32,
    /// Records the journal holds before the oldest is overwritten.
    pub journal_capacity: u32,
    /// Stack frames allocated per mapping and per record (the most `stack_depth` can be).
    pub max_stack_depth: u32,
    /// Driver slots.
    pub max_drivers: u32,
    /// Processors the statistics are kept for.
    pub processor_count: u32,
    /// `size_of::<ViolationRecord>()`.
    pub violation_record_size: u32,
    /// `size_of::<MappingRecord>()`.
    pub mapping_record_size: u32,
    /// `size_of::<DriverStats>()`.
    pub driver_stats_size: u32,
}

/// Request of [`IOCTL_GET_STATS`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct StatsRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Most [`DriverStats`] to return.
    pub max_drivers: u32,
}

/// Global counters (sums over processors).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Counters {
    /// Successful maps seen (MmMapIoSpace + MmMapIoSpaceEx).
    pub maps: u64,
    /// Maps the real routine failed (returned NULL).
    pub map_failures: u64,
    /// Unmaps seen.
    pub unmaps: u64,
    /// Unmaps not passed to Mm as made (contained).
    pub contained: u64,
    /// Violations whose action was `ignore`.
    pub ignored: u64,
    /// Violation records written.
    pub reported: u64,
    /// Breaks into the debugger requested.
    pub breaks: u64,
    /// Bug checks requested.
    pub bugchecks: u64,
    /// Mappings in the table now.
    pub live: u64,
    /// Maps that found the table full (untracked).
    pub table_full: u64,
    /// Untracked mappings still live (their unmaps are passed through unverified).
    pub untracked_live: u64,
    /// Unmaps passed through because they may belong to an untracked mapping.
    pub unverified_unmaps: u64,
    /// Journal records ever written (the journal's tail sequence number).
    pub journal_written: u64,
    /// Violations per rule, indexed by rule number - 1.
    pub per_rule: [u64; RULE_SLOTS],
}

/// Reply header of [`IOCTL_GET_STATS`]; `returned` [`DriverStats`] follow it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct StatsReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Driver slots in use.
    pub total_drivers: u32,
    /// [`DriverStats`] that follow.
    pub returned: u32,
    /// `STATE_*` bits: conditions a user must see (unload blocked, nothing verified,
    /// bad configuration).
    pub flags: u32,
    /// Endpoint time (ns) when the counters were read.
    pub now_ns: u64,
    /// The counters.
    pub counters: Counters,
}

/// `StatsReply::flags`: iosv.sys patched import slots (or handed out a hook through
/// `MmGetSystemRoutineAddress`) and can no longer be unloaded until reboot.
pub const STATE_UNLOAD_BLOCKED: u32 = 1 << 0;
/// `StatsReply::flags`: no target is configured and no driver is attached: iosv verifies
/// nothing.
pub const STATE_NO_TARGETS: u32 = 1 << 1;
/// `StatsReply::flags`: the `Targets` registry value was too long and was ignored.
pub const STATE_TARGETS_TOO_LONG: u32 = 1 << 2;
/// `StatsReply::flags`: the `Targets` value held names that are not printable ASCII or
/// are too long; they were skipped.
pub const STATE_TARGETS_BAD_NAME: u32 = 1 << 3;
/// `StatsReply::flags`: the `Targets` value held more names than fit; the rest were
/// skipped.
pub const STATE_TARGETS_TOO_MANY: u32 = 1 << 4;
/// `StatsReply::flags`: a `Targets` value of the wrong registry type was ignored.
pub const STATE_TARGETS_WRONG_TYPE: u32 = 1 << 5;
/// `StatsReply::flags`: a size parameter (`Capacity`, …) was malformed and its default
/// used.
pub const STATE_PARAMETER_IGNORED: u32 = 1 << 6;
/// `StatsReply::flags`: hypervisor-protected code integrity (HVCI) is on.
pub const STATE_HVCI: u32 = 1 << 7;

/// Every `STATE_*` bit with a short name and its meaning, in bit order.
pub const STATE_FLAGS: [(u32, &str, &str); 8] = [
    (
        STATE_UNLOAD_BLOCKED,
        "unload-blocked",
        "import slots were patched: iosv.sys stays loaded until reboot",
    ),
    (
        STATE_NO_TARGETS,
        "no-targets",
        "no target configured or attached: iosv verifies nothing",
    ),
    (
        STATE_TARGETS_TOO_LONG,
        "targets-too-long",
        "the Targets registry value was too long and was ignored",
    ),
    (
        STATE_TARGETS_BAD_NAME,
        "targets-bad-name",
        "Targets held unusable names; they were skipped",
    ),
    (
        STATE_TARGETS_TOO_MANY,
        "targets-too-many",
        "Targets held more names than fit; the rest were skipped",
    ),
    (
        STATE_TARGETS_WRONG_TYPE,
        "targets-wrong-type",
        "Targets is not REG_MULTI_SZ and was ignored",
    ),
    (
        STATE_PARAMETER_IGNORED,
        "parameter-ignored",
        "a size parameter was malformed; its default is used",
    ),
    (STATE_HVCI, "hvci", "memory integrity (HVCI) is on"),
];

/// `DriverStats::state`: loaded and hooked.
pub const DRIVER_ATTACHED: u32 = 1;
/// `DriverStats::state`: loaded, not hooked.
pub const DRIVER_LOADED: u32 = 2;
/// `DriverStats::state`: unloaded or detached.
pub const DRIVER_GONE: u32 = 3;

/// One driver's statistics.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DriverStats {
    /// Driver id used in records (1-based slot).
    pub driver_id: u32,
    /// `DRIVER_*`.
    pub state: u32,
    /// Image name.
    pub name: [u8; NAME_LEN],
    /// Image base.
    pub image_base: u64,
    /// Image size.
    pub image_size: u64,
    /// Times this image was loaded or attached.
    pub loads: u64,
    /// Successful maps.
    pub maps: u64,
    /// Unmaps.
    pub unmaps: u64,
    /// Violations attributed to this driver.
    pub violations: u64,
    /// Mappings of this driver live now.
    pub live: u64,
    /// Bytes those mappings span.
    pub live_bytes: u64,
    /// Why iosv refused to hook this driver (an `intercept::SiteRefusal` code), 0 if it
    /// did not.
    pub hook_refusal: u32,
    /// Zero.
    pub reserved: u32,
}

/// Request of [`IOCTL_READ_VIOLATIONS`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReadViolationsRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Most records to return (the output buffer may limit further).
    pub max_records: u32,
    /// First sequence number wanted (0 = from the oldest held; pass back `next_cursor`).
    pub cursor: u64,
}

/// Reply header of [`IOCTL_READ_VIOLATIONS`]; `count` [`ViolationRecord`]s follow it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReadViolationsReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Records that follow.
    pub count: u32,
    /// Cursor for the next read.
    pub next_cursor: u64,
    /// Records between `cursor` and `next_cursor` this read could not return: overwritten
    /// before they were read, or torn by a writer that was lapped.
    pub lost: u64,
    /// Records discarded by CLEAR between `cursor` and `next_cursor`.
    pub discarded: u64,
    /// Sequence number the next record written will get.
    pub tail: u64,
}

/// `ViolationRecord::flags`: the call was contained (not passed to Mm as made).
pub const VF_CONTAINED: u8 = 1 << 0;
/// `ViolationRecord::flags`: the call was MmMapIoSpaceEx (cache field holds protection).
pub const VF_MAP_EX: u8 = 1 << 1;
/// `ViolationRecord::flags`: the mapping's fields (`base`, `mapped_size`, `physical`,
/// map stack, owner) are known.
pub const VF_MAPPING_KNOWN: u8 = 1 << 2;
/// `ViolationRecord::flags`: the leak was found at a detach rather than an unload.
pub const VF_DETACH: u8 = 1 << 3;
/// `ViolationRecord::flags` (IOSV010): the conflicting live mapping was made with
/// MmMapIoSpaceEx, so `other_cache` holds a page protection, not a cache type.
pub const VF_OTHER_MAP_EX: u8 = 1 << 4;
/// `ViolationRecord::flags` (IOSV005): Mm handed the unmapped base to another driver
/// since the caller's own mapping there was unmapped. The live mapping the call would
/// have torn down (its owner, size, physical address, map stack) is in the mapping fields;
/// the caller's own earlier mapping is in the `prior_*` fields and its unmap time in
/// `other`.
pub const VF_REUSED: u8 = 1 << 5;
/// `ViolationRecord::flags`: the mapping (kind [`MK_RESERVED`]) is a sub-range mapping, an
/// MDL mapped at a page inside a range allocated with `MM_MAPPING_ADDRESS_DIVISIBLE`,
/// past its first ([`MF_RESERVED_DIVISIBLE`]); released by `MmUnmapReservedMapping`.
pub const VF_SUB_RANGE: u8 = 1 << 6;

/// One violation, as journaled and as sent. Names both sides of a conflict: what the call
/// passed and what the tracked mapping holds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ViolationRecord {
    /// Journal sequence number.
    pub seq: u64,
    /// When it happened (endpoint time, ns).
    pub timestamp_ns: u64,
    /// Rule number (1..=23).
    pub rule: u8,
    /// [`crate::rules::Action`] taken.
    pub action: u8,
    /// `VF_*` bits.
    pub flags: u8,
    /// IRQL of the call (or of the PnP/unload event).
    pub irql: u8,
    /// Processor of the call (as in [`MappingRecord::processor`]; `u16::MAX` for a
    /// processor number that does not fit).
    pub processor: u16,
    /// The routine whose call the record judges ([`routine_code`]); 0 for an event (a
    /// leak found at stop, removal, unload or detach).
    pub routine: u8,
    /// Zero.
    pub reserved3: u8,
    /// Driver that made the call (0 = unattributed).
    pub driver_id: u16,
    /// Driver that owns the mapping (0 = none/unknown).
    pub owner_id: u16,
    /// Valid frames in `map_stack`.
    pub map_stack_depth: u8,
    /// Valid frames in `call_stack`.
    pub call_stack_depth: u8,
    /// IRQL at which the mapping was made.
    pub map_irql: u8,
    /// [`MappingKind`](crate::mdl::MappingKind) of the mapping or call involved:
    /// 0 I/O space, 1 MDL, 2 reserved range (`MK_*`).
    pub kind: u8,
    /// Process of the call.
    pub process_id: u64,
    /// Thread of the call.
    pub thread_id: u64,
    /// Address the call passed (unmap) or returned (map).
    pub address: u64,
    /// Base of the tracked mapping involved (interior: the containing mapping).
    pub base: u64,
    /// Size the tracked mapping was made with.
    pub mapped_size: u64,
    /// Size the call passed.
    pub passed_size: u64,
    /// Physical address of the mapping (or of the map call).
    pub physical: u64,
    /// Cache type (MmMapIoSpace, a MEMORY_CACHING_TYPE) or page protection
    /// (MmMapIoSpaceEx, with [`VF_MAP_EX`]) of the call/mapping.
    pub cache: u32,
    /// IOSV010: cache type of the conflicting live mapping (a page protection with
    /// [`VF_OTHER_MAP_EX`]); IOSV022: the pool tag the call passed (the range's own is
    /// in `cache`).
    pub other_cache: u32,
    /// Device object the mapping is attributed to (0 = none).
    pub device: u64,
    /// When the mapping was made (ns).
    pub map_time_ns: u64,
    /// IOSV010: physical address of the conflicting mapping (its base and size are in
    /// `base` and `mapped_size`); IOSV005: when the earlier unmap happened.
    pub other: u64,
    /// Name of `driver_id`.
    pub driver_name: [u8; NAME_LEN],
    /// Name of `owner_id`.
    pub owner_name: [u8; NAME_LEN],
    /// Stack of the map call, innermost first.
    pub map_stack: [u64; MAX_STACK],
    /// Stack of the violating call, innermost first.
    pub call_stack: [u64; MAX_STACK],
    /// With [`VF_REUSED`]: size of the caller's own earlier mapping at this base.
    pub prior_size: u64,
    /// With [`VF_REUSED`]: its physical address.
    pub prior_physical: u64,
    /// With [`VF_REUSED`]: when it was mapped (ns).
    pub prior_map_time_ns: u64,
    /// IOSV005: the map site of the mapping that was unmapped before (the return address
    /// of its map call; 0 if unknown).
    pub prior_map_site: u64,
    /// MDL and reserved kinds: the MDL the mapping was made with (a reserved range: the
    /// MDL mapped into it now; 0 if none or unknown).
    pub mdl: u64,
    /// MDL and reserved kinds: the MDL the call passed (0 if none).
    pub passed_mdl: u64,
}

/// `ViolationRecord::routine` of a call of `r`: its [`HookedRoutine::index`] + 1.
pub const fn routine_code(r: HookedRoutine) -> u8 {
    // At most HookedRoutine::COUNT (14).
    (r.index() as u8).wrapping_add(1)
}

/// The routine a `ViolationRecord::routine` names; `None` for 0 (an event) and for codes
/// this build does not know.
pub fn routine_of_code(code: u8) -> Option<HookedRoutine> {
    HookedRoutine::ALL
        .get(usize::from(code).checked_sub(1)?)
        .copied()
}

/// `ViolationRecord::kind` / `MappingRecord::kind`: an I/O-space mapping
/// (MmMapIoSpace/MmMapIoSpaceEx).
pub const MK_IO_SPACE: u8 = 0;
/// `ViolationRecord::kind` / `MappingRecord::kind`: an MDL mapping
/// (MmMapLockedPagesSpecifyCache/MmMapLockedPages, also through
/// MmGetSystemAddressForMdlSafe).
pub const MK_MDL: u8 = 1;
/// `ViolationRecord::kind` / `MappingRecord::kind`: a reserved range
/// (MmAllocateMappingAddress(Ex)), mapped or not.
pub const MK_RESERVED: u8 = 2;

impl ViolationRecord {
    /// The side this record blames: [`crate::rules::RuleId::blamed`] for its rule (the
    /// caller when the rule number is unknown).
    pub fn blamed(&self) -> crate::rules::Blamed {
        crate::rules::RuleId::from_number(self.rule)
            .map_or(crate::rules::Blamed::Caller, |r| r.blamed(self.owner_id))
    }

    /// The id of the driver this record blames (0: unattributed).
    pub fn blamed_driver(&self) -> u16 {
        match self.blamed() {
            crate::rules::Blamed::Caller => self.driver_id,
            crate::rules::Blamed::Owner => self.owner_id,
        }
    }

    /// The name of the driver this record blames (empty when unattributed).
    pub fn blamed_driver_name(&self) -> &[u8] {
        match self.blamed() {
            crate::rules::Blamed::Caller if self.driver_id == 0 => &[],
            crate::rules::Blamed::Caller => name_bytes(&self.driver_name),
            crate::rules::Blamed::Owner => name_bytes(&self.owner_name),
        }
    }
}

/// Request of [`IOCTL_LIST_MAPPINGS`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ListMappingsRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Most records to return.
    pub max_records: u32,
    /// Resume point (0 to start; pass back `next_cursor`).
    pub cursor: u64,
    /// `LF_*` filter bits.
    pub filter: u32,
    /// With `LF_DRIVER`: only this driver's mappings.
    pub driver_id: u32,
    /// With `LF_DEVICE`: only mappings attributed to this device.
    pub device: u64,
    /// With `LF_MIN_AGE`: only mappings at least this old (ns).
    pub min_age_ns: u64,
}

/// `ListMappingsRequest::filter`: by driver.
pub const LF_DRIVER: u32 = 1 << 0;
/// `ListMappingsRequest::filter`: by device.
pub const LF_DEVICE: u32 = 1 << 1;
/// `ListMappingsRequest::filter`: by minimum age.
pub const LF_MIN_AGE: u32 = 1 << 2;
/// Every defined `LF_*` bit.
pub const LF_ALL: u32 = LF_DRIVER | LF_DEVICE | LF_MIN_AGE;

/// Reply header of [`IOCTL_LIST_MAPPINGS`]; `count` [`MappingRecord`]s follow it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ListMappingsReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Records that follow.
    pub count: u32,
    /// Cursor to resume from.
    pub next_cursor: u64,
    /// 1 when the walk reached the end of the table.
    pub done: u32,
    /// Entries that changed under the walk too often to read (they were skipped).
    pub skipped: u32,
    /// Endpoint time (ns) of the walk, to compute ages.
    pub now_ns: u64,
}

/// `MappingRecord::flags`: made by MmMapIoSpaceEx (`cache` holds the protection).
pub const MF_MAP_EX: u8 = 1 << 0;
/// `MappingRecord::flags`: already reported as leaked.
pub const MF_LEAK_REPORTED: u8 = 1 << 1;
/// `MappingRecord::flags`: its driver was detached while it was live (reported as
/// IOSV009 then). It stays listed until an unmap iosv sees, the image's unload, or Mm
/// handing its address out again (the driver unmapped it unhooked) removes it.
pub const MF_DETACHED: u8 = 1 << 2;

/// `MappingRecord::flags`: an MDL mapping (`kind` [`MK_MDL`]).
pub const MF_KIND_MDL: u8 = 1 << 3;
/// `MappingRecord::flags`: a reserved range (`kind` [`MK_RESERVED`]).
pub const MF_KIND_RESERVED: u8 = 1 << 4;
/// `MappingRecord::flags`: an MDL mapping into user space (AccessMode UserMode).
pub const MF_USER: u8 = 1 << 5;
/// `MappingRecord::flags`: a reserved range with an MDL mapped into it now.
pub const MF_RESERVED_MAPPED: u8 = 1 << 6;
/// `MappingRecord::flags` of an MDL mapping (`kind` [`MK_MDL`]; the bit of
/// [`MF_RESERVED_MAPPED`]): a direct-I/O MDL's own system mapping, released with the MDL
/// by `MmUnlockPages` whoever calls it (the I/O manager at the request's completion), so
/// never reported as leaked.
pub const MF_MDL_DIRECT_IO: u8 = 1 << 6;
/// `MappingRecord::flags`: a reserved range allocated with `MM_MAPPING_ADDRESS_DIVISIBLE`,
/// or (with [`MF_RESERVED_MAPPED`]) an MDL mapped at a page inside such a range past its
/// first: a sub-range mapping, listed as its own entry.
pub const MF_RESERVED_DIVISIBLE: u8 = 1 << 7;

/// One live mapping.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct MappingRecord {
    /// Base virtual address.
    pub base: u64,
    /// Bytes mapped.
    pub size: u64,
    /// Physical address (I/O space; 0 for the other kinds).
    pub physical: u64,
    /// Device the mapping is attributed to (0 = none).
    pub device: u64,
    /// When it was made (ns, endpoint time).
    pub map_time_ns: u64,
    /// Cache type or protection (a reserved range: its pool tag).
    pub cache: u32,
    /// Owning driver id.
    pub driver_id: u16,
    /// Processor of the map call.
    pub processor: u16,
    /// IRQL of the map call.
    pub irql: u8,
    /// `MF_*` bits.
    pub flags: u8,
    /// Valid frames in `stack`.
    pub stack_depth: u8,
    /// `MK_*`: I/O space, MDL or reserved range.
    pub kind: u8,
    /// Zero.
    pub reserved2: u32,
    /// Owning driver's name.
    pub driver_name: [u8; NAME_LEN],
    /// Stack of the map call.
    pub stack: [u64; MAX_STACK],
    /// MDL kind: the MDL mapped; reserved kind: the MDL mapped into the range now (0 if
    /// none); I/O space: 0.
    pub mdl: u64,
    /// MDL kind with [`MF_USER`]: the process mapped into; 0 otherwise.
    pub process_id: u64,
}

/// Request of [`IOCTL_GET_CONFIG`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct GetConfigRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Zero.
    pub reserved: u32,
}

/// `ConfigBlock::flags`: contain unknown/double/interior unmaps and size mismatches.
pub const CF_CONTAINMENT: u32 = 1 << 0;
/// `ConfigBlock::flags`: unmap IRQL ceiling is APC_LEVEL (Driver Verifier), not DISPATCH_LEVEL.
pub const CF_VERIFIER_IRQL: u32 = 1 << 1;
/// Every defined `CF_*` bit.
pub const CF_ALL: u32 = CF_CONTAINMENT | CF_VERIFIER_IRQL;

/// The runtime configuration (reply of GET_CONFIG, request of SET_CONFIG).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ConfigBlock {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// `CF_*` bits.
    pub flags: u32,
    /// Frames captured per map and per violation (0..=`max_stack_depth`).
    pub stack_depth: u32,
    /// Valid entries in `targets`.
    pub target_count: u32,
    /// Action per rule (index = rule number - 1; entries past the last rule are zero).
    pub actions: [u8; RULE_SLOTS],
    /// Image names to hook when they load (NUL-padded ASCII, compared case-insensitively).
    pub targets: [[u8; NAME_LEN]; MAX_TARGETS],
}

/// `ClearRequest::what`: discard journal records written so far.
pub const CLR_JOURNAL: u32 = 1 << 0;
/// `ClearRequest::what`: reset counters.
pub const CLR_STATS: u32 = 1 << 1;
/// `ClearRequest::what`: forget recently unmapped bases (double-unmap detection).
pub const CLR_GRAVEYARD: u32 = 1 << 2;
/// Every defined `CLR_*` bit.
pub const CLR_ALL: u32 = CLR_JOURNAL | CLR_STATS | CLR_GRAVEYARD;

/// Request of [`IOCTL_CLEAR`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ClearRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// `CLR_*` bits (at least one).
    pub what: u32,
}

/// Request of [`IOCTL_ATTACH`] and [`IOCTL_DETACH`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DriverNameRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Zero.
    pub reserved: u32,
    /// Image name (NUL-padded ASCII).
    pub name: [u8; NAME_LEN],
}

/// Reply of [`IOCTL_ATTACH`] and [`IOCTL_DETACH`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct AttachReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Import slots patched (attach) or restored (detach).
    pub slots: u32,
}

/// Bytes of a PDB file name on the wire (NUL-padded; longer names are cut, and then
/// [`IDF_NAME_CUT`] is set).
pub const PDB_NAME_LEN: usize = 64;

/// Request of [`IOCTL_GET_IMAGE_DEBUG`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ImageDebugRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Most [`ImageDebugRecord`]s to return.
    pub max_records: u32,
}

/// Reply header of [`IOCTL_GET_IMAGE_DEBUG`]; `count` [`ImageDebugRecord`]s follow it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ImageDebugReply {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Records that follow (one per registered driver, in driver id order).
    pub count: u32,
}

/// `ImageDebugRecord::flags`: the image has a CodeView (`RSDS`) record; `guid`, `age`
/// and `pdb_name` are valid.
pub const IDF_CODEVIEW: u32 = 1 << 0;
/// `ImageDebugRecord::flags`: the PDB file name was longer than [`PDB_NAME_LEN`] and is
/// cut.
pub const IDF_NAME_CUT: u32 = 1 << 1;
/// `ImageDebugRecord::flags`: the image's debug directory could not be read (malformed);
/// nothing else is valid.
pub const IDF_BAD_DEBUG_DIRECTORY: u32 = 1 << 2;

/// The PDB identity of one registered driver image: what a symbolizer matches a PDB by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ImageDebugRecord {
    /// The driver id (as in [`DriverStats::driver_id`]).
    pub driver_id: u32,
    /// `IDF_*` bits.
    pub flags: u32,
    /// The image base of the load this was read from.
    pub image_base: u64,
    /// The CodeView GUID, as stored in the image (`GUID` layout: first three fields
    /// little-endian).
    pub guid: [u8; 16],
    /// The CodeView age.
    pub age: u32,
    /// Zero.
    pub reserved: u32,
    /// The PDB's file name (the last component of the path in the record), NUL-padded.
    pub pdb_name: [u8; PDB_NAME_LEN],
}

impl Default for ImageDebugRecord {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

const _: () = {
    assert!(core::mem::size_of::<ImageDebugRequest>() == 8);
    assert!(core::mem::size_of::<ImageDebugReply>() == 8);
    assert!(core::mem::size_of::<ImageDebugRecord>() == 104);
};

const _: () = {
    assert!(core::mem::size_of::<HelloRequest>() == 8);
    assert!(core::mem::size_of::<HelloReply>() == 56);
    assert!(core::mem::size_of::<Counters>() == 360);
    assert!(core::mem::size_of::<StatsReply>() == 384);
    assert!(core::mem::size_of::<DriverStats>() == 112);
    assert!(core::mem::size_of::<ReadViolationsRequest>() == 16);
    assert!(core::mem::size_of::<ReadViolationsReply>() == 40);
    assert!(core::mem::size_of::<ViolationRecord>() == 488);
    assert!(core::mem::size_of::<ListMappingsRequest>() == 40);
    assert!(core::mem::size_of::<ListMappingsReply>() == 32);
    assert!(core::mem::size_of::<MappingRecord>() == 232);
    assert!(core::mem::size_of::<ConfigBlock>() == 560);
    assert!(core::mem::size_of::<ClearRequest>() == 8);
    assert!(core::mem::size_of::<DriverNameRequest>() == 40);
    assert!(core::mem::size_of::<AttachReply>() == 8);
};

/// Copies `name` into a NUL-padded wire name, cutting it at [`NAME_LEN`] bytes.
pub fn wire_name(name: &[u8]) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    for (d, s) in out.iter_mut().zip(name.iter()) {
        *d = *s;
    }
    out
}

/// The bytes of a wire name up to its first NUL.
pub fn name_bytes(name: &[u8; NAME_LEN]) -> &[u8] {
    let len = name.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    name.get(..len).unwrap_or(&[])
}
