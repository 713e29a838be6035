//! Fuzz target `ingest_body`: see `tributary_fuzz::ingest_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tributary_fuzz::ingest_body(data));
