//! The scenario backend: runs a scenario's compiled driver image (`image = "x.sys"`) for
//! the host's scenario runner ([`iosv_host::scenario::ImageDriver`]), in the child. The
//! PnP and I/O managers are the child's ([`super::child`]): the same driver object,
//! physical device objects, resource lists and IRPs as `iosvctl run`, one PDO per
//! scenario device.

use super::child::{self, Device, Driver};
use super::engine::HostEngine;
use super::{loader, report};
use crate::protocol::LAB_PIECE;
use crate::regspec::RegistrySpec;
use crate::BarSpec;
use iosv_host::scenario::ImageDriver;
use iosv_host::{Bar, Host};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The protocol keyword of the lines a scenario child sends the parent besides the
/// runner's own (see [`crate::protocol`]): `lab TEXT`.
const LAB: &str = "lab ";
/// The keyword of the first pieces of a long `lab` line.
const LAB_MORE: &str = "lab+ ";

/// A scenario device of the image driver.
struct Dev {
    device: Device,
    bars: Vec<BarSpec>,
    started: bool,
    surprise_removed: bool,
}

/// The loaded image and its driver object.
struct Loaded {
    name: String,
    image: loader::LoadedImage,
    driver: Driver,
}

/// [`ImageDriver`] over the child's PnP and I/O managers. One image per child: the
/// kernel surface and the engine hold one driver (`docs/scenarios.md`).
pub struct Backend {
    engine: Arc<HostEngine>,
    loaded: Option<Loaded>,
    /// Set once the image unloaded: it is not loaded again.
    unloaded: bool,
    /// Set when the image's DriverEntry failed (the parent was told, `entryfail`): the
    /// scenario stops at its `load` step, and [`main`] serves the reports collected so
    /// far instead of failing the scenario.
    entry_failed: bool,
    bus: usize,
    devices: HashMap<String, Dev>,
    next_pdo: u32,
}

impl Backend {
    fn new(engine: Arc<HostEngine>) -> Self {
        Self {
            engine,
            loaded: None,
            unloaded: false,
            entry_failed: false,
            bus: 0,
            devices: HashMap::new(),
            next_pdo: 0,
        }
    }

    fn driver(&self, name: &str) -> Result<&Loaded, String> {
        self.loaded
            .as_ref()
            .filter(|l| l.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("the image driver `{name}` is not loaded"))
    }

    fn device(&mut self, name: &str) -> Result<&mut Dev, String> {
        self.devices
            .get_mut(name)
            .ok_or_else(|| format!("device `{name}` has not been added"))
    }
}

impl ImageDriver for Backend {
    fn load(&mut self, driver: &str, path: &Path, registry: &[RegistrySpec]) -> Result<(), String> {
        if self.loaded.is_some() || self.unloaded {
            return Err(format!(
                "`{driver}`: the runner loads one image once per child process"
            ));
        }
        // As for `iosvctl run`, an image that does not load ends the run with its own
        // exit status (the parent reports it), not as a failed step.
        let image = match child::load_image(&*self.engine, path) {
            Ok(i) => i,
            Err(e) => load_failed(&e),
        };
        // A failed DriverEntry is told to the parent as `iosvctl run` tells it (the image
        // was unloaded: what DriverEntry left mapped is reported as leaked). The scenario
        // cannot go on without the driver: this step fails, and [`main`] then serves the
        // reports collected so far, after which the run ends with exit status 8.
        let driver_object = match child::driver_entry(&*self.engine, &image, registry) {
            Ok(d) => d,
            Err(status) => {
                child::entry_failed(status);
                self.entry_failed = true;
                self.unloaded = true;
                return Err(format!(
                    "DriverEntry of {driver} failed with status {:#010x}",
                    status as u32
                ));
            }
        };
        self.loaded = Some(Loaded {
            name: driver.to_string(),
            image,
            driver: driver_object,
        });
        Ok(())
    }

    fn add_device(&mut self, driver: &str, device: &str, bars: &[Bar]) -> Result<(), String> {
        if self.devices.contains_key(device) {
            return Err(format!("device `{device}` exists already"));
        }
        if self.bus == 0 {
            self.bus = child::bus_driver();
        }
        let bars = bars
            .iter()
            .map(|b| {
                u32::try_from(b.size)
                    .map(|length| BarSpec {
                        physical: b.physical,
                        length,
                    })
                    .map_err(|_| format!("a BAR of `{device}` is larger than 4 GiB"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (bus, index) = (self.bus, self.next_pdo);
        let loaded = self.driver(driver)?;
        let dev = child::add_device(bus, &loaded.driver, index)?;
        self.next_pdo = self.next_pdo.saturating_add(1);
        self.devices.insert(
            device.to_string(),
            Dev {
                device: dev,
                bars,
                started: false,
                surprise_removed: false,
            },
        );
        Ok(())
    }

    fn start(&mut self, device: &str) -> Result<(), String> {
        let engine = Arc::clone(&self.engine);
        let d = self.device(device)?;
        if d.started || d.surprise_removed {
            return Err(format!("device `{device}` is started or removed"));
        }
        if !d.device.start(&*engine, &d.bars) {
            return Err(format!(
                "the driver failed IRP_MN_START_DEVICE of `{device}`"
            ));
        }
        d.started = true;
        Ok(())
    }

    fn stop(&mut self, device: &str) -> Result<bool, String> {
        let engine = Arc::clone(&self.engine);
        let d = self.device(device)?;
        if !d.started {
            return Err(format!("device `{device}` is not started"));
        }
        let stopped = d.device.stop(&*engine);
        d.started = !stopped;
        Ok(stopped)
    }

    fn surprise_remove(&mut self, device: &str) -> Result<(), String> {
        let engine = Arc::clone(&self.engine);
        let d = self.device(device)?;
        if d.surprise_removed {
            return Err(format!("device `{device}` is surprise-removed already"));
        }
        d.device.surprise_remove(&*engine);
        d.started = false;
        d.surprise_removed = true;
        Ok(())
    }

    fn remove(&mut self, device: &str) -> Result<(), String> {
        let engine = Arc::clone(&self.engine);
        let d = self.device(device)?;
        d.device.remove(&*engine, !d.surprise_removed);
        self.devices.remove(device);
        Ok(())
    }

    fn ioctl(&mut self, device: &str, code: u32, input: &[u8], count: u64) -> Result<i32, String> {
        let d = self.device(device)?;
        let mut requests = (0..count).map(|_| (code, input));
        child::io_requests(d.device.top(), &mut requests, false).map_err(|status| {
            format!(
                "IRP_MJ_CREATE on `{device}` failed with status {:#010x}",
                status as u32
            )
        })
    }

    fn control_ioctl(
        &mut self,
        driver: &str,
        code: u32,
        input: &[u8],
        count: u64,
    ) -> Result<i32, String> {
        let control = self.driver(driver)?.driver.first_device();
        if control == 0 {
            return Err(format!("`{driver}` created no device in DriverEntry"));
        }
        let mut requests = (0..count).map(|_| (code, input));
        child::io_requests(child::kernel_top(control), &mut requests, false).map_err(|status| {
            format!(
                "IRP_MJ_CREATE on the device of `{driver}` failed with status {:#010x}",
                status as u32
            )
        })
    }

    fn unload(&mut self, driver: &str) -> Result<(), String> {
        self.driver(driver)?;
        if !self.devices.is_empty() {
            let mut names: Vec<&String> = self.devices.keys().collect();
            names.sort();
            return Err(format!(
                "`{driver}` still has devices ({}): remove them first",
                names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let Some(loaded) = self.loaded.take() else {
            return Err(format!("the image driver `{driver}` is not loaded"));
        };
        self.unloaded = true;
        if !child::unload_driver(&*self.engine, &loaded.image, &loaded.driver) {
            return Err(format!(
                "`{driver}` has no DriverUnload routine: it cannot unload"
            ));
        }
        Ok(())
    }
}

/// What runs the scenario in the child ([`main`]): given the image backend, the lines
/// for the parent, or the scenario's error.
pub type Body<'a> = dyn FnMut(&mut dyn ImageDriver) -> Result<Vec<String>, String> + 'a;

/// `line` as the protocol lines that carry it: `lab+` pieces of at most [`LAB_PIECE`]
/// bytes (cut at character boundaries) and a last `lab` piece, so no protocol line passes
/// the parent's line bound (which would cut the line short).
fn lab_pieces(line: &str) -> Vec<[&str; 2]> {
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > LAB_PIECE {
        let mut cut = LAB_PIECE;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        out.push([LAB_MORE, piece]);
        rest = tail;
    }
    out.push([LAB, rest]);
    out
}

/// Tells the parent the image could not be loaded and ends the child (exit 8).
fn load_failed(text: &str) -> ! {
    report::line(&["loadfail ", text]);
    std::process::exit(child::LOAD_FAILED_STATUS)
}

/// Tells the parent the scenario child could not run the scenario (`fail TEXT`);
/// returns the child's exit status.
#[must_use]
pub fn fail(text: &str) -> i32 {
    report::line(&["fail ", text]);
    2
}

/// The child of a scenario with a compiled driver image (`iosvctl lab`): sets up the
/// simulated machine over `host` (built and configured by the caller from the scenario),
/// serves the control codes on `socket`, and calls `body` with the image backend —
/// `body` runs the scenario and returns the lines the parent prints (sent as `lab`
/// lines), or the scenario's error (sent as `fail`). Then it serves until the parent
/// closes its standard input. Returns the child's exit status.
///
/// A failed DriverEntry stops the scenario at its `load` step, but is not a failed
/// scenario: the parent was told (`entryfail`) and, as for `iosvctl run`'s child, the
/// verifier then serves the reports collected up to the failure (the `load` step's error
/// is sent as a `note`); the parent prints them and ends the run with exit status 8.
pub fn main(socket: &Path, host: &Arc<Host>, body: &mut Body<'_>) -> i32 {
    let (server, engine) = match child::setup(socket, host) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut backend = Backend::new(engine);
    match body(&mut backend) {
        Ok(lines) => {
            for p in lines.iter().flat_map(|l| lab_pieces(l)) {
                report::line(&p);
            }
        }
        Err(e) if backend.entry_failed => child::note(&e),
        Err(e) => {
            let _ = server.stop();
            return fail(&e);
        }
    }
    child::serve_until_closed(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `lab` line longer than a protocol piece goes in pieces the parent joins; none
    /// passes the bound, and none splits a character.
    #[test]
    fn long_lab_lines_go_in_pieces() {
        assert_eq!(lab_pieces("short"), vec![[LAB, "short"]]);
        assert_eq!(lab_pieces(""), vec![[LAB, ""]]);
        let line = format!(
            "{}é{}",
            "x".repeat(LAB_PIECE - 1),
            "y".repeat(2 * LAB_PIECE)
        );
        let pieces = lab_pieces(&line);
        assert!(pieces.len() >= 3, "{}", pieces.len());
        assert!(pieces.iter().all(|[_, p]| p.len() <= LAB_PIECE));
        let (last, first) = pieces.split_last().unwrap();
        assert_eq!(last[0], LAB);
        assert!(first.iter().all(|[k, _]| *k == LAB_MORE));
        assert_eq!(pieces.iter().map(|[_, p]| *p).collect::<String>(), line);
    }
}
