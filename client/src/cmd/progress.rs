//! The progress bar of a scenario run (`lab`, `host serve --scenario`).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use iosv_host::scenario::Progress;
use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

/// A progress bar on stderr that appears only when a run lasts (and stderr is a terminal).
pub(super) struct Bar {
    start: Instant,
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Bar {
    /// A bar that may appear (`enabled`: the user did not pass --no-progress).
    pub(super) fn new(enabled: bool) -> Bar {
        Bar {
            start: Instant::now(),
            bar: None,
            enabled: enabled && io::stderr().is_terminal(),
        }
    }

    /// Shows `p` (creating the bar once the run has lasted).
    pub(super) fn update(&mut self, p: &Progress) {
        if !self.enabled {
            return;
        }
        if self.bar.is_none() && self.start.elapsed() >= Duration::from_millis(300) {
            let b = ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            self.bar = Some(b);
        }
        if let Some(b) = &self.bar {
            b.set_length(p.total);
            b.set_position(p.done);
            b.set_message(p.phase.clone());
        }
    }

    /// Removes the bar.
    pub(super) fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
