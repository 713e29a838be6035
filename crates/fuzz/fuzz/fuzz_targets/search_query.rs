//! Fuzz target `search_query`: see `tributary_fuzz::search_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tributary_fuzz::search_query(data));
