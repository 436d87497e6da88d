//! Fuzz target `handshake`: see `cuwire_fuzz::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cuwire_fuzz::handshake(data));
