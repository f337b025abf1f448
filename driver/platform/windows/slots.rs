//! [`SlotAccess`] for [`WindowsPlatform`]: one pointer-sized compare-and-exchange on an
//! import slot of a loaded image, whose page is normally read-only.
//!
//! The slot's page is never made writable in place. It is written through a second,
//! private mapping made the way the MDL routines document it:
//!
//! 1. `IoAllocateMdl` describes the slot (one aligned pointer: one page);
//! 2. `MmProbeAndLockPages(KernelMode, IoReadAccess)` makes the page resident and locks it.
//!    It reports failure by raising an exception, which Rust cannot catch, so it is called
//!    through `iosv_probe_and_lock_pages` in `seh.c`, inside `__try/__except`; a page that
//!    vanished (the image unloaded meanwhile) is a failed write, not a bug check;
//! 3. `MmMapLockedPagesSpecifyCache(KernelMode, MmCached, MdlMappingNoExecute)` maps a
//!    system alias of the locked page, never executable;
//! 4. `MmProtectMdlSystemAddress(PAGE_READWRITE)` makes the alias writable: an NX, RW
//!    alias of a non-executable page, which HVCI allows (the caller refuses slots in code
//!    sections before this point — `intercept::check_site`);
//! 5. one atomic compare-and-exchange through the alias (the slot is pointer-aligned, so
//!    it never straddles a page; a concurrent call through the slot sees the old or the
//!    new value, never a torn one). It writes only if the slot holds the expected value,
//!    so a page reused by another image is never written;
//! 6. `MmUnmapLockedPages`, `MmUnlockPages`, `IoFreeMdl`.
//!
//! Every step runs at PASSIVE_LEVEL (the control plane and the image-load callback); the
//! routines allow up to DISPATCH_LEVEL for resident pages.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering};

use wdk_sys::ntddk::{
    IoAllocateMdl, IoFreeMdl, MmMapLockedPagesSpecifyCache, MmProtectMdlSystemAddress,
    MmUnlockPages, MmUnmapLockedPages,
};
use wdk_sys::{MdlMappingNoExecute, APC_LEVEL, NT_SUCCESS, PAGE_READWRITE, PMDL, PVOID};

use super::ffi::iosv_probe_and_lock_pages;
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
        // Control plane only; MmProbeAndLockPages of image memory wants <= APC_LEVEL.
        if irql() > APC_LEVEL as u8 {
            return Err(SlotWriteError::Failed);
        }
        // SAFETY: IoAllocateMdl only records the range (one aligned pointer, so one page);
        // nothing is probed yet. No IRP, no quota.
        let mdl = unsafe { IoAllocateMdl(address as PVOID, SLOT_SIZE as u32, 0, 0, null_mut()) };
        if mdl.is_null() {
            return Err(SlotWriteError::Failed);
        }
        // SAFETY: a fresh MDL describing the slot; KernelMode, read access (the page is
        // read-only; the write goes through the alias). seh.c catches the exception the
        // routine raises on failure and returns its code instead.
        let locked = unsafe {
            iosv_probe_and_lock_pages(
                mdl,
                wdk_sys::_MODE::KernelMode as i8,
                wdk_sys::_LOCK_OPERATION::IoReadAccess,
            )
        };
        let result = if NT_SUCCESS(locked) {
            // SAFETY: the MDL's page is locked (just above) and describes the slot.
            let result = unsafe { exchange_through_alias(mdl, current, new) };
            // SAFETY: locked above, unlocked once; the alias was unmapped by the callee.
            unsafe { MmUnlockPages(mdl) };
            result
        } else {
            Err(SlotWriteError::Failed)
        };
        // SAFETY: allocated above; its pages are unlocked and unmapped.
        unsafe { IoFreeMdl(mdl) };
        result
    }
}

/// Maps a writable, non-executable alias of the MDL's page, exchanges the slot through
/// it, and unmaps it.
///
/// # Safety
///
/// `mdl` describes one pointer-aligned slot whose page `MmProbeAndLockPages` locked.
unsafe fn exchange_through_alias(
    mdl: PMDL,
    current: usize,
    new: usize,
) -> Result<(), SlotWriteError> {
    let priority = wdk_sys::_MM_PAGE_PRIORITY::NormalPagePriority as u32 | MdlMappingNoExecute;
    // SAFETY: the MDL's pages are locked; KernelMode mapping; BugCheckOnFailure = 0 makes
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
