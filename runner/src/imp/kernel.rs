//! The kernel surface a WDM driver imports: `extern "win64"` routines bound to its
//! import slots by the loader, and the hooks the interception plan patches in.
//!
//! [`IMPLEMENTED`] lists every routine (docs/running-drivers.md lists them too); an
//! import not in it is bound to a lazy stub that reports it when called.
//!
//! The routines run on the thread that runs the driver, in the child. Objects the driver
//! hands in (device objects, IRPs, events, strings) are trusted to be what the DDI says
//! they are, as a kernel trusts them: a driver passing garbage faults in the host's code,
//! which the fault handler reports as a crash of the child.

use super::engine::Engine;
use super::{
    current, entering, guarded, kaddr, mdl, mmio, ob, ps, registry, report, stack, trap, Obj,
};
use iosv::intercept::{HookTable, Hooks};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// `NTSTATUS`.
pub type Status = i32;
/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: Status = 0;
/// `STATUS_PENDING`.
pub const STATUS_PENDING: Status = 0x103;
/// `STATUS_TIMEOUT`.
pub const STATUS_TIMEOUT: Status = 0x102;
/// `STATUS_MORE_PROCESSING_REQUIRED`.
pub const STATUS_MORE_PROCESSING_REQUIRED: Status = 0xC000_0016_u32 as i32;
/// `STATUS_NOT_SUPPORTED`.
pub const STATUS_NOT_SUPPORTED: Status = 0xC000_00BB_u32 as i32;
/// `STATUS_INVALID_DEVICE_REQUEST`.
pub const STATUS_INVALID_DEVICE_REQUEST: Status = 0xC000_0010_u32 as i32;
/// `STATUS_OBJECT_NAME_NOT_FOUND`.
pub const STATUS_OBJECT_NAME_NOT_FOUND: Status = 0xC000_0034_u32 as i32;
/// `STATUS_INSUFFICIENT_RESOURCES`.
pub const STATUS_INSUFFICIENT_RESOURCES: Status = 0xC000_009A_u32 as i32;

/// Sizes and offsets of the x64 structures (checked against the mingw-w64 DDK headers).
pub mod layout {
    /// `sizeof(DRIVER_OBJECT)`.
    pub const DRIVER_OBJECT: usize = 0x150;
    /// `DRIVER_OBJECT.DeviceObject`.
    pub const DRV_DEVICE_OBJECT: usize = 0x08;
    /// `DRIVER_OBJECT.DriverStart`.
    pub const DRV_START: usize = 0x18;
    /// `DRIVER_OBJECT.DriverSize`.
    pub const DRV_SIZE: usize = 0x20;
    /// `DRIVER_OBJECT.DriverExtension`.
    pub const DRV_EXTENSION: usize = 0x30;
    /// `DRIVER_OBJECT.DriverName`.
    pub const DRV_NAME: usize = 0x38;
    /// `DRIVER_OBJECT.DriverInit`.
    pub const DRV_INIT: usize = 0x58;
    /// `DRIVER_OBJECT.DriverUnload`.
    pub const DRV_UNLOAD: usize = 0x68;
    /// `DRIVER_OBJECT.MajorFunction`.
    pub const DRV_MAJOR: usize = 0x70;
    /// `DRIVER_EXTENSION.AddDevice`.
    pub const EXT_ADD_DEVICE: usize = 0x08;
    /// `sizeof(DEVICE_OBJECT)` (the WDK's; mingw's is a little shorter).
    pub const DEVICE_OBJECT: usize = 0x150;
    /// `DEVICE_OBJECT.DriverObject`.
    pub const DEV_DRIVER: usize = 0x08;
    /// `DEVICE_OBJECT.NextDevice`.
    pub const DEV_NEXT: usize = 0x10;
    /// `DEVICE_OBJECT.AttachedDevice`.
    pub const DEV_ATTACHED: usize = 0x18;
    /// `DEVICE_OBJECT.Flags`.
    pub const DEV_FLAGS: usize = 0x30;
    /// `DEVICE_OBJECT.Characteristics`.
    pub const DEV_CHARACTERISTICS: usize = 0x34;
    /// `DEVICE_OBJECT.DeviceExtension`.
    pub const DEV_EXTENSION: usize = 0x40;
    /// `DEVICE_OBJECT.DeviceType`.
    pub const DEV_TYPE: usize = 0x48;
    /// `DEVICE_OBJECT.StackSize`.
    pub const DEV_STACK_SIZE: usize = 0x4C;
    /// `DEVICE_OBJECT.DeviceObjectExtension`.
    pub const DEV_OBJECT_EXTENSION: usize = 0x138;
    /// `sizeof(IRP)` without stack locations.
    pub const IRP: usize = 0xD0;
    /// `IRP.MdlAddress`.
    pub const IRP_MDL_ADDRESS: usize = 0x08;
    /// `IRP.AssociatedIrp.SystemBuffer`.
    pub const IRP_SYSTEM_BUFFER: usize = 0x18;
    /// `IRP.IoStatus.Status`.
    pub const IRP_STATUS: usize = 0x30;
    /// `IRP.IoStatus.Information`.
    pub const IRP_INFORMATION: usize = 0x38;
    /// `IRP.PendingReturned`.
    pub const IRP_PENDING_RETURNED: usize = 0x41;
    /// `IRP.StackCount`.
    pub const IRP_STACK_COUNT: usize = 0x42;
    /// `IRP.CurrentLocation`.
    pub const IRP_CURRENT_LOCATION: usize = 0x43;
    /// `IRP.Cancel`.
    pub const IRP_CANCEL: usize = 0x44;
    /// `IRP.UserEvent`.
    pub const IRP_USER_EVENT: usize = 0x50;
    /// `IRP.UserBuffer`.
    pub const IRP_USER_BUFFER: usize = 0x70;
    /// `IRP.Tail.Overlay.CurrentStackLocation`.
    pub const IRP_CURRENT_STACK: usize = 0xB8;
    /// `sizeof(IO_STACK_LOCATION)`.
    pub const STACK: usize = 0x48;
    /// `IO_STACK_LOCATION.Control`.
    pub const SL_CONTROL: usize = 0x03;
    /// `IO_STACK_LOCATION.Parameters`.
    pub const SL_PARAMETERS: usize = 0x08;
    /// `IO_STACK_LOCATION.DeviceObject`.
    pub const SL_DEVICE: usize = 0x28;
    /// `IO_STACK_LOCATION.CompletionRoutine`.
    pub const SL_COMPLETION: usize = 0x38;
    /// `IO_STACK_LOCATION.Context`.
    pub const SL_CONTEXT: usize = 0x40;
    /// `sizeof(KEVENT)`.
    pub const KEVENT: usize = 0x18;
    /// `sizeof(UNICODE_STRING)`.
    pub const UNICODE_STRING: usize = 0x10;
    /// `sizeof(MDL)` (the header; the page frame array follows).
    pub const MDL: usize = 0x30;
    /// `MDL.Next`.
    pub const MDL_NEXT: usize = 0x00;
    /// `MDL.Size`.
    pub const MDL_SIZE: usize = 0x08;
    /// `MDL.MdlFlags`.
    pub const MDL_FLAGS: usize = 0x0A;
    /// `MDL.Process`.
    pub const MDL_PROCESS: usize = 0x10;
    /// `MDL.MappedSystemVa`.
    pub const MDL_MAPPED_SYSTEM_VA: usize = 0x18;
    /// `MDL.StartVa`.
    pub const MDL_START_VA: usize = 0x20;
    /// `MDL.ByteCount`.
    pub const MDL_BYTE_COUNT: usize = 0x28;
    /// `MDL.ByteOffset`.
    pub const MDL_BYTE_OFFSET: usize = 0x2C;
    /// `sizeof(OBJECT_ATTRIBUTES)`.
    pub const OBJECT_ATTRIBUTES: usize = 0x30;
    /// `OBJECT_ATTRIBUTES.RootDirectory`.
    pub const OA_ROOT_DIRECTORY: usize = 0x08;
    /// `OBJECT_ATTRIBUTES.ObjectName`.
    pub const OA_OBJECT_NAME: usize = 0x10;
    /// `KEY_VALUE_BASIC_INFORMATION.Name` (the size of its fixed part).
    pub const KEY_VALUE_BASIC_NAME: usize = 12;
    /// `KEY_VALUE_FULL_INFORMATION.Name` (the size of its fixed part).
    pub const KEY_VALUE_FULL_NAME: usize = 20;
    /// `KEY_VALUE_PARTIAL_INFORMATION.Data` (the size of its fixed part).
    pub const KEY_VALUE_PARTIAL_DATA: usize = 12;
    /// `sizeof(RTL_QUERY_REGISTRY_TABLE)`.
    pub const RTL_QUERY_REGISTRY_TABLE: usize = 0x38;
    /// `RTL_QUERY_REGISTRY_TABLE.QueryRoutine`.
    pub const RQT_QUERY_ROUTINE: usize = 0x00;
    /// `RTL_QUERY_REGISTRY_TABLE.Flags`.
    pub const RQT_FLAGS: usize = 0x08;
    /// `RTL_QUERY_REGISTRY_TABLE.Name`.
    pub const RQT_NAME: usize = 0x10;
    /// `RTL_QUERY_REGISTRY_TABLE.EntryContext`.
    pub const RQT_ENTRY_CONTEXT: usize = 0x18;
    /// `RTL_QUERY_REGISTRY_TABLE.DefaultType`.
    pub const RQT_DEFAULT_TYPE: usize = 0x20;
    /// `RTL_QUERY_REGISTRY_TABLE.DefaultData`.
    pub const RQT_DEFAULT_DATA: usize = 0x28;
    /// `RTL_QUERY_REGISTRY_TABLE.DefaultLength`.
    pub const RQT_DEFAULT_LENGTH: usize = 0x30;
    /// `sizeof(IMAGE_INFO)`.
    pub const IMAGE_INFO: usize = 0x28;
    /// `IMAGE_INFO.Properties` (the bit fields' union).
    pub const II_PROPERTIES: usize = 0x00;
    /// `IMAGE_INFO.ImageBase`.
    pub const II_IMAGE_BASE: usize = 0x08;
    /// `IMAGE_INFO.ImageSize`.
    pub const II_IMAGE_SIZE: usize = 0x18;
    /// `IO_SECURITY_CONTEXT.AccessState`.
    pub const ISC_ACCESS_STATE: usize = 0x08;
    /// `sizeof(IO_SECURITY_CONTEXT)`.
    pub const IO_SECURITY_CONTEXT: usize = 0x18;
    /// `sizeof(ACCESS_STATE)`.
    pub const ACCESS_STATE: usize = 0xA0;
    /// `ACCESS_STATE.SubjectSecurityContext.ClientToken`.
    pub const AS_CLIENT_TOKEN: usize = 0x20;
    /// `ACCESS_STATE.SubjectSecurityContext.PrimaryToken`.
    pub const AS_PRIMARY_TOKEN: usize = 0x30;
    /// `sizeof(KGUARDED_MUTEX)`.
    pub const KGUARDED_MUTEX: usize = 0x38;
}
use layout as l;

const SL_PENDING_RETURNED: u8 = 0x01;
const SL_INVOKE_ON_CANCEL: u8 = 0x20;
const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
const SL_INVOKE_ON_ERROR: u8 = 0x80;
const DO_DEVICE_INITIALIZING: u32 = 0x80;
const DO_EXCLUSIVE: u32 = 0x08;
const DO_DEVICE_HAS_NAME: u32 = 0x40;

struct Machine {
    engine: Arc<dyn Engine>,
}

static MACHINE: OnceLock<Machine> = OnceLock::new();

/// Makes `engine` the one behind the kernel routines and hooks of this process. Only the
/// first call counts.
pub fn set_engine(engine: Arc<dyn Engine>) {
    let _ = MACHINE.set(Machine { engine });
}

/// The engine behind the kernel routines, once set.
#[must_use]
pub fn engine() -> Option<&'static dyn Engine> {
    MACHINE.get().map(|m| &*m.engine)
}

// ---- hooks ----------------------------------------------------------------------------

// The hooks the interception plan writes into the driver's import slots. Each trampoline
// passes its return address (the driver's call site, or — after a tail call — the
// caller of the driver routine) as the fourth argument.
core::arch::global_asm!(
    ".pushsection .text.iosv_runner_hooks,\"ax\",@progbits",
    ".p2align 4",
    ".globl iosv_runner_hook_map",
    "iosv_runner_hook_map:",
    "mov r9, [rsp]",
    "jmp {map}",
    ".p2align 4",
    ".globl iosv_runner_hook_map_ex",
    "iosv_runner_hook_map_ex:",
    "mov r9, [rsp]",
    "jmp {map_ex}",
    ".p2align 4",
    ".globl iosv_runner_hook_unmap",
    "iosv_runner_hook_unmap:",
    "mov r9, [rsp]",
    "jmp {unmap}",
    ".p2align 4",
    ".globl iosv_runner_dbgprint",
    "iosv_runner_dbgprint:",
    "mov [rsp + 8], rcx",
    "mov [rsp + 16], rdx",
    "mov [rsp + 24], r8",
    "mov [rsp + 32], r9",
    "lea rcx, [rsp + 8]",
    "jmp {dbgprint}",
    ".p2align 4",
    ".globl iosv_runner_dbgprintex",
    "iosv_runner_dbgprintex:",
    "mov [rsp + 8], rcx",
    "mov [rsp + 16], rdx",
    "mov [rsp + 24], r8",
    "mov [rsp + 32], r9",
    "lea rcx, [rsp + 24]",
    "jmp {dbgprint}",
    ".popsection",
    map = sym hook_map,
    map_ex = sym hook_map_ex,
    unmap = sym hook_unmap,
    dbgprint = sym dbg_print_args,
);

unsafe extern "win64" {
    fn iosv_runner_hook_map();
    fn iosv_runner_hook_map_ex();
    fn iosv_runner_hook_unmap();
    fn iosv_runner_dbgprint();
    fn iosv_runner_dbgprintex();
}

/// The addresses of every hook, for the interception plan: the I/O-space routines,
/// `MmGetSystemRoutineAddress`'s and the MDL family's (`mdl::hooks`).
#[must_use]
pub fn hooks() -> HookTable {
    HookTable {
        io: io_hooks(),
        mdl: mdl::hooks(),
    }
}

fn io_hooks() -> Hooks {
    Hooks {
        map_io_space: iosv_runner_hook_map as *const () as usize,
        map_io_space_ex: iosv_runner_hook_map_ex as *const () as usize,
        unmap_io_space: iosv_runner_hook_unmap as *const () as usize,
        get_system_routine_address: hook_get_system_routine_address as *const () as usize,
    }
}

/// The call chain a hook reports: the return address when it is in a driver image, else
/// the entry of the driver routine running (a tail call left the driver); then that
/// entry.
pub(super) fn frames(ret: u64) -> ([u64; 2], usize) {
    let entry = current().map_or(0, |e| e.entry as u64);
    if trap::image_of(ret as usize).is_some() {
        ([ret, entry], if entry == 0 { 1 } else { 2 })
    } else {
        ([entry, 0], 1)
    }
}

extern "win64" fn hook_map(physical: u64, size: usize, cache: u32, ret: u64) -> u64 {
    hooked_map(physical, size, cache, false, ret)
}

extern "win64" fn hook_map_ex(physical: u64, size: usize, protect: u32, ret: u64) -> u64 {
    hooked_map(physical, size, protect, true, ret)
}

/// `MmMapIoSpace` (`ex == false`, `cache` a cache type) or `MmMapIoSpaceEx` (`cache` a
/// protection) through the engine, called from `ret`; the mapping becomes device memory.
fn hooked_map(physical: u64, size: usize, cache: u32, ex: bool, ret: u64) -> u64 {
    let Some(e) = engine() else { return 0 };
    let (f, n) = frames(ret);
    let base = e.hook_map(f.get(..n).unwrap_or(&[]), physical, size as u64, cache, ex);
    mmio::mapped(base, size as u64, physical);
    base
}

extern "win64" fn hook_unmap(base: u64, size: usize, _unused: u64, ret: u64) {
    let Some(e) = engine() else { return };
    let (f, n) = frames(ret);
    e.hook_unmap(f.get(..n).unwrap_or(&[]), base, size as u64);
    if !e.mm_is_mapped(base) {
        mmio::unmapped(base);
    }
}

extern "win64" fn hook_get_system_routine_address(name: usize) -> usize {
    let units = unicode_units(name);
    if let Some(hook) = engine().and_then(|e| e.routine_override(&units)) {
        return hook;
    }
    mm_get_system_routine_address(name)
}

// ---- the routine table ----------------------------------------------------------------

/// The exported *variables* the host provides (an import of one is bound to the
/// variable's address, not to code).
pub const DATA_EXPORTS: &[&str] = &["IoDriverObjectType"];

macro_rules! routines {
    ($($name:literal => $f:expr,)*) => {
        /// Every routine the host implements, by its exported name (ntoskrnl.exe and
        /// hal.dll).
        pub const IMPLEMENTED: &[&str] = &[$($name),*];

        /// The host routine (or, for [`DATA_EXPORTS`], variable) exported as `name`.
        #[must_use]
        pub fn lookup(name: &str) -> Option<usize> {
            match name {
                $($name => Some($f as *const () as usize),)*
                "IoDriverObjectType" => Some(ob::io_driver_object_type()),
                _ => None,
            }
        }
    };
}

routines! {
    "MmMapIoSpace" => mm_map_io_space,
    "MmMapIoSpaceEx" => mm_map_io_space_ex,
    "MmUnmapIoSpace" => mm_unmap_io_space,
    "MmGetSystemRoutineAddress" => mm_get_system_routine_address,
    "IoCreateDevice" => io_create_device,
    "IoDeleteDevice" => io_delete_device,
    "IoAttachDeviceToDeviceStack" => io_attach_device_to_device_stack,
    "IoAttachDeviceToDeviceStackSafe" => io_attach_device_to_device_stack_safe,
    "IoDetachDevice" => io_detach_device,
    "IoGetAttachedDeviceReference" => io_get_attached_device,
    "IoGetAttachedDevice" => io_get_attached_device,
    "IofCallDriver" => iof_call_driver,
    "IofCompleteRequest" => iof_complete_request,
    "IoAllocateIrp" => io_allocate_irp,
    "IoInitializeIrp" => io_initialize_irp,
    "IoFreeIrp" => io_free_irp,
    "IoCreateSymbolicLink" => ob::io_create_symbolic_link,
    "IoDeleteSymbolicLink" => ob::io_delete_symbolic_link,
    "IoForwardIrpSynchronously" => io_forward_irp_synchronously,
    "ObReferenceObjectByName" => ob::ob_reference_object_by_name,
    "ObDereferenceObjectDeferDelete" => ob::ob_dereference_object_defer_delete,
    "SeTokenIsAdmin" => ob::se_token_is_admin,
    "PsSetLoadImageNotifyRoutine" => ps::ps_set_load_image_notify_routine,
    "PsRemoveLoadImageNotifyRoutine" => ps::ps_remove_load_image_notify_routine,
    "ZwQuerySystemInformation" => ps::zw_query_system_information,
    "KeInitializeGuardedMutex" => guarded::ke_initialize_guarded_mutex,
    "KeAcquireGuardedMutex" => guarded::ke_acquire_guarded_mutex,
    "KeReleaseGuardedMutex" => guarded::ke_release_guarded_mutex,
    "KeExpandKernelStackAndCallout" => stack::ke_expand_kernel_stack_and_callout,
    "RtlCaptureStackBackTrace" => stack::iosv_runner_capture_stack_back_trace,
    "__chkstk" => stack::iosv_runner_chkstk,
    "KdRefreshDebuggerNotPresent" => kd_refresh_debugger_not_present,
    "KeQueryInterruptTimePrecise" => ke_query_interrupt_time_precise,
    "MmIsAddressValid" => mm_is_address_valid,
    "IoRegisterDeviceInterface" => io_register_device_interface,
    "IoSetDeviceInterfaceState" => success2,
    "IoWMIRegistrationControl" => success2,
    "IoIsWdmVersionAvailable" => true2,
    "IoOpenDeviceRegistryKey" => registry::io_open_device_registry_key,
    "IoGetDeviceProperty" => not_found5,
    "IoGetCurrentProcess" => io_get_current_process,
    "ObfReferenceObject" => ob_reference,
    "ObfDereferenceObject" => ob_reference,
    "PoStartNextPowerIrp" => nothing1,
    "PoCallDriver" => iof_call_driver,
    "PoSetPowerState" => po_set_power_state,
    "KeGetCurrentIrql" => ke_get_current_irql,
    "KfRaiseIrql" => kf_raise_irql,
    "KfLowerIrql" => kf_lower_irql,
    "KeLowerIrql" => kf_lower_irql,
    "KeRaiseIrqlToDpcLevel" => ke_raise_irql_to_dpc_level,
    "KeInitializeEvent" => ke_initialize_event,
    "KeSetEvent" => ke_set_event,
    "KeResetEvent" => ke_reset_event,
    "KeClearEvent" => ke_clear_event,
    "KeReadStateEvent" => ke_read_state_event,
    "KeWaitForSingleObject" => ke_wait_for_single_object,
    "KeInitializeSpinLock" => ke_initialize_spin_lock,
    "KeAcquireSpinLockRaiseToDpc" => ke_acquire_spin_lock_raise_to_dpc,
    "KeReleaseSpinLock" => ke_release_spin_lock,
    "KeAcquireSpinLockAtDpcLevel" => ke_acquire_spin_lock_at_dpc_level,
    "KeReleaseSpinLockFromDpcLevel" => ke_release_spin_lock_from_dpc_level,
    "KeAcquireInStackQueuedSpinLock" => ke_acquire_in_stack_queued_spin_lock,
    "KeReleaseInStackQueuedSpinLock" => ke_release_in_stack_queued_spin_lock,
    "KeStallExecutionProcessor" => ke_stall_execution_processor,
    "KeDelayExecutionThread" => ke_delay_execution_thread,
    "KeQueryPerformanceCounter" => ke_query_performance_counter,
    "KeQuerySystemTimePrecise" => ke_query_system_time,
    "KeBugCheckEx" => ke_bug_check_ex,
    "KeBugCheck" => ke_bug_check,
    "KeGetCurrentThread" => ke_get_current_thread,
    "PsGetCurrentThreadId" => ps_get_current_thread_id,
    "PsGetCurrentProcessId" => ps_get_current_process_id,
    "ExAllocatePoolWithTag" => ex_allocate_pool_with_tag,
    "ExAllocatePool" => ex_allocate_pool,
    "ExAllocatePool2" => ex_allocate_pool2,
    "ExFreePoolWithTag" => ex_free_pool_with_tag,
    "ExFreePool" => ex_free_pool,
    "ExAcquireFastMutex" => ex_acquire_fast_mutex,
    "ExReleaseFastMutex" => ex_release_fast_mutex,
    "RtlInitUnicodeString" => rtl_init_unicode_string,
    "RtlInitAnsiString" => rtl_init_ansi_string,
    "RtlInitString" => rtl_init_ansi_string,
    "RtlCopyUnicodeString" => rtl_copy_unicode_string,
    "RtlEqualUnicodeString" => rtl_equal_unicode_string,
    "RtlCompareMemory" => rtl_compare_memory,
    "RtlGetVersion" => rtl_get_version,
    "RtlQueryRegistryValues" => registry::rtl_query_registry_values,
    "ZwOpenKey" => registry::zw_open_key,
    "ZwCreateKey" => registry::zw_create_key,
    "ZwQueryValueKey" => registry::zw_query_value_key,
    "ZwSetValueKey" => registry::zw_set_value_key,
    "ZwEnumerateValueKey" => registry::zw_enumerate_value_key,
    "ZwDeleteValueKey" => registry::zw_delete_value_key,
    "ZwClose" => registry::zw_close,
    "__C_specific_handler" => c_specific_handler,
    "IoAllocateWorkItem" => io_allocate_work_item,
    "IoQueueWorkItem" => io_queue_work_item,
    "IoFreeWorkItem" => io_free_work_item,
    "KeInitializeDpc" => ke_initialize_dpc,
    "KeInsertQueueDpc" => ke_insert_queue_dpc,
    "KeRemoveQueueDpc" => ke_remove_queue_dpc,
    "KeInitializeTimer" => ke_initialize_timer,
    "KeInitializeTimerEx" => ke_initialize_timer_ex,
    "KeSetTimer" => ke_set_timer,
    "KeSetTimerEx" => ke_set_timer_ex,
    "KeCancelTimer" => ke_cancel_timer,
    "IoInitializeRemoveLockEx" => io_initialize_remove_lock_ex,
    "IoAcquireRemoveLockEx" => io_acquire_remove_lock_ex,
    "IoReleaseRemoveLockEx" => io_release_remove_lock_ex,
    "IoReleaseRemoveLockAndWaitEx" => io_release_remove_lock_and_wait_ex,
    "IoConnectInterrupt" => io_connect_interrupt,
    "IoDisconnectInterrupt" => io_disconnect_interrupt,
    "KeSynchronizeExecution" => ke_synchronize_execution,
    "IoConnectInterruptEx" => io_connect_interrupt_ex,
    "IoDisconnectInterruptEx" => nothing1,
    "KeQueryActiveProcessorCountEx" => ke_query_active_processor_count_ex,
    "KeGetCurrentProcessorNumberEx" => ke_get_current_processor_number_ex,
    "ExInitializeNPagedLookasideList" => ex_initialize_npaged_lookaside_list,
    "ExDeleteNPagedLookasideList" => ex_delete_npaged_lookaside_list,
    "ExpInterlockedPushEntrySList" => exp_interlocked_push_entry_slist,
    "ExpInterlockedPopEntrySList" => exp_interlocked_pop_entry_slist,
    "ExpInterlockedFlushSList" => exp_interlocked_flush_slist,
    "ExQueryDepthSList" => ex_query_depth_slist,
    "IoAllocateMdl" => mdl::io_allocate_mdl,
    "IoFreeMdl" => mdl::io_free_mdl,
    "MmBuildMdlForNonPagedPool" => mdl::mm_build_mdl_for_non_paged_pool,
    "MmProbeAndLockPages" => mdl::mm_probe_and_lock_pages,
    "IoBuildPartialMdl" => mdl::io_build_partial_mdl,
    "MmUnlockPages" => mdl::mm_unlock_pages,
    "MmMapLockedPagesSpecifyCache" => mdl::mm_map_locked_pages_specify_cache,
    "MmMapLockedPages" => mdl::mm_map_locked_pages,
    "MmUnmapLockedPages" => mdl::mm_unmap_locked_pages,
    "MmAllocateMappingAddress" => mdl::mm_allocate_mapping_address,
    "MmAllocateMappingAddressEx" => mdl::mm_allocate_mapping_address_ex,
    "MmMapLockedPagesWithReservedMapping" => mdl::mm_map_locked_pages_with_reserved_mapping,
    "MmUnmapReservedMapping" => mdl::mm_unmap_reserved_mapping,
    "MmFreeMappingAddress" => mdl::mm_free_mapping_address,
    "MmProtectMdlSystemAddress" => mdl::mm_protect_mdl_system_address,
    "DbgPrint" => iosv_runner_dbgprint,
    "DbgPrintEx" => iosv_runner_dbgprintex,
    "memcpy" => c_memmove,
    "memmove" => c_memmove,
    "memset" => c_memset,
    "memcmp" => c_memcmp,
    "strlen" => c_strlen,
    "wcslen" => c_wcslen,
}

/// The host routine `dll!name` for the loader: ntoskrnl.exe and hal.dll only (a routine
/// by its kernel-space alias when those are on, `kaddr`).
#[must_use]
pub fn resolve(dll: &str, name: &str) -> Option<usize> {
    let known = ["ntoskrnl.exe", "hal.dll"]
        .iter()
        .any(|d| d.eq_ignore_ascii_case(dll));
    if known {
        lookup(name).map(kaddr::alias)
    } else {
        None
    }
}

/// Where every lazy stub jumps: reports the routine and ends the child.
pub extern "win64" fn unimplemented_entry(index: u64) -> ! {
    let (driver, dll, routine) = super::loader::stubs::name(index)
        .unwrap_or_else(|| ("driver".into(), "?".into(), format!("stub {index}")));
    let running = current().map_or_else(String::new, |e| format!(" (in {})", e.name));
    report::line(&[
        "unimplemented ",
        &format!(
            "driver {driver} called {dll}!{routine}, which the host does not implement{running}"
        ),
    ]);
    // SAFETY: ends the process without unwinding through driver frames.
    unsafe { libc::_exit(trap::UNIMPLEMENTED_STATUS) }
}

/// `__C_specific_handler`: the language handler of `__try` scopes. The fault handler
/// recognises it in unwind info and interprets the scope tables itself ([`super::seh`]);
/// called directly it answers `ExceptionContinueSearch`.
extern "win64" fn c_specific_handler(
    _record: usize,
    _frame: u64,
    _context: usize,
    _dispatcher: usize,
) -> i32 {
    1
}

/// The address bound to `__C_specific_handler` imports: the routine table's, the one the
/// loader bound. Not `c_specific_handler as usize` taken here: Rust does not promise one
/// address per function (it is `unnamed_addr`), and in an optimized build the two
/// addresses differed (observed, not traced to the pass that split them), so no `__try` of
/// a driver was ever found (`iosvctl run` reported the driver's own caught exceptions as
/// crashes).
#[must_use]
pub fn c_specific_handler_address() -> usize {
    lookup("__C_specific_handler").unwrap_or(0)
}

// ---- deferred work: work items, DPCs, timers ------------------------------------------

/// Work queued by the driver, run by [`run_deferred`] when the driver routine the runner
/// called returns (there is no other thread or processor to run it meanwhile).
#[derive(Debug, Clone, Copy)]
enum Deferred {
    /// A work item: `routine(device, context)` at PASSIVE_LEVEL.
    Work {
        routine: usize,
        device: usize,
        context: usize,
    },
    /// A DPC object (`KDPC`) queued by KeInsertQueueDpc or a timer, run at DISPATCH_LEVEL.
    Dpc(usize),
}

static DEFERRED: Mutex<std::collections::VecDeque<Deferred>> =
    Mutex::new(std::collections::VecDeque::new());
/// Timers set and not yet expired or cancelled (`KTIMER` addresses).
static TIMERS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// Most deferred routines run after one driver routine (a DPC that queues itself
/// forever would otherwise never let the run end; the watchdog covers slow ones).
const MAX_DEFERRED_PER_DRAIN: usize = 1000;

fn push(d: Deferred) {
    DEFERRED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push_back(d);
}

/// Runs the work items and DPCs queued so far, and fires the timers set (their DPC is
/// queued, a one-shot timer expires, a periodic one fires once per drain). Called when a
/// top-level driver routine returns; returns how many routines ran.
pub fn run_deferred() -> usize {
    let timers: Vec<usize> =
        std::mem::take(&mut *TIMERS.lock().unwrap_or_else(PoisonError::into_inner));
    for timer in timers {
        let t = obj(timer, 0x40);
        t.set::<i32>(4, 1); // signalled
        let dpc = t.get::<u64>(0x30) as usize;
        if dpc != 0 {
            ke_insert_queue_dpc(dpc, 0, 0);
        }
        if t.get::<u32>(0x3C) != 0 {
            TIMERS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(timer);
        }
    }
    let mut ran = 0;
    while ran < MAX_DEFERRED_PER_DRAIN {
        let next = DEFERRED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        let Some(d) = next else { break };
        ran += 1;
        match d {
            Deferred::Work {
                routine,
                device,
                context,
            } => {
                type Work = extern "win64" fn(usize, usize);
                // SAFETY: IO_WORKITEM_ROUTINE, as the driver passed it to IoQueueWorkItem.
                let f = unsafe { std::mem::transmute::<usize, Work>(routine) };
                entering("work item routine", routine, || f(device, context));
            }
            Deferred::Dpc(dpc) => {
                let k = obj(dpc, 0x40);
                let routine = k.get::<u64>(0x18) as usize;
                let (context, a1, a2) = (
                    k.get::<u64>(0x20) as usize,
                    k.get::<u64>(0x28) as usize,
                    k.get::<u64>(0x30) as usize,
                );
                k.set::<u64>(0x38, 0); // no longer queued
                if routine == 0 {
                    continue;
                }
                type DpcRoutine = extern "win64" fn(usize, usize, usize, usize);
                // SAFETY: KDEFERRED_ROUTINE, as the driver passed it to KeInitializeDpc.
                let f = unsafe { std::mem::transmute::<usize, DpcRoutine>(routine) };
                let old = set_irql(2);
                entering("DPC routine", routine, || f(dpc, context, a1, a2));
                set_irql(old);
            }
        }
    }
    ran
}

extern "win64" fn io_allocate_work_item(device: usize) -> usize {
    let item = alloc_zeroed(0x20);
    obj(item, 0x20).set::<u64>(0, device as u64);
    item
}

extern "win64" fn io_queue_work_item(item: usize, routine: usize, _queue: u32, context: usize) {
    let device = obj(item, 0x20).get::<u64>(0) as usize;
    push(Deferred::Work {
        routine,
        device,
        context,
    });
}

extern "win64" fn io_free_work_item(_item: usize) {}

/// `KDPC`: routine at 0x18, context 0x20, arguments 0x28/0x30, "queued" at 0x38.
extern "win64" fn ke_initialize_dpc(dpc: usize, routine: usize, context: usize) {
    let k = obj(dpc, 0x40);
    k.zero();
    k.set::<u8>(0, 0x13);
    k.set::<u64>(0x18, routine as u64);
    k.set::<u64>(0x20, context as u64);
}

extern "win64" fn ke_insert_queue_dpc(dpc: usize, a1: usize, a2: usize) -> u8 {
    let k = obj(dpc, 0x40);
    if k.get::<u64>(0x38) != 0 {
        return 0;
    }
    k.set::<u64>(0x28, a1 as u64);
    k.set::<u64>(0x30, a2 as u64);
    k.set::<u64>(0x38, 1);
    push(Deferred::Dpc(dpc));
    1
}

extern "win64" fn ke_remove_queue_dpc(dpc: usize) -> u8 {
    let mut q = DEFERRED.lock().unwrap_or_else(PoisonError::into_inner);
    let before = q.len();
    q.retain(|d| !matches!(d, Deferred::Dpc(x) if *x == dpc));
    obj(dpc, 0x40).set::<u64>(0x38, 0);
    u8::from(q.len() != before)
}

/// `KTIMER`: DISPATCHER_HEADER, DueTime 0x18, Dpc 0x30, Period 0x3C.
extern "win64" fn ke_initialize_timer_ex(timer: usize, kind: u32) {
    let t = obj(timer, 0x40);
    t.zero();
    t.set::<u8>(0, 8 + kind as u8); // TimerNotificationObject / TimerSynchronizationObject
    t.set::<u64>(8, (timer + 8) as u64);
    t.set::<u64>(16, (timer + 8) as u64);
}

extern "win64" fn ke_initialize_timer(timer: usize) {
    ke_initialize_timer_ex(timer, 0);
}

extern "win64" fn ke_set_timer_ex(timer: usize, due: i64, period: i32, dpc: usize) -> u8 {
    let was = ke_cancel_timer(timer);
    let t = obj(timer, 0x40);
    t.set::<i64>(0x18, due);
    t.set::<u64>(0x30, dpc as u64);
    t.set::<u32>(0x3C, period.max(0) as u32);
    t.set::<i32>(4, 0);
    TIMERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(timer);
    was
}

extern "win64" fn ke_set_timer(timer: usize, due: i64, dpc: usize) -> u8 {
    ke_set_timer_ex(timer, due, 0, dpc)
}

extern "win64" fn ke_cancel_timer(timer: usize) -> u8 {
    let mut timers = TIMERS.lock().unwrap_or_else(PoisonError::into_inner);
    let before = timers.len();
    timers.retain(|&t| t != timer);
    u8::from(timers.len() != before)
}

// ---- remove locks ---------------------------------------------------------------------

/// `IO_REMOVE_LOCK_COMMON_BLOCK`: Removed at 0, IoCount at 4, RemoveEvent at 8.
fn remove_lock_count(lock: usize) -> &'static AtomicI32 {
    atomic_at(lock, 4, "IO_REMOVE_LOCK")
}

extern "win64" fn io_initialize_remove_lock_ex(
    lock: usize,
    _tag: u32,
    _max: u32,
    _high: u32,
    _size: u32,
) {
    let o = obj(lock, 0x20);
    o.set::<u8>(0, 0);
    remove_lock_count(lock).store(1, Ordering::SeqCst);
    ke_initialize_event(lock + 8, 0, 0);
}

extern "win64" fn io_acquire_remove_lock_ex(
    lock: usize,
    _tag: usize,
    _file: usize,
    _line: u32,
    _size: u32,
) -> Status {
    let count = remove_lock_count(lock);
    count.fetch_add(1, Ordering::SeqCst);
    if obj(lock, 0x20).get::<u8>(0) != 0 {
        if count.fetch_sub(1, Ordering::SeqCst) == 1 {
            ke_set_event(lock + 8, 0, 0);
        }
        return 0xC000_0056_u32 as i32; // STATUS_DELETE_PENDING
    }
    STATUS_SUCCESS
}

extern "win64" fn io_release_remove_lock_ex(lock: usize, _tag: usize, _size: u32) {
    if remove_lock_count(lock).fetch_sub(1, Ordering::SeqCst) == 1 {
        ke_set_event(lock + 8, 0, 0);
    }
}

extern "win64" fn io_release_remove_lock_and_wait_ex(lock: usize, tag: usize, size: u32) {
    obj(lock, 0x20).set::<u8>(0, 1);
    // The bias of IoInitializeRemoveLock, then the caller's own acquisition.
    io_release_remove_lock_ex(lock, tag, size);
    io_release_remove_lock_ex(lock, tag, size);
    ke_wait_for_single_object(lock + 8, 0, 0, 0, 0);
}

// ---- interrupts (connected, never raised) and MDLs ------------------------------------

/// Our `KINTERRUPT`: service routine, context, synchronize IRQL.
extern "win64" fn io_connect_interrupt(
    out: usize,
    routine: usize,
    context: usize,
    _spin_lock: usize,
    _vector: u32,
    _irql: u8,
    synchronize_irql: u8,
    _mode: u32,
    _share: u8,
    _affinity: u64,
    _float: u8,
) -> Status {
    let k = alloc_zeroed(0x20);
    let o = obj(k, 0x20);
    o.set::<u64>(0, routine as u64);
    o.set::<u64>(8, context as u64);
    o.set::<u8>(0x10, synchronize_irql);
    obj(out, 8).set::<u64>(0, k as u64);
    STATUS_SUCCESS
}

extern "win64" fn io_disconnect_interrupt(_interrupt: usize) {}

/// Runs `routine(context)` at the interrupt's synchronize IRQL (DIRQL).
extern "win64" fn ke_synchronize_execution(interrupt: usize, routine: usize, context: usize) -> u8 {
    let irql = obj(interrupt, 0x20).get::<u8>(0x10);
    type Synch = extern "win64" fn(usize) -> u8;
    // SAFETY: KSYNCHRONIZE_ROUTINE, as the driver passed it.
    let f = unsafe { std::mem::transmute::<usize, Synch>(routine) };
    let old = set_irql(irql.max(irql_now()));
    let r = f(context);
    set_irql(old);
    r
}

fn irql_now() -> u8 {
    irql()
}

/// `IoConnectInterruptEx`: CONNECT_FULLY_SPECIFIED (1) and CONNECT_LINE_BASED (2)
/// connect like `IoConnectInterrupt` (a line-based interrupt synchronizes at the DIRQL of
/// the device's translated interrupt resource, 5); CONNECT_MESSAGE_BASED (3) is refused
/// with STATUS_NOT_SUPPORTED (no message-signalled interrupts here).
extern "win64" fn io_connect_interrupt_ex(params: usize) -> Status {
    let p = obj(params, 0x50);
    let version = p.get::<u32>(0);
    if !matches!(version, 1 | 2) {
        return STATUS_NOT_SUPPORTED;
    }
    let out = p.get::<u64>(0x10) as usize;
    let routine = p.get::<u64>(0x18) as usize;
    let context = p.get::<u64>(0x20) as usize;
    let mut synch = p.get::<u8>(0x30);
    if version == 2 && synch == 0 {
        synch = 5;
    }
    if version == 1 {
        synch = synch.max(p.get::<u8>(0x38));
    }
    io_connect_interrupt(out, routine, context, 0, 0, synch, synch, 0, 1, 1, 0)
}

extern "win64" fn ke_query_active_processor_count_ex(_group: u16) -> u32 {
    1
}

extern "win64" fn ke_get_current_processor_number_ex(number: usize) -> u32 {
    if number != 0 {
        // PROCESSOR_NUMBER { Group: u16, Number: u8, Reserved: u8 }.
        obj(number, 4).set::<u32>(0, 0);
    }
    0
}

// ---- lookaside lists and SLists ------------------------------------------------------

/// One lock for every SList: there is one thread running driver code, so this only
/// keeps the header and its entries consistent.
static SLISTS: Mutex<()> = Mutex::new(());

/// x64 `SLIST_HEADER`: Depth in bits 0..16 of the first quadword, the first entry's
/// address in bits 4..64 of the second (entries are 16-byte aligned).
extern "win64" fn exp_interlocked_push_entry_slist(head: usize, entry: usize) -> usize {
    let _g = SLISTS.lock().unwrap_or_else(PoisonError::into_inner);
    let h = obj(head, 16);
    let first = h.get::<u64>(8) & !0xF;
    obj(entry, 8).set::<u64>(0, first);
    h.set::<u64>(8, (entry as u64) & !0xF);
    let q = h.get::<u64>(0);
    let depth = (q & 0xFFFF).wrapping_add(1) & 0xFFFF;
    let sequence = ((q >> 16).wrapping_add(1)) << 16;
    h.set::<u64>(0, sequence | depth);
    first as usize
}

extern "win64" fn exp_interlocked_pop_entry_slist(head: usize) -> usize {
    let _g = SLISTS.lock().unwrap_or_else(PoisonError::into_inner);
    let h = obj(head, 16);
    let first = (h.get::<u64>(8) & !0xF) as usize;
    if first == 0 {
        return 0;
    }
    h.set::<u64>(8, obj(first, 8).get::<u64>(0) & !0xF);
    let q = h.get::<u64>(0);
    let depth = (q & 0xFFFF).saturating_sub(1);
    h.set::<u64>(0, (q & !0xFFFF) | depth);
    first
}

extern "win64" fn ex_query_depth_slist(head: usize) -> u16 {
    (obj(head, 16).get::<u64>(0) & 0xFFFF) as u16
}

extern "win64" fn exp_interlocked_flush_slist(head: usize) -> usize {
    let _g = SLISTS.lock().unwrap_or_else(PoisonError::into_inner);
    let h = obj(head, 16);
    let first = (h.get::<u64>(8) & !0xF) as usize;
    h.set::<u64>(8, 0);
    h.set::<u64>(0, h.get::<u64>(0) & !0xFFFF);
    first
}

/// `GENERAL_LOOKASIDE`: ListHead 0, Depth 0x10, MaximumDepth 0x12, Type 0x24, Tag 0x28,
/// Size 0x2C, Allocate 0x30, Free 0x38, ListEntry 0x40. The headers' inline
/// ExAllocateFrom/ExFreeToNPagedLookasideList do the rest through the SList routines.
extern "win64" fn ex_initialize_npaged_lookaside_list(
    lookaside: usize,
    allocate: usize,
    free: usize,
    _flags: u32,
    size: usize,
    tag: u32,
    _depth: u16,
) {
    let l = obj(lookaside, 0x80);
    l.zero();
    l.set::<u16>(0x10, 4);
    l.set::<u16>(0x12, 256);
    l.set::<u32>(0x24, 0); // NonPagedPool
    l.set::<u32>(0x28, tag);
    l.set::<u32>(0x2C, size as u32);
    let default_allocate = ex_allocate_pool_with_tag as *const () as usize;
    let default_free = ex_free_pool as *const () as usize;
    l.set::<u64>(
        0x30,
        if allocate == 0 {
            default_allocate
        } else {
            allocate
        } as u64,
    );
    l.set::<u64>(0x38, if free == 0 { default_free } else { free } as u64);
    l.set::<u64>(0x40, (lookaside + 0x40) as u64);
    l.set::<u64>(0x48, (lookaside + 0x40) as u64);
}

/// Frees the entries the list still holds with its Free routine.
extern "win64" fn ex_delete_npaged_lookaside_list(lookaside: usize) {
    let l = obj(lookaside, 0x80);
    type Free = extern "win64" fn(usize);
    let free = l.get::<u64>(0x38) as usize;
    if free == 0 {
        return;
    }
    // SAFETY: PFREE_FUNCTION, as ExInitializeNPagedLookasideList stored it.
    let f = unsafe { std::mem::transmute::<usize, Free>(free) };
    for _ in 0..65536 {
        let entry = exp_interlocked_pop_entry_slist(lookaside);
        if entry == 0 {
            break;
        }
        f(entry);
    }
}

// ---- generic answers ------------------------------------------------------------------

extern "win64" fn success2(_: usize, _: usize) -> Status {
    STATUS_SUCCESS
}

extern "win64" fn true2(_: usize, _: usize) -> u8 {
    1
}
extern "win64" fn nothing1(_: usize) {}
extern "win64" fn not_found5(_: usize, _: usize, _: usize, _: usize, _: usize) -> Status {
    STATUS_OBJECT_NAME_NOT_FOUND
}

// ---- memory ---------------------------------------------------------------------------

/// Zeroed memory of `len` bytes that is never freed (kernel objects may be referenced
/// after their owner forgets them).
#[must_use]
pub fn alloc_zeroed(len: usize) -> usize {
    // SAFETY: calloc with a nonzero size; the result is checked by callers (0 = failure).
    (unsafe { libc::calloc(1, len.max(1)) }) as usize
}

/// An object of `len` bytes at `addr` handed in by the driver.
/// The atomic integer at `offset` in the driver's object at `object` (a `what`). A null
/// or misaligned object — on Windows a fault or a corrupted lock — ends the run with a
/// bug-check report here, instead of forming a null or misaligned reference.
pub(crate) fn atomic_at<T>(object: usize, offset: usize, what: &str) -> &'static T {
    let addr = object.wrapping_add(offset);
    if object == 0 || addr < object || !addr.is_multiple_of(std::mem::align_of::<T>()) {
        trap::bugcheck(&format!(
            "a kernel routine was passed a null or misaligned {what} at {object:#x}"
        ));
    }
    // SAFETY: non-null and aligned for T (checked). The DDI contract makes `object` a
    // live object of the driver, valid for the duration of the routine, which is as long
    // as the callers use the reference (the 'static is not relied on). T is only ever an
    // atomic integer here, with the layout of the LONG/ULONG_PTR field, and the host
    // accesses that field only atomically.
    unsafe { &*(addr as *const T) }
}

fn obj(addr: usize, len: usize) -> Obj {
    // SAFETY: the DDI contract of every routine here: the caller passes pointers to live
    // objects of the documented type. A violating driver faults, which is reported.
    unsafe { Obj::new(addr, len) }
}

// ---- Mm (unhooked: what the plan replaces) --------------------------------------------

extern "win64" fn mm_map_io_space(physical: u64, size: usize, cache: u32) -> u64 {
    let Some(e) = engine() else { return 0 };
    let base = e.mm_map(physical, size as u64, cache, false);
    mmio::mapped(base, size as u64, physical);
    base
}

extern "win64" fn mm_map_io_space_ex(physical: u64, size: usize, protect: u32) -> u64 {
    let Some(e) = engine() else { return 0 };
    let base = e.mm_map(physical, size as u64, protect, true);
    mmio::mapped(base, size as u64, physical);
    base
}

extern "win64" fn mm_unmap_io_space(base: u64, size: usize) {
    let Some(e) = engine() else { return };
    e.mm_unmap(base, size as u64);
    if !e.mm_is_mapped(base) {
        mmio::unmapped(base);
    }
}

/// The UTF-16 units of a `UNICODE_STRING` (at most 256).
fn unicode_units(us: usize) -> Vec<u16> {
    let s = obj(us, l::UNICODE_STRING);
    let len = usize::from(s.get::<u16>(0) / 2).min(256);
    let buffer = s.get::<u64>(8) as usize;
    let b = obj(buffer, len * 2);
    (0..len).map(|i| b.get::<u16>(i * 2)).collect()
}

/// The text of a `UNICODE_STRING` (at most 256 units).
pub(crate) fn unicode_string(us: usize) -> String {
    String::from_utf16_lossy(&unicode_units(us))
}

extern "win64" fn mm_get_system_routine_address(name: usize) -> usize {
    lookup(&unicode_string(name)).map_or(0, kaddr::alias)
}

// ---- I/O manager ----------------------------------------------------------------------

/// Lower device of each attached device (`IoAttachDeviceToDeviceStack`).
static LOWER: Mutex<Option<HashMap<usize, usize>>> = Mutex::new(None);

extern "win64" fn io_create_device(
    driver: usize,
    extension_size: u32,
    name: usize,
    device_type: u32,
    characteristics: u32,
    exclusive: u8,
    out: usize,
) -> Status {
    let ext = (extension_size as usize).div_ceil(16) * 16;
    let block = alloc_zeroed(l::DEVICE_OBJECT + ext + 0x60);
    if block == 0 {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let dev = obj(block, l::DEVICE_OBJECT);
    let drv = obj(driver, l::DRIVER_OBJECT);
    dev.set::<u16>(0, 3);
    dev.set::<u16>(2, (l::DEVICE_OBJECT + ext) as u16);
    dev.set::<u32>(4, 1);
    dev.set::<u64>(l::DEV_DRIVER, driver as u64);
    dev.set::<u64>(l::DEV_NEXT, drv.get::<u64>(l::DRV_DEVICE_OBJECT));
    drv.set::<u64>(l::DRV_DEVICE_OBJECT, block as u64);
    let mut flags = DO_DEVICE_INITIALIZING;
    if exclusive != 0 {
        flags |= DO_EXCLUSIVE;
    }
    if name != 0 {
        flags |= DO_DEVICE_HAS_NAME;
    }
    dev.set::<u32>(l::DEV_FLAGS, flags);
    dev.set::<u32>(l::DEV_CHARACTERISTICS, characteristics);
    if extension_size != 0 {
        dev.set::<u64>(l::DEV_EXTENSION, (block + l::DEVICE_OBJECT) as u64);
    }
    dev.set::<u32>(l::DEV_TYPE, device_type);
    dev.set::<u8>(l::DEV_STACK_SIZE, 1);
    let devobj_ext = block + l::DEVICE_OBJECT + ext;
    obj(devobj_ext, 0x60).set::<u64>(8, block as u64);
    dev.set::<u64>(l::DEV_OBJECT_EXTENSION, devobj_ext as u64);
    if name != 0 {
        ob::register_device(&unicode_string(name), block);
    }
    obj(out, 8).set::<u64>(0, block as u64);
    STATUS_SUCCESS
}

extern "win64" fn io_delete_device(device: usize) {
    ob::forget_device(device);
    let dev = obj(device, l::DEVICE_OBJECT);
    let drv = obj(dev.get::<u64>(l::DEV_DRIVER) as usize, l::DRIVER_OBJECT);
    // Unlink from the driver's list; the memory stays (stale pointers must not land in
    // reused memory).
    let mut link = drv.addr() + l::DRV_DEVICE_OBJECT;
    for _ in 0..4096 {
        let here = obj(link, 8);
        let next = here.get::<u64>(0) as usize;
        if next == 0 {
            break;
        }
        if next == device {
            here.set::<u64>(0, dev.get::<u64>(l::DEV_NEXT));
            break;
        }
        link = next + l::DEV_NEXT;
    }
    LOWER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .remove(&device);
}

/// The top of the stack `device` is in.
fn top_of(device: usize) -> usize {
    let mut top = device;
    for _ in 0..64 {
        let up = obj(top, l::DEVICE_OBJECT).get::<u64>(l::DEV_ATTACHED) as usize;
        if up == 0 {
            break;
        }
        top = up;
    }
    top
}

extern "win64" fn io_attach_device_to_device_stack(source: usize, target: usize) -> usize {
    if source == 0 || target == 0 {
        return 0;
    }
    let top = top_of(target);
    let t = obj(top, l::DEVICE_OBJECT);
    t.set::<u64>(l::DEV_ATTACHED, source as u64);
    let s = obj(source, l::DEVICE_OBJECT);
    s.set::<u8>(
        l::DEV_STACK_SIZE,
        t.get::<u8>(l::DEV_STACK_SIZE).saturating_add(1),
    );
    LOWER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(source, top);
    top
}

extern "win64" fn io_attach_device_to_device_stack_safe(
    source: usize,
    target: usize,
    out: usize,
) -> Status {
    let top = io_attach_device_to_device_stack(source, target);
    obj(out, 8).set::<u64>(0, top as u64);
    if top == 0 {
        0xC000_000E_u32 as i32 // STATUS_NO_SUCH_DEVICE
    } else {
        STATUS_SUCCESS
    }
}

extern "win64" fn io_detach_device(lower: usize) {
    obj(lower, l::DEVICE_OBJECT).set::<u64>(l::DEV_ATTACHED, 0);
}

extern "win64" fn io_get_attached_device(device: usize) -> usize {
    top_of(device)
}

extern "win64" fn ob_reference(object: usize) -> usize {
    object
}

static FAKE_PROCESS: [u64; 256] = [0; 256];

extern "win64" fn io_get_current_process() -> usize {
    FAKE_PROCESS.as_ptr() as usize
}

extern "win64" fn io_register_device_interface(
    _pdo: usize,
    _guid: usize,
    _reference: usize,
    link: usize,
) -> Status {
    let name: Vec<u16> = "\\??\\IOSV_RUN#DEVICE#INTERFACE\0".encode_utf16().collect();
    let leaked = Box::leak(name.into_boxed_slice());
    let s = obj(link, l::UNICODE_STRING);
    let bytes = (leaked.len() - 1) * 2;
    s.set::<u16>(0, bytes as u16);
    s.set::<u16>(2, (bytes + 2) as u16);
    s.set::<u64>(8, leaked.as_ptr() as u64);
    STATUS_SUCCESS
}

extern "win64" fn po_set_power_state(_device: usize, _kind: u32, state: u32) -> u32 {
    state
}

/// A new IRP with `stack_size` stack locations, none current yet.
#[must_use]
pub fn new_irp(stack_size: u8) -> usize {
    let len = l::IRP + l::STACK * usize::from(stack_size);
    let irp = super::blocks::allocate(super::blocks::Kind::Irp, len);
    if irp != 0 {
        io_initialize_irp(irp, len as u16, stack_size);
    }
    irp
}

extern "win64" fn io_allocate_irp(stack_size: u8, _charge_quota: u8) -> usize {
    new_irp(stack_size)
}

extern "win64" fn io_initialize_irp(irp: usize, size: u16, stack_size: u8) {
    let i = obj(irp, usize::from(size));
    i.zero();
    i.set::<u16>(0, 6);
    i.set::<u16>(2, size);
    i.set::<u8>(l::IRP_STACK_COUNT, stack_size);
    i.set::<u8>(l::IRP_CURRENT_LOCATION, stack_size.saturating_add(1));
    // ThreadListEntry points at itself.
    i.set::<u64>(0x20, (irp + 0x20) as u64);
    i.set::<u64>(0x28, (irp + 0x20) as u64);
    i.set::<u64>(
        l::IRP_CURRENT_STACK,
        (irp + l::IRP + l::STACK * usize::from(stack_size)) as u64,
    );
}

extern "win64" fn io_free_irp(irp: usize) {
    super::blocks::free(super::blocks::Kind::Irp, irp, "IoFreeIrp");
}

/// The IRP's full length in bytes (header and stack locations).
fn irp_obj(irp: usize) -> Obj {
    let head = obj(irp, l::IRP);
    let count = usize::from(head.get::<u8>(l::IRP_STACK_COUNT));
    obj(irp, l::IRP + l::STACK * count)
}

/// The name of a dispatch routine, for attribution.
fn major_name(major: u8) -> &'static str {
    match major {
        0 => "IRP_MJ_CREATE dispatch",
        2 => "IRP_MJ_CLOSE dispatch",
        3 => "IRP_MJ_READ dispatch",
        4 => "IRP_MJ_WRITE dispatch",
        14 => "IRP_MJ_DEVICE_CONTROL dispatch",
        15 => "IRP_MJ_INTERNAL_DEVICE_CONTROL dispatch",
        18 => "IRP_MJ_CLEANUP dispatch",
        22 => "IRP_MJ_POWER dispatch",
        23 => "IRP_MJ_SYSTEM_CONTROL dispatch",
        27 => "IRP_MJ_PNP dispatch",
        _ => "dispatch routine",
    }
}

/// `IofCallDriver`: moves the IRP to the next stack location and calls the device's
/// driver's dispatch routine for its major function.
pub extern "win64" fn iof_call_driver(device: usize, irp: usize) -> Status {
    let i = irp_obj(irp);
    let location = i.get::<u8>(l::IRP_CURRENT_LOCATION);
    if location <= 1 {
        trap::bugcheck(
            "NO_MORE_IRP_STACK_LOCATIONS (0x35): IofCallDriver with no stack location left",
        );
    }
    i.set::<u8>(l::IRP_CURRENT_LOCATION, location - 1);
    let sl = (i.get::<u64>(l::IRP_CURRENT_STACK) as usize).wrapping_sub(l::STACK);
    i.set::<u64>(l::IRP_CURRENT_STACK, sl as u64);
    let s = obj(sl, l::STACK);
    s.set::<u64>(l::SL_DEVICE, device as u64);
    let major = s.get::<u8>(0);
    let driver = obj(device, l::DEVICE_OBJECT).get::<u64>(l::DEV_DRIVER) as usize;
    let routine = obj(driver, l::DRIVER_OBJECT)
        .get::<u64>(l::DRV_MAJOR + 8 * usize::from(major.min(27))) as usize;
    if routine == 0 {
        return invalid_request(device, irp);
    }
    let dispatch = as_dispatch(routine);
    if trap::image_of(routine).is_some() {
        entering(major_name(major), routine, || dispatch(device, irp))
    } else {
        dispatch(device, irp)
    }
}

/// The completion routine of [`io_forward_irp_synchronously`]: signals the event in
/// `context` and stops completion (the forwarding driver completes the IRP itself).
extern "win64" fn forwarded_complete(_device: usize, _irp: usize, event: usize) -> Status {
    ke_set_event(event, 0, 0);
    STATUS_MORE_PROCESSING_REQUIRED
}

/// `IoForwardIrpSynchronously(DeviceObject, Irp)`: copies the current stack location to
/// the next (completion routine cleared), sends the IRP to `device` and waits until the
/// lower driver completed it; the IRP is then back at the caller's stack location, not
/// completed. FALSE (nothing sent) when the IRP has no stack location left.
extern "win64" fn io_forward_irp_synchronously(device: usize, irp: usize) -> u8 {
    let i = irp_obj(irp);
    if i.get::<u8>(l::IRP_CURRENT_LOCATION) <= 1 {
        return 0;
    }
    let current = obj(i.get::<u64>(l::IRP_CURRENT_STACK) as usize, l::STACK);
    let next = obj(current.addr().wrapping_sub(l::STACK), l::STACK);
    for off in 0..l::SL_COMPLETION {
        next.set::<u8>(off, current.get::<u8>(off));
    }
    let event = alloc_zeroed(l::KEVENT);
    ke_initialize_event(event, 0, 0);
    next.set::<u8>(
        l::SL_CONTROL,
        SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL,
    );
    next.set::<u64>(l::SL_COMPLETION, forwarded_complete as *const () as u64);
    next.set::<u64>(l::SL_CONTEXT, event as u64);
    if iof_call_driver(device, irp) == STATUS_PENDING {
        ke_wait_for_single_object(event, 0, 0, 0, 0);
    }
    1
}

type Dispatch = extern "win64" fn(usize, usize) -> Status;
type Completion = extern "win64" fn(usize, usize, usize) -> Status;

fn as_dispatch(address: usize) -> Dispatch {
    // SAFETY: `address` is a dispatch routine the driver stored in its DRIVER_OBJECT (or
    // one of the host's); the DDI gives it this signature.
    unsafe { std::mem::transmute::<usize, Dispatch>(address) }
}

/// The dispatch routine of major functions a driver does not handle.
pub extern "win64" fn invalid_request(_device: usize, irp: usize) -> Status {
    let i = irp_obj(irp);
    i.set::<i32>(l::IRP_STATUS, STATUS_INVALID_DEVICE_REQUEST);
    iof_complete_request(irp, 0);
    STATUS_INVALID_DEVICE_REQUEST
}

/// `IofCompleteRequest`: runs the completion routines from the current stack location
/// up, honouring `SL_INVOKE_ON_*` and `STATUS_MORE_PROCESSING_REQUIRED`, propagates
/// pending, then signals the IRP's `UserEvent`.
pub extern "win64" fn iof_complete_request(irp: usize, _boost: i8) {
    let i = irp_obj(irp);
    let count = i.get::<u8>(l::IRP_STACK_COUNT);
    loop {
        let location = i.get::<u8>(l::IRP_CURRENT_LOCATION);
        if location > count {
            break;
        }
        let sl = obj(i.get::<u64>(l::IRP_CURRENT_STACK) as usize, l::STACK);
        let control = sl.get::<u8>(l::SL_CONTROL);
        let routine = sl.get::<u64>(l::SL_COMPLETION) as usize;
        let context = sl.get::<u64>(l::SL_CONTEXT) as usize;
        i.set::<u8>(l::IRP_PENDING_RETURNED, control & SL_PENDING_RETURNED);
        // Clear the location, as the I/O manager does, and move up.
        sl.set::<u8>(l::SL_CONTROL, 0);
        sl.set::<u64>(l::SL_COMPLETION, 0);
        sl.set::<u64>(l::SL_CONTEXT, 0);
        i.set::<u8>(l::IRP_CURRENT_LOCATION, location.saturating_add(1));
        let up = sl.addr() + l::STACK;
        i.set::<u64>(l::IRP_CURRENT_STACK, up as u64);
        let device = if location < count {
            obj(up, l::STACK).get::<u64>(l::SL_DEVICE) as usize
        } else {
            0
        };
        let status = i.get::<i32>(l::IRP_STATUS);
        let cancel = i.get::<u8>(l::IRP_CANCEL) != 0;
        let invoke = routine != 0
            && ((status >= 0 && control & SL_INVOKE_ON_SUCCESS != 0)
                || (status < 0 && control & SL_INVOKE_ON_ERROR != 0)
                || (cancel && control & SL_INVOKE_ON_CANCEL != 0));
        if invoke {
            // SAFETY: the driver set this completion routine with IoSetCompletionRoutine;
            // the DDI gives it this signature.
            let f = unsafe { std::mem::transmute::<usize, Completion>(routine) };
            let r = if trap::image_of(routine).is_some() {
                entering("completion routine", routine, || f(device, irp, context))
            } else {
                f(device, irp, context)
            };
            if r == STATUS_MORE_PROCESSING_REQUIRED {
                return;
            }
        } else if control & SL_PENDING_RETURNED != 0 && location < count {
            let next = obj(up, l::STACK);
            next.set::<u8>(
                l::SL_CONTROL,
                next.get::<u8>(l::SL_CONTROL) | SL_PENDING_RETURNED,
            );
        }
    }
    let event = i.get::<u64>(l::IRP_USER_EVENT) as usize;
    if event != 0 {
        ke_set_event(event, 0, 0);
    }
}

// ---- IRQL, events, spin locks, time ---------------------------------------------------

fn irql() -> u8 {
    engine().map_or(0, |e| e.irql())
}

fn set_irql(v: u8) -> u8 {
    engine().map_or(0, |e| e.set_irql(v))
}

extern "win64" fn ke_get_current_irql() -> u8 {
    irql()
}

extern "win64" fn kf_raise_irql(new: u8) -> u8 {
    set_irql(new)
}

extern "win64" fn kf_lower_irql(new: u8) {
    set_irql(new);
}

extern "win64" fn ke_raise_irql_to_dpc_level() -> u8 {
    set_irql(2)
}

fn signal_state(event: usize) -> &'static AtomicI32 {
    // DISPATCHER_HEADER.SignalState.
    atomic_at(event, 4, "KEVENT")
}

extern "win64" fn ke_initialize_event(event: usize, kind: u32, state: u8) {
    let e = obj(event, l::KEVENT);
    e.set::<u8>(0, kind as u8);
    e.set::<u8>(2, 6);
    e.set::<i32>(4, i32::from(state != 0));
    e.set::<u64>(8, (event + 8) as u64);
    e.set::<u64>(16, (event + 8) as u64);
}

extern "win64" fn ke_set_event(event: usize, _increment: i32, _wait: u8) -> i32 {
    signal_state(event).swap(1, Ordering::SeqCst)
}

extern "win64" fn ke_reset_event(event: usize) -> i32 {
    signal_state(event).swap(0, Ordering::SeqCst)
}

extern "win64" fn ke_clear_event(event: usize) {
    signal_state(event).store(0, Ordering::SeqCst);
}

extern "win64" fn ke_read_state_event(event: usize) -> i32 {
    signal_state(event).load(Ordering::SeqCst)
}

/// Waits on an event (only events are waitable here): polls its state every 100 µs
/// until it is signalled or the timeout (relative, negative 100 ns units; absolute
/// timeouts count from now) passes. A synchronization event is reset when satisfied.
extern "win64" fn ke_wait_for_single_object(
    object: usize,
    _reason: u32,
    _mode: u8,
    _alertable: u8,
    timeout: usize,
) -> Status {
    let limit = (timeout != 0).then(|| {
        let t = obj(timeout, 8).get::<i64>(0);
        std::time::Duration::from_nanos(t.unsigned_abs().saturating_mul(100))
    });
    let start = std::time::Instant::now();
    let kind = obj(object, l::KEVENT).get::<u8>(0);
    let state = signal_state(object);
    loop {
        let satisfied = if kind == 1 {
            state
                .compare_exchange(1, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        } else {
            state.load(Ordering::SeqCst) != 0
        };
        if satisfied {
            return STATUS_SUCCESS;
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            return STATUS_TIMEOUT;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

fn spin_lock(lock: usize) -> &'static AtomicU64 {
    atomic_at(lock, 0, "KSPIN_LOCK")
}

fn acquire(lock: usize) {
    let l = spin_lock(lock);
    while l
        .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

fn release(lock: usize) {
    spin_lock(lock).store(0, Ordering::Release);
}

extern "win64" fn ke_initialize_spin_lock(lock: usize) {
    spin_lock(lock).store(0, Ordering::SeqCst);
}

extern "win64" fn ke_acquire_spin_lock_raise_to_dpc(lock: usize) -> u8 {
    let old = set_irql(2.max(irql()));
    acquire(lock);
    old
}

extern "win64" fn ke_release_spin_lock(lock: usize, old: u8) {
    release(lock);
    set_irql(old);
}

extern "win64" fn ke_acquire_spin_lock_at_dpc_level(lock: usize) {
    acquire(lock);
}

extern "win64" fn ke_release_spin_lock_from_dpc_level(lock: usize) {
    release(lock);
}

/// `KLOCK_QUEUE_HANDLE`: `LockQueue { Next, Lock }` then `OldIrql` at +0x10.
extern "win64" fn ke_acquire_in_stack_queued_spin_lock(lock: usize, handle: usize) {
    let h = obj(handle, 0x18);
    h.set::<u64>(0, 0);
    h.set::<u64>(8, lock as u64);
    h.set::<u8>(0x10, set_irql(2.max(irql())));
    acquire(lock);
}

extern "win64" fn ke_release_in_stack_queued_spin_lock(handle: usize) {
    let h = obj(handle, 0x18);
    release(h.get::<u64>(8) as usize);
    set_irql(h.get::<u8>(0x10));
}

extern "win64" fn ke_stall_execution_processor(microseconds: u32) {
    std::thread::sleep(std::time::Duration::from_micros(u64::from(
        microseconds.min(1_000_000),
    )));
}

extern "win64" fn ke_delay_execution_thread(_mode: u8, _alertable: u8, interval: usize) -> Status {
    let t = obj(interval, 8).get::<i64>(0);
    let d = std::time::Duration::from_nanos(t.unsigned_abs().saturating_mul(100));
    std::thread::sleep(d.min(std::time::Duration::from_secs(10)));
    STATUS_SUCCESS
}

fn monotonic_100ns() -> i64 {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let o = ORIGIN.get_or_init(std::time::Instant::now);
    i64::try_from(o.elapsed().as_nanos() / 100).unwrap_or(i64::MAX)
}

extern "win64" fn ke_query_performance_counter(frequency: usize) -> i64 {
    if frequency != 0 {
        obj(frequency, 8).set::<i64>(0, 10_000_000);
    }
    monotonic_100ns()
}

/// `KeQueryInterruptTimePrecise(QpcTimeStamp)`: the interrupt time (100 ns units since
/// start-up, the monotonic clock here), and the performance counter at that moment
/// (the same clock: its frequency is 10 MHz, [`ke_query_performance_counter`]).
extern "win64" fn ke_query_interrupt_time_precise(qpc: usize) -> u64 {
    let now = monotonic_100ns();
    if qpc != 0 {
        obj(qpc, 8).set::<i64>(0, now);
    }
    now as u64
}

/// `KdRefreshDebuggerNotPresent()`: TRUE, no kernel debugger is attached.
extern "win64" fn kd_refresh_debugger_not_present() -> u8 {
    1
}

/// `MmIsAddressValid(VirtualAddress)`: whether a read of the byte would not fault — in a
/// loaded image or mapped memory of this process (device memory behind kernel addresses
/// is not: it is only reachable by emulated accesses).
extern "win64" fn mm_is_address_valid(address: usize) -> u8 {
    if trap::image_of(address).is_some() {
        return 1;
    }
    let page = address & !0xFFF;
    // SAFETY: msync only inspects the mapping of the page (ENOMEM if unmapped); with
    // MS_ASYNC on a private mapping it writes nothing.
    let r = unsafe { libc::msync(page as *mut libc::c_void, 0x1000, libc::MS_ASYNC) };
    u8::from(page != 0 && r == 0)
}

extern "win64" fn ke_query_system_time(time: usize) {
    // 1601-based 100 ns units: 1970 is 116444736000000000.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() / 100);
    let v = i64::try_from(now)
        .unwrap_or(0)
        .saturating_add(116_444_736_000_000_000);
    obj(time, 8).set::<i64>(0, v);
}

extern "win64" fn ke_bug_check_ex(code: u32, p1: u64, p2: u64, p3: u64, p4: u64) {
    trap::bugcheck(&format!(
        "KeBugCheckEx({code:#x}, {p1:#x}, {p2:#x}, {p3:#x}, {p4:#x})"
    ));
}

extern "win64" fn ke_bug_check(code: u32) {
    trap::bugcheck(&format!("KeBugCheck({code:#x})"));
}

static FAKE_THREAD: [u64; 512] = [0; 512];

extern "win64" fn ke_get_current_thread() -> usize {
    FAKE_THREAD.as_ptr() as usize
}

extern "win64" fn ps_get_current_thread_id() -> usize {
    iosv_host::thread::thread_id() as usize
}

extern "win64" fn ps_get_current_process_id() -> usize {
    std::process::id() as usize
}

// ---- pool, fast mutexes ---------------------------------------------------------------

extern "win64" fn ex_allocate_pool_with_tag(_pool: u32, size: usize, _tag: u32) -> usize {
    super::blocks::allocate(super::blocks::Kind::Pool, size)
}

extern "win64" fn ex_allocate_pool(_pool: u32, size: usize) -> usize {
    super::blocks::allocate(super::blocks::Kind::Pool, size)
}

extern "win64" fn ex_allocate_pool2(_flags: u64, size: usize, _tag: u32) -> usize {
    super::blocks::allocate(super::blocks::Kind::Pool, size)
}

extern "win64" fn ex_free_pool_with_tag(p: usize, _tag: u32) {
    free_pool(p, "ExFreePoolWithTag");
}

extern "win64" fn ex_free_pool(p: usize) {
    free_pool(p, "ExFreePool");
}

/// Frees the pool block `p` for `routine`: a bug-check report instead if it is not a live
/// pool block, or an MDL in use still describes it ([`super::mdl::require_undescribed`]).
fn free_pool(p: usize, routine: &str) {
    use super::blocks::{self, Kind};
    let len = blocks::require_live(Kind::Pool, p, routine);
    super::mdl::require_undescribed(p, len, routine);
    blocks::free(Kind::Pool, p, routine);
}

/// `FAST_MUTEX`: `Count` (1 = free) at +0, `OldIrql` at +0x30.
extern "win64" fn ex_acquire_fast_mutex(mutex: usize) {
    let m = obj(mutex, 0x38);
    let old = set_irql(1.max(irql()));
    let count: &AtomicI32 = atomic_at(mutex, 0, "FAST_MUTEX");
    while count
        .compare_exchange_weak(1, 0, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
    m.set::<u32>(0x30, u32::from(old));
}

extern "win64" fn ex_release_fast_mutex(mutex: usize) {
    let m = obj(mutex, 0x38);
    let old = m.get::<u32>(0x30) as u8;
    let count: &AtomicI32 = atomic_at(mutex, 0, "FAST_MUTEX");
    count.store(1, Ordering::Release);
    set_irql(old);
}

// ---- Rtl and the C library ------------------------------------------------------------

fn wide_len(p: usize) -> usize {
    let mut n = 0usize;
    while n < 32767 && obj(p + 2 * n, 2).get::<u16>(0) != 0 {
        n += 1;
    }
    n
}

fn narrow_len(p: usize) -> usize {
    let mut n = 0usize;
    while n < 65535 && obj(p + n, 1).get::<u8>(0) != 0 {
        n += 1;
    }
    n
}

extern "win64" fn rtl_init_unicode_string(dest: usize, source: usize) {
    let d = obj(dest, l::UNICODE_STRING);
    let bytes = if source == 0 { 0 } else { wide_len(source) * 2 };
    d.set::<u16>(0, bytes as u16);
    d.set::<u16>(2, if source == 0 { 0 } else { (bytes + 2) as u16 });
    d.set::<u64>(8, source as u64);
}

extern "win64" fn rtl_init_ansi_string(dest: usize, source: usize) {
    let d = obj(dest, l::UNICODE_STRING);
    let bytes = if source == 0 { 0 } else { narrow_len(source) };
    d.set::<u16>(0, bytes as u16);
    d.set::<u16>(2, if source == 0 { 0 } else { (bytes + 1) as u16 });
    d.set::<u64>(8, source as u64);
}

extern "win64" fn rtl_copy_unicode_string(dest: usize, source: usize) {
    let d = obj(dest, l::UNICODE_STRING);
    if source == 0 {
        d.set::<u16>(0, 0);
        return;
    }
    let units = unicode_units(source);
    let max = usize::from(d.get::<u16>(2)) / 2;
    let n = units.len().min(max);
    let buf = obj(d.get::<u64>(8) as usize, max * 2);
    for (k, u) in units.iter().take(n).enumerate() {
        buf.set::<u16>(k * 2, *u);
    }
    if n < max {
        buf.set::<u16>(n * 2, 0);
    }
    d.set::<u16>(0, (n * 2) as u16);
}

extern "win64" fn rtl_equal_unicode_string(a: usize, b: usize, case_insensitive: u8) -> u8 {
    let (x, y) = (unicode_string(a), unicode_string(b));
    u8::from(if case_insensitive != 0 {
        x.to_uppercase() == y.to_uppercase()
    } else {
        x == y
    })
}

extern "win64" fn rtl_compare_memory(a: usize, b: usize, len: usize) -> usize {
    let (x, y) = (obj(a, len), obj(b, len));
    (0..len)
        .position(|i| x.get::<u8>(i) != y.get::<u8>(i))
        .unwrap_or(len)
}

extern "win64" fn rtl_get_version(info: usize) -> Status {
    let i = obj(info, 0x14);
    i.set::<u32>(4, 10);
    i.set::<u32>(8, 0);
    i.set::<u32>(0xC, 19041);
    i.set::<u32>(0x10, 2);
    STATUS_SUCCESS
}

extern "win64" fn c_memmove(dest: usize, src: usize, len: usize) -> usize {
    if len != 0 {
        // SAFETY: the C contract of memcpy/memmove: both ranges are valid for `len`
        // bytes; copy handles overlap.
        unsafe { std::ptr::copy(src as *const u8, dest as *mut u8, len) };
    }
    dest
}

extern "win64" fn c_memset(dest: usize, value: i32, len: usize) -> usize {
    if len != 0 {
        // SAFETY: the C contract of memset: the range is valid for `len` bytes.
        unsafe { std::ptr::write_bytes(dest as *mut u8, value as u8, len) };
    }
    dest
}

extern "win64" fn c_memcmp(a: usize, b: usize, len: usize) -> i32 {
    let (x, y) = (obj(a, len), obj(b, len));
    for i in 0..len {
        let (p, q) = (x.get::<u8>(i), y.get::<u8>(i));
        if p != q {
            return i32::from(p) - i32::from(q);
        }
    }
    0
}

extern "win64" fn c_strlen(s: usize) -> usize {
    narrow_len(s)
}

extern "win64" fn c_wcslen(s: usize) -> usize {
    wide_len(s)
}

// ---- DbgPrint -------------------------------------------------------------------------

/// `DbgPrint(Format, ...)` with its arguments spilled to `args` (the trampolines store
/// the register arguments in their home slots, so all arguments are contiguous).
extern "win64" fn dbg_print_args(args: usize) -> Status {
    let a = obj(args, 8 * 32);
    let format = a.get::<u64>(0) as usize;
    let text = format_printf(format, |k| a.get::<u64>(8 * (k + 1)));
    let text = text.trim_end_matches('\n');
    eprintln!("DbgPrint: {text}");
    STATUS_SUCCESS
}

/// Formats a C printf-style string as DbgPrint does (`%s %S %ws %Z %wZ %c %d %i %u %x %X
/// %p %lu %lx %llx %I64x %%`, flags, width).
#[must_use]
pub fn format_printf(format: usize, arg: impl Fn(usize) -> u64) -> String {
    let fmt = obj(format, narrow_len(format) + 1);
    let n = narrow_len(format);
    let mut out = String::new();
    let mut next = 0usize;
    let mut i = 0usize;
    let byte = |k: usize| fmt.get::<u8>(k);
    while i < n {
        let c = byte(i);
        i += 1;
        if c != b'%' {
            out.push(char::from(c));
            continue;
        }
        let mut zero = false;
        let mut left = false;
        while i < n && matches!(byte(i), b'0' | b'-' | b'+' | b' ' | b'#') {
            zero |= byte(i) == b'0';
            left |= byte(i) == b'-';
            i += 1;
        }
        let mut width = 0usize;
        if i < n && byte(i) == b'*' {
            // The width is the next argument (an int; negative: left-justified).
            let w = arg(next) as u32 as i32;
            next += 1;
            left |= w < 0;
            width = (w.unsigned_abs() as usize).min(4096);
            i += 1;
        }
        while i < n && byte(i).is_ascii_digit() {
            // Capped: the format string is the driver's (no overflow, no huge padding).
            width = (width * 10 + usize::from(byte(i) - b'0')).min(4096);
            i += 1;
        }
        // The precision: at most this many characters of a string.
        let mut precision: Option<usize> = None;
        if i < n && byte(i) == b'.' {
            i += 1;
            if i < n && byte(i) == b'*' {
                // The next argument (an int; negative: as if omitted).
                let p = arg(next) as u32 as i32;
                next += 1;
                precision = usize::try_from(p).ok();
                i += 1;
            } else {
                let mut p = 0usize;
                while i < n && byte(i).is_ascii_digit() {
                    p = (p * 10 + usize::from(byte(i) - b'0')).min(1 << 20);
                    i += 1;
                }
                precision = Some(p);
            }
        }
        let limit = |len: usize| precision.map_or(len, |p| len.min(p));
        let mut wide = false;
        let mut long = false;
        loop {
            match byte(i) {
                b'l' | b'h' | b'z' => {}
                b'w' => wide = true,
                b'I' if byte(i + 1) == b'6' && byte(i + 2) == b'4' => {
                    long = true;
                    i += 2;
                }
                _ => break,
            }
            if byte(i) == b'l' && byte(i + 1) == b'l' {
                long = true;
            }
            i += 1;
        }
        let conv = byte(i);
        i += 1;
        let mut take = || {
            let v = arg(next);
            next += 1;
            v
        };
        let s = match conv {
            b'%' => "%".to_string(),
            b'c' => char::from(take() as u8).to_string(),
            b'd' | b'i' => {
                let v = take();
                if long {
                    (v as i64).to_string()
                } else {
                    (v as u32 as i32).to_string()
                }
            }
            b'u' => {
                let v = take();
                if long {
                    v.to_string()
                } else {
                    (v as u32).to_string()
                }
            }
            b'x' | b'X' => {
                let v = take();
                let v = if long { v } else { u64::from(v as u32) };
                if conv == b'x' {
                    format!("{v:x}")
                } else {
                    format!("{v:X}")
                }
            }
            b'p' => format!("{:016X}", take()),
            b's' if !wide => {
                let p = take() as usize;
                if p == 0 {
                    "(null)".into()
                } else {
                    String::from_utf8_lossy(
                        &(0..limit(narrow_len(p)))
                            .map(|k| obj(p + k, 1).get::<u8>(0))
                            .collect::<Vec<u8>>(),
                    )
                    .into_owned()
                }
            }
            b'S' | b's' => {
                let p = take() as usize;
                if p == 0 {
                    "(null)".into()
                } else {
                    String::from_utf16_lossy(
                        &(0..limit(wide_len(p)))
                            .map(|k| obj(p + 2 * k, 2).get::<u16>(0))
                            .collect::<Vec<u16>>(),
                    )
                }
            }
            b'Z' if wide => {
                let p = take() as usize;
                if p == 0 {
                    "(null)".into()
                } else {
                    unicode_string(p)
                }
            }
            b'Z' => {
                let p = take() as usize;
                let s = obj(p, 16);
                let (len, buf) = (usize::from(s.get::<u16>(0)), s.get::<u64>(8) as usize);
                String::from_utf8_lossy(
                    &(0..len)
                        .map(|k| obj(buf + k, 1).get::<u8>(0))
                        .collect::<Vec<u8>>(),
                )
                .into_owned()
            }
            other => format!("%{}", char::from(other)),
        };
        let pad = width.saturating_sub(s.chars().count());
        if left {
            out.push_str(&s);
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            let fill = if zero { '0' } else { ' ' };
            out.extend(std::iter::repeat_n(fill, pad));
            out.push_str(&s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_routine_resolves_and_only_from_kernel_dlls() {
        for name in IMPLEMENTED {
            assert!(lookup(name).is_some(), "{name}");
            assert!(resolve("NTOSKRNL.EXE", name).is_some());
        }
        assert_eq!(resolve("user32.dll", "MmMapIoSpace"), None);
        assert_eq!(lookup("IoGetDmaAdapter"), None);
    }

    #[test]
    fn the_docs_name_every_implemented_routine() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/running-drivers.md"
        ))
        .unwrap();
        for name in IMPLEMENTED.iter().chain(DATA_EXPORTS) {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/running-drivers.md lacks {name}"
            );
        }
    }

    #[test]
    fn printf_formats_like_dbgprint() {
        let f = b"a %s %d %5u|%-3x|%08lX %wZ %%\0";
        let s = b"str\0";
        let w: Vec<u16> = "wide".encode_utf16().collect();
        let us: [u64; 2] = [(8u64) | (8 << 16), w.as_ptr() as u64];
        let args = [
            s.as_ptr() as u64,
            (-5i32) as u32 as u64,
            42,
            0xA,
            0xBEEF,
            us.as_ptr() as u64,
        ];
        let out = format_printf(f.as_ptr() as usize, |k| args.get(k).copied().unwrap_or(0));
        assert_eq!(out, "a str -5    42|a  |0000BEEF wide %");
        // A hostile width neither overflows nor pads without bound.
        let f = b"%99999999999999999999999d\0";
        let out = format_printf(f.as_ptr() as usize, |_| 7);
        assert_eq!(out.len(), 4096, "{}", out.len());
        assert!(out.ends_with(" 7"));
        // `*` width and precision take int arguments (the glue logs names with `%.*s`).
        let f = b"[%.*s|%*d|%-*d|%.2s]\0";
        let name = b"clean.sys\0";
        let args = [
            5,
            name.as_ptr() as u64,
            4,
            7,
            (-3i32) as u32 as u64,
            8,
            s.as_ptr() as u64,
        ];
        let out = format_printf(f.as_ptr() as usize, |k| args.get(k).copied().unwrap_or(0));
        assert_eq!(out, "[clean|   7|8  |st]");
    }

    #[test]
    fn completion_runs_routines_and_stops_at_more_processing() {
        extern "win64" fn more(_d: usize, irp: usize, ctx: usize) -> Status {
            obj(ctx, 4).set::<u32>(0, obj(irp, l::IRP).get::<u32>(l::IRP_STATUS));
            STATUS_MORE_PROCESSING_REQUIRED
        }
        let irp = new_irp(2);
        let i = irp_obj(irp);
        // The caller sets up location 2 (index 1) with a completion routine, as
        // IoSetCompletionRoutine on the next location does; the callee is at index 1.
        let mut seen = [0u32; 1];
        let top = irp + l::IRP + l::STACK;
        let s = obj(top, l::STACK);
        s.set::<u64>(l::SL_COMPLETION, more as *const () as usize as u64);
        s.set::<u64>(l::SL_CONTEXT, seen.as_mut_ptr() as u64);
        s.set::<u8>(l::SL_CONTROL, SL_INVOKE_ON_SUCCESS);
        i.set::<u8>(l::IRP_CURRENT_LOCATION, 2);
        i.set::<u64>(l::IRP_CURRENT_STACK, top as u64);
        i.set::<i32>(l::IRP_STATUS, 7);
        let mut ev = [0u64; 3];
        ke_initialize_event(ev.as_mut_ptr() as usize, 0, 0);
        i.set::<u64>(l::IRP_USER_EVENT, ev.as_mut_ptr() as u64);
        iof_complete_request(irp, 0);
        assert_eq!(seen[0], 7);
        // Stopped by MORE_PROCESSING_REQUIRED: the event is not signalled.
        assert_eq!(ke_read_state_event(ev.as_ptr() as usize), 0);
        io_free_irp(irp);
    }
}
