//! Any datagram through tunfwd-wireguard's an initiator whose initiation is in flight (responses and cookie replies): what a WireGuard relay runs on every datagram
//! from the network. No panic, and the invariants `tunfwd_wireguard::fuzzing::initiator_consume` checks hold.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|datagram: &[u8]| {
    tunfwd_wireguard::fuzzing::initiator_consume(datagram);
});
