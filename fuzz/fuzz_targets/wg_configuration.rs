//! Any text through tunfwd-wireguard's two configuration parsers: the UAPI `set=1` body (what a
//! local client writes to the control socket) and the `wg setconf` file format. No panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        tunfwd_wireguard::fuzzing::parse_configuration(text);
    }
});
