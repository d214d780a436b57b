//! Any datagram through tunfwd-wireguard's a responder with one configured peer, under no load and under load (mac1, cookies, the Noise handshake): what a WireGuard relay runs on every datagram
//! from the network. No panic, and the invariants `tunfwd_wireguard::fuzzing::responder_consume` checks hold.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|datagram: &[u8]| {
    tunfwd_wireguard::fuzzing::responder_consume(datagram);
});
