//! Stand-in for `wdk-alloc` 0.4 (windows-drivers-rs), for `tests/check-glue` only: a
//! global allocator over `ExAllocatePool2(POOL_FLAG_NON_PAGED, size, 'rust')` and
//! `ExFreePool`, the calls the real `WdkAllocator` makes (so the linked image imports the
//! same routines). Like the real one it ignores `Layout::align` beyond the pool's own
//! 16-byte alignment.

#![no_std]

use core::alloc::{GlobalAlloc, Layout};

use wdk_sys::ntddk::{ExAllocatePool2, ExFreePool};
use wdk_sys::{POOL_FLAG_NON_PAGED, SIZE_T, ULONG};

/// The kernel-pool global allocator (IRQL <= DISPATCH_LEVEL).
pub struct WdkAllocator;

/// Pool tag "rust" as the real crate uses.
const TAG: ULONG = u32::from_ne_bytes(*b"rust");

// SAFETY: pool blocks are valid for `size` bytes until freed, and are freed only here.
unsafe impl GlobalAlloc for WdkAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: ExAllocatePool2 has no preconditions beyond IRQL, which the caller keeps.
        let block = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size() as SIZE_T, TAG) };
        block.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, per GlobalAlloc's contract.
        unsafe { ExFreePool(ptr.cast()) };
    }
}
