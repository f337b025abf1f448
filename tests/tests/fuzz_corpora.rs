//! The fuzz targets' seed corpora (`fuzz/corpus/TARGET/`) through the targets' bodies
//! (`iosv_tests::fuzz`): the cheap smoke of every target that runs in `cargo test`, on
//! stable, without cargo-fuzz. `scripts/fuzz SECONDS` runs the real fuzzers.

use std::path::Path;

#[test]
fn every_seed_of_every_target_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for target in iosv_tests::fuzz::TARGETS {
        let dir = root.join(target);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
        for seed in seeds {
            let data = std::fs::read(&seed).expect("seed");
            iosv_tests::fuzz::run(target, &data);
        }
    }
}

/// Writes the seed corpora (`cargo test -p iosv-tests --test fuzz_corpora -- --ignored`):
/// one valid request per control code, a few frames, the PE fixture images as loaded, and
/// every example and test scenario.
#[test]
#[ignore = "regenerates fuzz/corpus; run by hand"]
fn write_seed_corpora() {
    use iosv::protocol::*;
    use zerocopy::IntoBytes;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let v = PROTOCOL_VERSION;
    let requests: [(&str, Vec<u8>); 10] = [
        (
            "hello",
            HelloRequest {
                version: v,
                reserved: 0,
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "stats",
            StatsRequest {
                version: v,
                max_drivers: 8,
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "read",
            ReadViolationsRequest {
                version: v,
                max_records: 4,
                cursor: 0,
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "list",
            ListMappingsRequest {
                version: v,
                max_records: 4,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "getcfg",
            GetConfigRequest {
                version: v,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "setcfg",
            ConfigBlock {
                version: v,
                flags: CF_CONTAINMENT,
                stack_depth: 2,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "clear",
            ClearRequest {
                version: v,
                what: CLR_STATS,
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "attach",
            DriverNameRequest {
                version: v,
                name: wire_name(b"b.sys"),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "detach",
            DriverNameRequest {
                version: v,
                name: wire_name(b"b.sys"),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            "imagedebug",
            ImageDebugRequest {
                version: v,
                max_records: 4,
            }
            .as_bytes()
            .to_vec(),
        ),
    ];
    for (i, (name, input)) in requests.iter().enumerate() {
        let mut seed = vec![i as u8];
        seed.extend_from_slice(&4096u16.to_le_bytes());
        seed.extend_from_slice(input);
        put("control", name, &seed);
    }
    let hello = HelloRequest {
        version: v,
        reserved: 0,
    };
    put(
        "frame",
        "request",
        &iosv::frame::encode_request(IOCTL_HELLO, hello.as_bytes(), 56).unwrap(),
    );
    put("frame", "reply", &iosv::frame::encode_reply(0, 3, b"abc"));
    put(
        "frame",
        "reply-too-small",
        &iosv::frame::encode_reply(0xC000_0023, 56, &[]),
    );
    for name in iosv_tests::fixture::names() {
        put("pe", &name, &iosv_tests::fixture::loaded(&name).bytes);
    }
    // An image with a debug directory and its CodeView record (linked with /DEBUG).
    let dir = std::env::temp_dir().join(format!("iosv-seed-{}", std::process::id()));
    let debug = iosv_tests::fixture::build_with_pdb("symbolized", &dir);
    put(
        "pe",
        "symbolized_debug",
        &iosv_tests::fixture::load(&debug).bytes,
    );
    let _ = std::fs::remove_dir_all(&dir);
    for dir in ["../examples", "data"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                put("scenario", &name, &std::fs::read(&p).unwrap());
            }
        }
    }
}
