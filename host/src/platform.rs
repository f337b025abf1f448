//! The [`Platform`] of the user-mode host: [`HostPlatform`] over the simulated `System`
//! (IRQL and identity from [`thread`], the simulated Mm, breaks and bug checks, attach and
//! detach through `patching`), and its [`SlotAccess`] to the simulated images' import
//! slots.

use crate::devices::Device;
use crate::drivers::SimDriver;
use crate::expected::Ledger;
use crate::image::SimImage;
use crate::mm::SimMm;
use crate::patching::{attach_image, detach_image};
use crate::{lock, thread};
use iosv::drivers::DriverId;
use iosv::intercept::{SlotAccess, SlotWriteError};
use iosv::platform::{BugCheck, Irql, Platform, PlatformError};
use iosv::verifier::Verifier;
use std::collections::{BTreeMap, HashMap};
use std::string::String;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;
use std::vec::Vec;

/// The simulated system shared by the [`Host`] and its [`HostPlatform`].
pub(crate) struct System {
    /// Simulated processors.
    pub(crate) processors: u32,
    /// Time 0 of `now_ns`.
    origin: Instant,
    /// The "current process" id (this process's).
    process_id: u64,
    /// The simulated memory manager.
    pub(crate) mm: SimMm,
    /// The MDL side of Mm (issue 11).
    pub(crate) mdls: crate::mdl::SimMdls,
    /// The verifier (weak: the verifier owns the platform, which owns the system).
    pub(crate) verifier: OnceLock<Weak<Verifier<HostPlatform>>>,
    /// Serialises loads, unloads, attaches and detaches (the loader lock).
    pub(crate) loader: Mutex<()>,
    /// Images loaded now.
    pub(crate) images: Mutex<Vec<Arc<SimImage>>>,
    /// Loads so far (each image gets the next base).
    pub(crate) next_image: AtomicU64,
    /// Declared drivers, by lower-case name.
    pub(crate) drivers: Mutex<HashMap<String, Arc<SimDriver>>>,
    /// Devices, by name.
    pub(crate) devices: Mutex<BTreeMap<String, Arc<Device>>>,
    /// Devices added so far (each gets the next device object address).
    pub(crate) next_device: AtomicU64,
    /// Automatic physical windows handed out so far.
    pub(crate) next_physical: AtomicU64,
    /// Never-mapped addresses the unknown-unmap bug used so far.
    pub(crate) next_unknown: AtomicU64,
    /// Actors made so far.
    pub(crate) next_actor: AtomicU32,
    /// Debugger breaks requested.
    breaks: AtomicU64,
    /// Bug checks requested.
    bugchecks: Mutex<Vec<BugCheck>>,
    /// The bugs injected so far.
    pub(crate) ledger: Ledger,
}

impl System {
    /// A fresh system with `processors` simulated processors (clamped to 1..=4096) and no
    /// verifier yet.
    pub(crate) fn new(processors: u32) -> System {
        System {
            processors: processors.clamp(1, 4096),
            origin: Instant::now(),
            process_id: u64::from(std::process::id()),
            mm: SimMm::new(),
            mdls: crate::mdl::SimMdls::new(),
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
            ledger: Ledger::default(),
        }
    }

    /// The host's own process id (what `current_process_id` returns unless a thread is
    /// attached to a simulated process, [`crate::mdl::with_process`]).
    pub(crate) fn process_id(&self) -> u64 {
        self.process_id
    }

    /// The verifier, while the host lives.
    pub(crate) fn verifier(&self) -> Option<Arc<Verifier<HostPlatform>>> {
        self.verifier.get().and_then(Weak::upgrade)
    }

    /// The loaded image that contains `address`.
    pub(crate) fn image_at(&self, address: u64) -> Option<Arc<SimImage>> {
        lock(&self.images)
            .iter()
            .find(|i| i.contains(address))
            .cloned()
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
        crate::mdl::attached_process().unwrap_or(self.sys.process_id)
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
    // The MDL and reserved-mapping family: the simulated Mm's MDL side (crate::mdl).
    fn mm_map_locked_pages_specify_cache(
        &self,
        mdl: u64,
        access_mode: u8,
        _cache_type: u32,
        _requested_address: u64,
        _bugcheck_on_failure: u32,
        _priority: u32,
    ) -> u64 {
        let process = self.current_process_id();
        self.sys.mdls.map_locked(mdl, access_mode, process, true)
    }
    fn mm_map_locked_pages(&self, mdl: u64, access_mode: u8) -> u64 {
        let process = self.current_process_id();
        self.sys.mdls.map_locked(mdl, access_mode, process, true)
    }
    fn mm_unmap_locked_pages(&self, base: u64, mdl: u64) {
        let process = self.current_process_id();
        self.sys.mdls.unmap_locked(base, mdl, process, true);
    }
    fn io_free_mdl(&self, mdl: u64) {
        self.sys.mdls.prepare_or_free(mdl, true, true);
    }
    fn mm_unlock_pages(&self, mdl: u64) {
        self.sys.mdls.unlock(mdl, true);
    }
    fn mm_allocate_mapping_address(&self, size: usize, pool_tag: u32) -> u64 {
        self.sys.mdls.allocate_reserved(size as u64, pool_tag, true)
    }
    fn mm_allocate_mapping_address_ex(&self, size: usize, pool_tag: u32, flags: u32) -> u64 {
        self.sys
            .mdls
            .allocate_reserved_ex(size as u64, pool_tag, flags, true)
    }
    fn mm_map_locked_pages_with_reserved_mapping(
        &self,
        mapping_address: u64,
        pool_tag: u32,
        mdl: u64,
        _cache_type: u32,
    ) -> u64 {
        self.sys
            .mdls
            .map_reserved(mapping_address, pool_tag, mdl, true)
    }
    fn mm_unmap_reserved_mapping(&self, base: u64, pool_tag: u32, mdl: u64) {
        self.sys.mdls.unmap_reserved(base, pool_tag, mdl, true);
    }
    fn mm_free_mapping_address(&self, base: u64, pool_tag: u32) {
        self.sys.mdls.free_reserved(base, pool_tag, true);
    }
    fn mdl_info(&self, mdl: u64) -> Option<iosv::mdl::MdlInfo> {
        self.sys.mdls.info(mdl)
    }
    fn debug_break(&self) {
        self.sys.breaks.fetch_add(1, Ordering::Relaxed);
    }
    fn bugcheck(&self, params: BugCheck) {
        lock(&self.sys.bugchecks).push(params);
    }
    fn attach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        attach_image(self, image_name)
    }
    fn detach_driver(&self, image_name: &[u8]) -> Result<u32, PlatformError> {
        detach_image(self, image_name)
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

/// The driver id an image has while iosv is attached to it.
pub(crate) fn attached_id(image: &SimImage) -> Option<DriverId> {
    match image.driver_id() {
        0 => None,
        id => Some(DriverId(id)),
    }
}
