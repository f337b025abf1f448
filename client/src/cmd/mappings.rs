//! `iosvctl mappings`: the live mappings (the leak view) — age, size, physical address,
//! cache type, owner, device and stack.

use super::{driver_names, json_line};
use crate::cli::{Global, MappingsArgs};
use crate::client::{Client, MappingFilter, MappingList};
use crate::error::{AppError, AppResult};
use crate::model;
use crate::outcome::Outcome;
use crate::output::{human, json, Format};
use crate::transport::Transport;
use std::io::Write;

/// `iosvctl mappings`: the live mappings (the leak view), optionally of one driver, one
/// device or a minimum age.
pub fn run<T: Transport>(
    g: &Global,
    a: &MappingsArgs,
    c: &mut Client<T>,
    out: &mut dyn Write,
) -> AppResult {
    let stats = c.stats()?;
    let images = super::images(g, c, &stats)?;
    let base = MappingFilter {
        driver_id: None,
        device: a.device,
        min_age_ns: a
            .min_age
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    };
    let list = match &a.driver {
        None => c.list_mappings(&base)?,
        Some(name) => {
            let ids: Vec<u32> = stats
                .drivers
                .iter()
                .filter(|d| model::name(&d.name).eq_ignore_ascii_case(name))
                .map(|d| d.driver_id)
                .collect();
            if ids.is_empty() {
                let known = driver_names(&stats);
                return Err(AppError::UnknownDriver {
                    name: name.clone(),
                    known: if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    },
                });
            }
            let mut all = MappingList::default();
            for id in ids {
                let mut l = c.list_mappings(&MappingFilter {
                    driver_id: Some(id),
                    ..base
                })?;
                all.records.append(&mut l.records);
                all.now_ns = all.now_ns.max(l.now_ns);
                all.skipped += l.skipped;
            }
            all
        }
    };
    match g.format {
        Format::Json => {
            for m in &list.records {
                json_line(out, &json::mapping(m, &list, &images))?;
            }
        }
        _ => write!(out, "{}", human::mappings(&list, g.verbose > 0, &images))?,
    }
    super::symbol_notes(
        &images,
        c.hello().capabilities & iosv::protocol::CAP_HOST != 0,
    );
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use crate::testutil::{json_lines, run_on, two_mappings};

    #[test]
    fn mappings_filter_by_driver_device_and_name_the_known_drivers() {
        let e = two_mappings();
        let (_, out) = run_on(&e, &["mappings"]);
        assert!(out.contains("2 live mappings, 0x3000 bytes"), "{out}");
        assert!(
            out.contains("0xffffc00000001000") && out.contains("MmCached"),
            "{out}"
        );
        let (_, out) = run_on(&e, &["mappings", "--driver", "NIC.sys", "-f", "json"]);
        let v = json_lines(&out);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0]["driver"].as_str(), v[0]["size"].as_u64()),
            (Some("nic.sys"), Some(0x2000))
        );
        assert_eq!(v[0]["stack"][0], "nic.sys+0x1a2b");
        let (_, out) = run_on(&e, &["mappings", "--device", "0xffffc00000001000", "-v"]);
        assert!(
            out.contains("1 live mapping,") && out.contains("#0  nic.sys+0x1a2b"),
            "{out}"
        );
        let (r, _) = run_on(&e, &["mappings", "--driver", "ghost.sys"]);
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("known: nic.sys, gpu.sys"));
    }
}
