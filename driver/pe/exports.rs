//! The export directory: names and ordinals of what an image exports.
//!
//! Its use here is to name the by-ordinal imports of target drivers: parse
//! `ntoskrnl.exe`'s exports once, keep a [`RoutineOrdinals`], and hand it to
//! [`PeImage::hooked_slots`] as the [`OrdinalResolver`].

use core::iter::FusedIterator;

use zerocopy::byteorder::little_endian::U16;

use super::{
    c_string, raw, read, read_u32, to_usize, Directory, HookedRoutine, OrdinalResolver, PeError,
    PeImage, Structure, MAX_EXPORTS,
};

/// Where an export leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportTarget<'a> {
    /// Code or data in the image, at this RVA.
    Rva(u32),
    /// A forwarder string such as `HAL.KeStallExecutionProcessor`, without NUL.
    Forwarder(&'a [u8]),
}

/// One named export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedName<'a> {
    /// The name, without NUL.
    pub name: &'a [u8],
    /// Its ordinal, `Base`-biased as import thunks spell it. Ordinals above `u16::MAX`
    /// (from a large `Base`) cannot be imported by ordinal.
    pub ordinal: u32,
}

/// A parsed export directory whose three tables were checked to lie in the image.
#[derive(Debug, Clone, Copy)]
pub struct Exports<'a> {
    image: &'a [u8],
    directory: usize,
    directory_rva: u32,
    directory_size: u32,
    name_rva: u32,
    base: u32,
    functions: usize,
    function_count: u32,
    names: usize,
    name_count: u32,
    ordinals: usize,
}

/// Checks that `count` entries of `entry_size` bytes at `rva` lie in `image`, and returns
/// the offset; `at` is the offset of the field that holds `rva`.
fn table(
    image: &[u8],
    rva: u32,
    count: u32,
    entry_size: usize,
    what: Structure,
    at: usize,
) -> Result<usize, PeError> {
    let start = to_usize(rva);
    to_usize(count)
        .checked_mul(entry_size)
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= image.len())
        .map(|_| start)
        .ok_or(PeError::RvaOutOfImage { what, rva, at })
}

impl<'a> Exports<'a> {
    pub(super) fn new(image: PeImage<'a>) -> Result<Option<Self>, PeError> {
        let Some(dir) = image.data_directory(Directory::Export) else {
            return Ok(None);
        };
        if dir.rva == 0 {
            return Ok(None);
        }
        let bytes = image.bytes();
        let directory = to_usize(dir.rva);
        let end = directory.checked_add(to_usize(dir.size));
        if end.is_none_or(|end| end > bytes.len()) {
            return Err(PeError::DirectoryOutOfImage {
                directory: Directory::Export,
                rva: dir.rva,
                size: dir.size,
            });
        }
        let header: raw::ExportDirectory = read(bytes, directory, Structure::ExportDirectory)?;
        let function_count = header.number_of_functions.get();
        let name_count = header.number_of_names.get();
        for count in [function_count, name_count] {
            if to_usize(count) > MAX_EXPORTS {
                return Err(PeError::TooManyExports {
                    count,
                    limit: MAX_EXPORTS,
                });
            }
        }
        let field = |delta: usize| directory.saturating_add(delta);
        let functions = table(
            bytes,
            header.address_of_functions.get(),
            function_count,
            4,
            Structure::ExportAddressTable,
            field(28),
        )?;
        let names = table(
            bytes,
            header.address_of_names.get(),
            name_count,
            4,
            Structure::ExportNameTable,
            field(32),
        )?;
        let ordinals = table(
            bytes,
            header.address_of_name_ordinals.get(),
            name_count,
            2,
            Structure::ExportOrdinalTable,
            field(36),
        )?;
        Ok(Some(Self {
            image: bytes,
            directory,
            directory_rva: dir.rva,
            directory_size: dir.size,
            name_rva: header.name.get(),
            base: header.base.get(),
            functions,
            function_count,
            names,
            name_count,
            ordinals,
        }))
    }

    /// The image's own name as its export directory records it (e.g. `ntoskrnl.exe`).
    ///
    /// # Errors
    ///
    /// [`PeError::RvaOutOfImage`] or [`PeError::UnterminatedName`].
    pub fn dll_name(&self) -> Result<&'a [u8], PeError> {
        c_string(
            self.image,
            self.name_rva,
            Structure::ExportName,
            self.directory.saturating_add(12),
        )
    }

    /// `Base`: the ordinal of the first export address table entry.
    #[must_use]
    pub const fn ordinal_base(&self) -> u32 {
        self.base
    }

    /// `NumberOfFunctions`.
    #[must_use]
    pub const fn function_count(&self) -> u32 {
        self.function_count
    }

    /// `NumberOfNames`.
    #[must_use]
    pub const fn name_count(&self) -> u32 {
        self.name_count
    }

    /// Index into the export address table of `ordinal`, if it is in range.
    fn function_index(&self, ordinal: u16) -> Option<u32> {
        u32::from(ordinal)
            .checked_sub(self.base)
            .filter(|&index| index < self.function_count)
    }

    /// Where export `ordinal` leads; `None` when the ordinal is out of range or unused.
    ///
    /// # Errors
    ///
    /// A [`PeError`] when a forwarder string is malformed.
    pub fn target(&self, ordinal: u16) -> Result<Option<ExportTarget<'a>>, PeError> {
        let Some(index) = self.function_index(ordinal) else {
            return Ok(None);
        };
        let at = to_usize(index)
            .checked_mul(4)
            .and_then(|delta| self.functions.checked_add(delta))
            .unwrap_or(usize::MAX);
        let rva = read_u32(self.image, at, Structure::ExportAddressTable)?;
        if rva == 0 {
            return Ok(None);
        }
        let forwarded = rva
            .checked_sub(self.directory_rva)
            .is_some_and(|delta| delta < self.directory_size);
        if forwarded {
            let name = c_string(self.image, rva, Structure::ExportName, at)?;
            Ok(Some(ExportTarget::Forwarder(name)))
        } else {
            Ok(Some(ExportTarget::Rva(rva)))
        }
    }

    /// Named export `index` of the name table.
    fn entry(&self, index: u32) -> Result<ExportedName<'a>, PeError> {
        let index = to_usize(index);
        let name_at = index
            .checked_mul(4)
            .and_then(|delta| self.names.checked_add(delta))
            .unwrap_or(usize::MAX);
        let ordinal_at = index
            .checked_mul(2)
            .and_then(|delta| self.ordinals.checked_add(delta))
            .unwrap_or(usize::MAX);
        let name_rva = read_u32(self.image, name_at, Structure::ExportNameTable)?;
        let name = c_string(self.image, name_rva, Structure::ExportName, name_at)?;
        let unbiased = read::<U16>(self.image, ordinal_at, Structure::ExportOrdinalTable)?.get();
        Ok(ExportedName {
            name,
            ordinal: self.base.saturating_add(u32::from(unbiased)),
        })
    }

    /// The named exports, in name table order (sorted by name in a well-formed image).
    ///
    /// The iterator yields at most one error and then ends.
    #[must_use]
    pub const fn names(&self) -> ExportedNames<'a> {
        ExportedNames {
            exports: *self,
            next: 0,
            failed: false,
        }
    }

    /// The name exported at `ordinal` (`Base`-biased, as an import thunk holds it), or
    /// `None` when it is exported by ordinal only or not at all. Walks the name table.
    ///
    /// # Errors
    ///
    /// The first malformed name table entry met.
    pub fn name_of_ordinal(&self, ordinal: u16) -> Result<Option<&'a [u8]>, PeError> {
        if self.function_index(ordinal).is_none() {
            return Ok(None);
        }
        for entry in self.names() {
            let entry = entry?;
            if entry.ordinal == u32::from(ordinal) {
                return Ok(Some(entry.name));
            }
        }
        Ok(None)
    }

    /// The ordinal of the export named `name` (exact, without NUL), or `None`. Walks the
    /// name table.
    ///
    /// # Errors
    ///
    /// The first malformed name table entry met.
    pub fn ordinal_of_name(&self, name: &[u8]) -> Result<Option<u16>, PeError> {
        for entry in self.names() {
            let entry = entry?;
            if entry.name == name {
                return Ok(u16::try_from(entry.ordinal).ok());
            }
        }
        Ok(None)
    }
}

/// Iterator over the named exports; see [`Exports::names`].
#[derive(Debug, Clone)]
pub struct ExportedNames<'a> {
    exports: Exports<'a>,
    next: u32,
    failed: bool,
}

impl<'a> Iterator for ExportedNames<'a> {
    type Item = Result<ExportedName<'a>, PeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.exports.name_count {
            return None;
        }
        let entry = self.exports.entry(self.next);
        self.next = self.next.saturating_add(1);
        if entry.is_err() {
            self.failed = true;
        }
        Some(entry)
    }
}

impl FusedIterator for ExportedNames<'_> {}

/// The ordinals at which `ntoskrnl.exe` exports each [`HookedRoutine`]: a resolver for
/// by-ordinal imports that costs no walk per lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutineOrdinals {
    ordinals: [Option<u16>; HookedRoutine::COUNT],
}

impl RoutineOrdinals {
    /// Reads the ordinals of the hooked routines from ntoskrnl's exports in one walk of
    /// its name table.
    ///
    /// # Errors
    ///
    /// The first malformed name table entry met.
    pub fn from_exports(exports: &Exports<'_>) -> Result<Self, PeError> {
        let mut found = Self::default();
        for entry in exports.names() {
            let entry = entry?;
            if let Some(slot) = HookedRoutine::from_name(entry.name)
                .and_then(|routine| found.ordinals.get_mut(routine.index()))
            {
                *slot = u16::try_from(entry.ordinal).ok();
            }
        }
        Ok(found)
    }

    /// The ordinal of `routine`, if exported by name.
    #[must_use]
    pub fn ordinal(&self, routine: HookedRoutine) -> Option<u16> {
        self.ordinals.get(routine.index()).copied().flatten()
    }

    /// The hooked routine exported at `ordinal`, if any.
    #[must_use]
    pub fn routine_of(&self, ordinal: u16) -> Option<HookedRoutine> {
        HookedRoutine::ALL
            .into_iter()
            .find(|&routine| self.ordinal(routine) == Some(ordinal))
    }
}

/// Names only the hooked routines.
impl OrdinalResolver for RoutineOrdinals {
    fn name_of(&self, ordinal: u16) -> Option<&[u8]> {
        self.routine_of(ordinal)
            .map(|routine| routine.name().as_bytes())
    }
}

/// Walks the name table; a malformed entry ends the walk as "unknown".
impl OrdinalResolver for Exports<'_> {
    fn name_of(&self, ordinal: u16) -> Option<&[u8]> {
        self.name_of_ordinal(ordinal).ok().flatten()
    }
}
