//! Symbolized stacks from real PDBs: the `symbolized` fixture driver is built with
//! rustc + rust-lld `/DEBUG`, its CodeView record read by `iosv::pe`, and return
//! addresses of its calls resolved through `iosvctl`'s symbolizer to exact function names
//! and source lines — in every output format.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iosv::pe::{HookedRoutine, PeImage};
use iosv::protocol::*;
use iosv_client::model::Images;
use iosv_client::symbols::{ImageIdentity, PdbStatus, SymbolPath, Symbolizer};
use iosv_tests::fixture;

struct Built {
    dir: PathBuf,
    file: Vec<u8>,
    loaded: fixture::Loaded,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn build(tag: &str) -> Built {
    let dir = std::env::temp_dir().join(format!("iosv-symbols-{}-{tag}", std::process::id()));
    let file = fixture::build_with_pdb("symbolized", &dir);
    let loaded = fixture::load(&file);
    Built { dir, file, loaded }
}

/// The line of the fixture source that carries `marker`.
fn line_of(marker: &str) -> u32 {
    let src = std::fs::read_to_string(fixture::fixtures_dir().join("symbolized.rs")).unwrap();
    let index = src.lines().position(|l| l.contains(marker)).expect(marker);
    u32::try_from(index + 1).unwrap()
}

/// The export RVA of `name`.
fn export(pe: &PeImage<'_>, name: &str) -> u32 {
    let exports = pe.exports().unwrap().expect("exports");
    let ordinal = exports
        .ordinal_of_name(name.as_bytes())
        .unwrap()
        .expect(name);
    match exports.target(ordinal).unwrap().expect("target") {
        iosv::pe::ExportTarget::Rva(rva) => rva,
        other => panic!("{name}: {other:?}"),
    }
}

/// The return address (RVA) of the first indirect call after `from`: rustc at
/// opt-level 1 loads the IAT slot into a register and calls through it (`ff d0+r`), or
/// calls through the slot (`ff 15 disp32`). `_routine` names what the call reaches, for
/// the reader.
fn return_address(pe: &PeImage<'_>, from: u32, _routine: HookedRoutine) -> u32 {
    let bytes = pe.bytes();
    let start = from as usize;
    for at in start..start + 0x100 {
        match (bytes[at], bytes[at + 1]) {
            (0xFF, 0xD0..=0xD7) => return u32::try_from(at + 2).unwrap(),
            (0xFF, 0x15) => return u32::try_from(at + 6).unwrap(),
            _ => {}
        }
    }
    panic!("no indirect call after {from:#x}");
}

fn identity(pe: &PeImage<'_>) -> ImageIdentity {
    let cv = pe.codeview().unwrap().expect("CodeView record");
    ImageIdentity {
        pdb_name: String::from_utf8(cv.pdb_file_name().to_vec()).unwrap(),
        guid: cv.guid,
        age: cv.age,
    }
}

fn symbolizer(dir: &Path) -> Arc<Symbolizer> {
    Arc::new(Symbolizer::new(
        SymbolPath::from_option(dir.to_str().unwrap()).unwrap(),
    ))
}

#[test]
fn codeview_record_matches_the_independent_reader_and_the_pdb() {
    use object::read::pe::PeFile64;
    use object::Object;
    let b = build("cv");
    let pe = PeImage::parse(&b.loaded.bytes).unwrap();
    let cv = pe.codeview().unwrap().expect("CodeView record");
    let oracle = PeFile64::parse(&*b.file).unwrap();
    let theirs = oracle.pdb_info().unwrap().expect("oracle CodeView");
    assert_eq!(cv.guid, theirs.guid());
    assert_eq!(cv.age, theirs.age());
    assert_eq!(cv.pdb_path, theirs.path());
    assert_eq!(cv.pdb_path, b"symbolized.pdb");
    // The fixtures built for the other tests carry none.
    let plain = fixture::loaded("symbolized");
    assert_eq!(PeImage::parse(&plain.bytes).unwrap().codeview(), Ok(None));
}

#[test]
fn return_addresses_resolve_to_exact_functions_and_lines() {
    let b = build("lines");
    let pe = PeImage::parse(&b.loaded.bytes).unwrap();
    let id = identity(&pe);
    let s = symbolizer(&b.dir);
    let map_call = return_address(&pe, export(&pe, "map_registers"), HookedRoutine::MapIoSpace);
    let unmap_call = return_address(
        &pe,
        export(&pe, "unmap_registers"),
        HookedRoutine::UnmapIoSpace,
    );
    for (rva, function, marker) in [
        (map_call, "symbolized::map_registers", "@map-call"),
        (unmap_call, "symbolized::unmap_registers", "@unmap-call"),
    ] {
        let r = s.resolve_return_address(&id, rva).expect("resolved");
        let inner = r.innermost().unwrap();
        let outer = r.frames.last().unwrap();
        assert_eq!(outer.function, function, "{r:?}");
        assert_eq!(inner.line, Some(line_of(marker)), "{r:?}");
        assert!(
            inner.file.as_deref().unwrap().ends_with("symbolized.rs"),
            "{r:?}"
        );
        let name = function.trim_start_matches("symbolized::");
        assert_eq!(r.function_offset, rva - export(&pe, name));
    }
    assert!(matches!(&s.statuses()[0].1, PdbStatus::Loaded(p) if p.ends_with("symbolized.pdb")));
}

#[test]
fn symbol_store_layout_and_mismatched_age() {
    let b = build("store");
    let pe = PeImage::parse(&b.loaded.bytes).unwrap();
    let id = identity(&pe);
    let store = b.dir.join("store");
    let at = store.join("symbolized.pdb").join(id.store_key());
    std::fs::create_dir_all(&at).unwrap();
    std::fs::copy(b.dir.join("symbolized.pdb"), at.join("symbolized.pdb")).unwrap();
    // _NT_SYMBOL_PATH syntax: the srv* cache is a store; the URL is never used.
    let path = SymbolPath::from_nt_symbol_path(&format!(
        "srv*{}*https://symbols.invalid/download",
        store.display()
    ));
    assert_eq!(path.dirs, vec![store.clone()]);
    let s = Symbolizer::new(path);
    let rva = return_address(&pe, export(&pe, "map_registers"), HookedRoutine::MapIoSpace);
    let r = s
        .resolve_return_address(&id, rva)
        .expect("resolved from the store");
    assert_eq!(
        r.frames.last().unwrap().function,
        "symbolized::map_registers"
    );
    assert!(matches!(&s.statuses()[0].1, PdbStatus::Loaded(p) if p.starts_with(&store)));

    // The same PDB for an image of another age is not used.
    let older = ImageIdentity {
        age: id.age + 1,
        ..id.clone()
    };
    let s = symbolizer(&b.dir);
    assert_eq!(s.resolve_return_address(&older, rva), None);
    assert!(
        matches!(&s.statuses()[0].1, PdbStatus::NotFound { mismatched } if mismatched.len() == 1)
    );
}

/// A violation record whose stacks lie in the fixture image loaded at `base`.
fn record(base: u64, call: u64, map: u64) -> ViolationRecord {
    let mut r = ViolationRecord {
        seq: 7,
        rule: 1,
        action: 1,
        flags: VF_MAPPING_KNOWN | VF_CONTAINED,
        driver_id: 1,
        owner_id: 1,
        call_stack_depth: 2,
        map_stack_depth: 1,
        address: 0xFFFF_D000_0000_0000,
        base: 0xFFFF_D000_0000_0000,
        mapped_size: 0x1000,
        passed_size: 0x2000,
        driver_name: wire_name(b"symbolized.sys"),
        owner_name: wire_name(b"symbolized.sys"),
        ..ViolationRecord::default()
    };
    r.call_stack[0] = base + call;
    r.call_stack[1] = 0xFFFF_F800_0060_2A40;
    r.map_stack[0] = base + map;
    r
}

#[test]
fn every_output_format_carries_the_symbols() {
    let b = build("formats");
    let pe = PeImage::parse(&b.loaded.bytes).unwrap();
    let cv = pe.codeview().unwrap().unwrap();
    let base = 0xFFFF_F806_0010_0000u64;
    let stats = [DriverStats {
        driver_id: 1,
        state: DRIVER_ATTACHED,
        name: wire_name(b"symbolized.sys"),
        image_base: base,
        image_size: u64::from(pe.size_of_image()),
        ..DriverStats::default()
    }];
    let mut debug = ImageDebugRecord {
        driver_id: 1,
        flags: IDF_CODEVIEW,
        image_base: base,
        guid: cv.guid,
        age: cv.age,
        ..ImageDebugRecord::default()
    };
    debug.pdb_name[..14].copy_from_slice(b"symbolized.pdb");
    let images = Images::from_stats(&stats)
        .with_debug(&[debug])
        .with_symbols(Some(symbolizer(&b.dir)));
    let map_call = return_address(&pe, export(&pe, "map_registers"), HookedRoutine::MapIoSpace);
    let unmap_call = return_address(
        &pe,
        export(&pe, "unmap_registers"),
        HookedRoutine::UnmapIoSpace,
    );
    let rec = record(base, u64::from(unmap_call), u64::from(map_call));
    let unmap_line = line_of("@unmap-call");
    let map_line = line_of("@map-call");
    let unmap_text = format!(
        "symbolized.sys!symbolized::unmap_registers+0x{:x} (",
        unmap_call - export(&pe, "unmap_registers")
    );

    // Human.
    let v = iosv_client::model::Violation::new(&rec);
    let human = iosv_client::output::human::violation(&v, true, &images);
    assert!(human.contains(&unmap_text), "{human}");
    assert!(
        human.contains(&format!("symbolized.rs:{unmap_line})")),
        "{human}"
    );
    assert!(
        human.contains("symbolized.sys!symbolized::map_registers+0x"),
        "{human}"
    );
    assert!(human.contains("0xfffff80000602a40"), "{human}");

    // JSON: the strings and the structured frames.
    let json = iosv_client::output::json::violation(&v, &images);
    let call = &json["call_frames"][0];
    assert_eq!(call["function"], "symbolized::unmap_registers");
    assert_eq!(call["line"], unmap_line);
    assert!(call["file"].as_str().unwrap().ends_with("symbolized.rs"));
    assert_eq!(
        json["map_frames"][0]["function"],
        "symbolized::map_registers"
    );
    assert_eq!(json["map_frames"][0]["line"], map_line);
    assert!(json["call_stack"][0]
        .as_str()
        .unwrap()
        .starts_with(&unmap_text));
    assert_eq!(json["call_frames"][1]["module"], serde_json::Value::Null);

    // SARIF: the result's location and every frame have a physical location.
    let log = iosv_client::output::sarif::log(&[rec], &images, &Default::default());
    let result = &log["runs"][0]["results"][0];
    let physical = &result["locations"][0]["physicalLocation"];
    assert!(physical["artifactLocation"]["uri"]
        .as_str()
        .unwrap()
        .ends_with("symbolized.rs"));
    assert_eq!(physical["region"]["startLine"], unmap_line);
    let frame = &result["stacks"][1]["frames"][0]["location"];
    assert_eq!(frame["physicalLocation"]["region"]["startLine"], map_line);
    assert!(frame["logicalLocations"][0]["fullyQualifiedName"]
        .as_str()
        .unwrap()
        .starts_with("symbolized.sys!symbolized::map_registers+0x"));

    // JUnit: the failure carries both stacks.
    let xml = iosv_client::output::junit::report_with_stacks(
        &[rec],
        Some(&images),
        &["symbolized.sys".to_string()],
        &[],
    );
    assert!(xml.contains(&unmap_text), "{xml}");
    assert!(xml.contains(&format!("symbolized.rs:{map_line})")), "{xml}");

    // Without symbols, the frames are module+offset as before.
    let plain = Images::from_stats(&stats);
    assert_eq!(
        plain.symbol(base + u64::from(map_call)),
        format!("symbolized.sys+0x{map_call:x}")
    );
}
