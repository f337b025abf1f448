//! The child: the simulated machine. It loads the image, plays the PnP manager and the
//! I/O manager for one device, and serves the verifier's control codes on a socket until
//! its standard input closes.

use super::engine::{Engine, HostEngine};
use super::kernel::{self, layout as l, STATUS_NOT_SUPPORTED, STATUS_PENDING, STATUS_SUCCESS};
use super::{entering, loader, report, trap, Obj};
use crate::{BarSpec, IoctlSpec, RunOptions};
use iosv::verifier::DeviceEvent;
use iosv_host::{endpoint, Host};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

const IRP_MJ_CREATE: u8 = 0;
const IRP_MJ_CLOSE: u8 = 2;
const IRP_MJ_DEVICE_CONTROL: u8 = 14;
const IRP_MJ_CLEANUP: u8 = 18;
const IRP_MJ_POWER: u8 = 22;
const IRP_MJ_PNP: u8 = 27;
const IRP_MN_START_DEVICE: u8 = 0;
const IRP_MN_QUERY_REMOVE_DEVICE: u8 = 1;
const IRP_MN_REMOVE_DEVICE: u8 = 2;
const IRP_MN_STOP_DEVICE: u8 = 4;
const IRP_MN_QUERY_STOP_DEVICE: u8 = 5;
const IRP_MN_CANCEL_STOP_DEVICE: u8 = 6;
const IRP_MN_SET_POWER: u8 = 2;
const IRP_MN_SURPRISE_REMOVAL: u8 = 0x17;
/// The child's exit status when the image cannot be loaded.
pub const LOAD_FAILED_STATUS: i32 = 8;

/// The child's arguments (after [`crate::CHILD_ARG`]): `SOCKET IMAGE [--bar PA:LEN]...
/// [--ioctl CODE:HEX]...`.
///
/// # Errors
/// A message for a malformed argument list.
pub fn parse_args(args: &[String]) -> Result<(PathBuf, RunOptions), String> {
    let mut it = args.iter();
    let socket = it.next().ok_or("missing socket path")?;
    let image = it.next().ok_or("missing image path")?;
    let mut opts = RunOptions {
        image: PathBuf::from(image),
        bars: Vec::new(),
        ioctls: Vec::new(),
        watchdog_secs: 0,
        surprise_removal: false,
        registry: Vec::new(),
        verifier: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bar" => opts.bars.push(BarSpec::parse(value)?),
            "--ioctl" => opts.ioctls.push(IoctlSpec::parse(value)?),
            "--surprise-removal" => opts.surprise_removal = value == "yes",
            "--registry" => opts
                .registry
                .push(crate::regspec::RegistrySpec::parse(value)?),
            "--verifier" => opts.verifier = Some(PathBuf::from(value)),
            other => return Err(format!("unknown child argument {other}")),
        }
    }
    Ok((PathBuf::from(socket), opts))
}

/// Runs the child with `args` (after [`crate::CHILD_ARG`]); returns its exit status.
#[must_use]
pub fn main(args: &[String]) -> i32 {
    match parse_args(args) {
        Ok((socket, opts)) => run(&socket, &opts),
        Err(e) => {
            report::line(&["loadfail ", &e]);
            2
        }
    }
}

pub(crate) fn note(text: &str) {
    report::line(&["note ", text]);
}

/// What every child sets up before driver code runs: dying with the parent, and fault
/// handling. `Err` is the child's exit status (the reason was sent to the parent).
pub(crate) fn prepare_process() -> Result<(), i32> {
    // The parent runs the child in its own process group (its watchdog kills the group),
    // so a ^C at the terminal does not reach it: die with the parent instead, even when
    // driver code spins and never reads standard input.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = trap::install().and_then(|()| trap::prepare_thread(0)) {
        report::line(&["loadfail cannot set up fault handling: ", &e.to_string()]);
        return Err(LOAD_FAILED_STATUS);
    }
    Ok(())
}

/// [`prepare_process`], then the endpoint serving the control codes on `socket`, and the
/// engine over `host`. `Err` is the child's exit status (the reason was sent to the
/// parent).
pub(crate) fn setup(
    socket: &std::path::Path,
    host: &Arc<Host>,
) -> Result<(endpoint::EndpointHandle, Arc<HostEngine>), i32> {
    prepare_process()?;
    let server = match endpoint::spawn(Arc::clone(host), socket) {
        Ok(s) => s,
        Err(e) => {
            report::line(&[
                "loadfail cannot serve ",
                &socket.display().to_string(),
                ": ",
                &e.to_string(),
            ]);
            return Err(LOAD_FAILED_STATUS);
        }
    };
    let engine = Arc::new(HostEngine::new(Arc::clone(host), kernel::hooks()));
    kernel::set_engine(engine.clone());
    Ok((server, engine))
}

/// Tells the parent the run is complete, then serves the control codes until the parent
/// closes our standard input.
pub(crate) fn serve_until_closed(server: endpoint::EndpointHandle) -> i32 {
    ready_until_closed();
    let _ = server.stop();
    0
}

/// Tells the parent the run is complete and waits until it closes our standard input.
pub(crate) fn ready_until_closed() {
    report::line(&["ready"]);
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}

/// Loads the image at `path`, binds its imports, tells the parent where it is, and lets
/// iosv attach to it (patching its import slots).
///
/// # Errors
/// Why the image could not be loaded.
pub(crate) fn load_image(
    engine: &dyn Engine,
    path: &std::path::Path,
) -> Result<loader::LoadedImage, String> {
    let image = map_image(path, true)?;
    match engine.attach(&image) {
        Ok(lines) => lines.iter().for_each(|l| note(l)),
        Err(e) => note(&format!("iosv could not attach to {}: {e}", image.name)),
    }
    Ok(image)
}

/// Loads the image at `path` and binds its imports; it joins the module list. With
/// `announce`, the parent is told it is *the* image of the run (its reports and crash
/// offsets name it), else that it is another module (crash offsets in it are named); a
/// note says how it was loaded either way.
///
/// # Errors
/// Why the image could not be loaded.
pub(crate) fn map_image(
    path: &std::path::Path,
    announce: bool,
) -> Result<loader::LoadedImage, String> {
    let image = loader::load(path, &kernel::resolve, random_cookie()).map_err(|e| e.to_string())?;
    trap::add_image(image.base, image.size);
    super::ps::module_loaded(&image.name, image.base, image.size);
    report::line(&[
        if announce { "image " } else { "module " },
        &image.name,
        &format!(" {:#x} {:#x}", image.base, image.size),
    ]);
    let missing: Vec<String> = image
        .imports
        .iter()
        .filter(|i| !i.implemented)
        .map(|i| format!("{}!{}", i.dll, i.name))
        .collect();
    let delay = image.imports.iter().filter(|i| i.delay_load).count();
    note(&format!(
        "loaded {} at {:#x}{} ({} imports{}, {} bound to lazy stubs{}{})",
        image.name,
        image.base,
        if image.relocated {
            format!(" (relocated from {:#x})", image.preferred_base)
        } else {
            String::new()
        },
        image.imports.len(),
        if delay > 0 {
            format!(" of which {delay} delay-load")
        } else {
            String::new()
        },
        missing.len(),
        if missing.is_empty() { "" } else { ": " },
        missing.join(", ")
    ));
    Ok(image)
}

fn run(socket: &std::path::Path, opts: &RunOptions) -> i32 {
    if let Some(verifier) = &opts.verifier {
        return super::kernel_component::run(socket, opts, verifier);
    }
    let host = match Host::try_new(iosv::config::StartParams::default()) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            report::line(&["loadfail cannot start the host: ", &e.to_string()]);
            return LOAD_FAILED_STATUS;
        }
    };
    let (server, engine) = match setup(socket, &host) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let image = match load_image(&*engine, &opts.image) {
        Ok(i) => i,
        Err(e) => {
            report::line(&["loadfail ", &e]);
            return LOAD_FAILED_STATUS;
        }
    };
    lifecycle(&*engine, &image, opts);
    audit(&host);
    serve_until_closed(server)
}

/// Compares the verifier's live table with the simulated Mm's ground truth (what was
/// mapped through the hooks and is still mapped) and checks the Mm was not corrupted:
/// one `audit` line per problem. What the driver did is not known in advance, so the
/// reports themselves are not audited (`lab`'s injected counts have no equivalent).
pub(crate) fn audit(host: &Host) {
    let a = match host.audit(&iosv_host::Injected::new(), true) {
        Ok(a) => a,
        Err(e) => {
            report::line(&["audit cannot audit the run: ", &e.to_string()]);
            return;
        }
    };
    for (b, s) in &a.only_in_table {
        report::line(&[
            "audit ",
            &format!("the verifier's table holds {b:#x}+{s:#x}, the simulated Mm does not"),
        ]);
    }
    for (b, s) in &a.only_in_mm {
        report::line(&[
            "audit ",
            &format!("the simulated Mm holds {b:#x}+{s:#x} (mapped through iosv), the verifier's table does not"),
        ]);
    }
    for c in &a.corruptions {
        report::line(&["audit ", &format!("the simulated Mm was corrupted: {c}")]);
    }
    if a.duplicate_records > 0 || a.table_skipped > 0 {
        report::line(&[
            "audit ",
            &format!(
                "{} duplicate records, {} table entries skipped",
                a.duplicate_records, a.table_skipped
            ),
        ]);
    }
}

pub(crate) fn random_cookie() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom fills the 8 bytes of `v`.
    let n = unsafe { libc::getrandom((&raw mut v).cast(), 8, 0) };
    if n != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        v = t ^ u64::from(std::process::id()).rotate_left(32);
    }
    v
}

fn obj(addr: usize, len: usize) -> Obj {
    // SAFETY: the address is either an object this module allocated (kernel::alloc_zeroed,
    // kernel::new_irp) of at least `len` bytes and never freed while used, or a pointer
    // read from a field of such an object that the driver may legitimately rewrite (the
    // IRP's current stack location, DriverExtension, AttachedDevice, a completion
    // context); for those the argument is the DDI contract, as in kernel::obj: a driver
    // that stores a bad pointer there faults in host code, which the fault handler
    // reports as a crash. Obj reads and writes are bounded by `len`, unaligned, and
    // never create references.
    unsafe { Obj::new(addr, len) }
}

/// A `UNICODE_STRING` for `text`, leaked.
pub(crate) fn unicode(text: &str) -> usize {
    let units: Vec<u16> = text.encode_utf16().chain([0]).collect();
    let buffer = Box::leak(units.into_boxed_slice());
    let s = kernel::alloc_zeroed(l::UNICODE_STRING);
    let o = obj(s, l::UNICODE_STRING);
    let bytes = (buffer.len() - 1) * 2;
    o.set::<u16>(0, bytes as u16);
    o.set::<u16>(2, (bytes + 2) as u16);
    o.set::<u64>(8, buffer.as_ptr() as u64);
    s
}

/// A driver object whose every major function is `dispatch`.
fn driver_object(name: &str, dispatch: usize) -> usize {
    let d = kernel::alloc_zeroed(l::DRIVER_OBJECT);
    let ext = kernel::alloc_zeroed(0x40);
    let o = obj(d, l::DRIVER_OBJECT);
    o.set::<u16>(0, 4);
    o.set::<u16>(2, l::DRIVER_OBJECT as u16);
    o.set::<u64>(l::DRV_EXTENSION, ext as u64);
    obj(ext, 0x40).set::<u64>(0, d as u64);
    super::ob::register_driver(name, d);
    let n = unicode(name);
    let ns = obj(n, l::UNICODE_STRING);
    o.set::<u64>(l::DRV_NAME, ns.get::<u64>(0));
    o.set::<u64>(l::DRV_NAME + 8, ns.get::<u64>(8));
    for m in 0..28 {
        o.set::<u64>(l::DRV_MAJOR + 8 * m, dispatch as u64);
    }
    d
}

type DriverEntry = extern "win64" fn(usize, usize) -> i32;
type AddDevice = extern "win64" fn(usize, usize) -> i32;
type Unload = extern "win64" fn(usize);

/// The bus driver's dispatch routine for the PDO: PnP and power IRPs succeed (an
/// unknown PnP minor keeps its status), anything else too.
extern "win64" fn pdo_dispatch(_device: usize, irp: usize) -> i32 {
    let i = obj(irp, l::IRP);
    let sl = obj(i.get::<u64>(l::IRP_CURRENT_STACK) as usize, l::STACK);
    let (major, minor) = (sl.get::<u8>(0), sl.get::<u8>(1));
    let status = if major == IRP_MJ_PNP && !matches!(minor, 0..=6 | 0x17) {
        i.get::<i32>(l::IRP_STATUS)
    } else {
        STATUS_SUCCESS
    };
    i.set::<i32>(l::IRP_STATUS, status);
    kernel::iof_complete_request(irp, 0);
    status
}

/// What an IRP the runner sends carries: up to four (offset, value) words of the stack
/// location's `Parameters` (offset 0: unused), the system buffer's input, the output
/// capacity, the file object.
pub(crate) struct Parameters<'a> {
    pub(crate) words: [(usize, u64); 4],
    pub(crate) buffer: Option<&'a [u8]>,
    pub(crate) output: u32,
    pub(crate) file: usize,
}

impl Parameters<'_> {
    pub(crate) fn none() -> Self {
        Self {
            words: [(0, 0); 4],
            buffer: None,
            output: 0,
            file: 0,
        }
    }
}

/// Sends an IRP to the top of `device`'s stack, waits for it, returns its final status.
pub(crate) fn send(top: usize, major: u8, minor: u8, p: &Parameters<'_>) -> i32 {
    let stack = obj(top, l::DEVICE_OBJECT)
        .get::<u8>(l::DEV_STACK_SIZE)
        .max(1);
    let irp = kernel::new_irp(stack);
    if irp == 0 {
        return kernel::STATUS_INSUFFICIENT_RESOURCES;
    }
    let i = obj(irp, l::IRP + l::STACK * usize::from(stack));
    i.set::<i32>(
        l::IRP_STATUS,
        if major == IRP_MJ_PNP {
            STATUS_NOT_SUPPORTED
        } else {
            STATUS_SUCCESS
        },
    );
    let event = kernel::alloc_zeroed(l::KEVENT);
    obj(event, l::KEVENT).set::<u8>(2, 6);
    i.set::<u64>(l::IRP_USER_EVENT, event as u64);
    if let Some(input) = p.buffer {
        let len = input.len().max(p.output as usize).max(1);
        let buf = kernel::alloc_zeroed(len);
        let b = obj(buf, len);
        for (k, byte) in input.iter().enumerate() {
            b.set::<u8>(k, *byte);
        }
        i.set::<u64>(l::IRP_SYSTEM_BUFFER, buf as u64);
    }
    let next = obj(
        (i.get::<u64>(l::IRP_CURRENT_STACK) as usize).wrapping_sub(l::STACK),
        l::STACK,
    );
    next.set::<u8>(0, major);
    next.set::<u8>(1, minor);
    for (off, v) in p.words {
        if off != 0 {
            next.set::<u64>(off, v);
        }
    }
    next.set::<u64>(0x30, p.file as u64);
    let status = kernel::iof_call_driver(top, irp);
    let event_state = || obj(event, l::KEVENT).get::<i32>(4);
    if status == STATUS_PENDING {
        // The parent's watchdog ends a wait that never finishes.
        let what = format!(
            "the IRP (major {major}, minor {minor}) the driver returned pending to complete"
        );
        super::waiting_for(&what, || {
            while event_state() == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
    }
    if event_state() == 0 {
        note(&format!(
            "IRP (major {major}, minor {minor}) returned {status:#x} but was never completed"
        ));
        return status;
    }
    i.get::<i32>(l::IRP_STATUS)
}

fn pnp(top: usize, minor: u8, name: &str, words: [(usize, u64); 4]) -> i32 {
    let status = send(
        top,
        IRP_MJ_PNP,
        minor,
        &Parameters {
            words,
            ..Parameters::none()
        },
    );
    if status < 0 {
        note(&format!(
            "{name} failed with status {:#010x}",
            status as u32
        ));
    }
    status
}

/// The I/O port range every device gets (after its memory BARs).
const PORT_BASE: u64 = 0xE000;
/// Its length.
const PORT_LENGTH: u32 = 0x100;

/// A CM_RESOURCE_LIST with the memory BARs, one I/O port range and one interrupt.
fn resource_list(bars: &[BarSpec], translated: bool) -> usize {
    let n = bars.len() + 2;
    let len = 0x14 + 0x14 * n;
    let list = kernel::alloc_zeroed(len);
    let o = obj(list, len);
    o.set::<u32>(0, 1); // Count
    o.set::<u32>(4, 5); // InterfaceType: PCIBus
    o.set::<u16>(0xC, 1); // Version
    o.set::<u16>(0xE, 1); // Revision
    o.set::<u32>(0x10, n as u32);
    for (k, bar) in bars.iter().enumerate() {
        let d = 0x14 + 0x14 * k;
        o.set::<u8>(d, 3); // CmResourceTypeMemory
        o.set::<u8>(d + 1, 1); // CmResourceShareDeviceExclusive
        o.set::<u64>(d + 4, bar.physical);
        o.set::<u32>(d + 0xC, bar.length);
    }
    let d = 0x14 + 0x14 * bars.len();
    o.set::<u8>(d, 1); // CmResourceTypePort
    o.set::<u8>(d + 1, 1);
    o.set::<u16>(d + 2, 0x1); // CM_RESOURCE_PORT_IO
    o.set::<u64>(d + 4, PORT_BASE);
    o.set::<u32>(d + 0xC, PORT_LENGTH);
    let d = d + 0x14;
    o.set::<u8>(d, 2); // CmResourceTypeInterrupt
    o.set::<u8>(d + 1, 1);
    o.set::<u16>(d + 2, 0); // level-sensitive
    o.set::<u32>(d + 4, if translated { 5 } else { 11 }); // Level (DIRQL / IRQ line)
    o.set::<u32>(d + 8, if translated { 0x51 } else { 11 }); // Vector
    o.set::<u64>(d + 0xC, 1); // Affinity
    list
}

/// The driver object of a loaded image, after a successful DriverEntry.
pub(crate) struct Driver {
    /// Its `DRIVER_OBJECT`.
    pub(crate) object: usize,
}

impl Driver {
    /// The AddDevice routine DriverEntry registered (0: none, a legacy driver).
    pub(crate) fn add_device(&self) -> usize {
        let d = obj(self.object, l::DRIVER_OBJECT);
        obj(d.get::<u64>(l::DRV_EXTENSION) as usize, 0x40).get::<u64>(l::EXT_ADD_DEVICE) as usize
    }

    /// The first device object the driver created (a legacy driver's control device).
    pub(crate) fn first_device(&self) -> usize {
        obj(self.object, l::DRIVER_OBJECT).get::<u64>(l::DRV_DEVICE_OBJECT) as usize
    }

    /// The DriverUnload routine (0: none).
    pub(crate) fn unload_routine(&self) -> usize {
        obj(self.object, l::DRIVER_OBJECT).get::<u64>(l::DRV_UNLOAD) as usize
    }
}

/// Fills the child's registry with `registry` (the service key and its `Parameters`
/// subkey always exist), builds the driver object and calls DriverEntry with its
/// RegistryPath.
///
/// # Errors
/// DriverEntry's failure status (the image is then unloaded without an unload routine).
pub(crate) fn driver_entry(
    engine: &dyn Engine,
    image: &loader::LoadedImage,
    registry: &[crate::regspec::RegistrySpec],
) -> Result<Driver, i32> {
    let driver = driver_object(
        &format!("\\Driver\\{}", image.name.trim_end_matches(".sys")),
        kernel::invalid_request as *const () as usize,
    );
    let d = obj(driver, l::DRIVER_OBJECT);
    d.set::<u64>(l::DRV_START, image.base as u64);
    d.set::<u32>(l::DRV_SIZE, image.size as u32);
    d.set::<u64>(l::DRV_INIT, image.entry as u64);
    let service = image.name.trim_end_matches(".sys");
    super::registry::init(service, registry);
    let registry = unicode(&super::registry::service_key(service));
    // SAFETY: the entry point of a native image is DriverEntry (or GsDriverEntry), with
    // this signature.
    let entry = unsafe { std::mem::transmute::<usize, DriverEntry>(image.entry) };
    let status = entering("DriverEntry", image.entry, || entry(driver, registry));
    if status < 0 {
        note(&format!(
            "DriverEntry failed with status {:#010x}: the image is unloaded without calling an unload routine",
            status as u32
        ));
        engine.unloaded(image);
        return Err(status);
    }
    Ok(Driver { object: driver })
}

/// Tells the parent the image's DriverEntry failed with `status` (`entryfail`): the
/// parent reports it in one form ([`crate::driver_entry_failure`]) and the run ends with
/// exit status 8 after its reports — in `iosvctl run` and in a scenario (which stops at
/// its `load` step, [`super::scenario::main`]).
pub(crate) fn entry_failed(status: i32) {
    report::line(&["entryfail ", &format!("{:#010x}", status as u32)]);
}

/// Calls DriverUnload; iosv then reports what is still mapped and restores the slots.
/// `false` when the driver has no DriverUnload (nothing is called).
pub(crate) fn unload_driver(
    engine: &dyn Engine,
    image: &loader::LoadedImage,
    driver: &Driver,
) -> bool {
    let unload = driver.unload_routine();
    if unload == 0 {
        return false;
    }
    // SAFETY: DriverUnload has this signature (DDI).
    let f = unsafe { std::mem::transmute::<usize, Unload>(unload) };
    entering("DriverUnload", unload, || f(driver.object));
    engine.unloaded(image);
    true
}

fn lifecycle(engine: &dyn Engine, image: &loader::LoadedImage, opts: &RunOptions) {
    lifecycle_with(engine, image, opts, &|_| {});
}

/// The driver's life cycle: DriverEntry, its device (with `after_add` right after its
/// AddDevice, [`pnp_device_with`]) or its legacy control device, and unload. A failed
/// DriverEntry ends it (the image was unloaded) and is sent to the parent
/// ([`entry_failed`]), which ends the run with exit status 8 after the reports.
pub(crate) fn lifecycle_with(
    engine: &dyn Engine,
    image: &loader::LoadedImage,
    opts: &RunOptions,
    after_add: &dyn Fn(Device),
) {
    let driver = match driver_entry(engine, image, &opts.registry) {
        Ok(d) => d,
        Err(status) => {
            entry_failed(status);
            return;
        }
    };
    let add_device = driver.add_device();
    let control = driver.first_device();
    if add_device != 0 {
        pnp_device_with(engine, &driver, opts, after_add);
    } else if control != 0 {
        note("the driver has no AddDevice routine (a legacy driver): its requests go to the device it created in DriverEntry");
        let requests: Vec<(u32, &[u8])> = opts
            .ioctls
            .iter()
            .map(|i| (i.code, i.input.as_slice()))
            .collect();
        let _ = io_requests(kernel_top(control), &mut requests.into_iter(), true);
    } else {
        note("the driver has no AddDevice routine and created no device: only DriverEntry and unload run");
    }
    if !unload_driver(engine, image, &driver) {
        note("the driver has no DriverUnload routine: it cannot unload, so leaks at unload are not checked");
    }
}

/// The bus driver that owns the physical device objects the runner creates.
pub(crate) fn bus_driver() -> usize {
    driver_object("\\Driver\\iosv-run-bus", pdo_dispatch as *const () as usize)
}

/// A device of a loaded driver: its PDO (owned by [`bus_driver`]) and the FDO its
/// AddDevice attached.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Device {
    pub(crate) pdo: usize,
    pub(crate) fdo: usize,
}

/// Creates PDO number `index` of `bus` and calls the driver's AddDevice with it.
///
/// # Errors
/// What failed (no PDO, AddDevice failed or attached nothing).
pub(crate) fn add_device(bus: usize, driver: &Driver, index: u32) -> Result<Device, String> {
    let add_device = driver.add_device();
    if add_device == 0 {
        return Err("the driver has no AddDevice routine (a legacy driver)".to_string());
    }
    // Written by IoCreateDevice through the address: a mutable place, so that the read
    // below is not folded to the initial 0 (it was, in release builds).
    let mut pdo_out = [0u64; 1];
    let pdo_name = unicode(&format!("\\Device\\IosvRunPdo{index}"));
    let st = kernel_create_device(bus, pdo_name, pdo_out.as_mut_ptr() as usize);
    let pdo = pdo_out[0] as usize;
    if st < 0 || pdo == 0 {
        return Err("cannot create the physical device object".to_string());
    }
    super::registry::add_pdo(pdo, index);
    let p = obj(pdo, l::DEVICE_OBJECT);
    p.set::<u32>(l::DEV_FLAGS, p.get::<u32>(l::DEV_FLAGS) & !0x80);
    // SAFETY: AddDevice has this signature (DDI).
    let f = unsafe { std::mem::transmute::<usize, AddDevice>(add_device) };
    let status = entering("AddDevice", add_device, || f(driver.object, pdo));
    if status < 0 {
        return Err(format!(
            "AddDevice failed with status {:#010x}",
            status as u32
        ));
    }
    let fdo = p.get::<u64>(l::DEV_ATTACHED) as usize;
    if fdo == 0 {
        return Err("AddDevice attached no device to the PDO".to_string());
    }
    Ok(Device { pdo, fdo })
}

impl Device {
    /// The top of the device's stack, where IRPs are sent.
    pub(crate) fn top(self) -> usize {
        kernel_top(self.pdo)
    }

    /// IRP_MN_START_DEVICE with `bars` (raw and translated), then D0. `true` if the
    /// driver started the device.
    pub(crate) fn start(self, engine: &dyn Engine, bars: &[BarSpec]) -> bool {
        let top = self.top();
        let raw = resource_list(bars, false);
        let translated = resource_list(bars, true);
        engine.device_event(self.fdo as u64, DeviceEvent::StartBegin);
        let started = pnp(
            top,
            IRP_MN_START_DEVICE,
            "IRP_MN_START_DEVICE",
            [(8, raw as u64), (0x10, translated as u64), (0, 0), (0, 0)],
        ) >= 0;
        engine.device_event(self.fdo as u64, DeviceEvent::StartEnd);
        if started {
            // D0: Parameters.Power { SystemContext, Type = DevicePowerState, State = D0 }.
            let s = send(
                top,
                IRP_MJ_POWER,
                IRP_MN_SET_POWER,
                &Parameters {
                    words: [(0x10, 1), (0x18, 1), (0, 0), (0, 0)],
                    ..Parameters::none()
                },
            );
            if s < 0 {
                note(&format!(
                    "IRP_MN_SET_POWER (D0) failed with status {:#010x}",
                    s as u32
                ));
            }
        }
        started
    }

    /// QUERY_STOP, then STOP, or CANCEL_STOP when the driver vetoes: `true` if stopped.
    pub(crate) fn stop(self, engine: &dyn Engine) -> bool {
        let top = self.top();
        let query = pnp(
            top,
            IRP_MN_QUERY_STOP_DEVICE,
            "IRP_MN_QUERY_STOP_DEVICE",
            [(0, 0); 4],
        );
        if query >= 0 {
            pnp(top, IRP_MN_STOP_DEVICE, "IRP_MN_STOP_DEVICE", [(0, 0); 4]);
            engine.device_event(self.fdo as u64, DeviceEvent::Stopped);
            true
        } else {
            note("the driver vetoed IRP_MN_QUERY_STOP_DEVICE: no STOP is sent");
            pnp(
                top,
                IRP_MN_CANCEL_STOP_DEVICE,
                "IRP_MN_CANCEL_STOP_DEVICE",
                [(0, 0); 4],
            );
            false
        }
    }

    /// IRP_MN_SURPRISE_REMOVAL.
    pub(crate) fn surprise_remove(self, engine: &dyn Engine) {
        pnp(
            self.top(),
            IRP_MN_SURPRISE_REMOVAL,
            "IRP_MN_SURPRISE_REMOVAL",
            [(0, 0); 4],
        );
        engine.device_event(self.fdo as u64, DeviceEvent::SurpriseRemoved);
    }

    /// QUERY_REMOVE (unless `query` is false: after a surprise removal) and REMOVE.
    pub(crate) fn remove(self, engine: &dyn Engine, query: bool) {
        let top = self.top();
        if query {
            pnp(
                top,
                IRP_MN_QUERY_REMOVE_DEVICE,
                "IRP_MN_QUERY_REMOVE_DEVICE",
                [(0, 0); 4],
            );
        }
        pnp(
            top,
            IRP_MN_REMOVE_DEVICE,
            "IRP_MN_REMOVE_DEVICE",
            [(0, 0); 4],
        );
        engine.device_event(self.fdo as u64, DeviceEvent::Removed);
    }
}

/// The device of `driver` through its PnP life cycle: AddDevice, then `after_add` (e.g.
/// a filter's AddDevice), START with the BARs of `opts`, the IOCTLs, then STOP and
/// REMOVE (or a surprise removal).
pub(crate) fn pnp_device_with(
    engine: &dyn Engine,
    driver: &Driver,
    opts: &RunOptions,
    after_add: &dyn Fn(Device),
) {
    let bars: Vec<BarSpec> = if opts.bars.is_empty() {
        BarSpec::DEFAULTS.to_vec()
    } else {
        opts.bars.clone()
    };
    let dev = match add_device(bus_driver(), driver, 0) {
        Ok(d) => d,
        Err(e) => {
            note(&e);
            return;
        }
    };
    after_add(dev);
    if dev.start(engine, &bars) {
        let requests: Vec<(u32, &[u8])> = opts
            .ioctls
            .iter()
            .map(|i| (i.code, i.input.as_slice()))
            .collect();
        let _ = io_requests(dev.top(), &mut requests.into_iter(), true);
        if opts.surprise_removal {
            dev.surprise_remove(engine);
            dev.remove(engine, false);
            return;
        }
        dev.stop(engine);
    }
    dev.remove(engine, true);
}

pub(crate) fn kernel_top(device: usize) -> usize {
    let mut top = device;
    for _ in 0..64 {
        let up = obj(top, l::DEVICE_OBJECT).get::<u64>(l::DEV_ATTACHED) as usize;
        if up == 0 {
            break;
        }
        top = up;
    }
    top
}

fn kernel_create_device(driver: usize, name: usize, out: usize) -> i32 {
    type Create = extern "win64" fn(usize, u32, usize, u32, u32, u8, usize) -> i32;
    let Some(address) = kernel::lookup("IoCreateDevice") else {
        return kernel::STATUS_INSUFFICIENT_RESOURCES;
    };
    // SAFETY: lookup("IoCreateDevice") is kernel's io_create_device, of this signature.
    let f = unsafe { std::mem::transmute::<usize, Create>(address) };
    f(driver, 0, name, 0x22, 0, 0, out)
}

/// CREATE, the IOCTLs in `requests` (code, input), CLEANUP and CLOSE on one file object;
/// with `verbose` one note per IOCTL. Returns the status of the last IOCTL (or of
/// CREATE when there is none).
///
/// # Errors
/// CREATE's failure status (nothing else is sent).
pub(crate) fn io_requests(
    top: usize,
    requests: &mut dyn Iterator<Item = (u32, &[u8])>,
    verbose: bool,
) -> Result<i32, i32> {
    let file = kernel::alloc_zeroed(0x100);
    let security = kernel::alloc_zeroed(0x40);
    let create = Parameters {
        words: [(8, security as u64), (0, 0), (0, 0), (0, 0)],
        file,
        ..Parameters::none()
    };
    let s = send(top, IRP_MJ_CREATE, 0, &create);
    if s < 0 {
        note(&format!(
            "IRP_MJ_CREATE failed with status {:#010x}: no IOCTL is sent",
            s as u32
        ));
        return Err(s);
    }
    let mut last = s;
    for (code, input) in requests {
        let p = Parameters {
            words: [
                (8, 0x1000),
                (0x10, input.len() as u64),
                (0x18, u64::from(code)),
                (0, 0),
            ],
            buffer: Some(input),
            output: 0x1000,
            file,
        };
        last = send(top, IRP_MJ_DEVICE_CONTROL, 0, &p);
        if verbose {
            note(&format!(
                "IOCTL {:#x} ({} input bytes) completed with status {:#010x}",
                code,
                input.len(),
                last as u32
            ));
        }
    }
    let done = Parameters {
        file,
        ..Parameters::none()
    };
    send(top, IRP_MJ_CLEANUP, 0, &done);
    send(top, IRP_MJ_CLOSE, 0, &done);
    Ok(last)
}
