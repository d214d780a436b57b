//! WireGuard mode's own parsing of untrusted bytes: the inner packet of an opened datagram
//! (`source_and_len`, `destination`: what cryptokey routing and the AllowedIPs check read), and
//! the steering program run on every datagram the relay's port receives.
//!
//! Invariants: no panic on any bytes; where the validated view (`IpPacket::new_checked` over the
//! length the header claims) accepts the packet, the relay's quick reads agree with it on the
//! source and the destination; and the classic BPF program, run by the test kit's interpreter,
//! picks the worker its reference (`steering_index`) picks, for every byte string.
//!
//! Input: a big-endian u16 worker count (0 included: both sides treat it as 1), then the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::IpPacket;
use tunfwd::fuzzing::wireguard::{destination, source_and_len, steering_index, steering_program};
use tunfwd_testkit::cbpf;

fuzz_target!(|data: &[u8]| {
    let (workers, bytes) = match data {
        [high, low, rest @ ..] => (u32::from(u16::from_be_bytes([*high, *low])), rest),
        _ => (1, data),
    };
    let index = steering_index(bytes, workers);
    assert!(index < workers.max(1));
    assert_eq!(
        cbpf::run(&steering_program(workers), bytes),
        index,
        "program and reference disagree, {workers} workers"
    );

    let destination_read = destination(bytes);
    let Some((source, len)) = source_and_len(bytes) else {
        return;
    };
    assert!(
        destination_read.is_some(),
        "a header with a source has a destination"
    );
    let Some(packet) = bytes.get(..len) else {
        return;
    };
    if let Ok(view) = IpPacket::new_checked(packet) {
        assert_eq!(view.source(), source);
        assert_eq!(Some(view.destination()), destination_read);
    }
});
