//! Any datagram through tunfwd-wireguard's opening a type-4 transport datagram with a fixed keypair (header, counter, AEAD, replay window): what a WireGuard relay runs on every datagram
//! from the network. No panic, and the invariants `tunfwd_wireguard::fuzzing::open_transport` checks hold.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|datagram: &[u8]| {
    tunfwd_wireguard::fuzzing::open_transport(datagram);
});
