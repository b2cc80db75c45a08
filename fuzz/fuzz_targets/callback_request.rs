#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| web::fuzzing::callback_request(data));
