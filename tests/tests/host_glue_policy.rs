//! The portable side of iosv.sys's safety policies, through the host's Platform: slots in
//! a code section are refused and the refusal reaches `status`; the unload policy is
//! recorded the moment a slot is first written, never before; a configuration that
//! verifies nothing says so; a driver that unloads while attached is detached with its
//! leaks reported (IOSV009).

use iosv::intercept::SiteRefusal;
use iosv::protocol::{Status, STATE_NO_TARGETS, STATE_UNLOAD_BLOCKED};
use iosv::rules::RuleId;
use iosv::verifier::StartParams;
use iosv_host::{Behaviour, Host, HostError};
use iosv_tests::control::{add_target, stats, violations};
use std::sync::Arc;

fn host() -> Arc<Host> {
    Arc::new(Host::with_processors(StartParams::default(), 2).unwrap())
}

fn refusal_of(host: &Host, name: &str) -> u32 {
    let drivers = host.verifier().drivers();
    let id = drivers.find(name.as_bytes()).expect("registered");
    drivers.info(id).expect("info").hook_refusal
}

#[test]
fn an_import_table_in_a_code_section_is_refused_and_reported() {
    let host = host();
    host.declare_driver("merged.sys", Behaviour::WellBehaved, 0);
    host.link_iat_into_code("merged.sys").unwrap();
    add_target(&host, "merged.sys").unwrap();
    let d = host.load_driver("merged.sys").unwrap();
    assert_eq!(d.driver_id(), None, "not hooked at load");
    assert_eq!(
        refusal_of(&host, "merged.sys"),
        SiteRefusal::ExecutableSection.code()
    );
    // An explicit attach is refused the same way, and writes nothing.
    assert!(matches!(
        host.attach("merged.sys"),
        Err(HostError::Control(Status::HookRefused))
    ));
    assert_eq!(
        refusal_of(&host, "merged.sys"),
        SiteRefusal::ExecutableSection.code()
    );
    let flags = stats(&host).unwrap().flags;
    assert_eq!(
        flags & STATE_UNLOAD_BLOCKED,
        0,
        "nothing was written, so iosv may still unload"
    );
    assert_eq!(
        SiteRefusal::from_code(SiteRefusal::ExecutableSection.code()),
        Some(SiteRefusal::ExecutableSection)
    );
}

#[test]
fn the_first_patched_slot_blocks_unload() {
    let host = host();
    host.declare_driver("nic.sys", Behaviour::WellBehaved, 0);
    assert_eq!(stats(&host).unwrap().flags & STATE_UNLOAD_BLOCKED, 0);
    assert!(!host.verifier().unload_blocked());
    add_target(&host, "nic.sys").unwrap();
    host.load_driver("nic.sys").unwrap();
    assert!(host.verifier().unload_blocked());
    assert_ne!(stats(&host).unwrap().flags & STATE_UNLOAD_BLOCKED, 0);
    assert_eq!(refusal_of(&host, "nic.sys"), 0, "hooked: no refusal");
    // Detaching does not lift it: a call may still be on its way into a hook.
    host.detach("nic.sys").unwrap();
    assert_ne!(stats(&host).unwrap().flags & STATE_UNLOAD_BLOCKED, 0);
}

#[test]
fn a_configuration_that_verifies_nothing_says_so() {
    let host = host();
    assert_ne!(stats(&host).unwrap().flags & STATE_NO_TARGETS, 0);
    add_target(&host, "nic.sys").unwrap();
    assert_eq!(stats(&host).unwrap().flags & STATE_NO_TARGETS, 0);
}

#[test]
fn a_target_that_unloads_while_attached_reports_its_leaks() {
    let host = host();
    host.declare_driver("legacy.sys", Behaviour::Buggy(RuleId::LeakOnUnload), 1);
    add_target(&host, "legacy.sys").unwrap();
    host.load_driver("legacy.sys").unwrap();
    host.unload_driver("legacy.sys").unwrap();
    let (records, lost) = violations(&host).unwrap();
    assert_eq!(lost, 0);
    assert!(
        records.iter().any(|r| r.rule == RuleId::LeakOnUnload as u8),
        "IOSV009 for the mapping left behind: {records:?}"
    );
}
