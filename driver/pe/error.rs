//! What can be wrong with an image, and where.

use core::fmt;

use super::Directory;

/// The structure of an image that a [`PeError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// `IMAGE_DOS_HEADER` at offset 0.
    DosHeader,
    /// The `PE\0\0` signature and `IMAGE_FILE_HEADER` at `e_lfanew`.
    NtHeaders,
    /// `IMAGE_OPTIONAL_HEADER64`.
    OptionalHeader,
    /// The data directory array at the end of the optional header.
    DataDirectories,
    /// The section table that follows the optional header.
    SectionTable,
    /// An `IMAGE_IMPORT_DESCRIPTOR`.
    ImportDescriptor,
    /// An `IMAGE_DELAYLOAD_DESCRIPTOR`.
    DelayImportDescriptor,
    /// The NUL-terminated name of an imported DLL.
    DllName,
    /// An import lookup (name) table: the thunks that say what each IAT entry imports.
    ImportLookupTable,
    /// An import address table (IAT): the slots the loader fills with addresses.
    ImportAddressTable,
    /// An `IMAGE_IMPORT_BY_NAME` entry (hint and name).
    HintName,
    /// `IMAGE_EXPORT_DIRECTORY`.
    ExportDirectory,
    /// The export address table (`AddressOfFunctions`).
    ExportAddressTable,
    /// The export name pointer table (`AddressOfNames`).
    ExportNameTable,
    /// The export ordinal table (`AddressOfNameOrdinals`).
    ExportOrdinalTable,
    /// A NUL-terminated name that the export directory points at.
    ExportName,
    /// An `IMAGE_DEBUG_DIRECTORY` entry.
    DebugDirectory,
    /// The CodeView (`RSDS`) record a debug directory entry points at.
    CodeViewRecord,
}

impl Structure {
    /// A short human-readable name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::DosHeader => "DOS header",
            Self::NtHeaders => "NT headers",
            Self::OptionalHeader => "optional header",
            Self::DataDirectories => "data directories",
            Self::SectionTable => "section table",
            Self::ImportDescriptor => "import descriptor",
            Self::DelayImportDescriptor => "delay-load import descriptor",
            Self::DllName => "DLL name",
            Self::ImportLookupTable => "import lookup table",
            Self::ImportAddressTable => "import address table",
            Self::HintName => "hint/name entry",
            Self::ExportDirectory => "export directory",
            Self::ExportAddressTable => "export address table",
            Self::ExportNameTable => "export name table",
            Self::ExportOrdinalTable => "export ordinal table",
            Self::ExportName => "export name",
            Self::DebugDirectory => "debug directory entry",
            Self::CodeViewRecord => "CodeView record",
        }
    }
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an image was rejected. Every variant says what is wrong and where.
///
/// Offsets and RVAs are both relative to the start of the image: the parser reads
/// images in their loaded (in-memory) layout, where an RVA *is* the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeError {
    /// `what`, which starts at `offset`, does not fit in the image of `len` bytes.
    Truncated {
        /// The structure being read.
        what: Structure,
        /// Where it starts.
        offset: usize,
        /// The length of the image (or of the buffer, before `SizeOfImage` is known).
        len: usize,
    },
    /// `e_magic` is not `MZ`.
    BadDosMagic {
        /// The value found at offset 0.
        found: u16,
    },
    /// There is no `PE\0\0` signature at `e_lfanew`.
    BadNtSignature {
        /// `e_lfanew`.
        offset: usize,
        /// The value found there.
        found: u32,
    },
    /// The optional header is a PE32 one (magic `0x10b`): only PE32+ images are parsed.
    Pe32NotSupported,
    /// The optional header magic is neither PE32 (`0x10b`) nor PE32+ (`0x20b`).
    BadOptionalHeaderMagic {
        /// The magic found.
        found: u16,
    },
    /// `SizeOfOptionalHeader` is smaller than the PE32+ optional header with the data
    /// directories that `NumberOfRvaAndSizes` declares.
    OptionalHeaderTooSmall {
        /// `SizeOfOptionalHeader`.
        size: u16,
        /// The size needed.
        needed: usize,
    },
    /// The buffer is shorter than `SizeOfImage`.
    BufferShorterThanImage {
        /// `SizeOfImage`.
        size_of_image: u32,
        /// The length of the buffer given to the parser.
        buffer_len: usize,
    },
    /// A section does not lie inside `SizeOfImage`.
    SectionOutOfImage {
        /// Index of the section in the section table.
        index: u16,
        /// Its `VirtualAddress`.
        virtual_address: u32,
        /// Its mapped size (`VirtualSize`, or `SizeOfRawData` when that is 0).
        size: u32,
    },
    /// A data directory that the parser needs starts outside the image, or its declared
    /// extent ends outside it.
    DirectoryOutOfImage {
        /// Which directory.
        directory: Directory,
        /// Its RVA.
        rva: u32,
        /// Its size.
        size: u32,
    },
    /// A field at `at` points (by RVA) at a `what` outside the image.
    RvaOutOfImage {
        /// What the RVA should point at.
        what: Structure,
        /// The RVA.
        rva: u32,
        /// The offset of the field that holds the RVA.
        at: usize,
    },
    /// A name at `rva` has no NUL terminator within [`MAX_NAME_LEN`](super::MAX_NAME_LEN)
    /// bytes or before the end of the image.
    UnterminatedName {
        /// Which kind of name.
        what: Structure,
        /// Where it starts.
        rva: u32,
    },
    /// A thunk table that starts at `rva` runs off the end of the image without its
    /// terminating zero entry.
    UnterminatedThunkTable {
        /// The lookup table or the IAT.
        what: Structure,
        /// Where the table starts.
        rva: u32,
    },
    /// A by-name thunk at `at` has bits set that must be zero (bits 62..31 in PE32+).
    BadThunk {
        /// The offset of the thunk.
        at: usize,
        /// Its value.
        value: u64,
    },
    /// A hooked IAT slot at `rva` lies in no section (e.g. in the headers).
    SlotOutsideSections {
        /// The RVA of the slot.
        rva: u32,
    },
    /// An `ntoskrnl.exe` import descriptor has no import lookup table
    /// (`OriginalFirstThunk` is 0), so the names of its slots are lost once bound.
    MissingLookupTable {
        /// The offset of the descriptor.
        descriptor: usize,
    },
    /// A delay-load descriptor uses the old VA-based form (bit 0 of `Attributes` clear),
    /// which this parser does not read.
    DelayImportNotRvaBased {
        /// The offset of the descriptor.
        descriptor: usize,
        /// Its `Attributes`.
        attributes: u32,
    },
    /// More than `limit` descriptors without a terminator in `directory`.
    TooManyDescriptors {
        /// The import or delay-load import directory.
        directory: Directory,
        /// The cap that was hit.
        limit: usize,
    },
    /// More than `limit` thunks walked in one scan.
    TooManyThunks {
        /// The cap that was hit.
        limit: usize,
    },
    /// The export directory declares more functions or names than the parser walks.
    TooManyExports {
        /// The count declared.
        count: u32,
        /// The cap.
        limit: usize,
    },
    /// The caller's output buffer has room for `capacity` slots and more were found.
    OutputFull {
        /// The length of the output buffer.
        capacity: usize,
    },
}

impl fmt::Display for PeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { what, offset, len } => write!(
                f,
                "{what} at offset {offset:#x} does not fit in the image of {len:#x} bytes"
            ),
            Self::BadDosMagic { found } => write!(f, "DOS header magic is {found:#06x}, not MZ"),
            Self::BadNtSignature { offset, found } => write!(
                f,
                "no PE signature at e_lfanew {offset:#x} (found {found:#010x})"
            ),
            Self::Pe32NotSupported => {
                f.write_str("PE32 (32-bit) optional header: only PE32+ images are supported")
            }
            Self::BadOptionalHeaderMagic { found } => {
                write!(
                    f,
                    "optional header magic {found:#06x} is neither PE32 nor PE32+"
                )
            }
            Self::OptionalHeaderTooSmall { size, needed } => write!(
                f,
                "SizeOfOptionalHeader {size:#x} is smaller than the {needed:#x} bytes needed"
            ),
            Self::BufferShorterThanImage {
                size_of_image,
                buffer_len,
            } => write!(
                f,
                "buffer of {buffer_len:#x} bytes is shorter than SizeOfImage {size_of_image:#x}"
            ),
            Self::SectionOutOfImage {
                index,
                virtual_address,
                size,
            } => write!(
                f,
                "section {index} at RVA {virtual_address:#x} (size {size:#x}) is outside the image"
            ),
            Self::DirectoryOutOfImage {
                directory,
                rva,
                size,
            } => write!(
                f,
                "{} directory at RVA {rva:#x} (size {size:#x}) is outside the image",
                directory.name()
            ),
            Self::RvaOutOfImage { what, rva, at } => write!(
                f,
                "{what} RVA {rva:#x} (field at offset {at:#x}) is outside the image"
            ),
            Self::UnterminatedName { what, rva } => {
                write!(f, "{what} at RVA {rva:#x} is not NUL-terminated")
            }
            Self::UnterminatedThunkTable { what, rva } => write!(
                f,
                "{what} at RVA {rva:#x} runs off the image without a terminating entry"
            ),
            Self::BadThunk { at, value } => write!(
                f,
                "by-name thunk at offset {at:#x} has reserved bits set ({value:#018x})"
            ),
            Self::SlotOutsideSections { rva } => {
                write!(f, "IAT slot at RVA {rva:#x} lies in no section")
            }
            Self::MissingLookupTable { descriptor } => write!(
                f,
                "ntoskrnl.exe import descriptor at offset {descriptor:#x} has no lookup table"
            ),
            Self::DelayImportNotRvaBased {
                descriptor,
                attributes,
            } => write!(
                f,
                "delay-load descriptor at offset {descriptor:#x} is VA-based (attributes {attributes:#x})"
            ),
            Self::TooManyDescriptors { directory, limit } => write!(
                f,
                "{} directory has more than {limit} descriptors",
                directory.name()
            ),
            Self::TooManyThunks { limit } => write!(f, "more than {limit} thunks in one scan"),
            Self::TooManyExports { count, limit } => {
                write!(
                    f,
                    "export directory declares {count} entries (limit {limit})"
                )
            }
            Self::OutputFull { capacity } => {
                write!(
                    f,
                    "more than {capacity} hooked IAT slots (output buffer full)"
                )
            }
        }
    }
}

impl core::error::Error for PeError {}
