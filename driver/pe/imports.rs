//! Import and delay-load import descriptors, and the IAT slots of the hooked routines.

use core::iter::FusedIterator;

use zerocopy::byteorder::little_endian::U64;

use super::{
    c_string, raw, read, to_usize, Directory, HookedRoutine, PeError, PeImage, Structure,
    MAX_IMPORT_DESCRIPTORS, MAX_THUNKS, NTOSKRNL,
};

/// Names the by-ordinal imports of `ntoskrnl.exe`.
///
/// Implemented by ntoskrnl's [`Exports`](super::Exports) (a walk of its name table per
/// lookup), by [`RoutineOrdinals`](super::RoutineOrdinals) (built once from those
/// exports; no walk), and by closures `Fn(u16) -> Option<&'static [u8]>`.
pub trait OrdinalResolver {
    /// The name exported at `ordinal` — the ordinal as the import thunk holds it, i.e.
    /// `Base`-biased — without NUL, or `None` when unknown.
    fn name_of(&self, ordinal: u16) -> Option<&[u8]>;
}

impl<F> OrdinalResolver for F
where
    F: Fn(u16) -> Option<&'static [u8]>,
{
    fn name_of(&self, ordinal: u16) -> Option<&[u8]> {
        self(ordinal)
    }
}

/// Bit 63 of a PE32+ thunk: import by ordinal.
const ORDINAL_FLAG: u64 = 1 << 63;
/// By-name thunks hold a 31-bit hint/name RVA; bits 62..31 must be zero.
const NAME_RVA_MASK: u64 = 0x7FFF_FFFF;
/// Bit 0 of a delay-load descriptor's `Attributes`: its fields are RVAs.
const DELAY_RVA_BASED: u32 = 1;
/// Size of one PE32+ thunk and of one IAT slot.
const THUNK_SIZE: usize = 8;

/// One import descriptor, regular or delay-load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportedDll<'a> {
    /// The DLL name as the descriptor spells it, without NUL.
    pub dll_name: &'a [u8],
    /// Offset (RVA) of the descriptor.
    pub descriptor: usize,
    /// RVA of the import lookup (name) table; 0 when the descriptor has none.
    pub lookup_table_rva: u32,
    /// RVA of the import address table.
    pub address_table_rva: u32,
    /// Whether this is a delay-load descriptor.
    pub delay_load: bool,
}

impl ImportedDll<'_> {
    /// Whether the DLL is `ntoskrnl.exe`, ignoring ASCII case.
    #[must_use]
    pub fn is_ntoskrnl(&self) -> bool {
        self.dll_name.eq_ignore_ascii_case(NTOSKRNL)
    }

    /// Offset of the descriptor field that holds the lookup table RVA.
    const fn lookup_field(&self) -> usize {
        // OriginalFirstThunk is at +0; ImportNameTableRVA at +16.
        let delta = if self.delay_load { 16 } else { 0 };
        self.descriptor.saturating_add(delta)
    }

    /// Offset of the descriptor field that holds the IAT RVA.
    const fn address_field(&self) -> usize {
        // FirstThunk is at +16; ImportAddressTableRVA at +12.
        let delta = if self.delay_load { 12 } else { 16 };
        self.descriptor.saturating_add(delta)
    }
}

/// An IAT slot through which the image calls a [`HookedRoutine`] of `ntoskrnl.exe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IatSlot<'a> {
    /// RVA of the 8-byte IAT entry; inside a section.
    pub rva: u32,
    /// The routine the slot imports.
    pub routine: HookedRoutine,
    /// Whether the slot belongs to a delay-load descriptor.
    pub delay_load: bool,
    /// The DLL name as the descriptor spells it (`ntoskrnl.exe` in some case).
    pub dll_name: &'a [u8],
    /// The ordinal when imported by ordinal, `None` when imported by name.
    pub ordinal: Option<u16>,
}

impl IatSlot<'_> {
    /// A placeholder to fill output buffers with, e.g. `[IatSlot::EMPTY; 16]`; its RVA 0
    /// is never a real slot.
    pub const EMPTY: Self = Self {
        rva: 0,
        routine: HookedRoutine::MapIoSpace,
        delay_load: false,
        dll_name: &[],
        ordinal: None,
    };
}

/// What [`PeImage::find_hooked_slots`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanSummary {
    /// Hooked slots written to the output buffer.
    pub slots: usize,
    /// Thunks of `ntoskrnl.exe` descriptors walked (terminators included).
    pub ntoskrnl_thunks: usize,
    /// By-ordinal `ntoskrnl.exe` imports that could not be named: no resolver, or the
    /// resolver did not know the ordinal. They may hide a hooked routine.
    pub unresolved_ordinals: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Regular,
    Delay,
    Done,
}

/// Iterator over the import descriptors of an image; see [`PeImage::imported_dlls`].
#[derive(Debug, Clone)]
pub struct ImportedDlls<'a> {
    image: PeImage<'a>,
    phase: Phase,
    /// Index of the next descriptor in the current directory.
    index: usize,
}

impl<'a> ImportedDlls<'a> {
    pub(super) const fn new(image: PeImage<'a>) -> Self {
        Self {
            image,
            phase: Phase::Regular,
            index: 0,
        }
    }

    /// Offset of descriptor `self.index` of `directory`, whose entries are `size` bytes,
    /// or `None` when the image has no such directory.
    fn descriptor_offset(
        &self,
        directory: Directory,
        size: usize,
    ) -> Result<Option<usize>, PeError> {
        let Some(dir) = self.image.data_directory(directory) else {
            return Ok(None);
        };
        if dir.rva == 0 {
            return Ok(None);
        }
        let len = self.image.bytes().len();
        let start = to_usize(dir.rva);
        let end = start.checked_add(to_usize(dir.size));
        if start >= len || end.is_none_or(|end| end > len) {
            return Err(PeError::DirectoryOutOfImage {
                directory,
                rva: dir.rva,
                size: dir.size,
            });
        }
        if self.index >= MAX_IMPORT_DESCRIPTORS {
            return Err(PeError::TooManyDescriptors {
                directory,
                limit: MAX_IMPORT_DESCRIPTORS,
            });
        }
        self.index
            .checked_mul(size)
            .and_then(|delta| start.checked_add(delta))
            .map(Some)
            .ok_or(PeError::Truncated {
                what: Structure::ImportDescriptor,
                offset: start,
                len,
            })
    }

    fn next_regular(&mut self) -> Result<Option<ImportedDll<'a>>, PeError> {
        let Some(offset) =
            self.descriptor_offset(Directory::Import, raw::IMPORT_DESCRIPTOR_SIZE)?
        else {
            return Ok(None);
        };
        let image = self.image.bytes();
        let descriptor: raw::ImportDescriptor = read(image, offset, Structure::ImportDescriptor)?;
        // The loader stops at the first descriptor without a name or an IAT.
        let name = descriptor.name.get();
        let first_thunk = descriptor.first_thunk.get();
        if name == 0 || first_thunk == 0 {
            return Ok(None);
        }
        let dll_name = c_string(image, name, Structure::DllName, offset.saturating_add(12))?;
        self.index = self.index.saturating_add(1);
        Ok(Some(ImportedDll {
            dll_name,
            descriptor: offset,
            lookup_table_rva: descriptor.original_first_thunk.get(),
            address_table_rva: first_thunk,
            delay_load: false,
        }))
    }

    fn next_delay(&mut self) -> Result<Option<ImportedDll<'a>>, PeError> {
        let Some(offset) =
            self.descriptor_offset(Directory::DelayImport, raw::DELAY_DESCRIPTOR_SIZE)?
        else {
            return Ok(None);
        };
        let image = self.image.bytes();
        let descriptor: raw::DelayLoadDescriptor =
            read(image, offset, Structure::DelayImportDescriptor)?;
        let name = descriptor.dll_name_rva.get();
        if name == 0 {
            return Ok(None);
        }
        let attributes = descriptor.attributes.get();
        if attributes & DELAY_RVA_BASED == 0 {
            return Err(PeError::DelayImportNotRvaBased {
                descriptor: offset,
                attributes,
            });
        }
        let dll_name = c_string(image, name, Structure::DllName, offset.saturating_add(4))?;
        self.index = self.index.saturating_add(1);
        Ok(Some(ImportedDll {
            dll_name,
            descriptor: offset,
            lookup_table_rva: descriptor.import_name_table_rva.get(),
            address_table_rva: descriptor.import_address_table_rva.get(),
            delay_load: true,
        }))
    }
}

impl<'a> Iterator for ImportedDlls<'a> {
    type Item = Result<ImportedDll<'a>, PeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let step = match self.phase {
                Phase::Regular => self.next_regular(),
                Phase::Delay => self.next_delay(),
                Phase::Done => return None,
            };
            match step {
                Ok(Some(dll)) => return Some(Ok(dll)),
                Ok(None) => {
                    self.phase = if self.phase == Phase::Regular {
                        Phase::Delay
                    } else {
                        Phase::Done
                    };
                    self.index = 0;
                }
                Err(error) => {
                    self.phase = Phase::Done;
                    return Some(Err(error));
                }
            }
        }
    }
}

impl FusedIterator for ImportedDlls<'_> {}

/// One import of a descriptor: by name or by ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportedName<'a> {
    /// By name (the hint/name entry's name, without NUL).
    Name(&'a [u8]),
    /// By ordinal (the low 16 bits of the thunk).
    Ordinal(u16),
}

/// Iterator over the imports of one descriptor; see [`PeImage::imported_names`].
#[derive(Debug, Clone)]
pub struct ImportedNames<'a> {
    image: PeImage<'a>,
    dll: ImportedDll<'a>,
    /// Index of the next thunk.
    index: usize,
    done: bool,
}

impl<'a> ImportedNames<'a> {
    pub(super) const fn new(image: PeImage<'a>, dll: ImportedDll<'a>) -> Self {
        Self {
            image,
            dll,
            index: 0,
            done: false,
        }
    }

    fn step(&mut self) -> Result<Option<ImportedName<'a>>, PeError> {
        if self.index >= MAX_THUNKS {
            return Err(PeError::TooManyThunks { limit: MAX_THUNKS });
        }
        let image = self.image.bytes();
        // Names only come from the lookup table: in a loaded image the IAT is bound.
        let table = self.dll.lookup_table_rva;
        if table == 0 {
            return Err(PeError::MissingLookupTable {
                descriptor: self.dll.descriptor,
            });
        }
        let what = Structure::ImportLookupTable;
        let thunk_at = self
            .index
            .checked_mul(THUNK_SIZE)
            .and_then(|delta| to_usize(table).checked_add(delta));
        let value = thunk_at
            .and_then(|at| read::<U64>(image, at, what).ok())
            .map(U64::get)
            .ok_or(PeError::UnterminatedThunkTable { what, rva: table })?;
        if value == 0 {
            return Ok(None);
        }
        self.index = self.index.saturating_add(1);
        if value & ORDINAL_FLAG != 0 {
            return Ok(Some(ImportedName::Ordinal(
                u16::try_from(value & 0xFFFF).unwrap_or(u16::MAX),
            )));
        }
        let at = thunk_at.unwrap_or(usize::MAX);
        if value & !NAME_RVA_MASK != 0 {
            return Err(PeError::BadThunk { at, value });
        }
        let hint_rva = u32::try_from(value).unwrap_or(u32::MAX);
        let name_rva = hint_rva
            .checked_add(2)
            .filter(|&rva| to_usize(rva) < image.len())
            .ok_or(PeError::RvaOutOfImage {
                what: Structure::HintName,
                rva: hint_rva,
                at,
            })?;
        c_string(image, name_rva, Structure::HintName, at)
            .map(|name| Some(ImportedName::Name(name)))
    }
}

impl<'a> Iterator for ImportedNames<'a> {
    type Item = Result<ImportedName<'a>, PeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(name)) => Some(Ok(name)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

impl FusedIterator for ImportedNames<'_> {}

/// The `ntoskrnl.exe` descriptor being walked.
#[derive(Debug, Clone, Copy)]
struct Walk<'a> {
    dll: ImportedDll<'a>,
    /// Index of the next thunk.
    index: usize,
}

enum Step<'a> {
    Slot(IatSlot<'a>),
    Skip,
    End,
}

/// Iterator over the hooked IAT slots of an image; see [`PeImage::hooked_slots`].
pub struct HookedSlots<'a, 'r> {
    image: PeImage<'a>,
    dlls: ImportedDlls<'a>,
    resolver: Option<&'r dyn OrdinalResolver>,
    current: Option<Walk<'a>>,
    thunks: usize,
    unresolved: usize,
    failed: bool,
}

impl core::fmt::Debug for HookedSlots<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HookedSlots")
            .field("dlls", &self.dlls)
            .field("has_resolver", &self.resolver.is_some())
            .field("current", &self.current)
            .field("thunks", &self.thunks)
            .field("unresolved", &self.unresolved)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<'a, 'r> HookedSlots<'a, 'r> {
    pub(super) const fn new(image: PeImage<'a>, resolver: Option<&'r dyn OrdinalResolver>) -> Self {
        Self {
            image,
            dlls: ImportedDlls::new(image),
            resolver,
            current: None,
            thunks: 0,
            unresolved: 0,
            failed: false,
        }
    }

    /// Thunks of `ntoskrnl.exe` descriptors walked so far, terminators included.
    #[must_use]
    pub const fn ntoskrnl_thunks(&self) -> usize {
        self.thunks
    }

    /// By-ordinal `ntoskrnl.exe` imports met so far that could not be named.
    #[must_use]
    pub const fn unresolved_ordinals(&self) -> usize {
        self.unresolved
    }

    /// The hooked routine a non-zero thunk imports, with its ordinal when imported by
    /// ordinal; `None` when it imports something else, or an ordinal that cannot be
    /// named (counted).
    fn thunk_routine(
        &mut self,
        value: u64,
        thunk_at: usize,
    ) -> Result<Option<(HookedRoutine, Option<u16>)>, PeError> {
        if value & ORDINAL_FLAG != 0 {
            // By ordinal: the low 16 bits; the loader ignores the others.
            let ordinal = u16::try_from(value & 0xFFFF).unwrap_or(u16::MAX);
            let name = self.resolver.and_then(|resolver| resolver.name_of(ordinal));
            if name.is_none() {
                self.unresolved = self.unresolved.saturating_add(1);
            }
            return Ok(name
                .and_then(HookedRoutine::from_name)
                .map(|routine| (routine, Some(ordinal))));
        }
        if value & !NAME_RVA_MASK != 0 {
            return Err(PeError::BadThunk {
                at: thunk_at,
                value,
            });
        }
        let image = self.image.bytes();
        let hint_rva = u32::try_from(value).unwrap_or(u32::MAX);
        // IMAGE_IMPORT_BY_NAME: a 2-byte hint, then the name.
        let out_of_image = PeError::RvaOutOfImage {
            what: Structure::HintName,
            rva: hint_rva,
            at: thunk_at,
        };
        let name_rva = hint_rva
            .checked_add(2)
            .filter(|&rva| to_usize(rva) < image.len())
            .ok_or(out_of_image)?;
        let name =
            c_string(image, name_rva, Structure::HintName, thunk_at).map_err(
                |error| match error {
                    PeError::UnterminatedName { what, .. } => PeError::UnterminatedName {
                        what,
                        rva: hint_rva,
                    },
                    other => other,
                },
            )?;
        Ok(HookedRoutine::from_name(name).map(|routine| (routine, None)))
    }

    /// Reads the next thunk of `walk` and says what it is.
    fn step(&mut self, walk: &mut Walk<'a>) -> Result<Step<'a>, PeError> {
        if self.thunks >= MAX_THUNKS {
            return Err(PeError::TooManyThunks { limit: MAX_THUNKS });
        }
        self.thunks = self.thunks.saturating_add(1);
        let image = self.image.bytes();
        let dll = walk.dll;
        let first = walk.index == 0;
        let delta = walk.index.checked_mul(THUNK_SIZE);

        let thunk_at = delta.and_then(|delta| to_usize(dll.lookup_table_rva).checked_add(delta));
        let value = thunk_at
            .and_then(|at| read::<U64>(image, at, Structure::ImportLookupTable).ok())
            .map(U64::get)
            .ok_or_else(|| {
                if first {
                    PeError::RvaOutOfImage {
                        what: Structure::ImportLookupTable,
                        rva: dll.lookup_table_rva,
                        at: dll.lookup_field(),
                    }
                } else {
                    PeError::UnterminatedThunkTable {
                        what: Structure::ImportLookupTable,
                        rva: dll.lookup_table_rva,
                    }
                }
            })?;
        if value == 0 {
            return Ok(Step::End);
        }
        let thunk_at = thunk_at.unwrap_or(usize::MAX);

        let slot_rva = delta
            .and_then(|delta| u32::try_from(delta).ok())
            .and_then(|delta| dll.address_table_rva.checked_add(delta))
            .filter(|&rva| {
                to_usize(rva)
                    .checked_add(THUNK_SIZE)
                    .is_some_and(|end| end <= image.len())
            })
            .ok_or_else(|| {
                if first {
                    PeError::RvaOutOfImage {
                        what: Structure::ImportAddressTable,
                        rva: dll.address_table_rva,
                        at: dll.address_field(),
                    }
                } else {
                    PeError::UnterminatedThunkTable {
                        what: Structure::ImportAddressTable,
                        rva: dll.address_table_rva,
                    }
                }
            })?;
        walk.index = walk.index.saturating_add(1);

        let Some((routine, ordinal)) = self.thunk_routine(value, thunk_at)? else {
            return Ok(Step::Skip);
        };
        if self.image.section_of_rva(slot_rva).is_none() {
            return Err(PeError::SlotOutsideSections { rva: slot_rva });
        }
        Ok(Step::Slot(IatSlot {
            rva: slot_rva,
            routine,
            delay_load: dll.delay_load,
            dll_name: dll.dll_name,
            ordinal,
        }))
    }
}

impl<'a> Iterator for HookedSlots<'a, '_> {
    type Item = Result<IatSlot<'a>, PeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(mut walk) = self.current.take() {
                match self.step(&mut walk) {
                    Ok(Step::Slot(slot)) => {
                        self.current = Some(walk);
                        return Some(Ok(slot));
                    }
                    Ok(Step::Skip) => self.current = Some(walk),
                    Ok(Step::End) => {}
                    Err(error) => {
                        self.failed = true;
                        return Some(Err(error));
                    }
                }
                continue;
            }
            match self.dlls.next()? {
                Ok(dll) if dll.is_ntoskrnl() => {
                    if dll.lookup_table_rva == 0 {
                        self.failed = true;
                        return Some(Err(PeError::MissingLookupTable {
                            descriptor: dll.descriptor,
                        }));
                    }
                    self.current = Some(Walk { dll, index: 0 });
                }
                Ok(_) => {}
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

impl FusedIterator for HookedSlots<'_, '_> {}
