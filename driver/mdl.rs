//! The MDL and reserved-mapping family (issue 11): what iosv tracks of
//! `MmMapLockedPagesSpecifyCache` / `MmMapLockedPages` / `MmUnmapLockedPages`, of the
//! implicit releases by `MmUnlockPages` / `IoFreeMdl`, and of
//! `MmAllocateMappingAddress(Ex)` / `MmMapLockedPagesWithReservedMapping` /
//! `MmUnmapReservedMapping` / `MmFreeMappingAddress`. The engine's hooks for them are in
//! `verifier/mdl.rs`; this module is the data model they share with the control plane and
//! the client.
//!
//! # One table, three kinds
//! Every mapping lives in the same lock-free [`Table`](crate::table::Table), keyed by base
//! address. Its [`MappingKind`] is two bits of the entry's flags ([`FLAG_KIND_MDL`],
//! [`FLAG_KIND_RESERVED`]; neither = I/O space), so the I/O-space hot path stores and
//! loads exactly what it did before. The entry's fields mean, by kind:
//!
//! | field | I/O space | MDL | reserved range |
//! |---|---|---|---|
//! | `base` | returned VA | returned VA (with the MDL's byte offset) | `MmAllocateMappingAddress` result |
//! | `size` | bytes mapped | the MDL's `ByteCount` (0 if unreadable) | bytes reserved |
//! | `physical` | physical address | the MDL | the MDL mapped into it now (0 = none) |
//! | `cache` | cache type / protection | cache type | pool tag |
//! | `device` | device attributed | device attributed; with [`FLAG_USER`]: the process mapped into | device attributed |
//!
//! # What the documentation says, and what iosv makes of it
//! - `MmUnmapLockedPages`: IRQL <= DISPATCH_LEVEL for a system-space mapping, <= APC_LEVEL
//!   for a user-space one, and a user-space mapping must be unmapped in the context of the
//!   process it was mapped into
//!   (<https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmunmaplockedpages>):
//!   IOSV016, IOSV021.
//! - `MmUnlockPages`: "If the specified MDL is mapped to system address space,
//!   MmUnlockPages releases this mapping before it unlocks the pages"
//!   (<https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-mmunlockpages>);
//!   `MmGetSystemAddressForMdlSafe` (a macro over `MmMapLockedPagesSpecifyCache`, so iosv
//!   cannot tell it from an explicit call) says the same for locked MDLs. So a system-space
//!   mapping released by `MmUnlockPages` is an *implicit release*, not a violation (its
//!   entry leaves the table and a later `MmUnmapLockedPages` of it is a double unmap,
//!   IOSV005). A user-space mapping is not released by it: IOSV017.
//! - `IoFreeMdl` of a partial MDL whose mapping `MmPrepareMdlForReuse` releases
//!   (`MDL_PARTIAL_HAS_BEEN_MAPPED`; `IoFreeMdl` runs it first, as the WRK's does) is an
//!   implicit release too; any other live explicit mapping of the MDL at `IoFreeMdl` leaks
//!   its PTEs: IOSV017. `MmPrepareMdlForReuse` itself is a wdm.h macro that calls
//!   `MmUnmapLockedPages(Mdl->MappedSystemVa, Mdl)` for such an MDL: iosv sees (and checks)
//!   that unmap, not the macro.
//! - `MmFreeMappingAddress`: "If the memory range has already been mapped by
//!   MmMapLockedPagesWithReservedMapping, it must first be unmapped with
//!   MmUnmapReservedMapping" (IOSV018).
//!   `MmMapLockedPagesWithReservedMapping` returns NULL when the reserved range cannot
//!   span the MDL (IOSV020); mapping a range that is mapped already is IOSV019;
//!   `MmUnmapReservedMapping` with another MDL than the mapped one is bug check
//!   0xDA/0x02 territory (IOSV015), above DISPATCH_LEVEL IOSV016.
//!   Both release only the mapping the MDL records (`MappedSystemVa`); another system
//!   mapping of the same MDL stays mapped: IOSV017.
//! - A direct-I/O MDL's own system mapping ([`FLAG_MDL_DIRECT_IO`]) lives as long as the
//!   MDL's lock, and the I/O manager unlocks and frees a request's MDL at completion
//!   (after the driver's `MmGetSystemAddressForMdlSafe`), where iosv cannot see; pool then
//!   hands the MDL's address out again. Such a mapping is not reported as leaked, is
//!   dropped without IOSV013 when Mm hands its address out again, and is dropped without
//!   a report (and without any Mm call) when a release of its MDL finds that the MDL no
//!   longer records it.
//! - Leaks: the existing rules IOSV007 (stop), IOSV008 (removal) and IOSV009 (unload,
//!   detach) cover every kind (the record's `kind` says which), so each mapping is still
//!   reported once, by the first event that finds it live.
//!
//! # The MDL index
//! `IoFreeMdl` and `MmUnlockPages` run for every MDL in the system,
//! and almost none of those MDLs has an explicit mapping iosv tracks. [`MdlIndex`] is a
//! counting filter over MDL addresses (one `AtomicU32` per bucket, incremented when an MDL
//! mapping is tracked or an MDL is mapped into a reserved range, decremented when it
//! leaves the table or the range): a release of an MDL whose
//! bucket is zero costs one load; only a non-zero bucket walks the table.

#![forbid(unsafe_code)]

use crate::sync::{try_boxed_slice, AtomicU32, Ordering, OutOfMemory};
use alloc::boxed::Box;

/// Entry flag: an MDL mapping (wire value [`crate::protocol::MF_KIND_MDL`]).
pub const FLAG_KIND_MDL: u8 = 1 << 3;
/// Entry flag: a reserved range (wire value [`crate::protocol::MF_KIND_RESERVED`]).
pub const FLAG_KIND_RESERVED: u8 = 1 << 4;
/// Entry flag: an MDL mapping into user space; `device` holds the process id.
pub const FLAG_USER: u8 = 1 << 5;
/// Entry flag: a reserved range with an MDL mapped into it (`physical` holds the MDL).
pub const FLAG_RESERVED_MAPPED: u8 = 1 << 6;
/// Entry flag of an MDL mapping (the bit of [`FLAG_RESERVED_MAPPED`], which only reserved
/// ranges use): a system mapping of an MDL that locks pages of a process's user space
/// (`MmProbeAndLockPages` set its `Process`), recorded in the MDL as its own
/// (`MDL_MAPPED_TO_SYSTEM_VA`, `MappedSystemVa` the base) — the direct-I/O MDL of a
/// user-mode request, mapped by `MmGetSystemAddressForMdlSafe`. `MmUnlockPages` of the MDL
/// releases the mapping, and the I/O manager calls it at the request's completion, where
/// iosv cannot see: such a mapping is never reported as leaked, and is dropped silently
/// when its MDL no longer records it or Mm hands its address out again
/// ([`released_with_its_mdl`]).
pub const FLAG_MDL_DIRECT_IO: u8 = 1 << 6;
/// Entry flag: a reserved range allocated with [`MM_MAPPING_ADDRESS_DIVISIBLE`], or an
/// MDL mapping at a page inside such a range past its first (a *sub-range* mapping: its
/// own entry, kind reserved, [`FLAG_RESERVED_MAPPED`], `physical` the MDL, `size` the
/// MDL's pages; told from the range by the range's lower base around it).
pub const FLAG_RESERVED_DIVISIBLE: u8 = 1 << 7;
/// `MM_MAPPING_ADDRESS_DIVISIBLE`, the `MmAllocateMappingAddressEx` flag that lets MDLs be
/// mapped at any page-aligned address inside the range (Microsoft's MIDI drivers define
/// it as 1; a decompiled Windows kernel tests bit 0 of the range's flags).
pub const MM_MAPPING_ADDRESS_DIVISIBLE: u32 = 1;
/// The kind bits of an entry's flags.
pub const KIND_MASK: u8 = FLAG_KIND_MDL | FLAG_KIND_RESERVED;

/// `MDL_MAPPED_TO_SYSTEM_VA` (wdm.h).
pub const MDL_MAPPED_TO_SYSTEM_VA: u16 = 0x0001;
/// `MDL_PAGES_LOCKED` (wdm.h).
pub const MDL_PAGES_LOCKED: u16 = 0x0002;
/// `MDL_SOURCE_IS_NONPAGED_POOL` (wdm.h).
pub const MDL_SOURCE_IS_NONPAGED_POOL: u16 = 0x0004;
/// `MDL_PARTIAL` (wdm.h): built by `IoBuildPartialMdl`.
pub const MDL_PARTIAL: u16 = 0x0010;
/// `MDL_PARTIAL_HAS_BEEN_MAPPED` (wdm.h): `MmPrepareMdlForReuse` (and `IoFreeMdl`, which
/// calls it) releases the partial MDL's system mapping.
pub const MDL_PARTIAL_HAS_BEEN_MAPPED: u16 = 0x0020;

/// `KernelMode` (`KPROCESSOR_MODE`).
pub const KERNEL_MODE: u8 = 0;
/// `UserMode` (`KPROCESSOR_MODE`).
pub const USER_MODE: u8 = 1;

/// Bytes per page.
const PAGE: u64 = 0x1000;

/// What kind of mapping a table entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MappingKind {
    /// `MmMapIoSpace` / `MmMapIoSpaceEx`.
    IoSpace = 0,
    /// `MmMapLockedPagesSpecifyCache` / `MmMapLockedPages`.
    Mdl = 1,
    /// `MmAllocateMappingAddress(Ex)`, mapped or not.
    Reserved = 2,
}

impl MappingKind {
    /// The kind of an entry with these flags.
    pub const fn of(flags: u8) -> MappingKind {
        if flags & FLAG_KIND_MDL != 0 {
            MappingKind::Mdl
        } else if flags & FLAG_KIND_RESERVED != 0 {
            MappingKind::Reserved
        } else {
            MappingKind::IoSpace
        }
    }

    /// The kind with this wire value (`MK_*`).
    pub const fn from_u8(v: u8) -> Option<MappingKind> {
        match v {
            0 => Some(MappingKind::IoSpace),
            1 => Some(MappingKind::Mdl),
            2 => Some(MappingKind::Reserved),
            _ => None,
        }
    }

    /// Short lower-case name (`"io-space"`, `"mdl"`, `"reserved"`).
    pub const fn name(self) -> &'static str {
        match self {
            MappingKind::IoSpace => "io-space",
            MappingKind::Mdl => "mdl",
            MappingKind::Reserved => "reserved",
        }
    }
}

/// True if an entry with these flags is an I/O-space mapping (its `physical` and `cache`
/// describe device memory, and it takes part in cache-conflict checks).
pub const fn is_io_space(flags: u8) -> bool {
    flags & KIND_MASK == 0
}

/// True if an entry with these flags is a direct-I/O MDL's own system mapping
/// ([`FLAG_MDL_DIRECT_IO`]): released with its MDL, possibly where iosv cannot see.
pub const fn released_with_its_mdl(flags: u8) -> bool {
    flags & KIND_MASK == FLAG_KIND_MDL
        && flags & (FLAG_MDL_DIRECT_IO | FLAG_USER) == FLAG_MDL_DIRECT_IO
}

/// What the platform reads of an MDL's header (the documented `MDL` structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MdlInfo {
    /// `ByteCount`.
    pub byte_count: u32,
    /// `ByteOffset`.
    pub byte_offset: u32,
    /// `MdlFlags` (`MDL_*`).
    pub flags: u16,
    /// `MappedSystemVa` (meaningful with [`MDL_MAPPED_TO_SYSTEM_VA`]).
    pub mapped_system_va: u64,
    /// `Process`: the process whose user-space pages `MmProbeAndLockPages` locked (0 for
    /// system-space pages, or an MDL no probe locked).
    pub process: u64,
}

impl MdlInfo {
    /// Bytes of whole pages the MDL's buffer spans (`ADDRESS_AND_SIZE_TO_SPAN_PAGES` ×
    /// `PAGE_SIZE`); `None` on overflow.
    pub fn span_bytes(&self) -> Option<u64> {
        let end = u64::from(self.byte_offset % 0x1000).checked_add(u64::from(self.byte_count))?;
        end.checked_add(PAGE - 1).map(|e| e & !(PAGE - 1))
    }

    /// True if `MmPrepareMdlForReuse` (and so `IoFreeMdl`) releases this MDL's system
    /// mapping: a partial MDL whose mapping was made (`MDL_PARTIAL_HAS_BEEN_MAPPED`).
    pub const fn released_by_prepare_for_reuse(&self) -> bool {
        self.flags & MDL_PARTIAL != 0 && self.flags & MDL_PARTIAL_HAS_BEEN_MAPPED != 0
    }

    /// True if the MDL records the system mapping at `base` as its own
    /// (`MDL_MAPPED_TO_SYSTEM_VA`, `MappedSystemVa == base`: what `MmUnlockPages` and
    /// `MmPrepareMdlForReuse` release).
    pub const fn records(&self, base: u64) -> bool {
        self.flags & MDL_MAPPED_TO_SYSTEM_VA != 0 && self.mapped_system_va == base
    }
}

/// Which routine releases an MDL (see the module docs for what each releases by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MdlRelease {
    /// `IoFreeMdl`.
    Free,
    /// `MmUnlockPages`.
    Unlock,
}

impl MdlRelease {
    /// The routine's name.
    pub const fn routine(self) -> &'static str {
        match self {
            MdlRelease::Free => "IoFreeMdl",
            MdlRelease::Unlock => "MmUnlockPages",
        }
    }

    /// True if this routine releases the live explicit mapping at `base` (entry flags
    /// `entry_flags`) of an MDL described by `info` (`None`: the MDL could not be read)
    /// by itself: only the system mapping the MDL records (`MappedSystemVa`) —
    /// `MmUnlockPages` releases it if the MDL is mapped to system space,
    /// `MmPrepareMdlForReuse` (run by `IoFreeMdl`) if a partial MDL's mapping was made.
    /// Any other mapping of the MDL stays mapped. An MDL that cannot be read is taken to
    /// record the mapping for `MmUnlockPages` (no report on a guess).
    pub fn releases(self, base: u64, entry_flags: u8, info: Option<MdlInfo>) -> bool {
        if entry_flags & FLAG_USER != 0 {
            // No MDL routine releases a user-space mapping.
            return false;
        }
        match self {
            MdlRelease::Unlock => info.is_none_or(|i| i.records(base)),
            MdlRelease::Free => {
                info.is_some_and(|i| i.released_by_prepare_for_reuse() && i.records(base))
            }
        }
    }
}

/// Buckets of the [`MdlIndex`].
#[cfg(not(loom))]
pub const MDL_INDEX_BUCKETS: usize = 4096;
/// Under loom: a tiny index, so collisions are explored.
#[cfg(loom)]
pub const MDL_INDEX_BUCKETS: usize = 2;

/// A counting filter over the MDLs of live MDL mappings and of MDLs mapped into reserved
/// ranges (module docs). Never gives a false negative while every tracked MDL mapping
/// was added once and removed at most once:
/// [`MdlIndex::may_hold`] is true for every MDL with a live tracked mapping. Each
/// operation is one atomic instruction (no retry loop); nothing waits.
pub struct MdlIndex {
    buckets: Box<[AtomicU32]>,
}

impl MdlIndex {
    /// An empty index (allocates [`MDL_INDEX_BUCKETS`] counters once).
    pub fn new() -> Result<MdlIndex, OutOfMemory> {
        Ok(MdlIndex {
            buckets: try_boxed_slice(MDL_INDEX_BUCKETS, |_| AtomicU32::new(0))?,
        })
    }

    fn bucket(&self, mdl: u64) -> Option<&AtomicU32> {
        // MDLs are pool allocations (16-byte aligned at least): drop the low bits, then
        // Fibonacci hashing.
        let h = (mdl >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let i = (u128::from(h).wrapping_mul(self.buckets.len() as u128) >> 64) as usize;
        self.buckets.get(i)
    }

    /// Counts a live mapping of `mdl` (one atomic add: no retry loop on a hook path). A
    /// bucket cannot reach 2^32: the table holds far fewer mappings.
    pub fn add(&self, mdl: u64) {
        if let Some(b) = self.bucket(mdl) {
            b.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Uncounts a live mapping of `mdl` that left the table (one atomic subtract). The
    /// engine removes only what it added; were it ever not so, the bucket would wrap to a
    /// large count: false positives (walks) for its MDLs, never a false negative.
    pub fn remove(&self, mdl: u64) {
        if let Some(b) = self.bucket(mdl) {
            b.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// False only if no live mapping of `mdl` is counted.
    pub fn may_hold(&self, mdl: u64) -> bool {
        self.bucket(mdl)
            .is_some_and(|b| b.load(Ordering::Acquire) != 0)
    }
}

/// Fills the family's fields of a LIST_MAPPINGS record from entry `m` (its `kind`, and
/// for the MDL and reserved kinds the MDL and process kept in `physical` and `device`).
pub fn fill_record(rec: &mut crate::protocol::MappingRecord, m: &crate::table::Mapping) {
    rec.kind = MappingKind::of(m.flags) as u8;
    if is_io_space(m.flags) {
        return;
    }
    rec.mdl = m.physical;
    rec.physical = 0;
    if m.flags & FLAG_USER != 0 {
        rec.process_id = m.device;
        rec.device = 0;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_flags_match_the_wire() {
        use crate::protocol::{
            MF_KIND_MDL, MF_KIND_RESERVED, MF_MDL_DIRECT_IO, MF_RESERVED_DIVISIBLE,
            MF_RESERVED_MAPPED, MF_USER,
        };
        assert_eq!(FLAG_MDL_DIRECT_IO, MF_MDL_DIRECT_IO);
        assert_eq!(FLAG_RESERVED_DIVISIBLE, MF_RESERVED_DIVISIBLE);
        assert_eq!(FLAG_KIND_MDL, MF_KIND_MDL);
        assert_eq!(FLAG_KIND_RESERVED, MF_KIND_RESERVED);
        assert_eq!(FLAG_USER, MF_USER);
        assert_eq!(FLAG_RESERVED_MAPPED, MF_RESERVED_MAPPED);
        for k in [
            MappingKind::IoSpace,
            MappingKind::Mdl,
            MappingKind::Reserved,
        ] {
            assert_eq!(MappingKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(MappingKind::of(0), MappingKind::IoSpace);
        assert_eq!(MappingKind::of(FLAG_KIND_MDL | FLAG_USER), MappingKind::Mdl);
        assert_eq!(MappingKind::of(FLAG_KIND_RESERVED), MappingKind::Reserved);
        assert!(is_io_space(
            crate::table::FLAG_MAP_EX | crate::table::FLAG_LEAK_REPORTED
        ));
        assert!(!is_io_space(FLAG_KIND_RESERVED));
    }

    #[test]
    fn span_counts_whole_pages_from_the_byte_offset() {
        let i = |off, count| MdlInfo {
            byte_offset: off,
            byte_count: count,
            ..Default::default()
        };
        assert_eq!(i(0, 0x1000).span_bytes(), Some(0x1000));
        assert_eq!(i(0x800, 0x1000).span_bytes(), Some(0x2000));
        assert_eq!(i(0xFFF, 1).span_bytes(), Some(0x1000));
        assert_eq!(i(0, 0).span_bytes(), Some(0));
    }

    #[test]
    fn which_release_releases_what() {
        const VA: u64 = 0xFFFF_D000_0000_0200;
        let partial = Some(MdlInfo {
            flags: MDL_PARTIAL | MDL_PARTIAL_HAS_BEEN_MAPPED | MDL_MAPPED_TO_SYSTEM_VA,
            mapped_system_va: VA,
            ..Default::default()
        });
        let locked = Some(MdlInfo {
            flags: MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA,
            mapped_system_va: VA,
            ..Default::default()
        });
        let unmapped = Some(MdlInfo {
            flags: MDL_PAGES_LOCKED,
            ..Default::default()
        });
        let k = FLAG_KIND_MDL;
        assert!(MdlRelease::Unlock.releases(VA, k, locked));
        assert!(MdlRelease::Unlock.releases(VA, k, None));
        // Only the mapping the MDL records: not a second one, not one it no longer maps.
        assert!(!MdlRelease::Unlock.releases(VA + 0x1000, k, locked));
        assert!(!MdlRelease::Unlock.releases(VA, k, unmapped));
        assert!(!MdlRelease::Unlock.releases(VA, k | FLAG_USER, locked));
        assert!(!MdlRelease::Free.releases(VA, k, locked));
        assert!(MdlRelease::Free.releases(VA, k, partial));
        assert!(!MdlRelease::Free.releases(VA + 0x1000, k, partial));
        assert!(!MdlRelease::Free.releases(VA, k, None));
        assert!(released_with_its_mdl(k | FLAG_MDL_DIRECT_IO));
        assert!(!released_with_its_mdl(k | FLAG_MDL_DIRECT_IO | FLAG_USER));
        assert!(!released_with_its_mdl(
            FLAG_KIND_RESERVED | FLAG_RESERVED_MAPPED
        ));
        assert!(!released_with_its_mdl(k));
    }

    #[test]
    fn index_counts_and_never_forgets_a_live_mdl() {
        let ix = MdlIndex::new().unwrap();
        assert!(!ix.may_hold(0xFFFF_C000_0000_1000));
        ix.add(0xFFFF_C000_0000_1000);
        ix.add(0xFFFF_C000_0000_1000);
        ix.remove(0xFFFF_C000_0000_1000);
        assert!(ix.may_hold(0xFFFF_C000_0000_1000));
        ix.remove(0xFFFF_C000_0000_1000);
        assert!(!ix.may_hold(0xFFFF_C000_0000_1000));
        // An unmatched remove (the engine makes none) errs on the side of "maybe".
        ix.remove(0xFFFF_C000_0000_1000);
        assert!(ix.may_hold(0xFFFF_C000_0000_1000));
    }
}
