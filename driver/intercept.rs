//! The interception plan: which IAT slots of one loaded image are redirected to iosv's
//! hooks, what they held before, and how to put it back.
//!
//! A [`Plan`] is built from the slots [`pe`](crate::pe) found in an image, the address at
//! which the image is loaded, and the address of each hook ([`Hooks`]). It holds at most
//! [`MAX_PATCHES`] patches and never allocates. [`Plan::attach`] points every slot at its
//! hook and records the value it replaced; [`Plan::detach`] puts exactly that value back.
//! Both touch memory only through [`SlotAccess`], the platform's one pointer-sized
//! compare-and-exchange on a slot, so that a slot another party changed meanwhile is
//! reported and left alone, never overwritten:
//!
//! - attach is idempotent: a slot that already holds one of our hooks is not patched again
//!   and that hook is never recorded as an original;
//! - attach leaves alone a slot the loader has not bound yet (it still holds its import
//!   lookup entry), so such a value is never recorded as an original either;
//! - detach restores only slots that still hold our hook; any other slot is refused and
//!   reported, with its recorded original kept for a later try.
//!
//! On x86-64 a `Plan` takes 696 bytes and a [`Report`] 520, wherever the caller keeps them
//! (e.g. in the per-image state allocated at load). Each call reports one [`SlotOutcome`]
//! per patch. Attach does not roll back by itself:
//! after a partial attach, [`Plan::detach`] restores what was patched. Draining hooks that
//! are still running after detach is the caller's job.
//!
//! [`system_routine_override`] is the portable body of the `MmGetSystemRoutineAddress`
//! hook: it says which hook to hand out instead of a hooked routine.
//!
//! # Example
//!
//! ```
//! use core::cell::Cell;
//! use iosv::intercept::{Hooks, Outcome, Plan, SlotAccess, SlotWriteError};
//! use iosv::pe::{HookedRoutine, IatSlot};
//!
//! /// A one-slot "image" at address 0x1000.
//! struct OneSlot(Cell<usize>);
//! impl SlotAccess for OneSlot {
//!     unsafe fn read_slot(&self, _address: usize) -> usize {
//!         self.0.get()
//!     }
//!     unsafe fn compare_exchange_slot(
//!         &self,
//!         _address: usize,
//!         current: usize,
//!         new: usize,
//!     ) -> Result<(), SlotWriteError> {
//!         if self.0.get() != current {
//!             return Err(SlotWriteError::Changed { found: self.0.get() });
//!         }
//!         self.0.set(new);
//!         Ok(())
//!     }
//! }
//!
//! let hooks = Hooks {
//!     map_io_space: 0xA0,
//!     map_io_space_ex: 0xB0,
//!     unmap_io_space: 0xC0,
//!     get_system_routine_address: 0xD0,
//! };
//! let slot = IatSlot { rva: 0, routine: HookedRoutine::UnmapIoSpace, ..IatSlot::EMPTY };
//! let mut plan = Plan::new(0x1000, 8, &[slot], &hooks).unwrap();
//! let memory = OneSlot(Cell::new(0x5555));
//!
//! // SAFETY: the plan's one slot (0x1000) is `memory`'s cell, which lives to the end of
//! // the example; OneSlot's accessors touch only that cell, and the hook 0xC0 is never
//! // called through it.
//! let report = unsafe { plan.attach(&memory) };
//! assert_eq!(report.outcomes()[0].outcome, Outcome::Patched { original: 0x5555 });
//! assert_eq!(memory.0.get(), 0xC0);
//! // SAFETY: the same live cell; detach writes back 0x5555, the value attach found there.
//! let report = unsafe { plan.detach(&memory) };
//! assert_eq!(report.outcomes()[0].outcome, Outcome::Restored { original: 0x5555 });
//! assert_eq!(memory.0.get(), 0x5555);
//! ```

// The crate's no-panic lints (driver/lib.rs) hold here as in all the kernel's non-test
// code. This module computes slot addresses inside a live image, so it also refuses `as`
// casts (a silent truncation is an out-of-bounds address); its tests allow them again.
#![deny(clippy::as_conversions)]

use core::fmt;

use crate::pe::{HookedRoutine, IatSlot, OrdinalResolver, PeError, PeImage, ScanSummary};

/// Most patches one [`Plan`] holds.
pub const MAX_PATCHES: usize = 32;

/// Size and required alignment of an IAT slot: one pointer.
pub const SLOT_SIZE: usize = core::mem::size_of::<usize>();

/// Longest routine name, in UTF-16 units, that [`system_routine_override`] compares;
/// longer names cannot be a hooked routine and are passed through.
pub const MAX_ROUTINE_NAME_UNITS: usize = 64;

/// Why [`SlotAccess::compare_exchange_slot`] did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotWriteError {
    /// The slot did not hold the expected value; nothing was written.
    Changed {
        /// The value the slot held.
        found: usize,
    },
    /// The platform could not make the slot writable or write it; nothing was written.
    Failed,
}

/// How the engine reads and writes IAT slots: the platform's part of interception.
///
/// Addresses are absolute virtual addresses of pointer-sized, pointer-aligned slots.
pub trait SlotAccess {
    /// Reads the slot at `address`.
    ///
    /// # Safety
    ///
    /// `address` is a pointer-aligned IAT slot inside an image that is loaded, and stays
    /// loaded for the duration of the call.
    unsafe fn read_slot(&self, address: usize) -> usize;

    /// Replaces the value of the slot at `address` with `new` if it is `current`, as one
    /// atomic pointer-sized compare-and-exchange. The platform makes the slot writable
    /// for the write (IATs are usually read-only), writes it atomically so that a
    /// concurrent call through the slot sees either value, and restores the protection.
    ///
    /// # Errors
    ///
    /// [`SlotWriteError::Changed`] when the slot does not hold `current`,
    /// [`SlotWriteError::Failed`] when it cannot be written; in both cases nothing was
    /// written.
    ///
    /// # Safety
    ///
    /// As for [`read_slot`](Self::read_slot); in addition, `new` is an address that the
    /// image may call through the slot (a hook, or the value the slot held before).
    unsafe fn compare_exchange_slot(
        &self,
        address: usize,
        current: usize,
        new: usize,
    ) -> Result<(), SlotWriteError>;
}

/// Why iosv refuses to write an import slot. A refused plan is reported (per driver in
/// `iosvctl status`, and as the status of `iosvctl attach`) and nothing of it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SiteRefusal {
    /// The slot lies in no section of the image.
    OutsideSections = 1,
    /// The slot lies in a code section (the IAT merged into `.text`): code pages are
    /// never writable under HVCI, and iosv keeps W^X without it too.
    ExecutableSection = 2,
    /// The slot lies in a discardable section (`INIT`), freed after `DriverEntry`.
    DiscardableSection = 3,
    /// The slot lies in a pageable section (`PAGE*`).
    PageableSection = 4,
    /// The slot's page is not resident.
    NotResident = 5,
    /// The slot is not bound yet (holds an RVA or an ordinal, not a routine's address):
    /// the loader would overwrite a patch.
    Unbound = 6,
    /// The platform could not lock, map or re-protect the slot's page (e.g. a page the
    /// hypervisor protects); nothing was written.
    WriteRefused = 7,
    /// The image's driver object could not be found and referenced, so nothing keeps
    /// the image loaded while it is read and patched (late attach only).
    NoDriverObject = 8,
}

impl SiteRefusal {
    /// Every refusal, in code order.
    pub const ALL: [Self; 8] = [
        Self::OutsideSections,
        Self::ExecutableSection,
        Self::DiscardableSection,
        Self::PageableSection,
        Self::NotResident,
        Self::Unbound,
        Self::WriteRefused,
        Self::NoDriverObject,
    ];

    /// The wire code (`DriverStats::hook_refusal`); 0 means none.
    #[must_use]
    #[allow(clippy::as_conversions)] // a fieldless `repr(u32)` enum: its discriminant
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The refusal with wire code `code`.
    #[must_use]
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// One line for people.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::OutsideSections => "an import slot lies outside every section",
            Self::ExecutableSection => {
                "the import table lies in a code section (never written: W^X, HVCI)"
            }
            Self::DiscardableSection => "the import table lies in a discardable (INIT) section",
            Self::PageableSection => "the import table lies in a pageable (PAGE*) section",
            Self::NotResident => "an import slot's page is not resident",
            Self::Unbound => "an import slot is not bound yet",
            Self::WriteRefused => "the kernel refused to lock, map or re-protect a slot's page",
            Self::NoDriverObject => {
                "no driver object \\Driver\\<name> keeps the image loaded; attach through the filter"
            }
        }
    }
}

/// Start of the kernel half of the x64 and ARM64 address spaces: a bound import slot
/// holds an address at or above this; an unbound one holds an RVA or an ordinal.
pub const KERNEL_SPACE_START: usize = 0xFFFF_8000_0000_0000;

/// Whether an import slot's value is a bound kernel-mode routine address.
#[must_use]
pub const fn is_bound_value(value: usize) -> bool {
    value >= KERNEL_SPACE_START
}

/// Checks one slot's site before anything is written: the section it lies in (`None`:
/// none), whether its page is resident, and whether the value it holds is a bound
/// routine address (or one of iosv's hooks). Portable: the Windows glue and the host
/// call it with what their memory says.
///
/// # Errors
///
/// The first [`SiteRefusal`] that applies, in the order of the enum.
pub fn check_site(
    section: Option<&crate::pe::Section>,
    resident: bool,
    bound: bool,
) -> Result<(), SiteRefusal> {
    let section = section.ok_or(SiteRefusal::OutsideSections)?;
    if section.is_executable() {
        return Err(SiteRefusal::ExecutableSection);
    }
    if section.is_discardable() {
        return Err(SiteRefusal::DiscardableSection);
    }
    if section.is_pageable() {
        return Err(SiteRefusal::PageableSection);
    }
    if !resident {
        return Err(SiteRefusal::NotResident);
    }
    if !bound {
        return Err(SiteRefusal::Unbound);
    }
    Ok(())
}

/// The address of iosv's hook for each [`HookedRoutine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// Hook of `MmMapIoSpace`.
    pub map_io_space: usize,
    /// Hook of `MmMapIoSpaceEx`.
    pub map_io_space_ex: usize,
    /// Hook of `MmUnmapIoSpace`.
    pub unmap_io_space: usize,
    /// Hook of `MmGetSystemRoutineAddress`.
    pub get_system_routine_address: usize,
}

/// The hooks of the MDL and reserved-mapping family (issue 11, [`crate::mdl`]). A 0 hook
/// means the platform does not hook that routine: its slots are left alone and
/// `MmGetSystemRoutineAddress` hands out the real routine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdlHooks {
    /// Hook of `MmMapLockedPagesSpecifyCache`.
    pub map_locked_pages_specify_cache: usize,
    /// Hook of `MmMapLockedPages`.
    pub map_locked_pages: usize,
    /// Hook of `MmUnmapLockedPages`.
    pub unmap_locked_pages: usize,
    /// Hook of `IoFreeMdl`.
    pub free_mdl: usize,
    /// Hook of `MmUnlockPages`.
    pub unlock_pages: usize,
    /// Hook of `MmAllocateMappingAddress`.
    pub allocate_mapping_address: usize,
    /// Hook of `MmAllocateMappingAddressEx`.
    pub allocate_mapping_address_ex: usize,
    /// Hook of `MmMapLockedPagesWithReservedMapping`.
    pub map_locked_pages_with_reserved_mapping: usize,
    /// Hook of `MmUnmapReservedMapping`.
    pub unmap_reserved_mapping: usize,
    /// Hook of `MmFreeMappingAddress`.
    pub free_mapping_address: usize,
}

impl MdlHooks {
    /// The family is not hooked.
    pub const NONE: MdlHooks = MdlHooks {
        map_locked_pages_specify_cache: 0,
        map_locked_pages: 0,
        unmap_locked_pages: 0,
        free_mdl: 0,
        unlock_pages: 0,
        allocate_mapping_address: 0,
        allocate_mapping_address_ex: 0,
        map_locked_pages_with_reserved_mapping: 0,
        unmap_reserved_mapping: 0,
        free_mapping_address: 0,
    };
}

/// Every hook: the I/O-space routines' and `MmGetSystemRoutineAddress`'s ([`Hooks`]) and
/// the MDL family's ([`MdlHooks`]). What a platform that hooks the family passes to
/// [`Plan::new`], [`Plan::for_image`] and [`system_routine_override`] (a plain [`Hooks`]
/// there means the family is not hooked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookTable {
    /// The I/O-space routines and `MmGetSystemRoutineAddress`.
    pub io: Hooks,
    /// The MDL and reserved-mapping family.
    pub mdl: MdlHooks,
}

/// A set of hooks the plan and the `MmGetSystemRoutineAddress` body accept: [`Hooks`]
/// (the family not hooked) or a [`HookTable`].
pub trait HookSet {
    /// Every hook, as a table.
    fn table(&self) -> HookTable;
}

impl HookSet for Hooks {
    fn table(&self) -> HookTable {
        HookTable {
            io: *self,
            mdl: MdlHooks::NONE,
        }
    }
}

impl HookSet for HookTable {
    fn table(&self) -> HookTable {
        *self
    }
}

impl Hooks {
    /// The hook of `routine` (0 for a routine of the MDL family: see [`HookTable`]).
    #[must_use]
    pub const fn get(&self, routine: HookedRoutine) -> usize {
        match routine {
            HookedRoutine::MapIoSpace => self.map_io_space,
            HookedRoutine::MapIoSpaceEx => self.map_io_space_ex,
            HookedRoutine::UnmapIoSpace => self.unmap_io_space,
            HookedRoutine::GetSystemRoutineAddress => self.get_system_routine_address,
            _ => 0,
        }
    }

    /// The routine whose hook is at `address`, if any (never for address 0).
    #[must_use]
    pub fn routine_at(&self, address: usize) -> Option<HookedRoutine> {
        self.table().routine_at(address)
    }
}

impl HookTable {
    /// The hook of `routine` (0 for a routine of the MDL family the platform does not
    /// hook).
    #[must_use]
    pub const fn get(&self, routine: HookedRoutine) -> usize {
        let m = &self.mdl;
        match routine {
            HookedRoutine::MapIoSpace
            | HookedRoutine::MapIoSpaceEx
            | HookedRoutine::UnmapIoSpace
            | HookedRoutine::GetSystemRoutineAddress => self.io.get(routine),
            HookedRoutine::MapLockedPagesSpecifyCache => m.map_locked_pages_specify_cache,
            HookedRoutine::MapLockedPages => m.map_locked_pages,
            HookedRoutine::UnmapLockedPages => m.unmap_locked_pages,
            HookedRoutine::FreeMdl => m.free_mdl,
            HookedRoutine::UnlockPages => m.unlock_pages,
            HookedRoutine::AllocateMappingAddress => m.allocate_mapping_address,
            HookedRoutine::AllocateMappingAddressEx => m.allocate_mapping_address_ex,
            HookedRoutine::MapLockedPagesWithReservedMapping => {
                m.map_locked_pages_with_reserved_mapping
            }
            HookedRoutine::UnmapReservedMapping => m.unmap_reserved_mapping,
            HookedRoutine::FreeMappingAddress => m.free_mapping_address,
        }
    }

    /// The routine whose hook is at `address`, if any (never for address 0).
    #[must_use]
    pub fn routine_at(&self, address: usize) -> Option<HookedRoutine> {
        if address == 0 {
            return None;
        }
        HookedRoutine::ALL
            .into_iter()
            .find(|&routine| self.get(routine) == address)
    }
}

/// Why a [`Plan`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// The image could not be scanned.
    Image(PeError),
    /// More than [`MAX_PATCHES`] distinct slots.
    TooManySlots,
    /// The hook of `routine` is address 0.
    NullHook {
        /// The routine.
        routine: HookedRoutine,
    },
    /// The slot at `rva` does not lie inside the image.
    SlotOutOfImage {
        /// RVA of the slot.
        rva: u32,
    },
    /// The slot at `rva` is not pointer-aligned, so it cannot be written atomically.
    MisalignedSlot {
        /// RVA of the slot.
        rva: u32,
    },
    /// Two slots at the same `rva` import different routines.
    ConflictingSlot {
        /// RVA of the slot.
        rva: u32,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Image(error) => write!(f, "cannot scan the image: {error}"),
            Self::TooManySlots => write!(f, "more than {MAX_PATCHES} IAT slots to patch"),
            Self::NullHook { routine } => write!(f, "no hook address for {}", routine.name()),
            Self::SlotOutOfImage { rva } => {
                write!(f, "IAT slot at RVA {rva:#x} is outside the image")
            }
            Self::MisalignedSlot { rva } => {
                write!(f, "IAT slot at RVA {rva:#x} is not pointer-aligned")
            }
            Self::ConflictingSlot { rva } => {
                write!(f, "IAT slot at RVA {rva:#x} is listed for two routines")
            }
        }
    }
}

impl core::error::Error for PlanError {}

impl From<PeError> for PlanError {
    fn from(error: PeError) -> Self {
        match error {
            PeError::OutputFull { .. } => Self::TooManySlots,
            other => Self::Image(other),
        }
    }
}

/// One slot of a [`Plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Absolute address of the slot.
    pub address: usize,
    /// The routine the slot imports.
    pub routine: HookedRoutine,
    /// The hook the slot is pointed at.
    pub hook: usize,
    /// Whether the slot belongs to a delay-load descriptor.
    pub delay_load: bool,
    /// The value this plan replaced, while attached.
    original: Option<usize>,
}

impl Patch {
    const EMPTY: Self = Self {
        address: 0,
        routine: HookedRoutine::MapIoSpace,
        hook: 0,
        delay_load: false,
        original: None,
    };

    /// The value this plan replaced in the slot, while the patch is attached.
    #[must_use]
    pub const fn original(&self) -> Option<usize> {
        self.original
    }

    /// Whether this plan patched the slot and has not restored it yet.
    #[must_use]
    pub const fn is_attached(&self) -> bool {
        self.original.is_some()
    }
}

/// What attach or detach did to one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Attach: the slot now holds the hook; it held `original`.
    Patched {
        /// The value replaced, recorded for detach.
        original: usize,
    },
    /// Attach: this plan had patched the slot already and it still holds the hook.
    AlreadyAttached,
    /// Attach: the slot already holds one of the hooks, put there by someone else (e.g.
    /// another plan). Not patched, nothing recorded: this plan will not restore it.
    AlreadyHooked {
        /// The routine whose hook the slot holds.
        hook_of: HookedRoutine,
    },
    /// Attach: the slot still holds an import lookup entry — a hint/name RVA (below the
    /// image size) or an ordinal thunk — not an address: the loader has not bound it yet.
    /// Not patched: restoring such a value at detach would break the image.
    NotBound {
        /// The value the slot holds.
        found: usize,
    },
    /// Detach: the slot holds `original` again.
    Restored {
        /// The value put back.
        original: usize,
    },
    /// Detach: this plan had not patched the slot; nothing to do.
    NotAttached,
    /// The slot no longer holds this plan's hook: someone replaced it. Left alone; the
    /// recorded original is kept.
    Changed {
        /// The value the slot holds.
        found: usize,
    },
    /// Attach: the slot changed between the read and the compare-and-exchange. Left
    /// alone, nothing recorded.
    Raced {
        /// The value the slot holds.
        found: usize,
    },
    /// The platform could not write the slot. Left alone.
    WriteFailed,
}

impl Outcome {
    /// Whether the slot is not in the state the call was asked to reach.
    #[must_use]
    pub const fn is_error(&self) -> bool {
        matches!(
            self,
            Self::NotBound { .. } | Self::Changed { .. } | Self::Raced { .. } | Self::WriteFailed
        )
    }
}

/// One phrase per outcome, for a report line about the slot ("... hooked (was 0x...)").
impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Patched { original } => write!(f, "hooked (was {original:#x})"),
            Self::AlreadyAttached => f.write_str("already hooked by this plan"),
            Self::AlreadyHooked { hook_of } => {
                write!(f, "already holds the hook of {}", hook_of.name())
            }
            Self::NotBound { found } => {
                write!(f, "not bound yet (holds the import entry {found:#x})")
            }
            Self::Restored { original } => write!(f, "restored to {original:#x}"),
            Self::NotAttached => f.write_str("not hooked by this plan"),
            Self::Changed { found } => {
                write!(f, "changed by someone else (holds {found:#x}); left alone")
            }
            Self::Raced { found } => {
                write!(
                    f,
                    "changed while being patched (holds {found:#x}); left alone"
                )
            }
            Self::WriteFailed => f.write_str("could not be written"),
        }
    }
}

/// The outcome for one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotOutcome {
    /// Absolute address of the slot.
    pub address: usize,
    /// The routine the slot imports.
    pub routine: HookedRoutine,
    /// What happened.
    pub outcome: Outcome,
}

/// One [`SlotOutcome`] per patch of the plan, in plan order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    outcomes: [SlotOutcome; MAX_PATCHES],
    len: usize,
}

impl Report {
    const fn new() -> Self {
        Self {
            outcomes: [SlotOutcome {
                address: 0,
                routine: HookedRoutine::MapIoSpace,
                outcome: Outcome::NotAttached,
            }; MAX_PATCHES],
            len: 0,
        }
    }

    fn push(&mut self, outcome: SlotOutcome) {
        if let Some(entry) = self.outcomes.get_mut(self.len) {
            *entry = outcome;
            self.len = self.len.saturating_add(1);
        }
    }

    /// The outcomes.
    #[must_use]
    pub fn outcomes(&self) -> &[SlotOutcome] {
        self.outcomes.get(..self.len).unwrap_or(&[])
    }

    /// How many slots a detach put back ([`Outcome::Restored`]).
    #[must_use]
    pub fn restored(&self) -> usize {
        self.outcomes()
            .iter()
            .filter(|entry| matches!(entry.outcome, Outcome::Restored { .. }))
            .count()
    }

    /// How many outcomes are errors ([`Outcome::is_error`]).
    #[must_use]
    pub fn errors(&self) -> usize {
        self.outcomes()
            .iter()
            .filter(|entry| entry.outcome.is_error())
            .count()
    }

    /// Whether no outcome is an error.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.errors() == 0
    }
}

/// The patches of one loaded image. See the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    image_base: usize,
    image_size: usize,
    hooks: HookTable,
    patches: [Patch; MAX_PATCHES],
    len: usize,
}

impl Plan {
    /// Builds a plan from `slots` found in the image loaded at `image_base`, which is
    /// `image_size` bytes long. Duplicate slots are merged.
    ///
    /// # Errors
    ///
    /// A [`PlanError`] when a hook of the I/O-space routines or `MmGetSystemRoutineAddress`
    /// is 0 (the MDL family's may be: their slots are then skipped), a slot is outside the
    /// image or misaligned, two
    /// slots conflict, or there are more than [`MAX_PATCHES`].
    pub fn new(
        image_base: usize,
        image_size: usize,
        slots: &[IatSlot<'_>],
        hooks: &impl HookSet,
    ) -> Result<Self, PlanError> {
        let hooks = &hooks.table();
        if let Some(routine) = HookedRoutine::ALL
            .into_iter()
            .find(|&routine| !routine.is_mdl_family() && hooks.get(routine) == 0)
        {
            return Err(PlanError::NullHook { routine });
        }
        let mut plan = Self {
            image_base,
            image_size,
            hooks: *hooks,
            patches: [Patch::EMPTY; MAX_PATCHES],
            len: 0,
        };
        for slot in slots {
            if hooks.get(slot.routine) == 0 {
                // A routine of the MDL family this platform does not hook: left alone.
                continue;
            }
            let rva = slot.rva;
            let offset = usize::try_from(rva).map_err(|_| PlanError::SlotOutOfImage { rva })?;
            let inside = offset
                .checked_add(SLOT_SIZE)
                .is_some_and(|end| end <= image_size);
            let address = image_base
                .checked_add(offset)
                .filter(|_| inside)
                .ok_or(PlanError::SlotOutOfImage { rva })?;
            if address % SLOT_SIZE != 0 {
                return Err(PlanError::MisalignedSlot { rva });
            }
            if let Some(existing) = plan.patches().iter().find(|p| p.address == address) {
                if existing.routine == slot.routine {
                    continue;
                }
                return Err(PlanError::ConflictingSlot { rva });
            }
            let entry = plan
                .patches
                .get_mut(plan.len)
                .ok_or(PlanError::TooManySlots)?;
            *entry = Patch {
                address,
                routine: slot.routine,
                hook: hooks.get(slot.routine),
                delay_load: slot.delay_load,
                original: None,
            };
            plan.len = plan.len.saturating_add(1);
        }
        Ok(plan)
    }

    /// Scans `image` (loaded at `image_base`) with [`PeImage::find_hooked_slots`] and
    /// builds the plan of its slots.
    ///
    /// # Errors
    ///
    /// [`PlanError::Image`] when the scan fails, otherwise as [`Plan::new`].
    pub fn for_image(
        image_base: usize,
        image: &PeImage<'_>,
        resolver: Option<&dyn OrdinalResolver>,
        hooks: &impl HookSet,
    ) -> Result<(Self, ScanSummary), PlanError> {
        let mut slots = [IatSlot::EMPTY; MAX_PATCHES];
        let summary = image.find_hooked_slots(resolver, &mut slots)?;
        let found = slots.get(..summary.slots).unwrap_or(&[]);
        let size = usize::try_from(image.size_of_image()).unwrap_or(0);
        let plan = Self::new(image_base, size, found, hooks)?;
        Ok((plan, summary))
    }

    /// The address the image is loaded at.
    #[must_use]
    pub const fn image_base(&self) -> usize {
        self.image_base
    }

    /// The size of the image in bytes.
    #[must_use]
    pub const fn image_size(&self) -> usize {
        self.image_size
    }

    /// The hooks of the I/O-space routines and `MmGetSystemRoutineAddress` the plan
    /// points slots at.
    #[must_use]
    pub const fn hooks(&self) -> &Hooks {
        &self.hooks.io
    }

    /// Every hook the plan points slots at, the MDL family's included.
    #[must_use]
    pub const fn table(&self) -> &HookTable {
        &self.hooks
    }

    /// The patches, in slot order.
    #[must_use]
    pub fn patches(&self) -> &[Patch] {
        self.patches.get(..self.len).unwrap_or(&[])
    }

    /// Checks every slot of the plan with [`check_site`] before anything is written:
    /// `resident(address)` says whether the slot's page is resident and
    /// `bound(value)` whether a slot value is a bound routine address. A slot this plan
    /// already patched passes (it holds a hook).
    ///
    /// # Errors
    ///
    /// The first slot's [`SiteRefusal`].
    ///
    /// # Safety
    ///
    /// As for [`SlotAccess::read_slot`]: the image is loaded at the plan's base and stays
    /// loaded for the call.
    pub unsafe fn check_sites<A: SlotAccess + ?Sized>(
        &self,
        image: &PeImage<'_>,
        access: &A,
        resident: impl Fn(usize) -> bool,
        bound: impl Fn(usize) -> bool,
    ) -> Result<(), SiteRefusal> {
        for patch in self.patches() {
            let section = patch
                .address
                .checked_sub(self.image_base)
                .and_then(|rva| u32::try_from(rva).ok())
                .and_then(|rva| image.section_of_rva(rva));
            let is_resident = resident(patch.address);
            let is_bound = patch.is_attached()
                || (is_resident && {
                    // SAFETY: per this function's contract; resident checked just above.
                    let value = unsafe { access.read_slot(patch.address) };
                    bound(value) || self.hooks.routine_at(value).is_some()
                });
            check_site(section.as_ref(), is_resident, is_bound)?;
        }
        Ok(())
    }

    /// Whether any patch is attached.
    #[must_use]
    pub fn is_attached(&self) -> bool {
        self.patches().iter().any(Patch::is_attached)
    }

    /// Points every slot at its hook, recording what it held. Idempotent: see
    /// [`Outcome`] for what happens to each slot.
    ///
    /// # Safety
    ///
    /// The image this plan was built for is loaded at [`image_base`](Self::image_base)
    /// and stays loaded for the call, and every hook is ready to be called.
    pub unsafe fn attach<A: SlotAccess + ?Sized>(&mut self, access: &A) -> Report {
        let hooks = self.hooks;
        let len = self.len;
        let mut report = Report::new();
        for patch in self.patches.iter_mut().take(len) {
            let address = patch.address;
            // SAFETY: `address` lies inside the image and is pointer-aligned (checked in
            // `new`), and the caller guarantees the image is loaded at `image_base`.
            let current = unsafe { access.read_slot(address) };
            let outcome = if patch.original.is_some() {
                if current == patch.hook {
                    Outcome::AlreadyAttached
                } else {
                    Outcome::Changed { found: current }
                }
            } else if let Some(hook_of) = hooks.routine_at(current) {
                Outcome::AlreadyHooked { hook_of }
            } else if is_unbound(current, self.image_size) {
                Outcome::NotBound { found: current }
            } else {
                // SAFETY: `address` is the slot just read: inside the image and
                // pointer-aligned (checked in `new`), the image loaded at `image_base` for
                // this call (this function's contract). The new value is `patch.hook`, a
                // hook the caller guarantees ready to be called through the slot.
                let exchanged =
                    unsafe { access.compare_exchange_slot(address, current, patch.hook) };
                match exchanged {
                    Ok(()) => {
                        patch.original = Some(current);
                        Outcome::Patched { original: current }
                    }
                    Err(SlotWriteError::Changed { found }) => Outcome::Raced { found },
                    Err(SlotWriteError::Failed) => Outcome::WriteFailed,
                }
            };
            report.push(SlotOutcome {
                address,
                routine: patch.routine,
                outcome,
            });
        }
        report
    }

    /// Puts back the value each attached slot held, if the slot still holds this plan's
    /// hook; a slot that does not is left alone and reported as [`Outcome::Changed`].
    ///
    /// # Safety
    ///
    /// The image this plan was built for is loaded at [`image_base`](Self::image_base)
    /// and stays loaded for the call.
    pub unsafe fn detach<A: SlotAccess + ?Sized>(&mut self, access: &A) -> Report {
        let len = self.len;
        let mut report = Report::new();
        for patch in self.patches.iter_mut().take(len) {
            let outcome = match patch.original {
                None => Outcome::NotAttached,
                Some(original) => {
                    // SAFETY: the slot lies inside the loaded image and is aligned (see
                    // `new`); `original` is the value the image called through it before.
                    let exchanged = unsafe {
                        access.compare_exchange_slot(patch.address, patch.hook, original)
                    };
                    match exchanged {
                        Ok(()) => {
                            patch.original = None;
                            Outcome::Restored { original }
                        }
                        Err(SlotWriteError::Changed { found }) => Outcome::Changed { found },
                        Err(SlotWriteError::Failed) => Outcome::WriteFailed,
                    }
                }
            };
            report.push(SlotOutcome {
                address: patch.address,
                routine: patch.routine,
                outcome,
            });
        }
        report
    }
}

/// Bit 63 of a 64-bit thunk (the top bit of a pointer): import by ordinal.
const ORDINAL_FLAG: usize = !(usize::MAX >> 1);

/// Whether an IAT slot value is still an import lookup entry rather than a bound
/// address: a hint/name RVA inside the image, or an ordinal thunk (the ordinal flag and a
/// 16-bit ordinal, a non-canonical address).
const fn is_unbound(value: usize, image_size: usize) -> bool {
    value < image_size || value & !0xFFFF == ORDINAL_FLAG
}

/// The body of the `MmGetSystemRoutineAddress` hook: the hook to return for the routine
/// named `name`, or `None` to call the real `MmGetSystemRoutineAddress`.
///
/// `name` is the `UNICODE_STRING`'s buffer, `Length / 2` UTF-16 units. Like the kernel's
/// lookup, the name ends at the first NUL, if any; the comparison is exact and
/// case-sensitive. Names longer than [`MAX_ROUTINE_NAME_UNITS`] are not compared.
#[must_use]
pub fn system_routine_override(name: &[u16], hooks: &impl HookSet) -> Option<usize> {
    let hooks = hooks.table();
    let window = name.get(..=MAX_ROUTINE_NAME_UNITS).unwrap_or(name);
    let name = match window.iter().position(|&unit| unit == 0) {
        Some(end) => window.get(..end)?,
        None if window.len() > MAX_ROUTINE_NAME_UNITS => return None,
        None => window,
    };
    HookedRoutine::ALL
        .into_iter()
        .find(|routine| {
            let ascii = routine.name().as_bytes();
            ascii.len() == name.len()
                && ascii
                    .iter()
                    .zip(name)
                    .all(|(&byte, &unit)| u16::from(byte) == unit)
        })
        .map(|routine| hooks.get(routine))
        .filter(|&hook| hook != 0)
}

#[cfg(test)]
#[allow(
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_lossless,
    clippy::too_many_lines
)]
mod tests {
    use core::cell::{Cell, RefCell};
    use std::vec;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn outcomes_read_as_phrases() {
        use std::string::ToString;
        assert_eq!(
            Outcome::Patched { original: 0x1000 }.to_string(),
            "hooked (was 0x1000)"
        );
        assert_eq!(
            Outcome::AlreadyHooked {
                hook_of: HookedRoutine::UnmapIoSpace
            }
            .to_string(),
            "already holds the hook of MmUnmapIoSpace"
        );
        assert_eq!(
            Outcome::NotBound { found: 0x52 }.to_string(),
            "not bound yet (holds the import entry 0x52)"
        );
        assert_eq!(Outcome::WriteFailed.to_string(), "could not be written");
    }

    const BASE: usize = 0xFFFF_F806_1230_0000;
    const SIZE: usize = 0x100;
    const HOOKS: Hooks = Hooks {
        map_io_space: 0xFFFF_F807_0000_1000,
        map_io_space_ex: 0xFFFF_F807_0000_2000,
        unmap_io_space: 0xFFFF_F807_0000_3000,
        get_system_routine_address: 0xFFFF_F807_0000_4000,
    };
    /// The same hooks, with the MDL family's.
    const TABLE: HookTable = HookTable {
        io: HOOKS,
        mdl: MdlHooks {
            map_locked_pages_specify_cache: 0xFFFF_F807_0000_5000,
            map_locked_pages: 0xFFFF_F807_0000_5100,
            unmap_locked_pages: 0xFFFF_F807_0000_5200,
            free_mdl: 0xFFFF_F807_0000_5300,
            unlock_pages: 0xFFFF_F807_0000_5400,
            allocate_mapping_address: 0xFFFF_F807_0000_5500,
            allocate_mapping_address_ex: 0xFFFF_F807_0000_5600,
            map_locked_pages_with_reserved_mapping: 0xFFFF_F807_0000_5700,
            unmap_reserved_mapping: 0xFFFF_F807_0000_5800,
            free_mapping_address: 0xFFFF_F807_0000_5900,
        },
    };
    const REAL: usize = 0xFFFF_F800_AAAA_0000;

    /// Image memory as words, with knobs to fail or disturb writes.
    struct Fake {
        words: RefCell<Vec<u64>>,
        fail: Cell<bool>,
        /// Written into the slot just before the next compare-and-exchange.
        interfere: Cell<Option<u64>>,
        writes: Cell<usize>,
    }

    impl Fake {
        fn new() -> Self {
            let words = (0..SIZE / 8).map(|i| (REAL + 8 * i) as u64).collect();
            Self {
                words: RefCell::new(words),
                fail: Cell::new(false),
                interfere: Cell::new(None),
                writes: Cell::new(0),
            }
        }
        fn index(address: usize) -> usize {
            assert!(
                address >= BASE && address + SLOT_SIZE <= BASE + SIZE,
                "{address:#x}"
            );
            assert_eq!(address % SLOT_SIZE, 0);
            (address - BASE) / 8
        }
        fn get(&self, rva: u32) -> usize {
            self.words.borrow()[rva as usize / 8] as usize
        }
        fn set(&self, rva: u32, value: usize) {
            self.words.borrow_mut()[rva as usize / 8] = value as u64;
        }
    }

    impl SlotAccess for Fake {
        unsafe fn read_slot(&self, address: usize) -> usize {
            self.words.borrow()[Self::index(address)] as usize
        }

        unsafe fn compare_exchange_slot(
            &self,
            address: usize,
            current: usize,
            new: usize,
        ) -> Result<(), SlotWriteError> {
            let index = Self::index(address);
            if let Some(value) = self.interfere.take() {
                self.words.borrow_mut()[index] = value;
            }
            if self.fail.get() {
                return Err(SlotWriteError::Failed);
            }
            let mut words = self.words.borrow_mut();
            let found = words[index] as usize;
            if found != current {
                return Err(SlotWriteError::Changed { found });
            }
            words[index] = new as u64;
            self.writes.set(self.writes.get() + 1);
            Ok(())
        }
    }

    /// [`Plan::attach`] over the fake image.
    fn attach(plan: &mut Plan, mem: &Fake) -> Report {
        // SAFETY: `Fake`'s accessors are safe code over its own `words` (every address is
        // bounds-checked by `Fake::index`, which panics rather than reach outside), so the
        // "image" is `mem`, alive for the whole call; no hook is ever called through it.
        unsafe { plan.attach(mem) }
    }

    /// [`Plan::detach`] over the fake image.
    fn detach(plan: &mut Plan, mem: &Fake) -> Report {
        // SAFETY: `Fake`'s accessors are safe code that touch only `mem.words`, through
        // indices `Fake::index` bounds-checks; `mem` outlives the call, and detach writes
        // back only values it read from those words at attach.
        unsafe { plan.detach(mem) }
    }

    fn slot(rva: u32, routine: HookedRoutine) -> IatSlot<'static> {
        IatSlot {
            rva,
            routine,
            delay_load: false,
            dll_name: b"ntoskrnl.exe",
            ordinal: None,
        }
    }

    fn three() -> Vec<IatSlot<'static>> {
        vec![
            slot(0x10, HookedRoutine::MapIoSpace),
            slot(0x18, HookedRoutine::UnmapIoSpace),
            slot(0x40, HookedRoutine::GetSystemRoutineAddress),
        ]
    }

    fn kinds(report: &Report) -> Vec<Outcome> {
        report.outcomes().iter().map(|o| o.outcome).collect()
    }

    #[test]
    fn attach_then_detach_restores_exactly() {
        let mem = Fake::new();
        let before = mem.words.borrow().clone();
        let mut plan = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        assert_eq!(plan.patches().len(), 3);
        assert_eq!(plan.patches()[0].address, BASE + 0x10);
        assert_eq!(plan.patches()[1].hook, HOOKS.unmap_io_space);
        assert!(!plan.is_attached());

        let report = attach(&mut plan, &mem);
        assert!(report.is_clean());
        assert_eq!(
            kinds(&report),
            [
                Outcome::Patched {
                    original: REAL + 0x10
                },
                Outcome::Patched {
                    original: REAL + 0x18
                },
                Outcome::Patched {
                    original: REAL + 0x40
                },
            ]
        );
        assert_eq!(
            report.outcomes()[2].routine,
            HookedRoutine::GetSystemRoutineAddress
        );
        assert_eq!(mem.get(0x10), HOOKS.map_io_space);
        assert_eq!(mem.get(0x18), HOOKS.unmap_io_space);
        assert_eq!(mem.get(0x40), HOOKS.get_system_routine_address);
        assert_eq!(mem.get(0x20), REAL + 0x20);
        assert!(plan.is_attached());
        assert_eq!(plan.patches()[0].original(), Some(REAL + 0x10));

        let report = detach(&mut plan, &mem);
        assert!(report.is_clean());
        assert_eq!(
            kinds(&report)[1],
            Outcome::Restored {
                original: REAL + 0x18
            }
        );
        assert_eq!(*mem.words.borrow(), before);
        assert!(!plan.is_attached());

        let report = detach(&mut plan, &mem);
        assert_eq!(kinds(&report), [Outcome::NotAttached; 3]);
        assert_eq!(*mem.words.borrow(), before);
    }

    #[test]
    fn attach_is_idempotent() {
        let mem = Fake::new();
        let mut plan = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        attach(&mut plan, &mem);
        let writes = mem.writes.get();
        let report = attach(&mut plan, &mem);
        assert_eq!(kinds(&report), [Outcome::AlreadyAttached; 3]);
        assert_eq!(mem.writes.get(), writes);
        assert_eq!(plan.patches()[0].original(), Some(REAL + 0x10));

        // A second plan over the same image neither patches nor records our hook.
        let mut second = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        let report = attach(&mut second, &mem);
        assert!(report.is_clean());
        assert_eq!(
            kinds(&report)[0],
            Outcome::AlreadyHooked {
                hook_of: HookedRoutine::MapIoSpace
            }
        );
        assert!(!second.is_attached());
        assert_eq!(mem.writes.get(), writes);
        let report = detach(&mut second, &mem);
        assert_eq!(kinds(&report), [Outcome::NotAttached; 3]);
        assert_eq!(mem.get(0x10), HOOKS.map_io_space);

        // The first plan still restores the real originals.
        detach(&mut plan, &mem);
        assert_eq!(mem.get(0x10), REAL + 0x10);
    }

    #[test]
    fn a_slot_holding_another_hook_is_not_adopted() {
        let mem = Fake::new();
        mem.set(0x10, HOOKS.unmap_io_space);
        let mut plan = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        let report = attach(&mut plan, &mem);
        assert_eq!(
            kinds(&report)[0],
            Outcome::AlreadyHooked {
                hook_of: HookedRoutine::UnmapIoSpace
            }
        );
        assert_eq!(plan.patches()[0].original(), None);
        assert_eq!(mem.get(0x10), HOOKS.unmap_io_space);
    }

    #[test]
    fn unbound_slots_are_not_patched() {
        let mem = Fake::new();
        // A hint/name RVA, an ordinal thunk, and 0.
        mem.set(0x10, 0x80);
        mem.set(0x18, (1usize << 63) | 0x4D2);
        mem.set(0x40, 0);
        let before = mem.words.borrow().clone();
        let mut plan = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        let report = attach(&mut plan, &mem);
        assert_eq!(
            kinds(&report),
            [
                Outcome::NotBound { found: 0x80 },
                Outcome::NotBound {
                    found: (1usize << 63) | 0x4D2
                },
                Outcome::NotBound { found: 0 },
            ]
        );
        assert_eq!(report.errors(), 3);
        assert!(!plan.is_attached());
        assert_eq!(*mem.words.borrow(), before);
        assert!(is_unbound(SIZE - 1, SIZE));
        assert!(!is_unbound(SIZE, SIZE));
        assert!(!is_unbound(REAL, SIZE));
        assert!(!is_unbound((1usize << 63) | 0x1_0000, SIZE));
    }

    #[test]
    fn detach_refuses_a_changed_slot() {
        let mem = Fake::new();
        let mut plan = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        attach(&mut plan, &mem);
        let other = 0xFFFF_F808_DEAD_0000;
        mem.set(0x18, other);

        let report = attach(&mut plan, &mem);
        assert_eq!(kinds(&report)[1], Outcome::Changed { found: other });
        assert_eq!(report.errors(), 1);

        let report = detach(&mut plan, &mem);
        assert_eq!(report.errors(), 1);
        assert_eq!(
            kinds(&report),
            [
                Outcome::Restored {
                    original: REAL + 0x10
                },
                Outcome::Changed { found: other },
                Outcome::Restored {
                    original: REAL + 0x40
                },
            ]
        );
        assert_eq!(mem.get(0x18), other);
        assert_eq!(mem.get(0x10), REAL + 0x10);
        assert!(plan.patches()[1].is_attached());
        assert_eq!(plan.patches()[1].original(), Some(REAL + 0x18));

        // Once our hook is back, a later detach restores it.
        mem.set(0x18, HOOKS.unmap_io_space);
        let report = detach(&mut plan, &mem);
        assert_eq!(
            kinds(&report),
            [
                Outcome::NotAttached,
                Outcome::Restored {
                    original: REAL + 0x18
                },
                Outcome::NotAttached
            ]
        );
        assert!(!plan.is_attached());
    }

    #[test]
    fn races_and_failures_leave_the_slot_alone() {
        let mem = Fake::new();
        let mut plan = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        mem.interfere.set(Some(0x1234));
        let report = attach(&mut plan, &mem);
        assert_eq!(kinds(&report)[0], Outcome::Raced { found: 0x1234 });
        assert!(matches!(kinds(&report)[1], Outcome::Patched { .. }));
        assert_eq!(mem.get(0x10), 0x1234);
        assert!(!plan.patches()[0].is_attached());

        // A retry picks the new value up as the original.
        let report = attach(&mut plan, &mem);
        assert_eq!(kinds(&report)[0], Outcome::Patched { original: 0x1234 });

        let mem = Fake::new();
        let before = mem.words.borrow().clone();
        let mut plan = Plan::new(BASE, SIZE, &three(), &HOOKS).unwrap();
        mem.fail.set(true);
        let report = attach(&mut plan, &mem);
        assert_eq!(kinds(&report), [Outcome::WriteFailed; 3]);
        assert!(!plan.is_attached());
        assert_eq!(*mem.words.borrow(), before);

        mem.fail.set(false);
        attach(&mut plan, &mem);
        mem.fail.set(true);
        let report = detach(&mut plan, &mem);
        assert_eq!(kinds(&report), [Outcome::WriteFailed; 3]);
        assert!(plan.is_attached());
        mem.fail.set(false);
        assert!(detach(&mut plan, &mem).is_clean());
        assert_eq!(*mem.words.borrow(), before);
    }

    #[test]
    fn plan_checks_its_input() {
        let mut hooks = HOOKS;
        hooks.map_io_space_ex = 0;
        assert_eq!(
            Plan::new(BASE, SIZE, &three(), &hooks),
            Err(PlanError::NullHook {
                routine: HookedRoutine::MapIoSpaceEx
            })
        );
        let at = |rva| [slot(rva, HookedRoutine::MapIoSpace)];
        assert_eq!(
            Plan::new(BASE, SIZE, &at(SIZE as u32 - 4), &HOOKS),
            Err(PlanError::SlotOutOfImage {
                rva: SIZE as u32 - 4
            })
        );
        assert_eq!(
            Plan::new(BASE, SIZE, &at(u32::MAX), &HOOKS),
            Err(PlanError::SlotOutOfImage { rva: u32::MAX })
        );
        assert_eq!(
            Plan::new(usize::MAX - 8, SIZE, &at(0x10), &HOOKS),
            Err(PlanError::SlotOutOfImage { rva: 0x10 })
        );
        assert_eq!(
            Plan::new(BASE, SIZE, &at(0x14), &HOOKS),
            Err(PlanError::MisalignedSlot { rva: 0x14 })
        );
        assert!(Plan::new(BASE, SIZE, &at(SIZE as u32 - 8), &HOOKS).is_ok());

        let dup = [
            slot(0x10, HookedRoutine::MapIoSpace),
            slot(0x10, HookedRoutine::MapIoSpace),
        ];
        assert_eq!(
            Plan::new(BASE, SIZE, &dup, &HOOKS).unwrap().patches().len(),
            1
        );
        let conflict = [
            slot(0x10, HookedRoutine::MapIoSpace),
            slot(0x10, HookedRoutine::UnmapIoSpace),
        ];
        assert_eq!(
            Plan::new(BASE, SIZE, &conflict, &HOOKS),
            Err(PlanError::ConflictingSlot { rva: 0x10 })
        );

        let many: Vec<_> = (0..=MAX_PATCHES as u32)
            .map(|i| slot(8 * i, HookedRoutine::UnmapIoSpace))
            .collect();
        assert_eq!(
            Plan::new(BASE, 0x1000, &many[..MAX_PATCHES], &HOOKS)
                .unwrap()
                .patches()
                .len(),
            MAX_PATCHES
        );
        assert_eq!(
            Plan::new(BASE, 0x1000, &many, &HOOKS),
            Err(PlanError::TooManySlots)
        );
        assert!(Plan::new(BASE, 0, &[], &HOOKS)
            .unwrap()
            .patches()
            .is_empty());
    }

    #[test]
    fn an_unhooked_mdl_family_is_left_alone() {
        let slots = [
            slot(0x10, HookedRoutine::MapIoSpace),
            slot(0x18, HookedRoutine::MapLockedPagesSpecifyCache),
            slot(0x20, HookedRoutine::FreeMdl),
        ];
        let plan = Plan::new(BASE, 0x100, &slots, &HOOKS).unwrap();
        let routines: Vec<_> = plan.patches().iter().map(|p| p.routine).collect();
        assert_eq!(routines, [HookedRoutine::MapIoSpace]);
        assert_eq!(HOOKS.routine_at(0), None, "a 0 hook names no routine");
        assert_eq!(
            system_routine_override(&utf16("MmMapLockedPagesSpecifyCache"), &HOOKS),
            None,
            "the real routine is handed out"
        );
        // With the family hooked, its slots are patched like the others.
        let plan = Plan::new(BASE, 0x100, &slots, &TABLE).unwrap();
        assert_eq!(plan.patches().len(), 3);
        assert!(HookedRoutine::ALL
            .iter()
            .all(|r| r.is_mdl_family() == (r.index() >= 4)));
    }

    #[test]
    fn hooks_table() {
        for routine in HookedRoutine::ALL {
            assert_eq!(TABLE.routine_at(TABLE.get(routine)), Some(routine));
        }
        assert_eq!(HOOKS.routine_at(REAL), None);
    }

    fn utf16(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn system_routine_override_hands_out_hooks() {
        for routine in HookedRoutine::ALL {
            assert_eq!(
                system_routine_override(&utf16(routine.name()), &TABLE),
                Some(TABLE.get(routine))
            );
        }
        let with_nul = utf16("MmUnmapIoSpace\0junk");
        assert_eq!(
            system_routine_override(&with_nul, &HOOKS),
            Some(HOOKS.unmap_io_space)
        );
        for other in [
            "",
            "\0MmMapIoSpace",
            "MmMapIoSpac",
            "MmMapIoSpaceExx",
            "mmmapiospace",
            "MmMapIoSpace ",
            "ExAllocatePool2",
        ] {
            assert_eq!(
                system_routine_override(&utf16(other), &HOOKS),
                None,
                "{other:?}"
            );
        }
        // Non-ASCII units that truncate to the right bytes do not match.
        let mut tricky = utf16("MmMapIoSpace");
        tricky[0] |= 0x0100;
        assert_eq!(system_routine_override(&tricky, &HOOKS), None);
        // Long names are not scanned to their end.
        let mut long = utf16("MmMapIoSpace");
        long.resize(MAX_ROUTINE_NAME_UNITS + 1, u16::from(b'x'));
        assert_eq!(system_routine_override(&long, &HOOKS), None);
        let huge = vec![u16::from(b'M'); if cfg!(miri) { 1 << 12 } else { 1 << 20 }];
        assert_eq!(system_routine_override(&huge, &HOOKS), None);
        // A name padded with NULs up to the cap still matches.
        let mut padded = utf16("MmMapIoSpaceEx");
        padded.resize(MAX_ROUTINE_NAME_UNITS + 40, 0);
        assert_eq!(
            system_routine_override(&padded, &HOOKS),
            Some(HOOKS.map_io_space_ex)
        );
    }

    #[test]
    fn errors_display() {
        use std::string::ToString;
        assert_eq!(
            PlanError::MisalignedSlot { rva: 0x14 }.to_string(),
            "IAT slot at RVA 0x14 is not pointer-aligned"
        );
        assert!(PlanError::from(PeError::OutputFull { capacity: 16 }) == PlanError::TooManySlots);
        assert!(PlanError::from(PeError::Pe32NotSupported)
            .to_string()
            .contains("PE32+"));
    }

    #[test]
    fn site_checks_in_order() {
        use crate::pe::{Section, SCN_MEM_DISCARDABLE, SCN_MEM_EXECUTE};
        let section = |name: &[u8; 8], characteristics| Section {
            name: *name,
            virtual_address: 0x1000,
            size: 0x1000,
            characteristics,
        };
        let rdata = section(b".rdata\0\0", 0x4000_0040);
        assert_eq!(check_site(Some(&rdata), true, true), Ok(()));
        assert_eq!(
            check_site(None, true, true),
            Err(SiteRefusal::OutsideSections)
        );
        let text = section(b".text\0\0\0", 0x6000_0020);
        assert_eq!(
            check_site(Some(&text), true, true),
            Err(SiteRefusal::ExecutableSection)
        );
        let exec_only = section(b".idata\0\0", SCN_MEM_EXECUTE | 0x4000_0000);
        assert_eq!(
            check_site(Some(&exec_only), true, true),
            Err(SiteRefusal::ExecutableSection)
        );
        let init = section(b"INIT\0\0\0\0", SCN_MEM_DISCARDABLE | 0x4000_0040);
        assert_eq!(
            check_site(Some(&init), true, true),
            Err(SiteRefusal::DiscardableSection)
        );
        let page = section(b"PAGEDATA", 0x4000_0040);
        assert_eq!(
            check_site(Some(&page), true, true),
            Err(SiteRefusal::PageableSection)
        );
        assert_eq!(
            check_site(Some(&rdata), false, true),
            Err(SiteRefusal::NotResident)
        );
        assert_eq!(
            check_site(Some(&rdata), true, false),
            Err(SiteRefusal::Unbound)
        );
        for r in SiteRefusal::ALL {
            assert_eq!(SiteRefusal::from_code(r.code()), Some(r));
            assert!(!r.describe().is_empty());
        }
        assert_eq!(SiteRefusal::from_code(0), None);
        assert!(is_bound_value(0xFFFF_F800_0000_1000));
        assert!(!is_bound_value(0x3000));
    }
}
