//! The simulated drivers: declared once by name with a [`Behaviour`], loaded and unloaded
//! any number of times.
//!
//! Each load creates a new image ([`SimImage`]) at a new base. If the name is one of
//! iosv's targets when it loads, the load notification registers it with the verifier and
//! iosv's import plan patches its IAT (`patching`) before `DriverEntry` runs, as in the
//! kernel. `DriverUnload` releases what the driver holds; then the image runs down (waits
//! for calls in it), its slots are restored and the verifier is told (IOSV009 for what is
//! still mapped).

use crate::driver_calls::{DriverRef, Held, Routine};
use crate::expected::expect_unload_leaks;
use crate::image::{SimImage, IMAGE_REGION, IMAGE_STRIDE};
use crate::mm::MM_NON_CACHED;
use crate::patching::{patch, unpatch};
use crate::platform::attached_id;
use crate::{lock, Host, HostError};
use iosv::drivers::DriverState;
use iosv::rules::RuleId;
use std::string::String;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::vec::Vec;

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

/// A declared driver: persists across loads.
pub(crate) struct SimDriver {
    pub(crate) name: String,
    pub(crate) behaviour: Mutex<(Behaviour, u64)>,
    pub(crate) image: Mutex<Option<Arc<SimImage>>>,
    /// Driver-global mappings (control blocks) and whether each is leaked at unload.
    pub(crate) globals: Mutex<Vec<(Held, bool)>>,
    pub(crate) io_ops: AtomicU64,
    /// Its images keep their import tables in a code section (see `link_iat_into_code`).
    pub(crate) iat_in_code: AtomicBool,
    /// Lets another thread's bug injection call as this driver without racing the
    /// thread that owns it (see [`borrow`]): the driver's unload, attach, detach and
    /// device starts hold it shared; a borrower holds it exclusively, and only ever
    /// tries to take it (never waits), so no thread blocks on a borrower that waits on it.
    pub(crate) gate: RwLock<()>,
    /// Its devices in the Starting state (START_DEVICE sent, not completed): iosv
    /// attributes a map this driver makes meanwhile, on any thread, to such a device.
    pub(crate) starting: AtomicU32,
}

impl SimDriver {
    pub(crate) fn behaviour(&self) -> (Behaviour, u64) {
        *lock(&self.behaviour)
    }

    /// The owner's side of [`SimDriver::gate`], held across an operation a borrower
    /// must not overlap.
    pub(crate) fn owner_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Borrows `other` for a bug injection that calls as it from a thread that may not own
/// it (IOSV005 after reuse, IOSV012): while the guard lives, its image stays loaded, iosv
/// stays attached or detached as it is now, and none of its devices starts. `None` if
/// its owner is doing one of those now (or another thread borrows it), or its image is
/// not loaded any more.
pub(crate) fn borrow(other: &DriverRef) -> Option<RwLockWriteGuard<'_, ()>> {
    let guard = match other.driver.gate.try_write() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    other.is_loaded().then_some(guard)
}

/// The key of driver `name` in [`System::drivers`](crate::platform::System): image names
/// compare case-insensitively.
pub(crate) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Host {
    pub(crate) fn driver_ref(&self, driver: &Arc<SimDriver>) -> Result<DriverRef, HostError> {
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

    pub(crate) fn sim_driver(&self, name: &str) -> Result<Arc<SimDriver>, HostError> {
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
                image.record_debug(self.verifier.drivers(), id);
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
                let h = Held::new(base, 0x2000, tracked);
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
}
