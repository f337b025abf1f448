//! The builtin lab scenario end to end: every rule fires, exactly as injected.

use iosv_host::scenario::{run, Scenario};

#[test]
fn builtin_lab_reports_every_rule_exactly_as_injected() {
    let scenario = Scenario::builtin_default();
    let host = scenario.new_host().unwrap();
    let mut phases = 0;
    let summary = run(&host, &scenario, &mut |_| phases += 1).unwrap();
    assert!(phases > 10);
    let per_rule = summary.expected_per_rule();
    assert!(
        per_rule.iter().all(|n| *n >= 1),
        "every rule injected at least once: {per_rule:?}"
    );
    let audit = host.audit(&host.injected(), true).unwrap();
    assert!(audit.is_clean(), "{audit}");
    assert!(summary.operations > 2000, "{}", summary.operations);
    eprintln!("{summary:#?}");
}
