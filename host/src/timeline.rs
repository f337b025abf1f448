//! The time series of a run: after each scenario step, every driver's live mappings and
//! the bytes they span, read through GET_STATS like any client, stamped with the
//! endpoint's clock (the clock of the violation records' `timestamp_ns`). The HTML report
//! plots it per driver with the violations marked.

use iosv::protocol::{
    name_bytes, DriverStats, StatsReply, StatsRequest, IOCTL_GET_STATS, PROTOCOL_VERSION,
};
use std::string::String;
use std::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

use crate::Host;

/// Most samples one run keeps; past it every other sample is dropped and the interval
/// doubles, so a long scenario keeps its whole span at a coarser grain.
pub const MAX_SAMPLES: usize = 4096;

/// One driver at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSample {
    /// The image name.
    pub name: String,
    /// Live mappings.
    pub live: u64,
    /// Bytes they span.
    pub live_bytes: u64,
}

/// Every driver at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Endpoint time (ns).
    pub t_ns: u64,
    /// The step just run (`None`: before the first).
    pub step: Option<u64>,
    /// The drivers iosv knows, in driver id order.
    pub drivers: Vec<DriverSample>,
}

/// Samples kept with a bounded count (see [`MAX_SAMPLES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    /// The samples, oldest first.
    pub samples: Vec<Sample>,
    stride: u64,
    seen: u64,
}

impl Timeline {
    /// Takes a sample of `host` after `step` (every `stride`-th call once the timeline
    /// has been thinned).
    pub fn sample(&mut self, host: &Host, step: Option<u64>) {
        let stride = self.stride.max(1);
        let take = self.seen.is_multiple_of(stride);
        self.seen = self.seen.saturating_add(1);
        if !take {
            return;
        }
        if let Some(s) = host.sample(step) {
            self.samples.push(s);
        }
        if self.samples.len() >= MAX_SAMPLES {
            let mut i = 0usize;
            self.samples.retain(|_| {
                i = i.wrapping_add(1);
                !i.is_multiple_of(2)
            });
            self.stride = stride.saturating_mul(2);
        }
    }
}

impl Host {
    /// Every driver's live mappings and bytes now (GET_STATS); `None` if the endpoint
    /// refuses the request.
    pub fn sample(&self, step: Option<u64>) -> Option<Sample> {
        let max = iosv::drivers::MAX_DRIVERS;
        let req = StatsRequest {
            version: PROTOCOL_VERSION,
            max_drivers: u32::try_from(max).unwrap_or(u32::MAX),
        };
        let header = core::mem::size_of::<StatsReply>();
        let item = core::mem::size_of::<DriverStats>();
        let mut out = std::vec![0u8; header.saturating_add(max.saturating_mul(item))];
        let r = self.control(IOCTL_GET_STATS, req.as_bytes(), &mut out);
        if r.status != iosv::protocol::Status::Success {
            return None;
        }
        let (reply, rest) = StatsReply::read_from_prefix(&out).ok()?;
        let drivers = rest
            .chunks_exact(item)
            .take(usize::try_from(reply.returned).unwrap_or(0))
            .filter_map(|c| DriverStats::read_from_bytes(c).ok())
            .map(|d| DriverSample {
                name: String::from_utf8_lossy(name_bytes(&d.name)).into_owned(),
                live: d.live,
                live_bytes: d.live_bytes,
            })
            .collect();
        Some(Sample {
            t_ns: reply.now_ns,
            step,
            drivers,
        })
    }
}
