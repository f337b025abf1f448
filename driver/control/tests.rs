//! Control endpoint tests: every malformed input gets its own status and changes nothing;
//! random bytes never panic.

use super::*;
use crate::platform::fake::FakePlatform;
use crate::platform::Caller;
use crate::rules::RULE_COUNT;
use crate::verifier::StartParams;
use proptest::prelude::*;
use zerocopy::IntoBytes;

fn engine() -> Verifier<FakePlatform> {
    Verifier::new(
        FakePlatform::new(),
        StartParams {
            capacity: 64,
            journal_records: 8,
            ..Default::default()
        },
    )
    .unwrap()
}

fn call(v: &Verifier<FakePlatform>, code: u32, input: &[u8], out_len: usize) -> (Reply, Vec<u8>) {
    let mut out = vec![0u8; out_len];
    let r = control(v, code, input, &mut out);
    (r, out)
}

fn config(v: &Verifier<FakePlatform>) -> ConfigBlock {
    let (r, out) = call(
        v,
        IOCTL_GET_CONFIG,
        GetConfigRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
        }
        .as_bytes(),
        4096,
    );
    assert_eq!(r.status, Status::Success);
    ConfigBlock::read_from_prefix(&out).unwrap().0
}

#[test]
fn hello_reports_limits() {
    let v = engine();
    let (r, out) = call(
        &v,
        IOCTL_HELLO,
        HelloRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
        }
        .as_bytes(),
        64,
    );
    assert_eq!(
        r,
        Reply {
            status: Status::Success,
            information: 56
        }
    );
    let h = HelloReply::read_from_prefix(&out).unwrap().0;
    assert_eq!(
        (h.version, h.table_capacity, h.journal_capacity),
        (PROTOCOL_VERSION, 64, 8)
    );
    assert_eq!(
        h.violation_record_size as usize,
        core::mem::size_of::<ViolationRecord>()
    );
    assert_eq!(
        name_bytes(&wire_name(&h.component_version[..])),
        env!("CARGO_PKG_VERSION").as_bytes()
    );
}

#[test]
fn each_malformed_input_has_its_own_status() {
    let v = engine();
    let good = HelloRequest {
        version: PROTOCOL_VERSION,
        reserved: 0,
    };
    let mut long = good.as_bytes().to_vec();
    long.push(0);
    let cases: [(u32, Vec<u8>, usize, Status); 7] = [
        (
            IOCTL_HELLO,
            good.as_bytes()[..7].to_vec(),
            64,
            Status::InputTooShort,
        ),
        (IOCTL_HELLO, long, 64, Status::InputTooLong),
        (
            IOCTL_HELLO,
            HelloRequest {
                version: PROTOCOL_VERSION + 1,
                reserved: 0,
            }
            .as_bytes()
            .to_vec(),
            64,
            Status::RevisionMismatch,
        ),
        (
            IOCTL_HELLO,
            HelloRequest {
                version: PROTOCOL_VERSION,
                reserved: 1,
            }
            .as_bytes()
            .to_vec(),
            64,
            Status::ReservedNotZero,
        ),
        (
            0x0022_0003,
            good.as_bytes().to_vec(),
            64,
            Status::UnknownCode,
        ),
        (
            IOCTL_HELLO,
            good.as_bytes().to_vec(),
            10,
            Status::OutputTooSmall,
        ),
        (
            IOCTL_CLEAR,
            ClearRequest {
                version: PROTOCOL_VERSION,
                what: 0,
            }
            .as_bytes()
            .to_vec(),
            0,
            Status::InvalidField,
        ),
    ];
    for (code, input, out_len, want) in cases {
        let (r, _) = call(&v, code, &input, out_len);
        assert_eq!(r.status, want, "code {code:#x} input {input:?}");
    }
    let (r, _) = call(&v, IOCTL_HELLO, good.as_bytes(), 10);
    assert_eq!(r.information, 56, "output too small says what is needed");
}

#[test]
fn set_config_validates_then_applies_atomically() {
    let v = engine();
    let before = config(&v);
    let mut bad = before;
    bad.actions[0] = 4;
    let (r, _) = call(&v, IOCTL_SET_CONFIG, bad.as_bytes(), 0);
    assert_eq!(r.status, Status::InvalidField);
    let mut bad = before;
    bad.flags |= 1 << 7;
    assert_eq!(
        call(&v, IOCTL_SET_CONFIG, bad.as_bytes(), 0).0.status,
        Status::ReservedNotZero
    );
    let mut bad = before;
    bad.actions[RULE_COUNT] = 1;
    assert_eq!(
        call(&v, IOCTL_SET_CONFIG, bad.as_bytes(), 0).0.status,
        Status::ReservedNotZero
    );
    let mut bad = before;
    bad.stack_depth = 17;
    assert_eq!(
        call(&v, IOCTL_SET_CONFIG, bad.as_bytes(), 0).0.status,
        Status::InvalidField
    );
    let mut bad = before;
    bad.target_count = 1;
    bad.targets[0] = wire_name(b"bad name");
    assert_eq!(
        call(&v, IOCTL_SET_CONFIG, bad.as_bytes(), 0).0.status,
        Status::InvalidField
    );
    let mut bad = before;
    bad.targets[3] = wire_name(b"x.sys");
    assert_eq!(
        call(&v, IOCTL_SET_CONFIG, bad.as_bytes(), 0).0.status,
        Status::ReservedNotZero
    );
    assert_eq!(config(&v), before, "refused blocks changed nothing");

    let mut good = before;
    good.flags = CF_VERIFIER_IRQL;
    good.actions[3] = Action::Bugcheck as u8;
    good.stack_depth = 2;
    good.target_count = 2;
    good.targets[0] = wire_name(b"nic.sys");
    good.targets[1] = wire_name(b"gpu.sys");
    assert_eq!(
        call(&v, IOCTL_SET_CONFIG, good.as_bytes(), 0).0.status,
        Status::Success
    );
    assert_eq!(config(&v), good);
    assert!(v.image_loaded(b"GPU.SYS", 0x1000, 0x1000).is_some());
}

use crate::rules::Action;

#[test]
fn read_violations_cursor_lost_and_clear() {
    let v = engine();
    for _ in 0..12 {
        v.unmap_io_space(Caller::at(0), 0xFFFF_F800_0BAD_0000, 0x1000);
    }
    let req = |cursor: u64, max: u32| ReadViolationsRequest {
        version: PROTOCOL_VERSION,
        max_records: max,
        cursor,
    };
    let hdr = core::mem::size_of::<ReadViolationsReply>();
    let rec = core::mem::size_of::<ViolationRecord>();
    // Room for the header only: too small, and it says how much is needed for one record.
    let (r, _) = call(&v, IOCTL_READ_VIOLATIONS, req(0, 5).as_bytes(), hdr);
    assert_eq!(
        r,
        Reply {
            status: Status::OutputTooSmall,
            information: hdr + rec
        }
    );
    let (r, out) = call(
        &v,
        IOCTL_READ_VIOLATIONS,
        req(0, 5).as_bytes(),
        hdr + 3 * rec + 7,
    );
    assert_eq!(r.information, hdr + 3 * rec);
    let h = ReadViolationsReply::read_from_prefix(&out).unwrap().0;
    assert_eq!((h.count, h.lost, h.next_cursor, h.tail), (3, 4, 7, 12));
    let first = ViolationRecord::read_from_prefix(&out[hdr..]).unwrap().0;
    assert_eq!((first.seq, first.rule), (4, 4));
    let clr = ClearRequest {
        version: PROTOCOL_VERSION,
        what: CLR_JOURNAL | CLR_STATS,
    };
    assert_eq!(
        call(&v, IOCTL_CLEAR, clr.as_bytes(), 0).0.status,
        Status::Success
    );
    let (_, out) = call(&v, IOCTL_READ_VIOLATIONS, req(7, 5).as_bytes(), 4096);
    let h = ReadViolationsReply::read_from_prefix(&out).unwrap().0;
    assert_eq!((h.count, h.discarded, h.next_cursor), (0, 5, 12));
    // The tail itself is a valid cursor (nothing new yet); past it, a follower would skip
    // the records written up to its cursor without a word: refused (issue 9).
    let (r, _) = call(&v, IOCTL_READ_VIOLATIONS, req(12, 5).as_bytes(), 4096);
    assert_eq!(r.status, Status::Success);
    for past in [13, u64::MAX] {
        let (r, _) = call(&v, IOCTL_READ_VIOLATIONS, req(past, 5).as_bytes(), 4096);
        assert_eq!(r.status, Status::InvalidField, "cursor {past}");
    }
}

#[test]
fn list_mappings_filters_and_resumes() {
    let v = engine();
    let nic = v.driver_attached(b"nic.sys", 0x1000_0000, 0x1000).unwrap();
    let at = Caller::at(0x1000_0010);
    let bases: Vec<u64> = (0..5)
        .map(|i| v.map_io_space(at, 0xF000_0000 + i * 0x1000, 0x1000, 0))
        .collect();
    v.map_io_space(Caller::at(0), 0xE000_0000, 0x1000, 0);
    let hdr = core::mem::size_of::<ListMappingsReply>();
    let rec = core::mem::size_of::<MappingRecord>();
    let mut req = ListMappingsRequest {
        version: PROTOCOL_VERSION,
        max_records: 2,
        filter: LF_DRIVER,
        driver_id: u32::from(nic.0),
        ..Default::default()
    };
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (r, out) = call(&v, IOCTL_LIST_MAPPINGS, req.as_bytes(), hdr + 2 * rec);
        assert_eq!(r.status, Status::Success);
        let h = ListMappingsReply::read_from_prefix(&out).unwrap().0;
        for i in 0..h.count as usize {
            let m = MappingRecord::read_from_prefix(&out[hdr + i * rec..])
                .unwrap()
                .0;
            assert_eq!(name_bytes(&m.driver_name), b"nic.sys");
            seen.push(m.base);
        }
        if h.done == 1 {
            break;
        }
        req.cursor = h.next_cursor;
    }
    seen.sort_unstable();
    let mut want = bases.clone();
    want.sort_unstable();
    assert_eq!(seen, want);
    let bad = ListMappingsRequest {
        version: PROTOCOL_VERSION,
        max_records: 2,
        filter: 1 << 9,
        ..Default::default()
    };
    assert_eq!(
        call(&v, IOCTL_LIST_MAPPINGS, bad.as_bytes(), 4096).0.status,
        Status::ReservedNotZero
    );
    let bad = ListMappingsRequest {
        version: PROTOCOL_VERSION,
        max_records: 2,
        device: 5,
        ..Default::default()
    };
    assert_eq!(
        call(&v, IOCTL_LIST_MAPPINGS, bad.as_bytes(), 4096).0.status,
        Status::ReservedNotZero
    );
    let bad = ListMappingsRequest {
        version: PROTOCOL_VERSION,
        max_records: 2,
        cursor: u64::MAX,
        ..Default::default()
    };
    assert_eq!(
        call(&v, IOCTL_LIST_MAPPINGS, bad.as_bytes(), 4096).0.status,
        Status::InvalidField
    );
}

#[test]
fn stats_count_per_driver_and_live() {
    let v = engine();
    let nic = v.driver_attached(b"nic.sys", 0x1000_0000, 0x1000).unwrap();
    let at = Caller::at(0x1000_0010);
    let a = v.map_io_space(at, 0xF000_0000, 0x3000, 0);
    v.map_io_space(at, 0xF001_0000, 0x1000, 0);
    v.unmap_io_space(at, a, 0x1000);
    let (r, out) = call(
        &v,
        IOCTL_GET_STATS,
        StatsRequest {
            version: PROTOCOL_VERSION,
            max_drivers: 4,
        }
        .as_bytes(),
        4096,
    );
    assert_eq!(r.status, Status::Success);
    let h = StatsReply::read_from_prefix(&out).unwrap().0;
    assert_eq!((h.total_drivers, h.returned), (1, 1));
    assert_eq!(
        (
            h.counters.maps,
            h.counters.unmaps,
            h.counters.live,
            h.counters.per_rule[0]
        ),
        (2, 1, 1, 1)
    );
    let d = DriverStats::read_from_prefix(&out[core::mem::size_of::<StatsReply>()..])
        .unwrap()
        .0;
    assert_eq!(
        (
            d.driver_id,
            d.maps,
            d.unmaps,
            d.violations,
            d.live,
            d.live_bytes
        ),
        (u32::from(nic.0), 2, 1, 1, 1, 0x1000)
    );
}

#[test]
fn attach_maps_platform_errors() {
    let v = engine();
    let req = |name: &[u8]| DriverNameRequest {
        version: PROTOCOL_VERSION,
        reserved: 0,
        name: wire_name(name),
    };
    let (r, out) = call(&v, IOCTL_ATTACH, req(b"present.sys").as_bytes(), 8);
    assert_eq!(r.status, Status::Success);
    assert_eq!(AttachReply::read_from_prefix(&out).unwrap().0.slots, 3);
    assert_eq!(
        call(&v, IOCTL_ATTACH, req(b"absent.sys").as_bytes(), 8)
            .0
            .status,
        Status::NotFound
    );
    assert_eq!(
        call(&v, IOCTL_DETACH, req(b"present.sys").as_bytes(), 8)
            .0
            .status,
        Status::NotSupported
    );
    assert_eq!(
        call(&v, IOCTL_ATTACH, req(b"").as_bytes(), 8).0.status,
        Status::InvalidField
    );
    let mut junk = req(b"a.sys");
    junk.name[20] = b'x';
    assert_eq!(
        call(&v, IOCTL_ATTACH, junk.as_bytes(), 8).0.status,
        Status::InvalidField
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes_never_panic_and_unknown_codes_change_nothing(
        code_pick in 0usize..12,
        raw_code in any::<u32>(),
        input in prop::collection::vec(any::<u8>(), 0..700),
        out_len in 0usize..5000,
        valid_version in any::<bool>(),
    ) {
        let v = engine();
        let code = IOCTLS.get(code_pick).map_or(raw_code, |c| c.0);
        let mut input = input;
        if valid_version && input.len() >= 4 {
            input[..4].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        }
        let before = config(&v);
        let mut out = vec![0u8; out_len];
        let r = control(&v, code, &input, &mut out);
        prop_assert!(r.status == Status::OutputTooSmall || r.information <= out_len);
        if r.status != Status::Success {
            prop_assert_eq!(config(&v), before);
        }
    }
}

#[test]
fn image_debug_lists_every_driver_with_its_pdb_identity() {
    use crate::drivers::ImageDebug;
    use crate::pe::CodeView;
    let v = engine();
    let (r, out) = call(
        &v,
        IOCTL_HELLO,
        HelloRequest {
            version: PROTOCOL_VERSION,
            reserved: 0,
        }
        .as_bytes(),
        256,
    );
    assert_eq!(r.status, Status::Success);
    let h = HelloReply::read_from_prefix(&out).unwrap().0;
    assert_ne!(h.capabilities & CAP_IMAGE_DEBUG, 0);

    let nic = v.driver_attached(b"nic.sys", 0x1000_0000, 0x1000).unwrap();
    let gpu = v.driver_attached(b"gpu.sys", 0x2000_0000, 0x1000).unwrap();
    let long = [b'x'; 80];
    let mut path = b"C:\\out\\".to_vec();
    path.extend_from_slice(&long);
    v.drivers().set_debug(
        nic,
        0x1000_0000,
        ImageDebug::CodeView(CodeView {
            guid: [7; 16],
            age: 3,
            pdb_path: b"C:\\build\\nic.pdb",
        }),
    );
    v.drivers().set_debug(
        gpu,
        0x2000_0000,
        ImageDebug::CodeView(CodeView {
            guid: [1; 16],
            age: 1,
            pdb_path: &path,
        }),
    );
    let _ = v.driver_attached(b"stor.sys", 0x3000_0000, 0x1000).unwrap();
    let req = ImageDebugRequest {
        version: PROTOCOL_VERSION,
        max_records: 8,
    };
    let (r, out) = call(&v, IOCTL_GET_IMAGE_DEBUG, req.as_bytes(), 4096);
    assert_eq!(r.status, Status::Success);
    let header = core::mem::size_of::<ImageDebugReply>();
    let item = core::mem::size_of::<ImageDebugRecord>();
    assert_eq!(r.information, header + 3 * item);
    let h = ImageDebugReply::read_from_prefix(&out).unwrap().0;
    assert_eq!(h.count, 3);
    let rec = |i: usize| {
        ImageDebugRecord::read_from_prefix(&out[header + i * item..])
            .unwrap()
            .0
    };
    let n = rec(0);
    assert_eq!(
        (n.driver_id, n.flags, n.age),
        (u32::from(nic.0), IDF_CODEVIEW, 3)
    );
    assert_eq!(n.guid, [7; 16]);
    assert_eq!(&n.pdb_name[..8], b"nic.pdb\0");
    let g = rec(1);
    assert_eq!(g.flags, IDF_CODEVIEW | IDF_NAME_CUT);
    assert_eq!(g.pdb_name, [b'x'; PDB_NAME_LEN]);
    let s = rec(2);
    assert_eq!((s.flags, s.image_base), (0, 0x3000_0000));

    // Output too small for one record; max_records bounds the reply; bad version.
    let (r, _) = call(&v, IOCTL_GET_IMAGE_DEBUG, req.as_bytes(), header + 3);
    assert_eq!(r.status, Status::OutputTooSmall);
    let one = ImageDebugRequest {
        max_records: 1,
        ..req
    };
    let (r, _) = call(&v, IOCTL_GET_IMAGE_DEBUG, one.as_bytes(), 4096);
    assert_eq!(r.information, header + item);
    let bad = ImageDebugRequest {
        version: PROTOCOL_VERSION + 1,
        ..req
    };
    let (r, _) = call(&v, IOCTL_GET_IMAGE_DEBUG, bad.as_bytes(), 4096);
    assert_eq!(r.status, Status::RevisionMismatch);
}
