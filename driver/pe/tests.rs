//! Unit tests of the parser on synthetic images built byte by byte. No `unsafe`: they
//! run under miri too.

#![allow(
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_lossless,
    clippy::too_many_lines
)]

use std::vec;
use std::vec::Vec;

use super::*;

const SIZE_OF_IMAGE: usize = 0x3000;
const NT: usize = 0x80;
const OPTIONAL: usize = NT + 24;
const DIRECTORIES: usize = OPTIONAL + 112;
const SECTIONS: usize = OPTIONAL + 240;
const RDATA: usize = 0x2000;

/// One import of a synthetic descriptor.
#[derive(Clone, Copy)]
enum Imp {
    Name(&'static str),
    Ordinal(u16),
}

/// Where the builder put one descriptor's tables.
#[derive(Debug, Clone, Copy)]
struct Placed {
    descriptor: usize,
    lookup: usize,
    iat: usize,
}

/// A loaded PE32+ image: headers, `.text` at 0x1000, `.rdata` at 0x2000.
struct Builder {
    buf: Vec<u8>,
    /// Next free byte in `.rdata`.
    cursor: usize,
}

impl Builder {
    fn new() -> Self {
        Self::with_size(SIZE_OF_IMAGE)
    }

    fn with_size(size: usize) -> Self {
        let mut b = Self {
            buf: vec![0; size],
            cursor: RDATA + 0x100,
        };
        b.u16(0, 0x5A4D);
        b.u32(0x3C, NT as u32);
        b.u32(NT, 0x4550);
        b.u16(NT + 4, MACHINE_AMD64);
        b.u16(NT + 6, 2);
        b.u16(NT + 20, 240);
        b.u16(OPTIONAL, 0x20B);
        b.u64(OPTIONAL + 24, 0x1_4000_0000);
        b.u32(OPTIONAL + 56, size as u32);
        b.u32(OPTIONAL + 60, 0x400);
        b.u32(OPTIONAL + 108, 16);
        b.section(0, b".text", 0x1000, 0x1000, 0x6000_0020);
        b.section(1, b".rdata", 0x2000, (size - 0x2000) as u32, 0x4000_0040);
        b
    }

    fn u16(&mut self, at: usize, v: u16) {
        self.buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn section(&mut self, index: usize, name: &[u8], va: u32, size: u32, flags: u32) {
        let at = SECTIONS + 40 * index;
        self.buf[at..at + name.len()].copy_from_slice(name);
        self.u32(at + 8, size);
        self.u32(at + 12, va);
        self.u32(at + 16, size);
        self.u32(at + 36, flags);
    }

    fn dir(&mut self, index: u32, rva: usize, size: usize) {
        let at = DIRECTORIES + 8 * index as usize;
        self.u32(at, rva as u32);
        self.u32(at + 4, size as u32);
    }

    fn alloc(&mut self, len: usize, align: usize) -> usize {
        let at = self.cursor.next_multiple_of(align);
        self.cursor = at + len;
        assert!(self.cursor <= self.buf.len(), "synthetic image too small");
        at
    }

    fn string(&mut self, s: &str) -> usize {
        let at = self.alloc(s.len() + 1, 2);
        self.buf[at..at + s.len()].copy_from_slice(s.as_bytes());
        at
    }

    /// A thunk table for `imports`, terminated.
    fn thunks(&mut self, imports: &[Imp]) -> usize {
        let values: Vec<u64> = imports
            .iter()
            .map(|imp| match *imp {
                Imp::Name(name) => {
                    let hint = self.alloc(2 + name.len() + 1, 2);
                    self.buf[hint + 2..hint + 2 + name.len()].copy_from_slice(name.as_bytes());
                    hint as u64
                }
                Imp::Ordinal(ordinal) => (1 << 63) | u64::from(ordinal),
            })
            .collect();
        let at = self.alloc(8 * (values.len() + 1), 8);
        for (i, v) in values.iter().enumerate() {
            self.u64(at + 8 * i, *v);
        }
        at
    }

    /// A regular import directory at the start of `.rdata`.
    fn imports(&mut self, dlls: &[(&str, &[Imp])]) -> Vec<Placed> {
        let table = RDATA;
        self.dir(1, table, 20 * (dlls.len() + 1));
        let mut placed = Vec::new();
        for (i, (dll, imports)) in dlls.iter().enumerate() {
            let name = self.string(dll);
            let lookup = self.thunks(imports);
            let iat = self.thunks(imports);
            let d = table + 20 * i;
            self.u32(d, lookup as u32);
            self.u32(d + 12, name as u32);
            self.u32(d + 16, iat as u32);
            placed.push(Placed {
                descriptor: d,
                lookup,
                iat,
            });
        }
        placed
    }

    /// A delay-load import directory at `.rdata + 0x80`.
    fn delay_imports(&mut self, dlls: &[(&str, &[Imp])]) -> Vec<Placed> {
        let table = RDATA + 0x80;
        assert!(32 * (dlls.len() + 1) <= 0x80);
        self.dir(13, table, 32 * (dlls.len() + 1));
        let mut placed = Vec::new();
        for (i, (dll, imports)) in dlls.iter().enumerate() {
            let name = self.string(dll);
            let handle = self.alloc(8, 8);
            let lookup = self.thunks(imports);
            let iat = self.thunks(imports);
            let d = table + 32 * i;
            self.u32(d, 1);
            self.u32(d + 4, name as u32);
            self.u32(d + 8, handle as u32);
            self.u32(d + 12, iat as u32);
            self.u32(d + 16, lookup as u32);
            placed.push(Placed {
                descriptor: d,
                lookup,
                iat,
            });
        }
        placed
    }
}

fn scan<'a>(
    image: &'a [u8],
    resolver: Option<&dyn OrdinalResolver>,
) -> Result<Vec<IatSlot<'a>>, PeError> {
    PeImage::parse(image)?.hooked_slots(resolver).collect()
}

fn hooked(image: &[u8]) -> Vec<(u32, HookedRoutine, bool, Option<u16>)> {
    let pe = PeImage::parse(image).unwrap();
    pe.hooked_slots(None)
        .map(|s| {
            let s = s.unwrap();
            (s.rva, s.routine, s.delay_load, s.ordinal)
        })
        .collect()
}

const ALL_FOUR: &[Imp] = &[
    Imp::Name("MmMapIoSpace"),
    Imp::Name("ExAllocatePool2"),
    Imp::Name("MmMapIoSpaceEx"),
    Imp::Name("MmUnmapIoSpace"),
    Imp::Name("MmGetSystemRoutineAddress"),
];

#[test]
fn parses_headers_and_sections() {
    let b = Builder::new();
    let pe = PeImage::parse(&b.buf).unwrap();
    assert_eq!(pe.machine(), MACHINE_AMD64);
    assert_eq!(pe.image_base(), 0x1_4000_0000);
    assert_eq!(pe.size_of_image(), SIZE_OF_IMAGE as u32);
    assert_eq!(pe.size_of_headers(), 0x400);
    assert_eq!(pe.section_count(), 2);
    let sections: Vec<Section> = pe.sections().collect();
    assert_eq!(&sections[0].name, b".text\0\0\0");
    assert_eq!(sections[1].virtual_address, 0x2000);
    assert!(sections[0].contains(0x1fff));
    assert!(!sections[0].contains(0x2000));
    assert_eq!(pe.section_of_rva(0x2010).unwrap().name, *b".rdata\0\0");
    assert_eq!(pe.section_of_rva(0x10), None);
    assert_eq!(pe.section(2), None);
    assert_eq!(
        pe.data_directory(Directory::Import),
        Some(DataDirectory { rva: 0, size: 0 })
    );
    assert_eq!(pe.imported_dlls().count(), 0);
    assert!(pe.exports().unwrap().is_none());
}

#[test]
fn section_file_ranges_and_the_loader_directories() {
    let mut b = Builder::new();
    // PointerToRawData of section 1 (SizeOfRawData is written by `section`).
    b.u32(SECTIONS + 40 + 20, 0x600);
    b.dir(3, 0x2100, 0x18);
    b.dir(10, 0x2200, 0x140);
    let pe = PeImage::parse(&b.buf).unwrap();
    let (raw, raw_size) = pe.section_file_range(1).unwrap();
    assert_eq!(raw, 0x600);
    assert_eq!(raw_size, pe.section(1).unwrap().size);
    assert_eq!(pe.section_file_range(2), None);
    assert_eq!(
        pe.data_directory(Directory::Exception),
        Some(DataDirectory {
            rva: 0x2100,
            size: 0x18
        })
    );
    assert_eq!(
        pe.data_directory(Directory::LoadConfig),
        Some(DataDirectory {
            rva: 0x2200,
            size: 0x140
        })
    );
    assert_eq!(Directory::LoadConfig.index(), 10);
    assert_eq!(Directory::Exception.name(), "exception");
}

#[test]
fn bytes_past_size_of_image_are_ignored() {
    let mut b = Builder::new();
    b.buf.extend_from_slice(&[0xAA; 0x100]);
    let pe = PeImage::parse(&b.buf).unwrap();
    assert_eq!(pe.bytes().len(), SIZE_OF_IMAGE);
}

#[test]
fn finds_by_name_slots_of_ntoskrnl_only() {
    let mut b = Builder::new();
    let placed = b.imports(&[
        ("HAL.dll", &[Imp::Name("MmMapIoSpace")]),
        ("ntoskrnl.exe", ALL_FOUR),
    ]);
    let iat = placed[1].iat as u32;
    assert_eq!(
        hooked(&b.buf),
        [
            (iat, HookedRoutine::MapIoSpace, false, None),
            (iat + 16, HookedRoutine::MapIoSpaceEx, false, None),
            (iat + 24, HookedRoutine::UnmapIoSpace, false, None),
            (
                iat + 32,
                HookedRoutine::GetSystemRoutineAddress,
                false,
                None
            ),
        ]
    );
    let pe = PeImage::parse(&b.buf).unwrap();
    let dlls: Vec<_> = pe.imported_dlls().map(Result::unwrap).collect();
    assert_eq!(dlls.len(), 2);
    assert_eq!(dlls[0].dll_name, b"HAL.dll");
    assert!(!dlls[0].is_ntoskrnl());
    assert_eq!(dlls[1].dll_name, b"ntoskrnl.exe");
    assert_eq!(dlls[1].lookup_table_rva, placed[1].lookup as u32);
    assert_eq!(dlls[1].descriptor, placed[1].descriptor);

    let mut out = [IatSlot::EMPTY; 8];
    let summary = pe.find_hooked_slots(None, &mut out).unwrap();
    assert_eq!(
        summary,
        ScanSummary {
            slots: 4,
            ntoskrnl_thunks: 6,
            unresolved_ordinals: 0
        }
    );
    assert_eq!(out[0].dll_name, b"ntoskrnl.exe");
    assert_eq!(out[4], IatSlot::EMPTY);
}

#[test]
fn dll_name_compare_ignores_case_but_not_suffix() {
    let mut b = Builder::new();
    b.imports(&[
        ("NTOSKRNL.EXE", &[Imp::Name("MmMapIoSpace")]),
        ("ntoskrnl.exe.dll", &[Imp::Name("MmUnmapIoSpace")]),
        ("ntoskrnl", &[Imp::Name("MmUnmapIoSpace")]),
    ]);
    let found = hooked(&b.buf);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, HookedRoutine::MapIoSpace);
}

#[test]
fn routine_names_are_case_sensitive_and_exact() {
    let mut b = Builder::new();
    b.imports(&[(
        "ntoskrnl.exe",
        &[
            Imp::Name("mmmapiospace"),
            Imp::Name("MmMapIoSpaceExx"),
            Imp::Name("MmMapIoSpac"),
        ],
    )]);
    assert!(hooked(&b.buf).is_empty());
}

#[test]
fn ordinals_need_a_resolver() {
    let mut b = Builder::new();
    let placed = b.imports(&[(
        "ntoskrnl.exe",
        &[Imp::Ordinal(7), Imp::Ordinal(9), Imp::Ordinal(11)],
    )]);
    let pe = PeImage::parse(&b.buf).unwrap();
    let mut out = [IatSlot::EMPTY; 4];
    let summary = pe.find_hooked_slots(None, &mut out).unwrap();
    assert_eq!(summary.slots, 0);
    assert_eq!(summary.unresolved_ordinals, 3);

    let resolve = |ordinal: u16| match ordinal {
        7 => Some(&b"MmUnmapIoSpace"[..]),
        9 => Some(&b"KeBugCheckEx"[..]),
        _ => None,
    };
    let summary = pe.find_hooked_slots(Some(&resolve), &mut out).unwrap();
    assert_eq!(summary.slots, 1);
    assert_eq!(summary.unresolved_ordinals, 1);
    assert_eq!(out[0].rva, placed[0].iat as u32);
    assert_eq!(out[0].routine, HookedRoutine::UnmapIoSpace);
    assert_eq!(out[0].ordinal, Some(7));
}

#[test]
fn delay_load_slots_follow_regular_ones() {
    let mut b = Builder::new();
    let regular = b.imports(&[("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")])]);
    let delayed = b.delay_imports(&[
        ("hal.dll", &[Imp::Name("MmUnmapIoSpace")]),
        (
            "ntoskrnl.exe",
            &[
                Imp::Name("KeDelayExecutionThread"),
                Imp::Name("MmUnmapIoSpace"),
            ],
        ),
    ]);
    assert_eq!(
        hooked(&b.buf),
        [
            (
                regular[0].iat as u32,
                HookedRoutine::MapIoSpace,
                false,
                None
            ),
            (
                delayed[1].iat as u32 + 8,
                HookedRoutine::UnmapIoSpace,
                true,
                None
            ),
        ]
    );
    let pe = PeImage::parse(&b.buf).unwrap();
    let delay: Vec<bool> = pe.imported_dlls().map(|d| d.unwrap().delay_load).collect();
    assert_eq!(delay, [false, true, true]);
}

#[test]
fn va_based_delay_descriptor_is_refused() {
    let mut b = Builder::new();
    let delayed = b.delay_imports(&[("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")])]);
    b.u32(delayed[0].descriptor, 0);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::DelayImportNotRvaBased {
            descriptor: delayed[0].descriptor,
            attributes: 0
        })
    );
}

#[test]
fn missing_lookup_table_is_refused_for_ntoskrnl_only() {
    let mut b = Builder::new();
    let placed = b.imports(&[
        ("hal.dll", &[Imp::Name("KeStallExecutionProcessor")]),
        ("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")]),
    ]);
    b.u32(placed[0].descriptor, 0);
    assert_eq!(hooked(&b.buf).len(), 1);
    b.u32(placed[1].descriptor, 0);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::MissingLookupTable {
            descriptor: placed[1].descriptor
        })
    );
}

#[test]
fn imported_names_lists_every_import_of_a_descriptor() {
    let mut b = Builder::new();
    let placed = b.imports(&[
        ("HAL.dll", &[Imp::Name("KeStallExecutionProcessor")]),
        (
            "ntoskrnl.exe",
            &[
                Imp::Name("DbgPrintEx"),
                Imp::Ordinal(7),
                Imp::Name("MmMapIoSpace"),
            ],
        ),
    ]);
    // Bound IAT: names still come from the lookup table.
    b.u64(placed[1].iat, 0xFFFF_F800_1234_5678);
    let pe = PeImage::parse(&b.buf).unwrap();
    let dlls: Vec<_> = pe.imported_dlls().map(Result::unwrap).collect();
    let hal: Vec<_> = pe.imported_names(dlls[0]).map(Result::unwrap).collect();
    assert_eq!(hal, [ImportedName::Name(b"KeStallExecutionProcessor")]);
    let nt: Vec<_> = pe.imported_names(dlls[1]).map(Result::unwrap).collect();
    assert_eq!(
        nt,
        [
            ImportedName::Name(b"DbgPrintEx"),
            ImportedName::Ordinal(7),
            ImportedName::Name(b"MmMapIoSpace"),
        ]
    );

    // No lookup table: refused, once.
    b.u32(placed[0].descriptor, 0);
    let pe = PeImage::parse(&b.buf).unwrap();
    let hal = pe.imported_dlls().next().unwrap().unwrap();
    let mut names = pe.imported_names(hal);
    assert_eq!(
        names.next(),
        Some(Err(PeError::MissingLookupTable {
            descriptor: placed[0].descriptor
        }))
    );
    assert_eq!(names.next(), None);

    // A name RVA outside the image, and an unterminated table: one error, then the end.
    let mut b = Builder::new();
    let placed = b.imports(&[("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")])]);
    b.u64(placed[0].lookup, 0x7FFF_0000);
    let pe = PeImage::parse(&b.buf).unwrap();
    let dll = pe.imported_dlls().next().unwrap().unwrap();
    let mut names = pe.imported_names(dll);
    assert!(matches!(
        names.next(),
        Some(Err(PeError::RvaOutOfImage { .. }))
    ));
    assert_eq!(names.next(), None);
    b.u32(placed[0].descriptor, (SIZE_OF_IMAGE - 8) as u32);
    b.u64(SIZE_OF_IMAGE - 8, 0x2000 | 1 << 63);
    let pe = PeImage::parse(&b.buf).unwrap();
    let dll = pe.imported_dlls().next().unwrap().unwrap();
    let names: Vec<_> = pe.imported_names(dll).collect();
    assert_eq!(names.len(), 2);
    assert!(matches!(
        names[1],
        Err(PeError::UnterminatedThunkTable { .. })
    ));
}

#[test]
fn entry_point_and_subsystem_as_recorded() {
    let b = Builder::new();
    let pe = PeImage::parse(&b.buf).unwrap();
    let opt = OPTIONAL;
    let entry = u32::from_le_bytes(b.buf[opt + 16..opt + 20].try_into().unwrap());
    let subsystem = u16::from_le_bytes(b.buf[opt + 68..opt + 70].try_into().unwrap());
    assert_eq!(pe.entry_point(), entry);
    assert_eq!(pe.subsystem(), subsystem);
}

#[test]
fn names_come_from_the_lookup_table_not_the_bound_iat() {
    let mut b = Builder::new();
    let placed = b.imports(&[(
        "ntoskrnl.exe",
        &[Imp::Name("MmMapIoSpace"), Imp::Name("MmUnmapIoSpace")],
    )]);
    // Bind: the loader overwrites the IAT with absolute addresses.
    b.u64(placed[0].iat, 0xFFFF_F800_1234_5678);
    b.u64(placed[0].iat + 8, 0xFFFF_F800_1234_9999);
    assert_eq!(hooked(&b.buf).len(), 2);
}

#[test]
fn header_errors() {
    let good = Builder::new().buf;

    assert_eq!(
        PeImage::parse(&good[..10]).unwrap_err(),
        PeError::Truncated {
            what: Structure::DosHeader,
            offset: 0,
            len: 10
        }
    );

    let mut b = Builder::new();
    b.u16(0, 0x4D5A);
    assert_eq!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::BadDosMagic { found: 0x4D5A }
    );

    for lfanew in [0xFFFF_FFF0u32, u32::MAX, SIZE_OF_IMAGE as u32 - 4] {
        let mut b = Builder::new();
        b.u32(0x3C, lfanew);
        assert_eq!(
            PeImage::parse(&b.buf).unwrap_err(),
            PeError::Truncated {
                what: Structure::NtHeaders,
                offset: lfanew as usize,
                len: SIZE_OF_IMAGE
            }
        );
    }

    let mut b = Builder::new();
    b.u32(0x3C, 0x40);
    assert_eq!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::BadNtSignature {
            offset: 0x40,
            found: 0
        }
    );

    let mut b = Builder::new();
    b.u16(OPTIONAL, 0x10B);
    assert_eq!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::Pe32NotSupported
    );

    let mut b = Builder::new();
    b.u16(OPTIONAL, 0x107);
    assert_eq!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::BadOptionalHeaderMagic { found: 0x107 }
    );

    let mut b = Builder::new();
    b.u16(NT + 20, 200);
    assert_eq!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::OptionalHeaderTooSmall {
            size: 200,
            needed: 240
        }
    );
    // Fewer directories declared: a smaller optional header is fine.
    b.u32(OPTIONAL + 108, 2);
    let pe = PeImage::parse(&b.buf).unwrap();
    assert_eq!(pe.data_directory(Directory::DelayImport), None);
    assert!(pe.data_directory(Directory::Import).is_some());
    // More than 16 are ignored.
    b.u16(NT + 20, 240);
    b.u32(OPTIONAL + 108, 0xFFFF_FFFF);
    assert!(PeImage::parse(&b.buf).is_ok());

    assert_eq!(
        PeImage::parse(&good[..SIZE_OF_IMAGE - 1]).unwrap_err(),
        PeError::BufferShorterThanImage {
            size_of_image: SIZE_OF_IMAGE as u32,
            buffer_len: SIZE_OF_IMAGE - 1
        }
    );

    // SizeOfImage smaller than the headers.
    let mut b = Builder::new();
    b.u32(OPTIONAL + 56, 0x100);
    assert!(matches!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::Truncated {
            what: Structure::DataDirectories,
            ..
        }
    ));

    // A section table that runs off the image.
    let mut b = Builder::new();
    b.u16(NT + 6, 0xFFFF);
    assert!(matches!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::Truncated {
            what: Structure::SectionTable,
            ..
        }
    ));
}

#[test]
fn section_beyond_image() {
    let mut b = Builder::new();
    b.section(1, b".rdata", 0x2000, 0x1001, 0);
    assert_eq!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::SectionOutOfImage {
            index: 1,
            virtual_address: 0x2000,
            size: 0x1001
        }
    );
    let mut b = Builder::new();
    b.section(0, b".text", 0xFFFF_F000, 0x2000, 0);
    assert_eq!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::SectionOutOfImage {
            index: 0,
            virtual_address: 0xFFFF_F000,
            size: 0x2000
        }
    );
    // VirtualSize 0: SizeOfRawData counts.
    let mut b = Builder::new();
    b.section(0, b".text", 0x1000, 0, 0);
    b.u32(SECTIONS + 16, 0x5000);
    assert!(matches!(
        PeImage::parse(&b.buf).unwrap_err(),
        PeError::SectionOutOfImage {
            index: 0,
            size: 0x5000,
            ..
        }
    ));
}

#[test]
fn import_errors() {
    let fresh = || {
        let mut b = Builder::new();
        let p = b.imports(&[(
            "ntoskrnl.exe",
            &[Imp::Name("MmMapIoSpace"), Imp::Name("MmUnmapIoSpace")],
        )]);
        (b, p[0])
    };

    let (mut b, _) = fresh();
    b.dir(1, SIZE_OF_IMAGE, 40);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::DirectoryOutOfImage {
            directory: Directory::Import,
            rva: SIZE_OF_IMAGE as u32,
            size: 40
        })
    );
    b.dir(1, RDATA, 0xFFFF_FFFF);
    assert!(matches!(
        scan(&b.buf, None),
        Err(PeError::DirectoryOutOfImage { .. })
    ));

    // Descriptor straddles the end of the image.
    let (mut b, _) = fresh();
    b.dir(1, SIZE_OF_IMAGE - 8, 8);
    b.u32(SIZE_OF_IMAGE - 8 + 4, 1);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::Truncated {
            what: Structure::ImportDescriptor,
            offset: SIZE_OF_IMAGE - 8,
            len: SIZE_OF_IMAGE
        })
    );

    let (mut b, p) = fresh();
    b.u32(p.descriptor + 12, 0x7000_0000);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::RvaOutOfImage {
            what: Structure::DllName,
            rva: 0x7000_0000,
            at: p.descriptor + 12
        })
    );

    // A DLL name that runs to the end of the image.
    let (mut b, p) = fresh();
    let at = SIZE_OF_IMAGE - 16;
    b.buf[at..].fill(b'A');
    b.u32(p.descriptor + 12, at as u32);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::UnterminatedName {
            what: Structure::DllName,
            rva: at as u32
        })
    );
    // One longer than MAX_NAME_LEN.
    let (mut b, p) = fresh();
    let at = 0x1000;
    b.buf[at..=(at + MAX_NAME_LEN)].fill(b'A');
    b.u32(p.descriptor + 12, at as u32);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::UnterminatedName {
            what: Structure::DllName,
            rva: at as u32
        })
    );
    // Exactly MAX_NAME_LEN is fine.
    b.buf[at + MAX_NAME_LEN] = 0;
    assert_eq!(scan(&b.buf, None), Ok(vec![]));

    let (mut b, p) = fresh();
    b.u32(p.descriptor, 0x9000_0000);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::RvaOutOfImage {
            what: Structure::ImportLookupTable,
            rva: 0x9000_0000,
            at: p.descriptor
        })
    );

    let (mut b, p) = fresh();
    b.u32(p.descriptor + 16, SIZE_OF_IMAGE as u32 - 4);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::RvaOutOfImage {
            what: Structure::ImportAddressTable,
            rva: SIZE_OF_IMAGE as u32 - 4,
            at: p.descriptor + 16
        })
    );

    // IAT in the headers.
    let (mut b, p) = fresh();
    b.u32(p.descriptor + 16, 0x200);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::SlotOutsideSections { rva: 0x200 })
    );

    // Hint/name RVA out of the image, or right at its end.
    for rva in [
        0x7FFF_FFFFu64,
        SIZE_OF_IMAGE as u64 - 2,
        SIZE_OF_IMAGE as u64 - 1,
    ] {
        let (mut b, p) = fresh();
        b.u64(p.lookup, rva);
        assert_eq!(
            scan(&b.buf, None),
            Err(PeError::RvaOutOfImage {
                what: Structure::HintName,
                rva: rva as u32,
                at: p.lookup
            }),
            "{rva:#x}"
        );
    }

    let (mut b, p) = fresh();
    b.u64(p.lookup + 8, 0x0000_0001_0000_2000);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::BadThunk {
            at: p.lookup + 8,
            value: 0x0000_0001_0000_2000
        })
    );

    // A lookup table without a terminator that runs off the image.
    let (mut b, p) = fresh();
    b.u32(p.descriptor, SIZE_OF_IMAGE as u32 - 16);
    b.u64(SIZE_OF_IMAGE - 16, 1 << 63);
    b.u64(SIZE_OF_IMAGE - 8, 1 << 63);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::UnterminatedThunkTable {
            what: Structure::ImportLookupTable,
            rva: SIZE_OF_IMAGE as u32 - 16
        })
    );

    // An IAT that runs off the image before its lookup table ends.
    let (mut b, p) = fresh();
    b.u32(p.descriptor + 16, SIZE_OF_IMAGE as u32 - 8);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::UnterminatedThunkTable {
            what: Structure::ImportAddressTable,
            rva: SIZE_OF_IMAGE as u32 - 8
        })
    );
}

#[test]
#[cfg_attr(miri, ignore = "large image: slow under miri")]
fn thunk_walk_is_capped() {
    // A lookup table of MAX_THUNKS ordinals and no terminator.
    let size = 0x3000 + 8 * (MAX_THUNKS + 2);
    let mut b = Builder::with_size(size);
    let p = b.imports(&[("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")])]);
    let table = 0x3000;
    for i in 0..=MAX_THUNKS {
        b.u64(table + 8 * i, (1 << 63) | 5);
    }
    b.u32(p[0].descriptor, table as u32);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::TooManyThunks { limit: MAX_THUNKS })
    );
    // The same thunk array shared by two descriptors counts twice.
    let mut b = Builder::with_size(size);
    let p = b.imports(&[
        ("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")]),
        ("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")]),
    ]);
    for i in 0..=(MAX_THUNKS / 2) {
        b.u64(table + 8 * i, (1 << 63) | 5);
    }
    b.u32(p[0].descriptor, table as u32);
    b.u32(p[1].descriptor, table as u32);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::TooManyThunks { limit: MAX_THUNKS })
    );
}

#[test]
#[cfg_attr(miri, ignore = "large image: slow under miri")]
fn descriptor_walk_is_capped() {
    let size = 0x2000 + 20 * (MAX_IMPORT_DESCRIPTORS + 8) + 0x100;
    let mut b = Builder::with_size(size);
    b.imports(&[("hal.dll", &[Imp::Name("X")])]);
    // Copy the one descriptor over and over, without a terminator.
    let one: Vec<u8> = b.buf[RDATA..RDATA + 20].to_vec();
    let table = 0x2100;
    for i in 0..=MAX_IMPORT_DESCRIPTORS {
        b.buf[table + 20 * i..table + 20 * (i + 1)].copy_from_slice(&one);
    }
    b.dir(1, table, 20);
    assert_eq!(
        scan(&b.buf, None),
        Err(PeError::TooManyDescriptors {
            directory: Directory::Import,
            limit: MAX_IMPORT_DESCRIPTORS
        })
    );
}

#[test]
fn output_full() {
    let mut b = Builder::new();
    b.imports(&[("ntoskrnl.exe", ALL_FOUR)]);
    let pe = PeImage::parse(&b.buf).unwrap();
    let mut out = [IatSlot::EMPTY; 3];
    assert_eq!(
        pe.find_hooked_slots(None, &mut out),
        Err(PeError::OutputFull { capacity: 3 })
    );
    let mut out = [IatSlot::EMPTY; 4];
    assert_eq!(pe.find_hooked_slots(None, &mut out).unwrap().slots, 4);
}

#[test]
fn iterators_end_after_an_error() {
    let mut b = Builder::new();
    let p = b.imports(&[
        ("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")]),
        ("ntoskrnl.exe", &[Imp::Name("MmMapIoSpace")]),
    ]);
    b.u32(p[1].descriptor + 12, 0x7000_0000);
    let pe = PeImage::parse(&b.buf).unwrap();
    let mut slots = pe.hooked_slots(None);
    assert!(slots.next().unwrap().is_ok());
    assert!(slots.next().unwrap().is_err());
    assert!(slots.next().is_none());
    assert!(slots.next().is_none());
    let mut dlls = pe.imported_dlls();
    assert!(dlls.next().unwrap().is_ok());
    assert!(dlls.next().unwrap().is_err());
    assert!(dlls.next().is_none());
}

/// Every prefix of a valid image, and every single-byte change in its headers and
/// import tables, is parsed or refused without a panic.
#[test]
fn truncations_and_byte_flips_never_panic() {
    let mut b = Builder::new();
    b.imports(&[("hal.dll", &[Imp::Name("A")]), ("ntoskrnl.exe", ALL_FOUR)]);
    b.delay_imports(&[(
        "ntoskrnl.exe",
        &[Imp::Ordinal(3), Imp::Name("MmUnmapIoSpace")],
    )]);
    let resolve = |o: u16| (o == 3).then_some(&b"MmMapIoSpace"[..]);
    let image = b.buf.clone();
    let step = if cfg!(miri) { 97 } else { 1 };
    for len in (0..image.len()).step_by(step) {
        let _ = scan(&image[..len], Some(&resolve));
    }
    let end = if cfg!(miri) { 0x400 } else { b.cursor };
    for at in (0..end).step_by(if cfg!(miri) { 7 } else { 1 }) {
        if (0x400..RDATA).contains(&at) {
            continue;
        }
        for value in [0x00, 0xFF, 0x80, 0x01] {
            let mut mutated = image.clone();
            mutated[at] = value;
            if let Ok(slots) = scan(&mutated, Some(&resolve)) {
                assert!(slots.len() <= MAX_THUNKS);
            }
        }
    }
}

/// An export directory with three names, an ordinal-only export and a forwarder.
fn exporting_image() -> (Builder, usize) {
    let mut b = Builder::new();
    let dir = RDATA + 0x200;
    b.cursor = dir + 40;
    let funcs = b.alloc(4 * 5, 4);
    let names = b.alloc(4 * 3, 4);
    let ordinals = b.alloc(2 * 3, 2);
    let dll = b.string("ntoskrnl.exe");
    let n_map = b.string("MmMapIoSpace");
    let n_get = b.string("MmGetSystemRoutineAddress");
    let n_fwd = b.string("RtlForward");
    let fwd_target = b.string("HAL.KeStall");
    let dir_end = b.cursor;
    b.dir(0, dir, dir_end - dir);
    b.u32(dir + 12, dll as u32);
    b.u32(dir + 16, 10); // Base
    b.u32(dir + 20, 5);
    b.u32(dir + 24, 3);
    b.u32(dir + 28, funcs as u32);
    b.u32(dir + 32, names as u32);
    b.u32(dir + 36, ordinals as u32);
    // Ordinals 10..15: 10 = code, 11 = unused, 12 = ordinal-only, 13 = forwarder, 14 = code
    b.u32(funcs, 0x1010);
    b.u32(funcs + 8, 0x1020);
    b.u32(funcs + 12, fwd_target as u32);
    b.u32(funcs + 16, 0x1040);
    // Sorted names: MmGetSystemRoutineAddress (14), MmMapIoSpace (10), RtlForward (13).
    b.u32(names, n_get as u32);
    b.u32(names + 4, n_map as u32);
    b.u32(names + 8, n_fwd as u32);
    b.u16(ordinals, 4);
    b.u16(ordinals + 2, 0);
    b.u16(ordinals + 4, 3);
    (b, dir)
}

#[test]
fn exports_by_name_and_ordinal() {
    let (b, _) = exporting_image();
    let pe = PeImage::parse(&b.buf).unwrap();
    let exports = pe.exports().unwrap().unwrap();
    assert_eq!(exports.dll_name().unwrap(), b"ntoskrnl.exe");
    assert_eq!(exports.ordinal_base(), 10);
    assert_eq!(exports.function_count(), 5);
    assert_eq!(exports.name_count(), 3);
    let names: Vec<(&[u8], u32)> = exports
        .names()
        .map(|e| e.map(|e| (e.name, e.ordinal)).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            (&b"MmGetSystemRoutineAddress"[..], 14),
            (&b"MmMapIoSpace"[..], 10),
            (&b"RtlForward"[..], 13)
        ]
    );
    assert_eq!(exports.name_of_ordinal(10), Ok(Some(&b"MmMapIoSpace"[..])));
    assert_eq!(exports.name_of_ordinal(12), Ok(None));
    assert_eq!(exports.name_of_ordinal(9), Ok(None));
    assert_eq!(exports.name_of_ordinal(15), Ok(None));
    assert_eq!(exports.ordinal_of_name(b"RtlForward"), Ok(Some(13)));
    assert_eq!(exports.ordinal_of_name(b"Nope"), Ok(None));
    assert_eq!(exports.target(10), Ok(Some(ExportTarget::Rva(0x1010))));
    assert_eq!(exports.target(11), Ok(None));
    assert_eq!(exports.target(12), Ok(Some(ExportTarget::Rva(0x1020))));
    assert_eq!(
        exports.target(13),
        Ok(Some(ExportTarget::Forwarder(&b"HAL.KeStall"[..])))
    );
    assert_eq!(exports.target(16), Ok(None));

    let ordinals = RoutineOrdinals::from_exports(&exports).unwrap();
    assert_eq!(ordinals.ordinal(HookedRoutine::MapIoSpace), Some(10));
    assert_eq!(
        ordinals.ordinal(HookedRoutine::GetSystemRoutineAddress),
        Some(14)
    );
    assert_eq!(ordinals.ordinal(HookedRoutine::UnmapIoSpace), None);
    assert_eq!(
        ordinals.routine_of(14),
        Some(HookedRoutine::GetSystemRoutineAddress)
    );
    assert_eq!(ordinals.name_of(10), Some(&b"MmMapIoSpace"[..]));
    assert_eq!(ordinals.name_of(13), None);
    assert_eq!(exports.name_of(13), Some(&b"RtlForward"[..]));
}

#[test]
fn export_resolver_names_ordinal_imports() {
    // One image is both ntoskrnl (exports) and the target (imports by ordinal).
    let (mut b, _) = exporting_image();
    b.cursor = RDATA + 0x400;
    let placed = b.imports(&[(
        "ntoskrnl.exe",
        &[Imp::Ordinal(14), Imp::Ordinal(13), Imp::Ordinal(10)],
    )]);
    let image = b.buf;
    let pe = PeImage::parse(&image).unwrap();
    let exports = pe.exports().unwrap().unwrap();
    let ordinals = RoutineOrdinals::from_exports(&exports).unwrap();

    for resolver in [&exports as &dyn OrdinalResolver, &ordinals] {
        let mut out = [IatSlot::EMPTY; 4];
        let summary = pe.find_hooked_slots(Some(resolver), &mut out).unwrap();
        assert_eq!(summary.slots, 2);
        assert_eq!(out[0].rva, placed[0].iat as u32);
        assert_eq!(out[0].routine, HookedRoutine::GetSystemRoutineAddress);
        assert_eq!(out[0].ordinal, Some(14));
        assert_eq!(out[1].rva, placed[0].iat as u32 + 16);
        assert_eq!(out[1].routine, HookedRoutine::MapIoSpace);
    }
}

#[test]
fn export_errors() {
    let (mut b, dir) = exporting_image();
    b.u32(dir + 20, MAX_EXPORTS as u32 + 1);
    let pe = PeImage::parse(&b.buf).unwrap();
    assert_eq!(
        pe.exports().unwrap_err(),
        PeError::TooManyExports {
            count: MAX_EXPORTS as u32 + 1,
            limit: MAX_EXPORTS
        }
    );

    let (mut b, dir) = exporting_image();
    b.u32(dir + 32, SIZE_OF_IMAGE as u32 - 8);
    let pe = PeImage::parse(&b.buf).unwrap();
    assert_eq!(
        pe.exports().unwrap_err(),
        PeError::RvaOutOfImage {
            what: Structure::ExportNameTable,
            rva: SIZE_OF_IMAGE as u32 - 8,
            at: dir + 32
        }
    );

    let (mut b, _) = exporting_image();
    b.dir(0, SIZE_OF_IMAGE - 20, 40);
    let pe = PeImage::parse(&b.buf).unwrap();
    assert!(matches!(
        pe.exports().unwrap_err(),
        PeError::DirectoryOutOfImage {
            directory: Directory::Export,
            ..
        }
    ));

    let (mut b, dir) = exporting_image();
    let names = b.buf[dir + 32..dir + 36].to_vec();
    let names = u32::from_le_bytes(names.try_into().unwrap()) as usize;
    b.u32(names + 4, 0x7777_0000);
    let pe = PeImage::parse(&b.buf).unwrap();
    let exports = pe.exports().unwrap().unwrap();
    assert_eq!(
        exports.ordinal_of_name(b"RtlForward"),
        Err(PeError::RvaOutOfImage {
            what: Structure::ExportName,
            rva: 0x7777_0000,
            at: names + 4
        })
    );
    assert!(RoutineOrdinals::from_exports(&exports).is_err());
    let mut it = exports.names();
    assert!(it.next().unwrap().is_ok());
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none());
}

#[test]
fn hooked_routine_names() {
    for routine in HookedRoutine::ALL {
        assert_eq!(
            HookedRoutine::from_name(routine.name().as_bytes()),
            Some(routine)
        );
        assert_eq!(HookedRoutine::ALL[routine.index()], routine);
    }
    assert_eq!(HookedRoutine::from_name(b""), None);
}

#[test]
fn errors_display() {
    use std::string::ToString;
    let text = PeError::RvaOutOfImage {
        what: Structure::DllName,
        rva: 0x10,
        at: 0x20,
    }
    .to_string();
    assert_eq!(
        text,
        "DLL name RVA 0x10 (field at offset 0x20) is outside the image"
    );
    assert!(PeError::Pe32NotSupported.to_string().contains("PE32+"));
}

/// Writes a debug directory of `entries` (type, RVA of data, size of data) at `at` and
/// returns the builder.
fn with_debug(b: &mut Builder, at: usize, entries: &[(u32, u32, u32)]) {
    b.dir(6, at, 28 * entries.len());
    for (i, (ty, rva, size)) in entries.iter().enumerate() {
        let e = at + 28 * i;
        b.u32(e + 12, *ty);
        b.u32(e + 16, *size);
        b.u32(e + 20, *rva);
    }
}

fn rsds(b: &mut Builder, at: usize, guid: [u8; 16], age: u32, path: &str) -> u32 {
    b.u32(at, CODEVIEW_RSDS);
    b.buf[at + 4..at + 20].copy_from_slice(&guid);
    b.u32(at + 20, age);
    b.buf[at + 24..at + 24 + path.len()].copy_from_slice(path.as_bytes());
    b.buf[at + 24 + path.len()] = 0;
    (24 + path.len() + 1) as u32
}

#[test]
fn codeview_record_is_read() {
    let mut b = Builder::new();
    let guid: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    let size = rsds(&mut b, RDATA + 0x400, guid, 7, r"C:\build\obj\nic.pdb");
    // A non-CodeView entry first, then the CodeView one.
    with_debug(
        &mut b,
        RDATA + 0x300,
        &[
            (16, 0, 0),
            (DEBUG_TYPE_CODEVIEW, (RDATA + 0x400) as u32, size),
        ],
    );
    let pe = PeImage::parse(&b.buf).unwrap();
    let cv = pe.codeview().unwrap().unwrap();
    assert_eq!(cv.guid, guid);
    assert_eq!(cv.age, 7);
    assert_eq!(cv.pdb_path, br"C:\build\obj\nic.pdb");
    assert_eq!(cv.pdb_file_name(), b"nic.pdb");
    let unix = CodeView {
        pdb_path: b"/tmp/x/y.pdb",
        ..cv
    };
    assert_eq!(unix.pdb_file_name(), b"y.pdb");
    let bare = CodeView {
        pdb_path: b"z.pdb",
        ..cv
    };
    assert_eq!(bare.pdb_file_name(), b"z.pdb");
    // A reader that may not touch the record's pages finds none; nor one that may not
    // touch the directory.
    let record = (RDATA + 0x400) as u32;
    assert_eq!(pe.codeview_where(|rva, _| rva != record), Ok(None));
    assert_eq!(
        pe.codeview_where(|rva, _| rva != (RDATA + 0x300) as u32),
        Ok(None)
    );
    assert_eq!(pe.codeview_where(|_, _| true), Ok(Some(cv)));
}

#[test]
fn codeview_absent_or_unusable_is_none() {
    // No debug directory.
    let b = Builder::new();
    assert_eq!(PeImage::parse(&b.buf).unwrap().codeview(), Ok(None));
    // Entries that are not CodeView, or whose data is not mapped, or not RSDS (NB10).
    let mut b = Builder::new();
    b.u32(RDATA + 0x400, 0x3031_424E); // "NB10"
    with_debug(
        &mut b,
        RDATA + 0x300,
        &[
            (4, 0x2400, 64),
            (DEBUG_TYPE_CODEVIEW, 0, 64),
            (DEBUG_TYPE_CODEVIEW, 0x2400, 8),
            (DEBUG_TYPE_CODEVIEW, 0x2400, 64),
        ],
    );
    assert_eq!(PeImage::parse(&b.buf).unwrap().codeview(), Ok(None));
}

#[test]
fn codeview_malformed_is_an_error() {
    // Directory past the end of the image.
    let mut b = Builder::new();
    b.dir(6, SIZE_OF_IMAGE - 10, 28);
    assert!(matches!(
        PeImage::parse(&b.buf).unwrap().codeview(),
        Err(PeError::DirectoryOutOfImage {
            directory: Directory::Debug,
            ..
        })
    ));
    // Directory whose size wraps.
    let mut b = Builder::new();
    b.dir(6, RDATA, u32::MAX as usize);
    assert!(PeImage::parse(&b.buf).unwrap().codeview().is_err());
    // Record outside the image.
    let mut b = Builder::new();
    with_debug(&mut b, RDATA, &[(DEBUG_TYPE_CODEVIEW, 0xFFFF_FFF0, 64)]);
    assert!(matches!(
        PeImage::parse(&b.buf).unwrap().codeview(),
        Err(PeError::RvaOutOfImage {
            what: Structure::CodeViewRecord,
            ..
        })
    ));
    // Path without its NUL inside the record.
    let mut b = Builder::new();
    let at = RDATA + 0x400;
    rsds(&mut b, at, [9; 16], 1, "abc.pdb");
    with_debug(&mut b, RDATA, &[(DEBUG_TYPE_CODEVIEW, at as u32, 24 + 3)]);
    assert!(matches!(
        PeImage::parse(&b.buf).unwrap().codeview(),
        Err(PeError::UnterminatedName {
            what: Structure::CodeViewRecord,
            ..
        })
    ));
    // Many entries: bounded by MAX_DEBUG_ENTRIES, none CodeView.
    let mut b = Builder::with_size(0x8000);
    b.dir(6, RDATA, 28 * 200);
    assert_eq!(PeImage::parse(&b.buf).unwrap().codeview(), Ok(None));
}
