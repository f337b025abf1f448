//! Loaded kernel modules: the list `ZwQuerySystemInformation(SystemModuleInformation)`
//! returns (what AuxKlib reads), and the image-load notification
//! (`PsSetLoadImageNotifyRoutine`): the child calls every registered routine with the
//! full image name and an `IMAGE_INFO` when it loads a driver image after them.

use super::kernel::{alloc_zeroed, layout as l, Status, STATUS_SUCCESS};
use super::{entering, Obj};
use std::sync::{Mutex, PoisonError};

/// `SystemModuleInformation` (SYSTEM_INFORMATION_CLASS).
const SYSTEM_MODULE_INFORMATION: u32 = 11;
/// `SystemCodeIntegrityInformation`.
const SYSTEM_CODE_INTEGRITY_INFORMATION: u32 = 103;
/// `STATUS_INFO_LENGTH_MISMATCH`.
const STATUS_INFO_LENGTH_MISMATCH: Status = 0xC000_0004_u32 as i32;
/// `STATUS_INVALID_INFO_CLASS`.
const STATUS_INVALID_INFO_CLASS: Status = 0xC000_0003_u32 as i32;
/// `STATUS_INSUFFICIENT_RESOURCES`.
const STATUS_INSUFFICIENT_RESOURCES: Status = 0xC000_009A_u32 as i32;
/// `STATUS_INVALID_PARAMETER`.
const STATUS_INVALID_PARAMETER: Status = 0xC000_000D_u32 as i32;
/// `STATUS_PROCEDURE_NOT_FOUND`.
const STATUS_PROCEDURE_NOT_FOUND: Status = 0xC000_007A_u32 as i32;
/// `IMAGE_INFO.SystemModeImage` (bit 8 of `Properties`).
const SYSTEM_MODE_IMAGE: u32 = 1 << 8;
/// At most this many image-load routines (the documented limit is 64 on current
/// Windows; 8 on old versions).
const MAX_NOTIFY: usize = 64;

/// `sizeof(RTL_PROCESS_MODULE_INFORMATION)` on x64.
pub const MODULE_ENTRY: usize = 0x128;
/// `RTL_PROCESS_MODULES.Modules`.
pub const MODULES_ARRAY: usize = 8;

/// A loaded module as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Module {
    path: String,
    base: usize,
    size: usize,
}

static MODULES: Mutex<Vec<Module>> = Mutex::new(Vec::new());
static NOTIFY: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The full path the list and the notification give an image named `name`.
#[must_use]
pub fn full_path(name: &str) -> String {
    format!("\\SystemRoot\\System32\\drivers\\{name}")
}

/// The image `name` is loaded at `[base, base + size)`.
pub fn module_loaded(name: &str, base: usize, size: usize) {
    let mut m = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    m.retain(|x| x.base != base);
    m.push(Module {
        path: full_path(name),
        base,
        size,
    });
}

/// The image at `base` unloaded: it leaves the list.
pub fn module_unloaded(base: usize) {
    MODULES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|x| x.base != base);
}

/// `PsSetLoadImageNotifyRoutine(NotifyRoutine)`.
pub extern "win64" fn ps_set_load_image_notify_routine(routine: usize) -> Status {
    let mut n = NOTIFY.lock().unwrap_or_else(PoisonError::into_inner);
    if routine == 0 {
        return STATUS_INVALID_PARAMETER;
    }
    if n.len() >= MAX_NOTIFY {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    n.push(routine);
    STATUS_SUCCESS
}

/// `PsRemoveLoadImageNotifyRoutine(NotifyRoutine)`.
pub extern "win64" fn ps_remove_load_image_notify_routine(routine: usize) -> Status {
    let mut n = NOTIFY.lock().unwrap_or_else(PoisonError::into_inner);
    match n.iter().position(|&r| r == routine) {
        Some(i) => {
            n.remove(i);
            STATUS_SUCCESS
        }
        None => STATUS_PROCEDURE_NOT_FOUND,
    }
}

/// How many image-load routines are registered.
#[must_use]
pub fn notify_routines() -> usize {
    NOTIFY.lock().unwrap_or_else(PoisonError::into_inner).len()
}

type LoadImageNotify = extern "win64" fn(usize, usize, usize);

/// Calls every registered image-load routine for the kernel image `name` mapped at
/// `[base, base + size)`, as the loader does before the image's `DriverEntry`:
/// `(FullImageName, ProcessId = 0, ImageInfo)`. Returns how many were called.
pub fn notify_image_loaded(name: &str, base: usize, size: usize) -> usize {
    let routines: Vec<usize> = NOTIFY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let full = super::child::unicode(&full_path(name));
    let info = alloc_zeroed(l::IMAGE_INFO);
    // SAFETY: a fresh allocation of IMAGE_INFO's size.
    let o = unsafe { Obj::new(info, l::IMAGE_INFO) };
    o.set::<u32>(l::II_PROPERTIES, SYSTEM_MODE_IMAGE);
    o.set::<u64>(l::II_IMAGE_BASE, base as u64);
    o.set::<u64>(l::II_IMAGE_SIZE, size as u64);
    for &r in &routines {
        // SAFETY: registered through PsSetLoadImageNotifyRoutine, whose DDI gives the
        // routine this signature.
        let f = unsafe { std::mem::transmute::<usize, LoadImageNotify>(r) };
        entering("load-image notify routine", r, || f(full, 0, info));
    }
    routines.len()
}

/// `ZwQuerySystemInformation(Class, Buffer, Length, ReturnLength)`:
/// `SystemModuleInformation` (`RTL_PROCESS_MODULES`: the loaded driver images) and
/// `SystemCodeIntegrityInformation` (no option set: no HVCI); any other class is
/// `STATUS_INVALID_INFO_CLASS`.
pub extern "win64" fn zw_query_system_information(
    class: u32,
    buffer: usize,
    length: u32,
    returned: usize,
) -> Status {
    let put_returned = |n: usize| {
        if returned != 0 {
            // SAFETY: the caller's optional ULONG out parameter (DDI).
            unsafe { Obj::new(returned, 4) }.set::<u32>(0, u32::try_from(n).unwrap_or(u32::MAX));
        }
    };
    match class {
        SYSTEM_MODULE_INFORMATION => {
            let modules = MODULES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let need = MODULES_ARRAY + MODULE_ENTRY * modules.len();
            put_returned(need);
            if (length as usize) < need || buffer == 0 {
                return STATUS_INFO_LENGTH_MISMATCH;
            }
            // SAFETY: the caller's buffer of `length` >= `need` bytes (DDI).
            let o = unsafe { Obj::new(buffer, need) };
            o.set::<u32>(0, modules.len() as u32);
            for (i, m) in modules.iter().enumerate() {
                let e = MODULES_ARRAY + MODULE_ENTRY * i;
                o.set::<u64>(e + 0x10, m.base as u64); // ImageBase
                o.set::<u32>(e + 0x18, m.size as u32); // ImageSize
                o.set::<u16>(e + 0x20, i as u16); // LoadOrderIndex
                o.set::<u16>(e + 0x22, i as u16); // InitOrderIndex
                o.set::<u16>(e + 0x24, 1); // LoadCount
                let path = m.path.as_bytes();
                let file = path.iter().rposition(|&b| b == b'\\').map_or(0, |p| p + 1);
                o.set::<u16>(e + 0x26, file as u16); // OffsetToFileName
                for (k, &b) in path.iter().take(255).enumerate() {
                    o.set::<u8>(e + 0x28 + k, b);
                }
            }
            STATUS_SUCCESS
        }
        SYSTEM_CODE_INTEGRITY_INFORMATION => {
            put_returned(8);
            if length < 8 || buffer == 0 {
                return STATUS_INFO_LENGTH_MISMATCH;
            }
            // SAFETY: SYSTEM_CODEINTEGRITY_INFORMATION { Length, CodeIntegrityOptions }.
            unsafe { Obj::new(buffer, 8) }.set::<u32>(4, 0);
            STATUS_SUCCESS
        }
        _ => STATUS_INVALID_INFO_CLASS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_list_has_the_rtl_process_modules_layout() {
        module_loaded("kmtest_a.sys", 0x7100_0000, 0x9000);
        module_loaded("kmtest_b.sys", 0x7200_0000, 0x3000);
        let mut needed = 0u32;
        // Too small: the size needed, STATUS_INFO_LENGTH_MISMATCH.
        let status =
            zw_query_system_information(SYSTEM_MODULE_INFORMATION, 0, 0, &raw mut needed as usize);
        assert_eq!(status, STATUS_INFO_LENGTH_MISMATCH);
        let n = (needed as usize - MODULES_ARRAY) / MODULE_ENTRY;
        assert!(n >= 2, "{n}");
        let mut buf = vec![0u8; needed as usize];
        let status = zw_query_system_information(
            SYSTEM_MODULE_INFORMATION,
            buf.as_mut_ptr() as usize,
            needed,
            0,
        );
        assert_eq!(status, STATUS_SUCCESS);
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0) as usize, n);
        let entry = (0..n)
            .map(|i| MODULES_ARRAY + MODULE_ENTRY * i)
            .find(|&e| u64_at(e + 0x10) == 0x7100_0000)
            .expect("kmtest_a.sys listed");
        assert_eq!(u32_at(entry + 0x18), 0x9000);
        let path = &buf[entry + 0x28..entry + 0x28 + 256];
        let path = &path[..path.iter().position(|&b| b == 0).unwrap()];
        assert_eq!(path, full_path("kmtest_a.sys").as_bytes());
        let file = u16::from_le_bytes([buf[entry + 0x26], buf[entry + 0x27]]) as usize;
        assert_eq!(&path[file..], b"kmtest_a.sys");
        module_unloaded(0x7100_0000);
        module_unloaded(0x7200_0000);
        let mut after = 0u32;
        zw_query_system_information(SYSTEM_MODULE_INFORMATION, 0, 0, &raw mut after as usize);
        assert_eq!(after as usize, needed as usize - 2 * MODULE_ENTRY);
        assert_eq!(
            zw_query_system_information(99, buf.as_mut_ptr() as usize, needed, 0),
            STATUS_INVALID_INFO_CLASS
        );
    }

    #[test]
    fn notify_routines_register_and_deregister() {
        extern "win64" fn routine(_: usize, _: usize, _: usize) {}
        let r = routine as *const () as usize;
        assert_eq!(
            ps_set_load_image_notify_routine(0),
            STATUS_INVALID_PARAMETER
        );
        assert_eq!(ps_set_load_image_notify_routine(r), STATUS_SUCCESS);
        assert_eq!(ps_remove_load_image_notify_routine(r), STATUS_SUCCESS);
        assert_eq!(
            ps_remove_load_image_notify_routine(r),
            STATUS_PROCEDURE_NOT_FOUND
        );
    }
}
