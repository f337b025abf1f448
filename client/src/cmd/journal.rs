//! Reading the violation journal from a cursor into a [`ViolationSink`]: what to read
//! ([`ReadPlan`]) and the poll loop ([`read_violations`]) that `violations` and `lab` share.
//! A gap (records lost to overflow or discarded by CLEAR) goes to the sink as such; with
//! `follow` the loop polls until the deadline or Ctrl-C, then reads once more.

use crate::client::{Client, VIOLATIONS_PER_CALL};
use crate::error::AppResult;
use crate::model::{Images, Violation};
use crate::output::sink::ViolationSink;
use crate::transport::Transport;
use iosv::protocol::ViolationRecord;
use std::time::{Duration, Instant};

/// How often `violations --follow --format json` writes a `sample` line.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What to read and when to stop.
#[derive(Debug, Clone, Default)]
pub struct ReadPlan {
    /// First cursor.
    pub since: u64,
    /// Stop after this many (matching) violations.
    pub max: Option<u64>,
    /// Keep polling once caught up.
    pub follow: bool,
    /// Poll interval when caught up.
    pub interval: Duration,
    /// Stop at this instant.
    pub deadline: Option<Instant>,
    /// Only these rules (empty: all).
    pub rules: Vec<iosv::rules::RuleId>,
    /// Only these blamed drivers (empty: all).
    pub drivers: Vec<String>,
    /// Following with results redirected and stderr a terminal: a status line on stderr
    /// (violations so far, cursor). `violations --no-progress` turns it off.
    pub progress: bool,
}

/// The status line of `violations --follow` on a terminal while the results go to a file
/// or pipe (when they go to the terminal, they are the progress).
struct FollowStatus {
    enabled: bool,
    last: Option<Instant>,
    shown: bool,
}

impl FollowStatus {
    fn new(plan: &ReadPlan) -> FollowStatus {
        use std::io::IsTerminal;
        FollowStatus {
            enabled: plan.follow
                && plan.progress
                && std::io::stderr().is_terminal()
                && !std::io::stdout().is_terminal(),
            last: None,
            shown: false,
        }
    }

    fn update(&mut self, matched: u64, cursor: u64) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        eprint!("\r\x1b[2Kiosvctl: following: {matched} violations so far, cursor {cursor} (Ctrl-C to stop)");
        self.last = Some(Instant::now());
        self.shown = true;
    }
}

impl Drop for FollowStatus {
    fn drop(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}

impl ReadPlan {
    fn wants(&self, rec: &ViolationRecord) -> bool {
        let v = Violation::new(rec);
        (self.rules.is_empty() || v.rule().is_some_and(|r| self.rules.contains(&r)))
            && (self.drivers.is_empty()
                || v.driver()
                    .is_some_and(|d| self.drivers.iter().any(|x| x.eq_ignore_ascii_case(&d))))
    }

    fn expired(&self) -> bool {
        crate::stop::requested() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Reads violations per `plan` into `sink`; returns the cursor to continue from.
pub fn read_violations<T: Transport>(
    c: &mut Client<T>,
    plan: &ReadPlan,
    sink: &mut ViolationSink<'_>,
) -> AppResult<u64> {
    let mut cursor = plan.since;
    let mut matched = 0u64;
    let mut idle = 0u32;
    let mut last_images = Instant::now();
    let mut last_sample: Option<Instant> = None;
    let mut status = FollowStatus::new(plan);
    loop {
        status.update(matched, cursor);
        // Following: a `sample` line (JSON) at most every SAMPLE_EVERY, the time series
        // of the HTML report (`iosvctl report --html`).
        if plan.follow
            && sink.wants_samples()
            && last_sample.is_none_or(|t| t.elapsed() >= SAMPLE_EVERY)
        {
            sink.sample(&c.stats()?)?;
            last_sample = Some(Instant::now());
        }
        let want = match plan.max {
            Some(m) => u32::try_from(m.saturating_sub(matched))
                .unwrap_or(u32::MAX)
                .min(VIOLATIONS_PER_CALL),
            None => VIOLATIONS_PER_CALL,
        };
        if want == 0 {
            break;
        }
        let batch = c.read_violations(cursor, want)?;
        if batch.lost > 0 || batch.discarded > 0 {
            sink.gap(cursor, batch.next_cursor, batch.lost, batch.discarded)?;
        }
        let progressed = batch.next_cursor != cursor || !batch.records.is_empty();
        if !batch.records.is_empty()
            && plan.follow
            && last_images.elapsed() > Duration::from_secs(1)
        {
            // Drivers may have loaded since the stacks' images were read.
            let fresh = Images::from_stats(&c.stats()?.drivers);
            let fresh = if sink.images().symbolizer().is_some() {
                fresh.with_debug(&c.image_debug()?)
            } else {
                fresh
            };
            sink.set_images(fresh);
            last_images = Instant::now();
        }
        for rec in &batch.records {
            if plan.wants(rec) {
                sink.record(rec)?;
                matched += 1;
                if plan.max.is_some_and(|m| matched >= m) {
                    return Ok(rec.seq.saturating_add(1));
                }
            }
        }
        cursor = batch.next_cursor;
        let caught_up = batch.records.is_empty() && cursor >= batch.tail;
        if progressed && !caught_up {
            idle = 0;
            if plan.follow && plan.expired() {
                break;
            }
            continue;
        }
        // Caught up, or a slot between cursor and tail is still being written.
        if !plan.follow {
            idle += 1;
            if caught_up || idle > 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if plan.expired() {
            break;
        }
        let until = Instant::now() + plan.interval;
        while Instant::now() < until && !plan.expired() {
            std::thread::sleep(Duration::from_millis(20).min(plan.interval));
        }
        if plan.expired() {
            // One last read so nothing written before the deadline is left behind.
            let batch = c.read_violations(cursor, VIOLATIONS_PER_CALL)?;
            for rec in batch.records.iter().filter(|r| plan.wants(r)) {
                sink.record(rec)?;
            }
            if batch.lost > 0 || batch.discarded > 0 {
                sink.gap(cursor, batch.next_cursor, batch.lost, batch.discarded)?;
            }
            cursor = batch.next_cursor;
            break;
        }
    }
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use crate::outcome::Outcome;
    use crate::testutil::{buggy, json_lines, run_line};
    use std::time::{Duration, Instant};

    #[test]
    fn follow_stops_at_its_deadline() {
        let e = buggy();
        let start = Instant::now();
        let (r, out) = run_line(&e, "violations -f json --duration 300ms --interval 50ms");
        assert_eq!(r.unwrap(), Outcome::Violations);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            json_lines(&out)
                .iter()
                .filter(|o| o["kind"] == "violation")
                .count(),
            4
        );
    }
}
