//! Segmentation and coalescing: the inverse pair that lets tunfwd move 64 KB super-packets end to
//! end. PURE: no I/O, no allocation; everything writes into caller buffers.
//!
//! * [`split`]: a TSO/USO super-packet read from the TUN (virtio_net_hdr `gso_type` TCPV4, TCPV6
//!   or UDP_L4) becomes MTU-sized IP packets. The payload is never copied: [`split::Split`] hands
//!   out each segment's rewritten headers plus the range of its payload in the original buffer, and
//!   the worker gathers them with an iovec into one UDP GSO send.
//! * [`coalesce`]: segments received in one UDP GRO buffer are merged back, where the kernel's
//!   rules allow it (FIELD-NOTES: same flow and ack, adjacent seq, identical options and IP
//!   fields, valid checksums, PSH and a short segment only last, never fragments), into one write
//!   with `gso_type` TCPV4/TCPV6/UDP_L4 and `NEEDS_CSUM`.
//! * [`complete_checksum`]: a plain packet read with `NEEDS_CSUM` gets its partial checksum
//!   finished before it leaves the host.

pub mod coalesce;
pub mod split;

use crate::wire::checksum::{Sum, pseudo_header_v4, pseudo_header_v6};
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
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Where the headers of a TCP or UDP packet are. Built by [`Transport::parse`], which checks that
/// they are in bounds; no method panics afterwards on the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub ipv6: bool,
    pub ip_header_len: usize,
    pub protocol: u8,
    pub l4_header_len: usize,
}

impl Transport {
    /// Parses the IP and TCP/UDP headers of `packet`. IPv4 options are allowed; IPv6 extension
    /// headers and IPv4 fragments are not (they are never segmented or merged).
    pub fn parse(packet: &[u8]) -> Option<Transport> {
        let first = *packet.first()?;
        let (ipv6, ip_header_len, protocol) = match first >> 4 {
            4 => {
                let ihl = usize::from(first & 0x0f) * 4;
                if ihl < 20 || packet.len() < ihl {
                    return None;
                }
                if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
                    return None; // a fragment
                }
                (false, ihl, packet[9])
            }
            6 if packet.len() >= 40 => (true, 40, packet[6]),
            _ => return None,
        };
        let l4_header_len = match protocol {
            PROTO_TCP => {
                let offset = *packet.get(ip_header_len + 12)?;
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

    pub fn header_len(&self) -> usize {
        self.ip_header_len + self.l4_header_len
    }

    /// Offset of the TCP or UDP checksum field from the start of the L4 header.
    pub fn checksum_offset(&self) -> usize {
        if self.protocol == PROTO_TCP { 16 } else { 6 }
    }

    /// The pseudo-header sum for an L4 segment of `l4_len` bytes.
    pub fn pseudo_header(&self, packet: &[u8], l4_len: usize) -> Sum {
        if self.ipv6 {
            let src: [u8; 16] = packet[8..24].try_into().expect("16 bytes");
            let dst: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
            pseudo_header_v6(
                Ipv6Addr::from(src),
                Ipv6Addr::from(dst),
                self.protocol,
                l4_len as u32,
            )
        } else {
            let src: [u8; 4] = packet[12..16].try_into().expect("4 bytes");
            let dst: [u8; 4] = packet[16..20].try_into().expect("4 bytes");
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
            header[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            let total = (self.ip_header_len + l4_len) as u16;
            header[2..4].copy_from_slice(&total.to_be_bytes());
            set_ipv4_header_checksum(&mut header[..self.ip_header_len]);
        }
    }
}

/// Recomputes an IPv4 header's checksum over `header` (exactly IHL*4 bytes).
pub fn set_ipv4_header_checksum(header: &mut [u8]) {
    header[10..12].fill(0);
    let c = Sum::of(header).finish();
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Why an offloaded packet could not be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Not IPv4/IPv6 carrying TCP/UDP, a fragment, or headers out of bounds.
    BadHeaders,
    /// The GSO type disagrees with the packet (TCPV4 on an IPv6 packet, UDP_L4 on TCP...).
    GsoTypeMismatch,
    /// gso_size of zero, or a GSO type this build does not segment.
    BadGso,
    /// More segments than the caller can take.
    TooManySegments,
    /// The partial checksum's position is outside the packet.
    BadChecksumOffset,
}

/// Finishes a partial checksum (`NEEDS_CSUM` without GSO): the field at `start + offset` already
/// holds the pseudo-header sum; sum from `start` to the end and store the complement.
pub fn complete_checksum(
    packet: &mut [u8],
    start: usize,
    offset: usize,
) -> Result<(), OffloadError> {
    let field = start
        .checked_add(offset)
        .ok_or(OffloadError::BadChecksumOffset)?;
    if field + 2 > packet.len() || start > packet.len() {
        return Err(OffloadError::BadChecksumOffset);
    }
    let mut c = Sum::of(&packet[start..]).finish();
    // A UDP checksum of 0 means "none"; a computed 0 is sent as 0xffff (RFC 768).
    if offset == 6 && c == 0 {
        c = 0xffff;
    }
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Checks a TCP or UDP checksum. An IPv4 UDP checksum of zero means "not computed" and passes.
pub fn checksum_is_valid(packet: &[u8], t: &Transport) -> bool {
    let l4 = &packet[t.ip_header_len..];
    if t.protocol == PROTO_UDP && !t.ipv6 && l4[6] == 0 && l4[7] == 0 {
        return true;
    }
    t.pseudo_header(packet, l4.len()).add(Sum::of(l4)).0 == 0xffff
}

#[cfg(test)]
pub(crate) mod test_packets {
    //! Packet builders shared by the split and coalesce tests, checked by etherparse.
    use super::*;

    pub struct Spec {
        pub ipv6: bool,
        pub udp: bool,
        pub payload_len: usize,
        pub seq: u32,
        pub flags: u8,
        pub tcp_options: Vec<u8>,
        pub sport: u16,
        pub ipv4_options: usize,
        pub ttl: u8,
        pub id: u16,
    }

    impl Default for Spec {
        fn default() -> Spec {
            Spec {
                ipv6: false,
                udp: false,
                payload_len: 100,
                seq: 1000,
                flags: tcp_flags::ACK,
                tcp_options: Vec::new(),
                sport: 40000,
                ipv4_options: 0,
                ttl: 64,
                id: 7,
            }
        }
    }

    /// A valid packet (checksums correct) whose payload byte `i` is `(seq + i) as u8`.
    pub fn build(spec: &Spec) -> Vec<u8> {
        let ip_len = if spec.ipv6 {
            40
        } else {
            20 + spec.ipv4_options
        };
        let l4_len = if spec.udp {
            8
        } else {
            20 + spec.tcp_options.len()
        };
        let total = ip_len + l4_len + spec.payload_len;
        let mut p = vec![0u8; total];
        if spec.ipv6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((l4_len + spec.payload_len) as u16).to_be_bytes());
            p[6] = if spec.udp { PROTO_UDP } else { PROTO_TCP };
            p[7] = spec.ttl;
            p[8..24].copy_from_slice(&"2001:2:1::1".parse::<Ipv6Addr>().unwrap().octets());
            p[24..40].copy_from_slice(&"2001:2:1::2".parse::<Ipv6Addr>().unwrap().octets());
        } else {
            p[0] = 0x40 | (ip_len / 4) as u8;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&spec.id.to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = spec.ttl;
            p[9] = if spec.udp { PROTO_UDP } else { PROTO_TCP };
            p[12..16].copy_from_slice(&[198, 19, 0, 1]);
            p[16..20].copy_from_slice(&[198, 19, 0, 2]);
            p[20..ip_len].fill(1); // NOP options
            set_ipv4_header_checksum(&mut p[..ip_len]);
        }
        let l4 = ip_len;
        p[l4..l4 + 2].copy_from_slice(&spec.sport.to_be_bytes());
        p[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
        if spec.udp {
            p[l4 + 4..l4 + 6].copy_from_slice(&((8 + spec.payload_len) as u16).to_be_bytes());
        } else {
            p[l4 + 4..l4 + 8].copy_from_slice(&spec.seq.to_be_bytes());
            p[l4 + 8..l4 + 12].copy_from_slice(&77u32.to_be_bytes());
            p[l4 + 12] = ((l4_len / 4) as u8) << 4;
            p[l4 + 13] = spec.flags;
            p[l4 + 14..l4 + 16].copy_from_slice(&64000u16.to_be_bytes());
            p[l4 + 20..l4 + l4_len].copy_from_slice(&spec.tcp_options);
        }
        for i in 0..spec.payload_len {
            p[l4 + l4_len + i] = (spec.seq as usize + i) as u8;
        }
        let t = Transport::parse(&p).unwrap();
        let field = l4 + t.checksum_offset();
        let mut c = t
            .pseudo_header(&p, l4_len + spec.payload_len)
            .add(Sum::of(&p[l4..]))
            .finish();
        if spec.udp && c == 0 {
            c = 0xffff;
        }
        p[field..field + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Asserts, with etherparse as the independent oracle, that `p` is a well-formed packet with
    /// correct lengths and checksums.
    pub fn assert_valid(p: &[u8]) {
        let sliced = etherparse::SlicedPacket::from_ip(p)
            .unwrap_or_else(|e| panic!("oracle rejects {e:?}: {p:02x?}"));
        let payload_len;
        match &sliced.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                assert_eq!(h.total_len as usize, p.len(), "IPv4 total length");
                assert_eq!(
                    h.header_checksum,
                    h.calc_header_checksum(),
                    "IPv4 header checksum"
                );
                payload_len = p.len() - h.header_len();
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                assert_eq!(
                    ip.header().payload_length() as usize + 40,
                    p.len(),
                    "IPv6 payload length"
                );
                payload_len = p.len() - 40;
            }
            _ => panic!("not IP"),
        }
        let t = Transport::parse(p).unwrap();
        match &sliced.transport {
            Some(etherparse::TransportSlice::Tcp(tcp)) => {
                let expected = match &sliced.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => {
                        tcp.calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) => {
                        tcp.calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                    }
                    _ => unreachable!(),
                }
                .unwrap();
                assert_eq!(tcp.checksum(), expected, "TCP checksum");
            }
            Some(etherparse::TransportSlice::Udp(udp)) => {
                assert_eq!(udp.length() as usize, payload_len, "UDP length");
                let expected = match &sliced.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => udp
                        .to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), udp.payload()),
                    Some(etherparse::NetSlice::Ipv6(ip)) => udp
                        .to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), udp.payload()),
                    _ => unreachable!(),
                }
                .unwrap();
                assert_eq!(udp.checksum(), expected, "UDP checksum");
            }
            other => panic!("no transport: {other:?}"),
        }
        assert!(checksum_is_valid(p, &t));
    }
}

#[cfg(test)]
mod tests {
    use super::test_packets::*;
    use super::*;

    #[test]
    fn builders_make_packets_the_oracle_accepts() {
        for ipv6 in [false, true] {
            for udp in [false, true] {
                assert_valid(&build(&Spec {
                    ipv6,
                    udp,
                    ..Spec::default()
                }));
            }
        }
        assert_valid(&build(&Spec {
            ipv4_options: 8,
            tcp_options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            ..Spec::default()
        }));
    }

    #[test]
    fn parse_rejects_fragments_extension_headers_and_short_headers() {
        let mut p = build(&Spec::default());
        assert!(Transport::parse(&p).is_some());
        p[6] = 0x20; // more fragments
        assert!(Transport::parse(&p).is_none());
        let mut v6 = build(&Spec {
            ipv6: true,
            ..Spec::default()
        });
        v6[6] = 0; // hop-by-hop options
        assert!(Transport::parse(&v6).is_none());
        let p = build(&Spec::default());
        assert!(Transport::parse(&p[..30]).is_none());
    }

    #[test]
    fn completing_a_partial_checksum_gives_the_full_one() {
        for udp in [false, true] {
            for ipv6 in [false, true] {
                let good = build(&Spec {
                    udp,
                    ipv6,
                    payload_len: 333,
                    ..Spec::default()
                });
                let t = Transport::parse(&good).unwrap();
                let mut partial = good.clone();
                let field = t.ip_header_len + t.checksum_offset();
                let pseudo = t.pseudo_header(&good, good.len() - t.ip_header_len);
                partial[field..field + 2].copy_from_slice(&pseudo.0.to_be_bytes());
                complete_checksum(&mut partial, t.ip_header_len, t.checksum_offset()).unwrap();
                assert_eq!(partial, good);
            }
        }
        let mut short = vec![0u8; 10];
        assert_eq!(
            complete_checksum(&mut short, 4, 16),
            Err(OffloadError::BadChecksumOffset)
        );
    }

    #[test]
    fn corrupted_checksums_are_detected() {
        let mut p = build(&Spec {
            payload_len: 50,
            ..Spec::default()
        });
        let t = Transport::parse(&p).unwrap();
        assert!(checksum_is_valid(&p, &t));
        let last = p.len() - 1;
        p[last] ^= 0x40;
        assert!(!checksum_is_valid(&p, &t));
    }

    /// Bounded fuzzing, run by CI: random and mutated bytes through the parser, the splitter and
    /// the coalescer. Beyond "no panic", the invariants: a split's segments are valid packets
    /// whose payloads tile the original's; runs cover every segment exactly once, in order.
    #[test]
    fn fuzz_parser_splitter_coalescer_invariants() {
        use super::coalesce::{Policy, finish_run, plan_runs};
        use super::split::Split;
        use crate::wire::vnet::GsoType;
        let mut state = 0x0123_4567_89ab_cdefu64;
        let mut rnd = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n.max(1)
        };
        let mut runs = Vec::new();
        for round in 0..20_000 {
            let spec = Spec {
                ipv6: rnd(2) == 0,
                udp: rnd(2) == 0,
                payload_len: rnd(3000) as usize,
                tcp_options: if rnd(3) == 0 {
                    vec![1; 4 * rnd(10) as usize]
                } else {
                    vec![]
                },
                ..Spec::default()
            };
            let mut p = build(&spec);
            let mutate = round % 2 == 0;
            if mutate {
                for _ in 0..1 + rnd(3) {
                    let at = rnd(p.len() as u64) as usize;
                    p[at] = rnd(256) as u8;
                }
                p.truncate(p.len() - rnd(p.len().min(30) as u64) as usize);
            }
            let _ = Transport::parse(&p);
            let gso = [
                GsoType::TcpV4,
                GsoType::TcpV6,
                GsoType::UdpL4,
                GsoType::None,
            ][rnd(4) as usize];
            let size = 1 + rnd(1500) as u16;
            if let Ok(plan) = Split::plan(&p, gso, size, 4096) {
                let mut payload = Vec::new();
                let mut seg = Vec::new();
                for i in 0..plan.count {
                    plan.segment_into(&p, i, &mut seg);
                    let t = Transport::parse(&seg).expect("segments parse");
                    assert!(seg.len() - t.header_len() <= usize::from(size));
                    if !mutate {
                        assert_valid(&seg);
                    }
                    payload.extend_from_slice(&seg[t.header_len()..]);
                }
                assert_eq!(
                    payload,
                    p[plan.transport.header_len()..],
                    "payloads tile the original"
                );
            }
            // Random segment layouts over the same bytes.
            let mut segments = Vec::new();
            let mut at = 0;
            while at < p.len() && segments.len() < 64 {
                let len = (1 + rnd(400) as usize).min(p.len() - at);
                segments.push((at, len));
                at += len;
            }
            if rnd(2) == 0 {
                segments = vec![(0, p.len())];
            }
            let mut buffer = p.clone();
            plan_runs(&buffer, &segments, Policy::ALL, &mut runs);
            let mut next = 0;
            for run in &runs {
                assert_eq!(run.first, next, "runs in order, no gaps");
                assert!(run.count >= 1);
                next += run.count;
                let _ = finish_run(&mut buffer, &segments, *run);
            }
            assert_eq!(next, segments.len(), "every segment in exactly one run");
        }
    }
}
