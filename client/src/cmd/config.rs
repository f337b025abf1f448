//! `iosvctl config get | set`, and the settings `lab` and `host serve` apply at start:
//! read, change and write the run-time configuration block.

use super::json_line;
use crate::cli::{ConfigCommand, Global, Settings};
use crate::client::Client;
use crate::error::{AppError, AppResult};
use crate::outcome::Outcome;
use crate::output::{human, json, Format};
use crate::transport::Transport;
use iosv::protocol::ConfigBlock;
use std::io::Write;

/// Applies `settings` through SET_CONFIG (nothing when empty); returns the new block.
pub fn apply<T: Transport>(c: &mut Client<T>, settings: &Settings) -> AppResult<ConfigBlock> {
    let mut block = c.get_config()?;
    if settings.is_empty() {
        return Ok(block);
    }
    settings.apply(&mut block).map_err(AppError::Settings)?;
    if block.stack_depth > c.hello().max_stack_depth {
        return Err(AppError::StackDepth {
            depth: block.stack_depth,
            max: c.hello().max_stack_depth,
        });
    }
    c.set_config(&block)?;
    Ok(c.get_config()?)
}

/// `iosvctl config get | set`.
pub fn run<T: Transport>(
    g: &Global,
    cmd: &ConfigCommand,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    let block = match cmd {
        ConfigCommand::Get => c.get_config()?,
        ConfigCommand::Set(s) => {
            if s.is_empty() {
                return Err(AppError::NothingToSet);
            }
            apply(c, s)?
        }
    };
    match g.format {
        Format::Json => json_line(out, &json::config(&block))?,
        _ => write!(out, "{}", human::config(&block))?,
    }
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use crate::outcome::Outcome;
    use crate::testutil::{run_line, run_on, Engine};

    #[test]
    fn config_set_changes_what_config_get_shows() {
        let e = Engine::new();
        let (r, out) = run_line(
            &e,
            "config set --action IOSV004=bugcheck --irql-mode verifier --containment off \
             --stack-depth 3 --target nic.sys",
        );
        assert_eq!(r.unwrap(), Outcome::Clean);
        assert!(
            out.contains("containment   off")
                && out.contains("verifier")
                && out.contains("nic.sys"),
            "{out}"
        );
        let (_, out) = run_on(&e, &["config", "get", "-f", "json"]);
        let c: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(c["actions"]["IOSV004"], "bugcheck");
        assert_eq!(c["stack_depth"], 3);
        assert!(run_on(&e, &["config", "set"]).0.is_err());
        assert!(run_on(&e, &["config", "set", "--stack-depth", "99"])
            .0
            .unwrap_err()
            .to_string()
            .contains("maximum"));
    }
}
