//! IRP dispatch for the two kinds of device object iosv creates, told apart by a tag in
//! the device extension (one `MajorFunction` table serves the whole driver):
//!
//! - the **control device** `\Device\IoSpaceVerifier` (+ `\DosDevices\IoSpaceVerifier`),
//!   created with `IoCreateDeviceSecure` and the SDDL `D:P(A;;GA;;;SY)(A;;GA;;;BA)`
//!   (SYSTEM and Administrators only); IRP_MJ_CREATE also checks the caller's token
//!   (`SeTokenIsAdmin`), as defence in depth; CLOSE/CLEANUP succeed; DEVICE_CONTROL goes to
//!   `control::control` with the METHOD_BUFFERED system buffer; everything else is
//!   refused. Its lifetime follows the WDK filter samples: it exists while iosv runs as a
//!   service or has filter instances; when the last filter instance is removed and no
//!   import slot was ever patched, it is deleted so that the PnP manager can unload a
//!   PnP-loaded iosv (a service-started iosv deletes it in its unload routine).
//! - **filter devices**, one per device stack iosv is an upper filter of: START_DEVICE,
//!   STOP_DEVICE, SURPRISE_REMOVAL and REMOVE_DEVICE are forwarded synchronously and
//!   reported to the engine (`Verifier::device_event`); DEVICE_USAGE_NOTIFICATION mirrors
//!   `DO_POWER_PAGABLE` as the filter samples do (set on the way down when the device
//!   above is pageable or there is none, cleared on the way up when the device below is
//!   not); every other IRP, power included,
//!   is passed down untouched (`IoSkipCurrentIrpStackLocation` + `IofCallDriver`; since
//!   Windows Vista `IoCallDriver`, not `PoCallDriver`, forwards power IRPs and
//!   `PoStartNextPowerIrp` does nothing). A remove lock keeps the filter device alive while
//!   IRPs are in it.

use alloc::vec::Vec;
use core::ptr::{addr_of_mut, null_mut};

use wdk_sys::ntddk::{
    IoAcquireRemoveLockEx, IoAttachDeviceToDeviceStackSafe, IoCreateDevice, IoCreateSymbolicLink,
    IoDeleteDevice, IoDeleteSymbolicLink, IoDetachDevice, IoForwardIrpSynchronously,
    IoInitializeRemoveLockEx, IoReleaseRemoveLockAndWaitEx, IoReleaseRemoveLockEx, IofCallDriver,
    IofCompleteRequest, SeTokenIsAdmin,
};
use wdk_sys::{
    DO_BUFFERED_IO, DO_DEVICE_INITIALIZING, DO_DIRECT_IO, DO_POWER_PAGABLE,
    FILE_DEVICE_SECURE_OPEN, FILE_DEVICE_UNKNOWN, GUID, IO_NO_INCREMENT, IO_REMOVE_LOCK,
    IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, IRP_MJ_PNP,
    IRP_MN_DEVICE_USAGE_NOTIFICATION, IRP_MN_REMOVE_DEVICE, IRP_MN_START_DEVICE,
    IRP_MN_STOP_DEVICE, IRP_MN_SURPRISE_REMOVAL, NTSTATUS, NT_SUCCESS, PDEVICE_OBJECT,
    PDRIVER_OBJECT, PIO_STACK_LOCATION, PIRP, STATUS_ACCESS_DENIED, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};

use super::ffi::{
    self, ascii_wide, current_stack_location, set_irp_status, skip_current_stack_location,
};
use super::state::{engine, on_big_stack};
use crate::control::control;
use crate::drivers::DriverId;
use crate::protocol::{Status, DEVICE_NAME, DEVICE_TYPE, DOS_DEVICE_NAME, METHOD_BUFFERED};
use crate::verifier::DeviceEvent;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Tag of the control device's extension ("iosC").
const KIND_CONTROL: u32 = u32::from_le_bytes(*b"iosC");
/// Tag of a filter device's extension ("iosF").
const KIND_FILTER: u32 = u32::from_le_bytes(*b"iosF");
/// Remove-lock allocation tag ("iosv").
const REMOVE_LOCK_TAG: u32 = u32::from_le_bytes(*b"iosv");
/// `sizeof(IO_REMOVE_LOCK)` as the `…Ex` remove-lock routines want it (free-build layout).
const REMOVE_LOCK_SIZE: u32 = core::mem::size_of::<IO_REMOVE_LOCK>() as u32;
/// Largest IOCTL input copied (every request struct is far smaller; a longer input is
/// answered `InputTooLong` without copying it).
const MAX_INPUT: usize = 64 * 1024;

const DEVICE_NAME_W: [u16; DEVICE_NAME.len()] = ascii_wide(DEVICE_NAME);
/// `SDDL_DEVOBJ_SYS_ALL_ADM_ALL` (wdmsec.h): SYSTEM and Administrators, all access.
const SDDL_STR: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";
const SDDL_W: [u16; SDDL_STR.len()] = ascii_wide(SDDL_STR);
/// iosv's device class GUID for the control device, under which an administrator may
/// override the SDDL in the registry ({6c1c4a5e-3f4e-4a4b-9c7e-10535f760001}).
const CONTROL_CLASS: GUID = GUID {
    Data1: 0x6c1c_4a5e,
    Data2: 0x3f4e,
    Data3: 0x4a4b,
    Data4: [0x9c, 0x7e, 0x10, 0x53, 0x5f, 0x76, 0x00, 0x01],
};

/// The control device (null while it does not exist).
static CONTROL_DEVICE: AtomicPtr<wdk_sys::DEVICE_OBJECT> = AtomicPtr::new(null_mut());
/// Filter devices alive (guarded by the control-plane mutex).
static FILTERS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
const DOS_DEVICE_NAME_W: [u16; DOS_DEVICE_NAME.len()] = ascii_wide(DOS_DEVICE_NAME);

/// The extension of every device object iosv creates.
#[repr(C)]
pub struct DeviceExt {
    kind: u32,
    driver: u16,
    /// The device below a filter device (null for the control device).
    lower: PDEVICE_OBJECT,
    /// The stack's physical device object: the device id reported to the engine.
    pdo: PDEVICE_OBJECT,
    remove_lock: IO_REMOVE_LOCK,
}

/// Creates the control device and its symbolic link if it does not exist (DriverEntry,
/// AddDevice; PASSIVE_LEVEL).
///
/// # Safety
///
/// `driver` is iosv's driver object.
pub unsafe fn create_control_device(driver: PDRIVER_OBJECT) -> Result<(), NTSTATUS> {
    if !CONTROL_DEVICE.load(Ordering::SeqCst).is_null() {
        return Ok(());
    }
    let mut name = ffi::unicode_string(&DEVICE_NAME_W).ok_or(STATUS_INVALID_PARAMETER)?;
    let mut link = ffi::unicode_string(&DOS_DEVICE_NAME_W).ok_or(STATUS_INVALID_PARAMETER)?;
    let sddl = ffi::unicode_string(&SDDL_W).ok_or(STATUS_INVALID_PARAMETER)?;
    let mut device: PDEVICE_OBJECT = null_mut();
    // SAFETY: valid driver object, names and GUID; FILE_DEVICE_SECURE_OPEN so the DACL
    // also guards opens of names below the device; not exclusive (several clients may
    // read).
    let status = unsafe {
        ffi::WdmlibIoCreateDeviceSecure(
            driver,
            core::mem::size_of::<DeviceExt>() as u32,
            &mut name,
            DEVICE_TYPE,
            FILE_DEVICE_SECURE_OPEN,
            0,
            &sddl,
            &CONTROL_CLASS,
            &mut device,
        )
    };
    if !NT_SUCCESS(status) {
        return Err(status);
    }
    // SAFETY: the device was created: the extension is ours, zeroed, sized for DeviceExt.
    let ext = unsafe { (*device).DeviceExtension }.cast::<DeviceExt>();
    // SAFETY: `ext` is the extension IoCreateDevice just allocated with this device:
    // non-null, aligned and sized for DeviceExt; no symbolic link exists yet and
    // DO_DEVICE_INITIALIZING is still set, so no IRP can reach it and nobody reads it
    // concurrently.
    unsafe { (*ext).kind = KIND_CONTROL };
    // SAFETY: both names are valid counted strings; PASSIVE_LEVEL.
    let status = unsafe { IoCreateSymbolicLink(&mut link, &mut name) };
    if !NT_SUCCESS(status) {
        // SAFETY: created above; no handle can be open on it yet.
        unsafe { IoDeleteDevice(device) };
        return Err(status);
    }
    // SAFETY: the device is ours; buffered I/O (METHOD_BUFFERED only), initialisation done.
    let flags = unsafe { &mut (*device).Flags };
    *flags |= DO_BUFFERED_IO;
    *flags &= !DO_DEVICE_INITIALIZING;
    CONTROL_DEVICE.store(device, Ordering::SeqCst);
    Ok(())
}

/// Deletes the symbolic link and the control device, if it exists (unload; the last
/// filter instance's removal). PASSIVE_LEVEL.
pub fn delete_control_device() {
    let device = CONTROL_DEVICE.swap(null_mut(), Ordering::SeqCst);
    if device.is_null() {
        return;
    }
    if let Some(mut link) = ffi::unicode_string(&DOS_DEVICE_NAME_W) {
        // SAFETY: a valid counted string; PASSIVE_LEVEL.
        let _ = unsafe { IoDeleteSymbolicLink(&mut link) };
    }
    // SAFETY: created by create_control_device; a handle still open keeps the object
    // until it closes (IoDeleteDevice marks it for deletion).
    unsafe { IoDeleteDevice(device) };
}

/// The `DRIVER_DISPATCH` routine installed for every major function.
///
/// # Safety
///
/// Called by the I/O manager with one of this driver's devices and an IRP for it.
pub unsafe extern "C" fn dispatch(device: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: the I/O manager passes a valid device object of this driver.
    let ext = unsafe { (*device).DeviceExtension }.cast::<DeviceExt>();
    let kind = if ext.is_null() {
        0
    } else {
        // SAFETY: every device this driver creates has a DeviceExt.
        unsafe { (*ext).kind }
    };
    match kind {
        // SAFETY: the I/O manager hands us a valid IRP for this control device.
        KIND_CONTROL => unsafe { control_dispatch(irp) },
        // SAFETY: a filter device's extension, and an IRP for it.
        KIND_FILTER => unsafe { filter_dispatch(device, ext, irp) },
        // SAFETY: an IRP we own and complete at once.
        _ => unsafe { complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0) },
    }
}

/// Sets the status and completes the IRP; returns the status.
///
/// # Safety
///
/// `irp` is a valid IRP the caller owns and has not passed on.
unsafe fn complete(irp: PIRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: the caller owns the IRP.
    unsafe { set_irp_status(irp, status, information) };
    // SAFETY: the caller owns `irp` and has not passed it on (this function's contract), so
    // this is its one completion; the I/O manager may free it, and it is not touched
    // afterwards.
    unsafe { IofCompleteRequest(irp, IO_NO_INCREMENT as i8) };
    status
}

// ---- control device ----------------------------------------------------------------------

/// # Safety
///
/// `irp` is a valid IRP sent to the control device.
unsafe fn control_dispatch(irp: PIRP) -> NTSTATUS {
    // SAFETY: a dispatched IRP has a current stack location.
    let sl = unsafe { current_stack_location(irp) };
    // SAFETY: valid stack location of our IRP.
    let major = u32::from(unsafe { (*sl).MajorFunction });
    let (status, information) = match major {
        // SAFETY: an IRP_MJ_CREATE stack location.
        IRP_MJ_CREATE => (unsafe { admit(sl) }, 0),
        IRP_MJ_CLOSE | IRP_MJ_CLEANUP => (STATUS_SUCCESS, 0),
        // SAFETY: an IRP_MJ_DEVICE_CONTROL IRP and its stack location.
        IRP_MJ_DEVICE_CONTROL => unsafe { device_control(irp, sl) },
        _ => (STATUS_INVALID_DEVICE_REQUEST, 0),
    };
    // SAFETY: our IRP, completed once.
    unsafe { complete(irp, status, information) }
}

/// IRP_MJ_CREATE: admits only a caller whose effective token is an administrator's
/// (`SeTokenIsAdmin`; the LocalSystem token has the Administrators group).
///
/// # Safety
///
/// `sl` is the current stack location of an IRP_MJ_CREATE IRP.
unsafe fn admit(sl: PIO_STACK_LOCATION) -> NTSTATUS {
    // SAFETY: valid stack location.
    let parameters = unsafe { &(*sl).Parameters };
    // SAFETY: IRP_MJ_CREATE uses the `Create` arm.
    let security = unsafe { parameters.Create.SecurityContext };
    if security.is_null() {
        return STATUS_ACCESS_DENIED;
    }
    // SAFETY: the I/O manager's security context for this create, valid during dispatch.
    let access_state = unsafe { (*security).AccessState };
    if access_state.is_null() {
        return STATUS_ACCESS_DENIED;
    }
    // SAFETY: `access_state` is non-null (checked just above) and is this create's
    // ACCESS_STATE, which the I/O manager keeps valid for the whole dispatch; we borrow one
    // field for the rest of it. `SeQuerySubjectContextToken` (a macro) picks the client
    // token if the caller impersonates, else the primary token.
    let subject = unsafe { &(*access_state).SubjectSecurityContext };
    let token = if subject.ClientToken.is_null() {
        subject.PrimaryToken
    } else {
        subject.ClientToken
    };
    if token.is_null() {
        return STATUS_ACCESS_DENIED;
    }
    // SAFETY: a token referenced by the subject context for the duration of the create.
    if unsafe { SeTokenIsAdmin(token) } != 0 {
        STATUS_SUCCESS
    } else {
        STATUS_ACCESS_DENIED
    }
}

/// IRP_MJ_DEVICE_CONTROL → `control()`. Returns (status, information).
///
/// # Safety
///
/// `irp` is a buffered-I/O IOCTL IRP for the control device, `sl` its stack location.
unsafe fn device_control(irp: PIRP, sl: PIO_STACK_LOCATION) -> (NTSTATUS, usize) {
    // SAFETY: valid stack location.
    let parameters = unsafe { &(*sl).Parameters };
    // SAFETY: IRP_MJ_DEVICE_CONTROL uses the `DeviceIoControl` arm.
    let ioctl = unsafe { &parameters.DeviceIoControl };
    let code = ioctl.IoControlCode;
    let in_len = ioctl.InputBufferLength as usize;
    let out_len = ioctl.OutputBufferLength as usize;
    // The transfer method is the code's low two bits: only METHOD_BUFFERED has a system
    // buffer; anything else would hand us user addresses.
    if code & 3 != METHOD_BUFFERED {
        return (Status::UnknownCode as u32 as NTSTATUS, 0);
    }
    let Some(glue) = engine() else {
        return (STATUS_INVALID_DEVICE_REQUEST, 0);
    };
    if in_len > MAX_INPUT {
        return (Status::InputTooLong as u32 as NTSTATUS, 0);
    }
    // SAFETY: our IRP, owned until completed.
    let associated = unsafe { &(*irp).AssociatedIrp };
    // SAFETY: `AssociatedIrp` is a union whose `SystemBuffer` arm is the one buffered I/O
    // uses.
    let buffer = unsafe { associated.SystemBuffer }.cast::<u8>();
    if buffer.is_null() && (in_len != 0 || out_len != 0) {
        return (STATUS_INVALID_PARAMETER, 0);
    }
    // Input and output share the system buffer: copy the input out first.
    let mut input = Vec::new();
    if input.try_reserve_exact(in_len).is_err() {
        return (STATUS_INSUFFICIENT_RESOURCES, 0);
    }
    if in_len != 0 {
        // SAFETY: the I/O manager allocated max(in, out) bytes and copied `in_len` input
        // bytes into them.
        input.extend_from_slice(unsafe { core::slice::from_raw_parts(buffer, in_len) });
    }
    let output: &mut [u8] = if out_len == 0 {
        &mut []
    } else {
        // SAFETY: `buffer` is non-null here (checked above when `out_len != 0`) and is the
        // system buffer of max(in, out) bytes the I/O manager allocated for this
        // METHOD_BUFFERED IRP, ours until it completes; `input` is a separate copy, so
        // nothing aliases this slice.
        unsafe { core::slice::from_raw_parts_mut(buffer, out_len) }
    };
    // Its walks keep kilobytes on the stack: never on the caller's stack.
    let Some(reply) = on_big_stack(|| control(&glue.verifier, code, &input, &mut *output)) else {
        return (STATUS_INSUFFICIENT_RESOURCES, 0);
    };
    let status = reply.status as u32 as NTSTATUS;
    // On success the I/O manager copies `information` bytes back: never more than the
    // output buffer. On an error it copies nothing, and `information` carries the size
    // the protocol says (OutputTooSmall).
    let information = if NT_SUCCESS(status) {
        reply.information.min(out_len)
    } else {
        reply.information
    };
    (status, information)
}

// ---- filter devices ----------------------------------------------------------------------

/// `DRIVER_ADD_DEVICE`: attaches a filter device above the stack of `pdo`.
///
/// # Safety
///
/// Called by the PnP manager (PASSIVE_LEVEL) with this driver's object and a valid PDO.
pub unsafe extern "C" fn add_device(driver: PDRIVER_OBJECT, pdo: PDEVICE_OBJECT) -> NTSTATUS {
    let mut filter: PDEVICE_OBJECT = null_mut();
    // SAFETY: the PnP manager's driver object; an unnamed device with room for DeviceExt.
    let status = unsafe {
        IoCreateDevice(
            driver,
            core::mem::size_of::<DeviceExt>() as u32,
            null_mut(),
            FILE_DEVICE_UNKNOWN,
            0,
            0,
            &mut filter,
        )
    };
    if !NT_SUCCESS(status) {
        // A verifier must not keep the device from starting: decline to filter it.
        return STATUS_SUCCESS;
    }
    // SAFETY: just created; the extension is zeroed and sized for DeviceExt.
    let ext = unsafe { (*filter).DeviceExtension }.cast::<DeviceExt>();
    // SAFETY: `ext` is the extension IoCreateDevice just allocated: non-null, aligned and
    // sized for DeviceExt; the device is not attached yet, so no IRP reaches it and
    // nobody reads it concurrently.
    unsafe { (*ext).kind = KIND_FILTER };
    // SAFETY: the same fresh, unattached extension, written by this thread only; a
    // DeviceExt field of plain pointer type.
    unsafe { (*ext).pdo = pdo };
    // SAFETY: a place projection inside our extension; nothing is read.
    let lock = unsafe { addr_of_mut!((*ext).remove_lock) };
    // SAFETY: the lock lives in the extension for the device's lifetime.
    unsafe { IoInitializeRemoveLockEx(lock, REMOVE_LOCK_TAG, 0, 0, REMOVE_LOCK_SIZE) };
    // SAFETY: a place projection inside our extension; nothing is read.
    let lower_slot = unsafe { addr_of_mut!((*ext).lower) };
    // SAFETY: `lower` is stored into the extension before the filter can receive IRPs,
    // which is what the Safe variant is for.
    let status = unsafe { IoAttachDeviceToDeviceStackSafe(filter, pdo, lower_slot) };
    if !NT_SUCCESS(status) {
        // SAFETY: created above, never attached.
        unsafe { IoDeleteDevice(filter) };
        return STATUS_SUCCESS;
    }
    // SAFETY: attached: `lower` is the device we sit on, referenced by the attachment.
    let lower = unsafe { (*ext).lower };
    // SAFETY: the lower device object is valid while we are attached to it.
    let lower_ref = unsafe { &*lower };
    // SAFETY: our own device, not yet started (DO_DEVICE_INITIALIZING is still set).
    let filter_ref = unsafe { &mut *filter };
    filter_ref.DeviceType = lower_ref.DeviceType;
    filter_ref.Characteristics = lower_ref.Characteristics;
    filter_ref.Flags |= lower_ref.Flags & (DO_BUFFERED_IO | DO_DIRECT_IO | DO_POWER_PAGABLE);
    // The target in the stack below us: the lowest device above the PDO whose driver is a
    // configured target (a lower filter, the function driver, or an upper filter below
    // iosv: installed class-wide, iosv sits above the device's own upper filters, and
    // filters of one level have no fixed order); else the owner of the device we attached
    // to (the function driver, or the upper filter below us).
    // SAFETY: AddDevice: `pdo` is the stack's PDO and `filter` was just attached on top.
    let in_stack = on_big_stack(|| unsafe { target_in_stack(pdo, filter) }).flatten();
    let function_driver = in_stack.unwrap_or(lower_ref.DriverObject);
    if !function_driver.is_null() {
        // On the expanded stack: hooking the function driver builds and writes a plan,
        // a frame over 4 KiB, and AddDevice runs on the PnP manager's stack. Without one
        // the driver is not hooked (logged), rather than risk a double fault.
        // SAFETY: the driver object of a device in the stack, valid while we are attached
        // (the callout runs synchronously, within this call).
        let id = on_big_stack(|| unsafe { super::images::function_driver(function_driver) });
        let id = id.unwrap_or_else(|| {
            super::ffi::log(
                super::ffi::Level::Error,
                c"no stack to hook the function driver",
            );
            crate::drivers::DriverId::NONE
        });
        // SAFETY: our extension, not yet reachable by IRPs.
        unsafe { (*ext).driver = id.0 };
    }
    // One more filter instance; the control device exists while any does (filter samples).
    // No iosv lock is held around device creation and deletion: the PnP manager
    // serialises AddDevice and REMOVE_DEVICE, and the pointer is swapped atomically, so
    // the worst interleaving is a failed recreate, logged.
    FILTERS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: our driver object, at PASSIVE_LEVEL.
    if let Err(status) = unsafe { create_control_device(driver) } {
        super::ffi::log_value(
            super::ffi::Level::Warning,
            c"cannot recreate the control device, status",
            status as u32 as u64,
        );
    }
    filter_ref.Flags &= !DO_DEVICE_INITIALIZING;
    STATUS_SUCCESS
}

/// The driver of the lowest device between `pdo` and `top` (both excluded) that is a
/// configured target, walking the stack up through `AttachedDevice`; bounded.
///
/// # Safety
///
/// AddDevice: `pdo` is the PDO of the stack being built and `top` our filter device, just
/// attached on it. The PnP manager builds one stack at a time, so the devices between are
/// attached and stay so for the call.
unsafe fn target_in_stack(pdo: PDEVICE_OBJECT, top: PDEVICE_OBJECT) -> Option<PDRIVER_OBJECT> {
    // SAFETY: the stack's PDO, valid for the call (contract).
    let mut device = unsafe { (*pdo).AttachedDevice };
    for _ in 0..STACK_WALK_LIMIT {
        if device.is_null() || device == top {
            return None;
        }
        // SAFETY: a device attached in this stack, below `top` (contract).
        let driver = unsafe { (*device).DriverObject };
        // SAFETY: the driver object of a device in the stack being built.
        if !driver.is_null() && unsafe { super::images::is_target_driver(driver) } {
            return Some(driver);
        }
        // SAFETY: as above.
        device = unsafe { (*device).AttachedDevice };
    }
    None
}

/// Devices [`target_in_stack`] looks at above a PDO, at most (real stacks hold a few).
const STACK_WALK_LIMIT: usize = 32;

/// # Safety
///
/// `device` is one of our filter devices, `ext` its extension, `irp` an IRP for it.
unsafe fn filter_dispatch(device: PDEVICE_OBJECT, ext: *mut DeviceExt, irp: PIRP) -> NTSTATUS {
    // SAFETY: the remove lock lives in the extension.
    let lock = unsafe { addr_of_mut!((*ext).remove_lock) };
    // SAFETY: initialised in add_device; the IRP address is the tag.
    let status =
        unsafe { IoAcquireRemoveLockEx(lock, irp.cast(), c"".as_ptr(), 1, REMOVE_LOCK_SIZE) };
    if !NT_SUCCESS(status) {
        // SAFETY: our IRP, failed at once (the device is being removed).
        return unsafe { complete(irp, status, 0) };
    }
    // SAFETY: a dispatched IRP has a current stack location.
    let sl = unsafe { current_stack_location(irp) };
    // SAFETY: valid stack location of our IRP.
    let stack = unsafe { &*sl };
    let (major, minor) = (stack.MajorFunction, stack.MinorFunction);
    // SAFETY: attached in add_device, detached only on REMOVE below.
    let lower = unsafe { (*ext).lower };
    if u32::from(major) != IRP_MJ_PNP {
        // SAFETY: pass-through: our stack location becomes the lower driver's.
        unsafe { skip_current_stack_location(irp) };
        // SAFETY: the lower device is valid while we are attached; the IRP is its now.
        let status = unsafe { IofCallDriver(lower, irp) };
        // SAFETY: acquired above with the same tag (the address only, not dereferenced).
        unsafe { IoReleaseRemoveLockEx(lock, irp.cast(), REMOVE_LOCK_SIZE) };
        return status;
    }
    // SAFETY: the extension is valid until the device is deleted below.
    let ext_ref = unsafe { &*ext };
    let (driver, pdo) = (DriverId(ext_ref.driver), ext_ref.pdo);
    let event = |e: DeviceEvent| report(driver, pdo as usize as u64, e);
    match u32::from(minor) {
        IRP_MN_START_DEVICE => {
            event(DeviceEvent::StartBegin);
            // SAFETY: PASSIVE_LEVEL PnP IRP we own; lower is attached.
            let status = unsafe { forward_and_complete(lower, irp) };
            event(DeviceEvent::StartEnd);
            // SAFETY: acquired above.
            unsafe { IoReleaseRemoveLockEx(lock, irp.cast(), REMOVE_LOCK_SIZE) };
            status
        }
        IRP_MN_STOP_DEVICE | IRP_MN_SURPRISE_REMOVAL => {
            // SAFETY: a PnP IRP (PASSIVE_LEVEL) that we own, the remove lock held;
            // `lower` is attached (detached only on REMOVE).
            let status = unsafe { forward_and_complete(lower, irp) };
            if u32::from(minor) == IRP_MN_SURPRISE_REMOVAL {
                event(DeviceEvent::SurpriseRemoved);
            } else if NT_SUCCESS(status) {
                event(DeviceEvent::Stopped);
            }
            // SAFETY: acquired above.
            unsafe { IoReleaseRemoveLockEx(lock, irp.cast(), REMOVE_LOCK_SIZE) };
            status
        }
        IRP_MN_REMOVE_DEVICE => {
            // Wait for every other IRP in this device to leave it.
            // SAFETY: acquired above; PASSIVE_LEVEL.
            unsafe { IoReleaseRemoveLockAndWaitEx(lock, irp.cast(), REMOVE_LOCK_SIZE) };
            // SAFETY: a PnP IRP (PASSIVE_LEVEL) that we own; `lower` is still attached
            // (IoDetachDevice comes after).
            let status = unsafe { forward_and_complete(lower, irp) };
            event(DeviceEvent::Removed);
            // SAFETY: detach from the device we attached to, then delete ours; no IRP can
            // reach it any more.
            unsafe { IoDetachDevice(lower) };
            // SAFETY: `device` is our filter device from add_device, now detached; the
            // release-and-wait above drained every other IRP and the PnP manager sends none
            // after REMOVE, so nothing references it. Its extension (`ext`, `lock`) is not
            // touched after this point.
            unsafe { IoDeleteDevice(device) };
            last_filter_gone();
            status
        }
        IRP_MN_DEVICE_USAGE_NOTIFICATION => {
            // SAFETY: our device, `lower` attached; PASSIVE_LEVEL PnP IRP we own.
            let status = unsafe { usage_notification(device, lower, irp) };
            // SAFETY: acquired above.
            unsafe { IoReleaseRemoveLockEx(lock, irp.cast(), REMOVE_LOCK_SIZE) };
            status
        }
        _ => {
            // SAFETY: pass-through as for non-PnP IRPs.
            unsafe { skip_current_stack_location(irp) };
            // SAFETY: `lower` is the device we are attached to (valid while attached, and we
            // hold the remove lock); after the skip the IRP belongs to it.
            let status = unsafe { IofCallDriver(lower, irp) };
            // SAFETY: acquired above.
            unsafe { IoReleaseRemoveLockEx(lock, irp.cast(), REMOVE_LOCK_SIZE) };
            status
        }
    }
}

/// One filter instance fewer: the last one takes the control device with it unless iosv
/// must stay loaded anyway (unload blocked), so that the PnP manager can unload a
/// PnP-loaded iosv. PASSIVE_LEVEL.
fn last_filter_gone() {
    let Some(glue) = engine() else { return };
    let left = FILTERS.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
    // No iosv lock held: deleting our last device may run our unload routine on this
    // thread, which takes iosv's locks.
    if left == 0 && !glue.is_pinned() {
        delete_control_device();
    }
}

/// IRP_MN_DEVICE_USAGE_NOTIFICATION (paging, hibernation, dump file on this stack): the
/// filter keeps `DO_POWER_PAGABLE` as the drivers around it have it (WDK filter sample):
/// set on the way down when the device above is pageable or there is none, cleared on
/// the way up when the device below is not.
///
/// # Safety
///
/// PASSIVE_LEVEL; `device` is our filter device attached above `lower`; `irp` is the PnP
/// IRP we own.
unsafe fn usage_notification(device: PDEVICE_OBJECT, lower: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: our own device object.
    let above = unsafe { (*device).AttachedDevice };
    // SAFETY: a device attached above ours stays valid while the IRP is in its stack.
    let above_pageable = above.is_null() || unsafe { (*above).Flags } & DO_POWER_PAGABLE != 0;
    if above_pageable {
        // SAFETY: our own device object; the PnP manager serialises usage notifications.
        unsafe { (*device).Flags |= DO_POWER_PAGABLE };
    }
    let on_the_way_up = || {
        // SAFETY: the lower device is valid while we are attached.
        if unsafe { (*lower).Flags } & DO_POWER_PAGABLE == 0 {
            // SAFETY: our own device object.
            unsafe { (*device).Flags &= !DO_POWER_PAGABLE };
        }
    };
    // SAFETY: per the contract.
    unsafe { forward_and_complete_with(lower, irp, on_the_way_up) }
}

/// Forwards a PnP IRP and waits for the lower stack (`IoForwardIrpSynchronously`: copies
/// our stack location down, sets a completion routine, waits), then completes it with the
/// lower drivers' status. If the IRP could not be forwarded that way (no stack location to
/// spare; cannot happen once attached) it is passed down untouched instead.
///
/// # Safety
///
/// PASSIVE_LEVEL; `irp` is a PnP IRP we own; `lower` is the device we are attached to.
unsafe fn forward_and_complete(lower: PDEVICE_OBJECT, irp: PIRP) -> NTSTATUS {
    // SAFETY: per the contract.
    unsafe { forward_and_complete_with(lower, irp, || {}) }
}

/// [`forward_and_complete`] that runs `on_the_way_up` after the lower stack completed the
/// IRP and before it is completed to the driver above.
///
/// # Safety
///
/// As for [`forward_and_complete`].
unsafe fn forward_and_complete_with(
    lower: PDEVICE_OBJECT,
    irp: PIRP,
    on_the_way_up: impl FnOnce(),
) -> NTSTATUS {
    // SAFETY: per the contract.
    if unsafe { IoForwardIrpSynchronously(lower, irp) } == 0 {
        // SAFETY: pass-through.
        unsafe { skip_current_stack_location(irp) };
        // SAFETY: the IRP belongs to the lower driver after this.
        return unsafe { IofCallDriver(lower, irp) };
    }
    on_the_way_up();
    // SAFETY: the lower stack completed the IRP back to us; we own it again.
    let status = unsafe { ffi::irp_status(irp) };
    // SAFETY: `Information` is unchanged by us; complete with the lower status.
    let information = unsafe { (*irp).IoStatus.Information } as usize;
    // SAFETY: completed once, here.
    unsafe { complete(irp, status, information) }
}

/// Feeds a PnP event to the engine, on a big stack (the leak walk keeps a batch of
/// mappings on the stack).
fn report(driver: DriverId, device: u64, event: DeviceEvent) {
    let Some(glue) = engine() else { return };
    // Never on the IRP's own stack (kilobytes of leak batch): without a bigger stack the
    // event is dropped and said so, rather than risk a double fault.
    if on_big_stack(|| glue.verifier.device_event(driver, device, event)).is_none() {
        super::ffi::log_value(
            super::ffi::Level::Error,
            c"no stack for a PnP event; dropped, device",
            device,
        );
    }
}
