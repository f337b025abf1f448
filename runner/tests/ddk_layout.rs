//! The structure offsets the runner uses (`iosv_runner::kernel::layout`) against the
//! mingw-w64 DDK headers (`/usr/share/mingw-w64/include/ddk/wdm.h`): a C file of
//! `FIELD_OFFSET`s is compiled with x86_64-w64-mingw32-gcc (the toolchain the driver
//! fixtures need; `scripts/test` installs it) and its data read back.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use iosv_runner::kernel::layout as l;
use std::path::Path;
use std::process::Command;

/// (C expression, the runner's value). `sizeof(DEVICE_OBJECT)` is left out: the WDK
/// declares it `DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT)` (0x150), mingw-w64 does not
/// (0x148); the runner allocates the WDK's size, and checks DeviceObjectExtension's offset.
const FIELDS: &[(&str, usize)] = &[
    ("sizeof(DRIVER_OBJECT)", l::DRIVER_OBJECT),
    (
        "FIELD_OFFSET(DRIVER_OBJECT, DeviceObject)",
        l::DRV_DEVICE_OBJECT,
    ),
    ("FIELD_OFFSET(DRIVER_OBJECT, DriverStart)", l::DRV_START),
    ("FIELD_OFFSET(DRIVER_OBJECT, DriverSize)", l::DRV_SIZE),
    (
        "FIELD_OFFSET(DRIVER_OBJECT, DriverExtension)",
        l::DRV_EXTENSION,
    ),
    ("FIELD_OFFSET(DRIVER_OBJECT, DriverName)", l::DRV_NAME),
    ("FIELD_OFFSET(DRIVER_OBJECT, DriverInit)", l::DRV_INIT),
    ("FIELD_OFFSET(DRIVER_OBJECT, DriverUnload)", l::DRV_UNLOAD),
    ("FIELD_OFFSET(DRIVER_OBJECT, MajorFunction)", l::DRV_MAJOR),
    (
        "FIELD_OFFSET(DRIVER_EXTENSION, AddDevice)",
        l::EXT_ADD_DEVICE,
    ),
    ("FIELD_OFFSET(DEVICE_OBJECT, DriverObject)", l::DEV_DRIVER),
    ("FIELD_OFFSET(DEVICE_OBJECT, NextDevice)", l::DEV_NEXT),
    (
        "FIELD_OFFSET(DEVICE_OBJECT, AttachedDevice)",
        l::DEV_ATTACHED,
    ),
    ("FIELD_OFFSET(DEVICE_OBJECT, Flags)", l::DEV_FLAGS),
    (
        "FIELD_OFFSET(DEVICE_OBJECT, Characteristics)",
        l::DEV_CHARACTERISTICS,
    ),
    (
        "FIELD_OFFSET(DEVICE_OBJECT, DeviceExtension)",
        l::DEV_EXTENSION,
    ),
    ("FIELD_OFFSET(DEVICE_OBJECT, DeviceType)", l::DEV_TYPE),
    ("FIELD_OFFSET(DEVICE_OBJECT, StackSize)", l::DEV_STACK_SIZE),
    (
        "FIELD_OFFSET(DEVICE_OBJECT, DeviceObjectExtension)",
        l::DEV_OBJECT_EXTENSION,
    ),
    ("sizeof(IRP)", l::IRP),
    ("FIELD_OFFSET(IRP, MdlAddress)", l::IRP_MDL_ADDRESS),
    (
        "FIELD_OFFSET(IRP, AssociatedIrp.SystemBuffer)",
        l::IRP_SYSTEM_BUFFER,
    ),
    ("FIELD_OFFSET(IRP, IoStatus.Status)", l::IRP_STATUS),
    (
        "FIELD_OFFSET(IRP, IoStatus.Information)",
        l::IRP_INFORMATION,
    ),
    (
        "FIELD_OFFSET(IRP, PendingReturned)",
        l::IRP_PENDING_RETURNED,
    ),
    ("FIELD_OFFSET(IRP, StackCount)", l::IRP_STACK_COUNT),
    (
        "FIELD_OFFSET(IRP, CurrentLocation)",
        l::IRP_CURRENT_LOCATION,
    ),
    ("FIELD_OFFSET(IRP, Cancel)", l::IRP_CANCEL),
    ("FIELD_OFFSET(IRP, UserEvent)", l::IRP_USER_EVENT),
    ("FIELD_OFFSET(IRP, UserBuffer)", l::IRP_USER_BUFFER),
    (
        "FIELD_OFFSET(IRP, Tail.Overlay.CurrentStackLocation)",
        l::IRP_CURRENT_STACK,
    ),
    ("sizeof(IO_STACK_LOCATION)", l::STACK),
    ("FIELD_OFFSET(IO_STACK_LOCATION, Control)", l::SL_CONTROL),
    (
        "FIELD_OFFSET(IO_STACK_LOCATION, Parameters)",
        l::SL_PARAMETERS,
    ),
    (
        "FIELD_OFFSET(IO_STACK_LOCATION, DeviceObject)",
        l::SL_DEVICE,
    ),
    (
        "FIELD_OFFSET(IO_STACK_LOCATION, CompletionRoutine)",
        l::SL_COMPLETION,
    ),
    ("FIELD_OFFSET(IO_STACK_LOCATION, Context)", l::SL_CONTEXT),
    ("sizeof(KEVENT)", l::KEVENT),
    ("sizeof(UNICODE_STRING)", l::UNICODE_STRING),
    ("sizeof(MDL)", l::MDL),
    ("FIELD_OFFSET(MDL, Next)", l::MDL_NEXT),
    ("FIELD_OFFSET(MDL, Size)", l::MDL_SIZE),
    ("FIELD_OFFSET(MDL, MdlFlags)", l::MDL_FLAGS),
    ("FIELD_OFFSET(MDL, Process)", l::MDL_PROCESS),
    ("FIELD_OFFSET(MDL, MappedSystemVa)", l::MDL_MAPPED_SYSTEM_VA),
    ("FIELD_OFFSET(MDL, StartVa)", l::MDL_START_VA),
    ("FIELD_OFFSET(MDL, ByteCount)", l::MDL_BYTE_COUNT),
    ("FIELD_OFFSET(MDL, ByteOffset)", l::MDL_BYTE_OFFSET),
    ("sizeof(OBJECT_ATTRIBUTES)", l::OBJECT_ATTRIBUTES),
    (
        "FIELD_OFFSET(OBJECT_ATTRIBUTES, RootDirectory)",
        l::OA_ROOT_DIRECTORY,
    ),
    (
        "FIELD_OFFSET(OBJECT_ATTRIBUTES, ObjectName)",
        l::OA_OBJECT_NAME,
    ),
    (
        "FIELD_OFFSET(KEY_VALUE_BASIC_INFORMATION, Name)",
        l::KEY_VALUE_BASIC_NAME,
    ),
    (
        "FIELD_OFFSET(KEY_VALUE_FULL_INFORMATION, Name)",
        l::KEY_VALUE_FULL_NAME,
    ),
    (
        "FIELD_OFFSET(KEY_VALUE_PARTIAL_INFORMATION, Data)",
        l::KEY_VALUE_PARTIAL_DATA,
    ),
    (
        "sizeof(RTL_QUERY_REGISTRY_TABLE)",
        l::RTL_QUERY_REGISTRY_TABLE,
    ),
    (
        "FIELD_OFFSET(RTL_QUERY_REGISTRY_TABLE, QueryRoutine)",
        l::RQT_QUERY_ROUTINE,
    ),
    (
        "FIELD_OFFSET(RTL_QUERY_REGISTRY_TABLE, Flags)",
        l::RQT_FLAGS,
    ),
    ("FIELD_OFFSET(RTL_QUERY_REGISTRY_TABLE, Name)", l::RQT_NAME),
    (
        "FIELD_OFFSET(RTL_QUERY_REGISTRY_TABLE, EntryContext)",
        l::RQT_ENTRY_CONTEXT,
    ),
    (
        "FIELD_OFFSET(RTL_QUERY_REGISTRY_TABLE, DefaultType)",
        l::RQT_DEFAULT_TYPE,
    ),
    (
        "FIELD_OFFSET(RTL_QUERY_REGISTRY_TABLE, DefaultData)",
        l::RQT_DEFAULT_DATA,
    ),
    (
        "FIELD_OFFSET(RTL_QUERY_REGISTRY_TABLE, DefaultLength)",
        l::RQT_DEFAULT_LENGTH,
    ),
    ("sizeof(IMAGE_INFO)", l::IMAGE_INFO),
    ("FIELD_OFFSET(IMAGE_INFO, Properties)", l::II_PROPERTIES),
    ("FIELD_OFFSET(IMAGE_INFO, ImageBase)", l::II_IMAGE_BASE),
    ("FIELD_OFFSET(IMAGE_INFO, ImageSize)", l::II_IMAGE_SIZE),
    (
        "FIELD_OFFSET(IO_SECURITY_CONTEXT, AccessState)",
        l::ISC_ACCESS_STATE,
    ),
    ("sizeof(IO_SECURITY_CONTEXT)", l::IO_SECURITY_CONTEXT),
    ("sizeof(ACCESS_STATE)", l::ACCESS_STATE),
    (
        "FIELD_OFFSET(ACCESS_STATE, SubjectSecurityContext.ClientToken)",
        l::AS_CLIENT_TOKEN,
    ),
    (
        "FIELD_OFFSET(ACCESS_STATE, SubjectSecurityContext.PrimaryToken)",
        l::AS_PRIMARY_TOKEN,
    ),
    ("sizeof(KGUARDED_MUTEX)", l::KGUARDED_MUTEX),
];

#[test]
fn structure_offsets_match_the_mingw_ddk_headers() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ddk-layout");
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = String::from("#include <ntddk.h>\nconst unsigned long long iosv_layout[] = {\n");
    for (expr, _) in FIELDS {
        c.push_str(&format!("    (unsigned long long)({expr}),\n"));
    }
    c.push_str("};\n");
    let src = dir.join("layout.c");
    let obj = dir.join("layout.o");
    let bin = dir.join("layout.bin");
    std::fs::write(&src, c).unwrap();
    let gcc = Command::new("x86_64-w64-mingw32-gcc")
        .arg("-I/usr/share/mingw-w64/include/ddk")
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("x86_64-w64-mingw32-gcc (scripts/test installs gcc-mingw-w64-x86-64)");
    assert!(
        gcc.status.success(),
        "{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let objcopy = Command::new("x86_64-w64-mingw32-objcopy")
        .args(["-O", "binary", "-j", ".rdata"])
        .arg(&obj)
        .arg(&bin)
        .output()
        .expect("x86_64-w64-mingw32-objcopy");
    assert!(objcopy.status.success());
    let data = std::fs::read(&bin).unwrap();
    assert!(data.len() >= FIELDS.len() * 8, "{} bytes", data.len());
    let mut wrong = Vec::new();
    for (k, (expr, ours)) in FIELDS.iter().enumerate() {
        let theirs = u64::from_le_bytes(data[8 * k..8 * k + 8].try_into().unwrap());
        if theirs != *ours as u64 {
            wrong.push(format!("{expr}: headers {theirs:#x}, runner {ours:#x}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
