//! Build script of `iosv`.
//!
//! On a Windows host with feature `kernel`, configures the driver build with wdk-build
//! (bindings, link arguments, the WDK environment). Everywhere else it does nothing: the
//! portable core and the user-mode host need no configuration, and wdk-build refuses to
//! run on non-Windows hosts.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(all(windows, feature = "kernel"))]
    {
        if let Err(e) = wdk_build::configure_wdk_binary_build() {
            panic!("wdk-build could not configure the driver build: {e:?}");
        }
    }
}
