//! `iosvctl run --verifier iosv.sys TARGET.sys`: iosv's own kernel component, the linked
//! image of the Windows glue, runs in the child as the verifier, beside the target.
//!
//! Order, as on Windows with iosv installed as an upper filter and `Targets` naming the
//! target: iosv.sys is loaded first, its service key holding `Parameters\Targets` =
//! TARGET; its `DriverEntry` runs (control device, symbolic link, image-load callback).
//! Then the target is loaded and every registered image-load routine is called with its
//! full name and `IMAGE_INFO` — iosv.sys patches the target's import slots there, through
//! the MDL routines. The target's life cycle follows as in a plain run, with iosv.sys's
//! `AddDevice` called right after the target's (the upper filter), then the target's
//! unload (it leaves the module list). Once the parent has read the reports, the handle
//! on the control device closes and iosv.sys's own `DriverUnload` runs; its notes reach
//! the parent after the run. Notes say what happened to the slots at each step.
//!
//! The runner's engine hooks nothing in this mode: the kernel routines are the "real" Mm
//! that iosv.sys's own, unpatched imports call. The parent's control codes reach iosv.sys:
//! the child opens the control device once after iosv.sys's `DriverEntry`
//! (`IRP_MJ_CREATE` from an administrator's token), and serves each request on the socket
//! as one `IRP_MJ_DEVICE_CONTROL` (METHOD_BUFFERED) on that handle, on a thread of its
//! own.

use super::child::{self, note, Device, Driver, Parameters};
use super::engine::{Engine, FamilyCall, HostEngine};
use super::kernel::{self, layout as l, STATUS_PENDING};
use super::loader::LoadedImage;
use super::{entering, ob, ps, report, trap, Obj};
use crate::regspec::RegistrySpec;
use crate::RunOptions;
use iosv::mdl::MdlInfo;
use iosv::verifier::DeviceEvent;
use iosv_host::{endpoint, Host};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

/// Stack of the thread that serves the control codes (driver code runs on it).
const SERVER_STACK: usize = 8 << 20;

/// Whether iosv hooks `name` in a target (its import slots are watched in the notes).
fn hooked_routine(name: &str) -> bool {
    iosv::pe::HookedRoutine::ALL
        .iter()
        .any(|r| r.name() == name)
}

/// The runner's engine when iosv.sys is the verifier: the simulated Mm and the per-thread
/// IRQL of the host, and nothing of its verifier — no image is attached, no hook handed
/// out, no device event reported (iosv.sys sees them through its filter device).
struct KernelModeEngine(HostEngine);

impl Engine for KernelModeEngine {
    fn mm_map(&self, physical: u64, size: u64, cache: u32, ex: bool) -> u64 {
        self.0.mm_map(physical, size, cache, ex)
    }
    fn mm_unmap(&self, base: u64, size: u64) {
        self.0.mm_unmap(base, size);
    }
    fn mm_is_mapped(&self, base: u64) -> bool {
        self.0.mm_is_mapped(base)
    }
    fn hook_map(&self, _frames: &[u64], physical: u64, size: u64, cache: u32, ex: bool) -> u64 {
        // Not reached (no slot holds a runner hook); the call still maps.
        self.0.mm_map(physical, size, cache, ex)
    }
    fn hook_unmap(&self, _frames: &[u64], base: u64, size: u64) {
        self.0.mm_unmap(base, size);
    }
    fn routine_override(&self, _name: &[u16]) -> Option<usize> {
        None
    }
    fn family(&self, _frames: Option<&[u64]>, call: FamilyCall) -> u64 {
        self.0.family(None, call)
    }
    fn mdl_info(&self, mdl: u64) -> Option<MdlInfo> {
        self.0.mdl_info(mdl)
    }
    fn register_mdl(&self, mdl: u64, info: MdlInfo) {
        self.0.register_mdl(mdl, info);
    }
    fn mdl_mapped_at(&self, base: u64) -> Option<u64> {
        self.0.mdl_mapped_at(base)
    }
    fn irql(&self) -> u8 {
        self.0.irql()
    }
    fn set_irql(&self, irql: u8) -> u8 {
        self.0.set_irql(irql)
    }
    fn attach(&self, _image: &LoadedImage) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    fn unloaded(&self, image: &LoadedImage) {
        ps::module_unloaded(image.base);
    }
    fn device_event(&self, _device: u64, _event: DeviceEvent) {}
}

/// Where each of the target's hooked import slots points: (routine, slot, value).
fn hooked_slots(target: &LoadedImage) -> Vec<(String, usize, usize)> {
    target
        .imports
        .iter()
        .filter(|i| hooked_routine(&i.name))
        .map(|i| (i.name.clone(), i.slot, target.read_slot(i.slot)))
        .collect()
}

/// One note on the target's hooked slots: which point into iosv.sys (patched), which hold
/// the kernel routine the loader bound (original).
fn note_slots(when: &str, target: &LoadedImage, verifier: &LoadedImage) -> (usize, usize) {
    let slots = hooked_slots(target);
    let patched: Vec<String> = slots
        .iter()
        .filter(|(_, _, v)| verifier.contains(*v))
        .map(|(n, s, v)| {
            format!(
                "{n} (slot {}+{:#x} -> {}+{:#x})",
                target.name,
                s - target.base,
                verifier.name,
                v - verifier.base
            )
        })
        .collect();
    let original = slots
        .iter()
        .filter(|(n, _, v)| kernel::resolve("ntoskrnl.exe", n) == Some(*v))
        .count();
    note(&format!(
        "{when}: {} of {}'s {} hooked import slots point into {}{}{}; {original} hold the kernel routine",
        patched.len(),
        target.name,
        slots.len(),
        verifier.name,
        if patched.is_empty() { "" } else { ": " },
        patched.join(", ")
    ));
    (patched.len(), original)
}

/// Runs the child in kernel-component mode (module docs); returns its exit status.
pub fn run(socket: &Path, opts: &RunOptions, verifier_path: &Path) -> i32 {
    let host = match Host::try_new(iosv::config::StartParams::default()) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            report::line(&["loadfail cannot start the host: ", &e.to_string()]);
            return child::LOAD_FAILED_STATUS;
        }
    };
    if let Err(code) = child::prepare_process() {
        return code;
    }
    super::kaddr::enable();
    let engine = Arc::new(KernelModeEngine(HostEngine::new(
        Arc::clone(&host),
        kernel::hooks(),
    )));
    kernel::set_engine(engine.clone());
    let listener = match bind(socket) {
        Ok(l) => l,
        Err(e) => {
            report::line(&[
                "loadfail cannot serve ",
                &socket.display().to_string(),
                ": ",
                &e,
            ]);
            return child::LOAD_FAILED_STATUS;
        }
    };
    let verifier = match child::map_image(verifier_path, false) {
        Ok(i) => i,
        Err(e) => {
            report::line(&[
                "loadfail the verifier image ",
                &verifier_path.display().to_string(),
                ": ",
                &e,
            ]);
            return child::LOAD_FAILED_STATUS;
        }
    };
    let target_name = opts
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let targets = match RegistrySpec::parse(&format!("Parameters\\Targets=multi_sz:{target_name}"))
    {
        Ok(t) => t,
        Err(e) => {
            report::line(&["loadfail cannot name the target in iosv's registry: ", &e]);
            return child::LOAD_FAILED_STATUS;
        }
    };
    let Ok(iosv) = child::driver_entry(&*engine, &verifier, &[targets]) else {
        report::line(&[
            "loadfail ",
            &verifier.name,
            "'s DriverEntry failed (see the notes)",
        ]);
        return child::LOAD_FAILED_STATUS;
    };
    let links = ob::links_of(iosv.object);
    if links.is_empty() {
        report::line(&[
            "loadfail ",
            &verifier.name,
            " created no control device with a symbolic link: it is not iosv's kernel \
             component (scripts/check-glue links that into target/check-glue/iosv.sys)",
        ]);
        return child::LOAD_FAILED_STATUS;
    }
    // Opened now, as a session of iosvctl would hold it open during the run: a handle
    // keeps reaching the device even after iosv.sys deletes it with its last filter
    // device (which it does when it never patched a slot).
    let Some(control) = links.first().and_then(|(name, _)| ob::open_device(name)) else {
        report::line(&["loadfail iosv.sys's control device link leads nowhere"]);
        return child::LOAD_FAILED_STATUS;
    };
    let Ok(file) = create(child::kernel_top(control)) else {
        report::line(&[
            "loadfail IRP_MJ_CREATE on ",
            &verifier.name,
            "'s control device failed (see the notes)",
        ]);
        return child::LOAD_FAILED_STATUS;
    };
    note(&format!(
        "{}: DriverEntry succeeded; {} image-load routine(s) registered; control device link(s): {}",
        verifier.name,
        ps::notify_routines(),
        if links.is_empty() {
            "none".to_string()
        } else {
            links.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>().join(", ")
        }
    ));
    let target = match child::map_image(&opts.image, true) {
        Ok(i) => i,
        Err(e) => {
            report::line(&["loadfail ", &e]);
            return child::LOAD_FAILED_STATUS;
        }
    };
    let called = ps::notify_image_loaded(&target.name, target.base, target.size);
    note(&format!(
        "called {called} image-load routine(s) for {}",
        ps::full_path(&target.name)
    ));
    note_slots("after the image-load notification", &target, &verifier);
    let filter = |dev: Device| add_filter(&verifier, &iosv, dev);
    child::lifecycle_with(&*engine, &target, opts, &filter);
    note_slots("after the target's unload", &target, &verifier);
    // The host's verifier saw nothing (its table is empty): what the audit can still find
    // is a corruption of the simulated Mm, e.g. an unmap of the wrong size iosv.sys did
    // not hook.
    child::audit(&host);
    if ob::links_of(iosv.object).is_empty() {
        note(&format!(
            "{} deleted its control device and link with its last filter device (it never patched a slot, so it may unload); the handle opened after its DriverEntry still reaches it",
            verifier.name
        ));
    }
    note(&format!(
        "{} calls of kernel routines through their kernel-space aliases (one fault each), {} __chkstk probes, during the life cycle",
        super::kaddr::redirects(),
        super::stack::chkstk_calls()
    ));
    let server = std::thread::Builder::new()
        .name("iosv-control".into())
        .stack_size(SERVER_STACK)
        .spawn(move || serve(&listener, control, file));
    if let Err(e) = server {
        note(&format!("cannot start the control-code thread: {e}"));
    }
    child::ready_until_closed();
    // The parent read the reports: the handle closes, then iosv.sys unloads. Notes from
    // here on reach the parent after the run (parent::Session::finish_with_notes).
    super::silence_thread();
    let p = Parameters {
        file,
        ..Parameters::none()
    };
    child::send(child::kernel_top(control), IRP_MJ_CLEANUP, 0, &p);
    child::send(child::kernel_top(control), IRP_MJ_CLOSE, 0, &p);
    unload_verifier(&verifier, &iosv, &target);
    0
}

/// Binds the socket (its directory is the parent's private one).
fn bind(socket: &Path) -> Result<UnixListener, String> {
    UnixListener::bind(socket).map_err(|e| e.to_string())
}

type AddDevice = extern "win64" fn(usize, usize) -> i32;
type Unload = extern "win64" fn(usize);

/// iosv.sys's AddDevice on the target's PDO: its filter device goes on top of the stack.
fn add_filter(verifier: &LoadedImage, iosv: &Driver, dev: Device) {
    let routine = iosv.add_device();
    if routine == 0 {
        note(&format!(
            "{} has no AddDevice: no filter device",
            verifier.name
        ));
        return;
    }
    // SAFETY: DRIVER_ADD_DEVICE has this signature (DDI).
    let f = unsafe { std::mem::transmute::<usize, AddDevice>(routine) };
    let status = entering("AddDevice (iosv.sys)", routine, || f(iosv.object, dev.pdo));
    let top = dev.top();
    note(&format!(
        "{}'s AddDevice returned {:#010x}; the stack's top device is {}",
        verifier.name,
        status as u32,
        if top == dev.fdo {
            "the target's (no filter)"
        } else {
            "iosv.sys's filter"
        }
    ));
}

/// Calls iosv.sys's DriverUnload if it still has one, and notes what it left.
fn unload_verifier(verifier: &LoadedImage, iosv: &Driver, target: &LoadedImage) {
    let unload = iosv.unload_routine();
    if unload == 0 {
        note(&format!(
            "{} has no DriverUnload: it stays loaded, {} image-load routine(s) still registered",
            verifier.name,
            ps::notify_routines()
        ));
        return;
    }
    // SAFETY: DRIVER_UNLOAD has this signature (DDI).
    let f = unsafe { std::mem::transmute::<usize, Unload>(unload) };
    entering("DriverUnload (iosv.sys)", unload, || f(iosv.object));
    let (patched, original) = note_slots("after iosv.sys's DriverUnload", target, verifier);
    let device_left = !ob::links_of(iosv.object).is_empty();
    note(&format!(
        "{}'s DriverUnload ran: {} image-load routine(s) still registered, control device {}, {patched} slot(s) still patched, {original} restored",
        verifier.name,
        ps::notify_routines(),
        if device_left { "still there (unload refused)" } else { "deleted" }
    ));
}

// ---- the control codes -------------------------------------------------------------------

/// Serves each connection in turn, one IOCTL per request frame, on the handle (`file`)
/// opened on the control device `control`.
fn serve(listener: &UnixListener, control: usize, file: usize) {
    if trap::prepare_thread(0).is_err() {
        return;
    }
    super::silence_thread();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        connection(&mut stream, control, file);
    }
}

/// `IRP_MJ_CLOSE`.
const IRP_MJ_CLOSE: u8 = 2;
/// `IRP_MJ_CLEANUP`.
const IRP_MJ_CLEANUP: u8 = 18;

fn connection(stream: &mut UnixStream, device: usize, file: usize) {
    loop {
        let (header, input) = match endpoint::read_request(stream) {
            Ok(r) => r,
            Err(endpoint::FrameError::Closed) => return,
            Err(_) => {
                let reply = endpoint::encode_reply(endpoint::STATUS_INVALID_PARAMETER, 0, &[]);
                let _ = endpoint::write_frame(stream, &reply);
                return;
            }
        };
        let (status, information, output) = device_control(
            child::kernel_top(device),
            file,
            header.code,
            &input,
            header.output_capacity,
        );
        let reply = endpoint::encode_reply(status as u32, information, &output);
        if endpoint::write_frame(stream, &reply).is_err() {
            return;
        }
    }
}

fn obj(addr: usize, len: usize) -> Obj {
    // SAFETY: every address here is an allocation of this module (kernel::alloc_zeroed or
    // a live Vec) of at least `len` bytes, or an IRP from kernel::new_irp.
    unsafe { Obj::new(addr, len) }
}

/// `IRP_MJ_CREATE` on the control device from an administrator (an `IO_SECURITY_CONTEXT`
/// whose `ACCESS_STATE` carries [`ob::admin_token`]). Returns the file object.
fn create(top: usize) -> Result<usize, i32> {
    let file = kernel::alloc_zeroed(0x100);
    let access = kernel::alloc_zeroed(l::ACCESS_STATE);
    obj(access, l::ACCESS_STATE).set::<u64>(l::AS_PRIMARY_TOKEN, ob::admin_token() as u64);
    let security = kernel::alloc_zeroed(l::IO_SECURITY_CONTEXT);
    obj(security, l::IO_SECURITY_CONTEXT).set::<u64>(l::ISC_ACCESS_STATE, access as u64);
    let p = Parameters {
        words: [(8, security as u64), (0, 0), (0, 0), (0, 0)],
        file,
        ..Parameters::none()
    };
    let status = child::send(top, 0, 0, &p);
    if status < 0 {
        note(&format!(
            "IRP_MJ_CREATE on iosv.sys's control device failed with {:#010x}",
            status as u32
        ));
        return Err(status);
    }
    Ok(file)
}

/// One METHOD_BUFFERED `IRP_MJ_DEVICE_CONTROL`: the system buffer holds
/// max(input, output) bytes; returns the status, `Information` and, on success, the
/// output bytes (at most `capacity`).
fn device_control(
    top: usize,
    file: usize,
    code: u32,
    input: &[u8],
    capacity: u32,
) -> (i32, u64, Vec<u8>) {
    let stack = obj(top, l::DEVICE_OBJECT)
        .get::<u8>(l::DEV_STACK_SIZE)
        .max(1);
    let irp = kernel::new_irp(stack);
    if irp == 0 {
        return (kernel::STATUS_INSUFFICIENT_RESOURCES, 0, Vec::new());
    }
    let i = obj(irp, l::IRP + l::STACK * usize::from(stack));
    let mut buffer = vec![0u8; input.len().max(capacity as usize).max(1)];
    if let Some(b) = buffer.get_mut(..input.len()) {
        b.copy_from_slice(input);
    }
    i.set::<u64>(l::IRP_SYSTEM_BUFFER, buffer.as_mut_ptr() as u64);
    let event = kernel::alloc_zeroed(l::KEVENT);
    obj(event, l::KEVENT).set::<u8>(2, 6);
    i.set::<u64>(l::IRP_USER_EVENT, event as u64);
    let next = obj(
        (i.get::<u64>(l::IRP_CURRENT_STACK) as usize).wrapping_sub(l::STACK),
        l::STACK,
    );
    next.set::<u8>(0, 14); // IRP_MJ_DEVICE_CONTROL
    next.set::<u32>(l::SL_PARAMETERS, capacity); // OutputBufferLength
    next.set::<u32>(l::SL_PARAMETERS + 8, input.len() as u32); // InputBufferLength
    next.set::<u32>(l::SL_PARAMETERS + 0x10, code); // IoControlCode
    next.set::<u64>(0x30, file as u64); // FileObject
    let status = kernel::iof_call_driver(top, irp);
    if status == STATUS_PENDING {
        while obj(event, l::KEVENT).get::<i32>(4) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let status = i.get::<i32>(l::IRP_STATUS);
    let information = i.get::<u64>(l::IRP_INFORMATION);
    let output = if status >= 0 {
        let n = usize::try_from(information)
            .unwrap_or(usize::MAX)
            .min(capacity as usize);
        buffer.truncate(n);
        buffer
    } else {
        Vec::new()
    };
    (status, information, output)
}
