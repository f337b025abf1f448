//! What iosv is expected to report: the ledger of injected bugs ([`Injected`]) and the
//! leaks iosv reports at a teardown, a detach or an unload.
//!
//! A bug is counted once, under its rule and the driver iosv should blame, when it
//! reached iosv — unless the rule's action is `ignore` at that moment (iosv journals
//! nothing then). A mapping a driver holds is counted as a leak at most once: iosv reports
//! each live mapping once, at the first detach or unload that finds it
//! ([`Held::claim_leak`]).

use crate::devices::{Device, DeviceInner};
use crate::driver_calls::Held;
use crate::drivers::SimDriver;
use crate::platform::System;
use crate::{lock, Injected};
use iosv::rules::{Action, RuleId};
use std::string::String;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

/// The injected bugs counted so far, shared by every thread of the host.
#[derive(Default)]
pub(crate) struct Ledger {
    counts: Mutex<Injected>,
}

impl Ledger {
    /// Counts one bug of `rule` blamed on `driver`, taken while the rule's action is
    /// `action`; returns whether it was counted (not for `ignore`).
    pub(crate) fn count(&self, rule: RuleId, driver: &str, action: Action) -> bool {
        if action == Action::Ignore {
            return false;
        }
        let mut m = lock(&self.counts);
        let c = m.entry((rule, String::from(driver))).or_insert(0);
        *c = c.saturating_add(1);
        true
    }

    /// How many bugs of `rule` blamed on `driver` were counted.
    pub(crate) fn count_of(&self, rule: RuleId, driver: &str) -> u64 {
        lock(&self.counts)
            .get(&(rule, String::from(driver)))
            .copied()
            .unwrap_or(0)
    }

    /// Everything counted so far.
    pub(crate) fn snapshot(&self) -> Injected {
        lock(&self.counts).clone()
    }
}

impl System {
    /// Counts one injected bug of `rule` blamed on `driver`, unless the rule's action is
    /// `ignore` (then iosv journals nothing for it).
    pub(crate) fn inject(&self, rule: RuleId, driver: &str) {
        let action = self
            .verifier()
            .map_or(Action::Report, |v| v.settings().action(rule));
        self.ledger.count(rule, driver, action);
    }

    /// [`System::inject`] `n` times.
    fn inject_times(&self, rule: RuleId, driver: &str, n: u64) {
        for _ in 0..n {
            self.inject(rule, driver);
        }
    }
}

impl Held {
    /// Marks the mapping reported as leaked if iosv tracks it and has not reported it
    /// yet; returns whether it did (iosv will report it now).
    pub(crate) fn claim_leak(&mut self) -> bool {
        let claim = self.tracked && !self.reported;
        if claim {
            self.reported = true;
        }
        claim
    }
}

/// Claims ([`Held::claim_leak`]) each of `held`; returns how many were claimed.
fn claim_leaks<'a>(held: impl Iterator<Item = &'a mut Held>) -> u64 {
    held.map(Held::claim_leak).filter(|c| *c).count() as u64
}

/// At an unload iosv reports the driver's mappings still live (IOSV009): count the
/// global ones the driver leaks through iosv that iosv has not reported yet.
pub(crate) fn expect_unload_leaks(sys: &System, driver: &SimDriver) {
    let n = claim_leaks(lock(&driver.globals).iter_mut().map(|(h, _)| h));
    sys.inject_times(RuleId::LeakOnUnload, &driver.name, n);
}

/// At a detach iosv reports every live mapping of the driver (IOSV009, detach flag):
/// count those the driver holds through iosv and iosv has not reported yet.
pub(crate) fn expect_detach_leaks(sys: &System, driver: &Arc<SimDriver>) {
    let mut n = claim_leaks(lock(&driver.globals).iter_mut().map(|(h, _)| h));
    let devices: Vec<Arc<Device>> = lock(&sys.devices)
        .values()
        .filter(|d| Arc::ptr_eq(&d.driver, driver))
        .cloned()
        .collect();
    for dev in devices {
        let mut inner = lock(&dev.inner);
        let DeviceInner { bars, runtime, .. } = &mut *inner;
        n = n.saturating_add(claim_leaks(
            bars.iter_mut().flatten().chain(runtime.iter_mut()),
        ));
    }
    sys.inject_times(RuleId::LeakOnUnload, &driver.name, n);
}

/// A device teardown that kept `leaked` mapped: iosv reports it under `rule` (IOSV007,
/// IOSV008) if it saw the PnP event (`seen`) and tracks the mapping as the device's, not
/// reported yet. Counts it, blamed on `driver`; returns whether it did.
pub(crate) fn expect_teardown_leak(
    sys: &System,
    rule: RuleId,
    driver: &str,
    leaked: Option<Held>,
    seen: bool,
) -> bool {
    match leaked {
        Some(h) if seen && h.tracked && h.device_attr && !h.reported => {
            sys.inject(rule, driver);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::configure;
    use crate::{Behaviour, Host};
    use iosv::config::StartParams;

    fn held(tracked: bool) -> Held {
        Held::new(0x1000, 0x1000, tracked)
    }

    #[test]
    fn the_ledger_counts_per_rule_and_driver_and_skips_ignored_rules() {
        let l = Ledger::default();
        assert!(l.count(RuleId::DoubleUnmap, "a.sys", Action::Report));
        assert!(l.count(RuleId::DoubleUnmap, "a.sys", Action::Break));
        assert!(l.count(RuleId::DoubleUnmap, "b.sys", Action::Bugcheck));
        assert!(!l.count(RuleId::UnmapIrql, "a.sys", Action::Ignore));
        assert_eq!(l.count_of(RuleId::DoubleUnmap, "a.sys"), 2);
        assert_eq!(l.count_of(RuleId::DoubleUnmap, "b.sys"), 1);
        assert_eq!(l.count_of(RuleId::UnmapIrql, "a.sys"), 0);
        let all = l.snapshot();
        assert_eq!(all.len(), 2, "no entry for the ignored rule: {all:?}");
    }

    #[test]
    fn a_held_mapping_is_claimed_as_leaked_once_and_only_if_tracked() {
        let mut h = held(true);
        assert!(h.claim_leak());
        assert!(!h.claim_leak(), "reported already");
        let mut untracked = held(false);
        assert!(!untracked.claim_leak(), "iosv never saw it");
        let mut v = [held(true), held(false), held(true)];
        assert_eq!(claim_leaks(v.iter_mut()), 2);
        assert_eq!(claim_leaks(v.iter_mut()), 0);
    }

    #[test]
    fn a_teardown_leak_counts_only_a_device_mapping_iosv_saw() {
        let host = Host::with_processors(StartParams::default(), 1).unwrap();
        let device = Held {
            device_attr: true,
            ..held(true)
        };
        let reported = Held {
            reported: true,
            ..device
        };
        // (what was kept mapped, whether iosv saw the PnP event, counted)
        let cases = [
            (Some(held(true)), true, false),
            (Some(device), false, false),
            (None, true, false),
            (Some(reported), true, false),
            (Some(device), true, true),
        ];
        for (leaked, seen, counted) in cases {
            let leak = expect_teardown_leak(&host.sys, RuleId::LeakOnStop, "a.sys", leaked, seen);
            assert_eq!(leak, counted, "{leaked:?} seen={seen}");
        }
        assert_eq!(host.sys.ledger.count_of(RuleId::LeakOnStop, "a.sys"), 1);
    }

    /// A host with hooked driver `a.sys`.
    fn hooked() -> Host {
        let host = Host::with_processors(StartParams::default(), 1).unwrap();
        crate::requests::add_target(&host, "a.sys").unwrap();
        host.declare_driver("a.sys", Behaviour::WellBehaved, 0);
        assert!(host.load_driver("a.sys").unwrap().driver_id().is_some());
        host
    }

    #[test]
    fn a_committed_bug_is_counted_once_under_the_committing_driver() {
        let host = hooked();
        let mut actor = host.actor(1);
        assert!(host
            .commit_bug(RuleId::UnmapUnknown, "a.sys", None, &mut actor)
            .unwrap());
        let injected = host.injected();
        assert_eq!(
            injected.get(&(RuleId::UnmapUnknown, String::from("a.sys"))),
            Some(&1)
        );
        assert_eq!(injected.len(), 1);
    }

    #[test]
    fn a_bug_of_an_ignored_rule_or_an_unhooked_driver_is_not_counted() {
        let host = hooked();
        let mut actor = host.actor(1);
        configure(&host, |b| {
            if let Some(a) = b.actions.get_mut(RuleId::UnmapUnknown.index()) {
                *a = Action::Ignore as u8;
            }
        })
        .unwrap();
        assert!(host
            .commit_bug(RuleId::UnmapUnknown, "a.sys", None, &mut actor)
            .unwrap());
        host.declare_driver("plain.sys", Behaviour::WellBehaved, 0);
        host.load_driver("plain.sys").unwrap();
        assert!(!host
            .commit_bug(RuleId::UnmapSizeMismatch, "plain.sys", None, &mut actor)
            .unwrap());
        assert!(host.injected().is_empty(), "{:?}", host.injected());
    }

    #[test]
    fn a_leak_is_expected_once_at_the_detach_not_again_at_the_unload() {
        let host = Host::with_processors(StartParams::default(), 1).unwrap();
        crate::requests::add_target(&host, "a.sys").unwrap();
        host.declare_driver("a.sys", Behaviour::Buggy(RuleId::LeakOnUnload), 0);
        host.load_driver("a.sys").unwrap();
        host.attach("a.sys").unwrap();
        host.detach("a.sys").unwrap();
        assert_eq!(host.sys.ledger.count_of(RuleId::LeakOnUnload, "a.sys"), 1);
        host.unload_driver("a.sys").unwrap();
        assert_eq!(host.sys.ledger.count_of(RuleId::LeakOnUnload, "a.sys"), 1);
    }
}
