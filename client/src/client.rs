//! The typed API over a [`Transport`]: one method per IOCTL, wire structs in and out.
//!
//! Every reply is checked before it is believed: its status, its length against the
//! header's counts, its version. [`Status::OutputTooSmall`] is answered by growing the
//! output buffer to the size the endpoint asked for (or doubling it where the transport
//! cannot tell) and asking again. [`Client::connect`] says HELLO first and refuses an
//! endpoint whose protocol version or record sizes differ from this build's.

use crate::transport::{RawReply, Transport, TransportError};
use iosv::protocol::*;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Records asked for per READ_VIOLATIONS call.
pub const VIOLATIONS_PER_CALL: u32 = 256;
/// Records asked for per LIST_MAPPINGS call.
pub const MAPPINGS_PER_CALL: u32 = 512;
/// The largest output buffer the client grows to.
pub const MAX_OUTPUT: usize = iosv::frame::MAX_OUTPUT as usize;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request or its reply did not make it.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The endpoint refused the request.
    #[error("{op} failed: {} (NTSTATUS 0x{:08X})", .status.describe(), *.status as u32)]
    Status {
        /// The request (`"GET_STATS"`).
        op: &'static str,
        /// The status.
        status: Status,
    },
    /// The endpoint answered with an NTSTATUS iosv does not define.
    #[error("{op} failed with unknown NTSTATUS 0x{raw:08X}")]
    UnknownStatus {
        /// The request.
        op: &'static str,
        /// The raw value.
        raw: u32,
    },
    /// The reply is inconsistent.
    #[error("malformed {op} reply: {reason}")]
    Protocol {
        /// The request.
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// READ_VIOLATIONS from a cursor the endpoint's journal has not reached.
    #[error("cursor {cursor} is past the end of the endpoint's journal: it comes from another endpoint or from before a restart (start again with --since 0)")]
    CursorPastEnd {
        /// The cursor.
        cursor: u64,
    },
    /// The endpoint speaks another protocol version.
    #[error("protocol version mismatch: the endpoint speaks version {endpoint}, this iosvctl speaks {client}; use matching builds")]
    Version {
        /// The endpoint's version (0 if it would not say).
        endpoint: u32,
        /// This build's.
        client: u32,
    },
    /// A wire struct has another size on the endpoint.
    #[error("{what} is {endpoint} bytes on the endpoint but {client} in this iosvctl; use matching builds")]
    StructSize {
        /// The struct.
        what: &'static str,
        /// Its size on the endpoint.
        endpoint: u32,
        /// Its size here.
        client: u32,
    },
    /// The caller passed something the protocol cannot carry.
    #[error("{0}")]
    Invalid(String),
}

/// Result of the client's requests.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// GET_STATS: global counters and per-driver statistics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Header with the counters.
    pub header: StatsReply,
    /// One entry per driver slot in use.
    pub drivers: Vec<DriverStats>,
}

/// One READ_VIOLATIONS reply.
#[derive(Debug, Clone, Default)]
pub struct ViolationBatch {
    /// The records, oldest first.
    pub records: Vec<ViolationRecord>,
    /// Cursor for the next read.
    pub next_cursor: u64,
    /// Records between the cursor asked for and `next_cursor` lost to overflow.
    pub lost: u64,
    /// Records in that range discarded by CLEAR.
    pub discarded: u64,
    /// Sequence number of the next record to be written.
    pub tail: u64,
}

/// Which live mappings LIST_MAPPINGS returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MappingFilter {
    /// Only this driver's (id from GET_STATS).
    pub driver_id: Option<u32>,
    /// Only mappings attributed to this device object.
    pub device: Option<u64>,
    /// Only mappings at least this old (ns).
    pub min_age_ns: Option<u64>,
}

/// The whole live-mapping table as LIST_MAPPINGS walked it.
#[derive(Debug, Clone, Default)]
pub struct MappingList {
    /// The mappings.
    pub records: Vec<MappingRecord>,
    /// Endpoint time of the (last) walk, for ages.
    pub now_ns: u64,
    /// Entries that changed under the walk too often to be read.
    pub skipped: u64,
}

/// A connection to an iosv endpoint.
pub struct Client<T: Transport> {
    transport: T,
    hello: HelloReply,
}

fn read<T: FromBytes + KnownLayout + Immutable + Copy>(
    op: &'static str,
    bytes: &[u8],
) -> Result<T> {
    T::read_from_prefix(bytes)
        .map(|(t, _)| t)
        .map_err(|_| ClientError::Protocol {
            op,
            reason: format!(
                "{} bytes, at least {} expected",
                bytes.len(),
                core::mem::size_of::<T>()
            ),
        })
}

/// `count` fixed-size items after a `T`-sized header.
fn items<I: FromBytes + KnownLayout + Immutable + Copy>(
    op: &'static str,
    bytes: &[u8],
    header: usize,
    count: u32,
) -> Result<Vec<I>> {
    let item = core::mem::size_of::<I>();
    let need = (count as usize)
        .checked_mul(item)
        .and_then(|n| n.checked_add(header));
    let body = match need {
        Some(end) if end <= bytes.len() => bytes.get(header..end).unwrap_or(&[]),
        _ => {
            return Err(ClientError::Protocol {
                op,
                reason: format!(
                    "header claims {count} items of {item} bytes but the reply has {} bytes",
                    bytes.len()
                ),
            })
        }
    };
    Ok(body
        .chunks_exact(item)
        .filter_map(|c| I::read_from_bytes(c).ok())
        .collect())
}

fn version_check(op: &'static str, version: u32) -> Result<()> {
    if version != PROTOCOL_VERSION {
        return Err(ClientError::Protocol {
            op,
            reason: format!("reply version {version}, expected {PROTOCOL_VERSION}"),
        });
    }
    Ok(())
}

fn wire_name_checked(name: &str) -> Result<[u8; NAME_LEN]> {
    if name.is_empty() || name.len() > NAME_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::Invalid(format!(
            "driver name {name:?} must be 1..={NAME_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(wire_name(name.as_bytes()))
}

impl<T: Transport> Client<T> {
    /// Says HELLO and checks that the endpoint speaks this build's protocol.
    pub fn connect(mut transport: T) -> Result<Client<T>> {
        let hello = Self::hello_on(&mut transport)?;
        Ok(Client { transport, hello })
    }

    fn hello_on(t: &mut T) -> Result<HelloReply> {
        let req = HelloRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
        };
        let out = match call(
            t,
            "HELLO",
            IOCTL_HELLO,
            req.as_bytes(),
            core::mem::size_of::<HelloReply>(),
        ) {
            Err(ClientError::Status {
                status: Status::RevisionMismatch,
                ..
            }) => {
                return Err(ClientError::Version {
                    endpoint: 0,
                    client: PROTOCOL_VERSION,
                })
            }
            r => r?,
        };
        let h: HelloReply = read("HELLO", &out)?;
        if h.version != PROTOCOL_VERSION {
            return Err(ClientError::Version {
                endpoint: h.version,
                client: PROTOCOL_VERSION,
            });
        }
        for (what, endpoint, client) in [
            (
                "ViolationRecord",
                h.violation_record_size,
                core::mem::size_of::<ViolationRecord>(),
            ),
            (
                "MappingRecord",
                h.mapping_record_size,
                core::mem::size_of::<MappingRecord>(),
            ),
            (
                "DriverStats",
                h.driver_stats_size,
                core::mem::size_of::<DriverStats>(),
            ),
        ] {
            if endpoint as usize != client {
                return Err(ClientError::StructSize {
                    what,
                    endpoint,
                    client: client as u32,
                });
            }
        }
        Ok(h)
    }

    /// The endpoint's HELLO reply (from connect time).
    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// The endpoint, as people name it.
    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// GET_STATS: counters and every driver's statistics.
    pub fn stats(&mut self) -> Result<Stats> {
        let max = self.hello.max_drivers.max(1);
        let req = StatsRequest {
            version: PROTOCOL_VERSION,
            max_drivers: max,
        };
        let cap =
            core::mem::size_of::<StatsReply>() + max as usize * core::mem::size_of::<DriverStats>();
        let out = call(
            &mut self.transport,
            "GET_STATS",
            IOCTL_GET_STATS,
            req.as_bytes(),
            cap,
        )?;
        let header: StatsReply = read("GET_STATS", &out)?;
        version_check("GET_STATS", header.version)?;
        let drivers = items(
            "GET_STATS",
            &out,
            core::mem::size_of::<StatsReply>(),
            header.returned,
        )?;
        Ok(Stats { header, drivers })
    }

    /// GET_IMAGE_DEBUG: every registered image's PDB identity (CodeView GUID, age, PDB
    /// name). Empty when the endpoint does not announce [`CAP_IMAGE_DEBUG`] (an older
    /// `iosv.sys`): stacks then stay `module+offset`.
    pub fn image_debug(&mut self) -> Result<Vec<ImageDebugRecord>> {
        if self.hello.capabilities & CAP_IMAGE_DEBUG == 0 {
            return Ok(Vec::new());
        }
        let max = self.hello.max_drivers.max(1);
        let req = ImageDebugRequest {
            version: PROTOCOL_VERSION,
            max_records: max,
        };
        let cap = core::mem::size_of::<ImageDebugReply>()
            + max as usize * core::mem::size_of::<ImageDebugRecord>();
        let out = call(
            &mut self.transport,
            "GET_IMAGE_DEBUG",
            IOCTL_GET_IMAGE_DEBUG,
            req.as_bytes(),
            cap,
        )?;
        let header: ImageDebugReply = read("GET_IMAGE_DEBUG", &out)?;
        version_check("GET_IMAGE_DEBUG", header.version)?;
        items(
            "GET_IMAGE_DEBUG",
            &out,
            core::mem::size_of::<ImageDebugReply>(),
            header.count,
        )
    }

    /// READ_VIOLATIONS: up to `max` records from `cursor` (0 = the oldest held).
    pub fn read_violations(&mut self, cursor: u64, max: u32) -> Result<ViolationBatch> {
        let max = max.clamp(1, VIOLATIONS_PER_CALL);
        let req = ReadViolationsRequest {
            version: PROTOCOL_VERSION,
            max_records: max,
            cursor,
        };
        let cap = core::mem::size_of::<ReadViolationsReply>()
            + max as usize * core::mem::size_of::<ViolationRecord>();
        let out = call(
            &mut self.transport,
            "READ_VIOLATIONS",
            IOCTL_READ_VIOLATIONS,
            req.as_bytes(),
            cap,
        )
        .map_err(|e| match e {
            ClientError::Status {
                status: Status::InvalidField,
                ..
            } => ClientError::CursorPastEnd { cursor },
            e => e,
        })?;
        let header: ReadViolationsReply = read("READ_VIOLATIONS", &out)?;
        version_check("READ_VIOLATIONS", header.version)?;
        if header.count > max {
            return Err(ClientError::Protocol {
                op: "READ_VIOLATIONS",
                reason: format!("{} records returned, at most {max} asked for", header.count),
            });
        }
        let records = items(
            "READ_VIOLATIONS",
            &out,
            core::mem::size_of::<ReadViolationsReply>(),
            header.count,
        )?;
        Ok(ViolationBatch {
            records,
            next_cursor: header.next_cursor,
            lost: header.lost,
            discarded: header.discarded,
            tail: header.tail,
        })
    }

    /// LIST_MAPPINGS: every live mapping `filter` selects (the table is walked in as many
    /// requests as it takes).
    pub fn list_mappings(&mut self, filter: &MappingFilter) -> Result<MappingList> {
        let mut req = ListMappingsRequest {
            version: PROTOCOL_VERSION,
            max_records: MAPPINGS_PER_CALL,
            ..Default::default()
        };
        if let Some(d) = filter.driver_id {
            req.filter |= LF_DRIVER;
            req.driver_id = d;
        }
        if let Some(d) = filter.device {
            req.filter |= LF_DEVICE;
            req.device = d;
        }
        if let Some(a) = filter.min_age_ns {
            req.filter |= LF_MIN_AGE;
            req.min_age_ns = a;
        }
        let cap = core::mem::size_of::<ListMappingsReply>()
            + MAPPINGS_PER_CALL as usize * core::mem::size_of::<MappingRecord>();
        let mut list = MappingList::default();
        // A table walk makes progress every call; the bound only stops a broken endpoint.
        let limit = u64::from(self.hello.table_capacity).saturating_add(2);
        for _ in 0..limit {
            let out = call(
                &mut self.transport,
                "LIST_MAPPINGS",
                IOCTL_LIST_MAPPINGS,
                req.as_bytes(),
                cap,
            )?;
            let header: ListMappingsReply = read("LIST_MAPPINGS", &out)?;
            version_check("LIST_MAPPINGS", header.version)?;
            let mut batch = items(
                "LIST_MAPPINGS",
                &out,
                core::mem::size_of::<ListMappingsReply>(),
                header.count,
            )?;
            list.records.append(&mut batch);
            list.now_ns = header.now_ns;
            list.skipped = list.skipped.saturating_add(u64::from(header.skipped));
            if header.done != 0 {
                return Ok(list);
            }
            if header.next_cursor <= req.cursor && header.count == 0 {
                return Err(ClientError::Protocol {
                    op: "LIST_MAPPINGS",
                    reason: format!("walk made no progress at cursor {}", req.cursor),
                });
            }
            req.cursor = header.next_cursor;
        }
        Err(ClientError::Protocol {
            op: "LIST_MAPPINGS",
            reason: "walk did not finish".to_string(),
        })
    }

    /// GET_CONFIG.
    pub fn get_config(&mut self) -> Result<ConfigBlock> {
        let req = GetConfigRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
        };
        let out = call(
            &mut self.transport,
            "GET_CONFIG",
            IOCTL_GET_CONFIG,
            req.as_bytes(),
            core::mem::size_of::<ConfigBlock>(),
        )?;
        let block: ConfigBlock = read("GET_CONFIG", &out)?;
        version_check("GET_CONFIG", block.version)?;
        Ok(block)
    }

    /// SET_CONFIG.
    pub fn set_config(&mut self, block: &ConfigBlock) -> Result<()> {
        let mut block = *block;
        block.version = PROTOCOL_VERSION;
        call(
            &mut self.transport,
            "SET_CONFIG",
            IOCTL_SET_CONFIG,
            block.as_bytes(),
            0,
        )?;
        Ok(())
    }

    /// CLEAR with `CLR_*` bits.
    pub fn clear(&mut self, what: u32) -> Result<()> {
        let req = ClearRequest {
            version: PROTOCOL_VERSION,
            what,
        };
        call(&mut self.transport, "CLEAR", IOCTL_CLEAR, req.as_bytes(), 0)?;
        Ok(())
    }

    /// ATTACH to a loaded driver; returns the import slots patched.
    pub fn attach(&mut self, name: &str) -> Result<u32> {
        self.attach_detach("ATTACH", IOCTL_ATTACH, name)
    }

    /// DETACH from a driver; returns the import slots restored.
    pub fn detach(&mut self, name: &str) -> Result<u32> {
        self.attach_detach("DETACH", IOCTL_DETACH, name)
    }

    fn attach_detach(&mut self, op: &'static str, code: u32, name: &str) -> Result<u32> {
        let req = DriverNameRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
            name: wire_name_checked(name)?,
        };
        let out = call(
            &mut self.transport,
            op,
            code,
            req.as_bytes(),
            core::mem::size_of::<AttachReply>(),
        )?;
        let reply: AttachReply = read(op, &out)?;
        version_check(op, reply.version)?;
        Ok(reply.slots)
    }
}

/// Sends one request, growing the output buffer while the endpoint says it is too small.
/// Returns the valid output bytes.
fn call<T: Transport>(
    t: &mut T,
    op: &'static str,
    code: u32,
    input: &[u8],
    capacity: usize,
) -> Result<Vec<u8>> {
    let mut cap = capacity;
    for _ in 0..8 {
        let RawReply {
            status,
            information,
            output,
        } = t.call(code, input, cap)?;
        match Status::from_ntstatus(status) {
            Some(Status::Success) => {
                if output.len() > cap {
                    return Err(ClientError::Protocol {
                        op,
                        reason: format!("{} output bytes for a {cap}-byte buffer", output.len()),
                    });
                }
                return Ok(output);
            }
            Some(Status::OutputTooSmall) => {
                let wanted = usize::try_from(information).unwrap_or(usize::MAX);
                let next = if wanted > cap {
                    wanted
                } else {
                    cap.saturating_mul(2).max(64)
                };
                if next > MAX_OUTPUT {
                    return Err(ClientError::Protocol {
                        op,
                        reason: format!("the endpoint wants an output buffer of {wanted} bytes (limit {MAX_OUTPUT})"),
                    });
                }
                cap = next;
            }
            Some(status) => return Err(ClientError::Status { op, status }),
            None => return Err(ClientError::UnknownStatus { op, raw: status }),
        }
    }
    Err(ClientError::Protocol {
        op,
        reason: "the endpoint kept asking for a larger output buffer".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Engine, EngineTransport, Scripted};

    fn ok(output: Vec<u8>) -> std::result::Result<RawReply, TransportError> {
        Ok(RawReply {
            status: 0,
            information: output.len() as u64,
            output,
        })
    }

    fn good_hello() -> HelloReply {
        HelloReply {
            version: PROTOCOL_VERSION,
            max_drivers: 4,
            table_capacity: 16,
            violation_record_size: core::mem::size_of::<ViolationRecord>() as u32,
            mapping_record_size: core::mem::size_of::<MappingRecord>() as u32,
            driver_stats_size: core::mem::size_of::<DriverStats>() as u32,
            ..Default::default()
        }
    }

    fn scripted(replies: Vec<std::result::Result<RawReply, TransportError>>) -> Client<Scripted> {
        let mut all = vec![ok(good_hello().as_bytes().to_vec())];
        all.extend(replies);
        Client::connect(Scripted {
            replies: all.into(),
            calls: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn image_debug_needs_the_capability_and_checks_the_reply() {
        // An older endpoint (no CAP_IMAGE_DEBUG): nothing is asked, nothing is known.
        let mut c = scripted(vec![]);
        assert_eq!(c.image_debug().unwrap(), vec![]);
        assert!(c
            .transport_mut()
            .calls
            .iter()
            .all(|x| x.0 != IOCTL_GET_IMAGE_DEBUG));

        // An endpoint that has it: the records are decoded.
        let hello = HelloReply {
            capabilities: CAP_IMAGE_DEBUG,
            ..good_hello()
        };
        let rec = ImageDebugRecord {
            driver_id: 1,
            flags: IDF_CODEVIEW,
            age: 2,
            ..ImageDebugRecord::default()
        };
        let mut reply = ImageDebugReply {
            version: PROTOCOL_VERSION,
            count: 1,
        }
        .as_bytes()
        .to_vec();
        reply.extend_from_slice(rec.as_bytes());
        let mut c = Client::connect(Scripted {
            replies: vec![ok(hello.as_bytes().to_vec()), ok(reply.clone())].into(),
            calls: Vec::new(),
        })
        .unwrap();
        assert_eq!(c.image_debug().unwrap(), vec![rec]);

        // A reply claiming more records than it carries is a protocol error, not a panic.
        let mut short = ImageDebugReply {
            version: PROTOCOL_VERSION,
            count: 2,
        }
        .as_bytes()
        .to_vec();
        short.extend_from_slice(rec.as_bytes());
        let mut c = Client::connect(Scripted {
            replies: vec![ok(hello.as_bytes().to_vec()), ok(short)].into(),
            calls: Vec::new(),
        })
        .unwrap();
        assert!(matches!(
            c.image_debug(),
            Err(ClientError::Protocol {
                op: "GET_IMAGE_DEBUG",
                ..
            })
        ));
    }

    #[test]
    fn reads_real_replies_of_the_engine() {
        let e = Engine::new();
        let base = e.nic_map(0xfe00_0000, 0x1000);
        e.unmap(false, base, 0x800); // IOSV001
        e.unmap(false, 0xdead_0000, 0x1000); // IOSV004
        let mut c = Client::connect(EngineTransport(e.clone())).unwrap();
        let stats = c.stats().unwrap();
        assert_eq!(stats.drivers.len(), 2);
        assert_eq!(stats.header.counters.per_rule[0], 1);
        let b = c.read_violations(0, 100).unwrap();
        let rules: Vec<u8> = b.records.iter().map(|r| r.rule).collect();
        assert_eq!(rules, [1, 4]);
        assert_eq!((b.next_cursor, b.lost, b.tail), (2, 0, 2));
        assert_eq!(
            (b.records[0].passed_size, b.records[0].mapped_size),
            (0x800, 0x1000)
        );
        let b = c.read_violations(b.next_cursor, 100).unwrap();
        assert!(b.records.is_empty());
        assert_eq!(c.attach("nic.sys").unwrap(), 3);
        assert!(matches!(
            c.attach("nope.sys"),
            Err(ClientError::Status {
                status: Status::NotFound,
                ..
            })
        ));
        assert!(matches!(
            c.attach(&"x".repeat(33)),
            Err(ClientError::Invalid(_))
        ));
    }

    #[test]
    fn lists_mappings_with_filters() {
        let e = Engine::new();
        e.nic_start(0xffffc000_00001000, 0xfe00_0000, 0x2000);
        e.nic_map(0xfd00_0000, 0x1000);
        let mut c = Client::connect(EngineTransport(e)).unwrap();
        assert_eq!(
            c.list_mappings(&MappingFilter::default())
                .unwrap()
                .records
                .len(),
            2
        );
        let l = c
            .list_mappings(&MappingFilter {
                device: Some(0xffffc000_00001000),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(l.records.len(), 1);
        assert_eq!(l.records[0].size, 0x2000);
        let l = c
            .list_mappings(&MappingFilter {
                driver_id: Some(2),
                ..Default::default()
            })
            .unwrap();
        assert!(l.records.is_empty());
    }

    #[test]
    fn grows_the_output_buffer_when_told_to() {
        let stats = StatsReply {
            version: PROTOCOL_VERSION,
            ..Default::default()
        };
        let mut c = scripted(vec![
            Ok(RawReply {
                status: Status::OutputTooSmall as u32,
                information: 4000,
                output: Vec::new(),
            }),
            // A transport that cannot say how much (Windows): doubled.
            Ok(RawReply {
                status: Status::OutputTooSmall as u32,
                information: 0,
                output: Vec::new(),
            }),
            ok(stats.as_bytes().to_vec()),
        ]);
        c.stats().unwrap();
        let caps: Vec<usize> = c.transport_mut().calls.iter().map(|c| c.2).collect();
        let item = core::mem::size_of::<DriverStats>();
        assert_eq!(caps[1..], [256 + 4 * item, 4000, 8000]);
    }

    #[test]
    fn refuses_other_versions_and_sizes() {
        let mut h = good_hello();
        h.version = PROTOCOL_VERSION + 1;
        let t = Scripted {
            replies: vec![ok(h.as_bytes().to_vec())].into(),
            calls: Vec::new(),
        };
        assert!(matches!(
            Client::connect(t),
            Err(ClientError::Version { endpoint, .. }) if endpoint == PROTOCOL_VERSION + 1
        ));
        let t = Scripted {
            replies: vec![Ok(RawReply {
                status: Status::RevisionMismatch as u32,
                information: 0,
                output: vec![],
            })]
            .into(),
            calls: Vec::new(),
        };
        assert!(matches!(
            Client::connect(t),
            Err(ClientError::Version { endpoint: 0, .. })
        ));
        let mut h = good_hello();
        h.mapping_record_size = 200;
        let t = Scripted {
            replies: vec![ok(h.as_bytes().to_vec())].into(),
            calls: Vec::new(),
        };
        let e = Client::connect(t).err().unwrap();
        assert!(e.to_string().contains("MappingRecord is 200 bytes"), "{e}");
    }

    #[test]
    fn inconsistent_replies_are_errors() {
        // Header claims 3 records but none follow.
        let h = ReadViolationsReply {
            version: PROTOCOL_VERSION,
            count: 3,
            ..Default::default()
        };
        let mut c = scripted(vec![ok(h.as_bytes().to_vec())]);
        let e = c.read_violations(0, 10).unwrap_err();
        assert!(e.to_string().contains("claims 3 items"), "{e}");
        // Too short for the header.
        let mut c = scripted(vec![ok(vec![1, 0, 0, 0])]);
        assert!(matches!(c.get_config(), Err(ClientError::Protocol { .. })));
        // Status iosv does not define.
        let mut c = scripted(vec![Ok(RawReply {
            status: 0xC000_0005,
            information: 0,
            output: vec![],
        })]);
        let e = c.clear(CLR_ALL).unwrap_err();
        assert!(e.to_string().contains("0xC0000005"), "{e}");
        // Endless "too small".
        let mut c = scripted(
            (0..10)
                .map(|_| {
                    Ok(RawReply {
                        status: Status::OutputTooSmall as u32,
                        information: 1,
                        output: vec![],
                    })
                })
                .collect(),
        );
        assert!(matches!(c.stats(), Err(ClientError::Protocol { .. })));
        // Absurd size.
        let mut c = scripted(vec![Ok(RawReply {
            status: Status::OutputTooSmall as u32,
            information: u64::MAX,
            output: vec![],
        })]);
        assert!(c.stats().unwrap_err().to_string().contains("limit"));
    }
}
