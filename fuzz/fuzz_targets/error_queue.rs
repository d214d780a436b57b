//! The control data of an error-queue entry (`MSG_ERRQUEUE`), arbitrary bytes, through
//! `wire::cmsg::parse_queued_error`, which reads what ICMP errors (anyone's, spoofed ones too)
//! made the kernel queue. No panic, and what it reports is consistent: one entry is one error at
//! most, of one kind; a path MTU only from an error that says where it came from (an ICMP message,
//! counted as one, or the local stack, never counted as ICMP), and never both.
//!
//! The input's first byte also cuts a name (the quoted datagram's destination) off its end for
//! `parse_queued_error_about`, with a fixed peer: its answer is either the plain parse's or one
//! error set apart as about somewhere else, and only an ICMP error is ever set apart.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use tunfwd::fuzzing::{QueuedErrors, parse_queued_error, parse_queued_error_about};

fuzz_target!(|input: &[u8]| {
    let (cut, control) = input
        .split_first()
        .map_or((0, input), |(c, rest)| (*c, rest));
    let name_len = usize::from(cut % 29).min(control.len());
    let (whole, name) = control.split_at(control.len() - name_len);
    let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    let plain = parse_queued_error(whole);
    let about = parse_queued_error_about(whole, name, Some(peer));
    let set_apart = QueuedErrors {
        elsewhere: 1,
        ..QueuedErrors::default()
    };
    assert!(
        about == plain || about == set_apart,
        "{about:?} against {plain:?}"
    );
    if about == set_apart {
        assert_eq!(
            plain.icmp_count(),
            1,
            "set apart, but no ICMP error: {plain:?}"
        );
    }
    assert_eq!(parse_queued_error_about(whole, name, None), plain);
    let found = parse_queued_error(control);
    assert_eq!(
        found.count, 0,
        "parsing one entry reads nothing from a socket"
    );
    assert!(found.icmp_count() <= 1, "{found:?}");
    assert!(found.icmp.iter().filter(|n| **n > 0).count() <= 1);
    if found.icmp_path_mtu.is_some() {
        assert_eq!(
            found.icmp_count(),
            1,
            "an ICMP path MTU from no ICMP error: {found:?}"
        );
        assert!(found.local_path_mtu.is_none());
    }
    if found.local_path_mtu.is_some() {
        assert_eq!(
            found.icmp_count(),
            0,
            "a local limit counted as ICMP: {found:?}"
        );
    }
    for mtu in [found.icmp_path_mtu, found.local_path_mtu]
        .into_iter()
        .flatten()
    {
        assert!(mtu > 0);
    }
});
