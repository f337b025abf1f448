//! On-image layouts of the PE32+ structures that [`super`] reads, as `zerocopy` types.
//!
//! Every field is a little-endian, alignment-free integer, so a structure can be read at
//! any offset of a byte slice on any host. Field names follow the Microsoft PE/COFF
//! specification in snake case. Only what the parser uses is named; the rest is padding.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// `IMAGE_DOS_HEADER`: only `e_magic` and `e_lfanew` matter.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct DosHeader {
    pub e_magic: U16,
    pub _rest: [u8; 58],
    pub e_lfanew: U32,
}

/// `IMAGE_FILE_HEADER` preceded by the `PE\0\0` signature.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct NtHeadersStart {
    pub signature: U32,
    pub machine: U16,
    pub number_of_sections: U16,
    pub time_date_stamp: U32,
    pub pointer_to_symbol_table: U32,
    pub number_of_symbols: U32,
    pub size_of_optional_header: U16,
    pub characteristics: U16,
}

/// The fixed part of `IMAGE_OPTIONAL_HEADER64`, without the data directory array.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct OptionalHeader64 {
    pub magic: U16,
    pub major_linker_version: u8,
    pub minor_linker_version: u8,
    pub size_of_code: U32,
    pub size_of_initialized_data: U32,
    pub size_of_uninitialized_data: U32,
    pub address_of_entry_point: U32,
    pub base_of_code: U32,
    pub image_base: U64,
    pub section_alignment: U32,
    pub file_alignment: U32,
    pub _versions: [u8; 12],
    pub win32_version_value: U32,
    pub size_of_image: U32,
    pub size_of_headers: U32,
    pub check_sum: U32,
    pub subsystem: U16,
    pub dll_characteristics: U16,
    pub _stack_and_heap: [u8; 32],
    pub loader_flags: U32,
    pub number_of_rva_and_sizes: U32,
}

/// `IMAGE_DATA_DIRECTORY`.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct DataDirectory {
    pub virtual_address: U32,
    pub size: U32,
}

/// `IMAGE_SECTION_HEADER`.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct SectionHeader {
    pub name: [u8; 8],
    pub virtual_size: U32,
    pub virtual_address: U32,
    pub size_of_raw_data: U32,
    pub pointer_to_raw_data: U32,
    pub pointer_to_relocations: U32,
    pub pointer_to_linenumbers: U32,
    pub number_of_relocations: U16,
    pub number_of_linenumbers: U16,
    pub characteristics: U32,
}

/// `IMAGE_IMPORT_DESCRIPTOR`.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct ImportDescriptor {
    pub original_first_thunk: U32,
    pub time_date_stamp: U32,
    pub forwarder_chain: U32,
    pub name: U32,
    pub first_thunk: U32,
}

/// `IMAGE_DELAYLOAD_DESCRIPTOR`.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct DelayLoadDescriptor {
    pub attributes: U32,
    pub dll_name_rva: U32,
    pub module_handle_rva: U32,
    pub import_address_table_rva: U32,
    pub import_name_table_rva: U32,
    pub bound_import_address_table_rva: U32,
    pub unload_information_table_rva: U32,
    pub time_date_stamp: U32,
}

/// `IMAGE_EXPORT_DIRECTORY`.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct ExportDirectory {
    pub characteristics: U32,
    pub time_date_stamp: U32,
    pub major_version: U16,
    pub minor_version: U16,
    pub name: U32,
    pub base: U32,
    pub number_of_functions: U32,
    pub number_of_names: U32,
    pub address_of_functions: U32,
    pub address_of_names: U32,
    pub address_of_name_ordinals: U32,
}

/// Size of `IMAGE_FILE_HEADER` plus the signature.
pub const NT_HEADERS_START_SIZE: usize = core::mem::size_of::<NtHeadersStart>();
/// Size of the fixed part of `IMAGE_OPTIONAL_HEADER64`.
pub const OPTIONAL_HEADER64_FIXED_SIZE: usize = core::mem::size_of::<OptionalHeader64>();
/// Size of one `IMAGE_DATA_DIRECTORY`.
pub const DATA_DIRECTORY_SIZE: usize = core::mem::size_of::<DataDirectory>();
/// Size of one `IMAGE_SECTION_HEADER`.
pub const SECTION_HEADER_SIZE: usize = core::mem::size_of::<SectionHeader>();
/// Size of one `IMAGE_IMPORT_DESCRIPTOR`.
pub const IMPORT_DESCRIPTOR_SIZE: usize = core::mem::size_of::<ImportDescriptor>();
/// Size of one `IMAGE_DELAYLOAD_DESCRIPTOR`.
pub const DELAY_DESCRIPTOR_SIZE: usize = core::mem::size_of::<DelayLoadDescriptor>();
/// Size of `IMAGE_EXPORT_DIRECTORY`.
pub const EXPORT_DIRECTORY_SIZE: usize = core::mem::size_of::<ExportDirectory>();

// The layouts above must match the specification byte for byte.
const _: () = assert!(core::mem::size_of::<DosHeader>() == 64);
const _: () = assert!(core::mem::size_of::<DebugDirectory>() == 28);
const _: () = assert!(core::mem::size_of::<CodeViewRsds>() == 24);
const _: () = assert!(NT_HEADERS_START_SIZE == 24);
const _: () = assert!(OPTIONAL_HEADER64_FIXED_SIZE == 112);
const _: () = assert!(DATA_DIRECTORY_SIZE == 8);
const _: () = assert!(SECTION_HEADER_SIZE == 40);
const _: () = assert!(IMPORT_DESCRIPTOR_SIZE == 20);
const _: () = assert!(DELAY_DESCRIPTOR_SIZE == 32);
const _: () = assert!(EXPORT_DIRECTORY_SIZE == 40);

/// `IMAGE_DEBUG_DIRECTORY`.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct DebugDirectory {
    pub characteristics: U32,
    pub time_date_stamp: U32,
    pub major_version: U16,
    pub minor_version: U16,
    pub debug_type: U32,
    pub size_of_data: U32,
    pub address_of_raw_data: U32,
    pub pointer_to_raw_data: U32,
}

/// The fixed part of a PDB 7.0 CodeView record (`RSDS`, GUID, age); the path follows.
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct CodeViewRsds {
    pub signature: U32,
    pub guid: [u8; 16],
    pub age: U32,
}
