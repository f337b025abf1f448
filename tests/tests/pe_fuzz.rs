//! Fuzz-style property tests: mutated fixture images (byte flips, field overwrites at
//! header and import-table offsets, random windows, truncations) go through every entry
//! point of `iosv::pe` and through `iosv::intercept` (`iosv_tests::fuzz::pe`, also the
//! body of the cargo-fuzz target `pe`). Whatever the bytes, nothing panics,
//! results stay inside the image and within the documented caps, iterators stop after
//! their first error, and a plan that could be built patches and restores only slots
//! inside the image.

#![allow(
    clippy::cast_lossless,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::sync::OnceLock;

use iosv::pe::{Directory, PeImage};
use iosv_tests::fixture;
use iosv_tests::fuzz::pe as exercise;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// A loaded fixture and the offsets of the 32-bit fields worth overwriting.
struct Target {
    image: Vec<u8>,
    fields: Vec<usize>,
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

fn u16_at(bytes: &[u8], at: usize) -> usize {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap()) as usize
}

/// Offsets of header fields, directory entries, section fields, descriptor fields, the
/// first thunks and the export directory fields of a well-formed loaded image.
fn hot_fields(image: &[u8]) -> Vec<usize> {
    let nt = u32_at(image, 0x3C);
    let optional = nt + 24;
    let directories = optional + 112;
    let mut fields = vec![
        0x3C,
        nt,
        nt + 4,
        nt + 20,
        optional,
        optional + 56,
        optional + 60,
    ];
    fields.push(optional + 108);
    for index in 0..16 {
        fields.extend([directories + 8 * index, directories + 8 * index + 4]);
    }
    let sections = optional + u16_at(image, nt + 20);
    for index in 0..u16_at(image, nt + 6) {
        let at = sections + 40 * index;
        fields.extend([at + 8, at + 12, at + 16]);
    }
    let pe = PeImage::parse(image).unwrap();
    for dll in pe.imported_dlls() {
        let dll = dll.unwrap();
        let d = dll.descriptor;
        if dll.delay_load {
            fields.extend([d, d + 4, d + 12, d + 16]);
        } else {
            fields.extend([d, d + 12, d + 16]);
        }
        let lookup = dll.lookup_table_rva as usize;
        fields.extend([lookup, lookup + 4, lookup + 8, lookup + 12]);
        let hint = u32_at(image, lookup);
        if hint < image.len() {
            fields.push(hint);
        }
    }
    if let Some(dir) = pe.data_directory(Directory::Export).filter(|d| d.rva != 0) {
        let d = dir.rva as usize;
        fields.extend([d + 12, d + 16, d + 20, d + 24, d + 28, d + 32, d + 36]);
        let names = u32_at(image, d + 32);
        fields.push(names);
    }
    fields.retain(|&at| at + 4 <= image.len());
    fields
}

fn targets() -> &'static [Target] {
    static TARGETS: OnceLock<Vec<Target>> = OnceLock::new();
    TARGETS.get_or_init(|| {
        fixture::names()
            .iter()
            .map(|name| {
                let image = fixture::loaded(name).bytes;
                let fields = hot_fields(&image);
                Target { image, fields }
            })
            .collect()
    })
}

/// One change to an image.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte (offset taken modulo the length).
    Flip(usize, u8),
    /// Overwrite one hot 32-bit field (index modulo the field count).
    Field(usize, Value),
    /// Overwrite a window with random bytes.
    Window(usize, Vec<u8>),
    /// Cut the image to this fraction (per mille) of its length.
    Truncate(u16),
}

/// A value to write into a field.
#[derive(Debug, Clone, Copy)]
enum Value {
    Fixed(u32),
    /// The image length plus this delta.
    NearEnd(i8),
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(2),
            Just(0x10B),
            Just(0x7FFF_FFFF),
            Just(0x8000_0000),
            Just(0xFFFF_FFF8),
            Just(u32::MAX),
        ]
        .prop_map(Value::Fixed),
        (-16i8..16).prop_map(Value::NearEnd),
        any::<u32>().prop_map(Value::Fixed),
        (0u32..0x4000).prop_map(Value::Fixed),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(at, x)| Mutation::Flip(at, x)),
        4 => (any::<usize>(), value()).prop_map(|(i, v)| Mutation::Field(i, v)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Mutation::Window(at, bytes)),
        1 => (0u16..1000).prop_map(Mutation::Truncate),
    ]
}

fn apply(target: &Target, mutations: &[Mutation]) -> Vec<u8> {
    let mut image = target.image.clone();
    for mutation in mutations {
        if image.is_empty() {
            break;
        }
        match mutation {
            Mutation::Flip(at, x) => {
                let at = at % image.len();
                image[at] ^= x;
            }
            Mutation::Field(index, value) => {
                let at = target.fields[index % target.fields.len()];
                if at + 4 > image.len() {
                    continue;
                }
                let v = match *value {
                    Value::Fixed(v) => v,
                    Value::NearEnd(delta) => (image.len() as i64 + i64::from(delta)) as u32,
                };
                image[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            Mutation::Window(at, bytes) => {
                let at = at % image.len();
                let end = (at + bytes.len()).min(image.len());
                image[at..end].copy_from_slice(&bytes[..end - at]);
            }
            Mutation::Truncate(per_mille) => {
                let len = image.len() * usize::from(*per_mille) / 1000;
                image.truncate(len);
            }
        }
    }
    image
}

fn config() -> Config {
    Config {
        cases: 1024,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Mutated loaded fixture images.
    #[test]
    fn mutated_fixtures_never_panic(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..12),
    ) {
        let targets = targets();
        let target = &targets[which % targets.len()];
        exercise(&apply(target, &mutations));
    }

    /// On-disk fixture files given as if they were loaded images, mutated.
    #[test]
    fn mutated_files_never_panic(
        which in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 0..6),
        pad in 0usize..0x4000,
    ) {
        let names = fixture::names();
        let file = fixture::build(&names[which % names.len()]);
        let mut image = file.to_vec();
        image.resize(file.len() + pad, 0);
        let target = Target { fields: (0..image.len().saturating_sub(4)).step_by(4).collect(), image };
        exercise(&apply(&target, &mutations));
    }

    /// Arbitrary bytes behind a valid DOS header.
    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if bytes.len() >= 0x40 {
            bytes[0] = b'M';
            bytes[1] = b'Z';
            bytes[0x3C..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        }
        if bytes.len() >= 0x44 {
            bytes[0x40..0x44].copy_from_slice(b"PE\0\0");
        }
        exercise(&bytes);
    }
}

/// Every single-byte flip in the headers and import tables of one fixture.
#[test]
fn exhaustive_flips_of_maps_by_name() {
    let image = fixture::loaded("maps_by_name").bytes;
    let pe = PeImage::parse(&image).unwrap();
    let end = pe.size_of_headers() as usize;
    let mut ranges = Vec::new();
    ranges.push(0..end);
    for dll in pe.imported_dlls() {
        let dll = dll.unwrap();
        ranges.push(dll.descriptor..dll.descriptor + 40);
        let lookup = dll.lookup_table_rva as usize;
        ranges.push(lookup..lookup + 64);
    }
    for range in ranges {
        for at in range {
            for x in [0x01, 0x80, 0xFF] {
                let mut mutated = image.clone();
                mutated[at] ^= x;
                exercise(&mutated);
            }
        }
    }
}
