//! `iosvctl host serve`: serve a user-mode host on a Unix socket until Ctrl-C or SIGTERM,
//! optionally after running a scenario in it, for other `iosvctl` invocations to query.

use super::{config, scenario};
use crate::cli::ServeArgs;
use crate::client::Client;
use crate::error::{AppError, AppResult};
use crate::outcome::Outcome;
use crate::stop;
use crate::transport::inproc::InProcess;
use iosv_host::endpoint;
use iosv_host::scenario::Scenario;
use std::sync::Arc;

/// `iosvctl host serve`.
pub fn run(a: &ServeArgs) -> AppResult {
    let scenario = match &a.scenario {
        Some(p) => Some(scenario::load(Some(p), &a.run)?),
        None if a.run.threads.is_some() || a.run.seed.is_some() => {
            return Err(AppError::RunArgsWithoutScenario)
        }
        None => None,
    };
    let base = scenario
        .as_ref()
        .map(Scenario::start_params)
        .unwrap_or_default();
    let host = scenario::new_host(a.params.apply(base).map_err(AppError::HostSizes)?)?;
    let mut c = Client::connect(InProcess::new(Arc::clone(&host)))?;
    config::apply(&mut c, &a.settings)?;
    if let Some(s) = &scenario {
        let summary = scenario::run(&host, s, !a.run.no_progress)?;
        eprintln!("iosvctl: {}", scenario::describe_run(&summary, s.origin()));
    }
    let path = match &a.socket {
        Some(p) => p.clone(),
        None => {
            let p = crate::transport::default_socket_path();
            #[cfg(unix)]
            if let Some(dir) = p.parent() {
                crate::transport::prepare_private_dir(dir).map_err(|source| AppError::Bind {
                    path: p.clone(),
                    source,
                })?;
            }
            p
        }
    };
    stop::install_handler();
    let bound = endpoint::bind(&path).map_err(|source| AppError::Bind {
        path: path.clone(),
        source,
    })?;
    eprintln!(
        "iosvctl: host serving on {} (Ctrl-C to stop)",
        path.display()
    );
    bound
        .serve(host, &stop::STOP, endpoint::Limits::default())
        .map_err(|source| AppError::Serve {
            path: path.clone(),
            source,
        })?;
    eprintln!("iosvctl: host stopped");
    Ok(Outcome::Clean)
}
