//! What the real wdk-sys binds from the WDK headers but Debian's mingw-w64 DDK headers do
//! not declare, declare inline, or shape differently: each item is declared here by hand
//! from its WDK header, and cited in docs/wdk-api-checked.md §10 ("Declared by hand for
//! the Linux check"). Routines that mingw's `libntoskrnl.a` lacks too are listed in
//! `declared.def`, from which the build script makes an import library
//! (`iosv_declared_ntoskrnl.lib`).
//!
//! Keep this list and `declared.def` in step; the image check test
//! (tests/tests/glue_image.rs) reads `declared.def` as the list of accepted extra imports.

/// Types (re-exported at the crate root, as the real crate's `types` module is).
#[allow(non_camel_case_types)]
pub mod types {
    /// `POOL_FLAGS` (wdm.h, WDK 10.0.19041+): `typedef ULONG64 POOL_FLAGS;`.
    pub type POOL_FLAGS = u64;
}

/// Constants (re-exported at the crate root).
#[allow(non_upper_case_globals)]
pub mod constants {
    /// `MdlMappingNoExecute` (wdm.h, Windows 8+): OR'd into `MmMapLockedPagesSpecifyCache`'s
    /// `Priority`.
    pub const MdlMappingNoExecute: u32 = 0x4000_0000;
}

/// Routines (re-exported from `wdk_sys::ntddk`, where the real crate has them).
pub mod functions {
    use crate::types::POOL_FLAGS;
    use crate::types::{
        KIRQL, KPROCESSOR_MODE, MEMORY_CACHING_TYPE, PHYSICAL_ADDRESS, PMDL, PULONG64, PVOID,
        SIZE_T, ULONG, ULONG64,
    };

    // Declared by the WDK as real (NTKERNELAPI) functions on AMD64 and exported by
    // ntoskrnl (also in mingw's libntoskrnl.a), but FORCEINLINE in mingw's wdm.h, so
    // bindgen skips them there.
    unsafe extern "C" {
        /// `KeGetCurrentIrql` (wdm.h, AMD64 without `NT_INLINE_GET_CURRENT_IRQL`).
        pub fn KeGetCurrentIrql() -> KIRQL;
        /// `KeLowerIrql` (wdm.h, AMD64, NTDDI_WIN8+ without `NT_INLINE_IRQL`).
        pub fn KeLowerIrql(NewIrql: KIRQL);
        /// `KfRaiseIrql` (wdm.h, AMD64, NTDDI_WIN8+ without `NT_INLINE_IRQL`).
        pub fn KfRaiseIrql(NewIrql: KIRQL) -> KIRQL;
    }

    // Declared with a different shape by mingw (blocklisted in build.rs); WDK prototype.
    unsafe extern "C" {
        /// `MmMapLockedPagesSpecifyCache` (wdm.h): `Priority` is `ULONG` in the WDK
        /// (`MM_PAGE_PRIORITY` OR'd with `MdlMapping*` flags); mingw types it as the enum.
        pub fn MmMapLockedPagesSpecifyCache(
            MemoryDescriptorList: PMDL,
            AccessMode: KPROCESSOR_MODE,
            CacheType: MEMORY_CACHING_TYPE,
            RequestedAddress: PVOID,
            BugCheckOnFailure: ULONG,
            Priority: ULONG,
        ) -> PVOID;
    }

    #[link(
        name = "iosv_declared_ntoskrnl",
        kind = "static",
        modifiers = "-bundle"
    )]
    unsafe extern "C" {
        /// `ExAllocatePool2` (wdm.h, Windows 10 2004+).
        pub fn ExAllocatePool2(Flags: POOL_FLAGS, NumberOfBytes: SIZE_T, Tag: ULONG) -> PVOID;
        /// `MmMapIoSpaceEx` (wdm.h, Windows 10+).
        pub fn MmMapIoSpaceEx(
            PhysicalAddress: PHYSICAL_ADDRESS,
            NumberOfBytes: SIZE_T,
            Protect: ULONG,
        ) -> PVOID;
        /// `KeQueryInterruptTimePrecise` (wdm.h, Windows 8.1+).
        pub fn KeQueryInterruptTimePrecise(QpcTimeStamp: PULONG64) -> ULONG64;
        /// `MmAllocateMappingAddressEx` (wdm.h, Windows 10 2004+).
        pub fn MmAllocateMappingAddressEx(
            NumberOfBytes: SIZE_T,
            PoolTag: ULONG,
            Flags: ULONG,
        ) -> PVOID;
    }
}
