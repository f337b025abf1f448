//! The object manager's names and the security check of a create: driver objects by name
//! (`ObReferenceObjectByName` with `IoDriverObjectType`), named devices and their
//! symbolic links (`IoCreateSymbolicLink`), and the token of the caller the runner opens
//! devices for (`SeTokenIsAdmin`).
//!
//! Objects are never freed here (as the kernel routines' objects), so reference counts
//! are not kept: `ObReferenceObjectByName` / `ObDereferenceObjectDeferDelete` only look
//! up and forget.

use super::kernel::{Status, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS};
use super::Obj;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// `STATUS_OBJECT_TYPE_MISMATCH`.
const STATUS_OBJECT_TYPE_MISMATCH: Status = 0xC000_0024_u32 as i32;
/// `STATUS_OBJECT_NAME_COLLISION`.
const STATUS_OBJECT_NAME_COLLISION: Status = 0xC000_0035_u32 as i32;

#[derive(Default)]
struct Names {
    /// `\Driver\X` (lower case) → `DRIVER_OBJECT`.
    drivers: HashMap<String, usize>,
    /// `\Device\X` (lower case) → `DEVICE_OBJECT`.
    devices: HashMap<String, usize>,
    /// Symbolic link (lower case) → the device name it names, as given.
    links: HashMap<String, String>,
}

static NAMES: Mutex<Option<Names>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Names) -> R) -> R {
    let mut g = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    f(g.get_or_insert_with(Names::default))
}

/// The object type `IoDriverObjectType` points at (an opaque `OBJECT_TYPE`: only its
/// address is compared).
static DRIVER_TYPE: [u64; 16] = [0; 16];

/// `IoDriverObjectType`, an exported *variable* (`POBJECT_TYPE`): its import slot is bound
/// to the address of this pointer.
static IO_DRIVER_OBJECT_TYPE: DriverTypePointer = DriverTypePointer(&DRIVER_TYPE);

/// A pointer to [`DRIVER_TYPE`] as the driver reads it through its import.
#[repr(transparent)]
struct DriverTypePointer(&'static [u64; 16]);

/// The address bound to an `IoDriverObjectType` import.
#[must_use]
pub fn io_driver_object_type() -> usize {
    &raw const IO_DRIVER_OBJECT_TYPE as usize
}

/// A driver object is known by `name` (`\Driver\X`).
pub fn register_driver(name: &str, object: usize) {
    with(|n| n.drivers.insert(name.to_ascii_lowercase(), object));
}

/// A device was created with `name` (`\Device\X`).
pub fn register_device(name: &str, device: usize) {
    with(|n| n.devices.insert(name.to_ascii_lowercase(), device));
}

/// The device `device` was deleted: its name and the links to it go.
pub fn forget_device(device: usize) {
    with(|n| {
        let names: Vec<String> = n
            .devices
            .iter()
            .filter(|(_, &d)| d == device)
            .map(|(k, _)| k.clone())
            .collect();
        for k in names {
            n.devices.remove(&k);
        }
    });
}

/// The device a symbolic link (e.g. `\DosDevices\iosv`) or device name leads to, if any.
#[must_use]
pub fn open_device(name: &str) -> Option<usize> {
    with(|n| {
        let key = name.to_ascii_lowercase();
        let target = n.links.get(&key).map_or(key, |t| t.to_ascii_lowercase());
        n.devices.get(&target).copied()
    })
}

/// The symbolic links whose device is one of `driver`'s (a `DRIVER_OBJECT`), with the
/// device each names.
#[must_use]
pub fn links_of(driver: usize) -> Vec<(String, usize)> {
    with(|n| {
        n.links
            .iter()
            .filter_map(|(link, target)| {
                let dev = *n.devices.get(&target.to_ascii_lowercase())?;
                // SAFETY: registered devices are live DEVICE_OBJECTs (never freed).
                let owner = unsafe { Obj::new(dev, super::kernel::layout::DEVICE_OBJECT) }
                    .get::<u64>(super::kernel::layout::DEV_DRIVER)
                    as usize;
                (owner == driver).then(|| (link.clone(), dev))
            })
            .collect()
    })
}

/// `IoCreateSymbolicLink(SymbolicLinkName, DeviceName)`.
pub extern "win64" fn io_create_symbolic_link(link: usize, device: usize) -> Status {
    let link = super::kernel::unicode_string(link);
    let device = super::kernel::unicode_string(device);
    with(|n| {
        let key = link.to_ascii_lowercase();
        if n.links.contains_key(&key) {
            return STATUS_OBJECT_NAME_COLLISION;
        }
        n.links.insert(key, device);
        STATUS_SUCCESS
    })
}

/// `IoDeleteSymbolicLink(SymbolicLinkName)`.
pub extern "win64" fn io_delete_symbolic_link(link: usize) -> Status {
    let link = super::kernel::unicode_string(link).to_ascii_lowercase();
    with(|n| match n.links.remove(&link) {
        Some(_) => STATUS_SUCCESS,
        None => STATUS_OBJECT_NAME_NOT_FOUND,
    })
}

/// `ObReferenceObjectByName(ObjectName, Attributes, AccessState, DesiredAccess,
/// ObjectType, AccessMode, ParseContext, Object)`: driver objects only (the type must be
/// `*IoDriverObjectType`).
pub extern "win64" fn ob_reference_object_by_name(
    name: usize,
    _attributes: u32,
    _access_state: usize,
    _access: u32,
    object_type: usize,
    _mode: u8,
    _parse_context: usize,
    out: usize,
) -> Status {
    if object_type != &raw const DRIVER_TYPE as usize {
        return STATUS_OBJECT_TYPE_MISMATCH;
    }
    let name = super::kernel::unicode_string(name).to_ascii_lowercase();
    let Some(object) = with(|n| n.drivers.get(&name).copied()) else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    // SAFETY: `Object` is the caller's PVOID out parameter (DDI).
    unsafe { Obj::new(out, 8) }.set::<u64>(0, object as u64);
    STATUS_SUCCESS
}

/// `ObDereferenceObjectDeferDelete(Object)`: objects are never deleted here.
pub extern "win64" fn ob_dereference_object_defer_delete(_object: usize) {}

/// The token of the caller the runner opens devices for: an administrator's.
static ADMIN_TOKEN: [u64; 8] = [0; 8];

/// The access token `IRP_MJ_CREATE`s from the runner carry (the caller is an elevated
/// administrator, as `iosvctl` on Windows must be).
#[must_use]
pub fn admin_token() -> usize {
    &raw const ADMIN_TOKEN as usize
}

/// `SeTokenIsAdmin(Token)`: TRUE for [`admin_token`] only.
pub extern "win64" fn se_token_is_admin(token: usize) -> u8 {
    u8::from(token == admin_token())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(text: &str) -> (Vec<u16>, [u64; 2]) {
        let units: Vec<u16> = text.encode_utf16().collect();
        let len = (units.len() * 2) as u64;
        let s = [len | (len << 16), units.as_ptr() as u64];
        (units, s)
    }

    #[test]
    fn links_lead_to_named_devices_and_driver_objects_are_found_by_name() {
        let device = [0u64; 0x150 / 8];
        let device_addr = device.as_ptr() as usize;
        register_device("\\Device\\ObTestDev", device_addr);
        let (_l, link) = us("\\DosDevices\\ObTestLink");
        let (_d, name) = us("\\Device\\ObTestDev");
        let link_addr = link.as_ptr() as usize;
        assert_eq!(
            io_create_symbolic_link(link_addr, name.as_ptr() as usize),
            0
        );
        assert_eq!(
            io_create_symbolic_link(link_addr, name.as_ptr() as usize),
            STATUS_OBJECT_NAME_COLLISION
        );
        assert_eq!(open_device("\\dosdevices\\OBTESTLINK"), Some(device_addr));
        assert_eq!(io_delete_symbolic_link(link_addr), 0);
        assert_eq!(open_device("\\DosDevices\\ObTestLink"), None);
        assert_eq!(
            io_delete_symbolic_link(link_addr),
            STATUS_OBJECT_NAME_NOT_FOUND
        );
        forget_device(device_addr);
        assert_eq!(open_device("\\Device\\ObTestDev"), None);

        let driver = 0x1234_5000usize;
        register_driver("\\Driver\\ObTest", driver);
        let (_n, dname) = us("\\Driver\\OBTEST");
        let mut out = 0u64;
        let ty = &raw const DRIVER_TYPE as usize;
        let by_name = |object_type: usize, out: &mut u64| {
            ob_reference_object_by_name(
                dname.as_ptr() as usize,
                0,
                0,
                0,
                object_type,
                0,
                0,
                out as *mut u64 as usize,
            )
        };
        assert_eq!(by_name(ty, &mut out), 0);
        assert_eq!(out, driver as u64);
        assert_eq!(by_name(ty + 8, &mut out), STATUS_OBJECT_TYPE_MISMATCH);
        // The import of IoDriverObjectType reads the type's address.
        // SAFETY: io_driver_object_type() is the address of a static pointer.
        let read = unsafe { *(io_driver_object_type() as *const usize) };
        assert_eq!(read, ty);
        assert_eq!(se_token_is_admin(admin_token()), 1);
        assert_eq!(se_token_is_admin(admin_token() + 8), 0);
    }
}
