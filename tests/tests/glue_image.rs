//! The Windows glue's image, as `scripts/check-glue` links it on Linux
//! (`target/check-glue/iosv.sys`), read with iosv's own PE parser: a native-subsystem
//! AMD64 driver whose entry point is `DriverEntry`, importing only from `ntoskrnl.exe` and
//! `HAL.dll`, and only names those modules export — checked against the `__imp_` symbols
//! of mingw-w64's `libntoskrnl.a` / `libhal.a` plus the hand-declared list of the wdk-sys
//! stand-in (`tests/check-glue/stand-ins/wdk-sys/declared.def`).
//!
//! The test runs `scripts/check-glue` (build only; incremental, a few seconds when warm)
//! so that the image is never stale; a compile or link error fails the test with the
//! script's output. See docs/windows.md, "What is checked on Linux".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use iosv::pe::{ImportedName, PeImage, MACHINE_AMD64, SUBSYSTEM_NATIVE};
use iosv_tests::fixture;
use object::read::archive::ArchiveFile;
use object::read::pe::ImageThunkData;

const MINGW_LIB: &str = "/usr/x86_64-w64-mingw32/lib";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs scripts/check-glue (without its clippy step) once for every test of this binary
/// and returns the linked image and its map. Once: the script links the image again on
/// every run, so two tests running it at the same time could each read the file while
/// the other's link was rewriting it.
fn build_image() -> (&'static [u8], &'static str) {
    static IMAGE: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    let (image, map) = IMAGE.get_or_init(|| {
        let root = root();
        let out = Command::new(root.join("scripts/check-glue"))
            .env("IOSV_GLUE_NO_CLIPPY", "1")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run scripts/check-glue");
        assert!(
            out.status.success(),
            "scripts/check-glue failed (the glue does not compile or link against the \
             mingw-derived stand-ins):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = root.join("target/check-glue");
        let image = std::fs::read(dir.join("iosv.sys")).expect("read target/check-glue/iosv.sys");
        let map =
            std::fs::read_to_string(dir.join("iosv.map")).expect("read target/check-glue/iosv.map");
        (image, map)
    });
    (image, map)
}

/// The names an import library exports: its archive symbol table's `__imp_` symbols.
fn import_library_names(path: &Path) -> BTreeSet<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let archive = ArchiveFile::parse(&*data).expect("parse the archive");
    let mut names = BTreeSet::new();
    for symbol in archive
        .symbols()
        .expect("symbol table")
        .expect("has a symbol table")
    {
        let symbol = symbol.expect("symbol");
        if let Some(name) = symbol.name().strip_prefix(b"__imp_") {
            names.insert(name.to_vec());
        }
    }
    assert!(
        names.len() > 50,
        "{} has few __imp_ symbols ({})",
        path.display(),
        names.len()
    );
    names
}

/// The hand-declared ntoskrnl exports mingw lacks (the `EXPORTS` of declared.def).
fn declared_names() -> BTreeSet<Vec<u8>> {
    let def = root().join("tests/check-glue/stand-ins/wdk-sys/declared.def");
    let text = std::fs::read_to_string(&def).expect("read declared.def");
    let mut names = BTreeSet::new();
    let mut in_exports = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if line == "EXPORTS" {
            in_exports = true;
        } else if in_exports {
            names.insert(line.as_bytes().to_vec());
        }
    }
    assert!(!names.is_empty(), "declared.def lists no exports");
    names
}

/// `DriverEntry`'s RVA from the linker map (`Rva+Base` column minus the preferred base).
fn map_rva(map: &str, symbol: &str, image_base: u64) -> u32 {
    let line = map
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(symbol))
        .unwrap_or_else(|| panic!("{symbol} not in the map"));
    let va = line.split_whitespace().nth(2).expect("Rva+Base column");
    let va = u64::from_str_radix(va, 16).expect("hex address");
    u32::try_from(va - image_base).expect("RVA fits u32")
}

#[test]
fn glue_links_into_a_native_driver_importing_only_real_kernel_exports() {
    let (file, map) = build_image();
    let loaded = fixture::load(file);
    let image = PeImage::parse(&loaded.bytes).expect("iosv::pe parses iosv.sys");

    assert_eq!(image.machine(), MACHINE_AMD64, "AMD64 image");
    assert_eq!(image.subsystem(), SUBSYSTEM_NATIVE, "native subsystem");

    // The entry point is DriverEntry: the exported DriverEntry, the map's DriverEntry, and
    // inside an executable section.
    let entry = image.entry_point();
    let exports = image.exports().expect("export directory").expect("exports");
    let ordinal = exports
        .ordinal_of_name(b"DriverEntry")
        .expect("export names")
        .expect("DriverEntry is exported");
    let target = exports
        .target(ordinal)
        .expect("export target")
        .expect("target");
    assert_eq!(
        target,
        iosv::pe::ExportTarget::Rva(entry),
        "AddressOfEntryPoint is DriverEntry's export"
    );
    assert_eq!(
        entry,
        map_rva(map, "DriverEntry", loaded.image_base),
        "map agrees"
    );
    let text = image.section_of_rva(entry).expect("entry inside a section");
    assert_eq!(&text.name[..5], b".text", "entry in .text");

    // Imports: only ntoskrnl.exe and HAL.dll, and only what they export.
    let ntoskrnl = import_library_names(&Path::new(MINGW_LIB).join("libntoskrnl.a"));
    let hal = import_library_names(&Path::new(MINGW_LIB).join("libhal.a"));
    let declared = declared_names();
    let mut imported = BTreeSet::new();
    let mut unknown = Vec::new();
    for dll in image.imported_dlls() {
        let dll = dll.expect("import descriptor");
        let name = String::from_utf8_lossy(dll.dll_name).to_ascii_lowercase();
        let exported: Vec<&BTreeSet<Vec<u8>>> = match name.as_str() {
            "ntoskrnl.exe" => vec![&ntoskrnl, &declared],
            "hal.dll" => vec![&hal],
            other => panic!("imports from {other}: only ntoskrnl.exe and HAL.dll are allowed"),
        };
        assert!(!dll.delay_load, "no delay-load imports in a driver");
        for import in image.imported_names(dll) {
            match import.expect("import thunk") {
                ImportedName::Name(routine) => {
                    if !exported.iter().any(|set| set.contains(routine)) {
                        unknown.push(format!("{name}!{}", String::from_utf8_lossy(routine)));
                    }
                    imported.insert((name.clone(), routine.to_vec()));
                }
                ImportedName::Ordinal(o) => panic!("{name} imported by ordinal {o}"),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "imports that neither mingw's import libraries nor declared.def know: {unknown:?}"
    );
    for must in [
        "DbgPrintEx",
        "MmMapIoSpace",
        "MmUnmapIoSpace",
        "ExAllocatePool2",
    ] {
        assert!(
            imported.contains(&("ntoskrnl.exe".to_owned(), must.as_bytes().to_vec())),
            "{must} imported"
        );
    }

    // An independent reader (the object crate) sees the same imports.
    let pe = object::read::pe::PeFile64::parse(file).expect("object parses iosv.sys");
    let table = pe
        .import_table()
        .expect("import table")
        .expect("has imports");
    let mut theirs = BTreeSet::new();
    let mut descriptors = table.descriptors().expect("descriptors");
    while let Some(d) = descriptors.next().expect("descriptor") {
        let dll =
            String::from_utf8_lossy(table.name(d.name.get(object::LittleEndian)).expect("name"))
                .to_ascii_lowercase();
        let mut thunks = table
            .thunks(d.original_first_thunk.get(object::LittleEndian))
            .expect("thunks");
        while let Some(thunk) = thunks
            .next::<object::pe::ImageNtHeaders64>()
            .expect("thunk")
        {
            let (_hint, routine) = table.hint_name(thunk.address()).expect("hint/name");
            theirs.insert((dll.clone(), routine.to_vec()));
        }
    }
    assert_eq!(imported, theirs, "iosv::pe and object agree on the imports");
}

/// The per-driver hook thunks (driver/platform/windows/thunks.rs): every table the glue
/// defines (`iosv_thunks_<routine>`, one per hooked routine) holds, in order, the addresses
/// of the thunks labelled `iosv_thunk_<routine>_1` … `_64` in `.text`, and each of its
/// words has a base relocation (the loader must fix them when iosv.sys is not loaded at
/// its preferred base). The label and the id a thunk passes come from the same `.irp`
/// token, so a thunk in the right place passes the right id.
#[test]
fn every_hook_thunk_table_lists_its_64_thunks_and_is_relocated() {
    let (file, map) = build_image();
    let loaded = fixture::load(file);
    let image = PeImage::parse(&loaded.bytes).expect("iosv::pe parses iosv.sys");
    let tables: Vec<&str> = map
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|s| s.starts_with("iosv_thunks_"))
        .collect();
    // The four I/O-space ones (with MmGetSystemRoutineAddress) and the MDL family's ten.
    assert_eq!(tables.len(), 14, "{tables:?}");

    let pe = object::read::pe::PeFile64::parse(file).expect("object parses iosv.sys");
    let mut relocated = BTreeSet::new();
    let mut blocks = pe
        .data_directories()
        .relocation_blocks(pe.data(), &pe.section_table())
        .expect("relocation directory")
        .expect("has base relocations");
    while let Some(block) = blocks.next().expect("relocation block") {
        for r in block {
            if r.typ == object::pe::IMAGE_REL_BASED_DIR64 {
                relocated.insert(r.virtual_address);
            }
        }
    }

    for table in tables {
        let label = format!("iosv_thunk_{}_", &table["iosv_thunks_".len()..]);
        let rva = map_rva(map, table, loaded.image_base);
        for id in 1..=64u32 {
            let at = (rva + 8 * (id - 1)) as usize;
            let word = u64::from_le_bytes(loaded.bytes[at..at + 8].try_into().unwrap());
            let thunk = map_rva(map, &format!("{label}{id}"), loaded.image_base);
            assert_eq!(
                word,
                loaded.image_base + u64::from(thunk),
                "{table}[{}] is {label}{id}",
                id - 1
            );
            let section = image.section_of_rva(thunk).expect("thunk inside a section");
            assert_eq!(&section.name[..5], b".text", "{label}{id} in .text");
            assert!(
                relocated.contains(&(rva + 8 * (id - 1))),
                "{table}[{}] has no base relocation",
                id - 1
            );
        }
    }
}
