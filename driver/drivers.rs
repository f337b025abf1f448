//! The target drivers iosv knows: a fixed array of slots that hook paths read without
//! locks (to attribute a call to the driver whose image contains its return address, and
//! to find the device a driver is starting), and that the control plane writes at
//! PASSIVE_LEVEL under the engine's lock.
//!
//! A slot's fields are written before its state is published (Release) and read after
//! the state (Acquire); a slot is never freed, only marked gone, so a reader racing an
//! unload sees either the old image range or none.

#![forbid(unsafe_code)]

use crate::protocol::{
    ImageDebugRecord, IDF_BAD_DEBUG_DIRECTORY, IDF_CODEVIEW, IDF_NAME_CUT, NAME_LEN, PDB_NAME_LEN,
};
use crate::sync::{try_boxed_slice, AtomicU32, AtomicU64, Ordering, OutOfMemory};
use alloc::boxed::Box;

/// Driver slots (ids 1..=MAX_DRIVERS; 0 means "unattributed").
pub const MAX_DRIVERS: usize = 64;
/// Devices of one driver that can be starting at the same time.
pub const MAX_STARTING: usize = 4;

/// State of a driver slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DriverState {
    /// Unused.
    Free = 0,
    /// Loaded and hooked.
    Attached = 1,
    /// Loaded, not hooked (known for attribution and names only).
    Loaded = 2,
    /// Unloaded or detached.
    Gone = 3,
}

impl DriverState {
    fn from_u32(v: u32) -> DriverState {
        match v {
            1 => DriverState::Attached,
            2 => DriverState::Loaded,
            3 => DriverState::Gone,
            _ => DriverState::Free,
        }
    }
}

/// The image range a hook attributes calls to, apart from the rest of the slot so the
/// scan reads 16 bytes per driver: `span` is the image size while the driver is Attached
/// or Loaded and 0 otherwise, so one unsigned compare (`addr - base < span`) tests both
/// the state and the range.
struct AttributionRange {
    base: AtomicU64,
    /// Written after `base` (Release), read before it (Acquire).
    span: AtomicU64,
}

/// A driver's id: its slot number + 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverId(pub u16);

impl DriverId {
    /// "No driver": the call could not be attributed.
    pub const NONE: DriverId = DriverId(0);
    fn index(self) -> Option<usize> {
        usize::from(self.0).checked_sub(1)
    }
}

struct DriverSlot {
    state: AtomicU32,
    image_base: AtomicU64,
    image_size: AtomicU64,
    name: [AtomicU64; NAME_LEN / 8],
    loads: AtomicU64,
    /// 1 if the driver was attached after it loaded (its earlier mappings are unknown).
    late: AtomicU32,
    /// Why the last attach was refused (`SiteRefusal` code), 0 if it was not.
    refusal: AtomicU32,
    /// Devices of this driver starting now (lets maps skip the scan when 0).
    starting: AtomicU32,
    starting_device: [AtomicU64; MAX_STARTING],
    starting_thread: [AtomicU64; MAX_STARTING],
}

/// A copy of a slot's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverInfo {
    /// Id.
    pub id: DriverId,
    /// State.
    pub state: DriverState,
    /// NUL-padded image name.
    pub name: [u8; NAME_LEN],
    /// Image base.
    pub image_base: u64,
    /// Image size.
    pub image_size: u64,
    /// Loads/attaches so far.
    pub loads: u64,
    /// Why the last attach was refused (`intercept::SiteRefusal` code), 0 if it was not.
    pub hook_refusal: u32,
}

/// The registry. See the module docs.
pub struct Drivers {
    slots: Box<[DriverSlot]>,
    /// Per slot, what [`attribute`](Self::attribute) scans (an array of fixed length: no
    /// bounds checks on the hook path; on the heap, like the slots).
    ranges: Box<[AttributionRange; MAX_DRIVERS]>,
    used: AtomicU32,
    /// Devices starting now, all drivers together: maps read only this while no start is
    /// in progress (the common case), not their driver's slot.
    starting: AtomicU32,
    /// Per slot: the PDB identity of the image's latest load (control plane only, so
    /// behind a lock and apart from the slots the hook paths scan).
    debug: spin::Mutex<Box<[ImageDebugRecord]>>,
}

/// What a platform read from a loaded image's debug directory, for
/// [`Drivers::set_debug`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageDebug<'a> {
    /// The image has no CodeView (`RSDS`) record.
    None,
    /// The debug directory is malformed.
    Malformed,
    /// The CodeView record: GUID, age and the PDB path (its last component is kept).
    CodeView(crate::pe::CodeView<'a>),
}

impl<'a> ImageDebug<'a> {
    /// Reads the debug directory of a parsed image.
    pub fn of(image: &crate::pe::PeImage<'a>) -> ImageDebug<'a> {
        match image.codeview() {
            Ok(Some(cv)) => ImageDebug::CodeView(cv),
            Ok(None) => ImageDebug::None,
            Err(_) => ImageDebug::Malformed,
        }
    }
}

impl Drivers {
    /// An empty registry (allocated on the heap: it is ~8 KiB, too big for a kernel stack).
    pub fn new() -> Result<Drivers, OutOfMemory> {
        Ok(Drivers {
            slots: try_boxed_slice(MAX_DRIVERS, |_| DriverSlot {
                state: AtomicU32::new(0),
                image_base: AtomicU64::new(0),
                image_size: AtomicU64::new(0),
                name: core::array::from_fn(|_| AtomicU64::new(0)),
                loads: AtomicU64::new(0),
                late: AtomicU32::new(0),
                refusal: AtomicU32::new(0),
                starting: AtomicU32::new(0),
                starting_device: core::array::from_fn(|_| AtomicU64::new(0)),
                starting_thread: core::array::from_fn(|_| AtomicU64::new(0)),
            })?,
            ranges: try_boxed_slice(MAX_DRIVERS, |_| AttributionRange {
                base: AtomicU64::new(0),
                span: AtomicU64::new(0),
            })?
            .try_into()
            .map_err(|_| OutOfMemory)?,
            used: AtomicU32::new(0),
            starting: AtomicU32::new(0),
            debug: spin::Mutex::new(try_boxed_slice(MAX_DRIVERS, |_| {
                ImageDebugRecord::default()
            })?),
        })
    }

    /// Records the PDB identity of the image `id` was last registered for (at `base`).
    /// Control plane, after [`register`](Self::register).
    pub fn set_debug(&self, id: DriverId, base: u64, debug: ImageDebug<'_>) {
        let Some(index) = id.index() else { return };
        let mut table = self.debug.lock();
        let Some(rec) = table.get_mut(index) else {
            return;
        };
        let mut r = ImageDebugRecord {
            driver_id: u32::from(id.0),
            image_base: base,
            ..ImageDebugRecord::default()
        };
        match debug {
            ImageDebug::None => {}
            ImageDebug::Malformed => r.flags = IDF_BAD_DEBUG_DIRECTORY,
            ImageDebug::CodeView(cv) => {
                r.flags = IDF_CODEVIEW;
                r.guid = cv.guid;
                r.age = cv.age;
                let name = cv.pdb_file_name();
                if name.len() > PDB_NAME_LEN {
                    r.flags |= IDF_NAME_CUT;
                }
                for (d, s) in r.pdb_name.iter_mut().zip(name.iter()) {
                    *d = *s;
                }
            }
        }
        *rec = r;
    }

    /// The PDB identity recorded for `id` ([`set_debug`](Self::set_debug)), or `None`
    /// when none was recorded.
    pub fn debug(&self, id: DriverId) -> Option<ImageDebugRecord> {
        let index = id.index()?;
        self.debug
            .lock()
            .get(index)
            .copied()
            .filter(|r| r.driver_id != 0)
    }

    #[inline]
    fn used(&self) -> &[DriverSlot] {
        let n = (self.used.load(Ordering::Acquire) as usize).min(MAX_DRIVERS);
        self.slots.get(..n).unwrap_or(&[])
    }

    fn slot(&self, id: DriverId) -> Option<&DriverSlot> {
        self.slots.get(id.index()?)
    }

    /// The driver whose loaded image contains `addr` (hot path: a scan of used slots).
    /// One unsigned compare per used slot: its image span is 0 unless it is loaded.
    #[inline]
    pub fn attribute(&self, addr: u64) -> DriverId {
        if addr == 0 {
            return DriverId::NONE;
        }
        let used = self.used.load(Ordering::Acquire) as usize;
        for (i, r) in self.ranges.iter().take(used).enumerate() {
            let span = r.span.load(Ordering::Acquire);
            if addr.wrapping_sub(r.base.load(Ordering::Relaxed)) < span {
                return DriverId(u16::try_from(i.saturating_add(1)).unwrap_or(0));
            }
        }
        DriverId::NONE
    }

    /// The driver to blame for a call through `importer`'s import slot that returns to
    /// `addr` ([`Caller`](crate::platform::Caller)): `importer` while it is Attached or
    /// Loaded (one load), else [`attribute`](Self::attribute)`(addr)` — also when the hook
    /// cannot tell the importer ([`DriverId::NONE`]), or a call was in flight through a
    /// slot of a driver that has since been detached.
    #[inline(always)]
    pub fn attribute_call(&self, importer: DriverId, addr: u64) -> DriverId {
        if let Some(r) = self.range(importer) {
            if r.span.load(Ordering::Acquire) != 0 {
                return importer;
            }
        }
        self.attribute(addr)
    }

    /// Slot `id`'s attribution range (`None` for [`DriverId::NONE`] and ids past the
    /// registry).
    #[inline(always)]
    fn range(&self, id: DriverId) -> Option<&AttributionRange> {
        id.index().and_then(|i| self.ranges.get(i))
    }

    /// Publishes slot `id`'s state, and its attribution range to match: the image's
    /// while it is Attached or Loaded, none otherwise. Control plane.
    fn publish(&self, id: DriverId, s: &DriverSlot, state: DriverState) {
        s.state.store(state as u32, Ordering::Release);
        let Some(r) = self.range(id) else {
            return;
        };
        match state {
            DriverState::Attached | DriverState::Loaded => {
                // Cleared first, so a reader that sees the new span sees the new base.
                // A reader that read the old span just before may still pair it with the
                // new base (a hook preempted across a whole reload): that one call may be
                // misattributed, as with the unversioned fields before; a seqlock would
                // close it at two more loads per driver on the hook path.
                r.span.store(0, Ordering::Release);
                r.base
                    .store(s.image_base.load(Ordering::Relaxed), Ordering::Relaxed);
                r.span
                    .store(s.image_size.load(Ordering::Relaxed), Ordering::Release);
            }
            DriverState::Free | DriverState::Gone => r.span.store(0, Ordering::Release),
        }
    }

    /// The id of the slot named `name` (case-insensitive), whatever its state.
    pub fn find(&self, name: &[u8]) -> Option<DriverId> {
        self.used().iter().enumerate().find_map(|(i, s)| {
            let n = read_name(s);
            names_equal(crate::protocol::name_bytes(&n), name)
                .then(|| DriverId(u16::try_from(i.saturating_add(1)).unwrap_or(0)))
        })
    }

    /// Registers a load (or attach) of `name` at `[base, base + size)`, reusing the slot
    /// of an earlier load of the same name. `late` says it was attached after it loaded,
    /// so mappings it made before are unknown to iosv. Control plane only (serialised by
    /// the caller).
    pub fn register(
        &self,
        name: &[u8],
        base: u64,
        size: u64,
        attached: bool,
        late: bool,
    ) -> Option<DriverId> {
        let id = match self.find(name) {
            Some(id) => id,
            None => {
                let n = self.used.load(Ordering::Acquire);
                let slot = self.slots.get(n as usize)?;
                let wire = crate::protocol::wire_name(name);
                for (dst, chunk) in slot.name.iter().zip(wire.chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    dst.store(u64::from_le_bytes(b), Ordering::Relaxed);
                }
                self.used.store(n.saturating_add(1), Ordering::Release);
                DriverId(u16::try_from(n.saturating_add(1)).ok()?)
            }
        };
        let s = self.slot(id)?;
        s.image_base.store(base, Ordering::Relaxed);
        s.image_size.store(size, Ordering::Relaxed);
        s.loads.fetch_add(1, Ordering::Relaxed);
        s.late.store(u32::from(late), Ordering::Relaxed);
        let state = if attached {
            DriverState::Attached
        } else {
            DriverState::Loaded
        };
        self.publish(id, s, state);
        Some(id)
    }

    /// Sets a driver's state (attach/detach/unload).
    pub fn set_state(&self, id: DriverId, state: DriverState) {
        if let Some(s) = self.slot(id) {
            self.publish(id, s, state);
        }
    }

    /// Records the outcome of the latest attempt to hook `id`, for status: why it was
    /// refused, or nothing if it was not refused. Control plane (every platform's attach).
    pub fn note_attach<T>(&self, id: DriverId, result: &Result<T, crate::platform::PlatformError>) {
        let refusal = match result {
            Err(crate::platform::PlatformError::Refused(why)) => Some(*why),
            _ => None,
        };
        self.set_refusal(id, refusal);
    }

    /// Records why attaching `id` was refused (`None`: it was not). Control plane.
    pub fn set_refusal(&self, id: DriverId, refusal: Option<crate::intercept::SiteRefusal>) {
        if let Some(s) = self.slot(id) {
            s.refusal
                .store(refusal.map_or(0, |r| r.code()), Ordering::Relaxed);
        }
    }

    /// True if `id` was attached after it loaded (hook path: one load).
    pub fn attached_late(&self, id: DriverId) -> bool {
        self.slot(id)
            .is_some_and(|s| s.late.load(Ordering::Relaxed) != 0)
    }

    /// A copy of the slot's identity.
    pub fn info(&self, id: DriverId) -> Option<DriverInfo> {
        let s = self.slot(id)?;
        let state = DriverState::from_u32(s.state.load(Ordering::Acquire));
        if state == DriverState::Free {
            return None;
        }
        Some(DriverInfo {
            id,
            state,
            name: read_name(s),
            image_base: s.image_base.load(Ordering::Relaxed),
            image_size: s.image_size.load(Ordering::Relaxed),
            loads: s.loads.load(Ordering::Relaxed),
            hook_refusal: s.refusal.load(Ordering::Relaxed),
        })
    }

    /// The NUL-padded name of `id` (zeros for none).
    pub fn name(&self, id: DriverId) -> [u8; NAME_LEN] {
        self.slot(id).map(read_name).unwrap_or([0; NAME_LEN])
    }

    /// Every registered driver.
    pub fn all(&self) -> impl Iterator<Item = DriverInfo> + '_ {
        (1..=self.used().len()).filter_map(|i| self.info(DriverId(u16::try_from(i).unwrap_or(0))))
    }

    /// Notes that `device` of driver `id` starts on thread `thread`. False if the driver
    /// already has [`MAX_STARTING`] devices starting, or `device` is 0 (no device).
    pub fn start_begin(&self, id: DriverId, device: u64, thread: u64) -> bool {
        let Some(s) = self.slot(id) else { return false };
        if device == 0 {
            return false; // 0 marks a free entry
        }
        for (d, t) in s.starting_device.iter().zip(s.starting_thread.iter()) {
            if d.compare_exchange(0, device, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                t.store(thread, Ordering::Release);
                s.starting.fetch_add(1, Ordering::AcqRel);
                self.starting.fetch_add(1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }

    /// Notes that `device` finished starting (or failed to).
    pub fn start_end(&self, id: DriverId, device: u64) {
        let Some(s) = self.slot(id) else { return };
        if device == 0 {
            return; // not a device: it would match the free entries
        }
        for (d, t) in s.starting_device.iter().zip(s.starting_thread.iter()) {
            if d.load(Ordering::Acquire) == device {
                // Clear the thread before freeing the entry, so a start_begin that takes
                // the entry next never has its thread overwritten.
                t.store(0, Ordering::Relaxed);
                if d.compare_exchange(device, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    s.starting.fetch_sub(1, Ordering::AcqRel);
                    self.starting.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// The device a map by driver `id` on the thread `thread()` returns is attributed to:
    /// the device that thread is starting, else the driver's only starting device, else
    /// none (0). `thread` is called only while a start of the driver is in progress.
    #[inline]
    pub fn starting_device(&self, id: DriverId, thread: impl FnOnce() -> u64) -> u64 {
        if self.starting.load(Ordering::Acquire) == 0 {
            return 0; // the common case: no start in progress (inlined into the hook)
        }
        self.starting_device_of(id, thread)
    }

    /// [`starting_device`](Self::starting_device) while some start is in progress.
    #[inline(never)]
    fn starting_device_of(&self, id: DriverId, thread: impl FnOnce() -> u64) -> u64 {
        let Some(s) = self.slot(id) else { return 0 };
        if s.starting.load(Ordering::Acquire) == 0 {
            return 0; // another driver's device is starting
        }
        let thread = thread();
        let mut only = 0u64;
        let mut count = 0u32;
        for (d, t) in s.starting_device.iter().zip(s.starting_thread.iter()) {
            let dev = d.load(Ordering::Acquire);
            if dev == 0 {
                continue;
            }
            if t.load(Ordering::Acquire) == thread {
                return dev;
            }
            only = dev;
            count = count.saturating_add(1);
        }
        if count == 1 {
            only
        } else {
            0
        }
    }
}

fn read_name(s: &DriverSlot) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    for (chunk, w) in out.chunks_exact_mut(8).zip(s.name.iter()) {
        chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    out
}

/// Case-insensitive ASCII comparison of image names.
pub fn names_equal(a: &[u8], b: &[u8]) -> bool {
    let b = b
        .iter()
        .position(|c| *c == 0)
        .map_or(b, |n| b.get(..n).unwrap_or(b));
    let b = b.get(..NAME_LEN.min(b.len())).unwrap_or(b);
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_attribute_and_reuse() {
        let d = Drivers::new().unwrap();
        let a = d
            .register(b"nic.sys", 0x1000_0000, 0x10000, true, false)
            .unwrap();
        let b = d
            .register(b"gpu.sys", 0x2000_0000, 0x10000, false, false)
            .unwrap();
        assert_eq!((a, b), (DriverId(1), DriverId(2)));
        assert_eq!(d.attribute(0x1000_0010), a);
        assert_eq!(d.attribute(0x2000_FFFF), b);
        assert_eq!(d.attribute(0x2001_0000), DriverId::NONE);
        d.set_state(a, DriverState::Gone);
        assert_eq!(d.attribute(0x1000_0010), DriverId::NONE);
        assert_eq!(
            d.register(b"NIC.SYS", 0x3000_0000, 0x1000, true, true),
            Some(a)
        );
        assert_eq!(d.info(a).unwrap().loads, 2);
        assert!(d.attached_late(a) && !d.attached_late(b));
        assert_eq!(crate::protocol::name_bytes(&d.name(a)), b"nic.sys");
        assert_eq!(d.all().count(), 2);
    }

    #[test]
    fn starting_attribution() {
        let d = Drivers::new().unwrap();
        let a = d.register(b"nic.sys", 0x1000, 0x1000, true, false).unwrap();
        assert!(d.start_begin(a, 0xD1, 7));
        assert_eq!(d.starting_device(a, || 99), 0xD1);
        assert!(d.start_begin(a, 0xD2, 8));
        assert_eq!(d.starting_device(a, || 8), 0xD2);
        assert_eq!(d.starting_device(a, || 99), 0);
        d.start_end(a, 0xD1);
        assert_eq!(d.starting_device(a, || 99), 0xD2);
    }

    #[test]
    fn device_zero_neither_starts_nor_ends() {
        let d = Drivers::new().unwrap();
        let a = d.register(b"nic.sys", 0x1000, 0x1000, true, false).unwrap();
        assert!(!d.start_begin(a, 0, 7), "0 marks a free entry");
        assert!(d.start_begin(a, 0xD1, 7));
        // An end for device 0 matched the three free entries and took 3 from the
        // counts (wrapping them), so every later map took the slow path.
        d.start_end(a, 0);
        assert_eq!(d.starting.load(Ordering::Relaxed), 1);
        assert_eq!(d.starting_device(a, || 7), 0xD1);
        d.start_end(a, 0xD1);
        assert_eq!(d.starting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn one_driver_starting_while_another_is_not() {
        let d = Drivers::new().unwrap();
        let a = d.register(b"nic.sys", 0x1000, 0x1000, true, false).unwrap();
        let b = d.register(b"gpu.sys", 0x4000, 0x1000, true, false).unwrap();
        assert!(d.start_begin(a, 0xD1, 7));
        assert_eq!(d.starting_device(b, || 7), 0, "only A is starting");
        assert_eq!(d.starting_device(DriverId::NONE, || 7), 0);
        assert_eq!(d.starting_device(a, || 7), 0xD1);
    }

    #[test]
    fn attribution_follows_the_state() {
        let d = Drivers::new().unwrap();
        let a = d
            .register(b"nic.sys", 0x1000, 0x1000, false, false)
            .unwrap();
        assert_eq!(d.attribute(0x1800), a, "a Loaded driver is attributed");
        d.set_state(a, DriverState::Attached);
        assert_eq!(d.attribute(0x1FFF), a);
        assert_eq!(d.attribute(0x2000), DriverId::NONE);
        assert_eq!(d.attribute(0xFFF), DriverId::NONE);
        d.set_state(a, DriverState::Gone);
        assert_eq!(d.attribute(0x1800), DriverId::NONE);
        d.set_state(a, DriverState::Loaded);
        assert_eq!(d.attribute(0x1800), a, "back with the image range it had");
        assert_eq!(d.attribute(0), DriverId::NONE);
    }
}
