//! `DriverEntry` and unload.
//!
//! Start-up order: AuxKlib; registry parameters (defaults on anything bad); the real
//! routines and ntoskrnl's export ordinals; the engine, allocated once in non-paged pool
//! on an expanded stack (`Verifier::new` uses `try_reserve`, so a short pool is
//! `STATUS_INSUFFICIENT_RESOURCES`, not a bug check) and published; the dispatch table;
//! the control device; the image-load callback; finally an attach to every configured
//! target that is already loaded.
//!
//! Unload tears down only while no import slot was ever patched and no hook handed out
//! (the unload policy, `state` module docs: after that `DriverUnload` stays set but
//! leaves everything in place, and an extra reference keeps the image mapped). Order:
//! remove the image-load callback; drop the attachments (none holds a patch) and their
//! driver object references; unpublish the engine; wait for callbacks to drain; delete
//! the control device and its link; free the engine.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};

use wdk_sys::ntddk::{
    MmGetSystemRoutineAddress, PsRemoveLoadImageNotifyRoutine, PsSetLoadImageNotifyRoutine,
};
use wdk_sys::{
    DRIVER_OBJECT, IRP_MJ_MAXIMUM_FUNCTION, NTSTATUS, NT_SUCCESS, PCUNICODE_STRING, PDRIVER_OBJECT,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};

use super::dispatch::{add_device, create_control_device, delete_control_device, dispatch};
use super::ffi::{self, ascii_wide, log, log_name, log_value, Level};
use super::images::{attach_by_name, detach_all, load_image_notify, ntoskrnl_ordinals, Modules};
use super::registry;
use super::state::{on_big_stack, wait_for_drain, Glue, Reals, GLUE};
use super::WindowsPlatform;

extern crate wdk_panic;

/// Kernel pool for `alloc` (non-paged, NX). Never reached from a hook path.
#[global_allocator]
static GLOBAL_ALLOCATOR: wdk_alloc::WdkAllocator = wdk_alloc::WdkAllocator;

/// Whether the image-load callback is registered.
static NOTIFY_REGISTERED: AtomicBool = AtomicBool::new(false);

const MM_MAP_IO_SPACE: &str = "MmMapIoSpace";
const MM_MAP_IO_SPACE_EX: &str = "MmMapIoSpaceEx";
const MM_UNMAP_IO_SPACE: &str = "MmUnmapIoSpace";
const MM_GET_SYSTEM_ROUTINE_ADDRESS: &str = "MmGetSystemRoutineAddress";

/// The driver's entry point.
///
/// # Safety
///
/// Called once by the I/O manager with a valid driver object and registry path.
#[export_name = "DriverEntry"]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    if driver.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: PASSIVE_LEVEL, first AuxKlib call.
    let status = unsafe { ffi::AuxKlibInitialize() };
    if !NT_SUCCESS(status) {
        log_value(
            Level::Error,
            c"AuxKlibInitialize failed, status",
            status as u32 as u64,
        );
        return status;
    }
    // SAFETY: DriverEntry's registry path, valid for the duration of DriverEntry.
    let config = unsafe { registry::read(registry_path) };
    let reals = real_routines();
    let ordinals = match Modules::query() {
        Ok(modules) => ntoskrnl_ordinals(&modules, reals.map),
        Err(_) => Default::default(),
    };
    let platform = {
        // SAFETY: the I/O manager's driver object, valid for the driver's lifetime.
        let d = unsafe { &*driver };
        WindowsPlatform::new(d.DriverStart as usize as u64, u64::from(d.DriverSize))
    };
    platform.refresh_debugger();
    let created = on_big_stack(|| Glue::create(platform, config.params, reals, ordinals, driver));
    let glue = match created {
        Some(Ok(glue)) => glue,
        Some(Err(status)) => {
            log(Level::Error, c"not enough non-paged pool for the engine");
            return status;
        }
        None => {
            log(Level::Error, c"no stack to build the engine");
            return STATUS_INSUFFICIENT_RESOURCES;
        }
    };
    // SAFETY: just created, not yet published, so not shared.
    let glue_ref = unsafe { &*glue };
    let mut flags = config.problems;
    glue_ref.verifier.with_control(|c| {
        for name in config.targets.iter() {
            if !c.targets.add(name) {
                log_name(Level::Warning, c"target list full; skipped", name);
                flags |= crate::protocol::STATE_TARGETS_TOO_MANY;
            }
        }
    });
    if config.targets.iter().next().is_none() {
        log(
            Level::Warning,
            c"no Targets configured: nothing is verified until iosvctl attach or config set --target",
        );
    }
    if hvci_enabled() {
        flags |= crate::protocol::STATE_HVCI;
    }
    glue_ref.verifier.set_state_flags(flags);
    GLUE.store(glue, Ordering::SeqCst);

    // SAFETY: the I/O manager's driver object; DriverEntry is the place to fill it in.
    let driver_ref = unsafe { &mut *driver };
    for entry in driver_ref
        .MajorFunction
        .iter_mut()
        .take((IRP_MJ_MAXIMUM_FUNCTION as usize).saturating_add(1))
    {
        *entry = Some(dispatch);
    }
    driver_ref.DriverUnload = Some(driver_unload);
    // SAFETY: every driver object has a driver extension.
    let extension = unsafe { &mut *driver_ref.DriverExtension };
    extension.AddDevice = Some(add_device);

    // SAFETY: our driver object, in DriverEntry.
    match unsafe { create_control_device(driver) } {
        Ok(()) => {}
        Err(status) => {
            log_value(
                Level::Error,
                c"cannot create the control device, status",
                status as u32 as u64,
            );
            unpublish_and_free();
            return status;
        }
    }

    // SAFETY: PASSIVE_LEVEL; the routine stays valid until removed in unload.
    let status = unsafe { PsSetLoadImageNotifyRoutine(Some(load_image_notify)) };
    if NT_SUCCESS(status) {
        NOTIFY_REGISTERED.store(true, Ordering::SeqCst);
    } else {
        log_value(
            Level::Warning,
            c"no image-load callback (only explicit attach works), status",
            status as u32 as u64,
        );
    }

    for name in config.targets.iter() {
        // On the expanded stack, as every attach: its plan and patch frame is over 4 KiB.
        match on_big_stack(|| attach_by_name(name)) {
            Some(Ok(_)) => log_name(Level::Info, c"attached to loaded target", name),
            Some(Err(crate::platform::PlatformError::NotFound)) => {}
            Some(Err(_)) => log_name(Level::Warning, c"cannot attach to loaded target", name),
            None => log_name(Level::Error, c"no stack to attach to loaded target", name),
        }
    }
    STATUS_SUCCESS
}

/// `DRIVER_UNLOAD`. Tears down only if no import slot was ever patched and no hook handed
/// out, and from its first step on none can be (`Glue::begin_unload`); otherwise it
/// leaves the engine, the hooks, the callback and the control device in place (the
/// extra driver-object reference `Glue::block_unload` took keeps the image mapped).
unsafe extern "C" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    let glue = GLUE.load(Ordering::SeqCst);
    // SAFETY: published by DriverEntry and still alive (freed only below).
    if let Some(glue_ref) = unsafe { glue.as_ref() } {
        if !glue_ref.begin_unload() {
            log(
                Level::Error,
                c"unload requested after import slots were patched: iosv stays until reboot",
            );
            return;
        }
    }
    if NOTIFY_REGISTERED.swap(false, Ordering::SeqCst) {
        // SAFETY: registered in DriverEntry with this routine; PASSIVE_LEVEL.
        let _ = unsafe { PsRemoveLoadImageNotifyRoutine(Some(load_image_notify)) };
    }
    // SAFETY: `glue` is null or the Glue DriverEntry published, which nothing has freed
    // yet: only unpublish_and_free (two lines below) frees it, and unload runs once.
    if let Some(glue_ref) = unsafe { glue.as_ref() } {
        detach_all(glue_ref);
    }
    unpublish_and_free();
    delete_control_device();
}

/// Whether memory integrity (HVCI) is on: `ZwQuerySystemInformation` of the code
/// integrity options (PASSIVE_LEVEL). Reported in `iosvctl status`; iosv never writes a
/// code page whether it is on or not.
fn hvci_enabled() -> bool {
    let mut info = ffi::CodeIntegrityInformation {
        length: core::mem::size_of::<ffi::CodeIntegrityInformation>() as u32,
        options: 0,
    };
    let mut returned = 0u32;
    // SAFETY: a valid, correctly sized buffer whose Length field is set, as the class
    // requires; PASSIVE_LEVEL (DriverEntry).
    let status = unsafe {
        ffi::ZwQuerySystemInformation(
            ffi::SYSTEM_CODE_INTEGRITY_INFORMATION,
            (&mut info as *mut ffi::CodeIntegrityInformation).cast(),
            info.length,
            &mut returned,
        )
    };
    NT_SUCCESS(status) && info.options & ffi::CODEINTEGRITY_OPTION_HVCI_KMCI_ENABLED != 0
}

/// Unpublishes the engine, waits until no callback runs iosv code, frees it.
fn unpublish_and_free() {
    let glue = GLUE.swap(null_mut(), Ordering::SeqCst);
    wait_for_drain();
    if !glue.is_null() {
        // SAFETY: made by Glue::create, unpublished above, and every user has drained.
        unsafe { Glue::destroy(glue) };
    }
}

/// The real routines, resolved once (iosv's own imports are never patched).
fn real_routines() -> Reals {
    const MAP: [u16; MM_MAP_IO_SPACE.len()] = ascii_wide(MM_MAP_IO_SPACE);
    const MAP_EX: [u16; MM_MAP_IO_SPACE_EX.len()] = ascii_wide(MM_MAP_IO_SPACE_EX);
    const UNMAP: [u16; MM_UNMAP_IO_SPACE.len()] = ascii_wide(MM_UNMAP_IO_SPACE);
    const GET: [u16; MM_GET_SYSTEM_ROUTINE_ADDRESS.len()] =
        ascii_wide(MM_GET_SYSTEM_ROUTINE_ADDRESS);
    let resolve = |units: &[u16]| -> usize {
        let Some(mut name) = ffi::unicode_string(units) else {
            return 0;
        };
        // SAFETY: a valid counted string; PASSIVE_LEVEL (DriverEntry).
        let address = unsafe { MmGetSystemRoutineAddress(&mut name) };
        address as usize
    };
    let mut family = [0usize; crate::pe::HookedRoutine::COUNT];
    for routine in crate::pe::HookedRoutine::ALL {
        if !routine.is_mdl_family() {
            continue;
        }
        // Names are ASCII and shorter than 64 units.
        let mut units = [0u16; 64];
        let name = routine.name().as_bytes();
        for (d, s) in units.iter_mut().zip(name) {
            *d = u16::from(*s);
        }
        if let (Some(slot), Some(units)) =
            (family.get_mut(routine.index()), units.get(..name.len()))
        {
            *slot = resolve(units);
        }
    }
    Reals {
        map: resolve(&MAP),
        map_ex: resolve(&MAP_EX),
        unmap: resolve(&UNMAP),
        get_routine: resolve(&GET),
        family,
    }
}
