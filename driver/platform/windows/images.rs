//! Loaded images: the module list (AuxKlib), patching a target's import slots at load time
//! (image-load notification) or on request (control IOCTL `ATTACH`, AddDevice, start-up),
//! and restoring them (IOCTL `DETACH`, unload).
//!
//! The decisions are portable: `pe` finds the slots, `intercept::Plan` patches and
//! restores them idempotently and refuses slots that changed, `Verifier` registers the
//! driver and reports its leaks. What is Windows-specific, and lives here, is where the
//! bytes come from and when they may be read:
//!
//! - At load time (the image-load callback runs before the driver's `DriverEntry`) the
//!   whole image is present, so the import descriptors are parsed.
//! - After `DriverEntry`, the `INIT` section is freed; drivers linked with `/DRIVER` keep
//!   their import descriptors there (only the IAT lives in `.rdata`). Reading a freed page
//!   is bug check 0x50. So for a late attach whose import directory lies in a discardable
//!   section, the IAT directory is scanned instead, and a slot is taken to import a
//!   hooked routine when it holds that routine's address (or one of iosv's hooks).
//! - Every slot to be written must lie in a section that is neither discardable nor
//!   pageable, be resident, and hold a kernel address (a bound import); otherwise the
//!   attach is refused before anything is written.
//!
//! Lock order: the module list is queried *before* taking the control-plane mutex,
//! because `AuxKlibQueryModuleInformation` takes the loader's locks, and the image-load
//! callback runs under those locks and then takes our mutex.

use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr::null_mut;

use wdk_sys::ntddk::MmIsAddressValid;
use wdk_sys::{
    HANDLE, NTSTATUS, PASSIVE_LEVEL, PIMAGE_INFO, PUNICODE_STRING, PVOID, STATUS_BUFFER_TOO_SMALL,
};

use super::ffi::{self, log_name, log_value, AuxModuleExtendedInfo, Level};
use super::irql;
use super::state::{engine, on_big_stack, Glue, InFlight, Plans};
use crate::drivers::{names_equal, DriverId, DriverState};
use crate::intercept::{Outcome, Plan, PlanError, Report, SlotAccess, MAX_PATCHES};
use crate::pe::{Directory, HookedRoutine, IatSlot, PeImage, NTOSKRNL};
use crate::platform::PlatformError;

/// Start of the kernel half of the address space (x64 and ARM64): a bound import slot
/// holds an address at or above this; an unbound one holds an RVA or an ordinal.
const KERNEL_SPACE_START: usize = 0xFFFF_8000_0000_0000;

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
    } else {
        glue.hooks.routine_at(value)
    }
}

/// A plan from the IAT directory's current values (late attach; see module docs).
fn plan_by_value(glue: &Glue, base: usize, image: &PeImage<'_>) -> Result<Plan, PlatformError> {
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
    Plan::new(base, size, slots.get(..found).unwrap_or(&[]), &glue.hooks).map_err(plan_error)
}

/// Builds the plan for the image at `[base, base + size)`.
fn build_plan(glue: &Glue, base: usize, size: usize, at_load: bool) -> Result<Plan, PlatformError> {
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
        Plan::for_image(base, &image, Some(&glue.ordinals), &glue.hooks)
            .map(|(plan, _summary)| plan)
            .map_err(plan_error)?
    } else {
        plan_by_value(glue, base, &image)?
    };
    check_sites(glue, &image, base, &plan)?;
    Ok(plan)
}

/// Refuses a plan with a slot that must not or cannot be written (see module docs).
fn check_sites(
    glue: &Glue,
    image: &PeImage<'_>,
    base: usize,
    plan: &Plan,
) -> Result<(), PlatformError> {
    for patch in plan.patches() {
        let rva = patch
            .address
            .checked_sub(base)
            .and_then(|r| u32::try_from(r).ok())
            .ok_or(PlatformError::BadImage)?;
        let section = image.section_of_rva(rva).ok_or(PlatformError::BadImage)?;
        if section.is_discardable() || section.name.starts_with(b"PAGE") {
            return Err(PlatformError::BadImage);
        }
        // SAFETY: MmIsAddressValid only inspects page tables; it never faults.
        if unsafe { MmIsAddressValid(patch.address as PVOID) } == 0 {
            return Err(PlatformError::BadImage);
        }
        if patch.is_attached() {
            continue;
        }
        // SAFETY: a pointer-aligned slot inside the loaded image (checked by Plan::new),
        // resident (checked just above).
        let value = unsafe { glue.verifier.platform().read_slot(patch.address) };
        if value < KERNEL_SPACE_START && glue.hooks.routine_at(value).is_none() {
            // Not bound yet: patching would be undone by the loader.
            return Err(PlatformError::BadImage);
        }
    }
    Ok(())
}

fn report_error(report: &Report) -> PlatformError {
    if report
        .outcomes()
        .iter()
        .any(|o| matches!(o.outcome, Outcome::WriteFailed))
    {
        PlatformError::NoResources
    } else {
        PlatformError::SlotChanged
    }
}

fn attached_count(plan: &Plan) -> u32 {
    u32::try_from(plan.patches().iter().filter(|p| p.is_attached()).count()).unwrap_or(u32::MAX)
}

/// Patches driver `id` loaded at `[base, base + size)`; control-plane mutex held.
fn attach_locked(
    glue: &Glue,
    plans: &mut Plans,
    id: DriverId,
    base: usize,
    size: usize,
    at_load: bool,
) -> Result<u32, PlatformError> {
    let slot = plans
        .get_mut(usize::from(id.0))
        .ok_or(PlatformError::NoResources)?;
    if let Some(old) = slot.as_ref() {
        if old.image_base() != base {
            // The image this plan patched has been unloaded (drivers get no unload
            // notification): its slots are gone with it, nothing to restore.
            *slot = None;
        }
    }
    let mut plan = match slot.take() {
        Some(existing) => existing,
        None => build_plan(glue, base, size, at_load)?,
    };
    let platform = glue.verifier.platform();
    // SAFETY: the image is loaded at the plan's base (see build_plan) and GLUE is
    // published, so every hook is ready to run.
    let report = unsafe { plan.attach(platform) };
    let result = if report.is_clean() {
        Ok(attached_count(&plan))
    } else {
        // Put back what this call patched; a slot that cannot be restored keeps its
        // original in the plan for a later detach.
        // SAFETY: as above.
        let _undo = unsafe { plan.detach(platform) };
        Err(report_error(&report))
    };
    if result.is_ok() || plan.is_attached() {
        *slot = Some(plan);
    }
    result
}

/// Restores driver `id`'s slots; `Ok(restored)` or the first problem. Mutex held.
fn detach_locked(
    glue: &Glue,
    plans: &mut Plans,
    modules: &Modules,
    id: DriverId,
    name: &[u8],
) -> Result<u32, PlatformError> {
    let slot = plans
        .get_mut(usize::from(id.0))
        .ok_or(PlatformError::NotFound)?;
    let Some(plan) = slot.as_mut() else {
        return Ok(0);
    };
    if !modules.is_loaded(name, plan.image_base()) {
        *slot = None;
        return Ok(0);
    }
    // SAFETY: the image is still loaded at the plan's base (module list, just queried).
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
    if on_big_stack(|| glue.verifier.driver_detached(id, detach)).is_none() {
        glue.verifier.driver_detached(id, detach);
    }
}

/// Forgets an earlier instance of `name` still registered as live: a new load of the same
/// image means the old one unloaded. Its mappings still live are IOSV009. Mutex held.
fn retire_stale(glue: &Glue, plans: &mut Plans, name: &[u8], base: usize) {
    let drivers = glue.verifier.drivers();
    let Some(old) = drivers.find(name) else {
        return;
    };
    let Some(info) = drivers.info(old) else {
        return;
    };
    let live = matches!(info.state, DriverState::Attached | DriverState::Loaded);
    if live && info.image_base != base as u64 {
        if let Some(slot) = plans.get_mut(usize::from(old.0)) {
            *slot = None;
        }
        detached(glue, old, false);
    }
}

/// IOCTL `ATTACH` and start-up: hooks the loaded image named `name`.
pub fn attach_by_name(name: &[u8]) -> Result<u32, PlatformError> {
    let glue = engine().ok_or(PlatformError::Unsupported)?;
    if irql() != PASSIVE_LEVEL as u8 {
        return Err(PlatformError::Unsupported);
    }
    let modules = Modules::query().map_err(|_| PlatformError::NoResources)?;
    let module = modules.by_name(name).ok_or(PlatformError::NotFound)?;
    let base = module.image_base as usize;
    let size = module.image_size as usize;
    let file_name = module.file_name();
    glue.with_plans(|plans| {
        retire_stale(glue, plans, file_name, base);
        let id = glue
            .verifier
            .driver_attached(file_name, base as u64, size as u64)
            .ok_or(PlatformError::NoResources)?;
        let result = attach_locked(glue, plans, id, base, size, false);
        if result.is_err() && plans.get(usize::from(id.0)).is_none_or(Option::is_none) {
            detached(glue, id, true);
        }
        result
    })
}

/// IOCTL `DETACH`: restores the slots of the driver named `name`.
pub fn detach_by_name(name: &[u8]) -> Result<u32, PlatformError> {
    let glue = engine().ok_or(PlatformError::Unsupported)?;
    if irql() != PASSIVE_LEVEL as u8 {
        return Err(PlatformError::Unsupported);
    }
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
        let restored = detach_locked(glue, plans, &modules, id, name)?;
        detached(glue, id, still_loaded);
        Ok(restored)
    })
}

/// AddDevice: the id of the function driver whose image starts at `base`, registering it
/// (hooked if it is a target, else known for attribution only). `DriverId::NONE` if it
/// cannot be named.
pub fn function_driver(base: usize, size: usize) -> DriverId {
    let Some(glue) = engine() else {
        return DriverId::NONE;
    };
    let Ok(modules) = Modules::query() else {
        return DriverId::NONE;
    };
    let Some(module) = modules.by_base(base) else {
        return DriverId::NONE;
    };
    let name = module.file_name();
    if name.is_empty() {
        return DriverId::NONE;
    }
    glue.with_plans(|plans| {
        let drivers = glue.verifier.drivers();
        if let Some(id) = drivers.find(name) {
            let current = drivers.info(id).is_some_and(|i| {
                i.image_base == base as u64
                    && matches!(i.state, DriverState::Attached | DriverState::Loaded)
            });
            if current {
                return id;
            }
        }
        retire_stale(glue, plans, name, base);
        let is_target = glue.verifier.with_control(|c| c.targets.contains(name));
        if is_target {
            if let Some(id) = glue
                .verifier
                .driver_attached(name, base as u64, size as u64)
            {
                match attach_locked(glue, plans, id, base, size, false) {
                    Ok(_) => return id,
                    Err(_) => {
                        log_name(Level::Warning, c"cannot hook function driver", name);
                        if plans.get(usize::from(id.0)).is_none_or(Option::is_none) {
                            detached(glue, id, true);
                        }
                    }
                }
            }
        }
        drivers
            .register(name, base as u64, size as u64, false, false)
            .unwrap_or(DriverId::NONE)
    })
}

/// Unload: restores every plan whose image is still loaded. Slots that cannot be restored
/// are logged: after unload they would call into freed memory, which is why iosv pins
/// itself when it cannot take a hook back (see `Glue::pin`).
pub fn detach_all(glue: &Glue) {
    let modules = match Modules::query() {
        Ok(m) => m,
        Err(status) => {
            log_value(
                Level::Error,
                c"unload: no module list; slots left as they are, status",
                status as u32 as u64,
            );
            return;
        }
    };
    glue.with_plans(|plans| {
        for (index, slot) in plans.iter_mut().enumerate() {
            let Some(plan) = slot.as_mut() else { continue };
            let loaded = modules.by_base(plan.image_base()).is_some();
            if loaded {
                // SAFETY: the image is loaded at the plan's base (module list, just queried).
                let report = unsafe { plan.detach(glue.verifier.platform()) };
                if !report.is_clean() {
                    log_value(
                        Level::Error,
                        c"unload: import slots of driver id could not be restored:",
                        index as u64,
                    );
                }
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
            retire_stale(glue, plans, name, base);
            let Some(id) = glue.verifier.image_loaded(name, base as u64, size as u64) else {
                return;
            };
            match attach_locked(glue, plans, id, base, size, true) {
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
