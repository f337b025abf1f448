//! Fuzz target `frame`: the host endpoint's frame codec `iosv::frame`, used by the server
//! and the client alike (body: `iosv_tests::fuzz::frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iosv_tests::fuzz::frame(data);
});
