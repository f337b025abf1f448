//! The backend that runs a scenario's compiled driver images (`image = "x.sys"`): the
//! host cannot run driver code itself, so [`super::run_with_images`] hands every step on
//! an image driver to an [`ImageDriver`] — in `iosvctl lab`, the runner's child process
//! (package `iosv-runner`), which loads the image and plays the PnP and I/O managers.

use crate::regspec::RegistrySpec;
use crate::Bar;
use std::path::Path;
use std::string::String;

/// Runs compiled driver images for a scenario. Names are the scenario's: `driver` is a
/// `[[driver]]` name (the image's file name), `device` a `[[device]]` name. Every method
/// runs driver code on the calling thread; an `Err` is a step failure (the scenario
/// stops there and reports it at the step). What the driver does wrong is not an error:
/// iosv reports it.
pub trait ImageDriver {
    /// Loads the image at `path`, lets iosv hook its imports, fills the registry with
    /// `registry` (the `[[driver]]`'s `registry` values, placed as `iosvctl run
    /// --registry` places them: `@hw` / `@sw` in the keys of device instance 0000, the
    /// first device added), and calls DriverEntry.
    ///
    /// # Errors
    /// The image cannot be loaded or DriverEntry failed.
    fn load(&mut self, driver: &str, path: &Path, registry: &[RegistrySpec]) -> Result<(), String>;
    /// Creates a physical device object and calls the driver's AddDevice with it; the
    /// device is started later with `bars` as its memory resources.
    ///
    /// # Errors
    /// The driver is not loaded, has no AddDevice, or AddDevice failed.
    fn add_device(&mut self, driver: &str, device: &str, bars: &[Bar]) -> Result<(), String>;
    /// IRP_MN_START_DEVICE with the device's resources (raw and translated), then a
    /// D0 power IRP.
    ///
    /// # Errors
    /// The device is not added or already started, or the driver failed the start.
    fn start(&mut self, device: &str) -> Result<(), String>;
    /// IRP_MN_QUERY_STOP_DEVICE, then IRP_MN_STOP_DEVICE; `false` when the driver vetoed
    /// the query (then IRP_MN_CANCEL_STOP_DEVICE, and the device stays started).
    ///
    /// # Errors
    /// The device is not started.
    fn stop(&mut self, device: &str) -> Result<bool, String>;
    /// IRP_MN_SURPRISE_REMOVAL: the device vanished.
    ///
    /// # Errors
    /// The device was not added or is already surprise-removed.
    fn surprise_remove(&mut self, device: &str) -> Result<(), String>;
    /// IRP_MN_QUERY_REMOVE_DEVICE (skipped after a surprise removal) and
    /// IRP_MN_REMOVE_DEVICE: the device object goes.
    ///
    /// # Errors
    /// The device was not added.
    fn remove(&mut self, device: &str) -> Result<(), String>;
    /// IRP_MJ_CREATE, `count` IRP_MJ_DEVICE_CONTROL requests with `code` and `input`,
    /// IRP_MJ_CLEANUP and IRP_MJ_CLOSE on one file object. Returns the status of the
    /// last request.
    ///
    /// # Errors
    /// The device was not added or CREATE failed.
    fn ioctl(&mut self, device: &str, code: u32, input: &[u8], count: u64) -> Result<i32, String>;
    /// As [`ImageDriver::ioctl`], to the device the driver created in DriverEntry (a
    /// legacy driver, without AddDevice: its control device).
    ///
    /// # Errors
    /// The driver is not loaded or created no device, or CREATE failed.
    fn control_ioctl(
        &mut self,
        driver: &str,
        code: u32,
        input: &[u8],
        count: u64,
    ) -> Result<i32, String>;
    /// DriverUnload; iosv reports what is still mapped (IOSV009) and restores the
    /// import slots.
    ///
    /// # Errors
    /// The driver is not loaded, still has devices, or has no DriverUnload.
    fn unload(&mut self, driver: &str) -> Result<(), String>;
}
