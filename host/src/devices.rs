//! Devices and their PnP life: added, started (its start routine maps every BAR),
//! stopped, surprise-removed and removed (its routines unmap what it holds).
//!
//! A device belongs to one driver and has BARs (physical windows with a cache type). Its
//! start routine maps every BAR at PASSIVE_LEVEL, between the filter's START_DEVICE begin
//! and end events, so iosv attributes the mappings to the device; its stop,
//! surprise-removal and remove routines unmap them — a driver that leaks on that rule
//! keeps BAR 0 and forgets it. Which request a state accepts is one table,
//! `PnpRequest::accepted_in`. A device operation holds the device's lock for its
//! duration; devices are not shared between the threads of a stress phase.

use crate::actor::PRIVATE_PAGES;
use crate::driver_calls::{DriverRef, Held, Routine};
use crate::drivers::Behaviour;
use crate::drivers::SimDriver;
use crate::expected::expect_teardown_leak;
use crate::mm::{MM_NON_CACHED, PAGE_SIZE};
use crate::{lock, thread, Host, HostError};
use iosv::platform::Irql;
use iosv::rules::RuleId;
use iosv::verifier::DeviceEvent;
use std::string::String;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

/// Largest BAR the simulated devices support (exclusive): 64 MiB.
pub const MAX_BAR_SIZE: u64 = PRIVATE_PAGES * PAGE_SIZE;
/// Physical windows of automatically placed BARs start here (256 GiB); scenario BARs
/// must lie below.
pub const AUTO_PHYSICAL: u64 = 0x40_0000_0000;
/// Device objects' addresses (what iosv records as the device) start here.
const DEVICE_OBJECTS: u64 = 0xFFFF_B300_0000_0000;

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

/// What can be asked of a device: a PnP IRP, the completion of a pending start, or
/// runtime I/O. [`PnpRequest::accepted_in`] is the whole state machine's guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PnpRequest {
    /// IRP_MN_START_DEVICE.
    Start,
    /// Completing a start left pending.
    CompleteStart,
    /// IRP_MN_STOP_DEVICE.
    Stop,
    /// IRP_MN_SURPRISE_REMOVAL.
    SurpriseRemoval,
    /// IRP_MN_REMOVE_DEVICE.
    Remove,
    /// A runtime I/O operation of the driver.
    Io,
}

impl PnpRequest {
    /// Every request.
    #[cfg(test)]
    pub(crate) const ALL: [PnpRequest; 6] = [
        PnpRequest::Start,
        PnpRequest::CompleteStart,
        PnpRequest::Stop,
        PnpRequest::SurpriseRemoval,
        PnpRequest::Remove,
        PnpRequest::Io,
    ];

    /// Whether a device in `state` accepts the request.
    pub(crate) fn accepted_in(self, state: PnpState) -> bool {
        use PnpState::{Added, Removed, Started, Starting, Stopped};
        match self {
            PnpRequest::Start => matches!(state, Added | Stopped),
            PnpRequest::CompleteStart => state == Starting,
            PnpRequest::Stop | PnpRequest::Io => state == Started,
            PnpRequest::SurpriseRemoval => matches!(state, Started | Stopped | Added),
            PnpRequest::Remove => !matches!(state, Removed | Starting),
        }
    }

    /// How a refusal names the request: "cannot {verb} device `x`".
    pub(crate) fn verb(self) -> &'static str {
        match self {
            PnpRequest::Start => "start",
            PnpRequest::CompleteStart => "complete the start of",
            PnpRequest::Stop => "stop",
            PnpRequest::SurpriseRemoval => "surprise-remove",
            PnpRequest::Remove => "remove",
            PnpRequest::Io => "do I/O on",
        }
    }
}

/// `Ok` if `dev`, in `state`, accepts `request`; else the refusal.
pub(crate) fn check(dev: &Device, state: PnpState, request: PnpRequest) -> Result<(), HostError> {
    if request.accepted_in(state) {
        Ok(())
    } else {
        Err(HostError::DeviceState {
            device: dev.name.clone(),
            state,
            operation: request.verb(),
        })
    }
}

/// What a device holds, under its lock.
pub(crate) struct DeviceInner {
    /// Its PnP state.
    pub(crate) state: PnpState,
    /// The mapping of each BAR while mapped (by its start routine).
    pub(crate) bars: Vec<Option<Held>>,
    /// Runtime windows mapped now.
    pub(crate) runtime: Vec<Held>,
}

/// A simulated device object.
pub struct Device {
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) driver: Arc<SimDriver>,
    pub(crate) bars: Vec<Bar>,
    pub(crate) inner: Mutex<DeviceInner>,
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

impl Host {
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
    /// The devices of driver `driver`, by name.
    pub fn devices_of(&self, driver: &str) -> Vec<Arc<Device>> {
        lock(&self.sys.devices)
            .values()
            .filter(|d| d.driver.name.eq_ignore_ascii_case(driver))
            .cloned()
            .collect()
    }

    /// Tells the engine of PnP event `e` on `dev` if iosv is attached to its driver;
    /// returns whether it was told.
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
        check(dev, previous, PnpRequest::Start)?;
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
        check(dev, inner.state, PnpRequest::CompleteStart)?;
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
        Ok(expect_teardown_leak(
            &self.sys,
            t.rule,
            d.name(),
            leaked,
            seen,
        ))
    }

    /// Sends IRP_MN_STOP_DEVICE: the stop routine unmaps the runtime windows and the BARs
    /// (a leak-on-stop driver keeps BAR 0 mapped and forgets it).
    pub fn stop_device(&self, dev: &Device) -> Result<(), HostError> {
        self.send_teardown(dev, Teardown::STOP, false).map(|_| ())
    }

    /// Sends IRP_MN_SURPRISE_REMOVAL: the routine unmaps everything (a leak-on-remove
    /// driver keeps BAR 0).
    pub fn surprise_remove_device(&self, dev: &Device) -> Result<(), HostError> {
        self.send_teardown(dev, Teardown::SURPRISE_REMOVAL, false)
            .map(|_| ())
    }

    /// Sends IRP_MN_REMOVE_DEVICE: the routine unmaps whatever is left (a leak-on-remove
    /// driver keeps BAR 0) and the device object is deleted.
    pub fn remove_device(&self, dev: &Device) -> Result<(), HostError> {
        self.send_teardown(dev, Teardown::REMOVE, false).map(|_| ())
    }

    /// Sends the teardown `t` if the device's state accepts it (see [`Host::tear_down`]);
    /// a removed device leaves the system. Returns whether a leak was counted.
    pub(crate) fn send_teardown(
        &self,
        dev: &Device,
        t: Teardown,
        force_leak: bool,
    ) -> Result<bool, HostError> {
        let mut inner = lock(&dev.inner);
        check(dev, inner.state, t.request)?;
        let counted = self.tear_down(dev, &mut inner, t, force_leak)?;
        if t.request == PnpRequest::Remove {
            let mut devices = lock(&self.sys.devices);
            if devices
                .get(&dev.name)
                .is_some_and(|v| core::ptr::eq(Arc::as_ptr(v), dev))
            {
                devices.remove(&dev.name);
            }
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

    /// Starts `dev` (at PASSIVE_LEVEL, completed) unless it is started already.
    pub(crate) fn ensure_started(&self, dev: &Device) -> Result<(), HostError> {
        let state = dev.state();
        if state == PnpState::Started {
            return Ok(());
        }
        check(dev, state, PnpRequest::Start)?;
        if thread::with_irql(Irql::PASSIVE, || self.start_device(dev, true))? {
            Ok(())
        } else {
            Err(HostError::MapFailed("BAR at start"))
        }
    }
}

/// What one kind of device teardown does: the driver routine that runs, the PnP event
/// the engine sees, the state the device ends in, and the leak rule it can break.
#[derive(Clone, Copy)]
pub(crate) struct Teardown {
    request: PnpRequest,
    routine: Routine,
    event: DeviceEvent,
    state: PnpState,
    rule: RuleId,
}

impl Teardown {
    pub(crate) const STOP: Teardown = Teardown {
        request: PnpRequest::Stop,
        routine: Routine::StopDevice,
        event: DeviceEvent::Stopped,
        state: PnpState::Stopped,
        rule: RuleId::LeakOnStop,
    };
    pub(crate) const SURPRISE_REMOVAL: Teardown = Teardown {
        request: PnpRequest::SurpriseRemoval,
        routine: Routine::SurpriseRemoval,
        event: DeviceEvent::SurpriseRemoved,
        state: PnpState::SurpriseRemoved,
        rule: RuleId::LeakOnRemove,
    };
    pub(crate) const REMOVE: Teardown = Teardown {
        request: PnpRequest::Remove,
        routine: Routine::RemoveDevice,
        event: DeviceEvent::Removed,
        state: PnpState::Removed,
        rule: RuleId::LeakOnRemove,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::add_target;
    use iosv::config::StartParams;
    use PnpRequest::{CompleteStart, Io, Remove, Start, Stop, SurpriseRemoval};
    use PnpState::{Added, Removed, Started, Starting, Stopped, SurpriseRemoved};

    #[test]
    fn each_state_accepts_exactly_its_requests() {
        let accepted: [(PnpState, &[PnpRequest]); 6] = [
            (Added, &[Start, SurpriseRemoval, Remove]),
            (Starting, &[CompleteStart]),
            (Started, &[Stop, SurpriseRemoval, Remove, Io]),
            (Stopped, &[Start, SurpriseRemoval, Remove]),
            (SurpriseRemoved, &[Remove]),
            (Removed, &[]),
        ];
        for (state, wanted) in accepted {
            for r in PnpRequest::ALL {
                assert_eq!(
                    r.accepted_in(state),
                    wanted.contains(&r),
                    "{r:?} in {state:?}"
                );
            }
        }
    }

    /// A host with driver `a.sys` (`behaviour`, an iosv target) and its device `a0`.
    fn system(behaviour: Behaviour) -> (Host, Arc<Device>) {
        let host = Host::with_processors(StartParams::default(), 1).unwrap();
        add_target(&host, "a.sys").unwrap();
        host.declare_driver("a.sys", behaviour, 0);
        host.load_driver("a.sys").unwrap();
        let bars = host.auto_bars();
        let dev = host.add_device("a0", "a.sys", &bars).unwrap();
        (host, dev)
    }

    fn refused(r: Result<(), HostError>) -> (PnpState, &'static str) {
        match r {
            Err(HostError::DeviceState {
                state, operation, ..
            }) => (state, operation),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_device_lives_through_start_stop_surprise_removal_and_removal() {
        let (host, dev) = system(Behaviour::WellBehaved);
        let mut actor = host.actor(3);
        assert_eq!(dev.state(), Added);
        assert_eq!(refused(host.stop_device(&dev)), (Added, "stop"));

        assert!(host.start_device(&dev, false).unwrap(), "pending start");
        assert_eq!(dev.state(), Starting);
        assert!(dev.bar_mappings().iter().all(Option::is_some));
        assert_eq!(refused(host.remove_device(&dev)), (Starting, "remove"));
        host.complete_start(&dev).unwrap();
        assert_eq!(dev.state(), Started);
        assert_eq!(
            refused(host.complete_start(&dev)),
            (Started, "complete the start of")
        );

        host.device_io(&dev, &mut actor).unwrap();
        host.stop_device(&dev).unwrap();
        assert_eq!(dev.state(), Stopped);
        assert!(dev.bar_mappings().iter().all(Option::is_none));
        assert!(dev.runtime_mappings().is_empty());
        assert_eq!(
            refused(host.device_io(&dev, &mut actor)),
            (Stopped, "do I/O on")
        );

        assert!(host.start_device(&dev, true).unwrap());
        host.surprise_remove_device(&dev).unwrap();
        assert_eq!(dev.state(), SurpriseRemoved);
        assert_eq!(
            refused(host.start_device(&dev, true).map(|_| ())),
            (SurpriseRemoved, "start")
        );
        host.remove_device(&dev).unwrap();
        assert_eq!(dev.state(), Removed);
        assert!(matches!(
            host.device("a0"),
            Err(HostError::UnknownDevice(_))
        ));
        assert_eq!(refused(host.remove_device(&dev)), (Removed, "remove"));
        assert!(host.mm().mappings().is_empty(), "everything unmapped");
        assert!(host.injected().is_empty());
    }

    #[test]
    fn a_failed_start_unmaps_and_returns_to_the_previous_state() {
        let (host, dev) = system(Behaviour::WellBehaved);
        host.mm().fail_next_maps(1);
        assert!(!host.start_device(&dev, true).unwrap());
        assert_eq!(dev.state(), Added);
        assert!(dev.bar_mappings().iter().all(Option::is_none));
        assert!(host.mm().mappings().is_empty());
        assert!(
            host.start_device(&dev, true).unwrap(),
            "starts once Mm maps again"
        );
    }

    #[test]
    fn a_leaking_stop_keeps_bar0_mapped_and_counts_one_leak() {
        let (host, dev) = system(Behaviour::Buggy(RuleId::LeakOnStop));
        assert!(host.start_device(&dev, true).unwrap());
        host.stop_device(&dev).unwrap();
        assert_eq!(host.mm().mappings().len(), 1, "BAR 0 is still mapped");
        assert!(
            dev.bar_mappings().iter().all(Option::is_none),
            "and forgotten"
        );
        let injected = host.injected();
        assert_eq!(
            injected.get(&(RuleId::LeakOnStop, String::from("a.sys"))),
            Some(&1)
        );
        assert_eq!(injected.len(), 1);
    }
}
