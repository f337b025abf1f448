//! `iosv::pe` and `iosv::intercept` on real PE32+ images: the fixture drivers of
//! `tests/fixtures`, compiled with rustc and rust-lld, loaded the way the Windows loader
//! maps them, checked against an independent PE reader (the `object` crate), patched and
//! restored through a fake `SlotAccess`, and corrupted in the ways the parser must refuse.

#![allow(
    clippy::cast_lossless,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::cell::RefCell;

use iosv::intercept::{
    is_bound_value, Hooks, Outcome, Plan, PlanError, Report, SiteRefusal, SlotAccess,
    SlotWriteError,
};
use iosv::pe::{
    Directory, ExportTarget, HookedRoutine, IatSlot, OrdinalResolver, PeError, PeImage,
    RoutineOrdinals, Structure, MACHINE_AMD64,
};
use iosv_tests::fixture::{self, Loaded};
use object::pe::ImageNtHeaders64;
use object::read::pe::{ImageThunkData, Import, PeFile64};
use object::LittleEndian as LE;

const HOOKS: Hooks = Hooks {
    map_io_space: 0xFFFF_F807_1000_0010,
    map_io_space_ex: 0xFFFF_F807_1000_0020,
    unmap_io_space: 0xFFFF_F807_1000_0030,
    get_system_routine_address: 0xFFFF_F807_1000_0040,
};

/// Fixtures that import from ntoskrnl.exe correctly (`+verbatim`).
const HOOKING: [&str; 5] = [
    "maps_by_name",
    "maps_by_ordinal",
    "dynamic_lookup",
    "delay_load",
    "mixed_dlls",
];

/// The made-up ordinals `maps_by_ordinal` imports, as ntoskrnl's `fake_ntoskrnl`
/// fixture exports them.
const fn fixture_ordinal(ordinal: u16) -> Option<&'static [u8]> {
    match ordinal {
        1234 => Some(b"MmMapIoSpace"),
        1240 => Some(b"MmUnmapIoSpace"),
        _ => None,
    }
}

/// One import as the independent reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OracleImport {
    dll: Vec<u8>,
    delay_load: bool,
    iat_rva: u32,
    name: Option<Vec<u8>>,
    ordinal: Option<u16>,
}

/// Every import of an on-disk image, read with `object`.
fn oracle_imports(file: &[u8]) -> Vec<OracleImport> {
    let pe = PeFile64::parse(file).expect("object parses the fixture");
    let mut all = Vec::new();
    if let Some(table) = pe.import_table().expect("import table") {
        let mut descriptors = table.descriptors().expect("descriptors");
        while let Some(d) = descriptors.next().expect("descriptor") {
            let dll = table.name(d.name.get(LE)).expect("name").to_vec();
            let iat = d.first_thunk.get(LE);
            let mut thunks = table
                .thunks(d.original_first_thunk.get(LE))
                .expect("thunks");
            let mut index = 0u32;
            while let Some(thunk) = thunks.next::<ImageNtHeaders64>().expect("thunk") {
                let (name, ordinal) = match table.import::<ImageNtHeaders64>(thunk).expect("import")
                {
                    Import::Name(_, name) => (Some(name.to_vec()), None),
                    Import::Ordinal(ordinal) => (None, Some(ordinal)),
                };
                all.push(OracleImport {
                    dll: dll.clone(),
                    delay_load: false,
                    iat_rva: iat + 8 * index,
                    name,
                    ordinal,
                });
                index += 1;
            }
        }
    }
    if let Some(table) = pe.delay_load_import_table().expect("delay table") {
        let mut descriptors = table.descriptors().expect("descriptors");
        while let Some(d) = descriptors.next().expect("descriptor") {
            let dll = table.name(d.dll_name_rva.get(LE)).expect("name").to_vec();
            let iat = d.import_address_table_rva.get(LE);
            let mut thunks = table
                .thunks(d.import_name_table_rva.get(LE))
                .expect("thunks");
            let mut index = 0u32;
            while let Some(thunk) = thunks.next::<ImageNtHeaders64>().expect("thunk") {
                let (name, ordinal) = if thunk.is_ordinal() {
                    (None, Some(thunk.ordinal()))
                } else {
                    let (_, name) = table.hint_name(thunk.address()).expect("hint/name");
                    (Some(name.to_vec()), None)
                };
                all.push(OracleImport {
                    dll: dll.clone(),
                    delay_load: true,
                    iat_rva: iat + 8 * index,
                    name,
                    ordinal,
                });
                index += 1;
            }
        }
    }
    all
}

/// What `hooked_slots` must find, derived from the oracle's imports.
fn expected_slots(file: &[u8]) -> Vec<(u32, HookedRoutine, bool, Option<u16>)> {
    oracle_imports(file)
        .into_iter()
        .filter(|i| i.dll.eq_ignore_ascii_case(b"ntoskrnl.exe"))
        .filter_map(|i| {
            let name = match (&i.name, i.ordinal) {
                (Some(name), _) => name.clone(),
                (None, Some(ordinal)) => fixture_ordinal(ordinal)?.to_vec(),
                (None, None) => return None,
            };
            let routine = HookedRoutine::from_name(&name)?;
            Some((i.iat_rva, routine, i.delay_load, i.ordinal))
        })
        .collect()
}

fn found_slots(image: &[u8]) -> Vec<(u32, HookedRoutine, bool, Option<u16>)> {
    let pe = PeImage::parse(image).expect("parse");
    let resolver: &dyn OrdinalResolver = &fixture_ordinal;
    pe.hooked_slots(Some(resolver))
        .map(|slot| {
            let slot = slot.expect("slot");
            (slot.rva, slot.routine, slot.delay_load, slot.ordinal)
        })
        .collect()
}

/// Writes what the loader would into every regular IAT slot: an address in "ntoskrnl".
/// Delay-load IATs keep their link-time values (pointers to the delay-load thunks).
fn bind(loaded: &mut Loaded, file: &[u8]) {
    for (k, import) in oracle_imports(file).iter().enumerate() {
        if !import.delay_load {
            let at = import.iat_rva as usize;
            let value = 0xFFFF_F800_0100_0000u64 + 0x100 * k as u64;
            loaded.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
    }
}

/// The loaded image as memory at `base`, for `SlotAccess`.
struct Memory {
    base: usize,
    bytes: RefCell<Vec<u8>>,
}

impl Memory {
    fn word(&self, address: usize) -> usize {
        let bytes = self.bytes.borrow();
        assert!(address >= self.base, "{address:#x} below the image");
        let at = address - self.base;
        assert!(at + 8 <= bytes.len(), "{address:#x} past the image");
        assert_eq!(at % 8, 0, "misaligned slot {address:#x}");
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize
    }
}

impl Memory {
    /// [`Plan::attach`] over this memory.
    fn attach(&self, plan: &mut Plan) -> Report {
        // SAFETY: `Memory`'s accessors are safe code over `self.bytes`: `word` asserts that
        // every address lies inside them and is aligned, so nothing outside the vector is
        // read or written; `self` outlives the call, and no hook is called through it.
        unsafe { plan.attach(self) }
    }

    /// [`Plan::detach`] over this memory.
    fn detach(&self, plan: &mut Plan) -> Report {
        // SAFETY: `Memory`'s accessors are safe code that touch only `self.bytes`, at
        // addresses `word` bounds- and alignment-checks; `self` outlives the call.
        unsafe { plan.detach(self) }
    }

    /// [`Plan::check_sites`] over this memory, with `resident` for every slot's page.
    fn check_sites(
        &self,
        plan: &Plan,
        pe: &PeImage<'_>,
        resident: bool,
    ) -> Result<(), SiteRefusal> {
        // SAFETY: check_sites only reads slots through `Memory::read_slot`, safe code over
        // `self.bytes` whose addresses `word` bounds- and alignment-checks; `self` outlives
        // the call.
        unsafe { plan.check_sites(pe, self, |_| resident, is_bound_value) }
    }
}

impl SlotAccess for Memory {
    unsafe fn read_slot(&self, address: usize) -> usize {
        self.word(address)
    }

    unsafe fn compare_exchange_slot(
        &self,
        address: usize,
        current: usize,
        new: usize,
    ) -> Result<(), SlotWriteError> {
        let found = self.word(address);
        if found != current {
            return Err(SlotWriteError::Changed { found });
        }
        let at = address - self.base;
        self.bytes.borrow_mut()[at..at + 8].copy_from_slice(&(new as u64).to_le_bytes());
        Ok(())
    }
}

#[test]
fn every_fixture_compiles_loads_and_parses() {
    let names = fixture::names();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        let file = fixture::build(name);
        let loaded = fixture::load(file);
        let pe = PeImage::parse(&loaded.bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pe.machine(), MACHINE_AMD64, "{name}");
        assert_eq!(pe.image_base(), loaded.image_base, "{name}");
        assert_eq!(pe.size_of_image() as usize, loaded.bytes.len(), "{name}");

        let oracle = PeFile64::parse(file).unwrap();
        let sections: Vec<_> = pe.sections().collect();
        assert_eq!(sections.len(), oracle.section_table().len(), "{name}");
        for (ours, theirs) in sections.iter().zip(oracle.section_table().iter()) {
            assert_eq!(ours.name, theirs.name, "{name}");
            assert_eq!(
                ours.virtual_address,
                theirs.virtual_address.get(LE),
                "{name}"
            );
            assert_eq!(
                ours.characteristics,
                theirs.characteristics.get(LE).0,
                "{name}"
            );
        }
        let dir = pe.data_directory(Directory::Import).unwrap();
        let theirs = oracle
            .data_directory(object::pe::IMAGE_DIRECTORY_ENTRY_IMPORT)
            .map_or((0, 0), |d| (d.virtual_address.get(LE), d.size.get(LE)));
        assert_eq!((dir.rva, dir.size), theirs, "{name}");

        // The DLL names and descriptor kinds agree with the oracle's.
        let mut ours: Vec<(Vec<u8>, bool)> = pe
            .imported_dlls()
            .map(|d| d.map(|d| (d.dll_name.to_vec(), d.delay_load)).unwrap())
            .collect();
        let mut theirs: Vec<(Vec<u8>, bool)> = oracle_imports(file)
            .into_iter()
            .map(|i| (i.dll, i.delay_load))
            .collect();
        theirs.dedup();
        ours.dedup();
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn hooked_slots_match_the_independent_reader() {
    for name in fixture::names() {
        let file = fixture::build(&name);
        let mut loaded = fixture::load(file);
        let expected = expected_slots(file);
        assert_eq!(found_slots(&loaded.bytes), expected, "{name}");
        // Binding the IAT does not change what is found: names come from the lookup
        // tables.
        bind(&mut loaded, file);
        assert_eq!(found_slots(&loaded.bytes), expected, "{name} (bound)");
        if HOOKING.contains(&name.as_str()) {
            assert!(!expected.is_empty(), "{name} hooks nothing");
        }
    }
}

#[test]
fn by_name_fixture() {
    let loaded = fixture::loaded("maps_by_name");
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let mut out = [IatSlot::EMPTY; 8];
    let summary = pe.find_hooked_slots(None, &mut out).unwrap();
    assert_eq!(summary.slots, 3);
    assert_eq!(summary.ntoskrnl_thunks, 6);
    assert_eq!(summary.unresolved_ordinals, 0);
    let routines: Vec<_> = out[..3].iter().map(|s| s.routine).collect();
    assert_eq!(
        routines,
        [
            HookedRoutine::MapIoSpace,
            HookedRoutine::MapIoSpaceEx,
            HookedRoutine::UnmapIoSpace
        ]
    );
    for slot in &out[..3] {
        // The `+verbatim` pitfall: the name must be exactly this, not ntoskrnl.exe.dll.
        assert_eq!(slot.dll_name, b"ntoskrnl.exe");
        assert!(!slot.delay_load);
        assert_eq!(slot.ordinal, None);
        let section = pe.section_of_rva(slot.rva).unwrap();
        assert!(!section.is_discardable());
    }
    // Slots of one descriptor are consecutive IAT entries, inside the IAT directory.
    let iat = pe.data_directory(Directory::ImportAddressTable).unwrap();
    for slot in &out[..3] {
        assert!(slot.rva >= iat.rva && slot.rva + 8 <= iat.rva + iat.size);
    }
    let dlls: Vec<_> = pe.imported_dlls().map(Result::unwrap).collect();
    assert_eq!(dlls.len(), 1);
    assert_eq!(dlls[0].dll_name, b"ntoskrnl.exe");
    assert!(dlls[0].is_ntoskrnl());
}

#[test]
fn verbatim_pitfall_is_not_ntoskrnl() {
    let loaded = fixture::loaded("without_verbatim");
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let dlls: Vec<_> = pe.imported_dlls().map(Result::unwrap).collect();
    assert_eq!(dlls.len(), 1);
    assert_eq!(dlls[0].dll_name, b"ntoskrnl.exe.dll");
    assert!(!dlls[0].is_ntoskrnl());
    assert_eq!(pe.hooked_slots(None).count(), 0);

    // Every fixture that means ntoskrnl.exe spells it exactly so (or in another case).
    for name in HOOKING {
        let loaded = fixture::loaded(name);
        let pe = PeImage::parse(&loaded.bytes).unwrap();
        for dll in pe.imported_dlls() {
            let dll = dll.unwrap();
            assert!(
                dll.dll_name.eq_ignore_ascii_case(b"ntoskrnl.exe") || dll.dll_name == b"HAL.dll",
                "{name}: {:?}",
                String::from_utf8_lossy(dll.dll_name)
            );
        }
    }
}

#[test]
fn by_ordinal_fixture_resolved_through_fake_ntoskrnl_exports() {
    let loaded = fixture::loaded("maps_by_ordinal");
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let mut out = [IatSlot::EMPTY; 4];

    let summary = pe.find_hooked_slots(None, &mut out).unwrap();
    assert_eq!(summary.slots, 0);
    assert_eq!(summary.unresolved_ordinals, 3);

    // ntoskrnl's export table, stood in for by a fixture that exports the routines at
    // the same ordinals.
    let kernel = fixture::loaded("fake_ntoskrnl");
    let kernel = PeImage::parse(&kernel.bytes).unwrap();
    let exports = kernel.exports().unwrap().unwrap();
    assert_eq!(
        exports.name_of_ordinal(1234).unwrap(),
        Some(&b"MmMapIoSpace"[..])
    );
    let ordinals = RoutineOrdinals::from_exports(&exports).unwrap();
    assert_eq!(ordinals.ordinal(HookedRoutine::MapIoSpace), Some(1234));
    assert_eq!(ordinals.ordinal(HookedRoutine::UnmapIoSpace), Some(1240));
    assert_eq!(ordinals.ordinal(HookedRoutine::MapIoSpaceEx), Some(1235));

    for resolver in [&exports as &dyn OrdinalResolver, &ordinals] {
        let summary = pe.find_hooked_slots(Some(resolver), &mut out).unwrap();
        assert_eq!(summary.slots, 2);
        assert_eq!(summary.unresolved_ordinals, 1, "ordinal 77 is unknown");
        assert_eq!(out[0].routine, HookedRoutine::MapIoSpace);
        assert_eq!(out[0].ordinal, Some(1234));
        assert_eq!(out[1].routine, HookedRoutine::UnmapIoSpace);
        assert_eq!(out[1].ordinal, Some(1240));
        assert_eq!(out[1].rva, out[0].rva + 8);
    }
}

#[test]
fn dynamic_lookup_fixture_hooks_get_system_routine_address() {
    let loaded = fixture::loaded("dynamic_lookup");
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let slots: Vec<_> = pe.hooked_slots(None).map(Result::unwrap).collect();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].routine, HookedRoutine::GetSystemRoutineAddress);

    // The names the fixture asks for, as UTF-16 in its .rdata, get our hooks.
    let find = |ascii: &str| -> Vec<u16> {
        let utf16: Vec<u8> = ascii.bytes().flat_map(|b| [b, 0]).collect();
        let at = loaded
            .bytes
            .windows(utf16.len())
            .position(|w| w == utf16.as_slice())
            .unwrap_or_else(|| panic!("{ascii} not in the image"));
        loaded.bytes[at..at + utf16.len()]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    assert_eq!(
        iosv::intercept::system_routine_override(&find("MmMapIoSpace"), &HOOKS),
        Some(HOOKS.map_io_space)
    );
    assert_eq!(
        iosv::intercept::system_routine_override(&find("MmUnmapIoSpace"), &HOOKS),
        Some(HOOKS.unmap_io_space)
    );
}

#[test]
fn delay_load_fixture() {
    let file = fixture::build("delay_load");
    let loaded = fixture::load(file);
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let dir = pe.data_directory(Directory::DelayImport).unwrap();
    assert_ne!(dir.rva, 0, "rust-lld wrote no delay-load directory");
    assert_eq!(pe.data_directory(Directory::Import).unwrap().rva, 0);
    let dlls: Vec<_> = pe.imported_dlls().map(Result::unwrap).collect();
    assert_eq!(dlls.len(), 1);
    assert!(dlls[0].delay_load);
    assert_eq!(dlls[0].dll_name, b"ntoskrnl.exe");

    let slots: Vec<_> = pe.hooked_slots(None).map(Result::unwrap).collect();
    let routines: Vec<_> = slots.iter().map(|s| (s.routine, s.delay_load)).collect();
    assert_eq!(
        routines,
        [
            (HookedRoutine::MapIoSpace, true),
            (HookedRoutine::UnmapIoSpace, true)
        ]
    );
    // Before the first call a delay-load IAT entry points at the linker's thunk, inside
    // the image.
    for slot in &slots {
        let at = slot.rva as usize;
        let value = u64::from_le_bytes(loaded.bytes[at..at + 8].try_into().unwrap());
        let rva = value - loaded.image_base;
        assert!(pe.section_of_rva(rva as u32).is_some(), "{value:#x}");
    }
}

#[test]
fn mixed_dlls_fixture() {
    let loaded = fixture::loaded("mixed_dlls");
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let dlls: Vec<_> = pe
        .imported_dlls()
        .map(|d| d.unwrap().dll_name.to_vec())
        .collect();
    assert_eq!(dlls, [b"HAL.dll".to_vec(), b"NTOSKRNL.EXE".to_vec()]);
    let slots: Vec<_> = pe.hooked_slots(None).map(Result::unwrap).collect();
    // The linker orders the imports of a descriptor by name.
    let mut found: Vec<_> = slots.iter().map(|s| (s.routine, s.dll_name)).collect();
    found.sort_by_key(|(routine, _)| routine.index());
    assert_eq!(
        found,
        [
            (HookedRoutine::MapIoSpaceEx, &b"NTOSKRNL.EXE"[..]),
            (HookedRoutine::UnmapIoSpace, &b"NTOSKRNL.EXE"[..]),
            (HookedRoutine::GetSystemRoutineAddress, &b"NTOSKRNL.EXE"[..]),
        ]
    );
}

#[test]
fn exports_fixture_matches_the_independent_reader() {
    let file = fixture::build("exports");
    let loaded = fixture::load(file);
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let exports = pe.exports().unwrap().unwrap();
    assert_eq!(exports.dll_name().unwrap(), b"exports.sys");
    assert_eq!(exports.ordinal_base(), 20);

    let oracle = PeFile64::parse(file).unwrap();
    let theirs = oracle.export_table().unwrap().unwrap().exports().unwrap();
    assert_eq!(exports.function_count() as usize, theirs.len());
    for export in &theirs {
        let ordinal = export.ordinal.0;
        assert_eq!(exports.name_of_ordinal(ordinal).unwrap(), export.name);
        if let Some(name) = export.name {
            assert_eq!(exports.ordinal_of_name(name).unwrap(), Some(ordinal));
        }
        let target = exports.target(ordinal).unwrap().unwrap();
        match export.target {
            object::read::pe::ExportTarget::Address(rva) => {
                assert_eq!(target, ExportTarget::Rva(rva));
            }
            object::read::pe::ExportTarget::ForwardByName(dll, name) => {
                let text = [dll, b".", name].concat();
                assert_eq!(target, ExportTarget::Forwarder(&text));
            }
            object::read::pe::ExportTarget::ForwardByOrdinal(..) => unreachable!(),
        }
    }
    assert_eq!(exports.name_of_ordinal(20).unwrap(), None, "NONAME export");
    assert!(matches!(
        exports.target(20).unwrap(),
        Some(ExportTarget::Rva(_))
    ));
    assert_eq!(exports.ordinal_of_name(b"DriverEntry").unwrap(), Some(21));
    assert_eq!(
        exports.target(
            exports
                .ordinal_of_name(b"IosvFixtureForward")
                .unwrap()
                .unwrap()
        ),
        Ok(Some(ExportTarget::Forwarder(
            &b"HAL.KeStallExecutionProcessor"[..]
        )))
    );
    assert_eq!(exports.name_of_ordinal(19).unwrap(), None);
    assert_eq!(exports.target(19).unwrap(), None);
    assert_eq!(exports.name_of_ordinal(u16::MAX).unwrap(), None);
    let names: Vec<_> = exports.names().map(|n| n.unwrap().name.to_vec()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 4);
}

#[test]
fn attach_and_detach_on_loaded_fixtures() {
    for name in HOOKING {
        let file = fixture::build(name);
        let mut loaded = fixture::load(file);
        let base = loaded.image_base as usize;

        // Before the loader binds the IAT, its regular slots hold their lookup entries:
        // attach leaves them alone.
        let unbound = PeImage::parse(&loaded.bytes).unwrap();
        let resolver: &dyn OrdinalResolver = &fixture_ordinal;
        let (mut plan, _) = Plan::for_image(base, &unbound, Some(resolver), &HOOKS).unwrap();
        let memory = Memory {
            base,
            bytes: RefCell::new(loaded.bytes.clone()),
        };
        let report = memory.attach(&mut plan);
        for (patch, outcome) in plan.patches().iter().zip(report.outcomes()) {
            if patch.delay_load {
                assert!(matches!(outcome.outcome, Outcome::Patched { .. }), "{name}");
            } else {
                assert!(
                    matches!(outcome.outcome, Outcome::NotBound { .. }),
                    "{name}"
                );
                assert!(!patch.is_attached());
            }
        }
        assert!(memory.detach(&mut plan).is_clean());
        assert_eq!(*memory.bytes.borrow(), loaded.bytes, "{name}");

        bind(&mut loaded, file);
        let pristine = loaded.bytes.clone();
        let pe = PeImage::parse(&pristine).unwrap();
        let (mut plan, summary) = Plan::for_image(base, &pe, Some(resolver), &HOOKS).unwrap();
        assert_eq!(plan.patches().len(), summary.slots, "{name}");
        assert!(!plan.patches().is_empty(), "{name}");

        let memory = Memory {
            base,
            bytes: RefCell::new(loaded.bytes.clone()),
        };
        let report = memory.attach(&mut plan);
        assert!(report.is_clean(), "{name}: {report:?}");
        for (patch, outcome) in plan.patches().iter().zip(report.outcomes()) {
            let at = patch.address - base;
            let before = u64::from_le_bytes(pristine[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(
                outcome.outcome,
                Outcome::Patched { original: before },
                "{name}"
            );
            assert_eq!(
                memory.word(patch.address),
                HOOKS.get(patch.routine),
                "{name}"
            );
            assert_eq!(patch.original(), Some(before));
        }
        // Only the hooked slots changed.
        let changed = memory
            .bytes
            .borrow()
            .chunks(8)
            .zip(pristine.chunks(8))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, plan.patches().len(), "{name}");

        // The patched image still parses to the same slots.
        let patched = memory.bytes.borrow().clone();
        assert_eq!(found_slots(&patched), found_slots(&pristine), "{name}");

        let again = memory.attach(&mut plan);
        assert!(again
            .outcomes()
            .iter()
            .all(|o| o.outcome == Outcome::AlreadyAttached));

        let report = memory.detach(&mut plan);
        assert!(report.is_clean(), "{name}: {report:?}");
        assert_eq!(
            *memory.bytes.borrow(),
            pristine,
            "{name}: not restored exactly"
        );
    }
}

#[test]
fn detach_refuses_a_slot_someone_else_changed() {
    let file = fixture::build("maps_by_name");
    let mut loaded = fixture::load(file);
    bind(&mut loaded, file);
    let base = 0xFFFF_F806_2000_0000usize;
    let pe = PeImage::parse(&loaded.bytes).unwrap();
    let (mut plan, _) = Plan::for_image(base, &pe, None, &HOOKS).unwrap();
    let memory = Memory {
        base,
        bytes: RefCell::new(loaded.bytes.clone()),
    };
    memory.attach(&mut plan);
    let victim = plan.patches()[1];
    let at = victim.address - base;
    memory.bytes.borrow_mut()[at..at + 8].copy_from_slice(&0x1122_3344u64.to_le_bytes());

    let report = memory.detach(&mut plan);
    assert_eq!(report.errors(), 1);
    assert_eq!(
        report.outcomes()[1].outcome,
        Outcome::Changed { found: 0x1122_3344 }
    );
    assert_eq!(memory.word(victim.address), 0x1122_3344);
    let bytes = memory.bytes.borrow();
    for (i, patch) in plan.patches().iter().enumerate() {
        if i != 1 {
            let at = patch.address - base;
            assert_eq!(bytes[at..at + 8], loaded.bytes[at..at + 8]);
        }
    }
}

// ---- corrupted images --------------------------------------------------------------

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// Parses and walks every hooked slot; the count, or the first error.
fn scan(image: &[u8]) -> Result<usize, PeError> {
    PeImage::parse(image)?
        .hooked_slots(None)
        .try_fold(0, |count, slot| slot.map(|_| count + 1))
}

struct Layout {
    nt: usize,
    optional: usize,
    sections: usize,
    import_dir: usize,
    descriptor: usize,
}

fn layout(image: &[u8]) -> Layout {
    let nt = u32_at(image, 0x3C) as usize;
    let optional = nt + 24;
    let size_of_optional = u16::from_le_bytes([image[nt + 20], image[nt + 21]]) as usize;
    Layout {
        nt,
        optional,
        sections: optional + size_of_optional,
        import_dir: optional + 112 + 8,
        descriptor: u32_at(image, optional + 112 + 8) as usize,
    }
}

#[test]
fn truncated_images_are_refused() {
    let loaded = fixture::loaded("maps_by_name");
    let image = &loaded.bytes;
    let size = image.len();
    for len in [0, 1, 0x3C, 0x40, 0x100, 0x3FF, size / 2, size - 1] {
        let error = scan(&image[..len]).unwrap_err();
        assert!(
            matches!(
                error,
                PeError::Truncated { .. } | PeError::BufferShorterThanImage { .. }
            ),
            "{len:#x}: {error}"
        );
    }
    assert_eq!(
        scan(&image[..size - 1]),
        Err(PeError::BufferShorterThanImage {
            size_of_image: size as u32,
            buffer_len: size - 1
        })
    );
    // The on-disk file is shorter than SizeOfImage: refused, not misread.
    let file = fixture::build("maps_by_name");
    assert!(file.len() < size);
    assert!(matches!(
        scan(file),
        Err(PeError::BufferShorterThanImage { .. })
    ));
}

#[test]
fn bad_e_lfanew() {
    let loaded = fixture::loaded("maps_by_name");
    let size = loaded.bytes.len();
    for (lfanew, expected) in [
        (
            u32::MAX,
            PeError::Truncated {
                what: Structure::NtHeaders,
                offset: u32::MAX as usize,
                len: size,
            },
        ),
        (
            size as u32 - 10,
            PeError::Truncated {
                what: Structure::NtHeaders,
                offset: size - 10,
                len: size,
            },
        ),
        (
            0,
            PeError::BadNtSignature {
                offset: 0,
                found: u32_at(&loaded.bytes, 0),
            },
        ),
    ] {
        let mut image = loaded.bytes.clone();
        put_u32(&mut image, 0x3C, lfanew);
        assert_eq!(scan(&image), Err(expected), "{lfanew:#x}");
    }
}

#[test]
fn pe32_optional_header_is_refused() {
    let mut image = fixture::loaded("maps_by_name").bytes;
    let l = layout(&image);
    put_u16(&mut image, l.optional, 0x10B);
    assert_eq!(scan(&image), Err(PeError::Pe32NotSupported));
    assert!(PeError::Pe32NotSupported.to_string().contains("PE32+"));
}

#[test]
fn section_beyond_image_is_refused() {
    let mut image = fixture::loaded("maps_by_name").bytes;
    let l = layout(&image);
    let size = image.len() as u32;
    // The last section grows past SizeOfImage.
    let count = u16::from_le_bytes([image[l.nt + 6], image[l.nt + 7]]) as usize;
    let last = l.sections + 40 * (count - 1);
    let va = u32_at(&image, last + 12);
    put_u32(&mut image, last + 8, size - va + 1);
    assert_eq!(
        scan(&image),
        Err(PeError::SectionOutOfImage {
            index: (count - 1) as u16,
            virtual_address: va,
            size: size - va + 1
        })
    );
}

#[test]
fn import_descriptor_rva_out_of_range_is_refused() {
    let loaded = fixture::loaded("maps_by_name");
    let l = layout(&loaded.bytes);
    let size = loaded.bytes.len() as u32;

    let mut image = loaded.bytes.clone();
    put_u32(&mut image, l.import_dir, size + 0x1000);
    assert!(matches!(
        scan(&image),
        Err(PeError::DirectoryOutOfImage {
            directory: Directory::Import,
            ..
        })
    ));

    // Each RVA field of the descriptor, pointed outside the image.
    for (field, what) in [
        (0, Structure::ImportLookupTable),
        (12, Structure::DllName),
        (16, Structure::ImportAddressTable),
    ] {
        let mut image = loaded.bytes.clone();
        put_u32(&mut image, l.descriptor + field, 0x7FFF_0000);
        assert_eq!(
            scan(&image),
            Err(PeError::RvaOutOfImage {
                what,
                rva: 0x7FFF_0000,
                at: l.descriptor + field
            }),
            "{what}"
        );
    }
}

#[test]
fn unterminated_names_are_refused() {
    let loaded = fixture::loaded("maps_by_name");
    let l = layout(&loaded.bytes);

    // The DLL name runs into non-NUL bytes up to the end of the image.
    let mut image = loaded.bytes.clone();
    let name = u32_at(&image, l.descriptor + 12) as usize;
    let len = image.len();
    image[name..].fill(b'A');
    assert_eq!(
        scan(&image),
        Err(PeError::UnterminatedName {
            what: Structure::DllName,
            rva: name as u32
        })
    );

    // The first hint/name entry's name has no NUL within MAX_NAME_LEN: point the thunk
    // at a fresh run of letters at the end of the image.
    let mut image = loaded.bytes;
    let lookup = u32_at(&image, l.descriptor) as usize;
    let at = len - 600;
    image[at..].fill(b'B');
    image[lookup..lookup + 8].copy_from_slice(&(at as u64).to_le_bytes());
    assert_eq!(
        scan(&image),
        Err(PeError::UnterminatedName {
            what: Structure::HintName,
            rva: at as u32
        })
    );
}

/// Grows a loaded image by `extra` bytes (all in its last section) and returns the RVA
/// of the new space.
fn grow(image: &mut Vec<u8>, extra: usize) -> usize {
    let l = layout(image);
    let old = image.len();
    image.resize(old + extra, 0);
    put_u32(image, l.optional + 56, (old + extra) as u32);
    let count = u16::from_le_bytes([image[l.nt + 6], image[l.nt + 7]]) as usize;
    let last = l.sections + 40 * (count - 1);
    let va = u32_at(image, last + 12) as usize;
    put_u32(image, last + 8, (old + extra - va) as u32);
    old
}

#[test]
fn looping_thunks_are_bounded() {
    let loaded = fixture::loaded("maps_by_name");
    let l = layout(&loaded.bytes);

    // A lookup table with no terminator: the walk stops at the image end.
    let mut image = loaded.bytes.clone();
    let len = image.len();
    let from = len - 64;
    for at in (from..len).step_by(8) {
        image[at..at + 8].copy_from_slice(&((1u64 << 63) | 0x63).to_le_bytes());
    }
    put_u32(&mut image, l.descriptor, from as u32);
    assert_eq!(
        scan(&image),
        Err(PeError::UnterminatedThunkTable {
            what: Structure::ImportLookupTable,
            rva: from as u32
        })
    );

    // An endless run of thunks in a large image: the walk stops at MAX_THUNKS.
    let mut image = loaded.bytes.clone();
    let extra = 8 * (iosv::pe::MAX_THUNKS + 16);
    let start = grow(&mut image, extra);
    for at in (start..start + extra).step_by(8) {
        image[at..at + 8].copy_from_slice(&((1u64 << 63) | 0x63).to_le_bytes());
    }
    put_u32(&mut image, l.descriptor, start as u32);
    assert_eq!(
        scan(&image),
        Err(PeError::TooManyThunks {
            limit: iosv::pe::MAX_THUNKS
        })
    );

    // Descriptors without a terminator, all sharing one thunk table: the walk stops at
    // MAX_IMPORT_DESCRIPTORS.
    let mut image = loaded.bytes.clone();
    let count = iosv::pe::MAX_IMPORT_DESCRIPTORS + 1;
    let start = grow(&mut image, 20 * count);
    let descriptor = loaded.bytes[l.descriptor..l.descriptor + 20].to_vec();
    for i in 0..count {
        image[start + 20 * i..start + 20 * (i + 1)].copy_from_slice(&descriptor);
    }
    put_u32(&mut image, l.import_dir, start as u32);
    put_u32(&mut image, l.import_dir + 4, (20 * count) as u32);
    assert_eq!(
        scan(&image),
        Err(PeError::TooManyDescriptors {
            directory: Directory::Import,
            limit: iosv::pe::MAX_IMPORT_DESCRIPTORS
        })
    );
    // Terminated after 100 copies: 300 slots, more than a plan holds.
    image[start + 20 * 100..start + 20 * 101].fill(0);
    let pe = PeImage::parse(&image).unwrap();
    assert_eq!(scan(&image), Ok(300));
    let mut out = [IatSlot::EMPTY; 16];
    assert_eq!(
        pe.find_hooked_slots(None, &mut out),
        Err(PeError::OutputFull { capacity: 16 })
    );
    assert_eq!(
        Plan::for_image(0x1000_0000, &pe, None, &HOOKS).unwrap_err(),
        PlanError::TooManySlots
    );
}

#[test]
fn slots_are_checked_before_anything_is_written() {
    for (name, want) in [
        ("maps_by_name", Ok(())),
        ("iat_in_text", Err(SiteRefusal::ExecutableSection)),
    ] {
        let file = fixture::build(name);
        let mut loaded = fixture::load(file);
        let base = usize::try_from(loaded.image_base).unwrap();
        let unbound_memory = Memory {
            base,
            bytes: RefCell::new(loaded.bytes.clone()),
        };
        bind(&mut loaded, file);
        let pe = PeImage::parse(&loaded.bytes).unwrap();
        let (plan, _) = Plan::for_image(base, &pe, None, &HOOKS).unwrap();
        assert!(!plan.patches().is_empty(), "{name}");
        let memory = Memory {
            base,
            bytes: RefCell::new(loaded.bytes.clone()),
        };
        let got = memory.check_sites(&plan, &pe, true);
        assert_eq!(got, want, "{name}");
        if want.is_ok() {
            // The same slots before the loader bound them, or with a page not resident.
            let unbound = unbound_memory.check_sites(&plan, &pe, true);
            assert_eq!(unbound, Err(SiteRefusal::Unbound), "{name}");
            let absent = memory.check_sites(&plan, &pe, false);
            assert_eq!(absent, Err(SiteRefusal::NotResident), "{name}");
        }
        // A refusal writes nothing.
        assert_eq!(*memory.bytes.borrow(), loaded.bytes, "{name}");
    }
}
