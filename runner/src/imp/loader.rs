//! The image loader: maps a PE32+ native image file into this process the way the NT
//! loader maps a driver — headers and sections at their RVAs, base relocations applied
//! when it cannot sit at its preferred base, the /GS cookie initialised, every import
//! (regular and delay-load) bound, page protections from the section characteristics.
//!
//! Headers, sections and import tables are read with [`iosv::pe`], the parser the
//! kernel component uses; only the file layout (where each section's bytes are in the
//! file), base relocations and the load configuration's cookie are read here.
//!
//! An import the host does not implement is bound to a **lazy stub**: a few bytes of
//! code that, when called, report `driver X called DLL!Name, which the host does not
//! implement` to the parent and end the child ([`crate::ExitKind::Unimplemented`]).

use iosv::pe::{Directory, ImportedName, PeImage, MACHINE_AMD64};
use std::ffi::c_void;
use std::sync::{Mutex, PoisonError};

const PAGE: usize = 0x1000;
/// `IMAGE_REL_BASED_ABSOLUTE`: padding.
const REL_ABSOLUTE: u16 = 0;
/// `IMAGE_REL_BASED_DIR64`.
const REL_DIR64: u16 = 10;
/// `IMAGE_FILE_RELOCS_STRIPPED`.
const FILE_RELOCS_STRIPPED: u16 = 0x0001;
/// The /GS cookie the compilers put in the image; the NT loader replaces it.
pub const DEFAULT_SECURITY_COOKIE: u64 = 0x0000_2B99_2DDF_A232;
/// Highest user-mode address an image may be mapped at (x86-64, 47-bit user space).
const USER_LIMIT: u64 = 0x0000_7FFF_FFFF_0000;
const SCN_MEM_EXECUTE: u32 = 0x2000_0000;
const SCN_MEM_READ: u32 = 0x4000_0000;
const SCN_MEM_WRITE: u32 = 0x8000_0000;

/// Why an image could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The PE parser refused the headers or import tables.
    #[error("not a loadable PE32+ image: {0}")]
    Pe(iosv::pe::PeError),
    /// Something the loader checks itself.
    #[error("{0}")]
    Refused(String),
    /// `mmap`/`mprotect` failed.
    #[error("cannot map the image: {0}")]
    Map(std::io::Error),
}

impl From<iosv::pe::PeError> for LoadError {
    fn from(e: iosv::pe::PeError) -> Self {
        Self::Pe(e)
    }
}

/// One bound import slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The DLL as the descriptor names it.
    pub dll: String,
    /// The routine name, or `#ordinal`.
    pub name: String,
    /// Absolute address of the IAT slot.
    pub slot: usize,
    /// Whether the host implements it (otherwise the slot holds a lazy stub).
    pub implemented: bool,
    /// Whether it is a delay-load import.
    pub delay_load: bool,
}

/// An image mapped in this process. It stays mapped until the process exits: code
/// outliving the driver (a stale pointer) must not land in someone else's memory.
#[derive(Debug)]
pub struct LoadedImage {
    /// The file name (e.g. `fixture.sys`): the driver's name for iosv.
    pub name: String,
    /// Where the image is mapped.
    pub base: usize,
    /// `SizeOfImage`, rounded up to pages.
    pub size: usize,
    /// Absolute address of the entry point (`DriverEntry`, or `GsDriverEntry`).
    pub entry: usize,
    /// `ImageBase` as the headers ask for it.
    pub preferred_base: u64,
    /// Whether relocations were applied (loaded away from the preferred base).
    pub relocated: bool,
    /// Every import slot, bound.
    pub imports: Vec<Import>,
    /// The /GS cookie the loader wrote, if the image has a load configuration cookie.
    pub security_cookie: Option<u64>,
    /// Protection (`PROT_*`) of each page, for writes through [`Self::write_slot`].
    page_prot: Vec<i32>,
}

impl LoadedImage {
    /// Whether `address` lies in the image.
    #[must_use]
    pub fn contains(&self, address: usize) -> bool {
        address >= self.base && address - self.base < self.size
    }

    /// The image's bytes.
    ///
    /// # Safety
    /// No slot write ([`Self::write_slot`]) may happen while the slice is alive.
    #[must_use]
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: [base, base + size) is mapped readable for the life of the process
        // (never unmapped, see the type's docs); the caller excludes concurrent writes
        // through this module for the life of the slice.
        unsafe { std::slice::from_raw_parts(self.base as *const u8, self.size) }
    }

    /// Atomically replaces the pointer-sized slot at `address` with `new` if it holds
    /// `current`, making its page writable for the moment. Returns the value found.
    ///
    /// # Errors
    /// `Err(None)` when `address` is not an aligned slot of the image or the page cannot
    /// be made writable; `Err(Some(found))` when the slot does not hold `current`.
    pub fn write_slot(
        &self,
        address: usize,
        current: usize,
        new: usize,
    ) -> Result<(), Option<usize>> {
        if !self.contains(address) || !address.is_multiple_of(8) || !self.contains(address + 7) {
            return Err(None);
        }
        let page = (address - self.base) / PAGE;
        let prot = self.page_prot.get(page).copied().ok_or(None)?;
        // Serialises the make-writable / write / restore sequence: without it, one
        // writer's restore could make the page read-only under another's write (a fault
        // in host code).
        static SLOT_WRITES: Mutex<()> = Mutex::new(());
        let _serial = SLOT_WRITES.lock().unwrap_or_else(PoisonError::into_inner);
        let page_addr = (self.base + page * PAGE) as *mut c_void;
        let writable = prot & libc::PROT_WRITE != 0;
        if !writable {
            // Execute access is dropped meanwhile (W^X): slots are written at attach and
            // detach, when no driver code runs; code sharing the page would fault and be
            // reported, never run from a writable page.
            let writable_prot = (prot | libc::PROT_WRITE) & !libc::PROT_EXEC;
            // SAFETY: the page is one of the image's own pages, mapped for the life of
            // the process; changing its protection changes no byte, and no Rust reference
            // into the image exists (bytes() forbids slot writes while one lives).
            if unsafe { libc::mprotect(page_addr, PAGE, writable_prot) } != 0 {
                return Err(None);
            }
        }
        // SAFETY: `address` is 8-aligned and inside the mapped image (checked above); the
        // page is writable now; AtomicUsize has the layout of usize.
        let slot = unsafe { &*(address as *const std::sync::atomic::AtomicUsize) };
        let r = slot
            .compare_exchange(
                current,
                new,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .map(|_| ())
            .map_err(Some);
        if !writable {
            // SAFETY: as above; restores the page's protection.
            unsafe { libc::mprotect(page_addr, PAGE, prot) };
        }
        r
    }

    /// Reads the pointer-sized slot at `address` (0 if it is not a slot of the image).
    #[must_use]
    pub fn read_slot(&self, address: usize) -> usize {
        if !self.contains(address) || !address.is_multiple_of(8) || !self.contains(address + 7) {
            return 0;
        }
        // SAFETY: 8-aligned, inside the image, which is mapped readable for the life of
        // the process.
        unsafe {
            (*(address as *const std::sync::atomic::AtomicUsize))
                .load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// The module+offset text of `address` (`name+0x123`), or `None` outside the image.
    #[must_use]
    pub fn describe(&self, address: usize) -> Option<String> {
        self.contains(address)
            .then(|| format!("{}+{:#x}", self.name, address - self.base))
    }
}

/// How imports are bound: the address of a host routine for `dll!name`, if any.
pub type Resolver<'a> = &'a dyn Fn(&str, &str) -> Option<usize>;

/// Loads the image file at `path`. `resolve` binds imports; what it does not know gets a
/// lazy stub. `cookie` is the /GS cookie to write (the NT loader derives it from time and
/// counters; callers pass a random value).
///
/// # Errors
/// A [`LoadError`] naming what is wrong with the file.
pub fn load(
    path: &std::path::Path,
    resolve: Resolver<'_>,
    cookie: u64,
) -> Result<LoadedImage, LoadError> {
    let file = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "driver.sys".into());

    // The headers alone, in a buffer of SizeOfImage bytes, are enough for the parser.
    let (size_of_image, size_of_headers) = header_sizes(&file)?;
    let mut staging = vec![0u8; size_of_image];
    let headers = size_of_headers.min(file.len()).min(size_of_image);
    staging[..headers].copy_from_slice(&file[..headers]);
    let pe = PeImage::parse(&staging)?;
    if pe.machine() != MACHINE_AMD64 {
        return Err(LoadError::Refused(format!(
            "machine {:#06x} is not x64 (0x8664)",
            pe.machine()
        )));
    }
    let preferred = pe.image_base();
    let entry_rva = pe.entry_point() as usize;
    if entry_rva == 0 || entry_rva >= size_of_image {
        return Err(LoadError::Refused(format!(
            "the entry point RVA {entry_rva:#x} is not inside the image (SizeOfImage \
             {size_of_image:#x})"
        )));
    }
    let relocs = pe
        .data_directory(Directory::BaseRelocation)
        .filter(|d| d.rva != 0 && d.size != 0);
    let load_config = pe
        .data_directory(Directory::LoadConfig)
        .filter(|d| d.rva != 0 && d.size != 0);
    let sections: Vec<(u32, u32, u32)> = pe
        .sections()
        .map(|s| (s.virtual_address, s.size, s.characteristics))
        .collect();
    let file_ranges: Vec<(String, u32, u32, u32, u32)> = (0..pe.section_count())
        .filter_map(|i| {
            let s = pe.section(i)?;
            let (raw, raw_size) = pe.section_file_range(i)?;
            let name = String::from_utf8_lossy(&s.name)
                .trim_end_matches('\0')
                .to_string();
            Some((name, s.virtual_address, s.size, raw, raw_size))
        })
        .collect();
    for (name, va, size, raw, raw_size) in file_ranges {
        let take = raw_size.min(size) as usize;
        if take == 0 {
            continue;
        }
        let from = file
            .get(raw as usize..(raw as usize).saturating_add(take))
            .ok_or_else(|| {
                LoadError::Refused(format!("section {name} lies past the end of the file"))
            })?;
        let at = va as usize;
        staging
            .get_mut(at..at + take)
            .ok_or_else(|| LoadError::Refused("section outside SizeOfImage".into()))?
            .copy_from_slice(from);
    }
    let size = size_of_image.div_ceil(PAGE) * PAGE;
    let page_prot = page_protections(size, size_of_headers, &sections);
    if let Some(page) = page_prot
        .iter()
        .position(|&p| p & libc::PROT_WRITE != 0 && p & libc::PROT_EXEC != 0)
    {
        // W^X, as HVCI enforces it: no page is ever both writable and executable.
        return Err(LoadError::Refused(format!(
            "the page at RVA {:#x} would be both writable and executable (a section with \
             MEM_WRITE and MEM_EXECUTE, or a writable and an executable section sharing a \
             page); iosv maps images W^X, as Windows does under HVCI",
            page * PAGE
        )));
    }
    if page_prot
        .get(entry_rva / PAGE)
        .is_none_or(|&p| p & libc::PROT_EXEC == 0)
    {
        return Err(LoadError::Refused(format!(
            "the entry point RVA {entry_rva:#x} is not in an executable section"
        )));
    }
    let stripped = file_characteristics(&file) & FILE_RELOCS_STRIPPED != 0;
    let imports = collect_imports(&PeImage::parse(&staging)?)?;

    // Map at the preferred base if it is a free user address, else anywhere.
    let (base, relocated) = map_region(preferred, size)?;
    let unmap = || {
        // SAFETY: the region was mapped by map_region above with this size; nothing
        // points into it yet (no code ran from it, no slot or address was handed out).
        unsafe { libc::munmap(base as *mut c_void, size) };
    };
    let delta = (base as u64).wrapping_sub(preferred);
    if relocated && (relocs.is_none() || stripped) {
        unmap();
        return Err(LoadError::Refused(format!(
            "the image must be loaded at its preferred base {preferred:#x}, which is not \
             available here, and it has no base relocations (.reloc) to load it elsewhere"
        )));
    }
    let fixed = (|| {
        if relocated {
            if let Some(dir) = relocs {
                apply_relocations(&mut staging, dir.rva as usize, dir.size as usize, delta)?;
            }
        }
        match load_config {
            Some(dir) => set_cookie(&mut staging, dir.rva as usize, base as u64, cookie),
            None => Ok(None),
        }
    })();
    let security_cookie = match fixed {
        Ok(c) => c,
        Err(e) => {
            unmap();
            return Err(e);
        }
    };

    let mut bound = Vec::with_capacity(imports.len());
    for (dll, what, rva, delay_load) in imports {
        let routine = what.clone();
        let address = resolve(&dll, &routine);
        let target = match address {
            Some(a) => a,
            None => stubs::make(&name, &dll, &routine).map_err(LoadError::Map)?,
        };
        let at = rva as usize;
        staging
            .get_mut(at..at + 8)
            .ok_or_else(|| LoadError::Refused(format!("import slot {rva:#x} outside the image")))?
            .copy_from_slice(&(target as u64).to_le_bytes());
        bound.push(Import {
            dll,
            name: routine,
            slot: base + at,
            implemented: address.is_some(),
            delay_load,
        });
    }

    // SAFETY: [base, base + size) was mapped read-write by map_region, is page-aligned and
    // at least size_of_image long; staging is a distinct allocation of size_of_image bytes.
    unsafe { std::ptr::copy_nonoverlapping(staging.as_ptr(), base as *mut u8, size_of_image) };

    for (i, prot) in page_prot.iter().enumerate() {
        // SAFETY: every page is one of the region's own; only its protection changes.
        let r = unsafe { libc::mprotect((base + i * PAGE) as *mut c_void, PAGE, *prot) };
        if r != 0 {
            return Err(LoadError::Map(std::io::Error::last_os_error()));
        }
    }
    Ok(LoadedImage {
        name,
        base,
        size,
        entry: base + entry_rva,
        preferred_base: preferred,
        relocated,
        imports: bound,
        security_cookie,
        page_prot,
    })
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `SizeOfImage` and `SizeOfHeaders` from the file's optional header (checked again by
/// the parser once the staging buffer exists).
fn header_sizes(file: &[u8]) -> Result<(usize, usize), LoadError> {
    let bad = || LoadError::Refused("no PE headers (too short, or no MZ/PE signature)".into());
    if le16(file, 0) != Some(0x5A4D) {
        return Err(bad());
    }
    let nt = le32(file, 0x3C).ok_or_else(bad)? as usize;
    if le32(file, nt) != Some(0x4550) {
        return Err(bad());
    }
    let opt = nt + 24;
    let size_of_image = le32(file, opt + 56).ok_or_else(bad)? as usize;
    let size_of_headers = le32(file, opt + 60).ok_or_else(bad)? as usize;
    if size_of_image == 0 || size_of_image > 256 << 20 {
        return Err(LoadError::Refused(format!(
            "SizeOfImage {size_of_image:#x} is out of range (1 byte to 256 MiB)"
        )));
    }
    Ok((size_of_image, size_of_headers))
}

fn file_characteristics(file: &[u8]) -> u16 {
    le32(file, 0x3C)
        .and_then(|nt| le16(file, nt as usize + 22))
        .unwrap_or(0)
}

type RawImport = (String, String, u32, bool);

fn collect_imports(pe: &PeImage<'_>) -> Result<Vec<RawImport>, LoadError> {
    let mut out = Vec::new();
    for dll in pe.imported_dlls() {
        let dll = dll?;
        let dll_name = String::from_utf8_lossy(dll.dll_name).into_owned();
        for (i, name) in pe.imported_names(dll).enumerate() {
            let routine = match name? {
                ImportedName::Name(n) => String::from_utf8_lossy(n).into_owned(),
                ImportedName::Ordinal(o) => format!("#{o}"),
            };
            let rva = dll
                .address_table_rva
                .checked_add(u32::try_from(i * 8).unwrap_or(u32::MAX))
                .ok_or_else(|| LoadError::Refused("import address table overflows".into()))?;
            out.push((dll_name.clone(), routine, rva, dll.delay_load));
        }
    }
    Ok(out)
}

/// Maps `size` bytes read-write at `preferred` if that is a free user-mode address, else
/// anywhere. Returns the base and whether it differs from `preferred`.
fn map_region(preferred: u64, size: usize) -> Result<(usize, bool), LoadError> {
    let end = preferred.checked_add(size as u64);
    if preferred.is_multiple_of(PAGE as u64)
        && preferred >= 0x1_0000
        && end.is_some_and(|e| e <= USER_LIMIT)
    {
        // SAFETY: an anonymous private mapping; MAP_FIXED_NOREPLACE never replaces an
        // existing mapping (it fails instead).
        let p = unsafe {
            libc::mmap(
                preferred as *mut c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            if p as u64 == preferred {
                return Ok((p as usize, false));
            }
            // An old kernel that ignores MAP_FIXED_NOREPLACE placed it elsewhere.
            // SAFETY: p was just mapped with this size and nothing points into it.
            unsafe { libc::munmap(p, size) };
        }
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's choice.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(LoadError::Map(std::io::Error::last_os_error()));
    }
    Ok((p as usize, true))
}

fn apply_relocations(
    image: &mut [u8],
    rva: usize,
    size: usize,
    delta: u64,
) -> Result<(), LoadError> {
    let bad = |what: &str| LoadError::Refused(format!("bad base relocations: {what}"));
    let end = rva
        .checked_add(size)
        .filter(|&e| e <= image.len())
        .ok_or_else(|| bad("directory outside the image"))?;
    let mut at = rva;
    while at + 8 <= end {
        let page = le32(image, at).ok_or_else(|| bad("truncated block"))? as usize;
        let block = le32(image, at + 4).ok_or_else(|| bad("truncated block"))? as usize;
        if block < 8 || at + block > end {
            if block == 0 {
                break;
            }
            return Err(bad("block size out of range"));
        }
        for entry in (at + 8..at + block).step_by(2) {
            let e = le16(image, entry).ok_or_else(|| bad("truncated entry"))?;
            let (kind, offset) = (e >> 12, usize::from(e & 0xFFF));
            match kind {
                REL_ABSOLUTE => {}
                REL_DIR64 => {
                    let target = page + offset;
                    let value =
                        le64(image, target).ok_or_else(|| bad("target outside the image"))?;
                    image[target..target + 8]
                        .copy_from_slice(&value.wrapping_add(delta).to_le_bytes());
                }
                other => {
                    return Err(bad(&format!(
                        "relocation type {other} is not supported on x64"
                    )))
                }
            }
        }
        at += block;
    }
    Ok(())
}

/// Writes the /GS cookie where the load configuration says it lives, as the NT loader
/// does: only when the image still holds the compiler's default (or 0), with the top 16
/// bits clear and never the default itself.
fn set_cookie(
    image: &mut [u8],
    rva: usize,
    base: u64,
    seed: u64,
) -> Result<Option<u64>, LoadError> {
    // IMAGE_LOAD_CONFIG_DIRECTORY64: Size at +0, SecurityCookie (a VA) at +0x58.
    let Some(size) = le32(image, rva) else {
        return Ok(None);
    };
    if (size as usize) < 0x60 {
        return Ok(None);
    }
    let Some(va) = le64(image, rva + 0x58) else {
        return Ok(None);
    };
    if va == 0 {
        return Ok(None);
    }
    let at = va
        .checked_sub(base)
        .and_then(|o| usize::try_from(o).ok())
        .filter(|&o| o.checked_add(8).is_some_and(|end| end <= image.len()))
        .ok_or_else(|| {
            LoadError::Refused(format!(
                "the /GS cookie address {va:#x} is outside the image"
            ))
        })?;
    let current = le64(image, at).unwrap_or(0);
    if current != DEFAULT_SECURITY_COOKIE && current != 0 {
        return Ok(Some(current));
    }
    let mut cookie = seed & 0x0000_FFFF_FFFF_FFFF;
    if cookie == DEFAULT_SECURITY_COOKIE || cookie == 0 {
        cookie ^= 0x0000_1234_5678_9ABC;
    }
    image[at..at + 8].copy_from_slice(&cookie.to_le_bytes());
    Ok(Some(cookie))
}

fn page_protections(size: usize, headers: usize, sections: &[(u32, u32, u32)]) -> Vec<i32> {
    let pages = size / PAGE;
    let mut prot = vec![0i32; pages];
    for p in prot.iter_mut().take(headers.div_ceil(PAGE).max(1)) {
        *p |= libc::PROT_READ;
    }
    for &(va, len, ch) in sections {
        let mut bits = 0;
        if ch & SCN_MEM_READ != 0 {
            bits |= libc::PROT_READ;
        }
        if ch & SCN_MEM_WRITE != 0 {
            bits |= libc::PROT_READ | libc::PROT_WRITE;
        }
        if ch & SCN_MEM_EXECUTE != 0 || ch & iosv::pe::SCN_CNT_CODE != 0 {
            bits |= libc::PROT_READ | libc::PROT_EXEC;
        }
        let first = va as usize / PAGE;
        let last = (va as usize + (len as usize).max(1)).div_ceil(PAGE);
        for p in prot.iter_mut().take(last).skip(first) {
            *p |= bits;
        }
    }
    // Pages no section claims stay readable: the NT loader maps the whole image.
    for p in &mut prot {
        if *p == 0 {
            *p = libc::PROT_READ;
        }
    }
    prot
}

/// Lazy stubs for imports the host lacks.
pub mod stubs {
    use super::{c_void, Mutex, PoisonError, PAGE};

    /// Bytes per stub: `movabs rcx, index; movabs rax, handler; jmp rax`, padded.
    const STUB: usize = 32;

    struct Arena {
        page: usize,
        used: usize,
    }

    /// (driver, dll, routine) of each stub, by index.
    static NAMES: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());
    static ARENA: Mutex<Option<Arena>> = Mutex::new(None);

    /// What stub `index` stands for: `(driver, dll, routine)`.
    #[must_use]
    pub fn name(index: u64) -> Option<(String, String, String)> {
        let names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        usize::try_from(index)
            .ok()
            .and_then(|i| names.get(i).cloned())
    }

    /// A new stub for `dll!routine` imported by `driver`; returns its address.
    ///
    /// # Errors
    /// When no page for stubs can be mapped.
    pub fn make(driver: &str, dll: &str, routine: &str) -> std::io::Result<usize> {
        let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
        let index = names.len() as u64;
        names.push((driver.into(), dll.into(), routine.into()));
        let mut arena = ARENA.lock().unwrap_or_else(PoisonError::into_inner);
        let full = arena.as_ref().is_none_or(|a| a.used + STUB > PAGE);
        if full {
            // SAFETY: an anonymous private mapping at an address of the kernel's choice.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    PAGE,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            *arena = Some(Arena {
                page: p as usize,
                used: 0,
            });
        }
        let Some(a) = arena.as_mut() else {
            return Err(std::io::Error::other("no stub page"));
        };
        let at = a.page + a.used;
        a.used += STUB;
        let handler = super::super::kernel::unimplemented_entry as *const () as usize as u64;
        let mut code = [0xCCu8; STUB];
        code[0..2].copy_from_slice(&[0x48, 0xB9]); // movabs rcx, imm64
        code[2..10].copy_from_slice(&index.to_le_bytes());
        code[10..12].copy_from_slice(&[0x48, 0xB8]); // movabs rax, imm64
        code[12..20].copy_from_slice(&handler.to_le_bytes());
        code[20..22].copy_from_slice(&[0xFF, 0xE0]); // jmp rax
        let page = a.page as *mut c_void;
        // SAFETY: the stub page is ours (mapped above, never unmapped); it is made
        // writable only for this copy, with the arena lock held so no other stub is
        // written meanwhile, and [at, at + STUB) lies inside it (used <= PAGE).
        unsafe {
            if libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: as above; the page is writable now.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, STUB) };
        // SAFETY: as above; back to read+execute.
        if unsafe { libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocations_apply_dir64_and_refuse_other_types() {
        let mut img = vec![0u8; 0x2000];
        img[0x1010..0x1018].copy_from_slice(&0x1_4000_1000u64.to_le_bytes());
        // Block: page 0x1000, size 12, entries DIR64 @0x10, ABSOLUTE padding.
        img[0x100..0x104].copy_from_slice(&0x1000u32.to_le_bytes());
        img[0x104..0x108].copy_from_slice(&12u32.to_le_bytes());
        img[0x108..0x10A].copy_from_slice(&((REL_DIR64 << 12) | 0x10).to_le_bytes());
        apply_relocations(&mut img, 0x100, 12, 0x1000).unwrap();
        assert_eq!(le64(&img, 0x1010), Some(0x1_4000_2000));
        img[0x108..0x10A].copy_from_slice(&((3u16 << 12) | 0x10).to_le_bytes());
        assert!(apply_relocations(&mut img, 0x100, 12, 0x1000).is_err());
        img[0x104..0x108].copy_from_slice(&0x5000u32.to_le_bytes());
        assert!(apply_relocations(&mut img, 0x100, 12, 0x1000).is_err());
    }

    #[test]
    fn cookie_is_replaced_only_when_default() {
        let base = 0x1_4000_0000u64;
        let mut img = vec![0u8; 0x1000];
        img[0x200..0x204].copy_from_slice(&0x100u32.to_le_bytes());
        img[0x258..0x260].copy_from_slice(&(base + 0x800).to_le_bytes());
        img[0x800..0x808].copy_from_slice(&DEFAULT_SECURITY_COOKIE.to_le_bytes());
        let c = set_cookie(&mut img, 0x200, base, 0xFFFF_1111_2222_3333).unwrap();
        assert_eq!(c, Some(0x1111_2222_3333));
        assert_eq!(le64(&img, 0x800), Some(0x1111_2222_3333));
        // Already set: kept.
        assert_eq!(
            set_cookie(&mut img, 0x200, base, 7).unwrap(),
            Some(0x1111_2222_3333)
        );
        img[0x258..0x260].copy_from_slice(&(base + 0x5000).to_le_bytes());
        assert!(set_cookie(&mut img, 0x200, base, 7).is_err());
    }

    #[test]
    fn protections_follow_characteristics() {
        let p = page_protections(
            0x4000,
            0x400,
            &[
                (0x1000, 0x800, SCN_MEM_EXECUTE | SCN_MEM_READ),
                (0x2000, 0x10, SCN_MEM_READ | SCN_MEM_WRITE),
            ],
        );
        assert_eq!(p[0], libc::PROT_READ);
        assert_eq!(p[1], libc::PROT_READ | libc::PROT_EXEC);
        assert_eq!(p[2], libc::PROT_READ | libc::PROT_WRITE);
        assert_eq!(p[3], libc::PROT_READ);
    }
}
