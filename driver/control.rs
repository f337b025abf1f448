//! The control endpoint: IOCTL code and input bytes in, status and output bytes out.
//!
//! The Windows dispatch routine (METHOD_BUFFERED system buffer) and the host's socket
//! endpoint both call [`control`]; neither interprets a byte itself. Every input is
//! hostile: its length must equal the request struct exactly, its version must match, its
//! reserved fields must be zero and its values in range — each failure has its own
//! [`Status`] and changes nothing. An output buffer that cannot hold the reply gets
//! [`Status::OutputTooSmall`] with the size it needs.

#![forbid(unsafe_code)]

use crate::drivers::{DriverId, DriverState, MAX_DRIVERS};
use crate::platform::{Platform, PlatformError};
use crate::protocol::*;
use crate::rules::RULE_COUNT;
use crate::stats::Counter;
use crate::verifier::Verifier;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// What [`control`] returns: a status and how many output bytes are valid (for
/// [`Status::OutputTooSmall`]: how many are needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The status.
    pub status: Status,
    /// Bytes written to the output, or required (OutputTooSmall).
    pub information: usize,
}

impl Reply {
    fn ok(n: usize) -> Reply {
        Reply {
            status: Status::Success,
            information: n,
        }
    }
    fn err(status: Status) -> Reply {
        Reply {
            status,
            information: 0,
        }
    }
    fn too_small(required: usize) -> Reply {
        Reply {
            status: Status::OutputTooSmall,
            information: required,
        }
    }
}

/// Parses an exact-size request and checks its version.
fn request<T: FromBytes + KnownLayout + Immutable + Copy>(input: &[u8]) -> Result<T, Reply> {
    let size = core::mem::size_of::<T>();
    if input.len() < size {
        return Err(Reply::err(Status::InputTooShort));
    }
    if input.len() > size {
        return Err(Reply::err(Status::InputTooLong));
    }
    let t = T::read_from_bytes(input).map_err(|_| Reply::err(Status::InputTooShort))?;
    let version = input
        .get(..4)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_le_bytes);
    if version != Some(PROTOCOL_VERSION) {
        return Err(Reply::err(Status::RevisionMismatch));
    }
    Ok(t)
}

/// Writes `value` at `offset` of `out`; false if it does not fit.
fn put<T: IntoBytes + Immutable>(out: &mut [u8], offset: usize, value: &T) -> bool {
    let bytes = value.as_bytes();
    match offset
        .checked_add(bytes.len())
        .and_then(|end| out.get_mut(offset..end))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// How many items of `item` bytes fit after a `header`-byte header, at most `max`; or the
/// OutputTooSmall reply when the output cannot hold the header and (if `max` > 0) one item.
fn room(out_len: usize, header: usize, item: usize, max: usize) -> Result<usize, Reply> {
    let required = header.saturating_add(if max > 0 { item } else { 0 });
    if out_len < required {
        return Err(Reply::too_small(required));
    }
    let fit = out_len
        .saturating_sub(header)
        .checked_div(item)
        .unwrap_or(0);
    Ok(fit.min(max))
}

/// Serves one control request.
pub fn control<P: Platform>(v: &Verifier<P>, code: u32, input: &[u8], output: &mut [u8]) -> Reply {
    let r = match code {
        IOCTL_HELLO => hello(v, input, output),
        IOCTL_GET_STATS => get_stats(v, input, output),
        IOCTL_READ_VIOLATIONS => read_violations(v, input, output),
        IOCTL_LIST_MAPPINGS => list_mappings(v, input, output),
        IOCTL_GET_CONFIG => get_config(v, input, output),
        IOCTL_SET_CONFIG => set_config(v, input),
        IOCTL_CLEAR => clear(v, input),
        IOCTL_ATTACH => attach(v, input, output, true),
        IOCTL_DETACH => attach(v, input, output, false),
        IOCTL_GET_IMAGE_DEBUG => image_debug(v, input, output),
        _ => Err(Reply::err(Status::UnknownCode)),
    };
    r.unwrap_or_else(|e| e)
}

fn reply_fixed<T: IntoBytes + Immutable>(out: &mut [u8], value: &T) -> Result<Reply, Reply> {
    let n = core::mem::size_of::<T>();
    if put(out, 0, value) {
        Ok(Reply::ok(n))
    } else {
        Err(Reply::too_small(n))
    }
}

fn hello<P: Platform>(v: &Verifier<P>, input: &[u8], out: &mut [u8]) -> Result<Reply, Reply> {
    let req: HelloRequest = request(input)?;
    if req.reserved != 0 {
        return Err(Reply::err(Status::ReservedNotZero));
    }
    let p = v.params();
    let mut caps = CAP_MAP_EX | CAP_CONTAINMENT | CAP_ATTACH | CAP_IMAGE_DEBUG;
    if p.max_stack_depth > 0 {
        caps |= CAP_STACKS;
    }
    if P::SIMULATED {
        caps |= CAP_HOST;
    }
    let reply = HelloReply {
        version: PROTOCOL_VERSION,
        capabilities: caps,
        component_version: {
            let mut b = [0u8; 16];
            for (d, s) in b.iter_mut().zip(env!("CARGO_PKG_VERSION").bytes()) {
                *d = s;
            }
            b
        },
        table_capacity: u32::try_from(p.capacity).unwrap_or(u32::MAX),
        journal_capacity: u32::try_from(p.journal_records).unwrap_or(u32::MAX),
        max_stack_depth: u32::try_from(p.max_stack_depth).unwrap_or(0),
        max_drivers: MAX_DRIVERS as u32,
        processor_count: v.platform().processor_count(),
        violation_record_size: core::mem::size_of::<ViolationRecord>() as u32,
        mapping_record_size: core::mem::size_of::<MappingRecord>() as u32,
        driver_stats_size: core::mem::size_of::<DriverStats>() as u32,
    };
    reply_fixed(out, &reply)
}

fn get_stats<P: Platform>(v: &Verifier<P>, input: &[u8], out: &mut [u8]) -> Result<Reply, Reply> {
    let req: StatsRequest = request(input)?;
    let header = core::mem::size_of::<StatsReply>();
    let item = core::mem::size_of::<DriverStats>();
    let fit = room(out.len(), header, item, req.max_drivers as usize)?;
    // Let the platform notice drivers that went away before it reports on them.
    v.platform().refresh();

    // Live mappings and bytes per driver: one walk of the table.
    let mut live = [[0u64; 2]; MAX_DRIVERS + 1];
    let mut walk_from = 0usize;
    loop {
        let end = v.table().walk(walk_from, usize::MAX, |m| {
            if let Some(row) = live.get_mut(usize::from(m.driver)) {
                row[0] = row[0].saturating_add(1);
                row[1] = row[1].saturating_add(m.size);
            }
            true
        });
        if end.done {
            break;
        }
        walk_from = end.next;
    }
    let totals = v.stats().totals();
    let mut c = Counters {
        maps: totals.get(Counter::Maps),
        map_failures: totals.get(Counter::MapFailures),
        unmaps: totals.get(Counter::Unmaps),
        contained: totals.get(Counter::Contained),
        ignored: totals.get(Counter::Ignored),
        reported: totals.get(Counter::Reported),
        breaks: totals.get(Counter::Breaks),
        bugchecks: totals.get(Counter::Bugchecks),
        live: live.iter().map(|r| r[0]).sum(),
        table_full: totals.get(Counter::TableFull),
        untracked_live: v.untracked().live(),
        unverified_unmaps: totals.get(Counter::UnverifiedUnmaps),
        journal_written: v.journal().tail(),
        per_rule: [0; RULE_SLOTS],
    };
    for (d, s) in c
        .per_rule
        .iter_mut()
        .zip(totals.per_rule.iter())
        .take(RULE_COUNT)
    {
        *d = *s;
    }
    let drivers: alloc::vec::Vec<_> = v.drivers().all().collect();
    let mut written = 0usize;
    for (i, d) in drivers.iter().take(fit).enumerate() {
        let id = usize::from(d.id.0);
        let row = live.get(id).copied().unwrap_or([0, 0]);
        let counts = totals.per_driver.get(id).copied().unwrap_or([0; 3]);
        let s = DriverStats {
            driver_id: u32::from(d.id.0),
            state: match d.state {
                DriverState::Attached => DRIVER_ATTACHED,
                DriverState::Loaded => DRIVER_LOADED,
                DriverState::Gone | DriverState::Free => DRIVER_GONE,
            },
            name: d.name,
            image_base: d.image_base,
            image_size: d.image_size,
            loads: d.loads,
            maps: counts[0],
            unmaps: counts[1],
            violations: counts[2],
            live: row[0],
            live_bytes: row[1],
            hook_refusal: d.hook_refusal,
            reserved: 0,
        };
        let at = header.saturating_add(i.saturating_mul(item));
        if !put(out, at, &s) {
            break;
        }
        written = written.saturating_add(1);
    }
    let reply = StatsReply {
        version: PROTOCOL_VERSION,
        total_drivers: u32::try_from(drivers.len()).unwrap_or(u32::MAX),
        returned: u32::try_from(written).unwrap_or(0),
        flags: v.state_flags(),
        now_ns: v.platform().now_ns(),
        counters: c,
    };
    put(out, 0, &reply);
    Ok(Reply::ok(
        header.saturating_add(written.saturating_mul(item)),
    ))
}

fn image_debug<P: Platform>(v: &Verifier<P>, input: &[u8], out: &mut [u8]) -> Result<Reply, Reply> {
    let req: ImageDebugRequest = request(input)?;
    let header = core::mem::size_of::<ImageDebugReply>();
    let item = core::mem::size_of::<ImageDebugRecord>();
    let fit = room(out.len(), header, item, req.max_records as usize)?;
    let drivers = v.drivers();
    let mut written = 0usize;
    for d in drivers.all() {
        if written >= fit {
            break;
        }
        let rec = drivers.debug(d.id).unwrap_or(ImageDebugRecord {
            driver_id: u32::from(d.id.0),
            image_base: d.image_base,
            ..ImageDebugRecord::default()
        });
        let at = header.saturating_add(written.saturating_mul(item));
        if !put(out, at, &rec) {
            break;
        }
        written = written.saturating_add(1);
    }
    let reply = ImageDebugReply {
        version: PROTOCOL_VERSION,
        count: u32::try_from(written).unwrap_or(0),
    };
    put(out, 0, &reply);
    Ok(Reply::ok(
        header.saturating_add(written.saturating_mul(item)),
    ))
}

fn read_violations<P: Platform>(
    v: &Verifier<P>,
    input: &[u8],
    out: &mut [u8],
) -> Result<Reply, Reply> {
    let req: ReadViolationsRequest = request(input)?;
    // A cursor past the tail was never handed out by this journal (another endpoint's,
    // or one from before a restart): reading from it would skip every record up to it.
    if req.cursor > v.journal().tail() {
        return Err(Reply::err(Status::InvalidField));
    }
    let header = core::mem::size_of::<ReadViolationsReply>();
    let item = core::mem::size_of::<ViolationRecord>();
    let fit = room(out.len(), header, item, req.max_records as usize)?;
    let mut n = 0usize;
    let end = v.journal().read_records(req.cursor, fit, |r| {
        let at = header.saturating_add(n.saturating_mul(item));
        if put(out, at, r) {
            n = n.saturating_add(1);
        }
    });
    let reply = ReadViolationsReply {
        version: PROTOCOL_VERSION,
        count: u32::try_from(n).unwrap_or(0),
        next_cursor: end.next,
        lost: end.lost,
        discarded: end.discarded,
        tail: end.tail,
    };
    put(out, 0, &reply);
    Ok(Reply::ok(header.saturating_add(n.saturating_mul(item))))
}

fn list_mappings<P: Platform>(
    v: &Verifier<P>,
    input: &[u8],
    out: &mut [u8],
) -> Result<Reply, Reply> {
    let req: ListMappingsRequest = request(input)?;
    if req.filter & !LF_ALL != 0 {
        return Err(Reply::err(Status::ReservedNotZero));
    }
    if req.filter & LF_DRIVER == 0 && req.driver_id != 0
        || req.filter & LF_DEVICE == 0 && req.device != 0
        || req.filter & LF_MIN_AGE == 0 && req.min_age_ns != 0
    {
        return Err(Reply::err(Status::ReservedNotZero));
    }
    let header = core::mem::size_of::<ListMappingsReply>();
    let item = core::mem::size_of::<MappingRecord>();
    let fit = room(out.len(), header, item, req.max_records as usize)?;
    let start = usize::try_from(req.cursor).map_err(|_| Reply::err(Status::InvalidField))?;
    if start > v.table().slot_count() {
        return Err(Reply::err(Status::InvalidField));
    }
    let now = v.platform().now_ns();
    let mut n = 0usize;
    let end = if fit == 0 {
        crate::table::WalkEnd {
            next: start,
            done: start >= v.table().slot_count(),
            skipped: 0,
        }
    } else {
        v.table().walk(start, usize::MAX, |m| {
            let wanted = (req.filter & LF_DRIVER == 0 || u32::from(m.driver) == req.driver_id)
                && (req.filter & LF_DEVICE == 0 || m.device == req.device)
                && (req.filter & LF_MIN_AGE == 0
                    || now.saturating_sub(m.map_time_ns) >= req.min_age_ns);
            if !wanted {
                return true;
            }
            let mut rec = MappingRecord {
                base: m.base,
                size: m.size,
                physical: m.physical,
                device: m.device,
                map_time_ns: m.map_time_ns,
                cache: m.cache,
                driver_id: m.driver,
                processor: m.processor,
                irql: m.irql,
                flags: m.flags,
                stack_depth: m.stack_depth,
                driver_name: v.drivers().name(DriverId(m.driver)),
                ..Default::default()
            };
            for (d, s) in rec.stack.iter_mut().zip(m.frames()) {
                *d = *s;
            }
            let at = header.saturating_add(n.saturating_mul(item));
            if put(out, at, &rec) {
                n = n.saturating_add(1);
            }
            n < fit
        })
    };
    let reply = ListMappingsReply {
        version: PROTOCOL_VERSION,
        count: u32::try_from(n).unwrap_or(0),
        next_cursor: end.next as u64,
        done: u32::from(end.done),
        skipped: end.skipped,
        now_ns: now,
    };
    put(out, 0, &reply);
    Ok(Reply::ok(header.saturating_add(n.saturating_mul(item))))
}

fn get_config<P: Platform>(v: &Verifier<P>, input: &[u8], out: &mut [u8]) -> Result<Reply, Reply> {
    let req: GetConfigRequest = request(input)?;
    if req.reserved != 0 {
        return Err(Reply::err(Status::ReservedNotZero));
    }
    let block = v.with_control(|c| v.settings().to_block(&c.targets));
    reply_fixed(out, &block)
}

fn set_config<P: Platform>(v: &Verifier<P>, input: &[u8]) -> Result<Reply, Reply> {
    let block: ConfigBlock = request(input)?;
    let targets = v.settings().validate(&block).map_err(|e| {
        Reply::err(match e {
            crate::config::ConfigError::ReservedBits => Status::ReservedNotZero,
            crate::config::ConfigError::StackDepth
            | crate::config::ConfigError::Action
            | crate::config::ConfigError::Targets => Status::InvalidField,
        })
    })?;
    v.with_control(|c| {
        c.targets = targets;
        v.settings().apply(&block);
    });
    Ok(Reply::ok(0))
}

fn clear<P: Platform>(v: &Verifier<P>, input: &[u8]) -> Result<Reply, Reply> {
    let req: ClearRequest = request(input)?;
    if req.what & !CLR_ALL != 0 {
        return Err(Reply::err(Status::ReservedNotZero));
    }
    if req.what == 0 {
        return Err(Reply::err(Status::InvalidField));
    }
    if req.what & CLR_JOURNAL != 0 {
        v.journal().discard_all();
    }
    if req.what & CLR_STATS != 0 {
        v.stats().reset();
    }
    if req.what & CLR_GRAVEYARD != 0 {
        v.graveyard().clear();
    }
    Ok(Reply::ok(0))
}

fn attach<P: Platform>(
    v: &Verifier<P>,
    input: &[u8],
    out: &mut [u8],
    attach: bool,
) -> Result<Reply, Reply> {
    let req: DriverNameRequest = request(input)?;
    if req.reserved != 0 {
        return Err(Reply::err(Status::ReservedNotZero));
    }
    let name = name_bytes(&req.name);
    let tail_clean = req
        .name
        .get(name.len()..)
        .is_some_and(|t| t.iter().all(|c| *c == 0));
    if name.is_empty() || !tail_clean || !name.iter().all(|c| c.is_ascii_graphic()) {
        return Err(Reply::err(Status::InvalidField));
    }
    let size = core::mem::size_of::<AttachReply>();
    if out.len() < size {
        return Err(Reply::too_small(size));
    }
    let result = if attach {
        v.platform().attach_driver(name)
    } else {
        v.platform().detach_driver(name)
    };
    match result {
        Ok(slots) => reply_fixed(
            out,
            &AttachReply {
                version: PROTOCOL_VERSION,
                slots,
            },
        ),
        Err(e) => Err(Reply::err(match e {
            PlatformError::NotFound => Status::NotFound,
            PlatformError::Unsupported => Status::NotSupported,
            PlatformError::SlotChanged => Status::SlotChanged,
            PlatformError::BadImage => Status::BadImage,
            PlatformError::NoResources => Status::NoResources,
            PlatformError::Refused(_) => Status::HookRefused,
        })),
    }
}

#[cfg(test)]
mod tests;
