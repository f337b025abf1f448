//! The scenario a host runs (`lab`, `host serve --scenario`): loading it with `--threads`
//! and `--seed` applied, starting the host, and running it with a progress bar.

use super::progress::Bar;
use crate::cli::RunArgs;
use crate::error::{AppError, AppResult};
use crate::model;
use iosv::config::StartParams;
use iosv_host::scenario::{self, Progress, RunSummary, Scenario};
use iosv_host::Host;
use std::path::Path;
use std::sync::Arc;

/// Text of the built-in scenario (`Scenario::builtin_default()` parses the same file),
/// for `--threads` / `--seed` without a scenario file.
const BUILTIN_TEXT: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lab.toml"));
/// Origin the host gives the built-in scenario.
const BUILTIN_ORIGIN: &str = "builtin:lab.toml";

/// The scenario to run: the file at `path` or the built-in one, with `--threads` and
/// `--seed` applied.
pub fn load(path: Option<&Path>, run: &RunArgs) -> AppResult<Scenario> {
    let bad = AppError::Scenario;
    let overrides = run.threads.is_some() || run.seed.is_some();
    let (text, origin) = match (path, overrides) {
        (Some(p), false) => return Scenario::from_file(p).map_err(bad),
        (None, false) => return Ok(Scenario::builtin_default()),
        (Some(p), true) => {
            // Read and check it as written first, so errors point into the file.
            let original = Scenario::from_file(p).map_err(bad)?;
            let text = scenario::read_file(p).map_err(bad)?;
            (text, original.origin().to_string())
        }
        (None, true) => (BUILTIN_TEXT.to_string(), BUILTIN_ORIGIN.to_string()),
    };
    let rewritten = override_stress(&text, run).map_err(|reason| AppError::ScenarioOverride {
        origin: origin.clone(),
        reason,
    })?;
    // Image paths stay relative to the scenario file's directory.
    let dir = path.and_then(Path::parent).unwrap_or(Path::new(""));
    let s = Scenario::parse_in(
        &rewritten,
        &format!("{origin} (with --threads/--seed)"),
        dir,
    )
    .map_err(bad)?;
    if run.threads.is_some() && !s.has_stress() {
        eprintln!("iosvctl: warning: {origin} has no stress phase; --threads changes nothing");
    }
    Ok(s)
}

/// The scenario text with `--threads` and `--seed` applied: the top-level `seed` and every
/// `stress` step's `threads` and `seed` replaced. The host has no API to override them, so
/// the scenario is rewritten and parsed again.
fn override_stress(text: &str, run: &RunArgs) -> Result<String, String> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    // Scenario numbers may be strings ("0x…"), which keeps seeds above i64::MAX exact.
    let seed = run.seed.map(|s| toml::Value::String(format!("0x{s:x}")));
    if let Some(s) = &seed {
        doc.insert("seed".to_string(), s.clone());
    }
    if let Some(toml::Value::Array(steps)) = doc.get_mut("step") {
        for step in steps.iter_mut().filter_map(toml::Value::as_table_mut) {
            if step.get("op").and_then(toml::Value::as_str) != Some("stress") {
                continue;
            }
            if let Some(t) = run.threads {
                let t = i64::try_from(t).map_err(|_| format!("--threads {t} is too large"))?;
                step.insert("threads".to_string(), toml::Value::Integer(t));
            }
            if let Some(s) = &seed {
                step.insert("seed".to_string(), s.clone());
            }
        }
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// A new host with `params`.
pub fn new_host(params: StartParams) -> AppResult<Arc<Host>> {
    Host::try_new(params)
        .map(Arc::new)
        .map_err(AppError::HostStart)
}

/// Runs `scenario` in `host`, with a progress bar on a terminal if `progress`.
pub fn run(host: &Host, scenario: &Scenario, progress: bool) -> AppResult<RunSummary> {
    let mut bar = Bar::new(progress);
    let r = scenario::run(host, scenario, &mut |p: &Progress| bar.update(p));
    bar.finish();
    r.map_err(AppError::ScenarioRun)
}

/// [`run`] for a scenario naming a compiled driver image: its steps go to `images`
/// (in `iosvctl lab`'s child process).
pub fn run_with_images(
    host: &Host,
    scenario: &Scenario,
    images: &mut dyn scenario::ImageDriver,
    progress: bool,
) -> AppResult<RunSummary> {
    let mut bar = Bar::new(progress);
    let r = scenario::run_with_images(host, scenario, images, &mut |p: &Progress| bar.update(p));
    bar.finish();
    r.map_err(AppError::ScenarioRun)
}

/// One line about a finished run: steps, operations, time, bugs injected.
pub fn describe_run(s: &RunSummary, origin: &str) -> String {
    format!(
        "scenario {:?} ({origin}): {} steps, {} driver operations in {}; {} bugs injected{}",
        s.name,
        s.steps,
        s.operations,
        model::age(u64::try_from(s.duration.as_nanos()).unwrap_or(u64::MAX)),
        s.expected_total(),
        if s.corruptions > 0 {
            format!(", {} simulated PTE corruptions", s.corruptions)
        } else {
            String::new()
        }
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(threads: Option<usize>, seed: Option<u64>) -> RunArgs {
        RunArgs {
            threads,
            seed,
            no_progress: true,
        }
    }

    #[test]
    fn builtin_text_is_the_builtin_scenario() {
        assert_eq!(
            Scenario::parse(BUILTIN_TEXT, BUILTIN_ORIGIN).ok(),
            Some(Scenario::builtin_default())
        );
    }

    #[test]
    fn threads_and_seed_rewrite_every_stress_phase() {
        let s = load(None, &run_args(Some(3), Some(u64::MAX))).unwrap();
        assert!(s.has_stress());
        assert_eq!(s.seed(), u64::MAX);
        let text = override_stress(BUILTIN_TEXT, &run_args(Some(3), Some(5))).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let stress: Vec<&toml::Table> = doc["step"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(toml::Value::as_table)
            .filter(|t| t.get("op").and_then(toml::Value::as_str) == Some("stress"))
            .collect();
        assert!(!stress.is_empty());
        for t in stress {
            assert_eq!(t["threads"].as_integer(), Some(3));
            assert_eq!(t["seed"].as_str(), Some("0x5"));
        }
        // Out of range: the host's parser says so.
        let e = load(None, &run_args(Some(1000), None)).err().unwrap();
        assert!(e.to_string().contains("threads must be between"), "{e}");
    }
}
