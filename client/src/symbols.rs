//! Stack frames as function and source line: PDBs found on a local symbol path, each
//! matched to its image by the CodeView GUID and age the endpoint reads from the image's
//! debug directory (`IOCTL_GET_IMAGE_DEBUG`).
//!
//! The symbol path is `--symbols DIR[;DIR…]`, else `_NT_SYMBOL_PATH`. Each directory is
//! searched as a symbol store (`DIR/name.pdb/GUIDAGE/name.pdb`, the layout symchk and
//! the debuggers' downstream caches use) and then flat (`DIR/name.pdb`). In
//! `_NT_SYMBOL_PATH` syntax, `srv*CACHE*URL`, `symsrv*DLL*CACHE*URL` and `cache*CACHE`
//! contribute their local directories only: **the network is never used** (URLs and UNC
//! shares are skipped, and said so once).
//!
//! PDBs are read with the `pdb-addr2line` crate (on the `pdb2` reader). A PDB whose
//! GUID or age differs from the image's is not used; a malformed one is reported once and
//! its frames stay `module+offset`. Nothing is lost: a frame that cannot be symbolized
//! prints as it did without symbols.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use iosv::protocol::{ImageDebugRecord, IDF_CODEVIEW, PDB_NAME_LEN};

/// The environment variable read when `--symbols` is not given.
pub const NT_SYMBOL_PATH: &str = "_NT_SYMBOL_PATH";

/// Largest PDB read into memory (a bigger file is reported and skipped).
pub const MAX_PDB_BYTES: u64 = 1 << 30;

/// A symbol path that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymbolPathError {
    /// A directory named by `--symbols` does not exist or is not a directory.
    #[error("symbol directory {0:?} does not exist or is not a directory")]
    NotADirectory(String),
    /// `--symbols` names a network location, which iosvctl never reads.
    #[error(
        "symbol path element {0:?} is a network location: iosvctl reads local directories only"
    )]
    Network(String),
    /// `--symbols` names no directory at all.
    #[error("symbol path {0:?} names no directory")]
    Empty(String),
}

/// Where PDBs are looked for: local directories, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolPath {
    /// The directories, in search order.
    pub dirs: Vec<PathBuf>,
    /// Elements that were skipped and why (network locations, missing directories in
    /// `_NT_SYMBOL_PATH`), for one note on stderr.
    pub skipped: Vec<String>,
}

fn is_network(element: &str) -> bool {
    let e = element.trim();
    e.contains("://") || e.starts_with("\\\\") || e.starts_with("//")
}

impl SymbolPath {
    /// Parses `--symbols DIR[;DIR…]`: every element must be an existing local directory
    /// (`srv*`/`cache*` forms are accepted as in `_NT_SYMBOL_PATH`, their network parts
    /// refused).
    ///
    /// # Errors
    ///
    /// A [`SymbolPathError`] naming the first element that cannot be used.
    pub fn from_option(spec: &str) -> Result<SymbolPath, SymbolPathError> {
        let mut path = SymbolPath::default();
        for element in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (locals, network) = split_element(element);
            if let Some(n) = network.first() {
                if locals.is_empty() {
                    return Err(SymbolPathError::Network(n.clone()));
                }
                path.skipped.push(format!("{n} (network: never used)"));
            }
            for dir in locals {
                if !Path::new(&dir).is_dir() {
                    return Err(SymbolPathError::NotADirectory(dir));
                }
                path.dirs.push(PathBuf::from(dir));
            }
        }
        if path.dirs.is_empty() {
            return Err(SymbolPathError::Empty(spec.to_string()));
        }
        Ok(path)
    }

    /// Parses an `_NT_SYMBOL_PATH` value leniently: local directories that exist are
    /// used, everything else is listed in [`skipped`](Self::skipped).
    pub fn from_nt_symbol_path(value: &str) -> SymbolPath {
        let mut path = SymbolPath::default();
        for element in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (locals, network) = split_element(element);
            for n in network {
                path.skipped.push(format!("{n} (network: never used)"));
            }
            for dir in locals {
                if Path::new(&dir).is_dir() {
                    path.dirs.push(PathBuf::from(dir));
                } else {
                    path.skipped.push(format!("{dir} (no such directory)"));
                }
            }
        }
        path
    }

    /// The path iosvctl uses: `--symbols` when given, else `_NT_SYMBOL_PATH` when set,
    /// else none.
    ///
    /// # Errors
    ///
    /// As [`from_option`](Self::from_option) for `--symbols`.
    pub fn resolve(option: Option<&str>) -> Result<Option<SymbolPath>, SymbolPathError> {
        if let Some(spec) = option {
            return SymbolPath::from_option(spec).map(Some);
        }
        Ok(std::env::var(NT_SYMBOL_PATH)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| SymbolPath::from_nt_symbol_path(&v)))
    }
}

/// The local directories and the network locations of one symbol path element.
fn split_element(element: &str) -> (Vec<String>, Vec<String>) {
    let lower = element.to_ascii_lowercase();
    let parts: Vec<&str> = if lower.starts_with("srv*") || lower.starts_with("cache*") {
        element.split('*').skip(1).collect()
    } else if lower.starts_with("symsrv*") {
        // symsrv*DLL*CACHE*URL: the DLL is not a location.
        element.split('*').skip(2).collect()
    } else {
        vec![element]
    };
    let mut locals = Vec::new();
    let mut network = Vec::new();
    for p in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        if is_network(p) {
            network.push(p.to_string());
        } else {
            locals.push(p.to_string());
        }
    }
    (locals, network)
}

/// The PDB identity of one image, as the endpoint read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageIdentity {
    /// The PDB file name from the CodeView record (`nic.pdb`).
    pub pdb_name: String,
    /// The GUID, in `GUID` byte layout.
    pub guid: [u8; 16],
    /// The age.
    pub age: u32,
}

impl ImageIdentity {
    /// The identity in a wire record, if the image has a CodeView record.
    pub fn from_record(r: &ImageDebugRecord) -> Option<ImageIdentity> {
        if r.flags & IDF_CODEVIEW == 0 {
            return None;
        }
        let len = r
            .pdb_name
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(PDB_NAME_LEN);
        let name = String::from_utf8_lossy(r.pdb_name.get(..len).unwrap_or(&[])).into_owned();
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
            return None;
        }
        Some(ImageIdentity {
            pdb_name: name,
            guid: r.guid,
            age: r.age,
        })
    }

    /// The GUID as a `uuid::Uuid` (the `GUID` layout: first three fields little-endian).
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes_le(self.guid)
    }

    /// The symbol-store directory name: the GUID's hex digits without dashes, upper case,
    /// followed by the age in hex (`3F2504E04F8941D39A0C0305E82C33011`).
    pub fn store_key(&self) -> String {
        format!(
            "{}{:X}",
            self.uuid().simple().to_string().to_ascii_uppercase(),
            self.age
        )
    }
}

impl fmt::Display for ImageIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {{{}}} age {}", self.pdb_name, self.uuid(), self.age)
    }
}

/// One source-level frame of an address: the function and, where known, file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFrame {
    /// The function name (demangled by the PDB's type formatter).
    pub function: String,
    /// The source file, as recorded in the PDB.
    pub file: Option<String>,
    /// The line.
    pub line: Option<u32>,
}

/// An address resolved to source: innermost (inlined) frame first, the function that
/// holds the code last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The frames, innermost first (one unless code was inlined).
    pub frames: Vec<SourceFrame>,
    /// Offset of the address from the start of the (outermost) function.
    pub function_offset: u32,
}

impl Resolved {
    /// The innermost frame (the most precise source location).
    pub fn innermost(&self) -> Option<&SourceFrame> {
        self.frames.first()
    }
}

/// Where a PDB for an image was found, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PdbStatus {
    /// Found and matched.
    Loaded(PathBuf),
    /// No file with a matching GUID and age on the symbol path.
    NotFound {
        /// Files of that name whose GUID or age differ.
        mismatched: Vec<PathBuf>,
    },
    /// A candidate could not be read as a PDB.
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        error: String,
    },
}

struct LoadedPdb {
    bytes: Vec<u8>,
    cache: HashMap<u32, Option<Resolved>>,
}

enum Module {
    Loaded(LoadedPdb),
    Unavailable,
}

/// Resolves module offsets to source through the PDBs on a [`SymbolPath`]. Thread-safe;
/// each PDB is read once and each address resolved once.
pub struct Symbolizer {
    path: SymbolPath,
    modules: Mutex<HashMap<ImageIdentity, Module>>,
    statuses: Mutex<Vec<(ImageIdentity, PdbStatus)>>,
}

impl fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Symbolizer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Symbolizer {
    /// A symbolizer over `path`.
    pub fn new(path: SymbolPath) -> Symbolizer {
        Symbolizer {
            path,
            modules: Mutex::new(HashMap::new()),
            statuses: Mutex::new(Vec::new()),
        }
    }

    /// The symbol path.
    pub fn path(&self) -> &SymbolPath {
        &self.path
    }

    /// What was found for each image looked up so far, in lookup order.
    pub fn statuses(&self) -> Vec<(ImageIdentity, PdbStatus)> {
        lock(&self.statuses).clone()
    }

    /// The candidates for `image`, in search order: store layout, then flat, per
    /// directory.
    pub fn candidates(&self, image: &ImageIdentity) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in &self.path.dirs {
            out.push(
                dir.join(&image.pdb_name)
                    .join(image.store_key())
                    .join(&image.pdb_name),
            );
            out.push(dir.join(&image.pdb_name));
        }
        out
    }

    fn load(&self, image: &ImageIdentity) -> (Module, PdbStatus) {
        let mut mismatched = Vec::new();
        let mut malformed = None;
        for candidate in self.candidates(image) {
            let Ok(meta) = std::fs::metadata(&candidate) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if meta.len() > MAX_PDB_BYTES {
                malformed.get_or_insert((
                    candidate.clone(),
                    format!("larger than {MAX_PDB_BYTES} bytes"),
                ));
                continue;
            }
            let bytes = match std::fs::read(&candidate) {
                Ok(b) => b,
                Err(e) => {
                    malformed.get_or_insert((candidate.clone(), e.to_string()));
                    continue;
                }
            };
            match identity_of(&bytes) {
                Ok((guid, age)) if guid == image.uuid() && age == image.age => {
                    return (
                        Module::Loaded(LoadedPdb {
                            bytes,
                            cache: HashMap::new(),
                        }),
                        PdbStatus::Loaded(candidate),
                    );
                }
                Ok(_) => mismatched.push(candidate),
                Err(e) => {
                    malformed.get_or_insert((candidate.clone(), e));
                }
            }
        }
        let status = match malformed {
            Some((path, error)) if mismatched.is_empty() => PdbStatus::Malformed { path, error },
            _ => PdbStatus::NotFound { mismatched },
        };
        (Module::Unavailable, status)
    }

    /// Resolves a return address at `rva` (every frame iosv captures is one): the
    /// instruction before it, the call, is looked up, so the line is the call's; the
    /// offset is from the function start to `rva`.
    pub fn resolve_return_address(&self, image: &ImageIdentity, rva: u32) -> Option<Resolved> {
        let probe = rva.checked_sub(1)?;
        let mut r = self.resolve(image, probe)?;
        r.function_offset = r.function_offset.saturating_add(1);
        Some(r)
    }

    /// Resolves `rva` in the image whose PDB identity is `image`; `None` when no
    /// matching PDB is on the path or it does not cover the address.
    pub fn resolve(&self, image: &ImageIdentity, rva: u32) -> Option<Resolved> {
        let mut modules = lock(&self.modules);
        if !modules.contains_key(image) {
            let (module, status) = self.load(image);
            lock(&self.statuses).push((image.clone(), status));
            modules.insert(image.clone(), module);
        }
        let Some(Module::Loaded(pdb)) = modules.get_mut(image) else {
            return None;
        };
        if let Some(hit) = pdb.cache.get(&rva) {
            return hit.clone();
        }
        let resolved = match lookup(&pdb.bytes, rva) {
            Ok(r) => r,
            Err(e) => {
                let mut statuses = lock(&self.statuses);
                if let Some(entry) = statuses.iter_mut().find(|(i, _)| i == image) {
                    if let PdbStatus::Loaded(path) = &entry.1 {
                        entry.1 = PdbStatus::Malformed {
                            path: path.clone(),
                            error: e,
                        };
                    }
                }
                None
            }
        };
        pdb.cache.insert(rva, resolved.clone());
        resolved
    }
}

/// The GUID and age of a PDB (the age from the DBI stream, as the debuggers match it;
/// the PDB information stream's when there is no DBI age).
fn identity_of(bytes: &[u8]) -> Result<(uuid::Uuid, u32), String> {
    use pdb_addr2line::pdb::PDB;
    let mut pdb = PDB::open(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let info = pdb.pdb_information().map_err(|e| e.to_string())?;
    let dbi_age = pdb.debug_information().ok().and_then(|d| d.age());
    Ok((info.guid, dbi_age.unwrap_or(info.age)))
}

fn lookup(bytes: &[u8], rva: u32) -> Result<Option<Resolved>, String> {
    use pdb_addr2line::pdb::PDB;
    let pdb = PDB::open(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let data = pdb_addr2line::ContextPdbData::try_from_pdb(pdb).map_err(|e| e.to_string())?;
    // Names as the debuggers print them in stacks: qualified, without argument types.
    let flags = pdb_addr2line::TypeFormatterFlags::default()
        | pdb_addr2line::TypeFormatterFlags::NO_ARGUMENTS;
    let context = data
        .make_context_with_formatter_flags(flags)
        .map_err(|e| e.to_string())?;
    let Some(found) = context.find_frames(rva).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let frames: Vec<SourceFrame> = found
        .frames
        .iter()
        .map(|f| SourceFrame {
            function: f
                .function
                .clone()
                .unwrap_or_else(|| "<unknown>".to_string()),
            file: f.file.as_deref().map(str::to_string),
            line: f.line,
        })
        .collect();
    if frames.is_empty() {
        return Ok(None);
    }
    Ok(Some(Resolved {
        frames,
        function_offset: rva.saturating_sub(found.start_rva),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_paths_must_be_local_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let p = SymbolPath::from_option(&format!("{d};;{d}")).unwrap();
        assert_eq!(p.dirs.len(), 2);
        assert!(matches!(
            SymbolPath::from_option("/no/such/dir"),
            Err(SymbolPathError::NotADirectory(_))
        ));
        assert!(matches!(
            SymbolPath::from_option("srv*https://msdl.example/download/symbols"),
            Err(SymbolPathError::Network(_))
        ));
        assert!(matches!(
            SymbolPath::from_option(r"\\server\symbols"),
            Err(SymbolPathError::Network(_))
        ));
        assert!(matches!(
            SymbolPath::from_option(" ; "),
            Err(SymbolPathError::Empty(_))
        ));
        // srv*CACHE*URL: the cache is used, the URL skipped and said so.
        let p = SymbolPath::from_option(&format!("srv*{d}*https://symbols.example")).unwrap();
        assert_eq!(p.dirs, vec![PathBuf::from(&d)]);
        assert_eq!(p.skipped.len(), 1);
    }

    #[test]
    fn nt_symbol_path_keeps_only_local_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let value = format!(
            "srv*{d}*https://msdl.example/symbols;cache*{d};symsrv*symsrv.dll*{d}*https://x.example;/no/such;\\\\share\\sym;{d}"
        );
        let p = SymbolPath::from_nt_symbol_path(&value);
        assert_eq!(p.dirs.len(), 4);
        assert_eq!(p.skipped.len(), 4, "{:?}", p.skipped);
        assert!(p.skipped.iter().any(|s| s.contains("no such directory")));
    }

    #[test]
    fn store_key_and_candidates() {
        let id = ImageIdentity {
            pdb_name: "nic.pdb".into(),
            guid: [
                0xE0, 0x04, 0x25, 0x3F, 0x89, 0x4F, 0xD3, 0x41, 0x9A, 0x0C, 0x03, 0x05, 0xE8, 0x2C,
                0x33, 0x01,
            ],
            age: 0x1a,
        };
        assert_eq!(id.store_key(), "3F2504E04F8941D39A0C0305E82C33011A");
        let s = Symbolizer::new(SymbolPath {
            dirs: vec![PathBuf::from("/s")],
            skipped: vec![],
        });
        assert_eq!(
            s.candidates(&id),
            vec![
                PathBuf::from("/s/nic.pdb/3F2504E04F8941D39A0C0305E82C33011A/nic.pdb"),
                PathBuf::from("/s/nic.pdb"),
            ]
        );
    }

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        let mut r = ImageDebugRecord {
            flags: IDF_CODEVIEW,
            ..ImageDebugRecord::default()
        };
        r.pdb_name[..9].copy_from_slice(b"../x.pdb\0");
        assert_eq!(ImageIdentity::from_record(&r), None);
        r.pdb_name[..8].copy_from_slice(b"nic.pdb\0");
        assert_eq!(
            ImageIdentity::from_record(&r).map(|i| i.pdb_name),
            Some("nic.pdb".into())
        );
        r.flags = 0;
        assert_eq!(ImageIdentity::from_record(&r), None);
    }

    #[test]
    fn malformed_and_mismatched_pdbs_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.pdb"), b"not a pdb at all").unwrap();
        let s = Symbolizer::new(SymbolPath {
            dirs: vec![dir.path().to_path_buf()],
            skipped: vec![],
        });
        let id = ImageIdentity {
            pdb_name: "bad.pdb".into(),
            guid: [1; 16],
            age: 1,
        };
        assert_eq!(s.resolve(&id, 0x1000), None);
        let statuses = s.statuses();
        assert!(matches!(statuses[0].1, PdbStatus::Malformed { .. }));
        let missing = ImageIdentity {
            pdb_name: "none.pdb".into(),
            ..id
        };
        assert_eq!(s.resolve(&missing, 0x1000), None);
        assert_eq!(
            s.statuses()[1].1,
            PdbStatus::NotFound { mismatched: vec![] }
        );
    }
}
