//! Fuzz target `pe`: the PE parser and the interception plan (attach, detach) over arbitrary images
//! (body: `iosv_tests::fuzz::pe`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iosv_tests::fuzz::pe(data);
});
