#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| web::fuzzing::api_key_header(data));
