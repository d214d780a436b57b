//! What the fuzz targets share: a reader that turns fuzz bytes into choices, and the decoder that
//! turns fuzz bytes into a UDP GRO buffer. The packets are built, and judged, by the test kit's
//! `packets` (its own RFC 1071 checksum code, etherparse as the judge), the same builders tunfwd's
//! unit tests and micro benches use.
//!
//! Nothing here may call into the code under test to decide what the right answer is: the targets
//! compare tunfwd against these, so they must stay independent of it.

use std::sync::OnceLock;
pub use tunfwd_testkit::packets::{Fields, assert_valid, ipv6_extension, tcp_options};

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
    use super::{Bytes, Fields, ipv6_extension, tcp_options};

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
                let kinds: &[u8] = match value % 4 {
                    0 => &[],
                    1 => &[0],
                    2 => &[60],
                    _ => &[0, 43, 60],
                };
                flow.ipv6_extensions = kinds.iter().copied().map(ipv6_extension).collect();
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
