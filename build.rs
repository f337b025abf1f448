//! Build script of `iosv`.
//!
//! For the Windows driver (feature `kernel`, target OS windows):
//! - compiles `driver/platform/windows/seh.c` (the structured-exception wrapper around
//!   `MmProbeAndLockPages`) into a static library with the `cc` crate — the WDK's `cl` on
//!   Windows, clang in MSVC mode under `scripts/check-glue` on Linux;
//! - on a Windows host, configures the driver build with wdk-build (bindings, link
//!   arguments, the WDK environment).
//!
//! Everywhere else it does nothing: the portable core and the user-mode host need no
//! configuration, and wdk-build refuses to run on non-Windows hosts.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "kernel")]
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("windows") {
        println!("cargo::rerun-if-changed=driver/platform/windows/seh.c");
        cc::Build::new()
            .file("driver/platform/windows/seh.c")
            // No default-library directives in the object: a driver links no C runtime.
            .flag("/Zl")
            // Kernel-mode code generation where the compiler knows it (MSVC).
            .flag_if_supported("/kernel")
            .compile("iosv_seh");
    }
    #[cfg(all(windows, feature = "kernel"))]
    {
        if let Err(e) = wdk_build::configure_wdk_binary_build() {
            panic!("wdk-build could not configure the driver build: {e:?}");
        }
    }
}
