//! Patching: iosv's import plan applied to and removed from a simulated driver's image —
//! the platform side of IOCTL_ATTACH and IOCTL_DETACH, and the patch a load of a target
//! makes. The same site checks as the kernel (never a code, discardable, pageable or
//! unbound slot) and the same unload policy (the first slot written blocks iosv's unload).

use crate::drivers::{name_key, SimDriver};
use crate::expected::expect_detach_leaks;
use crate::image::{SimImage, HOOK_TABLE};
use crate::lock;
use crate::platform::{attached_id, HostPlatform, System};
use iosv::intercept::{Outcome, Plan};
use iosv::pe::PeImage;
use iosv::platform::PlatformError;
use std::string::String;
use std::sync::Arc;

/// The declared driver whose image is named `name`, if any.
fn declared(sys: &System, name: &str) -> Option<Arc<SimDriver>> {
    lock(&sys.drivers).get(&name_key(name)).cloned()
}

/// Runs `f` on the loaded image `name` (lossy UTF-8) while its driver's owner gate (if it
/// is declared) and the loader lock are held: what attach and detach run under.
fn with_loaded_image(
    sys: &System,
    name: &[u8],
    f: impl FnOnce(&Arc<SimImage>) -> Result<u32, PlatformError>,
) -> Result<u32, PlatformError> {
    let wanted = String::from_utf8_lossy(name);
    let driver = declared(sys, &wanted);
    let _owner = driver.as_deref().map(SimDriver::owner_gate);
    let _loader = lock(&sys.loader);
    let image = lock(&sys.images)
        .iter()
        .find(|i| i.name().eq_ignore_ascii_case(&wanted))
        .cloned()
        .ok_or(PlatformError::NotFound)?;
    f(&image)
}

/// Attaches iosv to the loaded image `name` (the platform side of IOCTL_ATTACH).
pub(crate) fn attach_image(platform: &HostPlatform, name: &[u8]) -> Result<u32, PlatformError> {
    let sys = &platform.sys;
    with_loaded_image(sys, name, |image| {
        let verifier = sys.verifier().ok_or(PlatformError::Unsupported)?;
        let id = match attached_id(image) {
            Some(id) => id,
            None => verifier
                .driver_attached(image.name().as_bytes(), image.base(), image.size())
                .ok_or(PlatformError::NoResources)?,
        };
        let result = patch(platform, image);
        verifier.drivers().note_attach(id, &result);
        image.record_debug(verifier.drivers(), id);
        let patched = result.inspect_err(|_| {
            if attached_id(image).is_none() {
                verifier.driver_detached(id, true);
            }
        })?;
        image.set_driver_id(id.0);
        Ok(patched)
    })
}

/// Builds (once) and applies the image's interception plan; returns the slots that hold
/// the hooks.
pub(crate) fn patch(platform: &HostPlatform, image: &SimImage) -> Result<u32, PlatformError> {
    let mut plan_slot = lock(&image.plan);
    let mut plan = match *plan_slot {
        Some(p) => p,
        None => {
            let pe = PeImage::parse(image.bytes()).map_err(|_| PlatformError::BadImage)?;
            let base = usize::try_from(image.base()).map_err(|_| PlatformError::BadImage)?;
            Plan::for_image(base, &pe, None, &HOOK_TABLE)
                .map_err(|_| PlatformError::BadImage)?
                .0
        }
    };
    // The same site checks as the kernel: never a code, discardable, pageable or unbound
    // slot. Every simulated page is resident.
    let pe = PeImage::parse(image.bytes()).map_err(|_| PlatformError::BadImage)?;
    // SAFETY: the image is loaded and stays loaded for the call (loader lock held).
    unsafe { plan.check_sites(&pe, platform, |_| true, iosv::intercept::is_bound_value) }
        .map_err(PlatformError::Refused)?;
    // From the first slot write on, iosv.sys could be called through a slot at any time:
    // the same unload policy as the kernel.
    if let Some(v) = platform.sys.verifier() {
        v.block_unload();
    }
    // SAFETY: the image is loaded (its rundown has not started: the loader lock is held
    // and unloads take it) and stays loaded for the call; the hooks are the simulated
    // iosv.sys addresses the simulated drivers dispatch on, ready to be "called".
    let report = unsafe { plan.attach(platform) };
    *plan_slot = Some(plan);
    let hooked = report
        .outcomes()
        .iter()
        .filter(|o| {
            matches!(
                o.outcome,
                Outcome::Patched { .. } | Outcome::AlreadyAttached
            )
        })
        .count();
    if report.is_clean() {
        Ok(u32::try_from(hooked).unwrap_or(u32::MAX))
    } else {
        Err(PlatformError::SlotChanged)
    }
}

/// Restores the image's slots; returns how many were restored.
pub(crate) fn unpatch(platform: &HostPlatform, image: &SimImage) -> Result<u32, PlatformError> {
    let mut plan_slot = lock(&image.plan);
    let Some(mut plan) = *plan_slot else {
        return Ok(0);
    };
    // SAFETY: the image is loaded and stays loaded for the call (loader lock held).
    let report = unsafe { plan.detach(platform) };
    *plan_slot = if plan.is_attached() { Some(plan) } else { None };
    let restored = report.restored();
    if report.is_clean() {
        Ok(u32::try_from(restored).unwrap_or(u32::MAX))
    } else {
        Err(PlatformError::SlotChanged)
    }
}

/// Detaches iosv from the loaded image `name` (the platform side of IOCTL_DETACH).
pub(crate) fn detach_image(platform: &HostPlatform, name: &[u8]) -> Result<u32, PlatformError> {
    let sys = &platform.sys;
    with_loaded_image(sys, name, |image| {
        let Some(id) = attached_id(image) else {
            return Ok(0);
        };
        let restored = unpatch(platform, image)?;
        // Drain: calls that read a hook address before the restore finish (bounded wait).
        drain(image);
        if let Some(d) = declared(sys, image.name()) {
            expect_detach_leaks(sys, &d);
        }
        if let Some(v) = sys.verifier() {
            v.driver_detached(id, true);
        }
        image.set_driver_id(0);
        Ok(restored)
    })
}

/// Waits (100 ms at most) for the calls that read a hook address before the restore.
fn drain(image: &SimImage) {
    let start = std::time::Instant::now();
    while image.inflight() != 0 && start.elapsed() < std::time::Duration::from_millis(100) {
        std::thread::yield_now();
    }
}
