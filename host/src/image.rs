//! Simulated driver images: a real (tiny) PE32+ image in loaded layout per driver load,
//! whose import address table the engine's own [`intercept`](iosv::intercept) plan
//! patches through [`SlotAccess`](iosv::intercept::SlotAccess), exactly as in the kernel.
//!
//! Each image imports `MmMapIoSpace`, `MmMapIoSpaceEx`, `MmUnmapIoSpace`,
//! `MmGetSystemRoutineAddress` and the MDL and reserved-mapping family (every
//! [`HookedRoutine`], plus a few unhooked routines) from `ntoskrnl.exe`. At load
//! the "loader" binds every IAT slot to the address of the real routine ([`REAL`]); a
//! simulated driver calls an Mm routine by reading its slot and dispatching on the value:
//! iosv's hook address ([`HOOKS`]) goes to the verifier, the real address straight to the
//! simulated Mm. So attach and detach change what a driver's calls reach only by what
//! they write into the slots.
//!
//! Addresses: driver images are loaded at [`IMAGE_REGION`] + n × 1 MiB (a new base for
//! every load), the simulated `ntoskrnl.exe` lives at `0xFFFFF800_00000000` and `iosv.sys`
//! at `0xFFFFF807_70000000`.

use iosv::intercept::{HookTable, Hooks, MdlHooks};
use iosv::pe::HookedRoutine;
use std::string::String;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::vec::Vec;

/// Where simulated driver images are loaded (each load gets the next 1 MiB window).
pub const IMAGE_REGION: u64 = 0xFFFF_F806_0000_0000;
/// Stride between image bases.
pub const IMAGE_STRIDE: u64 = 0x10_0000;
/// `SizeOfImage` of every simulated image.
pub const IMAGE_SIZE: u64 = 0x4000;
/// RVA of `.text`.
pub const TEXT_RVA: u64 = 0x1000;

/// Addresses of iosv's hooks in the simulated `iosv.sys`.
pub const HOOKS: Hooks = Hooks {
    map_io_space: 0xFFFF_F807_7000_1000,
    map_io_space_ex: 0xFFFF_F807_7000_1200,
    unmap_io_space: 0xFFFF_F807_7000_1400,
    get_system_routine_address: 0xFFFF_F807_7000_1600,
};

/// Addresses of iosv's hooks of the MDL family in the simulated `iosv.sys`.
pub const HOOKS_MDL: MdlHooks = MdlHooks {
    map_locked_pages_specify_cache: 0xFFFF_F807_7000_2000,
    map_locked_pages: 0xFFFF_F807_7000_2100,
    unmap_locked_pages: 0xFFFF_F807_7000_2200,
    free_mdl: 0xFFFF_F807_7000_2300,
    unlock_pages: 0xFFFF_F807_7000_2400,
    allocate_mapping_address: 0xFFFF_F807_7000_2600,
    allocate_mapping_address_ex: 0xFFFF_F807_7000_2700,
    map_locked_pages_with_reserved_mapping: 0xFFFF_F807_7000_2800,
    unmap_reserved_mapping: 0xFFFF_F807_7000_2900,
    free_mapping_address: 0xFFFF_F807_7000_2A00,
};

/// Every hook of the simulated `iosv.sys` (what its plans patch in).
pub const HOOK_TABLE: HookTable = HookTable {
    io: HOOKS,
    mdl: HOOKS_MDL,
};

/// Addresses of the real routines in the simulated `ntoskrnl.exe`.
pub const REAL: Hooks = Hooks {
    map_io_space: 0xFFFF_F800_0042_1000,
    map_io_space_ex: 0xFFFF_F800_0042_1200,
    unmap_io_space: 0xFFFF_F800_0042_1400,
    get_system_routine_address: 0xFFFF_F800_0051_0000,
};

/// Addresses of the MDL family's real routines in the simulated `ntoskrnl.exe`.
pub const REAL_MDL: MdlHooks = MdlHooks {
    map_locked_pages_specify_cache: 0xFFFF_F800_0043_1000,
    map_locked_pages: 0xFFFF_F800_0043_1200,
    unmap_locked_pages: 0xFFFF_F800_0043_1400,
    free_mdl: 0xFFFF_F800_0037_1000,
    unlock_pages: 0xFFFF_F800_0043_1600,
    allocate_mapping_address: 0xFFFF_F800_0043_2000,
    allocate_mapping_address_ex: 0xFFFF_F800_0043_2200,
    map_locked_pages_with_reserved_mapping: 0xFFFF_F800_0043_2400,
    unmap_reserved_mapping: 0xFFFF_F800_0043_2600,
    free_mapping_address: 0xFFFF_F800_0043_2800,
};

/// Every real routine of the simulated `ntoskrnl.exe` that iosv hooks.
pub const REAL_TABLE: HookTable = HookTable {
    io: REAL,
    mdl: REAL_MDL,
};

/// Synthetic kernel frames that call into drivers (the outer frames of simulated stacks).
pub mod kernel_frames {
    /// The PnP manager sending a PnP IRP (start, stop, removal).
    pub const PNP_IRP: u64 = 0xFFFF_F800_0060_2A40;
    /// The I/O manager calling a dispatch routine.
    pub const IO_DISPATCH: u64 = 0xFFFF_F800_0031_1C80;
    /// A system worker thread running a work item.
    pub const WORK_ITEM: u64 = 0xFFFF_F800_0038_04F0;
    /// The DPC dispatcher.
    pub const DPC: u64 = 0xFFFF_F800_0041_7730;
    /// An interrupt dispatch (ISR at DIRQL).
    pub const INTERRUPT: u64 = 0xFFFF_F800_0041_9D10;
    /// The loader calling DriverEntry or DriverUnload.
    pub const LOADER: u64 = 0xFFFF_F800_0070_1160;
    /// Base of the frames that name a scenario step: `SCENARIO_STEP + 16 × step`.
    pub const SCENARIO_STEP: u64 = 0xFFFF_F800_4000_0000;
}

/// An import of the simulated images: (dll, routine, real address).
const IMPORTS: [(&str, &str, u64); 17] = [
    ("ntoskrnl.exe", "MmMapIoSpace", REAL.map_io_space as u64),
    ("ntoskrnl.exe", "ExAllocatePool2", 0xFFFF_F800_0033_0000),
    (
        "ntoskrnl.exe",
        "MmMapIoSpaceEx",
        REAL.map_io_space_ex as u64,
    ),
    ("ntoskrnl.exe", "MmUnmapIoSpace", REAL.unmap_io_space as u64),
    ("ntoskrnl.exe", "IoCreateDevice", 0xFFFF_F800_0036_0000),
    (
        "ntoskrnl.exe",
        "MmGetSystemRoutineAddress",
        REAL.get_system_routine_address as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmMapLockedPagesSpecifyCache",
        REAL_MDL.map_locked_pages_specify_cache as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmMapLockedPages",
        REAL_MDL.map_locked_pages as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmUnmapLockedPages",
        REAL_MDL.unmap_locked_pages as u64,
    ),
    ("ntoskrnl.exe", "IoFreeMdl", REAL_MDL.free_mdl as u64),
    (
        "ntoskrnl.exe",
        "MmUnlockPages",
        REAL_MDL.unlock_pages as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmAllocateMappingAddress",
        REAL_MDL.allocate_mapping_address as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmAllocateMappingAddressEx",
        REAL_MDL.allocate_mapping_address_ex as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmMapLockedPagesWithReservedMapping",
        REAL_MDL.map_locked_pages_with_reserved_mapping as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmUnmapReservedMapping",
        REAL_MDL.unmap_reserved_mapping as u64,
    ),
    (
        "ntoskrnl.exe",
        "MmFreeMappingAddress",
        REAL_MDL.free_mapping_address as u64,
    ),
    (
        "HAL.dll",
        "KeStallExecutionProcessor",
        0xFFFF_F800_0080_0000,
    ),
];

const NT: usize = 0x80;
const OPTIONAL: usize = NT + 24;
const DIRECTORIES: usize = OPTIONAL + 112;
const SECTIONS: usize = OPTIONAL + 240;
const RDATA: usize = 0x3000;
const DESCRIPTORS: usize = RDATA;
const STRINGS: usize = RDATA + 0x100;
const LOOKUP: usize = RDATA + 0x400;
const IAT: usize = RDATA + 0x800;
/// The debug directory (one CodeView entry) and its `RSDS` record.
const DEBUG_DIR: usize = RDATA + 0xC00;
const CODEVIEW: usize = RDATA + 0xC20;

/// The CodeView GUID a simulated image of `name` carries: derived from the name (FNV-1a),
/// stable across runs. No PDB with this GUID exists — the simulated drivers are host code,
/// not compiled images — so symbolizers find nothing for them and say so; the record is
/// there so that the path from image to wire to client is the kernel's.
pub fn simulated_guid(name: &str) -> [u8; 16] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        for b in name
            .bytes()
            .chain(core::iter::once(u8::try_from(i).unwrap_or(0)))
        {
            h ^= u64::from(b.to_ascii_lowercase());
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = at
            .checked_add(bytes.len())
            .and_then(|end| self.buf.get_mut(at..end))
        {
            dst.copy_from_slice(bytes);
        }
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.put(at, &v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }
}

fn rva(offset: usize) -> u32 {
    u32::try_from(offset).unwrap_or(0)
}

/// Lays out the image (loaded layout) and returns its bytes and the RVA of each import's
/// IAT slot, in [`IMPORTS`] order.
/// With `iat_in_code`, the section holding the import tables is a code section, as in an
/// image linked with `/MERGE:.rdata=.text`.
fn build(name: &str, base: u64, iat_in_code: bool) -> (Vec<u8>, [usize; IMPORTS.len()]) {
    let size = usize::try_from(IMAGE_SIZE).unwrap_or(0);
    let mut w = Writer {
        buf: std::vec![0u8; size],
    };
    w.u16(0, 0x5A4D);
    w.u32(0x3C, rva(NT));
    w.u32(NT, 0x0000_4550);
    w.u16(NT.wrapping_add(4), iosv::pe::MACHINE_AMD64);
    w.u16(NT.wrapping_add(6), 2);
    w.u16(NT.wrapping_add(20), 240);
    w.u16(NT.wrapping_add(22), 0x0022);
    w.u16(OPTIONAL, 0x20B);
    w.u64(OPTIONAL.wrapping_add(24), base);
    w.u32(OPTIONAL.wrapping_add(32), 0x1000);
    w.u32(OPTIONAL.wrapping_add(36), 0x200);
    w.u32(OPTIONAL.wrapping_add(56), rva(size));
    w.u32(OPTIONAL.wrapping_add(60), 0x400);
    w.u16(OPTIONAL.wrapping_add(68), 1);
    w.u32(OPTIONAL.wrapping_add(108), 16);
    let sections: [(&[u8], u32, u32, u32); 2] = [
        (b".text", 0x1000, 0x2000, 0x6000_0020),
        (
            b".rdata",
            rva(RDATA),
            0x1000,
            if iat_in_code {
                0x6000_0020 // CNT_CODE | MEM_EXECUTE | MEM_READ
            } else {
                0x4000_0040 // CNT_INITIALIZED_DATA | MEM_READ
            },
        ),
    ];
    let mut at = SECTIONS;
    for (name, va, len, flags) in sections {
        w.put(at, name);
        w.u32(at.wrapping_add(8), len);
        w.u32(at.wrapping_add(12), va);
        w.u32(at.wrapping_add(16), len);
        w.u32(at.wrapping_add(20), va);
        w.u32(at.wrapping_add(36), flags);
        at = at.wrapping_add(40);
    }

    // Group the imports by DLL, in order of first appearance.
    let mut dlls: Vec<&str> = Vec::new();
    for (dll, _, _) in IMPORTS {
        if !dlls.contains(&dll) {
            dlls.push(dll);
        }
    }
    w.u32(DIRECTORIES.wrapping_add(8), rva(DESCRIPTORS));
    w.u32(
        DIRECTORIES.wrapping_add(12),
        rva(dlls.len().wrapping_add(1).wrapping_mul(20)),
    );
    let mut strings = STRINGS;
    let mut lookup = LOOKUP;
    let mut iat = IAT;
    let mut slots = [0usize; IMPORTS.len()];
    for (d, dll) in dlls.iter().enumerate() {
        let desc = DESCRIPTORS.wrapping_add(d.wrapping_mul(20));
        w.put(strings, dll.as_bytes());
        w.u32(desc, rva(lookup));
        w.u32(desc.wrapping_add(12), rva(strings));
        w.u32(desc.wrapping_add(16), rva(iat));
        strings = strings.wrapping_add(dll.len()).wrapping_add(2) & !1;
        for (i, (owner, routine, real)) in IMPORTS.iter().enumerate() {
            if owner != dll {
                continue;
            }
            let hint_name = strings;
            w.put(hint_name.wrapping_add(2), routine.as_bytes());
            strings = strings.wrapping_add(routine.len()).wrapping_add(4) & !1;
            w.u64(lookup, hint_name as u64);
            w.u64(iat, *real);
            if let Some(s) = slots.get_mut(i) {
                *s = iat;
            }
            lookup = lookup.wrapping_add(8);
            iat = iat.wrapping_add(8);
        }
        lookup = lookup.wrapping_add(8);
        iat = iat.wrapping_add(8);
    }

    // The debug directory: one IMAGE_DEBUG_TYPE_CODEVIEW entry whose RSDS record names
    // `<stem>.pdb` under a build directory, with the simulated GUID and age 1.
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let path = std::format!("C:\\iosv-host\\{stem}.pdb");
    let record_len = 24usize.wrapping_add(path.len()).wrapping_add(1);
    w.u32(DIRECTORIES.wrapping_add(6 * 8), rva(DEBUG_DIR));
    w.u32(DIRECTORIES.wrapping_add(6 * 8 + 4), 28);
    w.u32(DEBUG_DIR.wrapping_add(12), iosv::pe::DEBUG_TYPE_CODEVIEW);
    w.u32(DEBUG_DIR.wrapping_add(16), rva(record_len));
    w.u32(DEBUG_DIR.wrapping_add(20), rva(CODEVIEW));
    w.u32(CODEVIEW, iosv::pe::CODEVIEW_RSDS);
    w.put(CODEVIEW.wrapping_add(4), &simulated_guid(name));
    w.u32(CODEVIEW.wrapping_add(20), 1);
    w.put(CODEVIEW.wrapping_add(24), path.as_bytes());
    (w.buf, slots)
}

/// One load of a simulated driver image.
pub struct SimImage {
    name: String,
    base: u64,
    /// The image as the loader laid it out (the import directory is read from here).
    bytes: Vec<u8>,
    /// The image's memory as words; IAT writes land here.
    words: Box<[AtomicU64]>,
    /// IAT slot RVA per import.
    slots: [usize; IMPORTS.len()],
    loaded: AtomicBool,
    inflight: AtomicU64,
    driver_id: AtomicU16,
    /// The plan that patched this image's slots, while attached.
    pub(crate) plan: std::sync::Mutex<Option<iosv::intercept::Plan>>,
}

impl SimImage {
    /// Lays out a new image of `name` at `base`, with its IAT bound to the real routines.
    pub fn new(name: &str, base: u64) -> SimImage {
        SimImage::with_layout(name, base, false)
    }

    /// An image whose import tables lie in a code section when `iat_in_code` (linked with
    /// `/MERGE:.rdata=.text`): iosv refuses to patch it.
    pub fn with_layout(name: &str, base: u64, iat_in_code: bool) -> SimImage {
        let (bytes, slots) = build(name, base, iat_in_code);
        let words = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                AtomicU64::new(u64::from_le_bytes(b))
            })
            .collect();
        SimImage {
            name: String::from(name),
            base,
            bytes,
            words,
            slots,
            loaded: AtomicBool::new(true),
            inflight: AtomicU64::new(0),
            driver_id: AtomicU16::new(0),
            plan: std::sync::Mutex::new(None),
        }
    }

    /// Records this image's PDB identity (its CodeView record) for driver `id`, as the
    /// Windows glue does for a real image.
    pub fn record_debug(&self, drivers: &iosv::drivers::Drivers, id: iosv::drivers::DriverId) {
        let debug = iosv::pe::PeImage::parse(&self.bytes)
            .map_or(iosv::drivers::ImageDebug::Malformed, |pe| {
                iosv::drivers::ImageDebug::of(&pe)
            });
        drivers.set_debug(id, self.base, debug);
    }

    /// The image name (`nic.sys`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Where it is loaded.
    pub fn base(&self) -> u64 {
        self.base
    }
    /// `SizeOfImage`.
    pub fn size(&self) -> u64 {
        IMAGE_SIZE
    }
    /// The image bytes in loaded layout, as the loader wrote them (IAT bound to the real
    /// routines; later patches are not reflected here).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// True if `address` lies inside the image.
    pub fn contains(&self, address: u64) -> bool {
        address >= self.base && address.wrapping_sub(self.base) < IMAGE_SIZE
    }
    /// The id iosv gave the driver while it is attached (0 = not attached).
    pub fn driver_id(&self) -> u16 {
        self.driver_id.load(Ordering::Acquire)
    }
    pub(crate) fn set_driver_id(&self, id: u16) {
        self.driver_id.store(id, Ordering::Release);
    }
    /// True until the image starts unloading.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    fn word(&self, address: u64) -> Option<&AtomicU64> {
        if !self.contains(address) || !address.is_multiple_of(8) {
            return None;
        }
        let index = usize::try_from(address.wrapping_sub(self.base) / 8).ok()?;
        self.words.get(index)
    }

    /// Reads the pointer-sized word at absolute `address` inside the image.
    pub fn read_word(&self, address: u64) -> Option<u64> {
        self.word(address).map(|w| w.load(Ordering::Acquire))
    }

    /// Compare-and-exchange of the word at `address`: `Ok(())` if it held `current` and
    /// now holds `new`, `Err(Some(found))` if it held `found`, `Err(None)` if `address`
    /// is not a word of the image.
    pub fn exchange_word(&self, address: u64, current: u64, new: u64) -> Result<(), Option<u64>> {
        let w = self.word(address).ok_or(None)?;
        w.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(Some)
    }

    /// The absolute address of the IAT slot importing `routine`.
    pub fn slot_address(&self, routine: HookedRoutine) -> u64 {
        let name = routine.name();
        let rva = IMPORTS
            .iter()
            .zip(self.slots.iter())
            .find(|((_, r, _), _)| *r == name)
            .map_or(0, |(_, s)| *s);
        self.base.wrapping_add(rva as u64)
    }

    /// What the driver's call to `routine` through its IAT reaches now.
    pub fn slot_value(&self, routine: HookedRoutine) -> u64 {
        self.read_word(self.slot_address(routine)).unwrap_or(0)
    }

    /// Rundown protection: holds the image loaded while a call runs in it. `None` if the
    /// image is unloading.
    pub fn enter(&self) -> Option<InImage<'_>> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        if self.loaded.load(Ordering::SeqCst) {
            Some(InImage { image: self })
        } else {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            None
        }
    }

    /// Calls running in the image now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Marks the image unloading and waits until no call runs in it.
    pub fn run_down(&self) {
        self.loaded.store(false, Ordering::SeqCst);
        while self.inflight.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }
}

/// A call running inside a [`SimImage`] (see [`SimImage::enter`]).
pub struct InImage<'a> {
    image: &'a SimImage,
}

impl Drop for InImage<'_> {
    fn drop(&mut self) {
        self.image.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The routine a real `MmGetSystemRoutineAddress` returns for `name` (0 if unknown).
pub fn real_routine(name: &str) -> u64 {
    IMPORTS
        .iter()
        .find(|(_, r, _)| *r == name)
        .map_or(0, |(_, _, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iosv::pe::PeImage;

    #[test]
    fn image_parses_and_exposes_a_slot_per_hooked_routine() {
        let img = SimImage::new("nic.sys", IMAGE_REGION);
        let pe = PeImage::parse(img.bytes()).unwrap();
        let slots: Vec<_> = pe.hooked_slots(None).map(|s| s.unwrap()).collect();
        assert_eq!(slots.len(), iosv::pe::HookedRoutine::COUNT);
        for s in &slots {
            let addr = IMAGE_REGION + u64::from(s.rva);
            assert_eq!(addr, img.slot_address(s.routine));
            assert_eq!(img.read_word(addr), Some(REAL_TABLE.get(s.routine) as u64));
        }
    }
}
