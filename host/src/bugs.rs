//! Bug injection: one instance of one rule's bug, on demand ([`Host::commit_bug`]) or as
//! a buggy driver's runtime I/O, each rule its own small function ([`injector`]).
//!
//! Each bug produces exactly one violation of exactly its rule, even with other threads
//! running (as long as each thread uses its own [`Actor`] and its own drivers' devices):
//! double unmaps and stale entries use a page count private to the actor, so no other
//! thread can be handed the freed address in between; unknown addresses come from a
//! range the simulated Mm never hands out; cache conflicts overlap only the actor's own
//! scratch window or the device's own BAR. The two bugs that call as a second driver
//! (IOSV005 after address reuse maps through it, IOSV012 unmaps through it) borrow that
//! driver from whichever thread owns it ([`borrow`]): while borrowed it cannot unload, be
//! detached or attached, or start a device (iosv would report the borrowed mapping as its
//! leak, or attribute it to the starting device); if it cannot be borrowed at once, the
//! first becomes a plain double unmap and the second is not committed. Every bug that
//! reaches iosv (the driver is hooked) is counted in [`Host::injected`], with the driver
//! iosv should blame ([`expected`](crate::expected)).

use crate::actor::Actor;
use crate::devices::{Device, PnpState, Teardown};
use crate::driver_calls::{DriverRef, Held, Routine};
use crate::drivers::{borrow, SimDriver};
use crate::mm::{MM_CACHED, MM_NON_CACHED, NEVER_MAPPED_START, PAGE_SIZE};
use crate::{lock, thread, Host, HostError};
use iosv::phys::{CacheClass, PAGE_NOCACHE, PAGE_READWRITE, PAGE_WRITECOMBINE};
use iosv::platform::Irql;
use iosv::rules::RuleId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::vec::Vec;

/// DIRQL of the unmap-at-bad-IRQL bug.
const DIRQL_UNMAP: Irql = Irql(5);
/// DIRQL of the map-at-bad-IRQL bug.
const DIRQL_MAP: Irql = Irql(6);

/// One bug about to be committed: the rule, the driver that commits it, the device and
/// second driver when the rule uses them, and the committing thread's actor.
pub(crate) struct Bug<'a> {
    host: &'a Host,
    rule: RuleId,
    d: &'a DriverRef,
    dev: Option<&'a Arc<Device>>,
    foreign: Option<&'a DriverRef>,
    actor: &'a mut Actor,
}

impl Bug<'_> {
    /// Counts the bug, blamed on the committing driver, if it `reached` iosv; returns
    /// `reached`.
    fn counted(&self, reached: bool) -> bool {
        self.host.counted(self.rule, self.d, reached)
    }
}

/// Commits one bug; returns whether it was counted (it reached iosv).
type Injector = fn(&mut Bug<'_>) -> Result<bool, HostError>;

/// The function that commits `rule`'s bug.
pub(crate) fn injector(rule: RuleId) -> Injector {
    match rule {
        RuleId::UnmapSizeMismatch => unmap_size_mismatch,
        RuleId::UnmapIrql => unmap_irql,
        RuleId::MapIrql => map_irql,
        RuleId::UnmapUnknown => unmap_unknown,
        RuleId::DoubleUnmap => double_unmap,
        RuleId::UnmapInterior => unmap_interior,
        RuleId::LeakOnStop => leak_on_stop,
        RuleId::LeakOnRemove => leak_on_remove,
        RuleId::LeakOnUnload => leak_on_unload,
        RuleId::CacheConflict => cache_conflict,
        RuleId::MapBadParameters => map_bad_parameters,
        RuleId::UnmapForeign => unmap_foreign,
        RuleId::StaleEntry => stale_entry,
        RuleId::UnmapPageBase => unmap_page_base,
        RuleId::MdlUnmapWrongMdl
        | RuleId::MdlUnmapIrql
        | RuleId::MdlReleasedWhileMapped
        | RuleId::ReservedFreedWhileMapped
        | RuleId::ReservedMappedTwice
        | RuleId::ReservedSize
        | RuleId::UnmapOtherProcess
        | RuleId::ReservedTagMismatch
        | RuleId::ReservedMapNotReserved => mdl_family,
    }
}

/// IOSV015–IOSV023: the MDL and reserved-mapping family (`crate::mdl::commit`).
fn mdl_family(b: &mut Bug<'_>) -> Result<bool, HostError> {
    crate::mdl::commit(b.host, b.rule, b.d)
}

/// IOSV001: unmaps a window with one page more than it mapped.
fn unmap_size_mismatch(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let (p, size) = b.actor.window();
    thread::with_irql(Irql::PASSIVE, || {
        let h = b.d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
        let reached =
            b.d.unmap_io_space(Routine::Dispatch, h.base, size.saturating_add(PAGE_SIZE))?;
        Ok(b.counted(h.tracked && reached))
    })
}

/// IOSV002: unmaps from an ISR, at DIRQL.
fn unmap_irql(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let (p, size) = b.actor.window();
    let h = thread::with_irql(Irql::PASSIVE, || {
        b.d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)
    })?;
    let reached = thread::with_irql(DIRQL_UNMAP, || b.d.release(Routine::Isr, &h))?;
    Ok(b.counted(h.tracked && reached))
}

/// IOSV003: maps from an ISR, at DIRQL (and unmaps at PASSIVE_LEVEL); every other time,
/// where the MDL family is hooked, maps a user buffer into its process from a DPC
/// ([`crate::mdl::commit_map_irql`]).
fn map_irql(b: &mut Bug<'_>) -> Result<bool, HostError> {
    b.actor.map_irql = b.actor.map_irql.wrapping_add(1);
    if b.actor.map_irql.is_multiple_of(2) {
        if let Some(reached) = crate::mdl::commit_map_irql(b.d, b.host)? {
            return Ok(b.counted(reached));
        }
    }
    let (p, size) = b.actor.window();
    let (base, hooked) = thread::with_irql(DIRQL_MAP, || {
        b.d.map_io_space(Routine::Isr, p, size, MM_NON_CACHED)
    })?;
    if base != 0 {
        thread::with_irql(Irql::PASSIVE, || {
            b.d.unmap_io_space(Routine::Dispatch, base, size)
        })?;
    }
    Ok(b.counted(hooked))
}

/// IOSV004: unmaps an address the Mm never hands out.
fn unmap_unknown(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let n = b.host.sys.next_unknown.fetch_add(1, Ordering::Relaxed);
    let address = NEVER_MAPPED_START
        .wrapping_add(n.wrapping_mul(PAGE_SIZE))
        .wrapping_add(0x40);
    let reached = thread::with_irql(Irql::PASSIVE, || {
        b.d.unmap_io_space(Routine::Dispatch, address, PAGE_SIZE)
    })?;
    Ok(b.counted(reached))
}

/// IOSV005: unmaps its own mapping twice; every other time, when another attached driver
/// can be borrowed, the stale pointer after address reuse
/// ([`Host::stale_unmap_after_reuse`]).
fn double_unmap(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let stale = b.actor.double_unmap % 2 == 1;
    b.actor.double_unmap = b.actor.double_unmap.wrapping_add(1);
    if stale {
        // The other driver maps in between: borrowed, so its owner cannot unload it (iosv
        // would report the mapping as its leak) or start one of its devices (iosv would
        // attribute the mapping to the device) meanwhile. If none can be borrowed now, a
        // plain double unmap.
        for other in b.host.foreign_drivers(b.d) {
            let Some(_borrowed) = borrow(&other) else {
                continue;
            };
            if other.driver_id().is_some() && other.driver.starting.load(Ordering::SeqCst) == 0 {
                return b.host.stale_unmap_after_reuse(b.d, &other, b.actor);
            }
        }
    }
    let size = b.actor.private_pages().wrapping_mul(PAGE_SIZE);
    let h = thread::with_irql(Irql::PASSIVE, || {
        b.d.hold(Routine::Dispatch, b.actor.scratch(), size, MM_NON_CACHED)
    })?;
    let first = thread::with_irql(Irql::PASSIVE, || b.d.release(Routine::Dispatch, &h))?;
    let second = thread::with_irql(Irql::PASSIVE, || b.d.release(Routine::RemoveDevice, &h))?;
    Ok(b.counted(h.tracked && first && second))
}

/// IOSV006: unmaps the second page of a live window.
fn unmap_interior(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let (p, size) = b.actor.window();
    let h = thread::with_irql(Irql::PASSIVE, || {
        b.d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)
    })?;
    let reached = thread::with_irql(Irql::PASSIVE, || {
        b.d.unmap_io_space(Routine::Dispatch, h.base.wrapping_add(PAGE_SIZE), PAGE_SIZE)
    })?;
    thread::with_irql(Irql::PASSIVE, || b.d.release(Routine::Dispatch, &h))?;
    Ok(b.counted(h.tracked && reached))
}

/// IOSV007: stops the (started) device, keeping BAR 0 mapped.
fn leak_on_stop(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let dev = b.dev.ok_or(HostError::NeedsDevice(b.rule))?;
    b.host.ensure_started(dev)?;
    thread::with_irql(Irql::PASSIVE, || {
        b.host.send_teardown(dev, Teardown::STOP, true)
    })
}

/// IOSV008: surprise-removes and removes the (started) device, keeping BAR 0 mapped; a
/// new device of the same name is added.
fn leak_on_remove(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let dev = b.dev.ok_or(HostError::NeedsDevice(b.rule))?;
    let host = b.host;
    host.ensure_started(dev)?;
    let counted = thread::with_irql(Irql::PASSIVE, || {
        host.send_teardown(dev, Teardown::SURPRISE_REMOVAL, true)
    })?;
    let more = thread::with_irql(Irql::PASSIVE, || {
        host.send_teardown(dev, Teardown::REMOVE, false)
    })?;
    host.add_device(&dev.name, &dev.driver.name, &dev.bars)?;
    Ok(counted || more)
}

/// IOSV009: see [`Host::leak_on_unload`].
fn leak_on_unload(b: &mut Bug<'_>) -> Result<bool, HostError> {
    thread::with_irql(Irql::PASSIVE, || b.host.leak_on_unload(b.d))
}

/// The cache type of the other class than `cache`'s (cached ↔ non-cached).
fn other_class(cache: u32) -> u32 {
    match CacheClass::of(cache, false) {
        CacheClass::NonCached => MM_CACHED,
        CacheClass::Cached | CacheClass::WriteCombined => MM_NON_CACHED,
    }
}

/// IOSV010: maps the first page of the started device's BAR 0 with the other cache
/// class, or else a page of the actor's scratch window twice, non-cached then cached.
fn cache_conflict(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let (host, d, rule, actor) = (b.host, b.d, b.rule, &mut *b.actor);
    let bar0 = b.dev.and_then(|dev| {
        let inner = lock(&dev.inner);
        match (
            inner.state,
            inner.bars.first().copied().flatten(),
            dev.bars.first(),
        ) {
            (PnpState::Started, Some(h), Some(bar)) if h.tracked => Some(*bar),
            _ => None,
        }
    });
    thread::with_irql(Irql::PASSIVE, || match bar0 {
        Some(bar) => {
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
            Ok(host.counted(rule, d, hooked && base != 0))
        }
        None => {
            let p = actor
                .scratch()
                .wrapping_add(0x2000_0000)
                .wrapping_add(actor.rng.below(0x1000).wrapping_mul(PAGE_SIZE));
            let first = d.hold(Routine::Dispatch, p, PAGE_SIZE, MM_NON_CACHED)?;
            let (base, hooked) = d.map_io_space(Routine::Dispatch, p, PAGE_SIZE, MM_CACHED)?;
            if base != 0 {
                d.unmap_io_space(Routine::Dispatch, base, PAGE_SIZE)?;
            }
            d.release(Routine::Dispatch, &first)?;
            Ok(host.counted(rule, d, first.tracked && hooked && base != 0))
        }
    })
}

/// IOSV011: in turn, a cache type out of range, a zero length, and a page protection
/// with two cache attributes (through `MmMapIoSpaceEx`).
fn map_bad_parameters(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let variant = b.actor.bad_parameter % 3;
    b.actor.bad_parameter = b.actor.bad_parameter.wrapping_add(1);
    let (p, size) = b.actor.window();
    let d = b.d;
    thread::with_irql(Irql::PASSIVE, || {
        let (base, hooked, used) = match variant {
            0 => {
                let (base, h) = d.map_io_space(Routine::Dispatch, p, size, 7)?;
                (base, h, size)
            }
            1 => {
                let (base, h) = d.map_io_space(Routine::Dispatch, p, 0, MM_NON_CACHED)?;
                (base, h, 0)
            }
            _ => {
                let prot = PAGE_READWRITE | PAGE_NOCACHE | PAGE_WRITECOMBINE;
                let (base, h) = d.map_io_space_ex(Routine::Dispatch, p, size, prot)?;
                (base, h, size)
            }
        };
        if base != 0 {
            d.unmap_io_space(Routine::Dispatch, base, used)?;
        }
        Ok(b.counted(hooked))
    })
}

/// IOSV012: a second driver (named, or another attached one) unmaps a live mapping of
/// the committing driver; blamed on the second driver.
fn unmap_foreign(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let (host, d, rule) = (b.host, b.d, b.rule);
    let other = match b.foreign {
        Some(f) => f.clone(),
        None => host.foreign_for(d)?,
    };
    // Borrowed, so its owner cannot unload (or detach) it between its unmap and the
    // count; if it is busy now, no bug is committed.
    let Some(_borrowed) = borrow(&other) else {
        return Ok(false);
    };
    let attached = other.driver_id().is_some();
    let (p, size) = b.actor.window();
    thread::with_irql(Irql::PASSIVE, || {
        // An address `other` mapped or unmapped itself before would make its unmap a
        // stale pointer after reuse (IOSV005, as iosv judges it): the owner takes another
        // mapping instead, a bounded number of times.
        let mut spare = Vec::new();
        let mut h = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
        while spare.len() < 8 && host.was_used_by(h.base, &other) {
            let next = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
            spare.push(core::mem::replace(&mut h, next));
        }
        let unambiguous = !host.was_used_by(h.base, &other);
        let reached = other.release(Routine::Dispatch, &h);
        // The owner's mapping is still mapped if iosv contained the call or the call was
        // never made: the owner unmaps it itself (and its spares, whatever happened). Not
        // asked of the Mm: once the call unmapped it, another thread may already have been
        // handed the same base.
        let kept = match reached {
            Ok(true) => host.verifier.settings().containment(),
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
        Ok(host.counted(rule, &other, h.tracked && reached && attached))
    })
}

/// IOSV014: half a page into a page of the window, one page long: the mapping spans two
/// pages, and `MmUnmapIoSpace(PAGE_ALIGN(base), PAGE_SIZE)` would unmap one.
fn unmap_page_base(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let (p, _) = b.actor.window();
    let p = (p & !(PAGE_SIZE - 1)) | 0x800;
    thread::with_irql(Irql::PASSIVE, || {
        let h = b.d.hold(Routine::Dispatch, p, PAGE_SIZE, MM_NON_CACHED)?;
        let reached =
            b.d.unmap_io_space(Routine::Dispatch, h.base & !(PAGE_SIZE - 1), PAGE_SIZE)?;
        Ok(b.counted(h.tracked && reached))
    })
}

/// IOSV013: unmaps behind iosv's back (a pointer that bypasses the hook), then maps the
/// same private page count again: Mm hands out the base iosv still holds.
fn stale_entry(b: &mut Bug<'_>) -> Result<bool, HostError> {
    let size = b.actor.private_pages().wrapping_mul(PAGE_SIZE);
    let p = b.actor.scratch();
    let d = b.d;
    thread::with_irql(Irql::PASSIVE, || {
        let first = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
        d.unmap_io_space_direct(Routine::WorkItem, first.base, size)?;
        let second = d.hold(Routine::Dispatch, p, size, MM_NON_CACHED)?;
        d.release(Routine::Dispatch, &second)?;
        Ok(b.counted(first.tracked && second.tracked && first.base == second.base))
    })
}

impl Host {
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
        self.commit_bug_with(rule, driver, device, None, actor)
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

    /// Commits `rule`'s bug by `d` (see [`Host::commit_bug`]).
    pub(crate) fn commit(
        &self,
        rule: RuleId,
        d: &DriverRef,
        dev: Option<&Arc<Device>>,
        foreign: Option<&DriverRef>,
        actor: &mut Actor,
    ) -> Result<bool, HostError> {
        injector(rule)(&mut Bug {
            host: self,
            rule,
            d,
            dev,
            foreign,
            actor,
        })
    }

    /// Counts a bug of `rule` blamed on `blamed` if it `reached` iosv; returns `reached`.
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

    /// The first of [`Host::foreign_drivers`].
    fn foreign_for(&self, d: &DriverRef) -> Result<DriverRef, HostError> {
        self.foreign_drivers(d)
            .into_iter()
            .next()
            .ok_or(HostError::NoForeignDriver)
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

    /// IOSV009: removes the driver's devices, maps a control block it leaks, unloads and
    /// reloads the driver, and adds (and starts) the devices again. Counted when the
    /// unload made the ledger expect one more leak.
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
                self.send_teardown(&dev, Teardown::STOP, false)?;
            }
            self.send_teardown(&dev, Teardown::REMOVE, false)?;
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
        lock(&d.driver.globals).push((Held::new(base, 0x3000, tracked), true));
        let before = self.sys.ledger.count_of(RuleId::LeakOnUnload, &name);
        self.unload_driver(&name)?;
        let after = self.sys.ledger.count_of(RuleId::LeakOnUnload, &name);
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
