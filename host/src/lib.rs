//! The user-mode host: the kernel component hosted in a user process exactly as it runs
//! in the kernel (design.md §7).
//!
//! [`Host`] owns one [`Verifier`] over a [`HostPlatform`] and a simulated system around it:
//!
//! - **IRQL and identity** ([`thread`]): every OS thread has a simulated IRQL that code
//!   raises and lowers, a thread id and a processor index; scenario steps can run as a
//!   fixed simulated thread.
//! - **Memory manager** ([`mm`]): hands out canonical kernel addresses for I/O-space
//!   mappings, reuses freed ones eagerly, and keeps the ground truth of what is mapped,
//!   recording every unmap a real system would not survive as a [`mm::Corruption`].
//! - **Driver images** ([`image`]): each load of a simulated driver is a real little PE32+
//!   image whose import address table the engine's [`intercept`](iosv::intercept) plan
//!   patches through [`SlotAccess`]; drivers call the Mm routines *through* their IAT,
//!   so a call reaches the verifier exactly when the slot holds the hook.
//! - **PnP and drivers** ([`pnp`]): drivers load and unload, devices are added, started,
//!   stopped, surprise-removed and removed, with well-behaved or buggy routines — one bug
//!   per rule IOSV001–IOSV014 ([`Behaviour`]), each injectable on demand
//!   ([`Host::commit_bug`]) with a count of what was injected ([`Host::injected`]).
//! - **Endpoint** ([`endpoint`]): the control codes over a Unix domain socket, for
//!   `iosvctl`.
//! - **Scenarios** ([`scenario`]): TOML scripts of exact sequences and concurrent stress
//!   phases (`docs/scenarios.md`).
//!
//! # Stack capture
//! [`HostPlatform::capture_stack`] reports the *simulated* call chain of the calling
//! thread, not the host process's own frames: innermost first, the return address in the
//! simulated driver's image (its call site of the Mm routine), the entry of the driver
//! routine making the call (`StartDevice`, `DpcRoutine`, ...), the synthetic kernel frame
//! that called that routine ([`image::kernel_frames`]: PnP IRP, DPC dispatcher, ISR, ...)
//! and a frame naming the scenario step. The `skip` argument counts iosv's own frames,
//! which the simulated chain never contains, so it skips nothing. This is cheap (a copy
//! of a thread-local array), deterministic, and yields stacks that name driver routines
//! the way a symbolised kernel stack would.

use iosv::config::StartParams;
use iosv::control::Reply;
use iosv::drivers::DriverId;
use iosv::intercept::{SlotAccess, SlotWriteError};
use iosv::platform::{BugCheck, Irql, Platform, PlatformError};
use iosv::protocol::{
    ClearRequest, ConfigBlock, GetConfigRequest, ListMappingsReply, ListMappingsRequest,
    MappingRecord, ReadViolationsReply, ReadViolationsRequest, StatsReply, StatsRequest, Status,
    ViolationRecord, IOCTL_CLEAR, IOCTL_GET_CONFIG, IOCTL_GET_STATS, IOCTL_LIST_MAPPINGS,
    IOCTL_READ_VIOLATIONS, IOCTL_SET_CONFIG, MF_DETACHED, PROTOCOL_VERSION,
};
use iosv::rules::RuleId;
use iosv::verifier::Verifier;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::string::String;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Instant;
use std::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

pub mod endpoint;
pub mod image;
pub mod mm;
pub mod pnp;
pub mod rng;
pub mod scenario;
pub mod thread;

pub use pnp::{Actor, Bar, Behaviour, Device, DriverRef, PnpState, Routine};

use image::SimImage;
use mm::SimMm;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a host operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The verifier could not allocate its fixed memory.
    OutOfMemory,
    /// No driver of that name was declared or loaded.
    UnknownDriver(String),
    /// The driver is not loaded.
    NotLoaded(String),
    /// The driver is loaded already.
    AlreadyLoaded(String),
    /// The driver cannot unload while it has devices.
    HasDevices {
        /// The driver.
        driver: String,
        /// One of its devices.
        device: String,
    },
    /// No device of that name.
    UnknownDevice(String),
    /// A device of that name exists already.
    DeviceExists(String),
    /// The device is not in a state that allows the operation.
    DeviceState {
        /// The device.
        device: String,
        /// Its state.
        state: PnpState,
        /// The operation refused.
        operation: &'static str,
    },
    /// A map the operation needs returned NULL.
    MapFailed(&'static str),
    /// The bug needs a device and none was given.
    NeedsDevice(RuleId),
    /// IOSV012 needs a second loaded, hooked driver and there is none.
    NoForeignDriver,
    /// A control request failed with this status.
    Control(Status),
    /// A driver's import slot held an address that is neither a hook nor a routine.
    BadCallTarget(u64),
    /// Too many drivers or devices for the simulated system.
    NoResources,
    /// The configuration holds [`MAX_TARGETS`](iosv::protocol::MAX_TARGETS) target names
    /// already; this one does not fit.
    TargetsFull(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::OutOfMemory => write!(f, "the verifier could not allocate its memory"),
            HostError::UnknownDriver(d) => write!(f, "no driver named `{d}`"),
            HostError::NotLoaded(d) => write!(f, "driver `{d}` is not loaded"),
            HostError::AlreadyLoaded(d) => write!(f, "driver `{d}` is already loaded"),
            HostError::HasDevices { driver, device } => {
                write!(f, "driver `{driver}` still has device `{device}`; remove its devices before unloading")
            }
            HostError::UnknownDevice(d) => write!(f, "no device named `{d}`"),
            HostError::DeviceExists(d) => write!(f, "device `{d}` exists already"),
            HostError::DeviceState {
                device,
                state,
                operation,
            } => {
                write!(
                    f,
                    "cannot {operation} device `{device}`: it is {}",
                    state.name()
                )
            }
            HostError::MapFailed(what) => {
                write!(f, "the simulated MmMapIoSpace returned NULL ({what})")
            }
            HostError::NeedsDevice(r) => write!(f, "{} needs a device", r.info().code),
            HostError::NoForeignDriver => {
                write!(
                    f,
                    "IOSV012 needs a second loaded driver that iosv is attached to"
                )
            }
            HostError::Control(s) => write!(
                f,
                "control request failed: {} ({:#010X})",
                s.describe(),
                *s as u32
            ),
            HostError::BadCallTarget(a) => {
                write!(f, "import slot holds {a:#x}, neither a hook nor a routine")
            }
            HostError::NoResources => {
                write!(f, "the simulated system is out of driver or device slots")
            }
            HostError::TargetsFull(name) => write!(
                f,
                "cannot make `{name}` a target: the configuration holds at most {} target drivers",
                iosv::protocol::MAX_TARGETS
            ),
        }
    }
}

impl std::error::Error for HostError {}

/// Expected violation records: (rule, blamed driver name) → count. The blamed driver is
/// the one that made the violating call, except for the leak rules (IOSV007–009), where it
/// is the owner of the leaked mapping — see [`blamed_driver`]. Bugs of a rule whose action
/// is `ignore` when they are committed are not counted (iosv journals nothing for them).
pub type Injected = BTreeMap<(RuleId, String), u64>;

/// The id of the driver a record blames: the owner for leaks, the caller otherwise.
pub fn blamed_driver(r: &ViolationRecord) -> u16 {
    match RuleId::from_number(r.rule) {
        Some(RuleId::LeakOnStop | RuleId::LeakOnRemove | RuleId::LeakOnUnload) => r.owner_id,
        _ => r.driver_id,
    }
}

/// The name a record gives the driver it blames.
pub fn blamed_driver_name(r: &ViolationRecord) -> String {
    let name = if blamed_driver(r) == r.owner_id && r.owner_id != 0 {
        &r.owner_name
    } else {
        &r.driver_name
    };
    String::from_utf8_lossy(iosv::protocol::name_bytes(name)).into_owned()
}

/// The simulated system shared by the [`Host`] and its [`HostPlatform`].
pub(crate) struct System {
    pub(crate) processors: u32,
    origin: Instant,
    process_id: u64,
    pub(crate) mm: SimMm,
    pub(crate) verifier: OnceLock<Weak<Verifier<HostPlatform>>>,
    /// Serialises loads, unloads, attaches and detaches (the loader lock).
    pub(crate) loader: Mutex<()>,
    /// Images loaded now.
    pub(crate) images: Mutex<Vec<Arc<SimImage>>>,
    pub(crate) next_image: AtomicU64,
    pub(crate) drivers: Mutex<HashMap<String, Arc<pnp::SimDriver>>>,
    pub(crate) devices: Mutex<BTreeMap<String, Arc<Device>>>,
    pub(crate) next_device: AtomicU64,
    pub(crate) next_physical: AtomicU64,
    pub(crate) next_unknown: AtomicU64,
    pub(crate) next_actor: AtomicU32,
    breaks: AtomicU64,
    bugchecks: Mutex<Vec<BugCheck>>,
    pub(crate) injected: Mutex<Injected>,
}

impl System {
    pub(crate) fn verifier(&self) -> Option<Arc<Verifier<HostPlatform>>> {
        self.verifier.get().and_then(Weak::upgrade)
    }

    pub(crate) fn image_at(&self, address: u64) -> Option<Arc<SimImage>> {
        lock(&self.images)
            .iter()
            .find(|i| i.contains(address))
            .cloned()
    }

    /// Counts one injected bug, unless the rule's action is `ignore` (then iosv journals
    /// nothing for it).
    pub(crate) fn inject(&self, rule: RuleId, driver: &str) {
        if self
            .verifier()
            .is_some_and(|v| v.settings().action(rule) == iosv::rules::Action::Ignore)
        {
            return;
        }
        let mut m = lock(&self.injected);
        let c = m.entry((rule, String::from(driver))).or_insert(0);
        *c = c.saturating_add(1);
    }
}

/// The [`Platform`] of the user-mode host. Cheap to clone; every clone shares the system.
#[derive(Clone)]
pub struct HostPlatform {
    pub(crate) sys: Arc<System>,
}

impl HostPlatform {
    /// The simulated memory manager.
    pub fn mm(&self) -> &SimMm {
        &self.sys.mm
    }
    /// Debugger breaks requested so far.
    pub fn breaks(&self) -> u64 {
        self.sys.breaks.load(Ordering::Relaxed)
    }
    /// Bug checks requested so far, oldest first.
    pub fn bugchecks(&self) -> Vec<BugCheck> {
        lock(&self.sys.bugchecks).clone()
    }
}

impl Platform for HostPlatform {
    const SIMULATED: bool = true;

    fn current_irql(&self) -> Irql {
        thread::current_irql()
    }
    fn current_processor(&self) -> u32 {
        thread::thread_index()
            .checked_rem(self.sys.processors)
            .unwrap_or(0)
    }
    fn processor_count(&self) -> u32 {
        self.sys.processors
    }
    fn current_process_id(&self) -> u64 {
        self.sys.process_id
    }
    fn current_thread_id(&self) -> u64 {
        thread::thread_id()
    }
    fn now_ns(&self) -> u64 {
        u64::try_from(self.sys.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn capture_stack(&self, _skip: u32, frames: &mut [u64]) -> usize {
        thread::capture_chain(frames)
    }
    fn raise_to_dispatch(&self) -> Irql {
        let old = thread::current_irql();
        if old < Irql::DISPATCH {
            thread::set_irql(Irql::DISPATCH);
        }
        old
    }
    fn lower_irql(&self, previous: Irql) {
        thread::set_irql(previous);
    }
    fn mm_map_io_space(&self, physical: u64, size: usize, cache_type: u32) -> u64 {
        self.sys
            .mm
            .map(physical, size as u64, cache_type, false, true)
    }
    fn mm_map_io_space_ex(&self, physical: u64, size: usize, protect: u32) -> u64 {
        self.sys.mm.map(physical, size as u64, protect, true, true)
    }
    fn mm_unmap_io_space(&self, base: u64, size: usize) {
        self.sys.mm.unmap(base, size as u64, true);
    }
    fn debug_break(&self) {
        self.sys.breaks.fetch_add(1, Ordering::Relaxed);
    }
    fn bugcheck(&self, params: BugCheck) {
        lock(&self.sys.bugchecks).push(params);
    }
    fn attach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        pnp::attach_image(self, image_name)
    }
    fn detach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        pnp::detach_image(self, image_name)
    }
}

impl SlotAccess for HostPlatform {
    unsafe fn read_slot(&self, address: usize) -> usize {
        let address = address as u64;
        self.sys
            .image_at(address)
            .and_then(|i| i.read_word(address))
            .unwrap_or(0) as usize
    }

    unsafe fn compare_exchange_slot(
        &self,
        address: usize,
        current: usize,
        new: usize,
    ) -> Result<(), SlotWriteError> {
        let address = address as u64;
        let image = self.sys.image_at(address).ok_or(SlotWriteError::Failed)?;
        image
            .exchange_word(address, current as u64, new as u64)
            .map_err(|found| match found {
                Some(found) => SlotWriteError::Changed {
                    found: found as usize,
                },
                None => SlotWriteError::Failed,
            })
    }
}

/// A verifier hosted in this process, with its simulated system. See the module docs.
pub struct Host {
    verifier: Arc<Verifier<HostPlatform>>,
    sys: Arc<System>,
}

impl Host {
    /// A host with `params`, as many simulated processors as the machine has.
    ///
    /// # Panics
    /// If the verifier cannot allocate the memory `params` asks for; use
    /// [`Host::try_new`] to handle that.
    pub fn new(params: StartParams) -> Host {
        match Host::try_new(params) {
            Ok(h) => h,
            Err(e) => panic!("iosv host: {e}"),
        }
    }

    /// A host with `params` and as many simulated processors as the machine has.
    pub fn try_new(params: StartParams) -> Result<Host, HostError> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Host::with_processors(params, u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// A host with `params` and `processors` simulated processors (at least 1).
    pub fn with_processors(params: StartParams, processors: u32) -> Result<Host, HostError> {
        let sys = Arc::new(System {
            processors: processors.clamp(1, 4096),
            origin: Instant::now(),
            process_id: u64::from(std::process::id()),
            mm: SimMm::new(),
            verifier: OnceLock::new(),
            loader: Mutex::new(()),
            images: Mutex::new(Vec::new()),
            next_image: AtomicU64::new(0),
            drivers: Mutex::new(HashMap::new()),
            devices: Mutex::new(BTreeMap::new()),
            next_device: AtomicU64::new(0),
            next_physical: AtomicU64::new(0),
            next_unknown: AtomicU64::new(0),
            next_actor: AtomicU32::new(0),
            breaks: AtomicU64::new(0),
            bugchecks: Mutex::new(Vec::new()),
            injected: Mutex::new(BTreeMap::new()),
        });
        let platform = HostPlatform {
            sys: Arc::clone(&sys),
        };
        let verifier =
            Arc::new(Verifier::new(platform, params).map_err(|_| HostError::OutOfMemory)?);
        // The cell is fresh, so this cannot fail; a failure would only disable ATTACH.
        let _ = sys.verifier.set(Arc::downgrade(&verifier));
        Ok(Host { verifier, sys })
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier<HostPlatform> {
        &self.verifier
    }

    /// The platform (simulated Mm, breaks, bug checks).
    pub fn platform(&self) -> &HostPlatform {
        self.verifier.platform()
    }

    /// The simulated memory manager.
    pub fn mm(&self) -> &SimMm {
        &self.sys.mm
    }

    /// Serves one control request, exactly as the device's dispatch routine does.
    pub fn control(&self, code: u32, input: &[u8], output: &mut [u8]) -> Reply {
        iosv::control::control(&self.verifier, code, input, output)
    }

    /// Bugs injected so far (what the verifier is expected to report; see [`Injected`]).
    pub fn injected(&self) -> Injected {
        lock(&self.sys.injected).clone()
    }

    // ---- control helpers ----------------------------------------------------------------

    /// The current configuration (GET_CONFIG).
    pub fn config(&self) -> Result<ConfigBlock, HostError> {
        let req = GetConfigRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
        };
        let mut out = ConfigBlock::default();
        let r = self.control(IOCTL_GET_CONFIG, req.as_bytes(), out.as_mut_bytes());
        match r.status {
            Status::Success => Ok(out),
            s => Err(HostError::Control(s)),
        }
    }

    /// Replaces the configuration (SET_CONFIG).
    pub fn set_config(&self, block: &ConfigBlock) -> Result<(), HostError> {
        let r = self.control(IOCTL_SET_CONFIG, block.as_bytes(), &mut []);
        match r.status {
            Status::Success => Ok(()),
            s => Err(HostError::Control(s)),
        }
    }

    /// Reads the configuration, lets `edit` change it, and writes it back.
    pub fn configure(&self, edit: impl FnOnce(&mut ConfigBlock)) -> Result<(), HostError> {
        let mut b = self.config()?;
        edit(&mut b);
        self.set_config(&b)
    }

    /// Adds `name` to the drivers iosv hooks when they load.
    pub fn add_target(&self, name: &str) -> Result<(), HostError> {
        let mut full = false;
        self.configure(|b| {
            let wire = iosv::protocol::wire_name(name.as_bytes());
            let n = b.target_count as usize;
            let present = b.targets.iter().take(n).any(|t| {
                iosv::drivers::names_equal(iosv::protocol::name_bytes(t), name.as_bytes())
            });
            if !present {
                match b.targets.get_mut(n) {
                    Some(slot) => {
                        *slot = wire;
                        b.target_count = b.target_count.saturating_add(1);
                    }
                    None => full = true,
                }
            }
        })?;
        if full {
            return Err(HostError::TargetsFull(String::from(name)));
        }
        Ok(())
    }

    /// CLEAR with `what` (`CLR_*` bits).
    pub fn clear(&self, what: u32) -> Result<(), HostError> {
        let req = ClearRequest {
            version: PROTOCOL_VERSION,
            what,
        };
        match self.control(IOCTL_CLEAR, req.as_bytes(), &mut []).status {
            Status::Success => Ok(()),
            s => Err(HostError::Control(s)),
        }
    }

    /// The global counters (GET_STATS without per-driver rows).
    pub fn stats(&self) -> Result<StatsReply, HostError> {
        let req = StatsRequest {
            version: PROTOCOL_VERSION,
            max_drivers: 0,
        };
        let mut out = StatsReply::default();
        match self
            .control(IOCTL_GET_STATS, req.as_bytes(), out.as_mut_bytes())
            .status
        {
            Status::Success => Ok(out),
            s => Err(HostError::Control(s)),
        }
    }

    /// Every violation record the journal still holds (READ_VIOLATIONS from cursor 0),
    /// and how many records were lost to overflow on the way.
    pub fn violations(&self) -> Result<(Vec<ViolationRecord>, u64), HostError> {
        let mut cursor = 0u64;
        let mut records = Vec::new();
        let mut lost = 0u64;
        let header = core::mem::size_of::<ReadViolationsReply>();
        let item = core::mem::size_of::<ViolationRecord>();
        let mut buf = std::vec![0u8; header.saturating_add(item.saturating_mul(256))];
        loop {
            let req = ReadViolationsRequest {
                version: PROTOCOL_VERSION,
                max_records: 256,
                cursor,
            };
            let r = self.control(IOCTL_READ_VIOLATIONS, req.as_bytes(), &mut buf);
            if r.status != Status::Success {
                return Err(HostError::Control(r.status));
            }
            let (reply, rest) = ReadViolationsReply::read_from_prefix(&buf)
                .map_err(|_| HostError::Control(Status::InputTooShort))?;
            for chunk in rest.chunks_exact(item).take(reply.count as usize) {
                if let Ok(rec) = ViolationRecord::read_from_bytes(chunk) {
                    records.push(rec);
                }
            }
            lost = lost.saturating_add(reply.lost);
            if reply.count == 0 && reply.next_cursor == cursor || reply.next_cursor >= reply.tail {
                break;
            }
            cursor = reply.next_cursor;
        }
        Ok((records, lost))
    }

    /// Every live mapping the verifier tracks (LIST_MAPPINGS over the whole table), and
    /// how many entries were skipped because they changed under the walk.
    pub fn tracked_mappings(&self) -> Result<(Vec<MappingRecord>, u64), HostError> {
        let mut cursor = 0u64;
        let mut out = Vec::new();
        let mut skipped = 0u64;
        let header = core::mem::size_of::<ListMappingsReply>();
        let item = core::mem::size_of::<MappingRecord>();
        let mut buf = std::vec![0u8; header.saturating_add(item.saturating_mul(512))];
        loop {
            let req = ListMappingsRequest {
                version: PROTOCOL_VERSION,
                max_records: 512,
                cursor,
                ..Default::default()
            };
            let r = self.control(IOCTL_LIST_MAPPINGS, req.as_bytes(), &mut buf);
            if r.status != Status::Success {
                return Err(HostError::Control(r.status));
            }
            let (reply, rest) = ListMappingsReply::read_from_prefix(&buf)
                .map_err(|_| HostError::Control(Status::InputTooShort))?;
            for chunk in rest.chunks_exact(item).take(reply.count as usize) {
                if let Ok(rec) = MappingRecord::read_from_bytes(chunk) {
                    out.push(rec);
                }
            }
            skipped = skipped.saturating_add(u64::from(reply.skipped));
            if reply.done != 0 {
                break;
            }
            cursor = reply.next_cursor;
        }
        Ok((out, skipped))
    }

    /// Checks the run so far against what was injected: every expected violation reported
    /// exactly as often as injected, nothing else reported, nothing lost, the verifier's
    /// table equal to the simulated Mm's mappings made through iosv, and (when
    /// `containment_was_on`) no corruption of the simulated system. Call it when no
    /// driver call is running.
    pub fn audit(&self, expected: &Injected, containment_was_on: bool) -> Result<Audit, HostError> {
        let (records, lost) = self.violations()?;
        let mut reported: Injected = BTreeMap::new();
        let mut seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        for r in &records {
            if let Some(rule) = RuleId::from_number(r.rule) {
                let c = reported.entry((rule, blamed_driver_name(r))).or_insert(0);
                *c = c.saturating_add(1);
            }
        }
        let mut mismatches = Vec::new();
        let keys: std::collections::BTreeSet<_> =
            expected.keys().chain(reported.keys()).cloned().collect();
        for k in keys {
            let e = expected.get(&k).copied().unwrap_or(0);
            let g = reported.get(&k).copied().unwrap_or(0);
            if e != g {
                mismatches.push(Mismatch {
                    rule: k.0,
                    driver: k.1,
                    expected: e,
                    reported: g,
                });
            }
        }
        let (table, skipped) = self.tracked_mappings()?;
        // A detached driver may unmap where iosv cannot see: its entries stay (flagged)
        // until an unmap iosv sees, its unload or Mm's reuse of the address removes them.
        let (unseen, table): (Vec<MappingRecord>, Vec<MappingRecord>) = table
            .into_iter()
            .partition(|m| m.flags & MF_DETACHED != 0 && !self.mm().is_mapped(m.base));
        let mut tracked: Vec<(u64, u64)> = table.iter().map(|m| (m.base, m.size)).collect();
        tracked.sort_unstable();
        let truth: Vec<(u64, u64)> = self
            .mm()
            .mappings()
            .iter()
            .filter(|m| m.via_iosv)
            .map(|m| (m.base, m.size))
            .collect();
        let only_table: Vec<(u64, u64)> = tracked
            .iter()
            .filter(|t| truth.binary_search(t).is_err())
            .copied()
            .collect();
        let only_mm: Vec<(u64, u64)> = truth
            .iter()
            .filter(|t| tracked.binary_search(t).is_err())
            .copied()
            .collect();
        let corruptions = self.mm().corruptions();
        Ok(Audit {
            records: records.len() as u64,
            duplicate_records: (records.len() as u64).saturating_sub(seqs.len() as u64),
            lost,
            mismatches,
            table_entries: tracked.len() as u64,
            table_skipped: skipped,
            only_in_table: only_table,
            only_in_mm: only_mm,
            detached_unmapped_unseen: unseen.iter().map(|m| (m.base, m.size)).collect(),
            corruptions: if containment_was_on {
                corruptions
            } else {
                Vec::new()
            },
        })
    }
}

/// One (rule, driver) whose reported count differs from the injected count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The rule.
    pub rule: RuleId,
    /// The blamed driver's name.
    pub driver: String,
    /// Injected.
    pub expected: u64,
    /// Reported.
    pub reported: u64,
}

/// What [`Host::audit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Records read.
    pub records: u64,
    /// Records whose sequence number appeared twice.
    pub duplicate_records: u64,
    /// Records lost to journal overflow.
    pub lost: u64,
    /// Rules and drivers whose counts differ from the injected ones.
    pub mismatches: Vec<Mismatch>,
    /// Live entries in the verifier's table.
    pub table_entries: u64,
    /// Entries the listing skipped (changing under the walk).
    pub table_skipped: u64,
    /// (base, size) the table holds but the Mm does not hold as made through iosv.
    pub only_in_table: Vec<(u64, u64)>,
    /// (base, size) the Mm holds as made through iosv but the table does not.
    pub only_in_mm: Vec<(u64, u64)>,
    /// (base, size) of entries flagged detached that their driver unmapped after the
    /// detach, where iosv cannot see it: expected, not a mismatch (the entry goes when Mm
    /// hands the address out again or the image unloads).
    pub detached_unmapped_unseen: Vec<(u64, u64)>,
    /// Corruptions of the simulated system (only checked when containment was on).
    pub corruptions: Vec<mm::Corruption>,
}

impl Audit {
    /// True if everything matched.
    pub fn is_clean(&self) -> bool {
        self.duplicate_records == 0
            && self.lost == 0
            && self.mismatches.is_empty()
            && self.table_skipped == 0
            && self.only_in_table.is_empty()
            && self.only_in_mm.is_empty()
            && self.corruptions.is_empty()
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} records ({} duplicate, {} lost), {} live mappings",
            self.records, self.duplicate_records, self.lost, self.table_entries
        )?;
        for m in &self.mismatches {
            writeln!(
                f,
                "  {} {}: injected {}, reported {}",
                m.rule.info().code,
                m.driver,
                m.expected,
                m.reported
            )?;
        }
        for (b, s) in &self.only_in_table {
            writeln!(f, "  table holds {b:#x}+{s:#x}, the Mm does not")?;
        }
        for (b, s) in &self.only_in_mm {
            writeln!(f, "  the Mm holds {b:#x}+{s:#x}, the table does not")?;
        }
        for (b, s) in &self.detached_unmapped_unseen {
            writeln!(
                f,
                "  (expected) {b:#x}+{s:#x}: unmapped by its detached driver, unseen"
            )?;
        }
        for c in &self.corruptions {
            writeln!(f, "  corruption: {c}")?;
        }
        Ok(())
    }
}

/// The driver id an image has while iosv is attached to it.
pub(crate) fn attached_id(image: &SimImage) -> Option<DriverId> {
    match image.driver_id() {
        0 => None,
        id => Some(DriverId(id)),
    }
}
