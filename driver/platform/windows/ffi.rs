//! What wdk-sys does not give us: a few declarations of our own, the inline IRP helpers of
//! `wdm.h` rewritten over the IRP's fields, UTF-16 constants and debug output.
//!
//! Everything here is a thin, mechanical translation of a WDK header; no decision lives
//! here. The field paths were checked against the WDK 10.0.22621 headers (see
//! `docs/windows.md`, "Names used").

use core::ffi::{c_char, c_void, CStr};

use wdk_sys::{
    ntddk::DbgPrintEx, ACCESS_MASK, GUID, NTSTATUS, PACCESS_STATE, PDEVICE_OBJECT, PDRIVER_OBJECT,
    PIO_STACK_LOCATION, PIRP, PMDL, POBJECT_TYPE, PUNICODE_STRING, PVOID, UNICODE_STRING,
};

/// `ALL_PROCESSOR_GROUPS` (ntdef.h: 0xffff), for `KeQueryActiveProcessorCountEx`.
pub const ALL_PROCESSOR_GROUPS: u16 = 0xFFFF;

/// Bit `SystemModeImage` (bit 8) of `IMAGE_INFO.Properties` (ntddk.h bit field).
pub const IMAGE_INFO_SYSTEM_MODE: u32 = 1 << 8;

/// `REG_DWORD` (wdm.h).
pub const REG_DWORD: u32 = 4;
/// `REG_MULTI_SZ` (wdm.h).
pub const REG_MULTI_SZ: u32 = 7;

/// Bytes before `Data` in `KEY_VALUE_PARTIAL_INFORMATION` (TitleIndex, Type, DataLength).
pub const PARTIAL_INFO_HEADER: usize = 12;

// Our own declarations. x64 and ARM64 have one C calling convention, so "system" and the
// headers' NTAPI/__stdcall agree.
unsafe extern "system" {
    /// `KeBugCheckEx` (wdm.h, `DECLSPEC_NORETURN`), declared as wdk-panic does so that
    /// the never-returning signature is certain.
    pub fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
}

// seh.c, compiled and linked by build.rs (static library `iosv_seh`).
unsafe extern "C" {
    /// `MmProbeAndLockPages(mdl, access_mode, operation)` inside `__try/__except`: 0
    /// (STATUS_SUCCESS) when the pages are locked, else the code of the exception the
    /// routine raised. IRQL as for `MmProbeAndLockPages`.
    pub fn iosv_probe_and_lock_pages(mdl: PMDL, access_mode: i8, operation: i32) -> NTSTATUS;
}

/// `SystemCodeIntegrityInformation`, the `SYSTEM_INFORMATION_CLASS` value of
/// `ZwQuerySystemInformation` that fills a [`CodeIntegrityInformation`] (winternl.h).
pub const SYSTEM_CODE_INTEGRITY_INFORMATION: u32 = 103;
/// `CODEINTEGRITY_OPTION_HVCI_KMCI_ENABLED` (ntddk.h / winnt.h): kernel-mode code
/// integrity is enforced by the hypervisor (memory integrity).
pub const CODEINTEGRITY_OPTION_HVCI_KMCI_ENABLED: u32 = 0x400;

/// `SYSTEM_CODEINTEGRITY_INFORMATION` (winternl.h).
#[repr(C)]
pub struct CodeIntegrityInformation {
    /// `Length`: the size of this struct, set by the caller.
    pub length: u32,
    /// `CodeIntegrityOptions`: `CODEINTEGRITY_OPTION_*` bits.
    pub options: u32,
}

// Exported by ntoskrnl.exe but not declared by the headers wdk-build feeds bindgen
// (docs/wdk-api-checked.md, "Declared by iosv").
#[link(name = "ntoskrnl")]
unsafe extern "system" {
    /// `ObReferenceObjectByName` (exported since NT 3.1; declared in ntifs.h of the
    /// DDK's successors outside the WDK). PASSIVE_LEVEL. References the object named
    /// `name` (e.g. `\Driver\nic`) if it is of `object_type`.
    pub fn ObReferenceObjectByName(
        name: PUNICODE_STRING,
        attributes: u32,
        access_state: PACCESS_STATE,
        desired_access: ACCESS_MASK,
        object_type: POBJECT_TYPE,
        access_mode: i8,
        parse_context: PVOID,
        object: *mut PVOID,
    ) -> NTSTATUS;
    /// `IoDriverObjectType`, the kernel's variable holding the driver object type. The
    /// `#[link]` makes this a dllimport: Rust reads the variable through
    /// `__imp_IoDriverObjectType`, so its type is the variable's own (`POBJECT_TYPE`), not
    /// the `POBJECT_TYPE *` a C declaration without dllimport uses.
    pub static IoDriverObjectType: POBJECT_TYPE;
    /// `ZwQuerySystemInformation` (exported; documented for user mode as
    /// `NtQuerySystemInformation`). PASSIVE_LEVEL.
    pub fn ZwQuerySystemInformation(
        class: u32,
        information: PVOID,
        length: u32,
        return_length: *mut u32,
    ) -> NTSTATUS;
}

// wdmsec.h is not in wdk-build's bindgen input and wdmsec.lib not in its link list; the
// library sits in the WDK's km/<arch> directory, which wdk-build puts on the search path.
// wdmsec.h: `#define IoCreateDeviceSecure WdmlibIoCreateDeviceSecure`.
#[link(name = "wdmsec", kind = "static")]
unsafe extern "system" {
    /// `IoCreateDeviceSecure` (wdmsec.h): `IoCreateDevice` with a default DACL given as
    /// SDDL, which the registry can override per device class (`class_guid`).
    /// PASSIVE_LEVEL.
    pub fn WdmlibIoCreateDeviceSecure(
        driver: PDRIVER_OBJECT,
        extension_size: u32,
        name: PUNICODE_STRING,
        device_type: u32, // DEVICE_TYPE: `#define DEVICE_TYPE ULONG` (devioctl.h)
        characteristics: u32,
        exclusive: u8,
        sddl: *const UNICODE_STRING,
        class_guid: *const GUID,
        device: *mut PDEVICE_OBJECT,
    ) -> NTSTATUS;
}

/// `AUX_MODULE_EXTENDED_INFO` (aux_klib.h).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AuxModuleExtendedInfo {
    /// `BasicInfo.ImageBase`.
    pub image_base: *mut c_void,
    /// `ImageSize`.
    pub image_size: u32,
    /// `FileNameOffset`: where the file name starts in `full_path_name`.
    pub file_name_offset: u16,
    /// `FullPathName` (`AUX_KLIB_MODULE_PATH_LEN` = 256), NUL-terminated ANSI.
    pub full_path_name: [u8; 256],
}

impl AuxModuleExtendedInfo {
    /// An all-zero entry to fill a buffer with.
    pub const ZERO: AuxModuleExtendedInfo = AuxModuleExtendedInfo {
        image_base: core::ptr::null_mut(),
        image_size: 0,
        file_name_offset: 0,
        full_path_name: [0; 256],
    };

    /// The file name (no directory), without its NUL.
    pub fn file_name(&self) -> &[u8] {
        let tail = self
            .full_path_name
            .get(usize::from(self.file_name_offset)..)
            .unwrap_or(&[]);
        let end = tail.iter().position(|c| *c == 0).unwrap_or(tail.len());
        tail.get(..end).unwrap_or(&[])
    }
}

// aux_klib.h is not in wdk-build's bindgen input and aux_klib.lib is not in its link list;
// the library sits in the WDK's km/<arch> directory, which wdk-build puts on the search path.
#[link(name = "aux_klib", kind = "static")]
unsafe extern "system" {
    /// `AuxKlibInitialize` (PASSIVE_LEVEL, once before the other AuxKlib routines).
    pub fn AuxKlibInitialize() -> NTSTATUS;
    /// `AuxKlibQueryModuleInformation` (PASSIVE_LEVEL).
    pub fn AuxKlibQueryModuleInformation(
        buffer_size: *mut u32,
        element_size: u32,
        query_info: *mut c_void,
    ) -> NTSTATUS;
}

/// `IoGetCurrentIrpStackLocation` (FORCEINLINE in wdm.h):
/// `Irp->Tail.Overlay.CurrentStackLocation`.
///
/// # Safety
///
/// `irp` is a valid IRP that the calling driver currently owns.
pub unsafe fn current_stack_location(irp: PIRP) -> PIO_STACK_LOCATION {
    // SAFETY: the caller passes a valid IRP; we only take a reference to its `Tail` field.
    let tail = unsafe { &(*irp).Tail };
    // SAFETY: an IRP being dispatched to a driver uses the `Overlay` arm of `Tail`.
    let overlay = unsafe { &tail.Overlay };
    // SAFETY: while the IRP is owned by a driver this union holds `CurrentStackLocation`
    // (the `PacketType` arm is used only by the I/O manager's completion packets).
    unsafe {
        overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation
    }
}

/// `IoSkipCurrentIrpStackLocation` (FORCEINLINE in wdm.h): `CurrentLocation++` and
/// `CurrentStackLocation++`, so the next driver sees our stack location as its own.
///
/// # Safety
///
/// `irp` is a valid IRP that the calling driver owns and is about to pass down with
/// `IofCallDriver` without a completion routine.
pub unsafe fn skip_current_stack_location(irp: PIRP) {
    // SAFETY: the caller owns the IRP, so nobody else touches it until IofCallDriver.
    let irp = unsafe { &mut *irp };
    irp.CurrentLocation = irp.CurrentLocation.wrapping_add(1);
    // SAFETY: as in `current_stack_location`: the `Overlay` arm is the live one.
    let overlay = unsafe { &mut irp.Tail.Overlay };
    // SAFETY: the union holds `CurrentStackLocation` while a driver owns the IRP.
    let location = unsafe {
        &mut overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation
    };
    *location = location.wrapping_add(1);
}

/// `Irp->IoStatus.Status`.
///
/// # Safety
///
/// `irp` is a valid IRP the caller owns.
pub unsafe fn irp_status(irp: PIRP) -> NTSTATUS {
    // SAFETY: the caller owns the IRP.
    let io_status = unsafe { &(*irp).IoStatus };
    // SAFETY: `IO_STATUS_BLOCK`'s first member is a union of `Status` and `Pointer`;
    // drivers always use `Status`.
    unsafe { io_status.__bindgen_anon_1.Status }
}

/// Sets `Irp->IoStatus.Status` and `Irp->IoStatus.Information`.
///
/// # Safety
///
/// `irp` is a valid IRP the caller owns.
pub unsafe fn set_irp_status(irp: PIRP, status: NTSTATUS, information: usize) {
    // SAFETY: the caller owns the IRP; writing a Copy union field needs no unsafe of its
    // own, the dereference is the one unsafe operation.
    let io_status = unsafe { &mut (*irp).IoStatus };
    io_status.__bindgen_anon_1.Status = status;
    io_status.Information = information as u64;
}

/// ASCII `s` as UTF-16, with no terminator; `N` must be `s.len()`. Only for constants:
/// a mismatch or a non-ASCII byte fails const evaluation (a compile error, never a panic at
/// run time), which is why indexing and `+=` are allowed here.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
pub const fn ascii_wide<const N: usize>(s: &str) -> [u16; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() == N, "length mismatch");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(bytes[i].is_ascii(), "not ASCII");
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}

/// A `UNICODE_STRING` over `units` (not NUL-terminated). `None` if it is longer than a
/// `UNICODE_STRING` can describe (32 767 units).
pub fn unicode_string(units: &[u16]) -> Option<UNICODE_STRING> {
    let bytes = u16::try_from(units.len().checked_mul(2)?).ok()?;
    Some(UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        // Kernel routines take `PUNICODE_STRING` even when they only read the buffer.
        Buffer: units.as_ptr().cast_mut(),
    })
}

/// The UTF-16 units of a `UNICODE_STRING` (`Length / 2` of them).
///
/// # Safety
///
/// `s` is null or points to a valid `UNICODE_STRING` whose buffer stays valid and
/// unmodified for `'a`.
pub unsafe fn unicode_units<'a>(s: *const UNICODE_STRING) -> &'a [u16] {
    if s.is_null() {
        return &[];
    }
    // SAFETY: non-null and valid per the caller.
    let s = unsafe { &*s };
    let len = usize::from(s.Length / 2);
    if s.Buffer.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: a valid UNICODE_STRING's buffer holds at least `Length` bytes, aligned for u16.
    unsafe { core::slice::from_raw_parts(s.Buffer, len) }
}

/// The last path component of `path` (after the final `\` or `/`) as ASCII in `out`;
/// `None` if it is empty, longer than `out`, or not printable ASCII.
pub fn ascii_file_name<'o>(path: &[u16], out: &'o mut [u8]) -> Option<&'o [u8]> {
    let start = path
        .iter()
        .rposition(|u| *u == u16::from(b'\\') || *u == u16::from(b'/'))
        .map_or(0, |i| i.saturating_add(1));
    let name = path.get(start..)?;
    if name.is_empty() || name.len() > out.len() {
        return None;
    }
    for (dst, unit) in out.iter_mut().zip(name) {
        let byte = u8::try_from(*unit).ok().filter(u8::is_ascii_graphic)?;
        *dst = byte;
    }
    out.get(..name.len())
}

/// Debug output levels (dpfilter.h `DPFLTR_*_LEVEL`).
#[derive(Clone, Copy)]
pub enum Level {
    /// Always shown.
    Error,
    /// Shown when the IHVDRIVER component mask enables warnings.
    Warning,
    /// Shown when the IHVDRIVER component mask enables info.
    Info,
}

impl Level {
    fn value(self) -> u32 {
        match self {
            Level::Error => wdk_sys::DPFLTR_ERROR_LEVEL,
            Level::Warning => wdk_sys::DPFLTR_WARNING_LEVEL,
            Level::Info => wdk_sys::DPFLTR_INFO_LEVEL,
        }
    }
}

/// `DbgPrintEx(DPFLTR_IHVDRIVER_ID, level, "iosv: %s\n", message)`. `DbgPrintEx` allows
/// IRQL <= DIRQL; iosv logs from the control plane only (PASSIVE_LEVEL, or DISPATCH_LEVEL
/// inside `with_control`), never from a hook.
pub fn log(level: Level, message: &CStr) {
    // SAFETY: constant format with one `%s`, matched by a NUL-terminated string.
    unsafe {
        DbgPrintEx(
            wdk_sys::_DPFLTR_TYPE::DPFLTR_IHVDRIVER_ID as u32,
            level.value(),
            c"iosv: %s\n".as_ptr(),
            message.as_ptr(),
        )
    };
}

/// `DbgPrintEx(…, "iosv: %s 0x%I64x\n", message, value)`. Control plane only (see [`log`]).
pub fn log_value(level: Level, message: &CStr, value: u64) {
    // SAFETY: constant format; `%s` gets a NUL-terminated string, `%I64x` a 64-bit value.
    unsafe {
        DbgPrintEx(
            wdk_sys::_DPFLTR_TYPE::DPFLTR_IHVDRIVER_ID as u32,
            level.value(),
            c"iosv: %s 0x%I64x\n".as_ptr(),
            message.as_ptr(),
            value,
        )
    };
}

/// `DbgPrintEx(…, "iosv: %s %.*s\n", message, len, bytes)`: a message and an ASCII name
/// that is not NUL-terminated. Control plane only (see [`log`]).
pub fn log_name(level: Level, message: &CStr, name: &[u8]) {
    let len = i32::try_from(name.len()).unwrap_or(0);
    // SAFETY: constant format; `%.*s` reads at most `len` bytes of `name`.
    unsafe {
        DbgPrintEx(
            wdk_sys::_DPFLTR_TYPE::DPFLTR_IHVDRIVER_ID as u32,
            level.value(),
            c"iosv: %s %.*s\n".as_ptr(),
            message.as_ptr(),
            len,
            name.as_ptr().cast::<c_char>(),
        )
    };
}
