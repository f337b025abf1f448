//! `iosvctl attach` and `detach`: patch or restore a loaded driver's import slots without a
//! reboot.

use super::json_line;
use crate::cli::Global;
use crate::client::{Client, ClientError};
use crate::error::{AppError, AppResult};
use crate::model;
use crate::outcome::Outcome;
use crate::output::Format;
use crate::transport::Transport;
use std::io::Write;

/// `iosvctl attach NAME` (`on`) or `iosvctl detach NAME`.
pub fn run<T: Transport>(
    g: &Global,
    name: &str,
    on: bool,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    let result = if on { c.attach(name) } else { c.detach(name) };
    let slots = match result {
        Ok(slots) => slots,
        Err(ClientError::Status {
            status: iosv::protocol::Status::HookRefused,
            ..
        }) => {
            // Say why: the driver's entry in the status carries the refusal.
            let why = c
                .stats()
                .ok()
                .and_then(|s| {
                    s.drivers
                        .iter()
                        .find(|d| model::name(&d.name).eq_ignore_ascii_case(name))
                        .and_then(|d| model::hook_refusal(d.hook_refusal))
                })
                .unwrap_or("see iosvctl status");
            return Err(AppError::HookRefused {
                name: name.to_string(),
                why,
            });
        }
        Err(e) => return Err(e.into()),
    };
    match g.format {
        Format::Json => json_line(
            out,
            &serde_json::json!({ "kind": if on { "attach" } else { "detach" }, "driver": name, "slots": slots }),
        )?,
        _ => {
            if on {
                writeln!(out, "attached to {name}: {slots} import slots patched")?
            } else {
                writeln!(out, "detached from {name}: {slots} import slots restored")?
            }
        }
    }
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use crate::testutil::{run_on, Engine};

    #[test]
    fn attach_counts_the_slots_and_detach_names_an_unknown_driver() {
        let e = Engine::new();
        let (_, out) = run_on(&e, &["attach", "nic.sys"]);
        assert_eq!(out.trim(), "attached to nic.sys: 3 import slots patched");
        let (r, _) = run_on(&e, &["detach", "other.sys"]);
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("no loaded driver has that name"));
    }
}
