//! The simulated drivers and their devices: loading and unloading images, the PnP life
//! of devices (add, start, stop, surprise removal, remove), the drivers' routines — well
//! behaved or with one bug per rule — and the injection of single bugs on demand.
//!
//! # Drivers
//! A driver is declared once by name with a [`Behaviour`]; each load creates a new image
//! ([`SimImage`]) at a new base. If the name is one of iosv's targets when it loads, the
//! load notification registers it with the verifier and iosv's import plan patches its
//! IAT before `DriverEntry` runs, as in the kernel. `DriverUnload` releases what the
//! driver holds; then the image runs down (waits for calls in it), its slots are restored
//! and the verifier is told (IOSV009 for what is still mapped).
//!
//! # Devices
//! A device belongs to one driver and has BARs (physical windows with a cache type). Its
//! start routine maps every BAR (at PASSIVE_LEVEL, between the filter's START_DEVICE
//! begin and end events, so iosv attributes the mappings to the device); its stop,
//! surprise-removal and remove routines unmap them. Runtime I/O ([`Host::device_io`])
//! maps and unmaps windows of the BARs through `MmMapIoSpace` or `MmMapIoSpaceEx`
//! (resolved through `MmGetSystemRoutineAddress`) at PASSIVE or DISPATCH level, keeping
//! up to four windows mapped between operations, always with the BAR's cache class and
//! the exact size. Devices are not shared between threads by the stress phase; a device
//! operation holds the device's lock for its duration.
//!
//! # Bugs and what is expected
//! [`Host::commit_bug`] performs one instance of one rule's bug in a way that produces
//! exactly one violation of exactly that rule, even with other threads running (as long
//! as each thread uses its own [`Actor`] and its own drivers' devices):
//! double unmaps and stale entries use a page count private to the actor, so no other
//! thread can be handed the freed address in between; unknown addresses come from a
//! range the simulated Mm never hands out; cache conflicts overlap only the actor's own
//! scratch window or the device's own BAR. The two bugs that call as a second driver
//! (IOSV005 after address reuse maps through it, IOSV012 unmaps through it) borrow that
//! driver from whichever thread owns it: while borrowed it cannot unload, be detached or
//! attached, or start a device (iosv would report the borrowed mapping as its leak, or
//! attribute it to the starting device); if it cannot be borrowed at once, the first
//! becomes a plain double unmap and the second is not committed. Every bug that reaches
//! iosv (the driver is hooked) is counted in [`Host::injected`], with the driver iosv
//! should blame.

use super::image::{
    kernel_frames, real_routine, SimImage, HOOKS, IMAGE_REGION, IMAGE_STRIDE, REAL, TEXT_RVA,
};
use super::mm::{NEVER_MAPPED_START, PAGE_SIZE};
use super::rng::Rng;
use super::{attached_id, lock, thread, Host, HostError, HostPlatform, System};
use iosv::drivers::{DriverId, DriverState};
use iosv::intercept::{Outcome, Plan};
use iosv::pe::{HookedRoutine, PeImage};
use iosv::phys::{CacheClass, PAGE_NOCACHE, PAGE_READWRITE, PAGE_WRITECOMBINE};
use iosv::platform::{Caller, Irql, PlatformError};
use iosv::protocol::{
    AttachReply, DriverNameRequest, Status, IOCTL_ATTACH, IOCTL_DETACH, PROTOCOL_VERSION,
};
use iosv::rules::RuleId;
use iosv::verifier::{DeviceEvent, Verifier};
use std::string::String;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

/// `MmNonCached`.
pub const MM_NON_CACHED: u32 = 0;
/// `MmCached`.
pub const MM_CACHED: u32 = 1;
/// `MmWriteCombined`.
pub const MM_WRITE_COMBINED: u32 = 2;

/// Page count of the mappings an actor's double-unmap and stale-entry bugs use:
/// `PRIVATE_PAGES + actor index` (modulo 1024). No device BAR may be this large
/// (scenarios refuse BARs of 64 MiB or more), so no other thread maps this page count.
pub const PRIVATE_PAGES: u64 = 16 * 1024;
/// Largest BAR the simulated devices support (exclusive): 64 MiB.
pub const MAX_BAR_SIZE: u64 = PRIVATE_PAGES * PAGE_SIZE;
/// Physical windows of automatically placed BARs start here (256 GiB); scenario BARs
/// must lie below.
pub const AUTO_PHYSICAL: u64 = 0x40_0000_0000;
/// Physical scratch windows of actors (4 GiB each) start here (512 GiB).
pub const SCRATCH_PHYSICAL: u64 = 0x80_0000_0000;
const DEVICE_OBJECTS: u64 = 0xFFFF_B300_0000_0000;
/// Runtime windows a device keeps mapped between I/O operations at most.
const MAX_RUNTIME: usize = 4;
/// Pages a runtime or bug window spans at most (16 KiB plus a sub-page offset).
const MAX_RUNTIME_PAGES: u64 = 5;
/// DIRQL used by the IRQL bugs.
const DIRQL_UNMAP: Irql = Irql(5);
const DIRQL_MAP: Irql = Irql(6);

/// How a simulated driver behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Maps BARs in start, unmaps them in stop/removal, runtime windows with exact sizes.
    WellBehaved,
    /// Commits this rule's bug: the leak rules in the matching routine (every stop, every
    /// removal, every unload), the others on every `bug_every`-th runtime I/O operation.
    Buggy(RuleId),
}

impl Behaviour {
    /// `"well-behaved"`, a rule id (`"IOSV005"`) or a rule name (`"double-unmap"`).
    pub fn parse(text: &str) -> Option<Behaviour> {
        if text.eq_ignore_ascii_case("well-behaved") {
            return Some(Behaviour::WellBehaved);
        }
        RuleId::parse(text).map(Behaviour::Buggy)
    }

    /// The name [`Behaviour::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::WellBehaved => "well-behaved",
            Behaviour::Buggy(r) => r.info().name,
        }
    }
}

/// A device's base address register: a physical window and the cache type its driver
/// maps it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Physical address.
    pub physical: u64,
    /// Bytes.
    pub size: u64,
    /// MEMORY_CACHING_TYPE the driver maps it with.
    pub cache: u32,
}

/// PnP state of a simulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PnpState {
    /// Added, never started (or its start failed).
    Added,
    /// START_DEVICE sent, not completed.
    Starting,
    /// Started.
    Started,
    /// Stopped (can start again).
    Stopped,
    /// Surprise-removed (only remove is left).
    SurpriseRemoved,
    /// Removed (the device object is gone).
    Removed,
}

impl PnpState {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            PnpState::Added => "added (not started)",
            PnpState::Starting => "starting",
            PnpState::Started => "started",
            PnpState::Stopped => "stopped",
            PnpState::SurpriseRemoved => "surprise-removed",
            PnpState::Removed => "removed",
        }
    }
}

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
struct Held {
    base: u64,
    size: u64,
    /// Made through iosv's hook (iosv tracks it).
    tracked: bool,
    /// Made while iosv saw the device starting (iosv attributes it to the device).
    device_attr: bool,
    /// iosv has reported it as leaked already (detach).
    reported: bool,
}

/// A declared driver: persists across loads.
pub(crate) struct SimDriver {
    name: String,
    behaviour: Mutex<(Behaviour, u64)>,
    image: Mutex<Option<Arc<SimImage>>>,
    /// Driver-global mappings (control blocks) and whether each is leaked at unload.
    globals: Mutex<Vec<(Held, bool)>>,
    io_ops: AtomicU64,
    /// Its images keep their import tables in a code section (see `link_iat_into_code`).
    iat_in_code: AtomicBool,
    /// Lets another thread's bug injection call as this driver without racing the
    /// thread that owns it (see [`borrow`]): the driver's unload, attach, detach and
    /// device starts hold it shared; a borrower holds it exclusively, and only ever
    /// tries to take it (never waits), so no thread blocks on a borrower that waits on it.
    gate: RwLock<()>,
    /// Its devices in the Starting state (START_DEVICE sent, not completed): iosv
    /// attributes a map this driver makes meanwhile, on any thread, to such a device.
    starting: AtomicU32,
}

impl SimDriver {
    fn behaviour(&self) -> (Behaviour, u64) {
        *lock(&self.behaviour)
    }

    /// The owner's side of [`SimDriver::gate`], held across an operation a borrower
    /// must not overlap.
    fn owner_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Borrows `other` for a bug injection that calls as it from a thread that may not own
/// it (IOSV005 after reuse, IOSV012): while the guard lives, its image stays loaded, iosv
/// stays attached or detached as it is now, and none of its devices starts. `None` if
/// its owner is doing one of those now (or another thread borrows it), or its image is
/// not loaded any more.
fn borrow(other: &DriverRef) -> Option<RwLockWriteGuard<'_, ()>> {
    let guard = match other.driver.gate.try_write() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    other.is_loaded().then_some(guard)
}

struct DeviceInner {
    state: PnpState,
    bars: Vec<Option<Held>>,
    runtime: Vec<Held>,
}

/// A simulated device object.
pub struct Device {
    name: String,
    id: u64,
    driver: Arc<SimDriver>,
    bars: Vec<Bar>,
    inner: Mutex<DeviceInner>,
}

impl Device {
    /// The device's name in the scenario.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The device object's address (what iosv records as the device).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Its driver's name.
    pub fn driver_name(&self) -> &str {
        &self.driver.name
    }
    /// Its BARs.
    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }
    /// Its PnP state.
    pub fn state(&self) -> PnpState {
        lock(&self.inner).state
    }
    /// Base addresses of the BAR mappings it holds now (`None` for a BAR not mapped).
    pub fn bar_mappings(&self) -> Vec<Option<(u64, u64)>> {
        lock(&self.inner)
            .bars
            .iter()
            .map(|b| b.map(|h| (h.base, h.size)))
            .collect()
    }
    /// Runtime windows it holds mapped now.
    pub fn runtime_mappings(&self) -> Vec<(u64, u64)> {
        lock(&self.inner)
            .runtime
            .iter()
            .map(|h| (h.base, h.size))
            .collect()
    }
}

/// The per-thread state a thread needs to run driver I/O and inject bugs: a random
/// generator, a private page count and a private physical scratch window.
pub struct Actor {
    /// The actor's random generator.
    pub rng: Rng,
    index: u32,
    bad_parameter: u32,
    double_unmap: u32,
    private_pages: Option<u64>,
}

impl Actor {
    /// The actor's index.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The page count of this actor's double-unmap and stale-entry mappings: by default
    /// [`PRIVATE_PAGES`] + index (64 MiB and up, a size no BAR has). A caller that knows
    /// which page counts its threads and devices use can pick a smaller, private one.
    pub fn private_pages(&self) -> u64 {
        self.private_pages
            .unwrap_or_else(|| PRIVATE_PAGES.wrapping_add(u64::from(self.index % 1024)))
    }

    /// Sets the page count of [`Actor::private_pages`]. For exact reports under
    /// concurrency no other thread may map that many pages meanwhile.
    pub fn set_private_pages(&mut self, pages: u64) {
        self.private_pages = Some(pages.max(1));
    }
    fn scratch(&self) -> u64 {
        SCRATCH_PHYSICAL.wrapping_add(u64::from(self.index % 4096).wrapping_mul(0x1_0000_0000))
    }
    /// A runtime window in the scratch area: 2..=4 pages, sometimes not page-aligned.
    fn window(&mut self) -> (u64, u64) {
        let pages = self.rng.range(2, 4);
        let offset = if self.rng.chance(0.25) {
            self.rng.below(0x800) & !7
        } else {
            0
        };
        let physical = self
            .scratch()
            .wrapping_add(0x1000_0000)
            .wrapping_add(self.rng.below(0x1000).wrapping_mul(PAGE_SIZE));
        (
            physical.wrapping_add(offset),
            pages.wrapping_mul(PAGE_SIZE).wrapping_sub(offset),
        )
    }
}

/// A loaded driver image and how to call the Mm routines from it.
#[derive(Clone)]
pub struct DriverRef {
    sys: Arc<System>,
    verifier: Arc<Verifier<HostPlatform>>,
    driver: Arc<SimDriver>,
    image: Arc<SimImage>,
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
                iosv::intercept::system_routine_override(wide.get(..n).unwrap_or(&[]), &HOOKS);
            Ok(hooked.map_or_else(|| real_routine(name), |a| a as u64))
        } else if gsra == REAL.get_system_routine_address as u64 {
            Ok(real_routine(name))
        } else {
            Err(HostError::BadCallTarget(gsra))
        }
    }

    fn frames(&self, routine: Routine, ret: u64) -> ([u64; thread::CHAIN_FRAMES], usize) {
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

    fn do_map(
        &self,
        routine: Routine,
        target: u64,
        physical: u64,
        size: u64,
        cache: u32,
        kind: CallKind,
    ) -> Result<(u64, bool), HostError> {
        let _in = self
            .image
            .enter()
            .ok_or_else(|| HostError::NotLoaded(self.driver.name.clone()))?;
        let ret = return_address(routine, self.image.base(), kind);
        let (frames, n) = self.frames(routine, ret);
        let caller = Caller {
            return_address: ret,
        };
        let bytes = usize::try_from(size).unwrap_or(usize::MAX);
        thread::with_call_chain(frames.get(..n).unwrap_or(&[]), || {
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

    fn do_unmap(
        &self,
        routine: Routine,
        target: u64,
        base: u64,
        size: u64,
        kind: CallKind,
    ) -> Result<bool, HostError> {
        let _in = self
            .image
            .enter()
            .ok_or_else(|| HostError::NotLoaded(self.driver.name.clone()))?;
        let ret = return_address(routine, self.image.base(), kind);
        let (frames, n) = self.frames(routine, ret);
        let bytes = usize::try_from(size).unwrap_or(usize::MAX);
        thread::with_call_chain(frames.get(..n).unwrap_or(&[]), || {
            if target == HOOKS.unmap_io_space as u64 {
                self.verifier.unmap_io_space(
                    Caller {
                        return_address: ret,
                    },
                    base,
                    bytes,
                );
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
    pub fn map_io_space(
        &self,
        routine: Routine,
        physical: u64,
        size: u64,
        cache: u32,
    ) -> Result<(u64, bool), HostError> {
        self.do_map(
            routine,
            self.target(HookedRoutine::MapIoSpace),
            physical,
            size,
            cache,
            CallKind::Map,
        )
    }

    /// `MmMapIoSpaceEx` called from `routine` through the driver's IAT.
    pub fn map_io_space_ex(
        &self,
        routine: Routine,
        physical: u64,
        size: u64,
        protect: u32,
    ) -> Result<(u64, bool), HostError> {
        self.do_map(
            routine,
            self.target(HookedRoutine::MapIoSpaceEx),
            physical,
            size,
            protect,
            CallKind::MapEx,
        )
    }

    /// `MmMapIoSpaceEx` through a pointer resolved just now with `MmGetSystemRoutineAddress`
    /// (the way drivers that also run on older Windows call it).
    pub fn map_io_space_ex_resolved(
        &self,
        routine: Routine,
        physical: u64,
        size: u64,
        protect: u32,
    ) -> Result<(u64, bool), HostError> {
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
        self.do_unmap(
            routine,
            self.target(HookedRoutine::UnmapIoSpace),
            base,
            size,
            CallKind::Unmap,
        )
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

    fn hold(
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
        Ok(Held {
            base,
            size,
            tracked,
            device_attr: false,
            reported: false,
        })
    }

    fn release(&self, routine: Routine, h: &Held) -> Result<bool, HostError> {
        self.unmap_io_space(routine, h.base, h.size)
    }
}

fn class_protect(cache: u32) -> u32 {
    match CacheClass::of(cache, false) {
        CacheClass::NonCached => PAGE_READWRITE | PAGE_NOCACHE,
        CacheClass::WriteCombined => PAGE_READWRITE | PAGE_WRITECOMBINE,
        CacheClass::Cached => PAGE_READWRITE,
    }
}

fn other_class(cache: u32) -> u32 {
    match CacheClass::of(cache, false) {
        CacheClass::NonCached => MM_CACHED,
        CacheClass::Cached | CacheClass::WriteCombined => MM_NON_CACHED,
    }
}

fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Attaches iosv to the loaded image `name` (the platform side of IOCTL_ATTACH).
pub(crate) fn attach_image(platform: &HostPlatform, name: &[u8]) -> Result<u32, PlatformError> {
    let sys = &platform.sys;
    let wanted = String::from_utf8_lossy(name);
    let driver = lock(&sys.drivers).get(&name_key(&wanted)).cloned();
    let _owner = driver.as_deref().map(SimDriver::owner_gate);
    let _loader = lock(&sys.loader);
    let image = lock(&sys.images)
        .iter()
        .find(|i| i.name().eq_ignore_ascii_case(&wanted))
        .cloned()
        .ok_or(PlatformError::NotFound)?;
    let verifier = sys.verifier().ok_or(PlatformError::Unsupported)?;
    let id = match attached_id(&image) {
        Some(id) => id,
        None => verifier
            .driver_attached(image.name().as_bytes(), image.base(), image.size())
            .ok_or(PlatformError::NoResources)?,
    };
    let result = patch(platform, &image);
    verifier.drivers().note_attach(id, &result);
    let patched = result.inspect_err(|_| {
        if attached_id(&image).is_none() {
            verifier.driver_detached(id, true);
        }
    })?;
    image.set_driver_id(id.0);
    Ok(patched)
}

/// Builds (once) and applies the image's interception plan; returns the slots that hold
/// the hooks.
fn patch(platform: &HostPlatform, image: &SimImage) -> Result<u32, PlatformError> {
    let mut plan_slot = lock(&image.plan);
    let mut plan = match *plan_slot {
        Some(p) => p,
        None => {
            let pe = PeImage::parse(image.bytes()).map_err(|_| PlatformError::BadImage)?;
            let base = usize::try_from(image.base()).map_err(|_| PlatformError::BadImage)?;
            Plan::for_image(base, &pe, None, &HOOKS)
                .map_err(|_| PlatformError::BadImage)?
                .0
        }
    };
    // The same site checks as the kernel: never a code, discardable, pageable or unbound
    // slot. Every simulated page is resident.
    let pe = PeImage::parse(image.bytes()).map_err(|_| PlatformError::BadImage)?;
    // SAFETY: the image is loaded and stays loaded for the call (loader lock held).
    unsafe { plan.check_sites(&pe, platform, |_| true, iosv::intercept::is_bound_value) }
        .map_err(PlatformError::Refused)?;
    // From the first slot write on, iosv.sys could be called through a slot at any time:
    // the same unload policy as the kernel.
    if let Some(v) = platform.sys.verifier() {
        v.block_unload();
    }
    // SAFETY: the image is loaded (its rundown has not started: the loader lock is held
    // and unloads take it) and stays loaded for the call; the hooks are the simulated
    // iosv.sys addresses the simulated drivers dispatch on, ready to be "called".
    let report = unsafe { plan.attach(platform) };
    *plan_slot = Some(plan);
    let hooked = report
        .outcomes()
        .iter()
        .filter(|o| {
            matches!(
                o.outcome,
                Outcome::Patched { .. } | Outcome::AlreadyAttached
            )
        })
        .count();
    if report.is_clean() {
        Ok(u32::try_from(hooked).unwrap_or(u32::MAX))
    } else {
        Err(PlatformError::SlotChanged)
    }
}

/// Restores the image's slots; returns how many were restored.
fn unpatch(platform: &HostPlatform, image: &SimImage) -> Result<u32, PlatformError> {
    let mut plan_slot = lock(&image.plan);
    let Some(mut plan) = *plan_slot else {
        return Ok(0);
    };
    // SAFETY: the image is loaded and stays loaded for the call (loader lock held).
    let report = unsafe { plan.detach(platform) };
    *plan_slot = if plan.is_attached() { Some(plan) } else { None };
    let restored = report.restored();
    if report.is_clean() {
        Ok(u32::try_from(restored).unwrap_or(u32::MAX))
    } else {
        Err(PlatformError::SlotChanged)
    }
}

/// At an unload iosv reports the driver's mappings still live (IOSV009): count the
/// global ones the driver leaks through iosv that iosv has not reported yet.
fn expect_unload_leaks(sys: &System, driver: &SimDriver) {
    let mut n = 0u64;
    for (h, _) in lock(&driver.globals).iter_mut() {
        if h.tracked && !h.reported {
            h.reported = true;
            n = n.saturating_add(1);
        }
    }
    for _ in 0..n {
        sys.inject(RuleId::LeakOnUnload, &driver.name);
    }
}

/// Detaches iosv from the loaded image `name` (the platform side of IOCTL_DETACH).
pub(crate) fn detach_image(platform: &HostPlatform, name: &[u8]) -> Result<u32, PlatformError> {
    let sys = &platform.sys;
    let wanted = String::from_utf8_lossy(name);
    let owner = lock(&sys.drivers).get(&name_key(&wanted)).cloned();
    let _owner = owner.as_deref().map(SimDriver::owner_gate);
    let _loader = lock(&sys.loader);
    let image = lock(&sys.images)
        .iter()
        .find(|i| i.name().eq_ignore_ascii_case(&wanted))
        .cloned()
        .ok_or(PlatformError::NotFound)?;
    let Some(id) = attached_id(&image) else {
        return Ok(0);
    };
    let restored = unpatch(platform, &image)?;
    // Drain: calls that read a hook address before the restore finish (bounded wait).
    drain(&image);
    let driver = lock(&sys.drivers).get(&name_key(image.name())).cloned();
    if let Some(d) = driver {
        expect_detach_leaks(sys, &d);
    }
    if let Some(v) = sys.verifier() {
        v.driver_detached(id, true);
    }
    image.set_driver_id(0);
    Ok(restored)
}

fn drain(image: &SimImage) {
    let start = std::time::Instant::now();
    while image.inflight() != 0 && start.elapsed() < std::time::Duration::from_millis(100) {
        std::thread::yield_now();
    }
}

/// At a detach iosv reports every live mapping of the driver (IOSV009, detach flag):
/// count those the driver holds through iosv and iosv has not reported yet.
fn expect_detach_leaks(sys: &System, driver: &Arc<SimDriver>) {
    let mut n = 0u64;
    for (h, _) in lock(&driver.globals).iter_mut() {
        if h.tracked && !h.reported {
            h.reported = true;
            n = n.saturating_add(1);
        }
    }
    let devices: Vec<Arc<Device>> = lock(&sys.devices)
        .values()
        .filter(|d| Arc::ptr_eq(&d.driver, driver))
        .cloned()
        .collect();
    for dev in devices {
        let mut inner = lock(&dev.inner);
        let DeviceInner { bars, runtime, .. } = &mut *inner;
        for h in bars.iter_mut().flatten().chain(runtime.iter_mut()) {
            if h.tracked && !h.reported {
                h.reported = true;
                n = n.saturating_add(1);
            }
        }
    }
    for _ in 0..n {
        sys.inject(RuleId::LeakOnUnload, &driver.name);
    }
}

impl Host {
    fn driver_ref(&self, driver: &Arc<SimDriver>) -> Result<DriverRef, HostError> {
        let image = lock(&driver.image)
            .clone()
            .ok_or_else(|| HostError::NotLoaded(driver.name.clone()))?;
        Ok(DriverRef {
            sys: Arc::clone(&self.sys),
            verifier: Arc::clone(&self.verifier),
            driver: Arc::clone(driver),
            image,
        })
    }

    fn sim_driver(&self, name: &str) -> Result<Arc<SimDriver>, HostError> {
        lock(&self.sys.drivers)
            .get(&name_key(name))
            .cloned()
            .ok_or_else(|| HostError::UnknownDriver(String::from(name)))
    }

    /// Declares driver `name` with `behaviour` (buggy call rules fire on every
    /// `bug_every`-th runtime I/O operation; 0 means 100). Re-declaring changes the
    /// behaviour.
    pub fn declare_driver(&self, name: &str, behaviour: Behaviour, bug_every: u64) {
        let every = if bug_every == 0 { 100 } else { bug_every };
        let mut drivers = lock(&self.sys.drivers);
        match drivers.get(&name_key(name)) {
            Some(d) => *lock(&d.behaviour) = (behaviour, every),
            None => {
                drivers.insert(
                    name_key(name),
                    Arc::new(SimDriver {
                        name: String::from(name),
                        behaviour: Mutex::new((behaviour, every)),
                        image: Mutex::new(None),
                        globals: Mutex::new(Vec::new()),
                        io_ops: AtomicU64::new(0),
                        iat_in_code: AtomicBool::new(false),
                        gate: RwLock::new(()),
                        starting: AtomicU32::new(0),
                    }),
                );
            }
        }
    }

    /// From its next load on, driver `name`'s image keeps its import tables in a code
    /// section (linked with `/MERGE:.rdata=.text`): iosv must refuse to patch it.
    pub fn link_iat_into_code(&self, name: &str) -> Result<(), HostError> {
        self.sim_driver(name)?
            .iat_in_code
            .store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The loaded driver `name`.
    pub fn driver(&self, name: &str) -> Result<DriverRef, HostError> {
        let d = self.sim_driver(name)?;
        self.driver_ref(&d)
    }

    /// Names of the declared drivers, sorted.
    pub fn driver_names(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sys.drivers)
            .values()
            .map(|d| d.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Loads driver `name` (declaring it well-behaved if it was not declared): a new image
    /// at a new base; if it is an iosv target, iosv registers it and patches its imports;
    /// then its DriverEntry runs.
    pub fn load_driver(&self, name: &str) -> Result<DriverRef, HostError> {
        if lock(&self.sys.drivers).get(&name_key(name)).is_none() {
            self.declare_driver(name, Behaviour::WellBehaved, 0);
        }
        let driver = self.sim_driver(name)?;
        {
            let _loader = lock(&self.sys.loader);
            let mut slot = lock(&driver.image);
            if slot.is_some() {
                return Err(HostError::AlreadyLoaded(String::from(name)));
            }
            let n = self.sys.next_image.fetch_add(1, Ordering::Relaxed);
            let base = n
                .checked_mul(IMAGE_STRIDE)
                .and_then(|o| IMAGE_REGION.checked_add(o))
                .ok_or(HostError::NoResources)?;
            let image = Arc::new(SimImage::with_layout(
                name,
                base,
                driver.iat_in_code.load(Ordering::Relaxed),
            ));
            lock(&self.sys.images).push(Arc::clone(&image));
            if let Some(id) = self
                .verifier
                .image_loaded(name.as_bytes(), base, image.size())
            {
                let result = patch(self.platform(), &image);
                self.verifier.drivers().note_attach(id, &result);
                match result {
                    Ok(_) => image.set_driver_id(id.0),
                    Err(_) => self.verifier.driver_detached(id, true),
                }
            }
            *slot = Some(image);
        }
        let d = self.driver_ref(&driver)?;
        // DriverEntry.
        if driver.behaviour().0 == Behaviour::Buggy(RuleId::LeakOnUnload) {
            let physical = self.auto_window();
            let (base, tracked) =
                d.map_io_space(Routine::DriverEntry, physical, 0x2000, MM_NON_CACHED)?;
            if base != 0 {
                let h = Held {
                    base,
                    size: 0x2000,
                    tracked,
                    device_attr: false,
                    reported: false,
                };
                lock(&driver.globals).push((h, true));
            }
        }
        Ok(d)
    }

    /// Unloads driver `name`: its DriverUnload releases its global mappings (a driver
    /// with the leak-on-unload bug keeps its control block), the image runs down, iosv's
    /// slots are restored and iosv is told (IOSV009 for what is still mapped). Refused
    /// while the driver has devices.
    pub fn unload_driver(&self, name: &str) -> Result<(), HostError> {
        let driver = self.sim_driver(name)?;
        let _owner = driver.owner_gate();
        let d = self.driver_ref(&driver)?;
        if let Some(dev) = lock(&self.sys.devices)
            .values()
            .find(|v| Arc::ptr_eq(&v.driver, &driver))
        {
            return Err(HostError::HasDevices {
                driver: String::from(name),
                device: dev.name.clone(),
            });
        }
        // DriverUnload.
        let globals: Vec<(Held, bool)> = lock(&driver.globals).clone();
        let mut kept = Vec::new();
        for (h, leak) in globals {
            if leak {
                kept.push((h, leak));
            } else {
                d.release(Routine::DriverUnload, &h)?;
            }
        }
        *lock(&driver.globals) = kept;
        let _loader = lock(&self.sys.loader);
        d.image.run_down();
        if let Some(id) = attached_id(&d.image) {
            expect_unload_leaks(&self.sys, &driver);
            // The image goes away: a slot someone else changed does not matter any more.
            let _ = unpatch(self.platform(), &d.image);
            self.verifier.driver_detached(id, false);
            d.image.set_driver_id(0);
        } else if let Some(id) = self.verifier.drivers().find(name.as_bytes()) {
            // iosv was detached from it: the unload removes its mappings still listed as
            // detached (already reported at the detach, not reported again).
            if self
                .verifier
                .drivers()
                .info(id)
                .is_some_and(|i| i.state == DriverState::Gone)
            {
                self.verifier.driver_detached(id, false);
            }
        }
        lock(&self.sys.images).retain(|i| !Arc::ptr_eq(i, &d.image));
        *lock(&driver.image) = None;
        lock(&driver.globals).clear();
        Ok(())
    }

    /// IOCTL_ATTACH for `name`, through the control endpoint. Returns the slots hooked.
    pub fn attach(&self, name: &str) -> Result<u32, HostError> {
        self.attach_ioctl(IOCTL_ATTACH, name)
    }

    /// IOCTL_DETACH for `name`, through the control endpoint. Returns the slots restored.
    pub fn detach(&self, name: &str) -> Result<u32, HostError> {
        self.attach_ioctl(IOCTL_DETACH, name)
    }

    fn attach_ioctl(&self, code: u32, name: &str) -> Result<u32, HostError> {
        let req = DriverNameRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
            name: iosv::protocol::wire_name(name.as_bytes()),
        };
        let mut out = AttachReply::default();
        let r = self.control(code, req.as_bytes(), out.as_mut_bytes());
        match r.status {
            Status::Success => {
                Ok(AttachReply::read_from_bytes(out.as_bytes()).map_or(0, |a| a.slots))
            }
            s => Err(HostError::Control(s)),
        }
    }

    /// A fresh 16 MiB physical window above [`AUTO_PHYSICAL`].
    pub fn auto_window(&self) -> u64 {
        let n = self.sys.next_physical.fetch_add(1, Ordering::Relaxed);
        AUTO_PHYSICAL.wrapping_add(n.wrapping_mul(0x100_0000))
    }

    /// Two BARs in a fresh physical window: 64 KiB and 4 KiB, both MmNonCached.
    pub fn auto_bars(&self) -> Vec<Bar> {
        let w = self.auto_window();
        std::vec![
            Bar {
                physical: w,
                size: 0x1_0000,
                cache: MM_NON_CACHED
            },
            Bar {
                physical: w.wrapping_add(0x40_0000),
                size: 0x1000,
                cache: MM_NON_CACHED
            },
        ]
    }

    /// A new actor (see [`Actor`]) whose generator is seeded with `seed`.
    pub fn actor(&self, seed: u64) -> Actor {
        let index = self.sys.next_actor.fetch_add(1, Ordering::Relaxed);
        Actor {
            rng: Rng::new(seed ^ u64::from(index).wrapping_mul(0x9E37_79B9)),
            index,
            bad_parameter: 0,
            double_unmap: 0,
            private_pages: None,
        }
    }

    /// Adds device `name` of driver `driver` (which must be loaded) with `bars`.
    pub fn add_device(
        &self,
        name: &str,
        driver: &str,
        bars: &[Bar],
    ) -> Result<Arc<Device>, HostError> {
        let drv = self.sim_driver(driver)?;
        self.driver_ref(&drv)?;
        let mut devices = lock(&self.sys.devices);
        if devices.contains_key(name) {
            return Err(HostError::DeviceExists(String::from(name)));
        }
        let n = self.sys.next_device.fetch_add(1, Ordering::Relaxed);
        let dev = Arc::new(Device {
            name: String::from(name),
            id: DEVICE_OBJECTS.wrapping_add(n.wrapping_mul(0x200)),
            driver: drv,
            bars: bars.to_vec(),
            inner: Mutex::new(DeviceInner {
                state: PnpState::Added,
                bars: std::vec![None; bars.len()],
                runtime: Vec::new(),
            }),
        });
        devices.insert(String::from(name), Arc::clone(&dev));
        Ok(dev)
    }

    /// The device named `name`.
    pub fn device(&self, name: &str) -> Result<Arc<Device>, HostError> {
        lock(&self.sys.devices)
            .get(name)
            .cloned()
            .ok_or_else(|| HostError::UnknownDevice(String::from(name)))
    }

    /// Page counts no device BAR, automatic BAR, runtime window or bug window of the
    /// simulated drivers spans: `count` of them, smallest first (from 6 pages up). Used to
    /// give each concurrent [`Actor`] a private, realistic page count.
    pub fn private_page_counts(&self, count: usize) -> Vec<u64> {
        let mut used: std::collections::HashSet<u64> = (0..=MAX_RUNTIME_PAGES).collect();
        used.extend([0x1_0000 / PAGE_SIZE, 1]);
        for dev in lock(&self.sys.devices).values() {
            used.extend(
                dev.bars
                    .iter()
                    .filter_map(|b| super::mm::page_count(b.physical, b.size)),
            );
        }
        (MAX_RUNTIME_PAGES.saturating_add(1)..)
            .filter(|p| !used.contains(p))
            .take(count)
            .collect()
    }

    /// The devices of driver `driver`, by name.
    pub fn devices_of(&self, driver: &str) -> Vec<Arc<Device>> {
        lock(&self.sys.devices)
            .values()
            .filter(|d| d.driver.name.eq_ignore_ascii_case(driver))
            .cloned()
            .collect()
    }

    fn event(&self, d: &DriverRef, dev: &Device, e: DeviceEvent) -> bool {
        match d.driver_id() {
            Some(id) => {
                self.verifier.device_event(id, dev.id, e);
                true
            }
            None => false,
        }
    }

    /// Sends IRP_MN_START_DEVICE: the start routine maps every BAR at PASSIVE_LEVEL. With
    /// `complete == false` the start stays pending until [`Host::complete_start`]. Returns
    /// false if a map failed (the routine unmapped what it had mapped and the start failed).
    pub fn start_device(&self, dev: &Device, complete: bool) -> Result<bool, HostError> {
        // Before the device lock: a borrower of the driver may wait on that lock.
        let _owner = dev.driver.owner_gate();
        let mut inner = lock(&dev.inner);
        let previous = inner.state;
        if !matches!(previous, PnpState::Added | PnpState::Stopped) {
            return Err(HostError::DeviceState {
                device: dev.name.clone(),
                state: previous,
                operation: "start",
            });
        }
        let d = self.driver_ref(&dev.driver)?;
        dev.driver.starting.fetch_add(1, Ordering::SeqCst);
        let seen = self.event(&d, dev, DeviceEvent::StartBegin);
        inner.state = PnpState::Starting;
        let mut failed = false;
        for (i, bar) in dev.bars.iter().enumerate() {
            let (base, tracked) = thread::with_irql(Irql::PASSIVE, || {
                d.map_io_space(Routine::StartDevice, bar.physical, bar.size, bar.cache)
            })?;
            if base == 0 {
                failed = true;
                break;
            }
            if let Some(slot) = inner.bars.get_mut(i) {
                *slot = Some(Held {
                    base,
                    size: bar.size,
                    tracked,
                    device_attr: tracked && seen,
                    reported: false,
                });
            }
        }
        if failed {
            for h in inner.bars.iter_mut().filter_map(Option::take) {
                d.release(Routine::StartDevice, &h)?;
            }
            self.event(&d, dev, DeviceEvent::StartEnd);
            inner.state = previous;
            dev.driver.starting.fetch_sub(1, Ordering::SeqCst);
            return Ok(false);
        }
        if complete {
            self.event(&d, dev, DeviceEvent::StartEnd);
            inner.state = PnpState::Started;
            dev.driver.starting.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(true)
    }

    /// Completes a start left pending by `start_device(dev, false)`.
    pub fn complete_start(&self, dev: &Device) -> Result<(), HostError> {
        let mut inner = lock(&dev.inner);
        if inner.state != PnpState::Starting {
            return Err(HostError::DeviceState {
                device: dev.name.clone(),
                state: inner.state,
                operation: "complete the start of",
            });
        }
        let d = self.driver_ref(&dev.driver)?;
        self.event(&d, dev, DeviceEvent::StartEnd);
        inner.state = PnpState::Started;
        dev.driver.starting.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    /// Releases what the device holds from its `routine`: runtime windows, then BARs,
    /// leaking BAR 0 if `leak_bar0`. Returns the leaked mapping, if any.
    fn release_all(
        d: &DriverRef,
        inner: &mut DeviceInner,
        routine: Routine,
        leak_bar0: bool,
    ) -> Result<Option<Held>, HostError> {
        for h in core::mem::take(&mut inner.runtime) {
            d.release(routine, &h)?;
        }
        let mut leaked = None;
        for (i, slot) in inner.bars.iter_mut().enumerate() {
            if let Some(h) = slot.take() {
                if i == 0 && leak_bar0 {
                    leaked = Some(h);
                } else {
                    d.release(routine, &h)?;
                }
            }
        }
        Ok(leaked)
    }

    /// The common part of stop, surprise removal and remove, once the state was checked:
    /// the driver's routine releases what the device holds (keeping BAR 0 if the driver
    /// leaks on `t.rule`, or `force_leak`), the PnP event reaches the engine, the device
    /// takes its new state, and an injected leak is counted. Returns whether it was.
    fn tear_down(
        &self,
        dev: &Device,
        inner: &mut DeviceInner,
        t: Teardown,
        force_leak: bool,
    ) -> Result<bool, HostError> {
        let d = self.driver_ref(&dev.driver)?;
        let leak = force_leak || dev.driver.behaviour().0 == Behaviour::Buggy(t.rule);
        let leaked = Self::release_all(&d, inner, t.routine, leak)?;
        let seen = self.event(&d, dev, t.event);
        inner.state = t.state;
        Ok(self.count_leak(t.rule, &d, leaked, seen))
    }

    fn count_leak(&self, rule: RuleId, d: &DriverRef, leaked: Option<Held>, seen: bool) -> bool {
        match leaked {
            Some(h) if seen && h.tracked && h.device_attr && !h.reported => {
                self.sys.inject(rule, d.name());
                true
            }
            _ => false,
        }
    }

    /// Sends IRP_MN_STOP_DEVICE: the stop routine unmaps the runtime windows and the BARs
    /// (a leak-on-stop driver keeps BAR 0 mapped and forgets it).
    pub fn stop_device(&self, dev: &Device) -> Result<(), HostError> {
        self.stop_inner(dev, false).map(|_| ())
    }

    fn stop_inner(&self, dev: &Device, force_leak: bool) -> Result<bool, HostError> {
        let mut inner = lock(&dev.inner);
        if inner.state != PnpState::Started {
            return Err(HostError::DeviceState {
                device: dev.name.clone(),
                state: inner.state,
                operation: "stop",
            });
        }
        self.tear_down(dev, &mut inner, Teardown::STOP, force_leak)
    }

    /// Sends IRP_MN_SURPRISE_REMOVAL: the routine unmaps everything (a leak-on-remove
    /// driver keeps BAR 0).
    pub fn surprise_remove_device(&self, dev: &Device) -> Result<(), HostError> {
        self.surprise_inner(dev, false).map(|_| ())
    }

    fn surprise_inner(&self, dev: &Device, force_leak: bool) -> Result<bool, HostError> {
        let mut inner = lock(&dev.inner);
        if !matches!(
            inner.state,
            PnpState::Started | PnpState::Stopped | PnpState::Added
        ) {
            return Err(HostError::DeviceState {
                device: dev.name.clone(),
                state: inner.state,
                operation: "surprise-remove",
            });
        }
        self.tear_down(dev, &mut inner, Teardown::SURPRISE_REMOVAL, force_leak)
    }

    /// Sends IRP_MN_REMOVE_DEVICE: the routine unmaps whatever is left (a leak-on-remove
    /// driver keeps BAR 0) and the device object is deleted.
    pub fn remove_device(&self, dev: &Device) -> Result<(), HostError> {
        self.remove_inner(dev, false).map(|_| ())
    }

    fn remove_inner(&self, dev: &Device, force_leak: bool) -> Result<bool, HostError> {
        let mut inner = lock(&dev.inner);
        if matches!(inner.state, PnpState::Removed | PnpState::Starting) {
            return Err(HostError::DeviceState {
                device: dev.name.clone(),
                state: inner.state,
                operation: "remove",
            });
        }
        let counted = self.tear_down(dev, &mut inner, Teardown::REMOVE, force_leak)?;
        let mut devices = lock(&self.sys.devices);
        if devices
            .get(&dev.name)
            .is_some_and(|v| core::ptr::eq(Arc::as_ptr(v), dev))
        {
            devices.remove(&dev.name);
        }
        Ok(counted)
    }

    /// Unmaps the runtime windows the device holds.
    pub fn release_runtime(&self, dev: &Device) -> Result<(), HostError> {
        let mut inner = lock(&dev.inner);
        if inner.runtime.is_empty() {
            return Ok(());
        }
        let d = self.driver_ref(&dev.driver)?;
        for h in core::mem::take(&mut inner.runtime) {
            d.release(Routine::WorkItem, &h)?;
        }
        Ok(())
    }

    /// One runtime I/O operation of the device's driver: map a window of a BAR (with
    /// `MmMapIoSpace` or `MmMapIoSpaceEx`, at PASSIVE or DISPATCH level) or unmap one it
    /// holds (at PASSIVE or APC level, exact size). A driver with a buggy call behaviour
    /// commits its bug instead on every `bug_every`-th operation.
    pub fn device_io(&self, dev: &Arc<Device>, actor: &mut Actor) -> Result<(), HostError> {
        let (behaviour, every) = dev.driver.behaviour();
        if let Behaviour::Buggy(rule) = behaviour {
            if !matches!(
                rule,
                RuleId::LeakOnStop | RuleId::LeakOnRemove | RuleId::LeakOnUnload
            ) {
                let n = dev
                    .driver
                    .io_ops
                    .fetch_add(1, Ordering::Relaxed)
                    .wrapping_add(1);
                if n.checked_rem(every).unwrap_or(1) == 0 {
                    let d = self.driver_ref(&dev.driver)?;
                    return match self.commit(rule, &d, Some(dev), None, actor) {
                        Err(HostError::NoForeignDriver) => Ok(()),
                        r => r.map(|_| ()),
                    };
                }
            }
        }
        let mut inner = lock(&dev.inner);
        if inner.state != PnpState::Started {
            return Err(HostError::DeviceState {
                device: dev.name.clone(),
                state: inner.state,
                operation: "do I/O on",
            });
        }
        let d = self.driver_ref(&dev.driver)?;
        let rng = &mut actor.rng;
        let map = inner.runtime.is_empty() || inner.runtime.len() < MAX_RUNTIME && rng.chance(0.5);
        if map {
            let Some(bar) = dev
                .bars
                .get(usize::try_from(rng.below(dev.bars.len() as u64)).unwrap_or(0))
                .copied()
            else {
                return Ok(());
            };
            let bar_pages = bar.size.div_ceil(PAGE_SIZE).max(1);
            let page = rng.below(bar_pages);
            let mut physical = bar.physical.wrapping_add(page.wrapping_mul(PAGE_SIZE));
            let room = bar.size.saturating_sub(page.wrapping_mul(PAGE_SIZE));
            if room > 0x100 && rng.chance(0.25) {
                physical = physical.wrapping_add(rng.below(0x80).wrapping_mul(8));
            }
            let room = bar.physical.wrapping_add(bar.size).saturating_sub(physical);
            let size = rng.range(1, room.min(0x4000)).max(1);
            let dispatch = rng.chance(0.25);
            let (irql, routine) = if dispatch {
                (Irql::DISPATCH, Routine::Dpc)
            } else {
                (Irql::PASSIVE, Routine::Dispatch)
            };
            let ex = rng.chance(1.0 / 3.0);
            let (base, tracked) = thread::with_irql(irql, || {
                if ex {
                    d.map_io_space_ex_resolved(routine, physical, size, class_protect(bar.cache))
                } else {
                    d.map_io_space(routine, physical, size, bar.cache)
                }
            })?;
            if base != 0 {
                inner.runtime.push(Held {
                    base,
                    size,
                    tracked,
                    device_attr: false,
                    reported: false,
                });
            }
        } else {
            let i = usize::try_from(rng.below(inner.runtime.len() as u64)).unwrap_or(0);
            if i < inner.runtime.len() {
                let h = inner.runtime.swap_remove(i);
                let (irql, routine) = if rng.chance(0.5) {
                    (Irql::APC, Routine::WorkItem)
                } else {
                    (Irql::PASSIVE, Routine::Dispatch)
                };
                thread::with_irql(irql, || d.release(routine, &h))?;
            }
        }
        Ok(())
    }

    /// Performs one instance of `rule`'s bug by driver `driver` (on `device` for the
    /// rules that need one: leak-on-stop, leak-on-remove; cache-conflict uses the device's
    /// BAR 0 when given, else a scratch window). Returns whether it was counted in
    /// [`Host::injected`] (it reached iosv). Leak-on-remove leaves a new device of the same
    /// name added; leak-on-unload removes the driver's devices, unloads and reloads it and
    /// adds (and starts) them again.
    pub fn commit_bug(
        &self,
        rule: RuleId,
        driver: &str,
        device: Option<&str>,
        actor: &mut Actor,
    ) -> Result<bool, HostError> {
        let d = self.driver(driver)?;
        let dev = device.map(|n| self.device(n)).transpose()?;
        self.commit(rule, &d, dev.as_ref(), None, actor)
    }

    /// As [`Host::commit_bug`], with the second driver of IOSV012 named (`foreign`;
    /// default: another loaded driver iosv is attached to).
    pub fn commit_bug_with(
        &self,
        rule: RuleId,
        driver: &str,
        device: Option<&str>,
        foreign: Option<&str>,
        actor: &mut Actor,
    ) -> Result<bool, HostError> {
        let d = self.driver(driver)?;
        let dev = device.map(|n| self.device(n)).transpose()?;
        let f = foreign.map(|n| self.driver(n)).transpose()?;
        self.commit(rule, &d, dev.as_ref(), f.as_ref(), actor)
    }

    fn counted(&self, rule: RuleId, blamed: &DriverRef, reached: bool) -> bool {
        if reached {
            self.sys.inject(rule, blamed.name());
        }
        reached
    }

    /// The loaded drivers other than `d` that iosv is attached to, by name.
    fn foreign_drivers(&self, d: &DriverRef) -> Vec<DriverRef> {
        let drivers: Vec<Arc<SimDriver>> = {
            let mut v: Vec<Arc<SimDriver>> = lock(&self.sys.drivers).values().cloned().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        drivers
            .iter()
            .filter(|o| !Arc::ptr_eq(o, &d.driver))
            .filter_map(|o| self.driver_ref(o).ok())
            .filter(|o| o.driver_id().is_some() && o.is_loaded())
            .collect()
    }

    fn foreign_for(&self, d: &DriverRef) -> Result<DriverRef, HostError> {
        self.foreign_drivers(d)
            .into_iter()
            .next()
            .ok_or(HostError::NoForeignDriver)
    }

    pub(crate) fn commit(
        &self,
        rule: RuleId,
        d: &DriverRef,
        dev: Option<&Arc<Device>>,
        foreign: Option<&DriverRef>,
        actor: &mut Actor,
    ) -> Result<bool, HostError> {
        match rule {
            RuleId::UnmapSizeMismatch => {
                let (p, size) = actor.window();
                thread::with_irql(Irql::PASSIVE, || {
                    let h = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
                    let reached = d.unmap_io_space(
                        Routine::Dispatch,
                        h.base,
                        size.saturating_add(PAGE_SIZE),
                    )?;
                    Ok(self.counted(rule, d, h.tracked && reached))
                })
            }
            RuleId::UnmapIrql => {
                let (p, size) = actor.window();
                let h = thread::with_irql(Irql::PASSIVE, || {
                    d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)
                })?;
                let reached = thread::with_irql(DIRQL_UNMAP, || d.release(Routine::Isr, &h))?;
                Ok(self.counted(rule, d, h.tracked && reached))
            }
            RuleId::MapIrql => {
                let (p, size) = actor.window();
                let (base, hooked) = thread::with_irql(DIRQL_MAP, || {
                    d.map_io_space(Routine::Isr, p, size, MM_NON_CACHED)
                })?;
                if base != 0 {
                    thread::with_irql(Irql::PASSIVE, || {
                        d.unmap_io_space(Routine::Dispatch, base, size)
                    })?;
                }
                Ok(self.counted(rule, d, hooked))
            }
            RuleId::UnmapUnknown => {
                let n = self.sys.next_unknown.fetch_add(1, Ordering::Relaxed);
                let address = NEVER_MAPPED_START
                    .wrapping_add(n.wrapping_mul(PAGE_SIZE))
                    .wrapping_add(0x40);
                let reached = thread::with_irql(Irql::PASSIVE, || {
                    d.unmap_io_space(Routine::Dispatch, address, PAGE_SIZE)
                })?;
                Ok(self.counted(rule, d, reached))
            }
            RuleId::DoubleUnmap => {
                // Every other time, when another attached driver is loaded: the stale
                // pointer after address reuse.
                let stale = actor.double_unmap % 2 == 1;
                actor.double_unmap = actor.double_unmap.wrapping_add(1);
                if stale {
                    // The other driver maps in between: borrowed, so its owner cannot
                    // unload it (iosv would report the mapping as its leak) or start one
                    // of its devices (iosv would attribute the mapping to the device)
                    // meanwhile. If none can be borrowed now, a plain double unmap.
                    for other in self.foreign_drivers(d) {
                        let Some(_borrowed) = borrow(&other) else {
                            continue;
                        };
                        if other.driver_id().is_some()
                            && other.driver.starting.load(Ordering::SeqCst) == 0
                        {
                            return self.stale_unmap_after_reuse(d, &other, actor);
                        }
                    }
                }
                let size = actor.private_pages().wrapping_mul(PAGE_SIZE);
                let h = thread::with_irql(Irql::PASSIVE, || {
                    d.hold(Routine::Dispatch, actor.scratch(), size, MM_NON_CACHED)
                })?;
                let first = thread::with_irql(Irql::PASSIVE, || d.release(Routine::Dispatch, &h))?;
                let second =
                    thread::with_irql(Irql::PASSIVE, || d.release(Routine::RemoveDevice, &h))?;
                Ok(self.counted(rule, d, h.tracked && first && second))
            }
            RuleId::UnmapInterior => {
                let (p, size) = actor.window();
                let h = thread::with_irql(Irql::PASSIVE, || {
                    d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)
                })?;
                let reached = thread::with_irql(Irql::PASSIVE, || {
                    d.unmap_io_space(Routine::Dispatch, h.base.wrapping_add(PAGE_SIZE), PAGE_SIZE)
                })?;
                thread::with_irql(Irql::PASSIVE, || d.release(Routine::Dispatch, &h))?;
                Ok(self.counted(rule, d, h.tracked && reached))
            }
            RuleId::LeakOnStop => {
                let dev = dev.ok_or(HostError::NeedsDevice(rule))?;
                self.ensure_started(dev)?;
                thread::with_irql(Irql::PASSIVE, || self.stop_inner(dev, true))
            }
            RuleId::LeakOnRemove => {
                let dev = dev.ok_or(HostError::NeedsDevice(rule))?;
                self.ensure_started(dev)?;
                let counted = thread::with_irql(Irql::PASSIVE, || self.surprise_inner(dev, true))?;
                let more = thread::with_irql(Irql::PASSIVE, || self.remove_inner(dev, false))?;
                self.add_device(&dev.name, &dev.driver.name, &dev.bars)?;
                Ok(counted || more)
            }
            RuleId::LeakOnUnload => thread::with_irql(Irql::PASSIVE, || self.leak_on_unload(d)),
            RuleId::CacheConflict => {
                let bar0 = dev.and_then(|dev| {
                    let inner = lock(&dev.inner);
                    match (
                        inner.state,
                        inner.bars.first().copied().flatten(),
                        dev.bars.first(),
                    ) {
                        (PnpState::Started, Some(h), Some(bar)) if h.tracked => Some((h, *bar)),
                        _ => None,
                    }
                });
                thread::with_irql(Irql::PASSIVE, || match bar0 {
                    Some((_, bar)) => {
                        let size = bar.size.min(PAGE_SIZE);
                        let (base, hooked) = d.map_io_space(
                            Routine::Dispatch,
                            bar.physical,
                            size,
                            other_class(bar.cache),
                        )?;
                        if base != 0 {
                            d.unmap_io_space(Routine::Dispatch, base, size)?;
                        }
                        Ok(self.counted(rule, d, hooked && base != 0))
                    }
                    None => {
                        let p = actor
                            .scratch()
                            .wrapping_add(0x2000_0000)
                            .wrapping_add(actor.rng.below(0x1000).wrapping_mul(PAGE_SIZE));
                        let first = d.hold(Routine::Dispatch, p, PAGE_SIZE, MM_NON_CACHED)?;
                        let (base, hooked) =
                            d.map_io_space(Routine::Dispatch, p, PAGE_SIZE, MM_CACHED)?;
                        if base != 0 {
                            d.unmap_io_space(Routine::Dispatch, base, PAGE_SIZE)?;
                        }
                        d.release(Routine::Dispatch, &first)?;
                        Ok(self.counted(rule, d, first.tracked && hooked && base != 0))
                    }
                })
            }
            RuleId::MapBadParameters => {
                let variant = actor.bad_parameter % 3;
                actor.bad_parameter = actor.bad_parameter.wrapping_add(1);
                let (p, size) = actor.window();
                thread::with_irql(Irql::PASSIVE, || {
                    let (base, hooked, used) = match variant {
                        0 => {
                            let (b, h) = d.map_io_space(Routine::Dispatch, p, size, 7)?;
                            (b, h, size)
                        }
                        1 => {
                            let (b, h) = d.map_io_space(Routine::Dispatch, p, 0, MM_NON_CACHED)?;
                            (b, h, 0)
                        }
                        _ => {
                            let prot = PAGE_READWRITE | PAGE_NOCACHE | PAGE_WRITECOMBINE;
                            let (b, h) = d.map_io_space_ex(Routine::Dispatch, p, size, prot)?;
                            (b, h, size)
                        }
                    };
                    if base != 0 {
                        d.unmap_io_space(Routine::Dispatch, base, used)?;
                    }
                    Ok(self.counted(rule, d, hooked))
                })
            }
            RuleId::UnmapForeign => {
                let other = match foreign {
                    Some(f) => f.clone(),
                    None => self.foreign_for(d)?,
                };
                // Borrowed, so its owner cannot unload (or detach) it between its unmap
                // and the count; if it is busy now, no bug is committed.
                let Some(_borrowed) = borrow(&other) else {
                    return Ok(false);
                };
                let attached = other.driver_id().is_some();
                let (p, size) = actor.window();
                thread::with_irql(Irql::PASSIVE, || {
                    // An address `other` mapped or unmapped itself before would make its
                    // unmap a stale pointer after reuse (IOSV005, as iosv judges it): the
                    // owner takes another mapping instead, a bounded number of times.
                    let mut spare = Vec::new();
                    let mut h = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
                    while spare.len() < 8 && self.was_used_by(h.base, &other) {
                        let next = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
                        spare.push(core::mem::replace(&mut h, next));
                    }
                    let unambiguous = !self.was_used_by(h.base, &other);
                    let reached = other.release(Routine::Dispatch, &h);
                    // The owner's mapping is still mapped if iosv contained the call or
                    // the call was never made: the owner unmaps it itself (and its spares,
                    // whatever happened). Not asked of the Mm: once the call unmapped it,
                    // another thread may already have been handed the same base.
                    let kept = match reached {
                        Ok(true) => self.verifier.settings().containment(),
                        Ok(false) => false,
                        Err(_) => true,
                    };
                    if kept {
                        d.release(Routine::Dispatch, &h)?;
                    }
                    for s in &spare {
                        d.release(Routine::Dispatch, s)?;
                    }
                    let reached = reached?;
                    let rule = if unambiguous {
                        rule
                    } else {
                        RuleId::DoubleUnmap
                    };
                    Ok(self.counted(rule, &other, h.tracked && reached && attached))
                })
            }
            RuleId::UnmapPageBase => {
                // Half a page into a page of the window, one page long: the mapping spans
                // two pages, and MmUnmapIoSpace(PAGE_ALIGN(base), PAGE_SIZE) would unmap one.
                let (p, _) = actor.window();
                let p = (p & !(PAGE_SIZE - 1)) | 0x800;
                thread::with_irql(Irql::PASSIVE, || {
                    let h = d.hold(Routine::Dispatch, p, PAGE_SIZE, MM_NON_CACHED)?;
                    let reached =
                        d.unmap_io_space(Routine::Dispatch, h.base & !(PAGE_SIZE - 1), PAGE_SIZE)?;
                    Ok(self.counted(rule, d, h.tracked && reached))
                })
            }
            RuleId::StaleEntry => {
                let size = actor.private_pages().wrapping_mul(PAGE_SIZE);
                let p = actor.scratch();
                thread::with_irql(Irql::PASSIVE, || {
                    let first = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
                    d.unmap_io_space_direct(Routine::WorkItem, first.base, size)?;
                    let second = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
                    d.release(Routine::Dispatch, &second)?;
                    Ok(self.counted(
                        rule,
                        d,
                        first.tracked && second.tracked && first.base == second.base,
                    ))
                })
            }
        }
    }

    /// Whether iosv remembers `other` mapping or unmapping a mapping at `base` (a
    /// graveyard tombstone naming it): `other` unmapping a live mapping there is then its
    /// stale pointer after reuse. A tombstone of a base that is live cannot appear
    /// meanwhile (only an unmap of that base writes one), so the answer stays true or
    /// becomes false (evicted) — never the other way.
    fn was_used_by(&self, base: u64, other: &DriverRef) -> bool {
        let Some(id) = other.driver_id() else {
            return false;
        };
        self.verifier
            .graveyard()
            .find(base)
            .is_some_and(|t| t.driver == id.0 || t.unmapped_by == id.0)
    }

    /// IOSV005 through a stale pointer: `d` maps and unmaps (its private page count), Mm
    /// hands the block to `other`, and `d` unmaps its old base again. Contained, `other`'s
    /// mapping survives and `other` unmaps it cleanly; without containment the stale
    /// call tore it down and `other` has nothing left to unmap. Blamed on `d` either way
    /// (a plain double unmap if another thread took the block meanwhile).
    fn stale_unmap_after_reuse(
        &self,
        d: &DriverRef,
        other: &DriverRef,
        actor: &mut Actor,
    ) -> Result<bool, HostError> {
        let size = actor.private_pages().wrapping_mul(PAGE_SIZE);
        let p = actor.scratch();
        thread::with_irql(Irql::PASSIVE, || {
            let mine = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
            let first = d.release(Routine::Dispatch, &mine)?;
            let theirs = other.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
            let stale = d.release(Routine::RemoveDevice, &mine)?;
            if self.mm().is_mapped(theirs.base) {
                other.release(Routine::Dispatch, &theirs)?;
            }
            Ok(self.counted(RuleId::DoubleUnmap, d, mine.tracked && first && stale))
        })
    }

    fn ensure_started(&self, dev: &Device) -> Result<(), HostError> {
        match dev.state() {
            PnpState::Started => Ok(()),
            PnpState::Added | PnpState::Stopped => {
                if thread::with_irql(Irql::PASSIVE, || self.start_device(dev, true))? {
                    Ok(())
                } else {
                    Err(HostError::MapFailed("BAR at start"))
                }
            }
            state => Err(HostError::DeviceState {
                device: dev.name.clone(),
                state,
                operation: "start",
            }),
        }
    }

    fn leak_on_unload(&self, d: &DriverRef) -> Result<bool, HostError> {
        let name = d.driver.name.clone();
        let devices = self.devices_of(&name);
        let mut saved = Vec::new();
        for dev in devices {
            let state = dev.state();
            if state == PnpState::Starting {
                self.complete_start(&dev)?;
            }
            if matches!(state, PnpState::Started | PnpState::Starting) {
                self.stop_inner(&dev, false)?;
            }
            self.remove_inner(&dev, false)?;
            saved.push((
                dev.name.clone(),
                dev.bars.clone(),
                matches!(state, PnpState::Started | PnpState::Starting),
            ));
        }
        let physical = self.auto_window();
        let (base, tracked) = d.map_io_space(Routine::Dispatch, physical, 0x3000, MM_NON_CACHED)?;
        if base == 0 {
            return Err(HostError::MapFailed("control block"));
        }
        let attached = d.driver_id().is_some();
        lock(&d.driver.globals).push((
            Held {
                base,
                size: 0x3000,
                tracked,
                device_attr: false,
                reported: false,
            },
            true,
        ));
        let before = self
            .injected()
            .get(&(RuleId::LeakOnUnload, name.clone()))
            .copied()
            .unwrap_or(0);
        self.unload_driver(&name)?;
        let after = self
            .injected()
            .get(&(RuleId::LeakOnUnload, name.clone()))
            .copied()
            .unwrap_or(0);
        self.load_driver(&name)?;
        for (dev_name, bars, started) in saved {
            let dev = self.add_device(&dev_name, &name, &bars)?;
            if started {
                self.start_device(&dev, true)?;
            }
        }
        Ok(attached && tracked && after > before)
    }
}

/// What one kind of device teardown does: the driver routine that runs, the PnP event
/// the engine sees, the state the device ends in, and the leak rule it can break.
#[derive(Clone, Copy)]
struct Teardown {
    routine: Routine,
    event: DeviceEvent,
    state: PnpState,
    rule: RuleId,
}

impl Teardown {
    const STOP: Teardown = Teardown {
        routine: Routine::StopDevice,
        event: DeviceEvent::Stopped,
        state: PnpState::Stopped,
        rule: RuleId::LeakOnStop,
    };
    const SURPRISE_REMOVAL: Teardown = Teardown {
        routine: Routine::SurpriseRemoval,
        event: DeviceEvent::SurpriseRemoved,
        state: PnpState::SurpriseRemoved,
        rule: RuleId::LeakOnRemove,
    };
    const REMOVE: Teardown = Teardown {
        routine: Routine::RemoveDevice,
        event: DeviceEvent::Removed,
        state: PnpState::Removed,
        rule: RuleId::LeakOnRemove,
    };
}
