//! The RPZ parser on arbitrary text: errors with lines, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = cleanpipe::policy::rpz::parse("fuzz.rpz", &text, None);
    let _ = cleanpipe::policy::rpz::parse("fuzz.rpz", &text, Some("rpz.example"));
});
