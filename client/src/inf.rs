//! `iosvctl inf`: renders the installable `iosv.inf` from the template `iosv.inx` for
//! named devices and target drivers.
//!
//! The template names no device, so a package can never ship a placeholder hardware ID as
//! if it were real: an INF exists only for the hardware IDs and target drivers someone
//! named, each checked here. The result still goes through stampinf, inf2cat and infverif
//! (docs/windows.md, "Build").

use iosv::protocol::{MAX_TARGETS, NAME_LEN};
use std::fmt::Write as _;

/// The template, as committed at the repository root.
pub const TEMPLATE: &str = include_str!("../../iosv.inx");

/// Marker replaced by one models line per hardware ID.
const MODELS: &str = "@IOSV_MODELS@";
/// Marker replaced by the `Targets` registry line.
const TARGETS: &str = "@IOSV_TARGETS@";

/// Longest device instance or hardware ID (`MAX_DEVICE_ID_LEN`, cfgmgr32.h).
pub const MAX_HWID_LEN: usize = 200;

/// Why an INF could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfError {
    /// No hardware ID was given.
    #[error(
        "no hardware ID: name the device(s) to filter with --hwid (pnputil /enum-devices /ids)"
    )]
    NoHardwareId,
    /// No target driver was given.
    #[error("no target driver: name the function driver image(s) to verify with --target (e.g. nic.sys)")]
    NoTarget,
    /// A hardware ID cannot be written into an INF models line.
    #[error("hardware ID {0:?} is not usable: 1..={MAX_HWID_LEN} printable ASCII characters without spaces, quotes, commas, semicolons, '%' or '='")]
    BadHardwareId(String),
    /// A target name cannot be a `Targets` entry.
    #[error("target {0:?} is not usable: an image file name of 1..={max} printable ASCII characters without quotes, commas, semicolons, '%' or path separators", max = NAME_LEN - 1)]
    BadTarget(String),
    /// More targets than iosv.sys reads.
    #[error("{0} targets given; iosv.sys reads at most {MAX_TARGETS}")]
    TooManyTargets(usize),
    /// The template lacks a marker (it was edited by hand).
    #[error("the INF template has no {0} marker")]
    BadTemplate(&'static str),
}

fn is_inf_safe(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '%' | '=')
}

fn check_hwid(id: &str) -> Result<(), InfError> {
    if id.is_empty() || id.len() > MAX_HWID_LEN || !id.chars().all(is_inf_safe) {
        return Err(InfError::BadHardwareId(id.to_string()));
    }
    Ok(())
}

fn check_target(name: &str) -> Result<(), InfError> {
    let ok = !name.is_empty()
        && name.len() < NAME_LEN
        && name
            .chars()
            .all(|c| is_inf_safe(c) && c != '\\' && c != '/');
    if ok {
        Ok(())
    } else {
        Err(InfError::BadTarget(name.to_string()))
    }
}

/// Renders `template` for `hwids` (the devices iosv filters) and `targets` (the driver
/// images it hooks when they load). Duplicates are dropped.
///
/// # Errors
///
/// An [`InfError`] when a list is empty, an entry cannot be written into an INF, there
/// are too many targets, or the template lacks a marker.
pub fn render(template: &str, hwids: &[String], targets: &[String]) -> Result<String, InfError> {
    if hwids.is_empty() {
        return Err(InfError::NoHardwareId);
    }
    if targets.is_empty() {
        return Err(InfError::NoTarget);
    }
    let mut ids: Vec<&str> = Vec::new();
    for id in hwids {
        check_hwid(id)?;
        if !ids.iter().any(|k| k.eq_ignore_ascii_case(id)) {
            ids.push(id);
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for name in targets {
        check_target(name)?;
        if !names.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            names.push(name);
        }
    }
    if names.len() > MAX_TARGETS {
        return Err(InfError::TooManyTargets(names.len()));
    }
    for marker in [MODELS, TARGETS] {
        if !template.contains(marker) {
            return Err(InfError::BadTemplate(marker));
        }
    }
    let mut models = String::new();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            models.push_str("\r\n");
        }
        let _ = write!(models, "%IosvFilter.DeviceDesc% = IosvFilter_Install, {id}");
    }
    // FLG_ADDREG_TYPE_MULTI_SZ | FLG_ADDREG_NOCLOBBER: a list an administrator edited by
    // hand survives a reinstall.
    let mut line = String::from("HKR,Parameters,Targets,0x00010002");
    for name in &names {
        let _ = write!(line, ",\"{name}\"");
    }
    let text = template.replace(MODELS, &models).replace(TARGETS, &line);
    // INF files are read as ANSI/UTF-16 text with CRLF line ends.
    Ok(text.replace("\r\n", "\n").replace('\n', "\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn renders_one_models_line_per_device_and_the_targets() {
        let inf = render(
            TEMPLATE,
            &s(&["PCI\\VEN_8086&DEV_1533", "PCI\\VEN_8086&DEV_1539"]),
            &s(&["e1r68x64.sys", "nic.sys"]),
        )
        .unwrap();
        assert!(inf.contains(
            "%IosvFilter.DeviceDesc% = IosvFilter_Install, PCI\\VEN_8086&DEV_1533\r\n%IosvFilter.DeviceDesc% = IosvFilter_Install, PCI\\VEN_8086&DEV_1539\r\n"
        ));
        assert!(inf.contains("HKR,Parameters,Targets,0x00010002,\"e1r68x64.sys\",\"nic.sys\"\r\n"));
        assert!(!inf.contains("@IOSV_"), "every marker is replaced");
        assert!(
            !inf.contains("IOSV_TARGET_HWID"),
            "no placeholder hardware ID"
        );
        assert!(
            !inf.replace("\r\n", "").contains('\n'),
            "CRLF line ends only"
        );
        assert!(
            inf.contains("NT$ARCH$.10.0...19041"),
            "minimum Windows 10 2004"
        );
    }

    #[test]
    fn refuses_without_a_device_or_a_target() {
        assert_eq!(
            render(TEMPLATE, &[], &s(&["nic.sys"])),
            Err(InfError::NoHardwareId)
        );
        assert_eq!(
            render(TEMPLATE, &s(&["PCI\\VEN_1"]), &[]),
            Err(InfError::NoTarget)
        );
    }

    #[test]
    fn refuses_what_an_inf_cannot_hold() {
        for bad in [
            "",
            "PCI\\VEN 8086",
            "A,B",
            "A;B",
            "A\"B",
            "%X%",
            &"X".repeat(201),
        ] {
            assert!(matches!(
                render(TEMPLATE, &s(&[bad]), &s(&["nic.sys"])),
                Err(InfError::BadHardwareId(_))
            ));
        }
        for bad in [
            "",
            "dir\\nic.sys",
            "a/b.sys",
            "a\"b.sys",
            &"n".repeat(32),
            "ünï.sys",
        ] {
            assert!(matches!(
                render(TEMPLATE, &s(&["PCI\\VEN_1"]), &s(&[bad])),
                Err(InfError::BadTarget(_))
            ));
        }
        let many: Vec<String> = (0..17).map(|i| format!("d{i}.sys")).collect();
        assert_eq!(
            render(TEMPLATE, &s(&["PCI\\VEN_1"]), &many),
            Err(InfError::TooManyTargets(17))
        );
        assert_eq!(
            render("no markers", &s(&["PCI\\VEN_1"]), &s(&["nic.sys"])),
            Err(InfError::BadTemplate(MODELS))
        );
    }

    #[test]
    fn duplicates_are_dropped() {
        let inf = render(
            TEMPLATE,
            &s(&["PCI\\VEN_1", "pci\\ven_1"]),
            &s(&["nic.sys", "NIC.SYS"]),
        )
        .unwrap();
        assert_eq!(inf.matches("IosvFilter_Install, ").count(), 1);
        assert!(inf.contains("0x00010002,\"nic.sys\"\r\n"));
    }
}
