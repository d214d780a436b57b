//! An inner packet from the TUN (anyone behind the relay writes those bytes) and an MTU (the
//! input's first two bytes, big-endian), through the ICMP "fragmentation needed" / "packet too
//! big" builder (`offload::icmp`). No panic, and:
//! - a reply exactly when `may_answer` allows one, and `too_big_action` says `Reply` only with
//!   an MTU that may be told;
//! - the reply fits its limit (576 bytes for IPv4, 1280 for IPv6), goes from the packet's
//!   destination to its source, has the right lengths, type, code and MTU;
//! - both checksums verify, summed by the test kit's own RFC 1071 sum, not the product's;
//! - it quotes the packet's first bytes unchanged, as many as fit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunfwd::fuzzing::{
    IPV4_ERROR_MAX, IPV6_MIN_MTU, MAX_REPLY, TooBig, may_answer, too_big_action, too_big_reply,
};
use tunfwd_testkit::packets::{add_sums, ones_complement_sum, pseudo_header_sum};

fuzz_target!(|input: &[u8]| {
    let [high, low, packet @ ..] = input else {
        return;
    };
    let mtu = usize::from(u16::from_be_bytes([*high, *low]));
    let mut out = [0u8; MAX_REPLY];
    let built = too_big_reply(packet, mtu, &mut out);
    assert_eq!(built.is_some(), may_answer(packet, mtu));
    if let TooBig::Reply { mtu } = too_big_action(packet, packet.len(), mtu) {
        assert!(
            may_answer(packet, mtu),
            "Reply with an MTU that may not be told: {mtu}"
        );
    }
    let Some(len) = built else {
        return;
    };
    let reply = &out[..len];
    let quote_at = if packet[0] >> 4 == 4 {
        assert!(len <= IPV4_ERROR_MAX);
        assert_eq!(usize::from(u16::from_be_bytes([reply[2], reply[3]])), len);
        assert_eq!((reply[0], reply[9]), (0x45, 1), "IPv4, ICMP");
        assert_eq!(
            &reply[12..16],
            &packet[16..20],
            "from the packet's destination"
        );
        assert_eq!(&reply[16..20], &packet[12..16], "to its source");
        assert_eq!(
            ones_complement_sum(&reply[..20]),
            0xffff,
            "IPv4 header checksum"
        );
        let icmp = &reply[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
        assert_eq!(usize::from(u16::from_be_bytes([icmp[6], icmp[7]])), mtu);
        assert_eq!(ones_complement_sum(icmp), 0xffff, "ICMP checksum");
        28
    } else {
        assert!(len <= IPV6_MIN_MTU);
        assert_eq!(
            usize::from(u16::from_be_bytes([reply[4], reply[5]])),
            len - 40
        );
        assert_eq!((reply[0] >> 4, reply[6]), (6, 58), "IPv6, ICMPv6");
        assert_eq!(
            &reply[8..24],
            &packet[24..40],
            "from the packet's destination"
        );
        assert_eq!(&reply[24..40], &packet[8..24], "to its source");
        let icmp = &reply[40..];
        assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
        let told = u32::from_be_bytes(icmp[4..8].try_into().expect("4 bytes"));
        assert_eq!(told as usize, mtu);
        let pseudo = pseudo_header_sum(&reply[8..24], &reply[24..40], 58, icmp.len());
        let sum = add_sums(pseudo, ones_complement_sum(icmp));
        assert_eq!(sum, 0xffff, "ICMPv6 checksum");
        48
    };
    let quoted = &reply[quote_at..];
    assert!(!quoted.is_empty());
    assert_eq!(
        quoted,
        &packet[..quoted.len()],
        "the quote is the packet's start"
    );
    let full = len == IPV4_ERROR_MAX || len == IPV6_MIN_MTU;
    assert!(
        quoted.len() == packet.len() || full,
        "quoted {} of {}",
        quoted.len(),
        packet.len()
    );
});
