//! Import tables of loaded PE32+ images: where a driver's calls to the hooked `Mm`
//! routines go through.
//!
//! [`PeImage::parse`] reads an image in its *loaded* layout — headers at offset 0 and
//! every section at its `VirtualAddress`, as the Windows loader maps it — from a byte
//! slice that covers at least `SizeOfImage` bytes. In that layout an RVA is an offset into
//! the slice. On-disk (file) layout is not parsed. From the image it reads the DOS and NT
//! headers (PE32+ only: a PE32 image is [`PeError::Pe32NotSupported`]), the section
//! table, the data directories, the import and delay-load import descriptors with their
//! by-name and by-ordinal thunks, the export directory, and the debug directory's
//! CodeView record that names the image's PDB ([`PeImage::codeview`]).
//!
//! The question the interception asks is [`PeImage::hooked_slots`]: which import address
//! table (IAT) slots import `MmMapIoSpace`, `MmMapIoSpaceEx`, `MmUnmapIoSpace` or
//! `MmGetSystemRoutineAddress` from `ntoskrnl.exe` (compared without regard to ASCII
//! case). By-ordinal imports are named through an [`OrdinalResolver`], normally built from
//! ntoskrnl's own export table with [`Exports`] and [`RoutineOrdinals`].
//!
//! # Hostile input
//!
//! This code runs in the kernel on images it does not trust. It has no `unsafe`, does
//! not allocate, and never panics: every offset and length is computed with checked
//! arithmetic and every read is a bounds-checked `get`, so a malformed image is a
//! [`PeError`] that says what is wrong and where. Work is bounded:
//!
//! - at most [`MAX_IMPORT_DESCRIPTORS`] descriptors per import directory (regular and
//!   delay-load each),
//! - at most [`MAX_THUNKS`] thunks in one scan, counted over every `ntoskrnl.exe`
//!   descriptor (the thunks of other DLLs are not walked),
//! - names are searched for their NUL terminator over at most [`MAX_NAME_LEN`] bytes,
//! - at most [`MAX_EXPORTS`] export functions and names.
//!
//! The section table is bounded by its 16-bit count.
//!
//! # Example
//!
//! ```
//! use iosv::pe::{IatSlot, PeError, PeImage, RoutineOrdinals};
//!
//! /// The hooked slots of a loaded image; `ordinals` comes from ntoskrnl's exports.
//! fn hooked(image: &[u8], ordinals: &RoutineOrdinals) -> Result<usize, PeError> {
//!     let pe = PeImage::parse(image)?;
//!     let mut out = [IatSlot::EMPTY; 16];
//!     let summary = pe.find_hooked_slots(Some(ordinals), &mut out)?;
//!     for slot in &out[..summary.slots] {
//!         // slot.rva, slot.routine, slot.delay_load, slot.dll_name, slot.ordinal
//!         assert!(slot.dll_name.eq_ignore_ascii_case(b"ntoskrnl.exe"));
//!     }
//!     Ok(summary.slots)
//! }
//!
//! let not_an_image = [0u8; 64];
//! assert_eq!(
//!     hooked(&not_an_image, &RoutineOrdinals::default()),
//!     Err(PeError::BadDosMagic { found: 0 })
//! );
//! ```

#![forbid(unsafe_code)]
// The crate's no-panic lints (driver/lib.rs) hold here as in all the kernel's non-test
// code. This module reads untrusted image bytes, so it also refuses `as` casts (a silent
// truncation is an out-of-bounds offset); its tests allow them again.
#![deny(clippy::as_conversions)]

mod debug;
mod error;
mod exports;
mod imports;
mod raw;
#[cfg(test)]
mod tests;

use zerocopy::byteorder::little_endian::U32;
use zerocopy::FromBytes;

pub use debug::{CodeView, CODEVIEW_RSDS, DEBUG_TYPE_CODEVIEW, MAX_DEBUG_ENTRIES};
pub use error::{PeError, Structure};
pub use exports::{ExportTarget, ExportedName, ExportedNames, Exports, RoutineOrdinals};
pub use imports::{
    HookedSlots, IatSlot, ImportedDll, ImportedDlls, ImportedName, ImportedNames, OrdinalResolver,
    ScanSummary,
};

/// Most import descriptors walked in one import directory (regular or delay-load) before
/// the scan fails with [`PeError::TooManyDescriptors`].
pub const MAX_IMPORT_DESCRIPTORS: usize = 4096;

/// Most thunks walked in one scan, over all `ntoskrnl.exe` descriptors, before it fails
/// with [`PeError::TooManyThunks`].
pub const MAX_THUNKS: usize = 65536;

/// Longest DLL, import or export name read, without its NUL terminator. A longer name is
/// [`PeError::UnterminatedName`].
pub const MAX_NAME_LEN: usize = 512;

/// Most export functions, and most export names, an export directory may declare before
/// [`PeImage::exports`] fails with [`PeError::TooManyExports`].
pub const MAX_EXPORTS: usize = 65536;

/// The DLL whose imports are hooked, as it must appear in an import descriptor (the
/// comparison ignores ASCII case).
pub const NTOSKRNL: &[u8] = b"ntoskrnl.exe";

/// `IMAGE_SCN_MEM_DISCARDABLE`: the section may be freed after initialization (`INIT`).
pub const SCN_MEM_DISCARDABLE: u32 = 0x0200_0000;

/// `IMAGE_SCN_MEM_EXECUTE`: the section holds code. Under HVCI its pages are never
/// writable, and iosv never writes into one (W^X) whether HVCI is on or not.
pub const SCN_MEM_EXECUTE: u32 = 0x2000_0000;

/// `IMAGE_SCN_CNT_CODE`: the section contains code.
pub const SCN_CNT_CODE: u32 = 0x0000_0020;

/// `IMAGE_FILE_MACHINE_AMD64`.
pub const MACHINE_AMD64: u16 = 0x8664;

/// `IMAGE_FILE_MACHINE_ARM64`.
pub const MACHINE_ARM64: u16 = 0xAA64;

/// `IMAGE_SUBSYSTEM_NATIVE`: the `Subsystem` of kernel-mode drivers.
pub const SUBSYSTEM_NATIVE: u16 = 1;

const DOS_MAGIC: u16 = 0x5A4D; // "MZ"
const NT_SIGNATURE: u32 = 0x0000_4550; // "PE\0\0"
const PE32_MAGIC: u16 = 0x10B;
const PE32_PLUS_MAGIC: u16 = 0x20B;
/// Data directories defined by the specification; more are ignored.
const MAX_DIRECTORIES: u32 = 16;

/// A routine whose IAT slots are redirected to an iosv hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookedRoutine {
    /// `MmMapIoSpace`.
    MapIoSpace,
    /// `MmMapIoSpaceEx`.
    MapIoSpaceEx,
    /// `MmUnmapIoSpace`.
    UnmapIoSpace,
    /// `MmGetSystemRoutineAddress`, hooked so that dynamically resolved pointers to the
    /// other routines are hooked too.
    GetSystemRoutineAddress,
    /// `MmMapLockedPagesSpecifyCache` (the MDL family, [`crate::mdl`]; what the
    /// `MmGetSystemAddressForMdlSafe` macro calls). `MmPrepareMdlForReuse` is a wdm.h
    /// macro over `MmUnmapLockedPages`, so it has no entry of its own.
    MapLockedPagesSpecifyCache,
    /// `MmMapLockedPages`.
    MapLockedPages,
    /// `MmUnmapLockedPages`.
    UnmapLockedPages,
    /// `IoFreeMdl`.
    FreeMdl,
    /// `MmUnlockPages`.
    UnlockPages,
    /// `MmAllocateMappingAddress`.
    AllocateMappingAddress,
    /// `MmAllocateMappingAddressEx`.
    AllocateMappingAddressEx,
    /// `MmMapLockedPagesWithReservedMapping`.
    MapLockedPagesWithReservedMapping,
    /// `MmUnmapReservedMapping`.
    UnmapReservedMapping,
    /// `MmFreeMappingAddress`.
    FreeMappingAddress,
}

impl HookedRoutine {
    /// Number of hooked routines.
    pub const COUNT: usize = 14;

    /// Every hooked routine, in [`index`](Self::index) order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::MapIoSpace,
        Self::MapIoSpaceEx,
        Self::UnmapIoSpace,
        Self::GetSystemRoutineAddress,
        Self::MapLockedPagesSpecifyCache,
        Self::MapLockedPages,
        Self::UnmapLockedPages,
        Self::FreeMdl,
        Self::UnlockPages,
        Self::AllocateMappingAddress,
        Self::AllocateMappingAddressEx,
        Self::MapLockedPagesWithReservedMapping,
        Self::UnmapReservedMapping,
        Self::FreeMappingAddress,
    ];

    /// The exported name in `ntoskrnl.exe`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::MapIoSpace => "MmMapIoSpace",
            Self::MapIoSpaceEx => "MmMapIoSpaceEx",
            Self::UnmapIoSpace => "MmUnmapIoSpace",
            Self::GetSystemRoutineAddress => "MmGetSystemRoutineAddress",
            Self::MapLockedPagesSpecifyCache => "MmMapLockedPagesSpecifyCache",
            Self::MapLockedPages => "MmMapLockedPages",
            Self::UnmapLockedPages => "MmUnmapLockedPages",
            Self::FreeMdl => "IoFreeMdl",
            Self::UnlockPages => "MmUnlockPages",
            Self::AllocateMappingAddress => "MmAllocateMappingAddress",
            Self::AllocateMappingAddressEx => "MmAllocateMappingAddressEx",
            Self::MapLockedPagesWithReservedMapping => "MmMapLockedPagesWithReservedMapping",
            Self::UnmapReservedMapping => "MmUnmapReservedMapping",
            Self::FreeMappingAddress => "MmFreeMappingAddress",
        }
    }

    /// A dense index, `0..COUNT`, for per-routine tables.
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Self::MapIoSpace => 0,
            Self::MapIoSpaceEx => 1,
            Self::UnmapIoSpace => 2,
            Self::GetSystemRoutineAddress => 3,
            Self::MapLockedPagesSpecifyCache => 4,
            Self::MapLockedPages => 5,
            Self::UnmapLockedPages => 6,
            Self::FreeMdl => 7,
            Self::UnlockPages => 8,
            Self::AllocateMappingAddress => 9,
            Self::AllocateMappingAddressEx => 10,
            Self::MapLockedPagesWithReservedMapping => 11,
            Self::UnmapReservedMapping => 12,
            Self::FreeMappingAddress => 13,
        }
    }

    /// True for the MDL and reserved-mapping family (issue 11): a platform may leave
    /// their hooks 0, and then their slots are not patched.
    #[must_use]
    pub const fn is_mdl_family(self) -> bool {
        self.index() >= Self::MapLockedPagesSpecifyCache.index()
    }

    /// The routine exported as `name` (exact, case-sensitive, without NUL), if hooked.
    #[must_use]
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|routine| routine.name().as_bytes() == name)
    }
}

/// Index of a data directory in the optional header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directory {
    /// `IMAGE_DIRECTORY_ENTRY_EXPORT` (0).
    Export,
    /// `IMAGE_DIRECTORY_ENTRY_IMPORT` (1).
    Import,
    /// `IMAGE_DIRECTORY_ENTRY_EXCEPTION` (3): the `RUNTIME_FUNCTION` table (`.pdata`).
    Exception,
    /// `IMAGE_DIRECTORY_ENTRY_BASERELOC` (5).
    BaseRelocation,
    /// `IMAGE_DIRECTORY_ENTRY_DEBUG` (6): where the CodeView record naming the PDB is.
    Debug,
    /// `IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG` (10): holds the address of the /GS cookie.
    LoadConfig,
    /// `IMAGE_DIRECTORY_ENTRY_IAT` (12): the extent of the regular IATs.
    ImportAddressTable,
    /// `IMAGE_DIRECTORY_ENTRY_DELAY_IMPORT` (13).
    DelayImport,
}

impl Directory {
    /// The index in the data directory array.
    #[must_use]
    pub const fn index(self) -> u32 {
        match self {
            Self::Export => 0,
            Self::Import => 1,
            Self::Exception => 3,
            Self::BaseRelocation => 5,
            Self::Debug => 6,
            Self::LoadConfig => 10,
            Self::ImportAddressTable => 12,
            Self::DelayImport => 13,
        }
    }

    /// A short human-readable name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Export => "export",
            Self::Import => "import",
            Self::Exception => "exception",
            Self::BaseRelocation => "base relocation",
            Self::Debug => "debug",
            Self::LoadConfig => "load configuration",
            Self::ImportAddressTable => "import address table",
            Self::DelayImport => "delay-load import",
        }
    }
}

/// One data directory entry: an RVA and a size, not yet checked against the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDirectory {
    /// RVA of the directory; 0 when absent.
    pub rva: u32,
    /// Size in bytes.
    pub size: u32,
}

/// One section header, checked at parse time to lie inside `SizeOfImage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// The 8-byte name, NUL-padded (not necessarily NUL-terminated).
    pub name: [u8; 8],
    /// `VirtualAddress`: RVA of the first byte.
    pub virtual_address: u32,
    /// Bytes mapped: `VirtualSize`, or `SizeOfRawData` when that is 0.
    pub size: u32,
    /// `Characteristics` (`IMAGE_SCN_*` flags).
    pub characteristics: u32,
}

impl Section {
    /// Whether `rva` lies in this section.
    #[must_use]
    pub fn contains(&self, rva: u32) -> bool {
        rva.checked_sub(self.virtual_address)
            .is_some_and(|delta| delta < self.size)
    }

    /// Whether the section may be freed after driver initialization (`INIT`): its bytes
    /// must not be read once the driver's `DriverEntry` has returned.
    #[must_use]
    pub const fn is_discardable(&self) -> bool {
        self.characteristics & SCN_MEM_DISCARDABLE != 0
    }

    /// Whether the section holds code (`IMAGE_SCN_MEM_EXECUTE` or `IMAGE_SCN_CNT_CODE`).
    #[must_use]
    pub const fn is_executable(&self) -> bool {
        self.characteristics & (SCN_MEM_EXECUTE | SCN_CNT_CODE) != 0
    }

    /// Whether the kernel may page the section out: by the driver convention, a section
    /// whose name starts with `PAGE` (`PAGE`, `PAGEDATA`, `PAGEcode`, …).
    #[must_use]
    pub fn is_pageable(&self) -> bool {
        self.name.starts_with(b"PAGE")
    }
}

/// A parsed PE32+ image in loaded layout. Cheap to copy; borrows the image bytes.
#[derive(Debug, Clone, Copy)]
pub struct PeImage<'a> {
    /// The image, cut to `SizeOfImage`.
    image: &'a [u8],
    machine: u16,
    image_base: u64,
    size_of_headers: u32,
    entry_point: u32,
    subsystem: u16,
    /// Offset of the first data directory.
    directories: usize,
    /// Data directories declared, at most [`MAX_DIRECTORIES`].
    directory_count: u32,
    /// Offset of the section table.
    sections: usize,
    section_count: u16,
}

impl<'a> PeImage<'a> {
    /// Parses and checks the headers and the section table of a loaded image.
    ///
    /// `image` must start at the image base and cover at least `SizeOfImage` bytes; bytes
    /// past `SizeOfImage` are ignored. Import and export tables are read later, on demand.
    ///
    /// # Errors
    ///
    /// A [`PeError`] naming the first malformed header field or section.
    pub fn parse(image: &'a [u8]) -> Result<Self, PeError> {
        let dos: raw::DosHeader = read(image, 0, Structure::DosHeader)?;
        if dos.e_magic.get() != DOS_MAGIC {
            return Err(PeError::BadDosMagic {
                found: dos.e_magic.get(),
            });
        }
        let nt = to_usize(dos.e_lfanew.get());
        let file: raw::NtHeadersStart = read(image, nt, Structure::NtHeaders)?;
        if file.signature.get() != NT_SIGNATURE {
            return Err(PeError::BadNtSignature {
                offset: nt,
                found: file.signature.get(),
            });
        }
        let optional = nt
            .checked_add(raw::NT_HEADERS_START_SIZE)
            .ok_or(PeError::Truncated {
                what: Structure::OptionalHeader,
                offset: nt,
                len: image.len(),
            })?;
        let magic: zerocopy::byteorder::little_endian::U16 =
            read(image, optional, Structure::OptionalHeader)?;
        match magic.get() {
            PE32_PLUS_MAGIC => {}
            PE32_MAGIC => return Err(PeError::Pe32NotSupported),
            found => return Err(PeError::BadOptionalHeaderMagic { found }),
        }
        let opt: raw::OptionalHeader64 = read(image, optional, Structure::OptionalHeader)?;

        let directory_count = opt.number_of_rva_and_sizes.get().min(MAX_DIRECTORIES);
        let size_of_optional = file.size_of_optional_header.get();
        let needed = to_usize(directory_count)
            .checked_mul(raw::DATA_DIRECTORY_SIZE)
            .and_then(|dirs| dirs.checked_add(raw::OPTIONAL_HEADER64_FIXED_SIZE))
            .unwrap_or(usize::MAX);
        if usize::from(size_of_optional) < needed {
            return Err(PeError::OptionalHeaderTooSmall {
                size: size_of_optional,
                needed,
            });
        }

        let size_of_image = opt.size_of_image.get();
        let image =
            image
                .get(..to_usize(size_of_image))
                .ok_or(PeError::BufferShorterThanImage {
                    size_of_image,
                    buffer_len: image.len(),
                })?;

        let directories = optional
            .checked_add(raw::OPTIONAL_HEADER64_FIXED_SIZE)
            .ok_or(PeError::Truncated {
                what: Structure::DataDirectories,
                offset: optional,
                len: image.len(),
            })?;
        check_span(
            image,
            directories,
            needed.saturating_sub(raw::OPTIONAL_HEADER64_FIXED_SIZE),
            Structure::DataDirectories,
        )?;

        let sections =
            optional
                .checked_add(usize::from(size_of_optional))
                .ok_or(PeError::Truncated {
                    what: Structure::SectionTable,
                    offset: optional,
                    len: image.len(),
                })?;
        let section_count = file.number_of_sections.get();
        let table_len = usize::from(section_count).saturating_mul(raw::SECTION_HEADER_SIZE);
        check_span(image, sections, table_len, Structure::SectionTable)?;

        let parsed = Self {
            image,
            machine: file.machine.get(),
            image_base: opt.image_base.get(),
            size_of_headers: opt.size_of_headers.get(),
            entry_point: opt.address_of_entry_point.get(),
            subsystem: opt.subsystem.get(),
            directories,
            directory_count,
            sections,
            section_count,
        };
        for index in 0..section_count {
            let header = parsed.section_header(index)?;
            let section = section_from(&header);
            let end = section.virtual_address.checked_add(section.size);
            if end.is_none_or(|end| end > size_of_image) {
                return Err(PeError::SectionOutOfImage {
                    index,
                    virtual_address: section.virtual_address,
                    size: section.size,
                });
            }
        }
        Ok(parsed)
    }

    /// The image bytes, cut to `SizeOfImage`.
    #[must_use]
    pub const fn bytes(&self) -> &'a [u8] {
        self.image
    }

    /// `Machine` from the file header (e.g. [`MACHINE_AMD64`]).
    #[must_use]
    pub const fn machine(&self) -> u16 {
        self.machine
    }

    /// `ImageBase` as the optional header records it. The loader may have mapped the
    /// image elsewhere: callers that patch use the base they were given, not this.
    #[must_use]
    pub const fn image_base(&self) -> u64 {
        self.image_base
    }

    /// `SizeOfImage`, which is also the length of [`bytes`](Self::bytes).
    #[must_use]
    pub fn size_of_image(&self) -> u32 {
        u32::try_from(self.image.len()).unwrap_or(u32::MAX)
    }

    /// `SizeOfHeaders`.
    #[must_use]
    pub const fn size_of_headers(&self) -> u32 {
        self.size_of_headers
    }

    /// `AddressOfEntryPoint` (an RVA; 0 when the image has no entry point), as recorded.
    #[must_use]
    pub const fn entry_point(&self) -> u32 {
        self.entry_point
    }

    /// `Subsystem` (e.g. [`SUBSYSTEM_NATIVE`]).
    #[must_use]
    pub const fn subsystem(&self) -> u16 {
        self.subsystem
    }

    /// Number of sections in the section table.
    #[must_use]
    pub const fn section_count(&self) -> u16 {
        self.section_count
    }

    /// Section `index` of the section table, or `None` past the end.
    #[must_use]
    pub fn section(&self, index: u16) -> Option<Section> {
        if index >= self.section_count {
            return None;
        }
        self.section_header(index).ok().map(|h| section_from(&h))
    }

    /// Where section `index` lies in the image *file*: `(PointerToRawData,
    /// SizeOfRawData)`, or `None` past the end of the table. A loader copies these bytes
    /// of the file to the section's `VirtualAddress`; they are not checked against any
    /// file here.
    #[must_use]
    pub fn section_file_range(&self, index: u16) -> Option<(u32, u32)> {
        if index >= self.section_count {
            return None;
        }
        self.section_header(index)
            .ok()
            .map(|h| (h.pointer_to_raw_data.get(), h.size_of_raw_data.get()))
    }

    /// The sections, in table order.
    pub fn sections(&self) -> impl Iterator<Item = Section> + 'a {
        let this = *self;
        (0..self.section_count).filter_map(move |index| this.section(index))
    }

    /// The first section that contains `rva`, if any (headers are in none).
    #[must_use]
    pub fn section_of_rva(&self, rva: u32) -> Option<Section> {
        self.sections().find(|section| section.contains(rva))
    }

    /// Data directory `directory`, or `None` when the optional header does not declare
    /// it. The entry is returned as found; users check it against the image.
    #[must_use]
    pub fn data_directory(&self, directory: Directory) -> Option<DataDirectory> {
        let index = directory.index();
        if index >= self.directory_count {
            return None;
        }
        let offset = to_usize(index)
            .checked_mul(raw::DATA_DIRECTORY_SIZE)
            .and_then(|delta| self.directories.checked_add(delta))?;
        let entry: raw::DataDirectory =
            read(self.image, offset, Structure::DataDirectories).ok()?;
        Some(DataDirectory {
            rva: entry.virtual_address.get(),
            size: entry.size.get(),
        })
    }

    /// The import descriptors of the image, regular ones first, then delay-load ones.
    ///
    /// The iterator yields at most one error and then ends.
    #[must_use]
    pub const fn imported_dlls(&self) -> ImportedDlls<'a> {
        ImportedDlls::new(*self)
    }

    /// What descriptor `dll` imports (from its lookup table), in table order.
    ///
    /// Shares the [`MAX_THUNKS`] bound of a scan; the iterator yields at most one error
    /// and then ends.
    #[must_use]
    pub const fn imported_names(&self, dll: ImportedDll<'a>) -> ImportedNames<'a> {
        ImportedNames::new(*self, dll)
    }

    /// The IAT slots that import a [`HookedRoutine`] from `ntoskrnl.exe`, regular imports
    /// first, then delay-load ones, each in table order.
    ///
    /// `resolver` names by-ordinal imports; without one, or when it does not know an
    /// ordinal, the import is skipped and counted
    /// ([`HookedSlots::unresolved_ordinals`]). The iterator yields at most one error and
    /// then ends.
    #[must_use]
    pub fn hooked_slots<'r>(
        &self,
        resolver: Option<&'r dyn OrdinalResolver>,
    ) -> HookedSlots<'a, 'r> {
        HookedSlots::new(*self, resolver)
    }

    /// Collects [`hooked_slots`](Self::hooked_slots) into `out`: all of them, or an error.
    ///
    /// On success the first [`ScanSummary::slots`] entries of `out` are filled.
    ///
    /// # Errors
    ///
    /// The first [`PeError`] met, or [`PeError::OutputFull`] when `out` is too short.
    pub fn find_hooked_slots(
        &self,
        resolver: Option<&dyn OrdinalResolver>,
        out: &mut [IatSlot<'a>],
    ) -> Result<ScanSummary, PeError> {
        let capacity = out.len();
        let mut slots = self.hooked_slots(resolver);
        let mut count = 0usize;
        for found in &mut slots {
            let slot = found?;
            let entry = out.get_mut(count).ok_or(PeError::OutputFull { capacity })?;
            *entry = slot;
            count = count.saturating_add(1);
        }
        Ok(ScanSummary {
            slots: count,
            ntoskrnl_thunks: slots.ntoskrnl_thunks(),
            unresolved_ordinals: slots.unresolved_ordinals(),
        })
    }

    /// The export directory, or `None` when the image exports nothing.
    ///
    /// # Errors
    ///
    /// A [`PeError`] when the directory or one of its three tables lies outside the
    /// image, or it declares more than [`MAX_EXPORTS`] functions or names.
    pub fn exports(&self) -> Result<Option<Exports<'a>>, PeError> {
        Exports::new(*self)
    }

    fn section_header(&self, index: u16) -> Result<raw::SectionHeader, PeError> {
        let offset = usize::from(index)
            .checked_mul(raw::SECTION_HEADER_SIZE)
            .and_then(|delta| self.sections.checked_add(delta))
            .ok_or(PeError::Truncated {
                what: Structure::SectionTable,
                offset: self.sections,
                len: self.image.len(),
            })?;
        read(self.image, offset, Structure::SectionTable)
    }
}

const fn section_from(header: &raw::SectionHeader) -> Section {
    let virtual_size = header.virtual_size.get();
    Section {
        name: header.name,
        virtual_address: header.virtual_address.get(),
        size: if virtual_size == 0 {
            header.size_of_raw_data.get()
        } else {
            virtual_size
        },
        characteristics: header.characteristics.get(),
    }
}

/// `u32` to `usize`, saturating on targets where `usize` is narrower (then every bounds
/// check against the image fails cleanly).
pub(crate) fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Reads a `T` at `offset`, or fails with [`PeError::Truncated`] naming `what`.
pub(crate) fn read<T: FromBytes>(
    image: &[u8],
    offset: usize,
    what: Structure,
) -> Result<T, PeError> {
    image
        .get(offset..)
        .and_then(|rest| T::read_from_prefix(rest).ok())
        .map(|(value, _)| value)
        .ok_or(PeError::Truncated {
            what,
            offset,
            len: image.len(),
        })
}

/// Reads a little-endian `u32` at `offset`.
pub(crate) fn read_u32(image: &[u8], offset: usize, what: Structure) -> Result<u32, PeError> {
    read::<U32>(image, offset, what).map(U32::get)
}

/// Checks that `len` bytes from `offset` lie in the image.
fn check_span(image: &[u8], offset: usize, len: usize, what: Structure) -> Result<(), PeError> {
    offset
        .checked_add(len)
        .and_then(|end| image.get(offset..end))
        .map(|_| ())
        .ok_or(PeError::Truncated {
            what,
            offset,
            len: image.len(),
        })
}

/// The NUL-terminated name at `rva`, without the NUL; `at` is the offset of the field
/// that holds `rva`.
pub(crate) fn c_string(
    image: &[u8],
    rva: u32,
    what: Structure,
    at: usize,
) -> Result<&[u8], PeError> {
    let rest = image
        .get(to_usize(rva)..)
        .filter(|rest| !rest.is_empty())
        .ok_or(PeError::RvaOutOfImage { what, rva, at })?;
    let window = rest.get(..=MAX_NAME_LEN).unwrap_or(rest);
    window
        .iter()
        .position(|&byte| byte == 0)
        .and_then(|len| window.get(..len))
        .ok_or(PeError::UnterminatedName { what, rva })
}
