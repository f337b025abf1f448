//! `iosvctl run --registry 'KEY\NAME=TYPE:DATA'` and a scenario image driver's
//! `registry = [...]`: one registry value the runner child's registry holds before
//! `DriverEntry` (docs/running-drivers.md, "Registry"; docs/scenarios.md). It lives here
//! so that a scenario's values are checked when the scenario is parsed; the runner
//! re-exports it (`iosv_runner::regspec`).
//!
//! `KEY` is relative to the driver's service key (`Parameters\LeakOnStop=dword:1`), or to
//! its device's hardware key (`@hw\…`, what `IoOpenDeviceRegistryKey` opens for
//! `PLUGPLAY_REGKEY_DEVICE`) or software key (`@sw\…`, `PLUGPLAY_REGKEY_DRIVER`), or is
//! absolute (`\Registry\Machine\…`). `NAME` `@` is the key's default (unnamed) value, as in
//! a `.reg` file. The types are the registry's, named as in `.reg` files and INFs.

use std::fmt;

/// `REG_SZ`.
pub const REG_SZ: u32 = 1;
/// `REG_EXPAND_SZ`.
pub const REG_EXPAND_SZ: u32 = 2;
/// `REG_BINARY`.
pub const REG_BINARY: u32 = 3;
/// `REG_DWORD`.
pub const REG_DWORD: u32 = 4;
/// `REG_MULTI_SZ`.
pub const REG_MULTI_SZ: u32 = 7;
/// `REG_QWORD`.
pub const REG_QWORD: u32 = 11;

/// Where a spec's key path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegRoot {
    /// The driver's service key (`…\CurrentControlSet\Services\<name>`).
    Service,
    /// The device's hardware key (`Device Parameters` under its instance key).
    DeviceHardware,
    /// The device's software (driver) key under its setup class.
    DeviceSoftware,
    /// The registry's root (`\Registry\…`).
    Absolute,
}

/// One registry value given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    /// Where `key` starts.
    pub root: RegRoot,
    /// The key, relative to `root` (components separated by `\`; empty: the root key).
    pub key: String,
    /// The value's name (empty: the default value).
    pub name: String,
    /// `REG_*` type.
    pub kind: u32,
    /// The value's data as the registry stores it (strings UTF-16LE with their NULs).
    pub data: Vec<u8>,
    text: String,
}

fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn number(text: &str, what: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a {what} (decimal, or hex with 0x)");
    // Digits only: the std parsers would take a sign (`+5`).
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) if hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).map_err(|_| bad())
        }
        None if t.bytes().all(|b| b.is_ascii_digit()) => t.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

impl RegistrySpec {
    /// Parses `KEY\NAME=TYPE:DATA`; TYPE is `dword`, `qword` (decimal or `0x` hex),
    /// `sz`, `expand_sz` (text), `multi_sz` (strings separated by `,`) or `binary` / `hex`
    /// (bytes in hex separated by `,`, as in a `.reg` file).
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, value) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected KEY\\NAME=TYPE:DATA"))?;
        let (kind, data) = value
            .split_once(':')
            .ok_or_else(|| format!("`{value}`: expected TYPE:DATA, e.g. dword:1"))?;
        let (kind, data) = match kind.to_ascii_lowercase().as_str() {
            "dword" => {
                let n = number(data, "32-bit number")?;
                let n =
                    u32::try_from(n).map_err(|_| format!("`{data}` does not fit a REG_DWORD"))?;
                (REG_DWORD, n.to_le_bytes().to_vec())
            }
            "qword" => (
                REG_QWORD,
                number(data, "64-bit number")?.to_le_bytes().to_vec(),
            ),
            "sz" => (REG_SZ, utf16z(data)),
            "expand_sz" => (REG_EXPAND_SZ, utf16z(data)),
            "multi_sz" => {
                let mut bytes: Vec<u8> = if data.is_empty() {
                    Vec::new()
                } else {
                    // An empty string is the list's end: one inside would cut it short.
                    if data.split(',').any(str::is_empty) {
                        return Err(format!(
                            "`{data}`: an empty string in a multi_sz would end the list there"
                        ));
                    }
                    data.split(',').flat_map(utf16z).collect()
                };
                bytes.extend([0, 0]);
                (REG_MULTI_SZ, bytes)
            }
            "binary" | "hex" => {
                let bytes = if data.trim().is_empty() {
                    Vec::new()
                } else {
                    data.split(',')
                        .map(|b| {
                            let t = b.trim();
                            t.bytes()
                                .all(|c| c.is_ascii_hexdigit())
                                .then(|| u8::from_str_radix(t, 16).ok())
                                .flatten()
                                .ok_or_else(|| format!("`{b}` is not a hex byte"))
                        })
                        .collect::<Result<Vec<u8>, String>>()?
                };
                (REG_BINARY, bytes)
            }
            other => {
                return Err(format!(
                    "unknown type `{other}` (dword, qword, sz, expand_sz, multi_sz, binary)"
                ))
            }
        };
        let absolute = path
            .get(..10)
            .is_some_and(|p| p.eq_ignore_ascii_case("\\Registry\\"));
        let (root, rest) = if absolute {
            (RegRoot::Absolute, path.get(10..).unwrap_or(""))
        } else if let Some(r) = strip_root(path, "@hw") {
            (RegRoot::DeviceHardware, r)
        } else if let Some(r) = strip_root(path, "@sw") {
            (RegRoot::DeviceSoftware, r)
        } else {
            (RegRoot::Service, path)
        };
        let (key, name) = rest.rsplit_once('\\').unwrap_or(("", rest));
        if name.is_empty() {
            return Err(format!(
                "`{path}`: no value name (use @ for the key's default value)"
            ));
        }
        if key.split('\\').any(str::is_empty) && !key.is_empty() {
            return Err(format!("`{path}`: an empty key name"));
        }
        let key = if root == RegRoot::Absolute {
            format!("Registry\\{key}")
        } else {
            key.to_string()
        };
        Ok(Self {
            root,
            key,
            name: if name == "@" {
                String::new()
            } else {
                name.to_string()
            },
            kind,
            data,
            text: text.to_string(),
        })
    }
}

/// `path` without the root marker `marker` (`@hw`), if it starts with it.
fn strip_root<'a>(path: &'a str, marker: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(marker)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix('\\')
    }
}

impl fmt::Display for RegistrySpec {
    /// The text it was parsed from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_every_type_parse_like_reg_files() {
        let s = RegistrySpec::parse("Parameters\\LeakOnStop=dword:0x10").unwrap();
        assert_eq!(
            (s.root, s.key.as_str(), s.name.as_str(), s.kind),
            (RegRoot::Service, "Parameters", "LeakOnStop", REG_DWORD)
        );
        assert_eq!(s.data, 16u32.to_le_bytes());
        assert_eq!(s.to_string(), "Parameters\\LeakOnStop=dword:0x10");
        let s = RegistrySpec::parse("@hw\\Flavor=sz:ab").unwrap();
        assert_eq!((s.root, s.key.as_str()), (RegRoot::DeviceHardware, ""));
        assert_eq!(s.data, [b'a', 0, b'b', 0, 0, 0]);
        let s = RegistrySpec::parse("@sw\\Sub\\@=multi_sz:a,b").unwrap();
        assert_eq!(
            (s.root, s.key.as_str(), s.name.as_str(), s.kind),
            (RegRoot::DeviceSoftware, "Sub", "", REG_MULTI_SZ)
        );
        assert_eq!(s.data, [b'a', 0, 0, 0, b'b', 0, 0, 0, 0, 0]);
        let s = RegistrySpec::parse("\\Registry\\Machine\\X\\Blob=hex:01,ff").unwrap();
        assert_eq!(
            (s.root, s.key.as_str(), s.kind),
            (RegRoot::Absolute, "Registry\\Machine\\X", REG_BINARY)
        );
        assert_eq!(s.data, [1, 0xff]);
        let s = RegistrySpec::parse("Big=qword:5").unwrap();
        assert_eq!((s.key.as_str(), s.kind, s.data.len()), ("", REG_QWORD, 8));
        assert_eq!(
            RegistrySpec::parse("E=expand_sz:").map(|s| (s.kind, s.data)),
            Ok((REG_EXPAND_SZ, vec![0, 0]))
        );
    }

    #[test]
    fn malformed_values_are_refused_with_a_reason() {
        for bad in [
            "NoEquals",
            "Parameters\\X=dword",
            "Parameters\\X=dword:zz",
            "Parameters\\X=dword:0x100000000",
            "Parameters\\X=float:1",
            "Parameters\\=dword:1",
            "Parameters\\\\X=dword:1",
            "X=binary:1,zz",
            // Signs are not digits (the std parsers take them).
            "X=dword:+5",
            "X=qword:0x+5",
            "X=binary:+1",
            "X=multi_sz:a,,b",
            "X=multi_sz:a,",
        ] {
            assert!(RegistrySpec::parse(bad).is_err(), "{bad}");
        }
    }
}
