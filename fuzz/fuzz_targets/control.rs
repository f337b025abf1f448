//! Fuzz target `control`: every IOCTL through the control decoder of a host with drivers and records
//! (body: `iosv_tests::fuzz::control`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iosv_tests::fuzz::control(data);
});
