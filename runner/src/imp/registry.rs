//! The child's registry: the keys a driver reads — its service key (the `RegistryPath` of
//! `DriverEntry`) with its `Parameters` subkey, its device's hardware and software keys
//! (`IoOpenDeviceRegistryKey`) — filled from `iosvctl run --registry` ([`RegistrySpec`]),
//! and the read routines (`ZwOpenKey`, `ZwQueryValueKey`, `ZwEnumerateValueKey`,
//! `RtlQueryRegistryValues`, `IoOpenDeviceRegistryKey`, `ZwClose`) as their DDI pages
//! describe them. Writes (`ZwCreateKey`, `ZwSetValueKey`, `ZwDeleteValueKey`) update it
//! for the rest of the run.
//!
//! Names are case-insensitive, as in the registry. A key exists if it was created, named
//! by a value, or is an ancestor of one that exists.

use super::kernel::{
    layout as l, Status, STATUS_INVALID_DEVICE_REQUEST, STATUS_OBJECT_NAME_NOT_FOUND,
};
use super::Obj;
use crate::regspec::{RegRoot, RegistrySpec, REG_EXPAND_SZ, REG_MULTI_SZ, REG_SZ};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

/// Where the services' keys are.
const SERVICES: &str = "\\Registry\\Machine\\System\\CurrentControlSet\\Services";
/// Where the devices' (root-enumerated) instance keys are.
const ENUM: &str = "\\Registry\\Machine\\System\\CurrentControlSet\\Enum\\ROOT\\IOSV_RUN";
/// Where the devices' software keys are (setup class `System`).
const CLASS: &str = "\\Registry\\Machine\\System\\CurrentControlSet\\Control\\Class\\{4d36e97d-e325-11ce-bfc1-08002be10318}";

/// The hardware key of device instance `index`: `Device Parameters` under its instance
/// key; what `IoOpenDeviceRegistryKey(PLUGPLAY_REGKEY_DEVICE)` opens for its PDO.
#[must_use]
pub fn hardware_key(index: u32) -> String {
    format!("{ENUM}\\{index:04}\\Device Parameters")
}

/// The software key of device instance `index`; what
/// `IoOpenDeviceRegistryKey(PLUGPLAY_REGKEY_DRIVER)` opens for its PDO.
#[must_use]
pub fn software_key(index: u32) -> String {
    format!("{CLASS}\\{index:04}")
}

const STATUS_SUCCESS: Status = 0;
const STATUS_BUFFER_OVERFLOW: Status = 0x8000_0005_u32 as i32;
const STATUS_NO_MORE_ENTRIES: Status = 0x8000_001A_u32 as i32;
const STATUS_INVALID_HANDLE: Status = 0xC000_0008_u32 as i32;
const STATUS_INVALID_PARAMETER: Status = 0xC000_000D_u32 as i32;
const STATUS_BUFFER_TOO_SMALL: Status = 0xC000_0023_u32 as i32;
const STATUS_OBJECT_TYPE_MISMATCH: Status = 0xC000_0024_u32 as i32;
const STATUS_OBJECT_PATH_SYNTAX_BAD: Status = 0xC000_003B_u32 as i32;

const REG_NONE: u32 = 0;
const REG_CREATED_NEW_KEY: u32 = 1;
const REG_OPENED_EXISTING_KEY: u32 = 2;
const PLUGPLAY_REGKEY_DEVICE: u32 = 1;
const PLUGPLAY_REGKEY_DRIVER: u32 = 2;
const PLUGPLAY_REGKEY_CURRENT_HWPROFILE: u32 = 4;

const RTL_REGISTRY_HANDLE: u32 = 0x4000_0000;
const RTL_REGISTRY_OPTIONAL: u32 = 0x8000_0000;
const RTL_QUERY_REGISTRY_SUBKEY: u32 = 0x01;
const RTL_QUERY_REGISTRY_TOPKEY: u32 = 0x02;
const RTL_QUERY_REGISTRY_REQUIRED: u32 = 0x04;
const RTL_QUERY_REGISTRY_NOVALUE: u32 = 0x08;
const RTL_QUERY_REGISTRY_NOEXPAND: u32 = 0x10;
const RTL_QUERY_REGISTRY_DIRECT: u32 = 0x20;
const RTL_QUERY_REGISTRY_DELETE: u32 = 0x40;
const RTL_QUERY_REGISTRY_TYPECHECK: u32 = 0x100;

/// The longest name read from the driver (a `UNICODE_STRING` holds at most this many).
const MAX_UNITS: usize = 0x7FFF;

#[derive(Debug, Clone)]
struct Value {
    name: String,
    kind: u32,
    data: Vec<u8>,
}

#[derive(Default)]
struct Registry {
    /// Keys by lower-case path (no leading `\`), their values in creation order.
    keys: BTreeMap<String, Vec<Value>>,
    /// Open handles: the lower-case path of each.
    handles: HashMap<u64, String>,
    /// The PDOs the runner created: their device instance numbers.
    pdos: HashMap<usize, u32>,
    opened: u64,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut g = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    f(g.get_or_insert_with(Registry::default))
}

/// A key path in its canonical form: lower case, no empty components.
fn norm(path: &str) -> String {
    path.split('\\')
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join("\\")
        .to_lowercase()
}

fn join(base: &str, rest: &str) -> String {
    norm(&format!("{base}\\{rest}"))
}

/// The service key of the driver `name` (the `RegistryPath` its `DriverEntry` gets).
#[must_use]
pub fn service_key(name: &str) -> String {
    format!("{SERVICES}\\{name}")
}

impl Registry {
    fn exists(&self, key: &str) -> bool {
        let prefix = format!("{key}\\");
        self.keys.contains_key(key)
            || self
                .keys
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    fn create(&mut self, key: &str) -> bool {
        if self.keys.contains_key(key) {
            return false;
        }
        self.keys.insert(key.to_string(), Vec::new());
        true
    }

    fn set(&mut self, key: &str, name: &str, kind: u32, data: Vec<u8>) {
        let values = self.keys.entry(key.to_string()).or_default();
        let v = Value {
            name: name.to_string(),
            kind,
            data,
        };
        match values
            .iter_mut()
            .find(|x| x.name.eq_ignore_ascii_case(name))
        {
            Some(slot) => *slot = v,
            None => values.push(v),
        }
    }

    fn get(&self, key: &str, name: &str) -> Option<Value> {
        self.keys
            .get(key)?
            .iter()
            .find(|v| v.name.eq_ignore_ascii_case(name))
            .cloned()
    }

    fn open(&mut self, key: &str) -> u64 {
        self.opened = self.opened.wrapping_add(1);
        // Kernel handles have their top bit set.
        let h = 0xFFFF_FFFF_8000_0000 | (self.opened << 2);
        self.handles.insert(h, key.to_string());
        h
    }
}

/// Builds the registry of a run: the driver's service key with `Parameters`, the first
/// device's (instance 0: `run`'s device, a scenario's first) hardware and software keys,
/// and every `specs` value (its key created as needed; `@hw` / `@sw` are instance 0's).
pub fn init(driver: &str, specs: &[RegistrySpec]) {
    let service = norm(&service_key(driver));
    with(|r| {
        r.create(&service);
        r.create(&join(&service, "Parameters"));
        r.create(&norm(&hardware_key(0)));
        r.create(&norm(&software_key(0)));
        for s in specs {
            let base = match s.root {
                RegRoot::Service => service.clone(),
                RegRoot::DeviceHardware => norm(&hardware_key(0)),
                RegRoot::DeviceSoftware => norm(&software_key(0)),
                RegRoot::Absolute => String::new(),
            };
            r.set(&join(&base, &s.key), &s.name, s.kind, s.data.clone());
        }
    });
}

/// `pdo` is the physical device object of device instance `index`: `IoOpenDeviceRegistryKey`
/// opens that instance's keys for it (created here, empty unless `init` filled them).
pub fn add_pdo(pdo: usize, index: u32) {
    with(|r| {
        r.pdos.insert(pdo, index);
        r.create(&norm(&hardware_key(index)));
        r.create(&norm(&software_key(index)));
    });
}

// ---- reading the driver's arguments ------------------------------------------------------

fn mem(addr: usize, len: usize) -> Obj {
    // SAFETY: the DDI contract of the routines here: the caller passes live buffers and
    // structures of the documented size. A driver passing garbage faults, reported.
    unsafe { Obj::new(addr, len) }
}

/// Reads of the driver's memory go through the kernel ([`super::trap::read_own`]) a page
/// at a time: a buffer shorter than the length the driver claims, or an unmapped one, is
/// an answer (how many bytes were readable) rather than a fault, and the copy grows with
/// what is read, not with the claimed length (up to 4 GiB for a ULONG).
const PAGE: usize = 0x1000;

/// Copies `len` bytes of the driver's memory at `p`; `Err(n)`: only the first `n` are
/// readable (to page granularity). NULL reads as nothing.
fn copy_in(p: usize, len: usize) -> Result<Vec<u8>, usize> {
    if p == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    while out.len() < len {
        let done = out.len();
        let at = p.checked_add(done).ok_or(done)?;
        let chunk = (PAGE - at % PAGE).min(len - done);
        out.resize(done + chunk, 0);
        let dest = out.get_mut(done..).unwrap_or(&mut []);
        if !super::trap::read_own(at as u64, dest) {
            return Err(done);
        }
    }
    Ok(out)
}

/// [`copy_in`] of what routine `what` was given; an unreadable buffer ends the run with a
/// bug-check report naming it (on Windows the read faults in the kernel: a bug check).
fn bytes_in(what: &str, p: usize, len: usize) -> Vec<u8> {
    copy_in(p, len).unwrap_or_else(|n| {
        super::trap::bugcheck(&format!(
            "{what}: {len} bytes at {p:#x} were passed, only {n} of them are readable"
        ))
    })
}

fn units(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

/// The text of the `UNICODE_STRING` at `us` (empty for NULL).
fn unicode(what: &str, us: usize) -> String {
    if us == 0 {
        return String::new();
    }
    let s = mem(us, l::UNICODE_STRING);
    let len = usize::from(s.get::<u16>(0) / 2);
    let b = bytes_in(what, s.get::<u64>(8) as usize, len * 2);
    String::from_utf16_lossy(&units(&b).collect::<Vec<_>>())
}

/// The UTF-16 units of the NUL-terminated string at `p`, without the NUL (at most
/// [`MAX_UNITS`]; none for NULL).
fn wide_units(what: &str, p: usize) -> Vec<u16> {
    let mut out = Vec::new();
    let mut at = p;
    while p != 0 && out.len() < MAX_UNITS {
        // Up to the end of the page: what is readable of the string is read.
        // To the end of the page, even so the units stay whole: a misaligned string's
        // last unit on the page straddles into the next.
        let rest = PAGE - at % PAGE;
        let chunk = match rest {
            1 => 2,
            r => r & !1,
        }
        .min(2 * (MAX_UNITS - out.len()));
        let bytes = bytes_in(what, at, chunk);
        for u in units(&bytes) {
            if u == 0 {
                return out;
            }
            out.push(u);
        }
        let Some(next) = at.checked_add(bytes.len()) else {
            break;
        };
        at = next;
    }
    out.truncate(MAX_UNITS);
    out
}

/// The NUL-terminated UTF-16 string at `p` (empty for NULL).
fn wide(what: &str, p: usize) -> String {
    String::from_utf16_lossy(&wide_units(what, p))
}

fn put_bytes(p: usize, bytes: &[u8]) {
    let o = mem(p, bytes.len());
    for (i, b) in bytes.iter().enumerate() {
        o.set::<u8>(i, *b);
    }
}

fn put_u32(p: usize, v: u32) {
    if p != 0 {
        mem(p, 4).set::<u32>(0, v);
    }
}

/// The key an `OBJECT_ATTRIBUTES` names: `ObjectName` relative to `RootDirectory` (a key
/// handle), or absolute.
fn key_of(oa: usize) -> Result<String, Status> {
    let o = mem(oa, l::OBJECT_ATTRIBUTES);
    let name = unicode("ObjectName", o.get::<u64>(l::OA_OBJECT_NAME) as usize);
    let root = o.get::<u64>(l::OA_ROOT_DIRECTORY);
    if root != 0 {
        let base = with(|r| r.handles.get(&root).cloned()).ok_or(STATUS_INVALID_HANDLE)?;
        return Ok(join(&base, &name));
    }
    if !name.starts_with('\\') {
        return Err(STATUS_OBJECT_PATH_SYNTAX_BAD);
    }
    Ok(norm(&name))
}

fn handle_key(h: u64) -> Result<String, Status> {
    with(|r| r.handles.get(&h).cloned()).ok_or(STATUS_INVALID_HANDLE)
}

// ---- the routines -------------------------------------------------------------------------

/// `ZwOpenKey(KeyHandle, DesiredAccess, ObjectAttributes)`.
pub extern "win64" fn zw_open_key(out: usize, _access: u32, oa: usize) -> Status {
    let key = match key_of(oa) {
        Ok(k) => k,
        Err(s) => return s,
    };
    with(|r| {
        if !r.exists(&key) {
            return STATUS_OBJECT_NAME_NOT_FOUND;
        }
        let h = r.open(&key);
        mem(out, 8).set::<u64>(0, h);
        STATUS_SUCCESS
    })
}

/// `ZwCreateKey(KeyHandle, DesiredAccess, ObjectAttributes, TitleIndex, Class,
/// CreateOptions, Disposition)`: opens the key, creating it if needed.
pub extern "win64" fn zw_create_key(
    out: usize,
    _access: u32,
    oa: usize,
    _title: u32,
    _class: usize,
    _options: u32,
    disposition: usize,
) -> Status {
    let key = match key_of(oa) {
        Ok(k) => k,
        Err(s) => return s,
    };
    with(|r| {
        let existed = r.exists(&key);
        r.create(&key);
        let h = r.open(&key);
        mem(out, 8).set::<u64>(0, h);
        put_u32(
            disposition,
            if existed {
                REG_OPENED_EXISTING_KEY
            } else {
                REG_CREATED_NEW_KEY
            },
        );
        STATUS_SUCCESS
    })
}

/// `ZwClose`: a key handle is closed; any other handle (the host hands out no others)
/// succeeds.
pub extern "win64" fn zw_close(h: u64) -> Status {
    with(|r| r.handles.remove(&h));
    STATUS_SUCCESS
}

/// `ZwSetValueKey(KeyHandle, ValueName, TitleIndex, Type, Data, DataSize)`.
pub extern "win64" fn zw_set_value_key(
    h: u64,
    name: usize,
    _title: u32,
    kind: u32,
    data: usize,
    size: u32,
) -> Status {
    let key = match handle_key(h) {
        Ok(k) => k,
        Err(s) => return s,
    };
    let name = unicode("ZwSetValueKey ValueName", name);
    let data = bytes_in("ZwSetValueKey Data", data, size as usize);
    with(|r| r.set(&key, &name, kind, data));
    STATUS_SUCCESS
}

/// The `KEY_VALUE_*_INFORMATION` of `v` for information class `class`: its fixed part's
/// size, and the whole structure.
fn value_information(v: &Value, class: u32) -> Option<(usize, Vec<u8>)> {
    let name: Vec<u8> = v.name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let name_len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    let data_len = u32::try_from(v.data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    out.extend(0u32.to_le_bytes()); // TitleIndex
    out.extend(v.kind.to_le_bytes());
    match class {
        0 => {
            out.extend(name_len.to_le_bytes());
            out.extend(&name);
            Some((l::KEY_VALUE_BASIC_NAME, out))
        }
        1 => {
            let data_offset = (l::KEY_VALUE_FULL_NAME + name.len()).next_multiple_of(4);
            out.extend(u32::try_from(data_offset).unwrap_or(u32::MAX).to_le_bytes());
            out.extend(data_len.to_le_bytes());
            out.extend(name_len.to_le_bytes());
            out.extend(&name);
            out.resize(data_offset, 0);
            out.extend(&v.data);
            Some((l::KEY_VALUE_FULL_NAME, out))
        }
        2 => {
            out.extend(data_len.to_le_bytes());
            out.extend(&v.data);
            Some((l::KEY_VALUE_PARTIAL_DATA, out))
        }
        _ => None,
    }
}

/// `ZwQueryValueKey(KeyHandle, ValueName, KeyValueInformationClass, KeyValueInformation,
/// Length, ResultLength)`: `KeyValueBasicInformation`, `KeyValueFullInformation`,
/// `KeyValuePartialInformation`. A buffer shorter than the structure's fixed part gets
/// nothing (STATUS_BUFFER_TOO_SMALL); one shorter than the whole gets what fits
/// (STATUS_BUFFER_OVERFLOW); ResultLength is always the size of the whole.
pub extern "win64" fn zw_query_value_key(
    h: u64,
    name: usize,
    class: u32,
    buffer: usize,
    length: u32,
    result: usize,
) -> Status {
    let key = match handle_key(h) {
        Ok(k) => k,
        Err(s) => return s,
    };
    let name = unicode("ZwQueryValueKey ValueName", name);
    let Some(v) = with(|r| r.get(&key, &name)) else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    answer(&v, class, buffer, length, result)
}

/// `ZwEnumerateValueKey(KeyHandle, Index, KeyValueInformationClass, KeyValueInformation,
/// Length, ResultLength)`: the key's values in the order they were first set, answered as
/// `ZwQueryValueKey` answers; STATUS_NO_MORE_ENTRIES past the last.
pub extern "win64" fn zw_enumerate_value_key(
    h: u64,
    index: u32,
    class: u32,
    buffer: usize,
    length: u32,
    result: usize,
) -> Status {
    let key = match handle_key(h) {
        Ok(k) => k,
        Err(s) => return s,
    };
    let v = with(|r| {
        r.keys
            .get(&key)
            .and_then(|values| values.get(index as usize).cloned())
    });
    match v {
        Some(v) => answer(&v, class, buffer, length, result),
        None => STATUS_NO_MORE_ENTRIES,
    }
}

/// `ZwDeleteValueKey(KeyHandle, ValueName)`.
pub extern "win64" fn zw_delete_value_key(h: u64, name: usize) -> Status {
    let key = match handle_key(h) {
        Ok(k) => k,
        Err(s) => return s,
    };
    let name = unicode("ZwDeleteValueKey ValueName", name);
    with(|r| {
        let Some(values) = r.keys.get_mut(&key) else {
            return STATUS_OBJECT_NAME_NOT_FOUND;
        };
        let before = values.len();
        values.retain(|v| !v.name.eq_ignore_ascii_case(&name));
        if values.len() < before {
            STATUS_SUCCESS
        } else {
            STATUS_OBJECT_NAME_NOT_FOUND
        }
    })
}

/// Writes what fits of `v`'s information of class `class` into the driver's buffer: see
/// [`zw_query_value_key`].
fn answer(v: &Value, class: u32, buffer: usize, length: u32, result: usize) -> Status {
    let Some((fixed, info)) = value_information(v, class) else {
        return STATUS_INVALID_PARAMETER;
    };
    put_u32(result, u32::try_from(info.len()).unwrap_or(u32::MAX));
    let length = length as usize;
    if length < fixed {
        return STATUS_BUFFER_TOO_SMALL;
    }
    let n = length.min(info.len());
    put_bytes(buffer, info.get(..n).unwrap_or(&[]));
    if n < info.len() {
        STATUS_BUFFER_OVERFLOW
    } else {
        STATUS_SUCCESS
    }
}

/// `IoOpenDeviceRegistryKey(DeviceObject, DevInstKeyType, DesiredAccess, DevInstRegKey)`:
/// `PLUGPLAY_REGKEY_DEVICE` opens the device's [`hardware_key`], `PLUGPLAY_REGKEY_DRIVER`
/// its [`software_key`]; with `PLUGPLAY_REGKEY_CURRENT_HWPROFILE`, which the DDI page
/// allows with either, the same keys (one hardware profile here). Neither or both of
/// DEVICE and DRIVER, or another flag, is STATUS_INVALID_PARAMETER. A `DeviceObject`
/// that is not a PDO (an FDO, a control device, NULL) is STATUS_INVALID_DEVICE_REQUEST,
/// as the DDI page's earlier versions and Windows' PnP manager answer it (the current
/// page folds it into STATUS_INVALID_PARAMETER's "may indicate").
pub extern "win64" fn io_open_device_registry_key(
    device: usize,
    kind: u32,
    _access: u32,
    out: usize,
) -> Status {
    let hardware = match kind & !PLUGPLAY_REGKEY_CURRENT_HWPROFILE {
        PLUGPLAY_REGKEY_DEVICE => true,
        PLUGPLAY_REGKEY_DRIVER => false,
        _ => return STATUS_INVALID_PARAMETER,
    };
    with(|r| {
        let Some(&index) = r.pdos.get(&device) else {
            return STATUS_INVALID_DEVICE_REQUEST;
        };
        let key = norm(&if hardware {
            hardware_key(index)
        } else {
            software_key(index)
        });
        r.create(&key);
        let h = r.open(&key);
        mem(out, 8).set::<u64>(0, h);
        STATUS_SUCCESS
    })
}

/// The key `RtlQueryRegistryValues` starts at.
fn query_base(relative_to: u32, path: usize) -> Result<String, Status> {
    if relative_to & RTL_REGISTRY_HANDLE != 0 {
        return handle_key(path as u64);
    }
    let root = match relative_to & !RTL_REGISTRY_OPTIONAL {
        0 => "",
        1 => SERVICES,
        2 => "\\Registry\\Machine\\System\\CurrentControlSet\\Control",
        3 => "\\Registry\\Machine\\Software\\Microsoft\\Windows NT\\CurrentVersion",
        4 => "\\Registry\\Machine\\Hardware\\DeviceMap",
        5 => "\\Registry\\User\\CurrentUser",
        _ => return Err(STATUS_INVALID_PARAMETER),
    };
    Ok(join(root, &wide("RtlQueryRegistryValues Path", path)))
}

/// One `RTL_QUERY_REGISTRY_TABLE` entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    routine: usize,
    flags: u32,
    name: usize,
    context: usize,
    default_type: u32,
    default_data: usize,
    default_length: u32,
}

impl Entry {
    fn read(at: usize) -> Self {
        let o = mem(at, l::RTL_QUERY_REGISTRY_TABLE);
        Entry {
            routine: o.get::<u64>(l::RQT_QUERY_ROUTINE) as usize,
            flags: o.get::<u32>(l::RQT_FLAGS),
            name: o.get::<u64>(l::RQT_NAME) as usize,
            context: o.get::<u64>(l::RQT_ENTRY_CONTEXT) as usize,
            default_type: o.get::<u32>(l::RQT_DEFAULT_TYPE),
            default_data: o.get::<u64>(l::RQT_DEFAULT_DATA) as usize,
            default_length: o.get::<u32>(l::RQT_DEFAULT_LENGTH),
        }
    }

    /// The default value, if the entry has one (`DefaultType` not REG_NONE); a zero
    /// `DefaultLength` of a string type is computed from the string.
    fn default(&self) -> Option<Value> {
        let kind = self.default_type & 0xFF;
        if kind == REG_NONE {
            return None;
        }
        const WHAT: &str = "RtlQueryRegistryValues DefaultData";
        let len = match (self.default_length, kind) {
            (0, REG_SZ | REG_EXPAND_SZ) => (wide_units(WHAT, self.default_data).len() + 1) * 2,
            (0, REG_MULTI_SZ) => {
                // Strings up to an empty one; a list longer than a ULONG is cut there.
                let mut len = 0usize;
                while self.default_data != 0 && len <= u32::MAX as usize {
                    let n = wide_units(WHAT, self.default_data.wrapping_add(len)).len();
                    len += (n + 1) * 2;
                    if n == 0 {
                        break;
                    }
                }
                len.min(u32::MAX as usize)
            }
            (n, _) => n as usize,
        };
        Some(Value {
            name: wide("RtlQueryRegistryValues QueryTable Name", self.name),
            kind,
            data: bytes_in(WHAT, self.default_data, len),
        })
    }
}

type QueryRoutine = extern "win64" fn(usize, u32, usize, u32, usize, usize) -> Status;

/// The entry's `QueryRoutine` as a callable routine: it must lie in a loaded driver image
/// (anything else — a stale or garbage pointer — ends the run with a bug-check report
/// instead of a jump to wherever it points, host code included).
fn query_routine(routine: usize) -> QueryRoutine {
    if super::trap::image_of(routine).is_none() {
        super::trap::bugcheck(&format!(
            "RtlQueryRegistryValues: the QueryRoutine {routine:#x} of a table entry is not in a driver image"
        ));
    }
    // SAFETY: `routine` is code of a loaded driver image (checked above), which the DDI
    // contract makes a QueryRoutine of this signature.
    unsafe { std::mem::transmute::<usize, QueryRoutine>(routine) }
}

/// Stores `v` where a `RTL_QUERY_REGISTRY_DIRECT` entry's `EntryContext` points: strings
/// into its `UNICODE_STRING` (allocated from pool when its Buffer is NULL), other data of
/// up to 4 bytes in place, longer data in a buffer that starts with its signed size.
fn store_direct(context: usize, v: &Value) -> Status {
    let len = v.data.len();
    if matches!(v.kind, REG_SZ | REG_EXPAND_SZ | REG_MULTI_SZ) {
        let s = mem(context, l::UNICODE_STRING);
        let mut data = v.data.clone();
        if !len.is_multiple_of(2) || !data.ends_with(&[0, 0]) {
            data.extend([0, 0]);
        }
        let Ok(max) = u16::try_from(data.len()) else {
            return STATUS_BUFFER_TOO_SMALL;
        };
        let mut buffer = s.get::<u64>(8) as usize;
        if buffer == 0 {
            // Pool the driver frees with ExFreePool (the DDI page), so a pool block.
            buffer = super::blocks::allocate(super::blocks::Kind::Pool, data.len());
            s.set::<u64>(8, buffer as u64);
            s.set::<u16>(2, max);
        } else if s.get::<u16>(2) < max {
            return STATUS_BUFFER_TOO_SMALL;
        }
        put_bytes(buffer, &data);
        s.set::<u16>(0, max - 2);
        return STATUS_SUCCESS;
    }
    if len <= 4 {
        put_bytes(context, &v.data);
        return STATUS_SUCCESS;
    }
    let size = mem(context, 4).get::<i32>(0);
    if size < 0 {
        if len > size.unsigned_abs() as usize {
            return STATUS_BUFFER_TOO_SMALL;
        }
        put_bytes(context, &v.data);
    } else {
        if len + 8 > size as usize {
            return STATUS_BUFFER_TOO_SMALL;
        }
        put_u32(context, u32::try_from(len).unwrap_or(u32::MAX));
        put_u32(context + 4, v.kind);
        put_bytes(context + 8, &v.data);
    }
    STATUS_SUCCESS
}

/// Hands `v` to the entry: stored (DIRECT) or passed to its QueryRoutine (a REG_MULTI_SZ
/// one string at a time as REG_SZ, unless NOEXPAND). Returns the status that ends the
/// table, if any.
fn deliver(e: &Entry, v: &Value, context: usize) -> Result<(), Status> {
    if e.flags & RTL_QUERY_REGISTRY_DIRECT != 0 {
        return match store_direct(e.context, v) {
            STATUS_SUCCESS => Ok(()),
            s => Err(s),
        };
    }
    let routine = query_routine(e.routine);
    let name: Vec<u16> = v.name.encode_utf16().chain([0]).collect();
    let call = |kind: u32, data: &[u8]| {
        let copy = data.to_vec();
        let len = u32::try_from(copy.len()).unwrap_or(u32::MAX);
        match routine(
            name.as_ptr() as usize,
            kind,
            copy.as_ptr() as usize,
            len,
            context,
            e.context,
        ) {
            s if s >= 0 || s == STATUS_BUFFER_TOO_SMALL => Ok(()),
            s => Err(s),
        }
    };
    if v.kind == REG_MULTI_SZ && e.flags & RTL_QUERY_REGISTRY_NOEXPAND == 0 {
        let units: Vec<u16> = v
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        for s in units.split(|&u| u == 0).filter(|s| !s.is_empty()) {
            let bytes: Vec<u8> = s.iter().chain(&[0]).flat_map(|u| u.to_le_bytes()).collect();
            call(REG_SZ, &bytes)?;
        }
        return Ok(());
    }
    let kind = if v.kind == REG_EXPAND_SZ && e.flags & RTL_QUERY_REGISTRY_NOEXPAND == 0 {
        REG_SZ
    } else {
        v.kind
    };
    call(kind, &v.data)
}

/// One table entry against key `key`.
fn query_entry(e: &Entry, key: &str, context: usize) -> Result<(), Status> {
    let direct = e.flags & RTL_QUERY_REGISTRY_DIRECT != 0;
    if (direct && e.name == 0) || (!direct && e.routine == 0) {
        return Err(STATUS_INVALID_PARAMETER);
    }
    if !direct && e.flags & RTL_QUERY_REGISTRY_NOVALUE != 0 {
        let s = query_routine(e.routine)(e.name, REG_NONE, 0, 0, context, e.context);
        return if s >= 0 { Ok(()) } else { Err(s) };
    }
    if e.name == 0 {
        let values = with(|r| r.keys.get(key).cloned().unwrap_or_default());
        if values.is_empty() && e.flags & RTL_QUERY_REGISTRY_REQUIRED != 0 {
            return Err(STATUS_OBJECT_NAME_NOT_FOUND);
        }
        return values.iter().try_for_each(|v| deliver(e, v, context));
    }
    let name = wide("RtlQueryRegistryValues QueryTable Name", e.name);
    match with(|r| r.get(key, &name)) {
        Some(v) => {
            let expected = e.default_type >> 24;
            if direct && e.flags & RTL_QUERY_REGISTRY_TYPECHECK != 0 && v.kind != expected {
                return Err(STATUS_OBJECT_TYPE_MISMATCH);
            }
            deliver(e, &v, context)?;
            if e.flags & RTL_QUERY_REGISTRY_DELETE != 0 {
                with(|r| {
                    if let Some(values) = r.keys.get_mut(key) {
                        values.retain(|x| !x.name.eq_ignore_ascii_case(&name));
                    }
                });
            }
            Ok(())
        }
        None if e.flags & RTL_QUERY_REGISTRY_REQUIRED != 0 => Err(STATUS_OBJECT_NAME_NOT_FOUND),
        None => match e.default() {
            Some(d) => deliver(e, &d, context),
            None => Ok(()),
        },
    }
}

/// `RtlQueryRegistryValues(RelativeTo, Path, QueryTable, Context, Environment)`: every
/// `RelativeTo` root, `RTL_REGISTRY_HANDLE` and `_OPTIONAL`; the entry flags SUBKEY,
/// TOPKEY, REQUIRED, NOVALUE, NOEXPAND, DIRECT, DELETE and TYPECHECK; default values. No
/// environment expansion: a REG_EXPAND_SZ is passed as it is stored.
pub extern "win64" fn rtl_query_registry_values(
    relative_to: u32,
    path: usize,
    table: usize,
    context: usize,
    _environment: usize,
) -> Status {
    let base = match query_base(relative_to, path) {
        Ok(b) => b,
        Err(s) => return s,
    };
    if !with(|r| r.exists(&base)) {
        return if relative_to & RTL_REGISTRY_OPTIONAL != 0 {
            STATUS_SUCCESS
        } else {
            STATUS_OBJECT_NAME_NOT_FOUND
        };
    }
    let mut key = base.clone();
    let mut at = table;
    loop {
        let e = Entry::read(at);
        if e.routine == 0 && e.name == 0 {
            return STATUS_SUCCESS;
        }
        at += l::RTL_QUERY_REGISTRY_TABLE;
        if e.flags & RTL_QUERY_REGISTRY_TOPKEY != 0 {
            key.clone_from(&base);
            continue;
        }
        if e.flags & RTL_QUERY_REGISTRY_SUBKEY != 0 {
            key = join(
                &base,
                &wide("RtlQueryRegistryValues QueryTable Name", e.name),
            );
            if !with(|r| r.exists(&key)) && e.flags & RTL_QUERY_REGISTRY_REQUIRED != 0 {
                return STATUS_OBJECT_NAME_NOT_FOUND;
            }
            continue;
        }
        if let Err(s) = query_entry(&e, &key, context) {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[repr(C)]
    struct Us {
        len: u16,
        max: u16,
        buf: *const u16,
    }

    #[repr(C)]
    struct Oa {
        length: u32,
        root: u64,
        name: *const Us,
        attributes: u32,
        sd: usize,
        qos: usize,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Rqt {
        routine: usize,
        flags: u32,
        name: *const u16,
        context: usize,
        default_type: u32,
        default_data: usize,
        default_length: u32,
    }

    const END: Rqt = Rqt {
        routine: 0,
        flags: 0,
        name: std::ptr::null(),
        context: 0,
        default_type: 0,
        default_data: 0,
        default_length: 0,
    };

    fn wz(text: &str) -> Vec<u16> {
        text.encode_utf16().chain([0]).collect()
    }

    fn us(units: &[u16]) -> Us {
        let n = units.len().saturating_sub(1) * 2;
        Us {
            len: n as u16,
            max: (n + 2) as u16,
            buf: units.as_ptr(),
        }
    }

    /// Opens `path` (relative to `root` when nonzero).
    fn open(root: u64, path: &str) -> Result<u64, Status> {
        let units = wz(path);
        let name = us(&units);
        let oa = Oa {
            length: 0x30,
            root,
            name: &name,
            attributes: 0x240,
            sd: 0,
            qos: 0,
        };
        let mut h = 0u64;
        match zw_open_key(&mut h as *mut u64 as usize, 0, &oa as *const Oa as usize) {
            STATUS_SUCCESS => Ok(h),
            s => Err(s),
        }
    }

    fn query(h: u64, name: &str, class: u32, len: usize) -> (Status, u32, Vec<u8>) {
        let units = wz(name);
        let n = us(&units);
        let mut buf = vec![0xEEu8; 64];
        let mut result = 0u32;
        let s = zw_query_value_key(
            h,
            &n as *const Us as usize,
            class,
            buf.as_mut_ptr() as usize,
            len as u32,
            &mut result as *mut u32 as usize,
        );
        (s, result, buf)
    }

    fn spec(text: &str) -> RegistrySpec {
        RegistrySpec::parse(text).unwrap()
    }

    #[test]
    fn query_value_key_answers_each_class_and_buffer_size() {
        init("regtest1", &[spec("Parameters\\V=binary:01,02,03,04,05")]);
        // Names are case-insensitive; a key can be opened relative to another.
        let service = open(
            0,
            "\\REGISTRY\\Machine\\System\\CurrentControlSet\\Services\\RegTest1",
        )
        .unwrap();
        let h = open(service, "parameters").unwrap();
        assert_eq!(open(service, "Nope"), Err(STATUS_OBJECT_NAME_NOT_FOUND));
        assert_eq!(open(0, "relative"), Err(STATUS_OBJECT_PATH_SYNTAX_BAD));
        // Partial: fixed part 12, then 5 bytes.
        let (s, r, buf) = query(h, "v", 2, 11);
        assert_eq!((s, r), (STATUS_BUFFER_TOO_SMALL, 17));
        assert!(buf.iter().all(|&b| b == 0xEE), "nothing written");
        let (s, r, buf) = query(h, "V", 2, 13);
        assert_eq!((s, r), (STATUS_BUFFER_OVERFLOW, 17));
        assert_eq!(
            buf.get(..14),
            Some(&[0, 0, 0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 1, 0xEE][..])
        );
        let (s, r, buf) = query(h, "V", 2, 64);
        assert_eq!((s, r), (STATUS_SUCCESS, 17));
        assert_eq!(buf.get(12..17), Some(&[1, 2, 3, 4, 5][..]));
        // Basic: fixed part 12, then the name.
        let (s, r, buf) = query(h, "V", 0, 64);
        assert_eq!((s, r), (STATUS_SUCCESS, 14));
        assert_eq!(buf.get(8..14), Some(&[2, 0, 0, 0, b'V', 0][..]));
        // Full: fixed part 20, the name, the data at the next 4-byte boundary (24).
        let (s, r, buf) = query(h, "V", 1, 64);
        assert_eq!((s, r), (STATUS_SUCCESS, 29));
        assert_eq!(buf.get(8..12), Some(&24u32.to_le_bytes()[..]));
        assert_eq!(buf.get(24..29), Some(&[1, 2, 3, 4, 5][..]));
        assert_eq!(query(h, "V", 5, 64).0, STATUS_INVALID_PARAMETER);
        assert_eq!(query(h, "W", 2, 64).0, STATUS_OBJECT_NAME_NOT_FOUND);
        assert_eq!(zw_close(h), STATUS_SUCCESS);
        assert_eq!(query(h, "V", 2, 64).0, STATUS_INVALID_HANDLE);
        zw_close(service);
    }

    fn rtl(relative: u32, path: &str, table: &[Rqt]) -> Status {
        let p = wz(path);
        let mut t = table.to_vec();
        t.push(END);
        rtl_query_registry_values(relative, p.as_ptr() as usize, t.as_ptr() as usize, 0, 0)
    }

    fn direct(name: &[u16], context: usize, flags: u32) -> Rqt {
        Rqt {
            flags: RTL_QUERY_REGISTRY_DIRECT | flags,
            name: name.as_ptr(),
            context,
            ..END
        }
    }

    #[test]
    fn query_registry_values_stores_direct_values_as_documented() {
        init(
            "regtest2",
            &[
                spec("Parameters\\D=dword:7"),
                spec("Parameters\\Q=qword:0x1122334455667788"),
                spec("Parameters\\B=binary:01,02,03,04,05,06"),
                spec("Parameters\\S=sz:abc"),
                spec("Parameters\\Gone=dword:1"),
            ],
        );
        let path = "regtest2\\Parameters";
        let services = 1;
        let (d, q, b, s, gone) = (wz("D"), wz("Q"), wz("B"), wz("S"), wz("Gone"));
        let mut dword = 0u32;
        let t = [direct(&d, &mut dword as *mut u32 as usize, 0)];
        assert_eq!(rtl(services, path, &t), STATUS_SUCCESS);
        assert_eq!(dword, 7);
        // Longer than a ULONG, positive size: length, type, data.
        let mut buf = [0u8; 16];
        buf[..4].copy_from_slice(&16i32.to_le_bytes());
        let t = [direct(&q, buf.as_mut_ptr() as usize, 0)];
        assert_eq!(rtl(services, path, &t), STATUS_SUCCESS);
        assert_eq!(buf[..8], [8, 0, 0, 0, 11, 0, 0, 0]);
        assert_eq!(buf[8..], 0x1122_3344_5566_7788u64.to_le_bytes());
        // Negative size: the data only, and only if it fits.
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&(-6i32).to_le_bytes());
        let t = [direct(&b, buf.as_mut_ptr() as usize, 0)];
        assert_eq!(rtl(services, path, &t), STATUS_SUCCESS);
        assert_eq!(buf[..6], [1, 2, 3, 4, 5, 6]);
        buf[..4].copy_from_slice(&(-4i32).to_le_bytes());
        assert_eq!(rtl(services, path, &t), STATUS_BUFFER_TOO_SMALL);
        // A string into the caller's buffer: too small, then big enough.
        let mut small = [0u16; 2];
        let mut str_ = Us {
            len: 0,
            max: 4,
            buf: small.as_mut_ptr(),
        };
        let t = [direct(&s, &mut str_ as *mut Us as usize, 0)];
        assert_eq!(rtl(services, path, &t), STATUS_BUFFER_TOO_SMALL);
        let mut big = [0u16; 8];
        str_.max = 16;
        str_.buf = big.as_mut_ptr();
        assert_eq!(rtl(services, path, &t), STATUS_SUCCESS);
        assert_eq!((str_.len, &big[..4]), (6, &[97, 98, 99, 0][..]));
        // TYPECHECK: a REG_DWORD where a REG_SZ is expected.
        let mut t = [direct(
            &d,
            &mut dword as *mut u32 as usize,
            RTL_QUERY_REGISTRY_TYPECHECK,
        )];
        t[0].default_type = REG_SZ << 24;
        assert_eq!(rtl(services, path, &t), STATUS_OBJECT_TYPE_MISMATCH);
        // Missing: REQUIRED fails, a default is stored, REG_NONE leaves the buffer alone.
        let missing = wz("Missing");
        let mut v = 0u32;
        let t = [direct(
            &missing,
            &mut v as *mut u32 as usize,
            RTL_QUERY_REGISTRY_REQUIRED,
        )];
        assert_eq!(rtl(services, path, &t), STATUS_OBJECT_NAME_NOT_FOUND);
        let nine = 9u32;
        let mut t = [direct(&missing, &mut v as *mut u32 as usize, 0)];
        t[0].default_type = 4;
        t[0].default_data = &nine as *const u32 as usize;
        t[0].default_length = 4;
        assert_eq!(rtl(services, path, &t), STATUS_SUCCESS);
        assert_eq!(v, 9);
        // DELETE removes the value after reading it.
        let t = [direct(
            &gone,
            &mut v as *mut u32 as usize,
            RTL_QUERY_REGISTRY_DELETE,
        )];
        assert_eq!(rtl(services, path, &t), STATUS_SUCCESS);
        let t = [direct(
            &gone,
            &mut v as *mut u32 as usize,
            RTL_QUERY_REGISTRY_REQUIRED,
        )];
        assert_eq!(rtl(services, path, &t), STATUS_OBJECT_NAME_NOT_FOUND);
        // A missing key: an error, unless OPTIONAL.
        assert_eq!(
            rtl(services, "regtest2\\No", &[]),
            STATUS_OBJECT_NAME_NOT_FOUND
        );
        assert_eq!(
            rtl(services | RTL_REGISTRY_OPTIONAL, "regtest2\\No", &[]),
            STATUS_SUCCESS
        );
        // An entry that is not DIRECT needs a routine.
        let t = [Rqt {
            name: d.as_ptr(),
            ..END
        }];
        assert_eq!(rtl(services, path, &t), STATUS_INVALID_PARAMETER);
    }

    /// Two pages: the first readable, the second not.
    fn guarded() -> usize {
        // SAFETY: a fresh anonymous mapping of two pages; no memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let second = (p as usize + PAGE) as *mut libc::c_void;
        // SAFETY: the second page of the mapping just made, which nothing uses.
        assert_eq!(unsafe { libc::mprotect(second, PAGE, libc::PROT_NONE) }, 0);
        p as usize
    }

    /// A length the driver claims beyond its buffer is answered with what is readable,
    /// without a fault and without allocating the claimed length (4 GiB here).
    #[test]
    fn reads_of_driver_memory_stop_at_what_is_readable() {
        let p = guarded();
        let page = copy_in(p, PAGE).unwrap();
        assert_eq!(page.len(), PAGE);
        assert_eq!(copy_in(p + 10, 2 * PAGE), Err(PAGE - 10));
        assert_eq!(copy_in(p + 10, u32::MAX as usize), Err(PAGE - 10));
        assert_eq!(copy_in(p + PAGE, 1), Err(0));
        assert_eq!(copy_in(0, 100), Ok(Vec::new()));
        assert_eq!(copy_in(usize::MAX, 2), Err(0));
        // A string whose NUL is the page's last unit is read without touching the next;
        // a misaligned one too.
        for start in [p, p + 1] {
            let n = (p + PAGE - start) / 2;
            // SAFETY: the first page of `guarded`, writable.
            let bytes = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, 2 * n) };
            for (i, c) in bytes.chunks_exact_mut(2).enumerate() {
                c.copy_from_slice(&if i + 1 == n { 0u16 } else { 0x61 }.to_le_bytes());
            }
            assert_eq!(wide_units("test", start).len(), n - 1);
        }
        assert_eq!(wide("test", 0), "");
    }

    static SEEN: AtomicU32 = AtomicU32::new(0);

    extern "win64" fn count(
        _name: usize,
        kind: u32,
        _data: usize,
        len: u32,
        _context: usize,
        _entry: usize,
    ) -> Status {
        SEEN.fetch_add(kind * 100 + len, Ordering::Relaxed);
        STATUS_SUCCESS
    }

    #[test]
    fn query_routines_get_multi_sz_strings_one_at_a_time_and_subkeys_switch_keys() {
        init(
            "regtest3",
            &[
                spec("Parameters\\M=multi_sz:ab,c"),
                spec("Parameters\\Sub\\D=dword:1"),
            ],
        );
        let (m, sub, d) = (wz("M"), wz("Sub"), wz("D"));
        let routine = count as *const () as usize;
        // QueryRoutines must be driver code: this test's routine stands for it.
        super::super::trap::add_image(routine & !0xFFF, 0x2000);
        let entry = |name: &[u16], flags: u32| Rqt {
            routine,
            flags,
            name: name.as_ptr(),
            ..END
        };
        // "ab\0" then "c\0" as REG_SZ (1): 100 + 6, 100 + 4.
        SEEN.store(0, Ordering::Relaxed);
        assert_eq!(
            rtl(1, "regtest3\\Parameters", &[entry(&m, 0)]),
            STATUS_SUCCESS
        );
        assert_eq!(SEEN.load(Ordering::Relaxed), 210);
        // NOEXPAND: the whole REG_MULTI_SZ (7) once: 700 + 12 ("ab\0c\0\0").
        SEEN.store(0, Ordering::Relaxed);
        let t = [entry(&m, RTL_QUERY_REGISTRY_NOEXPAND)];
        assert_eq!(rtl(1, "regtest3\\Parameters", &t), STATUS_SUCCESS);
        assert_eq!(SEEN.load(Ordering::Relaxed), 712);
        // SUBKEY moves to Parameters\Sub (its D: REG_DWORD, 4 bytes), TOPKEY back.
        SEEN.store(0, Ordering::Relaxed);
        let t = [
            Rqt {
                flags: RTL_QUERY_REGISTRY_SUBKEY,
                name: sub.as_ptr(),
                ..END
            },
            entry(&d, 0),
            Rqt {
                flags: RTL_QUERY_REGISTRY_TOPKEY,
                routine,
                ..END
            },
            entry(&d, 0),
        ];
        assert_eq!(rtl(1, "regtest3\\Parameters", &t), STATUS_SUCCESS);
        assert_eq!(SEEN.load(Ordering::Relaxed), 404);
        // A NULL name enumerates the key's values.
        SEEN.store(0, Ordering::Relaxed);
        let t = [Rqt {
            routine,
            flags: RTL_QUERY_REGISTRY_NOEXPAND,
            ..END
        }];
        assert_eq!(rtl(1, "regtest3\\Parameters", &t), STATUS_SUCCESS);
        assert_eq!(SEEN.load(Ordering::Relaxed), 712);
    }

    #[test]
    fn created_keys_and_set_values_are_read_back() {
        init("regtest4", &[]);
        let units = wz("\\Registry\\Machine\\Software\\IosvTest4");
        let name = us(&units);
        let oa = Oa {
            length: 0x30,
            root: 0,
            name: &name,
            attributes: 0x240,
            sd: 0,
            qos: 0,
        };
        let (mut h, mut disposition) = (0u64, 0u32);
        let args = (
            &mut h as *mut u64 as usize,
            &oa as *const Oa as usize,
            &mut disposition as *mut u32 as usize,
        );
        assert_eq!(
            zw_create_key(args.0, 0, args.1, 0, 0, 0, args.2),
            STATUS_SUCCESS
        );
        assert_eq!(disposition, REG_CREATED_NEW_KEY);
        assert_eq!(
            zw_create_key(args.0, 0, args.1, 0, 0, 0, args.2),
            STATUS_SUCCESS
        );
        assert_eq!(disposition, REG_OPENED_EXISTING_KEY);
        let vname = wz("X");
        let vn = us(&vname);
        let data = 0xABCDu32;
        let s = zw_set_value_key(
            h,
            &vn as *const Us as usize,
            0,
            4,
            &data as *const u32 as usize,
            4,
        );
        assert_eq!(s, STATUS_SUCCESS);
        let (s, r, buf) = query(h, "x", 2, 64);
        assert_eq!((s, r), (STATUS_SUCCESS, 16));
        assert_eq!(buf.get(12..16), Some(&0xABCDu32.to_le_bytes()[..]));
        // Enumerated in order, then no more; deleted once.
        let mut buf = [0u8; 32];
        let mut r = 0u32;
        let (b, rl) = (buf.as_mut_ptr() as usize, &mut r as *mut u32 as usize);
        assert_eq!(zw_enumerate_value_key(h, 0, 0, b, 32, rl), STATUS_SUCCESS);
        assert_eq!((r, buf[12]), (14, b'X'));
        assert_eq!(
            zw_enumerate_value_key(h, 1, 0, b, 32, rl),
            STATUS_NO_MORE_ENTRIES
        );
        assert_eq!(
            zw_delete_value_key(h, &vn as *const Us as usize),
            STATUS_SUCCESS
        );
        assert_eq!(
            zw_delete_value_key(h, &vn as *const Us as usize),
            STATUS_OBJECT_NAME_NOT_FOUND
        );
        assert_eq!(
            zw_enumerate_value_key(h, 0, 0, b, 32, rl),
            STATUS_NO_MORE_ENTRIES
        );
        // Each PDO opens its own instance's keys; instance 0's exist from the start.
        let (pdo0, pdo1, fdo) = (0x7000_0000_usize, 0x7000_1000_usize, 0x7000_2000_usize);
        add_pdo(pdo0, 0);
        add_pdo(pdo1, 1);
        let mut hw = 0u64;
        let out = &mut hw as *mut u64 as usize;
        let opened = |device: usize, kind: u32| {
            let mut h = 0u64;
            let st = io_open_device_registry_key(device, kind, 0, &mut h as *mut u64 as usize);
            (st, with(|r| r.handles.get(&h).cloned()))
        };
        assert_eq!(
            opened(pdo0, 1),
            (STATUS_SUCCESS, Some(norm(&hardware_key(0))))
        );
        assert_eq!(
            opened(pdo1, 1),
            (STATUS_SUCCESS, Some(norm(&hardware_key(1))))
        );
        assert_ne!(hardware_key(0), hardware_key(1));
        // The current hardware profile (4) goes with DEVICE or DRIVER, not alone; DEVICE
        // and DRIVER together are refused.
        assert_eq!(
            opened(pdo1, 2 | 4),
            (STATUS_SUCCESS, Some(norm(&software_key(1))))
        );
        // Not a PDO: an FDO, NULL.
        for device in [fdo, 0] {
            assert_eq!(
                io_open_device_registry_key(device, 1, 0, out),
                STATUS_INVALID_DEVICE_REQUEST
            );
        }
        for bad in [0, 4, 1 | 2, 8, 1 | 8] {
            assert_eq!(
                io_open_device_registry_key(pdo0, bad, 0, out),
                STATUS_INVALID_PARAMETER,
                "{bad}"
            );
        }
    }
}
