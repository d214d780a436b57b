//! A UDP receive buffer, as anyone on the path may fill it (flags, a `UDP_GRO` size, the outer
//! TOS and the payload all from the fuzz bytes), through `relay::receive::plan`: validation,
//! ECN decapsulation, control messages, coalescing plans. No panic, every datagram counted
//! exactly once, and the plan's segments and runs consistent (`tunfwd::fuzzing::receive_plan`
//! checks them).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    tunfwd::fuzzing::receive_plan(input);
});
