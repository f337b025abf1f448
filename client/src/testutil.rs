//! Test doubles: iosv's [`FakePlatform`] under a real engine behind a [`EngineTransport`] (real
//! replies from `iosv::control`), and a [`Scripted`] transport that answers what it is told.

use crate::transport::{CallResult, RawReply, Transport, TransportError};
use iosv::platform::fake::{FakeConfig, FakePlatform};
use iosv::verifier::{DeviceEvent, Verifier};
use iosv::{Caller, StartParams};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Image base of the first fake driver (`nic.sys`); the second (`gpu.sys`) follows.
pub const NIC_BASE: u64 = 0xfffff800_10000000;
/// Image base of `gpu.sys`.
pub const GPU_BASE: u64 = 0xfffff800_20000000;
/// Image size of both.
pub const IMAGE_SIZE: u64 = 0x10000;

/// The client tests' [`FakePlatform`]: thread 0x100, a clock in 1 ms steps from 0, Mm
/// addresses 64 KiB apart from `0xffff9a00_00000000`, stacks topped by
/// [`FakePlatform::frame`], `nic.sys` attachable and detachable.
fn platform() -> FakePlatform {
    FakePlatform::with(FakeConfig {
        thread: 0x100,
        clock_start: 0,
        clock_step: 1_000_000,
        va_base: 0xffff9a00_00000000,
        va_step: 0x10000,
        stack: Some((0xfffff801_00000000, 0x40)),
        attachable: b"nic.sys",
        detach: true,
        ..FakeConfig::default()
    })
}

/// An engine with `nic.sys` and `gpu.sys` attached.
pub struct Engine {
    /// The engine.
    pub v: Verifier<FakePlatform>,
}

impl Engine {
    /// A fresh engine.
    pub fn new() -> Arc<Engine> {
        let params = StartParams {
            capacity: 1024,
            journal_records: 64,
            ..Default::default()
        };
        let v = Verifier::new(platform(), params).expect("engine");
        // Both are targets hooked as they load, so every mapping they make is seen.
        v.with_control(|c| c.targets.add(b"nic.sys") && c.targets.add(b"gpu.sys"));
        v.image_loaded(b"nic.sys", NIC_BASE, IMAGE_SIZE)
            .expect("nic");
        v.image_loaded(b"gpu.sys", GPU_BASE, IMAGE_SIZE)
            .expect("gpu");
        Arc::new(Engine { v })
    }

    fn caller(base: u64) -> Caller {
        Caller::at(base + 0x1a2b)
    }

    /// nic.sys maps `size` bytes of `physical` non-cached (returns the base).
    pub fn nic_map(&self, physical: u64, size: usize) -> u64 {
        self.map(false, physical, size, 0)
    }

    /// nic.sys (or gpu.sys with `gpu`) maps with a cache type (returns the base).
    pub fn map(&self, gpu: bool, physical: u64, size: usize, cache: u32) -> u64 {
        let b = if gpu { GPU_BASE } else { NIC_BASE };
        self.v.platform().frame.store(b + 0x1a2b, Ordering::SeqCst);
        self.v.map_io_space(Self::caller(b), physical, size, cache)
    }

    /// `nic.sys` (or gpu.sys with `gpu`) unmaps.
    pub fn unmap(&self, gpu: bool, base: u64, size: usize) {
        let b = if gpu { GPU_BASE } else { NIC_BASE };
        self.v.platform().frame.store(b + 0x2000, Ordering::SeqCst);
        self.v.unmap_io_space(Self::caller(b), base, size);
    }

    /// Runs a start-device of `device` by nic.sys that maps `size` bytes.
    pub fn nic_start(&self, device: u64, physical: u64, size: usize) -> u64 {
        let id = self.v.drivers().find(b"nic.sys").expect("nic id");
        self.v.device_event(id, device, DeviceEvent::StartBegin);
        let base = self.nic_map(physical, size);
        self.v.device_event(id, device, DeviceEvent::StartEnd);
        base
    }

    /// STOP_DEVICE of `device`.
    pub fn nic_stop(&self, device: u64) {
        let id = self.v.drivers().find(b"nic.sys").expect("nic id");
        self.v.device_event(id, device, DeviceEvent::Stopped);
    }

    /// Sets the IRQL of the next calls.
    pub fn set_irql(&self, irql: u8) {
        self.v.platform().irql.store(irql, Ordering::SeqCst);
    }
}

/// A transport that serves requests from an [`Engine`] through `iosv::control`.
#[derive(Clone)]
pub struct EngineTransport(pub Arc<Engine>);

impl Transport for EngineTransport {
    fn call(&mut self, code: u32, input: &[u8], output_capacity: usize) -> CallResult {
        let mut out = vec![0u8; output_capacity];
        let r = iosv::control::control(&self.0.v, code, input, &mut out);
        Ok(RawReply::from_control(r, out))
    }
    fn describe(&self) -> String {
        "fake engine".to_string()
    }
}

/// A transport that answers from a script, recording the requests it got.
#[derive(Default)]
pub struct Scripted {
    /// Replies, in order.
    pub replies: VecDeque<Result<RawReply, TransportError>>,
    /// (code, input length, capacity) of each request.
    pub calls: Vec<(u32, usize, usize)>,
}

impl Transport for Scripted {
    fn call(&mut self, code: u32, input: &[u8], output_capacity: usize) -> CallResult {
        self.calls.push((code, input.len(), output_capacity));
        self.replies
            .pop_front()
            .unwrap_or_else(|| Err(TransportError::Unsupported("script ended".into())))
    }
    fn describe(&self) -> String {
        "script".to_string()
    }
}

/// Runs `iosvctl ARGS` against `e`: the command's result and what it wrote to stdout.
pub fn run_on(e: &Arc<Engine>, args: &[&str]) -> (crate::error::AppResult, String) {
    use clap::Parser;
    let mut argv = vec!["iosvctl"];
    argv.extend_from_slice(args);
    let cli = crate::cli::Cli::try_parse_from(argv).expect("args");
    let mut c = crate::client::Client::connect(EngineTransport(e.clone())).expect("connect");
    let mut out = Vec::new();
    let r = crate::app::run_with(&cli, &mut c, &mut out);
    (r, String::from_utf8(out).expect("utf-8"))
}

/// [`run_on`] with the arguments of a command line (split at white space).
pub fn run_line(e: &Arc<Engine>, line: &str) -> (crate::error::AppResult, String) {
    run_on(e, &line.split_whitespace().collect::<Vec<_>>())
}

/// Two live mappings: nic.sys started device 0xffffc000_00001000 and mapped 0x2000 bytes
/// for it; gpu.sys mapped 0x1000 bytes cached.
pub fn two_mappings() -> Arc<Engine> {
    let e = Engine::new();
    e.nic_start(0xffffc000_00001000, 0xfe00_0000, 0x2000);
    e.map(true, 0xfd00_0000, 0x1000, 1);
    e
}

/// IOSV001 and IOSV004 by nic.sys, IOSV010 (a warning) by gpu.sys, IOSV002 at DIRQL 5.
pub fn buggy() -> Arc<Engine> {
    let e = Engine::new();
    let b = e.nic_map(0xfe00_0000, 0x1000);
    e.unmap(false, b, 0x800);
    e.unmap(false, 0xdead_0000, 0x1000);
    e.nic_map(0xfc00_0000, 0x1000);
    e.map(true, 0xfc00_0000, 0x1000, 1);
    let b = e.nic_map(0xfb00_0000, 0x1000);
    e.set_irql(5);
    e.unmap(false, b, 0x1000);
    e.set_irql(0);
    e
}

/// Each line of `s` as JSON.
pub fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}
