//! Fuzz target `scenario`: the TOML scenario parser
//! (body: `iosv_tests::fuzz::scenario`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iosv_tests::fuzz::scenario(data);
});
