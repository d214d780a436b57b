//! The control data of an error-queue entry (`MSG_ERRQUEUE`), arbitrary bytes, through
//! `wire::cmsg::parse_queued_error`, which reads what ICMP errors (anyone's, spoofed ones too)
//! made the kernel queue. No panic, and what it reports is consistent: one entry is one error at
//! most, of one kind; a path MTU only from an error that says where it came from (an ICMP message,
//! counted as one, or the local stack, never counted as ICMP), and never both.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::parse_queued_error;

fuzz_target!(|control: &[u8]| {
    let found = parse_queued_error(control);
    assert_eq!(found.count, 0, "parsing one entry reads nothing from a socket");
    assert!(found.icmp_count() <= 1, "{found:?}");
    assert!(found.icmp.iter().filter(|n| **n > 0).count() <= 1);
    if found.icmp_path_mtu.is_some() {
        assert_eq!(found.icmp_count(), 1, "an ICMP path MTU from no ICMP error: {found:?}");
        assert!(found.local_path_mtu.is_none());
    }
    if found.local_path_mtu.is_some() {
        assert_eq!(found.icmp_count(), 0, "a local limit counted as ICMP: {found:?}");
    }
    for mtu in [found.icmp_path_mtu, found.local_path_mtu].into_iter().flatten() {
        assert!(mtu > 0);
    }
});
