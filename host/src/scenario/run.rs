//! Running a scenario: the scripted steps in order on the calling thread, and each stress
//! phase on its own OS threads against the shared host.
//!
//! # Stress phases
//! The phase's drivers (its `drivers`, or every loaded driver iosv is attached to) are
//! shared out round-robin: each driver, with all its devices, belongs to exactly one
//! thread. When there are more threads than drivers, clones of the drivers are loaded
//! (`nic-2.sys`, with devices of their own) so every thread owns one. Each thread has its
//! own [`Actor`]. An operation is, with the configured probabilities, one injected bug of
//! a rule, or else a well-behaved one: mostly runtime I/O on one of its started devices,
//! sometimes a stop and restart, rarely a surprise removal (or removal), re-add and start.
//! Ownership is what keeps every injected bug reported exactly once: iosv attributes a map
//! made while a device of the same driver is starting to that device, so two threads
//! sharing a driver could turn one thread's runtime mapping into the other's leak.
//!
//! # Compiled driver images
//! Steps on a `[[driver]]` with `image` go to an [`ImageDriver`] ([`run_with_images`]),
//! on the calling thread — the only thread that runs driver code. In a stress phase the
//! calling thread drives the phase's image drivers while the OS threads drive the
//! simulated ones: `image_ops` operations in a fixed order (IOCTLs from the driver's
//! `ioctls` in turn over its started devices; every `image_restart_every`-th operation
//! a stop and start instead), so what a compiled driver does there is predictable.

use super::{
    ImageDriver, Limit, Progress, RunSummary, Scenario, ScenarioError, Step, StepKind, StressSpec,
    StressSummary, UnmapTarget,
};
use crate::requests::{add_target, clear, configure};
use crate::{thread, Host, HostError, Injected};
use crate::{Actor, Device};
use iosv::platform::Irql;
use iosv::protocol::{CF_CONTAINMENT, CF_VERIFIER_IRQL};
use iosv::rules::{RuleId, RULE_COUNT};
use std::collections::{BTreeMap, HashMap};
use std::string::String;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::vec::Vec;

fn diff(after: &Injected, before: &Injected) -> Injected {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn at(scenario: &Scenario, step: &Step, message: impl std::fmt::Display) -> ScenarioError {
    ScenarioError {
        origin: scenario.origin.clone(),
        line: step.location.line,
        column: step.location.column,
        message: std::format!("step `{}` failed: {message}", step.op),
    }
}

fn apply_config(host: &Host, c: &super::ConfigChange) -> Result<(), HostError> {
    configure(host, |b| {
        if let Some(targets) = &c.targets {
            b.targets = Default::default();
            b.target_count = 0;
            for (slot, t) in b.targets.iter_mut().zip(targets) {
                *slot = iosv::protocol::wire_name(t.as_bytes());
                b.target_count = b.target_count.saturating_add(1);
            }
        }
        if let Some(on) = c.containment {
            b.flags = if on {
                b.flags | CF_CONTAINMENT
            } else {
                b.flags & !CF_CONTAINMENT
            };
        }
        if let Some(on) = c.verifier_irql {
            b.flags = if on {
                b.flags | CF_VERIFIER_IRQL
            } else {
                b.flags & !CF_VERIFIER_IRQL
            };
        }
        if let Some(d) = c.stack_depth {
            b.stack_depth = d;
        }
        for (rule, action) in &c.actions {
            match rule {
                Some(r) => {
                    if let Some(slot) = b.actions.get_mut(r.index()) {
                        *slot = *action as u8;
                    }
                }
                None => {
                    for slot in b.actions.iter_mut().take(RULE_COUNT) {
                        *slot = *action as u8;
                    }
                }
            }
        }
    })?;
    for t in &c.add_targets {
        add_target(host, t)?;
    }
    Ok(())
}

struct Named {
    base: u64,
    size: u64,
}

/// The [`ImageDriver`] of a scenario that names no image: never called ([`run`] refuses
/// a scenario with images first).
struct NoImages;

impl NoImages {
    fn refuse() -> Result<(), String> {
        Err(String::from(
            "compiled driver images run only with an image backend (iosvctl lab)",
        ))
    }
}

impl ImageDriver for NoImages {
    fn load(
        &mut self,
        _: &str,
        _: &std::path::Path,
        _: &[crate::regspec::RegistrySpec],
    ) -> Result<(), String> {
        Self::refuse()
    }
    fn add_device(&mut self, _: &str, _: &str, _: &[crate::Bar]) -> Result<(), String> {
        Self::refuse()
    }
    fn start(&mut self, _: &str) -> Result<(), String> {
        Self::refuse()
    }
    fn stop(&mut self, _: &str) -> Result<bool, String> {
        Self::refuse().map(|()| false)
    }
    fn surprise_remove(&mut self, _: &str) -> Result<(), String> {
        Self::refuse()
    }
    fn remove(&mut self, _: &str) -> Result<(), String> {
        Self::refuse()
    }
    fn ioctl(&mut self, _: &str, _: u32, _: &[u8], _: u64) -> Result<i32, String> {
        Self::refuse().map(|()| 0)
    }
    fn control_ioctl(&mut self, _: &str, _: u32, _: &[u8], _: u64) -> Result<i32, String> {
        Self::refuse().map(|()| 0)
    }
    fn unload(&mut self, _: &str) -> Result<(), String> {
        Self::refuse()
    }
}

/// PnP state of an image driver's device, as the scenario drove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageState {
    Added,
    Started,
    Stopped,
    SurpriseRemoved,
}

/// What the run knows about its image drivers: which are loaded, their devices' states.
#[derive(Default)]
struct Images {
    loaded: Vec<String>,
    /// Device name → (driver, state), in the order added.
    devices: BTreeMap<String, (String, ImageState)>,
    order: Vec<String>,
}

impl Images {
    fn devices_of(&self, driver: &str) -> Vec<String> {
        self.order
            .iter()
            .filter(|d| {
                self.devices
                    .get(*d)
                    .is_some_and(|(drv, _)| drv.eq_ignore_ascii_case(driver))
            })
            .cloned()
            .collect()
    }
    fn set(&mut self, device: &str, state: ImageState) {
        if let Some(e) = self.devices.get_mut(device) {
            e.1 = state;
        }
    }
    fn state(&self, device: &str) -> Option<ImageState> {
        self.devices.get(device).map(|e| e.1)
    }
}

fn image_driver<'a>(scenario: &'a Scenario, name: &str) -> Option<&'a super::ImageDecl> {
    scenario
        .drivers
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
        .and_then(|d| d.image.as_ref())
}

fn is_image_device(scenario: &Scenario, device: &str) -> bool {
    scenario
        .devices
        .iter()
        .find(|d| d.name == device)
        .is_some_and(|d| image_driver(scenario, &d.driver).is_some())
}

/// Runs `scenario` against `host`, reporting progress to `progress` (on the calling
/// thread). Declarations come first: every `[[driver]]` is declared with its behaviour,
/// the `[config]` table and the drivers' `target` keys are applied through SET_CONFIG.
/// Then the steps run in order. A failing step stops the run with its location.
///
/// A scenario that names a compiled driver image is refused: it needs
/// [`run_with_images`].
pub fn run(
    host: &Host,
    scenario: &Scenario,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunSummary, ScenarioError> {
    let image = scenario
        .drivers
        .iter()
        .find_map(|d| d.image.as_ref().map(|i| (&d.name, i.location)));
    if let Some((name, at)) = image {
        return Err(ScenarioError {
            origin: scenario.origin.clone(),
            line: at.line,
            column: at.column,
            message: std::format!(
                "the scenario names the compiled driver image {name}: only `iosvctl lab` runs it (in a child process, the only place driver code may run)"
            ),
        });
    }
    run_with_images(host, scenario, &mut NoImages, progress)
}

/// [`run`] for a scenario that may name compiled driver images: their steps go to
/// `images`, on the calling thread. After the run, each image driver's `expect` is added
/// to [`RunSummary::expected`]; image drivers without one are listed in
/// [`RunSummary::unaudited_drivers`].
pub fn run_with_images(
    host: &Host,
    scenario: &Scenario,
    images: &mut dyn ImageDriver,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunSummary, ScenarioError> {
    let started = Instant::now();
    let before = host.injected();
    let corruptions_before = host.mm().counters().corruptions;
    let top = |message: String| ScenarioError {
        origin: scenario.origin.clone(),
        line: 0,
        column: 0,
        message,
    };
    let simulated = || scenario.drivers.iter().filter(|d| d.image.is_none());
    for d in simulated() {
        host.declare_driver(&d.name, d.behaviour, d.bug_every);
    }
    apply_config(host, &scenario.config)
        .map_err(|e| top(std::format!("applying [config]: {e}")))?;
    for d in simulated().filter(|d| d.target) {
        add_target(host, &d.name)
            .map_err(|e| top(std::format!("adding target {}: {e}", d.name)))?;
    }

    let total = scenario.steps.len() as u64;
    let mut names: HashMap<String, Named> = HashMap::new();
    // Scripted steps run one at a time: any page count no BAR spans is private enough.
    let mut actor = host.actor(scenario.seed);
    if let Some(p) = host.private_page_counts(1).first() {
        actor.set_private_pages(*p);
    }
    let mut operations = 0u64;
    let mut stress = Vec::new();
    let mut state = Images::default();
    let mut timeline = crate::timeline::Timeline::default();
    timeline.sample(host, None);
    for (i, step) in scenario.steps.iter().enumerate() {
        let index = i as u64;
        progress(&Progress {
            done: index,
            total,
            phase: std::format!(
                "step {}/{}: {}",
                index.saturating_add(1),
                total,
                describe(step)
            ),
        });
        thread::set_step(Some(index));
        let r = thread::with_simulated_thread(step.thread, || {
            run_step(
                &mut Ctx {
                    host,
                    scenario,
                    names: &mut names,
                    actor: &mut actor,
                    operations: &mut operations,
                    stress: &mut stress,
                    images: &mut *images,
                    state: &mut state,
                },
                step,
                progress,
            )
        });
        thread::set_step(None);
        r.map_err(|m| at(scenario, step, m))?;
        timeline.sample(host, Some(index));
    }
    progress(&Progress {
        done: total,
        total,
        phase: String::from("done"),
    });
    let after = host.injected();
    let mut expected = diff(&after, &before);
    let mut unaudited_drivers = Vec::new();
    for d in &scenario.drivers {
        match d.image.as_ref().map(|i| &i.expect) {
            Some(Some(expect)) => {
                for (rule, n) in expect.iter().filter(|(_, n)| *n > 0) {
                    let slot = expected.entry((*rule, d.name.clone())).or_insert(0);
                    *slot = slot.saturating_add(*n);
                }
            }
            Some(None) => unaudited_drivers.push(d.name.clone()),
            None => {}
        }
    }
    Ok(RunSummary {
        name: scenario.name.clone(),
        steps: total,
        operations,
        expected,
        unaudited_drivers,
        duration: started.elapsed(),
        stress,
        corruptions: host
            .mm()
            .counters()
            .corruptions
            .saturating_sub(corruptions_before),
        timeline,
    })
}

fn describe(step: &Step) -> String {
    match &step.kind {
        StepKind::Load(d)
        | StepKind::Unload(d)
        | StepKind::Attach(d)
        | StepKind::Detach(d)
        | StepKind::ControlIoctl { driver: d, .. } => {
            std::format!("{} {d}", step.op)
        }
        StepKind::AddDevice(d)
        | StepKind::Start { device: d, .. }
        | StepKind::CompleteStart(d)
        | StepKind::Stop(d)
        | StepKind::SurpriseRemove(d)
        | StepKind::Remove(d)
        | StepKind::Io { device: d, .. }
        | StepKind::Ioctl { device: d, .. } => std::format!("{} {d}", step.op),
        StepKind::Map { driver, .. } | StepKind::Unmap { driver, .. } => {
            std::format!("{} by {driver}", step.op)
        }
        StepKind::Bug { rule, driver, .. } => std::format!("bug {} by {driver}", rule.info().code),
        StepKind::Stress(s) => std::format!("stress on {} threads", s.threads),
        _ => String::from(step.op),
    }
}

/// What a step works on.
struct Ctx<'a, 'b> {
    host: &'a Host,
    scenario: &'a Scenario,
    names: &'b mut HashMap<String, Named>,
    actor: &'b mut Actor,
    operations: &'b mut u64,
    stress: &'b mut Vec<StressSummary>,
    images: &'b mut dyn ImageDriver,
    state: &'b mut Images,
}

/// A step on a compiled driver image or its device; `None` when the step is not one.
fn image_step(c: &mut Ctx<'_, '_>, step: &Step) -> Option<Result<(), String>> {
    let scenario = c.scenario;
    let op = |n: &mut u64| *n = n.saturating_add(1);
    Some(match &step.kind {
        StepKind::Load(d) => {
            let image = image_driver(scenario, d)?;
            c.images
                .load(d, &image.path, &image.registry)
                .map(|()| c.state.loaded.push(d.clone()))
        }
        StepKind::Unload(d) => {
            image_driver(scenario, d)?;
            c.images
                .unload(d)
                .map(|()| c.state.loaded.retain(|l| !l.eq_ignore_ascii_case(d)))
        }
        StepKind::AddDevice(name) if is_image_device(scenario, name) => {
            let Some(decl) = scenario.devices.iter().find(|d| &d.name == name) else {
                return Some(Err(std::format!("no device `{name}`")));
            };
            let bars = decl.bars.clone().unwrap_or_else(|| c.host.auto_bars());
            c.images.add_device(&decl.driver, name, &bars).map(|()| {
                c.state
                    .devices
                    .insert(name.clone(), (decl.driver.clone(), ImageState::Added));
                c.state.order.retain(|o| o != name);
                c.state.order.push(name.clone());
            })
        }
        StepKind::Start { device, .. } if is_image_device(scenario, device) => {
            op(c.operations);
            c.images
                .start(device)
                .map(|()| c.state.set(device, ImageState::Started))
        }
        StepKind::Stop(device) if is_image_device(scenario, device) => {
            op(c.operations);
            c.images.stop(device).map(|stopped| {
                if stopped {
                    c.state.set(device, ImageState::Stopped);
                }
            })
        }
        StepKind::SurpriseRemove(device) if is_image_device(scenario, device) => {
            op(c.operations);
            c.images
                .surprise_remove(device)
                .map(|()| c.state.set(device, ImageState::SurpriseRemoved))
        }
        StepKind::Remove(device) if is_image_device(scenario, device) => {
            op(c.operations);
            c.images.remove(device).map(|()| {
                c.state.devices.remove(device);
                c.state.order.retain(|o| o != device);
            })
        }
        StepKind::Ioctl {
            device,
            request,
            count,
        } => {
            *c.operations = c.operations.saturating_add(*count);
            c.images
                .ioctl(device, request.code, &request.input, *count)
                .map(|_| ())
        }
        StepKind::ControlIoctl {
            driver,
            request,
            count,
        } => {
            *c.operations = c.operations.saturating_add(*count);
            c.images
                .control_ioctl(driver, request.code, &request.input, *count)
                .map(|_| ())
        }
        _ => return None,
    })
}

fn run_step(
    c: &mut Ctx<'_, '_>,
    step: &Step,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), String> {
    if let Some(r) = image_step(c, step) {
        return r;
    }
    let (host, scenario) = (c.host, c.scenario);
    let e = |e: HostError| e.to_string();
    let op = |n: &mut u64| *n = n.saturating_add(1);
    let operations = &mut *c.operations;
    let actor = &mut *c.actor;
    let names = &mut *c.names;
    match &step.kind {
        StepKind::Load(d) => {
            host.load_driver(d).map_err(e)?;
        }
        StepKind::Unload(d) => host.unload_driver(d).map_err(e)?,
        StepKind::Attach(d) => {
            host.attach(d).map_err(e)?;
        }
        StepKind::Detach(d) => {
            host.detach(d).map_err(e)?;
        }
        StepKind::AddDevice(name) => {
            let decl = scenario
                .devices
                .iter()
                .find(|d| &d.name == name)
                .ok_or_else(|| std::format!("no device `{name}`"))?;
            let bars = decl.bars.clone().unwrap_or_else(|| host.auto_bars());
            host.add_device(name, &decl.driver, &bars).map_err(e)?;
        }
        StepKind::Start { device, complete } => {
            let dev = host.device(device).map_err(e)?;
            op(operations);
            if !host.start_device(&dev, *complete).map_err(e)? {
                return Err(std::format!(
                    "the start of `{device}` failed: a BAR could not be mapped"
                ));
            }
        }
        StepKind::CompleteStart(device) => host
            .complete_start(&*host.device(device).map_err(e)?)
            .map_err(e)?,
        StepKind::Stop(device) => {
            op(operations);
            host.stop_device(&*host.device(device).map_err(e)?)
                .map_err(e)?;
        }
        StepKind::SurpriseRemove(device) => {
            op(operations);
            host.surprise_remove_device(&*host.device(device).map_err(e)?)
                .map_err(e)?;
        }
        StepKind::Remove(device) => {
            op(operations);
            host.remove_device(&*host.device(device).map_err(e)?)
                .map_err(e)?;
        }
        StepKind::Io { device, count } => {
            let dev = host.device(device).map_err(e)?;
            for _ in 0..*count {
                host.device_io(&dev, actor).map_err(e)?;
                op(operations);
            }
        }
        StepKind::Map {
            driver,
            physical,
            size,
            cache,
            ex,
            irql,
            name,
            routine,
        } => {
            let d = host.driver(driver).map_err(e)?;
            let (base, _) = thread::with_irql(Irql(*irql), || {
                if *ex {
                    d.map_io_space_ex(*routine, *physical, *size, *cache)
                } else {
                    d.map_io_space(*routine, *physical, *size, *cache)
                }
            })
            .map_err(e)?;
            op(operations);
            if let Some(n) = name {
                names.insert(n.clone(), Named { base, size: *size });
            }
        }
        StepKind::Unmap {
            driver,
            target,
            size,
            irql,
            bypass,
            routine,
        } => {
            let d = host.driver(driver).map_err(e)?;
            let (base, default_size) = match target {
                UnmapTarget::Address(a) => (*a, 0),
                UnmapTarget::Named { mapping, offset } => {
                    let m = names.get(mapping).ok_or_else(|| {
                        std::format!("no mapping named `{mapping}` was made before this step")
                    })?;
                    (m.base.wrapping_add(*offset), m.size)
                }
            };
            let size = size.unwrap_or(default_size);
            thread::with_irql(Irql(*irql), || {
                if *bypass {
                    d.unmap_io_space_direct(*routine, base, size)
                } else {
                    d.unmap_io_space(*routine, base, size).map(|_| ())
                }
            })
            .map_err(e)?;
            op(operations);
        }
        StepKind::Bug {
            rule,
            driver,
            device,
            foreign,
            count,
        } => {
            for _ in 0..*count {
                host.commit_bug_with(*rule, driver, device.as_deref(), foreign.as_deref(), actor)
                    .map_err(e)?;
                op(operations);
            }
        }
        StepKind::Config(c) => apply_config(host, c).map_err(e)?,
        StepKind::MmFail(n) => host.mm().fail_next_maps(*n),
        StepKind::Clear(what) => clear(host, *what).map_err(e)?,
        StepKind::Stress(spec) => {
            let s = run_stress(
                host,
                scenario,
                step,
                spec,
                &mut *c.images,
                &mut *c.state,
                progress,
            )?;
            *operations = operations.saturating_add(s.operations);
            c.stress.push(s);
        }
        StepKind::Ioctl { .. } | StepKind::ControlIoctl { .. } => {
            return Err(String::from("`ioctl` applies to a compiled driver"))
        }
    }
    Ok(())
}

/// A driver a stress thread owns, with its devices.
struct Owned {
    name: String,
    devices: Vec<Arc<Device>>,
}

fn clone_name(name: &str, k: usize) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) => std::format!("{stem}-{k}.{ext}"),
        None => std::format!("{name}-{k}"),
    }
}

fn prepare(host: &Host, name: &str) -> Result<Owned, HostError> {
    let mut devices = host.devices_of(name);
    if devices.is_empty() {
        let bars = host.auto_bars();
        devices.push(host.add_device(&std::format!("{name}:stress0"), name, &bars)?);
    }
    let mut ready = Vec::new();
    for dev in devices {
        let dev = match dev.state() {
            crate::PnpState::Starting => {
                host.complete_start(&dev)?;
                dev
            }
            crate::PnpState::SurpriseRemoved => {
                host.remove_device(&dev)?;
                host.add_device(dev.name(), name, dev.bars())?
            }
            _ => dev,
        };
        if matches!(
            dev.state(),
            crate::PnpState::Added | crate::PnpState::Stopped
        ) && !host.start_device(&dev, true)?
        {
            return Err(HostError::MapFailed("BAR at start"));
        }
        ready.push(dev);
    }
    Ok(Owned {
        name: String::from(name),
        devices: ready,
    })
}

/// The image side of a stress phase: its devices (started), what each gets, and the
/// budget.
struct ImageWork {
    /// (device, the IOCTLs of its driver).
    devices: Vec<(String, Vec<super::IoctlDecl>)>,
    budget: Option<u64>,
    restart_every: u64,
    done: u64,
    ioctls_sent: u64,
}

impl ImageWork {
    fn prepare(
        scenario: &Scenario,
        spec: &StressSpec,
        drivers: &[String],
        images: &mut dyn ImageDriver,
        state: &mut Images,
    ) -> Result<Self, String> {
        let mut devices = Vec::new();
        for d in drivers {
            if !state.loaded.iter().any(|l| l.eq_ignore_ascii_case(d)) {
                return Err(std::format!("the image driver `{d}` is not loaded"));
            }
            let ioctls = image_driver(scenario, d).map_or_else(Vec::new, |i| i.ioctls.clone());
            for dev in state.devices_of(d) {
                if matches!(
                    state.state(&dev),
                    Some(ImageState::Added | ImageState::Stopped)
                ) {
                    images.start(&dev)?;
                    state.set(&dev, ImageState::Started);
                }
                if state.state(&dev) == Some(ImageState::Started) {
                    devices.push((dev, ioctls.clone()));
                }
            }
        }
        // Named in the phase's `drivers`, an image must have something to drive; taken
        // by default, one without devices is left out.
        if let (Some(d), true, false) =
            (drivers.first(), devices.is_empty(), spec.drivers.is_empty())
        {
            return Err(std::format!(
                "the image driver `{d}` has no device the phase can start: add one first"
            ));
        }
        Ok(Self {
            devices,
            budget: spec.image_ops.or(match spec.limit {
                Limit::Ops(_) => Some(100),
                Limit::Millis(_) => None,
            }),
            restart_every: spec.image_restart_every,
            done: 0,
            ioctls_sent: 0,
        })
    }

    fn finished(&self, deadline: Option<Instant>) -> bool {
        self.devices.is_empty()
            || match self.budget {
                Some(b) => self.done >= b,
                None => deadline.is_none_or(|d| Instant::now() >= d),
            }
    }

    /// The next operation: an IOCTL (the device's driver's `ioctls` in turn; without
    /// any, CREATE/CLEANUP/CLOSE alone), or every `restart_every`-th a stop and start.
    fn step(&mut self, images: &mut dyn ImageDriver) -> Result<(), String> {
        let n = self.devices.len() as u64;
        let i = self.done;
        self.done = self.done.saturating_add(1);
        let Some((dev, ioctls)) = self
            .devices
            .get(usize::try_from(i.checked_rem(n).unwrap_or(0)).unwrap_or(0))
        else {
            return Ok(());
        };
        if self.restart_every > 0 && self.done.is_multiple_of(self.restart_every) {
            if images.stop(dev)? {
                images.start(dev)?;
            }
            return Ok(());
        }
        let k = ioctls.len() as u64;
        let pick = usize::try_from(self.ioctls_sent.checked_rem(k).unwrap_or(0)).unwrap_or(0);
        self.ioctls_sent = self.ioctls_sent.saturating_add(1);
        match ioctls.get(pick) {
            Some(io) => images.ioctl(dev, io.code, &io.input, 1).map(|_| ()),
            None => images.ioctl(dev, 0, &[], 0).map(|_| ()),
        }
    }
}

fn run_stress(
    host: &Host,
    scenario: &Scenario,
    step: &Step,
    spec: &StressSpec,
    images: &mut dyn ImageDriver,
    state: &mut Images,
    progress: &mut dyn FnMut(&Progress),
) -> Result<StressSummary, String> {
    let started = Instant::now();
    let before = host.injected();
    let (image_drivers, mut drivers): (Vec<String>, Vec<String>) = if spec.drivers.is_empty() {
        let simulated = host
            .driver_names()
            .into_iter()
            .filter(|n| host.driver(n).is_ok_and(|d| d.driver_id().is_some()))
            .collect();
        (state.loaded.clone(), simulated)
    } else {
        spec.drivers
            .iter()
            .cloned()
            .partition(|d| image_driver(scenario, d).is_some())
    };
    let mut work = ImageWork::prepare(scenario, spec, &image_drivers, images, state)?;
    // Simulated drivers' threads: none when the phase has only image drivers.
    let threads = if drivers.is_empty() && !work.devices.is_empty() {
        0
    } else {
        spec.threads.max(1) as usize
    };
    if drivers.is_empty() && work.devices.is_empty() {
        return Err(String::from(
            "no loaded driver that iosv is attached to; load a target driver first",
        ));
    }
    for d in &drivers {
        let r = host.driver(d).map_err(|e| e.to_string())?;
        if r.driver_id().is_none() {
            return Err(std::format!(
                "iosv is not attached to `{d}` (make it a target before loading it, or attach)"
            ));
        }
    }
    // Clones, so that every thread owns a driver.
    let templates = drivers.clone();
    let mut k = drivers.len();
    while drivers.len() < threads {
        let Some(t) = templates.get(k.checked_rem(templates.len()).unwrap_or(0)) else {
            break;
        };
        let name = clone_name(t, k);
        let (behaviour, every) = scenario
            .drivers
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(t))
            .map_or((crate::Behaviour::WellBehaved, 100), |d| {
                (d.behaviour, d.bug_every)
            });
        host.declare_driver(&name, behaviour, every);
        if host.driver(&name).is_err() {
            add_target(host, &name).map_err(|e| match e {
                HostError::TargetsFull(_) => std::format!(
                    "a stress phase on {threads} threads needs {threads} drivers iosv hooks (one \
                     per thread; clones are made for the missing ones), but the configuration \
                     holds at most {} targets: use fewer threads",
                    iosv::protocol::MAX_TARGETS
                ),
                e => e.to_string(),
            })?;
            host.load_driver(&name).map_err(|e| e.to_string())?;
        }
        drivers.push(name);
        k = k.saturating_add(1);
    }
    // Ownership: driver j belongs to thread j % threads.
    let mut shares: Vec<Vec<Owned>> = (0..threads).map(|_| Vec::new()).collect();
    for (j, name) in drivers.iter().enumerate() {
        let owned = prepare(host, name).map_err(|e| std::format!("preparing `{name}`: {e}"))?;
        if let Some(share) = shares.get_mut(j.checked_rem(threads).unwrap_or(0)) {
            share.push(owned);
        }
    }
    let seed = spec.seed.unwrap_or(scenario.seed);
    let done = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let deadline = match spec.limit {
        Limit::Millis(ms) => started.checked_add(Duration::from_millis(ms)),
        Limit::Ops(_) => None,
    };
    let total = match spec.limit {
        Limit::Ops(n) if threads > 0 => n,
        Limit::Ops(_) => 0,
        Limit::Millis(ms) => ms,
    }
    .saturating_add(work.budget.unwrap_or(0));
    let all_drivers = drivers.clone();
    // A page count per thread that nothing else in the phase maps (IOSV005 and IOSV013).
    let private = host.private_page_counts(threads);
    std::thread::scope(|scope| {
        for (t, share) in shares.into_iter().enumerate() {
            let budget = match spec.limit {
                Limit::Ops(n) => {
                    let per = n.checked_div(threads as u64).unwrap_or(n);
                    let extra = u64::from((t as u64) < n.checked_rem(threads as u64).unwrap_or(0));
                    Some(per.saturating_add(extra))
                }
                Limit::Millis(_) => None,
            };
            let (done, abort, failure, all) = (&done, &abort, &failure, &all_drivers);
            let mut actor =
                host.actor(seed.wrapping_add((t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            if let Some(p) = private.get(t) {
                actor.set_private_pages(*p);
            }
            scope.spawn(move || {
                let r = worker(
                    host, share, all, spec, budget, deadline, &mut actor, done, abort,
                );
                if let Err(e) = r {
                    abort.store(true, Ordering::Relaxed);
                    let mut f = failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if f.is_none() {
                        *f = Some(std::format!("stress thread {t}: {e}"));
                    }
                }
            });
        }
        let phase = if work.devices.is_empty() {
            std::format!("stress: {threads} threads")
        } else {
            std::format!("stress: {threads} threads and the image drivers")
        };
        let mut shown: Option<Instant> = None;
        loop {
            let aborted = abort.load(Ordering::Relaxed);
            let simulated_done = threads == 0
                || match spec.limit {
                    Limit::Ops(n) => done.load(Ordering::Relaxed) >= n,
                    Limit::Millis(_) => deadline.is_some_and(|d| Instant::now() >= d),
                };
            let images_done = work.finished(deadline);
            let finished = aborted || (simulated_done && images_done);
            if finished || shown.is_none_or(|t| t.elapsed() >= Duration::from_millis(50)) {
                let units = match spec.limit {
                    Limit::Ops(_) => done.load(Ordering::Relaxed),
                    Limit::Millis(ms) => u64::try_from(started.elapsed().as_millis())
                        .unwrap_or(u64::MAX)
                        .min(ms),
                };
                progress(&Progress {
                    done: units.saturating_add(work.budget.map_or(0, |_| work.done)),
                    total,
                    phase: phase.clone(),
                });
                shown = Some(Instant::now());
            }
            if finished {
                break;
            }
            if images_done {
                std::thread::sleep(Duration::from_millis(50));
            } else if let Err(e) = work.step(images) {
                abort.store(true, Ordering::Relaxed);
                let mut f = failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if f.is_none() {
                    *f = Some(std::format!("image driver operation: {e}"));
                }
            }
        }
    });
    if let Some(f) = failure
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(f);
    }
    drivers.extend(image_drivers);
    Ok(StressSummary {
        location: step.location,
        threads: u32::try_from(threads).unwrap_or(spec.threads),
        operations: done.load(Ordering::Relaxed).saturating_add(work.done),
        duration: started.elapsed(),
        seed,
        drivers,
        injected: diff(&host.injected(), &before),
    })
}

fn pick_rule(actor: &mut Actor, inject: &[(RuleId, f64)]) -> Option<RuleId> {
    let mut r = actor.rng.unit();
    for (rule, p) in inject {
        if r < *p {
            return Some(*rule);
        }
        r -= *p;
    }
    None
}

fn refresh(host: &Host, owned: &mut Owned) {
    owned.devices = host.devices_of(&owned.name);
}

#[allow(clippy::too_many_arguments)]
fn worker(
    host: &Host,
    mut share: Vec<Owned>,
    all: &[String],
    spec: &StressSpec,
    budget: Option<u64>,
    deadline: Option<Instant>,
    actor: &mut Actor,
    done: &AtomicU64,
    abort: &AtomicBool,
) -> Result<(), HostError> {
    let mut n = 0u64;
    loop {
        if abort.load(Ordering::Relaxed) || budget.is_some_and(|b| n >= b) {
            break;
        }
        if deadline.is_some_and(|d| n.is_multiple_of(64) && Instant::now() >= d) {
            break;
        }
        let len = share.len() as u64;
        let Some(owned) = share.get_mut(usize::try_from(actor.rng.below(len)).unwrap_or(0)) else {
            break;
        };
        if let Some(rule) = pick_rule(actor, &spec.inject) {
            inject(host, owned, all, rule, actor)?;
        } else {
            well_behaved(host, owned, actor)?;
        }
        n = n.saturating_add(1);
        done.fetch_add(1, Ordering::Relaxed);
    }
    for owned in &share {
        for dev in &owned.devices {
            host.release_runtime(dev)?;
        }
    }
    Ok(())
}

fn inject(
    host: &Host,
    owned: &mut Owned,
    all: &[String],
    rule: RuleId,
    actor: &mut Actor,
) -> Result<(), HostError> {
    let d = host.driver(&owned.name)?;
    let dev = if owned.devices.is_empty() {
        None
    } else {
        owned
            .devices
            .get(usize::try_from(actor.rng.below(owned.devices.len() as u64)).unwrap_or(0))
            .cloned()
    };
    let foreign = if rule == RuleId::UnmapForeign {
        // Another driver: prefer one of the phase's drivers; it may be reloading (its
        // owner injecting a leak-on-unload), in which case this injection is skipped.
        let others: Vec<&String> = all
            .iter()
            .filter(|n| !n.eq_ignore_ascii_case(&owned.name))
            .collect();
        let pick = others.get(usize::try_from(actor.rng.below(others.len() as u64)).unwrap_or(0));
        match pick.map(|n| host.driver(n)) {
            Some(Ok(f)) if f.driver_id().is_some() => Some(f),
            Some(_) => return Ok(()),
            None => return Err(HostError::NoForeignDriver),
        }
    } else {
        None
    };
    let r = host.commit(rule, &d, dev.as_ref(), foreign.as_ref(), actor);
    match r {
        Ok(_) => {}
        Err(HostError::NotLoaded(n))
            if rule == RuleId::UnmapForeign && !n.eq_ignore_ascii_case(&owned.name) => {}
        Err(e) => return Err(e),
    }
    if matches!(rule, RuleId::LeakOnRemove | RuleId::LeakOnUnload) {
        refresh(host, owned);
        for dev in owned.devices.clone() {
            if matches!(
                dev.state(),
                crate::PnpState::Added | crate::PnpState::Stopped
            ) {
                host.start_device(&dev, true)?;
            }
        }
    }
    Ok(())
}

fn well_behaved(host: &Host, owned: &mut Owned, actor: &mut Actor) -> Result<(), HostError> {
    let len = owned.devices.len() as u64;
    let Some(dev) = owned
        .devices
        .get(usize::try_from(actor.rng.below(len)).unwrap_or(0))
        .cloned()
    else {
        return Ok(());
    };
    let p = actor.rng.unit();
    use crate::PnpState;
    match dev.state() {
        PnpState::Started if p < 0.95 => host.device_io(&dev, actor),
        PnpState::Started if p < 0.985 => {
            host.stop_device(&dev)?;
            host.start_device(&dev, true).map(|_| ())
        }
        PnpState::Started => {
            if actor.rng.chance(0.5) {
                host.surprise_remove_device(&dev)?;
            }
            host.remove_device(&dev)?;
            let fresh = host.add_device(dev.name(), dev.driver_name(), dev.bars())?;
            host.start_device(&fresh, true)?;
            refresh(host, owned);
            Ok(())
        }
        PnpState::Added | PnpState::Stopped => host.start_device(&dev, true).map(|_| ()),
        _ => {
            refresh(host, owned);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An [`ImageDriver`] that records the calls it gets; a device stop is vetoed when
    /// its name starts with `veto`.
    #[derive(Default)]
    pub(super) struct Recorder {
        pub(super) calls: Vec<String>,
    }

    impl ImageDriver for Recorder {
        fn load(
            &mut self,
            driver: &str,
            path: &std::path::Path,
            registry: &[crate::regspec::RegistrySpec],
        ) -> Result<(), String> {
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
            let mut call = std::format!("load {driver} {}", file.unwrap_or_default());
            for r in registry {
                call.push_str(&std::format!(" {r}"));
            }
            self.calls.push(call);
            Ok(())
        }
        fn add_device(
            &mut self,
            driver: &str,
            device: &str,
            bars: &[crate::Bar],
        ) -> Result<(), String> {
            self.calls
                .push(std::format!("add {driver} {device} {} bars", bars.len()));
            Ok(())
        }
        fn start(&mut self, device: &str) -> Result<(), String> {
            self.calls.push(std::format!("start {device}"));
            Ok(())
        }
        fn stop(&mut self, device: &str) -> Result<bool, String> {
            self.calls.push(std::format!("stop {device}"));
            Ok(!device.starts_with("veto"))
        }
        fn surprise_remove(&mut self, device: &str) -> Result<(), String> {
            self.calls.push(std::format!("surprise {device}"));
            Ok(())
        }
        fn remove(&mut self, device: &str) -> Result<(), String> {
            self.calls.push(std::format!("remove {device}"));
            Ok(())
        }
        fn ioctl(
            &mut self,
            device: &str,
            code: u32,
            input: &[u8],
            count: u64,
        ) -> Result<i32, String> {
            self.calls
                .push(std::format!("ioctl {device} {code:#x} {input:?} x{count}"));
            Ok(0)
        }
        fn control_ioctl(
            &mut self,
            driver: &str,
            code: u32,
            input: &[u8],
            count: u64,
        ) -> Result<i32, String> {
            self.calls.push(std::format!(
                "control {driver} {code:#x} {input:?} x{count}"
            ));
            Ok(0)
        }
        fn unload(&mut self, driver: &str) -> Result<(), String> {
            self.calls.push(std::format!("unload {driver}"));
            Ok(())
        }
    }

    fn scenario(dir: &std::path::Path) -> Scenario {
        std::fs::write(dir.join("img.sys"), b"MZ").unwrap();
        let text = "\
[[driver]]
name = \"sim.sys\"
behaviour = \"leak-on-stop\"
[[driver]]
image = \"img.sys\"
expect = { IOSV007 = 3 }
ioctls = [{ code = 0x10, input = \"01\" }, { code = 0x20 }]
registry = [\"Parameters\\\\LeakOnStop=dword:1\", \"@hw\\\\Flavor=sz:fast\"]
[[device]]
name = \"s0\"
driver = \"sim.sys\"
[[device]]
name = \"d0\"
driver = \"img.sys\"
[[device]]
name = \"veto1\"
driver = \"img.sys\"
bars = [{ physical = 0x1000_0000, size = 0x1000 }]
[[step]]
op = \"load\"
driver = \"sim.sys\"
[[step]]
op = \"add-device\"
device = \"s0\"
[[step]]
op = \"start\"
device = \"s0\"
[[step]]
op = \"stop\"
device = \"s0\"
[[step]]
op = \"load\"
driver = \"img.sys\"
[[step]]
op = \"add-device\"
device = \"d0\"
[[step]]
op = \"add-device\"
device = \"veto1\"
[[step]]
op = \"start\"
device = \"d0\"
[[step]]
op = \"ioctl\"
device = \"d0\"
code = 0x30
count = 2
[[step]]
op = \"stress\"
threads = 1
ops = 50
image_ops = 9
image_restart_every = 4
[[step]]
op = \"ioctl\"
driver = \"img.sys\"
code = 0x40
input = \"ff\"
[[step]]
op = \"surprise-remove\"
device = \"d0\"
[[step]]
op = \"remove\"
device = \"d0\"
[[step]]
op = \"remove\"
device = \"veto1\"
[[step]]
op = \"unload\"
driver = \"img.sys\"
";
        Scenario::parse_in(text, "t.toml", dir).unwrap()
    }

    /// Image steps go to the backend in order; a stress phase starts the image driver's
    /// devices and sends them `image_ops` operations in a fixed order (IOCTLs in turn,
    /// every `image_restart_every`-th a stop and start, no start after a veto) beside the
    /// simulated driver's thread; `expect` joins the expected ledger.
    #[test]
    fn image_steps_reach_the_backend_in_a_predictable_order() {
        let dir = std::env::temp_dir().join(std::format!("iosv-run-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = scenario(&dir);
        let host = Host::try_new(iosv::config::StartParams::default()).unwrap();
        let refused = run(&host, &s, &mut |_| {}).unwrap_err().to_string();
        assert!(refused.contains("only `iosvctl lab` runs it"), "{refused}");
        // At the `image` key's value (line 5, column 9).
        assert!(refused.starts_with("t.toml:5:9: "), "{refused}");

        let host = Host::try_new(iosv::config::StartParams::default()).unwrap();
        let mut rec = Recorder::default();
        let summary = run_with_images(&host, &s, &mut rec, &mut |_| {}).unwrap();
        let expected_calls = [
            // With the driver's `registry` values, in order.
            "load img.sys img.sys Parameters\\LeakOnStop=dword:1 @hw\\Flavor=sz:fast",
            "add img.sys d0 2 bars",
            "add img.sys veto1 1 bars",
            "start d0",
            "ioctl d0 0x30 [] x2",
            // The stress phase: veto1 is started first, then 9 operations alternating
            // over d0 and veto1; the 4th and 8th are restarts.
            "start veto1",
            "ioctl d0 0x10 [1] x1",
            "ioctl veto1 0x20 [] x1",
            "ioctl d0 0x10 [1] x1",
            "stop veto1",
            "ioctl d0 0x20 [] x1",
            "ioctl veto1 0x10 [1] x1",
            "ioctl d0 0x20 [] x1",
            "stop veto1",
            "ioctl d0 0x10 [1] x1",
            "control img.sys 0x40 [255] x1",
            "surprise d0",
            "remove d0",
            "remove veto1",
            "unload img.sys",
        ];
        assert_eq!(rec.calls, expected_calls);
        assert_eq!(
            summary
                .expected
                .get(&(RuleId::LeakOnStop, "img.sys".into())),
            Some(&3)
        );
        assert!(summary.unaudited_drivers.is_empty());
        assert_eq!(summary.stress.len(), 1);
        assert!(summary.stress[0].drivers.contains(&String::from("img.sys")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod image_only_tests {
    use super::tests::Recorder;
    use super::*;

    /// A phase whose only driver is an image runs no OS thread; without `ioctls` its
    /// operations are CREATE/CLEANUP/CLOSE alone (an IOCTL count of 0). Without `expect`
    /// the image is listed as unaudited.
    #[test]
    fn a_phase_of_an_image_alone_runs_on_the_scenario_thread() {
        let dir = std::env::temp_dir().join(std::format!("iosv-run-img1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("one.sys"), b"MZ").unwrap();
        let text = "[[driver]]\nimage = \"one.sys\"\n[[device]]\nname = \"d\"\ndriver = \"one.sys\"\n\
            [[step]]\nop = \"load\"\ndriver = \"one.sys\"\n[[step]]\nop = \"add-device\"\ndevice = \"d\"\n\
            [[step]]\nop = \"stress\"\ndrivers = [\"one.sys\"]\nops = 1\nimage_ops = 3\n";
        let s = Scenario::parse_in(text, "t.toml", &dir).unwrap();
        let host = Host::try_new(iosv::config::StartParams::default()).unwrap();
        let mut rec = Recorder::default();
        let summary = run_with_images(&host, &s, &mut rec, &mut |_| {}).unwrap();
        assert_eq!(
            rec.calls,
            [
                "load one.sys one.sys",
                "add one.sys d 2 bars",
                "start d",
                "ioctl d 0x0 [] x0",
                "ioctl d 0x0 [] x0",
                "ioctl d 0x0 [] x0"
            ]
        );
        assert_eq!(summary.stress[0].threads, 0);
        assert_eq!(summary.stress[0].operations, 3);
        assert_eq!(summary.unaudited_drivers, ["one.sys"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Driver names are case-insensitive: an image unloaded as `ONE.SYS` is no longer
    /// one of a later phase's drivers.
    #[test]
    fn an_image_unloaded_under_another_case_is_unloaded() {
        let dir = std::env::temp_dir().join(std::format!("iosv-run-img2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("one.sys"), b"MZ").unwrap();
        let text = "[[driver]]\nimage = \"one.sys\"\n[[driver]]\nname = \"sim.sys\"\n\
            [[step]]\nop = \"load\"\ndriver = \"one.sys\"\n[[step]]\nop = \"load\"\ndriver = \"sim.sys\"\n\
            [[step]]\nop = \"unload\"\ndriver = \"ONE.SYS\"\n\
            [[step]]\nop = \"stress\"\nthreads = 1\nops = 10\n";
        let s = Scenario::parse_in(text, "t.toml", &dir).unwrap();
        let host = Host::try_new(iosv::config::StartParams::default()).unwrap();
        let mut rec = Recorder::default();
        let summary = run_with_images(&host, &s, &mut rec, &mut |_| {}).unwrap();
        assert_eq!(rec.calls, ["load one.sys one.sys", "unload ONE.SYS"]);
        assert_eq!(summary.stress[0].drivers, ["sim.sys"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
