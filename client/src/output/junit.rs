//! JUnit XML output, for CI systems that show test results: one test suite per driver
//! seen, one test case per rule in it, and a failure wherever that driver violated that
//! rule (the failure's text lists every violation).

use crate::model::{Images, Violation};
use iosv::protocol::ViolationRecord;
use iosv::rules::RULES;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Escapes text for an XML attribute or element; drops characters XML 1.0 forbids.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// A check of the run itself (not of a driver): the journal delivered every record, the
/// lab audit matched. Reported as a test case of the suite `iosvctl`, with an `<error>`
/// when it failed, so a CI system never shows an incomplete run as a clean one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCheck {
    /// Test case name, e.g. `journal: no records lost`.
    pub name: String,
    /// What went wrong, or `None` if the check passed.
    pub problem: Option<String>,
}

fn failure_text(r: &ViolationRecord, v: &Violation<'_>, images: Option<&Images>) -> String {
    let mut t = format!("#{} {}", r.seq, v.message());
    if let Some(images) = images {
        for (label, stack) in [
            (
                "call stack",
                images.stack(&r.call_stack, r.call_stack_depth),
            ),
            ("map stack", images.stack(&r.map_stack, r.map_stack_depth)),
        ] {
            if !stack.is_empty() {
                t.push_str(&format!("\n  {label}:"));
                for f in stack {
                    t.push_str(&format!("\n    {f}"));
                }
            }
        }
    }
    t
}

/// A JUnit report of `records` over `drivers` (every driver seen, violations or not;
/// drivers named only by records are added), followed by the suite `iosvctl` with one
/// test case per check of the run (`checks`).
pub fn report(records: &[ViolationRecord], drivers: &[String], checks: &[RunCheck]) -> String {
    report_with_stacks(records, None, drivers, checks)
}

/// [`report`], with each failure's call and map stacks (symbolized when `images` has
/// symbols) under its message when `images` is given.
pub fn report_with_stacks(
    records: &[ViolationRecord],
    images: Option<&Images>,
    drivers: &[String],
    checks: &[RunCheck],
) -> String {
    // driver -> rule code -> messages
    let mut by_driver: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for d in drivers {
        by_driver.entry(d.clone()).or_default();
    }
    for r in records {
        let v = Violation::new(r);
        by_driver
            .entry(v.driver_label())
            .or_default()
            .entry(v.code())
            .or_default()
            .push(failure_text(r, &v, images));
    }
    let mut codes: Vec<(String, String)> = RULES
        .iter()
        .map(|r| (r.code.to_string(), r.name.to_string()))
        .collect();
    for rules in by_driver.values() {
        for code in rules.keys() {
            if !codes.iter().any(|(c, _)| c == code) {
                codes.push((code.clone(), "unknown-rule".to_string()));
            }
        }
    }

    let tests = by_driver.len() * codes.len() + checks.len();
    let failures: usize = by_driver.values().map(|m| m.len()).sum();
    let errors = checks.iter().filter(|c| c.problem.is_some()).count();
    let mut x = String::new();
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        x,
        r#"<testsuites name="iosv" tests="{tests}" failures="{failures}" errors="{errors}" skipped="0">"#
    );
    for (driver, rules) in &by_driver {
        let d = escape(driver);
        let _ = writeln!(
            x,
            r#"  <testsuite name="{d}" tests="{}" failures="{}" errors="0" skipped="0">"#,
            codes.len(),
            rules.len()
        );
        for (code, name) in &codes {
            let _ = write!(
                x,
                r#"    <testcase classname="iosv.{d}" name="{} {}""#,
                escape(code),
                escape(name)
            );
            match rules.get(code) {
                None => {
                    let _ = writeln!(x, "/>");
                }
                Some(msgs) => {
                    let _ = writeln!(x, ">");
                    let _ = writeln!(
                        x,
                        r#"      <failure type="{}" message="{} violation{} of {} {} by {d}">{}</failure>"#,
                        escape(code),
                        msgs.len(),
                        if msgs.len() == 1 { "" } else { "s" },
                        escape(code),
                        escape(name),
                        escape(&msgs.join("\n"))
                    );
                    let _ = writeln!(x, "    </testcase>");
                }
            }
        }
        let _ = writeln!(x, "  </testsuite>");
    }
    if !checks.is_empty() {
        let _ = writeln!(
            x,
            r#"  <testsuite name="iosvctl" tests="{}" failures="0" errors="{errors}" skipped="0">"#,
            checks.len()
        );
        for c in checks {
            let n = escape(&c.name);
            match &c.problem {
                None => {
                    let _ = writeln!(x, r#"    <testcase classname="iosvctl.run" name="{n}"/>"#);
                }
                Some(p) => {
                    let p = escape(p);
                    let _ = writeln!(x, r#"    <testcase classname="iosvctl.run" name="{n}">"#);
                    let _ = writeln!(
                        x,
                        r#"      <error type="incomplete" message="{p}">{p}</error>"#
                    );
                    let _ = writeln!(x, "    </testcase>");
                }
            }
        }
        let _ = writeln!(x, "  </testsuite>");
    }
    let _ = writeln!(x, "</testsuites>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use iosv::protocol::wire_name;

    #[test]
    fn escapes_markup_and_drops_control_characters() {
        assert_eq!(escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;");
    }

    #[test]
    fn one_case_per_rule_and_driver_with_failures_where_violated() {
        let r = ViolationRecord {
            seq: 3,
            rule: 4,
            driver_id: 1,
            driver_name: wire_name(b"bad<.sys"),
            ..Default::default()
        };
        let x = report(&[r], &["good.sys".to_string()], &[]);
        let cases = 2 * iosv::rules::RULE_COUNT;
        assert!(
            x.contains(&format!(r#"tests="{cases}" failures="1""#)),
            "{x}"
        );
        assert!(x.contains("bad&lt;.sys"));
        assert_eq!(x.matches("<testcase ").count(), cases);
        assert_eq!(x.matches("<failure ").count(), 1);
    }

    #[test]
    fn run_checks_are_errors_of_their_own_suite() {
        let checks = [
            RunCheck {
                name: "journal: no records lost".to_string(),
                problem: Some("7 records lost".to_string()),
            },
            RunCheck {
                name: "lab audit".to_string(),
                problem: None,
            },
        ];
        let x = report(&[], &["a.sys".to_string()], &checks);
        let doc = roxmltree::Document::parse(&x).expect("well-formed");
        let root = doc.root_element();
        assert_eq!(root.attribute("errors"), Some("1"));
        let errors: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("error"))
            .map(|n| n.attribute("message").unwrap_or_default().to_string())
            .collect();
        assert_eq!(errors, ["7 records lost"]);
    }
}
