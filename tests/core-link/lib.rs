//! A kernel-mode image that carries iosv's portable core: DriverEntry builds a verifier
//! over a stand-in platform, runs one map/unmap pair and one control request. It is
//! linked, never loaded: the test reads its import table.
#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};
use iosv::intercept::{SlotAccess, SlotWriteError};
use iosv::platform::{BugCheck, Caller, Irql, Platform, PlatformError};
use iosv::verifier::{StartParams, Verifier};

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "system" {
    fn MmMapIoSpace(physical: u64, size: usize, cache: u32) -> u64;
    fn MmUnmapIoSpace(base: u64, size: usize);
}

// What compiled Rust code needs from the C runtime, which a driver gets from ntoskrnl.
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
extern "C" {
    fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8;
    fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8;
    fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8;
    fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32;
    fn strlen(s: *const u8) -> usize;
    fn __chkstk();
}

// The precompiled `core` for this target carries unwind tables naming the MSVC C++
// personality routine, and float code references `_fltused`; the WDK's kernel CRT
// (libcntpr.lib) supplies both in a real build. Here: stand-ins (panic=abort: never called).
/// Referenced by float code; the kernel CRT defines it in a real build.
#[no_mangle]
pub static _fltused: i32 = 0;

/// The MSVC C++ personality routine `core`'s unwind tables name (never called: panic=abort).
#[no_mangle]
pub extern "C" fn __CxxFrameHandler3() -> i32 {
    1 // ExceptionContinueSearch
}

struct Bump;
static HEAP: [u8; 0] = [];
static NEXT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: never hands out memory: every allocation fails, which the core handles
// (try_reserve); the image is linked, not run.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        NEXT.fetch_add(layout.size(), Ordering::Relaxed);
        HEAP.as_ptr().cast_mut()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: Bump = Bump;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The platform of this image. Not `iosv::platform::fake` (the one fake the engine's,
/// client's and benches' tests share): this crate is a `no_std` kernel image and what it
/// checks is its import table, so its Mm calls must be the real `MmMapIoSpace` /
/// `MmUnmapIoSpace` imports from ntoskrnl above; the fake needs std (feature
/// `test-support`, thread-locals, `Mutex`) and calls nothing, so it could neither link
/// here nor produce the imports.
struct KernelStandIn;

impl SlotAccess for KernelStandIn {
    unsafe fn read_slot(&self, _address: usize) -> usize {
        0
    }
    unsafe fn compare_exchange_slot(&self, _a: usize, _c: usize, _n: usize) -> Result<(), SlotWriteError> {
        Err(SlotWriteError::Failed)
    }
}

impl Platform for KernelStandIn {
    fn current_irql(&self) -> Irql {
        Irql::PASSIVE
    }
    fn current_processor(&self) -> u32 {
        0
    }
    fn processor_count(&self) -> u32 {
        1
    }
    fn current_process_id(&self) -> u64 {
        4
    }
    fn current_thread_id(&self) -> u64 {
        8
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn capture_stack(&self, _skip: u32, _frames: &mut [u64]) -> usize {
        0
    }
    fn raise_to_dispatch(&self) -> Irql {
        Irql::PASSIVE
    }
    fn lower_irql(&self, _previous: Irql) {}
    fn mm_map_io_space(&self, physical: u64, size: usize, cache_type: u32) -> u64 {
        // SAFETY: linked, never executed.
        unsafe { MmMapIoSpace(physical, size, cache_type) }
    }
    fn mm_map_io_space_ex(&self, physical: u64, size: usize, _protect: u32) -> u64 {
        self.mm_map_io_space(physical, size, 0)
    }
    fn mm_unmap_io_space(&self, base: u64, size: usize) {
        // SAFETY: linked, never executed.
        unsafe { MmUnmapIoSpace(base, size) }
    }
    fn debug_break(&self) {}
    fn bugcheck(&self, _params: BugCheck) {}
    fn attach_driver(&self, _n: &[u8]) -> Result<u32, PlatformError> {
        Err(PlatformError::Unsupported)
    }
    fn detach_driver(&self, _n: &[u8]) -> Result<u32, PlatformError> {
        Err(PlatformError::Unsupported)
    }
}

/// Keeps the C-runtime imports referenced even where the optimiser inlined them away.
#[used]
static KEEP: [unsafe extern "C" fn(*mut u8, *const u8, usize) -> *mut u8; 2] = [memcpy, memmove];
#[used]
static KEEP2: (
    unsafe extern "C" fn(*mut u8, i32, usize) -> *mut u8,
    unsafe extern "C" fn(*const u8, *const u8, usize) -> i32,
    unsafe extern "C" fn(*const u8) -> usize,
    unsafe extern "C" fn(),
) = (memset, memcmp, strlen, __chkstk);

/// The image's entry point: one map/unmap pair and one HELLO through the core.
#[export_name = "DriverEntry"]
pub extern "system" fn driver_entry(_driver: *mut u8, _registry: *const u8) -> i32 {
    let Ok(v) = Verifier::new(KernelStandIn, StartParams::default()) else {
        return 0xC000_009Au32 as i32; // STATUS_INSUFFICIENT_RESOURCES
    };
    let at = Caller::at(0);
    let base = v.map_io_space(at, 0xFED0_0000, 0x1000, 0);
    v.unmap_io_space(at, base, 0x1000);
    let mut out = [0u8; 64];
    let hello = [1u8, 0, 0, 0, 0, 0, 0, 0];
    let r = iosv::control::control(&v, iosv::protocol::IOCTL_HELLO, &hello, &mut out);
    r.status as i32
}
