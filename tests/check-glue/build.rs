//! Link arguments of the driver image, as wdk-build's `configure_binary_build` emits them
//! for a WDM driver (`cargo::rustc-cdylib-link-arg`), minus what lld-link does not accept:
//! `/KERNEL` (a cl option wdk-build also passes to the linker; lld-link rejects it) and
//! `/MAPINFO:EXPORTS` (no lld-link equivalent). The map goes to `$IOSV_GLUE_MAP` when set
//! (scripts/check-glue sets it to target/check-glue/iosv.map).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=IOSV_GLUE_MAP");
    let map =
        std::env::var("IOSV_GLUE_MAP").map_or_else(|_| "/MAP".to_owned(), |p| format!("/MAP:{p}"));
    for arg in [
        "/DRIVER",
        "/NODEFAULTLIB",
        "/SUBSYSTEM:NATIVE",
        "/ENTRY:DriverEntry",
        "/IGNORE:4257",
        "/IGNORE:4216",
        "/NXCOMPAT",
        "/DYNAMICBASE",
        map.as_str(),
        "/OPT:REF,ICF",
        "/INTEGRITYCHECK",
        "/MANIFEST:NO",
    ] {
        println!("cargo::rustc-cdylib-link-arg={arg}");
    }
}
