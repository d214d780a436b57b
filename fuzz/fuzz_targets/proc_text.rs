//! Text from /proc that other local users write (a command line, `comm`) through the parsers
//! that name a resource's holder in tunfwd's messages: escaping for one log line, the command,
//! /proc/net/udp rows, a TUN fd's fdinfo, a process's stat and status. No panic, and nothing
//! unescaped reaches a message (`tunfwd::fuzzing::fuzz_proc_text` checks it).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    tunfwd::fuzzing::fuzz_proc_text(input);
});
