//! ECN and DSCP across the tunnel: RFC 6040 ("Tunnelling of Explicit Congestion Notification"),
//! normal mode. PURE.
//!
//! A congested router between the relays can only mark the *outer* header, the one it sees. For
//! the inner transport to learn of that mark, the encapsulator must expose the inner ECN field on
//! the outer header, and the decapsulator must carry a Congestion Experienced mark back into the
//! inner packet. Without both, an ECN-capable flow through the tunnel gets no marks at all and
//! falls back to finding congestion by loss.
//!
//! * **Encapsulation** ([`Marking::outer_tos`]): the outer ECN field is a copy of the inner one,
//!   CE included (RFC 6040 section 4.1, normal mode). Linux's own tunnels
//!   (`INET_ECN_encapsulate` in include/net/inet_ecn.h) turn an inner CE into an outer ECT(0)
//!   instead (the "full functionality" option of RFC 3168 section 9.1.1); either gives the same
//!   inner packet after decapsulation, since an inner CE stays CE. The outer DSCP is 0, a fixed
//!   value (`--tos N`), or the inner one (`--tos inherit`).
//! * **Decapsulation** ([`decapsulate`]): Figure 4 of RFC 6040, [`decapsulated_ecn`] below. An
//!   outer CE over an ECN-capable inner packet makes it CE; an outer CE over a Not-ECT inner
//!   packet drops it, since its transport cannot be told any other way; an outer ECT(1) over an
//!   inner ECT(0) makes it ECT(1). Everything else leaves the inner packet as it is. Linux's
//!   `INET_ECN_decapsulate` (include/net/inet_ecn.h) in current kernels gives the same table,
//!   the ECT(1) cell included: over an ECN-capable inner packet it sets CE for an outer CE, and
//!   for an outer ECT(1) calls `INET_ECN_set_ect1`, which turns an inner ECT(0) into ECT(1); a
//!   Not-ECT packet under an outer CE is dropped there too (`__INET_ECN_decapsulate` returns 2).
//!   The only difference is bookkeeping: Linux also reports a Not-ECT packet under an outer
//!   ECT(0) or ECT(1) as an ECN error (return value 1) and passes it on, as tunfwd does silently.
//!
//! The IPv4 header checksum is updated incrementally (RFC 1624); IPv6 has no header checksum.
//! The TCP and UDP checksums do not cover the TOS or traffic class, so nothing else changes.

use crate::wire::checksum::Sum;
use crate::wire::ip::field::{V4_CHECKSUM, V4_TOS};
use crate::wire::ip::{IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN};

/// The two ECN bits of the IPv4 TOS byte or the IPv6 traffic class (RFC 3168 section 5).
pub const ECN_MASK: u8 = 0b11;

/// An ECN codepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecn {
    NotEct = 0b00,
    Ect1 = 0b01,
    Ect0 = 0b10,
    Ce = 0b11,
}

impl Ecn {
    pub const ALL: [Ecn; 4] = [Ecn::NotEct, Ecn::Ect1, Ecn::Ect0, Ecn::Ce];

    /// The codepoint in the low two bits of a TOS / traffic class byte.
    pub fn of(tos: u8) -> Ecn {
        match tos & ECN_MASK {
            0b00 => Ecn::NotEct,
            0b01 => Ecn::Ect1,
            0b10 => Ecn::Ect0,
            _ => Ecn::Ce,
        }
    }

    pub fn bits(self) -> u8 {
        self as u8
    }
}

/// Where the outer DSCP comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterDscp {
    /// This TOS byte's DSCP bits (its ECN bits are zero; `--tos N`, 0 by default).
    Fixed(u8),
    /// The inner packet's DSCP (`--tos inherit`).
    Inherit,
}

/// How the outer TOS / traffic class is made from the inner one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marking {
    pub dscp: OuterDscp,
    /// Propagate ECN: copy the inner ECN field out on encapsulation and apply RFC 6040 on
    /// decapsulation. Off (`--no-ecn`), the outer ECN field is Not-ECT and received marks are
    /// ignored.
    pub ecn: bool,
}

impl Marking {
    /// Outer DSCP 0, ECN propagated: the default.
    pub const DEFAULT: Marking = Marking {
        dscp: OuterDscp::Fixed(0),
        ecn: true,
    };

    /// The outer TOS / traffic class byte for a packet whose own is `inner_tos`.
    pub fn outer_tos(self, inner_tos: u8) -> u8 {
        let dscp = match self.dscp {
            OuterDscp::Fixed(tos) => tos & !ECN_MASK,
            OuterDscp::Inherit => inner_tos & !ECN_MASK,
        };
        let ecn = if self.ecn {
            encapsulated_ecn(Ecn::of(inner_tos))
        } else {
            Ecn::NotEct
        };
        dscp | ecn.bits()
    }

    /// Whether every outer byte is 0, whatever the inner packet (so no send needs a TOS control
    /// message and the inner header need not be read).
    pub fn always_zero(self) -> bool {
        !self.ecn && self.dscp == OuterDscp::Fixed(0)
    }
}

/// The outer ECN field for an inner one: a copy, CE included (RFC 6040 section 4.1).
pub fn encapsulated_ecn(inner: Ecn) -> Ecn {
    inner
}

/// RFC 6040 Figure 4: the inner ECN field after decapsulation, or `None` to drop the packet.
pub fn decapsulated_ecn(outer: Ecn, inner: Ecn) -> Option<Ecn> {
    match (inner, outer) {
        (Ecn::NotEct, Ecn::Ce) => None,
        (Ecn::NotEct, _) => Some(Ecn::NotEct),
        (Ecn::Ect0, Ecn::Ect1) => Some(Ecn::Ect1),
        (Ecn::Ect0 | Ecn::Ect1, Ecn::Ce) => Some(Ecn::Ce),
        (inner, _) => Some(inner),
    }
}

/// The TOS (IPv4) or traffic class (IPv6) of `packet`; 0 when it is too short to have one or is
/// neither version (validation drops those anyway).
pub fn inner_tos(packet: &[u8]) -> u8 {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(V4_TOS).copied().unwrap_or(0),
        // The traffic class spans the low nibble of byte 0 and the high nibble of byte 1
        // (RFC 8200 section 3).
        Some(6) => packet
            .get(1)
            .map_or(0, |&second| packet[0] << 4 | second >> 4),
        _ => 0,
    }
}

/// What [`decapsulate`] did to an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decapsulated {
    /// The ECN field stays as it was.
    Unchanged,
    /// The ECN field was rewritten to this codepoint (and the IPv4 header checksum with it).
    Marked(Ecn),
    /// Outer CE over a Not-ECT inner packet: drop it (RFC 6040 section 4.2).
    Drop,
}

/// Applies the outer ECN field `outer_tos` to the inner `packet` in place (RFC 6040 section 4.2).
/// `packet` must be a validated IPv4 or IPv6 packet (at least its fixed header); anything else is
/// left alone.
///
/// An outer Not-ECT or ECT(0) changes no inner packet, so a receive whose outer marks are those
/// (nearly every one) costs one comparison here.
///
/// Only the ECN bits and the IPv4 header checksum change: no length, no header's place. So what
/// `coalesce::validate` found in the packet before (its `Transport`) still holds after, and the
/// worker validates each datagram once, before this.
pub fn decapsulate(outer_tos: u8, packet: &mut [u8]) -> Decapsulated {
    let outer = Ecn::of(outer_tos);
    if matches!(outer, Ecn::NotEct | Ecn::Ect0) {
        return Decapsulated::Unchanged;
    }
    let ipv4 = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= IPV4_MIN_HEADER_LEN => true,
        Some(6) if packet.len() >= IPV6_HEADER_LEN => false,
        _ => return Decapsulated::Unchanged,
    };
    let inner = Ecn::of(inner_tos(packet));
    match decapsulated_ecn(outer, inner) {
        None => Decapsulated::Drop,
        Some(ecn) if ecn == inner => Decapsulated::Unchanged,
        Some(ecn) => {
            if ipv4 {
                set_ipv4_ecn(packet, ecn);
            } else {
                // The traffic class spans bytes 0 and 1; its ECN bits are bits 5 and 4 of byte 1.
                packet[1] = (packet[1] & !(ECN_MASK << 4)) | ecn.bits() << 4;
            }
            Decapsulated::Marked(ecn)
        }
    }
}

/// Rewrites the ECN bits of an IPv4 header, updating its checksum incrementally: the TOS is the
/// low byte of the header's first 16-bit word, so HC' = ~(~HC + ~m + m') with m and m' that word
/// before and after (RFC 1624 equation 3).
fn set_ipv4_ecn(header: &mut [u8], ecn: Ecn) {
    let word = |header: &[u8]| u16::from_be_bytes([header[0], header[V4_TOS]]);
    let old_word = word(header);
    header[V4_TOS] = (header[V4_TOS] & !ECN_MASK) | ecn.bits();
    let new_word = word(header);
    let checksum = u16::from_be_bytes(header[V4_CHECKSUM].try_into().expect("2 bytes"));
    let updated = Sum(!checksum).sub_u16(old_word).add_u16(new_word).finish();
    header[V4_CHECKSUM].copy_from_slice(&updated.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::coalesce::{Policy, Run, plan_segments};
    use crate::offload::test_packets::{Spec, assert_valid, build, gro_buffer};

    fn packet(ipv6: bool, tos: u8) -> Vec<u8> {
        build(&Spec {
            ipv6,
            tos,
            payload_len: 200,
            ..Spec::default()
        })
    }

    /// RFC 6040 Figure 4, row by row (inner), column by column (outer: Not-ECT, ECT(0), ECT(1),
    /// CE). `None` is a drop.
    const FIGURE_4: [(Ecn, [Option<Ecn>; 4]); 4] = {
        use Ecn::*;
        [
            (NotEct, [Some(NotEct), Some(NotEct), Some(NotEct), None]),
            (Ect0, [Some(Ect0), Some(Ect0), Some(Ect1), Some(Ce)]),
            (Ect1, [Some(Ect1), Some(Ect1), Some(Ect1), Some(Ce)]),
            (Ce, [Some(Ce), Some(Ce), Some(Ce), Some(Ce)]),
        ]
    };
    const FIGURE_4_OUTER: [Ecn; 4] = [Ecn::NotEct, Ecn::Ect0, Ecn::Ect1, Ecn::Ce];

    #[test]
    fn the_table_is_rfc_6040_figure_4() {
        for (inner, row) in FIGURE_4 {
            for (outer, expected) in FIGURE_4_OUTER.iter().zip(row) {
                assert_eq!(
                    decapsulated_ecn(*outer, inner),
                    expected,
                    "outer {outer:?}, inner {inner:?}"
                );
            }
        }
    }

    /// Every outer x inner combination on real IPv4 and IPv6 packets, with DSCP bits around the
    /// ECN field that must survive: the result is what the table says, the packet stays valid by
    /// etherparse (the IPv4 header checksum above all), and nothing but the ECN bits changes.
    #[test]
    fn decapsulation_applies_the_table_to_ipv4_and_ipv6_packets() {
        for ipv6 in [false, true] {
            for (inner, row) in FIGURE_4 {
                for (outer, expected) in FIGURE_4_OUTER.iter().zip(row) {
                    let dscp = 0xb8; // EF, which must survive
                    let original = packet(ipv6, dscp | inner.bits());
                    let mut p = original.clone();
                    let outer_tos = 0x28 | outer.bits(); // outer DSCP plays no part
                    let result = decapsulate(outer_tos, &mut p);
                    let at = format!("ipv6={ipv6} outer {outer:?} inner {inner:?}");
                    match expected {
                        None => {
                            assert_eq!(result, Decapsulated::Drop, "{at}");
                            assert_eq!(p, original, "{at}: a dropped packet is not touched");
                            continue;
                        }
                        Some(ecn) if ecn == inner => {
                            assert_eq!(result, Decapsulated::Unchanged, "{at}")
                        }
                        Some(ecn) => assert_eq!(result, Decapsulated::Marked(ecn), "{at}"),
                    }
                    let ecn = expected.unwrap();
                    assert_valid(&p);
                    let sliced = etherparse::SlicedPacket::from_ip(&p).unwrap();
                    let (dscp_seen, ecn_seen) = match sliced.net {
                        Some(etherparse::NetSlice::Ipv4(ip)) => {
                            let h = ip.header();
                            (h.dcp().value(), h.ecn().value())
                        }
                        Some(etherparse::NetSlice::Ipv6(ip)) => {
                            let tc = ip.header().traffic_class();
                            (tc >> 2, tc & 3)
                        }
                        _ => panic!("{at}: not IP"),
                    };
                    assert_eq!(ecn_seen, ecn.bits(), "{at}");
                    assert_eq!(dscp_seen, dscp >> 2, "{at}: DSCP kept");
                    let changed: Vec<usize> =
                        (0..p.len()).filter(|&i| p[i] != original[i]).collect();
                    let allowed: &[usize] = if ipv6 { &[1] } else { &[1, 10, 11] };
                    assert!(
                        changed.iter().all(|i| allowed.contains(i)),
                        "{at}: bytes {changed:?} changed"
                    );
                    if ipv6 {
                        assert_eq!(p[0], original[0], "{at}: the version and DSCP byte");
                        assert_eq!(p[1] & 0x0f, original[1] & 0x0f, "{at}: the flow label");
                    }
                }
            }
        }
    }

    /// The incremental IPv4 checksum update agrees with a full recomputation for every TOS and
    /// every target codepoint, whatever the other header bytes make the checksum (including the
    /// values where one's-complement arithmetic has two zeros).
    #[test]
    fn the_incremental_checksum_matches_a_recomputation() {
        for id in [0u16, 1, 0x7fff, 0xfffe, 0xffff, 0x1234] {
            for tos in 0..=255u8 {
                for ecn in Ecn::ALL {
                    let mut p = build(&Spec {
                        tos,
                        id,
                        ..Spec::default()
                    });
                    set_ipv4_ecn(&mut p, ecn);
                    let mut fresh = p.clone();
                    crate::offload::set_ipv4_header_checksum(&mut fresh[..20]);
                    let at = format!("id {id:#x} tos {tos:#x} -> {ecn:?}");
                    assert_eq!(p[1], (tos & !3) | ecn.bits(), "{at}");
                    assert_eq!(Sum::of(&p[..20]).0, 0xffff, "{at}: header sums to all ones");
                    // The recomputed header is the updated one, checksum bytes included.
                    assert_eq!(p[..20], fresh[..20], "{at}: incremental vs recomputed");
                }
            }
        }
    }

    #[test]
    fn encapsulation_copies_ecn_and_places_the_dscp() {
        let inherit = Marking {
            dscp: OuterDscp::Inherit,
            ecn: true,
        };
        let fixed = Marking {
            dscp: OuterDscp::Fixed(0xb8),
            ecn: true,
        };
        let no_ecn = Marking {
            dscp: OuterDscp::Fixed(0),
            ecn: false,
        };
        for inner in Ecn::ALL {
            let tos = 0x48 | inner.bits();
            assert_eq!(Marking::DEFAULT.outer_tos(tos), inner.bits(), "{inner:?}");
            assert_eq!(inherit.outer_tos(tos), tos, "{inner:?}");
            assert_eq!(fixed.outer_tos(tos), 0xb8 | inner.bits(), "{inner:?}");
            assert_eq!(no_ecn.outer_tos(tos), 0, "{inner:?}");
        }
        assert!(no_ecn.always_zero());
        assert!(!Marking::DEFAULT.always_zero());
        assert!(
            !Marking {
                ecn: false,
                ..fixed
            }
            .always_zero()
        );
        // The inner byte is read from either version's header.
        assert_eq!(inner_tos(&packet(false, 0xb9)), 0xb9);
        assert_eq!(inner_tos(&packet(true, 0xb9)), 0xb9);
        assert_eq!(inner_tos(&[0x45]), 0);
        assert_eq!(inner_tos(&[]), 0);
        assert_eq!(inner_tos(&[0x55, 3]), 0);
    }

    /// Marking runs before the coalescer plans a buffer, so the coalescer sees the marks: CE and
    /// non-CE segments of one flow in one GRO buffer never merge (the merged packet would carry
    /// the head's TOS for all of them), and once an outer CE has marked them all, they do.
    #[test]
    fn ce_and_non_ce_segments_of_one_buffer_do_not_merge() {
        for ipv6 in [false, true] {
            let segment = |i: usize, ecn: Ecn| {
                build(&Spec {
                    ipv6,
                    tos: ecn.bits(),
                    seq: 1000 + 100 * i as u32,
                    id: 7 + i as u16,
                    ..Spec::default()
                })
            };
            let packets = vec![
                segment(0, Ecn::Ect0),
                segment(1, Ecn::Ect0),
                segment(2, Ecn::Ce),
                segment(3, Ecn::Ect0),
            ];
            let mut runs = Vec::new();
            for (outer, expected) in [
                (Ecn::NotEct, vec![2, 1, 1]),
                (Ecn::Ect0, vec![2, 1, 1]),
                (Ecn::Ce, vec![4]),
            ] {
                // Validated first, as the worker does; the transports found then still hold
                // after the marks are rewritten (`plan_segments` checks that in debug builds).
                let (mut buffer, segments) = gro_buffer(&packets);
                for segment in &segments {
                    let _ = decapsulate(outer.bits(), &mut buffer[segment.range()]);
                }
                plan_segments(&buffer, &segments, Policy::ALL, &mut runs);
                let counts: Vec<usize> = runs.iter().map(|r: &Run| r.count).collect();
                assert_eq!(counts, expected, "ipv6={ipv6}, outer {outer:?}");
            }
        }
    }
}
