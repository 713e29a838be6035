//! Fuzz target `envelope`: see `tributary_fuzz::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tributary_fuzz::envelope(data));
