//! The drivers' call surface: a simulated driver calls `MmMapIoSpace`,
//! `MmMapIoSpaceEx` and `MmUnmapIoSpace` *through its import address table* (or a pointer
//! resolved with `MmGetSystemRoutineAddress`), so a call reaches the verifier exactly when
//! the slot holds iosv's hook, and the real (simulated) Mm otherwise.
//!
//! Every call is made from a driver [`Routine`]: that decides the return address iosv
//! records and the simulated call chain its stack capture sees (see the crate docs).

use crate::drivers::SimDriver;
use crate::image::{kernel_frames, real_routine, SimImage, HOOKS, HOOK_TABLE, REAL, TEXT_RVA};
use crate::platform::{attached_id, HostPlatform, System};
use crate::{thread, HostError};
use iosv::drivers::DriverId;
use iosv::pe::HookedRoutine;
use iosv::platform::Caller;
use iosv::verifier::Verifier;
use std::sync::Arc;

/// The driver routine a call is made from: decides the return address iosv sees and the
/// simulated stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routine {
    /// DriverEntry.
    DriverEntry,
    /// DriverUnload.
    DriverUnload,
    /// The IRP_MN_START_DEVICE handler.
    StartDevice,
    /// The IRP_MN_STOP_DEVICE handler.
    StopDevice,
    /// The IRP_MN_SURPRISE_REMOVAL handler.
    SurpriseRemoval,
    /// The IRP_MN_REMOVE_DEVICE handler.
    RemoveDevice,
    /// An I/O dispatch routine (PASSIVE_LEVEL).
    Dispatch,
    /// A work item (PASSIVE_LEVEL).
    WorkItem,
    /// A DPC (DISPATCH_LEVEL).
    Dpc,
    /// An interrupt service routine (DIRQL).
    Isr,
    /// A scripted scenario step ("test hook" routine of the driver).
    Script,
}

impl Routine {
    fn index(self) -> u64 {
        match self {
            Routine::DriverEntry => 0,
            Routine::DriverUnload => 1,
            Routine::StartDevice => 2,
            Routine::StopDevice => 3,
            Routine::SurpriseRemoval => 4,
            Routine::RemoveDevice => 5,
            Routine::Dispatch => 6,
            Routine::WorkItem => 7,
            Routine::Dpc => 8,
            Routine::Isr => 9,
            Routine::Script => 10,
        }
    }

    /// Address of the routine in an image loaded at `image_base`.
    pub fn entry(self, image_base: u64) -> u64 {
        image_base
            .wrapping_add(TEXT_RVA)
            .wrapping_add(self.index().wrapping_mul(0x100))
    }

    /// The synthetic kernel frame that calls this routine.
    pub fn kernel_frame(self) -> u64 {
        match self {
            Routine::DriverEntry | Routine::DriverUnload => kernel_frames::LOADER,
            Routine::StartDevice
            | Routine::StopDevice
            | Routine::SurpriseRemoval
            | Routine::RemoveDevice => kernel_frames::PNP_IRP,
            Routine::Dispatch | Routine::Script => kernel_frames::IO_DISPATCH,
            Routine::WorkItem => kernel_frames::WORK_ITEM,
            Routine::Dpc => kernel_frames::DPC,
            Routine::Isr => kernel_frames::INTERRUPT,
        }
    }
}

#[derive(Clone, Copy)]
enum CallKind {
    Map = 0,
    MapEx = 1,
    Unmap = 2,
    UnmapDirect = 3,
}

fn return_address(routine: Routine, image_base: u64, kind: CallKind) -> u64 {
    routine
        .entry(image_base)
        .wrapping_add(0x40)
        .wrapping_add((kind as u64).wrapping_mul(0x10))
}

/// A mapping a simulated driver holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    pub(crate) base: u64,
    pub(crate) size: u64,
    /// Made through iosv's hook (iosv tracks it).
    pub(crate) tracked: bool,
    /// Made while iosv saw the device starting (iosv attributes it to the device).
    pub(crate) device_attr: bool,
    /// iosv has reported it as leaked already (detach).
    pub(crate) reported: bool,
}

impl Held {
    /// A mapping of `size` bytes at `base` (`tracked`: made through iosv's hook), not
    /// attributed to a device, not reported.
    pub(crate) fn new(base: u64, size: u64, tracked: bool) -> Held {
        Held {
            base,
            size,
            tracked,
            device_attr: false,
            reported: false,
        }
    }
}

/// What a map call returns: the base (0 if the map failed) and whether the call went
/// through iosv's hook.
pub type Mapped = Result<(u64, bool), HostError>;

/// A loaded driver image and how to call the Mm routines from it.
#[derive(Clone)]
pub struct DriverRef {
    pub(crate) sys: Arc<System>,
    pub(crate) verifier: Arc<Verifier<HostPlatform>>,
    pub(crate) driver: Arc<SimDriver>,
    pub(crate) image: Arc<SimImage>,
}

impl DriverRef {
    /// The image name.
    pub fn name(&self) -> &str {
        &self.driver.name
    }
    /// The image this reference calls from.
    pub fn image(&self) -> &SimImage {
        &self.image
    }
    /// The id iosv gave the driver, while iosv is attached to it.
    pub fn driver_id(&self) -> Option<DriverId> {
        attached_id(&self.image)
    }
    /// True while this image is loaded (a reload makes a new image).
    pub fn is_loaded(&self) -> bool {
        self.image.is_loaded()
    }

    /// What a call to `routine` through the driver's import slot reaches now.
    fn target(&self, routine: HookedRoutine) -> u64 {
        self.image.slot_value(routine)
    }

    /// `MmGetSystemRoutineAddress(name)` called through the driver's import slot.
    fn resolve(&self, name: &str) -> Result<u64, HostError> {
        let gsra = self.target(HookedRoutine::GetSystemRoutineAddress);
        if gsra == HOOKS.get_system_routine_address as u64 {
            let mut wide = [0u16; 64];
            let mut n = 0usize;
            for (d, s) in wide.iter_mut().zip(name.bytes()) {
                *d = u16::from(s);
                n = n.saturating_add(1);
            }
            let hooked =
                iosv::intercept::system_routine_override(wide.get(..n).unwrap_or(&[]), &HOOK_TABLE);
            Ok(hooked.map_or_else(|| real_routine(name), |a| a as u64))
        } else if gsra == REAL.get_system_routine_address as u64 {
            Ok(real_routine(name))
        } else {
            Err(HostError::BadCallTarget(gsra))
        }
    }

    pub(crate) fn frames(
        &self,
        routine: Routine,
        ret: u64,
    ) -> ([u64; thread::CHAIN_FRAMES], usize) {
        let mut f = [
            ret,
            routine.entry(self.image.base()),
            routine.kernel_frame(),
            0,
        ];
        let mut n = 3usize;
        if let Some(step) = thread::step_frame() {
            if let Some(slot) = f.get_mut(3) {
                *slot = step;
                n = 4;
            }
        }
        (f, n)
    }

    /// Runs `call` as a call of kind `kind` made from `routine` in this image: inside the
    /// image (it cannot run down meanwhile), with the simulated call chain of that call
    /// site, given the caller iosv sees.
    fn call_from<R>(
        &self,
        routine: Routine,
        kind: CallKind,
        call: impl FnOnce(Caller) -> Result<R, HostError>,
    ) -> Result<R, HostError> {
        let _in = self
            .image
            .enter()
            .ok_or_else(|| HostError::NotLoaded(self.driver.name.clone()))?;
        let ret = return_address(routine, self.image.base(), kind);
        let (frames, n) = self.frames(routine, ret);
        let caller = Caller::at(ret);
        thread::with_call_chain(frames.get(..n).unwrap_or(&[]), || call(caller))
    }

    /// A map call from `routine` to `target` (iosv's hook or the real routine).
    fn do_map(
        &self,
        routine: Routine,
        target: u64,
        physical: u64,
        size: u64,
        cache: u32,
        kind: CallKind,
    ) -> Mapped {
        let bytes = usize::try_from(size).unwrap_or(usize::MAX);
        self.call_from(routine, kind, |caller| {
            if target == HOOKS.map_io_space as u64 {
                Ok((
                    self.verifier.map_io_space(caller, physical, bytes, cache),
                    true,
                ))
            } else if target == HOOKS.map_io_space_ex as u64 {
                Ok((
                    self.verifier
                        .map_io_space_ex(caller, physical, bytes, cache),
                    true,
                ))
            } else if target == REAL.map_io_space as u64 {
                Ok((self.sys.mm.map(physical, size, cache, false, false), false))
            } else if target == REAL.map_io_space_ex as u64 {
                Ok((self.sys.mm.map(physical, size, cache, true, false), false))
            } else {
                Err(HostError::BadCallTarget(target))
            }
        })
    }

    /// An unmap call from `routine` to `target` (iosv's hook or the real routine); whether
    /// it went through the hook.
    fn do_unmap(
        &self,
        routine: Routine,
        target: u64,
        base: u64,
        size: u64,
        kind: CallKind,
    ) -> Result<bool, HostError> {
        let bytes = usize::try_from(size).unwrap_or(usize::MAX);
        self.call_from(routine, kind, |caller| {
            if target == HOOKS.unmap_io_space as u64 {
                self.verifier.unmap_io_space(caller, base, bytes);
                Ok(true)
            } else if target == REAL.unmap_io_space as u64 {
                self.sys.mm.unmap(base, size, false);
                Ok(false)
            } else {
                Err(HostError::BadCallTarget(target))
            }
        })
    }

    /// `MmMapIoSpace` called from `routine` through the driver's IAT. Returns the base (0
    /// if the map failed) and whether the call went through iosv's hook.
    pub fn map_io_space(&self, routine: Routine, physical: u64, size: u64, cache: u32) -> Mapped {
        let target = self.target(HookedRoutine::MapIoSpace);
        self.do_map(routine, target, physical, size, cache, CallKind::Map)
    }

    /// `MmMapIoSpaceEx` called from `routine` through the driver's IAT.
    pub fn map_io_space_ex(&self, routine: Routine, physical: u64, size: u64, prot: u32) -> Mapped {
        let target = self.target(HookedRoutine::MapIoSpaceEx);
        self.do_map(routine, target, physical, size, prot, CallKind::MapEx)
    }

    /// `MmMapIoSpaceEx` through a pointer resolved just now with `MmGetSystemRoutineAddress`
    /// (the way drivers that also run on older Windows call it).
    pub fn map_io_space_ex_resolved(
        &self,
        routine: Routine,
        physical: u64,
        size: u64,
        protect: u32,
    ) -> Mapped {
        let target = self.resolve("MmMapIoSpaceEx")?;
        self.do_map(routine, target, physical, size, protect, CallKind::MapEx)
    }

    /// `MmUnmapIoSpace` called from `routine` through the driver's IAT. Returns whether
    /// the call went through iosv's hook.
    pub fn unmap_io_space(
        &self,
        routine: Routine,
        base: u64,
        size: u64,
    ) -> Result<bool, HostError> {
        let target = self.target(HookedRoutine::UnmapIoSpace);
        self.do_unmap(routine, target, base, size, CallKind::Unmap)
    }

    /// `MmUnmapIoSpace` through a pointer that bypasses the hook (resolved before iosv
    /// attached, or called by an unhooked helper module): the unmap iosv never sees.
    pub fn unmap_io_space_direct(
        &self,
        routine: Routine,
        base: u64,
        size: u64,
    ) -> Result<(), HostError> {
        self.do_unmap(
            routine,
            REAL.unmap_io_space as u64,
            base,
            size,
            CallKind::UnmapDirect,
        )
        .map(|_| ())
    }

    pub(crate) fn hold(
        &self,
        routine: Routine,
        physical: u64,
        size: u64,
        cache: u32,
    ) -> Result<Held, HostError> {
        let (base, tracked) = self.map_io_space(routine, physical, size, cache)?;
        if base == 0 {
            return Err(HostError::MapFailed("runtime window"));
        }
        Ok(Held::new(base, size, tracked))
    }

    pub(crate) fn release(&self, routine: Routine, h: &Held) -> Result<bool, HostError> {
        self.unmap_io_space(routine, h.base, h.size)
    }
}
