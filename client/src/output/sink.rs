//! Where violations go as they are read: [`ViolationSink`] prints each at once (human,
//! JSON) or keeps it for one document at the end (SARIF, JUnit), counts them, and turns
//! what it saw into the command's [`Outcome`].

use super::{human, json, junit, sarif, Format, Tally};
use crate::cli::Global;
use crate::error::AppResult;
use crate::model::{Images, Violation};
use crate::outcome::Outcome;
use iosv::protocol::ViolationRecord;
use iosv::rules::Severity;
use std::io::Write;

/// Where violations go as they are read: printed at once (human, JSON) or gathered for
/// one document at the end (SARIF, JUnit). Also counts them for the summary and the exit
/// status.
pub struct ViolationSink<'a> {
    format: Format,
    verbose: bool,
    fail_on: Severity,
    out: &'a mut dyn Write,
    images: Images,
    /// Counts for the summary.
    pub tally: Tally,
    /// Records kept for SARIF/JUnit.
    pub kept: Vec<ViolationRecord>,
    /// Lost records seen.
    pub lost: u64,
    /// Discarded records seen.
    pub discarded: u64,
    header_done: bool,
}

impl<'a> ViolationSink<'a> {
    /// A sink printing to `out` in `--format`.
    pub fn new(g: &Global, out: &'a mut dyn Write, images: Images) -> ViolationSink<'a> {
        ViolationSink::with_format(g, g.format, out, images)
    }

    /// A sink printing to `out` in `format` (`lab --format html` reads JSON lines into
    /// its report: [`Format::Html`] prints them too).
    pub fn with_format(
        g: &Global,
        format: Format,
        out: &'a mut dyn Write,
        images: Images,
    ) -> ViolationSink<'a> {
        ViolationSink {
            format,
            verbose: g.verbose > 0,
            fail_on: g.fail_on.severity(),
            out,
            images,
            tally: Tally::default(),
            kept: Vec::new(),
            lost: 0,
            discarded: 0,
            header_done: false,
        }
    }

    /// Replaces the images used to symbolize stacks (drivers loaded since); a
    /// symbolizer already in use is kept when `images` brings none.
    pub fn set_images(&mut self, images: Images) {
        let keep = self.images.symbols();
        self.images = if images.symbolizer().is_none() {
            images.with_symbols(keep)
        } else {
            images
        };
    }

    /// The images stacks are printed with.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Whether [`sample`](Self::sample) writes anything (JSON lines).
    pub fn wants_samples(&self) -> bool {
        matches!(self.format, Format::Json | Format::Html)
    }

    /// A `sample` line from GET_STATS (JSON lines only: the report's time series).
    pub fn sample(&mut self, stats: &crate::client::Stats) -> AppResult<()> {
        if self.wants_samples() {
            writeln!(self.out, "{}", json::stats_sample(stats))?;
        }
        Ok(())
    }

    /// One violation.
    pub fn record(&mut self, rec: &ViolationRecord) -> AppResult<()> {
        let v = Violation::new(rec);
        self.tally.add(&v);
        match self.format {
            Format::Human => {
                if !self.header_done {
                    writeln!(self.out, "{}", human::violation_header())?;
                    self.header_done = true;
                }
                write!(
                    self.out,
                    "{}",
                    human::violation(&v, self.verbose, &self.images)
                )?;
                self.out.flush()?;
            }
            Format::Json | Format::Html => {
                writeln!(self.out, "{}", json::violation(&v, &self.images))?;
                self.out.flush()?;
            }
            Format::Sarif | Format::Junit => self.kept.push(*rec),
        }
        Ok(())
    }

    /// Records between two cursors that could not be read.
    pub fn gap(&mut self, from: u64, to: u64, lost: u64, discarded: u64) -> AppResult<()> {
        self.lost += lost;
        self.discarded += discarded;
        if lost > 0 {
            eprintln!("iosvctl: warning: {lost} violation records lost to journal overflow between cursors {from} and {to}");
        }
        if self.wants_samples() {
            writeln!(self.out, "{}", json::gap(from, to, lost, discarded))?;
        }
        Ok(())
    }

    /// Violations at or above `--fail-on` so far.
    pub fn failing(&self) -> u64 {
        self.tally.at_least(self.fail_on)
    }

    /// The outcome so far: [`Outcome::AuditUnclean`] when `run_problem`, else
    /// [`Outcome::RecordsLost`] if records were lost, else by `--fail-on`.
    pub fn outcome(&self, run_problem: bool) -> Outcome {
        if run_problem {
            Outcome::AuditUnclean
        } else if self.lost > 0 {
            Outcome::RecordsLost
        } else if self.failing() > 0 {
            Outcome::Violations
        } else {
            Outcome::Clean
        }
    }

    /// Prints the end: the human summary, the JSON end line, or the SARIF/JUnit document.
    /// `info.problems` (an unclean lab audit) make the outcome [`Outcome::AuditUnclean`];
    /// `info.load_failure` (a failed DriverEntry) makes it [`Outcome::LoadFailed`].
    pub fn finish(&mut self, info: &sarif::RunInfo, drivers: &[String]) -> AppResult {
        let outcome = if info.load_failure.is_some() {
            Outcome::LoadFailed
        } else {
            self.outcome(!info.problems.is_empty())
        };
        match self.format {
            Format::Human => {
                if self.tally.total > 0 {
                    writeln!(self.out)?;
                }
                write!(
                    self.out,
                    "{}",
                    human::summary(&self.tally, self.lost, self.discarded)
                )?;
                writeln!(self.out, "next cursor: {}", info.next_cursor)?;
            }
            Format::Json | Format::Html => writeln!(
                self.out,
                "{}",
                json::end(
                    info.next_cursor,
                    self.tally.total,
                    self.lost,
                    self.discarded,
                    self.failing()
                )
            )?,
            Format::Sarif => {
                let mut info = info.clone();
                info.lost = self.lost;
                info.discarded = self.discarded;
                info.exit_code = outcome.exit_code();
                writeln!(
                    self.out,
                    "{:#}",
                    sarif::log(&self.kept, &self.images, &info)
                )?;
            }
            Format::Junit => {
                let mut checks = vec![junit::RunCheck {
                    name: "journal: no violation record lost".to_string(),
                    problem: (self.lost > 0).then(|| {
                        format!(
                            "{} violation records were lost to journal overflow: the results are incomplete",
                            self.lost
                        )
                    }),
                }];
                if info.audited {
                    checks.push(junit::RunCheck {
                        name: "lab audit: reports match what the run did".to_string(),
                        problem: (!info.problems.is_empty()).then(|| info.problems.join("; ")),
                    });
                }
                if let Some(failure) = &info.load_failure {
                    checks.push(junit::RunCheck {
                        // Named after the command (`run: PATH`, `lab: ORIGIN`).
                        name: format!(
                            "{}: the driver loads (DriverEntry succeeds)",
                            info.endpoint.split(':').next().unwrap_or("run")
                        ),
                        problem: Some(failure.clone()),
                    });
                }
                write!(
                    self.out,
                    "{}",
                    junit::report_with_stacks(&self.kept, Some(&self.images), drivers, &checks)
                )?
            }
        }
        self.out.flush()?;
        if self.lost > 0 && self.format != Format::Human {
            eprintln!(
                "iosvctl: error: {} violation records were lost: the results are incomplete (exit 3)",
                self.lost
            );
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use crate::outcome::Outcome;
    use crate::testutil::{buggy, run_on};

    #[test]
    fn sarif_names_rules_levels_and_locations() {
        let e = buggy();
        let (r, out) = run_on(&e, &["violations", "--format", "sarif"]);
        assert_eq!(r.unwrap(), Outcome::Violations);
        let log: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(log["version"], "2.1.0");
        let run = &log["runs"][0];
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), iosv::rules::RULE_COUNT);
        assert_eq!(rules[9]["id"], "IOSV010");
        assert_eq!(rules[9]["defaultConfiguration"]["level"], "warning");
        assert_eq!(rules[0]["helpUri"], iosv::rules::RULES[0].reference);
        let results = run["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[0]["ruleId"], "IOSV001");
        assert_eq!(results[0]["ruleIndex"], 0);
        assert_eq!(results[0]["level"], "error");
        assert_eq!(
            results[0]["locations"][0]["logicalLocations"][0]["name"],
            "nic.sys"
        );
        let text = results[0]["message"]["text"].as_str().unwrap();
        assert!(text.contains("0x800") && text.contains("0x1000"), "{text}");
    }

    #[test]
    fn junit_is_well_formed_with_a_case_per_rule_and_driver() {
        let e = buggy();
        let (r, out) = run_on(&e, &["violations", "--format", "junit"]);
        assert_eq!(r.unwrap(), Outcome::Violations);
        let doc = roxmltree::Document::parse(&out).expect("well-formed XML");
        let cases: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .filter(|n| n.attribute("classname") != Some("iosvctl.run"))
            .collect();
        assert_eq!(cases.len(), 2 * iosv::rules::RULE_COUNT);
        // The run's own check: nothing was lost.
        assert_eq!(doc.root_element().attribute("errors"), Some("0"));
        assert!(doc
            .descendants()
            .any(|n| n.attribute("classname") == Some("iosvctl.run")));
        let failed: Vec<String> = cases
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
            .map(|c| {
                format!(
                    "{} {}",
                    c.attribute("classname").unwrap(),
                    c.attribute("name").unwrap()
                )
            })
            .collect();
        assert_eq!(
            failed,
            [
                "iosv.gpu.sys IOSV010 cache-conflict",
                "iosv.nic.sys IOSV001 unmap-size-mismatch",
                "iosv.nic.sys IOSV002 unmap-irql",
                "iosv.nic.sys IOSV004 unmap-unknown",
            ]
        );
    }
}
