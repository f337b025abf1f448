//! The user-mode host: the kernel component hosted in a user process exactly as it runs
//! in the kernel (design.md §7).
//!
//! [`Host`] owns one [`Verifier`] over a [`HostPlatform`] ([`platform`]) and a simulated
//! system around it:
//!
//! - **IRQL and identity** ([`thread`]): every OS thread has a simulated IRQL that code
//!   raises and lowers, a thread id and a processor index; scenario steps can run as a
//!   fixed simulated thread.
//! - **Memory manager** ([`mm`], and [`mdl`] for MDLs, MDL mappings, system PTEs and
//!   reserved ranges): hands out canonical kernel addresses for I/O-space
//!   mappings, reuses freed ones eagerly, and keeps the ground truth of what is mapped,
//!   recording every unmap a real system would not survive as a [`mm::Corruption`].
//! - **Driver images** ([`image`]): each load of a simulated driver is a real little PE32+
//!   image whose import address table the engine's [`intercept`](iosv::intercept) plan
//!   patches through [`SlotAccess`](iosv::intercept::SlotAccess); drivers call the Mm
//!   routines *through* their IAT, so a call reaches the verifier exactly when the slot
//!   holds the hook.
//! - **Drivers** ([`drivers`]): declared with a [`Behaviour`], loaded and unloaded; each
//!   calls the Mm routines through its import table from one of its [`Routine`]s
//!   ([`driver_calls`]); iosv patches the imports of its targets (`patching`).
//! - **Devices** ([`devices`]): added, started, stopped, surprise-removed and removed
//!   ([`PnpState`]), with runtime I/O between start and stop (`runtime_io`).
//! - **Bugs** (`bugs`): one per rule IOSV001–IOSV014, committed by buggy drivers or on
//!   demand ([`Host::commit_bug`]) by a thread's [`Actor`] ([`actor`]), each counted with
//!   the driver iosv should blame ([`Host::injected`], `expected`).
//! - **Requests** (`requests`): the configuration changes, clears, attaches and detaches
//!   the scenario runner makes of its own verifier, through the control entry point.
//! - **Audit** ([`audit`]): the run's ground truth against iosv's journal and table.
//! - **Endpoint** ([`endpoint`]): the control codes over a Unix domain socket, for
//!   `iosvctl`.
//! - **Scenarios** ([`scenario`]): TOML scripts of exact sequences and concurrent stress
//!   phases (`docs/scenarios.md`).
//!
//! # Stack capture
//! [`HostPlatform::capture_stack`](iosv::platform::Platform::capture_stack) reports the
//! *simulated* call chain of the calling thread, not the host process's own frames:
//! innermost first, the return address in the simulated driver's image (its call site of
//! the Mm routine), the entry of the driver routine making the call (`StartDevice`,
//! `DpcRoutine`, ...), the synthetic kernel frame that called that routine
//! ([`image::kernel_frames`]: PnP IRP, DPC dispatcher, ISR, ...) and a frame naming the
//! scenario step. The `skip` argument counts iosv's own frames,
//! which the simulated chain never contains, so it skips nothing. This is cheap (a copy
//! of a thread-local array), deterministic, and yields stacks that name driver routines
//! the way a symbolised kernel stack would.

use iosv::config::StartParams;
use iosv::control::Reply;
use iosv::rules::RuleId;
use iosv::verifier::Verifier;
use std::collections::BTreeMap;
use std::string::String;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub mod actor;
pub mod audit;
mod bugs;
pub mod devices;
pub mod driver_calls;
pub mod drivers;
pub mod endpoint;
mod error;
mod expected;
pub mod image;
pub mod mdl;
pub mod mm;
mod patching;
pub mod platform;
pub mod regspec;
mod requests;
pub mod rng;
mod runtime_io;
pub mod scenario;
pub mod thread;
pub mod timeline;

pub use actor::Actor;
pub use audit::{Audit, Mismatch};
pub use devices::{Bar, Device, PnpState};
pub use driver_calls::{DriverRef, Routine};
pub use drivers::Behaviour;
pub use error::HostError;
pub use platform::HostPlatform;

use mm::SimMm;
use platform::System;

/// Locks `m`, ignoring poisoning (a panicking test thread must not wedge the host).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Expected violation records: (rule, blamed driver name) → count. The blamed driver is
/// the one that made the violating call, except for the leak rules (IOSV007–009), where it
/// is the owner of the leaked mapping — see `iosv::rules::RuleId::blamed`, which the audit
/// applies through [`ViolationRecord::blamed_driver_name`](iosv::protocol::ViolationRecord::blamed_driver_name). Bugs of a rule whose action
/// is `ignore` when they are committed are not counted (iosv journals nothing for them).
pub type Injected = BTreeMap<(RuleId, String), u64>;

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
        let sys = Arc::new(System::new(processors));
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

    /// The MDL side of the simulated memory manager.
    pub fn mdls(&self) -> &crate::mdl::SimMdls {
        &self.sys.mdls
    }

    /// Serves one control request, exactly as the device's dispatch routine does.
    pub fn control(&self, code: u32, input: &[u8], output: &mut [u8]) -> Reply {
        iosv::control::control(&self.verifier, code, input, output)
    }

    /// Bugs injected so far (what the verifier is expected to report; see [`Injected`]).
    pub fn injected(&self) -> Injected {
        self.sys.ledger.snapshot()
    }
}
