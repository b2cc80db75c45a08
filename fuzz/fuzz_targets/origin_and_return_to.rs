#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| web::fuzzing::origin_and_return_to(data));
