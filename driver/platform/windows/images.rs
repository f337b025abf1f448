//! Loaded images: the module list (AuxKlib), patching a target's import slots at load time
//! (image-load notification) or on request (control IOCTL `ATTACH`, AddDevice, start-up),
//! and restoring them (IOCTL `DETACH`, the target's unload).
//!
//! The decisions are portable: `pe` finds the slots, `intercept::Plan` patches and
//! restores them idempotently and refuses slots that changed, `intercept::check_site`
//! refuses sites that must not be written, `Verifier` registers the driver and reports its
//! leaks. What is Windows-specific, and lives here, is where the bytes come from and what
//! keeps them there:
//!
//! - **What keeps the image loaded.** At load time the image-load callback runs inside
//!   the loader, before the target's `DriverEntry`: the image cannot go away. Any other
//!   time (late attach, detach, AddDevice) iosv first takes a reference on the target's
//!   driver object — from AddDevice (the device below the filter), or by name
//!   (`\\Driver\\<image name without .sys>`, `ObReferenceObjectByName`) — checks that the
//!   object's `DriverStart` is the module's base, and only then reads the module list and
//!   the image. The I/O manager unmaps a driver's image only when its driver object is
//!   deleted, which a reference defers. A late attach with no driver object is refused
//!   (`SiteRefusal::NoDriverObject`), never done unprotected. The reference is held for
//!   that one operation only: held longer, it would keep an unloaded target's image in
//!   memory and its next load would fail (Code 38). It is released with
//!   `ObDereferenceObjectDeferDelete`, so that a last reference never unloads an image on
//!   a thread that holds iosv's mutex (the loader takes its own lock, then ours).
//! - **A target that unloads while attached.** Drivers get no unload notification; the
//!   target's own unmaps in its `DriverUnload` still go through the hooks. iosv notices
//!   the unload when the same image loads again (image-load callback, whatever the base)
//!   and at each control-plane moment (attach, detach, AddDevice, every status request)
//!   by a sweep over the module list: an attachment whose image is no longer loaded at its
//!   base is retired, its still-live mappings reported as IOSV009. Its slots went with
//!   the image; nothing is written.
//! - **Which bytes may be read.** After `DriverEntry`, the `INIT` section is freed;
//!   drivers linked with `/DRIVER` keep their import descriptors there (only the IAT lives
//!   in `.rdata`). So a late attach whose import directory lies in a discardable section
//!   scans the IAT directory instead, and a slot is taken to import a hooked routine when
//!   it holds that routine's address (or one of iosv's hooks).
//! - **Which slots may be written**: `intercept::check_site` — not in a code, discardable
//!   or pageable section, resident (`MmIsAddressValid`), bound. A refusal is recorded for
//!   the driver (`iosvctl status`) and nothing is written.
//!
//! Lock order: the module list is queried *before* taking the control-plane mutex,
//! because `AuxKlibQueryModuleInformation` takes the loader's locks, and the image-load
//! callback runs under those locks and then takes our mutex.

use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr::null_mut;

use wdk_sys::ntddk::{MmIsAddressValid, ObDereferenceObjectDeferDelete, ObfReferenceObject};
use wdk_sys::{
    HANDLE, NTSTATUS, PASSIVE_LEVEL, PDRIVER_OBJECT, PIMAGE_INFO, PUNICODE_STRING, PVOID,
    STATUS_BUFFER_TOO_SMALL,
};

use super::ffi::{self, log_name, log_value, AuxModuleExtendedInfo, Level};
use super::hooks::{hooks_for, routine_of_hook};
use super::irql;
use super::state::{engine, on_big_stack, Glue, InFlight, Plans};
use crate::drivers::{names_equal, DriverId, DriverState, ImageDebug};
use crate::intercept::{
    is_bound_value, HookTable, Outcome, Plan, PlanError, Report, SiteRefusal, MAX_PATCHES,
};
use crate::pe::{Directory, HookedRoutine, IatSlot, PeImage, NTOSKRNL};
use crate::platform::PlatformError;

/// `OBJ_CASE_INSENSITIVE` (ntdef.h).
const OBJ_CASE_INSENSITIVE: u32 = 0x40;
/// `\Driver\`, the object directory of driver objects.
const DRIVER_DIRECTORY: [u16; 8] = ffi::ascii_wide("\\Driver\\");

/// A referenced driver object, held for one control-plane operation and dereferenced
/// (deferred) on drop.
pub struct DriverRef(PDRIVER_OBJECT);

impl DriverRef {
    /// Takes a reference on `object` (AddDevice: the device below the filter).
    ///
    /// # Safety
    ///
    /// `object` is a valid driver object that the caller keeps alive for this call.
    pub unsafe fn new(object: PDRIVER_OBJECT) -> Option<DriverRef> {
        if object.is_null() {
            return None;
        }
        // SAFETY: a valid object per the contract; IRQL <= DISPATCH_LEVEL.
        unsafe { ObfReferenceObject(object.cast()) };
        Some(DriverRef(object))
    }

    /// References `\Driver\<stem>` for the image file name `name` (PASSIVE_LEVEL).
    pub fn by_image_name(name: &[u8]) -> Option<DriverRef> {
        let stem = name
            .len()
            .checked_sub(4)
            .and_then(|n| name.get(n..))
            .filter(|ext| ext.eq_ignore_ascii_case(b".sys"))
            .map_or(name, |_| {
                name.get(..name.len().saturating_sub(4)).unwrap_or(name)
            });
        let mut path = [0u16; DRIVER_DIRECTORY.len() + MAX_IMAGE_NAME];
        let mut len = 0usize;
        for (dst, src) in path.iter_mut().zip(
            DRIVER_DIRECTORY
                .iter()
                .copied()
                .chain(stem.iter().map(|b| u16::from(*b))),
        ) {
            *dst = src;
            len = len.saturating_add(1);
        }
        if stem.is_empty() || len != DRIVER_DIRECTORY.len().saturating_add(stem.len()) {
            return None;
        }
        let mut object_name = ffi::unicode_string(path.get(..len)?)?;
        let mut object: PVOID = null_mut();
        // SAFETY: reads the kernel's exported variable (set before any driver loads).
        let driver_type = unsafe { ffi::IoDriverObjectType };
        // SAFETY: a valid counted name that outlives the call; kernel-mode lookup of an
        // object of the driver type only; `object` receives a referenced pointer.
        let status = unsafe {
            ffi::ObReferenceObjectByName(
                &mut object_name,
                OBJ_CASE_INSENSITIVE,
                null_mut(),
                0,
                driver_type,
                wdk_sys::_MODE::KernelMode as i8,
                null_mut(),
                &mut object,
            )
        };
        if !wdk_sys::NT_SUCCESS(status) || object.is_null() {
            return None;
        }
        Some(DriverRef(object.cast()))
    }

    /// The image base the object names (`DriverStart`).
    pub fn driver_start(&self) -> usize {
        // SAFETY: a referenced driver object; `DriverStart` is set before DriverEntry.
        unsafe { (*self.0).DriverStart as usize }
    }
}

impl Drop for DriverRef {
    fn drop(&mut self) {
        // SAFETY: this value owns one reference, released once; IRQL <= DISPATCH_LEVEL.
        // Deferred: if it is the last one, the object (and the image with it) goes on a
        // worker thread, never on this one, which may hold iosv's mutex.
        unsafe { ObDereferenceObjectDeferDelete(self.0.cast()) };
    }
}

/// Longest image file name handled (the wire name is cut to `NAME_LEN` later).
pub const MAX_IMAGE_NAME: usize = 64;

/// A snapshot of the loaded kernel modules.
pub struct Modules(Vec<AuxModuleExtendedInfo>);

impl Modules {
    /// Queries the list (PASSIVE_LEVEL; takes the loader's locks — never call it while
    /// holding the control-plane mutex).
    pub fn query() -> Result<Modules, NTSTATUS> {
        let element = core::mem::size_of::<AuxModuleExtendedInfo>();
        let element32 = u32::try_from(element).unwrap_or(u32::MAX);
        let mut bytes = 0u32;
        // SAFETY: a null buffer asks only for the size, written to `bytes`.
        let status =
            unsafe { ffi::AuxKlibQueryModuleInformation(&mut bytes, element32, null_mut()) };
        if !wdk_sys::NT_SUCCESS(status) && status != STATUS_BUFFER_TOO_SMALL {
            return Err(status);
        }
        // Modules may load between the two calls: leave room, and retry a few times.
        for _ in 0..4 {
            let count = (bytes as usize)
                .checked_div(element)
                .unwrap_or(0)
                .saturating_add(16);
            let mut list = Vec::new();
            list.try_reserve_exact(count)
                .map_err(|_| wdk_sys::STATUS_INSUFFICIENT_RESOURCES)?;
            list.resize(count, AuxModuleExtendedInfo::ZERO);
            let mut size = u32::try_from(count.saturating_mul(element)).unwrap_or(u32::MAX);
            // SAFETY: `list` holds `size` bytes of AUX_MODULE_EXTENDED_INFO entries.
            let status = unsafe {
                ffi::AuxKlibQueryModuleInformation(
                    &mut size,
                    element32,
                    list.as_mut_ptr().cast::<c_void>(),
                )
            };
            if status == STATUS_BUFFER_TOO_SMALL {
                bytes = size;
                continue;
            }
            if !wdk_sys::NT_SUCCESS(status) {
                return Err(status);
            }
            list.truncate((size as usize).checked_div(element).unwrap_or(0));
            return Ok(Modules(list));
        }
        Err(STATUS_BUFFER_TOO_SMALL)
    }

    /// The module whose file name is `name` (ASCII case-insensitive).
    pub fn by_name(&self, name: &[u8]) -> Option<&AuxModuleExtendedInfo> {
        self.0.iter().find(|m| names_equal(m.file_name(), name))
    }

    /// The module loaded at `base`.
    pub fn by_base(&self, base: usize) -> Option<&AuxModuleExtendedInfo> {
        self.0.iter().find(|m| m.image_base as usize == base)
    }

    /// The module whose image contains `address`.
    pub fn containing(&self, address: usize) -> Option<&AuxModuleExtendedInfo> {
        self.0.iter().find(|m| {
            let base = m.image_base as usize;
            address >= base && address.wrapping_sub(base) < m.image_size as usize
        })
    }

    /// Whether an image named `name` is still loaded at `base`.
    pub fn is_loaded(&self, name: &[u8], base: usize) -> bool {
        self.by_base(base)
            .is_some_and(|m| names_equal(m.file_name(), name))
    }
}

/// The bytes of a loaded image.
///
/// # Safety
///
/// An image is loaded at `[base, base + size)` and stays loaded while the slice is used.
/// Pages of discardable sections may be gone after the driver initialised: the caller
/// reads only through the PE parser, which is steered away from them (see module docs).
unsafe fn image_bytes<'a>(base: usize, size: usize) -> &'a [u8] {
    // SAFETY: per the contract.
    unsafe { core::slice::from_raw_parts(base as *const u8, size) }
}

/// Reads ntoskrnl's export table for the ordinals of the hooked routines (start-up).
pub fn ntoskrnl_ordinals(modules: &Modules, real_map: usize) -> crate::pe::RoutineOrdinals {
    let Some(kernel) = modules.containing(real_map) else {
        return crate::pe::RoutineOrdinals::default();
    };
    // SAFETY: ntoskrnl stays loaded; only headers and the (resident) export directory are
    // read.
    let bytes = unsafe { image_bytes(kernel.image_base as usize, kernel.image_size as usize) };
    PeImage::parse(bytes)
        .ok()
        .and_then(|image| image.exports().ok().flatten())
        .and_then(|exports| crate::pe::RoutineOrdinals::from_exports(&exports).ok())
        .unwrap_or_default()
}

fn plan_error(error: PlanError) -> PlatformError {
    match error {
        PlanError::TooManySlots => PlatformError::NoResources,
        _ => PlatformError::BadImage,
    }
}

/// The hooked routine whose real address (or whose hook) `value` is.
fn routine_of_value(glue: &Glue, value: usize) -> Option<HookedRoutine> {
    if value == 0 {
        return None;
    }
    let r = glue.reals;
    if value == r.map {
        Some(HookedRoutine::MapIoSpace)
    } else if value == r.map_ex {
        Some(HookedRoutine::MapIoSpaceEx)
    } else if value == r.unmap {
        Some(HookedRoutine::UnmapIoSpace)
    } else if value == r.get_routine {
        Some(HookedRoutine::GetSystemRoutineAddress)
    } else if let Some(routine) = HookedRoutine::ALL
        .into_iter()
        .find(|x| x.is_mdl_family() && r.family.get(x.index()) == Some(&value))
    {
        Some(routine)
    } else {
        routine_of_hook(value)
    }
}

/// A plan from the IAT directory's current values (late attach; see module docs), with
/// `hooks`.
fn plan_by_value(
    glue: &Glue,
    hooks: &HookTable,
    base: usize,
    image: &PeImage<'_>,
) -> Result<Plan, PlatformError> {
    let dir = image
        .data_directory(Directory::ImportAddressTable)
        .filter(|d| d.rva != 0 && d.size != 0)
        .ok_or(PlatformError::BadImage)?;
    let section = image
        .section_of_rva(dir.rva)
        .ok_or(PlatformError::BadImage)?;
    if section.is_discardable() || dir.rva & 7 != 0 {
        return Err(PlatformError::BadImage);
    }
    let end = dir
        .rva
        .checked_add(dir.size)
        .ok_or(PlatformError::BadImage)?;
    let mut slots = [IatSlot::EMPTY; MAX_PATCHES];
    let mut found = 0usize;
    let mut rva = dir.rva;
    while let Some(next) = rva.checked_add(8).filter(|n| *n <= end) {
        let start = rva as usize;
        let word = image
            .bytes()
            .get(start..start.saturating_add(8))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or(PlatformError::BadImage)?;
        if let Some(routine) = routine_of_value(glue, word as usize) {
            let entry = slots.get_mut(found).ok_or(PlatformError::NoResources)?;
            *entry = IatSlot {
                rva,
                routine,
                delay_load: false,
                dll_name: NTOSKRNL,
                ordinal: None,
            };
            found = found.saturating_add(1);
        }
        rva = next;
    }
    let size = image.size_of_image() as usize;
    Plan::new(base, size, slots.get(..found).unwrap_or(&[]), hooks).map_err(plan_error)
}

/// Records the image's PDB identity (its CodeView record) for `id`, for `iosvctl
/// --symbols`. Reads only pages that are resident at PASSIVE_LEVEL: after `DriverEntry`
/// (not `at_load`) never a discardable (`INIT`) or pageable section; a record there is
/// left unread (the client then shows module+offset).
fn record_debug(glue: &Glue, id: DriverId, base: usize, image: &PeImage<'_>, at_load: bool) {
    let resident = |rva: u32, len: u32| {
        image.section_of_rva(rva).is_some_and(|s| {
            let inside = rva.checked_add(len).is_some_and(|end| {
                s.virtual_address
                    .checked_add(s.size)
                    .is_some_and(|e| end <= e)
            });
            inside && (at_load || (!s.is_discardable() && !s.is_pageable()))
        })
    };
    let debug = match image.codeview_where(resident) {
        Ok(Some(cv)) => ImageDebug::CodeView(cv),
        Ok(None) => ImageDebug::None,
        Err(_) => ImageDebug::Malformed,
    };
    glue.verifier.drivers().set_debug(id, base as u64, debug);
}

/// Builds the plan for driver `id`'s image at `[base, base + size)`, with its own thunks
/// (`hooks::hooks_for`).
fn build_plan(
    glue: &Glue,
    id: DriverId,
    (base, size): (usize, usize),
    at_load: bool,
) -> Result<Plan, PlatformError> {
    let hooks = hooks_for(id).ok_or(PlatformError::NoResources)?;
    // SAFETY: the image is loaded (load callback, or the module list just now) and stays
    // loaded while the control-plane mutex is held; discarded pages are avoided below.
    let bytes = unsafe { image_bytes(base, size) };
    let image = PeImage::parse(bytes).map_err(|_| PlatformError::BadImage)?;
    let imports_resident = at_load
        || image
            .data_directory(Directory::Import)
            .filter(|d| d.rva != 0)
            .is_none_or(|d| {
                image
                    .section_of_rva(d.rva)
                    .is_some_and(|s| !s.is_discardable())
            });
    let plan = if imports_resident {
        Plan::for_image(base, &image, Some(&glue.ordinals), &hooks)
            .map(|(plan, _summary)| plan)
            .map_err(plan_error)?
    } else {
        plan_by_value(glue, &hooks, base, &image)?
    };
    Ok(plan)
}

/// Refuses a plan with a slot that must not or cannot be written (see module docs).
fn check_sites(glue: &Glue, image: &PeImage<'_>, plan: &Plan) -> Result<(), PlatformError> {
    let platform = glue.verifier.platform();
    // SAFETY: MmIsAddressValid only inspects page tables; it never faults.
    let resident = |address: usize| unsafe { MmIsAddressValid(address as PVOID) } != 0;
    // SAFETY: the image is loaded at the plan's base and stays loaded (load callback, or a
    // referenced driver object) for the call.
    unsafe { plan.check_sites(image, platform, resident, is_bound_value) }
        .map_err(PlatformError::Refused)
}

fn report_error(report: &Report) -> PlatformError {
    if report
        .outcomes()
        .iter()
        .any(|o| matches!(o.outcome, Outcome::WriteFailed))
    {
        PlatformError::Refused(SiteRefusal::WriteRefused)
    } else {
        PlatformError::SlotChanged
    }
}

fn attached_count(plan: &Plan) -> u32 {
    u32::try_from(plan.patches().iter().filter(|p| p.is_attached()).count()).unwrap_or(u32::MAX)
}

/// Patches driver `id` loaded at `[base, base + size)`; control-plane mutex held, the
/// image held (load callback, or a driver object reference the caller keeps for the
/// call). At load time any earlier plan is stale (the name was unloaded before it could
/// load again), so a fresh one is built.
fn attach_locked(
    glue: &Glue,
    plans: &mut Plans,
    id: DriverId,
    (base, size): (usize, usize),
    at_load: bool,
) -> Result<u32, PlatformError> {
    if glue.verifier.platform().is_own_image(base) {
        return Err(PlatformError::Unsupported);
    }
    let slot = plans
        .get_mut(usize::from(id.0))
        .ok_or(PlatformError::NoResources)?;
    if at_load || slot.as_ref().is_some_and(|old| old.image_base() != base) {
        // The image this plan patched has been unloaded: its slots are gone with it,
        // nothing to restore.
        *slot = None;
    }
    let mut plan = match slot.take() {
        Some(existing) => existing,
        None => build_plan(glue, id, (base, size), at_load)?,
    };
    let result = (|| {
        // SAFETY: the image is loaded at the plan's base (see above).
        let bytes = unsafe { image_bytes(base, size) };
        let image = PeImage::parse(bytes).map_err(|_| PlatformError::BadImage)?;
        record_debug(glue, id, base, &image, at_load);
        check_sites(glue, &image, &plan)?;
        // From the first write on, a hook may be entered at any time: never unload again.
        // Refused if an unload has begun (then nothing is written).
        if !glue.block_unload() {
            return Err(PlatformError::Unsupported);
        }
        let platform = glue.verifier.platform();
        // SAFETY: the image is loaded at the plan's base and GLUE is published, so every
        // hook is ready to run.
        let report = unsafe { plan.attach(platform) };
        if report.is_clean() {
            Ok(attached_count(&plan))
        } else {
            // Put back what this call patched; a slot that cannot be restored keeps its
            // original in the plan for a later detach.
            // SAFETY: the image is still held at `base`, the plan's base, for this whole
            // call (load callback, or the driver-object reference the caller keeps: see
            // this function's doc); detach writes back only the originals that the attach
            // just above read from those slots.
            let _undo = unsafe { plan.detach(platform) };
            Err(report_error(&report))
        }
    })();
    if result.is_ok() || plan.is_attached() {
        *slot = Some(plan);
    }
    glue.verifier.drivers().note_attach(id, &result);
    result
}

/// Restores driver `id`'s slots; `Ok(restored)` or the first problem. Mutex held; the
/// image is loaded (checked by the caller, under a reference).
fn detach_locked(glue: &Glue, plans: &mut Plans, id: DriverId) -> Result<u32, PlatformError> {
    let slot = plans
        .get_mut(usize::from(id.0))
        .ok_or(PlatformError::NotFound)?;
    let Some(plan) = slot.as_mut() else {
        return Ok(0);
    };
    // SAFETY: the image is loaded at the plan's base (caller). Each write is a
    // compare-and-exchange through a locked page that fails, not faults, if the page is
    // gone, and writes only where iosv's own hook still is.
    let report = unsafe { plan.detach(glue.verifier.platform()) };
    let restored = report.restored();
    if report.is_clean() {
        *slot = None;
        Ok(u32::try_from(restored).unwrap_or(u32::MAX))
    } else {
        Err(PlatformError::SlotChanged)
    }
}

/// `driver_detached` on a big stack (its leak walk keeps a batch of mappings on the stack).
fn detached(glue: &Glue, id: DriverId, detach: bool) {
    // Never on the caller's stack: without a bigger one the report is dropped and said so,
    // rather than risk a double fault.
    if on_big_stack(|| glue.verifier.driver_detached(id, detach)).is_none() {
        log_value(
            Level::Error,
            c"no stack to report a detached driver's mappings; driver id",
            u64::from(id.0),
        );
    }
}

/// Forgets an earlier instance of `name` when it must have unloaded: a load of the same
/// image (`at_load`: the loader refuses a name that is still loaded, whatever the base),
/// or a registration at another base. Its mappings still live are IOSV009 (each reported
/// once); those it kept flagged after a detach are dropped. Mutex held.
fn retire_stale(glue: &Glue, plans: &mut Plans, name: &[u8], base: usize, at_load: bool) {
    let drivers = glue.verifier.drivers();
    let Some(old) = drivers.find(name) else {
        return;
    };
    let Some(info) = drivers.info(old) else {
        return;
    };
    if !at_load && info.image_base == base as u64 {
        return;
    }
    let live = matches!(info.state, DriverState::Attached | DriverState::Loaded);
    if live || info.state == DriverState::Gone {
        if let Some(slot) = plans.get_mut(usize::from(old.0)) {
            *slot = None;
        }
        detached(glue, old, false);
    }
}

/// Registers `name` (not hooked) and records why it could not be hooked.
fn refuse(glue: &Glue, name: &[u8], base: usize, size: usize, why: SiteRefusal) -> PlatformError {
    let drivers = glue.verifier.drivers();
    let known = drivers
        .find(name)
        .and_then(|id| drivers.info(id))
        .is_some_and(|i| i.state == DriverState::Attached);
    let id = if known {
        drivers.find(name)
    } else {
        drivers.register(name, base as u64, size as u64, false, false)
    };
    if let Some(id) = id {
        drivers.set_refusal(id, Some(why));
    }
    log_name(Level::Warning, c"not hooked (see iosvctl status):", name);
    PlatformError::Refused(why)
}

/// IOCTL `ATTACH` and start-up: hooks the loaded image named `name`, under a reference on
/// its driver object.
pub fn attach_by_name(name: &[u8]) -> Result<u32, PlatformError> {
    let glue = engine().ok_or(PlatformError::Unsupported)?;
    if irql() != PASSIVE_LEVEL as u8 {
        return Err(PlatformError::Unsupported);
    }
    sweep(glue);
    let object = DriverRef::by_image_name(name);
    // Under the reference (if any), the module list cannot name an image that unloads.
    let modules = Modules::query().map_err(|_| PlatformError::NoResources)?;
    let module = modules.by_name(name).ok_or(PlatformError::NotFound)?;
    let base = module.image_base as usize;
    let size = module.image_size as usize;
    let file_name = module.file_name();
    if glue.verifier.platform().is_own_image(base) {
        return Err(PlatformError::Unsupported);
    }
    let Some(_object) = object.filter(|o| o.driver_start() == base) else {
        return Err(refuse(
            glue,
            file_name,
            base,
            size,
            SiteRefusal::NoDriverObject,
        ));
    };
    glue.with_plans(|plans| {
        retire_stale(glue, plans, file_name, base, false);
        let id = glue
            .verifier
            .driver_attached(file_name, base as u64, size as u64)
            .ok_or(PlatformError::NoResources)?;
        // `_object` holds the image until this function returns.
        let result = attach_locked(glue, plans, id, (base, size), false);
        if result.is_err() && plans.get(usize::from(id.0)).is_none_or(Option::is_none) {
            detached(glue, id, true);
        }
        result
    })
}

/// IOCTL `DETACH`: restores the slots of the driver named `name`. Its mappings still live
/// are reported (IOSV009) and stay in the leak view.
pub fn detach_by_name(name: &[u8]) -> Result<u32, PlatformError> {
    let glue = engine().ok_or(PlatformError::Unsupported)?;
    if irql() != PASSIVE_LEVEL as u8 {
        return Err(PlatformError::Unsupported);
    }
    sweep(glue);
    // Hold the image for the restore (without a driver object each write is still safe:
    // see detach_locked).
    let _held = DriverRef::by_image_name(name);
    let modules = Modules::query().map_err(|_| PlatformError::NoResources)?;
    glue.with_plans(|plans| {
        let id = glue
            .verifier
            .drivers()
            .find(name)
            .ok_or(PlatformError::NotFound)?;
        let info = glue
            .verifier
            .drivers()
            .info(id)
            .ok_or(PlatformError::NotFound)?;
        if info.state != DriverState::Attached {
            return Err(PlatformError::NotFound);
        }
        let still_loaded = modules.is_loaded(name, info.image_base as usize);
        let restored = if still_loaded {
            detach_locked(glue, plans, id)?
        } else {
            // Gone: its slots went with it.
            if let Some(slot) = plans.get_mut(usize::from(id.0)) {
                *slot = None;
            }
            0
        };
        detached(glue, id, still_loaded);
        Ok(restored)
    })
}

/// Retires the attachments whose image is no longer loaded at their base (the target
/// unloaded): their still-live mappings are reported as IOSV009 (module docs).
/// PASSIVE_LEVEL; queries the module list, then takes the control-plane mutex.
pub fn sweep(glue: &Glue) {
    if irql() != PASSIVE_LEVEL as u8 {
        return;
    }
    // Which instance each attachment is (its base and load count), before the module list
    // is read: an image loaded meanwhile (the load callback re-attaches it) is a new
    // instance and is left alone below.
    let mut seen = [(0usize, 0u64); crate::drivers::MAX_DRIVERS + 1];
    let any = glue.with_plans(|plans| {
        let mut any = false;
        for ((index, slot), seen) in plans.iter().enumerate().zip(seen.iter_mut()) {
            if let Some(plan) = slot {
                let id = DriverId(u16::try_from(index).unwrap_or(0));
                let loads = glue.verifier.drivers().info(id).map_or(0, |i| i.loads);
                *seen = (plan.image_base(), loads);
                any = true;
            }
        }
        any
    });
    if !any {
        return;
    }
    let Ok(modules) = Modules::query() else {
        return;
    };
    glue.with_plans(|plans| {
        for ((index, slot), seen) in plans.iter_mut().enumerate().zip(seen.iter()) {
            let Some(plan) = slot.as_ref() else { continue };
            let id = DriverId(u16::try_from(index).unwrap_or(0));
            let Some(info) = glue.verifier.drivers().info(id) else {
                continue;
            };
            let same_instance = *seen == (plan.image_base(), info.loads);
            let name = crate::protocol::name_bytes(&info.name);
            if same_instance && !modules.is_loaded(name, plan.image_base()) {
                *slot = None;
                detached(glue, id, false);
            }
        }
    });
}

/// AddDevice: the id of the function driver `object` (the owner of the device below the
/// filter), registering it (hooked if it is a target, else known for attribution only).
/// `DriverId::NONE` if it cannot be named.
///
/// # Safety
///
/// `object` is the driver object of a device in the stack being built (valid for the
/// call).
pub unsafe fn function_driver(object: PDRIVER_OBJECT) -> DriverId {
    if let Some(glue) = engine() {
        sweep(glue);
    }
    let register = |glue: &Glue, base: usize, name: &[u8]| {
        // SAFETY: the driver object, referenced by `with_image` for the call.
        let size = unsafe { (*object).DriverSize } as usize;
        register_function_driver(glue, base, size, name)
    };
    // SAFETY: valid for the call per the contract.
    unsafe { with_image(object, register) }.unwrap_or(DriverId::NONE)
}

/// AddDevice: true if `object`, the driver of a device in the stack being built, is a
/// configured target (and not iosv itself).
///
/// # Safety
///
/// `object` is the driver object of a device in the stack being built (valid for the
/// call).
pub unsafe fn is_target_driver(object: PDRIVER_OBJECT) -> bool {
    // SAFETY: valid for the call per the contract.
    unsafe {
        with_image(object, |glue, base, name| {
            !glue.verifier.platform().is_own_image(base)
                && glue.verifier.with_control(|c| c.targets.contains(name))
        })
    }
    .unwrap_or(false)
}

/// Runs `f` with the engine, the image base of `object` and its file name (from the
/// loaded-module list), holding a reference on the driver object (so the image stays
/// loaded) for the call. `None` if there is no engine or the image cannot be named.
///
/// # Safety
///
/// `object` is a valid driver object for the call.
unsafe fn with_image<T>(
    object: PDRIVER_OBJECT,
    f: impl FnOnce(&Glue, usize, &[u8]) -> T,
) -> Option<T> {
    let glue = engine()?;
    // SAFETY: valid for the call per the contract.
    let held = unsafe { DriverRef::new(object) }?;
    let base = held.driver_start();
    let modules = Modules::query().ok()?;
    let name = modules.by_base(base)?.file_name();
    if name.is_empty() {
        return None;
    }
    Some(f(glue, base, name))
}

/// [`function_driver`]'s registration of the image `name` at `base` (`size` bytes), while
/// a reference on its driver object keeps it loaded.
fn register_function_driver(glue: &Glue, base: usize, size: usize, name: &[u8]) -> DriverId {
    let is_target = glue.verifier.with_control(|c| c.targets.contains(name));
    let own = glue.verifier.platform().is_own_image(base);
    glue.with_plans(|plans| {
        let drivers = glue.verifier.drivers();
        if let Some(id) = drivers.find(name) {
            let state = drivers
                .info(id)
                .filter(|i| i.image_base == base as u64)
                .map(|i| i.state);
            // Hooked already (at load), or known and not to be hooked: nothing to do. A
            // target registered but not hooked (e.g. refused earlier) is tried again.
            if state == Some(DriverState::Attached)
                || (state == Some(DriverState::Loaded) && (!is_target || own))
            {
                return id;
            }
        }
        retire_stale(glue, plans, name, base, false);
        if is_target && !own {
            if let Some(id) = glue
                .verifier
                .driver_attached(name, base as u64, size as u64)
            {
                // `with_image`'s reference keeps the image loaded for the call.
                match attach_locked(glue, plans, id, (base, size), false) {
                    Ok(_) => return id,
                    Err(_) => {
                        log_name(Level::Warning, c"cannot hook function driver", name);
                        if plans.get(usize::from(id.0)).is_none_or(Option::is_none) {
                            detached(glue, id, true);
                        }
                        return drivers.find(name).unwrap_or(DriverId::NONE);
                    }
                }
            }
        }
        drivers
            .register(name, base as u64, size as u64, false, false)
            .unwrap_or(DriverId::NONE)
    })
}

/// Unload (reached only when no slot was ever patched, so no plan holds a patch): drops
/// every plan.
pub fn detach_all(glue: &Glue) {
    glue.with_plans(|plans| {
        for (index, slot) in plans.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(Plan::is_attached) {
                // Cannot happen under the unload policy; never free what a slot points at.
                log_value(
                    Level::Error,
                    c"unload: driver id still has patched slots:",
                    index as u64,
                );
                continue;
            }
            *slot = None;
        }
    });
}

/// `PLOAD_IMAGE_NOTIFY_ROUTINE`: hooks a target driver as it loads, before its
/// `DriverEntry` runs. PASSIVE_LEVEL, in the loading thread, under the loader's locks.
///
/// # Safety
///
/// Called by the kernel with a valid (or null) image name and a valid `IMAGE_INFO`.
pub unsafe extern "C" fn load_image_notify(
    full_name: PUNICODE_STRING,
    process_id: HANDLE,
    info: PIMAGE_INFO,
) {
    let _in_flight = InFlight::enter();
    if !process_id.is_null() || info.is_null() {
        return; // a user-mode image
    }
    // SAFETY: the kernel passes a valid IMAGE_INFO for the duration of the callback.
    let info = unsafe { &*info };
    // SAFETY: `Properties` overlays the bit fields; every bit pattern is a valid u32.
    let properties = unsafe { info.__bindgen_anon_1.Properties };
    if properties & ffi::IMAGE_INFO_SYSTEM_MODE == 0 {
        return;
    }
    let Some(glue) = engine() else { return };
    // SAFETY: FullImageName may be null (handled); otherwise valid during the callback.
    let path = unsafe { ffi::unicode_units(full_name) };
    let mut buffer = [0u8; MAX_IMAGE_NAME];
    let Some(name) = ffi::ascii_file_name(path, &mut buffer) else {
        return;
    };
    let base = info.ImageBase as usize;
    let size = info.ImageSize as usize;
    let work = || {
        glue.with_plans(|plans| {
            retire_stale(glue, plans, name, base, true);
            let Some(id) = glue.verifier.image_loaded(name, base as u64, size as u64) else {
                return;
            };
            // The loader holds the image for the callback.
            match attach_locked(glue, plans, id, (base, size), true) {
                Ok(slots) => log_value(Level::Info, c"hooked at load, slots:", u64::from(slots)),
                Err(_) => {
                    log_name(Level::Warning, c"cannot hook at load:", name);
                    if plans.get(usize::from(id.0)).is_none_or(Option::is_none) {
                        detached(glue, id, true);
                    }
                }
            }
        });
    };
    if on_big_stack(work).is_none() {
        log_name(Level::Error, c"no stack to hook at load:", name);
    }
}
