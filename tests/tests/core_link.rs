//! The portable core links into a real kernel-mode PE32+ image with no C runtime: the
//! image built from `tests/core-link` (iosv's verifier, control endpoint and all, over a
//! stand-in platform) imports only from `ntoskrnl.exe`, and only routines ntoskrnl
//! exports. This is as close to the Windows build as a Linux host gets: the wdk-sys glue
//! itself is not compiled here.

use iosv::pe::PeImage;
use iosv_tests::fixture;
use std::path::Path;
use std::process::Command;

#[test]
fn core_links_into_a_native_driver_image_importing_only_ntoskrnl() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("core-link");
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/core-link");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .args([
            "rustc",
            "--release",
            "--lib",
            "--target",
            fixture::TARGET,
            "--",
        ])
        .args(["-C", "linker=rust-lld"])
        .args(["-C", "link-arg=/driver", "-C", "link-arg=/subsystem:native"])
        .args([
            "-C",
            "link-arg=/entry:DriverEntry",
            "-C",
            "link-arg=/nodefaultlib",
        ])
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "link failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dll = target_dir
        .join(fixture::TARGET)
        .join("release/iosv_core_link.dll");
    let file = std::fs::read(&dll).expect("read the linked image");
    let loaded = fixture::load(&file);
    let image = PeImage::parse(&loaded.bytes).expect("iosv::pe parses the image");
    let dlls: Vec<Vec<u8>> = image
        .imported_dlls()
        .map(|d| d.expect("import descriptor").dll_name.to_vec())
        .collect();
    assert_eq!(
        dlls,
        [b"ntoskrnl.exe".to_vec()],
        "imports only from ntoskrnl.exe"
    );
    let mut slots = Vec::new();
    for slot in image.hooked_slots(None) {
        slots.push(slot.expect("slot").routine);
    }
    assert!(slots.contains(&iosv::pe::HookedRoutine::MapIoSpace));
    assert!(slots.contains(&iosv::pe::HookedRoutine::UnmapIoSpace));
}
