//! Fuzz target `dispatch`: see `cuwire_fuzz::dispatch`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cuwire_fuzz::dispatch(data));
