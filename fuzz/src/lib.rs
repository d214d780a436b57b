//! What the fuzz targets share: a reader that turns fuzz bytes into choices, a packet builder with
//! its own checksum code (RFC 1071, written apart from tunfwd's `wire::checksum` so that a mistake
//! there is not repeated here), etherparse as the independent judge of a packet's lengths and
//! checksums, and the decoder that turns fuzz bytes into a UDP GRO buffer.
//!
//! Nothing here may call into the code under test to decide what the right answer is: the targets
//! compare tunfwd against these, so they must stay independent of it.

use std::sync::OnceLock;

/// Fuzz bytes read front to back. Past the end every read gives zeros, so a short input is a
/// valid input that takes the default choice at every later step.
pub struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, at: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.at..).unwrap_or(&[])
    }
}

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

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Every header field of one IPv4 or IPv6 packet carrying TCP or UDP, plus deliberate damage.
/// [`Fields::build`] writes them out with correct lengths and checksums unless told otherwise.
#[derive(Debug, Clone)]
pub struct Fields {
    pub ipv6: bool,
    pub udp: bool,
    /// IPv4 uses the first four bytes.
    pub source: [u8; 16],
    pub destination: [u8; 16],
    /// IPv4 type of service, or IPv6 traffic class.
    pub tos: u8,
    /// IPv6 flow label (20 bits).
    pub flow_label: u32,
    pub id: u16,
    /// The IPv4 flags and fragment offset word: 0x4000 is DF, 0x8000 the reserved bit (RFC 791).
    pub fragment_word: u16,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers, in order, by type (RFC 8200 section 4): 0 Hop-by-Hop Options and
    /// 60 Destination Options (8 bytes, one PadN option), 43 Routing (8 bytes, Segments Left 0).
    pub ipv6_extensions: Vec<u8>,
    pub source_port: u16,
    pub destination_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The low nibble of TCP byte 12: reserved bits and AE (RFC 9293 section 3.1).
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
            flags: 0x10,
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
            40 + 8 * self.ipv6_extensions.len()
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

    /// The packet's bytes. Option lengths must be multiples of 4 and at most 40 bytes.
    pub fn build(&self) -> Vec<u8> {
        let ip_len = self.ip_header_len();
        let l4_len = self.l4_header_len() + self.payload.len();
        let mut p = vec![0u8; ip_len + l4_len];
        let protocol = if self.udp { PROTO_UDP } else { PROTO_TCP };
        if self.ipv6 {
            let word = 6 << 28 | u32::from(self.tos) << 20 | (self.flow_label & 0xf_ffff);
            p[0..4].copy_from_slice(&word.to_be_bytes());
            let len = ((ip_len - 40 + l4_len) as u16).wrapping_add(self.ip_len_error);
            p[4..6].copy_from_slice(&len.to_be_bytes());
            p[6] = self.ipv6_extensions.first().copied().unwrap_or(protocol);
            p[7] = self.ttl;
            p[8..24].copy_from_slice(&self.source);
            p[24..40].copy_from_slice(&self.destination);
            for (i, kind) in self.ipv6_extensions.iter().enumerate() {
                let next = self.ipv6_extensions.get(i + 1).copied().unwrap_or(protocol);
                let at = 40 + 8 * i;
                p[at..at + 8].copy_from_slice(&match kind {
                    43 => [next, 0, 4, 0, 0, 0, 0, 0],
                    _ => [next, 0, 1, 4, 0, 0, 0, 0],
                });
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
        let mut c = !add_sums(
            self.pseudo_header_sum(l4_len),
            ones_complement_sum(&p[l4..]),
        );
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

    /// The pseudo-header sum: RFC 793 section 3.1 for IPv4, RFC 8200 section 8.1 for IPv6.
    fn pseudo_header_sum(&self, l4_len: usize) -> u16 {
        let protocol = if self.udp { PROTO_UDP } else { PROTO_TCP };
        let mut pseudo = Vec::with_capacity(40);
        if self.ipv6 {
            pseudo.extend_from_slice(&self.source);
            pseudo.extend_from_slice(&self.destination);
            pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        } else {
            pseudo.extend_from_slice(&self.source[..4]);
            pseudo.extend_from_slice(&self.destination[..4]);
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        ones_complement_sum(&pseudo)
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

/// Asserts, with etherparse as the judge, that `p` is an IPv4 or IPv6 packet carrying TCP or UDP
/// whose length fields match its bytes and whose checksums are right.
pub fn assert_valid(p: &[u8]) {
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
}

/// True when the environment asks the targets to print their counters (`TUNFWD_FUZZ_STATS=1`),
/// which scripts/fuzz uses to measure how often a target reaches the code it is aimed at.
pub fn stats_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("TUNFWD_FUZZ_STATS").is_some())
}

/// The UDP GRO buffer the kernel would hand `recvmsg` (net/ipv4/udp_offload.c,
/// `udp_gro_receive_segment`): datagrams of exactly `stride` bytes laid back to back, the last one
/// possibly shorter, each datagram one inner IP packet.
pub mod gro {
    use super::{Bytes, Fields, tcp_options};

    /// One buffer and the segment size its `UDP_GRO` control message would carry.
    pub struct Case {
        pub stride: usize,
        pub buffer: Vec<u8>,
    }

    // Byte 0 ("shape") of an input.
    /// Inner packets are IPv6 (else IPv4).
    pub const IPV6: u8 = 0x01;
    /// Inner packets are UDP (else TCP).
    pub const UDP: u8 = 0x02;
    /// Bits 2-3 pick the TCP options: none, 4, 12 (timestamps) or 40 bytes.
    pub const TCP_OPTIONS_SHIFT: u8 = 2;
    /// The rest of the input is the buffer itself, unchanged; bytes 1-2 are the stride.
    pub const RAW: u8 = 0x10;
    /// Segments carry up to 8192 payload bytes (else up to 1500).
    pub const LARGE: u8 = 0x20;
    /// The last datagram is short.
    pub const SHORT_LAST: u8 = 0x40;
    /// IPv4 packets start with 8 bytes of options (which no run may lead).
    pub const IPV4_OPTIONS: u8 = 0x80;

    /// Per-datagram op bytes at or above this change the flow before the datagram is built.
    pub const MUTATE: u8 = 0xc0;
    /// In a mutating op byte: the change persists for the datagrams after this one.
    pub const PERSIST: u8 = 0x20;

    /// The changes an op byte `MUTATE | [PERSIST] | kind` makes, by `kind`; a value byte follows.
    pub mod kind {
        pub const SEQ: u8 = 0;
        pub const FLAGS: u8 = 1;
        pub const ID: u8 = 2;
        pub const TTL: u8 = 3;
        pub const TOS: u8 = 4;
        pub const FRAGMENT_BITS_OR_FLOW_LABEL: u8 = 5;
        pub const SOURCE_PORT: u8 = 6;
        pub const DESTINATION_PORT: u8 = 7;
        pub const ACK: u8 = 8;
        pub const WINDOW: u8 = 9;
        pub const URGENT: u8 = 10;
        pub const TCP_RESERVED: u8 = 11;
        pub const OPTION_BYTE: u8 = 12;
        pub const OPTION_LEN: u8 = 13;
        pub const BAD_L4_CHECKSUM: u8 = 14;
        pub const BAD_IP_CHECKSUM: u8 = 15;
        pub const UDP_LEN: u8 = 16;
        pub const UDP_ZERO_CHECKSUM: u8 = 17;
        pub const PROTOCOL: u8 = 18;
        pub const VERSION: u8 = 19;
        pub const IPV4_OPTIONS: u8 = 20;
        pub const GARBAGE: u8 = 21;
        pub const ADDRESS: u8 = 22;
        pub const IP_LEN: u8 = 23;
        pub const IPV6_EXTENSIONS: u8 = 24;
        // 25..=31: no change.
    }

    /// Decodes an input. Layout, each field big-endian, zeros past the end of the input:
    ///
    /// ```text
    /// shape u8 | pieces u8 (1 + n % 80) | payload u16 (1 + n % 1500 or 8192)
    /// | last payload u16 (1 + n % payload, with SHORT_LAST) | fill u8 | seq u32 | id u16
    /// | per datagram: op u8 [value u8 when op >= MUTATE]
    /// ```
    ///
    /// With no op bytes every datagram continues the flow (seq advances by the payload, the IPv4
    /// ID by one), which is what the coalescer must merge.
    pub fn decode(data: &[u8]) -> Case {
        let mut input = Bytes::new(data);
        let shape = input.u8();
        if shape & RAW != 0 {
            let stride = usize::from(input.u16()).max(1);
            return Case {
                stride,
                buffer: input.rest().to_vec(),
            };
        }
        let mut flow = Fields::new(shape & IPV6 != 0, shape & UDP != 0);
        flow.tcp_options = tcp_options([0, 4, 12, 40][usize::from((shape >> 2) & 3)], 1);
        if shape & IPV4_OPTIONS != 0 {
            flow.ipv4_options = vec![1; 8];
        }
        let pieces = 1 + usize::from(input.u8()) % 80;
        let max_payload = if shape & LARGE != 0 { 8192 } else { 1500 };
        let payload = 1 + usize::from(input.u16()) % max_payload;
        let last_payload = 1 + usize::from(input.u16()) % payload;
        let fill = input.u8();
        flow.seq = input.u32();
        flow.id = input.u16();
        let stride = flow.header_len() + payload;
        // A GRO buffer holds at most 64 KB (GRO_LEGACY_MAX_SIZE, include/linux/netdevice.h).
        let pieces = pieces.min((65535 / stride).max(1));
        let mut buffer = Vec::with_capacity(pieces * stride);
        for index in 0..pieces {
            let room = if index + 1 == pieces && shape & SHORT_LAST != 0 {
                (flow.header_len() + last_payload).min(stride)
            } else {
                stride
            };
            let op = input.u8();
            let before = (op >= MUTATE && op & PERSIST == 0).then(|| flow.clone());
            let garbage = if op >= MUTATE {
                let value = input.u8();
                mutate(&mut flow, op & 0x1f, value)
            } else {
                None
            };
            let payload_len = room.saturating_sub(flow.header_len());
            let piece = match garbage {
                Some(seed) => garbage_packet(room, seed, index),
                None => {
                    flow.payload = (0..payload_len)
                        .map(|i| (flow.seq as usize + i) as u8 ^ fill)
                        .collect();
                    let mut p = flow.build();
                    p.truncate(room);
                    p
                }
            };
            buffer.extend_from_slice(&piece);
            if let Some(before) = before {
                flow = before;
            }
            flow.l4_checksum_error = 0;
            flow.ip_checksum_error = 0;
            flow.seq = flow.seq.wrapping_add(payload_len as u32);
            flow.id = flow.id.wrapping_add(1);
        }
        Case { stride, buffer }
    }

    /// Applies one change; returns a seed when the datagram is to be garbage instead.
    fn mutate(flow: &mut Fields, change: u8, value: u8) -> Option<u8> {
        let wide = u16::from(value);
        match change {
            kind::SEQ => flow.seq = flow.seq.wrapping_add(u32::from(value).wrapping_sub(128)),
            kind::FLAGS => flow.flags ^= value,
            kind::ID => flow.id = flow.id.wrapping_add(wide),
            kind::TTL => flow.ttl ^= value,
            kind::TOS => flow.tos ^= value,
            kind::FRAGMENT_BITS_OR_FLOW_LABEL => {
                if flow.ipv6 {
                    flow.flow_label ^= u32::from(value) << 12 | u32::from(value);
                } else {
                    // DF, the reserved bit, and now and then MF or an offset (a fragment).
                    flow.fragment_word ^= (wide & 0xe0) << 8 | (wide & 0x1f);
                }
            }
            kind::SOURCE_PORT => flow.source_port ^= wide,
            kind::DESTINATION_PORT => flow.destination_port ^= wide << 8,
            kind::ACK => flow.ack = flow.ack.wrapping_add(u32::from(value)),
            kind::WINDOW => flow.window ^= wide,
            kind::URGENT => flow.urgent = wide * 257,
            kind::TCP_RESERVED => flow.tcp_reserved = value & 0x0f,
            kind::OPTION_BYTE => match flow.tcp_options.len() {
                0 => flow.tcp_options = tcp_options(4, 0),
                len => flow.tcp_options[usize::from(value) % len] ^= value | 1,
            },
            kind::OPTION_LEN => flow.tcp_options = tcp_options(4 * usize::from(value % 11), 1),
            kind::BAD_L4_CHECKSUM => flow.l4_checksum_error = wide << 8 | 1,
            kind::BAD_IP_CHECKSUM => flow.ip_checksum_error = wide << 8 | 1,
            kind::UDP_LEN => flow.udp_len_error = wide | 1,
            kind::UDP_ZERO_CHECKSUM => flow.udp_zero_checksum = !flow.udp_zero_checksum,
            kind::PROTOCOL => flow.udp = !flow.udp,
            kind::VERSION => {
                let other = Fields::new(!flow.ipv6, flow.udp);
                flow.ipv6 = other.ipv6;
                flow.source = other.source;
                flow.destination = other.destination;
                flow.ipv4_options.clear();
                flow.ipv6_extensions.clear();
            }
            kind::IPV4_OPTIONS => flow.ipv4_options = vec![1; 4 * usize::from(value % 11)],
            kind::GARBAGE => return Some(value),
            kind::ADDRESS => flow.destination[3] ^= value,
            kind::IP_LEN => flow.ip_len_error = wide | 1,
            kind::IPV6_EXTENSIONS if flow.ipv6 => {
                flow.ipv6_extensions = match value % 4 {
                    0 => vec![],
                    1 => vec![0],
                    2 => vec![60],
                    _ => vec![0, 43, 60],
                }
            }
            _ => {}
        }
        None
    }

    /// `len` pseudo-random bytes that look like an IP packet of that length to a length check
    /// (version nibble and length field right), and like noise to everything after it.
    fn garbage_packet(len: usize, seed: u8, index: usize) -> Vec<u8> {
        let mut state = (u64::from(seed) << 32 | index as u64) ^ 0x9e37_79b9_7f4a_7c15;
        let mut p: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        if len >= 40 && seed & 1 == 1 {
            p[0] = 0x60 | (p[0] & 0x0f);
            p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else if len >= 20 {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        p
    }
}
