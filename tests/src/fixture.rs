//! Real PE images for the tests, built from small `no_std` fixture drivers.
//!
//! The fixtures are compiled for `x86_64-pc-windows-msvc` with rustc and rust-lld, and a
//! minimal loader lays one out in memory the way the Windows loader maps it.
//!
//! The sources are `tests/fixtures/*.rs`. Each is compiled once per test process with
//! the `rustc` on `PATH` (the target must be installed:
//! `rustup target add x86_64-pc-windows-msvc`) as
//!
//! ```text
//! rustc --edition 2021 --target x86_64-pc-windows-msvc --crate-type cdylib
//!       -C panic=abort -C opt-level=1 -C linker=rust-lld -C link-arg=/driver
//!       -C link-arg=/subsystem:native -C link-arg=/entry:DriverEntry
//!       -C link-arg=/nodefaultlib -C link-arg=/debug:none [extra] -o OUT SRC
//! ```
//!
//! where each `// iosv-fixture-link-arg: ARG` line of the source adds `-C link-arg=ARG`.
//! The output goes to a private temporary directory that is removed once read.
//! [`build_with_pdb`] links with debug information instead (`-C debuginfo=2`,
//! `/debug /pdb:DIR/NAME.pdb /pdbaltpath:NAME.pdb`) into a directory the caller keeps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The target the fixtures are built for.
pub const TARGET: &str = "x86_64-pc-windows-msvc";

/// Marker of a fixture source line that adds one linker argument.
const LINK_ARG_MARKER: &str = "// iosv-fixture-link-arg:";

/// The directory holding the fixture sources.
#[must_use]
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The names (file stems) of every fixture source, sorted.
///
/// # Panics
///
/// If the fixture directory cannot be read.
#[must_use]
pub fn names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("read tests/fixtures")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names
}

/// The linker arguments a fixture source asks for.
fn extra_link_args(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix(LINK_ARG_MARKER))
        .map(|arg| arg.trim().to_owned())
        .collect()
}

/// The on-disk image of fixture `name` (`tests/fixtures/<name>.rs`), compiled on first
/// use in this process and cached.
///
/// # Panics
///
/// If the source is missing or does not compile; the message carries rustc's output.
#[must_use]
pub fn build(name: &str) -> &'static [u8] {
    static CACHE: OnceLock<Mutex<HashMap<String, &'static [u8]>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(image) = cache.get(name) {
        return image;
    }
    let image: &'static [u8] = Box::leak(compile(name).into_boxed_slice());
    cache.insert(name.to_owned(), image);
    image
}

fn compile(name: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("iosv-fixture-{}-{name}", std::process::id()));
    let image = compile_into(name, &dir, false);
    let _ = std::fs::remove_dir_all(&dir);
    image
}

/// Builds fixture `name` with debug information into `dir`: rustc `-C debuginfo=2` and
/// rust-lld `/DEBUG /PDB:dir/name.pdb /PDBALTPATH:name.pdb`, so the image's CodeView
/// record names `name.pdb` with the GUID and age of the PDB written beside it. Returns
/// the on-disk image; the PDB is `dir/name.pdb` (kept: the caller owns `dir`).
///
/// # Panics
///
/// As [`build`].
#[must_use]
pub fn build_with_pdb(name: &str, dir: &Path) -> Vec<u8> {
    compile_into(name, dir, true)
}

fn compile_into(name: &str, dir: &Path, debug: bool) -> Vec<u8> {
    let source = fixtures_dir().join(format!("{name}.rs"));
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", source.display()));
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let out = dir.join(format!("{name}.sys"));

    let mut rustc = Command::new("rustc");
    rustc
        .args([
            "--edition",
            "2021",
            "--target",
            TARGET,
            "--crate-type",
            "cdylib",
        ])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=1",
            "-C",
            "linker=rust-lld",
        ])
        .args(["-C", "link-arg=/driver", "-C", "link-arg=/subsystem:native"])
        .args([
            "-C",
            "link-arg=/entry:DriverEntry",
            "-C",
            "link-arg=/nodefaultlib",
        ]);
    if debug {
        let pdb = dir.join(format!("{name}.pdb"));
        rustc
            .args(["-C", "debuginfo=2", "-C", "link-arg=/debug"])
            .arg("-C")
            .arg(format!("link-arg=/pdb:{}", pdb.display()))
            .arg("-C")
            .arg(format!("link-arg=/pdbaltpath:{name}.pdb"));
    } else {
        rustc.args(["-C", "link-arg=/debug:none"]);
    }
    for arg in extra_link_args(&text) {
        rustc.arg("-C").arg(format!("link-arg={arg}"));
    }
    rustc.arg("-o").arg(&out).arg(&source);

    let output = rustc
        .output()
        .unwrap_or_else(|e| panic!("run rustc for fixture {name}: {e}"));
    let image = std::fs::read(&out);
    assert!(
        output.status.success(),
        "fixture {name} did not compile (is the {TARGET} target installed? \
         `rustup target add {TARGET}`)\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    image.unwrap_or_else(|e| panic!("read fixture output {}: {e}", out.display()))
}

/// A fixture image laid out as the Windows loader maps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// `SizeOfImage` bytes: the headers at 0 and each section at its `VirtualAddress`,
    /// zero elsewhere.
    pub bytes: Vec<u8>,
    /// `ImageBase` from the optional header.
    pub image_base: u64,
}

fn u16_at(file: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes(
        file[at..at + 2].try_into().expect("2 bytes"),
    ))
}

fn u32_at(file: &[u8], at: usize) -> usize {
    usize::try_from(u32::from_le_bytes(
        file[at..at + 4].try_into().expect("4 bytes"),
    ))
    .expect("usize")
}

/// Maps an on-disk PE32+ `file` as the loader would.
///
/// The result is a zeroed buffer of `SizeOfImage` bytes, with the headers
/// (`SizeOfHeaders`) copied to offset 0 and each section's raw data (at most its
/// `VirtualSize`) copied to its `VirtualAddress`. Imports are not bound and relocations
/// not applied. Independent of `iosv::pe` on purpose.
///
/// # Panics
///
/// If `file` is not a well-formed PE32+ file.
#[must_use]
pub fn load(file: &[u8]) -> Loaded {
    let nt = u32_at(file, 0x3C);
    assert_eq!(&file[nt..nt + 4], b"PE\0\0", "PE signature");
    let sections = u16_at(file, nt + 6);
    let optional_size = u16_at(file, nt + 20);
    let optional = nt + 24;
    assert_eq!(u16_at(file, optional), 0x20B, "PE32+ magic");
    let image_base = u64::from_le_bytes(file[optional + 24..optional + 32].try_into().expect("8"));
    let size_of_image = u32_at(file, optional + 56);
    let size_of_headers = u32_at(file, optional + 60);

    let mut bytes = vec![0u8; size_of_image];
    bytes[..size_of_headers].copy_from_slice(&file[..size_of_headers]);
    let table = optional + optional_size;
    for index in 0..sections {
        let header = table + 40 * index;
        let virtual_size = u32_at(file, header + 8);
        let virtual_address = u32_at(file, header + 12);
        let raw_size = u32_at(file, header + 16);
        let raw_offset = u32_at(file, header + 20);
        let len = if virtual_size == 0 {
            raw_size
        } else {
            raw_size.min(virtual_size)
        };
        bytes[virtual_address..virtual_address + len]
            .copy_from_slice(&file[raw_offset..raw_offset + len]);
    }
    Loaded { bytes, image_base }
}

/// Builds fixture `name` and loads it.
#[must_use]
pub fn loaded(name: &str) -> Loaded {
    load(build(name))
}
