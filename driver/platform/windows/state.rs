//! The one global: the engine and the interception state ([`Glue`]), allocated once in
//! `DriverEntry` and reached from hooks, IRP dispatch and the image-load callback through
//! an `AtomicPtr`; the in-flight counter that lets unload wait for callbacks to drain; the
//! control-plane mutex; the unload policy; and a helper that runs control-plane work on an
//! expanded stack.
//!
//! Unload policy (docs/windows.md, "Unload"): once iosv is about to write its first
//! import slot, or hands out a hook through `MmGetSystemRoutineAddress`, it can never be
//! unloaded again: a thread may have fetched a hook's address from a slot and been
//! interrupted before the hook's first instruction, and nothing iosv counts can see it.
//! [`Glue::block_unload`] takes a reference on iosv's own driver object that is never
//! released, so the image stays mapped whatever the I/O manager does, and the unload
//! routine, if it is still called, leaves everything in place. `DriverUnload` is not
//! cleared: changing it after `DriverEntry` is undocumented, and an unload that was
//! already pending would call through the field later. Unload and the first slot write
//! are ordered by [`Glue::block_unload`] / [`Glue::begin_unload`] (Dekker-style, SeqCst):
//! either the unload sees the block and keeps everything, or the write sees the unload
//! and is refused.
//!
//! Hooks may run at any IRQL, so they take no lock and never wait: they call the engine
//! if it is published, else the real routine.
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use wdk_sys::ntddk::{
    KeAcquireGuardedMutex, KeDelayExecutionThread, KeExpandKernelStackAndCallout,
    KeInitializeGuardedMutex, KeReleaseGuardedMutex, ObfReferenceObject,
};
use wdk_sys::{
    KGUARDED_MUTEX, LARGE_INTEGER, NTSTATUS, PDRIVER_OBJECT, PVOID, STATUS_INSUFFICIENT_RESOURCES,
};

use super::WindowsPlatform;
use crate::drivers::MAX_DRIVERS;
use crate::intercept::Plan;
use crate::pe::RoutineOrdinals;
use crate::sync::try_boxed_slice;
use crate::verifier::{StartParams, Verifier};

/// Stack the control plane asks for with `KeExpandKernelStackAndCallout`: the engine's
/// start-up and leak walks keep multi-kilobyte values on the stack. Below
/// `MAXIMUM_EXPANSION_SIZE` (`KERNEL_LARGE_STACK_SIZE - PAGE_SIZE / 2`, 70 KiB on x64).
const BIG_STACK: u64 = 0x1_0000;

/// Poll interval while unload waits for callbacks to drain (100 ns units, negative =
/// relative).
const DRAIN_POLL_100NS: i64 = -100_000; // 10 ms

/// Addresses of the real ntoskrnl routines (from `MmGetSystemRoutineAddress` at start; 0
/// when the running kernel does not export one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reals {
    /// `MmMapIoSpace`.
    pub map: usize,
    /// `MmMapIoSpaceEx`.
    pub map_ex: usize,
    /// `MmUnmapIoSpace`.
    pub unmap: usize,
    /// `MmGetSystemRoutineAddress`.
    pub get_routine: usize,
    /// The MDL and reserved-mapping family, indexed by `HookedRoutine::index` (the other
    /// entries 0).
    pub family: [usize; crate::pe::HookedRoutine::COUNT],
}

/// A value behind a `KGUARDED_MUTEX`: control-plane state touched at PASSIVE_LEVEL only
/// (attach, detach, image load, AddDevice, unload). Page faults are allowed while it is
/// held, which the PE reads need.
pub struct Locked<T> {
    mutex: UnsafeCell<KGUARDED_MUTEX>,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is only reached through `with`, which holds the guarded mutex for the
// whole access; the mutex itself is a kernel object made for concurrent use.
unsafe impl<T: Send> Sync for Locked<T> {}

impl<T> Locked<T> {
    fn new(value: T) -> Locked<T> {
        Locked {
            mutex: UnsafeCell::new(KGUARDED_MUTEX::default()),
            value: UnsafeCell::new(value),
        }
    }

    /// Initialises the mutex in place. Called once, after the value reached its final
    /// (heap) address and before any `with`.
    fn init(&self) {
        // SAFETY: the mutex lives in non-paged pool inside the Glue box and is not moved
        // after this; PASSIVE_LEVEL (DriverEntry).
        unsafe { KeInitializeGuardedMutex(self.mutex.get()) };
    }

    /// Runs `f` with the value under the mutex. IRQL <= APC_LEVEL.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: initialised in `init`; callers run at PASSIVE_LEVEL.
        unsafe { KeAcquireGuardedMutex(self.mutex.get()) };
        // SAFETY: the mutex is held, so this is the only reference to the value.
        let result = f(unsafe { &mut *self.value.get() });
        // SAFETY: acquired above by this thread.
        unsafe { KeReleaseGuardedMutex(self.mutex.get()) };
        result
    }
}

/// The plans of the attached drivers, indexed by `DriverId.0` (0 unused).
pub type Plans = Box<[Option<Plan>]>;

/// Everything the glue shares between hooks, dispatch and callbacks.
pub struct Glue {
    /// The engine.
    pub verifier: Verifier<WindowsPlatform>,
    /// The real routines, to recognise snapped import slots.
    pub reals: Reals,
    /// Ordinals of the hooked routines in ntoskrnl's export table, for by-ordinal imports.
    pub ordinals: RoutineOrdinals,
    /// iosv's driver object (see [`Glue::block_unload`]).
    pub driver: AtomicPtr<wdk_sys::DRIVER_OBJECT>,
    pinned: AtomicBool,
    unloading: AtomicBool,
    plans: Locked<Plans>,
}

const _: () = {
    const fn assert_sync<T: Sync>() {}
    assert_sync::<Glue>();
};

impl Glue {
    /// Allocates the engine, the plan table and the Glue itself (non-paged pool, through
    /// the global allocator); `STATUS_INSUFFICIENT_RESOURCES` when memory is short. Run it
    /// on a big stack: the Verifier value is several kilobytes before it reaches the heap.
    pub fn create(
        platform: WindowsPlatform,
        params: StartParams,
        reals: Reals,
        ordinals: RoutineOrdinals,
        driver: PDRIVER_OBJECT,
    ) -> Result<*mut Glue, NTSTATUS> {
        let verifier =
            Verifier::new(platform, params).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let plans = try_boxed_slice(MAX_DRIVERS.saturating_add(1), |_| None)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        let mut one = Vec::new();
        one.try_reserve_exact(1)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        one.push(Glue {
            verifier,
            reals,
            ordinals,
            driver: AtomicPtr::new(driver),
            pinned: AtomicBool::new(false),
            unloading: AtomicBool::new(false),
            plans: Locked::new(plans),
        });
        // A one-element boxed slice has the layout of a `Box<Glue>`; it is rebuilt as a
        // slice in `destroy`.
        let glue = Box::into_raw(one.into_boxed_slice()).cast::<Glue>();
        // SAFETY: just allocated, at its final address.
        unsafe { &*glue }.plans.init();
        Ok(glue)
    }

    /// Frees a Glue made by [`Glue::create`].
    ///
    /// # Safety
    ///
    /// `glue` came from `create`, is no longer published in [`GLUE`], and nothing can use
    /// it any more (hooks drained, callbacks removed, devices deleted).
    pub unsafe fn destroy(glue: *mut Glue) {
        let slice = core::ptr::slice_from_raw_parts_mut(glue, 1);
        // SAFETY: per the contract, this is the boxed slice `create` leaked.
        drop(unsafe { Box::from_raw(slice) });
    }

    /// Runs `f` on the plan table under the control-plane mutex (PASSIVE_LEVEL).
    pub fn with_plans<R>(&self, f: impl FnOnce(&mut Plans) -> R) -> R {
        self.plans.with(f)
    }

    /// Applies the unload policy (module docs) before a slot write or a hook handed out:
    /// iosv.sys stays loaded until reboot. False if an unload has begun: then the caller
    /// must not write the slot or hand out the hook. Any IRQL <= DISPATCH_LEVEL (the
    /// control plane, and `MmGetSystemRoutineAddress`, a PASSIVE_LEVEL routine).
    pub fn block_unload(&self) -> bool {
        // Announce the block, then look for an unload (begin_unload does the reverse).
        let first = !self.pinned.swap(true, Ordering::SeqCst);
        if self.unloading.load(Ordering::SeqCst) {
            return false;
        }
        if first {
            self.verifier.block_unload();
            let driver = self.driver.load(Ordering::Acquire);
            if !driver.is_null() {
                // SAFETY: a valid, referenced object (the I/O manager's reference); this
                // extra reference is never released, so the object and the image it
                // unloads with stay mapped.
                unsafe { ObfReferenceObject(driver.cast()) };
            }
        }
        true
    }

    /// The unload routine's first step: true if it may tear down (nothing was ever
    /// patched or handed out, and nothing can be from now on), false if iosv must stay.
    pub fn begin_unload(&self) -> bool {
        self.unloading.store(true, Ordering::SeqCst);
        !self.pinned.load(Ordering::SeqCst)
    }

    /// Whether [`Glue::block_unload`] happened.
    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::SeqCst)
    }
}

/// The published Glue; null before DriverEntry finished allocating it and after unload
/// began.
pub static GLUE: AtomicPtr<Glue> = AtomicPtr::new(null_mut());

/// Callbacks (image load) currently running iosv code.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The engine, if published.
pub fn engine() -> Option<&'static Glue> {
    let glue = GLUE.load(Ordering::SeqCst);
    // SAFETY: a non-null value is the Glue published by DriverEntry. Unload frees it only
    // when no import slot was ever patched and no hook handed out (the unload policy,
    // module docs), after clearing GLUE and draining the callbacks, which count
    // themselves in IN_FLIGHT (SeqCst) before this SeqCst load.
    unsafe { glue.as_ref() }
}

/// Marks one callback as running iosv code until dropped.
pub struct InFlight(());

impl InFlight {
    /// One atomic add: callable at any IRQL, never waits.
    pub fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits (PASSIVE_LEVEL) until no callback or dispatch runs iosv code. Only reached when
/// no slot was ever patched (else unload is blocked), so no hook can be running.
pub fn wait_for_drain() {
    while IN_FLIGHT.load(Ordering::SeqCst) != 0 {
        delay(DRAIN_POLL_100NS);
    }
}

fn delay(relative_100ns: i64) {
    let mut interval = LARGE_INTEGER {
        QuadPart: relative_100ns,
    };
    // SAFETY: `interval` is a valid relative time; KernelMode, non-alertable wait at
    // PASSIVE_LEVEL.
    let _ = unsafe { KeDelayExecutionThread(wdk_sys::_MODE::KernelMode as i8, 0, &mut interval) };
}

/// Runs `f` on a stack of at least [`BIG_STACK`] bytes (`KeExpandKernelStackAndCallout`,
/// IRQL <= APC_LEVEL). `None` if the kernel could not provide one; then `f` was not run
/// and the caller decides (run it here, or fail).
pub fn on_big_stack<R>(f: impl FnOnce() -> R) -> Option<R> {
    let mut job = Some(f);
    let mut out = None;
    {
        let mut call = || {
            if let Some(f) = job.take() {
                out = Some(f());
            }
        };
        let mut dyn_call: &mut dyn FnMut() = &mut call;
        let param: *mut &mut dyn FnMut() = &mut dyn_call;
        // SAFETY: the callout runs synchronously on this thread before the call returns,
        // and `param` points at `dyn_call`, which outlives it.
        let status = unsafe {
            KeExpandKernelStackAndCallout(Some(run_callout), param.cast::<c_void>(), BIG_STACK)
        };
        let _ = status;
    }
    out
}

unsafe extern "C" fn run_callout(param: PVOID) {
    // SAFETY: `param` is the `&mut &mut dyn FnMut()` that `on_big_stack` passed, alive for
    // the duration of this call.
    let call = unsafe { &mut *param.cast::<&mut dyn FnMut()>() };
    call();
}
