//! Fuzz target `frame`: the host endpoint's frame decoders, server and client side
//! (body: `iosv_tests::fuzz::frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iosv_tests::fuzz::frame(data);
});
