//! What the runner needs from iosv's host: the simulated memory manager (the "real" Mm
//! routines, unhooked), the verifier behind the hooks, the per-thread IRQL, and the
//! interception plan over the loaded image. [`Engine`] is that surface; [`HostEngine`]
//! implements it over the user-mode host's [`Host`].

use super::loader::LoadedImage;
use iosv::drivers::DriverId;
use iosv::intercept::{HookTable, Outcome, Plan, SlotAccess, SlotWriteError};
use iosv::mdl::MdlInfo;
use iosv::pe::{IatSlot, PeImage};
use iosv::platform::{Caller, Irql, Platform};
use iosv::verifier::DeviceEvent;
use iosv_host::{thread, Host};
use std::sync::{Arc, Mutex, PoisonError};

/// One call of the MDL and reserved-mapping family (docs/mdl.md) with its arguments, as
/// the driver made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyCall {
    /// `MmMapLockedPagesSpecifyCache` (`specify`) or `MmMapLockedPages` (the other
    /// arguments then `MmCached`, 0, 0, 0).
    MapLocked {
        /// The MDL.
        mdl: u64,
        /// `KernelMode` (0) or `UserMode` (1).
        mode: u8,
        /// `MEMORY_CACHING_TYPE`.
        cache: u32,
        /// `RequestedAddress`.
        requested: u64,
        /// `BugCheckOnFailure`.
        bugcheck: u32,
        /// `Priority`.
        priority: u32,
        /// `MmMapLockedPagesSpecifyCache` rather than `MmMapLockedPages`.
        specify: bool,
    },
    /// `MmUnmapLockedPages(base, mdl)`.
    UnmapLocked {
        /// The address the map returned.
        base: u64,
        /// The MDL.
        mdl: u64,
    },
    /// `IoFreeMdl(mdl)` (the MDL's memory is freed by the caller afterwards).
    FreeMdl {
        /// The MDL.
        mdl: u64,
    },
    /// `MmUnlockPages(mdl)`.
    UnlockPages {
        /// The MDL.
        mdl: u64,
    },
    /// `MmAllocateMappingAddress` (`flags` `None`) or `MmAllocateMappingAddressEx`.
    AllocateMappingAddress {
        /// `NumberOfBytes`.
        size: u64,
        /// `PoolTag`.
        tag: u32,
        /// The `Ex` routine's `Flags`.
        flags: Option<u32>,
    },
    /// `MmMapLockedPagesWithReservedMapping(range, tag, mdl, cache)`.
    MapReserved {
        /// `MappingAddress`.
        range: u64,
        /// `PoolTag`.
        tag: u32,
        /// The MDL.
        mdl: u64,
        /// `CacheType`.
        cache: u32,
    },
    /// `MmUnmapReservedMapping(range, tag, mdl)`.
    UnmapReserved {
        /// `BaseAddress`.
        range: u64,
        /// `PoolTag`.
        tag: u32,
        /// The MDL.
        mdl: u64,
    },
    /// `MmFreeMappingAddress(range, tag)`.
    FreeMappingAddress {
        /// `BaseAddress`.
        range: u64,
        /// `PoolTag`.
        tag: u32,
    },
}

/// The host services the runner's kernel routines and hooks use.
pub trait Engine: Send + Sync {
    /// The unhooked `MmMapIoSpace` (`ex == false`) or `MmMapIoSpaceEx` (`ex == true`).
    fn mm_map(&self, physical: u64, size: u64, cache: u32, ex: bool) -> u64;
    /// The unhooked `MmUnmapIoSpace`.
    fn mm_unmap(&self, base: u64, size: u64);
    /// Whether the memory manager holds `base` as the base of a live mapping.
    fn mm_is_mapped(&self, base: u64) -> bool;
    /// `MmMapIoSpace[Ex]` through the verifier, as the hook calls it. `caller` is the
    /// return address inside the driver (or the entry of the routine it runs), `frames`
    /// the call chain for the report.
    fn hook_map(&self, frames: &[u64], physical: u64, size: u64, cache: u32, ex: bool) -> u64;
    /// `MmUnmapIoSpace` through the verifier.
    fn hook_unmap(&self, frames: &[u64], base: u64, size: u64);
    /// The hook to hand out instead of `name` from `MmGetSystemRoutineAddress`.
    fn routine_override(&self, name: &[u16]) -> Option<usize>;
    /// A call of the MDL family: through the verifier when `frames` is the hook's call
    /// chain (as [`hook_map`](Self::hook_map)), else (`None`) the unhooked routine of the
    /// simulated Mm. Returns what the routine returns (0 for a `VOID` one).
    fn family(&self, frames: Option<&[u64]>, call: FamilyCall) -> u64;
    /// The header the simulated Mm holds for the MDL at `mdl`, if it knows it.
    fn mdl_info(&self, mdl: u64) -> Option<MdlInfo>;
    /// Tells the simulated Mm the header of the MDL the driver's memory holds at `mdl`.
    fn register_mdl(&self, mdl: u64, info: MdlInfo);
    /// The MDL the simulated Mm holds mapped at `base` (an MDL mapping's address or a
    /// reserved range's base), if any.
    fn mdl_mapped_at(&self, base: u64) -> Option<u64>;
    /// The calling thread's IRQL.
    fn irql(&self) -> u8;
    /// Sets the calling thread's IRQL; returns the previous one.
    fn set_irql(&self, irql: u8) -> u8;
    /// The image is loaded and bound: make it a target, register it and patch its
    /// import slots with the interception plan. Returns one line per patched slot.
    ///
    /// # Errors
    /// Why it could not be attached.
    fn attach(&self, image: &LoadedImage) -> Result<Vec<String>, String>;
    /// The image unloads: leaks at unload are reported, the plan's slots restored.
    fn unloaded(&self, image: &LoadedImage);
    /// A PnP event of the device object `device` of the attached driver.
    fn device_event(&self, device: u64, event: DeviceEvent);
}

/// The [`Engine`] of the user-mode host: its verifier over its simulated Mm.
pub struct HostEngine {
    host: Arc<Host>,
    hooks: HookTable,
    state: Mutex<Attached>,
}

#[derive(Default)]
struct Attached {
    driver: Option<DriverId>,
    plan: Option<Plan>,
}

/// Slot access over a loaded image: the platform half of the interception plan.
struct ImageSlots<'a>(&'a LoadedImage);

impl SlotAccess for ImageSlots<'_> {
    unsafe fn read_slot(&self, address: usize) -> usize {
        self.0.read_slot(address)
    }

    unsafe fn compare_exchange_slot(
        &self,
        address: usize,
        current: usize,
        new: usize,
    ) -> Result<(), SlotWriteError> {
        self.0
            .write_slot(address, current, new)
            .map_err(|e| match e {
                Some(found) => SlotWriteError::Changed { found },
                None => SlotWriteError::Failed,
            })
    }
}

/// Adds `name` to the drivers iosv hooks when they load, through the control codes
/// (GET_CONFIG, SET_CONFIG), as `iosvctl config set --target` does.
fn add_target(host: &Host, name: &str) -> Result<(), String> {
    use iosv::protocol::{
        wire_name, ConfigBlock, GetConfigRequest, Status, IOCTL_GET_CONFIG, IOCTL_SET_CONFIG,
        PROTOCOL_VERSION,
    };
    use zerocopy::IntoBytes;
    let req = GetConfigRequest {
        version: PROTOCOL_VERSION,
        reserved: 0,
    };
    let mut block = ConfigBlock::default();
    let r = host.control(IOCTL_GET_CONFIG, req.as_bytes(), block.as_mut_bytes());
    if r.status != Status::Success {
        return Err(format!("GET_CONFIG failed: {}", r.status.describe()));
    }
    let n = block.target_count as usize;
    let slot = block
        .targets
        .get_mut(n)
        .ok_or_else(|| "the target list is full".to_string())?;
    *slot = wire_name(name.as_bytes());
    block.target_count += 1;
    let r = host.control(IOCTL_SET_CONFIG, block.as_bytes(), &mut []);
    if r.status != Status::Success {
        return Err(format!("SET_CONFIG failed: {}", r.status.describe()));
    }
    Ok(())
}

impl HostEngine {
    /// An engine over `host`, whose hooks are at `hooks`.
    #[must_use]
    pub fn new(host: Arc<Host>, hooks: HookTable) -> Self {
        Self {
            host,
            hooks,
            state: Mutex::new(Attached::default()),
        }
    }

    /// The family's routine of the simulated Mm itself: what a call through an import
    /// slot iosv did not patch reaches (unverified, and so not `via_iosv`).
    fn real_family(&self, call: FamilyCall) -> u64 {
        let m = self.host.mdls();
        let process = || self.host.platform().current_process_id();
        match call {
            FamilyCall::MapLocked { mdl, mode, .. } => m.map_locked(mdl, mode, process(), false),
            FamilyCall::UnmapLocked { base, mdl } => {
                m.unmap_locked(base, mdl, process(), false);
                0
            }
            FamilyCall::FreeMdl { mdl } => {
                m.prepare_or_free(mdl, true, false);
                0
            }
            FamilyCall::UnlockPages { mdl } => {
                m.unlock(mdl, false);
                0
            }
            FamilyCall::AllocateMappingAddress { size, tag, flags } => {
                m.allocate_reserved_ex(size, tag, flags.unwrap_or(0), false)
            }
            FamilyCall::MapReserved {
                range, tag, mdl, ..
            } => m.map_reserved(range, tag, mdl, false),
            FamilyCall::UnmapReserved { range, tag, mdl } => {
                m.unmap_reserved(range, tag, mdl, false);
                0
            }
            FamilyCall::FreeMappingAddress { range, tag } => {
                m.free_reserved(range, tag, false);
                0
            }
        }
    }

    fn driver(&self) -> Option<DriverId> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .driver
    }
}

impl Engine for HostEngine {
    fn mm_map(&self, physical: u64, size: u64, cache: u32, ex: bool) -> u64 {
        self.host.mm().map(physical, size, cache, ex, false)
    }

    fn mm_unmap(&self, base: u64, size: u64) {
        self.host.mm().unmap(base, size, false);
    }

    fn mm_is_mapped(&self, base: u64) -> bool {
        self.host.mm().is_mapped(base)
    }

    fn hook_map(&self, frames: &[u64], physical: u64, size: u64, cache: u32, ex: bool) -> u64 {
        let caller = Caller::at(frames.first().copied().unwrap_or(0));
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        thread::with_call_chain(frames, || {
            if ex {
                self.host
                    .verifier()
                    .map_io_space_ex(caller, physical, size, cache)
            } else {
                self.host
                    .verifier()
                    .map_io_space(caller, physical, size, cache)
            }
        })
    }

    fn hook_unmap(&self, frames: &[u64], base: u64, size: u64) {
        let caller = Caller::at(frames.first().copied().unwrap_or(0));
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        thread::with_call_chain(frames, || {
            self.host.verifier().unmap_io_space(caller, base, size);
        });
    }

    fn family(&self, frames: Option<&[u64]>, call: FamilyCall) -> u64 {
        let Some(frames) = frames else {
            return self.real_family(call);
        };
        let c = Caller::at(frames.first().copied().unwrap_or(0));
        let v = self.host.verifier();
        let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        thread::with_call_chain(frames, || match call {
            FamilyCall::MapLocked {
                mdl,
                mode,
                cache,
                requested,
                bugcheck,
                priority,
                specify: true,
            } => {
                v.map_locked_pages_specify_cache(c, mdl, mode, cache, requested, bugcheck, priority)
            }
            FamilyCall::MapLocked { mdl, mode, .. } => v.map_locked_pages(c, mdl, mode),
            FamilyCall::UnmapLocked { base, mdl } => {
                v.unmap_locked_pages(c, base, mdl);
                0
            }
            FamilyCall::FreeMdl { mdl } => {
                v.io_free_mdl(c, mdl);
                0
            }
            FamilyCall::UnlockPages { mdl } => {
                v.unlock_pages(c, mdl);
                0
            }
            FamilyCall::AllocateMappingAddress { size, tag, flags } => match flags {
                None => v.allocate_mapping_address(c, bytes(size), tag),
                Some(f) => v.allocate_mapping_address_ex(c, bytes(size), tag, f),
            },
            FamilyCall::MapReserved {
                range,
                tag,
                mdl,
                cache,
            } => v.map_reserved(c, range, tag, mdl, cache),
            FamilyCall::UnmapReserved { range, tag, mdl } => {
                v.unmap_reserved(c, range, tag, mdl);
                0
            }
            FamilyCall::FreeMappingAddress { range, tag } => {
                v.free_mapping_address(c, range, tag);
                0
            }
        })
    }

    fn mdl_info(&self, mdl: u64) -> Option<MdlInfo> {
        self.host.mdls().info(mdl)
    }

    fn register_mdl(&self, mdl: u64, info: MdlInfo) {
        self.host.mdls().register_mdl(mdl, info);
    }

    fn mdl_mapped_at(&self, base: u64) -> Option<u64> {
        self.host
            .mdls()
            .mappings()
            .iter()
            .find(|m| m.base == base && m.mdl != 0)
            .map(|m| m.mdl)
    }

    fn routine_override(&self, name: &[u16]) -> Option<usize> {
        iosv::intercept::system_routine_override(name, &self.hooks)
    }

    fn irql(&self) -> u8 {
        thread::current_irql().0
    }

    fn set_irql(&self, irql: u8) -> u8 {
        thread::set_irql(Irql(irql)).0
    }

    fn attach(&self, image: &LoadedImage) -> Result<Vec<String>, String> {
        add_target(&self.host, &image.name)
            .map_err(|e| format!("cannot make {} a target: {e}", image.name))?;
        let id = self
            .host
            .verifier()
            .image_loaded(image.name.as_bytes(), image.base as u64, image.size as u64)
            .ok_or_else(|| format!("iosv did not register {} (driver table full?)", image.name))?;
        let mut out = [IatSlot::EMPTY; iosv::intercept::MAX_PATCHES];
        let plan = {
            // SAFETY: no slot is written while this borrow lives (the plan is built from
            // the collected slots after the scan, and attached after the borrow ends).
            let bytes = unsafe { image.bytes() };
            let pe = PeImage::parse(bytes).map_err(|e| e.to_string())?;
            let summary = pe
                .find_hooked_slots(None, &mut out)
                .map_err(|e| e.to_string())?;
            let slots = out.get(..summary.slots).unwrap_or(&[]);
            Plan::new(image.base, image.size, slots, &self.hooks)
                .map_err(|e| format!("the interception plan was refused: {e}"))
        };
        let mut plan = match plan {
            Ok(p) => p,
            Err(e) => {
                self.host.verifier().driver_detached(id, true);
                return Err(e);
            }
        };
        // SAFETY: the image is loaded at plan's base for the life of the process, and the
        // hooks (this crate's trampolines) are ready to be called.
        let report = unsafe { plan.attach(&ImageSlots(image)) };
        let mut lines = Vec::new();
        for o in report.outcomes() {
            let routine = plan
                .patches()
                .iter()
                .find(|p| p.address == o.address)
                .map_or("?", |p| p.routine.name());
            // "hooked (was 0x…)" or why not (intercept::Outcome's Display).
            lines.push(match o.outcome {
                Outcome::Patched { .. } => format!(
                    "import slot {} ({routine}) {}",
                    image.describe(o.address).unwrap_or_default(),
                    o.outcome
                ),
                other => format!(
                    "import slot {} ({routine}) not hooked: {other}",
                    image.describe(o.address).unwrap_or_default()
                ),
            });
        }
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.driver = Some(id);
        st.plan = Some(plan);
        Ok(lines)
    }

    fn unloaded(&self, image: &LoadedImage) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = st.driver.take() {
            self.host.verifier().driver_detached(id, false);
        }
        if let Some(mut plan) = st.plan.take() {
            // SAFETY: the image stays mapped for the life of the process.
            let _ = unsafe { plan.detach(&ImageSlots(image)) };
        }
    }

    fn device_event(&self, device: u64, event: DeviceEvent) {
        if let Some(id) = self.driver() {
            self.host.verifier().device_event(id, device, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iosv::mdl::{MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED};

    fn map(mdl: u64) -> FamilyCall {
        FamilyCall::MapLocked {
            mdl,
            mode: 0,
            cache: 1,
            requested: 0,
            bugcheck: 0,
            priority: 16,
            specify: true,
        }
    }

    #[test]
    fn family_calls_reach_the_simulated_mm_through_the_verifier_or_not() {
        let host = Arc::new(Host::try_new(iosv::config::StartParams::default()).unwrap());
        let e = HostEngine::new(Arc::clone(&host), super::super::kernel::hooks());
        let mdl = 0x7000_0000_1000;
        e.register_mdl(
            mdl,
            MdlInfo {
                byte_count: 0x1000,
                byte_offset: 0x10,
                flags: MDL_PAGES_LOCKED,
                mapped_system_va: 0,
                process: 0,
            },
        );
        // Unhooked: the simulated Mm maps (and says so in the MDL), iosv sees nothing.
        let va = e.family(None, map(mdl));
        assert_eq!(va & 0xFFF, 0x10);
        let info = e.mdl_info(mdl).unwrap();
        assert_eq!(info.mapped_system_va, va);
        assert_ne!(info.flags & MDL_MAPPED_TO_SYSTEM_VA, 0);
        assert_eq!(e.mdl_mapped_at(va), Some(mdl));
        assert!(host.mdls().mappings().iter().all(|m| !m.via_iosv));
        e.family(None, FamilyCall::UnmapLocked { base: va, mdl });
        assert_eq!(e.mdl_mapped_at(va), None);
        // Hooked: the verifier tracks the mapping; IoFreeMdl under it is IOSV017,
        // contained (unmapped first), and the audit stays clean.
        let va = e.family(Some(&[0x1234]), map(mdl));
        let audit = host.audit(&iosv_host::Injected::new(), true).unwrap();
        assert_eq!((audit.table_entries, audit.records), (1, 0));
        assert!(audit.is_clean(), "{audit:?}");
        e.family(Some(&[0x1234]), FamilyCall::FreeMdl { mdl });
        assert_eq!(e.mdl_mapped_at(va), None);
        assert_eq!(e.mdl_info(mdl), None);
        let audit = host.audit(&iosv_host::Injected::new(), true).unwrap();
        assert_eq!((audit.table_entries, audit.records), (0, 1));
        assert!(audit.corruptions.is_empty(), "{audit:?}");
    }
}
