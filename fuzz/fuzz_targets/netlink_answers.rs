//! A datagram from rtnetlink, arbitrary bytes, through `sys::netlink::parse_answers` and the
//! attribute walk, which read the kernel's answers about links and routes (the egress device's
//! MTU among them). No panic; only messages of the request's sequence number and port are kept,
//! each a part of the datagram; attributes never run past their message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::netlink::{self, HEADER_LEN};

fuzz_target!(|input: (u32, u32, bool, &[u8])| {
    let (sequence, port, dump, datagram) = input;
    let mut found = Vec::new();
    let _ = netlink::parse_answers(datagram, sequence, port, dump, &mut found);
    let total: usize = found.iter().map(|m| m.payload.len() + HEADER_LEN).sum();
    assert!(total <= datagram.len(), "more kept than was there");
    if !dump {
        assert!(found.len() <= 1, "a plain request has one answer");
    }
    for message in &found {
        let mut seen = 0;
        for (_, payload) in netlink::attributes(&message.payload) {
            seen += payload.len();
            assert!(seen <= message.payload.len());
        }
        let _ = netlink::route_interface(message);
        let _ = netlink::link_mtu(message);
    }
});
