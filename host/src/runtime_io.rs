//! Runtime I/O: what a started device's driver does between start and stop — map a
//! window of a BAR through `MmMapIoSpace` or `MmMapIoSpaceEx` (resolved through
//! `MmGetSystemRoutineAddress`) at PASSIVE or DISPATCH level, or unmap one it holds at
//! PASSIVE or APC level, always with the BAR's cache class and the exact size, keeping up
//! to [`MAX_RUNTIME`] windows mapped between operations. A buggy driver commits its bug
//! ([`bugs`](crate::bugs)) instead on every `bug_every`-th operation.

use crate::actor::Actor;
use crate::devices::{check, Device, PnpRequest};
use crate::driver_calls::{Held, Routine};
use crate::drivers::Behaviour;
use crate::mm::PAGE_SIZE;
use crate::{lock, thread, Host, HostError};
use iosv::phys::{CacheClass, PAGE_NOCACHE, PAGE_READWRITE, PAGE_WRITECOMBINE};
use iosv::platform::Irql;
use iosv::rules::RuleId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Runtime windows a device keeps mapped between I/O operations at most.
const MAX_RUNTIME: usize = 4;

/// The page protection that asks `MmMapIoSpaceEx` for `cache`'s cache class.
fn class_protect(cache: u32) -> u32 {
    match CacheClass::of(cache, false) {
        CacheClass::NonCached => PAGE_READWRITE | PAGE_NOCACHE,
        CacheClass::WriteCombined => PAGE_READWRITE | PAGE_WRITECOMBINE,
        CacheClass::Cached => PAGE_READWRITE,
    }
}

impl Host {
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
        check(dev, inner.state, PnpRequest::Io)?;
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
                inner.runtime.push(Held::new(base, size, tracked));
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
}
