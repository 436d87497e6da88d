//! Fuzz target `frame_decode`: see `cuwire_fuzz::frame_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cuwire_fuzz::frame_decode(data));
