#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::control_files(data));
