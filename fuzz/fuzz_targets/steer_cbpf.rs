//! A datagram from the peer: its validation (`IpPacket::new_checked`, whose accessors promise not
//! to panic afterwards) and its steering. `flow_index` is the reference for the classic BPF
//! program the kernel runs on the reuseport group (net/core/sock_reuseport.c,
//! `run_bpf_filter`), so the program, run by the test kit's interpreter (`cbpf`) over the same bytes
//! and worker count, must give the same worker, for every byte string, valid or not. And for a
//! valid packet the key is symmetric: with addresses and ports swapped it is unchanged.
//!
//! Input: a big-endian u16 worker count (0 included: both sides treat it as 1), then the datagram.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::{IpPacket, IpVersion, flow_index, flow_key, reuseport_program};
use tunfwd_testkit::cbpf;

fuzz_target!(|data: &[u8]| {
    let (workers, datagram) = match data {
        [high, low, rest @ ..] => (u32::from(u16::from_be_bytes([*high, *low])), rest),
        _ => (1, data),
    };
    let index = flow_index(datagram, workers);
    assert!(index < workers.max(1));
    let program = reuseport_program(workers);
    assert_eq!(
        cbpf::run(&program, datagram),
        index,
        "program and flow_index disagree, {workers} workers"
    );

    let Ok(packet) = IpPacket::new_checked(datagram) else {
        return;
    };
    let (version, protocol, header_len) =
        (packet.version(), packet.protocol(), packet.header_len());
    let _ = (packet.source(), packet.destination(), packet.is_fragment());
    assert_eq!(packet.total_len(), datagram.len());
    assert!(header_len <= datagram.len());

    // Swap the addresses, and the ports where the key reads them (TCP or UDP, not a fragment).
    let mut reverse = datagram.to_vec();
    let (address, address_len) = match version {
        IpVersion::V4 => (12, 4),
        IpVersion::V6 => (8, 16),
    };
    let (source, destination) = reverse[address..].split_at_mut(address_len);
    source.swap_with_slice(&mut destination[..address_len]);
    if (protocol == 6 || protocol == 17) && !packet.is_fragment() && header_len + 4 <= reverse.len()
    {
        let ports = &mut reverse[header_len..header_len + 4];
        ports.rotate_left(2);
    }
    assert_eq!(
        flow_key(&reverse),
        flow_key(datagram),
        "the key is symmetric"
    );
});
