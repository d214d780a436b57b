//! Packet builders and a packet judge, for every test of tunfwd's packet code: its unit tests,
//! the micro benches and the fuzz crate (targets and seeds).
//!
//! [`Fields`] holds every header field of one IPv4 or IPv6 packet carrying TCP or UDP, plus
//! deliberate damage, and [`Fields::build`] writes it out. [`Spec`] is the short form the unit
//! tests' tables write, a row naming only what it changes, built through [`Fields`]. The
//! checksums are this module's own ([`ones_complement_sum`], RFC 1071), written apart from
//! tunfwd's `wire::checksum` so that a mistake there is not repeated here, and
//! [`assert_valid`] judges a packet with etherparse. Nothing here calls tunfwd: the tests compare
//! tunfwd against these, so they must stay independent of it.

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// The TCP flag bits (RFC 9293 section 3.1).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_ACK: u8 = 0x10;

/// The internet checksum (RFC 1071): the one's-complement sum of big-endian 16-bit words, an odd
/// last byte padded with zero. Deliberately the plain textbook loop.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One's-complement addition of two folded sums.
pub fn add_sums(a: u16, b: u16) -> u16 {
    let sum = u32::from(a) + u32::from(b);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// The pseudo-header sum over `source`, `destination` (4 or 16 bytes each), `protocol` and the
/// transport length: RFC 793 section 3.1 for IPv4, RFC 8200 section 8.1 for IPv6.
pub fn pseudo_header_sum(source: &[u8], destination: &[u8], protocol: u8, l4_len: usize) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(source);
    pseudo.extend_from_slice(destination);
    if source.len() == 16 {
        pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, protocol]);
    } else {
        pseudo.extend_from_slice(&[0, protocol]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    ones_complement_sum(&pseudo)
}

/// An IPv6 extension header of 8 bytes by type (RFC 8200 section 4), as `(type, the bytes after
/// its next-header and length bytes)`: 43 Routing (type 4, Segments Left 0); any other type,
/// such as 0 Hop-by-Hop or 60 Destination Options, holds one PadN option.
pub fn ipv6_extension(kind: u8) -> (u8, Vec<u8>) {
    match kind {
        43 => (kind, vec![4, 0, 0, 0, 0, 0]),
        _ => (kind, vec![1, 4, 0, 0, 0, 0]),
    }
}

/// Every header field of one IPv4 or IPv6 packet carrying TCP or UDP, plus deliberate damage.
/// [`Fields::build`] writes them out with correct lengths and checksums unless told otherwise.
#[derive(Debug, Clone)]
pub struct Fields {
    pub ipv6: bool,
    pub udp: bool,
    /// IPv4 uses the first four bytes.
    pub source: [u8; 16],
    pub destination: [u8; 16],
    /// IPv4 type of service, or IPv6 traffic class, ECN bits included.
    pub tos: u8,
    /// IPv6 flow label (20 bits).
    pub flow_label: u32,
    pub id: u16,
    /// The IPv4 flags and fragment offset word: 0x4000 is DF, 0x8000 the reserved bit (RFC 791).
    pub fragment_word: u16,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers in order: (header type, the bytes after its next-header and length
    /// bytes). `2 + bytes.len()` must be a multiple of 8; [`ipv6_extension`] makes the usual ones.
    pub ipv6_extensions: Vec<(u8, Vec<u8>)>,
    pub source_port: u16,
    pub destination_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The low nibble of TCP byte 12: three reserved bits and AE (RFC 9293 section 3.1).
    pub tcp_reserved: u8,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Added to the IP length field (IPv4 total length or IPv6 payload length).
    pub ip_len_error: u16,
    /// Added to the UDP length field; the checksum is computed over the wrong value.
    pub udp_len_error: u16,
    /// XOR-ed into the TCP/UDP checksum after it is computed.
    pub l4_checksum_error: u16,
    /// XOR-ed into the IPv4 header checksum after it is computed.
    pub ip_checksum_error: u16,
    /// Send UDP with a zero checksum ("none" for IPv4, RFC 768; invalid for IPv6, RFC 8200).
    pub udp_zero_checksum: bool,
}

impl Fields {
    /// A TCP ACK or a UDP datagram from 198.19.0.1 / 2001:2:1::1, port 40000 to 5201.
    pub fn new(ipv6: bool, udp: bool) -> Fields {
        let mut source = [0u8; 16];
        let mut destination = [0u8; 16];
        if ipv6 {
            source[..6].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 1]);
            destination[..6].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 1]);
            source[15] = 1;
            destination[15] = 2;
        } else {
            source[..4].copy_from_slice(&[198, 19, 0, 1]);
            destination[..4].copy_from_slice(&[198, 19, 0, 2]);
        }
        Fields {
            ipv6,
            udp,
            source,
            destination,
            tos: 0,
            flow_label: 0,
            id: 1,
            fragment_word: 0x4000,
            ttl: 64,
            ipv4_options: Vec::new(),
            ipv6_extensions: Vec::new(),
            source_port: 40000,
            destination_port: 5201,
            seq: 1,
            ack: 77,
            tcp_reserved: 0,
            flags: TCP_ACK,
            window: 64000,
            urgent: 0,
            tcp_options: Vec::new(),
            payload: Vec::new(),
            ip_len_error: 0,
            udp_len_error: 0,
            l4_checksum_error: 0,
            ip_checksum_error: 0,
            udp_zero_checksum: false,
        }
    }

    pub fn ip_header_len(&self) -> usize {
        if self.ipv6 {
            40 + self
                .ipv6_extensions
                .iter()
                .map(|(_, bytes)| 2 + bytes.len())
                .sum::<usize>()
        } else {
            20 + self.ipv4_options.len()
        }
    }

    pub fn l4_header_len(&self) -> usize {
        if self.udp {
            8
        } else {
            20 + self.tcp_options.len()
        }
    }

    pub fn header_len(&self) -> usize {
        self.ip_header_len() + self.l4_header_len()
    }

    fn protocol(&self) -> u8 {
        if self.udp { PROTO_UDP } else { PROTO_TCP }
    }

    /// The packet's bytes. Option lengths must be multiples of 4 and at most 40 bytes.
    pub fn build(&self) -> Vec<u8> {
        let ip_len = self.ip_header_len();
        let l4_len = self.l4_header_len() + self.payload.len();
        let mut p = vec![0u8; ip_len + l4_len];
        let protocol = self.protocol();
        if self.ipv6 {
            let word = 6 << 28 | u32::from(self.tos) << 20 | (self.flow_label & 0xf_ffff);
            p[0..4].copy_from_slice(&word.to_be_bytes());
            let len = ((ip_len - 40 + l4_len) as u16).wrapping_add(self.ip_len_error);
            p[4..6].copy_from_slice(&len.to_be_bytes());
            p[6] = self
                .ipv6_extensions
                .first()
                .map_or(protocol, |(kind, _)| *kind);
            p[7] = self.ttl;
            p[8..24].copy_from_slice(&self.source);
            p[24..40].copy_from_slice(&self.destination);
            let mut at = 40;
            for (i, (_, bytes)) in self.ipv6_extensions.iter().enumerate() {
                let len = 2 + bytes.len();
                assert_eq!(len % 8, 0, "extension headers are multiples of 8 bytes");
                p[at] = self
                    .ipv6_extensions
                    .get(i + 1)
                    .map_or(protocol, |(kind, _)| *kind);
                p[at + 1] = (len / 8 - 1) as u8;
                p[at + 2..at + len].copy_from_slice(bytes);
                at += len;
            }
        } else {
            p[0] = 0x40 | (ip_len / 4) as u8;
            p[1] = self.tos;
            let total = ((ip_len + l4_len) as u16).wrapping_add(self.ip_len_error);
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p[4..6].copy_from_slice(&self.id.to_be_bytes());
            p[6..8].copy_from_slice(&self.fragment_word.to_be_bytes());
            p[8] = self.ttl;
            p[9] = protocol;
            p[12..16].copy_from_slice(&self.source[..4]);
            p[16..20].copy_from_slice(&self.destination[..4]);
            p[20..ip_len].copy_from_slice(&self.ipv4_options);
            let c = !ones_complement_sum(&p[..ip_len]) ^ self.ip_checksum_error;
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = ip_len;
        p[l4..l4 + 2].copy_from_slice(&self.source_port.to_be_bytes());
        p[l4 + 2..l4 + 4].copy_from_slice(&self.destination_port.to_be_bytes());
        let payload_at = l4 + self.l4_header_len();
        p[payload_at..].copy_from_slice(&self.payload);
        let checksum_at = if self.udp {
            let len = (l4_len as u16).wrapping_add(self.udp_len_error);
            p[l4 + 4..l4 + 6].copy_from_slice(&len.to_be_bytes());
            l4 + 6
        } else {
            p[l4 + 4..l4 + 8].copy_from_slice(&self.seq.to_be_bytes());
            p[l4 + 8..l4 + 12].copy_from_slice(&self.ack.to_be_bytes());
            p[l4 + 12] = ((self.l4_header_len() / 4) as u8) << 4 | (self.tcp_reserved & 0x0f);
            p[l4 + 13] = self.flags;
            p[l4 + 14..l4 + 16].copy_from_slice(&self.window.to_be_bytes());
            p[l4 + 18..l4 + 20].copy_from_slice(&self.urgent.to_be_bytes());
            p[l4 + 20..payload_at].copy_from_slice(&self.tcp_options);
            l4 + 16
        };
        let address_len = if self.ipv6 { 16 } else { 4 };
        let pseudo = pseudo_header_sum(
            &self.source[..address_len],
            &self.destination[..address_len],
            protocol,
            l4_len,
        );
        let mut c = !add_sums(pseudo, ones_complement_sum(&p[l4..]));
        if self.udp && c == 0 {
            c = 0xffff; // RFC 768: a computed zero is sent as all ones
        }
        if self.udp && self.udp_zero_checksum {
            c = 0;
        }
        c ^= self.l4_checksum_error;
        p[checksum_at..checksum_at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }
}

/// TCP options of `len` bytes (0, 4, 12 or 40 are the useful ones): timestamps (RFC 7323) when
/// there is room, padded with NOPs.
pub fn tcp_options(len: usize, stamp: u32) -> Vec<u8> {
    let mut options = vec![1u8; len];
    if len >= 12 {
        options[2..4].copy_from_slice(&[8, 10]);
        options[4..8].copy_from_slice(&stamp.to_be_bytes());
        options[8..12].copy_from_slice(&stamp.wrapping_mul(3).to_be_bytes());
    }
    options
}

/// One packet's headers as a table row writes them: every field has a plain default, so a row
/// names only what it changes. The addresses and ports are [`Fields::new`]'s, and payload byte
/// `i` is `(seq + i) as u8`.
#[derive(Clone)]
pub struct Spec {
    pub ipv6: bool,
    pub udp: bool,
    pub payload_len: usize,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The low nibble of TCP byte 12: three reserved bits and AE (RFC 9293 section 3.1).
    pub tcp_reserved: u8,
    pub window: u16,
    pub urgent: u16,
    pub tcp_options: Vec<u8>,
    pub sport: u16,
    /// Bytes of IPv4 options, all NOP.
    pub ipv4_options: usize,
    /// IPv6 extension headers in order, as [`Fields::ipv6_extensions`] takes them.
    pub ipv6_extensions: Vec<(u8, Vec<u8>)>,
    /// IPv4 TOS or IPv6 traffic class, ECN bits included.
    pub tos: u8,
    pub flow_label: u32,
    pub df: bool,
    /// TTL or hop limit.
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
            ack: 77,
            flags: TCP_ACK,
            tcp_reserved: 0,
            window: 64000,
            urgent: 0,
            tcp_options: Vec::new(),
            sport: 40000,
            ipv4_options: 0,
            ipv6_extensions: Vec::new(),
            tos: 0,
            flow_label: 0,
            df: true,
            ttl: 64,
            id: 7,
        }
    }
}

impl Spec {
    /// The row as [`Fields`].
    pub fn fields(&self) -> Fields {
        Fields {
            tos: self.tos,
            flow_label: self.flow_label,
            id: self.id,
            fragment_word: if self.df { 0x4000 } else { 0 },
            ttl: self.ttl,
            ipv4_options: vec![1; self.ipv4_options],
            ipv6_extensions: self.ipv6_extensions.clone(),
            source_port: self.sport,
            seq: self.seq,
            ack: self.ack,
            tcp_reserved: self.tcp_reserved,
            flags: self.flags,
            window: self.window,
            urgent: self.urgent,
            tcp_options: self.tcp_options.clone(),
            payload: (0..self.payload_len)
                .map(|i| (self.seq as usize).wrapping_add(i) as u8)
                .collect(),
            ..Fields::new(self.ipv6, self.udp)
        }
    }
}

/// A valid packet (lengths and checksums right) as `spec` describes it. Built without any parser,
/// so it can make packets a parser refuses.
pub fn build(spec: &Spec) -> Vec<u8> {
    spec.fields().build()
}

/// Where the transport header of `p` starts and which protocol it is, by walking the IPv4
/// header length or the IPv6 extension headers tunfwd's tests use (Hop-by-Hop, Routing,
/// Destination Options: RFC 8200 section 4). `None` for anything else.
fn transport_at(p: &[u8]) -> Option<(usize, u8)> {
    match p.first()? >> 4 {
        4 => Some((usize::from(p[0] & 0x0f) * 4, *p.get(9)?)),
        6 => {
            let (mut next, mut at) = (*p.get(6)?, 40);
            while matches!(next, 0 | 43 | 60) {
                next = *p.get(at)?;
                at += (usize::from(*p.get(at + 1)?) + 1) * 8;
            }
            Some((at, next))
        }
        _ => None,
    }
}

/// Rewrites the TCP or UDP checksum of `p` (after a test edited it) to be right again, over the
/// whole datagram after the IP headers, whatever its length fields say.
pub fn fix_l4_checksum(p: &mut [u8]) {
    let (l4, protocol) = transport_at(p).expect("an IPv4 or IPv6 packet");
    let field = l4 + if protocol == PROTO_UDP { 6 } else { 16 };
    p[field..field + 2].fill(0);
    let (source, destination) = if p[0] >> 4 == 6 {
        (&p[8..24], &p[24..40])
    } else {
        (&p[12..16], &p[16..20])
    };
    let pseudo = pseudo_header_sum(source, destination, protocol, p.len() - l4);
    let mut c = !add_sums(pseudo, ones_complement_sum(&p[l4..]));
    if protocol == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Asserts, with etherparse as the judge, that `p` is an IPv4 or IPv6 packet carrying TCP or UDP,
/// not a fragment, whose length fields match its bytes and whose checksums are right. Returns
/// the length of its IP headers (options and extension headers included), where the judge found
/// the transport header, for a caller to compare with its own parser.
pub fn assert_valid(p: &[u8]) -> usize {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let sliced = SlicedPacket::from_ip(p)
        .unwrap_or_else(|e| panic!("etherparse rejects the packet: {e:?}: {p:02x?}"));
    let (addresses, ip_payload) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(
                usize::from(h.total_len()),
                p.len(),
                "IPv4 total length: {p:02x?}"
            );
            // By our own sum: etherparse's `Ipv4Header` has no field for the reserved flag bit
            // (RFC 791), so its `calc_header_checksum` is wrong for a header that sets it.
            assert_eq!(
                ones_complement_sum(h.slice()),
                0xffff,
                "IPv4 header checksum: {p:02x?}"
            );
            let mut source = [0u8; 16];
            let mut destination = [0u8; 16];
            source[..4].copy_from_slice(&h.source());
            destination[..4].copy_from_slice(&h.destination());
            ((false, source, destination), ip.payload())
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            assert_eq!(
                usize::from(h.payload_length()) + 40,
                p.len(),
                "IPv6 payload length: {p:02x?}"
            );
            ((true, h.source(), h.destination()), ip.payload())
        }
        other => panic!("not IP: {other:?}"),
    };
    assert!(!ip_payload.fragmented, "a fragment");
    let (ipv6, source, destination) = addresses;
    let v4 = |a: [u8; 16]| -> [u8; 4] { a[..4].try_into().expect("4 bytes") };
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let expected = if ipv6 {
                tcp.calc_checksum_ipv6(source, destination)
            } else {
                tcp.calc_checksum_ipv4(v4(source), v4(destination))
            }
            .expect("TCP length fits");
            assert_eq!(tcp.checksum(), expected, "TCP checksum: {p:02x?}");
        }
        Some(TransportSlice::Udp(udp)) => {
            assert_eq!(
                usize::from(udp.length()),
                ip_payload.payload.len(),
                "UDP length"
            );
            let header = udp.to_header();
            let expected = if ipv6 {
                header.calc_checksum_ipv6_raw(source, destination, udp.payload())
            } else {
                header.calc_checksum_ipv4_raw(v4(source), v4(destination), udp.payload())
            }
            .expect("UDP length fits");
            assert_eq!(udp.checksum(), expected, "UDP checksum: {p:02x?}");
        }
        other => panic!("no TCP or UDP: {other:?}"),
    }
    p.len() - ip_payload.payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_packet_built_is_one_the_judge_accepts() {
        for ipv6 in [false, true] {
            for udp in [false, true] {
                let spec = Spec {
                    ipv6,
                    udp,
                    ..Spec::default()
                };
                let p = build(&spec);
                assert_eq!(assert_valid(&p), if ipv6 { 40 } else { 20 });
                let mut with = Fields::new(ipv6, udp);
                with.payload = vec![0xa5; 333];
                with.tcp_options = tcp_options(12, 9);
                if ipv6 {
                    with.ipv6_extensions = [0, 43, 60].map(ipv6_extension).to_vec();
                } else {
                    with.ipv4_options = vec![1; 8];
                }
                assert_eq!(assert_valid(&with.build()), with.ip_header_len());
            }
        }
    }

    #[test]
    fn a_row_is_its_fields_with_the_payload_counting_from_seq() {
        let spec = Spec {
            seq: 250,
            payload_len: 10,
            ipv4_options: 4,
            df: false,
            ..Spec::default()
        };
        let p = build(&spec);
        assert_eq!(p.len(), 24 + 20 + 10);
        assert_eq!(p[6] & 0x40, 0, "DF");
        assert_eq!(&p[44..], &[250, 251, 252, 253, 254, 255, 0, 1, 2, 3]);
    }

    #[test]
    fn a_fixed_checksum_is_the_one_the_builder_computes() {
        for ipv6 in [false, true] {
            for udp in [false, true] {
                let mut fields = Fields::new(ipv6, udp);
                fields.payload = vec![7; 101];
                if ipv6 {
                    fields.ipv6_extensions = vec![ipv6_extension(60)];
                }
                let right = fields.build();
                let mut p = right.clone();
                let field = fields.ip_header_len() + if udp { 6 } else { 16 };
                p[field] ^= 0x5a;
                fix_l4_checksum(&mut p);
                assert_eq!(p, right);
            }
        }
    }

    #[test]
    #[should_panic(expected = "TCP checksum")]
    fn the_judge_refuses_a_wrong_checksum() {
        let mut fields = Fields::new(false, false);
        fields.l4_checksum_error = 1;
        assert_valid(&fields.build());
    }

    #[test]
    fn the_sum_is_rfc_1071s_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            ones_complement_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(
            ones_complement_sum(&[0xff]),
            0xff00,
            "an odd byte is padded"
        );
    }
}
