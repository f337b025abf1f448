//! The debug directory: the CodeView (`RSDS`) record that names an image's PDB.
//!
//! A debugger or symbolizer matches a PDB to an image by the GUID and age the linker
//! wrote into both. The image keeps them in an `IMAGE_DEBUG_DIRECTORY` entry of type
//! `IMAGE_DEBUG_TYPE_CODEVIEW` whose `AddressOfRawData` (an RVA in the loaded layout)
//! points at the record: `"RSDS"`, the 16-byte GUID, the age and the NUL-terminated path
//! the PDB was written to.
//!
//! Same rules as the rest of the parser: no panics, checked arithmetic, bounded work
//! (at most [`MAX_DEBUG_ENTRIES`] entries, a path of at most
//! [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes).

use super::{raw, read, to_usize, Directory, PeError, PeImage, Structure, MAX_NAME_LEN};

/// Most `IMAGE_DEBUG_DIRECTORY` entries read; later ones are ignored.
pub const MAX_DEBUG_ENTRIES: usize = 64;

/// `IMAGE_DEBUG_TYPE_CODEVIEW`.
pub const DEBUG_TYPE_CODEVIEW: u32 = 2;

/// `"RSDS"` as a little-endian `u32`: a PDB 7.0 CodeView record.
pub const CODEVIEW_RSDS: u32 = 0x5344_5352;

/// Bytes of `IMAGE_DEBUG_DIRECTORY`.
const DEBUG_ENTRY_SIZE: usize = 28;
/// Bytes of the fixed part of the `RSDS` record (signature, GUID, age).
const RSDS_FIXED_SIZE: usize = 24;

/// The identity of the PDB an image was linked with, from its CodeView record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeView<'a> {
    /// The PDB's GUID as stored (the first three fields little-endian, like `GUID`).
    pub guid: [u8; 16],
    /// The PDB's age.
    pub age: u32,
    /// The path the linker wrote the PDB to (without the NUL; any encoding, usually
    /// UTF-8 or ANSI).
    pub pdb_path: &'a [u8],
}

impl<'a> CodeView<'a> {
    /// The last component of [`pdb_path`](Self::pdb_path) (after the last `\` or `/`):
    /// the file name a symbol path is searched for.
    #[must_use]
    pub fn pdb_file_name(&self) -> &'a [u8] {
        let path = self.pdb_path;
        path.iter()
            .rposition(|&b| b == b'\\' || b == b'/')
            .and_then(|i| i.checked_add(1))
            .and_then(|start| path.get(start..))
            .unwrap_or(path)
    }
}

impl<'a> PeImage<'a> {
    /// The image's CodeView (`RSDS`) record, or `None` when it has no debug directory or
    /// no CodeView entry of that form (older `NB10` records are not read, nor entries
    /// whose data is not mapped: `AddressOfRawData` 0).
    ///
    /// # Errors
    ///
    /// A [`PeError`] when the debug directory or the CodeView record it points at lies
    /// outside the image, or the PDB path is not NUL-terminated.
    pub fn codeview(&self) -> Result<Option<CodeView<'a>>, PeError> {
        self.codeview_where(|_, _| true)
    }

    /// [`codeview`](Self::codeview), reading only the spans `readable(rva, len)`
    /// allows: the kernel passes a check that the pages are resident (not in a discarded
    /// `INIT` section, not pageable). A directory or record it refuses counts as absent.
    ///
    /// # Errors
    ///
    /// As [`codeview`](Self::codeview).
    pub fn codeview_where(
        &self,
        readable: impl Fn(u32, u32) -> bool,
    ) -> Result<Option<CodeView<'a>>, PeError> {
        let Some(dir) = self.data_directory(Directory::Debug) else {
            return Ok(None);
        };
        if dir.rva == 0 || dir.size == 0 {
            return Ok(None);
        }
        let image = self.bytes();
        let start = to_usize(dir.rva);
        let end = start.checked_add(to_usize(dir.size));
        if end.is_none_or(|end| end > image.len()) {
            return Err(PeError::DirectoryOutOfImage {
                directory: Directory::Debug,
                rva: dir.rva,
                size: dir.size,
            });
        }
        if !readable(dir.rva, dir.size) {
            return Ok(None);
        }
        let entries = to_usize(dir.size)
            .checked_div(DEBUG_ENTRY_SIZE)
            .unwrap_or(0)
            .min(MAX_DEBUG_ENTRIES);
        for index in 0..entries {
            let at = index
                .checked_mul(DEBUG_ENTRY_SIZE)
                .and_then(|delta| start.checked_add(delta))
                .ok_or(PeError::DirectoryOutOfImage {
                    directory: Directory::Debug,
                    rva: dir.rva,
                    size: dir.size,
                })?;
            let entry: raw::DebugDirectory = read(image, at, Structure::DebugDirectory)?;
            if entry.debug_type.get() != DEBUG_TYPE_CODEVIEW {
                continue;
            }
            let rva = entry.address_of_raw_data.get();
            let size = to_usize(entry.size_of_data.get());
            if rva == 0 || size < RSDS_FIXED_SIZE || !readable(rva, entry.size_of_data.get()) {
                continue;
            }
            // The field that holds the RVA is at offset 20 of the entry.
            let field = at.checked_add(20).unwrap_or(at);
            let record_start = to_usize(rva);
            let record = record_start
                .checked_add(size)
                .and_then(|record_end| image.get(record_start..record_end))
                .ok_or(PeError::RvaOutOfImage {
                    what: Structure::CodeViewRecord,
                    rva,
                    at: field,
                })?;
            let fixed: raw::CodeViewRsds = read(record, 0, Structure::CodeViewRecord)?;
            if fixed.signature.get() != CODEVIEW_RSDS {
                continue;
            }
            let tail = record.get(RSDS_FIXED_SIZE..).unwrap_or(&[]);
            let window = tail.get(..=MAX_NAME_LEN).unwrap_or(tail);
            let path = window
                .iter()
                .position(|&b| b == 0)
                .and_then(|len| window.get(..len))
                .ok_or(PeError::UnterminatedName {
                    what: Structure::CodeViewRecord,
                    rva: rva.saturating_add(24),
                })?;
            return Ok(Some(CodeView {
                guid: fixed.guid,
                age: fixed.age.get(),
                pdb_path: path,
            }));
        }
        Ok(None)
    }
}
