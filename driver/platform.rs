//! The one trait through which the engine touches the operating system.
//!
//! Two implementations exist: `platform::windows` (wdk-sys glue, feature `kernel`, Windows
//! only) and the `iosv-host` package's `HostPlatform` (the user-mode kernel of design.md
//! §7, in `host/`); `platform::fake` (feature `test-support`) is the one for tests and benches.
//! Everything the engine needs from a kernel — the caller's IRQL and identity, time, stack
//! capture, the real Mm routines, break and bug check, patching one import slot — is a
//! method here, so the engine itself is portable and tested on Linux.

use crate::drivers::DriverId;
use crate::intercept::SlotAccess;

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
#[cfg(all(feature = "kernel", windows))]
pub mod windows;

/// An interrupt request level, as the kernel numbers them on x64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Irql(pub u8);

impl Irql {
    /// PASSIVE_LEVEL (0).
    pub const PASSIVE: Irql = Irql(0);
    /// APC_LEVEL (1): the unmap ceiling Driver Verifier enforces (0xC4/0x7B).
    pub const APC: Irql = Irql(1);
    /// DISPATCH_LEVEL (2): the ceiling the DDI reference documents for the Mm I/O-space calls.
    pub const DISPATCH: Irql = Irql(2);
    /// CLOCK_LEVEL on x64 (13).
    pub const CLOCK: Irql = Irql(13);
    /// HIGH_LEVEL on x64 (15).
    pub const HIGH: Irql = Irql(15);

    /// The WDK name of this level (`"DISPATCH_LEVEL"`), or `None` for device IRQLs 3..=12.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("PASSIVE_LEVEL"),
            1 => Some("APC_LEVEL"),
            2 => Some("DISPATCH_LEVEL"),
            13 => Some("CLOCK_LEVEL"),
            14 => Some("IPI_LEVEL"),
            15 => Some("HIGH_LEVEL"),
            _ => None,
        }
    }
}

/// Who made an intercepted call: the driver whose import slot the call came through, when
/// the hook knows it, and the return address the hook saw.
///
/// The engine blames the importer while it is attached or loaded, else the driver whose
/// image contains the return address. The importer is the better witness: a driver that
/// leaves a routine by a tail call (`jmp [IAT]`, what an optimizing compiler makes of a
/// last `MmUnmapIoSpace(...)` in a callback) hands the hook its own caller's return
/// address, which lies in another module (the I/O manager, KMDF) or another driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Address the hooked routine returns to (0 if unknown): in the calling image, or
    /// after a tail call in whatever called it.
    pub return_address: u64,
    /// The driver whose import slot (or `MmGetSystemRoutineAddress` answer) the call went
    /// through; [`DriverId::NONE`] when the hook cannot tell.
    pub importer: DriverId,
}

impl Caller {
    /// A call known only by its return address.
    #[must_use]
    pub const fn at(return_address: u64) -> Caller {
        Caller {
            return_address,
            importer: DriverId::NONE,
        }
    }

    /// A call through driver `importer`'s import slot, returning to `return_address`.
    #[must_use]
    pub const fn through(importer: DriverId, return_address: u64) -> Caller {
        Caller {
            return_address,
            importer,
        }
    }
}

/// Bug-check code iosv raises when a rule's action is `bugcheck`:
/// MANUALLY_INITIATED_CRASH1, so a dump is never mistaken for a system or Driver Verifier
/// failure. Parameter 1 is [`BUGCHECK_SIGNATURE`] | rule number.
pub const BUGCHECK_CODE: u32 = 0xDEAD_DEAD;
/// High bits of bug-check parameter 1 ("IOSV").
pub const BUGCHECK_SIGNATURE: u64 = 0x1050_5600_0000_0000;

/// The four bug-check parameters iosv passes for a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BugCheck {
    /// [`BUGCHECK_SIGNATURE`] | rule number (1..=13).
    pub p1: u64,
    /// Base or address the call named.
    pub p2: u64,
    /// Size the call passed.
    pub p3: u64,
    /// Journal sequence number of the violation record (read it with `!iosv` or a dump).
    pub p4: u64,
}

/// The operating-system services the engine uses. Every method may be called at any IRQL
/// up to HIGH_LEVEL, on every processor at once, unless its doc says otherwise.
pub trait Platform: SlotAccess + Sync {
    /// True for the user-mode host (design.md §7): HELLO then advertises `CAP_HOST`, so a
    /// client knows it talks to a simulation, not to `iosv.sys`.
    const SIMULATED: bool = false;

    /// IRQL of the calling thread.
    fn current_irql(&self) -> Irql;
    /// Index of the current processor (0-based, across groups).
    fn current_processor(&self) -> u32;
    /// Number of processors that can run hooks (sizes the per-processor counters).
    fn processor_count(&self) -> u32;
    /// Id of the current process.
    fn current_process_id(&self) -> u64;
    /// Id of the current thread.
    fn current_thread_id(&self) -> u64;
    /// Monotonic time in nanoseconds since an arbitrary origin.
    fn now_ns(&self) -> u64;
    /// Fills `frames` with return addresses of the caller's stack, innermost first, without
    /// iosv's own frames; returns how many were written. `skip` is how many of iosv's
    /// frames the engine expects on top; an implementation may instead drop them by
    /// address range (the Windows one does).
    fn capture_stack(&self, skip: u32, frames: &mut [u64]) -> usize;

    /// Raises the IRQL to DISPATCH_LEVEL (if lower) and returns the previous level; used
    /// around the engine's spin locks so they are never preempted while held.
    fn raise_to_dispatch(&self) -> Irql;
    /// Restores an IRQL returned by [`Platform::raise_to_dispatch`].
    fn lower_irql(&self, previous: Irql);

    /// The real `MmMapIoSpace`. Returns the base virtual address, or 0 on failure.
    fn mm_map_io_space(&self, physical: u64, size: usize, cache_type: u32) -> u64;
    /// The real `MmMapIoSpaceEx`. Returns the base virtual address, or 0 on failure.
    fn mm_map_io_space_ex(&self, physical: u64, size: usize, protect: u32) -> u64;
    /// The real `MmUnmapIoSpace`.
    fn mm_unmap_io_space(&self, base: u64, size: usize);

    // ---- the MDL and reserved-mapping family (issue 11; crate::mdl) --------------------
    //
    // The engine calls these only from the hooks of the same routines, which a platform
    // installs only if its hook table names them (`intercept::MdlHooks`). The defaults do
    // nothing and map nothing, for platforms that do not hook the family; a platform that
    // hooks it overrides every one of them.

    /// The real `MmMapLockedPagesSpecifyCache` (`mdl` is the `PMDL`, `access_mode` a
    /// `KPROCESSOR_MODE`). Returns the address, or 0 on failure.
    fn mm_map_locked_pages_specify_cache(
        &self,
        mdl: u64,
        access_mode: u8,
        cache_type: u32,
        requested_address: u64,
        bugcheck_on_failure: u32,
        priority: u32,
    ) -> u64 {
        let _ = (mdl, access_mode, cache_type, requested_address);
        let _ = (bugcheck_on_failure, priority);
        0
    }
    /// The real `MmMapLockedPages`. Returns the address, or 0 on failure.
    fn mm_map_locked_pages(&self, mdl: u64, access_mode: u8) -> u64 {
        let _ = (mdl, access_mode);
        0
    }
    /// The real `MmUnmapLockedPages`.
    fn mm_unmap_locked_pages(&self, base: u64, mdl: u64) {
        let _ = (base, mdl);
    }
    /// The real `IoFreeMdl`.
    fn io_free_mdl(&self, mdl: u64) {
        let _ = mdl;
    }
    /// The real `MmUnlockPages`.
    fn mm_unlock_pages(&self, mdl: u64) {
        let _ = mdl;
    }
    /// The real `MmAllocateMappingAddress`. Returns the range's base, or 0.
    fn mm_allocate_mapping_address(&self, size: usize, pool_tag: u32) -> u64 {
        let _ = (size, pool_tag);
        0
    }
    /// The real `MmAllocateMappingAddressEx`. Returns the range's base, or 0.
    fn mm_allocate_mapping_address_ex(&self, size: usize, pool_tag: u32, flags: u32) -> u64 {
        let _ = (size, pool_tag, flags);
        0
    }
    /// The real `MmMapLockedPagesWithReservedMapping`. Returns the mapped address (the
    /// range's base plus the MDL's byte offset), or 0.
    fn mm_map_locked_pages_with_reserved_mapping(
        &self,
        mapping_address: u64,
        pool_tag: u32,
        mdl: u64,
        cache_type: u32,
    ) -> u64 {
        let _ = (mapping_address, pool_tag, mdl, cache_type);
        0
    }
    /// The real `MmUnmapReservedMapping`.
    fn mm_unmap_reserved_mapping(&self, base: u64, pool_tag: u32, mdl: u64) {
        let _ = (base, pool_tag, mdl);
    }
    /// The real `MmFreeMappingAddress`.
    fn mm_free_mapping_address(&self, base: u64, pool_tag: u32) {
        let _ = (base, pool_tag);
    }
    /// The header fields of the MDL at `mdl` (the caller passed it to a hooked routine,
    /// which reads it too), or `None` if the platform cannot read it.
    fn mdl_info(&self, mdl: u64) -> Option<crate::mdl::MdlInfo> {
        let _ = mdl;
        None
    }

    /// Breaks into an attached kernel debugger (no-op when none is attached).
    fn debug_break(&self);
    /// Stops the machine with [`BUGCHECK_CODE`] and the given parameters. The host records
    /// it and returns; the kernel never returns.
    fn bugcheck(&self, params: BugCheck);

    /// Attaches to an already loaded driver image by name (control IOCTL `ATTACH`).
    /// Returns the number of import slots patched.
    fn attach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError>;
    /// Detaches from a driver image by name (control IOCTL `DETACH`), restoring its slots.
    fn detach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError>;

    /// Control-plane housekeeping before a status reply (PASSIVE_LEVEL on Windows): e.g.
    /// noticing attached drivers that unloaded. Nothing by default.
    fn refresh(&self) {}
}

/// Why a platform operation requested over the control device failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformError {
    /// No loaded image has that name.
    NotFound,
    /// The operation is not available on this platform.
    Unsupported,
    /// A slot no longer held iosv's hook and was left alone.
    SlotChanged,
    /// The image could not be parsed.
    BadImage,
    /// Out of driver slots or another fixed resource.
    NoResources,
    /// iosv refused to patch the image; nothing was written.
    Refused(crate::intercept::SiteRefusal),
}
