//! The TCP (RFC 9293) or UDP (RFC 768) header behind an IP header: where it starts, behind IPv4
//! options or IPv6 extension headers, and how long it is. PURE.
//!
//! One set of rules serves both directions. [`Transport::parse`] takes any bytes (a super-packet
//! read from the TUN, whose length fields the splitter rewrites and so does not check);
//! [`IpPacket::transport`](super::IpPacket::transport) takes a packet `new_checked` has validated
//! against its datagram and skips what that already checked. Both end in
//! `Transport::behind_ip_header`, so the two cannot disagree on where a header is.

use super::checksum::{Sum, pseudo_header_v4, pseudo_header_v6};
use super::ip::{self, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, IpVersion, be16, next_header};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const TCP_MIN_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    #[cfg(test)]
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    #[cfg(test)]
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Where the fields are, counted from the start of the TCP or UDP header. A `usize` is a one-byte
/// field; a range, a wider one (network order).
pub mod field {
    use core::ops::Range;

    /// Both protocols start with the source and destination ports.
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const PORTS: Range<usize> = 0..4;

    /// TCP (RFC 9293 section 3.1).
    pub const TCP_SEQ: Range<usize> = 4..8;
    pub const TCP_ACK: Range<usize> = 8..12;
    /// Data offset (high nibble), three reserved bits and AE.
    pub const TCP_DATA_OFFSET: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_WINDOW: Range<usize> = 14..16;
    pub const TCP_CHECKSUM: Range<usize> = 16..18;
    pub const TCP_URGENT: Range<usize> = 18..20;

    /// UDP (RFC 768).
    pub const UDP_LENGTH: Range<usize> = 4..6;
    pub const UDP_CHECKSUM: Range<usize> = 6..8;
}

/// Where the headers of a TCP or UDP packet are. Built by [`Transport::parse`] or
/// [`IpPacket::transport`](super::IpPacket::transport), which check that they are in bounds; no
/// method panics afterwards on the buffer it was parsed from, nor on a copy of its first
/// [`Transport::header_len`] bytes.
///
/// It describes the layout only, so it stays true of a packet whose TOS / traffic class (and IPv4
/// header checksum) are rewritten after parsing, as ECN decapsulation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub ipv6: bool,
    /// Where the TCP or UDP header starts: the IP header with any IPv4 options or IPv6 extension
    /// headers.
    pub ip_header_len: usize,
    pub protocol: u8,
    pub l4_header_len: usize,
}

impl Transport {
    /// Parses the IP and TCP/UDP headers of `packet`.
    ///
    /// IPv4 options are allowed; fragments are not (they are never segmented or merged). IPv6
    /// may carry, in the order of RFC 8200 section 4.1, a Hop-by-Hop Options header (first only),
    /// Destination Options headers and a Routing header whose Segments Left is 0. A Routing
    /// header with segments left is refused: the TCP/UDP pseudo-header then takes the final
    /// destination, the last address of the routing header (RFC 8200 section 8.1), not the
    /// destination in the IPv6 header, and [`Transport::pseudo_header`] does not look for it. A
    /// Fragment header or any other next header (AH, ESP, ...) is refused as well. A Home Address
    /// destination option (RFC 6275) would also change the pseudo-header; it is not looked for.
    ///
    /// The IPv4 total length and IPv6 payload length are not read: a super-packet's may be
    /// anything (the splitter rewrites them). A received packet's are checked by
    /// [`IpPacket::new_checked`](super::IpPacket::new_checked), and its
    /// [`IpPacket::transport`](super::IpPacket::transport) applies these rules after it.
    pub fn parse(packet: &[u8]) -> Option<Transport> {
        let (version, header_len) = ip::header_bounds(packet).ok()?;
        Transport::behind_ip_header(packet, version, header_len)
    }

    /// The rules of [`Transport::parse`] past the fixed header, for a `packet` of `version` whose
    /// IP header as its fixed part says it (`header_len`: IHL * 4, or 40) is known to be in
    /// bounds ([`ip::header_bounds`]).
    pub(super) fn behind_ip_header(
        packet: &[u8],
        version: IpVersion,
        header_len: usize,
    ) -> Option<Transport> {
        let (ipv6, ip_header_len, protocol) = match version {
            IpVersion::V4 => {
                if ip::is_ipv4_fragment(packet) {
                    return None;
                }
                (false, header_len, packet[ip::field::V4_PROTOCOL])
            }
            IpVersion::V6 => {
                let (len, protocol) = ipv6_upper_layer(packet)?;
                (true, len, protocol)
            }
        };
        let l4_header_len = match protocol {
            PROTO_TCP => {
                let offset = *packet.get(ip_header_len + field::TCP_DATA_OFFSET)?;
                let len = usize::from(offset >> 4) * 4;
                if len < TCP_MIN_HEADER {
                    return None;
                }
                len
            }
            PROTO_UDP => UDP_HEADER,
            _ => return None,
        };
        if packet.len() < ip_header_len + l4_header_len {
            return None;
        }
        Some(Transport {
            ipv6,
            ip_header_len,
            protocol,
            l4_header_len,
        })
    }

    pub fn version(&self) -> IpVersion {
        if self.ipv6 {
            IpVersion::V6
        } else {
            IpVersion::V4
        }
    }

    /// Whether the IP header is longer than the fixed one: IPv4 options or IPv6 extension headers.
    pub fn has_ip_options(&self) -> bool {
        self.ip_header_len
            != if self.ipv6 {
                IPV6_HEADER_LEN
            } else {
                IPV4_MIN_HEADER_LEN
            }
    }

    pub fn header_len(&self) -> usize {
        self.ip_header_len + self.l4_header_len
    }

    /// Offset of the TCP or UDP checksum field from the start of the L4 header.
    pub fn checksum_offset(&self) -> usize {
        if self.protocol == PROTO_TCP {
            field::TCP_CHECKSUM.start
        } else {
            field::UDP_CHECKSUM.start
        }
    }

    /// Where `field` (one of [`field`]'s ranges) of the TCP or UDP header is in the packet.
    pub fn l4_field(&self, field: core::ops::Range<usize>) -> core::ops::Range<usize> {
        self.ip_header_len + field.start..self.ip_header_len + field.end
    }

    /// The pseudo-header sum for an L4 segment of `l4_len` bytes.
    pub fn pseudo_header(&self, packet: &[u8], l4_len: usize) -> Sum {
        use ip::field::{V4_DST, V4_SRC, V6_DST, V6_SRC};
        if self.ipv6 {
            let src: [u8; 16] = packet[V6_SRC].try_into().expect("16 bytes");
            let dst: [u8; 16] = packet[V6_DST].try_into().expect("16 bytes");
            pseudo_header_v6(
                Ipv6Addr::from(src),
                Ipv6Addr::from(dst),
                self.protocol,
                l4_len as u32,
            )
        } else {
            let src: [u8; 4] = packet[V4_SRC].try_into().expect("4 bytes");
            let dst: [u8; 4] = packet[V4_DST].try_into().expect("4 bytes");
            pseudo_header_v4(
                Ipv4Addr::from(src),
                Ipv4Addr::from(dst),
                self.protocol,
                l4_len as u16,
            )
        }
    }

    /// Sets the IP length field for a packet whose L4 part (header and payload) is `l4_len` bytes,
    /// and recomputes the IPv4 header checksum.
    pub fn set_ip_len(&self, header: &mut [u8], l4_len: usize) {
        if self.ipv6 {
            // The payload length counts the extension headers too.
            let payload = (self.ip_header_len - IPV6_HEADER_LEN + l4_len) as u16;
            header[ip::field::V6_PAYLOAD_LEN].copy_from_slice(&payload.to_be_bytes());
        } else {
            let total = (self.ip_header_len + l4_len) as u16;
            header[ip::field::V4_TOTAL_LEN].copy_from_slice(&total.to_be_bytes());
            ip::set_ipv4_header_checksum(&mut header[..self.ip_header_len]);
        }
    }
}

/// Walks the IPv6 extension headers of `packet` (an IPv6 packet of at least 40 bytes) that
/// [`Transport::parse`] accepts. Returns where the upper-layer header starts and its protocol
/// number; `None` for a header out of bounds or one that is refused.
fn ipv6_upper_layer(packet: &[u8]) -> Option<(usize, u8)> {
    use super::extension::{ExtensionHeaders, Header};
    use ip::field::ROUTING_SEGMENTS_LEFT;
    use next_header::{DESTINATION_OPTIONS, HOP_BY_HOP, ROUTING};
    for header in ExtensionHeaders::new(packet) {
        match header {
            Header::Extension {
                kind: HOP_BY_HOP,
                at: IPV6_HEADER_LEN,
            }
            | Header::Extension {
                kind: DESTINATION_OPTIONS,
                ..
            } => {}
            Header::Extension { kind: ROUTING, at }
                if *packet.get(at + ROUTING_SEGMENTS_LEFT)? == 0 => {}
            Header::Extension { .. } | Header::Truncated { .. } => return None,
            Header::UpperLayer { protocol, at } => return Some((at, protocol)),
        }
    }
    None
}

/// Checks a TCP or UDP checksum. An IPv4 UDP checksum of zero means "not computed" and passes.
pub fn checksum_is_valid(packet: &[u8], t: &Transport) -> bool {
    let l4 = &packet[t.ip_header_len..];
    if t.protocol == PROTO_UDP && !t.ipv6 && be16(l4, field::UDP_CHECKSUM.start) == 0 {
        return true;
    }
    (t.pseudo_header(packet, l4.len()) + Sum::of(l4)).0 == 0xffff
}

#[cfg(test)]
mod tests {
    use super::super::IpPacket;
    use super::super::ip::field::*;
    use super::field::*;
    use super::*;
    use etherparse::{
        IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader,
    };

    fn be16_of(p: &[u8], range: core::ops::Range<usize>) -> u16 {
        u16::from_be_bytes(p[range].try_into().unwrap())
    }

    fn be32_of(p: &[u8], range: core::ops::Range<usize>) -> u32 {
        u32::from_be_bytes(p[range].try_into().unwrap())
    }

    /// An IPv4/TCP packet with four bytes of IPv4 options and twelve of TCP options, every field
    /// a value of its own, written by etherparse.
    fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let mut tcp = TcpHeader::new(40000, 5201, 0xdead_beef, 0x7531);
        tcp.acknowledgment_number = 0x0102_0304;
        tcp.urgent_pointer = 0x0506;
        tcp.checksum = 0x0708;
        tcp.psh = true;
        tcp.ack = true;
        tcp.cwr = true;
        tcp.set_options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
            .unwrap();
        let l4_len = (tcp.header_len() + payload.len()) as u16;
        let mut ip =
            Ipv4Header::new(l4_len, 61, IpNumber::TCP, [198, 19, 0, 1], [198, 19, 0, 2]).unwrap();
        ip.options = (&[1u8, 1, 1, 0][..]).try_into().unwrap();
        ip.set_payload_len(usize::from(l4_len)).unwrap();
        ip.identification = 0x1234;
        ip.dscp = IpDscp::try_new(46).unwrap();
        ip.ecn = IpEcn::try_new(2).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let mut p = Vec::new();
        ip.write(&mut p).unwrap();
        tcp.write(&mut p).unwrap();
        p.extend_from_slice(payload);
        p
    }

    /// An IPv6/UDP packet, written by etherparse.
    fn ipv6_udp(payload: &[u8]) -> Vec<u8> {
        let udp = UdpHeader {
            source_port: 40001,
            destination_port: 5202,
            length: (8 + payload.len()) as u16,
            checksum: 0x0a0b,
        };
        let ip = Ipv6Header {
            traffic_class: 0xb9,
            flow_label: Ipv6FlowLabel::try_new(0xabcde).unwrap(),
            payload_length: (8 + payload.len()) as u16,
            next_header: IpNumber::UDP,
            hop_limit: 33,
            source: "2001:2:1::1".parse::<Ipv6Addr>().unwrap().octets(),
            destination: "2001:2:1::2".parse::<Ipv6Addr>().unwrap().octets(),
        };
        let mut p = Vec::new();
        ip.write(&mut p).unwrap();
        udp.write(&mut p).unwrap();
        p.extend_from_slice(payload);
        p
    }

    /// The field names read back what an independent writer put there.
    #[test]
    fn field_names_point_where_etherparse_writes() {
        let p = ipv4_tcp(b"hello");
        assert_eq!(p[V4_VERSION_IHL], 0x46);
        assert_eq!(p[V4_TOS], 46 << 2 | 2);
        assert_eq!(usize::from(be16_of(&p, V4_TOTAL_LEN)), p.len());
        assert_eq!(be16_of(&p, V4_ID), 0x1234);
        assert_eq!(be16_of(&p, V4_FRAGMENT), ip::IPV4_DF);
        assert_eq!(p[V4_TTL], 61);
        assert_eq!(p[V4_PROTOCOL], PROTO_TCP);
        assert_eq!(Sum::of(&p[..24]).0, 0xffff, "V4_CHECKSUM: etherparse's sum");
        assert_eq!(p[V4_SRC], [198, 19, 0, 1]);
        assert_eq!(p[V4_DST], [198, 19, 0, 2]);
        let t = IpPacket::new_checked(&p[..]).unwrap().transport().unwrap();
        assert_eq!(
            t,
            Transport {
                ipv6: false,
                ip_header_len: 24,
                protocol: PROTO_TCP,
                l4_header_len: 32,
            }
        );
        assert_eq!(be16_of(&p, t.l4_field(SRC_PORT)), 40000);
        assert_eq!(be16_of(&p, t.l4_field(DST_PORT)), 5201);
        assert_eq!(be32_of(&p, t.l4_field(TCP_SEQ)), 0xdead_beef);
        assert_eq!(be32_of(&p, t.l4_field(TCP_ACK)), 0x0102_0304);
        assert_eq!(p[t.ip_header_len + TCP_DATA_OFFSET], 8 << 4);
        assert_eq!(
            p[t.ip_header_len + TCP_FLAGS],
            tcp_flags::PSH | tcp_flags::ACK | tcp_flags::CWR
        );
        assert_eq!(be16_of(&p, t.l4_field(TCP_WINDOW)), 0x7531);
        assert_eq!(be16_of(&p, t.l4_field(TCP_CHECKSUM)), 0x0708);
        assert_eq!(
            t.l4_field(TCP_CHECKSUM).start,
            t.ip_header_len + t.checksum_offset()
        );
        assert_eq!(be16_of(&p, t.l4_field(TCP_URGENT)), 0x0506);
        assert_eq!(&p[t.header_len()..], b"hello");

        let p = ipv6_udp(b"hi");
        assert_eq!(p[V6_VERSION_CLASS_FLOW], [0x6b, 0x9a, 0xbc, 0xde]);
        assert_eq!(be16_of(&p, V6_PAYLOAD_LEN), 10);
        assert_eq!(p[V6_NEXT_HEADER], PROTO_UDP);
        assert_eq!(p[V6_HOP_LIMIT], 33);
        assert_eq!(
            p[V6_SRC],
            "2001:2:1::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(
            p[V6_DST],
            "2001:2:1::2".parse::<Ipv6Addr>().unwrap().octets()
        );
        let t = IpPacket::new_checked(&p[..]).unwrap().transport().unwrap();
        assert_eq!((t.ipv6, t.ip_header_len, t.l4_header_len), (true, 40, 8));
        assert_eq!(t.version(), IpVersion::V6);
        assert_eq!(be16_of(&p, t.l4_field(SRC_PORT)), 40001);
        assert_eq!(be16_of(&p, t.l4_field(DST_PORT)), 5202);
        assert_eq!(be16_of(&p, t.l4_field(UDP_LENGTH)), 10);
        assert_eq!(be16_of(&p, t.l4_field(UDP_CHECKSUM)), 0x0a0b);
        assert_eq!(
            t.l4_field(UDP_CHECKSUM).start,
            t.ip_header_len + t.checksum_offset()
        );
        assert_eq!(p[t.l4_field(PORTS)], p[40..44]);
    }

    /// The two ways in differ only in the length field, which a super-packet from the TUN need
    /// not have right and a received datagram must.
    #[test]
    fn the_datagram_check_is_the_only_difference_between_the_two_ways_in() {
        let good = ipv4_tcp(&[7; 100]);
        let t = Transport::parse(&good).unwrap();
        assert_eq!(
            IpPacket::new_checked(&good[..]).unwrap().transport(),
            Some(t)
        );
        for total in [0u16, 23, 24, 200, 65535] {
            let mut p = good.clone();
            p[V4_TOTAL_LEN].copy_from_slice(&total.to_be_bytes());
            assert_eq!(Transport::parse(&p), Some(t), "total length {total}");
            assert!(
                IpPacket::new_checked(&p[..]).is_err(),
                "total length {total}"
            );
        }
        let good = ipv6_udp(&[7; 100]);
        let t = Transport::parse(&good).unwrap();
        let mut p = good.clone();
        p[V6_PAYLOAD_LEN].fill(0);
        assert_eq!(Transport::parse(&p), Some(t));
        assert!(IpPacket::new_checked(&p[..]).is_err());
        // What both refuse, both refuse: a fragment, a short TCP header, another protocol.
        let mut fragment = ipv4_tcp(&[7; 100]);
        fragment[V4_FRAGMENT].copy_from_slice(&0x2000u16.to_be_bytes());
        let mut short = ipv4_tcp(&[]);
        short.truncate(24 + 20);
        short[V4_TOTAL_LEN].copy_from_slice(&44u16.to_be_bytes());
        let mut icmp = ipv6_udp(&[7; 10]);
        icmp[V6_NEXT_HEADER] = 58;
        for p in [fragment, short, icmp] {
            assert!(IpPacket::new_checked(&p[..]).is_ok());
            assert_eq!(IpPacket::new_checked(&p[..]).unwrap().transport(), None);
            assert_eq!(Transport::parse(&p), None);
        }
    }
}
