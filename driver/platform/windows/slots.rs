//! [`SlotAccess`] for [`WindowsPlatform`]: one pointer-sized compare-and-exchange on an
//! import slot of a loaded image, whose page is normally read-only.
//!
//! The slot's page is not made writable in place. Instead an MDL describes the slot,
//! `MmBuildMdlForNonPagedPool` fills in its (resident) page, `MmMapLockedPagesSpecifyCache`
//! maps a second, private system address for it, and `MmProtectMdlSystemAddress` makes
//! that alias read-write. The exchange is one atomic instruction through the alias (the
//! slot is pointer-aligned, so it never straddles a page), which a concurrent call through
//! the slot sees before or after, never torn. The alias is unmapped at once.
//!
//! `MmProbeAndLockPages` is not used: it reports failure by raising an exception, which
//! Rust cannot catch. The caller (images.rs) instead checks, before any write, that each
//! slot lies in a section that is neither discardable nor pageable and that its page is
//! resident (`MmIsAddressValid`): exactly the memory `MmBuildMdlForNonPagedPool` accepts.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering};

use wdk_sys::ntddk::{
    IoAllocateMdl, IoFreeMdl, MmBuildMdlForNonPagedPool, MmMapLockedPagesSpecifyCache,
    MmProtectMdlSystemAddress, MmUnmapLockedPages,
};
use wdk_sys::{MdlMappingNoExecute, DISPATCH_LEVEL, NT_SUCCESS, PAGE_READWRITE, PMDL, PVOID};

use super::{irql, WindowsPlatform};
use crate::intercept::{SlotAccess, SlotWriteError, SLOT_SIZE};

impl SlotAccess for WindowsPlatform {
    unsafe fn read_slot(&self, address: usize) -> usize {
        // SAFETY: per the trait's contract, `address` is a pointer-aligned slot of a loaded
        // image; an atomic load reads it whole even while another processor writes it.
        let slot = unsafe { &*(address as *const AtomicUsize) };
        slot.load(Ordering::Acquire)
    }

    unsafe fn compare_exchange_slot(
        &self,
        address: usize,
        current: usize,
        new: usize,
    ) -> Result<(), SlotWriteError> {
        if irql() > DISPATCH_LEVEL as u8 {
            return Err(SlotWriteError::Failed);
        }
        // SAFETY: IoAllocateMdl only records the range (one aligned pointer, so one page);
        // no buffer is probed. IRQL <= DISPATCH_LEVEL checked above.
        let mdl = unsafe { IoAllocateMdl(address as PVOID, SLOT_SIZE as u32, 0, 0, null_mut()) };
        if mdl.is_null() {
            return Err(SlotWriteError::Failed);
        }
        // SAFETY: the MDL describes the slot, which the caller checked is resident,
        // non-pageable image memory (see the module docs).
        let result = unsafe { exchange_through_alias(mdl, current, new) };
        // SAFETY: allocated above; its mapping (if any) was removed by the callee.
        unsafe { IoFreeMdl(mdl) };
        result
    }
}

/// # Safety
///
/// `mdl` describes one pointer-aligned slot in resident, non-pageable memory.
unsafe fn exchange_through_alias(
    mdl: PMDL,
    current: usize,
    new: usize,
) -> Result<(), SlotWriteError> {
    // SAFETY: the pages are resident and stay so (non-pageable image section).
    unsafe { MmBuildMdlForNonPagedPool(mdl) };
    let priority = wdk_sys::_MM_PAGE_PRIORITY::NormalPagePriority as u32 | MdlMappingNoExecute;
    // SAFETY: the MDL's pages are built; KernelMode mapping; BugCheckOnFailure = 0 makes
    // a failure return NULL instead of stopping the machine.
    let alias = unsafe {
        MmMapLockedPagesSpecifyCache(
            mdl,
            wdk_sys::_MODE::KernelMode as i8,
            wdk_sys::_MEMORY_CACHING_TYPE::MmCached,
            null_mut(),
            0,
            priority,
        )
    };
    if alias.is_null() {
        return Err(SlotWriteError::Failed);
    }
    // SAFETY: `alias` was mapped from this MDL just above.
    let status = unsafe { MmProtectMdlSystemAddress(mdl, PAGE_READWRITE) };
    let result = if NT_SUCCESS(status) {
        // SAFETY: the returned address includes the MDL's byte offset, so it addresses the
        // slot itself through the alias, now writable; pointer-aligned like the slot.
        let slot = unsafe { &*(alias as *const AtomicUsize) };
        slot.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
            .map_err(|found| SlotWriteError::Changed { found })
    } else {
        Err(SlotWriteError::Failed)
    };
    // SAFETY: mapped above from this MDL, and no reference to it survives this point.
    unsafe { MmUnmapLockedPages(alias, mdl) };
    result
}
