//! The bodies of the fuzz targets (`fuzz/`, cargo-fuzz) as plain functions, so the seed
//! corpora also run in `cargo test` (`tests/tests/fuzz_corpora.rs`) without a nightly
//! toolchain. Each takes arbitrary bytes, must not panic whatever they are, and asserts
//! what must hold of the result.

#![allow(
    clippy::cast_lossless,
    clippy::cast_possible_truncation,
    clippy::missing_panics_doc
)]

use std::cell::RefCell;
use std::sync::OnceLock;

use iosv::intercept::{Hooks, Plan, SlotAccess, SlotWriteError, SLOT_SIZE};
use iosv::pe::{
    Directory, HookedRoutine, IatSlot, OrdinalResolver, PeImage, RoutineOrdinals, MAX_EXPORTS,
    MAX_NAME_LEN, MAX_THUNKS,
};

/// Names of the targets, as directories under `fuzz/corpus/` and binaries of `fuzz/`.
pub const TARGETS: [&str; 4] = ["control", "frame", "pe", "scenario"];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "control" => control(data),
        "frame" => frame(data),
        "pe" => pe(data),
        "scenario" => scenario(data),
        _ => panic!("no fuzz target {name}"),
    }
}

// ---- control: every IOCTL through the control decoder --------------------------------

/// The control codes the first input byte chooses from (a byte past the list takes the
/// next four bytes as a raw code).
pub const CODES: [u32; 10] = [
    iosv::protocol::IOCTL_HELLO,
    iosv::protocol::IOCTL_GET_STATS,
    iosv::protocol::IOCTL_READ_VIOLATIONS,
    iosv::protocol::IOCTL_LIST_MAPPINGS,
    iosv::protocol::IOCTL_GET_CONFIG,
    iosv::protocol::IOCTL_SET_CONFIG,
    iosv::protocol::IOCTL_CLEAR,
    iosv::protocol::IOCTL_ATTACH,
    iosv::protocol::IOCTL_DETACH,
    iosv::protocol::IOCTL_GET_IMAGE_DEBUG,
];

fn fuzz_host() -> &'static iosv_host::Host {
    use iosv::rules::RuleId;
    use iosv_host::{Behaviour, Host};
    static HOST: OnceLock<std::sync::Arc<Host>> = OnceLock::new();
    HOST.get_or_init(|| {
        let params = iosv::config::StartParams {
            capacity: 64,
            journal_records: 32,
            max_stack_depth: 4,
            graveyard: 16,
            untracked: 16,
            conflict_buckets: 16,
        };
        let host = std::sync::Arc::new(Host::with_processors(params, 2).expect("host"));
        for name in ["a.sys", "b.sys"] {
            host.declare_driver(name, Behaviour::WellBehaved, 0);
            crate::control::add_target(&host, name).expect("target");
            host.load_driver(name).expect("load");
        }
        let mut actor = host.actor(1);
        for rule in [
            RuleId::UnmapUnknown,
            RuleId::DoubleUnmap,
            RuleId::UnmapSizeMismatch,
        ] {
            let _ = host.commit_bug(rule, "a.sys", None, &mut actor);
        }
        host
    })
}

/// One control request: byte 0 chooses the code ([`CODES`], else a raw code from the
/// next 4 bytes), the next 2 bytes the output capacity (little-endian), the rest is the
/// input buffer. Checks that the reply's size is within the buffer on success and that a
/// buffer-too-small reply names a larger size.
pub fn control(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (code, rest) = match CODES.get(usize::from(which)) {
        Some(c) => (*c, rest),
        None if rest.len() >= 4 => (
            u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]),
            &rest[4..],
        ),
        None => return,
    };
    let (cap, input) = match rest {
        [a, b, input @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), input),
        _ => (0, rest),
    };
    let host = fuzz_host();
    let mut out = vec![0u8; cap];
    let r = host.control(code, input, &mut out);
    match r.status {
        iosv::protocol::Status::Success => assert!(r.information <= cap, "{r:?} for {cap}"),
        iosv::protocol::Status::OutputTooSmall => {
            assert!(r.information > cap, "{r:?} for {cap}");
        }
        _ => {}
    }
}

// ---- frame: the host endpoint's frame codec (iosv::frame, both sides) ---------------

/// Arbitrary bytes as a request header, a reply frame (read with the largest capacity and
/// with a small one) and a request frame. Whatever decodes is within the limits and
/// encodes back to the same bytes.
pub fn frame(data: &[u8]) {
    use iosv::frame as f;
    if let Some(head) = data.first_chunk::<{ f::REQUEST_HEADER_LEN }>() {
        if let Ok(h) = f::decode_request_header(head) {
            assert!(h.input_len <= f::MAX_INPUT && h.output_capacity <= f::MAX_OUTPUT);
            assert_eq!(&f::encode_request_header(&h), head);
        }
    }
    if let Some(head) = data.first_chunk::<{ f::REPLY_HEADER_LEN }>() {
        if let Ok(h) = f::decode_reply_header(head) {
            assert!(h.output_len <= f::MAX_OUTPUT);
            assert_eq!(&f::encode_reply_header(&h), head);
        }
    }
    if let Ok((h, out)) = f::read_reply(&mut std::io::Cursor::new(data), f::MAX_OUTPUT as usize) {
        assert_eq!(out.len(), h.output_len as usize);
    }
    let cap = data.get(4).map_or(0, |b| usize::from(*b) * 64);
    if let Ok((_, out)) = f::read_reply(&mut std::io::Cursor::new(data), cap) {
        assert!(
            out.len() <= cap,
            "{} bytes for a {cap}-byte buffer",
            out.len()
        );
    }
    if let Ok((h, input)) = f::read_request(&mut std::io::Cursor::new(data)) {
        assert_eq!(input.len(), h.input_len as usize);
    }
}

// ---- scenario: the TOML scenario parser ---------------------------------------------

/// Arbitrary text as a scenario: parsed, or refused with a place inside the text.
pub fn scenario(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = iosv_host::scenario::Scenario::parse(text, "fuzz.toml") {
        let lines = text.split('\n').count();
        assert!(e.line as usize <= lines.max(1), "{e} in {lines} lines");
        assert!(!e.message.is_empty());
    }
}

// ---- pe: the PE parser and the interception plan ------------------------------------

const HOOKS: Hooks = Hooks {
    map_io_space: 0xFFFF_F807_1000_0010,
    map_io_space_ex: 0xFFFF_F807_1000_0020,
    unmap_io_space: 0xFFFF_F807_1000_0030,
    get_system_routine_address: 0xFFFF_F807_1000_0040,
};

const BASE: usize = 0xFFFF_F806_4000_0000;

const fn fixture_ordinal(ordinal: u16) -> Option<&'static [u8]> {
    match ordinal {
        1234 => Some(b"MmMapIoSpace"),
        1240 => Some(b"MmUnmapIoSpace"),
        _ => None,
    }
}

/// Image memory at `BASE` that refuses (by panicking) any access outside it.
struct Memory {
    bytes: RefCell<Vec<u8>>,
}

impl Memory {
    fn offset(&self, address: usize) -> usize {
        let at = address.checked_sub(BASE).expect("slot below the image");
        assert!(
            at + SLOT_SIZE <= self.bytes.borrow().len(),
            "slot past the image"
        );
        assert_eq!(at % SLOT_SIZE, 0, "misaligned slot");
        at
    }
}

impl SlotAccess for Memory {
    unsafe fn read_slot(&self, address: usize) -> usize {
        let at = self.offset(address);
        let bytes = self.bytes.borrow();
        usize::from_le_bytes(bytes[at..at + SLOT_SIZE].try_into().unwrap())
    }

    unsafe fn compare_exchange_slot(
        &self,
        address: usize,
        current: usize,
        new: usize,
    ) -> Result<(), SlotWriteError> {
        // SAFETY: reads the test buffer only.
        let found = unsafe { self.read_slot(address) };
        if found != current {
            return Err(SlotWriteError::Changed { found });
        }
        let at = self.offset(address);
        self.bytes.borrow_mut()[at..at + SLOT_SIZE].copy_from_slice(&new.to_le_bytes());
        Ok(())
    }
}

/// Drives every entry point of `iosv::pe` and `iosv::intercept` over `image` and checks
/// the invariants (results inside the image and within the caps, iterators that stop
/// after their first error, a plan that patches and restores only slots in the image).
pub fn pe(image: &[u8]) {
    let Ok(pe) = PeImage::parse(image) else {
        return;
    };
    let len = pe.bytes().len();
    assert!(len <= image.len());
    assert_eq!(pe.size_of_image() as usize, len);
    for section in pe.sections() {
        let end = u64::from(section.virtual_address) + u64::from(section.size);
        assert!(end <= len as u64);
    }
    for directory in [
        Directory::Export,
        Directory::Import,
        Directory::BaseRelocation,
        Directory::Debug,
        Directory::ImportAddressTable,
        Directory::DelayImport,
    ] {
        let _ = pe.data_directory(directory);
    }

    if let Ok(Some(cv)) = pe.codeview() {
        assert!(cv.pdb_path.len() <= MAX_NAME_LEN);
        assert!(cv.pdb_file_name().len() <= cv.pdb_path.len());
    }

    let mut dlls = pe.imported_dlls();
    let mut count = 0;
    for dll in &mut dlls {
        match dll {
            Ok(dll) => {
                assert!(dll.dll_name.len() <= MAX_NAME_LEN);
                assert!(dll.descriptor < len);
                count += 1;
            }
            Err(_) => break,
        }
    }
    assert!(count <= 2 * iosv::pe::MAX_IMPORT_DESCRIPTORS);
    assert!(dlls.next().is_none(), "imported_dlls goes on after its end");

    let resolver: &dyn OrdinalResolver = &fixture_ordinal;
    let mut slots = pe.hooked_slots(Some(resolver));
    let mut found = 0usize;
    for slot in &mut slots {
        match slot {
            Ok(slot) => {
                assert!(slot.rva as usize + 8 <= len);
                assert!(pe.section_of_rva(slot.rva).is_some());
                assert!(slot.dll_name.eq_ignore_ascii_case(b"ntoskrnl.exe"));
                if let Some(ordinal) = slot.ordinal {
                    assert_eq!(
                        fixture_ordinal(ordinal),
                        Some(slot.routine.name().as_bytes())
                    );
                }
                found += 1;
            }
            Err(_) => break,
        }
    }
    assert!(
        slots.next().is_none(),
        "hooked_slots goes on after an error"
    );
    assert!(slots.ntoskrnl_thunks() <= MAX_THUNKS);
    assert!(found <= slots.ntoskrnl_thunks());
    assert!(slots.unresolved_ordinals() <= slots.ntoskrnl_thunks());

    let mut out = [IatSlot::EMPTY; 8];
    if let Ok(summary) = pe.find_hooked_slots(Some(resolver), &mut out) {
        assert!(summary.slots <= out.len());
        assert_eq!(summary.slots, found);
    }

    if let Ok(Some(exports)) = pe.exports() {
        assert!(exports.function_count() as usize <= MAX_EXPORTS);
        assert!(exports.name_count() as usize <= MAX_EXPORTS);
        let _ = exports.dll_name();
        let mut names = exports.names();
        for entry in names.by_ref().take(64) {
            if entry.is_err() {
                assert!(names.next().is_none());
                break;
            }
        }
        let base = exports.ordinal_base();
        for ordinal in [
            0,
            1,
            base,
            base.wrapping_add(1),
            base.wrapping_add(1000),
            0xFFFF,
        ] {
            let ordinal = (ordinal & 0xFFFF) as u16;
            let _ = exports.name_of_ordinal(ordinal);
            let _ = exports.target(ordinal);
        }
        let _ = exports.ordinal_of_name(b"MmMapIoSpace");
        if let Ok(ordinals) = RoutineOrdinals::from_exports(&exports) {
            for routine in HookedRoutine::ALL {
                if let Some(ordinal) = ordinals.ordinal(routine) {
                    assert!(ordinals.routine_of(ordinal).is_some(), "{routine:?}");
                }
            }
        }
    }

    if let Ok((mut plan, _)) = Plan::for_image(BASE, &pe, Some(resolver), &HOOKS) {
        let memory = Memory {
            bytes: RefCell::new(pe.bytes().to_vec()),
        };
        // SAFETY: `Memory`'s accessors are safe code over `memory.bytes` (the image's bytes
        // at `BASE`): `Memory::offset` asserts every address lies inside them and is
        // aligned, so nothing else is read or written; `memory` outlives the call, and no
        // hook is called through it.
        let attached = unsafe { plan.attach(&memory) };
        assert_eq!(attached.outcomes().len(), plan.patches().len());
        // SAFETY: the same `memory`, still alive; its accessors touch only `memory.bytes`
        // at offsets `Memory::offset` checks, and detach writes back only values attach
        // read there.
        let detached = unsafe { plan.detach(&memory) };
        assert_eq!(detached.outcomes().len(), plan.patches().len());
        if attached.is_clean() && detached.is_clean() {
            assert_eq!(*memory.bytes.borrow(), pe.bytes(), "detach did not restore");
        }
    }
}
